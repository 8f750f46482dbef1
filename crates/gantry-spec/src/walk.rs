//! The structural validator: walks a TOML tree against the JSON Schema and
//! collects every problem, with its span and key path.
//!
//! It is driven by the schema alone (`type`, `properties`, `required`,
//! `additionalProperties`, `propertyNames`, `items`, `enum`/`const`,
//! `oneOf`/`anyOf`, `minimum`/`maximum`, `minItems`, `uniqueItems`,
//! `format`), so a new field in [`crate::model`] is validated without code
//! here. Custom formats are checked by [`crate::formats::check`].

use serde_json::Value;

use crate::diagnostic::{closest, did_you_mean, one_of};
use crate::duration::{self, Duration};
use crate::formats;
use crate::tree::{Kind, Node, Seg, Span, path_string};

/// One structural problem.
#[derive(Debug, Clone)]
pub(crate) struct Issue {
    pub(crate) span: Span,
    pub(crate) path: String,
    pub(crate) message: String,
    pub(crate) help: Option<String>,
}

/// A secret name used somewhere in the tree (a credential field or a
/// `${secret.NAME}` reference), with where it was found.
#[derive(Debug, Clone)]
pub(crate) struct SecretUse {
    pub(crate) name: String,
    pub(crate) path: Vec<Seg>,
}

/// What a walk found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) issues: Vec<Issue>,
    pub(crate) secrets: Vec<SecretUse>,
}

/// Walks `node` against the root `schema`.
pub(crate) fn walk_root(node: &Node, schema: &Value) -> Found {
    let walker = Walker { root: schema };
    let mut found = Found::default();
    let mut path = Vec::new();
    walker.walk(node, schema, &mut path, node.span.clone(), &mut found);
    found
}

struct Walker<'s> {
    root: &'s Value,
}

impl<'s> Walker<'s> {
    fn resolve(&self, mut schema: &'s Value) -> &'s Value {
        // Bounded, in case of a reference cycle.
        for _ in 0..32 {
            let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
                return schema;
            };
            let target = if r == "#" {
                Some(self.root)
            } else {
                r.strip_prefix("#/$defs/")
                    .and_then(|name| self.root.get("$defs").and_then(|d| d.get(name)))
            };
            match target {
                Some(t) => schema = t,
                None => return schema,
            }
        }
        schema
    }

    fn issue(
        &self,
        found: &mut Found,
        span: Span,
        path: &[Seg],
        message: String,
        help: Option<String>,
    ) {
        found.issues.push(Issue {
            span,
            path: path_string(path),
            message,
            help,
        });
    }

