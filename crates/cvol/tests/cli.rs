//! The `cvol` binary as a user runs it: every command, every bad input, a real crash.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{cvol, tool, Env};

fn create_list_delete_a_vm(env: Env) {
    env.ok(&["vm", "create", "demo", "--disk", "64M"]);
    assert!(env.share.join("demo/demo.vmx").is_file());
    assert!(env.share.join("demo/demo.vmdk").is_file());
    assert!(
        !env.share.join("demo/demo-flat.vmdk").exists(),
        "the flat file is never on the share"
    );
    if env.is_file_pool() {
        let meta = std::fs::metadata(env.volume_file("demo/demo")).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert_eq!(meta.blocks(), 0, "the volume is sparse");
    } else {
        assert_eq!(env.volume_bytes("demo/demo"), vec![0; 64 << 20]);
    }

    let vms = env.json(&["vm", "list"]);
    assert_eq!(vms[0]["name"], "demo");
    assert_eq!(vms[0]["memory_mib"], 1024);
    assert_eq!(vms[0]["disks"][0]["size"], 64 << 20);
    assert!(env.ok(&["vm", "list"]).contains("demo  1024 MiB"));

    env.ok(&["vm", "delete", "demo"]);
    assert!(!env.share.join("demo").exists());
    assert_eq!(env.volumes(), 0);
    assert!(env.json(&["vm", "list"]).as_array().unwrap().is_empty());
}

