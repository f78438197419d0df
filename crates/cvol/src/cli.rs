//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// cvol: a common volume (cVol) datastore for virtual machines.
///
/// VM metadata (.vmx, disk descriptors) lives as files on a share; every virtual disk
/// lives as a volume in a storage provider. A datastore is a share whose .cvol/
/// directory names its providers.
#[derive(Debug, Parser)]
#[command(name = "cvol", version, propagate_version = true)]
pub struct Cli {
    /// The datastore's share: a local directory, or an NFSv3 export reached from user
    /// space as nfs://HOST[:PORT]/EXPORT[?mountport=N] (PORT skips the portmapper).
    #[arg(long, global = true, env = "CVOL_SHARE", value_name = "PATH|URL")]
    pub share: Option<String>,

    /// Give up on an unreachable NFS server after this many seconds: calls are retried
    /// across reconnects until then, and then fail with EIO.
    #[arg(
        long,
        global = true,
        env = "CVOL_NFS_TIMEOUT",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub nfs_timeout: u64,

    /// How long NFS file handles, attributes and directory listings are trusted without
    /// asking the server, like the kernel client's actimeo (0: always ask). Changes made
    /// by this process are seen at once; changes by other hosts in listings and walks
    /// after at most this long (a file opened or read by name is always looked up
    /// afresh; its content is read again only if its size or times changed).
    #[arg(
        long,
        global = true,
        env = "CVOL_ATTR_CACHE_MS",
        default_value_t = 3000,
        value_name = "MS"
    )]
    pub attr_cache_ms: u64,

    /// Connections to the NFS server, at most; calls beyond them wait for one (each
    /// connection carries one call at a time: the default serves a walk's 8 threads; a
    /// walk also reads the VM folders' listings ahead on one more connection, with many
    /// calls in flight).
    #[arg(
        long,
        global = true,
        env = "CVOL_NFS_CONNECTIONS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u16).range(1..=64),
        value_name = "N"
    )]
    pub nfs_connections: u16,

    /// Where the `.vmx` files and descriptors read from an NFS share are kept between
    /// runs, so that a listing or fsck reads again only the files that changed (each is
    /// used only if the server reports the same version of the file: id, size and times).
    /// An empty value keeps nothing between runs [default: $XDG_CACHE_HOME/cvol, else
    /// ~/.cache/cvol]
    #[arg(
        long,
        global = true,
        env = "CVOL_CACHE_DIR",
        value_name = "DIR",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), std::path::PathBuf::from)
    )]
    pub cache_dir: Option<std::path::PathBuf>,

    /// VMs read at once by listings and fsck (each read waits on the share and the
    /// pools, so several at once go faster; NFS calls also wait for a connection).
    #[arg(
        long,
        global = true,
        env = "CVOL_WALK_PARALLEL",
        default_value_t = cvol_datastore::WALK_PARALLEL as u16,
        value_parser = clap::value_parser!(u16).range(1..=256),
        value_name = "N"
    )]
    pub walk_parallel: u16,

    /// This host's id, used for attachments and intent records [default: the hostname].
    #[arg(long, global = true, env = "CVOL_HOST_ID", value_name = "ID")]
    pub host_id: Option<String>,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, inspect and check a datastore.
    #[command(subcommand)]
    Datastore(DatastoreCommand),
    /// Create, list, show and delete VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Create, list, resize, snapshot, clone and delete disks.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Mount the datastore as a file system container and serve it until SIGINT or
    /// SIGTERM (or `cvol umount`): VM directories from the share, with every disk's
    /// flat extent (<disk>-flat.vmdk) served from its volume.
    Mount(MountArgs),
    /// Unmount a container mounted by `cvol mount`. While it is busy (files closed just
    /// before are still being released, e.g. a disk flushed), it tries again for up to
    /// 30 s; a file still open keeps it busy, and that is then the error.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Set up a ready-to-use datastore in DIR on embedded defaults (a local share and a
    /// file pool) with a VM `demo` and its 1 GiB disk, mount it at DIR/mnt and serve it
    /// until interrupted; reuses what is already there.
    Up(UpArgs),
    /// Serve a local directory over NFSv3: the embedded metadata share.
    #[command(subcommand)]
    Nfs(NfsCommand),
    /// Serve a storage pool's control plane over HTTP, so that several hosts share it.
    #[command(subcommand)]
    Provider(ProviderCommand),
    /// Run this host's agent, and see the hosts of the cluster.
    #[command(subcommand)]
    Host(HostCommand),
}

