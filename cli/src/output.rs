//! JSON shapes of the CLI contract (`docs/cli.md`) and the human renderings.

use huskies_core::{
    ArchiveReason, ExecutionState, Lease, Member, OpSummary, Stage, Story, Timestamp, Transition,
    VerifyReport,
};
use serde_json::{json, Value};
use std::borrow::Cow;

use crate::human::{esc, esc_lines, paint, Tone};

/// RFC 3339 UTC.
pub fn time(t: Timestamp) -> Value {
    Value::String(t.to_rfc3339())
}

/// `{"kind": ..., fields}` (the shape lives in core, shared with the event envelopes).
pub fn stage(s: &Stage) -> Value {
    huskies_core::stage_json(s)
}

/// A live claim or lock.
pub fn lease(l: &Lease) -> Value {
    json!({ "node": l.node.to_hex(), "claimed_at": time(l.claimed_at), "expires_at": time(l.expires_at) })
}

/// A live claim: the lease and whether it is confirmed (`Node::claim_status`).
pub fn claim(l: &Lease, confirmed: bool) -> Value {
    let mut v = lease(l);
    v["confirmed"] = Value::Bool(confirmed);
    v
}

fn execution(s: &ExecutionState) -> Value {
    let kind = s.kind_str();
    match s {
        ExecutionState::Idle => json!({ "kind": kind }),
        ExecutionState::Pending { agent, since } => {
            json!({ "kind": kind, "agent": agent, "since": time(*since) })
        }
        ExecutionState::Running {
            agent,
            started_at,
            last_heartbeat,
        } => json!({
            "kind": kind, "agent": agent, "started_at": time(*started_at), "last_heartbeat": time(*last_heartbeat)
        }),
        ExecutionState::RateLimited { agent, resume_at } => {
            json!({ "kind": kind, "agent": agent, "resume_at": time(*resume_at) })
        }
        ExecutionState::Completed {
            agent,
            exit_code,
            completed_at,
        } => json!({
            "kind": kind, "agent": agent, "exit_code": exit_code, "completed_at": time(*completed_at)
        }),
    }
}

/// The contract's story object (plus `body`, `execution`, `consecutive_merge_failures`).
pub fn story(s: &Story) -> Value {
    json!({
        "id": s.id.as_str(),
        "name": s.name,
        "body": s.body,
        "depends_on": s.depends_on.iter().map(|d| d.as_str()).collect::<Vec<_>>(),
        "stage": stage(&s.stage),
        "claim": s.claim.as_ref().map(|l| claim(l, s.claim_confirmed)),
        "deleted": s.deleted,
        "conflicts": s.conflicts.iter().map(|c| json!({
            "op_id": c.op_id.to_hex(),
            "author": c.author.to_hex(),
            "lamport": c.lamport,
            "event": c.event,
            "from": c.from.as_str(),
            "to": c.to.as_str(),
            "concurrent_with": c.concurrent_with.map(|o| o.to_hex()),
        })).collect::<Vec<_>>(),
        "execution": s.execution.iter().map(|(n, e)| (n.to_hex(), execution(e))).collect::<serde_json::Map<_, _>>(),
        "consecutive_merge_failures": s.consecutive_merge_failures,
    })
}

/// One transition of `story history`.
pub fn transition(t: &Transition) -> Value {
    json!({
        "op_id": t.op_id.to_hex(),
        "author": t.author.to_hex(),
        "lamport": t.lamport,
        "at": time(t.at),
        "from": t.from.kind().as_str(),
        "to": t.to.kind().as_str(),
        "to_stage": stage(&t.to),
        "event": t.event.name(),
        "conflict": t.conflict,
        "forced_over": t.forced_over.map(|n| n.to_hex()),
    })
}

/// One op of `huskies log`.
pub fn op(o: &OpSummary) -> Value {
    json!({
        "op_id": o.op_id.to_hex(),
        "author": o.author.to_hex(),
        "seq": o.seq,
        "lamport": o.lamport,
        "at": time(o.wall),
        "kind": o.kind,
        "story": o.story.as_ref().map(|s| s.as_str()),
    })
}

/// One member.
pub fn member(m: &Member) -> Value {
    json!({
        "node_id": m.node.to_hex(),
        "role": m.role.as_str(),
        "removed": m.removed,
        "quarantined": m.quarantined,
        "rotated_to": m.rotated_to.map(|n| n.to_hex()),
    })
}

