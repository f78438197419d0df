//! One handler per API call: validate the request, run the provider call on the blocking
//! pool, answer JSON.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cvol_format::{SnapshotName, VolumeId};
use cvol_provider::remote::api::{
    AttachmentBody, CreateAttachment, CreateSnapshot, CreateVolume, Leftovers, PoolBody, Reclaim,
    ResizeVolume, RevertVolume, SnapshotBody, SnapshotList, VolumeBody, VolumePage,
    MAX_VOLUME_SIZE,
};
use cvol_provider::{NoProgress, Provider, ProviderError, Snapshot, Volume, VolumeSource};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// What every handler shares.
pub struct Service {
    /// The pool.
    pub provider: Arc<dyn Provider>,
}

type Shared = State<Arc<Service>>;
type Answer<T> = Result<T, ApiError>;

/// Runs `call` on the provider on the blocking pool: provider calls do file I/O.
async fn run<T: Send + 'static>(
    service: &Arc<Service>,
    call: impl FnOnce(&dyn Provider) -> Result<T, ProviderError> + Send + 'static,
) -> Answer<T> {
    let service = service.clone();
    tokio::task::spawn_blocking(move || call(&*service.provider))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the call failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

/// A request body: a JSON object of the call's fields. (serde would also take an array
/// of them in order, which the API does not.)
fn object<T: DeserializeOwned>(body: Result<Json<Value>, JsonRejection>) -> Answer<T> {
    let Json(value) = body?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("Failed to deserialize the JSON body into the target type: {e}"),
        )
    })
}

fn volume_id(id: &str) -> Answer<VolumeId> {
    VolumeId::new(id).map_err(|e| ApiError::bad_request("invalid_volume_id", e.to_string()))
}

/// A snapshot name of the API: stricter than the pool's (ASCII, so that its length in
/// bytes and in characters agree), so that every name the API takes fits every pool.
fn snapshot_name(name: &str) -> Answer<SnapshotName> {
    let ascii = name
        .bytes()
        .enumerate()
        .all(|(i, b)| b.is_ascii_alphanumeric() || b"_+=,@-".contains(&b) || (i > 0 && b == b'.'));
    if !ascii || name.len() > 255 {
        return Err(ApiError::bad_request(
            "invalid_snapshot_name",
            format!("snapshot name {name:?}: expected 1 to 255 of A-Z a-z 0-9 _ + = , @ - and '.' (not first)"),
        ));
    }
    SnapshotName::new(name)
        .map_err(|e| ApiError::bad_request("invalid_snapshot_name", e.to_string()))
}

/// Host ids and owners are labels: one line of text.
fn label(what: &str, text: &str) -> Answer<()> {
    let chars = text.chars().count();
    if !(1..=255).contains(&chars) || text.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            &format!("invalid_{what}"),
            format!("{what} {text:?}: expected 1 to 255 characters without control characters"),
        ));
    }
    Ok(())
}

/// A size the API takes; the pool checks the rest.
fn size(size: u64) -> Answer<u64> {
    if size > MAX_VOLUME_SIZE {
        return Err(ApiError::bad_request(
            "invalid_size",
            format!("size {size}: at most {MAX_VOLUME_SIZE} bytes (8 TiB)"),
        ));
    }
    Ok(size)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn volume_body(v: Volume) -> VolumeBody {
    VolumeBody {
        id: v.id.to_string(),
        size: v.size,
        owner: v.owner,
        created_unix_ms: unix_ms(v.created),
        attached_to: v.attached_to,
        allocated: None,
    }
}

fn snapshot_body(s: Snapshot) -> SnapshotBody {
    SnapshotBody {
        name: s.name.to_string(),
        size: s.size,
        created_unix_ms: unix_ms(s.created),
    }
}

/// `GET /v1/pool`.
pub async fn pool(State(service): Shared) -> Json<PoolBody> {
    Json(PoolBody {
        location: service.provider.location(),
    })
}

/// `POST /v1/volumes`.
pub async fn create_volume(
    State(service): Shared,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<(StatusCode, Json<VolumeBody>)> {
    let request: CreateVolume = object(body)?;
    let id = volume_id(&request.id)?;
    label("owner", &request.owner)?;
    let source = match (request.size, request.source) {
        (Some(bytes), None) => VolumeSource::Blank { size: size(bytes)? },
        (None, Some(source)) => {
            let from = volume_id(&source.volume)?;
            match source.snapshot {
                Some(name) => VolumeSource::Snapshot(from, snapshot_name(&name)?),
                None => VolumeSource::Volume(from),
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_body",
                "give exactly one of size (a blank volume) and source (a copy)",
            ))
        }
    };
    let owner = request.owner;
    let volume = run(&service, move |p| {
        p.create_volume(&id, &source, &owner, &NoProgress)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(volume_body(volume))))
}

/// The query of `GET /v1/volumes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// The most volumes one page holds.
const MAX_PAGE: usize = 1000;

/// `GET /v1/volumes?limit=N&after=ID`: volumes in id order, a page at a time.
pub async fn list_volumes(
    State(service): Shared,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer<Json<VolumePage>> {
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {limit}: expected 1 to {MAX_PAGE}"),
        ));
    }
    let after = query.after.as_deref().map(volume_id).transpose()?;
    let mut volumes = run(&service, |p| p.list_volumes()).await?;
    volumes.sort_by(|a, b| a.id.cmp(&b.id));
    let mut page: Vec<Volume> = volumes
        .into_iter()
        .filter(|v| after.as_ref().is_none_or(|after| &v.id > after))
        .take(limit + 1)
        .collect();
    let next = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().expect("a full page").id.to_string()
    });
    Ok(Json(VolumePage {
        volumes: page.into_iter().map(volume_body).collect(),
        next,
    }))
}

