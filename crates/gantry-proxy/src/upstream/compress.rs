//! Response compression (gzip, brotli) for routes with `compress: true`.
//!
//! The coding is chosen from the request's `Accept-Encoding`: the highest
//! q-value among `br` and `gzip` (`*` stands for both; `q=0` refuses one),
//! `br` on a tie. A response is compressed when it is worth it and safe:
//! a body-carrying status (not 1xx/204/206/304, not an answer to HEAD), no
//! `Content-Encoding` or `Content-Range` yet, no `Cache-Control:
//! no-transform`, a compressible type (`text/*` except event streams,
//! JSON, JavaScript, XML, SVG, wasm) and not known to be tiny
//! (`Content-Length` under 1 KiB). It then loses `Content-Length`, gets
//! `Content-Encoding`, and a strong `ETag` becomes weak (the bytes differ).
//! Every compressible response of the route gets `Vary: Accept-Encoding`,
//! compressed or not, so caches keep the variants apart.
//!
//! The body is compressed as it streams (async-compression over the
//! upstream body, flushed whenever the backend pauses), never buffered
//! whole. Brotli runs at quality 4 and gzip at level 6: on-the-fly
//! settings (brotli's default 11 is meant for precompressed files).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_compression::Level;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use bytes::Bytes;
use http_body::Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use tokio::io::AsyncRead;
use tokio_util::io::{ReaderStream, StreamReader};

/// Responses known to be smaller than this are sent as they are.
const MIN_LENGTH: u64 = 1024;
/// Read size of the compressed stream.
const CHUNK: usize = 16 * 1024;

/// A content coding the proxy can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    Gzip,
    Br,
}

impl Coding {
    fn token(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Br => "br",
        }
    }
}

/// What the request allows, read before its headers go upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Negotiated {
    coding: Option<Coding>,
}

/// The coding the client accepts best; None for HEAD or when neither
/// `br` nor `gzip` is acceptable.
pub(crate) fn negotiate(method: &Method, headers: &HeaderMap) -> Negotiated {
    let coding = if method == Method::HEAD {
        None
    } else {
        accepted(headers)
    };
    Negotiated { coding }
}

fn accepted(headers: &HeaderMap) -> Option<Coding> {
    // q-values in thousandths; None = not mentioned.
    let (mut br, mut gzip, mut any) = (None, None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let name = params.next().unwrap_or("").trim();
            let mut q = 1000u32;
            for p in params {
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = parse_q(v.trim()).unwrap_or(0);
                }
            }
            if name.eq_ignore_ascii_case("br") {
                br = Some(q);
            } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(q);
            } else if name == "*" {
                any = Some(q);
            }
        }
    }
    let br = br.or(any).unwrap_or(0);
    let gzip = gzip.or(any).unwrap_or(0);
    match (br, gzip) {
        (0, 0) => None,
        (b, g) if b >= g => Some(Coding::Br),
        _ => Some(Coding::Gzip),
    }
}

/// `1`, `0.5`, `0.001` → thousandths; None when malformed.
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let int: u32 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let frac_value: u32 = format!("{frac:0<3}").parse().ok()?;
    let q = int * 1000 + frac_value;
    (q <= 1000).then_some(q)
}

/// A type worth compressing.
fn compressible(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "text/event-stream" {
        return false;
    }
    mime.starts_with("text/")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/ecmascript"
                | "application/xml"
                | "application/wasm"
                | "application/manifest+json"
                | "image/svg+xml"
        )
        || (mime.starts_with("application/") && (mime.ends_with("+json") || mime.ends_with("+xml")))
}

/// Whether the response may be compressed, ignoring the client's wishes.
fn eligible(status: StatusCode, headers: &HeaderMap) -> bool {
    if status.is_informational()
        || matches!(
            status,
            StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED
        )
    {
        return false;
    }
    let encoded = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let no_transform =
        crate::request::headers::has_token(headers, header::CACHE_CONTROL, "no-transform");
    let tiny = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n < MIN_LENGTH);
    let typed = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible);
    typed && !encoded && !no_transform && !tiny && !headers.contains_key(header::CONTENT_RANGE)
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is there.
fn add_vary(headers: &mut HeaderMap) {
    let present = crate::request::headers::tokens(headers, header::VARY)
        .any(|t| t == "*" || t.eq_ignore_ascii_case("accept-encoding"));
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// Decides for one backend response: returns the coding to apply (the
/// headers then already say so), or None to send the body as it is.
pub(crate) fn prepare<B>(resp: &mut Response<B>, negotiated: Negotiated) -> Option<Coding> {
    if !eligible(resp.status(), resp.headers()) {
        return None;
    }
    let headers = resp.headers_mut();
    add_vary(headers);
    let coding = negotiated.coding?;
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    if let Some(etag) = headers.get(header::ETAG)
        && !etag.as_bytes().starts_with(b"W/")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            headers.insert(header::ETAG, v);
        }
    }
    Some(coding)
}

