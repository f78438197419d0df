//! Checking leases: what `cvol datastore fsck` reports of them, and clears with
//! `--repair`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use cvol_format::{HostId, VmName};

use crate::{ClusterError, LeaseContent, LeaseTiming, LeaseView, Leases};

/// A lease problem, and whether it was cleared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseProblem {
    /// What is wrong, naming the file.
    pub what: String,
    /// True when it was cleared.
    pub repaired: bool,
}

/// Checks the lease of every VM that has one. A corrupt lease counts as held until it is
/// cleared; with `repair`, one is cleared (a new epoch, stopped, written as `host`) only
/// after this process saw it unchanged for `timing.expiry`, so that a live writer's
/// lease is never cleared. All corrupt leases are watched together, so a repair takes
/// one expiry however many there are. Leases of VMs that no longer exist are removed
/// with `repair`.
pub fn check_leases(
    leases: &Leases,
    existing_vms: &[VmName],
    repair: bool,
    timing: &LeaseTiming,
    host: &HostId,
) -> Result<Vec<LeaseProblem>, ClusterError> {
    let existing: HashSet<&VmName> = existing_vms.iter().collect();
    let (kept, gone): (Vec<VmName>, Vec<VmName>) = leases
        .vms()?
        .into_iter()
        .partition(|vm| existing.contains(vm));
    let mut problems = Vec::new();
    for vm in gone {
        let what = format!("lease of VM {vm}, which does not exist");
        let repaired = repair && leases.remove(&vm).is_ok();
        problems.push(LeaseProblem { what, repaired });
    }
    let corrupt: BTreeMap<VmName, LeaseView> = leases
        .recent_of(&kept)?
        .into_iter()
        .filter(|(_, view)| matches!(view.content, LeaseContent::Corrupt(_)))
        .collect();
    let changed = match repair {
        true => changed_while_watched(leases, &corrupt, timing)?,
        false => HashSet::new(),
    };
    for (vm, view) in &corrupt {
        let LeaseContent::Corrupt(reason) = &view.content else {
            unreachable!("only corrupt leases are kept");
        };
        let mut what = format!(
            "{}: corrupt lease of VM {vm} ({reason}); it counts as held",
            view.file
        );
        let mut repaired = false;
        if changed.contains(vm) {
            what.push_str("; it changed while watched, so something writes it: left alone");
        } else if repair {
            let mut cleared = leases.acquire(vm, Some(view.epoch), host, "fsck")?;
            leases.release(&mut cleared)?;
            what.push_str(&format!(
                "; unchanged for {:.0} s, cleared (epoch {} stopped)",
                timing.expiry.as_secs_f64(),
                cleared.epoch()
            ));
            repaired = true;
        }
        problems.push(LeaseProblem { what, repaired });
    }
    Ok(problems)
}

/// Which of `leases` changed while this process watched them all for `timing.expiry`,
/// reading them again every `timing.renew`.
fn changed_while_watched(
    leases: &Leases,
    watched: &BTreeMap<VmName, LeaseView>,
    timing: &LeaseTiming,
) -> Result<HashSet<VmName>, ClusterError> {
    let since = Instant::now();
    let mut changed = HashSet::new();
    while !watched.is_empty() && since.elapsed() < timing.expiry && changed.len() < watched.len() {
        let left = timing.expiry.saturating_sub(since.elapsed());
        std::thread::sleep(timing.renew.min(left));
        let still: Vec<VmName> = watched
            .keys()
            .filter(|vm| !changed.contains(*vm))
            .cloned()
            .collect();
        let now = leases.current_of(&still)?;
        changed.extend(
            still
                .into_iter()
                .filter(|vm| now.get(vm) != watched.get(vm)),
        );
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use cvol_share::{LocalShare, Share};

    use super::*;

    fn vm(name: &str) -> VmName {
        VmName::new(name).unwrap()
    }

    fn corrupt(dir: &std::path::Path, vm: &str, content: &str) {
        let folder = dir.join(".cvol/leases").join(vm);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("7"), content).unwrap();
    }

    /// Corrupt leases are watched together: a repair of several takes one expiry, clears
    /// those that stayed unchanged, and leaves alone the one something keeps writing.
    #[test]
    fn corrupt_leases_are_watched_together_and_one_being_written_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let share: Arc<dyn Share> = Arc::new(LocalShare::open(dir.path()).unwrap());
        let leases = Leases::new(share);
        let quiet = ["a", "b", "c"];
        for name in quiet {
            corrupt(dir.path(), name, "owner =");
        }
        corrupt(dir.path(), "written", "owner =");
        corrupt(dir.path(), "gone", "owner =");
        let existing: Vec<VmName> = ["a", "b", "c", "written"].map(vm).into();
        let timing = LeaseTiming {
            renew: Duration::from_millis(50),
            fence_after: Duration::from_millis(150),
            expiry: Duration::from_secs(1),
        };
        let host = HostId::new("h1").unwrap();

        let report = check_leases(&leases, &existing, false, &timing, &host).unwrap();
        assert_eq!(report.len(), 5, "{report:?}");
        assert!(report.iter().all(|p| !p.repaired), "{report:?}");

        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let report = std::thread::scope(|s| {
            s.spawn(|| {
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    corrupt(dir.path(), "written", &format!("owner = {n}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            let report = check_leases(&leases, &existing, true, &timing, &host);
            stop.store(true, Ordering::Relaxed);
            report.unwrap()
        });
        let took = started.elapsed();
        assert!(took >= timing.expiry, "cleared after only {took:?}");
        assert!(
            took < timing.expiry * 2,
            "{took:?}: the corrupt leases were watched one after another"
        );
        let what = |needle: &str| {
            report
                .iter()
                .find(|p| p.what.contains(needle))
                .unwrap_or_else(|| panic!("no problem names {needle}: {report:?}"))
        };
        for name in quiet {
            let problem = what(&format!("VM {name} "));
            assert!(
                problem.repaired && problem.what.contains("cleared"),
                "{problem:?}"
            );
            assert!(leases.current(&vm(name)).unwrap().unwrap().is_free());
        }
        let written = what("VM written ");
        assert!(
            !written.repaired && written.what.contains("left alone"),
            "{written:?}"
        );
        assert!(what("VM gone,").repaired);
        assert!(leases.current(&vm("gone")).unwrap().is_none());
    }
}
