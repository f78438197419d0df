//! Identifiers of providers and volumes, validated so that they can never be used to
//! reach outside a pool (they become file names and object keys).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} id {id:?}: {expected}")]
pub struct IdError {
    what: &'static str,
    id: String,
    expected: &'static str,
}

/// The id of a provider within one datastore, e.g. `pool1`: 1 to 64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProviderId(String);

impl ProviderId {
    /// Validates and wraps a provider id.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(IdError {
                what: "provider",
                id: id.to_string(),
                expected: "expected 1 to 64 letters, digits, '-' or '_'",
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A host's id in a cluster: the name of its record under `.cvol/hosts/`, and the holder
/// name of its attachments and leases: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.`
/// (a hostname fits).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    /// Validates and wraps a host id.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let ok = (1..=64).contains(&id.len())
            && !id.starts_with('.')
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(IdError {
                what: "host",
                id: id.to_string(),
                expected:
                    "expected 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'",
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The id of a volume (object instance) in a provider: `vol-` and 32 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VolumeId(String);

const VOLUME_PREFIX: &str = "vol-";

impl VolumeId {
    /// Validates and wraps a volume id.
    pub fn new(id: &str) -> Result<Self, IdError> {
        let ok = id.strip_prefix(VOLUME_PREFIX).is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if ok {
            Ok(Self(id.to_string()))
        } else {
            Err(IdError {
                what: "volume",
                id: id.to_string(),
                expected: "expected 'vol-' and 32 lowercase hex digits",
            })
        }
    }

    /// A fresh, random volume id. Callers choose ids before creating volumes so that an
    /// intent record can name a volume that may or may not exist yet.
    pub fn generate() -> Self {
        Self(format!("{VOLUME_PREFIX}{}", uuid::Uuid::new_v4().simple()))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_conversions {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(&s)
            }
        }
        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
    };
}
string_conversions!(ProviderId);
string_conversions!(VolumeId);
string_conversions!(HostId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_cannot_traverse() {
        assert!(VolumeId::new(VolumeId::generate().as_str()).is_ok());
        for bad in [
            "vol-../../etc",
            "vol-",
            "../vol-0",
            "vol-0123456789abcdef0123456789ABCDEF",
        ] {
            assert!(VolumeId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn provider_ids() {
        assert!(ProviderId::new("pool_1-a").is_ok());
        for bad in ["", "a/b", "..", "a b", &"p".repeat(65)] {
            assert!(ProviderId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
