//! The WAL's segment files: open and replay, append, sync, truncate.

use super::sync::SyncPolicy;
use super::{Record, WalReader, WalStop, encode};
use crate::head::Head;
use crate::index::SeriesId;
use crate::labels::Labels;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Digits in a segment's file name (`00000001`).
pub const SEGMENT_DIGITS: usize = 8;

/// Buffered bytes past which an append writes them to the file (no sync),
/// so the buffer stays small between syncs.
const FLUSH_AT: usize = 1 << 20;

/// How the WAL cuts and syncs its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started when the next record
    /// would take it past this many bytes (32 MiB). A record longer than
    /// this gets a segment of its own.
    pub segment_size: u64,
    /// At most one sync per this interval (1 s); a crash loses at most the
    /// samples logged in the last one.
    pub sync_interval: Duration,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size: 32 << 20,
            sync_interval: Duration::from_secs(1),
        }
    }
}

/// A WAL error: the disk refused, or the log is damaged. Messages name the
/// file; the I/O error is the source.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot {op} `{}`", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "WAL segment `{}` is damaged at byte {offset}, before newer segments; \
         move it out of the WAL directory to start with the segments after it",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        #[source]
        stop: WalStop,
    },
    #[error("series {0} is not in the head, so the WAL cannot log its labels")]
    UnknownSeries(u64),
    /// A sync failed before: the kernel may have dropped the unsynced
    /// pages, so a later sync that succeeds would not mean they are on
    /// disk. The WAL refuses everything until it is opened again.
    #[error(
        "an earlier sync of WAL segment `{}` failed, so what was logged since may be lost; \
         the WAL takes nothing more until it is opened again",
        path.display()
    )]
    SyncFailed { path: PathBuf },
}

impl WalError {
    /// Whether the disk is full (ENOSPC), for a message that says so.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.raw_os_error() == Some(28))
    }

    /// The file or directory at fault, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            WalError::Io { path, .. }
            | WalError::Corrupt { path, .. }
            | WalError::SyncFailed { path } => Some(path),
            WalError::UnknownSeries(_) => None,
        }
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The last segment cut back to its last whole record on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRepair {
    pub path: PathBuf,
    /// The length it had and the length it has now.
    pub len: u64,
    pub valid_len: u64,
    pub stop: WalStop,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub segments: usize,
    pub records: usize,
    pub series: usize,
    pub samples: usize,
    /// Samples the head refused (out of order, conflicting duplicates).
    pub refused_samples: usize,
    /// Samples whose series record is nowhere in the log.
    pub unknown_series_samples: usize,
    /// The crash-cut tail of the last segment, if there was one.
    pub tail_repair: Option<TailRepair>,
}

/// What [`Wal::truncate_before`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TruncateReport {
    /// The deleted segment files, oldest first.
    pub removed: Vec<PathBuf>,
    /// Series whose records were in them, logged again.
    pub relogged_series: usize,
}

#[derive(Debug, Clone)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The newest sample timestamp in it.
    max_time: Option<i64>,
}

/// Where a head series' latest series record is.
#[derive(Debug, Clone, Copy)]
struct SeriesRef {
    wal_id: u64,
    seq: u64,
}

/// A sync begun by [`Wal::begin_sync`]: the data is in the file, the
/// fdatasync is still to do. Runs without the [`Wal`], so its owner's lock
/// need not be held through the disk's latency.
#[derive(Debug)]
pub struct PendingSync {
    file: File,
    path: PathBuf,
    records: u64,
    samples: u64,
    began: Instant,
}

/// A finished sync, for [`Wal::end_sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncDone {
    records: u64,
    samples: u64,
    pub began: Instant,
}

impl PendingSync {
    pub fn run(self) -> Result<SyncDone, WalError> {
        self.file
            .sync_data()
            .map_err(io_err("sync WAL segment", &self.path))?;
        Ok(SyncDone {
            records: self.records,
            samples: self.samples,
            began: self.began,
        })
    }
}

