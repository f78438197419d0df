//! The persistent local cache of an object pool, in a directory on local disk, so that a
//! restarted or remounted host reads warm: the plain bytes of chunk objects, and log
//! pieces as the store returned them.
//!
//! Objects in a pool are never overwritten (a new version is a new key), so an entry
//! never goes stale and needs no invalidation. A chunk is written through while its put
//! runs, so an entry may be of a put that then failed: nothing names such a key, so it is
//! never read, and it ages out like any other. Each entry is one file, written to a temporary name and renamed into
//! place, and checked when read: an entry torn by a crash or changed on disk fails the
//! check and is deleted and fetched again, never served.
//!
//! - A log piece is its bytes followed by a CRC-32 and a magic trailer.
//! - A chunk is kept in blocks of [`BLOCK`] bytes, each checked on its own, so that a
//!   4 KiB read after a restart reads and checks 4 KiB, not the chunk: a block is its
//!   bytes and their CRC-32, or, for an encrypted pool, sealed under the pool's key
//!   (XAES-256-GCM, a nonce of its own, the entry's name and the block's number as
//!   associated data), so the cache keeps nothing in clear that the pool does not.
//!   Blocks that an earlier cvol sealed with XChaCha20-Poly1305 do not open, so such an
//!   entry is fetched again once, like a torn one.
//!
//! The directory is bounded by size, least recently used entries evicted first. A cache
//! that fails (deleted, full, read-only) only costs speed: reads go to the store (or to
//! an entry still open from before it was deleted, which is as good: entries never
//! change).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::cipher::{PoolCipher, NONCE, TAG};

/// Ends every log piece: its bytes' CRC-32 (little endian), then this.
const MAGIC: &[u8; 4] = b"cvc1";
const TRAILER: usize = 8;
/// The bytes of a chunk checked (or sealed) together.
const BLOCK: usize = 4096;
const CRC: usize = 4;

/// Chunk entries kept open for reads, so that a small read costs no path lookup.
const OPEN_FILES: usize = 256;

/// A size-bounded directory of immutable objects.
pub(crate) struct DiskCache {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
    /// Open chunk entries, by name; an entry leaves when its file is replaced or deleted.
    open: Mutex<HashMap<String, Arc<std::fs::File>>>,
    /// An encrypted pool's cipher: chunk blocks are sealed with it.
    cipher: Option<PoolCipher>,
}

#[derive(Default)]
struct Index {
    /// Entry name (`VOLUME/OBJECT`) to its file size and last use.
    entries: HashMap<String, (u64, u64)>,
    used: u64,
    clock: u64,
}

