//! Deterministic simulation of the sync protocol: real nodes and real sans-IO sessions
//! on a simulated network with delay, loss, duplication, reordering, partitions and
//! restarts, under a random workload; at the end every replica must be identical.
//!
//! Each case prints `sim seed = N` before it runs; replay one with
//! `HUSKIES_SIM_SEED=N cargo test -p huskies-core --test sim`.

mod sim_support;

use huskies_core::sync::SessionConfig;
use huskies_core::{Command, PipelineEvent, StoryId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sim_support::{run_scenario, seeds, Faults, Scenario, Sim};

/// A lossy, duplicating, reordering network with partitions and node restarts.
#[test]
fn sim_faulty_network_converges() {
    for seed in seeds(&[1, 2, 3, 4]) {
        let stats = run_scenario(seed, &Scenario::chaos());
        assert!(stats.commands_ok > 100, "the workload did little: {stats:?}");
    }
}

/// Scenarios drawn from the seed: node count, fault rates, resets, partitions, restarts,
/// stalls, late joiners, a removal, topology, clock skew and session limits all vary.
/// (Seed 242 removes a member whose later ops sat in a peer's out-of-order buffer.)
#[test]
fn sim_drawn_scenarios_converge() {
    for seed in seeds(&[21, 22, 23, 24, 25, 26, 242]) {
        let scenario = Scenario::drawn(seed);
        eprintln!("{scenario:?}");
        run_scenario(seed, &scenario);
    }
}

/// A clean (TCP-like) network with partitions and restarts: besides converging, no
/// session may fail except by refusing a node whose admission it has not seen yet, and no
/// op may be refused.
#[test]
fn sim_clean_network_converges_without_session_failures() {
    for seed in seeds(&[11, 12, 13]) {
        let stats = run_scenario(seed, &Scenario::clean());
        // The only refusals: nodes that have not learnt of an admission yet.
        assert!(stats.failures.keys().all(|r| *r == "not_member"), "{stats:?}");
    }
}

fn add_story(sim: &mut Sim, node: usize) -> StoryId {
    let id = sim.new_story_id();
    sim.execute(
        node,
        Command::AddStory {
            id: id.clone(),
            name: format!("story {id}"),
            body: None,
            depends_on: vec![],
        },
    );
    id
}

/// `k` new ops on `node`: stories, transitions and heartbeats.
fn write_ops(sim: &mut Sim, rng: &mut ChaCha8Rng, node: usize, k: usize) {
    let mut mine: Vec<StoryId> = Vec::new();
    for _ in 0..k {
        match rng.gen_range(0..3) {
            0 if !mine.is_empty() => {
                let id = mine.remove(rng.gen_range(0..mine.len()));
                sim.execute(
                    node,
                    Command::Event {
                        id,
                        event: PipelineEvent::DepsMet,
                    },
                );
            }
            1 => sim.execute(
                node,
                Command::Heartbeat {
                    label: format!("node-{node}"),
                    address: None,
                },
            ),
            _ => mine.push(add_story(sim, node)),
        }
        sim.run_for(rng.gen_range(0..200));
    }
}

/// Ops carried in `Ops` frames sent by `from` since recording started.
fn carried(sim: &Sim, from: usize) -> usize {
    sim.recorded
        .iter()
        .filter(|f| f.from == from)
        .map(|f| f.ops)
        .sum()
}

/// After a partition heals (or a peer restarts), the reconnected sessions exchange
/// exactly the ops the other side lacks: no prefix is ever sent again.
#[test]
fn sim_quiet_reconnection_sends_only_the_missing_ops() {
    for seed in seeds(&[7, 8, 9]) {
        eprintln!("sim seed = {seed}");
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
        let scenario = Scenario {
            nodes: 2,
            commands: 0,
            workload_ms: 0,
            faults: Faults::clean(),
            partitions: 0,
            restarts: 0,
            freezes: 0,
            late_joiners: 0,
            removals: 0,
            extra_links_pct: 100,
            clock_skew_ms: 1_000,
            // Small frames and window: the catch-up spans several frames and acks.
            session: Some(SessionConfig {
                target_frame_bytes: 400,
                max_unacked_bytes: 1_500,
                ..SessionConfig::default()
            }),
        };
        let mut sim = Sim::new(seed, &scenario);
        // A shared history, in sync.
        write_ops(&mut sim, &mut rng, 0, 20);
        write_ops(&mut sim, &mut rng, 1, 20);
        sim.settle();
        sim.assert_converged();

        // Partition; k ops on one side, j on the other; heal.
        sim.cut(0, 1);
        sim.run_for(5_000);
        let k = rng.gen_range(1..60);
        let j = if rng.gen_bool(0.5) {
            0
        } else {
            rng.gen_range(1..10)
        };
        write_ops(&mut sim, &mut rng, 0, k);
        write_ops(&mut sim, &mut rng, 1, j);
        sim.run_for(3_000);
        sim.record_ops = true;
        sim.heal(0, 1);
        sim.settle();
        sim.assert_converged();
        assert_eq!(
            (carried(&sim, 0), carried(&sim, 1)),
            (k, j),
            "sim seed {seed}: ops carried after healing: {:?}",
            sim.recorded
        );

        // A restart: node 1 goes down, node 0 writes, node 1 comes back.
        sim.recorded.clear();
        let graceful = rng.gen_bool(0.5);
        sim.crash(1, graceful);
        let k = rng.gen_range(1..40);
        write_ops(&mut sim, &mut rng, 0, k);
        sim.start(1);
        sim.settle();
        sim.assert_converged();
        assert_eq!(
            (carried(&sim, 0), carried(&sim, 1)),
            (k, 0),
            "sim seed {seed}: ops carried after a restart: {:?}",
            sim.recorded
        );
    }
}

/// The simulator restarts nodes in-process: a home must reopen at once after its `Node`
/// is dropped (sled releases its file lock from a background thread a moment later).
#[test]
fn sim_a_home_reopens_at_once_after_a_restart() {
    use huskies_core::{InitMode, Node, NodeConfig, Timestamp};
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let now = Timestamp::from_millis(sim_support::BASE_MS);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let config = || NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    };
    let mut node = Node::init(
        &home,
        InitMode::NewCluster { name: "c".into() },
        &mut rng,
        now,
        config(),
    )
    .expect("init");
    for i in 0..300 {
        node.execute(
            now,
            Command::AddStory {
                id: StoryId::new(format!("{i}_story")).expect("id"),
                name: "story".into(),
                body: Some("x".repeat(2_000)),
                depends_on: vec![],
            },
        )
        .expect("add story");
        drop(node);
        node = Node::open(&home, config()).unwrap_or_else(|e| panic!("reopen #{i}: {e}"));
    }
}

