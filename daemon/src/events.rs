//! The event bridge: lifecycle envelopes (`huskies_core::events_after`, `signals`) from the
//! LOCAL op log to NATS JetStream, exactly once cluster-wide and never lost.
//!
//! - It is its own task. It reads committed ops in short steps under the node's lock (never
//!   inside a command or a sync frame), so a slow or dead NATS costs nothing but counters.
//! - Each event goes to its own subject (`Envelope::subject`, which ends with the event id)
//!   with `Nats-Expected-Last-Subject-Sequence: 0` and `Nats-Msg-Id: <id>`: the stream
//!   stores the first copy and refuses every later one, from any node, however late (not
//!   only inside the duplicate window). A refusal counts as "deduplicated", i.e. done.
//! - The cursor (`<home>/events.cursor`) moves only past events JetStream acknowledged (or
//!   refused as already stored), so events of ops committed while NATS was away, or before
//!   a crash, are published from the log when it returns.
//!
//! `docs/events.md` describes the design and its limits.

use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use huskies_core::{
    events_after, fork_signals, stage_signals, Envelope, EventCursor, Timestamp, SIGNAL_STAGES,
};
use serde::Serialize;

use crate::shared::Shared;

/// The cursor file in the home: the NATS URL and stream it belongs to, then the cursor.
pub const CURSOR_FILE: &str = "events.cursor";

/// Settings of the bridge. `Default` is off (no URL).
#[derive(Clone, Debug)]
pub struct EventsConfig {
    /// The NATS server (`nats://host:4222`); `None` turns the bridge off: nothing is attempted.
    pub nats_url: Option<String>,
    /// The stream's name (default `HUSKIES_<first 16 hex of the cluster id>`). Created with
    /// subjects `huskies.<cluster>.>`, file storage and no age limit when missing.
    pub stream: Option<String>,
    /// Publishes awaiting their acknowledgement at most (default 256).
    pub max_in_flight: usize,
    /// Bytes of ops read per step under the node's lock (default 256 KiB).
    pub step_bytes: usize,
    /// How long to wait for one acknowledgement (default 5 s).
    pub ack_timeout_ms: u64,
    /// Milliseconds between passes over the time-based signals (default 5 s).
    pub signal_interval_ms: u64,
    /// A `Running` execution whose heartbeat is older than this is orphaned (default 90 s,
    /// the node's staleness bound).
    pub stale_after_secs: u64,
    /// Backoff after a failure: first delay and cap, in milliseconds (250 ms, 10 s).
    pub backoff_initial_ms: u64,
    /// See `backoff_initial_ms`.
    pub backoff_max_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            nats_url: None,
            stream: None,
            max_in_flight: 256,
            step_bytes: 256 * 1024,
            ack_timeout_ms: 5_000,
            signal_interval_ms: 5_000,
            stale_after_secs: huskies_core::NodeConfig::default().stale_after_secs,
            backoff_initial_ms: 250,
            backoff_max_ms: 10_000,
        }
    }
}

/// The bridge's counters (shared with `/health`).
#[derive(Default)]
pub(crate) struct BridgeStats {
    enabled: std::sync::atomic::AtomicBool,
    connected: std::sync::atomic::AtomicBool,
    published: AtomicU64,
    deduplicated: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    /// Ops (all authors) at or before the acknowledged cursor.
    acked_ops: AtomicU64,
    last_error: Mutex<Option<String>>,
    stream: Mutex<Option<String>>,
}

/// The bridge in `/health` and `huskies status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EventsHealth {
    /// A NATS URL is configured.
    pub enabled: bool,
    /// Connected to NATS with the stream in place.
    pub connected: bool,
    /// The stream published to.
    pub stream: Option<String>,
    /// Events JetStream stored from this node since start.
    pub published: u64,
    /// Events JetStream refused as already stored (published by another node, or by this
    /// one before a restart): done all the same.
    pub deduplicated: u64,
    /// Publishes that failed (timeouts, NATS away); they are retried from the cursor.
    pub failed: u64,
    /// Ops in the local log past the acknowledged cursor (their events are not yet known to
    /// be in the stream).
    pub pending: u64,
    /// Publishes awaiting acknowledgement now.
    pub in_flight: u64,
    /// The last failure, in words.
    pub last_error: Option<String>,
}

impl BridgeStats {
    pub(crate) fn report(&self, ops_held: u64) -> EventsHealth {
        let enabled = self.enabled.load(Ordering::Relaxed);
        EventsHealth {
            enabled,
            connected: self.connected.load(Ordering::Relaxed),
            stream: self.stream.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            published: self.published.load(Ordering::Relaxed),
            deduplicated: self.deduplicated.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            pending: if enabled {
                ops_held.saturating_sub(self.acked_ops.load(Ordering::Relaxed))
            } else {
                0
            },
            in_flight: self.in_flight.load(Ordering::Relaxed),
            last_error: self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }

    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(what);
    }
}

