//! One connected disk: the vhost-user backend that takes requests off its virtqueues
//! and runs them against the disk's [`BlockDevice`].
//!
//! Each queue has its own thread (vhost-user-backend's epoll loop). On a device whose
//! calls may block on a network (an object pool fetching chunks) that thread only pops
//! descriptor chains and hands them to a pool of I/O threads, so many requests are in
//! flight at once, and completions go back onto the used ring in whatever order they
//! finish. On local storage (a file pool) it runs small requests itself: handing a 4 KiB
//! read to another thread and back costs more than the read (BENCHMARKS.md); large ones
//! and flushes still go to the I/O threads, where several run at once.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use cvol_provider::BlockDevice;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::QueueOwnedT;
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard,
    GuestMemoryMmap,
};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::config::{self, CONFIG_LEN, WRITEBACK_OFFSET};
use crate::request::{self, Command, Limits, Range, Refused, Shape, Status, HEADER_LEN, ID_LEN};

type Memory = GuestMemoryMmap<()>;
type MemoryGuard = GuestMemoryLoadGuard<Memory>;

/// How a disk is served over vhost-user.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Queues offered; the driver may use fewer.
    pub queues: u16,
    /// Descriptors per queue, at most.
    pub queue_size: u16,
    /// Threads running device calls, per connected disk.
    pub io_threads: usize,
    /// Refuse writes (offered to the driver as VIRTIO_BLK_F_RO).
    pub read_only: bool,
}

/// Queues offered unless told otherwise.
pub const DEFAULT_QUEUES: u16 = 4;
/// I/O threads per connected disk unless told otherwise.
pub const DEFAULT_IO_THREADS: u16 = 8;

impl Default for Settings {
    fn default() -> Self {
        Self {
            queues: DEFAULT_QUEUES,
            queue_size: 256,
            io_threads: usize::from(DEFAULT_IO_THREADS),
            read_only: false,
        }
    }
}

/// Requests moving up to this many bytes on local storage run on their queue's thread.
const INLINE_MAX: u64 = 64 << 10;
/// Bytes moved between guest memory and the device per device call: bounds a worker's
/// buffer whatever size a request claims.
const MAX_PIECE: u64 = 1 << 20;
/// Sectors per discard or write-zeroes segment offered (1 GiB).
const MAX_SEGMENT_SECTORS: u32 = 1 << 21;
/// Discard or write-zeroes segments per request offered.
const MAX_SEGMENTS: u32 = 16;

/// One range of guest memory a request's data lives in.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: u64,
    len: u64,
}

/// A request popped off a queue, waiting for an I/O thread.
struct Job {
    queue: usize,
    vring: VringRwLock,
    mem: MemoryGuard,
    head: u16,
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    out_of_order: bool,
}

impl Job {
    fn new(
        queue: usize,
        vring: &VringRwLock,
        mem: MemoryGuard,
        head: u16,
        descriptors: impl IntoIterator<Item = Descriptor>,
    ) -> Self {
        let mut job = Job {
            queue,
            vring: vring.clone(),
            mem,
            head,
            readable: Vec::new(),
            writable: Vec::new(),
            out_of_order: false,
        };
        for desc in descriptors {
            let segment = Segment {
                addr: desc.addr().0,
                len: u64::from(desc.len()),
            };
            if desc.is_write_only() {
                job.writable.push(segment);
            } else {
                job.out_of_order |= !job.writable.is_empty();
                job.readable.push(segment);
            }
        }
        job
    }

    /// True for a FLUSH, which may take long: it never runs on the queue's thread.
    fn is_flush(&self) -> bool {
        self.readable.first().is_some_and(|s| {
            s.len >= 4
                && self.mem.read_obj::<u32>(GuestAddress(s.addr)).ok() == Some(VIRTIO_BLK_T_FLUSH)
        })
    }

