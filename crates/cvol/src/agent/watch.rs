//! The agent's standing work, each on a thread of its own so that none can hold up
//! another's deadline: renewing this host's record and its VMs' leases, the watchdog that
//! fences VMs whose leases went unrenewed, and the scan of every host and lease that
//! judges liveness and restarts HA VMs.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};
use std::time::{Duration, Instant};

use cvol_cluster::{ClusterError, HeldLease, LeaseView};
use cvol_format::VmName;

use super::{host_key, lease_key, lock, secs, Agent, AgentError, LocalVm};

impl Agent {
    /// Starts the renew, watchdog and scan threads.
    pub fn start_threads(self: &Arc<Self>) -> anyhow::Result<()> {
        for (name, job) in [
            ("cvol-renew", Self::renew_loop as fn(&Arc<Self>)),
            ("cvol-watchdog", Self::watchdog_loop),
            ("cvol-scan", Self::scan_loop),
        ] {
            let agent = self.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || job(&agent))?;
        }
        Ok(())
    }

    /// Sleeps `d`, or less once the agent is stopping; false then.
    pub(super) fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopping.load(Ordering::SeqCst) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }

    pub(super) fn local_vms(&self) -> Vec<Arc<LocalVm>> {
        lock(&self.vms).values().cloned().collect()
    }

    fn renew_loop(self: &Arc<Self>) {
        loop {
            let tick = Instant::now();
            self.renew_record();
            for vm in self.local_vms() {
                let started = Instant::now();
                let mut lease = lock(&vm.lease);
                let Some(lease) = lease.as_mut() else {
                    continue;
                };
                hang_at("lease-renewal");
                let renewed = self.leases.renew(lease);
                let outcome = if renewed.is_ok() { "ok" } else { "failed" };
                metrics::counter!("cvol_lease_renewals_total", "vm" => vm.name.to_string(), "outcome" => outcome)
                    .increment(1);
                metrics::histogram!("cvol_lease_renewal_seconds").record(started.elapsed());
                match renewed {
                    Ok(()) => *lock(&vm.last_ok) = started,
                    Err(e) => tracing::warn!(vm = %vm.name, "cannot renew the lease: {e}"),
                }
            }
            self.retry_releases();
            if !self.pause(self.settings.timing.renew.saturating_sub(tick.elapsed())) {
                return;
            }
        }
    }

    fn renew_record(&self) {
        let started = Instant::now();
        let mut record = lock(&self.record);
        record.heartbeat += 1;
        match self.hosts.write(&record) {
            Ok(_) => *lock(&self.record_ok) = started,
            Err(e) => tracing::warn!("cannot renew this host's record: {e}"),
        }
    }

    pub(super) fn retry_releases(&self) {
        let pending: Vec<HeldLease> = std::mem::take(&mut *lock(&self.unreleased));
        for mut lease in pending {
            if let Err(e) = self.leases.release(&mut lease) {
                tracing::debug!(vm = lease.lease().vm, "still cannot release the lease: {e}");
                lock(&self.unreleased).push(lease);
            }
        }
    }

    fn watchdog_loop(self: &Arc<Self>) {
        let timing = self.settings.timing;
        while self.pause(timing.watchdog_tick()) {
            for vm in self.local_vms() {
                // A renewal holds the lease while it waits on the store, for as long as the
                // store takes to answer or time out. Fencing is for exactly the times the
                // store does not answer, so the watchdog never waits for it: a lease in use
                // is a lease held, unless the VM is a migration's destination not yet
                // promoted (which holds none).
                let leased = match vm.lease.try_lock() {
                    Ok(lease) => lease.is_some(),
                    Err(TryLockError::WouldBlock) => lock(&vm.incoming).is_none(),
                    Err(TryLockError::Poisoned(_)) => panic!("agent lock poisoned"),
                };
                if !leased {
                    continue;
                }
                let silent = lock(&vm.last_ok).elapsed();
                metrics::gauge!("cvol_lease_age_seconds", "vm" => vm.name.to_string())
                    .set(silent.as_secs_f64());
                if silent > timing.fence_after {
                    self.fence(
                        &vm,
                        &format!(
                            "the lease of VM {} could not be renewed for {} (fence_after {}), so another host may soon take it over",
                            vm.name,
                            secs(silent),
                            secs(timing.fence_after)
                        ),
                    );
                }
            }
        }
    }

    /// Kills `vm`'s QEMU at once, so that no write of it can follow a takeover.
    pub(super) fn fence(&self, vm: &LocalVm, why: &str) {
        if vm.fenced.swap(true, Ordering::SeqCst) {
            return;
        }
        let pid = vm.pid.load(Ordering::SeqCst);
        if pid != 0 {
            // SAFETY: kill(2) with a pid this agent spawned and has not yet reaped (the
            // VM's thread reaps it only after it left `vms`).
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        tracing::error!(vm = %vm.name, pid, "self-fencing: {why}; killed its QEMU");
    }

    fn scan_loop(self: &Arc<Self>) {
        loop {
            let started = Instant::now();
            if let Err(e) = self.scan() {
                tracing::warn!("cannot read the cluster's records: {e}");
            }
            metrics::counter!("cvol_cluster_scans_total").increment(1);
            metrics::histogram!("cvol_cluster_scan_seconds").record(started.elapsed());
            if !self.pause(self.settings.timing.renew) {
                return;
            }
        }
    }

    /// Reads every host record and lease, and restarts expired HA VMs here.
    fn scan(self: &Arc<Self>) -> Result<(), ClusterError> {
        let hosts = self.hosts.list()?;
        let leases = self.leases.current_of(&self.leases.vms()?)?;
        let now = Instant::now();
        let expiry = self.settings.timing.expiry;
        for vm in self.local_vms() {
            let Some(held) = lock(&vm.lease).as_ref().map(HeldLease::epoch) else {
                self.check_incoming(&vm, leases.get(&vm.name));
                continue;
            };
            if let Some(newest) = leases.get(&vm.name).map(|v| v.epoch).filter(|&e| e > held) {
                let e = ClusterError::Superseded {
                    vm: vm.name.to_string(),
                    held,
                    newest,
                };
                self.fence(&vm, &e.to_string());
            }
        }
        let local: HashSet<VmName> = lock(&self.vms).keys().cloned().collect();
        let mut expired = Vec::new();
        {
            let mut view = lock(&self.view);
            let mut keys = HashSet::new();
            for entry in &hosts {
                let key = host_key(&entry.host);
                view.liveness.observe(&key, &entry.bytes, now);
                keys.insert(key);
            }
            for (vm, lease) in &leases {
                let key = lease_key(vm);
                let age = view.liveness.observe(&key, &lease.bytes, now);
                if !lease.is_free() && age >= expiry && !local.contains(vm) {
                    expired.push(vm.clone());
                }
                keys.insert(key);
            }
            view.liveness.retain(|k| keys.contains(k));
            view.hosts = hosts;
            view.leases = leases;
        }
        // A host cut off from the share must not take over anything: it could not keep it.
        if lock(&self.record_ok).elapsed() > self.settings.timing.fence_after {
            return Ok(());
        }
        for vm in expired {
            match self.ds.vm_ha(&vm) {
                Ok(true) => match self.start_vm(&vm, true) {
                    Ok(_) => {
                        tracing::warn!(%vm, "HA: took over the VM of a dead host and started it here")
                    }
                    Err(AgentError::Conflict { message, .. }) => {
                        tracing::info!(%vm, "HA: not taken over here: {message}")
                    }
                    Err(e) => tracing::error!(%vm, "HA: could not restart the VM here: {e}"),
                },
                Ok(false) => {}
                Err(e) => tracing::debug!(%vm, "not a VM any more: {e}"),
            }
        }
        Ok(())
    }

    /// How long this host has seen `view` unchanged (zero at first sight).
    pub(super) fn observe(&self, view: &LeaseView) -> Duration {
        lock(&self.view)
            .liveness
            .observe(&lease_key(&view.vm), &view.bytes, Instant::now())
    }
}

/// Test hook: with `CVOL_FAILPOINT=STEP:hang`, step `STEP` never returns, as a call
/// waiting on a store that stopped answering (a hung NFS server waits out `--nfs-timeout`).
fn hang_at(step: &str) {
    let hang = format!("{step}:hang");
    if std::env::var(crate::commands::FAILPOINT_ENV).is_ok_and(|f| f == hang) {
        tracing::warn!("{}={hang}: hanging here", crate::commands::FAILPOINT_ENV);
        loop {
            std::thread::park();
        }
    }
}
