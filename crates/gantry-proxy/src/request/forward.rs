//! Phase 4, and the driver of all phases: one client request in, one
//! response out.
//!
//! Two upstream clients, both pooled per worker thread, both with a typed
//! "could not connect" error (`is_connect`) that the retry below needs:
//! - requests without a body or upgrade (nearly all GET/HEAD traffic) go
//!   over the proxy's own HTTP/1.1 client, `upstream::http1_client`, which writes the request
//!   and parses the answer in the request's own task;
//! - the others over hyper-util's `legacy::Client` (`upstream::pools`),
//!   whose backend connections each run as a task on the worker's thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::http::uri::{PathAndQuery, Scheme};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::sync::watch;

use crate::observe::stats::ClientFault;
use crate::policy::csp_report::receive;
use crate::policy::{Check, client_ip};
use crate::request::headers::{
    X_REQUEST_ID, ensure_request_id, ensure_traceparent, request_host, set_forwarded_values,
    strip_hop_by_hop,
};
use crate::request::pages::page;
use crate::routing::balance::{Instance, pick};
use crate::routing::router::{CompiledRoute, CompiledSet, Router};
use crate::shared::Shared;
use crate::upstream::body::{Guard, RequestBody, ResponseBody, SharedBody, Upstream, UpstreamBody};

