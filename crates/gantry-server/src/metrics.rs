//! The embedded metrics store ([`gantry_metrics::Db`]) as the control
//! plane runs it: opened at start under `<data>/metrics/` (which it owns),
//! its WAL synced by a [`Syncer`], `maintain(now)` run every
//! [`MAINTAIN_EVERY`], and the edge proxy's `/metrics` scraped every
//! `--metrics-interval`.
//!
//! A scrape is Prometheus's: the exposition parsed with a `sample_limit`
//! ([`SAMPLE_LIMIT`]), the target's labels (`job`, `instance`) added (a
//! sample's own `job` or `instance` kept as `exported_job`,
//! `exported_instance`), the whole batch appended at the scrape's start
//! time (or the sample's own timestamp), and `up`, `scrape_duration_seconds`
//! and `scrape_samples_scraped` appended too. A failed scrape (proxy down,
//! past its deadline, malformed text, over the limit) appends nothing of
//! the target's, `up 0`, and keeps the reason for `gantry metrics status`;
//! it is logged as a warning at most every [`WARN_EVERY`] unless the reason
//! changes. [`scrape_batch`] is that logic as a pure function.
//!
//! Everything that touches the store (open, append, maintain, stats) runs
//! on the blocking pool: the store's calls do file I/O under its lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_api::{MetricsStatus, MetricsTarget};
use gantry_common::{lock, now_ms};
use gantry_metrics::exposition::{self, ParseOptions};
use gantry_metrics::{Db, DbOptions, Labels, Syncer};
use gantry_proxy::AdminClient;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::error::{ServerError, chain};

/// The store's directory inside the data directory.
pub(crate) const METRICS_DIR: &str = "metrics";
/// At most this many samples per scrape; more fails the scrape.
pub(crate) const SAMPLE_LIMIT: usize = 50_000;
/// How often blocks are cut, downsampled and expired.
pub(crate) const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// A target that keeps failing for the same reason is logged this often.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(300);
/// The longest a scrape may take (Prometheus's default scrape timeout).
const MAX_SCRAPE_DEADLINE: Duration = Duration::from_secs(10);

/// A scrape target's identity: its `job` and `instance` labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) job: &'static str,
    pub(crate) instance: &'static str,
}

/// The edge proxy, scraped over its admin socket.
pub(crate) const PROXY_TARGET: Target = Target {
    job: "gantry-proxy",
    instance: "proxy",
};

/// The store and what the scrapes found, shared with the API handlers.
#[derive(Debug)]
pub(crate) struct Metrics {
    db: Arc<Mutex<Db>>,
    targets: Mutex<Vec<MetricsTarget>>,
}

/// The store's background work; [`Running::shutdown`] stops it.
#[derive(Debug)]
pub(crate) struct Running {
    tasks: Vec<JoinHandle<()>>,
    syncer: Arc<Syncer>,
}

/// Opens the store in `<data_dir>/metrics` and starts its syncer, its
/// maintenance and the proxy's scrapes (every `interval`), until `stop`
/// turns true.
pub(crate) async fn start(
    data_dir: &Path,
    proxy: AdminClient,
    interval: Duration,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<Metrics>, Running), ServerError> {
    let dir = store_dir(data_dir);
    let db = tokio::task::spawn_blocking(move || open(&dir))
        .await
        .map_err(|source| ServerError::Task { source })??;
    let db = Arc::new(Mutex::new(db));
    let syncer = Syncer::start(db.clone())
        .map(Arc::new)
        .map_err(|source| ServerError::MetricsSyncer { source })?;
    let metrics = Arc::new(Metrics {
        db,
        targets: Mutex::new(vec![never_scraped(&PROXY_TARGET)]),
    });
    let tasks = vec![
        tokio::spawn(maintain_loop(metrics.clone(), syncer.clone(), stop.clone())),
        tokio::spawn(scrape_loop(metrics.clone(), proxy, interval, stop)),
    ];
    Ok((metrics, Running { tasks, syncer }))
}

/// Opens the store in `dir` (blocking); a damaged store is an error that
/// says what to do.
pub(crate) fn open(dir: &Path) -> Result<Db, ServerError> {
    let (db, report) =
        Db::open(dir, DbOptions::default()).map_err(|source| ServerError::Metrics {
            dir: dir.to_path_buf(),
            source,
        })?;
    let stats = db.stats();
    tracing::info!(
        dir = %dir.display(),
        blocks = report.blocks,
        series = stats.head.series,
        replayed = stats.head.samples,
        "metrics store open"
    );
    Ok(db)
}

