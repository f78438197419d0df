//! Listeners: accept connections on a unix socket or TCP, bounded in number, each
//! negotiated and then served on its own task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::exports::Exports;
use crate::{handshake, transmission};

/// How the server serves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Exports refuse writes.
    pub readonly: bool,
    /// Connections served at once; more are closed at accept, with a log line.
    pub max_connections: usize,
    /// Largest request payload, advertised as the maximum block size.
    pub max_request: u32,
    /// Log requests the device fails; off where the only client is a job that reports
    /// its own failures (an import's `qemu-img`).
    pub log_failures: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            readonly: false,
            max_connections: 256,
            max_request: 32 << 20,
            log_failures: true,
        }
    }
}

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket at this path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    /// `unix:PATH` or `tcp:ADDR:PORT`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path".into());
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = s.strip_prefix("tcp:") {
            addr.parse()
                .map(Self::Tcp)
                .map_err(|e| format!("{addr:?}: {e} (expected ADDR:PORT, e.g. 127.0.0.1:10809)"))
        } else {
            Err(format!("{s:?}: expected unix:PATH or tcp:ADDR:PORT"))
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// An NBD server over a set of exports.
pub struct NbdServer {
    exports: Arc<dyn Exports>,
    settings: Settings,
    connections: Arc<Semaphore>,
}

impl NbdServer {
    /// A server for `exports`.
    pub fn new(exports: Arc<dyn Exports>, settings: Settings) -> Arc<Self> {
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        Arc::new(Self {
            exports,
            settings,
            connections,
        })
    }

    /// Binds `listen` (replacing a stale unix socket) and serves it until the task is
    /// dropped. Binding errors come back at once.
    pub async fn bind(
        self: &Arc<Self>,
        listen: &Listen,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let this = self.clone();
        match listen {
            Listen::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                Ok(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, _)) => this.clone().accept(stream, "unix".to_string()),
                            Err(e) => tracing::warn!("NBD accept: {e}"),
                        }
                    }
                }))
            }
            Listen::Tcp(addr) => {
                if !addr.ip().is_loopback() {
                    tracing::warn!(
                        "NBD on {addr}: reachable beyond this host, without authentication or TLS"
                    );
                }
                let listener = TcpListener::bind(addr).await?;
                Ok(tokio::spawn(async move {
                    loop {
                        match listener.accept().await {
                            Ok((stream, peer)) => {
                                let _ = stream.set_nodelay(true);
                                this.clone().accept(stream, peer.to_string())
                            }
                            Err(e) => tracing::warn!("NBD accept: {e}"),
                        }
                    }
                }))
            }
        }
    }

    fn accept<S>(self: Arc<Self>, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(
                peer,
                "NBD connection refused: {} connections already",
                self.settings.max_connections
            );
            return;
        };
        tokio::spawn(async move {
            self.serve_connection(stream, &peer).await;
            drop(permit);
        });
    }

    /// Negotiates with and then serves one client on `stream` until it goes away. The
    /// listeners call it for each connection; fuzzing calls it on in-memory streams.
    pub async fn serve_connection<S>(&self, stream: S, peer: &str)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        match handshake::negotiate(&mut r, &mut w, &self.exports, &self.settings, peer).await {
            Ok(Some(session)) => {
                tracing::info!(
                    peer,
                    export = session.name,
                    size = session.size,
                    structured = session.structured,
                    "NBD export opened"
                );
                transmission::serve(r, w, session, &self.settings, peer).await;
            }
            Ok(None) => tracing::debug!(peer, "NBD client aborted the negotiation"),
            // Clients such as `nbdinfo --list` hang up right after their last option,
            // without waiting for the answer: nothing for an operator to look into.
            Err(handshake::HandshakeError::Io(e)) if is_hang_up(&e) => {
                tracing::debug!(peer, "NBD client hung up during the negotiation: {e}")
            }
            Err(e) => tracing::warn!(peer, "NBD negotiation ended: {e}"),
        }
    }
}

/// True when the peer closed the connection.
fn is_hang_up(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}
