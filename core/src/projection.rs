//! The projection: what the op log means, as records that merge commutatively.
//!
//! Every register is last-writer-wins by [`Stamp`] `(lamport, author)`, every set is keyed
//! so that applying the same ops in any order, any number of times, gives the same records.
//! Derived facts (the current stage, conflicts, consecutive merge failures) are computed
//! from the sorted transition history, never from arrival order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::execution::ExecutionState;
use crate::id::{NodeId, OpId, StoryId};
use crate::payload::Role;
use crate::pipeline::{PipelineEvent, Stage, StageKind};
use crate::time::Timestamp;

/// The order of concurrent writes: Lamport timestamp, then author id. Every replica
/// compares the same two numbers, so equal Lamports from two authors pick the same winner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// Lamport timestamp.
    pub lamport: u64,
    /// Author.
    pub author: NodeId,
}

/// A last-writer-wins register.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lww<T> {
    pub stamp: Stamp,
    pub value: T,
}

impl<T> Lww<T> {
    /// Sets `reg` to `value` if `stamp` is newer; returns whether it changed.
    pub fn merge(reg: &mut Option<Lww<T>>, stamp: Stamp, value: T) -> bool {
        match reg {
            Some(cur) if cur.stamp >= stamp => false,
            _ => {
                *reg = Some(Lww { stamp, value });
                true
            }
        }
    }
}

/// A lease (story claim or merge lock) as written by one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The holder.
    pub node: NodeId,
    /// When it was taken (the op's wall time).
    pub claimed_at: Timestamp,
    /// When it runs out.
    pub expires_at: Timestamp,
}

/// Leases keyed by node: each node's latest take-or-release is LWW within its own entry, so
/// a release only ever affects its author's lease. The effective lease is the newest live
/// entry by stamp. Commutative by construction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseSet {
    /// Per node, its latest take (`Some`) or release (`None`); keyed by the stamp's author.
    pub entries: BTreeMap<NodeId, Lww<Option<Lease>>>,
    /// Per node: entries with `lamport <= cleared` no longer count (stale-lock clearing).
    pub cleared: BTreeMap<NodeId, u64>,
}

impl LeaseSet {
    pub fn set(&mut self, stamp: Stamp, lease: Option<Lease>) -> bool {
        let mut slot = self.entries.remove(&stamp.author);
        let changed = Lww::merge(&mut slot, stamp, lease);
        if let Some(s) = slot {
            self.entries.insert(stamp.author, s);
        }
        changed
    }

    pub fn clear(&mut self, holder: NodeId, through: u64) {
        let c = self.cleared.entry(holder).or_insert(0);
        *c = (*c).max(through);
    }

    /// The newest lease that has not been released or cleared (it may have expired).
    pub fn current(&self) -> Option<(Stamp, &Lease)> {
        self.entries
            .values()
            .filter(|e| e.stamp.lamport > self.cleared.get(&e.stamp.author).copied().unwrap_or(0))
            .filter_map(|e| e.value.as_ref().map(|l| (e.stamp, l)))
            .max_by_key(|(s, _)| *s)
    }
}

/// One transition in a story's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryEntry {
    pub stamp: Stamp,
    pub op_id: OpId,
    pub wall: Timestamp,
    pub event: PipelineEvent,
    pub from: Stage,
    pub to: Stage,
    pub base: Option<OpId>,
    /// Made with `--force` over this node's live claim (a [`crate::payload::Payload::Forced`]
    /// op). Not part of the format-1 and format-2 layouts, which never had it.
    #[serde(skip)]
    pub forced: Option<NodeId>,
}

/// Everything known about one story. Stored under its id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoryRecord {
    /// The earliest create op (stories may be created concurrently by two nodes).
    pub created: Option<(Stamp, OpId)>,
    pub name: Option<Lww<String>>,
    pub body: Option<Lww<Option<String>>>,
    pub depends_on: Option<Lww<Vec<StoryId>>>,
    /// The earliest tombstone: delete wins over any concurrent or later update.
    pub deleted: Option<Stamp>,
    /// Transitions sorted by stamp (merge order).
    pub history: Vec<HistoryEntry>,
    pub claims: LeaseSet,
    /// Per node, that node's execution state (written only by that node).
    pub execution: BTreeMap<NodeId, Lww<ExecutionState>>,
}

