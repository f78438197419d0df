//! VMs: a namespace directory with a `.vmx` and the disks' descriptors.

use std::collections::BTreeMap;

use cvol_format::{DiskName, ProviderId, VmName, Vmx};
use cvol_provider::{NoProgress, VolumeSource};
use cvol_share::FileKind;
use serde::Serialize;

use crate::intent::{Intent, IntentVolume, Recovery};
use crate::{layout, vmx_slots, Datastore, DatastoreError, DiskInfo, Freshness, StepError};

/// What a new VM gets.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Sizes of its disks in bytes, first disk first.
    pub disks: Vec<u64>,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub cpus: u32,
    /// The provider of its disks; the default one if `None`.
    pub provider: Option<ProviderId>,
}

/// A VM as the share describes it.
#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    /// Its name (namespace directory).
    pub name: String,
    /// Its `.vmx`, if there is one.
    pub vmx: Option<String>,
    /// Memory in MiB, from the `.vmx`.
    pub memory_mib: Option<u64>,
    /// Virtual CPUs, from the `.vmx`.
    pub cpus: Option<u32>,
    /// The disk files its `.vmx` attaches, boot disk first.
    pub vmx_disks: Vec<String>,
    /// Its disks.
    pub disks: Vec<DiskInfo>,
    /// What is wrong with its metadata, if anything.
    pub problems: Vec<String>,
    /// cvol's own settings in the `.vmx` (`cvol.ha`, `cvol.kernel`, …), by key.
    pub options: BTreeMap<String, String>,
    /// Its BIOS uuid (`uuid.bios`), in the usual form, where the `.vmx` has a valid one.
    pub uuid: Option<String>,
}

/// The `.vmx` key prefix of cvol's own VM settings.
pub const OPTION_PREFIX: &str = "cvol.";

impl VmInfo {
    /// Whether another host restarts the VM when its host dies (`cvol.ha = "TRUE"`).
    pub fn ha(&self) -> bool {
        self.options.get(HA_KEY).is_some_and(|v| is_true(v))
    }

    /// Whether the VM is a template (`cvol.template = "TRUE"`): never started, cloned.
    pub fn template(&self) -> bool {
        self.options
            .get(crate::vm_clone::TEMPLATE_KEY)
            .is_some_and(|v| is_true(v))
    }

    /// Refuses to start a template, saying what to do instead.
    pub fn check_startable(&self) -> Result<(), DatastoreError> {
        if self.template() {
            return Err(DatastoreError::Invalid(format!(
                "VM {} is a template: it is not started; clone it (cvol vm clone {} NEW), or \
                 make it a VM again (cvol vm template {} --off)",
                self.name, self.name, self.name
            )));
        }
        Ok(())
    }
}

/// The `.vmx` key that marks a VM for HA.
const HA_KEY: &str = "cvol.ha";

fn is_true(value: &str) -> bool {
    value.eq_ignore_ascii_case("true")
}

impl Datastore {
    /// The VM namespaces: top-level directories of the share, without cvol's own.
    pub fn vm_names(&self) -> Result<Vec<VmName>, DatastoreError> {
        let mut names: Vec<VmName> = self
            .share()
            .read_dir(&cvol_share::SharePath::root())?
            .into_iter()
            .filter(|e| e.kind == FileKind::Dir)
            .filter_map(|e| VmName::new(&e.name).ok())
            .collect();
        names.sort();
        Ok(names)
    }

