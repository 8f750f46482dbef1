//! The exposition parser against what real clients write: fixtures from
//! the Python `prometheus_client` (tests/fixtures/exposition/generate.py)
//! and a hand-written one in the Go client's style.

use gantry_metrics::exposition::{ExpositionError, MetricType, ParseOptions, Sample, parse};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/exposition/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// One line per sample: labels, value bits as a float, timestamp, type.
fn render(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| {
            let ts = s.timestamp.map_or(String::new(), |t| format!(" @{t}"));
            format!("{} {:?}{ts} {}", s.labels, s.value, s.kind)
        })
        .collect()
}

#[test]
fn python_client_instrumentation() {
    let exp = parse(&fixture("python_client.prom"), &ParseOptions::default()).expect("parse");
    let got = render(&exp.samples);
    let expected = [
        r#"http_requests_total{method="GET", path="/"} 3.0 counter"#,
        r#"http_requests_total{method="POST", path="/a \"quoted\"\npath\\x"} 1.5 counter"#,
        r#"http_requests_total{method="GET", path="/é ☃"} 0.0 counter"#,
        r#"http_requests_created{method="GET", path="/"} 1700000000.25 gauge"#,
        r#"http_requests_created{method="POST", path="/a \"quoted\"\npath\\x"} 1700000000.25 gauge"#,
        r#"http_requests_created{method="GET", path="/é ☃"} 1700000000.25 gauge"#,
        r#"temperature_celsius NaN gauge"#,
        r#"queue_depth{q="a"} inf gauge"#,
        r#"queue_depth{q="b"} -inf gauge"#,
        r#"queue_depth{q="c"} -0.0 gauge"#,
        r#"queue_depth{q="d"} 1e-300 gauge"#,
        r#"queue_depth{q="e"} -1.5e300 gauge"#,
        r#"queue_depth{q="f"} 123456789.123 gauge"#,
        r#"request_seconds_bucket{le="0.005", route="/"} 1.0 histogram"#,
        r#"request_seconds_bucket{le="0.1", route="/"} 2.0 histogram"#,
        r#"request_seconds_bucket{le="1.0", route="/"} 3.0 histogram"#,
        r#"request_seconds_bucket{le="10.0", route="/"} 4.0 histogram"#,
        r#"request_seconds_bucket{le="+Inf", route="/"} 5.0 histogram"#,
        r#"request_seconds_count{route="/"} 5.0 histogram"#,
        r#"request_seconds_sum{route="/"} 55.551 histogram"#,
        r#"request_seconds_created{route="/"} 1700000000.25 gauge"#,
        r#"payload_bytes_count 2.0 summary"#,
        r#"payload_bytes_sum 400.0 summary"#,
        r#"payload_bytes_created 1700000000.25 gauge"#,
        r#"build_info{commit="abc", version="1.2.3"} 1.0 gauge"#,
        r#"state{state="starting"} 0.0 gauge"#,
        r#"state{state="running"} 1.0 gauge"#,
    ];
    assert_eq!(got, expected);

    // NaN is an ordinary NaN, not the staleness marker.
    let nan = exp.samples[6].value;
    assert!(nan.is_nan() && !gantry_metrics::is_stale_nan(nan));
    // -0.0 keeps its sign.
    assert_eq!(exp.samples[9].value.to_bits(), (-0.0f64).to_bits());

    let meta: Vec<_> = exp
        .metadata
        .iter()
        .map(|m| (m.name.as_str(), m.kind))
        .collect();
    assert_eq!(
        meta,
        [
            ("http_requests_total", MetricType::Counter),
            ("http_requests_created", MetricType::Gauge),
            ("temperature_celsius", MetricType::Gauge),
            ("queue_depth", MetricType::Gauge),
            ("request_seconds", MetricType::Histogram),
            ("request_seconds_created", MetricType::Gauge),
            ("payload_bytes", MetricType::Summary),
            ("payload_bytes_created", MetricType::Gauge),
            ("build_info", MetricType::Gauge),
            ("state", MetricType::Gauge),
        ]
    );
    assert_eq!(
        exp.metadata[0].help.as_deref(),
        Some("Requests handled, by \"method\" and path.\nSecond line \\ backslash.")
    );
}

#[test]
fn python_custom_collectors_with_timestamps() {
    let exp = parse(&fixture("python_custom.prom"), &ParseOptions::default()).expect("parse");
    assert_eq!(
        render(&exp.samples),
        [
            r#"exported_gauge{k="x"} 1.0 @1700000000123 gauge"#,
            r#"exported_gauge{k="y"} 2.0 @-1500 gauge"#,
            r#"exported_events_total 7.0 @1700000001000 counter"#,
            r#"exported_hist_bucket{le="1"} 1.0 histogram"#,
            r#"exported_hist_bucket{le="+Inf"} 2.0 histogram"#,
        ]
    );
}

#[test]
fn go_style_by_hand() {
    let exp = parse(
        &fixture("handwritten_go_style.prom"),
        &ParseOptions::default(),
    )
    .expect("parse");
    assert_eq!(
        render(&exp.samples),
        [
            r#"go_gc_duration_seconds{quantile="0"} 4.9351e-5 summary"#,
            r#"go_gc_duration_seconds{quantile="0.5"} 7.4241e-5 summary"#,
            r#"go_gc_duration_seconds{quantile="1"} 0.000335 summary"#,
            r#"go_gc_duration_seconds_sum 0.001 summary"#,
            r#"go_gc_duration_seconds_count 7.0 summary"#,
            r#"rpc_latency{service="a"} 1.5 @1395066363000 untyped"#,
            r#"no_type_no_help 2.0 untyped"#,
            r#"spaced{a="1", b="2"} -300.0 @-7 untyped"#,
            // An empty label value is no label.
            r#"empty_help{y="kept"} NaN gauge"#,
            r#"lower_case_inf{sign="plus"} inf untyped"#,
            r#"lower_case_inf{sign="minus"} -inf untyped"#,
            r#"untyped_family 1000.0 untyped"#,
            r#"crlf_line{a="b"} 42.0 untyped"#,
            r#"crlf_total 1.0 counter"#,
        ]
    );
    let help: Vec<_> = exp
        .metadata
        .iter()
        .map(|m| (m.name.as_str(), m.help.as_deref()))
        .collect();
    assert_eq!(
        help,
        [
            (
                "go_gc_duration_seconds",
                Some("A summary of the GC pause durations.")
            ),
            ("rpc_latency", Some("Untyped: a HELP line and no TYPE.")),
            ("empty_help", Some("")),
            ("untyped_family", None),
            ("crlf", None),
        ]
    );
}

#[test]
fn sample_limit_is_a_typed_error_at_the_line_over_it() {
    let many = fixture("python_many.prom");
    let all = parse(&many, &ParseOptions::default()).expect("parse");
    assert_eq!(all.samples.len(), 1000);
    let at_limit = ParseOptions {
        sample_limit: Some(1000),
    };
    assert_eq!(parse(&many, &at_limit).expect("parse").samples.len(), 1000);
    let over = ParseOptions {
        sample_limit: Some(999),
    };
    let err = parse(&many, &over).expect_err("over the limit");
    // HELP and TYPE are lines 1 and 2; the 1000th sample is line 1002.
    assert_eq!(
        err,
        ExpositionError::SampleLimit {
            line: 1002,
            limit: 999
        }
    );
    assert_eq!(
        err.to_string(),
        "line 1002: more than 999 samples, the target's sample_limit"
    );
}
