//! What the share remembers of the server between calls: the handle of each path looked
//! up and the attributes of each handle, trusted for the share's attribute-cache
//! lifetime (like the kernel client's `actimeo`), after which the server is asked again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nfs3_client::nfs3_types::nfs3::{fattr3, ftype3, nfs_fh3};

use crate::SharePath;

/// Entries beyond which the cache starts over rather than grow without bound.
const MAX_ENTRIES: usize = 100_000;

/// Handles by path and attributes by handle, each with the time it was learnt.
pub(super) struct Cache {
    lifetime: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    root: nfs_fh3,
    handles: HashMap<SharePath, (nfs_fh3, Instant)>,
    attributes: HashMap<Vec<u8>, (fattr3, Instant)>,
}

impl Cache {
    /// A cache whose entries are trusted for `lifetime` (zero: not at all).
    pub(super) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("NFS cache lock")
    }

    fn fresh(&self, learnt: Instant) -> bool {
        learnt.elapsed() < self.lifetime
    }

    /// The export's root handle.
    pub(super) fn root(&self) -> nfs_fh3 {
        self.lock().root.clone()
    }

    /// Records the root handle a (re)mount returned; a different one (the server was
    /// replaced) makes everything learnt before meaningless.
    pub(super) fn set_root(&self, root: nfs_fh3) {
        let mut inner = self.lock();
        if inner.root != root {
            *inner = Inner {
                root,
                ..Inner::default()
            };
        }
    }

    /// The handle of `path`, if looked up recently.
    pub(super) fn handle(&self, path: &SharePath) -> Option<nfs_fh3> {
        let inner = self.lock();
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
            inner.handles.clear();
            inner.attributes.clear();
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
        let inner = self.lock();
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

    /// Forgets the attributes of `fh` (this share just changed it).
    pub(super) fn changed(&self, fh: &nfs_fh3) {
        self.lock().attributes.remove(fh.data.as_ref());
    }

    /// Forgets the handles of `path` and everything below it.
    pub(super) fn forget(&self, path: &SharePath) {
        self.lock().handles.retain(|p, _| !p.is_within(path));
    }

    /// Forgets everything but the root (a handle turned out stale).
    pub(super) fn clear(&self) {
        let mut inner = self.lock();
        inner.handles.clear();
        inner.attributes.clear();
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
        let time = nfstime3::default();
        let attributes = fattr3 {
            type_: ftype3::NF3REG,
            mode: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 7,
            used: 4096,
            rdev: specdata3::default(),
            fsid: 1,
            fileid: 2,
            atime: time,
            mtime: time,
            ctime: time,
        };
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
    }
}
