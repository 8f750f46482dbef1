//! The app spec, `gantry.toml`: its types, environment layering, validation
//! and JSON Schema.
//!
//! Design in a few lines:
//! - [`model`] holds one documented, typed struct per section; the JSON
//!   Schema ([`json_schema`]) is generated from them, so docs, editor
//!   completion and validation cannot drift apart.
//! - [`parse_str`] parses with `toml_edit` into a tree that keeps spans, then
//!   walks that tree against the schema (`walk`), reporting *every* problem
//!   with file:line:column, key path and a fix. `[environments.<name>]`
//!   tables are checked against a copy of the schema with nothing required.
//! - Only when the structure is clean is each environment merged (tables
//!   merge key by key, arrays and values replace), deserialized with serde,
//!   and checked for rules across keys (`semantic`): declared secrets,
//!   notify channels, unique hosts per environment, probe fields, ...
//! - Nothing here panics on input or does I/O except [`load`].
//!
//! Environment names: when a spec declares environments, [`Spec::resolve`]
//! accepts only those (a typo is an error with a suggestion); when it
//! declares none, any name resolves to the base keys unchanged.
#![forbid(unsafe_code)]

mod diagnostic;
mod duration;
mod formats;
#[doc(hidden)]
pub mod fuzz;
pub mod model;
mod redact;
mod schema;
mod semantic;
mod size;
mod text;
mod tree;
mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use duration::{Duration, DurationError};
pub use formats::{EnvValue, HostName, Pause, SecretName};
pub use model::AppSpec;
pub use schema::json_schema;
pub use size::{ByteSize, SizeError};
pub use text::MAX_SPEC_BYTES;

use diagnostic::{Reporter, did_you_mean, one_of};
use tree::Node;

/// A parsed and validated `gantry.toml`, with every environment resolved.
#[derive(Debug, Clone)]
pub struct Spec {
    file: String,
    source: String,
    base: AppSpec,
    environments: BTreeMap<String, AppSpec>,
    /// Where `[environments]` is written, for errors about environment names.
    environments_span: tree::Span,
}

/// Parses and validates a spec. `file_name` is used in diagnostics only.
/// A text over [`MAX_SPEC_BYTES`] is refused.
pub fn parse_str(file_name: &str, text: &str) -> Result<Spec, Diagnostics> {
    text::check_size(file_name, text.len() as u64)?;
    let mut rep = Reporter::new(file_name, text);
    let doc = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(e) if text::is_duplicate_key(&e) => {
            for i in text::duplicate_keys(&rep, text, &e) {
                rep.push(i.span, i.path, i.message, i.help);
            }
            return Err(Diagnostics(rep.finish()));
        }
        Err(e) => {
            rep.push(
                e.span(),
                "",
                format!("invalid TOML: {}", e.message().trim()),
                Some(
                    "fix the TOML syntax first; other problems are reported once the file parses"
                        .to_string(),
                ),
            );
            return Err(Diagnostics(rep.finish()));
        }
    };
    let root = Node::from_item(doc.as_item()).unwrap_or_else(Node::empty_table);
    let schema = schema::cached();

    // 1. Structure, against the schema: every problem at once.
    let found = walk::walk_root(&root, schema);
    if !found.issues.is_empty() {
        for i in found.issues {
            rep.push(i.span, i.path, i.message, i.help);
        }
        return Err(Diagnostics(rep.finish()));
    }

    // 2. Merge each environment and deserialize.
    let base_node = root.without("environments");
    let env_table = root.get("environments");
    let env_entries = env_table.and_then(Node::entries).unwrap_or_default();
    let base = match typed(&base_node) {
        Ok(spec) => spec,
        Err(e) => {
            rep.push(None, "", e.message(), None);
            return Err(Diagnostics(rep.finish()));
        }
    };
    let mut merged_nodes = Vec::new();
    for entry in env_entries {
        merged_nodes.push((entry.key.as_str(), base_node.merged(&entry.value), entry));
    }
    let mut environments = BTreeMap::new();
    for (name, merged, entry) in &merged_nodes {
        match typed(merged) {
            Ok(spec) => {
                environments.insert(name.to_string(), spec);
            }
            Err(e) => rep.push(
                entry.key_span.clone().or_else(|| entry.value.span.clone()),
                format!("environments.{name}"),
                format!(
                    "environment `{name}` does not resolve to a valid spec: {}",
                    e.message()
                ),
                None,
            ),
        }
    }
    if !rep.out.is_empty() {
        return Err(Diagnostics(rep.finish()));
    }

    // 3. Rules across keys and environments.
    let configs: Vec<semantic::Config<'_>> = if merged_nodes.is_empty() {
        vec![semantic::Config {
            env: None,
            merged: &base_node,
            spec: &base,
        }]
    } else {
        merged_nodes
            .iter()
            .filter_map(|(name, merged, _)| {
                environments.get(*name).map(|spec| semantic::Config {
                    env: Some(name),
                    merged,
                    spec,
                })
            })
            .collect()
    };
    let locator = semantic::Locator {
        base: &base_node,
        environments: env_table,
    };
    for i in semantic::check(&configs, &locator, schema) {
        rep.push(i.span, i.path, i.message, i.help);
    }
    if !rep.out.is_empty() {
        return Err(Diagnostics(rep.finish()));
    }

    // The first environment written in the file (tables are sorted by key).
    let environments_span = env_entries
        .iter()
        .filter_map(|e| e.key_span.clone())
        .min_by_key(|s| s.start)
        .or_else(|| root.entry("environments").and_then(|e| e.key_span.clone()));
    Ok(Spec {
        file: file_name.to_string(),
        source: text.to_string(),
        base,
        environments,
        environments_span,
    })
}

