//! Phase 2: request and response header rewriting.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// A header that describes one connection, not the message (RFC 9110
/// 7.6.1): `Connection`, `Keep-Alive`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`, and every `Proxy-*`. Standard names
/// compare as integers; only the rest are looked at as text.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str().starts_with("proxy-")
}

/// The items of a comma-separated header (every field of that name),
/// trimmed, empty ones skipped.
pub(crate) fn tokens(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &str> {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Whether one comma-separated header value lists `token`
/// (case-insensitive), on raw bytes as a parser sees them.
pub(crate) fn lists_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// True for a `Connection` value that lists only `keep-alive` and `close`
/// (no other header to remove with it).
pub(crate) fn only_connection_options(value: &[u8]) -> bool {
    value.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
    })
}

/// Whether a comma-separated header names `token` (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| lists_token(v.as_bytes(), token.as_bytes()))
}

/// Removes hop-by-hop headers, including those the `Connection` header
/// names, and a `Content-Length` that came with `Transfer-Encoding`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names; most messages have none, or only a
    // `Connection` (`keep-alive`), which then costs one removal.
    let (mut connection, mut te, mut others) = (false, false, false);
    for k in headers.keys() {
        if *k == header::CONNECTION {
            connection = true;
        } else if *k == header::TRANSFER_ENCODING {
            te = true;
        } else if is_hop_by_hop(k) {
            others = true;
        }
    }
    // With both, Transfer-Encoding framed the body and the length is not
    // its length: it must not be forwarded (RFC 9112 section 6.3), or it
    // would cut the message.
    if te {
        headers.remove(header::CONTENT_LENGTH);
    }
    if connection {
        // The names it lists (hop-by-hop ones are removed below anyway).
        let listed: Vec<HeaderName> = tokens(headers, header::CONNECTION)
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| !is_hop_by_hop(n))
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    if te || others {
        while let Some(name) = headers.keys().find(|k| is_hop_by_hop(k)).cloned() {
            headers.remove(name);
        }
    }
}

/// Lower-case hex of the low `out.len() * 4` bits of `v`, without going
/// through `format!` (this runs once or twice per request).
fn hex_into(out: &mut [u8], mut v: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn random_hex32() -> String {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            let mut buf = [0u8; 32];
            hex_into(&mut buf, v);
            // Hex digits only: always UTF-8.
            return std::str::from_utf8(&buf)
                .map(str::to_owned)
                .unwrap_or_default();
        }
    }
}

fn random_u64_nonzero() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// Keeps a sane client `X-Request-Id` (1..=200 visible ASCII characters)
/// or sets a new one (32 hex digits). Returns the id.
pub(crate) fn ensure_request_id(headers: &mut HeaderMap) -> (String, bool) {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && let Ok(s) = v.to_str()
        && !s.is_empty()
        && s.len() <= 200
        && s.bytes().all(|b| b.is_ascii_graphic())
    {
        return (s.to_string(), false);
    }
    let id = random_hex32();
    if let Ok(v) = HeaderValue::from_str(&id) {
        headers.insert(X_REQUEST_ID, v);
    }
    (id, true)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A W3C trace context `traceparent` this proxy can pass on.
fn valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    is_hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.len() == 4)
        && is_hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && is_hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && is_hex(flags, 2)
}

/// Keeps a valid `traceparent`; otherwise starts a new trace (dropping any
/// `tracestate` that belonged to the invalid one). A new trace reuses the
/// request id as trace id when the proxy made that id, so logs and traces
/// join on one value.
pub(crate) fn ensure_traceparent(headers: &mut HeaderMap, new_request_id: Option<&str>) {
    if headers
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(valid_traceparent)
    {
        return;
    }
    headers.remove(&TRACESTATE);
    // "00-" trace (32) "-" parent (16) "-01"
    let mut value = [0u8; 55];
    value[..3].copy_from_slice(b"00-");
    match new_request_id {
        Some(id) if is_hex(id, 32) => value[3..35].copy_from_slice(id.as_bytes()),
        _ => value[3..35].copy_from_slice(random_hex32().as_bytes()),
    }
    value[35] = b'-';
    hex_into(&mut value[36..52], u128::from(random_u64_nonzero()));
    value[52..].copy_from_slice(b"-01");
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.insert(TRACEPARENT, v);
    }
}

