//! A share reached over NFSv3 from user space (no kernel client needed), with the
//! `nfs3_client` crate speaking the protocol.
//!
//! Paths are resolved to file handles by LOOKUP, one component at a time, and the handles
//! are cached; a stale handle (the server renamed or removed something) drops the cache
//! and the call is resolved again, so no call ever acts on the wrong file. Symlinks are
//! never followed: an operation on a symlink acts on the link (or fails), so nothing on
//! the server can lead outside the export. Calls that are safe to repeat are retried
//! across reconnects until the share's timeout; the server's "try later"
//! (NFS3ERR_JUKEBOX) is waited out the same way.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use nfs3_client::nfs3_types::nfs3::*;
use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::tokio::{TokioConnector, TokioIo};
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};

use crate::nfs_url::NfsUrl;
use crate::{
    DirEntry, FileKind, Metadata, SetAttributes, SetTime, Share, ShareError, SharePath, ShareStats,
};

type Connection = Nfs3Connection<TokioIo<tokio::net::TcpStream>>;

/// Bytes moved by one READ or WRITE.
const IO_SIZE: u32 = 1 << 20;

/// An NFSv3 share.
pub struct NfsShare {
    url: NfsUrl,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    state: Mutex<State>,
}

struct State {
    connection: Option<Connection>,
    root: nfs_fh3,
    handles: HashMap<SharePath, nfs_fh3>,
}

/// Why a call failed.
enum CallError {
    /// The server answered with an error status.
    Status(nfsstat3),
    /// The connection failed.
    Transport(String),
}

fn status_error(path: &SharePath, op: &'static str, status: nfsstat3) -> ShareError {
    use rustix::io::Errno;
    let errno = match status {
        nfsstat3::NFS3ERR_NOENT => return ShareError::NotFound(path.clone()),
        nfsstat3::NFS3ERR_EXIST => return ShareError::AlreadyExists(path.clone()),
        // RFC 1813 numbers these after the errnos of its day; from 63 on, Linux differs.
        nfsstat3::NFS3ERR_NAMETOOLONG => Errno::NAMETOOLONG,
        nfsstat3::NFS3ERR_NOTEMPTY => Errno::NOTEMPTY,
        nfsstat3::NFS3ERR_DQUOT => Errno::DQUOT,
        nfsstat3::NFS3ERR_STALE => Errno::STALE,
        nfsstat3::NFS3ERR_REMOTE => Errno::REMOTE,
        nfsstat3::NFS3ERR_NOTSUPP => Errno::NOTSUP,
        s if (s as i32) < 63 => Errno::from_raw_os_error(s as i32),
        _ => Errno::IO,
    };
    ShareError::Io {
        path: path.clone(),
        op,
        source: io::Error::from_raw_os_error(errno.raw_os_error()),
    }
}

fn time_of(t: &nfstime3) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(u64::from(t.seconds), t.nseconds.min(999_999_999))
}

fn metadata_of(a: &fattr3) -> Metadata {
    Metadata {
        kind: match a.type_ {
            ftype3::NF3REG => FileKind::File,
            ftype3::NF3DIR => FileKind::Dir,
            ftype3::NF3LNK => FileKind::Symlink,
            _ => FileKind::Other,
        },
        inode: a.fileid,
        size: a.size,
        allocated: a.used,
        mode: a.mode & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        accessed: time_of(&a.atime),
        modified: time_of(&a.mtime),
        changed: time_of(&a.ctime),
    }
}

fn name(n: &str) -> filename3<'_> {
    filename3(Opaque::borrowed(n.as_bytes()))
}

fn set_time(t: Option<SetTime>) -> (bool, Option<nfstime3>) {
    match t {
        None => (false, None),
        Some(SetTime::Now) => (true, None),
        Some(SetTime::At(t)) => (true, nfstime3::try_from(t).ok()),
    }
}