impl Command {
    /// Whether the command runs until stopped, serving others (a mount, a service).
    pub fn is_server(&self) -> bool {
        matches!(
            self,
            Self::Mount(_)
                | Self::Up(_)
                | Self::Nfs(NfsCommand::Serve { .. })
                | Self::Provider(ProviderCommand::Serve { .. })
                | Self::Host(HostCommand::Run(_))
        )
    }

    /// Where the command serves metrics, when asked to. The host agent is not here: it
    /// also takes the address from its settings file, and starts the endpoint itself.
    pub fn metrics(&self) -> Option<&MetricsArg> {
        match self {
            Self::Mount(MountArgs { serve, .. }) | Self::Up(UpArgs { serve, .. }) => {
                Some(&serve.metrics)
            }
            Self::Nfs(NfsCommand::Serve { metrics, .. })
            | Self::Provider(ProviderCommand::Serve { metrics, .. }) => Some(metrics),
            _ => None,
        }
    }
}

/// `cvol provider …`
// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Serve the pool POOL over HTTP/JSON (API: crates/cvol-provider-service/openapi.yaml,
    /// also at /v1/openapi.yaml) until SIGINT or SIGTERM, printing its URL. Hosts use it
    /// as a provider ID=remote:URL; it alone decides which host holds a volume, and fences
    /// a holder whose volume is taken over.
    Serve {
        /// The pool: file:DIR (an existing directory of volumes), object:URL (chunks in
        /// an object store: object:file:///DIR, or object:s3://BUCKET/PREFIX with the
        /// endpoint, region and credentials from the AWS_* environment) or rbd:POOL (a
        /// Ceph RBD pool; hosts open its images with Ceph clients of their own).
        #[arg(long, value_name = "file:DIR|object:URL|rbd:POOL", env = "CVOL_POOL")]
        pool: String,
        /// A setting of the pool, as a provider of its kind takes in datastore.toml, e.g.
        /// conf=/etc/ceph/ceph.conf for rbd:POOL. Repeatable.
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Address to listen on; port 0 picks a free port. Loopback unless you say
        /// otherwise.
        #[arg(
            long,
            default_value = "127.0.0.1:0",
            value_name = "ADDR:PORT",
            env = "CVOL_LISTEN"
        )]
        listen: std::net::SocketAddr,
        /// A file holding the bearer token every call must carry (Authorization: Bearer
        /// TOKEN); hosts name it with the provider setting token_file or
        /// CVOL_PROVIDER_TOKEN_FILE.
        #[arg(long, value_name = "FILE", env = "CVOL_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        #[command(flatten)]
        tls: TlsServerArgs,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Find the chunks of an object pool that no volume, snapshot or current manifest
    /// names, and superseded manifests; delete them with --apply (a dry run otherwise).
    /// Nothing younger than the grace period is touched, so a flush in flight elsewhere
    /// never loses a chunk it uploaded.
    Gc {
        /// The pool: object:URL.
        #[arg(long, value_name = "object:URL", env = "CVOL_POOL")]
        pool: String,
        /// Seconds an unreferenced chunk must have existed before it is deleted.
        #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
        grace: u64,
        /// Delete what is found.
        #[arg(long)]
        apply: bool,
    },
    /// What an object pool's store holds: bytes of the chunks and of the logs (small
    /// writes kept as patches until their chunk is uploaded whole again) that the newest
    /// manifests and the snapshots name, and of every other object (what `cvol provider
    /// gc` deletes once its grace has passed). Reads every manifest; changes nothing.
    Stats {
        /// The pool: object:URL.
        #[arg(long, value_name = "object:URL", env = "CVOL_POOL")]
        pool: String,
    },
}

/// `cvol host …`
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Run the host agent in the foreground (fit for a systemd unit) until SIGINT or
    /// SIGTERM: mounts the container and serves NBD as `cvol mount` does, keeps this
    /// host's record under .cvol/hosts/ alive, runs VMs (`cvol vm start`) as QEMU
    /// children under leases it renews, kills them if it cannot renew (self-fencing),
    /// and restarts the HA VMs of hosts that died. Answers the CLI on STATE_DIR/agent.sock
    /// and peer hosts on --listen (bearer token). Settings: --config (default
    /// /etc/cvol/host.toml, keys named as the flags with '_'), overridden by flags and env.
    Run(Box<HostRunArgs>),
    /// List every host of the datastore: heartbeat age, alive or dead, its VMs.
    List(AgentArg),
    /// Show this host's agent: its id, boot id, VMs, memory and share requests so far.
    Show(AgentArg),
}

