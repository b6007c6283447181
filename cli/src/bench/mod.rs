//! `huskies bench --json [--ops N]`: each throughput figure measured beside the physical
//! ceiling that bounds it, in one run on one machine (see `docs/benchmarks.md` and the
//! contract in `spec/bench.md`).
//!
//! Each ceiling is measured in bursts interleaved with the figure it bounds, so that their
//! ratio holds on a noisy, shared machine: `append_vs_sign` compares local appends with raw
//! Ed25519 signing, `ingest_vs_verify` compares the real merge path with raw batch
//! verification.

mod bundles;
mod interactive;
pub(crate) mod sync;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use huskies_core::floor::StorageFloor;
use huskies_core::{
    decode_bundle, Command, ExecutionEvent, InitMode, Node, NodeConfig, Payload, PipelineEvent, StoryId,
    Timestamp, SIGNING_DOMAIN,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Ops in the workload (the contract's `ops`; default 100000).
    pub ops: usize,
    /// Single-command appends in the interactive phase (`interactive_*`; default 10000).
    pub interactive_ops: usize,
    /// `story add` requests timed through a running daemon (`daemon_story_add_*`; default 1000).
    pub daemon_ops: usize,
    /// Commands each in a session of its own (open, execute, close) in the interactive
    /// phase (`session_*`; default 0: not measured).
    pub session_ops: usize,
    /// Run only the interactive phase.
    pub interactive_only: bool,
    /// Show a progress bar per phase on stderr (stdout stays clean for the JSON).
    pub progress: bool,
    /// The huskies binary, re-executed for each side of the sync phase (see `sync.rs`);
    /// `None` skips that phase (its keys are then `null`), for tests that run the bench
    /// inside another binary.
    pub exe: Option<std::path::PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            ops: 100_000,
            interactive_ops: 10_000,
            daemon_ops: 1_000,
            session_ops: 0,
            interactive_only: false,
            progress: false,
            exe: None,
        }
    }
}

/// Commands per `execute_group` call in the append phase: one durable flush per group.
pub const GROUP: usize = 512;
/// Signatures per `verify_batch` call in the raw batch-verification ceiling (the contract's).
pub const VERIFY_BATCH: usize = 256;
/// Ops per bundle handed to `ingest_bundle` (what a peer sends in one go).
const INGEST_CHUNK: usize = 16_384;
/// Signatures per raw signing burst, and a burst every this many groups of the storage floor.
const SIGN_BURST: usize = 512;
const SIGN_BURST_EVERY: usize = 8;
/// Groups per `execute_groups` call in the append phases: the pipeline fills and drains
/// once per call (the signing threads wait for the first group to be built, the writer
/// for the last to be signed), so calls are long; a raw signing burst of
/// [`APPEND_SIGN_BURST`] follows each (the same share of signatures as a burst of
/// [`SIGN_BURST`] every [`SIGN_BURST_EVERY`] groups).
const APPEND_CHUNK: usize = 32;
const APPEND_SIGN_BURST: usize = SIGN_BURST * APPEND_CHUNK / SIGN_BURST_EVERY;
/// Batches of [`VERIFY_BATCH`] per raw verification burst (one between ingest bundles).
const VERIFY_BURST_BATCHES: usize = 8;
/// Signatures per batch equation in `huskies_core::verify_ops`, for the second verification
/// ceiling `raw_verify_core_batch_per_s` (keep in step with the core).
pub const CORE_VERIFY_BATCH: usize = 4096;
/// Stories in flight at once in the workload: their commands interleave round-robin, so a
/// story's lifecycle spans several group commits (as on a real build farm).
const IN_FLIGHT: usize = 64;
/// A presence heartbeat every this many commands.
const HEARTBEAT_EVERY: usize = 50;
/// Wall-clock advance between two groups of the workload.
const GROUP_MILLIS: i64 = 500;
const START_MILLIS: i64 = 1_763_700_000_000;

/// The 12 commands of one story's life, in order.
const LIFECYCLE_STEPS: usize = 12;

