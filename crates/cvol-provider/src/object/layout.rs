//! Where an object pool keeps what, and the records it writes.
//!
//! ```text
//! pool.json                                   chunk size (fixed when the pool is made)
//! volumes/<vol>/volume.json                   owner, creation time; the volume exists iff this does
//! volumes/<vol>/manifests/<gen>-<seq>.json    one committed version: size and chunk map
//! volumes/<vol>/snapshots/<name>.json         a frozen manifest
//! volumes/<vol>/attachment.json               holder and generation
//! chunks/<vol>/<gen>-<uuid>                   one chunk's bytes, never overwritten
//! chunks/<vol>/<gen>-<uuid>.log               small writes uploaded early (patches), ditto
//! logs/<vol>/<gen>-<seq>.wal                  one flush's small writes and the manifest
//!                                             <gen>-<seq> that names them, ditto
//! ```
//! Generations and sequence numbers are zero-padded, so that names sort as numbers: the
//! newest manifest of a volume is the last one listed. Chunk keys name the volume and
//! generation that wrote them but not their content or place: a clone's manifest names
//! its origin's chunks until it writes its own.
//!
//! A flush that changed only a little of a chunk does not upload the chunk again: the
//! changed bytes of every such chunk go into one log object, and the manifest lists them
//! as the chunk's patches, applied over its chunk (or zeros) in order. A chunk whose
//! patches grow past a bound is uploaded whole again by the flush that would exceed it,
//! and its patches are dropped (compaction); logs nothing names any more are gc's.
//!
//! A flush's log and its manifest are one object, `logs/<vol>/<gen>-<seq>.wal` (the log's
//! records, then the manifest, then [`WAL_TRAILER`]), so a small flush commits with one
//! put: the volume's versions are its `manifests/` and its `logs/`, merged. It lies with
//! the chunks, not under the volume, because clones and snapshots name its records as
//! long as they need them, after the volume and the manifest are gone.

use std::collections::{BTreeMap, BTreeSet};

use cvol_format::{SnapshotName, VolumeId};
use object_store::path::Path;
use serde::{Deserialize, Serialize};

/// Keys of one pool, under its prefix.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: Path,
}

impl Layout {
    pub(crate) fn new(root: Path) -> Self {
        Self { root }
    }

    fn child(&self, parts: &[&str]) -> Path {
        parts
            .iter()
            .fold(self.root.clone(), |p, part| p.child(*part))
    }

    pub(crate) fn pool(&self) -> Path {
        self.child(&["pool.json"])
    }

    pub(crate) fn volumes(&self) -> Path {
        self.child(&["volumes"])
    }

    pub(crate) fn volume(&self, id: &VolumeId) -> Path {
        self.child(&["volumes", id.as_str(), "volume.json"])
    }

    pub(crate) fn volume_dir(&self, id: &VolumeId) -> Path {
        self.child(&["volumes", id.as_str()])
    }

    pub(crate) fn manifests(&self, id: &VolumeId) -> Path {
        self.child(&["volumes", id.as_str(), "manifests"])
    }

    pub(crate) fn manifest(&self, id: &VolumeId, generation: u64, seq: u64) -> Path {
        self.manifests(id)
            .child(format!("{generation:020}-{seq:020}.json"))
    }

    pub(crate) fn snapshots(&self, id: &VolumeId) -> Path {
        self.child(&["volumes", id.as_str(), "snapshots"])
    }

    pub(crate) fn snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Path {
        self.snapshots(id).child(format!("{name}.json"))
    }

    pub(crate) fn attachment(&self, id: &VolumeId) -> Path {
        self.child(&["volumes", id.as_str(), "attachment.json"])
    }

    pub(crate) fn chunks(&self) -> Path {
        self.child(&["chunks"])
    }

    /// A fresh key for a chunk written by `volume` at `generation`.
    pub(crate) fn new_chunk(&self, volume: &VolumeId, generation: u64) -> String {
        format!(
            "{volume}/{generation:020}-{}",
            uuid::Uuid::new_v4().simple()
        )
    }

    /// A fresh key for a log object written by `volume` at `generation`.
    pub(crate) fn new_log(&self, volume: &VolumeId, generation: u64) -> String {
        format!(
            "{volume}/{generation:020}-{}.log",
            uuid::Uuid::new_v4().simple()
        )
    }

    pub(crate) fn logs(&self) -> Path {
        self.child(&["logs"])
    }

    /// Where volume `id`'s flushes with small writes commit.
    pub(crate) fn volume_logs(&self, id: &VolumeId) -> Path {
        self.logs().child(id.as_str())
    }

