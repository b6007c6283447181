//! Joining a cluster with a ticket: one session to the issuing admin, which admits us and
//! sends the cluster's ops.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use huskies_core::sync::{Session, SessionConfig, SessionEvent, SessionOptions, Ticket};
use huskies_core::{Command, Node, Timestamp};
use rand_core::RngCore;

use crate::peer::{split_client, Incoming};
use crate::DaemonError;

/// What joining did.
#[derive(Clone, Debug)]
pub struct JoinOutcome {
    /// Ops received.
    pub ops: u64,
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// Redeems `ticket` for `node` (a home created with `InitMode::Join`): connects to the
/// issuer, is admitted, receives every op, then publishes this node's presence with
/// `label` and waits until the issuer has it. `progress(held, total)` is called as ops
/// arrive.
pub async fn join_cluster(
    node: &mut Node,
    ticket: &Ticket,
    label: &str,
    timeout: Duration,
    progress: impl FnMut(u64, u64),
) -> Result<JoinOutcome, DaemonError> {
    tokio::time::timeout(timeout, join_inner(node, ticket, label, progress))
        .await
        .map_err(|_| DaemonError::Network(format!("joining via {} timed out", ticket.address)))?
}

async fn join_inner(
    node: &mut Node,
    ticket: &Ticket,
    label: &str,
    mut progress: impl FnMut(u64, u64),
) -> Result<JoinOutcome, DaemonError> {
    let (ws, _) = tokio_tungstenite::connect_async(ticket.address.as_str())
        .await
        .map_err(|e| DaemonError::Network(format!("cannot reach {}: {e}", ticket.address)))?;
    let (mut sink, mut stream) = split_client(ws);
    let mut challenge = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut challenge);
    let options = SessionOptions {
        ticket: Some(ticket.secret),
        expect_peer: Some(ticket.issuer),
    };
    let mut session = Session::new(node, now(), challenge, options, SessionConfig::default());
    let mut target = None;
    let mut announced = None;
    loop {
        while let Some(frame) = session
            .poll_transmit(node, now())
            .map_err(|e| DaemonError::Network(e.to_string()))?
        {
            sink.send(frame).await.map_err(|e| DaemonError::Network(e.0))?;
        }
        if let (Some(seq), true) = (announced, session.is_established()) {
            // Done once the issuer acknowledged our presence op.
            if session.unacked_bytes() == 0 && session.peer_version().get(&node.node_id()) >= seq {
                let _ = sink.close().await;
                return Ok(JoinOutcome {
                    ops: node.version_vector().total(),
                });
            }
        }
        let frame = match stream.next().await {
            Some(Incoming::Frame(f)) => f,
            Some(Incoming::Error(_, e)) => return Err(DaemonError::Network(e)),
            None => return Err(DaemonError::Network("the issuer closed the connection".into())),
        };
        // Frames already received are merged in one ingest (one flush) during catch-up.
        let mut frames = vec![frame];
        while frames.len() < 8 {
            match stream.next().now_or_never() {
                Some(Some(Incoming::Frame(f))) => frames.push(f),
                Some(Some(Incoming::Error(_, e))) => return Err(DaemonError::Network(e)),
                Some(None) => return Err(DaemonError::Network("the issuer closed the connection".into())),
                None => break,
            }
        }
        session
            .handle_frames(node, now(), &frames)
            .map_err(|e| DaemonError::Network(e.to_string()))?;
        for ev in session.take_events() {
            if let SessionEvent::Established { .. } = ev {
                target = Some(session.peer_version().clone());
            }
        }
        if let Some(t) = &target {
            progress(node.version_vector().total(), t.total());
        }
        if let (Some(t), None) = (&target, announced) {
            if node.version_vector().dominates(t) {
                let r = node.execute(
                    now(),
                    Command::Heartbeat {
                        label: label.to_string(),
                        address: None,
                    },
                )?;
                announced = Some(r.seq);
            }
        }
    }
}

/// Creates a home at `root` for the cluster of `ticket` (`huskies-ticket-v1:...`) and
/// redeems the ticket with its issuing daemon, within `timeout`. On failure nothing is left
/// behind at `root` if it did not exist before. For hosts without an async runtime of their
/// own (the bindings); runs a small runtime for the join.
pub fn join_home(
    root: &std::path::Path,
    ticket: &str,
    label: &str,
    timeout: Duration,
) -> Result<Node, DaemonError> {
    let ticket: Ticket = ticket.parse()?;
    let existed = root.exists();
    let mut node = Node::init(
        root,
        huskies_core::InitMode::Join {
            cluster: ticket.cluster,
        },
        &mut rand_core::OsRng,
        now(),
        huskies_core::NodeConfig::default(),
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Network(format!("cannot start a runtime to join: {e}")))?;
    match runtime.block_on(join_cluster(&mut node, &ticket, label, timeout, |_, _| {})) {
        Ok(_) => Ok(node),
        Err(e) => {
            drop(node);
            if !existed {
                let _ = std::fs::remove_dir_all(root);
            }
            Err(e)
        }
    }
}
