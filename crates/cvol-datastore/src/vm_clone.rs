//! Clones of a whole VM (its `.vmx` and every disk) and templates: VMs that are never
//! started and serve as clone sources.

use cvol_format::{DiskName, ProviderId, SnapshotName, VmName, Vmx, VolumeId};
use cvol_provider::{CopyProgress, VolumeSource};

use crate::intent::{Intent, IntentVolume, Recovery};
use crate::{layout, Datastore, DatastoreError, StepError, VmInfo};

/// The `.vmx` key that marks a VM as a template.
pub(crate) const TEMPLATE_KEY: &str = "cvol.template";

/// The `.vmx` key of a linked clone: `VM@SNAPSHOT`, the origin it keeps pinned.
pub(crate) const LINKED_FROM_KEY: &str = "cvol.linkedFrom";

/// One disk of a clone: where it comes from and what it is called.
struct CloneDisk {
    provider: ProviderId,
    source: VolumeSource,
    from: DiskName,
    to: DiskName,
    volume: VolumeId,
}

impl Datastore {
    /// Makes VM `dst` a copy of VM `src` as it is now (stopped), or as it was at its
    /// snapshot `snapshot`: every disk cloned in its pool (copy-free where the pool
    /// allows), and its `.vmx` with a new BIOS uuid, new MAC addresses, the disks under
    /// their new names and no template mark. All or nothing. A full clone shares
    /// nothing with its source afterwards; a `linked` one (from a snapshot) keeps that
    /// snapshot pinned: neither it nor its VM can be deleted while the clone exists, so
    /// that pools whose clones depend on their origin (copy-on-write) stay whole.
    pub fn vm_clone(
        &self,
        src: &VmName,
        dst: &VmName,
        snapshot: Option<&SnapshotName>,
        linked: bool,
        progress: &dyn CopyProgress,
    ) -> Result<VmInfo, DatastoreError> {
        const OP: &str = "vm-clone";
        self.require_vm(src)?;
        if self.vm_exists(dst)? {
            return Err(DatastoreError::VmExists(dst.to_string()));
        }
        let linked_from = match (linked, snapshot) {
            (false, _) => None,
            (true, Some(name)) => Some(format!("{src}@{name}")),
            (true, None) => {
                return Err(DatastoreError::Invalid(format!(
                    "a linked clone is made from a snapshot: take one (cvol vm snapshot {src} \
                     NAME) and give --snapshot NAME"
                )))
            }
        };
        let (vmx_text, sources) = match snapshot {
            Some(name) => {
                let record = self.vm_snapshot(src, name)?;
                let sources = record
                    .disks
                    .iter()
                    .map(|d| {
                        Ok((
                            DiskName::new(&d.disk)?,
                            ProviderId::new(&d.provider)?,
                            VolumeSource::Snapshot(VolumeId::new(&d.volume)?, name.clone()),
                        ))
                    })
                    .collect::<Result<Vec<_>, DatastoreError>>()?;
                (record.vmx, sources)
            }
            None => {
                let mut sources = Vec::new();
                for info in self.disks(src)? {
                    if let Some(holder) = info.attached_to {
                        return Err(DatastoreError::Invalid(format!(
                            "not cloning VM {src}: disk {} is in use on host {holder:?}; stop \
                             the VM, or clone a snapshot of it (cvol vm snapshot {src} NAME, \
                             then --snapshot NAME)",
                            info.name
                        )));
                    }
                    let disk = DiskName::new(&info.name)?;
                    let (_, cvol) = self.read_descriptor(&layout::descriptor_file(src, &disk))?;
                    sources.push((disk, cvol.provider, VolumeSource::Volume(cvol.object)));
                }
                let vmx = self
                    .read_vmx(src)?
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                (vmx, sources)
            }
        };
        let disks = sources
            .into_iter()
            .map(|(from, provider, source)| {
                Ok(CloneDisk {
                    to: renamed(&from, src, dst)?,
                    from,
                    provider,
                    source,
                    volume: VolumeId::generate(),
                })
            })
            .collect::<Result<Vec<_>, DatastoreError>>()?;
        let vmx = if vmx_text.is_empty() {
            None
        } else {
            let mut vmx = Vmx::parse(&vmx_text, layout::vmx_file(src).as_str())?;
            rewrite_vmx(&mut vmx, src, dst, &disks);
            if let Some(origin) = &linked_from {
                vmx.set(LINKED_FROM_KEY, origin);
            }
            Some(vmx)
        };
        if vmx.is_none() && linked {
            return Err(DatastoreError::Invalid(format!(
                "VM {src} has no .vmx to record a linked clone in; make a full clone"
            )));
        }

        let mut intent = Intent::new(OP, Recovery::Rollback, self.host());
        intent.dirs.push(layout::vm_dir(dst).as_str().to_string());
        intent
            .files
            .push(layout::vmx_file(dst).as_str().to_string());
        for disk in &disks {
            intent
                .files
                .push(layout::descriptor_file(dst, &disk.to).as_str().to_string());
            intent.volumes.push(IntentVolume {
                provider: disk.provider.clone(),
                id: disk.volume.clone(),
            });
        }
        self.run_with_intent(intent, || {
            match self.share().create_dir(&layout::vm_dir(dst)) {
                Err(cvol_share::ShareError::AlreadyExists(_)) => {
                    return Err(StepError::NothingDone(DatastoreError::VmExists(
                        dst.to_string(),
                    )))
                }
                other => other?,
            }
            for disk in &disks {
                let provider = self.provider(&disk.provider)?;
                self.create_disk_files(
                    OP,
                    dst,
                    &disk.to,
                    &disk.provider,
                    &*provider,
                    &disk.volume,
                    &disk.source,
                    progress,
                )?;
            }
            if let Some(vmx) = &vmx {
                self.share()
                    .create_new(&layout::vmx_file(dst), vmx.to_string().as_bytes())?;
                self.step(OP, "vmx-written");
            }
            Ok(())
        })?;
        self.vm_info(dst)
    }