/// A walk over NFS reads the VM folders' listings ahead, many calls in flight on one
/// connection, and then reads each VM from them.
fn a_walk_reads_the_vm_folders_ahead(env: Env) {
    for vm in ["a", "b", "c"] {
        env.ok(&["vm", "create", vm, "--memory", "256"]);
    }
    let out = env.run_with_env(
        &["--json", "vm", "list"],
        &[("RUST_LOG", "cvol_share=debug"), ("CVOL_CACHE_DIR", "")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 of 3 listings read ahead"),
        "the folders were not read ahead: {stderr}"
    );
    let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let vms: Vec<(&str, u64)> = vms
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap(),
                vm["memory_mib"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(vms, [("a", 256), ("b", 256), ("c", 256)]);
}

fn disks_grow_snapshot_clone_and_go(env: Env) {
    env.ok(&["vm", "create", "src", "--disk", "1M"]);
    env.ok(&["vm", "create", "dst"]);
    // A file pool's volume is written in place; an object pool's through a mount.
    let write = |offset: u64, data: &[u8]| {
        use std::os::unix::fs::FileExt;
        let mounted = (!env.is_file_pool()).then(|| env.mount(false));
        let path = match &mounted {
            Some(m) => m.path("src/src-flat.vmdk"),
            None => env.volume_file("src/src"),
        };
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.write_all_at(data, offset).unwrap();
        file.sync_all().unwrap();
        drop(file);
        if let Some(m) = mounted {
            m.stop();
        }
    };
    write(0, b"snapshotted bytes");
    env.ok(&["disk", "snapshot", "src/src", "s1"]);
    write(0, b"later bytes here!");
    let snapshotted = {
        let mut v = env.volume_bytes("src/src");
        v[..17].copy_from_slice(b"snapshotted bytes");
        v
    };

    env.ok(&["disk", "clone", "src/src@s1", "dst/from-snap"]);
    env.ok(&["disk", "clone", "src/src", "dst/from-live"]);
    assert!(env.volume_bytes("dst/from-snap") == snapshotted);
    assert!(env.volume_bytes("dst/from-live") == env.volume_bytes("src/src"));
    let vmx = std::fs::read_to_string(env.share.join("dst/dst.vmx")).unwrap();
    assert!(
        vmx.contains("scsi0:1.fileName = \"from-live.vmdk\""),
        "{vmx}"
    );

    let err = env.fails(&["disk", "clone", "src/src@nope", "dst/x"]);
    assert!(err.contains("has no snapshot \"nope\""), "{err}");
    let err = env.fails(&["disk", "clone", "src/src", "dst/from-live"]);
    assert!(
        err.contains("disk \"dst/from-live\" already exists"),
        "{err}"
    );

    env.ok(&["disk", "resize", "src/src", "2M"]);
    assert_eq!(env.volume_bytes("src/src").len(), 2 << 20);
    assert!(std::fs::read_to_string(env.share.join("src/src.vmdk"))
        .unwrap()
        .contains("RW 4096 VMFS"));
    let err = env.fails(&["disk", "resize", "src/src", "1M"]);
    assert!(err.contains("would lose data"), "{err}");
    env.ok(&["disk", "resize", "src/src", "1M", "--force"]);

    let disk = env.json(&["disk", "create", "src", "--size", "4M"]);
    assert_eq!(disk["name"], "src_1");
    env.ok(&["disk", "delete", "src/src_1"]);
    assert!(!env.share.join("src/src_1.vmdk").exists());
    assert!(!std::fs::read_to_string(env.share.join("src/src.vmx"))
        .unwrap()
        .contains("src_1"));
    assert_eq!(env.volumes(), 3);
    let report = env.json(&["datastore", "fsck"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

#[test]
fn qemu_opens_the_descriptor_with_the_volume_as_its_extent() {
    let env = Env::datastore();
    env.ok(&["vm", "create", "demo", "--disk", "64M"]);
    // The container will show the volume beside the descriptor; here a symlink does.
    let dir = env.pool.parent().unwrap().join("qemu");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(env.share.join("demo/demo.vmdk"), dir.join("demo.vmdk")).unwrap();
    std::os::unix::fs::symlink(env.volume_file("demo/demo"), dir.join("demo-flat.vmdk")).unwrap();
    let vmdk = dir.join("demo.vmdk");

    let info = tool(
        "qemu-img",
        &["info", "--output=json", vmdk.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "vmdk");
    assert_eq!(info["virtual-size"], 64 << 20);
    assert_eq!(info["format-specific"]["data"]["create-type"], "vmfs");
    tool("qemu-img", &["check", vmdk.to_str().unwrap()]);
    tool(
        "qemu-io",
        &["-c", "write -P 0x5a 1M 64k", vmdk.to_str().unwrap()],
    );
    let bytes = std::fs::read(env.volume_file("demo/demo")).unwrap();
    assert!(
        bytes[1 << 20..(1 << 20) + 65536].iter().all(|&b| b == 0x5a),
        "qemu wrote into the volume"
    );

    // QEMU rewrote the descriptor (new CID, NUL padding): cvol still reads it.
    std::fs::copy(&vmdk, env.share.join("demo/demo.vmdk")).unwrap();
    let disks = env.json(&["disk", "list", "demo"]);
    assert_eq!(disks[0]["problem"], serde_json::Value::Null, "{disks}");
}

fn a_real_crash_is_repaired_by_fsck(env: Env) {
    let before = env.snapshot_share();
    for step in [
        "vm-create:volume-created",
        "vm-create:descriptor-written",
        "vm-create:vmx-written",
    ] {
        let out = env.run_with_env(
            &["vm", "create", "demo", "--disk", "1M", "--disk", "1M"],
            &[("CVOL_FAILPOINT", step)],
        );
        assert!(!out.status.success(), "{step}: the process did not die");
        assert!(env.volumes() > 0, "{step}: the crash left a volume");
        // The crashed process is gone, so its operation is abandoned at once.
        let out = env.run(&["datastore", "fsck"]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "{step}: fsck finds the interrupted operation"
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("vm-create by host"));
        let repaired = env.ok(&["datastore", "fsck", "--repair"]);
        assert!(repaired.contains("undone"), "{repaired}");
        assert_eq!(env.volumes(), 0, "{step}: no volume leaked");
        assert_eq!(
            env.snapshot_share(),
            before,
            "{step}: the share is as before"
        );
        env.ok(&["datastore", "fsck"]);
    }
}

fn bad_input_gets_one_clear_line_and_changes_nothing(env: Env) {
    env.ok(&["vm", "create", "demo", "--disk", "1M"]);
    let long = "x".repeat(256);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["vm", "create", "a/b"],
            "invalid VM name \"a/b\": it contains '/'",
        ),
        (
            vec!["vm", "create", ".."],
            "invalid VM name \"..\": it starts with '.'",
        ),
        (vec!["vm", "create", &long], "is 256 bytes long"),
        (vec!["vm", "create", "demo"], "VM \"demo\" already exists"),
        (
            vec!["vm", "create", "v2", "--disk", "1000"],
            "1000 bytes is not a multiple of 512",
        ),
        (
            vec!["vm", "create", "v2", "--disk", "0"],
            "a disk cannot be empty",
        ),
        (
            vec!["vm", "create", "v2", "--disk", "12Q"],
            "invalid size \"12Q\"",
        ),
        (
            vec!["vm", "create", "v2", "--disk", "1M", "--provider", "nope"],
            "unknown provider \"nope\"; this datastore has: pool",
        ),
        (vec!["vm", "show", "ghost"], "VM \"ghost\" does not exist"),
        (
            vec!["disk", "resize", "demo/ghost", "2M"],
            "disk \"demo/ghost\" does not exist",
        ),
        (vec!["disk", "resize", "demo", "2M"], "expected VM/DISK"),
        (
            vec!["disk", "snapshot", "demo/demo", "../s"],
            "invalid snapshot name",
        ),
        (
            vec!["disk", "clone", "demo/demo", "ghost/x"],
            "VM \"ghost\" does not exist",
        ),
        (
            vec![
                "datastore",
                "create",
                "--name",
                "x",
                "--provider",
                "p=file:/tmp",
            ],
            "is already a cVol datastore",
        ),
    ];
    let before = env.snapshot_share();
    let volumes = env.volumes();
    for (args, expected) in cases {
        let err = env.fails(&args);
        assert!(err.starts_with("cvol: error: "), "{err}");
        assert!(
            err.contains(expected),
            "cvol {args:?}: got {err:?}, expected {expected:?}"
        );
    }
    assert_eq!(env.snapshot_share(), before);
    assert_eq!(env.volumes(), volumes);
}

fn malformed_and_foreign_files_are_named_with_their_line(mut env: Env) {
    // The descriptor is rewritten in place on the server's disk, behind the NFS server's
    // back, to the same size at times: nfs-ganesha goes on reporting the attributes it
    // cached (its files may only change through it), which would make the file look
    // unchanged to the content kept between runs.
    env.vars.push(("CVOL_CACHE_DIR".into(), String::new()));
    env.ok(&["vm", "create", "demo", "--disk", "1M"]);
    let descriptor = env.share.join("demo/demo.vmdk");
    let good = std::fs::read_to_string(&descriptor).unwrap();
    let cases = [
        (good.replace("RW 2048 VMFS", "RW lots VMFS"), "demo/demo.vmdk:9: extent: size \"lots\""),
        (good[..good.len() / 2].to_string(), "demo/demo.vmdk: ddb.cvol.datastore: missing"),
        (
            good.replace(&good[good.find("ddb.cvol.datastore = \"").unwrap() + 22..][..36], "00000000-0000-0000-0000-000000000000"),
            "demo/demo.vmdk:19: ddb.cvol.datastore: the disk belongs to cVol 00000000-0000-0000-0000-000000000000",
        ),
        (good.replace("ddb.cvol.provider = \"pool\"", "ddb.cvol.provider = \"gone\""), "demo/demo.vmdk:20: ddb.cvol.provider: unknown provider \"gone\""),
    ];
    for (text, expected) in cases {
        std::fs::write(&descriptor, &text).unwrap();
        let err = env.fails(&["disk", "resize", "demo/demo", "2M"]);
        assert!(err.contains(expected), "got {err:?}, expected {expected:?}");
        let show = env.ok(&["vm", "show", "demo"]);
        assert!(
            show.contains(&format!("problem: {expected}")),
            "vm show lists the problem: {show}"
        );
        let err = env.fails(&["vm", "delete", "demo"]);
        assert!(err.contains("fix or remove that descriptor first"), "{err}");
    }
    std::fs::write(&descriptor, &good).unwrap();
    assert_eq!(env.volumes(), 1, "no volume was touched");

    std::fs::write(env.share.join("demo/demo.vmx"), "memSize = \"1\"\nbroken\n").unwrap();
    let err = env.fails(&["disk", "create", "demo", "--size", "1M"]);
    assert!(
        err.contains("demo/demo.vmx:2: expected 'key = \"value\"'"),
        "{err}"
    );
    assert_eq!(env.volumes(), 1);

    let config = env.share.join(".cvol/datastore.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("format_version = 1", "format_version = \"one\""),
    )
    .unwrap();
    let err = env.fails(&["vm", "list"]);
    assert!(
        err.contains(".cvol/datastore.toml:4: format_version: missing or not an integer"),
        "{err}"
    );
}

#[test]
fn shares_and_pools_that_cannot_serve() {
    let env = Env::empty();
    let err = env.fails(&["vm", "list"]);
    assert!(err.contains("is not a cVol datastore"), "{err}");
    let missing = env.pool.join("missing");
    let err = env.fails(&[
        "datastore",
        "create",
        "--name",
        "x",
        "--provider",
        &format!("p=file:{}", missing.display()),
    ]);
    assert!(
        err.contains(&format!("pool {}: does not exist", missing.display())),
        "{err}"
    );
    let err = env.fails(&[
        "datastore",
        "create",
        "--name",
        "x",
        "--provider",
        "p=tape:/dev/st0",
    ]);
    assert!(err.contains("unknown kind \"tape\""), "{err}");
    std::fs::set_permissions(
        &env.pool,
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let err = env.fails(&[
        "datastore",
        "create",
        "--name",
        "x",
        "--provider",
        &format!("p=file:{}", env.pool.display()),
    ]);
    std::fs::set_permissions(
        &env.pool,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(err.contains("is read-only"), "{err}");
    assert!(
        std::fs::read_dir(&env.share).unwrap().next().is_none(),
        "a refused create writes nothing"
    );

    let out = cvol()
        .args(["--share", "/nonexistent/share", "vm", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && err.contains("/nonexistent/share"),
        "{err}"
    );
    let out = cvol().args(["vm", "list"]).output().unwrap();
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("pass --share PATH|URL or set CVOL_SHARE"));
}

#[test]
fn up_makes_a_demo_and_reuses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let up = || {
        let out = cvol()
            .args(["--json", "up", "--no-mount"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = up();
    assert_eq!(first["vm"]["disks"][0]["size"], 1u64 << 30);
    let second = up();
    assert_eq!(first["datastore"], second["datastore"]);
    assert_eq!(
        first["vm"]["disks"][0]["volume"],
        second["vm"]["disks"][0]["volume"]
    );
    assert!(Path::new(&dir.join("share/demo/demo.vmx")).is_file());
}

#[test]
fn create_list_delete_a_vm_on_a_local_share() {
    create_list_delete_a_vm(Env::datastore());
}

#[test]
fn create_list_delete_a_vm_on_nfs() {
    create_list_delete_a_vm(Env::datastore_on_nfs());
}

#[test]
fn create_list_delete_a_vm_on_cvol_nfs() {
    create_list_delete_a_vm(Env::datastore_on_cvol_nfs());
}

#[test]
fn a_walk_on_nfs_reads_the_vm_folders_ahead() {
    a_walk_reads_the_vm_folders_ahead(Env::datastore_on_nfs());
}

#[test]
fn a_walk_on_cvol_nfs_reads_the_vm_folders_ahead() {
    a_walk_reads_the_vm_folders_ahead(Env::datastore_on_cvol_nfs());
}

#[test]
fn create_list_delete_a_vm_with_a_remote_provider() {
    create_list_delete_a_vm(Env::datastore_on_remote());
}

#[test]
fn create_list_delete_a_vm_on_an_object_pool() {
    create_list_delete_a_vm(Env::datastore_on_object());
}

#[test]
fn create_list_delete_a_vm_on_an_object_pool_behind_the_service() {
    create_list_delete_a_vm(Env::datastore_on_remote_object());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_a_local_share() {
    disks_grow_snapshot_clone_and_go(Env::datastore());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_nfs() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_nfs());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_cvol_nfs() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_cvol_nfs());
}

#[test]
fn disks_grow_snapshot_clone_and_go_with_a_remote_provider() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_remote());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_a_local_share() {
    a_real_crash_is_repaired_by_fsck(Env::datastore());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_nfs() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_nfs());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_cvol_nfs() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_cvol_nfs());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_with_a_remote_provider() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_remote());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_an_object_pool() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_object());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_an_object_pool_behind_the_service() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_remote_object());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_a_local_share() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_nfs() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_nfs());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_cvol_nfs() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_cvol_nfs());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_with_a_remote_provider() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_remote());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_an_object_pool() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_object());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_an_object_pool_behind_the_service() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_remote_object());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_a_local_share() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_nfs() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_nfs());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_cvol_nfs() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_cvol_nfs());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_with_a_remote_provider() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_remote());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_an_object_pool() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_object());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_an_object_pool_behind_the_service() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_remote_object());
}

