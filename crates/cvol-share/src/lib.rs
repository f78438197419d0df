//! The metadata share (DESIGN.md, "control plane"): the small files of every VM.
//!
//! [`Share`] is the one boundary every share implementation sits behind: a local
//! directory ([`LocalShare`]; the embedded default or a share the OS mounted), or NFS.
//! Paths are [`SharePath`]s, validated when they are made, so no caller can name
//! anything outside the share; implementations also refuse symlinks that lead out.

mod error;
mod local;
mod path;

use std::time::SystemTime;

pub use error::ShareError;
pub use local::LocalShare;
pub use path::SharePath;

/// What a share entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by `metadata`).
    Symlink,
    /// A device, socket or FIFO: not something the share is meant to hold.
    Other,
}

/// Attributes of one entry, as `lstat` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The entry's kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Last modification.
    pub modified: SystemTime,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name within its directory.
    pub name: String,
    /// The entry's kind.
    pub kind: FileKind,
}

/// A metadata share. Every method is one file operation with the semantics of its POSIX
/// namesake; writes that must not be seen half-done use [`Share::write_atomic`].
pub trait Share: Send + Sync {
    /// Where the share is (a directory or a URL), for messages.
    fn location(&self) -> String;

    /// Attributes of `path`, not following a final symlink.
    fn metadata(&self, path: &SharePath) -> Result<Metadata, ShareError>;

    /// The entries of directory `path`, without `.` and `..`, in no particular order.
    fn read_dir(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError>;

    /// The whole content of file `path`.
    fn read(&self, path: &SharePath) -> Result<Vec<u8>, ShareError>;

    /// Replaces (or creates) file `path` with `data` so that a reader or a crash sees the
    /// old content or the new one, never a mix: write aside, sync, rename over.
    fn write_atomic(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError>;

    /// Creates file `path` with `data`, durably; fails with `AlreadyExists` if it exists.
    fn create_new(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError>;

    /// Creates directory `path`; fails with `AlreadyExists` if it exists.
    fn create_dir(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Removes file (or symlink) `path`.
    fn remove_file(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Removes empty directory `path`.
    fn remove_dir(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Renames `from` to `to`, replacing a file at `to`.
    fn rename(&self, from: &SharePath, to: &SharePath) -> Result<(), ShareError>;
}
