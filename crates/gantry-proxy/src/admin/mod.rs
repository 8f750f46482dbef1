//! The admin API on a unix socket: the proxy's side (`server`) and the
//! client the control plane drives it with (`client`, [`AdminClient`](client::AdminClient)).

pub(crate) mod client;
pub(crate) mod server;
