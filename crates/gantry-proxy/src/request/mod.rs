//! The request path's driver and its steps of its own: `forward` runs the
//! phases for one request (phase 4: sending, retrying, answering), with the
//! header rewrites of phase 2 (`headers`) and the proxy's own error pages
//! (`pages`).

pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod pages;
