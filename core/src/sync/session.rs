//! A per-peer sync session: a sans-IO state machine.
//!
//! The session never touches a socket, a clock or an RNG. Its driver (the daemon, a test,
//! the simulator) calls, in any order and as often as it likes:
//!
//! - [`Session::handle_frame`] with each frame received and the current time;
//! - [`Session::poll_transmit`] to get the next frame to send, until it returns `None`
//!   (call it again after anything happens: a frame arrived, the node changed, a timeout);
//! - [`Session::poll_timeout`] for the instant at which [`Session::handle_timeout`] must be
//!   called if nothing else happens first.
//!
//! An `Err` from any of them ends the session: the driver sends whatever
//! [`Session::poll_transmit`] still returns (a `Refuse` telling the peer why) and closes.
//!
//! ```
//! use huskies_core::sync::{Session, SessionConfig, SessionOptions};
//! use huskies_core::{Command, InitMode, Node, NodeConfig, Role, Timestamp};
//! # let dir = tempfile::tempdir().unwrap();
//! let now = Timestamp::from_millis(1_763_700_000_000);
//! let mut rng = rand_core::OsRng;
//! let mut a = Node::init(&dir.path().join("a"), InitMode::NewCluster { name: "c".into() },
//!                        &mut rng, now, NodeConfig::default())?;
//! let mut b = Node::init(&dir.path().join("b"), InitMode::Join { cluster: a.cluster_id() },
//!                        &mut rng, now, NodeConfig::default())?;
//! // b is not a member yet: a trusted channel (here: this program) tells a to admit it.
//! a.execute(now, Command::AddMember { node: b.node_id(), role: Role::Member })?;
//! let mut sa = Session::new(&a, now, [1; 32], SessionOptions::default(), SessionConfig::default());
//! let mut sb = Session::new(&b, now, [2; 32],
//!     SessionOptions { expect_peer: Some(a.node_id()), ..Default::default() }, SessionConfig::default());
//! // Pump frames both ways until neither side has anything to say.
//! loop {
//!     let mut moved = false;
//!     while let Some(f) = sa.poll_transmit(&a, now)? { sb.handle_frame(&mut b, now, &f)?; moved = true; }
//!     while let Some(f) = sb.poll_transmit(&b, now)? { sa.handle_frame(&mut a, now, &f)?; moved = true; }
//!     if !moved { break; }
//! }
//! assert_eq!(a.version_vector(), b.version_vector());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeSet, VecDeque};

use crate::error::Error;
use crate::id::{ClusterId, NodeId, OpId};
use crate::node::{IngestReport, Node};
use crate::op::UnverifiedOp;
use crate::sync::message::{Message, RefuseCode, PROTOCOL_VERSION};
use crate::time::Timestamp;
use crate::version::VersionVector;

/// Most head ids compared per handshake: one per author, and clusters have few authors.
pub(crate) const MAX_HEADS: usize = 4096;

/// Signed statement prefix of the handshake proof.
const AUTH_DOMAIN: &[u8; 16] = b"huskies/sync/v1\0";

/// Limits and timers of a session. Each bounds memory or time a peer can take from us.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Largest frame accepted (and the cap on frames we build): 4 MiB. Frames carry many
    /// ops, so this is far above one op, yet bounds what one peer can make us buffer.
    pub max_frame_bytes: usize,
    /// Ops per frame up to this many bytes: 1 MiB (~4,000 ops) amortises framing, batch
    /// verification and the receiver's one flush per frame (at 256 KiB a catch-up ran ~25 %
    /// slower, mostly in flushes) without making one frame a long stall.
    pub target_frame_bytes: usize,
    /// Bytes of ops sent but not yet acknowledged: 8 MiB. Past this we stop sending and
    /// wait, so a slow peer costs a bounded window, never an unbounded queue.
    pub max_unacked_bytes: usize,
    /// Time to complete the handshake: 10 s.
    pub handshake_timeout_ms: i64,
    /// A frame unacknowledged this long means the peer does not read: 30 s.
    pub ack_timeout_ms: i64,
    /// Send an `Ack` as keepalive after this long without sending: 10 s.
    pub keepalive_ms: i64,
    /// Nothing received for this long ends the session: 45 s.
    pub silence_timeout_ms: i64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_frame_bytes: 4 * 1024 * 1024,
            target_frame_bytes: 1024 * 1024,
            max_unacked_bytes: 8 * 1024 * 1024,
            handshake_timeout_ms: 10_000,
            ack_timeout_ms: 30_000,
            keepalive_ms: 10_000,
            silence_timeout_ms: 45_000,
        }
    }
}

