//! `cvol host run` settings: a TOML file (`--config`, default `/etc/cvol/host.toml`),
//! each setting overridden by its flag or environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cvol_cluster::LeaseTiming;
use cvol_format::HostId;
use serde::Deserialize;

use crate::cli::HostRunArgs;

/// Where `cvol host run` looks for its settings unless told otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/cvol/host.toml";

/// The settings file: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    host_id: Option<String>,
    share: Option<String>,
    mountpoint: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    advertise: Option<String>,
    token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    insecure: Option<bool>,
    nbd: Option<Vec<String>>,
    disks: Option<String>,
    qemu: Option<String>,
    accel: Option<String>,
    lease_renew_ms: Option<u64>,
    fence_after_ms: Option<u64>,
    lease_expiry_ms: Option<u64>,
    stop_timeout_s: Option<u64>,
    metrics: Option<SocketAddr>,
}

/// How the agent's QEMUs reach their disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmDisks {
    /// The flat extents in the container, as raw files.
    Container,
    /// Over NBD, on this unix socket of the agent's.
    Nbd(PathBuf),
}

/// TLS between host agents: the peer API's server side, and this host's side when it
/// calls a peer (its certificate doubles as its client certificate).
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The peer API's server settings (client certificates of the cluster CA required).
    pub server: Arc<rustls::ServerConfig>,
    /// Calls to peers: their certificates must chain to the cluster CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// A host agent's settings, resolved.
#[derive(Debug, Clone)]
pub struct HostSettings {
    /// This host's id.
    pub host: HostId,
    /// The datastore's share (path or `nfs://` URL).
    pub share: String,
    /// Where the container is mounted.
    pub mountpoint: PathBuf,
    /// Where the agent keeps its socket and each VM's QMP socket, console and log.
    pub state_dir: PathBuf,
    /// The peer API's address, if it is served.
    pub listen: Option<SocketAddr>,
    /// The URL peers reach the API at, written to the host record.
    pub advertise: Option<String>,
    /// The peer API's bearer token.
    pub token: Option<String>,
    /// TLS between peers, if configured.
    pub tls: Option<PeerTls>,
    /// NBD listeners, as `cvol mount --nbd` takes them.
    pub nbd: Vec<cvol_nbd::Listen>,
    /// How the agent's QEMUs reach their disks.
    pub disks: VmDisks,
    /// The QEMU binary.
    pub qemu: String,
    /// QEMU's accelerator.
    pub accel: String,
    /// Lease renewal, self-fencing and expiry.
    pub timing: LeaseTiming,
    /// How long `cvol vm stop` waits for a guest to power off before killing it.
    pub stop_timeout: Duration,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl HostSettings {
    /// The agent's unix socket, for the CLI on this host.
    pub fn socket(&self) -> PathBuf {
        self.state_dir.join("agent.sock")
    }

    /// Resolves the settings: flags and environment (`args`, and the global `share` and
    /// `host`) over the file over the defaults.
    pub fn resolve(
        args: &HostRunArgs,
        share: Option<&str>,
        host: Option<&str>,
    ) -> anyhow::Result<Self> {
        let file = read_file(args.config.as_deref())?;
        let host = host
            .map(str::to_string)
            .or(file.host_id)
            .unwrap_or_else(crate::commands::default_host_id);
        let host = HostId::new(&host)?;
        let Some(share) = share.map(str::to_string).or(file.share) else {
            bail!("no share given: set share in the config, or pass --share or CVOL_SHARE");
        };
        let Some(mountpoint) = args.mountpoint.clone().or(file.mountpoint) else {
            bail!("no mountpoint given: set mountpoint in the config, or pass --mountpoint");
        };
        let mut nbd = match (&args.nbd, file.nbd) {
            (flags, _) if !flags.is_empty() => flags.clone(),
            (_, Some(listens)) => listens
                .iter()
                .map(|l| l.parse().map_err(|e| anyhow::anyhow!("nbd {l:?}: {e}")))
                .collect::<anyhow::Result<_>>()?,
            _ => Vec::new(),
        };
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| PathBuf::from("/run/cvol"));
        let disks = match args.disks.clone().or(file.disks).as_deref() {
            None | Some("container") => VmDisks::Container,
            Some("nbd") => {
                let socket = nbd.iter().find_map(|l| match l {
                    cvol_nbd::Listen::Unix(path) => Some(path.clone()),
                    cvol_nbd::Listen::Tcp(_) => None,
                });
                VmDisks::Nbd(socket.unwrap_or_else(|| {
                    let path = state_dir.join("nbd.sock");
                    nbd.push(cvol_nbd::Listen::Unix(path.clone()));
                    path
                }))
            }
            Some(other) => bail!("disks = {other:?}: expected \"container\" or \"nbd\""),
        };
        let token_file = args.token_file.clone().or(file.token_file);
        let token = token_file
            .as_deref()
            .map(|path| {
                cvol_provider::read_token(&path.to_string_lossy())
                    .with_context(|| format!("cannot read the token file {}", path.display()))
            })
            .transpose()?;
        let listen = args.listen.or(file.listen);
        if listen.is_some() && token.is_none() {
            bail!("the peer API (listen) needs a token: set token_file or pass --token-file");
        }
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls_ca.clone().or(file.tls_ca),
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(PeerTls {
                server: crate::tls::server_config(&cert, &key, Some(&ca))?,
                client: crate::tls::client_config(&ca, Some((&cert, &key)))?,
            }),
            _ => bail!("TLS between hosts needs all of tls_cert, tls_key and tls_ca"),
        };
        if let Some(listen) = listen {
            let insecure = args.insecure || file.insecure.unwrap_or(false);
            crate::tls::check_plain(listen, tls.is_some(), insecure, "the peer API")?;
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ms = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map_or(default, Duration::from_millis)
        };
        let defaults = LeaseTiming::default();
        let timing = LeaseTiming {
            renew: ms(args.lease_renew_ms, file.lease_renew_ms, defaults.renew),
            fence_after: ms(
                args.fence_after_ms,
                file.fence_after_ms,
                defaults.fence_after,
            ),
            expiry: ms(args.lease_expiry_ms, file.lease_expiry_ms, defaults.expiry),
        };
        timing.validate()?;
        Ok(Self {
            host,
            share,
            mountpoint,
            state_dir,
            advertise: args
                .advertise
                .clone()
                .or(file.advertise)
                .or_else(|| listen.map(|a| format!("{scheme}://{a}"))),
            listen,
            token,
            tls,
            nbd,
            disks,
            qemu: args
                .qemu
                .clone()
                .or(file.qemu)
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            accel: args
                .accel
                .clone()
                .or(file.accel)
                .unwrap_or_else(|| "auto".into()),
            timing,
            stop_timeout: Duration::from_secs(
                args.stop_timeout_s.or(file.stop_timeout_s).unwrap_or(60),
            ),
            metrics: args.metrics.addr.or(file.metrics),
        })
    }
}

/// The settings file: the one named (which must exist), or the default one if it
/// exists.
fn read_file(named: Option<&Path>) -> anyhow::Result<HostFile> {
    let path = named.unwrap_or(Path::new(DEFAULT_CONFIG));
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && named.is_none() => {
            return Ok(HostFile::default())
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    toml::from_str(&text).with_context(|| format!("{}: invalid settings", path.display()))
}
