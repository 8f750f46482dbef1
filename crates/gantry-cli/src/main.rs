//! `gantry`: the one binary. `gantry server` runs the control plane; every
//! other command is a client of its HTTP API (or, for `config check|show|
//! schema`, works on a local `gantry.toml` alone).
#![forbid(unsafe_code)]

mod cmd;
mod ctx;
mod env;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the command failed (invalid config, failed check, error answer)
  2  wrong usage (unknown flag, missing argument)
  3  the server (or, for `check`, the URL) cannot be reached
  4  not allowed: missing or invalid token (401) or role too low (403)
  141  the output's reader went away (`gantry events | head -1`): ends quietly";

/// Exit status when stdout (or stderr) is a pipe whose reader has gone:
/// 128 + SIGPIPE, what a shell reports for a program that signal ended.
const EXIT_CLOSED_PIPE: u8 = 141;

/// Gantry runs your web service in production: environments, secrets,
/// zero-downtime deploys behind its own proxy, and the audit trail.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, after_help = EXIT_CODES, propagate_version = true)]
pub(crate) struct Cli {
    /// Data directory of the server (store, keys, socket).
    #[arg(long, global = true, env = env::DATA_DIR, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Server address: `unix:/path/gantry.sock` or `http://host:port`
    /// (default: the socket in the data directory).
    #[arg(long, global = true, env = env::SERVER, value_name = "ADDR")]
    server: Option<String>,
    /// API token (needed over TCP, or when not the data directory's owner).
    #[arg(long, global = true, env = env::TOKEN, value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (API on a unix socket, optionally on TCP).
    ///
    /// Example: gantry server --listen 127.0.0.1:7400
    Server(cmd::server::Args),
    /// Build and deploy the bundled example app end to end, then stay up.
    ///
    /// Example: gantry demo   (in the Gantry repository)
    Demo(cmd::demo::Args),
    /// Run the edge proxy (its own process; routes set by the control plane).
    ///
    /// Example: gantry proxy --listen 0.0.0.0:80
    Proxy(Box<cmd::proxy::Args>),
    /// Check, show, apply and version app configs (gantry.toml).
    #[command(subcommand)]
    Config(cmd::config::Command),
    /// Set, list and remove encrypted secrets (values never leave the server).
    #[command(subcommand)]
    Secrets(cmd::secrets::Command),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(cmd::token::Command),
    /// Run the app locally in the foreground; rebuild and restart on every change.
    ///
    /// Example: gantry dev   (in the directory of gantry.toml)
    Dev(cmd::dev::Args),
    /// Build a release from the app's source: a clean copy, `build.command`, stored outputs.
    ///
    /// Example: gantry build --env staging
    Build(cmd::releases::BuildArgs),
    /// List an app's releases (number, digest, commit, time, author).
    ///
    /// Example: gantry releases --env production
    Releases(cmd::releases::ListArgs),
    /// Deploy a release through the rollout engine, following it live until
    /// traffic is on it (blue-green: the switch; --wait: the very end).
    ///
    /// Ctrl-C stops following, never the deploy.
    ///
    /// Example: gantry deploy --env production --release 7
    Deploy(cmd::deploys::DeployArgs),
    /// List an environment's deploys, or show one's timeline.
    ///
    /// Example: gantry deploys --env production
    Deploys(cmd::deploys::ListArgs),
    /// Deploy an earlier release again (default: the one before the current).
    ///
    /// Example: gantry rollback --env production --to 6
    Rollback(cmd::deploys::RollbackArgs),
    /// Ship the release running in one environment to another, unchanged.
    ///
    /// Example: gantry promote --from staging --to production
    Promote(cmd::deploys::PromoteArgs),
    /// Continue a deploy paused for approval, or end a blue-green deploy's
    /// warm window early (the previous set stops; no instant rollback after).
    ///
    /// Example: gantry approve --env production
    Approve(cmd::deploys::IdArgs),
    /// Stop a running deploy and restore the previous release.
    ///
    /// Example: gantry abort --env production
    Abort(cmd::deploys::IdArgs),
    /// Start an environment's instances from its applied config.
    ///
    /// Example: gantry start --env staging --dir ./build
    Start(cmd::instances::StartArgs),
    /// Stop an environment's instances gracefully (its data directory stays).
    ///
    /// Example: gantry stop --env staging
    Stop(cmd::instances::Target),
    /// Restart an environment's instances one by one; clears crash loops.
    ///
    /// Example: gantry restart --env production
    Restart(cmd::instances::Target),
    /// List instances: state, pid, port, uptime, restarts, CPU, memory, last probe.
    ///
    /// Example: gantry ps --env production
    Ps(cmd::instances::PsArgs),
    /// Print the captured stdout and stderr of an environment's instances.
    ///
    /// Example: gantry logs --env production --follow
    Logs(cmd::instances::LogsArgs),
    /// Print an environment's runtime events (starts, probes, exits, restarts).
    ///
    /// Example: gantry events --env production
    Events(cmd::instances::Target),
    /// List the audit log, or verify its hash chain.
    ///
    /// Example: gantry audit --since 1h
    Audit(cmd::audit::Args),
    /// The embedded metrics store: what it holds and what it scrapes.
    ///
    /// Example: gantry metrics status
    #[command(subcommand)]
    Metrics(cmd::metrics::Command),
    /// Internal: supervise one app process (started by the server).
    #[command(hide = true)]
    Shim {
        /// The instance directory holding spec.json.
        dir: PathBuf,
    },
    /// Check a live deployment from the outside (security headers).
    ///
    /// Example: gantry check headers http://app.example.com/
    #[command(subcommand)]
    Check(cmd::check::Command),
    /// Show who the server thinks you are, with your role.
    ///
    /// Example: gantry whoami --server http://127.0.0.1:7400 --token gantry_...
    Whoami,
}

