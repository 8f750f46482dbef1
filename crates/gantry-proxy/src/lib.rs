//! The Gantry edge proxy: an HTTP/1.1 + HTTP/2 (h2c, and over TLS) reverse proxy that runs
//! as its own OS process (`gantry proxy`), so traffic keeps flowing while the
//! control plane restarts. The control plane drives it over a unix admin
//! socket ([`AdminClient`]).
//!
//! # The request path
//!
//! One phase per file, run in this order by `forward`:
//!
//! 1. `router`   — read one table snapshot, match host (exact, then
//!    `*.suffix`, then `*`) and the longest path prefix → route; maintenance
//!    mode answers 503 here; a weighted draw picks the backend set.
//!    `policy` then runs the route's checks before a set is chosen: the
//!    rate limit (`rate_limit`, 429), the proxy's own
//!    `POST /_gantry/csp-report` (`csp_report`), a declared body over
//!    `max_body` (413). Every answer of a route gets its security headers
//!    (`policy`) when it lacks them.
//! 2. `headers`  — strip hop-by-hop headers, add `X-Forwarded-*` and
//!    `X-Real-IP` (an untrusted client's `Forwarded` is removed),
//!    `X-Request-Id` and W3C `traceparent` when absent.
//! 3. `balance`  — pick an instance of the set by power-of-two-choices over
//!    outstanding requests, skipping passively ejected instances.
//! 4. `forward`  — send with the response timeout and the drain deadline:
//!    a request without a body or upgrade over the proxy's own HTTP/1.1
//!    client (`h1`: written and parsed in the request's task, per-worker
//!    pool), others over hyper's pooled client; a connect failure retries
//!    another instance of the same set for idempotent methods when no body
//!    byte was sent.
//! 5. `body`     — the response body streams back wrapped in a guard that
//!    counts bytes and, when dropped, ends the in-flight count and writes
//!    the access log line (`access_log`). Error answers come from `pages`.
//!
//! # Threads: one worker per core
//!
//! Client traffic runs on `worker`s: one OS thread per core, each with a
//! single-threaded tokio runtime and its own accept loop (`server`'s
//! `accept_traffic`) on a duplicate of every listening socket (one socket
//! per address, shared by the workers). A worker serves the connections it
//! accepted from start to end, with its own upstream connection pools, so
//! a request, its client connection and its backend connection live on one
//! thread (no cross-thread wake-ups), like nginx's worker processes. What
//! the workers share is lock-free or nearly so: the table (`ArcSwap`), the
//! per-set stats (atomics, one shard per worker: `shard`), the access log
//! queue. The admin socket and the
//! metrics listener run on the runtime that calls [`Proxy::serve`].
//!
//! # Atomic table swap
//!
//! The compiled table lives in an `ArcSwap<Router>`. A request loads one
//! `Arc` at its start and uses that snapshot for its whole life; `PUT
//! /table` validates, persists (`persist`: write temp file, fsync, rename),
//! compiles and stores a new `Arc` in one atomic pointer swap. Requests never
//! wait on the admin path, nor on the control plane.
//!
//! # Draining
//!
//! Each in-flight request holds a guard on the counters of its (route, set)
//! (`stats::SetStats`), which outlive tables: a set keeps its counters across
//! swaps. When a swap removes a set, the set is marked retired: it gets no
//! new requests (it is no longer in the table) and `GET /drained` reports
//! `true` once its in-flight count reaches 0. Requests of a retired set still
//! waiting for response headers get `drain_timeout` more, then end with 504.
//!
//! # Streaming features (route options and their modules)
//!
//! - `upgrade` — WebSocket (HTTP/1.1 `Upgrade`) tunnels: the 101 is passed
//!   on, then bytes are copied both ways; a tunnel counts in flight on its
//!   set and is closed `websocket_drain_grace` after its set leaves the
//!   table. HTTP/1.1 `Upgrade`, and h2 extended CONNECT (RFC 8441), which
//!   reaches the backend as an HTTP/1.1 upgrade.
//! - `compress` — `compress: true`: brotli/gzip as the client accepts,
//!   streamed, for compressible types only.
//! - `sticky` — `sticky: true`: a `gantry_sticky` cookie naming a table
//!   entry (a hash, never an address) pins the client to an instance.
//!
//! # Metrics
//!
//! Per (route, set): atomics only on the hot path — status class counters,
//! bytes in and out (WebSocket bytes as they pass), in-flight, an all-time
//! latency histogram for Prometheus, and a windowed histogram for
//! p50/p90/p99 (see `stats`). The admin socket serves `/metrics`; the
//! optional `metrics_listen` TCP listener (`metrics`) serves only
//! `/metrics` and `/healthz`, for a Prometheus server to scrape.
//!
//! # Before the request path: connections
//!
//! `server` accepts (at most `max_connections` at once; more wait in the
//! accept queue) and hands each connection to `listener`: the PROXY
//! protocol header when configured (its source address is the client's,
//! for `X-Forwarded-For` and the access log), the TLS handshake on TLS
//! listeners (`tls`: certificate by SNI from route files, ACME or the
//! default; HTTP/2 or HTTP/1.1 by ALPN; the TLS-ALPN-01 challenge
//! certificate for `acme-tls/1`), then HTTP: HTTP/1.1 on the proxy's own
//! server loop (`serve1`: body-less, non-upgrade requests, which is nearly
//! all of them), which hands the connection to hyper's HTTP/1.1 + HTTP/2
//! server for anything else (an h2 preface or ALPN, a request body, an
//! upgrade, HTTP/1.0, a head it cannot take). On plain HTTP, `listener`
//! answers ACME HTTP-01 tokens and redirects routes with `redirect_http`
//! (308 to `https://`). `acme` keeps certificates for routes with
//! `tls.mode = "acme"`; `handoff` documents the socket hand-off of a
//! hitless upgrade.
//!
//! # Entry points
//!
//! [`Proxy::bind`] (sockets bound, persisted table loaded; tells the bound
//! addresses) then [`Proxy::serve`] until a shutdown future resolves; [`run`]
//! does both. [`AdminClient`] drives a running proxy.
//!
//! # Slow clients and sizes
//!
//! `ProxyConfig` sets the request head size (431), the time to send it
//! (`header_read_timeout`: on `serve1`, from the first bytes of a head
//! seen; on hyper's server, hyper's setting, which in hyper 1.12 also runs
//! between keep-alive requests) and the idle timeout of client connections
//! (`serve1`'s connection timer; `limits::IdleIo` on hyper's server). Per route: `max_body` (413; a streamed body is cut
//! when it grows past it) and `connect_timeout_ms`. A request body that
//! stops for `body_read_timeout` gets 408; the response timeout of a
//! request with a body counts from the body's last byte.
//!
//! # A client's fault is not the backend's
//!
//! A request the client broke — broken chunk framing (bad size, overflow,
//! bare LF), a body cut off, a body that stops coming, a body over
//! `max_body` — gets a 4xx (or a closed connection when none can go out)
//! and counts in its set's `client_errors` (`/stats`) and
//! `gantry_proxy_client_errors_total{route,set,reason}`, never in the
//! set's status classes or latency, which the rollout gates read. So does
//! an answer or failure of the backend that comes while the proxy has been
//! waiting a second or more for the client's next body bytes (an app that
//! gives up on a stalled upload); `body::SharedBody` tells which. A head
//! with no or two `Host` headers (HTTP/1.1; two for any version, or
//! neither `Host` nor `:authority` over h2) gets 400 before routing,
//! counted in `bad_requests` with the heads that do not parse.
//!
//! # Not here yet
//!
//! DNS-01 (so no ACME wildcard certificates). Counters of sets
//! that left the table are kept (Prometheus counters must not go back),
//! never pruned.
#![forbid(unsafe_code)]

