//! `gantry token …`

use std::process::ExitCode;

use gantry_api::client::seg;
use gantry_api::{CreateToken, Role, TokenCreated, TokenInfo};

use crate::ctx::{Ctx, block_on};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum Command {
    /// Create a token; it is printed once and only its hash is stored.
    ///
    /// Example: gantry token create --role deployer --env production --expires 30d
    Create {
        /// viewer (read), deployer (also apply config and deploy), admin (everything).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Limit the token to one environment.
        #[arg(long)]
        env: Option<String>,
        /// Lifetime, e.g. `30d` or `12h` (default: no expiry).
        #[arg(long, value_parser = output::parse_duration)]
        expires: Option<std::time::Duration>,
        /// What it is for (shown in `token list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (ids, roles, scopes, expiry; never the tokens).
    ///
    /// Example: gantry token list
    List,
    /// Revoke a token by id; it stops working at once.
    ///
    /// Example: gantry token revoke 3fa9c2d1
    Revoke { id: String },
}

fn parse_role(s: &str) -> Result<Role, gantry_api::UnknownRole> {
    s.parse()
}

fn row(t: &TokenInfo) -> Vec<String> {
    let state = if t.revoked_at.is_some() {
        "revoked".to_string()
    } else if t.expires_at.is_some_and(|e| e <= gantry_common::now_ms()) {
        "expired".to_string()
    } else {
        "active".to_string()
    };
    vec![
        t.id.clone(),
        t.role.to_string(),
        t.env.clone().unwrap_or_else(|| "*".into()),
        state,
        t.expires_at
            .map(output::time)
            .unwrap_or_else(|| "never".into()),
        t.last_used_at
            .map(output::time)
            .unwrap_or_else(|| "-".into()),
        t.description.clone(),
    ]
}

pub(crate) fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match cmd {
        Command::Create {
            role,
            env,
            expires,
            description,
        } => {
            let created: TokenCreated = block_on(client.post(
                "/api/v1/tokens",
                &CreateToken {
                    role,
                    env,
                    expires_in_secs: expires.map(|d| d.as_secs().max(1)),
                    description,
                },
            ))?;
            if ctx.json {
                output::json(&created)?;
            } else {
                eprintln!(
                    "created token {} (role {}{}); it is shown only this once:",
                    created.info.id,
                    created.info.role,
                    created
                        .info
                        .env
                        .as_ref()
                        .map(|e| format!(", environment {e}"))
                        .unwrap_or_default()
                );
                println!("{}", created.token);
            }
        }
        Command::List => {
            let list: Vec<TokenInfo> = block_on(client.get("/api/v1/tokens"))?;
            if ctx.json {
                output::json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(row).collect();
                output::table(
                    &[
                        "id",
                        "role",
                        "env",
                        "state",
                        "expires",
                        "last used",
                        "description",
                    ],
                    &rows,
                );
            }
        }
        Command::Revoke { id } => {
            let t: TokenInfo = block_on(client.delete(&format!("/api/v1/tokens/{}", seg(&id))))?;
            if ctx.json {
                output::json(&t)?;
            } else {
                println!("revoked token {}", t.id);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
