//! Two nodes of one cluster converging without a network: each sends the other the ops it
//! lacks as a bundle (what `huskies export` / `import` move between machines).
//! Run: `cargo run -p huskies-core --example two_nodes_bundles`.
use std::time::SystemTime;

use huskies_core::rand_core::OsRng;
use huskies_core::{Command, Error, InitMode, Node, NodeConfig, PipelineEvent, Role, StoryId, Timestamp};

/// Sends `to` what it lacks from `from`, and says what happened.
fn send(from: &Node, to: &mut Node) -> Result<(), Error> {
    let bundle = from.export_since(&to.version_vector())?;
    let report = to.ingest_bundle(&bundle)?;
    // Refused ops do not make the call fail: they are listed in the report.
    for r in &report.rejected {
        eprintln!("refused op: {}", r.reason);
    }
    println!(
        "{} bytes from {} to {}: {} applied, {} already held",
        bundle.len(),
        from.node_id(),
        to.node_id(),
        report.applied,
        report.duplicates
    );
    Ok(())
}

fn main() -> Result<(), Error> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let dir = std::env::temp_dir().join(format!("huskies-two-nodes-{}", std::process::id()));
    let mut a = Node::init(
        &dir.join("a"),
        InitMode::NewCluster { name: "acme".into() },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;
    let mut b = Node::init(
        &dir.join("b"),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;
    a.execute(now, Command::add_member(b.node_id(), Role::Member))?;

    let id = StoryId::new("7_search")?;
    a.execute(now, Command::add_story(id.clone(), "Search"))?;
    send(&a, &mut b)?;
    b.execute(now, Command::event(id.clone(), PipelineEvent::DepsMet))?;
    send(&b, &mut a)?;

    let (sa, sb) = (a.story(&id, now)?, b.story(&id, now)?);
    println!(
        "a sees {}, b sees {}",
        sa.stage.kind().as_str(),
        sb.stage.kind().as_str()
    );
    assert_eq!(a.version_vector(), b.version_vector());

    drop((a, b));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
