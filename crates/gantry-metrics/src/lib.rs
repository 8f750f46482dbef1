//! Gantry's embedded time-series store, Prometheus-compatible.
//!
//! The design, from the newest sample to the oldest:
//!
//! 1. **Head** ([`head`]): the last hours of every series in memory. A
//!    series is a [`Labels`] set with an id from the [`index`], and a list
//!    of compressed [`chunk`]s of up to [`head::CHUNK_SAMPLES`] samples; the
//!    last chunk is the one appended to.
//! 2. **Chunks** ([`chunk`]): the Gorilla scheme — timestamps (i64
//!    milliseconds) as delta-of-deltas, values (f64) as the XOR with the
//!    previous value inside a window of meaningful bits. A regular scrape
//!    costs about two bytes a sample. Every f64 bit pattern round-trips,
//!    Prometheus's staleness marker included.
//! 3. **Index** ([`index`]): a series id per label set and a sorted postings
//!    list per (name, value); selectors with `=`, `!=`, `=~` and `!~` are
//!    intersections, unions and differences of postings lists.
//! 4. **WAL** ([`wal`]): every append is logged before it is acknowledged
//!    and synced (fdatasync) at most once per interval, 1 s by default, so
//!    a crash loses at most that interval; segment files of 32 MiB in a
//!    directory the caller gives, the head rebuilt by replaying them on
//!    open, stopping cleanly at a torn tail. [`Tsdb`] is head + WAL, and
//!    [`Syncer`] the background thread a server runs to sync on time.
//! 5. **Blocks** ([`block`]): the head is cut into an immutable on-disk
//!    block per two-hour range `[mint, maxt)` (a chunks file in the same
//!    encoding, an index of label sets, postings and chunk refs, and
//!    `meta.json`; CRCs everywhere, written to a temp dir and renamed),
//!    and the WAL truncated. [`Db`] ([`db`]) is head + WAL + blocks:
//!    `maintain(now)` cuts, downsamples and applies retention on the
//!    caller's time; `select` merges raw blocks and head per series.
//! 6. **Retention and downsampling** ([`db`]): raw samples are kept 24 h
//!    by default, then rewritten as 1 min aggregates (min, max, sum, count
//!    per series, the original labels kept, one chunk list per aggregate)
//!    and after 7 d as 1 h ones (one block per day), answered by
//!    `select_aggregate`; blocks
//!    past the retention age or the size limit are deleted oldest first.
//!
//! 1–3, the WAL's record format and sync policy, and the block encoding
//! are a pure core, no I/O, no threads, no clock (callers pass timestamps
//! and instants); the WAL's and the blocks' files and [`Syncer`] are the
//! only I/O and the only thread. It is not wired into the server yet;
//! scraping, PromQL and the HTTP API come with the rest of issue 14.
//!
//! Scraping starts with [`exposition`]: the Prometheus text format parsed
//! into samples and metadata, with a `sample_limit`, every malformed line a
//! typed error with its line and column.
//!
//! **Files on disk.** [`Db`] owns one directory, `<data>/metrics/` on a
//! server, and everything in it:
//!
//! - `wal/`: the WAL's segments `00000001`, `00000002`, … (other names
//!   are not read);
//! - `blocks/<mint>-<maxt>-<raw|1m|1h>/{chunks,index,meta.json}`: the
//!   blocks; `blocks/.tmp-*` and `blocks/.del-*` are a crash's leftovers,
//!   removed on open; other names are ignored;
//! - `head_start`: where the head starts (the end of the last cut, ms).
//!
//! Bad input — corrupt chunk bytes, damaged block files, invalid label names, out-of-order
//! samples, malformed regexes — is a typed error, never a panic.
#![forbid(unsafe_code)]

pub mod bits;
pub mod block;
pub mod chunk;
pub mod db;
pub mod exposition;
pub mod head;
pub mod index;
pub mod labels;
pub mod promql;
pub mod tsdb;
pub mod wal;

pub use block::{Block, BlockError, BlockMeta, Kind, Resolution};
pub use chunk::{Chunk, ChunkError, ChunkIter};
pub use db::{Db, DbError, DbOptions, DbStats, Series};
pub use head::{AppendError, Head, HeadStats, Samples, SelectedSeries};
pub use index::{MatchOp, Matcher, MatcherError, MemIndex, SeriesId};
pub use labels::{Label, LabelError, Labels};
pub use tsdb::{BatchReport, Syncer, Tsdb, WalOwner};
pub use wal::{Wal, WalError, WalOptions};

/// Prometheus's staleness marker: a NaN with this exact bit pattern marks a
/// series that disappeared from its target. It must survive storage
/// bit-exactly, unlike an ordinary NaN which only needs to stay a NaN.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus's staleness marker ([`STALE_NAN_BITS`]).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}
