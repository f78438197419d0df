//! What the server exports: named devices, opened per connection.

use std::sync::Arc;

use cvol_datastore::{parse_disk_path, AttachedVolumes, DatastoreError};
use cvol_provider::{BlockDevice, ProviderError};

/// Why an export cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// No export of that name.
    #[error("{0}")]
    Unknown(String),
    /// It exists but cannot be opened now (attached elsewhere, pool unreachable).
    #[error("{0}")]
    Refused(String),
}

/// An export opened by one connection; dropping it closes it.
pub struct OpenExport {
    /// The device behind it.
    pub device: Arc<dyn BlockDevice>,
    close: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl OpenExport {
    /// An export whose `close` runs when the connection lets it go.
    pub fn new(device: Arc<dyn BlockDevice>, close: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self {
            device,
            close: Some(Box::new(close)),
        }
    }
}

impl Drop for OpenExport {
    fn drop(&mut self) {
        if let Some(close) = self.close.take() {
            close();
        }
    }
}

/// The set of exports. Its calls may block: the server runs them off the async threads.
pub trait Exports: Send + Sync + 'static {
    /// Every export's name.
    fn names(&self) -> Result<Vec<String>, ExportError>;
    /// The size of export `name`, without opening it.
    fn size(&self, name: &str) -> Result<u64, ExportError>;
    /// Opens export `name`.
    fn open(&self, name: &str) -> Result<OpenExport, ExportError>;
}

/// One device, exported under one name: a volume served for a single job (an import or
/// export through `qemu-img`), or a test device.
pub struct DeviceExport {
    name: String,
    device: Arc<dyn BlockDevice>,
}

impl DeviceExport {
    /// `device`, exported as `name`.
    pub fn new(name: &str, device: Arc<dyn BlockDevice>) -> Self {
        Self {
            name: name.to_string(),
            device,
        }
    }
}

impl Exports for DeviceExport {
    fn names(&self) -> Result<Vec<String>, ExportError> {
        Ok(vec![self.name.clone()])
    }

    fn size(&self, name: &str) -> Result<u64, ExportError> {
        if name != self.name {
            return Err(ExportError::Unknown(format!("no export {name:?}")));
        }
        Ok(self.device.size())
    }

    fn open(&self, name: &str) -> Result<OpenExport, ExportError> {
        self.size(name)?;
        Ok(OpenExport::new(self.device.clone(), || {}))
    }
}

/// A datastore's disks, exported as `VM/DISK`, attached through the same
/// [`AttachedVolumes`] as the file system container: one attachment per host, however
/// the disk is reached.
pub struct DatastoreExports {
    volumes: Arc<AttachedVolumes>,
}

impl DatastoreExports {
    /// The disks of `volumes`' datastore.
    pub fn new(volumes: Arc<AttachedVolumes>) -> Self {
        Self { volumes }
    }

    fn disk(
        &self,
        name: &str,
    ) -> Result<(cvol_share::SharePath, cvol_format::CvolDisk), ExportError> {
        let unknown = |why: String| ExportError::Unknown(format!("no export {name:?}: {why}"));
        let (vm, disk) = parse_disk_path(name).map_err(|e| unknown(e.to_string()))?;
        let path = cvol_datastore::layout::descriptor_file(&vm, &disk);
        match self.volumes.datastore().read_descriptor(&path) {
            Ok((_, cvol)) => Ok((path, cvol)),
            Err(DatastoreError::Share(e)) if e.is_not_found() => {
                Err(unknown("no such disk".into()))
            }
            Err(e) => Err(ExportError::Refused(e.to_string())),
        }
    }
}

impl Exports for DatastoreExports {
    fn names(&self) -> Result<Vec<String>, ExportError> {
        let ds = self.volumes.datastore();
        let mut names = Vec::new();
        for vm in ds
            .vm_names()
            .map_err(|e| ExportError::Refused(e.to_string()))?
        {
            let disks = ds
                .disks(&vm)
                .map_err(|e| ExportError::Refused(e.to_string()))?;
            names.extend(
                disks
                    .into_iter()
                    .filter(|d| d.problem.is_none())
                    .map(|d| format!("{vm}/{}", d.name)),
            );
        }
        Ok(names)
    }

    fn size(&self, name: &str) -> Result<u64, ExportError> {
        Ok(self.disk(name)?.1.size)
    }

    fn open(&self, name: &str) -> Result<OpenExport, ExportError> {
        let (path, cvol) = self.disk(name)?;
        let device = self
            .volumes
            .open(&cvol.provider, &cvol.object, Some(&path))
            .map_err(|e| match e {
                DatastoreError::Provider(ProviderError::AttachedElsewhere { holder, .. }) => {
                    ExportError::Refused(format!("{name} is attached to host {holder:?}"))
                }
                e => ExportError::Refused(e.to_string()),
            })?;
        let volumes = self.volumes.clone();
        Ok(OpenExport::new(device, move || {
            if let Err(e) = volumes.close(&cvol.object) {
                tracing::error!("{path}: closing volume {}: {e}", cvol.object);
            }
        }))
    }
}
