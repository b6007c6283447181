//! Joining a cluster with a ticket: one session to the issuing admin, which admits us and
//! sends the cluster's ops. The session is driven like every other one: its timers
//! (handshake, acknowledgement, keepalive, silence) run, so an issuer that stops answering
//! ends the join with the session's error instead of a hang.

use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use huskies_core::sync::{Session, SessionConfig, SessionEvent, SessionOptions, SyncError, Ticket};
use huskies_core::{Command, Node, Timestamp};
use rand_core::RngCore;

use crate::peer::{split_client, until, FrameSink, Incoming};
use crate::DaemonError;

/// What joining did.
#[derive(Clone, Debug)]
pub struct JoinOutcome {
    /// Ops received.
    pub ops: u64,
}

/// How a join is bounded.
#[derive(Clone, Debug)]
pub struct JoinOptions {
    /// The whole join gives up after this long, however lively the issuer.
    pub timeout: Duration,
    /// The session's limits and timers (default: [`SessionConfig::default`], as for peers).
    pub session: SessionConfig,
    /// A frame write that takes longer than this means the issuer does not read (default
    /// 20 s, as [`crate::DaemonConfig::write_timeout_ms`]).
    pub write_timeout: Duration,
}

impl JoinOptions {
    /// The defaults, with the whole join bounded by `timeout`.
    pub fn new(timeout: Duration) -> JoinOptions {
        JoinOptions {
            timeout,
            session: SessionConfig::default(),
            write_timeout: Duration::from_millis(crate::DaemonConfig::default().write_timeout_ms),
        }
    }
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// Redeems `ticket` for `node` (a home created with `InitMode::Join`): connects to the
/// issuer, is admitted, receives every op, then publishes this node's presence with
/// `label` and waits until the issuer has it. `progress(held, total)` is called as ops
/// arrive. [`join_cluster_with`] with [`JoinOptions::new`]`(timeout)`.
pub async fn join_cluster(
    node: &mut Node,
    ticket: &Ticket,
    label: &str,
    timeout: Duration,
    progress: impl FnMut(u64, u64),
) -> Result<JoinOutcome, DaemonError> {
    join_cluster_with(node, ticket, label, &JoinOptions::new(timeout), progress).await
}

/// [`join_cluster`] with explicit session timers and write timeout. Fails with a
/// [`DaemonError::Network`] naming the issuer's address and what went wrong: unreachable,
/// closed, refused, a session timer that ran out (e.g. "peer went silent"), or the whole
/// `options.timeout`.
pub async fn join_cluster_with(
    node: &mut Node,
    ticket: &Ticket,
    label: &str,
    options: &JoinOptions,
    progress: impl FnMut(u64, u64),
) -> Result<JoinOutcome, DaemonError> {
    tokio::time::timeout(
        options.timeout,
        join_inner(node, ticket, label, options, progress),
    )
    .await
    .map_err(|_| DaemonError::Network(format!("joining via {} timed out", ticket.address)))?
}

async fn join_inner(
    node: &mut Node,
    ticket: &Ticket,
    label: &str,
    options: &JoinOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<JoinOutcome, DaemonError> {
    let (ws, _) = tokio_tungstenite::connect_async(ticket.address.as_str())
        .await
        .map_err(|e| DaemonError::Network(format!("cannot reach {}: {e}", ticket.address)))?;
    let (mut sink, mut stream) = split_client(ws);
    let mut challenge = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut challenge);
    let session_options = SessionOptions {
        ticket: Some(ticket.secret),
        expect_peer: Some(ticket.issuer),
    };
    let mut session = Session::new(node, now(), challenge, session_options, options.session.clone());
    let session_failed = |e: SyncError| {
        if crate::peer::is_wrong_cluster(&e) {
            DaemonError::Network(format!(
                "the daemon at {} is not in the ticket's cluster {} ({e}): the node that issued the \
                 ticket no longer listens there (another cluster's daemon does); ask an admin of \
                 the cluster for a ticket from its running daemon",
                ticket.address,
                ticket.cluster.short()
            ))
        } else {
            DaemonError::Network(format!("joining via {}: {e}", ticket.address))
        }
    };
    let mut target = None;
    let mut announced = None;
    loop {
        send_all(&mut session, node, &mut sink, options.write_timeout).await?;
        if let (Some(seq), true) = (announced, session.is_established()) {
            // Done once the issuer acknowledged our presence op.
            if session.unacked_bytes() == 0 && session.peer_version().get(&node.node_id()) >= seq {
                let _ = sink.close().await;
                return Ok(JoinOutcome {
                    ops: node.version_vector().total(),
                });
            }
        }
        let wait = until(session.poll_timeout(), now());
        let frame = tokio::select! {
            item = stream.next() => match item {
                Some(Incoming::Frame(f)) => f,
                Some(Incoming::Error(_, e)) => return Err(DaemonError::Network(e)),
                None => return Err(DaemonError::Network("the issuer closed the connection".into())),
            },
            _ = tokio::time::sleep(wait) => {
                if let Err(e) = session.handle_timeout(now()) {
                    // The session queued a `Refuse` saying why: the issuer gets it if it
                    // still reads.
                    let _ = send_all(&mut session, node, &mut sink, options.write_timeout).await;
                    return Err(session_failed(e));
                }
                continue;
            }
        };
        // Frames already received are merged in one ingest (one flush), up to
        // `MERGE_FRAME_BYTES`: a catch-up's full frames go one at a time. A failure behind
        // them is reported after them: the frames before a close often say why (a `Refuse`).
        let mut bytes = frame.len();
        let mut frames = vec![frame];
        let mut ended = None;
        while crate::peer::merge_more(bytes) {
            match stream.next().now_or_never() {
                Some(Some(Incoming::Frame(f))) => {
                    bytes += f.len();
                    frames.push(f);
                }
                Some(Some(Incoming::Error(_, e))) => {
                    ended = Some(e);
                    break;
                }
                Some(None) => {
                    ended = Some("the issuer closed the connection".into());
                    break;
                }
                None => break,
            }
        }
        session
            .handle_frames(node, now(), &frames)
            .map_err(session_failed)?;
        if let Some(e) = ended {
            return Err(DaemonError::Network(e));
        }
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
                    Command::Announce {
                        label: label.to_string(),
                        address: None,
                    },
                )?;
                announced = Some(r.seq);
            }
        }
    }
}

