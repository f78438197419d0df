//! Disks made by tools that write files, not by cvol commands: `qemu-img create` writes
//! the flat extent before the descriptor, and `cp -r` copies descriptors that name the
//! source's volume. The container turns both into proper cVol disks through these calls,
//! each under an intent record so that an interrupted one is undone by fsck.

use cvol_format::{
    CvolDisk, Descriptor, DiskName, FormatError, ProviderId, VmName, VolumeId, DDB_UUID,
    SECTOR_SIZE,
};
use cvol_provider::{NoProgress, VolumeSource};
use cvol_share::SharePath;

use crate::intent::{Intent, IntentVolume, PendingIntent, Recovery};
use crate::{layout, Datastore, DatastoreError};

/// A disk whose extent is being written before its descriptor exists.
#[derive(Debug)]
pub struct PendingDisk {
    vm: VmName,
    disk: DiskName,
    provider: ProviderId,
    volume: VolumeId,
    size: u64,
    record: PendingIntent,
}

impl PendingDisk {
    /// The provider that will hold the volume.
    pub fn provider(&self) -> &ProviderId {
        &self.provider
    }

    /// The volume, which exists once [`PendingDisk::size`] is not zero.
    pub fn volume(&self) -> &VolumeId {
        &self.volume
    }

    /// The volume's size so far; 0 before anything was written.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The disk whose descriptor will complete it.
    pub fn disk(&self) -> &DiskName {
        &self.disk
    }
}

impl Datastore {
    /// Starts disk `vm/disk` in the default provider: its volume is made when the first
    /// bytes arrive ([`Datastore::grow_pending_disk`]) and it becomes a disk when its
    /// descriptor is written ([`Datastore::commit_pending_disk`]).
    pub fn begin_pending_disk(
        &self,
        vm: &VmName,
        disk: &DiskName,
    ) -> Result<PendingDisk, DatastoreError> {
        self.require_vm(vm)?;
        let (provider, _) = self.provider_or_default(None)?;
        let volume = VolumeId::generate();
        let mut intent = Intent::new("disk-import", Recovery::Rollback, self.host());
        intent.volumes.push(IntentVolume {
            provider: provider.clone(),
            id: volume.clone(),
        });
        intent
            .files
            .push(layout::descriptor_file(vm, disk).as_str().to_string());
        let path = self.write_intent(&intent)?;
        Ok(PendingDisk {
            vm: vm.clone(),
            disk: disk.clone(),
            provider,
            volume,
            size: 0,
            record: PendingIntent { path, intent },
        })
    }

    /// Makes the pending disk's volume at least `size` bytes (rounded up to a sector).
    pub fn grow_pending_disk(
        &self,
        pending: &mut PendingDisk,
        size: u64,
    ) -> Result<(), DatastoreError> {
        let size = size.div_ceil(SECTOR_SIZE).max(1) * SECTOR_SIZE;
        if size <= pending.size {
            return Ok(());
        }
        let provider = self.provider(&pending.provider)?;
        let volume = if pending.size == 0 {
            provider.create_volume(
                &pending.volume,
                &VolumeSource::Blank { size },
                &self.owner(),
                &NoProgress,
            )?
        } else {
            provider.resize_volume(&pending.volume, size, false)?
        };
        pending.size = volume.size;
        Ok(())
    }

    /// Completes a pending disk from the descriptor the tool wrote: the volume takes the
    /// extent's size and the descriptor gains the `ddb.cvol.*` keys; every other line of
    /// it is kept.
    pub fn commit_pending_disk(
        &self,
        mut pending: PendingDisk,
    ) -> Result<CvolDisk, DatastoreError> {
        let path = layout::descriptor_file(&pending.vm, &pending.disk);
        let mut descriptor = self.read_raw_descriptor(&path)?;
        let sectors = single_extent_sectors(&descriptor, &path)?;
        self.grow_pending_disk(&mut pending, sectors * SECTOR_SIZE)?;
        let disk = CvolDisk {
            datastore: self.config().uuid,
            provider: pending.provider.clone(),
            object: pending.volume.clone(),
            disk_uuid: descriptor
                .ddb(DDB_UUID)
                .and_then(|u| uuid::Uuid::parse_str(u).ok())
                .unwrap_or_else(uuid::Uuid::new_v4),
            size: pending.size,
            extent_file: pending.disk.extent_file(),
        };
        disk.apply_to(&mut descriptor);
        self.share()
            .write_atomic(&path, descriptor.to_string().as_bytes())?;
        self.share().remove_file(&pending.record.path)?;
        Ok(disk)
    }

