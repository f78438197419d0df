use super::*;
use crate::{BlockError, NoProgress};

fn pool() -> (tempfile::TempDir, FileProvider) {
    let dir = tempfile::tempdir().unwrap();
    let provider = FileProvider::open(&ProviderId::new("pool").unwrap(), dir.path()).unwrap();
    (dir, provider)
}

fn blank(size: u64) -> VolumeSource {
    VolumeSource::Blank { size }
}

fn read_all(p: &FileProvider, id: &VolumeId) -> Vec<u8> {
    let att = p.attach(id, "reader", false).unwrap();
    let mut buf = vec![0; att.device.size() as usize];
    att.device.read_at(&mut buf, 0).unwrap();
    p.detach(id, "reader").unwrap();
    buf
}

#[test]
fn create_is_sparse_and_listed() {
    let (dir, p) = pool();
    let id = VolumeId::generate();
    let v = p
        .create_volume(&id, &blank(64 << 20), "ds-uuid", &NoProgress)
        .unwrap();
    assert_eq!((v.size, v.owner.as_str()), (64 << 20, "ds-uuid"));
    let data = dir.path().join("volumes").join(id.as_str()).join("data");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::metadata(&data).unwrap().blocks(),
        0,
        "a new volume allocates nothing"
    );
    assert_eq!(p.list_volumes().unwrap(), vec![v]);
    assert!(matches!(
        p.create_volume(&id, &blank(512), "x", &NoProgress),
        Err(ProviderError::VolumeExists { .. })
    ));
    assert!(fs::read_dir(dir.path().join(".staging"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn refuses_bad_sizes_and_shrinks() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    for size in [0, 1000] {
        assert!(matches!(
            p.create_volume(&id, &blank(size), "o", &NoProgress),
            Err(ProviderError::InvalidSize { .. })
        ));
    }
    assert!(
        p.list_volumes().unwrap().is_empty(),
        "a refused create leaves nothing"
    );
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    assert_eq!(p.resize_volume(&id, 2 << 20, false).unwrap().size, 2 << 20);
    let err = p.resize_volume(&id, 1 << 20, false).unwrap_err();
    assert!(err.to_string().contains("would lose data"), "{err}");
    assert_eq!(p.resize_volume(&id, 1 << 20, true).unwrap().size, 1 << 20);
}

#[test]
fn snapshots_and_clones_copy_content_and_stay_independent() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(8 << 20), "o", &NoProgress)
        .unwrap();
    let att = p.attach(&id, "h1", false).unwrap();
    att.device.write_at(b"before snapshot", 4096).unwrap();
    att.device.flush().unwrap();
    let snap = SnapshotName::new("s1").unwrap();
    p.create_snapshot(&id, &snap, &NoProgress).unwrap();
    att.device.write_at(b"AFTER", 4096).unwrap();
    p.detach(&id, "h1").unwrap();

    let from_snap = VolumeId::generate();
    p.create_volume(
        &from_snap,
        &VolumeSource::Snapshot(id.clone(), snap.clone()),
        "o",
        &NoProgress,
    )
    .unwrap();
    let from_vol = VolumeId::generate();
    p.create_volume(
        &from_vol,
        &VolumeSource::Volume(id.clone()),
        "o",
        &NoProgress,
    )
    .unwrap();

    assert_eq!(&read_all(&p, &from_snap)[4096..4111], b"before snapshot");
    assert_eq!(read_all(&p, &from_vol), read_all(&p, &id));
    let clone = p.attach(&from_vol, "h1", false).unwrap();
    clone.device.write_at(b"clone only", 0).unwrap();
    assert_eq!(
        &read_all(&p, &id)[..10],
        &[0; 10],
        "writes to a clone never reach the origin"
    );

    assert_eq!(p.list_snapshots(&id).unwrap().len(), 1);
    assert!(matches!(
        p.create_snapshot(&id, &snap, &NoProgress),
        Err(ProviderError::SnapshotExists { .. })
    ));
    p.delete_snapshot(&id, &snap).unwrap();
    assert!(p.delete_snapshot(&id, &snap).unwrap_err().is_not_found());
}

#[test]
fn attachment_is_exclusive_to_one_host() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    p.attach(&id, "host-a", false).unwrap();
    p.attach(&id, "host-a", false).unwrap();
    assert_eq!(
        p.volume(&id).unwrap().attached_to.as_deref(),
        Some("host-a")
    );
    let err = p.attach(&id, "host-b", false).unwrap_err();
    assert!(
        err.to_string().contains("attached to host \"host-a\""),
        "{err}"
    );
    assert!(matches!(
        p.delete_volume(&id),
        Err(ProviderError::AttachedElsewhere { .. })
    ));
    p.detach(&id, "host-b").unwrap();
    p.detach(&id, "host-a").unwrap();
    p.attach(&id, "host-b", false).unwrap();
    p.detach(&id, "host-b").unwrap();
    p.delete_volume(&id).unwrap();
    assert!(p.volume(&id).unwrap_err().is_not_found());
    assert!(p.delete_volume(&id).unwrap_err().is_not_found());
}

