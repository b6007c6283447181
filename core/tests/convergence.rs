//! Convergence under random workloads. Three nodes (and a hand-driven member that may
//! equivocate) run random commands with partial syncs at random points; then every op is
//! delivered to fresh replicas in random order, duplicated and split into random batches.
//! Every replica must end with the same version vector and the same projection.
//!
//! Two drivers share one simulator: a proptest over step lists (it prints and shrinks the
//! failing case) and a seeded loop that prints `seed = <n>`. To replay or soak it:
//! `HUSKIES_TEST_SEED=<n>` replays a seed, `HUSKIES_TEST_CASES=<n>` runs more cases (16 by
//! default), and `HUSKIES_TEST_LOG=1` traces every step and prints each node's op log.

mod common;

use common::*;
use huskies_core::{
    apply_execution_event, transition, Command, ErrorKind, ExecutionEvent, ExecutionState, Node, NodeId,
    Payload, PipelineEvent, RejectReason, Role, SignedOp, Stage, Story, StoryField, StoryId, Timestamp,
    Transition, VersionVector,
};
use proptest::prelude::*;
use rand_core::RngCore;

const STORIES: u8 = 5;

/// One step of a workload, as small numbers that the simulator interprets against the
/// current local state (so proptest can shrink step lists freely).
#[derive(Clone, Copy, Debug)]
struct Step {
    node: u8,
    kind: u8,
    story: u8,
    pick: u16,
}

/// The step kinds, by weight.
const KINDS: &[(u8, u32)] = &[
    (0, 10), // add story
    (1, 6),  // update a field
    (2, 22), // pipeline event valid from the local stage
    (3, 2),  // delete
    (4, 7),  // claim
    (5, 3),  // release
    (6, 6),  // heartbeat
    (7, 7),  // execution event valid from the local state
    (8, 5),  // merge lock: acquire / release / clear stale
    (9, 14), // partial sync: one node pushes to another
    (10, 4), // full sync, then all nodes write the same thing at once (Lamport ties)
    (11, 4), // time passes
    (12, 5), // the raw member writes a valid op
    (13, 2), // the raw member equivocates
    (14, 1), // the admin removes the raw member
];

fn kind_of(x: u32) -> u8 {
    let total: u32 = KINDS.iter().map(|k| k.1).sum();
    let mut x = x % total;
    for (k, w) in KINDS {
        if x < *w {
            return *k;
        }
        x -= w;
    }
    unreachable!()
}

fn all_events(pick: u16) -> Vec<PipelineEvent> {
    let n = u32::from(pick % 5) + 1;
    vec![
        PipelineEvent::DepsMet,
        PipelineEvent::GatesStarted,
        PipelineEvent::QaSkipped {
            branch: format!("f/{pick}"),
            commits: nz(n),
        },
        PipelineEvent::GatesPassed {
            branch: format!("f/{pick}"),
            commits: nz(n),
        },
        PipelineEvent::GatesFailed {
            reason: format!("r{pick}"),
        },
        PipelineEvent::MergeSucceeded {
            commit: format!("c{pick}"),
        },
        PipelineEvent::MergeConflict {
            kind: "conflict".into(),
            reason: format!("r{pick}"),
        },
        PipelineEvent::MergeFailedFinal {
            reason: format!("r{pick}"),
        },
        PipelineEvent::Accepted,
        PipelineEvent::Block {
            reason: format!("r{pick}"),
        },
        PipelineEvent::Unblock,
        PipelineEvent::Abandon,
        PipelineEvent::Supersede {
            by: story(pick as u8),
        },
        PipelineEvent::ReviewHold {
            reason: format!("r{pick}"),
        },
    ]
}

fn all_exec_events(t: Timestamp) -> Vec<ExecutionEvent> {
    vec![
        ExecutionEvent::SpawnRequested {
            agent: "coder".into(),
        },
        ExecutionEvent::SpawnedSuccessfully,
        ExecutionEvent::Heartbeat,
        ExecutionEvent::HitRateLimit {
            resume_at: t.add_secs(60),
        },
        ExecutionEvent::Exited { exit_code: 0 },
        ExecutionEvent::Stopped,
        ExecutionEvent::Reset,
    ]
}

fn story(i: u8) -> StoryId {
    sid(&format!("s{}", i % STORIES))
}