/// Runs every phase and returns the contract's JSON object.
pub fn run(opts: &BenchOptions) -> anyhow::Result<Value> {
    ensure!(opts.ops >= 1, "--ops must be at least 1");
    let n = opts.ops;
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let tmp = tempfile::Builder::new()
        .prefix("huskies-bench-")
        .tempdir()
        .context("creating a temporary directory for the bench homes")?;
    let start = Timestamp::from_millis(START_MILLIS);
    if opts.interactive_only {
        let mut out = json!({ "cores": cores, "cpu": cpu_model() });
        add_interactive(&mut out, tmp.path(), opts)?;
        return Ok(out);
    }

    // Each ceiling is measured in short bursts interleaved with the figure it bounds (one
    // before, one between every few chunks of work, one after), so that load from other
    // processes on a shared machine hits the ceiling and the figure alike and their ratio
    // holds.
    // Ceiling 1: raw signing, op-sized messages.
    let signer = RawSigner::new();
    let mut sign = signer.burst(SIGN_BURST);

    // Figure 1: local appends through `execute_groups`, one signing thread pipelined
    // against the writer (the workload is built outside the timing).
    let home_a = tmp.path().join("a");
    let (mut a, append_time) = append_phase(&home_a, n, 1, opts, &signer, &mut sign)?;
    let append_per_s = n as f64 / append_time.as_secs_f64();
    // Figure 1c: the same in a home of its own, signing on every core; removed at once.
    let home_p = tmp.path().join("a-parallel");
    let (parallel, parallel_time) = append_phase(&home_p, n, cores, opts, &signer, &mut sign)?;
    let append_parallel_per_s = n as f64 / parallel_time.as_secs_f64();
    drop(parallel);
    std::fs::remove_dir_all(&home_p).with_context(|| format!("removing {}", home_p.display()))?;
    let raw_sign_per_s = sign.per_s();

    // Sizes: mean signed op, store on disk.
    a.flush()?;
    // What a peer would send, in Lamport order, as bundles of INGEST_CHUNK ops, streamed from
    // the store into a file (outside the timing) and read back one bundle at a time.
    let bundles = bundles::BundleFile::write(&a, &tmp.path().join("bundles.hsk"), INGEST_CHUNK)?;
    let total_ops = bundles.ops;
    ensure!(
        total_ops == n + 1,
        "node holds {total_ops} ops, expected {} (N + genesis)",
        n + 1
    );
    let op_bytes = bundles.op_bytes as f64 / total_ops as f64;
    let store_dir = home_a.join("store");
    let disk_bytes = dir_size(&store_dir)?;
    let sled_size = a.store_size()?;
    let disk_bytes_per_op = disk_bytes as f64 / n as f64;

    // A story to query after reopening: one from the middle of the finished ones.
    let finished = stories_finished(n);
    let probe = StoryId::new(story_name(finished / 2))?;
    let probe_stage = a.story(&probe, start)?.stage.kind();

    let cluster = a.cluster_id();

    // Figure 1b: the storage floor: the same payloads in the same groups, only built,
    // signed and stored durably (no projection, no checks, no indexes), beside raw signing.
    let (store_floor_per_s, floor_sign) = store_floor(&tmp.path().join("floor"), &bundles, n, opts, &signer)?;

    // Ceiling 2: raw batch verification, op-sized messages, batches of 256.
    let verifier = RawVerifier::new(VERIFY_BATCH, VERIFY_BURST_BATCHES);
    let mut verify = verifier.burst()?;

    // Figure 2: remote ops through the real merge path, one verification thread.
    let (ingest_per_s, ingest_disk) = ingest_into(
        &tmp.path().join("b"),
        cluster,
        &bundles,
        1,
        total_ops,
        opts,
        &mut || {
            verify.add(verifier.burst()?);
            Ok(())
        },
    )?;
    verify.add(verifier.burst()?);
    let raw_verify_batch_per_s = verify.per_s();
    // The same ceiling at the batch size the core uses.
    let core_batches = n.div_ceil(CORE_VERIFY_BATCH).clamp(2, 6);
    let raw_verify_core_batch_per_s = RawVerifier::new(CORE_VERIFY_BATCH, core_batches).burst()?.per_s();
    // Figure 3: the same with every core verifying.
    let (ingest_parallel_per_s, _) = ingest_into(
        &tmp.path().join("c"),
        cluster,
        &bundles,
        cores,
        total_ops,
        opts,
        &mut || Ok(()),
    )?;
    drop(bundles);

    // Figure 4: reopen the appending home and answer one query.
    drop(a);
    let bar = progress_bar(opts, "reopen", 1);
    let t = Instant::now();
    let reopened = open_retrying(&home_a)?;
    let story = reopened.story(&probe, start)?;
    let reopen = t.elapsed();
    bar.finish_and_clear();
    ensure!(
        story.stage.kind() == probe_stage
            && (finished == 0 || probe_stage == huskies_core::StageKind::Archived),
        "probe story is in stage {} after reopen, expected {probe_stage}",
        story.stage.kind()
    );
    ensure!(
        reopened.version_vector().get(&reopened.node_id()) == total_ops as u64,
        "reopened home lost ops"
    );
    drop(reopened);

    // Figure 5: a fresh node catching up the appending home from a daemon over loopback,
    // each side in a child process of its own.
    // The bench process's own peak, before the children run.
    let peak_rss_mb = peak_rss_mb();
    let sync = match &opts.exe {
        Some(exe) => {
            let bar = progress_bar(opts, "sync", total_ops as u64);
            let sync = sync::catch_up(exe, &home_a, &tmp.path().join("d"), |held, _| {
                bar.set_position(held)
            })?;
            bar.finish_and_clear();
            Some(sync)
        }
        None => None,
    };
    let sync_ops_per_s = sync.as_ref().map(|s| s.ops as f64 / s.elapsed.as_secs_f64());

    let mut out = json!({
        "ops": n,
        "raw_sign_per_s": round(raw_sign_per_s, 0),
        "append_per_s": round(append_per_s, 0),
        "append_vs_sign": round(append_per_s / raw_sign_per_s, 3),
        "append_parallel_per_s": round(append_parallel_per_s, 0),
        "append_parallel_vs_sign": round(append_parallel_per_s / raw_sign_per_s, 3),
        "sign_threads_parallel": cores,
        "store_floor_per_s": round(store_floor_per_s, 0),
        "store_floor_vs_sign": round(store_floor_per_s / floor_sign, 3),
        "append_vs_store_floor": round(
            (append_per_s / raw_sign_per_s) / (store_floor_per_s / floor_sign),
            3
        ),
        "raw_verify_batch_per_s": round(raw_verify_batch_per_s, 0),
        "ingest_per_s": round(ingest_per_s, 0),
        "ingest_vs_verify": round(ingest_per_s / raw_verify_batch_per_s, 3),
        "raw_verify_core_batch_per_s": round(raw_verify_core_batch_per_s, 0),
        "ingest_vs_verify_core_batch": round(ingest_per_s / raw_verify_core_batch_per_s, 3),
        "ingest_parallel_per_s": round(ingest_parallel_per_s, 0),
        "sync_ops_per_s": sync_ops_per_s.map(|r| round(r, 0)),
        "sync_vs_ingest": sync_ops_per_s.map(|r| round(r / ingest_parallel_per_s, 3)),
        "sync_ops_sent": sync.as_ref().map(|s| s.ops_sent),
        "sync_op_bytes_sent": sync.as_ref().map(|s| s.op_bytes_sent),
        "catchup_peak_rss_mb": sync.as_ref().and_then(|s| s.catchup_peak_rss_mb).map(|m| round(m, 1)),
        "sync_serve_peak_rss_mb": sync.as_ref().and_then(|s| s.serve_peak_rss_mb).map(|m| round(m, 1)),
        "reopen_ms": round(reopen.as_secs_f64() * 1000.0, 1),
        "disk_bytes_per_op": round(disk_bytes_per_op, 1),
        "op_bytes": round(op_bytes, 1),
        "disk_vs_op_bytes": round(disk_bytes_per_op / op_bytes, 3),
        "peak_rss_mb": peak_rss_mb.map(|m| round(m, 1)),
        "store_bytes": disk_bytes,
        "store_size_on_disk_sled": sled_size,
        "ingest_store_bytes": ingest_disk,
        "group_commit": GROUP,
        "verify_batch": VERIFY_BATCH,
        "core_verify_batch": CORE_VERIFY_BATCH,
        "verify_threads_parallel": cores,
        "cores": cores,
        "cpu": cpu_model(),
        "notes": "ops counts workload commands; the appending home also holds its genesis op. \
                  append: execute_groups, one signing thread pipelined against the writer; \
                  append_parallel: the same with a signing thread per core. \
                  sync: a fresh node joins with a ticket and catches up every op from a daemon \
                  serving the appending home over loopback WebSocket. store_floor: the same payloads \
                  in the same groups, only built, signed and stored durably (no projection). \
                  interactive: single commands, each its own flush; floor: one small sled insert + flush.",
    });
    add_interactive(&mut out, tmp.path(), opts)?;
    Ok(out)
}

