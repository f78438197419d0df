//! A pool of volumes as Ceph RBD images (`rbd:POOL`): each volume is an image named by
//! its id, snapshots are RBD snapshots, clones RBD clones (format 2: no data copied, no
//! protected snapshot), and resize, discard and write-zeroes are librbd's.
//!
//! Who holds a volume is kept with the image, in its metadata (`cvol.holder`,
//! `cvol.generation`, beside `cvol.owner`), and enforced by the
//! image's exclusive lock, taken in managed mode by the holder's own cluster connection.
//! A forced takeover breaks that lock, and librbd blocklists the old holder's
//! connection: the cluster then refuses what the old holder has in flight or sends later,
//! so it cannot write over the new holder's data. The same host attaching again (after a
//! crash of its daemon) takes the lock over the same way.

mod cluster;
mod device;
mod ffi;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cvol_format::{ProviderConfig, ProviderId, SnapshotName, VolumeId};

use self::cluster::{CephError, Cluster, Image, Target};
use self::device::RbdDevice;
use crate::settings::Settings;
use crate::standby::StandbyDevice;
use crate::{
    check_sector_size, check_shrink, Attachment, BlockDevice, CopyProgress, DataAccess, Provider,
    ProviderError, Snapshot, Volume, VolumeSource,
};

/// Image features of new volumes: layering (clones), exclusive-lock (fencing),
/// object-map and fast-diff (allocation known without reading), deep-flatten.
const FEATURES: u64 = 1 | 4 | 8 | 16 | 32;

/// How old a half-made image must be before it counts as a leftover: a creation still
/// running elsewhere is never that slow.
const GRACE: Duration = Duration::from_secs(3600);

/// How long a monitor or OSD call may take by default, instead of librados' 300 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Metadata keys.
/// Set last when a volume is made: an image without it is a creation cut short.
const OWNER: &str = "cvol.owner";
const HOLDER: &str = "cvol.holder";
const GENERATION: &str = "cvol.generation";

/// The snapshot a clone of a live volume is made from (removed right after: with clone
/// format 2 it lives on in the trash while the clone needs it).
const CLONE_SNAPSHOT: &str = "cvol-clone-source";

/// errnos librbd answers.
const ENOENT: i32 = 2;
const EBUSY: i32 = 16;
const EEXIST: i32 = 17;
const EROFS: i32 = 30;
const ENOTEMPTY: i32 = 39;

/// A pool of volumes in Ceph RBD.
pub struct RbdProvider {
    id: ProviderId,
    target: Target,
    /// The control plane's connection (no volume's lock is ever taken with it).
    cluster: Arc<Cluster>,
    /// The devices attached through this provider, by volume.
    devices: Mutex<HashMap<VolumeId, Weak<RbdDevice>>>,
}