fn sattr(changes: &SetAttributes) -> sattr3 {
    let opt = |v: Option<u32>| v.map_or(Nfs3Option::None, Nfs3Option::Some);
    let atime = match set_time(changes.accessed) {
        (false, _) => set_atime::DONT_CHANGE,
        (true, None) => set_atime::SET_TO_SERVER_TIME,
        (true, Some(t)) => set_atime::SET_TO_CLIENT_TIME(t),
    };
    let mtime = match set_time(changes.modified) {
        (false, _) => set_mtime::DONT_CHANGE,
        (true, None) => set_mtime::SET_TO_SERVER_TIME,
        (true, Some(t)) => set_mtime::SET_TO_CLIENT_TIME(t),
    };
    sattr3 {
        mode: opt(changes.mode),
        uid: opt(changes.uid),
        gid: opt(changes.gid),
        size: changes.size.map_or(Nfs3Option::None, Nfs3Option::Some),
        atime,
        mtime,
    }
}

/// Runs `$call` on a connected client. Idempotent calls (`retry`) are repeated over
/// reconnects and JUKEBOX answers until the share's timeout; the others are sent once.
macro_rules! rpc {
    ($self:expr, $state:expr, $retry:expr, |$c:ident| $call:expr) => {{
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let outcome: Result<_, CallError> = match $self.connect(&mut *$state) {
                Err(e) => Err(e),
                Ok(()) => {
                    let $c = $state.connection.as_mut().expect("connected");
                    match $self.block_on($call) {
                        Ok(Nfs3Result::Ok(ok)) => Ok(ok),
                        Ok(Nfs3Result::Err((status, _))) => Err(CallError::Status(status)),
                        Err(e) => {
                            $state.connection = None;
                            Err(CallError::Transport(e.to_string()))
                        }
                    }
                }
            };
            match outcome {
                Err(CallError::Status(nfsstat3::NFS3ERR_JUKEBOX))
                | Err(CallError::Transport(_))
                    if $retry && started.elapsed() < $self.timeout =>
                {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                other => break other,
            }
        }
    }};
}

