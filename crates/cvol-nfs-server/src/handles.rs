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
//!
//! The table keeps every directory handed out, but at most `max_files` other entries:
//! past that, the least recently used go. A handle carries its inode and the number of
//! the directory it was handed out in, so the export finds a file whose entry went by
//! its inode in that directory ([`HandleTable::restore`]), and a client never notices.
//! Memory is thus bounded by the directories (a datastore has one per VM) and
//! `max_files`, not by every file ever looked up.
//!
//! Invariant: whatever the table holds below a path, it holds that path too (a handle is
//! handed out in a directory the client reached through the table, and a directory that
//! goes takes what is below it along), so a path the table does not hold has nothing
//! below it to move or drop.

use std::sync::Mutex;

use cvol_share::SharePath;
use nfs3_server::vfs::FileHandle;

/// The number of the exported directory's handle.
const ROOT: u64 = 1;

/// Files (not directories) the table keeps at most unless told otherwise: about 20 MiB.
pub const DEFAULT_FILE_HANDLES: usize = 100_000;

/// A handle as clients hold it: its number, the inode it was handed out for, and the
/// number of the directory it was handed out in (0 if none).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Handle([u8; 24]);

impl Handle {
    fn new(id: u64, inode: u64, parent: u64) -> Self {
        let mut bytes = [0; 24];
        bytes[..8].copy_from_slice(&id.to_le_bytes());
        bytes[8..16].copy_from_slice(&inode.to_le_bytes());
        bytes[16..].copy_from_slice(&parent.to_le_bytes());
        Self(bytes)
    }

    fn field(&self, i: usize) -> u64 {
        u64::from_le_bytes(self.0[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    }

    /// The handle's number: what the table knows it by.
    pub(crate) fn id(&self) -> u64 {
        self.field(0)
    }

    /// The inode it was handed out for.
    pub(crate) fn inode(&self) -> u64 {
        self.field(1)
    }

    fn parent(&self) -> u64 {
        self.field(2)
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}(inode {})", self.id(), self.inode())
    }
}

impl FileHandle for Handle {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

/// Handle number → entry, and path → handle number.
pub(crate) struct HandleTable {
    inner: Mutex<Inner>,
    max_files: usize,
}

struct Entry {
    path: SharePath,
    inode: u64,
    parent: u64,
    dir: bool,
    /// When last handed out or used, on the table's clock.
    used: u64,
}

#[derive(Default)]
struct Inner {
    next: u64,
    clock: u64,
    /// Entries that are not directories.
    files: usize,
    // Paths come from clients: a hasher with a random seed, as std's, but faster.
    by_handle: foldhash::HashMap<u64, Entry>,
    by_path: foldhash::HashMap<SharePath, u64>,
}

impl HandleTable {
    /// A table holding the root, whose inode is `root_inode`, and at most `max_files`
    /// entries that are not directories.
    pub(crate) fn new(root_inode: u64, max_files: usize) -> Self {
        let mut inner = Inner::default();
        inner.insert(ROOT, SharePath::root(), root_inode, 0, true);
        inner.by_path.insert(SharePath::root(), ROOT);
        inner.next = ROOT + 1;
        Self {
            inner: Mutex::new(inner),
            max_files,
        }
    }

    /// The handle of the exported directory.
    pub(crate) fn root(&self) -> Handle {
        let inner = self.lock();
        Handle::new(ROOT, inner.by_handle[&ROOT].inode, 0)
    }

    /// The handle of `inode` at `path` (a directory if `dir`): the one it had, or a new
    /// one.
    pub(crate) fn handle(&self, path: &SharePath, inode: u64, dir: bool) -> Handle {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        if let Some(&id) = inner.by_path.get(path) {
            if let Some(e) = inner.by_handle.get_mut(&id).filter(|e| e.inode == inode) {
                e.used = clock;
                return Handle::new(id, inode, e.parent);
            }
            // Replaced behind the server's back: what was below it went with it.
            if inner.by_handle.get(&id).is_some_and(|e| e.dir) {
                inner.remove_below(path);
            }
            inner.remove(id);
        }
        let parent = path
            .split_last()
            .and_then(|(parent, _)| inner.by_path.get(&parent).copied())
            .unwrap_or(0);
        let id = inner.next;
        inner.next += 1;
        inner.insert(id, path.clone(), inode, parent, dir);
        inner.by_path.insert(path.clone(), id);
        if inner.files > self.max_files {
            inner.evict(self.max_files);
        }
        Handle::new(id, inode, parent)
    }

    /// Where `handle` is and which inode it stands for, if the table holds it.
    pub(crate) fn get(&self, handle: &Handle) -> Option<(SharePath, u64)> {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let e = inner
            .by_handle
            .get_mut(&handle.id())
            .filter(|e| e.inode == handle.inode())?;
        e.used = clock;
        Some((e.path.clone(), e.inode))
    }

