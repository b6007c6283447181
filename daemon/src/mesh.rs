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

/// A peer of another cluster is a configuration mistake, not a passing failure: it is
/// retried no sooner than this after the first refusal, doubling each time...
const WRONG_CLUSTER_BACKOFF_INITIAL_MS: u64 = 30_000;
/// ...up to this.
const WRONG_CLUSTER_BACKOFF_MAX_MS: u64 = 600_000;
/// A failing dial is logged at WARN on its first failure, when its error changes, and then
/// at most this often (attempts in between are logged at DEBUG).
const WARN_EVERY: Duration = Duration::from_secs(60);

/// One dial loop's failures since its last success: kept in `Shared::dials` for `/health`
/// and `huskies status`, and logged loudly but rate-limited.
struct Failures {
    url: String,
    attempts: u64,
    since: Option<huskies_core::Timestamp>,
    last_error: String,
    last_warned: Option<tokio::time::Instant>,
}

impl Failures {
    fn new(url: &str) -> Failures {
        Failures {
            url: url.to_string(),
            attempts: 0,
            since: None,
            last_error: String::new(),
            last_warned: None,
        }
    }

    /// A connection was established: forget the failures.
    fn succeeded(&mut self, shared: &Shared) {
        if self.attempts > 0 {
            tracing::info!(url = %self.url, failed_attempts = self.attempts, "peer reachable again");
        }
        self.attempts = 0;
        self.since = None;
        self.last_error.clear();
        self.last_warned = None;
        self.forget(shared);
    }

    fn forget(&self, shared: &Shared) {
        shared
            .dials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.url);
    }

    /// An attempt failed with `error`; the next one is in `retry_in`.
    fn failed(&mut self, shared: &Shared, error: String, wrong_cluster: bool, retry_in: Duration) {
        let now = Shared::now();
        self.attempts += 1;
        let since = *self.since.get_or_insert(now);
        let changed = error != self.last_error;
        self.last_error = error;
        let retry_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX);
        if wrong_cluster {
            // Rare by construction (the backoff is minutes): every one is an error.
            tracing::error!(
                url = %self.url,
                error = %self.last_error,
                attempts = self.attempts,
                retry_in_s = retry_ms / 1000,
                "peer is in another cluster: check --peer and the [daemon] peers of config.toml"
            );
        } else {
            let due = self.last_warned.is_none_or(|t| t.elapsed() >= WARN_EVERY);
            if changed || due {
                self.last_warned = Some(tokio::time::Instant::now());
                tracing::warn!(
                    url = %self.url,
                    error = %self.last_error,
                    attempts = self.attempts,
                    retry_in_ms = retry_ms,
                    "cannot reach peer (retrying; repeats are logged at most once a minute)"
                );
            } else {
                tracing::debug!(url = %self.url, error = %self.last_error, attempts = self.attempts, "dial failed");
            }
        }
        let status = crate::metrics::DialStatus {
            address: self.url.clone(),
            severity: if wrong_cluster { "error" } else { "warn" },
            last_error: self.last_error.clone(),
            since: since.to_rfc3339(),
            attempts: self.attempts,
            retry_in_ms: retry_ms,
        };
        shared
            .dials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(self.url.clone(), status);
    }
}

async fn dial_loop(shared: Arc<Shared>, url: String, stop: Option<watch::Receiver<bool>>) {
    let mut shutdown = shared.shutdown.subscribe();
    // Configured peers are never stopped; keep a sender alive so `wait_for` never ends.
    let (_keep, idle) = watch::channel(false);
    let mut stop = stop.unwrap_or(idle);
    let mut backoff = shared.config.backoff_initial_ms;
    let mut wrong_cluster_backoff = WRONG_CLUSTER_BACKOFF_INITIAL_MS;
    let mut failures = Failures::new(&url);
    let limit = shared.config.session.max_frame_bytes;
    let connect_timeout = Duration::from_millis(shared.config.session.handshake_timeout_ms.max(1) as u64);
    loop {
        if *shutdown.borrow() || *stop.borrow() {
            failures.forget(&shared);
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
        // The failure of this attempt, if it failed: (error, another cluster).
        let mut failed: Option<(String, bool)> = None;
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
                    failures.forget(&shared);
                    return;
                }
                if ended.peer.is_some() && ended.reason != "duplicate" {
                    backoff = shared.config.backoff_initial_ms;
                    wrong_cluster_backoff = WRONG_CLUSTER_BACKOFF_INITIAL_MS;
                } else {
                    backoff = (backoff * 2).min(shared.config.backoff_max_ms);
                }
                if ended.reason == "duplicate" {
                    backoff = shared.config.backoff_max_ms;
                }
                if ended.peer.is_some() || ended.reason == "duplicate" {
                    failures.succeeded(&shared);
                } else {
                    failed = Some((ended.detail, ended.wrong_cluster));
                }
            }
            Ok(Err(e)) => {
                backoff = (backoff * 2).min(shared.config.backoff_max_ms);
                failed = Some((e.to_string(), false));
            }
            Err(_) => {
                backoff = (backoff * 2).min(shared.config.backoff_max_ms);
                failed = Some((
                    format!("no answer within {} ms", connect_timeout.as_millis()),
                    false,
                ));
            }
        }
        let delay = match failed {
            Some((error, true)) => {
                let delay = Duration::from_millis(wrong_cluster_backoff);
                wrong_cluster_backoff = (wrong_cluster_backoff * 2).min(WRONG_CLUSTER_BACKOFF_MAX_MS);
                failures.failed(&shared, error, true, delay);
                delay
            }
            Some((error, false)) => {
                let delay = jitter(backoff);
                failures.failed(&shared, error, false, delay);
                delay
            }
            None => jitter(backoff),
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => { failures.forget(&shared); return }
            _ = stop.wait_for(|s| *s) => { failures.forget(&shared); return }
        }
    }
}
