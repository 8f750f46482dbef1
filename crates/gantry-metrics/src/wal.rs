//! The write-ahead log: record format, segment files, syncing and replay.
//!
//! Every sample the store accepts is logged here before the append returns,
//! and the log is synced (fdatasync) at most once per
//! [`WalOptions::sync_interval`] (1 s by default), so a crash — a kill -9
//! or a power cut — loses at most the samples of the last interval. After a
//! crash the head is rebuilt by replaying the log on [`Wal::open`].
//!
//! # Files
//!
//! The caller gives the directory (the server will use
//! `<data>/metrics/wal`);
//! it holds numbered segment files, `00000001`, `00000002`, … (eight digits
//! or more; other names are ignored). Records are appended to the last
//! segment; once the next record would take it past
//! [`WalOptions::segment_size`] (32 MiB by default) the segment is synced
//! and a new one started, and the directory is synced so the new file
//! survives a power cut. A record is never split across segments.
//!
//! # Syncing
//!
//! [`Wal`] is single-threaded and has no clock: appends go to a memory
//! buffer, and the caller passes `now` to [`Wal::tick`], which writes the
//! buffer out and syncs when there is unsynced data and `sync_interval`
//! has passed since the last sync began ([`SyncPolicy`], pure, so it is
//! tested with made-up instants). A sync is split in three
//! ([`Wal::begin_sync`] writes the buffer to the file, [`PendingSync::run`]
//! does the fdatasync without the `Wal`, [`Wal::end_sync`] records it), so
//! the owner can sync without holding its lock; [`crate::tsdb::Syncer`] is
//! that owner, a background thread that a server runs.
//!
//! # Replay
//!
//! [`Wal::open`] reads every segment in order, twice: first the series
//! records (a series record defines its WAL id for the whole log, since
//! truncation re-logs the series of dropped segments after samples that
//! use them), then the samples, into the head.
//!
//! - A bad frame in the **last** segment is the tail a crash cut off: the
//!   segment is truncated to its last whole record (and synced), so new
//!   records follow valid data; the report says where and why. A torn
//!   write is the usual cause; a checksum failure there (a power cut can
//!   leave garbage in the last pages) is treated the same way.
//! - A bad frame in an **earlier** segment is damage, not a crash: those
//!   segments were synced in full before the next one was started. Open
//!   fails with [`WalError::Corrupt`], naming the file and the offset,
//!   rather than silently dropping the newer segments after it; the
//!   operator can move the file away and start with the rest.
//!
//! # Truncation
//!
//! [`Wal::truncate_before`] deletes the oldest segments whose newest
//! sample is older than a given time (once blocks hold those samples; the
//! current segment is never deleted). The series records of the deleted
//! segments are first re-logged into the current segment and synced.
//!
//! # Errors
//!
//! A disk that refuses — a file where the directory should be, no
//! permission, a full disk — is a [`WalError::Io`] naming the path and
//! what was being done, with the OS's error as its source
//! ([`WalError::is_disk_full`] tells ENOSPC). A failed write is cut back
//! out of the segment, so a retry does not leave a torn record in its
//! middle; the samples of a batch whose logging failed may be in the head
//! but not in the log, and the caller is told.
//!
//! A failed fdatasync stops the WAL: the kernel may have dropped the pages
//! it could not write and a later sync would succeed without them, so
//! from then on every append and sync is [`WalError::SyncFailed`] until
//! the WAL is opened again (and replays what did reach the disk).
//!
//! # Record format
//!
//! A record on disk is framed as
//!
//! | bytes | field |
//! |---|---|
//! | 4 | payload length, u32 little-endian |
//! | 4 | CRC-32 (IEEE) of the kind byte and the payload, little-endian |
//! | 1 | kind: 1 series, 2 samples |
//! | n | payload |
//!
//! Payloads use unsigned LEB128 varints (`uv`) and zigzag varints (`zv`):
//!
//! - **series**: `uv` count, then per series `uv` id, `uv` label count, and
//!   per label `uv` length + bytes of the name, the same of the value;
//! - **samples**: `uv` count, `zv` base timestamp, then per sample `uv`
//!   series id, `zv` timestamp minus base (wrapping), 8 bytes of the f64
//!   bits little-endian.
//!
//! A series id here is the WAL's own number, not the head's: a samples
//! record refers to a series record elsewhere in the log. [`WalReader`] stops at the first frame
//! that is incomplete, fails its checksum or does not decode, and says
//! where the good part ends, so the writer truncates there and appends on.

