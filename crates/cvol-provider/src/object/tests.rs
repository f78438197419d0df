use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{BlockDevice, BlockError, NoProgress};

const CHUNK: u64 = 64 << 10;

fn pool(dir: &std::path::Path, cache: usize) -> ObjectProvider {
    let url = format!("file://{}", dir.display());
    let settings = ObjectSettings {
        chunk_size: CHUNK,
        cache_bytes: cache,
        ..Default::default()
    };
    ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings).unwrap()
}

/// A pool that compresses and encrypts with `key`.
fn sealed_pool(dir: &std::path::Path, cache: usize, key: [u8; 32]) -> ObjectProvider {
    let url = format!("file://{}", dir.display());
    let settings = ObjectSettings {
        chunk_size: CHUNK,
        cache_bytes: cache,
        compression: true,
        key: Some(PoolKey(key)),
        ..Default::default()
    };
    ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings).unwrap()
}

fn blank(p: &ObjectProvider, size: u64) -> VolumeId {
    let id = VolumeId::generate();
    p.create_volume(&id, &VolumeSource::Blank { size }, "o", &NoProgress)
        .unwrap();
    id
}

fn read_all(device: &dyn BlockDevice) -> Vec<u8> {
    let mut buf = vec![0u8; device.size() as usize];
    device.read_at(&mut buf, 0).unwrap();
    buf
}

fn content(p: &ObjectProvider, id: &VolumeId) -> Vec<u8> {
    read_all(&*p.device(id, 0).unwrap())
}

/// Objects in the pool's `chunks/` and `logs/`: chunks, logs, flushes' `.wal`s.
fn chunk_objects(p: &ObjectProvider) -> usize {
    p.store.list(&p.layout.chunks()).unwrap().len() + p.store.list(&p.layout.logs()).unwrap().len()
}

/// The file of object `key` in the `file:///` pool in `dir`.
fn object_file(dir: &std::path::Path, key: &str) -> std::path::PathBuf {
    let top = if key.ends_with(".wal") {
        "logs"
    } else {
        "chunks"
    };
    dir.join(top).join(key)
}

/// Every version of volume `id`, oldest first: its object and its manifest.
fn versions_of(p: &ObjectProvider, id: &VolumeId) -> Vec<(String, Manifest)> {
    super::versions(&p.store, &p.layout, id)
        .unwrap()
        .into_iter()
        .map(|(_, meta)| {
            let manifest = p.store.get_manifest(&meta.location).unwrap().unwrap();
            (meta.location.to_string(), manifest)
        })
        .collect()
}

#[test]
fn flushed_writes_survive_and_unflushed_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 1 << 20);
    let a = p.attach(&id, "h", false).unwrap();
    // Across a chunk boundary, and the tail.
    a.device.write_at(b"hello", CHUNK - 2).unwrap();
    a.device.write_at(b"end", (1 << 20) - 3).unwrap();
    let mut buf = [0u8; 5];
    a.device.read_at(&mut buf, CHUNK - 2).unwrap();
    assert_eq!(&buf, b"hello", "reads see cached writes");
    assert_eq!(
        content(&p, &id),
        vec![0; 1 << 20],
        "nothing is visible before a flush"
    );
    a.device.flush().unwrap();
    let after = content(&p, &id);
    assert_eq!(&after[CHUNK as usize - 2..CHUNK as usize + 3], b"hello");
    assert_eq!(&after[(1 << 20) - 3..], b"end");
    // Written but never flushed: gone with the device, as with a crash.
    a.device.write_at(b"lost", 0).unwrap();
    drop(a);
    p.detach(&id, "h").unwrap();
    assert_eq!(content(&p, &id), after);
    let extents = p
        .attach(&id, "h", false)
        .unwrap()
        .device
        .extents(0, 1 << 20)
        .unwrap();
    assert_eq!(
        extents
            .iter()
            .filter(|e| !e.hole)
            .map(|e| e.length)
            .sum::<u64>(),
        3 * CHUNK,
        "{extents:?}"
    );
}

#[test]
fn a_small_cache_writes_back_early_and_reads_back_everything() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 4 * CHUNK as usize);
    let id = blank(&p, 64 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let data: Vec<u8> = (0..64 * CHUNK).map(|i| (i * 7 % 251) as u8).collect();
    for (n, piece) in data.chunks(100_000).enumerate() {
        device.write_at(piece, n as u64 * 100_000).unwrap();
    }
    assert!(
        chunk_objects(&p) > 0,
        "dirty chunks beyond the cache were uploaded early"
    );
    assert_eq!(read_all(&*device), data);
    device.flush().unwrap();
    assert_eq!(content(&p, &id), data);
}

