//! Fuzz targets for huskies-core. Each target's logic lives in [`logic`], so the same code
//! runs under libFuzzer (`fuzz_targets/`) and in the main workspace's `cargo test`
//! (`core/tests/fuzz_regressions.rs` includes `src/logic/mod.rs` by path and replays the
//! committed corpus and every saved crasher).

#[path = "logic/mod.rs"]
pub mod logic;
