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

/// A server address that [`Endpoint`] does not take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("`{0}` is not a server address; use `http://HOST:PORT` or `unix:/PATH`")]
    NotAnAddress(String),
    #[error(
        "`{0}`: TLS for the API is not built yet; use `http://HOST:PORT` behind a TLS \
         terminator, or the unix socket"
    )]
    Tls(String),
}

impl std::str::FromStr for Endpoint {
    type Err = EndpointError;
    /// `unix:/path/to/gantry.sock`, a path, or `http://host:port`.
    fn from_str(s: &str) -> Result<Self, EndpointError> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(p)));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let addr = rest.trim_end_matches('/');
            if addr.is_empty() || addr.contains('/') {
                return Err(EndpointError::NotAnAddress(s.to_string()));
            }
            return Ok(Endpoint::Tcp(addr.to_string()));
        }
        if s.starts_with("https://") {
            return Err(EndpointError::Tls(s.to_string()));
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        Err(EndpointError::NotAnAddress(s.to_string()))
    }
}

/// A failed API call. A variant's cause (the system's, hyper's or serde's
/// error) is its `source()`, never repeated in its message.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the Gantry server at {endpoint}")]
    Connect {
        endpoint: Endpoint,
        #[source]
        source: std::io::Error,
    },
    #[error("the server at {endpoint} broke off the request")]
    Transport {
        endpoint: Endpoint,
        #[source]
        source: hyper::Error,
    },
    #[error("the request to {endpoint} could not be made")]
    Request {
        endpoint: Endpoint,
        #[source]
        source: hyper::http::Error,
    },
    /// The server answered with an error status and message.
    #[error("{message}")]
    Api { status: u16, message: String },
    #[error("the server's answer could not be read; is the CLI the same version as the server?")]
    Decode {
        #[source]
        source: serde_json::Error,
    },
    #[error("the request's body could not be encoded as JSON")]
    Encode {
        #[source]
        source: serde_json::Error,
    },
}

impl ClientError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What to do next, when there is one thing to say (a server that
    /// cannot be reached).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Connect { .. } => {
                Some("start it with `gantry server`, or point --server / GANTRY_SERVER at it")
            }
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
            serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode { source })
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
                Bytes::from(
                    serde_json::to_vec(b).map_err(|source| ClientError::Encode { source })?,
                ),
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
            .map_err(|source| ClientError::Request {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let connect_err = |source: std::io::Error| ClientError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        };
        let transport = |source: hyper::Error| ClientError::Transport {
            endpoint: self.endpoint.clone(),
            source,
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
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode { source })
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
        assert_eq!(
            "ftp://x".parse::<Endpoint>(),
            Err(EndpointError::NotAnAddress("ftp://x".into()))
        );
        assert!(
            "ftp://x"
                .parse::<Endpoint>()
                .unwrap_err()
                .to_string()
                .contains("HOST:PORT")
        );
        assert!(
            "https://x"
                .parse::<Endpoint>()
                .unwrap_err()
                .to_string()
                .contains("TLS")
        );
    }

    /// Every source of `e`, outermost first.
    fn causes(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = Vec::new();
        let mut c = e.source();
        while let Some(s) = c {
            out.push(s.to_string());
            c = s.source();
        }
        out
    }

    #[tokio::test]
    async fn a_server_that_cannot_be_reached_keeps_the_io_error_as_its_cause() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let client = Client::new(Endpoint::Unix(sock.clone()), None);
        let err = client
            .get::<serde_json::Value>("/healthz")
            .await
            .unwrap_err();
        let ClientError::Connect { source, .. } = &err else {
            panic!("expected Connect, got {err:?}");
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        let message = err.to_string();
        assert_eq!(
            message,
            format!("cannot reach the Gantry server at unix:{}", sock.display())
        );
        let causes = causes(&err);
        assert_eq!(causes, [source.to_string()]);
        assert!(!message.contains(&causes[0]), "the cause is not repeated");
        assert!(err.hint().unwrap().contains("gantry server"));
    }

    #[tokio::test]
    async fn an_unreadable_answer_keeps_the_json_error_as_its_cause() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nnot json")
                .await
                .unwrap();
        });
        let client = Client::new(Endpoint::Unix(sock), None);
        let err = client.get::<serde_json::Value>("/x").await.unwrap_err();
        assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
        let causes = causes(&err);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert!(causes[0].contains("expected ident"), "{causes:?}");
        assert!(!err.to_string().contains(&causes[0]));
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(seg("hello-app_1.x"), "hello-app_1.x");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