#[test]
fn create_list_delete_a_vm_on_s3() {
    create_list_delete_a_vm(Env::datastore_on_s3());
}

#[test]
fn create_list_delete_a_vm_on_s3_behind_the_service() {
    create_list_delete_a_vm(Env::datastore_on_remote_s3());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_s3() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_s3());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_s3() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_s3());
}

#[test]
fn malformed_and_foreign_files_are_named_with_their_line_on_s3() {
    malformed_and_foreign_files_are_named_with_their_line(Env::datastore_on_s3());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_an_object_pool() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_object());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_s3() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_s3());
}

#[test]
fn create_list_delete_a_vm_on_a_sealed_object_pool() {
    create_list_delete_a_vm(Env::datastore_on_sealed_object());
}

#[test]
fn create_list_delete_a_vm_on_sealed_s3() {
    create_list_delete_a_vm(Env::datastore_on_sealed_s3());
}

#[test]
fn a_real_crash_is_repaired_by_fsck_on_sealed_s3() {
    a_real_crash_is_repaired_by_fsck(Env::datastore_on_sealed_s3());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_a_sealed_object_pool() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_sealed_object());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_sealed_s3() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_sealed_s3());
}

#[test]
fn create_list_delete_a_vm_on_rbd() {
    create_list_delete_a_vm(Env::datastore_on_rbd());
}

#[test]
fn bad_input_gets_one_clear_line_and_changes_nothing_on_rbd() {
    bad_input_gets_one_clear_line_and_changes_nothing(Env::datastore_on_rbd());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_rbd() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_rbd());
}

#[test]
fn create_list_delete_a_vm_on_rbd_behind_a_provider_service() {
    create_list_delete_a_vm(Env::datastore_on_remote_rbd());
}

#[test]
fn disks_grow_snapshot_clone_and_go_on_rbd_behind_a_provider_service() {
    disks_grow_snapshot_clone_and_go(Env::datastore_on_remote_rbd());
}
