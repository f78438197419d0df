use std::fmt;

use crate::ShareError;

/// Longest path component a file system takes.
const NAME_MAX: usize = 255;

/// A path relative to the share's root that cannot leave it: no leading `/`, no `.`,
/// `..` or empty components, no NUL, components of at most 255 bytes. The root itself is
/// the empty path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SharePath(String);

impl SharePath {
    /// The share's root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Validates `path`: `vm1/vm1.vmx`, or `""` for the root.
    pub fn new(path: &str) -> Result<Self, ShareError> {
        let invalid = |reason| ShareError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        if path.is_empty() {
            return Ok(Self::root());
        }
        if path.starts_with('/') {
            return Err(invalid("absolute paths are not allowed"));
        }
        for component in path.split('/') {
            check_component(component).map_err(invalid)?;
        }
        Ok(Self(path.to_string()))
    }

    /// This path with one more component, `name`, which must be a plain file name.
    pub fn join(&self, name: &str) -> Result<Self, ShareError> {
        check_component(name).map_err(|reason| ShareError::InvalidPath {
            path: format!("{}/{name}", self.0),
            reason,
        })?;
        Ok(if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}/{name}", self.0))
        })
    }

    /// The parent directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(SharePath, &str)> {
        match self.0.rsplit_once('/') {
            Some((parent, name)) => Some((Self(parent.to_string()), name)),
            None if self.0.is_empty() => None,
            None => Some((Self::root(), &self.0)),
        }
    }

    /// The last component; `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.split_last().map(|(_, name)| name)
    }

    /// The path as a relative string; empty for the root.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// True when this path is `dir` or below it (everything is within the root).
    pub fn is_within(&self, dir: &SharePath) -> bool {
        let (p, d) = (self.as_str(), dir.as_str());
        d.is_empty() || p == d || (p.starts_with(d) && p.as_bytes().get(d.len()) == Some(&b'/'))
    }
}

fn check_component(name: &str) -> Result<(), &'static str> {
    match name {
        "" => Err("empty path component"),
        "." | ".." => Err("'.' and '..' are not allowed"),
        _ if name.contains('\0') => Err("NUL byte in path"),
        _ if name.contains('/') => Err("'/' in a file name"),
        _ if name.len() > NAME_MAX => Err("a path component is longer than 255 bytes"),
        _ => Ok(()),
    }
}

impl fmt::Display for SharePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str(".")
        } else {
            f.write_str(&self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_goes_by_whole_components() {
        let p = |s| SharePath::new(s).unwrap();
        assert!(p("vm1/vm1.vmx").is_within(&p("vm1")));
        assert!(p("vm1").is_within(&p("vm1")));
        assert!(!p("vm10/vm10.vmx").is_within(&p("vm1")));
        assert!(!p("vm1").is_within(&p("vm1/vm1.vmx")));
        assert!(p("vm1").is_within(&SharePath::root()));
    }

    #[test]
    fn refuses_escapes() {
        for bad in [
            "/etc/passwd",
            "..",
            "vm1/../..",
            "vm1/./x",
            "vm1//x",
            "vm1/",
            "a\0b",
        ] {
            assert!(SharePath::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SharePath::new(&"n".repeat(256)).is_err());
        assert!(SharePath::root().join("..").is_err());
        assert!(SharePath::root().join("a/b").is_err());
    }

    #[test]
    fn splits_and_joins() {
        let p = SharePath::new("vm1/vm1.vmx").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!((parent.as_str(), name), ("vm1", "vm1.vmx"));
        assert_eq!(parent.join("x").unwrap(), SharePath::new("vm1/x").unwrap());
        assert_eq!(SharePath::root().join("vm1").unwrap().as_str(), "vm1");
        assert_eq!(
            SharePath::new("vm1").unwrap().split_last().unwrap().0,
            SharePath::root()
        );
        assert!(SharePath::root().split_last().is_none());
        assert_eq!(SharePath::root().to_string(), ".");
    }
}
