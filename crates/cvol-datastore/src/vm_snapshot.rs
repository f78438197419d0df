//! VM-wide snapshots: every disk of a VM snapshotted under one name, with a copy of the
//! VM's `.vmx` and descriptors in `<vm>/.snapshots/<name>`, so that a revert brings the
//! whole VM back as it was: disks, sizes and configuration.
//!
//! Taking one is consistent across disks only if nothing writes meanwhile: the host
//! agent pauses a running VM around it (QEMU flushes every disk when it stops).

use std::time::{SystemTime, UNIX_EPOCH};

use cvol_format::{CvolDisk, Descriptor, DiskName, ProviderId, SnapshotName, VmName, VolumeId};
use cvol_provider::CopyProgress;
use serde::{Deserialize, Serialize};

use crate::disk::has_snapshot;
use crate::intent::{Intent, IntentRevert, IntentSnapshot, Recovery};
use crate::{layout, Datastore, DatastoreError, Freshness};

/// A VM snapshot's record on the share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// Its name, also the name of each disk's volume snapshot.
    pub name: String,
    /// When it was taken (milliseconds since the epoch).
    pub created_unix_ms: u64,
    /// The VM was running (paused for the snapshot).
    #[serde(default)]
    pub running: bool,
    /// The `.vmx` as it was.
    pub vmx: String,
    /// Every disk as it was.
    pub disks: Vec<VmSnapshotDisk>,
}

/// One disk in a VM snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshotDisk {
    /// The disk's name.
    pub disk: String,
    /// Its provider.
    pub provider: String,
    /// Its volume.
    pub volume: String,
    /// Its size then, in bytes.
    pub size: u64,
    /// Its descriptor then.
    pub descriptor: String,
}

impl Datastore {
    /// Takes snapshot `name` of every disk of `vm` and records it with the VM's
    /// configuration; all or nothing. `running` records that the caller paused the VM
    /// for it. Refused if a disk already has a snapshot of that name.
    pub fn vm_snapshot_create(
        &self,
        vm: &VmName,
        name: &SnapshotName,
        running: bool,
        progress: &dyn CopyProgress,
    ) -> Result<VmSnapshot, DatastoreError> {
        const OP: &str = "vm-snapshot";
        self.require_vm(vm)?;
        let record_path = layout::vm_snapshot_file(vm, name);
        if self.share().metadata(&record_path).is_ok() {
            return Err(DatastoreError::Invalid(format!(
                "VM {vm} already has a snapshot \"{name}\""
            )));
        }
        let vmx = self
            .read_vmx(vm)?
            .map(|v| v.to_string())
            .unwrap_or_default();
        let disks = self.current_disks(vm)?;
        let mut intent = Intent::new(OP, Recovery::Rollback, self.host());
        for (disk, cvol, _) in &disks {
            let provider = self.provider(&cvol.provider)?;
            if has_snapshot(&*provider, &cvol.object, name)? {
                return Err(DatastoreError::Invalid(format!(
                    "disk {vm}/{disk} already has a snapshot \"{name}\"; choose another name"
                )));
            }
            intent.snapshots.push(IntentSnapshot {
                provider: cvol.provider.clone(),
                volume: cvol.object.clone(),
                name: name.clone(),
            });
        }
        intent.files.push(record_path.as_str().to_string());
        // Removed on rollback only if this was the VM's first snapshot (left empty).
        intent
            .dirs
            .push(layout::vm_snapshots_dir(vm).as_str().to_string());
        let record = VmSnapshot {
            name: name.to_string(),
            created_unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            running,
            vmx,
            disks: disks
                .iter()
                .map(|(disk, cvol, descriptor)| VmSnapshotDisk {
                    disk: disk.to_string(),
                    provider: cvol.provider.to_string(),
                    volume: cvol.object.to_string(),
                    size: cvol.size,
                    descriptor: descriptor.to_string(),
                })
                .collect(),
        };
        self.run_with_intent(intent, || {
            for (_, cvol, _) in &disks {
                self.provider(&cvol.provider)?
                    .create_snapshot(&cvol.object, name, progress)?;
                self.step(OP, "disk-snapshot");
            }
            let dir = layout::vm_snapshots_dir(vm);
            match self.share().create_dir(&dir) {
                Err(e) if !matches!(e, cvol_share::ShareError::AlreadyExists(_)) => {
                    return Err(e.into())
                }
                _ => {}
            }
            let text = toml::to_string(&record).expect("a VM snapshot serializes");
            self.share().create_new(&record_path, text.as_bytes())?;
            self.step(OP, "recorded");
            Ok(record.clone())
        })
    }

