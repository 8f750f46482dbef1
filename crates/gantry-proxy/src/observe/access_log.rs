//! The access log: one JSON line per request, written by a dedicated thread
//! so a slow terminal or disk never blocks a request. The queue is bounded;
//! when it is full, lines are dropped and counted (and the count is logged).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use serde::Serialize;

const QUEUE: usize = 8192;

/// One access log line. The query string is not logged: it may carry
/// secrets.
#[derive(Serialize)]
pub(crate) struct Entry<'a> {
    pub(crate) time: String,
    pub(crate) request_id: &'a str,
    pub(crate) route: Option<&'a str>,
    pub(crate) set: Option<&'a str>,
    pub(crate) instance: Option<SocketAddr>,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) status: u16,
    pub(crate) duration_ms: f64,
    /// Response body bytes sent to the client.
    pub(crate) bytes: u64,
    /// Request body bytes sent to the backend.
    pub(crate) bytes_in: u64,
    pub(crate) client_ip: IpAddr,
}

pub(crate) fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

pub(crate) fn duration_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub(crate) struct AccessLog {
    tx: Option<SyncSender<String>>,
    dropped: AtomicU64,
}

impl AccessLog {
    pub(crate) fn off() -> AccessLog {
        AccessLog {
            tx: None,
            dropped: AtomicU64::new(0),
        }
    }

    /// Starts the writer thread; it ends, having written every queued
    /// line, when the last `AccessLog` handle is dropped.
    pub(crate) fn start(
        writer: Box<dyn Write + Send>,
    ) -> (AccessLog, Option<std::thread::JoinHandle<()>>) {
        let (tx, rx) = sync_channel(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("gantry-access-log".into())
            .spawn(move || write_loop(rx, writer));
        match spawned {
            Ok(handle) => (
                AccessLog {
                    tx: Some(tx),
                    dropped: AtomicU64::new(0),
                },
                Some(handle),
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log thread; access log is off");
                (AccessLog::off(), None)
            }
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub(crate) fn log(&self, entry: &Entry<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        match tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(dropped = n, "access log queue full; lines dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn write_loop(rx: Receiver<String>, writer: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::new(writer);
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut result = out.write_all(line.as_bytes());
        // Batch what is queued, then flush so lines show up promptly.
        while let Ok(more) = rx.try_recv() {
            result = result.and_then(|_| out.write_all(more.as_bytes()));
        }
        result = result.and_then(|_| out.flush());
        match result {
            Err(e) if !failed => {
                failed = true;
                tracing::error!(error = %e, "cannot write the access log");
            }
            Ok(()) => failed = false,
            Err(_) => {}
        }
    }
}
