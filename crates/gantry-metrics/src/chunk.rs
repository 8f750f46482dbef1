//! Gorilla-style compressed chunks of (timestamp, value) samples.
//!
//! Layout: two bytes of sample count (big-endian), then a bit stream with,
//! for each sample, its timestamp and then its value:
//!
//! | sample | timestamp | value |
//! |---|---|---|
//! | 0 | zigzag varint of `t` | the 64 raw bits |
//! | 1 | varint of the delta `t1 - t0` (> 0) | XOR, below |
//! | n ≥ 2 | delta-of-delta `dod`, below | XOR, below |
//!
//! `dod = delta(n) - delta(n-1)` is written as `0` when zero (a regular
//! scrape), `10` + 8 bits, `110` + 14 bits, `1110` + 20 bits (two's
//! complement), or `1111` + the 64-bit wrapping difference, so any two
//! timestamps in i64 range can follow each other.
//!
//! A value is XORed with the previous one. Zero is `0`. Otherwise `1`, then
//! `0` + the bits inside the previous window if the XOR's leading and
//! trailing zeros cover it, or `1` + 5 bits of leading zeros (at most 31) +
//! 6 bits of window length (64 as 0) + the window. Working on bits makes
//! every f64 round-trip exactly: NaN payloads (Prometheus's staleness
//! marker [`crate::STALE_NAN_BITS`]), ±Inf, -0.0.
//!
//! Timestamps in a chunk increase strictly: an earlier sample is
//! [`ChunkError::OutOfOrder`], an equal one [`ChunkError::DuplicateTimestamp`].
//! Decoding checks the same rules, so corrupt bytes give an error, never a
//! panic or a series that goes back in time.

use crate::bits::{BitReader, BitWriter, BitsExhausted};

/// The most samples one chunk holds (its count is two bytes).
pub const MAX_SAMPLES: usize = u16::MAX as usize;

const HEADER_BYTES: usize = 2;

/// What can go wrong appending to or reading a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error(
        "sample at {t} ms is older than the last sample at {last} ms: samples must be appended in time order"
    )]
    OutOfOrder { t: i64, last: i64 },
    #[error("a sample at {t} ms is already stored")]
    DuplicateTimestamp { t: i64 },
    #[error("chunk is full ({MAX_SAMPLES} samples)")]
    Full,
    #[error("chunk data is shorter than its {HEADER_BYTES}-byte header")]
    MissingHeader,
    #[error("chunk data ends after {decoded} of its {expected} samples")]
    Truncated { decoded: u16, expected: u16 },
    #[error("chunk data is corrupt at sample {sample}: {reason}")]
    Corrupt { sample: u16, reason: &'static str },
}

/// The encoder's memory of the previous sample.
#[derive(Debug, Clone, Copy, PartialEq)]
struct State {
    t: i64,
    /// `t - previous t`, always > 0 (0 only before the second sample).
    delta: u64,
    v_bits: u64,
    /// The XOR window of the last value written with a new window:
    /// (leading zeros, trailing zeros).
    window: Option<(u8, u8)>,
}

/// A chunk that can be appended to and read.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    w: BitWriter,
    count: u16,
    min_t: i64,
    last: Option<State>,
}

impl Default for Chunk {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunk {
    pub fn new() -> Self {
        let mut w = BitWriter::new();
        w.write_bits(0, (HEADER_BYTES * 8) as u8);
        Self {
            w,
            count: 0,
            min_t: 0,
            last: None,
        }
    }

    /// Opens encoded bytes (from [`Chunk::bytes`]) so they can be read and
    /// appended to. Every sample is decoded and checked.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, ChunkError> {
        let mut it = ChunkIter::new(&bytes);
        let mut min_t = 0;
        while let Some(sample) = it.next() {
            let (t, _) = sample?;
            if it.decoded == 1 {
                min_t = t;
            }
        }
        // The appender continues in the last byte, so its unused bits must
        // be zero, and nothing may follow.
        let bits = (HEADER_BYTES * 8) as u64 + it.r.position();
        let rest = it.r.remaining();
        if rest >= 8 || it.r.read_bits(rest as u8) != Ok(0) {
            return Err(ChunkError::Corrupt {
                sample: it.total,
                reason: "bytes after the last sample",
            });
        }
        let count = it.total;
        let last = it.state;
        Ok(Self {
            w: BitWriter::from_parts(bytes, bits),
            count,
            min_t,
            last,
        })
    }

