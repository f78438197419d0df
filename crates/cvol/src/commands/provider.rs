//! `cvol provider serve`: the provider service in the foreground.

use anyhow::{bail, Context as _};
use cvol_provider::open_provider;
use tokio::signal::unix::{signal, SignalKind};

use super::datastore::parse_provider;
use super::Context;
use crate::cli::ProviderCommand;

pub fn run(ctx: &Context, cmd: ProviderCommand) -> anyhow::Result<()> {
    let ProviderCommand::Serve {
        pool,
        listen,
        token_file,
    } = cmd;
    let config = parse_provider(&format!("pool={pool}"))?;
    if config.kind != "file" {
        bail!("--pool {pool:?}: a service serves a pool of its own: file:DIR");
    }
    let provider = open_provider(&config)?;
    let token = match &token_file {
        Some(path) => Some(
            cvol_provider::read_token(&path.to_string_lossy())
                .with_context(|| format!("token file {}", path.display()))?,
        ),
        None => {
            if !listen.ip().is_loopback() {
                tracing::warn!("serving on {listen} without --token-file: anyone who reaches it controls the pool");
            }
            None
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let url = format!("http://{}", listener.local_addr()?);
        if ctx.json {
            crate::output::print_json(&serde_json::json!({
                "url": url,
                "pool": provider.location(),
            }))?;
        } else {
            println!("{url}");
        }
        let app = cvol_provider_service::router(provider, token);
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                tracing::info!("stopping the provider service on {url}");
            })
            .await
            .context("the provider service failed")
    })
}