    fn walk(
        &self,
        node: &Node,
        schema: &'s Value,
        path: &mut Vec<Seg>,
        anchor: Span,
        found: &mut Found,
    ) {
        let schema = self.resolve(schema);
        let span = node.span.clone().or_else(|| anchor.clone());

        let branches = schema
            .get("oneOf")
            .or_else(|| schema.get("anyOf"))
            .and_then(Value::as_array);
        if let Some(branches) = branches {
            let branches: Vec<&Value> = branches
                .iter()
                .map(|b| self.resolve(b))
                .filter(|b| b.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            self.walk_union(node, &branches, path, anchor, found);
            return;
        }

        if let Some(c) = schema.get("const") {
            self.check_enum(node, std::slice::from_ref(c), path, span, found);
            return;
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            self.check_enum(node, values, path, span, found);
            return;
        }

        let format = schema.get("format").and_then(Value::as_str);
        if let Some(expected) = schema.get("type")
            && !type_matches(expected, node)
        {
            let (message, help) = type_mismatch(expected, format, node);
            self.issue(found, span, path, message, help);
            return;
        }

        match &node.kind {
            Kind::Table(_) => self.walk_table(node, schema, path, anchor, found),
            Kind::Array(items) => {
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                    && (items.len() as u64) < min
                {
                    let what = if min == 1 {
                        "at least one entry".to_string()
                    } else {
                        format!("at least {min} entries")
                    };
                    self.issue(found, span.clone(), path, format!("needs {what}"), None);
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && (items.len() as u64) > max
                {
                    self.issue(
                        found,
                        span.clone(),
                        path,
                        format!("has {} entries; at most {max} are allowed", items.len()),
                        None,
                    );
                }
                if schema.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
                    let mut seen = std::collections::HashSet::new();
                    for (i, item) in items.iter().enumerate() {
                        if let Kind::String(s) = &item.kind
                            && !seen.insert(s.as_str())
                        {
                            path.push(Seg::Index(i));
                            self.issue(
                                found,
                                item.span.clone(),
                                path,
                                format!("duplicate entry \"{s}\""),
                                Some("remove the repeated entry".to_string()),
                            );
                            path.pop();
                        }
                    }
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        path.push(Seg::Index(i));
                        self.walk(
                            item,
                            item_schema,
                            path,
                            item.span.clone().or_else(|| span.clone()),
                            found,
                        );
                        path.pop();
                    }
                }
            }
            Kind::String(s) => {
                if let Some(at) = s.chars().position(|c| c == '\0') {
                    let (message, help) = nul_byte(format, at);
                    self.issue(found, span, path, message, Some(help));
                    return;
                }
                if let Some(f @ ("duration" | "duration-or-zero" | "pause")) = format {
                    let max = schema
                        .get("maxDuration")
                        .and_then(Value::as_str)
                        .and_then(|m| m.parse::<Duration>().ok())
                        .unwrap_or(Duration::MAX);
                    if duration::longer_than(s, max) {
                        let what = if f == "pause" { "pause" } else { "duration" };
                        self.issue(
                            found,
                            span,
                            path,
                            format!("out of range: expected a {what} of at most {max}, found \"{s}\""),
                            Some(format!(
                                "use at most \"{max}\" here; every duration in gantry.toml has an upper bound (`maxDuration` in the schema)"
                            )),
                        );
                        return;
                    }
                }
                if let Some(format) = format {
                    let mut refs = Vec::new();
                    match formats::check(format, s, &mut refs) {
                        Ok(()) => found.secrets.extend(refs.into_iter().map(|name| SecretUse {
                            name,
                            path: path.clone(),
                        })),
                        Err(e) => self.issue(found, span, path, e.message, e.help),
                    }
                }
            }
            Kind::Integer(i) => {
                self.check_range(*i as f64, &i.to_string(), schema, format, path, span, found)
            }
            Kind::Float(f) => {
                self.check_range(*f, &f.to_string(), schema, format, path, span, found)
            }
            Kind::Boolean(_) | Kind::Datetime(_) => {}
        }
    }

