//! The effect of each payload on the records a working set holds: registers, histories,
//! leases, presence, membership. Every merge rule here commutes (see `projection.rs`).

use super::{NewOp, Working};
use crate::error::Error;
use crate::event::{Event, TransitionEvent};
use crate::id::{NodeId, OpId, StoryId};
use crate::op::OpContent;
use crate::payload::{Payload, Role, StoryField};
use crate::pipeline::{transition, PipelineEvent, Stage};
use crate::projection::{HistoryEntry, Lease, Lww, PresenceRecord, Stamp};
use crate::reject::RejectReason;
use crate::storage::Store;

/// Whether a payload is consistent in itself, whatever the state it meets: a transition's
/// event is allowed from the stage it records (the transition table), and only a
/// transition, a delete or a release is forced. A pure function of the op, so every
/// replica and every admission path (`Working::admit`, including its judgement of a
/// second op for a seq it holds) gives the same answer.
pub(super) fn check_payload(payload: &Payload, wall: crate::time::Timestamp) -> Result<(), RejectReason> {
    let payload = match payload {
        Payload::Forced { inner, .. } => match &**inner {
            inner @ (Payload::Transition { .. } | Payload::StoryDelete { .. } | Payload::Release { .. }) => {
                inner
            }
            other => {
                return Err(RejectReason::InvalidPayload(format!(
                    "a {} op cannot be forced",
                    other.kind_str()
                )))
            }
        },
        other => other,
    };
    if let Payload::Transition { event, from, .. } = payload {
        transition(from, event, wall).map_err(|e| RejectReason::InvalidPayload(e.to_string()))?;
    }
    Ok(())
}