/// `GET /v1/volumes/{id}`.
pub async fn get_volume(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Answer<Json<VolumeBody>> {
    let id = volume_id(&path?.0)?;
    let (volume, allocated) =
        run(&service, move |p| Ok((p.volume(&id)?, p.allocated(&id)?))).await?;
    Ok(Json(VolumeBody {
        allocated,
        ..volume_body(volume)
    }))
}

/// `PATCH /v1/volumes/{id}`.
pub async fn resize_volume(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<Json<VolumeBody>> {
    let id = volume_id(&path?.0)?;
    let request: ResizeVolume = object(body)?;
    let new_size = size(request.size)?;
    let volume = run(&service, move |p| {
        p.resize_volume(&id, new_size, request.allow_shrink)
    })
    .await?;
    Ok(Json(volume_body(volume)))
}

/// `DELETE /v1/volumes/{id}`.
pub async fn delete_volume(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Answer<StatusCode> {
    let id = volume_id(&path?.0)?;
    run(&service, move |p| p.delete_volume(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/volumes/{id}/revert`.
pub async fn revert_volume(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<Json<VolumeBody>> {
    let id = volume_id(&path?.0)?;
    let request: RevertVolume = object(body)?;
    let name = snapshot_name(&request.snapshot)?;
    // 404 is for the volume of the path; a snapshot named in the body that it does not
    // have is a conflict with the volume's state.
    let volume = run(&service, move |p| p.revert_volume(&id, &name, &NoProgress))
        .await
        .map_err(|e| match e.code() {
            "snapshot_not_found" => e.with_status(StatusCode::CONFLICT),
            _ => e,
        })?;
    Ok(Json(volume_body(volume)))
}

/// `POST /v1/volumes/{id}/snapshots`.
pub async fn create_snapshot(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<(StatusCode, Json<SnapshotBody>)> {
    let id = volume_id(&path?.0)?;
    let request: CreateSnapshot = object(body)?;
    let name = snapshot_name(&request.name)?;
    let snapshot = run(&service, move |p| {
        p.create_snapshot(&id, &name, &NoProgress)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(snapshot_body(snapshot))))
}

/// `GET /v1/volumes/{id}/snapshots`.
pub async fn list_snapshots(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Answer<Json<SnapshotList>> {
    let id = volume_id(&path?.0)?;
    let snapshots = run(&service, move |p| p.list_snapshots(&id)).await?;
    Ok(Json(SnapshotList {
        snapshots: snapshots.into_iter().map(snapshot_body).collect(),
    }))
}

/// `DELETE /v1/volumes/{id}/snapshots/{name}`.
pub async fn delete_snapshot(
    State(service): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer<StatusCode> {
    let Path((id, name)) = path?;
    let (id, name) = (volume_id(&id)?, snapshot_name(&name)?);
    run(&service, move |p| p.delete_snapshot(&id, &name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/volumes/{id}/attachments`.
pub async fn attach(
    State(service): Shared,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<Json<AttachmentBody>> {
    let id = volume_id(&path?.0)?;
    let request: CreateAttachment = object(body)?;
    label("host_id", &request.host_id)?;
    if request.force && request.standby {
        return Err(ApiError::bad_request(
            "invalid_attachment",
            "an attachment is either forced (a takeover) or a standby, not both",
        ));
    }
    let host = request.host_id;
    let attachment = run(&service, move |p| match request.standby {
        true => p.attach_standby(&id, &host),
        false => p.attach(&id, &host, request.force),
    })
    .await?;
    tracing::info!(volume = %attachment.volume, host = attachment.host, generation = attachment.generation, "attached");
    Ok(Json(AttachmentBody {
        volume: attachment.volume.to_string(),
        host_id: attachment.host,
        generation: attachment.generation,
        access: attachment.access,
    }))
}

/// `DELETE /v1/volumes/{id}/attachments/{host_id}`: a no-op unless the host holds it.
pub async fn detach(
    State(service): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Answer<StatusCode> {
    let Path((id, host)) = path?;
    let id = volume_id(&id)?;
    label("host_id", &host)?;
    run(&service, move |p| p.detach(&id, &host)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/reclaim`.
pub async fn reclaim(
    State(service): Shared,
    body: Result<Json<Value>, JsonRejection>,
) -> Answer<Json<Leftovers>> {
    let request: Reclaim = object(body)?;
    let leftovers = run(&service, move |p| p.reclaim_interrupted(request.apply)).await?;
    Ok(Json(Leftovers { leftovers }))
}
