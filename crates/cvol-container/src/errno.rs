//! Errors of the container, as the errno a file system call returns.

use cvol_datastore::DatastoreError;
use cvol_provider::{BlockError, ProviderError};
use cvol_share::ShareError;

/// An errno, with the log line already written where the cause needs explaining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// No such file or directory.
    pub const NOENT: Self = Self(libc::ENOENT);
    /// Operation not permitted.
    pub const PERM: Self = Self(libc::EPERM);
    /// I/O error.
    pub const IO: Self = Self(libc::EIO);
    /// Invalid argument.
    pub const INVAL: Self = Self(libc::EINVAL);
    /// File exists.
    pub const EXIST: Self = Self(libc::EEXIST);
    /// Device or resource busy.
    pub const BUSY: Self = Self(libc::EBUSY);
    /// No space left on device: what a write past the end of a disk gets.
    pub const NOSPC: Self = Self(libc::ENOSPC);
    /// Not supported.
    pub const NOTSUP: Self = Self(libc::EOPNOTSUPP);
    /// Bad file handle.
    pub const BADF: Self = Self(libc::EBADF);
    /// File name too long.
    pub const NAMETOOLONG: Self = Self(libc::ENAMETOOLONG);
    /// Is a directory.
    pub const ISDIR: Self = Self(libc::EISDIR);
}

fn from_io(e: &std::io::Error) -> Errno {
    Errno(e.raw_os_error().unwrap_or(libc::EIO))
}

impl From<ShareError> for Errno {
    fn from(e: ShareError) -> Self {
        match &e {
            ShareError::NotFound(_) => Self::NOENT,
            ShareError::AlreadyExists(_) => Self::EXIST,
            ShareError::InvalidPath { reason, .. } if reason.contains("255") => Self::NAMETOOLONG,
            ShareError::InvalidPath { .. } => Self::INVAL,
            ShareError::Escapes(_) => {
                tracing::warn!("{e}");
                Self::PERM
            }
            ShareError::Io { source, .. } => from_io(source),
        }
    }
}

impl From<BlockError> for Errno {
    fn from(e: BlockError) -> Self {
        match &e {
            BlockError::OutOfRange { .. } => Self::NOSPC,
            BlockError::Fenced { .. } | BlockError::Standby => {
                tracing::error!("disk write refused: {e}");
                Self::IO
            }
            BlockError::Io(io) => {
                tracing::error!("disk I/O failed: {e}");
                from_io(io)
            }
        }
    }
}

impl From<ProviderError> for Errno {
    fn from(e: ProviderError) -> Self {
        match &e {
            ProviderError::AttachedElsewhere { .. } => {
                tracing::warn!("{e}");
                Self::BUSY
            }
            ProviderError::InvalidSize { .. } => Self::INVAL,
            _ => {
                tracing::error!("{e}");
                Self::IO
            }
        }
    }
}

impl From<DatastoreError> for Errno {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::Share(e) => e.into(),
            DatastoreError::Provider(e) => e.into(),
            DatastoreError::Block(e) => e.into(),
            DatastoreError::VmNotFound(_) | DatastoreError::DiskNotFound(_) => Self::NOENT,
            DatastoreError::VmExists(_) | DatastoreError::DiskExists(_) => Self::EXIST,
            DatastoreError::Name(_) => Self::INVAL,
            other => {
                tracing::error!("{other}");
                Self::IO
            }
        }
    }
}
