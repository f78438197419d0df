//! A cVol datastore's control plane (DESIGN.md): VMs and their disks, made of metadata
//! files on a [`Share`] and volumes in [`Provider`]s.
//!
//! Every operation that takes more than one step (a VM = volumes + descriptors + .vmx)
//! is all-or-nothing: it writes an intent record first (see [`intent`]), and
//! [`Datastore::fsck`] finishes or undoes whatever a crash interrupted.

mod attached;
mod disk;
mod error;
mod fsck;
pub mod intent;
pub mod layout;
mod metered;
mod pending;
mod vm;
mod vm_clone;
mod vm_snapshot;
mod vmx_slots;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cvol_format::{
    CvolDisk, DatastoreConfig, Descriptor, DiskName, FormatError, ProviderConfig, ProviderId,
    VmName,
};
use cvol_format::{DDB_DATASTORE, DDB_PROVIDER};
use cvol_provider::Provider;
use cvol_share::{Share, SharePath};
use uuid::Uuid;

pub use attached::AttachedVolumes;
pub use disk::{DiskInfo, Fill};
pub use error::DatastoreError;
pub use fsck::{FsckOptions, FsckReport, Problem};
pub use pending::PendingDisk;
pub use vm::{VmInfo, VmSpec, OPTION_PREFIX};
pub use vm_snapshot::{VmSnapshot, VmSnapshotDisk};

/// Called with `op:step` after each step of a multi-step operation. Tests and the CLI's
/// `CVOL_FAILPOINT` use it to stop an operation dead at a chosen step, as a crash would.
pub type FailPoint = Arc<dyn Fn(&str) + Send + Sync>;

/// An open datastore.
pub struct Datastore {
    share: Arc<dyn Share>,
    config: DatastoreConfig,
    host: String,
    providers: Mutex<BTreeMap<ProviderId, Arc<dyn Provider>>>,
    failpoint: Option<FailPoint>,
    walk_parallel: usize,
}

/// How current what a read of the share gives must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// As the share is now: for an operation that acts on what it reads.
    Now,
    /// As recent as the share's attribute cache ([`Share::read_recent`]): for walks and
    /// listings, which read many files that rarely change.
    Recent,
}

/// VMs a walk (`vm list`, fsck) reads at once by default: each read is a few round
/// trips to the share and the pools, so a walk is bound by their latency.
pub const WALK_PARALLEL: usize = 8;

