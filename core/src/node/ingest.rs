//! Remote ops: verification (in parallel for large inputs), admission in Lamport order,
//! the bounded buffer of ops that wait for a predecessor, and the rebuild of the projection
//! after a removal or an equivocation voided ops already merged.

use super::{quarantined, Node};
use crate::bundle::decode_bundle;
use crate::error::Error;
use crate::event::Event;
use crate::id::{NodeId, OpId};
use crate::keyspace as key;
use crate::merge::{Admission, State, Working};
use crate::op::{verify_ops, SignedOp, UnverifiedOp};
use crate::oplog;
use crate::reject::RejectReason;
use crate::storage::{Store, WriteBatch};

/// One op an ingest refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The op, when it decoded.
    pub op_id: Option<OpId>,
    /// Its claimed author, when it decoded.
    pub author: Option<NodeId>,
    /// Its claimed seq, when it decoded.
    pub seq: Option<u64>,
    /// Why.
    pub reason: RejectReason,
}

/// What an ingest did.
///
/// An ingest that refuses ops still returns `Ok`: the refusals are in
/// [`IngestReport::rejected`] (for instance every op of another cluster's bundle, with
/// `applied == 0`). Look at it.
#[must_use = "refused ops are reported in IngestReport::rejected, not as an Err"]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// New ops merged and stored.
    pub applied: usize,
    /// Ops we already held.
    pub duplicates: usize,
    /// Ops held back until their predecessors arrive.
    pub buffered: usize,
    /// Ops refused.
    pub rejected: Vec<Rejection>,
    /// Authors found equivocating (now quarantined).
    pub forks: Vec<NodeId>,
    /// Events published for this ingest.
    pub events: Vec<Event>,
}

impl<S: Store> Node<S> {
    /// Merges remote ops: verifies signatures (in batches, on several threads for large
    /// inputs), checks each author's hash chain, membership and subspace, buffers ops
    /// whose predecessors are missing (bounded), and commits in atomic batches.
    pub fn ingest(&mut self, ops: Vec<UnverifiedOp>) -> Result<IngestReport, Error> {
        let mut report = IngestReport::default();
        let cluster = self.state.cluster.id;
        let (ours, foreign): (Vec<_>, Vec<_>) =
            ops.into_iter().partition(|op| op.content().cluster == cluster);
        for op in foreign {
            report.rejected.push(Rejection {
                op_id: Some(op.id()),
                author: Some(op.content().author),
                seq: Some(op.content().seq),
                reason: RejectReason::WrongCluster {
                    expected: cluster,
                    got: op.content().cluster,
                },
            });
        }
        let ours = self.drop_held(ours, &mut report)?;
        let mut verified = Vec::with_capacity(ours.len());
        for r in self.verify_parallel(ours) {
            match r {
                Ok(op) => verified.push(op),
                Err((op, e)) => report.rejected.push(Rejection {
                    op_id: Some(op.id()),
                    author: Some(op.content().author),
                    seq: Some(op.content().seq),
                    reason: e.into(),
                }),
            }
        }
        verified.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        let batch = self.config.ingest_batch.max(1);
        let mut iter = verified.into_iter().peekable();
        while iter.peek().is_some() {
            let chunk: Vec<SignedOp> = iter.by_ref().take(batch).collect();
            self.ingest_verified(chunk, &mut report)?;
        }
        Ok(report)
    }

    /// Decodes a bundle (see [`crate::encode_bundle`]), or a bundle stream (bundles back to
    /// back, as [`Node::export_chunks`] yields them and `huskies export` writes them), and
    /// ingests it bundle by bundle. Ops that do not decode are reported as rejections; a
    /// broken bundle anywhere in `bytes` is an error and ingests nothing.
    ///
    /// Refused ops (another cluster's, bad signatures, ...) do not make this an `Err`: they
    /// are in the report's `rejected`, with `applied` counting what was merged.
    pub fn ingest_bundle(&mut self, bytes: &[u8]) -> Result<IngestReport, Error> {
        let bundles = crate::bundle::split_bundles(bytes)?;
        let mut report = IngestReport::default();
        for bundle in bundles {
            report.absorb(self.ingest_one_bundle(bundle)?);
        }
        Ok(report)
    }

