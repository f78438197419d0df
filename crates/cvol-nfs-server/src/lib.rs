//! The embedded metadata share: an NFSv3 server for a local directory
//! (`cvol nfs serve`, and what `cvol up` mounts its share through).
//!
//! The protocol (RPC, MOUNT, the portmapper's GETPORT and NFSv3 itself, all on one TCP
//! port) is the `nfs3_server` crate's; [`LocalExport`] is the file system it serves.
//! An [`ExportPolicy`] limits who is served (client networks, checked on every call,
//! MOUNT or not: others are answered MNT3ERR_ACCES / NFS3ERR_ACCES), whether anything may
//! change, and whether root is squashed. A server running as root acts as each call's
//! AUTH_SYS identity, so permissions and new files' owners are the caller's (see
//! `caller`); one running as another user acts as that user for everybody.

mod attrs;
mod caller;
mod export;
mod handles;

use std::net::SocketAddr;
use std::path::Path;

use cvol_share::{LocalShare, NfsUrl, ShareError};
use nfs3_server::tcp::{NFSTcp, NFSTcpListener};

pub use caller::ANONYMOUS;
pub use export::LocalExport;
pub use handles::{Handle, DEFAULT_FILE_HANDLES};
pub use ipnet::IpNet;

/// Who the export serves, as whom, and whether it may be changed.
#[derive(Debug, Clone)]
pub struct ExportPolicy {
    /// Client networks served; empty serves every client.
    pub allow: Vec<IpNet>,
    /// Every change is refused (NFS3ERR_ROFS).
    pub read_only: bool,
    /// Calls claiming uid or gid 0 act as [`ANONYMOUS`] (the default, as on every NFS
    /// server: AUTH_SYS is the client's word).
    pub root_squash: bool,
    /// Handles of files (not directories) kept in memory; past that, the least recently
    /// used go, and are found again by inode in their directory when a client uses them.
    pub file_handles: usize,
}

impl Default for ExportPolicy {
    /// Every client, writable, root squashed.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            read_only: false,
            root_squash: true,
            file_handles: handles::DEFAULT_FILE_HANDLES,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The directory to export cannot be opened.
    #[error("cannot export {dir}: {source}")]
    Export {
        /// The directory.
        dir: String,
        /// What went wrong.
        source: ShareError,
    },
    /// The listening socket (or the runtime serving it) cannot be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// A running server; dropping it stops it.
pub struct NfsServer {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl NfsServer {
    /// Exports `dir` on `listen` (port 0 picks a free one) and serves it on threads of
    /// its own until dropped.
    pub fn start(dir: &Path, listen: SocketAddr) -> Result<Self, ServerError> {
        Self::start_with(dir, listen, &ExportPolicy::default())
    }

    /// As [`NfsServer::start`], serving under `policy`.
    pub fn start_with(
        dir: &Path,
        listen: SocketAddr,
        policy: &ExportPolicy,
    ) -> Result<Self, ServerError> {
        let export_error = |source| ServerError::Export {
            dir: dir.display().to_string(),
            source,
        };
        let export = LocalShare::open(dir)
            .and_then(|share| LocalExport::new(share, policy))
            .map_err(export_error)?;
        let listen_error = |source| ServerError::Listen {
            addr: listen,
            source,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("nfs-server")
            .enable_all()
            .build()
            .map_err(listen_error)?;
        let listen_on = listen.to_string();
        let addr = if policy.read_only {
            let listener = runtime
                .block_on(NFSTcpListener::bind_ro(&listen_on, export))
                .map_err(listen_error)?;
            spawn_serving(&runtime, listener, listen)
        } else {
            let listener = runtime
                .block_on(NFSTcpListener::bind(&listen_on, export))
                .map_err(listen_error)?;
            spawn_serving(&runtime, listener, listen)
        };
        tracing::info!("serving {} over NFSv3 on {addr}", dir.display());
        Ok(Self {
            addr,
            runtime: Some(runtime),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The share URL a client mounts the export's root with.
    pub fn url(&self) -> NfsUrl {
        NfsUrl::parse(&format!("nfs://{}/", self.addr)).expect("a valid URL")
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Serves `listener` on `runtime` until it is shut down; returns the address it is on.
fn spawn_serving<T>(
    runtime: &tokio::runtime::Runtime,
    listener: NFSTcpListener<T>,
    listen: SocketAddr,
) -> SocketAddr
where
    T: nfs3_server::vfs::NfsFileSystem + 'static,
{
    let addr = SocketAddr::new(listen.ip(), listener.get_listen_port());
    runtime.spawn(async move {
        if let Err(e) = listener.handle_forever().await {
            tracing::error!("NFS server on {addr} stopped: {e}");
        }
    });
    addr
}
