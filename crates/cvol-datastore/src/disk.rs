//! Disks: a descriptor on the share naming a volume in a provider.

use cvol_format::{CvolDisk, DiskName, ProviderId, SnapshotName, VmName, Vmx, VolumeId};
use cvol_provider::{CopyProgress, Provider, Snapshot, VolumeSource};
use cvol_share::{FileKind, SharePath};
use serde::Serialize;

use crate::intent::{Intent, IntentVolume, Recovery, VmxEdit};
use crate::{layout, vmx_slots, Datastore, DatastoreError, Freshness, StepError};

/// A disk as the share and its provider describe it.
#[derive(Debug, Clone, Serialize)]
pub struct DiskInfo {
    /// The disk's name (descriptor stem).
    pub name: String,
    /// The descriptor's share path.
    pub descriptor: String,
    /// Size in bytes, from the descriptor.
    pub size: Option<u64>,
    /// Bytes the volume takes in its pool (what a thin disk holds), where the pool
    /// tells (file pools).
    pub allocated: Option<u64>,
    /// The provider, from the descriptor.
    pub provider: Option<String>,
    /// The volume, from the descriptor.
    pub volume: Option<String>,
    /// The disk's uuid, from the descriptor.
    pub uuid: Option<String>,
    /// Snapshots of the volume.
    pub snapshots: Vec<String>,
    /// The host the volume is attached to, if any.
    pub attached_to: Option<String>,
    /// What is wrong with the disk, if anything.
    pub problem: Option<String>,
}

impl DiskInfo {
    fn broken(name: &str, descriptor: &SharePath, problem: String) -> Self {
        Self {
            name: name.to_string(),
            descriptor: descriptor.as_str().to_string(),
            size: None,
            provider: None,
            volume: None,
            uuid: None,
            snapshots: Vec::new(),
            allocated: None,
            attached_to: None,
            problem: Some(problem),
        }
    }
}

/// Writes a new disk's data (`disk`, volume `volume` in `provider`) before the disk is
/// complete: an import's copy. An error undoes the disk.
pub type Fill<'a> = dyn Fn(&DiskName, &ProviderId, &VolumeId) -> Result<(), DatastoreError> + 'a;

/// Whether volume `id` of `provider` has snapshot `name`.
pub(crate) fn has_snapshot(
    provider: &dyn Provider,
    id: &VolumeId,
    name: &SnapshotName,
) -> Result<bool, DatastoreError> {
    Ok(provider.list_snapshots(id)?.iter().any(|s| &s.name == name))
}

/// The fill of a disk that stays blank (or holds what it was made from).
pub(crate) fn no_fill(_: &DiskName, _: &ProviderId, _: &VolumeId) -> Result<(), DatastoreError> {
    Ok(())
}

impl Datastore {
    /// The disks of VM `vm`: every `*.vmdk` descriptor in its directory. A disk whose
    /// descriptor or volume is broken is listed with its problem.
    pub fn disks(&self, vm: &VmName) -> Result<Vec<DiskInfo>, DatastoreError> {
        self.disks_as(vm, Freshness::Now)
    }

    /// The disks of VM `vm` as [`Datastore::disks`] lists them, as current as
    /// `freshness` asks.
    pub(crate) fn disks_as(
        &self,
        vm: &VmName,
        freshness: Freshness,
    ) -> Result<Vec<DiskInfo>, DatastoreError> {
        self.require_vm(vm)?;
        let mut names: Vec<DiskName> = self
            .list_dir(&layout::vm_dir(vm), freshness)?
            .into_iter()
            .filter(|e| e.kind == FileKind::File)
            .filter_map(|e| DiskName::from_descriptor_file(&e.name))
            .collect();
        names.sort();
        Ok(names
            .iter()
            .map(|disk| self.disk_info(vm, disk, freshness))
            .collect())
    }

    /// Disk `vm/disk`, as [`Datastore::disks`] lists it (a broken one with its problem).
    pub fn disk(&self, vm: &VmName, disk: &DiskName) -> Result<DiskInfo, DatastoreError> {
        self.require_vm(vm)?;
        match self.share().metadata(&layout::descriptor_file(vm, disk)) {
            Err(e) if e.is_not_found() => Err(DatastoreError::DiskNotFound(format!("{vm}/{disk}"))),
            other => other
                .map(|_| self.disk_info(vm, disk, Freshness::Now))
                .map_err(Into::into),
        }
    }