    fn ingest_one_bundle(&mut self, bytes: &[u8]) -> Result<IngestReport, Error> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for r in decode_bundle(bytes)? {
            match r {
                Ok(op) => good.push(op),
                Err(e) => bad.push(Rejection {
                    op_id: None,
                    author: None,
                    seq: None,
                    reason: e.into(),
                }),
            }
        }
        let mut report = self.ingest(good)?;
        report.rejected.extend(bad);
        Ok(report)
    }

    /// Counts as duplicates, without verifying them again, the ops whose bytes equal an op
    /// this node stores: that op's signature was checked when it was stored, and the same
    /// bytes carry the same signature. In a mesh every op arrives once from each peer, so
    /// most of what a busy node receives is held already, and verifying a signature costs
    /// far more than reading the author's few segments. The rest (new ops, other bytes at a
    /// held seq: forks, bad signatures) is verified and admitted as before. An author's held
    /// seqs are read as one range, and only when that range is not much wider than the ops
    /// asking for it (sparse claims are simply verified).
    fn drop_held(
        &self,
        ops: Vec<UnverifiedOp>,
        report: &mut IngestReport,
    ) -> Result<Vec<UnverifiedOp>, Error> {
        use std::collections::BTreeMap;
        // Per author with held seqs among the ops: the lowest and highest such seq, and count.
        let mut ranges: BTreeMap<NodeId, (u64, u64, u64)> = BTreeMap::new();
        for op in &ops {
            let c = op.content();
            if self
                .state
                .authors
                .get(&c.author)
                .is_some_and(|rec| c.seq <= rec.head_seq)
            {
                let r = ranges.entry(c.author).or_insert((c.seq, c.seq, 0));
                r.0 = r.0.min(c.seq);
                r.1 = r.1.max(c.seq);
                r.2 += 1;
            }
        }
        let mut held: BTreeMap<(NodeId, u64), Vec<u8>> = BTreeMap::new();
        for (author, (low, high, count)) in ranges {
            if high - low + 1 > 2 * count + 32 {
                continue;
            }
            let idx = self.state.authors[&author].idx;
            oplog::for_each_op_bytes(&self.db, idx, author, low, |op| {
                if op.seq > high {
                    return Ok(false);
                }
                held.insert((author, op.seq), op.bytes);
                Ok(true)
            })?;
        }
        if held.is_empty() {
            return Ok(ops);
        }
        let mut rest = Vec::with_capacity(ops.len());
        for op in ops {
            let c = op.content();
            if held
                .get(&(c.author, c.seq))
                .is_some_and(|b| b.as_slice() == op.bytes())
            {
                report.duplicates += 1;
            } else {
                rest.push(op);
            }
        }
        Ok(rest)
    }

    fn verify_parallel(
        &mut self,
        ops: Vec<UnverifiedOp>,
    ) -> Vec<Result<SignedOp, (UnverifiedOp, crate::op::VerifyError)>> {
        const MIN_PER_THREAD: usize = 256;
        let threads = self
            .config
            .verify_threads
            .clamp(1, 64)
            .min(ops.len() / MIN_PER_THREAD)
            .max(1);
        if threads == 1 {
            return verify_ops(ops, &mut self.keys);
        }
        let per = ops.len().div_ceil(threads);
        let mut chunks = Vec::with_capacity(threads);
        let mut rest = ops;
        while !rest.is_empty() {
            let tail = rest.split_off(per.min(rest.len()));
            chunks.push(std::mem::replace(&mut rest, tail));
        }
        let keys = &self.keys;
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let mut cache = keys.clone();
                    s.spawn(move || (verify_ops(chunk, &mut cache), cache))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("verification thread panicked"))
                .collect()
        });
        let mut out = Vec::new();
        for (r, cache) in results {
            self.keys.extend(cache);
            out.extend(r);
        }
        out
    }

    fn ingest_verified(&mut self, ops: Vec<SignedOp>, report: &mut IngestReport) -> Result<(), Error> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories))
            .expecting(ops.len());
        let quarantined_before: Vec<NodeId> = quarantined(&self.state);
        for op in ops {
            let mut next = Some(op);
            while let Some(op) = next.take() {
                let (author, seq, id) = (op.content().author, op.content().seq, op.id());
                match w.admit(op)? {
                    Admission::Applied => {
                        report.applied += 1;
                        if let Some(waiting) = self.buffer.remove(&(author, seq + 1)) {
                            self.buffered_bytes -= waiting.bytes().len();
                            report.buffered = report.buffered.saturating_sub(1);
                            next = Some(waiting);
                        }
                    }
                    Admission::Duplicate => report.duplicates += 1,
                    Admission::Fork => {}
                    Admission::Gap(op) => {
                        if self.buffer.len() >= self.config.max_buffered_ops
                            || self.buffered_bytes + op.bytes().len() > self.config.max_buffered_bytes
                        {
                            report.rejected.push(Rejection {
                                op_id: Some(id),
                                author: Some(author),
                                seq: Some(seq),
                                reason: RejectReason::BufferFull,
                            });
                        } else if !self.buffer.contains_key(&(author, seq)) {
                            self.buffered_bytes += op.bytes().len();
                            self.buffer.insert((author, seq), op);
                            report.buffered += 1;
                        }
                    }
                    Admission::Rejected(reason) => {
                        report.rejected.push(Rejection {
                            op_id: Some(id),
                            author: Some(author),
                            seq: Some(seq),
                            reason,
                        });
                    }
                }
            }
        }
        if w.has_changes() {
            let events = self.commit(w, S::Batch::default())?;
            report.events.extend(events);
        }
        debug_assert_eq!(
            self.buffered_bytes,
            self.buffer.values().map(|o| o.bytes().len()).sum::<usize>(),
            "the buffer's byte count matches a recount"
        );
        for node in quarantined(&self.state) {
            if !quarantined_before.contains(&node) {
                report.forks.push(node);
                self.buffer.retain(|(a, _), _| *a != node);
            }
        }
        self.buffered_bytes = self.buffer.values().map(|o| o.bytes().len()).sum();
        Ok(())
    }

    /// Recomputes the projection from the stored ops after a removal or an equivocation
    /// voided ops that were already merged. Rare; not on any hot path. Runs as one atomic
    /// batch, and is resumed at open if a crash interrupts it.
    pub(super) fn rebuild(&mut self) -> Result<(), Error> {
        self.stories.clear();
        let old = self.state.clone();
        let mut ops = Vec::new();
        for (node, rec) in &old.authors {
            let until = old.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            oplog::for_each_op(&self.db, rec.idx, 1, |op| {
                if op.content().seq > until {
                    return Ok(false);
                }
                ops.push(op);
                Ok(true)
            })?;
        }
        ops.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        let mut fresh = State::new(old.cluster.id);
        fresh.clock = old.clock;
        fresh.next_idx = old.next_idx;
        for (node, rec) in &old.authors {
            let mut r = rec.clone();
            r.head_seq = 0;
            r.head_id = None;
            r.head_lamport = 0;
            r.last_segment = None;
            fresh.authors.insert(*node, r);
        }
        for (node, m) in &old.members {
            if let Some(c) = m.cutoff {
                fresh.members.entry(*node).or_default().cutoff = Some(c);
            }
        }
        // Everything staged is folded into the story keys first, so that removing those
        // keys below leaves no journal entry behind to bring an old record back.
        self.journal.drain()?;
        let mut batch = S::Batch::default();
        for prefix in key::REBUILT {
            for kv in self.db.scan_prefix(prefix) {
                batch.remove(&kv?.0);
            }
        }
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::fresh(&db, &journal, fresh, self.node_id());
        for op in ops {
            // Ops that no longer pass (e.g. added by a voided admin op) are dropped.
            let _ = w.admit(op)?;
        }
        w.state.rebuild_needed = false;
        w.events.clear();
        w.mark_all_records_dirty();
        let committed = w.commit_with(batch)?;
        self.state = committed.state;
        self.stories = committed.cache;
        // A rebuild may shorten this node's own chain on purpose (ops past a cutoff are
        // void): the mark follows it down, so that the next open does not take the shorter
        // chain for a store that lost ops.
        self.record_mark(true)
    }
}
