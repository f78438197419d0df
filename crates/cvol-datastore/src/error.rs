use cvol_format::{FormatError, IdError, NameError, SizeError};
use cvol_provider::{BlockError, ProviderError};
use cvol_share::ShareError;

/// A datastore operation that failed. Each message says what and where, in one line.
#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// The share has no `.cvol/datastore.toml`.
    #[error("{0} is not a cVol datastore (no .cvol/datastore.toml); create one with 'cvol datastore create'")]
    NotADatastore(String),
    /// The share is a datastore already.
    #[error("{0} is already a cVol datastore")]
    AlreadyADatastore(String),
    /// No VM of that name.
    #[error("VM {0:?} does not exist")]
    VmNotFound(String),
    /// A VM of that name exists.
    #[error("VM {0:?} already exists")]
    VmExists(String),
    /// No disk of that name.
    #[error("disk {0:?} does not exist")]
    DiskNotFound(String),
    /// A disk of that name exists.
    #[error("disk {0:?} already exists")]
    DiskExists(String),
    /// A provider id the datastore does not have.
    #[error("unknown provider {id:?}; this datastore has: {known}")]
    UnknownProvider {
        /// The id asked for.
        id: String,
        /// The ids it has.
        known: String,
    },
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// A file on the share is malformed or does not belong to this datastore.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A bad name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A bad id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// A bad size.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// The share failed.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// An attached volume failed.
    #[error(transparent)]
    Block(#[from] BlockError),
}