    /// Appends a sample later than every sample in the chunk.
    pub fn append(&mut self, t: i64, v: f64) -> Result<(), ChunkError> {
        if usize::from(self.count) >= MAX_SAMPLES {
            return Err(ChunkError::Full);
        }
        let v_bits = v.to_bits();
        let next = match self.last {
            None => {
                write_uvarint(&mut self.w, zigzag(t));
                self.w.write_bits(v_bits, 64);
                self.min_t = t;
                State {
                    t,
                    delta: 0,
                    v_bits,
                    window: None,
                }
            }
            Some(prev) => {
                if t < prev.t {
                    return Err(ChunkError::OutOfOrder { t, last: prev.t });
                }
                if t == prev.t {
                    return Err(ChunkError::DuplicateTimestamp { t });
                }
                // t > prev.t, so the difference fits in u64 even when it
                // does not fit in i64.
                let delta = t.wrapping_sub(prev.t) as u64;
                if self.count == 1 {
                    write_uvarint(&mut self.w, delta);
                } else {
                    write_dod(&mut self.w, prev.delta, delta);
                }
                let window = write_xor(&mut self.w, prev.v_bits ^ v_bits, prev.window);
                State {
                    t,
                    delta,
                    v_bits,
                    window,
                }
            }
        };
        self.last = Some(next);
        self.count += 1;
        let [hi, lo] = self.count.to_be_bytes();
        let header = self.w.bytes_mut();
        header[0] = hi;
        header[1] = lo;
        Ok(())
    }

    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded chunk, header included.
    pub fn bytes(&self) -> &[u8] {
        self.w.bytes()
    }

    /// Timestamp of the first sample.
    pub fn min_time(&self) -> Option<i64> {
        self.last.map(|_| self.min_t)
    }

    /// Timestamp of the last sample.
    pub fn max_time(&self) -> Option<i64> {
        self.last.map(|s| s.t)
    }

    pub fn iter(&self) -> ChunkIter<'_> {
        ChunkIter::new(self.bytes())
    }
}

/// Decodes a chunk's samples in time order.
///
/// Yields `Err` once on corrupt or truncated data, then ends.
#[derive(Debug, Clone)]
pub struct ChunkIter<'a> {
    r: BitReader<'a>,
    total: u16,
    decoded: u16,
    state: Option<State>,
    /// The sample [`ChunkIter::seek`] stopped at, returned again by the next
    /// seek that it satisfies.
    current: Option<(i64, f64)>,
    /// Reported by the first `next`.
    missing_header: bool,
    done: bool,
}

impl<'a> ChunkIter<'a> {
    /// Reads encoded chunk bytes; errors come from [`Iterator::next`].
    pub fn new(bytes: &'a [u8]) -> Self {
        let header = bytes.get(..HEADER_BYTES);
        Self {
            r: BitReader::new(bytes.get(HEADER_BYTES..).unwrap_or(&[])),
            total: header.map_or(0, |h| u16::from_be_bytes([h[0], h[1]])),
            decoded: 0,
            state: None,
            current: None,
            missing_header: header.is_none(),
            done: false,
        }
    }

    /// Number of samples the chunk says it holds.
    pub fn total(&self) -> usize {
        usize::from(self.total)
    }

    /// Moves to the first sample at or after `t` and returns it; `None` when
    /// there is none. Never moves back: after a sample later than `t` was
    /// returned, it is returned again.
    pub fn seek(&mut self, t: i64) -> Result<Option<(i64, f64)>, ChunkError> {
        if let Some(cur) = self.current
            && cur.0 >= t
        {
            return Ok(Some(cur));
        }
        for sample in self.by_ref() {
            let sample = sample?;
            if sample.0 >= t {
                return Ok(Some(sample));
            }
        }
        Ok(None)
    }

