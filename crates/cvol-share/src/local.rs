//! A share that is a local directory: the embedded default, or an NFS share the OS mounted.
//!
//! Every operation resolves its path with `openat2(RESOLVE_BENEATH)` from a descriptor of
//! the root, so the kernel itself refuses a walk that leaves the share through `..` or a
//! symlink, even one planted after cvol checked the path.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};

use crate::open_file::OpenedBy;
use crate::{
    DirEntry, FileKind, Metadata, OpenFile, SetAttributes, SetTime, Share, ShareError, SharePath,
    ShareStats,
};

/// A share rooted at a local directory.
#[derive(Debug)]
pub struct LocalShare {
    dir: PathBuf,
    root: OwnedFd,
}

/// A directory of a [`LocalShare`], opened.
#[derive(Debug)]
pub struct LocalDir {
    fd: OwnedFd,
    path: SharePath,
}

impl LocalDir {
    /// Attributes of entry `name` (a name, not a path), not following a symlink; `..`
    /// is the directory's parent, which may be outside the share if this is its root.
    pub fn metadata(&self, name: &str) -> Result<Metadata, ShareError> {
        let path = self.path.join(name).unwrap_or_else(|_| self.path.clone());
        rfs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map(|stat| metadata_of(&stat))
            .map_err(|e| ShareError::from_io(&path, "stat", e.into()))
    }

    /// Attributes of the directory itself (the one opened, wherever it is now).
    pub fn own_metadata(&self) -> Result<Metadata, ShareError> {
        rfs::fstat(&self.fd)
            .map(|stat| metadata_of(&stat))
            .map_err(|e| ShareError::from_io(&self.path, "stat", e.into()))
    }

    /// The name of the entry with inode `inode`, if there is one.
    pub fn name_of(&self, inode: u64) -> Result<Option<String>, ShareError> {
        let err =
            |e: rustix::io::Errno| ShareError::from_io(&self.path, "list directory", e.into());
        for entry in rfs::Dir::read_from(&self.fd).map_err(err)? {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_bytes();
            if entry.ino() == inode && name != b"." && name != b".." {
                return Ok(Some(entry.file_name().to_string_lossy().into_owned()));
            }
        }
        Ok(None)
    }

    /// The directory's entries (without `.` and `..`), in no order.
    pub fn entries(&self) -> Result<Vec<DirEntry>, ShareError> {
        entries_of(&self.fd, &self.path)
    }
}

