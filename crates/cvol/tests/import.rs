//! Images in and out through the CLI: disk images of every format qemu-img writes,
//! VMware VM folders and OVA packages become VMs and disks with the same bytes; disks
//! go out as qcow2, raw or vmdk; bad sources and crashes leave nothing behind.

mod common;

use std::path::{Path, PathBuf};

use common::{tool, tool_output, Env, Tmpfs};

/// A 64 MiB raw image with data at two places and holes elsewhere.
fn source(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let path = dir.join(name);
    let p = path.to_str().unwrap();
    tool("qemu-img", &["create", "-q", "-f", "raw", p, "64M"]);
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            &format!("write -P {byte} 0 64k"),
            "-c",
            &format!("write -P {} 5M 128k", byte ^ 0xff),
            p,
        ],
    );
    path
}

/// `raw` converted to `format` (with creation options) at `to`.
fn convert(raw: &Path, format: &str, options: &[&str], to: &Path) {
    let mut args = vec!["convert", "-f", "raw", "-O", format];
    args.extend(options);
    args.extend([raw.to_str().unwrap(), to.to_str().unwrap()]);
    tool("qemu-img", &args);
}

/// Whether images `a` and `b` hold the same bytes (formats probed).
fn same(a: &Path, b: &Path) -> bool {
    tool_output(
        "qemu-img",
        &["compare", "-q", a.to_str().unwrap(), b.to_str().unwrap()],
    )
    .status
    .success()
}

/// Disk `vm/disk` exported raw into the test's folder; its path.
fn exported(env: &Env, disk: &str) -> PathBuf {
    let out = env
        .tmp
        .path()
        .join(format!("{}.out.raw", disk.replace('/', "_")));
    let _ = std::fs::remove_file(&out);
    env.ok(&[
        "disk",
        "export",
        disk,
        out.to_str().unwrap(),
        "--format",
        "raw",
    ]);
    out
}

fn images_round_trip(env: Env) {
    let dir = env.tmp.path();
    let raw = source(dir, "src.raw", 0x5a);
    env.ok(&["vm", "create", "v", "--disk", "1M"]);
    let formats: [(&str, &[&str]); 5] = [
        ("qcow2", &[]),
        ("raw", &[]),
        ("vmdk", &["-o", "subformat=monolithicSparse"]),
        ("vmdk", &["-o", "subformat=streamOptimized"]),
        ("vpc", &["-o", "subformat=dynamic"]),
    ];
    for (i, (format, options)) in formats.iter().enumerate() {
        let image = dir.join(format!("image{i}.{format}"));
        convert(&raw, format, options, &image);
        let disk = env.json(&["disk", "import", "v", image.to_str().unwrap()]);
        let name = disk["name"].as_str().unwrap().to_string();
        assert_eq!(name, format!("v_{}", i + 1), "{disk}");
        assert!(disk["size"].as_u64().unwrap() >= 64 << 20, "{disk}");
        let copy = exported(&env, &format!("v/{name}"));
        assert!(
            same(&copy, &image),
            "{format} {options:?}: the bytes differ"
        );
        // 192 KiB of data: a file pool's blocks, or two of an object pool's chunks.
        if let Some(allocated) = disk["allocated"].as_u64() {
            assert!(
                allocated <= 16 << 20,
                "{format}: a thin image became thick ({allocated} bytes)"
            );
        }
    }
    // Through the container too.
    let m = env.mount(false);
    let flat = m.path("v/v_1-flat.vmdk");
    assert!(same(&flat, &raw), "the container shows other bytes");
    m.stop();

    // Out in each format.
    for format in ["qcow2", "vmdk", "raw"] {
        let out = dir.join(format!("out.{format}"));
        env.ok(&[
            "disk",
            "export",
            "v/v_1",
            out.to_str().unwrap(),
            "--format",
            format,
        ]);
        let info = tool(
            "qemu-img",
            &["info", "--output=json", out.to_str().unwrap()],
        );
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], format);
        assert!(same(&out, &raw), "{format}: the bytes differ");
        let refused = env.fails(&["disk", "export", "v/v_1", out.to_str().unwrap()]);
        assert!(refused.contains("not overwriting"), "{refused}");
    }
    // A snapshot goes out even while the disk is in use, as it was when taken.
    env.ok(&["disk", "snapshot", "v/v_1", "before"]);
    let volumes = env.volumes();
    let m = env.mount(false);
    let flat = m.path("v/v_1-flat.vmdk");
    tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x99 0 64k",
            flat.to_str().unwrap(),
        ],
    );
    let open = std::fs::File::open(&flat).unwrap();
    let busy = env.fails(&[
        "disk",
        "export",
        "v/v_1",
        dir.join("x.qcow2").to_str().unwrap(),
    ]);
    assert!(busy.contains("is in use on host"), "{busy}");
    assert!(!dir.join("x.qcow2").exists());
    let then = dir.join("then.qcow2");
    env.ok(&["disk", "export", "v/v_1@before", then.to_str().unwrap()]);
    assert!(
        same(&then, &raw),
        "the snapshot's export differs from the source"
    );
    let missing = env.fails(&[
        "disk",
        "export",
        "v/v_1@nope",
        dir.join("y.qcow2").to_str().unwrap(),
    ]);
    assert!(missing.contains("has no snapshot \"nope\""), "{missing}");
    assert!(!dir.join("y.qcow2").exists());
    drop(open);
    m.stop();
    assert_eq!(env.volumes(), volumes, "an export left a volume behind");
    env.ok(&["datastore", "fsck"]);
}

