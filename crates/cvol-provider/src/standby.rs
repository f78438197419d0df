//! A standby attachment's device: the destination of a live migration may open and read a
//! volume while its owner keeps writing, and writes nothing until it is promoted.

use std::sync::Arc;

use crate::{BlockDevice, BlockError, BlockExtent};

/// Reads through to a device opened without taking the volume; refuses every change.
pub(crate) struct StandbyDevice {
    inner: Arc<dyn BlockDevice>,
}

impl StandbyDevice {
    /// `inner`, read-only.
    pub(crate) fn wrap(inner: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        Arc::new(Self { inner })
    }
}

impl BlockDevice for StandbyDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        self.inner.read_at(buf, offset)
    }

    fn read_now(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), BlockError>> {
        self.inner.read_now(buf, offset)
    }

    fn write_at(&self, _: &[u8], _: u64) -> Result<(), BlockError> {
        Err(BlockError::Standby)
    }

    /// Nothing was written, so nothing is owed: QEMU flushes inactive images too.
    fn flush(&self) -> Result<(), BlockError> {
        Ok(())
    }

    fn discard(&self, _: u64, _: u64) -> Result<(), BlockError> {
        Err(BlockError::Standby)
    }

    fn write_zeroes(&self, _: u64, _: u64) -> Result<(), BlockError> {
        Err(BlockError::Standby)
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.inner.extents(offset, len)
    }

    fn may_block(&self) -> bool {
        self.inner.may_block()
    }
}
