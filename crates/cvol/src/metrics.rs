//! `--metrics ADDR`: a daemon's Prometheus endpoint, `GET http://ADDR/metrics`.
//!
//! The libraries record through the `metrics` facade (per-volume I/O, NFS calls, the
//! object pool's cache and store, leases, the provider service's requests); without an
//! endpoint no recorder is installed and recording costs next to nothing.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Histogram buckets, in seconds: every histogram is a latency, from a page-cache hit
/// (tens of microseconds) to an object-store upload or a stalled NFS server (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histograms drop samples already folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process's recorder and serves it on `addr` (port 0 picks a free port)
/// from a thread of its own, for as long as the process lives. Returns the address
/// bound.
pub fn serve(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .context("metrics buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(run(listener, handle)))?;
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

async fn run(listener: std::net::TcpListener, handle: PrometheusHandle) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    );
    let served = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => axum::serve(listener, app).await,
        Err(e) => Err(e),
    };
    if let Err(e) = served {
        tracing::error!("the metrics endpoint stopped: {e}");
    }
}
