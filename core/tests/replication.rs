//! Several nodes exchanging ops: convergence, delta sync, concurrent transitions and
//! claims, tombstones, equivocation, member removal and key rotation.

mod common;

use common::*;
use huskies_core::{
    Command, ErrorKind, Event, Node, PipelineEvent, Role, Stage, StageKind, StoryField, VersionVector,
};

/// Per author, how many ops `have` holds beyond `base`.
fn missing(have: &VersionVector, base: &VersionVector) -> usize {
    have.iter()
        .map(|(a, s)| s.saturating_sub(base.get(a)) as usize)
        .sum()
}

#[test]
fn two_and_three_nodes_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), 11);
    {
        let [a, b, c] = &mut nodes[..] else { unreachable!() };
        add_story(a, at(1), "1_a");
        add_story(b, at(1), "2_b");
        add_story(c, at(1), "3_c");
        event(a, at(2), "1_a", PipelineEvent::DepsMet);
        b.execute(
            at(2),
            Command::Heartbeat {
                label: "b".into(),
                address: Some("ws://b".into()),
            },
        )
        .unwrap();
        c.execute(at(3), Command::AcquireMergeLock { ttl_secs: 60 })
            .unwrap();
        // Two nodes first.
        sync(a, b);
        assert_eq!(snapshot(a, at(10)), snapshot(b, at(10)));
        assert_eq!(a.stories(None, at(10)).unwrap().len(), 2);
        // Then C, only ever talking to B: A's ops reach it through B.
        sync(b, c);
        sync(a, b);
    }
    let s0 = snapshot(&nodes[0], at(10));
    for n in &nodes[1..] {
        assert_eq!(snapshot(n, at(10)), s0);
    }
    assert_eq!(s0.stories.len(), 3);
    assert_eq!(s0.nodes.len(), 1);
    assert_eq!(s0.merge_lock.as_ref().unwrap().node, nodes[2].node_id());
    assert_eq!(s0.vv.len(), 3);
    for n in &nodes {
        assert!(n.verify(|_| {}).unwrap().ok);
    }
}

#[test]
fn only_missing_ops_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), 12);
    let [a, b, c] = &mut nodes[..] else { unreachable!() };
    assert!(a.ops_since(&b.version_vector()).unwrap().is_empty(), "in sync");

    let mut new_a = Vec::new();
    for i in 0..3 {
        new_a.push(
            a.execute(
                at(1),
                Command::Heartbeat {
                    label: format!("a{i}"),
                    address: None,
                },
            )
            .unwrap(),
        );
    }
    let new_b = b
        .execute(
            at(1),
            Command::Heartbeat {
                label: "b".into(),
                address: None,
            },
        )
        .unwrap();
    let new_c = c
        .execute(
            at(1),
            Command::Heartbeat {
                label: "c".into(),
                address: None,
            },
        )
        .unwrap();
    push(c, b);

    // A sends B exactly A's three new ops, in order; B sends A exactly B's and C's.
    let to_b = a.ops_since(&b.version_vector()).unwrap();
    let ids: Vec<_> = to_b.iter().map(|o| o.id()).collect();
    assert_eq!(ids, new_a.iter().map(|r| r.op_id).collect::<Vec<_>>());
    let to_a = b.ops_since(&a.version_vector()).unwrap();
    let mut ids: Vec<_> = to_a.iter().map(|o| o.id()).collect();
    ids.sort();
    let mut expected = vec![new_b.op_id, new_c.op_id];
    expected.sort();
    assert_eq!(ids, expected);
    for (from, to) in [(&*a, &*b), (&*b, &*a)] {
        let ops = from.ops_since(&to.version_vector()).unwrap();
        assert_eq!(ops.len(), missing(&from.version_vector(), &to.version_vector()));
        for op in &ops {
            assert!(op.content().seq > to.version_vector().get(&op.content().author));
        }
    }
    // A partial vector gets exactly the tail.
    let mut partial = a.version_vector();
    partial.set(a.node_id(), partial.get(&a.node_id()) - 2);
    let tail = a.ops_since(&partial).unwrap();
    assert_eq!(
        tail.iter().map(|o| o.id()).collect::<Vec<_>>(),
        [new_a[1].op_id, new_a[2].op_id]
    );

    let report = b.ingest(unverified(to_b)).unwrap();
    assert_eq!((report.applied, report.duplicates), (3, 0));
    let report = a
        .ingest_bundle(&b.export_since(&a.version_vector()).unwrap())
        .unwrap();
    assert_eq!((report.applied, report.duplicates), (2, 0));
    assert_eq!(a.version_vector(), b.version_vector());
    assert!(a.ops_since(&b.version_vector()).unwrap().is_empty());
    assert_eq!(
        a.export_since(&b.version_vector()).unwrap().len(),
        9,
        "an empty bundle"
    );
}

