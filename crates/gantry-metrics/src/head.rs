//! The in-memory head: the recent samples of every series.
//!
//! Each series has a list of [`Chunk`]s; samples go to the last one, and a
//! new chunk starts once it holds [`CHUNK_SAMPLES`]. Within a series,
//! samples are appended in time order: an older one is refused with
//! [`AppendError::OutOfOrder`]; one at the same timestamp is accepted and
//! ignored when its value has the same bits (a retried scrape) and refused
//! with [`AppendError::Duplicate`] otherwise, like Prometheus.
//!
//! [`Head::select`] finds series by [`Matcher`]s and iterates their samples
//! in `[mint, maxt]` (milliseconds, both ends included), skipping whole
//! chunks outside the range.

use crate::chunk::{Chunk, ChunkError, ChunkIter};
use crate::index::{Matcher, MemIndex, SeriesId};
use crate::labels::Labels;

/// Samples per head chunk (Prometheus's number: two hours at a minute, 30
/// minutes at 15 s, about 1.3 bytes a sample).
pub const CHUNK_SAMPLES: usize = 120;

/// Why a sample was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("out-of-order sample for {series}: {t} ms is older than its last sample at {last} ms")]
    OutOfOrder { series: String, t: i64, last: i64 },
    #[error("duplicate sample for {series} at {t} ms with a different value")]
    Duplicate { series: String, t: i64 },
    #[error("no series with id {0}")]
    UnknownSeries(u64),
    #[error("chunk of {series}: {source}")]
    Chunk { series: String, source: ChunkError },
    #[error(
        "sample for {series} at {t} ms is older than {min_valid} ms, the start of the head: that time is already in a block"
    )]
    OutOfBounds {
        series: String,
        t: i64,
        min_valid: i64,
    },
}

/// Sizes, for `gantry metrics status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadStats {
    pub series: usize,
    pub samples: u64,
    pub chunks: usize,
    /// Encoded bytes of all chunks.
    pub chunk_bytes: usize,
    /// Oldest and newest sample timestamp; `None` while empty.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
}

#[derive(Debug, Clone, Default)]
struct MemSeries {
    /// In time order; only the last one is appended to.
    chunks: Vec<Chunk>,
    /// Bits of the last value, to tell a repeated sample from a conflict.
    last: Option<(i64, u64)>,
}

/// The head: index plus chunks, by series id.
#[derive(Debug, Clone, Default)]
pub struct Head {
    index: MemIndex,
    series: Vec<MemSeries>,
    samples: u64,
    min_time: Option<i64>,
    max_time: Option<i64>,
}

impl Head {
    pub fn new() -> Self {
        Self::default()
    }

    /// The label index.
    pub fn index(&self) -> &MemIndex {
        &self.index
    }

    /// The id of `labels`, creating an empty series if it is new.
    pub fn series_id(&mut self, labels: &Labels) -> SeriesId {
        let (id, created) = self.index.get_or_insert(labels);
        if created {
            self.series.push(MemSeries::default());
        }
        id
    }

    /// Appends a sample to the series `labels`, creating it if new.
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesId, AppendError> {
        let id = self.series_id(labels);
        self.append_id(id, t, v)?;
        Ok(id)
    }

