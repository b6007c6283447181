//! Measures a streaming export and import of a large history, one process per step so each
//! step's peak memory is its own (docs/benchmarks.md, "Streaming export"):
//!
//! ```sh
//! cargo build --release -p huskies-core --example export_memory
//! X=target/release/examples/export_memory
//! $X build  /tmp/hx 100000                 # an admin with 100k stories x 8 changes
//! $X export /tmp/hx /tmp/hx.hsk            # its history as a bundle stream (4 MiB bundles)
//! $X import /tmp/hx /tmp/hx.hsk /tmp/hx/b  # a new node of the cluster imports it
//! $X import-whole /tmp/hx /tmp/hx.hsk /tmp/hx/c  # the same from one slice, for comparison
//! ```
//!
//! Each step prints its figures and the process's peak resident memory (`VmHWM`, Linux).
//! `EXPORT_MEMORY_CACHE_MB=N` sets the nodes' sled page cache
//! ([`NodeConfig::store_cache_bytes`]) instead of the default, to see what it costs.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Instant, SystemTime};

use huskies_core::{
    ClusterId, Command, Error, InitMode, Node, NodeConfig, PipelineEvent, StoryId, Timestamp, VersionVector,
    EXPORT_BUNDLE_BYTES,
};

/// The nodes' configuration: the default, with `EXPORT_MEMORY_CACHE_MB` if set.
fn config() -> NodeConfig {
    let mut config = NodeConfig::default();
    if let Some(mb) = std::env::var("EXPORT_MEMORY_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        config.store_cache_bytes = mb << 20;
    }
    config
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now())
}

/// Stories per execute_group call.
const GROUP: usize = 1000;

/// The eight changes each story goes through, as constructors of its command.
fn changes(id: &StoryId, i: usize) -> Result<Vec<Command>, Error> {
    let ev = |e: PipelineEvent| Command::event(id.clone(), e);
    Ok(vec![
        Command::add_story(id.clone(), format!("story {i}")).into(),
        ev(PipelineEvent::DepsMet),
        ev(PipelineEvent::GatesStarted),
        ev(PipelineEvent::gates_failed("flaky test")),
        ev(PipelineEvent::GatesStarted),
        ev(PipelineEvent::gates_passed(format!("feature/{i}"), 3)?),
        ev(PipelineEvent::merge_succeeded(format!("c{i:08x}"))),
        ev(PipelineEvent::Accepted),
    ])
}

fn build(dir: &Path, stories: usize) -> Result<(), Error> {
    let rng = &mut huskies_core::rand_core::OsRng;
    let mut admin = Node::init(
        &dir.join("admin"),
        InitMode::NewCluster { name: "bench".into() },
        rng,
        now(),
        config(),
    )?;
    let cluster = admin.cluster_id().to_string();
    std::fs::write(dir.join("cluster"), &cluster).map_err(|e| io(dir, e))?;
    let start = Instant::now();
    let mut changed = 0usize;
    for first in (0..stories).step_by(GROUP) {
        let ids: Vec<StoryId> = (first..(first + GROUP).min(stories))
            .map(|i| StoryId::new(format!("{i}_story")))
            .collect::<Result<_, _>>()?;
        let per_story: Vec<Vec<Command>> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| changes(id, first + k))
            .collect::<Result<_, _>>()?;
        // One group per step: every story of the batch takes its k-th change together.
        for k in 0..8 {
            let cmds: Vec<Command> = per_story.iter().map(|c| c[k].clone()).collect();
            for r in admin.execute_group(now(), cmds)? {
                r?;
                changed += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "build: {changed} changes in {secs:.1} s ({:.1} µs/change); ops held {}; peak RSS {}",
        secs * 1e6 / changed as f64,
        admin.version_vector().total(),
        peak_rss()
    );
    Ok(())
}

fn export(dir: &Path, file: &Path) -> Result<(), Error> {
    let start = Instant::now();
    let admin = Node::open(&dir.join("admin"), config())?;
    let mut out = BufWriter::new(File::create(file).map_err(|e| io(file, e))?);
    let (mut bundles, mut bytes) = (0usize, 0usize);
    for bundle in admin.export_chunks(&VersionVector::default(), EXPORT_BUNDLE_BYTES)? {
        let bundle = bundle?;
        out.write_all(&bundle).map_err(|e| io(file, e))?;
        bundles += 1;
        bytes += bundle.len();
    }
    out.flush().map_err(|e| io(file, e))?;
    println!(
        "export: {} ops, {bundles} bundles, {bytes} bytes in {:.1} s; peak RSS {}",
        admin.version_vector().total(),
        start.elapsed().as_secs_f64(),
        peak_rss()
    );
    Ok(())
}

fn import(dir: &Path, file: &Path, home: &Path, whole: bool) -> Result<(), Error> {
    let start = Instant::now();
    let cluster = std::fs::read_to_string(dir.join("cluster")).map_err(|e| io(dir, e))?;
    let cluster: ClusterId = cluster.trim().parse()?;
    let mut member = Node::init(
        home,
        InitMode::Join { cluster },
        &mut huskies_core::rand_core::OsRng,
        now(),
        config(),
    )?;
    let report = if whole {
        // For comparison: the whole stream read into memory and imported from one slice.
        let bytes = std::fs::read(file).map_err(|e| io(file, e))?;
        member.import_bundle(&bytes, |_, _| {})?
    } else {
        let mut input = BufReader::new(File::open(file).map_err(|e| io(file, e))?);
        member.import_reader(&mut input, |_, _| {})?
    };
    println!(
        "import: {} applied, {} rejected, {} buffered in {:.1} s; ops held {}; peak RSS {}",
        report.applied,
        report.rejected.len(),
        report.buffered,
        start.elapsed().as_secs_f64(),
        member.version_vector().total(),
        peak_rss()
    );
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("{}: {e}", path.display()))
}

/// This process's peak resident set (`VmHWM` in /proc/self/status), or "unknown".
fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l[6..].trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        Error::InvalidArgument(
            "usage: export_memory build DIR STORIES | export DIR FILE | import DIR FILE HOME | import-whole DIR FILE HOME".into(),
        )
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["build", dir, n] => build(Path::new(dir), n.parse().map_err(|_| usage())?),
        ["export", dir, file] => export(Path::new(dir), Path::new(file)),
        ["import", dir, file, home] => import(Path::new(dir), Path::new(file), Path::new(home), false),
        ["import-whole", dir, file, home] => import(Path::new(dir), Path::new(file), Path::new(home), true),
        _ => Err(usage()),
    }
}