impl Running {
    /// Waits for the loops to see the stop, then stops the syncer after a
    /// last sync, so a clean shutdown loses no sample.
    pub(crate) async fn shutdown(self) {
        for t in self.tasks {
            let _ = t.await;
        }
        let syncer = self.syncer;
        let _ = tokio::task::spawn_blocking(move || drop(syncer)).await;
    }
}

impl Metrics {
    /// The store's sizes and the targets' last scrapes.
    pub(crate) async fn status(&self) -> Result<MetricsStatus, tokio::task::JoinError> {
        let db = self.db.clone();
        let stats = tokio::task::spawn_blocking(move || lock(&db).stats()).await?;
        let targets = lock(&self.targets).clone();
        let block_samples: u64 = stats.block_samples.iter().sum();
        let disk_bytes: u64 = stats.block_bytes.iter().sum();
        let head_bytes = stats.head.chunk_bytes as u64;
        let samples = stats.head.samples + block_samples;
        let oldest = match (stats.min_time, stats.head.min_time) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(MetricsStatus {
            series: stats.head.series as u64,
            samples,
            head_bytes,
            disk_bytes,
            blocks: stats.blocks.iter().sum::<usize>() as u64,
            bytes_per_sample: (samples > 0)
                .then(|| (head_bytes + disk_bytes) as f64 / samples as f64),
            oldest,
            targets,
        })
    }

    fn set_target(&self, status: MetricsTarget) {
        let mut targets = lock(&self.targets);
        match targets
            .iter_mut()
            .find(|t| t.job == status.job && t.instance == status.instance)
        {
            Some(t) => *t = status,
            None => targets.push(status),
        }
    }
}

fn never_scraped(target: &Target) -> MetricsTarget {
    MetricsTarget {
        job: target.job.into(),
        instance: target.instance.into(),
        up: false,
        last_scrape: None,
        last_duration_seconds: None,
        samples_scraped: 0,
        last_error: None,
    }
}

// === maintenance ===

async fn maintain_loop(
    metrics: Arc<Metrics>,
    syncer: Arc<Syncer>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(MAINTAIN_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let db = metrics.db.clone();
        let done = tokio::task::spawn_blocking(move || lock(&db).maintain(now_ms())).await;
        match done {
            Ok(Ok(report)) => {
                if !(report.cut.is_empty()
                    && report.downsampled.is_empty()
                    && report.expired.is_empty()
                    && report.over_size.is_empty())
                {
                    tracing::info!(
                        cut = ?report.cut,
                        downsampled = ?report.downsampled,
                        expired = ?report.expired,
                        over_size = ?report.over_size,
                        "metrics store maintained"
                    );
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %chain(&e), "metrics store maintenance failed"),
            Err(e) => tracing::warn!(error = %e, "metrics store maintenance task failed"),
        }
        if let Some(e) = syncer.take_error() {
            tracing::warn!(error = %chain(&e), "the metrics WAL could not be synced; it is retried");
        }
    }
}

// === scraping ===

/// What one scrape gives: the samples to append, and the target's status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scrape {
    pub(crate) samples: Vec<(Labels, i64, f64)>,
    pub(crate) status: MetricsTarget,
}

