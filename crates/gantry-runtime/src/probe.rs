//! Readiness and liveness probes: HTTP, TCP connect, or a command; each
//! result comes with a human reason ("GET /health → 503 after 12 ms").
//! [`ProbeState`] applies the success and failure thresholds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeCheck {
    Http {
        path: String,
        /// Accepted status codes, inclusive.
        status_min: u16,
        status_max: u16,
        body_contains: Option<String>,
        /// Host header to send (default `127.0.0.1:<port>`), e.g. to reach
        /// an app's route through the proxy.
        #[serde(default)]
        host: Option<String>,
    },
    Tcp,
    Exec {
        command: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub check: ProbeCheck,
    /// Port to probe; the instance's port when `None`.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// Failures inside this much time after the app started do not count
    /// (a success does: an app that is up early is ready early).
    pub startup_grace: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    pub detail: String,
}

/// Where and how an exec probe runs.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub workdir: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// Runs one probe against `127.0.0.1:port`.
pub async fn run_once(spec: &ProbeSpec, port: u16, exec: &ExecContext) -> ProbeResult {
    let port = spec.port.unwrap_or(port);
    let started = Instant::now();
    let ms = |s: Instant| s.elapsed().as_millis();
    match &spec.check {
        ProbeCheck::Tcp => match tokio::time::timeout(
            spec.timeout,
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(_)) => ProbeResult {
                ok: true,
                detail: format!("connect :{port} ok after {} ms", ms(started)),
            },
            Ok(Err(e)) => fail(format!("connect :{port}: {}", short_io(&e))),
            Err(_) => fail(format!(
                "connect :{port}: timed out after {} ms",
                spec.timeout.as_millis()
            )),
        },
        ProbeCheck::Http {
            path,
            status_min,
            status_max,
            body_contains,
            host,
        } => {
            match tokio::time::timeout(spec.timeout, http_get(port, path, host.as_deref())).await {
                Err(_) => fail(format!(
                    "GET {path} → no answer within {} ms",
                    spec.timeout.as_millis()
                )),
                Ok(Err(e)) => fail(format!("GET {path} → {e}")),
                Ok(Ok((status, body))) => {
                    let took = ms(started);
                    if status < *status_min || status > *status_max {
                        fail(format!("GET {path} → {status} after {took} ms"))
                    } else if let Some(want) = body_contains
                        .as_ref()
                        .filter(|w| !String::from_utf8_lossy(&body).contains(w.as_str()))
                    {
                        fail(format!(
                            "GET {path} → {status} after {took} ms, body lacks `{want}`"
                        ))
                    } else {
                        ProbeResult {
                            ok: true,
                            detail: format!("GET {path} → {status} after {took} ms"),
                        }
                    }
                }
            }
        }
        ProbeCheck::Exec { command } => {
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(command)
                .current_dir(&exec.workdir)
                .env_clear()
                .envs(&exec.env)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(spec.timeout, async { cmd.status().await }).await {
                Err(_) => fail(format!(
                    "`{command}` did not finish within {} ms",
                    spec.timeout.as_millis()
                )),
                Ok(Err(e)) => fail(format!("`{command}` could not run: {e}")),
                Ok(Ok(s)) if s.success() => ProbeResult {
                    ok: true,
                    detail: format!("`{command}` exited 0 after {} ms", ms(started)),
                },
                Ok(Ok(s)) => fail(format!(
                    "`{command}` exited with {s} after {} ms",
                    ms(started)
                )),
            }
        }
    }
}

fn fail(detail: String) -> ProbeResult {
    ProbeResult { ok: false, detail }
}

fn short_io(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".into(),
        _ => e.to_string(),
    }
}

/// Why an HTTP probe got no answer. Its Display is what the probe's
/// detail shows after `GET /path → `.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    /// `connect refused`, or the io error in words.
    #[error("{}", short_io(.0))]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] hyper::http::Error),
}

async fn http_get(port: u16, path: &str, host: Option<&str>) -> Result<(u16, Bytes), HttpError> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(HttpError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(
            hyper::header::HOST,
            host.map_or_else(|| format!("127.0.0.1:{port}"), str::to_string),
        )
        .header(hyper::header::USER_AGENT, "gantry-probe")
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((status, body))
}

/// Thresholds over consecutive results. `healthy` starts unknown.
#[derive(Debug, Default, Clone)]
pub struct ProbeState {
    pub healthy: Option<bool>,
    successes: u32,
    failures: u32,
    pub last: Option<String>,
}

