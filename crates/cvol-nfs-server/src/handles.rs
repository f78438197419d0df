//! Which share path each file handle stands for.
//!
//! A handle is the file's inode number, so it stays the same across renames and is never
//! reused for another file while that file exists. The table maps it back to the path
//! it was last seen at; the export checks that the path still holds that inode before
//! every use, so a handle whose file was renamed or removed behind the server's back
//! answers NFS3ERR_STALE and the client looks the name up again.

use std::collections::HashMap;
use std::sync::Mutex;

use cvol_share::SharePath;

/// Inode number → the path it was last seen at.
#[derive(Default)]
pub(crate) struct HandleTable {
    paths: Mutex<HashMap<u64, SharePath>>,
}

impl HandleTable {
    /// Records that `inode` is at `path`.
    pub(crate) fn insert(&self, inode: u64, path: SharePath) {
        self.lock().insert(inode, path);
    }

    /// Where `inode` was last seen.
    pub(crate) fn path(&self, inode: u64) -> Option<SharePath> {
        self.lock().get(&inode).cloned()
    }

    /// Forgets `inode` (its path now holds something else, or nothing).
    pub(crate) fn forget(&self, inode: u64) {
        self.lock().remove(&inode);
    }

    /// Forgets `path` and everything below it.
    pub(crate) fn removed(&self, path: &SharePath) {
        self.lock().retain(|_, p| !is_at_or_below(p, path));
    }

    /// Moves `from` and everything below it to `to`; whatever `to` held is gone.
    pub(crate) fn renamed(&self, from: &SharePath, to: &SharePath) {
        let mut paths = self.lock();
        paths.retain(|_, p| !is_at_or_below(p, to));
        for p in paths.values_mut() {
            if is_at_or_below(p, from) {
                let rest = &p.as_str()[from.as_str().len()..];
                let moved = format!("{}{rest}", to.as_str());
                *p = SharePath::new(&moved).expect("a valid path with a valid prefix");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, SharePath>> {
        self.paths.lock().expect("handle table lock")
    }
}

fn is_at_or_below(path: &SharePath, top: &SharePath) -> bool {
    let (path, top) = (path.as_str(), top.as_str());
    top.is_empty()
        || path == top
        || (path.starts_with(top) && path.as_bytes().get(top.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SharePath {
        SharePath::new(s).unwrap()
    }

    #[test]
    fn renames_move_whole_subtrees_and_drop_what_they_replace() {
        let table = HandleTable::default();
        table.insert(1, p("vm1"));
        table.insert(2, p("vm1/vm1.vmx"));
        table.insert(3, p("vm10/vm10.vmx"));
        table.insert(4, p("vm2"));
        table.renamed(&p("vm1"), &p("vm2"));
        assert_eq!(table.path(1), Some(p("vm2")));
        assert_eq!(table.path(2), Some(p("vm2/vm1.vmx")));
        assert_eq!(
            table.path(3),
            Some(p("vm10/vm10.vmx")),
            "a sibling with a common prefix"
        );
        assert_eq!(table.path(4), None, "the replaced directory");
        table.removed(&p("vm2"));
        assert_eq!((table.path(1), table.path(2)), (None, None));
        assert_eq!(table.path(3), Some(p("vm10/vm10.vmx")));
    }
}
