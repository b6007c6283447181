//! The typed pipeline: stages, archive reasons, events and the transition table.
//!
//! The table is one exhaustive `match` in [`transition`]: adding a stage or an event is a
//! compile error until every arm is decided.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::id::StoryId;
use crate::time::Timestamp;

/// Where a story is in the pipeline. Replicated: every node converges on the same stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// Waiting for its dependencies.
    Backlog,
    /// An agent is writing the code.
    Coding,
    /// Quality gates are running.
    Qa,
    /// Ready to merge. `commits_ahead` cannot be zero: a merge with nothing to merge is
    /// unrepresentable.
    Merge {
        /// The branch to merge.
        feature_branch: String,
        /// How many commits the branch is ahead of the target.
        commits_ahead: NonZeroU32,
    },
    /// The last merge attempt failed; a retry goes back to `Merge`.
    MergeFailure {
        /// What kind of failure (e.g. `conflict`, `hook`).
        kind: String,
        /// Why, in words.
        reason: String,
    },
    /// Merged.
    Done {
        /// When the merge happened (the wall time of the op that recorded it).
        merged_at: Timestamp,
        /// The merge commit.
        merge_commit: String,
    },
    /// Out of the pipeline.
    Archived {
        /// When it was archived.
        archived_at: Timestamp,
        /// Why.
        reason: ArchiveReason,
    },
}

/// The kind of a [`Stage`], without its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum StageKind {
    /// [`Stage::Backlog`]
    Backlog,
    /// [`Stage::Coding`]
    Coding,
    /// [`Stage::Qa`]
    Qa,
    /// [`Stage::Merge`]
    Merge,
    /// [`Stage::MergeFailure`]
    MergeFailure,
    /// [`Stage::Done`]
    Done,
    /// [`Stage::Archived`]
    Archived,
}

impl StageKind {
    /// Every kind, in pipeline order.
    pub const ALL: [StageKind; 7] = [
        StageKind::Backlog,
        StageKind::Coding,
        StageKind::Qa,
        StageKind::Merge,
        StageKind::MergeFailure,
        StageKind::Done,
        StageKind::Archived,
    ];

    /// The contract's name: `backlog`, `coding`, `qa`, `merge`, `merge_failure`, `done`,
    /// `archived`.
    pub fn as_str(self) -> &'static str {
        match self {
            StageKind::Backlog => "backlog",
            StageKind::Coding => "coding",
            StageKind::Qa => "qa",
            StageKind::Merge => "merge",
            StageKind::MergeFailure => "merge_failure",
            StageKind::Done => "done",
            StageKind::Archived => "archived",
        }
    }

    /// Parses a contract name (also accepts `-` for `_`).
    pub fn parse(s: &str) -> Option<StageKind> {
        let s = s.replace('-', "_");
        StageKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind whose [`StageKind::code`] is `code`.
    pub(crate) fn from_code(code: u8) -> Option<StageKind> {
        StageKind::ALL.into_iter().find(|k| k.code() == code)
    }

    /// One byte for index keys; stable across versions.
    pub(crate) fn code(self) -> u8 {
        match self {
            StageKind::Backlog => 0,
            StageKind::Coding => 1,
            StageKind::Qa => 2,
            StageKind::Merge => 3,
            StageKind::MergeFailure => 4,
            StageKind::Done => 5,
            StageKind::Archived => 6,
        }
    }
}

impl fmt::Display for StageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for StageKind {
    type Err = UnknownStage;

    /// [`StageKind::parse`], with an error that lists the stages.
    fn from_str(s: &str) -> Result<StageKind, UnknownStage> {
        StageKind::parse(s).ok_or_else(|| UnknownStage(s.to_string()))
    }
}

/// A name that is not a stage of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage {0:?}; stages are: {names}", names = StageKind::ALL.map(StageKind::as_str).join(", "))]
pub struct UnknownStage(pub String);

impl Stage {
    /// This stage's kind.
    pub fn kind(&self) -> StageKind {
        match self {
            Stage::Backlog => StageKind::Backlog,
            Stage::Coding => StageKind::Coding,
            Stage::Qa => StageKind::Qa,
            Stage::Merge { .. } => StageKind::Merge,
            Stage::MergeFailure { .. } => StageKind::MergeFailure,
            Stage::Done { .. } => StageKind::Done,
            Stage::Archived { .. } => StageKind::Archived,
        }
    }

