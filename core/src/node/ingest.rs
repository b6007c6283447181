//! Remote ops: verification (in parallel for large inputs), admission in Lamport order,
//! the bounded buffer of ops that wait for a predecessor, and the rebuild of the projection
//! after a removal or an equivocation voided ops already merged.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender};

use ed25519_dalek::VerifyingKey;

use super::{quarantined, Node};
use crate::bundle::decode_bundle;
use crate::error::Error;
use crate::event::Event;
use crate::id::{ClusterId, NodeId, OpId};
use crate::keyspace as key;
use crate::merge::{sets_cutoff, Admission, State, Working};
use crate::op::{verify_ops, SignedOp, UnverifiedOp};
use crate::oplog;
use crate::reject::RejectReason;
use crate::storage::{Store, WriteBatch};
use std::collections::BTreeSet;

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
    /// Ops refused. An op refused for its author's authority (unknown, unauthorized,
    /// cut off) is kept for a while and tried again after an ingest that changes
    /// membership: if a later op of the same ingest gives it that authority, it is counted
    /// in `applied` instead and not listed here; if a later ingest does, that ingest
    /// counts it.
    pub rejected: Vec<Rejection>,
    /// Authors found equivocating (now quarantined).
    pub forks: Vec<NodeId>,
    /// Admins' removals that were void on arrival only because a concurrent removal cut
    /// their author just below them: kept, sent on, and weighed against that removal by
    /// the rebuild this ingest ran (`docs/format.md`, "Removals, rotations and cutoffs").
    /// Whether one counts is in the projection (`Node::members`), not here.
    pub contested: usize,
    /// Events published for this ingest.
    pub events: Vec<Event>,
}

/// The half of an ingest that needs no node: sorting out ops of another cluster and
/// checking signatures (in batches, on several threads for large inputs). It holds the
/// cluster id (fixed for a node's life) and a cache of decoded author keys, so it can run
/// on another thread while the node merges earlier ops ([`Node::ingest_pipelined`]); what
/// it decides depends on nothing the merge changes.
pub(crate) struct Verifier {
    cluster: ClusterId,
    keys: HashMap<NodeId, VerifyingKey>,
    threads: usize,
}

/// One ingest's input after [`Verifier::verify`]: what it refused and the good ops in the
/// order admission takes them.
pub(crate) struct Verified {
    /// Ops of another cluster, then ops whose signature fails, each in input order.
    rejected: Vec<Rejection>,
    /// The good ops, sorted by `(lamport, author, seq)` (stable: equal keys keep input order).
    ops: Vec<SignedOp>,
}

impl Verifier {
    /// Refuses ops of another cluster, verifies the rest and sorts the good ones.
    pub(crate) fn verify(&mut self, ops: Vec<UnverifiedOp>) -> Verified {
        let cluster = self.cluster;
        let (ours, foreign): (Vec<_>, Vec<_>) =
            ops.into_iter().partition(|op| op.content().cluster == cluster);
        let mut rejected: Vec<Rejection> = foreign.iter().map(|op| wrong_cluster(op, cluster)).collect();
        let mut good = Vec::with_capacity(ours.len());
        for r in self.verify_parallel(ours) {
            match r {
                Ok(op) => good.push(op),
                Err((op, e)) => rejected.push(bad_signature(&op, e)),
            }
        }
        good.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        Verified { rejected, ops: good }
    }

