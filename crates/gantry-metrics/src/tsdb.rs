//! The store as a server runs it: the head and its WAL together, and a
//! background thread that syncs the WAL on time.
//!
//! [`Tsdb::append_batch`] appends to the head, then logs what the head
//! took; [`Tsdb::tick`] syncs when due. A server wraps the `Tsdb` in an
//! `Arc<Mutex<_>>` and starts a [`Syncer`], which wakes at each sync
//! deadline, writes the buffer out under the lock and runs the fdatasync
//! without it, so appends and queries never wait for the disk. Dropping
//! the `Syncer` stops it after a last sync, so a clean shutdown loses
//! nothing.

use crate::head::{AppendError, Head};
use crate::labels::Labels;
use crate::wal::{OpenReport, TruncateReport, Wal, WalError, WalOptions};
use gantry_common::lock;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The head with its write-ahead log.
#[derive(Debug)]
pub struct Tsdb {
    head: Head,
    wal: Wal,
}

/// What [`Tsdb::append_batch`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub appended: usize,
    /// Samples the head refused (out of order, conflicting duplicates).
    pub refused: usize,
    pub first_refusal: Option<AppendError>,
}

impl Tsdb {
    /// Opens the store whose WAL is in `wal_dir`, replaying it.
    pub fn open(
        wal_dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(Tsdb, OpenReport), WalError> {
        let mut head = Head::new();
        let (wal, report) = Wal::open(wal_dir, options, &mut head)?;
        Ok((Tsdb { head, wal }, report))
    }

    pub fn head(&self) -> &Head {
        &self.head
    }

    pub(crate) fn head_mut(&mut self) -> &mut Head {
        &mut self.head
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    pub fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }

    /// Appends samples to the head and logs the ones it took. Refused
    /// samples are counted, not errors; an error is the WAL's, and then
    /// the samples of this batch may be in the head but not logged.
    pub fn append_batch<'a>(
        &mut self,
        samples: impl IntoIterator<Item = (&'a Labels, i64, f64)>,
    ) -> Result<BatchReport, WalError> {
        let mut report = BatchReport::default();
        let mut taken = Vec::new();
        for (labels, t, v) in samples {
            let before = self.head.sample_count();
            match self.head.append(labels, t, v) {
                // A repeated sample is accepted and ignored: not logged.
                Ok(id) if self.head.sample_count() > before => {
                    taken.push((id, t, v));
                    report.appended += 1;
                }
                Ok(_) => report.appended += 1,
                Err(e) => {
                    report.refused += 1;
                    report.first_refusal.get_or_insert(e);
                }
            }
        }
        self.wal.log_samples(&self.head, &taken)?;
        Ok(report)
    }

    /// Syncs the WAL if due at `now` (for a caller without a [`Syncer`]).
    pub fn tick(&mut self, now: Instant) -> Result<bool, WalError> {
        self.wal.tick(now)
    }

    /// See [`Wal::truncate_before`].
    pub fn truncate_wal_before(&mut self, t: i64) -> Result<TruncateReport, WalError> {
        self.wal.truncate_before(t, &self.head)
    }
}

/// A store whose WAL a [`Syncer`] syncs: [`Tsdb`], or [`crate::Db`],
/// which holds one.
pub trait WalOwner: Send + 'static {
    fn wal_mut(&mut self) -> &mut Wal;
}

impl WalOwner for Tsdb {
    fn wal_mut(&mut self) -> &mut Wal {
        &mut self.wal
    }
}

/// The background thread that syncs a shared store's WAL at its
/// deadlines. Stops, after a last sync, when dropped.
#[derive(Debug)]
pub struct Syncer {
    shared: Arc<SyncerShared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct SyncerShared {
    stop: Mutex<bool>,
    wake: Condvar,
    /// The last sync error, kept until taken.
    error: Mutex<Option<WalError>>,
}

impl Syncer {
    pub fn start<T: WalOwner>(db: Arc<Mutex<T>>) -> std::io::Result<Syncer> {
        let shared = Arc::new(SyncerShared::default());
        let thread = std::thread::Builder::new()
            .name("metrics-wal-sync".into())
            .spawn({
                let shared = shared.clone();
                move || run(&db, &shared)
            })?;
        Ok(Syncer {
            shared,
            thread: Some(thread),
        })
    }

