//! `gantry dev`: runs the app in the foreground and restarts it on change.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

fn version_pid(port: u16) -> Option<i64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let body = out.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["pid"].as_i64()
}

fn wait_pid(port: u16) -> i64 {
    for _ in 0..200 {
        if let Some(p) = version_pid(port) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("app on {port} never answered");
}

/// Waits for a stderr line containing `needle`; returns it.
fn expect_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no line with `{needle}`; saw {seen:#?}"));
        seen.push(line.clone());
        if line.contains(needle) {
            return line;
        }
    }
}

fn port_of(line: &str) -> u16 {
    line.rsplit(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn dev_runs_the_app_and_restarts_it_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let py = support::repo_root().join("examples/hello-py/app.py");
    std::fs::copy(py, dir.path().join("app.py")).unwrap();
    std::fs::write(
        dir.path().join("gantry.toml"),
        "[app]\nname = \"devapp\"\n\n[run]\ncommand = \"python3 app.py\"\n",
    )
    .unwrap();
    let mut child = Command::new(support::BIN)
        .arg("dev")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let stdout = child.stdout.take().unwrap();
    let (otx, orx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = otx.send(l);
        }
    });
    let mut seen = Vec::new();
    let first = expect_line(
        &rx,
        "devapp (development) #0 → http://127.0.0.1:",
        &mut seen,
    );
    let port = port_of(&first);
    let pid = wait_pid(port);

    // The app's own log lines reach the terminal.
    let log = orx
        .recv_timeout(Duration::from_secs(10))
        .expect("app output on stdout");
    assert!(log.starts_with("#0 "), "{log}");

    // Changes under ignored directories do nothing; a source change restarts.
    std::fs::create_dir_all(dir.path().join(".gantry/junk")).unwrap();
    std::fs::write(dir.path().join(".gantry/junk/x"), "x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "changed").unwrap();
    expect_line(
        &rx,
        "change in notes.txt: rebuilding and restarting",
        &mut seen,
    );
    let second = expect_line(
        &rx,
        "devapp (development) #0 → http://127.0.0.1:",
        &mut seen,
    );
    let new_pid = wait_pid(port_of(&second));
    assert_ne!(pid, new_pid, "a new process after the change");
    assert!(!alive(pid), "the old process was stopped");
    // One change, one restart (debounced).
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains("rebuilding and restarting"))
            .count(),
        1
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!alive(new_pid), "Ctrl-C stops the app too");
}

fn alive(pid: i64) -> bool {
    gantry_runtime::procfs::stat(pid as i32).is_some_and(|s| s.state != 'Z')
}