/// Builds the workload of `n` commands and appends it to a new home at `home` through
/// `Node::execute_groups` with `sign_threads` signing threads, [`APPEND_CHUNK`] groups per
/// call, a raw signing burst into `sign` after each call (untimed). Returns the node and
/// the time inside the calls.
fn append_phase(
    home: &Path,
    n: usize,
    sign_threads: usize,
    opts: &BenchOptions,
    signer: &RawSigner,
    sign: &mut Rate,
) -> anyhow::Result<(Node, Duration)> {
    let groups = workload(n)?;
    let config = NodeConfig {
        sign_threads,
        ..NodeConfig::default()
    };
    let start = Timestamp::from_millis(START_MILLIS);
    let mut node = Node::init(
        home,
        InitMode::NewCluster { name: "bench".into() },
        &mut rand_core::OsRng,
        start,
        config,
    )?;
    let phase = if sign_threads == 1 { "append" } else { "append-p" };
    let bar = progress_bar(opts, phase, n as u64);
    let mut time = Duration::ZERO;
    let mut rest = groups.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(APPEND_CHUNK).collect();
        let len: usize = chunk.iter().map(|(_, cmds)| cmds.len()).sum();
        let t = Instant::now();
        let outcomes = node.execute_groups(chunk);
        time += t.elapsed();
        for outcome in outcomes {
            for r in outcome? {
                r.context("a workload command was refused")?;
            }
        }
        bar.inc(len as u64);
        sign.add(signer.burst(APPEND_SIGN_BURST));
    }
    bar.finish_and_clear();
    ensure!(
        node.version_vector().get(&node.node_id()) == n as u64 + 1,
        "the append phase stored {} ops, expected {}",
        node.version_vector().get(&node.node_id()),
        n + 1
    );
    Ok((node, time))
}

