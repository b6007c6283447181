//! Connections and frames: opening and closing sessions, delivery, loss, timers.

use super::*;

impl Sim {
    pub(super) fn open_conn(&mut self, l: usize) {
        self.next_conn += 1;
        let id = self.next_conn;
        let mk = |sim: &mut Sim, side: usize| {
            let i = sim.links[l].node(side);
            let mut challenge = [0u8; 32];
            sim.rng.fill(&mut challenge);
            // A node that holds nothing cannot check membership: it trusts the admin only.
            let options = SessionOptions {
                expect_peer: sim.blank(i).then_some(sim.nodes[0].id),
                ..SessionOptions::default()
            };
            Session::new(
                sim.node(i),
                sim.now(i),
                challenge,
                options,
                sim.session_config.clone(),
            )
        };
        let s0 = mk(self, 0);
        let s1 = mk(self, 1);
        self.links[l].conn = Some(Conn { id, s: [s0, s1] });
        self.stats.connections += 1;
        self.dirty.insert(l);
    }

    /// Ends link `l`'s connection. With `flush_from`, that side's remaining frames (its
    /// `Refuse`) reach the other side first, as a socket delivers its last writes before
    /// the close. `failed` starts a backoff before the next attempt.
    pub(super) fn close_conn(&mut self, l: usize, mut conn: Conn, flush_from: Option<usize>, failed: bool) {
        if let Some(side) = flush_from {
            let peer = 1 - side;
            let (i, j) = (self.links[l].node(side), self.links[l].node(peer));
            let mut frames = Vec::new();
            let (now_i, now_j) = (self.now(i), self.now(j));
            if let Some(node) = self.nodes[i].node.as_ref() {
                while let Ok(Some(f)) = conn.s[side].poll_transmit(node, now_i) {
                    frames.push(f);
                }
            }
            for f in frames {
                let Some(node) = self.nodes[j].node.as_mut() else {
                    break;
                };
                match conn.s[peer].handle_frame(node, now_j, &f) {
                    Ok(()) => {}
                    Err(SyncError::PeerRefused { .. }) => break,
                    Err(e) => panic!("{}: a closing frame made the peer fail with {e:?}", self.ctx()),
                }
            }
            let events = conn.s[peer].take_events();
            self.check_events(j, events);
        }
        let link = &mut self.links[l];
        link.conn = None;
        if failed {
            link.failures += 1;
            let base = 250u64 << link.failures.min(5);
            let jitter = self.rng.gen_range(0..=base);
            link.next_attempt = self.t + base / 2 + jitter;
        } else {
            link.next_attempt = self.t;
        }
    }

    pub(super) fn fail(&mut self, l: usize, conn: Conn, side: usize, err: SyncError) {
        let (a, b) = (self.links[l].a, self.links[l].b);
        let strangers = !self.knows(a, b) || !self.knows(b, a);
        let expected = match &err {
            // Until both ends know of an admission, they refuse each other.
            SyncError::Refused {
                code: RefuseCode::NotMember,
                ..
            }
            | SyncError::PeerRefused {
                code: RefuseCode::NotMember,
                ..
            } => strangers,
            SyncError::Unexpected { .. }
            | SyncError::HandshakeTimeout
            | SyncError::NotReading
            | SyncError::Silent => !self.strict,
            SyncError::PeerRefused {
                code: RefuseCode::Protocol | RefuseCode::Timeout,
                ..
            } => !self.strict,
            _ => false,
        };
        let i = self.links[l].node(side);
        let j = self.links[l].node(1 - side);
        assert!(
            expected,
            "{}: session of node {i} with node {j} failed unexpectedly{}: {err:?}",
            self.ctx(),
            if self.strict {
                " (the network is clean)"
            } else {
                ""
            }
        );
        *self.stats.failures.entry(err.reason()).or_default() += 1;
        self.close_conn(l, conn, Some(side), true);
    }

    pub(super) fn check_events(&mut self, i: usize, events: Vec<SessionEvent>) {
        for e in events {
            match e {
                SessionEvent::Established { peer } => {
                    assert!(
                        self.nodes.iter().any(|n| n.id == peer),
                        "{}: established with a stranger",
                        self.ctx()
                    );
                    self.stats.established += 1;
                }
                SessionEvent::Ingested { report } => {
                    // On a clean wire a session sends ops in an order the peer can apply;
                    // on a faulty one an admitted node's op may overtake its admission.
                    let removed: Vec<NodeId> =
                        self.nodes.iter().filter(|n| n.removed).map(|n| n.id).collect();
                    let excused = |r: &huskies_core::Rejection| match &r.reason {
                        huskies_core::RejectReason::UnknownAuthor(_) => !self.strict,
                        // A removed node's ops past its cutoff, relayed by a node that has
                        // not learnt of the removal yet.
                        huskies_core::RejectReason::Voided { author, .. } => removed.contains(author),
                        _ => false,
                    };
                    assert!(
                        report.rejected.iter().all(excused) && report.forks.is_empty(),
                        "{}: node {i} rejected ops from a peer: {report:?}",
                        self.ctx()
                    );
                    self.stats.rejected += report.rejected.len() as u64;
                    if report.applied > 0 {
                        self.mark_node_dirty(i);
                    }
                }
                SessionEvent::Admitted { node } => {
                    panic!("{}: nobody holds a ticket, yet {node} was admitted", self.ctx())
                }
                SessionEvent::BehindOwnChain { held, peer_holds } => {
                    // Restarts reopen real stores: a node never loses its own ops.
                    panic!(
                        "{}: node {i} holds {held} of its own ops, a peer {peer_holds}",
                        self.ctx()
                    )
                }
            }
        }
    }

