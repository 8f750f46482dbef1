//! `gantry deploy`, `gantry deploys [show ID]`, `gantry approve`, `gantry abort`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use gantry_api::client::seg;
use gantry_api::{DeployInfo, StartDeploy};

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
pub(crate) struct DeployArgs {
    #[command(flatten)]
    target: Target,
    /// The release to deploy (see `gantry releases`).
    #[arg(long)]
    release: i64,
    /// Start it and return at once instead of following it.
    #[arg(long)]
    detach: bool,
    /// Wait for whatever it takes: another deploy that holds the environment
    /// first (instead of failing), then this deploy to its very end (through
    /// blue-green's warm window, instead of returning once traffic is on the
    /// new set).
    #[arg(long, conflicts_with = "detach")]
    wait: bool,
    /// The config version to deploy with (rollbacks); the current one when none.
    #[arg(skip)]
    config_version: Option<i64>,
}

/// `--env` and `--app` may also follow `show ID` (`gantry deploys show 12
/// --env production`): global to the subcommand, so not `required` for
/// clap; a missing `--env` is still refused (exit 2) when the struct is built.
#[derive(Debug, clap::Args)]
#[command(
    mut_arg("env", |a| a.global(true).required(false)),
    mut_arg("app", |a| a.global(true))
)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    show: Option<Show>,
}

#[derive(Debug, clap::Subcommand)]
enum Show {
    /// One deploy's timeline.
    ///
    /// Example: gantry deploys show 12 --env production
    Show { id: i64 },
}

#[derive(Debug, clap::Args)]
pub(crate) struct IdArgs {
    #[command(flatten)]
    target: Target,
    /// The deploy (default: the environment's running one).
    id: Option<i64>,
}

fn base(t: &Target) -> anyhow::Result<String> {
    let app = resolve_app(t.app.clone(), Path::new("gantry.toml"))?;
    Ok(format!(
        "/api/v1/apps/{}/envs/{}/deploys",
        seg(&app),
        seg(&t.env)
    ))
}

fn gates_line(d: &DeployInfo) -> String {
    d.gates
        .iter()
        .filter(|g| g.name != "requests" || g.status == "pending")
        .map(|g| format!("{} {} ({} {})", g.name, g.value, g.threshold, g.status))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line on where a running deploy stands: phase, instances ready,
/// traffic, gates.
fn status_line(d: &DeployInfo) -> String {
    let mut parts = vec![d.phase.clone()];
    if d.instances > 0 {
        parts.push(format!("{}/{} ready", d.ready, d.instances));
    }
    let gates = gates_line(d);
    if !gates.is_empty() {
        parts.push(gates);
    }
    parts.join(" · ")
}

/// A progress bar of the new release's traffic share, on a terminal only.
fn traffic_bar(ctx: &Ctx, release: i64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if ctx.json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(100);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} release {prefix} [{bar:24}] {pos:>3} % of traffic · {msg}",
    )
    .ok()?
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(release.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

/// Set once the user pressed Ctrl-C while a command follows a deploy.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// From now on, Ctrl-C (SIGINT) only sets [`INTERRUPTED`]: a command that
/// follows a deploy stops following and says so; the deploy goes on in the
/// server, unchanged. A thread of its own waits for the signal, so every
/// call's own short-lived runtime can come and go.
fn catch_interrupt() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("sigint".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    let _ = ready_tx.send(false);
                    return;
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let Ok(mut sig) = signal(SignalKind::interrupt()) else {
                        let _ = ready_tx.send(false);
                        return;
                    };
                    let _ = ready_tx.send(true);
                    while sig.recv().await.is_some() {
                        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                });
            });
        // Wait until the handler is in, so a Ctrl-C right after is caught.
        if spawned.is_ok() {
            let _ = ready_rx.recv_timeout(Duration::from_secs(2));
        }
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// How far a command follows a deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until traffic is on the new set and the deploy no longer needs the
    /// caller: its end, or blue-green's warm window (which runs in the
    /// server).
    Traffic,
    /// Until it ends.
    End,
}

/// Where following a deploy stopped.
enum Followed {
    Ended(DeployInfo),
    /// Traffic is on the new set; the deploy goes on (warm window).
    Live(DeployInfo),
    /// The user pressed Ctrl-C.
    Interrupted(i64),
}