#[test]
fn forced_takeover_fences_the_old_holder() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    let old = p.attach(&id, "host-a", false).unwrap();
    old.device.write_at(b"a was here", 0).unwrap();
    let new = p.attach(&id, "host-b", true).unwrap();
    assert!(new.generation > old.generation);
    assert_eq!(
        p.volume(&id).unwrap().attached_to.as_deref(),
        Some("host-b")
    );
    for refused in [
        old.device.write_at(b"a again", 0),
        old.device.flush(),
        old.device.discard(0, 512),
        old.device.write_zeroes(0, 512),
    ] {
        match refused {
            Err(BlockError::Fenced {
                generation,
                current,
            }) => assert_eq!((generation, current), (old.generation, new.generation)),
            other => panic!("the old holder was not fenced: {other:?}"),
        }
    }
    new.device.write_at(b"b", 0).unwrap();
    new.device.flush().unwrap();
    let mut buf = [0u8; 10];
    old.device.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"b was here");
    // The old holder's detach does not touch the new holder's attachment.
    p.detach(&id, "host-a").unwrap();
    new.device.write_at(b"B", 0).unwrap();
    p.detach(&id, "host-b").unwrap();
    assert!(matches!(new.device.flush(), Err(BlockError::Fenced { .. })));
    let again = p.attach(&id, "host-a", false).unwrap();
    assert!(again.generation > new.generation);
    again.device.flush().unwrap();
}

#[test]
fn takeover_waits_for_changes_in_flight() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(64 << 20), "o", &NoProgress)
        .unwrap();
    let old = p.attach(&id, "host-a", false).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..4u64)
            .map(|t| {
                let (dev, stop) = (&old.device, &stop);
                s.spawn(move || {
                    let block = vec![0xa0 | t as u8; 1 << 16];
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let offset = ((n * 4 + t) % 1024) * (1 << 16);
                        if dev.write_at(&block, offset).is_err() {
                            return true;
                        }
                        n += 1;
                    }
                    false
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let new = p.attach(&id, "host-b", true).unwrap();
        // Once the takeover returned, nothing of host-a lands any more.
        new.device.write_zeroes(0, 64 << 20).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            assert!(w.join().unwrap(), "a writer of host-a was never fenced");
        }
        let mut buf = vec![1u8; 64 << 20];
        new.device.read_at(&mut buf, 0).unwrap();
        assert!(
            buf.iter().all(|&b| b == 0),
            "host-a wrote after the takeover"
        );
    });
}

#[test]
fn device_checks_ranges_and_zeroes() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    let dev = p.attach(&id, "h", false).unwrap().device;
    dev.write_at(&[0xff; 8192], 0).unwrap();
    dev.discard(0, 4096).unwrap();
    dev.write_zeroes(4096, 2048).unwrap();
    let mut buf = vec![1; 8192];
    dev.read_at(&mut buf, 0).unwrap();
    assert!(buf[..6144].iter().all(|&b| b == 0));
    assert!(buf[6144..].iter().all(|&b| b == 0xff));
    for (offset, len) in [(1 << 20, 1), ((1 << 20) - 1, 2), (u64::MAX, 2)] {
        assert!(matches!(
            dev.write_at(&vec![0; len], offset),
            Err(BlockError::OutOfRange { .. })
        ));
        assert!(matches!(
            dev.discard(offset, len as u64),
            Err(BlockError::OutOfRange { .. })
        ));
    }
}

#[test]
fn extents_map_data_and_holes() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(64 << 20), "o", &NoProgress)
        .unwrap();
    let dev = p.attach(&id, "h", false).unwrap().device;
    assert_eq!(
        dev.extents(0, 64 << 20).unwrap(),
        [crate::BlockExtent {
            length: 64 << 20,
            hole: true
        }]
    );
    dev.write_at(&[1; 4096], 8 << 20).unwrap();
    let runs = dev.extents(0, 64 << 20).unwrap();
    assert_eq!(runs.iter().map(|r| r.length).sum::<u64>(), 64 << 20);
    let data: Vec<_> = runs
        .iter()
        .scan(0, |pos, r| {
            let at = *pos;
            *pos += r.length;
            Some((at, *r))
        })
        .filter(|(_, r)| !r.hole)
        .collect();
    assert_eq!(data.len(), 1);
    assert!(data[0].0 <= 8 << 20 && data[0].0 + data[0].1.length >= (8 << 20) + 4096);
    assert!(dev.extents(60 << 20, 8 << 20).is_err(), "beyond the end");
}

