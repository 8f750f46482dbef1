//! One module per command group.

pub(crate) mod audit;
pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod demo;
pub(crate) mod deploys;
pub(crate) mod dev;
pub(crate) mod instances;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod releases;
pub(crate) mod secrets;
pub(crate) mod server;
pub(crate) mod token;

use std::process::ExitCode;

use gantry_api::WhoAmI;

use crate::ctx::{Ctx, block_on};
use crate::output;

pub(crate) fn whoami(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let me: WhoAmI = block_on(client.get("/api/v1/whoami"))?;
    if ctx.json {
        output::json(&me)?;
    } else {
        let scope = me
            .env
            .map(|e| format!(", limited to environment `{e}`"))
            .unwrap_or_default();
        println!(
            "{} (role {}{scope}) at {}",
            me.actor,
            me.role,
            client.endpoint()
        );
    }
    Ok(ExitCode::SUCCESS)
}
