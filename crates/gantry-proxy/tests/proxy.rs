//! End-to-end tests: a real proxy between a real client and real backends.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gantry_proxy::AdminClientError;
use hyper::{Method, StatusCode};
use support::*;

fn is_hex32(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn routes_by_host_and_prefix_and_answers_404_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let (web, api, wild) = (
        Backend::start("web").await,
        Backend::start("api").await,
        Backend::start("wild").await,
    );
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("app/web").host("app.test").to(web.addr))
                .route(
                    route("app/api")
                        .host("app.test")
                        .prefix("/api")
                        .to(api.addr),
                )
                .route(route("any/wild").host("*.test").to(wild.addr))
                .build(),
        )
        .await
        .unwrap();
    let c = client();
    assert_eq!(get(&c, &p, "app.test", "/").await.backend(), "web");
    assert_eq!(
        get(&c, &p, "APP.test:80", "/api/users").await.backend(),
        "api"
    );
    assert_eq!(get(&c, &p, "app.test", "/apiary").await.backend(), "web");
    assert_eq!(get(&c, &p, "x.test", "/api").await.backend(), "wild");

    let r = get(&c, &p, "nope.example", "/x").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(
        r.text().contains("No route matches host `nope.example`"),
        "{}",
        r.text()
    );
    assert!(r.text().contains(&id));
    assert_eq!(p.admin.stats().await.unwrap().unrouted_requests, 1);
    p.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_is_within_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (stable, canary) = (
        Backend::start("stable").await,
        Backend::start("canary").await,
    );
    let p = Arc::new(TestProxy::start(dir.path()).await);
    p.admin
        .set_table(
            &table()
                .route(
                    route("hello/production")
                        .set(set("stable").to(stable.addr).weight(90))
                        .set(set("canary").to(canary.addr).weight(10)),
                )
                .build(),
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut canary = 0;
            for _ in 0..500 {
                let r = get(&c, &p, "hello.test", "/").await;
                assert_eq!(r.status, StatusCode::OK);
                if r.headers["x-backend"] == "canary" {
                    canary += 1;
                }
            }
            canary
        }));
    }
    let mut canary = 0;
    for t in tasks {
        canary += t.await.unwrap();
    }
    let share = canary as f64 / 2000.0;
    assert!((0.07..=0.13).contains(&share), "canary share {share}");

    let stats = p.admin.stats().await.unwrap();
    let s = stats.set("hello/production", "canary").unwrap();
    assert_eq!(s.requests.c2xx, canary);
    assert_eq!(s.weight, Some(10));
    assert_eq!(s.latency_ms.count, canary);
    assert!(s.latency_ms.p99.is_some());
    let st = stats.set("hello/production", "stable").unwrap();
    assert_eq!(st.requests.c2xx + canary, 2000);
    assert!(st.bytes_out > 0);
    assert_eq!(st.in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swaps_under_load_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let (blue, green) = (Backend::start("blue").await, Backend::start("green").await);
    let p = Arc::new(TestProxy::start(dir.path()).await);
    let tables = [
        table()
            .route(route("r").set(set("blue").to(blue.addr)))
            .build(),
        table()
            .route(route("r").set(set("green").to(green.addr)))
            .build(),
        table()
            .route(
                route("r")
                    .set(set("blue").to(blue.addr).weight(50))
                    .set(set("green").to(green.addr).weight(50)),
            )
            .build(),
    ];
    p.admin.set_table(&tables[0]).await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (p, done, ok) = (p.clone(), done.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = HashMap::new();
            while !done.load(Ordering::Relaxed) {
                let r = get(&c, &p, "x.test", "/").await;
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
                *seen.entry(r.backend()).or_insert(0) += 1;
                ok.fetch_add(1, Ordering::Relaxed);
            }
            seen
        }));
    }
    for i in 0..60 {
        p.admin.set_table(&tables[i % 3]).await.unwrap();
        // Let some requests through each table.
        let before = ok.load(Ordering::Relaxed);
        eventually("a few requests through the swapped-in table", || {
            let ok = ok.clone();
            async move { ok.load(Ordering::Relaxed) > before + 2 }
        })
        .await;
    }
    done.store(true, Ordering::Relaxed);
    let mut seen: HashMap<String, u64> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *seen.entry(k).or_default() += v;
        }
    }
    assert!(seen["blue"] > 0 && seen["green"] > 0, "{seen:?}");
    let stats = p.admin.stats().await.unwrap();
    for s in &stats.sets {
        assert_eq!(s.requests.c5xx, 0, "{s:?}");
        assert_eq!(s.in_flight, 0, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_set_drains_its_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let p = Arc::new(TestProxy::start(dir.path()).await);
    p.admin
        .set_table(
            &table()
                .route(route("app/prod").set(set("blue").to(old.addr)))
                .build(),
        )
        .await
        .unwrap();
    let slow = {
        let p = p.clone();
        tokio::spawn(async move { get(&client(), &p, "a.test", "/hold").await })
    };
    old.wait_entered(1).await;
    let d = p.admin.drained("app/prod", "blue").await.unwrap();
    assert!(d.in_table && d.receiving_traffic && !d.drained);
    assert_eq!(d.in_flight, 1);

    p.admin
        .set_table(
            &table()
                .route(route("app/prod").set(set("green").to(new.addr)))
                .build(),
        )
        .await
        .unwrap();
    let d = p.admin.drained("app/prod", "blue").await.unwrap();
    assert!(!d.in_table && !d.receiving_traffic);
    assert_eq!(d.in_flight, 1);
    assert!(!d.drained);
    let c = client();
    for _ in 0..10 {
        assert_eq!(get(&c, &p, "a.test", "/").await.backend(), "new");
    }
    old.release();
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-backend"], "old");
    let admin = p.admin.clone();
    eventually("set blue of app/prod to drain", || {
        let admin = admin.clone();
        async move { admin.drained("app/prod", "blue").await.unwrap().drained }
    })
    .await;
    assert!(!p.admin.drained("app/prod", "green").await.unwrap().drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_set_past_the_drain_timeout_gets_504() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Backend::start("old").await, Backend::start("new").await);
    let mut cfg = config(dir.path());
    cfg.drain_timeout = std::time::Duration::from_millis(50);
    let p = Arc::new(TestProxy::start_with(cfg).await);
    p.admin
        .set_table(
            &table()
                .route(route("r").set(set("blue").to(old.addr)))
                .build(),
        )
        .await
        .unwrap();
    let slow = {
        let p = p.clone();
        tokio::spawn(async move { get(&client(), &p, "a.test", "/hold").await })
    };
    old.wait_entered(1).await;
    p.admin
        .set_table(
            &table()
                .route(route("r").set(set("green").to(new.addr)))
                .build(),
        )
        .await
        .unwrap();
    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("drain timeout"), "{}", r.text());
    assert!(p.admin.drained("r", "blue").await.unwrap().drained);
    old.release();
}