/// Methods a connect failure may retry on another instance.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// True for a request that carries no body: its stream already ended and
/// it declares no length but 0.
fn bodyless(headers: &hyper::HeaderMap, body: &RequestBody) -> bool {
    use http_body::Body as _;
    body.is_end_stream()
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Resolves once the set has been retired for `grace`; never while it is in
/// the table.
pub(crate) async fn drain_deadline(mut retired: watch::Receiver<bool>, grace: Duration) {
    loop {
        let ok = retired.wait_for(|r| *r).await.is_ok();
        if !ok {
            return std::future::pending().await;
        }
        tokio::select! {
            _ = tokio::time::sleep(grace) => return,
            back = async { retired.wait_for(|r| !*r).await.is_ok() } => {
                if !back {
                    return std::future::pending().await;
                }
            }
        }
    }
}

enum Failure {
    Connect(String),
    Other(String),
    Timeout,
    Drained,
    /// The client broke the request (its body); not the backend's failure.
    Client(ClientFault),
}

/// Whether a failed exchange is the client's doing: its body failed on
/// the client's side (broken framing, cut off, over `max_body`, the body
/// read timeout), or the backend gave up or timed out while the proxy had
/// long been waiting for the client's next body bytes.
fn client_fault(body: &SharedBody, failure: &Failure) -> Option<ClientFault> {
    if let Some(fault) = body.fault() {
        return Some(fault);
    }
    let waited = match failure {
        // No answer `timeout` after the body last moved, and it is the
        // client that has to move it.
        Failure::Timeout => body.waiting_on_client(),
        Failure::Other(_) | Failure::Drained => body.stalled(),
        Failure::Connect(_) | Failure::Client(_) => false,
    };
    waited.then_some(ClientFault::BodyTimeout)
}

/// `Connection: close` on an HTTP/1.x answer whose request body was not
/// read to its end.
fn close_after(resp: &mut Response<ResponseBody>, version: Version) {
    if version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// True for a request that came over TLS: a TLS listener (HTTP/1.1 has
/// no scheme in the URI), or an h2 request that says https.
pub(crate) fn https(over_tls: bool, req: &Request<RequestBody>) -> bool {
    over_tls || req.uri().scheme() == Some(&Scheme::HTTPS)
}

/// Routes and forwards one request. Phase 1 records the route's security
/// headers in `security_headers`: the caller applies them to every answer
/// of the route, the backend's or the proxy's own. (The caller, not a
/// wrapper here: each async layer copies the request's state once more.)
///
/// The steps, each a function below: [`start`] (the guard),
/// [`request_ids`], [`host_of`], phase 1 ([`select`], the route's policy checks, the
/// set entered: [`enter_set`], [`pin_sticky`]), phase 2
/// ([`rewrite_headers`]), phases 3 and 4 (a loop of [`pick`] and an
/// attempt, its failure judged by [`Attempts::blame`], a connect failure
/// retried by [`connect_failed`]), then the
/// answer ([`answer`]) or the proxy's own page ([`failure_page`]).
///
/// The steps of the common request are `#[inline(always)]`: each has this
/// one caller, and out of line (LLVM leaves them there, `handle`'s future
/// being large) their results and the answer are copied between frames,
/// about 600 instructions a request (BENCHMARKS.md, issue 13).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<RequestBody>,
    peer: SocketAddr,
    peer_ip: HeaderValue,
    (over_tls, https): (bool, bool),
    security_headers: &mut Option<Arc<crate::policy::CompiledHeaders>>,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    // Room for the headers phase 2 adds (request id, traceparent, three
    // X-Forwarded-*, X-Real-IP): one allocation instead of the map growing
    // step by step (it is made just big enough for the parsed headers).
    parts.headers.reserve(7);
    // A cheap clone (shared bytes): the path stays readable while the
    // headers change, without copying it.
    let uri = parts.uri.clone();
    let path = uri.path();
    let mut guard = start(&shared, &parts, path, peer);
    let id = request_ids(&shared, &mut parts.headers, &mut guard);
    let (host, host_value) = match host_of(&shared, &parts, &uri) {
        Ok(host) => host,
        Err(why) => return bad_request(&id.request_id, why, guard, parts.version),
    };
    let host = host.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");

    // Phase 1: route and set, the route's policy.
    let first = shared.routing.load();
    let later;
    let (mut route, mut set) = match select(&shared, &first, host, path) {
        Ok(chosen) => chosen,
        Err(refusal) => return refusal.page(&id.request_id, guard),
    };
    let logging = shared.log.enabled();
    if logging {
        guard.route = Some(route.id.clone());
    }
    *security_headers = route.policy.headers.clone();
    // Request policy: rate limit, CSP reports, declared body size.
    match route.policy.check(
        &parts.method,
        path,
        &parts.headers,
        client_ip(&parts.headers, peer.ip(), shared.config.trust_forwarded),
        &route.id,
    ) {
        Check::Pass => {}
        Check::Refuse {
            status,
            detail,
            retry_after,
        } => return refuse(set, status, &detail, retry_after, &id, guard, parts.version),
        // Boxed: a rare path; its state would make every request's larger.
        Check::CspReport => {
            return Box::pin(csp_report(route, &parts, body, peer, guard, &id)).await;
        }
    }
    if !enter_set(&mut guard, set) {
        // The table was swapped between the load and the in-flight count:
        // route again on the new table, so that a set once reported
        // drained never gets another request.
        later = shared.routing.load();
        (route, set) = match select(&shared, &later, host, path) {
            Ok(chosen) => chosen,
            Err(refusal) => return refusal.page(&id.request_id, guard),
        };
        if logging {
            guard.route = Some(route.id.clone());
        }
        guard.enter_set(set.stats.clone());
    }
    let pinned = pin_sticky(route, &mut set, &mut guard, &parts.headers);

    // Phase 2: headers.
    let (mut upgrade, negotiated) = rewrite_headers(
        &shared, route, &mut parts, &peer_ip, host_value, over_tls, &id,
    );
    let Some(path_and_query) = origin_form(&uri) else {
        let detail = format!(
            "The request path `{}` cannot be forwarded.",
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        return page(
            StatusCode::BAD_REQUEST,
            &id.request_id,
            &detail,
            None,
            Some(guard),
        );
    };

    // Phases 3 and 4: pick an instance, send, retry a connect failure.
    // A request without a body or upgrade takes the proxy's own HTTP/1.1
    // path on a worker (`http1_client`); others take hyper's client.
    let own_h1 = upgrade.is_none()
        && parts.method != Method::CONNECT
        && bodyless(&parts.headers, &body)
        && crate::upstream::http1_client::available();
    let body = SharedBody::new(body, route.policy.max_body, shared.config.body_read_timeout);
    guard.request_body = Some(body.clone());
    let timeout = route.timeout.unwrap_or(shared.config.response_timeout);
    let send = Attempts {
        shared: &shared,
        route,
        set,
        own_h1,
        connect_timeout: route
            .connect_timeout
            .unwrap_or(shared.config.connect_timeout),
        timeout,
        deadline: tokio::time::Instant::now() + timeout,
        // The set was in the table when the request started, so when its
        // drain timeout is not the shorter one (the default: both 30 s), it
        // ends after the response deadline: no need to watch it.
        watch_drain: shared.config.drain_timeout < timeout,
        path: &path_and_query,
        body: &body,
    };
    // The instances tried so far (pushed on a retry only: the common
    // request allocates nothing for it).
    let mut tried = Vec::new();
    let mut first = pinned;
    let mut last_failure = None;
    while let Some(i) = first.take().or_else(|| pick(&set.instances, &tried)) {
        let instance = &set.instances[i];
        let lease = instance.lease();
        let last_try = tried.len() + 1 >= set.instances.len();
        // Phase 4: one attempt on `instance`, with the response timeout
        // (from the request body's last move) and the drain deadline. The
        // common request (own client, no drain watch) is sent here, not in
        // an async fn of its own: each async layer copies the answer once
        // more. Others are boxed ([`Attempts::watched`]): their state would
        // make every request's future larger, and it is copied when it
        // starts.
        let result = if send.own_h1 && !send.watch_drain {
            tokio::time::timeout_at(
                send.deadline,
                send_h1(instance, send.connect_timeout, &parts, send.path),
            )
            .await
            .unwrap_or(Err(Failure::Timeout))
        } else {
            Box::pin(send.watched(instance, &mut parts, last_try)).await
        };
        match result.map_err(|failure| send.blame(failure)) {
            Ok(resp) => {
                instance.succeeded();
                guard.instance = Some(instance.addr);
                guard.lease = Some(lease);
                let sticky = (route.sticky.is_some() && pinned != Some(i)).then_some(i);
                // Not `let (resp, guard) = match upgrade …`: the pair
                // would copy the answer and the guard once more.
                let Some(up) = upgrade.take() else {
                    return answer(resp, guard, &id, negotiated, set, sticky, https);
                };
                return match tunnel(&shared, set, up, resp, guard, &id) {
                    Ok(tunnelled) => tunnelled,
                    Err((resp, guard)) => answer(resp, guard, &id, negotiated, set, sticky, https),
                };
            }
            Err(Failure::Connect(why)) => {
                last_failure = Some(connect_failed(&shared, &send, instance, &id, &why));
                if !(idempotent(&parts.method) && body.untouched()) {
                    break;
                }
                tried.push(i);
            }
            Err(failure) => {
                return failure_page(&send, failure, instance.addr, &id, guard, parts.version);
            }
        }
    }
    let detail = last_failure.unwrap_or_else(|| {
        format!(
            "Set `{}` of route `{}` has no instances.",
            set.name, route.id
        )
    });
    page(
        StatusCode::BAD_GATEWAY,
        &id.request_id,
        &detail,
        None,
        Some(guard),
    )
}

/// The request's id, as the backend gets it and the answer carries it.
struct Ids {
    request_id: String,
    /// The proxy made the id (the client sent none).
    new_id: bool,
    /// The answer's copy, marked sensitive: HPACK then sends it as a
    /// never-indexed literal. A value unique per request would otherwise be
    /// inserted into the h2 connection's header table on every answer, and
    /// each lookup walks every earlier id still in it.
    answer: Option<HeaderValue>,
}

/// The request's guard (in flight, access log).
#[inline(always)]
fn start(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    path: &str,
    peer: SocketAddr,
) -> Guard {
    Guard::new(
        shared.log.clone(),
        parts.method.clone(),
        // Only the access log reads it.
        if shared.log.enabled() {
            path.to_string()
        } else {
            String::new()
        },
        peer.ip(),
    )
}

/// The request's id, made when absent. (Apart from [`start`]: returned
/// together, the guard and the ids were copied once more.)
#[inline(always)]
fn request_ids(shared: &Shared, headers: &mut hyper::HeaderMap, guard: &mut Guard) -> Ids {
    let (request_id, new_id) = ensure_request_id(headers);
    // The guard keeps it for the access log only.
    if shared.log.enabled() {
        guard.request_id = request_id.clone();
    }
    let answer = headers.get(X_REQUEST_ID).map(|v| {
        let mut v = v.clone();
        v.set_sensitive(true);
        v
    });
    Ids {
        request_id,
        new_id,
        answer,
    }
}

/// The Host header (a cheap clone of its value), else the URI authority
/// (h2 `:authority`), and the same as the value the backend gets (none
/// when empty); a request with no or two hosts is refused (counted in
/// `bad_requests`).
#[allow(clippy::type_complexity)]
#[inline(always)]
fn host_of(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    uri: &Uri,
) -> Result<(Option<HeaderValue>, Option<HeaderValue>), &'static str> {
    match request_host(parts.version, &parts.headers, uri) {
        Ok(header) => {
            let value = header
                .clone()
                .filter(|v| !v.to_str().unwrap_or("").is_empty());
            Ok((header, value))
        }
        Err(why) => {
            shared.routing.registry.bad_requests.fetch_add(1, Relaxed);
            Err(why)
        }
    }
}

/// 400 before routing.
fn bad_request(
    request_id: &str,
    why: &str,
    guard: Guard,
    version: Version,
) -> Response<ResponseBody> {
    let mut resp = page(StatusCode::BAD_REQUEST, request_id, why, None, Some(guard));
    close_after(&mut resp, version);
    resp
}

/// The route's policy refused the request.
fn refuse(
    set: &CompiledSet,
    status: StatusCode,
    detail: &str,
    retry_after: Option<u64>,
    id: &Ids,
    guard: Guard,
    version: Version,
) -> Response<ResponseBody> {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        // A declared body over `max_body`: the client's, bound for this
        // set.
        set.stats.record_client_error(ClientFault::BodyTooLarge);
        let mut resp = page(status, &id.request_id, detail, retry_after, Some(guard));
        close_after(&mut resp, version);
        return resp;
    }
    page(status, &id.request_id, detail, retry_after, Some(guard))
}

