//! `gantry_spec::fuzz::spec` on each input: `gantry.toml` as the server
//! reads it from an uploaded bundle (see crates/gantry-spec/src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gantry_spec::fuzz::spec(data));
