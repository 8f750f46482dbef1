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
    support::eventually(
        &format!("the app on {port} to answer GET /version"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || version_pid(port).ok_or_else(|| "no answer".to_string()),
    )
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

/// `gantry dev ARGS` in `dir` (killed when dropped), its stderr and
/// stdout lines on channels.
fn start_dev(
    dir: &std::path::Path,
    args: &[&str],
) -> (
    support::KillOnDrop,
    mpsc::Receiver<String>,
    mpsc::Receiver<String>,
) {
    let mut child = support::KillOnDrop::new(
        Command::new(support::BIN)
            .arg("dev")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (tx, rx) = mpsc::channel();
    let stderr = child.child().stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let stdout = child.child().stdout.take().unwrap();
    let (otx, orx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = otx.send(l);
        }
    });
    (child, rx, orx)
}

const URL: &str = "devapp (development) #0 → http://127.0.0.1:";

#[test]
fn dev_runs_the_app_and_restarts_it_on_change() {
    // What `gantry dev` started there is killed when the test ends.
    let dir = support::ReapedDir::new();
    let py = support::repo_root().join("examples/hello-py/app.py");
    std::fs::copy(py, dir.path().join("app.py")).unwrap();
    // The app writes a log inside the tree each time it starts; the
    // .gitignore says so, and that must not restart it (in a loop).
    std::fs::write(
        dir.path().join("gantry.toml"),
        "[app]\nname = \"devapp\"\n\n[run]\ncommand = \"sh -c 'echo started >> app.log && exec python3 app.py'\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".gitignore"),
        "*.log\n/logs/\nbuild/\n!keep.log\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("build/deep")).unwrap();
    let (mut child, rx, orx) = start_dev(dir.path(), &[]);
    let mut seen = Vec::new();
    let first = expect_line(&rx, URL, &mut seen);
    let port = port_of(&first);
    let pid = wait_pid(port);
    assert!(
        std::fs::read_to_string(dir.path().join("app.log"))
            .unwrap()
            .contains("started")
    );

    // The app's own log lines reach the terminal.
    let log = orx
        .recv_timeout(Duration::from_secs(10))
        .expect("app output on stdout");
    assert!(log.starts_with("#0 "), "{log}");

    // Changes to ignored files do nothing: the state directory (data and
    // logs), what .gitignore names, built-in tool directories, swap files.
    // Only the source change after them restarts, and the restart says so.
    std::fs::create_dir_all(dir.path().join(".gantry/junk")).unwrap();
    std::fs::write(dir.path().join(".gantry/junk/x"), "x").unwrap();
    std::fs::write(dir.path().join(".gantry/data/db"), "x").unwrap();
    std::fs::write(dir.path().join("app.log"), "more\n").unwrap();
    std::fs::create_dir_all(dir.path().join("logs/2026")).unwrap();
    std::fs::write(dir.path().join("logs/2026/today.txt"), "x").unwrap();
    std::fs::write(dir.path().join("build/deep/out.o"), "x").unwrap();
    std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
    std::fs::write(dir.path().join("target/debug/x"), "x").unwrap();
    std::fs::write(dir.path().join(".notes.txt.swp"), "x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "changed").unwrap();
    let line = expect_line(&rx, "rebuilding and restarting", &mut seen);
    assert!(
        line.contains("change in notes.txt: rebuilding and restarting"),
        "the first restart is for the source change: {line}\n{seen:#?}"
    );
    let second = expect_line(&rx, URL, &mut seen);
    assert_eq!(port_of(&second), port, "the app keeps its URL");
    let new_pid = wait_pid(port);
    assert_ne!(pid, new_pid, "a new process after the change");
    assert!(!alive(pid), "the old process was stopped");

    // A directory made after the start is watched too; a re-included name
    // counts.
    std::fs::create_dir(dir.path().join("src")).unwrap();
    expect_line(&rx, "change in src: rebuilding and restarting", &mut seen);
    assert_eq!(port_of(&expect_line(&rx, URL, &mut seen)), port);
    let pid3 = wait_pid(port);
    std::fs::write(dir.path().join("src/util.py"), "x = 1\n").unwrap();
    expect_line(
        &rx,
        "change in src/util.py: rebuilding and restarting",
        &mut seen,
    );
    assert_eq!(port_of(&expect_line(&rx, URL, &mut seen)), port);
    let pid4 = wait_pid(port);
    std::fs::write(dir.path().join("keep.log"), "x").unwrap();
    expect_line(
        &rx,
        "change in keep.log: rebuilding and restarting",
        &mut seen,
    );
    assert_eq!(port_of(&expect_line(&rx, URL, &mut seen)), port);
    let last_pid = wait_pid(port);
    assert!(pid3 != pid4 && pid4 != last_pid);
    // One restart per change, none for the app's own log.
    assert_eq!(
        seen.iter()
            .filter(|l| l.contains("rebuilding and restarting"))
            .count(),
        4,
        "{seen:#?}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait_within("gantry dev after Ctrl-C", Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    assert!(!alive(last_pid), "Ctrl-C stops the app too");
}

#[test]
fn dev_shows_output_that_is_not_utf8_lossily_and_goes_on() {
    let dir = support::ReapedDir::new();
    // A line with a byte that is no UTF-8 (0xFF), then more lines.
    std::fs::write(
        dir.path().join("gantry.toml"),
        "[app]\nname = \"bytes\"\n\n[run]\ncommand = \"printf 'before \\\\377 after\\\\n'; while true; do echo tick; sleep 0.2; done\"\n",
    )
    .unwrap();
    let (mut child, rx, orx) = start_dev(dir.path(), &["--no-watch"]);
    let mut seen = Vec::new();
    expect_line(&rx, "bytes (development) #0 → http://127.0.0.1:", &mut seen);
    let mut out = Vec::new();
    let next = |out: &mut Vec<String>| {
        let l = orx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no more app output; saw {out:#?}"));
        out.push(l.clone());
        l
    };
    assert_eq!(next(&mut out), "#0 before \u{FFFD} after", "{out:#?}");
    // And the output goes on after it.
    assert_eq!(next(&mut out), "#0 tick", "{out:#?}");
    assert_eq!(next(&mut out), "#0 tick", "{out:#?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait_within("gantry dev after Ctrl-C", Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{seen:#?}");
}

fn alive(pid: i64) -> bool {
    gantry_runtime::procfs::stat(pid as i32).is_some_and(|s| s.state != 'Z')
}
