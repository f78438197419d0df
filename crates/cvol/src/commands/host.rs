//! `cvol host run|list`: the host agent, and the cluster as it sees it.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use cvol_datastore::Datastore;

use super::{with_env_failpoint, Context};
use crate::agent::client::AgentClient;
use crate::agent::config::HostSettings;
use crate::agent::{api, Agent, HostInfo, HostStatus};
use crate::cli::{AgentArg, HostCommand, HostRunArgs, MetricsArg, NbdTls, ServeArgs};
use crate::output::{print_json, print_table};

pub fn run(ctx: &Context, cmd: HostCommand) -> anyhow::Result<()> {
    match cmd {
        HostCommand::Run(args) => run_agent(ctx, &args),
        HostCommand::List(agent) => list(ctx, &agent),
        HostCommand::Show(agent) => show(ctx, &agent),
    }
}

fn run_agent(ctx: &Context, args: &HostRunArgs) -> anyhow::Result<()> {
    let settings = HostSettings::resolve(args, ctx.share.as_deref(), ctx.host_arg.as_deref())?;
    let share = ctx.open_share_at(&settings.share)?;
    let ds = Arc::new(with_env_failpoint(Datastore::open(
        share,
        settings.host.as_str(),
    )?));
    let state_dir = &settings.state_dir;
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))?;
    let socket = settings.socket();
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        bail!("another host agent answers at {}", socket.display());
    }
    let agent = Agent::new(settings.clone(), ds.clone())?;
    // No passthrough: the kernel's passthrough writes would bypass fencing, and with
    // several hosts every write must be checked against the attachment generation.
    let serve = ServeArgs {
        no_passthrough: true,
        threads: 4,
        allow_other: false,
        kernel_cache_ms: cvol_container::DEFAULT_KERNEL_CACHE.as_millis() as u64,
        nbd: settings.nbd.clone(),
        nbd_readonly: false,
        nbd_max_connections: 256,
        nbd_tls: NbdTls::Off,
        nbd_tls_cert: None,
        nbd_tls_key: None,
        nbd_tls_client_ca: None,
        nbd_tls_psk: None,
        vhost_user: None,
        vhost_user_queues: cvol_vhost::DEFAULT_QUEUES,
        vhost_user_io_threads: cvol_vhost::DEFAULT_IO_THREADS,
        vhost_user_rescan_ms: cvol_vhost::DEFAULT_RESCAN_MS,
        metrics: MetricsArg::default(),
    };
    let mut api_runtime = None;
    let ready = |volumes: &Arc<_>| {
        agent.set_volumes(Arc::clone(volumes));
        agent.start_threads()?;
        api_runtime = Some(serve_api(&agent)?);
        // Only an agent that runs takes the metrics port (not one refused as a twin).
        if let Some(addr) = settings.metrics {
            crate::metrics::serve(addr, &args.metrics)?;
        }
        tracing::info!(host = %settings.host, socket = %socket.display(), "host agent ready");
        eprintln!(
            "cvol: host agent {} ready: container at {}, API at {}{}",
            settings.host,
            settings.mountpoint.display(),
            socket.display(),
            settings
                .listen
                .map(|a| {
                    let scheme = if settings.tls.is_some() {
                        "https"
                    } else {
                        "http"
                    };
                    format!(" and {scheme}://{a}")
                })
                .unwrap_or_default()
        );
        Ok(())
    };
    let served = super::mount::serve(ds, &settings.mountpoint, &serve, ready, || agent.shutdown());
    drop(api_runtime);
    let _ = std::fs::remove_file(&socket);
    served
}

/// Serves the API on the agent's unix socket (root only) and, if asked, on TCP for peers.
fn serve_api(agent: &Arc<Agent>) -> anyhow::Result<tokio::runtime::Runtime> {
    let settings = agent.settings();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cvol-api")
        .enable_all()
        .build()?;
    let socket = settings.socket();
    let _ = std::fs::remove_file(&socket);
    let local = runtime
        .block_on(async { tokio::net::UnixListener::bind(&socket) })
        .with_context(|| format!("cannot listen on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let router = api::router(agent.clone());
    runtime.spawn(async move { axum::serve(local, router).await });
    if let (Some(listen), Some(token)) = (settings.listen, settings.token.clone()) {
        let peers = std::net::TcpListener::bind(listen)
            .with_context(|| format!("cannot listen on {listen}"))?;
        let router = api::peer_router(agent.clone(), token);
        let tls = settings.tls.as_ref().map(|t| t.server.clone());
        // Served until the runtime is dropped with the agent.
        runtime.spawn(crate::tls::serve(
            peers,
            tls,
            router,
            std::future::pending(),
        ));
    }
    Ok(runtime)
}

fn list(ctx: &Context, agent: &AgentArg) -> anyhow::Result<()> {
    let hosts: Vec<HostStatus> = AgentClient::new(&agent.agent).get("/v1/hosts")?;
    if ctx.json {
        return print_json(&hosts);
    }
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            vec![
                format!(
                    "{}{}",
                    h.host,
                    if h.this_host { " (this host)" } else { "" }
                ),
                h.state.clone(),
                if h.alive { "alive" } else { "dead" }.into(),
                h.heartbeat_age_ms
                    .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0)),
                if h.vms.is_empty() {
                    "-".into()
                } else {
                    h.vms.join(",")
                },
                h.address
                    .clone()
                    .or(h.problem.clone())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(
        &["HOST", "STATE", "AGENT", "HEARTBEAT", "VMS", "ADDRESS"],
        &rows,
    );
    Ok(())
}

fn show(ctx: &Context, agent: &AgentArg) -> anyhow::Result<()> {
    let info: HostInfo = AgentClient::new(&agent.agent).get("/v1/host")?;
    if ctx.json {
        return print_json(&info);
    }
    println!("host {} (cvol {})", info.host, info.version);
    println!("  boot id:        {}", info.boot_id);
    println!(
        "  peer API:       {}",
        info.address.as_deref().unwrap_or("-")
    );
    println!("  VMs running:    {}", info.vms);
    if let Some(rss) = info.rss_kib {
        println!("  memory (RSS):   {} MiB", rss / 1024);
    }
    if let Some(requests) = info.share_requests {
        println!("  share requests: {requests} sent so far");
    }
    Ok(())
}
