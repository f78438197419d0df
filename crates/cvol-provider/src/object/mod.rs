//! The `object` provider: volumes as fixed-size chunks in an object store
//! (`object_store`: a local directory, or any S3-compatible store), each version named by
//! a manifest, so that snapshots and clones copy manifests, never data. See `layout.rs`
//! for the keys, `device.rs` for the data plane and `gc.rs` for reclaiming chunks.
//!
//! Which host holds a volume is recorded in the store, but object stores offer no lock
//! that every S3 implementation honours (Garage accepts a create over an existing key):
//! with several hosts, the provider service is what keeps attachments exclusive. What
//! the store itself guarantees is fencing: a holder whose generation is not the newest
//! cannot commit (device.rs).

mod cipher;
mod codec;
use codec::Codec;
mod device;
mod dirty;
mod disk_cache;
mod gc;
mod layout;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cvol_format::{ProviderConfig, ProviderId, SnapshotName, VolumeId};
use object_store::path::Path;
use object_store::{PutMode, UpdateVersion};

use device::ObjectBlockDevice;
pub use gc::GcReport;
use layout::{
    manifest_version, AttachmentRecord, EncryptionRecord, Layout, Manifest, PoolRecord,
    SnapshotRecord, VolumeRecord,
};
use store::{Store, StoreError};

use crate::settings::Settings;
use crate::standby::StandbyDevice;
use crate::{
    Attachment, BlockDevice, CopyProgress, DataAccess, Provider, ProviderError, Snapshot, Volume,
    VolumeSource,
};

/// Chunk size of a new pool unless its settings say otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;

/// Memory for cached chunks per attached volume unless the settings say otherwise.
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// How long one store call may take, retries included, unless the settings say
/// otherwise: after that a flush fails (EIO to the guest) rather than hang.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How an object pool is opened.
#[derive(Debug, Clone)]
pub struct ObjectSettings {
    /// Chunk size of a new pool (an existing pool keeps its own).
    pub chunk_size: u64,
    /// Memory for cached chunks per attached volume.
    pub cache_bytes: usize,
    /// How long one store call may take, retries included.
    pub timeout: Duration,
    /// Whether a pool that is not there yet is made (else it is an error).
    pub create: bool,
    /// A directory on local disk keeping chunks across restarts, and its size bound.
    pub disk_cache: Option<(std::path::PathBuf, u64)>,
    /// A new pool compresses its objects (zstd, where it pays).
    pub compression: bool,
    /// The pool's encryption key: a new pool is made encrypted with it, an encrypted
    /// one needs it.
    pub key: Option<PoolKey>,
}

/// A pool's 256-bit encryption key; never printed.
#[derive(Clone)]
pub struct PoolKey(pub [u8; 32]);

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKey(…)")
    }
}

/// The environment variable holding a pool key (64 hex digits) when its settings name
/// no key_file.
pub const KEY_ENV: &str = "CVOL_POOL_KEY";

impl Default for ObjectSettings {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            cache_bytes: DEFAULT_CACHE_BYTES,
            timeout: DEFAULT_TIMEOUT,
            create: true,
            disk_cache: None,
            compression: false,
            key: None,
        }
    }
}

/// The size bound of a disk cache unless the settings say otherwise.
pub const DEFAULT_DISK_CACHE_MIB: u64 = 10 << 10;

