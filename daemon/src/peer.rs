//! Drives one connection: a sans-IO [`Session`] between a WebSocket and the node.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use huskies_core::sync::{RefuseCode, Session, SessionEvent, SessionOptions, SyncError};
use huskies_core::{NodeId, Timestamp};
use rand_core::RngCore;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::shared::{Origin, Shared};

/// What the reading half delivers.
pub(crate) enum Incoming {
    Frame(Vec<u8>),
    /// The transport failed or sent something that is not a binary frame: a short reason
    /// for metrics (as [`SyncError::reason`]), and the detail.
    Error(&'static str, String),
}

pub(crate) type FrameSink = Pin<Box<dyn Sink<Vec<u8>, Error = TransportError> + Send>>;

/// A transport failure, in words. (A plain `sink_map_err` would panic if the sink were
/// closed after failing; `with` and this `From` do not.)
#[derive(Debug)]
pub(crate) struct TransportError(pub String);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for TransportError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        TransportError(e.to_string())
    }
}

impl From<axum::Error> for TransportError {
    fn from(e: axum::Error) -> Self {
        TransportError(e.to_string())
    }
}
pub(crate) type FrameStream = Pin<Box<dyn Stream<Item = Incoming> + Send>>;

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct Ended {
    /// The peer, if the handshake completed.
    pub peer: Option<NodeId>,
    /// Short reason for metrics.
    pub reason: String,
    /// Human detail.
    pub detail: String,
    /// Either side refused the other for being in another cluster.
    pub wrong_cluster: bool,
}

/// Frames queued between the reader and the session: small, so a flood from the peer
/// waits in its own TCP window rather than in our memory.
const READ_QUEUE: usize = 4;

/// Frames that wait together are merged into one ingest (one flush) until they hold this
/// many bytes: many small frames (live traffic) share a flush, while the full frames of a
/// catch-up (`SessionConfig::target_frame_bytes`, 1 MiB) are ingested one at a time. A
/// merged ingest holds its frames, their decoded ops and the verified ops at once: merging
/// up to 8 full frames made that the largest part of a 1M-op catch-up's peak memory
/// (245 against 190 MB; `docs/benchmarks.md`, "Catch-up memory at 1M ops") and did not
/// make it faster.
pub(crate) const MERGE_FRAME_BYTES: usize = 1024 * 1024;

/// Whether frames of `bytes` in all, waiting together, take another one into their ingest.
pub(crate) fn merge_more(bytes: usize) -> bool {
    bytes < MERGE_FRAME_BYTES
}

