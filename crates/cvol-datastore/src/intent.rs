//! Intent records: how a multi-step operation stays all-or-nothing across crashes.
//!
//! Before its first step, an operation writes `.cvol/intents/<uuid>.toml` naming every
//! volume, file and directory it will create or delete; it removes the record after its
//! last step. A record that is still there belongs to an operation that did not finish,
//! and says exactly how to finish it (roll forward: deletes) or undo it (roll back:
//! creates). Volume ids are chosen before the record is written, so an undo can find a
//! volume whether or not its creation got as far as the provider.

use std::time::{Duration, SystemTime};

use cvol_format::{ProviderId, SnapshotName, VmName, Vmx, VolumeId};
use cvol_share::{FileKind, Share, SharePath};
use serde::{Deserialize, Serialize};

use crate::{layout, Datastore, DatastoreError};

/// What to do with an operation that did not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recovery {
    /// Undo it: remove what it created. For operations that create.
    Rollback,
    /// Finish it: remove what it meant to remove. For operations that delete.
    Rollforward,
}

/// A volume an operation creates or deletes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentVolume {
    /// Its provider.
    pub provider: ProviderId,
    /// Its id.
    pub id: VolumeId,
}

/// A volume snapshot an operation takes (rollback) or deletes (rollforward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentSnapshot {
    /// The volume's provider.
    pub provider: ProviderId,
    /// The volume.
    pub volume: VolumeId,
    /// The snapshot.
    pub name: SnapshotName,
}

/// A VM going back to one of its snapshots: recovery does it again, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRevert {
    /// The VM.
    pub vm: VmName,
    /// Its snapshot.
    pub snapshot: SnapshotName,
}

/// Keys an operation adds to (rollback) or removes from (rollforward) a `.vmx`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmxEdit {
    /// The `.vmx` file.
    pub file: String,
    /// The keys.
    pub keys: Vec<String>,
}

/// One operation under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// What the operation is, e.g. `vm-create`.
    pub op: String,
    /// What to do if it does not finish.
    pub recovery: Recovery,
    /// The host that runs it.
    pub host: String,
    /// Its process on that host.
    pub pid: u32,
    /// When it started (seconds since the epoch).
    pub started_unix: u64,
    /// Volumes it creates or deletes.
    #[serde(default)]
    pub volumes: Vec<IntentVolume>,
    /// Files it creates or deletes (share paths).
    #[serde(default)]
    pub files: Vec<String>,
    /// Directories it creates (rollback: removed if empty) or deletes (rollforward:
    /// removed with everything in them).
    #[serde(default)]
    pub dirs: Vec<String>,
    /// A `.vmx` edit.
    #[serde(default)]
    pub vmx: Option<VmxEdit>,
    /// Volume snapshots it takes or deletes.
    #[serde(default)]
    pub snapshots: Vec<IntentSnapshot>,
    /// A revert it makes.
    #[serde(default)]
    pub revert: Option<IntentRevert>,
}

/// An intent record found on the share.
#[derive(Debug, Clone)]
pub struct PendingIntent {
    /// Its record's path.
    pub path: SharePath,
    /// What it says.
    pub intent: Intent,
}

impl Intent {
    /// A new record for operation `op` run by `host`.
    pub fn new(op: &str, recovery: Recovery, host: &str) -> Self {
        Self {
            op: op.to_string(),
            recovery,
            host: host.to_string(),
            pid: std::process::id(),
            started_unix: unix_now(),
            volumes: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            vmx: None,
            snapshots: Vec::new(),
            revert: None,
        }
    }

