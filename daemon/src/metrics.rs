//! Counters for `/health` and `huskies status`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::shared::{Origin, Shared};

#[derive(Default)]
pub(crate) struct Metrics {
    pub ops_applied: AtomicU64,
    pub ops_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub connections_total: AtomicU64,
    /// Rejected ops by reason.
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Closed connections by reason.
    pub disconnects: Mutex<BTreeMap<String, u64>>,
    /// (unix ms, ops applied) samples for the rate.
    pub samples: Mutex<Vec<(i64, u64)>>,
}

impl Metrics {
    pub fn count(map: &Mutex<BTreeMap<String, u64>>, key: &str, n: u64) {
        *map.lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.to_string())
            .or_default() += n;
    }

    pub fn sample(&self, now_ms: i64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push((now_ms, self.ops_applied.load(Ordering::Relaxed)));
        s.retain(|(t, _)| now_ms - t <= 11_000);
    }

    fn rate(&self) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (s.first(), s.last()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 * 1000.0 / (b.0 - a.0) as f64,
            _ => 0.0,
        }
    }
}

/// One connection in a [`HealthReport`].
#[derive(Clone, Debug, Serialize)]
pub struct PeerStatus {
    /// The peer's node id (hex), once authenticated.
    pub node_id: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: &'static str,
    /// The dialled address (outbound).
    pub address: Option<String>,
    /// Ops we hold that the peer does not (as far as we know).
    pub lag: u64,
}

/// A peer this daemon dials and cannot currently reach (or that refused it): what
/// `/health` and `huskies status` show, so that a misconfigured `--peer` is visible
/// without logs at debug level.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DialStatus {
    /// The dialled address.
    pub address: String,
    /// `warn` for a failure that may pass (unreachable, refused, timed out); `error` for
    /// a peer of another cluster (a configuration mistake: retried only every few minutes).
    pub severity: &'static str,
    /// The last failure in words.
    pub last_error: String,
    /// When the failures began (RFC 3339 UTC): the first failed attempt since the last
    /// success.
    pub since: String,
    /// Failed attempts since the last success.
    pub attempts: u64,
    /// Milliseconds before the next attempt, as scheduled after the last failure.
    pub retry_in_ms: u64,
}

/// What `/health` returns.
#[derive(Clone, Debug, Serialize)]
pub struct HealthReport {
    /// This node.
    pub node_id: String,
    /// Its cluster.
    pub cluster_id: String,
    /// Where peers reach it.
    pub address: String,
    /// Connections.
    pub peers: Vec<PeerStatus>,
    /// Ops held.
    pub ops: u64,
    /// Remote ops merged since start.
    pub ops_applied: u64,
    /// Connections opened since start (both directions).
    pub connections_total: u64,
    /// Frames received from peers since start.
    pub frames_received: u64,
    /// Ops sent to peers since start (counted when a connection closes).
    pub ops_sent: u64,
    /// Signed-op bytes sent to peers since start (counted when a connection closes).
    pub op_bytes_sent: u64,
    /// Merged ops per second over the last ~10 s.
    pub ops_per_s: f64,
    /// Ops refused, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Connections closed, by reason.
    pub disconnects: BTreeMap<String, u64>,
    /// The event bridge to NATS JetStream.
    pub events: crate::events::EventsHealth,
    /// Peers this daemon dials and cannot reach now (empty when every dial succeeds).
    pub dial_failures: Vec<DialStatus>,
}

pub(crate) fn health(shared: &Shared) -> HealthReport {
    shared.with_node(|n| health_of(shared, n))
}

/// The health report, from the node the caller already holds (the daemon's node: it must
/// not be taken a second time).
pub(crate) fn health_of(shared: &Shared, node: &huskies_core::Node) -> HealthReport {
    let (vv, cluster, me) = (node.version_vector(), node.cluster_id(), node.node_id());
    let peers = shared
        .peers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|p| PeerStatus {
            node_id: p.node.map(|n| n.to_hex()),
            direction: if p.origin == Origin::Outbound {
                "outbound"
            } else {
                "inbound"
            },
            address: p.address.clone(),
            lag: vv
                .iter()
                .map(|(a, s)| s.saturating_sub(p.peer_version.get(a)))
                .sum(),
        })
        .collect();
    let m = &shared.metrics;
    HealthReport {
        node_id: me.to_hex(),
        cluster_id: cluster.to_hex(),
        address: shared.advertise.clone(),
        peers,
        ops: vv.total(),
        ops_applied: m.ops_applied.load(Ordering::Relaxed),
        connections_total: m.connections_total.load(Ordering::Relaxed),
        frames_received: m.frames_received.load(Ordering::Relaxed),
        ops_sent: m.ops_sent.load(Ordering::Relaxed),
        op_bytes_sent: m.bytes_sent.load(Ordering::Relaxed),
        ops_per_s: m.rate(),
        rejected: m.rejected.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        disconnects: m.disconnects.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        events: shared.bridge.report(vv.total()),
        dial_failures: shared
            .dials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect(),
    }
}
