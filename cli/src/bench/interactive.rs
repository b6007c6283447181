//! The interactive figures of `huskies bench`: the load a person or a daemon's ticker puts on
//! a node, one command at a time, each acknowledged only after its own durable flush.
//!
//! - **Appends**: the workload's commands executed one by one through `Node::execute` in a
//!   fresh home (what `huskies story add` does without a daemon, minus opening the home), then
//!   the store's bytes on disk beside the signed bytes of the ops it holds.
//! - **Latency through a daemon**: `huskies story add` sent over the control socket of a
//!   daemon serving a fresh home, each answer awaited (what the CLI does when a daemon runs,
//!   minus starting the process), p50 and p99.
//! - **Sessions**: the same workload with every command in a session of its own — open the
//!   home, execute, close (what `huskies story add` without a daemon does, minus starting
//!   the process) — then the store's bytes beside the op bytes and how many compactions
//!   the opens made (`storage/compact.rs`).
//! - **Floor**, timed in the same run, interleaved with both: one sled `apply` of one small
//!   value and one `flush`, through the core's own sled backend with a home's settings. No
//!   command can be acknowledged durably faster than this.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use huskies_core::{
    InitMode, Node, NodeConfig, SledBatch, SledStore, Store as _, Timestamp, VersionVector, WriteBatch as _,
};
use huskies_daemon::{Daemon, DaemonConfig};

use super::{dir_size, workload};

/// Floor samples (one insert + flush each) taken after every this many interactive commands.
const FLOOR_EVERY: usize = 16;
/// Bytes of the floor's value: about one signed op.
const FLOOR_VALUE_BYTES: usize = 200;

/// What the interactive phase measured.
pub struct InteractiveFigures {
    /// Commands executed one by one.
    pub ops: usize,
    /// Commands per second, each its own durable flush.
    pub per_s: f64,
    /// p50 / p99 of one `Node::execute`, µs.
    pub append_p50_us: f64,
    pub append_p99_us: f64,
    /// Bytes under the home's `store/` after the appends.
    pub store_bytes: u64,
    /// Signed bytes of every op the home holds (the workload's and its genesis op).
    pub op_bytes: u64,
    /// `huskies story add` through a running daemon: requests made, then p50 and p99 (µs)
    /// from the parsed command to the decoded answer (the client's request, the round trip
    /// and the daemon's share).
    pub daemon_ops: usize,
    pub daemon_p50_us: f64,
    pub daemon_p99_us: f64,
    /// p50 of the client's argv parse alone (µs), not in the samples above: a fresh clap
    /// command tree and its matching, which every CLI process does first, daemon or not.
    pub daemon_parse_p50_us: f64,
    /// p50 of each sample with its own argv parse added (µs): all the CLI does between
    /// having its argv and having its answer, minus starting the process.
    pub daemon_with_parse_p50_us: f64,
    /// The floor: one small sled insert + flush, p50 / p99 (µs), samples interleaved with
    /// the two figures above.
    pub floor_p50_us: f64,
    pub floor_p99_us: f64,
}

/// What the sessions measurement found.
pub struct SessionFigures {
    /// Commands, each in a session of its own.
    pub ops: usize,
    /// Sessions (open + execute + close) per second.
    pub per_s: f64,
    /// Bytes under the home's `store/` at the end, and at most along the way.
    pub store_bytes: u64,
    pub largest_store_bytes: u64,
    /// Signed bytes of every op the home holds.
    pub op_bytes: u64,
    /// Opens that compacted the store.
    pub compactions: usize,
}

/// `n` workload commands in `dir/home`, each in its own session: `Node::open`, one
/// `execute`, drop. The store is measured every 64 sessions for the largest size.
pub fn sessions(dir: &Path, n: usize) -> Result<SessionFigures> {
    let home = dir.join("home");
    let start = Timestamp::from_millis(super::START_MILLIS);
    drop(Node::init(
        &home,
        InitMode::NewCluster {
            name: "sessions".into(),
        },
        &mut rand_core::OsRng,
        start,
        NodeConfig::default(),
    )?);
    let (mut compactions, mut largest, mut done) = (0usize, 0u64, 0usize);
    let t = Instant::now();
    for (now, cmds) in workload(n)? {
        for cmd in cmds {
            let mut node = Node::open(&home, NodeConfig::default())?;
            if let huskies_core::CompactionOutcome::Compacted { .. } = node.store_compaction() {
                compactions += 1;
            }
            node.execute(now, cmd).context("a workload command was refused")?;
            drop(node);
            done += 1;
            if done.is_multiple_of(64) {
                largest = largest.max(dir_size(&home.join("store"))?);
            }
        }
    }
    let per_s = n as f64 / t.elapsed().as_secs_f64();
    let node = Node::open(&home, NodeConfig::default())?;
    let op_bytes = node
        .ops_since(&VersionVector::default())?
        .iter()
        .map(|o| o.bytes().len() as u64)
        .sum();
    drop(node);
    let store_bytes = dir_size(&home.join("store"))?;
    Ok(SessionFigures {
        ops: n,
        per_s,
        store_bytes,
        largest_store_bytes: largest.max(store_bytes),
        op_bytes,
        compactions,
    })
}

/// The floor: a sled store of its own, written one small value at a time.
struct Floor {
    db: SledStore,
    next: u64,
    samples: Vec<Duration>,
}

