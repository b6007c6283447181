//! One node (and a peer where the feature needs one) on real sled homes: init and open,
//! the whole pipeline, invalid transitions, execution state, subscriptions, the home
//! lock, restart safety (seed bug 511) and group commit. Claims and the merge lock:
//! `claims.rs`.

mod common;

use common::*;
use huskies_core::{
    ArchiveReason, Command, Error, ErrorKind, Event, ExecutionEvent, ExecutionState, InitMode, Node,
    NodeConfig, PipelineEvent, Role, Stage, StageKind, StoryField,
};

#[test]
fn init_creates_a_home_that_reopens_with_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = TestRng::new(1);
    let (id, cluster, vv, lamport) = {
        let mut node = new_cluster(&home, &mut rng, at(0));
        assert!(home.join("node.key").is_file());
        assert!(home.join("store").is_dir());
        assert_eq!(node.cluster_name(), Some("test"));
        let members = node.members();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].node, node.node_id());
        assert_eq!(members[0].role, Role::Admin);
        assert_eq!(node.version_vector().get(&node.node_id()), 1, "the genesis op");
        add_story(&mut node, at(1), "1_first");
        (
            node.node_id(),
            node.cluster_id(),
            node.version_vector(),
            node.lamport(),
        )
    };
    let node = Node::open(&home, config()).expect("reopen");
    assert_eq!(node.node_id(), id);
    assert_eq!(node.cluster_id(), cluster);
    assert_eq!(node.cluster_name(), Some("test"));
    assert_eq!(node.version_vector(), vv);
    assert_eq!(node.lamport(), lamport);
    let story = node.story(&sid("1_first"), at(2)).unwrap();
    assert_eq!(story.name, "story 1_first");
    assert_eq!(story.stage, Stage::Backlog);
    assert!(node.verify(|_| {}).unwrap().ok);

    // Opening a directory that is not a home, or re-initialising one, is refused.
    drop(node);
    let err = Node::open(&dir.path().join("nowhere"), config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HomeNotFound, "{err}");
    let err = Node::init(
        &home,
        InitMode::NewCluster { name: "again".into() },
        &mut rng,
        at(3),
        config(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
}

#[test]
fn a_story_goes_through_the_whole_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(2);
    let mut node = new_cluster(dir.path(), &mut rng, at(0));
    let id = sid("42_fix_login");
    add_story(&mut node, at(1), "42_fix_login");
    let stage = |n: &Node| n.story(&id, at(100)).unwrap().stage;

    let steps: Vec<(PipelineEvent, Stage)> = vec![
        (PipelineEvent::DepsMet, Stage::Coding),
        (PipelineEvent::GatesStarted, Stage::Qa),
        (
            PipelineEvent::GatesFailed {
                reason: "tests fail".into(),
            },
            Stage::Coding,
        ),
        (PipelineEvent::GatesStarted, Stage::Qa),
        (
            PipelineEvent::GatesPassed {
                branch: "feature/42".into(),
                commits: nz(3),
            },
            Stage::Merge {
                feature_branch: "feature/42".into(),
                commits_ahead: nz(3),
            },
        ),
        (
            PipelineEvent::MergeConflict {
                kind: "conflict".into(),
                reason: "src/login.rs".into(),
            },
            Stage::MergeFailure {
                kind: "conflict".into(),
                reason: "src/login.rs".into(),
            },
        ),
        (
            PipelineEvent::GatesPassed {
                branch: "feature/42".into(),
                commits: nz(4),
            },
            Stage::Merge {
                feature_branch: "feature/42".into(),
                commits_ahead: nz(4),
            },
        ),
    ];
    for (i, (ev, expected)) in steps.into_iter().enumerate() {
        event(&mut node, at(10 + i as u64), "42_fix_login", ev);
        assert_eq!(stage(&node), expected, "after step {i}");
    }
    assert_eq!(
        node.story(&id, at(100)).unwrap().consecutive_merge_failures,
        1,
        "one conflict so far"
    );
    event(
        &mut node,
        at(30),
        "42_fix_login",
        PipelineEvent::MergeSucceeded {
            commit: "abc123".into(),
        },
    );
    assert_eq!(
        stage(&node),
        Stage::Done {
            merged_at: at(30),
            merge_commit: "abc123".into()
        }
    );
    assert_eq!(node.stories(Some(StageKind::Done), at(31)).unwrap().len(), 1);
    event(&mut node, at(40), "42_fix_login", PipelineEvent::Accepted);
    assert_eq!(
        stage(&node),
        Stage::Archived {
            archived_at: at(40),
            reason: ArchiveReason::Completed
        }
    );
    assert_eq!(node.stories(Some(StageKind::Done), at(41)).unwrap().len(), 0);
    assert_eq!(node.stories(Some(StageKind::Archived), at(41)).unwrap().len(), 1);

    let history = node.history(&id).unwrap();
    let names: Vec<&str> = history.iter().map(|t| t.event.name()).collect();
    assert_eq!(
        names,
        [
            "deps-met",
            "gates-started",
            "gates-failed",
            "gates-started",
            "gates-passed",
            "merge-conflict",
            "gates-passed",
            "merge-succeeded",
            "accepted"
        ]
    );
    assert!(
        history.iter().all(|t| !t.conflict),
        "a single writer has no conflicts"
    );
    assert!(
        history.windows(2).all(|w| w[0].to == w[1].from),
        "each step starts where the last ended"
    );
    assert!(history.iter().all(|t| t.author == node.node_id()));
    assert!(node.story(&id, at(50)).unwrap().conflicts.is_empty());

    // Blocked stories come back through Unblock.
    add_story(&mut node, at(50), "43_blocked");
    event(
        &mut node,
        at(51),
        "43_blocked",
        PipelineEvent::Block {
            reason: "waiting".into(),
        },
    );
    event(&mut node, at(52), "43_blocked", PipelineEvent::Unblock);
    assert_eq!(
        node.story(&sid("43_blocked"), at(53)).unwrap().stage,
        Stage::Backlog
    );
}