    fn fail(&mut self, err: ChunkError) -> Option<Result<(i64, f64), ChunkError>> {
        self.done = true;
        self.current = None;
        Some(Err(err))
    }

    fn decode_next(&mut self) -> Result<(i64, f64), ChunkError> {
        let sample = self.decoded;
        let truncated = |_: BitsExhausted| ChunkError::Truncated {
            decoded: sample,
            expected: self.total,
        };
        let corrupt = |reason| ChunkError::Corrupt { sample, reason };
        let next = match self.state {
            None => {
                let t = unzigzag(read_uvarint(&mut self.r).map_err(|e| match e {
                    VarintError::Exhausted => truncated(BitsExhausted),
                    VarintError::TooLong => corrupt("timestamp varint too long"),
                })?);
                let v_bits = self.r.read_bits(64).map_err(truncated)?;
                State {
                    t,
                    delta: 0,
                    v_bits,
                    window: None,
                }
            }
            Some(prev) => {
                let delta = if sample == 1 {
                    read_uvarint(&mut self.r).map_err(|e| match e {
                        VarintError::Exhausted => truncated(BitsExhausted),
                        VarintError::TooLong => corrupt("delta varint too long"),
                    })?
                } else {
                    read_dod(&mut self.r, prev.delta).map_err(truncated)?
                };
                let t = i64::try_from(i128::from(prev.t) + i128::from(delta))
                    .map_err(|_| corrupt("timestamp beyond i64"))?;
                if delta == 0 {
                    return Err(corrupt("timestamp not after the previous one"));
                }
                let (xor, window) = match read_xor(&mut self.r, prev.window) {
                    Ok(x) => x,
                    Err(XorError::Exhausted) => return Err(truncated(BitsExhausted)),
                    Err(XorError::Corrupt(reason)) => return Err(corrupt(reason)),
                };
                State {
                    t,
                    delta,
                    v_bits: prev.v_bits ^ xor,
                    window,
                }
            }
        };
        self.state = Some(next);
        self.decoded += 1;
        Ok((next.t, f64::from_bits(next.v_bits)))
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<(i64, f64), ChunkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.missing_header {
            return self.fail(ChunkError::MissingHeader);
        }
        if self.decoded >= self.total {
            self.done = true;
            self.current = None;
            return None;
        }
        match self.decode_next() {
            Ok(s) => {
                self.current = Some(s);
                Some(Ok(s))
            }
            Err(e) => self.fail(e),
        }
    }
}

// === encoding helpers ===

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn write_uvarint(w: &mut BitWriter, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            w.write_bits(u64::from(byte), 8);
            return;
        }
        w.write_bits(u64::from(byte | 0x80), 8);
    }
}

enum VarintError {
    Exhausted,
    TooLong,
}

fn read_uvarint(r: &mut BitReader<'_>) -> Result<u64, VarintError> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let byte = r.read_bits(8).map_err(|_| VarintError::Exhausted)?;
        let part = byte & 0x7f;
        // The tenth byte holds only the top bit of a u64.
        if i == 9 && part > 1 {
            return Err(VarintError::TooLong);
        }
        v |= part << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(VarintError::TooLong)
}

/// (prefix, prefix length, payload bits) of the bounded dod buckets.
const DOD_BUCKETS: [(u64, u8, u8); 3] = [(0b10, 2, 8), (0b110, 3, 14), (0b1110, 4, 20)];

fn write_dod(w: &mut BitWriter, prev_delta: u64, delta: u64) {
    let dod = i128::from(delta) - i128::from(prev_delta);
    if dod == 0 {
        w.write_bit(false);
        return;
    }
    for (prefix, prefix_len, bits) in DOD_BUCKETS {
        let half = 1i128 << (bits - 1);
        if (-half..half).contains(&dod) {
            w.write_bits(prefix, prefix_len);
            w.write_bits(dod as u64, bits);
            return;
        }
    }
    w.write_bits(0b1111, 4);
    w.write_bits(delta.wrapping_sub(prev_delta), 64);
}

