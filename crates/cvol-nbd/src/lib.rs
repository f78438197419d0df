//! The NBD data plane (DESIGN.md): every disk of a datastore exported over NBD, on a
//! unix socket and/or TCP, through the same attachments as the file system container.
//!
//! `proto` is the wire format, `handshake` the option haggling, `transmission` the
//! request loop (requests run concurrently and are answered out of order), `server`
//! the listeners. Everything calls [`cvol_provider::BlockDevice`] and nothing else.

mod exports;
mod handshake;
pub mod memory;
pub mod proto;
#[cfg(feature = "tls-psk")]
pub mod psk;
mod server;
mod transmission;

pub use exports::{DatastoreExports, DeviceExport, ExportError, Exports, OpenExport};
pub use server::{Listen, NbdServer, Settings, TlsCredentials, TlsPolicy};