/// `POST /_gantry/csp-report`: the proxy takes the report itself.
async fn csp_report(
    route: &CompiledRoute,
    parts: &hyper::http::request::Parts,
    body: RequestBody,
    peer: SocketAddr,
    mut guard: Guard,
    id: &Ids,
) -> Response<ResponseBody> {
    let reports = &route.policy.state.reports;
    match receive(reports, &parts.method, &parts.headers, body, peer.ip()).await {
        Ok(_) => {
            guard.respond(204);
            let mut resp = Response::new(ResponseBody::full(Bytes::new(), Some(guard)));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp
        }
        Err((status, detail)) => {
            // The report's body may be left unread (too large, wrong type):
            // the connection then closes after this answer, so say so; a
            // client would otherwise reuse it.
            let mut resp = page(status, &id.request_id, &detail, None, Some(guard));
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        }
    }
}

/// Counts the request in flight on `set`; false (and not counted) when the
/// set was retired meanwhile.
#[inline(always)]
fn enter_set(guard: &mut Guard, set: &CompiledSet) -> bool {
    guard.enter_set(set.stats.clone());
    if set.stats.is_retired() {
        guard.leave_set();
        return false;
    }
    true
}

/// Sticky sessions: the cookie may pin the set (the request moves to it)
/// and the first instance, which is returned.
#[inline(always)]
fn pin_sticky<'r>(
    route: &'r CompiledRoute,
    set: &mut &'r CompiledSet,
    guard: &mut Guard,
    headers: &hyper::HeaderMap,
) -> Option<usize> {
    let (s, i) = crate::routing::sticky::pinned(route, headers)?;
    if !std::ptr::eq(s, *set) {
        guard.leave_set();
        *set = s;
        guard.enter_set(s.stats.clone());
    }
    Some(i)
}