    pub(crate) fn vm_exists(&self, name: &VmName) -> Result<bool, DatastoreError> {
        match self.share().metadata(&layout::vm_dir(name)) {
            Ok(m) => Ok(m.kind == FileKind::Dir),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn require_vm(&self, name: &VmName) -> Result<(), DatastoreError> {
        if self.vm_exists(name)? {
            Ok(())
        } else {
            Err(DatastoreError::VmNotFound(name.to_string()))
        }
    }

    /// Creates VM `name` with its disks, all or nothing.
    pub fn vm_create(&self, name: &VmName, spec: &VmSpec) -> Result<VmInfo, DatastoreError> {
        self.create_vm("vm-create", name, spec, &[], &crate::disk::no_fill)
    }

    /// Creates VM `name` as `vm_create` does, with its disks named `disk_names` (the
    /// rest by VMware's convention) and each `fill`ed before the VM is complete (an
    /// import's copy): a failed or interrupted fill leaves nothing.
    pub fn vm_import(
        &self,
        name: &VmName,
        spec: &VmSpec,
        disk_names: &[DiskName],
        fill: &crate::disk::Fill<'_>,
    ) -> Result<VmInfo, DatastoreError> {
        self.create_vm("vm-import", name, spec, disk_names, fill)
    }

    fn create_vm(
        &self,
        op: &str,
        name: &VmName,
        spec: &VmSpec,
        disk_names: &[DiskName],
        fill: &crate::disk::Fill<'_>,
    ) -> Result<VmInfo, DatastoreError> {
        if self.vm_exists(name)? {
            return Err(DatastoreError::VmExists(name.to_string()));
        }
        if spec.memory_mib == 0 || spec.cpus == 0 {
            return Err(DatastoreError::Invalid(
                "a VM needs at least 1 MiB of memory and 1 CPU".into(),
            ));
        }
        let (provider_id, provider) = self.provider_or_default(spec.provider.as_ref())?;
        let disks = spec
            .disks
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let disk = match disk_names.get(i) {
                    Some(disk) => disk.clone(),
                    None => DiskName::nth(name, i)?,
                };
                Ok((disk, size, cvol_format::VolumeId::generate()))
            })
            .collect::<Result<Vec<_>, DatastoreError>>()?;
        let mut seen = std::collections::BTreeSet::new();
        if let Some((disk, ..)) = disks.iter().find(|(d, ..)| !seen.insert(d.clone())) {
            return Err(DatastoreError::Invalid(format!(
                "two disks of VM {name} would be named {disk}"
            )));
        }
        let mut vmx = new_vmx(name, spec);
        for (disk, ..) in &disks {
            vmx_slots::attach_disk(&mut vmx, &disk.descriptor_file()).ok_or_else(|| {
                DatastoreError::Invalid(format!("a VM has room for 15 disks, not {}", disks.len()))
            })?;
        }

        let mut intent = Intent::new(op, Recovery::Rollback, self.host());
        intent.dirs.push(layout::vm_dir(name).as_str().to_string());
        intent
            .files
            .push(layout::vmx_file(name).as_str().to_string());
        for (disk, _, volume) in &disks {
            intent
                .files
                .push(layout::descriptor_file(name, disk).as_str().to_string());
            intent.volumes.push(IntentVolume {
                provider: provider_id.clone(),
                id: volume.clone(),
            });
        }
        self.run_with_intent(intent, || {
            match self.share().create_dir(&layout::vm_dir(name)) {
                // Another process made the VM since the check above: nothing is ours to undo.
                Err(cvol_share::ShareError::AlreadyExists(_)) => {
                    return Err(StepError::NothingDone(DatastoreError::VmExists(
                        name.to_string(),
                    )))
                }
                other => other?,
            }
            self.step(op, "dir-created");
            for (disk, size, volume) in &disks {
                self.create_disk_files(
                    op,
                    name,
                    disk,
                    &provider_id,
                    &*provider,
                    volume,
                    &VolumeSource::Blank { size: *size },
                    &NoProgress,
                )?;
                fill(disk, &provider_id, volume)?;
                self.step(op, "filled");
            }
            self.share()
                .create_new(&layout::vmx_file(name), vmx.to_string().as_bytes())?;
            self.step(op, "vmx-written");
            Ok(())
        })?;
        self.vm_info(name)
    }

    /// What the share says about VM `name`.
    pub fn vm_info(&self, name: &VmName) -> Result<VmInfo, DatastoreError> {
        self.vm_info_as(name, Freshness::Now)
    }

