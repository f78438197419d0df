//! The provider service's wire format (API version 1), shared by the service and the
//! `remote` provider. `openapi.yaml` in the service's crate documents the same shapes.

use serde::{Deserialize, Deserializer, Serialize};

use crate::DataAccess;

/// The path prefix of every version-1 call.
pub const PREFIX: &str = "/v1";

/// The largest volume API version 1 creates: 8 TiB.
pub const MAX_VOLUME_SIZE: u64 = 8 << 40;

/// An optional field that, when present, holds a value: `null` is refused like any
/// other wrong type, as the OpenAPI schema says.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A volume (`GET /v1/volumes/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeBody {
    /// `vol-` and 32 hex digits.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// Who created it (cvol: the datastore uuid).
    pub owner: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The host holding it, if any.
    pub attached_to: Option<String>,
    /// Bytes it takes in the pool (a thin volume: what was written), where the pool
    /// tells; only in the answer about one volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocated: Option<u64>,
}

/// One page of volumes (`GET /v1/volumes?limit=N&after=ID`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VolumePage {
    /// Volumes in id order.
    pub volumes: Vec<VolumeBody>,
    /// The `after` of the next page; absent on the last.
    pub next: Option<String>,
}

/// What a new volume is made from: exactly one of `size` or `source`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    /// The id the caller chose. It is the create's idempotency key: a create repeated
    /// after a lost answer finds the volume made by the first.
    pub id: String,
    /// Who creates it.
    pub owner: String,
    /// Bytes of a blank volume.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    /// The volume or snapshot to copy.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub source: Option<Source>,
}

/// A copy's origin: a volume, or one of its snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// The volume.
    pub volume: String,
    /// The snapshot of it, if copying a snapshot.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub snapshot: Option<String>,
}

/// `PATCH /v1/volumes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    /// The new size in bytes.
    pub size: u64,
    /// Shrinking loses data: refused unless true.
    #[serde(default)]
    pub allow_shrink: bool,
}

/// `POST /v1/volumes/{id}/snapshots`; the name is the create's idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// Its name, unique per volume.
    pub name: String,
}

/// `POST /v1/volumes/{id}/revert`: the volume becomes its snapshot again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertVolume {
    /// The snapshot to go back to.
    pub snapshot: String,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBody {
    /// Its name.
    pub name: String,
    /// Size in bytes of the volume when taken.
    pub size: u64,
    /// When it was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// `GET /v1/volumes/{id}/snapshots`: oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotList {
    /// The snapshots.
    pub snapshots: Vec<SnapshotBody>,
}

/// `POST /v1/volumes/{id}/attachments`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAttachment {
    /// The host to attach to.
    pub host_id: String,
    /// Take the volume over from another holder, fencing it.
    #[serde(default)]
    pub force: bool,
    /// Open the volume as a standby (live migration's destination): reads only, the
    /// holder keeps it; promoted later by an attach with `force`.
    #[serde(default)]
    pub standby: bool,
}

/// An attachment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttachmentBody {
    /// The volume.
    pub volume: String,
    /// The host holding it.
    pub host_id: String,
    /// Grows with every new holder; older ones are fenced.
    pub generation: u64,
    /// How the host reaches the bytes.
    pub access: DataAccess,
}

/// `POST /v1/reclaim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reclaim {
    /// Remove what is found (otherwise only report it).
    #[serde(default)]
    pub apply: bool,
}

/// What `POST /v1/reclaim` found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Leftovers {
    /// One description per leftover.
    pub leftovers: Vec<String>,
}

/// `GET /v1/pool`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolBody {
    /// Where the service's pool is, e.g. `file:/srv/pool`.
    pub location: String,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable code, e.g. `volume_not_found`, `attached_elsewhere`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// The volume the error is about, if it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The snapshot the error is about, if it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// With `attached_elsewhere`: the host holding the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}
