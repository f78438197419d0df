//! The daemon's watch, on the share, of what the kernel keeps.
//!
//! The kernel keeps each name and attribute it is given for the lifetime given with it,
//! and asks the daemon nothing meanwhile; and NFSv3 tells no client of another's change.
//! A short lifetime keeps other hosts' changes in sight but makes the kernel ask about
//! every file again on every pass: a second `ls -l` of 10,000 VM folders costs 40,000
//! requests to the daemon, a second and a half on two cores. So where the share keeps
//! what it reads for a while (`--attr-cache-ms`), the kernel is given long lifetimes and
//! the daemon watches for it, as the kernel NFS client cannot: every three quarters of
//! the cache lifetime it lists again, many listings in flight at once, the folders whose
//! entries the kernel keeps, and tells the kernel to drop every name and attribute that
//! changed. Another
//! host's change is then seen as soon as through a short lifetime, and a repeated pass
//! costs the daemon nothing; the price is one listing per watched folder per round,
//! for as long as the kernel keeps something of it.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cvol_share::SharePath;
use fuser::{INodeNo, Notifier};

use crate::fs::{Attr, Container};

/// What of an inode the kernel was told: everything `stat` shows but the access time
/// (which reads move) and the blocks a disk takes (which writes move, and which only
/// its pool can tell).
fn fingerprint(attr: &Attr) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        attr.ino, attr.kind, attr.size, attr.perm, attr.nlink, attr.rdev, attr.uid, attr.gid,
    )
        .hash(&mut h);
    (attr.mtime, attr.ctime).hash(&mut h);
    h.finish()
}

/// The inodes whose attributes the kernel was given, and until when it keeps them.
#[derive(Default)]
pub(crate) struct Handed {
    kept: Mutex<HashMap<u64, (u64, Instant)>>,
}

impl Handed {
    /// Notes that the kernel was given `attr`, to keep for `lifetime`.
    pub(crate) fn note(&self, attr: &Attr, lifetime: Duration) {
        let until = Instant::now() + lifetime;
        self.kept
            .lock()
            .expect("handed lock")
            .insert(attr.ino, (fingerprint(attr), until));
    }

    /// What the kernel still keeps, by inode: forgets the rest.
    fn kept(&self) -> Vec<(u64, u64)> {
        let now = Instant::now();
        let mut kept = self.kept.lock().expect("handed lock");
        kept.retain(|_, (_, until)| *until > now);
        kept.iter()
            .map(|(&ino, &(print, _))| (ino, print))
            .collect()
    }

    /// Forgets `ino`, unless the kernel was told of it again since `print`.
    fn forget(&self, ino: u64, print: u64) {
        let mut kept = self.kept.lock().expect("handed lock");
        if kept.get(&ino).is_some_and(|&(p, _)| p == print) {
            kept.remove(&ino);
        }
    }
}

/// The thread that watches; stops when dropped.
pub(crate) struct Watch {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Watches what `handed` says the kernel keeps, a round every `every`, telling the
    /// kernel through `notifier` what changed. Rounds come more often than the share's
    /// cache lifetime, so that the handles and attributes the last round learnt are
    /// still fresh: listing a folder then costs no LOOKUP or GETATTR first.
    pub(crate) fn start(
        container: Arc<Container>,
        handed: Arc<Handed>,
        notifier: Notifier,
        every: Duration,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("cvol-watch".into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(RecvTimeoutError::Timeout) => {
                        round(&container, &handed, &notifier, every);
                    }
                    _ => return,
                }
            })?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The folder whose listing shows `path`'s attributes: its parent's, or the root's own.
fn listed_in(path: &SharePath) -> SharePath {
    path.split_last()
        .map_or_else(SharePath::root, |(parent, _)| parent)
}

