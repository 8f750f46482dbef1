//! What the proxy tells about itself: per (route, set) counters and
//! latency (`stats`, read by `/stats` and `/metrics`), the JSON access log
//! (`access_log`), and the optional TCP `/metrics` listener (`metrics`).

pub(crate) mod access_log;
pub(crate) mod metrics;
pub(crate) mod stats;
