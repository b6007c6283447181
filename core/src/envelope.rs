//! Lifecycle event envelopes: what leaves a node for automation (NATS JetStream, `huskies
//! events`, the bindings' `events()`).
//!
//! An [`Envelope`] is a pure function of committed ops (or, for the time-based signals, of
//! the projection and a `now` passed in): every node derives the *same* envelope, with the
//! same [`Envelope::id`], for the same event. That is what lets many nodes publish one
//! event and a stream keep it once. The walk over the local log ([`events_after`]) goes in
//! Lamport order from an [`EventCursor`], so a consumer resumes exactly where it stopped.
//! `docs/events.md` is the reference for the types, attributes and subjects.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::Error;
use crate::execution::ExecutionState;
use crate::id::{ClusterId, NodeId, OpId, StoryId};
use crate::node::Node;
use crate::op::{OpContent, UnverifiedOp};
use crate::payload::Payload;
use crate::pipeline::{transition, ArchiveReason, Stage, StageKind};
use crate::time::Timestamp;
use crate::version::VersionVector;
use crate::view::Transition;

/// The envelope format's version (the `version` field).
pub const ENVELOPE_VERSION: &str = "1.0";
/// The `publisher` field: the same on every node, so every node's copy of an event is the
/// same bytes (which node published first is of no consequence to a consumer).
pub const PUBLISHER: &str = "huskies";
/// The first token of every subject (`huskies.<cluster>.<area>.<verb>.<token>.<id>`).
pub const SUBJECT_ROOT: &str = "huskies";
const EVENT_ID_CONTEXT: &str = "huskies 2026-12 event id v1";

/// What happened: each kind is one `type` (`org.huskies.<area>.<verb>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// A story was created (`StoryCreate` op).
    StoryAdded,
    /// A story was tombstoned (`StoryDelete` op).
    StoryRemoved,
    /// A pipeline transition, local or merged from a peer (`Transition` op).
    StoryTransitioned,
    /// A node claimed a story (`Claim` op).
    ClaimTaken,
    /// A node gave up its claim (`Release` op).
    ClaimReleased,
    /// A claim op took over another node's lease that was no longer live: that node lost
    /// the story (emitted with the `claim.taken` of the same op).
    ClaimLost,
    /// Signal: the story's current claim is no longer live (expired, or its holder stopped
    /// heartbeating) and nobody has taken it over.
    ClaimExpired,
    /// A member was admitted (`MemberAdd` op).
    MemberAdded,
    /// A member was removed (`MemberRemove` op).
    MemberRemoved,
    /// A member handed its membership to a new key (`KeyRotate` op).
    MemberRotated,
    /// An author signed two different ops for one seq; it is quarantined.
    ForkDetected,
    /// Signal: a node's execution is `Running` but its heartbeat is stale.
    ExecutionOrphaned,
    /// Signal: a `RateLimited` execution's `resume_at` has passed.
    ExecutionDue,
}

impl EventType {
    /// Every type, for documentation and tests.
    pub const ALL: [EventType; 13] = [
        EventType::StoryAdded,
        EventType::StoryRemoved,
        EventType::StoryTransitioned,
        EventType::ClaimTaken,
        EventType::ClaimReleased,
        EventType::ClaimLost,
        EventType::ClaimExpired,
        EventType::MemberAdded,
        EventType::MemberRemoved,
        EventType::MemberRotated,
        EventType::ForkDetected,
        EventType::ExecutionOrphaned,
        EventType::ExecutionDue,
    ];

