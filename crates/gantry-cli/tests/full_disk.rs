//! A full disk in the middle of a canary step, under load: the control
//! plane's store and the proxy's table both live on a small tmpfs that is
//! filled while the canary serves. The deploy must hold the routing as it
//! is (no decision acted on unstored), say why in `gantry deploys`, accept
//! `gantry abort`, and carry out the stored decision once space returns.
//! No request may reach a stopped instance.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::deploy::{Load, deploy_detached, get_via, release, serial, sets, show, wait_phase};
use support::{TestServer, start_proxy};

fn config(deploy: &str, env: &str) -> String {
    format!(
        r#"
[app]
name = "hello"

[run]
command = "./hello-app"
instances = 2
grace_period = "5s"

[health.readiness]
kind = "http"
path = "/readiness"
interval = "300ms"
timeout = "250ms"
failure_threshold = 3

[deploy]
{deploy}

[analysis]
interval = "500ms"
min_requests = 10

[env]
{env}

[proxy]
hosts = ["hello.test"]
"#
    )
}

/// A tmpfs mounted for the test, unmounted (lazily: app processes may still
/// have files open on it) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros to `path` until the file system is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last bytes that fit.
    let mut small = vec![0u8; 4096];
    while f.write_all(&small).is_ok() {}
    small.truncate(1);
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
}

/// The weight the proxy's served table gives `set` in production's route.
fn weight(admin: &Path, set: &str) -> Option<u32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let table = rt
        .block_on(async {
            tokio::time::timeout(
                support::CALL_DEADLINE,
                gantry_proxy::AdminClient::new(admin).table(),
            )
            .await
        })
        .expect("GET /table in time")
        .unwrap();
    table
        .routes
        .iter()
        .find(|r| r.id == "hello/production")?
        .sets
        .iter()
        .find(|s| s.name == set)
        .map(|s| s.weight)
}

#[test]
fn a_full_disk_mid_canary_holds_the_routing_and_carries_out_the_stored_decision() {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, "96m");
    // The proxy's state (its persisted table) on the same small disk.
    let proxy_state = data.join("proxy");
    std::fs::create_dir_all(&proxy_state).unwrap();
    let proxy = start_proxy(&proxy_state);
    let admin = proxy_state.join("admin.sock");
    let server = TestServer::start_in(
        dir,
        &[
            "--proxy-admin",
            admin.to_str().unwrap(),
            "--port-range",
            "29500-29549",
        ],
    );
    let bg = "strategy = \"blue-green\"\nrollback_window = \"1s\"";
    let r1 = release(&server, &config(bg, "APP_VERSION = \"v1\""));
    server
        .run(&[
            "deploy",
            "--env",
            "production",
            "--release",
            &r1.to_string(),
            "--wait",
        ])
        .ok();
    let canary = "strategy = \"canary\"\nsteps = [{ weight = 30, pause = \"3s\" }, { weight = 60, pause = \"3s\" }]";
    let r2 = release(&server, &config(canary, "APP_VERSION = \"v2\""));
    let load = Load::start_n(proxy.port, 2);
    let id = deploy_detached(&server, r2);
    let d = wait_phase(&server, id, "analyze");
    assert_eq!(d["weight"], 30, "{d:#}");
    let set = format!("r{r2}");

    // The disk fills during the first step; at its end the machine decides
    // to go to 60 %, and that decision cannot be stored.
    let filler = data.join("filler");
    fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        let d = show(&server, id);
        if let Some(h) = d["holding"].as_str() {
            break h.to_string();
        }
        assert!(
            d["outcome"].is_null(),
            "ended while the disk was full: {d:#}"
        );
        assert!(
            Instant::now() < deadline,
            "the deploy did not hold within 60 s of the disk filling: {d:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        held.contains("cannot store the deploy's state") && held.contains("full"),
        "{held}"
    );
    // `gantry deploys` says so too.
    let list = server.run(&["deploys", "--env", "production"]);
    assert!(list.stdout.contains("holding"), "{}", list.stdout);
    // Traffic stays where the stored state has it.
    assert_eq!(weight(&admin, &set), Some(30));
    assert_eq!(show(&server, id)["weight"], 30);
    // An abort is taken while the deploy holds; it becomes the decision.
    let abort = server.run(&["abort", "--env", "production", &id.to_string()]);
    assert_eq!(abort.code, 0, "{abort:?}");
    // Deliberately two seconds with the disk full: nothing may act on the
    // abort meanwhile, as it cannot be stored.
    std::thread::sleep(Duration::from_secs(2));
    let d = show(&server, id);
    assert!(d["outcome"].is_null() && d["holding"].is_string(), "{d:#}");
    assert_eq!(weight(&admin, &set), Some(30), "nothing acted on unstored");
    assert!(sets(&server).contains(&set));

    // Space returns: the stored decision (the abort's rollback) is carried
    // out, not replaced by another.
    std::fs::remove_file(&filler).unwrap();
    let d = wait_phase(&server, id, "done");
    assert_eq!(d["outcome"], "aborted", "{d:#}");
    assert_eq!(sets(&server), [format!("r{r1}")]);
    assert!(get_via(proxy.port).1.contains("hello from v1"));
    let timeline = d["timeline"].to_string();
    assert!(
        timeline.contains("cannot store the deploy's state") && timeline.contains("carried on"),
        "{timeline}"
    );
    // A step the machine may have decided while the disk was full was
    // never taken: the timeline shows it only as replaced, if at all.
    for e in d["timeline"].as_array().unwrap() {
        let m = e["message"].as_str().unwrap();
        assert!(
            !m.contains("canary step 2/2") || m.starts_with("not carried out"),
            "{timeline}"
        );
    }
    // Deliberately, the load goes on a moment after the deploy ended.
    std::thread::sleep(Duration::from_millis(300));
    let seen = load.finish();
    assert_eq!(
        seen.failed + seen.injected,
        0,
        "failed requests: {:?}",
        seen.samples
    );
    assert!(seen.ok > 100, "the load ran ({} requests)", seen.ok);
}
