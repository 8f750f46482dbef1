//! Per-worker shards of hot counters.
//!
//! Every request updates a handful of counters of its set and instance
//! (in flight, status class, Prometheus latency buckets, bytes,
//! outstanding). With one copy shared by every worker, each update moves a
//! cache line between cores. Here each worker writes its own shard (on its
//! own cache lines) and readers (the admin API, `/metrics`, `/drained`,
//! the balancer's outstanding counts) add the shards up. (An experiment
//! that dropped these counters and the drain watch altogether saved about
//! 1.8 µs of CPU per request on 2 cores, close to this machine's noise;
//! sharding keeps the counters and takes the cross-core writes away.) The
//! recent-latency window stays one per set: it is ~12 KiB.
//!
//! Shards are per worker up to [`MAX_SHARDS`]; threads that are not
//! workers use shard 0. A count raised on one shard and lowered on another
//! (a lease dropped on another thread) still sums right, which is why the
//! gauges are signed.

use std::cell::Cell;
use std::sync::OnceLock;

/// Most shards a counter has.
pub(crate) const MAX_SHARDS: usize = 8;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// How many shards each counter has: one per core, at most [`MAX_SHARDS`].
pub(crate) fn count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_SHARDS)
    })
}

/// Makes this thread (worker `worker`) write its own shard.
pub(crate) fn enter(worker: usize) {
    INDEX.set(worker % count());
}

/// `T` alone on its cache lines (128 bytes: adjacent-line prefetch pairs
/// lines on x86).
#[repr(align(128))]
pub(crate) struct Padded<T>(T);

/// One `T` per shard.
pub(crate) struct Sharded<T> {
    shards: Box<[Padded<T>]>,
}

impl<T> Sharded<T> {
    pub(crate) fn new_with(mut make: impl FnMut() -> T) -> Self {
        Sharded {
            shards: (0..count()).map(|_| Padded(make())).collect(),
        }
    }

    /// This thread's shard.
    pub(crate) fn local(&self) -> &T {
        &self.shards[INDEX.get() % self.shards.len()].0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Self::new_with(T::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

    #[test]
    fn shards_sum_whatever_thread_counted() {
        let c: std::sync::Arc<Sharded<AtomicI64>> = Default::default();
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let c = c.clone();
                std::thread::spawn(move || {
                    enter(w);
                    for _ in 0..1000 {
                        c.local().fetch_add(1, Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Lowered on this thread (shard 0), raised elsewhere.
        c.local().fetch_sub(500, Relaxed);
        assert_eq!(c.iter().map(|a| a.load(Relaxed)).sum::<i64>(), 3500);
    }
}