impl NfsShare {
    /// Mounts the share at `url`; calls give up after `timeout` without the server.
    pub fn open(url: &NfsUrl, timeout: Duration) -> Result<Self, ShareError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Self::io_error(url, e))?;
        let share = Self {
            url: url.clone(),
            timeout,
            runtime,
            state: Mutex::new(State {
                connection: None,
                root: nfs_fh3::default(),
                handles: HashMap::new(),
            }),
        };
        {
            let mut state = share.state.lock().expect("nfs lock");
            share
                .connect(&mut state)
                .map_err(|e| share.call_error(&SharePath::root(), "mount", e))?;
        }
        Ok(share)
    }

    /// REMOVE (or RMDIR, for a directory) of `path`.
    fn remove(&self, path: &SharePath, op: &'static str, dir: bool) -> Result<(), ShareError> {
        self.with(path, op, |s, st| {
            let (parent, leaf) = s.parent(st, path)?;
            let object = || diropargs3 {
                dir: parent.clone(),
                name: name(leaf),
            };
            if dir {
                rpc!(s, st, false, |c| c.rmdir(&RMDIR3args { object: object() }))?;
            } else {
                rpc!(s, st, false, |c| c
                    .remove(&REMOVE3args { object: object() }))?;
            }
            forget(st, path);
            Ok(())
        })
    }

    /// Runs an NFS call to completion on the share's runtime.
    fn block_on<F>(&self, call: F) -> F::Output
    where
        F: std::future::Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(call);
        }
        // Called from inside another runtime (e.g. the NBD server's blocking threads),
        // where no runtime can be entered: the call runs on a thread of its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| self.runtime.block_on(call))
                .join()
                .expect("NFS call thread")
        })
    }

    fn io_error(url: &NfsUrl, e: impl std::fmt::Display) -> ShareError {
        ShareError::Io {
            path: SharePath::root(),
            op: "mount",
            source: io::Error::other(format!("{url}: {e}")),
        }
    }

    fn call_error(&self, path: &SharePath, op: &'static str, e: CallError) -> ShareError {
        match e {
            CallError::Status(s) => status_error(path, op, s),
            CallError::Transport(e) => ShareError::Io {
                path: path.clone(),
                op,
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("NFS server {}: {e}", self.url),
                ),
            },
        }
    }

    fn connect(&self, state: &mut State) -> Result<(), CallError> {
        if state.connection.is_some() {
            return Ok(());
        }
        let credential = opaque_auth::auth_unix(&auth_unix {
            stamp: 0,
            machinename: Opaque::owned(b"cvol".to_vec()),
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            gids: vec![],
        });
        let mut builder =
            Nfs3ConnectionBuilder::new(TokioConnector, &self.url.host, &self.url.export)
                .credential(credential)
                .connect_from_privileged_port(false);
        if let Some(port) = self.url.port {
            builder = builder
                .nfs3_port(port)
                .mount_port(self.url.mount_port.unwrap_or(port));
        } else if let Some(port) = self.url.mount_port {
            builder = builder.mount_port(port);
        }
        let connection = self
            .runtime
            .block_on(builder.mount())
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let root = connection.root_nfs_fh3();
        if root != state.root {
            state.handles.clear();
            state.root = root;
        }
        state.connection = Some(connection);
        Ok(())
    }

    /// The handle of `path`, by LOOKUPs from the nearest cached ancestor. A symlink on
    /// the way is not walked through: LOOKUP in it fails with NOTDIR.
    fn resolve(&self, state: &mut State, path: &SharePath) -> Result<nfs_fh3, CallError> {
        self.connect(state)?;
        if path.is_root() {
            return Ok(state.root.clone());
        }
        if let Some(fh) = state.handles.get(path) {
            return Ok(fh.clone());
        }
        let (parent, leaf) = path.split_last().expect("not the root");
        let dir = self.resolve(state, &parent)?;
        let found = rpc!(self, state, true, |c| c.lookup(&LOOKUP3args {
            what: diropargs3 {
                dir: dir.clone(),
                name: name(leaf)
            }
        }))?;
        state.handles.insert(path.clone(), found.object.clone());
        Ok(found.object)
    }

    /// Runs `op` on `path` with the share locked; a stale handle is resolved afresh once.
    fn with<T>(
        &self,
        path: &SharePath,
        op: &'static str,
        f: impl Fn(&Self, &mut State) -> Result<T, CallError>,
    ) -> Result<T, ShareError> {
        let mut state = self.state.lock().expect("nfs lock");
        let result = f(self, &mut state);
        let result = match result {
            Err(CallError::Status(nfsstat3::NFS3ERR_STALE | nfsstat3::NFS3ERR_BADHANDLE)) => {
                tracing::info!("{path}: stale NFS file handle; resolving again");
                state.handles.clear();
                f(self, &mut state)
            }
            other => other,
        };
        result.map_err(|e| self.call_error(path, op, e))
    }

    /// The parent's handle and the last name of `path`.
    fn parent<'p>(
        &self,
        state: &mut State,
        path: &'p SharePath,
    ) -> Result<(nfs_fh3, &'p str), CallError> {
        let (parent, leaf) = path
            .split_last()
            .ok_or(CallError::Status(nfsstat3::NFS3ERR_INVAL))?;
        Ok((self.resolve(state, &parent)?, leaf))
    }

    fn getattr(&self, state: &mut State, fh: &nfs_fh3) -> Result<fattr3, CallError> {
        Ok(rpc!(self, state, true, |c| c
            .getattr(&GETATTR3args { object: fh.clone() }))?
        .obj_attributes)
    }

    /// The handle of `path`, which must not be a symlink (they are not followed).
    fn file(&self, state: &mut State, path: &SharePath) -> Result<nfs_fh3, CallError> {
        let fh = self.resolve(state, path)?;
        if self.getattr(state, &fh)?.type_ == ftype3::NF3LNK {
            return Err(CallError::Status(nfsstat3::NFS3ERR_INVAL));
        }
        Ok(fh)
    }

    fn read_range(
        &self,
        state: &mut State,
        fh: &nfs_fh3,
        offset: u64,
        len: usize,
    ) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        while out.len() < len {
            let count = (len - out.len()).min(IO_SIZE as usize) as u32;
            let at = offset + out.len() as u64;
            let ok = rpc!(self, state, true, |c| c.read(&READ3args {
                file: fh.clone(),
                offset: at,
                count
            }))?;
            out.extend_from_slice(ok.data.as_ref());
            if ok.eof || ok.count == 0 {
                break;
            }
        }
        Ok(out)
    }

    fn write_range(
        &self,
        state: &mut State,
        fh: &nfs_fh3,
        offset: u64,
        data: &[u8],
    ) -> Result<(), CallError> {
        let mut done = 0;
        while done < data.len() {
            let chunk = &data[done..data.len().min(done + IO_SIZE as usize)];
            let at = offset + done as u64;
            let ok = rpc!(self, state, true, |c| c.write(&WRITE3args {
                file: fh.clone(),
                offset: at,
                count: chunk.len() as u32,
                stable: stable_how::FILE_SYNC,
                data: Opaque::borrowed(chunk),
            }))?;
            if ok.count == 0 {
                return Err(CallError::Status(nfsstat3::NFS3ERR_IO));
            }
            done += ok.count as usize;
        }
        Ok(())
    }

    fn create(&self, state: &mut State, path: &SharePath, mode: u32) -> Result<nfs_fh3, CallError> {
        let (dir, leaf) = self.parent(state, path)?;
        let attrs = || {
            sattr(&SetAttributes {
                mode: Some(mode),
                ..SetAttributes::default()
            })
        };
        let ok = rpc!(self, state, false, |c| c.create(&CREATE3args {
            where_: diropargs3 {
                dir: dir.clone(),
                name: name(leaf)
            },
            how: createhow3::GUARDED(attrs())
        }))?;
        state.handles.remove(path);
        match ok.obj {
            Nfs3Option::Some(fh) => Ok(fh),
            Nfs3Option::None => self.resolve(state, path),
        }
    }
}

