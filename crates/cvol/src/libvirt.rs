//! A libvirt domain for a VM, so that hosts managed by libvirt (virsh, virt-manager,
//! OpenStack Nova, Proxmox-like stacks) run cVol VMs: its memory, CPUs, directly booted
//! kernel and disks, reached through the file system container or over NBD.

use std::path::Path;

use anyhow::bail;
use cvol_datastore::VmInfo;
use quick_xml::escape::escape;

use crate::agent::qemu::kvm_usable;

/// How the domain's QEMU reaches the disks.
#[derive(Debug, Clone, Copy)]
pub enum DomainDisks<'a> {
    /// The disks' flat extents in the container mounted here, as raw files.
    Container(&'a Path),
    /// NBD exports `VM/DISK` on this unix socket.
    Nbd(&'a Path),
}

/// The domain XML of `vm`: `accel` is `auto` (KVM where /dev/kvm works, else TCG),
/// `kvm` or `tcg`.
pub fn domain_xml(vm: &VmInfo, disks: DomainDisks, accel: &str) -> anyhow::Result<String> {
    if vm.vmx_disks.is_empty() {
        bail!("VM {} has no disk in its .vmx to boot from", vm.name);
    }
    vm.check_startable()?;
    let kind = match accel {
        "kvm" => "kvm",
        "tcg" => "qemu",
        _ if kvm_usable() => "kvm",
        _ => "qemu",
    };
    let e = |s: &str| escape(s).into_owned();
    let mut xml = format!("<domain type='{kind}'>\n  <name>{}</name>\n", e(&vm.name));
    if let Some(uuid) = &vm.uuid {
        xml += &format!("  <uuid>{uuid}</uuid>\n");
    }
    xml += &format!(
        "  <memory unit='MiB'>{}</memory>\n  <vcpu>{}</vcpu>\n",
        vm.memory_mib.unwrap_or(1024),
        vm.cpus.unwrap_or(1)
    );
    xml += "  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n";
    for (key, element) in [
        ("cvol.kernel", "kernel"),
        ("cvol.initrd", "initrd"),
        ("cvol.cmdline", "cmdline"),
    ] {
        if let Some(value) = vm.options.get(key) {
            xml += &format!("    <{element}>{}</{element}>\n", e(value));
        }
    }
    xml += "    <boot dev='hd'/>\n  </os>\n  <features><acpi/></features>\n";
    xml += "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n";
    xml += "  <on_crash>destroy</on_crash>\n  <devices>\n";
    for (i, file) in vm.vmx_disks.iter().enumerate() {
        let disk = file.strip_suffix(".vmdk").unwrap_or(file);
        let target = format!("vd{}", (b'a' + i as u8) as char);
        let source = match disks {
            DomainDisks::Container(mnt) => {
                let flat = mnt.join(&vm.name).join(format!("{disk}-flat.vmdk"));
                format!(
                    "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='none' io='native'/>\n      <source file='{}'/>\n",
                    e(&flat.display().to_string())
                )
            }
            DomainDisks::Nbd(socket) => format!(
                "    <disk type='network' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source protocol='nbd' name='{}/{}'>\n        <host transport='unix' socket='{}'/>\n      </source>\n",
                e(&vm.name),
                e(disk),
                e(&socket.display().to_string())
            ),
        };
        xml += &source;
        xml += &format!("      <target dev='{target}' bus='virtio'/>\n    </disk>\n");
    }
    xml += "    <serial type='pty'/>\n    <console type='pty'/>\n";
    xml += "  </devices>\n</domain>\n";
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> VmInfo {
        VmInfo {
            name: "web&co".into(),
            vmx: Some("web&co/web&co.vmx".into()),
            memory_mib: Some(512),
            cpus: Some(2),
            vmx_disks: vec!["web&co.vmdk".into(), "data.vmdk".into()],
            disks: Vec::new(),
            problems: Vec::new(),
            options: [
                ("cvol.kernel".to_string(), "/boot/vmlinuz".to_string()),
                ("cvol.cmdline".to_string(), "console=ttyS0 a<b".to_string()),
            ]
            .into(),
            uuid: Some("564d0000-0000-0000-0000-000000000001".into()),
        }
    }

    #[test]
    fn a_domain_has_the_vms_settings_and_disks_in_order() {
        let xml = domain_xml(&vm(), DomainDisks::Nbd(Path::new("/run/nbd.sock")), "tcg").unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let text = |name: &str| {
            doc.descendants()
                .find(|n| n.has_tag_name(name))
                .and_then(|n| n.text())
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(doc.root_element().attribute("type"), Some("qemu"));
        assert_eq!(text("name"), "web&co");
        assert_eq!(text("uuid"), "564d0000-0000-0000-0000-000000000001");
        assert_eq!(text("memory"), "512");
        assert_eq!(text("vcpu"), "2");
        assert_eq!(text("kernel"), "/boot/vmlinuz");
        assert_eq!(text("cmdline"), "console=ttyS0 a<b");
        let sources: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("source"))
            .map(|n| n.attribute("name").unwrap().to_string())
            .collect();
        assert_eq!(sources, ["web&co/web&co", "web&co/data"]);
        let targets: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("target"))
            .map(|n| n.attribute("dev").unwrap().to_string())
            .collect();
        assert_eq!(targets, ["vda", "vdb"]);

        let xml = domain_xml(&vm(), DomainDisks::Container(Path::new("/mnt/ds")), "kvm").unwrap();
        let doc = roxmltree::Document::parse(&xml).unwrap();
        assert_eq!(doc.root_element().attribute("type"), Some("kvm"));
        let files: Vec<_> = doc
            .descendants()
            .filter(|n| n.has_tag_name("source"))
            .map(|n| n.attribute("file").unwrap().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/mnt/ds/web&co/web&co-flat.vmdk",
                "/mnt/ds/web&co/data-flat.vmdk"
            ]
        );
    }

    #[test]
    fn templates_and_diskless_vms_get_no_domain() {
        let mut template = vm();
        template
            .options
            .insert("cvol.template".into(), "TRUE".into());
        let err = domain_xml(&template, DomainDisks::Nbd(Path::new("/s")), "tcg").unwrap_err();
        assert!(err.to_string().contains("is a template"), "{err}");
        let mut empty = vm();
        empty.vmx_disks.clear();
        let err = domain_xml(&empty, DomainDisks::Nbd(Path::new("/s")), "tcg").unwrap_err();
        assert!(err.to_string().contains("has no disk"), "{err}");
    }
}
