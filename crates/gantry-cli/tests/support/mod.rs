//! Test support: a real `gantry server` on a temp data dir, and the real
//! `gantry` binary to drive it.
//!
//! Nothing here can hang a test: every wait has a deadline and fails
//! saying what it waited for and what it saw ([`eventually`], [`Lines`],
//! [`OutputInTime`]), and everything a test starts is stopped when its
//! handle is dropped, also when the test fails ([`KillOnDrop`],
//! [`TestServer`], [`ProxyProcess`], [`HelloApp`], [`reap`]).
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod deploy;

/// How long one `gantry` command of a test may take before the test fails
/// instead of hanging (a `deploy --wait` of the slowest test takes well
/// under a minute).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(300);
/// How long a server or proxy may take to print where it listens.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// Calls `check` every `every` until it gives `Ok`, for at most `within`;
/// then fails, naming `what` it waited for and what `check` last saw (its
/// `Err`).
#[track_caller]
pub fn eventually<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(t) => return t,
            Err(seen) if Instant::now() >= deadline => {
                panic!("waited {within:?} for {what}; last saw: {seen}")
            }
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// [`eventually`] for async tests: polls with `tokio::time::sleep`.
pub async fn eventually_async<T, F>(
    what: &str,
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> F,
) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(t) => return t,
            Err(seen) if Instant::now() >= deadline => {
                panic!("waited {within:?} for {what}; last saw: {seen}")
            }
            Err(_) => tokio::time::sleep(every).await,
        }
    }
}

/// Awaits `fut` for at most `within`; then fails, naming `what` it waited
/// for and what `seen` says of the state of things.
pub async fn in_time<T>(
    what: &str,
    within: Duration,
    seen: impl Fn() -> String,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(t) => t,
        Err(_) => panic!("waited {within:?} for {what}; saw: {}", seen()),
    }
}

/// How long a call to the server's API or the proxy's admin socket, or a
/// whole async test body, may take.
pub const CALL_DEADLINE: Duration = Duration::from_secs(120);

/// `rt.block_on(fut)` for at most [`CALL_DEADLINE`]; then the test fails,
/// naming `what` it waited for.
#[track_caller]
pub fn block_on<T>(
    rt: &tokio::runtime::Runtime,
    what: &str,
    fut: impl std::future::Future<Output = T>,
) -> T {
    // The timer needs the runtime: made inside it.
    rt.block_on(async { tokio::time::timeout(CALL_DEADLINE, fut).await })
        .unwrap_or_else(|_| panic!("{what} did not finish within {CALL_DEADLINE:?}"))
}

/// A child process that is SIGKILLed (and reaped) when dropped, so a
/// failed test leaves it behind no more than a passing one.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.child_ref().id()
    }

    fn child_ref(&self) -> &Child {
        self.0.as_ref().expect("a child until dropped")
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a child until dropped")
    }

    /// The child, no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        self.0.take().expect("a child until dropped")
    }

    /// [`wait_within`] for this child.
    #[track_caller]
    pub fn wait_within(&mut self, what: &str, within: Duration) -> ExitStatus {
        wait_within(self.child(), what, within)
    }
}