/// How the CLI reaches the host agent on this host.
#[derive(Debug, Clone, Args)]
pub struct AgentArg {
    /// The agent's unix socket.
    #[arg(long, env = "CVOL_AGENT", default_value = crate::agent::client::DEFAULT_SOCKET, value_name = "SOCKET")]
    pub agent: PathBuf,
}

/// `cvol host run`
#[derive(Debug, Args)]
pub struct HostRunArgs {
    /// The settings file [default: /etc/cvol/host.toml, if it exists].
    #[arg(long, env = "CVOL_HOST_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to mount the container (an existing, empty directory).
    #[arg(long, env = "CVOL_MOUNTPOINT", value_name = "DIR")]
    pub mountpoint: Option<PathBuf>,
    /// Where the agent keeps its socket and each VM's QMP socket, console and QEMU log
    /// [default: /run/cvol].
    #[arg(long, env = "CVOL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve the peer API on this address (needs --token-file).
    #[arg(long, env = "CVOL_AGENT_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// The URL peers reach the API at, written to this host's record
    /// [default: http://LISTEN].
    #[arg(long, env = "CVOL_AGENT_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// A file holding the bearer token peer calls must carry.
    #[arg(long, env = "CVOL_AGENT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the peer API over TLS with this PEM certificate chain (needs --tls-key and
    /// --tls-ca); it is also this host's client certificate when it calls its peers.
    #[arg(long, env = "CVOL_AGENT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key; a file every user may read is refused.
    #[arg(long, env = "CVOL_AGENT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's PEM CA: every peer's certificate, as server and as client, must
    /// chain to it (mutual TLS between hosts).
    #[arg(long, env = "CVOL_AGENT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve the peer API over plain HTTP on an address other than loopback (refused
    /// otherwise: the token would cross the network in clear text).
    #[arg(long)]
    pub insecure: bool,
    /// Also export every disk over NBD, as `cvol mount --nbd`. Repeatable.
    #[arg(long = "nbd", value_name = "unix:PATH|tcp:ADDR:PORT")]
    pub nbd: Vec<cvol_nbd::Listen>,
    /// How QEMU reaches the VMs' disks: `container` (their flat extents in the
    /// container) or `nbd` (the agent's NBD export on its unix socket, STATE_DIR/nbd.sock
    /// unless --nbd names one) [default: container].
    #[arg(long, env = "CVOL_VM_DISKS", value_parser = ["container", "nbd"])]
    pub disks: Option<String>,
    /// The QEMU binary [default: qemu-system-x86_64].
    #[arg(long, env = "CVOL_QEMU")]
    pub qemu: Option<String>,
    /// QEMU's accelerator [default: auto].
    #[arg(long, env = "CVOL_ACCEL", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: Option<String>,
    /// How often leases and the host record are renewed [default: 2000]. Every host of a
    /// datastore must use the same three lease timings.
    #[arg(long, env = "CVOL_LEASE_RENEW_MS", value_name = "MS")]
    pub lease_renew_ms: Option<u64>,
    /// Kill a VM whose lease could not be renewed for this long [default: 10000].
    #[arg(long, env = "CVOL_FENCE_AFTER_MS", value_name = "MS")]
    pub fence_after_ms: Option<u64>,
    /// Another host may take a VM over once its lease has not changed for this long;
    /// must exceed fence_after with margin [default: 16000].
    #[arg(long, env = "CVOL_LEASE_EXPIRY_MS", value_name = "MS")]
    pub lease_expiry_ms: Option<u64>,
    /// Seconds `cvol vm stop` (and the agent's own stop) waits for a guest to power off
    /// before ending QEMU [default: 60].
    #[arg(long, env = "CVOL_STOP_TIMEOUT", value_name = "SECONDS")]
    pub stop_timeout_s: Option<u64>,
    #[command(flatten)]
    pub metrics: MetricsArg,
}

/// Whether NBD clients may, or must, use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NbdTls {
    /// No TLS: STARTTLS is refused.
    Off,
    /// TLS when the client asks for it.
    On,
    /// TLS before anything else.
    Require,
}