    /// The linked clones of `vm` (of its snapshot `snapshot`, or of any), by name.
    pub fn linked_clones(
        &self,
        vm: &VmName,
        snapshot: Option<&SnapshotName>,
    ) -> Result<Vec<String>, DatastoreError> {
        let mut clones = Vec::new();
        for name in self.vm_names()? {
            // A VM whose .vmx cannot be read pins nothing: fsck reports it.
            let Ok(Some(vmx)) = self.read_vmx(&name) else {
                continue;
            };
            let Some((origin, snap)) = vmx.get(LINKED_FROM_KEY).and_then(|o| o.split_once('@'))
            else {
                continue;
            };
            if origin == vm.as_str() && snapshot.is_none_or(|s| s.as_str() == snap) {
                clones.push(name.to_string());
            }
        }
        Ok(clones)
    }

    /// Refuses `doing` something to `vm` (its snapshot `snapshot`, or any) that its
    /// linked clones need.
    pub(crate) fn refuse_if_linked(
        &self,
        vm: &VmName,
        snapshot: Option<&SnapshotName>,
        doing: &str,
    ) -> Result<(), DatastoreError> {
        let clones = self.linked_clones(vm, snapshot)?;
        if clones.is_empty() {
            return Ok(());
        }
        Err(DatastoreError::Invalid(format!(
            "not {doing}: linked clones depend on it: {}; delete them first",
            clones.join(", ")
        )))
    }

    /// Marks VM `vm` as a template (it is not started, only cloned), or with `on` false,
    /// as an ordinary VM again.
    pub fn vm_set_template(&self, vm: &VmName, on: bool) -> Result<(), DatastoreError> {
        self.vm_set_option(vm, TEMPLATE_KEY, on.then_some("TRUE"))
    }
}

/// A source disk's name in the clone: VMware's `<vm>`, `<vm>_N` names follow the VM's
/// new name; any other name stays.
fn renamed(disk: &DiskName, src: &VmName, dst: &VmName) -> Result<DiskName, DatastoreError> {
    let name = disk.as_str();
    let Some(rest) = name.strip_prefix(src.as_str()) else {
        return Ok(disk.clone());
    };
    let numbered = rest
        .strip_prefix('_')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if rest.is_empty() || numbered {
        Ok(DiskName::new(&format!("{dst}{rest}"))?)
    } else {
        Ok(disk.clone())
    }
}

