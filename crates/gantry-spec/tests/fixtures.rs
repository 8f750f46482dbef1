//! Fixture files: good specs must pass, bad specs must fail with exactly the
//! diagnostics in the snapshots (file:line:column included).
//!
//! To update snapshots after an intended change:
//! `INSTA_UPDATE=always cargo test -p gantry-spec`, then review the `.snap`
//! diffs by eye before committing them.

use std::path::PathBuf;

fn fixture(rel: &str) -> (String, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
    (name, text)
}

fn good(rel: &str) -> gantry_spec::Spec {
    let (name, text) = fixture(rel);
    match gantry_spec::parse_str(&name, &text) {
        Ok(spec) => spec,
        Err(d) => panic!("{rel} should be valid, but:\n{d}"),
    }
}

fn bad(rel: &str) -> String {
    let (name, text) = fixture(rel);
    match gantry_spec::parse_str(&name, &text) {
        Ok(_) => panic!("{rel} should be rejected"),
        Err(d) => d.to_string(),
    }
}

macro_rules! bad_fixture {
    ($($test:ident => $file:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            insta::assert_snapshot!(bad(concat!("bad/", $file)));
        }
    )*};
}

bad_fixture! {
    typo_keys => "typo_keys.toml",
    wrong_types => "wrong_types.toml",
    out_of_range => "out_of_range.toml",
    unknown_strategy => "unknown_strategy.toml",
    duplicate_hosts => "duplicate_hosts.toml",
    undeclared_secrets => "undeclared_secrets.toml",
    syntax_error => "syntax_error.toml",
    many_errors => "many_errors.toml",
    semantic => "semantic.toml",
    environment_overrides => "environment_overrides.toml",
    duplicate_keys => "duplicate_keys.toml",
    nul_bytes => "nul_bytes.toml",
    secret_references => "secret_references.toml",
    long_durations => "long_durations.toml",
}

#[test]
fn minimal_gets_safe_defaults() {
    let spec = good("good/minimal.toml");
    assert_eq!(spec.app_name(), "tiny");
    assert!(spec.environment_names().is_empty());
    let app = spec.resolve("anything").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(app.run.instances, 1);
    assert_eq!(app.run.grace_period.to_string(), "10s");
    assert_eq!(app.deploy.keep_releases, 5);
    assert_eq!(app.analysis.min_requests, 50);
    assert_eq!(app.proxy.max_body.to_string(), "10MiB");
    assert_eq!(app.proxy.headers.frame_options, "DENY");
    insta::assert_snapshot!(app.redacted_toml());
}

#[test]
fn full_spec_parses_and_redacts() {
    let spec = good("good/full.toml");
    let app = spec.resolve("production").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(app.run.instances, 3);
    assert_eq!(app.deploy.steps.len(), 4);
    assert_eq!(app.notify.len(), 5);
    assert_eq!(
        app.secret_refs(),
        [
            "AM_PASSWORD",
            "DATABASE_URL",
            "HOOK_SIGNING_KEY",
            "PD_ROUTING_KEY",
            "PG_URL",
            "S3_KEY_ID",
            "S3_SECRET_KEY",
            "SESSION_KEY",
            "SLACK_WEBHOOK",
            "SMTP_PASSWORD"
        ]
    );
    let shown = app.redacted_toml();
    assert!(!shown.contains("literal-token-value"), "{shown}");
    assert!(!shown.contains(":pw@"), "{shown}");
    assert!(!shown.contains("token=abc"), "{shown}");
    insta::assert_snapshot!(shown);
    // What `config show` prints is itself a valid spec.
    if let Err(d) = gantry_spec::parse_str("shown.toml", &shown.replace("<redacted>", "x")) {
        panic!("redacted TOML does not parse back:\n{d}");
    }
    let json = app.redacted_json();
    assert_eq!(json["env"]["API_TOKEN"], "<redacted>");
    assert_eq!(json["env"]["DATABASE_URL"], "${secret.DATABASE_URL}");
    assert_eq!(json["notify"]["ops-slack"]["url_secret"], "SLACK_WEBHOOK");
}

#[test]
fn environments_merge_over_the_base() {
    let spec = good("good/environments.toml");
    assert_eq!(spec.environment_names(), ["production", "staging"]);
    assert_eq!(spec.secret_names(), ["DATABASE_URL", "SESSION_KEY"]);

    let staging = spec.resolve("staging").unwrap_or_else(|d| panic!("{d}"));
    let prod = spec.resolve("production").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(staging.proxy.hosts[0].as_str(), "staging.envs.localhost");
    assert_eq!(prod.proxy.hosts[0].as_str(), "envs.localhost");
    // Tables merge key by key...
    assert_eq!(prod.run.instances, 4);
    assert_eq!(prod.run.command, "./envs");
    assert_eq!(prod.env.len(), 3);
    assert_eq!(prod.env["LOG"].as_str(), "info");
    assert_eq!(prod.env["SESSION"].as_str(), "${secret.SESSION_KEY}");
    // ...arrays replace.
    assert_eq!(prod.deploy.steps.len(), 2);
    assert_eq!(staging.deploy.steps.len(), 1);
    assert_eq!(staging.env["LOG"].as_str(), "debug");
    assert!(staging.notify.is_empty());
    assert_eq!(prod.notify.len(), 1);
    assert_eq!(prod.secret_refs(), ["DATABASE_URL", "SESSION_KEY"]);
}

