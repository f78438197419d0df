//! A local directory as an NFSv3 file system, for `nfs3_server`.
//!
//! Every operation goes through [`LocalShare`], which resolves paths beneath the
//! exported directory with `openat2(RESOLVE_BENEATH)`: no name a client sends (`..`,
//! a symlink planted on the server) reaches outside it. File system calls on a local
//! directory block for microseconds to an fsync; they run in `block_in_place` so the
//! runtime keeps serving other connections meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::ExportPolicy;
use cvol_share::{
    FileKind, LocalDir, LocalShare, Metadata, SetAttributes, Share, ShareError, SharePath,
};
use nfs3_server::nfs3_types::nfs3::{
    createverf3, devicedata3, fattr3, filename3, mknoddata3, nfspath3, nfsstat3, nfstime3,
    post_op_attr, sattr3, stable_how, FSINFO3resok as fsinfo3, FSSTAT3resok, FSF3_CANSETTIME,
    FSF3_HOMOGENEOUS, FSF3_LINK, FSF3_SYMLINK,
};
use nfs3_server::vfs::{
    DirEntryPlus, NextResult, NfsFileSystem, NfsReadFileSystem, ReadDirPlusIterator,
};

use crate::attrs::{changes_of, fattr_of, status_of};
use crate::caller::{ActingAs, Admission};
use crate::handles::{Handle, HandleTable};

/// A local directory served over NFSv3.
#[derive(Clone)]
pub struct LocalExport {
    inner: Arc<Inner>,
    /// Who is served, as whom.
    admission: Arc<Admission>,
}

struct Inner {
    share: LocalShare,
    handles: HandleTable,
    fsid: u64,
    /// The names of the directories listed last, by handle, with the directory's
    /// modification and change times when listed.
    listings: Mutex<HashMap<u64, Listing>>,
}

/// A directory's names in cookie order (`.` and `..` first, then sorted).
struct Listing {
    times: (SystemTime, SystemTime),
    names: Arc<Vec<String>>,
}

/// Directories whose listings are kept for the READDIRPLUS calls that continue them.
const LISTINGS_KEPT: usize = 16;

type Result<T> = std::result::Result<T, nfsstat3>;

/// The path `name` names in directory `dir`, `.` and `..` included; the root's parent is
/// the root, so nothing above the export is reachable.
fn entry_path(dir: &SharePath, name: &str) -> std::result::Result<SharePath, ShareError> {
    match name {
        "." => Ok(dir.clone()),
        ".." => Ok(dir
            .split_last()
            .map_or_else(SharePath::root, |(parent, _)| parent)),
        n => dir.join(n),
    }
}

fn device_of(d: &devicedata3) -> u64 {
    rustix::fs::makedev(d.spec.specdata1, d.spec.specdata2)
}

fn name_of<'a>(name: &'a filename3<'_>) -> Result<&'a str> {
    std::str::from_utf8(name.0.as_ref()).map_err(|_| nfsstat3::NFS3ERR_INVAL)
}

impl LocalExport {
    /// Exports `share`'s directory under `policy`'s client networks and root squash
    /// (read-only is the server's to apply).
    pub fn new(share: LocalShare, policy: &ExportPolicy) -> std::result::Result<Self, ShareError> {
        let root = share.metadata(&SharePath::root())?.inode;
        let fsid = rustix::fs::stat(share.dir())
            .map(|s| s.st_dev)
            .map_err(|e| ShareError::from_io(&SharePath::root(), "stat", e.into()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                share,
                handles: HandleTable::new(root, policy.file_handles.max(1)),
                fsid,
                listings: Mutex::default(),
            }),
            admission: Arc::new(Admission::new(policy.allow.clone(), policy.root_squash)),
        })
    }

    /// Admits the call being served and acts as its caller (see [`Admission::enter`]).
    fn enter(&self) -> Result<ActingAs> {
        self.admission.enter()
    }
}

impl Inner {
    /// The path of `handle` and what is there now; STALE when the file is gone or moved
    /// behind the server's back.
    fn resolve(&self, handle: &Handle) -> Result<(SharePath, Metadata)> {
        let (path, inode) = self.located(handle)?;
        match self.share.metadata(&path) {
            Ok(m) if m.inode == inode => Ok((path, m)),
            Ok(_) | Err(ShareError::NotFound(_)) => {
                self.handles.forget(handle);
                Err(nfsstat3::NFS3ERR_STALE)
            }
            Err(e) => Err(status_of(&e)),
        }
    }

