//! Live migration (DESIGN.md, "Live migration"): the source's agent moves a running VM to
//! another host's agent over the peer API.
//!
//! 1. The source marks its lease `migrating {source, destination}`.
//! 2. The destination attaches every disk as a standby (reads only; the source keeps
//!    writing), starts QEMU `-incoming defer -S` with `late-block-activate`, and waits.
//! 3. The source migrates with `pause-before-switchover`; at `pre-switchover` (guest
//!    stopped, disks flushed) `migrate-continue` inactivates its images, and QEMU reports
//!    `completed`.
//! 4. The destination takes the lease (the next epoch, created exclusively), promotes its
//!    standby attachments (each volume's generation rises: the source can write nothing
//!    more), and resumes the guest (`cont`). The source's QEMU is ended.
//!
//! Before step 4 a failure leaves the VM on the source: the migration is cancelled, the
//! destination's QEMU and standbys dropped, the lease back to `running`. If the answer of
//! step 4 is lost, the source settles it with the same exclusive create: it takes the next
//! epoch itself to resume, and finds the destination's if the destination won. Whoever
//! creates that epoch runs the VM; the other never writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use cvol_cluster::{ClusterError, LeaseState, LeaseView};
use cvol_datastore::layout;
use cvol_format::{DiskName, HostId, ProviderId, VmName, VolumeId};
use serde::{Deserialize, Serialize};

use super::client::AgentClient;
use super::qemu::Qmp;
use super::{lock, AgentError, LocalVm, VmStatus};
use crate::agent::Agent;

/// How long a migration may go without RAM moving before it is cancelled.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// How long a destination may take to load the last state after the source completed.
const LOAD_LIMIT: Duration = Duration::from_secs(30);

/// How long a destination waits for its migration to be promoted.
const INCOMING_LIMIT: Duration = Duration::from_secs(600);

/// What a destination keeps of a migration arriving.
#[derive(Debug, Clone)]
pub(super) struct Incoming {
    source: HostId,
    /// The source's lease epoch; the destination takes the next.
    epoch: u64,
    disks: Vec<VolumeId>,
    since: Instant,
}

/// A live migration as its source saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The destination host.
    pub to: String,
    /// `running`, `completed` or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// QEMU's migration state (`active`, `pre-switchover`, `completed`, …).
    pub qemu_status: Option<String>,
    /// RAM bytes sent.
    pub transferred: u64,
    /// RAM bytes still to send.
    pub remaining: u64,
    /// The guest's RAM.
    pub ram: u64,
    /// Milliseconds from start to end.
    pub total_ms: Option<u64>,
    /// Milliseconds the guest was stopped, as QEMU measured it (up to the source's
    /// completion).
    pub downtime_ms: Option<u64>,
    /// Milliseconds from the source's completion to the destination running the guest
    /// (lease, promotion, `cont`): the guest is stopped for these too.
    pub handover_ms: Option<u64>,
}

/// `POST /v1/vms/{vm}/migrate`
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination host.
    pub to: String,
}

/// `POST /v1/vms/{vm}/incoming` (peer API, to the destination).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncomingRequest {
    /// The source host.
    pub source: String,
    /// The source's lease epoch.
    pub epoch: u64,
}

/// The destination's answer: where QEMU waits for the migration stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct IncomingAnswer {
    /// `tcp:ADDR:PORT`.
    pub uri: String,
}

/// `POST /v1/vms/{vm}/promote` (peer API, to the destination).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The source's lease epoch.
    pub epoch: u64,
}

/// Tests set `CVOL_FAILPOINT` to a step name (`migrate:…` on the source, `incoming:…`
/// on the destination): the agent dies right there, as a kill -9 would.
fn failpoint(step: &str) {
    if std::env::var(crate::commands::FAILPOINT_ENV).is_ok_and(|f| f == step) {
        eprintln!(
            "cvol: {}={step}: aborting here",
            crate::commands::FAILPOINT_ENV
        );
        std::process::abort();
    }
}

