//! What the agent answers about VMs and hosts.

use serde::{Deserialize, Serialize};

use super::MigrationReport;

/// A VM as this agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmStatus {
    /// The VM.
    pub vm: String,
    /// `running`, `stopped`, `migrating`, `claiming` (a host is taking it), `corrupt`
    /// (its lease file cannot be read) or `never started`.
    pub state: String,
    /// The host that holds (or last held) it.
    pub owner: Option<String>,
    /// The lease's epoch.
    pub epoch: Option<u64>,
    /// How long this host has seen the lease unchanged.
    pub heartbeat_age_ms: Option<u64>,
    /// Whether the lease is live (changed within the expiry time).
    pub live: Option<bool>,
    /// Whether another host restarts it when its host dies.
    pub ha: bool,
    /// Its QEMU, if it runs on this host.
    pub here: Option<LocalStatus>,
    /// What is wrong with its lease, if anything.
    pub problem: Option<String>,
    /// The last live migration of it that this host started, and how it went.
    #[serde(default)]
    pub migration: Option<MigrationReport>,
}

/// A VM running on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalStatus {
    /// QEMU's process id.
    pub pid: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// The guest's serial console.
    pub console: String,
    /// Whether it is a migration's destination, not running yet.
    #[serde(default)]
    pub incoming: bool,
}

/// A host as this agent sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostStatus {
    /// The host.
    pub host: String,
    /// `up`, `down` (stopped cleanly) or `corrupt`.
    pub state: String,
    /// Whether its agent is alive: up, and its record changed within the expiry time.
    pub alive: bool,
    /// How long this host has seen its record unchanged.
    pub heartbeat_age_ms: Option<u64>,
    /// Its agent's run.
    pub boot_id: Option<String>,
    /// Its peer API.
    pub address: Option<String>,
    /// The VMs whose lease it holds (running or migrating).
    pub vms: Vec<String>,
    /// Whether this is the host answering.
    pub this_host: bool,
    /// What is wrong with its record, if anything.
    pub problem: Option<String>,
}

/// This agent itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host.
    pub host: String,
    /// This run of the agent.
    pub boot_id: String,
    /// Its peer API.
    pub address: Option<String>,
    /// The cvol version.
    pub version: String,
    /// The VMs running here.
    pub vms: usize,
    /// Requests this host sent to the share's server so far (NFS RPCs), if it is on NFS.
    pub share_requests: Option<u64>,
    /// The agent's resident memory, in KiB.
    pub rss_kib: Option<u64>,
}
