//! Outbound connections: configured peers, and up to `max_mesh_peers` more discovered from
//! node presence, each redialled with jittered exponential backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use huskies_core::sync::SessionOptions;
use huskies_core::NodeId;
use rand_core::RngCore;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::peer::{drive, split_client};
use crate::shared::{Origin, Shared};

const DISCOVERY_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let configured: BTreeSet<String> = shared.config.peers.iter().cloned().collect();
    for url in &configured {
        tasks.push(tokio::spawn(dial_loop(shared.clone(), url.clone(), None)));
    }
    let mut discovered: BTreeMap<NodeId, (watch::Sender<bool>, JoinHandle<()>)> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DISCOVERY_INTERVAL) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let me = shared.node_id();
        let now = Shared::now();
        let alive = match shared.with_node(|n| n.nodes(now)) {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "discovery: cannot read presence");
                continue;
            }
        };
        let connected: BTreeSet<NodeId> = shared.connected_nodes().into_iter().collect();
        let candidates: BTreeMap<NodeId, String> = alive
            .into_iter()
            .filter(|n| n.alive && n.node != me)
            .filter_map(|n| n.address.map(|a| (n.node, a)))
            .filter(|(_, a)| !configured.contains(a) && *a != shared.advertise)
            .collect();
        discovered.retain(|node, (stop, task)| {
            let keep = candidates.contains_key(node) && !task.is_finished();
            if !keep {
                let _ = stop.send(true);
            }
            keep
        });
        for (node, address) in candidates {
            if discovered.len() >= shared.config.max_mesh_peers {
                break;
            }
            if discovered.contains_key(&node) || connected.contains(&node) {
                continue;
            }
            let (stop, rx) = watch::channel(false);
            tracing::debug!(peer = %node.short(), %address, "discovered peer");
            discovered.insert(
                node,
                (stop, tokio::spawn(dial_loop(shared.clone(), address, Some(rx)))),
            );
        }
    }
    for (_, (stop, task)) in discovered {
        let _ = stop.send(true);
        tasks.push(task);
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn jitter(ms: u64) -> Duration {
    let half = ms / 2;
    Duration::from_millis(half + rand_core::OsRng.next_u64() % (half + 1))
}

async fn dial_loop(shared: Arc<Shared>, url: String, stop: Option<watch::Receiver<bool>>) {
    let mut shutdown = shared.shutdown.subscribe();
    // Configured peers are never stopped; keep a sender alive so `wait_for` never ends.
    let (_keep, idle) = watch::channel(false);
    let mut stop = stop.unwrap_or(idle);
    let mut backoff = shared.config.backoff_initial_ms;
    let limit = shared.config.session.max_frame_bytes;
    let connect_timeout = Duration::from_millis(shared.config.session.handshake_timeout_ms.max(1) as u64);
    loop {
        if *shutdown.borrow() || *stop.borrow() {
            return;
        }
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let attempt = tokio::time::timeout(
            connect_timeout,
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(config), true),
        )
        .await;
        match attempt {
            Ok(Ok((ws, _))) => {
                let (sink, stream) = split_client(ws);
                let ended = drive(
                    shared.clone(),
                    sink,
                    stream,
                    SessionOptions::default(),
                    Origin::Outbound,
                    Some(url.clone()),
                )
                .await;
                if ended.reason == "shutdown" {
                    return;
                }
                if ended.peer.is_some() && ended.reason != "duplicate" {
                    backoff = shared.config.backoff_initial_ms;
                } else {
                    backoff = (backoff * 2).min(shared.config.backoff_max_ms);
                }
                if ended.reason == "duplicate" {
                    backoff = shared.config.backoff_max_ms;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%url, error = %e, "dial failed");
                backoff = (backoff * 2).min(shared.config.backoff_max_ms);
            }
            Err(_) => {
                tracing::debug!(%url, "dial timed out");
                backoff = (backoff * 2).min(shared.config.backoff_max_ms);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jitter(backoff)) => {}
            _ = shutdown.wait_for(|s| *s) => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
