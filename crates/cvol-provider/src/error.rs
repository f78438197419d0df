use std::io;
use std::path::PathBuf;

/// A provider operation that failed. Every variant names the provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No volume with that id.
    #[error("provider {provider}: volume {volume} not found")]
    VolumeNotFound {
        /// The provider.
        provider: String,
        /// The volume looked for.
        volume: String,
    },
    /// A volume with that id exists already.
    #[error("provider {provider}: volume {volume} already exists")]
    VolumeExists {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
    },
    /// No snapshot with that name.
    #[error("provider {provider}: volume {volume} has no snapshot {snapshot:?}")]
    SnapshotNotFound {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// The snapshot looked for.
        snapshot: String,
    },
    /// A snapshot with that name exists already.
    #[error("provider {provider}: volume {volume} already has a snapshot {snapshot:?}")]
    SnapshotExists {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// The volume is attached to another host.
    #[error("provider {provider}: volume {volume} is attached to host {holder:?}")]
    AttachedElsewhere {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// The host holding it.
        holder: String,
    },
    /// A shrink that was not asked for explicitly.
    #[error("provider {provider}: shrinking volume {volume} from {from} to {to} bytes would lose data; force it to shrink")]
    ShrinkRefused {
        /// The provider.
        provider: String,
        /// The volume.
        volume: String,
        /// Current size.
        from: u64,
        /// Requested size.
        to: u64,
    },
    /// A size that is zero, not a multiple of 512, or more than the pool can hold.
    #[error("provider {provider}: invalid size {size}: {reason}")]
    InvalidSize {
        /// The provider.
        provider: String,
        /// The size given.
        size: u64,
        /// Why it is refused.
        reason: String,
    },
    /// The pool itself is unusable (missing, not a directory, read-only).
    #[error("provider {provider}: pool {}: {reason}", path.display())]
    Pool {
        /// The provider.
        provider: String,
        /// The pool's location.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A provider's configuration is wrong.
    #[error("provider {provider}: {message}")]
    Setting {
        /// The provider.
        provider: String,
        /// What is wrong.
        message: String,
    },
    /// A pool file or record that cannot be read.
    #[error("provider {provider}: {}: {message}", path.display())]
    Corrupt {
        /// The provider.
        provider: String,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A request the provider service refused as malformed, or an answer it should not
    /// have given.
    #[error("provider {provider}: service {url}: {message}")]
    Service {
        /// The provider.
        provider: String,
        /// The service.
        url: String,
        /// What it said, or what was wrong with what it said.
        message: String,
    },
    /// The provider service did not answer, through every retry.
    #[error("provider {provider}: service {url} not reachable: {message}")]
    Unreachable {
        /// The provider.
        provider: String,
        /// The service.
        url: String,
        /// The last failure.
        message: String,
    },
    /// The object store of an object pool failed or refused a call.
    #[error("provider {provider}: {location}: {message}")]
    Store {
        /// The provider.
        provider: String,
        /// The pool, e.g. `object:s3://bucket/prefix`.
        location: String,
        /// The call and what went wrong.
        message: String,
    },
    /// Any other I/O failure.
    #[error("provider {provider}: {op} {}: {source}", path.display())]
    Io {
        /// The provider.
        provider: String,
        /// The operation.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl ProviderError {
    /// True when the volume (or snapshot) asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::VolumeNotFound { .. } | Self::SnapshotNotFound { .. }
        )
    }
}