    /// What the share says about VM `name`, as current as `freshness` asks.
    pub(crate) fn vm_info_as(
        &self,
        name: &VmName,
        freshness: Freshness,
    ) -> Result<VmInfo, DatastoreError> {
        // The folder's listing first: it brings the handles and attributes of the .vmx
        // and the descriptors, which are then read without looking them up.
        let disks = self.disks_as(name, freshness)?;
        let mut problems = Vec::new();
        let vmx_path = layout::vmx_file(name);
        let vmx = match self.read_file(&vmx_path, freshness) {
            Ok(bytes) => match Vmx::parse(&String::from_utf8_lossy(&bytes), vmx_path.as_str()) {
                Ok(vmx) => Some(vmx),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        problems.extend(disks.iter().filter_map(|d| d.problem.clone()));
        Ok(VmInfo {
            name: name.to_string(),
            vmx: vmx.as_ref().map(|_| vmx_path.as_str().to_string()),
            memory_mib: vmx.as_ref().and_then(|v| v.get("memSize")?.parse().ok()),
            cpus: vmx.as_ref().and_then(|v| v.get("numvcpus")?.parse().ok()),
            vmx_disks: vmx
                .as_ref()
                .map(vmx_slots::attached_disks)
                .unwrap_or_default(),
            disks,
            problems,
            options: vmx
                .iter()
                .flat_map(|v| v.entries())
                .filter(|(key, _)| key.starts_with(OPTION_PREFIX))
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            uuid: vmx
                .as_ref()
                .and_then(|v| v.get("uuid.bios"))
                .and_then(|u| uuid::Uuid::try_parse(&u.replace([' ', '-'], "")).ok())
                .map(|u| u.to_string()),
        })
    }

    /// Whether VM `name` is marked for HA, as [`VmInfo::ha`] says, from its `.vmx` alone
    /// (none of its disks or volumes are looked at). A `.vmx` that does not parse marks
    /// nothing, as in [`Datastore::vm_info`].
    pub fn vm_ha(&self, name: &VmName) -> Result<bool, DatastoreError> {
        self.require_vm(name)?;
        match self.read_vmx(name) {
            Ok(vmx) => Ok(vmx.is_some_and(|v| v.get(HA_KEY).is_some_and(is_true))),
            Err(DatastoreError::Format(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets (or, with `None`, removes) the cvol setting `key` (`cvol.…`) in VM `name`'s
    /// `.vmx`, leaving every other line as it was.
    pub fn vm_set_option(
        &self,
        name: &VmName,
        key: &str,
        value: Option<&str>,
    ) -> Result<(), DatastoreError> {
        if !key.starts_with(OPTION_PREFIX) {
            return Err(DatastoreError::Invalid(format!(
                "{key:?} is not a cvol setting (they start with {OPTION_PREFIX:?})"
            )));
        }
        let mut vmx = self.read_vmx(name)?.ok_or_else(|| {
            DatastoreError::Invalid(format!("VM {name} has no .vmx to set {key} in"))
        })?;
        match value {
            Some(value) => vmx.set(key, value),
            None => vmx.remove(key),
        }
        self.share()
            .write_atomic(&layout::vmx_file(name), vmx.to_string().as_bytes())?;
        Ok(())
    }

    /// Every VM, read several at once.
    pub fn vm_list(&self) -> Result<Vec<VmInfo>, DatastoreError> {
        self.walk(&self.vm_names()?, |name| {
            self.vm_info_as(name, Freshness::Recent)
        })
        .into_iter()
        .collect()
    }

    /// Deletes VM `name`: its volumes and its whole namespace directory. Refused, before
    /// anything is touched, if a disk is unreadable or attached.
    pub fn vm_delete(&self, name: &VmName) -> Result<(), DatastoreError> {
        const OP: &str = "vm-delete";
        self.require_vm(name)?;
        self.refuse_if_linked(name, None, &format!("deleting VM {name}"))?;
        let mut intent = Intent::new(OP, Recovery::Rollforward, self.host());
        for disk in self.disks(name)? {
            if let Some(problem) = disk.problem {
                return Err(DatastoreError::Invalid(format!(
                    "not deleting VM {name}: {problem}; fix or remove that descriptor first"
                )));
            }
            if let Some(holder) = disk.attached_to {
                return Err(DatastoreError::Invalid(format!(
                    "not deleting VM {name}: disk {} is attached to host {holder:?}",
                    disk.name
                )));
            }
            let (Some(provider), Some(volume)) = (disk.provider, disk.volume) else {
                continue;
            };
            intent.volumes.push(IntentVolume {
                provider: ProviderId::new(&provider)?,
                id: cvol_format::VolumeId::new(&volume)?,
            });
        }
        intent.dirs.push(layout::vm_dir(name).as_str().to_string());
        let volumes = intent.volumes.clone();
        self.run_with_intent(intent, || {
            for volume in &volumes {
                match self.provider(&volume.provider)?.delete_volume(&volume.id) {
                    Err(e) if !e.is_not_found() => return Err(e.into()),
                    _ => {}
                }
                self.step(OP, "volume-deleted");
            }
            crate::intent::remove_tree(self.share(), &layout::vm_dir(name))?;
            self.step(OP, "dir-removed");
            Ok(())
        })
    }
}

fn new_vmx(name: &VmName, spec: &VmSpec) -> Vmx {
    let mut vmx = Vmx::new();
    for (key, value) in [
        (".encoding", "UTF-8"),
        ("config.version", "8"),
        ("virtualHW.version", "19"),
        ("displayName", name.as_str()),
        ("uuid.bios", &crate::vm_clone::bios_uuid()),
        ("guestOS", "other-64"),
        ("memSize", &spec.memory_mib.to_string()),
        ("numvcpus", &spec.cpus.to_string()),
    ] {
        vmx.set(key, value);
    }
    vmx
}
