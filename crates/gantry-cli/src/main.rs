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
  4  not allowed: missing or invalid token (401) or role too low (403)";

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

fn main() -> ExitCode {
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
        Err(e) => {
            eprintln!("error: {}", output::error_chain(&e));
            ExitCode::from(ctx::exit_code(&e))
        }
    }
}
