//! The cluster policies, as a pure function of (node state, `now`, [`PolicyConfig`]).
//!
//! A host (the daemon today, any embedding tomorrow) keeps a ticker: it asks
//! [`PolicySchedule::due`] what is due, writes the heartbeat it is told to, and executes the
//! commands [`policy_actions`] returns. The rules themselves live here and nowhere else:
//!
//! - a Done story is archived (`accepted`) once it has been Done for the retention period;
//! - a story is blocked after `block_after_merge_failures` merge failures in a row;
//! - a merge lock whose holder is dead or whose lease ran out is cleared;
//! - only the leader acts — the alive, active member with the lowest id — so two nodes do
//!   not race to make the same transition. Every node that sees the same presence records
//!   picks the same leader.

use std::fmt;

use crate::{Command, Error, Node, NodeId, PipelineEvent, Stage, StageKind, Store, StoryId, Timestamp};

/// Settings of the policies and of the ticker that runs them. `Default` gives the
/// documented defaults (the daemon's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Seconds between heartbeats (default 10).
    pub heartbeat_secs: u64,
    /// Seconds between policy runs (default 5).
    pub policy_interval_secs: u64,
    /// Done stories are archived this long after merging (default 4 h).
    pub retention_secs: u64,
    /// A story is blocked after this many merge failures in a row (default 3; 0 never
    /// blocks).
    pub block_after_merge_failures: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            heartbeat_secs: 10,
            policy_interval_secs: 5,
            retention_secs: 4 * 3600,
            block_after_merge_failures: 3,
        }
    }
}

/// One thing the policies decided. [`PolicyAction::command`] is what to execute; the value
/// itself says why, for the host's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyAction {
    /// A Done story past the retention period: archive it as completed.
    Archive {
        /// The story.
        story: StoryId,
    },
    /// A story that failed to merge too often in a row: block it.
    Block {
        /// The story.
        story: StoryId,
        /// Its consecutive merge failures.
        failures: u32,
    },
    /// A merge lock whose holder is dead or whose lease ran out: clear it.
    ClearStaleMergeLock {
        /// The node that held it.
        holder: NodeId,
    },
}

impl PolicyAction {
    /// The command that carries the action out.
    pub fn command(&self) -> Command {
        match self {
            PolicyAction::Archive { story } => Command::Event {
                id: story.clone(),
                event: PipelineEvent::Accepted,
            },
            PolicyAction::Block { story, failures } => Command::Event {
                id: story.clone(),
                event: PipelineEvent::Block {
                    reason: format!("{failures} merge failures in a row"),
                },
            },
            PolicyAction::ClearStaleMergeLock { .. } => Command::ClearStaleMergeLock,
        }
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyAction::Archive { story } => write!(f, "archived {story} after the retention period"),
            PolicyAction::Block { story, failures } => {
                write!(f, "blocked {story} after {failures} merge failures in a row")
            }
            PolicyAction::ClearStaleMergeLock { holder } => {
                write!(f, "cleared a stale merge lock held by {}", holder.short())
            }
        }
    }
}

/// The node that runs the policies now: the alive, active member with the lowest id, or
/// `None` when no active member is alive.
pub fn policy_leader<S: Store>(node: &Node<S>, now: Timestamp) -> Result<Option<NodeId>, Error> {
    Ok(node
        .nodes(now)?
        .into_iter()
        .filter(|n| n.alive && node.is_active_member(&n.node))
        .map(|n| n.node)
        .min())
}

/// What the policies would do on `node` at `now`: empty unless `node` is the leader. A
/// pure function of the node's state, `now` and `config`; the caller executes
/// [`PolicyAction::command`] of each, in order.
pub fn policy_actions<S: Store>(
    node: &Node<S>,
    now: Timestamp,
    config: &PolicyConfig,
) -> Result<Vec<PolicyAction>, Error> {
    if policy_leader(node, now)? != Some(node.node_id()) {
        return Ok(Vec::new());
    }
    let mut actions = Vec::new();
    let retention_ms = i64::try_from(config.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    for s in node.stories(Some(StageKind::Done), now)? {
        if let Stage::Done { merged_at, .. } = s.stage {
            if now.millis_since(merged_at) >= retention_ms {
                actions.push(PolicyAction::Archive { story: s.id });
            }
        }
    }
    let limit = config.block_after_merge_failures;
    if limit > 0 {
        for s in node.stories(Some(StageKind::MergeFailure), now)? {
            if s.consecutive_merge_failures >= limit {
                actions.push(PolicyAction::Block {
                    story: s.id,
                    failures: s.consecutive_merge_failures,
                });
            }
        }
    }
    if let Some(lock) = node.stale_merge_lock(now)? {
        actions.push(PolicyAction::ClearStaleMergeLock { holder: lock.node });
    }
    Ok(actions)
}

/// What a tick of the host's ticker should do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyDue {
    /// Write this node's heartbeat.
    pub heartbeat: bool,
    /// Run [`policy_actions`] and execute them.
    pub policies: bool,
}