    fn shape(&self) -> Shape {
        Shape {
            readable: total(&self.readable),
            writable: total(&self.writable),
            data_descriptors: (self.readable.len() + self.writable.len()).saturating_sub(2),
            out_of_order: self.out_of_order,
        }
    }
}

fn total(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| s.len).sum()
}

/// Copies between guest memory at `segments`, starting `skip` bytes into them, and
/// `buf`: into `buf` when `into_buf`, out of it otherwise.
fn copy(
    mem: &Memory,
    segments: &[Segment],
    mut skip: u64,
    buf: &mut [u8],
    into_buf: bool,
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0usize;
    for s in segments {
        if done == buf.len() {
            break;
        }
        if skip >= s.len {
            skip -= s.len;
            continue;
        }
        let n = ((s.len - skip) as usize).min(buf.len() - done);
        let addr = GuestAddress(s.addr + skip);
        if into_buf {
            mem.read_slice(&mut buf[done..done + n], addr)?;
        } else {
            mem.write_slice(&buf[done..done + n], addr)?;
        }
        done += n;
        skip = 0;
    }
    if done < buf.len() {
        return Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: buf.len(),
            completed: done,
        });
    }
    Ok(())
}

/// Requests accepted on one queue and not yet answered.
#[derive(Default)]
struct InFlight {
    count: Mutex<usize>,
    idle: Condvar,
}

impl InFlight {
    fn add(&self) {
        *self.count.lock().expect("in-flight count") += 1;
    }

    fn done(&self) {
        let mut count = self.count.lock().expect("in-flight count");
        *count -= 1;
        if *count == 0 {
            self.idle.notify_all();
        }
    }

    fn wait_idle(&self) {
        let mut count = self.count.lock().expect("in-flight count");
        while *count > 0 {
            count = self.idle.wait(count).expect("in-flight count");
        }
    }
}

/// What the I/O threads share with the queue threads.
struct Shared {
    device: Arc<dyn BlockDevice>,
    name: String,
    serial: [u8; ID_LEN],
    limits: Limits,
    writeback: AtomicBool,
    in_flight: Vec<InFlight>,
}

/// The vhost-user-blk backend of one connected disk.
pub struct BlkBackend {
    shared: Arc<Shared>,
    settings: Settings,
    event_idx: AtomicBool,
    mem: RwLock<Option<GuestMemoryAtomic<Memory>>>,
    /// Where requests go to run on the I/O threads; `None` once closed.
    jobs: Mutex<Option<crossbeam_channel::Sender<Job>>>,
    /// The device answers from local storage: small requests run on the queue thread.
    local: bool,
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// Each queue thread's buffer, for requests it runs itself.
    buffers: Vec<Mutex<Vec<u8>>>,
}

