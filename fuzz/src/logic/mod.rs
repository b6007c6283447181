//! The logic of every fuzz target, shared by libFuzzer (`fuzz/fuzz_targets/`) and the main
//! workspace's `cargo test` (`core/tests/fuzz_regressions.rs`, which includes this folder by
//! path). A target is `run_bytes(data)`: it panics when an invariant fails, so libFuzzer
//! records the input as a crash and the regression test fails on the same file.
//!
//! Structured targets turn the bytes into their input with `arbitrary`, exactly as
//! `libfuzzer_sys::fuzz_target!(|input: T| ..)` would (`arbitrary_take_rest`).

#![allow(dead_code)]

/// The integration tests' helpers (seeded RNG, projection snapshots), shared by path.
#[path = "../../../core/tests/common/mod.rs"]
pub mod common;

pub mod bundle_decode;
pub mod frame_decode;
pub mod ingest;
pub mod merge_convergence;
pub mod model;
pub mod op_decode;
pub mod ops;
pub mod seeds;
pub mod session;

use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
pub use common::{snapshot, TestRng as FixedRng, T0_MS};
use huskies_core::{Node, NodeConfig, NodeId, NodeKey, StoryId, Timestamp};

/// A target: the name of its folders under `fuzz/seeds/` and `fuzz/regressions/`, and its
/// entry point.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: [Target; 6] = [
    ("op_decode", op_decode::run_bytes),
    ("bundle_decode", bundle_decode::run_bytes),
    ("frame_decode", frame_decode::run_bytes),
    ("session", session::run_bytes),
    ("ingest", ingest::run_bytes),
    ("merge_convergence", merge_convergence::run_bytes),
];

/// Elements until the bytes run out. `arbitrary`'s own `Vec` (even `take_rest`) flips a
/// coin before every element, so random bytes give one or two: the scripts of the structured
/// targets use this instead, so that every byte of a long input is a step.
pub fn until_empty<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> arbitrary::Result<Vec<T>> {
    let mut out = Vec::new();
    while !u.is_empty() {
        out.push(T::arbitrary(u)?);
    }
    Ok(out)
}

/// Decodes a structured input the way `fuzz_target!` does; `None` when the bytes run out
/// before the input is built (libFuzzer then skips the input too).
pub fn structured<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// `T0 + ms`.
pub fn at_ms(ms: u64) -> Timestamp {
    Timestamp::from_millis(T0_MS).add_millis(i64::try_from(ms).unwrap_or(i64::MAX / 4))
}

/// The fixed key seeds: index 0 is the first admin of the fuzz cluster, 1 and 2 are keys
/// the scripts usually admit, 3 is never admitted by the preamble (a non-member).
pub const KEY_SEEDS: [[u8; 32]; 4] = [[11; 32], [22; 32], [33; 32], [44; 32]];

/// The fixed key `i % 4`.
pub fn key(i: u8) -> NodeKey {
    NodeKey::from_seed(KEY_SEEDS[usize::from(i) % KEY_SEEDS.len()])
}

/// The node id of fixed key `i % 4`.
pub fn key_id(i: u8) -> NodeId {
    key(i).node_id()
}

/// A node config for targets: one verify thread, small out-of-order buffer (so the bound
/// is reachable by a fuzzer).
pub fn config() -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        max_buffered_ops: 64,
        max_buffered_bytes: 256 * 1024,
        ..NodeConfig::default()
    }
}

/// Checks every author chain `node` holds: seqs 1..=head present, each `prev` the id of
/// the op before, Lamport strictly increasing.
pub fn assert_chains_unbroken(node: &Node) {
    let vv = node.version_vector();
    for (&author, &head) in vv.iter() {
        let mut prev: Option<(huskies_core::OpId, u64)> = None;
        for seq in 1..=head {
            let op = node
                .op_at(&author, seq)
                .expect("op_at")
                .unwrap_or_else(|| panic!("chain of {author} has a hole at seq {seq} (head {head})"));
            let c = op.content();
            assert_eq!(c.seq, seq, "op_at returned the wrong seq");
            assert_eq!(c.author, author, "op_at returned another author's op");
            assert_eq!(c.prev, prev.map(|p| p.0), "chain of {author} broken at seq {seq}");
            if let Some((_, lamport)) = prev {
                assert!(
                    c.lamport > lamport,
                    "lamport not increasing on {author} at seq {seq}"
                );
            }
            prev = Some((op.id(), c.lamport));
        }
    }
}

/// `node.verify` must report no problem.
pub fn assert_verify_clean(node: &Node) {
    let report = node.verify(|_| {}).expect("verify runs");
    assert!(report.ok, "verify found problems: {:?}", report.problems);
}

/// A short printable string from a fuzz byte (names, reasons): a few fixed choices keep
/// LWW comparisons meaningful.
pub fn text(b: u8) -> String {
    const WORDS: [&str; 6] = ["a", "b", "fix login", "x-y", "ünïcode", ""];
    WORDS[usize::from(b) % WORDS.len()].to_string()
}

/// One of four story ids.
pub fn story_id(b: u8) -> StoryId {
    StoryId::new(format!("s{}", b % 4)).expect("valid story id")
}

/// Whether `HUSKIES_FUZZ_VERBOSE` is set: targets then print one summary line per input
/// (what it did), to judge how deep the inputs go.
pub fn verbose() -> bool {
    std::env::var_os("HUSKIES_FUZZ_VERBOSE").is_some()
}

/// Every file in `dir` (sorted by name), for seed and regression replays.
pub fn files_in(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    out
}