#[test]
fn images_of_every_format_go_in_and_out_on_a_local_share() {
    images_round_trip(Env::datastore());
}

#[test]
fn images_of_every_format_go_in_and_out_on_an_object_pool() {
    images_round_trip(Env::datastore_on_object());
}

#[test]
fn images_of_every_format_go_in_and_out_with_a_remote_provider() {
    images_round_trip(Env::datastore_on_remote());
}

/// A VMware VM folder: `legacy.vmx` with two disks (and a CD-ROM, which is no disk).
fn vmware_folder(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let folder = dir.join("legacy");
    std::fs::create_dir_all(&folder).unwrap();
    let (a, b) = (source(dir, "a.raw", 0x11), source(dir, "b.raw", 0x22));
    convert(
        &a,
        "vmdk",
        &["-o", "subformat=monolithicSparse"],
        &folder.join("legacy.vmdk"),
    );
    convert(
        &b,
        "vmdk",
        &["-o", "subformat=streamOptimized"],
        &folder.join("data.vmdk"),
    );
    std::fs::write(
        folder.join("legacy.vmx"),
        ".encoding = \"UTF-8\"\nconfig.version = \"8\"\ndisplayName = \"legacy\"\n\
         memSize = \"512\"\nnumvcpus = \"2\"\n\
         scsi0.present = \"TRUE\"\nscsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"data.vmdk\"\n\
         scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"legacy.vmdk\"\n\
         ide1:0.present = \"TRUE\"\nide1:0.deviceType = \"cdrom-image\"\nide1:0.fileName = \"setup.iso\"\n",
    )
    .unwrap();
    (folder, a, b)
}

