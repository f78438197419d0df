//! The client side of the agent API: the CLI over the agent's unix socket, and agents
//! calling their peers over HTTP with the cluster's bearer token.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::api::ErrorBody;

/// Where the CLI finds the local agent unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/cvol/agent.sock";

/// Where an agent is reached.
enum Endpoint {
    /// The agent of this host, on its unix socket.
    Local(PathBuf),
    /// A peer's API: `HOST:PORT` and the bearer token.
    Peer { addr: String, token: String },
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

    /// A peer agent at `url` (`http://HOST:PORT`, as its host record advertises it).
    pub fn peer(url: &str, token: &str) -> anyhow::Result<Self> {
        let addr = url
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| anyhow!("peer address {url:?} is not http://HOST:PORT"))?;
        Ok(Self {
            endpoint: Endpoint::Peer {
                addr: addr.to_string(),
                token: token.to_string(),
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
            Endpoint::Peer { addr, token } => request
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
                Endpoint::Peer { addr, .. } => {
                    let stream = tokio::net::TcpStream::connect(addr.as_str())
                        .await
                        .with_context(|| format!("no host agent answers at {addr}"))?;
                    exchange!(stream, request)
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
