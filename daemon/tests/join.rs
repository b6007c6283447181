//! Joining with a ticket is driven like every other session: when the issuer stops
//! answering, the session's timers end the join with a clear error long before the join's
//! overall timeout.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fast_config, now, start};
use futures_util::StreamExt;
use huskies_core::sync::{SessionConfig, Ticket};
use huskies_core::{InitMode, Node, NodeConfig};
use huskies_daemon::{join_cluster_with, DaemonError, JoinOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// Far longer than any of the session's timers: a join that ends by it has hung.
const OVERALL: Duration = Duration::from_secs(60);

/// Short session timers: a silent issuer is noticed within about two seconds.
fn options() -> JoinOptions {
    JoinOptions {
        timeout: OVERALL,
        session: SessionConfig {
            handshake_timeout_ms: 1500,
            ack_timeout_ms: 1000,
            keepalive_ms: 300,
            silence_timeout_ms: 3000,
            ..SessionConfig::default()
        },
        write_timeout: Duration::from_secs(2),
    }
}

fn new_cluster(home: &std::path::Path) -> Node {
    Node::init(
        home,
        InitMode::NewCluster { name: "t".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap()
}

fn joiner(home: &std::path::Path, ticket: &Ticket) -> Node {
    Node::init(
        home,
        InitMode::Join {
            cluster: ticket.cluster,
        },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap()
}

/// Runs the join and returns its error message, checking that it failed on its own
/// timers, well before [`OVERALL`].
async fn join_fails(node: &mut Node, ticket: &Ticket, progress: impl FnMut(u64, u64)) -> String {
    let started = Instant::now();
    let r = join_cluster_with(node, ticket, "joiner", &options(), progress).await;
    let took = started.elapsed();
    let msg = match r {
        Err(e @ DaemonError::Network(_)) => e.to_string(),
        other => panic!("the join did not fail as a network error: {other:?}"),
    };
    assert!(
        took < Duration::from_secs(10),
        "the join took {took:?} to fail: {msg}"
    );
    assert!(!msg.contains("timed out"), "ended by the overall timeout: {msg}");
    assert!(msg.contains(&ticket.address), "the error names the issuer: {msg}");
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_against_a_peer_that_never_answers_fails_on_the_handshake_timer() {
    let dir = tempfile::tempdir().unwrap();
    // A WebSocket server that accepts, reads everything and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mute = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while ws.next().await.is_some() {}
    });
    let mut issuer = new_cluster(&dir.path().join("issuer"));
    let ticket = issuer
        .create_ticket(
            now(),
            600,
            format!("ws://{addr}/crdt-sync"),
            &mut rand_core::OsRng,
        )
        .unwrap();
    let mut node = joiner(&dir.path().join("joiner"), &ticket);
    let msg = join_fails(&mut node, &ticket, |_, _| {}).await;
    assert!(msg.contains("handshake did not complete in time"), "{msg}");
    mute.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_issuer_stops_answering_midway_fails_on_the_session_timers() {
    let dir = tempfile::tempdir().unwrap();
    let issuer_home = dir.path().join("issuer");
    drop(new_cluster(&issuer_home));
    let issuer = start(&issuer_home, fast_config("issuer", vec![])).await;
    // The joiner reaches the issuer through a proxy that stops forwarding (both ways,
    // keeping the connection open) once the joiner has been admitted.
    let frozen = Arc::new(AtomicBool::new(false));
    let (proxy, proxy_task) = freezing_proxy(issuer.local_addr(), frozen.clone()).await;
    let ticket = issuer
        .with_node(|n| {
            n.create_ticket(
                now(),
                600,
                format!("ws://{proxy}/crdt-sync"),
                &mut rand_core::OsRng,
            )
        })
        .unwrap();
    let mut node = joiner(&dir.path().join("joiner"), &ticket);
    let freeze = {
        let frozen = frozen.clone();
        move |_, _| frozen.store(true, Ordering::SeqCst)
    };
    let msg = join_fails(&mut node, &ticket, freeze).await;
    assert!(
        frozen.load(Ordering::SeqCst),
        "the join never got as far as admission: {msg}"
    );
    assert!(
        msg.contains("peer went silent") || msg.contains("peer does not read"),
        "not a session timer: {msg}"
    );
    proxy_task.abort();
    issuer.shutdown().await.unwrap();
}

/// A TCP proxy to `upstream` for one connection; once `frozen` is set it forwards nothing
/// more in either direction but keeps both sockets open (a peer that stopped answering).
async fn freezing_proxy(
    upstream: SocketAddr,
    frozen: Arc<AtomicBool>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = TcpStream::connect(upstream).await.unwrap();
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(
            pump(client_read, server_write, frozen.clone()),
            pump(server_read, client_write, frozen)
        );
    });
    (addr, task)
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(Ordering::SeqCst) {
            // Hold both halves open and forward nothing, until the task is aborted.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
