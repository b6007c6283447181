//! Hostile or broken input: every case gets a clear error or rejection reason and leaves
//! the store exactly as it was (version vector, Lamport clock and projection compared
//! before and after).

mod common;

use common::*;
use huskies_core::{
    decode_bundle, encode_bundle, Command, DecodeError, Error, ErrorKind, Node, NodeKey, OpContent, Payload,
    RejectReason, Role, SignedOp, StoryField, UnverifiedOp, VerifyError, MAX_BODY_BYTES, MAX_LAMPORT_JUMP,
    MAX_OP_BYTES, OP_FORMAT_VERSION,
};
use rand_core::RngCore;

fn story_create(id: &str) -> Payload {
    Payload::StoryCreate {
        story: sid(id),
        name: id.into(),
        body: None,
        depends_on: vec![],
    }
}

fn single_rejection(r: &huskies_core::IngestReport) -> &RejectReason {
    assert_eq!(r.applied, 0, "{r:?}");
    assert_eq!(r.rejected.len(), 1, "{r:?}");
    let reason = &r.rejected[0].reason;
    assert!(!reason.to_string().is_empty());
    reason
}

#[test]
fn truncated_and_garbage_op_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = admin_and_member(dir.path(), 21);
    let r = b
        .execute(
            at(2),
            Command::Heartbeat {
                label: "b".into(),
                address: None,
            },
        )
        .unwrap();
    let op = b
        .ops_since(&a.version_vector())
        .unwrap()
        .into_iter()
        .find(|o| o.id() == r.op_id)
        .unwrap();
    let bytes = op.bytes().to_vec();
    let before = stored(&a);

    // Every truncation fails to decode, with a reason.
    for cut in 0..bytes.len() {
        let err = UnverifiedOp::decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Truncated(_) | DecodeError::LengthMismatch { .. }
            ),
            "cut at {cut}: {err:?}"
        );
        assert!(!err.to_string().is_empty());
    }
    // Garbage of many shapes.
    let mut g = TestRng::new(99);
    for len in [0usize, 1, 5, 68, 69, 100, 300, 4096] {
        let mut junk = vec![0u8; len];
        g.fill_bytes(&mut junk);
        assert!(
            UnverifiedOp::decode(&junk).is_err(),
            "junk of {len} bytes decoded"
        );
    }
    let mut wrong_version = bytes.clone();
    wrong_version[4] = OP_FORMAT_VERSION + 1;
    assert_eq!(
        UnverifiedOp::decode(&wrong_version).unwrap_err(),
        DecodeError::UnsupportedVersion(OP_FORMAT_VERSION + 1)
    );
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        UnverifiedOp::decode(&longer).unwrap_err(),
        DecodeError::LengthMismatch { .. }
    ));
    // A content byte changed inside the frame: the content no longer decodes, or decodes
    // to something else whose signature fails.
    for i in 5..bytes.len() - 64 {
        let mut flipped = bytes.clone();
        flipped[i] ^= 0x80;
        if let Ok(op) = UnverifiedOp::decode(&flipped) {
            assert!(op.verify().is_err(), "byte {i} flipped still verifies");
        }
    }

    // A bundle whose ops frame correctly but do not decode: each is a Malformed rejection.
    let mut bundle = b"HSKB\x01".to_vec();
    let junk: [&[u8]; 3] = [&bytes[..20], &[0xff; 90], &wrong_version];
    bundle.extend_from_slice(&(junk.len() as u32).to_le_bytes());
    for j in junk {
        bundle.extend_from_slice(&(j.len() as u32).to_le_bytes());
        bundle.extend_from_slice(j);
    }
    let report = a.ingest_bundle(&bundle).unwrap();
    assert_eq!(report.applied, 0);
    assert_eq!(report.rejected.len(), 3);
    for rej in &report.rejected {
        assert!(matches!(rej.reason, RejectReason::Malformed(_)), "{rej:?}");
        assert_eq!(rej.op_id, None);
    }
    assert_eq!(stored(&a), before);
}