fn read_dod(r: &mut BitReader<'_>, prev_delta: u64) -> Result<u64, BitsExhausted> {
    let mut ones = 0;
    while ones < 4 && r.read_bit()? {
        ones += 1;
    }
    let diff = match ones {
        0 => 0,
        1..=3 => {
            let bits = DOD_BUCKETS[ones - 1].2;
            let raw = r.read_bits(bits)?;
            // Sign-extend the two's-complement payload.
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        }
        _ => r.read_bits(64)?,
    };
    Ok(prev_delta.wrapping_add(diff))
}

/// Writes one XOR'd value; returns the window in force afterwards.
fn write_xor(w: &mut BitWriter, xor: u64, window: Option<(u8, u8)>) -> Option<(u8, u8)> {
    if xor == 0 {
        w.write_bit(false);
        return window;
    }
    w.write_bit(true);
    let leading = (xor.leading_zeros() as u8).min(31);
    let trailing = xor.trailing_zeros() as u8;
    if let Some((wl, wt)) = window
        && leading >= wl
        && trailing >= wt
    {
        w.write_bit(false);
        w.write_bits(xor >> wt, 64 - wl - wt);
        return window;
    }
    let sig = 64 - leading - trailing;
    w.write_bit(true);
    w.write_bits(u64::from(leading), 5);
    // 64 significant bits do not fit in 6 bits; 0 stands for them (a
    // non-zero XOR never has 0).
    w.write_bits(u64::from(sig % 64), 6);
    w.write_bits(xor >> trailing, sig);
    Some((leading, trailing))
}