/// When the heartbeat and the policies last ran: the host's ticker state, kept here so
/// that the schedule is a function of the `now`s it is given. Both are due on the first
/// tick.
#[derive(Clone, Debug, Default)]
pub struct PolicySchedule {
    last_heartbeat: Option<Timestamp>,
    last_policy: Option<Timestamp>,
}

impl PolicySchedule {
    /// A schedule on which everything is due.
    pub fn new() -> PolicySchedule {
        PolicySchedule::default()
    }

    /// What is due at `now`, recorded as done: the caller acts on the answer (a failed
    /// heartbeat is not retried before the next period).
    pub fn due(&mut self, now: Timestamp, config: &PolicyConfig) -> PolicyDue {
        let due = |last: &mut Option<Timestamp>, secs: u64| {
            let period = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
            let is_due = last.is_none_or(|l| now.millis_since(l) >= period);
            if is_due {
                *last = Some(now);
            }
            is_due
        };
        PolicyDue {
            heartbeat: due(&mut self.last_heartbeat, config.heartbeat_secs),
            policies: due(&mut self.last_policy, config.policy_interval_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;
    use crate::{InitMode, NodeConfig, Role};

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(1_763_700_000_000).add_secs(secs)
    }

    fn sid(s: &str) -> StoryId {
        StoryId::new(s).unwrap()
    }

    fn heartbeat(n: &mut Node, at: u64, label: &str) {
        n.execute(
            t(at),
            Command::Heartbeat {
                label: label.into(),
                address: None,
            },
        )
        .unwrap();
    }

    fn ev(n: &mut Node, at: u64, id: &str, event: PipelineEvent) {
        n.execute(t(at), Command::Event { id: sid(id), event }).unwrap();
    }

    fn init(home: &std::path::Path, mode: InitMode) -> Node {
        Node::init(home, mode, &mut rand_core::OsRng, t(0), NodeConfig::default()).unwrap()
    }

    /// A new cluster's only node, alive at t(0).
    fn founder(home: &std::path::Path) -> Node {
        let mut n = init(home, InitMode::NewCluster { name: "p".into() });
        heartbeat(&mut n, 0, "a");
        n
    }

    /// Adds `id` at t(`at`), brings it to the merge stage and applies `then`, in one
    /// group commit.
    fn merging(n: &mut Node, at: u64, id: &str, then: Vec<PipelineEvent>) {
        let qa_skipped = PipelineEvent::QaSkipped {
            branch: "b".into(),
            commits: NonZeroU32::new(1).unwrap(),
        };
        let mut cmds = vec![Command::AddStory {
            id: sid(id),
            name: id.into(),
            body: None,
            depends_on: vec![],
        }];
        for event in [PipelineEvent::DepsMet, qa_skipped].into_iter().chain(then) {
            cmds.push(Command::Event { id: sid(id), event });
        }
        for r in n.execute_group(t(at), cmds).unwrap() {
            r.unwrap();
        }
    }

    #[test]
    fn a_done_story_is_archived_exactly_from_the_end_of_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = founder(dir.path());
        let merged = PipelineEvent::MergeSucceeded { commit: "c".into() };
        merging(&mut n, 10, "1_done", vec![merged]);
        let config = PolicyConfig {
            retention_secs: 3600,
            ..PolicyConfig::default()
        };
        // The founder must be alive (a fresh heartbeat) to lead.
        heartbeat(&mut n, 3609, "a");
        assert_eq!(
            policy_actions(&n, t(3609), &config).unwrap(),
            vec![],
            "one second early"
        );
        let at_end = t(10).add_secs(3600);
        let actions = policy_actions(&n, at_end, &config).unwrap();
        assert_eq!(actions, vec![PolicyAction::Archive { story: sid("1_done") }]);
        n.execute(at_end, actions[0].command()).unwrap();
        assert!(matches!(
            n.story(&sid("1_done"), at_end).unwrap().stage,
            Stage::Archived { .. }
        ));
        assert_eq!(
            policy_actions(&n, at_end, &config).unwrap(),
            vec![],
            "nothing left to do"
        );
    }

    #[test]
    fn a_story_is_blocked_at_the_failure_limit_and_zero_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = founder(dir.path());
        merging(&mut n, 0, "2_flaky", vec![]);
        let config = PolicyConfig {
            block_after_merge_failures: 2,
            ..PolicyConfig::default()
        };
        let conflict = |i: u32| PipelineEvent::MergeConflict {
            kind: "conflict".into(),
            reason: format!("try {i}"),
        };
        ev(&mut n, 1, "2_flaky", conflict(1));
        assert_eq!(policy_actions(&n, t(2), &config).unwrap(), vec![]);
        ev(
            &mut n,
            1,
            "2_flaky",
            PipelineEvent::GatesPassed {
                branch: "b".into(),
                commits: NonZeroU32::new(1).unwrap(),
            },
        );
        ev(&mut n, 1, "2_flaky", conflict(2));
        let block = PolicyAction::Block {
            story: sid("2_flaky"),
            failures: 2,
        };
        assert_eq!(policy_actions(&n, t(2), &config).unwrap(), vec![block.clone()]);
        let never = PolicyConfig {
            block_after_merge_failures: 0,
            ..PolicyConfig::default()
        };
        assert_eq!(policy_actions(&n, t(2), &never).unwrap(), vec![]);
        n.execute(t(2), block.command()).unwrap();
        match n.story(&sid("2_flaky"), t(2)).unwrap().stage {
            Stage::Archived {
                reason: crate::ArchiveReason::Blocked { reason },
                ..
            } => assert_eq!(reason, "2 merge failures in a row"),
            other => panic!("not blocked: {other:?}"),
        }
    }