    /// Where `handle` is (as far as the table knows) and the inode it stands for. A file
    /// whose entry left the table (see [`HandleTable`]) is looked for by its inode in the
    /// directory its handle was handed out in, and taken back in.
    fn located(&self, handle: &Handle) -> Result<(SharePath, u64)> {
        if let Some(found) = self.handles.get(handle) {
            return Ok(found);
        }
        let dir = self
            .handles
            .parent_of_evicted(handle)
            .ok_or(nfsstat3::NFS3ERR_STALE)?;
        let name = self
            .share
            .open_dir(&dir)
            .and_then(|opened| opened.name_of(handle.inode()))
            .map_err(|e| match e {
                ShareError::NotFound(_) => nfsstat3::NFS3ERR_STALE,
                e => status_of(&e),
            })?
            .ok_or(nfsstat3::NFS3ERR_STALE)?;
        let path = dir.join(&name).map_err(|_| nfsstat3::NFS3ERR_STALE)?;
        self.handles.restore(handle, &path);
        Ok((path, handle.inode()))
    }

    /// Directory `handle` opened, with its path and attributes: one path resolution for
    /// a whole READDIRPLUS (the checks of [`Inner::resolve`] are made on the opened
    /// directory).
    fn opened_dir(&self, handle: &Handle) -> Result<(SharePath, LocalDir, Metadata)> {
        let (path, inode) = self.located(handle)?;
        let opened = match self.share.open_dir(&path) {
            Ok(opened) => opened,
            // Gone, replaced, not a directory, or not readable by the caller: told apart
            // as for any other call.
            Err(e) => {
                let (_, m) = self.resolve(handle)?;
                return Err(match m.kind {
                    FileKind::Dir => status_of(&e),
                    _ => nfsstat3::NFS3ERR_NOTDIR,
                });
            }
        };
        let m = opened.own_metadata().map_err(|e| status_of(&e))?;
        if m.inode != inode {
            self.handles.forget(handle);
            return Err(nfsstat3::NFS3ERR_STALE);
        }
        Ok((path, opened, m))
    }

    /// The names in directory `opened` (handle `handle`, attributes `m`) in cookie order.
    /// A listing that continues from `cookie` reuses the names the previous call read if
    /// the directory has not changed since (same modification and change times), so a
    /// directory of 10,000 entries is not read and sorted again for each of the calls
    /// that list it; a listing from the start always reads the directory.
    fn names(
        &self,
        handle: u64,
        opened: &LocalDir,
        m: &Metadata,
        cookie: u64,
    ) -> Result<Arc<Vec<String>>> {
        let times = (m.modified, m.changed);
        if cookie != 0 {
            let listings = self.listings.lock().expect("listings lock");
            if let Some(listing) = listings.get(&handle).filter(|l| l.times == times) {
                return Ok(listing.names.clone());
            }
        }
        // Read without the lock: the listings of other directories go on meanwhile.
        let mut names: Vec<String> = opened
            .entries()
            .map_err(|e| status_of(&e))?
            .into_iter()
            .map(|e| e.name)
            .collect();
        // Cookies are positions in name order, so a listing resumes where it stopped.
        names.sort_unstable();
        let mut all = vec![".".to_string(), "..".to_string()];
        all.extend(names);
        let names = Arc::new(all);
        let mut listings = self.listings.lock().expect("listings lock");
        if listings.len() >= LISTINGS_KEPT {
            listings.clear();
        }
        listings.insert(
            handle,
            Listing {
                times,
                names: names.clone(),
            },
        );
        Ok(names)
    }

    fn dir(&self, handle: &Handle) -> Result<SharePath> {
        match self.resolve(handle)? {
            (path, m) if m.kind == FileKind::Dir => Ok(path),
            _ => Err(nfsstat3::NFS3ERR_NOTDIR),
        }
    }

    fn file(&self, handle: &Handle) -> Result<(SharePath, Metadata)> {
        match self.resolve(handle)? {
            (path, m) if m.kind == FileKind::File => Ok((path, m)),
            (_, m) if m.kind == FileKind::Dir => Err(nfsstat3::NFS3ERR_ISDIR),
            _ => Err(nfsstat3::NFS3ERR_INVAL),
        }
    }

    fn child(&self, dir: &Handle, name: &filename3<'_>) -> Result<SharePath> {
        self.dir(dir)?
            .join(name_of(name)?)
            .map_err(|e| status_of(&e))
    }

    /// Looks `path` up and hands out its handle.
    fn found(&self, path: SharePath) -> Result<(Handle, fattr3)> {
        let m = self.share.metadata(&path).map_err(|e| status_of(&e))?;
        Ok(self.handed_out(&path, &m))
    }

