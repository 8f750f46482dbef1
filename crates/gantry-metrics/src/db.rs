//! The whole store on disk: the head with its WAL, the immutable blocks,
//! and the upkeep that cuts, downsamples and deletes them.
//!
//! # Files
//!
//! [`Db::open`] takes the store's directory, `<data>/metrics/` on a
//! server, and owns everything in it:
//!
//! - `wal/`: the WAL's segments ([`crate::wal`]);
//! - `blocks/<mint>-<maxt>-<raw|1m|1h>/`: one directory per block
//!   ([`crate::block`]);
//! - `blocks/.tmp-<id>/`: a block being written, and `blocks/.del-<id>/`:
//!   one being deleted; either is left only by a crash and is removed by
//!   the next open. Other names in `blocks/` are ignored; a block that
//!   does not open stops the open with an error naming its file;
//! - `head_start`: the end of the last cut in ms (decimal text, written
//!   atomically at each cut), so samples the WAL still holds but a block
//!   took — even one retention has since deleted — never come back.
//!
//! # Upkeep
//!
//! The caller runs [`Db::maintain`] now and then (each minute, say) with
//! the time in ms; nothing here reads a clock. In order:
//!
//! 1. **Cut.** Once the head's newest sample is half a block range past
//!    the end of the range its oldest sample falls in (ranges are
//!    [`DbOptions::block_range`] long, 2 h by default, aligned to
//!    multiples of it), that range's samples become a raw block; then the
//!    head drops them ([`Head::drop_before`]) and the WAL segments that
//!    only hold older samples are deleted ([`crate::Wal::truncate_before`]).
//!    From then on a sample older than the range's end is refused
//!    ([`AppendError::OutOfBounds`]). A crash between the block and the
//!    truncation is harmless: open drops what the WAL replays that a block
//!    already holds.
//! 2. **Downsample.** A raw block whose end is more than
//!    [`DbOptions::raw_retention`] (24 h) old is rewritten as a `1m` block
//!    of the same range (min, max, sum and count per series per minute,
//!    see [`crate::block`]); once a whole [`DbOptions::hour_block_range`]
//!    (1 d, aligned) is more than [`DbOptions::minute_retention`] (7 d)
//!    old, its `1m` blocks become one `1h` block of that range. The finer
//!    blocks are deleted once the coarser one is on disk; should a crash
//!    leave both, open deletes the finer.
//! 3. **Retention.** Blocks whose end is more than [`DbOptions::retention`]
//!    old are deleted; then, while the blocks take more than
//!    [`DbOptions::max_bytes`], the oldest are deleted. The head and the
//!    WAL are not counted: they hold at most about 1.5 block ranges.
//!
//! # Queries
//!
//! [`Db::select`] answers raw samples from the raw blocks and the head;
//! their ranges never overlap (the head starts where the last block ends),
//! so a series' samples are the sources' samples one after the other,
//! sorted, and a timestamp is never answered twice. Ranges that are only
//! kept downsampled have no raw samples: [`Db::select_aggregate`] answers
//! one aggregate (min, max, sum or count) at one step (1 m or 1 h) across
//! all the data, from the blocks of that resolution and, for newer data,
//! computed on the fly from the finer blocks and the head, so a query
//! sees one series whatever the age of its data.
//!
//! An aggregate ignores staleness markers; an ordinary NaN is ignored by
//! min and max (unless every value is NaN) and makes the sum NaN.

use crate::block::{
    Block, BlockError, BlockMeta, Kind, Resolution, SeriesData, TMP_PREFIX, io_err, sync_dir,
    write_block,
};
use crate::chunk::ChunkError;
use crate::head::HeadStats;
use crate::head::{AppendError, Head};
use crate::index::Matcher;
use crate::labels::Labels;
use crate::tsdb::{BatchReport, Tsdb, WalOwner};
use crate::wal::{OpenReport, Wal, WalError, WalOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A minute and an hour, in ms.
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// The prefix of a block directory being deleted.
const DEL_PREFIX: &str = ".del-";

/// The file holding the head's start (the end of the last cut), in
/// decimal ms: it outlives the blocks, which retention may delete.
const HEAD_START_FILE: &str = "head_start";

/// How the store keeps its data. Durations are in ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbOptions {
    pub wal: WalOptions,
    /// The time range of a block (2 h); a whole number of hours.
    pub block_range: i64,
    /// How long raw samples are kept before they are downsampled to 1 m
    /// (24 h).
    pub raw_retention: i64,
    /// How long 1 m aggregates are kept before they are downsampled to
    /// 1 h (7 d).
    pub minute_retention: i64,
    /// The time range of a 1 h block (1 d), a multiple of `block_range`:
    /// the 1 m blocks of a whole range become one 1 h block once all of it
    /// is older than `minute_retention`, so an hour's few points per
    /// series are not spread over many small blocks.
    pub hour_block_range: i64,
    /// Blocks older than this are deleted (90 d); `None` keeps them.
    pub retention: Option<i64>,
    /// The oldest blocks are deleted while all of them take more bytes
    /// than this; `None`, no limit.
    pub max_bytes: Option<u64>,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            wal: WalOptions::default(),
            block_range: 2 * HOUR,
            raw_retention: 24 * HOUR,
            minute_retention: 7 * 24 * HOUR,
            hour_block_range: 24 * HOUR,
            retention: Some(90 * 24 * HOUR),
            max_bytes: None,
        }
    }
}

impl DbOptions {
    fn check(&self) -> Result<(), DbError> {
        let bad = |s: String| Err(DbError::Options(s));
        if self.block_range <= 0 || self.block_range % HOUR != 0 {
            return bad(format!(
                "block_range must be a whole number of hours, not {} ms",
                self.block_range
            ));
        }
        if self.hour_block_range <= 0 || self.hour_block_range % self.block_range != 0 {
            return bad(format!(
                "hour_block_range ({} ms) must be a multiple of block_range ({} ms)",
                self.hour_block_range, self.block_range
            ));
        }
        if self.raw_retention < 0 || self.minute_retention < self.raw_retention {
            return bad(format!(
                "need 0 <= raw_retention ({} ms) <= minute_retention ({} ms)",
                self.raw_retention, self.minute_retention
            ));
        }
        if self.retention.is_some_and(|r| r < 0) {
            return bad("retention must not be negative".into());
        }
        Ok(())
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error("cannot read the samples of {what}")]
    Read {
        what: String,
        #[source]
        source: ChunkError,
    },
    #[error("invalid metrics store options: {0}")]
    Options(String),
}