enum XorError {
    Exhausted,
    Corrupt(&'static str),
}

impl From<BitsExhausted> for XorError {
    fn from(_: BitsExhausted) -> Self {
        XorError::Exhausted
    }
}

fn read_xor(
    r: &mut BitReader<'_>,
    window: Option<(u8, u8)>,
) -> Result<(u64, Option<(u8, u8)>), XorError> {
    if !r.read_bit()? {
        return Ok((0, window));
    }
    if !r.read_bit()? {
        let (wl, wt) = window.ok_or(XorError::Corrupt("value reuses a window never set"))?;
        let bits = r.read_bits(64 - wl - wt)?;
        return Ok((bits << wt, window));
    }
    let leading = r.read_bits(5)? as u8;
    let sig = match r.read_bits(6)? as u8 {
        0 => 64,
        n => n,
    };
    if u16::from(leading) + u16::from(sig) > 64 {
        return Err(XorError::Corrupt("value window wider than 64 bits"));
    }
    let trailing = 64 - leading - sig;
    let bits = r.read_bits(sig)?;
    Ok((bits << trailing, Some((leading, trailing))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::STALE_NAN_BITS;

    fn encode(samples: &[(i64, f64)]) -> Chunk {
        let mut c = Chunk::new();
        for &(t, v) in samples {
            c.append(t, v).expect("append");
        }
        c
    }

    fn decode(bytes: &[u8]) -> Result<Vec<(i64, u64)>, ChunkError> {
        ChunkIter::new(bytes)
            .map(|s| s.map(|(t, v)| (t, v.to_bits())))
            .collect()
    }

    fn bits_of(samples: &[(i64, f64)]) -> Vec<(i64, u64)> {
        samples.iter().map(|&(t, v)| (t, v.to_bits())).collect()
    }

    /// A random series: regular scrapes with jitter, gaps and huge jumps;
    /// counters, gauges and the special values.
    fn random_series(rng: &mut fastrand::Rng) -> Vec<(i64, f64)> {
        let n = match rng.u8(0..10) {
            0 => rng.usize(0..3),
            1..=7 => rng.usize(0..200),
            _ => rng.usize(0..3000),
        };
        let mut t = match rng.u8(0..4) {
            0 => i64::MIN + rng.i64(0..1000),
            1 => rng.i64(..),
            _ => 1_700_000_000_000 + rng.i64(0..1_000_000),
        };
        let interval = [1, 15, 1000, 15_000, 60_000][rng.usize(0..5)];
        let mut v = 0.0f64;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((t, v));
            let step: i64 = match rng.u8(0..20) {
                0 => rng.i64(1..i64::MAX),
                1 => rng.i64(1..1 << 40),
                2..=5 => interval + rng.i64(-(interval - 1).min(300)..=300),
                _ => interval,
            };
            t = match t.checked_add(step) {
                Some(next) => next,
                None => break,
            };
            v = match rng.u8(0..16) {
                0 => f64::NAN,
                1 => f64::from_bits(STALE_NAN_BITS),
                2 => f64::INFINITY,
                3 => f64::NEG_INFINITY,
                4 => -0.0,
                5 => f64::from_bits(rng.u64(..)),
                6 => v,
                7 => rng.f64() * 1e6,
                8 => (rng.u32(..) as f64).round(),
                _ => v + rng.u8(0..10) as f64,
            };
        }
        out
    }

    #[test]
    fn random_series_round_trip_bit_exactly() {
        for seed in 0..400 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let series = random_series(&mut rng);
            let chunk = encode(&series);
            assert_eq!(chunk.len(), series.len(), "seed {seed}");
            assert_eq!(decode(chunk.bytes()), Ok(bits_of(&series)), "seed {seed}");
            assert_eq!(chunk.min_time(), series.first().map(|s| s.0));
            assert_eq!(chunk.max_time(), series.last().map(|s| s.0));
            // Reopened, the chunk decodes the same and takes more samples.
            let mut reopened = Chunk::from_bytes(chunk.bytes().to_vec()).expect("reopen");
            assert_eq!(reopened, chunk, "seed {seed}");
            if let Some(&(t, _)) = series.last()
                && let Some(next) = t.checked_add(15_000)
            {
                reopened.append(next, 1.5).expect("append after reopen");
                let mut expect = bits_of(&series);
                expect.push((next, 1.5f64.to_bits()));
                assert_eq!(decode(reopened.bytes()), Ok(expect), "seed {seed}");
            }
        }
    }

    #[test]
    fn seek_matches_the_reference() {
        for seed in 0..300 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let series = random_series(&mut rng);
            let chunk = encode(&series);
            for _ in 0..10 {
                let target = match (series.first(), series.last(), rng.u8(0..4)) {
                    (Some(f), Some(l), 0..=2) if f.0 < l.0 => rng.i64(f.0..=l.0),
                    (Some(f), _, 3) => f.0,
                    _ => rng.i64(..),
                };
                let pos = series.partition_point(|s| s.0 < target);
                let mut it = chunk.iter();
                let got = it.seek(target).expect("seek");
                assert_eq!(
                    got.map(|s| s.0),
                    series.get(pos).map(|s| s.0),
                    "seed {seed}"
                );
                // Seeking again, or to an earlier time, stays put.
                assert_eq!(
                    it.seek(target).expect("seek").map(|s| s.0),
                    got.map(|s| s.0)
                );
                assert_eq!(
                    it.seek(i64::MIN).expect("seek").map(|s| s.0),
                    got.map(|s| s.0)
                );
                let rest: Vec<(i64, u64)> = it
                    .map(|s| s.map(|(t, v)| (t, v.to_bits())))
                    .collect::<Result<_, _>>()
                    .expect("rest");
                let expect = bits_of(series.get(pos + 1..).unwrap_or(&[]));
                assert_eq!(rest, expect, "seed {seed}");
            }
        }
    }

