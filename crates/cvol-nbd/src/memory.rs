//! An export held in memory, for fuzzing the server and testing it without a datastore.

use std::sync::{Arc, Mutex};

use cvol_provider::{BlockDevice, BlockError};

/// A device whose bytes are a vector.
pub struct MemoryDevice(Mutex<Vec<u8>>);

impl MemoryDevice {
    /// `size` zero bytes.
    pub fn new(size: usize) -> Self {
        Self(Mutex::new(vec![0; size]))
    }
}

impl BlockDevice for MemoryDevice {
    fn size(&self) -> u64 {
        self.0.lock().expect("memory lock").len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        let data = self.0.lock().expect("memory lock");
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        self.check_range(offset, buf.len() as u64)?;
        self.0.lock().expect("memory lock")[offset as usize..offset as usize + buf.len()]
            .copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    fn may_block(&self) -> bool {
        false
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.check_range(offset, len)?;
        self.0.lock().expect("memory lock")[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}

/// Serves one whole connection whose client sends `input` and then hangs up, against a
/// 1 MiB in-memory export `mem`: what the garbage-input tests and the fuzz target run.
/// Fails when the server has not finished within `limit`.
pub async fn serve_bytes(input: &[u8], limit: std::time::Duration) -> Result<(), &'static str> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exports = Arc::new(crate::DeviceExport::new(
        "mem",
        Arc::new(MemoryDevice::new(1 << 20)),
    ));
    let server = crate::NbdServer::new(exports, crate::Settings::default());
    let (mut client, conn) = tokio::io::duplex(1 << 16);
    let serving = tokio::spawn(async move { server.serve_connection(conn, "memory").await });
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(limit, client.read_to_end(&mut sink)).await;
    match tokio::time::timeout(limit, serving).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("the connection task panicked"),
        Err(_) => Err("the server did not finish"),
    }
}
