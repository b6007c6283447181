//! State shared by the daemon's tasks. The node sits behind one mutex: the core is
//! synchronous, and every call into it is short (one frame, one command).
//!
//! What a node call causes for others — the node's events for local subscribers, and the
//! wake-up of every connection when the op set grew — is published when the call's
//! [`Notice`] is dropped: at once for [`Shared::with_node`], after the reply for a control
//! request ([`Shared::with_node_deferred`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use huskies_core::sync::{keep_connection, HeldConnection, KeepConnection, Opener};
use huskies_core::{Event, Node, NodeId, Timestamp, VersionVector};
use tokio::runtime::{Handle, RuntimeFlavor};
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
    /// Events the node emitted that are not yet on `events`, in commit order (appended by
    /// the node's subscriber under the node's lock, sent by [`Notice`]s under this lock, so
    /// that followers see them in commit order whichever call sends them).
    pending_events: Arc<Mutex<Vec<Event>>>,
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
        let pending_events = Arc::new(Mutex::new(Vec::new()));
        let queue = pending_events.clone();
        let sub = node.subscribe(move |e| {
            queue.lock().unwrap_or_else(|e| e.into_inner()).push(e.clone());
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
            pending_events,
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

    /// Runs `f` on the node, off the async scheduler's hot path, then publishes the node's
    /// events and wakes every connection if the node now holds more ops.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        let (r, notice) = self.with_node_deferred(f);
        drop(notice);
        r
    }

    /// Runs `f` on the node; what it caused for others (events, the connections' wake-up)
    /// is published when the returned [`Notice`] is dropped. A control request keeps it
    /// until its reply is written: the client waits for nothing but its own command.
    ///
    /// On a worker of a multi-threaded runtime the call goes through `block_in_place`, so
    /// the worker's other tasks move on; anywhere else (the control socket's own thread,
    /// or no runtime) it runs in place, with no hand-off to another thread.
    pub fn with_node_deferred<R>(&self, f: impl FnOnce(&mut Node) -> R) -> (R, Notice<'_>) {
        let run = || {
            let mut node = self.node.lock().unwrap_or_else(|e| e.into_inner());
            let before = node.version_vector().total();
            let r = f(&mut node);
            let grew = node.version_vector().total() != before;
            drop(node);
            (r, Notice { shared: self, grew })
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
            _ => run(),
        }
    }

    /// Sends the events the node has emitted so far to `events`, oldest first.
    fn publish_events(&self) {
        let mut queue = self.pending_events.lock().unwrap_or_else(|e| e.into_inner());
        for event in queue.drain(..) {
            // No receiver is not an error: nobody follows right now.
            let _ = self.events.send(event);
        }
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

/// What a node call caused for others, published when dropped: the node's events (in
/// commit order, with any earlier call's still queued) and, if the op set grew, the
/// wake-up of every connection. Dropping it is the only way to get rid of it, so nothing
/// a call caused is ever left unpublished.
pub(crate) struct Notice<'a> {
    shared: &'a Shared,
    grew: bool,
}

impl Drop for Notice<'_> {
    fn drop(&mut self) {
        self.shared.publish_events();
        if self.grew {
            self.shared.changed.send_modify(|v| *v += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use huskies_core::{Command, InitMode, NodeConfig, PipelineEvent, StoryId};
    use tokio::sync::broadcast::error::TryRecvError;

    /// A new story taken to coding: one committed transition, so one event.
    fn add(node: &mut Node, id: &str) {
        let id = StoryId::new(id).unwrap();
        node.execute(Shared::now(), Command::add_story(id.clone(), "a story"))
            .unwrap();
        node.execute(Shared::now(), Command::event(id, PipelineEvent::DepsMet))
            .unwrap();
    }

    fn story_of(event: Event) -> String {
        match event {
            Event::Transition(t) => t.story.as_str().to_string(),
            other => panic!("not a transition: {other:?}"),
        }
    }

    /// A control request answers before anything else hears of its command: the events and
    /// the connections' wake-up wait for its notice; and a call that publishes meanwhile
    /// sends the earlier call's events first (commit order), each once.
    #[test]
    fn a_deferred_call_is_published_when_its_notice_drops_and_in_commit_order() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::init(
            dir.path(),
            InitMode::NewCluster { name: "t".into() },
            &mut rand_core::OsRng,
            Shared::now(),
            NodeConfig::default(),
        )
        .unwrap();
        let (shutdown, _) = watch::channel(false);
        let shared = Shared::new(
            node,
            DaemonConfig::default(),
            "ws://127.0.0.1:9/crdt-sync".into(),
            shutdown,
        );
        let mut events = shared.events.subscribe();
        let mut changed = shared.changed.subscribe();

        let ((), notice) = shared.with_node_deferred(|n| add(n, "1_first"));
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
        assert!(!changed.has_changed().unwrap());
        drop(notice);
        assert_eq!(story_of(events.try_recv().unwrap()), "1_first");
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));
        assert!(changed.has_changed().unwrap());
        changed.borrow_and_update();

        let ((), held) = shared.with_node_deferred(|n| add(n, "2_second"));
        shared.with_node(|n| add(n, "3_third"));
        assert_eq!(story_of(events.try_recv().unwrap()), "2_second");
        assert_eq!(story_of(events.try_recv().unwrap()), "3_third");
        drop(held);
        assert!(matches!(events.try_recv(), Err(TryRecvError::Empty)));

        // A call that adds no op publishes no wake-up.
        changed.borrow_and_update();
        shared.with_node(|n| n.version_vector());
        assert!(!changed.has_changed().unwrap());
    }
}