    /// The subject area: `story`, `claim`, `member`, `fork` or `execution`.
    pub fn area(self) -> &'static str {
        match self {
            EventType::StoryAdded | EventType::StoryRemoved | EventType::StoryTransitioned => "story",
            EventType::ClaimTaken
            | EventType::ClaimReleased
            | EventType::ClaimLost
            | EventType::ClaimExpired => "claim",
            EventType::MemberAdded | EventType::MemberRemoved | EventType::MemberRotated => "member",
            EventType::ForkDetected => "fork",
            EventType::ExecutionOrphaned | EventType::ExecutionDue => "execution",
        }
    }

    /// The verb: `added`, `transitioned`, `taken`, `orphaned`, ...
    pub fn verb(self) -> &'static str {
        match self {
            EventType::StoryAdded | EventType::MemberAdded => "added",
            EventType::StoryRemoved | EventType::MemberRemoved => "removed",
            EventType::StoryTransitioned => "transitioned",
            EventType::ClaimTaken => "taken",
            EventType::ClaimReleased => "released",
            EventType::ClaimLost => "lost",
            EventType::ClaimExpired => "expired",
            EventType::MemberRotated => "rotated",
            EventType::ForkDetected => "detected",
            EventType::ExecutionOrphaned => "orphaned",
            EventType::ExecutionDue => "due",
        }
    }

    /// The envelope's `type`: `org.huskies.<area>.<verb>`.
    pub fn type_name(self) -> String {
        format!("org.huskies.{}.{}", self.area(), self.verb())
    }

    /// Parses a `type` back.
    pub fn from_type_name(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.type_name() == s)
    }

    /// Signals are derived from state at a `now`, not from one op.
    pub fn is_signal(self) -> bool {
        matches!(
            self,
            EventType::ClaimExpired
                | EventType::ExecutionOrphaned
                | EventType::ExecutionDue
                | EventType::ForkDetected
        )
    }
}

/// One lifecycle event. A plain serde struct: the JSON is the wire format on NATS, the
/// line format of `huskies events` and what the bindings yield.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Deterministic: the same on every node for the same event (32 hex characters; see
    /// [`event_id`]). Doubles as the JetStream message id.
    pub id: String,
    /// `org.huskies.<area>.<verb>` ([`EventType::type_name`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// [`ENVELOPE_VERSION`].
    pub version: String,
    /// When it happened, RFC 3339 UTC: the op's wall time, or for a signal the moment the
    /// condition began (expiry, heartbeat + staleness, `resume_at`).
    pub timestamp: String,
    /// [`PUBLISHER`].
    pub publisher: String,
    /// What the event is about.
    pub attributes: Attributes,
}

/// The envelope's attributes. Fields that do not apply to a type are left out of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Attributes {
    /// The cluster id (64 hex).
    pub cluster: String,
    /// The story id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<String>,
    /// The stage before (the story JSON's `stage` shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Value>,
    /// The stage after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Value>,
    /// The pipeline event name (`deps-met`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The op's author (64 hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// The op id (64 hex): for signals, absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    /// The op's per-author seq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The op's Lamport timestamp (for a claim signal: the claim's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lamport: Option<u64>,
    /// A transition made concurrently with another one (see `Story::conflicts`), as the
    /// deriving node's history had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<bool>,
    /// The node the event is about: claim holder, member, forked author, executing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Extra facts of the type (`name`, `role`, `expires_at`, `agent`, ...).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub detail: serde_json::Map<String, Value>,
}

impl Envelope {
    fn new(kind: EventType, id: String, at: Timestamp, attributes: Attributes) -> Envelope {
        Envelope {
            id,
            kind: kind.type_name(),
            version: ENVELOPE_VERSION.to_string(),
            timestamp: at.to_rfc3339(),
            publisher: PUBLISHER.to_string(),
            attributes,
        }
    }

    /// The event's type, if it is one this build knows.
    pub fn event_type(&self) -> Option<EventType> {
        EventType::from_type_name(&self.kind)
    }

    /// The NATS subject: `huskies.<cluster>.<area>.<verb>.<token>.<id>`, where `<token>` is
    /// the story id (story, claim and execution types) or the node (member and fork types),
    /// escaped by [`subject_token`]. Unique per event, so a stream can refuse a second copy
    /// with `Nats-Expected-Last-Subject-Sequence: 0`.
    pub fn subject(&self) -> String {
        let (area, verb) = match self.event_type() {
            Some(t) => (t.area(), t.verb()),
            None => ("other", "other"),
        };
        let token = self
            .attributes
            .story
            .as_deref()
            .or(self.attributes.node.as_deref())
            .unwrap_or("_");
        format!(
            "{SUBJECT_ROOT}.{}.{area}.{verb}.{}.{}",
            subject_token(&self.attributes.cluster),
            subject_token(token),
            subject_token(&self.id)
        )
    }
}

