//! The kernel's side: `fuser` callbacks turned into [`Container`] calls, and errors into
//! errnos. Nothing here decides anything about the datastore.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use cvol_share::{SetAttributes, SetTime};
use fuser::{
    BackingId, Config, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::fs::{Attr, Caller, Container, Entry, NodeKind, Opened};
use crate::listings::Listings;
use crate::watch::{Handed, Watch};
use crate::Errno;

/// How long the kernel may keep names and attributes by default, while the daemon
/// watches them on the share for it ([`crate::watch`]): a repeated pass over 10,000 VM
/// folders within it is served by the kernel alone.
pub const DEFAULT_KERNEL_CACHE: Duration = Duration::from_secs(10);

/// The most the kernel keeps anything on a share that keeps nothing it read
/// (`--attr-cache-ms 0`, or a local directory), where nothing is watched: short, like
/// the NFS client's `acregmin`, as other hosts change the share too.
const UNWATCHED_KERNEL_CACHE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Backing {
    by_handle: HashMap<u64, Arc<BackingId>>,
    by_inode: HashMap<u64, Weak<BackingId>>,
}

struct Adapter {
    container: Arc<Container>,
    passthrough: AtomicBool,
    /// Passthrough backing ids. The kernel ties an inode to one backing file while any
    /// passthrough open of it lasts, so concurrent opens of an inode must share one id:
    /// handles hold it, and the inode's entry finds it while any handle does.
    backing: Mutex<Backing>,
    /// The directory reads in progress.
    listings: Listings,
    /// How long the kernel keeps the names and attributes it is given.
    ttl: Duration,
    /// What the kernel was given, when the daemon watches it.
    handed: Option<Arc<Handed>>,
}

/// Counts a request of the kernel's that reads metadata (`cvol_fuse_requests_total`),
/// which tells how much the kernel's caches spare the daemon. Disk I/O is counted by
/// volume elsewhere.
fn count(op: &'static str) {
    metrics::counter!("cvol_fuse_requests_total", "op" => op).increment(1);
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: encode_dev(a.rdev),
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::File => FileType::RegularFile,
        NodeKind::Dir => FileType::Directory,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Fifo => FileType::NamedPipe,
        NodeKind::Socket => FileType::Socket,
        NodeKind::CharDevice => FileType::CharDevice,
        NodeKind::BlockDevice => FileType::BlockDevice,
    }
}

/// A device number as FUSE carries it (the kernel's `new_encode_dev`).
fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// A device number from FUSE's encoding (the kernel's `new_decode_dev`).
fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    rustix::fs::makedev(major, minor)
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::SpecificTime(t) => SetTime::At(t),
        TimeOrNow::Now => SetTime::Now,
    })
}

impl Adapter {
    /// `attr` as the kernel is given it, noted for the watch.
    fn hand(&self, attr: &Attr) -> FileAttr {
        if let Some(handed) = &self.handed {
            handed.note(attr, self.ttl);
        }
        file_attr(attr)
    }

    /// Replies to an open of `ino`, through passthrough when the container offers a
    /// backing file.
    fn reply_open(&self, ino: u64, opened: Opened, reply: ReplyOpen) {
        if let Some(device) = opened
            .passthrough
            .filter(|_| self.passthrough.load(Ordering::Relaxed))
        {
            let file = device
                .backing_file()
                .expect("passthrough devices have a backing file");
            let mut backing = self.backing.lock().expect("backing lock");
            let id = match backing.by_inode.get(&ino).and_then(Weak::upgrade) {
                Some(id) => Ok(id),
                None => reply.open_backing(file).map(Arc::new),
            };
            match id {
                Ok(id) => {
                    reply.opened_passthrough(FileHandle(opened.fh), FopenFlags::empty(), &id);
                    backing.by_inode.insert(ino, Arc::downgrade(&id));
                    backing.by_handle.insert(opened.fh, id);
                    return;
                }
                Err(e) => tracing::warn!(
                    "passthrough refused by the kernel ({e}); serving through the daemon"
                ),
            }
        }
        reply.opened(FileHandle(opened.fh), FopenFlags::empty());
    }
}

