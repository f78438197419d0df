//! Images in and out: disk images (qcow2, raw, vmdk of any subformat, anything
//! `qemu-img` reads), VMware VM folders and OVF/OVA packages become VMs and disks, and
//! disks become image files. The bytes move through `qemu-img convert` to or from the
//! volume served over NBD on a private socket; only allocated data is copied.

pub mod ovf;
pub mod qemu_img;
pub mod served;
pub mod vmware;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cvol_datastore::{Datastore, DatastoreError};
use cvol_format::{DiskName, ProviderId, SnapshotName, VmName, VolumeId};
use cvol_provider::{CopyProgress, Provider};

use qemu_img::{Image, ImageInfo};
use served::ServedDevice;

/// One disk to import.
#[derive(Debug)]
pub struct SourceDisk {
    /// Its name where the source gives one (a VMware disk's file stem).
    pub name: Option<String>,
    /// Its image file.
    pub path: PathBuf,
}

/// What a source says a VM is.
#[derive(Debug)]
pub struct ImportPlan {
    /// The VM's name there.
    pub name: Option<String>,
    /// Its memory in MiB.
    pub memory_mib: Option<u64>,
    /// Its CPUs.
    pub cpus: Option<u32>,
    /// Its disks, boot disk first.
    pub disks: Vec<SourceDisk>,
    /// Where an OVA was unpacked: removed with the plan.
    _unpacked: Option<tempfile::TempDir>,
}

/// The plan for `source`: a VMware folder or `.vmx`, an `.ova` or `.ovf`, or else one
/// disk image (named after the file).
pub fn plan(source: &Path) -> anyhow::Result<ImportPlan> {
    let extension = source
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if !source.exists() {
        bail!("{}: no such file or folder", source.display());
    }
    match extension.as_str() {
        _ if source.is_dir() => vmware::plan(source),
        "vmx" => vmware::plan(source),
        "ova" => ovf::plan_ova(source),
        "ovf" => ovf::plan_ovf(source),
        _ => Ok(ImportPlan {
            name: source.file_stem().map(|s| s.to_string_lossy().into_owned()),
            memory_mib: None,
            cpus: None,
            disks: vec![SourceDisk {
                name: None,
                path: source.to_path_buf(),
            }],
            _unpacked: None,
        }),
    }
}

/// Copies image `path` (as `info` says) into the blank volume `volume` of `provider`,
/// attached to this host for the copy and detached after.
pub fn copy_in(
    ds: &Datastore,
    (provider_id, volume): (&ProviderId, &VolumeId),
    (path, info): (&Path, &ImageInfo),
    progress: &dyn CopyProgress,
) -> Result<(), DatastoreError> {
    let provider = ds.provider(provider_id)?;
    let attachment = provider.attach(volume, ds.host(), false)?;
    let copied = (|| -> anyhow::Result<()> {
        let served = ServedDevice::start(attachment.device.clone())?;
        qemu_img::convert(
            &Image::File {
                path,
                format: &info.format,
                options: None,
            },
            &Image::Nbd(&served.url()),
            info.virtual_size,
            progress,
        )?;
        drop(served);
        attachment.device.flush()?;
        Ok(())
    })();
    drop(attachment);
    let detached = provider.detach(volume, ds.host());
    copied.map_err(|e| DatastoreError::Invalid(format!("importing {}: {e:#}", path.display())))?;
    Ok(detached?)
}

/// Writes disk `vm/disk` (as it is, or as of its snapshot `snapshot`) to a new file
/// `path` in `format` (`qcow2`, `raw`, `vmdk`). The disk itself is refused while in use
/// (attached to a host), a snapshot of it never; an existing `path` is refused, and a
/// failed export leaves no file.
pub fn export(
    ds: &Datastore,
    (vm, disk, snapshot): (&VmName, &DiskName, Option<&SnapshotName>),
    path: &Path,
    format: &str,
    progress: &dyn CopyProgress,
) -> anyhow::Result<()> {
    let info = ds.disk(vm, disk)?;
    if let Some(problem) = info.problem {
        bail!("cannot export {vm}/{disk}: {problem}");
    }
    if path.symlink_metadata().is_ok() {
        bail!("{} exists; not overwriting it", path.display());
    }
    let written = match snapshot {
        Some(snapshot) => ds
            .with_snapshot_volume((vm, disk, snapshot), |provider, volume| {
                write_volume(ds, provider, volume, path, format, progress)
                    .map_err(|e| DatastoreError::Invalid(format!("{e:#}")))
            })
            .map_err(anyhow::Error::from),
        None => {
            if let Some(holder) = info.attached_to {
                bail!(
                    "disk {vm}/{disk} is in use on host {holder:?}; stop the VM, or export a \
                     snapshot of it (VM/DISK@SNAPSHOT)"
                );
            }
            let (Some(provider), Some(volume)) = (info.provider, info.volume) else {
                bail!("disk {vm}/{disk} names no volume");
            };
            let provider = ds.provider(&ProviderId::new(&provider)?)?;
            write_volume(
                ds,
                &*provider,
                &VolumeId::new(&volume)?,
                path,
                format,
                progress,
            )
        }
    };
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written.with_context(|| format!("exporting {vm}/{disk} to {}", path.display()))
}

/// Writes volume `volume` to `path` in `format`, read through a standby attachment, which
/// changes nothing for anyone.
fn write_volume(
    ds: &Datastore,
    provider: &dyn Provider,
    volume: &VolumeId,
    path: &Path,
    format: &str,
    progress: &dyn CopyProgress,
) -> anyhow::Result<()> {
    let attachment = provider.attach_standby(volume, ds.host())?;
    let served = ServedDevice::start(attachment.device.clone())?;
    qemu_img::convert(
        &Image::Nbd(&served.url()),
        &Image::File {
            path,
            format,
            options: None,
        },
        attachment.device.size(),
        progress,
    )
}

/// The formats `export` writes.
pub const EXPORT_FORMATS: [&str; 3] = ["qcow2", "raw", "vmdk"];
