//! Claims and the merge lock: exclusive while live, taken over or cleared once the
//! holder is dead or its lease ran out.

mod common;

use common::*;
use huskies_core::{Command, Error, ErrorKind, Event, Node, Role};

#[test]
fn claims_conflict_while_live_and_can_be_taken_over_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(4);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    add_story(&mut a, at(1), "2_s");
    a.execute(
        at(1),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    a.execute(
        at(2),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    let (lost_a, _sub) = collect_events(&a);

    // Both see A's live claim; B is refused while it lives.
    for n in [&a, &b] {
        let claim = n.story(&sid("1_s"), at(10)).unwrap().claim.expect("live claim");
        assert_eq!(claim.node, a.node_id());
        assert_eq!(claim.expires_at, at(62));
    }
    let before = snapshot(&b, at(10));
    let err = b
        .execute(
            at(10),
            Command::Claim {
                id: sid("1_s"),
                ttl_secs: 60,
            },
        )
        .unwrap_err();
    match &err {
        Error::ClaimConflict {
            holder, expires_at, ..
        } => {
            assert_eq!(*holder, a.node_id());
            assert_eq!(*expires_at, at(62));
        }
        other => panic!("expected ClaimConflict, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::ClaimConflict);
    let err = b
        .execute(at(10), Command::Release { id: sid("1_s") })
        .unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::ClaimConflict,
        "A holds a live claim: B may not release it without force: {err}"
    );
    assert_eq!(snapshot(&b, at(10)), before, "refusals write nothing");

    // A renews its own claim freely.
    a.execute(
        at(20),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    a.execute(
        at(20),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    assert!(b
        .execute(
            at(70),
            Command::Claim {
                id: sid("1_s"),
                ttl_secs: 60
            }
        )
        .is_err());

    // After expiry (80 > 20 + 60) B takes over; A learns it lost the claim.
    b.execute(
        at(81),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(
            n.story(&sid("1_s"), at(82)).unwrap().claim.unwrap().node,
            b.node_id()
        );
    }
    assert_eq!(
        lost_a.lock().unwrap().as_slice(),
        [Event::ClaimLost {
            story: sid("1_s"),
            winner: Some(b.node_id())
        }]
    );
    let err = a
        .execute(
            at(82),
            Command::Claim {
                id: sid("1_s"),
                ttl_secs: 60,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClaimConflict);

    // B releases; nobody holds it.
    b.execute(at(90), Command::Release { id: sid("1_s") }).unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.story(&sid("1_s"), at(91)).unwrap().claim, None);
    }

    // A claim of a node whose heartbeat went stale stops counting before it expires.
    a.execute(
        at(100),
        Command::Heartbeat {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    a.execute(
        at(100),
        Command::Claim {
            id: sid("2_s"),
            ttl_secs: 3600,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    assert_eq!(
        b.execute(
            at(150),
            Command::Claim {
                id: sid("2_s"),
                ttl_secs: 60
            }
        )
        .unwrap_err()
        .kind(),
        ErrorKind::ClaimConflict
    );
    // stale_after_secs is 90: at 191 A's last sign of life is 91 s old.
    assert_eq!(b.story(&sid("2_s"), at(191)).unwrap().claim, None);
    b.execute(
        at(191),
        Command::Claim {
            id: sid("2_s"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    assert_eq!(
        b.story(&sid("2_s"), at(192)).unwrap().claim.unwrap().node,
        b.node_id()
    );
}

#[test]
fn the_merge_lock_is_exclusive_and_a_dead_holders_lock_can_be_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(5);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    let hb = |n: &mut Node, t: u64, label: &str| {
        n.execute(
            at(t),
            Command::Heartbeat {
                label: label.into(),
                address: None,
            },
        )
        .unwrap();
    };

    assert_eq!(
        b.execute(at(1), Command::ClearStaleMergeLock).unwrap_err().kind(),
        ErrorKind::NotFound,
        "nothing to clear"
    );
    hb(&mut a, 1, "a");
    hb(&mut b, 1, "b");
    a.execute(at(1), Command::AcquireMergeLock { ttl_secs: 600 })
        .unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.merge_lock(at(2)).unwrap().unwrap().node, a.node_id());
        assert_eq!(n.stale_merge_lock(at(2)).unwrap(), None);
    }
    let before = snapshot(&b, at(10));
    for cmd in [
        Command::AcquireMergeLock { ttl_secs: 600 },
        Command::ClearStaleMergeLock,
    ] {
        let err = b.execute(at(10), cmd).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ClaimConflict, "{err}");
        assert!(err.to_string().contains("merge lock"), "{err}");
    }
    assert_eq!(
        b.execute(at(10), Command::ReleaseMergeLock).unwrap_err().kind(),
        ErrorKind::NotFound,
        "B does not hold it"
    );
    assert_eq!(snapshot(&b, at(10)), before);

    // A dies (no more heartbeats). Once its heartbeat is stale the lock is not live, it
    // shows as stale, and B clears it.
    hb(&mut b, 100, "b");
    assert_eq!(b.merge_lock(at(100)).unwrap(), None);
    assert_eq!(b.stale_merge_lock(at(100)).unwrap().unwrap().node, a.node_id());
    b.execute(at(100), Command::ClearStaleMergeLock).unwrap();
    assert_eq!(b.stale_merge_lock(at(100)).unwrap(), None);
    assert_eq!(b.merge_lock(at(100)).unwrap(), None);
    b.execute(at(101), Command::AcquireMergeLock { ttl_secs: 600 })
        .unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.merge_lock(at(102)).unwrap().unwrap().node, b.node_id());
    }
    // A comes back: the lock is B's now.
    hb(&mut a, 103, "a");
    assert_eq!(
        a.execute(at(103), Command::AcquireMergeLock { ttl_secs: 60 })
            .unwrap_err()
            .kind(),
        ErrorKind::ClaimConflict
    );
    b.execute(at(104), Command::ReleaseMergeLock).unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.merge_lock(at(105)).unwrap(), None);
    }
    a.execute(at(106), Command::AcquireMergeLock { ttl_secs: 60 })
        .unwrap();
    assert_eq!(a.merge_lock(at(107)).unwrap().unwrap().node, a.node_id());
    // A lease past its TTL is stale even with a fresh heartbeat.
    hb(&mut a, 170, "a");
    assert_eq!(a.merge_lock(at(170)).unwrap(), None);
    assert_eq!(a.stale_merge_lock(at(170)).unwrap().unwrap().node, a.node_id());
}

/// Known gap in `LeaseSet`: a claim taken over from a node whose heartbeat went stale (but
/// whose lease had not expired) comes back to life when the new holder releases it and
/// the old holder's heartbeat resumes, although the old holder was told `ClaimLost`. The
/// story then looks claimed by a node that is not working on it until that old lease
/// expires (up to `MAX_TTL_SECS`). A release (or the takeover itself) should retire the
/// leases it superseded.
#[test]
fn a_taken_over_claim_does_not_come_back_after_the_new_holder_releases() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(11);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    let hb = |n: &mut Node, t: u64| {
        n.execute(
            at(t),
            Command::Heartbeat {
                label: "n".into(),
                address: None,
            },
        )
        .unwrap();
    };
    hb(&mut a, 1);
    a.execute(
        at(1),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 3600,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    // A goes quiet; B takes over once A is stale, then finishes and releases.
    b.execute(
        at(200),
        Command::Claim {
            id: sid("1_s"),
            ttl_secs: 600,
        },
    )
    .unwrap();
    b.execute(at(300), Command::Release { id: sid("1_s") }).unwrap();
    // A comes back.
    hb(&mut a, 400);
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        assert_eq!(n.story(&sid("1_s"), at(401)).unwrap().claim, None);
    }
}

fn heartbeat(n: &mut Node, now: huskies_core::Timestamp, label: &str) {
    n.execute(
        now,
        Command::Heartbeat {
            label: label.into(),
            address: None,
        },
    )
    .unwrap();
}

fn claim(n: &mut Node, now: huskies_core::Timestamp, id: &str) -> Result<huskies_core::Receipt, Error> {
    n.execute(
        now,
        Command::Claim {
            id: sid(id),
            ttl_secs: 600,
        },
    )
}

/// Three members with fresh heartbeats and one story, all in sync at `at(2)`.
fn three_alive(dir: &std::path::Path) -> Vec<Node> {
    let mut nodes = three_nodes(dir, 11);
    add_story(&mut nodes[0], at(1), "1_s");
    for (n, l) in nodes.iter_mut().zip(["a", "b", "c"]) {
        heartbeat(n, at(1), l);
    }
    sync_all(&mut nodes);
    nodes
}

#[test]
fn a_claim_is_confirmed_once_every_alive_member_has_seen_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_alive(dir.path());
    let ids: Vec<_> = nodes.iter().map(|n| n.node_id()).collect();
    claim(&mut nodes[0], at(3), "1_s").unwrap();
    let status = |n: &Node, t| n.claim_status(&sid("1_s"), at(t)).unwrap().expect("a live claim");
    let s = status(&nodes[0], 3);
    assert!(!s.confirmed);
    let mut pending = vec![ids[1], ids[2]];
    pending.sort();
    assert_eq!(s.pending, pending, "b and c have not said they saw it");
    assert!(!nodes[0].story(&sid("1_s"), at(3)).unwrap().claim_confirmed);

    // b receives the claim and heartbeats: it says it holds a's op now.
    let (a, b) = pair(&mut nodes, 0, 1);
    push(a, b);
    assert!(b.heartbeat_wanted(), "b merged another node's claim");
    heartbeat(b, at(4), "b");
    assert!(!b.heartbeat_wanted(), "the heartbeat said it");
    push(b, a);
    assert_eq!(status(a, 4).pending, vec![ids[2]], "only c is left");

    // c's last heartbeat predates the claim; once c has it and heartbeats, it is confirmed.
    let (a, c) = pair(&mut nodes, 0, 2);
    push(a, c);
    heartbeat(c, at(5), "c");
    push(c, a);
    let s = status(a, 5);
    assert!(s.confirmed && s.pending.is_empty(), "{s:?}");
    assert!(a.story(&sid("1_s"), at(5)).unwrap().claim_confirmed);

    // A member that stopped heartbeating is not waited for (the limit under partition: it
    // could still hold a concurrent claim when it comes back).
    claim(&mut nodes[0], at(200), "1_s").unwrap();
    heartbeat(&mut nodes[0], at(200), "a");
    let s = status(&nodes[0], 200);
    assert!(s.confirmed, "b and c are not alive at 200 s: {s:?}");
}

