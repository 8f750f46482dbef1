//! Per (route, set) counters, recorded with atomics only.
//!
//! Latency is kept twice:
//! - an all-time histogram with fixed Prometheus buckets (1 ms .. 60 s) for
//!   `/metrics`, where rates over any window are computed by the scraper;
//! - a windowed histogram for the p50/p90/p99 of `/stats`: 6 slots of 10 s
//!   (so the window spans the last 50–60 s), each with 240 log-linear
//!   buckets (8 per power of two of microseconds, so a quantile is off by at
//!   most 12.5 %). A slot is cleared when the clock comes back to it.
//!   Recording is two relaxed atomic increments; no lock, unlike a shared
//!   `hdrhistogram`, whose `record` needs `&mut` and so a lock per request.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::runtime::shard::Sharded;

const SLOT_SECS: u64 = 10;
const SLOTS: usize = 6;
/// The span `/stats` quantiles and recent counts cover.
pub(crate) const WINDOW_SECS: u64 = SLOT_SECS * SLOTS as u64;
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
const MAX_EXP: u32 = 31;
const FINE_BUCKETS: usize = (SUB + (MAX_EXP - SUB_BITS + 1) as u64 * SUB) as usize;
/// Prometheus bucket bounds, seconds.
const PROM_LE: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Time since the first call: the proxy's own monotonic clock.
pub(crate) fn clock() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

fn fine_index(us: u64) -> usize {
    let v = us.min((1u64 << (MAX_EXP + 1)) - 1);
    if v < SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let mantissa = (v >> (exp - SUB_BITS)) & (SUB - 1);
    (SUB + u64::from(exp - SUB_BITS) * SUB + mantissa) as usize
}

/// Upper bound (exclusive) of a fine bucket, microseconds.
fn fine_upper(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        return idx + 1;
    }
    let exp = (idx - SUB) / SUB + u64::from(SUB_BITS);
    let m = (idx - SUB) % SUB;
    (SUB + m + 1) << (exp - u64::from(SUB_BITS))
}

/// Why a request is the client's fault, not the backend's: it is
/// counted in [`ClientErrorCounts`], never in the set's status classes,
/// latency or the error rate a rollout gate reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientFault {
    /// The body's framing is broken: bad chunk syntax, a chunk size that
    /// overflows, a bare LF where CRLF belongs.
    BadFraming = 1,
    /// The client ended or reset the connection before its body was
    /// complete.
    IncompleteBody = 2,
    /// The client stopped sending its body: nothing came for
    /// `body_read_timeout`, or the backend gave up while the proxy had
    /// been waiting for the client's next bytes.
    BodyTimeout = 3,
    /// The body is larger than the route's `max_body`.
    BodyTooLarge = 4,
}

const FAULTS: usize = 4;

impl ClientFault {
    pub(crate) fn from_u8(v: u8) -> Option<ClientFault> {
        Some(match v {
            1 => ClientFault::BadFraming,
            2 => ClientFault::IncompleteBody,
            3 => ClientFault::BodyTimeout,
            4 => ClientFault::BodyTooLarge,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize - 1
    }

    /// The `reason` label of `gantry_proxy_client_errors_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ClientFault::BadFraming => "bad_framing",
            ClientFault::IncompleteBody => "incomplete_body",
            ClientFault::BodyTimeout => "body_timeout",
            ClientFault::BodyTooLarge => "body_too_large",
        }
    }

    const ALL: [ClientFault; FAULTS] = [
        ClientFault::BadFraming,
        ClientFault::IncompleteBody,
        ClientFault::BodyTimeout,
        ClientFault::BodyTooLarge,
    ];
}

fn class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

// === impl Window ===

struct Slot {
    /// Which 10 s period (counted from 1) the slot holds; 0 = never used.
    epoch: AtomicU64,
    buckets: Box<[AtomicU64]>,
    classes: [AtomicU64; 5],
}