    /// The key of the object that commits manifest `seq` of `generation` of `volume`
    /// together with its log.
    pub(crate) fn wal(&self, volume: &VolumeId, generation: u64, seq: u64) -> String {
        format!("{volume}/{generation:020}-{seq:020}{WAL}")
    }

    /// The object of key `key` (as a manifest names it): a chunk or log in `chunks/`, or
    /// a flush's log in `logs/`.
    pub(crate) fn object(&self, key: &str) -> Path {
        let top = if key.ends_with(WAL) {
            self.logs()
        } else {
            self.chunks()
        };
        key.split('/').fold(top, |p, part| p.child(part))
    }

    /// The key of an object in `chunks/` or `logs/`, the inverse of [`Layout::object`].
    pub(crate) fn object_key(&self, object: &Path) -> Option<String> {
        let parts: Vec<_> = object
            .prefix_match(&self.chunks())
            .or_else(|| object.prefix_match(&self.logs()))?
            .map(|p| p.as_ref().to_string())
            .collect();
        (parts.len() == 2).then(|| parts.join("/"))
    }
}

/// The suffix of a flush's log with its manifest.
const WAL: &str = ".wal";

/// Ends a `.wal` object: the length of the manifest before it (u32, little endian), then
/// this.
pub(crate) const WAL_TRAILER: &[u8; 4] = b"cvw1";

/// Parses a version's object name: a manifest's `<gen>-<seq>.json`, or a flush's
/// `<gen>-<seq>.wal`.
pub(crate) fn manifest_version(name: &str) -> Option<(u64, u64)> {
    let (generation, seq) = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(WAL))?
        .split_once('-')?;
    Some((generation.parse().ok()?, seq.parse().ok()?))
}

/// Whether a version's object (see [`manifest_version`]) is a `.wal`.
pub(crate) fn is_wal(path: &Path) -> bool {
    path.as_ref().ends_with(WAL)
}

/// `pool.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PoolRecord {
    pub(crate) chunk_size: u64,
    /// Objects are zstd-compressed where it pays ("zstd"), fixed when the pool is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) compression: Option<String>,
    /// Objects are encrypted, fixed when the pool is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) encryption: Option<EncryptionRecord>,
}

/// [`EncryptionRecord::cipher`] of a pool made since XAES-256-GCM.
pub(crate) const XAES: &str = "xaes-256-gcm";
/// [`EncryptionRecord::cipher`] of a pool made before.
pub(crate) const XCHACHA: &str = "xchacha20poly1305";

/// How an encrypted pool's objects are encrypted; never the key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EncryptionRecord {
    /// The cipher the pool was made with and its check sealed with ([`XAES`] or
    /// [`XCHACHA`]).
    pub(crate) cipher: String,
    /// The check text sealed under the key (hex): a wrong key fails to open it.
    pub(crate) check: String,
}

/// `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VolumeRecord {
    pub(crate) owner: String,
    pub(crate) created_unix_ms: u64,
}

/// One committed version of a volume: its size and which chunk holds each chunk-sized
/// piece (pieces without a chunk read as zeros).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Manifest {
    pub(crate) size: u64,
    pub(crate) chunk_size: u64,
    pub(crate) generation: u64,
    pub(crate) seq: u64,
    pub(crate) chunks: BTreeMap<u64, String>,
    /// Writes over a chunk since it was last uploaded whole, oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) patches: BTreeMap<u64, Vec<Patch>>,
    /// A delta: only what changed since manifest `base` (the previous sequence number of
    /// the same generation) — chunks uploaded whole (their patches dropped), patches
    /// appended, chunks emptied ([`Manifest::apply`]). `None` for a whole manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<u64>,
    /// In a delta, the chunks that became zeros.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub(crate) holes: BTreeSet<u64>,
}

/// `len` bytes at `at` in a chunk, kept in log object `log` from byte `from` (as they
/// are, or as one sealed record of `stored` bytes, named `LOG@FROM`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Patch {
    pub(crate) at: u32,
    pub(crate) len: u32,
    pub(crate) log: String,
    pub(crate) from: u64,
    /// In a pool that seals its objects, the bytes of the sealed record at `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stored: Option<u32>,
}

impl Patch {
    /// The bytes of its record in the log.
    pub(crate) fn stored_len(&self) -> u32 {
        self.stored.unwrap_or(self.len)
    }

    /// Where its record lies in the log.
    pub(crate) fn record(&self) -> std::ops::Range<u64> {
        self.from..self.from + u64::from(self.stored_len())
    }

    /// The name a record of `log` at `from` is sealed under (its associated data), so
    /// that a record moved within its log or to another fails to open.
    pub(crate) fn sealed_name(log: &str, from: u64) -> String {
        format!("{log}@{from}")
    }