/// The write-ahead log in a directory of segment files (see the module
/// docs).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// In order; the last one is appended to. Never empty.
    segments: Vec<Segment>,
    file: File,
    /// Bytes in the current segment's file.
    written: u64,
    /// Encoded records not yet written to the file.
    buf: Vec<u8>,
    /// By head series id.
    series: Vec<Option<SeriesRef>>,
    next_wal_id: u64,
    /// Counted since open: records and samples logged, written to the
    /// file, and in a finished sync.
    logged: (u64, u64),
    written_counts: (u64, u64),
    synced: (u64, u64),
    /// Records in the last sync begun.
    sync_started: u64,
    policy: SyncPolicy,
    /// The segment whose sync failed, after which nothing is taken.
    sync_failed: Option<PathBuf>,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, replaying it into `head`,
    /// which should be empty. See the module docs for what happens to a
    /// damaged segment.
    pub fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
        head: &mut Head,
    ) -> Result<(Wal, OpenReport), WalError> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir).map_err(io_err("create WAL directory", &dir))?;
        // The directory's own entry, should it be new.
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let mut segments = list_segments(&dir)?;
        let mut report = OpenReport {
            segments: segments.len(),
            ..OpenReport::default()
        };

        // Pass 1: check every frame, collect series, repair the tail.
        let mut by_wal_id: HashMap<u64, (SeriesId, u64)> = HashMap::new();
        let mut next_wal_id = 0;
        let last = segments.len().saturating_sub(1);
        for (i, seg) in segments.iter().enumerate() {
            let bytes = read_segment(&seg.path)?;
            let mut reader = WalReader::new(&bytes);
            for record in reader.by_ref() {
                report.records += 1;
                if let Record::Series(series) = record {
                    for (wal_id, labels) in series {
                        let id = head.series_id(&labels);
                        if by_wal_id.insert(wal_id, (id, seg.seq)).is_none() {
                            report.series += 1;
                        }
                        next_wal_id = next_wal_id.max(wal_id + 1);
                    }
                }
            }
            if let Some(stop) = reader.stop().cloned() {
                let valid_len = reader.valid_len() as u64;
                if i != last {
                    return Err(WalError::Corrupt {
                        path: seg.path.clone(),
                        offset: valid_len,
                        stop,
                    });
                }
                cut_tail(&seg.path, valid_len)?;
                report.tail_repair = Some(TailRepair {
                    path: seg.path.clone(),
                    len: bytes.len() as u64,
                    valid_len,
                    stop,
                });
            }
        }

        // Pass 2: the samples, now that every series is known.
        for seg in &mut segments {
            let bytes = read_segment(&seg.path)?;
            for record in WalReader::new(&bytes) {
                let Record::Samples(samples) = record else {
                    continue;
                };
                for (wal_id, t, v) in samples {
                    seg.max_time = Some(seg.max_time.map_or(t, |m| m.max(t)));
                    let Some(&(id, _)) = by_wal_id.get(&wal_id) else {
                        report.unknown_series_samples += 1;
                        continue;
                    };
                    match head.append_id(id, t, v) {
                        Ok(()) => report.samples += 1,
                        Err(_) => report.refused_samples += 1,
                    }
                }
            }
        }

        let mut series = Vec::new();
        for (wal_id, (id, seq)) in by_wal_id {
            let Ok(i) = usize::try_from(id.0) else {
                continue;
            };
            if series.len() <= i {
                series.resize(i + 1, None);
            }
            // The latest record of a series re-logged under its old id.
            if series[i].is_none_or(|r: SeriesRef| r.seq <= seq) {
                series[i] = Some(SeriesRef { wal_id, seq });
            }
        }

        if segments.is_empty() {
            segments.push(create_segment(&dir, 1)?);
        }
        let current = segments.last().map(|s| s.path.clone()).unwrap_or_default();
        let file = OpenOptions::new()
            .append(true)
            .open(&current)
            .map_err(io_err("open WAL segment", &current))?;
        let written = file
            .metadata()
            .map_err(io_err("read the size of WAL segment", &current))?
            .len();
        let wal = Wal {
            dir,
            policy: SyncPolicy::new(options.sync_interval),
            options,
            segments,
            file,
            written,
            buf: Vec::new(),
            series,
            next_wal_id,
            logged: (0, 0),
            written_counts: (0, 0),
            synced: (0, 0),
            sync_started: 0,
            sync_failed: None,
        };
        Ok((wal, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &WalOptions {
        &self.options
    }

    /// The segment files, oldest first; the last one is appended to.
    pub fn segment_paths(&self) -> impl Iterator<Item = &Path> {
        self.segments.iter().map(|s| s.path.as_path())
    }

    /// Samples logged since open.
    pub fn logged_samples(&self) -> u64 {
        self.logged.1
    }

    /// Samples logged since open that a finished sync made durable.
    pub fn synced_samples(&self) -> u64 {
        self.synced.1
    }

    /// Whether something logged is not yet in a sync.
    pub fn is_dirty(&self) -> bool {
        self.logged.0 > self.sync_started
    }

    /// Logs samples of series in `head` (their ids from it); a series the
    /// WAL has not logged yet gets a series record first. The records are
    /// buffered: durable after the next sync.
    pub fn log_samples(
        &mut self,
        head: &Head,
        samples: &[(SeriesId, i64, f64)],
    ) -> Result<(), WalError> {
        if samples.is_empty() {
            return Ok(());
        }
        let mut new_series = Vec::new();
        for &(id, _, _) in samples {
            if self.series_ref(id).is_some() || new_series.iter().any(|(i, _)| *i == id) {
                continue;
            }
            let labels = head
                .index()
                .labels(id)
                .ok_or(WalError::UnknownSeries(id.0))?;
            new_series.push((id, labels.clone()));
        }
        if !new_series.is_empty() {
            let record = new_series
                .iter()
                .enumerate()
                .map(|(k, (_, labels))| (self.next_wal_id + k as u64, labels.clone()))
                .collect();
            let seq = self.log(&Record::Series(record), 0)?;
            for (id, _) in new_series {
                let wal_id = self.next_wal_id;
                self.next_wal_id += 1;
                self.set_series_ref(id, SeriesRef { wal_id, seq });
            }
        }
        let record = samples
            .iter()
            .filter_map(|&(id, t, v)| Some((self.series_ref(id)?.wal_id, t, v)))
            .collect();
        self.log(&Record::Samples(record), samples.len() as u64)?;
        let max = samples.iter().map(|s| s.1).max();
        if let Some(seg) = self.segments.last_mut() {
            seg.max_time = seg.max_time.max(max);
        }
        Ok(())
    }

    fn series_ref(&self, id: SeriesId) -> Option<SeriesRef> {
        let i = usize::try_from(id.0).ok()?;
        self.series.get(i).copied().flatten()
    }

    fn set_series_ref(&mut self, id: SeriesId, r: SeriesRef) {
        let Ok(i) = usize::try_from(id.0) else {
            return;
        };
        if self.series.len() <= i {
            self.series.resize(i + 1, None);
        }
        self.series[i] = Some(r);
    }

    /// Buffers one record, starting a new segment first if it would not
    /// fit; returns the segment it goes to.
    fn log(&mut self, record: &Record, samples: u64) -> Result<u64, WalError> {
        self.check_sync_failed()?;
        let start = self.buf.len();
        encode(record, &mut self.buf);
        let size = self.written + self.buf.len() as u64;
        if self.written + start as u64 > 0 && size > self.options.segment_size {
            let rec = self.buf.split_off(start);
            self.rotate()?;
            self.buf = rec;
        }
        self.logged.0 += 1;
        self.logged.1 += samples;
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(self.current().seq)
    }

    fn current(&self) -> &Segment {
        // `segments` is never empty.
        &self.segments[self.segments.len() - 1]
    }

    fn check_sync_failed(&self) -> Result<(), WalError> {
        match &self.sync_failed {
            Some(path) => Err(WalError::SyncFailed { path: path.clone() }),
            None => Ok(()),
        }
    }

    /// Flushes and syncs the current segment in place.
    fn sync_current(&mut self) -> Result<(), WalError> {
        self.check_sync_failed()?;
        self.flush()?;
        let path = self.current().path.clone();
        if let Err(e) = self.file.sync_data() {
            self.sync_failed = Some(path.clone());
            return Err(io_err("sync WAL segment", &path)(e));
        }
        self.synced = self.written_counts;
        Ok(())
    }

    /// Syncs the full segment and starts the next one.
    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync_current()?;
        let next = create_segment(&self.dir, self.current().seq + 1)?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&next.path)
            .map_err(io_err("open WAL segment", &next.path))?;
        self.segments.push(next);
        self.written = 0;
        Ok(())
    }

    /// Writes the buffered records to the current segment (no sync): they
    /// survive a kill -9 from here, not yet a power cut.
    pub fn flush(&mut self) -> Result<(), WalError> {
        if !self.buf.is_empty() {
            let path = &self.segments[self.segments.len() - 1].path;
            if let Err(e) = self.file.write_all(&self.buf) {
                // A part may be in the file: cut it, so a retry does not
                // leave a torn record in the middle of the segment.
                let _ = self.file.set_len(self.written);
                return Err(io_err("write WAL segment", path)(e));
            }
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        self.written_counts = self.logged;
        Ok(())
    }

    /// Writes the buffer out and returns the sync to run, or `None` when
    /// everything logged is already in a sync.
    pub fn begin_sync(&mut self, now: Instant) -> Result<Option<PendingSync>, WalError> {
        self.check_sync_failed()?;
        if !self.is_dirty() {
            return Ok(None);
        }
        self.flush()?;
        let path = self.current().path.clone();
        let file = self
            .file
            .try_clone()
            .map_err(io_err("open WAL segment", &path))?;
        self.policy.began(now);
        self.sync_started = self.logged.0;
        Ok(Some(PendingSync {
            file,
            path,
            records: self.written_counts.0,
            samples: self.written_counts.1,
            began: now,
        }))
    }

    /// Records how a sync from [`Wal::begin_sync`] ended. A failed one
    /// stops the WAL ([`WalError::SyncFailed`] from then on), since the
    /// kernel may have dropped the pages it could not write.
    pub fn end_sync(&mut self, outcome: Result<SyncDone, WalError>) -> Result<(), WalError> {
        match outcome {
            Ok(done) => {
                self.synced.0 = self.synced.0.max(done.records);
                self.synced.1 = self.synced.1.max(done.samples);
                Ok(())
            }
            Err(e) => {
                let path = e.path().unwrap_or(&self.dir).to_owned();
                self.sync_failed.get_or_insert(path);
                Err(e)
            }
        }
    }

    /// Syncs now, whatever the policy says; returns whether there was
    /// anything to sync.
    pub fn sync(&mut self, now: Instant) -> Result<bool, WalError> {
        match self.begin_sync(now)? {
            Some(pending) => {
                self.end_sync(pending.run())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Syncs if the policy says it is due at `now`; returns whether it did.
    pub fn tick(&mut self, now: Instant) -> Result<bool, WalError> {
        if self.sync_due(now) {
            self.sync(now)
        } else {
            Ok(false)
        }
    }

    /// Whether a sync is due at `now`.
    pub fn sync_due(&self, now: Instant) -> bool {
        self.policy.due(now, self.is_dirty())
    }

    /// When the next sync is due if there is unsynced data then (`None`:
    /// at once).
    pub fn sync_deadline(&self) -> Option<Instant> {
        self.policy.deadline()
    }

    /// Deletes the oldest segments whose samples are all older than `t`
    /// (ms), never the current one, after logging again the series records
    /// they hold for the series of `head` and syncing.
    pub fn truncate_before(&mut self, t: i64, head: &Head) -> Result<TruncateReport, WalError> {
        self.check_sync_failed()?;
        let old = self
            .segments
            .iter()
            .take(self.segments.len() - 1)
            .take_while(|s| s.max_time.is_none_or(|m| m < t))
            .count();
        let mut report = TruncateReport::default();
        if old == 0 {
            return Ok(report);
        }
        let last_old = self.segments[old - 1].seq;
        let relog: Vec<(usize, u64, Labels)> = self
            .series
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = (*r)?;
                let labels = head.index().labels(SeriesId(i as u64))?;
                (r.seq <= last_old).then(|| (i, r.wal_id, labels.clone()))
            })
            .collect();
        if !relog.is_empty() {
            let record = relog.iter().map(|(_, w, l)| (*w, l.clone())).collect();
            let seq = self.log(&Record::Series(record), 0)?;
            for (i, wal_id, _) in &relog {
                self.series[*i] = Some(SeriesRef {
                    wal_id: *wal_id,
                    seq,
                });
            }
            report.relogged_series = relog.len();
        }
        // The re-logged series must be durable before their old records go.
        self.sync_current()?;
        for seg in self.segments.drain(..old) {
            std::fs::remove_file(&seg.path).map_err(io_err("remove WAL segment", &seg.path))?;
            report.removed.push(seg.path);
        }
        sync_dir(&self.dir)?;
        Ok(report)
    }
}

impl Drop for Wal {
    /// A clean close: what is buffered is written and synced (best effort;
    /// a caller that needs to know calls [`Wal::sync`] first).
    fn drop(&mut self) {
        if self.sync_failed.is_none() && self.flush().is_ok() {
            let _ = self.file.sync_data();
        }
    }
}

/// The segment files in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<Segment>, WalError> {
    let mut segments = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(io_err("list WAL directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list WAL directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        if name.len() < SEGMENT_DIGITS || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(seq) = name.parse::<u64>() else {
            continue;
        };
        segments.push(Segment {
            seq,
            path: entry.path(),
            max_time: None,
        });
    }
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// The path of segment `seq` in `dir`.
pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:0width$}", width = SEGMENT_DIGITS))
}