    /// The directory a file `handle` the table no longer holds was handed out in, to find
    /// it again by its inode; `None` when that cannot be (never a handle of this table,
    /// or its directory is gone).
    pub(crate) fn parent_of_evicted(&self, handle: &Handle) -> Option<SharePath> {
        let inner = self.lock();
        if handle.id() >= inner.next || inner.by_handle.contains_key(&handle.id()) {
            return None;
        }
        let parent = inner.by_handle.get(&handle.parent()).filter(|e| e.dir)?;
        Some(parent.path.clone())
    }

    /// Takes file `handle` back in, found again at `path`.
    pub(crate) fn restore(&self, handle: &Handle, path: &SharePath) {
        let mut inner = self.lock();
        if inner.by_handle.contains_key(&handle.id()) {
            return;
        }
        let id = handle.id();
        inner.insert(id, path.clone(), handle.inode(), handle.parent(), false);
        inner.by_path.entry(path.clone()).or_insert(id);
        if inner.files > self.max_files {
            inner.evict(self.max_files);
        }
    }

    /// Forgets `handle` (its path now holds something else, or nothing), and for a
    /// directory what was below it.
    pub(crate) fn forget(&self, handle: &Handle) {
        let mut inner = self.lock();
        let Some(e) = inner.by_handle.get(&handle.id()) else {
            return;
        };
        if e.dir {
            let path = e.path.clone();
            inner.remove_below(&path);
        }
        inner.remove(handle.id());
    }

    /// Forgets `path` and everything below it.
    pub(crate) fn removed(&self, path: &SharePath) {
        let mut inner = self.lock();
        let Some(&id) = inner.by_path.get(path) else {
            return;
        };
        if inner.by_handle.get(&id).is_some_and(|e| e.dir) {
            inner.remove_below(path);
        }
        inner.remove(id);
    }