    #[test]
    fn only_the_alive_member_with_the_lowest_id_acts_on_a_stale_lock() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = founder(&dir.path().join("a"));
        let mut b = init(
            &dir.path().join("b"),
            InitMode::Join {
                cluster: a.cluster_id(),
            },
        );
        let member = Command::AddMember {
            node: b.node_id(),
            role: Role::Member,
        };
        a.execute(t(0), member).unwrap();
        let sync = |from: &Node, to: &mut Node| {
            let report = to
                .ingest_bundle(&from.export_since(&to.version_vector()).unwrap())
                .unwrap();
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        };
        sync(&a, &mut b);
        heartbeat(&mut b, 1, "b");
        b.execute(t(1), Command::AcquireMergeLock { ttl_secs: 3600 })
            .unwrap();
        sync(&b, &mut a);
        let config = PolicyConfig::default();
        heartbeat(&mut a, 10, "a");
        let lower = a.node_id().min(b.node_id());
        assert_eq!(policy_leader(&a, t(10)).unwrap(), Some(lower), "both alive");
        // Long after b's last heartbeat: b is dead, its lock stale, and a alone leads.
        heartbeat(&mut a, 1000, "a");
        assert_eq!(policy_leader(&a, t(1000)).unwrap(), Some(a.node_id()));
        assert_eq!(
            policy_actions(&a, t(1000), &config).unwrap(),
            vec![PolicyAction::ClearStaleMergeLock { holder: b.node_id() }]
        );
        // b, seeing a's fresh heartbeat and its own stale one, leaves the work to a.
        sync(&a, &mut b);
        let b_view = policy_actions(&b, t(1000), &config).unwrap();
        assert_eq!(
            b_view,
            vec![],
            "b's own heartbeat is stale, so b is not alive: no leader role"
        );
    }

    #[test]
    fn nobody_alive_means_no_leader_and_no_action() {
        let dir = tempfile::tempdir().unwrap();
        let n = founder(dir.path());
        assert_eq!(policy_leader(&n, t(100_000)).unwrap(), None);
        assert_eq!(
            policy_actions(&n, t(100_000), &PolicyConfig::default()).unwrap(),
            vec![]
        );
    }

    #[test]
    fn the_schedule_runs_each_job_once_per_period() {
        let config = PolicyConfig {
            heartbeat_secs: 10,
            policy_interval_secs: 4,
            ..PolicyConfig::default()
        };
        let mut s = PolicySchedule::new();
        let both = PolicyDue {
            heartbeat: true,
            policies: true,
        };
        assert_eq!(s.due(t(0), &config), both, "everything is due on the first tick");
        assert_eq!(s.due(t(0), &config), PolicyDue::default());
        assert_eq!(s.due(t(3), &config), PolicyDue::default());
        assert_eq!(
            s.due(t(4), &config),
            PolicyDue {
                heartbeat: false,
                policies: true
            }
        );
        assert_eq!(
            s.due(t(7), &config),
            PolicyDue::default(),
            "the policy period counts from its last run"
        );
        assert_eq!(s.due(t(10), &config), both);
    }
}