use crate::head::{AppendError, Head};
use crate::index::SeriesId;
use crate::labels::Labels;
use std::collections::HashMap;

mod files;
mod sync;

pub use files::{
    OpenReport, PendingSync, SEGMENT_DIGITS, SyncDone, TailRepair, TruncateReport, Wal, WalError,
    WalOptions, segment_path,
};
pub use sync::SyncPolicy;

/// Frame header: length, CRC, kind.
pub const FRAME_HEADER: usize = 9;

/// The largest payload accepted (64 MiB); a longer length is corrupt.
pub const MAX_PAYLOAD: usize = 64 << 20;

const KIND_SERIES: u8 = 1;
const KIND_SAMPLES: u8 = 2;

/// One WAL record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// New series and the WAL ids the samples records will use for them.
    Series(Vec<(u64, Labels)>),
    /// Samples: (WAL series id, timestamp ms, value).
    Samples(Vec<(u64, i64, f64)>),
}

/// Appends the framed encoding of `record` to `out`.
pub fn encode(record: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let kind = match record {
        Record::Series(series) => {
            put_uvarint(out, series.len() as u64);
            for (id, labels) in series {
                put_uvarint(out, *id);
                put_uvarint(out, labels.len() as u64);
                for l in labels {
                    put_bytes(out, l.name.as_bytes());
                    put_bytes(out, l.value.as_bytes());
                }
            }
            KIND_SERIES
        }
        Record::Samples(samples) => {
            put_uvarint(out, samples.len() as u64);
            let base = samples.first().map_or(0, |s| s.1);
            put_uvarint(out, zigzag(base));
            for &(id, t, v) in samples {
                put_uvarint(out, id);
                put_uvarint(out, zigzag(t.wrapping_sub(base)));
                out.extend_from_slice(&v.to_bits().to_le_bytes());
            }
            KIND_SAMPLES
        }
    };
    let len = (out.len() - start - FRAME_HEADER) as u32;
    out[start + 8] = kind;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a replay stopped before the end of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalStop {
    /// The last frame is incomplete, or the rest is zeros: a write the
    /// crash cut off. Expected after a kill; nothing acknowledged is lost
    /// beyond the last sync.
    #[error("torn record at byte {offset} (an interrupted write)")]
    Torn { offset: usize },
    #[error("record at byte {offset} fails its checksum")]
    Checksum { offset: usize },
    #[error("record at byte {offset} is malformed: {reason}")]
    Malformed { offset: usize, reason: String },
}

impl WalStop {
    /// Whether this is the expected end of a log cut by a crash, rather
    /// than damage in the middle of it.
    pub fn is_torn_tail(&self) -> bool {
        matches!(self, WalStop::Torn { .. })
    }
}

/// Reads records from a WAL's bytes until the end or the first bad frame.
#[derive(Debug, Clone)]
pub struct WalReader<'a> {
    bytes: &'a [u8],
    pos: usize,
    stop: Option<WalStop>,
}