    fn disk_info(&self, vm: &VmName, disk: &DiskName, freshness: Freshness) -> DiskInfo {
        let path = layout::descriptor_file(vm, disk);
        let cvol = match self.read_descriptor_as(&path, freshness) {
            Ok((_, cvol)) => cvol,
            Err(e) => return DiskInfo::broken(disk.as_str(), &path, e.to_string()),
        };
        let mut info = DiskInfo {
            name: disk.to_string(),
            descriptor: path.as_str().to_string(),
            size: Some(cvol.size),
            provider: Some(cvol.provider.to_string()),
            volume: Some(cvol.object.to_string()),
            uuid: Some(cvol.disk_uuid.to_string()),
            snapshots: Vec::new(),
            allocated: None,
            attached_to: None,
            problem: None,
        };
        let volume = self.provider(&cvol.provider).and_then(|p| {
            let (volume, snapshots) = p.describe(&cvol.object)?;
            Ok((volume, snapshots, p.allocated(&cvol.object)?))
        });
        match volume {
            Ok((volume, snapshots, allocated)) => {
                info.allocated = allocated;
                info.attached_to = volume.attached_to;
                info.snapshots = snapshots.into_iter().map(|s| s.name.to_string()).collect();
                if volume.size != cvol.size {
                    info.problem = Some(format!(
                        "{path}: descriptor says {} bytes, volume {} has {}",
                        cvol.size, cvol.object, volume.size
                    ));
                }
            }
            Err(e) => info.problem = Some(format!("{path}: {e}")),
        }
        info
    }

    /// Reads the descriptor of `vm/disk`, checked (see [`Datastore::read_descriptor`]).
    fn cvol_disk(&self, vm: &VmName, disk: &DiskName) -> Result<CvolDisk, DatastoreError> {
        self.require_vm(vm)?;
        match self.read_descriptor(&layout::descriptor_file(vm, disk)) {
            Err(DatastoreError::Share(e)) if e.is_not_found() => {
                Err(DatastoreError::DiskNotFound(format!("{vm}/{disk}")))
            }
            other => other.map(|(_, cvol)| cvol),
        }
    }

