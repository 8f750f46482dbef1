//! One accepted client connection, before the request path: the PROXY
//! protocol header (`proxy_protocol`), the TLS handshake and the choice of
//! HTTP server (`listener`), the proxy's own HTTP/1.1 server for body-less,
//! non-upgrade requests (`http1_server`) or hyper's server for the rest,
//! and the idle timeout of connections hyper serves (`idle`).

pub(crate) mod http1_server;
pub(crate) mod idle;
pub(crate) mod listener;
pub(crate) mod proxy_protocol;
