//! The metadata share (DESIGN.md, "control plane"): the small files of every VM.
//!
//! [`Share`] is the one boundary every share implementation sits behind: a local
//! directory ([`LocalShare`]; the embedded default or a share the OS mounted), or NFS.
//! Paths are [`SharePath`]s, validated when they are made, so no caller can name
//! anything outside the share; implementations also refuse symlinks that lead out.

pub mod concurrent;
mod error;
mod local;
mod nfs;
mod nfs_url;
mod open_file;
mod path;

use std::time::{Duration, SystemTime};

pub use error::ShareError;
pub use local::{LocalDir, LocalShare};
#[cfg(feature = "fuzzing")]
pub use nfs::fuzzing;
pub use nfs::{NfsOptions, NfsShare};
pub use nfs_url::{NfsUrl, NfsUrlError};
pub use open_file::OpenFile;
pub use path::SharePath;

/// Permission bits of files cvol writes itself.
pub const FILE_MODE: u32 = 0o644;

/// What a share entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed by `metadata`).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket's name.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// Attributes of one entry, as `lstat` reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The entry's kind.
    pub kind: FileKind,
    /// Inode number: which file this is, on the share's file system.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Bytes allocated.
    pub allocated: u64,
    /// Permission bits.
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// The device a device node stands for (Linux `dev_t`); 0 for other kinds.
    pub rdev: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub accessed: SystemTime,
    /// Last modification of the content.
    pub modified: SystemTime,
    /// Last change of the attributes.
    pub changed: SystemTime,
}

/// A time to set: a given one, or the server's "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    /// This time.
    At(SystemTime),
    /// The current time, as the share's clock says.
    Now,
}

/// Attribute changes; `None` leaves an attribute as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttributes {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend).
    pub size: Option<u64>,
    /// New access time.
    pub accessed: Option<SetTime>,
    /// New modification time.
    pub modified: Option<SetTime>,
}

