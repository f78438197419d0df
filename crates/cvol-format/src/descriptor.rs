//! VMDK text descriptors (`<disk>.vmdk`), and the cVol view of one (`CvolDisk`).
//!
//! The grammar follows VMware's "Virtual Disk Format 5.0" and what QEMU's vmdk driver
//! reads: comment lines, `key=value` header lines (`version`, `CID`, `parentCID`,
//! `createType`), extent lines (`RW 131072 VMFS "disk-flat.vmdk"`) and disk database lines
//! (`ddb.key = "value"`). Unknown lines of those shapes are kept verbatim.

use std::fmt;

use uuid::Uuid;

use crate::error::{check_text, raw_lines, FormatError};
use crate::ids::{ProviderId, VolumeId};
use crate::names::DiskName;
use crate::size::SECTOR_SIZE;

/// Largest descriptor accepted; QEMU refuses text descriptors over 10 MiB, real ones are
/// under 1 KiB, and anything big is a binary file opened by mistake.
const MAX_DESCRIPTOR_LEN: usize = 64 << 10;

/// Disk database key naming the cVol (datastore uuid) that owns the disk.
pub const DDB_DATASTORE: &str = "ddb.cvol.datastore";
/// Disk database key naming the provider that stores the disk.
pub const DDB_PROVIDER: &str = "ddb.cvol.provider";
/// Disk database key naming the volume (object instance) inside the provider.
pub const DDB_OBJECT: &str = "ddb.cvol.object";
/// Disk database key holding the disk's own uuid.
pub const DDB_UUID: &str = "ddb.uuid";

/// Who may access an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

impl Access {
    fn parse(token: &str) -> Option<Self> {
        match token {
            "RW" => Some(Self::ReadWrite),
            "RDONLY" => Some(Self::ReadOnly),
            "NOACCESS" => Some(Self::NoAccess),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "RW",
            Self::ReadOnly => "RDONLY",
            Self::NoAccess => "NOACCESS",
        }
    }
}

