//! A minimal HTTP/1.1 client for the control plane API: one connection per
//! call, over a unix socket or TCP. The CLI makes a handful of calls per
//! command, so pooling would buy nothing.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ErrorBody;

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// `host:port`
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = String;
    /// `unix:/path/to/gantry.sock`, a path, or `http://host:port`.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let addr = rest.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(format!(
                    "`{s}` is not a server address; use `http://HOST:PORT` or `unix:/PATH`"
                ));
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        if s.starts_with("https://") {
            return Err(format!(
                "`{s}`: TLS for the API is not built yet; use `http://HOST:PORT` behind a TLS \
                 terminator, or the unix socket"
            ));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Err(format!(
            "`{s}` is not a server address; use `http://HOST:PORT` or `unix:/PATH`"
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the Gantry server at {endpoint}: {reason}\n  hint: start it with `gantry \
         server`, or point --server / GANTRY_SERVER at it"
    )]
    Connect { endpoint: Endpoint, reason: String },
    #[error("the server at {endpoint} broke off the request: {reason}")]
    Transport { endpoint: Endpoint, reason: String },
    /// The server answered with an error status and message.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error(
        "the server's answer could not be read ({reason}); is the CLI the same version as the server?"
    )]
    Decode { reason: String },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client bound to one endpoint and (optionally) one bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
}

impl Client {
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Self { endpoint, token }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call(Method::PUT, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::DELETE, path, None::<&()>).await
    }

    /// Sends one request; decodes a 2xx JSON answer into `T`, or turns an
    /// error answer into [`ClientError::Api`] with the server's message.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.raw(method, path, body).await?;
        if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
                reason: e.to_string(),
            })
        } else {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| {
                    format!(
                        "{status}: {}",
                        String::from_utf8_lossy(&bytes)
                            .trim()
                            .chars()
                            .take(500)
                            .collect::<String>()
                    )
                });
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// Posts raw bytes (e.g. a source bundle) and decodes a JSON answer.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        bytes: Vec<u8>,
        content_type: &str,
    ) -> Result<T, ClientError> {
        let (status, body) = self
            .send(Method::POST, path, Some((Bytes::from(bytes), content_type)))
            .await?;
        decode(status, &body)
    }

    /// Sends one request and returns the status and body as they came.
    pub async fn raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let payload = match body {
            Some(b) => Some((
                Bytes::from(serde_json::to_vec(b).map_err(|e| ClientError::Decode {
                    reason: e.to_string(),
                })?),
                "application/json",
            )),
            None => None,
        };
        self.send(method, path, payload).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &str)>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (payload, content_type) = match body {
            Some((b, ct)) => (b, Some(ct)),
            None => (Bytes::new(), None),
        };
        let host = match &self.endpoint {
            Endpoint::Unix(_) => "localhost".to_string(),
            Endpoint::Tcp(a) => a.clone(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(payload))
            .map_err(|e| ClientError::Transport {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?;
        let connect_err = |e: std::io::Error| ClientError::Connect {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        };
        let transport = |e: hyper::Error| ClientError::Transport {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        };
        let resp = match &self.endpoint {
            Endpoint::Unix(p) => {
                let stream = tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), req).await.map_err(transport)?
            }
            Endpoint::Tcp(a) => {
                let stream = tokio::net::TcpStream::connect(a)
                    .await
                    .map_err(connect_err)?;
                send(TokioIo::new(stream), req).await.map_err(transport)?
            }
        };
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(transport)?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// A 2xx JSON answer into `T`, or the server's error message.
fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Decode {
            reason: e.to_string(),
        })
    } else {
        let message = serde_json::from_slice::<ErrorBody>(bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| {
                format!(
                    "{status}: {}",
                    String::from_utf8_lossy(bytes)
                        .trim()
                        .chars()
                        .take(500)
                        .collect::<String>()
                )
            });
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }
}

async fn send<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        // The connection ends with the request; its error, if any, is
        // reported through the response future.
        let _ = conn.await;
    });
    sender.send_request(req).await
}

/// Percent-encodes one path segment (app, env and secret names are already
/// restricted by validation; this keeps odd input from changing the path).
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            "unix:/tmp/g.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/tmp/g.sock".into()))
        );
        assert_eq!(
            "http://127.0.0.1:7400/".parse::<Endpoint>(),
            Ok(Endpoint::Tcp("127.0.0.1:7400".into()))
        );
        assert!(
            "ftp://x"
                .parse::<Endpoint>()
                .unwrap_err()
                .contains("HOST:PORT")
        );
        assert!("https://x".parse::<Endpoint>().unwrap_err().contains("TLS"));
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(seg("hello-app_1.x"), "hello-app_1.x");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
