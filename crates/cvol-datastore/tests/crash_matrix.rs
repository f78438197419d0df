//! A crash after any step of any multi-step operation leaves a datastore that
//! `fsck --repair` brings back to "all done" or "nothing done", with no leaked volume.
//!
//! The crash is a panic thrown from the operation's fail point: nothing after it runs,
//! neither the remaining steps nor any in-process undo, just as if the process died.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use cvol_datastore::{Datastore, DatastoreError, FsckOptions, VmSpec};
use cvol_format::{DiskName, ProviderConfig, ProviderId, SnapshotName, VmName};
use cvol_provider::NoProgress;
use cvol_share::{LocalShare, Share, SharePath};

struct Crash;

fn quiet_crashes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<Crash>().is_none() {
                default(info);
            }
        }));
    });
}

struct Fixture {
    _dir: tempfile::TempDir,
    share_dir: std::path::PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let share_dir = dir.path().join("share");
        let pool = dir.path().join("pool");
        std::fs::create_dir_all(&share_dir).unwrap();
        std::fs::create_dir_all(&pool).unwrap();
        let provider = ProviderConfig {
            id: ProviderId::new("pool").unwrap(),
            kind: "file".into(),
            settings: [("path".to_string(), pool.display().to_string())].into(),
        };
        Datastore::create(share(&share_dir), "test", vec![provider], "host-a").unwrap();
        Self {
            _dir: dir,
            share_dir,
        }
    }

    fn open(&self) -> Datastore {
        Datastore::open(share(&self.share_dir), "host-a").unwrap()
    }

    /// A datastore whose `crash_at`-th step (0-based) crashes; counts steps into `count`.
    fn crashing(
        &self,
        crash_at: usize,
        count: Arc<AtomicUsize>,
        names: Arc<Mutex<Vec<String>>>,
    ) -> Datastore {
        self.open().with_failpoint(Arc::new(move |step| {
            names.lock().unwrap().push(step.to_string());
            if count.fetch_add(1, Ordering::SeqCst) == crash_at {
                std::panic::panic_any(Crash);
            }
        }))
    }

    /// Everything that should be equal before an operation and after its undo.
    fn state(&self) -> (BTreeSet<String>, Vec<(String, Vec<u8>)>) {
        let ds = self.open();
        let volumes = ds
            .provider(&ProviderId::new("pool").unwrap())
            .unwrap()
            .list_volumes()
            .unwrap()
            .into_iter()
            .map(|v| v.id.to_string())
            .collect();
        let mut files = Vec::new();
        walk(&self.share_dir, &self.share_dir, &mut files);
        files.sort();
        (volumes, files)
    }

    fn repair_and_check_clean(&self) {
        let ds = self.open();
        // The "crashed" operation ran in this very process, which is alive: only an
        // expired grace period lets fsck take it for abandoned. (The CLI tests crash a
        // real process and repair with the default grace.)
        let options = FsckOptions {
            repair: true,
            intent_grace: Duration::ZERO,
        };
        let report = ds.fsck(&options).unwrap();
        assert!(
            report.is_clean(),
            "repair left problems: {:?}",
            report.problems
        );
        let again = ds.fsck(&FsckOptions::default()).unwrap();
        assert!(
            again.problems.is_empty(),
            "second fsck found: {:?}",
            again.problems
        );
        assert!(ds.pending_intents().unwrap().is_empty());
    }
}

fn share(dir: &Path) -> Arc<dyn Share> {
    Arc::new(LocalShare::open(dir).unwrap())
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if path.is_dir() {
            out.push((format!("{rel}/"), Vec::new()));
            walk(root, &path, out);
        } else {
            out.push((rel, std::fs::read(&path).unwrap()));
        }
    }
}

fn vm(name: &str) -> VmName {
    VmName::new(name).unwrap()
}

fn spec(disks: &[u64]) -> VmSpec {
    VmSpec {
        disks: disks.to_vec(),
        memory_mib: 256,
        cpus: 1,
        provider: None,
    }
}

/// Runs `op` once per step, crashing after that step; after each crash, repair must
/// leave exactly the state `expected` (computed on the fixture before `op`, or after
/// a full run of it), and every step must have been crashed at least once.
fn crash_after_every_step(
    setup: impl Fn(&Datastore),
    op: impl Fn(&Datastore) -> Result<(), DatastoreError>,
    undone: bool,
) -> Vec<String> {
    quiet_crashes();
    // A clean run tells how many steps there are and what "all done" looks like.
    let clean = Fixture::new();
    setup(&clean.open());
    let before = clean.state();
    let count = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(Mutex::new(Vec::new()));
    op(&clean.crashing(usize::MAX, count.clone(), names.clone())).unwrap();
    let after = clean.state();
    let steps = count.load(Ordering::SeqCst);
    assert!(steps >= 3, "operation has {steps} steps");
    let expected = if undone { before } else { after };

    for crash_at in 0..steps {
        let fixture = Fixture::new();
        setup(&fixture.open());
        // Fresh fixtures have fresh uuids; compare shapes through a second clean fixture.
        let ds = fixture.crashing(
            crash_at,
            Arc::new(AtomicUsize::new(0)),
            Arc::new(Mutex::new(Vec::new())),
        );
        let result = catch_unwind(AssertUnwindSafe(|| op(&ds)));
        assert!(result.is_err(), "step {crash_at} did not crash");
        drop(ds);
        fixture.repair_and_check_clean();
        let state = fixture.state();
        assert_eq!(
            shape(&state),
            shape(&expected),
            "after a crash at step {crash_at} ({}) and repair",
            names.lock().unwrap()[crash_at]
        );
    }
    let names = names.lock().unwrap().clone();
    names
}