impl ObjectSettings {
    /// The settings of an `object` provider: optionally `chunk_size` (bytes, for a new
    /// pool), `cache_mib` (memory per attached volume), `timeout` (seconds per store
    /// call), `disk_cache` (a local directory keeping chunks across restarts) with
    /// `disk_cache_mib` (its bound, default 10 GiB), and for a new pool `compression`
    /// ("zstd" or "off"); `key_file` (64 hex digits, not world-readable; else
    /// [`KEY_ENV`]) makes a new pool encrypted and opens an encrypted one.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let settings = Settings::new(config);
        let default = Self::default();
        Ok(Self {
            chunk_size: settings.positive("chunk_size", "bytes", default.chunk_size)?,
            cache_bytes: (settings.positive(
                "cache_mib",
                "MiB",
                (default.cache_bytes >> 20) as u64,
            )? as usize)
                << 20,
            timeout: settings.seconds("timeout", default.timeout)?,
            create: true,
            disk_cache: match settings.get("disk_cache") {
                Some(dir) => Some((
                    dir.into(),
                    settings.positive("disk_cache_mib", "MiB", DEFAULT_DISK_CACHE_MIB)? << 20,
                )),
                None => None,
            },
            compression: match settings.get("compression") {
                None | Some("off") => false,
                Some("zstd") => true,
                Some(other) => {
                    return Err(settings.error(format!(
                        "setting 'compression' {other:?}: expected \"zstd\" or \"off\""
                    )))
                }
            },
            key: pool_key(&settings)?,
        })
    }
}

/// The key the settings name (`key_file`), or [`KEY_ENV`]'s.
fn pool_key(settings: &Settings<'_>) -> Result<Option<PoolKey>, ProviderError> {
    let (text, source) = match settings.get("key_file") {
        Some(path) => (
            crate::read_secret(path.as_ref())
                .map_err(|e| settings.error(format!("key_file {path}: {e}")))?,
            format!("key_file {path}"),
        ),
        None => match std::env::var(KEY_ENV) {
            Ok(hex) => (hex.into_bytes(), KEY_ENV.to_string()),
            Err(_) => return Ok(None),
        },
    };
    codec::parse_key(&text)
        .map(|k| Some(PoolKey(k)))
        .map_err(|e| settings.error(format!("{source}: {e}")))
}

/// How the pool `pool` stores its objects, opened with `key`: a wrong key, a missing
/// one, or one given for a pool that is not encrypted is refused here, before any data
/// is read.
fn pool_codec(pool: &PoolRecord, key: Option<&[u8; 32]>, layout: &Layout) -> Result<Codec, String> {
    let compress = match pool.compression.as_deref() {
        None => false,
        Some("zstd") => true,
        Some(other) => return Err(format!("pool.json: unknown compression {other:?}")),
    };
    match (&pool.encryption, key) {
        (None, Some(_)) => Err(
            "the pool is not encrypted, but a key is given for it (key_file or CVOL_POOL_KEY)"
                .into(),
        ),
        (Some(_), None) => Err(
            "the pool is encrypted: give its key (the provider setting key_file, or CVOL_POOL_KEY)"
                .into(),
        ),
        (Some(e), Some(key)) => {
            // Objects name their own cipher (see codec): a pool made with XChaCha20-Poly1305
            // holds XAES-256-GCM objects too once a later cvol wrote to it.
            if e.cipher != layout::XAES && e.cipher != layout::XCHACHA {
                return Err(format!("pool.json: unknown cipher {:?}", e.cipher));
            }
            let check = hex::decode(&e.check)
                .map_err(|_| "pool.json: the key check is not hex".to_string())?;
            let opened = Codec::sealed(false, Some(key)).open(
                layout.pool().as_ref(),
                &check,
                codec::CHECK.len(),
            );
            match opened {
                Ok(text) if text == codec::CHECK => Ok(Codec::sealed(compress, Some(key))),
                _ => Err("wrong key: the pool's key check does not open with it".into()),
            }
        }
        (None, None) if compress => Ok(Codec::sealed(true, None)),
        (None, None) => Ok(Codec::default()),
    }
}

/// Leftovers of interrupted work older than this are reclaimed.
const GRACE: Duration = Duration::from_secs(600);

/// An object pool.
pub struct ObjectProvider {
    id: ProviderId,
    url: String,
    store: Store,
    layout: Layout,
    chunk_size: u64,
    cache_bytes: usize,
    /// Attach, detach and delete of this process, one at a time.
    attachments: Mutex<()>,
    /// The devices this process attached, so that a resize reaches them.
    devices: Mutex<HashMap<VolumeId, Weak<ObjectBlockDevice>>>,
}

impl std::fmt::Debug for ObjectProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectProvider")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish()
    }
}