/// Per-session choices of the side that opens it.
#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// A join ticket to present (a node that is not a member yet).
    pub ticket: Option<[u8; 32]>,
    /// Refuse any peer but this one. A joining node that holds no ops yet cannot check
    /// membership, so it trusts exactly the node its ticket names.
    pub expect_peer: Option<NodeId>,
}

/// What a session reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// The handshake completed.
    Established {
        /// The authenticated peer.
        peer: NodeId,
    },
    /// A frame of ops was merged.
    Ingested {
        /// What the merge did.
        report: IngestReport,
    },
    /// The peer redeemed a join ticket and was admitted.
    Admitted {
        /// The new member.
        node: NodeId,
    },
    /// The peer holds more of this node's own ops than this node does: its store lost ops
    /// (restored from an old copy, or rolled back by damage). The peer sends them back in
    /// this session; ops written locally before that reused seqs and will be seen as forks.
    BehindOwnChain {
        /// Our own ops we hold.
        held: u64,
        /// Our own ops the peer holds.
        peer_holds: u64,
    },
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// A frame over the size limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    FrameTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A frame that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A frame that is not allowed in the current state.
    #[error("unexpected {message} frame while {state}")]
    Unexpected {
        /// Our state.
        state: &'static str,
        /// The frame.
        message: &'static str,
    },
    /// We refused the peer (and told it why).
    #[error("refused peer ({}): {reason}", code.as_str())]
    Refused {
        /// Why.
        code: RefuseCode,
        /// In words.
        reason: String,
    },
    /// The peer refused us.
    #[error("peer refused us ({}): {reason}", code.as_str())]
    PeerRefused {
        /// Why.
        code: RefuseCode,
        /// In words.
        reason: String,
    },
    /// The handshake did not complete in time.
    #[error("handshake did not complete in time")]
    HandshakeTimeout,
    /// The peer stopped acknowledging what we send.
    #[error("peer does not read: no acknowledgement within the timeout")]
    NotReading,
    /// Nothing arrived for too long.
    #[error("peer went silent")]
    Silent,
    /// Our store failed.
    #[error("store: {0}")]
    Store(#[from] Error),
}

impl SyncError {
    /// A short name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::FrameTooLarge { .. } => "frame_too_large",
            SyncError::Malformed(_) => "malformed",
            SyncError::Unexpected { .. } => "unexpected_frame",
            SyncError::Refused { code, .. } => code.as_str(),
            SyncError::PeerRefused { .. } => "peer_refused",
            SyncError::HandshakeTimeout => "handshake_timeout",
            SyncError::NotReading => "not_reading",
            SyncError::Silent => "silent",
            SyncError::Store(_) => "store",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitHello,
    AwaitAuth,
    Established,
    Closed,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::AwaitHello => "awaiting hello",
            State::AwaitAuth => "awaiting auth",
            State::Established => "established",
            State::Closed => "closed",
        }
    }
}

struct InFlight {
    bytes: usize,
    sent_at: Timestamp,
}

