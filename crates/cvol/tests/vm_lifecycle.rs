//! A VM's life through the CLI, on each kind of pool: VM-wide snapshots (every disk at
//! once, revert, delete), clones and templates, with crashes and bad input. (A running
//! VM's snapshot, paused by its agent, is in cluster.rs.)

mod common;

use common::{tool, Env};

/// Writes byte `byte` over the first 64 KiB of each of `disks` of VM `v`, through the
/// container, then unmounts (which detaches the volumes).
fn write(env: &Env, disks: &[&str], byte: u8) {
    write_to(env, "v", disks, byte)
}

/// The same for VM `vm`.
fn write_to(env: &Env, vm: &str, disks: &[&str], byte: u8) {
    let m = env.mount(false);
    for disk in disks {
        let flat = m.path(&format!("{vm}/{disk}-flat.vmdk"));
        tool(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -P {byte} 0 64k"),
                flat.to_str().unwrap(),
            ],
        );
    }
    m.stop();
}

/// The first 64 KiB and the size of each of `disks` of VM `v`, through the container.
fn contents(env: &Env, disks: &[&str]) -> Vec<(u8, usize)> {
    contents_of(env, "v", disks)
}

/// The same for VM `vm`.
fn contents_of(env: &Env, vm: &str, disks: &[&str]) -> Vec<(u8, usize)> {
    let m = env.mount(false);
    let found = disks
        .iter()
        .map(|disk| {
            let bytes = std::fs::read(m.path(&format!("{vm}/{disk}-flat.vmdk"))).unwrap();
            let head = &bytes[..65536];
            assert!(
                head.iter().all(|&b| b == head[0]),
                "{disk}: mixed bytes in its first 64 KiB"
            );
            (head[0], bytes.len())
        })
        .collect();
    m.stop();
    found
}

fn disk_snapshots(env: &Env) -> Vec<Vec<String>> {
    let disks = env.json(&["disk", "list", "v"]);
    disks
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d["snapshots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn snapshot_revert_delete(env: Env) {
    env.ok(&["vm", "create", "v", "--disk", "1M", "--disk", "2M"]);
    let vmx_before = std::fs::read_to_string(env.share.join("v/v.vmx")).unwrap();
    write(&env, &["v", "v_1"], 0x11);
    let taken = env.json(&["vm", "snapshot", "v", "s1"]);
    assert_eq!(taken["name"], "s1");
    assert_eq!(taken["running"], false);
    assert_eq!(taken["disks"].as_array().unwrap().len(), 2, "{taken}");
    assert_eq!(disk_snapshots(&env), vec![vec!["s1"], vec!["s1"]]);

    // Changes after the snapshot: data, a size and the configuration.
    write(&env, &["v", "v_1"], 0x22);
    env.ok(&["disk", "resize", "v/v_1", "4M"]);
    env.ok(&["vm", "set", "v", "--cmdline", "console=ttyS0"]);
    env.ok(&["vm", "snapshot", "v", "s2"]);
    write(&env, &["v"], 0x33);

    // A disk added since: the revert is refused and changes nothing.
    env.ok(&["disk", "create", "v", "--size", "1M"]);
    let refused = env.fails(&["vm", "snapshot", "revert", "v", "s1"]);
    assert!(
        refused.contains("its disks changed since snapshot \"s1\"") && refused.contains("v_2"),
        "{refused}"
    );
    assert_eq!(
        contents(&env, &["v", "v_1"]),
        vec![(0x33, 1 << 20), (0x22, 4 << 20)]
    );
    env.ok(&["disk", "delete", "v/v_2"]);

    env.ok(&["vm", "snapshot", "revert", "v", "s1"]);
    assert_eq!(
        contents(&env, &["v", "v_1"]),
        vec![(0x11, 1 << 20), (0x11, 2 << 20)],
        "both disks are back, with their sizes"
    );
    assert_eq!(
        std::fs::read_to_string(env.share.join("v/v.vmx")).unwrap(),
        vmx_before,
        "the .vmx is back"
    );
    env.ok(&["datastore", "fsck"]);
    // The newer snapshot stays, and going forward to it works too.
    env.ok(&["vm", "snapshot", "revert", "v", "s2"]);
    assert_eq!(
        contents(&env, &["v", "v_1"]),
        vec![(0x22, 1 << 20), (0x22, 4 << 20)]
    );
    assert!(std::fs::read_to_string(env.share.join("v/v.vmx"))
        .unwrap()
        .contains("console=ttyS0"));

    let listed = env.json(&["vm", "snapshot", "list", "v"]);
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["s1", "s2"]);
    let table = env.ok(&["vm", "snapshot", "list", "v"]);
    assert!(
        table.contains("SNAPSHOT") && table.contains("s2") && table.contains("stopped"),
        "{table}"
    );

    env.ok(&["vm", "snapshot", "delete", "v", "s1"]);
    assert_eq!(disk_snapshots(&env), vec![vec!["s2"], vec!["s2"]]);
    env.ok(&["vm", "snapshot", "delete", "v", "s2"]);
    assert_eq!(disk_snapshots(&env), vec![Vec::<String>::new(), vec![]]);
    assert_eq!(
        env.json(&["vm", "snapshot", "list", "v"]),
        serde_json::json!([])
    );
    env.ok(&["datastore", "fsck"]);
    // A VM with snapshots is deleted whole.
    env.ok(&["vm", "snapshot", "v", "last"]);
    env.ok(&["vm", "delete", "v"]);
    assert_eq!(env.volumes(), 0);
}