impl<'a> WalReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            stop: None,
        }
    }

    /// Bytes up to the end of the last good record: where to truncate.
    pub fn valid_len(&self) -> usize {
        self.pos
    }

    /// Why reading stopped early; `None` while reading or at a clean end.
    pub fn stop(&self) -> Option<&WalStop> {
        self.stop.as_ref()
    }

    fn read_frame(&self) -> Result<(Record, usize), WalStop> {
        let offset = self.pos;
        let rest = &self.bytes[offset..];
        let torn = WalStop::Torn { offset };
        // A crash can leave preallocated zeros after the last write.
        if rest.iter().all(|&b| b == 0) {
            return Err(torn);
        }
        let Some(header) = rest.get(..FRAME_HEADER) else {
            return Err(torn);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_PAYLOAD {
            return Err(WalStop::Malformed {
                offset,
                reason: format!("payload length {len} is over {MAX_PAYLOAD}"),
            });
        }
        let Some(body) = rest.get(8..FRAME_HEADER + len) else {
            return Err(torn);
        };
        if crc32fast::hash(body) != crc {
            return Err(WalStop::Checksum { offset });
        }
        let malformed = |reason: String| WalStop::Malformed { offset, reason };
        let record = decode_payload(body[0], &body[1..]).map_err(malformed)?;
        Ok((record, FRAME_HEADER + len))
    }
}

impl Iterator for WalReader<'_> {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.stop.is_some() || self.pos >= self.bytes.len() {
            return None;
        }
        match self.read_frame() {
            Ok((record, len)) => {
                self.pos += len;
                Some(record)
            }
            Err(stop) => {
                self.stop = Some(stop);
                None
            }
        }
    }
}

fn decode_payload(kind: u8, payload: &[u8]) -> Result<Record, String> {
    let mut r = Cursor { bytes: payload };
    let record = match kind {
        KIND_SERIES => {
            let count = r.uvarint()?;
            let mut series = Vec::with_capacity(r.capacity_for(count, 2));
            for _ in 0..count {
                let id = r.uvarint()?;
                let n = r.uvarint()?;
                let mut pairs = Vec::with_capacity(r.capacity_for(n, 2));
                for _ in 0..n {
                    pairs.push((r.string()?, r.string()?));
                }
                let labels = Labels::new(pairs).map_err(|e| e.to_string())?;
                series.push((id, labels));
            }
            Record::Series(series)
        }
        KIND_SAMPLES => {
            let count = r.uvarint()?;
            let base = unzigzag(r.uvarint()?);
            let mut samples = Vec::with_capacity(r.capacity_for(count, 10));
            for _ in 0..count {
                let id = r.uvarint()?;
                let t = base.wrapping_add(unzigzag(r.uvarint()?));
                let v = f64::from_bits(u64::from_le_bytes(r.array()?));
                samples.push((id, t, v));
            }
            Record::Samples(samples)
        }
        other => return Err(format!("unknown record kind {other}")),
    };
    if !r.bytes.is_empty() {
        return Err(format!(
            "{} bytes after the record's content",
            r.bytes.len()
        ));
    }
    Ok(record)
}

/// What [`replay`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub records: usize,
    pub series: usize,
    pub samples: usize,
    /// Samples the head refused (out of order, conflicting duplicates).
    pub refused_samples: usize,
    /// Samples whose series record was not seen.
    pub unknown_series_samples: usize,
    /// Bytes up to the end of the last good record.
    pub valid_len: usize,
    /// Why replay stopped before the end, if it did.
    pub stop: Option<WalStop>,
}

