//! The JSON Schema of `gantry.toml`, generated from the types in
//! [`crate::model`], plus `environments`: a copy of every definition with
//! `required` and `default` removed, because an override table holds only
//! the keys it changes.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::model::AppSpec;

const OVERRIDE_SUFFIX: &str = "Override";

/// The JSON Schema of `gantry.toml` (draft 2020-12), for editors and for the
/// validator, which walks the document against it.
pub fn json_schema() -> Value {
    let mut root =
        serde_json::to_value(schemars::schema_for!(AppSpec)).unwrap_or_else(|_| json!({}));
    describe_bounds(&mut root);
    add_environments(&mut root);
    root
}

/// Adds "At most 1d." to the description of every duration with a
/// `maxDuration`, so editors show the bound next to the field.
fn describe_bounds(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(max) = map.get("maxDuration").and_then(Value::as_str) {
                let line = format!("At most {max}.");
                let text = match map.get("description").and_then(Value::as_str) {
                    Some(d) => format!("{} {line}", d.trim_end()),
                    None => line,
                };
                map.insert("description".to_string(), Value::String(text));
            }
            for child in map.values_mut() {
                describe_bounds(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(describe_bounds),
        _ => {}
    }
}

/// The schema, built once per process.
pub(crate) fn cached() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(json_schema)
}

fn add_environments(root: &mut Value) {
    let Some(obj) = root.as_object_mut() else {
        return;
    };
    let properties = obj.get("properties").cloned().unwrap_or_else(|| json!({}));
    let defs = obj
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();

    let mut new_defs = Map::new();
    for (name, def) in &defs {
        new_defs.insert(format!("{name}{OVERRIDE_SUFFIX}"), partial(def));
    }
    let mut override_props = Map::new();
    if let Some(props) = properties.as_object() {
        for (k, v) in props {
            override_props.insert(k.clone(), partial(v));
        }
    }
    new_defs.insert(
        "EnvironmentOverride".to_string(),
        json!({
            "description": "Overrides for one environment: any base key, with only the keys that change. Tables merge key by key; arrays and values replace the base value.",
            "type": "object",
            "additionalProperties": false,
            "properties": override_props,
        }),
    );
    if let Some(Value::Object(d)) = obj.get_mut("$defs") {
        d.extend(new_defs);
    }
    if let Some(Value::Object(p)) = obj.get_mut("properties") {
        p.insert(
            "environments".to_string(),
            json!({
                "description": "Environments (e.g. `staging`, `production`), each overriding base keys. `gantry deploy --env <name>` uses the base keys merged with that environment's table. When none is declared, any environment name uses the base keys unchanged.",
                "type": "object",
                "propertyNames": { "format": "label" },
                "additionalProperties": { "$ref": "#/$defs/EnvironmentOverride" },
            }),
        );
    }
}

/// A copy of `schema` in which nothing is required and there are no
/// defaults, referring to the partial copies of other definitions.
fn partial(schema: &Value) -> Value {
    let Some(obj) = schema.as_object() else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (k, v) in obj {
        let value = match k.as_str() {
            "required" | "default" => continue,
            "$ref" => match v.as_str() {
                Some(r) if r.starts_with("#/$defs/") => {
                    Value::String(format!("{r}{OVERRIDE_SUFFIX}"))
                }
                _ => v.clone(),
            },
            "properties" | "patternProperties" => match v.as_object() {
                Some(m) => Value::Object(
                    m.iter()
                        .map(|(name, s)| (name.clone(), partial(s)))
                        .collect(),
                ),
                None => v.clone(),
            },
            "items" | "additionalProperties" | "propertyNames" | "not" => partial(v),
            "oneOf" | "anyOf" | "allOf" => match v.as_array() {
                Some(a) => Value::Array(a.iter().map(partial).collect()),
                None => v.clone(),
            },
            _ => v.clone(),
        };
        out.insert(k.clone(), value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_require_nothing() {
        let s = json_schema();
        let run = &s["$defs"]["EnvironmentOverride"]["properties"]["run"];
        assert_eq!(run["$ref"], "#/$defs/RunOverride");
        assert!(s["$defs"]["RunOverride"].get("required").is_none());
        assert!(s["$defs"]["Run"].get("required").is_some());
        assert_eq!(s["required"], json!(["app", "run"]));
    }
}
