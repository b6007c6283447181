//! Subscribing to events: every committed transition, local or arriving from a peer.
//! Keep the `Subscription` for as long as events should arrive: dropping it unsubscribes
//! (a statement `node.subscribe(..);` would drop it at once; the compiler warns).
//! Run: `cargo run -p huskies-core --example subscribe`.
use std::sync::mpsc;
use std::time::SystemTime;

use huskies_core::rand_core::OsRng;
use huskies_core::{Command, Error, Event, InitMode, Node, NodeConfig, PipelineEvent, StoryId, Timestamp};

fn main() -> Result<(), Error> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let home = std::env::temp_dir().join(format!("huskies-subscribe-{}", std::process::id()));
    let mut node = Node::init(
        &home,
        InitMode::NewCluster { name: "acme".into() },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;

    // Callbacks run on the thread that commits; hand the events to another one if the work
    // is slow.
    let (tx, rx) = mpsc::channel::<Event>();
    let subscription = node.subscribe(move |event| {
        // A send fails only once the receiver is gone: then nobody wants the events.
        tx.send(event.clone()).ok();
    });

    let id = StoryId::new("3_docs")?;
    node.execute(now, Command::add_story(id.clone(), "Docs"))?;
    node.execute(now, Command::event(id.clone(), PipelineEvent::DepsMet))?;
    node.execute(now, Command::event(id.clone(), PipelineEvent::GatesStarted))?;

    subscription.cancel(); // or drop it
    node.execute(now, Command::event(id, PipelineEvent::gates_failed("lint")))?; // not heard

    for event in rx.try_iter() {
        match event {
            Event::Transition(t) => println!(
                "{}: {} -> {} ({})",
                t.story,
                t.before.map_or("-", |s| s.kind().as_str()),
                t.after.kind().as_str(),
                t.event.unwrap_or("replay")
            ),
            Event::ClaimLost { story, winner } => println!("lost the claim on {story} to {winner:?}"),
        }
    }

    drop(node);
    std::fs::remove_dir_all(&home).ok();
    Ok(())
}
