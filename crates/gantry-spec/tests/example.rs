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