/// Rejections an honest exchange may see: ops of a quarantined or removed author sent by
/// a node that did not know yet, and (for replicas fed in random order) ops that arrive
/// before their author's admission (re-sent later).
fn check_rejections(r: &huskies_core::IngestReport, allow_unknown: bool) {
    for rej in &r.rejected {
        let ok = match rej.reason {
            RejectReason::Quarantined(_) | RejectReason::Voided { .. } => true,
            RejectReason::UnknownAuthor(_) => allow_unknown,
            _ => false,
        };
        assert!(ok, "unexpected rejection {rej:?}");
    }
}

fn deliver(from: &Node, to: &mut Node) -> usize {
    let r = to
        .ingest_bundle(&from.export_since(&to.version_vector()).unwrap())
        .unwrap();
    check_rejections(&r, false);
    r.applied
}

fn settle(nodes: &mut [Node]) {
    for _ in 0..8 {
        let mut applied = 0;
        for i in 0..nodes.len() {
            for j in 0..nodes.len() {
                if i != j {
                    let (a, b) = pair(nodes, i, j);
                    applied += deliver(a, b);
                }
            }
        }
        if applied == 0 {
            return;
        }
    }
    panic!("nodes did not settle");
}

/// One story id's view: the story (or why not) and its history (or why not).
type ById = (
    StoryId,
    Result<Story, ErrorKind>,
    Result<Vec<Transition>, ErrorKind>,
);

/// Everything compared between replicas.
#[derive(Debug, PartialEq, Eq)]
struct View {
    vv: VersionVector,
    stories: Vec<Story>,
    histories: Vec<(StoryId, Vec<Transition>)>,
    /// Every story id the workload uses, deleted or not (error kinds for missing ones).
    by_id: Vec<ById>,
    members: Vec<huskies_core::Member>,
    nodes: Vec<huskies_core::NodeInfo>,
    merge_lock: Option<huskies_core::Lease>,
    stale_lock: Option<huskies_core::Lease>,
    /// Quarantined authors and where their ops stop counting. (The evidence kept may
    /// differ between replicas that saw different pairs of contradicting ops.)
    forks: Vec<(NodeId, u64)>,
}

/// Asserts two views are equal, naming the first field that differs.
fn assert_same(got: &View, want: &View, what: &str) {
    assert_eq!(got.vv, want.vv, "{what}: version vectors");
    assert_eq!(got.members, want.members, "{what}: members");
    assert_eq!(got.forks, want.forks, "{what}: forks");
    assert_eq!(got.nodes, want.nodes, "{what}: nodes");
    assert_eq!(got.merge_lock, want.merge_lock, "{what}: merge lock");
    assert_eq!(got.stale_lock, want.stale_lock, "{what}: stale merge lock");
    for ((id, s1, h1), (_, s2, h2)) in got.by_id.iter().zip(&want.by_id) {
        assert_eq!(s1, s2, "{what}: story {id}");
        assert_eq!(h1, h2, "{what}: history of {id}");
    }
    assert_eq!(got.stories, want.stories, "{what}: stories");
    assert_eq!(got.histories, want.histories, "{what}: histories");
    assert_eq!(got, want, "{what}");
}

/// `cmd`, or `cmd` forced over another node's live claim.
fn force(yes: bool, cmd: Command) -> Command {
    if yes {
        Command::Force(Box::new(cmd))
    } else {
        cmd
    }
}

fn view(n: &Node, now: Timestamp) -> View {
    let s = snapshot(n, now);
    View {
        vv: s.vv,
        stories: s.stories,
        histories: s.histories,
        by_id: (0..STORIES)
            .map(|i| {
                let id = story(i);
                (
                    id.clone(),
                    n.story(&id, now).map(replicated).map_err(|e| e.kind()),
                    n.history(&id).map_err(|e| e.kind()),
                )
            })
            .collect(),
        members: s.members,
        nodes: s.nodes,
        merge_lock: s.merge_lock,
        stale_lock: n.stale_merge_lock(now).unwrap(),
        forks: s.forks.iter().map(|f| (f.author, f.at_seq)).collect(),
    }
}

struct Sim {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    m: RawAuthor,
    m_lamport: u64,
    m_ops: u32,
    equivocated: bool,
    removed: bool,
    now_s: u64,
    log: bool,
}