/// A version of a volume: its (generation, sequence) and its object.
pub(crate) type Version = ((u64, u64), object_store::ObjectMeta);

/// Every version of volume `id` (its manifests, and its flushes' `.wal`s), oldest first.
pub(crate) fn versions(
    store: &Store,
    layout: &Layout,
    id: &VolumeId,
) -> Result<Vec<Version>, ProviderError> {
    let mut versions: Vec<_> = store
        .list(&layout.manifests(id))?
        .into_iter()
        .chain(store.list(&layout.volume_logs(id))?)
        .filter_map(|m| Some((manifest_version(m.location.filename()?)?, m)))
        .collect();
    versions.sort_by_key(|(version, _)| *version);
    Ok(versions)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// The store a pool URL names, and the prefix of the pool within it, as a pool opens it
/// (public for benchmarks that compare cvol with the store itself).
pub fn open_store(
    url: &str,
    settings: &ObjectSettings,
) -> Result<(Arc<dyn object_store::ObjectStore>, Path), String> {
    if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(format!("{url}: expected file:///ABSOLUTE/DIR"));
        }
        if settings.create {
            std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
        } else if !std::path::Path::new(dir).is_dir() {
            return Err(format!("{dir}: no such directory"));
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| e.to_string())?;
        return Ok((Arc::new(store), Path::default()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("{url}: expected s3://BUCKET[/PREFIX]"));
        }
        // Endpoint, region and credentials as every AWS tool reads them
        // (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, …).
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(object_store::RetryConfig {
                retry_timeout: settings.timeout,
                ..Default::default()
            });
        if let Ok(endpoint) = std::env::var("AWS_ENDPOINT_URL") {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| e.to_string())?;
        return Ok((Arc::new(store), Path::from(prefix)));
    }
    Err(format!(
        "{url}: expected file:///DIR or s3://BUCKET[/PREFIX]"
    ))
}