impl std::fmt::Debug for RbdProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdProvider")
            .field("id", &self.id)
            .field("pool", &self.target.pool)
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl RbdProvider {
    /// Connects to `pool` as `target` says.
    fn open(id: &ProviderId, target: Target) -> Result<Self, ProviderError> {
        let cluster = Cluster::connect(&target).map_err(|e| ProviderError::Store {
            provider: id.to_string(),
            location: format!("rbd:{}", target.pool),
            message: e.to_string(),
        })?;
        Ok(Self {
            id: id.clone(),
            target,
            cluster: Arc::new(cluster),
            devices: Mutex::new(HashMap::new()),
        })
    }

    /// The provider a datastore configures: setting `pool`, and `conf` (ceph.conf),
    /// `client` (default `admin`), `keyring`, `timeout` (seconds).
    pub fn from_config(config: &ProviderConfig) -> Result<Self, ProviderError> {
        let settings = Settings::new(config);
        let target = Target {
            pool: settings.required("pool", "the RBD pool")?.to_string(),
            conf: settings.get("conf").map(PathBuf::from),
            client: settings.get("client").unwrap_or("admin").to_string(),
            keyring: settings.get("keyring").map(PathBuf::from),
            timeout: settings.seconds("timeout", DEFAULT_TIMEOUT)?,
        };
        Self::open(&config.id, target)
    }

    fn store_error(&self, e: CephError) -> ProviderError {
        ProviderError::Store {
            provider: self.id.to_string(),
            location: self.location(),
            message: e.to_string(),
        }
    }

    fn not_found(&self, id: &VolumeId) -> ProviderError {
        ProviderError::VolumeNotFound {
            provider: self.id.to_string(),
            volume: id.to_string(),
        }
    }

    /// Opens volume `id`'s image; a missing one is `VolumeNotFound`.
    fn image(&self, id: &VolumeId, read_only: bool) -> Result<Image, ProviderError> {
        self.cluster
            .open(id.as_str(), read_only)
            .map_err(|e| match e.errno {
                ENOENT => self.not_found(id),
                _ => self.store_error(e),
            })
    }

    /// Calls `f` with volume `id`'s image opened for changes: through the handle of the
    /// device attached through this provider (which holds the lock) if there is one.
    fn with_writable<T>(
        &self,
        id: &VolumeId,
        f: impl FnOnce(&Image) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        match self.attached(id) {
            Some(device) => f(device.image()),
            None => f(&self.image(id, false)?),
        }
    }

    /// The device attached through this provider for volume `id`, if it is open.
    fn attached(&self, id: &VolumeId) -> Option<Arc<RbdDevice>> {
        self.devices
            .lock()
            .expect("devices lock")
            .get(id)
            .and_then(Weak::upgrade)
    }

    fn holder(&self, image: &Image) -> Result<Option<String>, ProviderError> {
        Ok(image
            .metadata(HOLDER)
            .map_err(|e| self.store_error(e))?
            .filter(|h| !h.is_empty()))
    }

    fn generation(&self, image: &Image) -> Result<u64, ProviderError> {
        Ok(image
            .metadata(GENERATION)
            .map_err(|e| self.store_error(e))?
            .and_then(|g| g.parse().ok())
            .unwrap_or(0))
    }

    fn volume_of(&self, id: &VolumeId, image: &Image) -> Result<Volume, ProviderError> {
        let e = |e| self.store_error(e);
        let created = image.created().map_err(e)?;
        Ok(Volume {
            id: id.clone(),
            size: image.size().map_err(e)?,
            owner: image.metadata(OWNER).map_err(e)?.unwrap_or_default(),
            created: UNIX_EPOCH + Duration::from_secs(created),
            attached_to: self.holder(image)?,
        })
    }

    fn refuse_attached(&self, id: &VolumeId, image: &Image) -> Result<(), ProviderError> {
        match self.holder(image)? {
            Some(holder) => Err(ProviderError::AttachedElsewhere {
                provider: self.id.to_string(),
                volume: id.to_string(),
                holder,
            }),
            None => Ok(()),
        }
    }

    /// Makes image `id` from `source`; the image is there when this returns `Ok`.
    fn make_image(&self, id: &VolumeId, source: &VolumeSource) -> Result<(), ProviderError> {
        let name = std::ffi::CString::new(id.as_str()).expect("ids have no NUL");
        let clone = |parent: &VolumeId, snapshot: &str| {
            let (p, s) = (
                std::ffi::CString::new(parent.as_str()).expect("ids have no NUL"),
                std::ffi::CString::new(snapshot).expect("names have no NUL"),
            );
            let mut order = 0;
            self.cluster.call(
                || format!("clone image {parent}@{snapshot} as {id}"),
                // SAFETY: I/O context and C strings valid for the call.
                |lib, io| unsafe {
                    (lib.rbd_clone2)(
                        io,
                        p.as_ptr(),
                        s.as_ptr(),
                        io,
                        name.as_ptr(),
                        FEATURES,
                        &mut order,
                        0,
                        0,
                    )
                },
            )
        };
        let made = match source {
            VolumeSource::Blank { size } => {
                check_sector_size(self.id.as_str(), *size)?;
                let mut order = 0;
                self.cluster.call(
                    || format!("create image {id}"),
                    // SAFETY: I/O context and C string valid for the call.
                    |lib, io| unsafe {
                        (lib.rbd_create2)(io, name.as_ptr(), *size, FEATURES, &mut order)
                    },
                )
            }
            VolumeSource::Snapshot(parent, snapshot) => {
                let image = self.image(parent, true)?;
                if !image
                    .snapshots()
                    .map_err(|e| self.store_error(e))?
                    .iter()
                    .any(|(_, n, _)| n == snapshot.as_str())
                {
                    return Err(ProviderError::SnapshotNotFound {
                        provider: self.id.to_string(),
                        volume: parent.to_string(),
                        snapshot: snapshot.to_string(),
                    });
                }
                clone(parent, snapshot.as_str())
            }
            VolumeSource::Volume(parent) => {
                let snap = format!("{CLONE_SNAPSHOT}-{id}");
                self.with_writable(parent, |image| {
                    image.snap_create(&snap).map_err(|e| self.store_error(e))?;
                    let cloned = clone(parent, &snap);
                    // With clone format 2 the snapshot moves to the trash while the clone
                    // needs it.
                    let _ = image.snap_call("remove snapshot", &snap, |lib, raw, n| unsafe {
                        // SAFETY: open image; C string valid for the call.
                        (lib.rbd_snap_remove)(raw, n)
                    });
                    Ok(cloned)
                })?
            }
        };
        made.map(drop).map_err(|e| match e.errno {
            EEXIST => ProviderError::VolumeExists {
                provider: self.id.to_string(),
                volume: id.to_string(),
            },
            ENOENT => match source {
                VolumeSource::Volume(p) | VolumeSource::Snapshot(p, _) => self.not_found(p),
                VolumeSource::Blank { .. } => self.store_error(e),
            },
            _ => self.store_error(e),
        })
    }

    /// Removes image `id` (its snapshots first); an image that clones still build on
    /// goes to the pool's trash, which keeps it until they are gone.
    fn remove_image(&self, id: &VolumeId) -> Result<(), ProviderError> {
        {
            let image = self.image(id, false)?;
            for (_, snap, _) in image.snapshots().map_err(|e| self.store_error(e))? {
                image
                    .snap_call("remove snapshot", &snap, |lib, raw, n| unsafe {
                        // SAFETY: open image; C string valid for the call.
                        (lib.rbd_snap_remove)(raw, n)
                    })
                    .map_err(|e| self.store_error(e))?;
            }
        }
        let name = std::ffi::CString::new(id.as_str()).expect("ids have no NUL");
        // SAFETY: I/O context and C string valid for the call.
        let removed = self.cluster.call(
            || format!("remove image {id}"),
            |lib, io| unsafe { (lib.rbd_remove)(io, name.as_ptr()) },
        );
        match removed {
            Ok(_) => Ok(()),
            Err(e) if e.errno == ENOTEMPTY || e.errno == EBUSY => self
                .cluster
                .call(
                    || format!("move image {id} to the trash"),
                    |lib, io| unsafe {
                        // SAFETY: I/O context and C string valid for the call.
                        (lib.rbd_trash_move)(io, name.as_ptr(), 0)
                    },
                )
                .map(drop)
                .map_err(|e| self.store_error(e)),
            Err(e) => Err(self.store_error(e)),
        }
    }

    /// The snapshots of an open image, oldest first.
    fn snapshots_of(&self, image: &Image) -> Result<Vec<Snapshot>, ProviderError> {
        let mut snapshots = Vec::new();
        for (id, name, size) in image.snapshots().map_err(|e| self.store_error(e))? {
            if let Ok(name) = SnapshotName::new(&name) {
                let taken = image.snapshot_time(id).map_err(|e| self.store_error(e))?;
                snapshots.push(Snapshot {
                    name,
                    size,
                    created: UNIX_EPOCH + Duration::from_secs(taken),
                });
            }
        }
        Ok(snapshots)
    }

    /// Snapshot `name` of an open image, as a [`Snapshot`].
    fn snapshot_of(&self, image: &Image, name: &SnapshotName) -> Result<Snapshot, ProviderError> {
        self.snapshots_of(image)?
            .into_iter()
            .find(|s| &s.name == name)
            .ok_or_else(|| ProviderError::SnapshotNotFound {
                provider: self.id.to_string(),
                volume: image.name.clone(),
                snapshot: name.to_string(),
            })
    }

    /// Takes image `id`'s exclusive lock on a cluster connection of its own. Another
    /// client's lock makes it `AttachedElsewhere`, or, if `take_over`, is broken (which
    /// fences that client).
    fn lock_for(&self, id: &VolumeId, take_over: bool) -> Result<Image, ProviderError> {
        let own = Arc::new(Cluster::connect(&self.target).map_err(|e| self.store_error(e))?);
        let image = own.open(id.as_str(), false).map_err(|e| match e.errno {
            ENOENT => self.not_found(id),
            _ => self.store_error(e),
        })?;
        // Broken before asking: asking a dead owner to hand the lock over waits for its
        // watch to time out (30 s).
        let break_owners = || -> Result<(), ProviderError> {
            for owner in image.lock_owners().map_err(|e| self.store_error(e))? {
                image.break_lock(&owner).map_err(|e| self.store_error(e))?;
            }
            Ok(())
        };
        if take_over {
            break_owners()?;
        }
        match image.lock() {
            Ok(()) => return Ok(image),
            Err(e) if e.errno == EROFS || e.errno == EBUSY => {
                if !take_over {
                    return Err(ProviderError::AttachedElsewhere {
                        provider: self.id.to_string(),
                        volume: id.to_string(),
                        holder: "another Ceph client (it holds the image's lock)".into(),
                    });
                }
            }
            Err(e) => return Err(self.store_error(e)),
        }
        break_owners()?;
        image.lock().map_err(|e| self.store_error(e))?;
        Ok(image)
    }
}

