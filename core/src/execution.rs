//! Per-node execution state: what *this* node is doing about a story right now.
//!
//! Each node owns its own execution register per story; only that node's ops may write it
//! (enforced at merge by keying the register on the op's author).

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// What one node is doing about one story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ExecutionState {
    /// Nothing.
    #[default]
    Idle,
    /// An agent was requested and has not started yet.
    Pending {
        /// Agent name.
        agent: String,
        /// When it was requested.
        since: Timestamp,
    },
    /// The agent's process is alive.
    Running {
        /// Agent name.
        agent: String,
        /// When it started.
        started_at: Timestamp,
        /// Its latest heartbeat.
        last_heartbeat: Timestamp,
    },
    /// Waiting for an API rate-limit window.
    RateLimited {
        /// Agent name.
        agent: String,
        /// When it may resume.
        resume_at: Timestamp,
    },
    /// The agent exited.
    Completed {
        /// Agent name.
        agent: String,
        /// Its exit code.
        exit_code: i32,
        /// When it exited.
        completed_at: Timestamp,
    },
}

impl ExecutionState {
    /// The contract's name: `idle`, `pending`, `running`, `rate_limited`, `completed`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            ExecutionState::Idle => "idle",
            ExecutionState::Pending { .. } => "pending",
            ExecutionState::Running { .. } => "running",
            ExecutionState::RateLimited { .. } => "rate_limited",
            ExecutionState::Completed { .. } => "completed",
        }
    }
}

/// Something that happened to this node's agent for a story.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecutionEvent {
    /// Ask for an agent: Idle → Pending.
    SpawnRequested {
        /// Agent name.
        agent: String,
    },
    /// The agent started: Pending or RateLimited → Running.
    SpawnedSuccessfully,
    /// The agent is alive: Running → Running with a new heartbeat.
    Heartbeat,
    /// Rate limited: Pending or Running → RateLimited.
    HitRateLimit {
        /// When it may resume.
        resume_at: Timestamp,
    },
    /// The agent exited: Pending, Running or RateLimited → Completed.
    Exited {
        /// Its exit code.
        exit_code: i32,
    },
    /// Stopped by someone: anything → Idle.
    Stopped,
    /// Reset: anything → Idle.
    Reset,
}

impl ExecutionEvent {
    /// A short name for errors.
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionEvent::SpawnRequested { .. } => "spawn-requested",
            ExecutionEvent::SpawnedSuccessfully => "spawned",
            ExecutionEvent::Heartbeat => "heartbeat",
            ExecutionEvent::HitRateLimit { .. } => "hit-rate-limit",
            ExecutionEvent::Exited { .. } => "exited",
            ExecutionEvent::Stopped => "stopped",
            ExecutionEvent::Reset => "reset",
        }
    }
}

/// An execution event that the machine does not allow from the given state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("execution event {event} is not allowed from execution state {from}")]
pub struct InvalidExecutionEvent {
    /// The state's name.
    pub from: &'static str,
    /// The event's name.
    pub event: &'static str,
}

/// The execution state machine. `now` stamps the times the new state records.
pub fn apply_execution_event(
    state: &ExecutionState,
    event: &ExecutionEvent,
    now: Timestamp,
) -> Result<ExecutionState, InvalidExecutionEvent> {
    use ExecutionEvent as E;
    use ExecutionState as S;
    let next = match (state, event) {
        (_, E::Stopped | E::Reset) => S::Idle,
        (S::Idle, E::SpawnRequested { agent }) => S::Pending {
            agent: agent.clone(),
            since: now,
        },
        (S::Pending { agent, .. } | S::RateLimited { agent, .. }, E::SpawnedSuccessfully) => S::Running {
            agent: agent.clone(),
            started_at: now,
            last_heartbeat: now,
        },
        (
            S::Running {
                agent, started_at, ..
            },
            E::Heartbeat,
        ) => S::Running {
            agent: agent.clone(),
            started_at: *started_at,
            last_heartbeat: now,
        },
        (S::Pending { agent, .. } | S::Running { agent, .. }, E::HitRateLimit { resume_at }) => {
            S::RateLimited {
                agent: agent.clone(),
                resume_at: *resume_at,
            }
        }
        (
            S::Pending { agent, .. } | S::Running { agent, .. } | S::RateLimited { agent, .. },
            E::Exited { exit_code },
        ) => S::Completed {
            agent: agent.clone(),
            exit_code: *exit_code,
            completed_at: now,
        },
        (
            S::Idle | S::Pending { .. } | S::Running { .. } | S::RateLimited { .. } | S::Completed { .. },
            E::SpawnRequested { .. }
            | E::SpawnedSuccessfully
            | E::Heartbeat
            | E::HitRateLimit { .. }
            | E::Exited { .. },
        ) => {
            return Err(InvalidExecutionEvent {
                from: state.kind_str(),
                event: event.name(),
            })
        }
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn happy_path_and_reset() {
        let t = Timestamp::from_millis;
        let s = ExecutionState::Idle;
        let s = apply_execution_event(
            &s,
            &ExecutionEvent::SpawnRequested {
                agent: "coder".into(),
            },
            t(1),
        )
        .unwrap();
        let s = apply_execution_event(&s, &ExecutionEvent::SpawnedSuccessfully, t(2)).unwrap();
        let s = apply_execution_event(&s, &ExecutionEvent::Heartbeat, t(3)).unwrap();
        assert_eq!(
            s,
            ExecutionState::Running {
                agent: "coder".into(),
                started_at: t(2),
                last_heartbeat: t(3)
            }
        );
        let s = apply_execution_event(&s, &ExecutionEvent::Exited { exit_code: 0 }, t(4)).unwrap();
        assert_eq!(s.kind_str(), "completed");
        assert!(apply_execution_event(&s, &ExecutionEvent::Heartbeat, t(5)).is_err());
        let s = apply_execution_event(&s, &ExecutionEvent::Reset, t(6)).unwrap();
        assert_eq!(s, ExecutionState::Idle);
    }

    #[test]
    fn invalid_events_are_refused() {
        let err = apply_execution_event(
            &ExecutionState::Idle,
            &ExecutionEvent::Heartbeat,
            Timestamp::from_millis(0),
        )
        .unwrap_err();
        assert_eq!(err.from, "idle");
        assert_eq!(err.event, "heartbeat");
    }
}
