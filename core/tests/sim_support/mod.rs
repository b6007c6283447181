//! A deterministic network simulator for the sans-IO sync sessions.
//!
//! Real nodes (real sled homes in a temporary directory) talk through real
//! [`Session`]s; only the wire, the clock and the scheduler are simulated. Everything
//! random (delays, loss, duplication, reordering, partitions, restarts, the workload,
//! the handshake challenges and even the node keys) comes from one seeded ChaCha RNG and
//! every collection iterated is ordered, so a seed replays exactly.
//!
//! What it models:
//! - a clock in milliseconds that jumps from one event to the next (frame deliveries,
//!   session timers, reconnect attempts, scheduled actions); each node sees it with its
//!   own fixed skew;
//! - links (a random connected topology): at most one connection per link, i.e. a pair
//!   of sessions; frames travel with random delay, and may be lost, duplicated or
//!   delivered out of order; a frame for a connection that is gone is discarded;
//! - a session that fails (`Err` from any call) sends its last frames (the `Refuse`) to
//!   its peer, and the connection is closed at both ends; the link reconnects after a
//!   jittered exponential backoff, as the daemon does;
//! - connection resets (a frame never arrives: the connection closes at both ends);
//! - partitions (sets of links cut for a while: their connections are dropped, and
//!   re-created once healed) and node restarts (the `Node` and its sessions are dropped,
//!   gracefully or abruptly, and the home is reopened with [`Node::open`] later);
//! - node stalls (a node neither reads, writes nor runs timers for a few seconds while its
//!   peers' frames pile up: backpressure and the unacknowledged window);
//! - late joiners (admitted during the run: an empty store syncs first from the admin with
//!   `expect_peer`, others refuse it until they learn of the admission) and the removal of
//!   a member (it keeps running; the others cut it off and void its later ops);
//! - a workload of random commands executed at random times on random nodes.
//!
//! At the end everything heals, the wire turns clean, and the run goes on until every
//! member holds the same ops with nothing in flight; then every projection must match and
//! every store must verify.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::path::PathBuf;

use huskies_core::sync::{
    Message, RefuseCode, Session, SessionConfig, SessionEvent, SessionOptions, SyncError,
};
use huskies_core::{
    Command, ErrorKind, ExecutionEvent, ForkInfo, InitMode, Lease, Member, Node, NodeConfig, NodeId,
    NodeInfo, OpId, PipelineEvent, Role, Stage, StageKind, Story, StoryField, StoryId, Timestamp, Transition,
    VersionVector,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Simulated time 0, as wall-clock milliseconds (2025-11-21).
pub const BASE_MS: i64 = 1_763_700_000_000;

/// The seeds a test case runs: `HUSKIES_SIM_SEED` alone if set, else `fixed` plus one
/// fresh random seed.
pub fn seeds(fixed: &[u64]) -> Vec<u64> {
    if let Ok(s) = std::env::var("HUSKIES_SIM_SEED") {
        return vec![s.trim().parse().expect("HUSKIES_SIM_SEED must be a u64")];
    }
    let mut v = fixed.to_vec();
    v.push(rand::random());
    v
}

/// What the wire does to frames. Probabilities are per mille, per frame.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Shortest one-way delay.
    pub min_delay_ms: u64,
    /// Longest one-way delay (of an in-order frame).
    pub max_delay_ms: u64,
    /// A frame vanishes.
    pub loss: u32,
    /// A frame arrives twice.
    pub dup: u32,
    /// A frame ignores FIFO order (it may overtake, or be overtaken by, later frames).
    pub reorder: u32,
    /// Instead of a frame, the connection resets (both ends just see it close). This is
    /// not a session failure: a clean network has resets too.
    pub reset: u32,
}

impl Faults {
    /// In order, exactly once, after a short delay: what TCP gives.
    pub fn clean() -> Faults {
        Faults {
            min_delay_ms: 1,
            max_delay_ms: 40,
            loss: 0,
            dup: 0,
            reorder: 0,
            reset: 0,
        }
    }

    /// Nothing but delay.
    pub fn is_clean(&self) -> bool {
        self.loss == 0 && self.dup == 0 && self.reorder == 0
    }
}

/// One simulation's shape.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Nodes (node 0 creates the cluster).
    pub nodes: usize,
    /// Workload commands, spread over `workload_ms`.
    pub commands: usize,
    /// How long the workload runs, in simulated ms.
    pub workload_ms: u64,
    /// The wire while the workload runs (it is clean while settling).
    pub faults: Faults,
    /// Partition episodes during the workload.
    pub partitions: usize,
    /// Node restarts during the workload.
    pub restarts: usize,
    /// Node stalls during the workload (up to 8 s: a long GC pause, a slow disk): the
    /// node neither reads nor writes nor runs its timers, its peers' frames pile up.
    pub freezes: usize,
    /// Nodes (the last ones) that the admin admits only during the workload: they start
    /// with an empty store and learn the cluster through a session with the admin
    /// (`expect_peer`), and other nodes refuse them until they learn of the admission.
    pub late_joiners: usize,
    /// Members the admin removes during the workload (never the admin). A removed node
    /// keeps running; the others cut it off, void its later ops, and the final comparison
    /// covers the remaining members only.
    pub removals: usize,
    /// Percent chance of each link beyond a random spanning tree (100: full mesh).
    pub extra_links_pct: u32,
    /// Each node's clock is off by up to this much.
    pub clock_skew_ms: i64,
    /// Session limits. `None`: drawn from the seed (small frames and windows, so that
    /// batching and backpressure are exercised, or the defaults).
    pub session: Option<SessionConfig>,
}

impl Scenario {
    /// A lossy, duplicating, reordering network with partitions and restarts.
    pub fn chaos() -> Scenario {
        Scenario {
            nodes: 6,
            commands: 300,
            workload_ms: 150_000,
            faults: Faults {
                min_delay_ms: 1,
                max_delay_ms: 250,
                loss: 10,
                dup: 10,
                reorder: 50,
                reset: 3,
            },
            partitions: 5,
            restarts: 4,
            freezes: 4,
            late_joiners: 1,
            removals: 0,
            extra_links_pct: 40,
            clock_skew_ms: 3_000,
            session: None,
        }
    }

    /// A clean network (TCP-like) with partitions and restarts: no session may fail but
    /// for refusing a node whose admission it has not seen yet.
    pub fn clean() -> Scenario {
        Scenario {
            faults: Faults {
                min_delay_ms: 1,
                max_delay_ms: 150,
                reset: 2,
                ..Faults::clean()
            },
            ..Scenario::chaos()
        }
    }

    /// A scenario drawn from `seed`: 5 to 7 nodes, up to two late joiners, fault rates
    /// from none to harsh, more or fewer partitions and restarts, sparse to full meshes.
    pub fn drawn(seed: u64) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x00d1_ce5e_ed00);
        let harsh = rng.gen_bool(0.5);
        Scenario {
            nodes: rng.gen_range(5..=7),
            commands: rng.gen_range(200..=400),
            workload_ms: rng.gen_range(60_000..=240_000),
            faults: Faults {
                min_delay_ms: rng.gen_range(1..=20),
                max_delay_ms: rng.gen_range(20..=600),
                loss: if harsh {
                    rng.gen_range(5..=30)
                } else {
                    rng.gen_range(0..=5)
                },
                dup: if harsh {
                    rng.gen_range(5..=30)
                } else {
                    rng.gen_range(0..=5)
                },
                reorder: rng.gen_range(0..=150),
                reset: rng.gen_range(0..=5),
            },
            partitions: rng.gen_range(0..=10),
            restarts: rng.gen_range(0..=8),
            freezes: rng.gen_range(0..=6),
            late_joiners: rng.gen_range(0..=2),
            removals: usize::from(rng.gen_bool(0.4)),
            extra_links_pct: rng.gen_range(0..=100),
            clock_skew_ms: rng.gen_range(0..=10_000),
            session: None,
        }
    }
}

