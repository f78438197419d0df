//! The file system container, mounted for real through the kernel's FUSE, driven by
//! the tools a hypervisor host uses: qemu-img, qemu-io, fio, cp, rm, ln.

mod common;

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::{tool, tool_output, Env};

fn demo(disk: &str) -> Env {
    with_demo(Env::datastore(), disk)
}

fn with_demo(env: Env, disk: &str) -> Env {
    env.ok(&["vm", "create", "demo", "--disk", disk]);
    env
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn assert_pattern_ok(out: &str) {
    assert!(!out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore, &[true, false]);
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_with_a_remote_provider() {
    // Never passthrough: a device that can be taken over checks every write.
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_remote, &[false]);
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_an_object_pool() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_object, &[false]);
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_an_object_pool_behind_the_service() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_remote_object, &[false]);
}

fn qemu_reads_and_writes_disks_through_the_container_on(make: fn() -> Env, passthrough: &[bool]) {
    for &passthrough in passthrough {
        let env = with_demo(make(), "64M");
        let m = env.mount(passthrough);
        let vmdk = m.path("demo/demo.vmdk");
        let info: serde_json::Value =
            serde_json::from_str(&tool("qemu-img", &["info", "--output=json", s(&vmdk)])).unwrap();
        assert_eq!(info["format"], "vmdk");
        assert_eq!(info["virtual-size"], 64 << 20);
        tool("qemu-img", &["check", s(&vmdk)]);
        let out = tool(
            "qemu-io",
            &[
                "-c",
                "write -P 0x5a 0 1M",
                "-c",
                "write -P 0xa5 40M 64k",
                "-c",
                "flush",
                s(&vmdk),
            ],
        );
        assert!(out.contains("wrote 65536/65536"), "{out}");
        drop(m);

        let m = env.mount(passthrough);
        let vmdk = m.path("demo/demo.vmdk");
        let out = tool(
            "qemu-io",
            &[
                "-r",
                "-c",
                "read -P 0x5a 0 1M",
                "-c",
                "read -P 0xa5 40M 64k",
                "-c",
                "read -P 0 1M 39M",
                s(&vmdk),
            ],
        );
        assert_pattern_ok(&out);
        let raw = env.tmp.path().join("copy.raw");
        tool("qemu-img", &["convert", "-O", "raw", s(&vmdk), s(&raw)]);
        tool(
            "qemu-img",
            &["compare", "-f", "vmdk", "-F", "raw", s(&vmdk), s(&raw)],
        );
        let pool_bytes = env.volume_bytes("demo/demo");
        assert!(
            std::fs::read(&raw).unwrap() == pool_bytes,
            "the bytes are the pool volume's"
        );
        assert!(pool_bytes[40 << 20..(40 << 20) + 65536]
            .iter()
            .all(|&b| b == 0xa5));
        assert!(
            !env.share.join("demo/demo-flat.vmdk").exists(),
            "no flat file on the share"
        );
        let names: Vec<String> = std::fs::read_dir(m.path("demo"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names.contains(&"demo-flat.vmdk".to_string()));
        let log = m.stop();
        assert!(log.contains("detached"), "{log}");
        assert_eq!(
            env.json(&["disk", "list", "demo"])[0]["attached_to"],
            serde_json::Value::Null
        );
    }
}

#[test]
fn fio_verifies_data_through_the_container() {
    fio_verifies_data_through_the_container_on(Env::datastore, &[true, false]);
}

#[test]
fn fio_verifies_data_through_the_container_with_a_remote_provider() {
    // Never passthrough: a device that can be taken over checks every write.
    fio_verifies_data_through_the_container_on(Env::datastore_on_remote, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_an_object_pool() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_object, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_an_object_pool_behind_the_service() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_remote_object, &[false]);
}

fn fio_verifies_data_through_the_container_on(make: fn() -> Env, passthrough: &[bool]) {
    for &passthrough in passthrough {
        let env = with_demo(make(), "64M");
        let m = env.mount(passthrough);
        let flat = m.path("demo/demo-flat.vmdk");
        let out = tool(
            "fio",
            &[
                "--name=verify",
                &format!("--filename={}", s(&flat)),
                "--rw=randwrite",
                "--bs=4k",
                "--size=32M",
                "--ioengine=psync",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                "--verify_state_save=0",
                "--output-format=terse",
            ],
        );
        assert!(!out.contains("verify:"), "{out}");
        drop(m);
        // Read back after a remount: the data lives in the volume, not in a cache.
        let m = env.mount(passthrough);
        let out = tool(
            "fio",
            &[
                "--name=verify",
                &format!("--filename={}", s(&m.path("demo/demo-flat.vmdk"))),
                "--rw=randwrite",
                "--bs=4k",
                "--size=32M",
                "--ioengine=psync",
                "--verify=crc32c",
                "--verify_only",
                "--verify_fatal=1",
                "--verify_state_save=0",
            ],
        );
        assert!(out.contains("verify"), "{out}");
    }
}

fn qemu_img_create_makes_a_disk_and_rm_deletes_it(env: Env) {
    let env = with_demo(env, "1M");
    let m = env.mount(true);
    let new = m.path("demo/new.vmdk");
    tool(
        "qemu-img",
        &[
            "create",
            "-f",
            "vmdk",
            "-o",
            "subformat=monolithicFlat",
            s(&new),
            "128M",
        ],
    );
    let descriptor = std::fs::read_to_string(env.share.join("demo/new.vmdk")).unwrap();
    assert!(
        descriptor.contains("ddb.cvol.object = \"vol-"),
        "{descriptor}"
    );
    assert!(
        descriptor.contains("RW 262144 FLAT \"new-flat.vmdk\" 0"),
        "{descriptor}"
    );
    let disks = env.json(&["disk", "list", "demo"]);
    let new_disk = disks
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "new")
        .expect("listed");
    assert_eq!(new_disk["size"], 128 << 20);
    assert_eq!(new_disk["problem"], serde_json::Value::Null, "{new_disk}");
    assert_eq!(env.volumes(), 2);
    let info: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", s(&new)])).unwrap();
    assert_eq!(info["virtual-size"], 128 << 20);
    assert_pattern_ok(&tool(
        "qemu-io",
        &[
            "-c",
            "write -P 7 100M 4k",
            "-c",
            "read -P 7 100M 4k",
            s(&new),
        ],
    ));

    let err = std::fs::remove_file(m.path("demo/new-flat.vmdk")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EPERM),
        "{err}; the descriptor: {:?}",
        String::from_utf8_lossy(&std::fs::read(env.share.join("demo/new.vmdk")).unwrap())
    );
    std::fs::remove_file(&new).unwrap();
    assert!(!env.share.join("demo/new.vmdk").exists());
    assert!(!m.path("demo/new-flat.vmdk").exists());
    assert_eq!(env.volumes(), 1, "the volume went with its descriptor");
    env.ok(&["datastore", "fsck"]);
}

