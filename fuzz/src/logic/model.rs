//! A plain reference model of the pipeline projection, written here and not shared with
//! the core: the oracle of `merge_convergence`. Given the set of valid ops, it computes what
//! every replica must show, straight from the rules of `docs/format.md` and
//! `ARCHITECTURE.md`:
//!
//! - the transition table (written out again below, event by event);
//! - every register last-writer-wins by `(lamport, author)`; a create sets name, body and
//!   dependencies with its own stamp; the earliest create names the story;
//! - tombstones: the earliest delete wins, whatever came after it;
//! - the stage is the target of the last transition in stamp order, each transition's target
//!   computed from the stage *it* was made from; a transition whose base is not the previous
//!   one's op is a conflict;
//! - leases (claims, merge lock): one entry per author, LWW within it; a takeover clears the
//!   old holder's entries up to a Lamport time; the lease is the newest uncleared taken entry,
//!   live while unexpired and its holder was seen within the staleness window.

use std::collections::BTreeMap;

use huskies_core::{
    ArchiveReason, Lease, NodeId, OpId, Payload, PipelineEvent, SignedOp, Stage, StoryField, StoryId,
    Timestamp,
};

/// `(lamport, author)`: the order of concurrent writes.
pub type Stamp = (u64, NodeId);

/// An LWW register.
#[derive(Clone, Debug)]
pub struct Reg<T> {
    /// Its stamp.
    pub stamp: Stamp,
    /// Its value.
    pub value: T,
}

fn lww<T>(reg: &mut Option<Reg<T>>, stamp: Stamp, value: T) {
    if reg.as_ref().is_none_or(|r| stamp > r.stamp) {
        *reg = Some(Reg { stamp, value });
    }
}

/// A lease set: per author, its latest take or release; per holder, cleared through.
#[derive(Clone, Debug, Default)]
pub struct Leases {
    /// Per author.
    pub entries: BTreeMap<NodeId, Reg<Option<Lease>>>,
    /// Per holder.
    pub cleared: BTreeMap<NodeId, u64>,
}

impl Leases {
    fn set(&mut self, stamp: Stamp, lease: Option<Lease>) {
        let mut slot = self.entries.remove(&stamp.1);
        lww(&mut slot, stamp, lease);
        if let Some(s) = slot {
            self.entries.insert(stamp.1, s);
        }
    }

    fn clear(&mut self, holder: NodeId, through: u64) {
        let c = self.cleared.entry(holder).or_insert(0);
        *c = (*c).max(through);
    }

    /// The newest uncleared taken entry.
    pub fn current(&self) -> Option<&Lease> {
        self.entries
            .values()
            .filter(|r| r.stamp.0 > self.cleared.get(&r.stamp.1).copied().unwrap_or(0))
            .filter_map(|r| r.value.as_ref().map(|l| (r.stamp, l)))
            .max_by_key(|(s, _)| *s)
            .map(|(_, l)| l)
    }
}

/// One transition.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its stamp.
    pub stamp: Stamp,
    /// Its op.
    pub op_id: OpId,
    /// The event.
    pub event: PipelineEvent,
    /// The stage it was made from.
    pub from: Stage,
    /// The stage it produced.
    pub to: Stage,
    /// The transition it built on.
    pub base: Option<OpId>,
}

/// One story in the model.
#[derive(Clone, Debug, Default)]
pub struct ModelStory {
    /// Earliest create.
    pub created: Option<Stamp>,
    /// Name.
    pub name: Option<Reg<String>>,
    /// Body.
    pub body: Option<Reg<Option<String>>>,
    /// Dependencies.
    pub depends_on: Option<Reg<Vec<StoryId>>>,
    /// Earliest tombstone.
    pub deleted: Option<Stamp>,
    /// Transitions, sorted by stamp once [`Model::new`] returns.
    pub history: Vec<Entry>,
    /// Claims.
    pub claims: Leases,
}

