//! Connections to the server, shared by the calls of many threads.
//!
//! Each call takes a connection of its own, so calls from the container's threads and the
//! NBD server run side by side instead of queueing behind one socket. A broken connection
//! is dropped, and the next call that needs one mounts again.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

use nfs3_client::nfs3_types::rpc::{auth_unix, opaque_auth};
use nfs3_client::nfs3_types::xdr_codec::Opaque;
use nfs3_client::{Nfs3Connection, Nfs3ConnectionBuilder};

use super::pipeline::Pipeline;
use super::transport::{RecordStream, TcpConnector};
use crate::nfs_url::NfsUrl;

/// A mounted connection.
pub(super) type Connection = Nfs3Connection<RecordStream<std::net::TcpStream>>;

/// Up to `max` connections to one export.
pub(super) struct Pool {
    url: NfsUrl,
    max: usize,
    timeout: Duration,
    state: Mutex<State>,
    returned: Condvar,
}

struct State {
    idle: Vec<Connection>,
    open: usize,
}

/// What to do to get a connection.
pub(super) enum Checkout {
    /// Use this idle one.
    Idle(Box<Connection>),
    /// Mount a new one (a slot is reserved for it: give it back or [`Pool::discard`] it).
    Mount(Nfs3ConnectionBuilder<TcpConnector>),
}

impl Pool {
    /// A pool of up to `max` connections to `url`, each giving up on a server that
    /// sends nothing for `timeout`.
    pub(super) fn new(url: NfsUrl, max: usize, timeout: Duration) -> Self {
        Self {
            url,
            max: max.max(1),
            timeout,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// An idle connection, or the builder for a new one; waits while all are in use.
    pub(super) fn checkout(&self) -> Checkout {
        let mut state = self.state.lock().expect("NFS pool lock");
        loop {
            if let Some(connection) = state.idle.pop() {
                return Checkout::Idle(Box::new(connection));
            }
            if state.open < self.max {
                state.open += 1;
                return Checkout::Mount(self.builder());
            }
            state = self.returned.wait(state).expect("NFS pool lock");
        }
    }

    /// Gives back a connection that works.
    pub(super) fn put(&self, connection: Box<Connection>) {
        self.state
            .lock()
            .expect("NFS pool lock")
            .idle
            .push(*connection);
        self.returned.notify_one();
    }

    /// Frees the slot of a connection that broke (or was never made).
    pub(super) fn discard(&self) {
        self.state.lock().expect("NFS pool lock").open -= 1;
        self.returned.notify_one();
    }

    /// Drops every idle connection: after a failure they are likely broken too.
    pub(super) fn drain(&self) {
        let mut state = self.state.lock().expect("NFS pool lock");
        state.open -= state.idle.len();
        state.idle.clear();
        self.returned.notify_all();
    }

    /// A connection of its own for pipelined calls, to the NFS port that `mounted` (a
    /// connection of this pool) was given.
    pub(super) fn pipeline(&self, mounted: &Connection) -> std::io::Result<Pipeline> {
        let host: std::net::IpAddr = mounted
            .host
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let stream = self
            .connector()
            .connect_now((host, mounted.nfs3_port).into())?;
        Ok(Pipeline::new(stream, credential()))
    }

    fn connector(&self) -> TcpConnector {
        TcpConnector {
            timeout: self.timeout,
        }
    }

    fn builder(&self) -> Nfs3ConnectionBuilder<TcpConnector> {
        let url = &self.url;
        let builder = Nfs3ConnectionBuilder::new(self.connector(), &url.host, &url.export)
            .credential(credential())
            .connect_from_privileged_port(false);
        match (url.port, url.mount_port) {
            (Some(port), mount) => builder.nfs3_port(port).mount_port(mount.unwrap_or(port)),
            (None, Some(mount)) => builder.mount_port(mount),
            (None, None) => builder,
        }
    }
}

/// Who cvol's calls are made as: the process's user and group.
fn credential() -> opaque_auth<'static> {
    opaque_auth::auth_unix(&auth_unix {
        stamp: 0,
        machinename: Opaque::owned(b"cvol".to_vec()),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        gids: vec![],
    })
}
