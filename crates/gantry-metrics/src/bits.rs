//! A bit-level writer and reader, most significant bit first.
//!
//! The writer appends to a `Vec<u8>`; the reader walks a byte slice and
//! answers [`BitsExhausted`] instead of panicking when it runs out, so a
//! truncated chunk is an error for its caller.

/// The reader reached the end of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitsExhausted;

/// Appends bits to a growing byte buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitWriter {
    bytes: Vec<u8>,
    /// Bits still free in the last byte (0 when it is full or there is none).
    free: u8,
}

impl BitWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues writing after `bits` bits of `bytes` (the rest of its last
    /// byte must be zero, as this writer leaves it).
    pub fn from_parts(bytes: Vec<u8>, bits: u64) -> Self {
        let used_in_last = (bits % 8) as u8;
        let free = if used_in_last == 0 {
            0
        } else {
            8 - used_in_last
        };
        Self { bytes, free }
    }

    pub fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.bytes.push(0);
            self.free = 8;
        }
        self.free -= 1;
        if bit && let Some(last) = self.bytes.last_mut() {
            *last |= 1 << self.free;
        }
    }

    /// Writes the low `n` bits of `value` (`n` ≤ 64), highest first.
    pub fn write_bits(&mut self, value: u64, n: u8) {
        debug_assert!(n <= 64);
        let mut left = n.min(64);
        while left > 0 {
            if self.free == 0 {
                self.bytes.push(0);
                self.free = 8;
            }
            let take = left.min(self.free);
            // The `take` bits of `value` just below bit `left`.
            let chunk = (value >> (left - take)) & low_mask(take);
            if let Some(last) = self.bytes.last_mut() {
                *last |= (chunk as u8) << (self.free - take);
            }
            self.free -= take;
            left -= take;
        }
    }

    /// Number of bits written.
    pub fn bit_len(&self) -> u64 {
        self.bytes.len() as u64 * 8 - u64::from(self.free)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads bits from a byte slice, most significant first.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    bytes: &'a [u8],
    /// Position in bits from the start of `bytes`.
    pos: u64,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// Bits read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    pub fn remaining(&self) -> u64 {
        (self.bytes.len() as u64 * 8).saturating_sub(self.pos)
    }

    pub fn read_bit(&mut self) -> Result<bool, BitsExhausted> {
        let byte = *self
            .bytes
            .get((self.pos / 8) as usize)
            .ok_or(BitsExhausted)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    /// Reads `n` bits (`n` ≤ 64) as the low bits of the result.
    pub fn read_bits(&mut self, n: u8) -> Result<u64, BitsExhausted> {
        let n = n.min(64);
        if self.remaining() < u64::from(n) {
            return Err(BitsExhausted);
        }
        let mut value: u64 = 0;
        let mut left = n;
        while left > 0 {
            let byte = self.bytes[(self.pos / 8) as usize];
            let avail = 8 - (self.pos % 8) as u8;
            let take = left.min(avail);
            let chunk = (u64::from(byte) >> (avail - take)) & low_mask(take);
            value = (value << take) | chunk;
            self.pos += u64::from(take);
            left -= take;
        }
        Ok(value)
    }
}

fn low_mask(n: u8) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_at_every_width_and_offset() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut w = BitWriter::new();
        let mut expect = Vec::new();
        for _ in 0..5_000 {
            let n = rng.u8(0..=64);
            let v = rng.u64(..) & low_mask(n);
            if rng.bool() {
                let bit = rng.bool();
                w.write_bit(bit);
                expect.push((1u8, u64::from(bit)));
            }
            w.write_bits(v, n);
            expect.push((n, v));
        }
        let total: u64 = expect.iter().map(|(n, _)| u64::from(*n)).sum();
        assert_eq!(w.bit_len(), total);
        let bytes = w.into_bytes();
        let mut r = BitReader::new(&bytes);
        for (n, v) in expect {
            assert_eq!(r.read_bits(n), Ok(v));
        }
        assert!(r.remaining() < 8);
    }

    #[test]
    fn reading_past_the_end_is_an_error() {
        let mut r = BitReader::new(&[0b1010_0000]);
        assert_eq!(r.read_bits(3), Ok(0b101));
        assert_eq!(r.read_bits(6), Err(BitsExhausted));
        assert_eq!(r.read_bits(5), Ok(0));
        assert_eq!(r.read_bit(), Err(BitsExhausted));
        assert_eq!(BitReader::new(&[]).read_bits(64), Err(BitsExhausted));
    }

    #[test]
    fn writer_continues_after_from_parts() {
        let mut w = BitWriter::new();
        w.write_bits(0b101, 3);
        let bits = w.bit_len();
        let mut w = BitWriter::from_parts(w.into_bytes(), bits);
        w.write_bits(0b11, 2);
        assert_eq!(w.bytes(), &[0b1011_1000]);
        assert_eq!(w.bit_len(), 5);
    }
}
