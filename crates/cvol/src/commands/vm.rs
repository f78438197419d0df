//! `cvol vm create|list|show|delete|set`, and `start|stop|status` through the host agent.

use cvol_datastore::{VmInfo, VmSpec};
use cvol_format::{parse_size, ProviderId, SnapshotName, VmName};

use cvol_cluster::Leases;

use super::Context;
use crate::agent::api::{StartRequest, StopRequest};
use crate::agent::client::AgentClient;
use crate::agent::migrate::MigrateRequest;
use crate::agent::qemu::{self, DiskPaths, QemuOptions};
use crate::agent::{MigrationReport, VmStatus};
use crate::cli::{AgentArg, SetArgs, StartArgs, VmCommand};
use crate::libvirt::{domain_xml, DomainDisks};
use crate::output::{human_size, print_json, print_table, shell_quote};
use crate::progress::Bar;

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
                    // Known only when every disk's pool tells.
                    let allocated: Option<u64> = vm.disks.iter().map(|d| d.allocated).sum();
                    vec![
                        vm.name.clone(),
                        vm.memory_mib.map_or("-".into(), |m| format!("{m} MiB")),
                        vm.cpus.map_or("-".into(), |c| c.to_string()),
                        vm.disks.len().to_string(),
                        human_size(total),
                        allocated.map_or("-".into(), human_size),
                        if vm.problems.is_empty() {
                            if vm.template() { "template" } else { "ok" }.into()
                        } else {
                            format!("{} problems", vm.problems.len())
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "VM",
                    "MEMORY",
                    "CPUS",
                    "DISKS",
                    "SIZE",
                    "ALLOCATED",
                    "STATE",
                ],
                &rows,
            );
            Ok(())
        }
        VmCommand::Show { vm } => show(ctx, &ctx.datastore()?.vm_info(&VmName::new(&vm)?)?),
        VmCommand::Start(args) => start(ctx, &args),
        VmCommand::Stop {
            vm,
            timeout,
            force,
            agent,
        } => {
            let vm = VmName::new(&vm)?;
            let status: VmStatus = AgentClient::new(&agent.agent).post(
                &format!("/v1/vms/{vm}/stop"),
                &StopRequest {
                    timeout_s: timeout,
                    force,
                },
            )?;
            print_status(ctx, &status)
        }
        VmCommand::Status { vm, agent } => {
            let vm = VmName::new(&vm)?;
            let status: VmStatus = AgentClient::new(&agent.agent).get(&format!("/v1/vms/{vm}"))?;
            print_status(ctx, &status)
        }
        VmCommand::Set(args) => set(ctx, &args),
        VmCommand::Snapshot(args) => super::vm_snapshot::run(ctx, args),
        VmCommand::Clone {
            source,
            target,
            snapshot,
            linked,
        } => {
            let (source, target) = (VmName::new(&source)?, VmName::new(&target)?);
            let snapshot = snapshot.as_deref().map(SnapshotName::new).transpose()?;
            let info = ctx.datastore()?.vm_clone(
                &source,
                &target,
                snapshot.as_ref(),
                linked,
                &Bar::new("clone"),
            )?;
            show(ctx, &info)
        }
        VmCommand::Import {
            source,
            name,
            memory,
            cpus,
            provider,
        } => {
            let info = super::import::vm_import(
                ctx,
                &source,
                name.as_deref(),
                (memory, cpus),
                provider.as_deref(),
            )?;
            show(ctx, &info)
        }
        VmCommand::Domxml(args) => {
            let vm = ctx.datastore()?.vm_info(&VmName::new(&args.vm)?)?;
            let disks = match (&args.nbd_socket, &args.container) {
                (Some(socket), _) => DomainDisks::Nbd(socket),
                (None, Some(mnt)) => DomainDisks::Container(mnt),
                (None, None) => unreachable!("clap requires one"),
            };
            print!("{}", domain_xml(&vm, disks, &args.accel)?);
            Ok(())
        }
        VmCommand::Template { vm, off } => {
            let vm = VmName::new(&vm)?;
            if !off {
                check_not_leased(ctx, &vm, "making a template of")?;
            }
            let ds = ctx.datastore()?;
            ds.vm_set_template(&vm, !off)?;
            show(ctx, &ds.vm_info(&vm)?)
        }
        VmCommand::Migrate { vm, to, agent } => migrate(ctx, &vm, &to, &agent),
        VmCommand::Delete { vm } => {
            let name = VmName::new(&vm)?;
            let leases = check_not_leased(ctx, &name, "deleting")?;
            ctx.datastore()?.vm_delete(&name)?;
            leases.remove(&name)?;
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
    if vm.template() {
        println!(
            "  template: not started, cloned (cvol vm clone {} NEW)",
            vm.name
        );
    }
    println!();
    super::disk::print_disks(&vm.disks);
    for problem in &vm.problems {
        println!("problem: {problem}");
    }
    Ok(())
}

