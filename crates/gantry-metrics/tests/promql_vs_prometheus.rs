//! Our PromQL engine against a real Prometheus, on the same samples.
//!
//! The samples are written as OpenMetrics, turned into a TSDB block by
//! `promtool tsdb create-blocks-from openmetrics`, and served by a
//! `prometheus` started on that directory and a free port; the same
//! samples go into a [`Head`]. Every expression is evaluated by both, as an
//! instant query at several times and as a range query, and the results
//! must agree in labels and within 1e-9 relative in value.
//!
//! The Debian Prometheus is 2.42, whose windows are closed where ours (like
//! Prometheus 3) are left-open: samples sit 7 s past every 15 s and the
//! evaluation times 20 s past the minute, so no sample or subquery step
//! ever lies on a window boundary, and counters start far from zero, so
//! the two versions' rate extrapolations agree.
//!
//! Without `prometheus` and `promtool` on the PATH the test says so and
//! passes.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gantry_metrics::Head;
use gantry_metrics::labels::Labels;
use gantry_metrics::promql::{Engine, Value, parse};

/// The first sample, in seconds (November 2023).
const BASE: i64 = 1_700_000_000;
/// Samples every 15 s from BASE + 7 s, for 40 minutes.
const SAMPLES: i64 = 160;

type Data = Vec<(Labels, Vec<(i64, f64)>)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::new(pairs.iter().copied()).expect("valid labels")
}

/// Counters (one with a reset), gauges, histogram buckets and an info
/// metric, from a fixed seed.
fn data() -> Data {
    let mut rng = fastrand::Rng::with_seed(42);
    let times: Vec<i64> = (0..SAMPLES).map(|i| (BASE + 7 + 15 * i) * 1000).collect();
    let mut out: Data = Vec::new();
    for (job, instance, code) in [
        ("api", "a", "200"),
        ("api", "a", "500"),
        ("api", "b", "200"),
        ("api", "b", "500"),
        ("db", "a", "200"),
    ] {
        let mut v = 1000.0 + f64::from(rng.u32(0..500));
        let mut samples = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            if (job, instance, code) == ("api", "b", "200") && i == 90 {
                v = f64::from(rng.u32(0..5)); // a restart
            }
            v += f64::from(rng.u32(0..40)) + 0.25;
            samples.push((t, v));
        }
        out.push((
            labels(&[
                ("__name__", "http_requests_total"),
                ("job", job),
                ("instance", instance),
                ("code", code),
            ]),
            samples,
        ));
    }
    for room in ["kitchen", "hall", "cellar"] {
        let mut v = 15.0 + f64::from(rng.u32(0..10));
        let samples = times
            .iter()
            .map(|&t| {
                v += (rng.f64() - 0.5) * 2.0;
                (t, (v * 1000.0).round() / 1000.0)
            })
            .collect();
        out.push((
            labels(&[("__name__", "temperature"), ("room", room)]),
            samples,
        ));
    }
    // Classic histogram buckets: each scrape adds observations to buckets.
    let bounds = ["0.05", "0.1", "0.25", "0.5", "1", "+Inf"];
    for job in ["api", "db"] {
        let mut counts = [0.0f64; 6];
        let mut series: Vec<Vec<(i64, f64)>> = vec![Vec::new(); 6];
        for &t in &times {
            let mut cumulative = 0.0;
            for (b, count) in counts.iter_mut().enumerate() {
                cumulative += f64::from(rng.u32(0..8));
                *count += cumulative;
                series[b].push((t, *count));
            }
        }
        for (b, samples) in series.into_iter().enumerate() {
            out.push((
                labels(&[
                    ("__name__", "latency_seconds_bucket"),
                    ("job", job),
                    ("le", bounds[b]),
                ]),
                samples,
            ));
        }
    }
    out.push((
        labels(&[("__name__", "team_info"), ("job", "api"), ("team", "core")]),
        times.iter().map(|&t| (t, 1.0)).collect(),
    ));
    out
}

