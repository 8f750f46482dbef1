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
    /// Ports handed to app instances, as FIRST-LAST.
    #[arg(long, value_name = "FIRST-LAST", default_value = "20000-29999", value_parser = parse_range)]
    port_range: std::ops::RangeInclusive<u16>,
    /// How often instance CPU and memory usage are stored.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::output::parse_duration)]
    usage_interval: std::time::Duration,
    /// The edge proxy's admin socket (default: proxy/admin.sock in the data directory).
    #[arg(long, value_name = "PATH")]
    proxy_admin: Option<std::path::PathBuf>,
    /// Where the edge proxy serves users, so smoke checks after a switch go
    /// through it (without it they go to the new instances directly).
    #[arg(long, value_name = "ADDR")]
    proxy_addr: Option<SocketAddr>,
    /// How long a deploy's lease on its environment lasts unrenewed (it is
    /// renewed every quarter of that while the deploy works; a control
    /// plane that dies frees the environment after at most this long).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::output::parse_duration, hide = true)]
    deploy_lease: std::time::Duration,
    /// How often the edge proxy's metrics are scraped into the embedded
    /// metrics store (`gantry metrics status` shows the result).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_interval)]
    metrics_interval: std::time::Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn parse_interval(s: &str) -> Result<std::time::Duration, crate::output::BadValue> {
    let d = crate::output::parse_duration(s)?;
    if d < std::time::Duration::from_millis(10) {
        return Err(crate::output::BadValue(format!(
            "`{s}` is too short an interval; use at least 10ms, e.g. `15s`"
        )));
    }
    Ok(d)
}

fn parse_range(s: &str) -> Result<std::ops::RangeInclusive<u16>, crate::output::BadValue> {
    let bad = || {
        crate::output::BadValue(format!(
            "`{s}` is not a port range; write it as FIRST-LAST, e.g. 20000-29999"
        ))
    };
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) = (
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    );
    if a == 0 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Instance ports inside the kernel's ephemeral range can be taken by any
/// outgoing connection on the host, and an instance then cannot bind.
fn warn_if_ephemeral(ports: &std::ops::RangeInclusive<u16>) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|w| w.parse::<u16>().ok());
    if let (Some(lo), Some(hi)) = (it.next(), it.next())
        && *ports.start() <= hi
        && *ports.end() >= lo
    {
        tracing::warn!(
            "the instance port range {}-{} overlaps the kernel's ephemeral ports {lo}-{hi}: \
             an outgoing connection may take an instance's port; use a range below {lo} \
             (--port-range)",
            ports.start(),
            ports.end()
        );
    }
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
    warn_if_ephemeral(&args.port_range);
    let opts = gantry_server::ServerOptions {
        data_dir: ctx.data_dir.clone(),
        socket: args.socket,
        listen: args.listen,
        secret_key: std::env::var(crate::env::SECRET_KEY)
            .ok()
            .filter(|k| !k.is_empty()),
        shim: vec![
            std::env::current_exe()
                .context("cannot find the gantry binary to run shims with")?
                .into_os_string(),
            "shim".into(),
        ],
        ports: args.port_range,
        usage_interval: args.usage_interval,
        proxy_admin: args.proxy_admin,
        proxy_addr: args.proxy_addr,
        deploy_lease: args.deploy_lease,
        metrics_interval: args.metrics_interval,
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
        .with_context(|| {
            format!(
                "the control plane on {} could not run",
                ctx.data_dir.display()
            )
        })
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the SIGTERM and SIGINT handlers now; the future resolves on
/// either.
pub(crate) fn shutdown_signal()
-> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
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