#[test]
fn unknown_environment_is_an_error_with_a_suggestion() {
    let spec = good("good/environments.toml");
    let err = match spec.resolve("prodution") {
        Ok(_) => panic!("resolved an undeclared environment"),
        Err(d) => d.to_string(),
    };
    insta::assert_snapshot!(err, @r"
    environments.toml:21:15: [environments] unknown environment `prodution`
      help: did you mean `production`? Declared environments: `production`, `staging`
    ");
}

#[test]
fn load_reports_unreadable_files() {
    let err = match gantry_spec::load(std::path::Path::new("/nonexistent/gantry.toml")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(d) => d,
    };
    assert_eq!(err.0.len(), 1);
    assert!(
        err.to_string()
            .starts_with("/nonexistent/gantry.toml:1:1: cannot read the app spec")
    );
}

#[test]
fn garbage_never_panics() {
    let inputs = [
        "",
        "=",
        "[app",
        "app = 1",
        "[[app]]\nname = 'x'",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\n[environments]\nx = 1",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\n[environments.a.environments.b]\n",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\nalerts = [1, 'a', {}]\nnotify = { a = 1 }",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\n[run.limits]\ncpu = nan\nmemory = '99999999999999999999TiB'",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\ninstances = 9223372036854775807\ngrace_period = 1979-05-27T07:32:00Z",
        "[app]\nname = '\u{1F600}'\n[run]\ncommand = 'y'\n[env]\n\"é\" = '${secret.'",
        "[app]\nname = 'x'\nname = 'x'\n[app]\n[app]\n[[app]]\n",
        "[a.b]\nc = 1\n[a]\nb.d = 2\nb.d = 3\n",
        "a = { \"k k\" = 1, 'k k' = 2 }\na = 1\n",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\n[env]\nA = '${secrets.'\nB = '${ secret. }'\nC = '${secret:}'",
        "[app]\nname = 'x'\n[run]\ncommand = 'y'\ngrace_period = '1.99999999999999999999999999999d'\n[run.backoff]\nmax = '0.0000000000000000000001ms'",
    ];
    for input in inputs {
        match gantry_spec::parse_str("g.toml", input) {
            Ok(_) => panic!("accepted {input:?}"),
            Err(d) => assert!(!d.0.is_empty(), "{input:?}"),
        }
    }
}

#[test]
fn a_duplicate_key_and_a_syntax_error_after_it_are_both_reported() {
    let text = "[app]\nname = \"x\"\n[run]\ncommand = \"y\"\n[env]\nA = \"1\"\nA = \"2\"\nB = \n";
    let err = match gantry_spec::parse_str("g.toml", text) {
        Ok(_) => panic!("accepted"),
        Err(d) => d.to_string(),
    };
    insta::assert_snapshot!(err, @r"
    g.toml:7:1: duplicate key `A`: it is already set above
      help: a key is set once per table: keep one of the two

    g.toml:8:5: invalid TOML: string values must be quoted, expected literal string
      help: fix the TOML syntax first; other problems are reported once the file parses
    ");
}

#[test]
fn a_reference_to_a_misspelt_secret_suggests_the_declared_one() {
    let text = r#"secrets = ["DATABASE_URL", "SESSION_KEY"]

[app]
name = "refs"

[run]
command = "./refs"

[env]
DB = "${secret.DATABSE_URL}"

[environments.production.env]
KEY = "k=${secret.SESION_KEY}"
"#;
    let err = match gantry_spec::parse_str("refs.toml", text) {
        Ok(_) => panic!("accepted undeclared secrets"),
        Err(d) => d.to_string(),
    };
    insta::assert_snapshot!(err, @r#"
    refs.toml:10:6: [env.DB] secret `DATABSE_URL` is not declared
      help: did you mean `DATABASE_URL`? Otherwise add "DATABSE_URL" to the top-level `secrets` list

    refs.toml:13:7: [environments.production.env.KEY] secret `SESION_KEY` is not declared
      help: did you mean `SESSION_KEY`? Otherwise add "SESION_KEY" to the top-level `secrets` list
    "#);
}

#[test]
fn many_duplicate_keys_are_named_up_to_a_bound() {
    let mut text = String::from("[app]\nname = \"x\"\n\n[run]\ncommand = \"y\"\n\n[env]\n");
    for _ in 0..100 {
        text.push_str("A = \"1\"\n");
    }
    let d = match gantry_spec::parse_str("g.toml", &text) {
        Ok(_) => panic!("accepted"),
        Err(d) => d,
    };
    let named = d
        .iter()
        .filter(|x| x.message.starts_with("duplicate key `A`"))
        .count();
    assert_eq!(named, 32, "{d}");
    assert!(d.iter().all(|x| x.line >= 9), "{d}");
}