#[test]
fn snapshots_and_clones_copy_no_data_and_stay_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 16 * CHUNK);
    let a = p.attach(&id, "h", false).unwrap();
    a.device.write_at(&[1; 4096], 0).unwrap();
    a.device.write_at(&[2; 4096], 9 * CHUNK).unwrap();
    a.device.flush().unwrap();
    let chunks = chunk_objects(&p);
    let snap = SnapshotName::new("s").unwrap();
    p.create_snapshot(&id, &snap, &NoProgress).unwrap();
    let clone = VolumeId::generate();
    p.create_volume(
        &clone,
        &VolumeSource::Snapshot(id.clone(), snap.clone()),
        "o",
        &NoProgress,
    )
    .unwrap();
    let live = VolumeId::generate();
    p.create_volume(&live, &VolumeSource::Volume(id.clone()), "o", &NoProgress)
        .unwrap();
    assert_eq!(
        chunk_objects(&p),
        chunks,
        "a snapshot or clone copied chunks"
    );
    let before = content(&p, &id);
    assert_eq!(content(&p, &clone), before);
    assert_eq!(content(&p, &live), before);

    let c = p.attach(&clone, "h", false).unwrap();
    c.device.write_at(&[3; 4096], 0).unwrap();
    c.device.flush().unwrap();
    a.device.write_at(&[4; 4096], 9 * CHUNK).unwrap();
    a.device.flush().unwrap();
    assert_eq!(
        &content(&p, &id)[..4096],
        &[1; 4096],
        "the clone's write reached the origin"
    );
    assert_eq!(
        &content(&p, &clone)[9 * CHUNK as usize..][..4096],
        &[2; 4096],
        "the origin's write reached the clone"
    );
    assert_eq!(&content(&p, &live)[..4096], &[1; 4096]);
    assert_eq!(p.list_snapshots(&id).unwrap().len(), 1);
    assert!(matches!(
        p.create_snapshot(&id, &snap, &NoProgress),
        Err(ProviderError::SnapshotExists { .. })
    ));
}

#[test]
fn a_takeover_fences_the_old_holder_and_keeps_its_last_flush() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 4 * CHUNK);
    let old = p.attach(&id, "a", false).unwrap();
    old.device.write_at(b"flushed by a", 0).unwrap();
    old.device.flush().unwrap();
    old.device.write_at(b"never flushed", CHUNK).unwrap();
    let err = p.attach(&id, "b", false).unwrap_err();
    assert!(
        matches!(err, ProviderError::AttachedElsewhere { ref holder, .. } if holder == "a"),
        "{err}"
    );
    let new = p.attach(&id, "b", true).unwrap();
    assert!(new.generation > old.generation);
    match old.device.flush() {
        Err(BlockError::Fenced {
            generation,
            current,
        }) => {
            assert_eq!((generation, current), (old.generation, new.generation))
        }
        other => panic!("the old holder committed: {other:?}"),
    }
    let seen = read_all(&*new.device);
    assert_eq!(&seen[..12], b"flushed by a");
    assert_eq!(&seen[CHUNK as usize..][..13], &[0; 13]);
    new.device.write_at(b"b", 0).unwrap();
    new.device.flush().unwrap();
    assert_eq!(&content(&p, &id)[..12], b"blushed by a");
    p.detach(&id, "b").unwrap();
    assert!(
        matches!(new.device.flush(), Err(BlockError::Fenced { .. })),
        "a detached holder is fenced"
    );
    new.device.write_at(b"x", 0).unwrap();
    assert!(matches!(new.device.flush(), Err(BlockError::Fenced { .. })));
    assert_eq!(&content(&p, &id)[..12], b"blushed by a");
}

#[test]
fn two_hosts_attaching_a_fresh_volume_at_once_never_both_win() {
    // Two processes' providers on one store; the store honours create-if-absent, which
    // the first attachment record is written with.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pool(dir.path(), 1 << 20), pool(dir.path(), 1 << 20));
    for round in 0..50 {
        let id = blank(&a, 1 << 20);
        let barrier = std::sync::Barrier::new(2);
        let (won_a, won_b) = std::thread::scope(|s| {
            let ta = s.spawn(|| {
                barrier.wait();
                a.attach(&id, "host-a", false)
            });
            let tb = s.spawn(|| {
                barrier.wait();
                b.attach(&id, "host-b", false)
            });
            (ta.join().unwrap(), tb.join().unwrap())
        });
        assert!(
            won_a.is_ok() != won_b.is_ok(),
            "round {round}: exactly one host attaches ({:?} / {:?})",
            won_a.as_ref().err(),
            won_b.as_ref().err()
        );
        let loser = won_a.as_ref().err().or(won_b.as_ref().err()).unwrap();
        assert!(
            matches!(loser, ProviderError::AttachedElsewhere { .. }),
            "{loser}"
        );
    }
}

#[test]
fn a_corrupt_manifest_is_refused_and_other_volumes_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let bad = blank(&p, CHUNK);
    let good = blank(&p, CHUNK);
    let manifest = dir
        .path()
        .join(format!("volumes/{bad}/manifests/{:020}-{:020}.json", 0, 0));
    let text = std::fs::read_to_string(&manifest).unwrap();
    for broken in [&text[..text.len() / 2], "{\"size\": 512}", "not json"] {
        std::fs::write(&manifest, broken).unwrap();
        let err = p.attach(&bad, "h", false).unwrap_err();
        assert!(matches!(err, ProviderError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(&bad.to_string()), "{err}");
        p.detach(&bad, "h").unwrap();
    }
    let beyond = text.replace("\"chunks\":{}", "\"chunks\":{\"5\":\"x/y\"}");
    std::fs::write(&manifest, beyond).unwrap();
    let err = p.volume(&bad).unwrap_err();
    assert!(err.to_string().contains("beyond the end"), "{err}");
    let device = p.attach(&good, "h", false).unwrap().device;
    device.write_at(b"fine", 0).unwrap();
    device.flush().unwrap();
    assert_eq!(&content(&p, &good)[..4], b"fine");
}