    fn verify_parallel(
        &mut self,
        ops: Vec<UnverifiedOp>,
    ) -> Vec<Result<SignedOp, (UnverifiedOp, crate::op::VerifyError)>> {
        const MIN_PER_THREAD: usize = 256;
        let threads = self.threads.clamp(1, 64).min(ops.len() / MIN_PER_THREAD).max(1);
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
}

/// The rejection of an op of another cluster.
fn wrong_cluster(op: &UnverifiedOp, expected: ClusterId) -> Rejection {
    Rejection {
        op_id: Some(op.id()),
        author: Some(op.content().author),
        seq: Some(op.content().seq),
        reason: RejectReason::WrongCluster {
            expected,
            got: op.content().cluster,
        },
    }
}

/// The rejection of an op whose signature (or author key) fails.
fn bad_signature(op: &UnverifiedOp, e: crate::op::VerifyError) -> Rejection {
    Rejection {
        op_id: Some(op.id()),
        author: Some(op.content().author),
        seq: Some(op.content().seq),
        reason: e.into(),
    }
}

/// A framed bundle's ops: those that decode, and a rejection for each that does not.
pub(crate) fn decode_split(bytes: &[u8]) -> Result<(Vec<UnverifiedOp>, Vec<Rejection>), Error> {
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
    Ok((good, bad))
}

impl<S: Store> Node<S> {
    /// Merges remote ops: verifies signatures (in batches, on several threads for large
    /// inputs), checks each author's hash chain, membership and subspace, buffers ops
    /// whose predecessors are missing (bounded), and commits in atomic batches.
    pub fn ingest(&mut self, ops: Vec<UnverifiedOp>) -> Result<IngestReport, Error> {
        let mut held = IngestReport::default();
        let ops = self.drop_held(ops, &mut held)?;
        let batch = self.config.ingest_batch.max(1);
        let mut report = if ops.len() > batch {
            self.ingest_large(ops, batch)?
        } else {
            let mut verifier = self.verifier();
            let verified = verifier.verify(ops);
            self.keys = verifier.keys;
            self.ingest_checked(verified)?
        };
        report.duplicates += held.duplicates;
        Ok(report)
    }

    /// [`Node::ingest`] of more than one batch (a sync catch-up's frames, a bundle): the ops
    /// are sorted first, then verified a batch at a time on a second thread while this one
    /// admits and commits the batch before. Same result as verifying everything first:
    /// the same batches of `batch` verified ops in the same order, and the rejections in
    /// the same order (another cluster's, then bad signatures in input order, then
    /// admission's).
    fn ingest_large(&mut self, ops: Vec<UnverifiedOp>, batch: usize) -> Result<IngestReport, Error> {
        let cluster = self.state.cluster.id;
        let (ours, foreign): (Vec<_>, Vec<_>) =
            ops.into_iter().partition(|op| op.content().cluster == cluster);
        let mut rejected: Vec<Rejection> = foreign.iter().map(|op| wrong_cluster(op, cluster)).collect();
        let mut sorted: Vec<(usize, UnverifiedOp)> = ours.into_iter().enumerate().collect();
        sorted.sort_by_key(|(_, op)| (op.content().lamport, op.content().author, op.content().seq));
        let mut pieces = std::collections::VecDeque::new();
        let mut rest = sorted.into_iter().peekable();
        while rest.peek().is_some() {
            let piece: (Vec<usize>, Vec<UnverifiedOp>) = rest.by_ref().take(batch).unzip();
            pieces.push_back(piece);
        }
        let mut failed: Vec<(usize, Rejection)> = Vec::new();
        let mut admitted = IngestReport::default();
        self.with_verifier(Verifier::verify_parallel, |node, to_worker, checked| {
            const GONE: &str = "the verification thread ended early";
            let mut sent = std::collections::VecDeque::with_capacity(2);
            let mut hand_over = |sent: &mut std::collections::VecDeque<Vec<usize>>| {
                if let Some((at, ops)) = pieces.pop_front() {
                    to_worker.send(ops).expect(GONE);
                    sent.push_back(at);
                }
            };
            hand_over(&mut sent);
            let mut good: Vec<SignedOp> = Vec::with_capacity(batch);
            while let Some(at) = sent.pop_front() {
                hand_over(&mut sent);
                for (r, i) in checked.recv().expect(GONE).into_iter().zip(at) {
                    match r {
                        Ok(op) => good.push(op),
                        Err((op, e)) => failed.push((i, bad_signature(&op, e))),
                    }
                }
                while good.len() >= batch {
                    let later = good.split_off(batch);
                    node.ingest_verified(std::mem::replace(&mut good, later), &mut admitted)?;
                }
            }
            if !good.is_empty() {
                node.ingest_verified(good, &mut admitted)?;
            }
            Ok::<(), Error>(())
        })?;
        failed.sort_by_key(|(i, _)| *i);
        rejected.extend(failed.into_iter().map(|(_, r)| r));
        rejected.append(&mut admitted.rejected);
        admitted.rejected = rejected;
        self.retry_parked(&mut admitted)?;
        Ok(admitted)
    }

