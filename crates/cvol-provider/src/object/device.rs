//! The data plane of an object-pool volume: chunks cached in memory, written back on
//! flush.
//!
//! Writes change cached chunks and note which bytes they changed ("dirty"); `flush`
//! uploads what changed, then commits a manifest naming it. A chunk changed only a little
//! is not uploaded again: the changed bytes of all such chunks go into one log object,
//! named in the manifest as patches over their chunks, so a 4 KiB write and a flush upload
//! a few KiB, not the chunk. A chunk whose patches would pass [`MAX_PATCHES`] or a quarter
//! of a chunk, or that is all zeros, is uploaded whole (or dropped) instead, its patches
//! with it. Nothing is overwritten in place, so a crash at any moment leaves the last
//! committed manifest, whole. The cache holds at most `cache_bytes`: clean chunks are
//! evicted least recently used first, and when dirty chunks alone exceed it they are
//! uploaded early (committed by the next flush).
//!
//! A flush's small writes and its manifest are one object, so such a flush costs one put
//! and the fence check after it. A flush succeeds only while this device's attachment
//! generation is the volume's newest, checked after the commit: a takeover raises the
//! generation before it reads the volume and restates it under the new generation, so a
//! commit that the check after it still sees as current was made before the takeover
//! read the volume, and is part of what the new holder has. A commit a fenced device
//! makes anyway sorts below that restatement, and its flush fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cvol_format::VolumeId;
use futures::StreamExt;
use object_store::PutMode;

use super::dirty::Dirty;
use super::layout::{AttachmentRecord, Layout, Manifest, Patch};
use super::store::Store;
use crate::{BlockDevice, BlockError, BlockExtent};

/// Uploads in flight at once, and chunks read ahead of a sequential reader.
const PARALLEL: usize = 8;

/// Reads in a row, each in the chunk of the one before or the next, that make a reader
/// sequential (and its next chunks read ahead).
const SEQUENTIAL: u32 = 3;

/// Patches a chunk may have before a flush uploads it whole again: a cold read of the
/// chunk costs one request for the chunk and one per patch (in parallel), and random
/// 4 KiB writes pay a 4 MiB chunk's upload once per this many.
pub(crate) const MAX_PATCHES: usize = 64;

/// Deltas committed between whole manifests: what a reader of the volume's newest state
/// reads at most, beside the whole manifest.
const MAX_DELTAS: u64 = 64;

struct Cached {
    data: Arc<Vec<u8>>,
    /// Bytes written since the chunk was last uploaded (or taken by an upload).
    dirty: Dirty,
    /// An upload has this chunk's bytes in flight: it is not evicted meanwhile, since
    /// what the store holds does not have them yet.
    uploading: bool,
    /// When this entry was made: an upload applies to the entry it took its bytes from,
    /// not to one made after a discard dropped that.
    born: u64,
    used: u64,
}

impl Cached {
    fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}

/// What an upload puts under one key.
enum Put {
    /// A whole chunk's bytes, sealed where its put runs: several chunks are sealed at
    /// once (compressed, encrypted), and while others are on the wire.
    Chunk(Arc<Vec<u8>>),
    /// Bytes as they go to the store (a log, whose records are sealed one by one).
    Ready(Bytes),
}

/// Where a chunk's bytes are stored: its chunk object (zeros without), then its patches.
#[derive(Clone, PartialEq, Eq)]
struct Source {
    base: Option<String>,
    patches: Vec<Patch>,
}

struct State {
    /// The chunk map and patches as of the last upload: committed, or uploaded early.
    chunks: BTreeMap<u64, String>,
    patches: BTreeMap<u64, Vec<Patch>>,
    cache: HashMap<u64, Cached>,
    clock: u64,
    seq: u64,
    /// The chunk of the last read, and how many reads in a row were in the chunk of the
    /// one before or the next.
    last_read: Option<u64>,
    streak: u32,
    /// Chunks being downloaded, so that a chunk is fetched once however many readers
    /// (and the readahead) want it at the same time.
    fetching: HashMap<u64, Arc<Fetch>>,
    /// Changed since the last commit.
    pending: bool,
    /// Changes made so far (writes, discards, resizes), counted.
    changed: u64,
    /// Changes up to this count are in a commit whose fence check passed.
    durable: u64,
    /// What changed in the chunk map and patches since the last commit, as a delta.
    changes: Manifest,
    /// Deltas committed since the last whole manifest; `None` while this generation has
    /// no manifest a delta could build on.
    deltas: Option<u64>,
}

