//! Merging ops into the projection, staged in a [`Working`] set and committed as one
//! atomic batch. Admission (chain checks and authorization: `admit.rs`) decides whether an
//! op counts; its payload's effect on the records is in `effect.rs`; the in-memory state
//! between commits is `state.rs`.

mod admit;
mod effect;
mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::codec;
use crate::error::Error;
use crate::event::Event;
use crate::id::{NodeId, OpId, StoryId};
use crate::journal::{Journal, StoryWrite};
use crate::keyspace as key;
use crate::op::{OpContent, SignedOp, UnsignedOp};
use crate::oplog;
use crate::pipeline::StageKind;
use crate::projection::{LeaseSet, PresenceRecord, StoryRecord};
use crate::record::encode_story;
use crate::reject::RejectReason;
use crate::storage::{self, Store, WriteBatch};

pub(crate) use admit::{require_admin, sets_cutoff, usable_key};
pub(crate) use state::State;

/// The per-batch outcome of admitting one verified op.
pub(crate) enum Admission {
    Applied,
    Duplicate,
    /// Its predecessor is missing; the op comes back to be buffered.
    Gap(SignedOp),
    Fork,
    /// An admin's removal void only because a concurrent removal cut its author just
    /// below it: kept (`R`) for the rebuild to weigh, which this admission asked for.
    Contested,
    /// Refused because its author lacks the authority (not a member, not authorized for
    /// the payload, cut off) as things stand: a later op may give it (an admission, fork
    /// evidence voiding a removal or demotion), so the ingest keeps it to try again
    /// (`Node::retry_parked`). Only a signed op; a local one is `Rejected`.
    AwaitingAuthority(SignedOp, RejectReason),
    Rejected(RejectReason),
}

/// An op staged in a working set: signed (remote ops, a rebuild's replay), or a local op
/// admitted before its signature is made (see [`UnsignedOp`]: the id does not cover the
/// signature, so admission needs only the content and the id). Every op is signed before
/// its batch is written ([`Working::commit_signing`], [`Sealed::put_signed`]).
pub(crate) enum NewOp {
    Signed(SignedOp),
    Unsigned(UnsignedOp),
}

impl NewOp {
    pub fn content(&self) -> &OpContent {
        match self {
            NewOp::Signed(op) => op.content(),
            NewOp::Unsigned(op) => op.content(),
        }
    }

