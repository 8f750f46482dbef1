//! Per-client-IP token buckets of one route.
//!
//! A bucket holds up to `burst` tokens and refills at
//! `requests_per_second`; a request takes one token or is refused with
//! the seconds until the next token. Buckets live in a sharded map (one
//! mutex per shard, held for a few arithmetic operations) with a fixed
//! capacity. When a shard is full, a new client's bucket takes the place of
//! one chosen by a clock hand (the CLOCK approximation of least recently
//! used): the hand walks the shard's slots from where it stopped last,
//! takes the first bucket that has refilled completely (a full bucket is
//! the same as no bucket) or that no request used since the hand last
//! passed it, and clears that mark on the others it passes. A client seen
//! once is marked only when it comes back, so a flood of one-shot
//! addresses replaces itself and leaves the returning clients alone; the
//! one whose bucket goes starts over with a full one. Each step of the
//! hand either frees a slot or clears a mark some request set, so a new
//! client costs O(1) amortised, never a scan of the shard. Memory stays
//! bounded however many client addresses appear.
//!
//! Hand-written rather than `governor`: governor's keyed limiter grows
//! without bound until `retain_recent` is called, and it needs dashmap.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Token-bucket rate limit per client IP.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second per client IP (> 0; fractions allowed).
    pub requests_per_second: f64,
    /// Requests a client may make at once before the sustained rate applies
    /// (the bucket's size, >= 1).
    pub burst: u32,
}

impl RateLimit {
    pub(crate) fn validate(&self, at: &str, problems: &mut Vec<String>) {
        let rps = self.requests_per_second;
        if !(rps.is_finite() && rps > 0.0 && rps <= 1e9) {
            problems.push(format!(
                "{at}: rate_limit.requests_per_second must be a number above 0 (got {rps}); \
                 e.g. 10, or 0.5 for one request every 2 s"
            ));
        }
        if self.burst == 0 {
            problems.push(format!(
                "{at}: rate_limit.burst must be at least 1 (the requests a client may make \
                 at once)"
            ));
        }
    }
}

const SHARDS: usize = 32;
/// Buckets per shard: 32 × 4096 ≈ 131k client addresses, ~50 bytes each.
const SHARD_CAPACITY: usize = 4096;

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.requests_per_second).min(f64::from(rate.burst));
        self.last = now;
    }

    fn is_full(&self, rate: &RateLimit, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate.requests_per_second >= f64::from(rate.burst)
    }
}

/// One bucket in a shard's ring.
struct Slot {
    ip: IpAddr,
    bucket: Bucket,
    /// Used since the clock hand last passed.
    used: bool,
}

/// One shard: the buckets in a ring, indexed by address.
#[derive(Default)]
struct Shard {
    index: HashMap<IpAddr, usize>,
    slots: Vec<Slot>,
    hand: usize,
    /// Slots the hand visited, ever (the work evictions cost).
    swept: u64,
}

impl Shard {
    /// The slot a new client takes in a full shard: the first from the
    /// hand on whose bucket is full or unused since the hand last passed.
    /// Ends within two turns (the first clears every mark).
    fn victim(&mut self, rate: &RateLimit, now: Instant) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            self.swept += 1;
            let slot = &mut self.slots[i];
            if !slot.used || slot.bucket.is_full(rate, now) {
                return i;
            }
            slot.used = false;
        }
    }
}

/// The buckets of one route.
pub(crate) struct Limiter {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    capacity: usize,
}

impl Limiter {
    pub(crate) fn new() -> Limiter {
        Self::with_capacity(SHARDS, SHARD_CAPACITY)
    }