/// A download in flight; waiters wake when it is done.
#[derive(Default)]
struct Fetch {
    /// `None` while in flight; then `Ok` (the chunk is in the cache, unless it changed
    /// meanwhile) or the error, said for people.
    outcome: Mutex<Option<Result<(), String>>>,
    done: std::sync::Condvar,
}

impl Fetch {
    fn finish(&self, outcome: Result<(), String>) {
        *self.outcome.lock().expect("fetch lock") = Some(outcome);
        self.done.notify_all();
    }

    fn wait(&self) -> Result<(), String> {
        let mut outcome = self.outcome.lock().expect("fetch lock");
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self.done.wait(outcome).expect("fetch lock");
        }
    }
}

impl State {
    /// Caches `data` as the clean (as stored) bytes of chunk `index`.
    fn insert_clean(&mut self, index: u64, data: Arc<Vec<u8>>) {
        self.clock += 1;
        let used = self.clock;
        self.cache.insert(
            index,
            Cached {
                data,
                dirty: Dirty::default(),
                uploading: false,
                born: used,
                used,
            },
        );
    }

    /// Where chunk `index` is stored; `None` when it reads as zeros.
    fn source(&self, index: u64) -> Option<Source> {
        let base = self.chunks.get(&index).cloned();
        let patches = self.patches.get(&index).cloned().unwrap_or_default();
        (base.is_some() || !patches.is_empty()).then_some(Source { base, patches })
    }

    /// Whether chunk `index` holds no bytes anywhere.
    fn is_hole(&self, index: u64) -> bool {
        !self.chunks.contains_key(&index)
            && !self.patches.contains_key(&index)
            && self
                .cache
                .get(&index)
                .is_none_or(|c| c.data.iter().all(|&b| b == 0))
    }

    /// The streak a read of chunk `index` makes: reads in a row, each in the chunk of the
    /// one before or the next. [`SEQUENTIAL`] of them make a sequential reader (readers
    /// keep several requests of one chunk in flight; random reads land there now and
    /// then, and must not load whole chunks ahead).
    fn streak_after(&self, index: u64) -> u32 {
        let near = self
            .last_read
            .is_some_and(|last| index == last || index == last + 1);
        if near {
            self.streak.saturating_add(1)
        } else {
            0
        }
    }

    fn note_read(&mut self, index: u64, streak: u32) {
        self.last_read = Some(index);
        self.streak = streak;
    }

    fn touch(&mut self, index: u64) {
        self.clock += 1;
        if let Some(c) = self.cache.get_mut(&index) {
            c.used = self.clock;
        }
    }
}

/// An attached object-pool volume.
pub(crate) struct ObjectBlockDevice {
    store: Store,
    layout: Layout,
    volume: VolumeId,
    generation: u64,
    /// Changes only through [`ObjectBlockDevice::resize`].
    size: std::sync::atomic::AtomicU64,
    chunk_size: u64,
    cache_bytes: usize,
    state: Arc<Mutex<State>>,
    /// One flush at a time, so that manifests are committed in order.
    flushing: Mutex<()>,
    /// One upload at a time, so that a flush's upload waits for an early one in flight
    /// and commits what it uploaded.
    uploading: Mutex<()>,
    /// Chunk loads served from the cache, and those that waited on the store.
    cache_hits: metrics::Counter,
    cache_misses: metrics::Counter,
    /// Reads served from the disk cache without loading their chunk.
    disk_cache_hits: metrics::Counter,
}

/// Bytes taken by the chunks at `indexes` of a volume of `size` bytes.
pub(crate) fn chunk_bytes<'a>(
    indexes: impl Iterator<Item = &'a u64>,
    chunk_size: u64,
    size: u64,
) -> u64 {
    indexes
        .map(|&i| chunk_size.min(size.saturating_sub(i * chunk_size)))
        .sum()
}

/// What an upload does with one dirty chunk.
enum Upload {
    /// All zeros: no object, and no patches.
    Zeros,
    /// Uploaded whole, to this key; its patches are dropped.
    Whole(String, Arc<Vec<u8>>),
    /// Its changed bytes, as patches in this upload's log.
    Patches(Vec<Patch>),
}

impl Upload {
    /// Records what it does to chunk `index` in the delta `changes`.
    fn record(&self, index: u64, changes: &mut Manifest) {
        match self {
            Upload::Zeros => changes.hole(index),
            Upload::Whole(key, _) => changes.set_chunk(index, key.clone()),
            Upload::Patches(new) => changes.append(index, new.iter().cloned()),
        }
    }
}

