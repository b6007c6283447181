//! Helpers shared by the integration tests: a seeded RNG, cluster set-up, syncing and
//! projection snapshots.

#![allow(dead_code)]

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex};

use huskies_core::{
    Command, Event, ForkInfo, InitMode, Lease, Member, Node, NodeConfig, NodeId, NodeInfo, OpContent, OpId,
    Payload, PipelineEvent, Role, SignedOp, Story, StoryId, Subscription, Timestamp, Transition,
    UnverifiedOp, VersionVector, OP_FORMAT_VERSION,
};
use rand_core::{CryptoRng, RngCore};

/// A fixed point in time all tests start from (2025-11-21).
pub const T0_MS: i64 = 1_763_700_000_000;

/// `T0 + secs`.
pub fn at(secs: u64) -> Timestamp {
    Timestamp::from_millis(T0_MS).add_secs(secs)
}

/// A story id from a literal.
pub fn sid(s: &str) -> StoryId {
    StoryId::new(s).expect("valid story id")
}

/// A non-zero commit count.
pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// A small deterministic RNG (SplitMix64). It claims `CryptoRng` so it can be handed to
/// `Node::init` and key generation: test keys only, never for real use.
#[derive(Clone, Debug)]
pub struct TestRng(u64);

impl TestRng {
    /// An RNG from a seed.
    pub fn new(seed: u64) -> Self {
        TestRng(seed)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent / 100`.
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// 32 random bytes.
    pub fn seed32(&mut self) -> [u8; 32] {
        let mut s = [0u8; 32];
        self.fill_bytes(&mut s);
        s
    }
}

impl RngCore for TestRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl CryptoRng for TestRng {}

/// The seed for a randomized test: `HUSKIES_TEST_SEED` if set, else a fresh one. Printed
/// so a failure can be replayed.
pub fn test_seed() -> u64 {
    let seed = match std::env::var("HUSKIES_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("HUSKIES_TEST_SEED must be a u64"),
        Err(_) => {
            let mut b = [0u8; 8];
            rand_core::OsRng.fill_bytes(&mut b);
            u64::from_le_bytes(b)
        }
    };
    eprintln!("seed = {seed}");
    seed
}

/// A node config for tests: one verify thread (the machine is small).
pub fn config() -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    }
}

/// A new cluster whose admin is the returned node, created at `now`.
pub fn new_cluster(path: &Path, rng: &mut TestRng, now: Timestamp) -> Node {
    Node::init(
        path,
        InitMode::NewCluster { name: "test".into() },
        rng,
        now,
        config(),
    )
    .expect("init new cluster")
}

/// A node initialised to join `admin`'s cluster, admitted by `admin` with `role` and
/// brought up to date with the admin's ops.
pub fn join(path: &Path, admin: &mut Node, role: Role, rng: &mut TestRng, now: Timestamp) -> Node {
    let mut node = Node::init(
        path,
        InitMode::Join {
            cluster: admin.cluster_id(),
        },
        rng,
        now,
        config(),
    )
    .expect("init joining node");
    admin
        .execute(
            now,
            Command::AddMember {
                node: node.node_id(),
                role,
            },
        )
        .expect("admin adds member");
    push(admin, &mut node);
    node
}

/// A node initialised to join `cluster` but not admitted by anyone.
pub fn outsider(path: &Path, cluster: huskies_core::ClusterId, rng: &mut TestRng, now: Timestamp) -> Node {
    Node::init(path, InitMode::Join { cluster }, rng, now, config()).expect("init outsider")
}

/// Sends `from` every op `to` lacks (by version vector) as a bundle; returns how many
/// were applied. Panics on rejections: use [`push_report`] to inspect them.
pub fn push(from: &Node, to: &mut Node) -> usize {
    let report = push_report(from, to);
    assert!(
        report.rejected.is_empty(),
        "unexpected rejections syncing {:?} -> {:?}: {:?}",
        from.node_id(),
        to.node_id(),
        report.rejected
    );
    report.applied
}

/// Like [`push`], returning the ingest report.
pub fn push_report(from: &Node, to: &mut Node) -> huskies_core::IngestReport {
    let bundle = from.export_since(&to.version_vector()).expect("export");
    to.ingest_bundle(&bundle).expect("ingest bundle")
}

/// Sends ops both ways until neither side learns anything.
pub fn sync(a: &mut Node, b: &mut Node) {
    for _ in 0..4 {
        let n = push(a, b) + push(b, a);
        if n == 0 {
            return;
        }
    }
}

/// Syncs every pair until all are equal.
pub fn sync_all(nodes: &mut [Node]) {
    for _ in 0..3 {
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                if i != j {
                    let (a, b) = pair(nodes, i, j);
                    push(a, b);
                }
            }
        }
    }
}

/// Two distinct mutable elements.
pub fn pair<T>(v: &mut [T], i: usize, j: usize) -> (&mut T, &mut T) {
    assert_ne!(i, j);
    if i < j {
        let (l, r) = v.split_at_mut(j);
        (&mut l[i], &mut r[0])
    } else {
        let (l, r) = v.split_at_mut(i);
        (&mut r[0], &mut l[j])
    }
}

/// Ops as unverified, ready for `ingest`.
pub fn unverified(ops: Vec<SignedOp>) -> Vec<UnverifiedOp> {
    ops.into_iter().map(SignedOp::into_unverified).collect()
}

/// Everything the projection exposes, for before/after and replica comparisons.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Version vector.
    pub vv: VersionVector,
    /// Live stories.
    pub stories: Vec<Story>,
    /// Each live story's history.
    pub histories: Vec<(StoryId, Vec<Transition>)>,
    /// Members.
    pub members: Vec<Member>,
    /// Presence.
    pub nodes: Vec<NodeInfo>,
    /// Merge lock.
    pub merge_lock: Option<Lease>,
    /// Equivocations.
    pub forks: Vec<ForkInfo>,
}

/// The story without what only its node knows: whether a claim is confirmed depends on
/// which heartbeats a node holds and on who is asking (a node does not wait for itself),
/// so replicas that hold the same ops may answer differently.
pub fn replicated(mut s: huskies_core::Story) -> huskies_core::Story {
    s.claim_confirmed = false;
    s
}

/// Takes a [`Snapshot`] at `now`.
pub fn snapshot<S: huskies_core::Store>(node: &Node<S>, now: Timestamp) -> Snapshot {
    let stories = node
        .stories(None, now)
        .expect("stories")
        .into_iter()
        .map(replicated)
        .collect::<Vec<_>>();
    let histories = stories
        .iter()
        .map(|s| (s.id.clone(), node.history(&s.id).expect("history")))
        .collect();
    Snapshot {
        vv: node.version_vector(),
        stories,
        histories,
        members: node.members(),
        nodes: node.nodes(now).expect("nodes"),
        merge_lock: node.merge_lock(now).expect("merge lock"),
        forks: node.forks().expect("forks"),
    }
}

/// Adds a story with a default name.
pub fn add_story(node: &mut Node, now: Timestamp, id: &str) {
    node.execute(
        now,
        Command::AddStory {
            id: sid(id),
            name: format!("story {id}"),
            body: None,
            depends_on: vec![],
        },
    )
    .expect("add story");
}

/// Applies a pipeline event, panicking if refused.
pub fn event(node: &mut Node, now: Timestamp, id: &str, ev: PipelineEvent) {
    node.execute(
        now,
        Command::Event {
            id: sid(id),
            event: ev,
        },
    )
    .unwrap_or_else(|e| panic!("event on {id} refused: {e}"));
}

/// Hand-crafts and signs an op of `key` (not a node: a raw author key).
#[allow(clippy::too_many_arguments)]
pub fn craft(
    key: &huskies_core::NodeKey,
    cluster: huskies_core::ClusterId,
    seq: u64,
    lamport: u64,
    prev: Option<OpId>,
    wall: Timestamp,
    payload: Payload,
) -> SignedOp {
    SignedOp::sign(
        OpContent {
            version: OP_FORMAT_VERSION,
            cluster,
            author: key.node_id(),
            seq,
            lamport,
            prev,
            wall,
            payload,
        },
        key,
    )
    .expect("sign crafted op")
}

/// A hand-written author (a raw key) with its own chain, for crafting ops.
pub struct RawAuthor {
    /// The key's seed.
    pub seed: [u8; 32],
    /// Its key.
    pub key: huskies_core::NodeKey,
    /// The cluster it signs for.
    pub cluster: huskies_core::ClusterId,
    /// Last seq signed.
    pub seq: u64,
    /// Id of the last op signed.
    pub prev: Option<OpId>,
}

impl RawAuthor {
    /// A raw author from a seed.
    pub fn new(seed: [u8; 32], cluster: huskies_core::ClusterId) -> Self {
        RawAuthor {
            seed,
            key: huskies_core::NodeKey::from_seed(seed),
            cluster,
            seq: 0,
            prev: None,
        }
    }

    /// A copy of this author's chain state continuing after `op` (one of its ops), so a
    /// test can sign a second branch: equivocation.
    pub fn after(&self, op: &SignedOp) -> RawAuthor {
        RawAuthor {
            seed: self.seed,
            key: huskies_core::NodeKey::from_seed(self.seed),
            cluster: self.cluster,
            seq: op.content().seq,
            prev: Some(op.id()),
        }
    }

    /// Its node id.
    pub fn id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The next op on its chain (without advancing it).
    pub fn peek(&self, lamport: u64, wall: Timestamp, payload: Payload) -> SignedOp {
        craft(
            &self.key,
            self.cluster,
            self.seq + 1,
            lamport,
            self.prev,
            wall,
            payload,
        )
    }

    /// Signs the next op on its chain and advances it.
    pub fn next(&mut self, lamport: u64, wall: Timestamp, payload: Payload) -> SignedOp {
        let op = self.peek(lamport, wall, payload);
        self.seq += 1;
        self.prev = Some(op.id());
        op
    }
}

/// Subscribes to `node`'s events, collecting them (keep the subscription alive).
pub fn collect_events(node: &Node) -> (Arc<Mutex<Vec<Event>>>, Subscription) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let sub = node.subscribe(move |e| sink.lock().unwrap().push(e.clone()));
    (seen, sub)
}

/// Copies a (closed) home directory, e.g. to damage or to restore a stale copy.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A new cluster of three nodes (an admin and two members), all in sync.
pub fn three_nodes(dir: &std::path::Path, seed: u64) -> Vec<Node> {
    let mut rng = TestRng::new(seed);
    let mut a = new_cluster(&dir.join("a"), &mut rng, at(0));
    let b = join(&dir.join("b"), &mut a, Role::Member, &mut rng, at(0));
    let c = join(&dir.join("c"), &mut a, Role::Member, &mut rng, at(0));
    let mut nodes = vec![a, b, c];
    sync_all(&mut nodes);
    nodes
}

/// Runs one sync session between two nodes until neither has anything to send.
pub fn session_sync(a: &mut Node, b: &mut Node) {
    use huskies_core::sync::{Session, SessionConfig, SessionOptions};
    let now = at(5);
    let mut sa = Session::new(
        a,
        now,
        [1; 32],
        SessionOptions::default(),
        SessionConfig::default(),
    );
    let mut sb = Session::new(
        b,
        now,
        [2; 32],
        SessionOptions::default(),
        SessionConfig::default(),
    );
    for _ in 0..100 {
        let mut moved = false;
        while let Some(f) = sa.poll_transmit(a, now).unwrap() {
            sb.handle_frame(b, now, &f).unwrap();
            moved = true;
        }
        while let Some(f) = sb.poll_transmit(b, now).unwrap() {
            sa.handle_frame(a, now, &f).unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("sessions never went quiet");
}

/// What must not change when input is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Stored {
    pub snapshot: Snapshot,
    pub lamport: u64,
    pub ops: usize,
}

/// What a node shows: its snapshot, clock and op count.
pub fn stored(n: &Node) -> Stored {
    Stored {
        snapshot: snapshot(n, at(1000)),
        lamport: n.lamport(),
        ops: n.log(None).unwrap().len(),
    }
}

/// Admin A with one story, and member B that has written ops A has not seen.
pub fn admin_and_member(dir: &std::path::Path, seed: u64) -> (Node, Node) {
    let mut rng = TestRng::new(seed);
    let mut a = new_cluster(&dir.join("a"), &mut rng, at(0));
    let mut b = join(&dir.join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_s");
    sync(&mut a, &mut b);
    (a, b)
}

/// The ids of a node's live stories at `now`, sorted.
pub fn live_ids(node: &Node, now: Timestamp) -> Vec<StoryId> {
    node.stories(None, now)
        .expect("stories")
        .into_iter()
        .map(|s| s.id)
        .collect()
}