/// A segment's bytes, as many as its size says (so a device file in its
/// place cannot make the read endless).
fn read_segment(path: &Path) -> Result<Vec<u8>, WalError> {
    let err = io_err("read WAL segment", path);
    let read = || {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    read().map_err(err)
}

fn cut_tail(path: &Path, len: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open WAL segment", path))?;
    file.set_len(len)
        .map_err(io_err("truncate the torn tail of WAL segment", path))?;
    file.sync_all().map_err(io_err("sync WAL segment", path))
}

fn create_segment(dir: &Path, seq: u64) -> Result<Segment, WalError> {
    let path = segment_path(dir, seq);
    OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("create WAL segment", &path))?;
    sync_dir(dir)?;
    Ok(Segment {
        seq,
        path,
        max_time: None,
    })
}

/// Makes a file's creation or removal in `dir` durable. Some file systems
/// cannot fsync a directory (EINVAL); they get what they give.
fn sync_dir(dir: &Path) -> Result<(), WalError> {
    match File::open(dir).and_then(|d| d.sync_all()) {
        Err(e) if e.raw_os_error() != Some(22) => Err(io_err("sync WAL directory", dir)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Matcher;

    fn opts(segment_size: u64) -> WalOptions {
        WalOptions {
            segment_size,
            sync_interval: Duration::from_secs(1),
        }
    }

    fn series(i: u64) -> Labels {
        Labels::new([("__name__", "m"), ("s", &i.to_string())]).expect("labels")
    }

    /// Sample `i` of the pattern: series `i % 3`, time `10 i`, odd bits.
    fn sample(i: u64) -> (Labels, i64, f64) {
        let bits = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i << 7);
        (series(i % 3), i as i64 * 10, f64::from_bits(bits))
    }

    /// Appends samples `range` to head and WAL, one batch per `batch`.
    fn append(wal: &mut Wal, head: &mut Head, range: std::ops::Range<u64>, batch: usize) {
        let all: Vec<u64> = range.collect();
        for chunk in all.chunks(batch) {
            let ids: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    let (l, t, v) = sample(i);
                    (head.append(&l, t, v).expect("append"), t, v)
                })
                .collect();
            wal.log_samples(head, &ids).expect("log");
        }
    }

    /// Every sample in the head as (time, bits), in time order.
    fn contents(head: &Head) -> Vec<(i64, u64)> {
        let mut all: Vec<(i64, u64)> = head
            .select(&[Matcher::equal("__name__", "m")], i64::MIN, i64::MAX)
            .flat_map(|s| s.samples().map(|r| r.expect("sample")).collect::<Vec<_>>())
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        all.sort_unstable();
        all
    }

    fn expected(range: std::ops::Range<u64>) -> Vec<(i64, u64)> {
        range
            .map(|i| {
                let (_, t, v) = sample(i);
                (t, v.to_bits())
            })
            .collect()
    }

    fn reopen(dir: &Path, options: WalOptions) -> (Wal, Head, OpenReport) {
        let mut head = Head::new();
        let (wal, report) = Wal::open(dir, options, &mut head).expect("open");
        (wal, head, report)
    }

    #[test]
    fn a_new_wal_creates_its_first_segment_and_reopens_what_was_logged() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("metrics/wal");
        let (mut wal, mut head, report) = reopen(&dir, opts(1 << 20));
        assert_eq!(report, OpenReport::default());
        assert_eq!(
            wal.segment_paths().collect::<Vec<_>>(),
            [dir.join("00000001")]
        );
        append(&mut wal, &mut head, 0..100, 7);
        assert!(wal.is_dirty());
        assert!(wal.sync(Instant::now()).expect("sync"));
        assert_eq!(wal.synced_samples(), 100);
        assert!(!wal.is_dirty());
        drop(wal);

        let (_, head, report) = reopen(&dir, opts(1 << 20));
        assert_eq!(contents(&head), expected(0..100));
        assert_eq!(report.series, 3);
        assert_eq!(report.samples, 100);
        assert_eq!(report.segments, 1);
        assert_eq!(report.tail_repair, None);
    }

    #[test]
    fn a_crash_loses_the_buffer_only_and_written_records_survive_a_kill() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(1 << 20));
        append(&mut wal, &mut head, 0..50, 10);
        wal.flush().expect("flush");
        append(&mut wal, &mut head, 50..60, 10);
        // A kill -9: no drop, the buffer is gone, the file is as written.
        std::mem::forget(wal);
        let (_, head, _) = reopen(tmp.path(), opts(1 << 20));
        assert_eq!(contents(&head), expected(0..50));
    }

    #[test]
    fn tick_syncs_at_most_once_per_interval() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(1 << 20));
        let t0 = Instant::now();
        let s = Duration::from_millis;
        assert!(!wal.tick(t0).expect("tick"), "nothing to sync");
        append(&mut wal, &mut head, 0..10, 10);
        assert!(wal.tick(t0).expect("tick"));
        assert_eq!(wal.synced_samples(), 10);
        append(&mut wal, &mut head, 10..20, 10);
        assert!(!wal.tick(t0 + s(999)).expect("tick"));
        assert_eq!(wal.synced_samples(), 10);
        assert_eq!(wal.sync_deadline(), Some(t0 + s(1000)));
        assert!(wal.tick(t0 + s(1000)).expect("tick"));
        assert_eq!(wal.synced_samples(), 20);
        assert!(!wal.tick(t0 + s(9000)).expect("tick"), "clean");
    }

    #[test]
    fn after_a_failed_sync_the_wal_takes_nothing_until_reopened() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(1 << 20));
        append(&mut wal, &mut head, 0..10, 5);
        let pending = wal
            .begin_sync(Instant::now())
            .expect("begin")
            .expect("dirty");
        drop(pending);
        let seg = segment_path(tmp.path(), 1);
        let failed = WalError::Io {
            op: "sync WAL segment",
            path: seg.clone(),
            source: io::Error::from_raw_os_error(5),
        };
        assert!(wal.end_sync(Err(failed)).is_err());
        let refused = |e: WalError| matches!(e, WalError::SyncFailed { path } if path == seg);
        let (l, t, v) = sample(10);
        let id = head.append(&l, t, v).expect("append");
        assert!(refused(
            wal.log_samples(&head, &[(id, t, v)]).expect_err("log")
        ));
        assert!(refused(wal.sync(Instant::now()).expect_err("sync")));
        assert!(refused(
            wal.truncate_before(i64::MAX, &head).expect_err("truncate")
        ));
        assert_eq!(wal.synced_samples(), 0);
        drop(wal);
        // What had reached the file is there after a reopen.
        let (_, head, _) = reopen(tmp.path(), opts(1 << 20));
        assert_eq!(contents(&head), expected(0..10));
    }

    #[test]
    fn a_full_segment_is_synced_and_the_next_one_started() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(300));
        append(&mut wal, &mut head, 0..400, 9);
        // The segments before the current one were synced when cut.
        assert!(wal.synced_samples() > 300);
        wal.sync(Instant::now()).expect("sync");
        let paths: Vec<PathBuf> = wal.segment_paths().map(Path::to_owned).collect();
        assert!(paths.len() > 10, "{} segments", paths.len());
        for (i, p) in paths.iter().enumerate() {
            assert_eq!(p, &segment_path(tmp.path(), i as u64 + 1));
            let len = std::fs::metadata(p).expect("segment").len();
            assert!(len <= 300, "{} has {len} bytes", p.display());
        }
        drop(wal);
        // Other files in the directory are not segments.
        std::fs::write(tmp.path().join("notes.txt"), "x").expect("write");
        std::fs::write(tmp.path().join("123"), "x").expect("write");
        let (mut wal, mut head, report) = reopen(tmp.path(), opts(300));
        assert_eq!(report.segments, paths.len());
        assert_eq!(contents(&head), expected(0..400));
        // Appending goes on in the last segment, then new ones.
        append(&mut wal, &mut head, 400..450, 9);
        drop(wal);
        let (_, head, _) = reopen(tmp.path(), opts(300));
        assert_eq!(contents(&head), expected(0..450));
    }

    #[test]
    fn a_torn_tail_of_the_last_segment_is_cut_and_appends_follow_valid_data() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(1 << 20));
        append(&mut wal, &mut head, 0..30, 10);
        drop(wal);
        let seg = segment_path(tmp.path(), 1);
        let good = std::fs::read(&seg).expect("read");

        // Cut at every byte: open never fails and keeps a prefix.
        for cut in 0..good.len() {
            std::fs::write(&seg, &good[..cut]).expect("write");
            let (_, head, report) = reopen(tmp.path(), opts(1 << 20));
            let got = contents(&head);
            assert!(expected(0..30).starts_with(&got), "cut {cut}");
            let len = std::fs::metadata(&seg).expect("segment").len();
            match &report.tail_repair {
                Some(r) => {
                    assert!(r.stop.is_torn_tail(), "cut {cut}: {:?}", r.stop);
                    assert_eq!((r.len, r.valid_len), (cut as u64, len), "cut {cut}");
                    assert_eq!(r.path, seg);
                }
                None => assert_eq!(len, cut as u64, "cut {cut}"),
            }
            assert!(len <= cut as u64);
        }

        // A torn record after good ones, then more appends: all readable.
        let mut torn = good.clone();
        torn.extend_from_slice(&good[..super::super::FRAME_HEADER + 5]);
        std::fs::write(&seg, &torn).expect("write");
        let (mut wal, mut head, report) = reopen(tmp.path(), opts(1 << 20));
        assert!(report.tail_repair.is_some());
        assert_eq!(std::fs::read(&seg).expect("read"), good);
        append(&mut wal, &mut head, 30..60, 10);
        drop(wal);
        let (_, head, report) = reopen(tmp.path(), opts(1 << 20));
        assert_eq!(report.tail_repair, None);
        assert_eq!(contents(&head), expected(0..60));
    }

    #[test]
    fn damage_in_an_earlier_segment_is_an_error_naming_the_file_and_offset() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(300));
        append(&mut wal, &mut head, 0..100, 9);
        drop(wal);
        let seg = segment_path(tmp.path(), 2);
        let mut bytes = std::fs::read(&seg).expect("read");
        let first_len = u32::from_le_bytes(bytes[..4].try_into().expect("4")) as usize;
        let at = super::super::FRAME_HEADER + first_len + 12;
        bytes[at] ^= 0x40;
        std::fs::write(&seg, &bytes).expect("write");
        let err = Wal::open(tmp.path(), opts(300), &mut Head::new()).expect_err("damaged");
        let offset = (super::super::FRAME_HEADER + first_len) as u64;
        assert!(
            matches!(&err, WalError::Corrupt { path, offset: o, .. } if *path == seg && *o == offset),
            "{err:?}"
        );
        assert_eq!(err.path(), Some(seg.as_path()));
        let msg = err.to_string();
        assert!(msg.contains(&seg.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("byte {offset}")), "{msg}");
    }

    #[test]
    fn truncation_drops_whole_old_segments_and_keeps_their_series() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut wal, mut head, _) = reopen(tmp.path(), opts(300));
        // Series 0..3 are logged in segment 1; their later samples are in
        // later segments and need those series records.
        append(&mut wal, &mut head, 0..300, 9);
        let before: Vec<PathBuf> = wal.segment_paths().map(Path::to_owned).collect();
        assert!(before.len() > 5);

        // Nothing is older than the first sample.
        let report = wal.truncate_before(0, &head).expect("truncate");
        assert_eq!(report, TruncateReport::default());

        // Samples are at 10 i: drop the segments entirely before 1000.
        let report = wal.truncate_before(1000, &head).expect("truncate");
        assert!(!report.removed.is_empty());
        assert_eq!(report.removed, before[..report.removed.len()]);
        assert_eq!(report.relogged_series, 3);
        for p in &report.removed {
            assert!(!p.exists(), "{}", p.display());
        }
        let kept: Vec<PathBuf> = wal.segment_paths().map(Path::to_owned).collect();
        assert_eq!(kept, before[report.removed.len()..]);
        drop(wal);

        let (mut wal, mut head, report) = reopen(tmp.path(), opts(300));
        assert_eq!(report.unknown_series_samples, 0);
        assert_eq!(report.series, 3);
        let got = contents(&head);
        // Only whole segments went: what is left ends with everything
        // from 1000 on, and starts at a segment boundary before it.
        let first = got.first().expect("samples").0;
        assert!(first < 1000, "first kept sample at {first}");
        assert_eq!(got, expected(first as u64 / 10..300));

        // Everything but the current segment can go; the series survive.
        append(&mut wal, &mut head, 300..320, 9);
        let current = wal.segment_paths().last().map(Path::to_owned);
        let report = wal.truncate_before(i64::MAX, &head).expect("truncate");
        // The current segment stays, and a new one if the re-logged series
        // did not fit in it.
        let kept: Vec<_> = wal.segment_paths().map(Path::to_owned).collect();
        assert!(
            kept.len() <= 2 && kept.first() == current.as_ref(),
            "{kept:?}"
        );
        assert!(report.relogged_series <= 3);
        drop(wal);
        let (_, head, report) = reopen(tmp.path(), opts(300));
        assert_eq!(report.unknown_series_samples, 0);
        assert_eq!(head.stats().series, 3);
        let got = contents(&head);
        assert!(expected(0..320).ends_with(&got));
        assert!(!got.is_empty());
    }
}
