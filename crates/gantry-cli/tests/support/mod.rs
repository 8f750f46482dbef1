//! Test support: a real `gantry server` on a temp data dir, and the real
//! `gantry` binary to drive it.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub mod deploy;

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
}

/// Spawns `gantry server` and reads where it listens from its stdout.
fn spawn_server(
    data: &Path,
    extra: &[&str],
    env: &[(String, String)],
    log: Arc<Mutex<String>>,
) -> (Child, String, PathBuf) {
    let mut child = Command::new(BIN)
        .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(extra)
        .env_remove("GANTRY_SERVER")
        .env_remove("GANTRY_TOKEN")
        .env_remove("GANTRY_SECRET_KEY")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gantry server");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let (mut api, mut socket) = (None, None);
    while api.is_none() || socket.is_none() {
        let Some(Ok(line)) = lines.next() else {
            let out = child.wait_with_output().unwrap();
            panic!(
                "server exited before it was ready: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        if let Some(a) = line.trim().strip_prefix("api:") {
            api = Some(a.trim().to_string());
        }
        if let Some(s) = line.trim().strip_prefix("socket:") {
            socket = Some(PathBuf::from(s.trim().trim_start_matches("unix:")));
        }
    }
    // Keep draining both pipes so the server never blocks on a full one.
    std::thread::spawn(move || for _ in lines {});
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = log.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, api.unwrap(), socket.unwrap())
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
        let (child, api, socket) = spawn_server(&dir.path().join("data"), extra, &env, log.clone());
        Self {
            dir,
            child: Some(child),
            api,
            socket,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            log,
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
        let (child, api, socket) =
            spawn_server(&self.data_dir(), &extra, &self.env, self.log.clone());
        self.child = Some(child);
        self.api = api;
        self.socket = socket;
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

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd().args(args).output().unwrap())
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
        Run::from(child.wait_with_output().unwrap())
    }

    /// Runs `gantry` over TCP with a token.
    pub fn run_tcp(&self, token: &str, args: &[&str]) -> Run {
        Run::from(
            self.cmd()
                .args(["--server", &self.api, "--token", token])
                .args(args)
                .output()
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

    /// SIGTERM, then wait; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().ok().and_then(|s| s.code())
    }

    /// Waits (up to 20 s) until `env` has `n` instances, all ready; returns
    /// them as `gantry ps --json` shows them.
    pub fn wait_ready(&self, env: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = self.run(&["--json", "ps", "--env", env]);
            let list = if r.code == 0 {
                r.json().as_array().cloned().unwrap_or_default()
            } else {
                Vec::new()
            };
            if list.len() == n && list.iter().all(|i| i["ready"] == true) {
                return list;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{env} not ready: {list:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    pub fn sqlite(&self, sql: &str) -> Run {
        Run::from(
            Command::new("sqlite3")
                .arg(self.data_dir().join("gantry.db"))
                .arg(sql)
                .output()
                .expect("sqlite3 is installed by .ci/run"),
        )
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Apps outlive the control plane by design; a test's must not
        // outlive the test.
        kill_apps(&self.data_dir().join("instances"));
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
                .output()
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

/// Starts `gantry proxy` on a free port with its state in `state`.
pub fn start_proxy(state: &Path) -> ProxyProcess {
    let mut child = Command::new(BIN)
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "off",
            "--state-dir",
        ])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry proxy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = loop {
        let line = lines.next().expect("proxy printed its address").unwrap();
        if let Some(a) = line.trim().strip_prefix("listen: http://") {
            break a.rsplit(':').next().unwrap().parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    ProxyProcess { child, port }
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
    let mut child = Command::new(BIN)
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
        .arg(&key_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gantry proxy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port_of = |a: &str| a.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let (mut plain, mut tls) = (None, None);
    while plain.is_none() || tls.is_none() {
        let line = lines.next().expect("proxy printed its addresses").unwrap();
        if let Some(a) = line.trim().strip_prefix("listen: http://") {
            plain = Some(port_of(a));
        }
        if let Some(a) = line.trim().strip_prefix("tls:    https://") {
            tls = Some(port_of(a));
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let port = plain.unwrap();
    (
        ProxyProcess { child, port },
        port,
        tls.unwrap(),
        cert.der().to_vec(),
    )
}