impl StoryRecord {
    pub fn visible(&self) -> bool {
        self.created.is_some() && self.deleted.is_none()
    }

    /// The stage: the last transition's target in merge order, or the backlog.
    pub fn stage(&self) -> Stage {
        self.history.last().map_or(Stage::Backlog, |h| h.to.clone())
    }

    /// The op id a new local transition builds on.
    pub fn stage_op(&self) -> Option<OpId> {
        self.history.last().map(|h| h.op_id)
    }

    pub fn visible_kind(&self) -> Option<StageKind> {
        self.visible()
            .then(|| self.history.last().map_or(StageKind::Backlog, |h| h.to.kind()))
    }

    /// Inserts a transition in merge order; false if it was there already.
    pub fn insert_transition(&mut self, entry: HistoryEntry) -> bool {
        match self.history.binary_search_by(|h| h.stamp.cmp(&entry.stamp)) {
            Ok(_) => false,
            Err(pos) => {
                self.history.insert(pos, entry);
                true
            }
        }
    }

    /// For each transition in merge order: was it made from a stage other than the one
    /// the previous transition produced? Such transitions were concurrent.
    pub fn conflict_flags(&self) -> Vec<bool> {
        let mut prev = None;
        self.history
            .iter()
            .map(|h| {
                let conflict = h.base != prev;
                prev = Some(h.op_id);
                conflict
            })
            .collect()
    }

    /// Merge conflicts since the story last entered `Merge` from anything but a failure.
    pub fn consecutive_merge_failures(&self) -> u32 {
        let mut n = 0u32;
        for h in self.history.iter().rev() {
            match (&h.event, h.from.kind()) {
                (PipelineEvent::MergeConflict { .. }, _) => n = n.saturating_add(1),
                (PipelineEvent::GatesPassed { .. }, StageKind::MergeFailure) => {}
                _ => break,
            }
        }
        n
    }
}

/// A node's presence as it last wrote it.
///
/// Stored as the four fields of format 3 (postcard), followed, when the heartbeat said what
/// its author had seen, by that list (postcard): a reader of the older layout ignores the
/// trailing bytes, and a record without them reads as `seen: None`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PresenceRecord {
    pub stamp: Stamp,
    pub label: String,
    pub address: Option<String>,
    pub heartbeat_at: Timestamp,
    /// Per author, the Lamport timestamp of its newest op the node had when it wrote this
    /// heartbeat (`None`: an older `Presence` op that did not say).
    pub seen: Option<Vec<(NodeId, u64)>>,
}

/// The stored head of a [`PresenceRecord`]: its layout before `seen` existed.
#[derive(Serialize, Deserialize)]
struct PresenceHead {
    stamp: Stamp,
    label: String,
    address: Option<String>,
    heartbeat_at: Timestamp,
}

impl PresenceRecord {
    /// The stored bytes (see the type's comment).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = crate::codec::encode(&PresenceHead {
            stamp: self.stamp,
            label: self.label.clone(),
            address: self.address.clone(),
            heartbeat_at: self.heartbeat_at,
        });
        if let Some(seen) = &self.seen {
            crate::codec::encode_into(seen, &mut out);
        }
        out
    }

    /// Reads stored bytes of either layout.
    pub fn decode(bytes: &[u8]) -> Result<PresenceRecord, crate::error::Error> {
        let (head, rest): (PresenceHead, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|e| crate::error::Error::Corrupt(format!("presence record does not decode: {e}")))?;
        let seen = if rest.is_empty() {
            None
        } else {
            Some(crate::codec::decode(rest, "presence record's seen list")?)
        };
        Ok(PresenceRecord {
            stamp: head.stamp,
            label: head.label,
            address: head.address,
            heartbeat_at: head.heartbeat_at,
            seen,
        })
    }

    /// The Lamport timestamp of `author`'s newest op this node had seen (0: none, or an
    /// older heartbeat that did not say).
    pub fn seen_of(&self, author: &NodeId) -> u64 {
        self.seen
            .as_ref()
            .and_then(|s| s.binary_search_by(|(n, _)| n.cmp(author)).ok().map(|i| s[i].1))
            .unwrap_or(0)
    }
}