    fn with_capacity(shards: usize, capacity: usize) -> Limiter {
        Limiter {
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a token for `ip`, or tells the whole seconds (>= 1) until one
    /// is available.
    pub(crate) fn check(&self, ip: IpAddr, rate: &RateLimit, now: Instant) -> Result<(), u64> {
        let n = self.shards.len();
        let shard = &self.shards[self.hasher.hash_one(ip) as usize % n];
        let mut shard = gantry_common::lock(shard);
        let fresh = |ip| Slot {
            ip,
            bucket: Bucket {
                tokens: f64::from(rate.burst),
                last: now,
            },
            used: false,
        };
        let i = match shard.index.get(&ip) {
            Some(&i) => {
                shard.slots[i].used = true;
                i
            }
            None if shard.slots.len() < self.capacity => {
                let i = shard.slots.len();
                shard.slots.push(fresh(ip));
                shard.index.insert(ip, i);
                i
            }
            None => {
                let i = shard.victim(rate, now);
                let gone = std::mem::replace(&mut shard.slots[i], fresh(ip));
                shard.index.remove(&gone.ip);
                shard.index.insert(ip, i);
                i
            }
        };
        let bucket = &mut shard.slots[i].bucket;
        bucket.refill(rate, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let secs = (1.0 - bucket.tokens) / rate.requests_per_second;
            Err((secs.ceil() as u64).max(1))
        }
    }

    /// Buckets held (all shards).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| gantry_common::lock(s).slots.len())
            .sum()
    }

    /// Slots the clock hands visited (all shards).
    #[cfg(test)]
    fn swept(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| gantry_common::lock(s).swept)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refill_per_ip() {
        let l = Limiter::new();
        let rate = RateLimit {
            requests_per_second: 2.0,
            burst: 3,
        };
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(a, &rate, t0), Ok(()));
        }
        assert_eq!(l.check(a, &rate, t0), Err(1));
        assert_eq!(l.check(b, &rate, t0), Ok(()));
        assert_eq!(l.check(a, &rate, t0 + Duration::from_millis(500)), Ok(()));
        assert_eq!(l.check(a, &rate, t0 + Duration::from_millis(500)), Err(1));
        let slow = RateLimit {
            requests_per_second: 0.1,
            burst: 1,
        };
        assert_eq!(l.check(b, &slow, t0), Ok(()));
        assert_eq!(l.check(b, &slow, t0), Err(10));
    }

    #[test]
    fn memory_is_bounded_under_many_addresses() {
        let l = Limiter::with_capacity(SHARDS, 8);
        let rate = RateLimit {
            requests_per_second: 0.001,
            burst: 2,
        };
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            assert_eq!(l.check(ip, &rate, t0), Ok(()));
        }
        assert!(l.len() <= SHARDS * 8, "{} buckets", l.len());
        // Full buckets are dropped first: after a long idle time every
        // bucket refilled, and a new address finds room.
        let later = t0 + Duration::from_secs(10_000);
        assert_eq!(l.check("192.0.2.1".parse().unwrap(), &rate, later), Ok(()));
        assert!(l.len() <= SHARDS * 8);
    }

    /// One full shard, many clients: a client that keeps coming stays
    /// limited (its bucket is not the one replaced), however many new
    /// addresses pass through.
    #[test]
    fn a_full_shard_still_limits_its_returning_clients() {
        let l = Limiter::with_capacity(1, 64);
        let rate = RateLimit {
            requests_per_second: 0.001,
            burst: 2,
        };
        let t0 = Instant::now();
        let hot: IpAddr = "198.51.100.7".parse().unwrap();
        assert_eq!(l.check(hot, &rate, t0), Ok(()));
        assert_eq!(l.check(hot, &rate, t0), Ok(()));
        for round in 0..1_000u32 {
            assert!(l.check(hot, &rate, t0).is_err(), "round {round}: reset");
            for k in 0..16u32 {
                let ip = IpAddr::from((round * 16 + k + 1).to_be_bytes());
                assert_eq!(
                    l.check(ip, &rate, t0),
                    Ok(()),
                    "a new client gets its burst"
                );
            }
            assert!(l.len() <= 64);
        }
    }

    /// A flood of new clients on full shards costs each a step or two of
    /// the clock hand, never a walk over the shard's 4096 buckets (the
    /// old path: a `retain` and a `min_by_key` over every entry per new
    /// client).
    #[test]
    fn a_flood_of_new_clients_costs_no_scan() {
        let l = Limiter::with_capacity(1, SHARD_CAPACITY);
        let rate = RateLimit {
            requests_per_second: 0.001,
            burst: 1,
        };
        let t0 = Instant::now();
        let flood = 100_000u32;
        for i in 0..flood {
            let _ = l.check(IpAddr::from(i.to_be_bytes()), &rate, t0);
        }
        let new_in_full_shard = u64::from(flood) - SHARD_CAPACITY as u64;
        assert_eq!(l.len(), SHARD_CAPACITY);
        // One-shot clients are never marked: the hand takes each at once.
        assert_eq!(l.swept(), new_in_full_shard);
        // Returning clients mark their buckets; each mark costs the hand
        // one more step, once.
        let l = Limiter::with_capacity(1, SHARD_CAPACITY);
        for i in 0..flood {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.check(ip, &rate, t0);
            let _ = l.check(ip, &rate, t0);
        }
        assert!(
            l.swept() <= 2 * new_in_full_shard + SHARD_CAPACITY as u64,
            "{} steps for {new_in_full_shard} new clients",
            l.swept()
        );
    }
}
