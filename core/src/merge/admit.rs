//! Admission: the one place that decides whether an op counts. Chain checks (duplicates,
//! gaps, forks, Lamport order), membership and authorization, for local and remote ops
//! alike; commands ask the same rules before signing ([`require_admin`], [`usable_key`]).

use super::{Admission, NewOp, Working};
use crate::error::Error;
use crate::id::{NodeId, OpId};
use crate::op::{check_rotation_proof, derive_cluster_id, SignedOp, UnsignedOp};
use crate::oplog;
use crate::payload::{Payload, Role};
use crate::projection::{AuthorRecord, Stamp};
use crate::reject::RejectReason;
use crate::storage::Store;

impl<S: Store> Working<'_, S> {
    /// The id of the op `author` stored at `seq` (in this batch or in the store).
    fn stored_id(&self, author: &NodeId, seq: u64) -> Result<Option<OpId>, Error> {
        if let Some(op) = self
            .new_ops
            .get(author)
            .and_then(|ops| ops.iter().find(|o| o.content().seq == seq))
        {
            return Ok(Some(op.id()));
        }
        let Some(rec) = self.state.authors.get(author) else {
            return Ok(None);
        };
        if rec.head_seq == seq {
            return Ok(rec.head_id);
        }
        Ok(oplog::read_op(self.db, rec.idx, seq)?.map(|op| op.id()))
    }

    /// Chain checks, authorization and the payload's effect for one verified op.
    pub fn admit(&mut self, op: SignedOp) -> Result<Admission, Error> {
        self.admit_op(NewOp::Signed(op))
    }

    /// [`Working::admit`] for a signed op or a local one not signed yet. An unsigned op
    /// cannot be held for a gap or kept as fork evidence (both need its signature): a
    /// local op that would be either is `Corrupt`, as [`Working::admit_local`] says.
    fn admit_op(&mut self, op: NewOp) -> Result<Admission, Error> {
        let c = op.content();
        if c.cluster != self.state.cluster.id {
            return Ok(Admission::Rejected(RejectReason::WrongCluster {
                expected: self.state.cluster.id,
                got: c.cluster,
            }));
        }
        let author = c.author;
        let (head_seq, head_id, head_lamport, quarantined) = match self.state.authors.get(&author) {
            Some(a) => (a.head_seq, a.head_id, a.head_lamport, a.quarantined_at),
            None => (0, None, 0, None),
        };
        if c.seq <= head_seq {
            return match self.stored_id(&author, c.seq)? {
                Some(id) if id == op.id() => Ok(Admission::Duplicate),
                Some(_) => {
                    // Where the chains split must not depend on arrival order: had this op
                    // come when our head was `seq - 1`, the `prev` check below would have put
                    // the fork there whenever its `prev` is not the op we hold at `seq - 1`.
                    // Found by the `ingest` fuzz target (fuzz/regressions/ingest/).
                    let at = if c.seq > 1 && c.prev != self.stored_id(&author, c.seq - 1)? {
                        c.seq - 1
                    } else {
                        c.seq
                    };
                    // An author quarantined at or below this fork point is known to have
                    // equivocated there: one more proof adds nothing, and had our head
                    // not reached `seq` (a fork recorded earlier in this batch, the
                    // rebuild not run yet) the op would be refused as quarantined below.
                    // Both paths refuse it alike. Found by the `ingest` fuzz target
                    // (fuzz/regressions/ingest/second-proof-of-a-fork-refused-by-fresh-node).
                    if quarantined.is_some_and(|q| q <= at) {
                        if self.is_evidence(&author, c.seq, &op.id())? {
                            return Ok(Admission::Duplicate);
                        }
                        return Ok(Admission::Rejected(RejectReason::Quarantined(author)));
                    }
                    if at == c.seq {
                        if self.is_evidence(&author, c.seq, &op.id())? {
                            return Ok(Admission::Duplicate);
                        }
                        if let Some(r) = self.refusal_in_place(&op)? {
                            return Ok(Admission::Rejected(r));
                        }
                    }
                    self.record_fork(signed_or_corrupt(&op)?, at)?;
                    Ok(Admission::Fork)
                }
                None => Ok(Admission::Duplicate),
            };
        }
        if let NewOp::Signed(signed) = &op {
            // A removal or rotation a rebuild weighed (or a contested one waiting for the
            // rebuild): every rebuild weighs it again; arriving again changes nothing.
            if !self.fresh && sets_cutoff(signed).is_some() {
                let entry = oplog::contested_entry(signed);
                if self.contested.contains(&entry) || oplog::is_contested(self.db, signed)? {
                    return Ok(Admission::Duplicate);
                }
            }
        }
        if let Some(q) = quarantined {
            if c.seq >= q {
                // Peers re-send fork evidence with every sync; evidence we keep already is
                // a duplicate, not a refusal.
                if self.is_evidence(&author, c.seq, &op.id())? {
                    return Ok(Admission::Duplicate);
                }
                return Ok(Admission::Rejected(RejectReason::Quarantined(author)));
            }
        }
        if c.seq > head_seq + 1 {
            // An op two or more past the author's cutoff can never count (its predecessor
            // is void too, so it cannot even reveal a fork): refuse it instead of holding
            // it for a predecessor that would be refused. One just past the cutoff waits,
            // since its `prev` may show a fork at the cutoff.
            if let Some(cutoff) = self.state.members.get(&author).and_then(|m| m.cutoff) {
                if c.seq > cutoff.saturating_add(1) {
                    let reason = RejectReason::Voided {
                        author,
                        seq: c.seq,
                        cutoff,
                    };
                    return Ok(awaiting_authority(op, reason));
                }
            }
            return match op {
                NewOp::Signed(op) => Ok(Admission::Gap(op)),
                NewOp::Unsigned(_) => Err(local_off_chain()),
            };
        }
        if c.prev != head_id {
            // The author signed an op whose chain passes through a different op at
            // `head_seq` than the one we hold: equivocation.
            self.record_fork(signed_or_corrupt(&op)?, head_seq)?;
            return Ok(Admission::Fork);
        }
        if c.lamport <= head_lamport {
            return Ok(Admission::Rejected(RejectReason::LamportNotIncreasing {
                lamport: c.lamport,
                previous: head_lamport,
            }));
        }
        if let Err(jump) = self.state.clock.check(c.lamport) {
            return Ok(Admission::Rejected(jump.into()));
        }
        if self.refused_setters.contains(&op.id()) {
            return Ok(Admission::Rejected(RejectReason::Unauthorized(
                "a removal or key rotation that is void under the cutoffs it sets".into(),
            )));
        }
        let role = match self.authorize_op(&op) {
            Ok(role) => role,
            Err(r) => {
                // A rebuild weighs contested removals itself (`Node::rebuild`).
                if let (RejectReason::Voided { .. }, NewOp::Signed(signed)) = (&r, &op) {
                    if !self.fresh && self.state.contestable(signed) {
                        return self.contest(signed);
                    }
                }
                return Ok(awaiting_authority(op, r));
            }
        };
        if let Err(r) = self.apply_payload(&op, role)? {
            return Ok(Admission::Rejected(r));
        }
        // The payload first: `held_setters` reads the store (a scan of `R`), which cost
        // every admitted op ~0.05 of its signing time in the pipelined append
        // (docs/benchmarks.md, "Session 9: the append path's non-signing CPU"); setters
        // are rare.
        if !self.fresh && setter_payload(&op.content().payload) && self.held_setters()? {
            // Some setter was weighed and left void: whether it and this one count is the
            // rebuild's to say (a function of the stored ops and held setters), not the
            // arrival order's.
            self.state.rebuild_needed = true;
        }
        self.append(op);
        Ok(Admission::Applied)
    }

    /// Whether any setter is held (`R`), in this batch or in the store.
    fn held_setters(&self) -> Result<bool, Error> {
        Ok(!self.contested.is_empty() || oplog::any_contested(self.db)?)
    }

    /// Keeps a [`State::contestable`] removal (once) and asks for a rebuild to weigh it.
    fn contest(&mut self, op: &SignedOp) -> Result<Admission, Error> {
        let entry = oplog::contested_entry(op);
        if self.contested.contains(&entry) || oplog::is_contested(self.db, op)? {
            return Ok(Admission::Duplicate);
        }
        self.contested.push(entry);
        self.state.rebuild_needed = true;
        Ok(Admission::Contested)
    }

    /// Keeps `op`, a removal or rotation a rebuild left void, among the held setters (`R`),
    /// so that later rebuilds weigh it again and a second arrival is a duplicate (it was
    /// weighed; admitting it again would apply its cutoff to the rest of that batch until
    /// the rebuild refused it again). Sync sends on only those that are
    /// [`State::contestable`].
    pub(crate) fn keep_weighed(&mut self, op: &SignedOp) -> Result<(), Error> {
        let entry = oplog::contested_entry(op);
        if !self.contested.contains(&entry) && !oplog::is_contested(self.db, op)? {
            self.contested.push(entry);
        }
        Ok(())
    }

    /// How admission would refuse `op` had it come in place of the op we hold at its seq
    /// (same `prev`), if it would. Found by the `ingest` fuzz target
    /// (fuzz/regressions/ingest/stored-transition-refused-by-fresh-node): a second op for a
    /// seq proves equivocation only if it could have been admitted there. Otherwise a
    /// replica that got it first refuses it (an invalid transition, a Lamport time not
    /// above its predecessor's, an unauthorized payload) and then merges the held op, while
    /// one that held the op first would keep it as fork evidence and quarantine the author:
    /// the two disagree, and a fresh node refuses the evidence it is sent. So both refuse it,
    /// with the same reason. (An author already quarantined at or below this seq never gets
    /// here: [`Working::admit`] refuses one more proof of its fork as quarantined.)
    fn refusal_in_place(&self, op: &NewOp) -> Result<Option<RejectReason>, Error> {
        let c = op.content();
        if c.seq > 1 {
            let rec = self.state.authors.get(&c.author);
            let previous = match self
                .new_ops
                .get(&c.author)
                .and_then(|ops| ops.iter().find(|o| o.content().seq == c.seq - 1))
            {
                Some(p) => Some(p.content().lamport),
                None => match rec {
                    Some(rec) => oplog::read_op(self.db, rec.idx, c.seq - 1)?.map(|p| p.content().lamport),
                    None => None,
                },
            };
            if let Some(previous) = previous.filter(|p| c.lamport <= *p) {
                return Ok(Some(RejectReason::LamportNotIncreasing {
                    lamport: c.lamport,
                    previous,
                }));
            }
        }
        if let Err(jump) = self.state.clock.check(c.lamport) {
            return Ok(Some(jump.into()));
        }
        Ok(self.authorize_op(op).err())
    }

    fn authorize_op(&self, op: &NewOp) -> Result<Role, RejectReason> {
        let c = op.content();
        if let Payload::Genesis { name, nonce } = &c.payload {
            // The genesis we hold may be this author's own seq 1, when this op competes
            // with it for that seq (`refusal_in_place`): that is a fork, not a second genesis.
            if c.seq != 1 || self.state.cluster.admin.is_some_and(|a| a != c.author) {
                return Err(RejectReason::Unauthorized(
                    "a cluster has exactly one genesis".into(),
                ));
            }
            if derive_cluster_id(&c.author, name, nonce) != self.state.cluster.id {
                return Err(RejectReason::Unauthorized(
                    "genesis does not derive this cluster's id".into(),
                ));
            }
            return Ok(Role::Admin);
        }
        let at = Stamp {
            lamport: c.lamport,
            author: c.author,
        };
        let role = self.state.authorize(&c.author, c.seq, at)?;
        match &c.payload {
            Payload::MemberAdd { node, .. } => {
                require_admin(Some(role), "add members")?;
                usable_key(node)?;
            }
            Payload::MemberRemove { .. } => require_admin(Some(role), "remove members")?,
            Payload::KeyRotate { new_key, proof }
                if !check_rotation_proof(&c.cluster, &c.author, new_key, proof) =>
            {
                return Err(RejectReason::InvalidPayload(
                    "key rotation proof does not verify".into(),
                ));
            }
            _ => {}
        }
        super::effect::check_payload(&c.payload, c.wall)?;
        Ok(role)
    }

    /// Records an accepted op: storage, chain head, clock.
    fn append(&mut self, op: NewOp) {
        let c = op.content();
        let author = c.author;
        if !self.state.authors.contains_key(&author) {
            let idx = self.state.next_idx;
            self.state.next_idx = self.state.next_idx.saturating_add(1);
            self.state.authors.insert(
                author,
                AuthorRecord {
                    idx,
                    head_seq: 0,
                    head_id: None,
                    head_lamport: 0,
                    quarantined_at: None,
                    last_segment: None,
                },
            );
        }
        let rec = self.state.authors.get_mut(&author).expect("inserted");
        // Admission established these; the stored chain relies on them.
        debug_assert_eq!(c.seq, rec.head_seq + 1, "ops are appended in seq order");
        debug_assert_eq!(c.prev, rec.head_id, "each op chains to the author's head");
        debug_assert!(
            c.lamport > rec.head_lamport,
            "Lamport time increases along a chain"
        );
        rec.head_seq = c.seq;
        rec.head_id = Some(op.id());
        rec.head_lamport = c.lamport;
        self.state.clock.observe(c.lamport);
        self.dirty_authors.insert(author);
        // Only the first author's list gets the reserved room: a batch is usually one
        // author's (local appends, or a peer's catch-up), and many authors would multiply it.
        let hint = &mut self.pending_ops_hint;
        self.new_ops
            .entry(author)
            .or_insert_with(|| Vec::with_capacity(std::mem::take(hint)))
            .push(op);
    }

    /// Is this op kept as fork evidence already (in this batch or in the store)?
    fn is_evidence(&self, author: &NodeId, seq: u64, id: &OpId) -> Result<bool, Error> {
        if self
            .forks
            .iter()
            .any(|(a, s, i, _)| a == author && *s == seq && i == id)
        {
            return Ok(true);
        }
        oplog::is_evidence(self.db, author, seq, id)
    }

    /// Records an equivocation: `op` contradicts the op we hold for `at_seq`. Both ops are
    /// kept as evidence, so that any replica they are sent to detects the same fork even
    /// if it holds neither (the held op is about to be voided by the quarantine).
    fn record_fork(&mut self, op: &SignedOp, at_seq: u64) -> Result<(), Error> {
        let author = op.content().author;
        let c = op.content();
        let held = match self
            .new_ops
            .get(&author)
            .and_then(|ops| ops.iter().find(|o| o.content().seq == at_seq))
        {
            Some(held) => Some(signed_or_corrupt(held)?.clone()),
            None => match self.state.authors.get(&author) {
                Some(rec) => oplog::read_op(self.db, rec.idx, at_seq)?,
                None => None,
            },
        };
        if let Some(held) = held {
            self.forks
                .push((author, at_seq, held.id(), held.bytes().to_vec()));
        }
        self.forks.push((author, c.seq, op.id(), op.bytes().to_vec()));
        let Some(rec) = self.state.authors.get_mut(&author) else {
            return Ok(());
        };
        let q = rec.quarantined_at.map_or(at_seq, |q| q.min(at_seq));
        rec.quarantined_at = Some(q);
        self.dirty_authors.insert(author);
        if rec.head_seq >= q {
            self.state.rebuild_needed = true;
        }
        Ok(())
    }

    /// Ops that a local command produced go through the same path as remote ones, before
    /// they are signed (the signature is made when the batch is committed).
    pub fn admit_local(&mut self, op: UnsignedOp) -> Result<(), Error> {
        match self.admit_op(NewOp::Unsigned(op))? {
            Admission::Applied => Ok(()),
            Admission::Rejected(r) => Err(Error::Rejected(r)),
            Admission::AwaitingAuthority(_, r) => Err(Error::Rejected(r)),
            Admission::Duplicate | Admission::Gap(_) | Admission::Fork | Admission::Contested => {
                Err(local_off_chain())
            }
        }
    }
}