fn conflict(message: String) -> AgentError {
    AgentError::Conflict {
        message,
        holder: None,
    }
}

impl Agent {
    /// Moves VM `name` to host `to`; from any host: where the VM runs elsewhere, its host
    /// is asked to. Returns when the VM runs on `to`, or still on its host after a
    /// failure (then an error saying why).
    pub fn migrate_vm(
        self: &Arc<Self>,
        name: &VmName,
        to: &str,
    ) -> Result<MigrationReport, AgentError> {
        let to = HostId::new(to).map_err(|e| AgentError::Invalid(e.to_string()))?;
        let vm = match lock(&self.vms).get(name).cloned() {
            Some(vm) if lock(&vm.lease).is_some() => vm,
            Some(_) => {
                return Err(conflict(format!(
                    "VM {name} is arriving here by a migration"
                )))
            }
            None => return self.forward_migration(name, &to),
        };
        if to == self.settings.host {
            return Err(AgentError::Invalid(format!(
                "VM {name} already runs on host {to}"
            )));
        }
        let peer = self.peer(&to)?;
        {
            let mut migrations = lock(&self.migrations);
            if lock(&self.snapshotting).contains(name) {
                return Err(conflict(format!(
                    "a snapshot of VM {name} is under way; try again after"
                )));
            }
            if let Some(m) = migrations.get(name).filter(|m| m.state == "running") {
                return Err(conflict(format!(
                    "a migration of VM {name} to host {} is under way",
                    m.to
                )));
            }
            migrations.insert(
                name.clone(),
                MigrationReport {
                    to: to.to_string(),
                    state: "running".into(),
                    error: None,
                    qemu_status: None,
                    transferred: 0,
                    remaining: 0,
                    ram: 0,
                    total_ms: None,
                    downtime_ms: None,
                    handover_ms: None,
                },
            );
        }
        let started = Instant::now();
        let result = self.run_migration(&vm, &to, &peer);
        let mut migrations = lock(&self.migrations);
        let report = migrations.get_mut(name).expect("recorded above");
        report.total_ms = Some(started.elapsed().as_millis() as u64);
        match result {
            Ok(()) => {
                report.state = "completed".into();
                tracing::info!(vm = %name, %to, total_ms = report.total_ms, downtime_ms = report.downtime_ms, "migrated");
                Ok(report.clone())
            }
            Err(e) => {
                report.state = "failed".into();
                report.error = Some(format!("{e:#}"));
                tracing::error!(vm = %name, %to, "migration failed, the VM runs on here: {e:#}");
                Err(AgentError::Failed(e.context(format!(
                    "VM {name} stays on host {}",
                    self.settings.host
                ))))
            }
        }
    }

    /// Asks the host that runs `name` to migrate it.
    fn forward_migration(&self, name: &VmName, to: &HostId) -> Result<MigrationReport, AgentError> {
        let view = self.leases.current(name)?;
        let owner = view
            .as_ref()
            .filter(|v| !v.is_free())
            .and_then(LeaseView::lease)
            .map(|l| l.owner.clone())
            .ok_or_else(|| {
                conflict(format!(
                    "VM {name} is not running: only a running VM migrates"
                ))
            })?;
        if owner == self.settings.host {
            return Err(conflict(format!(
                "VM {name} is not running on this host although its lease says so"
            )));
        }
        let peer = self.peer(&owner)?;
        peer.post(
            &format!("/v1/vms/{name}/migrate"),
            &MigrateRequest { to: to.to_string() },
        )
        .map_err(AgentError::Failed)
    }