    /// Still in the pipeline (not Done, not Archived).
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Stage::Backlog | Stage::Coding | Stage::Qa | Stage::Merge { .. } | Stage::MergeFailure { .. }
        )
    }
}

/// Why a story left the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArchiveReason {
    /// Done and accepted.
    Completed,
    /// Given up.
    Abandoned,
    /// Replaced by another story.
    Superseded {
        /// The story that replaces it.
        by: StoryId,
    },
    /// Blocked; `Unblock` returns it to the backlog.
    Blocked {
        /// Why.
        reason: String,
    },
    /// Merging failed for good.
    MergeFailed {
        /// Why.
        reason: String,
    },
    /// Held for human review.
    ReviewHeld {
        /// Why.
        reason: String,
    },
}

impl ArchiveReason {
    /// The contract's name: `completed`, `abandoned`, `superseded`, `blocked`,
    /// `merge_failed`, `review_held`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            ArchiveReason::Completed => "completed",
            ArchiveReason::Abandoned => "abandoned",
            ArchiveReason::Superseded { .. } => "superseded",
            ArchiveReason::Blocked { .. } => "blocked",
            ArchiveReason::MergeFailed { .. } => "merge_failed",
            ArchiveReason::ReviewHeld { .. } => "review_held",
        }
    }
}

/// Something that happened to a story; applied through [`transition`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PipelineEvent {
    /// Dependencies are done: Backlog → Coding.
    DepsMet,
    /// Gates started: Coding → Qa.
    GatesStarted,
    /// QA skipped: Coding → Merge.
    QaSkipped {
        /// Branch to merge.
        branch: String,
        /// Commits ahead (never zero).
        commits: NonZeroU32,
    },
    /// Gates passed: Qa → Merge, or a retry MergeFailure → Merge.
    GatesPassed {
        /// Branch to merge.
        branch: String,
        /// Commits ahead (never zero).
        commits: NonZeroU32,
    },
    /// Gates failed: Qa → Coding.
    GatesFailed {
        /// Why.
        reason: String,
    },
    /// Merged: Merge → Done.
    MergeSucceeded {
        /// The merge commit.
        commit: String,
    },
    /// Merge failed: Merge → MergeFailure.
    MergeConflict {
        /// Failure kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// Merge failed for good: Merge or MergeFailure → Archived(MergeFailed).
    MergeFailedFinal {
        /// Why.
        reason: String,
    },
    /// Done → Archived(Completed).
    Accepted,
    /// Active → Archived(Blocked).
    Block {
        /// Why.
        reason: String,
    },
    /// Archived(Blocked) → Backlog.
    Unblock,
    /// Active or Done → Archived(Abandoned).
    Abandon,
    /// Active or Done → Archived(Superseded).
    Supersede {
        /// The replacing story.
        by: StoryId,
    },
    /// Active → Archived(ReviewHeld).
    ReviewHold {
        /// Why.
        reason: String,
    },
}

impl PipelineEvent {
    /// Every event name of the CLI contract.
    pub const NAMES: [&'static str; 14] = [
        "deps-met",
        "gates-started",
        "gates-passed",
        "gates-failed",
        "qa-skipped",
        "merge-succeeded",
        "merge-conflict",
        "merge-failed-final",
        "accepted",
        "block",
        "unblock",
        "abandon",
        "supersede",
        "review-hold",
    ];

    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            PipelineEvent::DepsMet => EventKind::DepsMet,
            PipelineEvent::GatesStarted => EventKind::GatesStarted,
            PipelineEvent::QaSkipped { .. } => EventKind::QaSkipped,
            PipelineEvent::GatesPassed { .. } => EventKind::GatesPassed,
            PipelineEvent::GatesFailed { .. } => EventKind::GatesFailed,
            PipelineEvent::MergeSucceeded { .. } => EventKind::MergeSucceeded,
            PipelineEvent::MergeConflict { .. } => EventKind::MergeConflict,
            PipelineEvent::MergeFailedFinal { .. } => EventKind::MergeFailedFinal,
            PipelineEvent::Accepted => EventKind::Accepted,
            PipelineEvent::Block { .. } => EventKind::Block,
            PipelineEvent::Unblock => EventKind::Unblock,
            PipelineEvent::Abandon => EventKind::Abandon,
            PipelineEvent::Supersede { .. } => EventKind::Supersede,
            PipelineEvent::ReviewHold { .. } => EventKind::ReviewHold,
        }
    }

    /// The contract's name, e.g. `gates-passed`.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// Strings carried by the event, for size validation.
    pub(crate) fn texts(&self) -> Vec<&str> {
        match self {
            PipelineEvent::QaSkipped { branch, .. } | PipelineEvent::GatesPassed { branch, .. } => {
                vec![branch]
            }
            PipelineEvent::GatesFailed { reason }
            | PipelineEvent::MergeFailedFinal { reason }
            | PipelineEvent::Block { reason }
            | PipelineEvent::ReviewHold { reason } => vec![reason],
            PipelineEvent::MergeSucceeded { commit } => vec![commit],
            PipelineEvent::MergeConflict { kind, reason } => vec![kind, reason],
            PipelineEvent::DepsMet
            | PipelineEvent::GatesStarted
            | PipelineEvent::Accepted
            | PipelineEvent::Unblock
            | PipelineEvent::Abandon
            | PipelineEvent::Supersede { .. } => vec![],
        }
    }
}

