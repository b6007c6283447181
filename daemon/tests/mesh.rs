//! Real daemons on loopback: propagation along a line, restarts, claim races, partitions.

mod common;

use std::time::Duration;

use common::*;
use huskies_core::{Command, Event, StoryId};

fn story(id: &str) -> Command {
    Command::AddStory {
        id: StoryId::new(id).unwrap(),
        name: id.into(),
        body: None,
        depends_on: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_propagates_and_survives_a_restart_of_the_middle() {
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 3);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    let b_config = fast_config("b", vec![a.url()]);
    let b = start(&homes[1], b_config.clone()).await;
    let c = start(&homes[2], fast_config("c", vec![b.url()])).await;

    a.with_node(|n| n.execute(now(), story("1_from_a"))).unwrap();
    eventually(10, "C sees A's story through B", || {
        c.with_node(|n| n.story(&StoryId::new("1_from_a").unwrap(), now()).is_ok())
    })
    .await;

    // Kill B; write on both ends; restart B on the same home and address.
    let b_addr = b.local_addr();
    b.shutdown().await.unwrap();
    a.with_node(|n| n.execute(now(), story("2_from_a"))).unwrap();
    c.with_node(|n| n.execute(now(), story("3_from_c"))).unwrap();
    let mut config = b_config;
    config.listen = b_addr;
    let b = start(&homes[1], config).await;
    eventually(15, "all three converge after B restarts", || {
        let (va, vb, vc) = (vv(&a), vv(&b), vv(&c));
        va == vb && vb == vc && va.total() > 0
    })
    .await;
    for d in [&a, &b, &c] {
        let ids: Vec<String> = d
            .with_node(|n| n.stories(None, now()).unwrap())
            .iter()
            .map(|s| s.id.to_string())
            .collect();
        assert_eq!(ids, ["1_from_a", "2_from_a", "3_from_c"]);
    }
    for d in [a, b, c] {
        d.shutdown().await.unwrap();
    }
}

/// The `after_ingest` hook hears of every op admitted from a peer, once: the count it
/// is given adds up to the daemon's own `ops_applied`, which covers the stories sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingest_hook_hears_every_admitted_op_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    let heard = Arc::new(AtomicUsize::new(0));
    let mut b_config = fast_config("b", vec![a.url()]);
    let count = heard.clone();
    b_config.after_ingest = Some(huskies_daemon::IngestHook(Arc::new(move |n| {
        count.fetch_add(n, Ordering::SeqCst);
    })));
    let b = start(&homes[1], b_config).await;
    for i in 0..5 {
        a.with_node(|n| n.execute(now(), story(&format!("{i}_from_a"))))
            .unwrap();
    }
    eventually(10, "B holds A's five stories", || {
        b.with_node(|n| n.stories(None, now()).map(|s| s.len() == 5).unwrap_or(false))
    })
    .await;
    // Stop A so nothing more arrives; once B has handled what it had, the counts agree.
    a.shutdown().await.unwrap();
    eventually(5, "the hook and the daemon count the same ops", || {
        heard.load(Ordering::SeqCst) as u64 == b.health().ops_applied
    })
    .await;
    let heard = heard.load(Ordering::SeqCst);
    b.shutdown().await.unwrap();
    assert!(
        heard >= 5,
        "the hook heard of {heard} ops, fewer than the five stories"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_end_with_one_holder_and_the_loser_told() {
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 3);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    let b = start(&homes[1], fast_config("b", vec![a.url()])).await;
    a.with_node(|n| n.execute(now(), story("9_race"))).unwrap();
    eventually(10, "B has the story", || {
        b.with_node(|n| n.story(&StoryId::new("9_race").unwrap(), now()).is_ok())
    })
    .await;
    // Partition: stop B, claim on both sides, heal.
    let b_addr = b.local_addr();
    b.shutdown().await.unwrap();
    let c = start(&homes[2], fast_config("c", vec![])).await;
    // C was never connected: it has not seen the story. Give it A's ops first.
    let bundle = a.with_node(|n| n.export_since(&c.with_node(|m| m.version_vector())).unwrap());
    let report = c.with_node(|n| n.ingest_bundle(&bundle)).unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    let id = StoryId::new("9_race").unwrap();
    a.with_node(|n| {
        n.execute(
            now(),
            Command::Claim {
                id: id.clone(),
                ttl_secs: 600,
            },
        )
    })
    .unwrap();
    c.with_node(|n| {
        n.execute(
            now(),
            Command::Claim {
                id: id.clone(),
                ttl_secs: 600,
            },
        )
    })
    .unwrap();
    let mut a_events = a.subscribe_events();
    let mut c_events = c.subscribe_events();
    let mut config = fast_config("b", vec![a.url(), c.url()]);
    config.listen = b_addr;
    let b = start(&homes[1], config).await;
    eventually(15, "claims converge", || {
        let holders: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|d| d.with_node(|n| n.story(&id, now()).unwrap().claim.map(|l| l.node)))
            .collect();
        holders.iter().all(|h| h.is_some() && *h == holders[0])
    })
    .await;
    let holder = a.with_node(|n| n.story(&id, now()).unwrap().claim.unwrap().node);
    let (loser_events, loser_id) = if holder == a.with_node(|n| n.node_id()) {
        (&mut c_events, c.with_node(|n| n.node_id()))
    } else {
        (&mut a_events, a.with_node(|n| n.node_id()))
    };
    assert_ne!(holder, loser_id);
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match loser_events.recv().await {
                Ok(Event::ClaimLost { story, winner }) => return (story, winner),
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the loser is told");
    assert_eq!(told.0, id);
    assert_eq!(told.1, Some(holder));
    for d in [a, b, c] {
        d.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_after_a_partition_sends_only_missing_ops() {
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    let b_config = fast_config("b", vec![a.url()]);
    let b = start(&homes[1], b_config.clone()).await;
    for i in 0..200 {
        a.with_node(|n| n.execute(now(), story(&format!("s{i}"))))
            .unwrap();
    }
    eventually(10, "B caught up", || vv(&a) == vv(&b)).await;
    let b_addr = b.local_addr();
    b.shutdown().await.unwrap();
    // Only A writes while B is away (heartbeats of A included).
    for i in 200..210 {
        a.with_node(|n| n.execute(now(), story(&format!("s{i}"))))
            .unwrap();
    }
    let (sent_before, bytes_before) = (a.health().ops_sent, a.health().op_bytes_sent);
    let (missing_before, missing_bytes) = {
        let held_by_b = huskies_core::Node::open(&homes[1], Default::default())
            .unwrap()
            .version_vector();
        let missing = a.with_node(|n| n.ops_since(&held_by_b)).unwrap();
        (
            missing.len() as u64,
            missing.iter().map(|o| o.bytes().len() as u64).sum::<u64>(),
        )
    };
    let mut config = b_config;
    config.listen = b_addr;
    let b = start(&homes[1], config).await;
    eventually(10, "B caught up again", || {
        vv(&a).dominates(&vv(&b)) && vv(&b).dominates(&vv(&a))
    })
    .await;
    // Close the connection so its counters are folded into the metrics.
    b.shutdown().await.unwrap();
    eventually(5, "A saw the disconnect", || a.health().peers.is_empty()).await;
    let sent = a.health().ops_sent - sent_before;
    let sent_bytes = a.health().op_bytes_sent - bytes_before;
    eprintln!("partition catch-up: {missing_before} ops / {missing_bytes} bytes missing, {sent} ops / {sent_bytes} bytes sent");
    // Everything B lacked, plus whatever A wrote meanwhile (heartbeats): never the prefix.
    assert!(sent >= missing_before, "sent {sent}, missing {missing_before}");
    assert!(
        sent < missing_before + 20,
        "sent {sent} ops for {missing_before} missing: a prefix was re-sent"
    );
    assert!(
        sent_bytes >= missing_bytes,
        "sent {sent_bytes} bytes, missing {missing_bytes}"
    );
    assert!(
        sent_bytes < missing_bytes + 20 * 400,
        "sent {sent_bytes} bytes for {missing_bytes} missing: a prefix was re-sent"
    );
    a.shutdown().await.unwrap();
}

/// Copies a closed directory tree, in this process. Not by spawning `cp`: a child forked
/// while another test of this binary holds a home inherits that home's lock until it
/// execs, and that test's next open of the home then fails as locked (seen once under
/// load, session 10: `a_line_propagates_and_survives_a_restart_of_the_middle`).
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A node whose store lost ops it had acknowledged (its `store/` replaced by an older copy;
/// sled's recovery from a damaged log leaves the same) starts its daemon refusing to write.
/// Its peer sends the ops back over the real sync protocol; the node then writes again with
/// the next sequence number and no replica sees a fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_own_ops_gets_them_back_from_a_peer_and_writes_again() {
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let old_store = dir.path().join("b_store_old");
    copy_tree(&homes[1].join("store"), &old_store);

    let a = start(&homes[0], fast_config("a", vec![])).await;
    let mut b_config = fast_config("b", vec![a.url()]);
    b_config.heartbeat_secs = 3600; // one heartbeat at start, then only what the test writes
    let b = start(&homes[1], b_config.clone()).await;
    let b_id = b.with_node(|n| n.node_id());
    b.with_node(|n| n.execute(now(), story("1_from_b"))).unwrap();
    b.with_node(|n| n.execute(now(), story("2_from_b"))).unwrap();
    // B's heartbeat at start is its own op too (written by its policy task at any moment):
    // wait until A holds B's whole chain, heartbeat and stories.
    eventually(10, "A holds all of B's ops", || {
        let held = vv(&b).get(&b_id);
        held >= 3 && vv(&a).get(&b_id) == held
    })
    .await;
    let acknowledged = vv(&b).get(&b_id);
    b.shutdown().await.unwrap();
    std::fs::remove_dir_all(homes[1].join("store")).unwrap();
    copy_tree(&old_store, &homes[1].join("store"));

    let b = start(&homes[1], b_config).await;
    let refused = b.with_node(|n| n.execute(now(), story("refused")));
    if let Some((held, marked)) = b.with_node(|n| n.own_ops_missing()) {
        // Not yet given back: the write was refused and the gap is the one expected.
        assert!(held < acknowledged && marked == acknowledged, "{held} / {marked}");
        let err = refused.expect_err("a node missing its own ops writes nothing");
        assert_eq!(err.kind(), huskies_core::ErrorKind::Corrupt);
    }
    eventually(15, "B has its own ops back", || {
        b.with_node(|n| n.own_ops_missing().is_none())
    })
    .await;
    let receipt = b.with_node(|n| n.execute(now(), story("3_from_b"))).unwrap();
    let before_b = vv(&b).get(&b_id);
    assert_eq!(receipt.seq, before_b, "the receipt is B's newest op");
    assert!(
        receipt.seq > acknowledged,
        "B's chain goes on after the acknowledged head"
    );
    eventually(10, "A and B converge", || vv(&a) == vv(&b)).await;
    assert!(a.with_node(|n| n.forks().unwrap()).is_empty(), "no fork");
    assert!(b.with_node(|n| n.quarantined_authors()).is_empty());
    for d in [a, b] {
        d.shutdown().await.unwrap();
    }
}