impl BlkBackend {
    /// A backend serving `device` (named `name` in logs, `serial` for GET_ID) and
    /// starting its I/O threads.
    pub fn new(
        name: &str,
        serial: &str,
        device: Arc<dyn BlockDevice>,
        settings: &Settings,
    ) -> io::Result<Arc<Self>> {
        let mut id = [0u8; ID_LEN];
        let n = serial.len().min(ID_LEN);
        id[..n].copy_from_slice(&serial.as_bytes()[..n]);
        let shared = Arc::new(Shared {
            limits: Limits {
                size: device.size(),
                read_only: settings.read_only,
                max_data_descriptors: usize::from(settings.queue_size).saturating_sub(2).max(1),
                max_segments: MAX_SEGMENTS,
                max_segment_sectors: MAX_SEGMENT_SECTORS,
            },
            device,
            name: name.to_string(),
            serial: id,
            writeback: AtomicBool::new(true),
            in_flight: (0..settings.queues).map(|_| InFlight::default()).collect(),
        });
        let device_may_block = shared.device.may_block();
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let workers = (0..settings.io_threads.max(1))
            .map(|i| {
                let rx = rx.clone();
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cvol-vhost-io-{i}"))
                    .spawn(move || {
                        let mut buf = Vec::new();
                        for job in rx {
                            shared.complete(job, &mut buf);
                        }
                    })
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            shared,
            settings: settings.clone(),
            event_idx: AtomicBool::new(false),
            mem: RwLock::new(None),
            jobs: Mutex::new(Some(tx)),
            workers: Mutex::new(workers),
            buffers: (0..settings.queues).map(|_| Mutex::default()).collect(),
            local: !device_may_block,
        }))
    }

    /// Waits for every accepted request to be answered, then stops the I/O threads.
    pub fn close(&self) {
        drop(self.jobs.lock().expect("jobs").take());
        for worker in self.workers.lock().expect("workers").drain(..) {
            let _ = worker.join();
        }
    }

    /// Pops every available chain off `vring` and queues it for the I/O threads.
    fn pop_all(&self, vring: &VringRwLock, queue: usize) -> io::Result<()> {
        let mem = self
            .mem
            .read()
            .expect("memory")
            .as_ref()
            .ok_or_else(|| io::Error::other("no guest memory yet"))?
            .memory();
        let chains: Vec<_> = vring
            .get_mut()
            .get_queue_mut()
            .iter(mem.clone())
            .map_err(|e| io::Error::other(format!("virtqueue {queue}: {e}")))?
            .collect();
        let Some(jobs) = self.jobs.lock().expect("jobs").clone() else {
            return Err(io::Error::other("the disk is closing"));
        };
        for chain in chains {
            self.shared.in_flight[queue].add();
            let job = Job::new(queue, vring, mem.clone(), chain.head_index(), chain);
            let shape = job.shape();
            if self.local && shape.readable + shape.writable <= INLINE_MAX && !job.is_flush() {
                let mut buf = self.buffers[queue].lock().expect("buffer");
                self.shared.complete(job, &mut buf);
            } else {
                jobs.send(job)
                    .map_err(|_| io::Error::other("the I/O threads are gone"))?;
            }
        }
        Ok(())
    }
}

impl Shared {
    /// Runs `job` and puts its answer on the used ring.
    fn complete(&self, job: Job, buf: &mut Vec<u8>) {
        let used = self.answer(&job, buf);
        if let Err(e) = job.vring.add_used(job.head, used) {
            tracing::warn!(
                "{}: queue {}: cannot return a request: {e}",
                self.name,
                job.queue
            );
        } else if job.vring.needs_notification().unwrap_or(true) {
            if let Err(e) = job.vring.signal_used_queue() {
                tracing::warn!(
                    "{}: queue {}: cannot notify the driver: {e}",
                    self.name,
                    job.queue
                );
            }
        }
        self.in_flight[job.queue].done();
    }

    /// Runs `job`, writes its status byte, and returns the bytes written to the driver.
    fn answer(&self, job: &Job, buf: &mut Vec<u8>) -> u32 {
        let shape = job.shape();
        let mut header = [0u8; HEADER_LEN as usize];
        let header_len = (shape.readable.min(HEADER_LEN)) as usize;
        let outcome = copy(&job.mem, &job.readable, 0, &mut header[..header_len], true)
            .map_err(|_| Refused::Status {
                status: Status::IoErr,
                reason: "request header outside guest memory",
            })
            .and_then(|()| request::parse(&header[..header_len], shape, &self.limits))
            .and_then(|command| self.perform(command, job, buf));
        let (status, written) = match outcome {
            Ok(written) => (Status::Ok, written),
            Err(Refused::Unanswerable) => {
                tracing::warn!(
                    "{}: queue {}: {}",
                    self.name,
                    job.queue,
                    Refused::Unanswerable
                );
                return 0;
            }
            Err(Refused::Status { status, reason }) => {
                tracing::debug!("{}: queue {}: {reason}", self.name, job.queue);
                (status, 0)
            }
        };
        let at = shape.writable - 1;
        if copy(&job.mem, &job.writable, at, &mut [status.byte()], false).is_err() {
            return 0;
        }
        u32::try_from(written + 1).unwrap_or(u32::MAX)
    }