/// One extent line: `ACCESS SECTORS TYPE "FILE" [OFFSET]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Access mode.
    pub access: Access,
    /// Length in 512-byte sectors.
    pub sectors: u64,
    /// Extent type: `VMFS`, `FLAT`, `SPARSE`, `ZERO`, ….
    pub kind: String,
    /// The extent's file name, relative to the descriptor.
    pub file: String,
    /// Offset in sectors into the file, for `FLAT` extents.
    pub offset: Option<u64>,
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} \"{}\"",
            self.access.as_str(),
            self.sectors,
            self.kind,
            self.file
        )?;
        if let Some(offset) = self.offset {
            write!(f, " {offset}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LineKind {
    Trivia,
    Header { key: String, value: String },
    Extent(Extent),
    Ddb { key: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    raw: String,
    kind: LineKind,
}

/// A parsed VMDK text descriptor that writes itself back unchanged except for the lines
/// an edit changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    lines: Vec<Line>,
    /// What follows the text: QEMU rewrites a descriptor (to update `CID` on the first
    /// write) as a C string in a buffer of the file's length rounded up to a sector, so
    /// the text ends at a NUL and is padded with NULs; when the new `CID` has fewer hex
    /// digits than the old one, the last bytes of the old text stay behind that NUL.
    /// Kept so the file round-trips.
    tail: String,
}

/// How many bytes of an older text QEMU can leave after the terminating NUL: a `CID` of
/// 8 hex digits rewritten as one of 1.
const MAX_STALE_BYTES: usize = 7;

impl Descriptor {
    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, FormatError> {
        let (body, tail) = split_qemu_tail(text);
        check_text(file, body, MAX_DESCRIPTOR_LEN)?;
        let lines = raw_lines(body)
            .enumerate()
            .map(|(i, raw)| {
                let kind =
                    parse_line(raw).map_err(|msg| FormatError::new(file, Some(i + 1), msg))?;
                Ok(Line {
                    raw: raw.to_string(),
                    kind,
                })
            })
            .collect::<Result<Vec<_>, FormatError>>()?;
        let descriptor = Self {
            lines,
            tail: tail.to_string(),
        };
        if descriptor.header("createType").is_none() {
            return Err(FormatError::new(
                file,
                None,
                "createType: missing; this is not a VMDK text descriptor",
            ));
        }
        Ok(descriptor)
    }

    /// The value of a header line such as `version` or `createType`, unquoted.
    pub fn header(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match &l.kind {
            LineKind::Header { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// The value of a disk database key such as `ddb.uuid`, unquoted.
    pub fn ddb(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match &l.kind {
            LineKind::Ddb { key: k, value } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// The extents, in file order.
    pub fn extents(&self) -> impl Iterator<Item = &Extent> {
        self.lines.iter().filter_map(|l| match &l.kind {
            LineKind::Extent(e) => Some(e),
            _ => None,
        })
    }

    /// The 1-based line of the first line matching `pred`, for error messages.
    fn line_of(&self, pred: impl Fn(&LineKind) -> bool) -> Option<usize> {
        self.lines.iter().position(|l| pred(&l.kind)).map(|i| i + 1)
    }

    /// Sets a disk database key, rewriting its line or appending one.
    pub fn set_ddb(&mut self, key: &str, value: &str) {
        let raw = format!("{key} = \"{value}\"");
        let kind = LineKind::Ddb {
            key: key.to_string(),
            value: value.to_string(),
        };
        self.replace_or_push(
            |k| matches!(k, LineKind::Ddb { key: k, .. } if k == key),
            raw,
            kind,
        );
    }

    /// Sets a header key (`CID`, …), rewriting its line or appending one.
    pub fn set_header(&mut self, key: &str, value: &str) {
        let raw = format!("{key}={value}");
        let kind = LineKind::Header {
            key: key.to_string(),
            value: value.to_string(),
        };
        self.replace_or_push(
            |k| matches!(k, LineKind::Header { key: k, .. } if k == key),
            raw,
            kind,
        );
    }

    /// Replaces the only extent line. Callers edit single-extent descriptors only.
    pub fn set_extent(&mut self, extent: Extent) {
        let raw = extent.to_string();
        self.replace_or_push(
            |k| matches!(k, LineKind::Extent(_)),
            raw,
            LineKind::Extent(extent),
        );
    }

    fn replace_or_push(&mut self, is_it: impl Fn(&LineKind) -> bool, raw: String, kind: LineKind) {
        match self.lines.iter_mut().find(|l| is_it(&l.kind)) {
            Some(line) => {
                let ending = &line.raw[line.raw.trim_end_matches(['\r', '\n']).len()..];
                line.raw = format!("{raw}{ending}");
                line.kind = kind;
            }
            None => {
                if let Some(last) = self.lines.last_mut() {
                    if !last.raw.ends_with('\n') {
                        last.raw.push('\n');
                    }
                }
                self.lines.push(Line {
                    raw: format!("{raw}\n"),
                    kind,
                });
            }
        }
    }
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lines.iter().try_for_each(|l| f.write_str(&l.raw))?;
        f.write_str(&self.tail)
    }
}

/// Splits `text` into the descriptor QEMU reads and the tail it leaves behind (see
/// [`Descriptor::tail`]). A NUL followed by more than that is left in the text, where
/// [`check_text`] refuses it: it is not a descriptor QEMU wrote.
fn split_qemu_tail(text: &str) -> (&str, &str) {
    let Some(end) = text.find('\0') else {
        return (text, "");
    };
    let (body, tail) = text.split_at(end);
    let padding = |skip: usize| tail.bytes().skip(skip).all(|b| b == 0);
    // Stale bytes only ever follow a whole text: QEMU's text ends with its last line's
    // newline.
    if padding(0) || (body.ends_with('\n') && padding(1 + MAX_STALE_BYTES)) {
        (body, tail)
    } else {
        (text, "")
    }
}

fn unquote(value: &str) -> Result<&str, String> {
    let value = value.trim();
    match value.strip_prefix('"') {
        Some(inner) => inner
            .strip_suffix('"')
            .filter(|v| !v.contains('"'))
            .ok_or_else(|| format!("unbalanced quotes in {value}")),
        None => Ok(value),
    }
}

fn parse_line(raw: &str) -> Result<LineKind, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(LineKind::Trivia);
    }
    let first = line.split_whitespace().next().unwrap_or_default();
    if let Some(access) = Access::parse(first) {
        return parse_extent(access, line).map(LineKind::Extent);
    }
    let (key, value) = line
        .split_once('=')
        .ok_or_else(|| format!("expected 'key=value', an extent or a comment, found {line:?}"))?;
    let key = key.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(format!("invalid key {key:?}"));
    }
    let value = unquote(value)
        .map_err(|e| format!("{key}: {e}"))?
        .to_string();
    Ok(if key.starts_with("ddb.") {
        LineKind::Ddb {
            key: key.to_string(),
            value,
        }
    } else {
        LineKind::Header {
            key: key.to_string(),
            value,
        }
    })
}

fn parse_extent(access: Access, line: &str) -> Result<Extent, String> {
    let rest = line[access.as_str().len()..].trim_start();
    let (sectors, rest) = rest
        .split_once(char::is_whitespace)
        .ok_or("extent: missing size and type")?;
    let sectors: u64 = sectors
        .parse()
        .map_err(|_| format!("extent: size {sectors:?} is not a number of sectors"))?;
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if kind.is_empty() {
        return Err("extent: missing type".into());
    }
    let rest = rest.trim_start();
    let quoted = rest
        .strip_prefix('"')
        .ok_or("extent: the file name must be quoted")?;
    let end = quoted
        .find('"')
        .ok_or("extent: the file name has no closing quote")?;
    let file = &quoted[..end];
    if file.is_empty() {
        return Err("extent: empty file name".into());
    }
    let trailing = quoted[end + 1..].trim();
    let offset = if trailing.is_empty() {
        None
    } else {
        Some(
            trailing
                .parse()
                .map_err(|_| format!("extent: offset {trailing:?} is not a number"))?,
        )
    };
    Ok(Extent {
        access,
        sectors,
        kind: kind.to_string(),
        file: file.to_string(),
        offset,
    })
}

/// What cvol needs to know of a disk, read from (or written as) its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CvolDisk {
    /// The cVol (datastore) uuid the disk belongs to.
    pub datastore: Uuid,
    /// The provider that stores the volume.
    pub provider: ProviderId,
    /// The volume inside that provider.
    pub object: VolumeId,
    /// The disk's own uuid.
    pub disk_uuid: Uuid,
    /// Size in bytes, a multiple of 512.
    pub size: u64,
    /// The extent's file name, `<disk>-flat.vmdk`: the data plane's file.
    pub extent_file: String,
}

impl CvolDisk {
    /// Reads the cVol fields of a descriptor. `file` names it in errors, each of which
    /// names the bad field.
    pub fn from_descriptor(descriptor: &Descriptor, file: &str) -> Result<Self, FormatError> {
        let extents: Vec<&Extent> = descriptor.extents().collect();
        let extent = match extents.as_slice() {
            [one] => *one,
            [] => {
                return Err(FormatError::new(
                    file,
                    None,
                    "extent: missing; a cVol disk has exactly one",
                ))
            }
            _ => {
                let line = descriptor.line_of(|k| matches!(k, LineKind::Extent(_)));
                return Err(FormatError::new(
                    file,
                    line,
                    format!(
                        "extent: {} extents; a cVol disk has exactly one",
                        extents.len()
                    ),
                ));
            }
        };
        let extent_line = descriptor.line_of(|k| matches!(k, LineKind::Extent(_)));
        if !matches!(extent.kind.as_str(), "VMFS" | "FLAT") || extent.offset.unwrap_or(0) != 0 {
            return Err(FormatError::new(
                file,
                extent_line,
                format!(
                    "extent: type {} (offset {:?}) is not a flat extent at offset 0",
                    extent.kind, extent.offset
                ),
            ));
        }
        if extent.sectors == 0 {
            return Err(FormatError::new(
                file,
                extent_line,
                "extent: size is 0 sectors",
            ));
        }
        if DiskName::from_extent_file(&extent.file).is_none() {
            return Err(FormatError::new(
                file,
                extent_line,
                format!(
                    "extent: file {:?} is not a '<disk>-flat.vmdk' name",
                    extent.file
                ),
            ));
        }
        let size = extent
            .sectors
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| FormatError::new(file, extent_line, "extent: size overflows"))?;
        let field = |key: &str| -> Result<(&str, Option<usize>), FormatError> {
            let line =
                descriptor.line_of(|k| matches!(k, LineKind::Ddb { key: k, .. } if k == key));
            descriptor
                .ddb(key)
                .map(|v| (v, line))
                .ok_or_else(|| FormatError::new(file, None, format!("{key}: missing")))
        };
        let parse_uuid = |key: &str| -> Result<Uuid, FormatError> {
            let (value, line) = field(key)?;
            Uuid::parse_str(value).map_err(|_| {
                FormatError::new(file, line, format!("{key}: {value:?} is not a uuid"))
            })
        };
        let datastore = parse_uuid(DDB_DATASTORE)?;
        let (provider, provider_line) = field(DDB_PROVIDER)?;
        let provider = ProviderId::new(provider)
            .map_err(|e| FormatError::new(file, provider_line, format!("{DDB_PROVIDER}: {e}")))?;
        let (object, object_line) = field(DDB_OBJECT)?;
        let object = VolumeId::new(object)
            .map_err(|e| FormatError::new(file, object_line, format!("{DDB_OBJECT}: {e}")))?;
        Ok(Self {
            datastore,
            provider,
            object,
            disk_uuid: parse_uuid(DDB_UUID)?,
            size,
            extent_file: extent.file.clone(),
        })
    }

    /// The 1-based line holding `key` in `descriptor`, for errors raised by callers
    /// that check a field against the datastore (a foreign uuid, an unknown provider).
    pub fn line_of_field(descriptor: &Descriptor, key: &str) -> Option<usize> {
        descriptor.line_of(|k| matches!(k, LineKind::Ddb { key: k, .. } if k == key))
    }

    /// A new descriptor for this disk, in the shape VMware writes for a VMFS flat disk.
    pub fn to_descriptor(&self) -> Descriptor {
        let sectors = self.size / SECTOR_SIZE;
        // lsilogic geometry: 255 heads, 63 sectors a track; cylinders capped as VMware does.
        let cylinders = (sectors / (255 * 63)).min(65535);
        let text = format!(
            "# Disk DescriptorFile\n\
             version=1\n\
             encoding=\"UTF-8\"\n\
             CID={cid:08x}\n\
             parentCID=ffffffff\n\
             createType=\"vmfs\"\n\
             \n\
             # Extent description\n\
             RW {sectors} VMFS \"{extent}\"\n\
             \n\
             # The Disk Data Base\n\
             #DDB\n\
             \n\
             ddb.adapterType = \"lsilogic\"\n\
             ddb.geometry.cylinders = \"{cylinders}\"\n\
             ddb.geometry.heads = \"255\"\n\
             ddb.geometry.sectors = \"63\"\n\
             ddb.virtualHWVersion = \"19\"\n\
             {DDB_DATASTORE} = \"{datastore}\"\n\
             {DDB_PROVIDER} = \"{provider}\"\n\
             {DDB_OBJECT} = \"{object}\"\n\
             {DDB_UUID} = \"{uuid}\"\n",
            cid = cid_of(&self.disk_uuid),
            extent = self.extent_file,
            datastore = self.datastore,
            provider = self.provider,
            object = self.object,
            uuid = self.disk_uuid,
        );
        Descriptor::parse(&text, "<generated>").expect("generated descriptors parse")
    }

    /// Rewrites the cVol fields of an existing descriptor, keeping every other line.
    pub fn apply_to(&self, descriptor: &mut Descriptor) {
        let mut extent = descriptor.extents().next().cloned().unwrap_or(Extent {
            access: Access::ReadWrite,
            sectors: 0,
            kind: "VMFS".into(),
            file: String::new(),
            offset: None,
        });
        extent.sectors = self.size / SECTOR_SIZE;
        extent.file = self.extent_file.clone();
        descriptor.set_extent(extent);
        descriptor.set_header("CID", &format!("{:08x}", cid_of(&self.disk_uuid)));
        descriptor.set_ddb(DDB_DATASTORE, &self.datastore.to_string());
        descriptor.set_ddb(DDB_PROVIDER, self.provider.as_str());
        descriptor.set_ddb(DDB_OBJECT, self.object.as_str());
        descriptor.set_ddb(DDB_UUID, &self.disk_uuid.to_string());
    }
}

