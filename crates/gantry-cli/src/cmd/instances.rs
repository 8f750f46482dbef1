//! `gantry start|stop|restart|ps|logs|events`: running app environments.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use gantry_api::client::seg;
use gantry_api::{EventInfo, InstanceInfo, LogLines, StartEnv};

use crate::ctx::{Ctx, block_on, resolve_app};
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The environment.
    #[arg(long)]
    env: String,
    /// The app (default: read from ./gantry.toml).
    #[arg(long)]
    app: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StartArgs {
    #[command(flatten)]
    target: Target,
    /// Run this built release (see `gantry releases`).
    #[arg(long, conflicts_with = "dir")]
    release: Option<i64>,
    /// Or run from this local directory (default: the current one).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PsArgs {
    /// Only this environment (with the app from --app or ./gantry.toml).
    #[arg(long)]
    env: Option<String>,
    #[arg(long)]
    app: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LogsArgs {
    #[command(flatten)]
    target: Target,
    /// Keep printing new lines as they come.
    #[arg(long, short)]
    follow: bool,
    /// How many of the newest lines to show first.
    #[arg(long, short = 'n', default_value_t = 100)]
    lines: usize,
    /// The logs of this release's instances, also once they have stopped
    /// (e.g. a release that failed to start; the last 5 stopped sets of an
    /// environment are kept), instead of the running ones.
    #[arg(long)]
    release: Option<i64>,
}

fn base(t: &Target) -> anyhow::Result<(String, String)> {
    let app = resolve_app(t.app.clone(), Path::new("gantry.toml"))?;
    Ok((
        format!("/api/v1/apps/{}/envs/{}", seg(&app), seg(&t.env)),
        app,
    ))
}

pub(crate) fn start(ctx: &Ctx, a: StartArgs) -> anyhow::Result<ExitCode> {
    let (base, app) = base(&a.target)?;
    let (body, from) = match a.release {
        Some(n) => (
            StartEnv {
                release: Some(n),
                dir: None,
            },
            format!("release {n}"),
        ),
        None => {
            let d = a.dir.unwrap_or_else(|| PathBuf::from("."));
            let dir = std::fs::canonicalize(&d)
                .with_context(|| format!("cannot use --dir {}", d.display()))?;
            let shown = dir.display().to_string();
            (
                StartEnv {
                    release: None,
                    dir: Some(shown.clone()),
                },
                shown,
            )
        }
    };
    let client = ctx.client()?;
    let list: Vec<InstanceInfo> = block_on(client.post(&format!("{base}/start"), &body))?;
    if ctx.json {
        output::json(&list)?;
    } else {
        println!(
            "started {} instance(s) of {app}/{} from {from}",
            list.len(),
            a.target.env
        );
        print_ps(&list);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn stop(ctx: &Ctx, t: Target) -> anyhow::Result<ExitCode> {
    let (base, app) = base(&t)?;
    let v: serde_json::Value = block_on(
        ctx.client()?
            .post(&format!("{base}/stop"), &serde_json::json!({})),
    )?;
    if ctx.json {
        output::json(&v)?;
    } else {
        println!("stopped {} instance(s) of {app}/{}", v["stopped"], t.env);
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn restart(ctx: &Ctx, t: Target) -> anyhow::Result<ExitCode> {
    let (base, app) = base(&t)?;
    let v: serde_json::Value = block_on(
        ctx.client()?
            .post(&format!("{base}/restart"), &serde_json::json!({})),
    )?;
    if ctx.json {
        output::json(&v)?;
    } else {
        println!(
            "restarted {} instance(s) of {app}/{}",
            v["restarted"], t.env
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn ps(ctx: &Ctx, a: PsArgs) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let list: Vec<InstanceInfo> = match a.env {
        Some(env) => {
            let (base, _) = base(&Target { env, app: a.app })?;
            block_on(client.get(&format!("{base}/instances")))?
        }
        None => block_on(client.get("/api/v1/instances"))?,
    };
    if ctx.json {
        output::json(&list)?;
    } else if list.is_empty() {
        println!("no instances running");
    } else {
        print_ps(&list);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_ps(list: &[InstanceInfo]) {
    let now = gantry_common::now_ms();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                format!("{}/{}/{}#{}", i.app, i.env, i.set, i.index),
                if i.ready {
                    format!("{} ready", i.phase)
                } else {
                    i.phase.clone()
                },
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.port.to_string(),
                i.started_at
                    .filter(|_| i.pid.is_some())
                    .map_or("-".into(), |t| {
                        humantime::format_duration(Duration::from_secs(
                            ((now - t).max(0) / 1000) as u64,
                        ))
                        .to_string()
                    }),
                i.restarts.to_string(),
                i.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
                i.rss_bytes
                    .map_or("-".into(), |r| format!("{:.1}MiB", r as f64 / 1048576.0)),
                i.last_probe
                    .clone()
                    .or_else(|| i.last_exit.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "instance",
            "state",
            "pid",
            "port",
            "uptime",
            "restarts",
            "cpu",
            "rss",
            "last probe",
        ],
        &rows,
    );
}

pub(crate) fn logs(ctx: &Ctx, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let (base, _) = base(&a.target)?;
    let client = ctx.client()?;
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("{base}/logs?lines={}", a.lines);
        if let Some(n) = a.release {
            path.push_str(&format!("&release={n}"));
        }
        if let Some(t) = &after {
            path.push_str(&format!("&after={}", seg(t)));
        }
        let got: LogLines = block_on(client.get(&path))?;
        for l in &got.lines {
            if ctx.json {
                println!("{}", serde_json::to_string(l)?);
            } else {
                let short = l.instance.rsplit('.').next().unwrap_or(&l.instance);
                println!("{} #{short} {} {}", l.at, l.stream, l.text);
            }
        }
        if let Some(last) = got.lines.last() {
            after = Some(last.at.clone());
        }
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(crate) fn events(ctx: &Ctx, t: Target) -> anyhow::Result<ExitCode> {
    let (base, _) = base(&t)?;
    let list: Vec<EventInfo> = block_on(ctx.client()?.get(&format!("{base}/events")))?;
    if ctx.json {
        output::json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|e| {
                vec![
                    output::time(e.at),
                    e.instance.clone(),
                    e.kind.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        output::table(&["time", "instance", "event", "message"], &rows);
    }
    Ok(ExitCode::SUCCESS)
}
