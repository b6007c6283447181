//! `huskies demo`: a small local cluster in temporary homes that shows the pipeline,
//! replication between nodes, a claim race, and a node restarting and catching up.
//!
//! Nodes here exchange signed ops as bundles (the same bytes the sync protocol carries);
//! everything is a real sled store in a temporary directory removed at the end.

use std::num::NonZeroU32;
use std::path::Path;

use anyhow::{Context, Result};
use huskies_core::{
    Command, Event, InitMode, Node, NodeConfig, PipelineEvent, Role, StageKind, StoryId, Timestamp,
};

use crate::output::stage_line;

struct Demo {
    quiet: bool,
    clock: Timestamp,
}

impl Demo {
    fn say(&self, text: &str) {
        if !self.quiet {
            println!("{text}");
        }
    }

    fn now(&mut self) -> Timestamp {
        // Simulated time: every step is a second later, so leases and heartbeats behave
        // the same on every machine.
        self.clock = self.clock.add_secs(1);
        self.clock
    }
}

fn id(s: &str) -> StoryId {
    StoryId::new(s).expect("demo ids are valid")
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("non-zero")
}

/// Sends each side the ops the other lacks; returns (ops a→b, ops b→a).
fn sync(a: &mut Node, b: &mut Node) -> Result<(usize, usize)> {
    let to_b = a.export_since(&b.version_vector())?;
    let rb = b.ingest_bundle(&to_b)?;
    let to_a = b.export_since(&a.version_vector())?;
    let ra = a.ingest_bundle(&to_a)?;
    anyhow::ensure!(
        rb.rejected.is_empty() && ra.rejected.is_empty(),
        "sync rejected ops: {:?} {:?}",
        rb.rejected,
        ra.rejected
    );
    Ok((rb.applied, ra.applied))
}

fn event(demo: &mut Demo, node: &mut Node, who: &str, story: &str, e: PipelineEvent) -> Result<()> {
    let t = demo.now();
    let name = e.name();
    node.execute(
        t,
        Command::Event {
            id: id(story),
            event: e,
        },
    )?;
    let s = node.story(&id(story), t)?;
    demo.say(&format!(
        "  {who:<6} {story:<12} {name:<18} -> {}",
        stage_line(&s.stage)
    ));
    Ok(())
}

fn init_node(dir: &Path, name: &str, mode: InitMode, demo: &mut Demo) -> Result<Node> {
    let t = demo.now();
    let founder = matches!(mode, InitMode::NewCluster { .. });
    let mut node = Node::init(
        &dir.join(name),
        mode,
        &mut rand_core::OsRng,
        t,
        NodeConfig::default(),
    )
    .with_context(|| format!("creating {name}'s home"))?;
    if founder {
        node.execute(
            t,
            Command::Heartbeat {
                label: name.into(),
                address: None,
            },
        )?;
    }
    Ok(node)
}

