//! [`Node`]: one node's home, key, store and projection, with every command and query.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use ed25519_dalek::VerifyingKey;
use rand_core::CryptoRngCore;

use crate::bundle::{decode_bundle, encode_bundle};
use crate::error::Error;
use crate::event::{self, Event, Subscribers, Subscription, TransitionEvent};
use crate::execution::{apply_execution_event, ExecutionEvent, ExecutionState};
use crate::id::{ClusterId, NodeId, OpId, StoryId};
use crate::journal::{decode_story, Journal};
use crate::key::{verifying_key, NodeKey};
use crate::mark::{Mark, MarkValue};
use crate::merge::{for_each_op, Admission, Committed, RejectReason, State, StoryCache, Working};
use crate::op::{
    derive_cluster_id, rotation_proof, verify_ops, OpBytes, OpContent, SignedOp, UnverifiedOp,
    OP_FORMAT_VERSION,
};
use crate::payload::{Payload, Role, StoryField};
use crate::pipeline::{transition, PipelineEvent, StageKind};
use crate::projection::{Lease, PresenceRecord, Stamp, StoryRecord};
use crate::store::{self, key, Home, STORE_FORMAT_VERSION};
use crate::time::Timestamp;
use crate::version::VersionVector;
use crate::view::{self, ForkInfo, Member, NodeInfo, OpSummary, Story, Transition, VerifyReport};

/// Tunables of a [`Node`]. Each limit bounds memory or time against a misbehaving peer.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A node whose last heartbeat is older than this is not alive, and its claims and
    /// locks stop counting even before they expire.
    pub stale_after_secs: u64,
    /// Most out-of-order ops held while their predecessors are missing.
    pub max_buffered_ops: usize,
    /// Most bytes of out-of-order ops held.
    pub max_buffered_bytes: usize,
    /// Threads used to verify signatures of large ingests.
    pub verify_threads: usize,
    /// Ops per atomic batch when ingesting a large input.
    pub ingest_batch: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            stale_after_secs: 90,
            max_buffered_ops: 100_000,
            max_buffered_bytes: 64 * 1024 * 1024,
            verify_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ingest_batch: 8192,
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

/// A local change; see [`Node::execute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// New story in the backlog.
    AddStory {
        /// Id.
        id: StoryId,
        /// Name.
        name: String,
        /// Body.
        body: Option<String>,
        /// Dependencies.
        depends_on: Vec<StoryId>,
    },
    /// Change one field.
    UpdateStory {
        /// Story.
        id: StoryId,
        /// Field and value.
        field: StoryField,
    },
    /// Apply a pipeline event.
    Event {
        /// Story.
        id: StoryId,
        /// Event.
        event: PipelineEvent,
    },
    /// Tombstone a story.
    DeleteStory {
        /// Story.
        id: StoryId,
    },
    /// Claim a story (or renew this node's claim).
    Claim {
        /// Story.
        id: StoryId,
        /// Lease length in seconds.
        ttl_secs: u32,
    },
    /// Give up this node's claim.
    Release {
        /// Story.
        id: StoryId,
    },
    /// Take (or renew) the merge lock.
    AcquireMergeLock {
        /// Lease length in seconds.
        ttl_secs: u32,
    },
    /// Release this node's merge lock.
    ReleaseMergeLock,
    /// Clear a merge lock whose holder is dead or whose lease ran out.
    ClearStaleMergeLock,
    /// Publish this node's presence (and heartbeat).
    Heartbeat {
        /// Label.
        label: String,
        /// Address for peers.
        address: Option<String>,
    },
    /// Advance this node's execution state for a story.
    Execution {
        /// Story.
        id: StoryId,
        /// Event.
        event: ExecutionEvent,
    },
    /// Admit a node (admins only).
    AddMember {
        /// The node.
        node: NodeId,
        /// Its role.
        role: Role,
    },
    /// Remove a node (admins only); its ops after the last one we hold are void.
    RemoveMember {
        /// The node.
        node: NodeId,
    },
}

/// What a committed local op was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The op.
    pub op_id: OpId,
    /// Its seq.
    pub seq: u64,
    /// Its Lamport timestamp.
    pub lamport: u64,
}

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

/// One node: its home (locked while this value lives), key, store and projection.
pub struct Node {
    /// Declared first so that it is dropped first: it folds what is left while the home
    /// is still locked.
    journal: Arc<Journal>,
    home: Home,
    db: sled::Db,
    key: NodeKey,
    state: State,
    config: NodeConfig,
    keys: HashMap<NodeId, VerifyingKey>,
    buffer: BTreeMap<(NodeId, u64), SignedOp>,
    buffered_bytes: usize,
    /// Story records as last committed (taken by each batch, given back by its commit).
    stories: StoryCache,
    subscribers: Arc<Mutex<Subscribers>>,
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

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("home", &self.home.root())
            .field("node", &self.node_id())
            .field("cluster", &self.state.cluster.id)
            .finish()
    }
}

