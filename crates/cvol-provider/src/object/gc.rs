//! Garbage collection of an object pool: `cvol provider gc`.
//!
//! A chunk is garbage when no manifest kept and no snapshot names it. Of each volume's
//! manifests, the newest is kept, and so is every manifest younger than the grace
//! period (a reader may be reading it; a takeover may restate it). Nothing younger than
//! the grace period is ever deleted: a flush uploads its chunks before it commits the
//! manifest naming them, and must not find them gone in between.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use cvol_format::VolumeId;
use object_store::ObjectMeta;

use super::layout::{manifest_version, Layout, Manifest, SnapshotRecord};
use super::store::Store;
use crate::ProviderError;

/// What a collection found (and, when applied, deleted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunk objects in the pool.
    pub chunks: usize,
    /// Chunk and log objects some kept manifest or snapshot names.
    pub referenced: usize,
    /// Bytes of the referenced chunks.
    pub live_bytes: u64,
    /// Referenced log objects (small writes kept as patches), and their bytes.
    pub logs: usize,
    /// Their bytes.
    pub log_bytes: u64,
    /// Unreferenced chunks old enough to delete.
    pub garbage_chunks: Vec<String>,
    /// Their bytes.
    pub garbage_bytes: u64,
    /// Superseded manifests old enough to delete.
    pub superseded_manifests: Vec<String>,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub young_chunks: usize,
}

fn old_enough(meta: &ObjectMeta, grace: Duration) -> bool {
    SystemTime::now()
        .duration_since(meta.last_modified.into())
        .unwrap_or_default()
        >= grace
}

/// Finds garbage older than `grace`; deletes it when `apply`.
pub(crate) fn collect(
    store: &Store,
    layout: &Layout,
    grace: Duration,
    apply: bool,
) -> Result<GcReport, ProviderError> {
    let mut report = GcReport::default();
    let mut doomed_manifests = Vec::new();
    let mut referenced = BTreeSet::new();
    let mut reference = |manifest: &Manifest| referenced.extend(manifest.objects().cloned());
    for name in store.list_dirs(&layout.volumes())? {
        let Ok(id) = VolumeId::new(&name) else {
            continue;
        };
        let mut manifests: Vec<((u64, u64), ObjectMeta)> = store
            .list(&layout.manifests(&id))?
            .into_iter()
            .filter_map(|m| Some((manifest_version(m.location.filename()?)?, m)))
            .collect();
        manifests.sort_by_key(|(version, _)| *version);
        let newest = manifests.len().saturating_sub(1);
        for (i, (_, meta)) in manifests.iter().enumerate() {
            if i < newest && old_enough(meta, grace) {
                report.superseded_manifests.push(meta.location.to_string());
                doomed_manifests.push(meta.location.clone());
                continue;
            }
            if let Some(manifest) = store.get_json::<Manifest>(&meta.location)? {
                reference(&manifest);
            }
        }
        for meta in store.list(&layout.snapshots(&id))? {
            if let Some(snapshot) = store.get_json::<SnapshotRecord>(&meta.location)? {
                reference(&snapshot.manifest);
            }
        }
    }
    // Listed after the manifests: a chunk committed meanwhile is younger than the grace.
    for meta in store.list(&layout.chunks())? {
        report.chunks += 1;
        let Some(key) = layout.chunk_key(&meta.location) else {
            continue;
        };
        if referenced.contains(&key) {
            report.referenced += 1;
            if key.ends_with(".log") {
                report.logs += 1;
                report.log_bytes += meta.size;
            } else {
                report.live_bytes += meta.size;
            }
        } else if old_enough(&meta, grace) {
            report.garbage_bytes += meta.size;
            report.garbage_chunks.push(key);
        } else {
            report.young_chunks += 1;
        }
    }
    if apply {
        for key in &report.garbage_chunks {
            store.delete(&layout.chunk(key))?;
        }
        for manifest in &doomed_manifests {
            store.delete(manifest)?;
        }
    }
    Ok(report)
}
