//! The `file` provider: a pool directory of sparse files (the embedded default).
//!
//! ```text
//! <pool>/volumes/<vol-id>/data                 the volume's bytes, a sparse file
//! <pool>/volumes/<vol-id>/volume.toml          owner and creation time
//! <pool>/volumes/<vol-id>/snapshots/<name>     read-only copies (reflinks where possible)
//! <pool>/volumes/<vol-id>/attachment           the host holding the volume and its generation
//! <pool>/volumes/<vol-id>/fence                the newest attachment generation (fence.rs)
//! <pool>/.staging/                             work in progress, never visible as a volume
//! ```
//! A volume appears by one rename of a complete directory out of `.staging/`, and
//! disappears by one rename into it, so a crash never leaves half a volume visible; what
//! a crash leaves in `.staging/` is reclaimed by [`Provider::reclaim_interrupted`].

mod copy;
mod device;
mod fence;

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cvol_format::{ProviderId, SnapshotName, VolumeId};
use rustix::fs::{RenameFlags, StatVfsMountFlags};
use serde::{Deserialize, Serialize};

pub(crate) use device::FileBlockDevice;
use fence::FenceFile;

use crate::standby::StandbyDevice;
use crate::{
    Attachment, CopyProgress, DataAccess, Provider, ProviderError, Snapshot, Volume, VolumeSource,
};

const VOLUMES: &str = "volumes";
const STAGING: &str = ".staging";
const DATA: &str = "data";
const RECORD: &str = "volume.toml";
const SNAPSHOTS: &str = "snapshots";
const ATTACHMENT: &str = "attachment";
const FENCE: &str = "fence";

/// Staged work older than this is taken to be from a crashed process.
const STAGING_GRACE: Duration = Duration::from_secs(600);

/// What `volume.toml` holds.
#[derive(Debug, Serialize, Deserialize)]
struct VolumeRecord {
    owner: String,
    created_unix: u64,
}

/// What `attachment` holds.
#[derive(Debug, Serialize, Deserialize)]
struct AttachmentRecord {
    host: String,
    generation: u64,
}

/// A pool directory of sparse files.
#[derive(Debug)]
pub struct FileProvider {
    id: ProviderId,
    pool: PathBuf,
}

impl FileProvider {
    /// Opens the pool at `pool`, which must be an existing, writable directory.
    pub fn open(id: &ProviderId, pool: &Path) -> Result<Self, ProviderError> {
        let this = Self {
            id: id.clone(),
            pool: pool.to_path_buf(),
        };
        let refuse = |reason: String| ProviderError::Pool {
            provider: id.to_string(),
            path: pool.to_path_buf(),
            reason,
        };
        let meta = fs::metadata(pool).map_err(|e| match e.kind() {
            ErrorKind::NotFound => refuse("does not exist".into()),
            _ => refuse(e.to_string()),
        })?;
        if !meta.is_dir() {
            return Err(refuse("is not a directory".into()));
        }
        let statvfs =
            rustix::fs::statvfs(pool).map_err(|e| refuse(io::Error::from(e).to_string()))?;
        // Root may write into a directory without write bits; a pool with none is meant
        // to be read-only all the same.
        if statvfs.f_flag.contains(StatVfsMountFlags::RDONLY)
            || meta.permissions().mode() & 0o222 == 0
        {
            return Err(refuse("is read-only".into()));
        }
        for dir in [VOLUMES, STAGING] {
            let path = pool.join(dir);
            fs::create_dir_all(&path).map_err(|e| this.io("create", &path, e))?;
        }
        Ok(this)
    }

