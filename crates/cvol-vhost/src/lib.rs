//! The vhost-user-blk data plane (DESIGN.md): every disk of a datastore served to QEMU
//! (or any vhost-user driver) from shared memory, on a unix socket per disk, through the
//! same attachments as the file system container and NBD.
//!
//! `request` parses virtio-blk requests, `config` is what the device offers, `backend`
//! runs one connected disk's queues, `server` keeps a socket per disk and a backend per
//! connection.

mod backend;
#[cfg(feature = "client")]
pub mod client;
pub mod config;
pub mod request;
mod server;

pub use backend::{BlkBackend, Settings, DEFAULT_IO_THREADS, DEFAULT_QUEUES};
pub use server::{socket_path, VhostUserServer, DEFAULT_RESCAN_MS};
