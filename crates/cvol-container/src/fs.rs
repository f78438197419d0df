//! The container's file system semantics, without FUSE (the `fuse` module adapts them).
//!
//! Every operation names nodes by inode number and says where it goes: a node is either
//! a share entry (control plane: metadata files and directories) or the flat extent of
//! a disk (data plane: its bytes are the attached volume). A flat extent `vm/X-flat.vmdk`
//! exists exactly when `vm/X.vmdk` is a valid descriptor of this datastore naming it, or
//! while a tool is writing a new disk there (see [`cvol_datastore::PendingDisk`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use cvol_datastore::{layout::CVOL_DIR, AttachedVolumes, Datastore, DatastoreError, PendingDisk};
use cvol_format::{CvolDisk, DiskName, ProviderId, VmName, VolumeId};
use cvol_provider::BlockDevice;
use cvol_share::{FileKind, Metadata, OpenFile, SetAttributes, SharePath, ShareStats};

use crate::errno::Errno;
use crate::inodes::{Inodes, ROOT};

/// What a node is, as `stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A unix socket's name.
    Socket,
    /// A character device node.
    CharDevice,
    /// A block device node.
    BlockDevice,
}

/// Who makes a request: what a new entry is owned by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// A node's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: NodeKind,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Permission bits.
    pub perm: u16,
    /// Hard links.
    pub nlink: u32,
    /// The device a device node stands for.
    pub rdev: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification.
    pub mtime: SystemTime,
    /// Last attribute change.
    pub ctime: SystemTime,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: NodeKind,
    /// Name.
    pub name: String,
}

/// An open file.
pub struct Opened {
    /// The handle to pass back.
    pub fh: u64,
    /// A disk's device that has a backing file the kernel may use directly (FUSE
    /// passthrough), when the mount allows it.
    pub passthrough: Option<Arc<dyn BlockDevice>>,
}

/// Attribute changes asked for by `setattr`.
pub type Changes = SetAttributes;

/// The file system container.
pub struct Container {
    ds: Arc<Datastore>,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    volumes: Arc<AttachedVolumes>,
    pending: Mutex<HashMap<SharePath, Pending>>,
    /// Open files removed while open, renamed aside until their last close (on a share
    /// that forgets removed files: NFS), by inode number.
    removed_open: Mutex<HashMap<u64, SharePath>>,
    /// Whether the VM folders' listings are being read ahead (see [`Container::read_ahead`]).
    reading_ahead: Arc<AtomicBool>,
}

/// A new disk being written, and who is writing it.
struct Pending {
    disk: PendingDisk,
    owner: Caller,
}

enum Handle {
    Share {
        ino: u64,
        path: SharePath,
        file: Arc<OpenFile>,
        created: bool,
        wrote: bool,
    },
    Disk {
        volume: VolumeId,
        device: Arc<dyn BlockDevice>,
    },
    Pending {
        path: SharePath,
        volume: Option<(VolumeId, Arc<dyn BlockDevice>)>,
    },
    Dir,
}

/// Where a flat extent's bytes come from.
// Built per request and dropped at once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Flat {
    Disk {
        vm: VmName,
        disk: DiskName,
        cvol: CvolDisk,
        descriptor: Metadata,
    },
    Pending {
        size: u64,
        owner: Caller,
    },
}

enum Node {
    Share(Metadata),
    Flat(Flat),
}

/// A name from the kernel, checked.
fn name_str(name: &OsStr) -> Result<&str, Errno> {
    let name = name.to_str().ok_or(Errno::INVAL)?;
    if name.len() > 255 {
        return Err(Errno::NAMETOOLONG);
    }
    Ok(name)
}

fn kind_of(kind: FileKind) -> NodeKind {
    match kind {
        FileKind::File => NodeKind::File,
        FileKind::Dir => NodeKind::Dir,
        FileKind::Symlink => NodeKind::Symlink,
        FileKind::Fifo => NodeKind::Fifo,
        FileKind::Socket => NodeKind::Socket,
        FileKind::CharDevice => NodeKind::CharDevice,
        FileKind::BlockDevice => NodeKind::BlockDevice,
    }
}

fn share_attr(ino: u64, md: &Metadata) -> Attr {
    Attr {
        ino,
        kind: kind_of(md.kind),
        size: md.size,
        blocks: md.allocated / 512,
        perm: md.mode as u16,
        nlink: md.nlink,
        rdev: md.rdev,
        uid: md.uid,
        gid: md.gid,
        atime: md.accessed,
        mtime: md.modified,
        ctime: md.changed,
    }
}

/// The VM and disk a path `vm/<disk>-flat.vmdk` would be the extent of.
fn flat_names(path: &SharePath) -> Option<(VmName, DiskName)> {
    let (parent, name) = path.split_last()?;
    if parent.is_root() || parent.as_str().contains('/') {
        return None;
    }
    Some((
        VmName::new(parent.as_str()).ok()?,
        DiskName::from_extent_file(name)?,
    ))
}

/// The VM and disk a path `vm/<disk>.vmdk` would be the descriptor of.
fn descriptor_names(path: &SharePath) -> Option<(VmName, DiskName)> {
    let (parent, name) = path.split_last()?;
    if parent.is_root()
        || parent.as_str().contains('/')
        || DiskName::from_extent_file(name).is_some()
    {
        return None;
    }
    Some((
        VmName::new(parent.as_str()).ok()?,
        DiskName::from_descriptor_file(name)?,
    ))
}