/// TLS for an HTTP server.
#[derive(Debug, Clone, Args)]
pub struct TlsServerArgs {
    /// Serve HTTPS with this PEM certificate chain (needs --tls-key). Clients trust it
    /// through their CA file (the provider setting ca_file).
    #[arg(long, env = "CVOL_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key; a file every user may read is refused.
    #[arg(long, env = "CVOL_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: ask every client for a certificate that chains to this PEM CA, and
    /// refuse those without one.
    #[arg(
        long,
        env = "CVOL_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (refused otherwise: tokens
    /// would cross the network in clear text).
    #[arg(long)]
    pub insecure: bool,
}

/// Where a daemon serves its Prometheus metrics, and to whom.
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArg {
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (port 0 picks a free port,
    /// logged at -v): per-volume I/O bytes and latency, flushes, fenced errors, NFS calls
    /// by procedure, the object pool's cache and store, leases. Off by default.
    #[arg(long = "metrics", env = "CVOL_METRICS", value_name = "ADDR:PORT")]
    pub addr: Option<std::net::SocketAddr>,
    /// Serve the metrics over HTTPS with this PEM certificate chain (Prometheus'
    /// tls_config), with --metrics-tls-key.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_key")]
    pub metrics_tls_cert: Option<PathBuf>,
    /// The metrics certificate's PEM private key; a file every user may read is refused.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    pub metrics_tls_key: Option<PathBuf>,
    /// Ask scrapers for a certificate that chains to this PEM CA; refuse those without.
    #[arg(long, value_name = "FILE", requires = "metrics_tls_cert")]
    pub metrics_tls_client_ca: Option<PathBuf>,
    /// A file holding the bearer token scrapers must send (Prometheus'
    /// authorization.credentials_file); others get 401.
    #[arg(long, value_name = "FILE")]
    pub metrics_token_file: Option<PathBuf>,
}

/// `cvol nfs …`
#[derive(Debug, Subcommand)]
pub enum NfsCommand {
    /// Export DIR over NFSv3 (MOUNT and the portmapper on the same TCP port) until SIGINT
    /// or SIGTERM, printing the share URL to pass as --share, e.g. nfs://127.0.0.1:2049/.
    /// Any NFSv3 client can mount it. Run as root, each call acts as the client's
    /// AUTH_SYS uid and gids (root squashed to 65534 unless --no-root-squash), so
    /// permissions and owners work as on any NFS server; run as another user, every call
    /// acts as that user.
    Serve {
        /// The directory to export.
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free port.
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR:PORT")]
        listen: std::net::SocketAddr,
        /// Serve only clients in this network (e.g. 10.1.0.0/16, or one address);
        /// repeatable. Other clients' calls are answered MNT3ERR_ACCES / NFS3ERR_ACCES,
        /// and logged. Default: every client that can reach the address.
        #[arg(long = "allow", value_name = "CIDR", value_parser = parse_network)]
        allow: Vec<cvol_nfs_server::IpNet>,
        /// Refuse every change (NFS3ERR_ROFS): the share can be read, never written.
        #[arg(long)]
        read_only: bool,
        /// Let clients' root act as root. cvol hosts work on the share as root (they
        /// chown files for the hypervisor), so a datastore's share is served to its
        /// hosts with this, and --allow limited to them, as ESXi needs no_root_squash.
        #[arg(long)]
        no_root_squash: bool,
        /// Handles of files (not directories) the server keeps in memory, about 200 bytes
        /// each. Past that, the least recently used are dropped and found again by inode
        /// in their directory when a client uses one, so clients never see them go.
        #[arg(long, default_value_t = cvol_nfs_server::DEFAULT_FILE_HANDLES as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        file_handles: u64,
        #[command(flatten)]
        metrics: MetricsArg,
    },
}

/// How to serve a container.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Serve disks through the daemon even where the kernel could read and write their
    /// pool files directly (FUSE passthrough, Linux >= 6.9).
    #[arg(long, env = "CVOL_NO_PASSTHROUGH")]
    pub no_passthrough: bool,
    /// Threads serving file system requests.
    #[arg(long, default_value_t = 4, env = "CVOL_THREADS")]
    pub threads: usize,
    /// Let other users (e.g. a hypervisor running as its own user) use the mount.
    #[arg(long, env = "CVOL_ALLOW_OTHER")]
    pub allow_other: bool,
    /// How long the kernel keeps the container's names, attributes and listings before
    /// asking the daemon again. When longer than --attr-cache-ms, the daemon watches them
    /// on the share every 3/4 of that (a listing per folder the kernel keeps something
    /// of) and makes the kernel drop what changed: another host's change shows within
    /// about --attr-cache-ms. Otherwise it shows after at most the sum of both. With
    /// --attr-cache-ms 0 the kernel keeps things for 1 s at most.
    #[arg(
        long,
        env = "CVOL_KERNEL_CACHE_MS",
        default_value_t = cvol_container::DEFAULT_KERNEL_CACHE.as_millis() as u64,
        value_name = "MS"
    )]
    pub kernel_cache_ms: u64,
    /// Also export every disk over NBD as VM/DISK, on unix:PATH or tcp:ADDR:PORT
    /// (e.g. tcp:127.0.0.1:10809). Repeatable.
    #[arg(long = "nbd", value_name = "unix:PATH|tcp:ADDR:PORT")]
    pub nbd: Vec<cvol_nbd::Listen>,
    /// NBD exports refuse writes.
    #[arg(long)]
    pub nbd_readonly: bool,
    /// NBD connections served at once; more are closed at once.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub nbd_max_connections: usize,
    /// TLS on NBD (NBD_OPT_STARTTLS): `off`; `on`, the client chooses; `require`, no
    /// export without TLS (every other option before it gets NBD_REP_ERR_TLS_REQD).
    /// `on` and `require` need --nbd-tls-cert and --nbd-tls-key (x509), or --nbd-tls-psk.
    #[arg(long, value_enum, default_value_t = NbdTls::Off)]
    pub nbd_tls: NbdTls,
    /// The NBD server's PEM certificate chain.
    #[arg(long, value_name = "FILE")]
    pub nbd_tls_cert: Option<PathBuf>,
    /// Its PEM private key; a file every user may read is refused.
    #[arg(long, value_name = "FILE")]
    pub nbd_tls_key: Option<PathBuf>,
    /// Ask NBD clients for a certificate that chains to this PEM CA, and refuse those
    /// without one (QEMU's verify-peer).
    #[arg(long, value_name = "FILE")]
    pub nbd_tls_client_ca: Option<PathBuf>,
    /// TLS with pre-shared keys instead of certificates: a keys file of `identity:hexkey`
    /// lines (psktool's format, as QEMU's tls-creds-psk and libnbd's tls-psk-file read);
    /// a client proves itself with an identity's key. Not world-readable. Needs a cvol
    /// built with `--features tls-psk`.
    #[arg(long, value_name = "FILE")]
    pub nbd_tls_psk: Option<PathBuf>,
    /// Also serve every disk over vhost-user-blk, on DIR/VM/DISK.sock: QEMU's
    /// vhost-user-blk-pci reaches it from shared memory with no kernel crossing (see
    /// `cvol vm start --vhost-user`). One driver per disk at a time.
    #[arg(long = "vhost-user", env = "CVOL_VHOST_USER", value_name = "DIR")]
    pub vhost_user: Option<PathBuf>,
    /// Queues each vhost-user disk offers (a driver may use fewer).
    #[arg(long, default_value_t = cvol_vhost::DEFAULT_QUEUES, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub vhost_user_queues: u16,
    /// Threads running each connected vhost-user disk's I/O.
    #[arg(long, default_value_t = cvol_vhost::DEFAULT_IO_THREADS, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub vhost_user_io_threads: u16,
    /// How often the vhost-user sockets are brought in line with the datastore's disks
    /// (less often on a datastore that takes long to list: at most a fifth of the time).
    #[arg(long, default_value_t = cvol_vhost::DEFAULT_RESCAN_MS, value_name = "MS")]
    pub vhost_user_rescan_ms: u64,
    #[command(flatten)]
    pub metrics: MetricsArg,
}

