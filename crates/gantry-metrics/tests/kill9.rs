//! A kill -9 loses at most the samples after the WAL's last sync.
//!
//! The test re-runs its own binary as a child (`wal_writer_child`, which
//! does nothing unless [`CHILD_DIR`] is set) that opens the store, appends
//! samples of a known pattern as fast as it can (writing some unsynced,
//! which a kill -9 does not lose either) and prints, after each sync, how
//! many samples are synced. The parent SIGKILLs it at a random
//! moment after some syncs, opens the WAL itself and checks that every
//! sample up to the last reported sync is there, bit-exact, that whatever
//! follows is a clean prefix of the pattern, and that the log's only
//! damage is a torn tail. The next round's child goes on appending after
//! that tail. Nothing here measures wall time.
//!
//! (On Linux a kill does not interrupt a write to a regular file halfway,
//! so torn tails come from power cuts, not kills; the unit tests in
//! `wal::files` cut segments at every byte for those.)

use gantry_metrics::{Labels, Matcher, Syncer, Tsdb, WalOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The WAL directory, for the child.
const CHILD_DIR: &str = "GANTRY_METRICS_KILL9_DIR";
/// `tick` (the child syncs with its own ticks) or `syncer` (the
/// background [`Syncer`]).
const CHILD_MODE: &str = "GANTRY_METRICS_KILL9_MODE";
/// Seeds the parent's random kill moments, to replay a failure.
const SEED: &str = "GANTRY_METRICS_KILL9_SEED";

const SERIES: u64 = 5;

fn options() -> WalOptions {
    WalOptions {
        // Small, so rounds cross segment boundaries.
        segment_size: 16 << 10,
        sync_interval: Duration::from_millis(10),
    }
}

fn series(s: u64) -> Labels {
    Labels::new([("__name__", "pattern"), ("s", &s.to_string())]).expect("labels")
}

/// Sample `i`: series `i % SERIES`, time `10 i` ms, a value whose bits
/// vary everywhere (NaN payloads and infinities included).
fn sample(i: u64) -> (u64, i64, u64) {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (i % SERIES, i as i64 * 10, z ^ (z >> 31))
}

// === the child ===

#[test]
fn wal_writer_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let syncer = std::env::var(CHILD_MODE).is_ok_and(|m| m == "syncer");
    let (db, _) = Tsdb::open(Path::new(&dir), options()).expect("child: open");
    let start = db.head().sample_count();
    println!("kill9-child start {start}");
    let labels: Vec<Labels> = (0..SERIES).map(series).collect();
    let db = Arc::new(Mutex::new(db));
    let _syncer = syncer.then(|| Syncer::start(db.clone()).expect("child: syncer"));
    let mut rng = fastrand::Rng::with_seed(start);
    let mut next = start;
    let mut reported = 0;
    // A child the parent forgot ends by itself.
    let give_up = Instant::now() + Duration::from_secs(120);
    while Instant::now() < give_up {
        let batch = rng.u64(1..40);
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
            db.tick(Instant::now()).expect("child: sync");
        }
        // Now and then the buffer goes to the file unsynced: it survives
        // the kill (the page cache outlives the process), and a kill in
        // the middle of such a write leaves a torn tail.
        if rng.u8(..3) == 0 {
            db.wal_mut().flush().expect("child: flush");
        }
        let synced = db.wal().synced_samples();
        drop(db);
        if synced > reported {
            reported = synced;
            println!("kill9-child synced {}", start + synced);
        }
        std::thread::sleep(Duration::from_micros(rng.u64(0..200)));
    }
}

// === the parent ===

/// Every sample in the store as (series, time, bits), in time order.
fn contents(db: &Tsdb) -> Vec<(u64, i64, u64)> {
    let mut all = Vec::new();
    for s in 0..SERIES {
        let matchers = [Matcher::equal("s", s.to_string())];
        for selected in db.head().select(&matchers, i64::MIN, i64::MAX) {
            for r in selected.samples() {
                let (t, v) = r.expect("sample");
                all.push((s, t, v.to_bits()));
            }
        }
    }
    all.sort_by_key(|&(_, t, _)| t);
    all
}

/// Reads one line of the child's; whether it reported a sync. libtest
/// may print the test's name on the same line, before the child's words.
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

struct Round {
    start: u64,
    last_synced: u64,
}

/// Runs a child until it has reported `syncs` syncs, waits a little more,
/// kills it and reads what it printed to the end.
fn run_child(dir: &Path, mode: &str, syncs: usize, linger: Duration) -> Round {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "wal_writer_child",
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
    let mut start = None;
    let mut last_synced = 0;
    let mut seen = 0;
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
    // What it printed before dying counts too: each line followed a sync.
    for line in lines {
        let Ok(line) = line else { break };
        read(&line, &mut start, &mut last_synced);
    }
    let status = child.wait().expect("wait for the child");
    assert_eq!(status.signal(), Some(9), "the child was killed: {status}");
    Round {
        start: start.expect("the child printed its start"),
        last_synced,
    }
}

#[test]
fn a_kill_9_loses_at_most_the_samples_after_the_last_sync() {
    let seed = std::env::var(SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("{SEED}={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("metrics/wal");
    let mut have = 0;
    for round in 0..8 {
        let mode = if round % 2 == 0 { "tick" } else { "syncer" };
        let syncs = rng.usize(2..8);
        let linger = Duration::from_micros(rng.u64(0..20_000));
        let child = run_child(&dir, mode, syncs, linger);
        assert_eq!(child.start, have, "round {round}: the child replayed all");

        let (db, report) = Tsdb::open(&dir, options()).expect("open after the kill");
        if let Some(repair) = &report.tail_repair {
            assert!(
                repair.stop.is_torn_tail(),
                "round {round}: only a torn tail, not {repair:?}"
            );
        }
        assert_eq!(report.refused_samples, 0, "round {round}");
        assert_eq!(report.unknown_series_samples, 0, "round {round}");
        let got = contents(&db);
        let n = got.len() as u64;
        assert!(
            n >= child.last_synced,
            "round {round} ({mode}, seed {seed}): {n} samples after the kill, \
             {} were synced",
            child.last_synced
        );
        for (i, s) in got.iter().enumerate() {
            assert_eq!(*s, sample(i as u64), "round {round}: sample {i}");
        }
        eprintln!(
            "round {round} ({mode}): {syncs} syncs seen, last synced {}, {n} replayed, \
             {} segments, tail repaired: {}",
            child.last_synced,
            db.wal().segment_paths().count(),
            report.tail_repair.is_some()
        );
        have = n;
    }
}