/// Phase 2: the request's headers as the backend gets them. A WebSocket
/// upgrade keeps its two hop-by-hop headers (returned, for the answer);
/// compression looks at Accept-Encoding before it goes.
#[inline(always)]
fn rewrite_headers(
    shared: &Shared,
    route: &CompiledRoute,
    parts: &mut hyper::http::request::Parts,
    peer_ip: &HeaderValue,
    host_value: Option<HeaderValue>,
    over_tls: bool,
    id: &Ids,
) -> (
    Option<crate::upstream::upgrade::Upgrade>,
    Option<crate::upstream::compress::Negotiated>,
) {
    let upgrade = crate::upstream::upgrade::take(parts);
    let negotiated = route
        .compress
        .then(|| crate::upstream::compress::negotiate(&parts.method, &parts.headers));
    strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        u.restore(&mut parts.headers);
    }
    ensure_traceparent(
        &mut parts.headers,
        id.new_id.then_some(id.request_id.as_str()),
    );
    set_forwarded_values(
        &mut parts.headers,
        peer_ip,
        host_value.clone(),
        if over_tls { "https" } else { "http" },
        shared.config.trust_forwarded,
    );
    // After the hop-by-hop strip, which may have removed it.
    if let Some(v) = host_value {
        parts.headers.insert(header::HOST, v);
    }
    (upgrade, negotiated)
}

