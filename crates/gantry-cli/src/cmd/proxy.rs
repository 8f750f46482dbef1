//! `gantry proxy`: the edge proxy, its own process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    action: Option<Action>,
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
    /// A client must keep its request body coming: no byte of it for this
    /// long answers 408 (counted as the client's error, never the app's).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    body_read_timeout: std::time::Duration,
    /// Largest request head (request line and headers) in bytes; 431 above it.
    #[arg(long, value_name = "BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..))]
    max_header_size: u32,
    /// How long a WebSocket stays open once its backend set left the table, or the proxy is stopping.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = crate::output::parse_duration)]
    websocket_drain_grace: std::time::Duration,
    /// Also serve GET /metrics (Prometheus) and /healthz on this TCP address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Address to serve HTTPS on (HTTP/1.1 and HTTP/2 by ALPN; repeatable).
    #[arg(long, value_name = "ADDR")]
    tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain served when no route's certificate matches the SNI name.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// ACME directory URL for routes with tls mode `acme` (default: Let's Encrypt).
    #[arg(long, value_name = "URL")]
    acme_directory: Option<String>,
    /// PEM root certificate to trust for the ACME server (a test CA such as pebble's).
    #[arg(long, value_name = "PATH")]
    acme_ca_root: Option<PathBuf>,
    /// ACME challenge to answer: `http-01` (plain listener) or `tls-alpn-01` (TLS listener).
    #[arg(long, value_name = "TYPE", default_value = "http-01", value_parser = ["http-01", "tls-alpn-01"])]
    acme_challenge: String,
    /// How often ACME certificates are checked for renewal, e.g. `1h`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    acme_check_interval: Option<std::time::Duration>,
    /// Renew when less than this validity remains (default: a third of the lifetime).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    acme_renew_before: Option<std::time::Duration>,
    /// Expect a PROXY protocol v1/v2 header on every traffic listener
    /// (all --listen and --tls-listen addresses); connections without one
    /// are closed. For some listeners only, use --proxy-protocol-on.
    #[arg(long)]
    proxy_protocol: bool,
    /// Expect a PROXY protocol v1/v2 header on the listener at ADDR only, as
    /// given to --listen or --tls-listen (repeatable), e.g. the one behind a
    /// load balancer: `--listen 0.0.0.0:80 --listen 10.0.0.5:8080
    /// --proxy-protocol-on 10.0.0.5:8080`. Other listeners read no header.
    #[arg(long, value_name = "ADDR")]
    proxy_protocol_on: Vec<SocketAddr>,
    /// At most this many client connections at once; more wait in the accept queue.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// The HTTPS port that routes with `redirect_http` send plain-HTTP
    /// clients to (use it when the TLS listener is reached on another port).
    #[arg(long, value_name = "PORT", default_value_t = 443, value_parser = clap::value_parser!(u16).range(1..))]
    https_port: u16,
    /// On shutdown or upgrade, how long open requests may still run, e.g. `30s`.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    shutdown_timeout: Option<std::time::Duration>,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Replace the running proxy with a new process of the current binary,
    /// without dropping connections: it takes over the listening sockets,
    /// then the old process finishes its open requests and exits.
    ///
    /// Example: gantry proxy upgrade --admin-socket /var/lib/gantry/proxy/admin.sock
    Upgrade {
        /// The running proxy's admin socket (default: proxy/admin.sock in the data directory).
        #[arg(long, value_name = "PATH")]
        admin_socket: Option<PathBuf>,
    },
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    if let Some(Action::Upgrade { admin_socket }) = args.action {
        let socket = admin_socket.unwrap_or_else(|| ctx.data_dir.join("proxy").join("admin.sock"));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let (old, new) = runtime
            .block_on(gantry_proxy::AdminClient::new(&socket).upgrade())
            .with_context(|| format!("upgrade of the proxy at {} failed", socket.display()))?;
        println!("proxy upgraded: old pid {old}, new pid {new}");
        return Ok(ExitCode::SUCCESS);
    }
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
    // --proxy-protocol marks every listener; --proxy-protocol-on adds single
    // ones (the proxy refuses to start when one is no listener's).
    let mut proxy_protocol = args.proxy_protocol_on;
    if args.proxy_protocol {
        proxy_protocol.extend(args.listen.iter().chain(&args.tls_listen));
    }
    proxy_protocol.sort_unstable();
    proxy_protocol.dedup();
    let mut config = gantry_proxy::ProxyConfig::new(args.listen, admin, state_dir);
    config.trust_forwarded = args.trust_forwarded;
    config.header_read_timeout = args.header_read_timeout;
    config.idle_timeout = args.idle_timeout;
    config.body_read_timeout = args.body_read_timeout;
    config.max_header_size = args.max_header_size as usize;
    config.websocket_drain_grace = args.websocket_drain_grace;
    config.metrics_listen = args.metrics_listen;
    config.tls_listen = args.tls_listen;
    config.tls_default_cert = args.tls_cert;
    config.tls_default_key = args.tls_key;
    if let Some(url) = args.acme_directory {
        config.acme_directory = url;
    }
    config.acme_ca_root = args.acme_ca_root;
    config.acme_challenge = match args.acme_challenge.as_str() {
        "tls-alpn-01" => gantry_proxy::AcmeChallenge::TlsAlpn01,
        _ => gantry_proxy::AcmeChallenge::Http01,
    };
    if let Some(d) = args.acme_check_interval {
        config.acme_check_interval = d;
    }
    config.acme_renew_before = args.acme_renew_before;
    config.proxy_protocol = proxy_protocol;
    config.max_connections = args.max_connections.map(|n| n as usize);
    config.https_port = args.https_port;
    if let Some(d) = args.shutdown_timeout {
        config.shutdown_timeout = d;
    }
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
        // Which bound listeners expect a PROXY header (matched on the
        // configured address, as the proxy does).
        let expects: Vec<bool> = config
            .listen
            .iter()
            .chain(&config.tls_listen)
            .map(|a| config.proxy_protocol.contains(a))
            .collect();
        let proxy = gantry_proxy::Proxy::bind(config).await?;
        println!("gantry proxy ready");
        for a in proxy.local_addrs() {
            println!("  listen: http://{a}");
        }
        for a in proxy.tls_addrs() {
            println!("  tls:    https://{a}");
        }
        let marked: Vec<String> = proxy
            .local_addrs()
            .iter()
            .chain(proxy.tls_addrs().iter())
            .zip(&expects)
            .filter(|(_, e)| **e)
            .map(|(a, _)| a.to_string())
            .collect();
        if !marked.is_empty() {
            println!("  PROXY protocol header expected on: {}", marked.join(", "));
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
