//! The PROXY protocol header (v1 text, v2 binary) a load balancer sends
//! before a connection's first byte, on the listeners `proxy_protocol`
//! names: its source address is the client's. Read byte-exact, so nothing
//! after the header is consumed; parsed with `ppp`.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads exactly one PROXY protocol header (v1 text or v2 binary) and
/// returns the client address it names; `None` for a LOCAL (v2) or
/// UNKNOWN (v1) header. Errors on anything else.
pub(crate) async fn read_proxy_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, String> {
    const V2_SIG: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
    let io = |e: std::io::Error| format!("reading the PROXY header: {e}");
    let mut buf = vec![0u8; 6];
    stream.read_exact(&mut buf).await.map_err(io)?;
    if buf == b"PROXY " {
        // v1: text up to CRLF, at most 107 bytes. Byte by byte, so that
        // nothing after the header is consumed.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= 107 {
                return Err("PROXY v1 header longer than 107 bytes".into());
            }
            buf.push(stream.read_u8().await.map_err(io)?);
        }
    } else if V2_SIG.starts_with(&buf) {
        buf.resize(16, 0);
        stream.read_exact(&mut buf[6..]).await.map_err(io)?;
        if &buf[..12] != V2_SIG {
            return Err("bad PROXY v2 signature".into());
        }
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        buf.resize(16 + len, 0);
        stream.read_exact(&mut buf[16..]).await.map_err(io)?;
    } else {
        return Err("the connection does not start with a PROXY protocol header".into());
    }
    parse_proxy_header(&buf)
}

pub(crate) fn parse_proxy_header(buf: &[u8]) -> Result<Option<SocketAddr>, String> {
    use ppp::HeaderResult;
    match HeaderResult::parse(buf) {
        HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Tcp6(a) => Some((a.source_address, a.source_port).into()),
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => {
            if h.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                ppp::v2::Addresses::IPv4(a) => Some((a.source_address, a.source_port).into()),
                ppp::v2::Addresses::IPv6(a) => Some((a.source_address, a.source_port).into()),
                _ => None,
            })
        }
        HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e:?}")),
        HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn proxy_headers_v1_and_v2_are_read_exactly() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
        let addr = read_proxy_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("192.0.2.7:5555".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");

        let mut input: &[u8] = b"PROXY UNKNOWN\r\nrest";
        assert_eq!(read_proxy_header(&mut input).await.unwrap(), None);
        assert_eq!(input, b"rest");

        let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        v2.extend([0x21, 0x11, 0x00, 12]); // v2 PROXY, TCP over IPv4, 12 bytes
        v2.extend([198, 51, 100, 9, 127, 0, 0, 1]);
        v2.extend(4242u16.to_be_bytes());
        v2.extend(443u16.to_be_bytes());
        v2.extend(b"after");
        let mut input: &[u8] = &v2;
        let addr = read_proxy_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("198.51.100.9:4242".parse().unwrap()));
        assert_eq!(input, b"after");
    }

    #[tokio::test]
    async fn missing_or_bad_headers_are_errors() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 and far too long ..........................................................................\r\n",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x00",
        ] {
            let mut input = bad;
            assert!(read_proxy_header(&mut input).await.is_err(), "{bad:?}");
        }
    }
}
