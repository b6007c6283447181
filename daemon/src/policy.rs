//! Heartbeats and the cluster policies: archive Done stories after the retention period,
//! block a story after N merge failures in a row, clear stale merge locks.

use std::sync::Arc;
use std::time::Duration;

use huskies_core::{Command, Error, Node, PipelineEvent, Stage, StageKind, Timestamp};

use crate::shared::Shared;
use crate::DaemonConfig;

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_heartbeat: Option<Timestamp> = None;
    let mut last_policy: Option<Timestamp> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Shared::now();
        tracing::trace!(?now, "policy tick");
        shared.metrics.sample(now.as_millis());
        let due = |last: Option<Timestamp>, secs: u64| {
            last.is_none_or(|l| now.millis_since(l) >= (secs * 1000) as i64)
        };
        if due(last_heartbeat, shared.config.heartbeat_secs) {
            last_heartbeat = Some(now);
            let cmd = Command::Heartbeat {
                label: shared.config.label.clone(),
                address: Some(shared.advertise.clone()),
            };
            match shared.with_node(|n| n.execute(now, cmd)) {
                Ok(r) => tracing::trace!(seq = r.seq, "heartbeat"),
                Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
            }
        }
        if due(last_policy, shared.config.policy_interval_secs) {
            last_policy = Some(now);
            let config = shared.config.clone();
            if let Err(e) = shared.with_node(|n| apply_policies(n, now, &config)) {
                tracing::warn!(error = %e, "policy run failed");
            }
        }
    }
}

/// One policy run. Only the leader acts (the alive member with the lowest id), so two
/// daemons do not race to make the same transition.
pub fn apply_policies(node: &mut Node, now: Timestamp, config: &DaemonConfig) -> Result<usize, Error> {
    let me = node.node_id();
    let leader = node
        .nodes(now)?
        .into_iter()
        .filter(|n| n.alive && node.is_active_member(&n.node))
        .map(|n| n.node)
        .min();
    if leader != Some(me) {
        return Ok(0);
    }
    let mut done = 0;
    let retention_ms = i64::try_from(config.retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    for s in node.stories(Some(StageKind::Done), now)? {
        if let Stage::Done { merged_at, .. } = s.stage {
            if now.millis_since(merged_at) >= retention_ms {
                node.execute(
                    now,
                    Command::Event {
                        id: s.id.clone(),
                        event: PipelineEvent::Accepted,
                    },
                )?;
                tracing::info!(story = %s.id, "archived after the retention period");
                done += 1;
            }
        }
    }
    let limit = config.block_after_merge_failures;
    if limit > 0 {
        for s in node.stories(Some(StageKind::MergeFailure), now)? {
            if s.consecutive_merge_failures >= limit {
                let reason = format!("{} merge failures in a row", s.consecutive_merge_failures);
                node.execute(
                    now,
                    Command::Event {
                        id: s.id.clone(),
                        event: PipelineEvent::Block { reason },
                    },
                )?;
                tracing::info!(story = %s.id, "blocked after repeated merge failures");
                done += 1;
            }
        }
    }
    if let Some(lock) = node.stale_merge_lock(now)? {
        node.execute(now, Command::ClearStaleMergeLock)?;
        tracing::info!(holder = %lock.node.short(), "cleared a stale merge lock");
        done += 1;
    }
    Ok(done)
}
