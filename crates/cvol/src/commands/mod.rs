//! One module per command group; each turns arguments into datastore calls and prints.

mod datastore;
mod disk;
mod host;
mod import;
mod mount;
mod nfs;
mod provider;
mod signals;
mod up;
mod vm;
mod vm_snapshot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use cvol_datastore::Datastore;
use cvol_share::{LocalShare, NfsOptions, NfsShare, NfsUrl, Share};

use crate::cli::{Cli, Command};

/// Set by tests (and by anyone checking crash safety by hand) to `op:step`, e.g.
/// `vm-create:volume-created`: the process aborts right after that step, as a crash would.
pub const FAILPOINT_ENV: &str = "CVOL_FAILPOINT";

/// What every command needs from the global options.
pub struct Context {
    share: Option<String>,
    nfs: NfsOptions,
    host: String,
    /// The host id as given (`--host-id`, `CVOL_HOST_ID`), if it was.
    host_arg: Option<String>,
    json: bool,
    walk_parallel: usize,
}

impl Context {
    fn share_arg(&self) -> anyhow::Result<&str> {
        self.share
            .as_deref()
            .ok_or_else(|| anyhow!("no share given: pass --share PATH|URL or set CVOL_SHARE"))
    }

    fn open_share(dir: &Path) -> anyhow::Result<Arc<dyn Share>> {
        let dir = std::path::absolute(dir)?;
        let share = LocalShare::open(&dir)
            .with_context(|| format!("cannot open share {}", dir.display()))?;
        Ok(Arc::new(share))
    }

    /// The share given by `--share`: an `nfs://` URL or a local directory.
    fn share(&self) -> anyhow::Result<Arc<dyn Share>> {
        self.open_share_at(self.share_arg()?)
    }

    /// The share at `share`: an `nfs://` URL or a local directory.
    fn open_share_at(&self, share: &str) -> anyhow::Result<Arc<dyn Share>> {
        if share.starts_with("nfs://") {
            return self.open_nfs(&NfsUrl::parse(share)?);
        }
        Self::open_share(Path::new(share))
    }

    /// The NFS share at `url`, with the NFS settings given on the command line.
    fn open_nfs(&self, url: &NfsUrl) -> anyhow::Result<Arc<dyn Share>> {
        let nfs = NfsShare::open(url, &self.nfs).with_context(|| format!("cannot mount {url}"))?;
        Ok(Arc::new(nfs))
    }

    /// The datastore on the share given by `--share`.
    fn datastore(&self) -> anyhow::Result<Datastore> {
        Ok(with_env_failpoint(
            Datastore::open(self.share()?, &self.host)?.with_walk_parallel(self.walk_parallel),
        ))
    }
}

fn with_env_failpoint(datastore: Datastore) -> Datastore {
    match std::env::var(FAILPOINT_ENV) {
        Ok(target) if !target.is_empty() => datastore.with_failpoint(Arc::new(move |step| {
            if step == target {
                eprintln!("cvol: {FAILPOINT_ENV}={step}: aborting here");
                std::process::abort();
            }
        })),
        _ => datastore,
    }
}

/// This machine's host name: the host id unless one is given.
pub fn default_host_id() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Where NFS contents are kept between runs: `--cache-dir` (empty: nowhere), else the
/// user's cache directory.
fn content_cache_dir(flag: Option<PathBuf>) -> Option<PathBuf> {
    let dir = match flag {
        Some(dir) => dir,
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            Some(cache) => PathBuf::from(cache).join("cvol"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache/cvol"),
        },
    };
    (!dir.as_os_str().is_empty()).then(|| dir.join("nfs"))
}

/// Runs the command `cli` asks for.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Context {
        share: cli.share,
        nfs: NfsOptions {
            timeout: Duration::from_secs(cli.nfs_timeout),
            attribute_cache: Duration::from_millis(cli.attr_cache_ms),
            connections: usize::from(cli.nfs_connections),
            content_cache_dir: content_cache_dir(cli.cache_dir.clone()),
        },
        host: cli.host_id.clone().unwrap_or_else(default_host_id),
        host_arg: cli.host_id,
        json: cli.json,
        walk_parallel: usize::from(cli.walk_parallel),
    };
    if let Some(metrics) = cli.command.metrics() {
        if let Some(addr) = metrics.addr {
            crate::metrics::serve(addr, metrics)?;
        }
    }
    match cli.command {
        Command::Datastore(cmd) => datastore::run(&ctx, cmd),
        Command::Vm(cmd) => vm::run(&ctx, cmd).map(|()| ExitCode::SUCCESS),
        Command::Disk(cmd) => disk::run(&ctx, cmd).map(|()| ExitCode::SUCCESS),
        Command::Mount(args) => mount::run(&ctx, &args).map(|()| ExitCode::SUCCESS),
        Command::Umount { mountpoint } => {
            cvol_container::unmount(&mountpoint)
                .with_context(|| format!("cannot unmount {}", mountpoint.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => up::run(&ctx, &args).map(|()| ExitCode::SUCCESS),
        Command::Nfs(cmd) => nfs::run(&ctx, cmd).map(|()| ExitCode::SUCCESS),
        Command::Provider(cmd) => provider::run(&ctx, cmd).map(|()| ExitCode::SUCCESS),
        Command::Host(cmd) => host::run(&ctx, cmd).map(|()| ExitCode::SUCCESS),
    }
}
