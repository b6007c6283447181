//! Membership over replication: equivocation and quarantine, member removal, key
//! rotation.

mod common;

use std::collections::BTreeMap;

use common::*;
use huskies_core::{Command, ErrorKind, Node, NodeId, Payload, PipelineEvent, RejectReason, Role, Stage};

/// Sets up admin A and member B, plus a raw author M (admitted by A) that has written one
/// valid op; returns M so the test can make it equivocate.
fn with_raw_member(dir: &std::path::Path, seed: u64) -> (Node, Node, RawAuthor) {
    let mut rng = TestRng::new(seed);
    let mut a = new_cluster(&dir.join("a"), &mut rng, at(0));
    let mut b = join(&dir.join("b"), &mut a, Role::Member, &mut rng, at(0));
    let mut m = RawAuthor::new([0x4d; 32], a.cluster_id());
    a.execute(
        at(1),
        Command::AddMember {
            node: m.id(),
            role: Role::Member,
        },
    )
    .unwrap();
    let first = m.next(
        a.lamport() + 1,
        at(2),
        Payload::StoryCreate {
            story: sid("m_0"),
            name: "m".into(),
            body: None,
            depends_on: vec![],
        },
    );
    let r = a.ingest(unverified(vec![first])).unwrap();
    assert_eq!(r.applied, 1, "{r:?}");
    sync(&mut a, &mut b);
    (a, b, m)
}

fn assert_quarantined(n: &Node, m: NodeId, at_seq: u64, evidence: &[huskies_core::OpId]) {
    let forks = n.forks().unwrap();
    assert_eq!(forks.len(), 1, "{forks:?}");
    assert_eq!(forks[0].author, m);
    assert_eq!(forks[0].at_seq, at_seq);
    let mut got = forks[0].evidence.clone();
    got.sort();
    let mut want = evidence.to_vec();
    want.sort();
    assert_eq!(got, want, "evidence on {:?}", n.node_id());
    let member = n
        .members()
        .into_iter()
        .find(|x| x.node == m)
        .expect("still listed");
    assert!(member.quarantined);
    assert_eq!(
        n.version_vector().get(&m),
        at_seq - 1,
        "ops from the fork on are void"
    );
}

#[test]
fn equivocation_quarantines_the_author_identically_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, m) = with_raw_member(dir.path(), 16);
    let l = a.lamport() + 1;
    let pay = |name: &str| Payload::StoryCreate {
        story: sid(name),
        name: name.into(),
        body: None,
        depends_on: vec![],
    };
    // Two different ops for M's seq 2, and a follow-up on each branch.
    let x = m.peek(l, at(3), pay("m_x"));
    let y = m.peek(l + 1, at(3), pay("m_y"));
    let mut mx = m.after(&x);
    let mut my = m.after(&y);
    let x2 = mx.next(l + 2, at(4), pay("m_x2"));
    let y2 = my.next(l + 2, at(4), pay("m_y2"));

    // A hears x then y; B hears y2, y then x, in separate ingests.
    let ra = a.ingest(unverified(vec![x.clone(), x2.clone()])).unwrap();
    assert_eq!(ra.applied, 2);
    assert_eq!(
        a.story(&sid("m_x"), at(5)).unwrap().name,
        "m_x",
        "accepted before the fork is known"
    );
    let ra = a.ingest(unverified(vec![y.clone()])).unwrap();
    assert_eq!(ra.forks, vec![m.id()]);
    let rb = b.ingest(unverified(vec![y2.clone()])).unwrap();
    assert_eq!(rb.buffered, 1);
    let rb = b.ingest(unverified(vec![y.clone()])).unwrap();
    assert_eq!(rb.applied, 2);
    let rb = b.ingest(unverified(vec![x.clone()])).unwrap();
    assert_eq!(rb.forks, vec![m.id()]);

    for n in [&a, &b] {
        assert_quarantined(n, m.id(), 2, &[x.id(), y.id()]);
        // Everything M wrote from the fork on is gone from the projection; seq 1 stays.
        assert!(n.story(&sid("m_0"), at(5)).is_ok());
        for s in ["m_x", "m_y", "m_x2", "m_y2"] {
            assert_eq!(
                n.story(&sid(s), at(5)).unwrap_err().kind(),
                ErrorKind::NotFound,
                "{s}"
            );
        }
    }
    assert_eq!(snapshot(&a, at(5)), snapshot(&b, at(5)));

    // Later ops of M are refused.
    let more = mx.next(l + 3, at(6), pay("m_late"));
    let r = a.ingest(unverified(vec![more])).unwrap();
    assert_eq!(r.applied, 0);
    assert!(
        matches!(r.rejected[0].reason, RejectReason::Quarantined(q) if q == m.id()),
        "{r:?}"
    );

    // The evidence travels with ops_since: fresh nodes fed by A or by B alone reach the
    // same decision, whether the evidence comes in one batch or op by op.
    let mut rng = TestRng::new(160);
    let mut c = join(&dir.path().join("c"), &mut a, Role::Member, &mut rng, at(7));
    let mut d = join(&dir.path().join("d"), &mut a, Role::Member, &mut rng, at(7));
    push(&a, &mut c);
    let all = b.ops_since(&d.version_vector()).unwrap();
    for op in all.into_iter().rev() {
        let _report = d.ingest(unverified(vec![op])).unwrap();
    }
    push(&b, &mut d);
    for n in [&c, &d] {
        assert_quarantined(n, m.id(), 2, &[x.id(), y.id()]);
    }
    sync(&mut a, &mut b);
    let mut nodes = vec![a, b, c, d];
    sync_all(&mut nodes);
    let s0 = snapshot(&nodes[0], at(8));
    for n in &nodes[1..] {
        assert_eq!(snapshot(n, at(8)), s0);
    }
}