/// Space on the share, as `statvfs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareStats {
    /// Block size of the counts below.
    pub block_size: u32,
    /// Blocks in all.
    pub blocks: u64,
    /// Free blocks.
    pub blocks_free: u64,
    /// Blocks free to unprivileged users.
    pub blocks_available: u64,
    /// Inodes in all.
    pub files: u64,
    /// Free inodes.
    pub files_free: u64,
    /// Longest file name.
    pub name_max: u32,
    /// The file system holding the share (`statvfs`'s `f_fsid`), where it is known.
    pub fs_id: Option<u64>,
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

    /// The entries of directory `path`, without `.` and `..`, in no particular order, as
    /// they are now.
    fn read_dir(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError>;

    /// The entries of directory `path` as [`Share::read_dir`] gives them, where another
    /// host's change may be seen as late as a change of attributes is (the share's
    /// attribute-cache lifetime): for walks and listings. Changes made through this share
    /// are seen at once.
    fn read_dir_recent(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
        self.read_dir(path)
    }

    /// How late another host's change may be seen through this share: how long it
    /// trusts the attributes and listings it read (zero: it asks the server every time).
    fn attribute_cache(&self) -> Duration {
        Duration::ZERO
    }

    /// Reads ahead the listings of `dirs`, which a walk is about to read one by one with
    /// [`Share::read_dir_recent`], where reading them together costs less (over NFS: many
    /// READDIRPLUS in flight at once). A hint only: what fails here is met again, and
    /// reported, by the walk's own calls.
    fn prefetch_listings(&self, _dirs: &[SharePath]) {}

    /// Reads the listings of `dirs` from the server now, many at once (but for those
    /// read from it within `listed_within`), so that [`Share::read_dir_recent`] of them,
    /// [`Share::metadata`] of their entries and [`Share::read_recent`] of the files they
    /// list give what the server holds now, as [`Share::read_dir`] and [`Share::read`]
    /// would (a file is read only if the listing shows it changed since this host last
    /// read it), for as long as the share's attribute cache lasts. For a host's scan of
    /// every lease of the datastore, and the container's watch of what the kernel keeps.
    /// Says, for each directory, whether it was read: one that was not must be read with
    /// [`Share::read_dir`] and [`Share::read`].
    fn refresh_listings(&self, dirs: &[SharePath], _listed_within: Duration) -> Vec<bool> {
        // A share that keeps nothing: its recent reads are reads of what it holds now.
        vec![true; dirs.len()]
    }

    /// The whole content of file `path`, as it is now: another host's change is seen
    /// at once (as on open with close-to-open consistency).
    fn read(&self, path: &SharePath) -> Result<Vec<u8>, ShareError>;

    /// The whole content of file `path`, where another host's change may be seen as late
    /// as a change of attributes or a directory entry is (the share's attribute-cache
    /// lifetime): for walks and listings, which read many files that rarely change.
    fn read_recent(&self, path: &SharePath) -> Result<Vec<u8>, ShareError> {
        self.read(path)
    }

    /// Replaces (or creates) file `path` with `data` so that a reader or a crash sees the
    /// old content or the new one, never a mix: write aside, sync, rename over.
    fn write_atomic(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError>;

    /// Creates file `path` with `data`, durably; fails with `AlreadyExists` if it exists.
    fn create_new(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError>;

    /// Creates file `path` with `data` as [`Share::create_new`] does, for callers that use
    /// the creation as a lock: it succeeds only for the call that made the file. Where a
    /// repeated create cannot tell whether its first attempt made the file (an NFS reply
    /// lost), it fails with `AlreadyExists`, so a caller may wrongly believe it lost a
    /// race, never that it won one. A reader may see the file empty until `data` lands.
    fn create_exclusive(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        self.create_new(path, data)
    }

    /// Creates directory `path`; fails with `AlreadyExists` if it exists.
    fn create_dir(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Removes file (or symlink) `path`.
    fn remove_file(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Removes empty directory `path`.
    fn remove_dir(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Renames `from` to `to`, replacing a file at `to`.
    fn rename(&self, from: &SharePath, to: &SharePath) -> Result<(), ShareError>;

    /// Up to `len` bytes of file `path` from `offset`; fewer at the end of the file.
    fn read_at(&self, path: &SharePath, offset: u64, len: usize) -> Result<Vec<u8>, ShareError>;

    /// Writes `data` into file `path` at `offset`.
    fn write_at(&self, path: &SharePath, offset: u64, data: &[u8]) -> Result<(), ShareError>;

    /// Creates an empty file `path` with exactly permission bits `mode` (no umask of
    /// this process applies); fails with `AlreadyExists` if it exists.
    fn create_file(&self, path: &SharePath, mode: u32) -> Result<(), ShareError>;

    /// Creates a FIFO, socket or device node `path` of `kind` with exactly permission
    /// bits `mode`; `rdev` is the device of a device node.
    fn make_node(
        &self,
        path: &SharePath,
        kind: FileKind,
        mode: u32,
        rdev: u64,
    ) -> Result<(), ShareError>;

    /// Makes `new` another name of the file at `existing` (a hard link).
    fn hard_link(&self, existing: &SharePath, new: &SharePath) -> Result<(), ShareError>;

    /// Opens file `path` for I/O that follows the file, not its name: through renames
    /// and, where [`Share::keeps_removed_open_files`] says so, after its removal.
    fn open_file(&self, path: &SharePath) -> Result<OpenFile, ShareError>;

    /// True when an [`OpenFile`] keeps working after its last name is removed (a local
    /// directory). An NFS server forgets such a file, so a caller that removes an open
    /// file renames it aside instead, as NFS clients do ("silly rename").
    fn keeps_removed_open_files(&self) -> bool;

    /// Up to `len` bytes of `file` from `offset`; fewer at its end.
    fn file_read(&self, file: &OpenFile, offset: u64, len: usize) -> Result<Vec<u8>, ShareError>;

    /// Writes `data` into `file` at `offset`.
    fn file_write(&self, file: &OpenFile, offset: u64, data: &[u8]) -> Result<(), ShareError>;

    /// The attributes of `file`.
    fn file_metadata(&self, file: &OpenFile) -> Result<Metadata, ShareError>;

    /// Changes attributes of `file`.
    fn file_set_attributes(
        &self,
        file: &OpenFile,
        changes: &SetAttributes,
    ) -> Result<(), ShareError>;

    /// Makes what was written to `file` durable.
    fn file_sync(&self, file: &OpenFile) -> Result<(), ShareError>;

    /// Changes attributes of `path` (never through a final symlink).
    fn set_attributes(&self, path: &SharePath, changes: &SetAttributes) -> Result<(), ShareError>;

    /// Creates symlink `path` pointing to `target`. Callers check where it points.
    fn symlink(&self, path: &SharePath, target: &str) -> Result<(), ShareError>;

    /// The target of symlink `path`.
    fn read_link(&self, path: &SharePath) -> Result<String, ShareError>;

    /// Makes the content of file `path` durable.
    fn sync(&self, path: &SharePath) -> Result<(), ShareError>;

    /// Space on the share.
    fn stats(&self) -> Result<ShareStats, ShareError>;

    /// Requests sent to the share's server so far (NFS RPCs), for measuring what a
    /// client costs the server; `None` for a local directory.
    fn requests_sent(&self) -> Option<u64> {
        None
    }
}