impl Sim {
    fn new(seed: u64, log: bool) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = TestRng::new(seed);
        let mut a = new_cluster(&dir.path().join("n0"), &mut rng, at(0));
        let b = join(&dir.path().join("n1"), &mut a, Role::Member, &mut rng, at(0));
        let c = join(&dir.path().join("n2"), &mut a, Role::Member, &mut rng, at(0));
        let m = RawAuthor::new(rng.seed32(), a.cluster_id());
        a.execute(
            at(0),
            Command::AddMember {
                node: m.id(),
                role: Role::Member,
            },
        )
        .unwrap();
        let mut nodes = vec![a, b, c];
        settle(&mut nodes);
        Sim {
            dir,
            nodes,
            m,
            m_lamport: 0,
            m_ops: 0,
            equivocated: false,
            removed: false,
            now_s: 1,
            log,
        }
    }

    fn now(&self) -> Timestamp {
        at(self.now_s)
    }

    fn exec(&mut self, i: usize, cmd: Command) {
        let now = self.now();
        let what = format!("{cmd:?}");
        let r = self.nodes[i].execute(now, cmd);
        if self.log {
            eprintln!("  n{i} {what} -> {:?}", r.as_ref().map(|r| (r.seq, r.lamport)));
        }
        if let Err(e) = r {
            assert!(
                !matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Io),
                "n{i} {what}: {e:?}"
            );
        }
    }

    fn stage(&self, i: usize, id: &StoryId) -> Option<Stage> {
        self.nodes[i]
            .story(id, self.now())
            .ok()
            .filter(|s| !s.deleted)
            .map(|s| s.stage)
    }

    fn valid_event(&self, i: usize, id: &StoryId, pick: u16) -> Option<PipelineEvent> {
        let stage = self.stage(i, id)?;
        let valid: Vec<_> = all_events(pick)
            .into_iter()
            .filter(|e| transition(&stage, e, self.now()).is_ok())
            .collect();
        (!valid.is_empty()).then(|| valid[pick as usize % valid.len()].clone())
    }

    fn m_payload(&self, pick: u16) -> Payload {
        let id = story(pick as u8);
        match pick % 4 {
            0 => Payload::StoryCreate {
                story: sid(&format!("m{}", self.m_ops)),
                name: format!("m {pick}"),
                body: None,
                depends_on: vec![],
            },
            1 => Payload::StoryUpdate {
                story: id,
                field: StoryField::Name(format!("by m {pick}")),
            },
            2 => Payload::Claim {
                story: id,
                ttl_secs: 300,
                takes_over: None,
            },
            _ => Payload::Presence {
                label: "m".into(),
                address: None,
            },
        }
    }

    /// The raw member signs its next op with a Lamport just above what `to` has seen.
    fn m_write(&mut self, to: usize, pick: u16) {
        self.m_lamport = self.m_lamport.max(self.nodes[to].lamport()) + 1;
        let op = self.m.next(self.m_lamport, self.now(), self.m_payload(pick));
        self.m_ops += 1;
        let r = self.nodes[to].ingest(vec![op.into_unverified()]).unwrap();
        if self.log {
            eprintln!("  m -> n{to}: {r:?}");
        }
        check_rejections(&r, false);
    }

    /// The raw member signs two different ops for its next seq and gives one to each of
    /// two nodes, then carries on along the first branch (so version-vector sync, which
    /// never re-sends a seq the receiver holds, can see the fork: see
    /// `replication::equivocation_at_the_authors_head_is_detected`).
    fn m_equivocate(&mut self, to: usize, pick: u16) {
        self.m_lamport = self
            .m_lamport
            .max(self.nodes[to].lamport())
            .max(self.nodes[(to + 1) % 3].lamport())
            + 1;
        let x = self.m.peek(self.m_lamport, self.now(), self.m_payload(pick));
        let y = self
            .m
            .peek(self.m_lamport, self.now(), self.m_payload(pick.wrapping_add(1)));
        assert_ne!(x.id(), y.id());
        self.m = self.m.after(&x);
        self.m_ops += 1;
        self.equivocated = true;
        self.m_lamport += 1;
        let x2 = self
            .m
            .next(self.m_lamport, self.now(), self.m_payload(pick.wrapping_add(2)));
        self.m_ops += 1;
        for (op, n) in [(x, to), (y, (to + 1) % 3), (x2, to)] {
            let r = self.nodes[n].ingest(vec![op.into_unverified()]).unwrap();
            if self.log {
                eprintln!("  m (fork) -> n{n}: {r:?}");
            }
            check_rejections(&r, false);
        }
    }

    fn step(&mut self, s: Step) {
        let i = (s.node % 3) as usize;
        let id = story(s.story);
        let pick = s.pick;
        self.now_s += 1;
        if self.log {
            eprintln!("t={} n{i} {s:?}", self.now_s);
        }
        match kind_of(u32::from(s.kind)) {
            0 => self.exec(
                i,
                Command::AddStory {
                    id,
                    name: format!("n{i} {pick}"),
                    body: pick.is_multiple_of(2).then(|| format!("body {pick}")),
                    depends_on: vec![],
                },
            ),
            1 => {
                let field = match pick % 3 {
                    0 => StoryField::Name(format!("name {pick}")),
                    1 => StoryField::Body(Some(format!("body {pick}"))),
                    _ => StoryField::DependsOn(vec![story((pick as u8).wrapping_add(1))]),
                };
                self.exec(i, Command::UpdateStory { id, field });
            }
            2 => {
                if let Some(event) = self.valid_event(i, &id, pick) {
                    // Half of them forced: a claim of another node refuses the others.
                    self.exec(i, force(pick % 2 == 1, Command::Event { id, event }));
                }
            }
            3 => self.exec(i, force(true, Command::DeleteStory { id })),
            4 => self.exec(
                i,
                Command::Claim {
                    id,
                    ttl_secs: 30 + u32::from(pick % 600),
                },
            ),
            5 => self.exec(i, force(pick.is_multiple_of(2), Command::Release { id })),
            6 => self.exec(
                i,
                Command::Heartbeat {
                    label: format!("n{i}"),
                    address: pick.is_multiple_of(2).then(|| format!("ws://n{i}:{pick}")),
                },
            ),
            7 => {
                let me = self.nodes[i].node_id();
                let current = self.nodes[i]
                    .execution_state(&id, &me)
                    .unwrap_or(ExecutionState::Idle);
                let now = self.now();
                let valid: Vec<_> = all_exec_events(now)
                    .into_iter()
                    .filter(|e| apply_execution_event(&current, e, now).is_ok())
                    .collect();
                let event = valid[pick as usize % valid.len()].clone();
                self.exec(i, Command::Execution { id, event });
            }
            8 => {
                let cmd = match pick % 3 {
                    0 => Command::AcquireMergeLock {
                        ttl_secs: 30 + u32::from(pick % 300),
                    },
                    1 => Command::ReleaseMergeLock,
                    _ => Command::ClearStaleMergeLock,
                };
                self.exec(i, cmd);
            }
            9 => {
                let j = (i + 1 + (pick % 2) as usize) % 3;
                let (from, to) = pair(&mut self.nodes, i, j);
                deliver(from, to);
                if pick.is_multiple_of(3) {
                    deliver(to, from);
                }
            }
            10 => {
                // After a full sync the nodes' clocks are equal (unless one of them still
                // counts an op that was voided later), so the three writes below share
                // one Lamport timestamp.
                settle(&mut self.nodes);
                let event = self.valid_event(0, &id, pick);
                for k in 0..3 {
                    let cmd = match pick % 4 {
                        0 => Command::UpdateStory {
                            id: id.clone(),
                            field: StoryField::Name(format!("tie n{k}")),
                        },
                        1 => Command::Claim {
                            id: id.clone(),
                            ttl_secs: 120,
                        },
                        2 => Command::Force(Box::new(match &event {
                            Some(e) => Command::Event {
                                id: id.clone(),
                                event: e.clone(),
                            },
                            None => Command::DeleteStory { id: id.clone() },
                        })),
                        _ => Command::AcquireMergeLock { ttl_secs: 120 },
                    };
                    self.exec(k, cmd);
                }
            }
            11 => self.now_s += u64::from(pick % 200),
            12 => {
                if !self.equivocated || pick.is_multiple_of(2) {
                    self.m_write(i, pick);
                }
            }
            13 => {
                // (Not after a removal: version-vector sync could then never show the
                // fork, see `m_equivocate`.)
                if !self.equivocated && !self.removed {
                    self.m_equivocate(i, pick);
                }
            }
            14 => {
                if !self.removed && !self.equivocated {
                    self.removed = true;
                    let m = self.m.id();
                    self.exec(0, Command::RemoveMember { node: m });
                }
            }
            _ => unreachable!(),
        }
    }

    /// Every op any node holds, plus fork evidence.
    fn pool(&self) -> Vec<SignedOp> {
        let mut all: Vec<SignedOp> = Vec::new();
        for n in &self.nodes {
            for op in n.ops_since(&VersionVector::default()).unwrap() {
                if !all.iter().any(|o| o.id() == op.id()) {
                    all.push(op);
                }
            }
        }
        all
    }

    /// Runs the end of a case: full sync of the nodes, then fresh replicas fed the pool
    /// in random order; asserts everyone agrees.
    fn finish(mut self, delivery_seed: u64) -> View {
        let end = at(self.now_s + 10);
        settle(&mut self.nodes);
        let reference = view(&self.nodes[0], end);
        if self.log {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!("== n{i} {:?}", n.node_id());
                for o in n.log(None).unwrap() {
                    eprintln!(
                        "  {:?} seq {} l {} {} {:?} {}",
                        o.author, o.seq, o.lamport, o.kind, o.story, o.wall
                    );
                }
            }
        }
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            assert_same(
                &view(n, end),
                &reference,
                &format!("node n{i} vs n0 after a full sync"),
            );
        }
        for n in &self.nodes {
            let report = n.verify(|_| {}).unwrap();
            assert!(report.ok, "{:?}", report.problems);
        }
        if self.equivocated && !self.removed {
            assert!(
                reference.forks.iter().any(|(a, _)| *a == self.m.id()),
                "the equivocation was detected: {:?}",
                reference.forks
            );
        }

        let pool = self.pool();
        let mut rng = TestRng::new(delivery_seed);
        let cluster = self.nodes[0].cluster_id();
        for r in 0..2 {
            let mut key_rng = TestRng::new(delivery_seed ^ (r + 1));
            let mut replica = outsider(
                &self.dir.path().join(format!("r{r}")),
                cluster,
                &mut key_rng,
                at(0),
            );
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(rounds <= 12, "replica r{r} does not converge");
                let mut delivery: Vec<SignedOp> = Vec::new();
                for op in &pool {
                    for _ in 0..1 + rng.below(3).saturating_sub(1) {
                        delivery.push(op.clone());
                    }
                }
                rng.shuffle(&mut delivery);
                let mut applied = 0;
                while !delivery.is_empty() {
                    let n = (1 + rng.below(8)).min(delivery.len());
                    let batch: Vec<SignedOp> = delivery.drain(..n).collect();
                    let report = if rng.chance(50) {
                        replica.ingest(unverified(batch)).unwrap()
                    } else {
                        replica
                            .ingest_bundle(&huskies_core::encode_bundle(batch.iter()))
                            .unwrap()
                    };
                    check_rejections(&report, true);
                    applied += report.applied;
                }
                if applied == 0 && rounds > 1 {
                    break;
                }
            }
            assert_eq!(replica.buffered_ops(), 0, "replica r{r} still waits for ops");
            assert_same(
                &view(&replica, end),
                &reference,
                &format!("replica r{r} vs the nodes"),
            );
            let report = replica.verify(|_| {}).unwrap();
            assert!(report.ok, "{:?}", report.problems);
        }
        reference
    }
}