/// A node restored from a stale copy of its home signs a different op for a seq it had
/// already used: the same equivocation, from a real node.
#[test]
fn a_node_restored_from_a_stale_copy_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(17);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let b_home = dir.path().join("b");
    let b = join(&b_home, &mut a, Role::Member, &mut rng, at(0));
    let b_id = b.node_id();
    drop(b);
    let copy = dir.path().join("b_copy");
    copy_dir(&b_home, &copy);
    let mut b = Node::open(&b_home, config()).unwrap();
    let mut b2 = Node::open(&copy, config()).unwrap();
    assert_eq!(b2.node_id(), b_id);
    add_story(&mut b, at(1), "1_original");
    add_story(&mut b2, at(1), "1_restored");
    push(&b, &mut a);
    // Version-vector sync sends nothing for a seq the receiver holds, so the second op
    // for seq 1 goes unnoticed until the restored node's chain continues past it.
    assert_eq!(push_report(&b2, &mut a).applied, 0);
    add_story(&mut b2, at(1), "2_restored");
    let r = push_report(&b2, &mut a);
    assert_eq!(r.forks, vec![b_id]);
    let forks = a.forks().unwrap();
    assert_eq!(forks[0].at_seq, 1);
    assert_eq!(
        forks[0].evidence.len(),
        2,
        "the op A held and the one contradicting it"
    );
    assert!(a.members().iter().any(|m| m.node == b_id && m.quarantined));
    assert!(a.stories(None, at(2)).unwrap().is_empty());
    // B hears of it from A.
    let r = push_report(&a, &mut b);
    assert_eq!(r.forks, vec![b_id]);
    assert_eq!(a.forks().unwrap(), b.forks().unwrap());
    assert_eq!(snapshot(&a, at(2)), snapshot(&b, at(2)));
    assert_eq!(
        b.execute(
            at(3),
            Command::Heartbeat {
                label: "b".into(),
                address: None
            }
        )
        .unwrap_err()
        .kind(),
        ErrorKind::Unauthorized,
        "a quarantined node cannot write"
    );
    // A fresh node learns the fork from the evidence alone.
    let mut c = join(&dir.path().join("c"), &mut a, Role::Member, &mut rng, at(4));
    assert_eq!(c.forks().unwrap(), a.forks().unwrap());
    assert_eq!(snapshot(&c, at(5)), snapshot(&a, at(5)));
    // Re-sent evidence counts as duplicates, not refusals.
    let r = push_report(&a, &mut c);
    assert!(r.rejected.is_empty(), "{r:?}");
    assert_eq!(r.duplicates, 2);
}

