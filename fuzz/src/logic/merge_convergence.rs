//! `merge_convergence`: 2–4 replicas (real nodes in a temporary directory) run a script of
//! local commands while ops travel between them on a schedule the fuzzer picks: any subset,
//! any order (gaps are buffered), duplicates, partitions. At the end the partitions heal and
//! everyone syncs; then
//!
//! - every replica holds every acknowledged op and shows the same projection;
//! - that projection equals [`super::model::Model`] of the acknowledged ops: the oracle is
//!   the reference model written in this target, not the code under test.

use arbitrary::{Arbitrary, Unstructured};
use huskies_core::{Command, InitMode, Node, Role, SignedOp, StoryField, StoryId, Timestamp, VersionVector};

use super::model::Model;
use super::ops::EventSpec;
use super::{at_ms, config, snapshot, story_id, structured, text, until_empty, FixedRng};

/// A local command.
#[derive(Arbitrary, Debug)]
pub enum Cmd {
    /// Add a story.
    Add {
        /// Story.
        story: u8,
        /// Name choice.
        name: u8,
    },
    /// Rename.
    Name {
        /// Story.
        story: u8,
        /// Name choice.
        value: u8,
    },
    /// New body.
    Body {
        /// Story.
        story: u8,
        /// Body choice.
        value: Option<u8>,
    },
    /// New dependencies.
    Deps {
        /// Story.
        story: u8,
        /// Dependencies.
        value: Vec<u8>,
    },
    /// A pipeline event.
    Event {
        /// Story.
        story: u8,
        /// Event.
        event: EventSpec,
    },
    /// The `pick`-th event (cyclically) that the replica's transition table accepts from
    /// the story's current stage there: moves stories along the pipeline far more often than
    /// a blind event would.
    Progress {
        /// Story.
        story: u8,
        /// Which acceptable event.
        pick: u8,
    },
    /// Tombstone.
    Delete {
        /// Story.
        story: u8,
    },
    /// Claim.
    Claim {
        /// Story.
        story: u8,
        /// TTL choice.
        ttl: u8,
    },
    /// Release.
    Release {
        /// Story.
        story: u8,
    },
    /// Heartbeat.
    Heartbeat {
        /// Label choice.
        label: u8,
    },
    /// Take the merge lock.
    Lock {
        /// TTL choice.
        ttl: u8,
    },
    /// Release the merge lock.
    Unlock,
    /// Clear a stale merge lock.
    ClearLock,
}

/// How a delivery orders what it sends.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Order {
    /// As the sender lists them (Lamport order).
    AsIs,
    /// Reversed.
    Reverse,
    /// Rotated left.
    Rotate(u8),
    /// Every other op, then the rest.
    Interleave,
}

/// One step of the script.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// A replica runs a command (refusals are fine: nothing is written).
    Run {
        /// Replica.
        replica: u8,
        /// Command.
        cmd: Cmd,
    },
    /// `from` sends `to` what `to` lacks by version vector: `take` ops of it (0 = all),
    /// after reordering, `dup` of them twice.
    Deliver {
        /// Sender.
        from: u8,
        /// Receiver.
        to: u8,
        /// Order.
        order: Order,
        /// How many.
        take: u8,
        /// Send the first `dup` again at the end.
        dup: u8,
    },
    /// Replicas whose bit is set can only talk to each other (0 heals).
    Partition(u8),
    /// Time passes (seconds).
    Advance(u8),
}

/// The input.
#[derive(Debug)]
pub struct Input {
    /// 2 + this % 3 replicas.
    pub replicas: u8,
    /// Replica 1 is an admin too.
    pub second_admin: bool,
    /// Replica 0 creates the four stories first and every replica receives them, so the
    /// script can move them along at once.
    pub prelude: bool,
    /// The script (at most 64 steps are used).
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            replicas: u.arbitrary()?,
            second_admin: u.arbitrary()?,
            prelude: u.arbitrary()?,
            steps: until_empty(u)?,
        })
    }
}

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    if let Some(input) = structured::<Input>(data) {
        run(&input);
    }
}

const TTLS: [u32; 4] = [1, 30, 120, 3600];

/// Every event kind once, with fixed arguments.
const EVENTS: [EventSpec; 14] = [
    EventSpec::DepsMet,
    EventSpec::GatesStarted,
    EventSpec::QaSkipped(1),
    EventSpec::GatesPassed(2),
    EventSpec::GatesFailed(0),
    EventSpec::MergeSucceeded(2),
    EventSpec::MergeConflict(1),
    EventSpec::MergeFailedFinal(0),
    EventSpec::Accepted,
    EventSpec::Block(0),
    EventSpec::Unblock,
    EventSpec::Abandon,
    EventSpec::Supersede(1),
    EventSpec::ReviewHold(3),
];

