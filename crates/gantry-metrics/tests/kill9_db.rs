//! A kill -9 of a store that cuts, downsamples and deletes blocks as it
//! goes loses at most the samples after the WAL's last sync, and never
//! answers a sample twice.
//!
//! Like `kill9.rs`: the test re-runs its own binary as a child
//! (`db_writer_child`, a no-op unless [`CHILD_DIR`] is set) that opens a
//! [`Db`], appends a known pattern on simulated time (one sample every
//! 200 ms, so two-hour blocks are cut and downsampled within seconds)
//! calling `maintain` as it goes, and prints after each sync how many
//! samples are synced. The parent SIGKILLs it at a random moment, opens
//! the store and checks: no crash leftovers survive the open; every
//! sample up to the last reported sync is counted exactly once across raw
//! blocks, downsampled blocks and the head (the hourly counts add up);
//! what is still raw is a gapless, bit-exact run of the pattern ending at
//! the newest sample. The next child goes on from there.

use gantry_metrics::{Db, DbOptions, Kind, Labels, Resolution, Syncer, WalOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "GANTRY_METRICS_KILL9_DB_DIR";
/// `tick` or `syncer`.
const CHILD_MODE: &str = "GANTRY_METRICS_KILL9_DB_MODE";
const SEED: &str = "GANTRY_METRICS_KILL9_DB_SEED";

const SERIES: u64 = 5;
const STEP_MS: i64 = 200;
const HOUR: i64 = 3_600_000;

fn options() -> DbOptions {
    DbOptions {
        wal: WalOptions {
            segment_size: 64 << 10,
            sync_interval: Duration::from_millis(10),
        },
        block_range: 2 * HOUR,
        raw_retention: 4 * HOUR,
        minute_retention: 8 * HOUR,
        hour_block_range: 4 * HOUR,
        retention: None,
        max_bytes: None,
    }
}

fn series(s: u64) -> Labels {
    Labels::new([("__name__", "pattern"), ("s", &s.to_string())]).expect("labels")
}

/// Sample `i`: series `i % SERIES`, time `200 i` ms, a value whose bits
/// vary everywhere.
fn sample(i: u64) -> (u64, i64, u64) {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    let mut bits = z ^ (z >> 31);
    if bits == gantry_metrics::STALE_NAN_BITS {
        bits ^= 1;
    }
    (i % SERIES, i as i64 * STEP_MS, bits)
}

/// The index of the next sample to append to a store just opened.
fn next_index(db: &Db) -> u64 {
    let after_head = db.head().stats().max_time.map_or(0, |t| t / STEP_MS + 1);
    let after_blocks = db.min_valid_time().max(0) / STEP_MS;
    after_head.max(after_blocks) as u64
}

// === the child ===

#[test]
fn db_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let syncer = std::env::var(CHILD_MODE).is_ok_and(|m| m == "syncer");
    let (db, _) = Db::open(Path::new(&dir), options()).expect("child: open");
    let start = next_index(&db);
    println!("kill9-child start {start}");
    let labels: Vec<Labels> = (0..SERIES).map(series).collect();
    let db = Arc::new(Mutex::new(db));
    let _syncer = syncer.then(|| Syncer::start(db.clone()).expect("child: syncer"));
    let mut rng = fastrand::Rng::with_seed(start);
    let mut next = start;
    let mut reported = 0;
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let batch = rng.u64(1..400);
        let samples: Vec<_> = (next..next + batch)
            .map(|i| {
                let (s, t, bits) = sample(i);
                (&labels[s as usize], t, f64::from_bits(bits))
            })
            .collect();
        next += batch;
        let mut db = db.lock().expect("child: lock");
        let report = db.append_batch(samples).expect("child: append");
        assert_eq!(report.refused, 0, "child: {:?}", report.first_refusal);
        if !syncer {
            db.tsdb_mut().tick(Instant::now()).expect("child: sync");
        }
        db.maintain(sample(next - 1).1).expect("child: maintain");
        let synced = db.tsdb_mut().wal().synced_samples();
        drop(db);
        if synced > reported {
            reported = synced;
            println!("kill9-child synced {}", start + synced);
        }
        std::thread::sleep(Duration::from_micros(rng.u64(0..50)));
    }
}

