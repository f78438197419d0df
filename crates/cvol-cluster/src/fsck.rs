//! Checking leases: what `cvol datastore fsck` reports of them, and clears with
//! `--repair`.

use std::time::Instant;

use cvol_format::{HostId, VmName};

use crate::{ClusterError, LeaseContent, LeaseTiming, Leases};

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
/// lease is never cleared. Leases of VMs that no longer exist are removed with `repair`.
pub fn check_leases(
    leases: &Leases,
    existing_vms: &[VmName],
    repair: bool,
    timing: &LeaseTiming,
    host: &HostId,
) -> Result<Vec<LeaseProblem>, ClusterError> {
    let mut problems = Vec::new();
    for vm in leases.vms()? {
        if !existing_vms.contains(&vm) {
            let what = format!("lease of VM {vm}, which does not exist");
            let repaired = repair && leases.remove(&vm).is_ok();
            problems.push(LeaseProblem { what, repaired });
            continue;
        }
        let Some(view) = leases.current(&vm)? else {
            continue;
        };
        let LeaseContent::Corrupt(reason) = &view.content else {
            continue;
        };
        let mut what = format!(
            "{}: corrupt lease of VM {vm} ({reason}); it counts as held",
            view.file
        );
        let mut repaired = false;
        if repair {
            let since = Instant::now();
            let mut changed = false;
            while since.elapsed() < timing.expiry {
                std::thread::sleep(timing.renew.min(timing.expiry - since.elapsed()));
                if leases.current(&vm)?.as_ref() != Some(&view) {
                    changed = true;
                    break;
                }
            }
            if changed {
                what.push_str("; it changed while watched, so something writes it: left alone");
            } else {
                let mut cleared = leases.acquire(&vm, Some(view.epoch), host, "fsck")?;
                leases.release(&mut cleared)?;
                what.push_str(&format!(
                    "; unchanged for {:.0} s, cleared (epoch {} stopped)",
                    timing.expiry.as_secs_f64(),
                    cleared.epoch()
                ));
                repaired = true;
            }
        }
        problems.push(LeaseProblem { what, repaired });
    }
    Ok(problems)
}
