//! huskies beside Automerge on the same pipeline workload, in one run.
//!
//! `vs-automerge [--stories N] [--changes 8] [--json]` builds N stories × 8 changes on one
//! replica, saves, reopens and answers one query, and has a fresh replica receive the
//! whole history — once through huskies-core, once through Automerge (with the Ed25519
//! signing and verification of each change a user would bolt on) — and prints one JSON
//! object with both sides and the ratios. Each side runs in its own child process (this
//! binary re-executed with `--side`), so each side's peak RSS (`VmHWM`) is its own.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;
use std::process::Command as Process;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use automerge::{transaction::Transactable, AutoCommit, Change, ObjType, ReadDoc, ScalarValue, Value, ROOT};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use huskies_core::{
    Command, InitMode, Node, NodeConfig, PipelineEvent, StageKind, StoryId, Timestamp, VersionVector,
    EXPORT_BUNDLE_BYTES,
};
use serde_json::{json, Value as Json};

/// Changes per story: add, claim, deps-met, gates-started, gates-passed, merge-succeeded,
/// release, accepted.
const CHANGES: usize = 8;
/// Stories per group commit (64 × 8 = 512 changes per durable write, the bench's group).
const STORIES_PER_GROUP: usize = 64;
/// The workload's clock: the first group's time and the step between groups.
const START_MILLIS: i64 = 1_763_700_000_000;
const GROUP_MILLIS: i64 = 500;

struct Options {
    stories: usize,
    json: bool,
    side: Option<String>,
}

fn parse_args() -> Result<Options> {
    let mut opts = Options {
        stories: 100_000,
        json: false,
        side: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--stories" => {
                let v = args.next().context("--stories needs a number")?;
                opts.stories = v
                    .parse()
                    .with_context(|| format!("--stories {v}: not a number"))?;
            }
            "--changes" => {
                let v = args.next().context("--changes needs a number")?;
                ensure!(
                    v == "8",
                    "--changes {v}: the pipeline workload has exactly 8 changes per story"
                );
            }
            "--json" => opts.json = true,
            "--side" => opts.side = Some(args.next().context("--side needs huskies or automerge")?),
            other => {
                bail!("unknown argument {other:?} (usage: vs-automerge [--stories N] [--changes 8] [--json])")
            }
        }
    }
    ensure!(opts.stories >= 1, "--stories must be at least 1");
    Ok(opts)
}

