//! Where virtual disks live (DESIGN.md, "Providers").
//!
//! A [`Provider`] is a storage pool's control plane: it creates, resizes, snapshots,
//! clones, deletes and attaches volumes. Attaching gives a [`BlockDevice`], the data
//! plane: everything that moves disk bytes (the file system container, NBD) takes a
//! `BlockDevice` and nothing more, so none of it knows where the bytes are.

mod block;
mod error;
mod file;
pub mod object;
pub mod rbd;
pub mod remote;
mod settings;
mod standby;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use cvol_format::{ProviderConfig, SnapshotName, VolumeId};
use serde::{Deserialize, Serialize};

pub use block::{AsyncIo, BlockDevice, BlockError, BlockExtent, IoDone};
pub use error::ProviderError;
pub use file::FileProvider;
pub use object::ObjectProvider;
pub use rbd::RbdProvider;
pub use remote::RemoteProvider;
use settings::Settings;

/// A volume as its provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Its id.
    pub id: VolumeId,
    /// Size in bytes.
    pub size: u64,
    /// Who created it, as given at creation: cvol puts the datastore uuid here, so a
    /// pool shared by several datastores knows which volumes are whose.
    pub owner: String,
    /// When it was created.
    pub created: SystemTime,
    /// The host it is attached to, if any.
    pub attached_to: Option<String>,
}

/// Space in a pool, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSpace {
    /// In all.
    pub total: u64,
    /// Free.
    pub free: u64,
    /// Free to unprivileged users.
    pub available: u64,
    /// The file system holding the pool (`statvfs`'s `f_fsid`), so that pools (and a
    /// share) on one file system are counted once.
    pub fs_id: u64,
}

/// Orders volumes as `Provider::list_volumes` lists them: oldest first, then by id.
pub(crate) fn sort_volumes(volumes: &mut [Volume]) {
    volumes.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
}

/// Volumes read at once by [`read_volumes`]: each read waits on a disk or a cluster.
const LIST_PARALLEL: usize = 8;

/// The volumes `ids` name, each read by `read`, several at once, as
/// `Provider::list_volumes` lists them; one removed meanwhile is left out.
pub(crate) fn read_volumes(
    ids: &[VolumeId],
    read: impl Fn(&VolumeId) -> Result<Volume, ProviderError> + Sync,
) -> Result<Vec<Volume>, ProviderError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..LIST_PARALLEL.min(ids.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                match read(id) {
                    Err(ProviderError::VolumeNotFound { .. }) => {}
                    result => found.lock().expect("found lock").push(result),
                }
            });
        }
    });
    let mut volumes = found
        .into_inner()
        .expect("found lock")
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    sort_volumes(&mut volumes);
    Ok(volumes)
}

/// Refuses a size that is zero or not a multiple of 512.
pub(crate) fn check_sector_size(provider: &str, size: u64) -> Result<(), ProviderError> {
    if size == 0 || !size.is_multiple_of(cvol_format::SECTOR_SIZE) {
        return Err(ProviderError::InvalidSize {
            provider: provider.to_string(),
            size,
            reason: "must be a non-zero multiple of 512".into(),
        });
    }
    Ok(())
}

/// Refuses a resize from `from` to a smaller `to` unless shrinking was allowed: what lies
/// past the new end would be lost.
pub(crate) fn check_shrink(
    provider: &str,
    volume: &VolumeId,
    from: u64,
    to: u64,
    allow_shrink: bool,
) -> Result<(), ProviderError> {
    if to < from && !allow_shrink {
        return Err(ProviderError::ShrinkRefused {
            provider: provider.to_string(),
            volume: volume.to_string(),
            from,
            to,
        });
    }
    Ok(())
}

/// A read-only point-in-time copy of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Its name, unique per volume.
    pub name: SnapshotName,
    /// Size in bytes of the volume when it was taken.
    pub size: u64,
    /// When it was taken.
    pub created: SystemTime,
}

/// What a new volume is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A zeroed, sparse volume of this many bytes.
    Blank {
        /// Size in bytes, a multiple of 512.
        size: u64,
    },
    /// A copy of a volume's current content.
    Volume(VolumeId),
    /// A copy of a snapshot's content.
    Snapshot(VolumeId, SnapshotName),
}

/// Reports the progress of long copies (clone and snapshot without reflink).
pub trait CopyProgress: Sync {
    /// A copy of `total` bytes starts.
    fn start(&self, total: u64);
    /// `bytes` more bytes are done.
    fn advance(&self, bytes: u64);
    /// The copy is over.
    fn finish(&self);
}

