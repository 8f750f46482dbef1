//! Build output is bounded in the server's memory: only its tail is kept
//! (for the release and the error), the whole of it goes to a log file in
//! the data directory.

mod support;

use support::TestServer;

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

fn app_dir(server: &TestServer, name: &str, build: &str) -> std::path::PathBuf {
    let dir = server.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gantry.toml"),
        format!(
            "[app]\nname = \"loud\"\n\n[run]\ncommand = \"true\"\n\n[build]\ncommand = \"{build}\"\n"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn a_build_that_prints_200_mib_leaves_the_servers_memory_flat_and_logs_it_all() {
    const TOTAL: u64 = 200 * 1024 * 1024;
    const LINE: &str = "0123456789abcdef";
    let server = TestServer::start();
    let pid = server.child.as_ref().unwrap().id();
    let cmd = format!("yes {LINE} | head -c {TOTAL}");
    // Warm up: one small build, so the measure is the big build's alone.
    let small = app_dir(&server, "small", "echo small");
    server
        .run(&[
            "build",
            "--env",
            "staging",
            "--dir",
            small.to_str().unwrap(),
        ])
        .ok();
    let dir = app_dir(&server, "loud", &cmd);
    let before = peak_rss(pid);
    let r = server.run(&[
        "--json",
        "build",
        "--env",
        "staging",
        "--dir",
        dir.to_str().unwrap(),
    ]);
    r.ok();
    let grew = peak_rss(pid).saturating_sub(before);
    eprintln!(
        "server peak RSS: {} MiB before, grew by {} KiB during the build",
        before / (1024 * 1024),
        grew / 1024
    );
    assert!(
        grew < 48 * 1024 * 1024,
        "the server's peak RSS grew by {} MiB for 200 MiB of build output",
        grew / (1024 * 1024)
    );

    // The release keeps the tail, which names the log with all of it.
    let rel = r.json();
    let kept = rel["build_log"].as_str().unwrap();
    let (mark, tail) = kept.split_once('\n').unwrap();
    let log = mark
        .strip_prefix("… (the whole output is in ")
        .and_then(|m| m.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no log named in {mark:?}"));
    let log = std::path::Path::new(log);
    assert!(
        log.starts_with(server.data_dir().join("builds")),
        "{}",
        log.display()
    );
    assert_eq!(tail.len(), 64 * 1024);
    let cut = (TOTAL % (LINE.len() as u64 + 1)) as usize;
    assert!(
        tail.ends_with(&format!("{LINE}\n{}", &LINE[..cut])),
        "{tail}"
    );

    // The log: a header, every byte of the output, how it ended.
    let header = format!("--- `{cmd}`\n");
    let footer = "\n--- exit status: 0\n";
    let len = std::fs::metadata(log).unwrap().len();
    assert_eq!(len, (header.len() + footer.len()) as u64 + TOTAL);
    use std::io::{Read, Seek};
    let mut f = std::fs::File::open(log).unwrap();
    let mut start = vec![0u8; header.len() + 2 * (LINE.len() + 1)];
    f.read_exact(&mut start).unwrap();
    assert_eq!(
        String::from_utf8(start).unwrap(),
        format!("{header}{LINE}\n{LINE}\n")
    );
    f.seek(std::io::SeekFrom::End(-(footer.len() as i64 + cut as i64)))
        .unwrap();
    let mut end = String::new();
    f.read_to_string(&mut end).unwrap();
    assert_eq!(end, format!("{}{footer}", &LINE[..cut]));
    // The build's directory is gone; its log stays.
    let left: Vec<String> = std::fs::read_dir(server.data_dir().join("builds"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.iter().all(|n| n.ends_with(".log")), "{left:?}");
    assert_eq!(left.len(), 2, "{left:?}");
}

#[test]
fn a_failed_build_shows_its_tail_and_names_its_log() {
    let server = TestServer::start();
    let dir = app_dir(
        &server,
        "fails",
        "seq 1 100000; echo the compiler gave up; exit 4",
    );
    let r = server.run(&["build", "--env", "staging", "--dir", dir.to_str().unwrap()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("failed (exit status: 4)"), "{}", r.stderr);
    assert!(
        r.stderr.contains("99999\n100000\nthe compiler gave up"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("\n1\n2\n3\n"),
        "only the tail is shown: {}",
        &r.stderr[..r.stderr.len().min(500)]
    );
    let builds = server.data_dir().join("builds");
    let named = r
        .stderr
        .split("(the whole output is in ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .unwrap_or_else(|| panic!("no log named: {}", r.stderr));
    let log = std::fs::read_to_string(named).unwrap();
    assert!(std::path::Path::new(named).starts_with(&builds));
    assert!(log.contains("\n1\n2\n3\n"), "the log has the start");
    assert!(log.ends_with("the compiler gave up\n\n--- exit status: 4\n"));
}

#[test]
fn a_hung_migration_times_out_with_the_output_it_printed() {
    let _serial = support::deploy::serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let _proxy = support::start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);
    let migrate = "echo applying 0042_users; echo lock wait >&2; sleep 120";
    let toml = support::deploy::config(
        "strategy = \"blue-green\"",
        "",
        &format!("[migrate]\ncommand = \"{migrate}\"\ntimeout = \"2s\"\n"),
    );
    let release = support::deploy::release(&server, &toml);
    let out = server.run(&[
        "deploy",
        "--env",
        "production",
        "--release",
        &release.to_string(),
        "--wait",
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains(&format!(
            "`{migrate}` ran longer than 2 s: applying 0042_users\nlock wait"
        )),
        "the timeline keeps what the migration printed: {}",
        out.stdout
    );
    // The deploy's log has the whole output and how it ended.
    let id = server
        .run(&["--json", "deploys", "--env", "production"])
        .json()[0]["id"]
        .as_i64()
        .unwrap();
    let log = std::fs::read_to_string(server.data_dir().join(format!("deploys/{id}.log"))).unwrap();
    assert_eq!(
        log,
        format!("--- `{migrate}`\napplying 0042_users\nlock wait\n\n--- ran longer than 2 s\n")
    );
}
