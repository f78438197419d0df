//! The content cache kept on local disk between runs, as the kernel's FS-Cache keeps
//! NFS file pages: each short-lived `cvol` command starts with the `.vmx` files and
//! descriptors an earlier one read, so a walk of an unchanged datastore reads no file
//! again (one listing per VM folder tells each file's version). An entry is used only
//! for the exact version it was read at (see [`super::cache`]), and only from the server
//! it was read from (the export's root handle is saved with it).
//!
//! One file per share URL in the cache directory, replaced whole (write and rename), so
//! a reader sees an old or a new file, never half of one. A file that does not parse or
//! whose checksum does not match is ignored: the cache starts cold.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nfs3_client::nfs3_types::nfs3::nfstime3;

use super::cache::{Contents, Version};
use crate::nfs_url::NfsUrl;

/// What starts a saved file (the format's version is its last byte).
const MAGIC: &[u8; 8] = b"cvolnfc2";

/// Files of other shares kept beside the one saved; the least recently saved go first.
const KEEP_FILES: usize = 32;

/// Age past which a file being written is taken for the leftover of a run that died
/// while saving (a save takes milliseconds).
const STALE_STAGED: std::time::Duration = std::time::Duration::from_secs(600);

/// The file that holds what was read from `url`, in `dir`.
pub(super) fn file_for(dir: &Path, url: &NfsUrl) -> PathBuf {
    let name: String = url
        .to_string()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{name}.contents"))
}

/// The root handle and the contents saved in `path`; `None` if there is no such file or
/// it is not one this version wrote whole.
pub(super) fn load(path: &Path) -> Option<(Vec<u8>, Contents)> {
    let bytes = fs::read(path).ok()?;
    let parsed = parse(&bytes);
    if parsed.is_none() {
        tracing::debug!(
            "ignoring the NFS content cache {}: not valid",
            path.display()
        );
    }
    parsed
}

fn parse(bytes: &[u8]) -> Option<(Vec<u8>, Contents)> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (checksum, body) = rest.split_first_chunk::<4>()?;
    if crc32fast::hash(body) != u32::from_le_bytes(*checksum) {
        return None;
    }
    let mut r = Reader(body);
    let root = r.bytes()?.to_vec();
    let mut contents = Contents::new();
    for _ in 0..r.u32()? {
        let version = Version {
            fsid: r.u64()?,
            fileid: r.u64()?,
            size: r.u64()?,
            mtime: r.time()?,
            ctime: r.time()?,
        };
        let data: Arc<[u8]> = r.bytes()?.into();
        contents.insert(version.file(), (version, data));
    }
    r.0.is_empty().then_some((root, contents))
}

/// Saves `root` and `contents` to `path`, replacing what was there; then removes the
/// oldest files of other shares beyond [`KEEP_FILES`]. Failures are logged and ignored:
/// it is a cache.
pub(super) fn save(path: &Path, root: &[u8], contents: &Contents) {
    if let Err(e) = write(path, root, contents) {
        tracing::warn!(
            "could not save the NFS content cache {}: {e}",
            path.display()
        );
        return;
    }
    if let Some(dir) = path.parent() {
        prune(dir);
    }
}

fn write(path: &Path, root: &[u8], contents: &Contents) -> std::io::Result<()> {
    let mut body = Vec::new();
    put_bytes(&mut body, root);
    body.extend((contents.len() as u32).to_le_bytes());
    for (version, data) in contents.values() {
        body.extend(version.fsid.to_le_bytes());
        body.extend(version.fileid.to_le_bytes());
        body.extend(version.size.to_le_bytes());
        for time in [version.mtime, version.ctime] {
            body.extend(time.seconds.to_le_bytes());
            body.extend(time.nseconds.to_le_bytes());
        }
        put_bytes(&mut body, data);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // Unique: two shares of one server in one process may save at once.
    let staged = path.with_extension(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // VM configurations are the user's: no one else reads them from here.
            .mode(0o600)
            .open(&staged)?;
        file.write_all(MAGIC)?;
        file.write_all(&crc32fast::hash(&body).to_le_bytes())?;
        file.write_all(&body)?;
        fs::rename(&staged, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&staged);
    }
    result
}

fn prune(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let Some(modified) = entry.metadata().and_then(|m| m.modified()).ok() else {
            continue;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".contents") {
            files.push((modified, entry.path()));
        } else if name.ends_with(".tmp") && modified.elapsed().is_ok_and(|age| age > STALE_STAGED) {
            let _ = fs::remove_file(entry.path());
        }
    }
    if files.len() > KEEP_FILES {
        files.sort();
        for (_, path) in &files[..files.len() - KEEP_FILES] {
            let _ = fs::remove_file(path);
        }
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend((bytes.len() as u32).to_le_bytes());
    out.extend(bytes);
}

/// Reads the saved format's fields, `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn time(&mut self) -> Option<nfstime3> {
        Some(nfstime3 {
            seconds: self.u32()?,
            nseconds: self.u32()?,
        })
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(n: u64) -> Version {
        let time = nfstime3 {
            seconds: 1_700_000_000,
            nseconds: n as u32,
        };
        Version {
            fsid: 0x803,
            fileid: n,
            size: n * 10,
            mtime: time,
            ctime: time,
        }
    }

    #[test]
    fn what_is_saved_loads_back_and_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = NfsUrl::parse("nfs://127.0.0.1:2049/srv/cvol").unwrap();
        let path = file_for(dir.path(), &url);
        assert_eq!(
            path.file_name().unwrap(),
            "nfs___127.0.0.1_2049_srv_cvol.contents"
        );
        assert!(load(&path).is_none(), "nothing saved yet");

        let mut contents = Contents::new();
        contents.insert(
            version(1).file(),
            (version(1), Arc::from(&b"displayName = \"vm1\"\n"[..])),
        );
        contents.insert(version(2).file(), (version(2), Arc::from(&b""[..])));
        save(&path, b"root", &contents);
        let (root, loaded) = load(&path).expect("saved");
        assert_eq!(root, b"root");
        assert_eq!(loaded.len(), 2);
        for (file, (v, data)) in &contents {
            let (lv, ldata) = &loaded[file];
            assert!(lv == v && ldata == data);
        }
        let mode = fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        // Any flipped byte, and any cut, is refused as a whole.
        let good = fs::read(&path).unwrap();
        for at in [0, 9, 14, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(load(&path).is_none(), "flipped byte {at}");
        }
        for len in [0, 8, 12, good.len() - 1] {
            fs::write(&path, &good[..len]).unwrap();
            assert!(load(&path).is_none(), "cut at {len}");
        }
    }

    #[test]
    fn only_the_most_recent_files_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let contents = Contents::new();
        for port in 0..KEEP_FILES + 3 {
            let url = NfsUrl::parse(&format!("nfs://127.0.0.1:{}/x", 1000 + port)).unwrap();
            save(&file_for(dir.path(), &url), b"r", &contents);
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), KEEP_FILES);

        // What a run that died while saving left: removed once it is old, not before.
        let staged = |name: &str, age: u64| {
            let path = dir.path().join(name);
            let file = fs::File::create(&path).unwrap();
            let when = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            file.set_modified(when).unwrap();
            path
        };
        let old = staged("a.contents.1f.tmp", 3600);
        let young = staged("b.contents.2f.tmp", 1);
        save(&dir.path().join("c.contents"), b"r", &contents);
        assert!(!old.exists() && young.exists());
    }
}