fn cp_r_of_a_vm_clones_its_disks(env: Env) {
    let env = with_demo(env, "8M");
    let m = env.mount(true);
    tool(
        "qemu-io",
        &[
            "-c",
            "write -P 0x33 0 1M",
            "-c",
            "write -P 0x44 7M 1M",
            s(&m.path("demo/demo.vmdk")),
        ],
    );
    tool("cp", &["-r", s(&m.path("demo")), s(&m.path("copy"))]);
    // And one descriptor on its own, into an existing VM directory.
    std::fs::create_dir(m.path("solo")).unwrap();
    tool(
        "cp",
        &[s(&m.path("demo/demo.vmdk")), s(&m.path("solo/demo.vmdk"))],
    );

    let volume_of = |vm: &str| {
        let disks = env.json(&["disk", "list", vm]);
        let volume = disks[0]["volume"].clone();
        assert!(volume.is_string(), "{vm} has a disk with a volume: {disks}");
        volume
    };
    for copy in ["copy/demo", "solo/demo"] {
        let vm = copy.split('/').next().unwrap();
        assert_ne!(
            volume_of(vm),
            volume_of("demo"),
            "{copy} has a volume of its own"
        );
        assert!(
            env.volume_bytes(copy) == env.volume_bytes("demo/demo"),
            "{copy} has the same bytes"
        );
    }
    tool(
        "qemu-io",
        &["-c", "write -P 0x55 0 1M", s(&m.path("copy/demo.vmdk"))],
    );
    assert_pattern_ok(&tool(
        "qemu-io",
        &[
            "-r",
            "-c",
            "read -P 0x33 0 1M",
            s(&m.path("demo/demo.vmdk")),
        ],
    ));
    assert_eq!(env.volumes(), 3);
    assert!(std::fs::read_to_string(env.share.join("copy/demo.vmx"))
        .unwrap()
        .contains("memSize"));
    drop(m);
    let report = env.json(&["datastore", "fsck"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

#[test]
fn bad_input_through_the_container() {
    let env = demo("1M");
    env.ok(&["vm", "create", "other", "--disk", "1M"]);
    std::os::unix::fs::symlink("/etc", env.share.join("demo/planted")).unwrap();
    let m = env.mount(false);

    // Symlinks never lead out of the share.
    let err = std::os::unix::fs::symlink("/etc/passwd", m.path("demo/evil")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = std::os::unix::fs::symlink("../../x", m.path("demo/up")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    std::os::unix::fs::symlink("demo.vmx", m.path("demo/ok")).unwrap();
    assert!(std::fs::read_to_string(m.path("demo/ok"))
        .unwrap()
        .contains("displayName"));
    assert!(std::fs::read_to_string(m.path("demo/planted/passwd")).is_err());
    // cvol's own directory is not part of the container.
    assert!(!std::fs::read_dir(&m.mnt)
        .unwrap()
        .any(|e| e.unwrap().file_name() == ".cvol"));
    assert!(std::fs::read(m.path(".cvol/datastore.toml")).is_err());
    let err = std::fs::write(m.path(&"n".repeat(256)), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));

    // Writes past the end of a disk fail.
    let flat = std::fs::File::options()
        .write(true)
        .open(m.path("demo/demo-flat.vmdk"))
        .unwrap();
    flat.write_all_at(b"last", (1 << 20) - 4).unwrap();
    let err = flat.write_all_at(b"past", 1 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(flat);

    // A descriptor that names another cVol is not served, and nothing else breaks.
    let path = env.share.join("demo/demo.vmdk");
    let text = std::fs::read_to_string(&path).unwrap();
    let uuid = env.json(&["datastore", "info"])["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(
        &path,
        text.replace(&uuid, "00000000-0000-4000-8000-000000000000"),
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // the kernel's attribute cache
    let out = tool_output("qemu-img", &["info", s(&m.path("demo/demo.vmdk"))]);
    assert!(!out.status.success());
    assert!(
        m.log()
            .contains("demo/demo.vmdk:19: ddb.cvol.datastore: the disk belongs to cVol 00000000"),
        "{}",
        m.log()
    );
    tool("qemu-img", &["info", s(&m.path("other/other.vmdk"))]);
    std::fs::write(&path, text).unwrap();

    // The pool goes away: disk I/O fails with EIO, metadata is still served.
    let moved = env.tmp.path().join("pool-away");
    std::fs::rename(&env.pool, &moved).unwrap();
    let err = std::fs::File::open(m.path("other/other-flat.vmdk")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(std::fs::read_to_string(m.path("other/other.vmx"))
        .unwrap()
        .contains("memSize"));
    std::fs::write(m.path("other/notes.txt"), b"still here").unwrap();
    std::fs::rename(&moved, &env.pool).unwrap();
    tool("qemu-img", &["info", s(&m.path("other/other.vmdk"))]);
    let log = m.stop();
    assert!(
        log.contains("ERROR") && log.contains("not found"),
        "the failure is logged: {log}"
    );
}

#[test]
fn passthrough_writes_past_the_end_are_cut_back() {
    let env = demo("1M");
    let m = env.mount(true);
    let mut flat = std::fs::File::options()
        .write(true)
        .open(m.path("demo/demo-flat.vmdk"))
        .unwrap();
    flat.write_all_at(b"past", 1 << 20).unwrap();
    flat.flush().unwrap();
    drop(flat);
    let log = m.stop();
    assert_eq!(
        std::fs::metadata(env.volume_file("demo/demo"))
            .unwrap()
            .len(),
        1 << 20
    );
    assert!(log.contains("written past the end of the disk"), "{log}");
}

#[test]
fn up_serves_the_demo_until_unmounted() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let mut up = common::Up::new(
        common::cvol()
            .arg("up")
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        &dir,
    );
    let child = &mut up.child;
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    let url = loop {
        let mut line = String::new();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "{printed}");
        printed.push_str(&line);
        if let Some((_, url)) = line.trim().split_once("served over NFS at ") {
            break url.to_string();
        }
    };
    assert!(url.starts_with("nfs://127.0.0.1:"), "{url}");
    let vmdk = dir.join("mnt/demo/demo.vmdk");
    let start = std::time::Instant::now();
    while !vmdk.exists() {
        assert!(start.elapsed().as_secs() < 20, "cvol up did not mount");
        assert!(child.try_wait().unwrap().is_none(), "cvol up exited early");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let info: serde_json::Value =
        serde_json::from_str(&tool("qemu-img", &["info", "--output=json", s(&vmdk)])).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 30);
    // The printed share URL is a live NFS server over the share directory.
    let out = common::cvol()
        .args(["--share", &url, "vm", "create", "web", "--disk", "16M"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("share/web/web.vmx").is_file());
    assert!(dir.join("mnt/web/web-flat.vmdk").is_file());
    // SIGTERM, as a service manager stops it: a clean unmount and exit 0.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(printed.contains("qemu-img info"), "{printed}");
    assert!(!vmdk.exists(), "unmounted");
}

/// However `cvol up` is stopped (`cvol umount`, SIGTERM, SIGINT), and whatever NBD clients
/// did before (listed, mapped, hung up mid-negotiation), it stops cleanly: exit 0, no
/// warning, no panic in its log.
#[test]
fn up_stops_cleanly_whatever_clients_did() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let sock = dir.join("nbd.sock");
    let socket_url = |export: &str| format!("nbd+unix:///{export}?socket={}", s(&sock));
    for (round, stop) in ["umount", "SIGTERM", "SIGINT", "umount", "umount"]
        .iter()
        .enumerate()
    {
        let log = tmp.path().join(format!("up-{round}.log"));
        let mut up = common::Up::new(
            common::cvol()
                .arg("up")
                .arg(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
            &dir,
        );
        let child = &mut up.child;
        let vmdk = dir.join("mnt/demo/demo.vmdk");
        let start = std::time::Instant::now();
        while !(vmdk.exists() && sock.exists()) {
            assert!(start.elapsed().as_secs() < 30, "cvol up did not come up");
            assert!(child.try_wait().unwrap().is_none(), "cvol up exited early");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        tool("nbdinfo", &["--list", &socket_url("")]);
        tool("qemu-img", &["map", "-f", "raw", &socket_url("demo/demo")]);
        tool("qemu-img", &["info", s(&vmdk)]);
        for read in [0, 8, 18] {
            let mut half = std::os::unix::net::UnixStream::connect(&sock).unwrap();
            let mut greeting = vec![0; read];
            std::io::Read::read_exact(&mut half, &mut greeting).unwrap();
        }
        match *stop {
            "umount" => {
                let out = common::cvol()
                    .arg("umount")
                    .arg(dir.join("mnt"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
            signal => unsafe {
                let signal = if signal == "SIGTERM" {
                    libc::SIGTERM
                } else {
                    libc::SIGINT
                };
                libc::kill(child.id() as i32, signal);
            },
        }
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "round {round} ({stop}): {status}: {log}");
        for bad in [" WARN", "ERROR", "panicked"] {
            assert!(!log.contains(bad), "round {round} ({stop}): {bad}: {log}");
        }
        assert!(!vmdk.exists(), "unmounted");
    }
}

/// A thin disk shows what its volume holds (`st_blocks`, so `du` and `qemu-img info`'s
/// disk size), not its provisioned size: a file pool's blocks, an object pool's chunks
/// (as of the last flush).
fn thin_disks_show_what_they_hold(env: Env) {
    use std::os::unix::fs::MetadataExt;
    let env = with_demo(env, "256M");
    let m = env.mount(false);
    let flat = m.path("demo/demo-flat.vmdk");
    let held = || std::fs::metadata(&flat).unwrap().blocks() * 512;
    let size = std::fs::metadata(&flat).unwrap().len();
    assert_eq!(size, 256 << 20);
    assert!(held() < 1 << 20, "a new disk holds {} bytes", held());
    tool(
        "qemu-io",
        &["-c", "write -P 0x11 8M 4M", s(&m.path("demo/demo.vmdk"))],
    );
    let after = held();
    assert!(
        (4 << 20..16 << 20).contains(&after),
        "after writing 4 MiB the disk holds {after} bytes"
    );
    let info: serde_json::Value = serde_json::from_str(&tool(
        "qemu-img",
        &["info", "--output=json", "-f", "raw", s(&flat)],
    ))
    .unwrap();
    assert_eq!(info["actual-size"], after);
    let du = tool("du", &["-B1", s(&flat)]);
    assert!(du.starts_with(&after.to_string()), "{du}");
    assert_eq!(env.json(&["disk", "list", "demo"])[0]["allocated"], after);
}

#[test]
fn thin_disks_show_what_they_hold_on_a_file_pool() {
    thin_disks_show_what_they_hold(Env::datastore());
}

#[test]
fn thin_disks_show_what_they_hold_on_an_object_pool() {
    thin_disks_show_what_they_hold(Env::datastore_on_object());
}

#[test]
fn thin_disks_show_what_they_hold_on_an_object_pool_behind_the_service() {
    thin_disks_show_what_they_hold(Env::datastore_on_remote_object());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_a_local_share() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_nfs() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_nfs());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_cvol_nfs() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_cvol_nfs());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_with_a_remote_provider() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_remote());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_an_object_pool() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_object());
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_an_object_pool_behind_the_service() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_remote_object());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_a_local_share() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_nfs() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_nfs());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_cvol_nfs() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_cvol_nfs());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_with_a_remote_provider() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_remote());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_an_object_pool() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_object());
}

