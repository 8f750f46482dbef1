//! The entry point for fuzzing: the spec parser and walker on a byte
//! slice, the way the server runs them on the `gantry.toml` of an
//! uploaded bundle, then everything the server and the CLI do with a spec
//! that passed. It must not panic, whatever the input; the fuzz target
//! (fuzz/fuzz_targets/spec.rs) calls it once per input. Not part of the
//! crate's API (hidden from its docs).

/// Parses and validates `data` as `gantry.toml` ([`crate::parse_bytes`])
/// and renders its diagnostics. A spec that passes is resolved for each
/// of its environments and for an undeclared one; each resolved spec is
/// rendered as redacted JSON and TOML, its secrets listed and its env
/// rendered; the redacted TOML must parse back as a valid spec (as
/// [`crate::AppSpec::redacted_toml`] promises), else this panics.
pub fn spec(data: &[u8]) {
    let spec = match crate::parse_bytes("gantry.toml", data) {
        Ok(spec) => spec,
        Err(diagnostics) => {
            let _ = diagnostics.to_string();
            return;
        }
    };
    let _ = spec.secret_names();
    let mut envs = spec.environment_names();
    envs.push("not-declared".to_string());
    for env in envs {
        let resolved = match spec.resolve(&env) {
            Ok(resolved) => resolved,
            Err(diagnostics) => {
                let _ = diagnostics.to_string();
                continue;
            }
        };
        let _ = resolved.redacted_json();
        let _ = resolved.secret_refs();
        let _ = resolved.render_env(|name| Some(format!("value of {name}")));
        let toml = resolved.redacted_toml();
        if let Err(d) = crate::parse_str("redacted.toml", &toml) {
            panic!("environment `{env}`: the redacted spec does not parse back:\n{d}\n---\n{toml}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_and_junk_pass_through_without_panicking() {
        for example in ["hello-app", "hello-py"] {
            let path = format!(
                "{}/../../examples/{example}/gantry.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let text = std::fs::read(&path).unwrap();
            assert!(crate::parse_bytes(&path, &text).is_ok(), "{path}");
            spec(&text);
        }
        for junk in [
            &b""[..],
            b"\xff\xfe",
            b"[app",
            b"app = 1\napp = 2",
            b"[environments.x]\n[environments.x]",
            b"[app]\nname = \"\xc3\"",
        ] {
            spec(junk);
        }
    }
}