    /// The handle of what `m` describes at `path`, and its attributes.
    fn handed_out(&self, path: &SharePath, m: &Metadata) -> (Handle, fattr3) {
        let handle = self.handles.handle(path, m.inode, m.kind == FileKind::Dir);
        (handle, fattr_of(m, self.fsid))
    }

    fn lookup(&self, dir: &Handle, name: &filename3<'_>) -> Result<Handle> {
        let path = entry_path(&self.dir(dir)?, name_of(name)?).map_err(|e| status_of(&e))?;
        Ok(self.found(path)?.0)
    }

    /// Makes `name` in `dir` with `make` (given the mode asked for), then the rest of
    /// the attributes asked for, and hands out its handle.
    fn make(
        &self,
        dir: &Handle,
        name: &filename3<'_>,
        attr: &sattr3,
        make: impl FnOnce(&SharePath, u32) -> std::result::Result<(), ShareError>,
    ) -> Result<(Handle, fattr3)> {
        let path = self.child(dir, name)?;
        let mut changes = changes_of(attr);
        let mode = changes.mode.take().unwrap_or(cvol_share::FILE_MODE);
        make(&path, mode).map_err(|e| status_of(&e))?;
        if changes != SetAttributes::default() {
            self.set_attributes(&path, &changes)?;
        }
        self.found(path)
    }

    fn set_attributes(&self, path: &SharePath, changes: &SetAttributes) -> Result<fattr3> {
        self.share
            .set_attributes(path, changes)
            .map_err(|e| status_of(&e))?;
        Ok(self.found(path.clone())?.1)
    }
}

impl NfsReadFileSystem for LocalExport {
    type Handle = Handle;

    fn root_dir(&self) -> Handle {
        self.inner.handles.root()
    }

    /// Every MOUNT comes here, the export's root included, so a refused client's MOUNT
    /// is answered MNT3ERR_ACCES.
    async fn lookup_by_path(&self, path: &str) -> Result<Handle> {
        let _caller = self.enter()?;
        let mut handle = self.root_dir();
        for name in path.split('/').filter(|n| !n.is_empty()) {
            handle = self.inner.lookup(&handle, &name.as_bytes().into())?;
        }
        Ok(handle)
    }

    async fn lookup(&self, dir: &Handle, name: &filename3<'_>) -> Result<Handle> {
        let _caller = self.enter()?;
        self.inner.lookup(dir, name)
    }

    async fn fsstat(&self, root: &Handle) -> Result<FSSTAT3resok> {
        let _caller = self.enter()?;
        let (_, m) = self.inner.resolve(root)?;
        let s = self.inner.share.stats().map_err(|e| status_of(&e))?;
        let bytes = |blocks: u64| blocks.saturating_mul(u64::from(s.block_size));
        Ok(FSSTAT3resok {
            obj_attributes: post_op_attr::Some(fattr_of(&m, self.inner.fsid)),
            tbytes: bytes(s.blocks),
            fbytes: bytes(s.blocks_free),
            abytes: bytes(s.blocks_available),
            tfiles: s.files,
            ffiles: s.files_free,
            afiles: s.files_free,
            invarsec: 0,
        })
    }

    /// The crate's defaults, saying also that this export takes hard links.
    async fn fsinfo(&self, root: &Handle) -> Result<fsinfo3> {
        let _caller = self.enter()?;
        let (_, m) = self.inner.resolve(root)?;
        Ok(fsinfo3 {
            obj_attributes: post_op_attr::Some(fattr_of(&m, self.inner.fsid)),
            rtmax: 1 << 20,
            rtpref: 1 << 20,
            rtmult: 4096,
            wtmax: 1 << 20,
            wtpref: 1 << 20,
            wtmult: 4096,
            dtpref: 1 << 20,
            maxfilesize: u64::MAX >> 1,
            time_delta: nfstime3 {
                seconds: 0,
                nseconds: 1,
            },
            properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        })
    }

    async fn access(&self, id: &Handle, requested: u32) -> Result<(fattr3, u32)> {
        let caller = self.enter()?;
        let (_, m) = self.inner.resolve(id)?;
        Ok((fattr_of(&m, self.inner.fsid), caller.granted(&m, requested)))
    }

    async fn getattr(&self, id: &Handle) -> Result<fattr3> {
        let _caller = self.enter()?;
        let (_, m) = self.inner.resolve(id)?;
        Ok(fattr_of(&m, self.inner.fsid))
    }