    /// Runs `body` beside a verification thread that holds the node's [`Verifier`]: each
    /// input `body` sends is turned by `work` into an output that comes back, in order.
    /// Hanging up both channels when `body` returns ends the thread whatever it was doing;
    /// the key cache it grew comes back to the node.
    fn with_verifier<I: Send, O: Send, R>(
        &mut self,
        work: fn(&mut Verifier, I) -> O,
        body: impl FnOnce(&mut Self, &SyncSender<I>, &Receiver<O>) -> R,
    ) -> R {
        let verifier = self.verifier();
        let (result, verifier) = std::thread::scope(|s| {
            let (to_worker, inbox) = std::sync::mpsc::sync_channel::<I>(1);
            let (to_main, outbox) = std::sync::mpsc::sync_channel::<O>(1);
            let worker = s.spawn(move || {
                let mut verifier = verifier;
                for input in inbox {
                    if to_main.send(work(&mut verifier, input)).is_err() {
                        break;
                    }
                }
                verifier
            });
            let result = body(self, &to_worker, &outbox);
            drop(to_worker);
            drop(outbox);
            (result, worker.join().expect("verification thread panicked"))
        });
        self.keys = verifier.keys;
        result
    }

    /// [`Node::ingest`] without the pipeline: every op verified first, then admitted in
    /// batches (the reference the pipelined paths are tested against).
    #[cfg(test)]
    pub(crate) fn ingest_verifying_first(&mut self, ops: Vec<UnverifiedOp>) -> Result<IngestReport, Error> {
        let mut verifier = self.verifier();
        let verified = verifier.verify(ops);
        self.keys = verifier.keys;
        self.ingest_checked(verified)
    }

    /// The node's [`Verifier`], taking its key cache (give it back with `self.keys = ..`).
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

    fn verifier(&mut self) -> Verifier {
        Verifier {
            cluster: self.state.cluster.id,
            keys: std::mem::take(&mut self.keys),
            threads: self.config.verify_threads,
        }
    }

    /// The node's half of [`Node::ingest`]: admission and commits, in batches of
    /// `NodeConfig::ingest_batch` verified ops.
    fn ingest_checked(&mut self, verified: Verified) -> Result<IngestReport, Error> {
        let mut report = IngestReport {
            rejected: verified.rejected,
            ..IngestReport::default()
        };
        self.ingest_sorted(verified.ops, &mut report)?;
        self.retry_parked(&mut report)?;
        Ok(report)
    }

    /// Admits verified ops sorted for admission, in batches of `NodeConfig::ingest_batch`.
    fn ingest_sorted(&mut self, ops: Vec<SignedOp>, report: &mut IngestReport) -> Result<(), Error> {
        let batch = self.config.ingest_batch.max(1);
        let mut iter = ops.into_iter().peekable();
        while iter.peek().is_some() {
            let chunk: Vec<SignedOp> = iter.by_ref().take(batch).collect();
            self.ingest_verified(chunk, report)?;
        }
        Ok(())
    }

    /// Keeps `op`, refused for its author's authority, to be tried again
    /// ([`Node::retry_parked`]), unless the park is full (then it stays refused, as it
    /// always was: sync sends it again).
    fn park(&mut self, op: SignedOp) {
        let len = op.bytes().len();
        if self.parked.contains_key(&op.id())
            || self.parked.len() >= self.config.max_buffered_ops
            || self.parked_bytes + len > self.config.max_buffered_bytes
        {
            return;
        }
        self.parked_bytes += len;
        self.parked.insert(op.id(), op);
    }

