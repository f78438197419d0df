//! The vhost-user-blk data plane end to end: `cvol mount --vhost-user` driven by a real
//! user-space driver (libblkio), its bytes checked against the pool and against the NBD
//! export of the same disk, and the same suite run against qemu-storage-daemon, the
//! reference implementation.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{tool, Env};
use cvol_vhost::client::VhostClient;

const DISK: u64 = 64 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not after 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes, reads, flushes, discards and zeroes through `socket` on every queue, checking
/// each result; returns the whole disk as the driver then reads it.
fn suite(socket: &Path) -> Vec<u8> {
    wait_for("the vhost-user socket", || socket.exists());
    let mut c = VhostClient::connect(socket, 2, 4 << 20).unwrap();
    assert_eq!(c.capacity(), DISK);
    let a = pattern(1 << 20, 1);
    c.write(0, 0, &a).unwrap();
    assert_eq!(c.read(1, 0, a.len()).unwrap(), a);
    let b = pattern(4 << 20, 2);
    c.write(1, 8 << 20, &b).unwrap();
    c.flush(0).unwrap();
    assert_eq!(c.read(0, 8 << 20, b.len()).unwrap(), b);
    c.write(0, DISK - 4096, &pattern(4096, 3)).unwrap();
    c.discard(0, 256 << 10, 256 << 10).unwrap();
    assert_eq!(c.read(1, 256 << 10, 256 << 10).unwrap(), vec![0; 256 << 10]);
    c.write_zeroes(1, 9 << 20, 64 << 10, false).unwrap();
    c.write_zeroes(0, 10 << 20, 1 << 20, true).unwrap();
    assert_eq!(c.read(0, 9 << 20, 64 << 10).unwrap(), vec![0; 64 << 10]);
    assert!(c.read(0, DISK - 512, 1024).is_err(), "a read past the end");
    c.flush(1).unwrap();
    let mut all = Vec::with_capacity(DISK as usize);
    for offset in (0..DISK).step_by(4 << 20) {
        all.extend(
            c.read((offset >> 22) as usize % 2, offset, 4 << 20)
                .unwrap(),
        );
    }
    all
}

fn vhost_user_disks_match_the_pool_and_the_nbd_export_on(env: Env) {
    env.ok(&["vm", "create", "demo", "--disk", "64M"]);
    let dir = env.tmp.path().join("vhost");
    let nbd = env.tmp.path().join("nbd.sock");
    let m = env.mount_with(&[
        "--vhost-user",
        dir.to_str().unwrap(),
        "--nbd",
        &format!("unix:{}", nbd.display()),
        "--vhost-user-rescan-ms",
        "100",
    ]);
    let socket = dir.join("demo/demo.sock");
    let seen = suite(&socket);
    let exported = env.tmp.path().join("exported.raw");
    tool(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &format!("nbd+unix:///demo/demo?socket={}", nbd.display()),
            exported.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read(&exported).unwrap() == seen,
        "NBD and vhost-user differ"
    );
    assert!(
        env.volume_bytes("demo/demo") == seen,
        "the pool and vhost-user differ"
    );

    // A VM created while the daemon runs gets its socket; a deleted one loses it.
    env.ok(&["vm", "create", "later", "--disk", "1M"]);
    let later = dir.join("later/later.sock");
    wait_for("a new disk's socket", || later.exists());
    let mut c = VhostClient::connect(&later, 1, 1 << 20).unwrap();
    assert_eq!(c.capacity(), 1 << 20);
    c.write(0, 0, &pattern(4096, 7)).unwrap();
    drop(c);
    // The disk detaches once the daemon has answered what was in flight and flushed.
    wait_for("the VM deleted", || {
        let out = env.run(&["vm", "delete", "later"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() || err.contains("is attached"), "{err}");
        out.status.success()
    });
    wait_for("a deleted disk's socket to go", || !later.exists());
    let log = m.stop();
    assert!(!socket.exists(), "sockets outlive the daemon: {log}");
}

#[test]
fn vhost_user_disks_match_the_pool_and_the_nbd_export() {
    vhost_user_disks_match_the_pool_and_the_nbd_export_on(Env::datastore());
}

#[test]
fn vhost_user_disks_match_the_pool_and_the_nbd_export_on_an_object_pool() {
    vhost_user_disks_match_the_pool_and_the_nbd_export_on(Env::datastore_on_object());
}

/// A qemu-storage-daemon serving a file over vhost-user-blk, killed when dropped.
struct StorageDaemon(Child);

impl StorageDaemon {
    fn start(file: &Path, socket: &Path) -> Self {
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file,filename={},discard=unmap,cache.direct=off",
                file.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp,node-name=file,addr.type=unix,addr.path={},writable=on,num-queues=2",
                socket.display()
            ))
            .stdout(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon (Debian package qemu-system-common) must be installed");
        Self(child)
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_same_suite_passes_on_qemu_storage_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let file: PathBuf = tmp.path().join("disk.raw");
    std::fs::File::create(&file).unwrap().set_len(DISK).unwrap();
    let socket = tmp.path().join("qsd.sock");
    let qsd = StorageDaemon::start(&file, &socket);
    let seen = suite(&socket);
    drop(qsd);
    assert!(
        std::fs::read(&file).unwrap() == seen,
        "the file and vhost-user differ"
    );
}

#[test]
fn one_driver_per_disk_and_the_container_sees_its_writes() {
    let env = Env::datastore();
    env.ok(&["vm", "create", "demo", "--disk", "64M"]);
    let dir = env.tmp.path().join("vhost");
    let m = env.mount_with(&["--vhost-user", dir.to_str().unwrap()]);
    let socket = dir.join("demo/demo.sock");
    wait_for("the socket", || socket.exists());
    let mut first = VhostClient::connect(&socket, 1, 1 << 20).unwrap();
    assert!(VhostClient::connect(&socket, 1, 1 << 20).is_err());
    first.write(0, 0, &pattern(4096, 1)).unwrap();
    // The container sees the write: one attachment per host, however it is reached.
    let flat = std::fs::read(m.path("demo/demo-flat.vmdk")).unwrap();
    assert_eq!(flat[..4096], pattern(4096, 1)[..]);
    drop(first);
    let log = m.stop();
    assert!(log.contains("refused a second vhost-user driver"), "{log}");
}