impl Node {
    /// Creates a home at `root`: a node key (mode 0600), a store, and either a new cluster
    /// (this node its first admin) or an empty store waiting to join one.
    pub fn init(
        root: &Path,
        mode: InitMode,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<Node, Error> {
        let home = Home::create(root)?;
        let key = NodeKey::generate(rng);
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
        let db = store::open_db(&home.store_path())?;
        let state = State::new(cluster);
        let mut batch = sled::Batch::default();
        batch.insert(key::meta("format"), store::encode(&STORE_FORMAT_VERSION));
        batch.insert(key::meta("cluster"), store::encode(&state.cluster));
        batch.insert(key::meta("self"), store::encode(&me));
        db.apply_batch(batch)?;
        db.flush()?;
        key.save_new(&home.key_path())?;
        let mut node = Node::assemble(home, db, key, state, config)?;
        if let Some(payload) = genesis {
            let (db, journal) = (node.db.clone(), node.journal.clone());
            let mut w = Working::new(&db, &journal, node.state.clone(), me);
            let op = node.build_op(&w, payload, now)?;
            w.admit_local(op)?;
            node.commit(w)?;
        }
        Ok(node)
    }

    /// Opens an existing home, taking its lock. Reads the persisted projection: nothing is
    /// replayed or re-verified.
    pub fn open(root: &Path, config: NodeConfig) -> Result<Node, Error> {
        let home = Home::open(root)?;
        let store_path = home.store_path();
        if !store_path.exists() {
            return Err(Error::Corrupt(format!(
                "home {} has a key but no store",
                root.display()
            )));
        }
        let db = store::open_db(&store_path)?;
        let format: u32 = store::get(&db, &key::meta("format"), "format version")?
            .ok_or_else(|| Error::Corrupt("store has no format version".into()))?;
        match format {
            STORE_FORMAT_VERSION => {}
            1 | 2 => crate::journal::migrate(&db, format)?,
            _ => {
                return Err(Error::Corrupt(format!(
                    "store format {format} is not supported (this build reads formats 1 to \
                     {STORE_FORMAT_VERSION} and writes {STORE_FORMAT_VERSION})"
                )))
            }
        }
        let state = State::load(&db)?;
        let stored_self: NodeId = store::get(&db, &key::meta("self"), "own id")?
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
        db: sled::Db,
        key: NodeKey,
        mut state: State,
        config: NodeConfig,
    ) -> Result<Node, Error> {
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
            stories: StoryCache::new(),
            subscribers: Arc::default(),
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

    fn build_op(&self, w: &Working<'_>, payload: Payload, now: Timestamp) -> Result<SignedOp, Error> {
        if let Some(b) = self.behind {
            return Err(Error::Corrupt(format!(
                "this node's store holds {} of the {} ops of its own chain that it had \
                 acknowledged (the store was damaged, or replaced by an older copy). It will not \
                 write until a peer has sent the missing ops back (run `huskies daemon` with a \
                 connection to the cluster): writing now would reuse sequence numbers and fork \
                 its chain",
                b.held, b.acknowledged
            )));
        }
        let me = self.node_id();
        let (head_seq, head_id) = w
            .state
            .authors
            .get(&me)
            .map_or((0, None), |a| (a.head_seq, a.head_id));
        let lamport =
            w.state.clock.next().ok_or_else(|| {
                Error::Corrupt("the Lamport clock is exhausted; this node cannot write".into())
            })?;
        let content = OpContent {
            version: OP_FORMAT_VERSION,
            cluster: w.state.cluster.id,
            author: me,
            seq: head_seq + 1,
            lamport,
            prev: head_id,
            wall: now,
            payload,
        };
        SignedOp::sign(content, &self.key).map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    fn commit(&mut self, w: Working<'_>) -> Result<Vec<Event>, Error> {
        let Committed { state, events, cache } = w.commit()?;
        self.state = state;
        self.stories = cache;
        self.drop_dead_buffered();
        event::publish(&self.subscribers, &events);
        // The batch is stored: subscribers hear of it even if the mark cannot be written
        // (that error says the batch is stored).
        let marked = self.record_mark(false);
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
    fn drop_dead_buffered(&mut self) {
        let members = &self.state.members;
        let before = self.buffer.len();
        self.buffer.retain(|(author, seq), _| {
            members
                .get(author)
                .and_then(|m| m.cutoff)
                .is_none_or(|cutoff| *seq <= cutoff.saturating_add(1))
        });
        if self.buffer.len() != before {
            self.buffered_bytes = self.buffer.values().map(|o| o.bytes().len()).sum();
        }
    }

    /// Applies one command: validated against the projection, signed, stored durably
    /// (flushed) before it returns. An invalid command writes nothing.
    pub fn execute(&mut self, now: Timestamp, cmd: Command) -> Result<Receipt, Error> {
        self.execute_group(now, vec![cmd])?
            .pop()
            .expect("one result per command")
    }

    /// Group commit: each command is validated and signed in turn (seeing the effects of
    /// those before it), and all that succeed are stored in one atomic batch with one
    /// flush. Each command gets its own result; a refused command writes nothing.
    pub fn execute_group(
        &mut self,
        now: Timestamp,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories))
            .expecting(cmds.len());
        let mut results = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let r = self.payload_for(&mut w, now, cmd).and_then(|payload| {
                let op = self.build_op(&w, payload, now)?;
                let receipt = Receipt {
                    op_id: op.id(),
                    seq: op.content().seq,
                    lamport: op.content().lamport,
                };
                w.admit_local(op)?;
                Ok(receipt)
            });
            results.push(r);
        }
        if w.has_changes() {
            self.commit(w)?;
        }
        Ok(results)
    }

    fn lease_live(&self, w: &mut Working<'_>, lease: &Lease, now: Timestamp) -> Result<bool, Error> {
        let heartbeat = w.presence(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(self.live(lease, heartbeat, now))
    }

    fn live(&self, lease: &Lease, heartbeat: Option<Timestamp>, now: Timestamp) -> bool {
        let last_seen = heartbeat.map_or(lease.claimed_at, |h| h.max(lease.claimed_at));
        now < lease.expires_at && now.millis_since(last_seen) <= self.stale_ms()
    }

    fn stale_ms(&self) -> i64 {
        i64::try_from(self.config.stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn visible_story<'w>(w: &'w mut Working<'_>, id: &StoryId) -> Result<&'w StoryRecord, Error> {
        let rec = w.story(id)?;
        if rec.created.is_none() {
            return Err(Error::NotFound(format!("story {id} not found")));
        }
        if rec.deleted.is_some() {
            return Err(Error::NotFound(format!("story {id} was deleted")));
        }
        Ok(rec)
    }

    fn my_role(&self, w: &Working<'_>) -> Option<Role> {
        w.state.members.get(&self.node_id()).and_then(|m| m.role())
    }

    /// Validates a command against the working projection and turns it into a payload.
    fn payload_for(&self, w: &mut Working<'_>, now: Timestamp, cmd: Command) -> Result<Payload, Error> {
        let me = self.node_id();
        let payload = match cmd {
            Command::AddStory {
                id,
                name,
                body,
                depends_on,
            } => {
                let rec = w.story(&id)?;
                if rec.created.is_some() {
                    let what = if rec.deleted.is_some() {
                        "was deleted; story ids are not reused"
                    } else {
                        "exists already"
                    };
                    return Err(Error::AlreadyExists(format!("story {id} {what}")));
                }
                Payload::StoryCreate {
                    story: id,
                    name,
                    body,
                    depends_on,
                }
            }
            Command::UpdateStory { id, field } => {
                Self::visible_story(w, &id)?;
                Payload::StoryUpdate { story: id, field }
            }
            Command::Event { id, event } => {
                let rec = Self::visible_story(w, &id)?;
                let from = rec.stage();
                transition(&from, &event, now).map_err(|source| Error::InvalidTransition {
                    story: id.clone(),
                    source,
                })?;
                Payload::Transition {
                    base: rec.stage_op(),
                    story: id,
                    event,
                    from,
                }
            }
            Command::DeleteStory { id } => {
                Self::visible_story(w, &id)?;
                Payload::StoryDelete { story: id }
            }
            Command::Claim { id, ttl_secs } => {
                let current = Self::visible_story(w, &id)?
                    .claims
                    .current()
                    .map(|(s, l)| (s, l.clone()));
                let mut takes_over = None;
                if let Some((stamp, lease)) = current {
                    if lease.node != me {
                        if self.lease_live(w, &lease, now)? {
                            return Err(Error::ClaimConflict {
                                what: format!("story {id}"),
                                holder: lease.node,
                                expires_at: lease.expires_at,
                            });
                        }
                        takes_over = Some((lease.node, stamp.lamport));
                    }
                }
                Payload::Claim {
                    story: id,
                    ttl_secs,
                    takes_over,
                }
            }
            Command::Release { id } => {
                let rec = Self::visible_story(w, &id)?;
                let mine = rec.claims.current().filter(|(_, l)| l.node == me).is_some();
                if !mine {
                    return Err(Error::NotFound(format!("this node holds no claim on story {id}")));
                }
                Payload::Release { story: id }
            }
            Command::AcquireMergeLock { ttl_secs } => {
                if let Some(lease) = w.lock()?.current().map(|(_, l)| l.clone()) {
                    if lease.node != me && self.lease_live(w, &lease, now)? {
                        return Err(Error::ClaimConflict {
                            what: "the merge lock".into(),
                            holder: lease.node,
                            expires_at: lease.expires_at,
                        });
                    }
                }
                Payload::LockAcquire { ttl_secs }
            }
            Command::ReleaseMergeLock => {
                let mine = w.lock()?.current().is_some_and(|(_, l)| l.node == me);
                if !mine {
                    return Err(Error::NotFound("this node does not hold the merge lock".into()));
                }
                Payload::LockRelease
            }
            Command::ClearStaleMergeLock => {
                let Some((stamp, lease)) = w.lock()?.current().map(|(s, l)| (s, l.clone())) else {
                    return Err(Error::NotFound("nobody holds the merge lock".into()));
                };
                if self.lease_live(w, &lease, now)? {
                    return Err(Error::ClaimConflict {
                        what: "the merge lock".into(),
                        holder: lease.node,
                        expires_at: lease.expires_at,
                    });
                }
                Payload::LockClear {
                    holder: lease.node,
                    through: stamp.lamport,
                }
            }
            Command::Heartbeat { label, address } => Payload::Presence { label, address },
            Command::Execution { id, event } => {
                let rec = Self::visible_story(w, &id)?;
                let current = rec
                    .execution
                    .get(&me)
                    .map(|s| s.value.clone())
                    .unwrap_or(ExecutionState::Idle);
                let state = apply_execution_event(&current, &event, now).map_err(|source| {
                    Error::InvalidExecution {
                        story: id.clone(),
                        source,
                    }
                })?;
                Payload::Execution { story: id, state }
            }
            Command::AddMember { node, role } => {
                if self.my_role(w) != Some(Role::Admin) {
                    return Err(Error::Unauthorized("only an admin may add members".into()));
                }
                if verifying_key(&node).is_none() {
                    return Err(Error::InvalidArgument(format!(
                        "{node} is not a usable Ed25519 public key"
                    )));
                }
                if let Some(m) = w.state.members.get(&node) {
                    if m.cutoff.is_some() {
                        return Err(Error::AlreadyExists(format!(
                            "node {node} was removed; a removed key cannot rejoin (generate a new key)"
                        )));
                    }
                    if m.role().is_some() {
                        return Err(Error::AlreadyExists(format!("node {node} is a member already")));
                    }
                }
                Payload::MemberAdd { node, role }
            }
            Command::RemoveMember { node } => {
                if self.my_role(w) != Some(Role::Admin) {
                    return Err(Error::Unauthorized("only an admin may remove members".into()));
                }
                let member = w
                    .state
                    .members
                    .get(&node)
                    .filter(|m| m.role().is_some() && m.cutoff.is_none());
                let Some(member) = member else {
                    return Err(Error::NotFound(format!("node {node} is not a member")));
                };
                if member.role() == Some(Role::Admin) {
                    let admins = w
                        .state
                        .members
                        .values()
                        .filter(|m| m.role() == Some(Role::Admin) && m.cutoff.is_none())
                        .count();
                    if admins <= 1 {
                        return Err(Error::InvalidArgument("cannot remove the last admin".into()));
                    }
                }
                let cutoff_seq = w.state.head_seq(&node);
                Payload::MemberRemove { node, cutoff_seq }
            }
        };
        payload.validate().map_err(Error::InvalidArgument)?;
        Ok(payload)
    }

    /// Hands this node's membership to a fresh key. The new key is written beside the old
    /// one first, so a crash at any point leaves a home that opens with the right key.
    pub fn rotate_key(&mut self, now: Timestamp, rng: &mut impl CryptoRngCore) -> Result<Receipt, Error> {
        let new_key = NodeKey::generate(rng);
        let next = self.home.next_key_path();
        if next.exists() {
            std::fs::remove_file(&next).map_err(|e| Error::io("removing a stale next key", e))?;
        }
        new_key.save_new(&next)?;
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories));
        if self.my_role(&w).is_none() {
            return Err(Error::Unauthorized("this node is not a member".into()));
        }
        let proof = rotation_proof(&w.state.cluster.id, &self.node_id(), &new_key);
        let op = self.build_op(
            &w,
            Payload::KeyRotate {
                new_key: new_key.node_id(),
                proof,
            },
            now,
        )?;
        let receipt = Receipt {
            op_id: op.id(),
            seq: op.content().seq,
            lamport: op.content().lamport,
        };
        w.admit_local(op)?;
        self.commit(w)?;
        self.key = finish_rotation(&self.home, &self.state, self.node_id())?;
        let mut batch = sled::Batch::default();
        batch.insert(key::meta("self"), store::encode(&self.key.node_id()));
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(receipt)
    }

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

    /// Decodes a bundle (see [`crate::encode_bundle`]) and ingests it. Ops that do not
    /// decode are reported as rejections; a broken bundle is an error and ingests nothing.
    pub fn ingest_bundle(&mut self, bytes: &[u8]) -> Result<IngestReport, Error> {
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
            let events = self.commit(w)?;
            report.events.extend(events);
        }
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
    fn rebuild(&mut self) -> Result<(), Error> {
        self.stories.clear();
        let old = self.state.clone();
        let mut ops = Vec::new();
        for (node, rec) in &old.authors {
            let until = old.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            for_each_op(&self.db, rec.idx, 1, |op| {
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
        let mut batch = sled::Batch::default();
        for prefix in [&b"O"[..], b"S", b"K", b"N", b"L", b"U", b"A"] {
            for kv in self.db.scan_prefix(prefix) {
                batch.remove(kv?.0);
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
        let committed = w.commit_with(batch)?;
        self.state = committed.state;
        self.stories = committed.cache;
        // A rebuild may shorten this node's own chain on purpose (ops past a cutoff are
        // void): the mark follows it down, so that the next open does not take the shorter
        // chain for a store that lost ops.
        self.record_mark(true)
    }

    /// Adds a subscriber: `f` runs after every commit, once per committed transition
    /// (local or remote), and for claims this node lost. Dropping the returned handle
    /// unsubscribes.
    pub fn subscribe(&self, f: impl FnMut(&Event) + Send + 'static) -> Subscription {
        event::subscribe(&self.subscribers, Box::new(f))
    }

    /// Sends the current stage of every live story through the event stream
    /// (`replay: true`), so a subscriber that starts late can reconcile.
    pub fn replay_state(&self) -> Result<usize, Error> {
        let mut events = Vec::new();
        self.journal.drain()?;
        for kv in self.db.scan_prefix(b"S") {
            let (k, v) = kv?;
            let rec = decode_story(&v)?;
            if !rec.visible() {
                continue;
            }
            let id = story_id_from_key(&k)?;
            events.push(Event::Transition(TransitionEvent {
                story: id,
                before: None,
                after: rec.stage(),
                op_id: None,
                author: None,
                event: None,
                conflict: false,
                replay: true,
            }));
        }
        event::publish(&self.subscribers, &events);
        Ok(events.len())
    }

    fn record(&self, id: &StoryId) -> Result<StoryRecord, Error> {
        self.journal
            .read(id)?
            .filter(|r| r.created.is_some())
            .ok_or_else(|| Error::NotFound(format!("story {id} not found")))
    }

    fn presence_record(&self, node: &NodeId) -> Result<Option<PresenceRecord>, Error> {
        store::get(&self.db, &key::presence(node), "presence record")
    }

    fn live_claim(&self, rec: &StoryRecord, now: Timestamp) -> Result<Option<Lease>, Error> {
        let Some((_, lease)) = rec.claims.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(self.live(lease, hb, now).then(|| lease.clone()))
    }

    /// The story's newest claim entry (its stamp and lease) whether or not it is live at
    /// `now`, and whether it is: what the claim-expired signal needs (`envelope::signals`).
    pub fn claim_entry(&self, id: &StoryId, now: Timestamp) -> Result<Option<(Stamp, Lease, bool)>, Error> {
        let rec = self.record(id)?;
        let Some((stamp, lease)) = rec.claims.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(Some((stamp, lease.clone(), self.live(lease, hb, now))))
    }

    /// One story (deleted stories are returned with `deleted: true`). `now` decides whether
    /// its claim is live.
    pub fn story(&self, id: &StoryId, now: Timestamp) -> Result<Story, Error> {
        let rec = self.record(id)?;
        let claim = self.live_claim(&rec, now)?;
        Ok(view::story_view(id, &rec, claim))
    }

    /// Live (not deleted) stories, sorted by id, optionally only those in one stage.
    pub fn stories(&self, stage: Option<StageKind>, now: Timestamp) -> Result<Vec<Story>, Error> {
        let mut out = Vec::new();
        self.journal.drain()?;
        match stage {
            Some(kind) => {
                let prefix = key::stage_index_prefix(kind);
                for kv in self.db.scan_prefix(prefix) {
                    let (k, _) = kv?;
                    let id = StoryId::new(String::from_utf8_lossy(&k[2..]).into_owned())
                        .map_err(|_| Error::Corrupt("bad stage index key".into()))?;
                    out.push(self.story(&id, now)?);
                }
            }
            None => {
                for kv in self.db.scan_prefix(b"S") {
                    let (k, v) = kv?;
                    let rec = decode_story(&v)?;
                    if rec.visible() {
                        let claim = self.live_claim(&rec, now)?;
                        out.push(view::story_view(&story_id_from_key(&k)?, &rec, claim));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Number of live stories per stage.
    pub fn stage_counts(&self) -> Result<BTreeMap<StageKind, usize>, Error> {
        let mut counts = BTreeMap::new();
        self.journal.drain()?;
        for kind in StageKind::ALL {
            counts.insert(kind, self.db.scan_prefix(key::stage_index_prefix(kind)).count());
        }
        Ok(counts)
    }

    /// A story's transitions in merge order, with conflicts flagged.
    pub fn history(&self, id: &StoryId) -> Result<Vec<Transition>, Error> {
        Ok(view::history_view(&self.record(id)?))
    }

    /// This node's execution state for a story... or any node's.
    pub fn execution_state(&self, id: &StoryId, node: &NodeId) -> Result<ExecutionState, Error> {
        let rec = self.record(id)?;
        Ok(rec
            .execution
            .get(node)
            .map(|s| s.value.clone())
            .unwrap_or_default())
    }

    /// The live merge lock at `now`, if any.
    pub fn merge_lock(&self, now: Timestamp) -> Result<Option<Lease>, Error> {
        let set: crate::projection::LeaseSet =
            store::get(&self.db, key::LOCK, "merge lock")?.unwrap_or_default();
        let Some((_, lease)) = set.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(self.live(lease, hb, now).then(|| lease.clone()))
    }

    /// A merge lock that is held but no longer live (its holder is dead or its lease ran
    /// out): what [`Command::ClearStaleMergeLock`] would clear.
    pub fn stale_merge_lock(&self, now: Timestamp) -> Result<Option<Lease>, Error> {
        let set: crate::projection::LeaseSet =
            store::get(&self.db, key::LOCK, "merge lock")?.unwrap_or_default();
        let Some((_, lease)) = set.current() else {
            return Ok(None);
        };
        let hb = self.presence_record(&lease.node)?.map(|p| p.heartbeat_at);
        Ok((!self.live(lease, hb, now)).then(|| lease.clone()))
    }

    /// Every node that published presence, with liveness at `now`.
    pub fn nodes(&self, now: Timestamp) -> Result<Vec<NodeInfo>, Error> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(b"N") {
            let (k, v) = kv?;
            let node = NodeId::from_bytes(
                k[1..]
                    .try_into()
                    .map_err(|_| Error::Corrupt("bad presence key".into()))?,
            );
            let p: PresenceRecord = store::decode(&v, "presence record")?;
            out.push(NodeInfo {
                node,
                alive: now.millis_since(p.heartbeat_at) <= self.stale_ms(),
                label: p.label,
                address: p.address,
                last_heartbeat: p.heartbeat_at,
            });
        }
        Ok(out)
    }

    /// Members and their roles.
    pub fn members(&self) -> Vec<Member> {
        self.state
            .members
            .iter()
            .filter_map(|(node, m)| {
                Some(Member {
                    node: *node,
                    role: m.role()?,
                    removed: m.cutoff.is_some(),
                    rotated_to: m.rotated_to,
                    quarantined: self.state.quarantine(node).is_some(),
                })
            })
            .collect()
    }

    /// Equivocations on record.
    pub fn forks(&self) -> Result<Vec<ForkInfo>, Error> {
        let mut out = Vec::new();
        for node in self.state.authors.keys() {
            let Some(at_seq) = self.state.quarantine(node) else {
                continue;
            };
            let mut evidence = Vec::new();
            for kv in self.db.scan_prefix(fork_prefix(node)) {
                let (k, _) = kv?;
                evidence.push(OpId::from_bytes(
                    k[41..73]
                        .try_into()
                        .map_err(|_| Error::Corrupt("bad fork key".into()))?,
                ));
            }
            out.push(ForkInfo {
                author: *node,
                at_seq,
                evidence,
            });
        }
        Ok(out)
    }

    /// Every valid op the holder of `vv` lacks, in Lamport order (so membership ops come
    /// before the ops they admit), plus fork evidence for quarantined authors.
    pub fn ops_since(&self, vv: &VersionVector) -> Result<Vec<SignedOp>, Error> {
        let mut out = Vec::new();
        for (node, rec) in &self.state.authors {
            let until = self.state.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            let from = vv.get(node) + 1;
            if from <= until {
                for_each_op(&self.db, rec.idx, from, |op| {
                    if op.content().seq > until {
                        return Ok(false);
                    }
                    out.push(op);
                    Ok(true)
                })?;
            }
            if rec.quarantined_at.is_some() {
                for kv in self.db.scan_prefix(fork_prefix(node)) {
                    let (_, v) = kv?;
                    out.push(
                        SignedOp::from_trusted_bytes(&v)
                            .map_err(|e| Error::Corrupt(format!("fork evidence: {e}")))?,
                    );
                }
            }
        }
        out.sort_by_key(|op| (op.content().lamport, op.content().author, op.content().seq));
        Ok(out)
    }

    /// [`Node::ops_since`] as a bundle.
    pub fn export_since(&self, vv: &VersionVector) -> Result<Vec<u8>, Error> {
        Ok(encode_bundle(&self.ops_since(vv)?))
    }

    /// Stored ops, optionally of one author, in Lamport order.
    pub fn log(&self, author: Option<&NodeId>) -> Result<Vec<OpSummary>, Error> {
        let mut ops = self.ops_since(&VersionVector::default())?;
        if let Some(a) = author {
            ops.retain(|op| op.content().author == *a);
        }
        Ok(ops.iter().map(OpSummary::of).collect())
    }

    /// Re-checks every stored op: segment checksums, decoding, signatures (`verify_strict`),
    /// per-author seq contiguity, hash chain and Lamport order, and the recorded heads.
    pub fn verify(&self, mut progress: impl FnMut(u64)) -> Result<VerifyReport, Error> {
        let mut report = VerifyReport::default();
        for (node, rec) in &self.state.authors {
            let mut expected_seq = 1u64;
            let mut prev: Option<OpId> = None;
            let mut lamport = 0u64;
            for kv in self.db.scan_prefix(key::segment_prefix(rec.idx)) {
                let (k, v) = kv?;
                let first = key::segment_first_seq(&k);
                let ops = match store::decode_segment(&v) {
                    Ok(ops) => ops,
                    Err(e) => {
                        report
                            .problems
                            .push(format!("author {}: segment at seq {first}: {e}", node.short()));
                        continue;
                    }
                };
                if first != expected_seq {
                    report.problems.push(format!(
                        "author {}: segment starts at seq {first}, expected {expected_seq}",
                        node.short()
                    ));
                }
                for bytes in ops {
                    report.ops_checked += 1;
                    let op = match UnverifiedOp::decode(&bytes) {
                        Ok(op) => op,
                        Err(e) => {
                            report.problems.push(format!(
                                "author {}: op after seq {}: {e}",
                                node.short(),
                                expected_seq - 1
                            ));
                            continue;
                        }
                    };
                    let c = op.content().clone();
                    if c.author != *node {
                        report.problems.push(format!(
                            "author {}: seq {} is signed by {}",
                            node.short(),
                            c.seq,
                            c.author.short()
                        ));
                    }
                    if c.seq != expected_seq {
                        report.problems.push(format!(
                            "author {}: found seq {}, expected {expected_seq}",
                            node.short(),
                            c.seq
                        ));
                    }
                    if c.prev != prev {
                        report.problems.push(format!(
                            "author {}: seq {} breaks the hash chain",
                            node.short(),
                            c.seq
                        ));
                    }
                    if c.lamport <= lamport {
                        report.problems.push(format!(
                            "author {}: seq {} does not increase the Lamport clock",
                            node.short(),
                            c.seq
                        ));
                    }
                    let id = op.id();
                    if let Err((_, e)) = op.verify() {
                        report
                            .problems
                            .push(format!("author {}: seq {}: {e}", node.short(), c.seq));
                    }
                    expected_seq = c.seq + 1;
                    prev = Some(id);
                    lamport = c.lamport;
                    progress(report.ops_checked);
                }
            }
            if expected_seq - 1 != rec.head_seq || prev != rec.head_id {
                report.problems.push(format!(
                    "author {}: store holds ops up to seq {}, its record says {}",
                    node.short(),
                    expected_seq - 1,
                    rec.head_seq
                ));
            }
        }
        self.journal.drain()?;
        for kv in self.db.scan_prefix(b"S") {
            let (k, v) = kv?;
            if let Err(e) = decode_story(&v) {
                report
                    .problems
                    .push(format!("story {}: {e}", String::from_utf8_lossy(&k[1..])));
            }
        }
        report.forks = self.forks()?;
        report.ok = report.problems.is_empty();
        Ok(report)
    }

    /// Bytes the store occupies on disk.
    pub fn store_size(&self) -> Result<u64, Error> {
        Ok(self.db.size_on_disk()?)
    }

    /// Folds the story journal into the story keys and flushes the store (every commit is
    /// durable already; for callers about to exit that want to hear of a failure).
    pub fn flush(&self) -> Result<(), Error> {
        self.journal.drain()?;
        self.db.flush()?;
        Ok(())
    }
}

fn fork_prefix(node: &NodeId) -> Vec<u8> {
    let mut k = key::fork(node, 0, &OpId::from_bytes([0; 32]));
    k.truncate(33);
    k
}

fn quarantined(state: &State) -> Vec<NodeId> {
    state
        .authors
        .iter()
        .filter(|(_, a)| a.quarantined_at.is_some())
        .map(|(n, _)| *n)
        .collect()
}

fn story_id_from_key(k: &[u8]) -> Result<StoryId, Error> {
    let s = std::str::from_utf8(&k[1..]).map_err(|_| Error::Corrupt("story key is not UTF-8".into()))?;
    StoryId::new(s).map_err(|_| Error::Corrupt(format!("bad story key {s:?}")))
}

/// Picks the key a home should sign with: after a committed rotation, the new key (moved
/// into place now if a crash interrupted the rotation); otherwise the key file's.
fn finish_rotation(home: &Home, state: &State, current: NodeId) -> Result<NodeKey, Error> {
    let next = home.next_key_path();
    if next.exists() {
        let next_key = NodeKey::load(&next)?;
        let rotated = state.members.get(&current).and_then(|m| m.rotated_to) == Some(next_key.node_id());
        if rotated {
            std::fs::rename(&next, home.key_path())
                .map_err(|e| Error::io("installing the rotated key", e))?;
            return Ok(next_key);
        }
        std::fs::remove_file(&next).map_err(|e| Error::io("removing an unused next key", e))?;
    }
    let key = NodeKey::load(&home.key_path())?;
    if key.node_id() != current {
        return Err(Error::Corrupt(format!(
            "key file {} does not belong to this store (store is node {})",
            home.key_path().display(),
            current
        )));
    }
    Ok(key)
}

/// What the sync protocol needs from a node.
impl Node {
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
        let quarantined = self
            .state
            .authors
            .get(node)
            .is_some_and(|a| a.quarantined_at.is_some());
        member && !quarantined
    }

    /// The op `author` signed at `seq`, if this node holds it.
    pub fn op_at(&self, author: &NodeId, seq: u64) -> Result<Option<SignedOp>, Error> {
        match self.state.authors.get(author) {
            Some(rec) if seq >= 1 && seq <= rec.head_seq => crate::merge::read_op(&self.db, rec.idx, seq),
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

    /// Authors quarantined for equivocation.
    pub fn quarantined_authors(&self) -> Vec<NodeId> {
        quarantined(&self.state)
    }

    /// The signed ops kept as evidence of an author's equivocation.
    pub fn fork_evidence(&self, author: &NodeId) -> Result<Vec<SignedOp>, Error> {
        let mut out = Vec::new();
        for kv in self.db.scan_prefix(fork_prefix(author)) {
            let (_, v) = kv?;
            out.push(
                SignedOp::from_trusted_bytes(&v)
                    .map_err(|e| Error::Corrupt(format!("fork evidence: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The next ops a holder of `have` lacks, about `max_bytes` of them, in Lamport order
    /// across authors (so an admission precedes the admitted node's ops). Reads at most
    /// `max_bytes` per author: a catch-up of N ops costs O(N) reads in total.
    pub fn ops_for_sync(&self, have: &VersionVector, max_bytes: usize) -> Result<Vec<OpBytes>, Error> {
        let mut all = Vec::new();
        let mut horizon: Option<(u64, NodeId)> = None;
        for (node, rec) in &self.state.authors {
            let until = self.state.valid_until(node).unwrap_or(u64::MAX).min(rec.head_seq);
            let from = have.get(node) + 1;
            if from > until {
                continue;
            }
            let mut bytes = 0usize;
            let mut truncated = false;
            let mut last = None;
            crate::merge::for_each_op_bytes(&self.db, rec.idx, *node, from, |op| {
                if op.seq > until {
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
    ) -> Result<crate::sync::Ticket, Error> {
        if self.state.members.get(&self.node_id()).and_then(|m| m.role()) != Some(Role::Admin) {
            return Err(Error::Unauthorized(
                "only an admin may create join tickets".into(),
            ));
        }
        if ttl_secs == 0 || ttl_secs > u64::from(crate::payload::MAX_TTL_SECS) {
            return Err(Error::InvalidArgument(format!(
                "ticket ttl must be 1 to {} seconds",
                crate::payload::MAX_TTL_SECS
            )));
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let expires_at = now.add_secs(ttl_secs);
        self.db.insert(
            crate::sync::ticket_key(&secret),
            store::encode(&crate::sync::TicketRecord { expires_at }),
        )?;
        self.db.flush()?;
        Ok(crate::sync::Ticket {
            cluster: self.cluster_id(),
            issuer: self.node_id(),
            address,
            secret,
            expires_at,
        })
    }

    /// Redeems a join ticket for `node`: admits it as a member (one signed op) and forgets
    /// the ticket. Fails for unknown, used or expired tickets.
    pub fn redeem_ticket(&mut self, now: Timestamp, secret: &[u8; 32], node: NodeId) -> Result<(), Error> {
        let k = crate::sync::ticket_key(secret);
        let rec: crate::sync::TicketRecord = store::get(&self.db, &k, "ticket")?
            .ok_or_else(|| Error::Unauthorized("unknown or already used join ticket".into()))?;
        if now >= rec.expires_at {
            self.db.remove(&k)?;
            self.db.flush()?;
            return Err(Error::Unauthorized(format!(
                "join ticket expired at {}",
                rec.expires_at
            )));
        }
        match self.execute(
            now,
            Command::AddMember {
                node,
                role: Role::Member,
            },
        ) {
            Ok(_) => {}
            Err(Error::AlreadyExists(_)) if self.is_active_member(&node) => {}
            Err(e) => return Err(e),
        }
        self.db.remove(&k)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::rand_core::SeedableRng;

    use super::*;
    use crate::journal::{encode_entry, encode_story_v2};

    fn now() -> Timestamp {
        Timestamp::from_millis(1_763_700_000_000)
    }

    fn config() -> NodeConfig {
        NodeConfig {
            verify_threads: 1,
            ..NodeConfig::default()
        }
    }

    /// Every story key and its record, after folding the journal.
    fn stored(node: &Node) -> Vec<(Vec<u8>, StoryRecord)> {
        node.flush().unwrap();
        node.db
            .scan_prefix(b"S")
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (k.to_vec(), decode_story(&v).unwrap())
            })
            .collect()
    }

    /// What a user sees of every story.
    fn seen(node: &Node) -> Vec<(Story, Vec<Transition>)> {
        node.stories(None, now())
            .unwrap()
            .into_iter()
            .map(|s| {
                let history = node.history(&s.id).unwrap();
                (s, history)
            })
            .collect()
    }

    /// Rewrites a closed home's story values as format 1 or 2 wrote them; for format 2 the
    /// records also go into an unfolded journal entry, as a crash before folding leaves them.
    fn downgrade(root: &Path, format: u32) {
        let db = store::open_db(&root.join(store::STORE_DIR)).unwrap();
        let mut batch = sled::Batch::default();
        let mut entry = Vec::new();
        for kv in db.scan_prefix(b"S") {
            let (k, v) = kv.unwrap();
            let rec = decode_story(&v).unwrap();
            let old = if format == 1 {
                store::encode(&rec)
            } else {
                encode_story_v2(&rec)
            };
            if format == 2 {
                let id = StoryId::new(std::str::from_utf8(&k[1..]).unwrap()).unwrap();
                entry.push((id, old.clone()));
            }
            batch.insert(k, old);
        }
        if format == 2 {
            batch.insert(&key::journal(0)[..], encode_entry(&entry));
        }
        batch.insert(key::meta("format"), store::encode(&format));
        db.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }

    fn opens_after_migration_from(format: u32) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(u64::from(format));
        let mut node = Node::init(
            &root,
            InitMode::NewCluster { name: "t".into() },
            &mut rng,
            now(),
            config(),
        )
        .unwrap();
        let id = |s: &str| StoryId::new(s).unwrap();
        let add = |id: StoryId| Command::AddStory {
            id,
            name: "Fix the login redirect loop when a session has expired".into(),
            body: Some("Users bounce between /login and /home.".into()),
            depends_on: vec![],
        };
        let done = id("1_done");
        node.execute(now(), add(done.clone())).unwrap();
        for event in [
            PipelineEvent::DepsMet,
            PipelineEvent::GatesStarted,
            PipelineEvent::GatesPassed {
                branch: "feature/1".into(),
                commits: std::num::NonZeroU32::new(2).unwrap(),
            },
            PipelineEvent::MergeSucceeded {
                commit: "abc123".into(),
            },
            PipelineEvent::Accepted,
        ] {
            node.execute(
                now(),
                Command::Event {
                    id: done.clone(),
                    event,
                },
            )
            .unwrap();
        }
        let claimed = id("2_claimed");
        node.execute(now(), add(claimed.clone())).unwrap();
        node.execute(
            now(),
            Command::Claim {
                id: claimed.clone(),
                ttl_secs: 600,
            },
        )
        .unwrap();
        node.execute(
            now(),
            Command::Execution {
                id: claimed,
                event: ExecutionEvent::SpawnRequested {
                    agent: "coder".into(),
                },
            },
        )
        .unwrap();
        let gone = id("3_gone");
        node.execute(now(), add(gone.clone())).unwrap();
        node.execute(now(), Command::DeleteStory { id: gone }).unwrap();
        let (records, views) = (stored(&node), seen(&node));
        assert_eq!(records.len(), 3);
        drop(node);

        downgrade(&root, format);
        let node = Node::open(&root, config()).unwrap();
        let format: u32 = store::get(&node.db, &key::meta("format"), "format")
            .unwrap()
            .unwrap();
        assert_eq!(format, STORE_FORMAT_VERSION);
        assert_eq!(seen(&node), views);
        assert_eq!(stored(&node), records);
        let report = node.verify(|_| {}).unwrap();
        assert!(report.ok, "{:?}", report.problems);
    }

    #[test]
    fn a_format_2_home_opens_after_migration() {
        opens_after_migration_from(2);
    }

    #[test]
    fn a_format_1_home_opens_after_migration() {
        opens_after_migration_from(1);
    }

    #[test]
    fn a_newer_store_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("home");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        drop(
            Node::init(
                &root,
                InitMode::Join {
                    cluster: ClusterId::from_bytes([1; 32]),
                },
                &mut rng,
                now(),
                config(),
            )
            .unwrap(),
        );
        let db = store::open_db(&root.join(store::STORE_DIR)).unwrap();
        db.insert(key::meta("format"), store::encode(&(STORE_FORMAT_VERSION + 1)))
            .unwrap();
        db.flush().unwrap();
        drop(db);
        let err = Node::open(&root, config()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt);
        assert!(err.to_string().contains("not supported"), "{err}");
    }
}