impl Provider for RbdProvider {
    fn location(&self) -> String {
        format!("rbd:{}", self.target.pool)
    }

    fn create_volume(
        &self,
        id: &VolumeId,
        source: &VolumeSource,
        owner: &str,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        self.make_image(id, source)?;
        let tagged = self.image(id, false).and_then(|image| {
            let e = |e| self.store_error(e);
            for key in [HOLDER, GENERATION] {
                // A clone starts with no holder of its own.
                image.set_metadata(key, "").map_err(e)?;
            }
            image.set_metadata(OWNER, owner).map_err(e)?;
            self.volume_of(id, &image)
        });
        if tagged.is_err() {
            // All or nothing.
            let _ = self.remove_image(id);
        }
        tagged
    }

    fn volume(&self, id: &VolumeId) -> Result<Volume, ProviderError> {
        let image = self.image(id, true)?;
        self.volume_of(id, &image)
    }

    /// Each image is opened to read its metadata: several at once, as each open waits on
    /// OSD round trips.
    fn list_volumes(&self) -> Result<Vec<Volume>, ProviderError> {
        let ids: Vec<VolumeId> = self
            .cluster
            .list()
            .map_err(|e| self.store_error(e))?
            .iter()
            .filter_map(|name| VolumeId::new(name).ok())
            .collect();
        crate::read_volumes(&ids, |id| self.volume(id))
    }

