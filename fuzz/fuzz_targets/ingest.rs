//! libFuzzer entry point; the logic is `huskies_fuzz::logic::ingest` (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| huskies_fuzz::logic::ingest::run_bytes(data));
