//! `.cvol/datastore.toml`: what makes a share a cVol datastore.
//!
//! ```toml
//! uuid = "3b1f…"
//! name = "ds1"
//! format_version = 1
//!
//! [[providers]]          # the first one is the default
//! id = "pool"
//! kind = "file"
//! [providers.settings]
//! path = "/srv/cvol/pool"
//! ```
//! Parsed with `toml_edit` so that comments, order and unknown keys survive a rewrite.

use std::collections::BTreeMap;
use std::ops::Range;

use toml_edit::{ArrayOfTables, DocumentMut, Item, Table};
use uuid::Uuid;

use crate::error::{check_text, FormatError};
use crate::ids::ProviderId;

/// The on-share format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAX_CONFIG_LEN: usize = 1 << 20;

/// One provider of the datastore, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Its id, unique in the datastore; descriptors name it.
    pub id: ProviderId,
    /// Its kind, e.g. `file`.
    pub kind: String,
    /// Kind-specific settings, e.g. `path` for `file`.
    pub settings: BTreeMap<String, String>,
}

/// A parsed `datastore.toml`.
#[derive(Debug, Clone)]
pub struct DatastoreConfig {
    doc: DocumentMut,
    /// The cVol's uuid; every descriptor of the datastore carries it.
    pub uuid: Uuid,
    /// A human name.
    pub name: String,
    /// The on-share format version.
    pub format_version: u32,
    /// The providers; the first is the default.
    pub providers: Vec<ProviderConfig>,
}

impl DatastoreConfig {
    /// A new configuration.
    pub fn new(uuid: Uuid, name: &str, providers: Vec<ProviderConfig>) -> Self {
        let mut doc = DocumentMut::new();
        doc.decor_mut()
            .set_prefix("# cVol datastore: written by cvol. Unknown keys are kept.\n");
        doc["uuid"] = toml_edit::value(uuid.to_string());
        doc["name"] = toml_edit::value(name);
        doc["format_version"] = toml_edit::value(i64::from(FORMAT_VERSION));
        let mut array = ArrayOfTables::new();
        for p in &providers {
            let mut table = Table::new();
            table["id"] = toml_edit::value(p.id.as_str());
            table["kind"] = toml_edit::value(&p.kind);
            let mut settings = Table::new();
            for (k, v) in &p.settings {
                settings[k] = toml_edit::value(v);
            }
            table["settings"] = Item::Table(settings);
            array.push(table);
        }
        doc["providers"] = Item::ArrayOfTables(array);
        Self {
            doc,
            uuid,
            name: name.to_string(),
            format_version: FORMAT_VERSION,
            providers,
        }
    }

    /// Parses `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, FormatError> {
        check_text(file, text, MAX_CONFIG_LEN)?;
        let line_at =
            |span: Option<Range<usize>>| span.map(|s| text[..s.start].matches('\n').count() + 1);
        let spanned = toml_edit::Document::parse(text).map_err(|e| {
            FormatError::new(
                file,
                line_at(e.span()),
                e.message().trim_end().replace('\n', "; "),
            )
        })?;
        let root = spanned.as_table();
        let err = |item: Option<&Item>, msg: String| {
            FormatError::new(file, line_at(item.and_then(Item::span)), msg)
        };
        let string = |table: &Table, key: &str, ctx: &str| -> Result<String, FormatError> {
            let item = table.get(key);
            match item.and_then(Item::as_str) {
                Some(s) => Ok(s.to_string()),
                None if item.is_none() => Err(err(table.get(key), format!("{ctx}{key}: missing"))),
                None => Err(err(item, format!("{ctx}{key}: expected a string"))),
            }
        };

        let version_item = root.get("format_version");
        let format_version = match version_item.and_then(Item::as_integer) {
            Some(v) => u32::try_from(v)
                .map_err(|_| err(version_item, format!("format_version: {v} is out of range")))?,
            None => {
                return Err(err(
                    version_item,
                    "format_version: missing or not an integer".into(),
                ))
            }
        };
        if format_version != FORMAT_VERSION {
            return Err(err(
                version_item,
                format!("format_version: {format_version} is not supported by this cvol (it reads version {FORMAT_VERSION})"),
            ));
        }
        let uuid_text = string(root, "uuid", "")?;
        let uuid = Uuid::parse_str(&uuid_text).map_err(|_| {
            err(
                root.get("uuid"),
                format!("uuid: {uuid_text:?} is not a uuid"),
            )
        })?;
        let name = string(root, "name", "")?;