#[test]
fn discarded_chunks_are_dropped_and_collected() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 8 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    device.write_at(&vec![9; 8 * CHUNK as usize], 0).unwrap();
    device.flush().unwrap();
    device.discard(CHUNK, 6 * CHUNK).unwrap();
    device.write_zeroes(100, 100).unwrap();
    device.flush().unwrap();
    let report = p.gc(Duration::ZERO, true).unwrap();
    // Chunks 0 and 7, and the log holding write_zeroes' 100 bytes as a patch of chunk 0.
    assert_eq!(report.referenced, 3, "{report:?}");
    // The six dropped chunks.
    assert_eq!(report.garbage_chunks.len(), 6, "{report:?}");
    assert_eq!(chunk_objects(&p), 3);
    let data = content(&p, &id);
    assert!(data[100..200].iter().all(|&b| b == 0));
    assert!(data[CHUNK as usize..7 * CHUNK as usize]
        .iter()
        .all(|&b| b == 0));
    assert!(data[7 * CHUNK as usize..].iter().all(|&b| b == 9));
    assert_eq!(p.gc(Duration::ZERO, false).unwrap().garbage_chunks.len(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Write { volume: usize, chunk: u64, byte: u8 },
    Flush { volume: usize },
    Snapshot { volume: usize },
    Clone { volume: usize },
    Delete { volume: usize },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..8u64, any::<u8>()).prop_map(|(volume, chunk, byte)| Op::Write { volume, chunk, byte }),
        2 => (0..4usize).prop_map(|volume| Op::Flush { volume }),
        1 => (0..4usize).prop_map(|volume| Op::Snapshot { volume }),
        1 => (0..4usize).prop_map(|volume| Op::Clone { volume }),
        1 => (0..4usize).prop_map(|volume| Op::Delete { volume }),
        1 => Just(Op::Gc),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever happens between collections, a collection with no grace at all never
    /// deletes a chunk that a volume or snapshot still reads.
    #[test]
    fn gc_never_deletes_a_referenced_chunk(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let p = pool(dir.path(), 1 << 20);
        let mut volumes: Vec<(VolumeId, Arc<dyn BlockDevice>)> = Vec::new();
        let mut snapshots: Vec<(VolumeId, SnapshotName)> = Vec::new();
        for _ in 0..2 {
            let id = blank(&p, 8 * CHUNK);
            let device = p.attach(&id, "h", false).unwrap().device;
            volumes.push((id, device));
        }
        for (n, op) in ops.into_iter().enumerate() {
            let pick = |v: usize| v % volumes.len().max(1);
            match op {
                Op::Write { volume, chunk, byte } if !volumes.is_empty() => {
                    let at = chunk * CHUNK + u64::from(byte) * 61;
                    volumes[pick(volume)].1.write_at(&[byte; 1000], at).unwrap();
                }
                Op::Flush { volume } if !volumes.is_empty() => volumes[pick(volume)].1.flush().unwrap(),
                Op::Snapshot { volume } if !volumes.is_empty() => {
                    let id = volumes[pick(volume)].0.clone();
                    let name = SnapshotName::new(&format!("s{n}")).unwrap();
                    p.create_snapshot(&id, &name, &NoProgress).unwrap();
                    snapshots.push((id, name));
                }
                Op::Clone { volume } if !volumes.is_empty() => {
                    let from = volumes[pick(volume)].0.clone();
                    let id = VolumeId::generate();
                    p.create_volume(&id, &VolumeSource::Volume(from), "o", &NoProgress).unwrap();
                    let device = p.attach(&id, "h", false).unwrap().device;
                    volumes.push((id, device));
                }
                Op::Delete { volume } if volumes.len() > 1 => {
                    let (id, device) = volumes.remove(pick(volume));
                    drop(device);
                    p.detach(&id, "h").unwrap();
                    p.delete_volume(&id).unwrap();
                    snapshots.retain(|(v, _)| v != &id);
                }
                Op::Gc => {
                    // What every volume and snapshot reads, before and after.
                    let read = |p: &ObjectProvider| -> BTreeMap<String, Vec<u8>> {
                        let mut seen = BTreeMap::new();
                        for (id, _) in &volumes {
                            seen.insert(id.to_string(), content(p, id));
                        }
                        for (id, name) in &snapshots {
                            let clone = VolumeId::generate();
                            p.create_volume(&clone, &VolumeSource::Snapshot(id.clone(), name.clone()), "o", &NoProgress).unwrap();
                            seen.insert(format!("{id}@{name}"), content(p, &clone));
                            p.delete_volume(&clone).unwrap();
                        }
                        seen
                    };
                    let before = read(&p);
                    p.gc(Duration::ZERO, true).unwrap();
                    prop_assert_eq!(read(&p), before);
                }
                _ => {}
            }
        }
    }
}

