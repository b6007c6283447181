//! Replays the fuzz targets of `fuzz/` on every committed input: the crashers under
//! `fuzz/regressions/<target>/` (each one a bug that was found and fixed, which must never
//! come back) and the committed seed corpus under `fuzz/seeds/<target>/`. The target logic is the
//! fuzz crate's own (`fuzz/src/logic/`, included by path), so a file fails here exactly
//! when it fails under libFuzzer. See `docs/testing.md`.

#[path = "../../fuzz/src/logic/mod.rs"]
mod logic;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `target` on every file of its regression and seed folders; returns how many.
fn replay(target: &str) -> usize {
    let run = logic::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .expect("known target");
    let mut n = 0;
    for folder in ["regressions", "seeds"] {
        for file in logic::files_in(&fuzz_dir().join(folder).join(target)) {
            let bytes = std::fs::read(&file).expect("read input");
            eprintln!("replaying {}", file.display());
            run(&bytes);
            n += 1;
        }
    }
    n
}

#[test]
fn op_decode_inputs_replay() {
    assert!(replay("op_decode") > 0, "no committed op_decode inputs");
}

#[test]
fn bundle_decode_inputs_replay() {
    assert!(replay("bundle_decode") > 0, "no committed bundle_decode inputs");
}

#[test]
fn frame_decode_inputs_replay() {
    assert!(replay("frame_decode") > 0, "no committed frame_decode inputs");
}

#[test]
fn session_inputs_replay() {
    assert!(replay("session") > 0, "no committed session inputs");
}

#[test]
fn ingest_inputs_replay() {
    assert!(replay("ingest") > 0, "no committed ingest inputs");
}

#[test]
fn merge_convergence_inputs_replay() {
    assert!(
        replay("merge_convergence") > 0,
        "no committed merge_convergence inputs"
    );
}

/// The generated seeds are valid inputs: every sample op decodes and verifies.
#[test]
fn generated_seed_ops_verify() {
    for op in logic::seeds::sample_ops() {
        let decoded = huskies_core::UnverifiedOp::decode(op.bytes()).expect("seed op decodes");
        decoded.verify().map_err(|(_, e)| e).expect("seed op verifies");
    }
}

/// Writes the generated seeds into `fuzz/seeds/<target>/` (run by hand, see
/// `docs/testing.md`): `cargo test -p huskies-core --test fuzz_regressions -- --ignored
/// write_seed_corpus`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_seed_corpus() {
    for (target, name, bytes) in logic::seeds::corpus() {
        let dir = fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