    pub fn id(&self) -> OpId {
        match self {
            NewOp::Signed(op) => op.id(),
            NewOp::Unsigned(op) => op.id(),
        }
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
    /// Loaded as nothing from anywhere (not the cache, the journal or the store), and not
    /// sealed since: the story's key is absent ([`crate::journal::StoryWrite::unstored`]).
    unstored: bool,
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
    new_ops: BTreeMap<NodeId, Vec<NewOp>>,
    forks: Vec<(NodeId, u64, OpId, Vec<u8>)>,
    /// Setters to hold (`R` keys and values): contested removals ([`Admission::Contested`])
    /// and, in a rebuild, the setters it left void.
    contested: Vec<(Vec<u8>, Vec<u8>)>,
    cluster_dirty: bool,
    pub events: Vec<Event>,
    /// A claim op of another node was merged: the node should tell its peers promptly
    /// what it has seen (a heartbeat), so that the claimant can confirm its claim.
    claims_seen: bool,
    /// The local node's own heartbeat is in this batch.
    own_heartbeat: bool,
    /// Set during a rebuild: records start empty instead of being read from the store.
    fresh: bool,
    /// Room to reserve for the first author's ops in this batch (see [`Working::expecting`]).
    pending_ops_hint: usize,
    /// Cutoff-setting ops a rebuild found void under their own cutoffs (see
    /// [`Working::refusing`]); empty outside a rebuild.
    refused_setters: BTreeSet<OpId>,
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
            contested: Vec::new(),
            cluster_dirty: false,
            events: Vec::new(),
            claims_seen: false,
            own_heartbeat: false,
            fresh: false,
            pending_ops_hint: 0,
            refused_setters: BTreeSet::new(),
        }
    }

    /// A working set that ignores stored projection records (for a rebuild).
    pub fn fresh(db: &'a S, journal: &'a Journal<S>, state: State, local: NodeId) -> Self {
        let mut w = Working::new(db, journal, state, local);
        w.fresh = true;
        w
    }

    /// Marks every author and member record for writing. A rebuild deletes them all first,
    /// and an author whose every op became void (or a member known only by its cutoff) is
    /// not touched by the replay, so without this its quarantine or cutoff would be lost
    /// at the next open. Found by the `ingest` fuzz target (fuzz/regressions/ingest/).
    pub fn mark_all_records_dirty(&mut self) {
        self.dirty_authors.extend(self.state.authors.keys().copied());
        self.dirty_members.extend(self.state.members.keys().copied());
    }

    /// Refuses these ops (a rebuild's removals and rotations that are void under the
    /// cutoffs they set, `Node::rebuild`): their cutoffs are not set, and their authors'
    /// chains stop before them.
    pub fn refusing(mut self, ops: BTreeSet<OpId>) -> Self {
        self.refused_setters = ops;
        self
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

    /// Reserves room for the next group's `ops` ops and events (as [`Working::expecting`],
    /// for a working set that goes on after [`Working::seal`]).
    pub fn expect_group(&mut self, ops: usize) {
        self.events.reserve(ops);
        self.pending_ops_hint = ops;
    }

    /// Whether this batch changes what decides authority (members, roles, cutoffs,
    /// quarantines, the genesis admin), or runs a rebuild that may: ops refused for
    /// authority before it may count now.
    pub fn touches_authority(&self) -> bool {
        !self.dirty_members.is_empty()
            || !self.forks.is_empty()
            || self.cluster_dirty
            || self.state.rebuild_needed
    }

    pub fn has_changes(&self) -> bool {
        !self.new_ops.is_empty()
            || !self.forks.is_empty()
            || !self.contested.is_empty()
            || self.state.rebuild_needed
    }

    fn load_story(&mut self, id: &StoryId) -> Result<&mut StoryEntry, Error> {
        if !self.stories.contains_key(id) {
            let (rec, unstored) = if self.fresh {
                (StoryRecord::default(), false)
            } else if let Some(rec) = self.cache.remove(id) {
                (rec, false)
            } else {
                match self.journal.read(id)? {
                    Some(rec) => (rec, false),
                    None => (StoryRecord::default(), true),
                }
            };
            let entry = StoryEntry {
                rec,
                dirty: false,
                unstored,
            };
            self.stories.insert(id.clone(), entry);
        }
        Ok(self.stories.get_mut(id).expect("just inserted"))
    }

    /// The story's record as this batch sees it (empty default if never seen).
    pub fn story(&mut self, id: &StoryId) -> Result<&StoryRecord, Error> {
        Ok(&self.load_story(id)?.rec)
    }

    pub(super) fn story_mut(&mut self, id: &StoryId) -> Result<&mut StoryRecord, Error> {
        let e = self.load_story(id)?;
        e.dirty = true;
        Ok(&mut e.rec)
    }

    pub fn presence(&mut self, node: &NodeId) -> Result<Option<&PresenceRecord>, Error> {
        if !self.presence.contains_key(node) && !self.fresh {
            if let Some(bytes) = self.db.get(&key::presence(node))? {
                self.presence.insert(*node, PresenceRecord::decode(&bytes)?);
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

    /// Writes everything this working set staged, on top of `batch` (a rebuild's
    /// removals, a command's extra records; later writes win), in one atomic batch, then
    /// flushes. Returns the new state and the events to publish. Every staged op must be
    /// signed already (a rebuild's and an ingest's are); a command's working set is
    /// committed with [`Working::commit_signing`].
    pub fn commit_with(self, batch: S::Batch) -> Result<Committed, Error> {
        self.commit_signing(batch, |unsigned| {
            assert!(unsigned.is_empty(), "local ops are signed before their commit");
            Vec::new()
        })
    }

    /// [`Working::commit_with`], after signing the staged local ops with `sign` (all of
    /// them at once, in order, so that it may use several threads).
    pub fn commit_signing(
        mut self,
        batch: S::Batch,
        sign: impl FnOnce(Vec<UnsignedOp>) -> Vec<SignedOp>,
    ) -> Result<Committed, Error> {
        let empty = State::new(self.state.cluster.id);
        let state = std::mem::replace(&mut self.state, empty);
        let mut sealed = self.take_group(state, false);
        let unsigned = sealed.take_unsigned();
        if !unsigned.is_empty() {
            sealed.put_signed(sign(unsigned));
        }
        let written = sealed.write(self.db, self.journal, batch)?;
        Ok(Committed {
            state: written.state,
            events: written.events,
            cache: self.into_cache(),
            claims_seen: written.claims_seen,
            own_heartbeat: written.own_heartbeat,
            durable: written.durable,
            error: written.error,
        })
    }

    /// Ends a group of a pipelined append (`Node::execute_groups`): takes out everything
    /// it staged, encoded, as a [`Sealed`] group to be signed and written later, and leaves
    /// this working set ready for the next group, which sees this one's effects.
    ///
    /// The records this group changed stay loaded (clean) until the next seal, since the
    /// store does not hold them until this group is written; records of earlier groups
    /// move to the bounded cache. That is right as long as the next group but one is only
    /// built after this group is written (the pipeline holds at most two groups).
    pub fn seal(&mut self) -> Sealed {
        self.take_group(self.state.clone(), true)
    }

    /// Takes out this group's writes (see [`Sealed`]) and clears the dirty marks; with
    /// `evict`, records not changed by this group move to the cache.
    fn take_group(&mut self, state: State, evict: bool) -> Sealed {
        let mut stories = Vec::new();
        let mut evicted = Vec::new();
        for (id, e) in &mut self.stories {
            // Once this group is written, what it changed is in the journal or the store.
            let unstored = std::mem::take(&mut e.unstored);
            if e.dirty {
                stories.push(StoryWrite {
                    id: id.clone(),
                    value: encode_story(&e.rec),
                    unstored,
                });
                e.dirty = false;
            } else if evict {
                evicted.push(id.clone());
            }
        }
        for id in evicted {
            if let Some(e) = self.stories.remove(&id) {
                if self.cache.len() >= STORY_CACHE_MAX {
                    self.cache.clear();
                }
                self.cache.insert(id, e.rec);
            }
        }
        let mut records = Vec::new();
        for node in std::mem::take(&mut self.dirty_presence) {
            records.push((key::presence(&node).to_vec(), self.presence[&node].encode()));
        }
        if std::mem::take(&mut self.lock_dirty) {
            let lock = self.lock.as_ref().expect("dirty lock is loaded");
            records.push((key::LOCK.to_vec(), codec::encode(lock)));
        }
        for node in std::mem::take(&mut self.dirty_members) {
            records.push((key::member(&node).to_vec(), codec::encode(&state.members[&node])));
        }
        records.append(&mut self.contested);
        Sealed {
            new_ops: std::mem::take(&mut self.new_ops).into_iter().collect(),
            taken: Vec::new(),
            stories,
            fresh: self.fresh,
            records,
            dirty_authors: std::mem::take(&mut self.dirty_authors),
            forks: std::mem::take(&mut self.forks),
            cluster_dirty: std::mem::take(&mut self.cluster_dirty),
            state,
            events: std::mem::take(&mut self.events),
            claims_seen: std::mem::take(&mut self.claims_seen),
            own_heartbeat: std::mem::take(&mut self.own_heartbeat),
        }
    }

    /// Hands over the committed records this working set holds (loaded or cached): after
    /// a pipelined append, every group of which is written, they start the next batch.
    pub fn into_cache(self) -> StoryCache {
        let mut cache = self.cache;
        if cache.len() + self.stories.len() > STORY_CACHE_MAX {
            cache.clear();
        }
        if self.stories.len() <= STORY_CACHE_MAX {
            cache.extend(self.stories.into_iter().map(|(id, e)| (id, e.rec)));
        }
        cache
    }
}

/// One group's writes, taken out of a working set ([`Working::seal`]): its ops (signed,
/// or local ones still to be signed), its changed records already encoded, and the state
/// after it. [`Sealed::write`] stores it as one atomic batch with one flush.
pub(crate) struct Sealed {
    new_ops: Vec<(NodeId, Vec<NewOp>)>,
    /// Where [`Sealed::take_unsigned`] took ops out: (author position, op position), in
    /// ascending order, so that inserting them back in that order restores each position.
    taken: Vec<(usize, usize)>,
    /// Changed story records, encoded.
    stories: Vec<StoryWrite>,
    /// A rebuild's: stories go straight to their keys, not to the journal.
    fresh: bool,
    /// Changed presence, merge lock and member records: key and value.
    records: Vec<(Vec<u8>, Vec<u8>)>,
    /// Authors whose record is written (encoded at write time: writing ops moves the tail).
    dirty_authors: BTreeSet<NodeId>,
    forks: Vec<(NodeId, u64, OpId, Vec<u8>)>,
    cluster_dirty: bool,
    /// The node-wide state once this group is stored.
    pub state: State,
    pub events: Vec<Event>,
    claims_seen: bool,
    own_heartbeat: bool,
}

/// What writing a [`Sealed`] group leaves (see [`Committed`] for `durable` and `error`).
pub(crate) struct Written {
    pub state: State,
    pub events: Vec<Event>,
    pub claims_seen: bool,
    pub own_heartbeat: bool,
    pub durable: bool,
    pub error: Option<Error>,
}

impl Sealed {
    /// Whether the group writes anything (else it needs no batch and no flush).
    pub fn has_changes(&self) -> bool {
        !self.new_ops.is_empty() || !self.forks.is_empty() || self.state.rebuild_needed
    }

    /// Takes the ops still to be signed out, in order (to be signed on other threads);
    /// [`Sealed::put_signed`] puts them back.
    pub fn take_unsigned(&mut self) -> Vec<UnsignedOp> {
        let mut out = Vec::new();
        for (a, (_, ops)) in self.new_ops.iter_mut().enumerate() {
            for (i, op) in std::mem::take(ops).into_iter().enumerate() {
                match op {
                    NewOp::Unsigned(op) => {
                        self.taken.push((a, i));
                        out.push(op);
                    }
                    signed => ops.push(signed),
                }
            }
        }
        out
    }

    /// Puts back, in the order [`Sealed::take_unsigned`] gave them, the ops it took,
    /// signed.
    pub fn put_signed(&mut self, signed: Vec<SignedOp>) {
        assert_eq!(
            signed.len(),
            self.taken.len(),
            "every op taken out comes back signed"
        );
        for ((a, at), op) in std::mem::take(&mut self.taken).into_iter().zip(signed) {
            self.new_ops[a].1.insert(at, NewOp::Signed(op));
        }
    }

    /// Continues each writing author's open segment run from `committed` (the state after
    /// the group written before this one), which a pipelined group built before that
    /// write could not see.
    pub fn continue_tails(&mut self, committed: &State) {
        for (author, _) in &self.new_ops {
            let tail = committed.authors.get(author).and_then(|a| a.last_segment);
            if let Some(rec) = self.state.authors.get_mut(author) {
                rec.last_segment = tail;
            }
        }
    }

    /// Writes the group on top of `batch` in one atomic batch, then flushes. Every op
    /// must be signed (see [`Sealed::put_signed`]).
    pub fn write<S: Store>(
        mut self,
        db: &S,
        journal: &Journal<S>,
        mut batch: S::Batch,
    ) -> Result<Written, Error> {
        for (author, ops) in std::mem::take(&mut self.new_ops) {
            let ops: Vec<SignedOp> = ops
                .into_iter()
                .map(|op| match op {
                    NewOp::Signed(op) => op,
                    NewOp::Unsigned(_) => unreachable!("ops are signed before their group is written"),
                })
                .collect();
            let rec = self.state.authors.get_mut(&author).expect("author of staged ops");
            debug_assert_eq!(
                ops.last().map(|o| (o.content().seq, Some(o.id()))),
                Some((rec.head_seq, rec.head_id)),
                "the author's record names its newest staged op as its head"
            );
            oplog::write_ops(db, &mut batch, rec.idx, &mut rec.last_segment, &ops)?;
        }
        let staged = if self.fresh {
            // A rebuild (the journal is drained and the old keys are removed in `batch`):
            // straight into the story keys and the stage index.
            for StoryWrite { id, value, .. } in std::mem::take(&mut self.stories) {
                if let Some(kind) = value.first().and_then(|c| StageKind::from_code(*c)) {
                    batch.insert(&key::stage_index(kind, &id), &[]);
                }
                batch.insert(&key::story(&id), &value);
            }
            None
        } else if self.stories.is_empty() {
            None
        } else {
            Some(journal.stage(&mut batch, std::mem::take(&mut self.stories)))
        };
        for (k, v) in &self.records {
            batch.insert(k, v);
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
        if let Err(e) = db.apply(batch) {
            // Nothing of the batch is applied (the `Store` contract).
            if let Some(staged) = staged {
                journal.abandoned(staged);
            }
            return Err(e);
        }
        // From here the store holds the batch, so the node must hold it too: an error now
        // (a failed flush, or the fold a commit runs itself) is returned with the new state
        // in `Written::error`, never by dropping the state.
        let flushed = db.flush();
        let durable = flushed.is_ok();
        let folded = match staged {
            Some(staged) => journal.committed(staged),
            None => Ok(()),
        };
        let error = flushed.err().or(folded.err());
        Ok(Written {
            state: self.state,
            events: self.events,
            claims_seen: self.claims_seen,
            own_heartbeat: self.own_heartbeat,
            durable,
            error,
        })
    }
}

/// What a commit leaves: the new state, the events to publish and the records to start
/// the next batch from.
pub(crate) struct Committed {
    pub state: State,
    pub events: Vec<Event>,
    pub cache: StoryCache,
    /// A claim op of another node was merged (see `Node::heartbeat_wanted`).
    pub claims_seen: bool,
    /// The batch holds the local node's own heartbeat.
    pub own_heartbeat: bool,
    /// The batch's flush returned `Ok`: the commit survives a crash.
    pub durable: bool,
    /// What failed after the batch was applied: its flush (then the commit may or may not
    /// survive a crash: sled persists applied batches on its own, a crash before that loses
    /// it), or the journal fold the commit ran itself. The store holds the batch either way,
    /// so the caller adopts `state` and `cache` and then returns this error.
    pub error: Option<Error>,
}
