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
use crate::journal::Journal;
use crate::keyspace as key;
use crate::op::SignedOp;
use crate::oplog;
use crate::pipeline::StageKind;
use crate::projection::{LeaseSet, PresenceRecord, StoryRecord};
use crate::record::encode_story;
use crate::reject::RejectReason;
use crate::storage::{self, Store, WriteBatch};

pub(crate) use admit::{require_admin, usable_key};
pub(crate) use state::State;

/// The per-batch outcome of admitting one verified op.
pub(crate) enum Admission {
    Applied,
    Duplicate,
    /// Its predecessor is missing; the op comes back to be buffered.
    Gap(SignedOp),
    Fork,
    Rejected(RejectReason),
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
    /// flushes. Returns the new state and the events to publish.
    pub fn commit_with(mut self, mut batch: S::Batch) -> Result<Committed, Error> {
        for (author, ops) in std::mem::take(&mut self.new_ops) {
            let rec = self.state.authors.get_mut(&author).expect("author of staged ops");
            debug_assert_eq!(
                ops.last().map(|o| (o.content().seq, Some(o.id()))),
                Some((rec.head_seq, rec.head_id)),
                "the author's record names its newest staged op as its head"
            );
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
            batch.insert(&key::presence(node), &self.presence[node].encode());
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
        if let Err(e) = self.db.apply(batch) {
            // Nothing of the batch is applied (the `Store` contract).
            if let Some(staged) = staged {
                self.journal.abandoned(staged);
            }
            return Err(e);
        }
        // From here the store holds the batch, so the node must hold it too: an error now
        // (a failed flush, or the fold a commit runs itself) is returned with the new state
        // in `Committed::error`, never by dropping the state.
        let flushed = self.db.flush();
        let durable = flushed.is_ok();
        let folded = match staged {
            Some(staged) => self.journal.committed(staged),
            None => Ok(()),
        };
        let error = flushed.err().or(folded.err());
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