    #[test]
    fn special_values_round_trip() {
        let values = [
            f64::from_bits(STALE_NAN_BITS),
            f64::NAN,
            f64::from_bits(0xfff8_0000_0000_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::from_bits(1),
            f64::from_bits(STALE_NAN_BITS),
        ];
        let series: Vec<(i64, f64)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as i64 * 15_000, v))
            .collect();
        let chunk = encode(&series);
        let back = decode(chunk.bytes()).expect("decode");
        assert_eq!(back, bits_of(&series));
        assert_eq!(back[0].1, STALE_NAN_BITS);
        assert!(crate::is_stale_nan(f64::from_bits(back[10].1)));
        assert!(!crate::is_stale_nan(f64::NAN));
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        let series = [
            (i64::MIN, 1.0),
            (i64::MIN + 1, 2.0),
            (-1, 3.0),
            (0, 4.0),
            (i64::MAX - 1, 5.0),
            (i64::MAX, 6.0),
        ];
        let chunk = encode(&series);
        assert_eq!(decode(chunk.bytes()), Ok(bits_of(&series)));
        let single = encode(&[(i64::MAX, -0.0)]);
        assert_eq!(decode(single.bytes()), Ok(bits_of(&[(i64::MAX, -0.0)])));
    }

    #[test]
    fn regular_scrapes_compress_well() {
        let series: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i * 3) as f64))
            .collect();
        let chunk = encode(&series);
        let per_sample = chunk.bytes().len() as f64 / 120.0;
        assert!(per_sample < 2.0, "{per_sample} bytes per sample");
        let constant: Vec<(i64, f64)> = (0..120).map(|i| (i * 15_000, 1.0)).collect();
        assert!(encode(&constant).bytes().len() < 50);
    }

    #[test]
    fn out_of_order_and_duplicate_samples_are_refused() {
        let mut c = encode(&[(1000, 1.0), (2000, 2.0)]);
        assert_eq!(
            c.append(1500, 3.0),
            Err(ChunkError::OutOfOrder {
                t: 1500,
                last: 2000
            })
        );
        assert_eq!(
            c.append(2000, 2.0),
            Err(ChunkError::DuplicateTimestamp { t: 2000 })
        );
        // The refused samples left the chunk as it was.
        assert_eq!(decode(c.bytes()), Ok(bits_of(&[(1000, 1.0), (2000, 2.0)])));
        c.append(3000, 3.0).expect("in order");
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn a_full_chunk_refuses_more() {
        let mut c = Chunk::new();
        for i in 0..MAX_SAMPLES as i64 {
            c.append(i, 0.0).expect("append");
        }
        assert_eq!(c.append(i64::MAX, 0.0), Err(ChunkError::Full));
        assert_eq!(c.iter().count(), MAX_SAMPLES);
    }

    #[test]
    fn truncated_chunks_are_errors() {
        let series: Vec<(i64, f64)> = (0..50)
            .map(|i| (i * 15_000 + i % 7, i as f64 * 0.1))
            .collect();
        let chunk = encode(&series);
        let bytes = chunk.bytes();
        for cut in 0..bytes.len() {
            let part = &bytes[..cut];
            let result = decode(part);
            match cut {
                0 | 1 => assert_eq!(result, Err(ChunkError::MissingHeader)),
                _ => assert!(
                    matches!(result, Err(ChunkError::Truncated { expected: 50, .. })),
                    "cut {cut}: {result:?}"
                ),
            }
            assert!(Chunk::from_bytes(part.to_vec()).is_err(), "cut {cut}");
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(matches!(
            Chunk::from_bytes(longer),
            Err(ChunkError::Corrupt { .. })
        ));
    }

    #[test]
    fn random_bytes_never_panic_and_never_go_back_in_time() {
        let mut rng = fastrand::Rng::with_seed(42);
        let valid = encode(&random_series(&mut fastrand::Rng::with_seed(3)));
        for round in 0..20_000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = rng.usize(0..64);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                // Flip a few bits of a valid chunk.
                let mut b = valid.bytes().to_vec();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(0..b.len());
                    b[i] ^= 1 << rng.u8(0..8);
                }
                b
            };
            let mut last = None;
            let mut it = ChunkIter::new(&bytes);
            let mut errors = 0;
            for sample in it.by_ref() {
                match sample {
                    Ok((t, _)) => {
                        assert!(last.is_none_or(|l| l < t), "round {round}");
                        last = Some(t);
                    }
                    Err(_) => errors += 1,
                }
            }
            assert!(errors <= 1);
            assert_eq!(it.next(), None);
            let _ = Chunk::from_bytes(bytes.clone());
            let _ = ChunkIter::new(&bytes).seek(rng.i64(..));
        }
    }
}