#[test]
fn an_invalid_transition_is_an_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(3);
    let mut node = new_cluster(dir.path(), &mut rng, at(0));
    add_story(&mut node, at(1), "7_x");
    let before = snapshot(&node, at(5));
    let lamport = node.lamport();
    let log_len = node.log(None).unwrap().len();

    let cases = [
        (PipelineEvent::Accepted, StageKind::Backlog, "accepted"),
        (PipelineEvent::GatesStarted, StageKind::Backlog, "gates-started"),
        (
            PipelineEvent::MergeSucceeded { commit: "c".into() },
            StageKind::Backlog,
            "merge-succeeded",
        ),
        (PipelineEvent::Unblock, StageKind::Backlog, "unblock"),
    ];
    for (ev, from, name) in cases {
        let err = node
            .execute(
                at(2),
                Command::Event {
                    id: sid("7_x"),
                    event: ev,
                },
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidTransition, "{err}");
        match err {
            Error::InvalidTransition { story, source } => {
                assert_eq!(story, sid("7_x"));
                assert_eq!(source.from, from);
                assert_eq!(source.event, name);
            }
            other => panic!("expected InvalidTransition, got {other:?}"),
        }
    }
    // From a later stage too.
    event(&mut node, at(3), "7_x", PipelineEvent::DepsMet);
    let mid = snapshot(&node, at(5));
    let mid_lamport = node.lamport();
    let err = node
        .execute(
            at(4),
            Command::Event {
                id: sid("7_x"),
                event: PipelineEvent::DepsMet,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidTransition);
    assert_eq!(snapshot(&node, at(5)), mid);
    assert_eq!(node.lamport(), mid_lamport);
    assert_ne!(mid, before, "the valid event did write");

    // Events on missing stories are not found, and write nothing either.
    let err = node
        .execute(
            at(4),
            Command::Event {
                id: sid("nope"),
                event: PipelineEvent::DepsMet,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert_eq!(node.log(None).unwrap().len(), log_len + 1);
    assert_eq!(node.lamport(), lamport + 1);

    // And nothing of the refused events survives a reopen.
    let home = node.home().to_path_buf();
    drop(node);
    let node = Node::open(&home, config()).unwrap();
    assert_eq!(snapshot(&node, at(5)), mid);
}

#[test]
fn execution_state_is_per_node_and_follows_its_machine() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(6);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    sync(&mut a, &mut b);
    let id = sid("1_s");
    let exec = |n: &mut Node, t: u64, ev: ExecutionEvent| {
        n.execute(
            at(t),
            Command::Execution {
                id: sid("1_s"),
                event: ev,
            },
        )
    };
    let (an, bn) = (a.node_id(), b.node_id());
    assert_eq!(a.execution_state(&id, &an).unwrap(), ExecutionState::Idle);

    exec(
        &mut a,
        2,
        ExecutionEvent::SpawnRequested {
            agent: "coder".into(),
        },
    )
    .unwrap();
    assert_eq!(
        a.execution_state(&id, &an).unwrap(),
        ExecutionState::Pending {
            agent: "coder".into(),
            since: at(2)
        }
    );
    exec(&mut a, 3, ExecutionEvent::SpawnedSuccessfully).unwrap();
    exec(&mut a, 4, ExecutionEvent::Heartbeat).unwrap();
    assert_eq!(
        a.execution_state(&id, &an).unwrap(),
        ExecutionState::Running {
            agent: "coder".into(),
            started_at: at(3),
            last_heartbeat: at(4)
        }
    );
    exec(&mut a, 5, ExecutionEvent::HitRateLimit { resume_at: at(60) }).unwrap();
    assert_eq!(
        a.execution_state(&id, &an).unwrap(),
        ExecutionState::RateLimited {
            agent: "coder".into(),
            resume_at: at(60)
        }
    );
    exec(&mut a, 61, ExecutionEvent::SpawnedSuccessfully).unwrap();
    exec(&mut a, 70, ExecutionEvent::Exited { exit_code: 0 }).unwrap();
    let completed = ExecutionState::Completed {
        agent: "coder".into(),
        exit_code: 0,
        completed_at: at(70),
    };
    assert_eq!(a.execution_state(&id, &an).unwrap(), completed);

    // Invalid events are refused and write nothing.
    let before = snapshot(&a, at(71));
    for ev in [
        ExecutionEvent::Heartbeat,
        ExecutionEvent::SpawnedSuccessfully,
        ExecutionEvent::Exited { exit_code: 1 },
        ExecutionEvent::SpawnRequested { agent: "x".into() },
    ] {
        let err = exec(&mut a, 71, ev).unwrap_err();
        assert!(matches!(err, Error::InvalidExecution { .. }), "{err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidTransition);
    }
    assert_eq!(snapshot(&a, at(71)), before);
    assert!(exec(&mut b, 71, ExecutionEvent::Heartbeat).is_err(), "B is idle");

    // B's machine is its own.
    exec(&mut b, 72, ExecutionEvent::SpawnRequested { agent: "qa".into() }).unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.execution_state(&id, &an).unwrap(), completed);
        assert_eq!(
            n.execution_state(&id, &bn).unwrap(),
            ExecutionState::Pending {
                agent: "qa".into(),
                since: at(72)
            }
        );
        let story = n.story(&id, at(73)).unwrap();
        assert_eq!(story.execution.len(), 2);
    }
    exec(&mut a, 80, ExecutionEvent::Reset).unwrap();
    exec(&mut b, 80, ExecutionEvent::Stopped).unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.execution_state(&id, &an).unwrap(), ExecutionState::Idle);
        assert_eq!(n.execution_state(&id, &bn).unwrap(), ExecutionState::Idle);
    }
}