impl ObjectProvider {
    /// Opens the pool at `url`: `file:///dir` or `s3://bucket/prefix`; a pool that is
    /// not there yet is made if `settings.create` says so.
    pub fn open(
        id: &ProviderId,
        url: &str,
        settings: &ObjectSettings,
    ) -> Result<Self, ProviderError> {
        let refuse = |reason: String| ProviderError::Pool {
            provider: id.to_string(),
            path: url.into(),
            reason,
        };
        let chunk_size = settings.chunk_size;
        if !chunk_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&chunk_size) {
            return Err(refuse(format!(
                "chunk size {chunk_size}: expected a power of two from 64 KiB to 64 MiB"
            )));
        }
        let (inner, root) = open_store(url, settings).map_err(refuse)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cvol-object")
            .enable_all()
            .build()
            .map_err(|e| refuse(e.to_string()))?;
        let mut store = Store {
            provider: id.to_string(),
            location: format!("object:{url}"),
            inner,
            runtime: Arc::new(runtime),
            timeout: settings.timeout,
            disk_cache: None,
            codec: Arc::new(Codec::default()),
        };
        let layout = Layout::new(root);
        let key = settings.key.as_ref().map(|k| &k.0);
        let pool = match store.get_json::<PoolRecord>(&layout.pool())? {
            Some(pool) => pool,
            None if !settings.create => {
                return Err(refuse(format!(
                    "no pool here ({} is missing)",
                    layout.pool()
                )))
            }
            None => {
                let encryption = key.map(|key| EncryptionRecord {
                    cipher: layout::XAES.into(),
                    check: hex::encode(
                        Codec::sealed(false, Some(key)).seal(layout.pool().as_ref(), codec::CHECK),
                    ),
                });
                let record = PoolRecord {
                    chunk_size,
                    compression: settings.compression.then(|| "zstd".into()),
                    encryption,
                };
                match store.put_json(&layout.pool(), &record, PutMode::Create) {
                    Ok(()) | Err(StoreError::Exists) => {}
                    Err(e) => {
                        return Err(refuse(store.error("create", &layout.pool(), e).to_string()))
                    }
                }
                store
                    .get_json::<PoolRecord>(&layout.pool())?
                    .ok_or_else(|| refuse("pool.json vanished after it was made".into()))?
            }
        };
        store.codec = Arc::new(pool_codec(&pool, key, &layout).map_err(refuse)?);
        if let Some((dir, limit)) = &settings.disk_cache {
            store.disk_cache = Some(Arc::new(
                disk_cache::DiskCache::open(dir, *limit, store.codec.cipher())
                    .map_err(|e| refuse(format!("disk cache {}: {e}", dir.display())))?,
            ));
        }
        let chunk_size = pool.chunk_size;
        Ok(Self {
            id: id.clone(),
            url: url.to_string(),
            store,
            layout,
            chunk_size,
            cache_bytes: settings.cache_bytes,
            attachments: Mutex::new(()),
            devices: Mutex::new(HashMap::new()),
        })
    }

    /// Opens the pool an `object` provider's settings name (`url`, and the settings of
    /// [`ObjectSettings::from_config`]), making it if it is new.
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let url = Settings::new(config).required("url", "file:///DIR or s3://BUCKET/PREFIX")?;
        Self::open(&config.id, url, &ObjectSettings::from_config(config)?)
    }

    fn not_found(&self, id: &VolumeId) -> ProviderError {
        ProviderError::VolumeNotFound {
            provider: self.id.to_string(),
            volume: id.to_string(),
        }
    }

    fn corrupt(&self, path: &Path, message: String) -> ProviderError {
        ProviderError::Corrupt {
            provider: self.id.to_string(),
            path: format!("{}/{path}", self.store.location).into(),
            message,
        }
    }

    fn record(&self, id: &VolumeId) -> Result<VolumeRecord, ProviderError> {
        self.store
            .get_json(&self.layout.volume(id))?
            .ok_or_else(|| self.not_found(id))
    }

    /// The volume's newest state: its newest manifest, or when that is a delta, the
    /// whole manifest it builds on with every delta since applied in order.
    fn latest(&self, id: &VolumeId) -> Result<Manifest, ProviderError> {
        let prefix = self.layout.manifests(id);
        let mut versions: Vec<_> = versions(&self.store, &self.layout, id)?
            .into_iter()
            .map(|(version, meta)| (version, meta.location))
            .collect();
        let mut chain = Vec::new();
        while let Some((_, path)) = versions.pop() {
            let manifest = self
                .store
                .get_manifest(&path)?
                .ok_or_else(|| self.corrupt(&path, "vanished while read".into()))?;
            let whole = manifest.base.is_none();
            chain.push((path, manifest));
            if whole {
                break;
            }
        }
        let Some((path, mut state)) = chain.pop() else {
            return Err(self.corrupt(&prefix, "the volume has no manifest".into()));
        };
        if state.base.is_some() {
            return Err(self.corrupt(&path, "a delta with no whole manifest before it".into()));
        }
        let mut last = path;
        while let Some((path, delta)) = chain.pop() {
            if delta.generation != state.generation || delta.base != Some(state.seq) {
                return Err(self.corrupt(&path, format!("a delta that does not follow {last}")));
            }
            state.apply(&delta);
            last = path;
        }
        state.validate().map_err(|m| self.corrupt(&last, m))?;
        Ok(state)
    }

    fn attachment(&self, id: &VolumeId) -> Result<AttachmentRecord, ProviderError> {
        Ok(self.attachment_versioned(id)?.0)
    }

    /// The attachment record of volume `id`, and the version of it that was read (none
    /// if there is none yet).
    fn attachment_versioned(
        &self,
        id: &VolumeId,
    ) -> Result<(AttachmentRecord, Option<UpdateVersion>), ProviderError> {
        let path = self.layout.attachment(id);
        match self.store.get_versioned(&path) {
            Ok((bytes, version)) => Ok((self.store.decode_json(&path, &bytes)?, Some(version))),
            Err(StoreError::NotFound) => Ok((
                AttachmentRecord {
                    holder: None,
                    generation: 0,
                },
                None,
            )),
            Err(e) => Err(self.store.error("read", &path, e)),
        }
    }

    /// Replaces the attachment record of volume `id` that was read as version `read`.
    /// Where the store honours conditional writes (AWS S3; a local directory for
    /// creates), a host that changed it meanwhile makes this fail rather than be
    /// overwritten; where it does not (Garage), the generation every commit is checked
    /// against still keeps two holders from both committing.
    fn put_attachment(
        &self,
        id: &VolumeId,
        record: &AttachmentRecord,
        read: Option<UpdateVersion>,
    ) -> Result<(), ProviderError> {
        let path = self.layout.attachment(id);
        let mode = match read {
            Some(version) => PutMode::Update(version),
            None => PutMode::Create,
        };
        let written = match self.store.put_json(&path, record, mode) {
            Err(StoreError::Unsupported) => self.store.put_json(&path, record, PutMode::Overwrite),
            other => other,
        };
        match written {
            Ok(()) => Ok(()),
            Err(StoreError::Exists | StoreError::Changed) => {
                Err(ProviderError::AttachedElsewhere {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                    holder: self.attachment(id)?.holder.unwrap_or_else(|| {
                        "another host (the attachment changed meanwhile)".into()
                    }),
                })
            }
            Err(e) => Err(self.store.error("write", &path, e)),
        }
    }

    /// The attachment of volume `id` to `host` at `generation`, reached through `device`.
    fn attachment_of(
        &self,
        id: &VolumeId,
        host: &str,
        generation: u64,
        device: Arc<dyn BlockDevice>,
    ) -> Attachment {
        Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation,
            access: DataAccess::Object {
                url: self.url.clone(),
            },
            device,
        }
    }

    /// Restates volume `id`'s newest state as the first manifest of `generation`, which
    /// the attachment record was just raised to: whatever an older generation commits
    /// after this sorts below it, and a flush that committed before it is in it (a
    /// holder's flush succeeds only if its generation is still current after the commit).
    fn restate(&self, id: &VolumeId, generation: u64) -> Result<Manifest, ProviderError> {
        let mut manifest = self.latest(id)?;
        manifest.generation = generation;
        manifest.seq = 0;
        let path = self.layout.manifest(id, generation, 0);
        self.store
            .put_json(&path, &manifest, PutMode::Overwrite)
            .map_err(|e| self.store.error("write", &path, e))?;
        Ok(manifest)
    }

    fn refuse_attached(&self, id: &VolumeId) -> Result<(), ProviderError> {
        if let Some(holder) = self.attachment(id)?.holder {
            return Err(ProviderError::AttachedElsewhere {
                provider: self.id.to_string(),
                volume: id.to_string(),
                holder,
            });
        }
        Ok(())
    }

    fn check_size(&self, size: u64) -> Result<(), ProviderError> {
        crate::check_sector_size(self.id.as_str(), size)
    }

    fn snapshot_record(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
    ) -> Result<SnapshotRecord, ProviderError> {
        self.record(id)?;
        self.store
            .get_json(&self.layout.snapshot(id, name))?
            .ok_or_else(|| ProviderError::SnapshotNotFound {
                provider: self.id.to_string(),
                volume: id.to_string(),
                snapshot: name.to_string(),
            })
    }

    /// Deletes chunks no manifest or snapshot names, and manifests newer ones superseded,
    /// once older than `grace`; only reports them unless `apply`. See gc.rs.
    pub fn gc(&self, grace: Duration, apply: bool) -> Result<GcReport, ProviderError> {
        gc::collect(&self.store, &self.layout, grace, apply)
    }

    /// The device of attachment `generation` of volume `id`, from its newest manifest.
    pub(crate) fn device(
        &self,
        id: &VolumeId,
        generation: u64,
    ) -> Result<Arc<ObjectBlockDevice>, ProviderError> {
        self.record(id)?;
        let device = Arc::new(self.device_from(id, generation, self.latest(id)?));
        self.devices
            .lock()
            .expect("devices lock")
            .insert(id.clone(), Arc::downgrade(&device));
        Ok(device)
    }

    /// What volume `id` holds, from its device when this process has it attached (no
    /// request to the store).
    pub(crate) fn attached_bytes(&self, id: &VolumeId) -> Option<u64> {
        let devices = self.devices.lock().expect("devices lock");
        Some(devices.get(id)?.upgrade()?.stored_bytes())
    }

    /// The device of attachment `generation` of volume `id`, from `manifest`.
    fn device_from(&self, id: &VolumeId, generation: u64, manifest: Manifest) -> ObjectBlockDevice {
        ObjectBlockDevice::new(
            self.store.clone(),
            self.layout.clone(),
            id.clone(),
            generation,
            manifest,
            self.cache_bytes,
        )
    }

    fn volume_of(&self, id: &VolumeId, record: VolumeRecord) -> Result<Volume, ProviderError> {
        Ok(Volume {
            id: id.clone(),
            size: self.latest(id)?.size,
            owner: record.owner,
            created: from_ms(record.created_unix_ms),
            attached_to: self.attachment(id)?.holder,
        })
    }
}