/// The command for `cmd` on `node` (`None`: nothing to do, e.g. no acceptable event).
fn command(cmd: &Cmd, node: &Node, now: Timestamp) -> Option<Command> {
    let id = |s: &u8| story_id(*s);
    Some(match cmd {
        Cmd::Progress { story, pick } => {
            let stage = node.story(&id(story), now).ok()?.stage;
            let ok: Vec<EventSpec> = EVENTS
                .into_iter()
                .filter(|e| super::model::table(&stage, &e.event(), now).is_some())
                .collect();
            if ok.is_empty() {
                return None;
            }
            Command::Event {
                id: id(story),
                event: ok[usize::from(*pick) % ok.len()].event(),
            }
        }
        Cmd::Add { story, name } => Command::AddStory {
            id: id(story),
            name: text(*name),
            body: None,
            depends_on: vec![],
        },
        Cmd::Name { story, value } => Command::UpdateStory {
            id: id(story),
            field: StoryField::Name(text(*value)),
        },
        Cmd::Body { story, value } => Command::UpdateStory {
            id: id(story),
            field: StoryField::Body(value.map(text)),
        },
        Cmd::Deps { story, value } => Command::UpdateStory {
            id: id(story),
            field: StoryField::DependsOn(value.iter().take(3).map(id).collect()),
        },
        Cmd::Event { story, event } => Command::Event {
            id: id(story),
            event: event.event(),
        },
        Cmd::Delete { story } => Command::DeleteStory { id: id(story) },
        Cmd::Claim { story, ttl } => Command::Claim {
            id: id(story),
            ttl_secs: TTLS[usize::from(*ttl) % 4],
        },
        Cmd::Release { story } => Command::Release { id: id(story) },
        Cmd::Heartbeat { label } => Command::Heartbeat {
            label: text(*label),
            address: None,
        },
        Cmd::Lock { ttl } => Command::AcquireMergeLock {
            ttl_secs: TTLS[usize::from(*ttl) % 4],
        },
        Cmd::Unlock => Command::ReleaseMergeLock,
        Cmd::ClearLock => Command::ClearStaleMergeLock,
    })
}

/// Runs a local command and returns its op, if the replica accepted it.
fn run_local(node: &mut Node, now: Timestamp, cmd: Command) -> Option<SignedOp> {
    let receipt = node.execute(now, cmd).ok()?;
    let op = node
        .op_at(&node.node_id(), receipt.seq)
        .expect("op_at")
        .expect("an acknowledged op is stored");
    assert_eq!(op.id(), receipt.op_id);
    Some(op)
}

fn deliver(
    nodes: &mut [Node],
    from: usize,
    to: usize,
    pick: impl FnOnce(Vec<SignedOp>) -> Vec<SignedOp>,
) -> usize {
    let ops = nodes[from]
        .ops_since(&nodes[to].version_vector())
        .expect("ops_since");
    let ops = pick(ops);
    if ops.is_empty() {
        return 0;
    }
    let report = nodes[to]
        .ingest(ops.into_iter().map(SignedOp::into_unverified).collect())
        .expect("ingest as a call");
    assert!(
        report.rejected.is_empty(),
        "replica {to} refused ops of replica {from}'s store: {:?}",
        report.rejected
    );
    report.applied
}