/// What must match across fixtures: how many volumes, which files, and the content of
/// files that hold no per-fixture ids (the .vmx, but for its BIOS uuid).
fn shape(state: &(BTreeSet<String>, Vec<(String, Vec<u8>)>)) -> (usize, Vec<(String, String)>) {
    let files = state
        .1
        .iter()
        .filter(|(name, _)| !name.starts_with(".cvol/datastore.toml"))
        .map(|(name, content)| {
            let keep = name.ends_with(".vmx");
            let content = if keep {
                // Every VM gets a BIOS uuid of its own.
                String::from_utf8_lossy(content)
                    .lines()
                    .filter(|l| !l.starts_with("uuid.bios = "))
                    .map(|l| format!("{l}\n"))
                    .collect()
            } else {
                String::new()
            };
            (name.clone(), content)
        })
        .collect();
    (state.0.len(), files)
}

#[test]
fn vm_create_is_all_or_nothing() {
    let steps = crash_after_every_step(
        |_| {},
        |ds| {
            ds.vm_create(&vm("demo"), &spec(&[1 << 20, 2 << 20]))
                .map(drop)
        },
        true,
    );
    assert_eq!(
        steps,
        [
            "vm-create:intent-written",
            "vm-create:dir-created",
            "vm-create:volume-created",
            "vm-create:descriptor-written",
            "vm-create:filled",
            "vm-create:volume-created",
            "vm-create:descriptor-written",
            "vm-create:filled",
            "vm-create:vmx-written",
        ]
    );
}

#[test]
fn vm_delete_finishes() {
    crash_after_every_step(
        |ds| {
            ds.vm_create(&vm("demo"), &spec(&[1 << 20, 1 << 20]))
                .unwrap();
            ds.share()
                .create_new(&SharePath::new("demo/vmware.log").unwrap(), b"log")
                .unwrap();
        },
        |ds| ds.vm_delete(&vm("demo")),
        false,
    );
}

#[test]
fn disk_create_is_all_or_nothing() {
    crash_after_every_step(
        |ds| drop(ds.vm_create(&vm("demo"), &spec(&[1 << 20])).unwrap()),
        |ds| ds.disk_create(&vm("demo"), 1 << 20, None).map(drop),
        true,
    );
}

#[test]
fn disk_clone_is_all_or_nothing() {
    crash_after_every_step(
        |ds| {
            ds.vm_create(&vm("src"), &spec(&[1 << 20])).unwrap();
            ds.vm_create(&vm("dst"), &spec(&[])).unwrap();
            ds.disk_snapshot(
                &vm("src"),
                &DiskName::new("src").unwrap(),
                &SnapshotName::new("s").unwrap(),
                &NoProgress,
            )
            .unwrap();
        },
        |ds| {
            ds.disk_clone(
                (
                    &vm("src"),
                    &DiskName::new("src").unwrap(),
                    Some(&SnapshotName::new("s").unwrap()),
                ),
                (&vm("dst"), &DiskName::new("copy").unwrap()),
                &NoProgress,
            )
            .map(drop)
        },
        true,
    );
}

#[test]
fn disk_delete_finishes() {
    crash_after_every_step(
        |ds| {
            drop(
                ds.vm_create(&vm("demo"), &spec(&[1 << 20, 1 << 20]))
                    .unwrap(),
            )
        },
        |ds| ds.disk_delete(&vm("demo"), &DiskName::new("demo_1").unwrap()),
        false,
    );
}

#[test]
fn a_failing_step_is_undone_at_once() {
    let fixture = Fixture::new();
    let ds = fixture.open();
    let before = fixture.state();
    // The second volume's size is refused by the provider after the first was made.
    let err = ds
        .vm_create(&vm("demo"), &spec(&[1 << 20, 1000]))
        .unwrap_err();
    assert!(err.to_string().contains("invalid size 1000"), "{err}");
    assert_eq!(fixture.state(), before, "nothing of the failed VM is left");
    assert!(ds.pending_intents().unwrap().is_empty());
}