/// The clone's `.vmx`: its own name, disks, BIOS uuid and MAC addresses.
fn rewrite_vmx(vmx: &mut Vmx, src: &VmName, dst: &VmName, disks: &[CloneDisk]) {
    let renames: Vec<(String, String)> = disks
        .iter()
        .map(|d| (d.from.descriptor_file(), d.to.descriptor_file()))
        .chain([(format!("{src}.nvram"), format!("{dst}.nvram"))])
        .collect();
    let entries: Vec<(String, String)> = vmx
        .entries()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (key, value) in entries {
        let lower = key.to_ascii_lowercase();
        if let Some((_, new)) = renames.iter().find(|(old, _)| *old == value) {
            vmx.set(&key, new);
        } else if lower.starts_with("ethernet")
            && (lower.ends_with(".generatedaddress") || lower.ends_with(".address"))
        {
            // VMware's own ranges: generated 00:0c:29, static 00:50:56:00-3f.
            let mac = uuid::Uuid::new_v4().into_bytes();
            let new = if lower.ends_with(".generatedaddress") {
                format!("00:0c:29:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2])
            } else {
                format!(
                    "00:50:56:{:02x}:{:02x}:{:02x}",
                    mac[0] & 0x3f,
                    mac[1],
                    mac[2]
                )
            };
            vmx.set(&key, &new);
        } else if lower == "uuid.location" || lower == "vc.uuid" {
            vmx.remove(&key);
        }
    }
    vmx.set("displayName", dst.as_str());
    vmx.set("uuid.bios", &bios_uuid());
    vmx.remove(TEMPLATE_KEY);
    vmx.remove(LINKED_FROM_KEY);
}

/// A new BIOS uuid, written as VMware writes it: "56 4d … 12-34 …".
pub(crate) fn bios_uuid() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}", hex[..8].join(" "), hex[8..].join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_named_after_the_vm_follow_its_new_name() {
        let (src, dst) = (VmName::new("web").unwrap(), VmName::new("web2").unwrap());
        for (from, to) in [
            ("web", "web2"),
            ("web_1", "web2_1"),
            ("web_12", "web2_12"),
            ("web_x", "web_x"),
            ("webby", "webby"),
            ("data", "data"),
        ] {
            let got = renamed(&DiskName::new(from).unwrap(), &src, &dst).unwrap();
            assert_eq!(got.as_str(), to, "{from}");
        }
    }

    #[test]
    fn a_clones_vmx_has_its_own_name_disks_uuid_and_macs() {
        let text = "displayName = \"web\"\nuuid.bios = \"56 4d 00 00 00 00 00 00-00 00 00 00 00 00 00 01\"\n\
                    uuid.location = \"56 4d\"\nscsi0:0.fileName = \"web.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\n\
                    ethernet0.generatedAddress = \"00:0c:29:11:22:33\"\nethernet1.addressType = \"static\"\n\
                    ethernet1.address = \"00:50:56:01:02:03\"\nnvram = \"web.nvram\"\ncvol.template = \"TRUE\"\n\
                    memSize = \"512\"\n";
        let mut vmx = Vmx::parse(text, "web/web.vmx").unwrap();
        let (src, dst) = (VmName::new("web").unwrap(), VmName::new("web2").unwrap());
        let disk = |from: &str, to: &str| CloneDisk {
            provider: ProviderId::new("p").unwrap(),
            source: VolumeSource::Blank { size: 512 },
            from: DiskName::new(from).unwrap(),
            to: DiskName::new(to).unwrap(),
            volume: VolumeId::generate(),
        };
        rewrite_vmx(
            &mut vmx,
            &src,
            &dst,
            &[disk("web", "web2"), disk("data", "data")],
        );
        assert_eq!(vmx.get("displayName"), Some("web2"));
        assert_eq!(vmx.get("scsi0:0.fileName"), Some("web2.vmdk"));
        assert_eq!(vmx.get("scsi0:1.fileName"), Some("data.vmdk"));
        assert_eq!(vmx.get("nvram"), Some("web2.nvram"));
        assert_eq!(vmx.get("memSize"), Some("512"));
        assert_eq!(vmx.get("uuid.location"), None);
        assert_eq!(vmx.get(TEMPLATE_KEY), None);
        let uuid = vmx.get("uuid.bios").unwrap();
        assert_ne!(uuid, "56 4d 00 00 00 00 00 00-00 00 00 00 00 00 00 01");
        assert_eq!(uuid.len(), 47, "{uuid}");
        let generated = vmx.get("ethernet0.generatedAddress").unwrap();
        assert!(generated.starts_with("00:0c:29:") && generated != "00:0c:29:11:22:33");
        let fixed = vmx.get("ethernet1.address").unwrap();
        assert!(fixed.starts_with("00:50:56:") && fixed != "00:50:56:01:02:03");
        assert!(u8::from_str_radix(&fixed[9..11], 16).unwrap() <= 0x3f);
    }
}
