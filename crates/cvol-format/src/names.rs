//! Names that become path components on the share or keys in a pool.

use std::fmt;

/// Longest name a file system takes for one path component.
const NAME_MAX: usize = 255;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} name {name:?}: {reason}")]
pub struct NameError {
    /// What was being named: "VM", "disk", "snapshot".
    pub what: &'static str,
    /// The refused name, as given.
    pub name: String,
    /// Why it was refused.
    pub reason: String,
}

/// Checks what every name must satisfy to be one safe path component of at most
/// `max_len` bytes: no `/`, no NUL, not `.` or `..`, and no leading dot (dot names on the
/// share are cvol's own, like `.cvol/`, or lock files).
fn check_component(what: &'static str, name: &str, max_len: usize) -> Result<(), NameError> {
    let refuse = |reason: String| NameError {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("it is empty".into()));
    }
    if name.len() > max_len {
        return Err(refuse(format!(
            "it is {} bytes long, at most {max_len} are allowed",
            name.len()
        )));
    }
    if name.contains('/') {
        return Err(refuse("it contains '/'".into()));
    }
    if name.contains('\0') {
        return Err(refuse("it contains a NUL byte".into()));
    }
    if name.starts_with('.') {
        return Err(refuse("it starts with '.'".into()));
    }
    if name.chars().any(char::is_control) {
        return Err(refuse("it contains a control character".into()));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $what:literal, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(&name)
            }
        }

        impl From<$ty> for String {
            fn from(name: $ty) -> String {
                name.0
            }
        }

        impl $ty {
            /// Validates `name` and wraps it.
            pub fn new(name: &str) -> Result<Self, NameError> {
                let check: fn(&str) -> Result<(), NameError> = $check;
                check(name)?;
                Ok(Self(name.to_string()))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

/// Suffix of the extent (flat) file that VMware names after its descriptor.
const FLAT_SUFFIX: &str = "-flat";

name_type!(
    /// The name of a VM: its namespace directory on the share.
    VmName,
    "VM",
    |name| check_component("VM", name, NAME_MAX)
);

name_type!(
    /// The name of a disk: the stem of its descriptor `<disk>.vmdk`, whose extent is
    /// `<disk>-flat.vmdk`. VMware's convention is `<vm>`, `<vm>_1`, `<vm>_2`, ….
    DiskName,
    "disk",
    |name| {
        // Room for the longer of the two file names it gives: "<disk>-flat.vmdk".
        check_component("disk", name, NAME_MAX - FLAT_SUFFIX.len() - ".vmdk".len())?;
        if name.ends_with(FLAT_SUFFIX) {
            return Err(NameError {
                what: "disk",
                name: name.to_string(),
                reason: format!("it ends with '{FLAT_SUFFIX}', which names extent files"),
            });
        }
        Ok(())
    }
);

name_type!(
    /// The name of a snapshot of one volume.
    SnapshotName,
    "snapshot",
    |name| check_component("snapshot", name, NAME_MAX)
);

impl DiskName {
    /// The `n`-th disk of `vm` by VMware's convention: `vm` for 0, `vm_n` after.
    pub fn nth(vm: &VmName, n: usize) -> Result<Self, NameError> {
        if n == 0 {
            Self::new(vm.as_str())
        } else {
            Self::new(&format!("{vm}_{n}"))
        }
    }

    /// The descriptor's file name, `<disk>.vmdk`.
    pub fn descriptor_file(&self) -> String {
        format!("{}.vmdk", self.0)
    }

    /// The extent's file name, `<disk>-flat.vmdk`.
    pub fn extent_file(&self) -> String {
        format!("{}{FLAT_SUFFIX}.vmdk", self.0)
    }

    /// The disk whose descriptor file is `file_name`, if it names one.
    pub fn from_descriptor_file(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".vmdk")?;
        Self::new(stem).ok()
    }

    /// The disk whose extent file is `file_name`, if it names one.
    pub fn from_extent_file(file_name: &str) -> Option<Self> {
        let stem = file_name.strip_suffix(".vmdk")?.strip_suffix(FLAT_SUFFIX)?;
        Self::new(stem).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unsafe_names() {
        for bad in ["", ".", "..", "a/b", "/abs", "a\0b", ".hidden", "tab\there"] {
            assert!(VmName::new(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(VmName::new(&"x".repeat(255)).is_ok());
        let err = VmName::new(&"x".repeat(256)).unwrap_err();
        assert!(err.to_string().contains("256 bytes"), "{err}");
    }

    #[test]
    fn disk_names_leave_room_for_the_extent_file() {
        let longest = "d".repeat(245);
        let disk = DiskName::new(&longest).unwrap();
        assert_eq!(disk.extent_file().len(), 255);
        assert!(DiskName::new(&"d".repeat(246)).is_err());
        assert!(DiskName::new("web-flat").is_err());
    }

    #[test]
    fn vmware_disk_numbering() {
        let vm = VmName::new("demo").unwrap();
        assert_eq!(DiskName::nth(&vm, 0).unwrap().as_str(), "demo");
        assert_eq!(
            DiskName::nth(&vm, 2).unwrap().descriptor_file(),
            "demo_2.vmdk"
        );
        assert_eq!(
            DiskName::nth(&vm, 1).unwrap().extent_file(),
            "demo_1-flat.vmdk"
        );
        assert_eq!(
            DiskName::from_extent_file("demo_1-flat.vmdk")
                .unwrap()
                .as_str(),
            "demo_1"
        );
        assert_eq!(DiskName::from_descriptor_file("demo.vmx"), None);
    }
}
