//! A home used by one short process per command (the CLI without a daemon) keeps a store
//! bounded by its data: sled 0.34 leaves the log segments of such sessions behind, and the
//! store is compacted at open once it has grown past its policy (`storage/compact.rs`).

mod common;

use common::*;
use huskies_core::{CompactionOutcome, CompactionPolicy, Node, NodeConfig, StageKind};

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_size(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

#[test]
fn one_command_per_session_keeps_the_store_bounded() {
    const SESSIONS: u64 = 300;
    let policy = CompactionPolicy {
        min_bytes: 1 << 20,
        factor: 2,
    };
    let config = NodeConfig {
        compaction: policy,
        ..config()
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let mut rng = TestRng::new(7);
    drop(new_cluster(&home, &mut rng, at(0)));
    let store = home.join("store");
    let (mut compactions, mut largest, mut after_last) = (0, 0u64, 0u64);
    for i in 0..SESSIONS {
        let mut node = Node::open(&home, config.clone()).expect("open");
        match node.store_compaction() {
            CompactionOutcome::Compacted { before, after } => {
                assert!(
                    after < before,
                    "session {i}: compacted from {before} to {after} bytes"
                );
                compactions += 1;
                after_last = *after;
            }
            CompactionOutcome::Failed { reason } => panic!("session {i}: compaction failed: {reason}"),
            CompactionOutcome::Kept { .. } => {}
        }
        add_story(&mut node, at(i + 1), &format!("s{i}"));
        drop(node);
        largest = largest.max(dir_size(&store));
    }
    let node = Node::open(&home, config).expect("open");
    let size = dir_size(&store);
    println!(
        "{SESSIONS} sessions: {compactions} compactions, store {size} bytes at the end, {largest} at most, \
         {after_last} after the last compaction"
    );
    assert!(compactions >= 1, "a store of {largest} bytes was never compacted");
    // Between compactions a store grows to the policy's limit and one session beyond it.
    let limit = policy.min_bytes.max(policy.factor * after_last);
    assert!(size <= limit + (256 << 10), "store {size} bytes, limit {limit}");
    assert_eq!(
        node.stories(Some(StageKind::Backlog), at(SESSIONS + 1))
            .unwrap()
            .len(),
        SESSIONS as usize
    );
    let report = node.verify(|_| {}).expect("verify");
    assert!(report.ok, "{:?}", report.problems);
}