#[test]
fn a_standby_reads_the_last_flush_and_promotion_fences_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 4 * CHUNK);
    let owner = p.attach(&id, "src", false).unwrap();
    owner.device.write_at(b"flushed by src", 0).unwrap();
    owner.device.flush().unwrap();
    let standby = p.attach_standby(&id, "dst").unwrap();
    assert_eq!(
        standby.generation, owner.generation,
        "a standby changes nothing"
    );
    assert_eq!(&read_all(&*standby.device)[..14], b"flushed by src");
    assert!(matches!(
        standby.device.write_at(b"x", 0),
        Err(BlockError::Standby)
    ));
    // The owner keeps writing and committing while the standby waits.
    owner.device.write_at(b"F", 0).unwrap();
    owner.device.flush().unwrap();
    let promoted = p.attach(&id, "dst", true).unwrap();
    assert!(matches!(
        owner.device.flush(),
        Ok(()) | Err(BlockError::Fenced { .. })
    ));
    owner.device.write_at(b"late", 0).unwrap();
    assert!(matches!(
        owner.device.flush(),
        Err(BlockError::Fenced { .. })
    ));
    assert_eq!(&read_all(&*promoted.device)[..14], b"Flushed by src");
    promoted.device.write_at(b"d", 0).unwrap();
    promoted.device.flush().unwrap();
    assert_eq!(&content(&p, &id)[..14], b"dlushed by src");
}

#[test]
fn revert_brings_back_a_snapshots_chunks_and_size_and_keeps_every_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 4 * CHUNK);
    let (s1, s2) = (
        SnapshotName::new("s1").unwrap(),
        SnapshotName::new("s2").unwrap(),
    );
    let a = p.attach(&id, "h", false).unwrap();
    a.device.write_at(&[1; 4096], CHUNK).unwrap();
    a.device.flush().unwrap();
    p.create_snapshot(&id, &s1, &NoProgress).unwrap();
    p.resize_volume(&id, 8 * CHUNK, false).unwrap();
    a.device.write_at(&[2; 4096], CHUNK).unwrap();
    a.device.write_at(&[2; 4096], 6 * CHUNK).unwrap();
    a.device.flush().unwrap();
    p.create_snapshot(&id, &s2, &NoProgress).unwrap();
    a.device.write_at(&[3; 4096], CHUNK).unwrap();
    a.device.flush().unwrap();
    let chunks = chunk_objects(&p);
    let held = p.revert_volume(&id, &s1, &NoProgress).unwrap_err();
    assert!(
        matches!(&held, ProviderError::AttachedElsewhere { holder, .. } if holder == "h"),
        "{held}"
    );
    drop(a);
    p.detach(&id, "h").unwrap();

    for _ in 0..2 {
        assert_eq!(
            p.revert_volume(&id, &s1, &NoProgress).unwrap().size,
            4 * CHUNK
        );
        let data = content(&p, &id);
        assert_eq!(data.len() as u64, 4 * CHUNK);
        assert_eq!(&data[CHUNK as usize..][..4096], &[1; 4096]);
    }
    assert_eq!(chunk_objects(&p), chunks, "a revert copied chunks");
    assert_eq!(
        p.revert_volume(&id, &s2, &NoProgress).unwrap().size,
        8 * CHUNK
    );
    let data = content(&p, &id);
    assert_eq!(&data[CHUNK as usize..][..4096], &[2; 4096]);
    assert_eq!(&data[6 * CHUNK as usize..][..4096], &[2; 4096]);
    assert_eq!(p.list_snapshots(&id).unwrap().len(), 2);
    let missing = SnapshotName::new("nope").unwrap();
    assert!(matches!(
        p.revert_volume(&id, &missing, &NoProgress),
        Err(ProviderError::SnapshotNotFound { .. })
    ));
    // After a revert, the device of a new attachment sees the snapshot too.
    let b = p.attach(&id, "h2", false).unwrap();
    let mut buf = [0; 4096];
    b.device.read_at(&mut buf, CHUNK).unwrap();
    assert_eq!(buf, [2; 4096]);
}

#[test]
fn allocated_counts_the_chunks_held_unflushed_ones_too_while_attached() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 8 * CHUNK + 4096);
    assert_eq!(p.allocated(&id).unwrap(), Some(0));
    let a = p.attach(&id, "h", false).unwrap();
    a.device.write_at(&[1; 4096], 0).unwrap();
    a.device.write_at(&[2; 4096], 8 * CHUNK).unwrap();
    assert_eq!(
        p.allocated(&id).unwrap(),
        Some(CHUNK + 4096),
        "the attached device's own figure, before any flush"
    );
    a.device.flush().unwrap();
    let snap = SnapshotName::new("s").unwrap();
    p.create_snapshot(&id, &snap, &NoProgress).unwrap();
    a.device.write_at(&[3; 4096], 3 * CHUNK).unwrap();
    a.device.flush().unwrap();
    drop(a);
    p.detach(&id, "h").unwrap();
    // Another process reads the store.
    let other = pool(dir.path(), 1 << 20);
    assert_eq!(other.allocated(&id).unwrap(), Some(2 * CHUNK + 4096));
    other.revert_volume(&id, &snap, &NoProgress).unwrap();
    assert_eq!(other.allocated(&id).unwrap(), Some(CHUNK + 4096));
}