/// Runs a connection to completion.
pub(crate) async fn drive(
    shared: Arc<Shared>,
    mut sink: FrameSink,
    mut stream: FrameStream,
    options: SessionOptions,
    origin: Origin,
    address: Option<String>,
) -> Ended {
    let (conn, mut kill, last_recv) = shared.register(origin, address.clone());
    shared.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let mut challenge = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut challenge);
    let session_config = shared.config.session.clone();
    let mut session =
        shared.with_node(|n| Session::new(n, Shared::now(), challenge, options, session_config));
    let (tx, mut rx) = mpsc::channel::<Incoming>(READ_QUEUE);
    let reader = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let stop = matches!(item, Incoming::Error(..));
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    let mut changed = shared.changed.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let write_timeout = Duration::from_millis(shared.config.write_timeout_ms);
    let mut peer: Option<NodeId> = None;
    let ended = loop {
        // Send everything the session has to say now.
        if let Err(mut e) = flush(&shared, &mut session, &mut sink, write_timeout).await {
            e.peer = e.peer.or(peer);
            break e;
        }
        let wait = until(session.poll_timeout(), Shared::now());
        tokio::select! {
            item = rx.recv() => {
                let frame = match item {
                    Some(Incoming::Frame(f)) => f,
                    Some(Incoming::Error(reason, e)) => break ended(peer, reason, e),
                    None => break ended(peer, "closed", "peer closed the connection".into()),
                };
                // Frames already waiting are merged together, up to `MERGE_FRAME_BYTES`:
                // one ingest, one flush.
                let mut bytes = frame.len();
                let mut frames = vec![frame];
                let mut pending_error = None;
                while merge_more(bytes) {
                    let Ok(item) = rx.try_recv() else { break };
                    match item {
                        Incoming::Frame(f) => {
                            bytes += f.len();
                            frames.push(f);
                        }
                        Incoming::Error(reason, e) => {
                            pending_error = Some((reason, e));
                            break;
                        }
                    }
                }
                shared.metrics.frames_received.fetch_add(frames.len() as u64, Ordering::Relaxed);
                last_recv.store(Shared::now().as_millis(), Ordering::Relaxed);
                let r = shared.with_node(|n| session.handle_frames(n, Shared::now(), &frames));
                let mut duplicate = false;
                for ev in session.take_events() {
                    match ev {
                        SessionEvent::Established { peer: p } => {
                            peer = Some(p);
                            if !shared.established(conn, p) {
                                duplicate = true;
                                continue;
                            }
                            tracing::info!(peer = %p.short(), ?origin, "peer connected");
                        }
                        SessionEvent::Ingested { report } => {
                            shared.metrics.ops_applied.fetch_add(report.applied as u64, Ordering::Relaxed);
                            if let Some(hook) = &shared.config.after_ingest {
                                (hook.0)(report.applied);
                            }
                            for r in &report.rejected {
                                let reason = rejection_name(&r.reason);
                                Metrics::count(&shared.metrics.rejected, reason, 1);
                                tracing::warn!(peer = ?peer.map(|p| p.short()), reason, detail = %r.reason, "rejected op");
                            }
                            for f in &report.forks {
                                tracing::warn!(author = %f.short(), "equivocation: author quarantined");
                            }
                        }
                        SessionEvent::BehindOwnChain { held, peer_holds } => {
                            tracing::error!(
                                peer = ?peer.map(|p| p.short()),
                                held,
                                peer_holds,
                                "this node's store lacks some of its own ops (restored or rolled back?); \
                                 taking them back from the peer"
                            );
                        }
                        SessionEvent::Admitted { node } => {
                            tracing::info!(node = %node.short(), "join ticket redeemed: new member");
                        }
                    }
                }
                shared.set_peer_version(conn, session.peer_version());
                if duplicate {
                    session.close(RefuseCode::Protocol, "duplicate connection");
                    let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                    break ended(peer, "duplicate", "a better connection to this peer exists".into());
                }
                if let Err(e) = r {
                    let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                    break sync_ended_with(peer, &e);
                }
                if let Some((reason, e)) = pending_error {
                    let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                    break ended(peer, reason, e);
                }
            }
            _ = changed.changed() => {}
            _ = tokio::time::sleep(wait) => {
                if let Err(e) = session.handle_timeout(Shared::now()) {
                    let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                    break sync_ended_with(peer, &e);
                }
            }
            _ = kill.changed() => {
                session.close(RefuseCode::Protocol, "duplicate connection");
                let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                break ended(peer, "duplicate", "a better connection to this peer exists".into());
            }
            // `wait_for`, not `changed`: a connection that starts after shutdown was
            // signalled must see it too (its receiver counts that value as seen).
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                session.close(RefuseCode::Shutdown, "node is shutting down");
                let _ = flush(&shared, &mut session, &mut sink, write_timeout).await;
                break ended(peer, "shutdown", "daemon shutting down".into());
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    reader.abort();
    shared
        .metrics
        .ops_sent
        .fetch_add(session.ops_sent(), Ordering::Relaxed);
    shared
        .metrics
        .bytes_sent
        .fetch_add(session.op_bytes_sent(), Ordering::Relaxed);
    // Out of the connection table before it is counted as a disconnect, so that whoever
    // sees the count never sees the connection still listed.
    shared.unregister(conn);
    Metrics::count(&shared.metrics.disconnects, &ended.reason, 1);
    if ended.reason != "shutdown" && ended.reason != "duplicate" {
        tracing::info!(peer = ?ended.peer.map(|p| p.short()), reason = %ended.reason, detail = %ended.detail, "connection closed");
    }
    ended
}

/// How long to sleep until a session's next timer (`Session::poll_timeout`), at `now`: zero
/// for a timer already due, an hour when none is set.
pub(crate) fn until(deadline: Option<Timestamp>, now: Timestamp) -> Duration {
    deadline.map_or(Duration::from_secs(3600), |t| {
        Duration::from_millis(u64::try_from(t.millis_since(now)).unwrap_or(0))
    })
}

fn ended(peer: Option<NodeId>, reason: &str, detail: String) -> Ended {
    Ended {
        peer,
        reason: reason.to_string(),
        detail,
        wrong_cluster: false,
    }
}

/// How a connection ended on a session error: its reason, and whether either side
/// refused the other for being in another cluster.
fn sync_ended_with(peer: Option<NodeId>, e: &SyncError) -> Ended {
    Ended {
        wrong_cluster: is_wrong_cluster(e),
        ..ended(peer, e.reason(), e.to_string())
    }
}

/// Whether a session ended because the two sides are in different clusters (whichever
/// side noticed first).
pub(crate) fn is_wrong_cluster(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::Refused {
            code: RefuseCode::Cluster,
            ..
        } | SyncError::PeerRefused {
            code: RefuseCode::Cluster,
            ..
        }
    )
}