#[tokio::test]
async fn dead_instance_is_retried_on_another_and_ejected() {
    let dir = tempfile::tempdir().unwrap();
    let live = Backend::start("live").await;
    let dead = dead_addr();
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(dead).to(live.addr)).build())
        .await
        .unwrap();
    let c = client();
    for _ in 0..50 {
        let r = get(&c, &p, "a.test", "/").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.backend(), "live");
    }
    // PUT with a body is idempotent and unsent: retried too.
    let r = send(
        &c,
        &p,
        Method::PUT,
        "a.test",
        "/",
        &[],
        Bytes::from_static(b"data"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let s = p.admin.stats().await.unwrap();
    assert_eq!(s.set("r", "s").unwrap().requests.c2xx, 51);
    let dead = s.instances.iter().find(|i| i.address == dead).unwrap();
    assert!(dead.ejections >= 1, "{dead:?}");
    let live = s.instances.iter().find(|i| i.address == live.addr).unwrap();
    assert!(!live.ejected && live.ejections == 0 && live.outstanding == 0);
    let text = p.admin.metrics().await.unwrap();
    assert!(text.contains(&format!(
        "gantry_proxy_instance_ejections_total{{instance=\"{}\"}}",
        dead.address
    )));
}

#[tokio::test]
async fn all_instances_dead_gives_502_with_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("r").to(dead_addr()).to(dead_addr()))
                .build(),
        )
        .await
        .unwrap();
    let c = client();
    let r = send(
        &c,
        &p,
        Method::GET,
        "a.test",
        "/",
        &[("x-request-id", "req-42")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["x-request-id"], "req-42");
    assert!(r.text().contains("request id: req-42"), "{}", r.text());
    assert!(
        r.text()
            .contains("Cannot connect to any instance of set `s`")
    );
    // A POST is not retried, still 502.
    let r = send(
        &c,
        &p,
        Method::POST,
        "a.test",
        "/",
        &[],
        Bytes::from_static(b"x"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let s = p.admin.stats().await.unwrap();
    assert_eq!(s.set("r", "s").unwrap().requests.c5xx, 2);
}

#[tokio::test]
async fn request_headers_are_added_kept_and_stripped() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let c = client();

    let r = get(&c, &p, "app.test", "/").await;
    let id = r.seen("x-request-id").unwrap();
    assert!(is_hex32(&id), "{id}");
    assert_eq!(r.headers["x-request-id"], id.as_str());
    let tp = r.seen("traceparent").unwrap();
    assert!(tp.starts_with(&format!("00-{id}-")), "{tp}");
    assert_eq!(r.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(r.seen("x-forwarded-host").as_deref(), Some("app.test"));
    assert_eq!(r.seen("host").as_deref(), Some("app.test"));

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        &c,
        &p,
        Method::GET,
        "app.test",
        "/",
        &[
            ("x-request-id", "from-client"),
            ("traceparent", tp),
            ("x-forwarded-for", "6.6.6.6"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("te", "trailers"),
            ("x-app", "kept"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.seen("x-request-id").as_deref(), Some("from-client"));
    assert_eq!(r.seen("traceparent").as_deref(), Some(tp));
    // Not trusted by default: replaced.
    assert_eq!(r.seen("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.seen("x-app").as_deref(), Some("kept"));
    for hop in ["x-hop", "keep-alive", "proxy-authorization", "te"] {
        assert_eq!(r.seen(hop), None, "{hop} reached the backend");
    }
    // Hop-by-hop headers of the response are stripped too.
    assert!(!r.headers.contains_key("keep-alive"));
    assert_eq!(r.headers["x-backend"], "b");
}

#[tokio::test]
async fn trusted_forwarded_headers_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let mut cfg = config(dir.path());
    cfg.trust_forwarded = true;
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let r = send(
        &client(),
        &p,
        Method::GET,
        "app.test",
        "/",
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        r.seen("x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1")
    );
    assert_eq!(r.seen("x-forwarded-proto").as_deref(), Some("https"));
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("r").host("app.test").to(b.addr))
                .build(),
        )
        .await
        .unwrap();
    let c = h2_client();
    let mut ids = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = get(&c, &p, "app.test", "/h2").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.backend(), "b");
        assert_eq!(r.json()["path"], "/h2");
        assert_eq!(r.seen("host").as_deref(), Some("app.test"));
        // Each answer carries its own request id (sent never-indexed, so
        // the connection's HPACK table does not fill up with them).
        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(r.seen("x-request-id").as_deref(), Some(id.as_str()));
        assert!(ids.insert(id), "request ids repeat: {ids:?}");
    }
    // An upload over h2 reaches an HTTP/1.1 backend intact.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let r = send(
        &c,
        &p,
        Method::POST,
        "app.test",
        "/upload",
        &[],
        Bytes::from(data.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(*b.received.lock().unwrap(), data);
}

#[tokio::test]
async fn large_upload_is_streamed_through_intact() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let data: Vec<u8> = (0..(3 << 20) as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let r = send(
        &client(),
        &p,
        Method::POST,
        "a.test",
        "/upload",
        &[],
        Bytes::from(data.clone()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), data.len().to_string());
    assert!(
        *b.received.lock().unwrap() == data,
        "backend got different bytes"
    );
    let s = p.admin.stats().await.unwrap();
    assert_eq!(s.set("r", "s").unwrap().bytes_in, data.len() as u64);
}

#[tokio::test]
async fn response_body_is_streamed_not_buffered() {
    use http_body_util::BodyExt;
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let c = client();
    let mut req = hyper::Request::new(http_body_util::Full::new(Bytes::new()));
    *req.uri_mut() = p.url("/stream").parse().unwrap();
    let resp = c.request(req).await.unwrap();
    let mut body = resp.into_body();
    // The first chunk arrives while the backend still holds the rest.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first");
    b.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"second");
}

#[tokio::test]
async fn maintenance_and_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    let maint = route("m")
        .host("m.test")
        .to(b.addr)
        .maintenance("Back at 14:00 UTC", Some(120));
    let slow = route("slow").host("slow.test").to(b.addr).timeout_ms(50);
    p.admin
        .set_table(&table().route(maint).route(slow).build())
        .await
        .unwrap();
    let c = client();
    let r = get(&c, &p, "m.test", "/").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "120");
    assert!(r.text().contains("Back at 14:00 UTC"));

    let r = get(&c, &p, "slow.test", "/hold").await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        r.text().contains("did not answer within 50 ms"),
        "{}",
        r.text()
    );
    b.release();
    let s = p.admin.stats().await.unwrap();
    assert_eq!(s.maintenance_responses, 1);
    assert_eq!(s.set("slow", "s").unwrap().requests.c5xx, 1);
}

