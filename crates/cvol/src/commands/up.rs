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
    let share = Context::open_share(&share_dir)?;
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
        return crate::output::print_json(&serde_json::json!({
            "datastore": ds.config().uuid.to_string(),
            "share": share_dir,
            "pool": pool_dir,
            "vm": info,
        }));
    }
    println!("datastore {} ({})", ds.config().name, ds.config().uuid);
    println!("  share (metadata): {}", share_dir.display());
    println!("  pool  (disks):    {}", pool_dir.display());
    println!();
    println!("VM {} with {} disk(s):", info.name, info.disks.len());
    super::disk::print_disks(&info.disks);
    println!();
    println!("next:");
    let share_arg = shell_path(&share_dir);
    println!("  cvol --share {share_arg} vm show {DEMO_VM}");
    println!("  cvol --share {share_arg} datastore fsck");
    println!("  cvol --share {share_arg} vm create web --disk 10G --memory 2048");
    Ok(())
}

fn shell_path(path: &Path) -> String {
    let s = path.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
