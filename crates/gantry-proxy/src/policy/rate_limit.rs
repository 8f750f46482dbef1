//! Per-client-IP token buckets of one route.
//!
//! A bucket holds up to `burst` tokens and refills at
//! `requests_per_second`; a request takes one token or is refused with
//! the seconds until the next token. Buckets live in a sharded map (one
//! mutex per shard, held for a few arithmetic operations) with a fixed
//! capacity: when a shard is full, buckets that have refilled completely
//! are dropped (a full bucket is the same as no bucket), and if none has,
//! the least recently used one of the shard goes (that client starts over
//! with a full bucket). Memory stays bounded however many client addresses
//! appear.
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

/// The buckets of one route.
pub(crate) struct Limiter {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, Bucket>>]>,
    capacity: usize,
}

impl Limiter {
    pub(crate) fn new() -> Limiter {
        Self::with_capacity(SHARD_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Limiter {
        Limiter {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            capacity,
        }
    }

    /// Takes a token for `ip`, or tells the whole seconds (>= 1) until one
    /// is available.
    pub(crate) fn check(&self, ip: IpAddr, rate: &RateLimit, now: Instant) -> Result<(), u64> {
        let shard = &self.shards[self.hasher.hash_one(ip) as usize % SHARDS];
        let mut map = gantry_common::lock(shard);
        if !map.contains_key(&ip) && map.len() >= self.capacity {
            map.retain(|_, b| !b.is_full(rate, now));
            if map.len() >= self.capacity
                && let Some(oldest) = map.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
        }
        let bucket = map.entry(ip).or_insert(Bucket {
            tokens: f64::from(rate.burst),
            last: now,
        });
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
            .map(|s| gantry_common::lock(s).len())
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
        let l = Limiter::with_capacity(8);
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
}
