//! Immutable on-disk blocks: the samples of a time range `[mint, maxt)`,
//! written once, read many times, deleted whole.
//!
//! # Files
//!
//! A block is a directory `<blocks>/<mint>-<maxt>-<resolution>/` (for
//! example `7200000-14400000-raw`; the resolution is `raw`, `1m` or `1h`)
//! holding three files:
//!
//! - `chunks`: the magic `GMBC`, a version byte (1), then every chunk's
//!   bytes in the [`crate::chunk`] encoding, each followed by its CRC-32
//!   (IEEE, little-endian).
//! - `index`: the magic `GMBI`, a version byte (1), then two sections,
//!   each a u32 little-endian length, the payload and the payload's CRC-32:
//!   1. **series**, sorted by labels (a series' id in the block is its
//!      position): `uv` count, then per series `uv` label count, per label
//!      the name and the value (`uv` length + bytes), `uv` chunk count, and
//!      per chunk its kind (one byte: 0 raw, 1 min, 2 max, 3 sum, 4
//!      count), `zv` first and last timestamp, `uv` offset and `uv` length
//!      in `chunks`;
//!   2. **postings**: `uv` count, then per (name, value) pair, in order,
//!      the name, the value, `uv` id count and the ids as `uv` deltas.
//! - `meta.json`: id, mint, maxt, resolution and the series, sample and
//!   chunk counts ([`BlockMeta`]), checked against the index on open.
//!
//! (`uv` is an unsigned LEB128 varint, `zv` a zigzag one.)
//!
//! # Aggregates
//!
//! A downsampled block (`1m`, `1h`) keeps the original label sets; each
//! series has four chunk lists instead of one, min, max, sum and count,
//! one sample per step at the step's start time. No label is added, so a
//! selector matches a downsampled series exactly as it matched the raw
//! one; the caller asks for the [`Kind`] it needs ([`Block::select_kind`]).
//!
//! # Writing
//!
//! [`write_block`] writes the files into `<blocks>/.tmp-<id>/` (each with
//! [`gantry_common::write_atomic`]: written, fsynced, renamed), renames
//! that directory to `<id>` and fsyncs `<blocks>`, so a block either
//! exists in full or not at all; a crash leaves at most a `.tmp-` directory,
//! which [`crate::db::Db::open`] removes.
//!
//! # Reading
//!
//! [`Block::open`] reads the whole block into memory and checks every
//! CRC, every chunk's decoding and the counts: a damaged or truncated file
//! is a [`BlockError`] naming it, never a panic.

use crate::chunk::{Chunk, ChunkError};
use crate::head::{CHUNK_SAMPLES, SelectedSeries};
use crate::index::{Matcher, MemIndex, SeriesId};
use crate::labels::Labels;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CHUNKS_MAGIC: &[u8; 4] = b"GMBC";
const INDEX_MAGIC: &[u8; 4] = b"GMBI";
const VERSION: u8 = 1;

/// The names of a block's files.
pub const CHUNKS_FILE: &str = "chunks";
pub const INDEX_FILE: &str = "index";
pub const META_FILE: &str = "meta.json";

/// The prefix of a block directory being written.
pub const TMP_PREFIX: &str = ".tmp-";

/// The time between samples of a block.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Resolution {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Resolution {
    /// The aggregation step in ms; 0 for raw.
    pub fn step_ms(self) -> i64 {
        match self {
            Resolution::Raw => 0,
            Resolution::Minute => 60_000,
            Resolution::Hour => 3_600_000,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Minute => "1m",
            Resolution::Hour => "1h",
        }
    }
}

/// What a chunk holds: raw samples, or one of the four aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Raw,
    Min,
    Max,
    Sum,
    Count,
}

impl Kind {
    /// The four aggregates, in their on-disk order.
    pub const AGGREGATES: [Kind; 4] = [Kind::Min, Kind::Max, Kind::Sum, Kind::Count];

    fn byte(self) -> u8 {
        match self {
            Kind::Raw => 0,
            Kind::Min => 1,
            Kind::Max => 2,
            Kind::Sum => 3,
            Kind::Count => 4,
        }
    }

    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Raw,
            1 => Kind::Min,
            2 => Kind::Max,
            3 => Kind::Sum,
            4 => Kind::Count,
            _ => return None,
        })
    }
}