struct Window {
    slots: [Slot; SLOTS],
}

impl Window {
    fn new() -> Self {
        Window {
            slots: std::array::from_fn(|_| Slot {
                epoch: AtomicU64::new(0),
                buckets: (0..FINE_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
                classes: Default::default(),
            }),
        }
    }

    fn current_epoch() -> u64 {
        clock().as_secs() / SLOT_SECS + 1
    }

    fn slot_for_now(&self) -> &Slot {
        let epoch = Self::current_epoch();
        let slot = &self.slots[(epoch % SLOTS as u64) as usize];
        let seen = slot.epoch.load(Relaxed);
        if seen != epoch
            && slot
                .epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            // Racing recorders may land a count before the clear; a window
            // statistic tolerates that.
            for b in slot.buckets.iter() {
                b.store(0, Relaxed);
            }
            for c in &slot.classes {
                c.store(0, Relaxed);
            }
        }
        slot
    }

    fn record(&self, status: u16, us: u64) {
        let slot = self.slot_for_now();
        slot.classes[class_index(status)].fetch_add(1, Relaxed);
        slot.buckets[fine_index(us)].fetch_add(1, Relaxed);
    }

    fn live_slots(&self) -> impl Iterator<Item = &Slot> {
        let now = Self::current_epoch();
        self.slots.iter().filter(move |s| {
            let e = s.epoch.load(Relaxed);
            e != 0 && e + (SLOTS as u64) > now && e <= now
        })
    }

    /// Quantiles and class counts of the live slots.
    fn summary(&self) -> (LatencySummary, ClassCounts) {
        let mut merged = vec![0u64; FINE_BUCKETS];
        let mut classes = [0u64; 5];
        for slot in self.live_slots() {
            for (m, b) in merged.iter_mut().zip(slot.buckets.iter()) {
                *m += b.load(Relaxed);
            }
            for (c, s) in classes.iter_mut().zip(&slot.classes) {
                *c += s.load(Relaxed);
            }
        }
        let count: u64 = merged.iter().sum();
        let quantile = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
            let mut seen = 0;
            for (i, n) in merged.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return Some(fine_upper(i) as f64 / 1000.0);
                }
            }
            None
        };
        (
            LatencySummary {
                count,
                p50: quantile(0.50),
                p90: quantile(0.90),
                p99: quantile(0.99),
            },
            ClassCounts::from_array(classes),
        )
    }
}

// === impl SetStats ===

/// What one worker counts for a set (`shard`).
struct Counters {
    in_flight: AtomicI64,
    classes: [AtomicU64; 5],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    prom_buckets: [AtomicU64; PROM_LE.len() + 1],
    latency_sum_us: AtomicU64,
    /// By [`ClientFault`].
    client_errors: [AtomicU64; FAULTS],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            in_flight: AtomicI64::new(0),
            classes: Default::default(),
            client_errors: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            prom_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

/// The counters of one (route, set). They outlive routing tables, so a set
/// swapped out and back keeps its history, and a retired set can be drained.
/// Each worker writes its own shard of them (`shard`).
pub(crate) struct SetStats {
    pub(crate) route: String,
    pub(crate) set: String,
    counters: Sharded<Counters>,
    /// The recent window (`/stats` quantiles): one per set, not per shard
    /// (~12 KiB each, and sets are kept for their counters' sake).
    window: Window,
    /// `true` while the set is absent from the current table.
    retired_now: AtomicBool,
    /// When it left the table (`clock()` in ms, + 1); 0 while in it.
    retired_at: AtomicU64,
    /// The same, to wait on: one channel per shard, so a request's wait
    /// touches only its own worker's channel.
    retired: Sharded<watch::Sender<bool>>,
}

impl SetStats {
    fn new(route: &str, set: &str) -> Self {
        SetStats {
            route: route.to_string(),
            set: set.to_string(),
            counters: Sharded::default(),
            window: Window::new(),
            retired_now: AtomicBool::new(false),
            retired_at: AtomicU64::new(0),
            retired: Sharded::new_with(|| watch::Sender::new(false)),
        }
    }