/// A series and its samples, as [`Db::select`] answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// What [`Db::open`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbOpenReport {
    pub wal: OpenReport,
    pub blocks: usize,
    /// `.tmp-` and `.del-` directories a crash left, removed.
    pub removed_partial: Vec<PathBuf>,
    /// Blocks whose downsampled copy exists, removed.
    pub removed_superseded: Vec<PathBuf>,
    /// Samples the WAL replayed that a block already holds, dropped.
    pub dropped_replayed: u64,
}

/// What [`Db::maintain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaintainReport {
    /// New raw blocks cut from the head.
    pub cut: Vec<String>,
    /// New downsampled blocks.
    pub downsampled: Vec<String>,
    /// Blocks deleted by age, then by size.
    pub expired: Vec<String>,
    pub over_size: Vec<String>,
    /// WAL segments deleted.
    pub wal_segments_removed: usize,
}

/// Sizes, for `gantry metrics status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbStats {
    pub head: HeadStats,
    /// Blocks, their bytes on disk and samples (aggregate points count
    /// one each), per resolution: raw, 1m, 1h.
    pub blocks: [usize; 3],
    pub block_bytes: [u64; 3],
    pub block_samples: [u64; 3],
    /// The oldest time any block holds.
    pub min_time: Option<i64>,
}

/// The store: head, WAL and blocks. A server shares it in an
/// `Arc<Mutex<Db>>` with a [`crate::Syncer`], which syncs its WAL.
#[derive(Debug)]
pub struct Db {
    blocks_dir: PathBuf,
    options: DbOptions,
    tsdb: Tsdb,
    /// Sorted by (mint, resolution).
    blocks: Vec<Block>,
    /// Samples before this are in blocks and refused by the head.
    min_valid: i64,
    /// `<dir>/head_start`.
    head_start_path: PathBuf,
}