    /// Creates a volume from `source` and its descriptor `vm/disk`: two steps of
    /// operation `op`, whose intent names both.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_disk_files(
        &self,
        op: &str,
        vm: &VmName,
        disk: &DiskName,
        provider_id: &ProviderId,
        provider: &dyn Provider,
        volume: &VolumeId,
        source: &VolumeSource,
        progress: &dyn CopyProgress,
    ) -> Result<CvolDisk, StepError> {
        let created = provider.create_volume(volume, source, &self.owner(), progress)?;
        self.step(op, "volume-created");
        let cvol = CvolDisk {
            datastore: self.config().uuid,
            provider: provider_id.clone(),
            object: volume.clone(),
            disk_uuid: uuid::Uuid::new_v4(),
            size: created.size,
            extent_file: disk.extent_file(),
        };
        let path = layout::descriptor_file(vm, disk);
        match self
            .share()
            .create_new(&path, cvol.to_descriptor().to_string().as_bytes())
        {
            Err(cvol_share::ShareError::AlreadyExists(_)) => {
                return Err(StepError::Failed(DatastoreError::DiskExists(format!(
                    "{vm}/{disk}"
                ))))
            }
            other => other?,
        }
        self.step(op, "descriptor-written");
        Ok(cvol)
    }

    /// Reads `vm`'s `.vmx`, if it has one.
    pub(crate) fn read_vmx(&self, vm: &VmName) -> Result<Option<Vmx>, DatastoreError> {
        let path = layout::vmx_file(vm);
        match self.share().read(&path) {
            Ok(bytes) => Ok(Some(Vmx::parse(
                &String::from_utf8_lossy(&bytes),
                path.as_str(),
            )?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adds a new disk to `vm` made from `source` and then `fill`ed, in `vm`'s `.vmx`
    /// too; all or nothing.
    #[allow(clippy::too_many_arguments)]
    fn add_disk(
        &self,
        op: &str,
        vm: &VmName,
        disk: &DiskName,
        provider_id: &ProviderId,
        source: &VolumeSource,
        progress: &dyn CopyProgress,
        fill: &Fill<'_>,
    ) -> Result<DiskInfo, DatastoreError> {
        let provider = self.provider(provider_id)?;
        if self
            .share()
            .metadata(&layout::descriptor_file(vm, disk))
            .is_ok()
        {
            return Err(DatastoreError::DiskExists(format!("{vm}/{disk}")));
        }
        let volume = VolumeId::generate();
        let mut vmx = self.read_vmx(vm)?;
        let keys = match &mut vmx {
            Some(vmx) => vmx_slots::attach_disk(vmx, &disk.descriptor_file()).ok_or_else(|| {
                DatastoreError::Invalid(format!("VM {vm} has no free disk slot (15 disks)"))
            })?,
            None => Vec::new(),
        };
        let mut intent = Intent::new(op, Recovery::Rollback, self.host());
        intent
            .files
            .push(layout::descriptor_file(vm, disk).as_str().to_string());
        intent.volumes.push(IntentVolume {
            provider: provider_id.clone(),
            id: volume.clone(),
        });
        if vmx.is_some() {
            intent.vmx = Some(VmxEdit {
                file: layout::vmx_file(vm).as_str().to_string(),
                keys,
            });
        }
        self.run_with_intent(intent, || {
            self.create_disk_files(
                op,
                vm,
                disk,
                provider_id,
                &*provider,
                &volume,
                source,
                progress,
            )?;
            fill(disk, provider_id, &volume)?;
            self.step(op, "filled");
            if let Some(vmx) = &vmx {
                self.share()
                    .write_atomic(&layout::vmx_file(vm), vmx.to_string().as_bytes())?;
                self.step(op, "vmx-updated");
            }
            Ok(())
        })?;
        Ok(self.disk_info(vm, disk, Freshness::Now))
    }

    /// Adds a new blank disk of `size` bytes to `vm`, named by VMware's convention
    /// (`<vm>`, `<vm>_1`, …: the first free name).
    pub fn disk_create(
        &self,
        vm: &VmName,
        size: u64,
        provider: Option<&ProviderId>,
    ) -> Result<DiskInfo, DatastoreError> {
        self.new_disk("disk-create", vm, size, provider, &no_fill)
    }

    /// Adds a new disk of `size` bytes to `vm` as `disk_create` does, `fill`ed (e.g. with
    /// an image's data) before it becomes part of the VM; a failed or interrupted fill
    /// leaves nothing.
    pub fn disk_import(
        &self,
        vm: &VmName,
        size: u64,
        provider: Option<&ProviderId>,
        fill: &Fill<'_>,
    ) -> Result<DiskInfo, DatastoreError> {
        self.new_disk("disk-import", vm, size, provider, fill)
    }

    fn new_disk(
        &self,
        op: &str,
        vm: &VmName,
        size: u64,
        provider: Option<&ProviderId>,
        fill: &Fill<'_>,
    ) -> Result<DiskInfo, DatastoreError> {
        self.require_vm(vm)?;
        let (provider_id, _) = self.provider_or_default(provider)?;
        let disk = (0..)
            .map(|n| DiskName::nth(vm, n))
            .find(|d| {
                d.as_ref().map_or(true, |d| {
                    self.share()
                        .metadata(&layout::descriptor_file(vm, d))
                        .is_err()
                })
            })
            .expect("an unbounded search finds a name")?;
        self.add_disk(
            op,
            vm,
            &disk,
            &provider_id,
            &VolumeSource::Blank { size },
            &cvol_provider::NoProgress,
            fill,
        )
    }

    /// Clones `vm/disk` (or its snapshot `snapshot`) as new disk `to_vm/to_disk`, in the
    /// same provider. The clone shares nothing with its source afterwards.
    pub fn disk_clone(
        &self,
        (vm, disk, snapshot): (&VmName, &DiskName, Option<&SnapshotName>),
        (to_vm, to_disk): (&VmName, &DiskName),
        progress: &dyn CopyProgress,
    ) -> Result<DiskInfo, DatastoreError> {
        let source = self.cvol_disk(vm, disk)?;
        self.require_vm(to_vm)?;
        let from = match snapshot {
            Some(snap) => VolumeSource::Snapshot(source.object, snap.clone()),
            None => VolumeSource::Volume(source.object),
        };
        self.add_disk(
            "disk-clone",
            to_vm,
            to_disk,
            &source.provider,
            &from,
            progress,
            &no_fill,
        )
    }

    /// Runs `read` on a short-lived volume made from snapshot `snapshot` of `vm/disk` (in
    /// the same provider; copy-free where the pool allows), then deletes the volume. An
    /// intent record names it, so that fsck deletes it if this process dies meanwhile.
    pub fn with_snapshot_volume<T>(
        &self,
        (vm, disk, snapshot): (&VmName, &DiskName, &SnapshotName),
        read: impl FnOnce(&dyn Provider, &VolumeId) -> Result<T, DatastoreError>,
    ) -> Result<T, DatastoreError> {
        const OP: &str = "snapshot-read";
        let source = self.cvol_disk(vm, disk)?;
        let provider = self.provider(&source.provider)?;
        if !has_snapshot(&*provider, &source.object, snapshot)? {
            return Err(DatastoreError::Invalid(format!(
                "disk {vm}/{disk} has no snapshot \"{snapshot}\""
            )));
        }
        let volume = VolumeId::generate();
        let mut intent = Intent::new(OP, Recovery::Rollforward, self.host());
        intent.volumes.push(IntentVolume {
            provider: source.provider.clone(),
            id: volume.clone(),
        });
        self.run_with_intent(intent, || {
            provider.create_volume(
                &volume,
                &VolumeSource::Snapshot(source.object.clone(), snapshot.clone()),
                &self.owner(),
                &cvol_provider::NoProgress,
            )?;
            self.step(OP, "volume-created");
            let result = read(&*provider, &volume);
            provider.delete_volume(&volume)?;
            // With the volume gone, a failed read has left nothing to finish.
            result.map_err(StepError::NothingDone)
        })
    }

    /// Resizes `vm/disk` to `size` bytes; shrinking needs `allow_shrink`.
    pub fn disk_resize(
        &self,
        vm: &VmName,
        disk: &DiskName,
        size: u64,
        allow_shrink: bool,
    ) -> Result<DiskInfo, DatastoreError> {
        let path = layout::descriptor_file(vm, disk);
        let mut cvol = self.cvol_disk(vm, disk)?;
        let volume =
            self.provider(&cvol.provider)?
                .resize_volume(&cvol.object, size, allow_shrink)?;
        // The volume is the truth; a crash before this rewrite leaves a size mismatch that
        // fsck repairs from the volume.
        let (mut descriptor, _) = self.read_descriptor(&path)?;
        cvol.size = volume.size;
        cvol.apply_to(&mut descriptor);
        self.share()
            .write_atomic(&path, descriptor.to_string().as_bytes())?;
        Ok(self.disk_info(vm, disk, Freshness::Now))
    }

    /// Takes snapshot `name` of `vm/disk`.
    pub fn disk_snapshot(
        &self,
        vm: &VmName,
        disk: &DiskName,
        name: &SnapshotName,
        progress: &dyn CopyProgress,
    ) -> Result<Snapshot, DatastoreError> {
        let cvol = self.cvol_disk(vm, disk)?;
        Ok(self
            .provider(&cvol.provider)?
            .create_snapshot(&cvol.object, name, progress)?)
    }

    /// Deletes `vm/disk`: its volume, its descriptor and its `.vmx` entry.
    pub fn disk_delete(&self, vm: &VmName, disk: &DiskName) -> Result<(), DatastoreError> {
        const OP: &str = "disk-delete";
        let cvol = self.cvol_disk(vm, disk)?;
        self.refuse_if_linked(vm, None, &format!("deleting disk {vm}/{disk}"))?;
        let provider = self.provider(&cvol.provider)?;
        if let Some(holder) = provider.volume(&cvol.object)?.attached_to {
            return Err(DatastoreError::Invalid(format!(
                "disk {vm}/{disk} is attached to host {holder:?}"
            )));
        }
        let vmx = self.read_vmx(vm)?;
        let mut intent = Intent::new(OP, Recovery::Rollforward, self.host());
        intent.volumes.push(IntentVolume {
            provider: cvol.provider.clone(),
            id: cvol.object.clone(),
        });
        intent
            .files
            .push(layout::descriptor_file(vm, disk).as_str().to_string());
        if let Some(vmx) = &vmx {
            intent.vmx = Some(VmxEdit {
                file: layout::vmx_file(vm).as_str().to_string(),
                keys: vmx_slots::keys_of_disk(vmx, &disk.descriptor_file()),
            });
        }
        let edit = intent.vmx.clone();
        self.run_with_intent(intent, || {
            provider.delete_volume(&cvol.object)?;
            self.step(OP, "volume-deleted");
            self.share()
                .remove_file(&layout::descriptor_file(vm, disk))?;
            self.step(OP, "descriptor-removed");
            if let (Some(mut vmx), Some(edit)) = (vmx, edit) {
                edit.keys.iter().for_each(|k| vmx.remove(k));
                self.share()
                    .write_atomic(&layout::vmx_file(vm), vmx.to_string().as_bytes())?;
                self.step(OP, "vmx-updated");
            }
            Ok(())
        })
    }
}
