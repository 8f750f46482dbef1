//! `gantry_proxy::fuzz::http1_request_head` on each input (see crates/gantry-proxy/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gantry_proxy::fuzz::http1_request_head(data));