    /// Does `command`; returns the data bytes written to the driver.
    fn perform(&self, command: Command, job: &Job, buf: &mut Vec<u8>) -> Result<u64, Refused> {
        let device = &*self.device;
        match command {
            Command::Read { offset, len } => {
                self.pieces(len, buf, |done, piece| {
                    device
                        .read_at(piece, offset + done)
                        .map_err(|e| self.failed("read", e))?;
                    copy(&job.mem, &job.writable, done, piece, false).map_err(|_| memory_err())
                })?;
                Ok(len)
            }
            Command::Write { offset, len } => {
                self.pieces(len, buf, |done, piece| {
                    copy(&job.mem, &job.readable, HEADER_LEN + done, piece, true)
                        .map_err(|_| memory_err())?;
                    device
                        .write_at(piece, offset + done)
                        .map_err(|e| self.failed("write", e))
                })?;
                if !self.writeback.load(Ordering::Relaxed) {
                    device.flush().map_err(|e| self.failed("flush", e))?;
                }
                Ok(0)
            }
            Command::Flush => {
                device.flush().map_err(|e| self.failed("flush", e))?;
                Ok(0)
            }
            Command::GetId { len } => {
                let n = (len as usize).min(ID_LEN);
                copy(&job.mem, &job.writable, 0, &mut { self.serial }[..n], false)
                    .map_err(|_| memory_err())?;
                Ok(n as u64)
            }
            Command::Discard { count } | Command::WriteZeroes { count } => {
                let write_zeroes = matches!(command, Command::WriteZeroes { .. });
                let mut bytes = vec![0u8; count as usize * request::SEGMENT_LEN as usize];
                copy(&job.mem, &job.readable, HEADER_LEN, &mut bytes, true)
                    .map_err(|_| memory_err())?;
                for Range { offset, len, unmap } in
                    request::parse_segments(&bytes, write_zeroes, &self.limits)?
                {
                    let done = if write_zeroes && !unmap {
                        device.write_zeroes(offset, len)
                    } else {
                        // Discarded bytes read as zeros (BlockDevice's promise), which is
                        // what write-zeroes with UNMAP asks.
                        device.discard(offset, len)
                    };
                    done.map_err(|e| self.failed("discard or write-zeroes", e))?;
                }
                Ok(0)
            }
        }
    }

    /// Calls `step(done, piece)` over `len` bytes in pieces of at most [`MAX_PIECE`].
    fn pieces(
        &self,
        len: u64,
        buf: &mut Vec<u8>,
        mut step: impl FnMut(u64, &mut [u8]) -> Result<(), Refused>,
    ) -> Result<(), Refused> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_PIECE) as usize;
            buf.resize(n, 0);
            step(done, &mut buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }

    fn failed(&self, what: &str, e: cvol_provider::BlockError) -> Refused {
        tracing::warn!("{}: {what} failed: {e}", self.name);
        Refused::Status {
            status: Status::IoErr,
            reason: "device error",
        }
    }
}

fn memory_err() -> Refused {
    Refused::Status {
        status: Status::IoErr,
        reason: "request data outside guest memory",
    }
}