/// The newest manifest of `id`, as committed.
fn manifest(p: &ObjectProvider, id: &VolumeId) -> Manifest {
    p.latest(id).unwrap()
}

/// Bytes of every object in the pool's chunks/ and logs/ (chunks, logs, `.wal`s), by key.
fn stored_objects(dir: &std::path::Path) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    for top in ["chunks", "logs"] {
        let chunks = dir.join(top);
        for volume in std::fs::read_dir(&chunks).into_iter().flatten() {
            let volume = volume.unwrap().path();
            for object in std::fs::read_dir(&volume).unwrap() {
                let object = object.unwrap();
                let key = object
                    .path()
                    .strip_prefix(&chunks)
                    .unwrap()
                    .display()
                    .to_string();
                found.insert(key, object.metadata().unwrap().len());
            }
        }
    }
    found
}

#[test]
fn a_small_write_and_flush_upload_a_small_log_not_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 4 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    device.write_at(&vec![7; 4 * CHUNK as usize], 0).unwrap();
    device.flush().unwrap();
    let before = stored_objects(dir.path());
    assert_eq!(before.len(), 4, "{before:?}");

    device.write_at(&[1; 4096], CHUNK + 8192).unwrap();
    device.write_at(&[2; 512], 3 * CHUNK).unwrap();
    device.flush().unwrap();
    let after = stored_objects(dir.path());
    let new: Vec<_> = after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .collect();
    assert_eq!(new.len(), 1, "one new object: {new:?}");
    let (wal, bytes) = new[0];
    assert!(wal.ends_with(".wal"), "{wal}");
    assert!(
        (4096 + 512..4096 + 512 + 2048).contains(bytes),
        "the changed bytes and the manifest: {bytes}"
    );
    let m = manifest(&p, &id);
    assert_eq!(m.patches.len(), 2, "{m:?}");
    assert_eq!(m.patches[&1][0].at, 8192);
    assert_eq!(&m.patches[&1][0].log, wal);
    // The commit is that object: a delta naming the two patches, not the whole chunk
    // map restated.
    let (newest, delta) = versions_of(&p, &id).pop().unwrap();
    assert!(newest.ends_with(wal.as_str()), "{newest}");
    assert_eq!(delta.base, Some(m.seq - 1));
    assert!(
        delta.chunks.is_empty() && delta.patches.len() == 2,
        "{delta:?}"
    );

    // Read back cold, from the store: chunk and patches.
    let data = content(&p, &id);
    assert!(data[..CHUNK as usize + 8192].iter().all(|&b| b == 7));
    assert!(data[CHUNK as usize + 8192..CHUNK as usize + 12288]
        .iter()
        .all(|&b| b == 1));
    assert!(data[3 * CHUNK as usize..3 * CHUNK as usize + 512]
        .iter()
        .all(|&b| b == 2));
    assert!(data[3 * CHUNK as usize + 512..].iter().all(|&b| b == 7));
}

#[test]
fn a_chunk_is_uploaded_whole_again_before_its_patches_pass_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let mut model = vec![0u8; CHUNK as usize];
    for n in 0..=device::MAX_PATCHES as u64 + 2 {
        let at = (n * 1000 % (CHUNK - 100)) as usize;
        model[at..at + 100].fill(n as u8 + 1);
        device.write_at(&[n as u8 + 1; 100], at as u64).unwrap();
        device.flush().unwrap();
        let m = manifest(&p, &id);
        let patches = m.patches.get(&0).map_or(0, Vec::len);
        assert!(patches <= device::MAX_PATCHES, "{patches} patches");
        assert_eq!(content(&p, &id), model, "after flush {n}");
    }
    // Compacted once on the way: a chunk object, and fewer patches than flushes.
    let m = manifest(&p, &id);
    assert!(m.chunks.contains_key(&0), "{m:?}");
    assert!(m.patches.get(&0).map_or(0, Vec::len) < device::MAX_PATCHES);
    // Logs the compaction left behind are garbage; what is read stays.
    let report = p.gc(Duration::ZERO, true).unwrap();
    assert!(!report.garbage_chunks.is_empty(), "{report:?}");
    assert_eq!(content(&p, &id), model);
}

#[test]
fn a_truncated_or_missing_log_is_an_error_naming_the_volume_never_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    device.write_at(&vec![5; CHUNK as usize], 0).unwrap();
    device.flush().unwrap();
    device.write_at(&[6; 300], 1000).unwrap();
    device.flush().unwrap();
    // A later flush names the first one's log too.
    device.write_at(&[7; 300], 5000).unwrap();
    device.flush().unwrap();
    let m = manifest(&p, &id);
    let log = object_file(dir.path(), &m.patches[&0][0].log);
    let fails = |what: &str| {
        let mut buf = vec![0u8; 4096];
        let err = match p.device(&id, 0) {
            Ok(d) => d.read_at(&mut buf, 0).err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
        .unwrap_or_else(|| panic!("{what}: the read succeeded"));
        assert!(err.contains(&id.to_string()), "{what}: {err}");
    };
    let bytes = std::fs::read(&log).unwrap();
    std::fs::write(&log, &bytes[..100]).unwrap();
    fails("a truncated log");
    std::fs::remove_file(&log).unwrap();
    fails("a missing log");
}