/// True when a symlink in `dir` pointing to `target` resolves inside the share.
fn stays_inside(dir: &SharePath, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') {
        return false;
    }
    let mut depth = if dir.is_root() {
        0
    } else {
        dir.as_str().split('/').count()
    };
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if depth == 0 => return false,
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    true
}

impl Container {
    /// A container over the datastore of `volumes`, attaching disks through it.
    pub fn new(volumes: Arc<AttachedVolumes>) -> Self {
        let container = Self {
            ds: volumes.datastore().clone(),
            volumes,
            inodes: Mutex::new(Inodes::default()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            removed_open: Mutex::new(HashMap::new()),
            reading_ahead: Arc::default(),
        };
        container.remove_leftovers();
        container
    }

    /// Where this host keeps files removed while open until their last close; inside
    /// `.cvol`, which the container hides, so they vanish as a removed file must.
    fn removed_open_dir(&self) -> Result<SharePath, Errno> {
        Ok(cvol_datastore::layout::removed_open_dir().join(self.ds.host())?)
    }

    /// Removes what an earlier run of this host kept aside: nothing of that run can
    /// still hold it open.
    fn remove_leftovers(&self) {
        let Ok(dir) = self.removed_open_dir() else {
            return;
        };
        let Ok(entries) = self.ds.share().read_dir(&dir) else {
            return;
        };
        for entry in entries {
            let removed = dir
                .join(&entry.name)
                .and_then(|path| self.ds.share().remove_file(&path));
            if let Err(e) = removed {
                tracing::warn!("{dir}/{}: cannot remove a leftover: {e}", entry.name);
            }
        }
    }

    /// The datastore behind the container.
    pub fn datastore(&self) -> &Datastore {
        &self.ds
    }

    /// The path of `ino` on the share.
    pub(crate) fn path_of(&self, ino: u64) -> Result<SharePath, Errno> {
        self.inodes
            .lock()
            .expect("inode lock")
            .path(ino)
            .cloned()
            .ok_or(Errno::NOENT)
    }

    fn ino_of(&self, path: &SharePath) -> u64 {
        let mut inodes = self.inodes.lock().expect("inode lock");
        // A disk's extent is numbered before its descriptor: `cp -r` copies a directory
        // in inode order, and must create the extent first, so that the copy's volume is
        // filled by cp instead of cloned and then written over.
        if let Some((_, disk)) = descriptor_names(path) {
            let parent = path.split_last().expect("a descriptor has a parent").0;
            if let Ok(flat) = parent.join(&disk.extent_file()) {
                inodes.ino(&flat);
            }
        }
        inodes.ino(path)
    }

    /// The path of `name` in directory `parent`; `.cvol` at the root does not exist here.
    fn child(&self, parent: u64, name: &OsStr) -> Result<SharePath, Errno> {
        let name = name_str(name)?;
        if parent == ROOT && name == CVOL_DIR {
            return Err(Errno::NOENT);
        }
        Ok(self.path_of(parent)?.join(name)?)
    }

    fn flat_at(&self, path: &SharePath) -> Option<Flat> {
        let (vm, disk) = flat_names(path)?;
        if let Some(p) = self.pending.lock().expect("pending lock").get(path) {
            return Some(Flat::Pending {
                size: p.disk.size(),
                owner: p.owner,
            });
        }
        let descriptor_path = cvol_datastore::layout::descriptor_file(&vm, &disk);
        match self.ds.read_descriptor_recent(&descriptor_path) {
            Ok((_, cvol)) if Some(cvol.extent_file.as_str()) == path.file_name() => {
                let descriptor = self.ds.share().metadata(&descriptor_path).ok()?;
                Some(Flat::Disk {
                    vm,
                    disk,
                    cvol,
                    descriptor,
                })
            }
            Ok(_) => None,
            Err(DatastoreError::Share(e)) if e.is_not_found() => None,
            Err(e) => {
                tracing::warn!("{path} is not served: {e}");
                None
            }
        }
    }

    fn node(&self, path: &SharePath) -> Result<Node, Errno> {
        match self.flat_at(path) {
            Some(flat) => Ok(Node::Flat(flat)),
            None => Ok(Node::Share(self.ds.share().metadata(path)?)),
        }
    }

    /// The attributes of `path`; with `allocation`, a disk's blocks are what its volume
    /// takes in its pool (which the pool is asked for), else its size.
    fn attr(&self, path: &SharePath, node: &Node, allocation: bool) -> Attr {
        match node {
            Node::Share(md) => self.counting_set_aside(share_attr(self.share_ino(path, md), md)),
            Node::Flat(flat) => {
                let ino = self.ino_of(path);
                let allocated = match flat {
                    Flat::Disk { cvol, .. } if allocation => self.allocated(cvol),
                    _ => None,
                };
                let (size, md, owner) = match flat {
                    Flat::Disk {
                        cvol, descriptor, ..
                    } => (
                        cvol.size,
                        Some(descriptor),
                        Caller {
                            uid: descriptor.uid,
                            gid: descriptor.gid,
                        },
                    ),
                    Flat::Pending { size, owner } => (*size, None, *owner),
                };
                let now = SystemTime::now();
                Attr {
                    ino,
                    kind: NodeKind::File,
                    size,
                    blocks: allocated.unwrap_or(size).div_ceil(512),
                    perm: md.map_or(0o600, |m| (m.mode & 0o666) as u16),
                    nlink: 1,
                    rdev: 0,
                    uid: owner.uid,
                    gid: owner.gid,
                    atime: md.map_or(now, |m| m.accessed),
                    mtime: md.map_or(now, |m| m.modified),
                    ctime: md.map_or(now, |m| m.changed),
                }
            }
        }
    }

    /// What a disk's volume takes in its pool, where the pool can tell: `du` and
    /// `qemu-img info` then show a thin disk as thin.
    fn allocated(&self, cvol: &CvolDisk) -> Option<u64> {
        let provider = self.ds.provider(&cvol.provider).ok()?;
        provider.allocated(&cvol.object).ok().flatten()
    }

    /// The inode number of share entry `path`. The names of one file (hard links) share
    /// one number, as the kernel's caches need: a name not seen before whose file has
    /// several links gets the number of another name still holding that file.
    fn share_ino(&self, path: &SharePath, md: &Metadata) -> u64 {
        if md.kind == FileKind::Dir || md.nlink < 2 {
            return self.ino_of(path);
        }
        let known = {
            let inodes = self.inodes.lock().expect("inode lock");
            match inodes.ino_if_known(path) {
                Some(ino) => return ino,
                None => inodes.linked(md.inode),
            }
        };
        if let Some((ino, other)) = known {
            let same_file = self
                .ds
                .share()
                .metadata(&other)
                .is_ok_and(|m| m.inode == md.inode);
            if same_file {
                self.inodes.lock().expect("inode lock").alias(path, ino);
                return ino;
            }
        }
        let ino = self.ino_of(path);
        self.inodes
            .lock()
            .expect("inode lock")
            .note_linked(md.inode, ino);
        ino
    }

    fn new_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().expect("handle lock").insert(fh, handle);
        fh
    }