/// Runs the target on a decoded input.
pub fn run(input: &Input) {
    let dir = tempfile::tempdir().expect("temp dir");
    let n = 2 + usize::from(input.replicas % 3);
    let mut now = at_ms(0);
    let mut acked: Vec<SignedOp> = Vec::new();
    let admin = Node::init(
        &dir.path().join("r0"),
        InitMode::NewCluster {
            name: "converge".into(),
        },
        &mut FixedRng::new(100),
        now,
        config(),
    )
    .expect("init admin");
    acked.push(admin.op_at(&admin.node_id(), 1).expect("op_at").expect("genesis"));
    let cluster = admin.cluster_id();
    let mut nodes = vec![admin];
    for i in 1..n {
        let node = Node::init(
            &dir.path().join(format!("r{i}")),
            InitMode::Join { cluster },
            &mut FixedRng::new(100 + i as u64),
            now,
            config(),
        )
        .expect("init replica");
        let role = if i == 1 && input.second_admin {
            Role::Admin
        } else {
            Role::Member
        };
        let cmd = Command::AddMember {
            node: node.node_id(),
            role,
        };
        acked.extend(run_local(&mut nodes[0], now, cmd));
        nodes.push(node);
    }
    if input.prelude {
        for s in 0..4 {
            let cmd = Command::AddStory {
                id: story_id(s),
                name: text(s),
                body: None,
                depends_on: vec![],
            };
            acked.extend(run_local(&mut nodes[0], now, cmd));
        }
    }
    for i in 1..n {
        deliver(&mut nodes, 0, i, |ops| ops);
    }
    let mut groups = 0u8;
    for step in input.steps.iter().take(64) {
        match step {
            Step::Run { replica, cmd } => {
                let r = usize::from(*replica) % n;
                if let Some(cmd) = command(cmd, &nodes[r], now) {
                    acked.extend(run_local(&mut nodes[r], now, cmd));
                }
            }
            Step::Deliver {
                from,
                to,
                order,
                take,
                dup,
            } => {
                let (from, to) = (usize::from(*from) % n, usize::from(*to) % n);
                let side = |i: usize| groups >> i & 1;
                if from == to || side(from) != side(to) {
                    continue;
                }
                deliver(&mut nodes, from, to, |mut ops| {
                    match order {
                        Order::AsIs => {}
                        Order::Reverse => ops.reverse(),
                        Order::Rotate(k) if !ops.is_empty() => {
                            let k = usize::from(*k) % ops.len();
                            ops.rotate_left(k)
                        }
                        Order::Rotate(_) => {}
                        Order::Interleave => {
                            let (even, odd): (Vec<_>, Vec<_>) =
                                ops.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
                            ops = even.into_iter().chain(odd).map(|(_, o)| o).collect();
                        }
                    }
                    if *take > 0 {
                        ops.truncate(usize::from(*take));
                    }
                    let again: Vec<SignedOp> = ops.iter().take(usize::from(*dup % 4)).cloned().collect();
                    ops.extend(again);
                    ops
                });
            }
            Step::Partition(mask) => groups = *mask,
            Step::Advance(secs) => now = now.add_secs(u64::from(*secs)),
        }
    }
    // Heal and sync every pair until nothing moves.
    for round in 0.. {
        assert!(round < 8, "replicas do not converge after the partitions heal");
        let mut moved = 0;
        for from in 0..n {
            for to in 0..n {
                if from != to {
                    moved += deliver(&mut nodes, from, to, |ops| ops);
                }
            }
        }
        if moved == 0 {
            break;
        }
    }
    check(&nodes, &acked, now);
}

fn check(nodes: &[Node], acked: &[SignedOp], now: Timestamp) {
    let mut expected_vv = VersionVector::default();
    for op in acked {
        let c = op.content();
        expected_vv.set(c.author, expected_vv.get(&c.author).max(c.seq));
    }
    let first = snapshot(&nodes[0], now);
    assert_eq!(first.vv, expected_vv, "replica 0 lacks acknowledged ops");
    for (i, node) in nodes.iter().enumerate().skip(1) {
        assert_eq!(snapshot(node, now), first, "replica {i} differs from replica 0");
        assert_eq!(node.buffered_ops(), 0, "replica {i} still buffers ops");
    }
    let model = Model::new(acked);
    if super::verbose() {
        let transitions: usize = model.stories.values().map(|s| s.history.len()).sum();
        let conflicts: usize = model.stories.values().map(|s| s.conflicts().len()).sum();
        eprintln!(
            "merge_convergence: {} replicas, {} acknowledged ops, {} stories, {transitions} transitions, {conflicts} conflicts, lock {:?}",
            nodes.len(),
            acked.len(),
            model.stories.len(),
            first.merge_lock.is_some()
        );
    }
    let stale_ms = i64::try_from(config().stale_after_secs * 1000).expect("small");
    let node = &nodes[0];
    let mut live: Vec<&StoryId> = Vec::new();
    for (id, m) in &model.stories {
        if m.created.is_none() {
            continue;
        }
        let story = node.story(id, now).expect("a created story is found");
        assert_eq!(story.deleted, m.deleted.is_some(), "{id}: tombstone");
        if m.deleted.is_none() {
            live.push(id);
        }
        assert_eq!(story.name, m.name.as_ref().expect("created").value, "{id}: name");
        assert_eq!(story.body, m.body.as_ref().expect("created").value, "{id}: body");
        assert_eq!(
            story.depends_on,
            m.depends_on.as_ref().expect("created").value,
            "{id}: depends_on"
        );
        assert_eq!(story.stage, m.stage(), "{id}: stage");
        let conflicts: Vec<_> = story.conflicts.iter().map(|c| c.op_id).collect();
        assert_eq!(conflicts, m.conflicts(), "{id}: conflicts");
        assert_eq!(
            story.consecutive_merge_failures,
            m.consecutive_merge_failures(),
            "{id}: consecutive merge failures"
        );
        assert_eq!(
            story.claim,
            model.live(m.claims.current(), now, stale_ms),
            "{id}: live claim"
        );
        assert_eq!(
            node.history(id).expect("history").len(),
            m.history.len(),
            "{id}: history length"
        );
    }
    let shown: Vec<&StoryId> = first.stories.iter().map(|s| &s.id).collect();
    assert_eq!(shown, live, "live stories");
    assert_eq!(
        first.merge_lock,
        model.live(model.lock.current(), now, stale_ms),
        "merge lock"
    );
}
