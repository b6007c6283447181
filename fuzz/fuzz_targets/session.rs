//! libFuzzer entry point; the logic is `huskies_fuzz::logic::session` (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| huskies_fuzz::logic::session::run_bytes(data));
