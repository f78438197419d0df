//! `cvol datastore create|info|fsck`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use cvol_datastore::{Datastore, FsckOptions};
use cvol_format::{ProviderConfig, ProviderId};
use cvol_provider::PROVIDER_KINDS;
use serde::Serialize;

use super::Context;
use crate::cli::DatastoreCommand;
use crate::output::{print_json, print_table};

/// Exit code of a fsck that leaves problems, as e2fsck's "errors left uncorrected".
const FSCK_UNCORRECTED: u8 = 4;

pub fn run(ctx: &Context, cmd: DatastoreCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DatastoreCommand::Create {
            name,
            providers,
            settings,
        } => {
            let mut providers = providers
                .iter()
                .map(|spec| parse_provider(spec))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for setting in &settings {
                add_setting(&mut providers, setting)?;
            }
            let ds = Datastore::create(ctx.share()?, &name, providers, &ctx.host)?;
            print_info(ctx, &ds)?;
        }
        DatastoreCommand::Info => print_info(ctx, &ctx.datastore()?)?,
        DatastoreCommand::Fsck { repair, grace } => {
            let ds = ctx.datastore()?;
            let mut report = ds.fsck(&FsckOptions {
                repair,
                intent_grace: Duration::from_secs(grace),
            })?;
            let leases = cvol_cluster::check_leases(
                &cvol_cluster::Leases::new(ds.share_arc()),
                &ds.vm_names()?,
                repair,
                &cvol_cluster::LeaseTiming::default(),
                &cvol_format::HostId::new(&ctx.host)?,
            )?;
            report
                .problems
                .extend(leases.into_iter().map(|p| cvol_datastore::Problem {
                    what: p.what,
                    repaired: p.repaired,
                }));
            if ctx.json {
                print_json(&report)?;
            } else {
                for problem in &report.problems {
                    println!(
                        "{} {}",
                        if problem.repaired {
                            "repaired:"
                        } else {
                            "problem: "
                        },
                        problem.what
                    );
                }
                let left = report.problems.iter().filter(|p| !p.repaired).count();
                println!(
                    "{} VMs, {} disks, {} volumes checked: {} problems found, {left} left",
                    report.vms,
                    report.disks,
                    report.volumes,
                    report.problems.len()
                );
            }
            if !report.is_clean() {
                return Ok(ExitCode::from(FSCK_UNCORRECTED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds `ID.KEY=VALUE` to provider ID's settings.
fn add_setting(providers: &mut [ProviderConfig], setting: &str) -> anyhow::Result<()> {
    let usage = || {
        anyhow!("invalid setting {setting:?}: expected ID.KEY=VALUE, e.g. pool.compression=zstd")
    };
    let (name, value) = setting.split_once('=').ok_or_else(usage)?;
    let (id, key) = name.split_once('.').ok_or_else(usage)?;
    if key.is_empty() {
        return Err(usage());
    }
    let provider = providers
        .iter_mut()
        .find(|p| p.id.as_str() == id)
        .ok_or_else(|| {
            anyhow!("setting {setting:?}: no provider {id:?} is given with --provider")
        })?;
    provider.settings.insert(key.to_string(), value.to_string());
    Ok(())
}

/// Parses `ID=KIND:LOCATION`, e.g. `pool=file:/srv/pool` or
/// `pool=remote:http://10.0.0.5:7400`.
pub fn parse_provider(spec: &str) -> anyhow::Result<ProviderConfig> {
    let usage = || {
        anyhow!(
            "invalid provider {spec:?}: expected ID=KIND:LOCATION, e.g. pool=file:/srv/cvol/pool"
        )
    };
    let (id, rest) = spec.split_once('=').ok_or_else(usage)?;
    let (kind, location) = rest.split_once(':').ok_or_else(usage)?;
    let id = ProviderId::new(id)?;
    let settings = match kind {
        "file" => {
            let dir = Path::new(location);
            // The datastore is read from other directories and hosts: keep absolute paths.
            let dir = std::path::absolute(dir)
                .with_context(|| format!("provider {id}: bad path {location:?}"))?;
            BTreeMap::from([("path".to_string(), dir.display().to_string())])
        }
        "object" => {
            if !(location.starts_with("file:///") || location.starts_with("s3://")) {
                bail!("provider {id}: expected object:file:///DIR or object:s3://BUCKET[/PREFIX], got object:{location}");
            }
            BTreeMap::from([("url".to_string(), location.to_string())])
        }
        "rbd" => {
            if location.is_empty() || location.contains(['/', ' ']) {
                bail!("provider {id}: expected rbd:POOL (an RBD pool's name), got rbd:{location}");
            }
            BTreeMap::from([("pool".to_string(), location.to_string())])
        }
        "remote" => {
            if !(location.starts_with("http://") || location.starts_with("https://")) {
                bail!("provider {id}: expected remote:http://HOST:PORT, got remote:{location}");
            }
            BTreeMap::from([("url".to_string(), location.to_string())])
        }
        _ => bail!(
            "provider {id}: unknown kind {kind:?} (this cvol knows: {})",
            PROVIDER_KINDS.join(", ")
        ),
    };
    Ok(ProviderConfig {
        id,
        kind: kind.to_string(),
        settings,
    })
}

#[derive(Serialize)]
struct DatastoreInfo<'a> {
    name: &'a str,
    uuid: String,
    share: String,
    format_version: u32,
    providers: Vec<ProviderInfo>,
    vms: usize,
}

#[derive(Serialize)]
struct ProviderInfo {
    id: String,
    kind: String,
    location: String,
    default: bool,
    volumes: Option<usize>,
    error: Option<String>,
}

fn print_info(ctx: &Context, ds: &Datastore) -> anyhow::Result<()> {
    let config = ds.config();
    let providers = config
        .providers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let listed = ds.provider(&p.id).and_then(|provider| {
                let volumes = provider
                    .list_volumes()
                    .map_err(cvol_datastore::DatastoreError::from)?;
                Ok((provider.location(), volumes))
            });
            let owner = config.uuid.to_string();
            let (location, volumes, error) = match listed {
                Ok((location, v)) => (
                    location,
                    Some(v.iter().filter(|v| v.owner == owner).count()),
                    None,
                ),
                Err(e) => (
                    p.settings.get("path").cloned().unwrap_or_default(),
                    None,
                    Some(e.to_string()),
                ),
            };
            ProviderInfo {
                id: p.id.to_string(),
                kind: p.kind.clone(),
                location,
                default: i == 0,
                volumes,
                error,
            }
        })
        .collect();
    let info = DatastoreInfo {
        name: &config.name,
        uuid: config.uuid.to_string(),
        share: ds.share().location(),
        format_version: config.format_version,
        providers,
        vms: ds.vm_names()?.len(),
    };
    if ctx.json {
        return print_json(&info);
    }
    println!("datastore {}", info.name);
    println!("  uuid:    {}", info.uuid);
    println!("  share:   {}", info.share);
    println!("  format:  {}", info.format_version);
    println!("  VMs:     {}", info.vms);
    println!();
    let rows: Vec<Vec<String>> = info
        .providers
        .iter()
        .map(|p| {
            vec![
                format!("{}{}", p.id, if p.default { " (default)" } else { "" }),
                p.kind.clone(),
                p.location.clone(),
                match (&p.volumes, &p.error) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(e)) => format!("unavailable: {e}"),
                    (None, None) => String::new(),
                },
            ]
        })
        .collect();
    print_table(&["PROVIDER", "KIND", "LOCATION", "VOLUMES"], &rows);
    Ok(())
}