/// Drops the cached handles of `path` and everything below it.
fn forget(state: &mut State, path: &SharePath) {
    let prefix = format!("{}/", path.as_str());
    state
        .handles
        .retain(|p, _| p != path && !p.as_str().starts_with(&prefix));
}

impl Share for NfsShare {
    fn location(&self) -> String {
        self.url.to_string()
    }

    fn metadata(&self, path: &SharePath) -> Result<Metadata, ShareError> {
        self.with(path, "stat", |s, st| {
            let fh = s.resolve(st, path)?;
            Ok(metadata_of(&s.getattr(st, &fh)?))
        })
    }

    fn read_dir(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
        self.with(path, "list directory", |s, st| {
            let dir = s.file(st, path)?;
            let mut entries = Vec::new();
            let (mut cookie, mut verf) = (0, cookieverf3::default());
            loop {
                let ok = rpc!(s, st, true, |c| c.readdirplus(&READDIRPLUS3args {
                    dir: dir.clone(),
                    cookie,
                    cookieverf: verf,
                    dircount: 64 << 10,
                    maxcount: 256 << 10,
                }))?;
                verf = ok.cookieverf;
                for e in &ok.reply.entries.0 {
                    cookie = e.cookie;
                    let entry_name = String::from_utf8_lossy(e.name.as_ref()).into_owned();
                    if entry_name == "." || entry_name == ".." {
                        continue;
                    }
                    let kind = match &e.name_attributes {
                        Nfs3Option::Some(a) => metadata_of(a).kind,
                        Nfs3Option::None => FileKind::Other,
                    };
                    entries.push(DirEntry {
                        name: entry_name,
                        kind,
                    });
                }
                if ok.reply.eof || ok.reply.entries.0.is_empty() {
                    break;
                }
            }
            Ok(entries)
        })
    }

    fn read(&self, path: &SharePath) -> Result<Vec<u8>, ShareError> {
        // Up to the server's end-of-file, not to a size read before: the size may have
        // changed in between.
        self.with(path, "read", |s, st| {
            let fh = s.file(st, path)?;
            s.read_range(st, &fh, 0, usize::MAX)
        })
    }

    fn write_atomic(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        let (parent, leaf) = path.split_last().ok_or_else(|| ShareError::InvalidPath {
            path: String::new(),
            reason: "the share's root cannot be written",
        })?;
        let tmp_name = format!(".{leaf}.cvol-tmp-{}", uuid::Uuid::new_v4().simple());
        let tmp = parent.join(&tmp_name[..tmp_name.len().min(255)])?;
        let renamed = self
            .create_new(&tmp, data)
            .and_then(|()| self.rename(&tmp, path));
        if renamed.is_err() {
            let _ = self.remove_file(&tmp);
        }
        renamed
    }

    fn create_new(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        self.with(path, "create", |s, st| {
            let fh = s.create(st, path, crate::FILE_MODE)?;
            s.write_range(st, &fh, 0, data)
        })
    }

