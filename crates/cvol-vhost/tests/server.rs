//! The vhost-user server driven by a real user-space driver (libblkio), against
//! in-memory disks: every request type, several queues, and drivers that misbehave.

use std::sync::Arc;
use std::time::Duration;

use cvol_nbd::memory::MemoryDevice;
use cvol_nbd::{DeviceExport, ExportError, Exports, OpenExport};
use cvol_provider::BlockDevice;
use cvol_vhost::client::VhostClient;
use cvol_vhost::{socket_path, Settings, VhostUserServer};

const SIZE: usize = 8 << 20;

struct Served {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    device: Arc<MemoryDevice>,
    server: Option<VhostUserServer>,
}

fn serve(settings: Settings) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(MemoryDevice::new(SIZE));
    let exports: Arc<dyn Exports> = Arc::new(DeviceExport::new("vm1/disk", device.clone()));
    let server =
        VhostUserServer::start(dir.path(), exports, settings, Duration::from_secs(60)).unwrap();
    Served {
        socket: socket_path(dir.path(), "vm1/disk"),
        _dir: dir,
        device,
        server: Some(server),
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn device_bytes(device: &MemoryDevice, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    device.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn every_request_type_works_on_every_queue() {
    let s = serve(Settings::default());
    let mut c = VhostClient::connect(&s.socket, 4, 4 << 20).unwrap();
    assert_eq!(c.capacity(), SIZE as u64);
    assert_eq!(c.queues(), 4);
    for q in 0..4 {
        let offset = (q as u64) << 20;
        let data = pattern(256 << 10, q as u8);
        c.write(q, offset, &data).unwrap();
        assert_eq!(c.read((q + 1) % 4, offset, data.len()).unwrap(), data);
        assert_eq!(device_bytes(&s.device, offset, data.len()), data);
    }
    c.flush(0).unwrap();
    c.discard(1, 4096, 8192).unwrap();
    assert_eq!(c.read(1, 4096, 8192).unwrap(), vec![0; 8192]);
    c.write_zeroes(2, 1 << 20, 65536, false).unwrap();
    c.write_zeroes(3, 2 << 20, 65536, true).unwrap();
    assert_eq!(device_bytes(&s.device, 1 << 20, 65536), vec![0; 65536]);
    assert_eq!(device_bytes(&s.device, 2 << 20, 65536), vec![0; 65536]);
    // A whole 4 MiB request crosses the servers' 1 MiB pieces.
    let big = pattern(4 << 20, 7);
    c.write(0, 4 << 20, &big).unwrap();
    assert_eq!(c.read(1, 4 << 20, big.len()).unwrap(), big);
    assert!(
        c.read(0, SIZE as u64 - 512, 1024).is_err(),
        "read past the end"
    );
    assert!(
        c.write(0, SIZE as u64, &[0; 512]).is_err(),
        "write past the end"
    );
}

#[test]
fn a_second_driver_is_turned_away_and_the_first_keeps_working() {
    let s = serve(Settings::default());
    let mut first = VhostClient::connect(&s.socket, 1, 1 << 20).unwrap();
    let second = VhostClient::connect(&s.socket, 1, 1 << 20);
    assert!(second.is_err(), "a second driver was served");
    first.write(0, 0, &pattern(4096, 1)).unwrap();
    assert_eq!(first.read(0, 0, 4096).unwrap(), pattern(4096, 1));
    drop(first);
    // Once the first has gone, the next is served.
    // A driver reconnecting right away is served, not taken for a second one.
    let mut third = VhostClient::connect(&s.socket, 1, 1 << 20).unwrap();
    assert_eq!(third.read(0, 0, 4096).unwrap(), pattern(4096, 1));
}

#[test]
fn read_only_devices_say_so_and_refuse_writes() {
    let s = serve(Settings {
        read_only: true,
        ..Settings::default()
    });
    assert!(VhostClient::connect(&s.socket, 1, 1 << 20).is_err());
    let mut c = VhostClient::connect_with(&s.socket, 1, 1 << 20, true).unwrap();
    assert!(c.property_bool("read-only").unwrap());
    assert_eq!(c.read(0, 0, 4096).unwrap(), vec![0; 4096]);
    drop(c);
    s.server.unwrap().stop();
    assert!(!s.socket.exists(), "the socket outlived the server");
}

/// Two in-memory disks that count their open attachments.
struct TwoDisks {
    devices: Vec<(String, Arc<MemoryDevice>)>,
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl Exports for TwoDisks {
    fn names(&self) -> Result<Vec<String>, ExportError> {
        Ok(self.devices.iter().map(|(n, _)| n.clone()).collect())
    }

    fn size(&self, name: &str) -> Result<u64, ExportError> {
        Ok(self.open(name)?.device.size())
    }

    fn open(&self, name: &str) -> Result<OpenExport, ExportError> {
        let (_, device) = self
            .devices
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| ExportError::Unknown(name.into()))?;
        use std::sync::atomic::Ordering::SeqCst;
        self.open.fetch_add(1, SeqCst);
        let open = self.open.clone();
        Ok(OpenExport::new(device.clone(), move || {
            open.fetch_sub(1, SeqCst);
        }))
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not after 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn drivers_that_vanish_or_send_garbage_cost_nothing_and_other_disks_keep_working() {
    use std::io::Write;
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let exports = Arc::new(TwoDisks {
        devices: vec![
            ("a/disk".into(), Arc::new(MemoryDevice::new(SIZE))),
            ("b/disk".into(), Arc::new(MemoryDevice::new(SIZE))),
        ],
        open: open.clone(),
    });
    let _server = VhostUserServer::start(
        dir.path(),
        exports,
        Settings::default(),
        Duration::from_secs(60),
    )
    .unwrap();
    let a = socket_path(dir.path(), "a/disk");
    let mut other = VhostClient::connect(&socket_path(dir.path(), "b/disk"), 1, 1 << 20).unwrap();
    other.write(0, 0, &pattern(4096, 9)).unwrap();

    // Mid-handshake: half a message header, then gone.
    let mut raw = std::os::unix::net::UnixStream::connect(&a).unwrap();
    raw.write_all(&[1, 0, 0, 0, 1]).unwrap();
    drop(raw);
    // Garbage: a message header claiming a huge payload, then noise.
    let mut raw = std::os::unix::net::UnixStream::connect(&a).unwrap();
    let mut junk = vec![0x01, 0, 0, 0, 0x01, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f];
    junk.extend(pattern(4096, 3));
    let _ = raw.write_all(&junk);
    drop(raw);
    // Mid-request: 64 writes submitted, then the driver is dropped without waiting.
    let mut c = VhostClient::connect(&a, 1, 1 << 20).unwrap();
    for i in 0..64u64 {
        let buf = c.buffer_ptr(0);
        c.queue(0)
            .write(i * 4096, buf, 4096, 0, blkio::ReqFlags::empty());
    }
    let _ = cvol_vhost::client::wait(c.queue(0), 0, Some(Duration::ZERO));
    drop(c);

    wait_until("disk a detached", || open.load(SeqCst) == 1);
    let mut again = VhostClient::connect(&a, 1, 1 << 20).unwrap();
    again.write(0, 0, &pattern(4096, 5)).unwrap();
    assert_eq!(again.read(0, 0, 4096).unwrap(), pattern(4096, 5));
    assert_eq!(other.read(0, 0, 4096).unwrap(), pattern(4096, 9));
    drop(again);
    drop(other);
    wait_until("both disks detached", || open.load(SeqCst) == 0);
}