/// The interactive phase (`interactive.rs`), its figures added to `out`.
fn add_interactive(out: &mut Value, dir: &Path, opts: &BenchOptions) -> anyhow::Result<()> {
    if opts.interactive_ops == 0 {
        return Ok(());
    }
    let bar = progress_bar(opts, "interact", 1);
    let f = interactive::run(&dir.join("interactive"), opts.interactive_ops, opts.daemon_ops)?;
    bar.finish_and_clear();
    let fields = json!({
        "interactive_ops": f.ops,
        "interactive_append_per_s": round(f.per_s, 0),
        "interactive_append_p50_us": round(f.append_p50_us, 1),
        "interactive_append_p99_us": round(f.append_p99_us, 1),
        "interactive_store_bytes": f.store_bytes,
        "interactive_op_bytes": f.op_bytes,
        "interactive_disk_vs_op_bytes": round(f.store_bytes as f64 / f.op_bytes as f64, 3),
        "daemon_story_add_ops": f.daemon_ops,
        "daemon_story_add_p50_us": round(f.daemon_p50_us, 1),
        "daemon_story_add_p99_us": round(f.daemon_p99_us, 1),
        "daemon_story_add_parse_p50_us": round(f.daemon_parse_p50_us, 1),
        "daemon_story_add_with_parse_p50_us": round(f.daemon_with_parse_p50_us, 1),
        "daemon_story_add_with_parse_p50_vs_floor": round(f.daemon_with_parse_p50_us / f.floor_p50_us, 2),
        "sled_flush_floor_p50_us": round(f.floor_p50_us, 1),
        "sled_flush_floor_p99_us": round(f.floor_p99_us, 1),
        "daemon_story_add_p50_vs_floor": round(f.daemon_p50_us / f.floor_p50_us, 2),
        "interactive_append_p50_vs_floor": round(f.append_p50_us / f.floor_p50_us, 2),
    });
    if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), fields) {
        out.extend(fields);
    }
    if opts.session_ops > 0 {
        let bar = progress_bar(opts, "sessions", 1);
        let s = interactive::sessions(&dir.join("sessions"), opts.session_ops)?;
        bar.finish_and_clear();
        let fields = json!({
            "session_ops": s.ops,
            "session_per_s": round(s.per_s, 0),
            "session_store_bytes": s.store_bytes,
            "session_largest_store_bytes": s.largest_store_bytes,
            "session_op_bytes": s.op_bytes,
            "session_disk_vs_op_bytes": round(s.store_bytes as f64 / s.op_bytes as f64, 3),
            "session_largest_disk_vs_op_bytes": round(s.largest_store_bytes as f64 / s.op_bytes as f64, 3),
            "session_compactions": s.compactions,
        });
        if let (Some(out), Value::Object(fields)) = (out.as_object_mut(), fields) {
            out.extend(fields);
        }
    }
    Ok(())
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

