//! `cvol vm import`, `cvol disk import` and `cvol disk export`: images in and out.

use std::collections::HashMap;
use std::path::Path;

use cvol_datastore::{parse_disk_path, DatastoreError, VmSpec};
use cvol_format::{DiskName, ProviderId, SnapshotName, VmName};

use super::Context;
use crate::image::{self, qemu_img};
use crate::progress::copy_progress;

/// `cvol vm import SOURCE`
pub fn vm_import(
    ctx: &Context,
    source: &Path,
    name: Option<&str>,
    (memory, cpus): (Option<u64>, Option<u32>),
    provider: Option<&str>,
) -> anyhow::Result<cvol_datastore::VmInfo> {
    let plan = image::plan(source)?;
    let name = match name.or(plan.name.as_deref()) {
        Some(name) => VmName::new(name)
            .map_err(|e| anyhow::anyhow!("{e}; give the VM a name of your own with --name"))?,
        None => anyhow::bail!("{}: give the VM a name with --name", source.display()),
    };
    let mut disks = Vec::new();
    for (i, disk) in plan.disks.iter().enumerate() {
        let info = qemu_img::info(&disk.path)?;
        // A source's own disk names are kept where they are valid names.
        let disk_name = match disk.name.as_deref().map(DiskName::new) {
            Some(Ok(disk_name)) => disk_name,
            _ => DiskName::nth(&name, i)?,
        };
        disks.push((disk_name, disk.path.clone(), info));
    }
    let names: Vec<DiskName> = disks.iter().map(|(disk, ..)| disk.clone()).collect();
    let spec = VmSpec {
        disks: disks
            .iter()
            .map(|(_, _, info)| info.virtual_size.div_ceil(512) * 512)
            .collect(),
        memory_mib: memory.or(plan.memory_mib).unwrap_or(1024),
        cpus: cpus.or(plan.cpus).unwrap_or(1),
        provider: provider.map(ProviderId::new).transpose()?,
    };
    let sources: HashMap<DiskName, _> = disks
        .into_iter()
        .map(|(disk, path, info)| (disk, (path, info)))
        .collect();
    let ds = ctx.datastore()?;
    let fill = |disk: &DiskName, provider: &ProviderId, volume: &cvol_format::VolumeId| {
        let (path, info) = sources
            .get(disk)
            .ok_or_else(|| DatastoreError::Invalid(format!("no source for disk {disk}")))?;
        let progress = copy_progress(ctx.json, &format!("import {disk}"));
        image::copy_in(&ds, (provider, volume), (path, info), &*progress)
    };
    Ok(ds.vm_import(&name, &spec, &names, &fill)?)
}

/// `cvol disk import VM FILE`
pub fn disk_import(
    ctx: &Context,
    vm: &str,
    file: &Path,
    provider: Option<&str>,
) -> anyhow::Result<cvol_datastore::DiskInfo> {
    let vm = VmName::new(vm)?;
    let info = qemu_img::info(file)?;
    let provider = provider.map(ProviderId::new).transpose()?;
    let ds = ctx.datastore()?;
    let fill = |disk: &DiskName, provider: &ProviderId, volume: &cvol_format::VolumeId| {
        let progress = copy_progress(ctx.json, &format!("import {disk}"));
        image::copy_in(&ds, (provider, volume), (file, &info), &*progress)
    };
    Ok(ds.disk_import(
        &vm,
        info.virtual_size.div_ceil(512) * 512,
        provider.as_ref(),
        &fill,
    )?)
}

/// `cvol disk export VM/DISK FILE`
pub fn disk_export(ctx: &Context, disk: &str, file: &Path, format: &str) -> anyhow::Result<()> {
    let (disk, snapshot) = match disk.split_once('@') {
        Some((disk, snapshot)) => (disk, Some(SnapshotName::new(snapshot)?)),
        None => (disk, None),
    };
    let (vm, disk) = parse_disk_path(disk)?;
    let progress = copy_progress(ctx.json, &format!("export {disk}"));
    image::export(
        &ctx.datastore()?,
        (&vm, &disk, snapshot.as_ref()),
        file,
        format,
        &*progress,
    )?;
    if ctx.json {
        return crate::output::print_json(&serde_json::json!({
            "disk": format!("{vm}/{disk}"),
            "file": file,
            "format": format,
        }));
    }
    println!("exported {vm}/{disk} to {} ({format})", file.display());
    Ok(())
}
