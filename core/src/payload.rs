//! What an op says: the payloads of the domain model.

use serde::{Deserialize, Serialize};

use crate::execution::ExecutionState;
use crate::id::{NodeId, OpId, StoryId};
use crate::pipeline::{PipelineEvent, Stage};

/// Longest short text field (names, branches, reasons, labels, addresses), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest story body, in bytes. Bodies are descriptions, not attachments.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Most dependencies one story may list.
pub const MAX_DEPENDS_ON: usize = 64;
/// Longest claim or lock lease: one week. Longer leases outlive a dead node for too long.
pub const MAX_TTL_SECS: u32 = 7 * 24 * 3600;
/// Most authors one heartbeat's `seen` list may name: far more nodes than a cluster has,
/// and small enough (about 40 bytes each) to keep a heartbeat well under `MAX_OP_BYTES`.
pub const MAX_SEEN_AUTHORS: usize = 1024;

/// A member's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// May add and remove members.
    Admin,
    /// May write stories, claims, locks and its own subspace.
    Member,
}

impl Role {
    /// `admin` or `member`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

/// A change to one LWW field of a story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoryField {
    /// New name.
    Name(String),
    /// New body (or none).
    Body(Option<String>),
    /// New dependency list.
    DependsOn(Vec<StoryId>),
}

/// The payload of one op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// The first op of a cluster; its author is the first admin and the cluster id is
    /// derived from it (see `derive_cluster_id` in `op.rs`).
    Genesis {
        /// Human name of the cluster.
        name: String,
        /// Random bytes so two clusters with the same name and admin differ.
        nonce: [u8; 16],
    },
    /// Admit a node (admin only).
    MemberAdd {
        /// The node's key.
        node: NodeId,
        /// Its role.
        role: Role,
    },
    /// Remove a node (admin only). Its ops with `seq > cutoff_seq` are void on every replica,
    /// which makes the removal independent of the order in which replicas learn of it.
    MemberRemove {
        /// The node removed.
        node: NodeId,
        /// The last of its ops that stays valid.
        cutoff_seq: u64,
    },
    /// The author hands its membership to a new key; the author's later ops are void.
    KeyRotate {
        /// The new key.
        new_key: NodeId,
        /// The new key's signature over the rotation statement, proving it is held.
        proof: [[u8; 32]; 2],
    },
    /// A new story.
    StoryCreate {
        /// Its id.
        story: StoryId,
        /// Its name.
        name: String,
        /// Optional description.
        body: Option<String>,
        /// Stories it depends on.
        depends_on: Vec<StoryId>,
    },
    /// Set one field of a story (LWW).
    StoryUpdate {
        /// The story.
        story: StoryId,
        /// The field and its new value.
        field: StoryField,
    },
    /// A pipeline transition, recording the stage it was made from and the transition that
    /// stage came from (`base`), so concurrent transitions are detected.
    Transition {
        /// The story.
        story: StoryId,
        /// The event.
        event: PipelineEvent,
        /// The stage the author saw.
        from: Stage,
        /// The op id of the transition that produced `from` (none when `from` is the
        /// initial backlog).
        base: Option<OpId>,
    },
    /// Tombstone: the story is deleted (remove wins over concurrent updates).
    StoryDelete {
        /// The story.
        story: StoryId,
    },
    /// Claim a story for `ttl_secs` from the op's wall time.
    Claim {
        /// The story.
        story: StoryId,
        /// Lease length.
        ttl_secs: u32,
        /// Taking over a lease that is no longer live: that holder's leases up to this
        /// Lamport timestamp stop counting, so they cannot come back later (e.g. when the
        /// old holder's heartbeat resumes after the new holder released).
        takes_over: Option<(NodeId, u64)>,
    },
    /// Give up a claim.
    Release {
        /// The story.
        story: StoryId,
    },
    /// Take the cluster-wide merge lock for `ttl_secs`.
    LockAcquire {
        /// Lease length.
        ttl_secs: u32,
    },
    /// The author releases the merge lock it holds.
    LockRelease,
    /// Clear a stale merge lock left by `holder` (e.g. a dead node): every entry of
    /// `holder` with a Lamport timestamp up to `through` stops counting.
    LockClear {
        /// The node whose lock is cleared.
        holder: NodeId,
        /// The highest of its lock timestamps cleared.
        through: u64,
    },
    /// The author's presence and heartbeat (the op's wall time is the heartbeat).
    Presence {
        /// Human label.
        label: String,
        /// Where peers can reach it (e.g. `ws://10.0.0.5:3001/crdt-sync`).
        address: Option<String>,
    },
    /// The author's execution state for a story.
    Execution {
        /// The story.
        story: StoryId,
        /// The author's new state.
        state: ExecutionState,
    },
    /// The author's presence and heartbeat, like [`Payload::Presence`], plus what it has
    /// seen: per author, the Lamport timestamp of that author's newest op it held (each
    /// chain is contiguous and its Lamports increase, so it held every op of that author up
    /// to there). Any node can tell from it whether the author has seen a claim op: that is
    /// what confirms claims (`docs/protocol.md`, "Claims"). Added at index 15 (op format 1
    /// readers of older builds refuse it as malformed; this build reads both).
    Heartbeat {
        /// Human label.
        label: String,
        /// Where peers can reach it.
        address: Option<String>,
        /// `(author, Lamport of its newest op held)`, strictly ascending by author.
        seen: Vec<(NodeId, u64)>,
    },
    /// A pipeline transition, a story removal or a release made while `holder` held a live
    /// claim on the story: the author overrode that claim on purpose (`--force`). The
    /// effect is `inner`'s, and a forced release also ends `holder`'s lease (its entries up
    /// to Lamport `through` stop counting). Index 16.
    Forced {
        /// The node whose live claim was overridden.
        holder: NodeId,
        /// The Lamport timestamp of that claim.
        through: u64,
        /// The op's effect: a `Transition`, `StoryDelete` or `Release`.
        inner: Box<Payload>,
    },
}