/// A content id for the descriptor: any 32-bit value that differs between disks will do
/// (QEMU and VMware compare it with a child's parentCID, which flat disks do not have).
fn cid_of(uuid: &Uuid) -> u32 {
    let b = uuid.as_bytes();
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_disk() -> CvolDisk {
        CvolDisk {
            datastore: Uuid::new_v4(),
            provider: ProviderId::new("pool").unwrap(),
            object: VolumeId::generate(),
            disk_uuid: Uuid::new_v4(),
            size: 64 << 20,
            extent_file: "demo-flat.vmdk".into(),
        }
    }

    #[test]
    fn generated_descriptor_reads_back() {
        let disk = sample_disk();
        let text = disk.to_descriptor().to_string();
        assert!(text.starts_with("# Disk DescriptorFile\nversion=1\n"));
        assert!(text.contains("RW 131072 VMFS \"demo-flat.vmdk\"\n"));
        let parsed = Descriptor::parse(&text, "demo/demo.vmdk").unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(
            CvolDisk::from_descriptor(&parsed, "demo/demo.vmdk").unwrap(),
            disk
        );
    }

    #[test]
    fn qemu_style_descriptor_is_read() {
        let text = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n\
            createType=\"monolithicFlat\"\n\n# Extent description\nRW 2097152 FLAT \"new-flat.vmdk\" 0\n\n\
            # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2080\"\n";
        let d = Descriptor::parse(text, "vm1/new.vmdk").unwrap();
        assert_eq!(d.to_string(), text);
        assert_eq!(d.header("createType"), Some("monolithicFlat"));
        let extent = d.extents().next().unwrap();
        assert_eq!((extent.sectors, extent.offset), (2097152, Some(0)));
        let err = CvolDisk::from_descriptor(&d, "vm1/new.vmdk").unwrap_err();
        assert!(
            err.to_string().contains("ddb.cvol.datastore: missing"),
            "{err}"
        );
        let mut d = d;
        let disk = CvolDisk {
            extent_file: "new-flat.vmdk".into(),
            size: 2097152 * 512,
            ..sample_disk()
        };
        disk.apply_to(&mut d);
        assert_eq!(CvolDisk::from_descriptor(&d, "x").unwrap(), disk);
        assert!(d
            .to_string()
            .contains("ddb.geometry.cylinders = \"2080\"\n"));
    }

    #[test]
    fn nul_padding_written_by_qemu_round_trips() {
        let text = format!("{}{}", sample_disk().to_descriptor(), "\0".repeat(400));
        let d = Descriptor::parse(&text, "demo.vmdk").unwrap();
        assert_eq!(d.to_string(), text);
        assert!(CvolDisk::from_descriptor(&d, "demo.vmdk").is_ok());
        let err =
            Descriptor::parse(&text.replacen("version", "ver\0sion", 1), "demo.vmdk").unwrap_err();
        assert_eq!(err.line, Some(2), "a NUL inside the text is still refused");
    }

    #[test]
    fn stale_bytes_qemu_leaves_after_a_shorter_cid_round_trip() {
        // QEMU rewrote an 8-digit CID as `CID=84cbfe`: the text got two bytes shorter and
        // its old last byte stayed behind the NUL that ends the new text.
        let text = sample_disk().to_descriptor().to_string();
        let cid = text.find("\nCID=").unwrap() + "\nCID=".len();
        assert_eq!(text[cid..].find('\n'), Some(8));
        let shorter = format!("{}84cbfe{}", &text[..cid], &text[cid + 8..]);
        let qemu = format!("{shorter}\0\n{}", "\0".repeat(400));
        let d = Descriptor::parse(&qemu, "demo.vmdk").unwrap();
        assert_eq!(d.to_string(), qemu);
        assert_eq!(d.header("CID"), Some("84cbfe"));
        assert!(CvolDisk::from_descriptor(&d, "demo.vmdk").is_ok());

        let err = Descriptor::parse(&format!("{text}\0binary!!{}", "\0".repeat(8)), "demo.vmdk")
            .unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let good = sample_disk().to_descriptor().to_string();
        let cases = [
            (
                good.replace("RW 131072 VMFS", "RW lots VMFS"),
                "demo.vmdk:9: extent: size \"lots\"",
            ),
            (
                good.replace("ddb.cvol.object = \"vol-", "ddb.cvol.object = \"bad-"),
                "demo.vmdk:21: ddb.cvol.object: invalid volume id",
            ),
            (
                good.replace("ddb.cvol.provider", "ddb.cvol.providr"),
                "demo.vmdk: ddb.cvol.provider: missing",
            ),
            (
                good.replace("ddb.uuid = \"", "ddb.uuid = \"zz"),
                "demo.vmdk:22: ddb.uuid: \"zz",
            ),
            (
                good.replace("createType=\"vmfs\"\n", ""),
                "demo.vmdk: createType: missing",
            ),
            (
                good.replace("\"demo-flat.vmdk\"", "\"../../etc/passwd\""),
                "demo.vmdk:9: extent: file \"../../etc/passwd\"",
            ),
            (
                good.replace("# Extent description", "garbage here"),
                "demo.vmdk:8: expected 'key=value'",
            ),
            (
                format!("{good}RW 1 VMFS \"x-flat.vmdk\"\n"),
                "demo.vmdk:9: extent: 2 extents",
            ),
            (
                good[..good.find("RW ").unwrap()].to_string(),
                "demo.vmdk: extent: missing",
            ),
            (
                "KDMV\0\0\0\x01".to_string(),
                "demo.vmdk:1: contains a NUL byte",
            ),
        ];
        for (text, expected) in cases {
            let err = Descriptor::parse(&text, "demo.vmdk")
                .and_then(|d| CvolDisk::from_descriptor(&d, "demo.vmdk"))
                .unwrap_err();
            assert!(
                err.to_string().starts_with(expected),
                "got {err}, expected {expected}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsed_descriptors_write_back_unchanged(
            extra in proptest::collection::vec(
                prop_oneof![
                    "ddb\\.[a-z.]{1,12} = \"[^\"\\n\\r\\x00]{0,16}\"",
                    "#[^\\n\\x00]{0,20}",
                    "[A-Za-z]{1,8}=[0-9a-f]{1,8}",
                    " {0,3}",
                ],
                0..12,
            ),
            crlf in any::<bool>(),
        ) {
            let base = sample_disk().to_descriptor().to_string();
            let mut lines: Vec<String> = base.lines().map(String::from).collect();
            lines.extend(extra);
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let d = Descriptor::parse(&text, "p.vmdk").unwrap();
            prop_assert_eq!(d.to_string(), text);
        }

        #[test]
        fn any_disk_round_trips(size_sectors in 1u64..(1 << 40), ext in "[a-z][a-z0-9_]{0,30}") {
            let disk = CvolDisk { size: size_sectors * 512, extent_file: format!("{ext}-flat.vmdk"), ..sample_disk() };
            let text = disk.to_descriptor().to_string();
            let parsed = CvolDisk::from_descriptor(&Descriptor::parse(&text, "p").unwrap(), "p").unwrap();
            prop_assert_eq!(parsed, disk);
        }
    }
}