/// `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockMeta {
    /// The directory name.
    pub id: String,
    /// The range `[mint, maxt)` in ms.
    pub mint: i64,
    pub maxt: i64,
    pub resolution: Resolution,
    pub series: u64,
    /// Raw samples, or aggregate points (one per series per step).
    pub samples: u64,
    pub chunks: u64,
    pub version: u8,
}

impl BlockMeta {
    /// The directory name of a block.
    pub fn id_for(mint: i64, maxt: i64, resolution: Resolution) -> String {
        format!("{mint}-{maxt}-{}", resolution.as_str())
    }
}

/// Why a block could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot {op} `{}`", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("block file `{}` is corrupt: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("block file `{}` is not valid metadata: {source}", path.display())]
    Meta {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write block {id}: {reason}")]
    Invalid { id: String, reason: String },
}

impl BlockError {
    /// The file or directory at fault.
    pub fn path(&self) -> Option<&Path> {
        match self {
            BlockError::Io { path, .. }
            | BlockError::Corrupt { path, .. }
            | BlockError::Meta { path, .. } => Some(path),
            BlockError::Invalid { .. } => None,
        }
    }
}

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BlockError {
    let path = path.to_owned();
    move |source| BlockError::Io { op, path, source }
}

/// One series to write: its labels and, per kind, its samples in time
/// order (raw blocks: only [`Kind::Raw`]; downsampled: the four
/// aggregates).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub data: Vec<(Kind, Vec<(i64, f64)>)>,
}

