//! Reads: stories, history, locks, nodes, members, forks, the log, and `verify`, which
//! re-checks every stored op.

use std::collections::BTreeMap;

use super::Node;
use crate::error::Error;
use crate::event::{self, Event, TransitionEvent};
use crate::execution::ExecutionState;
use crate::id::{NodeId, OpId, StoryId};
use crate::keyspace as key;
use crate::op::{SignedOp, UnverifiedOp};
use crate::oplog;
use crate::pipeline::StageKind;
use crate::projection::{Lease, PresenceRecord, Stamp, StoryRecord};
use crate::record::decode_story;
use crate::storage::{self, Store};
use crate::time::Timestamp;
use crate::version::VersionVector;
use crate::view::{
    self, ClaimStatus, Creation, ForkInfo, LostClaim, Member, NodeInfo, OpSummary, Story, Transition,
    VerifyReport,
};

impl<S: Store> Node<S> {
    /// Sends the current stage of every live story through the event stream
    /// (`replay: true`), so a subscriber that starts late can reconcile.
    pub fn replay_state(&self) -> Result<usize, Error> {
        let mut events = Vec::new();
        self.for_each_visible_story(|id, rec| {
            events.push(Event::Transition(TransitionEvent {
                story: id,
                before: None,
                after: rec.stage(),
                op_id: None,
                author: None,
                event: None,
                conflict: false,
                replay: true,
            }));
            Ok(())
        })?;
        event::publish(&self.subscribers, &events);
        Ok(events.len())
    }

    /// Calls `f` with every visible (created, not deleted) story record, in id order.
    fn for_each_visible_story(
        &self,
        mut f: impl FnMut(StoryId, StoryRecord) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.journal.drain()?;
        for kv in self.db.scan_prefix(key::STORIES) {
            let (k, v) = kv?;
            let rec = decode_story(&v)?;
            if rec.visible() {
                f(key::story_from_key(&k)?, rec)?;
            }
        }
        Ok(())
    }

    pub(super) fn record(&self, id: &StoryId) -> Result<StoryRecord, Error> {
        self.journal
            .read(id)?
            .filter(|r| r.created.is_some())
            .ok_or_else(|| Error::NotFound(format!("story {id} not found")))
    }

    fn presence_record(&self, node: &NodeId) -> Result<Option<PresenceRecord>, Error> {
        self.db
            .get(&key::presence(node))?
            .map(|v| PresenceRecord::decode(&v))
            .transpose()
    }

    /// Every presence record, by node.
    fn presence_records(&self) -> Result<BTreeMap<NodeId, PresenceRecord>, Error> {
        let mut out = BTreeMap::new();
        for kv in self.db.scan_prefix(key::PRESENCE) {
            let (k, v) = kv?;
            out.insert(key::presence_from_key(&k)?, PresenceRecord::decode(&v)?);
        }
        Ok(out)
    }

    /// Alive at `now`: the node's last heartbeat op (one that says what its author has seen,
    /// which only a running host's heartbeat does) is fresh. A presence that only announced
    /// a label (`init`, `join`, a build before heartbeats said what they had seen) is not.
    fn alive(&self, p: &PresenceRecord, now: Timestamp) -> bool {
        p.seen.is_some() && now.millis_since(p.heartbeat_at) <= self.stale_ms()
    }

    /// The claims rule, in one place: the status of the story's current claim at `now`,
    /// `None` when it has no live claim. `presence` is every presence record (read once per
    /// query by callers that look at many stories).
    fn claim_status_of(
        &self,
        rec: &StoryRecord,
        presence: &BTreeMap<NodeId, PresenceRecord>,
        now: Timestamp,
    ) -> Option<ClaimStatus> {
        let (stamp, lease) = rec.claims.current()?;
        let hb = presence.get(&lease.node).map(|p| p.heartbeat_at);
        if !self.live(lease, hb, now) {
            return None;
        }
        let me = self.node_id();
        let pending: Vec<NodeId> = presence
            .iter()
            .filter(|(node, p)| {
                **node != me
                    && **node != lease.node
                    && self.is_current_member(node)
                    && self.alive(p, now)
                    && p.seen_of(&lease.node) < stamp.lamport
            })
            .map(|(node, _)| *node)
            .collect();
        Some(ClaimStatus {
            lease: lease.clone(),
            lamport: stamp.lamport,
            confirmed: pending.is_empty(),
            pending,
        })
    }

    /// An admitted member that was not removed and is not quarantined.
    fn is_current_member(&self, node: &NodeId) -> bool {
        self.state
            .members
            .get(node)
            .is_some_and(|m| m.role().is_some() && m.cutoff.is_none())
            && self.state.quarantine(node).is_none()
    }

