//! The event bridge against a real `nats-server` with JetStream: per-story order and the
//! envelope, exactly once with two and three publishing nodes, NATS stopped and restarted,
//! a node catching up after the duplicate window, `kill -9` while publishing, and off when
//! unset. Skips (loudly) only where nats-server is not installed; `.ci/run` installs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use common::nats::NatsServer;
use common::*;
use huskies_core::{
    events_after, Command, Envelope, EventCursor, ExecutionEvent, Node, NodeConfig, PipelineEvent, StoryId,
};
use huskies_daemon::{default_stream_name, stream_config, Daemon, DaemonConfig, EventsConfig, CURSOR_FILE};

const CHILD_HOME: &str = "HUSKIES_EVENTS_CHILD_HOME";
const CHILD_NATS: &str = "HUSKIES_EVENTS_CHILD_NATS";

fn sid(s: &str) -> StoryId {
    StoryId::new(s).unwrap()
}

fn add(id: &str) -> Command {
    Command::AddStory {
        id: sid(id),
        name: id.into(),
        body: None,
        depends_on: vec![],
    }
}

fn ev(id: &str, event: PipelineEvent) -> Command {
    Command::Event { id: sid(id), event }
}

fn bridge(label: &str, peers: Vec<String>, url: &str) -> DaemonConfig {
    let mut c = fast_config(label, peers);
    c.events = EventsConfig {
        nats_url: Some(url.to_string()),
        ack_timeout_ms: 2_000,
        signal_interval_ms: 200,
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        ..EventsConfig::default()
    };
    c
}

/// Every event of the node's local log, in the walk's order.
fn log_events(node: &Node) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut at = EventCursor::default();
    loop {
        let b = events_after(node, &at, 1 << 20).unwrap();
        out.extend(b.events.into_iter().map(|(e, _)| e));
        if b.ops_read == 0 {
            return out;
        }
        at = b.end;
    }
}

fn stream_name(d: &Daemon) -> String {
    d.with_node(|n| default_stream_name(&n.cluster_id()))
}

/// Waits until the bridge has everything the node holds acknowledged.
async fn drained(d: &Daemon, what: &str) {
    eventually(30, what, || {
        let e = d.health().events;
        e.connected && e.pending == 0 && e.in_flight == 0
    })
    .await;
}