    fn walk_table(
        &self,
        node: &Node,
        schema: &'s Value,
        path: &mut Vec<Seg>,
        anchor: Span,
        found: &mut Found,
    ) {
        let Some(entries) = node.entries() else {
            return;
        };
        let table_span = node.span.clone().or(anchor);
        let props = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let names_schema = schema.get("propertyNames");
        let mut unknown: Vec<&str> = Vec::new();
        for entry in entries {
            let value_anchor = entry.value.span.clone().or_else(|| entry.key_span.clone());
            if entry.key.contains('\0') {
                let shown = entry.key.replace('\0', "\\u0000");
                self.issue(
                    found,
                    entry.key_span.clone(),
                    path,
                    format!("key \"{shown}\" contains a NUL byte (`\\u0000`)"),
                    Some("remove the `\\u0000` from the key".to_string()),
                );
                continue;
            }
            if let Some(names_schema) = names_schema.map(|s| self.resolve(s))
                && let Some(format) = names_schema.get("format").and_then(Value::as_str)
            {
                let mut ignored = Vec::new();
                if let Err(e) = formats::check(format, &entry.key, &mut ignored) {
                    self.issue(
                        found,
                        entry.key_span.clone(),
                        path,
                        format!("key `{}`: {}", entry.key, e.message),
                        e.help,
                    );
                }
            }
            if let Some(prop) = props.and_then(|p| p.get(&entry.key)) {
                path.push(Seg::Key(entry.key.clone()));
                self.walk(&entry.value, prop, path, value_anchor, found);
                path.pop();
                continue;
            }
            match additional {
                Some(Value::Bool(false)) => {
                    let known: Vec<&str> = props
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let help = did_you_mean(&entry.key, known.iter().copied()).or_else(|| {
                        (!known.is_empty()).then(|| format!("valid keys here: {}", one_of(&known)))
                    });
                    self.issue(
                        found,
                        entry.key_span.clone(),
                        path,
                        format!("unknown key `{}`", entry.key),
                        help,
                    );
                    unknown.push(&entry.key);
                }
                Some(s @ Value::Object(_)) => {
                    path.push(Seg::Key(entry.key.clone()));
                    self.walk(&entry.value, s, path, value_anchor, found);
                    path.pop();
                }
                _ => {}
            }
        }
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for key in required.iter().filter_map(Value::as_str) {
                // A misspelt key is already reported with a suggestion.
                let misspelt = unknown.iter().any(|u| {
                    let known = props
                        .map(|p| p.keys().map(String::as_str).collect::<Vec<_>>())
                        .unwrap_or_default();
                    closest(u, known) == Some(key)
                });
                if node.entry(key).is_none() && !misspelt {
                    let about = props
                        .and_then(|p| p.get(key))
                        .map(|p| self.resolve(p))
                        .and_then(|p| p.get("description"))
                        .and_then(Value::as_str)
                        .or_else(|| {
                            props
                                .and_then(|p| p.get(key))
                                .and_then(|p| p.get("description"))
                                .and_then(Value::as_str)
                        })
                        .map(first_sentence);
                    let help = match about {
                        Some(about) => format!("add `{key}`: {about}"),
                        None => format!("add `{key}`"),
                    };
                    self.issue(
                        found,
                        table_span.clone(),
                        path,
                        format!("missing required key `{key}`"),
                        Some(help),
                    );
                }
            }
        }
    }

    fn walk_union(
        &self,
        node: &Node,
        branches: &[&'s Value],
        path: &mut Vec<Seg>,
        anchor: Span,
        found: &mut Found,
    ) {
        let span = node.span.clone().or_else(|| anchor.clone());
        if branches.len() == 1 {
            self.walk(node, branches[0], path, anchor, found);
            return;
        }
        // A list of constants: an enum with documented values.
        let consts: Option<Vec<Value>> = branches.iter().map(|b| b.get("const").cloned()).collect();
        if let Some(consts) = consts {
            self.check_enum(node, &consts, path, span, found);
            return;
        }
        // Objects told apart by a constant-valued property, e.g. `kind`.
        if let Some(tag) = discriminator(branches) {
            if node.entries().is_none() {
                self.issue(
                    found,
                    span,
                    path,
                    format!("expected a table, found {}", node.describe()),
                    None,
                );
                return;
            }
            let values: Vec<&str> = branches
                .iter()
                .filter_map(|b| {
                    b.pointer(&format!("/properties/{tag}/const"))
                        .and_then(Value::as_str)
                })
                .collect();
            match node.entry(&tag) {
                Some(entry) => {
                    let chosen = match &entry.value.kind {
                        Kind::String(v) => branches.iter().find(|b| {
                            b.pointer(&format!("/properties/{tag}/const"))
                                .and_then(Value::as_str)
                                == Some(v)
                        }),
                        _ => None,
                    };
                    match chosen {
                        Some(b) => self.walk(node, b, path, anchor, found),
                        None => {
                            path.push(Seg::Key(tag.clone()));
                            let shown = match &entry.value.kind {
                                Kind::String(v) => format!("`{v}`"),
                                _ => entry.value.describe(),
                            };
                            let help = match &entry.value.kind {
                                Kind::String(v) => closest(v, values.iter().copied())
                                    .map(|c| format!("did you mean `{c}`?")),
                                _ => None,
                            };
                            self.issue(
                                found,
                                entry.value.span.clone().or_else(|| entry.key_span.clone()),
                                path,
                                format!(
                                    "unknown {tag} {shown}; expected one of {}",
                                    one_of(&values)
                                ),
                                help,
                            );
                            path.pop();
                        }
                    }
                }
                None => {
                    let required = branches.iter().all(|b| {
                        b.get("required")
                            .and_then(Value::as_array)
                            .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(tag.as_str())))
                    });
                    if required {
                        self.issue(
                            found,
                            span,
                            path,
                            format!("missing required key `{tag}`"),
                            Some(format!(
                                "add `{tag} = \"...\"` with one of {}",
                                one_of(&values)
                            )),
                        );
                    } else {
                        self.best_branch(node, branches, path, anchor, found);
                    }
                }
            }
            return;
        }
        self.best_branch(node, branches, path, anchor, found);
    }

    /// Tries every branch and keeps the one with the fewest problems.
    fn best_branch(
        &self,
        node: &Node,
        branches: &[&'s Value],
        path: &mut Vec<Seg>,
        anchor: Span,
        found: &mut Found,
    ) {
        let mut best: Option<Found> = None;
        for b in branches {
            let mut trial = Found::default();
            self.walk(node, b, path, anchor.clone(), &mut trial);
            if best
                .as_ref()
                .is_none_or(|f| trial.issues.len() < f.issues.len())
            {
                let done = trial.issues.is_empty();
                best = Some(trial);
                if done {
                    break;
                }
            }
        }
        if let Some(b) = best {
            found.issues.extend(b.issues);
            found.secrets.extend(b.secrets);
        }
    }

    fn check_enum(
        &self,
        node: &Node,
        values: &[Value],
        path: &[Seg],
        span: Span,
        found: &mut Found,
    ) {
        let names: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        let field = path
            .iter()
            .rev()
            .find_map(|s| match s {
                Seg::Key(k) => Some(k.replace('_', " ")),
                Seg::Index(_) => None,
            })
            .unwrap_or_else(|| "value".to_string());
        match &node.kind {
            Kind::String(s) => {
                if values.iter().any(|v| v.as_str() == Some(s)) {
                    return;
                }
                let help = closest(s, names.iter().map(String::as_str))
                    .map(|c| format!("did you mean `{c}`?"));
                self.issue(
                    found,
                    span,
                    path,
                    format!("unknown {field} `{s}`; expected one of {}", one_of(&names)),
                    help,
                );
            }
            _ => {
                let matches = values.iter().any(|v| match (&node.kind, v) {
                    (Kind::Integer(i), Value::Number(n)) => n.as_i64() == Some(*i),
                    (Kind::Boolean(b), Value::Bool(c)) => b == c,
                    _ => false,
                });
                if !matches {
                    self.issue(
                        found,
                        span,
                        path,
                        format!(
                            "expected one of {}, found {}",
                            one_of(&names),
                            node.describe()
                        ),
                        None,
                    );
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_range(
        &self,
        value: f64,
        shown: &str,
        schema: &Value,
        format: Option<&str>,
        path: &[Seg],
        span: Span,
        found: &mut Found,
    ) {
        let (implicit_min, implicit_max) = match format {
            Some("uint8") => (Some(0.0), Some(f64::from(u8::MAX))),
            Some("uint16") => (Some(0.0), Some(f64::from(u16::MAX))),
            Some("uint32") => (Some(0.0), Some(f64::from(u32::MAX))),
            Some("int32") => (Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX))),
            _ => (None, None),
        };
        let explicit_min = schema.get("minimum").and_then(Value::as_f64);
        let explicit_max = schema.get("maximum").and_then(Value::as_f64);
        let min = explicit_min.or(implicit_min);
        let max = explicit_max.or(implicit_max);
        let too_low = min.is_some_and(|m| value < m);
        let too_high = max.is_some_and(|m| value > m);
        if !(too_low || too_high || value.is_nan()) {
            return;
        }
        let message = match (explicit_min.or(min), explicit_max, min, max) {
            (Some(lo), Some(hi), _, _) => {
                format!("out of range: expected a value from {lo} to {hi}, found {shown}")
            }
            (_, _, Some(lo), _) if too_low => {
                format!("out of range: expected at least {lo}, found {shown}")
            }
            (_, _, _, Some(hi)) if too_high => {
                format!("out of range: expected at most {hi}, found {shown}")
            }
            _ => format!("expected a number, found {shown}"),
        };
        self.issue(found, span, path, message, None);
    }
}

/// A property that has a `const` in every branch: the tag of a tagged union.
fn discriminator(branches: &[&Value]) -> Option<String> {
    let first = branches.first()?.get("properties")?.as_object()?;
    first
        .iter()
        .filter(|(_, s)| s.get("const").is_some())
        .map(|(k, _)| k)
        .find(|k| {
            branches
                .iter()
                .all(|b| b.pointer(&format!("/properties/{k}/const")).is_some())
        })
        .cloned()
}

fn type_matches(expected: &Value, node: &Node) -> bool {
    let one = |t: &str| {
        matches!(
            (t, &node.kind),
            ("object", Kind::Table(_))
                | ("array", Kind::Array(_))
                | ("string", Kind::String(_))
                | ("integer", Kind::Integer(_))
                | ("number", Kind::Integer(_) | Kind::Float(_))
                | ("boolean", Kind::Boolean(_))
        )
    };
    match expected {
        Value::String(t) => one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(one),
        _ => true,
    }
}

fn type_mismatch(expected: &Value, format: Option<&str>, node: &Node) -> (String, Option<String>) {
    let types: Vec<&str> = match expected {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    let wanted: Vec<&str> = types
        .iter()
        .map(|t| match *t {
            "string" => format.and_then(formats::describe).unwrap_or("a string"),
            "integer" => "an integer",
            "number" => "a number",
            "boolean" => "a boolean (true or false)",
            "array" => "an array",
            "object" => "a table",
            other => other,
        })
        .collect();
    let message = format!(
        "expected {}, found {}",
        wanted.join(" or "),
        node.describe()
    );
    let number = match &node.kind {
        Kind::Integer(i) => Some(i.to_string()),
        Kind::Float(f) => Some(f.to_string()),
        _ => None,
    };
    let help = match (format, number) {
        (Some("duration" | "duration-or-zero" | "pause"), Some(n)) => Some(format!(
            "durations are strings with a unit: \"{n}s\" for seconds, \"{n}m\" for minutes"
        )),
        (Some("size"), Some(n)) => Some(format!(
            "sizes are strings with a unit, e.g. \"{n}MiB\" or \"{n}B\""
        )),
        _ => match (&node.kind, types.first().copied()) {
            (Kind::String(s), Some("integer" | "number")) if s.trim().parse::<f64>().is_ok() => {
                Some(format!("remove the quotes: {}", s.trim()))
            }
            (Kind::String(s), Some("boolean")) if s == "true" || s == "false" => {
                Some(format!("remove the quotes: {s}"))
            }
            (
                Kind::String(_) | Kind::Integer(_) | Kind::Float(_) | Kind::Boolean(_),
                Some("array"),
            ) => Some("wrap the value in brackets: [ ... ]".to_string()),
            (Kind::Integer(_) | Kind::Float(_) | Kind::Boolean(_), Some("string")) => {
                Some("put the value in quotes".to_string())
            }
            (Kind::Array(items), Some("string")) => {
                let words: Option<Vec<&str>> = items
                    .iter()
                    .map(|i| match &i.kind {
                        Kind::String(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect();
                words.map(|w| format!("write it as one string: \"{}\"", w.join(" ")))
            }
            _ => None,
        },
    };
    (message, help)
}

/// A string with a NUL byte (`"\u0000"` in TOML): no environment variable,
/// command line, path or header can carry one, so it is refused here rather
/// than when an instance starts.
fn nul_byte(format: Option<&str>, at: usize) -> (String, String) {
    let place = format!("(`\\u0000`, character {})", at + 1);
    match format {
        Some("env-value") => (
            format!("an environment variable's value cannot contain a NUL byte {place}"),
            "the operating system ends a variable at a NUL byte; remove the `\\u0000`".to_string(),
        ),
        _ => (
            format!("this value cannot contain a NUL byte {place}"),
            "commands, paths, headers and names end at a NUL byte; remove the `\\u0000`"
                .to_string(),
        ),
    }
}

fn first_sentence(text: &str) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let end = flat
        .match_indices(". ")
        .map(|(i, _)| i)
        .find(|&i| !(flat[..i].ends_with("e.g") || flat[..i].ends_with("i.e")));
    match end {
        Some(i) => flat[..=i].to_string(),
        None => flat,
    }
}