impl Provider for ObjectProvider {
    fn location(&self) -> String {
        self.store.location.clone()
    }

    fn create_volume(
        &self,
        id: &VolumeId,
        source: &VolumeSource,
        owner: &str,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        if self
            .store
            .get_json::<VolumeRecord>(&self.layout.volume(id))?
            .is_some()
        {
            return Err(ProviderError::VolumeExists {
                provider: self.id.to_string(),
                volume: id.to_string(),
            });
        }
        // A copy names the chunks of its origin: no data moves.
        let (size, chunks, patches) = match source {
            VolumeSource::Blank { size } => {
                self.check_size(*size)?;
                (*size, Default::default(), Default::default())
            }
            VolumeSource::Volume(from) => {
                self.record(from)?;
                let m = self.latest(from)?;
                (m.size, m.chunks, m.patches)
            }
            VolumeSource::Snapshot(from, name) => {
                let m = self.snapshot_record(from, name)?.manifest;
                (m.size, m.chunks, m.patches)
            }
        };
        let manifest = Manifest {
            chunks,
            patches,
            ..Manifest::delta(size, self.chunk_size, 0)
        };
        let path = self.layout.manifest(id, 0, 0);
        self.store
            .put_json(&path, &manifest, PutMode::Overwrite)
            .map_err(|e| self.store.error("write", &path, e))?;
        // The volume exists from here on.
        let record = VolumeRecord {
            owner: owner.to_string(),
            created_unix_ms: now_ms(),
        };
        let path = self.layout.volume(id);
        match self.store.put_json(&path, &record, PutMode::Create) {
            Ok(()) => {}
            Err(StoreError::Exists) => {
                return Err(ProviderError::VolumeExists {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                })
            }
            Err(e) => return Err(self.store.error("write", &path, e)),
        }
        // What was just written, not read back: a clone's manifest can be megabytes.
        Ok(Volume {
            id: id.clone(),
            size,
            owner: record.owner,
            created: from_ms(record.created_unix_ms),
            attached_to: None,
        })
    }

