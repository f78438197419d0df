//! The CLI's side of the agent API, over the agent's unix socket.

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

/// A client of the host agent on this host.
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    /// The agent listening on `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
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
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (status, bytes) = runtime.block_on(async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .with_context(|| {
                    format!(
                        "no host agent answers at {} (is `cvol host run` running? --agent names its socket)",
                        self.socket.display()
                    )
                })?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            let body = match body {
                Some(b) => Bytes::from(serde_json::to_vec(b)?),
                None => Bytes::new(),
            };
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header("host", "localhost")
                .header("content-type", "application/json")
                .body(Full::new(body))?;
            let response = sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
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
