//! `cvol vm create|list|show|delete`

use cvol_datastore::{VmInfo, VmSpec};
use cvol_format::{parse_size, ProviderId, VmName};

use super::Context;
use crate::cli::{StartArgs, VmCommand};
use crate::output::{human_size, print_json, print_table, shell_quote};

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
        VmCommand::Start(args) => start(ctx, &args),
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

/// The QEMU command line that runs `vm` as its `.vmx` describes it.
fn qemu_command(vm: &VmInfo, args: &StartArgs) -> anyhow::Result<Vec<String>> {
    if vm.vmx_disks.is_empty() {
        anyhow::bail!("VM {} has no disk in its .vmx to boot from", vm.name);
    }
    let accel = match args.accel.as_str() {
        "auto"
            if std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok() =>
        {
            "kvm:tcg"
        }
        "auto" => "tcg",
        other => other,
    };
    let mut cmd = vec![
        args.qemu.clone(),
        "-name".into(),
        vm.name.clone(),
        "-machine".into(),
        format!("q35,accel={accel}"),
        "-m".into(),
        vm.memory_mib.unwrap_or(1024).to_string(),
        "-smp".into(),
        vm.cpus.unwrap_or(1).to_string(),
    ];
    for file in &vm.vmx_disks {
        let disk = file.strip_suffix(".vmdk").unwrap_or(file);
        let drive = match (&args.nbd_socket, &args.container) {
            (Some(socket), _) => format!(
                "file=nbd+unix:///{}/{disk}?socket={},format=raw,if=virtio,cache=none",
                vm.name,
                socket.display()
            ),
            (None, Some(mnt)) => format!(
                "file={},format=vmdk,if=virtio,cache=none",
                mnt.join(&vm.name).join(file).display()
            ),
            (None, None) => unreachable!("clap requires one"),
        };
        cmd.extend(["-drive".to_string(), drive]);
    }
    cmd.extend(args.qemu_args.iter().cloned());
    Ok(cmd)
}

fn start(ctx: &Context, args: &StartArgs) -> anyhow::Result<()> {
    let vm = ctx.datastore()?.vm_info(&VmName::new(&args.vm)?)?;
    let cmd = qemu_command(&vm, args)?;
    if args.dry_run {
        let quoted: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
        println!("{}", quoted.join(" "));
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", cmd[0]))
}