    /// The name its record is kept under in a disk cache.
    pub(crate) fn cache_name(&self) -> String {
        format!("{}@{}+{}", self.log, self.from, self.stored_len())
    }
}

impl Manifest {
    /// The chunks that hold bytes: with a stored chunk, patches, or both.
    pub(crate) fn stored(&self) -> BTreeSet<u64> {
        self.chunks
            .keys()
            .chain(self.patches.keys())
            .copied()
            .collect()
    }

    /// Every object the manifest names: chunks and logs.
    pub(crate) fn objects(&self) -> impl Iterator<Item = &String> {
        self.chunks.values().chain(
            self.patches
                .values()
                .flat_map(|patches| patches.iter().map(|p| &p.log)),
        )
    }

    /// Drops what lies in chunks at or after `count`.
    pub(crate) fn truncate_chunks(&mut self, count: u64) {
        self.chunks.retain(|&index, _| index < count);
        self.patches.retain(|&index, _| index < count);
        self.holes.retain(|&index| index < count);
    }

    /// An empty delta over this manifest's state: what [`Manifest::hole`],
    /// [`Manifest::set_chunk`] and [`Manifest::append`] then record.
    pub(crate) fn delta(size: u64, chunk_size: u64, generation: u64) -> Self {
        Self {
            size,
            chunk_size,
            generation,
            seq: 0,
            chunks: BTreeMap::new(),
            patches: BTreeMap::new(),
            base: None,
            holes: BTreeSet::new(),
        }
    }

    /// Records (in a delta) that chunk `index` became zeros.
    pub(crate) fn hole(&mut self, index: u64) {
        self.chunks.remove(&index);
        self.patches.remove(&index);
        self.holes.insert(index);
    }

    /// Records (in a delta) that chunk `index` was uploaded whole as `key`.
    pub(crate) fn set_chunk(&mut self, index: u64, key: String) {
        self.holes.remove(&index);
        self.patches.remove(&index);
        self.chunks.insert(index, key);
    }

    /// Records (in a delta) patches over chunk `index`.
    pub(crate) fn append(&mut self, index: u64, patches: impl IntoIterator<Item = Patch>) {
        self.patches.entry(index).or_default().extend(patches);
    }

    /// Adds the delta `later`, recorded after this one, to it.
    pub(crate) fn then(&mut self, later: &Manifest) {
        for &index in &later.holes {
            self.hole(index);
        }
        for (&index, key) in &later.chunks {
            self.set_chunk(index, key.clone());
        }
        for (&index, patches) in &later.patches {
            self.append(index, patches.iter().cloned());
        }
        self.size = later.size;
    }

    /// This whole manifest's state with the delta `delta` applied: emptied chunks first,
    /// then chunks uploaded whole, then appended patches (the order a delta is recorded
    /// in keeps), then the delta's size.
    pub(crate) fn apply(&mut self, delta: &Manifest) {
        for index in &delta.holes {
            self.chunks.remove(index);
            self.patches.remove(index);
        }
        for (&index, key) in &delta.chunks {
            self.chunks.insert(index, key.clone());
            self.patches.remove(&index);
        }
        for (&index, patches) in &delta.patches {
            self.patches
                .entry(index)
                .or_default()
                .extend(patches.iter().cloned());
        }
        self.size = delta.size;
        self.generation = delta.generation;
        self.seq = delta.seq;
        self.truncate_chunks(self.size.div_ceil(self.chunk_size));
    }

    /// Checks what a parser cannot: chunk indexes within the size.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.chunk_size == 0 || !self.chunk_size.is_power_of_two() {
            return Err(format!(
                "chunk size {} is not a power of two",
                self.chunk_size
            ));
        }
        let count = self.size.div_ceil(self.chunk_size);
        if let Some(&last) = self.stored().last() {
            if last >= count {
                return Err(format!(
                    "chunk {last} lies beyond the end ({} bytes)",
                    self.size
                ));
            }
        }
        for (index, patches) in &self.patches {
            for p in patches {
                if p.len == 0 || u64::from(p.at) + u64::from(p.len) > self.chunk_size {
                    return Err(format!(
                        "a patch of chunk {index} ({} bytes at {}) does not fit in a chunk",
                        p.len, p.at
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A snapshot: a manifest frozen at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SnapshotRecord {
    pub(crate) created_unix_ms: u64,
    pub(crate) manifest: Manifest,
}

/// `attachment.json`: kept after a detach (holder none) so that generations only grow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AttachmentRecord {
    pub(crate) holder: Option<String>,
    pub(crate) generation: u64,
}
