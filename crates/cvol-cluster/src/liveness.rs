//! Judging liveness by change, on this host's own clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What this host has seen of records that a live writer keeps changing (leases, host
/// records): for each, its bytes and when this host first read them.
#[derive(Debug, Default)]
pub struct Liveness {
    seen: HashMap<String, (Vec<u8>, Instant)>,
}

impl Liveness {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key` read as `bytes` at `now`; returns how long it has read so
    /// without a change (zero for a change, or the first sight).
    pub fn observe(&mut self, key: &str, bytes: &[u8], now: Instant) -> Duration {
        match self.seen.get_mut(key) {
            Some((seen, since)) if seen.as_slice() == bytes => {
                now.saturating_duration_since(*since)
            }
            Some(entry) => {
                *entry = (bytes.to_vec(), now);
                Duration::ZERO
            }
            None => {
                self.seen.insert(key.to_string(), (bytes.to_vec(), now));
                Duration::ZERO
            }
        }
    }

    /// How long `key` has been seen unchanged, if it was seen at all.
    pub fn unchanged_for(&self, key: &str, now: Instant) -> Option<Duration> {
        self.seen
            .get(key)
            .map(|(_, since)| now.saturating_duration_since(*since))
    }

    /// Forgets the keys for which `keep` is false (records that are gone).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|key, _| keep(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_from_the_first_sight_of_the_same_bytes() {
        let mut live = Liveness::new();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(live.observe("a", b"1", t0), Duration::ZERO);
        assert_eq!(live.observe("a", b"1", t0 + 5 * s), 5 * s);
        assert_eq!(
            live.observe("a", b"2", t0 + 6 * s),
            Duration::ZERO,
            "a change"
        );
        assert_eq!(live.unchanged_for("a", t0 + 9 * s), Some(3 * s));
        assert_eq!(live.unchanged_for("b", t0), None);
        live.retain(|k| k != "a");
        assert_eq!(live.unchanged_for("a", t0), None);
    }
}