impl DiskCache {
    /// Opens (making it if needed) the cache in `dir`, holding at most `limit` bytes;
    /// entries already there are kept, oldest (by modification time) evicted first. Chunks
    /// are sealed with `cipher` when the pool is encrypted.
    pub(crate) fn open(
        dir: &Path,
        limit: u64,
        cipher: Option<PoolCipher>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        for volume in std::fs::read_dir(dir)? {
            let volume = volume?;
            if !volume.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(volume.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".tmp") {
                    // A write a crash interrupted.
                    let _ = std::fs::remove_file(entry.path());
                    continue;
                }
                let meta = entry.metadata()?;
                let volume = volume.file_name().to_string_lossy().into_owned();
                found.push((meta.modified()?, format!("{volume}/{name}"), meta.len()));
            }
        }
        found.sort();
        let mut index = Index::default();
        for (_, name, size) in found {
            index.clock += 1;
            index.used += size;
            index.entries.insert(name, (size, index.clock));
        }
        let cache = Self {
            dir: dir.to_path_buf(),
            limit,
            index: Mutex::new(index),
            open: Mutex::new(HashMap::new()),
            cipher,
        };
        cache.evict();
        Ok(cache)
    }

    /// The file of entry `name`, if `name` is one this cache takes: two segments of
    /// letters, digits, `.`, `-`, `_`, `@` and `+` (no `..`), as object keys are.
    fn path(&self, name: &str) -> Option<PathBuf> {
        let (volume, object) = name.split_once('/')?;
        let fine = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-@+".contains(&b))
        };
        (fine(volume) && fine(object)).then(|| self.dir.join(volume).join(object))
    }

    /// The bytes of log piece `name`, if cached and whole.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name)?;
        let mut bytes = std::fs::read(&path).ok()?;
        let whole = bytes.len() >= TRAILER && {
            let (data, trailer) = bytes.split_at(bytes.len() - TRAILER);
            &trailer[4..] == MAGIC && trailer[..4] == crc32fast::hash(data).to_le_bytes()
        };
        if !whole {
            self.drop_torn(name, &path);
            return None;
        }
        bytes.truncate(bytes.len() - TRAILER);
        self.touch(name);
        Some(bytes)
    }

    /// Keeps `data` as log piece `name`; a failure is logged and forgotten.
    pub(crate) fn put(&self, name: &str, data: &[u8]) {
        let mut entry = Vec::with_capacity(data.len() + TRAILER);
        entry.extend_from_slice(data);
        entry.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
        entry.extend_from_slice(MAGIC);
        self.keep(name, &entry);
    }

    /// Bytes each chunk block takes beside its own.
    fn overhead(&self) -> usize {
        if self.cipher.is_some() {
            NONCE + TAG
        } else {
            CRC
        }
    }

    /// Keeps `plain`, the bytes of chunk `name`, block by block.
    pub(crate) fn put_chunk(&self, name: &str, plain: &[u8]) {
        let blocks = plain.len().div_ceil(BLOCK);
        let mut entry = Vec::with_capacity(plain.len() + blocks * self.overhead());
        match &self.cipher {
            Some(cipher) => cipher.seal_blocks_into(name, plain, BLOCK, &mut entry),
            None => {
                for block in plain.chunks(BLOCK) {
                    entry.extend_from_slice(block);
                    entry.extend_from_slice(&crc32fast::hash(block).to_le_bytes());
                }
            }
        }
        self.keep(name, &entry);
    }

    /// Reads bytes `at..at + buf.len()` of chunk `name` (`len` bytes long) into `buf`,
    /// if the chunk is cached and the blocks holding them are whole.
    pub(crate) fn read_chunk(&self, name: &str, len: usize, at: usize, buf: &mut [u8]) -> bool {
        use std::os::unix::fs::FileExt;
        let Some(path) = self.path(name) else {
            return false;
        };
        if buf.is_empty() || at + buf.len() > len {
            return false;
        }
        let overhead = self.overhead();
        let (first, last) = (at / BLOCK, (at + buf.len() - 1) / BLOCK);
        let end = ((last + 1) * BLOCK).min(len);
        let mut stored = vec![0; end - first * BLOCK + (last + 1 - first) * overhead];
        let read = self
            .opened(name, &path)
            .and_then(|f| f.read_exact_at(&mut stored, (first * (BLOCK + overhead)) as u64));
        match read {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.forget(name);
                return false;
            }
            Err(_) => {
                self.drop_torn(name, &path);
                return false;
            }
        }
        let mut records = stored.as_slice();
        for i in first..=last {
            let size = BLOCK.min(len - i * BLOCK);
            let (record, rest) = records.split_at(size + overhead);
            records = rest;
            let opened;
            let plain = match &self.cipher {
                Some(cipher) => {
                    let Ok(plain) = cipher.open(format!("{name}#{i}").as_bytes(), record) else {
                        self.drop_torn(name, &path);
                        return false;
                    };
                    opened = plain;
                    &opened[..]
                }
                None => {
                    let (data, crc) = record.split_at(size);
                    if crc != crc32fast::hash(data).to_le_bytes() {
                        self.drop_torn(name, &path);
                        return false;
                    }
                    data
                }
            };
            // The part of this block the read wants.
            let (lo, hi) = ((i * BLOCK).max(at), (i * BLOCK + size).min(at + buf.len()));
            buf[lo - at..hi - at].copy_from_slice(&plain[lo - i * BLOCK..hi - i * BLOCK]);
        }
        self.touch(name);
        true
    }

    /// The plain bytes of chunk `name` (`len` bytes long), if cached and whole.
    pub(crate) fn get_chunk(&self, name: &str, len: usize) -> Option<Vec<u8>> {
        let mut plain = vec![0; len];
        self.read_chunk(name, len, 0, &mut plain).then_some(plain)
    }

    /// The open file of chunk entry `name`.
    fn opened(&self, name: &str, path: &Path) -> std::io::Result<Arc<std::fs::File>> {
        if let Some(file) = self.open.lock().expect("disk cache lock").get(name) {
            return Ok(file.clone());
        }
        let file = Arc::new(std::fs::File::open(path)?);
        let mut open = self.open.lock().expect("disk cache lock");
        if open.len() >= OPEN_FILES {
            let some = open.keys().next().cloned().expect("full");
            open.remove(&some);
        }
        open.insert(name.to_string(), file.clone());
        Ok(file)
    }

    fn drop_torn(&self, name: &str, path: &Path) {
        tracing::warn!("disk cache: {} is torn or changed: dropped", path.display());
        let _ = std::fs::remove_file(path);
        self.forget(name);
    }

    fn touch(&self, name: &str) {
        let mut index = self.index.lock().expect("disk cache lock");
        index.clock += 1;
        let clock = index.clock;
        if let Some(entry) = index.entries.get_mut(name) {
            entry.1 = clock;
        }
    }

    /// Keeps `entry` as the file of entry `name`; a failure is logged and forgotten.
    fn keep(&self, name: &str, entry: &[u8]) {
        let Some(path) = self.path(name) else {
            return;
        };
        self.open.lock().expect("disk cache lock").remove(name);
        if let Err(e) = self.write(&path, entry) {
            tracing::warn!("disk cache: cannot keep {}: {e}", path.display());
            return;
        }
        let size = entry.len() as u64;
        {
            let mut index = self.index.lock().expect("disk cache lock");
            index.clock += 1;
            let clock = index.clock;
            if let Some((old, _)) = index.entries.insert(name.to_string(), (size, clock)) {
                index.used -= old;
            }
            index.used += size;
        }
        self.evict();
    }

    fn write(&self, path: &Path, entry: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let parent = path.parent().expect("an entry is in a volume's directory");
        // Made again if someone deleted the cache meanwhile.
        std::fs::create_dir_all(parent)?;
        let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| f.write_all(entry));
        match written.and_then(|()| std::fs::rename(&tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn forget(&self, name: &str) {
        self.open.lock().expect("disk cache lock").remove(name);
        let mut index = self.index.lock().expect("disk cache lock");
        if let Some((size, _)) = index.entries.remove(name) {
            index.used -= size;
        }
    }

    /// Deletes least recently used entries until the cache is within its limit.
    fn evict(&self) {
        let doomed: Vec<String> = {
            let mut index = self.index.lock().expect("disk cache lock");
            if index.used <= self.limit {
                return;
            }
            let mut by_age: Vec<(u64, String, u64)> = index
                .entries
                .iter()
                .map(|(name, &(size, used))| (used, name.clone(), size))
                .collect();
            by_age.sort_unstable();
            let mut doomed = Vec::new();
            for (_, name, size) in by_age {
                if index.used <= self.limit {
                    break;
                }
                index.entries.remove(&name);
                index.used -= size;
                doomed.push(name);
            }
            doomed
        };
        for name in doomed {
            // Closed too, so that its space is freed.
            self.open.lock().expect("disk cache lock").remove(&name);
            if let Some(path) = self.path(&name) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_a_reopen_and_torn_ones_are_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 1 << 20, None).unwrap();
        cache.put("vol-1/00-a", b"chunk a");
        cache.put("vol-1/00-b.log@4+3", b"log");
        assert_eq!(cache.get("vol-1/00-a").unwrap(), b"chunk a");
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20, None).unwrap();
        assert_eq!(cache.get("vol-1/00-b.log@4+3").unwrap(), b"log");
        // Torn (cut short, as by a crash without the rename's atomicity) or flipped.
        let file = dir.path().join("vol-1/00-a");
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 3]).unwrap();
        assert_eq!(cache.get("vol-1/00-a"), None);
        assert!(!file.exists(), "a torn entry is deleted");
        cache.put("vol-1/00-a", b"chunk a");
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(cache.get("vol-1/00-a"), None);
        // Leftover temporary files are cleared at open.
        std::fs::write(dir.path().join("vol-1/00-c.123.tmp"), b"half").unwrap();
        drop(cache);
        DiskCache::open(dir.path(), 1 << 20, None).unwrap();
        assert!(!dir.path().join("vol-1/00-c.123.tmp").exists());
    }

    #[test]
    fn the_least_recently_used_entries_go_when_full_and_bad_names_are_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3 * (100 + TRAILER as u64), None).unwrap();
        for name in ["v/a", "v/b", "v/c"] {
            cache.put(name, &[1; 100]);
        }
        assert!(cache.get("v/a").is_some());
        cache.put("v/d", &[2; 100]);
        assert!(cache.get("v/b").is_none(), "b was used least recently");
        for name in ["v/a", "v/c", "v/d"] {
            assert!(cache.get(name).is_some(), "{name}");
        }
        for bad in ["../x/y", "v/../../etc", "v", "v/.hidden", "a/b/c"] {
            cache.put(bad, b"no");
            assert!(cache.get(bad).is_none(), "{bad}");
        }
        // Deleted while in use: it keeps working, and is made again.
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(cache.get("v/a").is_none());
        cache.put("v/e", b"again");
        assert_eq!(cache.get("v/e").unwrap(), b"again");
    }

    #[test]
    fn chunks_are_read_in_part_and_a_changed_block_is_never_served() {
        let chunk: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 253) as u8).collect();
        for cipher in [None, Some(PoolCipher::new(&[7; 32]))] {
            let encrypted = cipher.is_some();
            let dir = tempfile::tempdir().unwrap();
            let cache = DiskCache::open(dir.path(), 1 << 20, cipher).unwrap();
            cache.put_chunk("v/c", &chunk);
            let file = dir.path().join("v/c");
            let stored = std::fs::read(&file).unwrap();
            assert_eq!(
                encrypted,
                !stored.windows(64).any(|w| w == &chunk[..64]),
                "in clear only for a pool that is"
            );
            assert_eq!(cache.get_chunk("v/c", chunk.len()).unwrap(), chunk);
            // Reads within a block, across blocks, and of the short last block.
            for (at, n) in [
                (5, 10),
                (BLOCK - 3, 6),
                (100, 2 * BLOCK + 50),
                (3 * BLOCK, 100),
            ] {
                let mut buf = vec![0; n];
                assert!(cache.read_chunk("v/c", chunk.len(), at, &mut buf));
                assert_eq!(buf, chunk[at..at + n], "{at}+{n}");
            }
            assert!(!cache.read_chunk("v/c", chunk.len(), chunk.len() - 1, &mut [0; 2]));
            assert!(!cache.read_chunk("v/other", chunk.len(), 0, &mut [0; 2]));
            // A changed byte in block 1: reads of block 0 alone still pass, one touching
            // block 1 drops the entry.
            let mut changed = stored.clone();
            changed[BLOCK + 300] ^= 1;
            std::fs::write(&file, &changed).unwrap();
            let mut buf = vec![0; 10];
            assert!(cache.read_chunk("v/c", chunk.len(), 0, &mut buf));
            assert!(!cache.read_chunk("v/c", chunk.len(), BLOCK, &mut buf));
            assert!(!file.exists(), "a changed entry is deleted");
            if encrypted {
                // Blocks 0 and 1 swapped: each is whole, but not where it was sealed.
                let record = BLOCK + NONCE + TAG;
                let mut swapped = stored[record..2 * record].to_vec();
                swapped.extend_from_slice(&stored[..record]);
                swapped.extend_from_slice(&stored[2 * record..]);
                std::fs::write(&file, &swapped).unwrap();
                assert!(!cache.read_chunk("v/c", chunk.len(), 0, &mut buf));
            }
            // Cut short by a crash.
            std::fs::write(&file, &stored[..stored.len() - 1]).unwrap();
            assert!(cache.get_chunk("v/c", chunk.len()).is_none());
        }
    }
}
