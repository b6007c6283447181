//! The ticker of the heartbeat and the cluster policies. What is due and what the policies
//! do are decided in core (`huskies_core::PolicySchedule`, `huskies_core::policy_actions`);
//! this task only keeps time and executes the answer.

use std::sync::Arc;
use std::time::Duration;

use huskies_core::{policy_actions, Command, Error, Event, Node, PolicySchedule, Timestamp};

use crate::shared::Shared;
use crate::DaemonConfig;

/// How long a burst of merged claim ops is collected before the prompt heartbeat that
/// tells their claimants this node has seen them (one heartbeat per burst, not per op).
const CLAIM_HEARTBEAT_DEBOUNCE: Duration = Duration::from_millis(20);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut changed = shared.changed.subscribe();
    let mut events = shared.events.subscribe();
    let mut schedule = PolicySchedule::new();
    let policy = shared.config.policy();
    loop {
        let mut ticked = false;
        let mut merged = false;
        tokio::select! {
            _ = tick.tick() => ticked = true,
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
                merged = true;
            }
            e = events.recv() => match e {
                Ok(Event::ClaimLost { story, winner }) => tracing::warn!(
                    %story,
                    winner = %winner.map_or("nobody".to_string(), |w| w.short()),
                    "this node lost its claim on a story: another node's claim or a forced release overrode it (see `huskies status`)"
                ),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "claim-loss watcher fell behind the event stream")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if merged {
            // New ops were merged: if another node's claim was among them, say promptly what
            // this node has seen (the claimant confirms its claim from it).
            tokio::time::sleep(CLAIM_HEARTBEAT_DEBOUNCE).await;
            changed.borrow_and_update();
            if shared.with_node(|n| n.heartbeat_wanted()) {
                heartbeat(&shared, Shared::now());
            }
        }
        if !ticked {
            continue;
        }
        let now = Shared::now();
        tracing::trace!(?now, "policy tick");
        shared.metrics.sample(now.as_millis());
        let due = schedule.due(now, &policy);
        if due.heartbeat {
            heartbeat(&shared, now);
        }
        if due.policies {
            let config = shared.config.clone();
            if let Err(e) = shared.with_node(|n| apply_policies(n, now, &config)) {
                tracing::warn!(error = %e, "policy run failed");
            }
        }
    }
}

/// Writes this node's heartbeat (with what it has seen).
fn heartbeat(shared: &Shared, now: Timestamp) {
    let cmd = Command::Heartbeat {
        label: shared.config.label.clone(),
        address: Some(shared.advertise.clone()),
    };
    match shared.with_node(|n| n.execute(now, cmd)) {
        Ok(r) => tracing::trace!(seq = r.seq, "heartbeat"),
        Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
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