/// Waits for `child` to exit, for at most `within`; then SIGKILLs it and
/// fails, naming `what` it is.
#[track_caller]
pub fn wait_within(child: &mut Child, what: &str, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is a live process (not a zombie).
pub fn alive(pid: u32) -> bool {
    gantry_runtime::procfs::stat(pid as i32).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Waits (at most `within`) until process `pid`, not a child of this one,
/// has exited; fails naming `what` it is.
#[track_caller]
pub fn wait_gone(pid: u32, what: &str, within: Duration) {
    eventually(
        &format!("{what} (pid {pid}) to exit"),
        within,
        Duration::from_millis(20),
        || match alive(pid) {
            true => Err("it still runs".into()),
            false => Ok(()),
        },
    )
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Running a command with a deadline: what `Command::output` does
/// (stdin from /dev/null, stdout and stderr captured), but a command that
/// does not finish in time is SIGKILLed and the test fails saying which
/// command it was and what it had printed.
pub trait OutputInTime {
    /// [`OutputInTime::output_within`] [`COMMAND_DEADLINE`].
    fn output_in_time(&mut self) -> std::io::Result<Output>;
    fn output_within(&mut self, within: Duration) -> std::io::Result<Output>;
}

impl OutputInTime for Command {
    fn output_in_time(&mut self) -> std::io::Result<Output> {
        self.output_within(COMMAND_DEADLINE)
    }

    fn output_within(&mut self, within: Duration) -> std::io::Result<Output> {
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(wait_output(child, &format!("{self:?}"), within))
    }
}

/// `child.wait_with_output()`, for at most `within`; then the child is
/// SIGKILLed and the test fails, naming `what` and what it printed.
#[track_caller]
pub fn wait_output(child: Child, what: &str, within: Duration) -> Output {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(within) {
        Ok(out) => out.expect("wait for the command"),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let printed = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(Result::ok)
                .map(|o| {
                    format!(
                        "stdout: {}\nstderr: {}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            panic!("{what} did not finish within {within:?}; killed it. {printed}")
        }
    }
}

/// The lines a child writes on a pipe, read by a thread of their own (so
/// the child never blocks on a full pipe, also once nobody looks), and
/// waited for with a deadline. Bytes that are not UTF-8 are read lossily.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    /// Every line taken so far.
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(input: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(input);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf);
                // Nobody listening any more: keep draining.
                let _ = tx.send(line.trim_end_matches(['\n', '\r']).to_string());
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Takes lines until `f` gives `Some` for one, for at most `within`;
    /// the error says whether the output ended or time ran out, and what
    /// was seen.
    pub fn find<T>(
        &mut self,
        within: Duration,
        mut f: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = f(&line);
                    self.seen.push(line);
                    if let Some(t) = hit {
                        return Ok(t);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("nothing within {within:?}; saw {:#?}", self.seen));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!("the output ended; saw {:#?}", self.seen));
                }
            }
        }
    }

    /// The first line that contains `needle`, within `within`, or the
    /// test fails.
    #[track_caller]
    pub fn expect(&mut self, needle: &str, within: Duration) -> String {
        self.find(within, |l| l.contains(needle).then(|| l.to_string()))
            .unwrap_or_else(|e| panic!("no line with `{needle}`: {e}"))
    }

    /// Takes every line that has come so far, without waiting.
    pub fn take_ready(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.seen.push(l);
        }
    }

    /// Takes lines until the output ends, for at most `within`.
    pub fn take_to_end(&mut self, within: Duration) {
        let _ = self.find(within, |_| None::<()>);
    }
}