    /// Appends a sample to a series by id (from [`Head::series_id`]), the
    /// fast path for a scrape that sees the same series every time.
    pub fn append_id(&mut self, id: SeriesId, t: i64, v: f64) -> Result<(), AppendError> {
        let series = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.series.get_mut(i))
            .ok_or(AppendError::UnknownSeries(id.0))?;
        let name = |index: &MemIndex| index.labels(id).map(Labels::to_string).unwrap_or_default();
        if let Some((last_t, last_bits)) = series.last {
            if t < last_t {
                return Err(AppendError::OutOfOrder {
                    series: name(&self.index),
                    t,
                    last: last_t,
                });
            }
            if t == last_t {
                if last_bits == v.to_bits() {
                    return Ok(());
                }
                return Err(AppendError::Duplicate {
                    series: name(&self.index),
                    t,
                });
            }
        }
        if series
            .chunks
            .last()
            .is_none_or(|c| c.len() >= CHUNK_SAMPLES)
        {
            series.chunks.push(Chunk::new());
        }
        let chunk = series
            .chunks
            .last_mut()
            .ok_or(AppendError::UnknownSeries(id.0))?;
        if let Err(source) = chunk.append(t, v) {
            return Err(AppendError::Chunk {
                series: name(&self.index),
                source,
            });
        }
        series.last = Some((t, v.to_bits()));
        self.samples += 1;
        self.min_time = Some(self.min_time.map_or(t, |m| m.min(t)));
        self.max_time = Some(self.max_time.map_or(t, |m| m.max(t)));
        Ok(())
    }

    /// The series passing every matcher that have a sample in `[mint,
    /// maxt]`, sorted by their labels (the order a merge with on-disk
    /// blocks and Prometheus's API answers need).
    pub fn select<'a>(
        &'a self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = SelectedSeries<'a>> + 'a {
        let mut ids = self.index.select(matchers);
        ids.sort_by_key(|&id| self.index.labels(id));
        ids.into_iter().filter_map(move |id| {
            let labels = self.index.labels(id)?;
            let series = self.series.get(usize::try_from(id.0).ok()?)?;
            let selected = SelectedSeries {
                id,
                labels,
                chunks: &series.chunks,
                mint,
                maxt,
            };
            selected.has_samples().then_some(selected)
        })
    }

    /// Drops every sample older than `t` (ms), once a block holds them:
    /// whole chunks that end before `t`, and the older part of a chunk
    /// that straddles it (re-encoded). Series stay indexed, with no
    /// samples, so their ids (which the WAL refers to) stay valid and the
    /// order check still knows their last sample. Returns the samples
    /// dropped.
    pub fn drop_before(&mut self, t: i64) -> Result<u64, ChunkError> {
        let mut dropped = 0u64;
        for series in &mut self.series {
            let whole = series
                .chunks
                .partition_point(|c| c.max_time().is_none_or(|m| m < t));
            dropped += series
                .chunks
                .drain(..whole)
                .map(|c| c.len() as u64)
                .sum::<u64>();
            let Some(first) = series.chunks.first_mut() else {
                continue;
            };
            if first.min_time().is_some_and(|m| m < t) {
                let mut kept = Chunk::new();
                for sample in first.iter() {
                    let (st, v) = sample?;
                    if st >= t {
                        kept.append(st, v)?;
                    } else {
                        dropped += 1;
                    }
                }
                *first = kept;
            }
        }
        self.samples -= dropped.min(self.samples);
        self.min_time = self
            .series
            .iter()
            .filter_map(|s| s.chunks.first().and_then(Chunk::min_time))
            .min();
        if self.min_time.is_none() {
            self.max_time = None;
        }
        Ok(dropped)
    }

    /// Samples stored (cheap, unlike [`Head::stats`]).
    pub fn sample_count(&self) -> u64 {
        self.samples
    }

    pub fn stats(&self) -> HeadStats {
        let chunks = self.series.iter().flat_map(|s| &s.chunks);
        HeadStats {
            series: self.index.len(),
            samples: self.samples,
            chunks: chunks.clone().count(),
            chunk_bytes: chunks.map(|c| c.bytes().len()).sum(),
            min_time: self.min_time,
            max_time: self.max_time,
        }
    }
}

/// A series found by [`Head::select`].
#[derive(Debug, Clone, Copy)]
pub struct SelectedSeries<'a> {
    pub id: SeriesId,
    pub labels: &'a Labels,
    chunks: &'a [Chunk],
    mint: i64,
    maxt: i64,
}

impl<'a> SelectedSeries<'a> {
    /// A series over `chunks` (in time order) limited to `[mint, maxt]`;
    /// `None` when it has no sample there. For on-disk blocks, so they
    /// select with exactly the head's semantics.
    pub(crate) fn over(
        id: SeriesId,
        labels: &'a Labels,
        chunks: &'a [Chunk],
        mint: i64,
        maxt: i64,
    ) -> Option<Self> {
        let selected = SelectedSeries {
            id,
            labels,
            chunks,
            mint,
            maxt,
        };
        selected.has_samples().then_some(selected)
    }

    /// The samples in the range, in time order.
    pub fn samples(&self) -> Samples<'a> {
        // Chunks are in time order: skip those that end before the range.
        let first = self
            .chunks
            .partition_point(|c| c.max_time().is_none_or(|t| t < self.mint));
        Samples {
            chunks: self.chunks.get(first..).unwrap_or(&[]),
            current: None,
            mint: self.mint,
            maxt: self.maxt,
            done: self.mint > self.maxt,
        }
    }

    fn has_samples(&self) -> bool {
        // The first sample at or after mint decides; an unreadable chunk
        // counts as having samples, so its error surfaces to the reader.
        match self.samples().next() {
            None => false,
            Some(Ok(_)) | Some(Err(_)) => true,
        }
    }
}

/// The samples of one series in a time range; `Err` at most once, then the
/// end.
#[derive(Debug, Clone)]
pub struct Samples<'a> {
    chunks: &'a [Chunk],
    current: Option<ChunkIter<'a>>,
    mint: i64,
    maxt: i64,
    done: bool,
}

