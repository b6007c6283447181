//! Joining a cluster from Rust: the new node is initialised with the cluster's id
//! (`InitMode::Join`), an admin admits it (`Command::add_member`), and once the admission
//! reaches it (here by a bundle; with daemons, by sync) it can write.
//!
//! Over a network the CLI does the same with a one-time ticket: `huskies ticket create` on
//! the admin's home, `huskies init --join <ticket>` on the new one (`Node::create_ticket`,
//! and the daemon's `join_cluster` redeeming it).
//! Run: `cargo run -p huskies-core --example join_cluster`.
use std::time::SystemTime;

use huskies_core::rand_core::OsRng;
use huskies_core::{Command, Error, InitMode, Node, NodeConfig, Role, StoryId, Timestamp};

fn main() -> Result<(), Error> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let dir = std::env::temp_dir().join(format!("huskies-join-{}", std::process::id()));
    let mut admin = Node::init(
        &dir.join("admin"),
        InitMode::NewCluster { name: "acme".into() },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;

    // 1. The new node knows only the cluster id.
    let mut worker = Node::init(
        &dir.join("worker"),
        InitMode::Join {
            cluster: admin.cluster_id(),
        },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;
    let id = StoryId::new("1_first")?;
    let refused = worker.execute(now, Command::add_story(id.clone(), "First"));
    match refused {
        Err(e) => println!(
            "before admission the worker is refused, {}: {e}",
            e.kind().as_str()
        ),
        Ok(_) => return Err(Error::InvalidArgument("an unadmitted node wrote".into())),
    }

    // 2. An admin admits it.
    admin.execute(now, Command::add_member(worker.node_id(), Role::Member))?;

    // 3. The admission reaches the worker; now it writes.
    let report = worker.ingest_bundle(&admin.export_since(&worker.version_vector())?)?;
    println!("the worker received {} ops", report.applied);
    worker.execute(now, Command::add_story(id.clone(), "First"))?;
    let members: Vec<String> = worker
        .members()
        .iter()
        .map(|m| format!("{} ({})", m.node, m.role.as_str()))
        .collect();
    println!("members as the worker sees them: {}", members.join(", "));

    drop((admin, worker));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