#[test]
fn a_broken_bundle_is_an_error_and_ingests_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = admin_and_member(dir.path(), 22);
    for i in 0..3 {
        add_story(&mut b, at(2), &format!("b_{i}"));
    }
    let good = b.export_since(&a.version_vector()).unwrap();
    assert_eq!(decode_bundle(&good).unwrap().len(), 3);
    let before = stored(&a);

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    cases.push(("empty".into(), Vec::new()));
    cases.push(("bad magic".into(), {
        let mut x = good.clone();
        x[0] = b'X';
        x
    }));
    cases.push(("bad version".into(), {
        let mut x = good.clone();
        x[4] = 9;
        x
    }));
    cases.push(("count too high".into(), {
        let mut x = good.clone();
        x[5] = 4;
        x
    }));
    cases.push(("trailing bytes".into(), {
        let mut x = good.clone();
        x.push(0);
        x
    }));
    cases.push(("op longer than the limit".into(), {
        let mut x = good.clone();
        x[9..13].copy_from_slice(&(MAX_OP_BYTES as u32 + 1).to_le_bytes());
        x
    }));
    for cut in [5, 9, 12, 13, 40, good.len() / 2, good.len() - 1] {
        cases.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    for (what, bytes) in cases {
        let err = a.ingest_bundle(&bytes).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{what}: {err:?}");
        assert!(err.to_string().contains("bundle"), "{what}: {err}");
        assert_eq!(stored(&a), before, "{what}");
    }
    // The intact bundle still applies.
    assert_eq!(a.ingest_bundle(&good).unwrap().applied, 3);
}

#[test]
fn a_flipped_signature_bit_is_a_bad_signature() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = admin_and_member(dir.path(), 23);
    add_story(&mut b, at(2), "b_1");
    let op = b.ops_since(&a.version_vector()).unwrap().pop().unwrap();
    let before = stored(&a);
    let n = op.bytes().len();
    for bit in [0usize, 7, 100, 511] {
        let mut bytes = op.bytes().to_vec();
        bytes[n - 64 + bit / 8] ^= 1 << (bit % 8);
        let bad = UnverifiedOp::decode(&bytes).expect("framing is intact");
        assert_eq!(bad.id(), op.id(), "the id covers the content only");
        let r = a.ingest(vec![bad]).unwrap();
        assert_eq!(
            single_rejection(&r),
            &RejectReason::BadSignature(VerifyError::BadSignature(b.node_id()))
        );
        assert_eq!(r.rejected[0].op_id, Some(op.id()));
        assert_eq!(stored(&a), before);
    }
    // In a batch with good ops, only the bad one is refused.
    let mut bytes = op.bytes().to_vec();
    bytes[n - 1] ^= 0x10;
    add_story(&mut b, at(3), "b_2");
    let mut ops = unverified(b.ops_since(&a.version_vector()).unwrap());
    ops[0] = UnverifiedOp::decode(&bytes).unwrap();
    let r = a.ingest(ops).unwrap();
    assert_eq!(r.rejected.len(), 1);
    assert!(matches!(r.rejected[0].reason, RejectReason::BadSignature(_)));
    assert_eq!(r.buffered, 1, "the good successor waits for its predecessor");
    assert_eq!(stored(&a), before);
    // The genuine op fills the gap.
    let r = a.ingest(vec![op.into_unverified()]).unwrap();
    assert_eq!(r.applied, 2);
}

#[test]
fn ops_of_another_cluster_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b) = admin_and_member(dir.path(), 24);
    let mut rng = TestRng::new(240);
    let mut other = new_cluster(&dir.path().join("other"), &mut rng, at(0));
    add_story(&mut other, at(1), "x_1");
    let before = stored(&a);
    let foreign = other.ops_since(&Default::default()).unwrap();
    assert_eq!(foreign.len(), 2);
    let r = a.ingest(unverified(foreign)).unwrap();
    assert_eq!(r.applied, 0);
    assert_eq!(r.rejected.len(), 2);
    for rej in &r.rejected {
        assert_eq!(
            rej.reason,
            RejectReason::WrongCluster {
                expected: a.cluster_id(),
                got: other.cluster_id()
            }
        );
        assert_eq!(rej.author, Some(other.node_id()));
    }
    let r = a
        .ingest_bundle(&other.export_since(&Default::default()).unwrap())
        .unwrap();
    assert_eq!(r.rejected.len(), 2);
    assert_eq!(stored(&a), before);

    // The other cluster's admin signing an op that names our cluster: unknown author.
    let forged = craft(
        &NodeKey::from_seed([1; 32]),
        a.cluster_id(),
        1,
        a.lamport() + 1,
        None,
        at(2),
        story_create("forged"),
    );
    let r = a.ingest(vec![forged.into_unverified()]).unwrap();
    assert!(matches!(single_rejection(&r), RejectReason::UnknownAuthor(_)));
    assert_eq!(stored(&a), before);
}