/// `huskies verify`.
pub fn verify(r: &VerifyReport) -> Value {
    json!({
        "ok": r.ok,
        "ops_checked": r.ops_checked,
        "problems": r.problems,
        "forks": r.forks.iter().map(|f| json!({
            "author": f.author.to_hex(),
            "at_seq": f.at_seq,
            "evidence": f.evidence.iter().map(|e| e.to_hex()).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

/// One line for a stage, for humans: every field from an op escaped (`human::esc`).
pub fn stage_line(s: &Stage) -> String {
    match s {
        Stage::Backlog | Stage::Coding | Stage::Qa => s.kind().as_str().to_string(),
        Stage::Merge {
            feature_branch,
            commits_ahead,
        } => {
            let plural = if commits_ahead.get() == 1 { "" } else { "s" };
            format!(
                "merge ({}, {commits_ahead} commit{plural} ahead)",
                esc(feature_branch)
            )
        }
        Stage::MergeFailure { kind, reason } => {
            format!("merge_failure ({}: {})", esc(kind), esc(reason))
        }
        Stage::Done {
            merged_at,
            merge_commit,
        } => format!("done ({} at {merged_at})", esc(merge_commit)),
        Stage::Archived { archived_at, reason } => {
            let why = match reason {
                ArchiveReason::Superseded { by } => format!("superseded by {}", esc(by.as_str())),
                ArchiveReason::Blocked { reason }
                | ArchiveReason::MergeFailed { reason }
                | ArchiveReason::ReviewHeld { reason } => {
                    format!("{}: {}", reason_kind(s), esc(reason))
                }
                other => other.kind_str().to_string(),
            };
            format!("archived ({why}, at {archived_at})")
        }
    }
}

/// [`stage_line`] in the stage's colour.
pub fn stage_painted(s: &Stage) -> String {
    paint(&stage_line(s), Tone::Stage(s.kind()))
}

fn reason_kind(s: &Stage) -> &'static str {
    match s {
        Stage::Archived { reason, .. } => reason.kind_str(),
        _ => "",
    }
}

/// One node's execution state for humans (the agent's name escaped).
fn execution_line(e: &ExecutionState) -> String {
    match e {
        ExecutionState::Idle => "idle".into(),
        ExecutionState::Pending { agent, since } => format!("pending: {} since {since}", esc(agent)),
        ExecutionState::Running {
            agent,
            last_heartbeat,
            ..
        } => format!("running: {} (last heartbeat {last_heartbeat})", esc(agent)),
        ExecutionState::RateLimited { agent, resume_at } => {
            format!("rate limited: {} until {resume_at}", esc(agent))
        }
        ExecutionState::Completed { agent, exit_code, .. } => {
            format!("completed: {} exited {exit_code}", esc(agent))
        }
    }
}

/// A story for humans. `history` (the story's transitions, or empty) names the transition
/// each conflict was concurrent with.
pub fn story_text(s: &Story, history: &[Transition]) -> String {
    let mut out = format!(
        "{}  {}\n  stage: {}\n",
        esc(s.id.as_str()),
        esc(&s.name),
        stage_painted(&s.stage)
    );
    if !s.depends_on.is_empty() {
        let deps: Vec<Cow<'_, str>> = s.depends_on.iter().map(|d| esc(d.as_str())).collect();
        out += &format!("  depends on: {}\n", deps.join(", "));
    }
    if let Some(c) = &s.claim {
        let confirmed = if s.claim_confirmed {
            "confirmed"
        } else {
            "not confirmed yet"
        };
        out += &format!(
            "  claimed by {} until {} ({confirmed})\n",
            c.node.short(),
            c.expires_at
        );
    }
    if s.deleted {
        out += &format!("  {}\n", paint("deleted", Tone::Warn));
    }
    for (node, e) in &s.execution {
        out += &format!("  execution on {}: {}\n", node.short(), execution_line(e));
    }
    for c in &s.conflicts {
        let other = c
            .concurrent_with
            .and_then(|o| history.iter().find(|t| t.op_id == o))
            .map_or_else(
                || "another transition".to_string(),
                |t| {
                    format!(
                        "{} by {} ({} -> {})",
                        t.event.name(),
                        t.author.short(),
                        t.from.kind(),
                        t.to.kind()
                    )
                },
            );
        out += &format!(
            "  {} {} by {} ({} -> {}) was concurrent with {other}\n",
            paint("conflict:", Tone::Bad),
            c.event,
            c.author.short(),
            c.from,
            c.to
        );
    }
    if let Some(body) = &s.body {
        out += "\n";
        out += &esc_lines(body, "  | ");
    }
    out
}