    fn sum(&self, get: impl Fn(&Counters) -> u64) -> u64 {
        self.counters.iter().map(get).sum()
    }

    /// SeqCst, paired with [`SetStats::set_retired`]: a request that
    /// counted itself in and then reads "not retired" is seen by whoever
    /// retires the set and then reads the in-flight count.
    pub(crate) fn begin(&self) {
        self.counters.local().in_flight.fetch_add(1, SeqCst);
    }

    pub(crate) fn end(&self) {
        self.counters.local().in_flight.fetch_sub(1, Relaxed);
    }

    pub(crate) fn in_flight(&self) -> u64 {
        let n: i64 = self.counters.iter().map(|c| c.in_flight.load(SeqCst)).sum();
        n.max(0) as u64
    }

    /// Status and latency to the response headers.
    pub(crate) fn record_response(&self, status: u16, latency: Duration) {
        let c = self.counters.local();
        c.classes[class_index(status)].fetch_add(1, Relaxed);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.window.record(status, us);
        let secs = latency.as_secs_f64();
        let idx = PROM_LE
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(PROM_LE.len());
        c.prom_buckets[idx].fetch_add(1, Relaxed);
        c.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// A request the client broke: counted apart from the status classes
    /// (and with no latency), so it moves no gate.
    pub(crate) fn record_client_error(&self, fault: ClientFault) {
        self.counters.local().client_errors[fault.index()].fetch_add(1, Relaxed);
    }

    fn client_errors(&self) -> ClientErrorCounts {
        let n = |f: ClientFault| self.sum(|c| c.client_errors[f.index()].load(Relaxed));
        ClientErrorCounts {
            bad_framing: n(ClientFault::BadFraming),
            incomplete_body: n(ClientFault::IncompleteBody),
            body_timeout: n(ClientFault::BodyTimeout),
            body_too_large: n(ClientFault::BodyTooLarge),
        }
    }

    pub(crate) fn add_bytes_in(&self, n: u64) {
        self.counters.local().bytes_in.fetch_add(n, Relaxed);
    }

    pub(crate) fn add_bytes_out(&self, n: u64) {
        self.counters.local().bytes_out.fetch_add(n, Relaxed);
    }

    pub(crate) fn set_retired(&self, retired: bool) {
        if !retired {
            self.retired_at.store(0, Relaxed);
        } else if self.retired_at.load(Relaxed) == 0 {
            let now = u64::try_from(clock().as_millis()).unwrap_or(u64::MAX - 1);
            self.retired_at.store(now + 1, Relaxed);
        }
        self.retired_now.store(retired, SeqCst);
        for tx in self.retired.iter() {
            tx.send_if_modified(|r| {
                let changed = *r != retired;
                *r = retired;
                changed
            });
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired_now.load(SeqCst)
    }

    /// Out of the table for `grace` at least, with nothing in flight: its
    /// counters may go ([`Registry::prune`]).
    fn done_with(&self, grace: Duration) -> bool {
        let at = self.retired_at.load(Relaxed);
        if at == 0 || !self.is_retired() {
            return false;
        }
        let out_for = clock().saturating_sub(Duration::from_millis(at - 1));
        out_for >= grace && self.in_flight() == 0
    }

    /// Changes of [`SetStats::is_retired`], on this worker's channel.
    pub(crate) fn retired(&self) -> watch::Receiver<bool> {
        self.retired.local().subscribe()
    }

    fn snapshot(&self, weight: Option<u32>) -> SetStatsSnapshot {
        let (latency_ms, recent) = self.window.summary();
        SetStatsSnapshot {
            route: self.route.clone(),
            set: self.set.clone(),
            in_table: weight.is_some(),
            weight,
            in_flight: self.in_flight(),
            requests: ClassCounts::from_array(std::array::from_fn(|i| {
                self.sum(|c| c.classes[i].load(Relaxed))
            })),
            recent,
            client_errors: self.client_errors(),
            latency_ms,
            bytes_in: self.sum(|c| c.bytes_in.load(Relaxed)),
            bytes_out: self.sum(|c| c.bytes_out.load(Relaxed)),
        }
    }
}

// === impl Registry ===

/// The sets of the table and those that left it lately, by (route, set).
/// Locked only on table swaps and admin reads, never per request: the
/// compiled table holds the `Arc`s.
///
/// A set that left the table keeps its counters while it drains and for a
/// grace period after (`retired_stats_grace`, 5 min by default), so the
/// control plane still reads them at the drain and in its last analysis;
/// then [`Registry::prune`] drops it, and with it its series in
/// `/metrics` (a Prometheus server sees it as a target's series going
/// away, as when an instance is replaced). A set that comes back into the
/// table later starts from zero. So every deploy's set leaves again and
/// the registry stays as large as the table.
#[derive(Default)]
pub(crate) struct Registry {
    sets: Mutex<HashMap<(String, String), Arc<SetStats>>>,
    pub(crate) unrouted: AtomicU64,
    pub(crate) maintenance: AtomicU64,
    /// Requests refused with 400 before routing: a head that does not
    /// parse, no or two `Host` headers (`listener::request_host`).
    pub(crate) bad_requests: AtomicU64,
}

impl Registry {
    pub(crate) fn set_stats(&self, route: &str, set: &str) -> Arc<SetStats> {
        let mut sets = gantry_common::lock(&self.sets);
        sets.entry((route.to_string(), set.to_string()))
            .or_insert_with(|| Arc::new(SetStats::new(route, set)))
            .clone()
    }

    /// Drops the sets that have been out of the table for `grace` and
    /// have nothing in flight; how many went.
    pub(crate) fn prune(&self, grace: Duration) -> usize {
        let mut sets = gantry_common::lock(&self.sets);
        let before = sets.len();
        sets.retain(|_, s| !s.done_with(grace));
        before - sets.len()
    }

    /// Sets held (in the table or lately out of it).
    #[cfg(test)]
    fn len(&self) -> usize {
        gantry_common::lock(&self.sets).len()
    }

    pub(crate) fn get(&self, route: &str, set: &str) -> Option<Arc<SetStats>> {
        let sets = gantry_common::lock(&self.sets);
        sets.get(&(route.to_string(), set.to_string())).cloned()
    }

    /// Every set, sorted by route then set.
    pub(crate) fn all(&self) -> Vec<Arc<SetStats>> {
        let sets = gantry_common::lock(&self.sets);
        let mut all: Vec<_> = sets.values().cloned().collect();
        drop(sets);
        all.sort_by(|a, b| (&a.route, &a.set).cmp(&(&b.route, &b.set)));
        all
    }

    /// `weight` tells the set's weight in the current table (None: absent).
    pub(crate) fn snapshot(
        &self,
        weight: impl Fn(&str, &str) -> Option<u32>,
        instances: Vec<InstanceSnapshot>,
    ) -> StatsSnapshot {
        StatsSnapshot {
            instances,
            window_secs: WINDOW_SECS,
            unrouted_requests: self.unrouted.load(Relaxed),
            maintenance_responses: self.maintenance.load(Relaxed),
            bad_requests: self.bad_requests.load(Relaxed),
            sets: self
                .all()
                .iter()
                .map(|s| s.snapshot(weight(&s.route, &s.set)))
                .collect(),
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render_prometheus(
        &self,
        weight: impl Fn(&str, &str) -> Option<u32>,
        instances: &[InstanceSnapshot],
    ) -> String {
        let all = self.all();
        let mut out = String::new();
        let labels = |s: &SetStats| {
            format!(
                "route=\"{}\",set=\"{}\"",
                escape_label(&s.route),
                escape_label(&s.set)
            )
        };
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_requests_total Requests answered, by route, backend set and \
             status class.\n# TYPE gantry_proxy_requests_total counter"
        );
        for s in &all {
            let l = labels(s);
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gantry_proxy_requests_total{{{l},class=\"{class}\"}} {}",
                    s.sum(|c| c.classes[i].load(Relaxed))
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_client_errors_total Requests the client broke (bad body \
             framing, a body cut off, too slow or over max_body), by route, backend set and \
             reason; not in gantry_proxy_requests_total.\n# TYPE gantry_proxy_client_errors_total \
             counter"
        );
        for s in &all {
            let l = labels(s);
            for f in ClientFault::ALL {
                let _ = writeln!(
                    out,
                    "gantry_proxy_client_errors_total{{{l},reason=\"{}\"}} {}",
                    f.label(),
                    s.sum(|c| c.client_errors[f.index()].load(Relaxed))
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_request_duration_seconds Time to the backend's response \
             headers.\n# TYPE gantry_proxy_request_duration_seconds histogram"
        );
        for s in &all {
            let l = labels(s);
            let mut cumulative = 0;
            for (i, le) in PROM_LE.iter().enumerate() {
                cumulative += s.sum(|c| c.prom_buckets[i].load(Relaxed));
                let _ = writeln!(
                    out,
                    "gantry_proxy_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += s.sum(|c| c.prom_buckets[PROM_LE.len()].load(Relaxed));
            let sum = s.sum(|c| c.latency_sum_us.load(Relaxed)) as f64 / 1e6;
            let _ = writeln!(
                out,
                "gantry_proxy_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} \
                 {cumulative}\ngantry_proxy_request_duration_seconds_sum{{{l}}} {sum}\n\
                 gantry_proxy_request_duration_seconds_count{{{l}}} {cumulative}"
            );
        }
        for (name, help, get) in [
            (
                "gantry_proxy_request_bytes_total",
                "Request body bytes sent to backends.",
                &s_bytes_in as &dyn Fn(&SetStats) -> u64,
            ),
            (
                "gantry_proxy_response_bytes_total",
                "Response body bytes sent to clients.",
                &s_bytes_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for s in &all {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(s), get(s));
            }
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_in_flight_requests Requests being answered now.\n# TYPE \
             gantry_proxy_in_flight_requests gauge"
        );
        for s in &all {
            let _ = writeln!(
                out,
                "gantry_proxy_in_flight_requests{{{}}} {}",
                labels(s),
                s.in_flight()
            );
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_set_weight Weight of the set in the current table (-1: not in \
             the table).\n# TYPE gantry_proxy_set_weight gauge"
        );
        for s in &all {
            let w = weight(&s.route, &s.set).map_or(-1, i64::from);
            let _ = writeln!(out, "gantry_proxy_set_weight{{{}}} {w}", labels(s));
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_unrouted_requests_total Requests no route matched (404).\n# \
             TYPE gantry_proxy_unrouted_requests_total counter\n\
             gantry_proxy_unrouted_requests_total {}\n\
             # HELP gantry_proxy_maintenance_responses_total Requests answered by maintenance \
             mode (503).\n# TYPE gantry_proxy_maintenance_responses_total counter\n\
             gantry_proxy_maintenance_responses_total {}\n\
             # HELP gantry_proxy_bad_requests_total Requests refused with 400 before routing \
             (a head that does not parse, no or two Host headers).\n# TYPE \
             gantry_proxy_bad_requests_total counter\n\
             gantry_proxy_bad_requests_total {}",
            self.unrouted.load(Relaxed),
            self.maintenance.load(Relaxed),
            self.bad_requests.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_instance_ejected 1 while the instance is ejected after connect \
             failures.\n# TYPE gantry_proxy_instance_ejected gauge"
        );
        for i in instances {
            let _ = writeln!(
                out,
                "gantry_proxy_instance_ejected{{instance=\"{}\"}} {}",
                i.address,
                u8::from(i.ejected)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gantry_proxy_instance_ejections_total Times the instance was ejected.\n# \
             TYPE gantry_proxy_instance_ejections_total counter"
        );
        for i in instances {
            let _ = writeln!(
                out,
                "gantry_proxy_instance_ejections_total{{instance=\"{}\"}} {}",
                i.address, i.ejections
            );
        }
        out
    }
}

fn s_bytes_in(s: &SetStats) -> u64 {
    s.sum(|c| c.bytes_in.load(Relaxed))
}

fn s_bytes_out(s: &SetStats) -> u64 {
    s.sum(|c| c.bytes_out.load(Relaxed))
}

pub(crate) fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

// === wire types ===

/// `GET /stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// The span `recent` and `latency_ms` cover (the last 50–60 s).
    pub window_secs: u64,
    pub unrouted_requests: u64,
    pub maintenance_responses: u64,
    /// Requests refused with 400 before routing (no route or set to count
    /// them on): a head that does not parse, no or two `Host` headers.
    #[serde(default)]
    pub bad_requests: u64,
    pub sets: Vec<SetStatsSnapshot>,
    /// Backend instances by address (shared by every set that lists them).
    pub instances: Vec<InstanceSnapshot>,
}

impl StatsSnapshot {
    pub fn set(&self, route: &str, set: &str) -> Option<&SetStatsSnapshot> {
        self.sets.iter().find(|s| s.route == route && s.set == set)
    }
}

/// One backend instance, as passive health checking sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    pub address: std::net::SocketAddr,
    /// Requests sent to it and not finished.
    pub outstanding: u64,
    /// Skipped by the balancer until its cool-off ends.
    pub ejected: bool,
    pub consecutive_failures: u32,
    /// Times it was ejected since the proxy started.
    pub ejections: u64,
}

/// One (route, set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetStatsSnapshot {
    pub route: String,
    pub set: String,
    pub in_table: bool,
    /// Weight in the current table, when the set is in it.
    pub weight: Option<u32>,
    pub in_flight: u64,
    /// Since the proxy started.
    pub requests: ClassCounts,
    /// Over the window.
    pub recent: ClassCounts,
    /// Since the proxy started: requests the client broke, answered 4xx
    /// (or closed when no answer was possible). Not in `requests` nor
    /// `recent`, nor in `latency_ms`: a gate that reads those never sees
    /// them.
    #[serde(default)]
    pub client_errors: ClientErrorCounts,
    /// Time to response headers, over the window.
    pub latency_ms: LatencySummary,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// Requests by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCounts {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

impl ClassCounts {
    fn from_array(a: [u64; 5]) -> Self {
        ClassCounts {
            c1xx: a[0],
            c2xx: a[1],
            c3xx: a[2],
            c4xx: a[3],
            c5xx: a[4],
        }
    }

    pub fn total(&self) -> u64 {
        self.c1xx + self.c2xx + self.c3xx + self.c4xx + self.c5xx
    }
}

/// Requests the client broke, by reason (the `reason` label of
/// `gantry_proxy_client_errors_total`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientErrorCounts {
    /// Broken body framing (chunk syntax, chunk-size overflow, bare LF): 400.
    pub bad_framing: u64,
    /// The client closed or reset before its body was complete: 400 when
    /// the connection can still carry it.
    pub incomplete_body: u64,
    /// The client stopped sending its body (`body_read_timeout`, or the
    /// backend gave up while the proxy waited for the client): 408.
    pub body_timeout: u64,
    /// Larger than the route's `max_body`: 413.
    pub body_too_large: u64,
}

impl ClientErrorCounts {
    pub fn total(&self) -> u64 {
        self.bad_framing + self.incomplete_body + self.body_timeout + self.body_too_large
    }
}

/// Latency quantiles in milliseconds (bucket upper bounds; None when no
/// request was seen in the window).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

/// `GET /drained?route=R&set=S`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub route: String,
    pub set: String,
    pub in_table: bool,
    /// In the table with a weight above 0.
    pub receiving_traffic: bool,
    pub in_flight: u64,
    /// Gets no new requests and has none in flight.
    pub drained: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fine_buckets_cover_values_within_an_eighth() {
        let mut last = 0;
        for v in (0..20u64).chain([100, 999, 1_000, 12_345, 1 << 20, 1 << 31, u64::MAX]) {
            let idx = fine_index(v);
            assert!(idx < FINE_BUCKETS);
            let upper = fine_upper(idx);
            let clamped = v.min((1u64 << (MAX_EXP + 1)) - 1);
            assert!(upper > clamped, "{v}: upper {upper}");
            assert!(upper - clamped <= clamped / 8 + 1, "{v}: upper {upper}");
            assert!(idx >= last);
            last = idx;
        }
    }

    #[test]
    fn quantiles_and_classes() {
        let s = SetStats::new("r", "s");
        for ms in 1..=100u64 {
            s.record_response(if ms <= 90 { 200 } else { 503 }, Duration::from_millis(ms));
        }
        let snap = s.snapshot(Some(100));
        assert_eq!(snap.requests.c2xx, 90);
        assert_eq!(snap.requests.c5xx, 10);
        assert_eq!(snap.recent.total(), 100);
        assert_eq!(snap.latency_ms.count, 100);
        let p50 = snap.latency_ms.p50.unwrap();
        let p99 = snap.latency_ms.p99.unwrap();
        assert!((50.0..=57.0).contains(&p50), "{p50}");
        assert!((99.0..=112.0).contains(&p99), "{p99}");
    }

    #[test]
    fn prometheus_text_has_per_set_series() {
        let r = Registry::default();
        r.set_stats("hello/production", "canary")
            .record_response(200, Duration::from_millis(3));
        let text = r.render_prometheus(|_, _| Some(10), &[]);
        assert!(text.contains(
            "gantry_proxy_requests_total{route=\"hello/production\",set=\"canary\",class=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "gantry_proxy_request_duration_seconds_bucket{route=\"hello/production\",set=\"canary\",le=\"0.005\"} 1"
        ));
        assert!(
            text.contains("gantry_proxy_set_weight{route=\"hello/production\",set=\"canary\"} 10")
        );
    }

    #[test]
    fn retired_sets_leave_after_the_grace_once_drained() {
        let r = Registry::default();
        let old = r.set_stats("app/prod", "r1");
        let new = r.set_stats("app/prod", "r2");
        old.record_response(200, Duration::from_millis(1));
        // In the table: never pruned, however long.
        assert_eq!(r.prune(Duration::ZERO), 0);
        // Out of the table with a request in flight: kept (it drains).
        old.begin();
        old.set_retired(true);
        assert_eq!(r.prune(Duration::ZERO), 0);
        old.end();
        // Drained, but within the grace: kept, its counters readable.
        assert_eq!(r.prune(Duration::from_secs(3600)), 0);
        assert_eq!(
            r.get("app/prod", "r1")
                .unwrap()
                .snapshot(None)
                .requests
                .c2xx,
            1
        );
        // Past the grace: gone, with its series.
        assert_eq!(r.prune(Duration::ZERO), 1);
        assert!(r.get("app/prod", "r1").is_none());
        assert_eq!(r.len(), 1);
        let text = r.render_prometheus(|_, _| Some(100), &[]);
        assert!(!text.contains("set=\"r1\""), "{text}");
        assert!(text.contains("set=\"r2\""));
        // Back in the table within the grace: the clock starts again.
        new.set_retired(true);
        new.set_retired(false);
        assert_eq!(r.prune(Duration::ZERO), 0);
        // A set that comes back after it was pruned starts from zero.
        let again = r.set_stats("app/prod", "r1");
        assert_eq!(again.snapshot(Some(100)).requests.total(), 0);
    }
}
