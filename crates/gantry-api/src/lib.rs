//! The control plane's HTTP API contract: wire types under `/api/v1`, and the
//! small client the CLI (and tests) use to call it over a unix socket or TCP.
//!
//! Both sides depend on this crate and on nothing of each other, so the CLI
//! cannot take a hidden second path into the server's state.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod client;
pub mod types;

pub use client::{Client, ClientError, Endpoint, EndpointError};
pub use hyper::Method;
pub use types::*;
