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
//! 5. **Blocks** (later): the head is cut every two hours into an immutable
//!    on-disk block (chunks, index, metadata) and the WAL truncated.
//! 6. **Retention and downsampling** (later): raw samples are kept 24 h by
//!    default, then 1 min and 1 h aggregates (min, max, sum, count); blocks
//!    past the retention age or the size limit are deleted oldest first.
//!
//! This crate holds 1–4 so far. 1–3 and the WAL's record format and sync
//! policy are a pure core, no I/O, no threads, no clock (callers pass
//! timestamps and instants); the WAL's files and [`Syncer`] are the only
//! I/O and the only thread. It is not wired into the server yet; scraping,
//! PromQL and the HTTP API come with the rest of issue 14.
//!
//! Scraping starts with [`exposition`]: the Prometheus text format parsed
//! into samples and metadata, with a `sample_limit`, every malformed line a
//! typed error with its line and column.
//!
//! **Files on disk.** The store owns one directory, given by the caller:
//! the WAL's, `<data>/metrics/wal/` once the server uses it, holding the
//! segment files `00000001`, `00000002`, … and nothing else it reads. The
//! blocks (5) will live beside it, under `<data>/metrics/`.
//!
//! Bad input — corrupt chunk bytes, invalid label names, out-of-order
//! samples, malformed regexes — is a typed error, never a panic.
#![forbid(unsafe_code)]

pub mod bits;
pub mod chunk;
pub mod exposition;
pub mod head;
pub mod index;
pub mod labels;
pub mod promql;
pub mod tsdb;
pub mod wal;

pub use chunk::{Chunk, ChunkError, ChunkIter};
pub use head::{AppendError, Head, HeadStats, Samples, SelectedSeries};
pub use index::{MatchOp, Matcher, MatcherError, MemIndex, SeriesId};
pub use labels::{Label, LabelError, Labels};
pub use tsdb::{BatchReport, Syncer, Tsdb};
pub use wal::{Wal, WalError, WalOptions};

/// Prometheus's staleness marker: a NaN with this exact bit pattern marks a
/// series that disappeared from its target. It must survive storage
/// bit-exactly, unlike an ordinary NaN which only needs to stay a NaN.
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is Prometheus's staleness marker ([`STALE_NAN_BITS`]).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}
