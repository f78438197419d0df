//! A unix socket per disk, `DIR/VM/DISK.sock`, and a vhost-user session per connection.
//!
//! One thread watches every socket. A connection to an idle socket starts a session:
//! the disk is attached (as NBD and the container attach it: once per host), a backend
//! and vhost-user-backend's daemon serve it, and when the driver goes away everything
//! in flight is answered and the disk detached. A second driver on a socket whose disk
//! is connected gets a closed connection, never a hang: after a short grace, so that a
//! driver reconnecting right after it hung up (QEMU restarting a VM) waits for the old
//! session to end instead of being turned away. The set of sockets
//! follows the datastore: it is read again every `rescan` interval, or less often when
//! listing it takes long (a fifth of the time at most).

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cvol_nbd::Exports;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags, Timespec};
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::backend::{BlkBackend, Settings};

/// Wakes the watcher thread: an eventfd.
#[derive(Clone)]
struct Wake(Arc<std::os::fd::OwnedFd>);

impl Wake {
    fn new() -> io::Result<Self> {
        Ok(Self(Arc::new(eventfd(
            0,
            EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC,
        )?)))
    }

    fn wake(&self) {
        let _ = rustix::io::write(&*self.0, &1u64.to_ne_bytes());
    }

    fn clear(&self) {
        let _ = rustix::io::read(&*self.0, &mut [0u8; 8]);
    }
}

/// How often the sockets follow the datastore's disks unless told otherwise.
pub const DEFAULT_RESCAN_MS: u64 = 2000;

/// Where the socket of disk `name` (`VM/DISK`) lies under `dir`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// Where a socket's connection stands.
enum State {
    /// No driver: a connection starts a session.
    Idle,
    /// A session is attaching the disk and accepting the connection.
    Starting,
    /// A driver is connected; further connections are closed.
    Connected(Option<ShutdownHandle>),
    /// The driver went away; what it left in flight is answered, then the disk detached.
    Closing,
}

/// How long a connection to a socket whose disk is connected waits before it is closed,
/// in case the connected driver is just leaving.
const GRACE: Duration = Duration::from_millis(500);

struct Socket {
    path: PathBuf,
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    session: Option<JoinHandle<()>>,
    /// A connection arrived while a driver was connected: it is closed at this instant
    /// if that driver is still there.
    refuse_at: Option<Instant>,
}

impl Socket {
    /// True when a waiting connection should wake the watcher: the socket is idle, or
    /// connected with no connection already waiting out its grace.
    fn watched(&self) -> bool {
        match *self.state.lock().expect("state") {
            State::Idle => true,
            State::Connected(_) => self.refuse_at.is_none(),
            State::Starting | State::Closing => false,
        }
    }
}

/// Every disk of a datastore served over vhost-user, until [`VhostUserServer::stop`].
pub struct VhostUserServer {
    stopping: Arc<AtomicBool>,
    wake: Wake,
    watcher: Option<JoinHandle<()>>,
}

impl VhostUserServer {
    /// Serves each of `exports` on a socket under `dir`, re-reading the set of exports
    /// every `rescan`.
    pub fn start(
        dir: &Path,
        exports: Arc<dyn Exports>,
        settings: Settings,
        rescan: Duration,
    ) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let wake = Wake::new()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let mut watcher = Watcher {
            dir: dir.to_path_buf(),
            exports,
            settings,
            rescan,
            sockets: HashMap::new(),
            stopping: stopping.clone(),
            wake: wake.clone(),
        };
        watcher.rescan();
        let watcher = std::thread::Builder::new()
            .name("cvol-vhost".into())
            .spawn(move || watcher.run())?;
        Ok(Self {
            stopping,
            wake,
            watcher: Some(watcher),
        })
    }

    /// Disconnects every driver, detaches every disk and removes the sockets.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.wake();
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}