impl Floor {
    fn open(dir: &Path) -> Result<Floor> {
        Ok(Floor {
            db: SledStore::open(dir)?,
            next: 0,
            samples: Vec::new(),
        })
    }

    /// One sample: a new 16-byte key with a [`FLOOR_VALUE_BYTES`] value, applied and flushed.
    fn sample(&mut self) -> Result<()> {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(b"floorkey");
        key[8..].copy_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        let value = [0x5au8; FLOOR_VALUE_BYTES];
        let t = Instant::now();
        let mut batch = SledBatch::default();
        batch.insert(&key, &value);
        self.db.apply(batch)?;
        self.db.flush()?;
        self.samples.push(t.elapsed());
        Ok(())
    }
}

/// Runs the phase: `n` single-command appends in `dir/home`, `daemon_ops` story adds through
/// a daemon serving `dir/daemon`, the floor in `dir/floor`.
pub fn run(dir: &Path, n: usize, daemon_ops: usize) -> Result<InteractiveFigures> {
    let mut floor = Floor::open(&dir.join("floor"))?;
    let home = dir.join("home");
    let start = Timestamp::from_millis(super::START_MILLIS);
    let mut node = Node::init(
        &home,
        InitMode::NewCluster {
            name: "interactive".into(),
        },
        &mut rand_core::OsRng,
        start,
        NodeConfig::default(),
    )?;
    let mut times = Vec::with_capacity(n);
    let mut total = Duration::ZERO;
    let mut done = 0usize;
    for (now, cmds) in workload(n)? {
        for cmd in cmds {
            let t = Instant::now();
            node.execute(now, cmd).context("a workload command was refused")?;
            let took = t.elapsed();
            total += took;
            times.push(took);
            done += 1;
            if done.is_multiple_of(FLOOR_EVERY) {
                floor.sample()?;
            }
        }
    }
    let ops = node.ops_since(&VersionVector::default())?;
    ensure!(
        ops.len() == n + 1,
        "the interactive home holds {} ops, expected {}",
        ops.len(),
        n + 1
    );
    let op_bytes = ops.iter().map(|o| o.bytes().len() as u64).sum();
    drop(ops);
    drop(node);
    let store_bytes = dir_size(&home.join("store"))?;

    let (mut whole, mut parse) = through_daemon(&dir.join("daemon"), daemon_ops, &mut floor)?;
    let (append_p50_us, append_p99_us) = percentiles(&mut times);
    let mut routed: Vec<Duration> = whole.iter().zip(&parse).map(|(all, p)| *all - *p).collect();
    let (daemon_p50_us, daemon_p99_us) = percentiles(&mut routed);
    let (daemon_with_parse_p50_us, _) = percentiles(&mut whole);
    let (daemon_parse_p50_us, _) = percentiles(&mut parse);
    let (floor_p50_us, floor_p99_us) = percentiles(&mut floor.samples);
    Ok(InteractiveFigures {
        ops: n,
        per_s: n as f64 / total.as_secs_f64(),
        append_p50_us,
        append_p99_us,
        store_bytes,
        op_bytes,
        daemon_ops: whole.len(),
        daemon_p50_us,
        daemon_p99_us,
        daemon_parse_p50_us,
        daemon_with_parse_p50_us,
        floor_p50_us,
        floor_p99_us,
    })
}

/// `huskies story add` run `count` times through a daemon serving a fresh home. Each sample
/// is what the CLI does between having its argv and having its answer to print, minus
/// starting the process: parse the argv (`args::parse`, a fresh command tree as in a CLI
/// process), prepare and encode the request, send it over the control socket, and read and
/// decode the daemon's answer (`route::through_daemon`); the daemon's share (decode, run,
/// flush, render, reply) falls inside it.
///
/// Returns the samples and, per sample, the time its argv parse took.
fn through_daemon(home: &Path, count: usize, floor: &mut Floor) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let node = Node::init(
        home,
        InitMode::NewCluster {
            name: "latency".into(),
        },
        &mut rand_core::OsRng,
        now,
        NodeConfig::default(),
    )?;
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        // Only the timed commands write: no heartbeat or policy run falls inside a sample.
        heartbeat_secs: 24 * 3600,
        policy_interval_secs: 24 * 3600,
        ..DaemonConfig::default()
    };
    let daemon = runtime.block_on(Daemon::start(node, config, Arc::new(crate::route::CliControl)))?;
    let mut samples = Vec::with_capacity(count);
    let mut parse = Vec::with_capacity(count);
    let result = (|| -> Result<()> {
        for i in 0..count {
            let argv: Vec<String> = vec![
                "story".into(),
                "add".into(),
                format!("interactive-{i}"),
                "--name".into(),
                format!("Interactive story {i}"),
            ];
            let t = Instant::now();
            let cli = crate::args::parse(&argv).map_err(|r| anyhow::anyhow!("{}", r.stderr))?;
            parse.push(t.elapsed());
            let answer = crate::route::through_daemon(&cli, home, &argv)
                .context("no daemon answered on the control socket")?;
            samples.push(t.elapsed());
            ensure!(
                answer.code == 0,
                "story add through the daemon failed: {}",
                answer.stderr
            );
            if (i + 1).is_multiple_of(FLOOR_EVERY) {
                floor.sample()?;
            }
        }
        Ok(())
    })();
    runtime.block_on(daemon.shutdown())?;
    result?;
    Ok((samples, parse))
}

/// p50 and p99 of `samples`, in µs (sorts them).
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() - 1) as f64 * q).round() as usize;
        samples[i].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}