fn openmetrics(data: &Data) -> String {
    let mut text = String::new();
    for (labels, samples) in data {
        let name = labels.metric_name().expect("named");
        let rest: Vec<String> = labels
            .iter()
            .filter(|l| l.name != "__name__")
            .map(|l| format!("{}=\"{}\"", l.name, l.value))
            .collect();
        for &(t, v) in samples {
            text.push_str(&format!(
                "{name}{{{}}} {v} {}.{:03}\n",
                rest.join(","),
                t / 1000,
                t % 1000
            ));
        }
    }
    text.push_str("# EOF\n");
    text
}

/// A `prometheus` process, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(binary: &str) -> bool {
    Command::new(binary)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn start_prometheus(dir: &Path, data: &Data) -> Prometheus {
    let om = dir.join("data.om");
    std::fs::write(&om, openmetrics(data)).expect("write openmetrics");
    let tsdb = dir.join("tsdb");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&om)
        .arg(&tsdb)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n").expect("write config");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
        .arg("--storage.tsdb.retention.time=100y")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let prom = Prometheus { child, port };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if get(port, "/-/ready").is_some_and(|(status, _)| status == 200) {
            return prom;
        }
        assert!(Instant::now() < deadline, "prometheus not ready in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.0 GET: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn api(prom: &Prometheus, path: &str) -> serde_json::Value {
    let (status, body) = get(prom.port, path).expect("query prometheus");
    assert_eq!(status, 200, "{path}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    json["data"].clone()
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_str()
        .expect("a string value")
        .parse()
        .expect("a float")
}

fn millis(v: &serde_json::Value) -> i64 {
    (v.as_f64().expect("a timestamp") * 1000.0).round() as i64
}

fn metric(v: &serde_json::Value) -> String {
    let map = v.as_object().expect("metric object");
    Labels::new(
        map.iter()
            .map(|(k, v)| (k.as_str(), v.as_str().expect("label value"))),
    )
    .expect("labels")
    .to_string()
}

/// (labels, [(t, v)]) sorted by labels: one point per series for instant
/// vectors and scalars.
type Rows = Vec<(String, Vec<(i64, f64)>)>;

fn rows_from_prometheus(data: &serde_json::Value, t: i64) -> Rows {
    let mut rows: Rows = match data["resultType"].as_str() {
        Some("scalar") => vec![("scalar".into(), vec![(t, number(&data["result"][1]))])],
        Some("vector") => data["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| (metric(&s["metric"]), vec![(t, number(&s["value"][1]))]))
            .collect(),
        Some("matrix") => data["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|s| {
                let points = s["values"]
                    .as_array()
                    .expect("values")
                    .iter()
                    .map(|p| (millis(&p[0]), number(&p[1])))
                    .collect();
                (metric(&s["metric"]), points)
            })
            .collect(),
        other => panic!("result type {other:?}"),
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn rows_from_ours(value: Value, t: i64) -> Rows {
    let mut rows: Rows = match value {
        Value::Scalar(v) => vec![("scalar".into(), vec![(t, v)])],
        Value::Vector(samples) => samples
            .into_iter()
            .map(|s| (s.labels.to_string(), vec![(t, s.v)]))
            .collect(),
        Value::Matrix(series) => series
            .into_iter()
            .map(|s| (s.labels.to_string(), s.samples))
            .collect(),
        Value::String(s) => panic!("string {s}"),
    };
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn assert_same(what: &str, ours: &Rows, theirs: &Rows) {
    let names = |rows: &Rows| rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(ours), names(theirs), "{what}: series differ");
    for (o, p) in ours.iter().zip(theirs) {
        assert_eq!(
            o.1.len(),
            p.1.len(),
            "{what} {}: points {:?} vs {:?}",
            o.0,
            o.1,
            p.1
        );
        for (a, b) in o.1.iter().zip(&p.1) {
            assert!(
                a.0 == b.0 && same(a.1, b.1),
                "{what} {}: ours {a:?}, Prometheus {b:?}",
                o.0
            );
        }
    }
}

const EXPRESSIONS: &[&str] = &[
    "http_requests_total",
    r#"http_requests_total{code!="200", job=~"a.*"}"#,
    "http_requests_total offset 3m",
    "rate(http_requests_total[5m])",
    "increase(http_requests_total[2m])",
    "irate(http_requests_total[1m])",
    "rate(http_requests_total[5m] offset 4m)",
    "delta(temperature[10m])",
    "resets(http_requests_total[30m])",
    "changes(temperature[3m])",
    "sum by (job) (rate(http_requests_total[5m]))",
    "sum(rate(http_requests_total{code=~\"5..\"}[5m])) / sum(rate(http_requests_total[5m]))",
    "histogram_quantile(0.9, sum by (le, job) (rate(latency_seconds_bucket[5m])))",
    "histogram_quantile(0.5, latency_seconds_bucket)",
    "avg_over_time(temperature[10m])",
    "max_over_time(temperature[10m]) - min_over_time(temperature[10m])",
    "quantile_over_time(0.3, temperature[10m])",
    "stddev_over_time(temperature[10m])",
    "count_over_time(temperature[1m]) + sum_over_time(temperature[1m])",
    "last_over_time(temperature[1m])",
    "topk(2, http_requests_total)",
    "bottomk by (job) (1, http_requests_total)",
    "count without (instance) (http_requests_total)",
    "stddev(temperature)",
    "quantile(0.5, temperature)",
    "avg by (code) (http_requests_total)",
    "http_requests_total / on(job, instance) group_left sum by (job, instance) (http_requests_total)",
    r#"http_requests_total{code="500"} / ignoring(code) http_requests_total{code="200"}"#,
    "http_requests_total * on(job) group_left(team) team_info",
    "temperature > 18",
    "temperature > bool 18",
    "20 < temperature",
    "http_requests_total and on(instance) http_requests_total{code=\"500\"}",
    "http_requests_total unless on(job) team_info",
    "team_info or vector(5)",
    "clamp(temperature, 16, 20)",
    "round(temperature, 0.5)",
    "abs(-temperature) ^ 2 % 7",
    "timestamp(temperature)",
    "absent(nonexistent{job=\"x\"})",
    "scalar(sum(team_info))",
    "time() - 1700000000",
    r#"label_replace(http_requests_total, "status", "${1}xx", "code", "(.).*")"#,
    r#"label_join(temperature, "where", "/", "room", "__name__")"#,
    "deriv(temperature[10m])",
    "predict_linear(temperature[10m], 3600)",
    "max_over_time(rate(http_requests_total[5m])[10m:1m])",
    "avg_over_time(temperature[5m:30s])",
];

#[test]
fn engine_agrees_with_a_real_prometheus() {
    if !on_path("prometheus") || !on_path("promtool") {
        eprintln!("prometheus or promtool not on PATH: comparison skipped");
        return;
    }
    let data = data();
    let mut head = Head::new();
    for (labels, samples) in &data {
        for &(t, v) in samples {
            head.append(labels, t, v).expect("append");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = start_prometheus(dir.path(), &data);
    let engine = Engine::new(&head);
    let times = [
        (BASE + 600) * 1000,
        (BASE + 1500) * 1000,
        (BASE + 2400) * 1000,
    ];
    for q in EXPRESSIONS {
        let expr = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        for &t in &times {
            let ours = engine
                .eval_instant(&expr, t)
                .unwrap_or_else(|e| panic!("{q}: {e}"));
            let path = format!("/api/v1/query?query={}&time={}", encode(q), t / 1000);
            let theirs = rows_from_prometheus(&api(&prom, &path), t);
            assert_same(&format!("{q} at {t}"), &rows_from_ours(ours, t), &theirs);
        }
        let (start, end, step) = ((BASE + 300) * 1000, (BASE + 2700) * 1000, 60_000);
        let ours = engine
            .eval_range(&expr, start, end, step)
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let path = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=60",
            encode(q),
            start / 1000,
            end / 1000
        );
        let theirs = rows_from_prometheus(&api(&prom, &path), start);
        assert_same(
            &format!("{q} from {start} to {end}"),
            &rows_from_ours(Value::Matrix(ours), start),
            &theirs,
        );
    }
}
