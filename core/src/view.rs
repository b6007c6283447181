//! What queries return: plain data built from the projection.

use crate::execution::ExecutionState;
use crate::id::{NodeId, OpId, StoryId};
use crate::payload::Role;
use crate::pipeline::{PipelineEvent, Stage, StageKind};
use crate::projection::{Lease, StoryRecord};
use crate::time::Timestamp;

/// A story as the projection has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Story {
    /// Its id.
    pub id: StoryId,
    /// Its name.
    pub name: String,
    /// Its body.
    pub body: Option<String>,
    /// Stories it depends on.
    pub depends_on: Vec<StoryId>,
    /// The current stage.
    pub stage: Stage,
    /// The live claim, if any (not expired, holder not stale) at the query's `now`.
    pub claim: Option<Lease>,
    /// The live claim is confirmed (see [`ClaimStatus::confirmed`]); false without one.
    pub claim_confirmed: bool,
    /// Tombstoned.
    pub deleted: bool,
    /// Transitions made concurrently with another one, in merge order.
    pub conflicts: Vec<Conflict>,
    /// Each node's execution state for this story.
    pub execution: Vec<(NodeId, ExecutionState)>,
    /// Merge conflicts in a row at the end of the history.
    pub consecutive_merge_failures: u32,
}

/// A transition that was made from a stage other than the one its predecessor in merge
/// order produced: two nodes moved the story at once. The later one by `(lamport, author)`
/// decided the stage; both stay in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The concurrent transition.
    pub op_id: OpId,
    /// Its author.
    pub author: NodeId,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// Its event name.
    pub event: &'static str,
    /// The stage it was made from.
    pub from: StageKind,
    /// The stage it produced.
    pub to: StageKind,
    /// The transition before it in merge order, which it did not build on.
    pub concurrent_with: Option<OpId>,
}

/// One transition of a story's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The op.
    pub op_id: OpId,
    /// Its author.
    pub author: NodeId,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// Its wall time.
    pub at: Timestamp,
    /// The stage it was made from.
    pub from: Stage,
    /// The stage it produced.
    pub to: Stage,
    /// The event.
    pub event: PipelineEvent,
    /// Made concurrently with the transition before it.
    pub conflict: bool,
    /// Made with `--force` while this node held a live claim on the story.
    pub forced_over: Option<NodeId>,
}

/// What this node knows of a story's live claim: who holds it and whether it is confirmed.
///
/// The rule (`docs/protocol.md`, "Claims"): a claim is **confirmed** when it is the story's
/// current claim, it is live, and every *alive* member (a fresh heartbeat) other than the
/// holder and this node has said in a heartbeat that it holds the claim op. Such a member
/// held the claim before any later op of its own, so any claim it made concurrently is
/// already merged here (and would have won or lost already), and any claim it makes after
/// is refused locally while this one is live: no alive member can win against it. A member
/// that is not alive (partitioned away, stopped) is not waited for and can still win with a
/// concurrent claim when it comes back: the documented limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimStatus {
    /// The claim (its holder is `lease.node`).
    pub lease: Lease,
    /// Its Lamport timestamp (the claim op's).
    pub lamport: u64,
    /// No alive member can win against it any more.
    pub confirmed: bool,
    /// The alive members that have not yet shown they hold the claim op (empty when
    /// confirmed).
    pub pending: Vec<NodeId>,
}

/// A claim this node took that another node's claim (or a forced release) overrode while
/// its lease was still running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostClaim {
    /// The story.
    pub story: StoryId,
    /// This node's lease, as it took it.
    pub lease: Lease,
    /// The claim that holds the story now, if any.
    pub winner: Option<Lease>,
}

/// A story's creation, as `Node::story_creation` finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creation {
    /// The create op.
    pub op_id: OpId,
    /// Its author.
    pub author: NodeId,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// Its wall time (`None` if the op is no longer stored).
    pub at: Option<Timestamp>,
}

