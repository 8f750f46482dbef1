//! The `gantry` binary end to end against a real server on a temp data dir.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use support::{BIN, OutputInTime, TestServer, repo_root};

fn example() -> String {
    repo_root()
        .join("examples/hello-app/gantry.toml")
        .display()
        .to_string()
}

/// The example app's config, copied into the server's temp dir as
/// ./gantry.toml so commands find the app name there.
fn with_example(server: &TestServer) {
    std::fs::copy(example(), server.dir.path().join("gantry.toml")).unwrap();
}

#[test]
fn config_check_good_and_bad_files_offline() {
    let out = Command::new(BIN)
        .args(["config", "check", &example()])
        .env("GANTRY_DATA_DIR", "/nonexistent-gantry-test")
        .output_in_time()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok (app `hello`"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("gantry.toml");
    std::fs::write(
        &bad,
        "[app]\nname = \"hello\"\n\n[run]\ncommand = \"./app\"\ninstances = 0\n\n[health.readiness]\nintreval = \"5s\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output_in_time()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Both problems, each with its location, and a suggestion for the typo.
    assert!(stderr.contains("gantry.toml:6:"), "{stderr}");
    assert!(stderr.contains("gantry.toml:9:1"), "{stderr}");
    assert!(stderr.contains("did you mean `interval`?"), "{stderr}");
    assert!(stderr.contains("2 problems found"), "{stderr}");

    // Broken TOML: the parser's message with a location, no panic.
    std::fs::write(&bad, "[app\nname = 1\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&bad)
        .output_in_time()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("gantry.toml:1:"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A missing file is a clear error too.
    let out = Command::new(BIN)
        .args(["config", "check", "/no/such/gantry.toml"])
        .output_in_time()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/gantry.toml"));
}

#[test]
fn config_show_redacts_and_schema_is_json() {
    let out = Command::new(BIN)
        .args(["config", "show", &example(), "--env", "production"])
        .output_in_time()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hello.localhost"), "{text}");
    assert!(text.contains("${secret.SESSION_KEY}"), "{text}");
    let out = Command::new(BIN)
        .args(["--json", "config", "show", &example(), "--env", "staging"])
        .output_in_time()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.to_string().contains("staging.hello.localhost"), "{v}");
    let out = Command::new(BIN)
        .args(["config", "schema"])
        .output_in_time()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(schema["properties"]["health"].is_object(), "{schema}");
}

#[test]
fn config_versions_apply_history_diff_rollback() {
    let server = TestServer::start();
    with_example(&server);
    server.run(&["config", "apply", "--env", "production"]).ok();
    let r = server.run(&["config", "apply", "--env", "production"]);
    r.ok();
    assert!(r.stdout.contains("unchanged"), "{}", r.stdout);
    // A second version with one line changed.
    let path = server.dir.path().join("gantry.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen("instances = 2", "instances = 3", 1);
    assert_ne!(text, changed);
    std::fs::write(&path, &changed).unwrap();
    let r = server.run(&[
        "config",
        "apply",
        "--env",
        "production",
        "--note",
        "describe",
    ]);
    r.ok();
    assert!(r.stdout.contains("as version 2"), "{}", r.stdout);

    let h = server
        .run(&["--json", "config", "history", "--env", "production"])
        .json();
    assert_eq!(h[0]["version"], 2);
    assert_eq!(h[0]["note"], "describe");
    assert!(h[0]["author"].as_str().unwrap().starts_with("local:"));

    let d = server.run(&["config", "diff", "1", "2", "--env", "production"]);
    d.ok();
    assert!(d.stdout.contains("--- version 1"), "{}", d.stdout);
    assert!(
        d.stdout.contains("-instances = 2\n+instances = 3"),
        "{}",
        d.stdout
    );

    let r = server.run(&["config", "rollback", "1", "--env", "production"]);
    r.ok();
    assert!(r.stdout.contains("recorded as version 3"), "{}", r.stdout);
    let d = server.run(&["config", "diff", "1", "3", "--env", "production"]);
    assert!(d.stdout.contains("identical"), "{}", d.stdout);
    let shown = server.run(&["config", "show", "--env", "production", "--applied"]);
    shown.ok();
    assert!(
        shown.stdout.contains("config version 3"),
        "{}",
        shown.stdout
    );

    // An invalid config is refused: by the CLI before sending, and by the
    // server too when a client skips that check.
    let broken = changed.replacen("[app]", "[app]\nbogus = 1", 1);
    std::fs::write(&path, &broken).unwrap();
    let r = server.run(&["config", "apply", "--env", "production"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("gantry.toml:9:1: [app] unknown key `bogus`"),
        "{}",
        r.stderr
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = gantry_api::Client::new(gantry_api::Endpoint::Unix(server.socket.clone()), None);
    let err = support::block_on(
        &rt,
        "PUT config",
        client.put::<_, serde_json::Value>(
            "/api/v1/apps/hello/envs/production/config",
            &serde_json::json!({"file_name": "gantry.toml", "source": broken}),
        ),
    )
    .unwrap_err();
    assert_eq!(err.status(), Some(422));
    assert!(err.to_string().contains("unknown key `bogus`"), "{err}");
    let err = support::block_on(
        &rt,
        "PUT config",
        client.put::<_, serde_json::Value>(
            "/api/v1/apps/other/envs/production/config",
            &serde_json::json!({"file_name": "gantry.toml", "source": changed}),
        ),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("config of app `hello`, not `other`"),
        "{err}"
    );
    std::fs::write(&path, &changed).unwrap();
    let r = server.run(&["config", "rollback", "9", "--env", "production"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("gantry config history"), "{}", r.stderr);
}

#[test]
fn secrets_never_come_back_and_check_reports_missing_ones() {
    let server = TestServer::start();
    with_example(&server);
    let r = server.run(&["config", "check", "gantry.toml", "--env", "production"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("secret `SESSION_KEY`"), "{}", r.stderr);
    assert!(
        r.stderr
            .contains("gantry secrets set SESSION_KEY --env production"),
        "{}",
        r.stderr
    );

    let r = server.run_stdin(
        &["secrets", "set", "SESSION_KEY", "--env", "production"],
        "s3cr3t-value\n",
    );
    r.ok();
    assert!(r.stdout.contains("version 1"), "{}", r.stdout);
    server
        .run_stdin(
            &["secrets", "set", "SESSION_KEY", "--env", "production"],
            "s3cr3t-value-2",
        )
        .ok();
    server
        .run(&["config", "check", "gantry.toml", "--env", "production"])
        .ok();

    let list = server.run(&["secrets", "list", "--env", "production"]);
    list.ok();
    assert!(
        list.stdout.contains("SESSION_KEY") && list.stdout.contains(" 2 "),
        "{}",
        list.stdout
    );
    let j = server.run(&["--json", "secrets", "list", "--env", "production"]);
    assert!(!j.stdout.contains("s3cr3t"), "{}", j.stdout);
    // Other environments are separate.
    let s = server.run(&["secrets", "list", "--env", "staging"]);
    assert!(s.stdout.contains("no secrets"), "{}", s.stdout);

    // Not in the audit log, not in the database file in clear.
    let audit = server.run(&["--json", "audit"]);
    assert!(!audit.stdout.contains("s3cr3t"), "{}", audit.stdout);
    for f in ["gantry.db", "gantry.db-wal"] {
        let bytes = std::fs::read(server.data_dir().join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(6).any(|w| w == b"s3cr3t"),
            "{f} holds the value"
        );
    }
    let key = server.data_dir().join("secret.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let before = std::fs::read_to_string(&key).unwrap();
    let r = server.run(&["secrets", "rotate-key"]);
    r.ok();
    assert!(r.stdout.contains("1 secret re-encrypted"), "{}", r.stdout);
    assert_ne!(before, std::fs::read_to_string(&key).unwrap());

    // Empty value and bad names are refused with a way forward.
    let r = server.run_stdin(&["secrets", "set", "EMPTY", "--env", "production"], "");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("pipe it on stdin"), "{}", r.stderr);
    let r = server.run_stdin(&["secrets", "set", "bad-name", "--env", "production"], "v");
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a valid secret name"), "{}", r.stderr);

    // A NUL byte cannot reach the app as an environment variable: refused
    // by the CLI, and by the API for any other client.
    let r = server.run_stdin(
        &["secrets", "set", "NUL_KEY", "--env", "production"],
        "ab\0cd",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("contains a NUL byte (at byte 2)"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("base64"), "{}", r.stderr);
    let api = gantry_api::Client::new(gantry_api::Endpoint::Unix(server.socket.clone()), None);
    let (status, body) = support::block_on(
        &tokio::runtime::Runtime::new().unwrap(),
        "PUT a secret",
        api.raw(
            gantry_api::Method::PUT,
            "/api/v1/apps/hello/envs/production/secrets/NUL_KEY",
            Some(&serde_json::json!({ "value": "ab\u{0}cd" })),
        ),
    )
    .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(body.contains("contains a NUL byte"), "{body}");
    let list = server.run(&["secrets", "list", "--env", "production"]);
    assert!(!list.stdout.contains("NUL_KEY"), "{}", list.stdout);

    server
        .run(&["secrets", "rm", "SESSION_KEY", "--env", "production"])
        .ok();
    let r = server.run(&["secrets", "rm", "SESSION_KEY", "--env", "production"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("is not set"), "{}", r.stderr);
}

#[test]
fn tokens_roles_and_exit_codes_over_tcp() {
    let server = TestServer::start();
    with_example(&server);
    // No token over TCP: 401 → exit 4, with a hint.
    let r = server
        .cmd()
        .args(["--server", &server.api, "whoami"])
        .output_in_time()
        .unwrap();
    assert_eq!(r.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&r.stderr).contains("needs a token"));

    let viewer = server.token("viewer", None);
    assert!(viewer.starts_with("gantry_"));
    let r = server.run_tcp(&viewer, &["whoami"]);
    r.ok();
    assert!(r.stdout.contains("role viewer"), "{}", r.stdout);
    // A viewer cannot set secrets: 403 → exit 4, naming the needed role.
    let r = server.run_tcp(&viewer, &["secrets", "list", "--env", "production"]);
    r.ok();
    let mut c = server.cmd();
    c.args([
        "--server",
        &server.api,
        "--token",
        &viewer,
        "secrets",
        "set",
        "X",
        "--env",
        "production",
    ]);
    let out = {
        use std::io::Write;
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"v").unwrap();
        support::wait_output(child, "gantry secrets set", support::COMMAND_DEADLINE)
    };
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs `admin`"));

    let scoped = server.token("deployer", Some("staging"));
    let r = server.run_tcp(&scoped, &["config", "apply", "--env", "staging"]);
    r.ok();
    let r = server.run_tcp(&scoped, &["config", "apply", "--env", "production"]);
    assert_eq!(r.code, 4);
    assert!(
        r.stderr.contains("limited to environment `staging`"),
        "{}",
        r.stderr
    );

    let list = server.run(&["--json", "token", "list"]).json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&viewer), "token listed in clear");
    let id = viewer.split('_').nth(1).unwrap();
    server.run(&["token", "revoke", id]).ok();
    let r = server.run_tcp(&viewer, &["whoami"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("revoked"), "{}", r.stderr);

    let r = server.run(&["token", "create", "--role", "root"]);
    assert_eq!(r.code, 2, "clap rejects an unknown role");
    assert!(r.stderr.contains("unknown role `root`"), "{}", r.stderr);
    let r = server.run(&["token", "create", "--role", "viewer", "--expires", "soon"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("30d"), "{}", r.stderr);
}

#[test]
fn unix_socket_trusts_only_its_owner() {
    let sock_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = sock_dir.path().join("api.sock");
    let server = TestServer::start_with(&["--socket", sock.to_str().unwrap()]);
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Open the socket to everyone: another user still gets no admin rights.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "whoami",
            "--server",
        ])
        .arg(format!("unix:{}", sock.display()))
        .output_in_time()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = server.token("viewer", None);
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "whoami",
            "--token",
            &token,
            "--server",
        ])
        .arg(format!("unix:{}", sock.display()))
        .output_in_time()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("role viewer"));
    let r = server.run(&["whoami", "--server", &format!("unix:{}", sock.display())]);
    r.ok();
    assert!(
        r.stdout.contains("local:uid=") && r.stdout.contains("role admin"),
        "{}",
        r.stdout
    );
}

#[test]
fn server_lifecycle_shutdown_lock_and_newer_schema() {
    let mut server = TestServer::start();
    // A second server on the same data dir is refused.
    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(server.data_dir())
        .output_in_time()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    // SIGTERM: clean exit, socket removed.
    assert_eq!(server.stop(), Some(0));
    assert!(!server.socket.exists());

    // --log-format json: every log line on stderr is a JSON object.
    let mut json_server = TestServer::start_with(&["--log-format", "json"]);
    // `stop` returns once the log is read to its end.
    assert_eq!(json_server.stop(), Some(0));
    let logs = json_server.log.lock().unwrap().clone();
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
    }

    // With no server, commands say how to start one (exit 3).
    let r = server.run(&["whoami"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("gantry server"), "{}", r.stderr);

    // A data dir written by a newer Gantry is refused with a clear message.
    server.sqlite("PRAGMA user_version = 999;").ok();
    let out = Command::new(BIN)
        .args(["server", "--data-dir"])
        .arg(server.data_dir())
        .output_in_time()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("written by a newer Gantry (schema version 999"),
        "{err}"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    let groups: &[&[&str]] = &[
        &["server"],
        &["proxy"],
        &["dev"],
        &["build"],
        &["releases"],
        &["deploy"],
        &["deploys"],
        &["approve"],
        &["abort"],
        &["rollback"],
        &["promote"],
        &["demo"],
        &["config", "check"],
        &["config", "show"],
        &["config", "schema"],
        &["config", "apply"],
        &["config", "history"],
        &["config", "diff"],
        &["config", "rollback"],
        &["secrets", "set"],
        &["secrets", "list"],
        &["secrets", "rm"],
        &["secrets", "rotate-key"],
        &["token", "create"],
        &["token", "list"],
        &["token", "revoke"],
        &["audit"],
        &["audit", "verify"],
        &["whoami"],
        &["check", "headers"],
        &["start"],
        &["stop"],
        &["restart"],
        &["ps"],
        &["logs"],
        &["events"],
    ];
    for args in groups {
        let out = Command::new(BIN)
            .args(*args)
            .arg("--help")
            .output_in_time()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let example = text.lines().find(|l| l.starts_with("Example: "));
        assert!(
            example.is_some_and(|l| l.contains("gantry ")),
            "{args:?} has no example:\n{text}"
        );
    }
    let out = Command::new(BIN).arg("--help").output_in_time().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit codes:"));
}

/// Runs `cmd` with stdout on a pipe whose reader is already gone; the exit
/// code and stderr.
fn with_closed_stdout(mut cmd: Command) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = support::wait_output(child, &format!("{cmd:?}"), support::COMMAND_DEADLINE);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_ends_every_command_quietly() {
    // Offline commands with a lot of output.
    for args in [
        &["--help"][..],
        &["config", "--help"],
        &["config", "schema"],
        &["config", "show", &example(), "--env", "production"],
        &["config", "check", &example()],
    ] {
        let mut c = Command::new(BIN);
        c.args(args);
        let (code, stderr) = with_closed_stdout(c);
        assert!(stderr.is_empty(), "gantry {args:?}: {stderr}");
        assert!(matches!(code, Some(0 | 141)), "gantry {args:?}: {code:?}");
    }
    // Commands that print what the server answers.
    let server = TestServer::start();
    with_example(&server);
    server.run(&["config", "apply", "--env", "production"]).ok();
    server
        .run_stdin(
            &["secrets", "set", "SESSION_KEY", "--env", "production"],
            "v",
        )
        .ok();
    server.token("viewer", None);
    for args in [
        &["audit"][..],
        &["--json", "audit"],
        &["audit", "verify"],
        &["events", "--env", "production"],
        &["ps"],
        &["releases", "--env", "production"],
        &["deploys", "--env", "production"],
        &["config", "history", "--env", "production"],
        &["secrets", "list", "--env", "production"],
        &["token", "list"],
        &["whoami"],
        &["--json", "whoami"],
    ] {
        let mut c = server.cmd();
        c.args(args);
        let (code, stderr) = with_closed_stdout(c);
        assert!(stderr.is_empty(), "gantry {args:?}: {stderr}");
        assert_eq!(code, Some(141), "gantry {args:?}");
    }
}
