//! `cvol disk create|list|resize|snapshot|clone|import|export|delete`

use anyhow::Context as _;
use cvol_datastore::{parse_disk_path, DiskInfo};
use cvol_format::{parse_size, ProviderId, SnapshotName, VmName};

use super::Context;
use crate::cli::DiskCommand;
use crate::output::{human_size, print_json, print_table};
use crate::progress::Bar;

pub fn run(ctx: &Context, cmd: DiskCommand) -> anyhow::Result<()> {
    let ds = ctx.datastore()?;
    match cmd {
        DiskCommand::Create { vm, size, provider } => {
            let provider = provider.as_deref().map(ProviderId::new).transpose()?;
            let info = ds.disk_create(&VmName::new(&vm)?, parse_size(&size)?, provider.as_ref())?;
            print_one(ctx, &info)
        }
        DiskCommand::List { vm } => {
            let disks = ds.disks(&VmName::new(&vm)?)?;
            if ctx.json {
                return print_json(&disks);
            }
            print_disks(&disks);
            Ok(())
        }
        DiskCommand::Resize { disk, size, force } => {
            let (vm, disk) = parse_disk_path(&disk)?;
            let info = ds.disk_resize(&vm, &disk, parse_size(&size)?, force)?;
            print_one(ctx, &info)
        }
        DiskCommand::Snapshot { disk, name } => {
            let (vm, disk) = parse_disk_path(&disk)?;
            let name = SnapshotName::new(&name)?;
            let snapshot = ds.disk_snapshot(&vm, &disk, &name, &Bar::new("snapshot"))?;
            if ctx.json {
                return print_json(&serde_json::json!({
                    "disk": format!("{vm}/{disk}"),
                    "snapshot": snapshot.name.as_str(),
                    "size": snapshot.size,
                }));
            }
            println!(
                "snapshot {vm}/{disk}@{} taken ({})",
                snapshot.name,
                human_size(snapshot.size)
            );
            Ok(())
        }
        DiskCommand::Clone { source, target } => {
            let (source, snapshot) = match source.split_once('@') {
                Some((disk, snap)) => (disk.to_string(), Some(SnapshotName::new(snap)?)),
                None => (source, None),
            };
            let (vm, disk) = parse_disk_path(&source)?;
            let (to_vm, to_disk) = parse_disk_path(&target)?;
            let info = ds
                .disk_clone(
                    (&vm, &disk, snapshot.as_ref()),
                    (&to_vm, &to_disk),
                    &Bar::new("clone"),
                )
                .with_context(|| format!("cannot clone {source} to {target}"))?;
            print_one(ctx, &info)
        }
        DiskCommand::Import { vm, file, provider } => {
            let info = super::import::disk_import(ctx, &vm, &file, provider.as_deref())?;
            print_one(ctx, &info)
        }
        DiskCommand::Export { disk, file, format } => {
            super::import::disk_export(ctx, &disk, &file, &format)
        }
        DiskCommand::Delete { disk } => {
            let (vm, disk) = parse_disk_path(&disk)?;
            ds.disk_delete(&vm, &disk)?;
            if !ctx.json {
                println!("deleted disk {vm}/{disk}");
            }
            Ok(())
        }
    }
}

fn print_one(ctx: &Context, info: &DiskInfo) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(info);
    }
    print_disks(std::slice::from_ref(info));
    Ok(())
}

/// Prints disks as a table, then their problems.
pub fn print_disks(disks: &[DiskInfo]) {
    let rows: Vec<Vec<String>> = disks
        .iter()
        .map(|d| {
            vec![
                d.name.clone(),
                d.size.map_or("-".into(), human_size),
                d.allocated.map_or("-".into(), human_size),
                d.provider.clone().unwrap_or_else(|| "-".into()),
                d.volume.clone().unwrap_or_else(|| "-".into()),
                if d.snapshots.is_empty() {
                    "-".into()
                } else {
                    d.snapshots.join(",")
                },
                d.descriptor.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "DISK",
            "SIZE",
            "ALLOCATED",
            "PROVIDER",
            "VOLUME",
            "SNAPSHOTS",
            "DESCRIPTOR",
        ],
        &rows,
    );
    for d in disks {
        if let Some(problem) = &d.problem {
            println!("problem: {problem}");
        }
    }
}