impl Payload {
    /// A short kind name for logs: `genesis`, `story_create`, `transition`, ...
    pub fn kind_str(&self) -> &'static str {
        match self {
            Payload::Genesis { .. } => "genesis",
            Payload::MemberAdd { .. } => "member_add",
            Payload::MemberRemove { .. } => "member_remove",
            Payload::KeyRotate { .. } => "key_rotate",
            Payload::StoryCreate { .. } => "story_create",
            Payload::StoryUpdate { .. } => "story_update",
            Payload::Transition { .. } => "transition",
            Payload::StoryDelete { .. } => "story_delete",
            Payload::Claim { .. } => "claim",
            Payload::Release { .. } => "release",
            Payload::LockAcquire { .. } => "lock_acquire",
            Payload::LockRelease => "lock_release",
            Payload::LockClear { .. } => "lock_clear",
            Payload::Presence { .. } => "presence",
            Payload::Execution { .. } => "execution",
            Payload::Heartbeat { .. } => "heartbeat",
            Payload::Forced { .. } => "forced",
        }
    }

    /// The story this op is about, if any.
    pub fn story(&self) -> Option<&StoryId> {
        match self {
            Payload::StoryCreate { story, .. }
            | Payload::StoryUpdate { story, .. }
            | Payload::Transition { story, .. }
            | Payload::StoryDelete { story }
            | Payload::Claim { story, .. }
            | Payload::Release { story }
            | Payload::Execution { story, .. } => Some(story),
            Payload::Forced { inner, .. } => inner.story(),
            Payload::Genesis { .. }
            | Payload::MemberAdd { .. }
            | Payload::MemberRemove { .. }
            | Payload::KeyRotate { .. }
            | Payload::LockAcquire { .. }
            | Payload::LockRelease
            | Payload::LockClear { .. }
            | Payload::Presence { .. }
            | Payload::Heartbeat { .. } => None,
        }
    }

    /// Checks sizes and ranges; applied to local and remote payloads alike.
    pub fn validate(&self) -> Result<(), String> {
        fn text(what: &str, s: &str) -> Result<(), String> {
            if s.len() > MAX_TEXT_BYTES {
                return Err(format!(
                    "{what} is {} bytes; the limit is {MAX_TEXT_BYTES}",
                    s.len()
                ));
            }
            Ok(())
        }
        fn ttl(t: u32) -> Result<(), String> {
            if t == 0 || t > MAX_TTL_SECS {
                return Err(format!("ttl must be 1 to {MAX_TTL_SECS} seconds, got {t}"));
            }
            Ok(())
        }
        fn body(b: &Option<String>) -> Result<(), String> {
            match b {
                Some(b) if b.len() > MAX_BODY_BYTES => Err(format!(
                    "story body is {} bytes; the limit is {MAX_BODY_BYTES}",
                    b.len()
                )),
                _ => Ok(()),
            }
        }
        fn deps(d: &[StoryId]) -> Result<(), String> {
            if d.len() > MAX_DEPENDS_ON {
                return Err(format!(
                    "a story may depend on at most {MAX_DEPENDS_ON} stories, got {}",
                    d.len()
                ));
            }
            Ok(())
        }
        fn stage(s: &Stage) -> Result<(), String> {
            match s {
                Stage::Merge { feature_branch, .. } => text("feature branch", feature_branch),
                Stage::MergeFailure { kind, reason } => {
                    text("failure kind", kind)?;
                    text("reason", reason)
                }
                Stage::Done { merge_commit, .. } => text("merge commit", merge_commit),
                Stage::Archived { reason, .. } => match reason {
                    crate::pipeline::ArchiveReason::Blocked { reason }
                    | crate::pipeline::ArchiveReason::MergeFailed { reason }
                    | crate::pipeline::ArchiveReason::ReviewHeld { reason } => text("reason", reason),
                    crate::pipeline::ArchiveReason::Completed
                    | crate::pipeline::ArchiveReason::Abandoned
                    | crate::pipeline::ArchiveReason::Superseded { .. } => Ok(()),
                },
                Stage::Backlog | Stage::Coding | Stage::Qa => Ok(()),
            }
        }
        match self {
            Payload::Genesis { name, .. } => text("cluster name", name),
            Payload::StoryCreate {
                name,
                body: b,
                depends_on,
                ..
            } => {
                text("story name", name)?;
                body(b)?;
                deps(depends_on)
            }
            Payload::StoryUpdate { field, .. } => match field {
                StoryField::Name(n) => text("story name", n),
                StoryField::Body(b) => body(b),
                StoryField::DependsOn(d) => deps(d),
            },
            Payload::Transition { event, from, .. } => {
                for t in event.texts() {
                    text("event field", t)?;
                }
                stage(from)
            }
            Payload::Claim { ttl_secs, .. } | Payload::LockAcquire { ttl_secs } => ttl(*ttl_secs),
            Payload::Presence { label, address } => {
                text("label", label)?;
                address.as_deref().map_or(Ok(()), |a| text("address", a))
            }
            Payload::Heartbeat { label, address, seen } => {
                text("label", label)?;
                address.as_deref().map_or(Ok(()), |a| text("address", a))?;
                if seen.len() > MAX_SEEN_AUTHORS {
                    return Err(format!(
                        "a heartbeat may name at most {MAX_SEEN_AUTHORS} authors, got {}",
                        seen.len()
                    ));
                }
                if seen.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return Err("a heartbeat's seen list must be strictly ascending by author".into());
                }
                Ok(())
            }
            Payload::Forced { inner, .. } => match **inner {
                Payload::Transition { .. } | Payload::StoryDelete { .. } | Payload::Release { .. } => {
                    inner.validate()
                }
                _ => Err(format!("a {} op cannot be forced", inner.kind_str())),
            },
            Payload::Execution { state, .. } => match state {
                ExecutionState::Idle => Ok(()),
                ExecutionState::Pending { agent, .. }
                | ExecutionState::Running { agent, .. }
                | ExecutionState::RateLimited { agent, .. }
                | ExecutionState::Completed { agent, .. } => text("agent name", agent),
            },
            Payload::MemberAdd { .. }
            | Payload::MemberRemove { .. }
            | Payload::KeyRotate { .. }
            | Payload::StoryDelete { .. }
            | Payload::Release { .. }
            | Payload::LockRelease
            | Payload::LockClear { .. } => Ok(()),
        }
    }
}
