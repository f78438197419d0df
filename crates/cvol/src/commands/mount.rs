//! `cvol mount`: the host daemon serving a file system container in the foreground.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cvol_container::{Container, MountSettings};
use cvol_datastore::{AttachedVolumes, Datastore};

use super::signals::{block_termination_signals, wait_signal};
use super::Context;
use crate::cli::{MountArgs, NbdTls, ServeArgs};

pub fn run(ctx: &Context, args: &MountArgs) -> anyhow::Result<()> {
    serve(
        Arc::new(ctx.datastore()?),
        &args.mountpoint,
        &args.serve,
        |_| Ok(()),
        || {},
    )
}

/// Mounts `datastore` at `mountpoint`, calls `ready` with the volumes it serves, and serves until a signal or an
/// outside unmount; then calls `stopping` and unmounts, flushing and detaching every
/// volume. Threads that `ready` starts block the termination signals too, so that the
/// serving thread gets them.
pub fn serve(
    datastore: Arc<Datastore>,
    mountpoint: &Path,
    args: &ServeArgs,
    ready: impl FnOnce(&Arc<AttachedVolumes>) -> anyhow::Result<()>,
    stopping: impl FnOnce(),
) -> anyhow::Result<()> {
    if !mountpoint.is_dir() {
        bail!("mountpoint {} is not a directory", mountpoint.display());
    }
    let signals = block_termination_signals();
    let volumes = Arc::new(AttachedVolumes::new(datastore));
    let nbd = start_nbd(&volumes, args)?;
    let vhost = start_vhost_user(&volumes, args)?;
    let container = Arc::new(Container::new(volumes.clone()));
    let settings = MountSettings {
        threads: args.threads,
        passthrough: !args.no_passthrough,
        allow_other: args.allow_other,
        kernel_cache: Duration::from_millis(args.kernel_cache_ms),
    };
    let mounted = cvol_container::mount(container, mountpoint, &settings)
        .with_context(|| format!("cannot mount the container at {}", mountpoint.display()))?;
    tracing::info!("serving {}", mountpoint.display());
    let served = ready(&volumes).map(|()| wait_for_the_end(&signals, &mounted, mountpoint));
    stopping();
    // NBD and vhost-user first: their connections close their volumes before the
    // container detaches all.
    if let Some(vhost) = vhost {
        vhost.stop();
    }
    if let Some(runtime) = nbd {
        runtime.shutdown_timeout(Duration::from_secs(5));
    }
    for listen in &args.nbd {
        if let cvol_nbd::Listen::Unix(path) = listen {
            let _ = std::fs::remove_file(path);
        }
    }
    let unmounted = mounted
        .unmount()
        .with_context(|| format!("unmounting {}", mountpoint.display()));
    served.and(unmounted)
}

/// Waits for a termination signal or an outside unmount.
fn wait_for_the_end(
    signals: &libc::sigset_t,
    mounted: &cvol_container::MountedContainer,
    mountpoint: &Path,
) {
    loop {
        if let Some(signal) = wait_signal(signals, Duration::from_millis(200)) {
            tracing::info!("signal {signal}: unmounting {}", mountpoint.display());
            break;
        }
        if mounted.is_finished() {
            tracing::info!("{} was unmounted", mountpoint.display());
            break;
        }
    }
}

/// Starts the NBD listeners asked for, on a runtime of their own; `None` if none.
fn start_nbd(
    volumes: &Arc<AttachedVolumes>,
    args: &ServeArgs,
) -> anyhow::Result<Option<tokio::runtime::Runtime>> {
    if args.nbd.is_empty() {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cvol-nbd")
        .enable_all()
        .build()?;
    let exports = Arc::new(cvol_nbd::DatastoreExports::new(volumes.clone()));
    let settings = cvol_nbd::Settings {
        readonly: args.nbd_readonly,
        max_connections: args.nbd_max_connections,
        tls: nbd_tls(args)?,
        ..cvol_nbd::Settings::default()
    };
    let server = cvol_nbd::NbdServer::new(exports, settings);
    for listen in &args.nbd {
        runtime
            .block_on(server.bind(listen))
            .with_context(|| format!("cannot listen for NBD on {listen}"))?;
        tracing::info!("NBD on {listen}");
    }
    Ok(Some(runtime))
}

/// The NBD server's TLS, as the flags say.
fn nbd_tls(args: &ServeArgs) -> anyhow::Result<Option<cvol_nbd::TlsPolicy>> {
    let credentials_given =
        args.nbd_tls_cert.is_some() || args.nbd_tls_key.is_some() || args.nbd_tls_psk.is_some();
    let require = match args.nbd_tls {
        NbdTls::Off => {
            if credentials_given {
                bail!(
                    "--nbd-tls-cert, --nbd-tls-key and --nbd-tls-psk need --nbd-tls on or require"
                );
            }
            return Ok(None);
        }
        NbdTls::On => false,
        NbdTls::Require => true,
    };
    let credentials = match (&args.nbd_tls_psk, &args.nbd_tls_cert, &args.nbd_tls_key) {
        (Some(keys), None, None) => {
            if args.nbd_tls_client_ca.is_some() {
                bail!("--nbd-tls-client-ca is for certificates; with --nbd-tls-psk every client proves itself with its key");
            }
            crate::tls::nbd_psk(keys)?
        }
        (None, Some(cert), Some(key)) => cvol_nbd::TlsCredentials::X509(crate::tls::server_config(
            cert,
            key,
            args.nbd_tls_client_ca.as_deref(),
        )?),
        (Some(_), _, _) => {
            bail!("--nbd-tls-psk and --nbd-tls-cert/--nbd-tls-key are two kinds of credentials: give one")
        }
        _ => bail!("--nbd-tls on|require needs --nbd-tls-cert and --nbd-tls-key, or --nbd-tls-psk"),
    };
    Ok(Some(cvol_nbd::TlsPolicy {
        credentials,
        require,
    }))
}

/// Starts serving every disk over vhost-user-blk, if asked.
fn start_vhost_user(
    volumes: &Arc<AttachedVolumes>,
    args: &ServeArgs,
) -> anyhow::Result<Option<cvol_vhost::VhostUserServer>> {
    let Some(dir) = &args.vhost_user else {
        return Ok(None);
    };
    let settings = cvol_vhost::Settings {
        queues: args.vhost_user_queues,
        io_threads: usize::from(args.vhost_user_io_threads),
        ..cvol_vhost::Settings::default()
    };
    let exports = Arc::new(cvol_nbd::DatastoreExports::new(volumes.clone()));
    let server = cvol_vhost::VhostUserServer::start(
        dir,
        exports,
        settings,
        Duration::from_millis(args.vhost_user_rescan_ms.max(100)),
    )
    .with_context(|| format!("cannot serve vhost-user sockets in {}", dir.display()))?;
    tracing::info!("vhost-user-blk sockets in {}", dir.display());
    Ok(Some(server))
}
