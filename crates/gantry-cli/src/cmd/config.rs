//! `gantry config …`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use gantry_api::client::seg;
use gantry_api::{
    AppliedConfig, ApplyConfig, ClientError, ConfigDetail, ConfigDiff, ConfigVersionInfo,
    RollbackConfig, SecretInfo,
};

use crate::ctx::{Ctx, block_on, read_file, resolve_app};
use crate::output;

const DEFAULT_FILE: &str = "gantry.toml";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Validate a gantry.toml and report every problem at once.
    ///
    /// With --env, also checks that environment's merged config and, when a
    /// server is reachable, that every secret it references has a value.
    ///
    /// Example: gantry config check examples/hello-app/gantry.toml --env production
    Check {
        /// The file to check.
        #[arg(default_value = DEFAULT_FILE)]
        path: PathBuf,
        /// Also check this environment's merged config and its secrets.
        #[arg(long)]
        env: Option<String>,
    },
    /// Print the merged config of an environment, credentials redacted.
    ///
    /// Reads the local file, or with --applied the version the server holds.
    ///
    /// Example: gantry config show --env production --json
    Show {
        #[arg(default_value = DEFAULT_FILE)]
        path: PathBuf,
        #[arg(long)]
        env: String,
        /// Show the config applied on the server instead of the local file.
        #[arg(long)]
        applied: bool,
        /// With --applied: the app (default: read from the file).
        #[arg(long)]
        app: Option<String>,
    },
    /// Print the JSON Schema of gantry.toml (for editors).
    ///
    /// Example: gantry config schema > gantry.schema.json
    Schema,
    /// Validate and store a gantry.toml as the next config version of an environment.
    ///
    /// Example: gantry config apply --env staging --note "raise instances"
    Apply {
        #[arg(default_value = DEFAULT_FILE)]
        path: PathBuf,
        #[arg(long)]
        env: String,
        /// Why (kept with the version).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List the stored config versions of an environment.
    ///
    /// Example: gantry config history --env production
    History {
        #[arg(long)]
        env: String,
        /// The app (default: read from ./gantry.toml).
        #[arg(long)]
        app: Option<String>,
    },
    /// Show what changed between two config versions, as a unified diff.
    ///
    /// Example: gantry config diff 3 4 --env production
    Diff {
        from: i64,
        to: i64,
        #[arg(long)]
        env: String,
        #[arg(long)]
        app: Option<String>,
    },
    /// Apply an earlier config version again (recorded as a new version).
    ///
    /// Example: gantry config rollback 3 --env production
    Rollback {
        /// The version whose config to apply again.
        #[arg(value_name = "VERSION")]
        target: i64,
        #[arg(long)]
        env: String,
        #[arg(long)]
        app: Option<String>,
    },
}

fn base(app: &str, env: &str) -> String {
    format!("/api/v1/apps/{}/envs/{}", seg(app), seg(env))
}