/// An OVA: `appliance.ovf` naming one streamOptimized disk, 2 CPUs and 256 MiB.
fn ova(dir: &Path, with_ovf: bool) -> (PathBuf, PathBuf) {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    let raw = source(dir, "app.raw", 0x33);
    convert(
        &raw,
        "vmdk",
        &["-o", "subformat=streamOptimized"],
        &pkg.join("disk1.vmdk"),
    );
    let ovf = r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData">
  <References><File ovf:id="file1" ovf:href="disk1.vmdk"/></References>
  <DiskSection><Info>Disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="67108864"/>
  </DiskSection>
  <VirtualSystem ovf:id="appliance">
    <Info>A VM</Info>
    <VirtualHardwareSection><Info>Hardware</Info>
      <Item><rasd:ElementName>2 CPUs</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>256 MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>disk</rasd:ElementName><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#;
    std::fs::write(pkg.join("appliance.ovf"), ovf).unwrap();
    let path = dir.join(if with_ovf {
        "appliance.ova"
    } else {
        "broken.ova"
    });
    let mut members = vec!["disk1.vmdk"];
    if with_ovf {
        members.insert(0, "appliance.ovf");
    }
    let mut args = vec!["-C", pkg.to_str().unwrap(), "-cf", path.to_str().unwrap()];
    args.extend(members);
    tool("tar", &args);
    (path, raw)
}

#[test]
fn a_vmware_folder_and_an_ova_become_vms_with_their_settings() {
    let env = Env::datastore();
    let dir = env.tmp.path();
    let (folder, a, b) = vmware_folder(dir);
    let vm = env.json(&["vm", "import", folder.to_str().unwrap()]);
    assert_eq!(vm["name"], "legacy", "{vm}");
    assert_eq!(vm["memory_mib"], 512, "{vm}");
    assert_eq!(vm["cpus"], 2, "{vm}");
    assert_eq!(
        vm["vmx_disks"],
        serde_json::json!(["legacy.vmdk", "data.vmdk"]),
        "the disks in controller order, under their names"
    );
    assert!(same(&exported(&env, "legacy/legacy"), &a));
    assert!(same(&exported(&env, "legacy/data"), &b));

    let (package, raw) = ova(dir, true);
    let vm = env.json(&["vm", "import", package.to_str().unwrap()]);
    assert_eq!(vm["name"], "appliance", "{vm}");
    assert_eq!(vm["memory_mib"], 256, "{vm}");
    assert_eq!(vm["cpus"], 2, "{vm}");
    assert!(same(&exported(&env, "appliance/appliance"), &raw));

    // A plain image, under a name of one's own, with settings of one's own.
    let vm = env.json(&[
        "vm",
        "import",
        a.to_str().unwrap(),
        "--name",
        "plain",
        "--memory",
        "128",
    ]);
    assert_eq!(vm["memory_mib"], 128, "{vm}");
    assert_eq!(vm["cpus"], 1, "{vm}");
    assert!(same(&exported(&env, "plain/plain"), &a));
    env.ok(&["datastore", "fsck"]);
}

