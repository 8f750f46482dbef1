//! Sticky sessions for routes with `sticky: true`.
//!
//! The first answer carries `Set-Cookie: gantry_sticky=<token>; Path=/;
//! HttpOnly; SameSite=Lax` (plus `Secure` on https). The token is a 64-bit
//! FNV-1a hash of (route id, set name, instance address), in hex: it names
//! a table entry, never an address. A request that carries it goes to that
//! entry's set and instance while the set is in the table with weight
//! above 0 and the instance is not ejected; otherwise it is balanced as
//! usual and the answer carries a new cookie. A made-up token can only
//! match an instance that the route already sends traffic to.
//!
//! Tokens depend only on the table entry, so they survive table swaps and
//! proxy restarts as long as the entry stays.

use std::collections::HashMap;
use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderValue};

use crate::routing::router::{CompiledRoute, CompiledSet};

const COOKIE: &str = "gantry_sticky";

/// The token of one table entry.
pub(crate) fn token(route: &str, set: &str, addr: SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(route.as_bytes());
    feed(&[0]);
    feed(set.as_bytes());
    feed(&[0]);
    feed(addr.to_string().as_bytes());
    h
}

/// Token → (set index, instance index), for a route's compiled sets.
pub(crate) fn index(sets: &[CompiledSet]) -> HashMap<u64, (usize, usize)> {
    let mut map = HashMap::new();
    for (si, set) in sets.iter().enumerate() {
        for (ii, t) in set.tokens.iter().enumerate() {
            map.entry(*t).or_insert((si, ii));
        }
    }
    map
}

/// The token the request's cookie carries, if any.
fn from_cookie(headers: &HeaderMap) -> Option<u64> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .and_then(|(_, v)| {
            let v = v.trim().trim_matches('"');
            (v.len() == 16).then(|| u64::from_str_radix(v, 16).ok())?
        })
}

/// The set and instance the request's cookie pins it to, while that entry
/// may take it.
pub(crate) fn pinned<'r>(
    route: &'r CompiledRoute,
    headers: &HeaderMap,
) -> Option<(&'r CompiledSet, usize)> {
    let &(si, ii) = route.sticky.as_ref()?.get(&from_cookie(headers)?)?;
    let set = route.sets.get(si)?;
    let instance = set.instances.get(ii)?;
    (set.weight > 0 && !set.stats.is_retired() && !instance.ejected_now()).then_some((set, ii))
}

/// Adds the cookie naming `set`'s instance `i` to a response.
pub(crate) fn remember(headers: &mut HeaderMap, set: &CompiledSet, i: usize, secure: bool) {
    let Some(t) = set.tokens.get(i) else { return };
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={t:016x}; Path=/; HttpOnly; SameSite=Lax{secure}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let t = token("r", "s", "127.0.0.1:80".parse().unwrap());
        let mut h = HeaderMap::new();
        let v = format!("a=1; {COOKIE}={t:016x}; b=2");
        h.insert(header::COOKIE, HeaderValue::from_str(&v).unwrap());
        assert_eq!(from_cookie(&h), Some(t));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("gantry_sticky=127.0.0.1:80"),
        );
        assert_eq!(from_cookie(&h), None);
        assert_ne!(t, token("r", "s2", "127.0.0.1:80".parse().unwrap()));
    }
}