/// Deserializes a merged tree; structure was checked, so errors here are rare
/// (e.g. an environment that changes a notify channel's `kind` without the
/// fields the new kind needs); the diagnostic carries its message.
fn typed(node: &Node) -> Result<AppSpec, toml::de::Error> {
    node.to_toml().try_into::<AppSpec>()
}

/// [`parse_str`] for raw bytes: also refuses text that is not UTF-8, with
/// the line, column and byte offset of the first bad byte.
pub fn parse_bytes(file_name: &str, bytes: &[u8]) -> Result<Spec, Diagnostics> {
    text::check_size(file_name, bytes.len() as u64)?;
    parse_str(file_name, text::utf8(file_name, bytes)?)
}

/// Reads and validates a spec file. A file that cannot be read, is over
/// [`MAX_SPEC_BYTES`] or is not UTF-8 is reported as a diagnostic too; a
/// file over the limit is not read past it.
pub fn load(path: &Path) -> Result<Spec, Diagnostics> {
    use std::io::Read;
    let name = path.display().to_string();
    let mut bytes = Vec::new();
    // Only a regular file (a symlink to one is fine): opening a FIFO waits
    // for a writer forever, and a device never ends.
    let read = std::fs::metadata(path)
        .and_then(|m| {
            if m.is_file() {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "it is not a regular file (a directory, FIFO, socket or device)",
                ))
            }
        })
        .and_then(|()| std::fs::File::open(path))
        .and_then(|f| {
            f.take(MAX_SPEC_BYTES as u64 + 1).read_to_end(&mut bytes)?;
            Ok(())
        });
    match read {
        Ok(()) => {
            if bytes.len() > MAX_SPEC_BYTES {
                // Only the start was read: the size comes from the file.
                let len = std::fs::metadata(path).map_or(0, |m| m.len());
                text::check_size(&name, len.max(bytes.len() as u64))?;
            }
            parse_bytes(&name, &bytes)
        }
        Err(e) => Err(Diagnostics(vec![Diagnostic {
            file: name,
            line: 1,
            column: 1,
            key_path: String::new(),
            message: format!("cannot read the app spec: {e}"),
            help: Some(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "create it (see examples/hello-app/gantry.toml), or pass the right path"
                        .to_string()
                }
                _ => "check the path and its permissions".to_string(),
            }),
        }])),
    }
}

impl Spec {
    /// The app's name.
    pub fn app_name(&self) -> &str {
        &self.base.app.name
    }

    /// The declared `[environments.*]`, sorted.
    pub fn environment_names(&self) -> Vec<String> {
        self.environments.keys().cloned().collect()
    }