/// `cvol mount`
#[derive(Debug, Args)]
pub struct MountArgs {
    /// An existing, empty directory.
    pub mountpoint: PathBuf,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `cvol datastore …`
#[derive(Debug, Subcommand)]
pub enum DatastoreCommand {
    /// Make the share (an existing, empty-of-.cvol directory) a new datastore.
    Create {
        /// A human name for the datastore.
        #[arg(long)]
        name: String,
        /// A provider, as ID=KIND:LOCATION: pool=file:/srv/cvol/pool (an existing,
        /// writable directory), pool=object:s3://bucket/prefix or
        /// pool=object:file:///srv/objects (chunks in an object store; S3 endpoint and
        /// credentials from the AWS_* environment), or pool=remote:http://10.0.0.5:7400
        /// (a `cvol provider serve`; its token file from CVOL_PROVIDER_TOKEN_FILE or the
        /// provider setting token_file). Repeatable; the first is the default.
        #[arg(long = "provider", value_name = "ID=KIND:LOCATION", required = true)]
        providers: Vec<String>,
        /// A provider setting for datastore.toml, as ID.KEY=VALUE, given before the
        /// provider is first opened: what a pool is made with, e.g. pool.chunk_size=1048576,
        /// pool.compression=zstd, pool.key_file=/etc/cvol/pool.key. Repeatable.
        #[arg(long = "setting", value_name = "ID.KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Show the datastore: uuid, providers, VMs.
    Info,
    /// Check that share and providers agree; exits 4 if problems remain.
    Fsck {
        /// Finish or undo interrupted operations, fix descriptor sizes, delete volumes
        /// of this datastore that no descriptor names, reclaim interrupted pool work.
        #[arg(long)]
        repair: bool,
        /// Treat an interrupted operation of another host, or of a live process here,
        /// as abandoned once it is this many seconds old.
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        grace: u64,
    },
}

/// `cvol vm …`
#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create a VM with its disks (all or nothing).
    Create {
        /// The VM's name: its directory on the share.
        vm: String,
        /// Add a disk of SIZE (e.g. 64M, 10G, 1T; a multiple of 512 bytes). Repeatable.
        #[arg(long = "disk", value_name = "SIZE")]
        disks: Vec<String>,
        /// Memory in MiB.
        #[arg(long, default_value_t = 1024, value_name = "MIB")]
        memory: u64,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// The provider for the disks [default: the datastore's first].
        #[arg(long, value_name = "ID")]
        provider: Option<String>,
    },
    /// List the VMs.
    List,
    /// Show one VM and its disks.
    Show {
        /// The VM's name.
        vm: String,
    },
    /// Delete a VM: its disks' volumes and its whole directory.
    Delete {
        /// The VM's name.
        vm: String,
    },
    /// Start a VM through this host's agent (`cvol host run`): it takes the VM's lease
    /// (refused while another host holds it live, naming that host), starts QEMU with
    /// the memory, CPUs and disks of the .vmx, and renews the lease while it runs.
    /// With --container or --nbd-socket, runs QEMU here in the foreground instead,
    /// without agent or lease (one host only). Extra QEMU arguments go after `--`.
    Start(StartArgs),
    /// Stop a VM running on this host: ACPI power-down, then QEMU is ended after the
    /// timeout; its lease is released.
    Stop {
        /// The VM's name.
        vm: String,
        /// Seconds to wait for the guest to power off [default: the agent's, 60].
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
        /// End QEMU at once, without asking the guest.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        agent: AgentArg,
    },
    /// Move a running VM to another host without stopping it (live migration): its
    /// memory is copied while it runs, then its disks are handed over (the source can
    /// write nothing more) and it resumes there. From any host; fails, with the VM still
    /// on its host, if anything goes wrong before the hand-over.
    Migrate {
        /// The VM's name.
        vm: String,
        /// The host to move it to.
        #[arg(long, value_name = "HOST")]
        to: String,
        #[command(flatten)]
        agent: AgentArg,
    },
    /// Show where a VM runs: its lease's owner, epoch, state and heartbeat age.
    Status {
        /// The VM's name.
        vm: String,
        #[command(flatten)]
        agent: AgentArg,
    },
    /// Change cvol's settings of a VM (kept in its .vmx as cvol.* keys).
    Set(SetArgs),
    /// Make a VM from an image: a disk image (qcow2, raw, vmdk…: one disk), a VMware VM
    /// folder or .vmx (memory, CPUs, disks in controller order, disk names), or an OVF
    /// package (.ova, or .ovf with its disks beside it). All or nothing: an interrupted
    /// import leaves nothing after `cvol datastore fsck --repair`.
    Import {
        /// The image, folder or package.
        source: PathBuf,
        /// The VM's name [default: the source's VM name, or the file's name].
        #[arg(long)]
        name: Option<String>,
        /// Memory in MiB [default: the source's, or 1024].
        #[arg(long, value_name = "MIB")]
        memory: Option<u64>,
        /// Virtual CPUs [default: the source's, or 1].
        #[arg(long)]
        cpus: Option<u32>,
        /// The provider for the disks [default: the datastore's first].
        #[arg(long, value_name = "ID")]
        provider: Option<String>,
    },
    /// Make a new VM as a copy of another (stopped, or as of one of its snapshots): its
    /// .vmx with a new BIOS uuid and new MAC addresses, and every disk cloned in its pool
    /// (copy-free on object pools, a reflink or copy on file pools). Disks named after
    /// the VM (SRC, SRC_1, …) take the new VM's name. All or nothing.
    Clone {
        /// The VM (or template) to copy.
        source: String,
        /// The new VM's name.
        target: String,
        /// Copy the VM as it was at this snapshot of it (see `cvol vm snapshot`).
        #[arg(long, value_name = "NAME")]
        snapshot: Option<String>,
        /// A linked clone (of --snapshot): the snapshot and its VM cannot be deleted while
        /// the clone exists (pools with copy-on-write clones need their origin).
        #[arg(long, requires = "snapshot")]
        linked: bool,
    },
    /// Print a libvirt domain XML for a VM (`virsh define`): its memory, CPUs, directly
    /// booted kernel, and disks as the container's flat files or as NBD exports. The
    /// QEMU that libvirt runs must be able to open them: mount with --allow-other and
    /// give the disk files to its user (libvirt's dynamic ownership does).
    Domxml(DomxmlArgs),
    /// Make a VM a template: it is never started, only cloned (`cvol vm clone`).
    Template {
        /// The VM's name.
        vm: String,
        /// Make the template an ordinary VM again.
        #[arg(long)]
        off: bool,
    },
    /// Take a snapshot of every disk of a VM at one instant (`cvol vm snapshot VM NAME`),
    /// or list, revert or delete its snapshots. A running VM is paused by its host's
    /// agent while its disks are snapshotted (asked through this host's agent); the
    /// snapshot keeps a copy of the .vmx and descriptors.
    Snapshot(VmSnapshotArgs),
}

/// `cvol vm snapshot`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct VmSnapshotArgs {
    #[command(subcommand)]
    pub command: Option<VmSnapshotCommand>,
    /// The VM.
    #[arg(required = true)]
    pub vm: Option<String>,
    /// The snapshot's name (also each disk's snapshot name, e.g. for `disk clone
    /// VM/DISK@NAME`).
    #[arg(required = true)]
    pub name: Option<String>,
    #[command(flatten)]
    pub agent: AgentArg,
}