impl VhostUserBackend for BlkBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        usize::from(self.settings.queues)
    }

    fn max_queue_size(&self) -> usize {
        usize::from(self.settings.queue_size)
    }

    fn features(&self) -> u64 {
        config::features(self.settings.read_only)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        config::protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = config::config_space(
            &self.shared.limits,
            self.settings.queues,
            self.shared.writeback.load(Ordering::Relaxed),
        );
        let start = (offset as usize).min(CONFIG_LEN);
        let end = start.saturating_add(size as usize).min(CONFIG_LEN);
        let mut bytes = space[start..end].to_vec();
        bytes.resize(size as usize, 0);
        bytes
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        if offset as usize != WRITEBACK_OFFSET || buf.len() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "only the writeback byte of the config space is writable",
            ));
        }
        self.shared.writeback.store(buf[0] != 0, Ordering::Relaxed);
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<Memory>) -> io::Result<()> {
        *self.mem.write().expect("memory") = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.settings.queues).map(|q| 1u64 << q).collect()
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // QEMU reads the ring's position right after: every request popped must be on the
        // used ring by then, or the guest would wait for it forever.
        if let Some(in_flight) = self.shared.in_flight.get(queue_index as usize) {
            in_flight.wait_idle();
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(io::Error::other(format!("unexpected event set {evset:?}")));
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or_else(|| io::Error::other(format!("no queue for event {device_event}")))?;
        let event_idx = self.event_idx.load(Ordering::Relaxed);
        loop {
            if event_idx {
                vring.disable_notification().map_err(io::Error::other)?;
            }
            self.pop_all(vring, thread_id)?;
            if !event_idx || !vring.enable_notification().map_err(io::Error::other)? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cvol_provider::BlockError;
    use virtio_bindings::virtio_blk::*;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    use super::*;

    const DISK: usize = 1 << 20;
    const RAM: u64 = 1 << 20;
    const HEADER: u64 = 0x1000;
    const DATA: u64 = 0x2000;
    const STATUS: u64 = 0x8000;

    /// A disk of `DISK` bytes, `i` at byte `i` mod 251, that can be made to fail writes.
    struct TestDisk {
        bytes: Mutex<Vec<u8>>,
        fenced: AtomicBool,
        may_block: bool,
    }

    impl BlockDevice for TestDisk {
        fn size(&self) -> u64 {
            DISK as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BlockError> {
            self.check_range(offset, buf.len() as u64)?;
            let b = self.bytes.lock().unwrap();
            buf.copy_from_slice(&b[offset as usize..offset as usize + buf.len()]);
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), BlockError> {
            if self.fenced.load(Ordering::SeqCst) {
                return Err(BlockError::Fenced {
                    generation: 1,
                    current: 2,
                });
            }
            self.check_range(offset, buf.len() as u64)?;
            self.bytes.lock().unwrap()[offset as usize..offset as usize + buf.len()]
                .copy_from_slice(buf);
            Ok(())
        }
        fn flush(&self) -> Result<(), BlockError> {
            Ok(())
        }
        fn may_block(&self) -> bool {
            self.may_block
        }
        fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.write_zeroes(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BlockError> {
            self.write_at(&vec![0; len as usize], offset)
        }
    }

    struct Rig {
        disk: Arc<TestDisk>,
        shared: Arc<Shared>,
        mem: GuestMemoryAtomic<Memory>,
        vring: VringRwLock,
    }

    fn rig(read_only: bool) -> Rig {
        let disk = Arc::new(TestDisk {
            bytes: Mutex::new((0..DISK).map(|i| (i % 251) as u8).collect()),
            fenced: AtomicBool::new(false),
            may_block: true,
        });
        let settings = Settings {
            queues: 1,
            queue_size: 8,
            io_threads: 1,
            read_only,
        };
        let backend = BlkBackend::new("vm/disk", "vm/disk", disk.clone(), &settings).unwrap();
        let shared = backend.shared.clone();
        backend.close();
        let mem = GuestMemoryAtomic::new(
            Memory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
        );
        let vring = VringRwLock::new(mem.clone(), 8).unwrap();
        Rig {
            disk,
            shared,
            mem,
            vring,
        }
    }

    /// A descriptor the device reads.
    fn rd(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, 0, 0)
    }

    /// A descriptor the device writes.
    fn wr(addr: u64, len: u32) -> Descriptor {
        Descriptor::new(addr, len, VRING_DESC_F_WRITE as u16, 0)
    }

    /// The request header.
    fn hdr() -> Descriptor {
        rd(HEADER, 16)
    }

    /// The status byte.
    fn st() -> Descriptor {
        wr(STATUS, 1)
    }

    impl Rig {
        fn header(&self, kind: u32, sector: u64) {
            let m = self.mem.memory();
            m.write_obj(kind, GuestAddress(HEADER)).unwrap();
            m.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
            m.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
            m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        }

        /// Runs a request of `descriptors`; returns (used length, status byte).
        fn run(&self, descriptors: Vec<Descriptor>) -> (u32, u8) {
            self.shared.in_flight[0].add();
            let job = Job::new(0, &self.vring, self.mem.memory(), 0, descriptors);
            let used = self.shared.answer(&job, &mut Vec::new());
            self.shared.in_flight[0].done();
            let status: u8 = self.mem.memory().read_obj(GuestAddress(STATUS)).unwrap();
            (used, status)
        }

        fn bytes(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut buf = vec![0; len];
            self.mem
                .memory()
                .read_slice(&mut buf, GuestAddress(addr))
                .unwrap();
            buf
        }
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    #[test]
    fn a_read_split_over_descriptors_lands_in_each() {
        let r = rig(false);
        r.header(VIRTIO_BLK_T_IN, 3);
        let (used, status) = r.run(vec![hdr(), wr(DATA, 512), wr(DATA + 0x1000, 1024), st()]);
        assert_eq!((used, status), (1537, OK));
        let want: Vec<u8> = (1536..3072).map(|i| (i % 251) as u8).collect();
        assert_eq!(r.bytes(DATA, 512), want[..512]);
        assert_eq!(r.bytes(DATA + 0x1000, 1024), want[512..]);
    }

    #[test]
    fn a_header_split_over_descriptors_and_data_sharing_one_are_read_whole() {
        let r = rig(false);
        r.header(VIRTIO_BLK_T_OUT, 1);
        let data = vec![0x5au8; 512];
        r.mem
            .memory()
            .write_slice(&data, GuestAddress(HEADER + 16))
            .unwrap();
        let (used, status) = r.run(vec![rd(HEADER, 10), rd(HEADER + 10, 6 + 512), st()]);
        assert_eq!((used, status), (1, OK));
        assert_eq!(r.disk.bytes.lock().unwrap()[512..1024], data[..]);
    }

    #[test]
    fn malformed_chains_get_ioerr_and_change_nothing() {
        let r = rig(false);
        let before = r.disk.bytes.lock().unwrap().clone();
        let cases: Vec<(&str, u32, u64, Vec<Descriptor>)> = vec![
            (
                "header too short",
                VIRTIO_BLK_T_IN,
                0,
                vec![rd(HEADER, 8), st()],
            ),
            (
                "write with writable data",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), wr(DATA, 512), st()],
            ),
            (
                "read with readable data",
                VIRTIO_BLK_T_IN,
                0,
                vec![hdr(), rd(DATA, 512), st()],
            ),
            (
                "readable after writable",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), wr(DATA, 512), rd(DATA, 512), st()],
            ),
            (
                "past the end",
                VIRTIO_BLK_T_OUT,
                (DISK as u64) / 512,
                vec![hdr(), rd(DATA, 512), st()],
            ),
            (
                "sector overflows",
                VIRTIO_BLK_T_OUT,
                u64::MAX,
                vec![hdr(), rd(DATA, 512), st()],
            ),
            (
                "partial sector",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), rd(DATA, 100), st()],
            ),
            (
                "header outside guest memory",
                VIRTIO_BLK_T_IN,
                0,
                vec![rd(RAM + 0x1000, 16), st()],
            ),
            (
                "data outside guest memory",
                VIRTIO_BLK_T_OUT,
                0,
                vec![hdr(), rd(RAM - 256, 512), st()],
            ),
            (
                "more data descriptors than seg_max",
                VIRTIO_BLK_T_OUT,
                0,
                (0..8)
                    .map(|i| {
                        rd(
                            if i == 0 { HEADER } else { DATA },
                            if i == 0 { 16 } else { 512 },
                        )
                    })
                    .chain([st()])
                    .collect(),
            ),
            (
                "discard past the end",
                VIRTIO_BLK_T_DISCARD,
                0,
                vec![hdr(), rd(DATA, 16), st()],
            ),
            (
                "discard with 17 segments",
                VIRTIO_BLK_T_DISCARD,
                0,
                vec![hdr(), rd(DATA, 16 * 17), st()],
            ),
        ];
        // One discard segment past the end of the disk at DATA.
        let m = r.mem.memory();
        m.write_obj((DISK as u64) / 512, GuestAddress(DATA))
            .unwrap();
        m.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
        m.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        for (what, kind, sector, descriptors) in cases {
            r.header(kind, sector);
            let (used, status) = r.run(descriptors);
            assert_eq!((used, status), (1, IOERR), "{what}");
        }
        assert!(
            *r.disk.bytes.lock().unwrap() == before,
            "a refused request changed the disk"
        );
    }

    #[test]
    fn a_chain_without_a_status_byte_is_returned_unanswered() {
        let r = rig(false);
        r.header(VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(r.run(vec![hdr()]).0, 0);
        assert_eq!(r.run(vec![hdr(), wr(RAM + 5, 1)]).0, 0);
    }

    #[test]
    fn unknown_types_and_flags_are_unsupported() {
        let r = rig(false);
        r.header(42, 0);
        assert_eq!(r.run(vec![hdr(), st()]), (1, UNSUPP));
        r.header(VIRTIO_BLK_T_DISCARD, 0);
        let m = r.mem.memory();
        m.write_obj(0u64, GuestAddress(DATA)).unwrap();
        m.write_obj(8u32, GuestAddress(DATA + 8)).unwrap();
        m.write_obj(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, GuestAddress(DATA + 12))
            .unwrap();
        let (_, status) = r.run(vec![hdr(), rd(DATA, 16), st()]);
        assert_eq!(status, UNSUPP, "discard takes no UNMAP flag");
    }

    #[test]
    fn a_fenced_device_answers_ioerr_and_reads_go_on() {
        let r = rig(false);
        r.disk.fenced.store(true, Ordering::SeqCst);
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(r.run(vec![hdr(), rd(DATA, 512), st()]), (1, IOERR));
        r.header(VIRTIO_BLK_T_IN, 0);
        assert_eq!(r.run(vec![hdr(), wr(DATA, 512), st()]), (513, OK));
    }

    #[test]
    fn read_only_refuses_writes_and_get_id_answers_the_serial() {
        let r = rig(true);
        r.header(VIRTIO_BLK_T_OUT, 0);
        assert_eq!(r.run(vec![hdr(), rd(DATA, 512), st()]), (1, IOERR));
        r.header(VIRTIO_BLK_T_GET_ID, 0);
        assert_eq!(r.run(vec![hdr(), wr(DATA, 20), st()]), (21, OK));
        assert_eq!(&r.bytes(DATA, 20)[..8], b"vm/disk\0");
    }

    #[test]
    fn the_writeback_byte_is_the_only_writable_config() {
        let disk = Arc::new(TestDisk {
            bytes: Mutex::new(vec![0; DISK]),
            fenced: AtomicBool::new(false),
            may_block: true,
        });
        let b = BlkBackend::new("d", "d", disk, &Settings::default()).unwrap();
        assert_eq!(b.get_config(WRITEBACK_OFFSET as u32, 1), vec![1]);
        b.set_config(WRITEBACK_OFFSET as u32, &[0]).unwrap();
        assert_eq!(b.get_config(WRITEBACK_OFFSET as u32, 1), vec![0]);
        assert!(b.set_config(0, &[0; 8]).is_err());
        assert_eq!(
            b.get_config(56, 100).len(),
            100,
            "reads past the end are zero-padded"
        );
        b.close();
    }

    /// A chain of (address, length, device writes) descriptors, linked.
    fn linked(chain: &[(u64, u32, bool)], first: u16) -> Vec<virtio_queue::desc::RawDescriptor> {
        use virtio_bindings::virtio_ring::VRING_DESC_F_NEXT;
        chain
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, device_writes))| {
                let mut flags = if device_writes {
                    VRING_DESC_F_WRITE as u16
                } else {
                    0
                };
                if i + 1 < chain.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                Descriptor::new(addr, len, flags, first + i as u16 + 1).into()
            })
            .collect()
    }

    #[test]
    fn chains_on_a_real_virtqueue_are_answered_on_its_used_ring_inline_and_on_threads() {
        use virtio_queue::mock::MockSplitQueue;
        for may_block in [false, true] {
            let disk = Arc::new(TestDisk {
                bytes: Mutex::new((0..DISK).map(|i| (i % 251) as u8).collect()),
                fenced: AtomicBool::new(false),
                may_block,
            });
            let settings = Settings {
                queues: 1,
                queue_size: 16,
                io_threads: 2,
                read_only: false,
            };
            let backend = BlkBackend::new("vm/disk", "vm/disk", disk.clone(), &settings).unwrap();
            let mem = GuestMemoryAtomic::new(
                Memory::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap(),
            );
            let m = mem.memory();
            let mock = MockSplitQueue::new(&*m, 16);
            let header = |at: u64, kind: u32, sector: u64| {
                m.write_obj(kind, GuestAddress(at)).unwrap();
                m.write_obj(sector, GuestAddress(at + 8)).unwrap();
            };
            header(0x10000, VIRTIO_BLK_T_IN, 2);
            header(0x20000, VIRTIO_BLK_T_OUT, 4);
            m.write_slice(&[0xabu8; 512], GuestAddress(0x21000))
                .unwrap();
            header(0x30000, VIRTIO_BLK_T_FLUSH, 0);
            let mut descs = linked(
                &[
                    (0x10000, 16, false),
                    (0x11000, 1024, true),
                    (0x12000, 1, true),
                ],
                0,
            );
            descs.extend(linked(
                &[
                    (0x20000, 16, false),
                    (0x21000, 512, false),
                    (0x22000, 1, true),
                ],
                3,
            ));
            descs.extend(linked(&[(0x30000, 16, false), (0x32000, 1, true)], 6));
            mock.add_desc_chains(&descs, 0).unwrap();

            let vring = VringRwLock::new(mem.clone(), 16).unwrap();
            vring.set_queue_size(16);
            vring
                .set_queue_info(
                    mock.desc_table_addr().0,
                    mock.avail_addr().0,
                    mock.used_addr().0,
                )
                .unwrap();
            vring.set_queue_ready(true);
            vring.set_enabled(true);
            backend.update_memory(mem.clone()).unwrap();
            backend
                .handle_event(0, EventSet::IN, std::slice::from_ref(&vring), 0)
                .unwrap();
            backend.stop_vring(0).unwrap();

            assert_eq!(mock.used().idx().load(), 3, "may_block {may_block}");
            for status in [0x12000, 0x22000, 0x32000] {
                assert_eq!(m.read_obj::<u8>(GuestAddress(status)).unwrap(), OK);
            }
            let mut read = vec![0u8; 1024];
            m.read_slice(&mut read, GuestAddress(0x11000)).unwrap();
            let want: Vec<u8> = (1024..2048).map(|i| (i % 251) as u8).collect();
            assert_eq!(read, want);
            assert_eq!(disk.bytes.lock().unwrap()[2048..2560], [0xab; 512]);
            backend.close();
        }
    }
}
