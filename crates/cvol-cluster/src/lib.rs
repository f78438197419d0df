//! Many hosts on one datastore (DESIGN.md, "Cluster"): the records on the share through
//! which host agents agree on who runs each VM, without talking to each other.
//!
//! - [`Leases`]: one lease per VM, a numbered file per owner change (the *epoch*), so
//!   that taking a VM is one exclusive create that exactly one host wins, and renewing it
//!   rewrites only the holder's own file.
//! - [`HostRecords`]: one record per host agent, with its boot id and address, renewed
//!   like a lease.
//! - [`Liveness`]: a record is live while its bytes keep changing, as seen on the
//!   observer's own monotonic clock; no two hosts' clocks are ever compared.
//! - [`LeaseTiming`]: how often holders renew, when they fence themselves and when
//!   others may take over, with the argument for why that order always holds.

mod error;
mod fsck;
mod hosts;
mod lease;
mod leases;
mod liveness;
mod timing;

pub use error::ClusterError;
pub use fsck::{check_leases, LeaseProblem};
pub use hosts::{HostEntry, HostRecord, HostRecords, HostState};
pub use lease::{Lease, LeaseContent, LeaseState, LeaseView};
pub use leases::{HeldLease, Leases};
pub use liveness::Liveness;
pub use timing::LeaseTiming;
