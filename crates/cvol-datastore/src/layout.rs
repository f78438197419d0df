//! Where things are on the share (DESIGN.md, "On the share").

use cvol_format::{DiskName, SnapshotName, VmName};
use cvol_share::SharePath;

/// `.cvol/`: cvol's own directory, hidden from the container.
pub const CVOL_DIR: &str = ".cvol";

fn path(p: &str) -> SharePath {
    SharePath::new(p).expect("layout paths are valid")
}

/// `.cvol/`
pub fn cvol_dir() -> SharePath {
    path(CVOL_DIR)
}

/// `.cvol/datastore.toml`
pub fn config_file() -> SharePath {
    path(".cvol/datastore.toml")
}

/// `.cvol/intents/`: one record per multi-step operation under way.
pub fn intents_dir() -> SharePath {
    path(".cvol/intents")
}

/// `.cvol/removed-open/`: files removed while a host's container held them open, kept
/// aside (in a directory per host) until closed.
pub fn removed_open_dir() -> SharePath {
    path(".cvol/removed-open")
}

/// `.cvol/hosts/`: host records.
pub fn hosts_dir() -> SharePath {
    path(".cvol/hosts")
}

/// `<vm>/`
pub fn vm_dir(vm: &VmName) -> SharePath {
    path(vm.as_str())
}

/// `<vm>/<vm>.vmx`
pub fn vmx_file(vm: &VmName) -> SharePath {
    path(&format!("{vm}/{vm}.vmx"))
}

/// `<vm>/<disk>.vmdk`
pub fn descriptor_file(vm: &VmName, disk: &DiskName) -> SharePath {
    path(&format!("{vm}/{}", disk.descriptor_file()))
}

/// `<vm>/.snapshots/`: the VM's snapshot records.
pub fn vm_snapshots_dir(vm: &VmName) -> SharePath {
    path(&format!("{vm}/.snapshots"))
}

/// `<vm>/.snapshots/<name>`: one VM snapshot's record (TOML).
pub fn vm_snapshot_file(vm: &VmName, name: &SnapshotName) -> SharePath {
    path(&format!("{vm}/.snapshots/{name}"))
}