/// The path and query the backend gets; `None` for `*` (OPTIONS *), which
/// has no origin-form to forward.
#[inline(always)]
fn origin_form(uri: &Uri) -> Option<PathAndQuery> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    pq.as_str().starts_with('/').then_some(pq)
}

/// What every attempt of one request shares.
struct Attempts<'a> {
    shared: &'a Shared,
    route: &'a CompiledRoute,
    set: &'a CompiledSet,
    own_h1: bool,
    connect_timeout: Duration,
    timeout: Duration,
    deadline: tokio::time::Instant,
    watch_drain: bool,
    path: &'a PathAndQuery,
    body: &'a Arc<SharedBody>,
}

impl Attempts<'_> {
    /// A failure while the client broke its body, or while the proxy had
    /// long been waiting for the client's body, is the client's.
    #[inline(always)]
    fn blame(&self, failure: Failure) -> Failure {
        if let Failure::Connect(_) = failure {
            return failure;
        }
        match client_fault(self.body, &failure) {
            Some(fault) => Failure::Client(fault),
            None => failure,
        }
    }

    /// An attempt over hyper's client, or one that watches the drain
    /// deadline.
    async fn watched(
        &self,
        instance: &Instance,
        parts: &mut hyper::http::request::Parts,
        last_try: bool,
    ) -> Result<Response<Upstream>, Failure> {
        let (shared, set, body) = (self.shared, self.set, self.body);
        let exchange = async {
            if self.own_h1 {
                return send_h1(instance, self.connect_timeout, parts, self.path).await;
            }
            // This worker's own pool (`upstream::pools`).
            let client = crate::upstream::pools::client(shared, self.route.connect_timeout);
            let body = UpstreamBody::new(body.clone(), set.stats.clone());
            send_hyper(&client, instance, parts, self.path, body, last_try).await
        };
        let drain = async {
            if self.watch_drain {
                drain_deadline(set.stats.retired(), shared.config.drain_timeout).await
            } else {
                std::future::pending().await
            }
        };
        let mut exchange = std::pin::pin!(exchange);
        let mut drain = std::pin::pin!(drain);
        let mut due = self.deadline;
        loop {
            tokio::select! {
                r = &mut exchange => break r,
                _ = &mut drain => break Err(Failure::Drained),
                _ = tokio::time::sleep_until(due) => {
                    // The response timeout counts from the request body's
                    // last move: a body still streaming is not the
                    // backend's delay.
                    match body.response_due(self.timeout) {
                        Some(later) if later > tokio::time::Instant::now() => due = later,
                        _ => break Err(Failure::Timeout),
                    }
                }
            }
        }
    }
}

/// A connect failure: counted toward the instance's ejection and logged;
/// the detail of the 502 if no other instance takes the request.
fn connect_failed(
    shared: &Shared,
    send: &Attempts<'_>,
    instance: &Instance,
    id: &Ids,
    why: &str,
) -> String {
    let (route, set) = (send.route, send.set);
    let ejected = instance.connect_failed(
        shared.config.eject_after_failures,
        shared.config.eject_cooloff,
    );
    tracing::warn!(
        route = %route.id, set = %set.name, instance = %instance.addr,
        request_id = %id.request_id, ejected, error = %why,
        "cannot connect to backend instance"
    );
    format!(
        "Cannot connect to any instance of set `{}` of route `{}`.",
        set.name, route.id
    )
}