/// Escapes one subject token: NATS tokens cannot hold `.`, `*`, `>` or whitespace, so those
/// (and `%`, the escape itself) become `%XX`. Injective: distinct inputs stay distinct.
pub fn subject_token(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '.' | '*' | '>' | '%') || c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// The wildcard subject of every event of one cluster (`huskies.<cluster>.>`).
pub fn cluster_subjects(cluster: &ClusterId) -> String {
    format!("{SUBJECT_ROOT}.{}.>", cluster.to_hex())
}

/// An event id: 128 bits of a keyed BLAKE3 over the parts that identify the event (for an
/// op's events: the op id and the event's index within the op; for a signal: its type and
/// the state that raised it), as 32 hex characters.
pub fn event_id(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new_derive_key(EVENT_ID_CONTEXT);
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(&h.finalize().as_bytes()[..16])
}

fn op_event_id(op: &OpId, index: u8) -> String {
    event_id(&[b"op", op.as_bytes(), &[index]])
}

/// RFC 3339 UTC, the contract's time format.
fn time(t: Timestamp) -> Value {
    Value::String(t.to_rfc3339())
}

/// A stage as the CLI contract's story JSON has it: `{"kind": ..., fields}`;
/// `merge_failure`'s own failure kind is `failure_kind`, because `kind` names the stage.
pub fn stage_json(s: &Stage) -> Value {
    let kind = s.kind().as_str();
    match s {
        Stage::Backlog | Stage::Coding | Stage::Qa => json!({ "kind": kind }),
        Stage::Merge {
            feature_branch,
            commits_ahead,
        } => {
            json!({ "kind": kind, "feature_branch": feature_branch, "commits_ahead": commits_ahead.get() })
        }
        Stage::MergeFailure {
            kind: failure,
            reason,
        } => json!({ "kind": kind, "failure_kind": failure, "reason": reason }),
        Stage::Done {
            merged_at,
            merge_commit,
        } => json!({ "kind": kind, "merged_at": time(*merged_at), "merge_commit": merge_commit }),
        Stage::Archived { archived_at, reason } => {
            json!({ "kind": kind, "archived_at": time(*archived_at), "reason": archive_reason_json(reason) })
        }
    }
}

fn archive_reason_json(r: &ArchiveReason) -> Value {
    let kind = r.kind_str();
    match r {
        ArchiveReason::Completed | ArchiveReason::Abandoned => json!({ "kind": kind }),
        ArchiveReason::Superseded { by } => json!({ "kind": kind, "by": by.as_str() }),
        ArchiveReason::Blocked { reason }
        | ArchiveReason::MergeFailed { reason }
        | ArchiveReason::ReviewHeld { reason } => json!({ "kind": kind, "reason": reason }),
    }
}

/// What the deriving node knows of a transition beyond the op: its target stage and
/// whether it was concurrent (from the story's history).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionFacts {
    /// The stage it produced.
    pub to: Stage,
    /// Made concurrently with the transition before it in merge order.
    pub concurrent: bool,
}