    /// The last sync error since the previous call, if any. The thread
    /// keeps trying at each deadline.
    pub fn take_error(&self) -> Option<WalError> {
        lock(&self.shared.error).take()
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Syncs if due (or `force`d); returns when to look again.
fn sync_once<T: WalOwner>(db: &Mutex<T>, force: bool) -> Result<Instant, WalError> {
    let now = Instant::now();
    let pending = {
        let mut db = lock(db);
        let wal = db.wal_mut();
        if force || wal.sync_due(now) {
            wal.begin_sync(now)?
        } else {
            None
        }
    };
    if let Some(pending) = pending {
        let outcome = pending.run();
        lock(db).wal_mut().end_sync(outcome)?;
    }
    let mut db = lock(db);
    let wal = db.wal_mut();
    let interval = wal.options().sync_interval;
    // Idle, look again within one interval: a sample logged while nothing
    // was dirty is due at once, so it waits at most that long.
    Ok(match wal.sync_deadline() {
        Some(deadline) if wal.is_dirty() => deadline,
        _ => Instant::now() + interval,
    })
}

fn run<T: WalOwner>(db: &Mutex<T>, shared: &SyncerShared) {
    let interval = lock(db).wal_mut().options().sync_interval;
    loop {
        let next = sync_once(db, false).unwrap_or_else(|e| {
            *lock(&shared.error) = Some(e);
            Instant::now() + interval
        });
        let wait = next
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), interval);
        let stop = lock(&shared.stop);
        let (stop, _) = shared
            .wake
            .wait_timeout_while(stop, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            drop(stop);
            if let Err(e) = sync_once(db, true) {
                *lock(&shared.error) = Some(e);
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Matcher;

    fn labels(job: &str) -> Labels {
        Labels::new([("__name__", "up"), ("job", job)]).expect("labels")
    }

    fn options() -> WalOptions {
        WalOptions {
            segment_size: 4096,
            sync_interval: Duration::from_millis(20),
        }
    }

    #[test]
    fn a_batch_goes_to_the_head_and_the_log_and_refusals_are_counted() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, _) = Tsdb::open(tmp.path(), options()).expect("open");
        let (a, b) = (labels("a"), labels("b"));
        let report = db
            .append_batch([(&a, 10, 1.0), (&b, 10, 2.0), (&a, 20, 3.0)])
            .expect("append");
        assert_eq!(report.appended, 3);
        // Out of order, a repeat (accepted, not logged twice), a conflict.
        let report = db
            .append_batch([(&a, 15, 9.0), (&a, 20, 3.0), (&b, 10, 5.0)])
            .expect("append");
        assert_eq!((report.appended, report.refused), (1, 2));
        assert!(matches!(
            report.first_refusal,
            Some(AppendError::OutOfOrder { t: 15, .. })
        ));
        assert_eq!(db.wal().logged_samples(), 3);
        drop(db);
        let (db, report) = Tsdb::open(tmp.path(), options()).expect("reopen");
        assert_eq!((report.samples, report.refused_samples), (3, 0));
        let got: Vec<_> = db
            .head()
            .select(&[Matcher::equal("job", "a")], 0, 100)
            .flat_map(|s| s.samples().map(|r| r.expect("sample")).collect::<Vec<_>>())
            .collect();
        assert_eq!(got, [(10, 1.0), (20, 3.0)]);
    }

    #[test]
    fn the_syncer_syncs_in_the_background_and_once_more_when_dropped() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (db, _) = Tsdb::open(tmp.path(), options()).expect("open");
        let db = Arc::new(Mutex::new(db));
        let syncer = Syncer::start(db.clone()).expect("start");
        let a = labels("a");
        for t in 0..50 {
            lock(&db).append_batch([(&a, t, t as f64)]).expect("append");
        }
        // Eventually synced, without a caller's tick (no wall-time bound).
        let give_up = Instant::now() + Duration::from_secs(30);
        while lock(&db).wal().synced_samples() < 50 {
            assert!(Instant::now() < give_up, "never synced");
            std::thread::sleep(Duration::from_millis(5));
        }
        lock(&db).append_batch([(&a, 100, 1.0)]).expect("append");
        drop(syncer);
        assert_eq!(lock(&db).wal().synced_samples(), 51);
        assert!(!lock(&db).wal().is_dirty());
    }
}