#[test]
fn qemu_through_a_container_whose_share_is_on_ganesha() {
    qemu_through_a_container_whose_share_is_on_nfs(Env::datastore_on_nfs());
}

#[test]
fn qemu_through_a_container_whose_share_is_on_cvol_nfs() {
    qemu_through_a_container_whose_share_is_on_nfs(Env::datastore_on_cvol_nfs());
}

fn qemu_through_a_container_whose_share_is_on_nfs(env: Env) {
    let env = with_demo(env, "16M");
    let m = env.mount(true);
    let vmdk = m.path("demo/demo.vmdk");
    tool("qemu-io", &["-c", "write -P 0x5a 0 1M", s(&vmdk)]);
    drop(m);
    let m = env.mount(false);
    assert_pattern_ok(&tool(
        "qemu-io",
        &[
            "-r",
            "-c",
            "read -P 0x5a 0 1M",
            s(&m.path("demo/demo.vmdk")),
        ],
    ));
    std::fs::write(m.path("demo/notes.txt"), b"over nfs").unwrap();
    assert_eq!(
        std::fs::read(env.share.join("demo/notes.txt")).unwrap(),
        b"over nfs",
        "metadata lands on the export"
    );
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_s3() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_s3, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_s3() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_s3, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_s3_behind_the_service() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_remote_s3, &[false]);
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_s3() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_s3());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_s3() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_s3());
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_a_sealed_object_pool() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_sealed_object, &[false]);
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_sealed_s3() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_sealed_s3, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_a_sealed_object_pool() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_sealed_object, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_sealed_s3() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_sealed_s3, &[false]);
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_sealed_s3() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_sealed_s3());
}

#[test]
fn qemu_reads_and_writes_disks_through_the_container_on_rbd() {
    qemu_reads_and_writes_disks_through_the_container_on(Env::datastore_on_rbd, &[false]);
}

#[test]
fn fio_verifies_data_through_the_container_on_rbd() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_rbd, &[false]);
}

#[test]
fn qemu_img_create_makes_a_disk_and_rm_deletes_it_on_rbd() {
    qemu_img_create_makes_a_disk_and_rm_deletes_it(Env::datastore_on_rbd());
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_rbd() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_rbd());
}

#[test]
fn fio_verifies_data_through_the_container_on_rbd_behind_a_provider_service() {
    fio_verifies_data_through_the_container_on(Env::datastore_on_remote_rbd, &[false]);
}

#[test]
fn cp_r_of_a_vm_clones_its_disks_on_rbd_behind_a_provider_service() {
    cp_r_of_a_vm_clones_its_disks(Env::datastore_on_remote_rbd());
}
