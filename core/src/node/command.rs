//! Local commands: each is validated against the projection as the batch sees it,
//! turned into a payload, signed and admitted through the same merge path as a remote op.

use rand_core::CryptoRngCore;

use super::{finish_rotation, Node};
use crate::codec;
use crate::error::Error;
use crate::execution::{apply_execution_event, ExecutionEvent, ExecutionState};
use crate::id::{NodeId, OpId, StoryId};
use crate::key::NodeKey;
use crate::keyspace as key;
use crate::merge::{require_admin, usable_key, Working};
use crate::op::{rotation_proof, UnsignedOp};
use crate::payload::{Payload, Role, StoryField};
use crate::pipeline::{is_merge_failure_kind, transition, PipelineEvent, MERGE_FAILURE_KINDS};
use crate::projection::{Lease, StoryRecord};
use crate::storage::{Store, WriteBatch};
use crate::time::Timestamp;

/// A local change; see [`Node::execute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// New story in the backlog.
    ///
    /// Refused locally (nothing is signed): an id already used, an id that does not start
    /// with a letter or a digit (`invalid_argument`; see [`StoryId`]), an empty or blank `name`
    /// (`invalid_argument`), a dependency that is not a live story on this node
    /// (`not_found`) or the story itself. An op from a peer is accepted whatever its
    /// dependencies and name say: a dependency may simply not have reached this node yet,
    /// and an op's validity must not depend on arrival order; the projection keeps the ids
    /// as given.
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
    /// Change one field. A new name or dependency list is checked as in
    /// [`Command::AddStory`].
    UpdateStory {
        /// Story.
        id: StoryId,
        /// Field and value.
        field: StoryField,
    },
    /// Apply a pipeline event.
    ///
    /// Refused locally besides what the transition table refuses (`invalid_transition`,
    /// naming the events allowed from the story's stage): a blank reason on an event that
    /// records one, a `merge-conflict` kind outside [`crate::MERGE_FAILURE_KINDS`]
    /// (`invalid_argument`), and a `supersede` by the story itself (`invalid_argument`) or
    /// by a story that is not live on this node (`not_found`). Ops from peers are not held
    /// to these, as for [`Command::AddStory`].
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
    /// Publish this node's label and address without a heartbeat (what `init` and `join`
    /// write): the node is listed but not alive until its host heartbeats.
    Announce {
        /// Label.
        label: String,
        /// Address for peers.
        address: Option<String>,
    },
    /// Publish this node's presence and heartbeat, with what it has seen (per author, the
    /// Lamport timestamp of its newest op held): a running host writes it periodically, and
    /// promptly after merging another node's claim ([`Node::heartbeat_wanted`]).
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
    /// `--force`: run the inner [`Command::Event`], [`Command::DeleteStory`] or
    /// [`Command::Release`] even though another node holds a live claim on the story (which
    /// refuses it otherwise, `claim_conflict`). The op records whose claim it overrode
    /// (`Payload::Forced`) and the story's history shows it; a forced release ends the
    /// holder's lease. When no other node holds a live claim, this is the inner command.
    Force(Box<Command>),
}

/// Smallest group of ops that [`Node::execute_group`] (and every commit of local ops)
/// signs on [`crate::NodeConfig::sign_threads`] threads; smaller groups are signed on the
/// calling thread.
///
/// Why 64: one signature costs ~17 µs, so 64 are ~1 ms, against ~20–50 µs to start a
/// thread (more on a loaded machine); below that, a helper thread would add latency to
/// the single commands a host sends one at a time (`story add`, heartbeats) and gain
/// little. Parallel or not, the group gets the same ids, the same bytes and the same
/// results: ids, seqs, `prev`s and Lamport times are assigned in order before any
/// signature is made.
pub const PARALLEL_SIGN_MIN: usize = 64;

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

