//! Short constructors for the common commands and pipeline events, so a Rust caller need not
//! write struct literals or `NonZeroU32::new(3).unwrap()`. Each builds exactly the value its
//! literal would; nothing here is checked that `Node::execute` does not check again.

use std::num::NonZeroU32;

use crate::error::Error;
use crate::execution::ExecutionEvent;
use crate::id::{NodeId, StoryId};
use crate::node::Command;
use crate::payload::{Role, StoryField};
use crate::pipeline::{EventArgError, PipelineEvent};

/// A new story being described: made by [`Command::add_story`], finished with
/// [`NewStory::body`] and [`NewStory::depends_on`], and turned into a [`Command`] by
/// [`Node::execute`](crate::Node::execute) (which takes anything `Into<Command>`) or by
/// [`NewStory::into_command`].
///
/// ```
/// use huskies_core::{Command, StoryId};
/// let id = StoryId::new("43_add_logout")?;
/// let cmd: Command = Command::add_story(id, "Add logout")
///     .body("A button in the header.")
///     .depends_on([StoryId::new("42_fix_login")?])
///     .into();
/// assert!(matches!(cmd, Command::AddStory { ref depends_on, .. } if depends_on.len() == 1));
/// # Ok::<(), huskies_core::Error>(())
/// ```
#[must_use = "a NewStory does nothing until it is executed"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStory {
    id: StoryId,
    name: String,
    body: Option<String>,
    depends_on: Vec<StoryId>,
}

impl NewStory {
    /// Sets the story's body (free text, at most [`crate::MAX_BODY_BYTES`]).
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Sets the stories this one depends on (each must exist on this node, at most
    /// [`crate::MAX_DEPENDS_ON`]).
    pub fn depends_on(mut self, ids: impl IntoIterator<Item = StoryId>) -> Self {
        self.depends_on = ids.into_iter().collect();
        self
    }

    /// The [`Command::AddStory`] this describes.
    pub fn into_command(self) -> Command {
        Command::AddStory {
            id: self.id,
            name: self.name,
            body: self.body,
            depends_on: self.depends_on,
        }
    }
}

impl From<NewStory> for Command {
    fn from(story: NewStory) -> Command {
        story.into_command()
    }
}

impl Command {
    /// A new story in the backlog, with no body and no dependencies until
    /// [`NewStory::body`] / [`NewStory::depends_on`] add them.
    pub fn add_story(id: StoryId, name: impl Into<String>) -> NewStory {
        NewStory {
            id,
            name: name.into(),
            body: None,
            depends_on: Vec::new(),
        }
    }

    /// A pipeline event for a story ([`Command::Event`]).
    ///
    /// ```
    /// use huskies_core::{Command, PipelineEvent, StoryId};
    /// let id = StoryId::new("42_fix_login")?;
    /// let cmd = Command::event(id.clone(), PipelineEvent::gates_passed("feature/42", 3)?);
    /// assert!(matches!(cmd, Command::Event { .. }));
    /// # Ok::<(), huskies_core::Error>(())
    /// ```
    pub fn event(id: StoryId, event: PipelineEvent) -> Command {
        Command::Event { id, event }
    }

    /// Changes one field of a story ([`Command::UpdateStory`]).
    pub fn update(id: StoryId, field: StoryField) -> Command {
        Command::UpdateStory { id, field }
    }

    /// Tombstones a story ([`Command::DeleteStory`]).
    pub fn delete_story(id: StoryId) -> Command {
        Command::DeleteStory { id }
    }

    /// Claims a story for `ttl_secs` seconds, or renews this node's claim
    /// ([`Command::Claim`]; at most [`crate::MAX_TTL_SECS`]).
    pub fn claim(id: StoryId, ttl_secs: u32) -> Command {
        Command::Claim { id, ttl_secs }
    }

    /// Gives up this node's claim ([`Command::Release`]).
    pub fn release(id: StoryId) -> Command {
        Command::Release { id }
    }

    /// Takes or renews the merge lock for `ttl_secs` seconds ([`Command::AcquireMergeLock`]).
    pub fn acquire_merge_lock(ttl_secs: u32) -> Command {
        Command::AcquireMergeLock { ttl_secs }
    }

    /// Publishes this node's presence under `label`, with no address
    /// ([`Command::Heartbeat`]).
    pub fn heartbeat(label: impl Into<String>) -> Command {
        Command::Heartbeat {
            label: label.into(),
            address: None,
        }
    }

