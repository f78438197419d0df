//! The persistent local cache of an object pool: chunk objects and log pieces as the
//! store returned them, in a directory on local disk, so that a restarted or remounted
//! host reads warm.
//!
//! Objects in a pool are never overwritten (a new version is a new key), so an entry
//! never goes stale: the cache holds nothing the store does not, and needs no
//! invalidation. Each entry is one file, its bytes followed by a CRC-32 and a magic
//! trailer, written to a temporary name and renamed into place; an entry torn by a crash
//! or changed on disk fails the check and is deleted and fetched again, never served. The
//! directory is bounded by size, least recently used entries evicted first. A cache that
//! fails (deleted, full, read-only) only costs speed: reads go to the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Ends every entry: its bytes' CRC-32 (little endian), then this.
const MAGIC: &[u8; 4] = b"cvc1";
const TRAILER: usize = 8;

/// A size-bounded directory of immutable objects.
pub(crate) struct DiskCache {
    dir: PathBuf,
    limit: u64,
    index: Mutex<Index>,
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
    /// entries already there are kept, oldest (by modification time) evicted first.
    pub(crate) fn open(dir: &Path, limit: u64) -> std::io::Result<Self> {
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

    /// The bytes of entry `name`, if cached and whole.
    pub(crate) fn get(&self, name: &str) -> Option<Vec<u8>> {
        let path = self.path(name)?;
        let mut bytes = std::fs::read(&path).ok()?;
        let whole = bytes.len() >= TRAILER && {
            let (data, trailer) = bytes.split_at(bytes.len() - TRAILER);
            &trailer[4..] == MAGIC && trailer[..4] == crc32fast::hash(data).to_le_bytes()
        };
        if !whole {
            tracing::warn!("disk cache: {} is torn or changed: dropped", path.display());
            let _ = std::fs::remove_file(&path);
            self.forget(name);
            return None;
        }
        bytes.truncate(bytes.len() - TRAILER);
        let mut index = self.index.lock().expect("disk cache lock");
        index.clock += 1;
        let clock = index.clock;
        if let Some(entry) = index.entries.get_mut(name) {
            entry.1 = clock;
        }
        Some(bytes)
    }

    /// Keeps `data` as entry `name`; a failure is logged and forgotten.
    pub(crate) fn put(&self, name: &str, data: &[u8]) {
        let Some(path) = self.path(name) else {
            return;
        };
        if let Err(e) = self.write(&path, data) {
            tracing::warn!("disk cache: cannot keep {}: {e}", path.display());
            return;
        }
        let size = (data.len() + TRAILER) as u64;
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

    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let parent = path.parent().expect("an entry is in a volume's directory");
        // Made again if someone deleted the cache meanwhile.
        std::fs::create_dir_all(parent)?;
        let tmp = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(data)?;
            f.write_all(&crc32fast::hash(data).to_le_bytes())?;
            f.write_all(MAGIC)
        });
        match written.and_then(|()| std::fs::rename(&tmp, path)) {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    fn forget(&self, name: &str) {
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
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
        cache.put("vol-1/00-a", b"chunk a");
        cache.put("vol-1/00-b.log@4+3", b"log");
        assert_eq!(cache.get("vol-1/00-a").unwrap(), b"chunk a");
        drop(cache);
        let cache = DiskCache::open(dir.path(), 1 << 20).unwrap();
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
        DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(!dir.path().join("vol-1/00-c.123.tmp").exists());
    }

    #[test]
    fn the_least_recently_used_entries_go_when_full_and_bad_names_are_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 3 * (100 + TRAILER as u64)).unwrap();
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
}