/// Replays a WAL's bytes into `head`, stopping at the first bad frame.
pub fn replay(bytes: &[u8], head: &mut Head) -> ReplayReport {
    let mut report = ReplayReport::default();
    let mut ids: HashMap<u64, SeriesId> = HashMap::new();
    let mut reader = WalReader::new(bytes);
    for record in reader.by_ref() {
        report.records += 1;
        match record {
            Record::Series(series) => {
                for (wal_id, labels) in series {
                    ids.insert(wal_id, head.series_id(&labels));
                    report.series += 1;
                }
            }
            Record::Samples(samples) => {
                for (wal_id, t, v) in samples {
                    let Some(&id) = ids.get(&wal_id) else {
                        report.unknown_series_samples += 1;
                        continue;
                    };
                    match head.append_id(id, t, v) {
                        Ok(()) => report.samples += 1,
                        Err(
                            AppendError::OutOfOrder { .. }
                            | AppendError::Duplicate { .. }
                            | AppendError::Chunk { .. }
                            | AppendError::UnknownSeries(_)
                            | AppendError::OutOfBounds { .. },
                        ) => report.refused_samples += 1,
                    }
                }
            }
        }
    }
    report.valid_len = reader.valid_len();
    report.stop = reader.stop().cloned();
    report
}

// === varints ===

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Cursor<'a> {
    bytes: &'a [u8],
}

