//! The sync figure of `huskies bench`: a fresh node catching up a home's ops from a real
//! daemon over loopback WebSocket, end to end (handshake, frames, batch verification on all
//! cores, merge, persist).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use huskies_core::{InitMode, Node, NodeConfig, Timestamp};
use huskies_daemon::{Daemon, DaemonConfig};

/// What one catch-up measured.
pub struct SyncFigures {
    /// Ops the fresh node received.
    pub ops: u64,
    /// Wall time from connecting to holding every op.
    pub elapsed: Duration,
    /// Ops the serving daemon sent (equals `ops` when nothing is sent twice).
    pub ops_sent: u64,
    /// Signed-op bytes the serving daemon sent.
    pub op_bytes_sent: u64,
    /// Peak resident memory of the process (serving daemon and catching-up node) during the
    /// catch-up, in MB: the peak is reset first (Linux `clear_refs`), so earlier phases of the
    /// bench do not count — but memory the allocator kept from them still does.
    pub peak_rss_mb: Option<f64>,
    /// Resident memory just before the catch-up, in MB: `peak_rss_mb` minus this is what the
    /// catch-up itself added.
    pub rss_before_mb: Option<f64>,
}

/// Serves `source` (a closed home) from a daemon on loopback and times a fresh node in
/// `scratch` joining with a ticket and catching up everything.
pub fn catch_up(source: &Path, scratch: &Path, progress: impl FnMut(u64, u64)) -> Result<SyncFigures> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let node = Node::open(source, NodeConfig::default()).context("opening the source home")?;
        let config = DaemonConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            heartbeat_secs: 3600,
            policy_interval_secs: 3600,
            ..DaemonConfig::default()
        };
        let daemon = Daemon::start(node, config, Arc::new(crate::route::CliControl)).await?;
        let now = Timestamp::from_datetime(chrono::Utc::now());
        let ticket = daemon.with_node(|n| n.create_ticket(now, 3600, daemon.url(), &mut rand_core::OsRng))?;
        let target = daemon.with_node(|n| n.version_vector().total());
        let mut fresh = Node::init(
            scratch,
            InitMode::Join {
                cluster: ticket.cluster,
            },
            &mut rand_core::OsRng,
            now,
            NodeConfig::default(),
        )?;
        // Forget the bench's earlier peak (Linux: writing 5 to clear_refs resets VmHWM).
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let rss_before_mb = super::rss_mb("VmRSS:");
        let t = Instant::now();
        huskies_daemon::join_cluster(&mut fresh, &ticket, "bench", Duration::from_secs(3600), progress)
            .await?;
        let elapsed = t.elapsed();
        let peak_rss_mb = super::peak_rss_mb();
        let held = fresh.version_vector().total();
        // The fresh node holds everything plus its own presence op.
        ensure!(
            held > target,
            "the fresh node holds {held} ops, the source {target}"
        );
        drop(fresh);
        // Closing the connection folds its counters into the daemon's metrics.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !daemon.health().peers.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let health = daemon.health();
        daemon.shutdown().await?;
        Ok(SyncFigures {
            ops: target,
            elapsed,
            ops_sent: health.ops_sent,
            op_bytes_sent: health.op_bytes_sent,
            peak_rss_mb,
            rss_before_mb,
        })
    })
}
