//! The agent's API (HTTP/JSON, version 1): on a unix socket for the CLI of this host
//! (root only, by the socket's mode), and on TCP for peer hosts (bearer token).
//!
//! - `GET /v1/host`: this agent;
//! - `GET /v1/hosts`: every host, its heartbeat age, alive or dead, and its VMs;
//! - `GET /v1/vms/{vm}`: a VM's lease and its QEMU here;
//! - `POST /v1/vms/{vm}/start` `{"takeover": false}`;
//! - `POST /v1/vms/{vm}/stop` `{"timeout_s": 60, "force": false}`;
//! - `POST /v1/vms/{vm}/migrate` `{"to": HOST}`: answers when the VM has moved (or not);
//! - `POST /v1/vms/{vm}/snapshot` `{"name": NAME}`: a VM snapshot, the guest paused (sent
//!   on to the VM's host where it runs elsewhere);
//! - between agents, for a migration: `POST /v1/vms/{vm}/incoming`
//!   `{"source": HOST, "epoch": N}`, `POST /v1/vms/{vm}/promote` `{"epoch": N}` and
//!   `POST /v1/vms/{vm}/abort-incoming`.
//!
//! Errors are `{"error": CODE, "message": …, "holder": …}` with 400, 401, 404, 409 or 503.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cvol_format::{SnapshotName, VmName};
use serde::{Deserialize, Serialize};

use super::migrate::{IncomingRequest, MigrateRequest, PromoteRequest};
use super::{Agent, AgentError};

/// `POST /v1/vms/{vm}/start`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Take the VM over from a host whose lease expired.
    #[serde(default)]
    pub takeover: bool,
}

/// `POST /v1/vms/{vm}/stop`
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Seconds to wait for the guest to power off [default: the agent's stop timeout].
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// End QEMU at once, without asking the guest.
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/vms/{vm}/snapshot`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name.
    pub name: String,
    /// Sent on by another host's agent: not to be sent on again.
    #[serde(default)]
    pub forwarded: bool,
}

/// Every error answer's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code.
    pub error: String,
    /// What happened, for people.
    pub message: String,
    /// Who holds the VM, where that is the trouble.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (status, code, holder) = match &self {
            AgentError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            AgentError::Conflict { holder, .. } => (StatusCode::CONFLICT, "held", holder.clone()),
            AgentError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid", None),
            AgentError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping", None),
            AgentError::Failed(_) => (StatusCode::INTERNAL_SERVER_ERROR, "failed", None),
        };
        let body = ErrorBody {
            error: code.into(),
            message: self.to_string(),
            holder,
        };
        (status, Json(body)).into_response()
    }
}

type Answer<T> = Result<Json<T>, AgentError>;

/// The API over `agent`, without authentication (the unix socket's).
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/hosts", get(hosts))
        .route("/v1/vms/{vm}", get(vm_status))
        .route("/v1/vms/{vm}/start", post(start))
        .route("/v1/vms/{vm}/stop", post(stop))
        .route("/v1/vms/{vm}/migrate", post(migrate))
        .route("/v1/vms/{vm}/snapshot", post(snapshot))
        .route("/v1/vms/{vm}/incoming", post(incoming))
        .route("/v1/vms/{vm}/promote", post(promote))
        .route("/v1/vms/{vm}/abort-incoming", post(abort_incoming))
        .fallback(|| async { AgentError::NotFound("no such API call".into()) })
        .with_state(agent)
}

/// The API for peer hosts: every call needs `token`.
pub fn peer_router(agent: Arc<Agent>, token: String) -> Router {
    cvol_provider_service::with_bearer_token(router(agent), Some(token))
}

fn vm_name(vm: &str) -> Result<VmName, AgentError> {
    VmName::new(vm).map_err(|e| AgentError::Invalid(e.to_string()))
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AgentError> {
    body.map(|Json(b)| b)
        .map_err(|e| AgentError::Invalid(format!("invalid request body: {}", e.body_text())))
}

/// Runs blocking agent work (share and provider calls, waiting for QEMU) off the
/// runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Answer<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::Failed(anyhow::anyhow!("agent task failed: {e}")))?
        .map(Json)
}

async fn host(State(agent): State<Arc<Agent>>) -> Answer<super::HostInfo> {
    Ok(Json(agent.info()))
}

async fn hosts(State(agent): State<Arc<Agent>>) -> Answer<Vec<super::HostStatus>> {
    blocking(move || Ok(agent.host_list())).await
}

async fn vm_status(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> Answer<super::VmStatus> {
    let vm = vm_name(&vm)?;
    blocking(move || agent.vm_status(&vm)).await
}

async fn start(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<StartRequest>, JsonRejection>,
) -> Answer<super::VmStatus> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    blocking(move || agent.start_vm(&vm, request.takeover)).await
}

async fn stop(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<StopRequest>, JsonRejection>,
) -> Answer<super::VmStatus> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    let timeout = request.timeout_s.map(Duration::from_secs);
    blocking(move || agent.stop_vm(&vm, timeout, request.force)).await
}

async fn snapshot(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<SnapshotRequest>, JsonRejection>,
) -> Answer<cvol_datastore::VmSnapshot> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    let name = SnapshotName::new(&request.name).map_err(|e| AgentError::Invalid(e.to_string()))?;
    blocking(move || agent.snapshot_vm(&vm, &name, request.forwarded)).await
}

async fn migrate(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<MigrateRequest>, JsonRejection>,
) -> Answer<super::MigrationReport> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    blocking(move || agent.migrate_vm(&vm, &request.to)).await
}

async fn incoming(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<IncomingRequest>, JsonRejection>,
) -> Answer<super::IncomingAnswer> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    blocking(move || agent.incoming_vm(&vm, &request)).await
}

async fn promote(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
    request: Result<Json<PromoteRequest>, JsonRejection>,
) -> Answer<super::VmStatus> {
    let (vm, request) = (vm_name(&vm)?, body(request)?);
    blocking(move || agent.promote_vm(&vm, request.epoch)).await
}

async fn abort_incoming(
    State(agent): State<Arc<Agent>>,
    Path(vm): Path<String>,
) -> Answer<super::VmStatus> {
    let vm = vm_name(&vm)?;
    blocking(move || agent.abort_incoming(&vm)).await
}