/// Writes a block of `series` for `[mint, maxt)` under `blocks_dir`,
/// atomically (see the module docs), and opens it. Series without samples
/// are left out; a sample outside the range or out of order is an
/// [`BlockError::Invalid`].
pub fn write_block(
    blocks_dir: &Path,
    mint: i64,
    maxt: i64,
    resolution: Resolution,
    mut series: Vec<SeriesData>,
) -> Result<Block, BlockError> {
    let id = BlockMeta::id_for(mint, maxt, resolution);
    let invalid = |reason: String| BlockError::Invalid {
        id: id.clone(),
        reason,
    };
    series.retain(|s| s.data.iter().any(|(_, d)| !d.is_empty()));
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    if series.windows(2).any(|w| w[0].labels == w[1].labels) {
        return Err(invalid("a label set appears twice".into()));
    }

    let mut chunks_file = Vec::with_capacity(64);
    chunks_file.extend_from_slice(CHUNKS_MAGIC);
    chunks_file.push(VERSION);
    let mut series_payload = Vec::new();
    let mut index = MemIndex::new();
    let (mut samples, mut chunk_count) = (0u64, 0u64);
    put_uv(&mut series_payload, series.len() as u64);
    for s in &series {
        index.get_or_insert(&s.labels);
        put_uv(&mut series_payload, s.labels.len() as u64);
        for l in &s.labels {
            put_str(&mut series_payload, &l.name);
            put_str(&mut series_payload, &l.value);
        }
        let mut refs = Vec::new();
        for (kind, data) in &s.data {
            for part in data.chunks(CHUNK_SAMPLES) {
                let mut chunk = Chunk::new();
                for &(t, v) in part {
                    if !(mint..maxt).contains(&t) {
                        return Err(invalid(format!(
                            "{} has a sample at {t} ms, outside [{mint}, {maxt})",
                            s.labels
                        )));
                    }
                    chunk
                        .append(t, v)
                        .map_err(|e| invalid(format!("{}: {e}", s.labels)))?;
                }
                let (Some(cmin), Some(cmax)) = (chunk.min_time(), chunk.max_time()) else {
                    continue;
                };
                let offset = chunks_file.len() as u64;
                chunks_file.extend_from_slice(chunk.bytes());
                chunks_file.extend_from_slice(&crc32fast::hash(chunk.bytes()).to_le_bytes());
                refs.push((*kind, cmin, cmax, offset, chunk.bytes().len() as u64));
                samples += chunk.len() as u64;
                chunk_count += 1;
            }
        }
        put_uv(&mut series_payload, refs.len() as u64);
        for (kind, cmin, cmax, offset, len) in refs {
            series_payload.push(kind.byte());
            put_zv(&mut series_payload, cmin);
            put_zv(&mut series_payload, cmax);
            put_uv(&mut series_payload, offset);
            put_uv(&mut series_payload, len);
        }
    }
    let mut postings_payload = Vec::new();
    let lists: Vec<_> = index.postings_lists().collect();
    put_uv(&mut postings_payload, lists.len() as u64);
    for (name, value, ids) in lists {
        put_str(&mut postings_payload, name);
        put_str(&mut postings_payload, value);
        put_uv(&mut postings_payload, ids.len() as u64);
        let mut prev = 0;
        for id in ids {
            put_uv(&mut postings_payload, id.0 - prev);
            prev = id.0;
        }
    }
    let mut index_file = Vec::new();
    index_file.extend_from_slice(INDEX_MAGIC);
    index_file.push(VERSION);
    for payload in [&series_payload, &postings_payload] {
        let len =
            u32::try_from(payload.len()).map_err(|_| invalid("index section over 4 GiB".into()))?;
        index_file.extend_from_slice(&len.to_le_bytes());
        index_file.extend_from_slice(payload);
        index_file.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    }
    let meta = BlockMeta {
        id: id.clone(),
        mint,
        maxt,
        resolution,
        series: series.len() as u64,
        samples,
        chunks: chunk_count,
        version: VERSION,
    };
    let meta_json = serde_json::to_vec_pretty(&meta)
        .map_err(|e| invalid(format!("cannot encode meta.json: {e}")))?;

    std::fs::create_dir_all(blocks_dir).map_err(io_err("create directory", blocks_dir))?;
    let tmp = blocks_dir.join(format!("{TMP_PREFIX}{id}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err("remove directory", &tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io_err("create directory", &tmp))?;
    for (name, bytes) in [
        (CHUNKS_FILE, &chunks_file),
        (INDEX_FILE, &index_file),
        (META_FILE, &meta_json),
    ] {
        let path = tmp.join(name);
        gantry_common::write_atomic(&path, bytes, 0o644).map_err(io_err("write", &path))?;
    }
    let dir = blocks_dir.join(&id);
    std::fs::rename(&tmp, &dir).map_err(io_err("rename a new block to", &dir))?;
    sync_dir(blocks_dir)?;
    Block::open(&dir)
}

/// Fsyncs a directory so the entries just made in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), BlockError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// A series' chunks in a block, per kind, in time order.
#[derive(Debug, Clone, Default)]
struct BlockSeries {
    chunks: Vec<(Kind, Vec<Chunk>)>,
}

impl BlockSeries {
    fn of(&self, kind: Kind) -> &[Chunk] {
        self.chunks
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(&[], |(_, c)| c.as_slice())
    }
}

/// An open block, read into memory.
#[derive(Debug, Clone)]
pub struct Block {
    dir: PathBuf,
    meta: BlockMeta,
    index: MemIndex,
    series: Vec<BlockSeries>,
    bytes: u64,
}

impl Block {
    /// Reads and checks the block in `dir`.
    pub fn open(dir: &Path) -> Result<Block, BlockError> {
        let meta_path = dir.join(META_FILE);
        let meta_bytes = std::fs::read(&meta_path).map_err(io_err("read", &meta_path))?;
        let meta: BlockMeta =
            serde_json::from_slice(&meta_bytes).map_err(|source| BlockError::Meta {
                path: meta_path.clone(),
                source,
            })?;
        let corrupt_meta = |reason: String| BlockError::Corrupt {
            path: meta_path.clone(),
            reason,
        };
        if meta.version != VERSION {
            return Err(corrupt_meta(format!("unknown version {}", meta.version)));
        }
        let id = BlockMeta::id_for(meta.mint, meta.maxt, meta.resolution);
        if meta.id != id || dir.file_name().and_then(|n| n.to_str()) != Some(id.as_str()) {
            return Err(corrupt_meta(format!(
                "id `{}` does not match its range, resolution and directory",
                meta.id
            )));
        }
        if meta.mint >= meta.maxt {
            return Err(corrupt_meta(format!(
                "empty range [{}, {})",
                meta.mint, meta.maxt
            )));
        }

        let chunks_path = dir.join(CHUNKS_FILE);
        let chunks_bytes = std::fs::read(&chunks_path).map_err(io_err("read", &chunks_path))?;
        let corrupt_chunks = |reason: String| BlockError::Corrupt {
            path: chunks_path.clone(),
            reason,
        };
        if chunks_bytes.get(..4) != Some(CHUNKS_MAGIC) || chunks_bytes.get(4) != Some(&VERSION) {
            return Err(corrupt_chunks(
                "not a chunks file (bad magic or version)".into(),
            ));
        }

        let index_path = dir.join(INDEX_FILE);
        let index_bytes = std::fs::read(&index_path).map_err(io_err("read", &index_path))?;
        let corrupt_index = |reason: String| BlockError::Corrupt {
            path: index_path.clone(),
            reason,
        };
        if index_bytes.get(..4) != Some(INDEX_MAGIC) || index_bytes.get(4) != Some(&VERSION) {
            return Err(corrupt_index(
                "not an index file (bad magic or version)".into(),
            ));
        }
        let mut pos = 5;
        let mut sections = Vec::new();
        for name in ["series", "postings"] {
            let section = read_section(&index_bytes, &mut pos)
                .map_err(|r| corrupt_index(format!("{name} section: {r}")))?;
            sections.push(section);
        }
        if pos != index_bytes.len() {
            return Err(corrupt_index(format!(
                "{} bytes after the last section",
                index_bytes.len() - pos
            )));
        }

        // Series.
        let mut c = Reader::new(sections[0]);
        let bad = |r: &str| corrupt_index(format!("series section: {r}"));
        let n = c.count().map_err(&bad)?;
        let mut labels_list = Vec::with_capacity(n);
        let mut series = Vec::with_capacity(n);
        let (mut samples, mut chunk_count) = (0u64, 0u64);
        for _ in 0..n {
            let nl = c.count().map_err(&bad)?;
            let mut pairs = Vec::with_capacity(nl);
            for _ in 0..nl {
                pairs.push((c.str().map_err(&bad)?, c.str().map_err(&bad)?));
            }
            let labels = Labels::new(pairs).map_err(|e| bad(&e.to_string()))?;
            if labels_list.last().is_some_and(|prev| *prev >= labels) {
                return Err(bad("series not sorted by labels"));
            }
            let nc = c.count().map_err(&bad)?;
            let mut s = BlockSeries::default();
            for _ in 0..nc {
                let kind = c
                    .byte()
                    .and_then(|b| Kind::from_byte(b).ok_or("unknown chunk kind"))
                    .map_err(&bad)?;
                let cmin = c.zv().map_err(&bad)?;
                let cmax = c.zv().map_err(&bad)?;
                let offset = c.uv().map_err(&bad)?;
                let len = c.uv().map_err(&bad)?;
                let chunk = read_chunk(&chunks_bytes, offset, len).map_err(|r| {
                    corrupt_chunks(format!("chunk at byte {offset} of {labels}: {r}"))
                })?;
                if chunk.min_time() != Some(cmin) || chunk.max_time() != Some(cmax) {
                    return Err(bad("a chunk's time range differs from its data"));
                }
                if cmin < meta.mint || cmax >= meta.maxt {
                    return Err(corrupt_meta(format!(
                        "{labels} has samples in [{cmin}, {cmax}], outside the block's [{}, {})",
                        meta.mint, meta.maxt
                    )));
                }
                samples += chunk.len() as u64;
                chunk_count += 1;
                match s.chunks.iter_mut().find(|(k, _)| *k == kind) {
                    Some((_, list)) => {
                        if list.last().and_then(Chunk::max_time) >= Some(cmin) {
                            return Err(bad("chunks out of time order"));
                        }
                        list.push(chunk);
                    }
                    None => s.chunks.push((kind, vec![chunk])),
                }
            }
            labels_list.push(labels);
            series.push(s);
        }
        if !c.is_empty() {
            return Err(bad("bytes after the last series"));
        }

        // Postings.
        let mut c = Reader::new(sections[1]);
        let bad = |r: &str| corrupt_index(format!("postings section: {r}"));
        let mut postings: BTreeMap<String, BTreeMap<String, Vec<SeriesId>>> = BTreeMap::new();
        let pairs = c.count().map_err(&bad)?;
        for _ in 0..pairs {
            let name = c.str().map_err(&bad)?;
            let value = c.str().map_err(&bad)?;
            let k = c.count().map_err(&bad)?;
            let mut ids = Vec::with_capacity(k);
            let mut prev: Option<u64> = None;
            for _ in 0..k {
                let d = c.uv().map_err(&bad)?;
                let id = match prev {
                    None => d,
                    Some(p) if d > 0 => p.checked_add(d).ok_or("id overflow").map_err(bad)?,
                    Some(_) => return Err(bad("ids not increasing")),
                };
                if id >= n as u64 {
                    return Err(bad("id of no series"));
                }
                prev = Some(id);
                ids.push(SeriesId(id));
            }
            postings.entry(name).or_default().insert(value, ids);
        }
        if !c.is_empty() {
            return Err(bad("bytes after the last list"));
        }

        if (meta.series, meta.samples, meta.chunks) != (n as u64, samples, chunk_count) {
            return Err(corrupt_meta(format!(
                "counts (series {}, samples {}, chunks {}) differ from the index ({n}, {samples}, {chunk_count})",
                meta.series, meta.samples, meta.chunks
            )));
        }
        let bytes = (meta_bytes.len() + chunks_bytes.len() + index_bytes.len()) as u64;
        Ok(Block {
            dir: dir.to_owned(),
            meta,
            index: MemIndex::from_parts(labels_list, postings),
            series,
            bytes,
        })
    }

    pub fn meta(&self) -> &BlockMeta {
        &self.meta
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size of its files.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// The label index.
    pub fn index(&self) -> &MemIndex {
        &self.index
    }

    /// Raw samples: like [`crate::Head::select`], the series passing every
    /// matcher with a sample in `[mint, maxt]` (both included), sorted by
    /// labels.
    pub fn select<'a>(
        &'a self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
    ) -> impl Iterator<Item = SelectedSeries<'a>> + 'a {
        self.select_kind(matchers, mint, maxt, Kind::Raw)
    }

    /// The same for one kind of chunk (an aggregate in a downsampled
    /// block).
    pub fn select_kind<'a>(
        &'a self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        kind: Kind,
    ) -> impl Iterator<Item = SelectedSeries<'a>> + 'a {
        // Ids are positions in label order, so sorted ids are sorted labels.
        let ids = self.index.select(matchers);
        ids.into_iter().filter_map(move |id| {
            let labels = self.index.labels(id)?;
            let series = self.series.get(usize::try_from(id.0).ok()?)?;
            SelectedSeries::over(id, labels, series.of(kind), mint, maxt)
        })
    }
}

fn read_section<'a>(bytes: &'a [u8], pos: &mut usize) -> Result<&'a [u8], String> {
    let len_bytes = bytes
        .get(*pos..*pos + 4)
        .ok_or("truncated before its length")?;
    let len = u32::from_le_bytes(len_bytes.try_into().map_err(|_| "length")?) as usize;
    let start = *pos + 4;
    let end = start.checked_add(len).ok_or("length overflows")?;
    let payload = bytes
        .get(start..end)
        .ok_or_else(|| format!("truncated: {len} bytes announced"))?;
    let crc_bytes = bytes.get(end..end + 4).ok_or("truncated before its CRC")?;
    let crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| "crc")?);
    if crc32fast::hash(payload) != crc {
        return Err("CRC mismatch".into());
    }
    *pos = end + 4;
    Ok(payload)
}