#[test]
fn ops_of_unknown_authors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b) = admin_and_member(dir.path(), 25);
    let mut stranger = RawAuthor::new([0x55; 32], a.cluster_id());
    let before = stored(&a);
    let op = stranger.next(a.lamport() + 1, at(2), story_create("s_1"));
    let r = a.ingest(vec![op.into_unverified()]).unwrap();
    assert_eq!(single_rejection(&r), &RejectReason::UnknownAuthor(stranger.id()));
    assert!(r.rejected[0].reason.to_string().contains("not a member"));
    // A stranger claiming the cluster's genesis is refused too.
    let fake = RawAuthor::new([0x56; 32], a.cluster_id()).next(
        1,
        at(2),
        Payload::Genesis {
            name: "test".into(),
            nonce: [0; 16],
        },
    );
    let r = a.ingest(vec![fake.into_unverified()]).unwrap();
    assert!(
        matches!(single_rejection(&r), RejectReason::Unauthorized(_)),
        "{r:?}"
    );
    assert_eq!(stored(&a), before);
    // An unknown node id that is not even a valid key cannot be added.
    let err = a
        .execute(
            at(3),
            Command::AddMember {
                node: huskies_core::NodeId::from_bytes([0; 32]),
                role: Role::Member,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(stored(&a), before);
}

#[test]
fn a_seq_gap_is_buffered_not_applied_until_it_fills() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = admin_and_member(dir.path(), 26);
    for i in 0..4 {
        add_story(&mut b, at(2), &format!("b_{i}"));
    }
    let ops = b.ops_since(&a.version_vector()).unwrap();
    assert_eq!(ops.len(), 4);
    let before = stored(&a);

    let r = a
        .ingest(unverified(vec![ops[3].clone(), ops[1].clone()]))
        .unwrap();
    assert_eq!((r.applied, r.buffered), (0, 2), "{r:?}");
    assert!(r.rejected.is_empty());
    assert_eq!(a.buffered_ops(), 2);
    assert_eq!(stored(&a), before, "buffered ops are not applied or stored");
    // Re-sending a buffered op does not buffer it twice.
    let r = a.ingest(unverified(vec![ops[3].clone()])).unwrap();
    assert_eq!(r.applied, 0);
    assert_eq!(a.buffered_ops(), 2);

    let r = a.ingest(unverified(vec![ops[0].clone()])).unwrap();
    assert_eq!(r.applied, 2, "op 1 and the buffered op 2: {r:?}");
    assert_eq!(a.buffered_ops(), 1);
    assert_eq!(a.version_vector().get(&b.node_id()), 2);
    let r = a.ingest(unverified(vec![ops[2].clone()])).unwrap();
    assert_eq!(r.applied, 2);
    assert_eq!(a.buffered_ops(), 0);
    assert_eq!(a.version_vector(), b.version_vector());
    assert_eq!(snapshot(&a, at(5)), snapshot(&b, at(5)));
}

#[test]
fn a_lamport_jump_beyond_the_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b) = admin_and_member(dir.path(), 27);
    let mut m = RawAuthor::new([0x4d; 32], a.cluster_id());
    a.execute(
        at(1),
        Command::AddMember {
            node: m.id(),
            role: Role::Member,
        },
    )
    .unwrap();
    let before = stored(&a);
    let local = a.lamport();
    let far = m.peek(local + MAX_LAMPORT_JUMP + 1, at(2), story_create("far"));
    let r = a.ingest(vec![far.into_unverified()]).unwrap();
    match single_rejection(&r) {
        RejectReason::LamportJump(j) => {
            assert_eq!(j.remote, local + MAX_LAMPORT_JUMP + 1);
            assert_eq!(j.local, local);
        }
        other => panic!("expected LamportJump, got {other:?}"),
    }
    let far = m.peek(u64::MAX, at(2), story_create("far"));
    assert!(matches!(
        single_rejection(&a.ingest(vec![far.into_unverified()]).unwrap()),
        RejectReason::LamportJump(_)
    ));
    assert_eq!(stored(&a), before);
    // Exactly at the bound is accepted.
    let edge = m.next(local + MAX_LAMPORT_JUMP, at(2), story_create("edge"));
    assert_eq!(a.ingest(vec![edge.into_unverified()]).unwrap().applied, 1);
    assert_eq!(a.lamport(), local + MAX_LAMPORT_JUMP);
    // A Lamport that does not increase along the author's chain is refused as well.
    let back = m.peek(local + 5, at(3), story_create("back"));
    assert!(matches!(
        single_rejection(&a.ingest(vec![back.into_unverified()]).unwrap()),
        RejectReason::LamportNotIncreasing { .. }
    ));
    // The local clock continues from the jump.
    let rc = a
        .execute(
            at(4),
            Command::UpdateStory {
                id: sid("1_s"),
                field: StoryField::Name("n".into()),
            },
        )
        .unwrap();
    assert_eq!(rc.lamport, local + MAX_LAMPORT_JUMP + 1);
}

