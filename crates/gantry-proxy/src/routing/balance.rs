//! Instance choice within a set: power of two choices over outstanding
//! requests (two random candidates, the less busy wins — near
//! least-outstanding quality without scanning the set), skipping instances
//! passively ejected after consecutive connect failures.
//!
//! Instance state is keyed by address and outlives tables, so a swap does
//! not forget that an instance is down, and outstanding counts stay right;
//! an instance no table lists any more is forgotten at the next swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::observe::stats::InstanceSnapshot;
use crate::runtime::shard::Sharded;

/// Milliseconds on the proxy's own monotonic clock (not
/// `gantry_common::now_ms`, the wall clock): an ejection's cool-off must
/// not stretch or end early when the system time is set, and the value
/// fits an `AtomicU64` with 0 kept free for "not ejected".
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // +1 so that 0 can mean "not ejected".
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX) + 1
}

// === impl Instance ===

pub(crate) struct Instance {
    pub(crate) addr: SocketAddr,
    /// `addr` as a URI authority, made once (not per request).
    pub(crate) authority: Option<hyper::http::uri::Authority>,
    /// Per worker (`shard`): each worker's requests count on its own line.
    outstanding: Sharded<AtomicI64>,
    consecutive_failures: AtomicU32,
    /// `now_ms()` value until which the instance is ejected; 0 = not.
    ejected_until: AtomicU64,
    ejections: AtomicU64,
}

impl Instance {
    fn new(addr: SocketAddr) -> Self {
        Instance {
            addr,
            authority: hyper::http::uri::Authority::try_from(addr.to_string()).ok(),
            outstanding: Sharded::default(),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    /// Ejected at this moment.
    pub(crate) fn ejected_now(&self) -> bool {
        self.is_ejected(now_ms())
    }

    pub(crate) fn outstanding(&self) -> u64 {
        let n: i64 = self.outstanding.iter().map(|o| o.load(Relaxed)).sum();
        n.max(0) as u64
    }

    /// Counts one outstanding request until the lease is dropped.
    pub(crate) fn lease(self: &Arc<Self>) -> Lease {
        self.outstanding.local().fetch_add(1, Relaxed);
        Lease(self.clone())
    }

    /// Records a connect failure; ejects after `threshold` in a row.
    /// Returns true when this failure ejected the instance.
    pub(crate) fn connect_failed(&self, threshold: u32, cooloff: Duration) -> bool {
        let n = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if n >= threshold.max(1) {
            self.consecutive_failures.store(0, Relaxed);
            let until = now_ms() + u64::try_from(cooloff.as_millis()).unwrap_or(u64::MAX / 2);
            self.ejected_until.store(until, Relaxed);
            self.ejections.fetch_add(1, Relaxed);
            return true;
        }
        false
    }

    /// Any answer from the instance ends its failure streak.
    pub(crate) fn succeeded(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
        if self.ejected_until.load(Relaxed) != 0 {
            self.ejected_until.store(0, Relaxed);
        }
    }
}

/// One outstanding request on an instance.
pub(crate) struct Lease(Arc<Instance>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.outstanding.local().fetch_sub(1, Relaxed);
    }
}

// === impl Instances ===

/// Every instance address of the table (and of requests still running on
/// an older one). Locked only on table swaps and admin reads.
#[derive(Default)]
pub(crate) struct Instances {
    map: Mutex<HashMap<SocketAddr, Arc<Instance>>>,
}

impl Instances {
    pub(crate) fn get(&self, addr: SocketAddr) -> Arc<Instance> {
        let mut map = gantry_common::lock(&self.map);
        map.entry(addr)
            .or_insert_with(|| Arc::new(Instance::new(addr)))
            .clone()
    }
}

impl Instances {
    /// Forgets the instances that no compiled table lists and no request
    /// holds (only this map has them); one that comes back into a table
    /// starts afresh, not ejected.
    pub(crate) fn prune(&self) {
        gantry_common::lock(&self.map).retain(|_, i| Arc::strong_count(i) > 1);
    }

    /// Every instance held, sorted by address.
    pub(crate) fn snapshot(&self) -> Vec<InstanceSnapshot> {
        let map = gantry_common::lock(&self.map);
        let all: Vec<Arc<Instance>> = map.values().cloned().collect();
        drop(map);
        let now = now_ms();
        let mut out: Vec<InstanceSnapshot> = all
            .iter()
            .map(|i| InstanceSnapshot {
                address: i.addr,
                outstanding: i.outstanding(),
                ejected: i.is_ejected(now),
                consecutive_failures: i.consecutive_failures.load(Relaxed),
                ejections: i.ejections.load(Relaxed),
            })
            .collect();
        out.sort_by_key(|i| i.address);
        out
    }
}

/// Picks an instance not in `tried`: power of two choices among the ones
/// not ejected; if all are ejected, among all (better a try than a sure
/// 503 — the "panic mode" of outlier detection).
/// Allocates nothing: candidates are counted, then the drawn ones found by
/// rank.
pub(crate) fn pick(instances: &[Arc<Instance>], tried: &[usize]) -> Option<usize> {
    let now = now_ms();
    let untried = || (0..instances.len()).filter(|i| !tried.contains(i));
    let healthy = || untried().filter(|&i| !instances[i].is_ejected(now));
    let n_healthy = healthy().count();
    let (n, nth): (usize, &dyn Fn(usize) -> Option<usize>) = if n_healthy > 0 {
        (n_healthy, &|k| healthy().nth(k))
    } else {
        (untried().count(), &|k| untried().nth(k))
    };
    match n {
        0 => None,
        1 => nth(0),
        n => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (a, b) = (nth(a)?, nth(b)?);
            if instances[b].outstanding() < instances[a].outstanding() {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insts(n: u16) -> Vec<Arc<Instance>> {
        (0..n)
            .map(|i| Arc::new(Instance::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i)))))
            .collect()
    }

    #[test]
    fn prefers_the_less_busy_of_two() {
        let set = insts(2);
        let _busy: Vec<_> = (0..5).map(|_| set[0].lease()).collect();
        for _ in 0..50 {
            assert_eq!(pick(&set, &[]), Some(1));
        }
        assert_eq!(pick(&set, &[1]), Some(0));
        assert_eq!(pick(&set, &[0, 1]), None);
    }

    #[test]
    fn ejected_instances_are_skipped_until_all_are() {
        let set = insts(3);
        assert!(!set[0].connect_failed(2, Duration::from_secs(60)));
        assert!(set[0].connect_failed(2, Duration::from_secs(60)));
        for _ in 0..50 {
            assert_ne!(pick(&set, &[]), Some(0));
        }
        // Only the ejected one is left untried: it is tried anyway.
        assert_eq!(pick(&set, &[1, 2]), Some(0));
        set[0].succeeded();
        assert!(!set[0].is_ejected(now_ms()));
    }

    #[test]
    fn lease_counts_outstanding() {
        let set = insts(1);
        let l = set[0].lease();
        assert_eq!(set[0].outstanding(), 1);
        drop(l);
        assert_eq!(set[0].outstanding(), 0);
    }
}