mod access_log;
mod acme;
mod admin;
mod balance;
mod body;
mod client;
mod compress;
mod config;
mod csp_report;
mod error;
mod fasthash;
mod forward;
#[doc(hidden)]
pub mod fuzz;
mod h1;
mod handoff;
mod headers;
mod limits;
mod listener;
mod metrics;
mod pages;
mod persist;
mod policy;
mod rate_limit;
mod router;
mod serve1;
mod server;
mod shard;
mod shared;
mod spread;
mod stats;
mod sticky;
mod table;
mod tls;
mod upgrade;
mod worker;
mod x509;

pub use client::{AdminClient, AdminClientError};
pub use config::{AcmeChallenge, ProxyConfig};
pub use csp_report::{CspReport, CspReports, CspViolation};
pub use error::{ProxyError, TableError};
pub use policy::{
    CspMode, DEFAULT_CSP, DEFAULT_HSTS, DEFAULT_REPORTING_ENDPOINTS, SecurityHeaders,
};
pub use rate_limit::RateLimit;
pub use server::{Proxy, run};
pub use stats::{
    ClassCounts, ClientErrorCounts, DrainStatus, InstanceSnapshot, LatencySummary,
    SetStatsSnapshot, StatsSnapshot,
};
pub use table::{BackendSet, Maintenance, Route, RouteTls, Table};
