//! Long-running check (ignored by default): a node living 30 days of simulated time as a
//! daemon would run it, each command its own durable flush — a heartbeat every 10 s, the
//! policies every 5 s, and story traffic (a story every 30 minutes taken through its
//! pipeline, archived by the retention policy) — and the store's bytes on disk checked
//! against the signed bytes of the ops it holds, every simulated day.
//!
//! Run it (about two minutes in a release build):
//!
//! ```sh
//! cargo test --release -p huskies-core --test soak -- --ignored --nocapture
//! ```

use std::path::Path;

use huskies_core::{
    policy_actions, Command, InitMode, Node, NodeConfig, PipelineEvent, PolicyConfig, PolicySchedule,
    StoryId, Timestamp, VersionVector,
};

const DAYS: u64 = 30;
const DAY_SECS: u64 = 24 * 3600;
/// A new story every this many seconds; its pipeline steps follow a minute apart.
const STORY_EVERY_SECS: u64 = 1800;
/// The bound the store must stay within, as a multiple of the ops' signed bytes.
const MAX_DISK_VS_OP_BYTES: f64 = 3.0;

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            match e.metadata() {
                Ok(m) if m.is_dir() => dir_size(&e.path()),
                Ok(m) => m.len(),
                // sled removes blob files in the background.
                Err(_) => 0,
            }
        })
        .sum()
}

/// The story command due `step` minutes after story `n` was added, if any.
fn story_step(n: u64, step: u64) -> Option<Command> {
    let id = StoryId::new(format!("{n}_soak_story")).unwrap();
    let event = |event| {
        Some(Command::Event {
            id: id.clone(),
            event,
        })
    };
    match step {
        0 => Some(
            Command::add_story(id.clone(), format!("Soak story {n}"))
                .body("Keeps the pipeline busy while the node heartbeats.")
                .into(),
        ),
        1 => event(PipelineEvent::DepsMet),
        2 => event(PipelineEvent::GatesStarted),
        3 => event(PipelineEvent::GatesPassed {
            branch: format!("feature/soak-{n}"),
            commits: std::num::NonZeroU32::new(2).unwrap(),
        }),
        4 => event(PipelineEvent::MergeSucceeded {
            commit: format!("{n:040x}"),
        }),
        _ => None,
    }
}

#[test]
#[ignore = "long-running: 30 simulated days, about two minutes in release"]
fn a_heartbeating_node_stays_bounded_for_30_days() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("node");
    let t0 = 1_763_700_000u64;
    let at = |secs: u64| Timestamp::from_millis(((t0 + secs) * 1000) as i64);
    let mut node = Node::init(
        &home,
        InitMode::NewCluster { name: "soak".into() },
        &mut huskies_core::rand_core::OsRng,
        at(0),
        NodeConfig::default(),
    )
    .unwrap();
    let policy = PolicyConfig::default();
    let mut schedule = PolicySchedule::new();
    let (mut heartbeats, mut story_cmds, mut policy_cmds) = (0u64, 0u64, 0u64);
    let started = std::time::Instant::now();
    // The daemon's ticker runs once a second; only seconds where something is due matter.
    for secs in 0..DAYS * DAY_SECS {
        let now = at(secs);
        if secs % 5 == 0 {
            let due = schedule.due(now, &policy);
            if due.heartbeat {
                node.execute(
                    now,
                    Command::Heartbeat {
                        label: "soak".into(),
                        address: Some("ws://10.0.0.5:3001/crdt-sync".into()),
                    },
                )
                .unwrap();
                heartbeats += 1;
            }
            if due.policies {
                for action in policy_actions(&node, now, &policy).unwrap() {
                    node.execute(now, action.command()).unwrap();
                    policy_cmds += 1;
                }
            }
        }
        if secs % 60 == 30 {
            let minute = secs / 60;
            let (n, step) = (minute / (STORY_EVERY_SECS / 60), minute % (STORY_EVERY_SECS / 60));
            if let Some(cmd) = story_step(n, step) {
                node.execute(now, cmd).unwrap();
                story_cmds += 1;
            }
        }
        if (secs + 1) % DAY_SECS == 0 {
            let day = (secs + 1) / DAY_SECS;
            let ops = node.ops_since(&VersionVector::default()).unwrap();
            let op_bytes: u64 = ops.iter().map(|o| o.bytes().len() as u64).sum();
            let disk = dir_size(&home.join("store"));
            let ratio = disk as f64 / op_bytes as f64;
            println!(
                "day {day:>2}: {} ops ({heartbeats} heartbeats, {story_cmds} story commands, \
                 {policy_cmds} policy commands), {op_bytes} op bytes, store {disk} bytes ({ratio:.3}x), \
                 {:.0} s elapsed",
                ops.len(),
                started.elapsed().as_secs_f64()
            );
            assert!(
                ratio <= MAX_DISK_VS_OP_BYTES,
                "day {day}: the store holds {disk} bytes for {op_bytes} op bytes ({ratio:.2}x)"
            );
        }
    }
    assert_eq!(heartbeats, DAYS * DAY_SECS / policy.heartbeat_secs);
    assert!(
        policy_cmds > 0,
        "the retention policy archived the merged stories"
    );
    drop(node);
    // Reopening keeps everything and does not grow the store past the bound.
    let node = Node::open(&home, NodeConfig::default()).unwrap();
    let ops = node.ops_since(&VersionVector::default()).unwrap();
    let op_bytes: u64 = ops.iter().map(|o| o.bytes().len() as u64).sum();
    let disk = dir_size(&home.join("store"));
    println!(
        "after reopen: {} ops, {op_bytes} op bytes, store {disk} bytes ({:.3}x)",
        ops.len(),
        disk as f64 / op_bytes as f64
    );
    assert!(disk as f64 <= MAX_DISK_VS_OP_BYTES * op_bytes as f64);
}