impl Datastore {
    /// Makes `share` a new datastore with `providers` (the first is the default). Every
    /// provider must open (its pool exists and is writable) before anything is written.
    pub fn create(
        share: Arc<dyn Share>,
        name: &str,
        providers: Vec<ProviderConfig>,
        host: &str,
    ) -> Result<Self, DatastoreError> {
        if providers.is_empty() {
            return Err(DatastoreError::Invalid(
                "a datastore needs at least one provider".into(),
            ));
        }
        if name.trim().is_empty() || name.chars().any(char::is_control) {
            return Err(DatastoreError::Invalid(format!(
                "invalid datastore name {name:?}"
            )));
        }
        for (i, p) in providers.iter().enumerate() {
            if providers[..i].iter().any(|q| q.id == p.id) {
                return Err(DatastoreError::Invalid(format!(
                    "provider id {} is given twice",
                    p.id
                )));
            }
        }
        match share.metadata(&layout::config_file()) {
            Ok(_) => return Err(DatastoreError::AlreadyADatastore(share.location())),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let opened = providers
            .iter()
            .map(|p| Ok((p.id.clone(), cvol_provider::open_provider(p)?)))
            .collect::<Result<BTreeMap<_, _>, DatastoreError>>()?;
        for dir in [
            layout::cvol_dir(),
            layout::intents_dir(),
            layout::hosts_dir(),
        ] {
            match share.create_dir(&dir) {
                Err(cvol_share::ShareError::AlreadyExists(_)) | Ok(()) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let config = DatastoreConfig::new(Uuid::new_v4(), name, providers);
        share.create_new(&layout::config_file(), config.to_string().as_bytes())?;
        Ok(Self {
            share,
            config,
            host: host.to_string(),
            providers: Mutex::new(opened),
            failpoint: None,
            walk_parallel: WALK_PARALLEL,
        })
    }

    /// Opens the datastore on `share`, as `host`.
    pub fn open(share: Arc<dyn Share>, host: &str) -> Result<Self, DatastoreError> {
        let file = layout::config_file();
        let bytes = share.read(&file).map_err(|e| match e {
            e if e.is_not_found() => DatastoreError::NotADatastore(share.location()),
            e => e.into(),
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| FormatError::new(file.as_str(), None, "not UTF-8 text"))?;
        let config = DatastoreConfig::parse(&text, file.as_str())?;
        Ok(Self {
            share,
            config,
            host: host.to_string(),
            providers: Mutex::new(BTreeMap::new()),
            failpoint: None,
            walk_parallel: WALK_PARALLEL,
        })
    }

    /// Reads up to `n` VMs at once in walks (at least one).
    pub fn with_walk_parallel(mut self, n: usize) -> Self {
        self.walk_parallel = n.max(1);
        self
    }

    /// Runs `read` for every one of `names` on up to the walk's number of threads;
    /// the results in the order of `names`.
    pub(crate) fn walk<T: Send>(
        &self,
        names: &[VmName],
        read: impl Fn(&VmName) -> Result<T, DatastoreError> + Sync,
    ) -> Vec<Result<T, DatastoreError>> {
        // Every walk lists each VM's folder first.
        let folders: Vec<SharePath> = names.iter().map(layout::vm_dir).collect();
        self.share().prefetch_listings(&folders);
        cvol_share::concurrent::map(names, self.walk_parallel, read)
    }

    /// Installs a fail point (see [`FailPoint`]).
    pub fn with_failpoint(mut self, failpoint: FailPoint) -> Self {
        self.failpoint = Some(failpoint);
        self
    }

    /// The datastore's configuration.
    pub fn config(&self) -> &DatastoreConfig {
        &self.config
    }

    /// The share.
    pub fn share(&self) -> &dyn Share {
        self.share.as_ref()
    }

    /// The share, to keep (the cluster's records live on it too).
    pub fn share_arc(&self) -> Arc<dyn Share> {
        self.share.clone()
    }

    /// The host this process acts as.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The provider `id`, opened on first use.
    pub fn provider(&self, id: &ProviderId) -> Result<Arc<dyn Provider>, DatastoreError> {
        let mut providers = self.providers.lock().expect("provider map lock");
        if let Some(p) = providers.get(id) {
            return Ok(p.clone());
        }
        let config = self
            .config
            .provider(id)
            .ok_or_else(|| self.unknown_provider(id.as_str()))?;
        let provider = cvol_provider::open_provider(config)?;
        providers.insert(id.clone(), provider.clone());
        Ok(provider)
    }

    /// Space for this datastore, as `df` should show it: the share's file system plus
    /// every pool on another one (a pool that cannot be asked is left out). Where the
    /// share's file system is not known (NFS), a pool of exactly the share's total size
    /// is taken to be on it.
    pub fn space(&self) -> Result<cvol_share::ShareStats, DatastoreError> {
        let mut stats = self.share.stats()?;
        let block = u64::from(stats.block_size.max(1));
        let mut counted = vec![(stats.fs_id, stats.blocks * block)];
        for config in &self.config.providers {
            let space = self.provider(&config.id).and_then(|p| Ok(p.space()?));
            match space {
                Ok(Some(s)) => {
                    let same = |&(fs_id, total): &(Option<u64>, u64)| match fs_id {
                        Some(id) => id == s.fs_id,
                        None => total.abs_diff(s.total) < block,
                    };
                    if !counted.iter().any(same) {
                        counted.push((Some(s.fs_id), s.total));
                        stats.blocks += s.total / block;
                        stats.blocks_free += s.free / block;
                        stats.blocks_available += s.available / block;
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::debug!("provider {}: no space figures: {e}", config.id),
            }
        }
        Ok(stats)
    }

    /// The provider `id`, or the default one.
    fn provider_or_default(
        &self,
        id: Option<&ProviderId>,
    ) -> Result<(ProviderId, Arc<dyn Provider>), DatastoreError> {
        let id = id.unwrap_or(&self.config.default_provider().id).clone();
        let provider = self.provider(&id)?;
        Ok((id, provider))
    }

    fn unknown_provider(&self, id: &str) -> DatastoreError {
        DatastoreError::UnknownProvider {
            id: id.to_string(),
            known: self
                .config
                .providers
                .iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Marks the end of step `step` of operation `op` (see [`FailPoint`]).
    fn step(&self, op: &str, step: &str) {
        if let Some(failpoint) = &self.failpoint {
            failpoint(&format!("{op}:{step}"));
        }
    }

    /// The owner tag cvol puts on the volumes of this datastore.
    fn owner(&self) -> String {
        self.config.uuid.to_string()
    }

    /// Reads and checks the descriptor at `path`: it must parse, belong to this cVol
    /// and name a provider this datastore has. Errors name the file, line and field.
    pub fn read_descriptor(
        &self,
        path: &SharePath,
    ) -> Result<(Descriptor, CvolDisk), DatastoreError> {
        self.read_descriptor_as(path, Freshness::Now)
    }

    /// Reads and checks the descriptor at `path` as [`Datastore::read_descriptor`] does,
    /// as recent as the share's attribute cache ([`Share::read_recent`]): for walks and
    /// listings, not for a change that must start from the current descriptor.
    pub fn read_descriptor_recent(
        &self,
        path: &SharePath,
    ) -> Result<(Descriptor, CvolDisk), DatastoreError> {
        self.read_descriptor_as(path, Freshness::Recent)
    }

    /// The content of file `path`, as current as `freshness` asks.
    pub(crate) fn read_file(
        &self,
        path: &SharePath,
        freshness: Freshness,
    ) -> Result<Vec<u8>, cvol_share::ShareError> {
        match freshness {
            Freshness::Now => self.share.read(path),
            Freshness::Recent => self.share.read_recent(path),
        }
    }

    /// The entries of directory `path`, as current as `freshness` asks.
    pub(crate) fn list_dir(
        &self,
        path: &SharePath,
        freshness: Freshness,
    ) -> Result<Vec<cvol_share::DirEntry>, cvol_share::ShareError> {
        match freshness {
            Freshness::Now => self.share.read_dir(path),
            Freshness::Recent => self.share.read_dir_recent(path),
        }
    }

    fn read_descriptor_as(
        &self,
        path: &SharePath,
        freshness: Freshness,
    ) -> Result<(Descriptor, CvolDisk), DatastoreError> {
        let bytes = self.read_file(path, freshness)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| FormatError::new(path.as_str(), None, "not UTF-8 text"))?;
        let descriptor = Descriptor::parse(&text, path.as_str())?;
        let disk = CvolDisk::from_descriptor(&descriptor, path.as_str())?;
        if disk.datastore != self.config.uuid {
            return Err(FormatError::new(
                path.as_str(),
                CvolDisk::line_of_field(&descriptor, DDB_DATASTORE),
                format!(
                    "{DDB_DATASTORE}: the disk belongs to cVol {}, not to this one ({})",
                    disk.datastore, self.config.uuid
                ),
            )
            .into());
        }
        if self.config.provider(&disk.provider).is_none() {
            return Err(FormatError::new(
                path.as_str(),
                CvolDisk::line_of_field(&descriptor, DDB_PROVIDER),
                format!(
                    "{DDB_PROVIDER}: {}",
                    self.unknown_provider(disk.provider.as_str())
                ),
            )
            .into());
        }
        Ok((descriptor, disk))
    }

    /// Runs the steps of operation `intent.op` under its intent record: on success the
    /// record goes; on failure a rollback is undone at once, and anything that cannot be
    /// finished now is left to `fsck --repair`.
    fn run_with_intent<T>(
        &self,
        intent: intent::Intent,
        steps: impl FnOnce() -> Result<T, StepError>,
    ) -> Result<T, DatastoreError> {
        let path = self.write_intent(&intent)?;
        self.step(&intent.op, "intent-written");
        let pending = intent::PendingIntent { path, intent };
        match steps() {
            Ok(value) => {
                self.share.remove_file(&pending.path)?;
                Ok(value)
            }
            Err(StepError::NothingDone(e)) => {
                self.share.remove_file(&pending.path)?;
                Err(e)
            }
            Err(StepError::Failed(e)) if pending.intent.recovery == intent::Recovery::Rollback => {
                if let Err(undo) = self.recover(&pending) {
                    tracing::error!(
                        "could not undo {} ({undo}); 'cvol datastore fsck --repair' will",
                        pending.intent.op
                    );
                }
                Err(e)
            }
            Err(StepError::Failed(e)) => {
                tracing::error!(
                    "{} stopped half-way; 'cvol datastore fsck --repair' finishes it",
                    pending.intent.op
                );
                Err(e)
            }
        }
    }
}

/// How a step of an operation run under an intent failed.
enum StepError {
    /// Before anything was changed: the intent record is simply dropped.
    NothingDone(DatastoreError),
    /// After changes: they are undone (rollback) or left to fsck (rollforward).
    Failed(DatastoreError),
}

impl<E: Into<DatastoreError>> From<E> for StepError {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

/// Parses `VM/DISK` into its names.
pub fn parse_disk_path(text: &str) -> Result<(VmName, DiskName), DatastoreError> {
    let (vm, disk) = text.split_once('/').ok_or_else(|| {
        DatastoreError::Invalid(format!("{text:?}: expected VM/DISK, e.g. demo/demo"))
    })?;
    Ok((
        VmName::new(vm)?,
        DiskName::new(disk.strip_suffix(".vmdk").unwrap_or(disk))?,
    ))
}
