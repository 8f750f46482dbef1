//! `gantry secrets …`

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use gantry_api::client::seg;
use gantry_api::{KeyRotated, SecretInfo, SetSecret};

use crate::ctx::{Ctx, block_on, resolve_app};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The environment.
    #[arg(long)]
    env: String,
    /// The app (default: read from --file).
    #[arg(long)]
    app: Option<String>,
    /// The gantry.toml to read the app name from.
    #[arg(long, default_value = "gantry.toml")]
    file: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Set a secret. The value is read from stdin (or a hidden prompt), never from arguments.
    ///
    /// Example: printf %s "$DB_URL" | gantry secrets set DATABASE_URL --env production
    Set {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// List secret names and versions of an environment (never values).
    ///
    /// Example: gantry secrets list --env production
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Remove a secret.
    ///
    /// Example: gantry secrets rm OLD_API_KEY --env staging
    Rm {
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Generate a new encryption key and re-encrypt every secret with it.
    ///
    /// Example: gantry secrets rotate-key
    RotateKey,
}

fn path(t: &Target) -> anyhow::Result<(String, String)> {
    let app = resolve_app(t.app.clone(), Path::new(&t.file))?;
    Ok((
        format!("/api/v1/apps/{}/envs/{}/secrets", seg(&app), seg(&t.env)),
        app,
    ))
}

/// Reads the value: all of stdin when piped (one trailing newline removed),
/// else a prompt that does not echo. A NUL byte is refused here already.
fn read_value(name: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let mut value = if stdin.is_terminal() {
        rpassword::prompt_password(format!("value for {name} (input hidden): "))
            .context("cannot read the value from the terminal")?
    } else {
        let mut s = String::new();
        stdin
            .lock()
            .read_to_string(&mut s)
            .context("cannot read the value from stdin (is it UTF-8?)")?;
        s
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if let Some(at) = value.find('\0') {
        bail!(
            "the value for {name} contains a NUL byte (at byte {at}); secrets reach the app as \
             environment variables, which cannot hold one. Remove it (`printf %s` adds none), or \
             encode binary data, e.g. `base64 < file | gantry secrets set {name} --env ENV`"
        );
    }
    if value.is_empty() {
        bail!(
            "no value given for {name}: pipe it on stdin, e.g. `printf %s \"$VALUE\" | gantry secrets set {name} --env ENV`"
        );
    }
    Ok(value)
}

pub(crate) fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match cmd {
        Command::Set { name, target } => {
            let (base, app) = path(&target)?;
            let value = read_value(&name)?;
            let info: SecretInfo =
                block_on(client.put(&format!("{base}/{}", seg(&name)), &SetSecret { value }))?;
            if ctx.json {
                output::json(&info)?;
            } else {
                println!(
                    "set {} for {app}/{} (version {})",
                    info.name, target.env, info.version
                );
            }
        }
        Command::List { target } => {
            let (base, app) = path(&target)?;
            let list: Vec<SecretInfo> = block_on(client.get(&base))?;
            if ctx.json {
                output::json(&list)?;
            } else if list.is_empty() {
                println!("no secrets set for {app}/{}", target.env);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.name.clone(),
                            s.version.to_string(),
                            output::time(s.updated_at),
                            s.updated_by.clone(),
                        ]
                    })
                    .collect();
                output::table(&["name", "version", "updated", "by"], &rows);
            }
        }
        Command::Rm { name, target } => {
            let (base, app) = path(&target)?;
            let v: serde_json::Value = block_on(client.delete(&format!("{base}/{}", seg(&name))))?;
            if ctx.json {
                output::json(&v)?;
            } else {
                println!("removed {name} from {app}/{}", target.env);
            }
        }
        Command::RotateKey => {
            let r: KeyRotated =
                block_on(client.post("/api/v1/secrets/rotate-key", &serde_json::json!({})))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                println!(
                    "new key in place; {} secret{} re-encrypted",
                    r.reencrypted,
                    if r.reencrypted == 1 { "" } else { "s" }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