#[tokio::test]
async fn table_is_persisted_and_reloaded_by_a_new_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let t = table().route(route("r").to(b.addr)).build();
    let p = TestProxy::start(dir.path()).await;
    p.admin.set_table(&t).await.unwrap();
    p.stop().await.unwrap();
    assert!(!dir.path().join("admin.sock").exists());

    let p = TestProxy::start(dir.path()).await;
    assert_eq!(p.admin.table().await.unwrap(), t);
    assert_eq!(get(&client(), &p, "a.test", "/").await.backend(), "b");
    p.stop().await.unwrap();
}

#[tokio::test]
async fn admin_api_refuses_bad_tables_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let p = TestProxy::start(dir.path()).await;
    let mode = std::fs::metadata(p.admin.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let bad = table()
        .route(
            route("r")
                .set(set("a").to("127.0.0.1:1".parse().unwrap()).weight(60))
                .set(set("a").weight(60)),
        )
        .build();
    match p.admin.set_table(&bad).await {
        Err(AdminClientError::Api { status, message }) => {
            assert_eq!(status, 400);
            assert!(message.contains("add up to 120"), "{message}");
            assert!(message.contains("used twice"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.admin.table().await.unwrap().routes.len(), 0);
    let (status, _) = p
        .admin
        .raw(Method::PUT, "/table", Some(b"{not json".to_vec()))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let (status, _) = p.admin.raw(Method::GET, "/drained", None).await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = p.admin.raw(Method::GET, "/nope", None).await.unwrap();
    assert_eq!(status, 404);
    // A second proxy on the same socket is refused.
    let err = gantry_proxy::Proxy::bind(config(dir.path()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already answers"), "{err}");
}

#[tokio::test]
async fn metrics_have_per_set_series() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(
            &table()
                .route(route("hello/production").set(set("stable").to(b.addr)))
                .build(),
        )
        .await
        .unwrap();
    let c = client();
    for _ in 0..3 {
        get(&c, &p, "a.test", "/").await;
    }
    let text = p.admin.metrics().await.unwrap();
    let l = "route=\"hello/production\",set=\"stable\"";
    for line in [
        format!("gantry_proxy_requests_total{{{l},class=\"2xx\"}} 3"),
        format!("gantry_proxy_request_duration_seconds_count{{{l}}} 3"),
        format!("gantry_proxy_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} 3"),
        format!("gantry_proxy_in_flight_requests{{{l}}} 0"),
        format!("gantry_proxy_set_weight{{{l}}} 100"),
        "# TYPE gantry_proxy_request_duration_seconds histogram".to_string(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn access_log_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let log = dir.path().join("access.log");
    let mut cfg = config(dir.path());
    cfg.access_log = true;
    cfg.access_log_path = Some(log.clone());
    let p = TestProxy::start_with(cfg).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let r = send(
        &client(),
        &p,
        Method::GET,
        "a.test",
        "/x?secret=1",
        &[("x-request-id", "log-1")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    eventually("the access log line of request log-1", || async {
        read().contains("log-1")
    })
    .await;
    let line: serde_json::Value = serde_json::from_str(read().lines().next().unwrap()).unwrap();
    assert_eq!(line["request_id"], "log-1");
    assert_eq!(line["route"], "r");
    assert_eq!(line["set"], "s");
    assert_eq!(line["instance"], b.addr.to_string());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/x");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["bytes"].as_u64(), Some(r.body.len() as u64));
    assert!(line["duration_ms"].is_number());
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
}

/// Client connections are spread over the proxy's worker threads (one per
/// core); a shutdown waits for the open requests of every worker, and the
/// proxy stops accepting meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_open_requests_of_every_worker() {
    use http_body_util::BodyExt;
    const OPEN: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    // One client (so one connection) per request.
    let slow: Vec<_> = (0..OPEN)
        .map(|i| {
            let c = client();
            let uri = p.url(&format!("/hold/{i}"));
            tokio::spawn(async move {
                let mut req = hyper::Request::new(http_body_util::Full::new(Bytes::new()));
                *req.uri_mut() = uri.parse().unwrap();
                let resp = c.request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, body)
            })
        })
        .collect();
    b.wait_entered(OPEN).await;
    let addr = p.addr;
    let stopping = tokio::spawn(p.stop());
    // No new connection is served once the proxy is stopping (the accept
    // loops end; a connection the kernel still queued is closed unserved).
    let refused = async {
        loop {
            let c = client();
            let mut req = hyper::Request::new(http_body_util::Full::new(Bytes::new()));
            *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
            if c.request(req).await.is_err() {
                return;
            }
            // The poll interval of a poll bounded by the timeout below.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), refused)
        .await
        .expect("the stopping proxy still served new connections after 30 s");
    assert!(!stopping.is_finished(), "stopped with requests still open");
    b.release();
    for s in slow {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(!body.is_empty());
    }
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_open_requests() {
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::start("b").await;
    let p = TestProxy::start(dir.path()).await;
    p.admin
        .set_table(&table().route(route("r").to(b.addr)).build())
        .await
        .unwrap();
    let slow = {
        let c = client();
        let uri = p.url("/hold");
        tokio::spawn(async move {
            let mut req = hyper::Request::new(http_body_util::Full::new(Bytes::new()));
            *req.uri_mut() = uri.parse().unwrap();
            let resp = c.request(req).await.unwrap();
            resp.status()
        })
    };
    b.wait_entered(1).await;
    let stopping = tokio::spawn(p.stop());
    b.release();
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    stopping.await.unwrap().unwrap();
}
