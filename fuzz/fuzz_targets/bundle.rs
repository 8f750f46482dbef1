//! `gantry_api::bundle::fuzz::unpack` on each input: a source bundle as
//! `POST …/releases` takes it (see crates/gantry-api/src/bundle.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gantry_api::bundle::fuzz::unpack(data));
