//! `cvol nfs serve`: the embedded NFSv3 server in the foreground.

use std::time::Duration;

use cvol_nfs_server::{ExportPolicy, NfsServer};

use super::signals::{block_termination_signals, wait_signal};
use super::Context;
use crate::cli::NfsCommand;

pub fn run(ctx: &Context, cmd: NfsCommand) -> anyhow::Result<()> {
    let NfsCommand::Serve {
        dir,
        listen,
        allow,
        read_only,
        no_root_squash,
        file_handles,
        metrics: _,
    } = cmd;
    if !listen.ip().is_loopback() && allow.is_empty() {
        tracing::warn!(
            "serving {} on {listen} to every client: AUTH_SYS trusts what clients claim; \
             limit it with --allow CIDR to the hosts you trust",
            dir.display()
        );
    }
    let signals = block_termination_signals();
    let policy = ExportPolicy {
        allow,
        read_only,
        root_squash: !no_root_squash,
        file_handles: usize::try_from(file_handles).unwrap_or(usize::MAX),
    };
    let server = NfsServer::start_with(&dir, listen, &policy)?;
    let url = server.url();
    if ctx.json {
        crate::output::print_json(&serde_json::json!({
            "url": url.to_string(),
            "dir": std::path::absolute(&dir)?,
        }))?;
    } else {
        println!("{url}");
    }
    let signal = loop {
        if let Some(signal) = wait_signal(&signals, Duration::from_secs(1)) {
            break signal;
        }
    };
    tracing::info!("signal {signal}: stopping the NFS server on {url}");
    drop(server);
    Ok(())
}
