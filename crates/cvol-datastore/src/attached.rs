//! The volumes this host has attached, shared by every way a disk is reached (the file
//! system container, NBD): one attachment per volume per host, counted by opens.
//!
//! The destination of a live migration holds a volume as a *standby* first (reads only,
//! the source keeps writing), kept while no file has it open, and then *promotes* it:
//! the files QEMU opened at `-incoming` start writing through the owner's device from
//! that moment, without being opened again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use cvol_format::{ProviderId, VolumeId};
use cvol_provider::{AsyncIo, BlockDevice, BlockError, BlockExtent, Provider};
use cvol_share::SharePath;

use crate::metered::MeteredDevice;
use crate::{Datastore, DatastoreError};

/// What this host is to an attached volume.
enum Role {
    /// It holds the volume.
    Owner,
    /// A migration's destination, not promoted yet: the entry stays while nothing has it
    /// open, until promoted or dropped.
    Standby(Arc<Promotable>),
    /// A standby whose migration failed: gone once its last open closes.
    Dropped,
}

struct Attached {
    provider: ProviderId,
    device: Arc<dyn BlockDevice>,
    opens: usize,
    /// The descriptor whose size the volume must keep (none while a disk is pending).
    descriptor: Option<SharePath>,
    role: Role,
}

/// A standby's device, whose backing becomes the owner's device at promotion.
struct Promotable {
    inner: RwLock<Arc<dyn BlockDevice>>,
}

impl Promotable {
    fn current(&self) -> Arc<dyn BlockDevice> {
        self.inner.read().expect("device lock").clone()
    }
}

impl BlockDevice for Promotable {
    fn size(&self) -> u64 {
        self.current().size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.current().read_at(buf, offset)
    }

