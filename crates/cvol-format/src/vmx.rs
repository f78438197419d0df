//! `.vmx` VM configuration files: `key = "value"` lines, as VMware writes them.
//!
//! Keys are case-insensitive (as VMware treats them). Values are quoted; VMware escapes a
//! byte that cannot stand in a quoted value as `|XX` (two hex digits), so `"` is `|22`
//! and `|` is `|7C`. Comments, blank lines, unknown keys and their order are kept.

use crate::error::{check_text, raw_lines, FormatError};

/// Largest .vmx accepted; real ones are a few KiB.
const MAX_VMX_LEN: usize = 1 << 20;

/// A parsed `.vmx` file that writes itself back unchanged except for edited keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmx {
    lines: Vec<VmxLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VmxLine {
    raw: String,
    entry: Option<(String, String)>,
}

impl Vmx {
    /// An empty configuration.
    pub fn new() -> Self {
        Self { lines: Vec::new() }
    }

    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, FormatError> {
        check_text(file, text, MAX_VMX_LEN)?;
        let lines = raw_lines(text)
            .enumerate()
            .map(|(i, raw)| {
                let entry =
                    parse_line(raw).map_err(|msg| FormatError::new(file, Some(i + 1), msg))?;
                Ok(VmxLine {
                    raw: raw.to_string(),
                    entry,
                })
            })
            .collect::<Result<_, FormatError>>()?;
        Ok(Self { lines })
    }

    /// The value of `key` (the last one, if it is repeated, as VMware reads it).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries()
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
            .last()
    }

    /// All entries in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines
            .iter()
            .filter_map(|l| l.entry.as_ref().map(|(k, v)| (k.as_str(), v.as_str())))
    }

    /// Sets `key` to `value`: rewrites the line that holds it (the last one if repeated),
    /// or appends a line.
    pub fn set(&mut self, key: &str, value: &str) {
        let raw = format!("{key} = \"{}\"\n", encode_value(value));
        let entry = Some((key.to_string(), value.to_string()));
        let existing = self.lines.iter_mut().rev().find(|l| {
            l.entry
                .as_ref()
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(key))
        });
        match existing {
            Some(line) => {
                let ending = if line.raw.ends_with("\r\n") {
                    "\r\n"
                } else {
                    "\n"
                };
                line.raw = format!("{}{ending}", raw.trim_end_matches('\n'));
                line.entry = entry;
            }
            None => {
                if let Some(last) = self.lines.last_mut() {
                    if !last.raw.ends_with('\n') {
                        last.raw.push('\n');
                    }
                }
                self.lines.push(VmxLine { raw, entry });
            }
        }
    }

    /// Removes every line that sets `key`.
    pub fn remove(&mut self, key: &str) {
        self.lines.retain(|l| {
            !l.entry
                .as_ref()
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(key))
        });
    }
}

impl Default for Vmx {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for Vmx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lines.iter().try_for_each(|l| f.write_str(&l.raw))
    }
}

fn parse_line(raw: &str) -> Result<Option<(String, String)>, String> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let (key, rest) = line
        .split_once('=')
        .ok_or_else(|| format!("expected 'key = \"value\"', found {line:?}"))?;
    let key = key.trim();
    if key.is_empty() || key.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(format!("invalid key {key:?}"));
    }
    let rest = rest.trim();
    let value = match rest.strip_prefix('"') {
        Some(quoted) => {
            let end = quoted
                .find('"')
                .ok_or_else(|| format!("{key}: value has no closing quote"))?;
            let trailing = quoted[end + 1..].trim();
            if !trailing.is_empty() && !trailing.starts_with('#') {
                return Err(format!("{key}: unexpected {trailing:?} after the value"));
            }
            decode_value(&quoted[..end]).map_err(|e| format!("{key}: {e}"))?
        }
        // VMware itself always quotes; hand-edited files sometimes do not.
        None => decode_value(rest).map_err(|e| format!("{key}: {e}"))?,
    };
    Ok(Some((key.to_string(), value)))
}

fn decode_value(text: &str) -> Result<String, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'|' {
            let hex = tail
                .get(..2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("'|' must be followed by two hex digits")?;
            bytes.push(hex);
            rest = &tail[2..];
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).map_err(|_| "escaped bytes are not UTF-8".to_string())
}

fn encode_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if c == '"' || c == '|' || c.is_ascii_control() {
            out.push_str(&format!("|{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SAMPLE: &str = "\
.encoding = \"UTF-8\"
# written by hand
config.version = \"8\"
displayName = \"web |22prod|22\"

memSize = \"2048\"\r
scsi0:0.fileName = \"web.vmdk\"
unknown.future.key = \"x\"";

    #[test]
    fn round_trips_and_reads() {
        let vmx = Vmx::parse(SAMPLE, "web/web.vmx").unwrap();
        assert_eq!(vmx.to_string(), SAMPLE);
        assert_eq!(vmx.get("displayname"), Some("web \"prod\""));
        assert_eq!(vmx.get("memSize"), Some("2048"));
        assert_eq!(vmx.get("missing"), None);
    }

    #[test]
    fn edits_touch_only_their_line() {
        let mut vmx = Vmx::parse(SAMPLE, "web.vmx").unwrap();
        vmx.set("MEMSIZE", "4096");
        vmx.set("numvcpus", "2");
        let text = vmx.to_string();
        assert!(text.contains("MEMSIZE = \"4096\"\r\n"));
        assert!(text.ends_with("unknown.future.key = \"x\"\nnumvcpus = \"2\"\n"));
        assert_eq!(
            text.replace("MEMSIZE = \"4096\"", "memSize = \"2048\"")
                .replace("numvcpus = \"2\"\n", "")
                .trim_end(),
            SAMPLE
        );
        vmx.remove("numVCPUs");
        assert_eq!(vmx.get("numvcpus"), None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = Vmx::parse("a = \"1\"\nbroken line\n", "vm1/vm1.vmx").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.to_string().starts_with("vm1/vm1.vmx:2: "), "{err}");
        let err = Vmx::parse("a = \"1\nb = \"2\"\n", "x.vmx").unwrap_err();
        assert!(
            err.to_string()
                .contains("x.vmx:1: a: value has no closing quote"),
            "{err}"
        );
        assert!(Vmx::parse("a = \"|zz\"", "x.vmx").is_err());
        assert!(Vmx::parse("a = \"1\" junk", "x.vmx").is_err());
        assert!(Vmx::parse("= \"1\"", "x.vmx").is_err());
        assert!(Vmx::parse("a = \"\0\"", "x.vmx").is_err());
    }

    proptest! {
        #[test]
        fn any_value_survives_set_and_parse(value in "\\PC*", key in "[a-zA-Z][a-zA-Z0-9.:_]{0,20}") {
            let mut vmx = Vmx::new();
            vmx.set(&key, &value);
            let reparsed = Vmx::parse(&vmx.to_string(), "p.vmx").unwrap();
            prop_assert_eq!(reparsed.get(&key), Some(value.as_str()));
        }

        #[test]
        fn parsed_files_write_back_unchanged(
            lines in proptest::collection::vec(
                prop_oneof![
                    "[a-z.:0-9]{1,12} = \"[^\"|\\n\\r\\x00]{0,16}\"",
                    "#[^\\n\\x00]{0,20}",
                    "[ \\t]{0,3}",
                ],
                0..20,
            ),
            crlf in any::<bool>(),
        ) {
            let text = lines.join(if crlf { "\r\n" } else { "\n" });
            let vmx = Vmx::parse(&text, "p.vmx").unwrap();
            prop_assert_eq!(vmx.to_string(), text);
        }
    }
}
