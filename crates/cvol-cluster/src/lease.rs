//! One VM's lease, as one epoch file on the share holds it.

use cvol_format::{HostId, VmName};
use cvol_share::SharePath;
use serde::{Deserialize, Serialize};

/// A VM lease record: who runs the VM, since which owner change, and a heartbeat that
/// moves while the owner is alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// The VM.
    pub vm: String,
    /// Raised on every change of owner; also the number of the file holding the lease.
    pub epoch: u64,
    /// The host that holds (or last held) the VM.
    pub owner: HostId,
    /// The owner's agent run (random per start), so a restarted agent is told apart from
    /// the one that took the lease.
    pub boot_id: String,
    /// Raised by every renewal.
    pub heartbeat: u64,
    /// What the owner does with the VM.
    pub state: LeaseState,
}

/// What the owner of a lease does with its VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LeaseState {
    /// The VM runs on the owner; nobody else may start it while the lease is live.
    Running,
    /// The VM is stopped; any host may start it (taking a new epoch).
    Stopped,
    /// The VM is moving from `source` (which still runs it) to `destination`.
    Migrating {
        /// The host running the VM now.
        source: HostId,
        /// The host it is moving to.
        destination: HostId,
    },
}

impl LeaseState {
    /// The word `cvol vm status` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Migrating { .. } => "migrating",
        }
    }
}

impl Lease {
    /// The record's bytes on the share.
    pub fn to_bytes(&self) -> Vec<u8> {
        toml::to_string(self)
            .expect("a lease serializes")
            .into_bytes()
    }
}

/// What the newest epoch file of a VM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseContent {
    /// Empty: a host has just created this epoch and is writing it. Held, by someone.
    Claiming,
    /// A lease record.
    Valid(Lease),
    /// Not a lease record (why): held, never guessed free, until it has not changed for
    /// the expiry time and an operator clears it (`cvol datastore fsck --repair`).
    Corrupt(String),
}

/// A VM's current lease: its newest epoch file, as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The VM.
    pub vm: VmName,
    /// The newest epoch.
    pub epoch: u64,
    /// Its file.
    pub file: SharePath,
    /// The file's bytes, as read: what liveness is judged by.
    pub bytes: Vec<u8>,
    /// What they say.
    pub content: LeaseContent,
}

impl LeaseView {
    /// Reads the epoch file `file` of `vm` from its `bytes`.
    pub(crate) fn parse(vm: &VmName, epoch: u64, file: SharePath, bytes: Vec<u8>) -> Self {
        let content = if bytes.is_empty() {
            LeaseContent::Claiming
        } else {
            match std::str::from_utf8(&bytes)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str::<Lease>(text).map_err(|e| e.message().to_string()))
            {
                Ok(lease) if lease.epoch != epoch => LeaseContent::Corrupt(format!(
                    "it says epoch {} in the file of epoch {epoch}",
                    lease.epoch
                )),
                Ok(lease) if lease.vm != vm.as_str() => {
                    LeaseContent::Corrupt(format!("it names VM {:?}", lease.vm))
                }
                Ok(lease) => LeaseContent::Valid(lease),
                Err(reason) => LeaseContent::Corrupt(reason),
            }
        };
        Self {
            vm: vm.clone(),
            epoch,
            file,
            bytes,
            content,
        }
    }

    /// Whether any host may start the VM now: the lease says it is stopped.
    pub fn is_free(&self) -> bool {
        matches!(
            &self.content,
            LeaseContent::Valid(Lease {
                state: LeaseState::Stopped,
                ..
            })
        )
    }

    /// The lease record, if the file holds a valid one.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.content {
            LeaseContent::Valid(lease) => Some(lease),
            _ => None,
        }
    }

    /// Who holds the VM, for messages: "host h1 (epoch 3)".
    pub fn holder(&self) -> String {
        match &self.content {
            LeaseContent::Valid(lease) => format!("host {} (epoch {})", lease.owner, self.epoch),
            LeaseContent::Claiming => format!(
                "a host taking epoch {} (its file is still empty)",
                self.epoch
            ),
            LeaseContent::Corrupt(reason) => {
                format!("nobody known: {} is corrupt ({reason})", self.file)
            }
        }
    }
}
