use std::io;

use crate::SharePath;

/// A share operation that failed; every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The path is not a valid share path (absolute, `..`, NUL, too long).
    #[error("{path:?}: not a valid path on the share: {reason}")]
    InvalidPath {
        /// The refused path, as given.
        path: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Nothing at that path.
    #[error("{0}: no such file or directory on the share")]
    NotFound(SharePath),
    /// Something is already at that path.
    #[error("{0}: already exists on the share")]
    AlreadyExists(SharePath),
    /// The path leads outside the share through a symlink.
    #[error("{0}: leads outside the share through a symlink; refused")]
    Escapes(SharePath),
    /// Any other I/O failure.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The path operated on.
        path: SharePath,
        /// The operation, e.g. "read".
        op: &'static str,
        /// The underlying error.
        source: io::Error,
    },
}

impl ShareError {
    /// Classifies an OS error from operation `op` on `path`.
    pub fn from_io(path: &SharePath, op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(e) if e == rustix::io::Errno::NOENT.raw_os_error() => Self::NotFound(path.clone()),
            Some(e) if e == rustix::io::Errno::EXIST.raw_os_error() => {
                Self::AlreadyExists(path.clone())
            }
            // openat2 with RESOLVE_BENEATH reports a walk that would leave the root as EXDEV.
            Some(e) if e == rustix::io::Errno::XDEV.raw_os_error() => Self::Escapes(path.clone()),
            _ => Self::Io {
                path: path.clone(),
                op,
                source,
            },
        }
    }

    /// True when nothing is at the path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}
