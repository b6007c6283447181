//! libFuzzer entry point; the logic is `huskies_fuzz::logic::op_decode` (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| huskies_fuzz::logic::op_decode::run_bytes(data));