    /// The spec for `env`: base keys with that environment's overrides.
    ///
    /// When environments are declared, `env` must be one of them; when none
    /// is declared, any name gets the base keys unchanged.
    pub fn resolve(&self, env: &str) -> Result<AppSpec, Diagnostics> {
        if self.environments.is_empty() {
            return Ok(self.base.clone());
        }
        if let Some(spec) = self.environments.get(env) {
            return Ok(spec.clone());
        }
        let names: Vec<&str> = self.environments.keys().map(String::as_str).collect();
        let mut rep = Reporter::new(&self.file, &self.source);
        let help = match did_you_mean(env, names.iter().copied()) {
            Some(d) => format!("{d} Declared environments: {}", one_of(&names)),
            None => format!(
                "declared environments: {}; add `[environments.{env}]` to declare it",
                one_of(&names)
            ),
        };
        rep.push(
            self.environments_span.clone(),
            "environments",
            format!("unknown environment `{env}`"),
            Some(help),
        );
        Err(Diagnostics(rep.finish()))
    }

    /// Declared secret names, over the base and every environment, sorted.
    pub fn secret_names(&self) -> Vec<String> {
        let all: BTreeSet<String> = std::iter::once(&self.base)
            .chain(self.environments.values())
            .flat_map(|s| s.secrets.iter().map(|n| n.0.clone()))
            .collect();
        all.into_iter().collect()
    }

    /// The original text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The file name given to [`parse_str`] or [`load`].
    pub fn file_name(&self) -> &str {
        &self.file
    }
}

/// A secret the config references has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingSecret(pub String);

impl AppSpec {
    /// The app's own environment variables: `[env]` with every
    /// `${secret.NAME}` filled in, plus each declared secret under its name.
    /// `secret` looks a value up; the first one it lacks is the error.
    pub fn render_env(
        &self,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<std::collections::BTreeMap<String, String>, MissingSecret> {
        let value = |name: &str| secret(name).ok_or_else(|| MissingSecret(name.to_string()));
        let mut vars = std::collections::BTreeMap::new();
        for (k, v) in &self.env {
            let mut text = v.as_str().to_string();
            for name in v.secret_refs() {
                text = text.replace(&format!("${{secret.{name}}}"), &value(&name)?);
            }
            vars.insert(k.clone(), text);
        }
        for name in &self.secrets {
            vars.insert(name.as_str().to_string(), value(name.as_str())?);
        }
        Ok(vars)
    }

    /// The spec as JSON with literal credentials replaced by `"<redacted>"`;
    /// secret references (`"${secret.NAME}"`, `url_secret = "NAME"`) stay.
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(redact::redacted(self)).unwrap_or(serde_json::Value::Null)
    }

    /// The spec as TOML, redacted like [`AppSpec::redacted_json`]; what
    /// `gantry config show` prints. It parses back as a valid spec.
    pub fn redacted_toml(&self) -> String {
        toml::to_string(&redact::redacted(self))
            .unwrap_or_else(|e| format!("# cannot render this spec as TOML: {e}\n"))
    }

    /// Names of the secrets this spec uses: `${secret.NAME}` references in
    /// [env] and credential fields (notify, backup), sorted, without repeats.
    pub fn secret_refs(&self) -> Vec<String> {
        let value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut tree_root = json_to_node(&value);
        if let tree::Kind::Table(entries) = &mut tree_root.kind {
            entries.retain(|e| e.key != "secrets");
        }
        let found = walk::walk_root(&tree_root, schema::cached());
        let names: BTreeSet<String> = found.secrets.into_iter().map(|s| s.name).collect();
        names.into_iter().collect()
    }
}

/// A span-less tree from JSON, so the schema walker can find secret names in
/// an already typed spec.
fn json_to_node(v: &serde_json::Value) -> Node {
    use serde_json::Value as J;
    use tree::Kind;
    let kind = match v {
        J::Null => Kind::Table(tree::Table::default()),
        J::Bool(b) => Kind::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Kind::Integer(i),
            None => Kind::Float(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Kind::String(s.clone()),
        J::Array(a) => Kind::Array(a.iter().map(json_to_node).collect()),
        J::Object(m) => Kind::Table(tree::Table::new(
            m.iter()
                .map(|(k, v)| tree::Entry {
                    key: k.clone(),
                    key_span: None,
                    value: json_to_node(v),
                })
                .collect(),
        )),
    };
    Node { kind, span: None }
}
