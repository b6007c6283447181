//! Version vectors: per author, the highest contiguous seq held.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// Author id → highest contiguous seq held. What a node has, in one small map; sync sends
/// exactly the ops above the other side's vector.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The seq held for `author` (0 when none).
    pub fn get(&self, author: &NodeId) -> u64 {
        self.0.get(author).copied().unwrap_or(0)
    }

    /// Sets the seq held for `author`.
    pub fn set(&mut self, author: NodeId, seq: u64) {
        if seq == 0 {
            self.0.remove(&author);
        } else {
            self.0.insert(author, seq);
        }
    }

    /// Raises each entry to the other vector's where that is higher.
    pub fn merge(&mut self, other: &VersionVector) {
        for (a, s) in &other.0 {
            if *s > self.get(a) {
                self.0.insert(*a, *s);
            }
        }
    }

    /// Does this vector hold everything `other` holds?
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(a, s)| self.get(a) >= *s)
    }

    /// Total ops counted.
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |t, s| t.saturating_add(*s))
    }

    /// Entries in author order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &u64)> {
        self.0.iter()
    }

    /// Number of authors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No authors.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        let mut vv = VersionVector::default();
        for (a, s) in iter {
            vv.set(a, s);
        }
        vv
    }
}