    fn io(&self, op: &'static str, path: &Path, source: io::Error) -> ProviderError {
        ProviderError::Io {
            provider: self.id.to_string(),
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    fn volume_dir(&self, id: &VolumeId) -> PathBuf {
        self.pool.join(VOLUMES).join(id.as_str())
    }

    fn not_found(&self, id: &VolumeId) -> ProviderError {
        ProviderError::VolumeNotFound {
            provider: self.id.to_string(),
            volume: id.to_string(),
        }
    }

    /// The directory of an existing volume.
    fn existing(&self, id: &VolumeId) -> Result<PathBuf, ProviderError> {
        self.data_metadata(id).map(|(dir, _)| dir)
    }

    /// The directory of volume `id` and its data file's metadata (whose length is the
    /// volume's size); `VolumeNotFound` if there is no such volume.
    fn data_metadata(&self, id: &VolumeId) -> Result<(PathBuf, fs::Metadata), ProviderError> {
        let dir = self.volume_dir(id);
        match fs::symlink_metadata(dir.join(DATA)) {
            Ok(m) if m.is_file() => Ok((dir, m)),
            Ok(_) => Err(self.corrupt(&dir.join(DATA), "is not a regular file")),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(self.not_found(id)),
            Err(e) => Err(self.io("stat", &dir, e)),
        }
    }

    fn corrupt(&self, path: &Path, message: &str) -> ProviderError {
        ProviderError::Corrupt {
            provider: self.id.to_string(),
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }

    fn check_size(&self, size: u64) -> Result<(), ProviderError> {
        crate::check_sector_size(self.id.as_str(), size)?;
        if i64::try_from(size).is_err() {
            return Err(self.invalid_size(size, "larger than any file can be"));
        }
        Ok(())
    }

    fn invalid_size(&self, size: u64, reason: &str) -> ProviderError {
        ProviderError::InvalidSize {
            provider: self.id.to_string(),
            size,
            reason: reason.to_string(),
        }
    }

    /// Gives `file` at `path` the length `size`.
    fn set_len(&self, file: &File, path: &Path, size: u64) -> Result<(), ProviderError> {
        match file.set_len(size) {
            // EFBIG: beyond the file system's largest file; EINVAL: beyond off_t.
            Err(e)
                if matches!(
                    rustix::io::Errno::from_io_error(&e),
                    Some(rustix::io::Errno::FBIG | rustix::io::Errno::INVAL)
                ) =>
            {
                Err(self.invalid_size(size, "larger than this pool's file system can hold"))
            }
            result => result.map_err(|e| self.io("size", path, e)),
        }
    }

    fn snapshot_path(&self, id: &VolumeId, name: &SnapshotName) -> Result<PathBuf, ProviderError> {
        let path = self.existing(id)?.join(SNAPSHOTS).join(name.as_str());
        if !path.exists() {
            return Err(ProviderError::SnapshotNotFound {
                provider: self.id.to_string(),
                volume: id.to_string(),
                snapshot: name.to_string(),
            });
        }
        Ok(path)
    }

    fn read_volume(&self, id: &VolumeId) -> Result<Volume, ProviderError> {
        self.read_volume_in(id).map(|(volume, _)| volume)
    }

    /// Volume `id` and its directory. Walks read every volume of a pool: each is one
    /// stat, one read and one look for an attachment.
    fn read_volume_in(&self, id: &VolumeId) -> Result<(Volume, PathBuf), ProviderError> {
        let (dir, data) = self.data_metadata(id)?;
        let record_path = dir.join(RECORD);
        let text =
            fs::read_to_string(&record_path).map_err(|e| self.io("read", &record_path, e))?;
        let record: VolumeRecord =
            toml::from_str(&text).map_err(|e| self.corrupt(&record_path, e.message()))?;
        let volume = Volume {
            id: id.clone(),
            size: data.len(),
            owner: record.owner,
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(record.created_unix),
            attached_to: self.attachment(&dir)?.map(|a| a.host),
        };
        Ok((volume, dir))
    }

    /// The snapshots in volume directory `dir`, oldest first.
    fn snapshots_in(&self, dir: &Path) -> Result<Vec<Snapshot>, ProviderError> {
        let dir = dir.join(SNAPSHOTS);
        let mut snapshots = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| self.io("list", &dir, e))? {
            let entry = entry.map_err(|e| self.io("list", &dir, e))?;
            let Ok(name) = SnapshotName::new(&entry.file_name().to_string_lossy()) else {
                continue; // staged work in progress, or foreign
            };
            let meta = entry
                .metadata()
                .map_err(|e| self.io("stat", &entry.path(), e))?;
            snapshots.push(Snapshot {
                name,
                size: meta.len(),
                created: system_time(&meta),
            });
        }
        snapshots.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.name.cmp(&b.name)));
        Ok(snapshots)
    }

