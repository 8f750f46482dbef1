//! Big specs: environment overrides cost what the same keys cost in the base.
//!
//! The merge itself is checked by counting key comparisons (a unit test in
//! `tree.rs`); here the whole path runs on 64k keys both ways. Timings are not
//! asserted (the machine is shared); `cargo run --release -p gantry-spec
//! --example env_scale` prints them side by side.

const KEYS: usize = 1 << 16;

fn spec(keys: usize, in_environment: bool) -> String {
    let mut s = String::from("[app]\nname = \"big\"\n\n[run]\ncommand = \"./big\"\n\n");
    s.push_str(if in_environment {
        "[env]\nBASE = \"b\"\n\n[environments.big.env]\n"
    } else {
        "[env]\n"
    });
    for i in 0..keys {
        s.push_str(&format!("K{i:05} = \"v\"\n"));
    }
    s
}

#[test]
fn sixty_four_thousand_keys_in_an_environment_resolve_like_the_base() {
    for in_environment in [false, true] {
        let text = spec(KEYS, in_environment);
        assert!(text.len() <= gantry_spec::MAX_SPEC_BYTES, "{}", text.len());
        let spec = gantry_spec::parse_str("big.toml", &text).unwrap_or_else(|d| panic!("{d}"));
        let app = spec.resolve("big").unwrap_or_else(|d| panic!("{d}"));
        let expected = KEYS + usize::from(in_environment);
        assert_eq!(app.env.len(), expected);
        assert_eq!(app.env["K65535"].as_str(), "v");
        if in_environment {
            assert_eq!(app.env["BASE"].as_str(), "b");
        }
    }
}

#[test]
fn an_error_deep_in_a_big_override_points_at_its_line() {
    let mut text = spec(4096, true);
    text.push_str("PORT = \"1\"\n");
    let err = match gantry_spec::parse_str("big.toml", &text) {
        Ok(_) => panic!("PORT in [env] passed"),
        Err(d) => d.to_string(),
    };
    let line = text.lines().count();
    assert!(
        err.starts_with(&format!("big.toml:{line}:8: [environments.big.env.PORT]")),
        "{err}"
    );
}
