//! Events to subscribers: one per committed transition, local or remote.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use crate::id::{NodeId, OpId, StoryId};
use crate::pipeline::Stage;

/// A committed transition, or a replayed current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    /// The story.
    pub story: StoryId,
    /// The stage before the op was merged (`None` in a replay).
    pub before: Option<Stage>,
    /// The stage after it was merged. For a remote op older than the story's newest
    /// transition this equals `before`: the op joined the history without winning.
    pub after: Stage,
    /// The transition op (`None` in a replay).
    pub op_id: Option<OpId>,
    /// Its author (`None` in a replay).
    pub author: Option<NodeId>,
    /// The event name (`None` in a replay).
    pub event: Option<&'static str>,
    /// The transition was made concurrently with another (see `Story::conflicts`).
    pub conflict: bool,
    /// Part of a replay of the current state, not a new transition.
    pub replay: bool,
}

/// What subscribers hear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A committed transition (or a replayed state).
    Transition(TransitionEvent),
    /// A claim this node held was overridden by a concurrent claim from another node.
    ClaimLost {
        /// The story.
        story: StoryId,
        /// The new holder, if any.
        winner: Option<NodeId>,
    },
}

type Callback = Box<dyn FnMut(&Event) + Send>;

#[derive(Default)]
pub(crate) struct Subscribers {
    next: u64,
    callbacks: BTreeMap<u64, Callback>,
    /// Cancelled while their callback was running.
    cancelled: BTreeSet<u64>,
}

/// A handle on a subscription; dropping it (or [`Subscription::cancel`]) unsubscribes.
///
/// Keep it for as long as events should arrive: `let _sub = node.subscribe(..);`. A
/// statement `node.subscribe(..);` drops it at once (the compiler warns: `must_use`).
#[must_use = "dropping the Subscription unsubscribes at once; bind it (`let _sub = ...`) for as long as events should arrive"]
pub struct Subscription {
    id: u64,
    registry: Weak<Mutex<Subscribers>>,
}

impl Subscription {
    /// Stops delivery.
    pub fn cancel(self) {}
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(reg) = self.registry.upgrade() {
            let mut reg = reg.lock().unwrap_or_else(|e| e.into_inner());
            if reg.callbacks.remove(&self.id).is_none() {
                reg.cancelled.insert(self.id);
            }
        }
    }
}

pub(crate) fn subscribe(reg: &Arc<Mutex<Subscribers>>, f: Callback) -> Subscription {
    let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
    let id = r.next;
    r.next += 1;
    r.callbacks.insert(id, f);
    Subscription {
        id,
        registry: Arc::downgrade(reg),
    }
}

/// Delivers events. Callbacks run outside the lock, so one may drop its own subscription.
pub(crate) fn publish(reg: &Arc<Mutex<Subscribers>>, events: &[Event]) {
    if events.is_empty() {
        return;
    }
    let mut taken = {
        let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
        if r.callbacks.is_empty() {
            return;
        }
        std::mem::take(&mut r.callbacks)
    };
    for e in events {
        for cb in taken.values_mut() {
            cb(e);
        }
    }
    let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
    for (id, cb) in std::mem::take(&mut taken) {
        if !r.cancelled.remove(&id) {
            r.callbacks.insert(id, cb);
        }
    }
}