#[test]
fn operations_of_live_hosts_are_left_alone() {
    quiet_crashes();
    let fixture = Fixture::new();
    let ds = fixture.open().with_failpoint(Arc::new(|step| {
        if step == "vm-create:descriptor-written" {
            std::panic::panic_any(Crash);
        }
    }));
    assert!(catch_unwind(AssertUnwindSafe(
        || ds.vm_create(&vm("demo"), &spec(&[1 << 20]))
    ))
    .is_err());
    // Seen from another host, within the grace period, the operation may be running.
    let other = Datastore::open(share(&fixture.share_dir), "host-b").unwrap();
    let options = FsckOptions {
        repair: true,
        intent_grace: Duration::from_secs(3600),
    };
    let report = other.fsck(&options).unwrap();
    assert!(!report.is_clean());
    assert!(
        report.problems[0].what.contains("may still be running"),
        "{:?}",
        report.problems
    );
    assert_eq!(other.pending_intents().unwrap().len(), 1);
    assert_eq!(
        fixture.state().0.len(),
        1,
        "its volume is not taken for a leak"
    );
    // Past the grace period it is abandoned, and undone.
    let report = other
        .fsck(&FsckOptions {
            repair: true,
            intent_grace: Duration::ZERO,
        })
        .unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    assert!(fixture.state().0.is_empty());
}

#[test]
fn leaked_volumes_are_found_and_reclaimed() {
    let fixture = Fixture::new();
    let ds = fixture.open();
    ds.vm_create(&vm("demo"), &spec(&[1 << 20])).unwrap();
    let provider = ds.provider(&ProviderId::new("pool").unwrap()).unwrap();
    let leaked = cvol_format::VolumeId::generate();
    let owner = ds.config().uuid.to_string();
    provider
        .create_volume(
            &leaked,
            &cvol_provider::VolumeSource::Blank { size: 4096 },
            &owner,
            &NoProgress,
        )
        .unwrap();
    let foreign = cvol_format::VolumeId::generate();
    provider
        .create_volume(
            &foreign,
            &cvol_provider::VolumeSource::Blank { size: 4096 },
            "another-datastore",
            &NoProgress,
        )
        .unwrap();
    let report = ds.fsck(&FsckOptions::default()).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(report.problems[0].what.contains(leaked.as_str()));
    ds.fsck(&FsckOptions {
        repair: true,
        ..FsckOptions::default()
    })
    .unwrap();
    assert!(provider.volume(&leaked).unwrap_err().is_not_found());
    assert!(
        provider.volume(&foreign).is_ok(),
        "another datastore's volume is never touched"
    );
    assert_eq!(ds.vm_info(&vm("demo")).unwrap().disks.len(), 1);
}

fn snap(name: &str) -> SnapshotName {
    SnapshotName::new(name).unwrap()
}

#[test]
fn vm_snapshot_is_all_or_nothing() {
    crash_after_every_step(
        |ds| {
            drop(
                ds.vm_create(&vm("demo"), &spec(&[1 << 20, 1 << 20]))
                    .unwrap(),
            )
        },
        |ds| {
            ds.vm_snapshot_create(&vm("demo"), &snap("s"), false, &NoProgress)
                .map(drop)
        },
        true,
    );
}

#[test]
fn vm_snapshot_delete_finishes() {
    crash_after_every_step(
        |ds| {
            ds.vm_create(&vm("demo"), &spec(&[1 << 20, 1 << 20]))
                .unwrap();
            ds.vm_snapshot_create(&vm("demo"), &snap("s"), false, &NoProgress)
                .unwrap();
        },
        |ds| ds.vm_snapshot_delete(&vm("demo"), &snap("s")),
        false,
    );
}

#[test]
fn vm_snapshot_revert_finishes() {
    crash_after_every_step(
        |ds| {
            ds.vm_create(&vm("demo"), &spec(&[1 << 20, 1 << 20]))
                .unwrap();
            ds.vm_snapshot_create(&vm("demo"), &snap("s"), false, &NoProgress)
                .unwrap();
            ds.vm_set_option(&vm("demo"), "cvol.cmdline", Some("after"))
                .unwrap();
            ds.disk_resize(
                &vm("demo"),
                &DiskName::new("demo_1").unwrap(),
                2 << 20,
                false,
            )
            .unwrap();
        },
        |ds| ds.vm_snapshot_revert(&vm("demo"), &snap("s")).map(drop),
        false,
    );
}

#[test]
fn vm_clone_is_all_or_nothing() {
    crash_after_every_step(
        |ds| {
            ds.vm_create(&vm("src"), &spec(&[1 << 20, 1 << 20]))
                .unwrap();
            ds.vm_snapshot_create(&vm("src"), &snap("s"), false, &NoProgress)
                .unwrap();
        },
        |ds| {
            ds.vm_clone(&vm("src"), &vm("dst"), Some(&snap("s")), false, &NoProgress)
                .map(drop)
        },
        true,
    );
}
