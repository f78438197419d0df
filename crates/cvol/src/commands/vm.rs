//! `cvol vm create|list|show|delete`

use cvol_datastore::{VmInfo, VmSpec};
use cvol_format::{parse_size, ProviderId, VmName};

use super::Context;
use crate::cli::VmCommand;
use crate::output::{human_size, print_json, print_table};

pub fn run(ctx: &Context, cmd: VmCommand) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Create {
            vm,
            disks,
            memory,
            cpus,
            provider,
        } => {
            let name = VmName::new(&vm)?;
            let spec = VmSpec {
                disks: disks
                    .iter()
                    .map(|d| parse_size(d))
                    .collect::<Result<_, _>>()?,
                memory_mib: memory,
                cpus,
                provider: provider.as_deref().map(ProviderId::new).transpose()?,
            };
            let info = ctx.datastore()?.vm_create(&name, &spec)?;
            show(ctx, &info)
        }
        VmCommand::List => {
            let vms = ctx.datastore()?.vm_list()?;
            if ctx.json {
                return print_json(&vms);
            }
            let rows: Vec<Vec<String>> = vms
                .iter()
                .map(|vm| {
                    let total: u64 = vm.disks.iter().filter_map(|d| d.size).sum();
                    vec![
                        vm.name.clone(),
                        vm.memory_mib.map_or("-".into(), |m| format!("{m} MiB")),
                        vm.cpus.map_or("-".into(), |c| c.to_string()),
                        vm.disks.len().to_string(),
                        human_size(total),
                        if vm.problems.is_empty() {
                            "ok".into()
                        } else {
                            format!("{} problems", vm.problems.len())
                        },
                    ]
                })
                .collect();
            print_table(&["VM", "MEMORY", "CPUS", "DISKS", "SIZE", "STATE"], &rows);
            Ok(())
        }
        VmCommand::Show { vm } => show(ctx, &ctx.datastore()?.vm_info(&VmName::new(&vm)?)?),
        VmCommand::Delete { vm } => {
            let name = VmName::new(&vm)?;
            ctx.datastore()?.vm_delete(&name)?;
            if !ctx.json {
                println!("deleted VM {name}");
            }
            Ok(())
        }
    }
}

fn show(ctx: &Context, vm: &VmInfo) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(vm);
    }
    println!("VM {}", vm.name);
    println!("  config:  {}", vm.vmx.as_deref().unwrap_or("(no .vmx)"));
    if let Some(memory) = vm.memory_mib {
        println!("  memory:  {memory} MiB");
    }
    if let Some(cpus) = vm.cpus {
        println!("  cpus:    {cpus}");
    }
    println!();
    super::disk::print_disks(&vm.disks);
    for problem in &vm.problems {
        println!("problem: {problem}");
    }
    Ok(())
}
