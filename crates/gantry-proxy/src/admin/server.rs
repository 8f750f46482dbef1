//! The admin API, HTTP/1.1 on a unix socket (mode 0600: only the user the
//! proxy runs as — the control plane's — may use it).
//!
//! | call | answer |
//! |---|---|
//! | `GET /table` | the current table (JSON) |
//! | `PUT /table` | validate, persist, swap; 400 with every problem when invalid |
//! | `GET /stats` | [`crate::StatsSnapshot`] |
//! | `GET /drained?route=R&set=S` | [`crate::DrainStatus`] |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /csp-reports?route=R` | [`crate::CspReports`]: the route's CSP report count, kinds of violation, last reports |
//! | `POST /upgrade` | start a new proxy process that takes over the sockets (see `handoff`); `{"old_pid", "new_pid"}` once it serves |
//! | `GET /certs` | served TLS certificates: host, source, serial, validity |
//! | `GET /healthz` | `ok` |
//!
//! Errors are `{"error": "..."}`, like the control plane's API.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use crate::observe::stats::DrainStatus;
use crate::routing::persist;
use crate::routing::table::Table;
use crate::shared::Shared;

/// Largest table accepted by `PUT /table`.
const MAX_TABLE_BYTES: usize = 16 << 20;

pub(crate) struct Admin {
    pub(crate) shared: Arc<Shared>,
    pub(crate) state_dir: PathBuf,
    /// Serializes table writes: persist and swap happen in the same order.
    pub(crate) write: tokio::sync::Mutex<()>,
    pub(crate) upgrade: crate::runtime::handoff::Upgrade,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": message.into() }))
}

pub(crate) async fn handle(admin: Arc<Admin>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let routing = &admin.shared.routing;
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/healthz") => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
        (Method::GET, "/table") => json(StatusCode::OK, &routing.load().table),
        (Method::PUT, "/table") => put_table(&admin, req.into_body()).await,
        (Method::GET, "/stats") => json(StatusCode::OK, &routing.stats()),
        (Method::POST, "/upgrade") => {
            // Table writes wait: the new process loads the persisted table.
            let _write = admin.write.lock().await;
            match admin.upgrade.start().await {
                Ok((old_pid, new_pid)) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "old_pid": old_pid, "new_pid": new_pid }),
                ),
                Err(e) => {
                    let why = crate::error::chain(&e);
                    tracing::error!(error = %why, "upgrade failed; this proxy keeps serving");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("upgrade failed: {why}"),
                    )
                }
            }
        }
        (Method::GET, "/certs") => json(StatusCode::OK, &admin.shared.tls.statuses()),
        (Method::GET, "/metrics") => {
            let text = admin.shared.prometheus();
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (Method::GET, "/drained") => {
            let param = |name: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| percent_decode(v))
            };
            let (Some(route), Some(set)) = (param("route"), param("set")) else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "give both `route` and `set`, as in /drained?route=hello%2Fproduction&set=blue",
                );
            };
            let weight = routing.load().weight(&route, &set);
            let in_flight = routing
                .registry
                .get(&route, &set)
                .map_or(0, |s| s.in_flight());
            let receiving_traffic = weight.is_some_and(|w| w > 0);
            json(
                StatusCode::OK,
                &DrainStatus {
                    in_table: weight.is_some(),
                    receiving_traffic,
                    in_flight,
                    drained: !receiving_traffic && in_flight == 0,
                    route,
                    set,
                },
            )
        }
        (Method::GET, "/csp-reports") => {
            let route = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "route")
                .and_then(|(_, v)| percent_decode(v));
            let Some(route) = route else {
                return error(
                    StatusCode::BAD_REQUEST,
                    "give `route`, as in /csp-reports?route=hello%2Fproduction",
                );
            };
            match routing.policies.get(&route) {
                Some(state) => json(StatusCode::OK, &state.reports.snapshot(&route)),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no route `{route}` in this proxy's table"),
                ),
            }
        }
        (
            _,
            "/table" | "/stats" | "/metrics" | "/drained" | "/healthz" | "/csp-reports" | "/certs"
            | "/upgrade",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not allowed on {path}", req.method()),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            format!(
                "no admin call `{path}`; the calls are /table, /stats, /drained, /metrics, \
                 /csp-reports, /certs, /upgrade, /healthz"
            ),
        ),
    }
}

async fn put_table(admin: &Admin, body: Incoming) -> Response<Full<Bytes>> {
    let bytes = match Limited::new(body, MAX_TABLE_BYTES).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the table (at most {MAX_TABLE_BYTES} bytes): {e}"),
            );
        }
    };
    // Validation reads the routes' certificate files: off the async thread.
    let table = match tokio::task::spawn_blocking(move || Table::from_json(&bytes)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let _write = admin.write.lock().await;
    if admin.upgrade.handed_over() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this proxy has handed over to a new process; send the table again",
        );
    }
    let dir = admin.state_dir.clone();
    let to_save = table.clone();
    let saved = tokio::task::spawn_blocking(move || persist::save(&dir, &to_save)).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let why = crate::error::chain(&e);
            tracing::error!(error = %why, "cannot persist the routing table; not applied");
            return error(StatusCode::INTERNAL_SERVER_ERROR, why);
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let summary = serde_json::json!({
        "version": table.version,
        "routes": table.routes.len(),
    });
    tracing::info!(
        version = table.version,
        routes = table.routes.len(),
        "routing table swapped"
    );
    // Loading the routes' certificate files reads the disk: off the async
    // thread (the write lock is still held, so swaps stay in order).
    let tls = admin.shared.tls.clone();
    let table = match tokio::task::spawn_blocking(move || {
        tls.table_changed(&table);
        table
    })
    .await
    {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    admin.shared.routing.swap(table);
    json(StatusCode::OK, &summary)
}

/// Decodes `%XX` and `+`; None on malformed input or non-UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(
            percent_decode("hello%2Fproduction").as_deref(),
            Some("hello/production")
        );
        assert_eq!(percent_decode("a+b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