    /// The story's live claim at `now` and whether it is confirmed: who holds it, and which
    /// alive members have not yet shown that they have seen it. `None`: no live claim. The
    /// rule is [`ClaimStatus`]'s; the CLI, the daemon's API and the bindings all ask here.
    pub fn claim_status(&self, id: &StoryId, now: Timestamp) -> Result<Option<ClaimStatus>, Error> {
        let rec = self.record(id)?;
        Ok(self.claim_status_of(&rec, &self.presence_records()?, now))
    }

    /// Which node a claim op (`author`'s at Lamport `lamport`, made at `wall`, taking over
    /// nobody) displaced, as the merged claims show it: the other node whose claim ranked
    /// just below it and whose lease was still running at `wall`. That node claimed
    /// concurrently (had the author seen its running claim, it would have been refused, or
    /// been a takeover) and lost the story. `None` when it displaced nobody, or when that
    /// node has since written a newer claim or release (the claims now say nothing of it).
    pub fn displaced_by_claim(
        &self,
        story: &StoryId,
        author: &NodeId,
        lamport: u64,
        wall: Timestamp,
    ) -> Result<Option<NodeId>, Error> {
        let rec = match self.record(story) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let stamp = Stamp {
            lamport,
            author: *author,
        };
        let cleared = |e: &crate::projection::Lww<Option<Lease>>| {
            e.stamp.lamport <= rec.claims.cleared.get(&e.stamp.author).copied().unwrap_or(0)
        };
        let below = rec
            .claims
            .entries
            .values()
            .filter(|e| e.stamp < stamp && e.stamp.author != *author && !cleared(e))
            .max_by_key(|e| e.stamp);
        Ok(below
            .and_then(|e| e.value.as_ref())
            .filter(|l| wall < l.expires_at)
            .map(|l| l.node))
    }

    /// Claims this node took whose lease has not run out at `now` but that another node's
    /// claim (a concurrent one that ranks after it, or a takeover) or a forced release
    /// overrode: the node lost those stories and must stop working on them.
    pub fn lost_claims(&self, now: Timestamp) -> Result<Vec<LostClaim>, Error> {
        let me = self.node_id();
        let presence = self.presence_records()?;
        let mut out = Vec::new();
        self.for_each_visible_story(|story, rec| {
            let Some(Some(mine)) = rec.claims.entries.get(&me).map(|e| e.value.as_ref()) else {
                return Ok(());
            };
            if now >= mine.expires_at || rec.claims.current().is_some_and(|(_, l)| l.node == me) {
                return Ok(());
            }
            out.push(LostClaim {
                story,
                lease: mine.clone(),
                winner: self.claim_status_of(&rec, &presence, now).map(|c| c.lease),
            });
            Ok(())
        })?;
        Ok(out)
    }

    /// The story's newest claim entry (its stamp and lease) whether or not it is live at
    /// `now`, and whether it is: what the claim-expired signal needs (`envelope::signals`).
    pub fn claim_entry(&self, id: &StoryId, now: Timestamp) -> Result<Option<(Stamp, Lease, bool)>, Error> {
        let rec = self.record(id)?;
        let Some((stamp, lease)) = rec.claims.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(Some((stamp, lease.clone(), self.live(lease, hb, now))))
    }

    /// One story (deleted stories are returned with `deleted: true`). `now` decides whether
    /// its claim is live and confirmed.
    pub fn story(&self, id: &StoryId, now: Timestamp) -> Result<Story, Error> {
        let rec = self.record(id)?;
        let claim = self.claim_status_of(&rec, &self.presence_records()?, now);
        Ok(view::story_view(id, &rec, claim))
    }

