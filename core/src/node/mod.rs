//! [`Node`]: one node's home, key, store and projection. This file holds the node itself
//! (opening, the mark, committing); each kind of work has a file of its own:
//!
//! - `command.rs` — local commands: validated against the projection, signed, merged;
//!   key rotation.
//! - `ingest.rs` — remote ops: verification, buffering of gaps, and the rebuild after
//!   voided ops.
//! - `query.rs` — reads of the projection and the log, and `verify`.
//! - `sync.rs` — what the sync protocol reads, and join tickets.

mod append;
mod command;
mod ingest;
mod query;
mod sync;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRngCore;

use crate::codec;
use crate::error::Error;
use crate::event::{self, Event, Subscribers, Subscription};
use crate::home::Home;
use crate::id::{ClusterId, NodeId, OpId};
use crate::journal::Journal;
use crate::key::NodeKey;
use crate::keyspace::{self as key, STORE_FORMAT_VERSION};
use crate::mark::{Mark, MarkValue};
use crate::merge::{Committed, State, StoryCache, Working};
use crate::op::{derive_cluster_id, SignedOp, UnsignedOp};
use crate::oplog;
use crate::payload::Payload;
use crate::storage::{self, CompactionPolicy, SledStore, Store, WriteBatch};
use crate::time::Timestamp;
use crate::version::VersionVector;

pub use append::GroupResult;
pub use command::{Command, Receipt, PARALLEL_SIGN_MIN};
pub(crate) use ingest::decode_split;
pub use ingest::{IngestReport, Rejection};

/// Tunables of a [`Node`]. Each limit bounds memory or time against a misbehaving peer.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A node whose last heartbeat is older than this is not alive, and its claims and
    /// locks stop counting even before they expire.
    pub stale_after_secs: u64,
    /// Most out-of-order ops held while their predecessors are missing; also, separately,
    /// the most ops held to be tried again after their author's authority changes
    /// ([`IngestReport::rejected`]).
    pub max_buffered_ops: usize,
    /// Most bytes of out-of-order ops held (and, separately, of ops held to be tried again).
    pub max_buffered_bytes: usize,
    /// Threads used to verify signatures of large ingests.
    pub verify_threads: usize,
    /// Ops per atomic batch when ingesting a large input.
    pub ingest_batch: usize,
    /// When [`Node::open`] and [`Node::init`] rewrite a sled store that has grown well past
    /// its size after its last compaction (see [`CompactionPolicy`]).
    pub compaction: CompactionPolicy,
    /// Bytes of sled's page cache for a home's store (`Node::open`, `Node::init`; other
    /// backends ignore it). Default [`crate::DEFAULT_STORE_CACHE_BYTES`] (32 MiB); a larger
    /// cache adds resident memory roughly in proportion.
    pub store_cache_bytes: u64,
    /// Threads that sign local ops: the signing threads of
    /// [`Node::execute_groups`], and the threads [`Node::execute_group`] signs a group of
    /// at least [`PARALLEL_SIGN_MIN`] ops on. 1 signs on the calling thread only (and one
    /// signing thread beside it in `execute_groups`). The bytes stored are the same for
    /// any value.
    pub sign_threads: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            stale_after_secs: 90,
            max_buffered_ops: 100_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            verify_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ingest_batch: 4096,
            compaction: CompactionPolicy::DEFAULT,
            store_cache_bytes: crate::storage::DEFAULT_STORE_CACHE_BYTES,
            sign_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// How a new home starts.
#[derive(Clone, Debug)]
pub enum InitMode {
    /// A new cluster whose first admin is this node.
    NewCluster {
        /// Human name.
        name: String,
    },
    /// A node that will be admitted to an existing cluster (an admin adds its id; it then
    /// receives the cluster's ops).
    Join {
        /// The cluster.
        cluster: ClusterId,
    },
}