    /// Advances this node's execution state for a story ([`Command::Execution`]).
    pub fn execution(id: StoryId, event: ExecutionEvent) -> Command {
        Command::Execution { id, event }
    }

    /// Admits a node with a role ([`Command::AddMember`]; admins only). See
    /// `core/examples/join_cluster.rs`.
    pub fn add_member(node: NodeId, role: Role) -> Command {
        Command::AddMember { node, role }
    }

    /// Removes a node ([`Command::RemoveMember`]; admins only).
    pub fn remove_member(node: NodeId) -> Command {
        Command::RemoveMember { node }
    }
}

fn commits(n: u32) -> Result<NonZeroU32, Error> {
    NonZeroU32::new(n).ok_or_else(|| Error::InvalidArgument(EventArgError::ZeroCommits.to_string()))
}

impl PipelineEvent {
    /// Gates passed: Qa (or a retried MergeFailure) → Merge, with the branch to merge and
    /// how many commits it is ahead. Zero commits is an `invalid_argument` error.
    ///
    /// ```
    /// use huskies_core::{ErrorKind, PipelineEvent};
    /// assert!(PipelineEvent::gates_passed("feature/42", 3).is_ok());
    /// let zero = PipelineEvent::gates_passed("feature/42", 0).unwrap_err();
    /// assert_eq!(zero.kind(), ErrorKind::InvalidArgument);
    /// ```
    pub fn gates_passed(branch: impl Into<String>, commits_ahead: u32) -> Result<Self, Error> {
        Ok(PipelineEvent::GatesPassed {
            branch: branch.into(),
            commits: commits(commits_ahead)?,
        })
    }

    /// QA skipped: Coding → Merge, as [`PipelineEvent::gates_passed`].
    pub fn qa_skipped(branch: impl Into<String>, commits_ahead: u32) -> Result<Self, Error> {
        Ok(PipelineEvent::QaSkipped {
            branch: branch.into(),
            commits: commits(commits_ahead)?,
        })
    }

    /// Gates failed: Qa → Coding.
    pub fn gates_failed(reason: impl Into<String>) -> Self {
        PipelineEvent::GatesFailed {
            reason: reason.into(),
        }
    }

    /// Merged: Merge → Done, with the merge commit.
    pub fn merge_succeeded(commit: impl Into<String>) -> Self {
        PipelineEvent::MergeSucceeded {
            commit: commit.into(),
        }
    }

    /// Merge failed (retryable): Merge → MergeFailure.
    pub fn merge_conflict(kind: impl Into<String>, reason: impl Into<String>) -> Self {
        PipelineEvent::MergeConflict {
            kind: kind.into(),
            reason: reason.into(),
        }
    }

    /// Merge failed for good: → Archived(MergeFailed).
    pub fn merge_failed_final(reason: impl Into<String>) -> Self {
        PipelineEvent::MergeFailedFinal {
            reason: reason.into(),
        }
    }

    /// Blocked: an active story → Archived(Blocked).
    pub fn block(reason: impl Into<String>) -> Self {
        PipelineEvent::Block {
            reason: reason.into(),
        }
    }

    /// Superseded by another story: → Archived(Superseded).
    pub fn supersede(by: StoryId) -> Self {
        PipelineEvent::Supersede { by }
    }

    /// Held for review: an active story → Archived(ReviewHeld).
    pub fn review_hold(reason: impl Into<String>) -> Self {
        PipelineEvent::ReviewHold {
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_build_the_literals() {
        let id = StoryId::new("s1").unwrap();
        let dep = StoryId::new("s0").unwrap();
        assert_eq!(
            Command::from(
                Command::add_story(id.clone(), "S")
                    .body("b")
                    .depends_on([dep.clone()])
            ),
            Command::AddStory {
                id: id.clone(),
                name: "S".into(),
                body: Some("b".into()),
                depends_on: vec![dep],
            }
        );
        assert_eq!(
            Command::claim(id.clone(), 60),
            Command::Claim {
                id: id.clone(),
                ttl_secs: 60
            }
        );
        assert_eq!(
            PipelineEvent::qa_skipped("b", 2).unwrap(),
            PipelineEvent::QaSkipped {
                branch: "b".into(),
                commits: NonZeroU32::new(2).unwrap()
            }
        );
        assert_eq!(
            PipelineEvent::qa_skipped("b", 0).unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }
}