/// Follows a deploy, printing its timeline as it grows, with a live
/// progress bar on a terminal (a status line when it changes otherwise;
/// JSON events with `--json`).
fn follow(ctx: &Ctx, base: &str, id: i64, until: Until) -> anyhow::Result<Followed> {
    catch_interrupt();
    let client = ctx.client()?;
    let mut shown = 0;
    let mut last_status = String::new();
    let mut bar = None;
    loop {
        if interrupted() {
            if let Some(b) = bar {
                indicatif::ProgressBar::finish_and_clear(&b);
            }
            return Ok(Followed::Interrupted(id));
        }
        let d: DeployInfo = block_on(client.get(&format!("{base}/{id}")))?;
        if bar.is_none() && d.outcome.is_none() {
            bar = traffic_bar(ctx, d.release);
        }
        for e in d.timeline.iter().skip(shown) {
            let line = if ctx.json {
                serde_json::to_string(e)?
            } else {
                format!("{}  {:<14} {}", output::time(e.at), e.phase, e.message)
            };
            match &bar {
                Some(b) => b.println(line),
                None => println!("{line}"),
            }
        }
        shown = d.timeline.len();
        let mut status = status_line(&d);
        if let Some(h) = &d.holding {
            status.push_str(&format!(" · {h}"));
        }
        match &bar {
            Some(b) => {
                b.set_position(u64::from(d.weight));
                b.set_message(status);
            }
            None => {
                if !ctx.json && status != last_status && d.outcome.is_none() {
                    println!(
                        "  traffic on release {}: {} % · {status}",
                        d.release, d.weight
                    );
                    last_status = status;
                }
            }
        }
        let live = until == Until::Traffic && d.outcome.is_none() && d.warm_until.is_some();
        if d.outcome.is_some() || live {
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            return Ok(if live {
                Followed::Live(d)
            } else {
                Followed::Ended(d)
            });
        }
        // Short slices, so Ctrl-C is answered at once.
        for _ in 0..6 {
            if interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What to print and exit with when following stopped short of the end.
fn stopped_following(ctx: &Ctx, f: &Followed, env: &str) -> Option<ExitCode> {
    match f {
        Followed::Ended(_) => None,
        Followed::Interrupted(id) => {
            eprintln!(
                "stopped following deploy {id} (Ctrl-C); the deploy goes on in the server, unchanged: `gantry deploys show {id} --env {env}` shows it, `gantry abort --env {env}` stops it"
            );
            Some(ExitCode::from(130))
        }
        Followed::Live(d) => {
            if ctx.json {
                let _ = output::json(d);
            } else {
                let warm = d.warm_until.map_or(String::new(), |t| {
                    let left = ((t - gantry_common::now_ms()).max(0) + 999) / 1000;
                    format!(" until {} ({left} s more)", output::time(t))
                });
                let old = d
                    .previous_release
                    .map_or("the previous release".to_string(), |p| {
                        format!("release {p}")
                    });
                println!(
                    "release {} takes all traffic of {}/{}; {old} stays warm{warm} for an instant rollback.\n  `gantry rollback --env {env}` moves the traffic back at once; `gantry approve --env {env}` ends the window now.\n  The deploy finishes in the server: `gantry deploys show {} --env {env}`; `gantry deploy --wait` follows it to the end.",
                    d.release, d.app, d.env, d.id
                );
            }
            Some(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn deploy(ctx: &Ctx, a: DeployArgs) -> anyhow::Result<ExitCode> {
    let base = base(&a.target)?;
    let client = ctx.client()?;
    if !a.detach {
        catch_interrupt();
    }
    let mut told = false;
    let d: DeployInfo = loop {
        let start = StartDeploy {
            release: a.release,
            config_version: a.config_version,
        };
        match block_on(client.post(&base, &start)) {
            Err(gantry_api::ClientError::Api {
                status: 409,
                message,
            }) if a.wait && message.contains("is being deployed by") => {
                if !told && !ctx.json {
                    eprintln!("{message}\nwaiting for it to finish…");
                    told = true;
                }
                for _ in 0..20 {
                    if interrupted() {
                        eprintln!("stopped waiting (Ctrl-C); nothing was deployed by this command");
                        return Ok(ExitCode::from(130));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            r => break r?,
        }
    };
    if let Some(note) = &d.noop {
        if ctx.json {
            output::json(&d)?;
        } else {
            println!("{note}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !ctx.json {
        println!(
            "deploy {} of release {} to {}/{} started{}",
            d.id,
            d.release,
            d.app,
            d.env,
            d.old_set
                .as_ref()
                .map(|s| format!(
                    " (replacing set {s}{})",
                    d.previous_release
                        .map(|p| format!(", release {p}"))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        );
    }
    if a.detach {
        if ctx.json {
            output::json(&d)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let until = if a.wait { Until::End } else { Until::Traffic };
    let followed = follow(ctx, &base, d.id, until)?;
    if let Some(code) = stopped_following(ctx, &followed, &a.target.env) {
        return Ok(code);
    }
    let Followed::Ended(done) = followed else {
        return Ok(ExitCode::SUCCESS);
    };
    let ok = done.outcome.as_deref() == Some("succeeded");
    if !ctx.json {
        println!(
            "deploy {} {}{}",
            done.id,
            done.outcome.as_deref().unwrap_or("?"),
            done.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub(crate) fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<ExitCode> {
    let base = base(&a.target)?;
    let client = ctx.client()?;
    if let Some(Show::Show { id }) = a.show {
        let d: DeployInfo = block_on(client.get(&format!("{base}/{id}")))?;
        if ctx.json {
            output::json(&d)?;
        } else {
            println!(
                "deploy {} of release {}{} to {}/{} by {}: {}",
                d.id,
                d.release,
                d.config_version
                    .map(|v| format!(" (config version {v})"))
                    .unwrap_or_default(),
                d.app,
                d.env,
                d.actor,
                d.outcome.as_deref().unwrap_or(&d.phase)
            );
            let mut prev: Option<i64> = None;
            for e in &d.timeline {
                let took = prev
                    .map(|p| format!("+{:.1}s", (e.at - p) as f64 / 1000.0))
                    .unwrap_or_default();
                println!(
                    "  {}  {:>7}  {:<14} {}",
                    output::time(e.at),
                    took,
                    e.phase,
                    e.message
                );
                prev = Some(e.at);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<DeployInfo> = block_on(client.get(&base))?;
    if ctx.json {
        output::json(&list)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|d| {
                vec![
                    d.id.to_string(),
                    d.release.to_string(),
                    d.outcome.clone().unwrap_or_else(|| match &d.holding {
                        Some(h) => format!("{} … {h}", d.phase),
                        None => format!("{} …", d.phase),
                    }),
                    d.actor.clone(),
                    output::time(d.created_at),
                    d.finished_at.map_or("-".into(), |f| {
                        format!("{:.1}s", (f - d.created_at) as f64 / 1000.0)
                    }),
                    d.phases
                        .iter()
                        .filter(|p| p.phase != "pending" || p.ms >= 100)
                        .map(|p| format!("{} {:.1}s", p.phase, p.ms as f64 / 1000.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            })
            .collect();
        output::table(
            &[
                "deploy", "release", "outcome", "by", "started", "took", "phases",
            ],
            &rows,
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn running_id(ctx: &Ctx, base: &str, id: Option<i64>) -> anyhow::Result<i64> {
    if let Some(id) = id {
        return Ok(id);
    }
    let list: Vec<DeployInfo> = block_on(ctx.client()?.get(base))?;
    list.iter()
        .find(|d| d.outcome.is_none())
        .map(|d| d.id)
        .ok_or_else(|| {
            anyhow::anyhow!("no deploy is running in this environment; see `gantry deploys`")
        })
}

pub(crate) fn approve(ctx: &Ctx, a: IdArgs) -> anyhow::Result<ExitCode> {
    let base = base(&a.target)?;
    let id = running_id(ctx, &base, a.id)?;
    let _: serde_json::Value = block_on(
        ctx.client()?
            .post(&format!("{base}/{id}/approve"), &serde_json::json!({})),
    )?;
    println!("approved deploy {id}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn abort(ctx: &Ctx, a: IdArgs) -> anyhow::Result<ExitCode> {
    let base = base(&a.target)?;
    let id = running_id(ctx, &base, a.id)?;
    let _: serde_json::Value = block_on(
        ctx.client()?
            .post(&format!("{base}/{id}/abort"), &serde_json::json!({})),
    )?;
    println!(
        "aborting deploy {id}; `gantry deploys show {id} --env {}` follows it",
        a.target.env
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    target: Target,
    /// The release to go back to (default: the one before the current one).
    #[arg(long)]
    to: Option<i64>,
    /// Follow the rollback to its very end (through a blue-green warm
    /// window) instead of returning once traffic is back.
    #[arg(long)]
    wait: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PromoteArgs {
    /// The environment whose running release is promoted.
    #[arg(long)]
    from: String,
    /// The environment it is deployed to.
    #[arg(long)]
    to: String,
    #[arg(long)]
    app: Option<String>,
}

fn succeeded(ctx: &Ctx, base: &str) -> anyhow::Result<Vec<DeployInfo>> {
    let list: Vec<DeployInfo> = block_on(ctx.client()?.get(base))?;
    Ok(list
        .into_iter()
        .filter(|d| d.outcome.as_deref() == Some("succeeded"))
        .collect())
}

fn deploy_and_follow(
    ctx: &Ctx,
    target: Target,
    release: i64,
    config_version: Option<i64>,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    deploy(
        ctx,
        DeployArgs {
            target,
            release,
            detach: false,
            wait,
            config_version,
        },
    )
}

/// The config version `release`'s latest successful deploy ran with.
fn ran_with(list: &[DeployInfo], release: i64) -> Option<i64> {
    list.iter()
        .find(|d| d.release == release && d.outcome.as_deref() == Some("succeeded"))
        .and_then(|d| d.config_version)
}

/// `gantry rollback`: deploys an earlier release through the same gated path.
///
/// While a deploy is still running (its canary steps, or blue-green's warm
/// window), rolling back to the release it replaces is that deploy's abort:
/// the previous set still runs, so it takes all traffic back at once.
pub(crate) fn rollback(ctx: &Ctx, a: RollbackArgs) -> anyhow::Result<ExitCode> {
    let base = base(&a.target)?;
    let list: Vec<DeployInfo> = block_on(ctx.client()?.get(&base))?;
    if let Some(running) = list.iter().find(|d| d.outcome.is_none()) {
        let Some(previous) = running.previous_release else {
            anyhow::bail!(
                "deploy {} (release {}) is the first in `{}`: there is no earlier release to go back to; `gantry abort --env {}` stops it",
                running.id,
                running.release,
                a.target.env,
                a.target.env
            );
        };
        if a.to.is_some_and(|to| to != previous) {
            anyhow::bail!(
                "deploy {} (release {} replacing {previous}) is running in `{}`; wait for it, or roll back to release {previous} with `gantry rollback --env {}`",
                running.id,
                running.release,
                a.target.env,
                a.target.env
            );
        }
        if !ctx.json {
            println!(
                "rolling {} back to release {previous}: aborting deploy {} of release {}",
                a.target.env, running.id, running.release
            );
        }
        let started = std::time::Instant::now();
        let _: serde_json::Value = block_on(ctx.client()?.post(
            &format!("{base}/{}/abort", running.id),
            &serde_json::json!({}),
        ))?;
        let followed = follow(ctx, &base, running.id, Until::End)?;
        if let Some(code) = stopped_following(ctx, &followed, &a.target.env) {
            return Ok(code);
        }
        let Followed::Ended(done) = followed else {
            return Ok(ExitCode::SUCCESS);
        };
        if done.outcome.as_deref() == Some("succeeded") {
            // Too late to abort: it had moved all traffic and was draining.
            if !ctx.json {
                println!(
                    "deploy {} had already finished its switch; deploying release {previous} again",
                    done.id
                );
            }
            let config = ran_with(&list, previous);
            return deploy_and_follow(ctx, a.target, previous, config, a.wait);
        }
        let back = matches!(done.outcome.as_deref(), Some("aborted" | "rolled-back"));
        if !ctx.json {
            println!(
                "deploy {} {} after {} ms{}",
                done.id,
                done.outcome.as_deref().unwrap_or("?"),
                started.elapsed().as_millis(),
                if back {
                    format!("; release {previous} serves")
                } else {
                    String::new()
                }
            );
        }
        return Ok(if back {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let done = succeeded(ctx, &base)?;
    let release = match a.to {
        Some(n) => n,
        None => {
            let current = done.first().map(|d| d.release);
            done.iter()
                .map(|d| d.release)
                .find(|r| Some(*r) != current)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "no earlier release ran successfully in `{}`; pass --to RELEASE",
                        a.target.env
                    )
                })?
        }
    };
    // With the config it ran with: the current one may be what broke.
    let config = ran_with(&done, release);
    if !ctx.json {
        println!(
            "rolling {} back to release {release}{}",
            a.target.env,
            config
                .map(|v| format!(" with config version {v}, as it ran"))
                .unwrap_or_default()
        );
    }
    deploy_and_follow(ctx, a.target, release, config, a.wait)
}

/// `gantry promote`: ships the release that runs in one environment to
/// another — the same artifact, never rebuilt.
pub(crate) fn promote(ctx: &Ctx, a: PromoteArgs) -> anyhow::Result<ExitCode> {
    let from = Target {
        env: a.from.clone(),
        app: a.app.clone(),
    };
    let done = succeeded(ctx, &base(&from)?)?;
    let release = done.first().map(|d| d.release).ok_or_else(|| {
        anyhow::anyhow!(
            "`{}` has no successfully deployed release to promote; deploy one there first",
            a.from
        )
    })?;
    if !ctx.json {
        println!("promoting release {release} from {} to {}", a.from, a.to);
    }
    deploy_and_follow(
        ctx,
        Target {
            env: a.to,
            app: a.app,
        },
        release,
        None,
        false,
    )
}
