//! The file handles the server hands out, and the share path each stands for.
//!
//! A handle is a number this server never hands out twice: the same path holding the
//! same inode keeps its handle (across renames the server carries out), and anything
//! else gets a new one. Inode numbers alone would not do: the file system reuses the
//! number of a removed file at once, and a client holding the old handle would then
//! reach the new file, or trust attributes it cached for the old one. The export checks
//! before every use that the path still holds the inode, so a handle whose file was
//! renamed or removed behind the server's back answers NFS3ERR_STALE and the client
//! looks the name up again. `nfs3_server` puts the server's start time into handles as
//! well, so a restarted server never mistakes the handles of an earlier run for its own.

use std::collections::HashMap;
use std::sync::Mutex;

use cvol_share::SharePath;

/// The handle of the exported directory.
pub(crate) const ROOT: u64 = 1;

/// Handle → (path, inode), and path → handle.
pub(crate) struct HandleTable {
    inner: Mutex<Inner>,
}

struct Inner {
    next: u64,
    by_handle: HashMap<u64, (SharePath, u64)>,
    by_path: HashMap<SharePath, u64>,
}

impl HandleTable {
    /// A table holding the root, whose inode is `root_inode`.
    pub(crate) fn new(root_inode: u64) -> Self {
        let mut inner = Inner {
            next: ROOT + 1,
            by_handle: HashMap::new(),
            by_path: HashMap::new(),
        };
        inner
            .by_handle
            .insert(ROOT, (SharePath::root(), root_inode));
        inner.by_path.insert(SharePath::root(), ROOT);
        Self {
            inner: Mutex::new(inner),
        }
    }

    /// The handle of `inode` at `path`: the one it had, or a new one.
    pub(crate) fn handle(&self, path: &SharePath, inode: u64) -> u64 {
        let mut inner = self.lock();
        if let Some(&handle) = inner.by_path.get(path) {
            if inner.by_handle.get(&handle).map(|(_, i)| *i) == Some(inode) {
                return handle;
            }
            inner.by_handle.remove(&handle);
        }
        let handle = inner.next;
        inner.next += 1;
        inner.by_handle.insert(handle, (path.clone(), inode));
        inner.by_path.insert(path.clone(), handle);
        handle
    }

    /// Where `handle` was and which inode it stands for.
    pub(crate) fn get(&self, handle: u64) -> Option<(SharePath, u64)> {
        self.lock().by_handle.get(&handle).cloned()
    }

    /// Forgets `handle` (its path now holds something else, or nothing).
    pub(crate) fn forget(&self, handle: u64) {
        let mut inner = self.lock();
        if let Some((path, _)) = inner.by_handle.remove(&handle) {
            inner.by_path.remove(&path);
        }
    }

    /// Forgets `path` and everything below it.
    pub(crate) fn removed(&self, path: &SharePath) {
        let mut inner = self.lock();
        inner.by_path.retain(|p, _| !p.is_within(path));
        inner.by_handle.retain(|_, (p, _)| !p.is_within(path));
    }

    /// Moves `from` and everything below it to `to`; whatever `to` held is gone.
    pub(crate) fn renamed(&self, from: &SharePath, to: &SharePath) {
        let mut inner = self.lock();
        inner.by_path.retain(|p, _| !p.is_within(to));
        inner.by_handle.retain(|_, (p, _)| !p.is_within(to));
        let moved = |p: &SharePath| {
            let rest = &p.as_str()[from.as_str().len()..];
            SharePath::new(&format!("{}{rest}", to.as_str())).expect("a valid path")
        };
        let Inner {
            by_handle, by_path, ..
        } = &mut *inner;
        for (handle, (p, _)) in by_handle.iter_mut() {
            if p.is_within(from) {
                by_path.remove(p);
                *p = moved(p);
                by_path.insert(p.clone(), *handle);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("handle table lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SharePath {
        SharePath::new(s).unwrap()
    }

    #[test]
    fn a_reused_inode_gets_a_new_handle() {
        let table = HandleTable::new(2);
        let old = table.handle(&p("vm1.vmx"), 42);
        assert_eq!(table.handle(&p("vm1.vmx"), 42), old, "the same file");
        let new = table.handle(&p("vm1.vmx"), 43);
        assert_ne!(new, old, "replaced behind the server's back");
        assert_eq!(table.get(old), None);
        table.removed(&p("vm1.vmx"));
        assert_ne!(
            table.handle(&p("vm1.vmx"), 42),
            old,
            "never handed out twice"
        );
    }

    #[test]
    fn renames_move_whole_subtrees_and_drop_what_they_replace() {
        let table = HandleTable::new(2);
        let vm1 = table.handle(&p("vm1"), 10);
        let vmx = table.handle(&p("vm1/vm1.vmx"), 11);
        let other = table.handle(&p("vm10/vm10.vmx"), 12);
        let vm2 = table.handle(&p("vm2"), 13);
        table.renamed(&p("vm1"), &p("vm2"));
        assert_eq!(table.get(vm1), Some((p("vm2"), 10)));
        assert_eq!(table.get(vmx), Some((p("vm2/vm1.vmx"), 11)));
        assert_eq!(table.handle(&p("vm2/vm1.vmx"), 11), vmx);
        assert_eq!(
            table.get(other),
            Some((p("vm10/vm10.vmx"), 12)),
            "a common prefix"
        );
        assert_eq!(table.get(vm2), None, "the replaced directory");
        table.removed(&p("vm2"));
        assert_eq!((table.get(vm1), table.get(vmx)), (None, None));
        assert_eq!(table.get(ROOT), Some((SharePath::root(), 2)));
    }
}