/// The kind of a [`PipelineEvent`], without its fields: the one parser of event names.
///
/// Every host (CLI, daemon, bindings) turns a user's event name into a `PipelineEvent`
/// through [`EventKind::from_str`](std::str::FromStr) and [`EventKind::with_args`], so the
/// names and the arguments each event needs are defined here and nowhere else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// `deps-met`
    DepsMet,
    /// `gates-started`
    GatesStarted,
    /// `gates-passed` (needs `branch`, `commits`)
    GatesPassed,
    /// `gates-failed` (`reason`)
    GatesFailed,
    /// `qa-skipped` (needs `branch`, `commits`)
    QaSkipped,
    /// `merge-succeeded` (needs `commit`)
    MergeSucceeded,
    /// `merge-conflict` (`kind`, `reason`)
    MergeConflict,
    /// `merge-failed-final` (`reason`)
    MergeFailedFinal,
    /// `accepted`
    Accepted,
    /// `block` (`reason`)
    Block,
    /// `unblock`
    Unblock,
    /// `abandon`
    Abandon,
    /// `supersede` (needs `by`)
    Supersede,
    /// `review-hold` (`reason`)
    ReviewHold,
}

impl EventKind {
    /// Every kind, in the contract's order.
    pub const ALL: [EventKind; 14] = [
        EventKind::DepsMet,
        EventKind::GatesStarted,
        EventKind::GatesPassed,
        EventKind::GatesFailed,
        EventKind::QaSkipped,
        EventKind::MergeSucceeded,
        EventKind::MergeConflict,
        EventKind::MergeFailedFinal,
        EventKind::Accepted,
        EventKind::Block,
        EventKind::Unblock,
        EventKind::Abandon,
        EventKind::Supersede,
        EventKind::ReviewHold,
    ];

