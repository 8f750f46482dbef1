//! A real app's pages behind the default security headers, in a real
//! browser: Datasette (whose pages carry inline scripts and styles) deployed
//! with `csp_mode = "report-only"` keeps working in headless Chromium, and
//! the violations the browser reports reach `gantry check headers
//! --reports`. `./scripts/test` installs Chromium, Datasette (in
//! target/test-tools/venv) and playwright-core (in target/test-tools/node).

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::deploy::serial;
use support::{OutputInTime, TestServer, start_proxy};

fn tools() -> PathBuf {
    support::repo_root().join("target/test-tools")
}

/// What the browser saw, one `key value` per line.
const BROWSE: &str = r#"
const { chromium } = require('playwright-core');
(async () => {
  const [base, port] = [process.argv[2], process.argv[3]];
  const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    `--host-resolver-rules=MAP ds.test 127.0.0.1`] });
  const p = await b.newPage();
  for (const path of ['/', '/db', '/db/t']) {
    await p.goto(`http://ds.test:${port}${path}`, { waitUntil: 'networkidle' });
  }
  console.log('title', await p.title());
  console.log('rows', await p.locator('table.rows-and-columns tbody tr').count());
  console.log('inline', await p.evaluate(() => typeof window.DATASETTE_ALLOW_FACET));
  // Reports go out as the page runs; give the last ones a moment.
  await new Promise(r => setTimeout(r, 1000));
  await b.close();
})().catch(e => { console.error(e); process.exit(1); });
"#;

#[test]
fn datasette_works_in_chromium_behind_a_report_only_csp_and_its_violations_are_reported() {
    let venv = tools().join("venv/bin");
    let node_modules = tools().join("node/node_modules");
    assert!(
        venv.join("datasette").exists() && node_modules.join("playwright-core").exists(),
        "Datasette and playwright-core are missing under {}: run ./scripts/test, which installs them",
        tools().display()
    );
    let _serial = serial();
    let proxy_state = tempfile::tempdir().unwrap();
    let proxy = start_proxy(proxy_state.path());
    let admin = proxy_state.path().join("admin.sock");
    let server = TestServer::start_with(&["--proxy-admin", admin.to_str().unwrap()]);

    // The app: a SQLite file with 50 rows and its gantry.toml.
    let src = server.dir.path().join("ds");
    std::fs::create_dir_all(&src).unwrap();
    let made = Command::new(venv.join("python"))
        .arg("-c")
        .arg(
            "import sqlite3; c = sqlite3.connect('db.sqlite'); c.execute('create table t(a, b)'); \
             c.executemany('insert into t values (?, ?)', [(i, str(i)) for i in range(50)]); c.commit()",
        )
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(made.success());
    let toml = format!(
        r#"
[app]
name = "ds"

[run]
command = "datasette serve db.sqlite --host 127.0.0.1 --port $PORT --immutable db.sqlite"

[health.readiness]
kind = "http"
path = "/-/versions.json"
startup_grace = "30s"

[env]
PATH = "{}:/usr/bin:/bin"

[proxy]
hosts = ["ds.test"]

[proxy.headers]
csp_mode = "report-only"
"#,
        venv.display()
    );
    std::fs::write(src.join("gantry.toml"), &toml).unwrap();
    let in_app = |args: &[&str]| {
        let mut c = server.cmd();
        c.current_dir(&src).args(args);
        support::Run::from(c.output_in_time().unwrap())
    };
    in_app(&["config", "apply", "--env", "production"]).ok();
    in_app(&["build", "--env", "production"]).ok();
    in_app(&["deploy", "--env", "production", "--release", "1", "--wait"]).ok();

    // Chromium loads three pages: they work (inline scripts run, rows show).
    std::fs::write(server.dir.path().join("browse.js"), BROWSE).unwrap();
    let out = Command::new("node")
        .arg(server.dir.path().join("browse.js"))
        .arg("ds.test")
        .arg(proxy.port.to_string())
        .env("NODE_PATH", &node_modules)
        .output_in_time()
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{seen}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(seen.contains("title db: t: 50 rows"), "{seen}");
    assert!(seen.contains("rows 50"), "{seen}");
    assert!(
        seen.contains("inline boolean"),
        "the inline script ran: {seen}"
    );

    // What the strict policy would have blocked was reported to the proxy.
    let r = in_app(&["check", "headers", "--reports", "--env", "production"]);
    assert_eq!(r.code, 1, "violations were reported: {r:?}");
    assert!(
        r.stdout.contains("ds/production:")
            && r.stdout.contains("script-src-elem")
            && r.stdout.contains("inline")
            && r.stdout
                .contains(&format!("http://ds.test:{}/db/t", proxy.port)),
        "{}",
        r.stdout
    );
}