/// Membership of one key. Adds and removals merge commutatively: a removal recorded
/// before the add arrives still holds once it does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MemberRecord {
    /// Every role given to this key by an op that counts, oldest first by stamp. The newest
    /// is the key's role now; an op of the key is judged by the role it had at the op's
    /// own stamp ([`MemberRecord::role_at`]). Store format 5; format 4 kept only the newest
    /// (`Option<Lww<Role>>`), which postcard encodes exactly as a list of at most one.
    pub roles: Vec<Lww<Role>>,
    /// Ops of this key with `seq > cutoff` are void (removal or key rotation).
    pub cutoff: Option<u64>,
    pub rotated_to: Option<NodeId>,
}

impl MemberRecord {
    /// The key's role now (the newest it was given), `None` for a key never admitted.
    pub fn role(&self) -> Option<Role> {
        self.roles.last().map(|r| r.value)
    }

    /// The role that judges an op of this key stamped `at`: the newest given below `at`.
    /// An op older than every role given takes the oldest (an op signed below its author's
    /// admission counts as it always did). A function of the set of roles given, so every
    /// replica judges an op alike whichever order the ops came in (`docs/format.md`,
    /// "Roles and authority").
    pub fn role_at(&self, at: Stamp) -> Option<Role> {
        let below = self.roles.partition_point(|r| r.stamp < at);
        below
            .checked_sub(1)
            .map_or(self.roles.first(), |i| self.roles.get(i))
            .map(|r| r.value)
    }

    /// Records that the key was given `role` at `stamp` (a second role at one stamp, which
    /// only a fork can sign, keeps the first: the fork's rebuild says which counts).
    /// Returns which of the key's ops judged as an admin's before could now be judged
    /// otherwise: `(above, below)`, where `above` is the stamps just above this one and
    /// `below` every stamp below it (when it is the new oldest role, which judges those).
    pub fn assign(&mut self, stamp: Stamp, role: Role) -> (bool, bool) {
        let at = self.roles.partition_point(|r| r.stamp < stamp);
        if self.roles.get(at).is_some_and(|r| r.stamp == stamp) {
            return (false, false);
        }
        let above_before = self.role_at_or_after(stamp);
        let oldest_before = self.roles.first().map(|r| r.value);
        self.roles.insert(at, Lww { stamp, value: role });
        let lost = |before: Option<Role>| before == Some(Role::Admin) && role != Role::Admin;
        (lost(above_before), at == 0 && lost(oldest_before))
    }

    /// The role that judges an op stamped just after `stamp` (the newest given at or below
    /// it, else the oldest).
    fn role_at_or_after(&self, stamp: Stamp) -> Option<Role> {
        let upto = self.roles.partition_point(|r| r.stamp <= stamp);
        upto.checked_sub(1)
            .map_or(self.roles.first(), |i| self.roles.get(i))
            .map(|r| r.value)
    }
}

/// Per-author bookkeeping: chain head, storage index, quarantine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AuthorRecord {
    /// Short index used in storage keys.
    pub idx: u32,
    pub head_seq: u64,
    pub head_id: Option<OpId>,
    pub head_lamport: u64,
    /// Equivocation seen at this seq: this and later ops of the author are void.
    pub quarantined_at: Option<u64>,
    /// The author's open run of `P` segments (first seq, op count, bytes), `None` when it
    /// has none (see `oplog::write_ops`). Format 3 kept the newest `O` segment here; the
    /// migration to format 4 clears it.
    pub last_segment: Option<(u64, u32, u32)>,
}