/// What an upload took from the cache: each dirty chunk's index, entry (its `born`),
/// dirty bytes and what becomes of it; and the log of those kept as patches.
struct Taken {
    chunks: Vec<(u64, u64, Dirty, Upload)>,
    log_key: String,
    log: Bytes,
}

impl Taken {
    /// The puts of the chunks uploaded whole.
    fn chunk_puts(&self) -> Vec<(String, Put)> {
        self.chunks
            .iter()
            .filter_map(|(_, _, _, u)| match u {
                Upload::Whole(key, data) => Some((key.clone(), Put::Chunk(data.clone()))),
                _ => None,
            })
            .collect()
    }
}

fn io(message: String) -> BlockError {
    BlockError::Io(std::io::Error::other(message))
}

impl ObjectBlockDevice {
    /// The device of attachment `generation`, starting from `manifest`.
    pub(crate) fn new(
        store: Store,
        layout: Layout,
        volume: VolumeId,
        generation: u64,
        manifest: Manifest,
        cache_bytes: usize,
    ) -> Self {
        let ours = manifest.generation == generation;
        let seq = if ours { manifest.seq } else { 0 };
        let changes = Manifest::delta(manifest.size, manifest.chunk_size, generation);
        Self {
            cache_hits: metrics::counter!("cvol_object_cache_hits_total", "volume" => volume.to_string()),
            cache_misses: metrics::counter!("cvol_object_cache_misses_total", "volume" => volume.to_string()),
            disk_cache_hits: metrics::counter!("cvol_object_disk_cache_reads_total", "volume" => volume.to_string()),
            store,
            layout,
            volume,
            generation,
            size: manifest.size.into(),
            chunk_size: manifest.chunk_size,
            cache_bytes,
            state: Arc::new(Mutex::new(State {
                chunks: manifest.chunks,
                patches: manifest.patches,
                cache: HashMap::new(),
                clock: 0,
                seq,
                last_read: None,
                streak: 0,
                fetching: HashMap::new(),
                pending: false,
                changed: 0,
                durable: 0,
                changes,
                deltas: ours.then_some(0),
            })),
            flushing: Mutex::new(()),
            uploading: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("device state lock")
    }

    /// The bytes of chunk `index` as stored (zeros if it has none), from the cache or
    /// the store.
    fn load(&self, index: u64) -> Result<Arc<Vec<u8>>, BlockError> {
        let mut waited = false;
        loop {
            let fetch = {
                let mut state = self.lock();
                if state.cache.contains_key(&index) {
                    state.touch(index);
                    if !waited {
                        self.cache_hits.increment(1);
                    }
                    return Ok(state.cache[&index].data.clone());
                }
                match state.fetching.get(&index).cloned() {
                    Some(fetch) => fetch,
                    None => match state.source(index) {
                        Some(source) => self.start_fetch(&mut state, index, source),
                        None => {
                            let zeros = Arc::new(vec![0u8; self.chunk_size as usize]);
                            state.insert_clean(index, zeros.clone());
                            return Ok(zeros);
                        }
                    },
                }
            };
            if !waited {
                self.cache_misses.increment(1);
                waited = true;
            }
            // Once it is done the chunk is cached (or changed meanwhile): look again.
            fetch.wait().map_err(io)?;
        }
    }

    /// Starts downloading chunk `index`, stored at `source`; whoever wants it waits on
    /// the returned fetch. The chunk is cached when it arrives, unless a write, discard
    /// or upload changed it meanwhile.
    fn start_fetch(&self, state: &mut State, index: u64, source: Source) -> Arc<Fetch> {
        let fetch = Arc::new(Fetch::default());
        state.fetching.insert(index, fetch.clone());
        let download = self.download(source.clone());
        let (shared, done, store) = (self.state.clone(), fetch.clone(), self.store.clone());
        let volume = self.layout.volume_dir(&self.volume);
        self.store.runtime.spawn(async move {
            let outcome = download.await;
            let mut state = shared.lock().expect("device state lock");
            state.fetching.remove(&index);
            let outcome = outcome
                .map(|data| {
                    if state.source(index).as_ref() == Some(&source)
                        && !state.cache.contains_key(&index)
                    {
                        state.insert_clean(index, Arc::new(data));
                    }
                })
                .map_err(|e| store.error("read", &volume, e.into()).to_string());
            drop(state);
            done.finish(outcome);
        });
        fetch
    }

    /// The bytes of a chunk stored at `source`: its chunk object (or zeros), then each
    /// patch read from its log and laid over it, in order; the patches' reads in
    /// parallel. A chunk or patch of the wrong length is an error, never served.
    fn download(
        &self,
        source: Source,
    ) -> impl std::future::Future<Output = Result<Vec<u8>, object_store::Error>> + Send + 'static
    {
        let (inner, layout, chunk_size, disk, codec) = (
            self.store.inner.clone(),
            self.layout.clone(),
            self.chunk_size,
            self.store.disk_cache.clone(),
            self.store.codec.clone(),
        );
        let wrong = |what: String| object_store::Error::Generic {
            store: "cvol",
            source: what.into(),
        };
        self.store.timed("get", async move {
            let cached = |name: &str| disk.as_ref().and_then(|d| d.get(name));
            let keep = |name: &str, bytes: &[u8]| {
                if let Some(d) = &disk {
                    d.put(name, bytes);
                }
            };
            let mut data = match &source.base {
                Some(key) => match disk
                    .as_ref()
                    .and_then(|d| d.get_chunk(key, chunk_size as usize))
                {
                    Some(plain) => plain,
                    None => {
                        let path = layout.object(key);
                        let stored = inner.get(&path).await?.bytes().await?;
                        let bytes = codec
                            .open(key, &stored, chunk_size as usize)
                            .map_err(|e| wrong(format!("chunk {path}: {e}")))?;
                        if bytes.len() as u64 != chunk_size {
                            return Err(wrong(format!(
                                "chunk {path} has {} bytes, not {chunk_size}",
                                bytes.len()
                            )));
                        }
                        if let Some(d) = &disk {
                            d.put_chunk(key, &bytes);
                        }
                        bytes
                    }
                },
                None => vec![0u8; chunk_size as usize],
            };
            let reads = source.patches.iter().map(|p| {
                let (inner, path) = (inner.clone(), layout.object(&p.log));
                let (range, name) = (p.record(), p.cache_name());
                let hit = cached(&name);
                let codec = codec.clone();
                let record = Patch::sealed_name(&p.log, p.from);
                async move {
                    let stored = match hit {
                        Some(bytes) => bytes,
                        None => inner.get_range(&path, range).await?.to_vec(),
                    };
                    let bytes = codec
                        .open(&record, &stored, p.len as usize)
                        .map_err(|e| wrong(format!("log {path} at {}: {e}", p.from)))?;
                    if bytes.len() == p.len as usize {
                        keep(&name, &stored);
                    }
                    Ok::<_, object_store::Error>((path, bytes))
                }
            });
            let pieces = futures::future::try_join_all(reads).await?;
            for (p, (path, bytes)) in source.patches.iter().zip(pieces) {
                let (at, len) = (p.at as usize, p.len as usize);
                if bytes.len() != len || at + len > data.len() {
                    return Err(wrong(format!(
                        "log {path}: {} bytes at {}, not the {len} the manifest names",
                        bytes.len(),
                        p.from
                    )));
                }
                data[at..at + len].copy_from_slice(&bytes);
            }
            Ok(data)
        })
    }

    /// Notes a read of chunk `index`; whether its reader is sequential.
    fn note_read(&self, index: u64) -> bool {
        let mut state = self.lock();
        let streak = state.streak_after(index);
        state.note_read(index, streak);
        streak >= SEQUENTIAL
    }

    /// Reads bytes `at..at + out.len()` of chunk `index` from the disk cache alone, if
    /// the chunk is not in memory and the cache has every piece those bytes need: a
    /// random read after a restart then costs a few KiB of local disk, not a chunk's
    /// download (or its read from the cache) into memory.
    fn read_from_disk_cache(&self, index: u64, at: usize, out: &mut [u8]) -> bool {
        let Some(disk) = &self.store.disk_cache else {
            return false;
        };
        let source = {
            let state = self.lock();
            if state.cache.contains_key(&index) || state.fetching.contains_key(&index) {
                return false;
            }
            state.source(index)
        };
        let Some(source) = source else {
            return false;
        };
        let chunk_size = self.chunk_size as usize;
        match &source.base {
            Some(key) => {
                if !disk.read_chunk(key, chunk_size, at, out) {
                    return false;
                }
            }
            None => out.fill(0),
        }
        for p in &source.patches {
            let (start, end) = (p.at as usize, (p.at + p.len) as usize);
            let (lo, hi) = (start.max(at), end.min(at + out.len()));
            if lo >= hi {
                continue;
            }
            // A piece that is missing or does not open: the whole load says why.
            let Some(stored) = disk.get(&p.cache_name()) else {
                return false;
            };
            let record = Patch::sealed_name(&p.log, p.from);
            match self.store.codec.open(&record, &stored, p.len as usize) {
                Ok(bytes) if bytes.len() == p.len as usize => {
                    out[lo - at..hi - at].copy_from_slice(&bytes[lo - start..hi - start]);
                }
                _ => return false,
            }
        }
        self.disk_cache_hits.increment(1);
        true
    }

    /// Starts downloading the `PARALLEL` chunks after `index` that are stored, not cached
    /// and not already on their way.
    fn read_ahead(&self, index: u64) {
        let count = self.size().div_ceil(self.chunk_size);
        let mut state = self.lock();
        for next in index + 1..(index + 1 + PARALLEL as u64).min(count) {
            if state.cache.contains_key(&next) || state.fetching.contains_key(&next) {
                continue;
            }
            if let Some(source) = state.source(next) {
                self.start_fetch(&mut state, next, source);
            }
        }
    }

    /// Applies `change` to bytes `at..at + n` of chunk `index`, marking them dirty.
    fn modify(
        &self,
        index: u64,
        at: usize,
        n: usize,
        change: impl FnOnce(&mut [u8]),
    ) -> Result<(), BlockError> {
        let full = self.load(index)?;
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.cache.entry(index).or_insert(Cached {
            data: full,
            dirty: Dirty::default(),
            uploading: false,
            born: clock,
            used: clock,
        });
        change(&mut Arc::make_mut(&mut entry.data)[at..at + n]);
        // Chunks are at most 64 MiB (checked when the pool is made): offsets fit in u32.
        entry.dirty.add(at as u32, (at + n) as u32);
        entry.used = clock;
        state.pending = true;
        state.changed += 1;
        Ok(())
    }

    /// Keeps the cache within its budget: evicts clean chunks, least recently used
    /// first, and uploads dirty ones when they alone fill it.
    fn trim(&self) -> Result<(), BlockError> {
        let dirty_bytes = {
            let mut state = self.lock();
            // Every cached chunk is one chunk long.
            let chunk = self.chunk_size as usize;
            let mut total = state.cache.len() * chunk;
            if total <= self.cache_bytes {
                return Ok(());
            }
            let mut clean: Vec<(u64, u64)> = state
                .cache
                .iter()
                .filter(|(_, c)| !c.is_dirty() && !c.uploading)
                .map(|(&i, c)| (c.used, i))
                .collect();
            clean.sort_unstable();
            for (_, index) in clean {
                if total <= self.cache_bytes {
                    break;
                }
                state.cache.remove(&index);
                total -= chunk;
            }
            total
        };
        if dirty_bytes > self.cache_bytes {
            self.upload_dirty()?;
        }
        Ok(())
    }

    /// Uploads what every dirty chunk changed: whole chunks to new keys, small changes as
    /// patches in one new log object; records them in the chunk map and patches (not yet
    /// committed). Writes made meanwhile stay dirty for the next upload.
    fn upload_dirty(&self) -> Result<(), BlockError> {
        let _one = self.uploading.lock().expect("upload lock");
        let taken = self.take_dirty(self.layout.new_log(&self.volume, self.generation));
        let mut puts = taken.chunk_puts();
        if !taken.log.is_empty() {
            puts.push((taken.log_key.clone(), Put::Ready(taken.log.clone())));
        }
        let uploaded = self.put_all(puts);
        self.settle(taken, uploaded.is_ok(), true);
        uploaded
    }

    /// Takes what every dirty chunk changed from the cache, and decides what becomes of
    /// it: whole chunks get new keys, small changes become patches whose records go into
    /// a log to be stored as `log_key`. The chunks stay cached (not evicted) until
    /// [`ObjectBlockDevice::settle`].
    fn take_dirty(&self, log_key: String) -> Taken {
        let mut log = Vec::new();
        let mut chunks = Vec::new();
        let mut state = self.lock();
        let State { cache, patches, .. } = &mut *state;
        for (&index, c) in cache.iter_mut().filter(|(_, c)| c.is_dirty()) {
            let dirty = std::mem::take(&mut c.dirty);
            c.uploading = true;
            let old = patches.get(&index).map_or(&[][..], Vec::as_slice);
            let old_bytes: u64 = old.iter().map(|p| u64::from(p.len)).sum();
            let upload = if c.data.iter().all(|&b| b == 0) {
                Upload::Zeros
            } else if old.len() + dirty.len() > MAX_PATCHES
                || old_bytes + dirty.bytes() > self.chunk_size / 4
            {
                Upload::Whole(
                    self.layout.new_chunk(&self.volume, self.generation),
                    c.data.clone(),
                )
            } else {
                let codec = &self.store.codec;
                let mut new = Vec::new();
                for (start, end) in dirty.ranges() {
                    let from = log.len() as u64;
                    let bytes = &c.data[start as usize..end as usize];
                    let record = codec.seal(&Patch::sealed_name(&log_key, from), bytes);
                    new.push(Patch {
                        at: start,
                        len: end - start,
                        log: log_key.clone(),
                        from,
                        stored: (!codec.is_raw()).then_some(record.len() as u32),
                    });
                    log.extend_from_slice(&record);
                }
                Upload::Patches(new)
            };
            chunks.push((index, c.born, dirty, upload));
        }
        Taken {
            chunks,
            log_key,
            log: log.into(),
        }
    }

    /// Ends an upload: once `stored`, writes what it stored through to the disk cache and
    /// records it in the chunk map and patches (and, if `record`, in the changes the next
    /// commit names); otherwise the chunks are dirty again. A chunk discarded (or cut off
    /// by a resize) meanwhile is left alone: that change wins.
    fn settle(&self, taken: Taken, stored: bool, record: bool) {
        if let (Some(disk), true) = (&self.store.disk_cache, stored) {
            // Written through: a restarted host reads what it wrote from local disk.
            // (Whole chunks were, by their puts.)
            for (_, _, _, upload) in &taken.chunks {
                match upload {
                    Upload::Whole(..) => {}
                    Upload::Patches(patches) => {
                        for p in patches {
                            let record = p.record();
                            disk.put(
                                &p.cache_name(),
                                &taken.log[record.start as usize..record.end as usize],
                            );
                        }
                    }
                    Upload::Zeros => {}
                }
            }
        }
        let mut state = self.lock();
        for (index, born, dirty, upload) in taken.chunks {
            let Some(c) = state.cache.get_mut(&index).filter(|c| c.born == born) else {
                continue;
            };
            c.uploading = false;
            if !stored {
                c.dirty.merge(&dirty);
                continue;
            }
            if record {
                upload.record(index, &mut state.changes);
            }
            match upload {
                Upload::Zeros => {
                    state.chunks.remove(&index);
                    state.patches.remove(&index);
                }
                Upload::Whole(key, _) => {
                    state.chunks.insert(index, key);
                    state.patches.remove(&index);
                }
                Upload::Patches(new) => state.patches.entry(index).or_default().extend(new),
            }
        }
    }

    /// Puts new objects (chunks, a log), several at a time. A chunk is written through to
    /// the disk cache where it is sealed, in parallel with the other puts: its key is new,
    /// so if its put fails, nothing ever names what the cache kept of it.
    fn put_all(&self, puts: Vec<(String, Put)>) -> Result<(), BlockError> {
        let store = self.store.inner.clone();
        let puts = puts
            .into_iter()
            .map(|(key, put)| {
                let (store, path) = (store.clone(), self.layout.object(&key));
                let (codec, timer) = (self.store.codec.clone(), self.store.clone());
                let disk = self.store.disk_cache.clone();
                async move {
                    let data = match put {
                        Put::Ready(bytes) => bytes,
                        Put::Chunk(plain) => tokio::task::spawn_blocking(move || {
                            if let Some(disk) = disk {
                                disk.put_chunk(&key, &plain);
                            }
                            Bytes::from(codec.seal(&key, &plain))
                        })
                        .await
                        .map_err(|e| object_store::Error::Generic {
                            store: "cvol",
                            source: e.into(),
                        })?,
                    };
                    let put = store.put_opts(
                        &path,
                        data.into(),
                        object_store::PutOptions {
                            mode: PutMode::Create,
                            ..Default::default()
                        },
                    );
                    timer.timed("put", put).await.map(|_| ())
                }
            })
            .collect::<Vec<_>>();
        self.store
            .block(async move {
                let results: Vec<_> = futures::stream::iter(puts)
                    .buffer_unordered(PARALLEL)
                    .collect()
                    .await;
                results.into_iter().collect::<Result<Vec<()>, _>>()
            })
            .map(|_| ())
            .map_err(|e| {
                io(self
                    .store
                    .error("upload chunks of", &self.layout.volume_dir(&self.volume), e)
                    .to_string())
            })
    }

    /// Bytes of the chunks the volume holds, written ones not yet uploaded included (the
    /// last chunk counts only up to the end).
    pub(crate) fn stored_bytes(&self) -> u64 {
        let state = self.lock();
        let stored: std::collections::BTreeSet<u64> = state
            .chunks
            .keys()
            .chain(state.patches.keys())
            .chain(
                state
                    .cache
                    .iter()
                    .filter(|(_, c)| c.is_dirty())
                    .map(|(index, _)| index),
            )
            .copied()
            .collect();
        chunk_bytes(stored.iter(), self.chunk_size, self.size())
    }

    /// Changes the size; the next flush commits it. What lies beyond a smaller size is
    /// dropped, and reads as zeros if the size grows again.
    pub(crate) fn resize(&self, size: u64) {
        let mut state = self.lock();
        let count = size.div_ceil(self.chunk_size);
        state.chunks.retain(|&index, _| index < count);
        state.patches.retain(|&index, _| index < count);
        state.changes.truncate_chunks(count);
        state.cache.retain(|&index, _| index < count);
        if let Some(tail) = state.cache.get_mut(&(count.saturating_sub(1))) {
            let keep = (size - (count - 1) * self.chunk_size) as usize;
            if tail.data[keep..].iter().any(|&b| b != 0) {
                Arc::make_mut(&mut tail.data)[keep..].fill(0);
                tail.dirty.add(keep as u32, self.chunk_size as u32);
            }
        }
        state.pending = true;
        state.changed += 1;
        self.size.store(size, std::sync::atomic::Ordering::Release);
    }

    /// Fails unless this device's generation is the volume's newest.
    fn check_fence(&self) -> Result<(), BlockError> {
        let path = self.layout.attachment(&self.volume);
        let record: Option<AttachmentRecord> =
            self.store.get_json(&path).map_err(|e| io(e.to_string()))?;
        let current = record.map_or(0, |r| r.generation);
        if current != self.generation {
            return Err(BlockError::Fenced {
                generation: self.generation,
                current,
            });
        }
        Ok(())
    }

    fn chunks_of(&self, offset: u64, len: u64) -> impl Iterator<Item = (u64, usize, usize)> {
        let cs = self.chunk_size;
        let end = offset + len;
        (offset / cs..end.div_ceil(cs)).map(move |index| {
            let start = (index * cs).max(offset);
            let stop = ((index + 1) * cs).min(end);
            (
                index,
                (start - index * cs) as usize,
                (stop - start) as usize,
            )
        })
    }
}

impl BlockDevice for ObjectBlockDevice {
    fn size(&self) -> u64 {
        self.size.load(std::sync::atomic::Ordering::Acquire)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0;
        for (index, at, n) in self.chunks_of(offset, buf.len() as u64) {
            let sequential = self.note_read(index);
            let out = &mut buf[done..done + n];
            if sequential {
                self.read_ahead(index);
            } else if self.read_from_disk_cache(index, at, out) {
                done += n;
                continue;
            }
            let data = self.load(index)?;
            out.copy_from_slice(&data[at..at + n]);
            done += n;
        }
        self.trim()
    }

