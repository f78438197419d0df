//! `--metrics ADDR`: a daemon's Prometheus endpoint, `GET http://ADDR/metrics`.
//!
//! The libraries record through the `metrics` facade (per-volume I/O, NFS calls, the
//! object pool's cache and store, leases, the provider service's requests); without an
//! endpoint no recorder is installed and recording costs next to nothing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::cli::MetricsArg;

/// Histogram buckets, in seconds: every histogram is a latency, from a page-cache hit
/// (tens of microseconds) to an object-store upload or a stalled NFS server (seconds).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histograms drop samples already folded into their buckets.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the process's recorder and serves it on `addr` (port 0 picks a free port)
/// from a thread of its own, for as long as the process lives, over TLS and behind a
/// bearer token when `access` names them. Returns the address bound.
pub fn serve(addr: SocketAddr, access: &MetricsArg) -> anyhow::Result<SocketAddr> {
    let tls = crate::tls::optional_server_config(
        access.metrics_tls_cert.as_deref(),
        access.metrics_tls_key.as_deref(),
        access.metrics_tls_client_ca.as_deref(),
    )?;
    let token = match &access.metrics_token_file {
        Some(path) => Some(
            cvol_provider::read_token(&path.to_string_lossy())
                .with_context(|| format!("metrics token file {}", path.display()))?,
        ),
        None => None,
    };
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "metrics on {addr} over plain HTTP: anyone on the path reads them (--metrics-tls-cert/--metrics-tls-key serve HTTPS)"
        );
    }
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
    let scheme = if tls.is_some() { "https" } else { "http" };
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(run(listener, handle, tls, token)))?;
    tracing::info!("metrics at {scheme}://{bound}/metrics");
    Ok(bound)
}

async fn run(
    listener: std::net::TcpListener,
    handle: PrometheusHandle,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: Option<String>,
) {
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
    let app = cvol_provider_service::with_bearer_token(app, token);
    if let Err(e) = crate::tls::serve(listener, tls, app, std::future::pending()).await {
        tracing::error!("the metrics endpoint stopped: {e}");
    }
}