/// Progress that nobody watches.
pub struct NoProgress;

impl CopyProgress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

/// How a host reaches an attached volume's bytes: what a provider service tells a host
/// when it attaches a volume for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataAccess {
    /// A volume of a file pool the host sees at the same path as the service (one
    /// machine, or a pool on a file system every host mounts).
    File {
        /// The volume's data file.
        data: PathBuf,
        /// Its fence file, which holds the newest attachment generation.
        fence: PathBuf,
    },
    /// A volume of an object pool the host reaches itself (with its own credentials,
    /// from the usual AWS environment for `s3://`).
    Object {
        /// The pool, `file:///dir` or `s3://bucket/prefix`.
        url: String,
    },
    /// A volume of an `rbd` pool: an image a host opens with its own Ceph client.
    Rbd {
        /// The RBD pool.
        pool: String,
        /// The image.
        image: String,
    },
}

/// A volume attached to this host: its data plane.
#[derive(Clone)]
pub struct Attachment {
    /// The attached volume.
    pub volume: VolumeId,
    /// The host that holds it.
    pub host: String,
    /// Grows with every attachment of the volume to a host, forced or not: a device is
    /// fenced as soon as its generation is no longer the newest.
    pub generation: u64,
    /// How the bytes are reached.
    pub access: DataAccess,
    /// The device that reads and writes it.
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("volume", &self.volume)
            .field("host", &self.host)
            .field("generation", &self.generation)
            .field("size", &self.device.size())
            .finish()
    }
}

/// A storage pool's control plane.
///
/// Callers choose volume ids ([`VolumeId::generate`]) before creating, so that a crash
/// between "create" and "record it" can be repaired by looking the id up.
pub trait Provider: Send + Sync {
    /// Where the pool is, for messages, e.g. `file:/srv/pool`.
    fn location(&self) -> String;