    fn read_now(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), BlockError>> {
        if let Err(e) = self.check_range(offset, buf.len() as u64) {
            return Some(Err(e));
        }
        // Reads within one chunk: the small ones servers ask about.
        let mut chunks = self.chunks_of(offset, buf.len() as u64);
        let (index, at, n) = chunks.next()?;
        if chunks.next().is_some() {
            return None;
        }
        // Noted only when served here: otherwise `read_at` notes it.
        let (cached, streak) = {
            let mut state = self.lock();
            let streak = state.streak_after(index);
            let data = state.cache.get(&index).map(|c| c.data.clone());
            if data.is_some() {
                state.touch(index);
                state.note_read(index, streak);
            }
            (data, streak)
        };
        let sequential = streak >= SEQUENTIAL;
        match cached {
            Some(data) => {
                if sequential {
                    self.read_ahead(index);
                }
                self.cache_hits.increment(1);
                buf.copy_from_slice(&data[at..at + n]);
                Some(Ok(()))
            }
            None if !sequential && self.read_from_disk_cache(index, at, buf) => {
                self.lock().note_read(index, streak);
                Some(Ok(()))
            }
            None => None,
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        let mut done = 0;
        for (index, at, n) in self.chunks_of(offset, buf.len() as u64) {
            let part = &buf[done..done + n];
            self.modify(index, at, n, |bytes| bytes.copy_from_slice(part))?;
            done += n;
        }
        self.trim()
    }

    fn flush(&self) -> Result<(), BlockError> {
        let (target, seen) = {
            let state = self.lock();
            (state.changed, state.durable)
        };
        let _one = self.flushing.lock().expect("flush lock");
        let (pending, seq, covering) = {
            let mut state = self.lock();
            if state.durable >= target && state.durable > seen {
                // Group commit: a commit that ended while this flush waited for the one
                // before holds every change made before it, fence checked after it.
                return Ok(());
            }
            let pending = std::mem::take(&mut state.pending);
            (pending, state.seq, state.changed)
        };
        if !pending {
            return self.check_fence();
        }
        // Held to the end of the commit: an early upload (`trim`) meanwhile would record
        // its chunks in changes this commit has already taken.
        let _uploading = self.uploading.lock().expect("upload lock");
        let next = seq + 1;
        let taken = self.take_dirty(self.layout.wal(&self.volume, self.generation, next));
        let mut changes_taken = None;
        let committed = self.put_all(taken.chunk_puts()).and_then(|()| {
            let manifest = {
                let mut state = self.lock();
                let size = self.size();
                let fresh = Manifest::delta(size, self.chunk_size, self.generation);
                let mut changes = std::mem::replace(&mut state.changes, fresh);
                changes.size = size;
                changes_taken = Some(changes.clone());
                // This upload's effects, but not on chunks discarded since it took them:
                // their discard, recorded later, comes after.
                let mut effects = Manifest::delta(size, self.chunk_size, self.generation);
                for (index, born, _, upload) in &taken.chunks {
                    if state.cache.get(index).is_some_and(|c| c.born == *born) {
                        upload.record(*index, &mut effects);
                    }
                }
                // A delta of what changed since the last commit, unless a whole manifest
                // is due: the first of this generation, or after MAX_DELTAS deltas.
                match state.deltas {
                    Some(n) if n < MAX_DELTAS => {
                        changes.then(&effects);
                        Manifest {
                            seq: next,
                            base: Some(seq),
                            ..changes
                        }
                    }
                    _ => {
                        let mut whole = Manifest {
                            chunks: state.chunks.clone(),
                            patches: state.patches.clone(),
                            ..Manifest::delta(size, self.chunk_size, self.generation)
                        };
                        whole.apply(&effects);
                        Manifest {
                            seq: next,
                            base: None,
                            holes: Default::default(),
                            ..whole
                        }
                    }
                }
            };
            // Small writes commit with their manifest, in one put.
            let (path, bytes) = if taken.log.is_empty() {
                let path = self.layout.manifest(&self.volume, self.generation, next);
                let json = serde_json::to_vec(&manifest).expect("records serialize");
                let sealed = self.store.codec.seal(path.as_ref(), &json).into();
                (path, sealed)
            } else {
                let path = self.layout.object(&taken.log_key);
                let bytes = self.store.wal_bytes(&path, &taken.log, &manifest);
                (path, bytes)
            };
            self.store
                .put(&path, bytes, PutMode::Create)
                .map_err(|e| io(self.store.error("commit", &path, e).to_string()))
                .map(|()| manifest.base.is_some())
        });
        self.settle(taken, committed.is_ok(), false);
        let mut state = self.lock();
        match committed {
            Ok(delta) => {
                state.seq = next;
                state.deltas = Some(if delta {
                    state.deltas.unwrap_or_default() + 1
                } else {
                    0
                });
            }
            Err(e) => {
                state.pending = true;
                // What was taken for this commit comes first again, then what changed
                // meanwhile.
                if let Some(mut changes) = changes_taken {
                    changes.then(&state.changes);
                    state.changes = changes;
                }
                return Err(e);
            }
        }
        drop(state);
        // A takeover raises the generation before it reads the volume: a commit that
        // this check still finds current was there to be read.
        self.check_fence()?;
        let mut state = self.lock();
        state.durable = state.durable.max(covering);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        for (index, at, n) in self.chunks_of(offset, len) {
            if n as u64 == self.chunk_size {
                // A whole chunk: its zeros need no bytes, cached or stored, so a discard
                // of a large range costs no memory.
                let mut state = self.lock();
                state.chunks.remove(&index);
                state.patches.remove(&index);
                state.changes.hole(index);
                state.cache.remove(&index);
                state.pending = true;
                state.changed += 1;
            } else {
                self.modify(index, at, n, |bytes| bytes.fill(0))?;
            }
        }
        self.trim()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.discard(offset, len)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.check_range(offset, len)?;
        let state = self.lock();
        let mut runs: Vec<BlockExtent> = Vec::new();
        for (index, _, n) in self.chunks_of(offset, len) {
            let hole = state.is_hole(index);
            match runs.last_mut() {
                Some(last) if last.hole == hole => last.length += n as u64,
                _ => runs.push(BlockExtent {
                    length: n as u64,
                    hole,
                }),
            }
        }
        Ok(runs)
    }
}