#[test]
fn bad_sources_and_crashes_leave_nothing_behind() {
    let env = Env::datastore();
    let dir = env.tmp.path();
    env.ok(&["vm", "create", "taken", "--disk", "1M"]);
    let (folder, a, _) = vmware_folder(dir);
    let (no_ovf, _) = ova(dir, false);
    // A real qcow2 whose header says clusters of 2^99 bytes.
    let corrupt = dir.join("corrupt.qcow2");
    convert(&a, "qcow2", &[], &corrupt);
    let mut bytes = std::fs::read(&corrupt).unwrap();
    bytes[20..24].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&corrupt, bytes).unwrap();
    let missing_disk = dir.join("missing");
    std::fs::create_dir_all(&missing_disk).unwrap();
    std::fs::write(
        missing_disk.join("m.vmx"),
        "scsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"gone.vmdk\"\n",
    )
    .unwrap();
    let text = dir.join("notes.ova");
    std::fs::write(&text, "not a tar archive at all, just words").unwrap();

    let volumes = env.volumes();
    let before = env.snapshot_share();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["vm".into(), "import".into(), p(&corrupt)],
            "not a disk image qemu-img can read",
        ),
        (
            vec!["disk".into(), "import".into(), "taken".into(), p(&corrupt)],
            "not a disk image qemu-img can read",
        ),
        (
            vec!["vm".into(), "import".into(), p(&no_ovf)],
            "no .ovf descriptor in this OVA",
        ),
        (vec!["vm".into(), "import".into(), p(&text)], "archive"),
        (
            vec!["vm".into(), "import".into(), p(&missing_disk)],
            "names disk \"gone.vmdk\" (scsi0:0), which is not there",
        ),
        (
            vec![
                "vm".into(),
                "import".into(),
                p(&a),
                "--name".into(),
                "taken".into(),
            ],
            "VM \"taken\" already exists",
        ),
        (
            vec!["vm".into(), "import".into(), p(&dir.join("nowhere.qcow2"))],
            "no such file or folder",
        ),
        (
            vec!["disk".into(), "import".into(), "nope".into(), p(&a)],
            "VM \"nope\" does not exist",
        ),
        (
            vec![
                "vm".into(),
                "import".into(),
                p(&a),
                "--name".into(),
                "a/b".into(),
            ],
            "give the VM a name of your own with --name",
        ),
    ];
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let err = env.fails(&args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(env.volumes(), volumes, "a refused import left a volume");
    assert_eq!(
        env.snapshot_share(),
        before,
        "a refused import changed the share"
    );

    // A crash while a snapshot is exported leaves its short-lived volume to fsck.
    env.ok(&["disk", "snapshot", "taken/taken", "s"]);
    let out = env.run_with_env(
        &[
            "disk",
            "export",
            "taken/taken@s",
            dir.join("s.qcow2").to_str().unwrap(),
        ],
        &[("CVOL_FAILPOINT", "snapshot-read:volume-created")],
    );
    assert!(!out.status.success(), "the export did not die");
    assert_eq!(env.volumes(), volumes + 1, "no short-lived volume was made");
    assert_eq!(env.run(&["datastore", "fsck"]).status.code(), Some(4));
    env.ok(&["datastore", "fsck", "--repair"]);
    assert_eq!(env.volumes(), volumes, "fsck left the short-lived volume");
    let _ = std::fs::remove_file(dir.join("s.qcow2"));

    // A crash half-way through an import is undone by fsck.
    for (args, step) in [
        (
            vec!["vm", "import", folder.to_str().unwrap()],
            "vm-import:filled",
        ),
        (
            vec!["disk", "import", "taken", a.to_str().unwrap()],
            "disk-import:filled",
        ),
    ] {
        let out = env.run_with_env(&args, &[("CVOL_FAILPOINT", step)]);
        assert!(!out.status.success(), "{step}: the process did not die");
        assert_eq!(env.run(&["datastore", "fsck"]).status.code(), Some(4));
        env.ok(&["datastore", "fsck", "--repair"]);
        assert_eq!(env.volumes(), volumes, "{step}: a volume leaked");
        assert_eq!(env.snapshot_share(), before, "{step}: the share changed");
    }
}

/// A pool without room for the image: the import fails, saying so, and leaves nothing.
#[test]
fn an_import_into_a_full_pool_fails_and_leaves_nothing() {
    let env = Env::empty();
    let pool = Tmpfs::mount(&env.tmp.path().join("small-pool"), "4m");
    env.create_datastore_with(&format!("pool=file:{}", pool.0.display()));
    let dir = env.tmp.path();
    let raw = dir.join("full.raw");
    let p = raw.to_str().unwrap();
    tool("qemu-img", &["create", "-q", "-f", "raw", p, "16M"]);
    tool("qemu-io", &["-f", "raw", "-c", "write -P 0x77 0 12M", p]);
    let before = env.snapshot_share();
    let err = env.fails(&["vm", "import", p, "--name", "big"]);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(
        env.snapshot_share(),
        before,
        "a failed import changed the share"
    );
    let left: Vec<_> = std::fs::read_dir(pool.0.join("volumes")).unwrap().collect();
    assert!(left.is_empty(), "a failed import left volumes: {left:?}");
    env.ok(&["datastore", "fsck"]);
}
