//! The huskies sync daemon: a thin async shell around the sans-IO sync sessions of
//! `huskies_core::sync`.
//!
//! It owns a node's home while it runs, serves `/crdt-sync` (WebSocket) and `/health`
//! (JSON) on one TCP listener, dials configured peers and up to `max_mesh_peers` more found
//! in node presence (reconnecting with jittered exponential backoff), writes this node's
//! heartbeat, runs the cluster policies, and serves local clients on a control socket in the
//! home so that every CLI command behaves the same with the daemon up.

pub mod api;
mod control;
mod events;
mod http;
mod join;
mod mesh;
mod metrics;
mod peer;
mod policy;
mod remote;
mod shared;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use huskies_core::sync::SessionConfig;
use huskies_core::{Node, PolicyConfig};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use control::{
    request as control_request, socket_path, ControlError, ControlHandler, ControlRequest, ControlResponse,
    Health, TypedOnly,
};
pub use events::{default_stream_name, load_cursor, stream_config, EventsConfig, EventsHealth, CURSOR_FILE};
pub use join::{join_cluster, join_cluster_with, join_home, JoinOptions, JoinOutcome, JoinedHome};
pub use metrics::{DialStatus, HealthReport, PeerStatus};
pub use policy::apply_policies;
pub use remote::{RemoteNode, RemoteSubscription, DEFAULT_TIMEOUT};

/// Settings of a daemon. `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Where `/crdt-sync` and `/health` listen (default `127.0.0.1:3001`; port 0 picks one).
    pub listen: SocketAddr,
    /// Peers to keep connected, as `ws://host:port/crdt-sync` URLs (e.g. a rendezvous).
    pub peers: Vec<String>,
    /// Extra peers, discovered from node presence, to keep connected (default 3).
    pub max_mesh_peers: usize,
    /// This node's label in presence.
    pub label: String,
    /// The address published in presence for peers to dial (default: from `listen`).
    pub advertise: Option<String>,
    /// Seconds between heartbeats (default 10).
    pub heartbeat_secs: u64,
    /// Done stories are archived this long after merging (default 4 h).
    pub retention_secs: u64,
    /// A story is blocked after this many merge failures in a row (default 3).
    pub block_after_merge_failures: u32,
    /// Seconds between policy runs (default 5).
    pub policy_interval_secs: u64,
    /// Protocol limits and timers.
    pub session: SessionConfig,
    /// Backoff before redialling a peer: first delay, in milliseconds (default 250).
    pub backoff_initial_ms: u64,
    /// Backoff cap, in milliseconds (default 15 s).
    pub backoff_max_ms: u64,
    /// A frame write that takes longer than this means the peer does not read (default 20 s).
    pub write_timeout_ms: u64,
    /// The event bridge to NATS JetStream (default: off).
    pub events: EventsConfig,
    /// Called after each ingest of a peer's ops (default: none).
    pub after_ingest: Option<IngestHook>,
}

/// What a daemon calls after each ingest of a peer's ops, with how many it admitted: a hook
/// for work the library cannot do itself. The `huskies` binary uses it to return freed
/// memory to the OS during a long catch-up, which only it can ask of its allocator
/// (`cli/src/alloc.rs`). Runs on the connection's task while it holds no lock: keep it
/// short.
#[derive(Clone)]
pub struct IngestHook(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for IngestHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IngestHook")
    }
}

impl DaemonConfig {
    /// The heartbeat and policy settings, as the core's policies take them.
    pub fn policy(&self) -> PolicyConfig {
        PolicyConfig {
            heartbeat_secs: self.heartbeat_secs,
            policy_interval_secs: self.policy_interval_secs,
            retention_secs: self.retention_secs,
            block_after_merge_failures: self.block_after_merge_failures,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        let policy = PolicyConfig::default();
        DaemonConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3001)),
            peers: Vec::new(),
            max_mesh_peers: 3,
            label: "node".into(),
            advertise: None,
            heartbeat_secs: policy.heartbeat_secs,
            retention_secs: policy.retention_secs,
            block_after_merge_failures: policy.block_after_merge_failures,
            policy_interval_secs: policy.policy_interval_secs,
            session: SessionConfig::default(),
            backoff_initial_ms: 250,
            backoff_max_ms: 15_000,
            write_timeout_ms: 20_000,
            events: EventsConfig::default(),
            after_ingest: None,
        }
    }
}