impl Db {
    /// Opens (or creates) the store in `dir` (see the module docs).
    pub fn open(dir: impl AsRef<Path>, options: DbOptions) -> Result<(Db, DbOpenReport), DbError> {
        options.check()?;
        let dir = dir.as_ref();
        let blocks_dir = dir.join("blocks");
        std::fs::create_dir_all(&blocks_dir).map_err(io_err("create directory", &blocks_dir))?;
        let mut report = DbOpenReport::default();
        let mut blocks = Vec::new();
        let entries = std::fs::read_dir(&blocks_dir).map_err(io_err("list", &blocks_dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list", &blocks_dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_dir = entry.file_type().map_err(io_err("stat", &path))?.is_dir();
            if !is_dir {
                continue;
            }
            if name.starts_with(TMP_PREFIX) || name.starts_with(DEL_PREFIX) {
                std::fs::remove_dir_all(&path).map_err(io_err("remove directory", &path))?;
                report.removed_partial.push(path);
                continue;
            }
            if is_block_id(&name) {
                blocks.push(Block::open(&path)?);
            }
        }
        if !report.removed_partial.is_empty() {
            sync_dir(&blocks_dir)?;
        }
        // A finer block inside a coarser one's range: its downsampling
        // finished but its deletion did not.
        let superseded: Vec<usize> = (0..blocks.len())
            .filter(|&i| {
                let f = blocks[i].meta();
                blocks.iter().any(|c| {
                    let c = c.meta();
                    c.resolution > f.resolution && c.mint <= f.mint && f.maxt <= c.maxt
                })
            })
            .collect();
        for &i in superseded.iter().rev() {
            let block = blocks.remove(i);
            remove_block(&blocks_dir, &block)?;
            report.removed_superseded.push(block.dir().to_owned());
        }
        blocks.sort_by_key(|b| (b.meta().mint, b.meta().resolution));
        report.blocks = blocks.len();

        let (mut tsdb, wal_report) = Tsdb::open(dir.join("wal"), options.wal.clone())?;
        report.wal = wal_report;
        let head_start_path = dir.join(HEAD_START_FILE);
        let head_start = match std::fs::read_to_string(&head_start_path) {
            Ok(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| BlockError::Corrupt {
                    path: head_start_path.clone(),
                    reason: format!("`{}` is not a time in ms", text.trim()),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => i64::MIN,
            Err(e) => return Err(io_err("read", &head_start_path)(e).into()),
        };
        let min_valid = blocks
            .iter()
            .map(|b| b.meta().maxt)
            .max()
            .unwrap_or(i64::MIN)
            .max(head_start);
        if min_valid > i64::MIN {
            report.dropped_replayed = drop_head_before(tsdb.head_mut(), min_valid)?;
        }
        Ok((
            Db {
                blocks_dir,
                options,
                tsdb,
                blocks,
                min_valid,
                head_start_path,
            },
            report,
        ))
    }

    pub fn options(&self) -> &DbOptions {
        &self.options
    }

    pub fn head(&self) -> &Head {
        self.tsdb.head()
    }

    /// The head and WAL, for syncing ([`Tsdb::tick`]) and the WAL's state.
    pub fn tsdb_mut(&mut self) -> &mut Tsdb {
        &mut self.tsdb
    }

    /// The blocks, oldest first.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    pub fn stats(&self) -> DbStats {
        let mut stats = DbStats {
            head: self.tsdb.head().stats(),
            min_time: self.blocks.first().map(|b| b.meta().mint),
            ..DbStats::default()
        };
        for b in &self.blocks {
            let i = match b.meta().resolution {
                Resolution::Raw => 0,
                Resolution::Minute => 1,
                Resolution::Hour => 2,
            };
            stats.blocks[i] += 1;
            stats.block_bytes[i] += b.size_bytes();
            stats.block_samples[i] += b.meta().samples;
        }
        stats
    }

    /// The bytes all blocks take on disk.
    pub fn blocks_bytes(&self) -> u64 {
        self.blocks.iter().map(Block::size_bytes).sum()
    }

    /// The oldest timestamp the head takes: the end of the newest block.
    pub fn min_valid_time(&self) -> i64 {
        self.min_valid
    }

    /// Appends and logs samples, like [`Tsdb::append_batch`]; a sample
    /// older than [`Db::min_valid_time`] is refused
    /// ([`AppendError::OutOfBounds`]).
    pub fn append_batch<'a>(
        &mut self,
        samples: impl IntoIterator<Item = (&'a Labels, i64, f64)>,
    ) -> Result<BatchReport, WalError> {
        let min_valid = self.min_valid;
        let mut out_of_bounds = BatchReport::default();
        let in_bounds: Vec<_> = samples
            .into_iter()
            .filter(|&(labels, t, _)| {
                if t >= min_valid {
                    return true;
                }
                out_of_bounds.refused += 1;
                out_of_bounds
                    .first_refusal
                    .get_or_insert_with(|| AppendError::OutOfBounds {
                        series: labels.to_string(),
                        t,
                        min_valid,
                    });
                false
            })
            .collect();
        let mut report = self.tsdb.append_batch(in_bounds)?;
        report.refused += out_of_bounds.refused;
        if out_of_bounds.first_refusal.is_some() {
            report.first_refusal = out_of_bounds.first_refusal;
        }
        Ok(report)
    }

    /// Cuts, downsamples and deletes blocks as due at `now` (ms); see the
    /// module docs.
    pub fn maintain(&mut self, now: i64) -> Result<MaintainReport, DbError> {
        let mut report = MaintainReport::default();
        self.cut_head(&mut report)?;
        self.downsample(now, &mut report)?;
        self.apply_retention(now, &mut report)?;
        Ok(report)
    }

    /// Step 1: raw blocks from the head while it spans enough.
    fn cut_head(&mut self, report: &mut MaintainReport) -> Result<(), DbError> {
        let range = self.options.block_range;
        loop {
            let stats = self.tsdb.head().stats();
            let (Some(min), Some(max)) = (stats.min_time, stats.max_time) else {
                return Ok(());
            };
            let mint = min.div_euclid(range).saturating_mul(range);
            let maxt = mint.saturating_add(range);
            if max < maxt.saturating_add(range / 2) {
                return Ok(());
            }
            let mut series = Vec::new();
            for s in self.tsdb.head().select(&[], mint, maxt - 1) {
                let samples = s
                    .samples()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| DbError::Read {
                        what: format!("{} in the head", s.labels),
                        source,
                    })?;
                series.push(SeriesData {
                    labels: s.labels.clone(),
                    data: vec![(Kind::Raw, samples)],
                });
            }
            let block = write_block(&self.blocks_dir, mint, maxt, Resolution::Raw, series)?;
            report.cut.push(block.meta().id.clone());
            self.insert_block(block);
            self.min_valid = self.min_valid.max(maxt);
            // Before the WAL forgets: a reopen must not take the cut
            // samples back into the head, even once retention deleted
            // the block.
            let text = self.min_valid.to_string();
            gantry_common::write_atomic(&self.head_start_path, text.as_bytes(), 0o644)
                .map_err(io_err("write", &self.head_start_path))?;
            drop_head_before(self.tsdb.head_mut(), maxt)?;
            report.wal_segments_removed += self.tsdb.truncate_wal_before(maxt)?.removed.len();
        }
    }

    /// Step 2: raw → 1 m → 1 h by age.
    fn downsample(&mut self, now: i64, report: &mut MaintainReport) -> Result<(), DbError> {
        let steps = [
            (
                Resolution::Raw,
                Resolution::Minute,
                self.options.raw_retention,
                self.options.block_range,
            ),
            (
                Resolution::Minute,
                Resolution::Hour,
                self.options.minute_retention,
                self.options.hour_block_range,
            ),
        ];
        for (from, to, age, group) in steps {
            let cutoff = now.saturating_sub(age);
            // Sources by the range of the block they become: every block of
            // `from` inside a range that has wholly aged past the cutoff.
            let mut groups: BTreeMap<i64, Vec<PathBuf>> = BTreeMap::new();
            for b in &self.blocks {
                let m = b.meta();
                let start = m.mint.div_euclid(group).saturating_mul(group);
                let end = start.saturating_add(group);
                if m.resolution == from && m.maxt <= end && end <= cutoff {
                    groups.entry(start).or_default().push(b.dir().to_owned());
                }
            }
            for (start, dirs) in groups {
                let end = start.saturating_add(group);
                // Already there (options changed since): left to retention.
                if self.blocks_in(to, start, end - 1).next().is_some() {
                    continue;
                }
                let sources: Vec<&Block> = self
                    .blocks
                    .iter()
                    .filter(|b| dirs.iter().any(|d| d == b.dir()))
                    .collect();
                let series = aggregate_blocks(&sources, to)?;
                let block = write_block(&self.blocks_dir, start, end, to, series)?;
                report.downsampled.push(block.meta().id.clone());
                for dir in &dirs {
                    if let Some(i) = self.blocks.iter().position(|b| b.dir() == dir) {
                        let old = self.blocks.remove(i);
                        remove_block(&self.blocks_dir, &old)?;
                    }
                }
                self.insert_block(block);
            }
        }
        Ok(())
    }

    /// Step 3: by age, then by size, oldest first.
    fn apply_retention(&mut self, now: i64, report: &mut MaintainReport) -> Result<(), DbError> {
        if let Some(retention) = self.options.retention {
            let cutoff = now.saturating_sub(retention);
            while let Some(i) = self.blocks.iter().position(|b| b.meta().maxt < cutoff) {
                let block = self.blocks.remove(i);
                remove_block(&self.blocks_dir, &block)?;
                report.expired.push(block.meta().id.clone());
            }
        }
        if let Some(limit) = self.options.max_bytes {
            while self.blocks_bytes() > limit && !self.blocks.is_empty() {
                // Sorted by mint: the first is the oldest.
                let block = self.blocks.remove(0);
                remove_block(&self.blocks_dir, &block)?;
                report.over_size.push(block.meta().id.clone());
            }
        }
        Ok(())
    }

    fn insert_block(&mut self, block: Block) {
        let key = |b: &Block| (b.meta().mint, b.meta().resolution);
        let at = self.blocks.partition_point(|b| key(b) < key(&block));
        self.blocks.insert(at, block);
    }

    /// Raw samples of the series passing every matcher in `[mint, maxt]`
    /// (both included), from the raw blocks and the head, sorted by labels,
    /// each series' samples in time order; series without samples there
    /// are left out.
    pub fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Result<Vec<Series>, DbError> {
        let mut out: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        for block in self.blocks_in(Resolution::Raw, mint, maxt) {
            for s in block.select(matchers, mint, maxt) {
                let what = || format!("{} in block {}", s.labels, block.meta().id);
                extend(out.entry(s.labels.clone()).or_default(), &s, what)?;
            }
        }
        for s in self.tsdb.head().select(matchers, mint, maxt) {
            let what = || format!("{} in the head", s.labels);
            extend(out.entry(s.labels.clone()).or_default(), &s, what)?;
        }
        Ok(out
            .into_iter()
            .map(|(labels, mut samples)| {
                if !samples.is_sorted_by_key(|s| s.0) {
                    samples.sort_by_key(|s| s.0);
                }
                samples.dedup_by_key(|s| s.0);
                Series { labels, samples }
            })
            .collect())
    }

    /// One aggregate at one step (`Minute` or `Hour`; `Raw` is
    /// [`Db::select`]) of the series passing every matcher, one point per
    /// step at the step's start, for the steps starting in `[mint, maxt]`:
    /// from the blocks of that resolution, and computed from the finer
    /// blocks and the head for the rest. Data kept only at a coarser
    /// resolution is not answered.
    pub fn select_aggregate(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        resolution: Resolution,
        kind: Kind,
    ) -> Result<Vec<Series>, DbError> {
        let step = resolution.step_ms();
        if step == 0 || kind == Kind::Raw {
            return self.select(matchers, mint, maxt);
        }
        // Every sample of the steps that start in [mint, maxt].
        let lo = mint.div_euclid(step).saturating_mul(step);
        let hi = maxt
            .div_euclid(step)
            .saturating_mul(step)
            .saturating_add(step - 1);
        let mut out: BTreeMap<Labels, BTreeMap<i64, Agg>> = BTreeMap::new();
        for block in &self.blocks {
            let meta = block.meta();
            if meta.resolution > resolution || meta.mint > hi || meta.maxt <= lo {
                continue;
            }
            for (labels, points) in block_aggregates(block, matchers, lo, hi)? {
                let steps = out.entry(labels).or_default();
                for (t, agg) in points {
                    steps
                        .entry(step_start(t, step))
                        .or_insert_with(Agg::empty)
                        .merge(&agg);
                }
            }
        }
        for s in self.tsdb.head().select(matchers, lo, hi) {
            let steps = out.entry(s.labels.clone()).or_default();
            for sample in s.samples() {
                let (t, v) = sample.map_err(|source| DbError::Read {
                    what: format!("{} in the head", s.labels),
                    source,
                })?;
                steps
                    .entry(step_start(t, step))
                    .or_insert_with(Agg::empty)
                    .add(v);
            }
        }
        Ok(out
            .into_iter()
            .filter_map(|(labels, steps)| {
                let samples: Vec<(i64, f64)> = steps
                    .range(mint..=maxt)
                    .filter(|(_, a)| a.count > 0.0)
                    .map(|(&t, a)| (t, a.get(kind)))
                    .collect();
                (!samples.is_empty()).then_some(Series { labels, samples })
            })
            .collect())
    }

    /// The label names of the head and the blocks that overlap `[mint,
    /// maxt]`, sorted, for `/api/v1/labels`. Like Prometheus, a block or
    /// the head counts whole: a name may belong to a series with no
    /// sample in the range.
    pub fn label_names(&self, mint: i64, maxt: i64) -> Vec<String> {
        let mut names = std::collections::BTreeSet::new();
        for index in self.indexes(mint, maxt) {
            names.extend(index.label_names().map(str::to_owned));
        }
        names.into_iter().collect()
    }

    /// The values of label `name` likewise, for `/api/v1/label/<name>/values`.
    pub fn label_values(&self, name: &str, mint: i64, maxt: i64) -> Vec<String> {
        let mut values = std::collections::BTreeSet::new();
        for index in self.indexes(mint, maxt) {
            values.extend(index.label_values(name).map(str::to_owned));
        }
        values.into_iter().collect()
    }

    fn indexes(&self, mint: i64, maxt: i64) -> impl Iterator<Item = &crate::index::MemIndex> {
        let head = self.tsdb.head();
        let stats = head.stats();
        let head_overlaps = match (stats.min_time, stats.max_time) {
            (Some(lo), Some(hi)) => lo <= maxt && hi >= mint,
            _ => false,
        };
        self.blocks
            .iter()
            .filter(move |b| b.meta().mint <= maxt && b.meta().maxt > mint)
            .map(Block::index)
            .chain(head_overlaps.then(|| head.index()))
    }

    /// The blocks of one resolution that may hold samples in `[mint,
    /// maxt]`.
    fn blocks_in(
        &self,
        resolution: Resolution,
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = &Block> + '_ {
        self.blocks.iter().filter(move |b| {
            let m = b.meta();
            m.resolution == resolution && m.mint <= maxt && m.maxt > mint
        })
    }
}

impl WalOwner for Db {
    fn wal_mut(&mut self) -> &mut Wal {
        self.tsdb.wal_mut()
    }
}

/// Whether `name` is a block directory's, `<mint>-<maxt>-<resolution>`;
/// other names in `blocks/` are left alone.
fn is_block_id(name: &str) -> bool {
    let mut parts = name.rsplitn(2, '-');
    let (Some(res), Some(range)) = (parts.next(), parts.next()) else {
        return false;
    };
    if !["raw", "1m", "1h"].contains(&res) {
        return false;
    }
    // The range's `-` is the first one after the first character (mint
    // may be negative, maxt too).
    range
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '-')
        .is_some_and(|(i, _)| {
            range[..i].parse::<i64>().is_ok() && range[i + 1..].parse::<i64>().is_ok()
        })
}