// === the body ===

/// The upstream body's data as a stream of byte chunks (trailers dropped).
struct DataStream(crate::upstream::body::Upstream);

impl futures_core::Stream for DataStream {
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = &mut self.get_mut().0;
        loop {
            return match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(io::Error::other(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// An upstream body, compressed as it streams.
pub(crate) struct Compressed {
    stream: ReaderStream<Pin<Box<dyn AsyncRead + Send>>>,
}

impl Compressed {
    pub(crate) fn new(body: crate::upstream::body::Upstream, coding: Coding) -> Compressed {
        let reader = StreamReader::new(DataStream(body));
        let encoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => Box::pin(GzipEncoder::with_quality(reader, Level::Precise(6))),
            Coding::Br => Box::pin(BrotliEncoder::with_quality(reader, Level::Precise(4))),
        };
        Compressed {
            stream: ReaderStream::with_capacity(encoder, CHUNK),
        }
    }

    pub(crate) fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        futures_core::Stream::poll_next(Pin::new(&mut self.stream), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ae(v: &'static str) -> Option<Coding> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static(v));
        negotiate(&Method::GET, &h).coding
    }

    #[test]
    fn accept_encoding_negotiation() {
        assert_eq!(ae("gzip, deflate, br"), Some(Coding::Br));
        assert_eq!(ae("gzip"), Some(Coding::Gzip));
        assert_eq!(ae("br;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(ae("br;q=0.5, gzip;q=0.8"), Some(Coding::Gzip));
        assert_eq!(ae("gzip;q=0, br;q=0"), None);
        assert_eq!(ae("*"), Some(Coding::Br));
        assert_eq!(ae("*;q=0, gzip"), Some(Coding::Gzip));
        assert_eq!(ae("identity"), None);
        assert_eq!(ae("gzip;q=0.000"), None);
        assert_eq!(ae("gzip;q=bogus"), None);
        assert_eq!(ae("GZIP;Q=1.0"), Some(Coding::Gzip));
        assert_eq!(negotiate(&Method::GET, &HeaderMap::new()).coding, None);
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(negotiate(&Method::HEAD, &h).coding, None);
    }

    #[test]
    fn what_is_eligible() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        let ok = StatusCode::OK;
        assert!(eligible(
            ok,
            &h(&[("content-type", "text/html; charset=utf-8")])
        ));
        assert!(eligible(
            ok,
            &h(&[("content-type", "application/vnd.api+json")])
        ));
        assert!(eligible(ok, &h(&[("content-type", "image/svg+xml")])));
        assert!(!eligible(ok, &h(&[("content-type", "image/png")])));
        assert!(!eligible(ok, &h(&[("content-type", "text/event-stream")])));
        assert!(!eligible(ok, &h(&[])));
        assert!(!eligible(
            ok,
            &h(&[("content-type", "text/plain"), ("content-length", "100")])
        ));
        assert!(eligible(
            ok,
            &h(&[("content-type", "text/plain"), ("content-length", "5000")])
        ));
        assert!(!eligible(
            ok,
            &h(&[("content-type", "text/plain"), ("content-encoding", "gzip")])
        ));
        assert!(!eligible(
            ok,
            &h(&[
                ("content-type", "text/plain"),
                ("cache-control", "no-transform")
            ])
        ));
        for s in [204, 206, 304, 101] {
            assert!(!eligible(
                StatusCode::from_u16(s).unwrap(),
                &h(&[("content-type", "text/plain")])
            ));
        }
    }

    #[test]
    fn headers_after_prepare() {
        let mut resp = Response::new(());
        let hs = resp.headers_mut();
        hs.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        hs.insert(header::CONTENT_LENGTH, HeaderValue::from_static("4096"));
        hs.insert(header::ETAG, HeaderValue::from_static("\"abc\""));
        hs.insert(header::VARY, HeaderValue::from_static("Origin"));
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        assert_eq!(
            prepare(&mut resp, negotiate(&Method::GET, &h)),
            Some(Coding::Gzip)
        );
        let hs = resp.headers();
        assert!(!hs.contains_key(header::CONTENT_LENGTH));
        assert_eq!(hs[header::CONTENT_ENCODING], "gzip");
        assert_eq!(hs[header::ETAG], "W/\"abc\"");
        let vary: Vec<_> = hs.get_all(header::VARY).iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
    }
}