    async fn read(&self, id: &Handle, offset: u64, count: u32) -> Result<(Vec<u8>, bool)> {
        let _caller = self.enter()?;
        let (path, m) = self.inner.file(id)?;
        // No buffer larger than what the file holds: a client may ask a whole-file READ
        // for a megabyte of a file of a few hundred bytes.
        let count = u64::from(count).min(m.size.saturating_sub(offset)) as usize;
        let data = self
            .inner
            .share
            .read_at(&path, offset, count)
            .map_err(|e| status_of(&e))?;
        let eof = offset.saturating_add(data.len() as u64) >= m.size;
        Ok((data, eof))
    }

    async fn readdirplus(
        &self,
        dir: &Handle,
        cookie: u64,
    ) -> Result<impl ReadDirPlusIterator<Handle>> {
        let _caller = self.enter()?;
        let (path, opened, m) = self.inner.opened_dir(dir)?;
        let names = self.inner.names(dir.id(), &opened, &m, cookie)?;
        Ok(DirIterator {
            export: self.clone(),
            dir: path,
            attrs: m,
            opened,
            names,
            next: usize::try_from(cookie).unwrap_or(usize::MAX),
        })
    }

    async fn readlink(&self, id: &Handle) -> Result<nfspath3<'_>> {
        let _caller = self.enter()?;
        let (path, m) = self.inner.resolve(id)?;
        if m.kind != FileKind::Symlink {
            return Err(nfsstat3::NFS3ERR_INVAL);
        }
        let target = self
            .inner
            .share
            .read_link(&path)
            .map_err(|e| status_of(&e))?;
        Ok(nfspath3::from(target.into_bytes()))
    }
}

impl NfsFileSystem for LocalExport {
    async fn setattr(&self, id: &Handle, setattr: sattr3) -> Result<fattr3> {
        let _caller = self.enter()?;
        let (path, _) = self.inner.resolve(id)?;
        self.inner.set_attributes(&path, &changes_of(&setattr))
    }

    async fn write(
        &self,
        id: &Handle,
        offset: u64,
        data: &[u8],
        stable: stable_how,
    ) -> Result<(fattr3, stable_how)> {
        let _caller = self.enter()?;
        let (path, _) = self.inner.file(id)?;
        let share = &self.inner.share;
        share
            .write_at(&path, offset, data)
            .map_err(|e| status_of(&e))?;
        if !matches!(stable, stable_how::UNSTABLE) {
            share.sync(&path).map_err(|e| status_of(&e))?;
        }
        Ok((self.inner.found(path)?.1, stable))
    }

    /// Creates exclusively, whatever the client's mode: `nfs3_server` answers GUARDED by
    /// a LOOKUP before this call, so only an exclusive create keeps two clients racing for
    /// one name (e.g. two hosts writing the same intent record) from both winning. An
    /// UNCHECKED create of an existing name therefore answers NFS3ERR_EXIST.
    async fn create(
        &self,
        dir: &Handle,
        name: &filename3<'_>,
        attr: sattr3,
    ) -> Result<(Handle, fattr3)> {
        let _caller = self.enter()?;
        self.inner.make(dir, name, &attr, |path, mode| {
            self.inner.share.create_file(path, mode)
        })
    }

    /// EXCLUSIVE create needs the verifier kept with the file; RFC 1813 lets a server
    /// decline it, and clients then fall back to GUARDED.
    async fn create_exclusive(
        &self,
        _dir: &Handle,
        _name: &filename3<'_>,
        _verf: createverf3,
    ) -> Result<Handle> {
        let _caller = self.enter()?;
        Err(nfsstat3::NFS3ERR_NOTSUPP)
    }

    async fn mkdir(&self, dir: &Handle, name: &filename3<'_>) -> Result<(Handle, fattr3)> {
        let _caller = self.enter()?;
        let path = self.inner.child(dir, name)?;
        self.inner
            .share
            .create_dir(&path)
            .map_err(|e| status_of(&e))?;
        self.inner.found(path)
    }

    async fn remove(&self, dir: &Handle, name: &filename3<'_>) -> Result<()> {
        let _caller = self.enter()?;
        let inner = &self.inner;
        let path = inner.child(dir, name)?;
        let share = &inner.share;
        let kind = share.metadata(&path).map_err(|e| status_of(&e))?.kind;
        let removed = if kind == FileKind::Dir {
            share.remove_dir(&path)
        } else {
            share.remove_file(&path)
        };
        removed.map_err(|e| status_of(&e))?;
        inner.handles.removed(&path);
        Ok(())
    }

