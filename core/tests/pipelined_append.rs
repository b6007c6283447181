//! `Node::execute_groups` (signing pipelined against the writer) and parallel signing in
//! `execute_group`: the same outcomes, ids and stored bytes as one `execute_group` after
//! another on one thread; a refused command stays in its group; a store failure in group k
//! keeps the groups before it; nothing of a group is readable before its flush.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{test_seed, TestRng};
use huskies_core::{
    decode_bundle, Command, Event, ExecutionEvent, FailingStore, GroupResult, InitMode, MemoryStore, Node,
    NodeConfig, OpId, PipelineEvent, StoreContents, StoryField, StoryId, Timestamp, VersionVector,
};

const START: i64 = 1_763_700_000_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(START + ms)
}

fn sid(s: &str) -> StoryId {
    StoryId::new(s).unwrap()
}

fn config(sign_threads: usize) -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        sign_threads,
        ..NodeConfig::default()
    }
}

/// A new cluster on `store`; the same `seed` gives the same key and genesis op.
fn node_on<S: huskies_core::Store>(home: &Path, store: S, seed: u64, sign_threads: usize) -> Node<S> {
    Node::init_with_backend(
        home,
        store,
        InitMode::NewCluster { name: "pipe".into() },
        &mut TestRng::new(seed),
        at(0),
        config(sign_threads),
    )
    .unwrap()
}

/// A random command on a pool of 24 stories: many are refused (unknown stories, ids in
/// use, transitions the stage does not allow), which must be refused alike on both paths.
fn random_command(rng: &mut TestRng) -> Command {
    let id = sid(&format!("s{}", rng.below(24)));
    match rng.below(14) {
        0 | 1 => Command::AddStory {
            id,
            name: format!("story {}", rng.below(1000)),
            body: rng.chance(50).then(|| "a body".to_string()),
            depends_on: if rng.chance(20) {
                vec![sid(&format!("s{}", rng.below(24)))]
            } else {
                vec![]
            },
        },
        2 => Command::Claim { id, ttl_secs: 600 },
        3 => Command::Release { id },
        4 => Command::Event {
            id,
            event: PipelineEvent::DepsMet,
        },
        5 => Command::Event {
            id,
            event: PipelineEvent::GatesStarted,
        },
        6 => Command::Event {
            id,
            event: PipelineEvent::Accepted,
        },
        7 => Command::Event {
            id,
            event: PipelineEvent::Block {
                reason: if rng.chance(20) {
                    " ".into()
                } else {
                    "waiting".into()
                },
            },
        },
        8 => Command::Heartbeat {
            label: "builder".into(),
            address: None,
        },
        9 => Command::UpdateStory {
            id,
            field: StoryField::Name(format!("renamed {}", rng.below(100))),
        },
        10 => Command::DeleteStory { id },
        11 => Command::Execution {
            id,
            event: ExecutionEvent::SpawnRequested {
                agent: "coder".into(),
            },
        },
        12 => Command::Execution {
            id,
            event: ExecutionEvent::SpawnedSuccessfully,
        },
        _ => Command::AcquireMergeLock { ttl_secs: 60 },
    }
}

/// Groups of 0 to 199 random commands (empty groups and groups of refusals included; the
/// larger ones pass `PARALLEL_SIGN_MIN`), each with its own later `now`.
fn random_groups(rng: &mut TestRng, count: usize) -> Vec<(Timestamp, Vec<Command>)> {
    (0..count)
        .map(|g| {
            let len = match rng.below(6) {
                0 => 0,
                1 => rng.below(4),
                _ => rng.below(200),
            };
            let now = at(1_000 * (g as i64 + 1));
            (now, (0..len).map(|_| random_command(rng)).collect())
        })
        .collect()
}

/// An outcome in comparable form: receipts, and refusals as kind and message.
type Plain = Result<Vec<Result<(OpId, u64, u64), (String, String)>>, String>;

fn plain(outcome: &GroupResult) -> Plain {
    match outcome {
        Err(e) => Err(e.to_string()),
        Ok(results) => Ok(results
            .iter()
            .map(|r| match r {
                Ok(r) => Ok((r.op_id, r.seq, r.lamport)),
                Err(e) => Err((e.kind().as_str().to_string(), e.to_string())),
            })
            .collect()),
    }
}

