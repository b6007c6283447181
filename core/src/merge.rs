//! Merging ops into the projection: chain checks, authorization, and the effect of each
//! payload, staged in a [`Working`] set and committed as one atomic batch.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::clock::{ClockJump, LamportClock};
use crate::codec;
use crate::error::Error;
use crate::event::{Event, TransitionEvent};
use crate::id::{ClusterId, NodeId, OpId, StoryId};
use crate::journal::{encode_story, Journal};
use crate::keyspace as key;
use crate::op::{check_rotation_proof, derive_cluster_id, DecodeError, SignedOp, VerifyError};
use crate::oplog;
use crate::payload::{Payload, Role, StoryField};
use crate::pipeline::{transition, StageKind};
use crate::projection::{
    AuthorRecord, ClusterMeta, HistoryEntry, Lease, LeaseSet, Lww, MemberRecord, PresenceRecord, Stamp,
    StoryRecord,
};
use crate::storage::{self, Store, WriteBatch};
use crate::version::VersionVector;

/// Why one remote op was not merged. Nothing of a rejected op is stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The bytes do not decode.
    #[error("{0}")]
    Malformed(#[from] DecodeError),
    /// The signature does not verify.
    #[error("{0}")]
    BadSignature(#[from] VerifyError),
    /// The op belongs to another cluster.
    #[error("op is for cluster {got}, this node is in cluster {expected}")]
    WrongCluster {
        /// Ours.
        expected: ClusterId,
        /// The op's.
        got: ClusterId,
    },
    /// The author is not a member (yet): unknown key.
    #[error("author {0} is not a member of this cluster")]
    UnknownAuthor(NodeId),
    /// The author equivocated and is quarantined.
    #[error("author {0} is quarantined for equivocation")]
    Quarantined(NodeId),
    /// The author was removed or rotated its key before this op.
    #[error("op {seq} of author {author} comes after its membership ended at op {cutoff}")]
    Voided {
        /// Author.
        author: NodeId,
        /// The op's seq.
        seq: u64,
        /// The last valid seq.
        cutoff: u64,
    },
    /// The op's Lamport timestamp is absurdly far ahead.
    #[error("{0}")]
    LamportJump(#[from] ClockJump),
    /// The author's Lamport timestamps must increase along its chain.
    #[error("lamport {lamport} does not increase on the author's previous op ({previous})")]
    LamportNotIncreasing {
        /// The op's.
        lamport: u64,
        /// The previous op's.
        previous: u64,
    },
    /// The author may not do this (e.g. a non-admin adding members).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The payload contradicts itself (e.g. a transition the table does not allow).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// Too many out-of-order ops are already waiting for missing predecessors.
    #[error("out-of-order buffer is full")]
    BufferFull,
}

/// The per-batch outcome of admitting one verified op.
pub(crate) enum Admission {
    Applied,
    Duplicate,
    /// Its predecessor is missing; the op comes back to be buffered.
    Gap(SignedOp),
    Fork,
    Rejected(RejectReason),
}

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

    /// Where `author`'s ops stop counting because it equivocated, if that matters: a fork
    /// among ops that a removal (or key rotation) had voided already changes nothing, and
    /// a replica that learned of the removal first never even stores those ops, so such a
    /// fork is not reported anywhere (every replica reaches the same answer).
    pub fn quarantine(&self, author: &NodeId) -> Option<u64> {
        let q = self.authors.get(author)?.quarantined_at?;
        match self.members.get(author).and_then(|m| m.cutoff) {
            Some(cutoff) if q > cutoff => None,
            _ => Some(q),
        }
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

    /// Is `node` an admitted member whose op `seq` may count?
    pub fn authorize(&self, node: &NodeId, seq: u64) -> Result<Role, RejectReason> {
        let role = self
            .members
            .get(node)
            .and_then(|m| m.role())
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

/// Decoded story records as last committed, kept between commits so that a story a
/// burst of commands keeps touching is not read back and decoded for every commit.
pub(crate) type StoryCache = HashMap<StoryId, StoryRecord>;
/// Most records a [`StoryCache`] keeps.
const STORY_CACHE_MAX: usize = 4096;

struct StoryEntry {
    rec: StoryRecord,
    dirty: bool,
}

/// A batch in progress: a copy of the state plus the records it touched. Nothing reaches
/// the store until [`Working::commit`], which writes everything in one atomic batch.
pub(crate) struct Working<'a, S: Store> {
    db: &'a S,
    journal: &'a Journal<S>,
    pub state: State,
    /// The local node, to notice claims it lost.
    local: NodeId,
    stories: HashMap<StoryId, StoryEntry>,
    /// Committed records not loaded into `stories` yet.
    cache: StoryCache,
    presence: BTreeMap<NodeId, PresenceRecord>,
    /// Presence records changed in this batch (the others were only read).
    dirty_presence: BTreeSet<NodeId>,
    lock: Option<LeaseSet>,
    lock_dirty: bool,
    dirty_members: BTreeSet<NodeId>,
    dirty_authors: BTreeSet<NodeId>,
    new_ops: BTreeMap<NodeId, Vec<SignedOp>>,
    forks: Vec<(NodeId, u64, OpId, Vec<u8>)>,
    cluster_dirty: bool,
    pub events: Vec<Event>,
    /// Set during a rebuild: records start empty instead of being read from the store.
    fresh: bool,
    /// Room to reserve for the first author's ops in this batch (see [`Working::expecting`]).
    pending_ops_hint: usize,
}

impl<'a, S: Store> Working<'a, S> {
    pub fn new(db: &'a S, journal: &'a Journal<S>, state: State, local: NodeId) -> Self {
        Working {
            db,
            journal,
            state,
            local,
            stories: HashMap::new(),
            cache: StoryCache::new(),
            presence: BTreeMap::new(),
            dirty_presence: BTreeSet::new(),
            lock: None,
            lock_dirty: false,
            dirty_members: BTreeSet::new(),
            dirty_authors: BTreeSet::new(),
            new_ops: BTreeMap::new(),
            forks: Vec::new(),
            cluster_dirty: false,
            events: Vec::new(),
            fresh: false,
            pending_ops_hint: 0,
        }
    }

    /// A working set that ignores stored projection records (for a rebuild).
    pub fn fresh(db: &'a S, journal: &'a Journal<S>, state: State, local: NodeId) -> Self {
        let mut w = Working::new(db, journal, state, local);
        w.fresh = true;
        w
    }

    /// Starts from these committed records (see [`StoryCache`]).
    pub fn with_cache(mut self, cache: StoryCache) -> Self {
        self.cache = cache;
        self
    }

    /// Reserves room for about `ops` ops and their events, so that a large batch does not
    /// grow (and copy) its vectors step by step.
    pub fn expecting(mut self, ops: usize) -> Self {
        self.events.reserve(ops);
        self.pending_ops_hint = ops;
        self
    }

    pub fn has_changes(&self) -> bool {
        !self.new_ops.is_empty() || !self.forks.is_empty() || self.state.rebuild_needed
    }

    fn load_story(&mut self, id: &StoryId) -> Result<&mut StoryEntry, Error> {
        if !self.stories.contains_key(id) {
            let rec: StoryRecord = if self.fresh {
                StoryRecord::default()
            } else if let Some(rec) = self.cache.remove(id) {
                rec
            } else {
                self.journal.read(id)?.unwrap_or_default()
            };
            self.stories.insert(id.clone(), StoryEntry { rec, dirty: false });
        }
        Ok(self.stories.get_mut(id).expect("just inserted"))
    }

    /// The story's record as this batch sees it (empty default if never seen).
    pub fn story(&mut self, id: &StoryId) -> Result<&StoryRecord, Error> {
        Ok(&self.load_story(id)?.rec)
    }

    fn story_mut(&mut self, id: &StoryId) -> Result<&mut StoryRecord, Error> {
        let e = self.load_story(id)?;
        e.dirty = true;
        Ok(&mut e.rec)
    }

    pub fn presence(&mut self, node: &NodeId) -> Result<Option<&PresenceRecord>, Error> {
        if !self.presence.contains_key(node) && !self.fresh {
            if let Some(p) = storage::get::<PresenceRecord>(self.db, &key::presence(node), "presence record")?
            {
                self.presence.insert(*node, p);
            }
        }
        Ok(self.presence.get(node))
    }

    pub fn lock(&mut self) -> Result<&mut LeaseSet, Error> {
        if self.lock.is_none() {
            let l = if self.fresh {
                LeaseSet::default()
            } else {
                storage::get(self.db, key::LOCK, "merge lock")?.unwrap_or_default()
            };
            self.lock = Some(l);
        }
        Ok(self.lock.as_mut().expect("loaded"))
    }

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
                    self.record_fork(&op, c.seq)?;
                    Ok(Admission::Fork)
                }
                None => Ok(Admission::Duplicate),
            };
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
                    return Ok(Admission::Rejected(RejectReason::Voided {
                        author,
                        seq: c.seq,
                        cutoff,
                    }));
                }
            }
            return Ok(Admission::Gap(op));
        }
        if c.prev != head_id {
            // The author signed an op whose chain passes through a different op at
            // `head_seq` than the one we hold: equivocation.
            self.record_fork(&op, head_seq)?;
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
        let role = match self.authorize_op(&op) {
            Ok(role) => role,
            Err(r) => return Ok(Admission::Rejected(r)),
        };
        if let Err(r) = self.apply_payload(&op, role)? {
            return Ok(Admission::Rejected(r));
        }
        self.append(op);
        Ok(Admission::Applied)
    }

    fn authorize_op(&self, op: &SignedOp) -> Result<Role, RejectReason> {
        let c = op.content();
        if let Payload::Genesis { name, nonce } = &c.payload {
            if c.seq != 1 || self.state.cluster.admin.is_some() {
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
        self.state.authorize(&c.author, c.seq)
    }

    /// Records an accepted op: storage, chain head, clock.
    fn append(&mut self, op: SignedOp) {
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
            Some(held) => Some(held.clone()),
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

    /// Ops that a local command produced go through the same path as remote ones.
    pub fn admit_local(&mut self, op: SignedOp) -> Result<(), Error> {
        match self.admit(op)? {
            Admission::Applied => Ok(()),
            Admission::Rejected(r) => Err(Error::Unauthorized(r.to_string())),
            Admission::Duplicate | Admission::Gap(_) | Admission::Fork => Err(Error::Corrupt(
                "local op does not extend this node's own chain".into(),
            )),
        }
    }

    fn apply_payload(&mut self, op: &SignedOp, role: Role) -> Result<Result<(), RejectReason>, Error> {
        let c = op.content();
        let stamp = Stamp {
            lamport: c.lamport,
            author: c.author,
        };
        let admin_only = |what: &str| {
            if role == Role::Admin {
                Ok(())
            } else {
                Err(RejectReason::Unauthorized(format!("only an admin may {what}")))
            }
        };
        match &c.payload {
            Payload::Genesis { name, .. } => {
                self.state.cluster.name = Some(name.clone());
                self.state.cluster.admin = Some(c.author);
                self.set_role(c.author, stamp, Role::Admin);
                self.cluster_dirty = true;
            }
            Payload::MemberAdd { node, role: new_role } => {
                if let Err(r) = admin_only("add members") {
                    return Ok(Err(r));
                }
                if crate::key::verifying_key(node).is_none() {
                    return Ok(Err(RejectReason::InvalidPayload(format!(
                        "{node} is not a usable Ed25519 key"
                    ))));
                }
                self.set_role(*node, stamp, *new_role);
            }
            Payload::MemberRemove { node, cutoff_seq } => {
                if let Err(r) = admin_only("remove members") {
                    return Ok(Err(r));
                }
                self.set_cutoff(*node, *cutoff_seq);
            }
            Payload::KeyRotate { new_key, proof } => {
                if !check_rotation_proof(&c.cluster, &c.author, new_key, proof) {
                    return Ok(Err(RejectReason::InvalidPayload(
                        "key rotation proof does not verify".into(),
                    )));
                }
                self.set_role(*new_key, stamp, role);
                self.set_cutoff(c.author, c.seq);
                let m = self.state.members.entry(c.author).or_default();
                m.rotated_to = Some(*new_key);
            }
            Payload::StoryCreate {
                story,
                name,
                body,
                depends_on,
            } => {
                let rec = self.story_mut(story)?;
                if rec.created.is_none_or(|(s, _)| stamp < s) {
                    rec.created = Some((stamp, op.id()));
                }
                Lww::merge(&mut rec.name, stamp, name.clone());
                Lww::merge(&mut rec.body, stamp, body.clone());
                Lww::merge(&mut rec.depends_on, stamp, depends_on.clone());
            }
            Payload::StoryUpdate { story, field } => {
                let rec = self.story_mut(story)?;
                match field {
                    StoryField::Name(n) => Lww::merge(&mut rec.name, stamp, n.clone()),
                    StoryField::Body(b) => Lww::merge(&mut rec.body, stamp, b.clone()),
                    StoryField::DependsOn(d) => Lww::merge(&mut rec.depends_on, stamp, d.clone()),
                };
            }
            Payload::Transition {
                story,
                event,
                from,
                base,
            } => {
                let to = match transition(from, event, c.wall) {
                    Ok(to) => to,
                    Err(e) => return Ok(Err(RejectReason::InvalidPayload(e.to_string()))),
                };
                let rec = self.story_mut(story)?;
                let before = rec.stage();
                rec.insert_transition(HistoryEntry {
                    stamp,
                    op_id: op.id(),
                    wall: c.wall,
                    event: event.clone(),
                    from: from.clone(),
                    to,
                    base: *base,
                });
                let pos = rec
                    .history
                    .iter()
                    .position(|h| h.op_id == op.id())
                    .expect("inserted");
                let conflict = rec.conflict_flags()[pos];
                let after = rec.stage();
                self.events.push(Event::Transition(TransitionEvent {
                    story: story.clone(),
                    before: Some(before),
                    after,
                    op_id: Some(op.id()),
                    author: Some(c.author),
                    event: Some(event.name()),
                    conflict,
                    replay: false,
                }));
            }
            Payload::StoryDelete { story } => {
                let rec = self.story_mut(story)?;
                if rec.deleted.is_none_or(|d| stamp < d) {
                    rec.deleted = Some(stamp);
                }
            }
            Payload::Claim {
                story,
                ttl_secs,
                takes_over,
            } => {
                let lease = Lease {
                    node: c.author,
                    claimed_at: c.wall,
                    expires_at: c.wall.add_secs(u64::from(*ttl_secs)),
                };
                self.set_claim(story, stamp, Some(lease), *takes_over)?;
            }
            Payload::Release { story } => self.set_claim(story, stamp, None, None)?,
            Payload::LockAcquire { ttl_secs } => {
                let lease = Lease {
                    node: c.author,
                    claimed_at: c.wall,
                    expires_at: c.wall.add_secs(u64::from(*ttl_secs)),
                };
                self.lock()?.set(stamp, Some(lease));
                self.lock_dirty = true;
            }
            Payload::LockRelease => {
                self.lock()?.set(stamp, None);
                self.lock_dirty = true;
            }
            Payload::LockClear { holder, through } => {
                self.lock()?.clear(*holder, *through);
                self.lock_dirty = true;
            }
            Payload::Presence { label, address } => {
                let newer = self.presence(&c.author)?.is_none_or(|p| p.stamp < stamp);
                if newer {
                    self.dirty_presence.insert(c.author);
                    self.presence.insert(
                        c.author,
                        PresenceRecord {
                            stamp,
                            label: label.clone(),
                            address: address.clone(),
                            heartbeat_at: c.wall,
                        },
                    );
                }
            }
            Payload::Execution { story, state } => {
                let rec = self.story_mut(story)?;
                let mut slot = rec.execution.remove(&c.author);
                Lww::merge(&mut slot, stamp, state.clone());
                if let Some(s) = slot {
                    rec.execution.insert(c.author, s);
                }
            }
        }
        Ok(Ok(()))
    }

    fn set_claim(
        &mut self,
        story: &StoryId,
        stamp: Stamp,
        lease: Option<Lease>,
        takes_over: Option<(NodeId, u64)>,
    ) -> Result<(), Error> {
        let local = self.local;
        let rec = self.story_mut(story)?;
        let before = rec.claims.current().map(|(_, l)| l.node);
        if let Some((holder, through)) = takes_over {
            rec.claims.clear(holder, through);
        }
        rec.claims.set(stamp, lease);
        let after = rec.claims.current().map(|(_, l)| l.node);
        if before == Some(local) && after != Some(local) && stamp.author != local {
            self.events.push(Event::ClaimLost {
                story: story.clone(),
                winner: after,
            });
        }
        Ok(())
    }

    fn set_role(&mut self, node: NodeId, stamp: Stamp, role: Role) {
        let m = self.state.members.entry(node).or_default();
        Lww::merge(&mut m.role, stamp, role);
        self.dirty_members.insert(node);
    }

    fn set_cutoff(&mut self, node: NodeId, cutoff: u64) {
        let m = self.state.members.entry(node).or_default();
        m.cutoff = Some(m.cutoff.map_or(cutoff, |c| c.min(cutoff)));
        self.dirty_members.insert(node);
        let head = self.state.head_seq(&node);
        let staged = self
            .new_ops
            .get(&node)
            .and_then(|o| o.last())
            .map_or(0, |o| o.content().seq);
        if head.max(staged) > cutoff {
            self.state.rebuild_needed = true;
        }
    }

    /// Writes everything this working set staged, on top of `batch` (a rebuild's
    /// removals, a command's extra records; later writes win), in one atomic batch, then
    /// flushes. Returns the new state and the events to publish.
    pub fn commit_with(mut self, mut batch: S::Batch) -> Result<Committed, Error> {
        for (author, ops) in std::mem::take(&mut self.new_ops) {
            let rec = self.state.authors.get_mut(&author).expect("author of staged ops");
            oplog::write_ops(self.db, &mut batch, rec.idx, &mut rec.last_segment, &ops)?;
        }
        let stories: Vec<(StoryId, Vec<u8>)> = self
            .stories
            .iter()
            .filter(|(_, e)| e.dirty)
            .map(|(id, e)| (id.clone(), encode_story(&e.rec)))
            .collect();
        let staged = if self.fresh {
            // A rebuild (the journal is drained and the old keys are removed in `batch`):
            // straight into the story keys and the stage index.
            for (id, value) in stories {
                if let Some(kind) = value.first().and_then(|c| StageKind::from_code(*c)) {
                    batch.insert(&key::stage_index(kind, &id), &[]);
                }
                batch.insert(&key::story(&id), &value);
            }
            None
        } else if stories.is_empty() {
            None
        } else {
            Some(self.journal.stage(&mut batch, stories))
        };
        for node in &self.dirty_presence {
            batch.insert(&key::presence(node), &codec::encode(&self.presence[node]));
        }
        if self.lock_dirty {
            batch.insert(
                key::LOCK,
                &codec::encode(self.lock.as_ref().expect("dirty lock is loaded")),
            );
        }
        for node in &self.dirty_members {
            batch.insert(&key::member(node), &codec::encode(&self.state.members[node]));
        }
        for node in &self.dirty_authors {
            batch.insert(&key::author(node), &codec::encode(&self.state.authors[node]));
        }
        for (author, seq, id, bytes) in &self.forks {
            oplog::write_evidence(&mut batch, author, *seq, id, bytes);
        }
        if self.cluster_dirty {
            batch.insert(key::META_CLUSTER, &codec::encode(&self.state.cluster));
        }
        batch.insert(key::META_CLOCK, &codec::encode(&self.state.clock.value()));
        batch.insert(key::META_NEXT_IDX, &codec::encode(&self.state.next_idx));
        batch.insert(key::META_REBUILD, &codec::encode(&self.state.rebuild_needed));
        let written = storage::commit(self.db, batch);
        match (written, staged) {
            (Ok(()), Some(staged)) => self.journal.committed(staged)?,
            (Ok(()), None) => {}
            (Err(e), staged) => {
                if let Some(staged) = staged {
                    self.journal.abandoned(staged);
                }
                return Err(e);
            }
        }
        let mut cache = self.cache;
        if cache.len() + self.stories.len() > STORY_CACHE_MAX {
            cache.clear();
        }
        if self.stories.len() <= STORY_CACHE_MAX {
            cache.extend(self.stories.into_iter().map(|(id, e)| (id, e.rec)));
        }
        Ok(Committed {
            state: self.state,
            events: self.events,
            cache,
        })
    }
}

/// What a commit leaves: the new state, the events to publish and the records to start
/// the next batch from.
pub(crate) struct Committed {
    pub state: State,
    pub events: Vec<Event>,
    pub cache: StoryCache,
}