    /// Attaches `volume` for one more open.
    fn attach(
        &self,
        provider: &ProviderId,
        volume: &VolumeId,
        descriptor: Option<&SharePath>,
    ) -> Result<Arc<dyn BlockDevice>, Errno> {
        Ok(self.volumes.open(provider, volume, descriptor)?)
    }

    /// Ends one open of `volume`.
    fn detach(&self, volume: &VolumeId) -> Result<(), Errno> {
        Ok(self.volumes.close(volume)?)
    }

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Attr, Errno> {
        self.lookup_path(&self.child(parent, name)?)
    }

    /// The attributes of `ino`, through open handle `fh` when given: an open file is
    /// still there after its name is gone.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr, Errno> {
        if let Some(file) = fh.and_then(|fh| self.share_file(fh).ok()) {
            return self.open_file_attr(ino, &file);
        }
        match self.path_of(ino) {
            Ok(path) => self.lookup_path(&path),
            Err(e) => match self.open_file_of(ino) {
                Some(file) => self.open_file_attr(ino, &file),
                None => Err(e),
            },
        }
    }

    /// The attributes of open file `ino`.
    fn open_file_attr(&self, ino: u64, file: &OpenFile) -> Result<Attr, Errno> {
        Ok(self.counting_set_aside(share_attr(ino, &self.ds.share().file_metadata(file)?)))
    }

    /// `attr` with the name a file removed while open has aside not counted as a link,
    /// as NFS clients count it (its other names, if any, report the same).
    fn counting_set_aside(&self, mut attr: Attr) -> Attr {
        if self
            .removed_open
            .lock()
            .expect("removed lock")
            .contains_key(&attr.ino)
        {
            attr.nlink = attr.nlink.saturating_sub(1);
        }
        attr
    }

    /// An open file of share entry `ino`, if it has any handle open.
    fn open_file_of(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.handles
            .lock()
            .expect("handle lock")
            .values()
            .find_map(|h| match h {
                Handle::Share { ino: i, file, .. } if *i == ino => Some(file.clone()),
                _ => None,
            })
    }

    /// Changes attributes. On a flat extent a size change resizes the disk, except that
    /// truncating it to zero (what `cp` does to a file it overwrites) discards the whole
    /// disk and keeps its size: a disk's size is its descriptor's, never zero.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, changes: &Changes) -> Result<Attr, Errno> {
        // An open file whose name is gone (removed while open) still takes changes: the
        // kernel's own, too (clearing set-ID bits on a write), which come without handle.
        let file = fh.and_then(|fh| self.share_file(fh).ok()).or_else(|| {
            self.path_of(ino)
                .is_err()
                .then(|| self.open_file_of(ino))
                .flatten()
        });
        if let Some(file) = file {
            self.ds.share().file_set_attributes(&file, changes)?;
            return self.open_file_attr(ino, &file);
        }
        let path = self.path_of(ino)?;
        match self.node(&path)? {
            Node::Share(_) => self.ds.share().set_attributes(&path, changes)?,
            Node::Flat(Flat::Pending { .. }) => {
                if let Some(size) = changes.size {
                    self.grow_pending(&path, size)?;
                }
            }
            Node::Flat(Flat::Disk { vm, disk, cvol, .. }) => {
                match changes.size {
                    Some(0) => {
                        let descriptor = cvol_datastore::layout::descriptor_file(&vm, &disk);
                        let device =
                            self.attach(&cvol.provider, &cvol.object, Some(&descriptor))?;
                        let result = device.discard(0, device.size());
                        self.detach(&cvol.object)?;
                        result?;
                    }
                    Some(size) if size != cvol.size => {
                        let size = size.div_ceil(512) * 512;
                        self.ds.disk_resize(&vm, &disk, size, true)?;
                    }
                    _ => {}
                }
                let rest = SetAttributes {
                    size: None,
                    ..changes.clone()
                };
                if rest != SetAttributes::default() {
                    self.ds.share().set_attributes(
                        &cvol_datastore::layout::descriptor_file(&vm, &disk),
                        &rest,
                    )?;
                }
            }
        }
        self.getattr(ino, None)
    }

    fn grow_pending(&self, path: &SharePath, size: u64) -> Result<(), Errno> {
        let mut pending = self.pending.lock().expect("pending lock");
        let pending = pending.get_mut(path).ok_or(Errno::NOENT)?;
        self.ds.grow_pending_disk(&mut pending.disk, size)?;
        Ok(())
    }

    /// The entries of directory `ino`, flat extents included, `.cvol` excluded.
    pub fn readdir(&self, ino: u64) -> Result<Vec<Entry>, Errno> {
        let dir = self.path_of(ino)?;
        let mut entries = Vec::new();
        let mut names = std::collections::HashSet::new();
        for e in self.ds.share().read_dir_recent(&dir)? {
            if dir.is_root() && e.name == CVOL_DIR {
                continue;
            }
            let Ok(path) = dir.join(&e.name) else {
                continue;
            };
            if flat_names(&path).is_some() && self.flat_at(&path).is_some() {
                continue; // a stray file on the share is shadowed by the disk's extent
            }
            if let Some((_, disk)) = descriptor_names(&path) {
                let flat = dir.join(&disk.extent_file())?;
                if let Ok((_, cvol)) = self.ds.read_descriptor_recent(&path) {
                    if cvol.extent_file == disk.extent_file()
                        && names.insert(cvol.extent_file.clone())
                    {
                        entries.push(Entry {
                            ino: self.ino_of(&flat),
                            kind: NodeKind::File,
                            name: cvol.extent_file,
                        });
                    }
                }
            }
            if names.insert(e.name.clone()) {
                entries.push(Entry {
                    ino: self.ino_of(&path),
                    kind: kind_of(e.kind),
                    name: e.name,
                });
            }
        }
        if dir.is_root() {
            self.read_ahead(&entries);
        }
        let pending: Vec<SharePath> = self
            .pending
            .lock()
            .expect("pending lock")
            .keys()
            .cloned()
            .collect();
        for path in pending {
            if let Some((parent, name)) = path.split_last() {
                if parent == dir && names.insert(name.to_string()) {
                    entries.push(Entry {
                        ino: self.ino_of(&path),
                        kind: NodeKind::File,
                        name: name.to_string(),
                    });
                }
            }
        }
        Ok(entries)
    }

    /// Reads ahead, in the background, the listings of the VM folders among the root's
    /// `entries`: a listing of the root is mostly followed by a read of every folder in
    /// it (`ls -l */`, `find`), one after another, where the share reads them many at
    /// once. Those read within the share's cache lifetime are not read again.
    fn read_ahead(&self, entries: &[Entry]) {
        if self.reading_ahead.swap(true, Ordering::AcqRel) {
            return;
        }
        let folders: Vec<SharePath> = entries
            .iter()
            .filter(|e| e.kind == NodeKind::Dir)
            .filter_map(|e| SharePath::new(&e.name).ok())
            .collect();
        let (ds, busy) = (self.ds.clone(), self.reading_ahead.clone());
        let started = std::thread::Builder::new()
            .name("cvol-read-ahead".into())
            .spawn(move || {
                ds.share().prefetch_listings(&folders);
                busy.store(false, Ordering::Release);
            });
        if started.is_err() {
            self.reading_ahead.store(false, Ordering::Release);
        }
    }

    /// Creates directory `name` in `parent` for `caller`.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        self.ds.share().create_dir(&path)?;
        self.take_ownership(&path, caller, Some(mode & 0o7777))?;
        self.lookup_path(&path)
    }

    fn lookup_path(&self, path: &SharePath) -> Result<Attr, Errno> {
        let node = self.node(path)?;
        Ok(self.attr(path, &node, true))
    }

    /// The attributes of `path` as the share shows them now, but for the blocks a disk
    /// takes in its pool (see [`Container::attr`]): for the watch of what the kernel
    /// keeps, which must not ask the pool about every disk on every round.
    pub(crate) fn attr_on_share(&self, path: &SharePath) -> Result<Attr, Errno> {
        let node = self.node(path)?;
        Ok(self.attr(path, &node, false))
    }

    /// The inode number of `path`, if it has one.
    pub(crate) fn ino_if_known(&self, path: &SharePath) -> Option<u64> {
        self.inodes.lock().expect("inode lock").ino_if_known(path)
    }

    /// Gives new entry `path` the owner a file system gives what `caller` makes: the
    /// caller's user, and the caller's group or, under a set-group-ID directory, the
    /// directory's, whose bit a new directory inherits. `mode` is set afterwards when
    /// given, and so are set-ID bits that the change of owner cleared.
    fn take_ownership(
        &self,
        path: &SharePath,
        caller: Caller,
        mode: Option<u32>,
    ) -> Result<(), Errno> {
        let share = self.ds.share();
        let parent = path.split_last().map(|(p, _)| p).unwrap_or_default();
        let parent_md = share.metadata(&parent)?;
        let md = share.metadata(path)?;
        let setgid_parent = parent_md.mode & libc::S_ISGID != 0;
        let gid = if setgid_parent {
            parent_md.gid
        } else {
            caller.gid
        };
        let owner = SetAttributes {
            uid: (md.uid != caller.uid).then_some(caller.uid),
            gid: (md.gid != gid).then_some(gid),
            ..SetAttributes::default()
        };
        let chown = owner != SetAttributes::default();
        if chown {
            share.set_attributes(path, &owner)?;
        }
        let mode = match mode {
            Some(m) if md.kind == FileKind::Dir && setgid_parent => Some(m | libc::S_ISGID),
            Some(m) => Some(m),
            None if chown && md.mode & 0o6000 != 0 => Some(md.mode),
            None => None,
        };
        if let Some(mode) = mode.filter(|&m| chown || m != md.mode) {
            share.set_attributes(
                path,
                &SetAttributes {
                    mode: Some(mode),
                    ..SetAttributes::default()
                },
            )?;
        }
        Ok(())
    }

    /// Removes empty directory `name` from `parent`.
    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        self.ds.share().remove_dir(&path)?;
        self.inodes.lock().expect("inode lock").remove(&path);
        Ok(())
    }

    /// Creates and opens file `name` in `parent`. A new `<disk>-flat.vmdk` in a VM
    /// directory starts a disk whose volume grows as it is written.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        caller: Caller,
    ) -> Result<(Attr, Opened), Errno> {
        let path = self.child(parent, name)?;
        if let Some((vm, disk)) = flat_names(&path) {
            if self.flat_at(&path).is_some() {
                return Err(Errno::EXIST);
            }
            let disk = self.ds.begin_pending_disk(&vm, &disk)?;
            tracing::info!(%path, volume = %disk.volume(), "new disk being written");
            self.pending.lock().expect("pending lock").insert(
                path.clone(),
                Pending {
                    disk,
                    owner: caller,
                },
            );
            let fh = self.new_handle(Handle::Pending {
                path: path.clone(),
                volume: None,
            });
            let attr = self.lookup_path(&path)?;
            return Ok((
                attr,
                Opened {
                    fh,
                    passthrough: None,
                },
            ));
        }
        self.ds.share().create_file(&path, mode)?;
        self.take_ownership(&path, caller, None)?;
        let attr = self.lookup_path(&path)?;
        let file = self.ds.share().open_file(&path)?;
        let fh = self.new_handle(Handle::Share {
            ino: attr.ino,
            path,
            file: Arc::new(file),
            created: true,
            wrote: false,
        });
        Ok((
            attr,
            Opened {
                fh,
                passthrough: None,
            },
        ))
    }

    /// Makes a FIFO, socket, device node or empty regular file `name` in `parent` for
    /// `caller`; `mode` carries the file type. Disks' names take none of these.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            _ => return Err(Errno::INVAL),
        };
        if self.is_disk_file(&path) {
            tracing::warn!("{path}: a disk's file name; refused for mknod");
            return Err(Errno::PERM);
        }
        let perm = mode & 0o7777;
        match kind {
            FileKind::File => self.ds.share().create_file(&path, perm)?,
            _ => self.ds.share().make_node(&path, kind, perm, rdev)?,
        }
        self.take_ownership(&path, caller, None)?;
        self.lookup_path(&path)
    }

    /// Makes `new_name` in `new_parent` another name of file `ino` (a hard link). A disk's
    /// descriptor and extent take no links, and no link takes a disk's name: a disk is
    /// one volume with one descriptor.
    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<Attr, Errno> {
        let from = self.path_of(ino)?;
        let to = self.child(new_parent, new_name)?;
        if self.is_disk_file(&from) || self.is_disk_file(&to) {
            tracing::warn!("{from} -> {to}: disks' files take no hard links");
            return Err(Errno::PERM);
        }
        self.ds.share().hard_link(&from, &to)?;
        let md = self.ds.share().metadata(&to)?;
        let mut inodes = self.inodes.lock().expect("inode lock");
        inodes.alias(&to, ino);
        inodes.note_linked(md.inode, ino);
        Ok(share_attr(ino, &md))
    }

    /// True for a disk's extent or descriptor, or a name one would have.
    fn is_disk_file(&self, path: &SharePath) -> bool {
        flat_names(path).is_some() || descriptor_names(path).is_some()
    }

    /// Opens `ino`. Opening a disk's flat extent attaches its volume.
    pub fn open(&self, ino: u64, truncate: bool) -> Result<Opened, Errno> {
        let path = self.path_of(ino)?;
        match self.node(&path)? {
            Node::Share(md) if md.kind == FileKind::Dir => Ok(Opened {
                fh: self.new_handle(Handle::Dir),
                passthrough: None,
            }),
            Node::Share(_) => {
                let file = self.ds.share().open_file(&path)?;
                if truncate {
                    self.ds.share().file_set_attributes(
                        &file,
                        &SetAttributes {
                            size: Some(0),
                            ..Default::default()
                        },
                    )?;
                }
                let fh = self.new_handle(Handle::Share {
                    ino,
                    path,
                    file: Arc::new(file),
                    created: false,
                    wrote: truncate,
                });
                Ok(Opened {
                    fh,
                    passthrough: None,
                })
            }
            Node::Flat(Flat::Pending { .. }) => Ok(Opened {
                fh: self.new_handle(Handle::Pending { path, volume: None }),
                passthrough: None,
            }),
            Node::Flat(Flat::Disk { vm, disk, cvol, .. }) => {
                let descriptor = cvol_datastore::layout::descriptor_file(&vm, &disk);
                let device = self.attach(&cvol.provider, &cvol.object, Some(&descriptor))?;
                if truncate {
                    if let Err(e) = device.discard(0, device.size()) {
                        self.detach(&cvol.object)?;
                        return Err(e.into());
                    }
                }
                let passthrough = device.backing_file().is_some().then(|| device.clone());
                let fh = self.new_handle(Handle::Disk {
                    volume: cvol.object.clone(),
                    device,
                });
                Ok(Opened { fh, passthrough })
            }
        }
    }

    /// The device behind handle `fh` of a disk, once it has one.
    fn device(&self, fh: u64) -> Result<Option<Arc<dyn BlockDevice>>, Errno> {
        self.with_handle(fh, |h| match h {
            Handle::Disk { device, .. }
            | Handle::Pending {
                volume: Some((_, device)),
                ..
            } => Ok(Some(device.clone())),
            Handle::Pending { .. } | Handle::Share { .. } | Handle::Dir => Ok(None),
        })
    }

    /// Runs `f` on handle `fh`, under the handle lock.
    fn with_handle<T>(
        &self,
        fh: u64,
        f: impl FnOnce(&mut Handle) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let mut handles = self.handles.lock().expect("handle lock");
        f(handles.get_mut(&fh).ok_or(Errno::BADF)?)
    }

    fn share_file(&self, fh: u64) -> Result<Arc<OpenFile>, Errno> {
        self.with_handle(fh, |h| match h {
            Handle::Share { file, .. } => Ok(file.clone()),
            Handle::Dir => Err(Errno::ISDIR),
            _ => Err(Errno::INVAL),
        })
    }

    /// Reads up to `size` bytes at `offset`; a read at or past the end of a disk is
    /// short, as at the end of any file.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let device = match self.pending_path(fh)? {
            Some(_) => match self.pending_device(fh, 0)? {
                Some(device) => device,
                None => return Ok(Vec::new()), // nothing written yet
            },
            None => match self.device(fh)? {
                Some(device) => device,
                None => {
                    return Ok(self.ds.share().file_read(
                        &*self.share_file(fh)?,
                        offset,
                        size as usize,
                    )?)
                }
            },
        };
        let end = offset.saturating_add(u64::from(size)).min(device.size());
        let mut buf = vec![0; end.saturating_sub(offset) as usize];
        device.read_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn pending_path(&self, fh: u64) -> Result<Option<SharePath>, Errno> {
        self.with_handle(fh, |h| match h {
            Handle::Pending { path, .. } => Ok(Some(path.clone())),
            _ => Ok(None),
        })
    }

    /// The device of pending handle `fh` after growing its disk to `size` bytes; `None`
    /// while nothing was ever written.
    fn pending_device(&self, fh: u64, size: u64) -> Result<Option<Arc<dyn BlockDevice>>, Errno> {
        let path = self.pending_path(fh)?.ok_or(Errno::BADF)?;
        let (provider, volume, created) = {
            let mut pending = self.pending.lock().expect("pending lock");
            let disk = &mut pending.get_mut(&path).ok_or(Errno::NOENT)?.disk;
            if size > 0 {
                self.ds.grow_pending_disk(disk, size)?;
            }
            (
                disk.provider().clone(),
                disk.volume().clone(),
                disk.size() > 0,
            )
        };
        if !created {
            return Ok(None);
        }
        if let Some(device) = self.device(fh)? {
            return Ok(Some(device));
        }
        let device = self.attach(&provider, &volume, None)?;
        let raced = self.with_handle(fh, |h| match h {
            Handle::Pending {
                volume: slot @ None,
                ..
            } => {
                *slot = Some((volume.clone(), device.clone()));
                Ok(false)
            }
            _ => Ok(true),
        })?;
        if raced {
            // A concurrent request on this handle attached first: keep one open only.
            self.detach(&volume)?;
            return self.device(fh);
        }
        Ok(Some(device))
    }

    /// Writes `data` at `offset`; returns the bytes written.
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::INVAL)?;
        let device = match self.pending_path(fh)? {
            Some(_) => self.pending_device(fh, end)?,
            None => self.device(fh)?,
        };
        if let Some(device) = device {
            device.write_at(data, offset)?;
            return Ok(data.len() as u32);
        }
        self.ds
            .share()
            .file_write(&*self.share_file(fh)?, offset, data)?;
        self.with_handle(fh, |h| {
            if let Handle::Share { wrote, .. } = h {
                *wrote = true;
            }
            Ok(())
        })?;
        Ok(data.len() as u32)
    }

    /// Makes what was written through `fh` durable.
    pub fn fsync(&self, fh: u64) -> Result<(), Errno> {
        if let Some(device) = self.device(fh)? {
            return Ok(device.flush()?);
        }
        match self.share_file(fh) {
            Ok(file) => Ok(self.ds.share().file_sync(&file)?),
            Err(_) => Ok(()),
        }
    }

    /// Punches a hole (`PUNCH_HOLE`), zeroes (`ZERO_RANGE`) or allocates (mode 0) in a
    /// disk's flat extent; other files do not take fallocate.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> Result<(), Errno> {
        let end = offset.checked_add(len).ok_or(Errno::INVAL)?;
        let device = match self.pending_path(fh)? {
            Some(_) => self.pending_device(
                fh,
                if mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
                    end
                } else {
                    0
                },
            )?,
            None => self.device(fh)?,
        };
        let device = device.ok_or(Errno::NOTSUP)?;
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            // Past the end there is nothing to punch (`cp` punches its trailing hole
            // before it sets the size).
            let len = len.min(device.size().saturating_sub(offset));
            if len == 0 {
                return Ok(());
            }
            Ok(device.discard(offset, len)?)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            Ok(device.write_zeroes(offset, len)?)
        } else if mode & !libc::FALLOC_FL_KEEP_SIZE == 0 {
            // A disk is allocated as the provider sees fit; only the range is checked.
            Ok(device.check_range(
                offset,
                if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
                    0
                } else {
                    len
                },
            )?)
        } else {
            Err(Errno::NOTSUP)
        }
    }

    /// A `close()` of `fh`, synchronous with it (unlike release): a descriptor that was
    /// written becomes a disk of its own here, so that the tool that wrote it finds the
    /// disk complete as soon as its `close()` returns.
    pub fn flush(&self, fh: u64) -> Result<(), Errno> {
        enum Closed {
            Descriptor(SharePath, bool),
            Extent(SharePath),
            Other,
        }
        let closed = self.with_handle(fh, |h| {
            Ok(match h {
                Handle::Share {
                    path,
                    created,
                    wrote,
                    ..
                } if *wrote => {
                    let closed = Closed::Descriptor(path.clone(), *created);
                    // A second close of a dup'ed descriptor must not clone again.
                    (*created, *wrote) = (false, false);
                    closed
                }
                Handle::Pending { path, .. } => Closed::Extent(path.clone()),
                _ => Closed::Other,
            })
        })?;
        match closed {
            Closed::Descriptor(path, created) => self.descriptor_written(&path, created),
            Closed::Extent(path) => self.commit_if_described(&path),
            Closed::Other => Ok(()),
        }
    }

    /// Forgets `fh`. Releasing the last handle of a disk detaches its volume.
    pub fn release(&self, fh: u64) -> Result<(), Errno> {
        let handle = self
            .handles
            .lock()
            .expect("handle lock")
            .remove(&fh)
            .ok_or(Errno::BADF)?;
        match handle {
            Handle::Disk { volume, .. }
            | Handle::Pending {
                volume: Some((volume, _)),
                ..
            } => self.detach(&volume),
            Handle::Share { ino, .. } if self.open_file_of(ino).is_none() => {
                let aside = self.removed_open.lock().expect("removed lock").remove(&ino);
                match aside {
                    Some(aside) => Ok(self.ds.share().remove_file(&aside)?),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Moves share file `path` aside if it is open here and the share would forget it
    /// once removed; true when it did. The last close removes it.
    fn set_aside_if_open(&self, path: &SharePath) -> Result<bool, Errno> {
        let share = self.ds.share();
        if share.keeps_removed_open_files() {
            return Ok(false);
        }
        let ino = self.inodes.lock().expect("inode lock").ino_if_known(path);
        let Some(ino) = ino.filter(|&ino| self.open_file_of(ino).is_some()) else {
            return Ok(false);
        };
        if self
            .removed_open
            .lock()
            .expect("removed lock")
            .contains_key(&ino)
        {
            return Ok(false); // another of its names is aside already and keeps it
        }
        let dir = self.removed_open_dir()?;
        for d in [cvol_datastore::layout::removed_open_dir(), dir.clone()] {
            match share.create_dir(&d) {
                Ok(()) | Err(cvol_share::ShareError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let aside = dir.join(&uuid::Uuid::new_v4().simple().to_string())?;
        share.rename(path, &aside)?;
        tracing::debug!(%path, %aside, "removed while open; kept aside until closed");
        self.removed_open
            .lock()
            .expect("removed lock")
            .insert(ino, aside);
        Ok(true)
    }

    /// A descriptor `vm/X.vmdk` was written and closed: if a new disk's extent
    /// `X-flat.vmdk` is pending, it is that disk's descriptor; if it is a new file naming
    /// an existing volume, it is a copy and gets a clone of that volume.
    fn descriptor_written(&self, path: &SharePath, created: bool) -> Result<(), Errno> {
        let Some((vm, disk)) = descriptor_names(path) else {
            return Ok(());
        };
        let flat = path
            .split_last()
            .expect("a descriptor has a parent")
            .0
            .join(&disk.extent_file())?;
        if self
            .pending
            .lock()
            .expect("pending lock")
            .contains_key(&flat)
        {
            self.commit_if_described(&flat)?;
        } else if created {
            if let Some(cvol) = self.ds.adopt_copied_descriptor(&vm, &disk)? {
                tracing::info!(%path, volume = %cvol.object, "copied descriptor got a clone of its volume");
            }
        }
        Ok(())
    }

    /// Completes the pending disk whose extent is `flat` if its descriptor is there and
    /// names it: tools write the extent and the descriptor in either order.
    fn commit_if_described(&self, flat: &SharePath) -> Result<(), Errno> {
        let Some((vm, disk)) = flat_names(flat) else {
            return Ok(());
        };
        let path = cvol_datastore::layout::descriptor_file(&vm, &disk);
        let describes_it = self
            .ds
            .share()
            .read(&path)
            .ok()
            .and_then(|bytes| {
                cvol_format::Descriptor::parse(&String::from_utf8_lossy(&bytes), path.as_str()).ok()
            })
            .is_some_and(|d| d.extents().any(|e| e.file == disk.extent_file()));
        if !describes_it {
            return Ok(());
        }
        let Some(pending) = self.pending.lock().expect("pending lock").remove(flat) else {
            return Ok(());
        };
        let cvol = self
            .ds
            .commit_pending_disk(pending.disk)
            .inspect_err(|e| tracing::error!("{path}: {e}"))?;
        tracing::info!(%path, volume = %cvol.object, size = cvol.size, "new disk");
        Ok(())
    }

    /// Removes `name` from `parent`. Removing a descriptor deletes its disk (volume
    /// included); a disk's flat extent cannot be removed alone.
    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let path = self.child(parent, name)?;
        let pending = self.pending.lock().expect("pending lock").remove(&path);
        if let Some(pending) = pending {
            self.ds.abort_pending_disk(pending.disk)?;
        } else if self.flat_at(&path).is_some() {
            tracing::warn!("{path}: a disk's extent goes with its descriptor; remove that instead");
            return Err(Errno::PERM);
        } else if let Some((vm, disk)) =
            descriptor_names(&path).filter(|_| self.ds.read_descriptor(&path).is_ok())
        {
            let (_, cvol) = self.ds.read_descriptor(&path)?;
            if self.volumes.is_open(&cvol.object) {
                return Err(Errno::BUSY);
            }
            self.ds.disk_delete(&vm, &disk)?;
        } else if !self.set_aside_if_open(&path)? {
            self.ds.share().remove_file(&path)?;
        }
        self.inodes.lock().expect("inode lock").remove(&path);
        Ok(())
    }

    /// Renames; a descriptor takes its extent's name along, and flat extents do not move
    /// alone. `noreplace` refuses an existing target.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        let from = self.child(parent, name)?;
        let to = self.child(new_parent, new_name)?;
        if self.flat_at(&from).is_some() || flat_names(&to).is_some() {
            return Err(Errno::PERM);
        }
        if noreplace && self.node(&to).is_ok() {
            return Err(Errno::EXIST);
        }
        match (descriptor_names(&from), descriptor_names(&to)) {
            (Some(src), Some(dst)) if self.ds.read_descriptor(&from).is_ok() => {
                self.ds.disk_rename((&src.0, &src.1), (&dst.0, &dst.1))?;
            }
            _ => {
                let same_file = {
                    let inodes = self.inodes.lock().expect("inode lock");
                    let from_ino = inodes.ino_if_known(&from);
                    from_ino.is_some() && from_ino == inodes.ino_if_known(&to)
                };
                if !same_file {
                    self.set_aside_if_open(&to)?;
                }
                self.ds.share().rename(&from, &to)?
            }
        }
        self.inodes.lock().expect("inode lock").rename(&from, &to);
        Ok(())
    }

    /// Creates symlink `name` in `parent` to `target`, which must stay inside the share.
    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &str,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        let path = self.child(parent, name)?;
        let dir = path.split_last().expect("a child has a parent").0;
        if !stays_inside(&dir, target) {
            tracing::warn!(
                "{path}: refused a symlink to {target:?}, which leads outside the share"
            );
            return Err(Errno::PERM);
        }
        self.ds.share().symlink(&path, target)?;
        self.take_ownership(&path, caller, None)?;
        self.lookup_path(&path)
    }

    /// The target of symlink `ino`; one that leads outside the share is refused.
    pub fn readlink(&self, ino: u64) -> Result<String, Errno> {
        let path = self.path_of(ino)?;
        let target = self.ds.share().read_link(&path)?;
        let dir = path.split_last().map(|(d, _)| d).unwrap_or_default();
        if !stays_inside(&dir, &target) {
            tracing::warn!("{path}: symlink to {target:?} leads outside the share; not followed");
            return Err(Errno::PERM);
        }
        Ok(target)
    }

    /// Space on the share and in its pools.
    pub fn statfs(&self) -> Result<ShareStats, Errno> {
        Ok(self.ds.space()?)
    }

    /// Gives up every disk still pending (its descriptor never came) and detaches
    /// every volume: the end of a mount.
    pub fn shutdown(&self) {
        let pending: Vec<(SharePath, Pending)> =
            self.pending.lock().expect("pending lock").drain().collect();
        for (path, pending) in pending {
            tracing::warn!("{path}: no descriptor was written for this new disk; removing it");
            if let Err(e) = self.ds.abort_pending_disk(pending.disk) {
                tracing::error!("{path}: {e}; 'cvol datastore fsck --repair' will remove it");
            }
        }
        let aside: Vec<SharePath> = self
            .removed_open
            .lock()
            .expect("removed lock")
            .drain()
            .map(|(_, path)| path)
            .collect();
        for path in aside {
            if let Err(e) = self.ds.share().remove_file(&path) {
                tracing::warn!("{path}: {e}; this host's next mount removes it");
            }
        }
        self.volumes.close_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_targets_must_stay_inside() {
        let vm = SharePath::new("vm1").unwrap();
        assert!(stays_inside(&vm, "vm1.vmx"));
        assert!(stays_inside(&vm, "../vm2/disk.vmdk"));
        assert!(!stays_inside(&vm, "../../etc/passwd"));
        assert!(!stays_inside(&vm, "/etc/passwd"));
        assert!(!stays_inside(&SharePath::root(), ".."));
        assert!(stays_inside(&SharePath::root(), "vm1/./x/.."));
    }

    #[test]
    fn flat_and_descriptor_names() {
        let p = |s| SharePath::new(s).unwrap();
        assert_eq!(flat_names(&p("vm1/d-flat.vmdk")).unwrap().1.as_str(), "d");
        assert!(flat_names(&p("d-flat.vmdk")).is_none(), "not at the root");
        assert!(
            flat_names(&p("vm1/sub/d-flat.vmdk")).is_none(),
            "not below a VM"
        );
        assert_eq!(descriptor_names(&p("vm1/d.vmdk")).unwrap().1.as_str(), "d");
        assert!(descriptor_names(&p("vm1/d-flat.vmdk")).is_none());
        assert!(descriptor_names(&p("vm1/d.vmx")).is_none());
    }
}
