//! Directory reads in progress, known only by their offsets.
//!
//! The container answers no OPENDIR (see `Adapter::opendir`), so the kernel sends no
//! handle with its reads of a directory. A read from the start takes a snapshot of the
//! listing, and each offset handed to the kernel names that snapshot and a position in
//! it: a read that goes on (a big directory comes in many requests) goes on through the
//! same entries, even if another read of the directory began meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::fs::Entry;

/// Snapshots kept at most, and their entries at most (a few MiB): a read that stops
/// before the end (`ls | head`) never says it is done, so the oldest are let go.
const KEPT: usize = 1024;
const KEPT_ENTRIES: usize = 100_000;

/// The listings of the directory reads in progress.
#[derive(Default)]
pub(crate) struct Listings {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    snapshots: HashMap<u32, (u64, Arc<Vec<Entry>>)>,
    /// Snapshot ids, oldest first.
    order: VecDeque<u32>,
    /// The entries of all snapshots.
    entries: usize,
    last: u32,
}

impl Inner {
    fn remove(&mut self, id: u32) {
        if let Some((_, entries)) = self.snapshots.remove(&id) {
            self.entries -= entries.len();
        }
    }
}

/// Where a read of a directory stands: its snapshot and the position in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cursor {
    snapshot: u32,
    /// Entries (counting "." and "..") already read.
    pub(crate) position: u64,
}

impl Cursor {
    /// The cursor an offset from the kernel names (0: the start).
    pub(crate) fn from_offset(offset: u64) -> Cursor {
        Cursor {
            snapshot: (offset >> 32) as u32,
            position: offset & u64::from(u32::MAX),
        }
    }

    /// The offset to hand the kernel with the entry at `index` (counting "." and ".."):
    /// a read from it goes on after that entry.
    pub(crate) fn offset_after(self, index: u64) -> u64 {
        (u64::from(self.snapshot) << 32) | (index + 1)
    }
}

impl Listings {
    /// The entries of directory `dir` for a read at `offset`: the snapshot the read began
    /// with, or, for a read from the start (or one whose snapshot was let go), a new one
    /// that `list` makes.
    pub(crate) fn read<E>(
        &self,
        dir: u64,
        offset: u64,
        list: impl FnOnce() -> Result<Vec<Entry>, E>,
    ) -> Result<(Cursor, Arc<Vec<Entry>>), E> {
        let cursor = Cursor::from_offset(offset);
        if offset != 0 {
            let inner = self.inner.lock().expect("listings lock");
            if let Some((of, entries)) = inner.snapshots.get(&cursor.snapshot) {
                if *of == dir {
                    return Ok((cursor, entries.clone()));
                }
            }
        }
        let entries = Arc::new(list()?);
        let snapshot = self.keep(dir, entries.clone());
        Ok((
            Cursor {
                snapshot,
                position: cursor.position,
            },
            entries,
        ))
    }

    /// Lets the snapshot of a read go once the read reached the end.
    pub(crate) fn done(&self, cursor: Cursor) {
        let mut inner = self.inner.lock().expect("listings lock");
        inner.remove(cursor.snapshot);
        inner.order.retain(|&id| id != cursor.snapshot);
    }

    fn keep(&self, dir: u64, entries: Arc<Vec<Entry>>) -> u32 {
        let mut inner = self.inner.lock().expect("listings lock");
        while inner.order.len() >= KEPT || inner.entries + entries.len() > KEPT_ENTRIES {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.remove(old);
        }
        inner.entries += entries.len();
        // Ids never 0, so that no offset but the start is 0.
        let mut id = inner.last.wrapping_add(1).max(1);
        while inner.snapshots.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        inner.last = id;
        inner.snapshots.insert(id, (dir, entries));
        inner.order.push_back(id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::NodeKind;

    fn entries(names: &[&str]) -> Vec<Entry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Entry {
                ino: 100 + i as u64,
                kind: NodeKind::File,
                name: n.to_string(),
            })
            .collect()
    }

    fn names(e: &[Entry]) -> Vec<&str> {
        e.iter().map(|e| e.name.as_str()).collect()
    }

    #[test]
    fn a_read_goes_on_through_its_own_snapshot_while_another_begins() {
        let l = Listings::default();
        let ok = |v| Ok::<_, ()>(entries(v));
        let (first, a) = l.read(7, 0, || ok(&["x", "y"])).unwrap();
        let next = first.offset_after(2);
        assert_ne!(next, 0);
        // Another read from the start, after the directory changed.
        let (second, b) = l.read(7, 0, || ok(&["w", "x", "y"])).unwrap();
        assert_ne!(first.offset_after(2), second.offset_after(2));
        let (again, a2) = l
            .read(7, next, || -> Result<_, ()> { panic!("listed again") })
            .unwrap();
        assert_eq!(again.position, 3);
        assert_eq!(names(&a2), names(&a));
        assert_eq!(names(&b), ["w", "x", "y"]);
    }

    #[test]
    fn a_snapshot_let_go_or_of_another_directory_is_listed_again_at_the_same_position() {
        let l = Listings::default();
        let ok = |v| Ok::<_, ()>(entries(v));
        let (c, _) = l.read(7, 0, || ok(&["x"])).unwrap();
        let offset = c.offset_after(4);
        let (other, e) = l.read(8, offset, || ok(&["z"])).unwrap();
        assert_eq!((other.position, names(&e)), (5, vec!["z"]));
        l.done(c);
        let (c2, e) = l.read(7, offset, || ok(&["x", "y"])).unwrap();
        assert_eq!((c2.position, names(&e)), (5, vec!["x", "y"]));
        assert_eq!(l.read(7, 0, || Err(())).unwrap_err(), ());
    }

    #[test]
    fn reads_that_never_end_are_let_go_beyond_the_bounds() {
        let l = Listings::default();
        let (first, _) = l.read(1, 0, || Ok::<_, ()>(entries(&["a"]))).unwrap();
        for dir in 0..KEPT as u64 {
            l.read(dir + 2, 0, || Ok::<_, ()>(entries(&["b"]))).unwrap();
        }
        assert_eq!(l.inner.lock().unwrap().snapshots.len(), KEPT);
        let big = vec!["x"; KEPT_ENTRIES / 2];
        for dir in 0..3 {
            l.read(dir, 0, || Ok::<_, ()>(entries(&big))).unwrap();
        }
        let inner = l.inner.lock().unwrap();
        assert!(
            inner.entries <= KEPT_ENTRIES,
            "{} entries kept",
            inner.entries
        );
        assert_eq!(inner.snapshots.len(), 2);
        drop(inner);
        let mut listed = false;
        l.read(1, first.offset_after(1), || {
            listed = true;
            Ok::<_, ()>(entries(&["a"]))
        })
        .unwrap();
        assert!(listed, "the oldest snapshot was kept");
    }
}