#[test]
fn unusable_pools_are_refused() {
    let id = ProviderId::new("p").unwrap();
    let err = FileProvider::open(&id, Path::new("/nonexistent/pool")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider p: pool /nonexistent/pool: does not exist"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"").unwrap();
    assert!(FileProvider::open(&id, &file)
        .unwrap_err()
        .to_string()
        .ends_with("is not a directory"));
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o555)).unwrap();
    let err = FileProvider::open(&id, dir.path()).unwrap_err();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(err.to_string().ends_with("is read-only"), "{err}");
}

#[test]
fn interrupted_work_is_reclaimed_after_the_grace_period() {
    let (dir, p) = pool();
    let leftover = dir.path().join(".staging").join("vol-x.deleted-1");
    fs::create_dir_all(leftover.join("snapshots")).unwrap();
    assert!(
        p.reclaim_interrupted(true).unwrap().is_empty(),
        "young leftovers may be in use"
    );
    let old = SystemTime::now() - STAGING_GRACE - Duration::from_secs(1);
    File::open(&leftover).unwrap().set_modified(old).unwrap();
    assert_eq!(p.reclaim_interrupted(false).unwrap().len(), 1);
    assert!(leftover.exists(), "a dry run removes nothing");
    assert_eq!(p.reclaim_interrupted(true).unwrap().len(), 1);
    assert!(!leftover.exists());
}

#[test]
fn a_standby_reads_the_owners_writes_and_promotion_fences_the_owner() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    let owner = p.attach(&id, "src", false).unwrap();
    let standby = p.attach_standby(&id, "dst").unwrap();
    assert_eq!(
        standby.generation, owner.generation,
        "a standby changes nothing"
    );
    assert_eq!(p.volume(&id).unwrap().attached_to.as_deref(), Some("src"));
    owner.device.write_at(b"src", 0).unwrap();
    owner.device.flush().unwrap();
    let mut buf = [0u8; 3];
    standby.device.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"src");
    for refused in [
        standby.device.write_at(b"dst", 0),
        standby.device.discard(0, 512),
        standby.device.write_zeroes(0, 512),
    ] {
        assert!(matches!(refused, Err(BlockError::Standby)), "{refused:?}");
    }
    standby.device.flush().unwrap();
    let promoted = p.attach(&id, "dst", true).unwrap();
    assert!(promoted.generation > owner.generation);
    assert!(matches!(
        owner.device.write_at(b"late", 0),
        Err(BlockError::Fenced { .. })
    ));
    promoted.device.write_at(b"dst", 0).unwrap();
    promoted.device.flush().unwrap();
    standby.device.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"dst", "the promoted host's write");
}

#[test]
fn revert_brings_back_a_snapshots_data_and_size_and_keeps_every_snapshot() {
    let (_dir, p) = pool();
    let id = VolumeId::generate();
    p.create_volume(&id, &blank(1 << 20), "o", &NoProgress)
        .unwrap();
    let (s1, s2) = (
        SnapshotName::new("s1").unwrap(),
        SnapshotName::new("s2").unwrap(),
    );
    let att = p.attach(&id, "h1", false).unwrap();
    att.device.write_at(b"first", 0).unwrap();
    p.create_snapshot(&id, &s1, &NoProgress).unwrap();
    p.resize_volume(&id, 2 << 20, false).unwrap();
    let att = p.attach(&id, "h1", false).unwrap();
    att.device.write_at(b"second", 0).unwrap();
    att.device.flush().unwrap();
    p.create_snapshot(&id, &s2, &NoProgress).unwrap();
    att.device.write_at(b"third!", 0).unwrap();
    let held = p.revert_volume(&id, &s1, &NoProgress).unwrap_err();
    assert!(
        matches!(&held, ProviderError::AttachedElsewhere { holder, .. } if holder == "h1"),
        "{held}"
    );
    p.detach(&id, "h1").unwrap();
    assert_eq!(
        &read_all(&p, &id)[..6],
        b"third!",
        "a refused revert changed data"
    );

    for _ in 0..2 {
        assert_eq!(
            p.revert_volume(&id, &s1, &NoProgress).unwrap().size,
            1 << 20
        );
        assert_eq!(&read_all(&p, &id)[..6], b"first\0");
    }
    assert_eq!(
        p.revert_volume(&id, &s2, &NoProgress).unwrap().size,
        2 << 20
    );
    assert_eq!(&read_all(&p, &id)[..6], b"second");
    assert_eq!(p.list_snapshots(&id).unwrap().len(), 2);
    let missing = SnapshotName::new("nope").unwrap();
    assert!(matches!(
        p.revert_volume(&id, &missing, &NoProgress),
        Err(ProviderError::SnapshotNotFound { .. })
    ));
    assert_eq!(p.reclaim_interrupted(false).unwrap(), Vec::<String>::new());
}
