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
    /// TLS offered by NBD_OPT_STARTTLS, if at all.
    pub tls: Option<TlsPolicy>,
}

/// How a server offers TLS ("TLS support" in the NBD spec).
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    /// What the server and its clients prove themselves with.
    pub credentials: TlsCredentials,
    /// Refuse every option before NBD_OPT_STARTTLS (NBD_REP_ERR_TLS_REQD), so that no
    /// export is reached without TLS; otherwise TLS is the client's choice.
    pub require: bool,
}

/// What a TLS server proves itself with, and asks of its clients.
#[derive(Debug, Clone)]
pub enum TlsCredentials {
    /// x509: the server's certificate and key, and the CA client certificates must chain
    /// to when it asks for them.
    X509(Arc<rustls::ServerConfig>),
    /// Pre-shared keys by identity (TLS-PSK).
    #[cfg(feature = "tls-psk")]
    Psk(Arc<crate::psk::PskKeys>),
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            readonly: false,
            max_connections: 256,
            max_request: 32 << 20,
            log_failures: true,
            tls: None,
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
                if !addr.ip().is_loopback()
                    && !self.settings.tls.as_ref().is_some_and(|t| t.require)
                {
                    tracing::warn!(
                        "NBD on {addr}: reachable beyond this host, without TLS required (--nbd-tls require)"
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
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
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
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        let negotiated = match handshake::greet(&mut r, &mut w).await {
            Ok(no_zeroes) => self.haggle(&mut r, &mut w, no_zeroes, false, peer).await,
            Err(e) => Err(e),
        };
        match negotiated {
            Ok(Some(handshake::Negotiation::StartTls)) => {
                self.serve_tls(r, w, peer).await;
            }
            Ok(Some(handshake::Negotiation::Session(session))) => {
                transmission::serve(r, w, session, &self.settings, peer).await;
            }
            Ok(_) => {}
            Err(e) => log_handshake_error(peer, &e),
        }
    }

    /// After NBD_OPT_STARTTLS was acknowledged: the TLS handshake on the same
    /// connection, then the options again over TLS, then transmission.
    async fn serve_tls<S>(
        &self,
        r: BufReader<tokio::io::ReadHalf<S>>,
        w: tokio::io::WriteHalf<S>,
        peer: &str,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The client may send nothing between STARTTLS and its TLS hello; bytes already
        // here would be read as if they came over TLS (an injection), so they end it.
        if !r.buffer().is_empty() {
            tracing::warn!(
                peer,
                "NBD client sent data right after NBD_OPT_STARTTLS: closed"
            );
            return;
        }
        let credentials = &self.settings.tls.as_ref().expect("TLS offered").credentials;
        let stream = r.into_inner().unsplit(w);
        match credentials {
            TlsCredentials::X509(config) => {
                match tokio_rustls::TlsAcceptor::from(config.clone())
                    .accept(stream)
                    .await
                {
                    Ok(stream) => self.serve_over_tls(stream, peer).await,
                    Err(e) => tracing::warn!(peer, "NBD TLS handshake failed: {e}"),
                }
            }
            #[cfg(feature = "tls-psk")]
            TlsCredentials::Psk(keys) => match keys.accept(stream).await {
                Ok(stream) => self.serve_over_tls(stream, peer).await,
                Err(e) => tracing::warn!(peer, "NBD TLS-PSK handshake failed: {e}"),
            },
        }
    }

    /// The options again, over TLS, then transmission.
    async fn serve_over_tls<S>(&self, stream: S, peer: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let mut r = BufReader::new(r);
        // Newer options come over TLS; the flags of the greeting still hold.
        match self.haggle(&mut r, &mut w, true, true, peer).await {
            Ok(Some(handshake::Negotiation::Session(session))) => {
                tracing::info!(peer, export = session.name, "NBD export opened over TLS");
                transmission::serve(r, w, session, &self.settings, peer).await;
            }
            Ok(_) => {}
            Err(e) => log_handshake_error(peer, &e),
        }
    }

    /// The options of one connection; `None` when the client aborted.
    async fn haggle<R, W>(
        &self,
        r: &mut R,
        w: &mut W,
        no_zeroes: bool,
        tls: bool,
        peer: &str,
    ) -> Result<Option<handshake::Negotiation>, handshake::HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let negotiation =
            handshake::haggle(r, w, no_zeroes, tls, &self.exports, &self.settings, peer).await?;
        match &negotiation {
            handshake::Negotiation::Session(session) => tracing::info!(
                peer,
                export = session.name,
                size = session.size,
                structured = session.structured,
                "NBD export opened"
            ),
            handshake::Negotiation::Aborted => {
                tracing::debug!(peer, "NBD client aborted the negotiation");
                return Ok(None);
            }
            handshake::Negotiation::StartTls => tracing::debug!(peer, "NBD STARTTLS"),
        }
        Ok(Some(negotiation))
    }
}

fn log_handshake_error(peer: &str, e: &handshake::HandshakeError) {
    match e {
        // Clients such as `nbdinfo --list` hang up right after their last option,
        // without waiting for the answer: nothing for an operator to look into.
        handshake::HandshakeError::Io(e) if is_hang_up(e) => {
            tracing::debug!(peer, "NBD client hung up during the negotiation: {e}")
        }
        e => tracing::warn!(peer, "NBD negotiation ended: {e}"),
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
