//! `gantry proxy`: the edge proxy, its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to serve HTTP/1.1 and h2c on (repeatable).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: Vec<SocketAddr>,
    /// Directory of the persisted routing table (default: proxy/ in the data directory).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The admin API's unix socket (default: admin.sock in the state directory).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// Where JSON access-log lines go: `stdout`, `off`, or a file path.
    #[arg(long, value_name = "WHERE", default_value = "stdout")]
    access_log: String,
    /// Keep the client's X-Forwarded-* headers (only behind a trusted proxy).
    #[arg(long)]
    trust_forwarded: bool,
    /// A client must send its request headers within this (slowloris
    /// protection), e.g. `10s`.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    header_read_timeout: std::time::Duration,
    /// Close a client connection idle for this long, e.g. `90s`.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = humantime::parse_duration)]
    idle_timeout: std::time::Duration,
    /// Largest request head (request line and headers) in bytes; 431 above it.
    #[arg(long, value_name = "BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..))]
    max_header_size: u32,
    /// How long a WebSocket stays open once its backend set left the table, or the proxy is stopping.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::output::parse_duration)]
    websocket_drain_grace: std::time::Duration,
    /// Also serve GET /metrics (Prometheus) and /healthz on this TCP address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let state_dir = args.state_dir.unwrap_or_else(|| ctx.data_dir.join("proxy"));
    let admin = args
        .admin_socket
        .unwrap_or_else(|| state_dir.join("admin.sock"));
    let mut config = gantry_proxy::ProxyConfig::new(args.listen, admin, state_dir);
    config.trust_forwarded = args.trust_forwarded;
    config.header_read_timeout = args.header_read_timeout;
    config.idle_timeout = args.idle_timeout;
    config.max_header_size = args.max_header_size as usize;
    config.websocket_drain_grace = args.websocket_drain_grace;
    config.metrics_listen = args.metrics_listen;
    match args.access_log.as_str() {
        "off" => config.access_log = false,
        "stdout" => config.access_log = true,
        path => {
            config.access_log = true;
            config.access_log_path = Some(PathBuf::from(path));
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = crate::cmd::server::shutdown_signal()?;
        let proxy = gantry_proxy::Proxy::bind(config).await?;
        println!("gantry proxy ready");
        for a in proxy.local_addrs() {
            println!("  listen: http://{a}");
        }
        println!("  admin:  unix:{}", proxy.admin_socket().display());
        if let Some(a) = proxy.metrics_addr() {
            println!("  metrics: http://{a}/metrics");
        }
        proxy.serve(shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
