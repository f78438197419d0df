//! On-share formats of a cVol datastore (see DESIGN.md, "On the share").
//!
//! Every parser here keeps what it does not understand and writes it back byte for byte,
//! so that an edit changes only the lines it means to change. Every error names the file,
//! the line where there is one, and the field.

mod datastore_config;
mod descriptor;
mod error;
mod ids;
mod names;
mod size;
mod vmx;

pub use datastore_config::{DatastoreConfig, ProviderConfig, FORMAT_VERSION};
pub use descriptor::{
    Access, CvolDisk, Descriptor, Extent, DDB_DATASTORE, DDB_OBJECT, DDB_PROVIDER, DDB_UUID,
};
pub use error::FormatError;
pub use ids::{HostId, IdError, ProviderId, VolumeId};
pub use names::{DiskName, NameError, SnapshotName, VmName};
pub use size::{parse_size, SizeError, SECTOR_SIZE};
pub use vmx::Vmx;