/// The entries (without `.` and `..`) of directory `fd`, which is `path`.
fn entries_of(fd: &OwnedFd, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
    let err = |e: rustix::io::Errno| ShareError::from_io(path, "list directory", e.into());
    let dir = rfs::Dir::read_from(fd).map_err(err)?;
    let mut entries = Vec::new();
    for entry in dir {
        let entry = entry.map_err(err)?;
        let name = entry.file_name().to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        let kind = match entry.file_type() {
            FileType::Unknown => {
                rfs::statat(fd.as_fd(), entry.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|s| kind_of(FileType::from_raw_mode(s.st_mode)))
                    .map_err(err)?
            }
            t => kind_of(t),
        };
        entries.push(DirEntry {
            name: name.into_owned(),
            kind,
        });
    }
    Ok(entries)
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// The longest relative path handed to the kernel in one call: under PATH_MAX (4096).
const PATH_PIECE: usize = 4000;

impl LocalShare {
    /// Opens the share at `dir`, which must be an existing directory.
    pub fn open(dir: &Path) -> Result<Self, ShareError> {
        let root = rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ShareError::Io {
            path: SharePath::root(),
            op: "open share directory",
            source: std::io::Error::other(format!(
                "{}: {}",
                dir.display(),
                std::io::Error::from(e)
            )),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            root,
        })
    }

    /// The directory the share is rooted at.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens directory `path` to list it and look its entries up one by one, without
    /// resolving `path` again for each (a server answering READDIRPLUS).
    pub fn open_dir(&self, path: &SharePath) -> Result<LocalDir, ShareError> {
        self.open_dir_for(path, "open directory")
    }

    fn open_dir_for(&self, path: &SharePath, op: &'static str) -> Result<LocalDir, ShareError> {
        Ok(LocalDir {
            fd: self.open_beneath(path, OFlags::RDONLY | OFlags::DIRECTORY, op)?,
            path: path.clone(),
        })
    }

    /// Opens `path` beneath the root, following symlinks only while they stay inside.
    ///
    /// A path longer than the kernel takes in one call (PATH_MAX) is walked a piece at a
    /// time, each piece beneath the directory the previous one opened: directories nest
    /// deeper than any one path can name, and a file there must still be reachable.
    fn open_beneath(
        &self,
        path: &SharePath,
        flags: OFlags,
        op: &'static str,
    ) -> Result<OwnedFd, ShareError> {
        let err = |e: rustix::io::Errno| ShareError::from_io(path, op, e.into());
        let mut rel = if path.is_root() { "." } else { path.as_str() };
        let mut dir: Option<OwnedFd> = None;
        while rel.len() >= PATH_PIECE {
            let cut = rel[..PATH_PIECE]
                .rfind('/')
                .ok_or_else(|| err(rustix::io::Errno::NAMETOOLONG))?;
            let from = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
            let next =
                open_resolved(from, &rel[..cut], OFlags::PATH | OFlags::DIRECTORY).map_err(err)?;
            dir = Some(next);
            rel = &rel[cut + 1..];
        }
        let from = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        open_resolved(from, rel, flags).map_err(err)
    }

    /// The parent directory of `path`, opened, and its last component.
    fn parent<'p>(
        &self,
        path: &'p SharePath,
        op: &'static str,
    ) -> Result<(OwnedFd, &'p str), ShareError> {
        let (parent, name) = path.split_last().ok_or_else(|| ShareError::InvalidPath {
            path: String::new(),
            reason: "the share's root cannot be the target of this operation",
        })?;
        let fd = self.open_beneath(&parent, OFlags::PATH | OFlags::DIRECTORY, op)?;
        Ok((fd, name))
    }

    /// Writes `data` to a new file `name` in `dir` and syncs it.
    fn write_new_file(dir: &OwnedFd, name: &str, data: &[u8]) -> std::io::Result<()> {
        let fd = rfs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let mut file = File::from(fd);
        file.write_all(data)?;
        file.sync_all()
    }

    /// Makes a change to `dir`'s entries durable.
    fn sync_dir(dir: &OwnedFd) -> std::io::Result<()> {
        let fd = rfs::openat(
            dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rfs::fsync(fd)?;
        Ok(())
    }
}

/// `openat2` beneath `dir`. A walk through `..` that raced with a rename or mount
/// anywhere on the machine fails with EAGAIN (the kernel cannot vouch that it stayed
/// beneath); it is simply tried again.
fn open_resolved(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &str,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        // openat2 refuses a mode unless it creates (EINVAL); this never creates.
        match rfs::openat2(dir, path, flags | OFlags::CLOEXEC, Mode::empty(), RESOLVE) {
            Err(rustix::io::Errno::AGAIN) if tries < 100 => tries += 1,
            other => return other,
        }
    }
}

fn kind_of(file_type: FileType) -> FileKind {
    match file_type {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        FileType::Unknown => FileKind::File,
    }
}

fn time_of(secs: i64, nsecs: i64) -> SystemTime {
    let nsecs = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64) + nsecs
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsecs
    }
}

fn metadata_of(stat: &rfs::Stat) -> Metadata {
    Metadata {
        kind: kind_of(FileType::from_raw_mode(stat.st_mode)),
        inode: stat.st_ino,
        size: stat.st_size.max(0) as u64,
        allocated: stat.st_blocks.max(0) as u64 * 512,
        mode: stat.st_mode & 0o7777,
        nlink: stat.st_nlink as u32,
        rdev: stat.st_rdev,
        uid: stat.st_uid,
        gid: stat.st_gid,
        accessed: time_of(stat.st_atime, stat.st_atime_nsec as i64),
        modified: time_of(stat.st_mtime, stat.st_mtime_nsec as i64),
        changed: time_of(stat.st_ctime, stat.st_ctime_nsec as i64),
    }
}

fn timestamp(time: Option<SetTime>) -> rustix::fs::Timespec {
    let (tv_sec, tv_nsec) = match time {
        None => (0, rfs::UTIME_OMIT),
        Some(SetTime::Now) => (0, rfs::UTIME_NOW),
        Some(SetTime::At(t)) => match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as _, d.subsec_nanos() as _),
            // Before 1970: whole seconds back, then nanoseconds forward, as timespec has it.
            Err(e) => {
                let back = e.duration();
                let secs = back.as_secs() as i64 + i64::from(back.subsec_nanos() > 0);
                let nanos = (1_000_000_000 - back.subsec_nanos()) % 1_000_000_000;
                (-secs as _, nanos as _)
            }
        },
    };
    rustix::fs::Timespec { tv_sec, tv_nsec }
}