    /// A fresh directory under `.staging/` for work on `id`.
    fn stage(&self, id: &VolumeId) -> Result<PathBuf, ProviderError> {
        let dir = self
            .pool
            .join(STAGING)
            .join(format!("{id}.{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir(&dir).map_err(|e| self.io("create", &dir, e))?;
        Ok(dir)
    }

    /// Writes a complete volume into `staged`, then moves it into place.
    fn build_volume(
        &self,
        id: &VolumeId,
        staged: &Path,
        source: &VolumeSource,
        owner: &str,
        progress: &dyn CopyProgress,
    ) -> Result<(), ProviderError> {
        let data_path = staged.join(DATA);
        let data = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data_path)
            .map_err(|e| self.io("create", &data_path, e))?;
        let copy_from = |src: PathBuf| -> Result<(), ProviderError> {
            let src_file = File::open(&src).map_err(|e| self.io("open", &src, e))?;
            let method = copy::copy_file(&src_file, &data, progress)
                .map_err(|e| self.io("copy", &src, e))?;
            tracing::debug!(provider = %self.id, volume = %id, ?method, "copied {}", src.display());
            Ok(())
        };
        match source {
            VolumeSource::Blank { size } => {
                self.check_size(*size)?;
                self.set_len(&data, &data_path, *size)?;
            }
            VolumeSource::Volume(src) => copy_from(self.existing(src)?.join(DATA))?,
            VolumeSource::Snapshot(src, name) => copy_from(self.snapshot_path(src, name)?)?,
        }
        data.sync_all()
            .map_err(|e| self.io("sync", &data_path, e))?;
        let record = VolumeRecord {
            owner: owner.to_string(),
            created_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let record_path = staged.join(RECORD);
        let text = toml::to_string(&record).expect("a volume record serializes");
        write_synced(&record_path, text.as_bytes())
            .map_err(|e| self.io("write", &record_path, e))?;
        fs::create_dir(staged.join(SNAPSHOTS)).map_err(|e| self.io("create", staged, e))?;
        sync_dir(staged).map_err(|e| self.io("sync", staged, e))?;
        let target = self.volume_dir(id);
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            staged,
            rustix::fs::CWD,
            &target,
            RenameFlags::NOREPLACE,
        ) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(ProviderError::VolumeExists {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                })
            }
            Err(e) => return Err(self.io("rename", &target, e.into())),
        }
        let volumes = self.pool.join(VOLUMES);
        sync_dir(&volumes).map_err(|e| self.io("sync", &volumes, e))
    }

    /// Locks the attachment of the volume in `dir` against every other attach, detach
    /// and delete, by any process, until the returned file is dropped.
    fn lock_attachment(&self, dir: &Path) -> Result<File, ProviderError> {
        let file = File::open(dir).map_err(|e| self.io("open", dir, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io("lock", dir, e.into()))?;
        Ok(file)
    }

    /// Refuses a change to volume `id` (in `dir`, its attachment locked) while a host
    /// holds it.
    fn refuse_attached(&self, id: &VolumeId, dir: &Path) -> Result<(), ProviderError> {
        match self.attachment(dir)? {
            Some(held) => Err(ProviderError::AttachedElsewhere {
                provider: self.id.to_string(),
                volume: id.to_string(),
                holder: held.host,
            }),
            None => Ok(()),
        }
    }

    fn attachment(&self, dir: &Path) -> Result<Option<AttachmentRecord>, ProviderError> {
        let path = dir.join(ATTACHMENT);
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map(Some)
                .map_err(|e| self.corrupt(&path, e.message())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read", &path, e)),
        }
    }

    /// Records `host` as the holder of the volume in `dir` with a new generation, and
    /// fences every older one. Called with the attachment locked.
    fn take(&self, id: &VolumeId, dir: &Path, host: &str) -> Result<u64, ProviderError> {
        let fence_path = dir.join(FENCE);
        let fence = FenceFile::open(&fence_path).map_err(|e| self.io("open", &fence_path, e))?;
        let generation = fence
            .current()
            .map_err(|e| self.io("read", &fence_path, e))?
            + 1;
        let record = toml::to_string(&AttachmentRecord {
            host: host.to_string(),
            generation,
        })
        .expect("an attachment record serializes");
        // Written aside and renamed into place, so that no reader sees it half written.
        let staged = self
            .pool
            .join(STAGING)
            .join(format!("{id}.attach-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join(ATTACHMENT);
        write_synced(&staged, record.as_bytes())
            .and_then(|()| fs::rename(&staged, &path))
            .and_then(|()| sync_dir(dir))
            .map_err(|e| {
                let _ = fs::remove_file(&staged);
                self.io("attach", &path, e)
            })?;
        fence
            .advance(generation)
            .map_err(|e| self.io("fence", &fence_path, e))?;
        Ok(generation)
    }
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = File::options().write(true).create_new(true).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn system_time(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Provider for FileProvider {
    fn location(&self) -> String {
        format!("file:{}", self.pool.display())
    }

    fn create_volume(
        &self,
        id: &VolumeId,
        source: &VolumeSource,
        owner: &str,
        progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        if self.volume_dir(id).exists() {
            return Err(ProviderError::VolumeExists {
                provider: self.id.to_string(),
                volume: id.to_string(),
            });
        }
        let staged = self.stage(id)?;
        let result = self.build_volume(id, &staged, source, owner, progress);
        if result.is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        result?;
        self.read_volume(id)
    }

    fn volume(&self, id: &VolumeId) -> Result<Volume, ProviderError> {
        self.read_volume(id)
    }

    fn list_volumes(&self) -> Result<Vec<Volume>, ProviderError> {
        let dir = self.pool.join(VOLUMES);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| self.io("list", &dir, e))? {
            let entry = entry.map_err(|e| self.io("list", &dir, e))?;
            let name = entry.file_name();
            match VolumeId::new(&name.to_string_lossy()) {
                Ok(id) => ids.push(id),
                Err(_) => {
                    tracing::warn!(provider = %self.id, "ignoring {}: not a volume", entry.path().display())
                }
            }
        }
        crate::read_volumes(&ids, |id| self.read_volume(id))
    }

    fn resize_volume(
        &self,
        id: &VolumeId,
        size: u64,
        allow_shrink: bool,
    ) -> Result<Volume, ProviderError> {
        self.check_size(size)?;
        let current = self.read_volume(id)?;
        crate::check_shrink(self.id.as_str(), id, current.size, size, allow_shrink)?;
        let data = self.volume_dir(id).join(DATA);
        let file = File::options()
            .write(true)
            .open(&data)
            .map_err(|e| self.io("open", &data, e))?;
        self.set_len(&file, &data, size)?;
        file.sync_all().map_err(|e| self.io("resize", &data, e))?;
        self.read_volume(id)
    }

    fn delete_volume(&self, id: &VolumeId) -> Result<(), ProviderError> {
        let dir = self.existing(id)?;
        let _lock = self.lock_attachment(&dir)?;
        self.refuse_attached(id, &dir)?;
        // One rename makes the volume disappear; the removal after it may be interrupted.
        let doomed = self
            .pool
            .join(STAGING)
            .join(format!("{id}.deleted-{}", uuid::Uuid::new_v4().simple()));
        fs::rename(&dir, &doomed).map_err(|e| self.io("delete", &dir, e))?;
        let volumes = self.pool.join(VOLUMES);
        sync_dir(&volumes).map_err(|e| self.io("sync", &volumes, e))?;
        fs::remove_dir_all(&doomed).map_err(|e| self.io("remove", &doomed, e))
    }

    fn create_snapshot(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        progress: &dyn CopyProgress,
    ) -> Result<Snapshot, ProviderError> {
        let dir = self.existing(id)?;
        let snapshots = dir.join(SNAPSHOTS);
        let target = snapshots.join(name.as_str());
        let exists = || ProviderError::SnapshotExists {
            provider: self.id.to_string(),
            volume: id.to_string(),
            snapshot: name.to_string(),
        };
        if target.exists() {
            return Err(exists());
        }
        // Snapshot names never start with '.', so this cannot collide with one; the name
        // is left out so that a name of the longest length still fits.
        let staged = snapshots.join(format!(".staged-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let src_path = dir.join(DATA);
            let src = File::open(&src_path).map_err(|e| self.io("open", &src_path, e))?;
            let dst = File::options()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&staged)
                .map_err(|e| self.io("create", &staged, e))?;
            copy::copy_file(&src, &dst, progress).map_err(|e| self.io("copy", &src_path, e))?;
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                &staged,
                rustix::fs::CWD,
                &target,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => return Err(exists()),
                Err(e) => return Err(self.io("rename", &target, e.into())),
            }
            sync_dir(&snapshots).map_err(|e| self.io("sync", &snapshots, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staged);
        }
        result?;
        let meta = fs::metadata(&target).map_err(|e| self.io("stat", &target, e))?;
        Ok(Snapshot {
            name: name.clone(),
            size: meta.len(),
            created: system_time(&meta),
        })
    }

    fn list_snapshots(&self, id: &VolumeId) -> Result<Vec<Snapshot>, ProviderError> {
        self.snapshots_in(&self.existing(id)?)
    }

    fn describe(&self, id: &VolumeId) -> Result<(Volume, Vec<Snapshot>), ProviderError> {
        let (volume, dir) = self.read_volume_in(id)?;
        Ok((volume, self.snapshots_in(&dir)?))
    }

    fn delete_snapshot(&self, id: &VolumeId, name: &SnapshotName) -> Result<(), ProviderError> {
        let path = self.snapshot_path(id, name)?;
        fs::remove_file(&path).map_err(|e| self.io("remove", &path, e))
    }

    fn revert_volume(
        &self,
        id: &VolumeId,
        name: &SnapshotName,
        progress: &dyn CopyProgress,
    ) -> Result<Volume, ProviderError> {
        let dir = self.existing(id)?;
        let snapshot = self.snapshot_path(id, name)?;
        let _lock = self.lock_attachment(&dir)?;
        self.refuse_attached(id, &dir)?;
        // A whole copy staged beside the snapshots (where reclaim finds an interrupted
        // one), then one rename: the volume is either as it was or as the snapshot.
        let staged = dir
            .join(SNAPSHOTS)
            .join(format!(".staged-{}", uuid::Uuid::new_v4().simple()));
        let result = (|| {
            let src = File::open(&snapshot).map_err(|e| self.io("open", &snapshot, e))?;
            let dst = File::options()
                .write(true)
                .create_new(true)
                .open(&staged)
                .map_err(|e| self.io("create", &staged, e))?;
            copy::copy_file(&src, &dst, progress).map_err(|e| self.io("copy", &snapshot, e))?;
            let data = dir.join(DATA);
            fs::rename(&staged, &data).map_err(|e| self.io("rename", &data, e))?;
            sync_dir(&dir).map_err(|e| self.io("sync", &dir, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&staged);
        }
        result?;
        self.read_volume(id)
    }

    fn attach(&self, id: &VolumeId, host: &str, force: bool) -> Result<Attachment, ProviderError> {
        let dir = self.existing(id)?;
        let _lock = self.lock_attachment(&dir)?;
        let generation = match self.attachment(&dir)? {
            Some(held) if held.host == host => held.generation,
            Some(held) if !force => {
                return Err(ProviderError::AttachedElsewhere {
                    provider: self.id.to_string(),
                    volume: id.to_string(),
                    holder: held.host,
                })
            }
            Some(held) => {
                tracing::warn!(provider = %self.id, volume = %id, "host {host:?} takes the volume over from host {:?}", held.host);
                self.take(id, &dir, host)?
            }
            None => self.take(id, &dir, host)?,
        };
        let (data, fence) = (dir.join(DATA), dir.join(FENCE));
        let device = FileBlockDevice::open(&data, &fence, generation, true)
            .map_err(|e| self.io("open", &data, e))?;
        let access = DataAccess::File { data, fence };
        Ok(Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation,
            access,
            device: Arc::new(device),
        })
    }

    fn attach_standby(&self, id: &VolumeId, host: &str) -> Result<Attachment, ProviderError> {
        let dir = self.existing(id)?;
        let fence_path = dir.join(FENCE);
        let generation = FenceFile::open(&fence_path)
            .and_then(|fence| fence.current())
            .map_err(|e| self.io("read", &fence_path, e))?;
        let (data, fence) = (dir.join(DATA), dir.join(FENCE));
        let device = FileBlockDevice::open(&data, &fence, generation, false)
            .map_err(|e| self.io("open", &data, e))?;
        tracing::info!(provider = %self.id, volume = %id, host, "attached as a standby");
        Ok(Attachment {
            volume: id.clone(),
            host: host.to_string(),
            generation,
            access: DataAccess::File { data, fence },
            device: StandbyDevice::wrap(Arc::new(device)),
        })
    }

    fn allocated(&self, id: &VolumeId) -> Result<Option<u64>, ProviderError> {
        use std::os::unix::fs::MetadataExt;
        let (_, data) = self.data_metadata(id)?;
        Ok(Some(data.blocks() * 512))
    }

    fn space(&self) -> Result<Option<crate::PoolSpace>, ProviderError> {
        let s = rustix::fs::statvfs(&self.pool)
            .map_err(|e| self.io("statvfs", &self.pool, e.into()))?;
        Ok(Some(crate::PoolSpace {
            total: s.f_blocks * s.f_frsize,
            free: s.f_bfree * s.f_frsize,
            available: s.f_bavail * s.f_frsize,
            fs_id: s.f_fsid,
        }))
    }

    fn reclaim_interrupted(&self, apply: bool) -> Result<Vec<String>, ProviderError> {
        let mut stale = Vec::new();
        let mut collect = |dir: &Path, only_hidden: bool| -> Result<(), ProviderError> {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(self.io("list", dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io("list", dir, e))?;
                if only_hidden && !entry.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if age >= STAGING_GRACE {
                    stale.push(entry.path());
                }
            }
            Ok(())
        };
        collect(&self.pool.join(STAGING), false)?;
        for volume in self.list_volumes()? {
            collect(&self.volume_dir(&volume.id).join(SNAPSHOTS), true)?;
        }
        if apply {
            for path in &stale {
                let result = if path.is_dir() {
                    fs::remove_dir_all(path)
                } else {
                    fs::remove_file(path)
                };
                result.map_err(|e| self.io("remove", path, e))?;
            }
        }
        Ok(stale.iter().map(|p| p.display().to_string()).collect())
    }

    fn detach(&self, id: &VolumeId, host: &str) -> Result<(), ProviderError> {
        let dir = match self.existing(id) {
            Ok(dir) => dir,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        let _lock = self.lock_attachment(&dir)?;
        let Some(held) = self.attachment(&dir)?.filter(|held| held.host == host) else {
            return Ok(());
        };
        let record = dir.join(ATTACHMENT);
        fs::remove_file(&record).map_err(|e| self.io("detach", &record, e))?;
        let fence_path = dir.join(FENCE);
        FenceFile::open(&fence_path)
            .and_then(|fence| fence.advance(held.generation + 1))
            .map_err(|e| self.io("fence", &fence_path, e))
    }
}

#[cfg(test)]
mod tests;