impl<S: Store> Working<'_, S> {
    /// The payload's effect on the records. Admission has authorized the op (role, keys,
    /// proofs); what can still refuse it here is a payload that contradicts itself.
    pub(super) fn apply_payload(
        &mut self,
        op: &NewOp,
        role: Role,
    ) -> Result<Result<(), RejectReason>, Error> {
        let c = op.content();
        let stamp = Stamp {
            lamport: c.lamport,
            author: c.author,
        };
        match &c.payload {
            Payload::Genesis { name, .. } => {
                self.state.cluster.name = Some(name.clone());
                self.state.cluster.admin = Some(c.author);
                self.set_role(c.author, stamp, Role::Admin);
                self.cluster_dirty = true;
            }
            Payload::MemberAdd { node, role: new_role } => {
                self.set_role(*node, stamp, *new_role);
            }
            Payload::MemberRemove { node, cutoff_seq } => {
                self.set_cutoff(*node, *cutoff_seq, c);
            }
            Payload::KeyRotate { new_key, .. } => {
                self.set_role(*new_key, stamp, role);
                self.set_cutoff(c.author, c.seq, c);
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
                return self.apply_transition(op, story, event, from, *base, None);
            }
            Payload::Forced {
                holder,
                through,
                inner,
            } => match &**inner {
                Payload::Transition {
                    story,
                    event,
                    from,
                    base,
                } => return self.apply_transition(op, story, event, from, *base, Some(*holder)),
                Payload::StoryDelete { story } => self.delete_story(story, stamp)?,
                Payload::Release { story } => {
                    self.set_claim(story, stamp, None, Some((*holder, *through)))?;
                }
                // Admission refused it already (`check_payload`); the same answer here.
                _ => return Ok(check_payload(&c.payload, c.wall)),
            },
            Payload::StoryDelete { story } => self.delete_story(story, stamp)?,
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
                if c.author != self.local {
                    self.claims_seen = true;
                }
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
                self.set_presence(c.author, stamp, c.wall, label, address, None)?;
            }
            Payload::Heartbeat { label, address, seen } => {
                if c.author == self.local {
                    self.own_heartbeat = true;
                }
                self.set_presence(c.author, stamp, c.wall, label, address, Some(seen))?;
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

    /// A transition op (forced over `forced`'s claim, or not) joins the story's history.
    fn apply_transition(
        &mut self,
        op: &NewOp,
        story: &StoryId,
        event: &PipelineEvent,
        from: &Stage,
        base: Option<OpId>,
        forced: Option<NodeId>,
    ) -> Result<Result<(), RejectReason>, Error> {
        let c = op.content();
        let stamp = Stamp {
            lamport: c.lamport,
            author: c.author,
        };
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
            base,
            forced,
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
        Ok(Ok(()))
    }

    fn delete_story(&mut self, story: &StoryId, stamp: Stamp) -> Result<(), Error> {
        let rec = self.story_mut(story)?;
        if rec.deleted.is_none_or(|d| stamp < d) {
            rec.deleted = Some(stamp);
        }
        Ok(())
    }

    fn set_presence(
        &mut self,
        author: NodeId,
        stamp: Stamp,
        wall: crate::time::Timestamp,
        label: &str,
        address: &Option<String>,
        seen: Option<&Vec<(NodeId, u64)>>,
    ) -> Result<(), Error> {
        let newer = self.presence(&author)?.is_none_or(|p| p.stamp < stamp);
        if newer {
            self.dirty_presence.insert(author);
            self.presence.insert(
                author,
                PresenceRecord {
                    stamp,
                    label: label.to_string(),
                    address: address.clone(),
                    heartbeat_at: wall,
                    seen: seen.cloned(),
                },
            );
        }
        Ok(())
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

    /// Gives `node` the role `role` from `stamp` on, and asks for a rebuild when ops of
    /// `node` merged already were judged as an admin's where `node` is no longer an admin
    /// now: a demotion that arrives after ops of the demoted admin signed above it (found
    /// beside the `ingest` fuzz target's
    /// fuzz/regressions/ingest/self-demotion-fork-refused-by-fresh-node: a replica that
    /// merged the admin's `MemberAdd` first kept it, one that learnt the demotion first
    /// refused it). A promotion needs no rebuild: the ops it lets count were refused and
    /// parked, and are tried again (`Node::retry_parked`).
    fn set_role(&mut self, node: NodeId, stamp: Stamp, role: Role) {
        let m = self.state.members.entry(node).or_default();
        let (above, below) = m.assign(stamp, role);
        self.dirty_members.insert(node);
        if !(above || below) {
            return;
        }
        let stored = self
            .state
            .authors
            .get(&node)
            .filter(|a| a.head_seq > 0)
            .map(|a| a.head_lamport);
        let staged = self
            .new_ops
            .get(&node)
            .and_then(|o| o.last())
            .map(|o| o.content().lamport);
        let Some(newest) = stored.max(staged) else {
            return;
        };
        let newest = Stamp {
            lamport: newest,
            author: node,
        };
        if below || newest > stamp {
            self.state.rebuild_needed = true;
        }
    }

    /// Sets `node`'s cutoff (the lowest of those set) and asks for a rebuild when ops of
    /// `node` past it are merged already.
    ///
    /// The setter itself (`setter`, not appended yet) is one of `node`'s ops when it cuts
    /// its own author: a removal of its own key below its own seq voids itself, so the
    /// rebuild must say whether it counts (it does not: `docs/format.md`, "Removals,
    /// rotations and cutoffs"). Found by the `ingest` fuzz target
    /// (fuzz/regressions/ingest/removed-admin-kept-by-merging-node): such a removal was
    /// merged with no rebuild, so its cutoff stayed although the removal is never sent on.
    fn set_cutoff(&mut self, node: NodeId, cutoff: u64, setter: &OpContent) {
        let m = self.state.members.entry(node).or_default();
        m.cutoff = Some(m.cutoff.map_or(cutoff, |c| c.min(cutoff)));
        self.dirty_members.insert(node);
        let head = self.state.head_seq(&node);
        let staged = self
            .new_ops
            .get(&node)
            .and_then(|o| o.last())
            .map_or(0, |o| o.content().seq);
        let own = if setter.author == node { setter.seq } else { 0 };
        if head.max(staged).max(own) > cutoff {
            self.state.rebuild_needed = true;
        }
    }
}