    /// Tries the parked ops again after an ingest that changed membership, roles, cutoffs
    /// or quarantines (an admission, fork evidence voiding a removal or a demotion, a
    /// rebuild), and again after each round that admitted one, until a round admits
    /// nothing. Bounded: every round but the last admits at least one parked op, and each
    /// leaves the park for good. So an op refused for its author's authority counts
    /// whenever a later op of the same ingest, or of a later one, gives it that authority:
    /// what a stream keeps does not depend on how it is cut into ingests (chunks of an
    /// import, frames of a sync), nor on the order within one.
    ///
    /// In `report` (this ingest's), a parked op that now counts loses its rejection, and
    /// one refused again for another reason has that reason; one refused again for
    /// authority keeps its first rejection. Found by the seeded
    /// `import::tests::a_pipelined_import_matches_sequential_ingest_seeded`
    /// (seed 1615437209738749185, `chunking_does_not_change_the_store`).
    fn retry_parked(&mut self, report: &mut IngestReport) -> Result<(), Error> {
        while std::mem::take(&mut self.authority_changed) && !self.parked.is_empty() {
            let mut ops: Vec<SignedOp> = std::mem::take(&mut self.parked).into_values().collect();
            self.parked_bytes = 0;
            ops.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
            let tried: Vec<OpId> = ops.iter().map(SignedOp::id).collect();
            let mut round = IngestReport::default();
            self.ingest_sorted(ops, &mut round)?;
            let left: BTreeSet<OpId> = tried
                .into_iter()
                .filter(|id| !self.parked.contains_key(id))
                .collect();
            report
                .rejected
                .retain(|r| r.op_id.is_none_or(|id| !left.contains(&id)));
            round
                .rejected
                .retain(|r| r.op_id.is_none_or(|id| !self.parked.contains_key(&id)));
            let admitted = round.applied;
            report.absorb(round);
            if admitted == 0 {
                break;
            }
        }
        if self.parked.is_empty() {
            self.authority_changed = false;
        }
        Ok(())
    }

    /// Ingests a sequence of inputs as [`Node::ingest`] would one after another — the same
    /// reports, events, rejections and stored state — but verifies each input on a second
    /// thread while this one merges and persists the input before it, so a catching-up
    /// node uses two cores for its two halves (and, with `NodeConfig::verify_threads`,
    /// more for the signatures). `each(node, tag, report)` is called with every input's
    /// tag and report, in order, right after its commit.
    ///
    /// Memory stays bounded: besides the input being merged, one input is verified and
    /// one more is read ahead. An `Err` from `inputs` is returned after the inputs before
    /// it are ingested (and `each` called for them); an error of an ingest or of `each`
    /// stops at once (later inputs are not ingested).
    pub(crate) fn ingest_pipelined<T>(
        &mut self,
        mut inputs: impl Iterator<Item = Result<(T, Vec<UnverifiedOp>), Error>>,
        mut each: impl FnMut(&mut Self, T, IngestReport) -> Result<(), Error>,
    ) -> Result<(), Error> {
        self.with_verifier(Verifier::verify, |node, to_worker, verified| {
            node.drive_pipeline(&mut inputs, to_worker, verified, &mut each)
        })
    }

    fn drive_pipeline<T>(
        &mut self,
        inputs: &mut impl Iterator<Item = Result<(T, Vec<UnverifiedOp>), Error>>,
        to_worker: &SyncSender<Vec<UnverifiedOp>>,
        verified: &Receiver<Verified>,
        each: &mut impl FnMut(&mut Self, T, IngestReport) -> Result<(), Error>,
    ) -> Result<(), Error> {
        const GONE: &str = "the verification thread ended early";
        // Tags of the inputs handed to the worker, oldest first.
        let mut waiting = std::collections::VecDeque::with_capacity(2);
        let mut failed = None;
        let mut hand_over =
            |waiting: &mut std::collections::VecDeque<T>, failed: &mut Option<Error>| match inputs.next() {
                Some(Ok((tag, ops))) => {
                    to_worker.send(ops).expect(GONE);
                    waiting.push_back(tag);
                }
                Some(Err(e)) => *failed = Some(e),
                None => {}
            };
        hand_over(&mut waiting, &mut failed);
        while let Some(tag) = waiting.pop_front() {
            // The next input is read (and queued for the worker) before this one is
            // merged, so the worker verifies it while this thread merges.
            if failed.is_none() {
                hand_over(&mut waiting, &mut failed);
            }
            let checked = verified.recv().expect(GONE);
            let report = self.ingest_checked(checked)?;
            each(self, tag, report)?;
        }
        failed.map_or(Ok(()), Err)
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
        let inputs = bundles.into_iter().map(|bundle| {
            let (good, bad) = decode_split(bundle)?;
            Ok((bad, good))
        });
        let mut report = IngestReport::default();
        self.ingest_pipelined(inputs, |_, bad, mut one| {
            one.rejected.extend(bad);
            report.absorb(one);
            Ok(())
        })?;
        Ok(report)
    }