#[test]
fn a_node_that_never_heartbeated_is_not_alive() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(12);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    a.execute(
        at(1),
        Command::Announce {
            label: "a".into(),
            address: None,
        },
    )
    .unwrap();
    let nodes = a.nodes(at(2)).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].label, "a");
    assert!(!nodes[0].alive, "a label announced by init is not a heartbeat");
    heartbeat(&mut a, at(3), "a");
    assert!(a.nodes(at(4)).unwrap()[0].alive);
}

#[test]
fn of_two_concurrent_claims_one_wins_at_most_one_is_confirmed_and_the_loser_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_alive(dir.path());
    let (lost_a, _sa) = collect_events(&nodes[0]);
    let (lost_b, _sb) = collect_events(&nodes[1]);
    // a and b claim at once, neither having seen the other's claim.
    claim(&mut nodes[0], at(3), "1_s").unwrap();
    claim(&mut nodes[1], at(3), "1_s").unwrap();
    sync_all(&mut nodes);
    for (i, n) in nodes.iter_mut().enumerate() {
        if n.heartbeat_wanted() {
            heartbeat(n, at(4), ["a", "b", "c"][i]);
        }
    }
    sync_all(&mut nodes);
    let holder = nodes[0]
        .claim_status(&sid("1_s"), at(5))
        .unwrap()
        .unwrap()
        .lease
        .node;
    let confirmed: Vec<bool> = nodes
        .iter()
        .map(|n| {
            let s = n.claim_status(&sid("1_s"), at(5)).unwrap().unwrap();
            assert_eq!(s.lease.node, holder, "every replica names one holder");
            s.confirmed
        })
        .collect();
    assert!(
        confirmed.iter().all(|c| *c),
        "after a round of heartbeats: {confirmed:?}"
    );
    let (winner, loser, lost) = if holder == nodes[0].node_id() {
        (0, 1, lost_b)
    } else {
        (1, 0, lost_a)
    };
    // The loser was told: an event, its lost claims, a claim.lost envelope.
    assert!(
        lost.lock().unwrap().iter().any(|e| matches!(
            e,
            Event::ClaimLost { story, winner: Some(w) } if *story == sid("1_s") && *w == holder
        )),
        "{:?}",
        lost.lock().unwrap()
    );
    let lost_claims = nodes[loser].lost_claims(at(5)).unwrap();
    assert_eq!(lost_claims.len(), 1);
    assert_eq!(lost_claims[0].winner.as_ref().map(|l| l.node), Some(holder));
    assert!(nodes[winner].lost_claims(at(5)).unwrap().is_empty());
    let loser_id = nodes[loser].node_id();
    for n in &nodes {
        let events = huskies_core::events_after(n, &huskies_core::EventCursor::default(), 1 << 20).unwrap();
        let lost: Vec<_> = events
            .events
            .iter()
            .filter(|(e, _)| e.event_type() == Some(huskies_core::EventType::ClaimLost))
            .map(|(e, _)| e.attributes.node.clone())
            .collect();
        assert_eq!(
            lost,
            vec![Some(loser_id.to_hex())],
            "one claim.lost, for the loser"
        );
    }
    // The loser's pipeline events are refused now.
    let err = nodes[loser]
        .execute(
            at(6),
            Command::event(sid("1_s"), huskies_core::PipelineEvent::DepsMet),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ClaimConflict);
}