/// The envelopes of one committed op, in order (index 0, 1, ...). Pure: `facts` is what
/// the projection says of a transition op (`None` for other payloads, or when the history
/// lacks it: the target is then computed from the op's own `from` and event).
pub fn op_envelopes(op_id: OpId, c: &OpContent, facts: Option<&TransitionFacts>) -> Vec<Envelope> {
    let base = Attributes {
        cluster: c.cluster.to_hex(),
        author: Some(c.author.to_hex()),
        op_id: Some(op_id.to_hex()),
        seq: Some(c.seq),
        lamport: Some(c.lamport),
        ..Attributes::default()
    };
    let one = |kind: EventType, index: u8, attributes: Attributes| {
        Envelope::new(kind, op_event_id(&op_id, index), c.wall, attributes)
    };
    match &c.payload {
        Payload::StoryCreate { story, name, .. } => {
            let mut a = Attributes {
                story: Some(story.as_str().to_string()),
                to: Some(stage_json(&Stage::Backlog)),
                ..base
            };
            a.detail.insert("name".into(), Value::String(name.clone()));
            vec![one(EventType::StoryAdded, 0, a)]
        }
        Payload::StoryDelete { story } => vec![one(
            EventType::StoryRemoved,
            0,
            Attributes {
                story: Some(story.as_str().to_string()),
                ..base
            },
        )],
        Payload::Transition {
            story, event, from, ..
        } => {
            let (to, concurrent) = match facts {
                Some(f) => (Some(f.to.clone()), f.concurrent),
                None => (transition(from, event, c.wall).ok(), false),
            };
            vec![one(
                EventType::StoryTransitioned,
                0,
                Attributes {
                    story: Some(story.as_str().to_string()),
                    from: Some(stage_json(from)),
                    to: to.as_ref().map(stage_json),
                    event: Some(event.name().to_string()),
                    concurrent: Some(concurrent),
                    ..base
                },
            )]
        }
        Payload::Claim {
            story,
            ttl_secs,
            takes_over,
        } => {
            let mut taken = Attributes {
                story: Some(story.as_str().to_string()),
                node: Some(c.author.to_hex()),
                ..base.clone()
            };
            taken.detail.insert("claimed_at".into(), time(c.wall));
            taken
                .detail
                .insert("expires_at".into(), time(c.wall.add_secs(u64::from(*ttl_secs))));
            let mut out = Vec::with_capacity(2);
            if let Some((holder, _)) = takes_over {
                taken
                    .detail
                    .insert("took_over".into(), Value::String(holder.to_hex()));
                out.push(one(EventType::ClaimTaken, 0, taken));
                out.push(claim_lost(op_id, c, story, holder, Some(&c.author)));
            } else {
                out.push(one(EventType::ClaimTaken, 0, taken));
            }
            out
        }
        Payload::Release { story } => vec![one(
            EventType::ClaimReleased,
            0,
            Attributes {
                story: Some(story.as_str().to_string()),
                node: Some(c.author.to_hex()),
                ..base
            },
        )],
        Payload::MemberAdd { node, role } => {
            let mut a = Attributes {
                node: Some(node.to_hex()),
                ..base
            };
            a.detail
                .insert("role".into(), Value::String(role.as_str().into()));
            vec![one(EventType::MemberAdded, 0, a)]
        }
        Payload::MemberRemove { node, cutoff_seq } => {
            let mut a = Attributes {
                node: Some(node.to_hex()),
                ..base
            };
            a.detail.insert("cutoff_seq".into(), json!(cutoff_seq));
            vec![one(EventType::MemberRemoved, 0, a)]
        }
        Payload::KeyRotate { new_key, .. } => {
            let mut a = Attributes {
                node: Some(c.author.to_hex()),
                ..base
            };
            a.detail.insert("new_key".into(), Value::String(new_key.to_hex()));
            vec![one(EventType::MemberRotated, 0, a)]
        }
        Payload::Forced { holder, inner, .. } => {
            // The inner op's events, marked with the claim they overrode; a forced release
            // also ends the holder's lease: it lost the story (index 1).
            let inner_content = OpContent {
                payload: (**inner).clone(),
                ..c.clone()
            };
            let mut out = op_envelopes(op_id, &inner_content, facts);
            for e in &mut out {
                e.attributes
                    .detail
                    .insert("forced_over".into(), Value::String(holder.to_hex()));
            }
            if let Payload::Release { story } = &**inner {
                out.push(claim_lost(op_id, c, story, holder, None));
            }
            out
        }
        Payload::Genesis { .. }
        | Payload::StoryUpdate { .. }
        | Payload::LockAcquire { .. }
        | Payload::LockRelease
        | Payload::LockClear { .. }
        | Payload::Presence { .. }
        | Payload::Heartbeat { .. }
        | Payload::Execution { .. } => Vec::new(),
    }
}