    /// Live (not deleted) stories, sorted by id, optionally only those in one stage.
    pub fn stories(&self, stage: Option<StageKind>, now: Timestamp) -> Result<Vec<Story>, Error> {
        let mut out = Vec::new();
        self.journal.drain()?;
        let presence = self.presence_records()?;
        match stage {
            Some(kind) => {
                let prefix = key::stage_index_prefix(kind);
                for kv in self.db.scan_prefix(&prefix) {
                    let (k, _) = kv?;
                    let (_, id) = key::stage_index_from_key(&k)?;
                    let rec = self.record(&id)?;
                    let claim = self.claim_status_of(&rec, &presence, now);
                    out.push(view::story_view(&id, &rec, claim));
                }
            }
            None => {
                for kv in self.db.scan_prefix(key::STORIES) {
                    let (k, v) = kv?;
                    let rec = decode_story(&v)?;
                    if rec.visible() {
                        let claim = self.claim_status_of(&rec, &presence, now);
                        out.push(view::story_view(&key::story_from_key(&k)?, &rec, claim));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Number of live stories per stage.
    pub fn stage_counts(&self) -> Result<BTreeMap<StageKind, usize>, Error> {
        let mut counts = BTreeMap::new();
        self.journal.drain()?;
        for kind in StageKind::ALL {
            counts.insert(kind, self.db.scan_prefix(&key::stage_index_prefix(kind)).count());
        }
        Ok(counts)
    }

    /// A story's transitions in merge order, with conflicts flagged.
    pub fn history(&self, id: &StoryId) -> Result<Vec<Transition>, Error> {
        Ok(view::history_view(&self.record(id)?))
    }

    /// Who created the story and when: its earliest create op (two nodes may create one
    /// story concurrently; the earliest counts). `at` is the op's wall time, read from the
    /// author's chain (a binary search by Lamport timestamp, which grows along a chain);
    /// `None` if that op is no longer stored.
    pub fn story_creation(&self, id: &StoryId) -> Result<Creation, Error> {
        let rec = self.record(id)?;
        let (stamp, op_id) = rec
            .created
            .ok_or_else(|| Error::NotFound(format!("story {id} not found")))?;
        let mut at = None;
        if let Some(author) = self.state.authors.get(&stamp.author) {
            let (mut lo, mut hi) = (1u64, author.head_seq);
            while lo <= hi {
                let mid = lo + (hi - lo) / 2;
                let Some(op) = oplog::read_op(&self.db, author.idx, mid)? else {
                    break;
                };
                let c = op.content();
                match c.lamport.cmp(&stamp.lamport) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid - 1,
                    std::cmp::Ordering::Equal => {
                        at = (op.id() == op_id).then_some(c.wall);
                        break;
                    }
                }
            }
        }
        Ok(Creation {
            op_id,
            author: stamp.author,
            lamport: stamp.lamport,
            at,
        })
    }

    /// This node's execution state for a story... or any node's.
    pub fn execution_state(&self, id: &StoryId, node: &NodeId) -> Result<ExecutionState, Error> {
        let rec = self.record(id)?;
        Ok(rec
            .execution
            .get(node)
            .map(|s| s.value.clone())
            .unwrap_or_default())
    }

    /// The live merge lock at `now`, if any.
    pub fn merge_lock(&self, now: Timestamp) -> Result<Option<Lease>, Error> {
        Ok(self
            .held_lock(now)?
            .and_then(|(lease, live)| live.then_some(lease)))
    }

    /// A merge lock that is held but no longer live (its holder is dead or its lease ran
    /// out): what [`crate::Command::ClearStaleMergeLock`] would clear.
    pub fn stale_merge_lock(&self, now: Timestamp) -> Result<Option<Lease>, Error> {
        Ok(self
            .held_lock(now)?
            .and_then(|(lease, live)| (!live).then_some(lease)))
    }

    /// The merge lock's current lease, if any, and whether it is live at `now`.
    fn held_lock(&self, now: Timestamp) -> Result<Option<(Lease, bool)>, Error> {
        let set: crate::projection::LeaseSet =
            storage::get(&self.db, key::LOCK, "merge lock")?.unwrap_or_default();
        let Some((_, lease)) = set.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(Some((lease.clone(), self.live(lease, hb, now))))
    }

    /// Every node that published presence, with liveness at `now`: alive only with a fresh
    /// heartbeat of a running host (a node that only ran commands, `init` or `join` never
    /// is).
    pub fn nodes(&self, now: Timestamp) -> Result<Vec<NodeInfo>, Error> {
        let mut out = Vec::new();
        for (node, p) in self.presence_records()? {
            out.push(NodeInfo {
                node,
                alive: self.alive(&p, now),
                label: p.label,
                address: p.address,
                last_heartbeat: p.heartbeat_at,
            });
        }
        Ok(out)
    }

    /// Members and their roles.
    pub fn members(&self) -> Vec<Member> {
        self.state
            .members
            .iter()
            .filter_map(|(node, m)| {
                Some(Member {
                    node: *node,
                    role: m.role()?,
                    removed: m.cutoff.is_some(),
                    rotated_to: m.rotated_to,
                    quarantined: self.state.quarantine(node).is_some(),
                })
            })
            .collect()
    }

    /// Equivocations on record that count: an author's fork is listed only while an op of
    /// the author at the fork seq could otherwise count (`docs/format.md`, "Forks").
    pub fn forks(&self) -> Result<Vec<ForkInfo>, Error> {
        let mut out = Vec::new();
        for node in self.state.authors.keys() {
            let Some(at_seq) = self.state.quarantine(node) else {
                continue;
            };
            let evidence = oplog::evidence_ids(&self.db, node, at_seq)?;
            out.push(ForkInfo {
                author: *node,
                at_seq,
                evidence,
            });
        }
        Ok(out)
    }

    /// Every valid op the holder of `vv` lacks, in Lamport order (so membership ops come
    /// before the ops they admit), plus the evidence of the forks that count
    /// ([`Node::forks`]; `docs/format.md`, "Forks") and the contested removals
    /// ([`Node::contested_removals`]).
    pub fn ops_since(&self, vv: &VersionVector) -> Result<Vec<SignedOp>, Error> {
        let mut out = Vec::new();
        for (node, rec) in &self.state.authors {
            let until = self.state.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            let from = vv.get(node) + 1;
            if from <= until {
                oplog::for_each_op(&self.db, rec.idx, from, |op| {
                    if op.content().seq > until {
                        return Ok(false);
                    }
                    out.push(op);
                    Ok(true)
                })?;
            }
            if let Some(at) = self.state.quarantine(node) {
                out.extend(oplog::evidence(&self.db, node, at)?);
            }
        }
        out.extend(self.contested_removals()?);
        out.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        Ok(out)
    }

    /// What a holder of `vv` lacks as one bundle: [`Node::export_chunks`] with no size
    /// bound (the valid ops in Lamport order, then fork evidence). The whole export is in
    /// memory; for a large history use `export_chunks` and move the bundles one by one.
    pub fn export_since(&self, vv: &VersionVector) -> Result<Vec<u8>, Error> {
        let chunks = self
            .export_chunks(vv, usize::MAX)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(crate::bundle::join_bundles(&chunks))
    }

    /// Stored ops, optionally of one author, in Lamport order.
    pub fn log(&self, author: Option<&NodeId>) -> Result<Vec<OpSummary>, Error> {
        let mut ops = self.ops_since(&VersionVector::default())?;
        if let Some(a) = author {
            ops.retain(|op| op.content().author == *a);
        }
        Ok(ops.iter().map(OpSummary::of).collect())
    }

    /// Re-checks every stored op: segment checksums, decoding, signatures (`verify_strict`),
    /// per-author seq contiguity, hash chain and Lamport order, and the recorded heads.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for (node, rec) in &self.state.authors {
            let mut expected_seq = 1u64;
            let mut prev: Option<OpId> = None;
            let mut lamport = 0u64;
            oplog::for_each_segment(&self.db, rec.idx, |first, ops| {
                let ops = match ops {
                    Ok(ops) => ops,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("author {}: segment at seq {first}: {e}", node.short()));
                        return;
                    }
                };
                if first != expected_seq {
                    report.problems.push(format!(
                        "author {}: segment starts at seq {first}, expected {expected_seq}",
                        node.short()
                    ));
                }
                for bytes in ops {
                    report.ops_checked += 1;
                    let op = match UnverifiedOp::decode(&bytes) {
                        Ok(op) => op,
                        Err(e) => {
                            report.problems.push(format!(
                                "author {}: op after seq {}: {e}",
                                node.short(),
                                expected_seq - 1
                            ));
                            continue;
                        }
                    };
                    let c = op.content().clone();
                    if c.author != *node {
                        report.problems.push(format!(
                            "author {}: seq {} is signed by {}",
                            node.short(),
                            c.seq,
                            c.author.short()
                        ));
                    }
                    if c.seq != expected_seq {
                        report.problems.push(format!(
                            "author {}: found seq {}, expected {expected_seq}",
                            node.short(),
                            c.seq
                        ));
                    }
                    if c.prev != prev {
                        report.problems.push(format!(
                            "author {}: seq {} breaks the hash chain",
                            node.short(),
                            c.seq
                        ));
                    }
                    if c.lamport <= lamport {
                        report.problems.push(format!(
                            "author {}: seq {} does not increase the Lamport clock",
                            node.short(),
                            c.seq
                        ));
                    }
                    let id = op.id();
                    if let Err((_, e)) = op.verify() {
                        report
                            .problems
                            .push(format!("author {}: seq {}: {e}", node.short(), c.seq));
                    }
                    expected_seq = c.seq + 1;
                    prev = Some(id);
                    lamport = c.lamport;
                    progress(report.ops_checked);
                }
            })?;
            if expected_seq - 1 != rec.head_seq || prev != rec.head_id {
                report.problems.push(format!(
                    "author {}: store holds ops up to seq {}, its record says {}",
                    node.short(),
                    expected_seq - 1,
                    rec.head_seq
                ));
            }
        }
        self.journal.drain()?;
        for kv in self.db.scan_prefix(key::STORIES) {
            let (k, v) = kv?;
            if let Err(e) = decode_story(&v) {
                report.problems.push(format!(
                    "story {}: {e}",
                    String::from_utf8_lossy(k.get(1..).unwrap_or_default())
                ));
            }
        }
        report.forks = self.forks()?;
        report.ok = report.problems.is_empty();
        Ok(report)
    }
}