impl ModelStory {
    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.history.last().map_or(Stage::Backlog, |e| e.to.clone())
    }

    /// Op ids of the transitions that did not build on their predecessor.
    pub fn conflicts(&self) -> Vec<OpId> {
        let mut prev = None;
        let mut out = Vec::new();
        for e in &self.history {
            if e.base != prev {
                out.push(e.op_id);
            }
            prev = Some(e.op_id);
        }
        out
    }

    /// Merge conflicts in a row at the end of the history (a `GatesPassed` out of a merge
    /// failure does not break the run).
    pub fn consecutive_merge_failures(&self) -> u32 {
        let mut n = 0;
        for e in self.history.iter().rev() {
            match (&e.event, &e.from) {
                (PipelineEvent::MergeConflict { .. }, _) => n += 1,
                (PipelineEvent::GatesPassed { .. }, Stage::MergeFailure { .. }) => {}
                _ => break,
            }
        }
        n
    }
}

/// The model's state.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Stories by id.
    pub stories: BTreeMap<StoryId, ModelStory>,
    /// The merge lock.
    pub lock: Leases,
    /// Last heartbeat per node (by the stamp of its latest presence op).
    pub presence: BTreeMap<NodeId, Reg<Timestamp>>,
}

fn active(s: &Stage) -> bool {
    matches!(
        s,
        Stage::Backlog | Stage::Coding | Stage::Qa | Stage::Merge { .. } | Stage::MergeFailure { .. }
    )
}

/// The transition table, event by event: the stage `event` leads to from `from`, or `None`
/// when the table refuses it.
pub fn table(from: &Stage, event: &PipelineEvent, at: Timestamp) -> Option<Stage> {
    use PipelineEvent as E;
    let archived = |reason| {
        Some(Stage::Archived {
            archived_at: at,
            reason,
        })
    };
    let merge = |branch: &String, commits| {
        Some(Stage::Merge {
            feature_branch: branch.clone(),
            commits_ahead: commits,
        })
    };
    match event {
        E::DepsMet => matches!(from, Stage::Backlog).then_some(Stage::Coding),
        E::GatesStarted => matches!(from, Stage::Coding).then_some(Stage::Qa),
        E::QaSkipped { branch, commits } => match from {
            Stage::Coding => merge(branch, *commits),
            _ => None,
        },
        E::GatesPassed { branch, commits } => match from {
            Stage::Qa | Stage::MergeFailure { .. } => merge(branch, *commits),
            _ => None,
        },
        E::GatesFailed { .. } => matches!(from, Stage::Qa).then_some(Stage::Coding),
        E::MergeSucceeded { commit } => matches!(from, Stage::Merge { .. }).then(|| Stage::Done {
            merged_at: at,
            merge_commit: commit.clone(),
        }),
        E::MergeConflict { kind, reason } => {
            matches!(from, Stage::Merge { .. }).then(|| Stage::MergeFailure {
                kind: kind.clone(),
                reason: reason.clone(),
            })
        }
        E::MergeFailedFinal { reason } => match from {
            Stage::Merge { .. } | Stage::MergeFailure { .. } => archived(ArchiveReason::MergeFailed {
                reason: reason.clone(),
            }),
            _ => None,
        },
        E::Accepted => match from {
            Stage::Done { .. } => archived(ArchiveReason::Completed),
            _ => None,
        },
        E::Block { reason } if active(from) => archived(ArchiveReason::Blocked {
            reason: reason.clone(),
        }),
        E::ReviewHold { reason } if active(from) => archived(ArchiveReason::ReviewHeld {
            reason: reason.clone(),
        }),
        E::Abandon if active(from) || matches!(from, Stage::Done { .. }) => {
            archived(ArchiveReason::Abandoned)
        }
        E::Supersede { by } if active(from) || matches!(from, Stage::Done { .. }) => {
            archived(ArchiveReason::Superseded { by: by.clone() })
        }
        E::Unblock => match from {
            Stage::Archived {
                reason: ArchiveReason::Blocked { .. },
                ..
            } => Some(Stage::Backlog),
            _ => None,
        },
        E::Block { .. } | E::ReviewHold { .. } | E::Abandon | E::Supersede { .. } => None,
    }
}

