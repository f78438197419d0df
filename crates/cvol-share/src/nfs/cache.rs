//! What the share remembers of the server between calls: the handle of each path looked
//! up, the attributes of each handle and the listing of each directory, trusted for the
//! share's attribute-cache lifetime (like the kernel client's `actimeo`), after which the
//! server is asked again; and the content of small files, trusted for as long as the
//! server reports the same version of the file (as the kernel's page cache is).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{fattr3, ftype3, nfs_fh3, nfstime3};

use crate::{DirEntry, SharePath};

/// Handles and attributes kept, at most (some 300 bytes a pair): a walk of 10,000 VMs
/// and their leases learns about 140,000. Past it, what expired goes first (see
/// `Inner::make_room`).
const MAX_ENTRIES: usize = 200_000;

/// Lifetimes within which a directory's expired listing is worth listing again
/// (see `NfsShare::refresh_parent`), so is kept that long.
pub(super) const RELISTED_WITHIN: u32 = 3;

/// Bytes of file content kept, at most (the `.vmx` and descriptors of some 10,000 VMs).
const MAX_CONTENT_BYTES: usize = 32 << 20;

/// Files larger than this are not kept: cvol's own files are a few KiB.
const MAX_CONTENT_FILE: usize = 256 << 10;

/// What tells one version of a file from another: its identity, size and times. A file
/// cvol rewrites is replaced by a new one (a new file id), and any write moves ctime.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Version {
    pub(super) fsid: u64,
    pub(super) fileid: u64,
    pub(super) size: u64,
    pub(super) mtime: nfstime3,
    pub(super) ctime: nfstime3,
}

impl Version {
    fn of(a: &fattr3) -> Self {
        Self {
            fsid: a.fsid,
            fileid: a.fileid,
            size: a.size,
            mtime: a.mtime,
            ctime: a.ctime,
        }
    }
}

/// Whether `a` and `b` describe the same version of a file.
pub(super) fn same_version(a: &fattr3, b: &fattr3) -> bool {
    Version::of(a) == Version::of(b)
}

impl Version {
    /// The file it is a version of: its file system and file id.
    pub(super) fn file(&self) -> (u64, u64) {
        (self.fsid, self.fileid)
    }
}

/// File contents by file (see [`Version::file`]), with the version they are of. Not by
/// handle: a file keeps its content when the server hands it out under a new handle
/// (`cvol nfs serve` drops the handles of files unused for a while).
pub(super) type Contents = HashMap<(u64, u64), (Version, Arc<[u8]>)>;

/// Handles by path, attributes and listings by handle, each with the time it was learnt;
/// contents by file, with the version they are of.
pub(super) struct Cache {
    lifetime: Duration,
    /// Read far more often than written (a walk's threads look up what one listing
    /// learnt), so readers do not wait for one another.
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    root: nfs_fh3,
    handles: foldhash::HashMap<SharePath, (nfs_fh3, Instant)>,
    attributes: foldhash::HashMap<Vec<u8>, (fattr3, Instant)>,
    listings: foldhash::HashMap<Vec<u8>, (Arc<[DirEntry]>, Instant)>,
    contents: Contents,
    content_bytes: usize,
    /// Whether contents were learnt since [`Cache::preload`] (so are worth saving).
    contents_learnt: bool,
    /// Changes made through this share, counted.
    changes: u64,
    /// What [`Inner::changes`] was after the last change here of each directory (by
    /// handle) since [`Inner::forgot_changes`].
    changed: foldhash::HashMap<Vec<u8>, u64>,
    /// What [`Inner::changes`] was when the directories' changes were last forgotten: a
    /// listing begun before then may miss any of them.
    forgot_changes: u64,
}

impl Inner {
    /// Forgets what expired (listings once they are too old to be listed again instead
    /// of looked up entry by entry), and everything if most is still fresh. A walk of
    /// thousands of VMs and their leases fills the cache within one lifetime: forgetting
    /// all of it at once would drop the listings just read ahead for the rest of it.
    fn make_room(&mut self, lifetime: Duration) {
        let fresh = |learnt: &Instant, lifetimes: u32| learnt.elapsed() < lifetime * lifetimes;
        self.handles.retain(|_, (_, learnt)| fresh(learnt, 1));
        self.attributes.retain(|_, (_, learnt)| fresh(learnt, 1));
        self.listings
            .retain(|_, (_, learnt)| fresh(learnt, RELISTED_WITHIN));
        // Past this, sweeping at every new entry would cost more than it saves.
        if self.handles.len() + self.attributes.len() > MAX_ENTRIES / 4 * 3 {
            self.handles.clear();
            self.attributes.clear();
            self.listings.clear();
        }
    }
}

