//! `gantry server`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::ValueEnum;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Also serve the API on this TCP address (every call then needs a token).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The API's unix socket (default: gantry.sock in the data directory).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let opts = gantry_server::ServerOptions {
        data_dir: ctx.data_dir.clone(),
        socket: args.socket,
        listen: args.listen,
        secret_key: std::env::var(crate::env::SECRET_KEY)
            .ok()
            .filter(|k| !k.is_empty()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers go in before the server says it is ready, so a SIGTERM
        // that follows the announcement is always a graceful stop.
        let shutdown = shutdown_signal()?;
        gantry_server::run(opts, shutdown, |l| {
            // The first lines on stdout say where to reach the server;
            // tests and scripts read them.
            println!("gantry server ready");
            println!("  socket: unix:{}", l.socket.display());
            if let Some(a) = l.tcp {
                println!("  api:    http://{a}");
            }
        })
        .await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on
/// either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