/// A node's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node.
    pub node: NodeId,
    /// Its label.
    pub label: String,
    /// Where peers reach it.
    pub address: Option<String>,
    /// Its last heartbeat.
    pub last_heartbeat: Timestamp,
    /// Heartbeat fresh at the query's `now`.
    pub alive: bool,
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node.
    pub node: NodeId,
    /// Its role.
    pub role: Role,
    /// Removed (or rotated away): its later ops are void.
    pub removed: bool,
    /// The key it rotated to.
    pub rotated_to: Option<NodeId>,
    /// Quarantined for equivocation.
    pub quarantined: bool,
}

/// A short description of one stored op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpSummary {
    /// The op.
    pub op_id: OpId,
    /// Its author.
    pub author: NodeId,
    /// Its seq.
    pub seq: u64,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// Its wall time.
    pub wall: Timestamp,
    /// Payload kind (`transition`, `claim`, ...).
    pub kind: &'static str,
    /// The story, if any.
    pub story: Option<StoryId>,
}

impl OpSummary {
    /// Summarises a signed op.
    pub fn of(op: &crate::op::SignedOp) -> OpSummary {
        let c = op.content();
        OpSummary {
            op_id: op.id(),
            author: c.author,
            seq: c.seq,
            lamport: c.lamport,
            wall: c.wall,
            kind: c.payload.kind_str(),
            story: c.payload.story().cloned(),
        }
    }
}

/// Evidence that an author signed two different ops for one seq.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForkInfo {
    /// The author, quarantined.
    pub author: NodeId,
    /// The first seq at which its ops stop counting.
    pub at_seq: u64,
    /// The ops kept as evidence.
    pub evidence: Vec<OpId>,
}

/// What `verify` found. A damaged store is reported here (`ok == false`), not as an `Err`.
#[must_use = "a damaged store is reported in VerifyReport::ok / problems, not as an Err"]
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// No problems.
    pub ok: bool,
    /// Ops re-checked.
    pub ops_checked: u64,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// Equivocations on record (not a problem of the store: evidence kept by design).
    pub forks: Vec<ForkInfo>,
}

pub(crate) fn story_view(id: &StoryId, rec: &StoryRecord, claim: Option<ClaimStatus>) -> Story {
    let flags = rec.conflict_flags();
    let conflicts = rec
        .history
        .iter()
        .enumerate()
        .filter(|(i, _)| flags[*i])
        .map(|(i, h)| Conflict {
            op_id: h.op_id,
            author: h.stamp.author,
            lamport: h.stamp.lamport,
            event: h.event.name(),
            from: h.from.kind(),
            to: h.to.kind(),
            concurrent_with: i.checked_sub(1).map(|p| rec.history[p].op_id),
        })
        .collect();
    Story {
        id: id.clone(),
        name: rec.name.as_ref().map(|n| n.value.clone()).unwrap_or_default(),
        body: rec.body.as_ref().and_then(|b| b.value.clone()),
        depends_on: rec
            .depends_on
            .as_ref()
            .map(|d| d.value.clone())
            .unwrap_or_default(),
        stage: rec.stage(),
        claim_confirmed: claim.as_ref().is_some_and(|c| c.confirmed),
        claim: claim.map(|c| c.lease),
        deleted: rec.deleted.is_some(),
        conflicts,
        execution: rec.execution.iter().map(|(n, s)| (*n, s.value.clone())).collect(),
        consecutive_merge_failures: rec.consecutive_merge_failures(),
    }
}

pub(crate) fn history_view(rec: &StoryRecord) -> Vec<Transition> {
    let flags = rec.conflict_flags();
    rec.history
        .iter()
        .zip(flags)
        .map(|(h, conflict)| Transition {
            op_id: h.op_id,
            author: h.stamp.author,
            lamport: h.stamp.lamport,
            at: h.wall,
            from: h.from.clone(),
            to: h.to.clone(),
            event: h.event.clone(),
            conflict,
            forced_over: h.forced,
        })
        .collect()
}