impl Cursor<'_> {
    fn uvarint(&mut self) -> Result<u64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&byte, rest) = self
                .bytes
                .split_first()
                .ok_or("record ends inside a varint")?;
            self.bytes = rest;
            let part = u64::from(byte & 0x7f);
            if i == 9 && part > 1 {
                return Err("varint overflows 64 bits".into());
            }
            v |= part << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&[u8], String> {
        let n = usize::try_from(n).map_err(|_| "length too large".to_owned())?;
        if n > self.bytes.len() {
            return Err(format!("a length of {n} runs past the record's end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn string(&mut self) -> Result<String, String> {
        let n = self.uvarint()?;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a label is not UTF-8".into())
    }

    fn array(&mut self) -> Result<[u8; 8], String> {
        let bytes = self.take(8)?;
        let mut a = [0; 8];
        a.copy_from_slice(bytes);
        Ok(a)
    }

    /// A capacity for `count` items of at least `min_size` bytes each that
    /// a corrupt count cannot blow up.
    fn capacity_for(&self, count: u64, min_size: usize) -> usize {
        usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.bytes.len() / min_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Matcher;

    fn up(job: &str) -> Labels {
        Labels::new([("__name__", "up"), ("job", job)]).expect("valid labels")
    }

    fn sample_log() -> (Vec<u8>, Vec<Record>, Vec<usize>) {
        let records = vec![
            Record::Series(vec![(0, up("api")), (1, up("db"))]),
            Record::Samples(vec![
                (0, 1000, 1.0),
                (1, 1000, f64::from_bits(crate::STALE_NAN_BITS)),
            ]),
            Record::Samples(vec![
                (0, 16_000, 2.5),
                (1, i64::MIN, -0.0),
                (0, i64::MAX, f64::INFINITY),
            ]),
            Record::Series(vec![(
                7,
                Labels::new([("__name__", "x"), ("v", "é\n\"")]).expect("valid"),
            )]),
            Record::Samples(vec![(7, -5, f64::NAN)]),
            Record::Samples(vec![]),
            Record::Series(vec![]),
        ];
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for r in &records {
            encode(r, &mut bytes);
            ends.push(bytes.len());
        }
        (bytes, records, ends)
    }

    /// Records compare by value bits, so NaNs compare too.
    fn bits(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| match r {
                Record::Samples(s) => format!(
                    "{:?}",
                    s.iter()
                        .map(|&(id, t, v)| (id, t, v.to_bits()))
                        .collect::<Vec<_>>()
                ),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn records_round_trip() {
        let (bytes, records, ends) = sample_log();
        let mut reader = WalReader::new(&bytes);
        let read: Vec<Record> = reader.by_ref().collect();
        assert_eq!(bits(&read), bits(&records));
        assert_eq!(reader.stop(), None);
        assert_eq!(reader.valid_len(), *ends.last().expect("records"));
    }

    #[test]
    fn a_torn_tail_stops_replay_cleanly_at_the_last_whole_record() {
        let (bytes, records, ends) = sample_log();
        for cut in 0..bytes.len() {
            let mut reader = WalReader::new(&bytes[..cut]);
            let read: Vec<Record> = reader.by_ref().collect();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(bits(&read), bits(&records[..whole]), "cut {cut}");
            let good = if whole == 0 { 0 } else { ends[whole - 1] };
            assert_eq!(reader.valid_len(), good, "cut {cut}");
            if cut == good {
                assert_eq!(reader.stop(), None, "cut {cut}");
            } else {
                assert_eq!(
                    reader.stop(),
                    Some(&WalStop::Torn { offset: good }),
                    "cut {cut}"
                );
            }
        }
        // Zeros after the last record, as a crash can leave.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 100]);
        let mut reader = WalReader::new(&padded);
        assert_eq!(reader.by_ref().count(), records.len());
        assert!(reader.stop().is_some_and(WalStop::is_torn_tail));
        assert_eq!(reader.valid_len(), bytes.len());
    }

    #[test]
    fn damage_in_the_middle_is_reported_as_such() {
        let (bytes, _, ends) = sample_log();
        let mut damaged = bytes.clone();
        damaged[ends[1] + FRAME_HEADER + 2] ^= 0x10;
        let mut reader = WalReader::new(&damaged);
        assert_eq!(reader.by_ref().count(), 2);
        assert_eq!(reader.stop(), Some(&WalStop::Checksum { offset: ends[1] }));
        assert!(!reader.stop().is_some_and(WalStop::is_torn_tail));
        assert_eq!(reader.valid_len(), ends[1]);

        // A frame with a good checksum but bad content.
        let mut bad = Vec::new();
        let body = [KIND_SAMPLES, 5];
        bad.extend_from_slice(&1u32.to_le_bytes());
        bad.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bad.extend_from_slice(&body);
        let mut reader = WalReader::new(&bad);
        assert_eq!(reader.next(), None);
        assert!(matches!(
            reader.stop(),
            Some(WalStop::Malformed { offset: 0, .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(9);
        let (valid, _, _) = sample_log();
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect()
            } else {
                let mut b = valid.clone();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(0..b.len());
                    b[i] = rng.u8(..);
                }
                b
            };
            let mut reader = WalReader::new(&bytes);
            for _ in reader.by_ref() {}
            assert!(reader.valid_len() <= bytes.len());
            let mut head = Head::new();
            let _ = replay(&bytes, &mut head);
        }
    }

    #[test]
    fn replay_rebuilds_the_head() {
        let (bytes, _, ends) = sample_log();
        let mut head = Head::new();
        let report = replay(&bytes, &mut head);
        assert_eq!(report.records, 7);
        assert_eq!(report.series, 3);
        assert_eq!(report.samples, 5);
        // db's i64::MIN sample comes after its sample at 1000.
        assert_eq!(report.refused_samples, 1);
        assert_eq!(report.stop, None);
        assert_eq!(report.valid_len, bytes.len());
        let api: Vec<_> = head
            .select(&[Matcher::equal("job", "api")], i64::MIN, i64::MAX)
            .flat_map(|s| s.samples().collect::<Result<Vec<_>, _>>().expect("samples"))
            .collect();
        assert_eq!(
            api,
            vec![(1000, 1.0), (16_000, 2.5), (i64::MAX, f64::INFINITY)]
        );

        // Cut inside the third record: the head has what came before.
        let mut head = Head::new();
        let report = replay(&bytes[..ends[2] - 3], &mut head);
        assert_eq!(report.records, 2);
        assert_eq!(report.samples, 2);
        assert!(report.stop.as_ref().is_some_and(WalStop::is_torn_tail));
        assert_eq!(report.valid_len, ends[1]);

        // Samples of a series the log never defined are counted, not stored.
        let mut orphan = Vec::new();
        encode(&Record::Samples(vec![(42, 0, 1.0)]), &mut orphan);
        let report = replay(&orphan, &mut Head::new());
        assert_eq!(report.unknown_series_samples, 1);
    }
}
