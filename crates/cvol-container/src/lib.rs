//! The file system container (DESIGN.md, "Host side"): one directory tree whose
//! top-level directories are the share's VM namespaces, where metadata operations go to
//! the share and disk I/O goes to attached volumes.
//!
//! [`Container`] holds the semantics and knows nothing of FUSE; [`mount`] adapts it to
//! the kernel with `fuser`.

mod errno;
mod fs;
mod fuse;
mod inodes;
mod listings;
mod watch;

pub use errno::Errno;
pub use fs::{Attr, Caller, Changes, Container, Entry, NodeKind, Opened};
pub use fuse::{mount, unmount, MountSettings, MountedContainer, DEFAULT_KERNEL_CACHE};
