//! Entry points for fuzzing: each runs one of the proxy's parsers of
//! untrusted bytes on a byte slice, the way the proxy runs it on what a
//! client, a backend or the admin socket sends, and throws the result
//! away. None of them may panic, whatever the input; a fuzz target calls
//! one per input. Not part of the proxy's API (hidden from its docs).
//!
//! | entry point | the parser | who sends the bytes |
//! |---|---|---|
//! | [`http1_request_head`] | the own HTTP/1.1 server's request head parser (`conn::http1_server`) | clients |
//! | [`http1_response_head`] | the own HTTP/1.1 client's answer parser (`upstream::http1_client`): interim answers, head, framing, then the body | backends |
//! | [`chunked_body`] | the own chunked decoder (`upstream::http1_client`, answer bodies) | backends |
//! | [`proxy_protocol_header`] | the PROXY protocol v1/v2 reader (`conn::proxy_protocol`) | load balancers (or anyone, on a misconfigured listener) |
//! | [`table_json`] | `PUT /table`'s JSON, its validation, then its compilation into a router | the control plane |
//!
//! Request bodies (chunked or not) are decoded by hyper's server, not by
//! the proxy's own code: the own server hands every request with a body to
//! hyper, so there is one chunked decoder of the proxy's own.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The own HTTP/1.1 server's head parser on `data` as the start of a
/// connection: every complete head in it, in turn (pipelined requests),
/// until one is partial, goes to hyper, or is refused.
pub fn http1_request_head(data: &[u8]) {
    let _ = crate::conn::http1_server::fuzz_heads(data);
}

/// The own HTTP/1.1 client's parser on `data` as a backend's answer, for a
/// GET and for a HEAD: interim answers skipped, the final head, its framing,
/// then the body it frames (chunked decoding included).
pub fn http1_response_head(data: &[u8]) {
    for head_only in [false, true] {
        let _ = crate::upstream::http1_client::fuzz_answer(data, head_only);
    }
}

/// The own chunked decoder on `data` as an answer body: all at once, then
/// fed in pieces (a byte at a time and in pieces of a length taken from
/// the input) to cover the states a read boundary can split.
pub fn chunked_body(data: &[u8]) {
    let step = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    for step in [data.len(), 1, step] {
        let _ = crate::upstream::http1_client::fuzz_chunked(data, step);
    }
}

/// The PROXY protocol reader on `data` as the start of a connection (the
/// reader takes exactly the header's bytes), and the header parser on
/// `data` as a whole header.
pub fn proxy_protocol_header(data: &[u8]) {
    let mut input = data;
    // Reading from a slice never waits: one poll runs it to the end.
    let _ = poll_once(crate::conn::proxy_protocol::read_proxy_header(&mut input));
    let _ = crate::conn::proxy_protocol::parse_proxy_header(data);
}

/// `PUT /table`'s parsing and validation on `data`; a table that passes is
/// compiled into a router (as a swap does), matched against each of its
/// own hosts, and written back as JSON.
pub fn table_json(data: &[u8]) {
    let _ = compile_table(data);
}

/// [`table_json`]'s work: the routes a host of the table found.
fn compile_table(data: &[u8]) -> Option<usize> {
    let table = crate::Table::from_json(data).ok()?;
    let _ = serde_json::to_vec(&table);
    let hosts: Vec<String> = table
        .routes
        .iter()
        .flat_map(|r| r.hosts.iter().cloned())
        .collect();
    let routing = crate::routing::router::Routing::new(table, std::time::Duration::ZERO);
    let router = routing.load();
    Some(
        hosts
            .iter()
            .filter(|h| router.find(h, "/").is_some())
            .count(),
    )
}