/// Cluster identity as the store knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterMeta {
    pub id: crate::id::ClusterId,
    pub name: Option<String>,
    pub admin: Option<NodeId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(l: u64, a: u8) -> Stamp {
        Stamp {
            lamport: l,
            author: NodeId::from_bytes([a; 32]),
        }
    }

    /// An op takes the role given newest below its stamp, and the oldest when it is older
    /// than every role given; the order the roles arrive in does not matter.
    #[test]
    fn an_op_is_judged_by_the_role_its_author_had_at_its_stamp() {
        let given = [
            (stamp(2, 0), Role::Member),
            (stamp(5, 0), Role::Admin),
            (stamp(9, 1), Role::Member),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut m = MemberRecord::default();
            for i in order {
                m.assign(given[i].0, given[i].1);
            }
            assert_eq!(m.role(), Some(Role::Member), "{order:?}");
            assert_eq!(m.role_at(stamp(1, 3)), Some(Role::Member), "below every role");
            assert_eq!(
                m.role_at(stamp(2, 0)),
                Some(Role::Member),
                "at a stamp: the one below"
            );
            assert_eq!(m.role_at(stamp(5, 0)), Some(Role::Member));
            assert_eq!(
                m.role_at(stamp(5, 1)),
                Some(Role::Admin),
                "same Lamport, later author"
            );
            assert_eq!(m.role_at(stamp(9, 0)), Some(Role::Admin));
            assert_eq!(m.role_at(stamp(10, 0)), Some(Role::Member));
        }
        assert_eq!(MemberRecord::default().role_at(stamp(1, 0)), None);
    }

    /// `assign` says when ops judged as an admin's could now be judged otherwise.
    #[test]
    fn assigning_a_role_says_which_admin_judgements_it_changes() {
        let mut m = MemberRecord::default();
        assert_eq!(m.assign(stamp(5, 0), Role::Admin), (false, false), "first role");
        assert_eq!(
            m.assign(stamp(5, 0), Role::Member),
            (false, false),
            "same stamp: kept"
        );
        assert_eq!(m.role(), Some(Role::Admin));
        assert_eq!(
            m.assign(stamp(8, 0), Role::Member),
            (true, false),
            "a demotion above"
        );
        assert_eq!(m.assign(stamp(7, 0), Role::Admin), (false, false), "a promotion");
        assert_eq!(
            m.assign(stamp(3, 0), Role::Member),
            (true, true),
            "a new oldest, demoting"
        );
        assert_eq!(m.assign(stamp(1, 0), Role::Admin), (false, false));
    }

    /// A format-4 member record (one LWW role at most) decodes as a format-5 one.
    #[test]
    fn a_format_4_member_record_reads_as_format_5() {
        #[derive(Serialize)]
        struct Format4 {
            role: Option<Lww<Role>>,
            cutoff: Option<u64>,
            rotated_to: Option<NodeId>,
        }
        for role in [
            None,
            Some(Lww {
                stamp: stamp(4, 7),
                value: Role::Admin,
            }),
        ] {
            let old = Format4 {
                role: role.clone(),
                cutoff: Some(3),
                rotated_to: Some(NodeId::from_bytes([9; 32])),
            };
            let new: MemberRecord = crate::codec::decode(&crate::codec::encode(&old), "member").unwrap();
            assert_eq!(new.roles, role.into_iter().collect::<Vec<_>>());
            assert_eq!(new.cutoff, Some(3));
            assert_eq!(new.rotated_to, Some(NodeId::from_bytes([9; 32])));
        }
    }

    #[test]
    fn equal_lamports_order_by_author() {
        assert!(stamp(5, 2) > stamp(5, 1));
        assert!(stamp(6, 1) > stamp(5, 2));
        let mut r = None;
        assert!(Lww::merge(&mut r, stamp(5, 1), "a"));
        assert!(Lww::merge(&mut r, stamp(5, 2), "b"));
        assert!(!Lww::merge(&mut r, stamp(5, 1), "a"));
        assert_eq!(r.unwrap().value, "b");
    }

    #[test]
    fn a_release_only_affects_its_author() {
        let lease = |a: u8| {
            Some(Lease {
                node: NodeId::from_bytes([a; 32]),
                claimed_at: Timestamp::from_millis(0),
                expires_at: Timestamp::from_millis(10),
            })
        };
        let ops = [
            (stamp(5, 1), lease(1)),
            (stamp(7, 2), lease(2)),
            (stamp(8, 1), None),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
            let mut set = LeaseSet::default();
            for i in order {
                set.set(ops[i].0, ops[i].1.clone());
            }
            assert_eq!(set.current().unwrap().1.node, NodeId::from_bytes([2; 32]));
        }
    }
}
