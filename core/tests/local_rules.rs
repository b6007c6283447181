//! Local commands are held to more than ops from peers: a new story id must start with a
//! letter or digit, an event that records a reason needs one, a merge failure names a known
//! kind, and a story is superseded only by another live story. The same content arriving
//! signed from a peer is admitted (validity must not depend on arrival order or on the
//! version judging it), so replicas stay deterministic.

use huskies_core::{
    Command, ErrorKind, InitMode, Node, NodeConfig, NodeKey, OpContent, Payload, PipelineEvent, SignedOp,
    Stage, StageKind, StoryId, Timestamp, UnverifiedOp, VersionVector, OP_FORMAT_VERSION,
};

fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_763_700_000_000).add_secs(secs)
}

fn sid(s: &str) -> StoryId {
    StoryId::new(s).unwrap()
}

fn event(node: &mut Node, id: &str, event: PipelineEvent) -> Result<(), huskies_core::Error> {
    node.execute(at(2), Command::Event { id: sid(id), event })
        .map(|_| ())
}

#[test]
fn local_commands_are_refused_what_peer_ops_may_carry() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::init(
        &dir.path().join("a"),
        InitMode::NewCluster { name: "rules".into() },
        &mut rand_core::OsRng,
        at(0),
        NodeConfig::default(),
    )
    .unwrap();
    a.execute(at(1), Command::add_story(sid("s"), "S")).unwrap();
    a.execute(at(1), Command::add_story(sid("m"), "M")).unwrap();
    event(&mut a, "m", PipelineEvent::DepsMet).unwrap();
    event(&mut a, "m", PipelineEvent::qa_skipped("feature/m", 1).unwrap()).unwrap();

    // Refused locally, each with its kind; nothing is written.
    let before = a.version_vector();
    for id in [".", "..", "-x", "_x"] {
        let err = a.execute(at(2), Command::add_story(sid(id), "bad")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{id}: {err}");
        assert!(
            err.to_string().contains("must start with a letter or a digit"),
            "{err}"
        );
    }
    for blank in ["", "  "] {
        for ev in [
            PipelineEvent::Block { reason: blank.into() },
            PipelineEvent::ReviewHold { reason: blank.into() },
            PipelineEvent::MergeFailedFinal { reason: blank.into() },
            PipelineEvent::MergeConflict {
                kind: "conflict".into(),
                reason: blank.into(),
            },
        ] {
            let err = event(&mut a, "m", ev.clone()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{ev:?}: {err}");
            assert!(err.to_string().contains("needs a reason"), "{err}");
        }
    }
    let bogus = PipelineEvent::MergeConflict {
        kind: "bogus".into(),
        reason: "src/a.rs".into(),
    };
    let err = event(&mut a, "m", bogus).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("conflict, hook"), "{err}");
    let err = event(&mut a, "s", PipelineEvent::Supersede { by: sid("nope") }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = event(&mut a, "s", PipelineEvent::Supersede { by: sid("s") }).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(a.version_vector(), before, "a refused command writes nothing");

    // What is allowed still works.
    event(
        &mut a,
        "m",
        PipelineEvent::MergeConflict {
            kind: "hook".into(),
            reason: "pre-merge hook".into(),
        },
    )
    .unwrap();

    // The same content, signed by a's key, reaches b as a peer's ops: admitted.
    let key = NodeKey::load(&dir.path().join("a").join("node.key")).unwrap();
    let mut ops = a.ops_since(&VersionVector::default()).unwrap();
    let mut prev = ops.last().unwrap().clone();
    let payloads = vec![
        Payload::StoryCreate {
            story: sid("-x"),
            name: String::new(),
            body: None,
            depends_on: vec![sid("missing")],
        },
        Payload::Transition {
            story: sid("-x"),
            event: PipelineEvent::Block {
                reason: String::new(),
            },
            from: Stage::Backlog,
            base: None,
        },
        Payload::Transition {
            story: sid("s"),
            event: PipelineEvent::Supersede { by: sid("nope") },
            from: Stage::Backlog,
            base: None,
        },
    ];
    for (i, payload) in payloads.into_iter().enumerate() {
        let content = OpContent {
            version: OP_FORMAT_VERSION,
            cluster: a.cluster_id(),
            author: a.node_id(),
            seq: prev.content().seq + 1,
            lamport: prev.content().lamport + 1,
            prev: Some(prev.id()),
            wall: at(10 + i as u64),
            payload,
        };
        let op = SignedOp::sign(content, &key).unwrap();
        ops.push(op.clone());
        prev = op;
    }
    let mut b = Node::init(
        &dir.path().join("b"),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut rand_core::OsRng,
        at(0),
        NodeConfig::default(),
    )
    .unwrap();
    let unverified: Vec<UnverifiedOp> = ops
        .iter()
        .map(|op| UnverifiedOp::decode(op.bytes()).unwrap())
        .collect();
    let report = b.ingest(unverified).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(report.applied, ops.len());
    let x = b.story(&sid("-x"), at(20)).unwrap();
    assert_eq!(x.stage.kind(), StageKind::Archived);
    let s = b.story(&sid("s"), at(20)).unwrap();
    assert_eq!(s.stage.kind(), StageKind::Archived);
}
