//! The Gantry edge proxy: an HTTP/1.1 + HTTP/2 (h2c, and over TLS) reverse proxy that runs
//! as its own OS process (`gantry proxy`), so traffic keeps flowing while the
//! control plane restarts. The control plane drives it over a unix admin
//! socket ([`AdminClient`]).
//!
//! # Where things are: one folder per layer
//!
//! | folder | holds |
//! |---|---|
//! | `runtime/` | the process: `server` (bind, serve, accept loops, shutdown), `worker` (a thread per core), `spread` (connections placed on the least busy worker), `shard` (per-worker counters), `handoff` (hitless upgrade) |
//! | `conn/` | one client connection: `listener` (PROXY header, TLS, which HTTP server), `proxy_protocol`, `http1_server` (the own HTTP/1.1 server), `idle` (idle timeout on hyper's) |
//! | `tls/` | `certs` (by SNI, challenge answers), `acme`, `x509` |
//! | `routing/` | `table` (the JSON table, validation), `persist`, `router` (compiled, matched, swapped), `sticky`, `balance` |
//! | `policy/` | per-route checks (`mod.rs`), `security_headers`, `rate_limit`, `csp_report` |
//! | `request/` | `forward` (drives the phases for a request), `headers`, `pages` |
//! | `upstream/` | `http1_client` (the own HTTP/1.1 client), `pools` (hyper's clients), `body`, `compress`, `upgrade` |
//! | `observe/` | `stats`, `access_log`, `metrics` (the TCP `/metrics` listener) |
//! | `admin/` | `server` (the admin API), `client` ([`AdminClient`]) |
//!
//! Beside them: `shared` (what every request shares, below all that uses
//! it), `config`, `error`, `fasthash`, and `fuzz` (entry points for the
//! fuzz targets, hidden).
//!
//! # The request path
//!
//! One phase per file, run in this order by `request::forward`:
//!
//! 1. `routing::router` — read one table snapshot, match host (exact, then
//!    `*.suffix`, then `*`) and the longest path prefix → route; maintenance
//!    mode answers 503 here; a weighted draw picks the backend set.
//!    `policy` then runs the route's checks before a set is chosen: the
//!    rate limit (`policy::rate_limit`, 429), the proxy's own
//!    `POST /_gantry/csp-report` (`policy::csp_report`), a declared body over
//!    `max_body` (413). Every answer of a route gets its security headers
//!    (`policy::security_headers`) when it lacks them.
//! 2. `request::headers` — strip hop-by-hop headers, add `X-Forwarded-*` and
//!    `X-Real-IP` (an untrusted client's `Forwarded` is removed),
//!    `X-Request-Id` and W3C `traceparent` when absent.
//! 3. `routing::balance` — pick an instance of the set by power-of-two-choices over
//!    outstanding requests, skipping passively ejected instances.
//! 4. `request::forward` — send with the response timeout and the drain deadline:
//!    a request without a body or upgrade over the proxy's own HTTP/1.1
//!    client (`upstream::http1_client`: written and parsed in the request's
//!    task, per-worker pool), others over hyper's pooled client
//!    (`upstream::pools`); a connect failure retries
//!    another instance of the same set for idempotent methods when no body
//!    byte was sent.
//! 5. `upstream::body` — the response body streams back wrapped in a guard that
//!    counts bytes and, when dropped, ends the in-flight count and writes
//!    the access log line (`observe::access_log`). Error answers come from
//!    `request::pages`.
//!
//! # Threads: one worker per core
//!
//! Client traffic runs on workers (`runtime::worker`): one OS thread per
//! core, each with a single-threaded tokio runtime and its own accept loop
//! (`runtime::server`'s `accept_traffic`) on a duplicate of every listening socket (one socket
//! per address, shared by the workers). A worker serves the connections it
//! accepted from start to end, with its own upstream connection pools, so
//! a request, its client connection and its backend connection live on one
//! thread (no cross-thread wake-ups), like nginx's worker processes. What
//! the workers share is lock-free or nearly so: the table (`ArcSwap`), the
//! per-set stats (atomics, one shard per worker: `runtime::shard`), the
//! access log queue; what every request shares is in `shared`. The admin socket and the
//! metrics listener run on the runtime that calls [`Proxy::serve`].
//!
//! # Atomic table swap
//!
//! The compiled table lives in an `ArcSwap<Router>`. A request loads one
//! `Arc` at its start and uses that snapshot for its whole life; `PUT
//! /table` validates, persists (`routing::persist`: write temp file, fsync,
//! rename, fsync the directory),
//! compiles and stores a new `Arc` in one atomic pointer swap. Requests never
//! wait on the admin path, nor on the control plane.
//!
//! # Draining
//!
//! Each in-flight request holds a guard on the counters of its (route, set)
//! (`observe::stats::SetStats`), which outlive tables: a set keeps its counters across
//! swaps. When a swap removes a set, the set is marked retired: it gets no
//! new requests (it is no longer in the table) and `GET /drained` reports
//! `true` once its in-flight count reaches 0. Requests of a retired set still
//! waiting for response headers get `drain_timeout` more, then end with 504.
//!
//! # Streaming features (route options and their modules)
//!
//! - `upstream::upgrade` — WebSocket (HTTP/1.1 `Upgrade`) tunnels: the 101 is passed
//!   on, then bytes are copied both ways; a tunnel counts in flight on its
//!   set and is closed `websocket_drain_grace` after its set leaves the
//!   table. HTTP/1.1 `Upgrade`, and h2 extended CONNECT (RFC 8441), which
//!   reaches the backend as an HTTP/1.1 upgrade.
//! - `upstream::compress` — `compress: true`: brotli/gzip as the client accepts,
//!   streamed, for compressible types only.
//! - `routing::sticky` — `sticky: true`: a `gantry_sticky` cookie naming a table
//!   entry (a hash, never an address) pins the client to an instance.
//!
//! # Metrics
//!
//! Per (route, set): atomics only on the hot path — status class counters,
//! bytes in and out (WebSocket bytes as they pass), in-flight, an all-time
//! latency histogram for Prometheus, and a windowed histogram for
//! p50/p90/p99 (see `observe::stats`). The admin socket (`admin::server`)
//! serves `/metrics`; the optional `metrics_listen` TCP listener
//! (`observe::metrics`) serves only
//! `/metrics` and `/healthz`, for a Prometheus server to scrape.
//!
//! # Before the request path: connections
//!
//! `runtime::server` accepts (at most `max_connections` at once; more wait
//! in the accept queue; `runtime::spread` places each on the worker with
//! the fewest) and hands each connection to `conn::listener`: the PROXY
//! protocol header when configured (`conn::proxy_protocol`) (its source address is the client's,
//! for `X-Forwarded-For` and the access log), the TLS handshake on TLS
//! listeners (`tls::certs`: certificate by SNI from route files, ACME or the
//! default; HTTP/2 or HTTP/1.1 by ALPN; the TLS-ALPN-01 challenge
//! certificate for `acme-tls/1`), then HTTP: HTTP/1.1 on the proxy's own
//! server loop (`conn::http1_server`: body-less, non-upgrade requests, which is nearly
//! all of them), which hands the connection to hyper's HTTP/1.1 + HTTP/2
//! server for anything else (an h2 preface or ALPN, a request body, an
//! upgrade, HTTP/1.0, a head it cannot take). On plain HTTP, `conn::listener`
//! answers ACME HTTP-01 tokens and redirects routes with `redirect_http`
//! (308 to `https://`). `tls::acme` keeps certificates for routes with
//! `tls.mode = "acme"`; `runtime::handoff` documents the socket hand-off of a
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
//! (`header_read_timeout`: on `conn::http1_server`, from the first bytes of a head
//! seen; on hyper's server, hyper's setting, which in hyper 1.12 also runs
//! between keep-alive requests) and the idle timeout of client connections
//! (`conn::http1_server`'s connection timer; `conn::idle` on hyper's
//! server). Per route: `max_body` (413; a streamed body is cut
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
//! gives up on a stalled upload); `upstream::body::SharedBody` tells which. A head
//! with no or two `Host` headers (HTTP/1.1; two for any version, or
//! neither `Host` nor `:authority` over h2) gets 400 before routing,
//! counted in `bad_requests` with the heads that do not parse.
//!
//! # Not here yet
//!
//! DNS-01 (so no ACME wildcard certificates).
//!
//! # Bounded over time
//!
//! Counters of a set that left the table stay while it drains and for
//! `retired_stats_grace` (5 min) after, then go, with their `/metrics`
//! series (a Prometheus server sees that as a target's series ending); an
//! instance no table lists is forgotten at the next swap. The connection
//! inboxes (`runtime::spread`) and the rate limiter's buckets are bounded,
//! and a full rate-limit shard costs a new client O(1) amortised.
#![forbid(unsafe_code)]

mod admin;
mod config;
mod conn;
mod error;
mod fasthash;
#[doc(hidden)]
pub mod fuzz;
mod observe;
mod policy;
mod request;
mod routing;
mod runtime;
mod shared;
mod tls;
mod upstream;

pub use admin::client::{AdminClient, AdminClientError};
pub use config::{AcmeChallenge, ProxyConfig};
pub use error::{HandoffError, ProxyError, TableError, TlsError};
pub use observe::stats::{
    ClassCounts, ClientErrorCounts, DrainStatus, InstanceSnapshot, LatencySummary,
    SetStatsSnapshot, StatsSnapshot,
};
pub use policy::csp_report::{CspReport, CspReports, CspViolation};
pub use policy::rate_limit::RateLimit;
pub use policy::security_headers::{
    CspMode, DEFAULT_CSP, DEFAULT_HSTS, DEFAULT_REPORTING_ENDPOINTS, SecurityHeaders,
};
pub use routing::table::{BackendSet, Maintenance, Route, RouteTls, Table};
pub use runtime::server::{Proxy, run};