fn progress_bar(opts: &BenchOptions, phase: &'static str, len: u64) -> ProgressBar {
    if !opts.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style =
        ProgressStyle::with_template("{prefix:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(phase);
    bar
}

/// A 48-byte message shaped like the core's: `SIGNING_DOMAIN || op id`.
fn message(i: u64) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..16].copy_from_slice(SIGNING_DOMAIN);
    let id = blake3_like(i);
    m[16..].copy_from_slice(&id);
    m
}

/// A cheap, distinct 32-byte pseudo op id (not timed).
fn blake3_like(i: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in out.chunks_mut(8) {
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    out
}

fn bench_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// Work done in some time.
#[derive(Clone, Copy, Debug)]
struct Rate {
    count: usize,
    time: Duration,
}

impl Rate {
    fn add(&mut self, other: Rate) {
        self.count += other.count;
        self.time += other.time;
    }

    fn per_s(&self) -> f64 {
        self.count as f64 / self.time.as_secs_f64()
    }
}

/// Raw Ed25519 signing of op-sized messages with one key, one thread.
struct RawSigner {
    key: SigningKey,
    messages: Vec<[u8; 48]>,
}

impl RawSigner {
    fn new() -> Self {
        RawSigner {
            key: bench_key(),
            messages: (0..SIGN_BURST as u64).map(message).collect(),
        }
    }

    /// Signs `count` messages.
    fn burst(&self, count: usize) -> Rate {
        let mut sink = 0u8;
        let t = Instant::now();
        for m in self.messages.iter().cycle().take(count) {
            let sig: Signature = self.key.sign(m);
            sink ^= sig.to_bytes()[0];
        }
        let time = t.elapsed();
        std::hint::black_box(sink);
        Rate { count, time }
    }
}

/// Raw `ed25519_dalek::verify_batch` over batches of `size` op-sized messages signed by one
/// key (as in an ingest from one author), one thread.
struct RawVerifier {
    size: usize,
    batches: usize,
    messages: Vec<[u8; 48]>,
    sigs: Vec<Signature>,
    vks: Vec<VerifyingKey>,
}

impl RawVerifier {
    fn new(size: usize, batches: usize) -> Self {
        let key = bench_key();
        let messages: Vec<[u8; 48]> = (0..(size * batches) as u64).map(message).collect();
        let sigs = messages.iter().map(|m| key.sign(m)).collect();
        RawVerifier {
            size,
            batches,
            messages,
            sigs,
            vks: vec![key.verifying_key(); size],
        }
    }

    /// Verifies every batch once.
    fn burst(&self) -> anyhow::Result<Rate> {
        let t = Instant::now();
        for b in 0..self.batches {
            let range = b * self.size..(b + 1) * self.size;
            let msgs: Vec<&[u8]> = self.messages[range.clone()].iter().map(|m| &m[..]).collect();
            ed25519_dalek::verify_batch(&msgs, &self.sigs[range], &self.vks)
                .context("raw batch does not verify")?;
        }
        Ok(Rate {
            count: self.size * self.batches,
            time: t.elapsed(),
        })
    }
}

/// The storage floor (see [`huskies_core::floor`]): signs and stores the workload's payloads
/// (the genesis op left out) in groups of [`GROUP`], each group one batch and one flush,
/// with raw signing bursts interleaved as in the append phase. Returns ops/s and the raw
/// signing rate measured beside it. Decoding the payloads is not timed.
fn store_floor(
    dir: &Path,
    bundles: &bundles::BundleFile,
    n: usize,
    opts: &BenchOptions,
    signer: &RawSigner,
) -> anyhow::Result<(f64, f64)> {
    let mut floor = StorageFloor::create(dir, &mut rand_core::OsRng)?;
    let bar = progress_bar(opts, "floor", n as u64);
    let mut sign = signer.burst(SIGN_BURST);
    let mut time = Duration::ZERO;
    let mut group = Vec::with_capacity(GROUP);
    let mut groups = 0usize;
    let mut store = |group: Vec<Payload>, sign: &mut Rate| -> anyhow::Result<()> {
        let len = group.len() as u64;
        let now = Timestamp::from_millis(START_MILLIS + (groups as i64 + 1) * GROUP_MILLIS);
        let t = Instant::now();
        floor.append(now, group)?;
        time += t.elapsed();
        bar.inc(len);
        groups += 1;
        if groups.is_multiple_of(SIGN_BURST_EVERY) {
            sign.add(signer.burst(SIGN_BURST));
        }
        Ok(())
    };
    for bundle in bundles.iter()? {
        for op in decode_bundle(&bundle?)? {
            let op = op.context("the appending home sent an op that does not decode")?;
            if matches!(op.content().payload, Payload::Genesis { .. }) {
                continue;
            }
            group.push(op.content().payload.clone());
            if group.len() == GROUP {
                store(
                    std::mem::replace(&mut group, Vec::with_capacity(GROUP)),
                    &mut sign,
                )?;
            }
        }
    }
    if !group.is_empty() {
        store(group, &mut sign)?;
    }
    bar.finish_and_clear();
    sign.add(signer.burst(SIGN_BURST));
    ensure!(
        floor.len() == n as u64,
        "the floor stored {} ops, expected {n}",
        floor.len()
    );
    Ok((n as f64 / time.as_secs_f64(), sign.per_s()))
}

/// Ingests `bundles` in order into a fresh home that joins `cluster`, calling `between`
/// (untimed) before each bundle after the first; returns ops/s (decode + verify + apply +
/// persist + projection) and the store's size on disk afterwards.
fn ingest_into(
    home: &Path,
    cluster: huskies_core::ClusterId,
    bundles: &bundles::BundleFile,
    verify_threads: usize,
    expected: usize,
    opts: &BenchOptions,
    between: &mut dyn FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, u64)> {
    let config = NodeConfig {
        verify_threads,
        ..NodeConfig::default()
    };
    let mut node = Node::init(
        home,
        InitMode::Join { cluster },
        &mut rand_core::OsRng,
        Timestamp::from_millis(START_MILLIS),
        config,
    )?;
    let phase = if verify_threads == 1 { "ingest" } else { "ingest-p" };
    let bar = progress_bar(opts, phase, expected as u64);
    let mut elapsed = Duration::ZERO;
    let mut applied = 0;
    for (i, bundle) in bundles.iter()?.enumerate() {
        if i > 0 {
            between()?;
        }
        let bundle = bundle?;
        let t = Instant::now();
        let report = node.ingest_bundle(&bundle)?;
        elapsed += t.elapsed();
        if let Some(first) = report.rejected.first() {
            bail!(
                "ingest rejected {} ops, first: {}",
                report.rejected.len(),
                first.reason
            );
        }
        applied += report.applied;
        bar.inc(report.applied as u64);
    }
    bar.finish_and_clear();
    ensure!(applied == expected, "ingest applied {applied} of {expected} ops");
    node.flush()?;
    let size = dir_size(&home.join("store"))?;
    Ok((expected as f64 / elapsed.as_secs_f64(), size))
}

/// Opens a home, retrying briefly while the previous owner's store lock is released.
fn open_retrying(home: &Path) -> anyhow::Result<Node> {
    let mut tries = 0;
    loop {
        match Node::open(home, NodeConfig::default()) {
            Ok(node) => return Ok(node),
            Err(e) if e.to_string().contains("locked") && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sum of the sizes of the files under `dir`.
fn dir_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        // sled deletes blob files in the background: one may vanish while we walk.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e.into()),
        };
        if meta.is_dir() {
            total += dir_size(&entry.path())?;
        } else {
            total += meta.len();
        }
    }
    Ok(total)
}

/// `VmHWM` of this process, in MB (None off Linux).
pub(crate) fn peak_rss_mb() -> Option<f64> {
    rss_mb("VmHWM:")
}

/// A memory line of /proc/self/status (e.g. `VmRSS:`), in MB (None off Linux).
pub(crate) fn rss_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn story_name(i: usize) -> String {
    format!("{i}_bench_story")
}

/// How many stories the workload of `n` commands takes through their whole life (they
/// finish in the order they start).
fn stories_finished(n: usize) -> usize {
    let mut w = Workload::new();
    for _ in 0..n {
        w.advance();
    }
    w.finished
}

/// The pipeline workload: `n` commands in groups of [`GROUP`], each with its `now`.
/// Stories are created, claimed, moved through the pipeline (deps-met, gates-started,
/// gates-passed with a branch and commits, merge-succeeded, accepted) with execution events
/// along the way, [`IN_FLIGHT`] at a time, with a presence heartbeat every
/// [`HEARTBEAT_EVERY`] commands. Deterministic: the same `n` gives the same commands.
pub fn workload(n: usize) -> anyhow::Result<Vec<(Timestamp, Vec<Command>)>> {
    let mut w = Workload::new();
    let mut groups = Vec::with_capacity(n.div_ceil(GROUP));
    let mut left = n;
    let mut g = 0i64;
    while left > 0 {
        let len = left.min(GROUP);
        let cmds: Vec<Command> = (0..len)
            .map(|_| w.next_command())
            .collect::<anyhow::Result<_>>()?;
        groups.push((
            Timestamp::from_millis(START_MILLIS + (g + 1) * GROUP_MILLIS),
            cmds,
        ));
        left -= len;
        g += 1;
    }
    Ok(groups)
}

/// Stories moving through the pipeline, [`IN_FLIGHT`] at a time, plus presence heartbeats.
struct Workload {
    /// Per slot: (story number, next lifecycle step).
    slots: Vec<(usize, usize)>,
    next_slot: usize,
    started: usize,
    finished: usize,
    emitted: usize,
}

impl Workload {
    fn new() -> Self {
        Workload {
            slots: Vec::with_capacity(IN_FLIGHT),
            next_slot: 0,
            started: 0,
            finished: 0,
            emitted: 0,
        }
    }

    /// The next (story, step), or None for a presence heartbeat.
    fn advance(&mut self) -> Option<(usize, usize)> {
        self.emitted += 1;
        if self.emitted.is_multiple_of(HEARTBEAT_EVERY) {
            return None;
        }
        if self.slots.len() < IN_FLIGHT {
            self.slots.push((self.started, 0));
            self.started += 1;
        }
        let slot = self.next_slot;
        self.next_slot = (self.next_slot + 1) % IN_FLIGHT;
        let (story, step) = self.slots[slot];
        if step + 1 == LIFECYCLE_STEPS {
            self.finished += 1;
            self.slots[slot] = (self.started, 0);
            self.started += 1;
        } else {
            self.slots[slot].1 = step + 1;
        }
        Some((story, step))
    }

    fn next_command(&mut self) -> anyhow::Result<Command> {
        match self.advance() {
            None => Ok(Command::Heartbeat {
                label: "bench-builder-1".into(),
                address: Some("ws://10.0.0.7:7420".into()),
            }),
            Some((story, step)) => lifecycle(story, step),
        }
    }
}

fn lifecycle(story: usize, step: usize) -> anyhow::Result<Command> {
    let id = StoryId::new(story_name(story))?;
    let commits = NonZeroU32::new(1 + (story % 7) as u32).expect("non-zero");
    let cmd = match step {
        0 => Command::AddStory {
            id,
            name: format!("Story {story}: make the login page remember the user"),
            body: Some(format!(
                "As a user I want story {story} done so that the pipeline has realistic text."
            )),
            depends_on: match story.checked_sub(IN_FLIGHT) {
                Some(dep) => vec![StoryId::new(story_name(dep))?],
                None => vec![],
            },
        },
        1 => Command::Claim { id, ttl_secs: 3600 },
        2 => Command::Event {
            id,
            event: PipelineEvent::DepsMet,
        },
        3 => Command::Execution {
            id,
            event: ExecutionEvent::SpawnRequested {
                agent: "coder-opus".into(),
            },
        },
        4 => Command::Execution {
            id,
            event: ExecutionEvent::SpawnedSuccessfully,
        },
        5 => Command::Execution {
            id,
            event: ExecutionEvent::Heartbeat,
        },
        6 => Command::Event {
            id,
            event: PipelineEvent::GatesStarted,
        },
        7 => Command::Event {
            id,
            event: PipelineEvent::GatesPassed {
                branch: format!("feature/story-{story}"),
                commits,
            },
        },
        8 => Command::Execution {
            id,
            event: ExecutionEvent::Exited { exit_code: 0 },
        },
        9 => Command::Event {
            id,
            event: PipelineEvent::MergeSucceeded { commit: hex40(story) },
        },
        10 => Command::Release { id },
        11 => Command::Event {
            id,
            event: PipelineEvent::Accepted,
        },
        _ => bail!("lifecycle step {step} does not exist"),
    };
    Ok(cmd)
}

/// A 40-hex-digit pseudo commit hash.
fn hex40(i: usize) -> String {
    let b = blake3_like(i as u64);
    b[..20].iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_runs_and_reports_every_key() {
        let out = run(&BenchOptions {
            ops: 600,
            interactive_ops: 300,
            daemon_ops: 20,
            session_ops: 200,
            interactive_only: false,
            progress: false,
            exe: None,
        })
        .unwrap();
        for k in [
            "ops",
            "raw_sign_per_s",
            "append_per_s",
            "append_vs_sign",
            "append_parallel_per_s",
            "append_parallel_vs_sign",
            "store_floor_per_s",
            "store_floor_vs_sign",
            "append_vs_store_floor",
            "raw_verify_batch_per_s",
            "ingest_per_s",
            "ingest_vs_verify",
            "ingest_parallel_per_s",
            "sync_ops_per_s",
            "sync_vs_ingest",
            "catchup_peak_rss_mb",
            "sync_serve_peak_rss_mb",
            "reopen_ms",
            "disk_bytes_per_op",
            "op_bytes",
            "peak_rss_mb",
            "notes",
            "interactive_append_per_s",
            "interactive_disk_vs_op_bytes",
            "daemon_story_add_p50_us",
            "daemon_story_add_parse_p50_us",
            "daemon_story_add_with_parse_p50_vs_floor",
            "sled_flush_floor_p50_us",
            "session_disk_vs_op_bytes",
            "session_compactions",
        ] {
            assert!(out.get(k).is_some(), "missing {k}");
        }
        assert_eq!(out["ops"], 600);
        // Without a huskies binary to re-execute, the sync phase is skipped
        // (`cli/tests/cli.rs` runs it through the binary).
        assert!(out["sync_ops_per_s"].is_null());
        assert!(out["append_per_s"].as_f64().unwrap() > 0.0);
        assert!(out["store_floor_per_s"].as_f64().unwrap() > 0.0);
        assert_eq!(out["interactive_ops"], 300);
        assert_eq!(out["daemon_story_add_ops"], 20);
        let ratio = out["interactive_disk_vs_op_bytes"].as_f64().unwrap();
        assert!(ratio > 1.0, "the store holds at least the ops: {ratio}");
        assert_eq!(out["session_ops"], 200);
    }
}