    pub(super) fn deliver(&mut self, f: Frame) {
        let live = self.links[f.link].conn.as_ref().is_some_and(|c| c.id == f.conn);
        if !live {
            self.stats.frames_stale += 1;
            return;
        }
        let i = self.links[f.link].node(f.to);
        if self.frozen(i) {
            // It piles up until the node reads again, in the order it arrived.
            let key = (self.nodes[i].frozen_until, f.seq);
            self.wire.insert(key, f);
            return;
        }
        let mut conn = self.links[f.link].conn.take().expect("live connection");
        if self.roll(self.faults.reset) {
            self.stats.resets += 1;
            self.close_conn(f.link, conn, None, true);
            return;
        }
        self.stats.frames_delivered += 1;
        let now = self.now(i);
        let node = self.nodes[i]
            .node
            .as_mut()
            .expect("a connection exists only while both ends are up");
        let r = conn.s[f.to].handle_frame(node, now, &f.bytes);
        let events = conn.s[f.to].take_events();
        self.check_events(i, events);
        match r {
            Ok(()) => {
                if conn.s[0].is_established() && conn.s[1].is_established() {
                    self.links[f.link].failures = 0;
                }
                self.links[f.link].conn = Some(conn);
                self.dirty.insert(f.link);
            }
            Err(e) => self.fail(f.link, conn, f.to, e),
        }
    }

    pub(super) fn check_timeouts(&mut self, l: usize) {
        let Some(mut conn) = self.links[l].conn.take() else {
            return;
        };
        for side in 0..2 {
            let i = self.links[l].node(side);
            if self.frozen(i) {
                continue;
            }
            let due = conn.s[side]
                .poll_timeout()
                .is_some_and(|ts| self.to_sim_time(i, ts) <= self.t);
            if due {
                if let Err(e) = conn.s[side].handle_timeout(self.now(i)) {
                    self.fail(l, conn, side, e);
                    return;
                }
                self.dirty.insert(l);
            }
        }
        self.links[l].conn = Some(conn);
    }

    pub(super) fn pump(&mut self, l: usize) {
        let Some(mut conn) = self.links[l].conn.take() else {
            return;
        };
        for side in 0..2 {
            let i = self.links[l].node(side);
            if self.frozen(i) {
                continue; // it sends once it thaws
            }
            let now = self.now(i);
            let node = self.nodes[i].node.as_ref().expect("up");
            let mut out = Vec::new();
            let mut err = None;
            loop {
                // The session counts the ops it sends: an `Ops` frame is one that raised it
                // (so the wire need not decode every frame to count them).
                let before = conn.s[side].ops_sent();
                match conn.s[side].poll_transmit(node, now) {
                    Ok(Some(f)) => {
                        let ops = conn.s[side].ops_sent() - before;
                        out.push((f, (ops > 0).then_some(ops)));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            for (f, ops) in out {
                self.send(l, conn.id, side, f, ops);
            }
            if let Some(e) = err {
                self.fail(l, conn, side, e);
                return;
            }
        }
        self.links[l].conn = Some(conn);
    }

    pub(super) fn roll(&mut self, per_mille: u32) -> bool {
        per_mille > 0 && self.rng.gen_range(0..1000) < per_mille
    }

    /// Puts a frame on the wire; `ops`: how many ops it carries, if it is an `Ops` frame.
    pub(super) fn send(&mut self, l: usize, conn: u64, from: usize, bytes: Vec<u8>, ops: Option<u64>) {
        self.stats.frames_sent += 1;
        self.stats.frame_bytes += bytes.len() as u64;
        if cfg!(debug_assertions) {
            let counted = match Message::decode(&bytes).expect("sessions send well-formed frames") {
                Message::Ops { ops } => Some(ops.len() as u64),
                _ => None,
            };
            assert_eq!(counted, ops, "the session's op count matches the frame");
        }
        if let Some(ops) = ops {
            self.stats.ops_frames += 1;
            self.stats.ops_carried += ops;
            if self.record_ops {
                self.recorded.push(OpsFrame {
                    t: self.t,
                    from: self.links[l].node(from),
                    to: self.links[l].node(1 - from),
                    ops: ops as usize,
                });
            }
        }
        let to = 1 - from;
        if self.roll(self.faults.loss) {
            self.stats.frames_lost += 1;
            return;
        }
        let copies = if self.roll(self.faults.dup) {
            self.stats.frames_duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let (lo, hi) = (self.faults.min_delay_ms.max(1), self.faults.max_delay_ms.max(1));
            let delay = self.rng.gen_range(lo..=hi.max(lo));
            let at = if copy > 0 || self.roll(self.faults.reorder) {
                self.stats.frames_reordered += 1;
                self.t + delay + self.rng.gen_range(0..=2 * hi)
            } else {
                let at = (self.t + delay).max(self.links[l].fifo[to]);
                self.links[l].fifo[to] = at;
                at
            };
            self.wire_seq += 1;
            self.wire.insert(
                (at, self.wire_seq),
                Frame {
                    seq: self.wire_seq,
                    link: l,
                    conn,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }
}
