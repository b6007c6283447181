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
    c.with_node(|n| n.ingest_bundle(&bundle)).unwrap();
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