#[derive(Debug, Clone)]
enum DeviceOp {
    Write {
        at: u64,
        len: u64,
        byte: u8,
    },
    Discard {
        at: u64,
        len: u64,
    },
    Flush,
    /// Detach and attach again: only what was flushed is there.
    Reattach,
}

fn device_op() -> impl Strategy<Value = DeviceOp> {
    let span = 4 * CHUNK;
    prop_oneof![
        6 => (0..span, 1..20_000u64, 1..=255u8).prop_map(move |(at, len, byte)| DeviceOp::Write { at, len: len.min(span - at), byte }),
        1 => (0..span, 1..(2 * CHUNK)).prop_map(move |(at, len)| DeviceOp::Discard { at, len: len.min(span - at) }),
        3 => Just(DeviceOp::Flush),
        1 => Just(DeviceOp::Reattach),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Small and large writes, discards, flushes (patches, compactions, early uploads
    /// with a cache of two chunks) and re-attaches, on plain and on compressed and
    /// encrypted pools: the device reads what was written, and a re-attached one reads
    /// exactly what was last flushed.
    #[test]
    fn patched_volumes_read_back_what_was_written_and_flushed(
        ops in proptest::collection::vec(device_op(), 1..50),
        sealed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let p = if sealed {
            sealed_pool(dir.path(), 2 * CHUNK as usize, [3; 32])
        } else {
            pool(dir.path(), 2 * CHUNK as usize)
        };
        let id = blank(&p, 4 * CHUNK);
        let mut device = p.attach(&id, "h", false).unwrap().device;
        let mut model = vec![0u8; 4 * CHUNK as usize];
        let mut flushed = model.clone();
        for op in ops {
            match op {
                DeviceOp::Write { at, len, byte } => {
                    device.write_at(&vec![byte; len as usize], at).unwrap();
                    model[at as usize..(at + len) as usize].fill(byte);
                }
                DeviceOp::Discard { at, len } => {
                    device.discard(at, len).unwrap();
                    model[at as usize..(at + len) as usize].fill(0);
                }
                DeviceOp::Flush => {
                    device.flush().unwrap();
                    flushed = model.clone();
                }
                DeviceOp::Reattach => {
                    drop(device);
                    p.detach(&id, "h").unwrap();
                    device = p.attach(&id, "h", false).unwrap().device;
                    model = flushed.clone();
                }
            }
            prop_assert!(read_all(&*device) == model, "the device reads what was written");
        }
        prop_assert!(content(&p, &id) == flushed, "the store holds what was flushed");
    }
}

#[test]
fn a_disk_cache_serves_a_reopened_pool_and_torn_entries_are_fetched_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&store).unwrap();
    let open = || {
        let settings = ObjectSettings {
            chunk_size: CHUNK,
            cache_bytes: 1 << 20,
            disk_cache: Some((cache.clone(), 64 << 20)),
            ..Default::default()
        };
        let url = format!("file://{}", store.display());
        ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings).unwrap()
    };
    let p = open();
    let id = blank(&p, 2 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let mut model: Vec<u8> = (0..2 * CHUNK).map(|i| (i % 251) as u8).collect();
    device.write_at(&model, 0).unwrap();
    device.flush().unwrap();
    device.write_at(&[9; 100], 500).unwrap();
    model[500..600].fill(9);
    device.flush().unwrap();
    drop(device);
    p.detach(&id, "h").unwrap();
    // What was written went through to the cache: no read is needed to fill it.
    drop(p);

    // Reopened (a restarted host): the chunks and the patch come from local disk, even
    // with the store's copies gone.
    let p = open();
    let objects = store.join("chunks");
    let saved = dir.path().join("saved");
    std::fs::rename(&objects, &saved).unwrap();
    // A small read is at hand (a server answers it where it arrives), the patch laid
    // over it.
    let mut buf = vec![0u8; 4096];
    let device = p.device(&id, 0).unwrap();
    assert!(matches!(device.read_now(&mut buf, 0), Some(Ok(()))));
    assert_eq!(buf, model[..4096]);
    assert_eq!(content(&p, &id), model, "served from the disk cache");

    // A torn entry is never served: it is dropped and fetched from the store again.
    std::fs::rename(&saved, &objects).unwrap();
    let m = manifest(&p, &id);
    let entry = cache.join(&m.chunks[&0]);
    let bytes = std::fs::read(&entry).unwrap();
    std::fs::write(&entry, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(content(&p, &id), model);
    assert_eq!(
        std::fs::read(&entry).unwrap(),
        bytes,
        "fetched and kept again"
    );

    // A cache deleted while in use costs only speed.
    std::fs::remove_dir_all(&cache).unwrap();
    assert_eq!(content(&p, &id), model);
    // Without the cache (the read above kept what it fetched in it again) a read waits
    // on the store, and is at hand once its chunk is in memory.
    std::fs::remove_dir_all(&cache).unwrap();
    let p = open();
    let device = p.device(&id, 0).unwrap();
    assert!(device.read_now(&mut buf, 0).is_none());
    device.read_at(&mut buf, 0).unwrap();
    assert!(matches!(device.read_now(&mut buf, 8192), Some(Ok(()))));
    assert_eq!(buf, model[8192..8192 + 4096]);
}

/// Every file under `dir`, read.
fn every_file(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                found.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    found
}

#[test]
fn an_encrypted_compressed_pool_reads_back_and_stores_nothing_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let open = || {
        let settings = ObjectSettings {
            chunk_size: CHUNK,
            cache_bytes: 1 << 20,
            compression: true,
            key: Some(PoolKey([1; 32])),
            disk_cache: Some((cache.path().to_path_buf(), 64 << 20)),
            ..Default::default()
        };
        let url = format!("file://{}", dir.path().display());
        ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings).unwrap()
    };
    let p = open();
    let id = blank(&p, 4 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let text = b"PLAINTEXT-MARKER guest data, very compressible. ".repeat(4 * CHUNK as usize / 48);
    let mut model = vec![0u8; 4 * CHUNK as usize];
    model[..text.len()].copy_from_slice(&text);
    device.write_at(&text, 0).unwrap();
    device.flush().unwrap();
    device.write_at(b"PLAINTEXT-MARKER patch", 1000).unwrap();
    model[1000..1022].copy_from_slice(b"PLAINTEXT-MARKER patch");
    device.flush().unwrap();
    assert_eq!(read_all(&*device), model);
    assert_eq!(content(&p, &id), model, "read back cold");
    assert_eq!(manifest(&p, &id).patches.len(), 1);
    // Reopened with the store's objects gone: served from the (sealed) disk cache.
    let objects = dir.path().join("chunks");
    let saved = dir.path().join("saved");
    std::fs::rename(&objects, &saved).unwrap();
    assert_eq!(content(&open(), &id), model, "from the disk cache");
    std::fs::rename(&saved, &objects).unwrap();
    let files = every_file(dir.path());
    for (path, bytes) in files.iter().chain(&every_file(cache.path())) {
        assert!(
            !bytes.windows(9).any(|w| w == b"PLAINTEXT"),
            "{} holds clear text",
            path.display()
        );
    }
    let stored: u64 = stored_objects(dir.path()).values().sum();
    assert!(stored < 4 * CHUNK / 10, "compressed: {stored} bytes");
    let report = p.gc(Duration::ZERO, false).unwrap();
    assert_eq!(report.logical_bytes, 4 * CHUNK + 22, "{report:?}");
    assert_eq!(report.live_bytes + report.log_bytes, stored, "{report:?}");
    // The key is nowhere in the pool.
    assert!(!files
        .iter()
        .any(|(_, b)| b.windows(32).any(|w| w == [1u8; 32])));
}

