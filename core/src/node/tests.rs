//! Migration of whole homes from older store formats.

use rand_chacha::rand_core::SeedableRng;

use super::*;
use crate::execution::ExecutionEvent;
use crate::home::STORE_DIR;
use crate::id::StoryId;
use crate::journal::encode_entry;
use crate::pipeline::PipelineEvent;
use crate::projection::StoryRecord;
use crate::record::{decode_story, encode_story_v2};
use crate::view::{Story, Transition};

fn now() -> Timestamp {
    Timestamp::from_millis(1_763_700_000_000)
}

fn config() -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    }
}

/// Every story key and its record, after folding the journal.
fn stored(node: &Node) -> Vec<(Vec<u8>, StoryRecord)> {
    node.journal.drain().unwrap();
    node.db
        .scan_prefix(key::STORIES)
        .map(|kv| {
            let (k, v) = kv.unwrap();
            (k.to_vec(), decode_story(&v).unwrap())
        })
        .collect()
}

/// What a user sees of every story.
fn seen(node: &Node) -> Vec<(Story, Vec<Transition>)> {
    node.stories(None, now())
        .unwrap()
        .into_iter()
        .map(|s| {
            let history = node.history(&s.id).unwrap();
            (s, history)
        })
        .collect()
}

/// Rewrites a closed home's story values as format 1 or 2 wrote them; for format 2 the
/// records also go into an unfolded journal entry, as a crash before folding leaves them.
fn downgrade(root: &Path, format: u32) {
    let db = SledStore::open(&root.join(STORE_DIR)).unwrap();
    let mut batch = crate::storage::SledBatch::default();
    let mut entry = Vec::new();
    for kv in db.scan_prefix(key::STORIES) {
        let (k, v) = kv.unwrap();
        let rec = decode_story(&v).unwrap();
        let old = if format == 1 {
            codec::encode(&rec)
        } else {
            encode_story_v2(&rec)
        };
        if format == 2 {
            let id = key::story_from_key(&k).unwrap();
            entry.push((id, old.clone()));
        }
        batch.insert(&k, &old);
    }
    if format == 2 {
        batch.insert(&key::journal(0), &encode_entry(&entry));
    }
    batch.insert(key::META_FORMAT, &codec::encode(&format));
    storage::commit(&db, batch).unwrap();
}

fn opens_after_migration_from(format: u32) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(format));
    let mut node = Node::init(
        &root,
        InitMode::NewCluster { name: "t".into() },
        &mut rng,
        now(),
        config(),
    )
    .unwrap();
    let id = |s: &str| StoryId::new(s).unwrap();
    let add = |id: StoryId| Command::AddStory {
        id,
        name: "Fix the login redirect loop when a session has expired".into(),
        body: Some("Users bounce between /login and /home.".into()),
        depends_on: vec![],
    };
    let done = id("1_done");
    node.execute(now(), add(done.clone())).unwrap();
    for event in [
        PipelineEvent::DepsMet,
        PipelineEvent::GatesStarted,
        PipelineEvent::GatesPassed {
            branch: "feature/1".into(),
            commits: std::num::NonZeroU32::new(2).unwrap(),
        },
        PipelineEvent::MergeSucceeded {
            commit: "abc123".into(),
        },
        PipelineEvent::Accepted,
    ] {
        node.execute(
            now(),
            Command::Event {
                id: done.clone(),
                event,
            },
        )
        .unwrap();
    }
    let claimed = id("2_claimed");
    node.execute(now(), add(claimed.clone())).unwrap();
    node.execute(
        now(),
        Command::Claim {
            id: claimed.clone(),
            ttl_secs: 600,
        },
    )
    .unwrap();
    node.execute(
        now(),
        Command::Execution {
            id: claimed,
            event: ExecutionEvent::SpawnRequested {
                agent: "coder".into(),
            },
        },
    )
    .unwrap();
    let gone = id("3_gone");
    node.execute(now(), add(gone.clone())).unwrap();
    node.execute(now(), Command::DeleteStory { id: gone }).unwrap();
    let (records, views) = (stored(&node), seen(&node));
    assert_eq!(records.len(), 3);
    drop(node);

    downgrade(&root, format);
    let node = Node::open(&root, config()).unwrap();
    let format: u32 = storage::get(&node.db, key::META_FORMAT, "format")
        .unwrap()
        .unwrap();
    assert_eq!(format, STORE_FORMAT_VERSION);
    assert_eq!(seen(&node), views);
    assert_eq!(stored(&node), records);
    let report = node.verify(|_| {}).unwrap();
    assert!(report.ok, "{:?}", report.problems);
}