    /// The contract's name, e.g. `gates-passed`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DepsMet => "deps-met",
            EventKind::GatesStarted => "gates-started",
            EventKind::GatesPassed => "gates-passed",
            EventKind::GatesFailed => "gates-failed",
            EventKind::QaSkipped => "qa-skipped",
            EventKind::MergeSucceeded => "merge-succeeded",
            EventKind::MergeConflict => "merge-conflict",
            EventKind::MergeFailedFinal => "merge-failed-final",
            EventKind::Accepted => "accepted",
            EventKind::Block => "block",
            EventKind::Unblock => "unblock",
            EventKind::Abandon => "abandon",
            EventKind::Supersede => "supersede",
            EventKind::ReviewHold => "review-hold",
        }
    }

    /// Builds the event from the arguments a user gave. Arguments the event does not use
    /// are ignored; a missing `reason` is empty and a missing merge-conflict `kind` is
    /// `conflict`.
    pub fn with_args(self, args: EventArgs) -> Result<PipelineEvent, EventArgError> {
        let event = self.as_str();
        let need = |v: Option<String>, arg: &'static str| v.ok_or(EventArgError::Missing { event, arg });
        let commits = |n: Option<u32>| {
            let n = n.ok_or(EventArgError::Missing {
                event,
                arg: "commits",
            })?;
            NonZeroU32::new(n).ok_or(EventArgError::ZeroCommits)
        };
        let reason = args.reason.unwrap_or_default();
        Ok(match self {
            EventKind::DepsMet => PipelineEvent::DepsMet,
            EventKind::GatesStarted => PipelineEvent::GatesStarted,
            EventKind::GatesPassed => PipelineEvent::GatesPassed {
                branch: need(args.branch, "branch")?,
                commits: commits(args.commits)?,
            },
            EventKind::QaSkipped => PipelineEvent::QaSkipped {
                branch: need(args.branch, "branch")?,
                commits: commits(args.commits)?,
            },
            EventKind::GatesFailed => PipelineEvent::GatesFailed { reason },
            EventKind::MergeSucceeded => PipelineEvent::MergeSucceeded {
                commit: need(args.commit, "commit")?,
            },
            EventKind::MergeConflict => PipelineEvent::MergeConflict {
                kind: args.kind.unwrap_or_else(|| "conflict".into()),
                reason,
            },
            EventKind::MergeFailedFinal => PipelineEvent::MergeFailedFinal { reason },
            EventKind::Accepted => PipelineEvent::Accepted,
            EventKind::Block => PipelineEvent::Block { reason },
            EventKind::Unblock => PipelineEvent::Unblock,
            EventKind::Abandon => PipelineEvent::Abandon,
            EventKind::Supersede => PipelineEvent::Supersede {
                by: args.by.ok_or(EventArgError::Missing { event, arg: "by" })?,
            },
            EventKind::ReviewHold => PipelineEvent::ReviewHold { reason },
        })
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = UnknownEvent;

    fn from_str(s: &str) -> Result<EventKind, UnknownEvent> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownEvent(s.to_string()))
    }
}

/// A name that is not an event of the contract.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown event {0:?}; events are: {names}", names = PipelineEvent::NAMES.join(", "))]
pub struct UnknownEvent(pub String);

/// The arguments an event may carry, as a user gives them (all optional; which are needed
/// depends on the [`EventKind`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventArgs {
    /// Feature branch (`gates-passed`, `qa-skipped`).
    pub branch: Option<String>,
    /// Commits ahead (`gates-passed`, `qa-skipped`); zero is refused.
    pub commits: Option<u32>,
    /// Merge commit (`merge-succeeded`).
    pub commit: Option<String>,
    /// Failure kind (`merge-conflict`).
    pub kind: Option<String>,
    /// Why (`gates-failed`, `merge-conflict`, `merge-failed-final`, `block`, `review-hold`).
    pub reason: Option<String>,
    /// The replacing story (`supersede`).
    pub by: Option<StoryId>,
}

/// Arguments that do not make the event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EventArgError {
    /// The event needs an argument that was not given.
    #[error("event {event} needs {arg}")]
    Missing {
        /// The event's name.
        event: &'static str,
        /// The argument's name (`branch`, `commits`, `commit`, `by`).
        arg: &'static str,
    },
    /// `commits` was zero: a merge needs at least one commit.
    #[error("commits must be at least 1: a merge needs a commit")]
    ZeroCommits,
}

/// An event that the table does not allow from the given stage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {event} is not allowed from stage {from}; {}", allowed_text(allowed))]
pub struct InvalidTransition {
    /// The stage the story was in.
    pub from: StageKind,
    /// The refused event's name.
    pub event: &'static str,
    /// The events the table does accept from that stage ([`allowed_events`]), so that the
    /// refusal can say what would have worked.
    pub allowed: Vec<EventKind>,
}

/// "events allowed from it: a, b" (or that none are), for [`InvalidTransition`]'s message.
fn allowed_text(allowed: &[EventKind]) -> String {
    if allowed.is_empty() {
        return "no event moves a story on from there".into();
    }
    let names: Vec<&str> = allowed.iter().map(|k| k.as_str()).collect();
    format!("events allowed from it: {}", names.join(", "))
}

/// The failure kinds a local `merge-conflict` may name (the `kind` of
/// [`PipelineEvent::MergeConflict`] and of the `merge_failure` stage), with what each
/// means. The one list: the CLI's help and `docs/cli.md` print it, and
/// [`crate::Node::execute`] refuses another kind. Ops from peers are not held to it (an
/// op's validity must not depend on the version that judges it).
pub const MERGE_FAILURE_KINDS: [(&str, &str); 5] = [
    ("conflict", "the branch does not merge cleanly"),
    ("hook", "a merge or push hook refused the merge"),
    ("gates", "checks run on the merged result failed"),
    (
        "push",
        "the merged result could not be pushed (e.g. the target moved)",
    ),
    ("other", "anything else; say what in the reason"),
];

