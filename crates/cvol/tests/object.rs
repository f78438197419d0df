//! Object pools against a real S3 server (Garage): bad buckets and credentials, a server
//! that goes away mid-flush, and kill -9 of the host daemon while a writer fsyncs.

mod common;

use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::garage::{self, Garage};
use common::Env;

/// Runs cvol with `vars`; must fail with one line on stderr, which is returned.
fn fails_with<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    env: &Env,
    vars: &[(String, String)],
    args: &[S],
) -> String {
    let out = env
        .command()
        .env_remove("AWS_ENDPOINT_URL")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "cvol {args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "cvol {args:?}: {stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn missing_buckets_pools_and_bad_credentials_are_named_and_change_nothing() {
    let server = garage::garage();
    let env = Env::empty();
    let create = |url: &str| {
        vec![
            "datastore".to_string(),
            "create".into(),
            "--name".into(),
            "ds1".into(),
            "--provider".into(),
            format!("pool=object:{url}"),
        ]
    };

    let vars = server.vars();
    let err = fails_with(&env, &vars, &create("s3://no-such-bucket/pool"));
    assert!(
        err.contains("no-such-bucket") && err.to_lowercase().contains("bucket"),
        "{err}"
    );

    let mut wrong_secret = server.vars();
    wrong_secret.retain(|(k, _)| k != "AWS_SECRET_ACCESS_KEY");
    wrong_secret.push(("AWS_SECRET_ACCESS_KEY".into(), "0".repeat(64)));
    let url = server.new_pool_url();
    let err = fails_with(&env, &wrong_secret, &create(&url));
    assert!(err.contains(&url), "{err}");
    assert!(
        err.contains("403") || err.to_lowercase().contains("signature"),
        "{err}"
    );

    let mut unknown_key = server.vars();
    unknown_key.retain(|(k, _)| k != "AWS_ACCESS_KEY_ID");
    unknown_key.push((
        "AWS_ACCESS_KEY_ID".into(),
        "GK0000000000000000000000".into(),
    ));
    let err = fails_with(&env, &unknown_key, &create(&url));
    assert!(err.contains(&url), "{err}");

    // Nothing was made: no datastore, no pool.
    assert!(std::fs::read_dir(&env.share).unwrap().next().is_none());
    let objects = common::objects::PoolObjects::open(&url, &vars);
    assert!(objects.list("").is_empty(), "{:?}", objects.list(""));

    // Collecting garbage in a pool that is not there is refused, and makes none.
    let err = fails_with(
        &env,
        &vars,
        &["provider", "gc", "--pool", &format!("object:{url}")],
    );
    assert!(err.contains("no pool here"), "{err}");
    assert!(objects.list("").is_empty());

    // A bucket name that S3 would refuse never reaches it.
    let err = fails_with(&env, &vars, &create("s3:///pool"));
    assert!(err.contains("s3://BUCKET"), "{err}");
}

/// The provider settings of the datastore's `pool`, with `key = value` added.
fn add_setting(env: &Env, key: &str, value: &str) {
    let toml = env.share.join(".cvol/datastore.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    // The last table is the object provider's settings.
    let (_, last_table) = text.rsplit_once("\n[").unwrap();
    assert!(
        last_table.starts_with("providers.settings]")
            && last_table.contains(&format!("url = \"{}\"", env.object_url.as_deref().unwrap())),
        "{text}"
    );
    text.push_str(&format!("{key} = \"{value}\"\n"));
    std::fs::write(toml, text).unwrap();
}

#[test]
fn a_store_that_goes_away_mid_flush_fails_it_and_a_retry_succeeds_untorn() {
    let mut server = Garage::start();
    let mut env = Env::empty();
    let url = server.new_pool_url();
    env.vars.extend(server.vars());
    env.ok(&[
        "datastore",
        "create",
        "--name",
        "ds1",
        "--provider",
        &format!("pool=object:{url}"),
    ]);
    env.object_url = Some(url);
    add_setting(&env, "timeout", "2");
    env.ok(&["vm", "create", "demo", "--disk", "256M"]);

    let m = env.mount(false);
    let disk = common::open_rw(m.path("demo/demo-flat.vmdk"));
    let first = vec![0xa1u8; 24 << 20];
    disk.write_all_at(&first, 0).unwrap();
    disk.sync_all().unwrap();

    // Enough dirty chunks that the flush is still uploading when the server dies: it is
    // killed once the first of them has landed, however fast the machine is.
    let second: Vec<u8> = (0..192u32 << 20).map(|i| (i % 253) as u8).collect();
    disk.write_all_at(&second, 4 << 20).unwrap();
    let objects = env.pool_objects();
    let chunks_before = objects.list("chunks").len();
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        let flush = s.spawn(|| disk.sync_all());
        while objects.list("chunks").len() == chunks_before {
            assert!(
                !flush.is_finished(),
                "the flush ended before any chunk landed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        server.kill();
        flush.join().unwrap()
    })
    .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the flush failed after {:?}",
        started.elapsed()
    );
    // The guest still reads what it wrote: the cache keeps what was not flushed.
    let mut back = vec![0u8; second.len()];
    disk.read_exact_at(&mut back, 4 << 20).unwrap();
    assert!(back == second);

    server.restart();
    // Nothing of the failed flush is visible: the pool holds the first flush, whole.
    let mut expected = vec![0u8; 256 << 20];
    expected[..first.len()].copy_from_slice(&first);
    assert!(
        env.volume_bytes("demo/demo") == expected,
        "the failed flush left a torn volume"
    );

    disk.sync_all().expect("the retried flush succeeds");
    expected[4 << 20..(4 << 20) + second.len()].copy_from_slice(&second);
    assert!(env.volume_bytes("demo/demo") == expected);
    drop(disk);
    let log = m.stop();
    let url = env.object_url.as_deref().unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("disk I/O failed") && l.contains(url)),
        "the daemon names the failing pool: {log}"
    );
    let report = env.json(&["datastore", "fsck"]);
    assert!(
        report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );
}