// === the parent ===

fn read(line: &str, start: &mut Option<u64>, last: &mut u64) -> bool {
    let Some((_, said)) = line.split_once("kill9-child ") else {
        return false;
    };
    if let Some(n) = said.strip_prefix("start ") {
        *start = Some(n.parse().expect("start count"));
    } else if let Some(n) = said.strip_prefix("synced ") {
        let n: u64 = n.parse().expect("synced count");
        assert!(n >= *last, "synced counts go up: {n} after {last}");
        *last = n;
        return true;
    }
    false
}

/// Runs a child until it reported `syncs` syncs, lingers, kills it;
/// returns its start and its last synced count.
fn run_child(dir: &Path, mode: &str, syncs: usize, linger: Duration) -> (u64, u64) {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "db_writer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut start, mut last_synced, mut seen) = (None, 0, 0);
    for line in lines.by_ref() {
        if read(&line.expect("child stdout"), &mut start, &mut last_synced) {
            seen += 1;
            if seen == syncs {
                break;
            }
        }
    }
    assert_eq!(seen, syncs, "the child ended before {syncs} syncs");
    std::thread::sleep(linger);
    child.kill().expect("SIGKILL the child");
    for line in lines {
        let Ok(line) = line else { break };
        read(&line, &mut start, &mut last_synced);
    }
    let status = child.wait().expect("wait for the child");
    assert_eq!(status.signal(), Some(9), "the child was killed: {status}");
    (start.expect("the child printed its start"), last_synced)
}

#[test]
fn a_kill_9_of_a_store_with_blocks_loses_nothing_synced_and_doubles_nothing() {
    let seed = std::env::var(SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{SEED}={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("metrics");
    let mut have = 0;
    for round in 0..6 {
        let mode = if round % 2 == 0 { "tick" } else { "syncer" };
        let syncs = rng.usize(20..120);
        let linger = Duration::from_micros(rng.u64(0..20_000));
        let (start, last_synced) = run_child(&dir, mode, syncs, linger);
        assert_eq!(start, have, "round {round}: the child goes on after all");

        let (db, report) = Db::open(&dir, options()).expect("open after the kill");
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("blocks"))
            .expect("ls blocks")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
        let n = next_index(&db);
        assert!(
            n >= last_synced,
            "round {round} ({mode}, seed {seed}): {n} samples after the kill, {last_synced} were synced"
        );
        // Every sample once, whatever holds it now.
        let counted: f64 = db
            .select_aggregate(&[], i64::MIN, i64::MAX, Resolution::Hour, Kind::Count)
            .expect("count")
            .iter()
            .flat_map(|s| s.samples.iter().map(|p| p.1))
            .sum();
        assert_eq!(counted, n as f64, "round {round} (seed {seed}): counts");
        // The raw part: the newest samples, gapless and bit-exact.
        let mut raw: Vec<(u64, i64, u64)> = Vec::new();
        for s in db.select(&[], i64::MIN, i64::MAX).expect("select") {
            let id: u64 = s.labels.get("s").expect("s").parse().expect("number");
            raw.extend(s.samples.iter().map(|&(t, v)| (id, t, v.to_bits())));
        }
        raw.sort_by_key(|r| r.1);
        let first = n - raw.len() as u64;
        for (k, got) in raw.iter().enumerate() {
            assert_eq!(
                *got,
                sample(first + k as u64),
                "round {round}: raw sample {k}"
            );
        }
        let stats = db.stats();
        eprintln!(
            "round {round} ({mode}): {syncs} syncs, last synced {last_synced}, {n} samples, \
             blocks raw/1m/1h {:?}, head from {:?}, removed at open {:?}",
            stats.blocks, stats.head.min_time, report.removed_partial
        );
        have = n;
    }
}