/// Whether `kind` is one of [`MERGE_FAILURE_KINDS`].
pub fn is_merge_failure_kind(kind: &str) -> bool {
    MERGE_FAILURE_KINDS.iter().any(|(k, _)| *k == kind)
}

/// The events [`transition`] accepts from `from`, in the contract's order: computed from
/// the table itself (each event kind tried with placeholder arguments; no arm of the table
/// looks at an event's fields), so it can never disagree with it.
pub fn allowed_events(from: &Stage) -> Vec<EventKind> {
    let placeholder = EventArgs {
        branch: Some(String::new()),
        commits: Some(1),
        commit: Some(String::new()),
        kind: Some(String::new()),
        reason: Some(String::new()),
        by: Some(StoryId::placeholder()),
    };
    EventKind::ALL
        .into_iter()
        .filter(|k| {
            let event = k
                .with_args(placeholder.clone())
                .expect("the placeholder arguments make every event");
            table(from, &event, Timestamp::from_millis(0)).is_some()
        })
        .collect()
}

/// The transition table. `at` is the wall time recorded in `Done` and `Archived`.
///
/// Stored story records leave a transition's target out and recompute it here (store
/// format 3, `record.rs`): changing the result of a pair the table accepts changes what
/// stored records mean, so it takes a new store format.
pub fn transition(from: &Stage, event: &PipelineEvent, at: Timestamp) -> Result<Stage, InvalidTransition> {
    table(from, event, at).ok_or_else(|| InvalidTransition {
        from: from.kind(),
        event: event.name(),
        allowed: allowed_events(from),
    })
}

