//! A cluster of real homes and real daemons on loopback, with short timers.

#![allow(dead_code)]

pub mod nats;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huskies_core::sync::SessionConfig;
use huskies_core::{Command, InitMode, Node, NodeConfig, Role, Timestamp, VersionVector};
use huskies_daemon::{ControlHandler, ControlRequest, ControlResponse, Daemon, DaemonConfig, Health};

pub fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// Control requests are not exercised here (the CLI's tests do that).
pub struct NoControl;

impl ControlHandler for NoControl {
    fn handle(&self, _: &mut Node, _: &ControlRequest, _: &Health<'_>) -> ControlResponse {
        ControlResponse {
            code: 2,
            stderr: "no control in tests".into(),
            ..Default::default()
        }
    }
    fn follow(&self, _: &mut Node, _: &ControlRequest, since: &VersionVector) -> (String, VersionVector) {
        (String::new(), since.clone())
    }
}

pub fn fast_config(label: &str, peers: Vec<String>) -> DaemonConfig {
    DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        peers,
        max_mesh_peers: 0,
        label: label.into(),
        heartbeat_secs: 1,
        policy_interval_secs: 3600,
        session: SessionConfig {
            handshake_timeout_ms: 1500,
            ack_timeout_ms: 2000,
            keepalive_ms: 500,
            silence_timeout_ms: 4000,
            ..SessionConfig::default()
        },
        backoff_initial_ms: 50,
        backoff_max_ms: 400,
        write_timeout_ms: 2000,
        ..DaemonConfig::default()
    }
}

/// Creates `n` homes in one cluster: the first is the admin; every other is admitted and
/// has received the admin's ops (genesis and admissions), as a ticket would do.
pub fn cluster_homes(dir: &Path, n: usize) -> Vec<PathBuf> {
    let t = now();
    let mut rng = rand_core::OsRng;
    let mut admin = Node::init(
        &dir.join("n0"),
        InitMode::NewCluster { name: "test".into() },
        &mut rng,
        t,
        NodeConfig::default(),
    )
    .unwrap();
    let mut others = Vec::new();
    for i in 1..n {
        let node = Node::init(
            &dir.join(format!("n{i}")),
            InitMode::Join {
                cluster: admin.cluster_id(),
            },
            &mut rng,
            t,
            NodeConfig::default(),
        )
        .unwrap();
        admin
            .execute(
                t,
                Command::AddMember {
                    node: node.node_id(),
                    role: Role::Member,
                },
            )
            .unwrap();
        others.push(node);
    }
    for node in &mut others {
        let bundle = admin.export_since(&node.version_vector()).unwrap();
        let report = node.ingest_bundle(&bundle).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
    let mut homes = vec![admin.home().to_path_buf()];
    homes.extend(others.iter().map(|n| n.home().to_path_buf()));
    homes
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start(home: &Path, config: DaemonConfig) -> Daemon {
    init_tracing();
    let node = Node::open(home, NodeConfig::default()).unwrap();
    Daemon::start(node, config, Arc::new(NoControl)).await.unwrap()
}

/// Polls `cond` until it holds or `secs` pass.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub fn vv(d: &Daemon) -> VersionVector {
    d.with_node(|n| n.version_vector())
}
