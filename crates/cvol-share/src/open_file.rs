//! A file opened on a share: what I/O on it goes through, instead of its name.

use std::os::fd::OwnedFd;

use nfs3_client::nfs3_types::nfs3::nfs_fh3;

use crate::SharePath;

/// An open file of a share, from [`crate::Share::open_file`]; only the share that
/// opened it can use it.
#[derive(Debug)]
pub struct OpenFile {
    /// The name it was opened by, for messages.
    pub(crate) path: SharePath,
    pub(crate) by: OpenedBy,
}

#[derive(Debug)]
pub(crate) enum OpenedBy {
    /// A descriptor of a local file.
    Fd(OwnedFd),
    /// An NFS file handle, and the file's id: a server that restarted may have
    /// forgotten the handle, and the file found again by name must be the same one.
    Nfs {
        handle: std::sync::Mutex<nfs_fh3>,
        fileid: u64,
    },
}

impl OpenFile {
    /// The name the file was opened by.
    pub fn path(&self) -> &SharePath {
        &self.path
    }
}
