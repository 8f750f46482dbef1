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

use gantry_proxy::{AcmeChallenge, AdminClient, Proxy, ProxyConfig};
use http_body_util::{BodyExt, Full};
use hyper::Method;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::{Backend, route, table};
use tls_support::{Ca, tls_get};
use tokio::sync::oneshot;

const HOST: &str = "proxy.test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Killed {
    Killed(cmd.spawn().unwrap_or_else(|e| {
        panic!("cannot start {what}: {e}; install it with `apt-get install pebble`")
    }))
}

struct Pebble {
    directory: String,
    management: SocketAddr,
    ca: Ca,
    ca_path: std::path::PathBuf,
    _pebble: Killed,
    _dns: Killed,
}

/// Starts pebble-challtestsrv (DNS only) and pebble, whose validation
/// authority connects to `http_port`/`tls_port` on 127.0.0.1.
async fn start_pebble(dir: &Path, http_port: u16, tls_port: u16) -> Pebble {
    let dns_port = free_port();
    let dns = spawn(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "pebble-challtestsrv",
    );
    // Pebble's own HTTPS certificate, from a CA the proxy is told to trust.
    let ca = Ca::new("pebble test ca");
    let (crt, key, _) = ca.leaf(dir, "pebble", &["localhost", "127.0.0.1"]);
    let ca_path = dir.join("pebble-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (listen, mgmt) = (free_port(), free_port());
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": crt,
            "privateKey": key,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    let config_path = dir.join("pebble-config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let pebble = spawn(
        Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "pebble",
    );
    let management: SocketAddr = format!("127.0.0.1:{mgmt}").parse().unwrap();
    let p = Pebble {
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management,
        ca,
        ca_path,
        _pebble: pebble,
        _dns: dns,
    };
    // Ready when the management interface answers.
    while p.issuing_root().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
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
    tls: SocketAddr,
    admin: AdminClient,
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), gantry_proxy::ProxyError>>,
}

async fn start_proxy(config: ProxyConfig) -> Running {
    let proxy = Proxy::bind(config).await.unwrap();
    let tls = proxy.tls_addrs()[0];
    let admin = proxy.admin_client();
    let (stop, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(proxy.serve(async move {
        let _ = rx.await;
    }));
    Running {
        tls,
        admin,
        stop,
        handle,
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
    loop {
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
    let mut config = acme_config(dir.path(), AcmeChallenge::Http01);
    // Pebble's validation authority connects to these ports.
    config.listen = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    config.tls_listen = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    let (http_port, tls_port) = (config.listen[0].port(), config.tls_listen[0].port());
    let pebble = start_pebble(dir.path(), http_port, tls_port).await;
    config.acme_directory = pebble.directory.clone();
    config.acme_ca_root = Some(pebble.ca_path.clone());
    let proxy = start_proxy(config).await;
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
    proxy.stop.send(()).unwrap();
    proxy.handle.await.unwrap().unwrap();

    // Renewal: the same state dir, a threshold longer than the lifetime,
    // so the next check renews; the persisted certificate is served at
    // once meanwhile.
    let mut config = acme_config(dir.path(), AcmeChallenge::Http01);
    config.listen = vec![format!("127.0.0.1:{http_port}").parse().unwrap()];
    config.tls_listen = vec![format!("127.0.0.1:{tls_port}").parse().unwrap()];
    config.acme_directory = pebble.directory.clone();
    config.acme_ca_root = Some(pebble.ca_path.clone());
    config.acme_renew_before = Some(Duration::from_secs(100 * 365 * 86_400));
    let proxy = start_proxy(config).await;
    let renewed = wait_for_acme_cert(&proxy.admin, Some(&first)).await;
    assert_ne!(renewed, first);
    // The served certificate follows (a renewal may land between the two
    // calls: then a later serial is served).
    loop {
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
        if !serial_of(&resp.cert).contains(&first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.stop.send(()).unwrap();
    proxy.handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_certificate_is_issued_and_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = acme_config(dir.path(), AcmeChallenge::TlsAlpn01);
    config.listen = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    config.tls_listen = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    // HTTP-01 would fail: pebble's httpPort points at a closed port.
    let pebble = start_pebble(dir.path(), free_port(), config.tls_listen[0].port()).await;
    config.acme_directory = pebble.directory.clone();
    config.acme_ca_root = Some(pebble.ca_path.clone());
    let proxy = start_proxy(config).await;
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
    proxy.stop.send(()).unwrap();
    proxy.handle.await.unwrap().unwrap();
}