/// The request's host: the `Host` header, else the URI's authority (h2
/// `:authority`, an HTTP/1.x absolute-form target). Refused (the reason,
/// for a 400): an HTTP/1.1 request without exactly one `Host` (RFC 9112
/// section 3.2), any request with two, an h2 request with neither. An h2
/// `Host` that differs from `:authority` is routed by `Host` (RFC 9113
/// only says SHOULD refuse it; clients that dial an address and name the
/// site in `Host` rely on it), and the backend gets that same `Host`.
/// One lookup of `Host`, as before this check.
pub(crate) fn request_host(
    version: hyper::Version,
    headers: &HeaderMap,
    uri: &hyper::Uri,
) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("The request has two Host headers; send exactly one.");
    }
    let authority = uri.authority();
    match (version, host, authority) {
        (hyper::Version::HTTP_2, None, None) => {
            Err("The request has neither an :authority nor a Host header; send one.")
        }
        (hyper::Version::HTTP_11, None, _) => {
            Err("The HTTP/1.1 request has no Host header; send exactly one.")
        }
        (_, Some(h), _) => Ok(Some(h.clone())),
        (_, None, Some(a)) => Ok(HeaderValue::from_str(a.as_str()).ok()),
        (_, None, None) => Ok(None),
    }
}

/// The client address as a header value; computed once per connection.
pub(crate) fn ip_value(client_ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client_ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Sets `X-Forwarded-For/Proto/Host` and `X-Real-IP`, and removes
/// `Forwarded`. With `trust`, the client's values are kept (`X-Real-IP`
/// is set only when absent) and the peer address is appended to
/// `X-Forwarded-For`.
#[cfg(test)]
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: IpAddr,
    host: &str,
    proto: &str,
    trust: bool,
) {
    let host = HeaderValue::from_str(host)
        .ok()
        .filter(|_| !host.is_empty());
    set_forwarded_values(headers, &ip_value(client_ip), host, proto, trust);
}

