//! `gantry build` and `gantry releases`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use gantry_api::ReleaseInfo;
use gantry_api::client::seg;

use crate::ctx::{Ctx, block_on, resolve_app};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct BuildArgs {
    /// The environment whose build config applies.
    #[arg(long)]
    env: String,
    /// The app's source directory (with its gantry.toml).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Any environment of the app (releases belong to the app).
    #[arg(long)]
    env: String,
    #[arg(long)]
    app: Option<String>,
}

/// `abc123` or `abc123-dirty` when the directory is a git checkout.
fn source_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--", "."])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

pub(crate) fn build(ctx: &Ctx, a: BuildArgs) -> anyhow::Result<ExitCode> {
    let dir = std::fs::canonicalize(&a.dir)
        .with_context(|| format!("cannot use --dir {}", a.dir.display()))?;
    let app = resolve_app(None, &dir.join("gantry.toml"))?;
    let bundle =
        gantry_api::bundle::pack(&dir).with_context(|| format!("cannot pack {}", dir.display()))?;
    let mut path = format!("/api/v1/apps/{}/envs/{}/releases", seg(&app), seg(&a.env));
    if let Some(c) = source_commit(&dir) {
        path.push_str(&format!("?commit={}", seg(&c)));
    }
    if !ctx.json {
        eprintln!(
            "uploading {} KiB of source and building {app}…",
            bundle.len() / 1024
        );
    }
    let started = std::time::Instant::now();
    let r: ReleaseInfo = block_on(ctx.client()?.post_bytes(&path, bundle, "application/gzip"))?;
    if ctx.json {
        output::json(&r)?;
    } else {
        println!(
            "built {app} release {} ({}) in {:.1} s",
            r.number,
            output::short(&r.digest, 19),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<ExitCode> {
    let app = resolve_app(a.app, Path::new("gantry.toml"))?;
    let list: Vec<ReleaseInfo> = block_on(ctx.client()?.get(&format!(
        "/api/v1/apps/{}/envs/{}/releases",
        seg(&app),
        seg(&a.env)
    )))?;
    if ctx.json {
        output::json(&list)?;
    } else if list.is_empty() {
        println!(
            "{app} has no releases yet; build one with `gantry build --env {}`",
            a.env
        );
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|r| {
                vec![
                    r.number.to_string(),
                    output::short(&r.digest, 19).to_string(),
                    r.source_commit.clone().unwrap_or_else(|| "-".into()),
                    output::time(r.created_at),
                    r.author.clone(),
                ]
            })
            .collect();
        output::table(&["release", "digest", "commit", "built", "by"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
