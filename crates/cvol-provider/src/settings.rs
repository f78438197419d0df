//! A provider's `key = value` settings from `datastore.toml`, read with errors that name
//! the provider and the setting.

use std::time::Duration;

use cvol_format::ProviderConfig;

use crate::ProviderError;

/// The settings of one configured provider.
pub(crate) struct Settings<'a> {
    config: &'a ProviderConfig,
}

impl<'a> Settings<'a> {
    pub(crate) fn new(config: &'a ProviderConfig) -> Self {
        Self { config }
    }

    /// An error about this provider's settings.
    pub(crate) fn error(&self, message: String) -> ProviderError {
        ProviderError::Setting {
            provider: self.config.id.to_string(),
            message,
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a str> {
        self.config.settings.get(key).map(String::as_str)
    }

    /// Setting `key`, which must be there; `what` says what it is, for the error.
    pub(crate) fn required(&self, key: &str, what: &str) -> Result<&'a str, ProviderError> {
        self.get(key)
            .ok_or_else(|| self.error(format!("setting '{key}' ({what}) is missing")))
    }

    /// Setting `key` as a positive whole number of `unit`s, `default` when unset.
    pub(crate) fn positive(
        &self,
        key: &str,
        unit: &str,
        default: u64,
    ) -> Result<u64, ProviderError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                self.error(format!(
                    "setting '{key}' {v:?}: expected a positive number of {unit}"
                ))
            }),
        }
    }

    /// Setting `key` in seconds, `default` when unset.
    pub(crate) fn seconds(&self, key: &str, default: Duration) -> Result<Duration, ProviderError> {
        self.positive(key, "seconds", default.as_secs())
            .map(Duration::from_secs)
    }
}