/// Sends every frame the session has to send now, each within `write_timeout`.
async fn send_all(
    session: &mut Session,
    node: &mut Node,
    sink: &mut FrameSink,
    write_timeout: Duration,
) -> Result<(), DaemonError> {
    while let Some(frame) = session
        .poll_transmit(node, now())
        .map_err(|e| DaemonError::Network(e.to_string()))?
    {
        match tokio::time::timeout(write_timeout, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(DaemonError::Network(e.0)),
            Err(_) => {
                return Err(DaemonError::Network(
                    "frame write timed out: the issuer does not read".into(),
                ))
            }
        }
    }
    Ok(())
}

/// What [`join_home`] made: the new member's node (its home created and locked) and what
/// the join did.
#[derive(Debug)]
pub struct JoinedHome {
    /// The node, a member of the ticket's cluster.
    pub node: Node,
    /// What joining did.
    pub outcome: JoinOutcome,
}

/// Creates a home at `root` for the cluster of `ticket` and redeems the ticket with its
/// issuing daemon, bounded by `options`; `progress(held, total)` is called as ops arrive.
/// On failure nothing is left behind at `root` if it did not exist before. For hosts
/// without an async runtime of their own (the CLI's `init --join`, the bindings); runs a
/// small runtime for the join.
///
/// Errors keep their kinds: creating the home fails with the core's error
/// ([`DaemonError::Core`]: `already_exists`, `io`, ...), everything about reaching and
/// redeeming with the issuer is [`DaemonError::Network`], saying why.
pub fn join_home(
    root: &std::path::Path,
    ticket: &Ticket,
    label: &str,
    options: &JoinOptions,
    progress: impl FnMut(u64, u64),
) -> Result<JoinedHome, DaemonError> {
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
    let joined = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DaemonError::Network(format!("cannot start a runtime to join: {e}")))
        .and_then(|runtime| runtime.block_on(join_cluster_with(&mut node, ticket, label, options, progress)));
    match joined {
        Ok(outcome) => Ok(JoinedHome { node, outcome }),
        Err(e) => {
            // Leave nothing half-made behind: the node was never admitted.
            drop(node);
            if !existed {
                let _ = std::fs::remove_dir_all(root);
            }
            Err(e)
        }
    }
}