#[test]
fn a_format_2_home_opens_after_migration() {
    opens_after_migration_from(2);
}

#[test]
fn a_format_1_home_opens_after_migration() {
    opens_after_migration_from(1);
}

#[test]
fn a_newer_store_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    drop(
        Node::init(
            &root,
            InitMode::Join {
                cluster: ClusterId::from_bytes([1; 32]),
            },
            &mut rng,
            now(),
            config(),
        )
        .unwrap(),
    );
    let db = SledStore::open(&root.join(STORE_DIR)).unwrap();
    let mut batch = crate::storage::SledBatch::default();
    batch.insert(key::META_FORMAT, &codec::encode(&(STORE_FORMAT_VERSION + 1)));
    db.apply(batch).unwrap();
    db.flush().unwrap();
    drop(db);
    let err = Node::open(&root, config()).unwrap_err();
    assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
    assert!(err.to_string().contains("not supported"), "{err}");
}

/// A format-4 home (member records with the newest role only) opens as format 5: the open
/// that migrates rebuilds, which fills in every role given, and nothing else changes.
#[test]
fn a_format_4_home_opens_with_every_role_given() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("home");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut node = Node::init(
        &root,
        InitMode::NewCluster { name: "t".into() },
        &mut rng,
        now(),
        config(),
    )
    .unwrap();
    let other_key = crate::key::NodeKey::from_seed([7; 32]);
    let other = other_key.node_id();
    node.execute(
        now(),
        Command::AddMember {
            node: other,
            role: crate::payload::Role::Admin,
        },
    )
    .unwrap();
    // The other admin makes itself a plain member (no command changes a member's role).
    let content = crate::op::OpContent {
        version: crate::op::OP_FORMAT_VERSION,
        cluster: node.state.cluster.id,
        author: other,
        seq: 1,
        lamport: 100,
        prev: None,
        wall: now(),
        payload: Payload::MemberAdd {
            node: other,
            role: crate::payload::Role::Member,
        },
    };
    let demote = crate::op::SignedOp::sign(content, &other_key).unwrap();
    let report = node.ingest(vec![demote.into_unverified()]).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let members = node.members();
    let roles = node.state.members[&other].roles.clone();
    assert_eq!(roles.len(), 2, "both roles given are kept");
    drop(node);

    // Format 4: the newest role only, in the layout postcard gives `Option<Lww<Role>>`.
    let db = SledStore::open(&root.join(STORE_DIR)).unwrap();
    let mut batch = crate::storage::SledBatch::default();
    for kv in db.scan_prefix(key::MEMBERS) {
        let (k, v) = kv.unwrap();
        let mut rec: crate::projection::MemberRecord = codec::decode(&v, "member").unwrap();
        rec.roles.drain(..rec.roles.len().saturating_sub(1));
        batch.insert(&k, &codec::encode(&rec));
    }
    batch.insert(key::META_FORMAT, &codec::encode(&4u32));
    storage::commit(&db, batch).unwrap();
    drop(db);

    let node = Node::open(&root, config()).unwrap();
    let format: u32 = storage::get(&node.db, key::META_FORMAT, "format")
        .unwrap()
        .unwrap();
    assert_eq!(format, STORE_FORMAT_VERSION);
    assert!(!node.state.rebuild_needed, "the open rebuilt");
    assert_eq!(node.state.members[&other].roles, roles, "every role given, again");
    assert_eq!(node.members(), members);
    let report = node.verify(|_| {}).unwrap();
    assert!(report.ok, "{:?}", report.problems);
}