/// A local op that does not extend this node's own chain: the store and the state disagree.
fn local_off_chain() -> Error {
    Error::Corrupt("local op does not extend this node's own chain".into())
}

/// The admission of an op refused with `reason`: [`Admission::AwaitingAuthority`] when the
/// reason is one a later op can lift (its author unknown, unauthorized or cut off) and the
/// op is signed, so that the ingest can try it again; otherwise
/// [`Admission::Rejected`]. A quarantine is never lifted, and a payload that contradicts
/// itself stays so.
fn awaiting_authority(op: NewOp, reason: RejectReason) -> Admission {
    match (op, &reason) {
        (
            NewOp::Signed(op),
            RejectReason::UnknownAuthor(_) | RejectReason::Unauthorized(_) | RejectReason::Voided { .. },
        ) => Admission::AwaitingAuthority(op, reason),
        _ => Admission::Rejected(reason),
    }
}

/// The op as signed bytes, for fork evidence; a local op not signed yet is never evidence
/// (it is this node's own, off its chain: [`local_off_chain`]).
fn signed_or_corrupt(op: &NewOp) -> Result<&SignedOp, Error> {
    match op {
        NewOp::Signed(op) => Ok(op),
        NewOp::Unsigned(_) => Err(local_off_chain()),
    }
}