/// Records every event a node publishes.
fn record_events<S: huskies_core::Store>(
    node: &Node<S>,
) -> (huskies_core::Subscription, Arc<Mutex<Vec<Event>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let sub = node.subscribe(move |e| sink.lock().unwrap().push(e.clone()));
    (sub, seen)
}

/// Everything a node holds, in comparable form: after folding the journal, the whole
/// store; and every op's signed bytes as sync reads them.
fn held(node: &mut Node<MemoryStore>, store: &MemoryStore) -> (StoreContents, Vec<Vec<u8>>) {
    node.flush().unwrap();
    let ops = node
        .ops_for_sync(&VersionVector::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|o| o.bytes)
        .collect();
    (store.durable_contents(), ops)
}

#[test]
fn pipelined_groups_give_the_results_and_bytes_of_sequential_ones() {
    let seed = test_seed();
    let mut rng = TestRng::new(seed);
    let mut stored_in_all = 0;
    for case in 0..6 {
        let key_seed = rng.below(1 << 30) as u64;
        let count = 3 + rng.below(8);
        let groups = random_groups(&mut rng, count);
        let (seq_threads, pipe_threads) = (1 + rng.below(3), 1 + rng.below(3));
        let context = format!("seed {seed}, case {case}: sign threads {seq_threads} / {pipe_threads}");

        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (store_a, store_b) = (MemoryStore::new(), MemoryStore::new());
        let mut a = node_on(dir_a.path(), store_a.clone(), key_seed, seq_threads);
        let mut b = node_on(dir_b.path(), store_b.clone(), key_seed, pipe_threads);
        let (_sub_a, events_a) = record_events(&a);
        let (_sub_b, events_b) = record_events(&b);

        let sequential: Vec<Plain> = groups
            .iter()
            .map(|(now, cmds)| plain(&a.execute_group(*now, cmds.clone())))
            .collect();
        let pipelined: Vec<Plain> = b.execute_groups(groups.clone()).iter().map(plain).collect();
        assert_eq!(pipelined, sequential, "{context}: outcomes");
        let stored = sequential
            .iter()
            .flat_map(|g| g.as_ref().unwrap().iter().filter(|r| r.is_ok()))
            .count();
        // A case may happen to store nothing (every command refused); not every one can.
        stored_in_all += stored;

        assert_eq!(b.version_vector(), a.version_vector(), "{context}");
        assert_eq!(b.lamport(), a.lamport(), "{context}");
        assert_eq!(
            *events_b.lock().unwrap(),
            *events_a.lock().unwrap(),
            "{context}: events"
        );
        let (contents_a, ops_a) = held(&mut a, &store_a);
        let (contents_b, ops_b) = held(&mut b, &store_b);
        assert_eq!(ops_b, ops_a, "{context}: signed ops");
        assert!(contents_b == contents_a, "{context}: the stores differ");

        // Both go on alike (the pipeline left the node's state and record cache right).
        let more = random_groups(&mut rng, 2);
        for (now, cmds) in more {
            let ra = plain(&a.execute_group(now, cmds.clone()));
            let rb = plain(&b.execute_group(now, cmds));
            assert_eq!(rb, ra, "{context}: a group after the pipeline");
        }
        assert!(
            held(&mut b, &store_b) == held(&mut a, &store_a),
            "{context}: after more groups"
        );
    }
    assert!(stored_in_all > 0, "seed {seed}: the groups store something");
}

#[test]
fn parallel_signing_in_one_group_gives_the_same_bytes() {
    let groups: Vec<(Timestamp, Vec<Command>)> = (0..2)
        .map(|g| {
            let cmds = (0..300)
                .map(|i| Command::AddStory {
                    id: sid(&format!("p{g}-{i}")),
                    name: format!("story {i}"),
                    body: None,
                    depends_on: vec![],
                })
                .collect();
            (at(g + 1), cmds)
        })
        .collect();
    let mut held_by = Vec::new();
    for threads in [1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let store = MemoryStore::new();
        let mut node = node_on(dir.path(), store.clone(), 7, threads);
        for (now, cmds) in &groups {
            for r in node.execute_group(*now, cmds.clone()).unwrap() {
                r.unwrap();
            }
        }
        held_by.push((threads, held(&mut node, &store)));
    }
    let (_, first) = &held_by[0];
    assert_eq!(first.1.len(), 601);
    for (threads, h) in &held_by[1..] {
        assert!(h == first, "{threads} signing threads stored other bytes");
    }
}