impl Cache {
    /// A cache whose entries are trusted for `lifetime` (zero: not at all).
    pub(super) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            inner: RwLock::default(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("NFS cache lock")
    }

    fn lock(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("NFS cache lock")
    }

    fn fresh(&self, learnt: Instant) -> bool {
        learnt.elapsed() < self.lifetime
    }

    /// Starts with `contents` read from the server whose export's root handle is `root`
    /// (in an earlier run): kept if the server mounted is that one.
    pub(super) fn preload(&self, root: nfs_fh3, contents: Contents) {
        let mut inner = self.lock();
        inner.root = root;
        inner.content_bytes = contents.values().map(|(_, data)| data.len()).sum();
        inner.contents = contents;
        if inner.content_bytes > MAX_CONTENT_BYTES {
            inner.contents.clear();
            inner.content_bytes = 0;
        }
    }

    /// The root handle and the contents, taken out of the cache, if any were learnt since
    /// [`Cache::preload`] (for a share being dropped, which needs them no more).
    pub(super) fn take_contents_to_save(&self) -> Option<(nfs_fh3, Contents)> {
        let mut inner = self.lock();
        if !inner.contents_learnt {
            return None;
        }
        inner.contents_learnt = false;
        inner.content_bytes = 0;
        Some((inner.root.clone(), std::mem::take(&mut inner.contents)))
    }

    /// The export's root handle.
    pub(super) fn root(&self) -> nfs_fh3 {
        self.read().root.clone()
    }

    /// Records the root handle a (re)mount returned; a different one (the server was
    /// replaced) makes everything learnt before meaningless.
    pub(super) fn set_root(&self, root: nfs_fh3) {
        let mut inner = self.lock();
        if inner.root != root {
            let changes = inner.changes + 1;
            *inner = Inner {
                root,
                changes,
                forgot_changes: changes,
                ..Inner::default()
            };
        }
    }

    /// The handle of `path`, if looked up recently.
    pub(super) fn handle(&self, path: &SharePath) -> Option<nfs_fh3> {
        let inner = self.read();
        let (fh, learnt) = inner.handles.get(path)?;
        self.fresh(*learnt).then(|| fh.clone())
    }

    /// Records that `path` is `fh`, with its attributes when the reply carried them.
    pub(super) fn learn(&self, path: &SharePath, fh: &nfs_fh3, attributes: Option<&fattr3>) {
        if self.lifetime.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.handles.len() + inner.attributes.len() > MAX_ENTRIES {
            inner.make_room(self.lifetime);
        }
        inner.handles.insert(path.clone(), (fh.clone(), now));
        if let Some(a) = attributes {
            inner.attributes.insert(fh.data.to_vec(), (a.clone(), now));
        }
    }

    /// The attributes of `fh`, if learnt recently.
    ///
    /// A file with several names (hard links) is never answered from here: a change
    /// through another of its names (a link removed, a chmod) does not reach this entry.
    pub(super) fn attributes(&self, fh: &nfs_fh3) -> Option<fattr3> {
        let inner = self.read();
        let (a, learnt) = inner.attributes.get(fh.data.as_ref())?;
        let linked = a.nlink > 1 && a.type_ != ftype3::NF3DIR;
        (self.fresh(*learnt) && !linked).then(|| a.clone())
    }

    /// Records the attributes of `fh`.
    pub(super) fn learn_attributes(&self, fh: &nfs_fh3, attributes: &fattr3) {
        if !self.lifetime.is_zero() {
            let entry = (attributes.clone(), Instant::now());
            self.lock().attributes.insert(fh.data.to_vec(), entry);
        }
    }

    /// Forgets the attributes of `fh`, and its listing if it is a directory (this share
    /// just changed it).
    pub(super) fn changed(&self, fh: &nfs_fh3) {
        let mut inner = self.lock();
        inner.changes += 1;
        let changes = inner.changes;
        if inner.changed.len() >= MAX_ENTRIES {
            inner.changed.clear();
            inner.forgot_changes = changes;
        }
        inner.changed.insert(fh.data.to_vec(), changes);
        inner.attributes.remove(fh.data.as_ref());
        inner.listings.remove(fh.data.as_ref());
    }

    /// The entries of directory `fh`, if listed recently and not changed here since.
    pub(super) fn listing(&self, fh: &nfs_fh3) -> Option<Arc<[DirEntry]>> {
        let inner = self.read();
        let (entries, learnt) = inner.listings.get(fh.data.as_ref())?;
        self.fresh(*learnt).then(|| entries.clone())
    }