/// Why a daemon could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The listener or the control socket could not be bound.
    #[error("cannot listen on {what}: {source}")]
    Bind {
        /// What.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error("{0}")]
    Core(#[from] huskies_core::Error),
    /// Network failure (joining).
    #[error("network: {0}")]
    Network(String),
    /// A configured peer address is not a WebSocket URL (a configuration mistake: the
    /// daemon does not start).
    #[error("bad peer address {url:?}: {reason} (expected e.g. ws://host:3001/crdt-sync)")]
    InvalidPeer {
        /// The address as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Checks that `url` is an address a daemon can dial: a `ws://` or `wss://` URL with a
/// host (e.g. `ws://10.0.0.5:3001/crdt-sync`). Whether anything answers there is not
/// checked (a peer may start later).
pub fn check_peer_url(url: &str) -> Result<(), DaemonError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let bad = |reason: String| DaemonError::InvalidPeer {
        url: url.to_string(),
        reason,
    };
    let request = url
        .into_client_request()
        .map_err(|e| bad(format!("not a URL ({e})")))?;
    let uri = request.uri();
    match uri.scheme_str() {
        Some("ws" | "wss") => {}
        Some(other) => return Err(bad(format!("scheme {other:?} is not ws or wss"))),
        None => return Err(bad("no scheme (ws:// or wss://)".into())),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    Ok(())
}

/// A running daemon.
pub struct Daemon {
    shared: Arc<shared::Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    /// The control socket's own thread (`control.rs`).
    control: std::thread::JoinHandle<()>,
    shutdown: watch::Sender<bool>,
}

impl Daemon {
    /// Starts serving with `node` (whose home it now owns). Must be called within a
    /// multi-threaded tokio runtime.
    pub async fn start(
        node: Node,
        config: DaemonConfig,
        control: Arc<dyn ControlHandler>,
    ) -> Result<Daemon, DaemonError> {
        let home: PathBuf = node.home().to_path_buf();
        for url in &config.peers {
            check_peer_url(url)?;
        }
        if let Some((held, acknowledged)) = node.own_ops_missing() {
            tracing::error!(
                held,
                acknowledged,
                "this node's store lost ops of its own chain that it had acknowledged (damaged, \
                 or replaced by an older copy); it writes nothing until a peer sends them back"
            );
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                what: config.listen.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| DaemonError::Bind {
            what: "listener".into(),
            source,
        })?;
        let advertise = config
            .advertise
            .clone()
            .unwrap_or_else(|| format!("ws://{local_addr}/crdt-sync"));
        let (shutdown, _) = watch::channel(false);
        let shared = shared::Shared::new(node, config, advertise, shutdown.clone());
        // Subscribers that start late reconcile from this replay.
        shared.with_node(|n| n.replay_state())?;
        let mut tasks = Vec::new();
        // The control thread lives as long as this task: until shutdown, or until the
        // runtime that runs the daemon's tasks is dropped (as the tasks themselves).
        let (control_thread, control_stop) = control::spawn(shared.clone(), control::bind(&home)?, control)?;
        let mut stopping = shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            let _control_stop = control_stop;
            let _ = stopping.wait_for(|s| *s).await;
        }));
        tasks.push(tokio::spawn(http::serve(shared.clone(), listener)));
        tasks.push(tokio::spawn(policy::run(shared.clone())));
        tasks.push(tokio::spawn(mesh::run(shared.clone())));
        tasks.push(tokio::spawn(events::run(shared.clone())));
        // Whoever is refused the home from now on is told where this daemon listens.
        let advertised = shared.advertise.clone();
        if let Err(e) = shared.with_node(|n| n.note_daemon(&local_addr.to_string(), &advertised)) {
            tracing::warn!(error = %e, "cannot record this daemon in the home's lock file");
        }
        tracing::info!(node = %shared.node_id().short(), %local_addr, "daemon started");
        Ok(Daemon {
            shared,
            local_addr,
            tasks,
            control: control_thread,
            shutdown,
        })
    }

    /// The address `/crdt-sync` listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `ws://<local_addr>/crdt-sync`.
    pub fn url(&self) -> String {
        format!("ws://{}/crdt-sync", self.local_addr)
    }

    /// The address this daemon advertises to peers (and names in join tickets).
    pub fn advertise(&self) -> &str {
        &self.shared.advertise
    }

    /// Health and metrics now.
    pub fn health(&self) -> HealthReport {
        metrics::health(&self.shared)
    }

    /// Committed transitions and lost claims, as they happen (local or remote).
    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<huskies_core::Event> {
        self.shared.events.subscribe()
    }

    /// Runs `f` on the node (for tests and embedding); peers are told about any change.
    pub fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        self.shared.with_node(f)
    }

    /// Stops: tells peers, closes connections, flushes the store, removes the control
    /// socket and releases the home.
    pub async fn shutdown(self) -> Result<(), DaemonError> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let control = self.control;
        let _ = tokio::task::spawn_blocking(move || control.join()).await;
        self.shared.wait_for_connections().await;
        let _ = std::fs::remove_file(control::socket_path(&self.shared.home));
        self.shared.with_node(|n| n.flush())?;
        // Connection tasks drop their handle on the shared state just after they finish;
        // the node (and with it the home's lock) goes when the last handle does.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while Arc::strong_count(&self.shared) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        if Arc::strong_count(&self.shared) > 1 {
            tracing::warn!("some tasks still hold the node; the home is released when they end");
        }
        drop(self.shared);
        tracing::info!("daemon stopped");
        Ok(())
    }
}

/// Runs a daemon until SIGINT or SIGTERM, then shuts it down gracefully.
pub async fn run_until_signal(
    node: Node,
    config: DaemonConfig,
    control: Arc<dyn ControlHandler>,
) -> Result<(), DaemonError> {
    let daemon = Daemon::start(node, config, control).await?;
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| {
            DaemonError::Bind {
                what: "SIGTERM handler".into(),
                source: e,
            }
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    daemon.shutdown().await
}