    fn resize_volume(
        &self,
        id: &VolumeId,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Volume, ProviderError> {
        check_sector_size(self.id.as_str(), size)?;
        self.with_writable(id, |image| {
            let from = image.size().map_err(|e| self.store_error(e))?;
            check_shrink(self.id.as_str(), id, from, size, allow_shrink)?;
            image.resize(size).map_err(|e| self.store_error(e))?;
            self.volume_of(id, image)
        })
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<(), ProviderError> {
        {
            let image = self.image(id, true)?;
            self.refuse_attached(id, &image)?;
        }
        self.remove_image(id)
    }

    fn create_snapshot(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Snapshot, ProviderError> {
        self.with_writable(id, |image| {
            image
                .snap_create(name.as_str())
                .map_err(|e| match e.errno {
                    EEXIST => ProviderError::SnapshotExists {
                        provider: self.id.to_string(),
                        volume: id.to_string(),
                        snapshot: name.to_string(),
                    },
                    _ => self.store_error(e),
                })?;
            self.snapshot_of(image, name)
        })
    }

    fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<Snapshot>, ProviderError> {
        self.snapshots_of(&self.image(id, true)?)
    }

    /// One open of the image for both.
    fn describe(&self, id: &VolumeId) -> Result<(Volume, Vec<Snapshot>), ProviderError> {
        let image = self.image(id, true)?;
        Ok((self.volume_of(id, &image)?, self.snapshots_of(&image)?))
    }

    fn delete_snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Result<(), ProviderError> {
        let image = self.image(id, false)?;
        image
            .snap_call("remove snapshot", name.as_str(), |lib, raw, n| unsafe {
                // SAFETY: open image; C string valid for the call.
                (lib.rbd_snap_remove)(raw, n)
            })
            .map(drop)
            .map_err(|e| match e.errno {
                ENOENT => ProviderError::SnapshotNotFound {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                    snapshot: name.to_string(),
                },
                _ => self.store_error(e),
            })
    }

    fn revert_volume(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        _progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        let image = self.image(id, false)?;
        self.refuse_attached(id, &image)?;
        let snapshot = self.snapshot_of(&image, name)?;
        image
            .snap_call(
                "roll back to snapshot",
                name.as_str(),
                |lib, raw, n| unsafe {
                    // SAFETY: open image; C string valid for the call.
                    (lib.rbd_snap_rollback)(raw, n)
                },
            )
            .map_err(|e| self.store_error(e))?;
        // A rollback keeps the image's size: the snapshot's is restored too.
        if image.size().map_err(|e| self.store_error(e))? != snapshot.size {
            image
                .resize(snapshot.size)
                .map_err(|e| self.store_error(e))?;
        }
        self.volume_of(id, &image)
    }

    fn attach(&self, id: &VolumeId, host: &str, force: bool) -> Result<Attachment, ProviderError> {
        let (holder, generation) = {
            let image = self.image(id, true)?;
            (self.holder(&image)?, self.generation(&image)?)
        };
        if let Some(device) = self.attached(id) {
            if holder.as_deref() == Some(host) {
                return Ok(self.attachment(id, host, generation, device));
            }
        }
        let ours = holder.as_deref() == Some(host);
        if let Some(holder) = &holder {
            if !ours && !force {
                return Err(ProviderError::AttachedElsewhere {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                    holder: holder.clone(),
                });
            }
            tracing::warn!(provider = %self.id, volume = %id, "host {host:?} takes the volume over from host {holder:?}");
        }
        // A lock this host's earlier daemon left, or (forced) another holder's, is broken.
        let image = self.lock_for(id, ours || force)?;
        // Read again under the lock: a host that attached and went away since the first
        // read (closing its image without a detach) still holds the volume.
        let (holder, generation) = (self.holder(&image)?, self.generation(&image)?);
        let ours = holder.as_deref() == Some(host);
        if let Some(holder) = holder.filter(|_| !ours && !force) {
            let _ = image.unlock();
            return Err(ProviderError::AttachedElsewhere {
                provider: self.id.to_string(),
                volume: id.to_string(),
                holder,
            });
        }
        if let Some(old) = self.attached(id) {
            old.fence();
        }
        let generation = if ours { generation } else { generation + 1 };
        let e = |e| self.store_error(e);
        image
            .set_metadata(GENERATION, &generation.to_string())
            .map_err(e)?;
        image.set_metadata(HOLDER, host).map_err(e)?;
        let device = Arc::new(RbdDevice::new(image, generation));
        self.devices
            .lock()
            .expect("devices lock")
            .insert(id.clone(), Arc::downgrade(&device));
        Ok(self.attachment(id, host, generation, device))
    }

    fn attach_standby(&self, id: &VolumeId, host: &str) -> Result<Attachment, ProviderError> {
        let own = Arc::new(Cluster::connect(&self.target).map_err(|e| self.store_error(e))?);
        let image = own.open(id.as_str(), true).map_err(|e| match e.errno {
            ENOENT => self.not_found(id),
            _ => self.store_error(e),
        })?;
        let generation = self.generation(&image)?;
        let device: Arc<dyn BlockDevice> = Arc::new(RbdDevice::new(image, generation));
        Ok(Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation,
            access: self.access(id),
            device: StandbyDevice::wrap(device),
        })
    }

    fn detach(&self, id: &VolumeId, host: &str) -> Result<(), ProviderError> {
        let holder = match self.image(id, true) {
            Ok(image) => self.holder(&image)?,
            Err(ProviderError::VolumeNotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if holder.as_deref() != Some(host) {
            return Ok(());
        }
        let e = |e| self.store_error(e);
        match self.attached(id) {
            Some(device) => {
                device.image().set_metadata(HOLDER, "").map_err(e)?;
                device.image().unlock().map_err(e)?;
                device.fence();
            }
            None => {
                // Held by this host's earlier daemon: its lock is broken first.
                let image = self.lock_for(id, true)?;
                image.set_metadata(HOLDER, "").map_err(e)?;
                image.unlock().map_err(e)?;
            }
        }
        self.devices.lock().expect("devices lock").remove(id);
        Ok(())
    }

    fn reclaim_interrupted(&self, apply: bool) -> Result<Vec<String>, ProviderError> {
        let mut leftovers = Vec::new();
        for name in self.cluster.list().map_err(|e| self.store_error(e))? {
            let Ok(id) = VolumeId::new(&name) else {
                continue;
            };
            let half_made = match self.image(&id, true) {
                Ok(image) => {
                    let age = now_secs()
                        .saturating_sub(image.created().map_err(|e| self.store_error(e))?);
                    image
                        .metadata(OWNER)
                        .map_err(|e| self.store_error(e))?
                        .is_none()
                        && Duration::from_secs(age) >= GRACE
                }
                Err(ProviderError::VolumeNotFound { .. }) => false,
                Err(e) => return Err(e),
            };
            if half_made {
                if apply {
                    self.remove_image(&id)?;
                }
                leftovers.push(format!("{}/{name}", self.location()));
            }
        }
        Ok(leftovers)
    }
}

/// How a host reaches the Ceph cluster of the `rbd` pools a provider service manages:
/// with a client of its own (the service hands out no Ceph credentials).
#[derive(Debug, Clone)]
pub struct CephClient {
    /// `ceph.conf`; librados' default search (`$CEPH_CONF`, `/etc/ceph/ceph.conf`)
    /// when `None`.
    pub conf: Option<PathBuf>,
    /// The client's name without `client.`.
    pub client: String,
    /// Its keyring, if not the conf's.
    pub keyring: Option<PathBuf>,
    /// How long a monitor or OSD call, or the connection, may take.
    pub timeout: Duration,
}

/// The device of attachment `generation` of `volume` to `host` in `pool`, which a
/// provider service made: the image opened with this host's own client, which takes the
/// exclusive lock (the service took over from any earlier holder and let go of it). A
/// standby opens the image read-only, with no lock (the caller makes it a standby).
///
/// The volume's metadata is read again under the lock: if it was attached anew since the
/// service answered, this attachment is already fenced and fails `AttachedElsewhere`.
pub fn open_attached(
    provider: &ProviderId,
    ceph: &CephClient,
    pool: &str,
    volume: &VolumeId,
    host: &str,
    generation: u64,
    standby: bool,
) -> Result<Arc<dyn BlockDevice>, ProviderError> {
    let target = Target {
        conf: ceph.conf.clone(),
        client: ceph.client.clone(),
        keyring: ceph.keyring.clone(),
        timeout: ceph.timeout,
        pool: pool.to_string(),
    };
    let store_error = |e: CephError| ProviderError::Store {
        provider: provider.to_string(),
        location: format!("rbd:{pool}"),
        message: e.to_string(),
    };
    let own = Arc::new(Cluster::connect(&target).map_err(store_error)?);
    let image = own
        .open(volume.as_str(), standby)
        .map_err(|e| match e.errno {
            ENOENT => ProviderError::VolumeNotFound {
                provider: provider.to_string(),
                volume: volume.to_string(),
            },
            _ => store_error(e),
        })?;
    if standby {
        return Ok(Arc::new(RbdDevice::new(image, generation)));
    }
    let elsewhere = |holder: String| ProviderError::AttachedElsewhere {
        provider: provider.to_string(),
        volume: volume.to_string(),
        holder,
    };
    match image.lock() {
        Ok(()) => {}
        Err(e) if e.errno == EROFS || e.errno == EBUSY => {
            return Err(elsewhere(
                "another Ceph client (it holds the image's lock)".into(),
            ))
        }
        Err(e) => return Err(store_error(e)),
    }
    let holder = image.metadata(HOLDER).map_err(store_error)?;
    let current = image
        .metadata(GENERATION)
        .map_err(store_error)?
        .and_then(|g| g.parse::<u64>().ok())
        .unwrap_or(0);
    let holder = holder.filter(|h| !h.is_empty());
    if holder.as_deref() != Some(host) || current != generation {
        let _ = image.unlock();
        return Err(elsewhere(match holder {
            Some(other) if other != host => other,
            Some(_) => format!("{host}, in a newer attachment (generation {current})"),
            None => "nobody: it was detached meanwhile".into(),
        }));
    }
    Ok(Arc::new(RbdDevice::new(image, generation)))
}

impl RbdProvider {
    fn access(&self, id: &VolumeId) -> DataAccess {
        DataAccess::Rbd {
            pool: self.target.pool.clone(),
            image: id.to_string(),
        }
    }

    fn attachment(
        &self,
        id: &VolumeId,
        host: &str,
        generation: u64,
        device: Arc<RbdDevice>,
    ) -> Attachment {
        Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation,
            access: self.access(id),
            device,
        }
    }
}
