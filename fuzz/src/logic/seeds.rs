//! The generated part of the seed corpus: well-formed inputs the byte-level targets would
//! take a fuzzer long to find (signed ops of every payload, a bundle, each frame kind), and
//! a few byte patterns for the structured targets. Written by
//! `cargo test -p huskies-core --test fuzz_regressions -- --ignored write_seed_corpus`.

use huskies_core::sync::{Message, RefuseCode};
use huskies_core::{encode_bundle, NodeId, OpId, SignedOp, VersionVector};

use super::ops::{
    preamble, Builder, EventSpec, LamportSpec, OpSpec, PayloadSpec, PrevSpec, SeqSpec, StageSpec,
};
use super::FixedRng;
use rand_core::RngCore;

/// One op of every payload kind, signed by fixed key 1 on one chain after the preamble.
pub fn sample_ops() -> Vec<SignedOp> {
    let mut b = Builder::default();
    let mut ops = preamble(&mut b);
    let payloads = [
        PayloadSpec::StoryCreate {
            story: 0,
            name: 2,
            body: Some(1),
            deps: vec![1],
        },
        PayloadSpec::StoryUpdate {
            story: 0,
            field: 0,
            value: 3,
        },
        PayloadSpec::Transition {
            story: 0,
            event: EventSpec::DepsMet,
            from: StageSpec::Backlog,
            chain_base: false,
        },
        PayloadSpec::Transition {
            story: 0,
            event: EventSpec::QaSkipped(1),
            from: StageSpec::Coding,
            chain_base: true,
        },
        PayloadSpec::Claim {
            story: 0,
            ttl: 60,
            takes_over: Some((2, 3)),
        },
        PayloadSpec::Release { story: 0 },
        PayloadSpec::LockAcquire { ttl: 60 },
        PayloadSpec::LockRelease,
        PayloadSpec::LockClear {
            holder: 2,
            through: 9,
        },
        PayloadSpec::Presence {
            label: 1,
            address: Some(2),
        },
        PayloadSpec::Execution {
            story: 0,
            pending: true,
        },
        PayloadSpec::StoryDelete { story: 0 },
        PayloadSpec::MemberRemove { key: 3, cutoff: 0 },
        PayloadSpec::KeyRotate {
            key: 3,
            valid_proof: true,
        },
    ];
    for payload in payloads {
        let spec = OpSpec {
            author: if matches!(payload, PayloadSpec::MemberRemove { .. }) {
                2
            } else {
                1
            },
            honesty: 1,
            seq: SeqSpec::Next,
            prev: PrevSpec::Chain,
            lamport: LamportSpec::Next(0),
            wall_secs: 5,
            payload,
            wrong_cluster: false,
        };
        ops.extend(b.build(&spec));
    }
    ops
}

/// `(target, file name, bytes)` for every generated seed.
pub fn corpus() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let ops = sample_ops();
    for (i, op) in ops.iter().enumerate() {
        out.push(("op_decode", format!("gen-op-{i:02}"), op.bytes().to_vec()));
    }
    out.push((
        "bundle_decode",
        "gen-bundle-all".into(),
        encode_bundle(ops.iter()),
    ));
    out.push(("bundle_decode", "gen-bundle-empty".into(), encode_bundle([])));
    let mut vv = VersionVector::default();
    vv.set(NodeId::from_bytes([1; 32]), 3);
    let frames = [
        Message::Hello {
            protocol: 1,
            cluster: super::ops::cluster(),
            node: super::key_id(1),
            challenge: [5; 32],
            ticket: Some([6; 32]),
        },
        Message::Auth {
            proof: [[1; 32], [2; 32]],
            have: vv.clone(),
            heads: vec![(NodeId::from_bytes([1; 32]), OpId::from_bytes([9; 32]))],
        },
        Message::Ops {
            ops: ops.iter().take(4).map(|o| o.bytes().to_vec()).collect(),
        },
        Message::Ack { have: vv, frames: 7 },
        Message::Refuse {
            code: RefuseCode::NotMember,
            reason: "not a member".into(),
        },
    ];
    for (i, f) in frames.iter().enumerate() {
        out.push(("frame_decode", format!("gen-frame-{i}-{}", f.name()), f.encode()));
    }
    // Structured targets: byte patterns of a few lengths (arbitrary reads any bytes).
    for target in ["session", "ingest", "merge_convergence"] {
        for (name, len) in [("short", 64usize), ("long", 1024)] {
            let mut bytes = vec![0u8; len];
            FixedRng::new(len as u64).fill_bytes(&mut bytes);
            out.push((target, format!("gen-random-{name}"), bytes));
        }
        out.push((target, "gen-ones".into(), vec![1; 256]));
    }
    out
}