impl Receipt {
    /// What the op is given, known before it is signed (the id does not cover the
    /// signature).
    pub(super) fn of(op: &UnsignedOp) -> Receipt {
        Receipt {
            op_id: op.id(),
            seq: op.content().seq,
            lamport: op.content().lamport,
        }
    }
}

impl<S: Store> Node<S> {
    /// Applies one command: validated against the projection, signed, stored durably
    /// (flushed) before it returns. An invalid command writes nothing. Takes a [`Command`]
    /// or anything that becomes one (a [`crate::NewStory`] from [`Command::add_story`]).
    pub fn execute(&mut self, now: Timestamp, cmd: impl Into<Command>) -> Result<Receipt, Error> {
        self.execute_group(now, vec![cmd.into()])?
            .pop()
            .expect("one result per command")
    }

    /// Group commit: each command is validated and built in turn (seeing the effects of
    /// those before it), the ops of all that succeed are signed (on
    /// [`crate::NodeConfig::sign_threads`] threads when there are at least
    /// [`PARALLEL_SIGN_MIN`]) and stored in one atomic batch with one flush. Each command
    /// gets its own result; a refused command writes nothing. A storage failure (an `io`
    /// error) fails the whole call and writes nothing. For many groups in a row,
    /// [`Node::execute_groups`] overlaps signing one group with writing the previous one.
    ///
    /// Hence the two levels of `Result`: the outer one is the call (`Err` only for a storage
    /// failure, and then nothing was written), the inner ones are the commands, in order
    /// (`Err` for a refused command, which wrote nothing while the others were stored).
    /// Look at each inner result; `?` on the outer one alone drops the refusals.
    ///
    /// ```
    /// use huskies_core::{Command, InitMode, Node, NodeConfig, StoryId, Timestamp};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let now = Timestamp::from_millis(1_763_700_000_000);
    /// let mut node = Node::init(dir.path(), InitMode::NewCluster { name: "demo".into() },
    ///                           &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// let a = StoryId::new("a")?;
    /// let cmds = vec![
    ///     Command::add_story(a.clone(), "A").into(),
    ///     Command::add_story(a.clone(), "A again").into(), // refused: already exists
    /// ];
    /// let results = node.execute_group(now, cmds)?; // outer: the store did not fail
    /// assert!(results[0].is_ok());
    /// assert_eq!(results[1].as_ref().unwrap_err().kind().as_str(), "already_exists");
    /// # Ok::<(), huskies_core::Error>(())
    /// ```
    pub fn execute_group(
        &mut self,
        now: Timestamp,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories))
            .expecting(cmds.len());
        let results = self.stage_all(&mut w, now, cmds)?;
        if w.has_changes() {
            self.commit(w, S::Batch::default())?;
        }
        Ok(results)
    }

    /// A group's commands into a working set, in order: one result per command, or `Err`
    /// when the store failed (the caller then drops the working set: nothing of the group
    /// is written).
    pub(super) fn stage_all(
        &self,
        w: &mut Working<'_, S>,
        now: Timestamp,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Receipt, Error>>, Error> {
        let mut results = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match self.stage(w, now, cmd) {
                // The store failed, not the command: the whole group fails.
                Err(e @ Error::Io { .. }) => return Err(e),
                r => results.push(r),
            }
        }
        Ok(results)
    }

    /// One command into a working set: validated, signed, admitted (not yet stored).
    pub(super) fn stage(
        &self,
        w: &mut Working<'_, S>,
        now: Timestamp,
        cmd: Command,
    ) -> Result<Receipt, Error> {
        let payload = self.payload_for(w, now, cmd)?;
        let op = self.build_op(w, payload, now)?;
        let receipt = Receipt::of(&op);
        w.admit_local(op)?;
        Ok(receipt)
    }

    fn lease_live(&self, w: &mut Working<'_, S>, lease: &Lease, now: Timestamp) -> Result<bool, Error> {
        let heartbeat = w.presence(&lease.node)?.map(|p| p.heartbeat_at);
        Ok(self.live(lease, heartbeat, now))
    }

    pub(super) fn live(&self, lease: &Lease, heartbeat: Option<Timestamp>, now: Timestamp) -> bool {
        let last_seen = heartbeat.map_or(lease.claimed_at, |h| h.max(lease.claimed_at));
        now < lease.expires_at && now.millis_since(last_seen) <= self.stale_ms()
    }

    pub(super) fn stale_ms(&self) -> i64 {
        i64::try_from(self.config.stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    fn visible_story<'w>(w: &'w mut Working<'_, S>, id: &StoryId) -> Result<&'w StoryRecord, Error> {
        let rec = w.story(id)?;
        if rec.created.is_none() {
            return Err(Error::NotFound(format!("story {id} not found")));
        }
        if rec.deleted.is_some() {
            return Err(Error::NotFound(format!("story {id} was deleted")));
        }
        Ok(rec)
    }

    /// A local command may only name dependencies this node knows as live stories (and not
    /// the story itself). Ops from peers are not held to this: whether a dependency exists
    /// can depend on arrival order, and validity must not (see [`Command::AddStory`]).
    fn check_depends_on(w: &mut Working<'_, S>, id: &StoryId, deps: &[StoryId]) -> Result<(), Error> {
        for dep in deps {
            if dep == id {
                return Err(Error::InvalidArgument(format!(
                    "story {id} cannot depend on itself"
                )));
            }
            Self::visible_story(w, dep).map_err(|e| match e {
                Error::NotFound(why) => Error::NotFound(format!("story {id} depends on {dep}: {why}")),
                other => other,
            })?;
        }
        Ok(())
    }

    /// What a local pipeline event must say besides what the table checks: a reason where
    /// the event records one (an archive or failure that says nothing helps nobody), a
    /// merge-failure kind from [`MERGE_FAILURE_KINDS`], and a superseding story that is a
    /// live story other than this one. Ops from peers are not held to it (see
    /// [`Command::AddStory`] for why).
    fn check_event(w: &mut Working<'_, S>, id: &StoryId, event: &PipelineEvent) -> Result<(), Error> {
        match event {
            PipelineEvent::GatesFailed { reason }
            | PipelineEvent::MergeFailedFinal { reason }
            | PipelineEvent::Block { reason }
            | PipelineEvent::ReviewHold { reason }
            | PipelineEvent::MergeConflict { reason, .. }
                if reason.trim().is_empty() =>
            {
                return Err(Error::InvalidArgument(format!(
                    "event {} needs a reason (--reason): say why",
                    event.name()
                )));
            }
            PipelineEvent::MergeConflict { kind, .. } if !is_merge_failure_kind(kind) => {
                let kinds: Vec<&str> = MERGE_FAILURE_KINDS.iter().map(|(k, _)| *k).collect();
                return Err(Error::InvalidArgument(format!(
                    "unknown merge failure kind {kind:?}; kinds are: {}",
                    kinds.join(", ")
                )));
            }
            PipelineEvent::Supersede { by } => {
                if by == id {
                    return Err(Error::InvalidArgument(format!(
                        "story {id} cannot supersede itself"
                    )));
                }
                Self::visible_story(w, by).map_err(|e| match e {
                    Error::NotFound(why) => {
                        Error::NotFound(format!("story {id} cannot be superseded by {by}: {why}"))
                    }
                    other => other,
                })?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The one rule for commands that act on a story another node may hold: a live claim of
    /// another node refuses them (`claim_conflict`, naming the holder and the expiry) unless
    /// `force`, and then the answer is the claim overridden, `(holder, its Lamport)`, for the
    /// op to record. `None`: no other node holds a live claim.
    fn claim_guard(
        &self,
        w: &mut Working<'_, S>,
        id: &StoryId,
        now: Timestamp,
        force: bool,
    ) -> Result<Option<(NodeId, u64)>, Error> {
        let current = Self::visible_story(w, id)?
            .claims
            .current()
            .map(|(s, l)| (s, l.clone()));
        let Some((stamp, lease)) = current else {
            return Ok(None);
        };
        if lease.node == self.node_id() || !self.lease_live(w, &lease, now)? {
            return Ok(None);
        }
        if !force {
            return Err(Error::ClaimConflict {
                what: format!("story {id}"),
                holder: lease.node,
                expires_at: lease.expires_at,
            });
        }
        Ok(Some((lease.node, stamp.lamport)))
    }

    /// `payload` as is, or wrapped as forced over `over`.
    fn forced(over: Option<(NodeId, u64)>, payload: Payload) -> Payload {
        match over {
            None => payload,
            Some((holder, through)) => Payload::Forced {
                holder,
                through,
                inner: Box::new(payload),
            },
        }
    }

    fn event_payload(
        &self,
        w: &mut Working<'_, S>,
        now: Timestamp,
        id: StoryId,
        event: PipelineEvent,
        force: bool,
    ) -> Result<Payload, Error> {
        Self::visible_story(w, &id)?;
        Self::check_event(w, &id, &event)?;
        let over = self.claim_guard(w, &id, now, force)?;
        let rec = Self::visible_story(w, &id)?;
        let from = rec.stage();
        transition(&from, &event, now).map_err(|source| Error::InvalidTransition {
            story: id.clone(),
            source,
        })?;
        let payload = Payload::Transition {
            base: rec.stage_op(),
            story: id,
            event,
            from,
        };
        Ok(Self::forced(over, payload))
    }

    fn delete_payload(
        &self,
        w: &mut Working<'_, S>,
        now: Timestamp,
        id: StoryId,
        force: bool,
    ) -> Result<Payload, Error> {
        let over = self.claim_guard(w, &id, now, force)?;
        Ok(Self::forced(over, Payload::StoryDelete { story: id }))
    }

    fn release_payload(
        &self,
        w: &mut Working<'_, S>,
        now: Timestamp,
        id: StoryId,
        force: bool,
    ) -> Result<Payload, Error> {
        let me = self.node_id();
        let mine = Self::visible_story(w, &id)?
            .claims
            .current()
            .is_some_and(|(_, l)| l.node == me);
        if mine {
            return Ok(Payload::Release { story: id });
        }
        match self.claim_guard(w, &id, now, force)? {
            Some(over) => Ok(Self::forced(Some(over), Payload::Release { story: id })),
            None => Err(Error::NotFound(format!("this node holds no claim on story {id}"))),
        }
    }

    fn my_role(&self, w: &Working<'_, S>) -> Option<Role> {
        w.state.members.get(&self.node_id()).and_then(|m| m.role())
    }

    /// Validates a command against the working projection and turns it into a payload.
    fn payload_for(&self, w: &mut Working<'_, S>, now: Timestamp, cmd: Command) -> Result<Payload, Error> {
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
                id.check_new().map_err(Error::InvalidArgument)?;
                check_name(&name)?;
                Self::check_depends_on(w, &id, &depends_on)?;
                Payload::StoryCreate {
                    story: id,
                    name,
                    body,
                    depends_on,
                }
            }
            Command::UpdateStory { id, field } => {
                Self::visible_story(w, &id)?;
                match &field {
                    StoryField::Name(name) => check_name(name)?,
                    StoryField::DependsOn(deps) => Self::check_depends_on(w, &id, deps)?,
                    StoryField::Body(_) => {}
                }
                Payload::StoryUpdate { story: id, field }
            }
            Command::Force(inner) => match *inner {
                Command::Event { id, event } => self.event_payload(w, now, id, event, true)?,
                Command::DeleteStory { id } => self.delete_payload(w, now, id, true)?,
                Command::Release { id } => self.release_payload(w, now, id, true)?,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "only pipeline events, story removals and releases can be forced, not {other:?}"
                    )))
                }
            },
            Command::Event { id, event } => self.event_payload(w, now, id, event, false)?,
            Command::DeleteStory { id } => self.delete_payload(w, now, id, false)?,
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
            Command::Release { id } => self.release_payload(w, now, id, false)?,
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
            Command::Announce { label, address } => Payload::Presence { label, address },
            Command::Heartbeat { label, address } => Payload::Heartbeat {
                label,
                address,
                seen: w
                    .state
                    .authors
                    .iter()
                    .filter(|(_, a)| a.head_seq > 0)
                    .map(|(node, a)| (*node, a.head_lamport))
                    .take(crate::payload::MAX_SEEN_AUTHORS)
                    .collect(),
            },
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
                require_admin(self.my_role(w), "add members").map_err(Error::Rejected)?;
                usable_key(&node).map_err(Error::Rejected)?;
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
                require_admin(self.my_role(w), "remove members").map_err(Error::Rejected)?;
                if node == self.node_id() {
                    // Its cutoff would be this node's head, below the removal's own seq: a
                    // removal void under the cutoff it sets, which every rebuild refuses
                    // (`docs/format.md`, "Removals, rotations and cutoffs"). Refused here,
                    // before anything is signed, instead of accepted and then undone.
                    return Err(Error::InvalidArgument(format!(
                        "node {node} cannot remove itself: another admin removes it"
                    )));
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
    /// one first; the rotation op and the store's record of its own id are one batch, so a
    /// crash at any point leaves a home that opens with the right key.
    pub fn rotate_key(&mut self, now: Timestamp, rng: &mut impl CryptoRngCore) -> Result<Receipt, Error> {
        let new_key = NodeKey::generate(rng);
        let next = self.home.next_key_path();
        if next.exists() {
            std::fs::remove_file(&next).map_err(|e| Error::io("removing a stale next key", e))?;
        }
        new_key.save_new(&next)?;
        let old = self.node_id();
        let committed = self.commit_rotation(now, &new_key);
        let adopted = self.state.members.get(&old).and_then(|m| m.rotated_to) == Some(new_key.node_id());
        match committed {
            Ok(receipt) => {
                self.key = finish_rotation(&self.home, &self.state, new_key.node_id())?;
                Ok(receipt)
            }
            Err(e) if adopted => {
                // The store holds the rotation but its flush failed: sign with the new key
                // (the old one's later ops would be void), and leave the key files for open
                // to settle (`finish_rotation`: installs the next key if the rotation
                // survived, removes it if not).
                self.key = new_key;
                Err(e)
            }
            Err(e) => {
                // Not committed: the next key is of no use (open would remove it too).
                let _ = std::fs::remove_file(&next);
                Err(e)
            }
        }
    }

    fn commit_rotation(&mut self, now: Timestamp, new_key: &NodeKey) -> Result<Receipt, Error> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut w = Working::new(&db, &journal, self.state.clone(), self.node_id())
            .with_cache(std::mem::take(&mut self.stories));
        let proof = rotation_proof(&w.state.cluster.id, &self.node_id(), new_key);
        let op = self.build_op(
            &w,
            Payload::KeyRotate {
                new_key: new_key.node_id(),
                proof,
            },
            now,
        )?;
        let receipt = Receipt::of(&op);
        w.admit_local(op)?;
        let mut batch = S::Batch::default();
        batch.insert(key::META_SELF, &codec::encode(&new_key.node_id()));
        self.commit(w, batch)?;
        Ok(receipt)
    }
}

/// A local story name must say something: empty or whitespace-only names are refused.
fn check_name(name: &str) -> Result<(), Error> {
    if name.trim().is_empty() {
        return Err(Error::InvalidArgument("a story name cannot be empty".into()));
    }
    Ok(())
}
