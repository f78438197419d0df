//! VM leases on the share: `.cvol/leases/<vm>/<epoch>`.
//!
//! Taking a VM is creating the next epoch's file exclusively (a GUARDED create over NFS):
//! of all hosts that try, exactly one creates it. Only that host ever writes the file
//! again (renewals rewrite it whole, by write-aside and rename), so no write of a lease
//! is ever a read-modify-write of someone else's record. The newest epoch is the lease;
//! older files are history, removed by the next owner but one. Leases live under `.cvol/`
//! rather than in the VM's folder: `cp -r vm1 vm2` must not copy an owner along, and the
//! container's users must not edit them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cvol_datastore::layout;
use cvol_format::{HostId, VmName};
use cvol_share::{Share, ShareError, SharePath};

use crate::lease::{Lease, LeaseState, LeaseView};
use crate::ClusterError;

/// A lease this host holds: it alone writes the file.
#[derive(Debug, Clone)]
pub struct HeldLease {
    lease: Lease,
    file: SharePath,
}

impl HeldLease {
    /// The record as last written.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The epoch held.
    pub fn epoch(&self) -> u64 {
        self.lease.epoch
    }
}

/// The VM leases of a datastore.
pub struct Leases {
    share: Arc<dyn Share>,
}

/// Leases [`Leases::current_of`] reads at once (as many as a datastore walk).
const READ_PARALLEL: usize = cvol_datastore::WALK_PARALLEL;

/// How a lease is read.
#[derive(Debug, Clone, Copy)]
enum Freshness {
    /// From the server.
    Now,
    /// As recent as the share's attribute cache.
    Recent,
}

/// `.cvol/leases/`
fn leases_dir() -> SharePath {
    layout::cvol_dir().join("leases").expect("a valid path")
}

fn vm_dir(vm: &VmName) -> SharePath {
    leases_dir()
        .join(vm.as_str())
        .expect("VM names are path components")
}

fn epoch_file(vm: &VmName, epoch: u64) -> SharePath {
    vm_dir(vm).join(&epoch.to_string()).expect("a valid path")
}

fn ignore_exists(r: Result<(), ShareError>) -> Result<(), ShareError> {
    match r {
        Err(ShareError::AlreadyExists(_)) => Ok(()),
        other => other,
    }
}

impl Leases {
    /// The leases on `share`.
    pub fn new(share: Arc<dyn Share>) -> Self {
        Self { share }
    }

