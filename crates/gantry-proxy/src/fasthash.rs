//! A multiply-rotate hasher for maps whose keys come from configuration
//! (backend addresses in the pool, route hosts in the router), looked up
//! once or twice per request. Such maps need no protection against
//! flooding (a client cannot insert keys), so SipHash's cost buys nothing.

use std::hash::{BuildHasherDefault, Hasher};

/// `HashMap<K, V, Fast>`.
pub(crate) type Fast = BuildHasherDefault<FastHasher>;

#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn keys_spread_and_are_found() {
        let mut m: HashMap<String, usize, Fast> = HashMap::default();
        for i in 0..1000 {
            m.insert(format!("host{i}.example"), i);
        }
        for i in 0..1000 {
            assert_eq!(m[&format!("host{i}.example")], i);
        }
        assert!(!m.contains_key("host1000.example"));
    }
}