/// kill -9 of the host daemon at random moments while a writer writes and fsyncs: after
/// each, the volume reads back exactly as of a completed flush (the last one the writer
/// saw succeed, or one it started whose answer the kill cut off), never a mix. The kill
/// comes at a random moment after the cycle's first completed flush, so every cycle has
/// flushed state to lose however slow the store is on the day.
/// CVOL_CRASH_CYCLES cycles (5 by default; scripts/crash-object.sh runs 100).
fn kill_9_during_writes_keeps_every_flushed_block(env: &Env) {
    kill_9_during_writes(env, Flushes::Atomic);
}

/// What a pool promises of the writes a kill -9 cuts off.
#[derive(Clone, Copy, PartialEq)]
enum Flushes {
    /// An object pool: the volume is as of one flush, whole.
    Atomic,
    /// A block device (rbd): every flushed block is intact; a block written after the
    /// last flush holds its flushed bytes or bytes written to it since.
    Durable,
}

fn kill_9_during_writes(env: &Env, flushes: Flushes) {
    let cycles: usize = std::env::var("CVOL_CRASH_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(5);
    const SIZE: usize = 16 << 20;
    const BLOCK: usize = 64 << 10;
    env.ok(&["vm", "create", "crash", "--disk", "16M"]);
    // What the disk held when the previous cycle's daemon was killed, as read back.
    let mut previous = vec![0u8; SIZE];
    let mut total_flushes = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for cycle in 0..cycles {
        let m = env.mount(false);
        let path = m.path("crash/crash-flat.vmdk");
        let kill_after = Duration::from_millis(next() % 400);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (flushed_tx, flushed_rx) = std::sync::mpsc::channel();
        let start = previous.clone();
        let rounds = next();
        let writer = std::thread::spawn(move || {
            // Returns the image as of its last completed fsync, and the one it was
            // fsyncing when the daemon died (if any).
            let mut image = start;
            let mut synced = image.clone();
            let mut flushes = 0;
            // What each block was written with since the last completed flush.
            let mut since: std::collections::HashMap<usize, Vec<u8>> = Default::default();
            let disk = common::open_rw(&path);
            let mut r = rounds;
            loop {
                for _ in 0..8 {
                    r = r
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let block = (r >> 33) as usize % (SIZE / BLOCK);
                    let fill = (r >> 20) as u8;
                    let data = vec![fill; BLOCK];
                    since.entry(block).or_default().push(fill);
                    if disk.write_all_at(&data, (block * BLOCK) as u64).is_err() {
                        return (synced, None, flushes, since);
                    }
                    image[block * BLOCK..(block + 1) * BLOCK].copy_from_slice(&data);
                }
                match disk.sync_all() {
                    Ok(()) => {
                        synced = image.clone();
                        since.clear();
                        flushes += 1;
                        let _ = flushed_tx.send(());
                    }
                    Err(e) => {
                        assert_ne!(e.kind(), ErrorKind::InvalidInput);
                        return (synced, Some(image), flushes, since);
                    }
                }
                if done_rx.try_recv().is_ok() {
                    return (synced, None, flushes, since);
                }
            }
        });
        flushed_rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("cycle {cycle}: no flush completed within 60 s"));
        std::thread::sleep(kill_after);
        m.kill_9();
        let _ = done_tx.send(());
        let (synced, in_flight, done, since) = writer.join().unwrap();
        total_flushes += done;

        let m = env.mount(false);
        let back = std::fs::read(m.path("crash/crash-flat.vmdk")).unwrap();
        if flushes == Flushes::Durable {
            for (i, (got, flushed)) in back.chunks(BLOCK).zip(synced.chunks(BLOCK)).enumerate() {
                let later = since.get(&i).map_or(&[][..], Vec::as_slice);
                assert!(
                    got == flushed || later.iter().any(|&f| got.iter().all(|&b| b == f)),
                    "cycle {cycle}: block {i} after kill -9 is neither its flushed bytes nor bytes written to it since"
                );
            }
            previous = back;
            m.stop();
            continue;
        }
        let matches_synced = back == synced;
        let matches_in_flight = in_flight.as_ref().is_some_and(|i| back == *i);
        assert!(
            matches_synced || matches_in_flight,
            "cycle {cycle}: after kill -9 the disk is neither the last flushed state nor the one being flushed ({} of {} blocks differ from the flushed one)",
            back.chunks(BLOCK)
                .zip(synced.chunks(BLOCK))
                .filter(|(a, b)| a != b)
                .count(),
            SIZE / BLOCK
        );
        previous = back;
        m.stop();
    }
    let store = match &env.rbd_pool {
        Some(_) => Some("rbd"),
        None => env.object_url.as_deref().and_then(|u| u.split(':').next()),
    };
    eprintln!(
        "{store:?}: {cycles} kill -9 cycles, {total_flushes} completed flushes, every one intact"
    );
}