fn drop_head_before(head: &mut Head, t: i64) -> Result<u64, DbError> {
    head.drop_before(t).map_err(|source| DbError::Read {
        what: "the head".into(),
        source,
    })
}

fn extend(
    out: &mut Vec<(i64, f64)>,
    s: &crate::head::SelectedSeries<'_>,
    what: impl Fn() -> String,
) -> Result<(), DbError> {
    for sample in s.samples() {
        out.push(sample.map_err(|source| DbError::Read {
            what: what(),
            source,
        })?);
    }
    Ok(())
}

/// Deletes a block: renamed to `.del-<id>` first, so a crash halfway
/// leaves a name the next open removes, never a block with missing files.
fn remove_block(blocks_dir: &Path, block: &Block) -> Result<(), DbError> {
    let gone = blocks_dir.join(format!("{DEL_PREFIX}{}", block.meta().id));
    std::fs::rename(block.dir(), &gone).map_err(io_err("rename a deleted block to", &gone))?;
    sync_dir(blocks_dir)?;
    std::fs::remove_dir_all(&gone).map_err(io_err("remove directory", &gone))?;
    Ok(())
}

// === aggregates ===

/// The start of the step of `t` (clamped at `i64::MIN`).
fn step_start(t: i64, step: i64) -> i64 {
    t.div_euclid(step).saturating_mul(step)
}