    fn create_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        self.with(path, "mkdir", |s, st| {
            let (dir, leaf) = s.parent(st, path)?;
            let attributes = || {
                sattr(&SetAttributes {
                    mode: Some(0o755),
                    ..SetAttributes::default()
                })
            };
            rpc!(s, st, false, |c| c.mkdir(&MKDIR3args {
                where_: diropargs3 {
                    dir: dir.clone(),
                    name: name(leaf)
                },
                attributes: attributes()
            }))?;
            Ok(())
        })
    }

    fn remove_file(&self, path: &SharePath) -> Result<(), ShareError> {
        self.remove(path, "remove", false)
    }

    fn remove_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        self.remove(path, "rmdir", true)
    }

    fn rename(&self, from: &SharePath, to: &SharePath) -> Result<(), ShareError> {
        self.with(from, "rename", |s, st| {
            let (from_dir, from_leaf) = s.parent(st, from)?;
            let (to_dir, to_leaf) = s.parent(st, to)?;
            rpc!(s, st, false, |c| c.rename(&RENAME3args {
                from: diropargs3 {
                    dir: from_dir.clone(),
                    name: name(from_leaf)
                },
                to: diropargs3 {
                    dir: to_dir.clone(),
                    name: name(to_leaf)
                },
            }))?;
            forget(st, from);
            forget(st, to);
            Ok(())
        })
    }

    fn read_at(&self, path: &SharePath, offset: u64, len: usize) -> Result<Vec<u8>, ShareError> {
        self.with(path, "read", |s, st| {
            let fh = s.file(st, path)?;
            s.read_range(st, &fh, offset, len)
        })
    }

    fn write_at(&self, path: &SharePath, offset: u64, data: &[u8]) -> Result<(), ShareError> {
        self.with(path, "write", |s, st| {
            let fh = s.file(st, path)?;
            s.write_range(st, &fh, offset, data)
        })
    }

    fn create_file(&self, path: &SharePath, mode: u32) -> Result<(), ShareError> {
        self.with(path, "create", |s, st| s.create(st, path, mode).map(drop))
    }

    fn set_attributes(&self, path: &SharePath, changes: &SetAttributes) -> Result<(), ShareError> {
        self.with(path, "set attributes", |s, st| {
            let fh = s.resolve(st, path)?;
            rpc!(s, st, true, |c| c.setattr(&SETATTR3args {
                object: fh.clone(),
                new_attributes: sattr(changes),
                guard: Nfs3Option::None
            }))?;
            Ok(())
        })
    }

    fn symlink(&self, path: &SharePath, target: &str) -> Result<(), ShareError> {
        self.with(path, "symlink", |s, st| {
            let (dir, leaf) = s.parent(st, path)?;
            rpc!(s, st, false, |c| c.symlink(&SYMLINK3args {
                where_: diropargs3 {
                    dir: dir.clone(),
                    name: name(leaf)
                },
                symlink: symlinkdata3 {
                    symlink_attributes: sattr3::default(),
                    symlink_data: nfspath3(Opaque::borrowed(target.as_bytes()))
                },
            }))?;
            Ok(())
        })
    }

    fn read_link(&self, path: &SharePath) -> Result<String, ShareError> {
        self.with(path, "readlink", |s, st| {
            let fh = s.resolve(st, path)?;
            let ok = rpc!(s, st, true, |c| c.readlink(&READLINK3args {
                symlink: fh.clone()
            }))?;
            Ok(String::from_utf8_lossy(ok.data.as_ref()).into_owned())
        })
    }

    fn sync(&self, path: &SharePath) -> Result<(), ShareError> {
        // Every WRITE is FILE_SYNC already; COMMIT makes that explicit for any other writer.
        self.with(path, "fsync", |s, st| {
            let fh = s.file(st, path)?;
            rpc!(s, st, true, |c| c.commit(&COMMIT3args {
                file: fh.clone(),
                offset: 0,
                count: 0
            }))?;
            Ok(())
        })
    }

    fn stats(&self) -> Result<ShareStats, ShareError> {
        self.with(&SharePath::root(), "statvfs", |s, st| {
            let fh = st.root.clone();
            let ok = rpc!(s, st, true, |c| c
                .fsstat(&FSSTAT3args { fsroot: fh.clone() }))?;
            Ok(ShareStats {
                block_size: 4096,
                blocks: ok.tbytes / 4096,
                blocks_free: ok.fbytes / 4096,
                blocks_available: ok.abytes / 4096,
                files: ok.tfiles,
                files_free: ok.ffiles,
                name_max: 255,
            })
        })
    }
}
