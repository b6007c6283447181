//! `huskies demo`: a small local cluster in temporary homes — three sync daemons on
//! loopback — showing the pipeline driven from different nodes, live replication, a claim
//! race, and a node stopping, missing ops, restarting and catching up.
//!
//! Everything is real: sled stores, WebSocket connections, join tickets. The homes live in
//! a temporary directory removed at the end.

use std::io::Write;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use huskies_core::{Command, Event, InitMode, Node, NodeConfig, PipelineEvent, StageKind, StoryId};
use huskies_daemon::{Daemon, DaemonConfig};

use crate::exec::now;
use crate::human;
use crate::output::stage_painted;

fn id(s: &str) -> StoryId {
    StoryId::new(s).expect("demo ids are valid")
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// How the demo prints (from the global flags).
pub struct DemoOptions {
    /// `--quiet` or `--json`: no walkthrough on stdout.
    pub silent: bool,
    /// Colour the walkthrough.
    pub colour: bool,
}

/// What the demo did: the summary `--json` prints, and whether stdout's reader went away
/// (the demo then ran to its end silently, removing its homes, and the command ends as a
/// closed pipe does).
pub struct DemoReport {
    /// `{"ok": true, "nodes": [...], "stories": [...], ...}` (`docs/cli.md`).
    pub summary: serde_json::Value,
    /// A write to stdout failed.
    pub reader_gone: bool,
}

struct Demo {
    silent: bool,
    colour: bool,
    reader_gone: std::cell::Cell<bool>,
}

impl Demo {
    /// One line of the walkthrough. A closed stdout silences the rest: never a panic.
    fn say(&self, text: &str) {
        if self.silent || self.reader_gone.get() {
            return;
        }
        let text = if self.colour {
            text.to_string()
        } else {
            human::strip_colour(text)
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            self.reader_gone.set(true);
        }
    }

    fn event(&self, d: &Daemon, who: &str, story: &str, e: PipelineEvent) -> Result<()> {
        let name = e.name();
        let s = d.with_node(|n| {
            n.execute(
                now(),
                Command::Event {
                    id: id(story),
                    event: e,
                },
            )?;
            n.story(&id(story), now())
        })?;
        self.say(&format!(
            "  {who:<6} {story:<12} {name:<18} -> {}",
            stage_painted(&s.stage)
        ));
        Ok(())
    }
}

fn config(label: &str, peers: Vec<String>) -> DaemonConfig {
    DaemonConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        peers,
        label: label.into(),
        heartbeat_secs: 2,
        backoff_initial_ms: 50,
        backoff_max_ms: 500,
        ..DaemonConfig::default()
    }
}

async fn start(home: &Path, config: DaemonConfig) -> Result<Daemon> {
    let node = Node::open(home, NodeConfig::default())?;
    Ok(Daemon::start(node, config, Arc::new(crate::route::CliControl)).await?)
}

/// Waits until every daemon holds the same ops.
async fn converge(daemons: &[&Daemon], secs: u64) -> Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        let vvs: Vec<_> = daemons
            .iter()
            .map(|d| d.with_node(|n| n.version_vector()))
            .collect();
        if vvs.windows(2).all(|w| w[0] == w[1]) {
            return Ok(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("the nodes did not converge within {secs} s")
}

/// Runs the demo; prints a readable account on stdout (unless silent) and returns its
/// summary.
pub fn run(opts: &DemoOptions) -> Result<DemoReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run_async(opts))
}

