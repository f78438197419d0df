//! Snapshots of a running VM, taken on its host: the guest is paused (QEMU drains and flushes every
//! disk as it stops) while every disk is snapshotted, then resumed, so that its disks
//! are all from one instant. Never during a live migration, which pauses it too.

use cvol_datastore::VmSnapshot;
use cvol_format::{HostId, SnapshotName, VmName};

use super::api::SnapshotRequest;
use super::qemu::Qmp;
use super::{lock, Agent, AgentError};

impl Agent {
    /// Takes snapshot `snapshot` of running VM `name`: here, or sent on to the host
    /// that runs it (unless this request was `forwarded` by another host already).
    pub fn snapshot_vm(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
        forwarded: bool,
    ) -> Result<VmSnapshot, AgentError> {
        let Some(vm) = lock(&self.vms).get(name).cloned() else {
            let status = self.vm_status(name)?;
            return match status.owner.filter(|_| status.live == Some(true)) {
                Some(owner) if owner != self.settings.host.as_str() && !forwarded => {
                    let host =
                        HostId::new(&owner).map_err(|e| AgentError::Invalid(e.to_string()))?;
                    self.peer(&host)?
                        .post(
                            &format!("/v1/vms/{name}/snapshot"),
                            &SnapshotRequest {
                                name: snapshot.to_string(),
                                forwarded: true,
                            },
                        )
                        .map_err(AgentError::Failed)
                }
                _ => Err(AgentError::NotFound(format!(
                    "VM {name} does not run on this host"
                ))),
            };
        };
        {
            let migrations = lock(&self.migrations);
            if lock(&vm.incoming).is_some()
                || migrations.get(name).is_some_and(|m| m.state == "running")
            {
                return Err(AgentError::Conflict {
                    message: format!("VM {name} is moving between hosts; try again after"),
                    holder: None,
                });
            }
            if !lock(&self.snapshotting).insert(name.clone()) {
                return Err(AgentError::Conflict {
                    message: format!("a snapshot of VM {name} is under way"),
                    holder: None,
                });
            }
        }
        let result = self.snapshot_paused(name, snapshot, &vm.files.qmp());
        lock(&self.snapshotting).remove(name);
        result
    }

    fn snapshot_paused(
        &self,
        name: &VmName,
        snapshot: &SnapshotName,
        qmp_path: &std::path::Path,
    ) -> Result<VmSnapshot, AgentError> {
        let mut qmp = Qmp::connect(qmp_path)?;
        let was_running = qmp.running()?;
        if was_running {
            qmp.pause()?;
        }
        let started = std::time::Instant::now();
        let taken = self
            .ds
            .vm_snapshot_create(name, snapshot, true, &cvol_provider::NoProgress);
        if was_running {
            // Resumed whatever the snapshot did: a failed snapshot must not stop the VM.
            if let Err(e) = qmp.cont() {
                tracing::error!(vm = %name, "cannot resume the guest after its snapshot: {e:#}");
            }
        }
        let taken = taken?;
        tracing::info!(vm = %name, snapshot = %snapshot, paused_ms = started.elapsed().as_millis() as u64, "took a VM snapshot");
        Ok(taken)
    }
}