    /// A client of host `host`'s peer API, if it is alive and serves one. Its record is
    /// read now (a host that just started is not in the last scan yet); its liveness is
    /// what this host has seen of it.
    pub(super) fn peer(&self, host: &HostId) -> Result<AgentClient, AgentError> {
        let entry = self
            .hosts
            .read(host)?
            .ok_or_else(|| AgentError::Invalid(format!("no host {host} in this datastore")))?;
        let record = entry.record.map_err(|e| conflict(e.to_string()))?;
        let age =
            lock(&self.view)
                .liveness
                .observe(&super::host_key(host), &entry.bytes, Instant::now());
        if record.state != cvol_cluster::HostState::Up || age >= self.settings.timing.expiry {
            return Err(conflict(format!(
                "host {host} is not alive (its agent is down, or its record has not changed for {:.1} s)",
                age.as_secs_f64()
            )));
        }
        let address = record
            .address
            .ok_or_else(|| conflict(format!("host {host} serves no peer API (--listen)")))?;
        let token = self.settings.token.as_deref().ok_or_else(|| {
            AgentError::Invalid("this host has no token for the peer API (token_file)".into())
        })?;
        AgentClient::peer(
            &address,
            token,
            self.settings.tls.as_ref().map(|t| &t.client),
        )
        .map_err(AgentError::Failed)
    }

    /// The source's part, with the VM's lease held here.
    fn run_migration(
        &self,
        vm: &Arc<LocalVm>,
        to: &HostId,
        peer: &AgentClient,
    ) -> anyhow::Result<()> {
        let name = &vm.name;
        let epoch = self.set_lease_state(
            vm,
            LeaseState::Migrating {
                source: self.settings.host.clone(),
                destination: to.clone(),
            },
        )?;
        let moved = (|| {
            let answer: IncomingAnswer = peer
                .post(
                    &format!("/v1/vms/{name}/incoming"),
                    &IncomingRequest {
                        source: self.settings.host.to_string(),
                        epoch,
                    },
                )
                .with_context(|| format!("host {to} cannot receive VM {name}"))?;
            failpoint("migrate:incoming-ready");
            let mut qmp = Qmp::connect(&vm.files.qmp())?;
            qmp.enable(qapi::qmp::MigrationCapability::pause_before_switchover)?;
            qmp.migrate(&answer.uri)?;
            self.follow(name, &mut qmp)
        })();
        if let Err(e) = moved {
            self.roll_back(vm, peer, epoch);
            return Err(e);
        }
        failpoint("migrate:completed");
        let completed = Instant::now();
        match peer.post::<VmStatus>(
            &format!("/v1/vms/{name}/promote"),
            &PromoteRequest { epoch },
        ) {
            Ok(_) => {
                if let Some(report) = lock(&self.migrations).get_mut(name) {
                    report.handover_ms = Some(completed.elapsed().as_millis() as u64);
                }
            }
            Err(e) => {
                // Whoever creates the next epoch runs the VM: if this host can, the
                // destination never took over, and the guest resumes here.
                match self
                    .leases
                    .acquire(name, Some(epoch), &self.settings.host, &self.boot_id)
                {
                    Ok(held) => {
                        *lock(&vm.lease) = Some(held);
                        let _ =
                            peer.post::<VmStatus>(&format!("/v1/vms/{name}/abort-incoming"), &());
                        Qmp::connect(&vm.files.qmp())?.cont()?;
                        return Err(e.context(format!(
                            "host {to} did not take VM {name} over; it resumed here"
                        )));
                    }
                    Err(ClusterError::LostRace { .. }) => {
                        tracing::warn!(vm = %name, "the destination's answer was lost, but it took the VM over: {e:#}");
                    }
                    Err(other) => {
                        return Err(anyhow!(other)
                            .context(format!("cannot tell whether host {to} took VM {name} over")))
                    }
                }
            }
        }
        // Handed over: this QEMU must never run the guest again.
        vm.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = Qmp::connect(&vm.files.qmp()).and_then(|mut q| q.quit()) {
            tracing::warn!(vm = %name, "cannot end the source QEMU over QMP ({e:#}); killing it");
            self.fence(vm, "the VM moved to another host");
        }
        self.wait_exit(name, Duration::from_secs(10));
        Ok(())
    }

