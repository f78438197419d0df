//! A VMware VM folder: its `.vmx` says the memory, CPUs and disks (in controller order).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cvol_format::Vmx;

use super::{ImportPlan, SourceDisk};

/// Controller kinds in the order a BIOS looks at them for the boot disk.
const BUSES: [&str; 4] = ["scsi", "sata", "nvme", "ide"];

/// The plan for the VM of `vmx` (a `.vmx` file, or a folder holding exactly one).
pub fn plan(path: &Path) -> anyhow::Result<ImportPlan> {
    let vmx_path = if path.is_dir() {
        let found: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("vmx")))
            .collect();
        match found.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{}: no .vmx in this folder; not a VMware VM",
                path.display()
            ),
            _ => bail!(
                "{}: {} .vmx files in this folder; name the one to import",
                path.display(),
                found.len()
            ),
        }
    } else {
        path.to_path_buf()
    };
    let text =
        std::fs::read(&vmx_path).with_context(|| format!("cannot read {}", vmx_path.display()))?;
    let vmx = Vmx::parse(
        &String::from_utf8_lossy(&text),
        &vmx_path.display().to_string(),
    )?;
    let folder = vmx_path.parent().unwrap_or(Path::new("."));
    let mut slots: Vec<((usize, u32, u32), String, String)> = Vec::new();
    for (key, value) in vmx.entries() {
        let Some((slot, order)) = disk_slot(key) else {
            continue;
        };
        let present = vmx
            .get(&format!("{slot}.present"))
            .is_some_and(|p| p.eq_ignore_ascii_case("true"));
        let cdrom = vmx
            .get(&format!("{slot}.deviceType"))
            .is_some_and(|t| t.to_ascii_lowercase().contains("cdrom"));
        if present && !cdrom && value.to_ascii_lowercase().ends_with(".vmdk") {
            slots.push((order, slot, value.to_string()));
        }
    }
    slots.sort();
    let mut disks = Vec::new();
    for (_, slot, file) in slots {
        let disk_path = folder.join(&file);
        if !disk_path.is_file() {
            bail!(
                "{} names disk {file:?} ({slot}), which is not there ({})",
                vmx_path.display(),
                disk_path.display()
            );
        }
        disks.push(SourceDisk {
            name: Path::new(&file)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned()),
            path: disk_path,
        });
    }
    if disks.is_empty() {
        bail!("{}: the VM has no disks to import", vmx_path.display());
    }
    Ok(ImportPlan {
        name: vmx.get("displayName").map(str::to_string).or_else(|| {
            vmx_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        }),
        memory_mib: vmx.get("memSize").and_then(|m| m.parse().ok()),
        cpus: vmx.get("numvcpus").and_then(|c| c.parse().ok()),
        disks,
        _unpacked: None,
    })
}

/// `scsi0:1.fileName` → (`scsi0:1`, its place in boot order).
fn disk_slot(key: &str) -> Option<(String, (usize, u32, u32))> {
    let cut = key.len().checked_sub(".filename".len())?;
    if !key.is_char_boundary(cut) || !key[cut..].eq_ignore_ascii_case(".filename") {
        return None;
    }
    let slot = &key[..cut];
    let lower = slot.to_ascii_lowercase();
    let bus = BUSES.iter().position(|b| lower.starts_with(b))?;
    let (controller, unit) = lower[BUSES[bus].len()..].split_once(':')?;
    Some((
        slot.to_string(),
        (bus, controller.parse().ok()?, unit.parse().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_keys_give_their_slot_in_boot_order() {
        assert_eq!(
            disk_slot("scsi0:1.fileName"),
            Some(("scsi0:1".into(), (0, 0, 1)))
        );
        assert_eq!(
            disk_slot("SATA1:0.FILENAME"),
            Some(("SATA1:0".into(), (1, 1, 0)))
        );
        assert_eq!(disk_slot("ide0:0.fileName").unwrap().1, (3, 0, 0));
        assert_eq!(disk_slot("ethernet0.fileName"), None);
        assert_eq!(disk_slot("scsi0.present"), None);
        assert_eq!(disk_slot("scsi0:x.fileName"), None);
    }
}
