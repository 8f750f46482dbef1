//! What a failed command prints: the error, then each cause once and in
//! order (`caused by:`), then what to do next (`hint:`).

mod support;

use std::process::Command;

use support::{BIN, TestServer};

fn stderr_of(cmd: &mut Command) -> (Option<i32>, String) {
    let out = cmd
        .env_remove("GANTRY_TOKEN")
        .env_remove("GANTRY_SECRET_KEY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreachable_server_prints_its_cause_once_then_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let (code, err) = stderr_of(
        Command::new(BIN)
            .arg("whoami")
            .env("GANTRY_SERVER", format!("unix:{}", socket.display())),
    );
    assert_eq!(code, Some(3), "{err}");
    assert_eq!(
        err,
        format!(
            "error: cannot reach the Gantry server at unix:{}\n  caused by: {}\n  hint: start it \
             with `gantry server`, or point --server / GANTRY_SERVER at it\n",
            socket.display(),
            std::io::Error::from_raw_os_error(2) // ENOENT
        )
    );
}

#[test]
fn a_server_that_cannot_start_says_why_each_cause_once() {
    let server = TestServer::start();
    // A second server on the same data directory.
    let (code, err) = stderr_of(
        Command::new(BIN)
            .args(["server", "--data-dir"])
            .arg(server.data_dir()),
    );
    assert_eq!(code, Some(1), "{err}");
    let data = server.data_dir();
    assert!(
        err.ends_with(&format!(
            "error: the control plane on {0} could not run\n  caused by: another gantry server \
             is already running on the data directory {0}; stop it first, or use another \
             --data-dir\n",
            data.display()
        )),
        "{err}"
    );

    // A port that is taken (held by this test for as long as it runs).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let other = tempfile::tempdir().unwrap();
    let (code, err) = stderr_of(
        Command::new(BIN)
            .args(["server", "--listen", &addr.to_string(), "--data-dir"])
            .arg(other.path().join("data")),
    );
    assert_eq!(code, Some(1), "{err}");
    let in_use = std::io::Error::from_raw_os_error(98).to_string(); // EADDRINUSE
    assert!(
        err.ends_with(&format!(
            "could not run\n  caused by: cannot listen on {addr}; is the port in use?\n  caused \
             by: {in_use}\n"
        )),
        "{err}"
    );
    assert_eq!(err.matches(&in_use).count(), 1, "the cause once: {err}");
    drop(taken);
}

#[test]
fn a_runtime_event_the_store_refuses_is_logged_with_the_stores_error() {
    let server = TestServer::start();
    let app = server.dir.path().join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::copy(support::hello_app(), app.join("hello-app")).unwrap();
    std::fs::write(
        server.dir.path().join("gantry.toml"),
        "[app]\nname = \"hello\"\n\n[run]\ncommand = \"./hello-app\"\n\n[health.readiness]\n\
         kind = \"http\"\npath = \"/readiness\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n",
    )
    .unwrap();
    server.run(&["config", "apply", "--env", "production"]).ok();
    server
        .run(&[
            "start",
            "--env",
            "production",
            "--dir",
            app.to_str().unwrap(),
        ])
        .ok();
    server.wait_ready("production", 1);
    // The store refuses new events, as on a full disk.
    server
        .sqlite(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON events \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END;",
        )
        .ok();
    server.run(&["restart", "--env", "production"]).ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = server.log.lock().unwrap().clone();
        let line = log
            .lines()
            .find(|l| l.contains("could not store a runtime event"));
        if let Some(line) = line {
            assert!(line.contains("database or disk is full"), "{line}");
            assert!(line.contains("hello.production.main.0"), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no refused event was logged: {log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