/// [`set_forwarded`] with the client address and the host as ready header
/// values (`host`: None when absent or not a valid header value), so the
/// request path allocates nothing here.
pub(crate) fn set_forwarded_values(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    host: Option<HeaderValue>,
    proto: &str,
    trust: bool,
) {
    let prev = headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .filter(|prev| trust && !prev.trim().is_empty());
    let xff = match prev {
        Some(prev) => {
            let ip = client_ip.to_str().unwrap_or_default();
            HeaderValue::from_str(&format!("{prev}, {ip}")).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR, v);
    }
    // The other headers that name the client: an untrusted client's are
    // not passed on (RFC 7239 `Forwarded` is removed, `X-Real-IP` set to
    // the peer); behind a trusted proxy they are kept as it sent them.
    if !trust {
        headers.remove(&header::FORWARDED);
        headers.insert(X_REAL_IP, client_ip.clone());
    } else if !headers.contains_key(&X_REAL_IP) {
        headers.insert(X_REAL_IP, client_ip.clone());
    }
    if !(trust && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(proto_value(proto)),
        );
    }
    if !(trust && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(v) => {
                headers.insert(X_FORWARDED_HOST, v);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

fn proto_value(proto: &str) -> &'static str {
    if proto == "https" { "https" } else { "http" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_the_low_bits() {
        let mut out = [0u8; 32];
        hex_into(&mut out, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
        assert_eq!(&out, b"0123456789abcdeffedcba9876543210");
        let mut out = [0u8; 5];
        hex_into(&mut out, 0xabcdef);
        assert_eq!(&out, b"bcdef");
    }

    #[test]
    fn connection_values_that_name_no_other_header() {
        for v in [
            "keep-alive",
            "close",
            "Keep-Alive, close",
            " keep-alive ,",
            "",
        ] {
            assert!(only_connection_options(v.as_bytes()), "{v:?}");
        }
        for v in ["upgrade", "keep-alive, x-hop", "closed"] {
            assert!(!only_connection_options(v.as_bytes()), "{v:?}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn a_length_that_came_with_transfer_encoding_goes_too() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");
        // Alone, the length stays.
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "3");
    }

    #[test]
    fn request_id_kept_or_made() {
        let mut h = HeaderMap::new();
        let (id, new) = ensure_request_id(&mut h);
        assert!(new && is_hex(&id, 32));
        assert_eq!(h[&X_REQUEST_ID], id.as_str());
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(ensure_request_id(&mut h), ("abc-123".to_string(), false));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert!(ensure_request_id(&mut h).1);
    }

    #[test]
    fn traceparent_kept_when_valid() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(good));
        h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
        ensure_traceparent(&mut h, None);
        assert_eq!(h[&TRACEPARENT], good);
        assert_eq!(h[&TRACESTATE], "a=b");

        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert(TRACEPARENT, HeaderValue::from_static(bad));
            h.insert(TRACESTATE, HeaderValue::from_static("a=b"));
            let id = random_hex32();
            ensure_traceparent(&mut h, Some(&id));
            let v = h[&TRACEPARENT].to_str().unwrap();
            assert!(valid_traceparent(v), "{v}");
            assert!(v.starts_with(&format!("00-{id}-")), "{v}");
            assert!(!h.contains_key(&TRACESTATE));
        }
    }

    #[test]
    fn forwarded_and_real_ip_of_an_untrusted_client_are_not_passed_on() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        let mut trusted = h.clone();
        set_forwarded(&mut h, ip, "app.test", "http", false);
        assert!(!h.contains_key(header::FORWARDED), "{h:?}");
        assert_eq!(h[&X_REAL_IP], "10.0.0.7");
        set_forwarded(&mut trusted, ip, "app.test", "http", true);
        assert_eq!(trusted[header::FORWARDED], "for=6.6.6.6");
        assert_eq!(trusted[&X_REAL_IP], "6.6.6.6");
    }

    #[test]
    fn one_host_per_request() {
        use hyper::Version;
        let uri: hyper::Uri = "/x".parse().unwrap();
        let h2_uri: hyper::Uri = "http://a.test/x".parse().unwrap();
        let one = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(v));
            h
        };
        let mut two = one("a.test");
        two.append(header::HOST, HeaderValue::from_static("b.test"));
        let none = HeaderMap::new();
        assert_eq!(
            request_host(Version::HTTP_11, &one("a.test"), &uri).unwrap(),
            Some(HeaderValue::from_static("a.test"))
        );
        assert!(request_host(Version::HTTP_11, &none, &uri).is_err());
        assert!(request_host(Version::HTTP_11, &two, &uri).is_err());
        assert!(request_host(Version::HTTP_10, &two, &uri).is_err());
        assert_eq!(request_host(Version::HTTP_10, &none, &uri).unwrap(), None);
        assert_eq!(
            request_host(Version::HTTP_2, &none, &h2_uri).unwrap(),
            Some(HeaderValue::from_static("a.test"))
        );
        assert!(request_host(Version::HTTP_2, &none, &uri).is_err());
        assert!(request_host(Version::HTTP_2, &two, &h2_uri).is_err());
        // Host wins over :authority, as the backend gets it.
        assert_eq!(
            request_host(Version::HTTP_2, &one("b.test"), &h2_uri).unwrap(),
            Some(HeaderValue::from_static("b.test"))
        );
        assert!(request_host(Version::HTTP_2, &one("a.test"), &uri).is_ok());
    }

    #[test]
    fn forwarded_replaced_or_trusted() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let mut trusted = h.clone();
        set_forwarded(&mut h, ip, "app.test", "http", false);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(h[&X_FORWARDED_PROTO], "http");
        assert_eq!(h[&X_FORWARDED_HOST], "app.test");
        assert_eq!(h[&X_REAL_IP], "10.0.0.7");
        set_forwarded(&mut trusted, ip, "app.test", "http", true);
        assert_eq!(trusted[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.7");
        assert_eq!(trusted[&X_FORWARDED_PROTO], "https");
        assert_eq!(trusted[&X_FORWARDED_HOST], "app.test");
    }
}
