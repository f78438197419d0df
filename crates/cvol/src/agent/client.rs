//! The client side of the agent API: the CLI over the agent's unix socket, and agents
//! calling their peers over HTTP with the cluster's bearer token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::ErrorBody;

/// Where the CLI finds the local agent unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cvol/agent.sock";

/// Where an agent is reached.
enum Endpoint {
    /// The agent of this host, on its unix socket.
    Local(PathBuf),
    /// A peer's API: `HOST:PORT`, the bearer token, and TLS (an `https://` peer).
    Peer {
        addr: String,
        token: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

/// A client of one host agent.
pub struct AgentClient {
    endpoint: Endpoint,
}

/// Connects a stream of either kind and speaks HTTP/1.1 over it.
macro_rules! exchange {
    ($stream:expr, $request:expr) => {{
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new($stream)).await?;
        tokio::spawn(connection);
        let response = sender.send_request($request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, bytes))
    }};
}

impl AgentClient {
    /// The agent listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            endpoint: Endpoint::Local(socket.to_path_buf()),
        }
    }

    /// A peer agent at `url` (`http://HOST:PORT` or `https://HOST:PORT`, as its host
    /// record advertises it); an `https://` peer needs this host's TLS settings.
    pub fn peer(
        url: &str,
        token: &str,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        let (addr, tls) = match (url.split_once("://"), tls) {
            (Some(("http", addr)), _) => (addr, None),
            (Some(("https", addr)), Some(tls)) => (addr, Some(tls.clone())),
            (Some(("https", _)), None) => bail!(
                "peer {url} serves TLS, and this host has no TLS settings (tls_cert, tls_key, tls_ca) to reach it"
            ),
            _ => bail!("peer address {url:?} is not http(s)://HOST:PORT"),
        };
        let addr = addr.trim_end_matches('/');
        if addr.is_empty() || addr.contains('/') {
            bail!("peer address {url:?} is not http(s)://HOST:PORT");
        }
        Ok(Self {
            endpoint: Endpoint::Peer {
                addr: addr.to_string(),
                token: token.to_string(),
                tls,
            },
        })
    }

    /// `GET path`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None::<&()>)
    }

    /// `POST path` with `body`.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        self.call(Method::POST, path, Some(body))
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let body = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b)?),
            None => Bytes::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        request = match &self.endpoint {
            Endpoint::Local(_) => request.header("host", "localhost"),
            Endpoint::Peer { addr, token, .. } => request
                .header("host", addr.as_str())
                .header("authorization", format!("Bearer {token}")),
        };
        let request = request.body(Full::new(body))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (status, bytes) = runtime.block_on(async {
            match &self.endpoint {
                Endpoint::Local(socket) => {
                    let stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
                        format!(
                            "no host agent answers at {} (is `cvol host run` running? --agent names its socket)",
                            socket.display()
                        )
                    })?;
                    exchange!(stream, request)
                }
                Endpoint::Peer { addr, tls, .. } => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .with_context(|| format!("no host agent answers at {addr}"))?;
                    match tls {
                        None => exchange!(stream, request),
                        Some(tls) => {
                            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
                            let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
                                .with_context(|| format!("peer address {addr}"))?;
                            let stream = tokio_rustls::TlsConnector::from(tls.clone())
                                .connect(name, stream)
                                .await
                                .with_context(|| format!("TLS with the host agent at {addr}"))?;
                            exchange!(stream, request)
                        }
                    }
                }
            }
        })?;
        if !status.is_success() {
            let error: ErrorBody = serde_json::from_slice(&bytes).map_err(|_| {
                anyhow!(
                    "the agent answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                )
            })?;
            bail!("{}", error.message);
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer from the agent to {path}"))
    }
}