/// The `claim.lost` of `loser` caused by op `op_id` (index 1 of that op): a takeover, a
/// concurrent claim that ranks after the loser's, or a forced release.
pub fn claim_lost(
    op_id: OpId,
    c: &OpContent,
    story: &StoryId,
    loser: &NodeId,
    winner: Option<&NodeId>,
) -> Envelope {
    let mut a = Attributes {
        cluster: c.cluster.to_hex(),
        author: Some(c.author.to_hex()),
        op_id: Some(op_id.to_hex()),
        seq: Some(c.seq),
        lamport: Some(c.lamport),
        story: Some(story.as_str().to_string()),
        node: Some(loser.to_hex()),
        ..Attributes::default()
    };
    a.detail.insert(
        "winner".into(),
        winner.map_or(Value::Null, |w| Value::String(w.to_hex())),
    );
    Envelope::new(EventType::ClaimLost, op_event_id(&op_id, 1), c.wall, a)
}

/// Where a reader of the local log stands: every op of each author up to the version
/// vector's seq is done, and of the op `partial` names, its first `k` events are.
///
/// Text form (what `huskies events` prints and `--since` takes): `<author hex>:<seq>`
/// entries joined by `,`, optionally followed by `@<author hex>:<seq>:<k>`; the empty
/// string is the start of the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventCursor {
    /// Ops done, per author.
    pub vv: VersionVector,
    /// An op whose first `k` events are done: `(author, seq, k)`.
    pub partial: Option<(NodeId, u64, u32)>,
}

impl EventCursor {
    /// A cursor at `vv` (op boundaries only).
    pub fn at(vv: VersionVector) -> EventCursor {
        EventCursor { vv, partial: None }
    }
}

impl fmt::Display for EventCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (author, seq) in self.vv.iter() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{}:{seq}", author.to_hex())?;
        }
        if let Some((author, seq, k)) = &self.partial {
            write!(f, "@{}:{seq}:{k}", author.to_hex())?;
        }
        Ok(())
    }
}

impl FromStr for EventCursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<EventCursor, Error> {
        let bad = |why: &str| Error::InvalidArgument(format!("bad event cursor {s:?}: {why}"));
        let s = s.trim();
        let (vv_text, partial_text) = match s.split_once('@') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let mut vv = VersionVector::default();
        for entry in vv_text.split(',').filter(|e| !e.is_empty()) {
            let (author, seq) = entry
                .split_once(':')
                .ok_or_else(|| bad("an entry is not <node>:<seq>"))?;
            let author: NodeId = author
                .parse()
                .map_err(|_| bad("a node is not 64 hex characters"))?;
            let seq: u64 = seq.parse().map_err(|_| bad("a seq is not a number"))?;
            vv.set(author, seq);
        }
        let partial = match partial_text {
            None => None,
            Some(p) => {
                let mut parts = p.split(':');
                let (Some(a), Some(q), Some(k), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(bad("the part after @ is not <node>:<seq>:<k>"));
                };
                let author: NodeId = a.parse().map_err(|_| bad("a node is not 64 hex characters"))?;
                let seq: u64 = q.parse().map_err(|_| bad("a seq is not a number"))?;
                let k: u32 = k.parse().map_err(|_| bad("k is not a number"))?;
                Some((author, seq, k))
            }
        };
        Ok(EventCursor { vv, partial })
    }
}

/// One step of [`events_after`]: the events, each with the cursor just after it, and the
/// cursor after every op read (ops without events move it too).
#[derive(Clone, Debug, Default)]
pub struct EventBatch {
    /// Each event and the cursor to resume after it.
    pub events: Vec<(Envelope, EventCursor)>,
    /// The cursor after the last op read.
    pub end: EventCursor,
    /// Ops read (0 means the reader is at the end of the local log).
    pub ops_read: usize,
}