fn read_chunk(bytes: &[u8], offset: u64, len: u64) -> Result<Chunk, String> {
    let start = usize::try_from(offset).map_err(|_| "offset too large")?;
    let len = usize::try_from(len).map_err(|_| "length too large")?;
    let end = start.checked_add(len).ok_or("length overflows")?;
    if start < 5 {
        return Err("offset inside the header".into());
    }
    let data = bytes.get(start..end).ok_or("past the end of the file")?;
    let crc_bytes = bytes.get(end..end + 4).ok_or("truncated before its CRC")?;
    let crc = u32::from_le_bytes(crc_bytes.try_into().map_err(|_| "crc")?);
    if crc32fast::hash(data) != crc {
        return Err("CRC mismatch".into());
    }
    let chunk = Chunk::from_bytes(data.to_vec()).map_err(|e: ChunkError| e.to_string())?;
    if chunk.is_empty() {
        return Err("empty chunk".into());
    }
    Ok(chunk)
}

// === varints ===

fn put_uv(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zv(out: &mut Vec<u8>, v: i64) {
    put_uv(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_uv(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn byte(&mut self) -> Result<u8, &'static str> {
        let (&b, rest) = self.bytes.split_first().ok_or("truncated")?;
        self.bytes = rest;
        Ok(b)
    }

    fn uv(&mut self) -> Result<u64, &'static str> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long")
    }

    fn zv(&mut self) -> Result<i64, &'static str> {
        let u = self.uv()?;
        Ok(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    /// A count, which cannot exceed the bytes left (each item takes one).
    fn count(&mut self) -> Result<usize, &'static str> {
        let n = self.uv()?;
        if n > self.bytes.len() as u64 {
            return Err("count larger than the data");
        }
        Ok(n as usize)
    }

    fn str(&mut self) -> Result<String, &'static str> {
        let n = self.count()?;
        let (s, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        String::from_utf8(s.to_vec()).map_err(|_| "a string is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Head;
    use crate::index::MatchOp;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(pairs.iter().copied()).expect("labels")
    }

    fn samples(s: &SelectedSeries<'_>) -> Vec<(i64, u64)> {
        s.samples()
            .map(|r| r.map(|(t, v)| (t, v.to_bits())))
            .collect::<Result<_, _>>()
            .expect("samples")
    }

    /// A head of random series and the raw series data of `[mint, maxt)`.
    fn random_head(rng: &mut fastrand::Rng) -> (Head, Vec<SeriesData>) {
        let mut head = Head::new();
        let mut data = Vec::new();
        for i in 0..rng.usize(1..12) {
            let labels = ls(&[
                ("__name__", if i % 3 == 0 { "up" } else { "req_total" }),
                ("job", ["api", "db", "web"][i % 3]),
                ("instance", &format!("i{i}")),
            ]);
            let mut t = rng.i64(0..1000);
            let mut s = Vec::new();
            for _ in 0..rng.usize(0..400) {
                t += rng.i64(1..60_000);
                let v = match rng.u8(0..10) {
                    0 => f64::from_bits(crate::STALE_NAN_BITS),
                    1 => f64::NAN,
                    _ => rng.f64() * 100.0,
                };
                head.append(&labels, t, v).expect("append");
                s.push((t, v));
            }
            data.push(SeriesData {
                labels,
                data: vec![(Kind::Raw, s)],
            });
        }
        (head, data)
    }

    #[test]
    fn a_block_selects_like_the_head() {
        for seed in 0..30 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let (head, data) = random_head(&mut rng);
            let tmp = tempfile::tempdir().expect("tmp");
            let block = write_block(tmp.path(), 0, i64::MAX, Resolution::Raw, data).expect("write");
            let reopened = Block::open(block.dir()).expect("open");
            assert_eq!(reopened.meta(), block.meta());
            assert_eq!(block.meta().samples, head.sample_count());
            let matchers = [
                vec![],
                vec![Matcher::equal("job", "api")],
                vec![Matcher::new(MatchOp::RegexMatch, "instance", "i[0-4]").expect("re")],
                vec![
                    Matcher::equal("__name__", "req_total"),
                    Matcher::new(MatchOp::NotEqual, "job", "db").expect("ne"),
                ],
                vec![Matcher::equal("nope", "")],
            ];
            for m in &matchers {
                for _ in 0..5 {
                    let mint = rng.i64(-1000..10_000_000);
                    let maxt = mint + rng.i64(0..20_000_000);
                    let want: Vec<_> = head
                        .select(m, mint, maxt)
                        .map(|s| (s.labels.clone(), samples(&s)))
                        .collect();
                    let got: Vec<_> = reopened
                        .select(m, mint, maxt)
                        .map(|s| (s.labels.clone(), samples(&s)))
                        .collect();
                    assert_eq!(got, want, "seed {seed} {m:?} [{mint}, {maxt}]");
                }
            }
        }
    }

    #[test]
    fn the_layout_on_disk() {
        let tmp = tempfile::tempdir().expect("tmp");
        let a = ls(&[("__name__", "up")]);
        let block = write_block(
            tmp.path(),
            7_200_000,
            14_400_000,
            Resolution::Minute,
            vec![SeriesData {
                labels: a,
                data: Kind::AGGREGATES
                    .iter()
                    .map(|&k| (k, vec![(7_200_000, 1.0), (7_260_000, 2.0)]))
                    .collect(),
            }],
        )
        .expect("write");
        let dir = tmp.path().join("7200000-14400000-1m");
        assert_eq!(block.dir(), dir);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        assert_eq!(names, ["chunks", "index", "meta.json"]);
        // Nothing else in the blocks directory: no temp dir left.
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
        let meta = block.meta();
        assert_eq!(
            (meta.series, meta.samples, meta.chunks, meta.resolution),
            (1, 8, 4, Resolution::Minute)
        );
        let json = std::fs::read_to_string(dir.join("meta.json")).expect("meta");
        assert!(json.contains(r#""resolution": "1m""#), "{json}");
        let max: Vec<_> = block
            .select_kind(&[], 0, i64::MAX, Kind::Max)
            .map(|s| samples(&s).len())
            .collect();
        assert_eq!(max, [2]);
        assert_eq!(block.select(&[], 0, i64::MAX).count(), 0, "no raw chunks");
        // A sample outside the range is refused before anything is written.
        let err = write_block(
            tmp.path(),
            0,
            10,
            Resolution::Raw,
            vec![SeriesData {
                labels: ls(&[("a", "b")]),
                data: vec![(Kind::Raw, vec![(10, 1.0)])],
            }],
        )
        .expect_err("outside");
        assert!(matches!(err, BlockError::Invalid { .. }), "{err}");
        assert_eq!(std::fs::read_dir(tmp.path()).expect("ls").count(), 1);
    }

    #[test]
    fn every_flipped_or_cut_byte_is_an_error_naming_the_file() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (_, data) = random_head(&mut rng);
        let tmp = tempfile::tempdir().expect("tmp");
        let block = write_block(tmp.path(), 0, i64::MAX, Resolution::Raw, data).expect("write");
        let dir = block.dir().to_owned();
        for name in [INDEX_FILE, CHUNKS_FILE, META_FILE] {
            let path = dir.join(name);
            let good = std::fs::read(&path).expect("read");
            let positions: Vec<usize> = if good.len() <= 3000 {
                (0..good.len()).collect()
            } else {
                (0..3000).map(|_| rng.usize(0..good.len())).collect()
            };
            for &i in &positions {
                let mut bad = good.clone();
                bad[i] ^= 1 << rng.u8(0..8);
                std::fs::write(&path, &bad).expect("write");
                match Block::open(&dir) {
                    Err(e) => assert_eq!(e.path(), Some(path.as_path()), "{name}@{i}: {e}"),
                    // meta.json is text: a flipped bit may still be valid
                    // JSON with the same meaning (whitespace, the id).
                    Ok(b) => assert!(
                        name == META_FILE && b.meta().samples == block.meta().samples,
                        "{name}@{i}"
                    ),
                }
            }
            for cut in (0..good.len()).step_by(good.len() / 200 + 1) {
                std::fs::write(&path, &good[..cut]).expect("write");
                let e = Block::open(&dir).expect_err("truncated");
                assert_eq!(e.path(), Some(path.as_path()), "{name} cut at {cut}: {e}");
            }
            std::fs::write(&path, &good).expect("restore");
        }
        Block::open(&dir).expect("restored");
        std::fs::remove_file(dir.join(INDEX_FILE)).expect("rm");
        let e = Block::open(&dir).expect_err("missing");
        assert!(e.to_string().contains("index"), "{e}");
    }
}
