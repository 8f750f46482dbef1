//! The example app's spec must stay valid.

use std::path::PathBuf;

#[test]
fn hello_example_is_valid() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-app/gantry.toml");
    let spec = match gantry_spec::load(&path) {
        Ok(spec) => spec,
        Err(d) => panic!("examples/hello-app/gantry.toml is invalid:\n{d}"),
    };
    assert_eq!(spec.app_name(), "hello");
    assert_eq!(spec.environment_names(), ["production", "staging"]);
    assert_eq!(spec.secret_names(), ["SESSION_KEY"]);
    let staging = spec.resolve("staging").unwrap_or_else(|d| panic!("{d}"));
    let prod = spec.resolve("production").unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(staging.proxy.hosts[0].as_str(), "staging.hello.localhost");
    assert_eq!(prod.proxy.hosts[0].as_str(), "hello.localhost");
    assert_eq!(prod.secret_refs(), ["SESSION_KEY"]);
    assert_eq!(prod.health.readiness.path.as_deref(), Some("/readiness"));
}

#[test]
fn render_env_fills_secret_references() {
    let spec = gantry_spec::parse_str(
        "gantry.toml",
        "secrets = [\"KEY\"]\n[app]\nname = \"a\"\n[run]\ncommand = \"x\"\n[env]\nURL = \"pg://u:${secret.KEY}@h/db\"\nPLAIN = \"1\"\n",
    )
    .unwrap()
    .resolve("production")
    .unwrap();
    let vars = spec
        .render_env(|n| (n == "KEY").then(|| "s3".to_string()))
        .unwrap();
    assert_eq!(vars["URL"], "pg://u:s3@h/db");
    assert_eq!(vars["PLAIN"], "1");
    assert_eq!(vars["KEY"], "s3");
    assert_eq!(
        spec.render_env(|_| None).unwrap_err(),
        gantry_spec::MissingSecret("KEY".into())
    );
}
