//! `cvol provider serve|gc|stats`: the provider service in the foreground, and an object
//! pool's garbage and contents.

use std::time::Duration;

use anyhow::{bail, Context as _};
use cvol_format::ProviderConfig;
use cvol_provider::object::ObjectSettings;
use cvol_provider::{open_provider, ObjectProvider};
use tokio::signal::unix::{signal, SignalKind};

use super::datastore::parse_provider;
use super::Context;
use crate::cli::{ProviderCommand, TlsServerArgs};

pub fn run(ctx: &Context, cmd: ProviderCommand) -> anyhow::Result<()> {
    match cmd {
        ProviderCommand::Serve {
            pool,
            settings,
            listen,
            token_file,
            tls,
            metrics: _,
        } => {
            let mut config = open_pool(&pool)?;
            for setting in &settings {
                let (key, value) = setting
                    .split_once('=')
                    .filter(|(key, _)| !key.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("invalid setting {setting:?}: expected KEY=VALUE, e.g. conf=/etc/ceph/ceph.conf"))?;
                config.settings.insert(key.to_string(), value.to_string());
            }
            serve(ctx, &config, listen, token_file, &tls)
        }
        ProviderCommand::Gc { pool, grace, apply } => gc(ctx, &pool, grace, apply),
        ProviderCommand::Stats { pool } => stats(ctx, &pool),
    }
}

/// The pool `spec` (`file:DIR`, `object:URL` or `rbd:POOL`) as this process opens it.
fn open_pool(spec: &str) -> anyhow::Result<ProviderConfig> {
    let config = parse_provider(&format!("pool={spec}"))?;
    if !matches!(config.kind.as_str(), "file" | "object" | "rbd") {
        bail!(
            "--pool {spec:?}: expected file:DIR, object:URL or rbd:POOL (a pool this process opens itself)"
        );
    }
    Ok(config)
}

/// The object pool `spec` names, which must exist: collecting or counting in a pool
/// that is not there is a mistyped URL, not a pool to make.
fn existing_object_pool(spec: &str, what: &str) -> anyhow::Result<ObjectProvider> {
    let config = open_pool(spec)?;
    if config.kind != "object" {
        bail!("--pool {spec:?}: {what}");
    }
    let settings = ObjectSettings {
        create: false,
        ..ObjectSettings::from_config(&config)?
    };
    Ok(ObjectProvider::open(
        &config.id,
        &config.settings["url"],
        &settings,
    )?)
}

fn stats(ctx: &Context, spec: &str) -> anyhow::Result<()> {
    let pool = existing_object_pool(spec, "only object pools have chunks and logs to count")?;
    // A dry run with no grace: what the newest manifests and the snapshots name is
    // live, everything else (uploads in flight included) is not.
    let report = pool.gc(Duration::ZERO, false)?;
    if ctx.json {
        return crate::output::print_json(&serde_json::json!({
            "live_chunks": report.referenced - report.logs,
            "live_bytes": report.live_bytes,
            "logs": report.logs,
            "log_bytes": report.log_bytes,
            "unreferenced_objects": report.garbage_chunks.len(),
            "unreferenced_bytes": report.garbage_bytes,
            "logical_bytes": report.logical_bytes,
        }));
    }
    let stored = report.live_bytes + report.log_bytes;
    let ratio = if stored == 0 {
        "no data".to_string()
    } else {
        format!("{:.2}", report.logical_bytes as f64 / stored as f64)
    };
    println!(
        "live: {} chunks, {} bytes; in logs: {} objects, {} bytes; {} bytes of data stored in them (ratio {ratio}); named by no current manifest or snapshot: {} objects, {} bytes",
        report.referenced - report.logs,
        report.live_bytes,
        report.logs,
        report.log_bytes,
        report.logical_bytes,
        report.garbage_chunks.len(),
        report.garbage_bytes,
    );
    Ok(())
}

fn gc(ctx: &Context, spec: &str, grace: u64, apply: bool) -> anyhow::Result<()> {
    let pool = existing_object_pool(
        spec,
        "only object pools collect garbage (a file pool frees space as it deletes)",
    )?;
    let report = pool.gc(Duration::from_secs(grace), apply)?;
    if ctx.json {
        return crate::output::print_json(&serde_json::json!({
            "applied": apply,
            "chunks": report.chunks,
            "referenced": report.referenced,
            "garbage_chunks": report.garbage_chunks,
            "garbage_bytes": report.garbage_bytes,
            "superseded_manifests": report.superseded_manifests,
            "young_chunks": report.young_chunks,
        }));
    }
    let verb = if apply {
        "deleted"
    } else {
        "would delete (dry run; --apply deletes)"
    };
    println!(
        "{} chunks, {} referenced, {} younger than the grace period; {verb}: {} chunks ({} bytes), {} superseded manifests",
        report.chunks,
        report.referenced,
        report.young_chunks,
        report.garbage_chunks.len(),
        report.garbage_bytes,
        report.superseded_manifests.len()
    );
    Ok(())
}

fn serve(
    ctx: &Context,
    pool: &ProviderConfig,
    listen: std::net::SocketAddr,
    token_file: Option<std::path::PathBuf>,
    tls: &TlsServerArgs,
) -> anyhow::Result<()> {
    let tls_config = crate::tls::optional_server_config(
        tls.tls_cert.as_deref(),
        tls.tls_key.as_deref(),
        tls.tls_client_ca.as_deref(),
    )?;
    crate::tls::check_plain(
        listen,
        tls_config.is_some(),
        tls.insecure,
        "the provider service",
    )?;
    let provider = open_provider(pool)?;
    let token = match &token_file {
        Some(path) => Some(
            cvol_provider::read_token(&path.to_string_lossy())
                .with_context(|| format!("token file {}", path.display()))?,
        ),
        None => {
            if !listen.ip().is_loopback() && tls.tls_client_ca.is_none() {
                tracing::warn!("serving on {listen} without --token-file or --tls-client-ca: anyone who reaches it controls the pool");
            }
            None
        }
    };
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let scheme = if tls_config.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    if ctx.json {
        crate::output::print_json(&serde_json::json!({
            "url": url,
            "pool": provider.location(),
        }))?;
    } else {
        println!("{url}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let app = cvol_provider_service::router(provider, token);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("stopping the provider service on {url}");
        };
        crate::tls::serve(listener, tls_config, app, stop)
            .await
            .context("the provider service failed")
    })
}