/// `cvol vm snapshot list|revert|delete`
#[derive(Debug, Subcommand)]
pub enum VmSnapshotCommand {
    /// List a VM's snapshots, oldest first.
    List {
        /// The VM.
        vm: String,
    },
    /// Set a stopped VM back to a snapshot: every disk's data and size, and its .vmx.
    /// Refused while the VM runs or if its disks changed since (one added, deleted or
    /// replaced). What was written since is lost; the snapshot and newer ones stay.
    Revert {
        /// The VM.
        vm: String,
        /// The snapshot.
        name: String,
    },
    /// Delete a snapshot of a VM (each disk's snapshot and the record).
    Delete {
        /// The VM.
        vm: String,
        /// The snapshot.
        name: String,
    },
}

/// `cvol vm set`
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The VM's name.
    pub vm: String,
    /// High availability: when the VM's host dies, another host's agent restarts it.
    #[arg(long, value_parser = ["on", "off"])]
    pub ha: Option<String>,
    /// Boot this kernel directly (a path on every host); "" removes it.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<String>,
    /// The initrd for --kernel; "" removes it.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<String>,
    /// The kernel command line for --kernel; "" removes it.
    #[arg(long, value_name = "TEXT")]
    pub cmdline: Option<String>,
}

/// `cvol vm domxml`
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("disks").args(["container", "nbd_socket"]).required(true))]
pub struct DomxmlArgs {
    /// The VM's name.
    pub vm: String,
    /// The disks are the flat files in the container mounted here.
    #[arg(long, value_name = "MOUNTPOINT")]
    pub container: Option<PathBuf>,
    /// The disks are NBD exports on this unix socket (`cvol mount --nbd unix:PATH`).
    #[arg(long, value_name = "PATH")]
    pub nbd_socket: Option<PathBuf>,
    /// The domain type: `auto` is kvm where /dev/kvm can be opened, else qemu (TCG).
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
}