    fn ingest_verified(&mut self, ops: Vec<SignedOp>, report: &mut IngestReport) -> Result<(), Error> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories))
            .expecting(ops.len());
        let quarantined_before: Vec<NodeId> = quarantined(&self.state);
        for op in ops {
            // The op, then the buffered ops its admission lets through: every op waiting
            // for the seq after it (more than one is a fork, found by the `ingest` fuzz
            // target: fuzz/regressions/ingest/second-op-for-a-buffered-seq-dropped), and
            // so on down the chain.
            let mut next = std::collections::VecDeque::from([op]);
            while let Some(op) = next.pop_front() {
                let (author, seq, id) = (op.content().author, op.content().seq, op.id());
                match w.admit(op)? {
                    Admission::Applied => {
                        report.applied += 1;
                        let after = seq.saturating_add(1);
                        let lo = (author, after, OpId::from_bytes([0; 32]));
                        let hi = (author, after, OpId::from_bytes([0xff; 32]));
                        let waiting: Vec<_> = self.buffer.range(lo..=hi).map(|(k, _)| *k).collect();
                        for k in waiting {
                            let op = self.buffer.remove(&k).expect("listed");
                            self.buffered_bytes -= op.bytes().len();
                            report.buffered = report.buffered.saturating_sub(1);
                            next.push_back(op);
                        }
                    }
                    Admission::Duplicate => report.duplicates += 1,
                    Admission::Contested => report.contested += 1,
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
                        } else if !self.buffer.contains_key(&(author, seq, id)) {
                            self.buffered_bytes += op.bytes().len();
                            self.buffer.insert((author, seq, id), op);
                            report.buffered += 1;
                        }
                    }
                    Admission::AwaitingAuthority(op, reason) => {
                        self.park(op);
                        report.rejected.push(Rejection {
                            op_id: Some(id),
                            author: Some(author),
                            seq: Some(seq),
                            reason,
                        });
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
        if w.touches_authority() {
            self.authority_changed = true;
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
                self.buffer.retain(|(a, _, _), _| *a != node);
            }
        }
        self.buffered_bytes = self.buffer.values().map(|o| o.bytes().len()).sum();
        Ok(())
    }

    /// Recomputes the projection from the stored ops after a removal or an equivocation
    /// voided ops that were already merged. Rare; not on any hot path. Runs as one atomic
    /// batch, and is resumed at open if a crash interrupts it.
    ///
    /// Cutoffs come from the stored ops that set them (removals and key rotations), never
    /// from the old records: a cutoff whose op is void would stay here but never travel,
    /// and a peer would diverge (found by the `ingest` fuzz target,
    /// fuzz/regressions/ingest/removal-voids-its-own-admission). The replay starts with
    /// every stored setter's cutoff; if some setter is then void (a removal that voids its
    /// own author's admission, or one whose author another cutoff voided), the setters
    /// void even with no cutoff at all are refused, then the newest void setter in
    /// Lamport order, one per replay, until every setter left counts. The stored ops here
    /// are the chains and the held setters (`R`: contested removals, and the setters an
    /// earlier rebuild left void, which are held again at the end). The answer is a
    /// function of those, so every replica that holds them reaches it; see
    /// `docs/format.md`, "Removals, rotations and cutoffs".
    pub(super) fn rebuild(&mut self) -> Result<(), Error> {
        self.stories.clear();
        let old = self.state.clone();
        let mut ops = Vec::new();
        for rec in old.authors.values() {
            let until = rec
                .quarantined_at
                .map_or(u64::MAX, |q| q.saturating_sub(1))
                .min(rec.head_seq);
            oplog::for_each_op(&self.db, rec.idx, 1, |op| {
                if op.content().seq > until {
                    return Ok(false);
                }
                ops.push(op);
                Ok(true)
            })?;
        }
        // Contested removals (`R`) are weighed with the stored chains; one that a replay
        // admits joins its author's chain.
        let held: BTreeSet<OpId> = ops.iter().map(SignedOp::id).collect();
        ops.extend(
            oplog::contested(&self.db)?
                .into_iter()
                .filter(|op| !held.contains(&op.id())),
        );
        ops.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        let setters: Vec<(OpId, NodeId, u64)> = ops.iter().filter_map(sets_cutoff).collect();
        let (db, journal) = (self.db.clone(), self.journal.clone());
        // One replay of `ops` with the cutoffs of the setters `with` (none when `None`),
        // refusing `refused`: the working set, and the setters left void in it.
        let replay = |with: Option<&BTreeSet<OpId>>, refused: &BTreeSet<OpId>| {
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
            for (id, node, cutoff) in &setters {
                if with.is_some_and(|w| w.contains(id)) {
                    let m = fresh.members.entry(*node).or_default();
                    m.cutoff = Some(m.cutoff.map_or(*cutoff, |c| c.min(*cutoff)));
                }
            }
            let mut w = Working::fresh(&db, &journal, fresh, self.node_id()).refusing(refused.clone());
            let mut void: BTreeSet<OpId> = setters.iter().map(|(id, _, _)| *id).collect();
            // Ops that no longer pass (e.g. added by a voided admin op) are dropped. Ops
            // refused for their author's authority, and those waiting behind them, are
            // tried again while a round admits one, as an ingest does (`retry_parked`):
            // an op signed below the Lamport time of its author's admission counts here
            // as it does on the node that merged it (found by the `ingest` fuzz target,
            // fuzz/regressions/ingest/op-below-admission-dropped-by-rebuild).
            let mut waiting = Vec::new();
            for op in &ops {
                let id = op.id();
                match w.admit(op.clone())? {
                    Admission::Applied => {
                        void.remove(&id);
                    }
                    Admission::AwaitingAuthority(op, _) | Admission::Gap(op) => waiting.push(op),
                    _ => {}
                }
            }
            loop {
                let mut admitted = false;
                let mut still = Vec::new();
                for op in std::mem::take(&mut waiting) {
                    let id = op.id();
                    match w.admit(op)? {
                        Admission::Applied => {
                            void.remove(&id);
                            admitted = true;
                        }
                        Admission::AwaitingAuthority(op, _) | Admission::Gap(op) => still.push(op),
                        _ => {}
                    }
                }
                waiting = still;
                if !admitted || waiting.is_empty() {
                    break;
                }
            }
            Ok::<_, Error>((w, void))
        };
        let mut refused: BTreeSet<OpId> = BTreeSet::new();
        let mut first = true;
        let (w, void) = loop {
            let counting: BTreeSet<OpId> = setters
                .iter()
                .map(|(id, _, _)| *id)
                .filter(|id| !refused.contains(id))
                .collect();
            let (w, void) = replay(Some(&counting), &refused)?;
            let newest_void = setters
                .iter()
                .rev()
                .find(|(id, _, _)| void.contains(id) && !refused.contains(id));
            let Some((id, _, _)) = newest_void else {
                break (w, void);
            };
            if first {
                // Setters void even with no cutoff at all (e.g. their author's admission
                // fell to a quarantine) go first: newest-first alone could refuse a good
                // setter that only such a void one cut off.
                first = false;
                let (_, void_anyway) = replay(None, &refused)?;
                if !void_anyway.is_empty() {
                    refused.extend(void_anyway);
                    continue;
                }
            }
            refused.insert(*id);
        };
        // Everything staged is folded into the story keys first, so that removing those
        // keys below leaves no journal entry behind to bring an old record back.
        self.journal.drain()?;
        let mut batch = S::Batch::default();
        for prefix in key::REBUILT {
            for kv in self.db.scan_prefix(prefix) {
                batch.remove(&kv?.0);
            }
        }
        let mut w = w;
        // Every setter left void is held (`R`): later rebuilds weigh it again, a second
        // arrival is a duplicate, and sync sends on those that a concurrent removal's
        // cutoff alone voids (`State::contestable`), so replicas weigh the same removals.
        for op in ops
            .iter()
            .filter(|op| void.contains(&op.id()) || refused.contains(&op.id()))
        {
            w.keep_weighed(op)?;
        }
        w.state.rebuild_needed = false;
        w.events.clear();
        w.mark_all_records_dirty();
        let committed = w.commit_with(batch)?;
        self.state = committed.state;
        self.stories = committed.cache;
        if !committed.durable {
            // The store holds the rebuilt projection, not yet flushed; the stored flag
            // makes the next open rebuild again if a crash loses it.
            return Err(committed
                .error
                .unwrap_or_else(|| Error::Corrupt("a rebuild neither flushed nor failed".into())));
        }
        // A rebuild may shorten this node's own chain on purpose (ops past a cutoff are
        // void): the mark follows it down, so that the next open does not take the shorter
        // chain for a store that lost ops.
        self.record_mark(true)?;
        committed.error.map_or(Ok(()), Err)
    }
}