/// Counters, printed after each run.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Frames handed to the wire.
    pub frames_sent: u64,
    /// Frames delivered to a live connection.
    pub frames_delivered: u64,
    /// Frames that arrived for a connection that was gone.
    pub frames_stale: u64,
    /// Frames lost.
    pub frames_lost: u64,
    /// Extra copies.
    pub frames_duplicated: u64,
    /// Frames sent out of order.
    pub frames_reordered: u64,
    /// `Ops` frames sent.
    pub ops_frames: u64,
    /// Ops carried in them.
    pub ops_carried: u64,
    /// Connections opened.
    pub connections: u64,
    /// Handshakes completed (per side).
    pub established: u64,
    /// Session failures, by reason.
    pub failures: BTreeMap<&'static str, u64>,
    /// Commands committed.
    pub commands_ok: u64,
    /// Commands refused, by error kind.
    pub commands_refused: BTreeMap<&'static str, u64>,
    /// Restarts.
    pub restarts: u64,
    /// Partition episodes.
    pub partitions: u64,
    /// Ops a receiver refused (and got again later).
    pub rejected: u64,
    /// Connections reset by the wire.
    pub resets: u64,
    /// Node stalls.
    pub freezes: u64,
    /// Members removed.
    pub removals: u64,
    /// Bytes of every frame handed to the wire.
    pub frame_bytes: u64,
}

/// One `Ops` frame put on the wire (recorded when [`Sim::record_ops`] is set).
#[derive(Clone, Debug)]
pub struct OpsFrame {
    /// When.
    pub t: u64,
    /// Sending node.
    pub from: usize,
    /// Receiving node.
    pub to: usize,
    /// Ops carried.
    pub ops: usize,
}

/// A node of the simulation.
pub struct SimNode {
    /// Its home.
    pub home: PathBuf,
    /// `None` while it is down.
    pub node: Option<Node>,
    /// Its id.
    pub id: NodeId,
    /// Its clock's offset.
    skew: i64,
    /// Its own last seq and the Lamport clock value it had when it went down or last wrote.
    last_seq: u64,
    last_lamport: u64,
    /// Pending crashes (it is up when zero).
    downs: u32,
    /// Stalled until then (simulated ms).
    frozen_until: u64,
    /// Admitted only during the run.
    late: bool,
    /// The admin executed its `AddMember`.
    admitted: bool,
    /// The admin removed it.
    removed: bool,
}

struct Conn {
    id: u64,
    s: [Session; 2],
}

/// A link between two nodes (side 0 is `a`, side 1 is `b`).
pub struct Link {
    /// One end.
    pub a: usize,
    /// The other.
    pub b: usize,
    cuts: u32,
    conn: Option<Conn>,
    next_attempt: u64,
    failures: u32,
    fifo: [u64; 2],
}

impl Link {
    fn node(&self, side: usize) -> usize {
        if side == 0 {
            self.a
        } else {
            self.b
        }
    }
}

struct Frame {
    seq: u64,
    link: usize,
    conn: u64,
    to: usize,
    bytes: Vec<u8>,
}

enum Action {
    Command(usize),
    Cut(Vec<usize>),
    Heal(Vec<usize>),
    Crash { node: usize, graceful: bool },
    Start(usize),
    Admit(usize),
    Freeze { node: usize, ms: u64 },
    Thaw(usize),
    Remove,
}

/// One story id's view (deleted stories too) or the error, and its history or the error.
pub type StoryState = (StoryId, Result<Story, String>, Result<Vec<Transition>, String>);

/// Everything the projection exposes, compared across replicas at the end.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Version vector.
    pub vv: VersionVector,
    /// Live stories.
    pub stories: Vec<Story>,
    /// Every story id ever used: its view (deleted ones too) or the error, and history.
    pub all: Vec<StoryState>,
    /// Members.
    pub members: Vec<Member>,
    /// Presence.
    pub nodes: Vec<NodeInfo>,
    /// Merge lock.
    pub merge_lock: Option<Lease>,
    /// Equivocations.
    pub forks: Vec<ForkInfo>,
}

/// The simulator.
pub struct Sim {
    /// The seed it runs.
    pub seed: u64,
    rng: ChaCha8Rng,
    /// Simulated ms since [`BASE_MS`].
    pub t: u64,
    _dir: tempfile::TempDir,
    /// The nodes.
    pub nodes: Vec<SimNode>,
    /// The links.
    pub links: Vec<Link>,
    faults: Faults,
    strict: bool,
    session_config: SessionConfig,
    wire: BTreeMap<(u64, u64), Frame>,
    wire_seq: u64,
    actions: BTreeMap<(u64, u64), Action>,
    action_seq: u64,
    next_conn: u64,
    dirty: BTreeSet<usize>,
    /// Counters.
    pub stats: Stats,
    /// Record every `Ops` frame sent into [`Sim::recorded`].
    pub record_ops: bool,
    /// Recorded `Ops` frames.
    pub recorded: Vec<OpsFrame>,
    /// The workload reads a node's story list afresh every this many of its commands (1:
    /// every command). Listing is linear in the stories, so a run of 100,000 commands
    /// re-reads it less often (`sim_at_scale`); a stale list only makes more commands fail.
    pub story_list_every: usize,
    /// Per node: commands since its list was read, and the list.
    story_lists: Vec<Option<(usize, Vec<Story>)>>,
    pool: Vec<StoryId>,
    next_story: u64,
    /// Every committed op: (node, seq, id).
    receipts: Vec<(usize, u64, OpId)>,
    /// The member the admin will remove.
    victim: Option<usize>,
}

fn node_config() -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).expect("non-zero")
}

/// A temporary directory on tmpfs when there is one: every commit flushes, and the
/// simulator commits thousands of times.
fn temp_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("huskies-sim").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

