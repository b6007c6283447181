//! A node in a new cluster, and a story moved along the pipeline.
//! Run: `cargo run -p huskies-core --example quick_start`.
use std::time::SystemTime;

use huskies_core::rand_core::OsRng; // rand_core 0.6, re-exported: no dependency of your own
use huskies_core::{Command, Error, InitMode, Node, NodeConfig, PipelineEvent, StoryId, Timestamp};

fn main() -> Result<(), Error> {
    // The core reads no clock: every call that needs the time is given `now`.
    let now = Timestamp::from_system_time(SystemTime::now());
    let home = std::env::temp_dir().join(format!("huskies-quick-start-{}", std::process::id()));
    let mut node = Node::init(
        &home,
        InitMode::NewCluster { name: "acme".into() },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;

    let id = StoryId::new("42_fix_login")?;
    node.execute(
        now,
        Command::add_story(id.clone(), "Fix login").body("Valid passwords are refused."),
    )?;
    node.execute(now, Command::event(id.clone(), PipelineEvent::DepsMet))?;
    node.execute(now, Command::claim(id.clone(), 900))?;
    node.execute(now, Command::event(id.clone(), PipelineEvent::GatesStarted))?;
    node.execute(
        now,
        Command::event(id.clone(), PipelineEvent::gates_passed("feature/42", 3)?),
    )?;

    let story = node.story(&id, now)?;
    println!(
        "{} ({}) is in {}",
        story.id,
        story.name,
        story.stage.kind().as_str()
    );

    // A refused command writes nothing; `kind()` is the stable name of the failure.
    if let Err(e) = node.execute(now, Command::event(id, PipelineEvent::DepsMet)) {
        println!("refused, {}: {e}", e.kind().as_str());
    }

    drop(node); // releases the home
    std::fs::remove_dir_all(&home).ok();
    Ok(())
}