pub(crate) fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { path, env } => check(ctx, &path, env.as_deref()),
        Command::Show {
            path,
            env,
            applied: true,
            app,
        } => {
            let app = resolve_app(app, &path)?;
            let client = ctx.client()?;
            let d: ConfigDetail = block_on(client.get(&format!("{}/config", base(&app, &env))))?;
            if ctx.json {
                output::json(&d)?;
            } else {
                println!(
                    "# {app}/{env} config version {} applied {} by {}",
                    d.version.version,
                    output::time(d.version.created_at),
                    d.version.author
                );
                print!("{}", d.source);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Show { path, env, .. } => {
            let spec = load(&path)?;
            let resolved = spec.resolve(&env).map_err(|d| anyhow::anyhow!("{d}"))?;
            if ctx.json {
                output::json(&resolved.redacted_json())?;
            } else {
                print!("{}", resolved.redacted_toml());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            output::json(&gantry_spec::json_schema())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Apply { path, env, note } => {
            // Validate first: a file over the size limit or not UTF-8 gets
            // the same error as from `config check`.
            let spec = load(&path)?;
            let source = read_file(&path)?;
            let file_name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| DEFAULT_FILE.into());
            let client = ctx.client()?;
            let a: AppliedConfig = block_on(client.put(
                &format!("{}/config", base(spec.app_name(), &env)),
                &ApplyConfig {
                    file_name,
                    source,
                    note,
                },
            ))?;
            if ctx.json {
                output::json(&a)?;
            } else if a.changed {
                println!(
                    "applied {} to {}/{} as version {}",
                    path.display(),
                    a.version.app,
                    a.version.env,
                    a.version.version
                );
            } else {
                println!(
                    "unchanged: {}/{} is already at this config (version {})",
                    a.version.app, a.version.env, a.version.version
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::History { env, app } => {
            let app = resolve_app(app, Path::new(DEFAULT_FILE))?;
            let client = ctx.client()?;
            let list: Vec<ConfigVersionInfo> =
                block_on(client.get(&format!("{}/config/versions", base(&app, &env))))?;
            if ctx.json {
                output::json(&list)?;
            } else if list.is_empty() {
                println!("no config applied to {app}/{env} yet");
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            output::time(v.created_at),
                            v.author.clone(),
                            output::short(&v.hash, 12).to_string(),
                            v.note.clone(),
                        ]
                    })
                    .collect();
                output::table(&["version", "applied", "by", "hash", "note"], &rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { from, to, env, app } => {
            let app = resolve_app(app, Path::new(DEFAULT_FILE))?;
            let client = ctx.client()?;
            let d: ConfigDiff = block_on(client.get(&format!(
                "{}/config/diff?from={from}&to={to}",
                base(&app, &env)
            )))?;
            if ctx.json {
                output::json(&d)?;
            } else if d.diff.is_empty() {
                println!("versions {from} and {to} are identical");
            } else {
                print!("{}", d.diff);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback {
            target: version,
            env,
            app,
        } => {
            let app = resolve_app(app, Path::new(DEFAULT_FILE))?;
            let client = ctx.client()?;
            let a: AppliedConfig = block_on(client.post(
                &format!("{}/config/rollback", base(&app, &env)),
                &RollbackConfig { version },
            ))?;
            if ctx.json {
                output::json(&a)?;
            } else if a.changed {
                println!(
                    "{app}/{env} now has the config of version {version}, recorded as version {}",
                    a.version.version
                );
            } else {
                println!("unchanged: {app}/{env} already has the config of version {version}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<gantry_spec::Spec> {
    gantry_spec::load(path).map_err(|d| anyhow::anyhow!("{d}"))
}

/// `config check`: local validation, then (with --env) the environment's
/// merged config and, if a server answers, its secrets.
fn check(ctx: &Ctx, path: &Path, env: Option<&str>) -> anyhow::Result<ExitCode> {
    let spec = match gantry_spec::load(path) {
        Ok(s) => s,
        Err(d) => {
            return report(
                ctx,
                path,
                &d.0.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            );
        }
    };
    let envs: Vec<String> = match env {
        Some(e) => vec![e.to_string()],
        None => spec.environment_names(),
    };
    let mut problems = Vec::new();
    for e in &envs {
        if let Err(d) = spec.resolve(e) {
            problems.extend(d.0.iter().map(|x| x.to_string()));
        }
    }
    let mut notes = Vec::new();
    if let (Some(e), true) = (env, problems.is_empty()) {
        match missing_secrets(ctx, &spec, e) {
            Ok(missing) => problems.extend(missing),
            Err(err)
                if matches!(
                    err.downcast_ref::<ClientError>(),
                    Some(ClientError::Connect { .. })
                ) =>
            {
                notes.push(format!(
                    "note: no server reachable ({}), so secret values were not checked",
                    ctx.client()?.endpoint()
                ));
            }
            Err(err) => return Err(err),
        }
    }
    if !problems.is_empty() {
        return report(ctx, path, &problems);
    }
    // Warnings, not errors: an enforced CSP no page was checked against.
    let mut warnings = Vec::new();
    if let Some(e) = env {
        let (w, n) = crate::cmd::check::csp_warnings(ctx, &spec, e)?;
        warnings.extend(w);
        notes.extend(n);
    }
    if ctx.json {
        output::json(&serde_json::json!({
            "ok": true, "file": path.display().to_string(), "app": spec.app_name(),
            "environments": envs, "notes": notes, "warnings": warnings,
        }))?;
    } else {
        for w in warnings {
            eprintln!("warning: {w}\n");
        }
        for n in notes {
            eprintln!("{n}");
        }
        let scope = if envs.is_empty() {
            String::new()
        } else {
            format!("; environments: {}", envs.join(", "))
        };
        println!("{}: ok (app `{}`{scope})", path.display(), spec.app_name());
    }
    Ok(ExitCode::SUCCESS)
}

fn report(ctx: &Ctx, path: &Path, problems: &[String]) -> anyhow::Result<ExitCode> {
    if ctx.json {
        output::json(&serde_json::json!({
            "ok": false, "file": path.display().to_string(), "errors": problems,
        }))?;
    } else {
        for p in problems {
            eprintln!("error: {p}\n");
        }
        let n = problems.len();
        eprintln!(
            "{}: {n} problem{} found",
            path.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(ExitCode::from(1))
}

/// Secrets the environment's config references that have no value there.
fn missing_secrets(ctx: &Ctx, spec: &gantry_spec::Spec, env: &str) -> anyhow::Result<Vec<String>> {
    let resolved = spec.resolve(env).map_err(|d| anyhow::anyhow!("{d}"))?;
    let refs = resolved.secret_refs();
    if refs.is_empty() {
        return Ok(Vec::new());
    }
    let client = ctx.client()?;
    let have: Vec<SecretInfo> =
        block_on(client.get(&format!("{}/secrets", base(spec.app_name(), env))))?;
    Ok(refs
        .into_iter()
        .filter(|r| !have.iter().any(|h| &h.name == r))
        .map(|r| {
            format!(
                "secret `{r}` is referenced by the config but has no value in environment \
                 `{env}`\n  help: set it with `gantry secrets set {r} --env {env}`"
            )
        })
        .collect())
}