/// One side of a sync connection with one peer.
pub struct Session {
    config: SessionConfig,
    options: SessionOptions,
    state: State,
    me: NodeId,
    cluster: ClusterId,
    challenge: [u8; 32],
    peer: Option<NodeId>,
    outbox: VecDeque<Vec<u8>>,
    /// What the peer holds, or will once the frames in flight arrive.
    sent: VersionVector,
    /// Authors whose fork evidence this session already sent.
    evidence_sent: BTreeSet<NodeId>,
    /// Contested removals this session already sent (`Node::contested_removals`).
    contested_sent: BTreeSet<OpId>,
    /// Our ops that contradict the peer's heads, to send as evidence.
    pending_evidence: Vec<crate::op::OpBytes>,
    in_flight: VecDeque<InFlight>,
    in_flight_bytes: usize,
    frames_received: u64,
    frames_acked: u64,
    started: Timestamp,
    last_recv: Timestamp,
    last_send: Timestamp,
    last_rewind: Timestamp,
    events: Vec<SessionEvent>,
    bytes_sent: u64,
    ops_sent: u64,
}

impl Session {
    /// Starts a session; its first frame (`Hello`) is ready in [`Session::poll_transmit`].
    /// `challenge` must be fresh random bytes from the caller's RNG.
    pub fn new(
        node: &Node,
        now: Timestamp,
        challenge: [u8; 32],
        options: SessionOptions,
        config: SessionConfig,
    ) -> Session {
        let hello = Message::Hello {
            protocol: PROTOCOL_VERSION,
            cluster: node.cluster_id(),
            node: node.node_id(),
            challenge,
            ticket: options.ticket,
        };
        Session {
            config,
            options,
            state: State::AwaitHello,
            me: node.node_id(),
            cluster: node.cluster_id(),
            challenge,
            peer: None,
            outbox: VecDeque::from([hello.encode()]),
            sent: VersionVector::default(),
            evidence_sent: BTreeSet::new(),
            contested_sent: BTreeSet::new(),
            pending_evidence: Vec::new(),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            frames_received: 0,
            frames_acked: 0,
            started: now,
            last_recv: now,
            last_send: now,
            last_rewind: now,
            events: Vec::new(),
            bytes_sent: 0,
            ops_sent: 0,
        }
    }

    /// The authenticated peer, once the handshake completed.
    pub fn peer(&self) -> Option<NodeId> {
        self.peer.filter(|_| self.state == State::Established)
    }

    /// Handshake done and not closed.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// What we believe the peer holds.
    pub fn peer_version(&self) -> &VersionVector {
        &self.sent
    }

    /// Bytes of ops sent and not yet acknowledged.
    pub fn unacked_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// Total signed-op bytes sent in `Ops` frames.
    pub fn op_bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Total ops sent.
    pub fn ops_sent(&self) -> u64 {
        self.ops_sent
    }

    /// Events since the last call.
    pub fn take_events(&mut self) -> Vec<SessionEvent> {
        std::mem::take(&mut self.events)
    }

    fn refuse(&mut self, code: RefuseCode, reason: String) -> SyncError {
        self.outbox.push_back(
            Message::Refuse {
                code,
                reason: reason.clone(),
            }
            .encode(),
        );
        self.state = State::Closed;
        SyncError::Refused { code, reason }
    }

    /// Ends the session politely (e.g. on shutdown); the `Refuse` frame is in the outbox.
    pub fn close(&mut self, code: RefuseCode, reason: &str) {
        if self.state != State::Closed {
            let _ = self.refuse(code, reason.to_string());
        }
    }

    fn statement(
        verifier_challenge: &[u8; 32],
        signer: &NodeId,
        verifier: &NodeId,
        cluster: &ClusterId,
    ) -> Vec<u8> {
        let mut m = Vec::with_capacity(16 + 32 * 4);
        m.extend_from_slice(AUTH_DOMAIN);
        m.extend_from_slice(verifier_challenge);
        m.extend_from_slice(signer.as_bytes());
        m.extend_from_slice(verifier.as_bytes());
        m.extend_from_slice(cluster.as_bytes());
        m
    }

    /// Handles one received frame.
    pub fn handle_frame(&mut self, node: &mut Node, now: Timestamp, frame: &[u8]) -> Result<(), SyncError> {
        self.handle_frames(node, now, std::slice::from_ref(&frame))
    }