#[test]
fn kill_9_of_the_host_daemon_keeps_every_flushed_block_on_rbd() {
    kill_9_during_writes(&Env::datastore_on_rbd(), Flushes::Durable);
}

#[test]
fn kill_9_of_the_host_daemon_keeps_every_flushed_block_on_s3() {
    kill_9_during_writes_keeps_every_flushed_block(&Env::datastore_on_s3());
}

#[test]
fn kill_9_of_the_host_daemon_keeps_every_flushed_block_on_file_objects() {
    kill_9_during_writes_keeps_every_flushed_block(&Env::datastore_on_object());
}

#[test]
fn kill_9_of_the_host_daemon_keeps_every_flushed_block_on_compressed_encrypted_s3() {
    kill_9_during_writes_keeps_every_flushed_block(&Env::datastore_on_sealed_s3());
}

/// kill -9 while the disk cache is being written (every upload goes through to it, and
/// a one-chunk memory cache makes the writer's chunks come back from it): after each
/// remount, reads served from what the killed daemon left in the cache are exactly a
/// completed flush, never a torn entry.
#[test]
fn kill_9_during_disk_cache_writes_serves_nothing_wrong_after_a_remount() {
    let env = Env::datastore_on_sealed_object();
    let cache = env.tmp.path().join("disk-cache");
    add_setting(&env, "cache_mib", "4");
    add_setting(&env, "disk_cache", cache.to_str().unwrap());
    kill_9_during_writes_keeps_every_flushed_block(&env);
    let entries = std::fs::read_dir(&cache)
        .unwrap()
        .map(|volume| std::fs::read_dir(volume.unwrap().path()).unwrap().count())
        .sum::<usize>();
    assert!(entries > 0, "the disk cache was used");
}

