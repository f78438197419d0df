//! How long a silence means death.
//!
//! The holder of a lease renews it every `renew`. It remembers when its last successful
//! renewal *started* (`last_ok`), and once `fence_after` has passed since then without
//! another success it kills the VM's QEMU (self-fencing). An observer judges a lease
//! expired once its bytes have not changed for `expiry` on the observer's own
//! monotonic clock, counted from the first read that returned them.
//!
//! Why the holder has always fenced before anyone takes over: let the observer first read
//! the last bytes it sees at time `t`. Lease reads go to the server (no attribute cache),
//! so every renewal the server applied after `t` would have been seen; none was, so
//! every successful renewal was applied before `t`, and so started before `t`:
//! `last_ok < t`. The holder kills QEMU by `last_ok + fence_after + kill` (`kill`: the
//! time a SIGKILL takes to stop QEMU's I/O, well under a second) and the observer takes
//! over no earlier than `t + expiry`. `expiry - fence_after` is the margin: it must cover
//! `kill` and a watchdog tick, and the rates of two monotonic clocks (they differ by
//! parts per million). Even without that margin no old write lands: a takeover raises
//! every disk's attachment generation first, so a holder that did not die is fenced by
//! the provider.
//!
//! Defaults: renew every 2 s, fence after 10 s (five renewals missed), expire after 16 s.
//! A dead host's HA VM is restarted within `expiry` + one scan (`renew`) + QEMU's start:
//! about 20 s, against VMware's 35 s lock break and Proxmox's 120 s.

use std::time::Duration;

use crate::ClusterError;

/// The lease timing of a cluster; every host of a datastore must use the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How often a holder renews its leases and its host record.
    pub renew: Duration,
    /// How long a holder runs a VM without a successful renewal before killing it.
    pub fence_after: Duration,
    /// How long a lease must stay unchanged before another host may take it.
    pub expiry: Duration,
}

/// The least margin between self-fencing and expiry: a SIGKILL and a watchdog tick.
pub const MIN_MARGIN: Duration = Duration::from_secs(2);

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            renew: Duration::from_secs(2),
            fence_after: Duration::from_secs(10),
            expiry: Duration::from_secs(16),
        }
    }
}

impl LeaseTiming {
    /// Refuses timings under which another host could take over before the holder fenced
    /// itself, or a holder would fence itself after one slow renewal.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.renew.is_zero() {
            return Err(ClusterError::Timing("lease_renew must be above 0".into()));
        }
        if self.fence_after < self.renew * 3 {
            return Err(ClusterError::Timing(format!(
                "fence_after ({:?}) must be at least 3 x lease_renew ({:?}), or one slow renewal kills a VM",
                self.fence_after, self.renew
            )));
        }
        if self.expiry < self.fence_after + MIN_MARGIN.max(self.renew) {
            return Err(ClusterError::Timing(format!(
                "lease_expiry ({:?}) must exceed fence_after ({:?}) by at least {:?} (and by lease_renew), so that a holder has killed its VM before another host takes it",
                self.expiry,
                self.fence_after,
                MIN_MARGIN.max(self.renew)
            )));
        }
        Ok(())
    }

    /// How often the watchdog checks for missed renewals: fine enough that it fences
    /// within a small part of the margin.
    pub fn watchdog_tick(&self) -> Duration {
        (self.renew / 4).min(Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe() {
        LeaseTiming::default().validate().unwrap();
    }

    #[test]
    fn expiry_not_past_fencing_is_refused() {
        let timing = LeaseTiming {
            expiry: Duration::from_secs(11),
            ..LeaseTiming::default()
        };
        let e = timing.validate().unwrap_err().to_string();
        assert!(e.contains("lease_expiry"), "{e}");
    }

    #[test]
    fn fencing_after_one_missed_renewal_is_refused() {
        let timing = LeaseTiming {
            fence_after: Duration::from_secs(3),
            ..LeaseTiming::default()
        };
        assert!(timing.validate().is_err());
    }
}