        let providers_item = root.get("providers");
        let tables = match providers_item {
            Some(Item::ArrayOfTables(a)) => a,
            Some(_) => {
                return Err(err(
                    providers_item,
                    "providers: expected [[providers]] tables".into(),
                ))
            }
            None => {
                return Err(err(
                    None,
                    "providers: missing; a datastore needs at least one".into(),
                ))
            }
        };
        let mut providers: Vec<ProviderConfig> = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            let ctx = format!("providers[{i}].");
            let at = |key: &str| table.get(key).or(providers_item);
            let id_text = string(table, "id", &ctx)?;
            let id =
                ProviderId::new(&id_text).map_err(|e| err(at("id"), format!("{ctx}id: {e}")))?;
            if providers.iter().any(|p| p.id == id) {
                return Err(err(at("id"), format!("{ctx}id: {id} is used twice")));
            }
            let kind = string(table, "kind", &ctx)?;
            let mut settings = BTreeMap::new();
            match table.get("settings") {
                None => {}
                Some(Item::Table(s)) => {
                    for (key, item) in s.iter() {
                        let value = item.as_str().ok_or_else(|| {
                            err(
                                Some(item),
                                format!("{ctx}settings.{key}: expected a string"),
                            )
                        })?;
                        settings.insert(key.to_string(), value.to_string());
                    }
                }
                Some(other) => {
                    return Err(err(Some(other), format!("{ctx}settings: expected a table")))
                }
            }
            providers.push(ProviderConfig { id, kind, settings });
        }
        if providers.is_empty() {
            return Err(err(
                providers_item,
                "providers: empty; a datastore needs at least one".into(),
            ));
        }
        Ok(Self {
            doc: spanned.into_mut(),
            uuid,
            name,
            format_version,
            providers,
        })
    }

    /// The provider with `id`.
    pub fn provider(&self, id: &ProviderId) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| &p.id == id)
    }

    /// The default provider: the first one.
    pub fn default_provider(&self) -> &ProviderConfig {
        &self.providers[0]
    }
}

impl std::fmt::Display for DatastoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> DatastoreConfig {
        let settings = BTreeMap::from([("path".to_string(), "/srv/pool".to_string())]);
        DatastoreConfig::new(
            Uuid::new_v4(),
            "ds1",
            vec![
                ProviderConfig {
                    id: ProviderId::new("pool").unwrap(),
                    kind: "file".into(),
                    settings,
                },
                ProviderConfig {
                    id: ProviderId::new("cold").unwrap(),
                    kind: "file".into(),
                    settings: BTreeMap::new(),
                },
            ],
        )
    }

    #[test]
    fn written_config_reads_back() {
        let config = sample();
        let text = config.to_string();
        let parsed = DatastoreConfig::parse(&text, ".cvol/datastore.toml").unwrap();
        assert_eq!(parsed.uuid, config.uuid);
        assert_eq!(parsed.name, "ds1");
        assert_eq!(parsed.providers, config.providers);
        assert_eq!(parsed.default_provider().id.as_str(), "pool");
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn unknown_content_survives() {
        let text = format!(
            "# my notes\n{}\n[future]\nkey = 1 # keep me\n",
            sample().to_string().replace(
                "name = \"ds1\"",
                "name = \"ds1\"   # inline\nfuture_key = [1, 2]"
            )
        );
        let parsed = DatastoreConfig::parse(&text, "d.toml").unwrap();
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let good = sample().to_string();
        let cases = [
            (
                good.replace("format_version = 1", "format_version = 2"),
                "d.toml:4: format_version: 2 is not supported",
            ),
            (
                good.replace("uuid = \"", "uuid = \"x"),
                "d.toml:2: uuid: \"x",
            ),
            (
                good.replace("id = \"cold\"", "id = \"../x\""),
                "d.toml:14: providers[1].id: invalid provider id",
            ),
            (
                good.replace("id = \"cold\"", "id = \"pool\""),
                "d.toml:14: providers[1].id: pool is used twice",
            ),
            (
                good.replace(
                    "kind = \"file\"\n\n[providers.settings]",
                    "\n[providers.settings]",
                ),
                "d.toml",
            ),
            (
                good.replace("path = \"/srv/pool\"", "path = 7"),
                "d.toml:11: providers[0].settings.path: expected a string",
            ),
            (good.replace("name = \"ds1\"", "name = \"ds1"), "d.toml:3:"),
            (
                good[..good.find("[[providers]]").unwrap()].to_string(),
                "d.toml: providers: missing",
            ),
        ];
        for (text, expected) in cases {
            let err = DatastoreConfig::parse(&text, "d.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(expected),
                "got {err:?}, expected {expected:?}\n{text}"
            );
            assert!(!err.contains('\n'), "{err:?} is not one line");
        }
    }

    proptest! {
        #[test]
        fn name_and_settings_round_trip(name in "\\PC{0,40}", path in "\\PC{0,60}") {
            let settings = BTreeMap::from([("path".to_string(), path)]);
            let providers = vec![ProviderConfig { id: ProviderId::new("p").unwrap(), kind: "file".into(), settings }];
            let config = DatastoreConfig::new(Uuid::new_v4(), &name, providers.clone());
            let parsed = DatastoreConfig::parse(&config.to_string(), "d.toml").unwrap();
            prop_assert_eq!(parsed.name, name);
            prop_assert_eq!(parsed.providers, providers);
        }
    }
}