fn run_case(key_seed: u64, delivery_seed: u64, steps: &[Step], log: bool) -> View {
    let mut sim = Sim::new(key_seed, log);
    for s in steps {
        sim.step(*s);
    }
    sim.finish(delivery_seed)
}

/// What a case exercised, for the seeded driver's summary.
#[derive(Debug, Default)]
struct Coverage {
    cases: usize,
    forks: usize,
    conflicts: usize,
    lamport_ties: usize,
    tombstones: usize,
    removals: usize,
    claims: usize,
}

impl Coverage {
    fn add(&mut self, v: &View) {
        self.cases += 1;
        self.forks += usize::from(!v.forks.is_empty());
        self.conflicts += usize::from(v.stories.iter().any(|s| !s.conflicts.is_empty()));
        self.lamport_ties += usize::from(v.histories.iter().any(|(_, h)| {
            h.windows(2)
                .any(|w| w[0].lamport == w[1].lamport && w[0].author != w[1].author)
        }));
        self.tombstones += usize::from(v.by_id.iter().any(|(_, s, _)| matches!(s, Ok(s) if s.deleted)));
        self.removals += usize::from(v.members.iter().any(|m| m.removed));
        self.claims += usize::from(v.stories.iter().any(|s| s.claim.is_some()));
    }
}

