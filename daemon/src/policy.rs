//! The ticker of the heartbeat and the cluster policies. What is due and what the policies
//! do are decided in core (`huskies_core::PolicySchedule`, `huskies_core::policy_actions`);
//! this task only keeps time and executes the answer.

use std::sync::Arc;
use std::time::Duration;

use huskies_core::{policy_actions, Command, Error, Node, PolicySchedule, Timestamp};

use crate::shared::Shared;
use crate::DaemonConfig;

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut schedule = PolicySchedule::new();
    let policy = shared.config.policy();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = Shared::now();
        tracing::trace!(?now, "policy tick");
        shared.metrics.sample(now.as_millis());
        let due = schedule.due(now, &policy);
        if due.heartbeat {
            let cmd = Command::Heartbeat {
                label: shared.config.label.clone(),
                address: Some(shared.advertise.clone()),
            };
            match shared.with_node(|n| n.execute(now, cmd)) {
                Ok(r) => tracing::trace!(seq = r.seq, "heartbeat"),
                Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
            }
        }
        if due.policies {
            let config = shared.config.clone();
            if let Err(e) = shared.with_node(|n| apply_policies(n, now, &config)) {
                tracing::warn!(error = %e, "policy run failed");
            }
        }
    }
}

/// One policy run: executes what `huskies_core::policy_actions` decides (nothing unless
/// this node is the leader) and returns how many actions it took. Stops at the first
/// command that fails.
pub fn apply_policies(node: &mut Node, now: Timestamp, config: &DaemonConfig) -> Result<usize, Error> {
    let actions = policy_actions(node, now, &config.policy())?;
    for action in &actions {
        node.execute(now, action.command())?;
        tracing::info!(%action, "policy");
    }
    Ok(actions.len())
}