/// One round: lists again every folder of which the kernel keeps something (those listed
/// within a quarter of a round are taken as they are), and tells the kernel to drop
/// what changed since it was told.
fn round(container: &Container, handed: &Handed, notifier: &Notifier, every: Duration) {
    let start = Instant::now();
    let kept = handed.kept();
    metrics::gauge!("cvol_fuse_watched_inodes").set(kept.len() as f64);
    if kept.is_empty() {
        return;
    }
    // Paths are looked up twice rather than held: at 40,000 inodes they are megabytes
    // that the allocator would keep.
    let path_of = |ino| container.path_of(ino).ok();
    let folders: Vec<SharePath> = kept
        .iter()
        .filter_map(|&(ino, _)| path_of(ino))
        .map(|path| listed_in(&path))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let share = container.datastore().share();
    let listed = share.refresh_listings(&folders, every / 4);
    let unreadable: BTreeSet<&SharePath> = folders
        .iter()
        .zip(listed)
        .filter(|(folder, listed)| !listed && share.read_dir(folder).is_err())
        .map(|(folder, _)| folder)
        .collect();
    let mut dropped = 0;
    for &(ino, print) in &kept {
        let path = path_of(ino);
        let now = path.as_ref().and_then(|path| {
            if unreadable.contains(&listed_in(path)) {
                return None;
            }
            container.attr_on_share(path).ok()
        });
        if now
            .as_ref()
            .is_some_and(|a| a.ino == ino && fingerprint(a) == print)
        {
            continue;
        }
        handed.forget(ino, print);
        dropped += 1;
        let gone = now.is_none_or(|a| a.ino != ino);
        tell_kernel(container, notifier, ino, path.as_ref(), gone);
    }
    // A round relearns the share's cache in this thread's malloc arena and frees what
    // other threads' arenas held, which glibc keeps: 10 MB more at 10,000 VM folders.
    // SAFETY: malloc_trim only gives free memory back to the kernel.
    unsafe { libc::malloc_trim(0) };
    metrics::counter!("cvol_fuse_watch_rounds_total").increment(1);
    metrics::counter!("cvol_fuse_invalidations_total").increment(dropped);
    tracing::debug!(
        "watched {} inodes in {} folders: {dropped} changed, in {:?}",
        kept.len(),
        folders.len(),
        start.elapsed()
    );
}

/// Tells the kernel to drop what it keeps of `ino` (at `path`): its attributes, and
/// its name too when the name is gone or now names another file. A kernel that no
/// longer keeps it says so, which is no error here.
fn tell_kernel(
    container: &Container,
    notifier: &Notifier,
    ino: u64,
    path: Option<&SharePath>,
    gone: bool,
) {
    if let Err(e) = notifier.inval_inode(INodeNo(ino), -1, 0) {
        tracing::trace!("inode {ino}: {e}");
    }
    let Some((parent, name)) = path.filter(|_| gone).and_then(|p| p.split_last()) else {
        return;
    };
    if let Some(parent) = container.ino_if_known(&parent) {
        if let Err(e) = notifier.inval_entry(INodeNo(parent), OsStr::new(name)) {
            tracing::trace!("{parent}/{name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::NodeKind;
    use std::time::SystemTime;

    fn attr(ino: u64, size: u64) -> Attr {
        Attr {
            ino,
            kind: NodeKind::File,
            size,
            blocks: 0,
            perm: 0o644,
            nlink: 1,
            rdev: 0,
            uid: 0,
            gid: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn what_the_kernel_was_told_again_since_a_round_looked_is_not_forgotten() {
        let handed = Handed::default();
        let hour = Duration::from_secs(3600);
        handed.note(&attr(5, 1), hour);
        let [(5, seen)] = handed.kept()[..] else {
            panic!("{:?}", handed.kept());
        };
        handed.note(&attr(5, 2), hour);
        handed.forget(5, seen);
        let [(5, again)] = handed.kept()[..] else {
            panic!("told again, forgotten: {:?}", handed.kept());
        };
        assert_ne!(again, seen, "a new size, the same fingerprint");
        handed.forget(5, again);
        assert!(handed.kept().is_empty());
    }

    #[test]
    fn what_the_kernel_no_longer_keeps_is_not_watched() {
        let handed = Handed::default();
        handed.note(&attr(5, 1), Duration::ZERO);
        handed.note(&attr(6, 1), Duration::from_secs(3600));
        assert_eq!(
            handed
                .kept()
                .iter()
                .map(|&(ino, _)| ino)
                .collect::<Vec<_>>(),
            [6]
        );
    }

    #[test]
    fn access_times_and_blocks_are_not_changes() {
        let a = attr(5, 1);
        let mut b = a.clone();
        b.atime = SystemTime::now();
        b.blocks = 99;
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.mtime = SystemTime::now();
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