impl Model {
    /// The model of a set of valid ops (any order; duplicates by op id are ignored).
    pub fn new(ops: &[SignedOp]) -> Model {
        let mut m = Model::default();
        let mut seen = std::collections::BTreeSet::new();
        for op in ops {
            if seen.insert(op.id()) {
                m.apply(op);
            }
        }
        for s in m.stories.values_mut() {
            s.history.sort_by_key(|e| e.stamp);
        }
        m
    }

    fn apply(&mut self, op: &SignedOp) {
        self.apply_payload(op, &op.content().payload);
    }

    /// `payload` is the op's own, or the inner payload of a forced op (same stamp and id).
    fn apply_payload(&mut self, op: &SignedOp, payload: &Payload) {
        let c = op.content();
        let stamp = (c.lamport, c.author);
        let lease = |ttl: u32| Lease {
            node: c.author,
            claimed_at: c.wall,
            expires_at: c.wall.add_secs(u64::from(ttl)),
        };
        match payload {
            Payload::StoryCreate {
                story,
                name,
                body,
                depends_on,
            } => {
                let s = self.stories.entry(story.clone()).or_default();
                if s.created.is_none_or(|c| stamp < c) {
                    s.created = Some(stamp);
                }
                lww(&mut s.name, stamp, name.clone());
                lww(&mut s.body, stamp, body.clone());
                lww(&mut s.depends_on, stamp, depends_on.clone());
            }
            Payload::StoryUpdate { story, field } => {
                let s = self.stories.entry(story.clone()).or_default();
                match field {
                    StoryField::Name(n) => lww(&mut s.name, stamp, n.clone()),
                    StoryField::Body(b) => lww(&mut s.body, stamp, b.clone()),
                    StoryField::DependsOn(d) => lww(&mut s.depends_on, stamp, d.clone()),
                }
            }
            Payload::Transition {
                story,
                event,
                from,
                base,
            } => {
                let to = table(from, event, c.wall).expect("a valid op's transition is in the table");
                self.stories
                    .entry(story.clone())
                    .or_default()
                    .history
                    .push(Entry {
                        stamp,
                        op_id: op.id(),
                        event: event.clone(),
                        from: from.clone(),
                        to,
                        base: *base,
                    });
            }
            Payload::StoryDelete { story } => {
                let s = self.stories.entry(story.clone()).or_default();
                if s.deleted.is_none_or(|d| stamp < d) {
                    s.deleted = Some(stamp);
                }
            }
            Payload::Claim {
                story,
                ttl_secs,
                takes_over,
            } => {
                let s = self.stories.entry(story.clone()).or_default();
                if let Some((holder, through)) = takes_over {
                    s.claims.clear(*holder, *through);
                }
                s.claims.set(stamp, Some(lease(*ttl_secs)));
            }
            Payload::Release { story } => {
                self.stories
                    .entry(story.clone())
                    .or_default()
                    .claims
                    .set(stamp, None);
            }
            Payload::LockAcquire { ttl_secs } => self.lock.set(stamp, Some(lease(*ttl_secs))),
            Payload::LockRelease => self.lock.set(stamp, None),
            Payload::LockClear { holder, through } => self.lock.clear(*holder, *through),
            Payload::Forced {
                holder,
                through,
                inner,
            } => {
                if let Payload::Release { story } = &**inner {
                    self.stories
                        .entry(story.clone())
                        .or_default()
                        .claims
                        .clear(*holder, *through);
                }
                self.apply_payload(op, inner);
            }
            Payload::Presence { .. } | Payload::Heartbeat { .. } => {
                let mut slot = self.presence.remove(&c.author);
                lww(&mut slot, stamp, c.wall);
                if let Some(s) = slot {
                    self.presence.insert(c.author, s);
                }
            }
            _ => {}
        }
    }

    /// The lease if it is live at `now`: unexpired, and its holder seen (heartbeat or the
    /// lease itself) within `stale_ms`.
    pub fn live(&self, lease: Option<&Lease>, now: Timestamp, stale_ms: i64) -> Option<Lease> {
        let l = lease?;
        let seen = self
            .presence
            .get(&l.node)
            .map_or(l.claimed_at, |p| p.value.max(l.claimed_at));
        (now < l.expires_at && now.millis_since(seen) <= stale_ms).then(|| l.clone())
    }
}