impl Iterator for Samples<'_> {
    type Item = Result<(i64, f64), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            if let Some(it) = &mut self.current {
                match it.next() {
                    Some(Ok((t, _))) if t > self.maxt => self.done = true,
                    Some(Ok(sample)) => return Some(Ok(sample)),
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                    None => self.current = None,
                }
                continue;
            }
            let Some((chunk, rest)) = self.chunks.split_first() else {
                self.done = true;
                break;
            };
            self.chunks = rest;
            if chunk.min_time().is_none_or(|t| t > self.maxt) {
                self.done = true;
                break;
            }
            let mut it = chunk.iter();
            match it.seek(self.mint) {
                Ok(Some((t, _))) if t > self.maxt => self.done = true,
                Ok(Some(sample)) => {
                    self.current = Some(it);
                    return Some(Ok(sample));
                }
                Ok(None) => {}
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MatchOp;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).expect("valid labels")
    }

    fn up(job: &str) -> Labels {
        ls(&[("__name__", "up"), ("job", job)])
    }

    fn collect(s: &SelectedSeries<'_>) -> Vec<(i64, f64)> {
        s.samples().collect::<Result<_, _>>().expect("samples")
    }

    #[test]
    fn append_and_select_across_chunks() {
        let mut head = Head::new();
        // Created before `api`, listed after it: select sorts by labels.
        head.series_id(&up("db"));
        for i in 0..1000 {
            head.append(&up("api"), i * 15_000, i as f64)
                .expect("append");
            if i % 2 == 0 {
                head.append(&up("db"), i * 15_000, 1.0).expect("append");
            }
        }
        let stats = head.stats();
        assert_eq!(stats.series, 2);
        assert_eq!(stats.samples, 1500);
        // 1000 samples in chunks of 120 → 9, 500 → 5.
        assert_eq!(stats.chunks, 14);
        assert_eq!(stats.min_time, Some(0));
        assert_eq!(stats.max_time, Some(999 * 15_000));
        assert!(stats.chunk_bytes < 1500 * 3, "{stats:?}");

        let job_api = [Matcher::equal("job", "api")];
        let all: Vec<_> = head.select(&job_api, i64::MIN, i64::MAX).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].labels, &up("api"));
        let expect: Vec<(i64, f64)> = (0..1000).map(|i| (i * 15_000, i as f64)).collect();
        assert_eq!(collect(&all[0]), expect);

        // A range across a chunk boundary, ends included.
        let (mint, maxt) = (100 * 15_000, 250 * 15_000);
        let part: Vec<_> = head.select(&job_api, mint, maxt).collect();
        assert_eq!(collect(&part[0]), expect[100..=250].to_vec());
        // Ends that fall between samples.
        let part: Vec<_> = head.select(&job_api, mint + 1, maxt - 1).collect();
        assert_eq!(collect(&part[0]), expect[101..250].to_vec());

        let name_up = [Matcher::equal("__name__", "up")];
        let both: Vec<_> = head.select(&name_up, 0, 0).collect();
        assert_eq!(both.len(), 2);
        assert_eq!(both[0].labels, &up("api"));
        assert_eq!(collect(&both[1]), vec![(0, 1.0)]);
    }

    #[test]
    fn select_leaves_out_series_without_samples_in_range() {
        let mut head = Head::new();
        head.append(&up("a"), 1000, 1.0).expect("append");
        head.append(&up("a"), 5000, 1.0).expect("append");
        head.append(&up("b"), 3000, 1.0).expect("append");
        head.series_id(&up("empty"));
        let name_up = [Matcher::equal("__name__", "up")];
        let jobs = |mint, maxt| -> Vec<String> {
            head.select(&name_up, mint, maxt)
                .map(|s| s.labels.get("job").unwrap_or("").to_owned())
                .collect()
        };
        assert_eq!(jobs(i64::MIN, i64::MAX), ["a", "b"]);
        // Inside a's chunk but between its samples.
        assert_eq!(jobs(2000, 4000), ["b"]);
        assert_eq!(jobs(6000, 9000), Vec::<String>::new());
        assert_eq!(jobs(5000, 5000), ["a"]);
        // An empty range.
        assert_eq!(jobs(4000, 2000), Vec::<String>::new());
        let re = Matcher::new(MatchOp::RegexMatch, "job", "a|b").expect("regex");
        assert_eq!(head.select(&[re], 0, 10_000).count(), 2);
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let mut head = Head::new();
        let id = head.append(&up("api"), 2000, 1.0).expect("append");
        let err = head.append(&up("api"), 1000, 1.0).expect_err("older");
        assert_eq!(
            err.to_string(),
            r#"out-of-order sample for up{job="api"}: 1000 ms is older than its last sample at 2000 ms"#
        );
        // The same sample again is accepted and stored once.
        head.append_id(id, 2000, 1.0).expect("repeat");
        assert_eq!(head.stats().samples, 1);
        assert_eq!(
            head.append_id(id, 2000, 2.0),
            Err(AppendError::Duplicate {
                series: r#"up{job="api"}"#.into(),
                t: 2000
            })
        );
        // NaNs compare by bits: the staleness marker differs from a NaN.
        head.append_id(id, 3000, f64::NAN).expect("nan");
        head.append_id(id, 3000, f64::NAN).expect("same nan");
        assert!(matches!(
            head.append_id(id, 3000, f64::from_bits(crate::STALE_NAN_BITS)),
            Err(AppendError::Duplicate { .. })
        ));
        assert_eq!(
            head.append_id(SeriesId(99), 0, 0.0),
            Err(AppendError::UnknownSeries(99))
        );
        // Another series has its own order.
        head.append(&up("db"), 0, 1.0).expect("other series");
    }

    #[test]
    fn drop_before_keeps_only_newer_samples_and_the_order_check() {
        let mut head = Head::new();
        for i in 0..500 {
            head.append(&up("a"), i * 10, i as f64).expect("append");
        }
        head.append(&up("b"), 100, 1.0).expect("append");
        // 1234 falls inside a chunk: its older part is re-encoded away.
        assert_eq!(head.drop_before(1234).expect("drop"), 124 + 1);
        let s: Vec<_> = head.select(&[], i64::MIN, i64::MAX).collect();
        assert_eq!(s.len(), 1);
        let got = collect(&s[0]);
        assert_eq!(got.first(), Some(&(1240, 124.0)));
        assert_eq!(got.len(), 376);
        let stats = head.stats();
        assert_eq!((stats.samples, stats.min_time), (376, Some(1240)));
        // b has no samples left but still refuses older ones.
        assert!(head.append(&up("b"), 50, 1.0).is_err());
        assert_eq!(head.drop_before(i64::MAX).expect("drop"), 376);
        assert_eq!(head.stats().min_time, None);
    }

    #[test]
    fn staleness_markers_survive_the_head() {
        let mut head = Head::new();
        head.append(&up("api"), 0, 1.0).expect("append");
        head.append(&up("api"), 15_000, f64::from_bits(crate::STALE_NAN_BITS))
            .expect("append");
        let s: Vec<_> = head
            .select(&[Matcher::equal("job", "api")], 0, 15_000)
            .collect();
        let samples = collect(&s[0]);
        assert_eq!(samples[1].1.to_bits(), crate::STALE_NAN_BITS);
    }

    #[test]
    fn random_appends_read_back_like_a_reference() {
        for seed in 0..50 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut head = Head::new();
            let jobs = ["a", "b", "c", "d"];
            let mut reference: Vec<Vec<(i64, u64)>> = vec![Vec::new(); jobs.len()];
            for _ in 0..rng.usize(0..2000) {
                let j = rng.usize(0..jobs.len());
                let last = reference[j].last().map_or(0, |s| s.0);
                let t = last + rng.i64(-5..200);
                let v = rng.f64();
                let result = head.append(&up(jobs[j]), t, v);
                match reference[j].last() {
                    Some(&(lt, _)) if t <= lt => assert!(result.is_err()),
                    _ => {
                        result.expect("in order");
                        reference[j].push((t, v.to_bits()));
                    }
                }
            }
            for _ in 0..20 {
                let mint = rng.i64(-100..100_000);
                let maxt = mint + rng.i64(0..50_000);
                let got: Vec<(String, Vec<(i64, u64)>)> = head
                    .select(&[Matcher::equal("__name__", "up")], mint, maxt)
                    .map(|s| {
                        let samples = s.samples().map(|r| r.map(|(t, v)| (t, v.to_bits())));
                        (
                            s.labels.get("job").unwrap_or("").to_owned(),
                            samples.collect::<Result<_, _>>().expect("samples"),
                        )
                    })
                    .collect();
                let expect: Vec<(String, Vec<(i64, u64)>)> = jobs
                    .iter()
                    .zip(&reference)
                    .filter_map(|(job, samples)| {
                        let inside: Vec<_> = samples
                            .iter()
                            .copied()
                            .filter(|s| (mint..=maxt).contains(&s.0))
                            .collect();
                        (!inside.is_empty()).then(|| ((*job).to_owned(), inside))
                    })
                    .collect();
                // Series come sorted by labels, here by job.
                assert_eq!(got, expect, "seed {seed} [{mint}, {maxt}]");
            }
        }
    }
}
