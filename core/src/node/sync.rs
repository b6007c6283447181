//! What the sync protocol reads from a node (membership, ops by version vector, fork
//! evidence), and join tickets.

use rand_core::CryptoRngCore;

use super::{quarantined, Command, Node};
use crate::codec;
use crate::error::Error;
use crate::id::{NodeId, OpId};
use crate::keyspace as key;
use crate::merge::{require_admin, Working};
use crate::op::{OpBytes, SignedOp};
use crate::oplog;
use crate::payload::Role;
use crate::storage::{self, Store, WriteBatch};
use crate::ticket::{Ticket, TicketRecord};
use crate::time::Timestamp;
use crate::version::VersionVector;

impl<S: Store> Node<S> {
    /// Signs `message` with this node's key (the sync handshake proof).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [[u8; 32]; 2] {
        crate::key::split_signature(&self.key.sign(message))
    }

    /// Is `node` an admitted member that is neither removed nor quarantined?
    pub fn is_active_member(&self, node: &NodeId) -> bool {
        let member = self
            .state
            .members
            .get(node)
            .is_some_and(|m| m.role().is_some() && m.cutoff.is_none());
        member && self.state.quarantine(node).is_none()
    }

    /// The op `author` signed at `seq`, if this node holds it.
    pub fn op_at(&self, author: &NodeId, seq: u64) -> Result<Option<SignedOp>, Error> {
        match self.state.authors.get(author) {
            Some(rec) if seq >= 1 && seq <= rec.head_seq => oplog::read_op(&self.db, rec.idx, seq),
            _ => Ok(None),
        }
    }

    /// For each entry of `vv` this node holds, the id of the op at that seq.
    pub fn op_ids_at(&self, vv: &VersionVector) -> Result<Vec<(NodeId, OpId)>, Error> {
        let mut out = Vec::with_capacity(vv.len());
        for (author, seq) in vv.iter() {
            let Some(rec) = self.state.authors.get(author) else {
                continue;
            };
            if *seq == rec.head_seq {
                if let Some(id) = rec.head_id {
                    out.push((*author, id));
                }
            } else if let Some(op) = self.op_at(author, *seq)? {
                out.push((*author, op.id()));
            }
        }
        Ok(out)
    }

    /// Authors quarantined for equivocation: those whose fork counts
    /// (`docs/format.md`, "Forks"), whose evidence a sync or an export sends on.
    pub fn quarantined_authors(&self) -> Vec<NodeId> {
        quarantined(&self.state)
    }

    /// The contested removals this node keeps: admins' removals that arrived void only
    /// because a concurrent removal had cut their author just below them. They travel with
    /// sync and export like fork evidence, so that every replica's rebuild weighs the same
    /// removals (`docs/format.md`, "Removals, rotations and cutoffs"). Usually none.
    pub fn contested_removals(&self) -> Result<Vec<SignedOp>, Error> {
        let mut held = oplog::contested(&self.db)?;
        held.retain(|op| self.state.contestable(op));
        Ok(held)
    }

    /// The signed ops that prove an author's equivocation where it counts (the fork it is
    /// quarantined from; none when no fork of the author counts: `docs/format.md`, "Forks").
    pub fn fork_evidence(&self, author: &NodeId) -> Result<Vec<SignedOp>, Error> {
        match self.state.quarantine(author) {
            Some(at) => oplog::evidence(&self.db, author, at),
            None => Ok(Vec::new()),
        }
    }

    /// The next ops a holder of `have` lacks, about `max_bytes` of them, in Lamport order
    /// across authors (so an admission precedes the admitted node's ops). Reads at most
    /// `max_bytes` per author: a catch-up of N ops costs O(N) reads in total.
    ///
    /// Authors are read one after another, and an author's reading stops at the cutoff:
    /// the (Lamport, author) key by which the ops read so far fill `max_bytes` in order.
    /// Nothing past it can be part of the answer, and Lamport values grow along a chain, so
    /// a holder that lacks ops of many authors costs a few budgets of reads, not one budget
    /// per author.
    pub fn ops_for_sync(&self, have: &VersionVector, max_bytes: usize) -> Result<Vec<OpBytes>, Error> {
        let key_of = |op: &OpBytes| (op.lamport, op.author);
        let mut all: Vec<OpBytes> = Vec::new();
        let mut horizon: Option<(u64, NodeId)> = None;
        let mut cutoff: Option<(u64, NodeId)> = None;
        for (node, rec) in &self.state.authors {
            let until = self.state.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            let from = have.get(node) + 1;
            if from > until {
                continue;
            }
            let mut bytes = 0usize;
            let mut truncated = false;
            let mut last = None;
            let read_before = all.len();
            oplog::for_each_op_bytes(&self.db, rec.idx, *node, from, |op| {
                if op.seq > until || cutoff.is_some_and(|c| key_of(&op) > c) {
                    return Ok(false);
                }
                if bytes >= max_bytes {
                    truncated = true;
                    return Ok(false);
                }
                bytes += op.bytes.len();
                last = Some((op.lamport, *node));
                all.push(op);
                Ok(true)
            })?;
            if truncated {
                horizon = Some(match (horizon, last) {
                    (Some(h), Some(l)) => h.min(l),
                    (h, l) => h.or(l).expect("a truncated author read at least one op"),
                });
            }
            if all.len() > read_before {
                all.sort_by_key(key_of);
                cutoff = fill_point(&all, max_bytes).or(cutoff);
                if let Some(c) = cutoff {
                    all.retain(|op| key_of(op) <= c);
                }
            }
        }
        all.sort_by_key(|op| (op.lamport, op.author, op.seq));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for op in all {
            if horizon.is_some_and(|h| (op.lamport, op.author) > h) || (bytes >= max_bytes && !out.is_empty())
            {
                break;
            }
            bytes += op.bytes.len();
            out.push(op);
        }
        Ok(out)
    }

    /// Issues a one-time join ticket (admins only). `address` is where this node's daemon
    /// listens; the ticket works until `now + ttl_secs`.
    pub fn create_ticket(
        &mut self,
        now: Timestamp,
        ttl_secs: u64,
        address: String,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Ticket, Error> {
        let role = self.state.members.get(&self.node_id()).and_then(|m| m.role());
        require_admin(role, "create join tickets").map_err(Error::Rejected)?;
        if ttl_secs == 0 || ttl_secs > u64::from(crate::payload::MAX_TTL_SECS) {
            return Err(Error::InvalidArgument(format!(
                "ticket ttl must be 1 to {} seconds",
                crate::payload::MAX_TTL_SECS
            )));
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let expires_at = now.add_secs(ttl_secs);
        let mut batch = S::Batch::default();
        batch.insert(
            &key::ticket(&secret),
            &codec::encode(&TicketRecord { expires_at }),
        );
        storage::commit(&self.db, batch)?;
        Ok(Ticket {
            cluster: self.cluster_id(),
            issuer: self.node_id(),
            address,
            secret,
            expires_at,
        })
    }

    /// Redeems a join ticket for `node`: admits it as a member (one signed op) and forgets
    /// the ticket, in one batch. Fails for unknown, used or expired tickets (an expired one
    /// is forgotten).
    pub fn redeem_ticket(&mut self, now: Timestamp, secret: &[u8; 32], node: NodeId) -> Result<(), Error> {
        let k = key::ticket(secret);
        let rec: TicketRecord = storage::get(&self.db, &k, "ticket")?
            .ok_or_else(|| Error::Unauthorized("unknown or already used join ticket".into()))?;
        let mut forget = S::Batch::default();
        forget.remove(&k);
        if now >= rec.expires_at {
            storage::commit(&self.db, forget)?;
            return Err(Error::Unauthorized(format!(
                "join ticket expired at {}",
                rec.expires_at
            )));
        }
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories));
        let add = Command::AddMember {
            node,
            role: Role::Member,
        };
        match self.stage(&mut w, now, add) {
            Ok(_) => {}
            Err(Error::AlreadyExists(_)) if self.is_active_member(&node) => {}
            Err(e) => return Err(e),
        }
        self.commit(w, forget)?;
        Ok(())
    }
}

/// The key of the op at which `sorted` (in (Lamport, author) order) first holds
/// `max_bytes`: an answer of about `max_bytes` ends there. `None` while it holds less.
fn fill_point(sorted: &[OpBytes], max_bytes: usize) -> Option<(u64, NodeId)> {
    let mut bytes = 0usize;
    for op in sorted {
        bytes += op.bytes.len();
        if bytes >= max_bytes {
            return Some((op.lamport, op.author));
        }
    }
    None
}