    /// The VMs that have (or had) a lease.
    pub fn vms(&self) -> Result<Vec<VmName>, ClusterError> {
        match self.share.read_dir(&leases_dir()) {
            Ok(entries) => Ok(entries
                .iter()
                .filter_map(|e| VmName::new(&e.name).ok())
                .collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The current leases of `vms` (those that have one), as the server holds them now: a
    /// host's scan reads every lease of the datastore, and one after another that is
    /// seconds at thousands of VMs. The lease folders are listed from the server all at
    /// once, and a lease file is read only if its listing shows that it changed since
    /// this host last read it: a renewal writes a new file (`write_atomic`), so an
    /// unchanged listing is an unchanged lease. A folder whose listing could not be read
    /// that way is read from the server as [`Leases::current`] does.
    pub fn current_of(&self, vms: &[VmName]) -> Result<BTreeMap<VmName, LeaseView>, ClusterError> {
        let folders: Vec<SharePath> = vms.iter().map(vm_dir).collect();
        let listed = self.share.refresh_listings(&folders, Duration::ZERO);
        let asks: Vec<(&VmName, Freshness)> = vms
            .iter()
            .zip(listed)
            .map(|(vm, listed)| {
                (
                    vm,
                    if listed {
                        Freshness::Recent
                    } else {
                        Freshness::Now
                    },
                )
            })
            .collect();
        self.read_all(&asks)
    }

    /// The current leases of `vms` as [`Leases::current_of`] gives them, where another
    /// host's change may be seen as late as the share's attribute cache allows: for
    /// reports (fsck), which then cost one pipelined listing per lease folder and no
    /// read of a lease file unchanged since this host last read it.
    pub fn recent_of(&self, vms: &[VmName]) -> Result<BTreeMap<VmName, LeaseView>, ClusterError> {
        let folders: Vec<SharePath> = vms.iter().map(vm_dir).collect();
        self.share.prefetch_listings(&folders);
        let asks: Vec<(&VmName, Freshness)> =
            vms.iter().map(|vm| (vm, Freshness::Recent)).collect();
        self.read_all(&asks)
    }

    fn read_all(
        &self,
        asks: &[(&VmName, Freshness)],
    ) -> Result<BTreeMap<VmName, LeaseView>, ClusterError> {
        let views =
            cvol_share::concurrent::map(asks, READ_PARALLEL, |&(vm, how)| self.read(vm, how));
        let mut current = BTreeMap::new();
        for (&(vm, _), view) in asks.iter().zip(views) {
            if let Some(view) = view? {
                current.insert(vm.clone(), view);
            }
        }
        Ok(current)
    }

    /// The epochs of `vm`'s lease files, newest last. Write-aside files (`.N.cvol-tmp-…`)
    /// are not epochs.
    fn epochs(&self, vm: &VmName, freshness: Freshness) -> Result<Vec<u64>, ClusterError> {
        let listing = match freshness {
            Freshness::Now => self.share.read_dir(&vm_dir(vm)),
            Freshness::Recent => self.share.read_dir_recent(&vm_dir(vm)),
        };
        let mut epochs: Vec<u64> = match listing {
            Ok(entries) => entries
                .iter()
                .filter(|e| e.name.bytes().all(|b| b.is_ascii_digit()))
                .filter_map(|e| e.name.parse().ok())
                .collect(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        epochs.sort_unstable();
        Ok(epochs)
    }

    /// `vm`'s current lease, read from the server (never from a cache); `None` if it
    /// never had one.
    pub fn current(&self, vm: &VmName) -> Result<Option<LeaseView>, ClusterError> {
        self.read(vm, Freshness::Now)
    }

    fn read(&self, vm: &VmName, freshness: Freshness) -> Result<Option<LeaseView>, ClusterError> {
        // The newest file is removed only when two newer ones exist: one retry covers a
        // listing that raced with two takeovers. A retry asks the server, as a kept
        // listing would name the same file again.
        let mut freshness = freshness;
        for _ in 0..3 {
            let Some(&epoch) = self.epochs(vm, freshness)?.last() else {
                return Ok(None);
            };
            let file = epoch_file(vm, epoch);
            let bytes = match freshness {
                Freshness::Now => self.share.read(&file),
                Freshness::Recent => self.share.read_recent(&file),
            };
            match bytes {
                Ok(bytes) => return Ok(Some(LeaseView::parse(vm, epoch, file, bytes))),
                Err(e) if e.is_not_found() => freshness = Freshness::Now,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClusterError::Corrupt {
            file: vm_dir(vm).to_string(),
            reason: "its newest epoch file keeps disappearing".into(),
        })
    }

    /// Takes `vm` for `owner` by creating the epoch after `after` (the current lease's
    /// epoch, `None` if it had none) in state running. Exactly one of all hosts trying
    /// with the same `after` succeeds; the others get `LostRace`.
    pub fn acquire(
        &self,
        vm: &VmName,
        after: Option<u64>,
        owner: &HostId,
        boot_id: &str,
    ) -> Result<HeldLease, ClusterError> {
        ignore_exists(self.share.create_dir(&leases_dir()))?;
        ignore_exists(self.share.create_dir(&vm_dir(vm)))?;
        let epoch = after.map_or(1, |e| e + 1);
        let lease = Lease {
            vm: vm.to_string(),
            epoch,
            owner: owner.clone(),
            boot_id: boot_id.to_string(),
            heartbeat: 0,
            state: LeaseState::Running,
        };
        let file = epoch_file(vm, epoch);
        match self.share.create_exclusive(&file, &lease.to_bytes()) {
            Ok(()) => {}
            Err(ShareError::AlreadyExists(_)) => {
                return Err(ClusterError::LostRace {
                    vm: vm.to_string(),
                    epoch,
                })
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(%vm, epoch, %owner, "took the lease");
        // History beyond the previous owner is of no use to anyone.
        for old in self
            .epochs(vm, Freshness::Now)?
            .into_iter()
            .filter(|&e| e + 1 < epoch)
        {
            if let Err(e) = self.share.remove_file(&epoch_file(vm, old)) {
                tracing::debug!(%vm, old, "could not remove an old lease file: {e}");
            }
        }
        Ok(HeldLease { lease, file })
    }

    /// Raises the heartbeat of `held`. It does not look for a newer epoch (a holder's
    /// regular scan of [`Leases::current`] does): a renewal is three requests, one per VM
    /// every few seconds, and a fourth would add a third to what a host costs the share.
    pub fn renew(&self, held: &mut HeldLease) -> Result<(), ClusterError> {
        held.lease.heartbeat += 1;
        self.share
            .write_atomic(&held.file, &held.lease.to_bytes())?;
        Ok(())
    }

    /// Rewrites `held` in `state` (running, or migrating), as a renewal does.
    pub fn set_state(&self, held: &mut HeldLease, state: LeaseState) -> Result<(), ClusterError> {
        held.lease.state = state;
        self.renew(held)
    }

    /// Marks `held` stopped, so that any host may start the VM; nothing if it was taken
    /// over meanwhile.
    pub fn release(&self, held: &mut HeldLease) -> Result<(), ClusterError> {
        match self.check_newest(held) {
            Err(ClusterError::Superseded { .. }) => return Ok(()),
            other => other?,
        }
        held.lease.heartbeat += 1;
        held.lease.state = LeaseState::Stopped;
        self.share
            .write_atomic(&held.file, &held.lease.to_bytes())?;
        tracing::info!(
            vm = held.lease.vm,
            epoch = held.lease.epoch,
            "released the lease"
        );
        Ok(())
    }

    /// Removes every lease file of `vm` (the VM is gone).
    pub fn remove(&self, vm: &VmName) -> Result<(), ClusterError> {
        for epoch in self.epochs(vm, Freshness::Now)? {
            match self.share.remove_file(&epoch_file(vm, epoch)) {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        match self.share.remove_dir(&vm_dir(vm)) {
            Err(e) if !e.is_not_found() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn check_newest(&self, held: &HeldLease) -> Result<(), ClusterError> {
        let vm = VmName::new(&held.lease.vm).map_err(|e| ClusterError::InvalidName {
            name: held.lease.vm.clone(),
            reason: e.to_string(),
        })?;
        match self.epochs(&vm, Freshness::Now)?.last() {
            Some(&newest) if newest > held.lease.epoch => Err(ClusterError::Superseded {
                vm: held.lease.vm.clone(),
                held: held.lease.epoch,
                newest,
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use cvol_share::LocalShare;

    use super::*;
    use crate::LeaseContent;

    fn leases() -> (tempfile::TempDir, Arc<dyn Share>, Leases) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".cvol")).unwrap();
        let share: Arc<dyn Share> = Arc::new(LocalShare::open(dir.path()).unwrap());
        let leases = Leases::new(share.clone());
        (dir, share, leases)
    }

    fn host(id: &str) -> HostId {
        HostId::new(id).unwrap()
    }

    #[test]
    fn take_renew_release_and_take_again() {
        let (_dir, _share, leases) = leases();
        let vm = VmName::new("web").unwrap();
        assert!(leases.current(&vm).unwrap().is_none());
        let mut held = leases.acquire(&vm, None, &host("h1"), "boot1").unwrap();
        assert_eq!(held.epoch(), 1);
        leases.renew(&mut held).unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert_eq!(view.lease().unwrap().heartbeat, 1);
        assert!(!view.is_free());
        leases.release(&mut held).unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert!(view.is_free(), "{view:?}");
        let again = leases
            .acquire(&vm, Some(view.epoch), &host("h2"), "boot2")
            .unwrap();
        assert_eq!(again.epoch(), 2);
        assert_eq!(
            leases.current(&vm).unwrap().unwrap().holder(),
            "host h2 (epoch 2)"
        );
    }

    #[test]
    fn a_taken_over_holder_changes_nothing_by_renewing_or_releasing() {
        let (_dir, _share, leases) = leases();
        let vm = VmName::new("web").unwrap();
        let mut old = leases.acquire(&vm, None, &host("h1"), "b1").unwrap();
        let new = leases.acquire(&vm, Some(1), &host("h2"), "b2").unwrap();
        leases.renew(&mut old).unwrap();
        leases.release(&mut old).unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert_eq!(
            view.lease().unwrap(),
            new.lease(),
            "the release changed nothing"
        );
    }

    #[test]
    fn old_epochs_are_removed_but_the_previous_one() {
        let (dir, _share, leases) = leases();
        let vm = VmName::new("web").unwrap();
        for epoch in 0..4 {
            let after = (epoch > 0).then_some(epoch);
            leases.acquire(&vm, after, &host("h1"), "b").unwrap();
        }
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join(".cvol/leases/web"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        assert_eq!(files, ["3", "4"]);
    }

    #[test]
    fn empty_and_corrupt_files_are_held() {
        let (dir, _share, leases) = leases();
        let vm = VmName::new("web").unwrap();
        let vm_dir = dir.path().join(".cvol/leases/web");
        std::fs::create_dir_all(&vm_dir).unwrap();
        std::fs::write(vm_dir.join("7"), b"").unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert_eq!(view.content, LeaseContent::Claiming);
        assert!(!view.is_free());
        std::fs::write(vm_dir.join("8"), b"vm = \"web\"\nepoch = 8\nowner = ").unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert!(matches!(view.content, LeaseContent::Corrupt(_)), "{view:?}");
        assert!(!view.is_free());
        assert!(
            view.holder().contains(".cvol/leases/web/8"),
            "{}",
            view.holder()
        );
        // A record copied into another epoch's file is not that epoch's lease.
        let good = leases.acquire(&vm, Some(8), &host("h1"), "b").unwrap();
        std::fs::write(vm_dir.join("10"), good.lease().to_bytes()).unwrap();
        let view = leases.current(&vm).unwrap().unwrap();
        assert!(
            matches!(view.content, LeaseContent::Corrupt(ref r) if r.contains("epoch 9")),
            "{view:?}"
        );
    }

    /// Many rounds of several hosts taking one VM at the same instant: exactly one wins
    /// each round.
    #[test]
    fn exactly_one_of_many_racing_hosts_takes_the_lease() {
        let (_dir, share, _leases) = leases();
        let vm = VmName::new("web").unwrap();
        const HOSTS: usize = 4;
        let barrier = Arc::new(Barrier::new(HOSTS));
        let handles: Vec<_> = (0..HOSTS)
            .map(|h| {
                let (share, barrier, vm) = (share.clone(), barrier.clone(), vm.clone());
                std::thread::spawn(move || {
                    let leases = Leases::new(share);
                    let me = host(&format!("h{h}"));
                    let mut won = Vec::new();
                    for round in 0..200u64 {
                        barrier.wait();
                        let after = (round > 0).then_some(round);
                        if let Ok(mut held) = leases.acquire(&vm, after, &me, "b") {
                            leases.release(&mut held).unwrap();
                            won.push(round);
                        }
                        barrier.wait();
                    }
                    won
                })
            })
            .collect();
        let mut rounds: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        rounds.sort_unstable();
        assert_eq!(rounds, (0..200).collect::<Vec<_>>(), "one winner per round");
    }
}
