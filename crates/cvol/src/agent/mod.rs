//! `cvol host run`: the host agent (DESIGN.md, "Cluster"). One per host: it serves the
//! container and NBD as `cvol mount` does, keeps this host's record on the share, runs
//! VMs as QEMU children under leases it renews, fences itself when it cannot, and
//! restarts the HA VMs of hosts that died.
//!
//! Threads, each with one job, so that none can hold up another's deadline:
//! - *renew*: every `lease_renew`, the host record and the lease of every VM here;
//! - *watchdog*: kills the QEMU of a VM whose lease went unrenewed for `fence_after`
//!   (it only reads clocks, so a hung NFS call cannot delay it);
//! - *scan*: every `lease_renew`, reads every host record and lease, so that this host
//!   knows how long each has been unchanged, and takes over expired HA VMs;
//! - one per VM, which started its QEMU and waits for it to exit.

pub mod api;
pub mod client;
pub mod config;
pub mod migrate;
pub mod qemu;
mod snapshot;
mod status;
mod watch;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cvol_cluster::{
    ClusterError, HeldLease, HostEntry, HostRecord, HostRecords, HostState, LeaseContent,
    LeaseState, LeaseView, Leases, Liveness,
};
use cvol_datastore::{AttachedVolumes, Datastore, DatastoreError, VmInfo};
use cvol_format::{HostId, VmName};

pub use self::migrate::{IncomingAnswer, MigrationReport};
pub use self::status::{HostInfo, HostStatus, LocalStatus, VmStatus};

use self::config::{HostSettings, VmDisks};
use self::migrate::Incoming;
use self::qemu::{DiskPaths, QemuOptions, Qmp, VmFiles};

/// How long QEMU may take to answer on QMP after it was started.
const QEMU_START_LIMIT: Duration = Duration::from_secs(30);

/// A refused or failed agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No such VM.
    #[error("{0}")]
    NotFound(String),
    /// The VM is held by another host, or busy here.
    #[error("{message}")]
    Conflict {
        /// What is in the way.
        message: String,
        /// The holder, if one is known.
        holder: Option<String>,
    },
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// The agent is stopping.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

impl From<ClusterError> for AgentError {
    fn from(e: ClusterError) -> Self {
        Self::Failed(e.into())
    }
}

impl From<DatastoreError> for AgentError {
    fn from(e: DatastoreError) -> Self {
        match e {
            DatastoreError::VmNotFound(_) => Self::NotFound(e.to_string()),
            other => Self::Failed(other.into()),
        }
    }
}

/// A VM whose QEMU runs (or is starting) here.
struct LocalVm {
    name: VmName,
    /// Its lease; none while it is a migration's destination, not yet promoted.
    lease: Mutex<Option<HeldLease>>,
    /// Set while it is a migration's destination.
    incoming: Mutex<Option<Incoming>>,
    /// When the last successful renewal started.
    last_ok: Mutex<Instant>,
    /// QEMU's pid; 0 until it is spawned.
    pid: AtomicU32,
    /// Killed for fencing (or about to be): it must not be started again from here.
    fenced: AtomicBool,
    started: Instant,
    files: VmFiles,
}

/// What the scan last read, and how long each record has been unchanged.
#[derive(Default)]
struct ClusterView {
    liveness: Liveness,
    hosts: Vec<HostEntry>,
    leases: BTreeMap<VmName, LeaseView>,
}