#[test]
fn a_live_claim_of_another_node_refuses_events_removal_and_release_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_alive(dir.path());
    claim(&mut nodes[1], at(3), "1_s").unwrap();
    sync_all(&mut nodes);
    let b = nodes[1].node_id();
    let (lost_b, _sb) = collect_events(&nodes[1]);
    let a = &mut nodes[0];
    let before = snapshot(a, at(4));
    let deps_met = || Command::event(sid("1_s"), huskies_core::PipelineEvent::DepsMet);
    for cmd in [
        deps_met(),
        Command::DeleteStory { id: sid("1_s") },
        Command::Release { id: sid("1_s") },
    ] {
        match a.execute(at(4), cmd).unwrap_err() {
            Error::ClaimConflict {
                holder, expires_at, ..
            } => {
                assert_eq!(holder, b);
                assert_eq!(expires_at, at(603));
            }
            other => panic!("expected claim_conflict, got {other:?}"),
        }
    }
    assert_eq!(snapshot(a, at(4)), before, "refusals write nothing");
    assert_eq!(
        a.execute(
            at(4),
            Command::Force(Box::new(Command::Heartbeat {
                label: "x".into(),
                address: None
            }))
        )
        .unwrap_err()
        .kind(),
        ErrorKind::InvalidArgument
    );

    // Forced: applied, and the override is on record.
    a.execute(at(5), Command::Force(Box::new(deps_met()))).unwrap();
    let h = a.history(&sid("1_s")).unwrap();
    assert_eq!(h.last().unwrap().forced_over, Some(b));
    a.execute(
        at(6),
        Command::Force(Box::new(Command::Release { id: sid("1_s") })),
    )
    .unwrap();
    assert_eq!(
        a.story(&sid("1_s"), at(6)).unwrap().claim,
        None,
        "b's lease ended"
    );
    sync_all(&mut nodes);
    for n in &nodes {
        assert_eq!(
            n.history(&sid("1_s")).unwrap().last().unwrap().forced_over,
            Some(b)
        );
        assert_eq!(n.story(&sid("1_s"), at(7)).unwrap().claim, None);
    }
    assert!(lost_b
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::ClaimLost { winner: None, .. })));
    assert_eq!(
        nodes[1].lost_claims(at(7)).unwrap().len(),
        1,
        "b sees it lost the story"
    );
    let envs = huskies_core::events_after(&nodes[2], &huskies_core::EventCursor::default(), 1 << 20).unwrap();
    let forced: Vec<_> = envs
        .events
        .iter()
        .filter(|(e, _)| e.attributes.detail.contains_key("forced_over"))
        .map(|(e, _)| e.kind.clone())
        .collect();
    assert_eq!(
        forced,
        ["org.huskies.story.transitioned", "org.huskies.claim.released"],
        "forced ops' events say so"
    );
}