#[test]
fn a_vm_snapshot_reverts_every_disk_on_a_local_share() {
    snapshot_revert_delete(Env::datastore());
}

#[test]
fn a_vm_snapshot_reverts_every_disk_on_nfs() {
    snapshot_revert_delete(Env::datastore_on_cvol_nfs());
}

#[test]
fn a_vm_snapshot_reverts_every_disk_on_an_object_pool() {
    snapshot_revert_delete(Env::datastore_on_object());
}

#[test]
fn a_vm_snapshot_reverts_every_disk_with_a_remote_provider() {
    snapshot_revert_delete(Env::datastore_on_remote());
}

#[test]
fn a_vm_snapshot_reverts_every_disk_on_an_object_pool_behind_the_service() {
    snapshot_revert_delete(Env::datastore_on_remote_object());
}

/// A crash half-way through a snapshot leaves nothing after fsck; half-way through a
/// revert, fsck finishes it.
fn crashes_are_repaired(env: Env) {
    env.ok(&["vm", "create", "v", "--disk", "1M", "--disk", "1M"]);
    write(&env, &["v", "v_1"], 0x11);
    let before = env.snapshot_share();
    for step in ["vm-snapshot:disk-snapshot", "vm-snapshot:recorded"] {
        let out = env.run_with_env(&["vm", "snapshot", "v", "s1"], &[("CVOL_FAILPOINT", step)]);
        assert!(!out.status.success(), "{step}: the process did not die");
        assert_eq!(env.run(&["datastore", "fsck"]).status.code(), Some(4));
        env.ok(&["datastore", "fsck", "--repair"]);
        assert_eq!(disk_snapshots(&env), vec![Vec::<String>::new(), vec![]]);
        assert_eq!(
            env.snapshot_share(),
            before,
            "{step}: the share is as before"
        );
    }

    env.ok(&["vm", "snapshot", "v", "s1"]);
    write(&env, &["v", "v_1"], 0x22);
    let out = env.run_with_env(
        &["vm", "snapshot", "revert", "v", "s1"],
        &[("CVOL_FAILPOINT", "vm-snapshot-revert:volume-reverted")],
    );
    assert!(!out.status.success(), "the revert did not die");
    assert_eq!(
        contents(&env, &["v", "v_1"]),
        vec![(0x11, 1 << 20), (0x22, 1 << 20)],
        "the crash came after the first disk"
    );
    let repaired = env.ok(&["datastore", "fsck", "--repair"]);
    assert!(repaired.contains("vm-snapshot-revert"), "{repaired}");
    assert_eq!(
        contents(&env, &["v", "v_1"]),
        vec![(0x11, 1 << 20), (0x11, 1 << 20)],
        "fsck finished the revert"
    );

    let out = env.run_with_env(
        &["vm", "snapshot", "delete", "v", "s1"],
        &[("CVOL_FAILPOINT", "vm-snapshot-delete:disk-snapshot-deleted")],
    );
    assert!(!out.status.success(), "the delete did not die");
    env.ok(&["datastore", "fsck", "--repair"]);
    assert_eq!(disk_snapshots(&env), vec![Vec::<String>::new(), vec![]]);
    assert_eq!(
        env.json(&["vm", "snapshot", "list", "v"]),
        serde_json::json!([])
    );
}

#[test]
fn crashes_in_vm_snapshots_are_repaired_on_a_local_share() {
    crashes_are_repaired(Env::datastore());
}

#[test]
fn crashes_in_vm_snapshots_are_repaired_on_an_object_pool() {
    crashes_are_repaired(Env::datastore_on_object());
}

