//! Host records: `.cvol/hosts/<host-id>`, one per host agent, renewed like a lease.

use std::sync::Arc;

use cvol_datastore::layout;
use cvol_format::HostId;
use cvol_share::{Share, SharePath};
use serde::{Deserialize, Serialize};

use crate::ClusterError;

/// Whether a host's agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// The agent runs and renews the record.
    Up,
    /// The agent stopped cleanly, after stopping its VMs.
    Down,
}

/// What a host agent says of itself on the share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostRecord {
    /// The host.
    pub host: HostId,
    /// The agent's run (random per start).
    pub boot_id: String,
    /// The agent's process id, for an operator looking for it.
    pub pid: u32,
    /// Where peers reach the agent's API (`http://ADDR:PORT`), if it serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The cvol version the agent runs.
    pub version: String,
    /// Raised by every renewal.
    pub heartbeat: u64,
    /// Up or cleanly down.
    pub state: HostState,
}

/// A host record as read: its bytes (for liveness) and what they say.
#[derive(Debug, Clone)]
pub struct HostEntry {
    /// The host, from the file name.
    pub host: HostId,
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// The record, or why it is not one (naming the file).
    pub record: Result<HostRecord, String>,
}

/// The host records of a datastore.
pub struct HostRecords {
    share: Arc<dyn Share>,
}

fn record_file(host: &HostId) -> SharePath {
    layout::hosts_dir()
        .join(host.as_str())
        .expect("host ids are path components")
}

impl HostRecords {
    /// The records on `share`.
    pub fn new(share: Arc<dyn Share>) -> Self {
        Self { share }
    }

    /// `host`'s record, read from the server; `None` if it has none.
    pub fn read(&self, host: &HostId) -> Result<Option<HostEntry>, ClusterError> {
        let file = record_file(host);
        match self.share.read(&file) {
            Ok(bytes) => Ok(Some(HostEntry {
                host: host.clone(),
                record: parse(&file, &bytes),
                bytes,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every host's record, by host id.
    pub fn list(&self) -> Result<Vec<HostEntry>, ClusterError> {
        let mut hosts: Vec<HostId> = match self.share.read_dir(&layout::hosts_dir()) {
            Ok(entries) => entries
                .iter()
                .filter_map(|e| HostId::new(&e.name).ok())
                .collect(),
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        hosts.sort();
        let mut entries = Vec::with_capacity(hosts.len());
        for host in hosts {
            if let Some(entry) = self.read(&host)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Writes `record` whole (write aside, rename over); returns the bytes written.
    pub fn write(&self, record: &HostRecord) -> Result<Vec<u8>, ClusterError> {
        let bytes = toml::to_string(record)
            .expect("a host record serializes")
            .into_bytes();
        self.share
            .write_atomic(&record_file(&record.host), &bytes)?;
        Ok(bytes)
    }
}

fn parse(file: &SharePath, bytes: &[u8]) -> Result<HostRecord, String> {
    let corrupt = |reason: String| {
        ClusterError::Corrupt {
            file: file.to_string(),
            reason,
        }
        .to_string()
    };
    let text = std::str::from_utf8(bytes).map_err(|e| corrupt(e.to_string()))?;
    toml::from_str(text).map_err(|e| corrupt(e.message().to_string()))
}

#[cfg(test)]
mod tests {
    use cvol_share::LocalShare;

    use super::*;

    #[test]
    fn records_round_trip_and_corrupt_ones_name_their_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".cvol/hosts")).unwrap();
        let records = HostRecords::new(Arc::new(LocalShare::open(dir.path()).unwrap()));
        let record = HostRecord {
            host: HostId::new("h1").unwrap(),
            boot_id: "b".into(),
            pid: 7,
            address: Some("http://10.0.0.1:7500".into()),
            version: "0.1.0".into(),
            heartbeat: 3,
            state: HostState::Up,
        };
        records.write(&record).unwrap();
        std::fs::write(dir.path().join(".cvol/hosts/h2"), "host = 3").unwrap();
        let list = records.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].record.as_ref().unwrap(), &record);
        let e = list[1].record.as_ref().unwrap_err();
        assert!(e.starts_with(".cvol/hosts/h2: corrupt record"), "{e}");
    }
}
