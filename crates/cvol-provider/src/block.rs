//! The data plane's one trait.

use std::io;

/// A failed block operation.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The range does not lie within the device.
    #[error("range {offset}+{len} is beyond the end of the device ({size} bytes)")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// The device's size.
        size: u64,
    },
    /// The volume was attached to another host since this device was opened: the change
    /// was refused so that the new holder's data is never overwritten.
    #[error("this host's attachment (generation {generation}) was taken over by generation {current}: the volume is fenced")]
    Fenced {
        /// The generation this device holds.
        generation: u64,
        /// The volume's newest generation.
        current: u64,
    },
    /// This host holds the volume as a standby (the destination of a live migration):
    /// it may read, but writes wait until the standby is promoted to owner.
    #[error("this host holds the volume as a standby (live migration): it writes nothing until promoted")]
    Standby,
    /// The device failed.
    #[error("device I/O failed: {0}")]
    Io(#[from] io::Error),
}

/// A run of a device's bytes, as its allocation map sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockExtent {
    /// Bytes in the run.
    pub length: u64,
    /// True when the run is not allocated and reads as zeros.
    pub hole: bool,
}

/// What an [`AsyncIo`] hands back when it ends: its buffer, and how it went.
pub type IoDone = Box<dyn FnOnce(Vec<u8>, Result<(), BlockError>) + Send>;

/// A read or a write handed to [`BlockDevice::submit`]: a device with asynchronous I/O
/// of its own runs it with no thread waiting for it.
pub struct AsyncIo {
    /// A write's bytes are `buf[start..]`; a read fills `buf[start..]` (the bytes before
    /// it are the caller's, e.g. a reply header, so that the data lands where it is sent).
    pub buf: Vec<u8>,
    /// Where the data starts in `buf`.
    pub start: usize,
    /// Where on the device.
    pub offset: u64,
    /// A write, or a read.
    pub write: bool,
    /// Called once, with `buf` and the outcome, on a thread of the device's: it must not
    /// block.
    pub done: IoDone,
}

impl AsyncIo {
    /// Runs it with `device`'s blocking calls, on this thread.
    pub fn run_on<D: BlockDevice + ?Sized>(mut self, device: &D) {
        let data = &mut self.buf[self.start..];
        let result = if self.write {
            device.write_at(data, self.offset)
        } else {
            device.read_at(data, self.offset)
        };
        (self.done)(self.buf, result);
    }
}

/// An attached volume: a fixed-size array of bytes.
///
/// Writes may be cached until [`BlockDevice::flush`]; a write that returned before a
/// successful flush survives a crash of any cvol process.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError>;

    /// Writes `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BlockError>;

    /// Drops `len` bytes at `offset`; they read as zeros afterwards and may free space.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// Makes `len` bytes at `offset` read as zeros, keeping them allocated.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError>;

    /// The allocation map of `offset..offset+len` as consecutive runs covering it from
    /// `offset` (possibly beyond `len`; callers clip). A device that keeps no map
    /// reports everything as data.
    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.check_range(offset, len)?;
        Ok(vec![BlockExtent {
            length: len,
            hole: false,
        }])
    }

    /// Reads `buf.len()` bytes at `offset` if that needs no wait on a network: the device
    /// is local, or has those bytes at hand (cached). `None` when it would wait; the
    /// caller then calls [`BlockDevice::read_at`] where waiting is fine. Servers answer
    /// such reads where they arrive instead of handing them to another thread.
    fn read_now(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), BlockError>> {
        (!self.may_block()).then(|| self.read_at(buf, offset))
    }

    /// True when a call may wait on a network (an object store, a remote service), not
    /// only on local storage: servers then run calls on threads of their own, so that one
    /// slow call does not hold up the others; otherwise they may run them inline.
    fn may_block(&self) -> bool {
        true
    }

    /// Runs `io`, and calls its `done`. By default with [`BlockDevice::read_at`] or
    /// [`BlockDevice::write_at`], on this thread; see [`BlockDevice::submits_async`].
    fn submit(&self, io: AsyncIo) {
        io.run_on(self)
    }

    /// True when [`BlockDevice::submit`] starts the I/O and returns without waiting for
    /// it (the device has asynchronous I/O of its own): servers then submit where a
    /// request arrives, and many are in flight with no thread waiting on each.
    fn submits_async(&self) -> bool {
        false
    }

    /// The local file holding the device's bytes at their offsets, if there is one: the
    /// container then lets the kernel do I/O on it directly (FUSE passthrough).
    fn backing_file(&self) -> Option<&std::fs::File> {
        None
    }

    /// Checks that `offset..offset+len` lies within the device.
    fn check_range(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let size = self.size();
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(BlockError::OutOfRange { offset, len, size }),
        }
    }
}