    /// The snapshots of `vm`, oldest first.
    pub fn vm_snapshots(&self, vm: &VmName) -> Result<Vec<VmSnapshot>, DatastoreError> {
        self.vm_snapshots_as(vm, Freshness::Now)
    }

    /// The snapshots of VM `vm` as [`Datastore::vm_snapshots`] gives them, as current
    /// as `freshness` asks.
    pub(crate) fn vm_snapshots_as(
        &self,
        vm: &VmName,
        freshness: Freshness,
    ) -> Result<Vec<VmSnapshot>, DatastoreError> {
        self.require_vm(vm)?;
        let entries = match self.list_dir(&layout::vm_snapshots_dir(vm), freshness) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut snapshots = Vec::new();
        for entry in entries {
            if let Ok(name) = SnapshotName::new(&entry.name) {
                snapshots.push(self.vm_snapshot(vm, &name)?);
            }
        }
        snapshots.sort_by(|a, b| (a.created_unix_ms, &a.name).cmp(&(b.created_unix_ms, &b.name)));
        Ok(snapshots)
    }

    /// Snapshot `name` of `vm`.
    pub fn vm_snapshot(
        &self,
        vm: &VmName,
        name: &SnapshotName,
    ) -> Result<VmSnapshot, DatastoreError> {
        let path = layout::vm_snapshot_file(vm, name);
        let bytes = match self.share().read(&path) {
            Err(e) if e.is_not_found() => {
                self.require_vm(vm)?;
                return Err(DatastoreError::Invalid(format!(
                    "VM {vm} has no snapshot \"{name}\""
                )));
            }
            other => other?,
        };
        let text = String::from_utf8_lossy(&bytes);
        let record: VmSnapshot = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
            cvol_format::FormatError::new(path.as_str(), line, e.message().trim())
        })?;
        Ok(record)
    }

    /// Deletes snapshot `name` of `vm`: each disk's volume snapshot and the record.
    pub fn vm_snapshot_delete(
        &self,
        vm: &VmName,
        name: &SnapshotName,
    ) -> Result<(), DatastoreError> {
        const OP: &str = "vm-snapshot-delete";
        let record = self.vm_snapshot(vm, name)?;
        self.refuse_if_linked(vm, Some(name), &format!("deleting snapshot {vm}@{name}"))?;
        let mut intent = Intent::new(OP, Recovery::Rollforward, self.host());
        intent.snapshots = record
            .disks
            .iter()
            .map(|d| snapshot_of(d, name))
            .collect::<Result<_, _>>()?;
        intent
            .files
            .push(layout::vm_snapshot_file(vm, name).as_str().to_string());
        self.run_with_intent(intent.clone(), || {
            for snapshot in &intent.snapshots {
                self.delete_snapshots(std::slice::from_ref(snapshot))?;
                self.step(OP, "disk-snapshot-deleted");
            }
            self.share()
                .remove_file(&layout::vm_snapshot_file(vm, name))?;
            Ok(())
        })
    }

    /// Sets `vm` back to its snapshot `name`: every disk's data and size, and its
    /// `.vmx`. Refused while a disk is attached, or if the VM's disks are no longer those
    /// of the snapshot (one was added, deleted or replaced since), naming them.
    pub fn vm_snapshot_revert(
        &self,
        vm: &VmName,
        name: &SnapshotName,
    ) -> Result<VmSnapshot, DatastoreError> {
        const OP: &str = "vm-snapshot-revert";
        let record = self.vm_snapshot(vm, name)?;
        let now: Vec<(String, String)> = self
            .current_disks(vm)?
            .iter()
            .map(|(disk, cvol, _)| (disk.to_string(), cvol.object.to_string()))
            .collect();
        let then: Vec<(String, String)> = record
            .disks
            .iter()
            .map(|d| (d.disk.clone(), d.volume.clone()))
            .collect();
        if now != then {
            let describe = |disks: &[(String, String)]| {
                disks
                    .iter()
                    .map(|(d, v)| format!("{d} ({v})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(DatastoreError::Invalid(format!(
                "not reverting VM {vm}: its disks changed since snapshot \"{name}\": then {}, now {}",
                describe(&then),
                describe(&now)
            )));
        }
        for disk in &record.disks {
            let provider = self.provider(&ProviderId::new(&disk.provider)?)?;
            let id = VolumeId::new(&disk.volume)?;
            if let Some(holder) = provider.volume(&id)?.attached_to {
                return Err(DatastoreError::Invalid(format!(
                    "not reverting VM {vm}: disk {} is attached to host {holder:?}; stop the VM first",
                    disk.disk
                )));
            }
            if !has_snapshot(&*provider, &id, name)? {
                return Err(DatastoreError::Invalid(format!(
                    "not reverting VM {vm}: disk {}'s volume {id} has no snapshot \"{name}\" any more",
                    disk.disk
                )));
            }
        }
        let mut intent = Intent::new(OP, Recovery::Rollforward, self.host());
        intent.revert = Some(IntentRevert {
            vm: vm.clone(),
            snapshot: name.clone(),
        });
        self.run_with_intent(intent, || {
            self.revert_to(vm, &record)?;
            Ok(record.clone())
        })
    }

    /// The steps of a revert, each one repeatable: every volume, then every descriptor,
    /// then the `.vmx`.
    pub(crate) fn revert_to(&self, vm: &VmName, record: &VmSnapshot) -> Result<(), DatastoreError> {
        let name = SnapshotName::new(&record.name)?;
        for disk in &record.disks {
            let provider = self.provider(&ProviderId::new(&disk.provider)?)?;
            provider.revert_volume(
                &VolumeId::new(&disk.volume)?,
                &name,
                &cvol_provider::NoProgress,
            )?;
            self.step("vm-snapshot-revert", "volume-reverted");
        }
        for disk in &record.disks {
            let path = layout::descriptor_file(vm, &DiskName::new(&disk.disk)?);
            self.share()
                .write_atomic(&path, disk.descriptor.as_bytes())?;
        }
        if !record.vmx.is_empty() {
            self.share()
                .write_atomic(&layout::vmx_file(vm), record.vmx.as_bytes())?;
        }
        Ok(())
    }

    /// Deletes volume snapshots; one already gone is fine.
    pub(crate) fn delete_snapshots(
        &self,
        snapshots: &[IntentSnapshot],
    ) -> Result<(), DatastoreError> {
        for s in snapshots {
            match self
                .provider(&s.provider)?
                .delete_snapshot(&s.volume, &s.name)
            {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }

    /// Every disk of `vm` with its descriptor, in name order; a broken one is an error.
    fn current_disks(
        &self,
        vm: &VmName,
    ) -> Result<Vec<(DiskName, CvolDisk, Descriptor)>, DatastoreError> {
        let mut disks = Vec::new();
        for info in self.disks(vm)? {
            let disk = DiskName::new(&info.name)?;
            let (descriptor, cvol) = self.read_descriptor(&layout::descriptor_file(vm, &disk))?;
            disks.push((disk, cvol, descriptor));
        }
        Ok(disks)
    }
}

fn snapshot_of(
    disk: &VmSnapshotDisk,
    name: &SnapshotName,
) -> Result<IntentSnapshot, DatastoreError> {
    Ok(IntentSnapshot {
        provider: ProviderId::new(&disk.provider)?,
        volume: VolumeId::new(&disk.volume)?,
        name: name.clone(),
    })
}