fn random_steps(rng: &mut TestRng, n: usize) -> Vec<Step> {
    (0..n)
        .map(|_| Step {
            node: rng.below(3) as u8,
            kind: rng.below(256) as u8,
            story: rng.below(256) as u8,
            pick: rng.below(65536) as u16,
        })
        .collect()
}

/// Seeded loop: prints its seed; `HUSKIES_TEST_SEED=<seed>` replays it (add
/// `HUSKIES_TEST_LOG=1` to trace every step).
#[test]
fn random_workloads_converge_seeded() {
    let seed = test_seed();
    let log = std::env::var_os("HUSKIES_TEST_LOG").is_some();
    let cases: usize = std::env::var("HUSKIES_TEST_CASES").map_or(16, |c| c.parse().unwrap());
    let mut rng = TestRng::new(seed);
    let mut coverage = Coverage::default();
    for case in 0..cases {
        let key_seed = rng.next_u64();
        let delivery_seed = rng.next_u64();
        let steps = random_steps(&mut rng, 80);
        if log {
            eprintln!("case {case}");
        }
        coverage.add(&run_case(key_seed, delivery_seed, &steps, log));
    }
    eprintln!("{coverage:?}");
}

fn step_strategy() -> impl Strategy<Value = Step> {
    (0u8..3, any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(node, kind, story, pick)| Step {
        node,
        kind,
        story,
        pick,
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_workloads_converge(
        key_seed in any::<u64>(),
        delivery_seed in any::<u64>(),
        steps in prop::collection::vec(step_strategy(), 1..80),
    ) {
        run_case(key_seed, delivery_seed, &steps, false);
    }
}

/// Hand-picked: every node writes the same register at the same Lamport, a tombstone
/// races updates, and the raw member equivocates; fed to replicas in random order.
#[test]
fn ties_tombstones_and_equivocation_converge() {
    let s = |node, kind_name: u8, story, pick| Step {
        node,
        kind: kind_index(kind_name),
        story,
        pick,
    };
    let steps = vec![
        s(0, 0, 0, 0),
        s(1, 0, 1, 0),
        s(2, 0, 2, 0),
        s(0, 10, 0, 0), // tie: name
        s(0, 10, 1, 1), // tie: claim
        s(0, 10, 0, 2), // tie: transition from the same stage
        s(0, 10, 0, 3), // tie: merge lock
        s(0, 3, 1, 0),  // n0 deletes s1 ...
        s(1, 1, 1, 0),  // ... while n1 renames it
        s(1, 2, 1, 0),  // ... and moves it
        s(2, 12, 0, 0), // the raw member writes
        s(2, 9, 0, 0),
        s(1, 13, 0, 5), // and equivocates between n1 and n2
        s(1, 12, 0, 1),
        s(0, 9, 0, 3),
        s(2, 2, 2, 7),
    ];
    for seed in 0..3 {
        let v = run_case(1000 + seed, 2000 + seed, &steps, false);
        // The scenario did what it says.
        assert_eq!(v.forks.len(), 1, "the raw member is quarantined");
        assert!(v.members.iter().any(|m| m.quarantined));
        let s1 = &v.by_id[1].1;
        assert!(matches!(s1, Ok(s) if s.deleted), "{s1:?}");
        let s0 = v.stories.iter().find(|s| s.id == story(0)).unwrap();
        assert!(s0.name.starts_with("tie n"), "{}", s0.name);
        assert_eq!(s0.conflicts.len(), 2, "three transitions from one stage");
        let h0 = &v.histories.iter().find(|(id, _)| *id == story(0)).unwrap().1;
        assert!(h0
            .windows(2)
            .any(|w| w[0].lamport == w[1].lamport && w[0].author < w[1].author));
    }
}

/// The raw `kind` byte that maps to a step kind (inverse of `kind_of`).
fn kind_index(kind: u8) -> u8 {
    (0..=255u8).find(|k| kind_of(u32::from(*k)) == kind).unwrap()
}