#[test]
fn a_removed_members_later_ops_are_void_on_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = three_nodes(dir.path(), 18);
    let b_id = nodes[1].node_id();
    add_story(&mut nodes[1], at(1), "1_b");
    sync_all(&mut nodes);
    let cutoff = nodes[0].version_vector().get(&b_id);
    {
        let [a, b, c] = &mut nodes[..] else { unreachable!() };
        // B keeps writing; only C hears of it before A removes B.
        add_story(b, at(2), "2_b");
        event(b, at(2), "1_b", PipelineEvent::DepsMet);
        push(b, c);
        assert_eq!(c.stories(None, at(3)).unwrap().len(), 2);
        let before = a.stories(None, at(3)).unwrap();
        a.execute(at(3), Command::RemoveMember { node: b_id }).unwrap();
        assert_eq!(a.stories(None, at(3)).unwrap(), before);
    }
    sync_all(&mut nodes);
    let s0 = snapshot(&nodes[0], at(4));
    for n in &nodes {
        assert_eq!(snapshot(n, at(4)), s0);
        assert_eq!(n.version_vector().get(&b_id), cutoff);
        let ids = live_ids(n, at(4));
        assert_eq!(ids, [sid("1_b")], "B's ops after the cutoff are void");
        assert_eq!(n.story(&sid("1_b"), at(4)).unwrap().stage, Stage::Backlog);
        let member = n.members().into_iter().find(|m| m.node == b_id).unwrap();
        assert!(member.removed);
    }
    // B can no longer write, and nobody takes its ops.
    let err = nodes[1]
        .execute(
            at(5),
            Command::Heartbeat {
                label: "b".into(),
                address: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    // A removed key cannot be re-added.
    let err = nodes[0]
        .execute(
            at(5),
            Command::AddMember {
                node: b_id,
                role: Role::Member,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // Members cannot remove members.
    let a_id = nodes[0].node_id();
    let err = nodes[2]
        .execute(at(5), Command::RemoveMember { node: a_id })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    // B's own chain was cut back to the cutoff on purpose: reopening B does not take the
    // shorter chain for a store that lost acknowledged ops.
    let b_home = nodes[1].home().to_path_buf();
    drop(nodes.remove(1));
    let b = Node::open(&b_home, config()).unwrap();
    assert_eq!(b.own_ops_missing(), None);
    assert_eq!(b.version_vector().get(&b_id), cutoff);
}

#[test]
fn a_rotated_key_replicates_and_the_new_key_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(19);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let b_home = dir.path().join("b");
    let mut b = join(&b_home, &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut b, at(1), "1_b");
    sync(&mut a, &mut b);
    let old = b.node_id();
    b.rotate_key(at(2), &mut rng).unwrap();
    let new = b.node_id();
    assert_ne!(old, new);
    push(&b, &mut a);
    for n in [&a, &b] {
        let members: BTreeMap<NodeId, _> = n.members().into_iter().map(|m| (m.node, m)).collect();
        assert_eq!(members[&old].rotated_to, Some(new));
        assert!(members[&old].removed);
        assert_eq!(members[&new].role, Role::Member);
        assert!(!members[&new].removed);
    }
    // The new key writes and the admin takes its ops.
    add_story(&mut b, at(3), "2_b");
    event(&mut b, at(3), "1_b", PipelineEvent::DepsMet);
    assert_eq!(push(&b, &mut a), 2);
    assert_eq!(a.version_vector().get(&new), 2);
    assert_eq!(a.story(&sid("1_b"), at(4)).unwrap().stage, Stage::Coding);
    assert_eq!(snapshot(&a, at(4)), snapshot(&b, at(4)));

    // The rotation survives a reopen, and a fresh node learns all of it.
    drop(b);
    let b = Node::open(&b_home, config()).unwrap();
    assert_eq!(b.node_id(), new);
    assert_eq!(b.own_ops_missing(), None, "the store mark follows the new key");
    let mut c = join(&dir.path().join("c"), &mut a, Role::Member, &mut rng, at(5));
    push(&a, &mut c);
    assert_eq!(snapshot(&c, at(6)), snapshot(&a, at(6)));
    assert_eq!(snapshot(&b, at(6)).stories, snapshot(&c, at(6)).stories);

    // An admin rotates too, and its new key keeps admin rights.
    a.rotate_key(at(7), &mut rng).unwrap();
    let mut rng2 = TestRng::new(190);
    let d = outsider(&dir.path().join("d"), a.cluster_id(), &mut rng2, at(7));
    a.execute(
        at(8),
        Command::AddMember {
            node: d.node_id(),
            role: Role::Member,
        },
    )
    .unwrap();
    push(&a, &mut c);
    assert!(c.members().iter().any(|m| m.node == d.node_id()));
}

/// An author that signs two different ops for its newest seq and gives one to each of two
/// nodes is invisible to version-vector exchange alone (both hold that seq). The sync
/// handshake sends the op id at each version-vector entry; a side holding a different op
/// sends its own back, and both record the fork.
#[test]
fn equivocation_at_the_authors_head_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, m) = with_raw_member(dir.path(), 20);
    let l = a.lamport() + 1;
    let x = m.peek(
        l,
        at(3),
        Payload::StoryCreate {
            story: sid("m_x"),
            name: "x".into(),
            body: None,
            depends_on: vec![],
        },
    );
    let y = m.peek(
        l,
        at(3),
        Payload::StoryCreate {
            story: sid("m_y"),
            name: "y".into(),
            body: None,
            depends_on: vec![],
        },
    );
    assert_eq!(a.ingest(unverified(vec![x])).unwrap().applied, 1);
    assert_eq!(b.ingest(unverified(vec![y])).unwrap().applied, 1);
    session_sync(&mut a, &mut b);
    assert_eq!(snapshot(&a, at(4)), snapshot(&b, at(4)));
    for n in [&a, &b] {
        assert!(n.members().iter().any(|x| x.node == m.id() && x.quarantined));
    }
}

