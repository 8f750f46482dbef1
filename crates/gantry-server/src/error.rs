//! The one error type of the API ([`ApiError`]: a status and a message
//! that says what to do), the server's own ([`ServerError`]: why it could
//! not start or serve), and [`chain`], which renders an error with its
//! causes for a message.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gantry_api::ErrorBody;
use gantry_store::StoreError;

/// An API failure. Its message reaches the caller verbatim, so it must name
/// the thing at fault and the next step, and never carry a secret.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

/// Set on error responses so the audit layer can record why a call failed.
#[derive(Debug, Clone)]
pub(crate) struct ErrorMessage(pub(crate) String);

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub(crate) fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

/// Why the server could not start, or stopped serving. Each variant's
/// message names what failed; its cause is its `source()`, never repeated
/// in the message.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store in {}", dir.display())]
    Store {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "another gantry server is already running on the data directory {}; stop it first, \
         or use another --data-dir",
        dir.display()
    )]
    AlreadyRunning { dir: PathBuf },
    #[error("cannot lock {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read who owns the data directory {}", dir.display())]
    Owner {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the runtime: the recorded instances cannot be read")]
    Adopt {
        #[source]
        source: StoreError,
    },
    #[error("cannot resume the unfinished deploys: {message}")]
    Resume { message: String },
    #[error("a server is already answering on {}; stop it first", path.display())]
    SocketInUse { path: PathBuf },
    #[error("cannot remove the stale socket {}", path.display())]
    StaleSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the socket {}", path.display())]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set the mode of {}", path.display())]
    SocketMode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}; is the port in use?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the API server failed")]
    Serve {
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot open the metrics store in {}; move it aside to start with an empty one \
         (its samples are then lost), or restore it from a backup",
        dir.display()
    )]
    Metrics {
        dir: PathBuf,
        #[source]
        source: gantry_metrics::DbError,
    },
    #[error("cannot start the metrics store's WAL sync thread")]
    MetricsSyncer {
        #[source]
        source: std::io::Error,
    },
    #[error("a task of the server's start failed")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

/// `e` and its causes as one line, `: `-separated: the form of an API
/// message or a log field. A cause whose text is exactly the one before
/// it (an outside error that prints its source as its own message, such
/// as rusqlite's) is not written twice.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut last = text.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if t != last {
            text.push_str(": ");
            text.push_str(&t);
        }
        last = t;
        cause = c.source();
    }
    text
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            StoreError::Vault(gantry_store::vault::VaultError::KeyFromEnv) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = chain(&e);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %message, "store failure");
        }
        Self::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message.clone(),
            }),
        )
            .into_response();
        resp.extensions_mut().insert(ErrorMessage(self.message));
        resp
    }
}

/// Middleware over the whole router: every error answer leaves in the API's
/// JSON shape, including the ones axum makes itself (405, path and body
/// rejections).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    json_error(resp, &method, &path).await
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"))
}

/// Marks a 405 whose message could not name the allowed methods yet.
#[derive(Debug, Clone)]
struct AllowLater;

/// An error answer that is not JSON (an axum rejection's text, or no body)
/// as an [`ApiError`] with a message that says what to do; any other answer
/// unchanged. Headers such as `Allow` are kept.
pub(crate) async fn json_error(resp: Response, method: &Method, path: &str) -> Response {
    let status = resp.status();
    // A 405 made inside the route's layers gets its `Allow` header only on
    // the way out; the outer pass then names the methods.
    let allow_now = resp.extensions().get::<AllowLater>().is_some()
        && resp.headers().contains_key(header::ALLOW);
    if !allow_now
        && (!(status.is_client_error() || status.is_server_error())
            || resp.extensions().get::<ErrorMessage>().is_some()
            || is_json(resp.headers()))
    {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            match parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
            {
                Some(allowed) => format!(
                    "{method} is not allowed on {path}; it accepts {}",
                    allowed.replace(',', ", ")
                ),
                None => format!("{method} is not allowed on {path}"),
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is too large for {method} {path}: a JSON body may have at most \
             {} MiB (a source bundle {} GiB)",
            crate::limits::MAX_BODY / (1024 * 1024),
            crate::limits::MAX_BUNDLE / (1024 * 1024 * 1024)
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => format!(
            "{method} {path} takes a JSON body: send one with the header `Content-Type: \
             application/json`"
        ),
        _ if text.is_empty() => format!(
            "{method} {path}: {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        ),
        _ => text,
    };
    // The new body in the old answer: its headers (`Allow`) and extensions
    // (the actor, for the audit entry) stay.
    let fresh = ApiError::new(status, message).into_response();
    let (mut fresh_parts, body) = fresh.into_parts();
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &fresh_parts.headers {
        parts.headers.insert(name.clone(), value.clone());
    }
    if let Some(m) = fresh_parts.extensions.remove::<ErrorMessage>() {
        parts.extensions.insert(m);
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        if parts.headers.contains_key(header::ALLOW) {
            parts.extensions.remove::<AllowLater>();
        } else {
            parts.extensions.insert(AllowLater);
        }
    }
    Response::from_parts(parts, body)
}
