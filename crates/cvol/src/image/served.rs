//! A volume served over NBD on a private unix socket for the length of one job, so that
//! `qemu-img` writes or reads it directly, whatever the pool.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cvol_provider::BlockDevice;

/// One device on a socket in a private directory; stops when dropped.
pub struct ServedDevice {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

/// The export's name.
const EXPORT: &str = "disk";

impl ServedDevice {
    /// Serves `device`.
    pub fn start(device: Arc<dyn BlockDevice>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("cvol-image.")
            .tempdir()
            .context("cannot make a directory for the NBD socket")?;
        let socket = dir.path().join("nbd.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cvol-image-nbd")
            .enable_all()
            .build()?;
        let server = cvol_nbd::NbdServer::new(
            Arc::new(cvol_nbd::DeviceExport::new(EXPORT, device)),
            cvol_nbd::Settings {
                log_failures: false,
                ..cvol_nbd::Settings::default()
            },
        );
        runtime
            .block_on(server.bind(&cvol_nbd::Listen::Unix(socket.clone())))
            .with_context(|| format!("cannot listen for NBD on {}", socket.display()))?;
        Ok(Self {
            _dir: dir,
            socket,
            runtime: Some(runtime),
        })
    }

    /// The export's URL, for `qemu-img`.
    pub fn url(&self) -> String {
        format!("nbd+unix:///{EXPORT}?socket={}", self.socket.display())
    }
}

impl Drop for ServedDevice {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
