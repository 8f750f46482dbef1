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
//! 2. `headers`  — strip hop-by-hop headers, add `X-Forwarded-*`,
//!    `X-Request-Id` and W3C `traceparent` when absent.
//! 3. `balance`  — pick an instance of the set by power-of-two-choices over
//!    outstanding requests, skipping passively ejected instances.
//! 4. `forward`  — send through the pooled client with the response timeout
//!    and the drain deadline; a connect failure retries another instance of
//!    the same set for idempotent methods when no body byte was sent.
//! 5. `body`     — the response body streams back wrapped in a guard that
//!    counts bytes and, when dropped, ends the in-flight count and writes
//!    the access log line (`access_log`). Error answers come from `pages`.
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
//! # Metrics
//!
//! Per (route, set): atomics only on the hot path — status class counters,
//! bytes, in-flight, an all-time latency histogram for Prometheus, and a
//! windowed histogram for p50/p90/p99 (see `stats`).
//!
//! # Before the request path: connections
//!
//! `server` accepts (at most `max_connections` at once; more wait in the
//! accept queue) and hands each connection to `listener`: the PROXY
//! protocol header when configured (its source address is the client's,
//! for `X-Forwarded-For` and the access log), the TLS handshake on TLS
//! listeners (`tls`: certificate by SNI from route files, ACME or the
//! default; HTTP/2 or HTTP/1.1 by ALPN; the TLS-ALPN-01 challenge
//! certificate for `acme-tls/1`), then hyper. On plain HTTP, `listener`
//! answers ACME HTTP-01 tokens and redirects routes with `redirect_http`
//! (308 to `https://`). `acme` keeps certificates for routes with
//! `tls.mode = "acme"`; `upgrade` documents the socket hand-off of a
//! hitless upgrade.
//!
//! # Entry points
//!
//! [`Proxy::bind`] (sockets bound, persisted table loaded; tells the bound
//! addresses) then [`Proxy::serve`] until a shutdown future resolves; [`run`]
//! does both. [`AdminClient`] drives a running proxy.
//!
//! # Not here yet
//!
//! The security-header policy and CSP report endpoint, rate limits,
//! slow-client and header/body size limits beyond hyper's defaults,
//! WebSocket/Upgrade pass-through, compression, sticky sessions, DNS-01
//! (so no ACME wildcard certificates). The table reserves `headers` and
//! `rate_limit` per route and refuses them until they are enforced. Counters of sets that left the table are kept (Prometheus
//! counters must not go back), never pruned.
#![forbid(unsafe_code)]

mod access_log;
mod acme;
mod admin;
mod balance;
mod body;
mod client;
mod config;
mod error;
mod forward;
mod headers;
mod listener;
mod pages;
mod persist;
mod router;
mod server;
mod stats;
mod table;
mod tls;
mod upgrade;
mod x509;

pub use client::{AdminClient, AdminClientError};
pub use config::{AcmeChallenge, ProxyConfig};
pub use error::{ProxyError, TableError};
pub use server::{Proxy, run};
pub use stats::{
    ClassCounts, DrainStatus, InstanceSnapshot, LatencySummary, SetStatsSnapshot, StatsSnapshot,
};
pub use table::{BackendSet, Maintenance, Route, RouteTls, Table};