/// A closed pipe ends the program quietly, whichever command was writing:
/// `println!` panics on EPIPE (Rust ignores SIGPIPE, and `unsafe` to restore
/// it is forbidden here), so the panic hook turns exactly that panic into
/// a silent exit, and every other panic goes to the default hook.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.payload_as_str().unwrap_or("");
        if msg.starts_with("failed printing to std") && is_broken_pipe_text(msg) {
            std::process::exit(i32::from(EXIT_CLOSED_PIPE));
        }
        default(info);
    }));
}

fn is_broken_pipe_text(msg: &str) -> bool {
    msg.contains("Broken pipe") || msg.contains("os error 32")
}

/// Whether an error is (caused by) writing to a closed pipe.
fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let ctx = ctx::Ctx::new(&cli);
    let result = match cli.command {
        Command::Server(args) => cmd::server::run(&ctx, args),
        Command::Proxy(args) => cmd::proxy::run(&ctx, *args),
        Command::Demo(args) => cmd::demo::run(&ctx, args),
        Command::Config(c) => cmd::config::run(&ctx, c),
        Command::Secrets(c) => cmd::secrets::run(&ctx, c),
        Command::Token(c) => cmd::token::run(&ctx, c),
        Command::Audit(a) => cmd::audit::run(&ctx, a),
        Command::Metrics(c) => cmd::metrics::run(&ctx, c),
        Command::Whoami => cmd::whoami(&ctx),
        Command::Check(c) => cmd::check::run(&ctx, c),
        Command::Dev(a) => cmd::dev::run(&ctx, a),
        Command::Deploy(a) => cmd::deploys::deploy(&ctx, a),
        Command::Deploys(a) => cmd::deploys::list(&ctx, a),
        Command::Approve(a) => cmd::deploys::approve(&ctx, a),
        Command::Rollback(a) => cmd::deploys::rollback(&ctx, a),
        Command::Promote(a) => cmd::deploys::promote(&ctx, a),
        Command::Abort(a) => cmd::deploys::abort(&ctx, a),
        Command::Build(a) => cmd::releases::build(&ctx, a),
        Command::Releases(a) => cmd::releases::list(&ctx, a),
        Command::Start(a) => cmd::instances::start(&ctx, a),
        Command::Stop(t) => cmd::instances::stop(&ctx, t),
        Command::Restart(t) => cmd::instances::restart(&ctx, t),
        Command::Ps(a) => cmd::instances::ps(&ctx, a),
        Command::Logs(a) => cmd::instances::logs(&ctx, a),
        Command::Events(t) => cmd::instances::events(&ctx, t),
        Command::Shim { dir } => Ok(ExitCode::from(
            u8::try_from(gantry_runtime::shim::main(&dir)).unwrap_or(1),
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_closed_pipe(&e) => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::from(ctx::exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Splits a shell line into words (single and double quotes, no
    /// expansion); enough for the README's command lines.
    fn words(line: &str) -> Vec<String> {
        let (mut out, mut cur, mut quote, mut any) = (Vec::new(), String::new(), None, false);
        for c in line.chars() {
            match (quote, c) {
                (None, '\'' | '"') => {
                    quote = Some(c);
                    any = true;
                }
                (Some(q), c) if c == q => quote = None,
                (None, c) if c.is_whitespace() => {
                    if any {
                        out.push(std::mem::take(&mut cur));
                        any = false;
                    }
                }
                (_, c) => {
                    cur.push(c);
                    any = true;
                }
            }
        }
        if any {
            out.push(cur);
        }
        out
    }

    /// The `gantry …` commands of one shell line: comments, redirections, a
    /// trailing `&` and whatever a pipe or `&&` puts around them are dropped.
    fn gantry_commands(line: &str) -> Vec<Vec<String>> {
        // A comment, or a redirection, ends the command.
        let line = [" #", " >"]
            .iter()
            .filter_map(|m| line.find(m))
            .min()
            .map_or(line, |i| &line[..i]);
        line.split("&&")
            .flat_map(|part| part.split('|'))
            .map(|part| part.trim().trim_end_matches('&').trim())
            .filter(|part| part.starts_with("gantry "))
            .map(words)
            .collect()
    }

    #[test]
    fn every_command_of_the_readme_tour_parses() {
        let readme = include_str!("../../../README.md");
        let tour = readme
            .split("## A short tour")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("README.md has a section `A short tour`");
        let mut parsed = 0;
        for line in tour.lines().filter(|l| l.starts_with("    ")) {
            for argv in gantry_commands(line) {
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("README tour line `{}` does not parse:\n{e}", line.trim());
                }
                parsed += 1;
            }
        }
        assert!(
            parsed >= 30,
            "only {parsed} gantry commands found in the tour"
        );
    }

    /// Every `Example: gantry …` of every command's help parses, as typed.
    #[test]
    fn every_help_example_parses() {
        fn walk(cmd: &clap::Command, found: &mut Vec<String>) {
            for text in [cmd.get_about(), cmd.get_long_about()]
                .into_iter()
                .flatten()
            {
                for line in text.to_string().lines() {
                    if let Some(ex) = line.trim().strip_prefix("Example: ") {
                        found.push(ex.to_string());
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, found);
            }
        }
        let mut examples = Vec::new();
        walk(&Cli::command(), &mut examples);
        assert!(examples.len() >= 30, "{examples:#?}");
        for ex in &examples {
            let ex = ex.split("  ").next().unwrap_or(ex);
            for argv in gantry_commands(ex) {
                if let Err(e) = Cli::try_parse_from(&argv) {
                    panic!("help example `{ex}` does not parse:\n{e}");
                }
            }
        }
    }

    #[test]
    fn flags_may_follow_the_deploys_show_subcommand() {
        for argv in [
            &["gantry", "deploys", "show", "12", "--env", "production"][..],
            &["gantry", "deploys", "--env", "production", "show", "12"],
            &[
                "gantry", "deploys", "show", "12", "--env", "e", "--app", "hello",
            ],
        ] {
            let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            let text = format!("{:?}", cli.command);
            assert!(text.contains("Show { id: 12 }"), "{argv:?}: {text}");
            assert!(text.contains("env: \""), "{argv:?}: {text}");
        }
        let e = Cli::try_parse_from(["gantry", "deploys", "show", "12"]).unwrap_err();
        assert!(e.to_string().contains("env"), "{e}");
    }

    #[test]
    fn a_closed_pipe_is_recognised_in_panics_and_errors() {
        assert!(is_broken_pipe_text(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        let io = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_closed_pipe(&anyhow::Error::new(io).context("writing")));
        assert!(!is_closed_pipe(&anyhow::anyhow!("disk full")));
    }
}