/// Every live process that belongs to `dir`: its command line, its
/// environment or its working directory names it (servers and proxies
/// through their data and state directories, shims through their
/// instance directory, apps, hooks and builds through `DATA_DIR` or their
/// working directory). Never this test process. `(pid, command line)`.
pub fn processes_of(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me
            || gantry_runtime::procfs::stat(pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
        {
            continue;
        }
        let read = |f: &str| {
            std::fs::read(e.path().join(f))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default()
        };
        let cmdline = read("cmdline");
        let cwd = std::fs::read_link(e.path().join("cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if cmdline.contains(&needle) || read("environ").contains(&needle) || cwd.contains(&needle) {
            out.push((pid, cmdline.trim().to_string()));
        }
    }
    out
}

/// SIGKILLs the process group of every app recorded under `dir`, then
/// every process left that belongs to `dir` ([`processes_of`]): what a
/// test started under `dir` does not outlive it.
pub fn reap(dir: &Path) {
    kill_apps(dir);
    for (pid, _) in processes_of(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A temporary directory whose processes ([`reap`]) are killed before it
/// is removed.
pub struct ReapedDir(pub tempfile::TempDir);

impl ReapedDir {
    pub fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for ReapedDir {
    fn drop(&mut self) {
        reap(self.0.path());
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// The repository root (for examples and fixtures).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub api: String,
    pub socket: PathBuf,
    extra: Vec<String>,
    /// Environment variables the server gets (e.g. GANTRY_SECRET_KEY).
    env: Vec<(String, String)>,
    /// Everything the server wrote on stderr.
    pub log: Arc<Mutex<String>>,
    /// Disconnected once the running server's stderr is read to its end.
    log_end: Option<mpsc::Receiver<()>>,
}

/// Spawns `gantry server` and reads where it listens from its stdout
/// (within [`START_DEADLINE`]). The receiver is disconnected once the
/// server's stderr is read to its end (it has exited).
fn spawn_server(
    data: &Path,
    extra: &[&str],
    env: &[(String, String)],
    log: Arc<Mutex<String>>,
) -> (Child, String, PathBuf, mpsc::Receiver<()>) {
    let mut child = KillOnDrop::new(
        Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env_remove("GANTRY_SERVER")
            .env_remove("GANTRY_TOKEN")
            .env_remove("GANTRY_SECRET_KEY")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gantry server"),
    );
    let stderr = child.child().stderr.take().unwrap();
    let (done, log_end) = mpsc::channel();
    let server_log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = server_log.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
        drop(done);
    });
    let mut out = Lines::new(child.child().stdout.take().unwrap());
    let (mut api, mut socket) = (None, None);
    let found = out.find(START_DEADLINE, |line| {
        if let Some(a) = line.trim().strip_prefix("api:") {
            api = Some(a.trim().to_string());
        }
        if let Some(s) = line.trim().strip_prefix("socket:") {
            socket = Some(PathBuf::from(s.trim().trim_start_matches("unix:")));
        }
        api.clone().zip(socket.clone())
    });
    let (api, socket) = found.unwrap_or_else(|e| {
        // Kill it first, so its whole log is there to show.
        let _ = child.child().kill();
        let _ = child.child().wait();
        let _ = log_end.recv_timeout(Duration::from_secs(5));
        panic!(
            "gantry server was not ready ({e}); its log:\n{}",
            log.lock().unwrap_or_else(|e| e.into_inner())
        )
    });
    // The stdout reader keeps draining, so the server never blocks on it.
    (child.into_inner(), api, socket, log_end)
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Each server of a test process gets its own block of instance ports
    /// (tests run in parallel; on a real host one server owns the range).
    pub fn start_with(extra: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let dir = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if !extra.contains(&"--port-range") {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200;
            let first = 20000 + n * 50;
            args.extend(["--port-range".into(), format!("{first}-{}", first + 49)]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_in(dir, &args)
    }

    /// Starts a server on an existing data dir (to restart one).
    pub fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Self {
        Self::start_in_with_env(dir, extra, &[])
    }

    /// Starts a server whose environment has `env` too (kept on restarts).
    pub fn start_in_with_env(dir: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = Arc::new(Mutex::new(String::new()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, api, socket, log_end) =
            spawn_server(&dir.path().join("data"), extra, &env, log.clone());
        Self {
            dir,
            child: Some(child),
            api,
            socket,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            log,
            log_end: Some(log_end),
        }
    }

    /// kill -9 the server, run `meanwhile`, then start a new one on the
    /// same data dir.
    pub fn kill9_and_restart_paused(&mut self, meanwhile: impl FnOnce()) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        meanwhile();
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let (child, api, socket, log_end) =
            spawn_server(&self.data_dir(), &extra, &self.env, self.log.clone());
        self.child = Some(child);
        self.api = api;
        self.socket = socket;
        self.log_end = Some(log_end);
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A `gantry` command bound to this server's data dir (local admin on
    /// the unix socket), run in `cwd` = the temp dir.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("GANTRY_DATA_DIR", self.data_dir())
            .env("GANTRY_SERVER", format!("unix:{}", self.socket.display()))
            .env_remove("GANTRY_TOKEN")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    /// Runs `gantry ARGS` (within [`COMMAND_DEADLINE`]).
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output_in_time().unwrap())
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        Run::from(wait_output(
            child,
            &format!("gantry {}", args.join(" ")),
            COMMAND_DEADLINE,
        ))
    }

    /// Runs `gantry` over TCP with a token.
    pub fn run_tcp(&self, token: &str, args: &[&str]) -> Run {
        Run::from(
            self.cmd()
                .args(["--server", &self.api, "--token", token])
                .args(args)
                .output_in_time()
                .unwrap(),
        )
    }

    /// Creates a token via the local admin and returns it.
    pub fn token(&self, role: &str, env: Option<&str>) -> String {
        let mut args = vec!["token", "create", "--role", role];
        if let Some(e) = env {
            args.extend(["--env", e]);
        }
        let r = self.run(&args);
        assert_eq!(r.code, 0, "token create failed: {}", r.stderr);
        r.stdout.trim().to_string()
    }

    /// SIGTERM, then wait (at most a minute) for the server to exit and
    /// its log to be complete; returns the exit status code.
    #[track_caller]
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let status = KillOnDrop::new(child)
            .wait_within("gantry server after SIGTERM", Duration::from_secs(60));
        // Its stderr ends with it (unless a child of it kept the pipe).
        if let Some(end) = self.log_end.take() {
            let _ = end.recv_timeout(Duration::from_secs(10));
        }
        status.code()
    }

    /// Waits (up to 20 s) until `env` has `n` instances, all ready; returns
    /// them as `gantry ps --json` shows them.
    #[track_caller]
    pub fn wait_ready(&self, env: &str, n: usize) -> Vec<serde_json::Value> {
        eventually(
            &format!("{n} ready instance(s) in {env}"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let r = self.run(&["--json", "ps", "--env", env]);
                if r.code != 0 {
                    return Err(format!("`gantry ps` failed: {}", r.stderr));
                }
                let list = r.json().as_array().cloned().unwrap_or_default();
                if list.len() == n && list.iter().all(|i| i["ready"] == true) {
                    Ok(list)
                } else {
                    Err(format!("{list:#?}"))
                }
            },
        )
    }

    pub fn sqlite(&self, sql: &str) -> Run {
        Run::from(
            Command::new("sqlite3")
                .arg(self.data_dir().join("gantry.db"))
                .arg(sql)
                .output_in_time()
                .expect("sqlite3 is installed by .ci/run"),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            drop(KillOnDrop::new(c));
        }
        // Apps outlive the control plane by design, and so may a hook or a
        // build it left; a test's must not outlive the test.
        reap(self.dir.path());
    }
}

/// SIGKILLs the process group of every app recorded under `dir`.
pub fn kill_apps(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            kill_apps(&p);
        } else if p.file_name().is_some_and(|n| n == "shim.json")
            && let Some(pid) = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["app_pid"].as_i64())
        {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert_eq!(
            self.code, 0,
            "expected success:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Builds the example app once per test process (release, its own target
/// dir inside the workspace's) and returns the binary.
pub fn hello_app() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = repo_root();
            let target = root.join("target/examples");
            let out = Command::new(env!("CARGO"))
                .args(["build", "--release", "--quiet", "--manifest-path"])
                .arg(root.join("examples/hello-app/Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target)
                // A release build from nothing, on a busy machine.
                .output_within(Duration::from_secs(900))
                .expect("run cargo");
            assert!(
                out.status.success(),
                "building examples/hello-app failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("release/hello-app")
        })
        .clone()
}

/// One HTTP/1.1 GET to 127.0.0.1:`port` (with `X-Request-Id: req-<port>`);
/// the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    status_and_body(&out)
}

/// The status (0 when there is none) and the body of a raw HTTP/1.1
/// response read to its end.
pub fn status_and_body(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (
        status,
        raw.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

/// A `gantry proxy` process on 127.0.0.1:`port`, killed when dropped.
pub struct ProxyProcess {
    pub child: Child,
    pub port: u16,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ProxyProcess {
    /// Spawns `cmd` (a `gantry proxy …`), already a `ProxyProcess` (so it
    /// is killed if the test fails before it is up); its stdout lines.
    pub fn spawn(cmd: &mut Command) -> (Self, Lines) {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gantry proxy");
        let lines = Lines::new(child.stdout.take().unwrap());
        (Self { child, port: 0 }, lines)
    }
}

/// The port of an address printed as `host:port` (or `[v6]:port`).
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in `{addr}`"))
}

/// Starts `gantry proxy` on a free port with its state in `state`.
pub fn start_proxy(state: &Path) -> ProxyProcess {
    let (mut proxy, mut lines) = ProxyProcess::spawn(
        Command::new(BIN)
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--access-log",
                "off",
                "--state-dir",
            ])
            .arg(state),
    );
    proxy.port = lines
        .find(START_DEADLINE, |l| {
            l.trim().strip_prefix("listen: http://").map(port_of)
        })
        .unwrap_or_else(|e| panic!("the proxy printed no address: {e}"));
    proxy
}

/// `gantry proxy` with a plain and a TLS listener (a self-signed default
/// certificate for `name`, its PEM in `state/app.crt`); the proxy, its
/// plain and TLS ports, and the certificate (DER).
pub fn start_proxy_with_tls(state: &Path, name: &str) -> (ProxyProcess, u16, u16, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt_path, key_path) = (state.join("app.crt"), state.join("app.key"));
    std::fs::write(&crt_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let (mut proxy, mut lines) = ProxyProcess::spawn(
        Command::new(BIN)
            .args([
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--tls-listen",
                "127.0.0.1:0",
            ])
            .args(["--access-log", "off", "--state-dir"])
            .arg(state)
            .arg("--tls-cert")
            .arg(&crt_path)
            .arg("--tls-key")
            .arg(&key_path),
    );
    let (mut plain, mut tls) = (None, None);
    let (plain, tls) = lines
        .find(START_DEADLINE, |l| {
            if let Some(a) = l.trim().strip_prefix("listen: http://") {
                plain = Some(port_of(a));
            }
            if let Some(a) = l.trim().strip_prefix("tls:    https://") {
                tls = Some(port_of(a));
            }
            plain.zip(tls)
        })
        .unwrap_or_else(|e| panic!("the proxy printed no addresses: {e}"));
    proxy.port = plain;
    (proxy, plain, tls, cert.der().to_vec())
}

/// The example app (`examples/hello-app`) as a plain process on a port of
/// its own, stopped when dropped.
pub struct HelloApp {
    pub child: KillOnDrop,
    pub port: u16,
}

impl HelloApp {
    /// Starts the example app with `env` on a free port. The app binds the
    /// port it is given itself, so a port can only be found free before it
    /// binds it, and another process may take it in between: when the app
    /// says it cannot bind, it is started again on another port (a few
    /// times). Returns once the app says it is listening.
    #[track_caller]
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .unwrap()
                .port();
            let mut child = KillOnDrop::new(
                Command::new(hello_app())
                    .env("PORT", port.to_string())
                    .envs(env.iter().copied())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn the example app"),
            );
            let mut out = Lines::new(child.child().stdout.take().unwrap());
            let mut err = Lines::new(child.child().stderr.take().unwrap());
            match out.find(START_DEADLINE, |l| l.contains("listening").then_some(())) {
                Ok(()) => return Self { child, port },
                Err(e) => {
                    err.take_to_end(Duration::from_secs(5));
                    last = format!("{e}; stderr: {:#?}", err.seen);
                    if !err.seen.iter().any(|l| l.contains("cannot bind")) {
                        break;
                    }
                }
            }
        }
        panic!("the example app did not start: {last}")
    }
}
