//! `gantry demo`: the README's main job, end to end, and Ctrl-C stopping
//! every process it started (apps, shims, server, proxy), at the end and in
//! the middle of a deploy.

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The demos build the example app in release mode; one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A port nothing listens on now. The demo binds its ports itself (and
/// prints and uses the numbers it was given), so another process may take
/// one in between: [`start_demo`] then starts it again on other ports.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    port: u16,
    /// The demo's data directory, once it said it.
    data: Option<PathBuf>,
    /// Holds the demo's data directory (through TMPDIR).
    _tmp: tempfile::TempDir,
}

/// Starts `gantry demo` as a terminal would start a job: in its own
/// process group, of which it is the leader; returns once its proxy and
/// server are up (it runs its first command). When one of its ports was
/// taken meanwhile, it starts again on two others (a few times).
fn start_demo(extra: &[&str]) -> Running {
    let mut last = String::new();
    for _ in 0..5 {
        let mut demo = spawn_demo(extra);
        let up = demo.find("$ gantry config check");
        match up {
            Some(_) => return demo,
            None if demo.seen.iter().any(|l| l.contains("in use")) => {
                last = demo.seen.join("\n");
            }
            None => panic!("the demo ended before it was up:\n{}", demo.seen.join("\n")),
        }
    }
    panic!("the demo never got free ports:\n{last}")
}

fn spawn_demo(extra: &[&str]) -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let (port, api) = (free_port(), free_port());
    let mut child = Command::new(support::BIN)
        .args([
            "demo",
            "--port",
            &port.to_string(),
            "--api-port",
            &api.to_string(),
        ])
        .args(extra)
        .current_dir(support::repo_root())
        .env("TMPDIR", tmp.path())
        .env_remove("GANTRY_DATA_DIR")
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let out = BufReader::new(child.stdout.take().unwrap());
    let err = BufReader::new(child.stderr.take().unwrap());
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in err.lines().map_while(Result::ok) {
            let _ = tx2.send(format!("stderr: {l}"));
        }
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
        port,
        data: None,
        _tmp: tmp,
    }
}

const DATA_LINE: &str = "Gantry demo: data directory ";

impl Running {
    /// Takes one line into `seen`, noting the data directory.
    fn take(&mut self, l: String) {
        if let Some(d) = l.strip_prefix(DATA_LINE) {
            self.data = Some(PathBuf::from(d.trim()));
        }
        self.seen.push(l);
    }

    /// Waits (up to 15 minutes: two release builds) for a line with
    /// `needle`; `None` when the output ended first.
    fn find(&mut self, needle: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(needle).then(|| l.clone());
                    self.take(l);
                    if hit.is_some() {
                        return hit;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                    "no line with `{needle}` within 15 minutes:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// [`Running::find`], or the test fails.
    fn expect(&mut self, needle: &str) -> String {
        self.find(needle).unwrap_or_else(|| {
            panic!(
                "the output ended with no line with `{needle}`:\n{}",
                self.seen.join("\n")
            )
        })
    }

    /// The demo's data directory, from its first line.
    fn data_dir(&mut self) -> PathBuf {
        if self.data.is_none() {
            self.expect(DATA_LINE);
        }
        self.data.clone().unwrap()
    }

    /// SIGINT to the demo's whole process group, as Ctrl-C in its terminal.
    fn ctrl_c(&self) {
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
    }

    /// Waits (up to 2 minutes) for the demo to exit; its exit code. The
    /// rest of its output goes to `seen`.
    fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.take(l);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The rest of its output, up to the end of its pipes (10 s
                // at most: a process left behind may hold them open).
                let end = Instant::now() + Duration::from_secs(10);
                while let Ok(l) = self
                    .lines
                    .recv_timeout(end.saturating_duration_since(Instant::now()))
                {
                    self.take(l);
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit after Ctrl-C:\n{}",
                self.seen.join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Running {
    /// A test that failed half-way still leaves nothing running: Ctrl-C
    /// for the demo's own cleanup, then SIGKILL for whatever is left of it.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.ctrl_c();
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(data) = &self.data {
            for (pid, _) in processes_of(data) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Every live process that belongs to the demo's data directory: its
/// cmdline, environment or working directory names it (server and proxy
/// through GANTRY_DATA_DIR, shims through their instance directory, apps
/// through their DATA_DIR and artifact directory). `(pid, what)`.
fn processes_of(data: &Path) -> Vec<(i32, String)> {
    support::processes_of(data)
}

/// `GET /` with `Host: host` on 127.0.0.1:`port`; the status and body.
fn get_through_proxy(port: u16, host: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    support::status_and_body(&out)
}

fn kinds(procs: &[(i32, String)]) -> Vec<&'static str> {
    let mut k: Vec<&'static str> = procs
        .iter()
        .map(|(_, cmd)| {
            if cmd.contains(" server") {
                "server"
            } else if cmd.contains(" proxy") {
                "proxy"
            } else if cmd.contains(" shim ") {
                "shim"
            } else if cmd.contains("hello-app") {
                "app"
            } else {
                // The command of the moment (`gantry deploy …`).
                "step"
            }
        })
        .collect();
    k.sort();
    k.dedup();
    k
}

#[test]
fn the_demo_ships_a_canary_and_ctrl_c_stops_everything_it_started() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = start_demo(&[]);
    let data = demo.data_dir();
    demo.expect("Ctrl-C stops everything.");
    let port = demo.port;
    for needle in [
        "deploy 1 succeeded",
        "deploy 2 succeeded",
        "canary step 1/2: 20 %",
        "deploy 3 succeeded",
        "Gantry is running the example app.",
        &format!("http://127.0.0.1:{port}/"),
    ] {
        assert!(
            demo.seen.iter().any(|l| l.contains(needle)),
            "missing `{needle}` in:\n{}",
            demo.seen.join("\n")
        );
    }
    let (status, body) = get_through_proxy(port, "hello.localhost");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello"), "{body}");
    let before = processes_of(&data);
    assert_eq!(
        kinds(&before),
        ["app", "proxy", "server", "shim"],
        "{before:#?}"
    );

    demo.ctrl_c();
    assert_eq!(demo.wait(), Some(0), "{}", demo.seen.join("\n"));
    let all = demo.seen.join("\n");
    assert!(
        all.contains("stopped 2 instance(s) of hello/production"),
        "{all}"
    );
    assert!(!all.contains("panicked"), "{all}");
    let left = processes_of(&data);
    assert!(left.is_empty(), "left behind: {left:#?}\n{all}");
    for (pid, cmd) in before {
        assert!(
            gantry_runtime::procfs::stat(pid).is_none_or(|s| matches!(s.state, 'Z' | 'X')),
            "{pid} {cmd} still runs"
        );
    }
}

#[test]
fn ctrl_c_during_a_canary_stops_everything_too() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut demo = start_demo(&[]);
    let data = demo.data_dir();
    // Both environments run, and production is halfway through a canary:
    // the old and the new set run, the deploy is under way.
    demo.expect("canary step 1/2: 20 %");
    let before = kinds(&processes_of(&data));
    assert_eq!(
        before,
        ["app", "proxy", "server", "shim", "step"],
        "{before:?}"
    );
    demo.ctrl_c();
    assert_eq!(demo.wait(), Some(130), "{}", demo.seen.join("\n"));
    let all = demo.seen.join("\n");
    assert!(
        all.contains("Everything the demo started is stopped."),
        "{all}"
    );
    let left = processes_of(&data);
    assert!(left.is_empty(), "left behind: {left:#?}\n{all}");
}
