//! Ports for app instances: one pool for the whole host, so apps,
//! environments and instances never collide. A port is verified free by
//! binding it before it is handed out; one held by anything else is skipped.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::ops::RangeInclusive;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    #[error(
        "no free port left in the instance port range {start}-{end} ({in_use} handed out, the \
         rest busy): stop unused environments, or widen the range with `--port-range`"
    )]
    Exhausted { start: u16, end: u16, in_use: usize },
}

/// Hands out ports from a range, remembering which are in use.
#[derive(Debug)]
pub struct PortPool {
    range: RangeInclusive<u16>,
    in_use: BTreeSet<u16>,
    next: u16,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let next = *range.start();
        Self {
            range,
            in_use: BTreeSet::new(),
            next,
        }
    }

    /// Marks a port as taken (an adopted instance's port).
    pub fn reserve(&mut self, port: u16) {
        self.in_use.insert(port);
    }

    pub fn release(&mut self, port: u16) {
        self.in_use.remove(&port);
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// The next port that is neither handed out nor bound by anyone.
    /// Scans round-robin from the last one, so a just-released port is not
    /// reused at once (its old process may still be draining).
    pub fn allocate(&mut self) -> Result<u16, PortError> {
        let (start, end) = (*self.range.start(), *self.range.end());
        let span = u32::from(end - start) + 1;
        for i in 0..span {
            let port = start + ((u32::from(self.next - start) + i) % span) as u16;
            if self.in_use.contains(&port) || !is_free(port) {
                continue;
            }
            self.in_use.insert(port);
            self.next = if port == end { start } else { port + 1 };
            return Ok(port);
        }
        Err(PortError::Exhausted {
            start,
            end,
            in_use: self.in_use.len(),
        })
    }
}

/// Whether nothing listens on `port` on loopback (or all addresses).
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_range(n: u16) -> RangeInclusive<u16> {
        // Find n consecutive free ports high up.
        'outer: for start in (40000..60000).step_by(97) {
            for p in start..start + n {
                if !is_free(p) {
                    continue 'outer;
                }
            }
            return start..=start + n - 1;
        }
        panic!("no free range");
    }

    #[test]
    fn allocates_distinct_ports_and_reports_exhaustion() {
        let range = free_range(3);
        let mut pool = PortPool::new(range.clone());
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        let c = pool.allocate().unwrap();
        let mut all = vec![a, b, c];
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3);
        let err = pool.allocate().unwrap_err();
        assert_eq!(
            err,
            PortError::Exhausted {
                start: *range.start(),
                end: *range.end(),
                in_use: 3
            }
        );
        assert!(err.to_string().contains("--port-range"));
        pool.release(b);
        assert_eq!(pool.allocate().unwrap(), b);
    }

    #[test]
    fn skips_ports_bound_by_others() {
        let range = free_range(2);
        let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, *range.start())).unwrap();
        let mut pool = PortPool::new(range.clone());
        assert_eq!(pool.allocate().unwrap(), *range.end());
        assert!(pool.allocate().is_err());
        drop(squatter);
        assert_eq!(pool.allocate().unwrap(), *range.start());
    }
}
