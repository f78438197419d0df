//! Object-pool benchmark parts that need the store directly (scripts/bench-object.sh runs
//! them against the same S3 server as its NBD runs):
//!
//! - `peer URL MIB`: the store's own speed, the peer of cvol's sequential NBD runs: MIB
//!   MiB of random bytes put as plain 4 MiB objects, 8 at a time (cvol's chunk size and
//!   upload parallelism), then got back the same way. Prints MiB/s for both.
//! - `snapshots URL`: snapshot and clone time of a 1 GiB and a 100 GiB volume whose every
//!   chunk is mapped. Writing 100 GiB is beyond these machines, so the volumes are written
//!   one chunk, then their newest manifest is restated with every chunk index naming that
//!   one chunk object: the same manifest size as a fully written volume, which is all
//!   that a copy-free snapshot or clone reads and writes.
//!
//!   cargo bench -p cvol-provider --bench object_pool -- peer s3://bucket/prefix 1024

use std::sync::Arc;
use std::time::{Duration, Instant};

use cvol_format::{ProviderId, SnapshotName, VolumeId};
use cvol_provider::object::{open_store, ObjectSettings, DEFAULT_CHUNK_SIZE};
use cvol_provider::{NoProgress, ObjectProvider, Provider, VolumeSource};
use futures::StreamExt;
use object_store::path::Path;
use object_store::ObjectStore;

fn store(url: &str) -> (Arc<dyn ObjectStore>, Path) {
    open_store(url, &ObjectSettings::default()).unwrap()
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect()
}

fn peer(url: &str, mib: usize) {
    let (store, root) = store(url);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let chunk = DEFAULT_CHUNK_SIZE as usize;
    let count = (mib << 20) / chunk;
    let data = bytes::Bytes::from(random_bytes(chunk * count));
    let path = |i: usize| root.child("peer").child(format!("{i:08}"));
    let start = Instant::now();
    runtime.block_on(async {
        futures::stream::iter(0..count)
            .map(|i| {
                let (store, data) = (store.clone(), data.slice(i * chunk..(i + 1) * chunk));
                let path = path(i);
                async move { store.put(&path, data.into()).await.unwrap() }
            })
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
    });
    let put = start.elapsed();
    let start = Instant::now();
    runtime.block_on(async {
        futures::stream::iter(0..count)
            .map(|i| {
                let store = store.clone();
                let path = path(i);
                async move { store.get(&path).await.unwrap().bytes().await.unwrap().len() }
            })
            .buffered(8)
            .collect::<Vec<_>>()
            .await
    });
    let get = start.elapsed();
    let rate = |d: Duration| (count * chunk) as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!("peer_put_mib_s {:.1}", rate(put));
    println!("peer_get_mib_s {:.1}", rate(get));
}

/// Milliseconds of the median of `runs` calls of `f`.
fn median_ms(runs: usize, mut f: impl FnMut(usize)) -> f64 {
    let mut times: Vec<Duration> = (0..runs)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2].as_secs_f64() * 1000.0
}

fn snapshots(url: &str) {
    let id = ProviderId::new("bench").unwrap();
    let pool = ObjectProvider::open(&id, url, &ObjectSettings::default()).unwrap();
    let (store, root) = store(url);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (label, size) in [("1 GiB", 1u64 << 30), ("100 GiB", 100 << 30)] {
        let volume = VolumeId::generate();
        pool.create_volume(&volume, &VolumeSource::Blank { size }, "bench", &NoProgress)
            .unwrap();
        let attachment = pool.attach(&volume, "bench", false).unwrap();
        let chunk = DEFAULT_CHUNK_SIZE as usize;
        attachment.device.write_at(&random_bytes(chunk), 0).unwrap();
        attachment.device.flush().unwrap();
        drop(attachment);
        pool.detach(&volume, "bench").unwrap();
        // Map every chunk index to the one written chunk (see the module comment).
        let manifests = root
            .child("volumes")
            .child(volume.as_str())
            .child("manifests");
        let newest = runtime
            .block_on(async {
                let mut all: Vec<_> = store
                    .list(Some(&manifests))
                    .map(|m| m.unwrap().location)
                    .collect()
                    .await;
                all.sort();
                all.pop()
            })
            .unwrap();
        let mut manifest: serde_json::Value = serde_json::from_slice(
            &runtime
                .block_on(async { store.get(&newest).await.unwrap().bytes().await })
                .unwrap(),
        )
        .unwrap();
        let key = manifest["chunks"]["0"].clone();
        // Restated whole (the newest may be a delta over the one before it).
        let fields = manifest.as_object_mut().unwrap();
        fields.remove("base");
        fields.remove("holes");
        let count = size / DEFAULT_CHUNK_SIZE;
        manifest["chunks"] = (0..count)
            .map(|i| (i.to_string(), key.clone()))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let name = newest.filename().unwrap().to_string();
        let (generation, seq) = name.trim_end_matches(".json").split_once('-').unwrap();
        let seq: u64 = seq.parse::<u64>().unwrap() + 1;
        manifest["seq"] = seq.into();
        let restated = manifests.child(format!("{generation}-{seq:020}.json"));
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let manifest_len = bytes.len();
        runtime
            .block_on(store.put(&restated, bytes.into()))
            .unwrap();
        assert_eq!(pool.volume(&volume).unwrap().size, size);

        let snapshot_ms = median_ms(9, |i| {
            let name = SnapshotName::new(&format!("s{i}")).unwrap();
            pool.create_snapshot(&volume, &name, &NoProgress).unwrap();
        });
        let clone_ms = median_ms(9, |i| {
            let name = SnapshotName::new(&format!("s{i}")).unwrap();
            let clone = VolumeId::generate();
            pool.create_volume(
                &clone,
                &VolumeSource::Snapshot(volume.clone(), name),
                "bench",
                &NoProgress,
            )
            .unwrap();
        });
        println!(
            "snapshot {label} ({count} chunks, manifest {manifest_len} bytes): snapshot {snapshot_ms:.1} ms, clone {clone_ms:.1} ms (median of 9)"
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["peer", url, mib] => peer(url, mib.parse().expect("MIB")),
        ["snapshots", url] => snapshots(url),
        _ => {
            eprintln!("usage: object_pool peer URL MIB | snapshots URL");
            std::process::exit(2);
        }
    }
}
