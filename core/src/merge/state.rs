//! The node-wide state kept in memory between commits: cluster, clock, authors and
//! members. Small (grows with nodes, not ops); a working set starts from a copy.

use std::collections::BTreeMap;

use crate::clock::LamportClock;
use crate::codec;
use crate::error::Error;
use crate::id::{ClusterId, NodeId};
use crate::keyspace as key;
use crate::payload::Role;
use crate::projection::{AuthorRecord, ClusterMeta, MemberRecord, Stamp};
use crate::reject::RejectReason;
use crate::storage::{self, Store};
use crate::version::VersionVector;

/// The node-wide state kept in memory: small (grows with nodes, not ops).
#[derive(Clone, Debug)]
pub(crate) struct State {
    pub cluster: ClusterMeta,
    pub clock: LamportClock,
    pub authors: BTreeMap<NodeId, AuthorRecord>,
    pub members: BTreeMap<NodeId, MemberRecord>,
    pub next_idx: u32,
    pub rebuild_needed: bool,
}

impl State {
    pub fn new(cluster: ClusterId) -> State {
        State {
            cluster: ClusterMeta {
                id: cluster,
                name: None,
                admin: None,
            },
            clock: LamportClock::default(),
            authors: BTreeMap::new(),
            members: BTreeMap::new(),
            next_idx: 0,
            rebuild_needed: false,
        }
    }

    pub fn load<S: Store>(db: &S) -> Result<State, Error> {
        let cluster: ClusterMeta = storage::get(db, key::META_CLUSTER, "cluster meta")?
            .ok_or_else(|| Error::Corrupt("store has no cluster meta".into()))?;
        let clock: u64 = storage::get(db, key::META_CLOCK, "clock")?.unwrap_or(0);
        let next_idx: u32 = storage::get(db, key::META_NEXT_IDX, "author index")?.unwrap_or(0);
        let rebuild_needed: bool = storage::get(db, key::META_REBUILD, "rebuild flag")?.unwrap_or(false);
        let mut authors = BTreeMap::new();
        for kv in db.scan_prefix(key::AUTHORS) {
            let (k, v) = kv?;
            let node = key::author_from_key(&k)?;
            authors.insert(node, codec::decode(&v, "author record")?);
        }
        let mut members = BTreeMap::new();
        for kv in db.scan_prefix(key::MEMBERS) {
            let (k, v) = kv?;
            let node = key::member_from_key(&k)?;
            members.insert(node, codec::decode(&v, "member record")?);
        }
        Ok(State {
            cluster,
            clock: LamportClock::new(clock),
            authors,
            members,
            next_idx,
            rebuild_needed,
        })
    }

    /// Where `author`'s ops stop counting because it equivocated, if that matters. A fork
    /// counts only while an op of its author at the fork seq could otherwise count: the
    /// author is an admitted member (a role that counts), not cut off below the fork seq by
    /// a removal or key rotation, and its valid chain reaches the seq just below the fork.
    /// Otherwise the fork changes nothing, and a replica fed what this one holds (its valid
    /// ops, and the evidence of the forks that count) never detects it: such a fork is not
    /// listed, reported or sent on anywhere, so every replica reaches the same answer
    /// whatever the arrival order and batching. Its evidence stays stored: it counts again
    /// if the author's ops come to count (`docs/format.md`, "Forks").
    ///
    /// Found by the `ingest` fuzz target
    /// (fuzz/regressions/ingest/voided-author-fork-listed-by-fresh-node): an author admitted
    /// by an op that its admin's fork voided kept its own fork on the node that merged both.
    pub fn quarantine(&self, author: &NodeId) -> Option<u64> {
        let rec = self.authors.get(author)?;
        let q = rec.quarantined_at?;
        let member = self.members.get(author)?;
        member.role()?;
        if member.cutoff.is_some_and(|cutoff| q > cutoff) {
            return None;
        }
        if rec.head_seq.saturating_add(1) < q {
            return None;
        }
        Some(q)
    }

    /// Whether `op` is a contested removal: an admin's `MemberRemove` just past its
    /// author's cutoff, chained to the author's op at the cutoff (its valid head), that
    /// admission would take but for that cutoff. Two admins removing each other
    /// concurrently each cut the other below its removal; whichever removal a replica gets
    /// second is such an op. Kept (`R`) and sent on, it lets every replica's rebuild weigh
    /// both removals (`Node::rebuild`) instead of keeping whichever came first
    /// (`docs/format.md`, "Removals, rotations and cutoffs").
    pub fn contestable(&self, op: &crate::op::SignedOp) -> bool {
        let c = op.content();
        if !matches!(c.payload, crate::payload::Payload::MemberRemove { .. }) || c.cluster != self.cluster.id
        {
            return false;
        }
        let (head_seq, head_id, head_lamport, quarantined) = match self.authors.get(&c.author) {
            Some(a) => (a.head_seq, a.head_id, a.head_lamport, a.quarantined_at),
            None => (0, None, 0, None),
        };
        let Some(member) = self.members.get(&c.author) else {
            return false;
        };
        let at = Stamp {
            lamport: c.lamport,
            author: c.author,
        };
        member.role_at(at) == Some(Role::Admin)
            && member.cutoff == Some(head_seq)
            && c.seq == head_seq.saturating_add(1)
            && c.prev == head_id
            && c.lamport > head_lamport
            && quarantined.is_none_or(|q| q > c.seq)
            && self.clock.check(c.lamport).is_ok()
            && super::effect::check_payload(&c.payload, c.wall).is_ok()
    }

    /// The last seq of `author` that can be valid, if its validity is bounded.
    pub fn valid_until(&self, author: &NodeId) -> Option<u64> {
        let cutoff = self.members.get(author).and_then(|m| m.cutoff);
        let quarantine = self
            .authors
            .get(author)
            .and_then(|a| a.quarantined_at)
            .map(|q| q.saturating_sub(1));
        match (cutoff, quarantine) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The seq of `node`'s newest stored op (0 for none).
    pub fn head_seq(&self, node: &NodeId) -> u64 {
        self.authors.get(node).map_or(0, |a| a.head_seq)
    }

    pub fn version_vector(&self) -> VersionVector {
        let mut vv = VersionVector::default();
        for (node, a) in &self.authors {
            let held = self.valid_until(node).map_or(a.head_seq, |v| v.min(a.head_seq));
            if held > 0 {
                vv.set(*node, held);
            }
        }
        vv
    }

    /// Is `node` an admitted member whose op `seq`, stamped `at`, may count? Its role is
    /// the one it had at `at` ([`MemberRecord::role_at`]).
    pub fn authorize(&self, node: &NodeId, seq: u64, at: Stamp) -> Result<Role, RejectReason> {
        let role = self
            .members
            .get(node)
            .and_then(|m| m.role_at(at))
            .ok_or(RejectReason::UnknownAuthor(*node))?;
        if let Some(q) = self.authors.get(node).and_then(|a| a.quarantined_at) {
            if seq >= q {
                return Err(RejectReason::Quarantined(*node));
            }
        }
        if let Some(cutoff) = self.members.get(node).and_then(|m| m.cutoff) {
            if seq > cutoff {
                return Err(RejectReason::Voided {
                    author: *node,
                    seq,
                    cutoff,
                });
            }
        }
        Ok(role)
    }
}