/// A disk cache on a full file system (1 MiB: no chunk entry fits) costs only speed:
/// what does not fit is not kept, what was half written is removed, and the disk writes
/// and reads back the same, also after a remount.
#[test]
fn a_full_disk_cache_keeps_the_disk_working() {
    let env = Env::datastore_on_sealed_object();
    let full = common::Tmpfs::mount(&env.tmp.path().join("disk-cache"), "1m");
    add_setting(&env, "cache_mib", "4");
    add_setting(&env, "disk_cache", full.0.to_str().unwrap());
    env.ok(&["vm", "create", "demo", "--disk", "16M"]);
    let mut model: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let m = env.mount(false);
    let disk = common::open_rw(m.path("demo/demo-flat.vmdk"));
    disk.write_all_at(&model, 0).unwrap();
    disk.sync_all().unwrap();
    // Small writes: patches, whose log pieces are kept until the cache fills up too.
    for at in (0..model.len()).step_by(397 << 10) {
        model[at..at + 100].fill(0xee);
        disk.write_all_at(&[0xee; 100], at as u64).unwrap();
        disk.sync_all().unwrap();
    }
    let mut back = vec![0u8; model.len()];
    disk.read_exact_at(&mut back, 0).unwrap();
    assert!(back == model, "read back while mounted");
    drop(disk);
    let log = m.stop();
    assert!(
        log.contains("disk cache: cannot keep") && log.contains("No space left on device"),
        "the cache filled up: {log}"
    );
    let m = env.mount(false);
    assert!(
        std::fs::read(m.path("demo/demo-flat.vmdk")).unwrap() == model,
        "read back after a remount"
    );
    m.stop();
    let mut left = vec![full.0.clone()];
    while let Some(dir) = left.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            assert!(!path.to_string_lossy().ends_with(".tmp"), "{path:?} left");
            if path.is_dir() {
                left.push(path);
            }
        }
    }
}

/// `cvol provider stats`: a small write lives in a log (the object its flush committed
/// with); once its chunk is written whole and a whole manifest no longer builds on that
/// flush, the log is named no more, and left to gc.
#[test]
fn stats_tell_chunks_logs_and_garbage_apart() {
    use std::io::{Seek, SeekFrom, Write};
    let env = Env::datastore_on_object();
    let pool = format!("object:{}", env.object_url.as_deref().unwrap());
    env.ok(&["vm", "create", "s", "--disk", "8M"]);
    let stats = || -> serde_json::Value {
        serde_json::from_str(&env.ok(&["--json", "provider", "stats", "--pool", &pool])).unwrap()
    };
    let m = env.mount(false);
    let mut disk = std::fs::File::options()
        .write(true)
        .open(m.path("s/s-flat.vmdk"))
        .unwrap();
    disk.write_all(&[7; 4096]).unwrap();
    disk.sync_all().unwrap();
    let s = stats();
    assert_eq!(
        (s["live_chunks"].as_u64(), s["logs"].as_u64()),
        (Some(0), Some(1)),
        "{s}"
    );
    // The record and the manifest it was committed with.
    let log_bytes = s["log_bytes"].as_u64().unwrap();
    assert!((4096..4096 + 1024).contains(&log_bytes), "{s}");
    assert_eq!(s["logical_bytes"], 4096, "{s}");

    disk.seek(SeekFrom::Start(0)).unwrap();
    disk.write_all(&vec![8; 2 << 20]).unwrap();
    disk.sync_all().unwrap();
    drop(disk);
    // The detach restates the volume in a whole manifest.
    m.stop();
    let s = stats();
    assert_eq!(
        (s["live_chunks"].as_u64(), s["logs"].as_u64()),
        (Some(1), Some(0)),
        "{s}"
    );
    assert_eq!(s["live_bytes"], 4 << 20, "{s}");
    assert_eq!(s["unreferenced_objects"], 1, "the log: {s}");
    assert_eq!(s["unreferenced_bytes"], log_bytes, "{s}");
}