/// Reads the events of the next ops after `cursor` in the local log, about `max_bytes` of
/// ops, in Lamport order across authors (so each story's events come in causal order).
/// Only valid ops count (those of removed members past their cutoff, or of a forked author
/// from the fork on, do not). Holds no state: call again with `end` for more.
pub fn events_after(node: &Node, cursor: &EventCursor, max_bytes: usize) -> Result<EventBatch, Error> {
    let ops = node.ops_for_sync(&cursor.vv, max_bytes)?;
    let mut end = EventCursor::at(cursor.vv.clone());
    let mut histories: HashMap<StoryId, Vec<Transition>> = HashMap::new();
    let mut events = Vec::new();
    let ops_read = ops.len();
    for bytes in ops {
        let op = UnverifiedOp::decode(&bytes.bytes).map_err(|e| Error::Corrupt(format!("stored op: {e}")))?;
        let c = op.content();
        let op_id = op.id();
        let transition_story = match &c.payload {
            Payload::Forced { inner, .. } => match &**inner {
                Payload::Transition { story, .. } => Some(story),
                _ => None,
            },
            Payload::Transition { story, .. } => Some(story),
            _ => None,
        };
        let facts = match transition_story {
            Some(story) => {
                if !histories.contains_key(story) {
                    let h = match node.history(story) {
                        Ok(h) => h,
                        Err(Error::NotFound(_)) => Vec::new(),
                        Err(e) => return Err(e),
                    };
                    histories.insert(story.clone(), h);
                }
                histories[story]
                    .iter()
                    .find(|t| t.op_id == op_id)
                    .map(|t| TransitionFacts {
                        to: t.to.clone(),
                        concurrent: t.conflict,
                    })
            }
            None => None,
        };
        let mut envs = op_envelopes(op_id, c, facts.as_ref());
        if let Payload::Claim {
            story,
            takes_over: None,
            ..
        } = &c.payload
        {
            // A concurrent claim that ranks after another node's running lease displaced it:
            // that node lost the story (a takeover says so in `op_envelopes`).
            if let Some(loser) = node.displaced_by_claim(story, &c.author, c.lamport, c.wall)? {
                envs.push(claim_lost(op_id, c, story, &loser, Some(&c.author)));
            }
        }
        let skip = match cursor.partial {
            Some((a, s, k)) if a == c.author && s == c.seq => k as usize,
            _ => 0,
        };
        let before = end.vv.clone();
        end.vv.set(c.author, c.seq);
        let n = envs.len();
        for (i, env) in envs.into_iter().enumerate().skip(skip) {
            let after = if i + 1 == n {
                EventCursor::at(end.vv.clone())
            } else {
                EventCursor {
                    vv: before.clone(),
                    partial: Some((c.author, c.seq, (i + 1) as u32)),
                }
            };
            events.push((env, after));
        }
    }
    Ok(EventBatch {
        events,
        end,
        ops_read,
    })
}

/// The stages whose stories can raise time-based signals: every stage but `done` and
/// `archived`, where finished stories pile up (so a signal pass costs what the live work
/// costs, not the cluster's whole history).
pub const SIGNAL_STAGES: [StageKind; 5] = [
    StageKind::Backlog,
    StageKind::Coding,
    StageKind::Qa,
    StageKind::Merge,
    StageKind::MergeFailure,
];

/// The time-based signals that hold at `now`: [`stage_signals`] for every stage of
/// [`SIGNAL_STAGES`], then [`fork_signals`]. Each id is derived from the state that raised
/// it plus the signal's type, so every node that sees the same state raises the same event.
pub fn signals(node: &Node, now: Timestamp, stale_after_ms: i64) -> Result<Vec<Envelope>, Error> {
    let mut out = Vec::new();
    for kind in SIGNAL_STAGES {
        out.extend(stage_signals(node, kind, now, stale_after_ms)?);
    }
    out.extend(fork_signals(node)?);
    Ok(out)
}

