//! What can go wrong with cluster records.

use cvol_share::ShareError;

/// A failed lease or host record operation.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The share could not be read or written.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// Another host created the same epoch first: it, not this host, owns the VM now.
    #[error("another host took the lease of VM {vm} first (epoch {epoch})")]
    LostRace {
        /// The VM.
        vm: String,
        /// The epoch both tried to create.
        epoch: u64,
    },
    /// A newer epoch than the one held exists: the lease was taken over.
    #[error(
        "the lease of VM {vm} was taken over: epoch {newest} is newer than this host's {held}"
    )]
    Superseded {
        /// The VM.
        vm: String,
        /// The epoch this host holds.
        held: u64,
        /// The newest epoch on the share.
        newest: u64,
    },
    /// A record that cannot be parsed. It is never guessed free.
    #[error("{file}: corrupt record: {reason}")]
    Corrupt {
        /// The file on the share.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name that cannot be a VM or host id.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// Timing settings that would let another host take over before the holder fenced.
    #[error("unsafe lease timing: {0}")]
    Timing(String),
}
