//! `gantry audit [verify]`

use std::process::ExitCode;

use gantry_api::{AuditEntry, AuditVerify};

use crate::ctx::{Ctx, block_on};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    verify: Option<Sub>,
    /// Only entries newer than this, e.g. `1h` or `7d`.
    #[arg(long, value_parser = output::parse_duration)]
    since: Option<std::time::Duration>,
    /// At most this many of the newest entries.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Check the whole hash chain and its head; exit 1 at the first broken link.
    ///
    /// Example: gantry audit verify
    Verify,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    if let Some(Sub::Verify) = args.verify {
        let v: AuditVerify = block_on(client.get("/api/v1/audit/verify"))?;
        if ctx.json {
            output::json(&v)?;
        } else if v.ok {
            println!(
                "audit log intact: {} entries; head {} {}",
                v.entries, v.head_seq, v.head_hash
            );
        } else {
            println!(
                "audit log BROKEN at entry {}: {}",
                v.broken_at.unwrap_or(0),
                v.reason.as_deref().unwrap_or("unknown")
            );
        }
        return Ok(if v.ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let mut path = format!("/api/v1/audit?limit={}", args.limit);
    if let Some(d) = args.since {
        let since = std::time::SystemTime::now()
            .checked_sub(d)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis())
            .unwrap_or(0);
        path.push_str(&format!("&since={since}"));
    }
    let list: Vec<AuditEntry> = block_on(client.get(&path))?;
    if ctx.json {
        output::json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                vec![
                    e.seq.to_string(),
                    output::time(e.at),
                    e.actor.clone(),
                    e.action.clone(),
                    e.target.clone(),
                    e.outcome.clone(),
                ]
            })
            .collect();
        output::table(
            &["seq", "time", "actor", "action", "target", "outcome"],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}