/// The signals of the stories in one stage at `now`: executions `Running` whose heartbeat
/// is older than `stale_after_ms` (orphaned), `RateLimited` executions whose `resume_at` has
/// passed (due), and claims no longer live that nobody took over (expired). A host may call
/// it stage by stage to keep each hold of the node short.
pub fn stage_signals(
    node: &Node,
    stage: StageKind,
    now: Timestamp,
    stale_after_ms: i64,
) -> Result<Vec<Envelope>, Error> {
    let cluster = node.cluster_id();
    let mut out = Vec::new();
    for story in node.stories(Some(stage), now)? {
        for (exec_node, state) in &story.execution {
            if let Some(e) = execution_signal(&cluster, &story.id, exec_node, state, now, stale_after_ms) {
                out.push(e);
            }
        }
        if story.claim.is_none() {
            if let Some((stamp, lease, false)) = node.claim_entry(&story.id, now)? {
                let mut a = Attributes {
                    cluster: cluster.to_hex(),
                    story: Some(story.id.as_str().to_string()),
                    node: Some(lease.node.to_hex()),
                    lamport: Some(stamp.lamport),
                    ..Attributes::default()
                };
                a.detail.insert("claimed_at".into(), time(lease.claimed_at));
                a.detail.insert("expires_at".into(), time(lease.expires_at));
                let id = event_id(&[
                    b"claim.expired",
                    story.id.as_str().as_bytes(),
                    lease.node.as_bytes(),
                    &stamp.lamport.to_le_bytes(),
                ]);
                let at = if lease.expires_at <= now {
                    lease.expires_at
                } else {
                    now
                };
                out.push(Envelope::new(EventType::ClaimExpired, id, at, a));
            }
        }
    }
    Ok(out)
}

/// One `fork.detected` per equivocating author on record.
pub fn fork_signals(node: &Node) -> Result<Vec<Envelope>, Error> {
    let cluster = node.cluster_id();
    let mut out = Vec::new();
    for fork in node.forks()? {
        let evidence = node.fork_evidence(&fork.author)?;
        let at = evidence
            .iter()
            .map(|op| op.content().wall)
            .max()
            .unwrap_or(Timestamp::from_millis(0));
        let mut a = Attributes {
            cluster: cluster.to_hex(),
            node: Some(fork.author.to_hex()),
            ..Attributes::default()
        };
        a.detail.insert("at_seq".into(), json!(fork.at_seq));
        a.detail.insert(
            "evidence".into(),
            Value::Array(fork.evidence.iter().map(|o| Value::String(o.to_hex())).collect()),
        );
        let id = event_id(&[
            b"fork.detected",
            fork.author.as_bytes(),
            &fork.at_seq.to_le_bytes(),
        ]);
        out.push(Envelope::new(EventType::ForkDetected, id, at, a));
    }
    Ok(out)
}

/// The execution signal one node's state raises at `now`, if any. Pure.
pub fn execution_signal(
    cluster: &ClusterId,
    story: &StoryId,
    node: &NodeId,
    state: &ExecutionState,
    now: Timestamp,
    stale_after_ms: i64,
) -> Option<Envelope> {
    let attrs = |agent: &str| {
        let mut a = Attributes {
            cluster: cluster.to_hex(),
            story: Some(story.as_str().to_string()),
            node: Some(node.to_hex()),
            ..Attributes::default()
        };
        a.detail.insert("agent".into(), Value::String(agent.to_string()));
        a
    };
    match state {
        ExecutionState::Running {
            agent,
            started_at,
            last_heartbeat,
        } if now.millis_since(*last_heartbeat) > stale_after_ms => {
            let mut a = attrs(agent);
            a.detail.insert("started_at".into(), time(*started_at));
            a.detail.insert("last_heartbeat".into(), time(*last_heartbeat));
            let id = event_id(&[
                b"execution.orphaned",
                story.as_str().as_bytes(),
                node.as_bytes(),
                &last_heartbeat.as_millis().to_le_bytes(),
            ]);
            Some(Envelope::new(
                EventType::ExecutionOrphaned,
                id,
                last_heartbeat.add_millis(stale_after_ms),
                a,
            ))
        }
        ExecutionState::RateLimited { agent, resume_at } if *resume_at <= now => {
            let mut a = attrs(agent);
            a.detail.insert("resume_at".into(), time(*resume_at));
            let id = event_id(&[
                b"execution.due",
                story.as_str().as_bytes(),
                node.as_bytes(),
                &resume_at.as_millis().to_le_bytes(),
            ]);
            Some(Envelope::new(EventType::ExecutionDue, id, *resume_at, a))
        }
        _ => None,
    }
}