    /// Gives up a pending disk: its volume and descriptor go.
    pub fn abort_pending_disk(&self, pending: PendingDisk) -> Result<(), DatastoreError> {
        self.recover(&pending.record)
    }

    /// Makes a descriptor that was just created by copying another (`cp`) a disk of its
    /// own: the volume it names is cloned and the copy is pointed at the clone, so that
    /// two descriptors never share a volume. Returns `None` (and changes nothing) when
    /// the file does not name a volume of this datastore.
    pub fn adopt_copied_descriptor(
        &self,
        vm: &VmName,
        disk: &DiskName,
    ) -> Result<Option<CvolDisk>, DatastoreError> {
        let path = layout::descriptor_file(vm, disk);
        let Ok((mut descriptor, source)) = self.read_descriptor(&path) else {
            return Ok(None);
        };
        let provider = self.provider(&source.provider)?;
        if provider.volume(&source.object).is_err() {
            return Ok(None);
        }
        let volume = VolumeId::generate();
        let mut intent = Intent::new("disk-copy", Recovery::Rollback, self.host());
        intent.volumes.push(IntentVolume {
            provider: source.provider.clone(),
            id: volume.clone(),
        });
        intent.files.push(path.as_str().to_string());
        self.run_with_intent(intent, || {
            provider.create_volume(
                &volume,
                &VolumeSource::Volume(source.object.clone()),
                &self.owner(),
                &NoProgress,
            )?;
            self.step("disk-copy", "volume-created");
            let copy = CvolDisk {
                object: volume.clone(),
                disk_uuid: uuid::Uuid::new_v4(),
                extent_file: disk.extent_file(),
                ..source.clone()
            };
            copy.apply_to(&mut descriptor);
            self.share()
                .write_atomic(&path, descriptor.to_string().as_bytes())?;
            self.step("disk-copy", "descriptor-written");
            Ok(Some(copy))
        })
    }

    /// Renames disk `vm/disk` to `to_vm/to_disk`: the descriptor moves and its extent
    /// line follows the new name (as `vmkfstools -E` does); the volume stays.
    pub fn disk_rename(
        &self,
        (vm, disk): (&VmName, &DiskName),
        (to_vm, to_disk): (&VmName, &DiskName),
    ) -> Result<(), DatastoreError> {
        let from = layout::descriptor_file(vm, disk);
        let to = layout::descriptor_file(to_vm, to_disk);
        let (mut descriptor, mut cvol) = self.read_descriptor(&from)?;
        cvol.extent_file = to_disk.extent_file();
        cvol.apply_to(&mut descriptor);
        // Written under the old name first, so a crash leaves one consistent descriptor.
        self.share()
            .write_atomic(&from, descriptor.to_string().as_bytes())?;
        self.share().rename(&from, &to)?;
        Ok(())
    }

    /// Reads a descriptor that may not carry cVol keys yet.
    fn read_raw_descriptor(&self, path: &SharePath) -> Result<Descriptor, DatastoreError> {
        let bytes = self.share().read(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| FormatError::new(path.as_str(), None, "not UTF-8 text"))?;
        Ok(Descriptor::parse(&text, path.as_str())?)
    }
}

fn single_extent_sectors(descriptor: &Descriptor, path: &SharePath) -> Result<u64, DatastoreError> {
    let extents: Vec<_> = descriptor.extents().collect();
    match extents.as_slice() {
        [one] if one.sectors > 0 => Ok(one.sectors),
        _ => Err(FormatError::new(
            path.as_str(),
            None,
            "extent: a cVol disk has exactly one, of at least one sector",
        )
        .into()),
    }
}
