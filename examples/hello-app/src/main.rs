//! `hello-app`: a tiny HTTP/1.1 service used by Gantry's tests and demo.
//!
//! Standard library only, apart from `signal-hook` (std has no way to catch
//! SIGTERM). One thread per connection, at most `MAX_CONNECTIONS` at once;
//! keep-alive, pipelining, Content-Length and chunked request bodies.
//!
//! # Endpoints
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /` | 200 `hello from <APP_VERSION> (instance <INSTANCE_ID>)` (subject to `LATENCY_MS`, `ERROR_RATE`) |
//! | `GET /health` | liveness: 200 `ok`, or 500 once `FAIL_LIVENESS_AFTER_MS` has passed |
//! | `GET /readiness` | 200 `ready`, or 503 `not ready` (before `READY_DELAY_MS`, with `FAIL_READINESS=1`, or while draining after SIGTERM) |
//! | `GET /version` | JSON `{"version","instance","pid","started_at"}` (`started_at` in unix seconds) |
//! | `GET /env/<NAME>` | 200 with the value of env var NAME if NAME is listed in `EXPOSE_ENV`, else 404 |
//! | `GET /data` | JSON `{"dir", "files": [{"name","size"}]}` of `DATA_DIR` (404 if unset) |
//! | `POST`/`PUT /data/<file>` | writes the body to `DATA_DIR/<file>` (name: `[A-Za-z0-9._-]`, not `.`/`..`) |
//! | `GET /data/<file>` | reads it back (404 if absent); `DELETE` removes it |
//! | `GET /slow?ms=N` | sleeps N ms (default 1000, at most 600000), then 200 |
//! | `GET /status/<code>` | answers with that status code (200..=599) |
//! | `GET /child` | JSON `{"pid": N}` of the child from `SPAWN_CHILD=1`, else 404 |
//!
//! HEAD is accepted wherever GET is. Every response has `Content-Length`,
//! `X-App-Version` and `X-Instance-Id`, and echoes `X-Request-Id` if sent.
//!
//! # Environment
//!
//! | variable | meaning |
//! | --- | --- |
//! | `PORT` | required; port to listen on (missing/invalid: message on stderr, exit 2) |
//! | `HOST` | address to bind, default `127.0.0.1` |
//! | `APP_VERSION` | default `v1` |
//! | `INSTANCE_ID` | default `0` |
//! | `STARTUP_DELAY_MS` | sleep this long before binding the port |
//! | `READY_DELAY_MS` | listen at once, but `/readiness` is 503 until this long after start |
//! | `FAIL_READINESS=1` | `/readiness` is always 503 |
//! | `FAIL_LIVENESS_AFTER_MS` | `/health` answers 500 once this long has passed since start |
//! | `CRASH_AFTER_REQUESTS=N` | exit with code 3 after serving N requests (all paths count) |
//! | `CRASH_ON_START=1` | print an error and exit with code 1 at once |
//! | `ERROR_RATE=0.25` | this share of `GET /` answers 500; deterministic (every 4th here) |
//! | `LATENCY_MS=N` | add N ms to every `GET /` |
//! | `LATENCY_JITTER_MS=N` | add a further uniform 0..=N ms (xorshift seeded from pid and clock) |
//! | `LEAK_MB_PER_SEC=N` | allocate and touch N MiB every second, never freed |
//! | `ALLOC_MB=N` | allocate and touch N MiB at start, kept for the life of the process |
//! | `IGNORE_SIGTERM=1` | log SIGTERM and keep running (only SIGKILL stops it) |
//! | `SPAWN_CHILD=1` | start `sleep 100000` as a child in the same process group |
//! | `EXPOSE_ENV=A,B` | env vars readable through `GET /env/<NAME>` |
//! | `DATA_DIR` | directory for the `/data` endpoints (created if missing) |
//! | `LOG_FORMAT` | `json` (default) or `text` |
//! | `MAX_CONNECTIONS` | concurrent connection cap, default 512 (more wait in the backlog) |
//! | `IDLE_TIMEOUT_MS` | keep-alive idle / read timeout, default 30000 |
//! | `SHUTDOWN_TIMEOUT_MS` | how long SIGTERM waits for in-flight requests, default 10000 |
//!
//! # Signals
//!
//! On SIGTERM or SIGINT: `/readiness` turns 503, the listener is closed (new
//! connections are refused), in-flight requests finish (with
//! `Connection: close`), for at most `SHUTDOWN_TIMEOUT_MS`, then the process
//! logs `shutdown complete` and exits 0. A SIGTERM during `STARTUP_DELAY_MS`
//! exits 0 at once. The `SPAWN_CHILD` child is deliberately left alone: the
//! supervisor is expected to signal the whole process group.
//!
//! # Logs
//!
//! One JSON line per request on stdout:
//! `{"ts","level","msg":"request","method","path","status","duration_ms","bytes","request_id","version","instance"}`
//! plus `starting`, `listening`, `shutting down` and `shutdown complete`
//! lines. Errors go to stderr. Each line is flushed as written.

mod http;
mod log;

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use std::{env, fs, thread};

use http::{Conn, ReadError, Request, Response};
use log::{Logger, Val, json_string};

/// Exit code for bad configuration.
const EXIT_CONFIG: i32 = 2;
/// Exit code for `CRASH_AFTER_REQUESTS`.
const EXIT_CRASH: i32 = 3;

struct Config {
    host: IpAddr,
    port: u16,
    version: String,
    instance: String,
    startup_delay: Duration,
    ready_delay: Duration,
    fail_readiness: bool,
    fail_liveness_after: Option<Duration>,
    crash_after_requests: Option<u64>,
    /// Error share in parts per million.
    error_ppm: u64,
    latency: Duration,
    latency_jitter_ms: u64,
    leak_mb_per_sec: u64,
    alloc_mb: u64,
    ignore_sigterm: bool,
    spawn_child: bool,
    expose_env: HashSet<String>,
    data_dir: Option<PathBuf>,
    log_json: bool,
    max_connections: usize,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
}

fn var(name: &str) -> Result<Option<String>, String> {
    match env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v.trim().to_string())),
        Err(env::VarError::NotPresent) => Ok(None),
        Err(env::VarError::NotUnicode(_)) => Err(format!("{name} is not valid UTF-8")),
    }
}

fn num<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match var(name)? {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={v:?} is not a valid non-negative integer")),
    }
}

fn ms(name: &str) -> Result<Option<Duration>, String> {
    Ok(num::<u64>(name)?.map(Duration::from_millis))
}

fn flag(name: &str) -> Result<bool, String> {
    match var(name)?.as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(v) => Err(format!("{name}={v:?}: expected 1 or 0")),
    }
}

impl Config {
    fn from_env() -> Result<Config, String> {
        let port = match var("PORT")? {
            None => return Err("PORT is required (the port to listen on)".into()),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("PORT={p:?} is not a valid port (1-65535)")),
            },
        };
        let host = match var("HOST")? {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) if h == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) => h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("HOST={h:?} is not an IP address"))?,
        };
        let error_ppm = match var("ERROR_RATE")? {
            None => 0,
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => (r * 1_000_000.0).round() as u64,
                _ => return Err(format!("ERROR_RATE={v:?} must be a number between 0 and 1")),
            },
        };
        let log_json = match var("LOG_FORMAT")?.as_deref() {
            None | Some("json") => true,
            Some("text") => false,
            Some(v) => return Err(format!("LOG_FORMAT={v:?}: expected json or text")),
        };
        let expose_env = var("EXPOSE_ENV")?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let max_connections = num::<usize>("MAX_CONNECTIONS")?.unwrap_or(512);
        if max_connections == 0 {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        Ok(Config {
            host,
            port,
            version: var("APP_VERSION")?.unwrap_or_else(|| "v1".into()),
            instance: var("INSTANCE_ID")?.unwrap_or_else(|| "0".into()),
            startup_delay: ms("STARTUP_DELAY_MS")?.unwrap_or_default(),
            ready_delay: ms("READY_DELAY_MS")?.unwrap_or_default(),
            fail_readiness: flag("FAIL_READINESS")?,
            fail_liveness_after: ms("FAIL_LIVENESS_AFTER_MS")?,
            crash_after_requests: num("CRASH_AFTER_REQUESTS")?,
            error_ppm,
            latency: ms("LATENCY_MS")?.unwrap_or_default(),
            latency_jitter_ms: num("LATENCY_JITTER_MS")?.unwrap_or(0),
            leak_mb_per_sec: num("LEAK_MB_PER_SEC")?.unwrap_or(0),
            alloc_mb: num("ALLOC_MB")?.unwrap_or(0),
            ignore_sigterm: flag("IGNORE_SIGTERM")?,
            spawn_child: flag("SPAWN_CHILD")?,
            expose_env,
            data_dir: var("DATA_DIR")?.map(PathBuf::from),
            log_json,
            max_connections,
            idle_timeout: ms("IDLE_TIMEOUT_MS")?.unwrap_or(Duration::from_secs(30)),
            shutdown_timeout: ms("SHUTDOWN_TIMEOUT_MS")?.unwrap_or(Duration::from_secs(10)),
        })
    }
}

/// Counts of live connections and in-flight requests, for the connection
/// cap and for draining on shutdown.
#[derive(Default)]
struct Counts {
    connections: usize,
    in_flight: usize,
}

struct App {
    cfg: Config,
    log: Logger,
    started: Instant,
    started_unix: u64,
    /// Requests begun, all paths (for `CRASH_AFTER_REQUESTS`).
    requests: AtomicU64,
    /// Requests to `/` (for `ERROR_RATE`).
    root_requests: AtomicU64,
    rng: AtomicU64,
    shutting_down: AtomicBool,
    counts: Mutex<Counts>,
    changed: Condvar,
    child_pid: OnceLock<u32>,
    /// Where the signal thread connects to wake a blocked `accept`.
    wake_addr: OnceLock<SocketAddr>,
}

/// Decrements a counter in [`Counts`] when dropped, even on panic.
struct CountGuard<'a> {
    app: &'a App,
    request: bool,
}

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        let mut c = self.app.counts.lock().unwrap_or_else(|e| e.into_inner());
        if self.request {
            c.in_flight -= 1;
        } else {
            c.connections -= 1;
        }
        self.app.changed.notify_all();
    }
}

impl App {
    fn lock_counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin_request(&self) -> CountGuard<'_> {
        self.lock_counts().in_flight += 1;
        CountGuard {
            app: self,
            request: true,
        }
    }

    fn draining(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Uniform random number in `0..=max` (xorshift64).
    fn random(&self, max: u64) -> u64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        loop {
            let mut n = x;
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            match self
                .rng
                .compare_exchange_weak(x, n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n % (max + 1),
                Err(cur) => x = cur,
            }
        }
    }

    /// Whether the n-th request to `/` should fail: spreads exactly
    /// `error_ppm` per million failures evenly over the request sequence.
    fn inject_error(&self) -> bool {
        let p = self.cfg.error_ppm;
        if p == 0 {
            return false;
        }
        let n = self.root_requests.fetch_add(1, Ordering::Relaxed);
        (n + 1) * p / 1_000_000 > n * p / 1_000_000
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Allocates `mb` MiB, writes every byte (so the pages are resident) and
/// leaks it.
fn allocate_touched(mb: u64) {
    for _ in 0..mb {
        let block = vec![0x5au8; 1 << 20];
        std::hint::black_box(&block);
        Box::leak(block.into_boxed_slice());
    }
}

fn main() {
    if flag("CRASH_ON_START") == Ok(true) {
        eprintln!("hello-app: CRASH_ON_START=1 set, exiting with code 1");
        std::process::exit(1);
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hello-app: configuration error: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    let log = Logger {
        json: cfg.log_json,
        version: cfg.version.clone(),
        instance: cfg.instance.clone(),
    };
    let pid = std::process::id();
    let seed = u64::from(pid) << 32
        ^ u64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos(),
        );
    let app: &'static App = Box::leak(Box::new(App {
        cfg,
        log,
        started: Instant::now(),
        started_unix: unix_now(),
        requests: AtomicU64::new(0),
        root_requests: AtomicU64::new(0),
        rng: AtomicU64::new(seed | 1),
        shutting_down: AtomicBool::new(false),
        counts: Mutex::new(Counts::default()),
        changed: Condvar::new(),
        child_pid: OnceLock::new(),
        wake_addr: OnceLock::new(),
    }));
    let cfg = &app.cfg;
    app.log.info(
        "starting",
        &[
            ("pid", pid.into()),
            ("port", cfg.port.into()),
            (
                "startup_delay_ms",
                (cfg.startup_delay.as_millis() as u64).into(),
            ),
        ],
    );

    if let Err(e) = install_signal_handlers(app) {
        app.log.error(
            "cannot install signal handlers",
            &[("error", e.to_string().as_str().into())],
        );
        std::process::exit(1);
    }

    if cfg.alloc_mb > 0 {
        allocate_touched(cfg.alloc_mb);
        app.log
            .info("allocated memory", &[("alloc_mb", cfg.alloc_mb.into())]);
    }
    if cfg.leak_mb_per_sec > 0 {
        thread::spawn(move || {
            let mut total = 0u64;
            loop {
                let t = Instant::now();
                allocate_touched(app.cfg.leak_mb_per_sec);
                total += app.cfg.leak_mb_per_sec;
                app.log
                    .info("leaked memory", &[("leaked_mb_total", total.into())]);
                thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
            }
        });
    }
    if cfg.spawn_child {
        spawn_child(app);
    }

    // Startup delay, cut short by a shutdown signal.
    let until = Instant::now() + cfg.startup_delay;
    while Instant::now() < until {
        if app.draining() {
            app.log.info(
                "shutdown complete",
                &[("reason", "signal during startup delay".into())],
            );
            std::process::exit(0);
        }
        thread::sleep(
            until
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(10)),
        );
    }

    let addr = SocketAddr::new(cfg.host, cfg.port);
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            app.log.error(
                "cannot bind",
                &[
                    ("addr", addr.to_string().as_str().into()),
                    ("error", e.to_string().as_str().into()),
                ],
            );
            std::process::exit(1);
        }
    };
    let wake = match cfg.host {
        IpAddr::V4(a) if a.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), cfg.port)
        }
        IpAddr::V6(a) if a.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), cfg.port)
        }
        _ => addr,
    };
    let _ = app.wake_addr.set(wake);
    app.log.info(
        "listening",
        &[
            ("addr", addr.to_string().as_str().into()),
            ("pid", pid.into()),
            (
                "ready_delay_ms",
                (cfg.ready_delay.as_millis() as u64).into(),
            ),
        ],
    );

    accept_loop(app, listener);
    drain_and_exit(app);
}

fn accept_loop(app: &'static App, listener: TcpListener) {
    loop {
        // Connection cap: wait for a slot (connections queue in the backlog).
        {
            let mut c = app.lock_counts();
            while c.connections >= app.cfg.max_connections && !app.draining() {
                c = app
                    .changed
                    .wait_timeout(c, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if app.draining() {
            return;
        }
        let (stream, peer) = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                if app.draining() {
                    return;
                }
                // EMFILE and friends: back off briefly instead of spinning.
                app.log
                    .error("accept failed", &[("error", e.to_string().as_str().into())]);
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if app.draining() {
            // The signal thread's wake-up connection, or a client that lost
            // the race with shutdown: either way no longer accepted.
            return;
        }
        app.lock_counts().connections += 1;
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _guard = CountGuard {
                    app,
                    request: false,
                };
                serve_connection(app, stream, peer);
            });
        if let Err(e) = spawned {
            // The closure (and so its guard) never ran.
            let mut c = app.lock_counts();
            c.connections -= 1;
            drop(c);
            app.log.error(
                "cannot spawn connection thread",
                &[("error", e.to_string().as_str().into())],
            );
        }
    }
}

/// Waits for in-flight requests to finish (bounded) and exits 0.
fn drain_and_exit(app: &'static App) -> ! {
    let deadline = Instant::now() + app.cfg.shutdown_timeout;
    let mut left;
    loop {
        {
            let mut c = app.lock_counts();
            while c.in_flight > 0 && Instant::now() < deadline {
                let wait = deadline.saturating_duration_since(Instant::now());
                c = app
                    .changed
                    .wait_timeout(c, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            left = c.in_flight;
        }
        if left > 0 || Instant::now() >= deadline {
            break;
        }
        // A request whose bytes were arriving as we closed may only just
        // have been picked up; give it a moment to register.
        thread::sleep(Duration::from_millis(50));
        if app.lock_counts().in_flight == 0 {
            break;
        }
    }
    if left > 0 {
        app.log.warn(
            "shutdown timeout, abandoning requests",
            &[("in_flight", (left as u64).into())],
        );
    }
    app.log
        .info("shutdown complete", &[("exit_code", 0i64.into())]);
    std::process::exit(0);
}

fn begin_shutdown(app: &'static App, signal: &str) {
    if app.shutting_down.swap(true, Ordering::SeqCst) {
        return;
    }
    let in_flight = app.lock_counts().in_flight as u64;
    app.log.info(
        "shutting down",
        &[("signal", signal.into()), ("in_flight", in_flight.into())],
    );
    app.changed.notify_all();
    // Wake the accept loop so it closes the listener.
    if let Some(addr) = app.wake_addr.get() {
        let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
    }
}

fn install_signal_handlers(app: &'static App) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let term = Arc::new(AtomicBool::new(false));
    let int = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(SIGTERM, Arc::clone(&term))?;
    signal_hook::flag::register(SIGINT, Arc::clone(&int))?;
    let (mut rx, tx) = UnixStream::pair()?;
    signal_hook::low_level::pipe::register(SIGTERM, tx.try_clone()?)?;
    signal_hook::low_level::pipe::register(SIGINT, tx)?;
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 16];
            loop {
                match rx.read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
                if term.swap(false, Ordering::SeqCst) {
                    if app.cfg.ignore_sigterm {
                        app.log
                            .warn("received SIGTERM, ignoring it (IGNORE_SIGTERM=1)", &[]);
                    } else {
                        begin_shutdown(app, "SIGTERM");
                    }
                }
                if int.swap(false, Ordering::SeqCst) {
                    begin_shutdown(app, "SIGINT");
                }
            }
        })?;
    Ok(())
}

fn spawn_child(app: &'static App) {
    match Command::new("sleep")
        .arg("100000")
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            let pid = child.id();
            let _ = app.child_pid.set(pid);
            app.log.info("spawned child", &[("child_pid", pid.into())]);
            thread::spawn(move || {
                let status = child.wait();
                let status = status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|e| e.to_string());
                app.log.info(
                    "child exited",
                    &[
                        ("child_pid", pid.into()),
                        ("status", status.as_str().into()),
                    ],
                );
            });
        }
        Err(e) => app.log.error(
            "cannot spawn child",
            &[("error", e.to_string().as_str().into())],
        ),
    }
}

fn serve_connection(app: &'static App, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(app.cfg.idle_timeout));
    let _ = stream.set_write_timeout(Some(app.cfg.idle_timeout));
    let mut conn = Conn::new(stream);
    loop {
        if let Err(e) = conn.wait_for_request() {
            if let ReadError::Io(e) = e
                && e.kind() != std::io::ErrorKind::ConnectionReset
            {
                app.log.warn(
                    "connection error",
                    &[
                        ("peer", peer.to_string().as_str().into()),
                        ("error", e.to_string().as_str().into()),
                    ],
                );
            }
            break;
        }
        let guard = app.begin_request();
        let start = Instant::now();
        let n = app.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let req = conn.read_head().and_then(|head| conn.read_body(head));
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                let (status, why) = match e {
                    ReadError::Bad(status, why) => (status, why),
                    ReadError::Timeout { partial: true } => (408, "timed out reading request"),
                    ReadError::Closed | ReadError::Timeout { .. } | ReadError::Io(_) => {
                        drop(guard);
                        break;
                    }
                };
                let resp = Response::text(status, why);
                let bytes = resp.to_bytes(1, false, false, &log::http_date_now());
                let _ = conn.stream.write_all(&bytes);
                app.log.info(
                    "request",
                    &[
                        ("method", Val::Null),
                        ("path", Val::Null),
                        ("status", status.into()),
                        (
                            "duration_ms",
                            (start.elapsed().as_secs_f64() * 1000.0).into(),
                        ),
                        ("bytes", (resp.body.len() as u64).into()),
                        ("request_id", Val::Null),
                        ("error", why.into()),
                    ],
                );
                drop(guard);
                linger_close(&mut conn.stream);
                return;
            }
        };
        let head_only = req.method == "HEAD";
        let mut resp = route(app, &req);
        resp.headers
            .push(("X-App-Version", app.cfg.version.clone()));
        resp.headers
            .push(("X-Instance-Id", app.cfg.instance.clone()));
        let request_id = req.header("x-request-id").filter(|v| v.len() <= 200);
        if let Some(id) = request_id {
            resp.headers.push(("X-Request-Id", id.to_string()));
        }
        let crash = app.cfg.crash_after_requests.is_some_and(|limit| n >= limit);
        let keep_alive = req.keep_alive && !app.draining() && !crash;
        let bytes = resp.to_bytes(req.minor, keep_alive, head_only, &log::http_date_now());
        let written = conn.stream.write_all(&bytes);
        app.log.info(
            "request",
            &[
                ("method", req.method.as_str().into()),
                ("path", req.path.as_str().into()),
                ("status", resp.status.into()),
                (
                    "duration_ms",
                    (start.elapsed().as_secs_f64() * 1000.0).into(),
                ),
                ("bytes", (resp.body.len() as u64).into()),
                ("request_id", request_id.into()),
            ],
        );
        if crash && app.cfg.crash_after_requests == Some(n) {
            let _ = conn.stream.shutdown(Shutdown::Write);
            app.log.error(
                "crashing as configured",
                &[
                    ("requests", n.into()),
                    ("exit_code", i64::from(EXIT_CRASH).into()),
                ],
            );
            std::process::exit(EXIT_CRASH);
        }
        drop(guard);
        if written.is_err() || !keep_alive {
            break;
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Write);
}

/// Closes after an error answer without losing it: closing a socket with
/// unread input makes the kernel send a reset, which can discard the answer
/// before the client reads it. So stop writing, then read and drop what the
/// client still sends, briefly and boundedly.
fn linger_close(stream: &mut TcpStream) {
    use std::io::Read;
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 8192];
    let mut total = 0;
    while total < 1 << 20 && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

fn route(app: &'static App, req: &Request) -> Response {
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    let path = req.path.as_str();
    let only_get = |f: &dyn Fn() -> Response| {
        if get {
            f()
        } else {
            Response::text(405, "method not allowed").with_header("Allow", "GET, HEAD")
        }
    };
    let cfg = &app.cfg;
    match path {
        "/" => only_get(&|| root(app)),
        "/health" => only_get(&|| match cfg.fail_liveness_after {
            Some(after) if app.started.elapsed() >= after => Response::text(500, "unhealthy"),
            _ => Response::text(200, "ok"),
        }),
        "/readiness" => only_get(&|| {
            if cfg.fail_readiness || app.draining() || app.started.elapsed() < cfg.ready_delay {
                Response::text(503, "not ready")
            } else {
                Response::text(200, "ready")
            }
        }),
        "/version" => only_get(&|| {
            Response::json(
                200,
                format!(
                    "{{\"version\":{},\"instance\":{},\"pid\":{},\"started_at\":{}}}",
                    json_string(&cfg.version),
                    json_string(&cfg.instance),
                    std::process::id(),
                    app.started_unix
                ),
            )
        }),
        "/child" => only_get(&|| match app.child_pid.get() {
            Some(pid) => Response::json(200, format!("{{\"pid\":{pid}}}")),
            None => Response::text(404, "no child (set SPAWN_CHILD=1)"),
        }),
        "/slow" => only_get(&|| {
            let ms = req
                .query_param("ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(600_000);
            thread::sleep(Duration::from_millis(ms));
            Response::text(200, format!("slept {ms} ms"))
        }),
        "/data" => only_get(&|| list_data(app)),
        _ => {
            if let Some(name) = path.strip_prefix("/env/") {
                only_get(&|| match env::var(name) {
                    Ok(v) if cfg.expose_env.contains(name) => {
                        Response::new(200, "text/plain; charset=utf-8", v)
                    }
                    _ => Response::text(404, "not exposed"),
                })
            } else if let Some(code) = path.strip_prefix("/status/") {
                only_get(&|| match code.parse::<u16>() {
                    Ok(c) if (200..=599).contains(&c) => Response::text(c, format!("status {c}")),
                    _ => Response::text(400, "status must be 200..=599"),
                })
            } else if let Some(name) = path.strip_prefix("/data/") {
                data_file(app, req, name)
            } else {
                Response::text(404, "not found")
            }
        }
    }
}

fn root(app: &'static App) -> Response {
    let cfg = &app.cfg;
    let mut delay = cfg.latency;
    if cfg.latency_jitter_ms > 0 {
        delay += Duration::from_millis(app.random(cfg.latency_jitter_ms));
    }
    if !delay.is_zero() {
        thread::sleep(delay);
    }
    if app.inject_error() {
        return Response::text(500, format!("injected error from {}", cfg.version));
    }
    Response::text(
        200,
        format!("hello from {} (instance {})", cfg.version, cfg.instance),
    )
}

fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn list_data(app: &'static App) -> Response {
    let Some(dir) = &app.cfg.data_dir else {
        return Response::text(404, "DATA_DIR is not set");
    };
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for e in entries.flatten() {
                let Ok(meta) = e.metadata() else { continue };
                if meta.is_file() {
                    files.push((e.file_name().to_string_lossy().into_owned(), meta.len()));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Response::text(500, format!("cannot read DATA_DIR: {e}")),
    }
    files.sort();
    let items: Vec<String> = files
        .iter()
        .map(|(n, size)| format!("{{\"name\":{},\"size\":{size}}}", json_string(n)))
        .collect();
    Response::json(
        200,
        format!(
            "{{\"dir\":{},\"files\":[{}]}}",
            json_string(&dir.to_string_lossy()),
            items.join(",")
        ),
    )
}

fn data_file(app: &'static App, req: &Request, name: &str) -> Response {
    let Some(dir) = &app.cfg.data_dir else {
        return Response::text(404, "DATA_DIR is not set");
    };
    if !valid_file_name(name) {
        return Response::text(400, "file names are limited to [A-Za-z0-9._-]");
    }
    let path = dir.join(name);
    match req.method.as_str() {
        "GET" | "HEAD" => match fs::read(&path) {
            Ok(data) => Response::new(200, "application/octet-stream", data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Response::text(404, "no such file")
            }
            Err(e) => Response::text(500, format!("read failed: {e}")),
        },
        "POST" | "PUT" => {
            // Write to a temporary name and rename, so readers never see a
            // half-written file.
            let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
            let result = fs::create_dir_all(dir)
                .and_then(|()| fs::write(&tmp, &req.body))
                .and_then(|()| fs::rename(&tmp, &path));
            match result {
                Ok(()) => Response::text(201, format!("stored {} bytes", req.body.len())),
                Err(e) => {
                    let _ = fs::remove_file(&tmp);
                    app.log.error(
                        "data write failed",
                        &[
                            ("file", name.into()),
                            ("error", e.to_string().as_str().into()),
                        ],
                    );
                    Response::text(500, format!("write failed: {e}"))
                }
            }
        }
        "DELETE" => match fs::remove_file(&path) {
            Ok(()) => Response::text(200, "deleted"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Response::text(404, "no such file")
            }
            Err(e) => Response::text(500, format!("delete failed: {e}")),
        },
        _ => Response::text(405, "method not allowed")
            .with_header("Allow", "GET, HEAD, POST, PUT, DELETE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_restricted() {
        for ok in ["a.txt", "A-b_c.9", ".hidden"] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "%2e%2e", "é"] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn error_spread_is_exact() {
        let p = 250_000u64;
        let errors = (0..400u64)
            .filter(|n| (n + 1) * p / 1_000_000 > n * p / 1_000_000)
            .count();
        assert_eq!(errors, 100);
    }
}