/// One node: its home (locked while this value lives), key, store and projection.
///
/// `S` is the store's backend: sled ([`SledStore`], what [`Node::init`] and [`Node::open`]
/// use) unless a node is made with [`Node::init_with_backend`] or
/// [`Node::open_with_backend`].
pub struct Node<S: Store = SledStore> {
    /// Declared first so that it is dropped first: it folds what is left while the home
    /// is still locked.
    journal: Arc<Journal<S>>,
    home: Home,
    db: S,
    key: NodeKey,
    state: State,
    config: NodeConfig,
    keys: HashMap<NodeId, VerifyingKey>,
    /// Out-of-order ops waiting for their predecessor, by author, seq and id: two ops for
    /// one seq both wait (the second is evidence of a fork once the gap fills).
    buffer: BTreeMap<(NodeId, u64, OpId), SignedOp>,
    buffered_bytes: usize,
    /// Ops an ingest refused for their author's authority (unknown, unauthorized, cut
    /// off), kept to be admitted again once an ingest changes membership
    /// (`Node::retry_parked`). Bounded like `buffer`, by the same limits.
    parked: BTreeMap<OpId, SignedOp>,
    parked_bytes: usize,
    /// An ingest changed membership, roles, cutoffs or quarantines since the parked ops
    /// were last tried.
    authority_changed: bool,
    /// Story records as last committed (taken by each batch, given back by its commit).
    stories: StoryCache,
    subscribers: Arc<Mutex<Subscribers>>,
    /// A claim op of another node was merged since this node's last heartbeat: see
    /// [`Node::heartbeat_wanted`].
    heartbeat_wanted: bool,
    /// How far this node's own chain and clock had got at the last acknowledged commit.
    mark: Mark,
    /// Set when the store holds fewer of the marked chain's ops than were acknowledged:
    /// no local op is written until ingest brings them back.
    behind: Option<Behind>,
}

/// A store that lost ops of its own chain which it had acknowledged (see [`crate::mark`]).
#[derive(Clone, Copy, Debug)]
struct Behind {
    node: NodeId,
    held: u64,
    acknowledged: u64,
}

impl<S: Store> std::fmt::Debug for Node<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("home", &self.home.root())
            .field("node", &self.node_id())
            .field("cluster", &self.state.cluster.id)
            .finish()
    }
}