/// How one publish ended.
enum Outcome {
    Stored,
    AlreadyStored,
}

/// Why a run of the bridge stopped (it reconnects and resumes from the cursor).
struct Stop(String);

pub(crate) async fn run(shared: Arc<Shared>) {
    let cfg = shared.config.events.clone();
    let Some(url) = cfg.nats_url.clone() else {
        tracing::info!("event bridge off: no NATS_URL or [events] nats_url (nothing is published)");
        return;
    };
    shared.bridge.enabled.store(true, Ordering::Relaxed);
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = cfg.backoff_initial_ms;
    loop {
        let started = Instant::now();
        let stop = tokio::select! {
            s = session(&shared, &cfg, &url) => s,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        shared.bridge.connected.store(false, Ordering::Relaxed);
        shared.bridge.in_flight.store(0, Ordering::Relaxed);
        tracing::warn!(error = %stop.0, "event bridge: {}; retrying from the cursor", stop.0);
        shared.bridge.fail(stop.0);
        if started.elapsed() > Duration::from_secs(30) {
            backoff = cfg.backoff_initial_ms;
        }
        let delay = Duration::from_millis(backoff);
        backoff = (backoff * 2).min(cfg.backoff_max_ms);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The default stream name of a cluster.
pub fn default_stream_name(cluster: &huskies_core::ClusterId) -> String {
    format!("HUSKIES_{}", &cluster.to_hex()[..16])
}

/// The stream configuration the bridge creates when the stream is missing: every subject of
/// the cluster, file storage, kept until deleted (no age or size limit: a message must
/// outlive the longest time a node may be offline, or a late node could publish it again).
pub fn stream_config(name: &str, cluster: &huskies_core::ClusterId) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![huskies_core::cluster_subjects(cluster)],
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// One connection's worth of publishing; returns why it stopped.
async fn session(shared: &Arc<Shared>, cfg: &EventsConfig, url: &str) -> Stop {
    let (cluster, home) = shared.with_node(|n| (n.cluster_id(), n.home().to_path_buf()));
    let name = cfg
        .stream
        .clone()
        .unwrap_or_else(|| default_stream_name(&cluster));
    *shared.bridge.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(name.clone());
    let client = match async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
    {
        Ok(c) => c,
        Err(e) => return Stop(format!("cannot connect to {url}: {e}")),
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(cfg.ack_timeout_ms))
        .build(client);
    if let Err(e) = js.get_or_create_stream(stream_config(&name, &cluster)).await {
        return Stop(format!("cannot find or create stream {name}: {e}"));
    }
    shared.bridge.connected.store(true, Ordering::Relaxed);
    tracing::info!(%url, stream = %name, "event bridge connected");
    let mut file = CursorFile {
        key: format!("{url} {name}"),
        home,
        saved: Instant::now(),
    };
    let mut acked = load_cursor(&file.home, &file.key);
    shared.bridge.acked_ops.store(acked.vv.total(), Ordering::Relaxed);
    let mut changed = shared.changed.subscribe();
    let mut last_signals = Instant::now() - Duration::from_millis(cfg.signal_interval_ms);
    let mut signalled: HashSet<String> = HashSet::new();
    loop {
        // Everything committed so far, in steps, with at most max_in_flight unacknowledged.
        let mut read = acked.clone();
        let mut in_flight: VecDeque<(PublishAckFuture, EventCursor)> = VecDeque::new();
        // The node's op count when the walk found nothing more: ops it holds that are not
        // valid (past a removed member's cutoff) are never walked, so `pending` counts from
        // here rather than from the cursor.
        let held_at_end;
        loop {
            let (batch, held) = match shared.with_node(|n| {
                events_after(n, &read, cfg.step_bytes).map(|b| (b, n.version_vector().total()))
            }) {
                Ok(b) => b,
                Err(e) => return Stop(format!("reading the local log: {e}")),
            };
            if batch.ops_read == 0 {
                held_at_end = held;
                break;
            }
            for (env, after) in batch.events {
                if in_flight.len() >= cfg.max_in_flight {
                    let (ack, cur) = in_flight.pop_front().expect("non-empty");
                    if let Err(stop) = settle(shared, ack.await).await {
                        return stop;
                    }
                    acked = cur;
                    if file.saved.elapsed() >= SAVE_EVERY {
                        file.save(shared, &acked);
                    }
                }
                match send(&js, &env).await {
                    Ok(ack) => in_flight.push_back((ack, after)),
                    Err(stop) => return stop,
                }
                shared
                    .bridge
                    .in_flight
                    .store(in_flight.len() as u64, Ordering::Relaxed);
            }
            // A step without events still moves the cursor once what came before is acked.
            read = batch.end;
        }
        // Drain: the cursor then moves past every op read (those without events too).
        while let Some((ack, _)) = in_flight.pop_front() {
            if let Err(stop) = settle(shared, ack.await).await {
                return stop;
            }
        }
        shared.bridge.in_flight.store(0, Ordering::Relaxed);
        acked = read;
        file.save(shared, &acked);
        shared.bridge.acked_ops.store(held_at_end, Ordering::Relaxed);
        if last_signals.elapsed() >= Duration::from_millis(cfg.signal_interval_ms) {
            last_signals = Instant::now();
            if let Err(stop) = publish_signals(shared, cfg, &js, &mut signalled).await {
                return stop;
            }
        }
        let wait = Duration::from_millis(cfg.signal_interval_ms).saturating_sub(last_signals.elapsed());
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Stop("the daemon is stopping".into()) },
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Publishes one envelope on its own subject, refused by the stream if any copy is stored.
async fn send(js: &jetstream::Context, env: &Envelope) -> Result<PublishAckFuture, Stop> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, env.id.as_str());
    headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, "0");
    let payload = serde_json::to_vec(env).map_err(|e| Stop(format!("encoding an envelope: {e}")))?;
    js.publish_with_headers(env.subject(), headers, payload.into())
        .await
        .map_err(|e| Stop(format!("publishing {}: {e}", env.id)))
}

/// Counts one acknowledgement; a refusal because a copy is stored is success.
async fn settle(
    shared: &Shared,
    ack: Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
) -> Result<Outcome, Stop> {
    let outcome = match ack {
        Ok(a) if a.duplicate => Outcome::AlreadyStored,
        Ok(_) => Outcome::Stored,
        Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Outcome::AlreadyStored,
        Err(e) => return Err(Stop(format!("no acknowledgement: {e}"))),
    };
    match outcome {
        Outcome::Stored => shared.bridge.published.fetch_add(1, Ordering::Relaxed),
        Outcome::AlreadyStored => shared.bridge.deduplicated.fetch_add(1, Ordering::Relaxed),
    };
    Ok(outcome)
}

/// The signals that hold now, each published once per daemon run (and stored once per
/// stream: the stream refuses a second copy from this node after a restart or from others).
async fn publish_signals(
    shared: &Arc<Shared>,
    cfg: &EventsConfig,
    js: &jetstream::Context,
    signalled: &mut HashSet<String>,
) -> Result<(), Stop> {
    let stale_ms = i64::try_from(cfg.stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let now = Timestamp::from_datetime(chrono::Utc::now());
    // Stage by stage: each hold of the node stays as short as one stage's scan.
    let mut current = Vec::new();
    for kind in SIGNAL_STAGES {
        match shared.with_node(|n| stage_signals(n, kind, now, stale_ms)) {
            Ok(s) => current.extend(s),
            Err(e) => return Err(Stop(format!("reading signals: {e}"))),
        }
    }
    match shared.with_node(|n| fork_signals(n)) {
        Ok(s) => current.extend(s),
        Err(e) => return Err(Stop(format!("reading fork signals: {e}"))),
    }
    // Forget signals that no longer hold: the set stays as small as the current state.
    let ids: HashSet<String> = current.iter().map(|e| e.id.clone()).collect();
    signalled.retain(|id| ids.contains(id));
    for env in current {
        if signalled.contains(&env.id) {
            continue;
        }
        let ack = send(js, &env).await?;
        settle(shared, ack.await).await?;
        signalled.insert(env.id);
    }
    Ok(())
}

/// How often a long backlog's progress is written to the cursor file (besides at its end).
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The cursor file of one (URL, stream).
struct CursorFile {
    home: PathBuf,
    key: String,
    saved: Instant,
}

impl CursorFile {
    fn save(&mut self, shared: &Shared, cursor: &EventCursor) {
        self.saved = Instant::now();
        shared
            .bridge
            .acked_ops
            .store(cursor.vv.total(), Ordering::Relaxed);
        if let Err(e) = save_cursor(&self.home, &self.key, cursor) {
            tracing::warn!(error = %e, "event bridge: cannot write {CURSOR_FILE} (resumes from the older one)");
        }
    }
}

fn cursor_path(home: &Path) -> PathBuf {
    home.join(CURSOR_FILE)
}

/// The acknowledged cursor for `key` (URL and stream); the start of the log when there is
/// none, or when it belongs to another server or stream.
pub fn load_cursor(home: &Path, key: &str) -> EventCursor {
    let Ok(text) = std::fs::read_to_string(cursor_path(home)) else {
        return EventCursor::default();
    };
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(k), Some(c)) if k == key => c.parse().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "event bridge: unreadable {CURSOR_FILE}; starting from the log's start");
            EventCursor::default()
        }),
        (Some(k), _) if k == key => EventCursor::default(),
        _ => EventCursor::default(),
    }
}

/// Writes the cursor atomically (a temporary file renamed over the old one): a crash leaves
/// the old cursor or the new one, and an old one only costs republishing (deduplicated).
fn save_cursor(home: &Path, key: &str, cursor: &EventCursor) -> std::io::Result<()> {
    let path = cursor_path(home);
    let tmp = home.join(format!("{CURSOR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{key}\n{cursor}\n"))?;
    std::fs::rename(&tmp, &path)
}