    /// Handles several received frames in order. Consecutive `Ops` frames are merged in one
    /// ingest — one atomic batch and one flush for all of them — so a driver that finds
    /// several frames waiting (a catch-up) should pass them together.
    pub fn handle_frames<F: AsRef<[u8]>>(
        &mut self,
        node: &mut Node,
        now: Timestamp,
        frames: &[F],
    ) -> Result<(), SyncError> {
        let mut run: Vec<Vec<u8>> = Vec::new();
        let mut run_frames = 0u64;
        for frame in frames {
            if self.state == State::Closed {
                return Ok(());
            }
            let msg = self.decode_frame(frame.as_ref())?;
            self.last_recv = now;
            match msg {
                Message::Ops { ops } if self.state == State::Established => {
                    run.extend(ops);
                    run_frames += 1;
                }
                other => {
                    if run_frames > 0 {
                        self.on_ops(node, std::mem::take(&mut run), std::mem::take(&mut run_frames))?;
                    }
                    self.dispatch(node, now, other)?;
                }
            }
        }
        if run_frames > 0 {
            self.on_ops(node, run, run_frames)?;
        }
        Ok(())
    }

    fn decode_frame(&mut self, frame: &[u8]) -> Result<Message, SyncError> {
        if frame.len() > self.config.max_frame_bytes {
            let limit = self.config.max_frame_bytes;
            let _ = self.refuse(
                RefuseCode::Protocol,
                format!("frame of {} bytes exceeds {limit}", frame.len()),
            );
            return Err(SyncError::FrameTooLarge {
                size: frame.len(),
                limit,
            });
        }
        Message::decode(frame).map_err(|e| {
            let _ = self.refuse(RefuseCode::Protocol, "malformed frame".into());
            SyncError::Malformed(e)
        })
    }