impl Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if self.passthrough.load(Ordering::Relaxed) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok();
            if !ok {
                tracing::warn!("this kernel has no FUSE passthrough (Linux >= 6.9); disk I/O goes through the daemon");
            }
            self.passthrough.store(ok, Ordering::Relaxed);
        }
        let _ = config.set_max_write(1 << 20);
        // Listings carry each entry's attributes, so `ls -l` of a thousand VMs is a few
        // READDIRPLUS requests instead of a thousand LOOKUPs.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // See `opendir`: the kernel checks a directory's times before reading it from
        // its cache, and a file's before reading its pages.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }

    fn destroy(&mut self) {
        self.container.shutdown();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        count("lookup");
        match self.container.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&self.ttl, &self.hand(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        count("getattr");
        match self.container.getattr(ino.0, fh.map(|fh| fh.0)) {
            Ok(attr) => reply.attr(&self.ttl, &self.hand(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = SetAttributes {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            accessed: set_time(atime),
            modified: set_time(mtime),
        };
        match self.container.setattr(ino.0, fh.map(|fh| fh.0), &changes) {
            Ok(attr) => reply.attr(&self.ttl, &self.hand(&attr)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.container.readlink(ino.0) {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        match self
            .container
            .mkdir(parent.0, name, mode & !umask, caller(req))
        {
            Ok(attr) => reply.entry(&self.ttl, &self.hand(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mode = mode & (libc::S_IFMT | (0o7777 & !umask));
        match self
            .container
            .mknod(parent.0, name, mode, decode_dev(rdev), caller(req))
        {
            Ok(attr) => reply.entry(&self.ttl, &self.hand(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        match self.container.link(ino.0, newparent.0, newname) {
            Ok(attr) => reply.entry(&self.ttl, &self.hand(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.container.unlink(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.container.rmdir(parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = target
            .to_str()
            .ok_or(Errno::INVAL)
            .and_then(|t| self.container.symlink(parent.0, link_name, t, caller(req)));
        match result {
            Ok(attr) => reply.entry(&self.ttl, &self.hand(&attr), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(fuser::Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        match self
            .container
            .rename(parent.0, name, newparent.0, newname, noreplace)
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.container.open(ino.0, flags.0 & libc::O_TRUNC != 0) {
            Ok(opened) => self.reply_open(ino.0, opened, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.container.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.container.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.container.flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        {
            let mut backing = self.backing.lock().expect("backing lock");
            backing.by_handle.remove(&fh.0);
            backing.by_inode.retain(|_, id| id.strong_count() > 0);
        }
        match self.container.release(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.container.fsync(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Answered ENOSYS, which the kernel takes for "no OPENDIR ever": it opens and
    /// releases directories without asking, and keeps what it read of each in its page
    /// cache for as long as the directory's modification time stays the same (it checks
    /// it, asking the daemon once its attributes are older than the kernel cache time,
    /// on every read from the start: `FUSE_AUTO_INVAL_DATA`). A repeated `ls -l` of
    /// thousands of VM folders within that time then costs no request at all, where an
    /// OPENDIR and a RELEASEDIR per folder cost 65-80 µs each folder (BENCHMARKS.md).
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        count("opendir");
        reply.error(fuser::Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        count("readdir");
        let dir = ino.0;
        let (cursor, entries) = match self
            .listings
            .read(dir, offset, || self.container.readdir(dir))
        {
            Ok(read) => read,
            Err(e) => return reply.error(errno(e)),
        };
        let mut sent = false;
        for (i, (ino, kind, name)) in with_dots(dir, &entries).skip(cursor.position as usize) {
            if reply.add(INodeNo(ino), cursor.offset_after(i), kind, name) {
                break;
            }
            sent = true;
        }
        if !sent {
            self.listings.done(cursor);
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: fuser::ReplyDirectoryPlus,
    ) {
        count("readdirplus");
        let dir = ino.0;
        let (read, dir_attr) = (
            self.listings
                .read(dir, offset, || self.container.readdir(dir)),
            self.container.getattr(dir, None),
        );
        let ((cursor, entries), dir_attr) = match (read, dir_attr) {
            (Ok(read), Ok(attr)) => (read, attr),
            (Err(e), _) | (_, Err(e)) => return reply.error(errno(e)),
        };
        let mut sent = false;
        for (i, (ino, _, name)) in with_dots(dir, &entries).skip(cursor.position as usize) {
            // The kernel takes no attributes from "." and ".."; the others are looked up
            // as LOOKUP would (from what the share listing just learnt).
            let attr = if ino == dir {
                dir_attr.clone()
            } else {
                match self.container.lookup(dir, OsStr::new(name)) {
                    Ok(attr) => attr,
                    Err(_) => continue, // gone since the listing
                }
            };
            if reply.add(
                INodeNo(attr.ino),
                cursor.offset_after(i),
                name,
                &self.ttl,
                &self.hand(&attr),
                Generation(0),
            ) {
                break;
            }
            sent = true;
        }
        if !sent {
            self.listings.done(cursor);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.container.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.blocks_free,
                s.blocks_available,
                s.files,
                s.files_free,
                s.block_size,
                s.name_max,
                s.block_size,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .container
            .create(parent.0, name, mode & !umask & 0o7777, caller(req))
        {
            Ok((attr, opened)) => reply.created(
                &self.ttl,
                &self.hand(&attr),
                Generation(0),
                FileHandle(opened.fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Extended attributes: an NFSv3 share has none, so the container has none either.
    // ENOSYS (which the kernel turns into EOPNOTSUPP for the caller) makes the kernel stop
    // asking; any other errno and it asks again for every file `ls -l` shows.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fuser::Errno::ENOSYS);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        match self.container.fallocate(fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// A mounted container, served by background threads until unmounted.
pub struct MountedContainer {
    session: fuser::BackgroundSession,
    /// The watch of what the kernel keeps, if any; stopped before the unmount.
    watch: Option<Watch>,
    mountpoint: PathBuf,
}

impl MountedContainer {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// True once the kernel side is gone (someone unmounted it).
    pub fn is_finished(&self) -> bool {
        self.session.guard.is_finished()
    }

    /// Unmounts and waits for the serving threads; the container flushes and detaches
    /// every volume on the way out.
    ///
    /// The unmount is the one `cvol umount` does: not lazy, and waiting a while for
    /// files still open, which a lazy detach would leave working on a daemon that is
    /// going away. Only a mount still busy after that is detached lazily.
    pub fn unmount(mut self) -> io::Result<()> {
        drop(self.watch.take());
        if !self.is_finished() {
            match unmount(&self.mountpoint) {
                Ok(()) => {
                    while !self.is_finished() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Err(e) => tracing::warn!("{}: {e}; detaching it lazily", self.mountpoint.display()),
            }
        }
        let finished = self.is_finished();
        match self.session.umount_and_join() {
            // Unmounted already, so the kernel has nothing left to unmount; said here
            // rather than letting the session warn about it.
            Err(e) if finished && e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            other => other,
        }
    }
}

/// How a container is mounted.
#[derive(Debug, Clone)]
pub struct MountSettings {
    /// Threads serving kernel requests.
    pub threads: usize,
    /// Ask the kernel for FUSE passthrough of disks backed by local files.
    pub passthrough: bool,
    /// Let users other than the mounting one in (a hypervisor running as its own user).
    pub allow_other: bool,
    /// How long the kernel keeps names, attributes and listings before asking again
    /// ([`DEFAULT_KERNEL_CACHE`]). Where this is longer than the share keeps what it
    /// reads, the daemon watches what the kernel keeps, a round every three quarters of
    /// that, and makes the kernel drop what changed; where the share keeps nothing,
    /// the kernel keeps things for 1 s at most.
    pub kernel_cache: Duration,
}

/// Mounts `container` at `mountpoint`, an existing directory.
pub fn mount(
    container: Arc<Container>,
    mountpoint: &Path,
    settings: &MountSettings,
) -> io::Result<MountedContainer> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("cvol:{}", container.datastore().config().name)),
        MountOption::Subtype("cvol".into()),
        MountOption::DefaultPermissions,
    ];
    if settings.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(settings.threads.max(1));
    config.clone_fd = true;
    let every = container.datastore().share().attribute_cache();
    let watched = !every.is_zero() && settings.kernel_cache > every;
    let handed = watched.then(|| Arc::new(Handed::default()));
    let adapter = Adapter {
        container: container.clone(),
        passthrough: AtomicBool::new(settings.passthrough),
        backing: Mutex::new(Backing::default()),
        listings: Listings::default(),
        ttl: match every.is_zero() {
            true => settings.kernel_cache.min(UNWATCHED_KERNEL_CACHE),
            false => settings.kernel_cache,
        },
        handed: handed.clone(),
    };
    let session = fuser::spawn_mount(adapter, mountpoint, &config)?;
    let watch = handed
        .map(|handed| Watch::start(container, handed, session.notifier(), every * 3 / 4))
        .transpose()?;
    Ok(MountedContainer {
        session,
        watch,
        mountpoint: mountpoint.to_path_buf(),
    })
}

/// How long an unmount waits out EBUSY: the kernel holds the mount until the daemon
/// answers the RELEASE of each file closed just before (detaching a disk may flush it).
const UNMOUNT_PATIENCE: Duration = Duration::from_secs(30);

/// Unmounts whatever container is mounted at `mountpoint`, as `cvol umount` does. While
/// the mount is busy it tries again, for files closed just before; one still open keeps
/// it busy, and after a while that is the error.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let start = std::time::Instant::now();
    loop {
        match unmount_once(mountpoint) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < UNMOUNT_PATIENCE =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

fn unmount_once(mountpoint: &Path) -> io::Result<()> {
    match rustix_unmount(mountpoint) {
        Ok(()) => Ok(()),
        // Not root: the setuid helper may unmount our own mounts.
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "fusermount3 -u {} failed",
                    mountpoint.display()
                )))
            }
        }
        Err(e) => Err(e),
    }
}

fn rustix_unmount(mountpoint: &Path) -> io::Result<()> {
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
        .map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; umount2 reads it and nothing else.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A directory's entries after "." and "..", each with the offset it is at.
fn with_dots<'e>(
    dir: u64,
    entries: &'e [Entry],
) -> impl Iterator<Item = (u64, (u64, FileType, &'e str))> + 'e {
    let dots = [
        (dir, FileType::Directory, "."),
        (dir, FileType::Directory, ".."),
    ];
    dots.into_iter()
        .chain(
            entries
                .iter()
                .map(|e| (e.ino, file_type(e.kind), e.name.as_str())),
        )
        .enumerate()
        .map(|(i, entry)| (i as u64, entry))
}