#[test]
fn oversized_payloads_are_refused_at_signing_and_at_decode() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _b) = admin_and_member(dir.path(), 28);
    let before = stored(&a);
    let huge = "x".repeat(MAX_BODY_BYTES + 1);

    // Locally: refused with a clear argument error, nothing written.
    let err = a
        .execute(
            at(2),
            Command::AddStory {
                id: sid("big"),
                name: "big".into(),
                body: Some(huge.clone()),
                depends_on: vec![],
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(err.to_string().contains("limit"), "{err}");
    let err = a
        .execute(
            at(2),
            Command::UpdateStory {
                id: sid("1_s"),
                field: StoryField::Name("n".repeat(5000)),
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert_eq!(stored(&a), before);

    // At signing.
    let key = NodeKey::from_seed([9; 32]);
    let content = OpContent {
        version: OP_FORMAT_VERSION,
        cluster: a.cluster_id(),
        author: key.node_id(),
        seq: 1,
        lamport: 1,
        prev: None,
        wall: at(2),
        payload: Payload::StoryCreate {
            story: sid("big"),
            name: "big".into(),
            body: Some(huge),
            depends_on: vec![],
        },
    };
    let err = SignedOp::sign(content.clone(), &key).unwrap_err();
    assert!(matches!(err, DecodeError::Invalid(_)), "{err:?}");

    // At decode: the same content framed by hand (with any signature) is refused before
    // signatures are looked at...
    let body = postcard::to_allocvec(&content).unwrap();
    let mut framed = (body.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed.extend_from_slice(&[0u8; 64]);
    assert!(framed.len() < MAX_OP_BYTES);
    let err = UnverifiedOp::decode(&framed).unwrap_err();
    assert!(matches!(err, DecodeError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("limit"), "{err}");
    // ...and so is anything over the op size limit, whatever it holds.
    let mut over = ((MAX_OP_BYTES - 68 + 1) as u32).to_le_bytes().to_vec();
    over.resize(MAX_OP_BYTES + 1, 0);
    assert_eq!(
        UnverifiedOp::decode(&over).unwrap_err(),
        DecodeError::TooLarge(MAX_OP_BYTES + 1)
    );
    // In a bundle, the framed op is a Malformed rejection.
    let mut bundle = b"HSKB\x01".to_vec();
    bundle.extend_from_slice(&1u32.to_le_bytes());
    bundle.extend_from_slice(&(framed.len() as u32).to_le_bytes());
    bundle.extend_from_slice(&framed);
    let r = a.ingest_bundle(&bundle).unwrap();
    assert!(matches!(
        single_rejection(&r),
        RejectReason::Malformed(DecodeError::Invalid(_))
    ));
    assert_eq!(stored(&a), before);
    assert!(encode_bundle(std::iter::empty()).len() == 9);
}

#[test]
fn only_admins_add_members() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = admin_and_member(dir.path(), 29);
    let mut rng = TestRng::new(290);
    let mut outsider_node = outsider(&dir.path().join("o"), a.cluster_id(), &mut rng, at(0));
    push(&a, &mut outsider_node);
    let newcomer = NodeKey::from_seed([0x77; 32]).node_id();

    // Locally: an outsider and a plain member are refused, and nothing is written.
    for n in [&mut outsider_node, &mut b] {
        let before = stored(n);
        let err = n
            .execute(
                at(2),
                Command::AddMember {
                    node: newcomer,
                    role: Role::Admin,
                },
            )
            .unwrap_err();
        assert!(
            matches!(&err, Error::Rejected(RejectReason::Unauthorized(_))),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Unauthorized);
        assert!(err.to_string().contains("admin"), "{err}");
        assert_eq!(stored(n), before);
    }
    // An outsider cannot write anything at all.
    let err = outsider_node
        .execute(
            at(2),
            Command::Heartbeat {
                label: "o".into(),
                address: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);

    // At merge: a member's signed MemberAdd is refused on every replica.
    let mut m = RawAuthor::new([0x4d; 32], a.cluster_id());
    a.execute(
        at(3),
        Command::AddMember {
            node: m.id(),
            role: Role::Member,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    let before_a = stored(&a);
    let add = m.next(
        a.lamport() + 1,
        at(4),
        Payload::MemberAdd {
            node: newcomer,
            role: Role::Admin,
        },
    );
    for n in [&mut a, &mut b] {
        let r = n.ingest(vec![add.clone().into_unverified()]).unwrap();
        assert!(
            matches!(single_rejection(&r), RejectReason::Unauthorized(why) if why.contains("admin")),
            "{r:?}"
        );
        assert!(n.members().iter().all(|x| x.node != newcomer));
    }
    assert_eq!(stored(&a), before_a);
    // ...and so is a removal by a member.
    // (M's refused op did not advance its chain: this is M's seq 1 again.)
    let m = RawAuthor::new([0x4d; 32], a.cluster_id());
    let remove = m.peek(
        a.lamport() + 1,
        at(4),
        Payload::MemberRemove {
            node: a.node_id(),
            cutoff_seq: 0,
        },
    );
    assert!(matches!(
        single_rejection(&a.ingest(vec![remove.into_unverified()]).unwrap()),
        RejectReason::Unauthorized(_)
    ));
    assert_eq!(stored(&a), before_a);
}

#[test]
fn the_out_of_order_buffer_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = admin_and_member(dir.path(), 33);
    for i in 0..5 {
        add_story(&mut b, at(2), &format!("b_{i}"));
    }
    let mut rng = TestRng::new(330);
    let mut small = Node::init(
        &dir.path().join("small"),
        huskies_core::InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut rng,
        at(0),
        huskies_core::NodeConfig {
            max_buffered_ops: 2,
            ..config()
        },
    )
    .unwrap();
    push(&a, &mut small);
    let ops = b.ops_since(&small.version_vector()).unwrap();
    assert_eq!(ops.len(), 5);
    let before = stored(&small);
    let r = small.ingest(unverified(ops[2..].to_vec())).unwrap();
    assert_eq!((r.applied, r.buffered), (0, 2), "{r:?}");
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].reason, RejectReason::BufferFull);
    assert_eq!(small.buffered_ops(), 2);
    assert_eq!(stored(&small), before);
    // The refused op is simply sent again later.
    push(&b, &mut small);
    assert_eq!(small.buffered_ops(), 0);
    assert_eq!(small.version_vector(), b.version_vector());
}

#[test]
fn local_stories_need_a_name_and_live_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(test_seed());
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let before = a.version_vector();
    for name in ["", "   "] {
        let err = a.execute(at(1), Command::add_story(sid("s1"), name)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{name:?}: {err}");
    }
    let err = a
        .execute(
            at(1),
            Command::add_story(sid("s1"), "One").depends_on([sid("nope")]),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(err.to_string().contains("nope"), "{err}");
    let err = a
        .execute(
            at(1),
            Command::add_story(sid("s1"), "One").depends_on([sid("s1")]),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(a.version_vector(), before, "a refused command signs nothing");
    // A dependency created earlier in the same group counts; a deleted one does not.
    let results = a
        .execute_group(
            at(2),
            vec![
                Command::add_story(sid("base"), "Base").into(),
                Command::add_story(sid("s1"), "One")
                    .depends_on([sid("base")])
                    .into(),
                Command::add_story(sid("gone"), "Gone").into(),
                Command::delete_story(sid("gone")),
            ],
        )
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let err = a
        .execute(
            at(3),
            Command::add_story(sid("s2"), "Two").depends_on([sid("gone")]),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    // Updates are held to the same rules.
    let err = a
        .execute(at(3), Command::update(sid("s1"), StoryField::Name(" ".into())))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    let err = a
        .execute(
            at(3),
            Command::update(sid("s1"), StoryField::DependsOn(vec![sid("nope")])),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[test]
fn peer_ops_with_unknown_dependencies_or_empty_names_are_accepted() {
    // Whether a dependency exists may depend on arrival order; an op's validity must not.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(test_seed());
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut peer = RawAuthor::new(rng.seed32(), a.cluster_id());
    a.execute(at(1), Command::add_member(peer.id(), Role::Member))
        .unwrap();
    let op = peer.next(
        a.lamport() + 1,
        at(2),
        Payload::StoryCreate {
            story: sid("s1"),
            name: String::new(),
            body: None,
            depends_on: vec![sid("not_here_yet")],
        },
    );
    let report = a.ingest(vec![op.into_unverified()]).unwrap();
    assert_eq!((report.applied, report.rejected.len()), (1, 0), "{report:?}");
    let story = a.story(&sid("s1"), at(3)).unwrap();
    assert_eq!(
        (story.name.as_str(), story.depends_on.clone()),
        ("", vec![sid("not_here_yet")])
    );
}
