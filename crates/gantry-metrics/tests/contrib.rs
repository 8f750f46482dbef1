//! `contrib/`: the Prometheus rules file passes the real `promtool check
//! rules`, every expression in it and in the Grafana dashboard parses in
//! Gantry's engine, and the error-ratio alert fires over proxy-shaped data
//! exactly where it should.
//!
//! Without `promtool` on the PATH that one check says so and passes; the
//! parse and evaluation checks always run (`./scripts/test` installs
//! Debian's `prometheus`, which brings promtool).

use std::path::PathBuf;
use std::process::Command;

use gantry_metrics::Head;
use gantry_metrics::labels::Labels;
use gantry_metrics::promql::{Engine, Value, parse};

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../contrib")
}

/// The `expr:` values of a rules file: plain scalars on the line, or a
/// `>-` folded block on the lines indented below it.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == ">-" || rest == ">" || rest == "|" {
                let indent = line.len() - trimmed.len();
                let mut block = Vec::new();
                i += 1;
                while i < lines.len() {
                    let l = lines[i];
                    let body = l.trim_start();
                    if !body.is_empty() && l.len() - body.len() <= indent {
                        break;
                    }
                    block.push(body);
                    i += 1;
                }
                out.push(block.join(" ").trim().to_string());
                continue;
            }
            out.push(rest.to_string());
        }
        i += 1;
    }
    out
}

/// Grafana's variables, put back to what Grafana would send.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$route", ".*")
}

fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(contrib().join("grafana/gantry-proxy.json"))
        .expect("contrib/grafana/gantry-proxy.json");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            out.push(target["expr"].as_str().expect("expr").to_string());
        }
    }
    out
}

#[test]
fn the_rules_file_passes_promtool_check_rules() {
    let path = contrib().join("prometheus/rules.yml");
    let out = match Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("promtool not runnable ({e}): `promtool check rules` skipped");
            return;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules failed:\n{text}");
    // promtool counts the same rules the other checks here read.
    let rules = std::fs::read_to_string(&path).expect("rules");
    let want = format!("SUCCESS: {} rules found", rule_exprs(&rules).len());
    assert!(text.contains(&want), "{text}");
}

#[test]
fn every_contrib_expression_parses_in_gantrys_engine() {
    let rules = std::fs::read_to_string(contrib().join("prometheus/rules.yml")).expect("rules");
    let exprs = rule_exprs(&rules);
    assert_eq!(exprs.len(), 7, "{exprs:#?}");
    let dash = dashboard_exprs();
    assert_eq!(dash.len(), 7, "{dash:#?}");
    for e in exprs
        .into_iter()
        .chain(dash.iter().map(|e| grafana_to_promql(e)))
    {
        parse(&e).unwrap_or_else(|err| panic!("{e}: {err}"));
    }
}

fn series(route: &str, class: &str) -> Labels {
    Labels::new([
        ("__name__", "gantry_proxy_requests_total"),
        ("job", "gantry-proxy"),
        ("instance", "proxy"),
        ("route", route),
        ("set", "r1"),
        ("class", class),
    ])
    .expect("labels")
}

#[test]
fn the_error_ratio_alert_selects_the_route_over_one_percent_only() {
    let mut head = Head::new();
    // Ten minutes at 15 s: "shop" answers 990 2xx and 15 5xx every
    // scrape (1.49 % errors); "blog" 1000 2xx and 5 5xx (0.50 %).
    for k in 0..=40i64 {
        let t = 1_000_000 + k * 15_000;
        let n = k as f64;
        head.append(&series("shop", "2xx"), t, 10_000.0 + 990.0 * n)
            .expect("append");
        head.append(&series("shop", "5xx"), t, 500.0 + 15.0 * n)
            .expect("append");
        head.append(&series("blog", "2xx"), t, 20_000.0 + 1000.0 * n)
            .expect("append");
        head.append(&series("blog", "5xx"), t, 700.0 + 5.0 * n)
            .expect("append");
    }
    let rules = std::fs::read_to_string(contrib().join("prometheus/rules.yml")).expect("rules");
    let ratio = rule_exprs(&rules)
        .into_iter()
        .find(|e| e.contains("class=\"5xx\"") && e.contains("> 0.01"))
        .expect("the error-ratio alert");
    let expr = parse(&ratio).expect("parses");
    let engine = Engine::new(&head);
    let Value::Vector(v) = engine
        .eval_instant(&expr, 1_000_000 + 40 * 15_000)
        .expect("evaluates")
    else {
        panic!("an instant vector")
    };
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].labels.get("route"), Some("shop"));
    let want = 15.0 / 1005.0;
    assert!((v[0].v - want).abs() < 1e-9, "{} != {want}", v[0].v);
}