/// Found by the simulator (a removal under a lossy network): out-of-order ops of an author
/// buffered before its removal was learnt, two or more past its cutoff, can never count;
/// they must not wait in the buffer forever.
#[test]
fn buffered_ops_past_a_learnt_cutoff_are_dropped() {
    use huskies_core::{InitMode, Node, NodeConfig, Role, Timestamp, UnverifiedOp, VersionVector};
    let dir = tempfile::tempdir().expect("temp dir");
    let now = Timestamp::from_millis(sim_support::BASE_MS);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let config = || NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    };
    let mut a = Node::init(
        &dir.path().join("a"),
        InitMode::NewCluster { name: "c".into() },
        &mut rng,
        now,
        config(),
    )
    .expect("init a");
    let join = |name: &str, a: &mut Node, rng: &mut ChaCha8Rng| {
        let n = Node::init(
            &dir.path().join(name),
            InitMode::Join {
                cluster: a.cluster_id(),
            },
            rng,
            now,
            config(),
        )
        .expect("init");
        a.execute(
            now,
            Command::AddMember {
                node: n.node_id(),
                role: Role::Member,
            },
        )
        .expect("add member");
        n
    };
    let mut b = join("b", &mut a, &mut rng);
    let mut c = join("c", &mut a, &mut rng);
    for n in [&mut b, &mut c] {
        let report = n
            .ingest_bundle(&a.export_since(&n.version_vector()).expect("export"))
            .expect("ingest");
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    }
    for i in 0..5 {
        b.execute(
            now,
            Command::Heartbeat {
                label: format!("b{i}"),
                address: None,
            },
        )
        .expect("heartbeat");
    }
    let b_ops = |seqs: &[u64]| -> Vec<UnverifiedOp> {
        b.ops_since(&VersionVector::default())
            .expect("ops")
            .into_iter()
            .filter(|o| o.content().author == b.node_id() && seqs.contains(&o.content().seq))
            .map(|o| o.into_unverified())
            .collect()
    };
    // The admin holds b's first op only when it removes b: b's cutoff is 1.
    let _report = a.ingest(b_ops(&[1])).expect("ingest");
    a.execute(now, Command::RemoveMember { node: b.node_id() })
        .expect("remove b");
    // c got b's ops 1, 3, 4 and 5 (2 is late): 3 to 5 wait for it.
    let _report = c.ingest(b_ops(&[1, 3, 4, 5])).expect("ingest");
    assert_eq!(c.buffered_ops(), 3);
    // Then c learns of the removal: 2 is void, so 3 to 5 can never count.
    let _report = c
        .ingest_bundle(&a.export_since(&c.version_vector()).expect("export"))
        .expect("ingest");
    assert_eq!(c.version_vector(), a.version_vector());
    assert_eq!(
        c.buffered_ops(),
        0,
        "ops past the cutoff still wait for a void predecessor"
    );
}
