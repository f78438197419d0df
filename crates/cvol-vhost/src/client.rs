//! A vhost-user-blk driver in user space, on the `blkio` crate (pure-Rust libblkio): what
//! the tests and the benchmark drive a socket with, cvol's or qemu-storage-daemon's.

use std::path::Path;
use std::time::Duration;

use blkio::{Blkio, Blkioq, Completion, MemoryRegion, ReqFlags};

/// A failed request or connection, with libblkio's message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

impl From<blkio::Error> for ClientError {
    fn from(e: blkio::Error) -> Self {
        ClientError(format!("{} ({})", e.message(), e.errno()))
    }
}

/// A connected vhost-user-blk device with its queues and one shared buffer.
pub struct VhostClient {
    queues: Vec<Blkioq>,
    region: MemoryRegion,
    capacity: u64,
    // Last: the queues and region must go before the connection.
    blkio: Blkio,
}

impl VhostClient {
    /// Connects to `socket` with `queues` queues and a `buffer`-byte shared buffer
    /// (requests move at most that much).
    pub fn connect(socket: &Path, queues: usize, buffer: usize) -> Result<Self, ClientError> {
        Self::connect_with(socket, queues, buffer, false)
    }

    /// As [`VhostClient::connect`]; `read_only` accepts a device that offers only reads.
    pub fn connect_with(
        socket: &Path,
        queues: usize,
        buffer: usize,
        read_only: bool,
    ) -> Result<Self, ClientError> {
        let mut blkio = Blkio::new("virtio-blk-vhost-user")?;
        blkio.set_str("path", &socket.to_string_lossy())?;
        blkio.set_bool("read-only", read_only)?;
        blkio.connect()?;
        blkio.set_i32("num-queues", queues as i32)?;
        let started = blkio.start()?;
        let capacity = blkio.get_u64("capacity")?;
        let region = blkio.alloc_mem_region(buffer)?;
        blkio.map_mem_region(&region)?;
        Ok(Self {
            queues: started.queues,
            region,
            capacity,
            blkio,
        })
    }

    /// The device's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Queues connected.
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// A libblkio property, e.g. `read-only` or `max-segments`.
    pub fn property_bool(&self, name: &str) -> Result<bool, ClientError> {
        Ok(self.blkio.get_bool(name)?)
    }

    /// The shared buffer requests move data through.
    pub fn buffer(&mut self) -> &mut [u8] {
        // SAFETY: the region is mapped for as long as `self` lives, and no request is in
        // flight while the caller holds this borrow (every call below waits for its own).
        unsafe { std::slice::from_raw_parts_mut(self.region.addr as *mut u8, self.region.len) }
    }

    /// Address of byte `at` of the shared buffer, for requests of one's own.
    pub fn buffer_ptr(&self, at: usize) -> *mut u8 {
        assert!(at <= self.region.len);
        (self.region.addr + at) as *mut u8
    }

    /// Queue `q`, to submit requests on directly (the benchmark keeps many in flight).
    pub fn queue(&mut self, q: usize) -> &mut Blkioq {
        &mut self.queues[q]
    }

    /// Reads `len` bytes at `offset` on queue `q`.
    pub fn read(&mut self, q: usize, offset: u64, len: usize) -> Result<Vec<u8>, ClientError> {
        let buf = self.buffer_ptr(0);
        assert!(len <= self.region.len);
        self.one(q, |queue| {
            queue.read(offset, buf, len, 0, ReqFlags::empty())
        })?;
        Ok(self.buffer()[..len].to_vec())
    }

    /// Writes `data` at `offset` on queue `q`.
    pub fn write(&mut self, q: usize, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        self.buffer()[..data.len()].copy_from_slice(data);
        let buf = self.buffer_ptr(0);
        self.one(q, |queue| {
            queue.write(offset, buf, data.len(), 0, ReqFlags::empty())
        })
    }

    /// Flushes on queue `q`.
    pub fn flush(&mut self, q: usize) -> Result<(), ClientError> {
        self.one(q, |queue| queue.flush(0, ReqFlags::empty()))
    }

    /// Discards `len` bytes at `offset` on queue `q`.
    pub fn discard(&mut self, q: usize, offset: u64, len: u64) -> Result<(), ClientError> {
        self.one(q, |queue| queue.discard(offset, len, 0, ReqFlags::empty()))
    }

    /// Zeroes `len` bytes at `offset` on queue `q`, letting the device unmap them when
    /// `unmap`.
    pub fn write_zeroes(
        &mut self,
        q: usize,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> Result<(), ClientError> {
        let flags = if unmap {
            ReqFlags::empty()
        } else {
            ReqFlags::NO_UNMAP
        };
        self.one(q, |queue| queue.write_zeroes(offset, len, 0, flags))
    }

    /// Submits one request with `submit` and waits for it.
    fn one(&mut self, q: usize, submit: impl FnOnce(&mut Blkioq)) -> Result<(), ClientError> {
        let queue = &mut self.queues[q];
        submit(queue);
        let done = wait(queue, 1, Some(Duration::from_secs(30)))?;
        match done.first() {
            Some(c) if c.ret == 0 => Ok(()),
            Some(c) => Err(ClientError(format!("request failed: {}", c.ret))),
            None => Err(ClientError("no completion within 30 s".into())),
        }
    }
}

/// Submits what is queued on `queue` and waits for at least `min` completions (or until
/// `timeout`); returns those that arrived.
pub fn wait(
    queue: &mut Blkioq,
    min: usize,
    timeout: Option<Duration>,
) -> Result<Vec<Completion>, ClientError> {
    let mut slots: Vec<std::mem::MaybeUninit<Completion>> = (0..min.max(64))
        .map(|_| std::mem::MaybeUninit::uninit())
        .collect();
    let mut timeout = timeout;
    let n = queue.do_io(&mut slots, min, timeout.as_mut(), None)?;
    Ok(slots
        .into_iter()
        .take(n)
        // SAFETY: do_io initialised the first `n` slots.
        .map(|slot| unsafe { slot.assume_init() })
        .collect())
}