    /// How long ago directory `fh` was last listed, if its listing is still kept (fresh
    /// or not).
    pub(super) fn last_listed(&self, fh: &nfs_fh3) -> Option<Duration> {
        let inner = self.read();
        let (_, learnt) = inner.listings.get(fh.data.as_ref())?;
        Some(learnt.elapsed())
    }

    /// The last listing kept of directory `fh`, fresh or not.
    pub(super) fn kept_listing(&self, fh: &nfs_fh3) -> Option<Arc<[DirEntry]>> {
        let inner = self.read();
        inner.listings.get(fh.data.as_ref()).map(|(l, _)| l.clone())
    }

    /// Whether the handle of `path` and its attributes are both fresh.
    pub(super) fn knows(&self, path: &SharePath) -> bool {
        self.handle(path)
            .is_some_and(|fh| self.attributes(&fh).is_some())
    }

    /// Counts the changes made through this share, for [`Cache::learn_listing`].
    pub(super) fn changes(&self) -> u64 {
        self.read().changes
    }

    /// Records the entries of directory `fh`, listed from the server after
    /// [`Cache::changes`] said `changes`, and says whether they are kept. A change made
    /// here to the directory while the listing was under way may be missing from it: then
    /// the listing is not kept. (Changes elsewhere do not matter: a host renewing its
    /// leases changes the share all the time.)
    pub(super) fn learn_listing(
        &self,
        fh: &nfs_fh3,
        entries: Arc<[DirEntry]>,
        changes: u64,
    ) -> bool {
        let mut inner = self.lock();
        let unchanged = changes >= inner.forgot_changes
            && inner
                .changed
                .get(fh.data.as_ref())
                .is_none_or(|&c| c <= changes);
        let kept = !self.lifetime.is_zero() && unchanged;
        if kept {
            inner
                .listings
                .insert(fh.data.to_vec(), (entries, Instant::now()));
        }
        kept
    }

    /// The content of the file `attributes` describe, if it is known for that version.
    pub(super) fn content(&self, attributes: &fattr3) -> Option<Arc<[u8]>> {
        let inner = self.read();
        let version = Version::of(attributes);
        let (known, data) = inner.contents.get(&version.file())?;
        (*known == version).then(|| data.clone())
    }

    /// Records `data` as the whole content of the file `attributes` describe, in that
    /// version.
    pub(super) fn learn_content(&self, attributes: &fattr3, data: Arc<[u8]>) {
        if data.len() > MAX_CONTENT_FILE {
            return;
        }
        let mut inner = self.lock();
        if inner.content_bytes + data.len() > MAX_CONTENT_BYTES {
            inner.contents.clear();
            inner.content_bytes = 0;
        }
        inner.content_bytes += data.len();
        inner.contents_learnt = true;
        let version = Version::of(attributes);
        if let Some((_, old)) = inner.contents.insert(version.file(), (version, data)) {
            inner.content_bytes -= old.len();
        }
    }

    /// Forgets the handles of `path` and everything below it.
    pub(super) fn forget(&self, path: &SharePath) {
        self.lock().handles.retain(|p, _| !p.is_within(path));
    }

    /// Forgets the handle of `path` (a file: nothing lies below it).
    pub(super) fn forget_one(&self, path: &SharePath) {
        self.lock().handles.remove(path);
    }