    /// Follows the source QEMU's migration to `completed`, going on at `pre-switchover`.
    fn follow(&self, name: &VmName, qmp: &mut Qmp) -> anyhow::Result<()> {
        let (mut moved, mut since) = (0, Instant::now());
        loop {
            let info = qmp.query_migrate()?;
            let ram = info.ram.clone().unwrap_or_default();
            if let Some(report) = lock(&self.migrations).get_mut(name) {
                report.qemu_status = info.status.clone();
                report.transferred = ram.transferred;
                report.remaining = ram.remaining;
                report.ram = ram.total;
                report.downtime_ms = info.downtime.or(info.expected_downtime);
            }
            match info.status.as_deref() {
                Some("pre-switchover") => {
                    failpoint("migrate:pre-switchover");
                    qmp.migrate_continue()?
                }
                Some("completed") => return Ok(()),
                Some(status @ ("failed" | "cancelled")) => bail!(
                    "the migration {status}: {}",
                    info.error_desc.as_deref().unwrap_or("QEMU gave no reason")
                ),
                _ => {}
            }
            if ram.transferred != moved {
                (moved, since) = (ram.transferred, Instant::now());
            } else if since.elapsed() > STALL_LIMIT {
                bail!("the migration moved nothing for {STALL_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a failure before the destination took over: cancel, drop the destination's
    /// half, resume the guest here, and mark the lease running again.
    fn roll_back(&self, vm: &LocalVm, peer: &AgentClient, epoch: u64) {
        let name = &vm.name;
        if let Ok(mut qmp) = Qmp::connect(&vm.files.qmp()) {
            let _ = qmp.migrate_cancel();
            if !qmp.running().unwrap_or(true) {
                if let Err(e) = qmp.cont() {
                    tracing::error!(vm = %name, "cannot resume the guest after a failed migration: {e:#}");
                }
            }
        }
        if let Err(e) = peer.post::<VmStatus>(&format!("/v1/vms/{name}/abort-incoming"), &()) {
            tracing::warn!(vm = %name, "the destination did not drop its half ({e:#}); it drops it when it sees the lease");
        }
        if let Err(e) = self.set_lease_state(vm, LeaseState::Running) {
            tracing::warn!(vm = %name, epoch, "cannot mark the lease running again: {e:#}");
        }
    }

    /// Rewrites the lease of `vm` (held here) in `state`; its epoch.
    fn set_lease_state(&self, vm: &LocalVm, state: LeaseState) -> anyhow::Result<u64> {
        let mut lease = lock(&vm.lease);
        let held = lease
            .as_mut()
            .ok_or_else(|| anyhow!("VM {} holds no lease here", vm.name))?;
        self.leases.set_state(held, state)?;
        Ok(held.epoch())
    }

    /// The destination's first part: standby disks, QEMU waiting for the stream.
    pub fn incoming_vm(
        self: &Arc<Self>,
        name: &VmName,
        request: &IncomingRequest,
    ) -> Result<IncomingAnswer, AgentError> {
        let source =
            HostId::new(&request.source).map_err(|e| AgentError::Invalid(e.to_string()))?;
        let Some(listen) = self.settings.listen else {
            return Err(AgentError::Invalid(format!(
                "host {} serves no peer API (--listen), so it cannot receive a migration",
                self.settings.host
            )));
        };
        let expected = LeaseState::Migrating {
            source: source.clone(),
            destination: self.settings.host.clone(),
        };
        let view = self.leases.current(name)?;
        if !view
            .as_ref()
            .and_then(LeaseView::lease)
            .is_some_and(|l| l.epoch == request.epoch && l.state == expected)
        {
            return Err(conflict(format!(
                "VM {name} is not being migrated from host {source} to this host (its lease: {})",
                view.map_or("none".into(), |v| v.holder())
            )));
        }
        let info = self.ds.vm_info(name)?;
        if lock(&self.vms).contains_key(name) || !lock(&self.starting).insert(name.clone()) {
            return Err(conflict(format!("VM {name} already runs on this host")));
        }
        let result = self.receive(name, &info, source, request.epoch, listen.ip());
        lock(&self.starting).remove(name);
        result
    }

    fn receive(
        self: &Arc<Self>,
        name: &VmName,
        info: &cvol_datastore::VmInfo,
        source: HostId,
        epoch: u64,
        ip: std::net::IpAddr,
    ) -> Result<IncomingAnswer, AgentError> {
        let volumes = self.volumes()?;
        let mut incoming = Incoming {
            source,
            epoch,
            disks: Vec::new(),
            since: Instant::now(),
        };
        for disk in &info.disks {
            let standby = (|| {
                let (Some(provider), Some(volume)) = (&disk.provider, &disk.volume) else {
                    bail!(
                        "disk {}: {}",
                        disk.name,
                        disk.problem.as_deref().unwrap_or("no volume")
                    );
                };
                let (provider, volume) = (ProviderId::new(provider)?, VolumeId::new(volume)?);
                let descriptor = layout::descriptor_file(name, &DiskName::new(&disk.name)?);
                volumes.attach_standby(&provider, &volume, Some(&descriptor))?;
                Ok(volume)
            })();
            match standby {
                Ok(volume) => incoming.disks.push(volume),
                Err(e) => {
                    self.drop_incoming_disks(&incoming);
                    return Err(AgentError::Failed(e));
                }
            }
        }
        // A port for QEMU's stream: free now, bound by QEMU a moment later.
        let port = std::net::TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| AgentError::Failed(anyhow!("no free port for the migration: {e}")))?
            .port();
        let uri = format!("tcp:{ip}:{port}");
        let vm = self.new_local_vm(name, None, Some(incoming));
        lock(&self.vms).insert(name.clone(), vm.clone());
        let waiting = self
            .launch(&vm, info, &["-incoming", "defer", "-S"])
            .and_then(|()| {
                let mut qmp = Qmp::connect(&vm.files.qmp())?;
                qmp.enable(qapi::qmp::MigrationCapability::late_block_activate)?;
                qmp.migrate_incoming(&uri)
            });
        if let Err(e) = waiting {
            self.fence(&vm, "its migration could not start");
            return Err(AgentError::Failed(e));
        }
        tracing::info!(vm = %name, uri, "waiting for the migration");
        failpoint("incoming:waiting");
        Ok(IncomingAnswer { uri })
    }

    /// The destination's second part: take the lease, promote the disks, run the guest.
    pub fn promote_vm(&self, name: &VmName, epoch: u64) -> Result<VmStatus, AgentError> {
        let vm = lock(&self.vms)
            .get(name)
            .cloned()
            .filter(|vm| {
                lock(&vm.incoming)
                    .as_ref()
                    .is_some_and(|i| i.epoch == epoch)
            })
            .ok_or_else(|| {
                AgentError::NotFound(format!(
                    "no migration of VM {name} (epoch {epoch}) arrives here"
                ))
            })?;
        let mut qmp = Qmp::connect(&vm.files.qmp())?;
        // The source reports `completed` once it sent the last state; this QEMU may
        // still be loading it.
        let loading = Instant::now();
        loop {
            let status = qmp.query_migrate()?.status;
            match status.as_deref() {
                Some("completed") => break,
                Some("active" | "setup" | "device") if loading.elapsed() < LOAD_LIMIT => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                other => {
                    return Err(conflict(format!(
                        "the migration of VM {name} did not complete here ({})",
                        other.unwrap_or("no status")
                    )))
                }
            }
        }
        let held = match self
            .leases
            .acquire(name, Some(epoch), &self.settings.host, &self.boot_id)
        {
            Ok(held) => held,
            Err(e @ ClusterError::LostRace { .. }) => {
                self.fence(&vm, "its source took the VM back");
                return Err(conflict(format!("{e}: the source resumed it")));
            }
            Err(e) => return Err(e.into()),
        };
        *lock(&vm.last_ok) = Instant::now();
        *lock(&vm.lease) = Some(held);
        failpoint("incoming:lease-taken");
        let incoming = lock(&vm.incoming).take().expect("checked above");
        for volume in &incoming.disks {
            if let Err(e) = self.volumes()?.promote(volume) {
                // The lease is ours and the source's images are inactive: stopping here
                // loses no write, and the lease says stopped once QEMU is gone.
                self.fence(&vm, &format!("volume {volume} could not be promoted: {e}"));
                return Err(AgentError::Failed(e.into()));
            }
        }
        qmp.cont()?;
        tracing::info!(vm = %name, from = %incoming.source, "migration arrived; the guest runs here");
        failpoint("incoming:promoted");
        self.vm_status(name)
    }

    /// Drops a migration arriving here: QEMU ended, standby disks let go.
    pub fn abort_incoming(&self, name: &VmName) -> Result<VmStatus, AgentError> {
        let vm = lock(&self.vms)
            .get(name)
            .cloned()
            .filter(|vm| lock(&vm.incoming).is_some())
            .ok_or_else(|| {
                AgentError::NotFound(format!("no migration of VM {name} arrives here"))
            })?;
        self.fence(&vm, "its migration was abandoned");
        self.wait_exit(name, Duration::from_secs(10));
        self.vm_status(name)
    }

    /// A destination's check at each scan: a migration whose source moved on (the lease
    /// no longer says it is coming here) or that waited too long is dropped; one that
    /// completed here while its source went silent (its lease expired) is resumed here,
    /// as the source would have asked: nobody else holds the guest's state.
    pub(super) fn check_incoming(&self, vm: &LocalVm, view: Option<&LeaseView>) {
        let Some(incoming) = lock(&vm.incoming).clone() else {
            return;
        };
        if view
            .and_then(LeaseView::lease)
            .is_some_and(|l| l.owner == self.settings.host && l.boot_id == self.boot_id)
        {
            // This host took the lease: the promotion is under way.
            return;
        }
        let expected = LeaseState::Migrating {
            source: incoming.source.clone(),
            destination: self.settings.host.clone(),
        };
        let current = view
            .and_then(LeaseView::lease)
            .is_some_and(|l| l.epoch == incoming.epoch && l.state == expected);
        let expired = view.is_some_and(|v| self.observe(v) >= self.settings.timing.expiry);
        if current && expired && self.completed_here(vm) {
            tracing::warn!(vm = %vm.name, source = %incoming.source, "the source went silent after the migration completed: resuming the VM here");
            match self.promote_vm(&vm.name, incoming.epoch) {
                Ok(_) => return,
                Err(e) => tracing::error!(vm = %vm.name, "cannot resume the VM here: {e}"),
            }
        }
        if !current || expired || incoming.since.elapsed() > INCOMING_LIMIT {
            self.fence(
                vm,
                "its migration is no longer under way (the source moved on or went silent)",
            );
        }
    }

    /// Whether the migration arriving as `vm` has completed here.
    fn completed_here(&self, vm: &LocalVm) -> bool {
        Qmp::connect(&vm.files.qmp())
            .and_then(|mut q| q.query_migrate())
            .is_ok_and(|info| info.status.as_deref() == Some("completed"))
    }

    /// Lets go of the standby disks of a migration that did not arrive.
    pub(super) fn drop_incoming_disks(&self, incoming: &Incoming) {
        if let Ok(volumes) = self.volumes() {
            for volume in &incoming.disks {
                volumes.drop_standby(volume);
            }
        }
    }
}
