//! Which disks a `.vmx` attaches, in VMware's `scsi0:N.*` keys.

use cvol_format::Vmx;

/// Slots on the first SCSI controller; 7 is the controller's own id.
const SLOTS: std::ops::RangeInclusive<u32> = 0..=15;
const CONTROLLER_SLOT: u32 = 7;

fn slot_prefix(slot: u32) -> String {
    format!("scsi0:{slot}.")
}

/// The keys of `slot` present in `vmx`.
fn slot_keys(vmx: &Vmx, slot: u32) -> Vec<String> {
    let prefix = slot_prefix(slot);
    vmx.entries()
        .filter(|(k, _)| k.len() >= prefix.len() && k[..prefix.len()].eq_ignore_ascii_case(&prefix))
        .map(|(k, _)| k.to_string())
        .collect()
}

/// Adds disk file `descriptor_file` in the first free slot (and the controller, if the
/// VM has none yet); returns every key it added, or `None` when every slot is taken.
pub fn attach_disk(vmx: &mut Vmx, descriptor_file: &str) -> Option<Vec<String>> {
    let slot = SLOTS
        .filter(|&s| s != CONTROLLER_SLOT)
        .find(|&s| slot_keys(vmx, s).is_empty())?;
    let mut entries = Vec::new();
    if vmx.get("scsi0.present").is_none() {
        entries.push(("scsi0.present".to_string(), "TRUE"));
        entries.push(("scsi0.virtualDev".to_string(), "lsilogic"));
    }
    let p = slot_prefix(slot);
    entries.push((format!("{p}present"), "TRUE"));
    entries.push((format!("{p}fileName"), descriptor_file));
    entries.push((format!("{p}deviceType"), "scsi-hardDisk"));
    for (key, value) in &entries {
        vmx.set(key, value);
    }
    Some(entries.into_iter().map(|(k, _)| k).collect())
}

/// The disk files the VM attaches, in slot order (the boot disk first).
pub fn attached_disks(vmx: &Vmx) -> Vec<String> {
    SLOTS
        .filter(|&s| {
            let present = vmx.get(&format!("{}present", slot_prefix(s)));
            present.is_some_and(|p| p.eq_ignore_ascii_case("true"))
        })
        .filter_map(|s| {
            vmx.get(&format!("{}fileName", slot_prefix(s)))
                .map(str::to_string)
        })
        .collect()
}

/// The keys of every slot that holds disk file `descriptor_file`.
pub fn keys_of_disk(vmx: &Vmx, descriptor_file: &str) -> Vec<String> {
    SLOTS
        .filter(|&s| vmx.get(&format!("{}fileName", slot_prefix(s))) == Some(descriptor_file))
        .flat_map(|s| slot_keys(vmx, s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_fill_in_order_and_skip_the_controller() {
        let mut vmx = Vmx::new();
        let mut names = Vec::new();
        for i in 0..15 {
            let file = format!("d{i}.vmdk");
            assert!(attach_disk(&mut vmx, &file).is_some(), "slot for disk {i}");
            names.push(file);
        }
        assert_eq!(vmx.get("scsi0:6.fileName"), Some("d6.vmdk"));
        assert_eq!(vmx.get("scsi0:7.fileName"), None);
        assert_eq!(vmx.get("scsi0:8.fileName"), Some("d7.vmdk"));
        assert!(
            attach_disk(&mut vmx, "more.vmdk").is_none(),
            "15 disks fill the controller"
        );
        assert_eq!(attached_disks(&vmx)[7], "d7.vmdk");
        let keys = keys_of_disk(&vmx, "d3.vmdk");
        assert_eq!(
            keys,
            ["scsi0:3.present", "scsi0:3.fileName", "scsi0:3.deviceType"]
        );
        keys.iter().for_each(|k| vmx.remove(k));
        assert_eq!(
            attach_disk(&mut vmx, "again.vmdk").unwrap()[1],
            "scsi0:3.fileName"
        );
        let mut fresh = Vmx::new();
        let keys = attach_disk(&mut fresh, "a.vmdk").unwrap();
        keys.iter().for_each(|k| fresh.remove(k));
        assert_eq!(
            fresh.to_string(),
            "",
            "the keys returned undo the attach entirely"
        );
    }
}