/// The descriptor of a file this share opened.
fn local_fd(file: &OpenFile) -> Result<&OwnedFd, ShareError> {
    match &file.by {
        OpenedBy::Fd(fd) => Ok(fd),
        OpenedBy::Nfs { .. } => Err(ShareError::from_io(
            &file.path,
            "use open file",
            rustix::io::Errno::BADF.into(),
        )),
    }
}

impl Share for LocalShare {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    fn metadata(&self, path: &SharePath) -> Result<Metadata, ShareError> {
        let stat = match path.split_last() {
            None => rfs::fstat(&self.root),
            Some(_) => {
                let (dir, name) = self.parent(path, "stat")?;
                rfs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            }
        }
        .map_err(|e| ShareError::from_io(path, "stat", e.into()))?;
        Ok(metadata_of(&stat))
    }

    fn read_dir(&self, path: &SharePath) -> Result<Vec<DirEntry>, ShareError> {
        self.open_dir_for(path, "list directory")?.entries()
    }

    fn read(&self, path: &SharePath) -> Result<Vec<u8>, ShareError> {
        let fd = self.open_beneath(path, OFlags::RDONLY, "open")?;
        let mut data = Vec::new();
        File::from(fd)
            .read_to_end(&mut data)
            .map_err(|e| ShareError::from_io(path, "read", e))?;
        Ok(data)
    }

