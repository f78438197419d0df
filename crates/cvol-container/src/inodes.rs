//! Inode numbers for share paths.
//!
//! The kernel names files by inode number; the share names them by path. Numbers are
//! handed out on first sight and kept for the life of the mount (entries are dropped
//! when the path goes away, not on FORGET): a datastore's metadata is thousands of files,
//! and a stable number per path is what keeps the kernel's caches right across renames.
//! The names of a file with several hard links share its number.

use std::collections::HashMap;

use cvol_share::SharePath;

/// The root's inode number, fixed by FUSE.
pub const ROOT: u64 = 1;

/// Paths ↔ inode numbers.
#[derive(Debug)]
pub struct Inodes {
    /// One current name of each number.
    by_ino: HashMap<u64, SharePath>,
    by_path: HashMap<SharePath, u64>,
    /// The numbers of files with several links, by the share's inode number.
    linked: HashMap<u64, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        Self {
            by_ino: HashMap::from([(ROOT, SharePath::root())]),
            by_path: HashMap::from([(SharePath::root(), ROOT)]),
            linked: HashMap::new(),
            next: ROOT + 1,
        }
    }
}

impl Inodes {
    /// The path of `ino`.
    pub fn path(&self, ino: u64) -> Option<&SharePath> {
        self.by_ino.get(&ino)
    }

    /// The inode number of `path`, if it has one.
    pub fn ino_if_known(&self, path: &SharePath) -> Option<u64> {
        self.by_path.get(path).copied()
    }

    /// The number given to the file with share inode `share_inode` (one with several
    /// links) and a name it had, if one was noted.
    pub fn linked(&self, share_inode: u64) -> Option<(u64, SharePath)> {
        let ino = *self.linked.get(&share_inode)?;
        Some((ino, self.by_ino.get(&ino)?.clone()))
    }

    /// Notes that `ino` is the file with share inode `share_inode`.
    pub fn note_linked(&mut self, share_inode: u64, ino: u64) {
        self.linked.insert(share_inode, ino);
    }

    /// Makes `path` one more name of `ino`.
    pub fn alias(&mut self, path: &SharePath, ino: u64) {
        self.by_path.insert(path.clone(), ino);
        self.by_ino.entry(ino).or_insert_with(|| path.clone());
    }

    /// The inode number of `path`, given one if it has none.
    pub fn ino(&mut self, path: &SharePath) -> u64 {
        if let Some(&ino) = self.by_path.get(path) {
            return ino;
        }
        let ino = self.next;
        self.next += 1;
        self.by_ino.insert(ino, path.clone());
        self.by_path.insert(path.clone(), ino);
        ino
    }

    /// Forgets `path` and everything below it.
    pub fn remove(&mut self, path: &SharePath) {
        let gone: Vec<SharePath> = self
            .by_path
            .keys()
            .filter(|p| p.is_within(path))
            .cloned()
            .collect();
        for p in gone {
            if let Some(ino) = self.by_path.remove(&p) {
                self.unname(ino, &p);
            }
        }
    }

    /// `ino` lost its name `old`: another of its names stands for it, or it is gone.
    fn unname(&mut self, ino: u64, old: &SharePath) {
        if self.by_ino.get(&ino) != Some(old) {
            return;
        }
        match self.by_path.iter().find(|(_, &i)| i == ino) {
            Some((other, _)) => {
                self.by_ino.insert(ino, other.clone());
            }
            None => {
                self.by_ino.remove(&ino);
                self.linked.retain(|_, &mut i| i != ino);
            }
        }
    }

    /// Moves `from` and everything below it to `to`, keeping their numbers; whatever
    /// was at `to` is forgotten.
    pub fn rename(&mut self, from: &SharePath, to: &SharePath) {
        self.remove(to);
        let moved: Vec<(SharePath, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| p.is_within(from))
            .map(|(p, &ino)| (p.clone(), ino))
            .collect();
        for (old, ino) in moved {
            let rest = &old.as_str()[from.as_str().len()..];
            let new = SharePath::new(&format!("{}{rest}", to.as_str()))
                .expect("a renamed valid path is valid");
            self.by_path.remove(&old);
            self.by_path.insert(new.clone(), ino);
            if self.by_ino.get(&ino) == Some(&old) {
                self.by_ino.insert(ino, new);
            }
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
    fn renames_carry_children_and_keep_numbers() {
        let mut inodes = Inodes::default();
        let vm = inodes.ino(&p("vm1"));
        let vmx = inodes.ino(&p("vm1/vm1.vmx"));
        let other = inodes.ino(&p("vm10/x"));
        assert_eq!(inodes.ino(&p("vm1")), vm);
        inodes.rename(&p("vm1"), &p("vm2"));
        assert_eq!(inodes.path(vm), Some(&p("vm2")));
        assert_eq!(inodes.path(vmx), Some(&p("vm2/vm1.vmx")));
        assert_eq!(
            inodes.path(other),
            Some(&p("vm10/x")),
            "a sibling with a common prefix stays"
        );
        inodes.remove(&p("vm2"));
        assert_eq!(inodes.path(vmx), None);
        assert_eq!(inodes.path(ROOT), Some(&SharePath::root()));
    }

    #[test]
    fn hard_links_share_a_number_until_their_last_name_goes() {
        let mut inodes = Inodes::default();
        let a = inodes.ino(&p("vm1/a"));
        inodes.note_linked(77, a);
        assert_eq!(inodes.linked(77), Some((a, p("vm1/a"))));
        inodes.alias(&p("vm1/b"), a);
        assert_eq!(inodes.ino(&p("vm1/b")), a);
        inodes.remove(&p("vm1/a"));
        assert_eq!(
            inodes.path(a),
            Some(&p("vm1/b")),
            "the other name stands in"
        );
        assert_eq!(inodes.linked(77), Some((a, p("vm1/b"))));
        inodes.rename(&p("vm1/b"), &p("vm1/c"));
        assert_eq!(inodes.path(a), Some(&p("vm1/c")));
        inodes.remove(&p("vm1/c"));
        assert_eq!(inodes.path(a), None);
        assert_eq!(inodes.linked(77), None);
    }
}
