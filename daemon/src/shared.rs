//! State shared by the daemon's tasks. The node sits behind one mutex: the core is
//! synchronous, and every call into it is short (one frame, one command).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use huskies_core::sync::{keep_connection, HeldConnection, KeepConnection, Opener};
use huskies_core::{Event, Node, NodeId, Timestamp, VersionVector};
use tokio::sync::{broadcast, watch};

use crate::metrics::Metrics;
use crate::DaemonConfig;

/// Who opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// We dialled it.
    Outbound,
    /// It dialled us.
    Inbound,
}

impl Origin {
    /// The same, as the core's connection rule names it.
    fn opener(self) -> Opener {
        match self {
            Origin::Outbound => Opener::Us,
            Origin::Inbound => Opener::Peer,
        }
    }
}

/// One live connection.
pub(crate) struct PeerEntry {
    pub node: Option<NodeId>,
    pub origin: Origin,
    pub address: Option<String>,
    /// What we believe the peer holds.
    pub peer_version: VersionVector,
    pub kill: watch::Sender<bool>,
    /// Unix ms of the last frame received on this connection.
    pub last_recv: Arc<std::sync::atomic::AtomicI64>,
}

pub(crate) struct Shared {
    node: Mutex<Node>,
    pub home: PathBuf,
    pub config: DaemonConfig,
    pub advertise: String,
    /// Bumped whenever the node's op set grows: connections wake and send.
    pub changed: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    /// Committed transitions and claim losses, for local followers.
    pub events: broadcast::Sender<Event>,
    pub peers: Mutex<BTreeMap<u64, PeerEntry>>,
    pub metrics: Metrics,
    /// The event bridge's counters.
    pub bridge: crate::events::BridgeStats,
    /// Dialled peers whose last attempt failed, by address (`mesh.rs` keeps it).
    pub dials: Mutex<BTreeMap<String, crate::metrics::DialStatus>>,
    next_conn: AtomicU64,
    connections: watch::Sender<usize>,
}

impl Shared {
    pub fn new(
        node: Node,
        config: DaemonConfig,
        advertise: String,
        shutdown: watch::Sender<bool>,
    ) -> Arc<Shared> {
        let (events, _) = broadcast::channel(4096);
        let sender = events.clone();
        let sub = node.subscribe(move |e| {
            let _ = sender.send(e.clone());
        });
        // Kept for the node's whole life: forgetting the handle skips its unsubscribe, and
        // the callback is freed with the node's registry when the node is dropped.
        std::mem::forget(sub);
        let (changed, _) = watch::channel(0);
        let (connections, _) = watch::channel(0);
        Arc::new(Shared {
            home: node.home().to_path_buf(),
            node: Mutex::new(node),
            config,
            advertise,
            changed,
            shutdown,
            events,
            peers: Mutex::new(BTreeMap::new()),
            metrics: Metrics::default(),
            bridge: Default::default(),
            dials: Mutex::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
            connections,
        })
    }

    pub fn now() -> Timestamp {
        Timestamp::from_datetime(chrono::Utc::now())
    }

    /// Runs `f` on the node, off the async scheduler's hot path, and wakes every connection
    /// if the node now holds more ops.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        tokio::task::block_in_place(|| {
            let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
            let before = node.version_vector().total();
            let r = f(&mut node);
            let after = node.version_vector().total();
            drop(node);
            if after != before {
                self.changed.send_modify(|v| *v += 1);
            }
            r
        })
    }

    /// This node's id (read each time: `huskies key rotate` changes it while we run).
    pub fn node_id(&self) -> NodeId {
        self.with_node(|n| n.node_id())
    }

    pub fn register(
        &self,
        origin: Origin,
        address: Option<String>,
    ) -> (u64, watch::Receiver<bool>, Arc<std::sync::atomic::AtomicI64>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (kill, rx) = watch::channel(false);
        let last_recv = Arc::new(std::sync::atomic::AtomicI64::new(Self::now().as_millis()));
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            PeerEntry {
                node: None,
                origin,
                address,
                peer_version: VersionVector::default(),
                last_recv: last_recv.clone(),
                kill,
            },
        );
        self.connections.send_modify(|n| *n += 1);
        (id, rx, last_recv)
    }

    pub fn unregister(&self, id: u64) {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.connections.send_modify(|n| *n = n.saturating_sub(1));
    }

    /// Records the authenticated peer of connection `id`. With two connections to one
    /// peer, the core's rule (`huskies_core::sync::keep_connection`) says which stays, the
    /// same decision on both sides; the other is closed. Returns false when `id` is the one
    /// to close.
    pub fn established(&self, id: u64, peer: NodeId) -> bool {
        let me = self.node_id();
        let now = Self::now();
        let keepalive_ms = self.config.session.keepalive_ms;
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let Some(origin) = peers.get(&id).map(|p| p.origin) else {
            return false;
        };
        let mut keep = true;
        for (other_id, other) in peers.iter() {
            if *other_id == id || other.node != Some(peer) {
                continue;
            }
            let held = HeldConnection {
                opener: other.origin.opener(),
                last_recv: Timestamp::from_millis(other.last_recv.load(Ordering::Relaxed)),
            };
            match keep_connection(me, peer, origin.opener(), held, now, keepalive_ms) {
                KeepConnection::New => {
                    let _ = other.kill.send(true);
                }
                KeepConnection::Held => keep = false,
            }
        }
        if keep {
            if let Some(p) = peers.get_mut(&id) {
                p.node = Some(peer);
            }
        }
        keep
    }

    pub fn set_peer_version(&self, id: u64, v: &VersionVector) {
        if let Some(p) = self.peers.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&id) {
            p.peer_version = v.clone();
        }
    }

    /// Node ids with a live, authenticated connection.
    pub fn connected_nodes(&self) -> Vec<NodeId> {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|p| p.node)
            .collect()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Waits until every connection task has finished.
    pub async fn wait_for_connections(&self) {
        let mut rx = self.connections.subscribe();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(|n| *n == 0)).await;
    }
}