impl Sim {
    /// One cluster of `sc.nodes` nodes, all members, all holding the admin's ops, and a
    /// schedule of workload, partitions and restarts drawn from `seed`.
    pub fn new(seed: u64, sc: &Scenario) -> Sim {
        assert!(sc.nodes >= 2 && sc.late_joiners < sc.nodes);
        let first_late = sc.nodes - sc.late_joiners;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let dir = temp_dir();
        let t0 = Timestamp::from_millis(BASE_MS);
        let mut nodes: Vec<Node> = Vec::new();
        let admin = Node::init(
            &dir.path().join("n0"),
            InitMode::NewCluster { name: "sim".into() },
            &mut rng,
            t0,
            node_config(),
        )
        .expect("init admin");
        nodes.push(admin);
        for i in 1..sc.nodes {
            let j = Node::init(
                &dir.path().join(format!("n{i}")),
                InitMode::Join {
                    cluster: nodes[0].cluster_id(),
                },
                &mut rng,
                t0,
                node_config(),
            )
            .expect("init joiner");
            if i < first_late {
                let role = if rng.gen_bool(0.3) {
                    Role::Admin
                } else {
                    Role::Member
                };
                nodes[0]
                    .execute(
                        t0,
                        Command::AddMember {
                            node: j.node_id(),
                            role,
                        },
                    )
                    .expect("admin adds member");
            }
            nodes.push(j);
        }
        let (admin, rest) = nodes.split_first_mut().expect("an admin");
        for j in &mut rest[..first_late - 1] {
            let bundle = admin.export_since(&j.version_vector()).expect("export");
            let report = j.ingest_bundle(&bundle).expect("ingest");
            assert!(report.rejected.is_empty(), "{report:?}");
        }
        let sim_nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| SimNode {
                home: dir.path().join(format!("n{i}")),
                id: n.node_id(),
                skew: if sc.clock_skew_ms > 0 {
                    rng.gen_range(-sc.clock_skew_ms..=sc.clock_skew_ms)
                } else {
                    0
                },
                last_seq: n.version_vector().get(&n.node_id()),
                last_lamport: n.lamport(),
                node: Some(n),
                downs: 0,
                frozen_until: 0,
                late: i >= first_late,
                admitted: i < first_late,
                removed: false,
            })
            .collect::<Vec<_>>();

        // A random spanning tree of the founding nodes, plus extra links. A late joiner
        // is never a bridge: nodes that have not learnt of its admission refuse it, so
        // nodes reachable only through it could never learn of it (no protocol lets a
        // member vouch for another).
        let n = sc.nodes;
        let mut order: Vec<usize> = (0..first_late).collect();
        order.shuffle(&mut rng);
        let mut edges = BTreeSet::new();
        for k in 1..first_late {
            let p = order[rng.gen_range(0..k)];
            let c = order[k];
            edges.insert((p.min(c), p.max(c)));
        }
        // A late joiner's rendezvous peer is the admin.
        for j in first_late..n {
            edges.insert((0, j));
        }
        for a in 0..n {
            for b in a + 1..n {
                if rng.gen_range(0..100) < sc.extra_links_pct {
                    edges.insert((a, b));
                }
            }
        }
        // The member to be removed (a founding node, never the admin). The others cut it
        // off, so it must not be a bridge either: join what its removal would separate.
        assert!(sc.removals <= 1, "one removal at most");
        let victim = (sc.removals > 0 && first_late > 1).then(|| rng.gen_range(1..first_late));
        if let Some(v) = victim {
            let mut component: Vec<usize> = (0..n).collect();
            fn root(c: &mut [usize], mut x: usize) -> usize {
                while c[x] != x {
                    c[x] = c[c[x]];
                    x = c[x];
                }
                x
            }
            // Late joiners do not count as bridges either (see above).
            for &(a, b) in &edges {
                if a != v && b != v && a < first_late && b < first_late {
                    let (ra, rb) = (root(&mut component, a), root(&mut component, b));
                    component[ra] = rb;
                }
            }
            for k in 1..first_late {
                if k != v && root(&mut component, k) != root(&mut component, 0) {
                    let r = root(&mut component, k);
                    component[r] = root(&mut component, 0);
                    edges.insert((0, k));
                }
            }
        }
        let links = edges
            .into_iter()
            .map(|(a, b)| Link {
                a,
                b,
                cuts: 0,
                conn: None,
                next_attempt: 0,
                failures: 0,
                fifo: [0; 2],
            })
            .collect::<Vec<_>>();

        let session_config = sc.session.clone().unwrap_or_else(|| match rng.gen_range(0..3) {
            0 => SessionConfig::default(),
            1 => SessionConfig {
                target_frame_bytes: 1024,
                max_unacked_bytes: 4096,
                ..SessionConfig::default()
            },
            _ => SessionConfig {
                target_frame_bytes: 300,
                max_unacked_bytes: 1200,
                ..SessionConfig::default()
            },
        });