impl Node<SledStore> {
    /// Creates a home at `root`, its store in sled: see [`Node::init_with_backend`].
    pub fn init(
        root: &Path,
        mode: InitMode,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<Node, Error> {
        let key = NodeKey::generate(rng);
        Node::init_with_key(root, mode, key, rng, now, config)
    }

    /// [`Node::init`] with a given node key (one kept from a lost home: [`Node::restore`]).
    pub(crate) fn init_with_key(
        root: &Path,
        mode: InitMode,
        key: NodeKey,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<Node, Error> {
        let home = Home::create(root)?;
        let db = SledStore::open_configured(&home.store_path(), config.store_cache_bytes, config.compaction)?;
        Node::init_in(home, db, mode, key, rng, now, config)
    }

    /// Opens an existing home and its sled store: see [`Node::open_with_backend`].
    pub fn open(root: &Path, config: NodeConfig) -> Result<Node, Error> {
        let home = Home::open(root)?;
        let store_path = home.store_path();
        // A compaction a crash interrupted may have left the store under another name.
        crate::storage::recover_compaction(&store_path)?;
        if !store_path.exists() {
            return Err(Error::Corrupt(format!(
                "home {} has a key but no store",
                root.display()
            )));
        }
        let db = SledStore::open_configured(&store_path, config.store_cache_bytes, config.compaction)?;
        Node::open_in(home, db, config)
    }

    /// What opening this node's store did about its size: kept it, compacted it (sizes
    /// before and after), or failed to compact it (the store is then the original, in use);
    /// see [`CompactionPolicy`].
    pub fn store_compaction(&self) -> &crate::storage::CompactionOutcome {
        self.db.compaction()
    }
}

impl<S: Store> Node<S> {
    /// Creates a home at `root` on `backend` (an empty store): a node key (mode 0600) and
    /// either a new cluster (this node its first admin) or an empty store waiting to join
    /// one. The store's first contents (format, cluster, own id and, for a new cluster,
    /// the genesis op) are one batch and one flush; if that fails, the key file is removed
    /// again, so the directory is not left looking like a home.
    pub fn init_with_backend(
        root: &Path,
        backend: S,
        mode: InitMode,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<Node<S>, Error> {
        let home = Home::create(root)?;
        let key = NodeKey::generate(rng);
        Node::init_in(home, backend, mode, key, rng, now, config)
    }

    fn init_in(
        home: Home,
        db: S,
        mode: InitMode,
        key: NodeKey,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<Node<S>, Error> {
        let me = key.node_id();
        let (cluster, genesis) = match &mode {
            InitMode::NewCluster { name } => {
                let mut nonce = [0u8; 16];
                rng.fill_bytes(&mut nonce);
                let payload = Payload::Genesis {
                    name: name.clone(),
                    nonce,
                };
                payload.validate().map_err(Error::InvalidArgument)?;
                (derive_cluster_id(&me, name, &nonce), Some(payload))
            }
            InitMode::Join { cluster } => (*cluster, None),
        };
        let state = State::new(cluster);
        let mut batch = S::Batch::default();
        batch.insert(key::META_FORMAT, &codec::encode(&STORE_FORMAT_VERSION));
        batch.insert(key::META_CLUSTER, &codec::encode(&state.cluster));
        batch.insert(key::META_SELF, &codec::encode(&me));
        let key_path = home.key_path();
        key.save_new(&key_path)?;
        let written = Node::assemble(home, db, key, state, config).and_then(|mut node| {
            match genesis {
                Some(payload) => {
                    let (db, journal) = (node.db.clone(), node.journal.clone());
                    let mut w = Working::new(&db, &journal, node.state.clone(), me);
                    let op = node.build_op(&w, payload, now)?;
                    w.admit_local(op)?;
                    node.commit(w, batch)?;
                }
                None => storage::commit(&node.db, batch)?,
            }
            Ok(node)
        });
        if written.is_err() {
            // Nothing of the store was written (one batch); without its key the directory
            // is not a home, and `init` can be run again.
            let _ = std::fs::remove_file(&key_path);
        }
        written
    }

    /// Opens an existing home whose store is `backend`, taking the home's lock. Reads the
    /// persisted projection: nothing is replayed or re-verified. Migrates a store of an
    /// older format first (one batch).
    pub fn open_with_backend(root: &Path, backend: S, config: NodeConfig) -> Result<Node<S>, Error> {
        let home = Home::open(root)?;
        Node::open_in(home, backend, config)
    }

    fn open_in(home: Home, db: S, config: NodeConfig) -> Result<Node<S>, Error> {
        let format: u32 = storage::get(&db, key::META_FORMAT, "format version")?
            .ok_or_else(|| Error::Corrupt("store has no format version".into()))?;
        match format {
            STORE_FORMAT_VERSION => {}
            1..=4 => crate::journal::migrate(&db, format)?,
            _ => {
                return Err(Error::UnsupportedFormat {
                    found: format,
                    writes: STORE_FORMAT_VERSION,
                })
            }
        }
        let state = State::load(&db)?;
        let stored_self: NodeId = storage::get(&db, key::META_SELF, "own id")?
            .ok_or_else(|| Error::Corrupt("store does not record its node id".into()))?;
        let key = finish_rotation(&home, &state, stored_self)?;
        let mut node = Node::assemble(home, db, key, state, config)?;
        if node.state.rebuild_needed {
            node.rebuild()?;
        }
        Ok(node)
    }

    /// Puts a node together. Reads the store mark (creating it when missing): the clock
    /// resumes above every timestamp the mark records, and a store that holds fewer ops of
    /// the marked chain than were acknowledged is opened behind (it will not write).
    fn assemble(
        home: Home,
        db: S,
        key: NodeKey,
        mut state: State,
        config: NodeConfig,
    ) -> Result<Node<S>, Error> {
        let me = key.node_id();
        let current = MarkValue {
            node: me,
            seq: state.head_seq(&me),
            lamport: state.clock.value(),
        };
        let (mark, read) = Mark::open(&home.mark_path(), current)?;
        let mut behind = None;
        if let Some(v) = read {
            state.clock.observe(v.lamport);
            let held = state.head_seq(&v.node);
            if held < v.seq {
                behind = Some(Behind {
                    node: v.node,
                    held,
                    acknowledged: v.seq,
                });
            }
        }
        Ok(Node {
            journal: Arc::new(Journal::open(&db)?),
            home,
            db,
            key,
            state,
            config,
            keys: HashMap::new(),
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            parked: BTreeMap::new(),
            parked_bytes: 0,
            authority_changed: false,
            stories: StoryCache::new(),
            subscribers: Arc::default(),
            heartbeat_wanted: false,
            mark,
            behind,
        })
    }

    /// When this node's store holds fewer of its own ops than it had acknowledged (sled
    /// recovered a damaged log by dropping its tail, or `store/` was replaced by an older
    /// copy): `(held, acknowledged)`. The node writes nothing until a peer has sent the
    /// missing ops back. (A whole home restored from a backup brings its old mark along;
    /// the sync handshake catches that case instead.)
    pub fn own_ops_missing(&self) -> Option<(u64, u64)> {
        self.behind.map(|b| (b.held, b.acknowledged))
    }

    /// Brings the mark up to the committed state, and lifts `behind` once the chain is
    /// whole again. Runs after every commit. The marked seq only goes down when `shortened`:
    /// a rebuild that voided this node's own ops past a cutoff, on purpose.
    fn record_mark(&mut self, shortened: bool) -> Result<(), Error> {
        if let Some(b) = &mut self.behind {
            b.held = self.state.head_seq(&b.node);
            if b.held >= b.acknowledged {
                self.behind = None;
            }
        }
        let prev = self.mark.value();
        let lamport = prev.lamport.max(self.state.clock.value());
        let next = match self.behind {
            // Keep the acknowledged position until the chain is whole again.
            Some(_) => MarkValue { lamport, ..prev },
            None => {
                let me = self.node_id();
                let seq = self.state.head_seq(&me);
                MarkValue {
                    node: me,
                    seq: if prev.node == me && !shortened {
                        seq.max(prev.seq)
                    } else {
                        seq
                    },
                    lamport,
                }
            }
        };
        debug_assert!(
            next.lamport >= self.state.clock.value(),
            "the mark never lags the clock: a restart cannot reuse a timestamp"
        );
        if next != prev {
            self.mark.write(next)?;
        }
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.key.node_id()
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> ClusterId {
        self.state.cluster.id
    }

    /// The cluster's name (once its genesis is known).
    pub fn cluster_name(&self) -> Option<&str> {
        self.state.cluster.name.as_deref()
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        self.home.root()
    }

    /// Records in the home's lock file that this node is run by a daemon listening on
    /// `listen` and advertised as `advertise`: another process refused the home is then
    /// told where the daemon is (`Error::HomeLockedByDaemon`, [`crate::LockHolder`]), and
    /// a second daemon can fail at once naming it.
    pub fn note_daemon(&self, listen: &str, advertise: &str) -> Result<(), Error> {
        self.home.note_daemon(listen, advertise)
    }

    /// Whether this node should write its heartbeat now rather than at its next period: a
    /// claim op of another node was merged since its last heartbeat, and the claimant is
    /// waiting to learn that this node has seen it (a heartbeat says what its author has
    /// seen; `docs/protocol.md`, "Claims"). Cleared by this node's next heartbeat. A host
    /// that writes heartbeats (the daemon) checks it after merging peers' ops.
    pub fn heartbeat_wanted(&self) -> bool {
        self.heartbeat_wanted
    }

    /// The Lamport clock: the highest timestamp seen or issued.
    pub fn lamport(&self) -> u64 {
        self.state.clock.value()
    }

    /// Per author, the highest contiguous seq held.
    pub fn version_vector(&self) -> VersionVector {
        self.state.version_vector()
    }

    /// Ops waiting for missing predecessors.
    pub fn buffered_ops(&self) -> usize {
        self.buffer.len()
    }

    /// The next op of this node's chain as the working set sees it: seq, `prev`, Lamport
    /// time and id assigned, the signature still to be made (at commit).
    pub(super) fn build_op(
        &self,
        w: &Working<'_, S>,
        payload: Payload,
        now: Timestamp,
    ) -> Result<UnsignedOp, Error> {
        if let Some(b) = self.behind {
            return Err(Error::OwnChainBehind {
                held: b.held,
                acknowledged: b.acknowledged,
            });
        }
        let me = self.node_id();
        let (head_seq, head_id) = w
            .state
            .authors
            .get(&me)
            .map_or((0, None), |a| (a.head_seq, a.head_id));
        let lamport = w.state.clock.next().ok_or(Error::ClockExhausted)?;
        oplog::build_next(
            &self.key,
            w.state.cluster.id,
            head_seq,
            head_id,
            lamport,
            now,
            payload,
        )
    }

    /// Commits a working set (with `batch`'s writes in the same atomic batch), its local
    /// ops signed first (see [`Node::sign_ops`]), then publishes its events, records the
    /// mark and, if the batch voided merged ops, rebuilds.
    pub(super) fn commit(&mut self, w: Working<'_, S>, batch: S::Batch) -> Result<Vec<Event>, Error> {
        let committed = w.commit_signing(batch, |ops| self.sign_ops(ops))?;
        self.committed(committed)
    }

    /// Signs local ops in order: on [`NodeConfig::sign_threads`] threads when there are at
    /// least [`PARALLEL_SIGN_MIN`] of them, else on this thread.
    pub(super) fn sign_ops(&self, ops: Vec<UnsignedOp>) -> Vec<SignedOp> {
        let threads = if ops.len() >= PARALLEL_SIGN_MIN {
            self.config.sign_threads
        } else {
            1
        };
        oplog::sign_all(ops, &self.key, threads)
    }

    /// What follows a stored batch: the node takes its state, publishes its events,
    /// records the mark and, if the batch voided merged ops, rebuilds.
    pub(super) fn committed(&mut self, committed: Committed) -> Result<Vec<Event>, Error> {
        let Committed {
            state,
            events,
            cache,
            claims_seen,
            own_heartbeat,
            durable,
            error,
        } = committed;
        if own_heartbeat {
            self.heartbeat_wanted = false;
        }
        if claims_seen {
            self.heartbeat_wanted = true;
        }
        self.state = state;
        self.stories = cache;
        self.drop_dead_buffered();
        if !durable {
            // The store holds the batch and so does this node (the next commit's flush
            // makes it durable), but a crash before then loses it: no event yet, and the
            // mark (the acknowledged chain) stays where it was.
            return Err(error.unwrap_or_else(|| Error::Corrupt("a commit neither flushed nor failed".into())));
        }
        event::publish(&self.subscribers, &events);
        // The batch is stored: subscribers hear of it even if the mark cannot be written
        // (that error says the batch is stored).
        let marked = self.record_mark(false);
        if let Some(e) = error {
            // A fold failed after a durable commit; a rebuild it flagged runs at the next
            // commit or open.
            return Err(e);
        }
        if self.state.rebuild_needed {
            self.rebuild()?;
        }
        marked?;
        Ok(events)
    }

    /// Forgets held out-of-order ops that can never count: two or more past their author's
    /// cutoff. Admission refuses such ops when the cutoff is known on arrival; this drops
    /// those that were buffered before their author's removal (or rotation) was learnt,
    /// which would otherwise wait forever for a predecessor that is void.
    pub(super) fn drop_dead_buffered(&mut self) {
        let members = &self.state.members;
        let before = self.buffer.len();
        self.buffer.retain(|(author, seq, _), _| {
            members
                .get(author)
                .and_then(|m| m.cutoff)
                .is_none_or(|cutoff| *seq <= cutoff.saturating_add(1))
        });
        if self.buffer.len() != before {
            self.buffered_bytes = self.buffer.values().map(|o| o.bytes().len()).sum();
        }
    }

    /// Adds a subscriber: `f` runs after every commit, once per committed transition
    /// (local or remote), and for claims this node lost. Dropping the returned handle
    /// unsubscribes.
    pub fn subscribe(&self, f: impl FnMut(&Event) + Send + 'static) -> Subscription {
        event::subscribe(&self.subscribers, Box::new(f))
    }

    /// Bytes the store occupies on disk.
    pub fn store_size(&self) -> Result<u64, Error> {
        self.db.size_on_disk()
    }

    /// Finishes what an earlier failed call left pending (a rebuild its error interrupted,
    /// which the next commit or open would otherwise run: until then queries show the
    /// projection from before it), folds the story journal into the story keys and flushes
    /// the store (every commit is durable already; for callers about to exit that want to
    /// hear of a failure).
    pub fn flush(&mut self) -> Result<(), Error> {
        if self.state.rebuild_needed {
            self.rebuild()?;
        }
        self.journal.drain()?;
        self.db.flush()?;
        Ok(())
    }
}

pub(super) fn quarantined(state: &State) -> Vec<NodeId> {
    state
        .authors
        .keys()
        .filter(|n| state.quarantine(n).is_some())
        .copied()
        .collect()
}

/// Picks the key a home should sign with: after a committed rotation, the new key (moved
/// into place now if a crash interrupted the rotation); otherwise the key file's.
///
/// `current` is the id the store records as its own. A rotation's batch records the new
/// key there; stores written before that did not (they named the new key only as the old
/// key's successor), so a successor of `current` is accepted too.
pub(super) fn finish_rotation(home: &Home, state: &State, current: NodeId) -> Result<NodeKey, Error> {
    let successor = state.members.get(&current).and_then(|m| m.rotated_to);
    let next = home.next_key_path();
    if next.exists() {
        let next_key = NodeKey::load(&next)?;
        let rotated = next_key.node_id() == current || successor == Some(next_key.node_id());
        if rotated {
            std::fs::rename(&next, home.key_path())
                .map_err(|e| Error::io("installing the rotated key", e))?;
            return Ok(next_key);
        }
        std::fs::remove_file(&next).map_err(|e| Error::io("removing an unused next key", e))?;
    }
    let key = NodeKey::load(&home.key_path())?;
    if key.node_id() != current && successor != Some(key.node_id()) {
        return Err(Error::Corrupt(format!(
            "key file {} does not belong to this store (store is node {})",
            home.key_path().display(),
            current
        )));
    }
    Ok(key)
}
