//! The volumes this host has attached, shared by every way a disk is reached (the file
//! system container, NBD): one attachment per volume per host, counted by opens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cvol_format::{ProviderId, VolumeId};
use cvol_provider::{BlockDevice, Provider};
use cvol_share::SharePath;

use crate::{Datastore, DatastoreError};

struct Attached {
    provider: ProviderId,
    device: Arc<dyn BlockDevice>,
    opens: usize,
    /// The descriptor whose size the volume must keep (none while a disk is pending).
    descriptor: Option<SharePath>,
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
        map.insert(
            volume.clone(),
            Attached {
                provider: provider.clone(),
                device: attachment.device.clone(),
                opens: 1,
                descriptor: descriptor.cloned(),
            },
        );
        Ok(attachment.device)
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
        if a.opens > 0 {
            return Ok(());
        }
        let a = map.remove(volume).expect("present");
        self.detach(volume, &a)
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
        for (volume, a) in all {
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