    fn write_atomic(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "write")?;
        let tmp = format!(".{name}.cvol-tmp-{}", uuid::Uuid::new_v4().simple());
        let tmp = &tmp[..tmp.len().min(255)];
        let result = Self::write_new_file(&dir, tmp, data)
            .and_then(|()| rfs::renameat(&dir, tmp, &dir, name).map_err(Into::into))
            .and_then(|()| Self::sync_dir(&dir));
        if result.is_err() {
            let _ = rfs::unlinkat(&dir, tmp, AtFlags::empty());
        }
        result.map_err(|e| ShareError::from_io(path, "write", e))
    }

    fn create_new(&self, path: &SharePath, data: &[u8]) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "create")?;
        Self::write_new_file(&dir, name, data)
            .and_then(|()| Self::sync_dir(&dir))
            .map_err(|e| ShareError::from_io(path, "create", e))
    }

    fn create_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "mkdir")?;
        rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))
            .map_err(std::io::Error::from)
            .and_then(|()| Self::sync_dir(&dir))
            .map_err(|e| ShareError::from_io(path, "mkdir", e))
    }

    fn remove_file(&self, path: &SharePath) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "remove")?;
        rfs::unlinkat(&dir, name, AtFlags::empty())
            .map_err(|e| ShareError::from_io(path, "remove", e.into()))
    }

    fn remove_dir(&self, path: &SharePath) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "rmdir")?;
        rfs::unlinkat(&dir, name, AtFlags::REMOVEDIR)
            .map_err(|e| ShareError::from_io(path, "rmdir", e.into()))
    }

    fn rename(&self, from: &SharePath, to: &SharePath) -> Result<(), ShareError> {
        let (from_dir, from_name) = self.parent(from, "rename")?;
        let (to_dir, to_name) = self.parent(to, "rename")?;
        rfs::renameat(&from_dir, from_name, &to_dir, to_name)
            .map_err(std::io::Error::from)
            .and_then(|()| Self::sync_dir(&to_dir))
            .map_err(|e| ShareError::from_io(from, "rename", e))
    }

    fn read_at(&self, path: &SharePath, offset: u64, len: usize) -> Result<Vec<u8>, ShareError> {
        use std::os::unix::fs::FileExt;
        let file = File::from(self.open_beneath(path, OFlags::RDONLY, "open")?);
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ShareError::from_io(path, "read", e)),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn write_at(&self, path: &SharePath, offset: u64, data: &[u8]) -> Result<(), ShareError> {
        use std::os::unix::fs::FileExt;
        let file = File::from(self.open_beneath(path, OFlags::WRONLY, "open")?);
        file.write_all_at(data, offset)
            .map_err(|e| ShareError::from_io(path, "write", e))
    }

    fn create_file(&self, path: &SharePath, mode: u32) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "create")?;
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // The mode is set again once created: openat's is cut by this process's umask.
        rfs::openat(&dir, name, flags, Mode::from_raw_mode(mode & 0o777))
            .and_then(|fd| rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)))
            .map_err(|e| ShareError::from_io(path, "create", e.into()))
    }

    fn make_node(
        &self,
        path: &SharePath,
        kind: FileKind,
        mode: u32,
        rdev: u64,
    ) -> Result<(), ShareError> {
        let file_type = match kind {
            FileKind::Fifo => FileType::Fifo,
            FileKind::Socket => FileType::Socket,
            FileKind::CharDevice => FileType::CharacterDevice,
            FileKind::BlockDevice => FileType::BlockDevice,
            _ => {
                return Err(ShareError::from_io(
                    path,
                    "mknod",
                    rustix::io::Errno::INVAL.into(),
                ))
            }
        };
        let (dir, name) = self.parent(path, "mknod")?;
        rfs::mknodat(
            &dir,
            name,
            file_type,
            Mode::from_raw_mode(mode & 0o777),
            rdev,
        )
        .and_then(|()| {
            rfs::chmodat(
                &dir,
                name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
        })
        .map_err(|e| ShareError::from_io(path, "mknod", e.into()))
    }

    fn hard_link(&self, existing: &SharePath, new: &SharePath) -> Result<(), ShareError> {
        let (from_dir, from_name) = self.parent(existing, "link")?;
        let (to_dir, to_name) = self.parent(new, "link")?;
        rfs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
            .map_err(|e| ShareError::from_io(new, "link", e.into()))
    }

    fn open_file(&self, path: &SharePath) -> Result<OpenFile, ShareError> {
        // The daemon reads and writes on behalf of callers the kernel has already
        // checked, so a file is opened for both whenever the daemon may.
        let fd = match self.open_beneath(path, OFlags::RDWR | OFlags::NOFOLLOW, "open") {
            // Read-only files on a read-only or root-squashing mount: read them still.
            Err(ShareError::Io { .. }) => {
                self.open_beneath(path, OFlags::RDONLY | OFlags::NOFOLLOW, "open")?
            }
            opened => opened?,
        };
        Ok(OpenFile {
            path: path.clone(),
            by: OpenedBy::Fd(fd),
        })
    }

    fn keeps_removed_open_files(&self) -> bool {
        true
    }

    fn file_read(&self, file: &OpenFile, offset: u64, len: usize) -> Result<Vec<u8>, ShareError> {
        let fd = local_fd(file)?;
        let mut buf = vec![0; len];
        let mut done = 0;
        while done < len {
            match rustix::io::pread(fd, &mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ShareError::from_io(&file.path, "read", e.into())),
            }
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn file_write(&self, file: &OpenFile, offset: u64, data: &[u8]) -> Result<(), ShareError> {
        let fd = local_fd(file)?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(fd, &data[done..], offset + done as u64) {
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(ShareError::from_io(&file.path, "write", e.into())),
            }
        }
        Ok(())
    }

    fn file_metadata(&self, file: &OpenFile) -> Result<Metadata, ShareError> {
        rfs::fstat(local_fd(file)?)
            .map(|s| metadata_of(&s))
            .map_err(|e| ShareError::from_io(&file.path, "stat", e.into()))
    }

    fn file_set_attributes(
        &self,
        file: &OpenFile,
        changes: &SetAttributes,
    ) -> Result<(), ShareError> {
        let fd = local_fd(file)?;
        let err = |op, e: rustix::io::Errno| ShareError::from_io(&file.path, op, e.into());
        if changes.uid.is_some() || changes.gid.is_some() {
            rfs::fchown(
                fd,
                changes.uid.map(rfs::Uid::from_raw),
                changes.gid.map(rfs::Gid::from_raw),
            )
            .map_err(|e| err("chown", e))?;
        }
        if let Some(mode) = changes.mode {
            rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777)).map_err(|e| err("chmod", e))?;
        }
        if let Some(size) = changes.size {
            rfs::ftruncate(fd, size).map_err(|e| err("truncate", e))?;
        }
        if changes.accessed.is_some() || changes.modified.is_some() {
            let times = rfs::Timestamps {
                last_access: timestamp(changes.accessed),
                last_modification: timestamp(changes.modified),
            };
            rfs::futimens(fd, &times).map_err(|e| err("set times", e))?;
        }
        Ok(())
    }

    fn file_sync(&self, file: &OpenFile) -> Result<(), ShareError> {
        rfs::fsync(local_fd(file)?).map_err(|e| ShareError::from_io(&file.path, "fsync", e.into()))
    }

    fn set_attributes(&self, path: &SharePath, changes: &SetAttributes) -> Result<(), ShareError> {
        let err = |op, e: rustix::io::Errno| ShareError::from_io(path, op, e.into());
        let is_link = self.metadata(path)?.kind == FileKind::Symlink;
        let (dir, name) = match path.split_last() {
            Some((_, _)) => self
                .parent(path, "set attributes")
                .map(|(d, n)| (Some(d), n))?,
            None => (None, "."),
        };
        let dir_fd = dir.as_ref().map_or(self.root.as_fd(), |d| d.as_fd());
        if changes.uid.is_some() || changes.gid.is_some() {
            let uid = changes.uid.map(rfs::Uid::from_raw);
            let gid = changes.gid.map(rfs::Gid::from_raw);
            rfs::chownat(dir_fd, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| err("chown", e))?;
        }
        if let Some(mode) = changes.mode {
            if is_link {
                return Err(err("chmod", rustix::io::Errno::OPNOTSUPP));
            }
            rfs::chmodat(
                dir_fd,
                name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| err("chmod", e))?;
        }
        if let Some(size) = changes.size {
            let fd = self.open_beneath(path, OFlags::WRONLY | OFlags::NOFOLLOW, "truncate")?;
            rfs::ftruncate(&fd, size).map_err(|e| err("truncate", e))?;
        }
        if changes.accessed.is_some() || changes.modified.is_some() {
            let times = rfs::Timestamps {
                last_access: timestamp(changes.accessed),
                last_modification: timestamp(changes.modified),
            };
            rfs::utimensat(dir_fd, name, &times, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| err("set times", e))?;
        }
        Ok(())
    }

    fn symlink(&self, path: &SharePath, target: &str) -> Result<(), ShareError> {
        let (dir, name) = self.parent(path, "symlink")?;
        rfs::symlinkat(target, &dir, name)
            .map_err(|e| ShareError::from_io(path, "symlink", e.into()))
    }

    fn read_link(&self, path: &SharePath) -> Result<String, ShareError> {
        let (dir, name) = self.parent(path, "readlink")?;
        let target = rfs::readlinkat(&dir, name, Vec::new())
            .map_err(|e| ShareError::from_io(path, "readlink", e.into()))?;
        Ok(target.to_string_lossy().into_owned())
    }

    fn sync(&self, path: &SharePath) -> Result<(), ShareError> {
        let fd = self.open_beneath(path, OFlags::RDONLY, "open")?;
        rfs::fsync(&fd).map_err(|e| ShareError::from_io(path, "fsync", e.into()))
    }

    fn stats(&self) -> Result<ShareStats, ShareError> {
        let s = rfs::fstatvfs(&self.root)
            .map_err(|e| ShareError::from_io(&SharePath::root(), "statvfs", e.into()))?;
        Ok(ShareStats {
            block_size: s.f_frsize as u32,
            blocks: s.f_blocks,
            blocks_free: s.f_bfree,
            blocks_available: s.f_bavail,
            files: s.f_files,
            files_free: s.f_ffree,
            name_max: s.f_namemax as u32,
            fs_id: Some(s.f_fsid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SharePath {
        SharePath::new(s).unwrap()
    }

    #[test]
    fn file_operations() {
        let tmp = tempfile::tempdir().unwrap();
        let share = LocalShare::open(tmp.path()).unwrap();
        share.create_dir(&p("vm1")).unwrap();
        assert!(matches!(
            share.create_dir(&p("vm1")),
            Err(ShareError::AlreadyExists(_))
        ));
        share.create_new(&p("vm1/a.vmx"), b"one").unwrap();
        assert!(matches!(
            share.create_new(&p("vm1/a.vmx"), b"x"),
            Err(ShareError::AlreadyExists(_))
        ));
        share.write_atomic(&p("vm1/a.vmx"), b"two").unwrap();
        assert_eq!(share.read(&p("vm1/a.vmx")).unwrap(), b"two");
        let md = share.metadata(&p("vm1/a.vmx")).unwrap();
        assert_eq!((md.kind, md.size), (FileKind::File, 3));
        assert_eq!(
            share.metadata(&SharePath::root()).unwrap().kind,
            FileKind::Dir
        );
        let names: Vec<_> = share
            .read_dir(&p("vm1"))
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.vmx"], "no temporary file is left behind");
        share.rename(&p("vm1/a.vmx"), &p("vm1/b.vmx")).unwrap();
        assert!(share.read(&p("vm1/a.vmx")).unwrap_err().is_not_found());
        share.remove_file(&p("vm1/b.vmx")).unwrap();
        share.remove_dir(&p("vm1")).unwrap();
        assert!(share.read_dir(&SharePath::root()).unwrap().is_empty());
    }

    #[test]
    fn symlinks_out_of_the_share_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("vm1")).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join("vm1/out")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("vm1/abs")).unwrap();
        std::os::unix::fs::symlink("../../", tmp.path().join("vm1/up")).unwrap();
        std::fs::write(tmp.path().join("vm1/real"), b"inside").unwrap();
        std::os::unix::fs::symlink("real", tmp.path().join("vm1/in")).unwrap();
        let share = LocalShare::open(tmp.path()).unwrap();

        for path in ["vm1/out/secret", "vm1/abs", "vm1/up/etc/passwd"] {
            let err = share.read(&p(path)).unwrap_err();
            assert!(matches!(err, ShareError::Escapes(_)), "{path}: {err}");
        }
        assert!(matches!(
            share.write_atomic(&p("vm1/out/new"), b"x"),
            Err(ShareError::Escapes(_))
        ));
        assert!(!outside.path().join("new").exists());
        assert!(matches!(
            share.create_dir(&p("vm1/out/d")),
            Err(ShareError::Escapes(_))
        ));
        assert_eq!(share.read(&p("vm1/in")).unwrap(), b"inside");
        assert_eq!(
            share.metadata(&p("vm1/abs")).unwrap().kind,
            FileKind::Symlink
        );
        // Replacing a symlink replaces the link, never the file it points to.
        share.write_atomic(&p("vm1/abs"), b"x").unwrap();
        assert_eq!(share.metadata(&p("vm1/abs")).unwrap().kind, FileKind::File);
    }

    #[test]
    fn positioned_io_attributes_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let share = LocalShare::open(tmp.path()).unwrap();
        share.create_file(&p("f"), 0o600).unwrap();
        assert!(matches!(
            share.create_file(&p("f"), 0o600),
            Err(ShareError::AlreadyExists(_))
        ));
        share.write_at(&p("f"), 10, b"hello").unwrap();
        assert_eq!(share.read_at(&p("f"), 8, 100).unwrap(), b"\0\0hello");
        assert_eq!(share.read_at(&p("f"), 100, 10).unwrap(), b"");
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        share
            .set_attributes(
                &p("f"),
                &SetAttributes {
                    mode: Some(0o640),
                    size: Some(12),
                    modified: Some(SetTime::At(old)),
                    ..SetAttributes::default()
                },
            )
            .unwrap();
        let md = share.metadata(&p("f")).unwrap();
        assert_eq!((md.mode, md.size, md.modified), (0o640, 12, old));
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_millis(86_400_250);
        share
            .set_attributes(
                &p("f"),
                &SetAttributes {
                    modified: Some(SetTime::At(before_1970)),
                    ..SetAttributes::default()
                },
            )
            .unwrap();
        assert_eq!(share.metadata(&p("f")).unwrap().modified, before_1970);
        share.symlink(&p("l"), "f").unwrap();
        assert_eq!(share.read_link(&p("l")).unwrap(), "f");
        assert_eq!(share.metadata(&p("l")).unwrap().kind, FileKind::Symlink);
        // chmod never goes through a symlink (which might lead out of the share).
        let err = share.set_attributes(
            &p("l"),
            &SetAttributes {
                mode: Some(0o777),
                ..Default::default()
            },
        );
        assert!(err.is_err());
        assert_eq!(share.metadata(&p("f")).unwrap().mode, 0o640);
        share.sync(&p("f")).unwrap();
        assert!(share.stats().unwrap().blocks > 0);
    }

    #[test]
    fn missing_share_directory_is_an_error() {
        let err = LocalShare::open(Path::new("/nonexistent/cvol-share")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cvol-share"), "{err}");
    }
}
