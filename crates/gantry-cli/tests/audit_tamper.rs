//! The audit log catches tampering done in the SQLite file behind the
//! running server's back: an edited row, a deleted middle row, and deleted
//! newest rows (caught through the chain head kept outside the table).

mod support;

use support::TestServer;

/// A server with a few audited mutations (secrets set by the local admin).
fn server_with_entries(n: usize) -> TestServer {
    let server = TestServer::start();
    for i in 0..n {
        server
            .run_stdin(
                &[
                    "secrets",
                    "set",
                    &format!("S{i}"),
                    "--env",
                    "production",
                    "--app",
                    "hello",
                ],
                "value\n",
            )
            .ok();
    }
    let r = server.run(&["audit", "verify"]);
    r.ok();
    assert!(
        r.stdout.contains(&format!("intact: {n} entries")),
        "{}",
        r.stdout
    );
    server
}

/// Edits as an attacker with the file would: drop the append-only triggers,
/// then change rows.
fn tamper(server: &TestServer, sql: &str) {
    let r = server.sqlite(&format!(
        "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete; {sql}"
    ));
    assert_eq!(r.code, 0, "sqlite3: {}", r.stderr);
}

fn verify_fails(server: &TestServer, at: i64, words: &str) {
    let r = server.run(&["audit", "verify"]);
    assert_eq!(r.code, 1, "verify must fail: {r:?}");
    assert!(
        r.stdout.contains(&format!("BROKEN at entry {at}:")) && r.stdout.contains(words),
        "{}",
        r.stdout
    );
    let j = server.run(&["--json", "audit", "verify"]).json();
    assert_eq!(j["ok"], false);
    assert_eq!(j["broken_at"], at);
}

#[test]
fn edited_row_is_reported() {
    let server = server_with_entries(5);
    tamper(
        &server,
        "UPDATE audit_log SET actor='someone-else' WHERE seq=3;",
    );
    verify_fails(&server, 3, "edited");
}

#[test]
fn deleted_middle_row_is_reported() {
    let server = server_with_entries(5);
    tamper(&server, "DELETE FROM audit_log WHERE seq=2;");
    verify_fails(&server, 2, "missing");
}

#[test]
fn deleted_newest_rows_are_reported() {
    let server = server_with_entries(5);
    tamper(&server, "DELETE FROM audit_log WHERE seq>=4;");
    verify_fails(&server, 4, "newest entries were deleted");
}

#[test]
fn audit_list_shows_actor_action_and_no_values() {
    let server = server_with_entries(2);
    let r = server.run(&["audit", "--since", "1h"]);
    r.ok();
    assert!(r.stdout.contains("secret.set"), "{}", r.stdout);
    assert!(r.stdout.contains("local:uid="), "{}", r.stdout);
    assert!(
        r.stdout.contains("apps/hello/envs/production/secrets/S1"),
        "{}",
        r.stdout
    );
    let j = server.run(&["--json", "audit"]).json();
    assert_eq!(j.as_array().unwrap().len(), 2);
    assert_eq!(j[0]["params"]["value"], "<redacted>");
    assert!(!j.to_string().contains("\"value\":\"value\""));
}
