//! The `rbd` provider against a real single-node Ceph cluster: volumes, snapshots and
//! clones as RBD images (checked with the `rbd` tool), fencing by the exclusive lock and
//! the blocklist, and bad input.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ceph::ceph;
use common::ProviderServe;
use cvol_format::{ProviderConfig, ProviderId, SnapshotName, VolumeId};
use cvol_provider::{
    open_provider, AsyncIo, BlockDevice, BlockError, NoProgress, Provider, ProviderError,
    RbdProvider, VolumeSource,
};

const MIB: u64 = 1 << 20;

fn config(settings: &[(&str, &str)]) -> ProviderConfig {
    ProviderConfig {
        id: ProviderId::new("pool").unwrap(),
        kind: "rbd".into(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A provider on `pool` of the test cluster: each is a client of its own, as two hosts'
/// daemons are.
fn provider(pool: &str) -> RbdProvider {
    let conf = ceph().conf().display().to_string();
    RbdProvider::from_config(&config(&[("pool", pool), ("conf", &conf)])).unwrap()
}

fn blank(p: &RbdProvider, size: u64) -> VolumeId {
    let id = VolumeId::generate();
    p.create_volume(&id, &VolumeSource::Blank { size }, "test", &NoProgress)
        .unwrap();
    id
}

fn snap(name: &str) -> SnapshotName {
    SnapshotName::new(name).unwrap()
}

#[test]
fn volumes_snapshots_clones_and_reverts_are_rbd_images() {
    let pool = ceph().new_pool();
    let p = provider(&pool);
    let id = blank(&p, 8 * MIB);
    assert_eq!(p.volume(&id).unwrap().size, 8 * MIB);
    let a = p.attach(&id, "h1", false).unwrap();
    a.device.write_at(&[1; 4096], 0).unwrap();
    a.device.write_at(&[2; 4096], 5 * MIB).unwrap();
    a.device.flush().unwrap();
    p.create_snapshot(&id, &snap("s1"), &NoProgress).unwrap();
    a.device.write_at(&[3; 4096], 0).unwrap();
    a.device.discard(5 * MIB, MIB).unwrap();
    a.device.flush().unwrap();

    // What the rbd tool reads is what was written.
    let now = ceph().image_bytes(&pool, id.as_str());
    assert_eq!(now.len() as u64, 8 * MIB);
    assert!(now[..4096].iter().all(|&b| b == 3));
    assert!(now[5 * MIB as usize..6 * MIB as usize]
        .iter()
        .all(|&b| b == 0));

    // Clones of the snapshot and of the live volume, each its own image.
    let of_snap = VolumeId::generate();
    p.create_volume(
        &of_snap,
        &VolumeSource::Snapshot(id.clone(), snap("s1")),
        "test",
        &NoProgress,
    )
    .unwrap();
    let of_live = VolumeId::generate();
    p.create_volume(
        &of_live,
        &VolumeSource::Volume(id.clone()),
        "test",
        &NoProgress,
    )
    .unwrap();
    let s = ceph().image_bytes(&pool, of_snap.as_str());
    assert!(s[..4096].iter().all(|&b| b == 1) && s[5 * MIB as usize] == 2);
    assert_eq!(ceph().image_bytes(&pool, of_live.as_str()), now);
    let info = ceph().rbd(&["info", &format!("{pool}/{of_snap}")]);
    assert!(
        info.contains(&format!("parent: {pool}/{id}@s1")),
        "no data copied: {info}"
    );
    // The hidden snapshot a live clone is made from is not the volume's.
    let names: Vec<_> = p
        .list_snapshots(&id)
        .unwrap()
        .into_iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["s1"]);

    // Grow while attached; revert only once detached.
    p.resize_volume(&id, 16 * MIB, false).unwrap();
    assert_eq!(a.device.size(), 16 * MIB);
    assert!(matches!(
        p.resize_volume(&id, 4 * MIB, false),
        Err(ProviderError::ShrinkRefused { .. })
    ));
    assert!(matches!(
        p.revert_volume(&id, &snap("s1"), &NoProgress),
        Err(ProviderError::AttachedElsewhere { .. })
    ));
    p.detach(&id, "h1").unwrap();
    assert!(matches!(
        a.device.write_at(&[9], 0),
        Err(BlockError::Fenced { .. })
    ));
    let reverted = p.revert_volume(&id, &snap("s1"), &NoProgress).unwrap();
    assert_eq!(reverted.size, 8 * MIB);
    assert_eq!(ceph().image_bytes(&pool, id.as_str()), s);

    // The parent goes (to the trash, while its clones need it); the clones stay whole.
    p.delete_volume(&id).unwrap();
    let left: Vec<_> = p
        .list_volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert!(!left.contains(&id) && left.contains(&of_snap) && left.contains(&of_live));
    assert!(matches!(
        p.volume(&id),
        Err(ProviderError::VolumeNotFound { .. })
    ));
    assert_eq!(ceph().image_bytes(&pool, of_live.as_str()), now);
    for v in [of_snap, of_live] {
        p.delete_volume(&v).unwrap();
    }
    assert!(p.list_volumes().unwrap().is_empty());
}

#[test]
fn a_forced_takeover_blocklists_the_old_holder_and_keeps_its_flushed_writes() {
    let pool = ceph().new_pool();
    forced_takeover(&pool, &provider(&pool), &provider(&pool));
}

#[test]
fn through_a_provider_service_hosts_open_images_themselves_and_are_fenced_alike() {
    let pool = ceph().new_pool();
    let mut command = common::cvol();
    command.env("CEPH_CONF", ceph().conf());
    let service = ProviderServe::start_spec(&format!("rbd:{pool}"), None, "127.0.0.1:0", command);
    // Each host its own client, with the conf named in its settings.
    let conf = ceph().conf().display().to_string();
    let host = || {
        open_provider(&ProviderConfig {
            id: ProviderId::new("pool").unwrap(),
            kind: "remote".into(),
            settings: BTreeMap::from([
                ("url".to_string(), service.url.clone()),
                ("ceph_conf".to_string(), conf.clone()),
            ]),
        })
        .unwrap()
    };
    let (h1, h2) = (host(), host());
    forced_takeover(&pool, h1.as_ref(), h2.as_ref());

    // A host whose own client cannot reach the cluster gets one clear error, and the
    // volume stays with nobody's data path on it.
    let id = VolumeId::generate();
    h1.create_volume(&id, &VolumeSource::Blank { size: MIB }, "t", &NoProgress)
        .unwrap();
    let lost = open_provider(&ProviderConfig {
        id: ProviderId::new("pool").unwrap(),
        kind: "remote".into(),
        settings: BTreeMap::from([
            ("url".to_string(), service.url.clone()),
            (
                "ceph_conf".to_string(),
                "/nonexistent/ceph.conf".to_string(),
            ),
        ]),
    })
    .unwrap();
    let err = lost.attach(&id, "h3", false).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ceph.conf"), "{err}");
    assert_eq!(h1.volume(&id).unwrap().attached_to, None);
    // An image deleted behind cvol's back.
    ceph().rbd(&["rm", "--no-progress", &format!("{pool}/{id}")]);
    assert!(matches!(
        h2.attach(&id, "h2", true),
        Err(ProviderError::VolumeNotFound { .. })
    ));
}

/// Runs a read or write through `device.submit` (librbd's aio) and waits for it: the
/// buffer it ends with, and how it went.
fn submitted(
    device: &dyn BlockDevice,
    buf: Vec<u8>,
    offset: u64,
    write: bool,
) -> (Vec<u8>, Result<(), BlockError>) {
    let (tx, rx) = std::sync::mpsc::channel();
    device.submit(AsyncIo {
        buf,
        start: 0,
        offset,
        write,
        done: Box::new(move |buf, result| drop(tx.send((buf, result)))),
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap()
}

/// h1 attaches through `p1` and flushes; h2 is refused through `p2`, then takes the
/// volume over: h1's client is blocklisted, its flushed bytes are h2's to read.
fn forced_takeover(pool: &str, p1: &dyn Provider, p2: &dyn Provider) {
    let id = VolumeId::generate();
    p1.create_volume(
        &id,
        &VolumeSource::Blank { size: 4 * MIB },
        "test",
        &NoProgress,
    )
    .unwrap();
    let old = p1.attach(&id, "h1", false).unwrap();
    old.device.write_at(b"flushed by h1", 0).unwrap();
    old.device.flush().unwrap();
    // The holder keeps its lock from a client that asks for it (managed mode): a writer
    // that bypasses cvol is refused, not handed the image.
    let image = format!("{pool}/{id}");
    let outsider = ceph().try_rbd(&[
        "bench",
        "--io-type",
        "write",
        "--io-size",
        "4096",
        "--io-total",
        "4096",
        &image,
    ]);
    assert!(outsider.is_err(), "{outsider:?}");
    assert_eq!(
        &ceph().image_bytes(pool, id.as_str())[..13],
        b"flushed by h1"
    );
    match p2.attach(&id, "h2", false) {
        Err(ProviderError::AttachedElsewhere { holder, .. }) => assert_eq!(holder, "h1"),
        other => panic!("a second holder: {other:?}"),
    }
    assert_eq!(p2.volume(&id).unwrap().attached_to.as_deref(), Some("h1"));
    let new = p2.attach(&id, "h2", true).unwrap();
    assert!(new.generation > old.generation);
    // The old holder's client is blocklisted: whatever it sends now is refused, through
    // librbd's aio as through its blocking calls.
    assert!(old.device.submits_async());
    assert!(matches!(
        submitted(old.device.as_ref(), b"late".to_vec(), 0, true).1,
        Err(BlockError::Fenced { .. })
    ));
    assert!(matches!(
        old.device.write_at(b"late", 0),
        Err(BlockError::Fenced { .. })
    ));
    assert!(matches!(old.device.flush(), Err(BlockError::Fenced { .. })));
    let mut seen = [0u8; 13];
    new.device.read_at(&mut seen, 0).unwrap();
    assert_eq!(&seen, b"flushed by h1");
    let (seen, read) = submitted(new.device.as_ref(), vec![0; 13], 0, false);
    read.unwrap();
    assert_eq!(&seen, b"flushed by h1");
    let (_, wrote) = submitted(new.device.as_ref(), b"h2".to_vec(), 0, true);
    wrote.unwrap();
    new.device.flush().unwrap();
    assert_eq!(
        &ceph().image_bytes(pool, id.as_str())[..13],
        b"h2ushed by h1"
    );
    // A standby reads the holder's writes and writes nothing.
    let standby = p1.attach_standby(&id, "h1").unwrap();
    let mut two = [0u8; 2];
    standby.device.read_at(&mut two, 0).unwrap();
    assert_eq!(&two, b"h2");
    assert!(matches!(
        standby.device.write_at(b"x", 0),
        Err(BlockError::Standby)
    ));
    p2.detach(&id, "h2").unwrap();
    assert_eq!(p1.volume(&id).unwrap().attached_to, None);
}

#[test]
fn two_hosts_attaching_at_once_never_both_win() {
    let pool = ceph().new_pool();
    let id = blank(&provider(&pool), 4 * MIB);
    let providers: Vec<_> = (0..2).map(|_| Arc::new(provider(&pool))).collect();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = providers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (p, id, barrier) = (p.clone(), id.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // The winner's attachment is returned, so that it stays open.
                p.attach(&id, &format!("h{i}"), false)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        won,
        1,
        "{:?}",
        results
            .iter()
            .map(|r| r.as_ref().map(|a| a.generation))
            .collect::<Vec<_>>()
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(r, ProviderError::AttachedElsewhere { .. }), "{r}");
    }
}

#[test]
fn bad_pools_monitors_and_volumes_are_clear_errors_within_the_timeout() {
    let conf = ceph().conf().display().to_string();
    let err = RbdProvider::from_config(&config(&[("pool", "no-such-pool"), ("conf", &conf)]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-pool"), "{err}");

    // A monitor nobody answers at: an error after the timeout, not librados' 300 s.
    let dead = tempfile::tempdir().unwrap();
    let dead_conf = dead.path().join("ceph.conf");
    std::fs::write(
        &dead_conf,
        format!(
            "[global]\nmon host = v1:127.0.0.1:{}\nauth client required = none\n",
            common::free_port()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let err = RbdProvider::from_config(&config(&[
        ("pool", "rbd"),
        ("conf", dead_conf.to_str().unwrap()),
        ("timeout", "3"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("connect to the cluster"), "{err}");

    let missing = RbdProvider::from_config(&config(&[
        ("pool", "p"),
        ("conf", "/nonexistent/ceph.conf"),
    ]))
    .unwrap_err()
    .to_string();
    assert!(missing.contains("/nonexistent/ceph.conf"), "{missing}");

    let pool = ceph().new_pool();
    let p = provider(&pool);
    let unknown = VolumeId::generate();
    assert!(matches!(
        p.volume(&unknown),
        Err(ProviderError::VolumeNotFound { .. })
    ));
    assert!(matches!(
        p.attach(&unknown, "h", false),
        Err(ProviderError::VolumeNotFound { .. })
    ));
    assert!(matches!(
        p.create_volume(
            &VolumeId::generate(),
            &VolumeSource::Volume(unknown.clone()),
            "t",
            &NoProgress
        ),
        Err(ProviderError::VolumeNotFound { .. })
    ));
    let id = blank(&p, MIB);
    assert!(matches!(
        p.create_volume(&id, &VolumeSource::Blank { size: MIB }, "t", &NoProgress),
        Err(ProviderError::VolumeExists { .. })
    ));
    assert!(matches!(
        p.create_volume(
            &VolumeId::generate(),
            &VolumeSource::Blank { size: 1000 },
            "t",
            &NoProgress
        ),
        Err(ProviderError::InvalidSize { .. })
    ));
    // An image deleted behind cvol's back.
    ceph().rbd(&["rm", "--no-progress", &format!("{pool}/{id}")]);
    assert!(matches!(
        p.volume(&id),
        Err(ProviderError::VolumeNotFound { .. })
    ));
}