    fn read_now(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), BlockError>> {
        self.current().read_now(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.current().write_at(buf, offset)
    }

    fn flush(&self) -> Result<(), BlockError> {
        self.current().flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.current().discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.current().write_zeroes(offset, len)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.current().extents(offset, len)
    }

    fn may_block(&self) -> bool {
        self.current().may_block()
    }

    fn submit(&self, io: AsyncIo) {
        self.current().submit(io)
    }

    fn submits_async(&self) -> bool {
        self.current().submits_async()
    }
}

/// Publishes how many volumes this host has attached (standbys included).
fn count(map: &HashMap<VolumeId, Attached>) {
    metrics::gauge!("cvol_attached_volumes").set(map.len() as f64);
}

/// This host's attached volumes.
pub struct AttachedVolumes {
    ds: Arc<Datastore>,
    map: Mutex<HashMap<VolumeId, Attached>>,
}

impl AttachedVolumes {
    /// No volume attached yet, on `datastore`.
    pub fn new(datastore: Arc<Datastore>) -> Self {
        Self {
            ds: datastore,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The datastore.
    pub fn datastore(&self) -> &Arc<Datastore> {
        &self.ds
    }

    /// Opens `volume` once more; the first open attaches it through its provider.
    /// `descriptor` names the disk whose size the volume keeps.
    pub fn open(
        &self,
        provider: &ProviderId,
        volume: &VolumeId,
        descriptor: Option<&SharePath>,
    ) -> Result<Arc<dyn BlockDevice>, DatastoreError> {
        let mut map = self.map.lock().expect("attachment lock");
        if let Some(a) = map.get_mut(volume) {
            a.opens += 1;
            return Ok(a.device.clone());
        }
        let attachment = self
            .ds
            .provider(provider)?
            .attach(volume, self.ds.host(), false)?;
        tracing::info!(%volume, host = self.ds.host(), "attached");
        let device = MeteredDevice::wrap(volume, attachment.device);
        map.insert(
            volume.clone(),
            Attached {
                provider: provider.clone(),
                device: device.clone(),
                opens: 1,
                descriptor: descriptor.cloned(),
                role: Role::Owner,
            },
        );
        count(&map);
        Ok(device)
    }

    /// Attaches `volume` as a standby (the destination of a live migration): opens get
    /// a device that reads and refuses writes, until [`AttachedVolumes::promote`] or
    /// [`AttachedVolumes::drop_standby`].
    pub fn attach_standby(
        &self,
        provider: &ProviderId,
        volume: &VolumeId,
        descriptor: Option<&SharePath>,
    ) -> Result<(), DatastoreError> {
        let mut map = self.map.lock().expect("attachment lock");
        if map.contains_key(volume) {
            return Err(DatastoreError::Invalid(format!(
                "volume {volume} is already attached to this host"
            )));
        }
        let attachment = self
            .ds
            .provider(provider)?
            .attach_standby(volume, self.ds.host())?;
        let device = Arc::new(Promotable {
            inner: RwLock::new(attachment.device),
        });
        map.insert(
            volume.clone(),
            Attached {
                provider: provider.clone(),
                device: MeteredDevice::wrap(volume, device.clone()),
                opens: 0,
                descriptor: descriptor.cloned(),
                role: Role::Standby(device),
            },
        );
        count(&map);
        tracing::info!(%volume, host = self.ds.host(), "attached as a standby");
        Ok(())
    }

    /// Makes this host the owner of standby `volume`: a forced attach fences the old
    /// holder, and every open of the standby writes through the new device from now on.
    pub fn promote(&self, volume: &VolumeId) -> Result<(), DatastoreError> {
        let mut map = self.map.lock().expect("attachment lock");
        let Some(a) = map.get_mut(volume) else {
            return Err(DatastoreError::Invalid(format!(
                "volume {volume} is not attached to this host"
            )));
        };
        let Role::Standby(device) = &a.role else {
            return Err(DatastoreError::Invalid(format!(
                "volume {volume} is not a standby here"
            )));
        };
        let attachment = self
            .ds
            .provider(&a.provider)?
            .attach(volume, self.ds.host(), true)?;
        *device.inner.write().expect("device lock") = attachment.device;
        a.role = Role::Owner;
        tracing::info!(%volume, generation = attachment.generation, "standby promoted to owner");
        if a.opens == 0 {
            let a = map.remove(volume).expect("present");
            count(&map);
            self.detach(volume, &a)?;
        }
        Ok(())
    }

    /// Lets go of standby `volume` (its migration failed): nothing was written, nothing
    /// is detached; the entry goes with its last open.
    pub fn drop_standby(&self, volume: &VolumeId) {
        let mut map = self.map.lock().expect("attachment lock");
        if let Some(a) = map.get_mut(volume) {
            if let Role::Standby(_) = a.role {
                a.role = Role::Dropped;
                if a.opens == 0 {
                    map.remove(volume);
                    count(&map);
                }
                tracing::info!(%volume, "standby dropped");
            }
        }
    }

    /// Ends one open of `volume`; the last one flushes and detaches it. The map stays
    /// locked throughout, so that an open racing with the last close finds the volume
    /// either still attached or fully detached.
    pub fn close(&self, volume: &VolumeId) -> Result<(), DatastoreError> {
        let mut map = self.map.lock().expect("attachment lock");
        let Some(a) = map.get_mut(volume) else {
            return Ok(());
        };
        a.opens -= 1;
        match a.role {
            _ if a.opens > 0 => Ok(()),
            Role::Standby(_) => Ok(()),
            Role::Dropped => {
                map.remove(volume);
                count(&map);
                Ok(())
            }
            Role::Owner => {
                let a = map.remove(volume).expect("present");
                count(&map);
                self.detach(volume, &a)
            }
        }
    }

    /// True while `volume` is open here.
    pub fn is_open(&self, volume: &VolumeId) -> bool {
        self.map
            .lock()
            .expect("attachment lock")
            .contains_key(volume)
    }

    /// Flushes and detaches every volume, whoever still has it open: the end of a mount.
    pub fn close_all(&self) {
        let all: Vec<(VolumeId, Attached)> =
            self.map.lock().expect("attachment lock").drain().collect();
        metrics::gauge!("cvol_attached_volumes").set(0.0);
        for (volume, a) in all
            .into_iter()
            .filter(|(_, a)| matches!(a.role, Role::Owner))
        {
            if let Err(e) = self.detach(&volume, &a) {
                tracing::error!(%volume, "could not flush and detach: {e}");
            }
        }
    }

    fn detach(&self, volume: &VolumeId, a: &Attached) -> Result<(), DatastoreError> {
        let flushed = a.device.flush();
        let provider = self.ds.provider(&a.provider)?;
        if let Some(descriptor) = &a.descriptor {
            self.trim_to_descriptor(&*provider, volume, descriptor, a.device.size());
        }
        provider.detach(volume, self.ds.host())?;
        tracing::info!(%volume, "detached");
        Ok(flushed?)
    }

    /// With FUSE passthrough the kernel writes a disk's pool file directly, so a write
    /// past the end of the disk extends the file instead of failing. The disk's size is
    /// its descriptor's: what lies beyond is cut off when the last open closes.
    fn trim_to_descriptor(
        &self,
        provider: &dyn Provider,
        volume: &VolumeId,
        descriptor: &SharePath,
        size: u64,
    ) {
        let Ok((_, cvol)) = self.ds.read_descriptor(descriptor) else {
            return;
        };
        if size > cvol.size {
            tracing::warn!(
                "{descriptor}: {} bytes were written past the end of the disk (through passthrough) and are dropped; mount with --no-passthrough to have such writes fail",
                size - cvol.size
            );
            if let Err(e) = provider.resize_volume(volume, cvol.size, true) {
                tracing::error!(
                    "{descriptor}: cannot cut volume {volume} back to {} bytes: {e}",
                    cvol.size
                );
            }
        }
    }
}
