//! `fsck`: checks that the share and the providers agree, and repairs what a crash left.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cvol_format::{ProviderId, VmName, VolumeId};
use serde::Serialize;

use crate::{layout, Datastore, DatastoreError, Freshness};

/// How fsck runs.
#[derive(Debug, Clone)]
pub struct FsckOptions {
    /// Repair what can be repaired, instead of only reporting.
    pub repair: bool,
    /// An intent record younger than this, from another host (or from a live process on
    /// this one), may belong to an operation still running: it is reported, not touched.
    pub intent_grace: Duration,
}

impl Default for FsckOptions {
    fn default() -> Self {
        Self {
            repair: false,
            intent_grace: Duration::from_secs(600),
        }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// What is wrong, naming the file, volume or record.
    pub what: String,
    /// True when fsck repaired it.
    pub repaired: bool,
}

/// What fsck found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FsckReport {
    /// VMs checked.
    pub vms: usize,
    /// Disks checked.
    pub disks: usize,
    /// Volumes of this datastore in its providers.
    pub volumes: usize,
    /// Everything found wrong.
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// True when nothing is left wrong (all problems, if any, were repaired).
    pub fn is_clean(&self) -> bool {
        self.problems.iter().all(|p| p.repaired)
    }

    fn found(&mut self, what: String, repaired: bool) {
        self.problems.push(Problem { what, repaired });
    }
}

type VolumeKey = (ProviderId, VolumeId);

impl Datastore {
    /// Checks the datastore; with `options.repair`, finishes or undoes interrupted
    /// operations, fixes descriptor sizes from their volumes, deletes volumes of this
    /// datastore that nothing names, and reclaims providers' interrupted work.
    pub fn fsck(&self, options: &FsckOptions) -> Result<FsckReport, DatastoreError> {
        let mut report = FsckReport::default();

        // Interrupted operations first: their undo or finish changes what is below.
        for pending in self.pending_intents()? {
            let intent = &pending.intent;
            let what = format!(
                "{}: {} by host {:?} (pid {}) did not finish",
                pending.path, intent.op, intent.host, intent.pid
            );
            if !intent.is_abandoned(self.host(), options.intent_grace) {
                report.found(
                    format!("{what}; it may still be running, so it is left alone"),
                    false,
                );
            } else if options.repair {
                self.recover(&pending)?;
                let done = match intent.recovery {
                    crate::intent::Recovery::Rollback => "undone",
                    crate::intent::Recovery::Rollforward => "finished",
                };
                report.found(format!("{what}; {done}"), true);
            } else {
                report.found(what, false);
            }
        }

        // Volumes before intents before descriptors: an operation writes its intent
        // before its volume and its descriptor before dropping its intent, so every
        // volume listed here is named by an intent or a descriptor read afterwards.
        let mut volumes: BTreeMap<VolumeKey, Option<String>> = BTreeMap::new();
        for config in &self.config().providers {
            let listed = self
                .provider(&config.id)
                .and_then(|p| Ok(p.list_volumes()?));
            match listed {
                Ok(list) => volumes.extend(
                    list.into_iter()
                        .filter(|v| v.owner == self.owner())
                        .map(|v| ((config.id.clone(), v.id), v.attached_to)),
                ),
                Err(e) => report.found(format!("provider {}: {e}", config.id), false),
            }
        }
        report.volumes = volumes.len();
        let in_flight: BTreeSet<VolumeKey> = self
            .pending_intents()?
            .into_iter()
            .flat_map(|p| p.intent.volumes)
            .map(|v| (v.provider, v.id))
            .collect();

        let mut named: BTreeMap<VolumeKey, String> = BTreeMap::new();
        let walked = self
            .walk(&self.vm_names()?, |vm| {
                Ok((
                    self.vm_info_as(vm, Freshness::Recent)?,
                    self.vm_snapshots_as(vm, Freshness::Recent),
                ))
            })
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        for (info, snapshots) in walked {
            let vm = VmName::new(&info.name)?;
            report.vms += 1;
            match snapshots {
                Ok(snapshots) => {
                    for problem in snapshot_problems(&vm, &snapshots, &info.disks) {
                        report.found(problem, false);
                    }
                }
                Err(e) => report.found(e.to_string(), false),
            }
            if let Some(problem) = info
                .problems
                .iter()
                .find(|p| p.starts_with(layout::vmx_file(&vm).as_str()))
            {
                report.found(problem.clone(), false);
            }
            for disk in info.disks {
                report.disks += 1;
                let (Some(provider), Some(volume)) = (&disk.provider, &disk.volume) else {
                    report.found(disk.problem.unwrap_or_default(), false);
                    continue;
                };
                let key = (ProviderId::new(provider)?, VolumeId::new(volume)?);
                if let Some(other) = named.insert(key.clone(), disk.descriptor.clone()) {
                    report.found(
                        format!("{} and {other} both name volume {volume}: writes to one disk would show in the other", disk.descriptor),
                        false,
                    );
                }
                let Some(problem) = disk.problem else {
                    continue;
                };
                let size_only = volumes.contains_key(&key) && problem.contains("descriptor says");
                if size_only && options.repair {
                    let disk_name = cvol_format::DiskName::new(&disk.name)?;
                    self.sync_descriptor_size(&vm, &disk_name, &key)?;
                    report.found(
                        format!("{problem}; descriptor updated from the volume"),
                        true,
                    );
                } else {
                    report.found(problem, false);
                }
            }
        }

        for (key, attached) in &volumes {
            if named.contains_key(key) || in_flight.contains(key) {
                continue;
            }
            let what = format!(
                "provider {}: volume {} belongs to this datastore but no descriptor names it",
                key.0, key.1
            );
            match (options.repair, attached) {
                (true, None) => {
                    self.provider(&key.0)?.delete_volume(&key.1)?;
                    report.found(format!("{what}; deleted"), true);
                }
                (true, Some(host)) => {
                    report.found(format!("{what}; attached to {host:?}, so kept"), false)
                }
                (false, _) => report.found(what, false),
            }
        }

        for config in &self.config().providers {
            let Ok(provider) = self.provider(&config.id) else {
                continue;
            };
            for leftover in provider.reclaim_interrupted(options.repair)? {
                let what = format!(
                    "provider {}: {leftover} is left from an interrupted operation",
                    config.id
                );
                report.found(
                    if options.repair {
                        format!("{what}; removed")
                    } else {
                        what
                    },
                    options.repair,
                );
            }
        }
        Ok(report)
    }