#[test]
fn subscribers_get_one_event_per_committed_transition_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(7);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    let (seen_a, sub_a) = collect_events(&a);
    let (seen_b, _sub_b) = collect_events(&b);

    add_story(&mut a, at(1), "1_s");
    add_story(&mut a, at(1), "2_s");
    let r1 = a
        .execute(
            at(2),
            Command::Event {
                id: sid("1_s"),
                event: PipelineEvent::DepsMet,
            },
        )
        .unwrap();
    // Not transitions: no events.
    a.execute(
        at(3),
        Command::UpdateStory {
            id: sid("1_s"),
            field: StoryField::Name("renamed".into()),
        },
    )
    .unwrap();
    // Refused: no event.
    a.execute(
        at(3),
        Command::Event {
            id: sid("1_s"),
            event: PipelineEvent::Accepted,
        },
    )
    .unwrap_err();
    let r2 = a
        .execute(
            at(4),
            Command::Event {
                id: sid("1_s"),
                event: PipelineEvent::GatesStarted,
            },
        )
        .unwrap();

    {
        let seen = seen_a.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let Event::Transition(first) = &seen[0] else {
            panic!("{:?}", seen[0])
        };
        assert_eq!(first.story, sid("1_s"));
        assert_eq!(first.before, Some(Stage::Backlog));
        assert_eq!(first.after, Stage::Coding);
        assert_eq!(first.op_id, Some(r1.op_id));
        assert_eq!(first.author, Some(a.node_id()));
        assert_eq!(first.event, Some("deps-met"));
        assert!(!first.conflict && !first.replay);
        let Event::Transition(second) = &seen[1] else {
            panic!("{:?}", seen[1])
        };
        assert_eq!(second.before, Some(Stage::Coding));
        assert_eq!(second.after, Stage::Qa);
        assert_eq!(second.op_id, Some(r2.op_id));
    }

    // Remote transitions are announced once on the receiving node, even if re-sent.
    let all = a.ops_since(&Default::default()).unwrap();
    let report = b.ingest(unverified(all.clone())).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let report = b.ingest(unverified(all)).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    {
        let seen = seen_b.lock().unwrap();
        let transitions: Vec<_> = seen
            .iter()
            .map(|e| match e {
                Event::Transition(t) => (t.event, t.after.kind(), t.replay),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(
            transitions,
            [
                (Some("deps-met"), StageKind::Coding, false),
                (Some("gates-started"), StageKind::Qa, false)
            ]
        );
    }

    // Replay: one event per live story with its current stage.
    seen_a.lock().unwrap().clear();
    assert_eq!(a.replay_state().unwrap(), 2);
    {
        let seen = seen_a.lock().unwrap();
        let mut replayed: Vec<_> = seen
            .iter()
            .map(|e| match e {
                Event::Transition(t) => {
                    assert!(t.replay);
                    assert_eq!(t.before, None);
                    assert_eq!(t.op_id, None);
                    (t.story.clone(), t.after.clone())
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        replayed.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(replayed, [(sid("1_s"), Stage::Qa), (sid("2_s"), Stage::Backlog)]);
    }

    // Deleted stories are not replayed; dropped subscriptions hear nothing.
    a.execute(at(5), Command::DeleteStory { id: sid("2_s") }).unwrap();
    seen_a.lock().unwrap().clear();
    assert_eq!(a.replay_state().unwrap(), 1);
    assert_eq!(seen_a.lock().unwrap().len(), 1);
    drop(sub_a);
    seen_a.lock().unwrap().clear();
    event(
        &mut a,
        at(6),
        "1_s",
        PipelineEvent::GatesFailed { reason: "r".into() },
    );
    a.replay_state().unwrap();
    assert!(seen_a.lock().unwrap().is_empty());
}

#[test]
fn a_second_open_of_a_live_home_is_home_locked() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = TestRng::new(8);
    let first = new_cluster(&home, &mut rng, at(0));
    // Held by a Node of this process: said so, not blamed on another process.
    let err = Node::open(&home, config()).unwrap_err();
    assert!(matches!(err, Error::HomeOpenInThisProcess(_)), "{err:?}");
    assert!(err.to_string().contains("this process"), "{err}");
    assert_eq!(err.kind(), ErrorKind::HomeLocked);
    // Initialising a home that exists is `already_exists`, open or not.
    let err = Node::init(
        &home,
        InitMode::NewCluster { name: "x".into() },
        &mut rng,
        at(0),
        config(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err:?}");
    drop(first);
    let second = Node::open(&home, config()).expect("free once the first is dropped");
    let err = Node::open(&home, config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::HomeLocked);
    drop(second);
}

/// Seed bug 511: a restarted node reused sequence numbers and Lamport timestamps. After a
/// real drop-and-reopen, new ops must continue both, and peers must accept them as the
/// continuation of the same chain (a reused seq would be equivocation).
#[test]
fn reopen_continues_seq_and_lamport() {
    let dir = tempfile::tempdir().unwrap();
    let home_a = dir.path().join("a");
    let mut rng = TestRng::new(9);
    let mut a = new_cluster(&home_a, &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    let a_id = a.node_id();
    add_story(&mut a, at(1), "1_s");
    sync(&mut a, &mut b);

    let mut last = a
        .execute(
            at(2),
            Command::Event {
                id: sid("1_s"),
                event: PipelineEvent::DepsMet,
            },
        )
        .unwrap();
    push(&a, &mut b);
    let mut seen_ids = vec![last.op_id];
    for round in 0..3u64 {
        // B races ahead so A's clock is driven by a remote op, not only its own.
        for i in 0..5 {
            b.execute(
                at(10 + round * 10 + i),
                Command::Heartbeat {
                    label: "b".into(),
                    address: None,
                },
            )
            .unwrap();
        }
        push(&b, &mut a);
        let clock = a.lamport();
        assert!(clock > last.lamport, "B's ops moved A's clock");
        let vv = a.version_vector();
        drop(a);

        a = Node::open(&home_a, config()).expect("reopen");
        assert_eq!(a.node_id(), a_id);
        assert_eq!(a.lamport(), clock, "round {round}: the clock is persisted");
        assert_eq!(a.version_vector(), vv);
        let r = a
            .execute(
                at(20 + round * 10),
                Command::UpdateStory {
                    id: sid("1_s"),
                    field: StoryField::Name(format!("round {round}")),
                },
            )
            .unwrap();
        assert_eq!(r.seq, last.seq + 1, "round {round}: seq continues");
        assert!(
            r.lamport > clock,
            "round {round}: lamport {} <= {clock}",
            r.lamport
        );
        assert!(!seen_ids.contains(&r.op_id));
        seen_ids.push(r.op_id);
        last = r;

        // The peer takes it as the next op of A's chain: no fork, no rejection.
        assert_eq!(push(&a, &mut b), 1);
        assert!(b.forks().unwrap().is_empty());
        assert_eq!(b.version_vector().get(&a_id), last.seq);
    }
    let report = a.verify(|_| {}).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    let mine: Vec<_> = a.log(Some(&a_id)).unwrap();
    let seqs: Vec<u64> = mine.iter().map(|o| o.seq).collect();
    assert_eq!(seqs, (1..=last.seq).collect::<Vec<_>>());
    assert!(mine.windows(2).all(|w| w[0].lamport < w[1].lamport));
    assert_eq!(snapshot(&a, at(100)), snapshot(&b, at(100)));
}

#[test]
fn execute_group_commits_the_valid_commands_with_per_command_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(10);
    let mut node = new_cluster(dir.path(), &mut rng, at(0));
    add_story(&mut node, at(1), "1_s");
    let head = node.version_vector().get(&node.node_id());
    let (seen, _sub) = collect_events(&node);

    let results = node
        .execute_group(
            at(2),
            vec![
                Command::AddStory {
                    id: sid("2_s"),
                    name: "two".into(),
                    body: Some("body".into()),
                    depends_on: vec![sid("1_s")],
                },
                Command::Event {
                    id: sid("1_s"),
                    event: PipelineEvent::Accepted,
                },
                // Sees the story added earlier in the same group.
                Command::Event {
                    id: sid("2_s"),
                    event: PipelineEvent::DepsMet,
                },
                Command::AddStory {
                    id: sid("1_s"),
                    name: "dup".into(),
                    body: None,
                    depends_on: vec![],
                },
                Command::Event {
                    id: sid("2_s"),
                    event: PipelineEvent::GatesStarted,
                },
                Command::Claim {
                    id: sid("2_s"),
                    ttl_secs: 0,
                },
            ],
        )
        .unwrap();
    assert_eq!(results.len(), 6);
    let kinds: Vec<Result<u64, ErrorKind>> = results
        .iter()
        .map(|r| r.as_ref().map(|rc| rc.seq).map_err(|e| e.kind()))
        .collect();
    assert_eq!(
        kinds,
        [
            Ok(head + 1),
            Err(ErrorKind::InvalidTransition),
            Ok(head + 2),
            Err(ErrorKind::AlreadyExists),
            Ok(head + 3),
            Err(ErrorKind::InvalidArgument),
        ]
    );
    let lamports: Vec<u64> = results.iter().flatten().map(|r| r.lamport).collect();
    assert!(lamports.windows(2).all(|w| w[0] + 1 == w[1]), "{lamports:?}");
    assert_eq!(node.version_vector().get(&node.node_id()), head + 3);
    assert_eq!(node.story(&sid("1_s"), at(3)).unwrap().stage, Stage::Backlog);
    assert_eq!(node.story(&sid("1_s"), at(3)).unwrap().name, "story 1_s");
    let two = node.story(&sid("2_s"), at(3)).unwrap();
    assert_eq!(two.stage, Stage::Qa);
    assert_eq!(two.depends_on, vec![sid("1_s")]);
    assert_eq!(two.claim, None);
    assert_eq!(seen.lock().unwrap().len(), 2, "two committed transitions");

    // A group of refusals writes nothing at all.
    let before = snapshot(&node, at(3));
    let lamport = node.lamport();
    let results = node
        .execute_group(
            at(3),
            vec![
                Command::Event {
                    id: sid("1_s"),
                    event: PipelineEvent::Accepted,
                },
                Command::ReleaseMergeLock,
            ],
        )
        .unwrap();
    assert!(results.iter().all(|r| r.is_err()));
    assert_eq!(snapshot(&node, at(3)), before);
    assert_eq!(node.lamport(), lamport);

    // What the group committed survives a reopen.
    let home = node.home().to_path_buf();
    drop(node);
    let node = Node::open(&home, config()).unwrap();
    assert_eq!(snapshot(&node, at(3)), before);
}

/// `NodeConfig::store_cache_bytes` bounds sled's page cache only: a home far larger than a
/// tiny cache is written, reopened and read back whole with it (the pages come back from
/// disk), and a peer with the same tiny cache ingests all of it.
#[test]
fn a_home_larger_than_its_store_cache_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = TestRng::new(test_seed());
    let tiny = NodeConfig {
        store_cache_bytes: 64 * 1024,
        ..config()
    };
    let stories = 1500;
    let vv = {
        let mut node = Node::init(
            &home,
            InitMode::NewCluster { name: "test".into() },
            &mut rng,
            at(0),
            tiny.clone(),
        )
        .unwrap();
        let adds = (0..stories)
            .map(|i| Command::add_story(sid(&format!("{i}_s")), format!("story {i}")).into())
            .collect();
        assert!(node.execute_group(at(1), adds).unwrap().iter().all(Result::is_ok));
        let moves = (0..stories)
            .map(|i| Command::event(sid(&format!("{i}_s")), PipelineEvent::DepsMet))
            .collect();
        assert!(node
            .execute_group(at(2), moves)
            .unwrap()
            .iter()
            .all(Result::is_ok));
        node.flush().unwrap();
        assert!(
            node.store_size().unwrap() > 4 * tiny.store_cache_bytes,
            "the store outgrows the cache"
        );
        node.version_vector()
    };
    let node = Node::open(&home, tiny.clone()).unwrap();
    assert_eq!(node.version_vector(), vv);
    let all = node.stories(None, at(3)).unwrap();
    assert_eq!(all.len(), stories);
    let coding = node.stories(Some(StageKind::Coding), at(3)).unwrap();
    assert_eq!(
        coding.len(),
        stories,
        "every story moved on and is found by its stage"
    );
    let mut peer = Node::init(
        &dir.path().join("peer"),
        InitMode::Join {
            cluster: node.cluster_id(),
        },
        &mut rng,
        at(3),
        tiny,
    )
    .unwrap();
    for bundle in node
        .export_chunks(&peer.version_vector(), 4 * huskies_core::MIN_BUNDLE_BYTES)
        .unwrap()
    {
        let report = peer.ingest_bundle(&bundle.unwrap()).unwrap();
        assert!(report.rejected.is_empty());
    }
    assert_eq!(peer.version_vector(), vv);
    assert_eq!(peer.stories(None, at(3)).unwrap().len(), stories);
}