/// Min, max, sum and count of the samples of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agg {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: f64,
}

impl Agg {
    /// No samples yet (NaN min and max are replaced by the first value).
    pub fn empty() -> Self {
        Agg {
            min: f64::NAN,
            max: f64::NAN,
            sum: 0.0,
            count: 0.0,
        }
    }

    /// Adds a raw sample; staleness markers are not data.
    pub fn add(&mut self, v: f64) {
        if crate::is_stale_nan(v) {
            return;
        }
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1.0;
    }

    /// Adds the aggregate of other samples.
    pub fn merge(&mut self, other: &Agg) {
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
        self.count += other.count;
    }

    pub fn get(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Min => self.min,
            Kind::Max => self.max,
            Kind::Sum | Kind::Raw => self.sum,
            Kind::Count => self.count,
        }
    }
}

/// A series' aggregates by time.
type AggSeries = (Labels, Vec<(i64, Agg)>);

/// Every series of `block` as aggregates per point in `[lo, hi]`: a raw
/// block's samples one by one, a downsampled block's stored aggregates.
fn block_aggregates(
    block: &Block,
    matchers: &[Matcher],
    lo: i64,
    hi: i64,
) -> Result<Vec<AggSeries>, DbError> {
    let read_err = |labels: &Labels| {
        let what = format!("{labels} in block {}", block.meta().id);
        move |source| DbError::Read { what, source }
    };
    let mut out = Vec::new();
    if block.meta().resolution == Resolution::Raw {
        for s in block.select(matchers, lo, hi) {
            let mut points = Vec::new();
            for sample in s.samples() {
                let (t, v) = sample.map_err(read_err(s.labels))?;
                let mut agg = Agg::empty();
                agg.add(v);
                if agg.count > 0.0 {
                    points.push((t, agg));
                }
            }
            out.push((s.labels.clone(), points));
        }
        return Ok(out);
    }
    let mut by_series: BTreeMap<Labels, BTreeMap<i64, Agg>> = BTreeMap::new();
    for kind in Kind::AGGREGATES {
        for s in block.select_kind(matchers, lo, hi, kind) {
            let points = by_series.entry(s.labels.clone()).or_default();
            for sample in s.samples() {
                let (t, v) = sample.map_err(read_err(s.labels))?;
                let agg = points.entry(t).or_insert_with(Agg::empty);
                match kind {
                    Kind::Min => agg.min = v,
                    Kind::Max => agg.max = v,
                    Kind::Sum => agg.sum = v,
                    Kind::Count | Kind::Raw => agg.count = v,
                }
            }
        }
    }
    out.extend(
        by_series
            .into_iter()
            .map(|(labels, points)| (labels, points.into_iter().collect())),
    );
    Ok(out)
}