/// The host agent.
pub struct Agent {
    settings: HostSettings,
    ds: Arc<Datastore>,
    /// This host's attached volumes (the container's and NBD's), once they are served.
    volumes: OnceLock<Arc<AttachedVolumes>>,
    /// The last migration started here of each VM.
    migrations: Mutex<HashMap<VmName, MigrationReport>>,
    /// VMs whose snapshot is being taken (paused): no migration starts meanwhile.
    snapshotting: Mutex<HashSet<VmName>>,
    leases: Leases,
    hosts: HostRecords,
    boot_id: String,
    vms: Mutex<HashMap<VmName, Arc<LocalVm>>>,
    /// Signalled whenever a VM leaves `vms`.
    vm_exited: Condvar,
    /// VMs being started here (they are not in `vms` yet, or only just).
    starting: Mutex<HashSet<VmName>>,
    /// Leases of VMs that exited while the share did not answer: released once it does.
    unreleased: Mutex<Vec<HeldLease>>,
    view: Mutex<ClusterView>,
    record: Mutex<HostRecord>,
    /// When the host record was last written successfully.
    record_ok: Mutex<Instant>,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("agent lock")
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn lease_key(vm: &VmName) -> String {
    format!("lease/{vm}")
}

fn host_key(host: &HostId) -> String {
    format!("host/{host}")
}

impl Agent {
    /// An agent for `settings` on `datastore` (opened with this host's id). Refuses to
    /// run while another live agent uses the same host id: waits up to the lease expiry
    /// time to see whether an old record still changes.
    pub fn new(settings: HostSettings, datastore: Arc<Datastore>) -> anyhow::Result<Arc<Self>> {
        let share = datastore.share_arc();
        let boot_id = uuid::Uuid::new_v4().to_string();
        let record = HostRecord {
            host: settings.host.clone(),
            boot_id: boot_id.clone(),
            pid: std::process::id(),
            address: settings.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            heartbeat: 0,
            state: HostState::Up,
        };
        let agent = Arc::new(Self {
            leases: Leases::new(share.clone()),
            hosts: HostRecords::new(share),
            boot_id,
            vms: Mutex::new(HashMap::new()),
            vm_exited: Condvar::new(),
            starting: Mutex::new(HashSet::new()),
            unreleased: Mutex::new(Vec::new()),
            view: Mutex::new(ClusterView::default()),
            record: Mutex::new(record),
            record_ok: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            settings,
            ds: datastore,
            volumes: OnceLock::new(),
            migrations: Mutex::new(HashMap::new()),
            snapshotting: Mutex::new(HashSet::new()),
        });
        agent.claim_host_id()?;
        Ok(agent)
    }

    /// Hands the agent the volumes the container and NBD serve, before it runs VMs.
    pub fn set_volumes(&self, volumes: Arc<AttachedVolumes>) {
        let _ = self.volumes.set(volumes);
    }

    fn volumes(&self) -> anyhow::Result<&Arc<AttachedVolumes>> {
        self.volumes
            .get()
            .ok_or_else(|| anyhow::anyhow!("the container is not served yet"))
    }

    /// The settings the agent runs with.
    pub fn settings(&self) -> &HostSettings {
        &self.settings
    }