    /// True when nothing can still be working on it: its process on this host is gone,
    /// or it is older than `grace` (a process on another host would have finished).
    pub fn is_abandoned(&self, this_host: &str, grace: Duration) -> bool {
        let age = Duration::from_secs(unix_now().saturating_sub(self.started_unix));
        let process_gone = self.host == this_host
            && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        process_gone || age >= grace
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Datastore {
    /// Writes `intent` and returns its record's path.
    pub(crate) fn write_intent(&self, intent: &Intent) -> Result<SharePath, DatastoreError> {
        let path = layout::intents_dir().join(&format!("{}.toml", uuid::Uuid::new_v4()))?;
        let text = toml::to_string(intent).expect("intents serialize");
        self.share().create_new(&path, text.as_bytes())?;
        Ok(path)
    }

    /// Every intent record on the share. A record that cannot be read is an error naming it.
    pub fn pending_intents(&self) -> Result<Vec<PendingIntent>, DatastoreError> {
        let dir = layout::intents_dir();
        let mut pending = Vec::new();
        for entry in self.share().read_dir(&dir)? {
            if entry.kind != FileKind::File || !entry.name.ends_with(".toml") {
                continue;
            }
            let path = dir.join(&entry.name)?;
            let text = String::from_utf8_lossy(&self.share().read(&path)?).into_owned();
            let intent: Intent = toml::from_str(&text).map_err(|e| {
                let line = e.span().map(|s| text[..s.start].matches('\n').count() + 1);
                cvol_format::FormatError::new(path.as_str(), line, e.message().trim())
            })?;
            pending.push(PendingIntent { path, intent });
        }
        pending.sort_by_key(|p| p.intent.started_unix);
        Ok(pending)
    }

    /// Finishes or undoes a pending operation, then removes its record. Every step is
    /// idempotent, so recovery itself may be interrupted and run again.
    pub fn recover(&self, pending: &PendingIntent) -> Result<(), DatastoreError> {
        let intent = &pending.intent;
        tracing::info!(op = %intent.op, record = %pending.path, recovery = ?intent.recovery, "recovering interrupted operation");
        let share = self.share();
        if let Some(edit) = &intent.vmx {
            let file = SharePath::new(&edit.file)?;
            match share.read(&file) {
                Ok(bytes) => {
                    let mut vmx = Vmx::parse(&String::from_utf8_lossy(&bytes), file.as_str())?;
                    edit.keys.iter().for_each(|k| vmx.remove(k));
                    share.write_atomic(&file, vmx.to_string().as_bytes())?;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(revert) = &intent.revert {
            let record = self.vm_snapshot(&revert.vm, &revert.snapshot)?;
            self.revert_to(&revert.vm, &record)?;
        }
        self.delete_snapshots(&intent.snapshots)?;
        for file in &intent.files {
            ignore_not_found(share.remove_file(&SharePath::new(file)?))?;
        }
        for volume in &intent.volumes {
            let provider = self.provider(&volume.provider)?;
            match provider.delete_volume(&volume.id) {
                Err(e) if !e.is_not_found() => return Err(e.into()),
                _ => {}
            }
        }
        for dir in &intent.dirs {
            let dir = SharePath::new(dir)?;
            match intent.recovery {
                Recovery::Rollforward => remove_tree(share, &dir)?,
                // Emptied above unless something else was put there: then it stays.
                Recovery::Rollback => match share.remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => tracing::warn!("keeping {dir}: {e}"),
                },
            }
        }
        ignore_not_found(share.remove_file(&pending.path))
    }
}

fn ignore_not_found(result: Result<(), cvol_share::ShareError>) -> Result<(), DatastoreError> {
    match result {
        Err(e) if !e.is_not_found() => Err(e.into()),
        _ => Ok(()),
    }
}

/// Removes `dir` and everything in it, never following a symlink.
pub(crate) fn remove_tree(share: &dyn Share, dir: &SharePath) -> Result<(), DatastoreError> {
    let entries = match share.read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = dir.join(&entry.name)?;
        if entry.kind == FileKind::Dir {
            remove_tree(share, &path)?;
        } else {
            ignore_not_found(share.remove_file(&path))?;
        }
    }
    match share.remove_dir(dir) {
        Err(e) if !e.is_not_found() => Err(e.into()),
        _ => Ok(()),
    }
}
