//! When to sync: at most once per interval, and only with unsynced data.

use std::time::{Duration, Instant};

/// The sync policy, pure: the caller tells it about syncs and asks it with
/// its own clock's `now`.
///
/// A sync is due when there is unsynced data and `interval` has passed
/// since the last sync *began* (at once if there was none). So a sample
/// logged at `a` is in a sync begun by `a + interval` when the owner acts
/// on [`SyncPolicy::deadline`], and syncs come at most once per interval
/// however fast samples arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    interval: Duration,
    last_sync: Option<Instant>,
}

impl SyncPolicy {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last_sync: None,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next sync is due if there is unsynced data; `None` for the
    /// first one (due at once).
    pub fn deadline(&self) -> Option<Instant> {
        self.last_sync.map(|l| l + self.interval)
    }

    /// Whether to sync now.
    pub fn due(&self, now: Instant, dirty: bool) -> bool {
        dirty && self.deadline().is_none_or(|d| now >= d)
    }

    /// A sync began at `at`.
    pub fn began(&mut self, at: Instant) {
        self.last_sync = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_at_most_once_per_interval_and_only_when_dirty() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = SyncPolicy::new(ms(1000));
        assert!(!p.due(t0, false), "nothing to sync");
        assert!(p.due(t0, true), "the first sync is due at once");
        p.began(t0);
        assert!(!p.due(t0 + ms(999), true));
        assert_eq!(p.deadline(), Some(t0 + ms(1000)));
        assert!(p.due(t0 + ms(1000), true));
        assert!(!p.due(t0 + ms(5000), false));
        // After an idle stretch, new data is synced at the next tick.
        assert!(p.due(t0 + ms(5000), true));
        p.began(t0 + ms(5000));
        assert!(!p.due(t0 + ms(5500), true));
    }

    #[test]
    fn a_sample_waits_at_most_one_interval() {
        // Samples at every millisecond, ticks at every millisecond: every
        // sample is in a sync begun within the interval after it.
        let t0 = Instant::now();
        let interval = Duration::from_millis(250);
        let mut p = SyncPolicy::new(interval);
        let mut oldest_unsynced: Option<Instant> = None;
        for i in 0..5_000u64 {
            let now = t0 + Duration::from_millis(i);
            if oldest_unsynced.is_none() && i % 7 != 0 {
                oldest_unsynced = Some(now);
            }
            if p.due(now, oldest_unsynced.is_some()) {
                let waited = now - oldest_unsynced.take().expect("dirty");
                assert!(waited <= interval, "waited {waited:?}");
                p.began(now);
            }
        }
    }
}
