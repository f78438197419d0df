//! Garbage collection of an object pool: `cvol provider gc`.
//!
//! A chunk or log object is garbage when no manifest kept and no snapshot names it. Of
//! each volume's manifests, the newest is kept, and so is every manifest younger than the
//! grace period (a reader may be reading it; a takeover may restate it), each with the
//! deltas and the whole manifest it builds on. Nothing younger than the grace period is
//! ever deleted: a flush uploads its chunks before it commits the manifest naming them,
//! and must not find them gone in between.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use cvol_format::VolumeId;
use object_store::ObjectMeta;

use super::layout::{is_wal, Layout, Manifest, SnapshotRecord};
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
    /// What the referenced chunks and log records hold before compression and
    /// encryption: with `live_bytes + log_bytes`, the compression ratio.
    pub logical_bytes: u64,
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
    // Bytes each referenced object holds uncompressed: a chunk's size, a log's records.
    let mut logical: HashMap<String, u64> = HashMap::new();
    let mut records = BTreeSet::new();
    let mut kept_wals = Vec::new();
    let mut reference = |manifest: &Manifest| {
        referenced.extend(manifest.objects().cloned());
        for key in manifest.chunks.values() {
            logical.insert(key.clone(), manifest.chunk_size);
        }
        for p in manifest.patches.values().flatten() {
            if records.insert((p.log.clone(), p.from)) {
                *logical.entry(p.log.clone()).or_default() += u64::from(p.len);
            }
        }
    };
    for name in store.list_dirs(&layout.volumes())? {
        let Ok(id) = VolumeId::new(&name) else {
            continue;
        };
        let manifests = super::versions(store, layout, &id)?;
        let Some(newest) = manifests.len().checked_sub(1) else {
            continue;
        };
        // Kept: the newest and every young manifest, each with the deltas and the whole
        // manifest it builds on — everything from the whole manifest at or before both.
        let first_young = manifests
            .iter()
            .position(|(_, meta)| !old_enough(meta, grace))
            .unwrap_or(newest);
        let mut keep_from = newest.min(first_young);
        let mut chain = Vec::new();
        for i in (0..=newest).rev() {
            let Some(manifest) = store.get_manifest(&manifests[i].1.location)? else {
                continue;
            };
            let whole = manifest.base.is_none();
            chain.push((i, manifest));
            if i <= keep_from && whole {
                keep_from = i;
                break;
            }
            keep_from = keep_from.min(i);
        }
        // What a reader may read: the state of the newest and of every young manifest
        // (the whole one with the deltas up to it applied). The older deltas between
        // are kept for the chain, but what only they named is garbage.
        let mut state: Option<Manifest> = None;
        while let Some((i, manifest)) = chain.pop() {
            match &mut state {
                Some(state) if manifest.base.is_some() => state.apply(&manifest),
                _ => state = Some(manifest),
            }
            if i == newest || i >= first_young {
                reference(state.as_ref().expect("set above"));
            }
        }
        // A `.wal` is a log as well: kept while a kept version is it or names its
        // records, swept with the chunks once neither holds.
        let (superseded, kept) = manifests.split_at(keep_from);
        kept_wals.extend(
            kept.iter()
                .filter_map(|(_, meta)| layout.object_key(&meta.location)),
        );
        for (_, meta) in superseded.iter().filter(|(_, m)| !is_wal(&m.location)) {
            report.superseded_manifests.push(meta.location.to_string());
            doomed_manifests.push(meta.location.clone());
        }
        for meta in store.list(&layout.snapshots(&id))? {
            if let Some(snapshot) = store.get_json::<SnapshotRecord>(&meta.location)? {
                reference(&snapshot.manifest);
            }
        }
    }
    referenced.extend(kept_wals);
    // Listed after the manifests: a chunk committed meanwhile is younger than the grace.
    let objects = store.list(&layout.chunks())?;
    for meta in objects.into_iter().chain(store.list(&layout.logs())?) {
        report.chunks += 1;
        let Some(key) = layout.object_key(&meta.location) else {
            continue;
        };
        if referenced.contains(&key) {
            report.referenced += 1;
            report.logical_bytes += logical.get(&key).copied().unwrap_or_default();
            if key.ends_with(".log") || is_wal(&meta.location) {
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
            store.delete(&layout.object(key))?;
        }
        for manifest in &doomed_manifests {
            store.delete(manifest)?;
        }
    }
    Ok(report)
}