/// The table itself: the stage `event` moves `from` to, or `None` when it is not allowed.
fn table(from: &Stage, event: &PipelineEvent, at: Timestamp) -> Option<Stage> {
    use PipelineEvent as E;
    use Stage as S;
    let archived = |reason| S::Archived {
        archived_at: at,
        reason,
    };
    let next = match (from, event) {
        (S::Backlog, E::DepsMet) => S::Coding,
        (S::Coding, E::GatesStarted) => S::Qa,
        (S::Coding, E::QaSkipped { branch, commits })
        | (S::Qa, E::GatesPassed { branch, commits })
        | (S::MergeFailure { .. }, E::GatesPassed { branch, commits }) => S::Merge {
            feature_branch: branch.clone(),
            commits_ahead: *commits,
        },
        (S::Qa, E::GatesFailed { .. }) => S::Coding,
        (S::Merge { .. }, E::MergeSucceeded { commit }) => S::Done {
            merged_at: at,
            merge_commit: commit.clone(),
        },
        (S::Merge { .. }, E::MergeConflict { kind, reason }) => S::MergeFailure {
            kind: kind.clone(),
            reason: reason.clone(),
        },
        (S::Merge { .. } | S::MergeFailure { .. }, E::MergeFailedFinal { reason }) => {
            archived(ArchiveReason::MergeFailed {
                reason: reason.clone(),
            })
        }
        (s, E::Block { reason }) if s.is_active() => archived(ArchiveReason::Blocked {
            reason: reason.clone(),
        }),
        (s, E::ReviewHold { reason }) if s.is_active() => archived(ArchiveReason::ReviewHeld {
            reason: reason.clone(),
        }),
        (s, E::Abandon) if s.is_active() || s.kind() == StageKind::Done => archived(ArchiveReason::Abandoned),
        (s, E::Supersede { by }) if s.is_active() || s.kind() == StageKind::Done => {
            archived(ArchiveReason::Superseded { by: by.clone() })
        }
        (S::Done { .. }, E::Accepted) => archived(ArchiveReason::Completed),
        (
            S::Archived {
                reason: ArchiveReason::Blocked { .. },
                ..
            },
            E::Unblock,
        ) => S::Backlog,
        (
            S::Backlog
            | S::Coding
            | S::Qa
            | S::Merge { .. }
            | S::MergeFailure { .. }
            | S::Done { .. }
            | S::Archived { .. },
            E::DepsMet
            | E::GatesStarted
            | E::QaSkipped { .. }
            | E::GatesPassed { .. }
            | E::GatesFailed { .. }
            | E::MergeSucceeded { .. }
            | E::MergeConflict { .. }
            | E::MergeFailedFinal { .. }
            | E::Accepted
            | E::Block { .. }
            | E::Unblock
            | E::Abandon
            | E::Supersede { .. }
            | E::ReviewHold { .. },
        ) => return None,
    };
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn event_kinds_parse_their_names_and_build_their_events() {
        assert_eq!(EventKind::ALL.map(EventKind::as_str), PipelineEvent::NAMES);
        let full = EventArgs {
            branch: Some("b".into()),
            commits: Some(2),
            commit: Some("c".into()),
            kind: Some("k".into()),
            reason: Some("r".into()),
            by: Some(StoryId::new("9_other").unwrap()),
        };
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
            let event = kind.with_args(full.clone()).unwrap();
            assert_eq!(event.kind(), kind);
            assert_eq!(event.name(), kind.as_str());
        }
        assert!("gates_passed"
            .parse::<EventKind>()
            .unwrap_err()
            .to_string()
            .contains("events are: deps-met"));
        assert_eq!(
            EventKind::GatesPassed.with_args(EventArgs {
                commits: Some(1),
                ..EventArgs::default()
            }),
            Err(EventArgError::Missing {
                event: "gates-passed",
                arg: "branch"
            })
        );
        let zero = EventArgs {
            branch: Some("b".into()),
            commits: Some(0),
            ..EventArgs::default()
        };
        assert_eq!(
            EventKind::QaSkipped.with_args(zero),
            Err(EventArgError::ZeroCommits)
        );
        assert_eq!(
            EventKind::Supersede.with_args(EventArgs::default()),
            Err(EventArgError::Missing {
                event: "supersede",
                arg: "by"
            })
        );
    }

    fn all_events() -> Vec<PipelineEvent> {
        vec![
            PipelineEvent::DepsMet,
            PipelineEvent::GatesStarted,
            PipelineEvent::QaSkipped {
                branch: "b".into(),
                commits: nz(1),
            },
            PipelineEvent::GatesPassed {
                branch: "b".into(),
                commits: nz(2),
            },
            PipelineEvent::GatesFailed { reason: "r".into() },
            PipelineEvent::MergeSucceeded { commit: "c".into() },
            PipelineEvent::MergeConflict {
                kind: "k".into(),
                reason: "r".into(),
            },
            PipelineEvent::MergeFailedFinal { reason: "r".into() },
            PipelineEvent::Accepted,
            PipelineEvent::Block { reason: "r".into() },
            PipelineEvent::Unblock,
            PipelineEvent::Abandon,
            PipelineEvent::Supersede {
                by: StoryId::new("2_other").unwrap(),
            },
            PipelineEvent::ReviewHold { reason: "r".into() },
        ]
    }

    fn all_stages() -> Vec<Stage> {
        let at = Timestamp::from_millis(5);
        vec![
            Stage::Backlog,
            Stage::Coding,
            Stage::Qa,
            Stage::Merge {
                feature_branch: "b".into(),
                commits_ahead: nz(3),
            },
            Stage::MergeFailure {
                kind: "k".into(),
                reason: "r".into(),
            },
            Stage::Done {
                merged_at: at,
                merge_commit: "c".into(),
            },
            Stage::Archived {
                archived_at: at,
                reason: ArchiveReason::Completed,
            },
            Stage::Archived {
                archived_at: at,
                reason: ArchiveReason::Blocked { reason: "r".into() },
            },
        ]
    }

    /// The whole table, written out as (from, event) -> to kind, checked against every
    /// (stage, event) pair: anything not listed must be refused.
    #[test]
    fn table_matches_the_brief_exactly() {
        use StageKind::*;
        let allowed: &[(StageKind, &str, StageKind)] = &[
            (Backlog, "deps-met", Coding),
            (Coding, "gates-started", Qa),
            (Coding, "qa-skipped", Merge),
            (Qa, "gates-passed", Merge),
            (Qa, "gates-failed", Coding),
            (Merge, "merge-succeeded", Done),
            (Merge, "merge-conflict", MergeFailure),
            (MergeFailure, "gates-passed", Merge),
            (Merge, "merge-failed-final", Archived),
            (MergeFailure, "merge-failed-final", Archived),
            (Done, "accepted", Archived),
            (Done, "abandon", Archived),
            (Done, "supersede", Archived),
        ];
        let at = Timestamp::from_millis(9);
        for from in all_stages() {
            for event in all_events() {
                let got = transition(&from, &event, at);
                let blocked = matches!(
                    from,
                    Stage::Archived {
                        reason: ArchiveReason::Blocked { .. },
                        ..
                    }
                );
                let expected = if from.is_active()
                    && matches!(event.name(), "block" | "review-hold" | "abandon" | "supersede")
                {
                    Some(Archived)
                } else if blocked && event.name() == "unblock" {
                    Some(Backlog)
                } else {
                    allowed
                        .iter()
                        .find(|(f, e, _)| *f == from.kind() && *e == event.name())
                        .map(|(_, _, to)| *to)
                };
                match (got, expected) {
                    (Ok(to), Some(kind)) => assert_eq!(to.kind(), kind, "{from:?} {event:?}"),
                    (Err(e), None) => {
                        assert_eq!(e.from, from.kind());
                        assert_eq!(e.event, event.name());
                    }
                    (got, expected) => panic!("{from:?} + {event:?}: got {got:?}, expected {expected:?}"),
                }
            }
        }
    }

    /// `allowed_events` is the table read back: for every stage, exactly the events whose
    /// transition succeeds, and a refusal carries that list in its message.
    #[test]
    fn allowed_events_are_the_tables_and_refusals_name_them() {
        let at = Timestamp::from_millis(9);
        for from in all_stages() {
            let expected: Vec<EventKind> = all_events()
                .iter()
                .filter(|e| transition(&from, e, at).is_ok())
                .map(PipelineEvent::kind)
                .collect();
            let mut sorted = expected.clone();
            sorted.sort_by_key(|k| EventKind::ALL.iter().position(|a| a == k));
            assert_eq!(allowed_events(&from), sorted, "{from:?}");
        }
        let err = transition(&Stage::Backlog, &PipelineEvent::Accepted, at).unwrap_err();
        assert_eq!(
            err.to_string(),
            "event accepted is not allowed from stage backlog; events allowed from it: deps-met, \
             block, abandon, supersede, review-hold"
        );
        let archived = Stage::Archived {
            archived_at: at,
            reason: ArchiveReason::Completed,
        };
        let err = transition(&archived, &PipelineEvent::Accepted, at).unwrap_err();
        assert!(err.allowed.is_empty());
        assert!(
            err.to_string().ends_with("no event moves a story on from there"),
            "{err}"
        );
    }

    #[test]
    fn transitions_carry_their_fields() {
        let at = Timestamp::from_millis(42);
        let merge = transition(
            &Stage::Qa,
            &PipelineEvent::GatesPassed {
                branch: "feature/42".into(),
                commits: nz(3),
            },
            at,
        )
        .unwrap();
        assert_eq!(
            merge,
            Stage::Merge {
                feature_branch: "feature/42".into(),
                commits_ahead: nz(3)
            }
        );
        let done = transition(
            &merge,
            &PipelineEvent::MergeSucceeded { commit: "abc".into() },
            at,
        )
        .unwrap();
        assert_eq!(
            done,
            Stage::Done {
                merged_at: at,
                merge_commit: "abc".into()
            }
        );
    }

    #[test]
    fn zero_commits_cannot_be_decoded() {
        let bytes = postcard::to_allocvec(&Stage::Merge {
            feature_branch: "b".into(),
            commits_ahead: nz(1),
        })
        .unwrap();
        let mut zeroed = bytes.clone();
        *zeroed.last_mut().unwrap() = 0;
        assert!(postcard::from_bytes::<Stage>(&zeroed).is_err());
        assert!(postcard::from_bytes::<Stage>(&bytes).is_ok());
    }

    #[test]
    fn stage_kind_names_round_trip() {
        for k in StageKind::ALL {
            assert_eq!(StageKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(StageKind::parse("merge-failure"), Some(StageKind::MergeFailure));
        assert_eq!(StageKind::parse("nope"), None);
        assert_eq!("merge-failure".parse(), Ok(StageKind::MergeFailure));
        let err = "nope".parse::<StageKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown stage \"nope\"; stages are: backlog, coding, qa, merge, merge_failure, done, archived"
        );
    }
}
