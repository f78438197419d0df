//! `cvol vm snapshot VM NAME` and `cvol vm snapshot list|revert|delete`.

use cvol_cluster::Leases;
use cvol_datastore::VmSnapshot;
use cvol_format::{SnapshotName, VmName};

use super::Context;
use crate::agent::api::SnapshotRequest;
use crate::agent::client::AgentClient;
use crate::cli::{VmSnapshotArgs, VmSnapshotCommand};
use crate::output::{human_size, print_json, print_table};
use crate::progress::Bar;

pub fn run(ctx: &Context, args: VmSnapshotArgs) -> anyhow::Result<()> {
    match args.command {
        None => {
            let (Some(vm), Some(name)) = (args.vm, args.name) else {
                anyhow::bail!("give VM and NAME, or one of list, revert, delete");
            };
            let (vm, name) = (VmName::new(&vm)?, SnapshotName::new(&name)?);
            let taken: VmSnapshot = match lease_holder(ctx, &vm)? {
                // A running VM is paused by the agent that runs it, so that its disks
                // agree with each other.
                Some(_) => AgentClient::new(&args.agent.agent).post(
                    &format!("/v1/vms/{vm}/snapshot"),
                    &SnapshotRequest {
                        name: name.to_string(),
                        forwarded: false,
                    },
                )?,
                None => {
                    ctx.datastore()?
                        .vm_snapshot_create(&vm, &name, false, &Bar::new("snapshot"))?
                }
            };
            if ctx.json {
                return print_json(&taken);
            }
            println!(
                "snapshot {vm}@{} taken: {} disks{}",
                taken.name,
                taken.disks.len(),
                if taken.running {
                    ", the VM paused meanwhile"
                } else {
                    ""
                }
            );
            Ok(())
        }
        Some(VmSnapshotCommand::List { vm }) => {
            let snapshots = ctx.datastore()?.vm_snapshots(&VmName::new(&vm)?)?;
            if ctx.json {
                return print_json(&snapshots);
            }
            let rows: Vec<Vec<String>> = snapshots
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        time_text(s.created_unix_ms),
                        s.disks.len().to_string(),
                        human_size(s.disks.iter().map(|d| d.size).sum()),
                        if s.running { "running" } else { "stopped" }.into(),
                    ]
                })
                .collect();
            print_table(&["SNAPSHOT", "TAKEN", "DISKS", "SIZE", "VM WAS"], &rows);
            Ok(())
        }
        Some(VmSnapshotCommand::Revert { vm, name }) => {
            let (vm, name) = (VmName::new(&vm)?, SnapshotName::new(&name)?);
            if let Some(holder) = lease_holder(ctx, &vm)? {
                anyhow::bail!(
                    "not reverting VM {vm}: it runs (its lease is held by {holder}); stop it first"
                );
            }
            let record = ctx.datastore()?.vm_snapshot_revert(&vm, &name)?;
            if ctx.json {
                return print_json(&record);
            }
            println!("VM {vm} reverted to snapshot {name}");
            Ok(())
        }
        Some(VmSnapshotCommand::Delete { vm, name }) => {
            let (vm, name) = (VmName::new(&vm)?, SnapshotName::new(&name)?);
            ctx.datastore()?.vm_snapshot_delete(&vm, &name)?;
            if !ctx.json {
                println!("deleted snapshot {vm}@{name}");
            }
            Ok(())
        }
    }
}

/// Who holds `vm`'s lease, if anyone: the VM may be running there.
fn lease_holder(ctx: &Context, vm: &VmName) -> anyhow::Result<Option<String>> {
    Ok(Leases::new(ctx.share()?)
        .current(vm)?
        .filter(|view| !view.is_free())
        .map(|view| view.holder()))
}

/// A time in milliseconds since the epoch, as RFC 3339 in UTC.
fn time_text(unix_ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_seconds(time).to_string()
}