#[test]
fn concurrent_transitions_converge_and_show_as_conflicts_on_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(13);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    event(&mut a, at(2), "1_s", PipelineEvent::DepsMet);
    sync(&mut a, &mut b);
    let (seen_a, _sa) = collect_events(&a);
    let (seen_b, _sb) = collect_events(&b);

    // Both move the story out of Coding at once, with equal Lamport timestamps.
    let ra = a
        .execute(
            at(3),
            Command::Event {
                id: sid("1_s"),
                event: PipelineEvent::GatesStarted,
            },
        )
        .unwrap();
    let rb = b
        .execute(
            at(3),
            Command::Event {
                id: sid("1_s"),
                event: PipelineEvent::QaSkipped {
                    branch: "f/1".into(),
                    commits: nz(2),
                },
            },
        )
        .unwrap();
    assert_eq!(ra.lamport, rb.lamport, "a Lamport tie");
    sync(&mut a, &mut b);

    // The tie goes to the larger author id, on both.
    let (winner, loser) = if a.node_id() > b.node_id() {
        (ra, rb)
    } else {
        (rb, ra)
    };
    let winner_stage = if winner == ra {
        Stage::Qa
    } else {
        Stage::Merge {
            feature_branch: "f/1".into(),
            commits_ahead: nz(2),
        }
    };
    let sa = a.story(&sid("1_s"), at(4)).unwrap();
    let sb = b.story(&sid("1_s"), at(4)).unwrap();
    assert_eq!(sa, sb);
    assert_eq!(sa.stage, winner_stage);
    assert_eq!(sa.conflicts.len(), 1, "{:?}", sa.conflicts);
    let conflict = &sa.conflicts[0];
    assert_eq!(conflict.op_id, winner.op_id);
    assert_eq!(conflict.concurrent_with, Some(loser.op_id));
    assert_eq!(conflict.from, StageKind::Coding);
    let history = a.history(&sid("1_s")).unwrap();
    assert_eq!(history, b.history(&sid("1_s")).unwrap());
    let ids: Vec<_> = history.iter().map(|t| t.op_id).collect();
    assert!(
        ids.contains(&ra.op_id) && ids.contains(&rb.op_id),
        "neither transition is lost"
    );
    assert_eq!(history.iter().filter(|t| t.conflict).count(), 1);

    // Each node heard its own transition and the remote one: two events each.
    for seen in [&seen_a, &seen_b] {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "{seen:?}");
        let Event::Transition(last) = &seen[1] else {
            panic!()
        };
        assert_eq!(last.after, winner_stage, "the last event shows the merged stage");
    }

    // Work continues from the merged stage without a new conflict.
    let next = match winner_stage {
        Stage::Qa => PipelineEvent::GatesPassed {
            branch: "f/1".into(),
            commits: nz(1),
        },
        _ => PipelineEvent::MergeSucceeded { commit: "c".into() },
    };
    event(&mut b, at(5), "1_s", next);
    sync(&mut a, &mut b);
    assert_eq!(a.story(&sid("1_s"), at(6)).unwrap().conflicts.len(), 1);
    assert_eq!(snapshot(&a, at(6)), snapshot(&b, at(6)));

    // Without a tie, the higher Lamport wins whoever the author is.
    add_story(&mut a, at(7), "2_s");
    sync(&mut a, &mut b);
    let small = if a.node_id() < b.node_id() { &mut a } else { &mut b };
    for i in 0..3 {
        small
            .execute(
                at(8),
                Command::Heartbeat {
                    label: format!("{i}"),
                    address: None,
                },
            )
            .unwrap();
    }
    event(small, at(9), "2_s", PipelineEvent::Abandon);
    let big = if a.node_id() > b.node_id() { &mut a } else { &mut b };
    event(big, at(9), "2_s", PipelineEvent::DepsMet);
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        let s = n.story(&sid("2_s"), at(10)).unwrap();
        assert_eq!(
            s.stage.kind(),
            StageKind::Archived,
            "the later (higher Lamport) abandon wins"
        );
        assert_eq!(s.conflicts.len(), 1);
    }
}