    /// Creates volume `id` from `source`, tagged with `owner`. Fails with
    /// `VolumeExists` if `id` is taken. Copies report to `progress`.
    fn create_volume(
        &self,
        id: &VolumeId,
        source: &VolumeSource,
        owner: &str,
        progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError>;

    /// The volume `id`.
    fn volume(&self, id: &VolumeId) -> Result<Volume, ProviderError>;

    /// Every volume in the pool.
    fn list_volumes(&self) -> Result<Vec<Volume>, ProviderError>;

    /// Changes the size of volume `id`; shrinking loses data and needs `allow_shrink`.
    fn resize_volume(
        &self,
        id: &VolumeId,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Volume, ProviderError>;

    /// Deletes volume `id` and its snapshots. Refused while it is attached.
    fn delete_volume(&self, id: &VolumeId) -> Result<(), ProviderError>;

    /// Takes snapshot `name` of volume `id`.
    fn create_snapshot(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        progress: &dyn CopyProgress,
    ) -> Result<Snapshot, ProviderError>;

    /// The snapshots of volume `id`, oldest first.
    fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<Snapshot>, ProviderError>;

    /// Volume `id` and its snapshots, oldest first: [`Provider::volume`] and
    /// [`Provider::list_snapshots`] in one, for pools where one look at the volume can
    /// serve both (an RBD image opened once, a volume's directory found once).
    fn describe(&self, id: &VolumeId) -> Result<(Volume, Vec<Snapshot>), ProviderError> {
        Ok((self.volume(id)?, self.list_snapshots(id)?))
    }

    /// Deletes snapshot `name` of volume `id`.
    fn delete_snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Result<(), ProviderError>;

    /// Sets volume `id` back to its snapshot `name`: its data and size become the
    /// snapshot's, and every snapshot (that one, older and newer ones) stays. Refused
    /// with `AttachedElsewhere` while the volume is attached; repeating it changes nothing.
    fn revert_volume(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError>;

    /// Attaches volume `id` to `host`. A volume is attached to one host at a time: another
    /// host gets `AttachedElsewhere` naming the holder, unless `force`, which takes the
    /// volume over with a new generation and fences the old holder's device. Attaching
    /// again from the same host gives the same generation.
    fn attach(&self, id: &VolumeId, host: &str, force: bool) -> Result<Attachment, ProviderError>;

    /// Opens volume `id` on `host` as a standby (the destination of a live migration):
    /// its device reads what the holder wrote (an object volume: as of the holder's last
    /// flush) and refuses every write with `BlockError::Standby`. Nothing changes for the
    /// holder: no record, no generation. `attach(id, host, true)` promotes the standby to
    /// owner, fencing the old holder. The attachment reports the holder's generation.
    fn attach_standby(&self, id: &VolumeId, host: &str) -> Result<Attachment, ProviderError>;

    /// Detaches volume `id` from `host` and fences the device it held; a no-op if it is
    /// not attached there.
    fn detach(&self, id: &VolumeId, host: &str) -> Result<(), ProviderError>;

    /// Finds what interrupted operations left behind in the pool (half-built or
    /// half-deleted volumes and snapshots) that is older than a grace period, so that it
    /// cannot belong to an operation still running elsewhere; removes it when `apply`.
    /// Returns a description of each leftover.
    fn reclaim_interrupted(&self, apply: bool) -> Result<Vec<String>, ProviderError>;

    /// Bytes volume `id` takes in the pool (a thin volume: what was written), where the
    /// pool can tell without reading data; `None` where it cannot.
    fn allocated(&self, id: &VolumeId) -> Result<Option<u64>, ProviderError> {
        let _ = id;
        Ok(None)
    }

    /// Space in the pool, where it has a bound (a pool on a local file system); `None`
    /// for stores that report none (object stores, remote pools).
    fn space(&self) -> Result<Option<PoolSpace>, ProviderError> {
        Ok(None)
    }
}

/// The provider kinds this build knows.
pub const PROVIDER_KINDS: &[&str] = &["file", "object", "rbd", "remote"];

/// The environment variable naming the file that holds a `remote` provider's bearer
/// token, when its settings name none.
pub const TOKEN_FILE_ENV: &str = "CVOL_PROVIDER_TOKEN_FILE";

/// Reads a secret file (a token, a private key). A file that every user may read holds
/// no secret: it is refused, with its path and mode.
pub fn read_secret(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let mut file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "every user may read it (mode {mode:04o}); a secret file must not be: chmod o-rwx {}",
                path.display()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads a bearer token: the file's content without surrounding white space, from a
/// secret file ([`read_secret`]).
pub fn read_token(path: &str) -> io::Result<String> {
    let text = String::from_utf8(read_secret(path.as_ref())?)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a token is text"))?;
    let token = text.trim().to_string();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a token is one word of printable ASCII characters",
        ));
    }
    Ok(token)
}

/// The environment variables naming a `remote` provider's TLS files, when its settings
/// name none: the CA to trust (`ca_file`), and this host's certificate and key for a
/// service that asks for one (`cert_file`, `key_file`).
pub const TLS_ENV: [(&str, &str); 3] = [
    ("ca_file", "CVOL_PROVIDER_CA_FILE"),
    ("cert_file", "CVOL_PROVIDER_CERT_FILE"),
    ("key_file", "CVOL_PROVIDER_KEY_FILE"),
];

/// Opens the provider a datastore configures.
pub fn open_provider(config: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderError> {
    let settings = Settings::new(config);
    match config.kind.as_str() {
        "file" => {
            let path = settings.required("path", "the pool directory")?;
            Ok(Arc::new(FileProvider::open(&config.id, path.as_ref())?))
        }
        "object" => Ok(Arc::new(ObjectProvider::from_config(config)?)),
        "rbd" => Ok(Arc::new(RbdProvider::from_config(config)?)),
        "remote" => {
            let url = settings.required("url", "the provider service")?;
            let timeout = settings.seconds("timeout", remote::DEFAULT_TIMEOUT)?;
            let env_token = std::env::var(TOKEN_FILE_ENV).ok();
            let token = match settings.get("token_file").or(env_token.as_deref()) {
                Some(path) => Some(
                    read_token(path)
                        .map_err(|e| settings.error(format!("token file {path}: {e}")))?,
                ),
                None => None,
            };
            let [ca, cert, key] = TLS_ENV.map(|(setting, env)| {
                settings
                    .get(setting)
                    .map(str::to_string)
                    .or_else(|| std::env::var(env).ok())
                    .map(std::path::PathBuf::from)
            });
            let tls = remote::TlsFiles { ca, cert, key };
            let ceph = rbd::CephClient {
                conf: settings.get("ceph_conf").map(std::path::PathBuf::from),
                client: settings.get("ceph_client").unwrap_or("admin").to_string(),
                keyring: settings.get("ceph_keyring").map(std::path::PathBuf::from),
                timeout,
            };
            Ok(Arc::new(
                RemoteProvider::new(&config.id, url, token, timeout, &tls)?.with_ceph(ceph),
            ))
        }
        other => Err(ProviderError::Setting {
            provider: config.id.to_string(),
            message: format!(
                "unknown kind {other:?} (this cvol knows: {})",
                PROVIDER_KINDS.join(", ")
            ),
        }),
    }
}