#[test]
fn a_wrong_missing_or_unneeded_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(sealed_pool(dir.path(), 1 << 20, [1; 32]));
    let url = format!("file://{}", dir.path().display());
    let open = |key: Option<[u8; 32]>| {
        let settings = ObjectSettings {
            chunk_size: CHUNK,
            key: key.map(PoolKey),
            ..Default::default()
        };
        ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings)
    };
    let err = open(Some([2; 32])).err().unwrap().to_string();
    assert!(err.contains("wrong key"), "{err}");
    let err = open(None).err().unwrap().to_string();
    assert!(err.contains("the pool is encrypted"), "{err}");
    assert!(open(Some([1; 32])).is_ok());

    let plain = tempfile::tempdir().unwrap();
    drop(pool(plain.path(), 1 << 20));
    let settings = ObjectSettings {
        chunk_size: CHUNK,
        key: Some(PoolKey([1; 32])),
        ..Default::default()
    };
    let url = format!("file://{}", plain.path().display());
    let err = ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("not encrypted"), "{err}");
}

/// A pool made before XAES-256-GCM (`pool.json` names XChaCha20-Poly1305 and holds a
/// check sealed with it) opens with its key only, reads what it holds and takes new
/// writes (sealed with XAES-256-GCM) beside it.
#[test]
fn a_pool_made_with_xchacha20_poly1305_opens_and_takes_new_writes() {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let dir = tempfile::tempdir().unwrap();
    let key = [6; 32];
    let p = sealed_pool(dir.path(), 1 << 20, key);
    let id = blank(&p, 2 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let mut model = vec![3u8; 2 * CHUNK as usize];
    device.write_at(&model, 0).unwrap();
    device.flush().unwrap();
    drop(device);
    p.detach(&id, "h").unwrap();
    drop(p);

    let record = dir.path().join("pool.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(json["encryption"]["cipher"], "xaes-256-gcm");
    let nonce = chacha20poly1305::XNonce::from([8u8; 24]);
    let payload = Payload {
        msg: codec::CHECK,
        aad: b"pool.json",
    };
    let mut check = b"cvs1\x02".to_vec();
    check.extend_from_slice(&nonce);
    check.extend(
        chacha20poly1305::XChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce, payload)
            .unwrap(),
    );
    json["encryption"]["cipher"] = "xchacha20poly1305".into();
    json["encryption"]["check"] = hex::encode(check).into();
    std::fs::write(&record, serde_json::to_vec(&json).unwrap()).unwrap();

    let url = format!("file://{}", dir.path().display());
    let open = |key: [u8; 32]| {
        let settings = ObjectSettings {
            chunk_size: CHUNK,
            cache_bytes: 1 << 20,
            key: Some(PoolKey(key)),
            ..Default::default()
        };
        ObjectProvider::open(&ProviderId::new("obj").unwrap(), &url, &settings)
    };
    let err = open([7; 32]).err().unwrap().to_string();
    assert!(err.contains("wrong key"), "{err}");
    let p = open(key).unwrap();
    assert_eq!(content(&p, &id), model);
    let device = p.attach(&id, "h", false).unwrap().device;
    device.write_at(&[9; 100], 10).unwrap();
    model[10..110].fill(9);
    device.flush().unwrap();
    drop(device);
    p.detach(&id, "h").unwrap();
    assert_eq!(content(&open(key).unwrap(), &id), model);
}

#[test]
fn tampered_chunks_logs_and_manifests_fail_reads_naming_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let p = sealed_pool(dir.path(), 1 << 20, [1; 32]);
    let id = blank(&p, 2 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    device.write_at(&vec![4; 2 * CHUNK as usize], 0).unwrap();
    device.flush().unwrap();
    device.write_at(&[5; 100], 10).unwrap();
    device.flush().unwrap();
    drop(device);
    p.detach(&id, "h").unwrap();
    let m = manifest(&p, &id);
    let (a, b) = (
        object_file(dir.path(), &m.chunks[&0]),
        object_file(dir.path(), &m.chunks[&1]),
    );
    let log = object_file(dir.path(), &m.patches[&0][0].log);
    let fails = |what: &str| {
        let mut buf = vec![0u8; 2 * CHUNK as usize];
        let err = match p.device(&id, 0) {
            Ok(d) => d.read_at(&mut buf, 0).err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        }
        .unwrap_or_else(|| panic!("{what}: the read succeeded"));
        assert!(err.contains(&id.to_string()), "{what}: {err}");
    };
    let keep = |path: &std::path::Path| std::fs::read(path).unwrap();
    let (a0, b0, log0) = (keep(&a), keep(&b), keep(&log));

    let mut flipped = a0.clone();
    flipped[a0.len() / 2] ^= 1;
    std::fs::write(&a, &flipped).unwrap();
    fails("a flipped byte");
    std::fs::write(&a, &b0).unwrap();
    std::fs::write(&b, &a0).unwrap();
    fails("two chunks swapped");
    std::fs::write(&a, &a0).unwrap();
    std::fs::write(&b, &b0).unwrap();
    // Cut into the patch's record.
    let cut = m.patches[&0][0].record().end as usize - 1;
    std::fs::write(&log, &log0[..cut]).unwrap();
    fails("a truncated log");
    std::fs::write(&log, &log0).unwrap();
    assert_eq!(content(&p, &id)[10], 5, "untampered, it reads");

    // An old manifest restated as the newest.
    let manifests = dir.path().join(format!("volumes/{id}/manifests"));
    let mut names: Vec<_> = std::fs::read_dir(&manifests)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    let oldest = std::fs::read(manifests.join(&names[0])).unwrap();
    std::fs::write(
        manifests.join(format!("{:020}-{:020}.json", m.generation, m.seq + 1)),
        oldest,
    )
    .unwrap();
    let err = p.volume(&id).err().unwrap().to_string();
    assert!(err.contains(&id.to_string()), "{err}");
}

#[test]
fn a_whole_manifest_is_committed_after_a_bounded_run_of_deltas() {
    let dir = tempfile::tempdir().unwrap();
    let p = pool(dir.path(), 1 << 20);
    let id = blank(&p, 4 * CHUNK);
    let device = p.attach(&id, "h", false).unwrap().device;
    let mut model = vec![0u8; 4 * CHUNK as usize];
    for n in 0..150u64 {
        let at = (n * 4099) % (4 * CHUNK - 10);
        device.write_at(&[n as u8; 10], at).unwrap();
        model[at as usize..at as usize + 10].fill(n as u8);
        device.flush().unwrap();
    }
    let mut wholes = 0;
    let mut run = 0;
    let mut longest = 0;
    for (_, m) in versions_of(&p, &id) {
        if m.base.is_none() {
            wholes += 1;
            run = 0;
        } else {
            run += 1;
            longest = longest.max(run);
        }
    }
    assert!(wholes >= 3, "{wholes} whole manifests");
    assert!(longest <= 64, "a run of {longest} deltas");
    assert_eq!(content(&p, &id), model);
    p.gc(Duration::ZERO, true).unwrap();
    assert_eq!(content(&p, &id), model, "after gc");
}