    fn sync_descriptor_size(
        &self,
        vm: &cvol_format::VmName,
        disk: &cvol_format::DiskName,
        key: &VolumeKey,
    ) -> Result<(), DatastoreError> {
        let path = layout::descriptor_file(vm, disk);
        let (mut descriptor, mut cvol) = self.read_descriptor(&path)?;
        cvol.size = self.provider(&key.0)?.volume(&key.1)?.size;
        cvol.apply_to(&mut descriptor);
        self.share()
            .write_atomic(&path, descriptor.to_string().as_bytes())?;
        Ok(())
    }
}

/// What makes a VM's snapshots unusable: a disk it still has whose volume lost the
/// snapshot (a revert to it would be refused half-way through the check).
fn snapshot_problems(
    vm: &VmName,
    snapshots: &[crate::VmSnapshot],
    disks: &[crate::DiskInfo],
) -> Vec<String> {
    let mut problems = Vec::new();
    for snapshot in snapshots {
        for then in &snapshot.disks {
            let now = disks
                .iter()
                .find(|d| d.volume.as_deref() == Some(then.volume.as_str()));
            if now.is_some_and(|d| !d.snapshots.contains(&snapshot.name)) {
                problems.push(format!(
                    "{}/{}: disk {}'s volume {} has no snapshot \"{}\"; the VM cannot be reverted to it",
                    layout::vm_snapshots_dir(vm),
                    snapshot.name,
                    then.disk,
                    then.volume,
                    snapshot.name
                ));
            }
        }
    }
    problems
}