#[test]
fn bad_vm_snapshot_requests_get_a_clear_error_and_change_nothing() {
    let env = Env::datastore();
    env.ok(&["vm", "create", "v", "--disk", "1M", "--disk", "1M"]);
    env.ok(&["disk", "snapshot", "v/v_1", "taken"]);
    env.ok(&["vm", "snapshot", "v", "s1"]);
    let before = env.snapshot_share();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["vm", "snapshot", "nope", "s"],
            "VM \"nope\" does not exist",
        ),
        (
            vec!["vm", "snapshot", "v", "s1"],
            "VM v already has a snapshot \"s1\"",
        ),
        (
            vec!["vm", "snapshot", "v", "taken"],
            "disk v/v_1 already has a snapshot \"taken\"",
        ),
        (vec!["vm", "snapshot", "v", "../x"], "invalid snapshot name"),
        (vec!["vm", "snapshot", "v", ".hidden"], "starts with '.'"),
        (
            vec!["vm", "snapshot", "revert", "v", "nope"],
            "VM v has no snapshot \"nope\"",
        ),
        (
            vec!["vm", "snapshot", "delete", "v", "nope"],
            "VM v has no snapshot \"nope\"",
        ),
        (
            vec!["vm", "snapshot", "list", "nope"],
            "VM \"nope\" does not exist",
        ),
    ];
    for (args, expected) in cases {
        let err = env.fails(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // A disk snapshot lost behind cvol's back (here removed from the pool) is named by
    // fsck, and the revert is refused with nothing changed.
    std::fs::remove_file(
        env.volume_file("v/v_1")
            .with_file_name("snapshots")
            .join("s1"),
    )
    .unwrap();
    let out = env.run(&["datastore", "fsck"]);
    let found = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{found}");
    assert!(
        found.contains("v/.snapshots/s1: disk v_1's volume")
            && found.contains("has no snapshot \"s1\""),
        "{found}"
    );
    let err = env.fails(&["vm", "snapshot", "revert", "v", "s1"]);
    assert!(err.contains("has no snapshot \"s1\""), "{err}");
    env.ok(&["vm", "snapshot", "delete", "v", "s1"]);
    env.ok(&["datastore", "fsck"]);
    env.ok(&["vm", "snapshot", "v", "s1"]);

    // A disk held by a host (here a container with it open) blocks a revert.
    let m = env.mount(false);
    let open = std::fs::File::open(m.path("v/v-flat.vmdk")).unwrap();
    let err = env.fails(&["vm", "snapshot", "revert", "v", "s1"]);
    assert!(err.contains("is attached to host"), "{err}");
    drop(open);
    m.stop();
    // A record that is not TOML is named with its line.
    std::fs::write(env.share.join("v/.snapshots/s1"), "name = \n").unwrap();
    let err = env.fails(&["vm", "snapshot", "revert", "v", "s1"]);
    assert!(err.contains("v/.snapshots/s1"), "{err}");
    std::fs::write(env.share.join("v/.snapshots/s1"), "").unwrap();
    let mut after = env.snapshot_share();
    after.retain(|(p, _)| !p.ends_with("s1"));
    let mut expected = before;
    expected.retain(|(p, _)| !p.ends_with("s1"));
    assert_eq!(after, expected, "refused requests changed the share");
}

fn vmx(env: &Env, vm: &str) -> String {
    std::fs::read_to_string(env.share.join(format!("{vm}/{vm}.vmx"))).unwrap()
}

/// Clones copy every disk and the .vmx under the new name, and share nothing with their
/// origin afterwards; templates are cloned, never started.
fn clones_and_templates(env: Env) {
    env.ok(&["vm", "create", "web", "--disk", "1M", "--disk", "2M"]);
    env.ok(&["vm", "set", "web", "--cmdline", "console=ttyS0"]);
    write_to(&env, "web", &["web", "web_1"], 0x11);

    let clone = env.json(&["vm", "clone", "web", "web2"]);
    let names: Vec<&str> = clone["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web2", "web2_1"], "{clone}");
    assert_eq!(clone["problems"], serde_json::json!([]), "{clone}");
    assert_eq!(
        contents_of(&env, "web2", &["web2", "web2_1"]),
        vec![(0x11, 1 << 20), (0x11, 2 << 20)]
    );
    let copy = vmx(&env, "web2");
    for line in [
        "displayName = \"web2\"",
        "scsi0:0.fileName = \"web2.vmdk\"",
        "scsi0:1.fileName = \"web2_1.vmdk\"",
        "cvol.cmdline = \"console=ttyS0\"",
        "uuid.bios = ",
    ] {
        assert!(copy.contains(line), "{line} not in {copy}");
    }
    assert!(!copy.contains("web.vmdk"), "{copy}");
    let uuid = |vmx: &str| {
        vmx.lines()
            .find(|l| l.starts_with("uuid.bios = "))
            .map(str::to_string)
    };
    assert!(
        uuid(&vmx(&env, "web")).is_some(),
        "a new VM has a BIOS uuid"
    );
    assert_ne!(
        uuid(&copy),
        uuid(&vmx(&env, "web")),
        "the clone kept its origin's uuid"
    );

    // Isolation both ways.
    write_to(&env, "web2", &["web2", "web2_1"], 0x22);
    assert_eq!(contents_of(&env, "web", &["web"]), vec![(0x11, 1 << 20)]);
    write_to(&env, "web", &["web"], 0x33);
    assert_eq!(contents_of(&env, "web2", &["web2"]), vec![(0x22, 1 << 20)]);

    // From a snapshot: the VM as it was then, whatever came after.
    env.ok(&["vm", "snapshot", "web", "s1"]);
    write_to(&env, "web", &["web"], 0x44);
    env.ok(&["vm", "set", "web", "--cmdline", "later"]);
    env.ok(&["vm", "clone", "web", "web3", "--snapshot", "s1"]);
    assert_eq!(
        contents_of(&env, "web3", &["web3", "web3_1"]),
        vec![(0x33, 1 << 20), (0x11, 2 << 20)]
    );
    assert!(vmx(&env, "web3").contains("console=ttyS0"));

    // A template is cloned, never started.
    env.ok(&["vm", "template", "web"]);
    let listed = env.ok(&["vm", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("template")),
        "{listed}"
    );
    let mnt = env.tmp.path().join("mnt");
    let mnt = mnt.to_str().unwrap();
    let refused = env.fails(&["vm", "start", "web", "--container", mnt, "--dry-run"]);
    assert!(refused.contains("VM web is a template"), "{refused}");
    let from_template = env.json(&["vm", "clone", "web", "web4"]);
    assert!(
        from_template["options"].get("cvol.template").is_none(),
        "{from_template}"
    );
    env.ok(&["vm", "start", "web4", "--container", mnt, "--dry-run"]);
    env.ok(&["vm", "template", "web", "--off"]);
    env.ok(&["vm", "start", "web", "--container", mnt, "--dry-run"]);

    // A linked clone pins its origin's snapshot and VM until it goes.
    env.ok(&["vm", "clone", "web", "web5", "--snapshot", "s1", "--linked"]);
    assert!(vmx(&env, "web5").contains("cvol.linkedFrom = \"web@s1\""));
    assert_eq!(contents_of(&env, "web5", &["web5"]), vec![(0x33, 1 << 20)]);
    for (args, what) in [
        (
            vec!["vm", "snapshot", "delete", "web", "s1"],
            "deleting snapshot web@s1",
        ),
        (vec!["vm", "delete", "web"], "deleting VM web"),
        (
            vec!["disk", "delete", "web/web_1"],
            "deleting disk web/web_1",
        ),
    ] {
        let err = env.fails(&args);
        assert!(
            err.contains(&format!("not {what}: linked clones depend on it: web5")),
            "{args:?}: {err}"
        );
    }
    // A clone of a linked clone is a full one.
    env.ok(&["vm", "clone", "web5", "web6"]);
    assert!(!vmx(&env, "web6").contains("linkedFrom"));
    env.ok(&["vm", "delete", "web6"]);
    env.ok(&["vm", "delete", "web5"]);

    // Full clones outlive their origin.
    env.ok(&["vm", "delete", "web"]);
    assert_eq!(
        contents_of(&env, "web3", &["web3", "web3_1"]),
        vec![(0x33, 1 << 20), (0x11, 2 << 20)]
    );
    env.ok(&["datastore", "fsck"]);

    // Refused, with nothing half-made.
    let volumes = env.volumes();
    let before = env.snapshot_share();
    let m = env.mount(false);
    let open = std::fs::File::open(m.path("web2/web2-flat.vmdk")).unwrap();
    for (args, expected) in [
        (
            vec!["vm", "clone", "web2", "web3"],
            "VM \"web3\" already exists",
        ),
        (
            vec!["vm", "clone", "nope", "x"],
            "VM \"nope\" does not exist",
        ),
        (
            vec!["vm", "clone", "web3", "x", "--snapshot", "nope"],
            "VM web3 has no snapshot \"nope\"",
        ),
        (
            vec!["vm", "clone", "web2", "x"],
            "disk web2 is in use on host",
        ),
        (vec!["vm", "clone", "web2", "../x"], "invalid VM name"),
    ] {
        let err = env.fails(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    drop(open);
    m.stop();
    assert_eq!(env.volumes(), volumes, "a refused clone left a volume");
    assert_eq!(
        env.snapshot_share(),
        before,
        "a refused clone changed the share"
    );
}

#[test]
fn clones_and_templates_on_a_local_share() {
    clones_and_templates(Env::datastore());
}

#[test]
fn clones_and_templates_on_an_object_pool() {
    clones_and_templates(Env::datastore_on_object());
}

#[test]
fn clones_and_templates_with_a_remote_provider() {
    clones_and_templates(Env::datastore_on_remote());
}