    async fn rename<'a>(
        &self,
        from_dir: &Handle,
        from_name: &filename3<'a>,
        to_dir: &Handle,
        to_name: &filename3<'a>,
    ) -> Result<()> {
        let _caller = self.enter()?;
        let inner = &self.inner;
        let from = inner.child(from_dir, from_name)?;
        let to = inner.child(to_dir, to_name)?;
        inner.share.rename(&from, &to).map_err(|e| status_of(&e))?;
        inner.handles.renamed(&from, &to);
        Ok(())
    }

    async fn symlink<'a>(
        &self,
        dir: &Handle,
        name: &filename3<'a>,
        target: &nfspath3<'a>,
        _attr: &sattr3,
    ) -> Result<(Handle, fattr3)> {
        let _caller = self.enter()?;
        let path = self.inner.child(dir, name)?;
        let target = std::str::from_utf8(target.0.as_ref()).map_err(|_| nfsstat3::NFS3ERR_INVAL)?;
        self.inner
            .share
            .symlink(&path, target)
            .map_err(|e| status_of(&e))?;
        self.inner.found(path)
    }

    async fn mknod(
        &self,
        dir: &Handle,
        name: &filename3<'_>,
        what: &mknoddata3,
    ) -> Result<(Handle, fattr3)> {
        let _caller = self.enter()?;
        let (kind, attr, rdev) = match what {
            mknoddata3::NF3FIFO(attr) => (FileKind::Fifo, attr, 0),
            mknoddata3::NF3SOCK(attr) => (FileKind::Socket, attr, 0),
            mknoddata3::NF3CHR(d) => (FileKind::CharDevice, &d.dev_attributes, device_of(d)),
            mknoddata3::NF3BLK(d) => (FileKind::BlockDevice, &d.dev_attributes, device_of(d)),
            mknoddata3::default => return Err(nfsstat3::NFS3ERR_BADTYPE),
        };
        self.inner.make(dir, name, attr, |path, mode| {
            self.inner.share.make_node(path, kind, mode, rdev)
        })
    }

    async fn link(&self, id: &Handle, dir: &Handle, name: &filename3<'_>) -> Result<()> {
        let _caller = self.enter()?;
        let inner = &self.inner;
        let (existing, _) = inner.resolve(id)?;
        let new = inner.child(dir, name)?;
        inner
            .share
            .hard_link(&existing, &new)
            .map_err(|e| status_of(&e))
    }

    async fn commit(&self, id: &Handle, _offset: u64, _count: u32) -> Result<()> {
        let _caller = self.enter()?;
        let (path, _) = self.inner.file(id)?;
        self.inner.share.sync(&path).map_err(|e| status_of(&e))
    }
}

/// A directory listing from a cookie on; each entry is looked up when the reply takes it,
/// in the directory opened once.
struct DirIterator {
    export: LocalExport,
    dir: SharePath,
    /// The directory's own attributes, as opened.
    attrs: Metadata,
    opened: LocalDir,
    names: Arc<Vec<String>>,
    next: usize,
}

impl DirIterator {
    fn entry(&mut self) -> NextResult<DirEntryPlus<Handle>> {
        loop {
            let Some(name) = self.names.get(self.next) else {
                return NextResult::Eof;
            };
            self.next += 1;
            let found = match name.as_str() {
                "." => Ok((self.dir.clone(), self.attrs.clone())),
                ".." => match self.dir.split_last() {
                    // The root's parent is the root: nothing above the export is reachable.
                    None => Ok((self.dir.clone(), self.attrs.clone())),
                    Some((parent, _)) => self.opened.metadata("..").map(|m| (parent, m)),
                },
                _ => match entry_path(&self.dir, name) {
                    Ok(path) => self.opened.metadata(name).map(|m| (path, m)),
                    // A name the share refuses (not UTF-8, say) is left out rather than
                    // failing the whole listing.
                    Err(_) => continue,
                },
            };
            let (handle, attrs) = match found {
                Ok((path, m)) => self.export.inner.handed_out(&path, &m),
                // Removed since the listing: left out.
                Err(ShareError::NotFound(_)) => continue,
                Err(e) => return NextResult::Err(status_of(&e)),
            };
            return NextResult::Ok(DirEntryPlus {
                fileid: attrs.fileid,
                name: filename3::from(name.clone().into_bytes()),
                cookie: self.next as u64,
                name_attributes: Some(attrs),
                name_handle: Some(handle),
            });
        }
    }
}

impl ReadDirPlusIterator<Handle> for DirIterator {
    async fn next(&mut self) -> NextResult<DirEntryPlus<Handle>> {
        self.entry()
    }
}