    /// This agent.
    pub fn info(&self) -> HostInfo {
        HostInfo {
            host: self.settings.host.to_string(),
            boot_id: self.boot_id.clone(),
            address: self.settings.advertise.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            vms: lock(&self.vms).len(),
            share_requests: self.ds.share().requests_sent(),
            rss_kib: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                }),
        }
    }

    /// Refuses a host id whose record another agent still renews; then writes ours.
    fn claim_host_id(&self) -> anyhow::Result<()> {
        let host = &self.settings.host;
        let expiry = self.settings.timing.expiry;
        if let Some(first) = self.hosts.read(host)? {
            let up = matches!(&first.record, Ok(r) if r.state == HostState::Up);
            if up {
                let other = first.record.as_ref().expect("an up record");
                tracing::warn!(
                    "host id {host} has a record of another agent (boot id {}, pid {}); watching it for up to {} to be sure that agent is gone",
                    other.boot_id, other.pid, secs(expiry)
                );
                let since = Instant::now();
                while since.elapsed() < expiry {
                    std::thread::sleep(self.settings.timing.renew.min(expiry - since.elapsed()));
                    let now = self.hosts.read(host)?;
                    if now.as_ref().map(|e| &e.bytes) != Some(&first.bytes) {
                        anyhow::bail!(
                            "host id {host} is in use: the agent with boot id {} (pid {}{}) keeps renewing .cvol/hosts/{host}; give this host another id (--host-id, or host_id in the config)",
                            other.boot_id,
                            other.pid,
                            other.address.as_deref().map(|a| format!(", at {a}")).unwrap_or_default()
                        );
                    }
                }
                tracing::warn!(
                    "the record of host id {host} did not change for {}: its agent is gone; taking the id over",
                    secs(expiry)
                );
            }
        }
        self.hosts.write(&lock(&self.record))?;
        *lock(&self.record_ok) = Instant::now();
        Ok(())
    }

    /// Starts VM `name` here: takes its lease (refused while another host holds it live;
    /// with `takeover`, taken once it expired, its disks fenced from the old holder
    /// first), then QEMU.
    pub fn start_vm(
        self: &Arc<Self>,
        name: &VmName,
        takeover: bool,
    ) -> Result<VmStatus, AgentError> {
        if self.stopping.load(Ordering::SeqCst) {
            return Err(AgentError::Unavailable("the host agent is stopping".into()));
        }
        let info = self.ds.vm_info(name)?;
        info.check_startable()
            .map_err(|e| AgentError::Invalid(e.to_string()))?;
        if lock(&self.vms).contains_key(name) || !lock(&self.starting).insert(name.clone()) {
            return Err(AgentError::Conflict {
                message: format!(
                    "VM {name} already runs on this host ({})",
                    self.settings.host
                ),
                holder: Some(self.settings.host.to_string()),
            });
        }
        let started = self.take_and_launch(name, &info, takeover);
        lock(&self.starting).remove(name);
        started?;
        self.vm_status(name)
    }

    fn take_and_launch(
        self: &Arc<Self>,
        name: &VmName,
        info: &VmInfo,
        takeover: bool,
    ) -> Result<(), AgentError> {
        let current = self.leases.current(name)?;
        let fence_disks = match &current {
            Some(view) => self.judge(name, view, takeover)?,
            None => false,
        };
        let held = match self.leases.acquire(
            name,
            current.as_ref().map(|v| v.epoch),
            &self.settings.host,
            &self.boot_id,
        ) {
            Err(e @ ClusterError::LostRace { .. }) => {
                let holder = self.winner(name).map(|v| v.holder());
                return Err(AgentError::Conflict {
                    message: format!("{e}: {}", holder.as_deref().unwrap_or("unknown")),
                    holder,
                });
            }
            other => other?,
        };
        lock(&self.unreleased).retain(|l| l.lease().vm != name.as_str());
        let vm = self.new_local_vm(name, Some(held), None);
        lock(&self.vms).insert(name.clone(), vm.clone());
        let launched = if fence_disks {
            self.fence_disks(info)
        } else {
            Ok(())
        }
        .and_then(|()| self.launch(&vm, info, &[]));
        if let Err(e) = launched {
            // The VM's thread cleans up after a QEMU that started; this is for the rest.
            if lock(&self.vms)
                .get(name)
                .is_some_and(|v| Arc::ptr_eq(v, &vm))
            {
                self.exited(&vm, "did not start");
            }
            return Err(AgentError::Failed(e));
        }
        Ok(())
    }

    /// The lease of `name` as the host that just won it wrote it: its file is created
    /// empty and filled a moment later, so an empty one is read again for up to a second.
    fn winner(&self, name: &VmName) -> Option<LeaseView> {
        let mut view = None;
        for _ in 0..20 {
            view = self.leases.current(name).ok().flatten();
            if !view
                .as_ref()
                .is_some_and(|v| v.content == LeaseContent::Claiming)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        view
    }

    fn new_local_vm(
        &self,
        name: &VmName,
        lease: Option<HeldLease>,
        incoming: Option<Incoming>,
    ) -> Arc<LocalVm> {
        Arc::new(LocalVm {
            name: name.clone(),
            lease: Mutex::new(lease),
            incoming: Mutex::new(incoming),
            last_ok: Mutex::new(Instant::now()),
            pid: AtomicU32::new(0),
            fenced: AtomicBool::new(false),
            started: Instant::now(),
            files: VmFiles::new(&self.settings.state_dir, name.as_str()),
        })
    }

    /// Whether `view` lets this host take `name` (`Ok(true)`: taken over, so its disks
    /// must be fenced first); refuses with the holder otherwise.
    fn judge(&self, name: &VmName, view: &LeaseView, takeover: bool) -> Result<bool, AgentError> {
        if view.is_free() {
            return Ok(false);
        }
        if let Some(lease) = view.lease() {
            // Ours from this very run: its QEMU is gone (it is not in `vms`).
            if lease.owner == self.settings.host && lease.boot_id == self.boot_id {
                return Ok(false);
            }
        }
        let holder = view.holder();
        let expiry = self.settings.timing.expiry;
        let age = self.observe(view);
        let refuse = |message: String| AgentError::Conflict {
            message,
            holder: Some(holder.clone()),
        };
        if let LeaseContent::Corrupt(_) = &view.content {
            return Err(refuse(format!(
                "VM {name} cannot be started: its lease is held by {holder}; a corrupt lease counts as held; `cvol datastore fsck --repair` clears it once it has not changed for {}",
                secs(expiry)
            )));
        }
        if age < expiry {
            let wait = if takeover {
                format!(
                    "; a takeover needs the lease unchanged for {} (seen unchanged for {} so far)",
                    secs(expiry),
                    secs(age)
                )
            } else {
                String::new()
            };
            return Err(refuse(format!(
                "VM {name} is held by {holder}, whose lease is live (unchanged for {}){wait}",
                secs(age)
            )));
        }
        if !takeover {
            return Err(refuse(format!(
                "VM {name} was running on {holder}, whose lease has not changed for {} (expired); `cvol vm start --takeover {name}` takes it over, fencing its disks from that host first",
                secs(age)
            )));
        }
        tracing::warn!(%name, "taking over from {holder}: its lease has not changed for {}", secs(age));
        Ok(true)
    }

    /// Attaches every disk of `info` here by force and lets go: each volume's generation
    /// rises, so the old holder's device can write nothing more.
    fn fence_disks(&self, info: &VmInfo) -> anyhow::Result<()> {
        for disk in &info.disks {
            let (Some(provider), Some(volume)) = (&disk.provider, &disk.volume) else {
                anyhow::bail!(
                    "disk {} of VM {}: {}",
                    disk.name,
                    info.name,
                    disk.problem.as_deref().unwrap_or("no volume")
                );
            };
            let provider = self.ds.provider(&cvol_format::ProviderId::new(provider)?)?;
            let volume = cvol_format::VolumeId::new(volume)?;
            let host = self.settings.host.as_str();
            let attachment = provider
                .attach(&volume, host, true)
                .with_context(|| format!("cannot fence disk {} of VM {}", disk.name, info.name))?;
            provider.detach(&volume, host)?;
            tracing::info!(vm = info.name, %volume, generation = attachment.generation, "fenced the disk from its old holder");
        }
        Ok(())
    }

    /// Starts QEMU for `vm` (with `extra` arguments) on a thread of its own, which waits
    /// for it to exit; returns once QEMU answers on QMP with the guest running, or
    /// waiting for a migration if `vm` is incoming.
    fn launch(
        self: &Arc<Self>,
        vm: &Arc<LocalVm>,
        info: &VmInfo,
        extra: &[&str],
    ) -> anyhow::Result<()> {
        let options = QemuOptions {
            qemu: self.settings.qemu.clone(),
            accel: self.settings.accel.clone(),
        };
        let disks = match &self.settings.disks {
            VmDisks::Container => DiskPaths::Extents(&self.settings.mountpoint),
            VmDisks::Nbd(socket) => DiskPaths::Nbd(socket),
        };
        let mut cmd = qemu::command(info, &options, disks)?;
        cmd.extend(extra.iter().map(|a| a.to_string()));
        let incoming = lock(&vm.incoming).is_some();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (agent, vm) = (self.clone(), vm.clone());
        std::thread::Builder::new()
            .name(format!("vm-{}", vm.name))
            .spawn(move || {
                let mut child = match qemu::spawn(&cmd, &vm.files) {
                    Ok(child) => child,
                    Err(e) => return drop(ready_tx.send(Err(e))),
                };
                vm.pid.store(child.id(), Ordering::SeqCst);
                tracing::info!(vm = %vm.name, pid = child.id(), "QEMU started");
                let ready = if vm.fenced.load(Ordering::SeqCst) {
                    Err(anyhow::anyhow!("fenced while starting"))
                } else {
                    Qmp::wait_ready(&mut child, &vm.files, QEMU_START_LIMIT, incoming).map(drop)
                };
                let failed = ready.as_ref().err().map(|e| format!("{e:#}"));
                if failed.is_some() {
                    let _ = child.kill();
                } else {
                    let _ = ready_tx.send(Ok(()));
                }
                let status = child.wait();
                let how = match (&failed, status) {
                    (Some(e), _) => format!("did not start: {e}"),
                    (None, Ok(status)) => format!("exited ({status})"),
                    (None, Err(e)) => format!("could not be waited for: {e}"),
                };
                agent.exited(&vm, &how);
                if let Some(e) = failed {
                    let _ = ready_tx.send(Err(anyhow::anyhow!(e)));
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the VM's thread ended without a word"))?
    }

    /// `vm`'s QEMU is gone: releases its lease (or leaves that for later, if the share
    /// does not answer) and forgets it.
    fn exited(&self, vm: &LocalVm, how: &str) {
        let fenced = vm.fenced.load(Ordering::SeqCst);
        if fenced {
            tracing::warn!(vm = %vm.name, "QEMU {how} after fencing; the VM is not restarted here");
        } else {
            tracing::info!(vm = %vm.name, "QEMU {how}");
        }
        let mut lease = lock(&vm.lease);
        if let Some(lease) = lease.as_mut() {
            if let Err(e) = self.leases.release(lease) {
                tracing::warn!(vm = %vm.name, "cannot release the lease now ({e}); retrying while the agent runs");
                lock(&self.unreleased).push(lease.clone());
            }
        }
        drop(lease);
        if let Some(incoming) = lock(&vm.incoming).take() {
            self.drop_incoming_disks(&incoming);
        }
        lock(&self.vms).remove(&vm.name);
        self.vm_exited.notify_all();
    }

    /// Stops VM `name` here: ACPI power-down, then after `timeout` (or at once with
    /// `force`) QEMU is ended; returns once it exited and the lease is released.
    pub fn stop_vm(
        &self,
        name: &VmName,
        timeout: Option<Duration>,
        force: bool,
    ) -> Result<VmStatus, AgentError> {
        let Some(vm) = lock(&self.vms).get(name).cloned() else {
            let status = self.vm_status(name)?;
            return Err(match status.owner.filter(|_| status.live == Some(true)) {
                Some(owner) if owner != self.settings.host.as_str() => AgentError::Conflict {
                    message: format!("VM {name} runs on host {owner}, not here: stop it there"),
                    holder: Some(owner),
                },
                _ => AgentError::NotFound(format!("VM {name} does not run on this host")),
            });
        };
        if lock(&vm.incoming).is_some() && !self.stopping.load(Ordering::SeqCst) {
            return Err(AgentError::Conflict {
                message: format!(
                    "VM {name} is arriving here by a live migration; stop it on its source"
                ),
                holder: None,
            });
        }
        let timeout = timeout.unwrap_or(self.settings.stop_timeout);
        if !force {
            match Qmp::connect(&vm.files.qmp()).and_then(|mut q| q.powerdown()) {
                Ok(()) => tracing::info!(vm = %name, "asked the guest to power off"),
                Err(e) => tracing::warn!(vm = %name, "cannot ask the guest to power off: {e:#}"),
            }
        }
        if force || !self.wait_exit(name, timeout) {
            if !force {
                tracing::warn!(vm = %name, "the guest did not power off within {}; ending QEMU", secs(timeout));
            }
            if Qmp::connect(&vm.files.qmp())
                .and_then(|mut q| q.quit())
                .is_err()
            {
                let pid = vm.pid.load(Ordering::SeqCst);
                // SAFETY: kill(2) of this agent's own, not yet reaped child.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            if !self.wait_exit(name, Duration::from_secs(10)) {
                return Err(AgentError::Failed(anyhow::anyhow!(
                    "QEMU of VM {name} did not exit"
                )));
            }
        }
        self.vm_status(name)
    }

    /// Waits up to `limit` for `name` to leave `vms`; whether it did.
    fn wait_exit(&self, name: &VmName, limit: Duration) -> bool {
        let vms = lock(&self.vms);
        let (vms, _) = self
            .vm_exited
            .wait_timeout_while(vms, limit, |vms| vms.contains_key(name))
            .expect("agent lock");
        !vms.contains_key(name)
    }

    /// What this host knows of VM `name`: its lease (read now) and its QEMU here.
    pub fn vm_status(&self, name: &VmName) -> Result<VmStatus, AgentError> {
        let ha = self.ds.vm_ha(name)?;
        let view = self.leases.current(name)?;
        let expiry = self.settings.timing.expiry;
        let here = lock(&self.vms).get(name).map(|vm| LocalStatus {
            pid: vm.pid.load(Ordering::SeqCst),
            uptime_ms: vm.started.elapsed().as_millis() as u64,
            console: vm.files.console().display().to_string(),
            incoming: lock(&vm.incoming).is_some(),
        });
        let migration = lock(&self.migrations).get(name).cloned();
        let Some(view) = view else {
            return Ok(VmStatus {
                vm: name.to_string(),
                state: "never started".into(),
                owner: None,
                epoch: None,
                heartbeat_age_ms: None,
                live: None,
                ha,
                here,
                problem: None,
                migration,
            });
        };
        let age = self.observe(&view);
        let (state, owner, problem) = match &view.content {
            LeaseContent::Valid(lease) => (
                lease.state.name().to_string(),
                Some(lease.owner.to_string()),
                None,
            ),
            LeaseContent::Claiming => ("claiming".to_string(), None, None),
            LeaseContent::Corrupt(reason) => (
                "corrupt".to_string(),
                None,
                Some(format!("{}: {reason}", view.file)),
            ),
        };
        Ok(VmStatus {
            vm: name.to_string(),
            live: (!view.is_free()).then_some(age < expiry),
            state,
            owner,
            epoch: Some(view.epoch),
            heartbeat_age_ms: Some(age.as_millis() as u64),
            ha,
            here,
            problem,
            migration,
        })
    }

    /// Every host with a record, as this host has seen them.
    pub fn host_list(&self) -> Vec<HostStatus> {
        let now = Instant::now();
        let view = lock(&self.view);
        let expiry = self.settings.timing.expiry;
        view.hosts
            .iter()
            .map(|entry| {
                let age = view.liveness.unchanged_for(&host_key(&entry.host), now);
                let vms = view
                    .leases
                    .values()
                    .filter_map(|l| l.lease())
                    .filter(|l| l.owner == entry.host && l.state != LeaseState::Stopped)
                    .map(|l| l.vm.clone())
                    .collect();
                let (state, record, problem) = match &entry.record {
                    Ok(r) if r.state == HostState::Up => ("up", Some(r), None),
                    Ok(r) => ("down", Some(r), None),
                    Err(e) => ("corrupt", None, Some(e.clone())),
                };
                HostStatus {
                    host: entry.host.to_string(),
                    state: state.into(),
                    alive: state == "up" && age.is_some_and(|a| a < expiry),
                    heartbeat_age_ms: age.map(|a| a.as_millis() as u64),
                    boot_id: record.map(|r| r.boot_id.clone()),
                    address: record.and_then(|r| r.address.clone()),
                    vms,
                    this_host: entry.host == self.settings.host,
                    problem,
                }
            })
            .collect()
    }

    /// Stops every VM here (ACPI power-down, then QEMU ended after the stop timeout) and
    /// marks this host down: the end of `cvol host run`.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let vms = self.local_vms();
        std::thread::scope(|s| {
            for vm in &vms {
                s.spawn(move || {
                    if let Err(e) = self.stop_vm(&vm.name, None, false) {
                        tracing::error!(vm = %vm.name, "while stopping: {e}");
                    }
                });
            }
        });
        self.retry_releases();
        let mut record = lock(&self.record);
        record.state = HostState::Down;
        record.heartbeat += 1;
        match self.hosts.write(&record) {
            Ok(_) => tracing::info!("host {} is down", record.host),
            Err(e) => tracing::error!("cannot mark this host down: {e}"),
        }
    }
}