/// Group `g` of the fixed workload: a marker story moved to `deps_met` (its event tells a
/// subscriber which group was stored), and 70 more stories.
fn marked_group(g: usize) -> (Timestamp, Vec<Command>) {
    let marker = sid(&format!("m{g}"));
    let mut cmds = vec![
        Command::AddStory {
            id: marker.clone(),
            name: "marker".into(),
            body: None,
            depends_on: vec![],
        },
        Command::Event {
            id: marker,
            event: PipelineEvent::DepsMet,
        },
    ];
    cmds.extend((0..70).map(|i| Command::AddStory {
        id: sid(&format!("g{g}-{i}")),
        name: format!("story {i}"),
        body: None,
        depends_on: vec![],
    }));
    (at(g as i64 + 1), cmds)
}

/// The group whose marker an event is about.
fn marker_group(e: &Event) -> Option<usize> {
    match e {
        Event::Transition(t) => t.story.as_str().strip_prefix('m')?.parse().ok(),
        Event::ClaimLost { .. } => None,
    }
}

#[test]
fn an_invalid_command_is_refused_in_its_own_group_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = node_on(dir.path(), MemoryStore::new(), 11, 2);
    let mut groups: Vec<_> = (0..4).map(marked_group).collect();
    // Group 2: accepting a story that is in the backlog is not a transition the table allows.
    groups[2].1.insert(
        5,
        Command::Event {
            id: sid("g2-0"),
            event: PipelineEvent::Accepted,
        },
    );
    let outcomes = node.execute_groups(groups);
    assert_eq!(outcomes.len(), 4);
    for (g, outcome) in outcomes.iter().enumerate() {
        let results = outcome
            .as_ref()
            .unwrap_or_else(|e| panic!("group {g} failed: {e}"));
        for (i, r) in results.iter().enumerate() {
            if (g, i) == (2, 5) {
                let e = r.as_ref().unwrap_err();
                assert_eq!(e.kind().as_str(), "invalid_transition", "{e}");
            } else {
                r.as_ref()
                    .unwrap_or_else(|e| panic!("group {g} command {i} refused: {e}"));
            }
        }
    }
    // Genesis + 4 groups of 72 commands, one refused.
    assert_eq!(node.version_vector().get(&node.node_id()), 1 + 4 * 72);
    assert_eq!(
        node.story(&sid("g2-0"), at(10)).unwrap().stage.kind().as_str(),
        "backlog"
    );
    assert_eq!(
        node.story(&sid("m3"), at(10)).unwrap().stage.kind().as_str(),
        "coding"
    );
}

