//! `cvol up`: a working datastore on embedded defaults, in one command.

use std::path::Path;

use anyhow::Context as _;
use cvol_datastore::{Datastore, DatastoreError, VmSpec};
use cvol_format::VmName;

use super::{datastore::parse_provider, with_env_failpoint, Context};
use crate::cli::UpArgs;

const DEMO_VM: &str = "demo";
const DEMO_DISK: u64 = 1 << 30;

pub fn run(ctx: &Context, args: &UpArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)?;
    let share_dir = dir.join("share");
    let pool_dir = dir.join("pool");
    for d in [&share_dir, &pool_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    // Mounted, the share is real NFS over loopback, served from DIR/share for as long as
    // this runs; with --no-mount nothing keeps running, so it is the directory itself.
    let server = if args.no_mount {
        None
    } else {
        // Before the server's threads start, so that they inherit the mask and a Ctrl-C
        // reaches the clean shutdown instead of killing the process with the mount up.
        super::signals::block_termination_signals();
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        // Only this process mounts it, acting as its own user, root included.
        let policy = cvol_nfs_server::ExportPolicy {
            root_squash: false,
            ..Default::default()
        };
        Some(cvol_nfs_server::NfsServer::start_with(
            &share_dir, loopback, &policy,
        )?)
    };
    let share = match &server {
        Some(server) => ctx.open_nfs(&server.url())?,
        None => Context::open_share(&share_dir)?,
    };
    let ds = match Datastore::open(share.clone(), &ctx.host) {
        Ok(ds) => ds,
        Err(DatastoreError::NotADatastore(_)) => {
            let provider = parse_provider(&format!("pool=file:{}", pool_dir.display()))?;
            Datastore::create(share, "demo", vec![provider], &ctx.host)?
        }
        Err(e) => return Err(e.into()),
    };
    let ds = with_env_failpoint(ds);
    let vm = VmName::new(DEMO_VM)?;
    let info = match ds.vm_info(&vm) {
        Ok(info) => info,
        Err(DatastoreError::VmNotFound(_)) => ds.vm_create(
            &vm,
            &VmSpec {
                disks: vec![DEMO_DISK],
                memory_mib: 1024,
                cpus: 1,
                provider: None,
            },
        )?,
        Err(e) => return Err(e.into()),
    };
    if ctx.json {
        crate::output::print_json(&serde_json::json!({
            "datastore": ds.config().uuid.to_string(),
            "share": share_dir,
            "share_url": server.as_ref().map(|s| s.url().to_string()),
            "pool": pool_dir,
            "mountpoint": (!args.no_mount).then(|| dir.join("mnt")),
            "vm": info,
        }))?;
    } else {
        print_summary(&ds, &share_dir, server.as_ref(), &pool_dir, &info);
    }
    let share_arg = match &server {
        Some(server) => server.url().to_string(),
        None => shell_path(&share_dir),
    };
    let mnt = dir.join("mnt");
    if args.no_mount {
        if ctx.json {
            return Ok(());
        }
        println!("next:");
        println!("  cvol --share {share_arg} mount {}", shell_path(&mnt));
        println!("  cvol --share {share_arg} vm create web --disk 10G --memory 2048");
        return Ok(());
    }
    std::fs::create_dir_all(&mnt).with_context(|| format!("cannot create {}", mnt.display()))?;
    let mnt_arg = shell_path(&mnt);
    let mut serve = args.serve.clone();
    let socket = dir.join("nbd.sock");
    if serve.nbd.is_empty() {
        serve.nbd.push(cvol_nbd::Listen::Unix(socket.clone()));
    }
    let vhost_dir = serve
        .vhost_user
        .get_or_insert_with(|| dir.join("vhost"))
        .clone();
    let ready = |_: &_| {
        println!("container mounted at {}; in another shell:", mnt.display());
        println!("  ls -l {mnt_arg}/{DEMO_VM}");
        println!("  qemu-img info {mnt_arg}/{DEMO_VM}/{DEMO_VM}.vmdk");
        println!("  qemu-io -c 'write -P 0xab 0 1M' {mnt_arg}/{DEMO_VM}/{DEMO_VM}.vmdk");
        for listen in &serve.nbd {
            match listen {
                cvol_nbd::Listen::Unix(path) => {
                    println!(
                        "  qemu-img info 'nbd+unix:///{DEMO_VM}/{DEMO_VM}?socket={}'",
                        path.display()
                    )
                }
                cvol_nbd::Listen::Tcp(addr) => {
                    println!("  qemu-img info 'nbd://{addr}/{DEMO_VM}/{DEMO_VM}'")
                }
            }
        }
        println!(
            "  cvol --share {share_arg} vm start {DEMO_VM} --vhost-user {} --dry-run",
            shell_path(&vhost_dir)
        );
        println!("  cvol --share {share_arg} vm create web --disk 10G --memory 2048");
        println!("stop with Ctrl-C (or: cvol umount {mnt_arg})");
        Ok(())
    };
    super::mount::serve(std::sync::Arc::new(ds), &mnt, &serve, ready, || {})
}

fn print_summary(
    ds: &Datastore,
    share_dir: &Path,
    server: Option<&cvol_nfs_server::NfsServer>,
    pool_dir: &Path,
    info: &cvol_datastore::VmInfo,
) {
    println!("datastore {} ({})", ds.config().name, ds.config().uuid);
    match server {
        Some(server) => println!(
            "  share (metadata): {}, served over NFS at {}",
            share_dir.display(),
            server.url()
        ),
        None => println!("  share (metadata): {}", share_dir.display()),
    }
    println!("  pool  (disks):    {}", pool_dir.display());
    println!();
    println!("VM {} with {} disk(s):", info.name, info.disks.len());
    super::disk::print_disks(&info.disks);
    println!();
}

/// `path` quoted for a shell.
fn shell_path(path: &Path) -> String {
    crate::output::shell_quote(&path.display().to_string())
}