        let mut sim = Sim {
            seed,
            rng,
            t: 0,
            _dir: dir,
            nodes: sim_nodes,
            links,
            strict: sc.faults.is_clean(),
            faults: sc.faults.clone(),
            session_config,
            wire: BTreeMap::new(),
            wire_seq: 0,
            actions: BTreeMap::new(),
            action_seq: 0,
            next_conn: 0,
            dirty: BTreeSet::new(),
            stats: Stats::default(),
            record_ops: false,
            recorded: Vec::new(),
            story_list_every: 1,
            story_lists: Vec::new(),
            pool: Vec::new(),
            next_story: 0,
            receipts: Vec::new(),
            victim,
        };
        sim.schedule_scenario(sc);
        sim
    }

    fn schedule(&mut self, at: u64, action: Action) {
        self.action_seq += 1;
        self.actions.insert((at, self.action_seq), action);
    }

    fn schedule_scenario(&mut self, sc: &Scenario) {
        let n = self.nodes.len();
        if sc.workload_ms == 0 {
            return;
        }
        for _ in 0..sc.commands {
            let at = self.rng.gen_range(0..sc.workload_ms);
            let node = self.rng.gen_range(0..n);
            self.schedule(at, Action::Command(node));
        }
        for _ in 0..sc.partitions {
            let at = self.rng.gen_range(0..sc.workload_ms);
            let dur = self.rng.gen_range(1_000..60_000);
            let links: Vec<usize> = if self.rng.gen_bool(0.5) {
                // Split the nodes in two.
                let side: Vec<bool> = loop {
                    let s: Vec<bool> = (0..n).map(|_| self.rng.gen_bool(0.5)).collect();
                    if s.iter().any(|&x| x) && s.iter().any(|&x| !x) {
                        break s;
                    }
                };
                (0..self.links.len())
                    .filter(|&l| side[self.links[l].a] != side[self.links[l].b])
                    .collect()
            } else {
                let mut v: Vec<usize> = (0..self.links.len()).filter(|_| self.rng.gen_bool(0.4)).collect();
                if v.is_empty() {
                    v.push(self.rng.gen_range(0..self.links.len()));
                }
                v
            };
            self.schedule(at, Action::Cut(links.clone()));
            self.schedule(at + dur, Action::Heal(links));
        }
        for j in n - sc.late_joiners..n {
            let at = self.rng.gen_range(0..sc.workload_ms / 2);
            self.schedule(at, Action::Admit(j));
        }
        if self.victim.is_some() {
            let at = self.rng.gen_range(sc.workload_ms / 4..sc.workload_ms * 3 / 4);
            self.schedule(at, Action::Remove);
        }
        for _ in 0..sc.freezes {
            let at = self.rng.gen_range(0..sc.workload_ms);
            let node = self.rng.gen_range(0..n);
            let ms = self.rng.gen_range(500..8_000);
            self.schedule(at, Action::Freeze { node, ms });
        }
        for _ in 0..sc.restarts {
            let at = self.rng.gen_range(0..sc.workload_ms);
            let node = self.rng.gen_range(0..n);
            let down = self.rng.gen_range(100..20_000);
            let graceful = self.rng.gen_bool(0.5);
            self.schedule(at, Action::Crash { node, graceful });
            self.schedule(at + down, Action::Start(node));
        }
    }

    /// Node `i`'s clock.
    pub fn now(&self, i: usize) -> Timestamp {
        Timestamp::from_millis(BASE_MS + self.t as i64 + self.nodes[i].skew)
    }

    /// The unskewed clock (used for the final comparison).
    pub fn global_now(&self) -> Timestamp {
        Timestamp::from_millis(BASE_MS + self.t as i64)
    }

    fn to_sim_time(&self, i: usize, ts: Timestamp) -> u64 {
        let ms = ts.as_millis() - BASE_MS - self.nodes[i].skew;
        u64::try_from(ms).unwrap_or(0)
    }

    fn ctx(&self) -> String {
        format!("sim seed {} at t={}ms", self.seed, self.t)
    }

    /// The node, which must be up.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].node.as_ref().expect("node is up")
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].node.is_some()
    }

    fn frozen(&self, i: usize) -> bool {
        self.t < self.nodes[i].frozen_until
    }

    /// A node that holds no ops yet (a late joiner before its first sync).
    fn blank(&self, i: usize) -> bool {
        self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.version_vector().is_empty())
    }

    fn wanted(&self, l: usize) -> bool {
        let link = &self.links[l];
        if link.cuts > 0 || !self.up(link.a) || !self.up(link.b) || self.frozen(link.a) || self.frozen(link.b)
        {
            return false;
        }
        // A node with an empty store dials only its rendezvous peer, the admin.
        !(self.blank(link.a) || self.blank(link.b)) || link.a == 0
    }

    /// Does node `i` know node `k` as an active member?
    fn knows(&self, i: usize, k: usize) -> bool {
        self.nodes[i]
            .node
            .as_ref()
            .is_some_and(|n| n.is_active_member(&self.nodes[k].id))
    }

    fn links_of(&self, i: usize) -> Vec<usize> {
        (0..self.links.len())
            .filter(|&l| self.links[l].a == i || self.links[l].b == i)
            .collect()
    }

    fn mark_node_dirty(&mut self, i: usize) {
        for l in self.links_of(i) {
            self.dirty.insert(l);
        }
    }

    // ---------------------------------------------------------------- the event loop

    fn next_event(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        if let Some((&(t, _), _)) = self.wire.first_key_value() {
            consider(t);
        }
        if let Some((&(t, _), _)) = self.actions.first_key_value() {
            consider(t);
        }
        for (l, link) in self.links.iter().enumerate() {
            match &link.conn {
                Some(conn) => {
                    for side in 0..2 {
                        // A stalled node's timers wait for its thaw (a scheduled action).
                        if self.frozen(link.node(side)) {
                            continue;
                        }
                        if let Some(ts) = conn.s[side].poll_timeout() {
                            consider(self.to_sim_time(link.node(side), ts));
                        }
                    }
                }
                None if self.wanted(l) => consider(link.next_attempt),
                None => {}
            }
        }
        next
    }

    /// Runs the simulation up to `end` (simulated ms).
    pub fn run_until(&mut self, end: u64) {
        let mut same_time_steps = 0u32;
        loop {
            match self.next_event() {
                Some(next) if next <= end => {
                    if next <= self.t {
                        same_time_steps += 1;
                        assert!(
                            same_time_steps < 10_000,
                            "{}: livelock: events keep falling due without time advancing",
                            self.ctx()
                        );
                    } else {
                        same_time_steps = 0;
                        self.t = next;
                    }
                    self.step();
                }
                _ => {
                    self.t = self.t.max(end);
                    return;
                }
            }
        }
    }

    /// Runs for `ms` more simulated milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.t + ms);
    }

    fn step(&mut self) {
        let t = self.t;
        while let Some(entry) = self.wire.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let frame = entry.remove();
            self.deliver(frame);
        }
        while let Some(entry) = self.actions.first_entry() {
            if entry.key().0 > t {
                break;
            }
            let action = entry.remove();
            self.act(action);
        }
        for l in 0..self.links.len() {
            self.check_timeouts(l);
        }
        for l in 0..self.links.len() {
            if self.links[l].conn.is_none() && self.wanted(l) && self.links[l].next_attempt <= t {
                self.open_conn(l);
            }
        }
        while let Some(l) = self.dirty.pop_first() {
            self.pump(l);
        }
    }

    // ---------------------------------------------------------------- connections

    fn open_conn(&mut self, l: usize) {
        self.next_conn += 1;
        let id = self.next_conn;
        let mk = |sim: &mut Sim, side: usize| {
            let i = sim.links[l].node(side);
            let mut challenge = [0u8; 32];
            sim.rng.fill(&mut challenge);
            // A node that holds nothing cannot check membership: it trusts the admin only.
            let options = SessionOptions {
                expect_peer: sim.blank(i).then_some(sim.nodes[0].id),
                ..SessionOptions::default()
            };
            Session::new(
                sim.node(i),
                sim.now(i),
                challenge,
                options,
                sim.session_config.clone(),
            )
        };
        let s0 = mk(self, 0);
        let s1 = mk(self, 1);
        self.links[l].conn = Some(Conn { id, s: [s0, s1] });
        self.stats.connections += 1;
        self.dirty.insert(l);
    }

    /// Ends link `l`'s connection. With `flush_from`, that side's remaining frames (its
    /// `Refuse`) reach the other side first, as a socket delivers its last writes before
    /// the close. `failed` starts a backoff before the next attempt.
    fn close_conn(&mut self, l: usize, mut conn: Conn, flush_from: Option<usize>, failed: bool) {
        if let Some(side) = flush_from {
            let peer = 1 - side;
            let (i, j) = (self.links[l].node(side), self.links[l].node(peer));
            let mut frames = Vec::new();
            let (now_i, now_j) = (self.now(i), self.now(j));
            if let Some(node) = self.nodes[i].node.as_ref() {
                while let Ok(Some(f)) = conn.s[side].poll_transmit(node, now_i) {
                    frames.push(f);
                }
            }
            for f in frames {
                let Some(node) = self.nodes[j].node.as_mut() else {
                    break;
                };
                match conn.s[peer].handle_frame(node, now_j, &f) {
                    Ok(()) => {}
                    Err(SyncError::PeerRefused { .. }) => break,
                    Err(e) => panic!("{}: a closing frame made the peer fail with {e:?}", self.ctx()),
                }
            }
            let events = conn.s[peer].take_events();
            self.check_events(j, events);
        }
        let link = &mut self.links[l];
        link.conn = None;
        if failed {
            link.failures += 1;
            let base = 250u64 << link.failures.min(5);
            let jitter = self.rng.gen_range(0..=base);
            link.next_attempt = self.t + base / 2 + jitter;
        } else {
            link.next_attempt = self.t;
        }
    }

    fn fail(&mut self, l: usize, conn: Conn, side: usize, err: SyncError) {
        let (a, b) = (self.links[l].a, self.links[l].b);
        let strangers = !self.knows(a, b) || !self.knows(b, a);
        let expected = match &err {
            // Until both ends know of an admission, they refuse each other.
            SyncError::Refused {
                code: RefuseCode::NotMember,
                ..
            }
            | SyncError::PeerRefused {
                code: RefuseCode::NotMember,
                ..
            } => strangers,
            SyncError::Unexpected { .. }
            | SyncError::HandshakeTimeout
            | SyncError::NotReading
            | SyncError::Silent => !self.strict,
            SyncError::PeerRefused {
                code: RefuseCode::Protocol | RefuseCode::Timeout,
                ..
            } => !self.strict,
            _ => false,
        };
        let i = self.links[l].node(side);
        let j = self.links[l].node(1 - side);
        assert!(
            expected,
            "{}: session of node {i} with node {j} failed unexpectedly{}: {err:?}",
            self.ctx(),
            if self.strict {
                " (the network is clean)"
            } else {
                ""
            }
        );
        *self.stats.failures.entry(err.reason()).or_default() += 1;
        self.close_conn(l, conn, Some(side), true);
    }

    fn check_events(&mut self, i: usize, events: Vec<SessionEvent>) {
        for e in events {
            match e {
                SessionEvent::Established { peer } => {
                    assert!(
                        self.nodes.iter().any(|n| n.id == peer),
                        "{}: established with a stranger",
                        self.ctx()
                    );
                    self.stats.established += 1;
                }
                SessionEvent::Ingested { report } => {
                    // On a clean wire a session sends ops in an order the peer can apply;
                    // on a faulty one an admitted node's op may overtake its admission.
                    let removed: Vec<NodeId> =
                        self.nodes.iter().filter(|n| n.removed).map(|n| n.id).collect();
                    let excused = |r: &huskies_core::Rejection| match &r.reason {
                        huskies_core::RejectReason::UnknownAuthor(_) => !self.strict,
                        // A removed node's ops past its cutoff, relayed by a node that has
                        // not learnt of the removal yet.
                        huskies_core::RejectReason::Voided { author, .. } => removed.contains(author),
                        _ => false,
                    };
                    assert!(
                        report.rejected.iter().all(excused) && report.forks.is_empty(),
                        "{}: node {i} rejected ops from a peer: {report:?}",
                        self.ctx()
                    );
                    self.stats.rejected += report.rejected.len() as u64;
                    if report.applied > 0 {
                        self.mark_node_dirty(i);
                    }
                }
                SessionEvent::Admitted { node } => {
                    panic!("{}: nobody holds a ticket, yet {node} was admitted", self.ctx())
                }
                SessionEvent::BehindOwnChain { held, peer_holds } => {
                    // Restarts reopen real stores: a node never loses its own ops.
                    panic!(
                        "{}: node {i} holds {held} of its own ops, a peer {peer_holds}",
                        self.ctx()
                    )
                }
            }
        }
    }

    fn deliver(&mut self, f: Frame) {
        let live = self.links[f.link].conn.as_ref().is_some_and(|c| c.id == f.conn);
        if !live {
            self.stats.frames_stale += 1;
            return;
        }
        let i = self.links[f.link].node(f.to);
        if self.frozen(i) {
            // It piles up until the node reads again, in the order it arrived.
            let key = (self.nodes[i].frozen_until, f.seq);
            self.wire.insert(key, f);
            return;
        }
        let mut conn = self.links[f.link].conn.take().expect("live connection");
        if self.roll(self.faults.reset) {
            self.stats.resets += 1;
            self.close_conn(f.link, conn, None, true);
            return;
        }
        self.stats.frames_delivered += 1;
        let now = self.now(i);
        let node = self.nodes[i]
            .node
            .as_mut()
            .expect("a connection exists only while both ends are up");
        let r = conn.s[f.to].handle_frame(node, now, &f.bytes);
        let events = conn.s[f.to].take_events();
        self.check_events(i, events);
        match r {
            Ok(()) => {
                if conn.s[0].is_established() && conn.s[1].is_established() {
                    self.links[f.link].failures = 0;
                }
                self.links[f.link].conn = Some(conn);
                self.dirty.insert(f.link);
            }
            Err(e) => self.fail(f.link, conn, f.to, e),
        }
    }

    fn check_timeouts(&mut self, l: usize) {
        let Some(mut conn) = self.links[l].conn.take() else {
            return;
        };
        for side in 0..2 {
            let i = self.links[l].node(side);
            if self.frozen(i) {
                continue;
            }
            let due = conn.s[side]
                .poll_timeout()
                .is_some_and(|ts| self.to_sim_time(i, ts) <= self.t);
            if due {
                if let Err(e) = conn.s[side].handle_timeout(self.now(i)) {
                    self.fail(l, conn, side, e);
                    return;
                }
                self.dirty.insert(l);
            }
        }
        self.links[l].conn = Some(conn);
    }

    fn pump(&mut self, l: usize) {
        let Some(mut conn) = self.links[l].conn.take() else {
            return;
        };
        for side in 0..2 {
            let i = self.links[l].node(side);
            if self.frozen(i) {
                continue; // it sends once it thaws
            }
            let now = self.now(i);
            let node = self.nodes[i].node.as_ref().expect("up");
            let mut out = Vec::new();
            let mut err = None;
            loop {
                match conn.s[side].poll_transmit(node, now) {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            for f in out {
                self.send(l, conn.id, side, f);
            }
            if let Some(e) = err {
                self.fail(l, conn, side, e);
                return;
            }
        }
        self.links[l].conn = Some(conn);
    }

    fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.gen_range(0..1000) < per_mille
    }

    fn send(&mut self, l: usize, conn: u64, from: usize, bytes: Vec<u8>) {
        self.stats.frames_sent += 1;
        self.stats.frame_bytes += bytes.len() as u64;
        let msg = Message::decode(&bytes).expect("sessions send well-formed frames");
        if let Message::Ops { ops } = &msg {
            self.stats.ops_frames += 1;
            self.stats.ops_carried += ops.len() as u64;
            if self.record_ops {
                self.recorded.push(OpsFrame {
                    t: self.t,
                    from: self.links[l].node(from),
                    to: self.links[l].node(1 - from),
                    ops: ops.len(),
                });
            }
        }
        let to = 1 - from;
        if self.roll(self.faults.loss) {
            self.stats.frames_lost += 1;
            return;
        }
        let copies = if self.roll(self.faults.dup) {
            self.stats.frames_duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let (lo, hi) = (self.faults.min_delay_ms.max(1), self.faults.max_delay_ms.max(1));
            let delay = self.rng.gen_range(lo..=hi.max(lo));
            let at = if copy > 0 || self.roll(self.faults.reorder) {
                self.stats.frames_reordered += 1;
                self.t + delay + self.rng.gen_range(0..=2 * hi)
            } else {
                let at = (self.t + delay).max(self.links[l].fifo[to]);
                self.links[l].fifo[to] = at;
                at
            };
            self.wire_seq += 1;
            self.wire.insert(
                (at, self.wire_seq),
                Frame {
                    seq: self.wire_seq,
                    link: l,
                    conn,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    // ---------------------------------------------------------------- scheduled actions

    fn act(&mut self, action: Action) {
        match action {
            Action::Command(i) => {
                // A node writes once it knows it is a member.
                if self.knows(i, i) && !self.frozen(i) {
                    self.workload_step(i);
                }
            }
            Action::Cut(links) => {
                self.stats.partitions += 1;
                for l in links {
                    self.links[l].cuts += 1;
                    if let Some(conn) = self.links[l].conn.take() {
                        self.close_conn(l, conn, None, false);
                    }
                }
            }
            Action::Heal(links) => {
                for l in links {
                    self.links[l].cuts -= 1;
                    if self.links[l].cuts == 0 {
                        let jitter = self.rng.gen_range(0..500);
                        self.links[l].next_attempt = self.t + jitter;
                        self.links[l].failures = 0;
                    }
                }
            }
            Action::Crash { node, graceful } => self.crash(node, graceful),
            Action::Start(i) => self.start(i),
            Action::Freeze { node, ms } => {
                if self.up(node) {
                    self.stats.freezes += 1;
                    let until = self.nodes[node].frozen_until.max(self.t + ms);
                    self.nodes[node].frozen_until = until;
                    self.schedule(until, Action::Thaw(node));
                }
            }
            Action::Thaw(i) => {
                if !self.frozen(i) {
                    self.mark_node_dirty(i);
                }
            }
            Action::Remove => {
                if !self.up(0) {
                    self.schedule(self.t + 1_000, Action::Remove);
                } else if let Some(k) = self.victim {
                    let node = self.nodes[k].id;
                    self.stats.removals += 1;
                    self.execute(0, Command::RemoveMember { node });
                    self.nodes[k].removed = true;
                }
            }
            Action::Admit(j) => {
                if self.up(0) {
                    self.admit(j);
                } else {
                    self.schedule(self.t + 1_000, Action::Admit(j));
                }
            }
        }
    }

    /// Stops node `i`: closes its connections (politely, or as a crash would) and drops
    /// the `Node`, releasing its home.
    pub fn crash(&mut self, i: usize, graceful: bool) {
        self.nodes[i].downs += 1;
        if !self.up(i) {
            return;
        }
        self.stats.restarts += 1;
        for l in self.links_of(i) {
            let Some(mut conn) = self.links[l].conn.take() else {
                continue;
            };
            let side = if self.links[l].a == i { 0 } else { 1 };
            if graceful {
                conn.s[side].close(RefuseCode::Shutdown, "shutting down");
                self.close_conn(l, conn, Some(side), false);
            } else {
                self.close_conn(l, conn, None, false);
            }
        }
        let node = self.nodes[i].node.take().expect("up");
        self.nodes[i].frozen_until = 0;
        self.nodes[i].last_lamport = node.lamport();
        assert!(
            self.nodes[i].removed || node.version_vector().get(&self.nodes[i].id) == self.nodes[i].last_seq,
            "{}: node {i} holds a different own head than it wrote",
            self.ctx()
        );
        drop(node);
    }

    /// Undoes one [`Sim::crash`] of node `i`: once none is pending, reopens it.
    pub fn start(&mut self, i: usize) {
        self.nodes[i].downs -= 1;
        if self.nodes[i].downs == 0 {
            self.reopen(i);
        }
    }

    /// Reopens node `i` from its home and checks it remembers its own head and clock.
    fn reopen(&mut self, i: usize) {
        let node = Node::open(&self.nodes[i].home, node_config())
            .unwrap_or_else(|e| panic!("{}: reopening node {i}: {e}", self.ctx()));
        assert_eq!(node.node_id(), self.nodes[i].id);
        assert!(
            self.nodes[i].removed || node.version_vector().get(&self.nodes[i].id) == self.nodes[i].last_seq,
            "{}: node {i} lost or invented own ops across a restart",
            self.ctx()
        );
        assert!(
            node.lamport() >= self.nodes[i].last_lamport,
            "{}: node {i}'s Lamport clock went back across a restart: {} < {}",
            self.ctx(),
            node.lamport(),
            self.nodes[i].last_lamport
        );
        self.nodes[i].node = Some(node);
        for l in self.links_of(i) {
            if self.links[l].conn.is_none() {
                self.links[l].next_attempt = self.links[l].next_attempt.max(self.t);
            }
        }
    }

    fn admit(&mut self, j: usize) {
        let role = if self.rng.gen_bool(0.5) {
            Role::Admin
        } else {
            Role::Member
        };
        let node = self.nodes[j].id;
        self.execute(0, Command::AddMember { node, role });
        self.nodes[j].admitted = true;
    }

    // ---------------------------------------------------------------- workload

    fn fresh_story(&mut self) -> StoryId {
        self.next_story += 1;
        let id = StoryId::new(format!("{}_story", self.next_story)).expect("valid id");
        self.pool.push(id.clone());
        id
    }

    fn any_story(&mut self, visible: &[Story]) -> Option<StoryId> {
        if !visible.is_empty() && self.rng.gen_bool(0.85) {
            return visible.choose(&mut self.rng).map(|s| s.id.clone());
        }
        self.pool.choose(&mut self.rng).cloned()
    }

    fn text(&mut self, what: &str) -> String {
        format!("{what} {}", self.rng.gen_range(0..10_000))
    }

    fn events_for(&mut self, stage: &Stage) -> Vec<PipelineEvent> {
        let commits = nz(self.rng.gen_range(1..20));
        let branch = format!("feature/{}", self.rng.gen_range(0..100));
        let forward = match stage {
            Stage::Backlog => vec![PipelineEvent::DepsMet],
            Stage::Coding => vec![
                PipelineEvent::GatesStarted,
                PipelineEvent::GatesStarted,
                PipelineEvent::QaSkipped { branch, commits },
            ],
            Stage::Qa => vec![
                PipelineEvent::GatesPassed { branch, commits },
                PipelineEvent::GatesFailed {
                    reason: self.text("flaky"),
                },
            ],
            Stage::Merge { .. } => vec![
                PipelineEvent::MergeSucceeded {
                    commit: format!("{:040x}", self.rng.gen::<u128>()),
                },
                PipelineEvent::MergeConflict {
                    kind: "conflict".into(),
                    reason: self.text("conflict in"),
                },
            ],
            Stage::MergeFailure { .. } => vec![
                PipelineEvent::GatesPassed { branch, commits },
                PipelineEvent::MergeFailedFinal {
                    reason: self.text("gave up"),
                },
            ],
            Stage::Done { .. } => vec![PipelineEvent::Accepted],
            Stage::Archived {
                reason: huskies_core::ArchiveReason::Blocked { .. },
                ..
            } => vec![PipelineEvent::Unblock],
            Stage::Archived { .. } => vec![],
        };
        if !forward.is_empty() && self.rng.gen_bool(0.85) {
            return forward;
        }
        let by = self.pool.choose(&mut self.rng).cloned();
        let mut side = vec![
            PipelineEvent::Block {
                reason: self.text("blocked on"),
            },
            PipelineEvent::ReviewHold {
                reason: self.text("review"),
            },
            PipelineEvent::Abandon,
            PipelineEvent::Unblock,
        ];
        if let Some(by) = by {
            side.push(PipelineEvent::Supersede { by });
        }
        side
    }

    fn random_command(&mut self, i: usize, now: Timestamp) -> Command {
        if self.story_lists.len() <= i {
            self.story_lists.resize_with(i + 1, || None);
        }
        let list = match self.story_lists[i].take() {
            Some((n, list)) if n < self.story_list_every => (n + 1, list),
            _ => (1, self.node(i).stories(None, now).expect("stories")),
        };
        let cmd = self.random_command_from(i, now, &list.1);
        self.story_lists[i] = Some(list);
        cmd
    }

    fn random_command_from(&mut self, i: usize, now: Timestamp, visible: &[Story]) -> Command {
        let me = self.nodes[i].id;
        let roll = self.rng.gen_range(0..100);
        let story = self.any_story(visible);
        let Some(id) = story.filter(|_| roll >= 15) else {
            // AddStory: mostly fresh ids, sometimes one another node may be creating.
            let id = if self.pool.is_empty() || self.rng.gen_bool(0.9) {
                self.fresh_story()
            } else {
                self.pool.choose(&mut self.rng).cloned().expect("pool")
            };
            let deps = (0..self.rng.gen_range(0..3))
                .filter_map(|_| self.pool.choose(&mut self.rng).cloned())
                .filter(|d| *d != id)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            return Command::AddStory {
                name: self.text("story"),
                body: self.rng.gen_bool(0.5).then(|| self.text("body")),
                id,
                depends_on: deps,
            };
        };
        let current = visible.iter().find(|s| s.id == id);
        match roll {
            15..=49 => {
                let stage = current.map_or(Stage::Backlog, |s| s.stage.clone());
                let events = self.events_for(&stage);
                let event = events
                    .choose(&mut self.rng)
                    .cloned()
                    .unwrap_or(PipelineEvent::DepsMet);
                Command::Event { id, event }
            }
            50..=59 => Command::Claim {
                id,
                ttl_secs: self.rng.gen_range(5..600),
            },
            60..=64 => {
                let mine = visible
                    .iter()
                    .filter(|s| s.claim.as_ref().is_some_and(|c| c.node == me))
                    .map(|s| s.id.clone())
                    .collect::<Vec<_>>();
                let id = mine.choose(&mut self.rng).cloned().unwrap_or(id);
                Command::Release { id }
            }
            65..=72 => Command::Heartbeat {
                label: format!("node-{i}"),
                address: self.rng.gen_bool(0.5).then(|| format!("10.0.0.{i}:7000")),
            },
            73..=82 => {
                let field = match self.rng.gen_range(0..3) {
                    0 => StoryField::Name(self.text("renamed")),
                    1 => StoryField::Body(self.rng.gen_bool(0.7).then(|| self.text("new body"))),
                    _ => StoryField::DependsOn(
                        self.pool
                            .choose_multiple(&mut self.rng, 2)
                            .filter(|d| **d != id)
                            .cloned()
                            .collect(),
                    ),
                };
                Command::UpdateStory { id, field }
            }
            83..=85 => Command::DeleteStory { id },
            86..=89 => Command::AcquireMergeLock {
                ttl_secs: self.rng.gen_range(5..300),
            },
            90..=92 => Command::ReleaseMergeLock,
            93 => Command::ClearStaleMergeLock,
            _ => {
                let event = match self.rng.gen_range(0..7) {
                    0 => ExecutionEvent::SpawnRequested {
                        agent: format!("agent-{i}"),
                    },
                    1 => ExecutionEvent::SpawnedSuccessfully,
                    2 => ExecutionEvent::Heartbeat,
                    3 => ExecutionEvent::HitRateLimit {
                        resume_at: now.add_secs(60),
                    },
                    4 => ExecutionEvent::Exited {
                        exit_code: self.rng.gen_range(0..3),
                    },
                    5 => ExecutionEvent::Stopped,
                    _ => ExecutionEvent::Reset,
                };
                Command::Execution { id, event }
            }
        }
    }

    fn workload_step(&mut self, i: usize) {
        let now = self.now(i);
        let count = if self.rng.gen_bool(0.1) {
            self.rng.gen_range(2..4)
        } else {
            1
        };
        let cmds: Vec<Command> = (0..count).map(|_| self.random_command(i, now)).collect();
        let node = self.nodes[i].node.as_mut().expect("up");
        let results = if count == 1 {
            vec![node.execute(now, cmds[0].clone())]
        } else {
            node.execute_group(now, cmds.clone())
                .unwrap_or_else(|e| panic!("sim seed {}: group commit failed: {e}", self.seed))
        };
        let mut wrote = false;
        for (cmd, r) in cmds.iter().zip(results) {
            match r {
                Ok(receipt) => {
                    let n = &mut self.nodes[i];
                    assert_eq!(
                        receipt.seq,
                        n.last_seq + 1,
                        "sim seed {}: node {i} reused or skipped a seq",
                        self.seed
                    );
                    assert!(
                        receipt.lamport > n.last_lamport,
                        "sim seed {}: node {i} did not advance its Lamport clock",
                        self.seed
                    );
                    n.last_seq = receipt.seq;
                    n.last_lamport = receipt.lamport;
                    self.receipts.push((i, receipt.seq, receipt.op_id));
                    self.stats.commands_ok += 1;
                    wrote = true;
                }
                Err(e) => {
                    let expected = match e.kind() {
                        ErrorKind::NotFound | ErrorKind::InvalidTransition | ErrorKind::ClaimConflict => true,
                        ErrorKind::AlreadyExists => matches!(cmd, Command::AddStory { .. }),
                        _ => false,
                    };
                    assert!(
                        expected,
                        "sim seed {} at t={}: node {i}: {cmd:?} failed unexpectedly: {e} ({:?})",
                        self.seed,
                        self.t,
                        e.kind()
                    );
                    *self.stats.commands_refused.entry(e.kind().as_str()).or_default() += 1;
                }
            }
        }
        if wrote {
            self.mark_node_dirty(i);
        }
        // Keep track of the clock even when everything was refused (ingests move it too).
        let lamport = self.node(i).lamport();
        self.nodes[i].last_lamport = self.nodes[i].last_lamport.max(lamport);
    }

    /// Executes `cmd` on node `i` now (it must succeed).
    pub fn execute(&mut self, i: usize, cmd: Command) {
        let now = self.now(i);
        let node = self.nodes[i].node.as_mut().expect("up");
        let receipt = node
            .execute(now, cmd)
            .unwrap_or_else(|e| panic!("sim seed {}: {e}", self.seed));
        self.nodes[i].last_seq = receipt.seq;
        self.nodes[i].last_lamport = receipt.lamport;
        self.receipts.push((i, receipt.seq, receipt.op_id));
        self.mark_node_dirty(i);
    }

    /// A fresh story id, remembered for the final comparison.
    pub fn new_story_id(&mut self) -> StoryId {
        self.fresh_story()
    }

    // ---------------------------------------------------------------- partitions by hand

    /// Cuts the link between `a` and `b` (it must exist).
    pub fn cut(&mut self, a: usize, b: usize) {
        let l = self.link_between(a, b);
        self.act(Action::Cut(vec![l]));
    }

    /// Heals the link between `a` and `b`.
    pub fn heal(&mut self, a: usize, b: usize) {
        let l = self.link_between(a, b);
        self.act(Action::Heal(vec![l]));
    }

    fn link_between(&self, a: usize, b: usize) -> usize {
        self.links
            .iter()
            .position(|l| (l.a, l.b) == (a.min(b), a.max(b)))
            .expect("link exists")
    }

    // ---------------------------------------------------------------- the end

    /// Every node up, every link established and idle, every replica at the same
    /// version vector with nothing buffered, nothing but keepalives on the wire.
    pub fn quiet(&self) -> bool {
        if self.nodes.iter().any(|n| n.node.is_none()) {
            return false;
        }
        let vv = self.node(0).version_vector();
        if self
            .members()
            .any(|i| self.node(i).version_vector() != vv || self.node(i).buffered_ops() > 0)
        {
            return false;
        }
        let idle = self.member_links().all(|l| {
            l.conn
                .as_ref()
                .is_some_and(|c| c.s.iter().all(|s| s.is_established() && s.unacked_bytes() == 0))
        });
        idle && self
            .wire
            .values()
            .all(|f| !matches!(Message::decode(&f.bytes), Ok(Message::Ops { .. })))
    }

    /// The nodes that were not removed.
    fn members(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| !self.nodes[i].removed)
    }

    /// Links between nodes that were not removed.
    fn member_links(&self) -> impl Iterator<Item = &Link> + '_ {
        self.links
            .iter()
            .filter(|l| !self.nodes[l.a].removed && !self.nodes[l.b].removed)
    }

    /// Stops the workload, heals every partition, restarts every stopped node, cleans
    /// the wire, and runs until the cluster is quiet (panics if it never gets there).
    pub fn settle(&mut self) {
        self.actions.clear();
        for i in 0..self.nodes.len() {
            if self.nodes[i].downs > 0 {
                self.nodes[i].downs = 0;
                self.reopen(i);
            }
        }
        for j in 0..self.nodes.len() {
            self.nodes[j].frozen_until = 0;
            self.mark_node_dirty(j);
            if !self.nodes[j].admitted {
                self.admit(j);
            }
        }
        for l in 0..self.links.len() {
            self.links[l].cuts = 0;
            self.links[l].failures = 0;
            if self.links[l].conn.is_none() {
                self.links[l].next_attempt = self.t;
            }
        }
        self.faults = Faults {
            min_delay_ms: self.faults.min_delay_ms,
            max_delay_ms: self.faults.max_delay_ms,
            ..Faults::clean()
        };
        let deadline = self.t + 20 * 60_000;
        while !self.quiet() {
            assert!(
                self.t < deadline,
                "{}: the cluster did not converge within 20 simulated minutes of healing:\n{}",
                self.ctx(),
                self.describe()
            );
            self.run_for(500);
        }
    }

    /// Links and version vectors, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.node {
                Some(node) => {
                    s += &format!(
                        "node {i} {}: vv {:?} buffered {}\n",
                        n.id.short(),
                        node.version_vector(),
                        node.buffered_ops()
                    )
                }
                None => s += &format!("node {i}: down\n"),
            }
        }
        for l in &self.links {
            let state = match &l.conn {
                None => "no connection".to_string(),
                Some(c) => format!(
                    "conn {}: established {}/{}, unacked {}/{}",
                    c.id,
                    c.s[0].is_established(),
                    c.s[1].is_established(),
                    c.s[0].unacked_bytes(),
                    c.s[1].unacked_bytes()
                ),
            };
            s += &format!("link {}-{} (cuts {}): {state}\n", l.a, l.b, l.cuts);
        }
        s
    }

    /// The projection of node `i` at `now`.
    pub fn snapshot(&self, i: usize, now: Timestamp) -> Snapshot {
        let node = self.node(i);
        Snapshot {
            vv: node.version_vector(),
            stories: node.stories(None, now).expect("stories"),
            all: self
                .pool
                .iter()
                .map(|id| {
                    (
                        id.clone(),
                        node.story(id, now).map_err(|e| e.to_string()),
                        node.history(id).map_err(|e| e.to_string()),
                    )
                })
                .collect(),
            members: node.members(),
            nodes: node.nodes(now).expect("nodes"),
            merge_lock: node.merge_lock(now).expect("merge lock"),
            forks: node.forks().expect("forks"),
        }
    }

    /// After [`Sim::settle`]: a minute more changes nothing, and every replica holds the
    /// same ops, every committed op, the same projection, and a store that verifies.
    pub fn assert_converged(&mut self) {
        let vv = self.node(0).version_vector();
        let ops_frames = self.stats.ops_frames;
        self.run_for(60_000);
        assert_eq!(
            self.stats.ops_frames,
            ops_frames,
            "{}: ops were sent again after every replica held them",
            self.ctx()
        );
        assert!(
            self.quiet(),
            "{}: not quiet a minute later:\n{}",
            self.ctx(),
            self.describe()
        );
        assert_eq!(
            self.node(0).version_vector(),
            vv,
            "{}: ops appeared after quiet",
            self.ctx()
        );
        for l in self.member_links() {
            let c = l.conn.as_ref().expect("connected");
            for (side, s) in c.s.iter().enumerate() {
                assert_eq!(
                    s.peer_version(),
                    &vv,
                    "{}: the session of node {} believes its peer holds something else",
                    self.ctx(),
                    l.node(side)
                );
            }
        }
        let now = self.global_now();
        let reference = self.snapshot(0, now);
        assert!(
            reference.forks.is_empty(),
            "{}: forks: {:?}",
            self.ctx(),
            reference.forks
        );
        let log: BTreeSet<OpId> = self
            .node(0)
            .log(None)
            .expect("log")
            .into_iter()
            .map(|o| o.op_id)
            .collect();
        for &(i, seq, id) in &self.receipts {
            // A removed node's ops past its cutoff are void everywhere.
            if seq <= vv.get(&self.nodes[i].id) {
                assert!(log.contains(&id), "{}: committed op {id} is missing", self.ctx());
            } else {
                assert!(
                    self.nodes[i].removed,
                    "{}: node {i}'s op {seq} is missing",
                    self.ctx()
                );
            }
        }
        for i in self.members() {
            let n = &self.nodes[i];
            assert_eq!(vv.get(&n.id), n.last_seq, "{}: node {i}'s own ops", self.ctx());
        }
        for i in self.members().collect::<Vec<_>>() {
            let snap = self.snapshot(i, now);
            if snap != reference {
                panic!(
                    "{}: node {i} diverges from node 0:\n{}",
                    self.ctx(),
                    first_difference(&reference, &snap)
                );
            }
            let report = self.node(i).verify(|_| {}).expect("verify");
            assert!(
                report.ok,
                "{}: node {i} verify: {:?}",
                self.ctx(),
                report.problems
            );
        }
    }

    /// Live stories per stage on node 0, for the run summary.
    pub fn stage_summary(&self) -> String {
        let counts = self.node(0).stage_counts().expect("counts");
        StageKind::ALL
            .iter()
            .map(|k| format!("{}={}", k.as_str(), counts.get(k).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn first_difference(a: &Snapshot, b: &Snapshot) -> String {
    macro_rules! cmp {
        ($f:ident) => {
            if a.$f != b.$f {
                return format!(
                    "{}:\n  node 0: {:?}\n  other:  {:?}",
                    stringify!($f),
                    a.$f,
                    b.$f
                );
            }
        };
    }
    cmp!(vv);
    for (x, y) in a.all.iter().zip(&b.all) {
        if x != y {
            return format!("story {}:\n  node 0: {x:?}\n  other:  {y:?}", x.0);
        }
    }
    cmp!(stories);
    cmp!(members);
    cmp!(nodes);
    cmp!(merge_lock);
    cmp!(forks);
    "no difference found".into()
}

/// Runs one scenario with one seed to convergence and checks it; returns the stats.
pub fn run_scenario(seed: u64, sc: &Scenario) -> Stats {
    eprintln!("sim seed = {seed}");
    let started = std::time::Instant::now();
    let mut sim = Sim::new(seed, sc);
    sim.run_until(sc.workload_ms);
    let workload_end = sim.t;
    sim.settle();
    let settled = sim.t - workload_end;
    sim.assert_converged();
    eprintln!(
        "sim seed {seed}: {} nodes, {} links, settled {settled} ms after the workload; {:.1}s real\n  {:?}\n  stages: {}",
        sim.nodes.len(),
        sim.links.len(),
        started.elapsed().as_secs_f64(),
        sim.stats,
        sim.stage_summary()
    );
    sim.stats.clone()
}