/// Polls `f` once, without a runtime: for futures that never wait.
fn poll_once<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inputs of every kind: empty, truncated, oversized, binary, nearly
    /// right. Each entry point runs on all of them (and must not panic)
    /// besides its own cases.
    fn junk() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0],
            vec![0xff; 64],
            b"\r\n\r\n".to_vec(),
            b"\n".to_vec(),
            b"GET".to_vec(),
            b"PROXY ".to_vec(),
            b"{".to_vec(),
            "é\u{0}\u{7f}€".as_bytes().to_vec(),
            vec![b'a'; 70_000],
        ]
    }

    #[test]
    fn request_heads_parse_or_are_refused_without_panicking() {
        let heads = crate::conn::http1_server::fuzz_heads;
        // Two pipelined requests; the third is partial.
        assert_eq!(
            heads(
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: [::1]:80\r\n\r\nGET /3"
            ),
            2
        );
        for (bad, why) in [
            (&b"GET /\xff HTTP/1.1\r\n\r\n"[..], "a bad target"),
            (
                b"GET / HTTP/1.1\r\nbad name: x\r\n\r\n",
                "a bad header name",
            ),
            (b"GET / HTTP/1.1\r\nx: \x01\r\n\r\n", "a bad header value"),
            (b"GET http://[::1 HTTP/1.1\r\n\r\n", "a bad authority"),
            (b"G\x00T / HTTP/1.1\r\n\r\n", "a bad method"),
            (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 (hyper's)"),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
                "a body (hyper's)",
            ),
            (b"CONNECT a:1 HTTP/1.1\r\n\r\n", "CONNECT (hyper's)"),
        ] {
            assert_eq!(heads(bad), 0, "{why}");
            http1_request_head(bad);
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..150 {
            many.extend(format!("x-{i}: {i}\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(heads(&many), 0, "more than 100 headers (hyper's)");
        for input in junk() {
            assert_eq!(heads(&input), 0);
            http1_request_head(&input);
        }
    }

    #[test]
    fn response_heads_parse_or_are_refused_without_panicking() {
        let answer = |wire: &[u8]| crate::upstream::http1_client::fuzz_answer(wire, false);
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            Some((200, 2))
        );
        assert_eq!(
            answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\n\r\nHTTP/1.1 404 No\r\n\r\nrest"),
            Some((404, 4)),
            "interim answers skipped; no length: until close"
        );
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx: y\r\n\r\n"),
            Some((200, 5))
        );
        assert_eq!(
            crate::upstream::http1_client::fuzz_answer(
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n",
                true
            ),
            Some((200, 0)),
            "HEAD: no body"
        );
        for (bad, why) in [
            (
                &b"HTTP/1.1 101 Switching\r\n\r\n"[..],
                "101 without an upgrade",
            ),
            (b"HTTP/1.1 000 Zero\r\n\r\n", "status 0"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
                "two lengths",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                "a negative length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
                "overflow",
            ),
            (
                b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "HTTP/1.0 chunked",
            ),
            (
                b"HTTP/1.1 200 OK\r\nx: \xff\x01\r\n\r\n",
                "a bad header value",
            ),
            (b"HTTP/1.1 200 OK\r\n", "a partial head"),
        ] {
            assert_eq!(answer(bad), None, "{why}");
            http1_response_head(bad);
        }
        // Interim answers past the head limit.
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(20_000);
        http1_response_head(&interim);
        for input in junk() {
            assert_eq!(answer(&input), None);
            http1_response_head(&input);
        }
    }

    #[test]
    fn chunked_bodies_decode_or_fail_without_panicking() {
        let decode = crate::upstream::http1_client::fuzz_chunked;
        let good = b"5\r\nhello\r\n1;ext\r\n!\r\n0\r\nx: y\r\n\r\n";
        for step in [1, 2, 7, good.len()] {
            assert_eq!(decode(good, step), Some(6), "step {step}");
        }
        for bad in [
            &b"zz\r\n"[..],
            b"ffffffffffffffff\r\n",
            b"5\r\nhelloXX",
            b"0\r\nno colon\r\n\r\n",
            b"\r\r\r\r",
            b"5;ext\r\nhel",
        ] {
            assert!(
                decode(bad, 1).is_none(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            chunked_body(bad);
        }
        for input in junk() {
            assert!(decode(&input, 3).is_none());
            chunked_body(&input);
        }
    }

    #[test]
    fn proxy_protocol_headers_parse_or_are_refused_without_panicking() {
        let read = |data: &[u8]| {
            let mut input = data;
            poll_once(crate::conn::proxy_protocol::read_proxy_header(&mut input))
                .expect("a slice never waits")
        };
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\nGET"),
            Ok(Some("1.2.3.4:1".parse().unwrap()))
        );
        assert_eq!(read(b"PROXY UNKNOWN\r\n"), Ok(None));
        let sig = b"\r\n\r\n\0\r\nQUIT\n";
        let mut v2 = sig.to_vec();
        v2.extend([0x21, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2]);
        assert_eq!(read(&v2), Ok(Some("1.2.3.4:1".parse().unwrap())));
        for bad in [
            &b"PROXY TCP4 999.1.1.1 1.1.1.1 70000 1\r\n"[..],
            b"PROXY \r\n",
            b"PROXY TCP6 ::1 ::2 1\r\n",
        ] {
            assert!(read(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
            proxy_protocol_header(bad);
        }
        for tail in [
            &[0x21, 0x11, 0xff, 0xff][..],
            &[0x21, 0x21, 0x00, 0x04, 1, 2, 3, 4],
            &[0xff, 0xff, 0x00, 0x03, 1, 2, 3],
            &[0x21],
        ] {
            let mut v = sig.to_vec();
            v.extend_from_slice(tail);
            assert!(read(&v).is_err(), "{tail:?}");
            proxy_protocol_header(&v);
        }
        for input in junk() {
            assert!(read(&input).is_err());
            proxy_protocol_header(&input);
        }
    }

    #[test]
    fn tables_compile_or_are_refused_without_panicking() {
        assert_eq!(compile_table(br#"{}"#), Some(0));
        assert_eq!(
            compile_table(
                br#"{"routes": [{"id": "a", "hosts": ["A.example", "*.b", "c_d"],
                    "sets": [{"name": "s", "weight": 100, "instances": ["127.0.0.1:1", "[::1]:2"]}],
                    "sticky": true, "compress": true, "max_body": 0,
                    "rate_limit": {"requests_per_second": 0.5, "burst": 1}}]}"#
            ),
            Some(3)
        );
        for (bad, why) in [
            (&br#"{"version": -1}"#[..], "a negative version"),
            (
                br#"{"routes": [{"id": "", "hosts": []}]}"#,
                "no id, no hosts",
            ),
            (
                br#"{"routes": [{"id": "a", "hosts": ["a"], "sets": [
                    {"name": "s", "weight": 4294967295, "instances": ["bad"]},
                    {"name": "t", "weight": 4294967295, "instances": []}]}]}"#,
                "weights that overflow",
            ),
            (
                br#"{"routes": [{"id": "a", "hosts": ["a"], "unknown": 1}]}"#,
                "an unknown field",
            ),
            (
                br#"{"routes": [{"id": "a", "hosts": ["a"], "sets": [],
                    "rate_limit": {"requests_per_second": 0, "burst": 0}}]}"#,
                "a zero rate limit",
            ),
            (
                br#"{"routes": [{"id": "a", "hosts": ["a"], "sets": [],
                    "tls": {"mode": "files", "cert": "/dev/zero", "key": "/dev/zero"}}]}"#,
                "certificate files that never end (found by fuzzing: they were read to the end)",
            ),
            (
                br#"{"routes": [{"id": "a", "hosts": ["a"], "sets": [],
                    "tls": {"mode": "files", "cert": "/", "key": "/"}}]}"#,
                "certificate files that are directories",
            ),
        ] {
            assert_eq!(compile_table(bad), None, "{why}");
            table_json(bad);
        }
        let deep = "[".repeat(10_000);
        assert_eq!(compile_table(deep.as_bytes()), None);
        for input in junk() {
            assert_eq!(compile_table(&input), None);
            table_json(&input);
        }
    }
}