impl ProbeState {
    /// Records a result; returns the new verdict when it changed.
    pub fn observe(&mut self, spec: &ProbeSpec, r: &ProbeResult) -> Option<bool> {
        self.last = Some(r.detail.clone());
        if r.ok {
            self.successes += 1;
            self.failures = 0;
            if self.healthy != Some(true) && self.successes >= spec.success_threshold.max(1) {
                self.healthy = Some(true);
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.healthy != Some(false) && self.failures >= spec.failure_threshold.max(1) {
                self.healthy = Some(false);
                return Some(false);
            }
        }
        None
    }

    /// [`ProbeState::observe`] for a result taken `since_start` after the
    /// app started: a failure inside [`ProbeSpec::startup_grace`] is noted
    /// (`last`) but not counted.
    pub fn observe_since_start(
        &mut self,
        spec: &ProbeSpec,
        r: &ProbeResult,
        since_start: Duration,
    ) -> Option<bool> {
        if !r.ok && since_start < spec.startup_grace {
            self.last = Some(r.detail.clone());
            return None;
        }
        self.observe(spec, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(check: ProbeCheck) -> ProbeSpec {
        ProbeSpec {
            check,
            port: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(500),
            success_threshold: 2,
            failure_threshold: 3,
            startup_grace: Duration::ZERO,
        }
    }

    #[test]
    fn thresholds() {
        let s = spec(ProbeCheck::Tcp);
        let mut st = ProbeState::default();
        let ok = ProbeResult {
            ok: true,
            detail: "ok".into(),
        };
        let bad = ProbeResult {
            ok: false,
            detail: "bad".into(),
        };
        assert_eq!(st.observe(&s, &ok), None);
        assert_eq!(st.observe(&s, &ok), Some(true));
        assert_eq!(st.observe(&s, &bad), None);
        assert_eq!(st.observe(&s, &bad), None);
        assert_eq!(
            st.observe(&s, &ok),
            None,
            "a success resets the failure count"
        );
        for _ in 0..2 {
            assert_eq!(st.observe(&s, &bad), None);
        }
        assert_eq!(st.observe(&s, &bad), Some(false));
        assert_eq!(st.last.as_deref(), Some("bad"));
    }

    #[test]
    fn failures_inside_the_startup_grace_do_not_count() {
        let mut s = spec(ProbeCheck::Tcp);
        s.success_threshold = 1;
        s.failure_threshold = 1;
        s.startup_grace = Duration::from_secs(5);
        let bad = ProbeResult {
            ok: false,
            detail: "refused".into(),
        };
        let ok = ProbeResult {
            ok: true,
            detail: "ok".into(),
        };
        let mut st = ProbeState::default();
        for secs in 0..5 {
            assert_eq!(
                st.observe_since_start(&s, &bad, Duration::from_secs(secs)),
                None
            );
        }
        assert_eq!(st.healthy, None, "no verdict from failures in the grace");
        assert_eq!(st.last.as_deref(), Some("refused"));
        // A success inside the grace counts at once.
        let mut early = ProbeState::default();
        assert_eq!(
            early.observe_since_start(&s, &ok, Duration::from_secs(1)),
            Some(true)
        );
        // After the grace, failures count again.
        assert_eq!(
            st.observe_since_start(&s, &bad, Duration::from_secs(5)),
            Some(false)
        );
    }

    #[tokio::test]
    async fn tcp_and_http_against_real_sockets() {
        let exec = ExecContext {
            workdir: "/".into(),
            env: BTreeMap::new(),
        };
        // Nothing listening: refused. The port stays bound (but not
        // listening) meanwhile, so nothing else can take it.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = held.local_addr().unwrap().port();
        let r = run_once(&spec(ProbeCheck::Tcp), port, &exec).await;
        assert!(!r.ok);
        assert_eq!(r.detail, format!("connect :{port}: connect refused"));
        let r = run_once(
            &spec(ProbeCheck::Http {
                path: "/health".into(),
                status_min: 200,
                status_max: 299,
                body_contains: None,
                host: None,
            }),
            port,
            &exec,
        )
        .await;
        assert_eq!(r.detail, "GET /health → connect refused");
        drop(held);
        // A tiny HTTP server answering 503 then 200.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["503 Service Unavailable", "200 OK"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let body = "ready";
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let http = spec(ProbeCheck::Http {
            path: "/readiness".into(),
            status_min: 200,
            status_max: 299,
            body_contains: Some("ready".into()),
            host: None,
        });
        let r = run_once(&http, port, &exec).await;
        assert!(!r.ok);
        assert!(
            r.detail.starts_with("GET /readiness → 503 after "),
            "{}",
            r.detail
        );
        let r = run_once(&http, port, &exec).await;
        assert!(r.ok, "{}", r.detail);
        let r = run_once(
            &spec(ProbeCheck::Exec {
                command: "exit 3".into(),
            }),
            port,
            &exec,
        )
        .await;
        assert!(!r.ok);
        assert!(r.detail.contains("exit status: 3"), "{}", r.detail);
    }
}
