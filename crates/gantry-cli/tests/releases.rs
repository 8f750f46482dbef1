//! `gantry build` / `gantry releases`: a clean copy of the source, the build
//! command, content-addressed artifacts, numbered releases, clear failures.

mod support;

use support::TestServer;

fn app_dir(server: &TestServer, name: &str, toml: &str) -> std::path::PathBuf {
    let dir = server.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        support::repo_root().join("examples/hello-py/app.py"),
        dir.join("app.py"),
    )
    .unwrap();
    std::fs::write(dir.join("gantry.toml"), toml).unwrap();
    dir
}

const PY: &str = "[app]\nname = \"hello\"\n\n[run]\ncommand = \"python3 app.py\"\n";

#[test]
fn identical_sources_share_one_artifact_and_releases_are_numbered() {
    let server = TestServer::start();
    let dir = app_dir(&server, "py", PY);
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/HEAD"), "local state").unwrap();
    let a = server
        .run(&[
            "--json",
            "build",
            "--env",
            "staging",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .json();
    let b = server
        .run(&[
            "--json",
            "build",
            "--env",
            "staging",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .json();
    assert_eq!(
        (a["number"].as_i64(), b["number"].as_i64()),
        (Some(1), Some(2))
    );
    assert_eq!(a["digest"], b["digest"], "same content, same digest");
    let hex = a["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let artifact = server.data_dir().join("artifacts").join(&hex);
    assert!(artifact.join("app.py").is_file());
    assert!(artifact.join("gantry.toml").is_file());
    assert!(
        !artifact.join(".git").exists(),
        "local state is not shipped"
    );
    assert_eq!(
        std::fs::read_dir(server.data_dir().join("artifacts"))
            .unwrap()
            .count(),
        1
    );

    std::fs::write(dir.join("app.py"), "print('changed')\n").unwrap();
    let c = server
        .run(&[
            "--json",
            "build",
            "--env",
            "staging",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .json();
    assert_ne!(c["digest"], a["digest"]);

    let r = server.run(&["releases", "--env", "staging", "--app", "hello"]);
    r.ok();
    assert_eq!(r.stdout.lines().count(), 4, "{}", r.stdout);
    // The build left no scratch directories behind.
    assert_eq!(
        std::fs::read_dir(server.data_dir().join("builds"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn build_failures_say_why() {
    let server = TestServer::start();
    let dir = app_dir(
        &server,
        "fails",
        &format!("{PY}\n[build]\ncommand = \"echo compiling; exit 3\"\n"),
    );
    let r = server.run(&["build", "--env", "staging", "--dir", dir.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("the build command `echo compiling; exit 3` failed (exit status: 3)"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("compiling"),
        "the build's output is shown: {}",
        r.stderr
    );

    let dir = app_dir(
        &server,
        "noout",
        &format!("{PY}\n[build]\ncommand = \"true\"\noutputs = [\"dist/app\"]\n"),
    );
    let r = server.run(&["build", "--env", "staging", "--dir", dir.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("build output `dist/app` does not exist after the build"),
        "{}",
        r.stderr
    );

    let dir = app_dir(&server, "other", &PY.replace("\"hello\"", "\"other\""));
    let r = server.run(&["build", "--env", "staging", "--dir", dir.to_str().unwrap()]);
    r.ok();
    let r = server.run(&["releases", "--env", "staging", "--app", "hello"]);
    assert!(
        r.stdout.contains("no releases yet"),
        "failed builds make no release: {}",
        r.stdout
    );
}

#[test]
fn the_rust_example_builds_in_a_clean_copy() {
    let server = TestServer::start();
    let src = support::repo_root().join("examples/hello-app");
    let r = server.run(&[
        "--json",
        "build",
        "--env",
        "production",
        "--dir",
        src.to_str().unwrap(),
    ]);
    r.ok();
    let rel = r.json();
    let hex = rel["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let bin = server
        .data_dir()
        .join("artifacts")
        .join(hex)
        .join("hello-app");
    use std::os::unix::fs::PermissionsExt;
    assert!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o111 != 0,
        "an executable output"
    );
    assert!(
        rel["build_log"].as_str().unwrap().contains("Finished"),
        "{}",
        rel["build_log"]
    );
}

#[test]
fn a_release_runs_from_its_artifact_directory() {
    let server = TestServer::start();
    let dir = app_dir(
        &server,
        "py",
        &format!(
            "{PY}\n[health.readiness]\nkind = \"http\"\npath = \"/readiness\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n"
        ),
    );
    let rel = server
        .run(&[
            "--json",
            "build",
            "--env",
            "staging",
            "--dir",
            dir.to_str().unwrap(),
        ])
        .json();
    std::fs::copy(
        dir.join("gantry.toml"),
        server.dir.path().join("gantry.toml"),
    )
    .unwrap();
    server.run(&["config", "apply", "--env", "staging"]).ok();
    let r = server.run(&["start", "--env", "staging", "--release", "1"]);
    r.ok();
    assert!(r.stdout.contains("from release 1"), "{}", r.stdout);
    let pid = server.wait_ready("staging", 1)[0]["pid"].as_i64().unwrap();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    let hex = rel["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    assert_eq!(cwd, server.data_dir().join("artifacts").join(hex));
    server.run(&["stop", "--env", "staging"]).ok();
    let r = server.run(&["start", "--env", "staging", "--release", "7"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no release 7"), "{}", r.stderr);
}