    fn dispatch(&mut self, node: &mut Node, now: Timestamp, msg: Message) -> Result<(), SyncError> {
        match (self.state, msg) {
            (_, Message::Refuse { code, reason }) => {
                self.state = State::Closed;
                Err(SyncError::PeerRefused { code, reason })
            }
            (
                State::AwaitHello,
                Message::Hello {
                    protocol,
                    cluster,
                    node: peer,
                    challenge,
                    ticket,
                },
            ) => self.on_hello(node, now, protocol, cluster, peer, challenge, ticket),
            (State::AwaitAuth, Message::Auth { proof, have, heads }) => {
                self.on_auth(node, proof, have, heads)
            }
            (State::Established, Message::Ops { ops }) => self.on_ops(node, ops, 1),
            (State::Established, Message::Ack { have, frames }) => {
                self.on_ack(now, have, frames);
                Ok(())
            }
            (state, msg) => {
                let (state, message) = (state.name(), msg.name());
                let _ = self.refuse(
                    RefuseCode::Protocol,
                    format!("unexpected {message} while {state}"),
                );
                Err(SyncError::Unexpected { state, message })
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_hello(
        &mut self,
        node: &mut Node,
        now: Timestamp,
        protocol: u16,
        cluster: ClusterId,
        peer: NodeId,
        challenge: [u8; 32],
        ticket: Option<[u8; 32]>,
    ) -> Result<(), SyncError> {
        if protocol != PROTOCOL_VERSION {
            return Err(self.refuse(
                RefuseCode::Version,
                format!("protocol {protocol} is not supported (this node speaks {PROTOCOL_VERSION})"),
            ));
        }
        if cluster != self.cluster {
            return Err(self.refuse(
                RefuseCode::Cluster,
                format!("this node is in cluster {}, not {cluster}", self.cluster),
            ));
        }
        if peer == self.me {
            return Err(self.refuse(RefuseCode::Protocol, "a node cannot sync with itself".into()));
        }
        if let Some(expected) = self.options.expect_peer {
            if peer != expected {
                return Err(self.refuse(
                    RefuseCode::NotMember,
                    format!("expected node {expected}, got {peer}"),
                ));
            }
        } else if !node.is_active_member(&peer) {
            match ticket {
                Some(secret) => match node.redeem_ticket(now, &secret, peer) {
                    Ok(()) => self.events.push(SessionEvent::Admitted { node: peer }),
                    Err(e) => return Err(self.refuse(RefuseCode::Ticket, e.to_string())),
                },
                None => {
                    return Err(self.refuse(
                        RefuseCode::NotMember,
                        format!("node {peer} is not a member of this cluster"),
                    ))
                }
            }
        }
        self.peer = Some(peer);
        let proof = node.sign_bytes(&Self::statement(&challenge, &self.me, &peer, &self.cluster));
        let have = node.version_vector();
        let heads = node.op_ids_at(&have)?;
        self.outbox
            .push_back(Message::Auth { proof, have, heads }.encode());
        self.state = State::AwaitAuth;
        Ok(())
    }

    fn on_auth(
        &mut self,
        node: &Node,
        proof: [[u8; 32]; 2],
        have: VersionVector,
        heads: Vec<(NodeId, OpId)>,
    ) -> Result<(), SyncError> {
        let peer = self.peer.expect("hello sets the peer");
        let statement = Self::statement(&self.challenge, &peer, &self.me, &self.cluster);
        if !crate::key::check_signature(&peer, &statement, &proof) {
            return Err(self.refuse(RefuseCode::BadProof, "handshake proof does not verify".into()));
        }
        // The peer may still have been removed while we shook hands.
        if self.options.expect_peer.is_none() && !node.is_active_member(&peer) {
            return Err(self.refuse(
                RefuseCode::NotMember,
                format!("node {peer} is not a member of this cluster"),
            ));
        }
        // Where we hold a different op for the peer's head of an author, that author
        // equivocated: send ours, and the peer's merge records the fork (it does the same).
        let ours_vv = node.version_vector();
        for (author, id) in heads.into_iter().take(MAX_HEADS) {
            let seq = have.get(&author);
            if seq == 0 || seq > ours_vv.get(&author) {
                continue;
            }
            if let Some(ours) = node.op_at(&author, seq)? {
                if ours.id() != id {
                    self.pending_evidence.push((&ours).into());
                }
            }
        }
        let (held, peer_holds) = (node.version_vector().get(&self.me), have.get(&self.me));
        if peer_holds > held {
            self.events
                .push(SessionEvent::BehindOwnChain { held, peer_holds });
        }
        self.sent = have;
        self.state = State::Established;
        self.events.push(SessionEvent::Established { peer });
        Ok(())
    }

    /// Merges the ops of `count` consecutive `Ops` frames at once.
    fn on_ops(&mut self, node: &mut Node, frames: Vec<Vec<u8>>, count: u64) -> Result<(), SyncError> {
        self.frames_received += count;
        let mut ops = Vec::with_capacity(frames.len());
        let mut malformed = Vec::new();
        for bytes in &frames {
            match UnverifiedOp::decode(bytes) {
                Ok(op) => ops.push(op),
                Err(e) => malformed.push(e),
            }
        }
        // The raw bytes are copied into the decoded ops: not held through the ingest.
        drop(frames);
        // The peer holds what it sent us: never send it back.
        for op in &ops {
            let c = op.content();
            if c.seq == self.sent.get(&c.author) + 1 {
                self.sent.set(c.author, c.seq);
            }
        }
        let mut report = node.ingest(ops)?;
        report
            .rejected
            .extend(malformed.into_iter().map(|e| crate::node::Rejection {
                op_id: None,
                author: None,
                seq: None,
                reason: e.into(),
            }));
        self.outbox.push_back(
            Message::Ack {
                have: node.version_vector(),
                frames: self.frames_received,
            }
            .encode(),
        );
        self.events.push(SessionEvent::Ingested { report });
        Ok(())
    }

    fn on_ack(&mut self, now: Timestamp, have: VersionVector, frames: u64) {
        while self.frames_acked < frames {
            let Some(f) = self.in_flight.pop_front() else {
                break;
            };
            self.in_flight_bytes -= f.bytes;
            self.frames_acked += 1;
        }
        self.sent.merge(&have);
        if self.in_flight.is_empty()
            && !have.dominates(&self.sent)
            && now.millis_since(self.last_rewind) >= self.config.ack_timeout_ms
        {
            // Everything we sent was merged, yet the peer lacks some of it (it refused or
            // buffered ops): resend from what it reports, at most once per ack timeout.
            self.sent = have;
            self.last_rewind = now;
        }
    }

    /// The next frame to send, if any. Builds `Ops` frames on demand from what the peer
    /// lacks, within the unacknowledged-bytes window.
    pub fn poll_transmit(&mut self, node: &Node, now: Timestamp) -> Result<Option<Vec<u8>>, SyncError> {
        if let Some(f) = self.outbox.pop_front() {
            self.last_send = now;
            return Ok(Some(f));
        }
        if self.state != State::Established {
            return Ok(None);
        }
        // Membership holds for the session's life, not only at the handshake: a peer
        // removed (or quarantined) since is cut off rather than served every new op.
        if let (None, Some(peer)) = (self.options.expect_peer, self.peer) {
            if !node.is_active_member(&peer) {
                return Err(self.refuse(
                    RefuseCode::NotMember,
                    format!("node {peer} is no longer a member of this cluster"),
                ));
            }
        }
        if self.in_flight_bytes < self.config.max_unacked_bytes {
            let budget = self
                .config
                .target_frame_bytes
                .min(self.config.max_frame_bytes / 2);
            let mut ops = node.ops_for_sync(&self.sent, budget)?;
            ops.append(&mut self.pending_evidence);
            for author in node.quarantined_authors() {
                if self.evidence_sent.insert(author) {
                    ops.extend(node.fork_evidence(&author)?.iter().map(crate::op::OpBytes::from));
                }
            }
            for op in node.contested_removals()? {
                if self.contested_sent.insert(op.id()) {
                    ops.push(crate::op::OpBytes::from(&op));
                }
            }
            if !ops.is_empty() {
                let mut bytes = 0usize;
                for op in &ops {
                    if op.seq == self.sent.get(&op.author) + 1 {
                        self.sent.set(op.author, op.seq);
                    }
                    bytes += op.bytes.len();
                }
                let count = ops.len();
                let frame = Message::Ops {
                    ops: ops.into_iter().map(|o| o.bytes).collect(),
                }
                .encode();
                self.in_flight.push_back(InFlight { bytes, sent_at: now });
                self.in_flight_bytes += bytes;
                self.bytes_sent += bytes as u64;
                self.ops_sent += count as u64;
                self.last_send = now;
                return Ok(Some(frame));
            }
        }
        if now.millis_since(self.last_send) >= self.config.keepalive_ms {
            self.last_send = now;
            return Ok(Some(
                Message::Ack {
                    have: node.version_vector(),
                    frames: self.frames_received,
                }
                .encode(),
            ));
        }
        Ok(None)
    }

    /// When [`Session::handle_timeout`] must run if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.last_recv.add_millis(self.config.silence_timeout_ms);
        if self.state != State::Established {
            t = t.min(self.started.add_millis(self.config.handshake_timeout_ms));
        } else {
            t = t.min(self.last_send.add_millis(self.config.keepalive_ms));
        }
        if let Some(f) = self.in_flight.front() {
            t = t.min(f.sent_at.add_millis(self.config.ack_timeout_ms));
        }
        Some(t)
    }

    /// Checks the timers.
    pub fn handle_timeout(&mut self, now: Timestamp) -> Result<(), SyncError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if self.state != State::Established
            && now.millis_since(self.started) >= self.config.handshake_timeout_ms
        {
            let _ = self.refuse(RefuseCode::Timeout, "handshake did not complete in time".into());
            return Err(SyncError::HandshakeTimeout);
        }
        if self
            .in_flight
            .front()
            .is_some_and(|f| now.millis_since(f.sent_at) >= self.config.ack_timeout_ms)
        {
            let _ = self.refuse(
                RefuseCode::Timeout,
                "no acknowledgement: peer does not read".into(),
            );
            return Err(SyncError::NotReading);
        }
        if now.millis_since(self.last_recv) >= self.config.silence_timeout_ms {
            let _ = self.refuse(RefuseCode::Timeout, "nothing received for too long".into());
            return Err(SyncError::Silent);
        }
        Ok(())
    }
}