fn main() -> Result<()> {
    let opts = parse_args()?;
    match opts.side.as_deref() {
        Some("huskies") => println!("{}", huskies_side(opts.stories)?),
        Some("automerge") => println!("{}", automerge_side(opts.stories)?),
        Some(other) => bail!("--side {other:?}: expected huskies or automerge"),
        None => {
            let h = run_child("huskies", opts.stories)?;
            let a = run_child("automerge", opts.stories)?;
            let report = combine(opts.stories, h, a);
            if opts.json {
                println!("{report}");
            } else {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
        }
    }
    Ok(())
}

/// Runs one side in a child process (this binary with `--side`) and parses its JSON.
fn run_child(side: &str, stories: usize) -> Result<Json> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let out = Process::new(exe)
        .args(["--side", side, "--stories", &stories.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {side} side"))?;
    ensure!(out.status.success(), "the {side} side failed: {}", out.status);
    serde_json::from_slice(&out.stdout).with_context(|| format!("parsing the {side} side's output"))
}

/// Both sides and the ratios the goals are stated in (Automerge's figure over
/// huskies': above 1 means huskies is faster or smaller).
fn combine(stories: usize, h: Json, a: Json) -> Json {
    let f = |v: &Json, k: &str| v.get(k).and_then(Json::as_f64).unwrap_or(f64::NAN);
    let ratio = |x: f64, y: f64| (x / y * 100.0).round() / 100.0;
    json!({
        "stories": stories,
        "changes_per_story": CHANGES,
        "changes": stories * CHANGES,
        "cpu": cpu_model(),
        "cores": std::thread::available_parallelism().map_or(1, |c| c.get()),
        "huskies": h,
        "automerge": a,
        "ratios": {
            "build_automerge_over_huskies": ratio(f(&a, "build_ms"), f(&h, "build_ms")),
            "reopen_query_automerge_over_huskies": ratio(f(&a, "reopen_query_ms"), f(&h, "reopen_query_ms")),
            "receive_automerge_signed_over_huskies": ratio(f(&a, "receive_signed_ms"), f(&h, "receive_ms")),
            "receive_cpu_automerge_signed_over_huskies":
                ratio(f(&a, "receive_signed_cpu_ms"), f(&h, "receive_cpu_ms")),
            "receive_automerge_signed_unpersisted_over_huskies":
                ratio(f(&a, "receive_signed_unpersisted_ms"), f(&h, "receive_ms")),
            "peak_rss_huskies_over_automerge": ratio(f(&h, "peak_rss_mb"), f(&a, "peak_rss_mb")),
            "disk_huskies_over_automerge_save": ratio(f(&h, "store_bytes"), f(&a, "save_bytes")),
        },
        "goals": {
            "reopen_query_10x": f(&a, "reopen_query_ms") >= 10.0 * f(&h, "reopen_query_ms"),
            "receive_3x": f(&a, "receive_signed_ms") >= 3.0 * f(&h, "receive_ms"),
            "peak_rss_0_1x": f(&h, "peak_rss_mb") <= 0.1 * f(&a, "peak_rss_mb"),
        },
    })
}

fn story_id(i: usize) -> String {
    format!("{i}_bench_story")
}

/// A 40-hex-digit pseudo commit hash for story `i`.
fn commit_hash(i: usize) -> String {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut s = String::with_capacity(40);
    while s.len() < 40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{:016x}", x));
    }
    s.truncate(40);
    s
}

fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

// ---------------------------------------------------------------- huskies

/// Story `i`'s 8 commands, in pipeline order.
fn huskies_story(i: usize) -> Result<Vec<Command>> {
    let id = StoryId::new(story_id(i))?;
    let ev = |event| Command::Event {
        id: id.clone(),
        event,
    };
    Ok(vec![
        Command::AddStory {
            id: id.clone(),
            name: format!("Story {i}: make the login page remember the user"),
            body: Some(format!(
                "As a user I want story {i} done so that the pipeline has realistic text."
            )),
            depends_on: vec![],
        },
        Command::Claim {
            id: id.clone(),
            ttl_secs: 3600,
        },
        ev(PipelineEvent::DepsMet),
        ev(PipelineEvent::GatesStarted),
        ev(PipelineEvent::GatesPassed {
            branch: format!("feature/story-{i}"),
            commits: NonZeroU32::new(1 + (i % 7) as u32).expect("non-zero"),
        }),
        ev(PipelineEvent::MergeSucceeded {
            commit: commit_hash(i),
        }),
        Command::Release { id: id.clone() },
        ev(PipelineEvent::Accepted),
    ])
}

fn huskies_side(n: usize) -> Result<Json> {
    let tmp = tempfile::Builder::new().prefix("vs-automerge-h-").tempdir()?;
    let (home, fresh_home) = (tmp.path().join("a"), tmp.path().join("b"));
    let start = Timestamp::from_millis(START_MILLIS);
    let mut node = Node::init(
        &home,
        InitMode::NewCluster { name: "bench".into() },
        &mut rand_core::OsRng,
        start,
        NodeConfig::default(),
    )?;
    let cluster = node.cluster_id();

    // Build: one group commit (sign, merge, one batch, one flush) per 64 stories.
    let mut build_ms = 0.0;
    let mut now = start;
    for (g, first) in (0..n).step_by(STORIES_PER_GROUP).enumerate() {
        let mut cmds = Vec::with_capacity(STORIES_PER_GROUP * CHANGES);
        for i in first..(first + STORIES_PER_GROUP).min(n) {
            cmds.extend(huskies_story(i)?);
        }
        now = Timestamp::from_millis(START_MILLIS + (g as i64 + 1) * GROUP_MILLIS);
        let t = Instant::now();
        let results = node.execute_group(now, cmds)?;
        build_ms += ms(t);
        for r in results {
            r.context("a workload command was refused")?;
        }
    }
    // Save: every group is already durable; this is the final flush.
    let t = Instant::now();
    node.flush()?;
    let save_ms = ms(t);
    let store_bytes = node.store_size()?;
    drop(node);

    // Reopen and answer one query.
    let probe = StoryId::new(story_id(n / 2))?;
    let t = Instant::now();
    let node = Node::open(&home, NodeConfig::default())?;
    let story = node.story(&probe, now)?;
    let reopen_query_ms = ms(t);
    ensure!(
        story.stage.kind() == StageKind::Archived,
        "story {probe} is {:?}",
        story.stage
    );

    // Export the whole history (signed ops) as a bundle stream, one bounded bundle at a time
    // (what `huskies export` writes), and receive it on a fresh replica the same way
    // (`import_reader`, what `huskies import` does): neither side holds the whole history.
    let t = Instant::now();
    let stream = tmp.path().join("history.hsk");
    let mut out = std::io::BufWriter::new(File::create(&stream)?);
    let mut bundle_bytes = 0usize;
    for bundle in node.export_chunks(&VersionVector::default(), EXPORT_BUNDLE_BYTES)? {
        let bundle = bundle?;
        out.write_all(&bundle)?;
        bundle_bytes += bundle.len();
    }
    out.flush()?;
    drop(out);
    let export_ms = ms(t);
    let expected = node.version_vector().total();
    drop(node);
    let mut fresh = Node::init(
        &fresh_home,
        InitMode::Join { cluster },
        &mut rand_core::OsRng,
        now,
        NodeConfig::default(),
    )?;
    let (t, cpu) = (Instant::now(), cpu_ms());
    let report = fresh.import_reader(&mut std::io::BufReader::new(File::open(&stream)?), |_, _| {})?;
    fresh.flush()?;
    let receive_ms = ms(t);
    let receive_cpu_ms = cpu_ms().zip(cpu).map(|(after, before)| after - before);
    if let Some(first) = report.rejected.first() {
        bail!(
            "the fresh replica rejected {} ops, first: {}",
            report.rejected.len(),
            first.reason
        );
    }
    ensure!(
        fresh.version_vector().total() >= expected,
        "the fresh replica holds {} of {expected} ops",
        fresh.version_vector().total()
    );
    ensure!(fresh.story(&probe, now)?.stage.kind() == StageKind::Archived);
    let ops = expected as f64;
    Ok(json!({
        "ops": expected,
        "build_ms": build_ms,
        "build_us_per_change": build_ms * 1e3 / ops,
        "save_ms": save_ms,
        "store_bytes": store_bytes,
        "reopen_query_ms": reopen_query_ms,
        "export_ms": export_ms,
        "bundle_bytes": bundle_bytes,
        "receive_ms": receive_ms,
        "receive_us_per_change": receive_ms * 1e3 / ops,
        "receive_cpu_ms": receive_cpu_ms,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

// ---------------------------------------------------------------- Automerge

/// Applies story `i`'s change number `step` to its map (one Automerge change per call).
fn automerge_step(doc: &mut AutoCommit, stories: &automerge::ObjId, i: usize, step: usize) -> Result<()> {
    let id = story_id(i);
    let story = if step == 0 {
        let s = doc.put_object(stories, id.as_str(), ObjType::Map)?;
        doc.put(
            &s,
            "name",
            format!("Story {i}: make the login page remember the user"),
        )?;
        doc.put(
            &s,
            "body",
            format!("As a user I want story {i} done so that the pipeline has realistic text."),
        )?;
        doc.put(&s, "stage", "backlog")?;
        return Ok(());
    } else {
        match doc.get(stories, id.as_str())? {
            Some((Value::Object(ObjType::Map), s)) => s,
            other => bail!("story {id} is {other:?}"),
        }
    };
    match step {
        1 => {
            doc.put(&story, "claim_holder", "bench-node")?;
            doc.put(&story, "claim_until", ScalarValue::Int(START_MILLIS + 3_600_000))?;
        }
        2 => doc.put(&story, "stage", "coding")?,
        3 => doc.put(&story, "stage", "qa")?,
        4 => {
            doc.put(&story, "stage", "merge")?;
            doc.put(&story, "branch", format!("feature/story-{i}"))?;
            doc.put(&story, "commits", ScalarValue::Uint(1 + (i % 7) as u64))?;
        }
        5 => {
            doc.put(&story, "stage", "done")?;
            doc.put(&story, "merge_commit", commit_hash(i))?;
        }
        6 => {
            doc.delete(&story, "claim_holder")?;
            doc.delete(&story, "claim_until")?;
        }
        7 => doc.put(&story, "stage", "archived")?,
        _ => bail!("step {step} does not exist"),
    }
    Ok(())
}

/// Commits the open change and signs its bytes (what a user adds for authenticity).
fn commit_signed(doc: &mut AutoCommit, key: &SigningKey, sigs: &mut Vec<Signature>) -> Result<()> {
    doc.commit();
    let change = doc.get_last_local_change().context("no change was committed")?;
    sigs.push(key.sign(change.raw_bytes()));
    Ok(())
}

fn automerge_side(n: usize) -> Result<Json> {
    let tmp = tempfile::Builder::new().prefix("vs-automerge-a-").tempdir()?;
    let (inc_path, save_path, recv_path) = (
        tmp.path().join("incremental.am"),
        tmp.path().join("doc.am"),
        tmp.path().join("received.am"),
    );
    let key = SigningKey::generate(&mut rand_core::OsRng);
    let mut sigs = Vec::with_capacity(n * CHANGES + 1);
    let mut inc = OpenOptions::new().create(true).append(true).open(&inc_path)?;

    // Build: one change per op, each signed; per group of 64 stories the new changes are
    // appended to a file and synced (the durable write huskies does per group).
    let t = Instant::now();
    let mut doc = AutoCommit::new();
    let stories = doc.put_object(ROOT, "stories", ObjType::Map)?;
    commit_signed(&mut doc, &key, &mut sigs)?;
    for first in (0..n).step_by(STORIES_PER_GROUP) {
        for i in first..(first + STORIES_PER_GROUP).min(n) {
            for step in 0..CHANGES {
                automerge_step(&mut doc, &stories, i, step)?;
                commit_signed(&mut doc, &key, &mut sigs)?;
            }
        }
        inc.write_all(&doc.save_incremental())?;
        inc.sync_data()?;
    }
    let build_ms = ms(t);
    let changes = sigs.len();

    // Save: the compact whole-document encoding.
    let t = Instant::now();
    let saved = doc.save();
    write_synced(&save_path, &saved)?;
    let save_ms = ms(t);
    let save_bytes = saved.len();
    drop(saved);

    // The history a peer receives: every change's bytes (and its signature).
    let t = Instant::now();
    let history: Vec<Vec<u8>> = doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    let export_ms = ms(t);
    ensure!(
        history.len() == changes,
        "{} changes for {changes} signatures",
        history.len()
    );
    drop(doc);

    // Reopen and answer one query.
    let probe = story_id(n / 2);
    let t = Instant::now();
    let reopened = AutoCommit::load(&fs::read(&save_path)?)?;
    let stage = automerge_stage(&reopened, &probe)?;
    let reopen_query_ms = ms(t);
    ensure!(stage == "archived", "story {probe} is {stage}");
    drop(reopened);

    // A fresh replica loads the incremental file (what `save_incremental` wrote).
    let t = Instant::now();
    let mut fresh = AutoCommit::new();
    fresh.load_incremental(&fs::read(&inc_path)?)?;
    let load_incremental_ms = ms(t);
    ensure!(automerge_stage(&fresh, &probe)? == "archived");
    drop(fresh);

    // A fresh replica applies the changes, unsigned.
    let t = Instant::now();
    let decoded = history
        .iter()
        .map(|b| Change::try_from(&b[..]))
        .collect::<Result<Vec<_>, _>>()?;
    let mut fresh = AutoCommit::new();
    fresh.apply_changes(decoded)?;
    let apply_ms = ms(t);
    ensure!(automerge_stage(&fresh, &probe)? == "archived");
    drop(fresh);

    // A fresh replica receives the signed history: verify each change's signature,
    // decode, apply; then persist what it holds.
    let verifying = key.verifying_key();
    let (t, cpu) = (Instant::now(), cpu_ms());
    let mut decoded = Vec::with_capacity(history.len());
    for (bytes, sig) in history.iter().zip(&sigs) {
        verifying
            .verify(bytes, sig)
            .context("a change's signature does not verify")?;
        decoded.push(Change::try_from(&bytes[..])?);
    }
    let mut fresh = AutoCommit::new();
    fresh.apply_changes(decoded)?;
    let receive_signed_unpersisted_ms = ms(t);
    write_synced(&recv_path, &fresh.save())?;
    let receive_signed_ms = ms(t);
    let receive_signed_cpu_ms = cpu_ms().zip(cpu).map(|(after, before)| after - before);
    ensure!(automerge_stage(&fresh, &probe)? == "archived");

    let c = changes as f64;
    Ok(json!({
        "changes": changes,
        "build_ms": build_ms,
        "build_us_per_change": build_ms * 1e3 / c,
        "incremental_bytes": fs::metadata(&inc_path)?.len(),
        "save_ms": save_ms,
        "save_bytes": save_bytes,
        "reopen_query_ms": reopen_query_ms,
        "export_ms": export_ms,
        "history_bytes": history.iter().map(Vec::len).sum::<usize>(),
        "load_incremental_ms": load_incremental_ms,
        "apply_ms": apply_ms,
        "apply_us_per_change": apply_ms * 1e3 / c,
        "receive_signed_unpersisted_ms": receive_signed_unpersisted_ms,
        "receive_signed_ms": receive_signed_ms,
        "receive_us_per_change": receive_signed_ms * 1e3 / c,
        "receive_signed_cpu_ms": receive_signed_cpu_ms,
        "peak_rss_mb": peak_rss_mb(),
    }))
}

/// The `stage` field of story `id`.
fn automerge_stage(doc: &AutoCommit, id: &str) -> Result<String> {
    let Some((Value::Object(ObjType::Map), stories)) = doc.get(ROOT, "stories")? else {
        bail!("no stories map");
    };
    let Some((Value::Object(ObjType::Map), story)) = doc.get(&stories, id)? else {
        bail!("no story {id}");
    };
    match doc.get(&story, "stage")? {
        Some((Value::Scalar(s), _)) => match s.as_ref() {
            ScalarValue::Str(s) => Ok(s.to_string()),
            other => bail!("stage of {id} is {other:?}"),
        },
        other => bail!("stage of {id} is {other:?}"),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

// ---------------------------------------------------------------- machine

/// CPU time (user + system, all threads) this process has used so far, in ms (None off
/// Linux). Beside a wall time it says how much of that time the side computed: on a
/// machine shared with other work the wall time also counts waiting for a core.
fn cpu_ms() -> Option<f64> {
    let stat = fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) and its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) * 1e3 / USER_HZ)
}

/// Ticks per second of /proc's times: `USER_HZ`, 100 on every Linux architecture this runs on.
const USER_HZ: f64 = 100.0;

/// `VmHWM` of this process, in MB.
fn peak_rss_mb() -> Option<f64> {
    rss_mb("VmHWM:")
}

/// A memory line of /proc/self/status, in MB (None off Linux).
fn rss_mb(field: &str) -> Option<f64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}
