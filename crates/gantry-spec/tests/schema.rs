//! The checked-in `gantry.schema.json` must match the types.

use std::path::PathBuf;

#[test]
fn checked_in_schema_is_fresh() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("gantry.schema.json");
    let schema = gantry_spec::json_schema();
    let fresh = match serde_json::to_string_pretty(&schema) {
        Ok(text) => format!("{text}\n"),
        Err(e) => panic!("cannot render the schema: {e}"),
    };
    if std::env::var_os("GANTRY_BLESS").is_some_and(|v| v == "1") {
        if let Err(e) = std::fs::write(&path, &fresh) {
            panic!("cannot write {}: {e}", path.display());
        }
        return;
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    // Compare as JSON, so key order does not matter.
    let parsed: Option<serde_json::Value> = serde_json::from_str(&on_disk).ok();
    assert!(
        parsed.as_ref() == Some(&schema),
        "{} is stale: the spec types changed. Regenerate it with\n\n    GANTRY_BLESS=1 cargo test -p gantry-spec --test schema\n\nand commit the result.",
        path.display()
    );
}

#[test]
fn schema_describes_every_field() {
    fn walk(v: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = v.get("properties").and_then(|p| p.as_object()) {
            for (k, p) in props {
                // The tag of a tagged union is described by its variant.
                if p.get("description").is_none() && k != "kind" {
                    missing.push(format!("{path}.{k}"));
                }
                walk(p, &format!("{path}.{k}"), missing);
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(items) = v.get(key).and_then(|a| a.as_array()) {
                for item in items {
                    walk(item, path, missing);
                }
            }
        }
    }
    let schema = gantry_spec::json_schema();
    let mut missing = Vec::new();
    walk(&schema, "", &mut missing);
    if let Some(defs) = schema.get("$defs").and_then(|d| d.as_object()) {
        for (name, def) in defs {
            walk(def, name, &mut missing);
        }
    }
    assert!(
        missing.is_empty(),
        "fields without a doc comment: {missing:?}"
    );
}

/// Every duration field has an upper bound (`maxDuration`), so no value in
/// a validated spec can overflow a deadline, and its description says it.
#[test]
fn every_duration_has_an_upper_bound() {
    fn walk(v: &serde_json::Value, path: &str, unbounded: &mut Vec<String>, n: &mut usize) {
        if let Some(map) = v.as_object() {
            let format = map.get("format").and_then(|f| f.as_str());
            if matches!(format, Some("duration" | "duration-or-zero" | "pause")) {
                *n += 1;
                let max = map.get("maxDuration").and_then(|m| m.as_str());
                let described = map
                    .get("description")
                    .and_then(|d| d.as_str())
                    .zip(max)
                    .is_some_and(|(d, m)| d.ends_with(&format!("At most {m}.")));
                let valid = max.is_some_and(|m| {
                    m.parse::<gantry_spec::Duration>()
                        .is_ok_and(|d| d <= gantry_spec::Duration::MAX)
                });
                if !(valid && described) {
                    unbounded.push(path.to_string());
                }
            }
            for (k, child) in map {
                walk(child, &format!("{path}/{k}"), unbounded, n);
            }
        } else if let Some(items) = v.as_array() {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"), unbounded, n);
            }
        }
    }
    let (mut unbounded, mut n) = (Vec::new(), 0);
    walk(&gantry_spec::json_schema(), "", &mut unbounded, &mut n);
    assert!(n >= 19, "only {n} duration fields found");
    assert!(
        unbounded.is_empty(),
        "durations without a bound: {unbounded:?}"
    );
}