/// The backend switched protocols on an upgrade request: the tunnel
/// answers (and keeps the guard), or the answer comes back, to be sent as
/// an ordinary response. Upgrades always take hyper's client (`own_h1` is
/// false).
#[allow(clippy::result_large_err)]
fn tunnel(
    shared: &Shared,
    set: &CompiledSet,
    up: crate::upstream::upgrade::Upgrade,
    resp: Response<Upstream>,
    guard: Guard,
    id: &Ids,
) -> Result<Response<ResponseBody>, (Response<Upstream>, Guard)> {
    let (head, body) = resp.into_parts();
    let Upstream::Hyper(incoming) = body else {
        return Err((Response::from_parts(head, body), guard));
    };
    let drain = crate::upstream::upgrade::Drain {
        retired: set.stats.retired(),
        grace: shared.config.websocket_drain_grace,
        tunnels: shared.tunnels.clone(),
    };
    let stats = set.stats.clone();
    let resp = Response::from_parts(head, incoming);
    match up.answer(resp, guard, stats, id.answer.as_ref(), drain) {
        Ok(answer) => Ok(answer),
        Err((r, g)) => Err((r.map(Upstream::Hyper), g)),
    }
}

/// The backend's answer on its way back: hop-by-hop headers out, the
/// request id in, compressed when negotiated, the sticky cookie when the
/// instance `sticky` is not the one the client is pinned to.
#[inline(always)]
fn answer(
    resp: Response<Upstream>,
    guard: Guard,
    id: &Ids,
    negotiated: Option<crate::upstream::compress::Negotiated>,
    set: &CompiledSet,
    sticky: Option<usize>,
    https: bool,
) -> Response<ResponseBody> {
    let mut response = respond(resp, guard, id.answer.as_ref());
    if let Some(n) = negotiated
        && let Some(coding) = crate::upstream::compress::prepare(&mut response, n)
    {
        response = response.map(|b| b.compress(coding));
    }
    if let Some(i) = sticky {
        crate::routing::sticky::remember(response.headers_mut(), set, i, https);
    }
    response
}

/// The proxy's own page for a failed attempt (not a connect failure).
fn failure_page(
    send: &Attempts<'_>,
    failure: Failure,
    instance: SocketAddr,
    id: &Ids,
    mut guard: Guard,
    version: Version,
) -> Response<ResponseBody> {
    let (shared, route, set) = (send.shared, send.route, send.set);
    guard.instance = Some(instance);
    let request_id = id.request_id.as_str();
    let (status, detail) = match failure {
        Failure::Client(fault) => {
            let (status, detail) = match fault {
                ClientFault::BodyTooLarge => {
                    route.policy.state.body_too_large.fetch_add(1, Relaxed);
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "The request body is larger than route `{}` accepts ({} bytes).",
                            route.id,
                            route.policy.max_body.unwrap_or_default()
                        ),
                    )
                }
                ClientFault::BadFraming => (
                    StatusCode::BAD_REQUEST,
                    "The request body's framing is broken (chunked encoding).".to_string(),
                ),
                ClientFault::IncompleteBody => (
                    StatusCode::BAD_REQUEST,
                    "The request body ended before it was complete.".to_string(),
                ),
                ClientFault::BodyTimeout => (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "The request body did not arrive in time (at most {} ms between \
                         its bytes).",
                        shared.config.body_read_timeout.as_millis()
                    ),
                ),
            };
            tracing::debug!(
                route = %route.id, set = %set.name, request_id = %request_id,
                reason = fault.label(), "the client broke its request"
            );
            guard.client_error(fault);
            let mut resp = page(status, request_id, &detail, None, Some(guard));
            // The rest of the body, if any, is not read: the connection
            // cannot carry another request.
            close_after(&mut resp, version);
            return resp;
        }
        Failure::Other(why) => {
            tracing::warn!(
                route = %route.id, set = %set.name, instance = %instance,
                request_id = %request_id, error = %why, "backend request failed"
            );
            (
                StatusCode::BAD_GATEWAY,
                format!(
                    "The backend (set `{}` of route `{}`) broke off the request.",
                    set.name, route.id
                ),
            )
        }
        Failure::Timeout => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "The backend (set `{}` of route `{}`) did not answer within {} ms.",
                set.name,
                route.id,
                send.timeout.as_millis()
            ),
        ),
        Failure::Drained => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "Set `{}` of route `{}` was removed and did not answer within the drain \
                 timeout.",
                set.name, route.id
            ),
        ),
        // Retried or answered by the caller.
        Failure::Connect(why) => (StatusCode::BAD_GATEWAY, why),
    };
    page(status, request_id, &detail, None, Some(guard))
}

