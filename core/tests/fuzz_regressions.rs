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

/// Replays a whole folder (e.g. a fuzzing run's `fuzz/corpus/<target>/`) in a debug build:
/// `HUSKIES_FUZZ_REPLAY=<target>:<folder> cargo test -p huskies-core --test fuzz_regressions
/// -- --ignored --nocapture replay_folder` (add `HUSKIES_FUZZ_VERBOSE=1` for one line per input).
#[test]
#[ignore = "needs HUSKIES_FUZZ_REPLAY=<target>:<folder>"]
fn replay_folder() {
    let spec = std::env::var("HUSKIES_FUZZ_REPLAY").expect("HUSKIES_FUZZ_REPLAY=<target>:<folder>");
    let (target, folder) = spec.split_once(':').expect("<target>:<folder>");
    let run = logic::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .map(|(_, run)| *run)
        .expect("known target");
    let files = logic::files_in(Path::new(folder));
    for file in &files {
        run(&std::fs::read(file).expect("read input"));
    }
    eprintln!("replayed {} inputs of {target}", files.len());
}

/// Found by the `ingest` target: an author's second op for seq 3 whose `prev` is not the
/// op held at seq 2 proves the chain split at seq 2. A replica that held seq 3 already put
/// the fork at 3, one that got the second op first put it at 2 (its `prev` check): the two
/// voided different ops and diverged. Both must now put it at 2.
#[test]
fn fork_point_does_not_depend_on_arrival_order() {
    use huskies_core::{OpId, Payload, Role, UnverifiedOp};
    use logic::common::RawAuthor;
    let wall = logic::at_ms(0);
    let mut admin = RawAuthor::new(logic::KEY_SEEDS[0], logic::ops::cluster());
    let genesis = admin.next(
        1,
        wall,
        Payload::Genesis {
            name: logic::ops::CLUSTER_NAME.into(),
            nonce: [0; 16],
        },
    );
    let add = |k: u8| Payload::MemberAdd {
        node: logic::key_id(k),
        role: Role::Member,
    };
    let second = admin.next(2, wall, add(1));
    let third = admin.next(3, wall, add(2));
    let other = logic::common::craft(
        &admin.key,
        admin.cluster,
        3,
        3,
        Some(OpId::from_bytes([9; 32])),
        wall,
        Payload::LockRelease,
    );
    let dir = tempfile::tempdir().unwrap();
    let orders = [
        [&genesis, &second, &third, &other],
        [&genesis, &second, &other, &third],
    ];
    let mut snapshots = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let mut node = logic::ingest::joining_node(&dir.path().join(format!("n{i}")), i as u64);
        for op in order {
            let op: UnverifiedOp = (*op).clone().into_unverified();
            let _report = node.ingest(vec![op]).unwrap();
        }
        let forks = node.forks().unwrap();
        assert_eq!(forks.len(), 1, "order {i}: {forks:?}");
        // Seq 2 is void: key 1 was never admitted.
        assert!(
            node.members().iter().all(|m| m.node != logic::key_id(1)),
            "order {i}"
        );
        snapshots.push(logic::snapshot(&node, wall));
    }
    assert_eq!(snapshots[0], snapshots[1]);
}

/// Inputs that still fail: open bugs found by fuzzing, described in `docs/testing.md`. Run
/// by hand; when one is fixed, its file moves to `fuzz/regressions/<target>/`.
#[test]
#[ignore = "open bugs: fails until they are fixed (docs/testing.md)"]
fn open_bugs_replay() {
    for (target, run) in logic::TARGETS {
        for file in logic::files_in(&fuzz_dir().join("open").join(target)) {
            eprintln!("replaying {}", file.display());
            run(&std::fs::read(&file).expect("read input"));
        }
    }
}
