//! Control-plane throughput and latency: create + attach + detach + delete cycles per
//! second through the provider service (real HTTP on loopback, the `remote` provider as
//! client) with 1 and 8 clients, against the same cycles on the `file` provider called
//! in-process on the same kind of pool (the peer: what the service adds is the ratio).
//!
//! Run: `cargo bench -p cvol-provider-service --bench control_plane [-- SECONDS]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use cvol_format::{ProviderId, VolumeId};
use cvol_provider::{FileProvider, NoProgress, Provider, RemoteProvider, VolumeSource};

/// Runs cycles on `clients` threads for `secs`; returns cycles per second and the
/// median and 99th percentile latency of one cycle.
fn measure(provider: Arc<dyn Provider>, clients: usize, secs: f64) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut latencies: Vec<Duration> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|c| {
                let provider = provider.clone();
                s.spawn(move || {
                    let host = format!("bench-host-{c}");
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let id = VolumeId::generate();
                        provider
                            .create_volume(
                                &id,
                                &VolumeSource::Blank { size: 1 << 30 },
                                "bench",
                                &NoProgress,
                            )
                            .unwrap();
                        let attachment = provider.attach(&id, &host, false).unwrap();
                        drop(attachment);
                        provider.detach(&id, &host).unwrap();
                        provider.delete_volume(&id).unwrap();
                        latencies.push(t.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    (latencies.len() as f64 / elapsed, at(0.5), at(0.99))
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    let id = ProviderId::new("pool").unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn Provider> = Arc::new(FileProvider::open(&id, local_dir.path()).unwrap());

    let served_dir = tempfile::tempdir().unwrap();
    let served: Arc<dyn Provider> = Arc::new(FileProvider::open(&id, served_dir.path()).unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(async move {
        axum::serve(
            listener,
            cvol_provider_service::router(served, Some("bench-token".into())),
        )
        .await
        .unwrap()
    });
    let remote: Arc<dyn Provider> = Arc::new(
        RemoteProvider::new(
            &id,
            &url,
            Some("bench-token".into()),
            Duration::from_secs(30),
            &Default::default(),
        )
        .unwrap(),
    );

    println!("create+attach+detach+delete of a 1 GiB volume, {secs} s per row");
    println!("| clients | file in-process (cycles/s, p50, p99) | provider service (cycles/s, p50, p99) | service / in-process |");
    println!("|---|---|---|---|");
    for clients in [1, 8] {
        let (l_rate, l50, l99) = measure(local.clone(), clients, secs);
        let (r_rate, r50, r99) = measure(remote.clone(), clients, secs);
        println!(
            "| {clients} | {l_rate:.0}, {:.2} ms, {:.2} ms | {r_rate:.0}, {:.2} ms, {:.2} ms | {:.2}x |",
            l50.as_secs_f64() * 1e3,
            l99.as_secs_f64() * 1e3,
            r50.as_secs_f64() * 1e3,
            r99.as_secs_f64() * 1e3,
            r_rate / l_rate
        );
    }
}