#[test]
fn concurrent_claims_leave_one_holder_and_the_loser_learns_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(14);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    add_story(&mut a, at(1), "2_s");
    for n in [&mut a, &mut b] {
        n.execute(
            at(1),
            Command::Heartbeat {
                label: "n".into(),
                address: None,
            },
        )
        .unwrap();
    }
    sync(&mut a, &mut b);
    let (seen_a, _sa) = collect_events(&a);
    let (seen_b, _sb) = collect_events(&b);

    // Equal Lamports: the larger author id wins.
    let ra = a
        .execute(
            at(2),
            Command::Claim {
                id: sid("1_s"),
                ttl_secs: 600,
            },
        )
        .unwrap();
    let rb = b
        .execute(
            at(2),
            Command::Claim {
                id: sid("1_s"),
                ttl_secs: 600,
            },
        )
        .unwrap();
    assert_eq!(ra.lamport, rb.lamport);
    sync(&mut a, &mut b);
    let (winner, loser) = if a.node_id() > b.node_id() {
        (a.node_id(), b.node_id())
    } else {
        (b.node_id(), a.node_id())
    };
    for n in [&a, &b] {
        assert_eq!(n.story(&sid("1_s"), at(3)).unwrap().claim.unwrap().node, winner);
    }
    let lost = Event::ClaimLost {
        story: sid("1_s"),
        winner: Some(winner),
    };
    let (loser_seen, winner_seen) = if loser == a.node_id() {
        (&seen_a, &seen_b)
    } else {
        (&seen_b, &seen_a)
    };
    assert_eq!(loser_seen.lock().unwrap().as_slice(), [lost]);
    assert!(winner_seen.lock().unwrap().is_empty());
    // The loser is now refused while the winner's claim lives.
    let loser_node = if loser == a.node_id() { &mut a } else { &mut b };
    assert_eq!(
        loser_node
            .execute(
                at(4),
                Command::Claim {
                    id: sid("1_s"),
                    ttl_secs: 60
                }
            )
            .unwrap_err()
            .kind(),
        ErrorKind::ClaimConflict
    );
    seen_a.lock().unwrap().clear();
    seen_b.lock().unwrap().clear();

    // Different Lamports: the later claim wins, even from the smaller id.
    let small_is_a = a.node_id() < b.node_id();
    {
        let small = if small_is_a { &mut a } else { &mut b };
        small
            .execute(
                at(5),
                Command::Heartbeat {
                    label: "x".into(),
                    address: None,
                },
            )
            .unwrap();
        small
            .execute(
                at(5),
                Command::Claim {
                    id: sid("2_s"),
                    ttl_secs: 600,
                },
            )
            .unwrap();
    }
    {
        let big = if small_is_a { &mut b } else { &mut a };
        big.execute(
            at(5),
            Command::Claim {
                id: sid("2_s"),
                ttl_secs: 600,
            },
        )
        .unwrap();
    }
    sync(&mut a, &mut b);
    let small_id = if small_is_a { a.node_id() } else { b.node_id() };
    for n in [&a, &b] {
        assert_eq!(n.story(&sid("2_s"), at(6)).unwrap().claim.unwrap().node, small_id);
    }
    let (big_seen, small_seen) = if small_is_a {
        (&seen_b, &seen_a)
    } else {
        (&seen_a, &seen_b)
    };
    assert_eq!(
        big_seen.lock().unwrap().as_slice(),
        [Event::ClaimLost {
            story: sid("2_s"),
            winner: Some(small_id)
        }]
    );
    assert!(small_seen.lock().unwrap().is_empty());
    assert_eq!(snapshot(&a, at(6)), snapshot(&b, at(6)));
}

