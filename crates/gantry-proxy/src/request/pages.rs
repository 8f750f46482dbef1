//! The proxy's own answers: 404 (no route), 502, 503, 504. Small plain-text
//! pages that name the problem and the request id to quote in a report.

use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::request::headers::X_REQUEST_ID;
use crate::upstream::body::{Guard, ResponseBody};

/// Builds an error page; `guard` (when given) records the status.
pub(crate) fn page(
    status: StatusCode,
    request_id: &str,
    detail: &str,
    retry_after: Option<u64>,
    mut guard: Option<Guard>,
) -> Response<ResponseBody> {
    if let Some(g) = guard.as_mut() {
        g.respond(status.as_u16());
    }
    let reason = status.canonical_reason().unwrap_or("Error");
    let text = format!(
        "{} {reason}\n\n{detail}\n\nrequest id: {request_id}\n",
        status.as_u16()
    );
    let mut resp = Response::new(ResponseBody::full(text, guard));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    if let Some(secs) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
