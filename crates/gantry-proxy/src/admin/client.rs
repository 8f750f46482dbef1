//! [`AdminClient`]: what the control plane (and the tests) use to drive a
//! proxy over its admin socket. One HTTP/1.1 connection per call: calls are
//! rare, and a fresh connection survives proxy restarts for free. Every
//! call has a deadline ([`AdminClient::DEFAULT_DEADLINE`], or the one given
//! with [`AdminClient::with_deadline`]): a proxy that accepts the
//! connection and never answers is an error, never a hang.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::observe::stats::{DrainStatus, StatsSnapshot};
use crate::policy::csp_report::CspReports;
use crate::routing::table::Table;

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error(
        "cannot reach the proxy's admin socket {} (is `gantry proxy` running?)",
        path.display()
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the proxy broke off the admin call: {reason}")]
    Transport { reason: String },
    /// The call took longer than the client's deadline (a stuck proxy).
    #[error(
        "the proxy did not answer `{call}` within {} s (its admin socket {} accepts but does not answer)",
        after.as_secs_f64(),
        socket.display()
    )]
    TimedOut {
        call: String,
        socket: PathBuf,
        after: Duration,
    },
    /// The proxy answered with an error (e.g. 400 for an invalid table).
    #[error("the proxy refused the call ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("the proxy's answer could not be read: {reason}")]
    Decode { reason: String },
}

/// A client for one proxy's admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    socket: PathBuf,
    deadline: Duration,
}

impl AdminClient {
    /// How long a call may take unless [`AdminClient::with_deadline`] says
    /// otherwise. The proxy answers its admin calls in milliseconds; a
    /// table swap persists the table first (an fsync).
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

    pub fn new(socket: impl Into<PathBuf>) -> Self {
        AdminClient {
            socket: socket.into(),
            deadline: Self::DEFAULT_DEADLINE,
        }
    }

    /// The same client with another deadline per call.
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// How long each call may take.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /table`.
    pub async fn table(&self) -> Result<Table, AdminClientError> {
        self.json(Method::GET, "/table", None).await
    }

    /// `PUT /table`: validated, persisted and swapped in by the proxy.
    pub async fn set_table(&self, table: &Table) -> Result<(), AdminClientError> {
        let body = serde_json::to_vec(table).map_err(|e| AdminClientError::Decode {
            reason: e.to_string(),
        })?;
        let _: serde_json::Value = self.json(Method::PUT, "/table", Some(body)).await?;
        Ok(())
    }

    /// `GET /stats`.
    pub async fn stats(&self) -> Result<StatsSnapshot, AdminClientError> {
        self.json(Method::GET, "/stats", None).await
    }

    /// `GET /drained?route=R&set=S`.
    pub async fn drained(&self, route: &str, set: &str) -> Result<DrainStatus, AdminClientError> {
        let path = format!(
            "/drained?route={}&set={}",
            percent_encode(route),
            percent_encode(set)
        );
        self.json(Method::GET, &path, None).await
    }

    /// `GET /csp-reports?route=R`: the route's CSP violation reports.
    pub async fn csp_reports(&self, route: &str) -> Result<CspReports, AdminClientError> {
        let path = format!("/csp-reports?route={}", percent_encode(route));
        self.json(Method::GET, &path, None).await
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> Result<String, AdminClientError> {
        let (status, body) = self.raw(Method::GET, "/metrics", None).await?;
        if status != 200 {
            return Err(api_error(status, &body));
        }
        String::from_utf8(body.to_vec()).map_err(|e| AdminClientError::Decode {
            reason: e.to_string(),
        })
    }

    /// `POST /upgrade`: a new proxy process takes over the sockets; returns
    /// (old pid, new pid) once it serves.
    /// The proxy waits up to its own readiness timeout for the new process,
    /// so this call's deadline is that timeout and the client's deadline.
    pub async fn upgrade(&self) -> Result<(u32, u32), AdminClientError> {
        let deadline = crate::runtime::handoff::READY_TIMEOUT + self.deadline;
        let (status, bytes) = self
            .raw_within(deadline, Method::POST, "/upgrade", None)
            .await?;
        let v: serde_json::Value = decode(status, &bytes)?;
        let pid = |k: &str| v[k].as_u64().and_then(|p| u32::try_from(p).ok());
        match (pid("old_pid"), pid("new_pid")) {
            (Some(o), Some(n)) => Ok((o, n)),
            _ => Err(AdminClientError::Decode {
                reason: format!("unexpected upgrade answer {v}"),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, AdminClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        decode(status, &bytes)
    }

    /// One call, within the client's deadline; the status and body as they
    /// came.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), AdminClientError> {
        self.raw_within(self.deadline, method, path, body).await
    }

    async fn raw_within(
        &self,
        deadline: Duration,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), AdminClientError> {
        match tokio::time::timeout(deadline, self.call(method.clone(), path, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(AdminClientError::TimedOut {
                call: format!("{method} {path}"),
                socket: self.socket.clone(),
                after: deadline,
            }),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(u16, Bytes), AdminClientError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            AdminClientError::Connect {
                path: self.socket.clone(),
                source,
            }
        })?;
        let transport = |e: hyper::Error| AdminClientError::Transport {
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(transport)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let has_body = body.is_some();
        let mut req = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *req.method_mut() = method;
        *req.uri_mut() = path.parse().map_err(|_| AdminClientError::Transport {
            reason: format!("`{path}` is not a valid request path"),
        })?;
        let h = req.headers_mut();
        h.insert(header::HOST, HeaderValue::from_static("localhost"));
        if has_body {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let resp = sender.send_request(req).await.map_err(transport)?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// A 2xx answer's JSON body, or the error the answer is.
fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, AdminClientError> {
    if !(200..300).contains(&status) {
        return Err(api_error(status, bytes));
    }
    serde_json::from_slice(bytes).map_err(|e| AdminClientError::Decode {
        reason: e.to_string(),
    })
}

fn api_error(status: u16, body: &[u8]) -> AdminClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    AdminClientError::Api { status, message }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_proxy_that_accepts_and_never_answers_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // Accepts every call and holds it open, answering nothing.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                conns.push(conn);
            }
        });
        let client = AdminClient::new(&socket).with_deadline(Duration::from_millis(200));
        let err = client.table().await.unwrap_err();
        assert!(
            matches!(&err, AdminClientError::TimedOut { call, after, .. }
                if call == "GET /table" && *after == Duration::from_millis(200)),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("did not answer `GET /table` within 0.2 s"),
            "{err}"
        );
        held.abort();
    }
}