    fn volume(&self, id: &VolumeId) -> Result<Volume, ProviderError> {
        let record = self.record(id)?;
        self.volume_of(id, record)
    }

    fn list_volumes(&self) -> Result<Vec<Volume>, ProviderError> {
        let mut volumes = Vec::new();
        for name in self.store.list_dirs(&self.layout.volumes())? {
            let Ok(id) = VolumeId::new(&name) else {
                tracing::warn!(provider = %self.id, "ignoring volumes/{name}: not a volume");
                continue;
            };
            // Half made or half deleted: not a volume (reclaim_interrupted removes it).
            let Some(record) = self
                .store
                .get_json::<VolumeRecord>(&self.layout.volume(&id))?
            else {
                continue;
            };
            volumes.push(self.volume_of(&id, record)?);
        }
        crate::sort_volumes(&mut volumes);
        Ok(volumes)
    }

    fn resize_volume(
        &self,
        id: &VolumeId,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Volume, ProviderError> {
        self.check_size(size)?;
        let _one = self.attachments.lock().expect("attachment lock");
        let record = self.record(id)?;
        let mut manifest = self.latest(id)?;
        let attached_here = self
            .devices
            .lock()
            .expect("devices lock")
            .get(id)
            .and_then(Weak::upgrade);
        if let Some(device) = attached_here {
            // Its holder commits the size with its next flush.
            crate::check_shrink(self.id.as_str(), id, device.size(), size, allow_shrink)?;
            device.resize(size);
            let mut volume = self.volume_of(id, record)?;
            volume.size = size;
            return Ok(volume);
        }
        // A device attached by another process knows the size it was attached with.
        self.refuse_attached(id)?;
        crate::check_shrink(self.id.as_str(), id, manifest.size, size, allow_shrink)?;
        let count = size.div_ceil(manifest.chunk_size);
        manifest.truncate_chunks(count);
        manifest.size = size;
        manifest.seq += 1;
        let path = self.layout.manifest(id, manifest.generation, manifest.seq);
        self.store
            .put_json(&path, &manifest, PutMode::Create)
            .map_err(|e| self.store.error("write", &path, e))?;
        self.volume_of(id, record)
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<(), ProviderError> {
        let _one = self.attachments.lock().expect("attachment lock");
        self.record(id)?;
        self.refuse_attached(id)?;
        // Gone with its record; the rest is leftovers, and chunks are gc's.
        self.store.delete(&self.layout.volume(id))?;
        for object in self.store.list(&self.layout.volume_dir(id))? {
            self.store.delete(&object.location)?;
        }
        Ok(())
    }

    fn create_snapshot(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Snapshot, ProviderError> {
        self.record(id)?;
        let record = SnapshotRecord {
            created_unix_ms: now_ms(),
            manifest: self.latest(id)?,
        };
        let path = self.layout.snapshot(id, name);
        match self.store.put_json(&path, &record, PutMode::Create) {
            Ok(()) => Ok(Snapshot {
                name: name.clone(),
                size: record.manifest.size,
                created: from_ms(record.created_unix_ms),
            }),
            Err(StoreError::Exists) => Err(ProviderError::SnapshotExists {
                provider: self.id.to_string(),
                volume: id.to_string(),
                snapshot: name.to_string(),
            }),
            Err(e) => Err(self.store.error("write", &path, e)),
        }
    }

    fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<Snapshot>, ProviderError> {
        self.record(id)?;
        let mut snapshots = Vec::new();
        for object in self.store.list(&self.layout.snapshots(id))? {
            let Some(name) = object
                .location
                .filename()
                .and_then(|f| f.strip_suffix(".json"))
                .and_then(|n| SnapshotName::new(n).ok())
            else {
                continue;
            };
            let record = self.snapshot_record(id, &name)?;
            snapshots.push(Snapshot {
                name,
                size: record.manifest.size,
                created: from_ms(record.created_unix_ms),
            });
        }
        snapshots.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        Ok(snapshots)
    }

    fn delete_snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Result<(), ProviderError> {
        self.snapshot_record(id, name)?;
        self.store.delete(&self.layout.snapshot(id, name))
    }

    fn allocated(&self, id: &VolumeId) -> Result<Option<u64>, ProviderError> {
        // Attached here: the device knows, with no request to the store.
        if let Some(bytes) = self.attached_bytes(id) {
            return Ok(Some(bytes));
        }
        // Else the newest manifest's chunks: two requests (the container's stats reach
        // here at most once per attribute timeout, the kernel caching them meanwhile).
        self.record(id)?;
        let m = self.latest(id)?;
        Ok(Some(device::chunk_bytes(
            m.stored().iter(),
            m.chunk_size,
            m.size,
        )))
    }

    fn revert_volume(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        let _one = self.attachments.lock().expect("attachment lock");
        let record = self.record(id)?;
        let snapshot = self.snapshot_record(id, name)?.manifest;
        self.refuse_attached(id)?;
        // The snapshot's chunk map becomes the newest manifest: no data moves, and the
        // chunks it replaces are gc's once nothing names them.
        let latest = self.latest(id)?;
        let manifest = Manifest {
            generation: latest.generation,
            seq: latest.seq + 1,
            ..snapshot
        };
        let path = self.layout.manifest(id, manifest.generation, manifest.seq);
        self.store
            .put_json(&path, &manifest, PutMode::Create)
            .map_err(|e| self.store.error("write", &path, e))?;
        self.volume_of(id, record)
    }

    fn attach(&self, id: &VolumeId, host: &str, force: bool) -> Result<Attachment, ProviderError> {
        let _one = self.attachments.lock().expect("attachment lock");
        self.record(id)?;
        let (held, read) = self.attachment_versioned(id)?;
        let (generation, manifest) = match held.holder.as_deref() {
            Some(holder) if holder == host => (held.generation, self.latest(id)?),
            Some(holder) if !force => {
                return Err(ProviderError::AttachedElsewhere {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                    holder: holder.to_string(),
                })
            }
            previous => {
                if let Some(previous) = previous {
                    tracing::warn!(provider = %self.id, volume = %id, "host {host:?} takes the volume over from host {previous:?}");
                }
                // Raise the generation first, then read and restate the newest manifest
                // under it: what the old holder commits after this is never newest.
                let generation = held.generation + 1;
                self.put_attachment(
                    id,
                    &AttachmentRecord {
                        holder: Some(host.to_string()),
                        generation,
                    },
                    read,
                )?;
                (generation, self.restate(id, generation)?)
            }
        };
        let device = Arc::new(self.device_from(id, generation, manifest));
        self.devices
            .lock()
            .expect("devices lock")
            .insert(id.clone(), Arc::downgrade(&device));
        Ok(self.attachment_of(id, host, generation, device))
    }

    fn attach_standby(&self, id: &VolumeId, host: &str) -> Result<Attachment, ProviderError> {
        self.record(id)?;
        let generation = self.attachment(id)?.generation;
        let device = Arc::new(self.device_from(id, generation, self.latest(id)?));
        tracing::info!(provider = %self.id, volume = %id, host, "attached as a standby");
        Ok(self.attachment_of(id, host, generation, StandbyDevice::wrap(device)))
    }

    fn detach(&self, id: &VolumeId, host: &str) -> Result<(), ProviderError> {
        let _one = self.attachments.lock().expect("attachment lock");
        match self.record(id) {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        }
        let (held, read) = self.attachment_versioned(id)?;
        if held.holder.as_deref() != Some(host) {
            return Ok(());
        }
        // A new generation fences what the detached device might still try to commit.
        let generation = held.generation + 1;
        self.put_attachment(
            id,
            &AttachmentRecord {
                holder: None,
                generation,
            },
            read,
        )?;
        match self.restate(id, generation) {
            Ok(_) => Ok(()),
            // Nothing to restate, and nothing a stray commit could be read after either.
            Err(e @ ProviderError::Corrupt { .. }) => {
                tracing::warn!(provider = %self.id, volume = %id, "detached a volume that does not read: {e}");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn reclaim_interrupted(&self, apply: bool) -> Result<Vec<String>, ProviderError> {
        let mut leftovers = Vec::new();
        for name in self.store.list_dirs(&self.layout.volumes())? {
            let Ok(id) = VolumeId::new(&name) else {
                continue;
            };
            if self
                .store
                .get_json::<VolumeRecord>(&self.layout.volume(&id))?
                .is_some()
            {
                continue;
            }
            for object in self.store.list(&self.layout.volume_dir(&id))? {
                let age = SystemTime::now()
                    .duration_since(object.last_modified.into())
                    .unwrap_or_default();
                if age >= GRACE {
                    if apply {
                        self.store.delete(&object.location)?;
                    }
                    leftovers.push(format!("{}/{}", self.store.location, object.location));
                }
            }
        }
        Ok(leftovers)
    }
}

#[cfg(test)]
mod tests;
