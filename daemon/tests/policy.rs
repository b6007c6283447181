//! The cluster policies: archive Done stories after the retention period, block a story
//! after N merge failures in a row, clear stale merge locks; only the leader acts.

use std::num::NonZeroU32;

use huskies_core::{
    ArchiveReason, Command, InitMode, Node, NodeConfig, PipelineEvent, Role, Stage, StoryId, Timestamp,
};
use huskies_daemon::{apply_policies, DaemonConfig};

fn t(secs: u64) -> Timestamp {
    Timestamp::from_millis(1_763_700_000_000).add_secs(secs)
}

fn ev(n: &mut Node, at: u64, id: &str, e: PipelineEvent) {
    n.execute(
        t(at),
        Command::Event {
            id: StoryId::new(id).unwrap(),
            event: e,
        },
    )
    .unwrap();
}

/// A new cluster's only node, with a heartbeat at t(0) (the leader).
fn alive_founder(home: &std::path::Path) -> Node {
    let mut n = Node::init(
        home,
        InitMode::NewCluster { name: "p".into() },
        &mut rand_core::OsRng,
        t(0),
        NodeConfig::default(),
    )
    .unwrap();
    n.execute(
        t(0),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    n
}

fn merge_story(n: &mut Node, id: &str) {
    n.execute(
        t(0),
        Command::AddStory {
            id: StoryId::new(id).unwrap(),
            name: id.into(),
            body: None,
            depends_on: vec![],
        },
    )
    .unwrap();
    ev(n, 0, id, PipelineEvent::DepsMet);
    ev(
        n,
        0,
        id,
        PipelineEvent::QaSkipped {
            branch: "b".into(),
            commits: NonZeroU32::new(1).unwrap(),
        },
    );
}

#[test]
fn done_stories_are_archived_after_the_retention_period() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = alive_founder(dir.path());
    merge_story(&mut n, "1_done");
    ev(
        &mut n,
        10,
        "1_done",
        PipelineEvent::MergeSucceeded { commit: "c".into() },
    );
    let config = DaemonConfig {
        retention_secs: 3600,
        ..DaemonConfig::default()
    };
    let id = StoryId::new("1_done").unwrap();
    n.execute(
        t(3000),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    assert_eq!(apply_policies(&mut n, t(3000), &config).unwrap(), 0, "not yet");
    assert!(matches!(n.story(&id, t(3000)).unwrap().stage, Stage::Done { .. }));
    n.execute(
        t(3700),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    assert_eq!(apply_policies(&mut n, t(3700), &config).unwrap(), 1);
    assert!(matches!(
        n.story(&id, t(3700)).unwrap().stage,
        Stage::Archived {
            reason: ArchiveReason::Completed,
            ..
        }
    ));
}

#[test]
fn repeated_merge_failures_block_the_story() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = alive_founder(dir.path());
    merge_story(&mut n, "2_flaky");
    let config = DaemonConfig {
        block_after_merge_failures: 3,
        ..DaemonConfig::default()
    };
    let id = StoryId::new("2_flaky").unwrap();
    for i in 0..3 {
        ev(
            &mut n,
            1,
            "2_flaky",
            PipelineEvent::MergeConflict {
                kind: "conflict".into(),
                reason: format!("try {i}"),
            },
        );
        let acted = apply_policies(&mut n, t(2), &config).unwrap();
        if i < 2 {
            assert_eq!(acted, 0, "after {} failures", i + 1);
            ev(
                &mut n,
                1,
                "2_flaky",
                PipelineEvent::GatesPassed {
                    branch: "b".into(),
                    commits: NonZeroU32::new(1).unwrap(),
                },
            );
        } else {
            assert_eq!(acted, 1);
        }
    }
    match n.story(&id, t(3)).unwrap().stage {
        Stage::Archived {
            reason: ArchiveReason::Blocked { reason },
            ..
        } => assert!(reason.contains('3'), "{reason}"),
        other => panic!("not blocked: {other:?}"),
    }
}

#[test]
fn a_stale_merge_lock_is_cleared_and_only_the_leader_acts() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::init(
        &dir.path().join("a"),
        InitMode::NewCluster { name: "p".into() },
        &mut rand_core::OsRng,
        t(0),
        NodeConfig::default(),
    )
    .unwrap();
    let mut b = Node::init(
        &dir.path().join("b"),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut rand_core::OsRng,
        t(0),
        NodeConfig::default(),
    )
    .unwrap();
    a.execute(
        t(0),
        Command::AddMember {
            node: b.node_id(),
            role: Role::Member,
        },
    )
    .unwrap();
    let report = b
        .ingest_bundle(&a.export_since(&b.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    // b takes the lock and dies (no more heartbeats).
    b.execute(
        t(1),
        Command::Heartbeat {
            label: "b".into(),
            address: None,
        },
    )
    .unwrap();
    b.execute(t(1), Command::AcquireMergeLock { ttl_secs: 3600 })
        .unwrap();
    let report = a
        .ingest_bundle(&b.export_since(&a.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let config = DaemonConfig::default();
    a.execute(
        t(10),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    assert!(
        a.merge_lock(t(10)).unwrap().is_some(),
        "live while b's heartbeat is fresh"
    );
    // Long after b's last heartbeat: the lock is stale; a (the only live member) clears it.
    a.execute(
        t(1000),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    let leader_is_a = a.node_id() < b.node_id();
    assert_eq!(
        apply_policies(&mut a, t(1000), &config).unwrap(),
        1,
        "a is the only alive member, so it leads"
    );
    assert!(a.merge_lock(t(1000)).unwrap().is_none());
    assert!(a.stale_merge_lock(t(1000)).unwrap().is_none());
    // With both alive, only the lower id acts.
    let report = b
        .ingest_bundle(&a.export_since(&b.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    b.execute(
        t(1001),
        Command::Heartbeat {
            label: "b".into(),
            address: None,
        },
    )
    .unwrap();
    let report = a
        .ingest_bundle(&b.export_since(&a.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let report = b
        .ingest_bundle(&a.export_since(&b.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    b.execute(t(1002), Command::AcquireMergeLock { ttl_secs: 1 })
        .unwrap();
    let report = a
        .ingest_bundle(&b.export_since(&a.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let (acted_a, acted_b) = (
        apply_policies(&mut a, t(1010), &config).unwrap(),
        apply_policies(&mut b, t(1010), &config).unwrap(),
    );
    if leader_is_a {
        assert_eq!((acted_a, acted_b), (1, 0));
    } else {
        assert_eq!((acted_a, acted_b), (0, 1));
    }
}