/// An export resumed from its cursor after every bundle (what the daemon's API and the
/// bindings do, one bundle per call) carries exactly what one uninterrupted export
/// carries, fork evidence included, and a fresh node fed it reaches the same quarantine.
#[test]
fn an_export_resumed_after_every_bundle_carries_the_fork_evidence_too() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b, m) = with_raw_member(dir.path(), 17);
    let l = a.lamport() + 1;
    let pay = |name: &str| Payload::StoryCreate {
        story: sid(name),
        name: name.into(),
        body: Some("e".repeat(huskies_core::MAX_BODY_BYTES)),
        depends_on: vec![],
    };
    let x = m.peek(l, at(3), pay("m_x"));
    let y = m.peek(l + 1, at(3), pay("m_y"));
    let _ = a.ingest(unverified(vec![x.clone()])).unwrap();
    assert_eq!(a.ingest(unverified(vec![y.clone()])).unwrap().forks, vec![m.id()]);
    for i in 0..80 {
        a.execute(
            at(4),
            Command::add_story(sid(&format!("{i}_big")), "big").body("b".repeat(3000)),
        )
        .unwrap();
    }

    // A fresh node of the cluster that has heard nothing yet.
    let mut c = Node::init(
        &dir.path().join("c"),
        huskies_core::InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut TestRng::new(171),
        at(5),
        config(),
    )
    .unwrap();
    let max = huskies_core::MIN_BUNDLE_BYTES;
    let whole: Vec<Vec<u8>> = a
        .export_chunks(&c.version_vector(), max)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(whole.len() > 3, "{} bundles", whole.len());

    let mut cursor = huskies_core::ExportCursor::from(c.version_vector());
    let mut resumed = Vec::new();
    loop {
        let mut chunks = a.export_chunks_from(&cursor, max).unwrap();
        let Some(bundle) = chunks.next() else { break };
        cursor = chunks.cursor();
        resumed.push(bundle.unwrap());
        assert!(resumed.len() <= whole.len(), "the resumed export does not end");
    }
    let ops = |bundles: &[Vec<u8>]| -> Vec<huskies_core::OpId> {
        bundles
            .iter()
            .flat_map(|b| huskies_core::decode_bundle(b).unwrap())
            .map(|op| op.unwrap().id())
            .collect()
    };
    assert_eq!(
        ops(&resumed),
        ops(&whole),
        "resumed bundle by bundle, the same ops"
    );
    assert!(cursor.evidence_sent.is_some_and(|n| n >= 2), "{cursor:?}");
    for bundle in &resumed {
        assert!(c.ingest_bundle(bundle).unwrap().rejected.is_empty());
    }
    assert_quarantined(&c, m.id(), 2, &[x.id(), y.id()]);
    assert_eq!(snapshot(&c, at(6)), snapshot(&a, at(6)));
    // A finished cursor yields nothing more.
    assert_eq!(a.export_chunks_from(&cursor, max).unwrap().count(), 0);
}

/// `Command::RemoveMember` of the node's own key used to be accepted and then refused by
/// the next rebuild (its cutoff, the node's head, lies below the removal's own seq: a
/// removal void under the cutoff it sets). The command refuses it, typed, before signing
/// anything; another admin's removal of the same key counts on both nodes.
#[test]
fn a_node_cannot_remove_itself_and_another_admin_can() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(23);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Admin, &mut rng, at(0));
    let a_id = a.node_id();
    let before = a.version_vector();
    let err = a
        .execute(at(1), Command::RemoveMember { node: a_id })
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("cannot remove itself"), "{err}");
    assert_eq!(a.version_vector(), before, "nothing was stored");
    assert!(a.is_active_member(&a_id), "a is still a member");
    // Still a writer: the refusal left no cutoff behind.
    add_story(&mut a, at(2), "1_a");
    sync(&mut a, &mut b);
    b.execute(at(3), Command::RemoveMember { node: a_id }).unwrap();
    sync(&mut a, &mut b);
    for n in [&a, &b] {
        let m = n.members().into_iter().find(|m| m.node == a_id).unwrap();
        assert!(m.removed, "a is removed on {}", n.node_id());
        assert_eq!(
            n.version_vector().get(&a_id),
            before.get(&a_id) + 1,
            "a's story counts"
        );
    }
}