#[test]
fn a_store_failure_ends_the_pipeline_at_its_group_and_keeps_the_groups_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let inner = MemoryStore::new();
    let store = FailingStore::new(inner.clone());
    let mut node = node_on(dir.path(), store.clone(), 13, 1);
    // From the moment group 1 is stored (its events are published), every store operation
    // fails: group 2, built and signed meanwhile, cannot be written.
    let arm = store.clone();
    let _sub = node.subscribe(move |e| {
        if marker_group(e) == Some(1) {
            arm.plan().fail_at(0, true);
        }
    });
    let pulled = Arc::new(AtomicUsize::new(0));
    let counter = pulled.clone();
    let groups = (0..6).map(marked_group).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let outcomes = node.execute_groups(groups);
    store.plan().reset();
    assert_eq!(
        outcomes.len(),
        3,
        "groups 0 and 1 stored, group 2 failed, nothing after"
    );
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
    let err = outcomes[2].as_ref().unwrap_err();
    assert_eq!(err.kind().as_str(), "io", "{err}");
    assert!(
        pulled.load(Ordering::SeqCst) <= 4,
        "at most one group is built past the failed one"
    );
    let stored: Vec<OpId> = outcomes[..2]
        .iter()
        .flat_map(|o| o.as_ref().unwrap().iter().map(|r| r.as_ref().unwrap().op_id))
        .collect();
    let me = node.node_id();
    assert_eq!(node.version_vector().get(&me), 1 + stored.len() as u64);
    let synced: Vec<OpId> = node
        .ops_for_sync(&VersionVector::default(), usize::MAX)
        .unwrap()
        .iter()
        .map(|o| huskies_core::UnverifiedOp::decode(&o.bytes).unwrap().id())
        .collect();
    assert_eq!(&synced[1..], &stored[..], "sync reads exactly the stored groups");

    // What a crash now would leave holds the same.
    let after_crash = inner.after_crash();
    drop(node);
    let reopened = Node::open_with_backend(dir.path(), after_crash, config(1)).unwrap();
    assert_eq!(reopened.version_vector().get(&me), 1 + stored.len() as u64);
    drop(reopened);

    // The node goes on from where the stored groups left it: group 2 again, seqs unbroken.
    let mut node = Node::open_with_backend(dir.path(), store.clone(), config(1)).unwrap();
    let retry = node.execute_groups([marked_group(2)]);
    let first = retry[0].as_ref().unwrap()[0].as_ref().unwrap();
    assert_eq!(first.seq, 2 + stored.len() as u64);
}

/// At a group's events: the group, the store's durable and applied contents, and how many
/// groups the pipeline had taken from its iterator.
type Snapshot = (usize, StoreContents, StoreContents, usize);

#[test]
fn nothing_of_a_group_is_readable_before_its_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let mut node = node_on(dir.path(), store.clone(), 17, 1);
    let groups_total = 5;
    let pulled = Arc::new(AtomicUsize::new(0));
    // At each group's events (right after its flush): what the store holds, durable and
    // applied, and how many groups the pipeline had built by then.
    let snapshots: Arc<Mutex<Vec<Snapshot>>> = Arc::default();
    let (snap, seen, pulled_now) = (store.clone(), snapshots.clone(), pulled.clone());
    let _sub = node.subscribe(move |e| {
        if let Some(g) = marker_group(e) {
            seen.lock().unwrap().push((
                g,
                snap.durable_contents(),
                snap.contents(),
                pulled_now.load(Ordering::SeqCst),
            ));
        }
    });
    let counter = pulled.clone();
    let groups = (0..groups_total).map(marked_group).inspect(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let outcomes = node.execute_groups(groups);
    let receipts: Vec<Vec<OpId>> = outcomes
        .iter()
        .map(|o| {
            o.as_ref()
                .unwrap()
                .iter()
                .map(|r| r.as_ref().unwrap().op_id)
                .collect()
        })
        .collect();
    drop(node);

    let snapshots = std::mem::take(&mut *snapshots.lock().unwrap());
    assert_eq!(snapshots.len(), groups_total);
    for (g, durable, applied, pulled) in snapshots {
        assert!(
            durable == applied,
            "group {g}: nothing applied beyond the last flush"
        );
        if g + 1 < groups_total {
            assert!(
                pulled >= g + 2,
                "group {g}: the next group was built while this one was written ({pulled} built)"
            );
        }
        // A node on exactly what the store held then (its home's mark says more was
        // acknowledged later; reads work all the same).
        let then =
            Node::open_with_backend(dir.path(), MemoryStore::from_contents(durable), config(1)).unwrap();
        let expected: Vec<OpId> = receipts[..=g].iter().flatten().copied().collect();
        let synced: Vec<OpId> = then
            .ops_for_sync(&VersionVector::default(), usize::MAX)
            .unwrap()
            .iter()
            .map(|o| huskies_core::UnverifiedOp::decode(&o.bytes).unwrap().id())
            .collect();
        assert_eq!(
            &synced[1..],
            &expected[..],
            "group {g}: sync reads groups 0..={g} only"
        );
        let exported: Vec<OpId> = decode_bundle(&then.export_since(&VersionVector::default()).unwrap())
            .unwrap()
            .into_iter()
            .map(|o| o.unwrap().id())
            .collect();
        assert_eq!(
            &exported[1..],
            &expected[..],
            "group {g}: export holds groups 0..={g} only"
        );
    }
}
