//! Toward the backends, and the bodies on the way: the proxy's own
//! HTTP/1.1 client for body-less requests (`http1_client`), hyper's pooled
//! clients for the others (`pools`), the request and response bodies with
//! their guard (`body`, phase 5), streamed compression (`compress`) and
//! WebSocket tunnels (`upgrade`).

pub(crate) mod body;
pub(crate) mod compress;
pub(crate) mod http1_client;
pub(crate) mod pools;
pub(crate) mod upgrade;