/// How long `vm start --vhost-user` waits for a new disk's socket: the mount daemon
/// adds sockets for new disks every `--vhost-user-rescan-ms`.
const WAIT_FOR_SOCKETS: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs QEMU here in the foreground (`--container`, `--nbd-socket` or `--vhost-user`):
/// no agent, no lease.
fn start_local(ctx: &Context, args: &StartArgs) -> anyhow::Result<()> {
    let vm = ctx.datastore()?.vm_info(&VmName::new(&args.vm)?)?;
    vm.check_startable()?;
    let options = QemuOptions {
        qemu: args.qemu.clone(),
        accel: args.accel.clone(),
    };
    let disks = match (&args.nbd_socket, &args.container, &args.vhost_user) {
        (Some(socket), _, _) => DiskPaths::Nbd(socket),
        (None, Some(mnt), _) => DiskPaths::Container(mnt),
        (None, None, Some(dir)) => DiskPaths::VhostUser(dir),
        (None, None, None) => unreachable!("called with one"),
    };
    let mut cmd = qemu::command(&vm, &options, disks)?;
    if let (Some(dir), false) = (&args.vhost_user, args.dry_run) {
        qemu::wait_for_vhost_sockets(&vm, dir, WAIT_FOR_SOCKETS)?;
    }
    cmd.extend(args.qemu_args.iter().cloned());
    if args.dry_run {
        let quoted: Vec<String> = cmd.iter().map(|a| shell_quote(a)).collect();
        println!("{}", quoted.join(" "));
        return Ok(());
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
    Err(anyhow::anyhow!("cannot run {}: {err}", cmd[0]))
}

fn start(ctx: &Context, args: &StartArgs) -> anyhow::Result<()> {
    if args.container.is_some() || args.nbd_socket.is_some() || args.vhost_user.is_some() {
        return start_local(ctx, args);
    }
    if !args.qemu_args.is_empty() {
        anyhow::bail!("extra QEMU arguments are for --container, --nbd-socket or --vhost-user; the agent runs what the .vmx says (see cvol vm set)");
    }
    let vm = VmName::new(&args.vm)?;
    let status: VmStatus = AgentClient::new(&args.agent.agent).post(
        &format!("/v1/vms/{vm}/start"),
        &StartRequest {
            takeover: args.takeover,
        },
    )?;
    print_status(ctx, &status)
}

fn print_status(ctx: &Context, status: &VmStatus) -> anyhow::Result<()> {
    if ctx.json {
        return print_json(status);
    }
    println!("VM {}: {}", status.vm, status.state);
    if let Some(owner) = &status.owner {
        println!("  host:      {owner}");
    }
    if let Some(epoch) = status.epoch {
        println!("  epoch:     {epoch}");
    }
    if let (Some(age), Some(live)) = (status.heartbeat_age_ms, status.live) {
        println!(
            "  heartbeat: unchanged for {:.1} s ({})",
            age as f64 / 1000.0,
            if live { "live" } else { "expired" }
        );
    }
    println!("  ha:        {}", if status.ha { "on" } else { "off" });
    if let Some(here) = &status.here {
        println!(
            "  qemu:      pid {} on this host, console {}",
            here.pid, here.console
        );
    }
    if let Some(problem) = &status.problem {
        println!("problem: {problem}");
    }
    Ok(())
}

fn migrate(ctx: &Context, vm: &str, to: &str, agent: &AgentArg) -> anyhow::Result<()> {
    let vm = VmName::new(vm)?;
    let bar = crate::progress::spinner(ctx.json, &format!("migrating VM {vm} to host {to}"));
    let client = AgentClient::new(&agent.agent);
    let done = std::sync::atomic::AtomicBool::new(false);
    let report: anyhow::Result<MigrationReport> = std::thread::scope(|s| {
        // RAM sent so far, while the migration runs on this host's agent (the source).
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(VmStatus {
                    migration: Some(m), ..
                }) = client.get(&format!("/v1/vms/{vm}"))
                {
                    if m.state == "running" && m.ram > 0 {
                        crate::progress::show_bytes(&bar, m.transferred, m.ram);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        let report = client.post(
            &format!("/v1/vms/{vm}/migrate"),
            &MigrateRequest { to: to.to_string() },
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        report
    });
    bar.finish_and_clear();
    let report = report?;
    if ctx.json {
        return print_json(&report);
    }
    println!(
        "VM {vm} moved to host {} in {:.1} s: {} of RAM sent, guest stopped for {} ms (QEMU's downtime {} ms, hand-over {} ms)",
        report.to,
        report.total_ms.unwrap_or_default() as f64 / 1000.0,
        human_size(report.transferred),
        report.downtime_ms.unwrap_or_default() + report.handover_ms.unwrap_or_default(),
        report.downtime_ms.unwrap_or_default(),
        report.handover_ms.unwrap_or_default()
    );
    Ok(())
}

fn set(ctx: &Context, args: &SetArgs) -> anyhow::Result<()> {
    let vm = VmName::new(&args.vm)?;
    let ds = ctx.datastore()?;
    let changes = [
        (
            "cvol.ha",
            args.ha
                .as_deref()
                .map(|h| if h == "on" { "TRUE" } else { "FALSE" }),
        ),
        ("cvol.kernel", args.kernel.as_deref()),
        ("cvol.initrd", args.initrd.as_deref()),
        ("cvol.cmdline", args.cmdline.as_deref()),
    ];
    if changes.iter().all(|(_, v)| v.is_none()) {
        anyhow::bail!("nothing to set: give --ha, --kernel, --initrd or --cmdline");
    }
    for (key, value) in changes {
        if let Some(value) = value {
            ds.vm_set_option(&vm, key, Some(value).filter(|v| !v.is_empty()))?;
        }
    }
    show(ctx, &ds.vm_info(&vm)?)
}

/// Refuses to go on `doing` a VM that some host may run: its lease is not stopped.
fn check_not_leased(ctx: &Context, vm: &VmName, doing: &str) -> anyhow::Result<Leases> {
    let leases = Leases::new(ctx.share()?);
    if let Some(view) = leases.current(vm)? {
        if !view.is_free() {
            anyhow::bail!(
                "not {doing} VM {vm}: its lease is held by {}; stop it first",
                view.holder()
            );
        }
    }
    Ok(leases)
}
