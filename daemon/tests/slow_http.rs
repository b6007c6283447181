//! A client that opens a TCP connection and never finishes its HTTP request is cut after the
//! handshake timeout instead of holding a connection forever.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_http_request_is_cut_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let homes = cluster_homes(dir.path(), 2);
    let a = start(&homes[0], fast_config("a", vec![])).await;
    let b = start(&homes[1], fast_config("b", vec![a.url()])).await;
    let mut slow = tokio::net::TcpStream::connect(a.local_addr()).await.unwrap();
    slow.write_all(b"GET /crdt-sync HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 1024];
    // The server answers (408) or just closes; either way the read ends, then EOF.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match slow.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the unfinished request was still open after 10 s");
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(1000), "cut too early ({took:?})");
    eventually(5, "the timeout is counted", || {
        a.health().disconnects.get("http_timeout").copied() == Some(1)
    })
    .await;
    // Meanwhile the real peer still syncs.
    a.with_node(|n| {
        n.execute(
            now(),
            huskies_core::Command::AddStory {
                id: huskies_core::StoryId::new("1_after").unwrap(),
                name: "x".into(),
                body: None,
                depends_on: vec![],
            },
        )
    })
    .unwrap();
    eventually(10, "b still syncs", || {
        b.with_node(|n| {
            n.story(&huskies_core::StoryId::new("1_after").unwrap(), now())
                .is_ok()
        })
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
