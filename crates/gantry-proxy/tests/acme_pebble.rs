//! ACME against a real ACME server: pebble (Debian package `pebble`),
//! validating for real against the proxy's own listeners (HTTP-01 on the
//! plain listener, TLS-ALPN-01 on the TLS listener), with
//! pebble-challtestsrv as its DNS server (every name → 127.0.0.1).

mod support;
mod tls_support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gantry_proxy::{AcmeChallenge, AdminClient, Proxy, ProxyConfig, ProxyError};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{
    Backend, PORT_ATTEMPTS, Proto, candidate_port, dead_addr, eventually, eventually_within, route,
    table, wait_bound,
};
use tls_support::{Ca, tls_get};
use tokio::sync::oneshot;

const HOST: &str = "proxy.test";

/// Time for pebble to issue a certificate; only there so a broken setup
/// fails instead of hanging.
const ISSUANCE: Duration = Duration::from_secs(60);

/// Time for a started pebble or pebble-challtestsrv to bind its ports.
const BIND: Duration = Duration::from_secs(10);

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Killed {
    /// Waits until the process holds `sockets` (see `support::wait_bound`).
    async fn wait_bound(&mut self, what: &str, sockets: &[(Proto, u16)]) -> Result<(), String> {
        let pid = self.0.id();
        let child = &mut self.0;
        wait_bound(
            what,
            pid,
            || child.try_wait().ok().flatten().map(|s| s.to_string()),
            sockets,
            BIND,
        )
        .await
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Killed {
    Killed(cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {what}: {e}; install it with `apt-get install pebble`")
    }))
}

/// pebble-challtestsrv as a DNS server only: every name is 127.0.0.1.
struct Dns {
    port: u16,
    _child: Killed,
}