/// `cvol vm start`
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("local").args(["container", "nbd_socket", "vhost_user"]))]
pub struct StartArgs {
    /// The VM's name.
    pub vm: String,
    /// Take the VM over from a host whose lease expired (its disks are fenced from that
    /// host first); refused while the lease is live.
    #[arg(long, conflicts_with_all = ["container", "nbd_socket", "vhost_user"])]
    pub takeover: bool,
    #[command(flatten)]
    pub agent: AgentArg,
    /// Run QEMU here, opening the disks in the container mounted there (`cvol mount`).
    #[arg(long, value_name = "MOUNTPOINT")]
    pub container: Option<PathBuf>,
    /// Run QEMU here, reaching the disks over NBD on this unix socket.
    #[arg(long, value_name = "PATH", conflicts_with = "container")]
    pub nbd_socket: Option<PathBuf>,
    /// Run QEMU here, reaching the disks over vhost-user-blk on the sockets under DIR
    /// (`cvol mount --vhost-user DIR`); guest RAM is then shared memory (memfd).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["container", "nbd_socket"])]
    pub vhost_user: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// QEMU's accelerator: `auto` is KVM where /dev/kvm can be opened (falling back to
    /// TCG), else TCG; `tcg` where KVM is present but does not work (nested setups).
    #[arg(long, default_value = "auto", value_parser = ["auto", "kvm", "tcg"])]
    pub accel: String,
    /// Print the QEMU command line instead of running it.
    #[arg(long, requires = "local")]
    pub dry_run: bool,
    /// More QEMU arguments, e.g. `-- -kernel vmlinuz -nographic`.
    #[arg(last = true)]
    pub qemu_args: Vec<String>,
}

