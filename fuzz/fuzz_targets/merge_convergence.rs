//! libFuzzer entry point; the logic is `huskies_fuzz::logic::merge_convergence` (replayed by `cargo test`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| huskies_fuzz::logic::merge_convergence::run_bytes(data));
