//! OVF packages: an `.ovf` descriptor (XML) beside its disks, or all of them in one
//! `.ova` (a tar archive). The descriptor's first virtual system says the name, CPUs,
//! memory and disks (in the order of its hardware items).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use roxmltree::{Document, Node};

use super::{ImportPlan, SourceDisk};

/// DMTF CIM resource types of the hardware items cvol reads.
const CPU: &str = "3";
const MEMORY: &str = "4";
const DISK: &str = "17";

/// The plan for an `.ova`: unpacked into a private directory that lives as long as the
/// plan.
pub fn plan_ova(path: &Path) -> anyhow::Result<ImportPlan> {
    let dir = tempfile::Builder::new()
        .prefix("cvol-ova.")
        .tempdir()
        .context("cannot make a directory to unpack into")?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut ovf = None;
    let entries = archive
        .entries()
        .with_context(|| format!("{}: not a tar archive (an OVA is one)", path.display()))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("{}: a damaged tar archive", path.display()))?;
        let name = entry.path()?.into_owned();
        // Members are plain names (OVF 1.x/2.x): nothing may land outside the directory.
        let Some(file_name) = name.file_name().filter(|_| name.components().count() == 1) else {
            bail!(
                "{}: member {} is not a plain file name; refused",
                path.display(),
                name.display()
            );
        };
        let target = dir.path().join(file_name);
        entry
            .unpack(&target)
            .with_context(|| format!("{}: cannot unpack {}", path.display(), name.display()))?;
        if target
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("ovf"))
        {
            ovf = Some(target);
        }
    }
    let Some(ovf) = ovf else {
        bail!("{}: no .ovf descriptor in this OVA", path.display());
    };
    let mut plan = plan_ovf(&ovf).with_context(|| format!("in {}", path.display()))?;
    plan._unpacked = Some(dir);
    Ok(plan)
}

/// The plan for an `.ovf` whose disks are beside it.
pub fn plan_ovf(path: &Path) -> anyhow::Result<ImportPlan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc = Document::parse(&text)
        .with_context(|| format!("{}: not an OVF descriptor (bad XML)", path.display()))?;
    let root = doc.root_element();
    let files: HashMap<&str, &str> = elements(root, "File")
        .filter_map(|f| Some((attr(f, "id")?, attr(f, "href")?)))
        .collect();
    let disk_files: HashMap<&str, &str> = elements(root, "Disk")
        .filter_map(|d| Some((attr(d, "diskId")?, attr(d, "fileRef")?)))
        .collect();
    let Some(system) = elements(root, "VirtualSystem").next() else {
        bail!(
            "{}: no VirtualSystem in this OVF descriptor",
            path.display()
        );
    };
    let folder = path.parent().unwrap_or(Path::new("."));
    let (mut memory_mib, mut cpus, mut disks) = (None, None, Vec::new());
    for item in elements(system, "Item") {
        let value = |name: &str| child_text(item, name);
        match value("ResourceType") {
            Some(CPU) => cpus = value("VirtualQuantity").and_then(|q| q.parse().ok()),
            Some(MEMORY) => {
                let quantity: Option<u64> = value("VirtualQuantity").and_then(|q| q.parse().ok());
                memory_mib = quantity.map(|q| q * mib_per_unit(value("AllocationUnits")));
            }
            Some(DISK) => {
                let Some(resource) = value("HostResource") else {
                    continue;
                };
                let id = resource.rsplit('/').next().unwrap_or(resource);
                let href = disk_files
                    .get(id)
                    .and_then(|file| files.get(file))
                    .with_context(|| {
                        format!("{}: disk {resource:?} names no file", path.display())
                    })?;
                let disk_path = folder.join(href);
                if Path::new(href).components().count() != 1 || !disk_path.is_file() {
                    bail!(
                        "{}: disk file {href:?} is not beside the descriptor",
                        path.display()
                    );
                }
                disks.push(SourceDisk {
                    name: None,
                    path: disk_path,
                });
            }
            _ => {}
        }
    }
    if disks.is_empty() {
        bail!("{}: the virtual system has no disks", path.display());
    }
    Ok(ImportPlan {
        name: child_text(system, "Name")
            .or_else(|| attr(system, "id"))
            .map(str::to_string),
        memory_mib,
        cpus,
        disks,
        _unpacked: None,
    })
}

/// MiB per allocation unit: `byte * 2^20` (the usual), `byte * 2^30`, `MegaBytes`…
fn mib_per_unit(units: Option<&str>) -> u64 {
    let units = units
        .unwrap_or("byte * 2^20")
        .replace(' ', "")
        .to_ascii_lowercase();
    match units.as_str() {
        "byte*2^30" | "gigabytes" | "gb" => 1024,
        _ => 1,
    }
}

/// Descendants of `node` named `name` in any namespace.
fn elements<'a>(node: Node<'a, 'a>, name: &'a str) -> impl Iterator<Item = Node<'a, 'a>> {
    node.descendants()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

/// Attribute `name` of `node`, in any namespace (OVF writes them `ovf:name`).
fn attr<'a>(node: Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

/// The text of `node`'s first child element named `name`.
fn child_text<'a>(node: Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_read() {
        assert_eq!(mib_per_unit(Some("byte * 2^20")), 1);
        assert_eq!(mib_per_unit(Some("byte * 2^30")), 1024);
        assert_eq!(mib_per_unit(None), 1);
    }
}