/// `cvol disk …`
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Add a new blank disk to a VM, named <vm>, <vm>_1, … (the first free name).
    Create {
        /// The VM.
        vm: String,
        /// The disk's size, e.g. 64M, 10G.
        #[arg(long, value_name = "SIZE")]
        size: String,
        /// The provider [default: the datastore's first].
        #[arg(long, value_name = "ID")]
        provider: Option<String>,
    },
    /// List a VM's disks.
    List {
        /// The VM.
        vm: String,
    },
    /// Grow (or, with --force, shrink) a disk.
    Resize {
        /// The disk, as VM/DISK.
        disk: String,
        /// The new size, e.g. 20G.
        size: String,
        /// Allow shrinking, which loses the data past the new end.
        #[arg(long)]
        force: bool,
    },
    /// Take a named snapshot of a disk.
    Snapshot {
        /// The disk, as VM/DISK.
        disk: String,
        /// The snapshot's name.
        name: String,
    },
    /// Clone a disk, or one of its snapshots, into a new disk of an existing VM.
    Clone {
        /// The source, as VM/DISK or VM/DISK@SNAPSHOT.
        source: String,
        /// The new disk, as VM/DISK.
        target: String,
    },
    /// Add a disk to a VM from an image file: any format qemu-img reads (qcow2, raw,
    /// vmdk of any subformat, vdi, vhdx…). The disk takes the image's virtual size; only
    /// allocated data is copied, so a sparse image stays thin. All or nothing.
    Import {
        /// The VM.
        vm: String,
        /// The image file.
        file: PathBuf,
        /// The provider [default: the datastore's first].
        #[arg(long, value_name = "ID")]
        provider: Option<String>,
    },
    /// Write a disk to a new image file (only allocated data is copied): a stopped VM's
    /// disk, or any disk as of one of its snapshots.
    Export {
        /// The disk, as VM/DISK or VM/DISK@SNAPSHOT.
        disk: String,
        /// The file to write; refused if it exists.
        file: PathBuf,
        /// The image format.
        #[arg(long, default_value = "qcow2", value_parser = crate::image::EXPORT_FORMATS)]
        format: String,
    },
    /// Delete a disk: its volume, descriptor and .vmx entry.
    Delete {
        /// The disk, as VM/DISK.
        disk: String,
    },
}

/// `cvol up`
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where to put the share, the pool and the mountpoint.
    #[arg(default_value = "cvol-demo")]
    pub dir: PathBuf,
    /// Set up, print, and exit without mounting.
    #[arg(long)]
    pub no_mount: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// A network for `--allow`: `ADDR/PREFIX`, or one address.
fn parse_network(text: &str) -> Result<cvol_nfs_server::IpNet, String> {
    text.parse::<cvol_nfs_server::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(Into::into))
        .map_err(|_| format!("{text:?} is neither a network (10.1.0.0/16) nor an address"))
}