    /// Forgets everything but the root and what is validated by version (a handle
    /// turned out stale).
    pub(super) fn clear(&self) {
        let mut inner = self.lock();
        inner.handles.clear();
        inner.attributes.clear();
        inner.listings.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_client::nfs3_types::nfs3::{ftype3, nfstime3, specdata3};
    use nfs3_client::nfs3_types::xdr_codec::Opaque;

    fn fh(n: u8) -> nfs_fh3 {
        nfs_fh3 {
            data: Opaque::owned(vec![n; 8]),
        }
    }

    #[test]
    fn entries_expire_and_a_new_root_forgets_everything() {
        let path = SharePath::new("vm1/vm1.vmx").unwrap();
        let attributes = attributes(2);
        let cache = Cache::new(Duration::from_millis(200));
        cache.set_root(fh(1));
        cache.learn(&path, &fh(2), Some(&attributes));
        assert_eq!(cache.handle(&path), Some(fh(2)));
        assert!(cache.attributes(&fh(2)).is_some());
        cache.forget(&SharePath::new("vm1").unwrap());
        assert_eq!(cache.handle(&path), None, "below a forgotten directory");
        assert!(
            cache.attributes(&fh(2)).is_some(),
            "attributes go by handle"
        );
        cache.changed(&fh(2));
        assert!(cache.attributes(&fh(2)).is_none());

        cache.learn(&path, &fh(2), Some(&attributes));
        cache.set_root(fh(1));
        assert_eq!(cache.handle(&path), Some(fh(2)), "the same server");
        cache.set_root(fh(9));
        assert_eq!(cache.handle(&path), None, "another server");

        cache.learn(&path, &fh(2), Some(&attributes));
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(cache.handle(&path), None, "expired");
        assert!(cache.attributes(&fh(2)).is_none(), "expired");

        let off = Cache::new(Duration::ZERO);
        off.learn(&path, &fh(2), Some(&attributes));
        assert_eq!(off.handle(&path), None);

        // Contents go by file and version, whatever handle the file was read under.
        cache.learn_content(&attributes, Arc::from(&b"vm1 = 1\n"[..]));
        assert_eq!(
            cache.content(&attributes).as_deref(),
            Some(&b"vm1 = 1\n"[..])
        );
        let changed = fattr3 {
            ctime: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            ..attributes.clone()
        };
        assert!(cache.content(&changed).is_none(), "another version");
        let elsewhere = fattr3 {
            fsid: 7,
            ..attributes.clone()
        };
        assert!(cache.content(&elsewhere).is_none(), "another file system");
    }

    fn attributes(fileid: u64) -> fattr3 {
        fattr3 {
            type_: ftype3::NF3REG,
            mode: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 7,
            used: 4096,
            rdev: specdata3::default(),
            fsid: 1,
            fileid,
            atime: nfstime3::default(),
            mtime: nfstime3::default(),
            ctime: nfstime3::default(),
        }
    }

    /// Learns `n` files vm0/f0 … with handles and attributes.
    fn fill(cache: &Cache, n: usize) {
        for i in 0..n {
            let path = SharePath::new(&format!("vm{}/f{i}", i % 100)).unwrap();
            let fh = nfs_fh3 {
                data: Opaque::owned(i.to_le_bytes().to_vec()),
            };
            cache.learn(&path, &fh, Some(&attributes(i as u64)));
        }
    }

    fn size(cache: &Cache) -> usize {
        let inner = cache.read();
        inner.handles.len() + inner.attributes.len()
    }

    /// A full cache forgets what expired and keeps what is fresh (a listing just read
    /// ahead); one full of fresh entries starts over, so it never grows past its bound.
    #[test]
    fn a_full_cache_forgets_what_expired_first_and_never_outgrows_its_bound() {
        let lifetime = Duration::from_secs(1);
        let cache = Cache::new(lifetime);
        fill(&cache, MAX_ENTRIES / 2);
        std::thread::sleep(lifetime);
        let listing: Arc<[DirEntry]> = Vec::new().into();
        cache.learn_listing(&fh(200), listing, cache.changes());
        let fresh = SharePath::new("fresh").unwrap();
        cache.learn(&fresh, &fh(201), Some(&attributes(1 << 40)));
        cache.learn(&fresh, &fh(201), Some(&attributes(1 << 40)));
        // What is kept, fresh or not by now (a slow machine may take long to sweep).
        let inner = cache.read();
        assert!(
            inner.listings.contains_key(fh(200).data.as_ref()),
            "a fresh listing was dropped"
        );
        assert!(inner.handles.contains_key(&fresh));
        drop(inner);
        assert!(size(&cache) <= 2, "expired entries kept: {}", size(&cache));

        let cache = Cache::new(Duration::from_secs(600));
        fill(&cache, MAX_ENTRIES / 2 + 2);
        assert!(size(&cache) <= 4, "{} entries kept", size(&cache));
    }

    #[test]
    fn a_listing_under_way_is_kept_unless_its_own_directory_changed_here_meanwhile() {
        let cache = Cache::new(Duration::from_secs(600));
        let entries = || -> Arc<[DirEntry]> {
            Arc::from(vec![DirEntry {
                name: "1".into(),
                kind: crate::FileKind::File,
            }])
        };
        let began = cache.changes();
        cache.changed(&fh(2));
        assert!(
            cache.learn_listing(&fh(1), entries(), began),
            "another directory changed"
        );
        assert!(!cache.learn_listing(&fh(2), entries(), began));
        assert!(cache.listing(&fh(2)).is_none());
        assert!(cache.learn_listing(&fh(2), entries(), cache.changes()));

        // A new server forgets what changed where: what began before it is not kept.
        let began = cache.changes();
        cache.set_root(fh(9));
        assert!(!cache.learn_listing(&fh(1), entries(), began));
        assert!(cache.learn_listing(&fh(1), entries(), cache.changes()));
    }
}