async fn flush(
    shared: &Shared,
    session: &mut Session,
    sink: &mut FrameSink,
    write_timeout: Duration,
) -> Result<(), Ended> {
    loop {
        let next = shared.with_node(|n| session.poll_transmit(n, Shared::now()));
        let frame = match next {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                let ended = sync_ended(session, e);
                // The session queued a `Refuse` saying why: the peer gets it before we close.
                while let Ok(Some(f)) = shared.with_node(|n| session.poll_transmit(n, Shared::now())) {
                    if !matches!(
                        tokio::time::timeout(write_timeout, sink.send(f)).await,
                        Ok(Ok(()))
                    ) {
                        break;
                    }
                }
                return Err(ended);
            }
        };
        match tokio::time::timeout(write_timeout, sink.send(frame)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ended(session.peer(), "transport", e.0)),
            Err(_) => {
                return Err(ended(
                    session.peer(),
                    "not_reading",
                    "frame write timed out: peer does not read".into(),
                ))
            }
        }
    }
}

fn sync_ended(session: &Session, e: SyncError) -> Ended {
    sync_ended_with(session.peer(), &e)
}

fn rejection_name(r: &huskies_core::RejectReason) -> &'static str {
    r.code()
}

fn text_frame() -> Incoming {
    Incoming::Error("malformed", "text frame: this protocol is binary".into())
}

fn close_frame() -> Incoming {
    Incoming::Error("closed", "peer closed the connection".into())
}

/// A frame or message over the limit is refused by the WebSocket layer before it is
/// buffered whole: count it as such, not as a network failure.
fn transport_reason(e: &tokio_tungstenite::tungstenite::Error) -> &'static str {
    match e {
        tokio_tungstenite::tungstenite::Error::Capacity(_) => "frame_too_large",
        _ => "transport",
    }
}

/// Adapts a tokio-tungstenite client stream.
pub(crate) fn split_client(
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> (FrameSink, FrameStream) {
    use tokio_tungstenite::tungstenite::Message;
    let (sink, stream) = ws.split();
    let sink = sink
        .with(|f: Vec<u8>| futures_util::future::ready(Ok::<_, TransportError>(Message::Binary(f.into()))));
    let stream = stream.filter_map(|m| {
        futures_util::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Incoming::Frame(b.to_vec())),
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => None,
            Ok(Message::Text(_)) => Some(text_frame()),
            Ok(Message::Close(_)) => Some(close_frame()),
            Err(e) => Some(Incoming::Error(transport_reason(&e), e.to_string())),
        })
    });
    (Box::pin(sink), Box::pin(stream))
}

/// Adapts an axum server-side socket.
pub(crate) fn split_server(ws: axum::extract::ws::WebSocket) -> (FrameSink, FrameStream) {
    use axum::extract::ws::Message;
    let (sink, stream) = ws.split();
    let sink = sink
        .with(|f: Vec<u8>| futures_util::future::ready(Ok::<_, TransportError>(Message::Binary(f.into()))));
    let stream = stream.filter_map(|m| {
        futures_util::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Incoming::Frame(b.to_vec())),
            Ok(Message::Ping(_) | Message::Pong(_)) => None,
            Ok(Message::Text(_)) => Some(text_frame()),
            Ok(Message::Close(_)) => Some(close_frame()),
            Err(e) => {
                let e = e.into_inner();
                let reason = e
                    .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
                    .map_or("transport", transport_reason);
                Some(Incoming::Error(reason, e.to_string()))
            }
        })
    });
    (Box::pin(sink), Box::pin(stream))
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn small_frames_merge_and_a_full_frame_goes_alone() {
        // Live traffic: small frames keep merging until they hold a full frame's bytes.
        assert!(merge_more(0));
        assert!(merge_more(3 * 2_000));
        assert!(merge_more(MERGE_FRAME_BYTES - 1));
        // A catch-up's full frame (the session's target size) takes no other with it.
        let full = huskies_core::sync::SessionConfig::default().target_frame_bytes;
        assert!(full >= MERGE_FRAME_BYTES);
        assert!(!merge_more(full));
    }
}