/// Blocks' series rolled up to `to`'s step, as the data of one block.
fn aggregate_blocks(blocks: &[&Block], to: Resolution) -> Result<Vec<SeriesData>, DbError> {
    let step = to.step_ms();
    let mut all: BTreeMap<Labels, BTreeMap<i64, Agg>> = BTreeMap::new();
    for block in blocks {
        let meta: &BlockMeta = block.meta();
        for (labels, points) in block_aggregates(block, &[], meta.mint, meta.maxt - 1)? {
            let steps = all.entry(labels).or_default();
            for (t, agg) in points {
                steps
                    .entry(step_start(t, step))
                    .or_insert_with(Agg::empty)
                    .merge(&agg);
            }
        }
    }
    Ok(all
        .into_iter()
        .map(|(labels, steps)| {
            let data = Kind::AGGREGATES
                .iter()
                .map(|&kind| (kind, steps.iter().map(|(&t, a)| (t, a.get(kind))).collect()))
                .collect();
            SeriesData { labels, data }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::MatchOp;
    use std::time::Duration;

    type Reference = BTreeMap<Labels, Vec<(i64, f64)>>;

    fn job(i: usize) -> Labels {
        Labels::new([
            ("__name__", "req_total"),
            ("job", ["api", "db", "web"][i % 3]),
            ("instance", &format!("i{i}")),
        ])
        .expect("labels")
    }

    fn options() -> DbOptions {
        DbOptions {
            wal: WalOptions {
                segment_size: 16 << 10,
                sync_interval: Duration::from_millis(10),
            },
            retention: None,
            ..DbOptions::default()
        }
    }

    /// Appends `series` series every 15 s (some samples skipped, a few
    /// staleness markers and NaNs) from `from` to `to`, maintaining every
    /// 10 minutes, and records what was appended.
    fn fill(db: &mut Db, rng: &mut fastrand::Rng, reference: &mut Reference, from: i64, to: i64) {
        let series: Vec<Labels> = (0..6).map(job).collect();
        let mut t = from;
        while t < to {
            let mut batch = Vec::new();
            for (i, labels) in series.iter().enumerate() {
                // i5 starts late, i4 stops early: series come and go.
                if rng.u8(0..10) == 0
                    || (i == 5 && t < from + 3 * HOUR)
                    || (i == 4 && t > to - 3 * HOUR)
                {
                    continue;
                }
                let v = match rng.u16(0..2000) {
                    0..40 => f64::from_bits(crate::STALE_NAN_BITS),
                    40 => f64::NAN,
                    _ => (rng.f64() * 1000.0).round() / 8.0,
                };
                let st = t + rng.i64(0..1000);
                batch.push((labels, st, v));
                reference.entry(labels.clone()).or_default().push((st, v));
            }
            let report = db.append_batch(batch).expect("append");
            assert_eq!(report.refused, 0, "{report:?}");
            if t % (10 * MINUTE) == 0 {
                db.maintain(t).expect("maintain");
            }
            t += 15_000;
        }
    }

    fn bits(series: &[Series]) -> Vec<(Labels, Vec<(i64, u64)>)> {
        series
            .iter()
            .map(|s| {
                let samples = s.samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
                (s.labels.clone(), samples)
            })
            .collect()
    }

    fn expect_raw(
        reference: &Reference,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<(Labels, Vec<(i64, u64)>)> {
        reference
            .iter()
            .filter(|(l, _)| matchers.iter().all(|m| m.matches_labels(l)))
            .filter_map(|(l, samples)| {
                let inside: Vec<_> = samples
                    .iter()
                    .filter(|s| (mint..=maxt).contains(&s.0))
                    .map(|&(t, v)| (t, v.to_bits()))
                    .collect();
                (!inside.is_empty()).then(|| (l.clone(), inside))
            })
            .collect()
    }

    fn check_raw(db: &Db, reference: &Reference, rng: &mut fastrand::Rng, from: i64, to: i64) {
        let matchers = [
            vec![],
            vec![Matcher::equal("job", "api")],
            vec![Matcher::new(MatchOp::RegexMatch, "instance", "i[3-5]").expect("re")],
        ];
        for m in &matchers {
            for _ in 0..10 {
                let mint = rng.i64(from - HOUR..to);
                let maxt = mint + rng.i64(0..6 * HOUR);
                let got = bits(&db.select(m, mint, maxt).expect("select"));
                assert_eq!(
                    got,
                    expect_raw(reference, m, mint, maxt),
                    "{m:?} [{mint}, {maxt}]"
                );
            }
            let got = bits(&db.select(m, i64::MIN, i64::MAX).expect("select"));
            assert_eq!(got, expect_raw(reference, m, i64::MIN, i64::MAX));
        }
    }

    fn block_ids(db: &Db) -> Vec<String> {
        db.blocks().iter().map(|b| b.meta().id.clone()).collect()
    }

    #[test]
    fn the_head_is_cut_into_blocks_and_queries_merge_them() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
        let mut rng = fastrand::Rng::with_seed(1);
        let mut reference = Reference::new();
        fill(&mut db, &mut rng, &mut reference, 0, 9 * HOUR);
        // Cut once the head reaches half a range past a range's end:
        // [0, 2h) at 3h, … [4h, 6h) at 7h; the head holds 6h to 9h.
        assert_eq!(
            block_ids(&db),
            [
                "0-7200000-raw",
                "7200000-14400000-raw",
                "14400000-21600000-raw"
            ]
        );
        assert_eq!(db.min_valid_time(), 6 * HOUR);
        assert!(db.head().stats().min_time >= Some(6 * HOUR));
        let on_disk: u64 = db.blocks().iter().map(|b| b.meta().samples).sum();
        let all: usize = reference.values().map(Vec::len).sum();
        assert_eq!(on_disk + db.head().sample_count(), all as u64);
        // The WAL's older segments went with the cuts.
        assert!(db.tsdb_mut().wal().segment_paths().count() < 20);
        check_raw(&db, &reference, &mut rng, 0, 9 * HOUR);

        // A sample older than the head's start is refused, typed.
        let l = job(0);
        let report = db.append_batch([(&l, 6 * HOUR - 1, 1.0)]).expect("append");
        assert_eq!(report.refused, 1);
        assert!(matches!(
            report.first_refusal,
            Some(AppendError::OutOfBounds { t, min_valid, .. }) if t == 6 * HOUR - 1 && min_valid == 6 * HOUR
        ));
    }

    #[test]
    fn a_reopened_store_sees_its_blocks_and_its_wal_and_drops_crash_leftovers() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut rng = fastrand::Rng::with_seed(2);
        let mut reference = Reference::new();
        {
            let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
            fill(&mut db, &mut rng, &mut reference, 0, 7 * HOUR + 30 * MINUTE);
            assert_eq!(db.blocks().len(), 3);
        }
        // Leftovers of a crash: a half-written block and a half-deleted one.
        let blocks = tmp.path().join("blocks");
        let tmp_block = blocks.join(".tmp-21600000-28800000-raw");
        std::fs::create_dir(&tmp_block).expect("mkdir");
        std::fs::write(tmp_block.join("chunks"), b"GMBC\x01half").expect("write");
        std::fs::create_dir(blocks.join(".del-0-7200000-1m")).expect("mkdir");
        let (mut db, report) = Db::open(tmp.path(), options()).expect("reopen");
        assert_eq!(report.blocks, 3);
        assert_eq!(report.removed_partial.len(), 2, "{report:?}");
        assert!(!tmp_block.exists());
        // The WAL's current segment still held samples the last block has.
        assert!(report.dropped_replayed > 0, "{report:?}");
        assert_eq!(db.min_valid_time(), 6 * HOUR);
        check_raw(&db, &reference, &mut rng, 0, 8 * HOUR);
        // And it goes on from there.
        fill(
            &mut db,
            &mut rng,
            &mut reference,
            7 * HOUR + 30 * MINUTE,
            10 * HOUR,
        );
        assert_eq!(db.blocks().len(), 4);
        check_raw(&db, &reference, &mut rng, 0, 10 * HOUR);
    }

    #[test]
    fn retention_deletes_blocks_by_age_then_by_size() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
        let mut rng = fastrand::Rng::with_seed(3);
        let mut reference = Reference::new();
        fill(&mut db, &mut rng, &mut reference, 0, 11 * HOUR);
        assert_eq!(db.blocks().len(), 4);
        // By age: a block goes once its end is older than now - retention.
        db.options.retention = Some(3 * HOUR);
        let report = db.maintain(7 * HOUR).expect("maintain");
        assert_eq!(report.expired, ["0-7200000-raw"]);
        let report = db.maintain(7 * HOUR + 1).expect("maintain");
        assert_eq!(report.expired, ["7200000-14400000-raw"]);
        assert!(report.over_size.is_empty());
        let report = db.maintain(7 * HOUR).expect("again");
        assert!(report.expired.is_empty(), "{report:?}");
        assert!(!tmp.path().join("blocks/0-7200000-raw").exists());
        // Nothing older than the oldest block left is answered.
        assert!(db.select(&[], 0, 4 * HOUR - 1).expect("select").is_empty());
        // By size: the oldest go until the rest fit.
        let sizes: Vec<u64> = db.blocks().iter().map(Block::size_bytes).collect();
        db.options.retention = None;
        db.options.max_bytes = Some(sizes[1] + 1);
        let report = db.maintain(7 * HOUR).expect("maintain");
        assert_eq!(report.over_size, ["14400000-21600000-raw"]);
        assert_eq!(block_ids(&db), ["21600000-28800000-raw"]);
        assert!(db.blocks_bytes() <= sizes[1] + 1);
        db.options.max_bytes = Some(0);
        db.maintain(7 * HOUR).expect("maintain");
        assert!(db.blocks().is_empty());
        // The head is untouched.
        let tail = expect_raw(&reference, &[], 8 * HOUR, i64::MAX);
        assert_eq!(
            bits(&db.select(&[], 8 * HOUR, i64::MAX).expect("select")),
            tail
        );
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("blocks"))
            .expect("ls")
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    /// The plain reference: every non-stale sample of each series grouped
    /// by step.
    fn expect_aggregate(
        reference: &Reference,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        step: i64,
        kind: Kind,
    ) -> Vec<(Labels, Vec<(i64, f64)>)> {
        let mut out = Vec::new();
        for (labels, samples) in reference {
            if !matchers.iter().all(|m| m.matches_labels(labels)) {
                continue;
            }
            let mut steps: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for &(t, v) in samples {
                if v.to_bits() != crate::STALE_NAN_BITS {
                    steps.entry(t - t.rem_euclid(step)).or_default().push(v);
                }
            }
            let points: Vec<(i64, f64)> = steps
                .range(mint..=maxt)
                .map(|(&t, vs)| {
                    let v = match kind {
                        Kind::Min => vs.iter().copied().fold(f64::NAN, f64::min),
                        Kind::Max => vs.iter().copied().fold(f64::NAN, f64::max),
                        Kind::Sum | Kind::Raw => vs.iter().sum(),
                        Kind::Count => vs.len() as f64,
                    };
                    (t, v)
                })
                .collect();
            if !points.is_empty() {
                out.push((labels.clone(), points));
            }
        }
        out
    }

    fn assert_close(got: &[Series], want: &[(Labels, Vec<(i64, f64)>)], what: &str) {
        let got: Vec<_> = got.iter().map(|s| (&s.labels, s.samples.len())).collect();
        let lens: Vec<_> = want.iter().map(|(l, s)| (l, s.len())).collect();
        assert_eq!(got, lens, "{what}");
    }

    fn check_aggregates(
        db: &Db,
        reference: &Reference,
        rng: &mut fastrand::Rng,
        from: i64,
        to: i64,
        resolution: Resolution,
    ) {
        let step = resolution.step_ms();
        let matchers = [vec![], vec![Matcher::equal("job", "db")]];
        for m in &matchers {
            for kind in Kind::AGGREGATES {
                let mut ranges = vec![(from, to)];
                for _ in 0..5 {
                    let mint = rng.i64(from..to);
                    ranges.push((mint, mint + rng.i64(0..5 * HOUR)));
                }
                for (mint, maxt) in ranges {
                    let what = format!("{resolution:?} {kind:?} {m:?} [{mint}, {maxt}]");
                    let got = db
                        .select_aggregate(m, mint, maxt, resolution, kind)
                        .expect("select");
                    let want = expect_aggregate(reference, m, mint, maxt, step, kind);
                    assert_close(&got, &want, &what);
                    for (g, (_, w)) in got.iter().zip(&want) {
                        for (&(gt, gv), &(wt, wv)) in g.samples.iter().zip(w) {
                            let close = gv == wv
                                || (gv.is_nan() && wv.is_nan())
                                || (gv - wv).abs() <= 1e-9 * gv.abs().max(wv.abs());
                            assert!(
                                gt == wt && close,
                                "{what} {}: got ({gt}, {gv}), want ({wt}, {wv})",
                                g.labels
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn old_blocks_are_downsampled_and_aggregates_match_a_reference() {
        let tmp = tempfile::tempdir().expect("tmp");
        let options = DbOptions {
            raw_retention: 4 * HOUR,
            minute_retention: 8 * HOUR,
            hour_block_range: 4 * HOUR,
            ..options()
        };
        let (mut db, _) = Db::open(tmp.path(), options.clone()).expect("open");
        let mut rng = fastrand::Rng::with_seed(4);
        let mut reference = Reference::new();
        fill(&mut db, &mut rng, &mut reference, 0, 16 * HOUR);
        let now = 16 * HOUR - 15_000;
        db.maintain(now).expect("maintain");
        // 4 h ranges that end before now - 8 h: one 1 h block each; raw
        // blocks that end before now - 4 h: 1 m; then raw.
        assert_eq!(
            block_ids(&db),
            [
                "0-14400000-1h",
                "14400000-21600000-1m",
                "21600000-28800000-1m",
                "28800000-36000000-1m",
                "36000000-43200000-raw",
                "43200000-50400000-raw",
            ]
        );
        // Every step of every series, whatever holds it.
        check_aggregates(&db, &reference, &mut rng, 0, 16 * HOUR, Resolution::Hour);
        // Minutes where minutes or raw samples are kept.
        check_aggregates(
            &db,
            &reference,
            &mut rng,
            4 * HOUR,
            16 * HOUR,
            Resolution::Minute,
        );
        // Older minutes are gone, and so are raw samples before 10 h.
        assert!(
            db.select_aggregate(&[], 0, 4 * HOUR - 1, Resolution::Minute, Kind::Max)
                .expect("select")
                .is_empty()
        );
        let raw = bits(&db.select(&[], i64::MIN, i64::MAX).expect("select"));
        assert_eq!(raw, expect_raw(&reference, &[], 10 * HOUR, i64::MAX));
        // A 1 h block holds four points per series and takes a fraction of
        // a raw block's bytes.
        let hour = &db.blocks()[0];
        assert_eq!(hour.meta().resolution, Resolution::Hour);
        let raw = &db.blocks()[5];
        assert_eq!(raw.meta().resolution, Resolution::Raw);
        assert!(
            hour.size_bytes() * 10 < raw.size_bytes(),
            "{} vs {}",
            hour.size_bytes(),
            raw.size_bytes()
        );

        // A crash after a downsampled block was written but before its
        // source was deleted leaves both: open keeps the coarser.
        let stale_raw = write_block(
            &tmp.path().join("blocks"),
            6 * HOUR,
            8 * HOUR,
            Resolution::Raw,
            vec![SeriesData {
                labels: job(0),
                data: vec![(Kind::Raw, vec![(6 * HOUR, 1.0)])],
            }],
        )
        .expect("write");
        drop(db);
        let (db, report) = Db::open(tmp.path(), options).expect("reopen");
        assert_eq!(report.removed_superseded, [stale_raw.dir().to_owned()]);
        check_aggregates(&db, &reference, &mut rng, 0, 16 * HOUR, Resolution::Hour);
        check_aggregates(
            &db,
            &reference,
            &mut rng,
            4 * HOUR,
            16 * HOUR,
            Resolution::Minute,
        );
    }

    #[test]
    fn cut_samples_stay_out_of_the_head_after_their_blocks_are_deleted() {
        let tmp = tempfile::tempdir().expect("tmp");
        // One big WAL segment: it still holds every sample when reopened.
        let options = DbOptions {
            wal: WalOptions {
                segment_size: 64 << 20,
                ..options().wal
            },
            max_bytes: Some(0),
            ..options()
        };
        let mut rng = fastrand::Rng::with_seed(5);
        let mut reference = Reference::new();
        {
            let (mut db, _) = Db::open(tmp.path(), options.clone()).expect("open");
            fill(&mut db, &mut rng, &mut reference, 0, 5 * HOUR);
            assert!(db.blocks().is_empty(), "deleted by size");
        }
        let (db, report) = Db::open(tmp.path(), options).expect("reopen");
        assert_eq!(db.min_valid_time(), 2 * HOUR);
        assert!(report.dropped_replayed > 0);
        let want = expect_raw(&reference, &[], 2 * HOUR, i64::MAX);
        assert_eq!(
            bits(&db.select(&[], i64::MIN, i64::MAX).expect("select")),
            want
        );
    }

    #[test]
    fn a_damaged_block_stops_the_open_naming_its_file_and_strangers_are_ignored() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut rng = fastrand::Rng::with_seed(6);
        {
            let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
            fill(&mut db, &mut rng, &mut Reference::new(), 0, 4 * HOUR);
            assert_eq!(db.blocks().len(), 1);
        }
        std::fs::create_dir(tmp.path().join("blocks/lost+found")).expect("mkdir");
        std::fs::create_dir(tmp.path().join("blocks/notes-1-raw")).expect("mkdir");
        Db::open(tmp.path(), options()).expect("strangers ignored");
        let index = tmp.path().join("blocks/0-7200000-raw/index");
        let mut bytes = std::fs::read(&index).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x40;
        std::fs::write(&index, bytes).expect("write");
        let err = Db::open(tmp.path(), options()).expect_err("damaged");
        assert!(
            matches!(&err, DbError::Block(e) if e.path() == Some(index.as_path())),
            "{err}"
        );
        assert!(err.to_string().contains("0-7200000-raw/index"), "{err}");
        std::fs::write(tmp.path().join("head_start"), "soon").expect("write");
        std::fs::remove_dir_all(tmp.path().join("blocks/0-7200000-raw")).expect("rm");
        let err = Db::open(tmp.path(), options()).expect_err("bad head_start");
        assert!(err.to_string().contains("head_start"), "{err}");
    }

    #[test]
    fn block_ids_are_told_from_other_names() {
        for good in [
            "0-7200000-raw",
            "-7200000-0-1m",
            "-2-1-1h",
            "5-9223372036854775807-raw",
        ] {
            assert!(is_block_id(good), "{good}");
        }
        for bad in [
            "lost+found",
            "notes-1-raw",
            "0-7200000",
            "0-1-2h",
            "0--raw",
            "-raw",
            "",
        ] {
            assert!(!is_block_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_syncer_syncs_a_shared_db_and_stats_count_blocks() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
        let mut rng = fastrand::Rng::with_seed(8);
        fill(&mut db, &mut rng, &mut Reference::new(), 0, 6 * HOUR);
        let stats = db.stats();
        assert_eq!(stats.blocks, [2, 0, 0]);
        assert_eq!(stats.block_bytes[0], db.blocks_bytes());
        assert_eq!(stats.min_time, Some(0));
        assert!(stats.head.min_time >= Some(4 * HOUR));
        let db = std::sync::Arc::new(std::sync::Mutex::new(db));
        let syncer = crate::Syncer::start(db.clone()).expect("start");
        let l = job(0);
        gantry_common::lock(&db)
            .append_batch([(&l, 6 * HOUR, 1.0)])
            .expect("append");
        drop(syncer);
        let mut db = gantry_common::lock(&db);
        assert!(!db.tsdb_mut().wal().is_dirty());
    }

    #[test]
    fn label_names_and_values_come_from_blocks_and_head_in_range() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, _) = Db::open(tmp.path(), options()).expect("open");
        let mut rng = fastrand::Rng::with_seed(9);
        // i4 stops at 3 h before the end, i5 starts at 3 h.
        fill(&mut db, &mut rng, &mut Reference::new(), 0, 8 * HOUR);
        assert_eq!(
            db.label_names(i64::MIN, i64::MAX),
            ["__name__", "instance", "job"]
        );
        let all = db.label_values("instance", i64::MIN, i64::MAX);
        assert_eq!(all, ["i0", "i1", "i2", "i3", "i4", "i5"]);
        // [0, 2 h) is one block, without i5.
        let early = db.label_values("instance", 0, HOUR);
        assert_eq!(early, ["i0", "i1", "i2", "i3", "i4"]);
        assert!(db.label_values("nope", i64::MIN, i64::MAX).is_empty());
        assert!(db.label_names(-10, -1).is_empty());
    }

    #[test]
    fn timestamps_at_the_ends_of_i64_are_no_panic() {
        let tmp = tempfile::tempdir().expect("tmp");
        let options = DbOptions {
            raw_retention: 0,
            minute_retention: 0,
            ..options()
        };
        let (mut db, _) = Db::open(tmp.path(), options.clone()).expect("open");
        let l = job(0);
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            db.append_batch([(&l, t, 1.0)]).expect("append");
            // Errors are fine (a range that cannot end), panics are not.
            let _ = db.maintain(t);
            let _ = db.maintain(i64::MAX);
            let _ = db.maintain(i64::MIN);
        }
        for resolution in [Resolution::Raw, Resolution::Minute, Resolution::Hour] {
            for (mint, maxt) in [
                (i64::MIN, i64::MAX),
                (i64::MAX, i64::MIN),
                (i64::MAX, i64::MAX),
            ] {
                db.select_aggregate(&[], mint, maxt, resolution, Kind::Sum)
                    .expect("select");
            }
        }
        drop(db);
        Db::open(tmp.path(), options).expect("reopen");
    }

    #[test]
    fn bad_options_are_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let bad = DbOptions {
            block_range: 90 * MINUTE,
            ..options()
        };
        let err = Db::open(tmp.path(), bad).expect_err("90 min");
        assert!(err.to_string().contains("whole number of hours"), "{err}");
        let bad = DbOptions {
            hour_block_range: 5 * HOUR,
            ..options()
        };
        let err = Db::open(tmp.path(), bad).expect_err("5 h of 2 h blocks");
        assert!(err.to_string().contains("multiple of block_range"), "{err}");
    }
}
