//! `cvol nfs serve`: the embedded NFSv3 server in the foreground.

use std::time::Duration;

use cvol_nfs_server::NfsServer;

use super::signals::{block_termination_signals, wait_signal};
use super::Context;
use crate::cli::NfsCommand;

pub fn run(ctx: &Context, cmd: NfsCommand) -> anyhow::Result<()> {
    let NfsCommand::Serve { dir, listen } = cmd;
    if !listen.ip().is_loopback() {
        tracing::warn!(
            "serving {} on {listen}: AUTH_SYS trusts what clients claim; \
             reach it only from hosts you trust",
            dir.display()
        );
    }
    let signals = block_termination_signals();
    let server = NfsServer::start(&dir, listen)?;
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