/// Only an admin may `what` (add or remove members, issue join tickets).
pub(crate) fn require_admin(role: Option<Role>, what: &str) -> Result<(), RejectReason> {
    match role {
        Some(Role::Admin) => Ok(()),
        _ => Err(RejectReason::Unauthorized(format!("only an admin may {what}"))),
    }
}

/// A member's id must be a usable Ed25519 public key (it decodes and is not weak).
pub(crate) fn usable_key(node: &NodeId) -> Result<(), RejectReason> {
    match crate::key::verifying_key(node) {
        Some(_) => Ok(()),
        None => Err(RejectReason::InvalidPayload(format!(
            "{node} is not a usable Ed25519 public key"
        ))),
    }
}

/// Whether a payload sets a cutoff (see [`sets_cutoff`]).
fn setter_payload(payload: &Payload) -> bool {
    matches!(payload, Payload::MemberRemove { .. } | Payload::KeyRotate { .. })
}

/// The cutoff an op sets, if it sets one: a removal bounds the removed key's chain at
/// its `cutoff_seq`, a key rotation its own author's at the rotation.
pub(crate) fn sets_cutoff(op: &SignedOp) -> Option<(OpId, NodeId, u64)> {
    let c = op.content();
    match &c.payload {
        Payload::MemberRemove { node, cutoff_seq } => Some((op.id(), *node, *cutoff_seq)),
        Payload::KeyRotate { .. } => Some((op.id(), c.author, c.seq)),
        _ => None,
    }
}