async fn run_async(opts: &DemoOptions) -> Result<DemoReport> {
    let dir = tempfile::Builder::new().prefix("huskies-demo-").tempdir()?;
    let demo = Demo {
        silent: opts.silent,
        colour: opts.colour,
        reader_gone: std::cell::Cell::new(false),
    };
    let started = Instant::now();
    demo.say("huskies demo: three nodes, each with its own sled store and sync daemon on loopback\n");

    demo.say("1. alice starts a cluster and her daemon; bob and carol join with one-time tickets");
    let alice_home = dir.path().join("alice");
    let mut node = Node::init(
        &alice_home,
        InitMode::NewCluster { name: "demo".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )?;
    node.execute(
        now(),
        Command::Heartbeat {
            label: "alice".into(),
            address: None,
        },
    )?;
    let alice = Daemon::start(node, config("alice", vec![]), Arc::new(crate::route::CliControl)).await?;
    demo.say(&format!(
        "  alice  cluster {}, daemon at {}",
        alice.with_node(|n| n.cluster_id()).short(),
        alice.url()
    ));
    let mut joined = Vec::new();
    for who in ["bob", "carol"] {
        let ticket = alice.with_node(|n| n.create_ticket(now(), 300, alice.url(), &mut rand_core::OsRng))?;
        let home = dir.path().join(who);
        let mut node = Node::init(
            &home,
            InitMode::Join {
                cluster: ticket.cluster,
            },
            &mut rand_core::OsRng,
            now(),
            NodeConfig::default(),
        )?;
        let outcome =
            huskies_daemon::join_cluster(&mut node, &ticket, who, Duration::from_secs(20), |_, _| {})
                .await
                .with_context(|| format!("{who} joining"))?;
        drop(node);
        let daemon = start(&home, config(who, vec![alice.url()])).await?;
        demo.say(&format!(
            "  {who:<6} redeemed a ticket: admitted, {} ops received, daemon at {}",
            outcome.ops,
            daemon.url()
        ));
        joined.push((daemon, home));
    }
    let (bob, _bob_home) = joined.remove(0);
    let (carol, carol_home) = joined.remove(0);

    demo.say("\n2. alice writes the backlog; it replicates live");
    for (sid, name) in [
        ("10_login", "Fix login"),
        ("20_search", "Search"),
        ("30_billing", "Billing"),
        ("40_export", "CSV export"),
    ] {
        alice.with_node(|n| {
            n.execute(
                now(),
                Command::AddStory {
                    id: id(sid),
                    name: name.into(),
                    body: None,
                    depends_on: vec![],
                },
            )
        })?;
    }
    let took = converge(&[&alice, &bob, &carol], 10).await?;
    let first_convergence_ms = took.as_millis();
    demo.say(&format!(
        "  4 stories on every node after {first_convergence_ms} ms"
    ));

    demo.say("\n3. bob claims 10_login and works it; QA fails once, then passes");
    bob.with_node(|n| {
        n.execute(
            now(),
            Command::Claim {
                id: id("10_login"),
                ttl_secs: 600,
            },
        )
    })?;
    demo.event(&bob, "bob", "10_login", PipelineEvent::DepsMet)?;
    demo.event(&bob, "bob", "10_login", PipelineEvent::GatesStarted)?;
    demo.event(
        &bob,
        "bob",
        "10_login",
        PipelineEvent::GatesFailed {
            reason: "2 tests failed".into(),
        },
    )?;
    demo.event(&bob, "bob", "10_login", PipelineEvent::GatesStarted)?;
    demo.event(
        &bob,
        "bob",
        "10_login",
        PipelineEvent::GatesPassed {
            branch: "feature/10".into(),
            commits: nz(3),
        },
    )?;
    match bob.with_node(|n| {
        n.execute(
            now(),
            Command::Event {
                id: id("10_login"),
                event: PipelineEvent::Accepted,
            },
        )
    }) {
        Err(e) => demo.say(&format!("  bob    10_login     accepted           refused: {e}")),
        Ok(_) => bail!("an invalid transition was accepted"),
    }

    demo.say("\n4. carol takes 20_search: the merge conflicts, the retry merges");
    demo.event(&carol, "carol", "20_search", PipelineEvent::DepsMet)?;
    demo.event(
        &carol,
        "carol",
        "20_search",
        PipelineEvent::QaSkipped {
            branch: "feature/20".into(),
            commits: nz(1),
        },
    )?;
    demo.event(
        &carol,
        "carol",
        "20_search",
        PipelineEvent::MergeConflict {
            kind: "conflict".into(),
            reason: "src/search.rs".into(),
        },
    )?;
    demo.event(
        &carol,
        "carol",
        "20_search",
        PipelineEvent::GatesPassed {
            branch: "feature/20".into(),
            commits: nz(2),
        },
    )?;
    demo.event(
        &carol,
        "carol",
        "20_search",
        PipelineEvent::MergeSucceeded {
            commit: "9f1c2ab".into(),
        },
    )?;
    demo.event(&carol, "carol", "20_search", PipelineEvent::Accepted)?;

    demo.say("\n5. alice blocks 30_billing, then unblocks it");
    demo.event(
        &alice,
        "alice",
        "30_billing",
        PipelineEvent::Block {
            reason: "waiting on legal".into(),
        },
    )?;
    demo.event(&alice, "alice", "30_billing", PipelineEvent::Unblock)?;

    demo.say("\n6. a claim race: bob and carol claim 40_export at the same moment");
    let mut bob_events = bob.subscribe_events();
    let mut carol_events = carol.subscribe_events();
    let rb = bob.with_node(|n| {
        n.execute(
            now(),
            Command::Claim {
                id: id("40_export"),
                ttl_secs: 600,
            },
        )
    });
    let rc = carol.with_node(|n| {
        n.execute(
            now(),
            Command::Claim {
                id: id("40_export"),
                ttl_secs: 600,
            },
        )
    });
    for (who, r) in [("bob", &rb), ("carol", &rc)] {
        match r {
            Ok(_) => demo.say(&format!("  {who:<6} claims 40_export: accepted locally")),
            Err(e) => demo.say(&format!("  {who:<6} claims 40_export: refused ({e})")),
        }
    }
    converge(&[&alice, &bob, &carol], 10).await?;
    let holders: Vec<_> = [&alice, &bob, &carol]
        .iter()
        .map(|d| d.with_node(|n| n.story(&id("40_export"), now()).map(|s| s.claim.map(|c| c.node))))
        .collect::<Result<_, _>>()?;
    if holders.iter().any(|h| h.is_none() || *h != holders[0]) {
        bail!("the claim race did not converge: {holders:?}");
    }
    let bob_id = bob.with_node(|n| n.node_id());
    let winner = if holders[0] == Some(bob_id) {
        "bob"
    } else {
        "carol"
    };
    demo.say(&format!("  every node agrees: {winner} holds 40_export"));
    for (who, rx) in [("bob", &mut bob_events), ("carol", &mut carol_events)] {
        while let Ok(e) = rx.try_recv() {
            if let Event::ClaimLost { story, .. } = e {
                demo.say(&format!("  {who} is told it lost the race for {story}"));
            }
        }
    }

    demo.say("\n7. carol's node stops; alice and bob keep working; carol restarts and catches up");
    let carol_addr = carol.local_addr();
    let before = carol.with_node(|n| n.lamport());
    carol.shutdown().await?;
    demo.say(&format!("  carol  stopped (lamport clock {before})"));
    demo.event(
        &bob,
        "bob",
        "10_login",
        PipelineEvent::MergeSucceeded {
            commit: "4be0d17".into(),
        },
    )?;
    // Merged: bob gives the story up, so alice may accept it (a live claim of another node
    // refuses her pipeline events).
    bob.with_node(|n| n.execute(now(), Command::Release { id: id("10_login") }))?;
    converge(&[&alice, &bob], 10).await?;
    demo.event(&alice, "alice", "10_login", PipelineEvent::Accepted)?;
    let mut cfg = config("carol", vec![alice.url()]);
    cfg.listen = carol_addr;
    let carol = start(&carol_home, cfg).await?;
    let (held, lamport) = carol.with_node(|n| (n.version_vector().total(), n.lamport()));
    demo.say(&format!(
        "  carol  restarted from her store: {held} ops, lamport {lamport} (never reused)"
    ));
    let took = converge(&[&alice, &bob, &carol], 15).await?;
    let catch_up_ms = took.as_millis();
    demo.say(&format!("  carol  caught up in {catch_up_ms} ms"));

    demo.say("\n8. everything converged");
    let t = now();
    let stories = alice.with_node(|n| n.stories(None, t))?;
    if stories != bob.with_node(|n| n.stories(None, t))?
        || stories != carol.with_node(|n| n.stories(None, t))?
    {
        bail!("projections differ");
    }
    for s in &stories {
        demo.say(&format!("  {:<12} {}", s.id.as_str(), stage_painted(&s.stage)));
    }
    let counts = alice.with_node(|n| n.stage_counts())?;
    let total = alice.with_node(|n| n.version_vector().total());
    demo.say(&format!(
        "  {total} ops from 3 authors on every node; {} archived, {} in backlog",
        counts[&StageKind::Archived],
        counts[&StageKind::Backlog]
    ));
    for d in [&alice, &bob, &carol] {
        let report = d.with_node(|n| n.verify(|_| {}))?;
        if !report.ok {
            bail!("verify failed: {:?}", report.problems);
        }
    }
    let health = alice.health();
    let rejected = health.rejected.values().sum::<u64>();
    demo.say(&format!(
        "  every store verifies (hash chains, signatures, no forks); alice has {}, {} rejected",
        human::count(health.peers.len(), "peer"),
        human::count(usize::try_from(rejected).unwrap_or(usize::MAX), "op")
    ));
    let summary = serde_json::json!({
        "ok": true,
        "nodes": ["alice", "bob", "carol"],
        "ops": total,
        "stories": stories.iter().map(|s| serde_json::json!({
            "id": s.id.as_str(),
            "stage": crate::output::stage(&s.stage),
        })).collect::<Vec<_>>(),
        "claim_race_winner": winner,
        "first_convergence_ms": first_convergence_ms,
        "catch_up_ms": catch_up_ms,
        "verified": true,
        "rejected_ops": rejected,
    });
    for d in [alice, bob, carol] {
        d.shutdown().await?;
    }
    dir.close()?;
    let elapsed = started.elapsed().as_secs_f64();
    demo.say(&format!(
        "\ndaemons stopped, temporary homes removed ({elapsed:.1} s)."
    ));
    let mut summary = summary;
    summary["elapsed_s"] = serde_json::json!((elapsed * 10.0).round() / 10.0);
    Ok(DemoReport {
        summary,
        reader_gone: demo.reader_gone.get(),
    })
}
