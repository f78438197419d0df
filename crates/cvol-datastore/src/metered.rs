//! Per-volume I/O metrics: every attached device is handed out wrapped, so the
//! container, NBD and vhost-user are all counted alike. Writes the kernel does itself
//! through FUSE passthrough never reach the daemon and are not counted.

use std::sync::Arc;
use std::time::Instant;

use cvol_format::VolumeId;
use cvol_provider::{AsyncIo, BlockDevice, BlockError, BlockExtent};
use metrics::{Counter, Histogram};

/// The handles of one volume's metrics, registered once at attach: recording on the
/// I/O path is then an atomic add, not a registry lookup.
struct VolumeMetrics {
    read_bytes: Counter,
    written_bytes: Counter,
    read_seconds: Histogram,
    write_seconds: Histogram,
    flush_seconds: Histogram,
    discarded_bytes: Counter,
    zeroed_bytes: Counter,
    fenced: Counter,
    failed: Counter,
}

impl VolumeMetrics {
    fn new(volume: &VolumeId) -> Self {
        let v = volume.to_string();
        Self {
            read_bytes: metrics::counter!("cvol_volume_read_bytes_total", "volume" => v.clone()),
            written_bytes: metrics::counter!("cvol_volume_written_bytes_total", "volume" => v.clone()),
            read_seconds: metrics::histogram!("cvol_volume_read_seconds", "volume" => v.clone()),
            write_seconds: metrics::histogram!("cvol_volume_write_seconds", "volume" => v.clone()),
            flush_seconds: metrics::histogram!("cvol_volume_flush_seconds", "volume" => v.clone()),
            discarded_bytes: metrics::counter!("cvol_volume_discarded_bytes_total", "volume" => v.clone()),
            zeroed_bytes: metrics::counter!("cvol_volume_zeroed_bytes_total", "volume" => v.clone()),
            fenced: metrics::counter!("cvol_volume_errors_total", "volume" => v.clone(), "kind" => "fenced"),
            failed: metrics::counter!("cvol_volume_errors_total", "volume" => v, "kind" => "other"),
        }
    }

    /// Counts a failed call by kind; a request beyond the device's end is the caller's
    /// error, not the volume's.
    fn outcome<T>(&self, result: Result<T, BlockError>) -> Result<T, BlockError> {
        match &result {
            Err(BlockError::Fenced { .. }) => self.fenced.increment(1),
            Err(BlockError::OutOfRange { .. }) | Ok(_) => {}
            Err(_) => self.failed.increment(1),
        }
        result
    }
}

/// A device whose calls are counted and timed.
pub(crate) struct MeteredDevice {
    inner: Arc<dyn BlockDevice>,
    metrics: Arc<VolumeMetrics>,
}

impl MeteredDevice {
    /// Wraps `inner`, the device of `volume`.
    pub(crate) fn wrap(volume: &VolumeId, inner: Arc<dyn BlockDevice>) -> Arc<dyn BlockDevice> {
        Arc::new(Self {
            inner,
            metrics: Arc::new(VolumeMetrics::new(volume)),
        })
    }
}

impl VolumeMetrics {
    /// Counts a read (or, with `write`, a write) of `len` bytes started at `started`.
    fn transfer_done(
        &self,
        write: bool,
        started: Instant,
        result: Result<(), BlockError>,
        len: usize,
    ) -> Result<(), BlockError> {
        let result = self.outcome(result);
        if result.is_ok() {
            let (seconds, bytes) = match write {
                true => (&self.write_seconds, &self.written_bytes),
                false => (&self.read_seconds, &self.read_bytes),
            };
            seconds.record(started.elapsed());
            bytes.increment(len as u64);
        }
        result
    }
}

impl BlockDevice for MeteredDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
        let started = Instant::now();
        let result = self.inner.read_at(buf, offset);
        self.metrics
            .transfer_done(false, started, result, buf.len())
    }

    fn read_now(&self, buf: &mut [u8], offset: u64) -> Option<Result<(), BlockError>> {
        let started = Instant::now();
        let result = self.inner.read_now(buf, offset)?;
        Some(
            self.metrics
                .transfer_done(false, started, result, buf.len()),
        )
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
        let started = Instant::now();
        let result = self.inner.write_at(buf, offset);
        self.metrics.transfer_done(true, started, result, buf.len())
    }

    fn submit(&self, mut io: AsyncIo) {
        let (started, metrics) = (Instant::now(), self.metrics.clone());
        let (write, len, done) = (io.write, io.buf.len() - io.start, io.done);
        io.done = Box::new(move |buf, result| {
            done(buf, metrics.transfer_done(write, started, result, len))
        });
        self.inner.submit(io)
    }

    fn submits_async(&self) -> bool {
        self.inner.submits_async()
    }

    fn flush(&self) -> Result<(), BlockError> {
        let started = Instant::now();
        let result = self.metrics.outcome(self.inner.flush());
        if result.is_ok() {
            self.metrics.flush_seconds.record(started.elapsed());
        }
        result
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let result = self.metrics.outcome(self.inner.discard(offset, len));
        if result.is_ok() {
            self.metrics.discarded_bytes.increment(len);
        }
        result
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        let result = self.metrics.outcome(self.inner.write_zeroes(offset, len));
        if result.is_ok() {
            self.metrics.zeroed_bytes.increment(len);
        }
        result
    }

    fn extents(&self, offset: u64, len: u64) -> Result<Vec<BlockExtent>, BlockError> {
        self.inner.extents(offset, len)
    }

    fn may_block(&self) -> bool {
        self.inner.may_block()
    }

    fn backing_file(&self) -> Option<&std::fs::File> {
        self.inner.backing_file()
    }
}