    /// Moves `from` and everything below it to `to`; whatever `to` held is gone.
    pub(crate) fn renamed(&self, from: &SharePath, to: &SharePath) {
        if from == to {
            return;
        }
        self.removed(to);
        let mut inner = self.lock();
        let Some(&id) = inner.by_path.get(from) else {
            return;
        };
        let parent = to
            .split_last()
            .and_then(|(parent, _)| inner.by_path.get(&parent).copied())
            .unwrap_or(0);
        let moved: Vec<u64> = match inner.by_handle.get(&id) {
            Some(e) if e.dir => inner
                .by_handle
                .iter()
                .filter(|(_, e)| e.path.is_within(from))
                .map(|(&id, _)| id)
                .collect(),
            _ => vec![id],
        };
        for moved_id in moved {
            let Inner {
                by_handle, by_path, ..
            } = &mut *inner;
            let e = by_handle.get_mut(&moved_id).expect("listed above");
            let rest = &e.path.as_str()[from.as_str().len()..];
            let new = SharePath::new(&format!("{}{rest}", to.as_str())).expect("a valid path");
            if by_path.get(&e.path) == Some(&moved_id) {
                by_path.remove(&e.path);
            }
            by_path.insert(new.clone(), moved_id);
            e.path = new;
            if moved_id == id {
                e.parent = parent;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("handle table lock")
    }
}

impl Inner {
    fn insert(&mut self, id: u64, path: SharePath, inode: u64, parent: u64, dir: bool) {
        self.clock += 1;
        let used = self.clock;
        self.files += usize::from(!dir);
        let entry = Entry {
            path,
            inode,
            parent,
            dir,
            used,
        };
        self.by_handle.insert(id, entry);
    }

    fn remove(&mut self, id: u64) {
        if let Some(e) = self.by_handle.remove(&id) {
            self.files -= usize::from(!e.dir);
            if self.by_path.get(&e.path) == Some(&id) {
                self.by_path.remove(&e.path);
            }
        }
    }

    /// Removes what is strictly below directory `path`.
    fn remove_below(&mut self, path: &SharePath) {
        let below: Vec<u64> = self
            .by_handle
            .iter()
            .filter(|(_, e)| e.path.is_within(path) && e.path != *path)
            .map(|(&id, _)| id)
            .collect();
        for id in below {
            self.remove(id);
        }
    }

    /// Drops the least recently used eighth of the files, so that evicting costs a scan
    /// per `max_files / 8` new files, not one per file.
    fn evict(&mut self, max_files: usize) {
        let mut files: Vec<(u64, u64)> = self
            .by_handle
            .iter()
            .filter(|(_, e)| !e.dir)
            .map(|(&id, e)| (e.used, id))
            .collect();
        let keep = max_files - max_files / 8;
        let doomed = files.len().saturating_sub(keep);
        if doomed == 0 {
            return;
        }
        files.select_nth_unstable(doomed - 1);
        for &(_, id) in &files[..doomed] {
            self.remove(id);
        }
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
        let table = HandleTable::new(2, DEFAULT_FILE_HANDLES);
        let old = table.handle(&p("vm1.vmx"), 42, false);
        assert_eq!(table.handle(&p("vm1.vmx"), 42, false), old, "the same file");
        let new = table.handle(&p("vm1.vmx"), 43, false);
        assert_ne!(new.id(), old.id(), "replaced behind the server's back");
        assert_eq!(table.get(&old), None);
        let dir = table.handle(&p("vm2"), 50, true);
        let below = table.handle(&p("vm2/vm2.vmx"), 51, false);
        table.handle(&p("vm2"), 52, true);
        assert_eq!(
            (table.get(&dir), table.get(&below)),
            (None, None),
            "a directory replaced"
        );
        table.removed(&p("vm1.vmx"));
        assert_ne!(
            table.handle(&p("vm1.vmx"), 42, false).id(),
            old.id(),
            "never handed out twice"
        );
    }

    #[test]
    fn renames_move_whole_subtrees_and_drop_what_they_replace() {
        let table = HandleTable::new(2, DEFAULT_FILE_HANDLES);
        let vm1 = table.handle(&p("vm1"), 10, true);
        let vmx = table.handle(&p("vm1/vm1.vmx"), 11, false);
        let vm10 = table.handle(&p("vm10"), 14, true);
        let other = table.handle(&p("vm10/vm10.vmx"), 12, false);
        let vm2 = table.handle(&p("vm2"), 13, true);
        table.renamed(&p("vm1"), &p("vm2"));
        assert_eq!(table.get(&vm1), Some((p("vm2"), 10)));
        assert_eq!(table.get(&vmx), Some((p("vm2/vm1.vmx"), 11)));
        assert_eq!(table.handle(&p("vm2/vm1.vmx"), 11, false), vmx);
        assert_eq!(
            table.get(&other),
            Some((p("vm10/vm10.vmx"), 12)),
            "a common prefix"
        );
        assert_eq!(table.get(&vm2), None, "the replaced directory");
        // A file renamed over another, within a directory and into another.
        let tmp = table.handle(&p("vm2/.vm1.vmx.tmp"), 15, false);
        table.renamed(&p("vm2/.vm1.vmx.tmp"), &p("vm2/vm1.vmx"));
        assert_eq!(table.get(&vmx), None, "replaced");
        assert_eq!(table.get(&tmp), Some((p("vm2/vm1.vmx"), 15)));
        table.renamed(&p("vm2/vm1.vmx"), &p("vm10/moved.vmx"));
        assert_eq!(table.get(&tmp), Some((p("vm10/moved.vmx"), 15)));
        let moved = table.handle(&p("vm10/moved.vmx"), 15, false);
        assert_eq!(moved.parent(), vm10.id(), "now handed out in vm10");
        table.removed(&p("vm10"));
        assert_eq!((table.get(&vm10), table.get(&other)), (None, None));
        table.removed(&p("vm2"));
        assert_eq!((table.get(&vm1), table.get(&tmp)), (None, None));
        assert_eq!(table.get(&table.root()), Some((SharePath::root(), 2)));
        assert_eq!(table.lock().by_handle.len(), 1);
        assert_eq!(table.lock().by_path.len(), 1);
    }

    #[test]
    fn files_past_the_bound_go_least_recently_used_first_and_can_be_restored() {
        let table = HandleTable::new(2, 80);
        let dirs: Vec<Handle> = (0..10)
            .map(|d| table.handle(&p(&format!("vm{d}")), 100 + d, true))
            .collect();
        let first = table.handle(&p("vm0/vm0.vmx"), 1000, false);
        let mut handles = vec![first];
        for i in 1..1000u64 {
            let path = p(&format!("vm{}/f{i}", i % 10));
            handles.push(table.handle(&path, 1000 + i, false));
            // The first file is in use all along.
            assert!(table.get(&first).is_some(), "{i}");
        }
        let inner = table.lock();
        assert!(inner.files <= 80, "{}", inner.files);
        assert_eq!(
            inner.by_handle.len(),
            inner.files + 11,
            "every directory kept"
        );
        assert_eq!(inner.by_path.len(), inner.by_handle.len());
        drop(inner);
        for d in &dirs {
            assert!(table.get(d).is_some());
        }
        // An evicted file is named by its directory, and comes back under its handle.
        let evicted = handles[5];
        assert_eq!(table.get(&evicted), None);
        assert_eq!(table.parent_of_evicted(&evicted), Some(p("vm5")));
        table.restore(&evicted, &p("vm5/f5"));
        assert_eq!(table.get(&evicted), Some((p("vm5/f5"), 1005)));
        // What this table never handed out, or hands out now, is not taken for evicted.
        assert_eq!(
            table.parent_of_evicted(&Handle::new(1 << 40, 1, dirs[0].id())),
            None
        );
        assert_eq!(table.parent_of_evicted(&handles[999]), None);
        // A handle claiming another inode than its number stands for is not that file.
        assert_eq!(table.get(&Handle::new(first.id(), 7, first.parent())), None);
    }
}