/// A scrape of `target` that started at `start_ms`, took `took` and
/// fetched `body` (or failed with the reason): the samples to append
/// (with the target's labels, and its `up`, `scrape_duration_seconds`
/// and `scrape_samples_scraped`) and the target's new status.
pub(crate) fn scrape_batch(
    target: &Target,
    body: Result<&str, String>,
    start_ms: i64,
    took: Duration,
    sample_limit: usize,
) -> Scrape {
    let parsed = body.and_then(|text| {
        let options = ParseOptions {
            sample_limit: Some(sample_limit),
        };
        let exp = exposition::parse(text.as_bytes(), &options)
            .map_err(|e| format!("the exposition is invalid: {e}"))?;
        exp.samples
            .into_iter()
            .map(|s| {
                let labels = with_target(&s.labels, target)
                    .map_err(|e| format!("a series cannot be labelled: {e}"))?;
                Ok((labels, s.timestamp.unwrap_or(start_ms), s.value))
            })
            .collect::<Result<Vec<_>, String>>()
    });
    let (mut samples, error) = match parsed {
        Ok(samples) => (samples, None),
        Err(reason) => (Vec::new(), Some(reason)),
    };
    let scraped = samples.len() as u64;
    let up = error.is_none();
    let took_s = took.as_secs_f64();
    for (name, value) in [
        ("up", if up { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", took_s),
        ("scrape_samples_scraped", scraped as f64),
    ] {
        let labels = Labels::new([
            ("__name__", name),
            ("job", target.job),
            ("instance", target.instance),
        ]);
        // Constant, valid names: never an error.
        if let Ok(labels) = labels {
            samples.push((labels, start_ms, value));
        }
    }
    Scrape {
        samples,
        status: MetricsTarget {
            job: target.job.into(),
            instance: target.instance.into(),
            up,
            last_scrape: Some(start_ms),
            last_duration_seconds: Some(took_s),
            samples_scraped: scraped,
            last_error: error,
        },
    }
}

/// `labels` with the target's `job` and `instance`; a sample's own are
/// kept as `exported_job` and `exported_instance` (Prometheus's
/// `honor_labels: false`).
fn with_target(labels: &Labels, target: &Target) -> Result<Labels, gantry_metrics::LabelError> {
    let mut out = labels.clone();
    for (name, value) in [("job", target.job), ("instance", target.instance)] {
        if let Some(own) = labels.get(name) {
            out = out.with(&format!("exported_{name}"), own)?;
        }
        out = out.with(name, value)?;
    }
    Ok(out)
}

/// Decides which failures are logged: the first, a new reason, or the same
/// one again after [`WARN_EVERY`].
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    last: Option<(Instant, String)>,
}

impl WarnLimiter {
    pub(crate) fn should_warn(&mut self, reason: &str, now: Instant) -> bool {
        let due = match &self.last {
            None => true,
            Some((at, last)) => last != reason || now.duration_since(*at) >= WARN_EVERY,
        };
        if due {
            self.last = Some((now, reason.to_string()));
        }
        due
    }

    /// A success: the next failure is logged at once. Whether one was
    /// failing.
    pub(crate) fn recovered(&mut self) -> bool {
        self.last.take().is_some()
    }
}

async fn scrape_loop(
    metrics: Arc<Metrics>,
    proxy: AdminClient,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // A zero period would panic in `interval`.
    let interval = interval.max(Duration::from_millis(1));
    let client = proxy.with_deadline(interval.clamp(Duration::from_secs(1), MAX_SCRAPE_DEADLINE));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrape_warn = WarnLimiter::default();
    let mut store_warn = WarnLimiter::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let start_ms = now_ms();
        let started = Instant::now();
        let body = client.metrics().await.map_err(|e| chain(&e));
        let took = started.elapsed();
        let db = metrics.db.clone();
        let done = tokio::task::spawn_blocking(move || {
            let scrape = scrape_batch(
                &PROXY_TARGET,
                body.as_deref().map_err(Clone::clone),
                start_ms,
                took,
                SAMPLE_LIMIT,
            );
            let appended =
                lock(&db).append_batch(scrape.samples.iter().map(|(l, t, v)| (l, *t, *v)));
            (scrape.status, appended)
        })
        .await;
        let Ok((status, appended)) = done else {
            tracing::warn!("a metrics scrape task failed");
            continue;
        };
        match &status.last_error {
            Some(reason) => {
                if scrape_warn.should_warn(reason, Instant::now()) {
                    tracing::warn!(job = status.job, instance = status.instance, error = %reason, "scrape failed; the target is down");
                }
            }
            None => {
                if scrape_warn.recovered() {
                    tracing::info!(
                        job = status.job,
                        instance = status.instance,
                        "scrape target is up again"
                    );
                }
            }
        }
        match appended {
            Ok(report) if report.refused > 0 => {
                let reason = report
                    .first_refusal
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                if store_warn.should_warn(&reason, Instant::now()) {
                    tracing::warn!(refused = report.refused, first = %reason, "the metrics store refused scraped samples");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let reason = chain(&e);
                if store_warn.should_warn(&reason, Instant::now()) {
                    tracing::warn!(error = %reason, "scraped samples could not be logged to the metrics WAL");
                }
            }
        }
        metrics.set_target(status);
    }
}

/// Where the store lives, for messages.
pub(crate) fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(METRICS_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# TYPE http_requests_total counter\n\
        http_requests_total{route=\"web\",code=\"200\"} 3\n\
        http_requests_total{route=\"web\",code=\"404\",job=\"own\"} 1 1700000000000\n";

    fn find<'a>(s: &'a Scrape, name: &str) -> Vec<&'a (Labels, i64, f64)> {
        s.samples
            .iter()
            .filter(|(l, _, _)| l.metric_name() == Some(name))
            .collect()
    }

    #[test]
    fn a_good_scrape_is_labelled_by_target_with_up_and_its_own_series() {
        let s = scrape_batch(
            &PROXY_TARGET,
            Ok(TEXT),
            5_000,
            Duration::from_millis(250),
            100,
        );
        assert!(s.status.up);
        assert_eq!(s.status.samples_scraped, 2);
        assert_eq!(s.status.last_scrape, Some(5_000));
        assert_eq!(s.status.last_error, None);
        let reqs = find(&s, "http_requests_total");
        assert_eq!(reqs.len(), 2);
        for (l, _, _) in &reqs {
            assert_eq!(l.get("job"), Some("gantry-proxy"));
            assert_eq!(l.get("instance"), Some("proxy"));
        }
        assert_eq!(reqs[0].1, 5_000, "the scrape's time");
        assert_eq!(reqs[1].1, 1_700_000_000_000, "the sample's own time");
        assert_eq!(reqs[1].0.get("exported_job"), Some("own"));
        assert_eq!(find(&s, "up")[0].2, 1.0);
        assert_eq!(find(&s, "scrape_duration_seconds")[0].2, 0.25);
        assert_eq!(find(&s, "scrape_samples_scraped")[0].2, 2.0);
        assert_eq!(s.samples.len(), 5);
    }

    #[test]
    fn a_failed_malformed_or_oversized_scrape_is_up_0_with_the_reason() {
        let down = scrape_batch(
            &PROXY_TARGET,
            Err("cannot reach the proxy's admin socket /x/admin.sock".into()),
            7,
            Duration::ZERO,
            100,
        );
        let malformed = scrape_batch(&PROXY_TARGET, Ok("a{b=\"c\" 1\n"), 7, Duration::ZERO, 100);
        let over = scrape_batch(&PROXY_TARGET, Ok(TEXT), 7, Duration::ZERO, 1);
        for (s, reason) in [
            (&down, "admin.sock"),
            (&malformed, "line 1, column"),
            (&over, "sample_limit"),
        ] {
            assert!(!s.status.up);
            let error = s.status.last_error.as_deref().unwrap();
            assert!(error.contains(reason), "{error}");
            assert_eq!(s.samples.len(), 3, "only up and the scrape's own series");
            assert_eq!(find(s, "up")[0].2, 0.0);
            assert_eq!(find(s, "scrape_samples_scraped")[0].2, 0.0);
        }
    }

    #[test]
    fn the_same_failure_is_logged_once_per_period_and_a_new_one_at_once() {
        let mut w = WarnLimiter::default();
        let t = Instant::now();
        assert!(w.should_warn("down", t));
        assert!(!w.should_warn("down", t + Duration::from_secs(10)));
        assert!(w.should_warn("timeout", t + Duration::from_secs(11)));
        assert!(!w.should_warn("timeout", t + Duration::from_secs(12)));
        assert!(w.should_warn("timeout", t + Duration::from_secs(11) + WARN_EVERY));
        assert!(w.recovered());
        assert!(!w.recovered());
        assert!(w.should_warn("timeout", t + Duration::from_secs(12) + WARN_EVERY));
    }

    #[test]
    fn a_damaged_store_is_an_error_naming_its_directory_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_dir(dir.path());
        let block = store.join("blocks").join("0-7200000-raw");
        std::fs::create_dir_all(&block).unwrap();
        std::fs::write(block.join("meta.json"), "not json").unwrap();
        let err = open(&store).unwrap_err();
        assert!(matches!(err, ServerError::Metrics { .. }), "{err:?}");
        let text = chain(&err);
        assert!(text.contains(&store.display().to_string()), "{text}");
        assert!(text.contains("move it aside"), "{text}");
        assert!(text.contains("0-7200000-raw"), "{text}");
    }

    #[tokio::test]
    async fn the_store_opens_scrapes_a_missing_proxy_as_down_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(false);
        let proxy = AdminClient::new(dir.path().join("no-proxy.sock"));
        let (metrics, running) = start(dir.path(), proxy, Duration::from_millis(10), rx)
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            let s = metrics.status().await.unwrap();
            if s.targets[0].last_scrape.is_some() || Instant::now() > deadline {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(!status.targets[0].up, "{status:?}");
        assert!(
            status.targets[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("no-proxy.sock")
        );
        assert_eq!(status.series, 3, "{status:?}");
        tx.send(true).unwrap();
        running.shutdown().await;
        assert!(store_dir(dir.path()).join("wal").is_dir());
    }
}