#[test]
fn a_tombstone_wins_over_a_concurrent_update() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(15);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    add_story(&mut a, at(1), "2_keep");
    sync(&mut a, &mut b);

    a.execute(at(2), Command::DeleteStory { id: sid("1_s") }).unwrap();
    // B keeps editing, with later Lamports than the delete.
    for i in 0..3 {
        b.execute(
            at(2),
            Command::UpdateStory {
                id: sid("1_s"),
                field: StoryField::Name(format!("edit {i}")),
            },
        )
        .unwrap();
    }
    event(&mut b, at(3), "1_s", PipelineEvent::DepsMet);
    b.execute(
        at(3),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);

    for n in [&a, &b] {
        let s = n.story(&sid("1_s"), at(4)).unwrap();
        assert!(s.deleted, "deleted on every replica");
        let ids = live_ids(n, at(4));
        assert_eq!(ids, [sid("2_keep")]);
        assert_eq!(n.stage_counts().unwrap()[&StageKind::Coding], 0);
        assert_eq!(n.stage_counts().unwrap()[&StageKind::Backlog], 1);
    }
    assert_eq!(snapshot(&a, at(4)), snapshot(&b, at(4)));
    assert_eq!(
        a.story(&sid("1_s"), at(4)).unwrap(),
        b.story(&sid("1_s"), at(4)).unwrap()
    );
    // The id is not reused, and the tombstoned story takes no more edits.
    let err = b
        .execute(
            at(5),
            Command::AddStory {
                id: sid("1_s"),
                name: "again".into(),
                body: None,
                depends_on: vec![],
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    let err = a
        .execute(
            at(5),
            Command::UpdateStory {
                id: sid("1_s"),
                field: StoryField::Name("x".into()),
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

/// Frames that arrive together are merged in one ingest, and acknowledged together.
#[test]
fn waiting_ops_frames_merge_into_one_ingest() {
    use huskies_core::sync::{Message, Session, SessionConfig, SessionEvent, SessionOptions};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(7);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = Node::init(
        &dir.path().join("b"),
        huskies_core::InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut rng,
        at(0),
        config(),
    )
    .unwrap();
    a.execute(
        at(0),
        Command::AddMember {
            node: b.node_id(),
            role: Role::Member,
        },
    )
    .unwrap();
    let cmds: Vec<Command> = (0..3000)
        .map(|i| Command::AddStory {
            id: sid(&format!("s{i}")),
            name: "x".repeat(100),
            body: None,
            depends_on: vec![],
        })
        .collect();
    for r in a.execute_group(at(1), cmds).unwrap() {
        r.unwrap();
    }
    let config = SessionConfig {
        target_frame_bytes: 64 * 1024,
        ..SessionConfig::default()
    };
    let now = at(2);
    let mut sa = Session::new(&a, now, [1; 32], SessionOptions::default(), config.clone());
    let mut sb = Session::new(
        &b,
        now,
        [2; 32],
        SessionOptions {
            expect_peer: Some(a.node_id()),
            ..Default::default()
        },
        config,
    );
    // Handshake; the first Ops frame A produces is kept for the batch below.
    let mut frames = Vec::new();
    for _ in 0..3 {
        while let Some(f) = sa.poll_transmit(&a, now).unwrap() {
            if matches!(Message::decode(&f).unwrap(), Message::Ops { .. }) {
                frames.push(f);
                break;
            }
            sb.handle_frame(&mut b, now, &f).unwrap();
        }
        while let Some(f) = sb.poll_transmit(&b, now).unwrap() {
            sa.handle_frame(&mut a, now, &f).unwrap();
        }
    }
    assert!(sa.is_established() && sb.is_established());
    // Everything A sends now, delivered at once.
    while let Some(f) = sa.poll_transmit(&a, now).unwrap() {
        frames.push(f);
    }
    let ops_frames = frames
        .iter()
        .filter(|f| matches!(Message::decode(f).unwrap(), Message::Ops { .. }))
        .count();
    assert!(ops_frames > 3, "the catch-up spans several frames ({ops_frames})");
    sb.take_events();
    sb.handle_frames(&mut b, now, &frames).unwrap();
    let ingests = sb
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, SessionEvent::Ingested { .. }))
        .count();
    assert_eq!(ingests, 1, "one merge for all waiting frames");
    assert_eq!(b.version_vector(), a.version_vector());
    // Its acknowledgement covers every frame: A has nothing left in flight.
    while let Some(f) = sb.poll_transmit(&b, now).unwrap() {
        sa.handle_frame(&mut a, now, &f).unwrap();
    }
    assert_eq!(sa.unacked_bytes(), 0);
}

/// A node restored from an old copy of its home learns from the first peer it meets that it
/// is behind on its own chain, and gets its own ops back.
#[test]
fn a_node_behind_its_own_chain_is_told_and_catches_up() {
    use huskies_core::sync::SessionEvent;
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(11);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    // Snapshot b's home, then b writes and syncs with a.
    let b_home = b.home().to_path_buf();
    drop(b);
    copy_dir(&b_home, &dir.path().join("b_old"));
    let mut b = Node::open(&b_home, config()).unwrap();
    for i in 0..3 {
        add_story(&mut b, at(1), &format!("b{i}"));
    }
    sync(&mut a, &mut b);
    let ahead = b.version_vector().get(&b.node_id());
    drop(b);
    // b comes back from the old copy.
    std::fs::remove_dir_all(&b_home).unwrap();
    copy_dir(&dir.path().join("b_old"), &b_home);
    let mut b = Node::open(&b_home, config()).unwrap();
    assert!(b.version_vector().get(&b.node_id()) < ahead);
    use huskies_core::sync::{Session, SessionConfig, SessionOptions};
    let now = at(2);
    let mut sa = Session::new(
        &a,
        now,
        [1; 32],
        SessionOptions::default(),
        SessionConfig::default(),
    );
    let mut sb = Session::new(
        &b,
        now,
        [2; 32],
        SessionOptions::default(),
        SessionConfig::default(),
    );
    let mut told = false;
    for _ in 0..20 {
        while let Some(f) = sa.poll_transmit(&a, now).unwrap() {
            sb.handle_frame(&mut b, now, &f).unwrap();
        }
        told |= sb
            .take_events()
            .iter()
            .any(|e| matches!(e, SessionEvent::BehindOwnChain { .. }));
        while let Some(f) = sb.poll_transmit(&b, now).unwrap() {
            sa.handle_frame(&mut a, now, &f).unwrap();
        }
    }
    assert!(told, "b is told it is behind its own chain");
    assert_eq!(
        b.version_vector().get(&b.node_id()),
        ahead,
        "b got its own ops back"
    );
}

/// Six authors whose ops interleave in Lamport order: `ops_for_sync` hands a holder of
/// nothing every op exactly once, in (Lamport, author) order, in answers of about the
/// budget (the next ops while under it, at least one), whatever the budget.
#[test]
fn ops_for_sync_answers_in_lamport_order_across_many_authors() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(31);
    let mut nodes = vec![new_cluster(&dir.path().join("n0"), &mut rng, at(0))];
    for i in 1..6 {
        let n = join(
            &dir.path().join(format!("n{i}")),
            &mut nodes[0],
            Role::Member,
            &mut rng,
            at(0),
        );
        nodes.push(n);
    }
    sync_all(&mut nodes);
    for round in 0..12u64 {
        for (i, n) in nodes.iter_mut().enumerate() {
            for k in 0..=(round + i as u64) % 3 {
                n.execute(
                    at(1 + round),
                    Command::Heartbeat {
                        label: format!(
                            "n{i} r{round} k{k} {}",
                            "x".repeat((i * 37 + k as usize * 11) % 90)
                        ),
                        address: None,
                    },
                )
                .unwrap();
            }
        }
        if round % 4 == 3 {
            sync_all(&mut nodes);
        }
    }
    sync_all(&mut nodes);
    let node = &nodes[0];
    let all = node.ops_for_sync(&VersionVector::default(), usize::MAX).unwrap();
    assert_eq!(all.len() as u64, node.version_vector().total());
    assert!(
        all.windows(2)
            .all(|w| (w[0].lamport, w[0].author) < (w[1].lamport, w[1].author)),
        "one answer holds everything in (Lamport, author) order"
    );
    for budget in [1, 150, 700, 3_000, 20_000] {
        let mut cursor = VersionVector::default();
        let mut at_op = 0;
        loop {
            let answer = node.ops_for_sync(&cursor, budget).unwrap();
            if answer.is_empty() {
                break;
            }
            let mut expected = Vec::new();
            let mut bytes = 0;
            for op in &all[at_op..] {
                if bytes >= budget && !expected.is_empty() {
                    break;
                }
                bytes += op.bytes.len();
                expected.push(op);
            }
            assert_eq!(
                answer.iter().map(|o| (o.author, o.seq)).collect::<Vec<_>>(),
                expected.iter().map(|o| (o.author, o.seq)).collect::<Vec<_>>(),
                "budget {budget}, from op {at_op}"
            );
            for op in &answer {
                assert_eq!(op.seq, cursor.get(&op.author) + 1);
                cursor.set(op.author, op.seq);
            }
            at_op += answer.len();
        }
        assert_eq!(at_op, all.len(), "budget {budget}: every op once");
    }
}

/// Ops a node holds count as duplicates when they come again; the same op with other
/// signature bytes is still checked, and refused.
#[test]
fn held_ops_are_duplicates_and_a_changed_signature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), 32);
    let [a, b, _] = &mut nodes[..] else { unreachable!() };
    for i in 0..5 {
        add_story(a, at(1), &format!("{i}_s"));
    }
    let ops = a.ops_since(&b.version_vector()).unwrap();
    let report = b.ingest(unverified(ops.clone())).unwrap();
    assert_eq!((report.applied, report.duplicates), (5, 0));
    let report = b.ingest(unverified(ops.clone())).unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 5));
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let mut forged = ops[2].bytes().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged = huskies_core::UnverifiedOp::decode(&forged).unwrap();
    let report = b.ingest(vec![forged]).unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 0));
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].reason.code(), "bad_signature");
}
