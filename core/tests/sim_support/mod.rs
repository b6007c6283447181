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
mod check;
mod wire;
mod workload;

pub use check::run_scenario;

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
    pub(super) story_lists: Vec<Option<(usize, Vec<Story>)>>,
    pool: Vec<StoryId>,
    next_story: u64,
    /// Every committed op: (node, seq, id).
    receipts: Vec<(usize, u64, OpId)>,
    /// The member the admin will remove.
    victim: Option<usize>,
    /// Declared last, so dropped last: the homes are removed after every node closed its
    /// store.
    _dir: tempfile::TempDir,
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

    /// Links whose connection is established at both ends, and links cut by a partition.
    pub fn link_census(&self) -> (usize, usize) {
        let up = self
            .links
            .iter()
            .filter(|l| {
                l.conn
                    .as_ref()
                    .is_some_and(|c| c.s[0].is_established() && c.s[1].is_established())
            })
            .count();
        (up, self.links.iter().filter(|l| l.cuts > 0).count())
    }

    /// Stops every node that is up (dropping its `Node`: its journal folds what is left and
    /// its store closes), one by one, calling `before(i)` first; the homes stay. Returns
    /// the slowest close: the node and how long it took.
    pub fn shut_down(&mut self, mut before: impl FnMut(usize)) -> (usize, std::time::Duration) {
        for l in 0..self.links.len() {
            self.links[l].conn = None;
        }
        self.wire.clear();
        let mut slowest = (0, std::time::Duration::ZERO);
        for i in 0..self.nodes.len() {
            if let Some(node) = self.nodes[i].node.take() {
                before(i);
                let started = std::time::Instant::now();
                drop(node);
                if started.elapsed() > slowest.1 {
                    slowest = (i, started.elapsed());
                }
            }
        }
        slowest
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
}