/// Starts pebble-challtestsrv on a free DNS port (UDP and TCP), retried
/// on new ports when it cannot bind.
async fn start_dns() -> Dns {
    let mut failures = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = candidate_port();
        let mut child = spawn(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .args(["-dns01", &format!("127.0.0.1:{port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                // Unused: any port.
                .args(["-management", "127.0.0.1:0"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pebble-challtestsrv",
        );
        let sockets = [(Proto::Udp, port), (Proto::Tcp, port)];
        match child.wait_bound("pebble-challtestsrv", &sockets).await {
            Ok(()) => {
                return Dns {
                    port,
                    _child: child,
                };
            }
            Err(why) => failures.push(why),
        }
    }
    panic!("pebble-challtestsrv did not start in {PORT_ATTEMPTS} attempts: {failures:#?}")
}

struct Pebble {
    directory: String,
    management: SocketAddr,
    ca: Ca,
    ca_path: std::path::PathBuf,
    _pebble: Killed,
    _dns: Dns,
}

/// Binds the proxy of `config` (its listeners on port 0) and starts pebble
/// (with pebble-challtestsrv as its DNS server), whose validation
/// authority connects to the proxy's plain listener for HTTP-01 (or to
/// `http_port`, when given) and its TLS listener for TLS-ALPN-01. The
/// proxy must know pebble's directory before pebble knows the proxy's
/// ports, so when pebble cannot bind the port it was given, both start
/// again on new ports, a bounded number of times.
async fn start_pebble_and_proxy(
    dir: &Path,
    mut config: ProxyConfig,
    http_port: Option<u16>,
) -> (Pebble, Running) {
    let dns = start_dns().await;
    // Pebble's own HTTPS certificate, from a CA the proxy is told to trust.
    let ca = Ca::new("pebble test ca");
    let (crt, key, _) = ca.leaf(dir, "pebble", &["localhost", "127.0.0.1"]);
    let ca_path = dir.join("pebble-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    config.acme_ca_root = Some(ca_path.clone());
    let mut failures = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let (listen, mgmt) = (candidate_port(), candidate_port());
        config.acme_directory = format!("https://127.0.0.1:{listen}/dir");
        let proxy = start_proxy(config.clone()).await;
        let pebble_config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                "certificate": crt,
                "privateKey": key,
                "httpPort": http_port.unwrap_or(proxy.plain.port()),
                "tlsPort": proxy.tls.port(),
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        let config_path = dir.join("pebble-config.json");
        std::fs::write(&config_path, pebble_config.to_string()).unwrap();
        let mut child = spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{}", dns.port)])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "pebble",
        );
        let sockets = [(Proto::Tcp, listen), (Proto::Tcp, mgmt)];
        if let Err(why) = child.wait_bound("pebble", &sockets).await {
            failures.push(why);
            proxy.stop().await;
            continue;
        }
        let pebble = Pebble {
            directory: config.acme_directory.clone(),
            management: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            ca,
            ca_path,
            _pebble: child,
            _dns: dns,
        };
        // Bound; ready when the management interface answers.
        eventually("pebble's management interface to answer", || async {
            pebble.issuing_root().await.is_ok()
        })
        .await;
        return (pebble, proxy);
    }
    panic!("pebble did not start in {PORT_ATTEMPTS} attempts: {failures:#?}")
}

impl Pebble {
    /// The root that signs pebble's certificates (from its management
    /// interface).
    async fn issuing_root(&self) -> Result<CertificateDer<'static>, String> {
        let cfg = tls_support::client_config(&[self.ca.der()], &[b"http/1.1"]);
        let tcp = tokio::net::TcpStream::connect(self.management)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get("/roots/0")
            .header("host", "localhost")
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        CertificateDer::from_pem_slice(&body.to_bytes()).map_err(|e| e.to_string())
    }
}

struct Running {
    plain: SocketAddr,
    tls: SocketAddr,
    admin: AdminClient,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), gantry_proxy::ProxyError>>,
}

async fn start_proxy(config: ProxyConfig) -> Running {
    serve(Proxy::bind(config).await.unwrap())
}

/// Binds the proxy of `config` on the ports a stopped proxy had, which
/// pebble is configured with: retried while the port is still in use,
/// for at most 5 s.
async fn restart_proxy(config: ProxyConfig) -> Running {
    let start = tokio::time::Instant::now();
    loop {
        match Proxy::bind(config.clone()).await {
            Ok(proxy) => return serve(proxy),
            Err(ProxyError::Listen { addr, source })
                if source.kind() == std::io::ErrorKind::AddrInUse
                    && start.elapsed() < Duration::from_secs(5) =>
            {
                eprintln!("{addr} still in use; binding again");
                // A retry interval: nothing tells when the port is free.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind the proxy again on {:?}: {e}", config.listen),
        }
    }
}

fn serve(proxy: Proxy) -> Running {
    let plain = proxy.local_addrs()[0];
    let tls = proxy.tls_addrs()[0];
    let admin = proxy.admin_client();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(proxy.serve(async move {
        let _ = rx.await;
    }));
    Running {
        plain,
        tls,
        admin,
        stop,
        handle,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.handle.await.unwrap().unwrap();
    }
}

fn acme_config(dir: &Path, challenge: AcmeChallenge) -> ProxyConfig {
    let mut config = support::config(dir);
    config.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.acme_challenge = challenge;
    config.acme_check_interval = Duration::from_millis(500);
    config
}

/// Waits until `/certs` lists an ACME certificate for HOST whose serial is
/// not `not`; returns that serial.
async fn wait_for_acme_cert(admin: &AdminClient, not: Option<&str>) -> String {
    let start = tokio::time::Instant::now();
    loop {
        assert!(
            start.elapsed() < ISSUANCE,
            "no ACME certificate for {HOST} (other than {not:?}) after {ISSUANCE:?}"
        );
        let (status, body) = admin.raw(Method::GET, "/certs", None).await.unwrap();
        assert_eq!(status, 200);
        let certs: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if let Some(c) = certs
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["host"] == HOST && c["source"] == "acme")
        {
            let serial = c["serial"].as_str().unwrap().to_string();
            if Some(serial.as_str()) != not {
                return serial;
            }
        }
        // The poll interval (bounded by ISSUANCE above).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The certificate's DER as hex: it contains the serial as `/certs`
/// shows it (pebble's serials are long random numbers, so a match is no
/// accident).
fn serial_of(der: &CertificateDer<'_>) -> String {
    der.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_certificate_is_issued_served_and_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let config = acme_config(dir.path(), AcmeChallenge::Http01);
    let (pebble, proxy) = start_pebble_and_proxy(dir.path(), config, None).await;
    // Pebble's validation authority connects to these ports.
    let (http_port, tls_port) = (proxy.plain.port(), proxy.tls.port());
    let root = pebble.issuing_root().await.unwrap();
    let backend = Backend::start("app").await;
    let r = route("site")
        .host(HOST)
        .to(backend.addr)
        .acme(Some("ops@proxy.test"));
    proxy
        .admin
        .set_table(&table().route(r.clone()).build())
        .await
        .unwrap();

    let first = wait_for_acme_cert(&proxy.admin, None).await;
    let resp = tls_get(
        proxy.tls,
        std::slice::from_ref(&root),
        HOST,
        &[b"h2", b"http/1.1"],
        "/hello",
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["backend"], "app");
    assert_eq!(resp.json()["headers"]["x-forwarded-proto"], "https");
    assert!(
        serial_of(&resp.cert).contains(&first),
        "served cert is not serial {first}"
    );

    // Persisted with private files.
    let acme = dir.path().join("state/acme");
    for f in ["account.json", "proxy.test.key"] {
        let mode = std::fs::metadata(acme.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    assert!(acme.join("proxy.test.crt").exists());
    let metrics = proxy.admin.metrics().await.unwrap();
    assert!(
        metrics
            .contains("gantry_proxy_tls_cert_expiry_seconds{host=\"proxy.test\",source=\"acme\"}"),
        "{metrics}"
    );
    proxy.stop().await;

    // Renewal: the same state dir, a threshold longer than the lifetime,
    // so the next check renews; the persisted certificate is served at
    // once meanwhile.
    let mut config = acme_config(dir.path(), AcmeChallenge::Http01);
    config.listen = vec![format!("127.0.0.1:{http_port}").parse().unwrap()];
    config.tls_listen = vec![format!("127.0.0.1:{tls_port}").parse().unwrap()];
    config.acme_directory = pebble.directory.clone();
    config.acme_ca_root = Some(pebble.ca_path.clone());
    config.acme_renew_before = Some(Duration::from_secs(100 * 365 * 86_400));
    let proxy = restart_proxy(config).await;
    let renewed = wait_for_acme_cert(&proxy.admin, Some(&first)).await;
    assert_ne!(renewed, first);
    // The served certificate follows (a renewal may land between the two
    // calls: then a later serial is served).
    eventually_within("the renewed certificate to be served", ISSUANCE, || async {
        let resp = tls_get(
            proxy.tls,
            std::slice::from_ref(&root),
            HOST,
            &[b"http/1.1"],
            "/again",
        )
        .await
        .unwrap();
        assert_eq!(resp.status, 200);
        !serial_of(&resp.cert).contains(&first)
    })
    .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_is_issued_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let config = acme_config(dir.path(), AcmeChallenge::TlsAlpn01);
    // HTTP-01 would fail: pebble's httpPort points at a closed port.
    let closed = dead_addr().port();
    let (pebble, proxy) = start_pebble_and_proxy(dir.path(), config, Some(closed)).await;
    let root = pebble.issuing_root().await.unwrap();
    let backend = Backend::start("app").await;
    let r = route("site").host(HOST).to(backend.addr).acme(None);
    proxy
        .admin
        .set_table(&table().route(r).build())
        .await
        .unwrap();
    let serial = wait_for_acme_cert(&proxy.admin, None).await;
    let resp = tls_get(proxy.tls, &[root], HOST, &[b"h2"], "/x")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert!(serial_of(&resp.cert).contains(&serial));
    proxy.stop().await;
}
