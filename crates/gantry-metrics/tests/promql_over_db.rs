//! PromQL over the whole store: a query whose range spans a block cut
//! from the head and the head itself reads both, as one series.

use gantry_metrics::db::{Db, DbOptions};
use gantry_metrics::labels::Labels;
use gantry_metrics::promql::{Engine, Value, parse};

const MIN: i64 = 60_000;

#[test]
fn a_rate_over_a_block_and_the_head_is_one_series() {
    let dir = tempfile::tempdir().unwrap();
    let (mut db, _) = Db::open(dir.path(), DbOptions::default()).unwrap();
    let labels = Labels::new([("__name__", "requests_total"), ("route", "hello")]).unwrap();
    // A counter that grows by 60 a minute (1/s), sampled every 15 s,
    // for 4 hours: the first 2 h range is cut into a block once the head
    // is half a range past it.
    let end = 4 * 60 * MIN;
    let mut t = 0;
    while t <= end {
        db.append_batch([(&labels, t, t as f64 / 1000.0)]).unwrap();
        t += 15_000;
    }
    let report = db.maintain(end).unwrap();
    assert_eq!(report.cut.len(), 1, "{report:?}");
    assert_eq!(db.blocks().len(), 1);
    let block_end = 2 * 60 * MIN;

    let engine = Engine::new(&db);
    // A window across the cut: samples from the block and from the head.
    let expr = parse("rate(requests_total[10m])").unwrap();
    let Value::Vector(v) = engine.eval_instant(&expr, block_end + 5 * MIN).unwrap() else {
        panic!("rate of a selector is a vector");
    };
    assert_eq!(v.len(), 1, "{v:?}");
    assert!((v[0].v - 1.0).abs() < 1e-9, "{v:?}");
    assert_eq!(v[0].labels.get("route"), Some("hello"));

    // Every sample once: count_over_time over the whole span.
    let expr = parse("count_over_time(requests_total[5h])").unwrap();
    let Value::Vector(v) = engine.eval_instant(&expr, end).unwrap() else {
        panic!("count_over_time is a vector");
    };
    assert_eq!(v[0].v, (end / 15_000 + 1) as f64, "{v:?}");
}