/// Each id once, and the same set of events as the log.
fn assert_exactly_once(stream: &[Envelope], log: &[Envelope]) {
    let mut seen = BTreeMap::new();
    for e in stream {
        *seen.entry(e.id.clone()).or_insert(0u32) += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    let want: BTreeSet<_> = log.iter().map(|e| e.id.clone()).collect();
    let got: BTreeSet<_> = seen.into_keys().collect();
    let lost: Vec<_> = want.difference(&got).collect();
    assert!(lost.is_empty(), "{} events lost: {lost:?}", lost.len());
    assert_eq!(got, want, "no events beyond the log's");
    assert_eq!(stream.len(), log.len());
}

/// Per story, the stream holds its events in causal (Lamport) order.
fn assert_per_story_order(stream: &[Envelope]) {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for e in stream {
        let (Some(story), Some(lamport)) = (&e.attributes.story, e.attributes.lamport) else {
            continue;
        };
        if let Some(prev) = last.insert(story.clone(), lamport) {
            assert!(prev < lamport, "story {story}: lamport {lamport} after {prev}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_per_story_order_with_the_right_envelope() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 1);
    let a = start(&homes[0], bridge("a", vec![], &nats.url())).await;
    a.with_node(|n| {
        n.execute(now(), add("1_one")).unwrap();
        n.execute(now(), add("2.two")).unwrap();
        n.execute(now(), ev("1_one", PipelineEvent::DepsMet)).unwrap();
        n.execute(now(), ev("2.two", PipelineEvent::DepsMet)).unwrap();
        n.execute(
            now(),
            Command::Claim {
                id: sid("1_one"),
                ttl_secs: 60,
            },
        )
        .unwrap();
        n.execute(now(), ev("1_one", PipelineEvent::GatesStarted))
            .unwrap();
        n.execute(now(), ev("2.two", PipelineEvent::Abandon)).unwrap();
    });
    drained(&a, "the bridge publishes everything").await;
    let stream = nats.envelopes(&stream_name(&a)).await;
    let log = a.with_node(|n| log_events(n));
    assert_eq!(stream, log, "the log's envelopes, in the log's order");
    assert_exactly_once(&stream, &log);
    assert_per_story_order(&stream);
    let tr: Vec<_> = stream
        .iter()
        .filter(|e| {
            e.kind == "org.huskies.story.transitioned" && e.attributes.story.as_deref() == Some("1_one")
        })
        .collect();
    assert_eq!(tr.len(), 2);
    assert_eq!(tr[1].attributes.event.as_deref(), Some("gates-started"));
    assert_eq!(tr[1].attributes.from.as_ref().unwrap()["kind"], "coding");
    assert_eq!(tr[1].attributes.to.as_ref().unwrap()["kind"], "qa");
    assert_eq!(tr[1].attributes.concurrent, Some(false));
    assert_eq!(
        tr[1].attributes.author.as_deref(),
        Some(a.with_node(|n| n.node_id().to_hex()).as_str())
    );
    let h = a.health().events;
    assert_eq!(
        (h.published, h.deduplicated, h.failed),
        (stream.len() as u64, 0, 0)
    );
    assert!(homes[0].join(CURSOR_FILE).exists(), "the cursor is persisted");
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_nodes_publishing_the_same_ops_store_each_event_once() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 3);
    let url = nats.url();
    let a = start(&homes[0], bridge("a", vec![], &url)).await;
    let b = start(&homes[1], bridge("b", vec![a.url()], &url)).await;
    for (i, d) in [&a, &b].into_iter().enumerate() {
        d.with_node(|n| {
            let s = format!("{i}_two");
            n.execute(now(), add(&s)).unwrap();
            n.execute(now(), ev(&s, PipelineEvent::DepsMet)).unwrap();
        });
    }
    eventually(15, "two nodes converge", || vv(&a) == vv(&b)).await;
    drained(&a, "A drained").await;
    drained(&b, "B drained").await;
    let name = stream_name(&a);
    let log = a.with_node(|n| log_events(n));
    let two = nats.envelopes(&name).await;
    assert_exactly_once(&two, &log);
    assert_per_story_order(&two);

    // A third node joins the line and everyone writes more, concurrently.
    let c = start(&homes[2], bridge("c", vec![b.url()], &url)).await;
    for round in 0..5 {
        for (i, d) in [&a, &b, &c].into_iter().enumerate() {
            d.with_node(|n| {
                let s = format!("{round}{i}_three");
                n.execute(now(), add(&s)).unwrap();
                n.execute(now(), ev(&s, PipelineEvent::DepsMet)).unwrap();
                n.execute(now(), ev(&s, PipelineEvent::GatesStarted)).unwrap();
            });
        }
    }
    eventually(20, "three nodes converge", || {
        let (va, vb, vc) = (vv(&a), vv(&b), vv(&c));
        va == vb && vb == vc
    })
    .await;
    for d in [&a, &b, &c] {
        drained(d, "every bridge drained").await;
    }
    let log = a.with_node(|n| log_events(n));
    let three = nats.envelopes(&name).await;
    assert_exactly_once(&three, &log);
    assert_per_story_order(&three);
    let (mut published, mut deduplicated) = (0, 0);
    for d in [&a, &b, &c] {
        let h = d.health().events;
        published += h.published;
        deduplicated += h.deduplicated;
    }
    assert_eq!(
        published,
        log.len() as u64,
        "each event stored by exactly one node"
    );
    assert!(
        deduplicated >= log.len() as u64,
        "the other nodes' copies were refused: {deduplicated} refusals for {} events",
        log.len()
    );
    for d in [a, b, c] {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_mid_run_and_restarted_publishes_every_event_once() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 1);
    let a = start(&homes[0], bridge("a", vec![], &nats.url())).await;
    let write = |a: &Daemon, from: usize, to: usize| {
        a.with_node(|n| {
            for i in from..to {
                let s = format!("{i}_s");
                n.execute(now(), add(&s)).unwrap();
                n.execute(now(), ev(&s, PipelineEvent::DepsMet)).unwrap();
            }
        })
    };
    write(&a, 0, 20);
    drained(&a, "published before the outage").await;
    nats.stop();
    // Commands go on while NATS is away; none fails or waits for it.
    let t = std::time::Instant::now();
    write(&a, 20, 60);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "commands did not wait for NATS"
    );
    eventually(20, "the bridge notices the outage", || {
        let e = a.health().events;
        e.failed > 0 && e.pending > 0
    })
    .await;
    nats.restart();
    write(&a, 60, 70);
    drained(&a, "published after NATS returns").await;
    let stream = nats.envelopes(&stream_name(&a)).await;
    let log = a.with_node(|n| log_events(n));
    assert_exactly_once(&stream, &log);
    assert_per_story_order(&stream);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_offline_past_the_duplicate_window_adds_no_duplicate() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let url = nats.url();
    // A stream whose duplicate window is tiny: the design must not rely on it.
    let cluster = Node::open(&homes[0], NodeConfig::default()).unwrap().cluster_id();
    let name = default_stream_name(&cluster);
    {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        let mut cfg = stream_config(&name, &cluster);
        cfg.duplicate_window = Duration::from_millis(500);
        js.create_stream(cfg).await.unwrap();
    }
    let a = start(&homes[0], bridge("a", vec![], &url)).await;
    // B syncs with A but publishes nothing yet.
    let b = start(&homes[1], fast_config("b", vec![a.url()])).await;
    for (i, d) in [&a, &b].into_iter().enumerate() {
        d.with_node(|n| {
            for k in 0..5 {
                let s = format!("{i}{k}_x");
                n.execute(now(), add(&s)).unwrap();
                n.execute(now(), ev(&s, PipelineEvent::DepsMet)).unwrap();
            }
        });
    }
    eventually(15, "A and B converge", || vv(&a) == vv(&b)).await;
    drained(&a, "A published everything").await;
    b.shutdown().await.unwrap();
    let before = nats.envelopes(&name).await;
    // Offline for several duplicate windows, then B catches up with the bridge on.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let b = start(&homes[1], bridge("b", vec![], &url)).await;
    drained(&b, "B's bridge caught up").await;
    let h = b.health().events;
    let log = b.with_node(|n| log_events(n));
    assert_eq!(h.published, 0, "B stored nothing new");
    assert_eq!(h.deduplicated, log.len() as u64, "every copy from B was refused");
    let after = nats.envelopes(&name).await;
    assert_eq!(after, before);
    assert_exactly_once(&after, &log);
    for d in [a, b] {
        d.shutdown().await.unwrap();
    }
}

/// The child of `a_daemon_killed_while_publishing_loses_and_duplicates_nothing`: a daemon
/// with the bridge on and a writer printing `ack N` after each committed pair of ops.
#[test]
#[ignore = "runs only as the child process of a_daemon_killed_while_publishing_loses_and_duplicates_nothing"]
fn events_bridge_child() {
    let (Ok(home), Ok(url)) = (std::env::var(CHILD_HOME), std::env::var(CHILD_NATS)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut config = bridge("child", vec![], &url);
        config.events.max_in_flight = 8;
        let d = start(Path::new(&home), config).await;
        for i in 0.. {
            d.with_node(|n| {
                let s = format!("{i}_k{}", std::process::id());
                n.execute(now(), add(&s)).unwrap();
                n.execute(now(), ev(&s, PipelineEvent::DepsMet)).unwrap();
            });
            println!("ack {i}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_while_publishing_loses_and_duplicates_nothing() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 1);
    let cluster = Node::open(&homes[0], NodeConfig::default()).unwrap().cluster_id();
    let name = default_stream_name(&cluster);
    for round in 0..2 {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "events_bridge_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_HOME, &homes[0])
            .env(CHILD_NATS, nats.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            let mut acks = 0;
            for line in BufReader::new(stdout).lines() {
                if line.map(|l| l.contains("ack ")).unwrap_or(false) {
                    acks += 1;
                }
            }
            acks
        });
        // Kill it while it writes and publishes: once the stream has grown this round.
        let goal = 100 + round * 150;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let n = nats.envelopes(&name).await.len();
            if n >= goal {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the child published only {n} events"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().unwrap(); // SIGKILL: no shutdown, no final cursor write
        child.wait().unwrap();
        let acks = lines.join().unwrap();
        assert!(acks > 0, "the child wrote");
    }
    // Restart on the same home: the bridge resumes from its cursor and finishes.
    let a = start(&homes[0], bridge("a", vec![], &nats.url())).await;
    drained(&a, "the restarted bridge caught up").await;
    let log = a.with_node(|n| log_events(n));
    let stream = nats.envelopes(&name).await;
    assert_exactly_once(&stream, &log);
    assert_per_story_order(&stream);
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_means_nothing_is_attempted() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 1);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    a.with_node(|n| {
        n.execute(now(), add("1_quiet")).unwrap();
        n.execute(now(), ev("1_quiet", PipelineEvent::DepsMet)).unwrap();
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let h = a.health().events;
    assert!(!h.enabled && !h.connected);
    assert_eq!((h.published, h.deduplicated, h.failed, h.pending), (0, 0, 0, 0));
    assert!(
        !homes[0].join(CURSOR_FILE).exists(),
        "no cursor: nothing was attempted"
    );
    let name = stream_name(&a);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    assert!(js.get_stream(&name).await.is_err(), "no stream was created");
    a.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_based_signals_are_published_once_by_any_node() {
    let Some(nats) = NatsServer::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let url = nats.url();
    let config = |label: &str, peers: Vec<String>| {
        let mut c = bridge(label, peers, &url);
        c.events.stale_after_secs = 1;
        c
    };
    let a = start(&homes[0], config("a", vec![])).await;
    let b = start(&homes[1], config("b", vec![a.url()])).await;
    let exec = |event: ExecutionEvent, id: &str| Command::Execution { id: sid(id), event };
    a.with_node(|n| {
        for id in ["1_run", "2_wait"] {
            n.execute(now(), add(id)).unwrap();
            n.execute(
                now(),
                exec(
                    ExecutionEvent::SpawnRequested {
                        agent: "coder".into(),
                    },
                    id,
                ),
            )
            .unwrap();
        }
        n.execute(now(), exec(ExecutionEvent::SpawnedSuccessfully, "1_run"))
            .unwrap();
        // Due at once; the running one goes stale after a second without heartbeat.
        n.execute(
            now(),
            exec(ExecutionEvent::HitRateLimit { resume_at: now() }, "2_wait"),
        )
        .unwrap();
    });
    let name = stream_name(&a);
    let signal = |es: &[Envelope], t: &str| es.iter().filter(|e| e.kind == t).count();
    for _ in 0..200 {
        let stream = nats.envelopes(&name).await;
        if signal(&stream, "org.huskies.execution.orphaned") > 0
            && signal(&stream, "org.huskies.execution.due") > 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both nodes see both signals for several passes; each is stored once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let stream = nats.envelopes(&name).await;
    assert_eq!(
        signal(&stream, "org.huskies.execution.orphaned"),
        1,
        "{stream:#?}"
    );
    assert_eq!(signal(&stream, "org.huskies.execution.due"), 1);
    let orphan = stream
        .iter()
        .find(|e| e.kind == "org.huskies.execution.orphaned")
        .unwrap();
    assert_eq!(orphan.attributes.story.as_deref(), Some("1_run"));
    assert_eq!(
        orphan.attributes.node.as_deref(),
        Some(a.with_node(|n| n.node_id().to_hex()).as_str())
    );
    let ids: BTreeSet<_> = stream.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), stream.len(), "no event twice");
    for d in [a, b] {
        d.shutdown().await.unwrap();
    }
}

/// Appends `n` ops (stories and their first transition, one event each), `group` commands
/// per commit (1: one command at a time, as a node's own writers do; more: group commit);
/// returns the seconds it took.
fn append(d: &Daemon, prefix: &str, n: usize, group: usize) -> f64 {
    let t = std::time::Instant::now();
    let mut cmds = Vec::with_capacity(group);
    for i in 0..n / 2 {
        let s = format!("{i}_{prefix}");
        cmds.push(add(&s));
        cmds.push(ev(&s, PipelineEvent::DepsMet));
        if cmds.len() >= group {
            let batch = std::mem::take(&mut cmds);
            for r in d.with_node(|node| node.execute_group(now(), batch)).unwrap() {
                r.unwrap();
            }
        }
    }
    if !cmds.is_empty() {
        for r in d.with_node(|node| node.execute_group(now(), cmds)).unwrap() {
            r.unwrap();
        }
    }
    t.elapsed().as_secs_f64()
}

/// Appends on a bridged daemon; returns (append seconds, seconds until all acknowledged,
/// events acknowledged).
async fn bridged_append(d: &Daemon, prefix: &str, n: usize, group: usize) -> (f64, f64, u64) {
    drained(d, "the bridge is connected and idle").await;
    let before = d.health().events.published;
    let t = std::time::Instant::now();
    let secs = append(d, prefix, n, group);
    drained(d, "the bridge caught up").await;
    (
        secs,
        t.elapsed().as_secs_f64(),
        d.health().events.published - before,
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The figure of `docs/benchmarks.md` ("Event bridge"): the node's own append rate with the
/// bridge off and on, the events per second the bridge gets acknowledged in the same run,
/// and the latency from commit to JetStream acknowledgement. Run in release:
/// `cargo test --release -p huskies-daemon --test events -- --ignored --nocapture bridge_figure`
/// (`HUSKIES_BENCH_OPS` sets the ops per phase, default 20000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it in release (docs/benchmarks.md)"]
async fn bridge_figure() {
    let Some(nats) = NatsServer::start() else { return };
    let ops: usize = std::env::var("HUSKIES_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    // Bridge off: the baseline append rates.
    let off = start(&homes[1], fast_config("off", vec![])).await;
    let off_secs = append(&off, "off", ops, 1);
    let off_group_secs = append(&off, "offg", ops, 64);
    off.shutdown().await.unwrap();
    // Bridge on: append, and time until every event is acknowledged.
    let mut config = bridge("on", vec![], &nats.url());
    config.events.signal_interval_ms = EventsConfig::default().signal_interval_ms;
    let on = start(&homes[0], config).await;
    let (on_secs, bridge_secs, events) = bridged_append(&on, "on", ops, 1).await;
    let (on_group_secs, bridge_group_secs, group_events) = bridged_append(&on, "ong", ops, 64).await;
    // Latency: one commit at a time, waiting for its acknowledgement.
    let mut lat = Vec::new();
    for i in 0..200 {
        let before = on.health().events.published;
        let t = std::time::Instant::now();
        on.with_node(|n| n.execute(now(), add(&format!("{i}_lat"))))
            .unwrap();
        while on.health().events.published == before {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rate = |n: f64, secs: f64| (n / secs).round();
    let append_on = ops as f64 / on_secs;
    let bridge_rate = events as f64 / bridge_secs;
    let group_on = ops as f64 / on_group_secs;
    let group_bridge = group_events as f64 / bridge_group_secs;
    println!(
        "{}",
        serde_json::json!({
            "ops": ops,
            "single": {
                "append_ops_per_s_bridge_off": rate(ops as f64, off_secs),
                "append_ops_per_s_bridge_on": append_on.round(),
                "bridge_events_per_s": bridge_rate.round(),
                "bridge_over_append": (bridge_rate / append_on * 1000.0).round() / 1000.0,
                "catch_up_after_last_append_ms": ((bridge_secs - on_secs) * 1000.0).round(),
            },
            "group_of_64": {
                "append_ops_per_s_bridge_off": rate(ops as f64, off_group_secs),
                "append_ops_per_s_bridge_on": group_on.round(),
                "bridge_events_per_s": group_bridge.round(),
                "bridge_over_append": (group_bridge / group_on * 1000.0).round() / 1000.0,
                "catch_up_after_last_append_ms": ((bridge_group_secs - on_group_secs) * 1000.0).round(),
            },
            "commit_to_ack_ms_p50": (percentile(&lat, 0.5) * 100.0).round() / 100.0,
            "commit_to_ack_ms_p99": (percentile(&lat, 0.99) * 100.0).round() / 100.0,
            "commit_to_ack_ms_max": (lat[lat.len() - 1] * 100.0).round() / 100.0,
        })
    );
    assert_eq!(
        (events, group_events),
        (ops as u64, ops as u64),
        "one event per op"
    );
    on.shutdown().await.unwrap();
}