impl Drop for VhostUserServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct Watcher {
    dir: PathBuf,
    exports: Arc<dyn Exports>,
    settings: Settings,
    rescan: Duration,
    sockets: HashMap<String, Socket>,
    stopping: Arc<AtomicBool>,
    wake: Wake,
}

impl Watcher {
    fn run(mut self) {
        let mut next_scan = Instant::now() + self.rescan;
        while !self.stopping.load(Ordering::SeqCst) {
            if Instant::now() >= next_scan {
                let started = Instant::now();
                self.rescan();
                // A datastore of thousands of VMs takes a while to list: keep the scans
                // to a fifth of the time at most.
                next_scan = Instant::now() + self.rescan.max(started.elapsed() * 4);
            }
            self.refuse_waiting();
            let deadline = self
                .sockets
                .values()
                .filter_map(|s| s.refuse_at)
                .fold(next_scan, Instant::min);
            let ready = match self.wait(deadline) {
                Ok(ready) => ready,
                Err(e) => {
                    tracing::error!("vhost-user: waiting for connections: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            for name in ready {
                self.connection(&name);
            }
        }
        self.close_all();
    }

    /// Waits until `deadline` for a connection or a wake-up; returns the sockets with a
    /// connection waiting.
    fn wait(&self, deadline: Instant) -> io::Result<Vec<String>> {
        let watched: Vec<(&String, &Socket)> =
            self.sockets.iter().filter(|(_, s)| s.watched()).collect();
        let mut fds = vec![PollFd::new(&*self.wake.0, PollFlags::IN)];
        fds.extend(
            watched
                .iter()
                .map(|(_, s)| PollFd::new(&s.listener, PollFlags::IN)),
        );
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        poll(&mut fds, Some(&timeout))?;
        if !fds[0].revents().is_empty() {
            self.wake.clear();
        }
        Ok(fds[1..]
            .iter()
            .zip(&watched)
            .filter(|(fd, _)| !fd.revents().is_empty())
            .map(|(_, (name, _))| (*name).clone())
            .collect())
    }

    /// A driver connected to `name`'s socket: start a session, or turn it away.
    fn connection(&mut self, name: &str) {
        let Some(socket) = self.sockets.get_mut(name) else {
            return;
        };
        let mut state = socket.state.lock().expect("state");
        match *state {
            State::Idle => {
                if let Some(old) = socket.session.take() {
                    let _ = old.join();
                }
                *state = State::Starting;
                drop(state);
                let listener = match socket.listener.try_clone() {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("{}: {e}", socket.path.display());
                        *socket.state.lock().expect("state") = State::Idle;
                        return;
                    }
                };
                let session = Session {
                    name: name.to_string(),
                    exports: self.exports.clone(),
                    settings: self.settings.clone(),
                    state: socket.state.clone(),
                    wake: self.wake.clone(),
                };
                match std::thread::Builder::new()
                    .name("cvol-vhost-session".into())
                    .spawn(move || session.run(listener))
                {
                    Ok(handle) => socket.session = Some(handle),
                    Err(e) => {
                        tracing::error!("{name}: cannot start a vhost-user session: {e}");
                        *socket.state.lock().expect("state") = State::Idle;
                    }
                }
            }
            State::Connected(_) => socket.refuse_at = Some(Instant::now() + GRACE),
            State::Starting | State::Closing => {}
        }
    }

    /// Closes the connections that waited out their grace while a driver stayed
    /// connected; those whose socket fell idle meanwhile are served on the next poll.
    fn refuse_waiting(&mut self) {
        let now = Instant::now();
        for socket in self.sockets.values_mut() {
            let Some(at) = socket.refuse_at else {
                continue;
            };
            match *socket.state.lock().expect("state") {
                State::Idle => socket.refuse_at = None,
                State::Connected(_) if at <= now => {
                    socket.refuse_at = None;
                    if let Ok((stream, _)) = socket.listener.accept() {
                        drop(stream);
                        tracing::warn!(
                            "{}: refused a second vhost-user driver: the disk is already connected",
                            socket.path.display()
                        );
                    }
                }
                State::Connected(_) | State::Starting | State::Closing => {}
            }
        }
    }

    /// Adds a socket for every new export and removes those of exports gone and idle.
    fn rescan(&mut self) {
        let names = match self.exports.names() {
            Ok(names) => names,
            Err(e) => {
                tracing::warn!("vhost-user: cannot list the disks: {e}");
                return;
            }
        };
        for name in &names {
            if self.sockets.contains_key(name) {
                continue;
            }
            match self.bind(name) {
                Ok(socket) => {
                    tracing::debug!("vhost-user: {name} on {}", socket.path.display());
                    self.sockets.insert(name.clone(), socket);
                }
                Err(e) => tracing::warn!("vhost-user: cannot serve {name}: {e}"),
            }
        }
        let gone: Vec<String> = self
            .sockets
            .iter()
            .filter(|(name, s)| {
                !names.contains(name) && matches!(*s.state.lock().expect("state"), State::Idle)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            if let Some(socket) = self.sockets.remove(&name) {
                self.remove(socket);
            }
        }
    }

    fn bind(&self, name: &str) -> io::Result<Socket> {
        let path = socket_path(&self.dir, name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // A socket file left by a daemon that did not stop cleanly.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Socket {
            path,
            listener,
            state: Arc::new(Mutex::new(State::Idle)),
            session: None,
            refuse_at: None,
        })
    }

    fn remove(&self, socket: Socket) {
        if let Some(session) = socket.session {
            let _ = session.join();
        }
        let _ = std::fs::remove_file(&socket.path);
        if let Some(parent) = socket.path.parent() {
            if parent != self.dir {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    fn close_all(&mut self) {
        for socket in self.sockets.values() {
            if let State::Connected(Some(handle)) = &*socket.state.lock().expect("state") {
                handle.shutdown();
            }
        }
        for (_, socket) in std::mem::take(&mut self.sockets) {
            self.remove(socket);
        }
    }
}

/// One driver's connection to one disk.
struct Session {
    name: String,
    exports: Arc<dyn Exports>,
    settings: Settings,
    state: Arc<Mutex<State>>,
    wake: Wake,
}

impl Session {
    fn run(self, listener: UnixListener) {
        if let Err(e) = self.serve(listener) {
            tracing::warn!("vhost-user {}: {e}", self.name);
        }
        *self.state.lock().expect("state") = State::Idle;
        self.wake.wake();
    }

    fn serve(&self, listener: UnixListener) -> Result<(), String> {
        // The watcher saw a connection waiting; this thread alone accepts it.
        listener.set_nonblocking(false).map_err(|e| e.to_string())?;
        let export = match self.exports.open(&self.name) {
            Ok(export) => export,
            Err(e) => {
                let _ = listener.accept();
                return Err(format!("refused a driver: {e}"));
            }
        };
        let backend = BlkBackend::new(
            &self.name,
            &self.name,
            export.device.clone(),
            &self.settings,
        )
        .map_err(|e| e.to_string())?;
        let served = self.serve_backend(&backend, listener);
        backend.close();
        drop(export);
        served
    }

    fn serve_backend(
        &self,
        backend: &Arc<BlkBackend>,
        listener: UnixListener,
    ) -> Result<(), String> {
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new(self.name.clone(), backend.clone(), mem)
            .map_err(|e| e.to_string())?;
        let mut listener = vhost::vhost_user::Listener::from(listener);
        daemon.start(&mut listener).map_err(|e| e.to_string())?;
        *self.state.lock().expect("state") = State::Connected(daemon.shutdown_handle());
        self.wake.wake();
        tracing::info!("vhost-user {}: driver connected", self.name);
        let result = match daemon.wait() {
            // The driver closing its end is how a session ends.
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
            )) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        *self.state.lock().expect("state") = State::Closing;
        tracing::info!("vhost-user {}: driver disconnected", self.name);
        result
    }
}