/// Runs the demo; prints a readable account on stdout.
pub fn run(quiet: bool) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("huskies-demo-").tempdir()?;
    let mut demo = Demo {
        quiet,
        clock: Timestamp::from_datetime(chrono::Utc::now()),
    };
    demo.say("huskies demo: three nodes, each with its own sled store in a temporary home\n");

    demo.say("1. alice starts a cluster; bob and carol are admitted by the admin");
    let mut alice = init_node(
        dir.path(),
        "alice",
        InitMode::NewCluster { name: "demo".into() },
        &mut demo,
    )?;
    let cluster = alice.cluster_id();
    let mut bob = init_node(dir.path(), "bob", InitMode::Join { cluster }, &mut demo)?;
    let mut carol = init_node(dir.path(), "carol", InitMode::Join { cluster }, &mut demo)?;
    for (node, who) in [(bob.node_id(), "bob"), (carol.node_id(), "carol")] {
        let t = demo.now();
        alice.execute(
            t,
            Command::AddMember {
                node,
                role: Role::Member,
            },
        )?;
        demo.say(&format!("  alice  admits {who} ({})", node.short()));
    }
    demo.say(&format!("  cluster {}", cluster.short()));
    for (node, who) in [(&mut bob, "bob"), (&mut carol, "carol")] {
        let (n, _) = sync(&mut alice, node)?;
        let t = demo.now();
        node.execute(
            t,
            Command::Heartbeat {
                label: who.into(),
                address: None,
            },
        )?;
        demo.say(&format!(
            "  {who:<6} receives the cluster's {n} ops and announces itself"
        ));
    }

    demo.say("\n2. alice writes the backlog; the ops replicate to bob and carol");
    for (sid, name) in [
        ("10_login", "Fix login"),
        ("20_search", "Search"),
        ("30_billing", "Billing"),
        ("40_export", "CSV export"),
    ] {
        let t = demo.now();
        alice.execute(
            t,
            Command::AddStory {
                id: id(sid),
                name: name.into(),
                body: None,
                depends_on: vec![],
            },
        )?;
    }
    let (n, _) = sync(&mut alice, &mut bob)?;
    demo.say(&format!("  sync alice -> bob: {n} ops"));
    let (n, _) = sync(&mut alice, &mut carol)?;
    demo.say(&format!("  sync alice -> carol: {n} ops"));

    demo.say("\n3. bob claims 10_login and works it; QA fails once, then passes");
    let t = demo.now();
    bob.execute(
        t,
        Command::Claim {
            id: id("10_login"),
            ttl_secs: 600,
        },
    )?;
    event(&mut demo, &mut bob, "bob", "10_login", PipelineEvent::DepsMet)?;
    event(
        &mut demo,
        &mut bob,
        "bob",
        "10_login",
        PipelineEvent::GatesStarted,
    )?;
    event(
        &mut demo,
        &mut bob,
        "bob",
        "10_login",
        PipelineEvent::GatesFailed {
            reason: "2 tests failed".into(),
        },
    )?;
    event(
        &mut demo,
        &mut bob,
        "bob",
        "10_login",
        PipelineEvent::GatesStarted,
    )?;
    event(
        &mut demo,
        &mut bob,
        "bob",
        "10_login",
        PipelineEvent::GatesPassed {
            branch: "feature/10".into(),
            commits: nz(3),
        },
    )?;
    let t = demo.now();
    match bob.execute(
        t,
        Command::Event {
            id: id("10_login"),
            event: PipelineEvent::Accepted,
        },
    ) {
        Err(e) => demo.say(&format!("  bob    10_login     accepted           refused: {e}")),
        Ok(_) => anyhow::bail!("an invalid transition was accepted"),
    }

    demo.say("\n4. carol takes 20_search: the merge conflicts, the retry merges");
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::DepsMet,
    )?;
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::QaSkipped {
            branch: "feature/20".into(),
            commits: nz(1),
        },
    )?;
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::MergeConflict {
            kind: "conflict".into(),
            reason: "src/search.rs".into(),
        },
    )?;
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::GatesPassed {
            branch: "feature/20".into(),
            commits: nz(2),
        },
    )?;
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::MergeSucceeded {
            commit: "9f1c2ab".into(),
        },
    )?;
    event(
        &mut demo,
        &mut carol,
        "carol",
        "20_search",
        PipelineEvent::Accepted,
    )?;

    demo.say("\n5. alice blocks 30_billing, then unblocks it");
    event(
        &mut demo,
        &mut alice,
        "alice",
        "30_billing",
        PipelineEvent::Block {
            reason: "waiting on legal".into(),
        },
    )?;
    event(
        &mut demo,
        &mut alice,
        "alice",
        "30_billing",
        PipelineEvent::Unblock,
    )?;

    demo.say("\n6. a claim race: bob and carol claim 40_export before they hear of each other");
    let lost = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lost_bob = lost.clone();
    let _sub_bob = bob.subscribe(move |e| {
        if let Event::ClaimLost { story, .. } = e {
            lost_bob.lock().expect("lock").push(format!("bob lost {story}"));
        }
    });
    let lost_carol = lost.clone();
    let _sub_carol = carol.subscribe(move |e| {
        if let Event::ClaimLost { story, .. } = e {
            lost_carol
                .lock()
                .expect("lock")
                .push(format!("carol lost {story}"));
        }
    });
    let t = demo.now();
    bob.execute(
        t,
        Command::Claim {
            id: id("40_export"),
            ttl_secs: 600,
        },
    )?;
    carol.execute(
        t,
        Command::Claim {
            id: id("40_export"),
            ttl_secs: 600,
        },
    )?;
    demo.say("  bob    claims 40_export\n  carol  claims 40_export");
    sync(&mut bob, &mut carol)?;
    let t = demo.now();
    let holder_b = bob.story(&id("40_export"), t)?.claim.map(|c| c.node);
    let holder_c = carol.story(&id("40_export"), t)?.claim.map(|c| c.node);
    anyhow::ensure!(
        holder_b == holder_c && holder_b.is_some(),
        "claim race did not converge"
    );
    let winner = if holder_b == Some(bob.node_id()) {
        "bob"
    } else {
        "carol"
    };
    demo.say(&format!("  after sync both agree: {winner} holds 40_export"));
    for line in lost.lock().expect("lock").iter() {
        demo.say(&format!("  told: {line}"));
    }

    demo.say("\n7. carol stops; alice and bob keep working; carol restarts and catches up");
    let carol_home = carol.home().to_path_buf();
    let before = carol.lamport();
    drop(_sub_carol);
    drop(carol);
    demo.say(&format!("  carol  stopped (lamport {before})"));
    sync(&mut alice, &mut bob)?;
    event(
        &mut demo,
        &mut bob,
        "bob",
        "10_login",
        PipelineEvent::MergeSucceeded {
            commit: "4be0d17".into(),
        },
    )?;
    sync(&mut bob, &mut alice)?;
    event(
        &mut demo,
        &mut alice,
        "alice",
        "10_login",
        PipelineEvent::Accepted,
    )?;
    sync(&mut alice, &mut bob)?;
    let mut carol = Node::open(&carol_home, NodeConfig::default())?;
    demo.say(&format!(
        "  carol  restarted from her store: lamport {} (never reused), {} ops held",
        carol.lamport(),
        carol.version_vector().total()
    ));
    let (to_carol, from_carol) = sync(&mut alice, &mut carol)?;
    demo.say(&format!(
        "  sync alice <-> carol: {to_carol} missing ops to carol, {from_carol} to alice"
    ));
    sync(&mut bob, &mut carol)?;
    sync(&mut alice, &mut bob)?;

    demo.say("\n8. everything converged");
    let t = demo.now();
    let vv = alice.version_vector();
    anyhow::ensure!(
        vv == bob.version_vector() && vv == carol.version_vector(),
        "version vectors differ"
    );
    let stories = alice.stories(None, t)?;
    anyhow::ensure!(
        stories == bob.stories(None, t)? && stories == carol.stories(None, t)?,
        "projections differ"
    );
    for s in &stories {
        demo.say(&format!("  {:<12} {}", s.id.as_str(), stage_line(&s.stage)));
    }
    let counts = alice.stage_counts()?;
    demo.say(&format!(
        "  {} ops from 3 authors on every node; {} archived, {} in backlog",
        vv.total(),
        counts[&StageKind::Archived],
        counts[&StageKind::Backlog]
    ));
    for node in [&alice, &bob, &carol] {
        let report = node.verify(|_| {})?;
        anyhow::ensure!(report.ok, "verify failed: {:?}", report.problems);
    }
    demo.say("  every store verifies: hash chains, signatures, no forks");
    drop((alice, bob, carol));
    dir.close()?;
    demo.say("\ntemporary homes removed.");
    Ok(())
}