/// One attempt over the proxy's own HTTP/1.1 client (`http1_client`).
async fn send_h1(
    instance: &Instance,
    connect_timeout: Duration,
    parts: &hyper::http::request::Parts,
    path: &PathAndQuery,
) -> Result<Response<Upstream>, Failure> {
    let head = crate::upstream::http1_client::Head {
        method: &parts.method,
        path,
        headers: &parts.headers,
        authority: instance.authority.as_ref().map_or("", |a| a.as_str()),
    };
    match crate::upstream::http1_client::send(
        instance.addr,
        connect_timeout,
        head,
        idempotent(&parts.method),
    )
    .await
    {
        Ok(resp) => Ok(resp.map(Upstream::H1)),
        Err(e) if e.is_connect() => Err(Failure::Connect(crate::error::chain(&e))),
        Err(e) => Err(Failure::Other(crate::error::chain(&e))),
    }
}

/// One attempt over hyper's client. On the last try (no other instance
/// is left to retry on) the headers are handed over instead of copied.
async fn send_hyper(
    client: &crate::upstream::pools::UpstreamClient,
    instance: &Instance,
    parts: &mut hyper::http::request::Parts,
    path: &PathAndQuery,
    body: UpstreamBody,
    last_try: bool,
) -> Result<Response<Upstream>, Failure> {
    let mut uri_parts = hyper::http::uri::Parts::default();
    uri_parts.scheme = Some(Scheme::HTTP);
    uri_parts.authority = instance.authority.clone();
    uri_parts.path_and_query = Some(path.clone());
    let uri = Uri::from_parts(uri_parts)
        .map_err(|e| Failure::Other(format!("cannot build the backend URI: {e}")))?;
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method.clone();
    *upstream.uri_mut() = uri;
    *upstream.version_mut() = Version::HTTP_11;
    *upstream.headers_mut() = if last_try {
        std::mem::take(&mut parts.headers)
    } else {
        parts.headers.clone()
    };
    match client.request(upstream).await {
        Ok(resp) => Ok(resp.map(Upstream::Hyper)),
        Err(e) if e.is_connect() => Err(Failure::Connect(crate::error::chain(&e))),
        Err(e) => Err(Failure::Other(crate::error::chain(&e))),
    }
}

/// Why phase 1 answers the request itself.
struct Refusal {
    status: StatusCode,
    detail: String,
    retry_after: Option<u64>,
}

impl Refusal {
    fn page(self, request_id: &str, guard: Guard) -> Response<ResponseBody> {
        page(
            self.status,
            request_id,
            &self.detail,
            self.retry_after,
            Some(guard),
        )
    }
}

/// Phase 1: the route for host and path, and a weighted set of it.
fn select<'r>(
    shared: &Shared,
    router: &'r Router,
    host: &str,
    path: &str,
) -> Result<(&'r CompiledRoute, &'r CompiledSet), Refusal> {
    let Some(route) = router.find(host, path) else {
        shared.routing.registry.unrouted.fetch_add(1, Relaxed);
        return Err(Refusal {
            status: StatusCode::NOT_FOUND,
            detail: format!("No route matches host `{host}` and path `{path}` on this proxy."),
            retry_after: None,
        });
    };
    if let Some(m) = &route.maintenance {
        shared.routing.registry.maintenance.fetch_add(1, Relaxed);
        return Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: m.message.clone(),
            retry_after: Some(m.retry_after_secs.unwrap_or(300)),
        });
    }
    match route.choose_set() {
        Some(set) => Ok((route, set)),
        None => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            detail: format!("Route `{}` has no backend set with traffic.", route.id),
            retry_after: None,
        }),
    }
}

fn respond(
    resp: Response<Upstream>,
    mut guard: Guard,
    request_id: Option<&HeaderValue>,
) -> Response<ResponseBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(X_REQUEST_ID)
        && let Some(v) = request_id
    {
        parts.headers.insert(X_REQUEST_ID, v.clone());
    }
    parts.version = Version::default();
    guard.respond(parts.status.as_u16());
    Response::from_parts(parts, ResponseBody::upstream(body, guard))
}
