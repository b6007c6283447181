//! An in-memory [`Store`] that also models durability: what a flush made durable is kept
//! apart from what was only applied, so a test can look at the store a crash would leave.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Store, WriteBatch};
use crate::error::Error;

type Map = BTreeMap<Arc<[u8]>, Arc<[u8]>>;

#[derive(Debug, Default)]
struct Maps {
    /// Everything applied.
    live: Map,
    /// Everything applied before the last successful flush.
    durable: Map,
}

/// An ordered map behind a mutex, as a [`Store`]. Cloning shares it. For tests and tools:
/// nothing is written anywhere.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    maps: Arc<Mutex<Maps>>,
}

/// Sorted key/value pairs: every key and value a [`MemoryStore`] holds.
pub type StoreContents = Vec<(Vec<u8>, Vec<u8>)>;

fn dump(map: &Map) -> StoreContents {
    map.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn maps(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A store holding `contents`, all of it durable (e.g. what
    /// [`MemoryStore::durable_contents`] of another store returned).
    pub fn from_contents(contents: StoreContents) -> MemoryStore {
        let map: Map = contents
            .into_iter()
            .map(|(k, v)| (Arc::from(k), Arc::from(v)))
            .collect();
        MemoryStore {
            maps: Arc::new(Mutex::new(Maps {
                live: map.clone(),
                durable: map,
            })),
        }
    }

    /// Every pair applied so far.
    pub fn contents(&self) -> StoreContents {
        dump(&self.maps().live)
    }

    /// Every pair the last successful flush made durable.
    pub fn durable_contents(&self) -> StoreContents {
        dump(&self.maps().durable)
    }

    /// A new, separate store holding what a crash of the process would leave of this one:
    /// what was flushed.
    pub fn after_crash(&self) -> MemoryStore {
        let durable = self.maps().durable.clone();
        MemoryStore {
            maps: Arc::new(Mutex::new(Maps {
                live: durable.clone(),
                durable,
            })),
        }
    }
}

/// One write of a batch: a key and its new value (`None`: removed).
type Write = (Arc<[u8]>, Option<Arc<[u8]>>);

/// A batch for a [`MemoryStore`].
#[derive(Debug, Default)]
pub struct MemoryBatch {
    ops: Vec<Write>,
}

impl WriteBatch for MemoryBatch {
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.ops.push((Arc::from(key), Some(Arc::from(value))));
    }

    fn remove(&mut self, key: &[u8]) {
        self.ops.push((Arc::from(key), None));
    }
}

type Pairs = std::vec::IntoIter<Result<(Arc<[u8]>, Arc<[u8]>), Error>>;

fn collect<'a>(it: impl Iterator<Item = (&'a Arc<[u8]>, &'a Arc<[u8]>)>) -> Pairs {
    it.map(|(k, v)| Ok((k.clone(), v.clone())))
        .collect::<Vec<_>>()
        .into_iter()
}

impl Store for MemoryStore {
    type Value = Arc<[u8]>;
    type Batch = MemoryBatch;
    type Iter = Pairs;

    fn get(&self, key: &[u8]) -> Result<Option<Arc<[u8]>>, Error> {
        Ok(self.maps().live.get(key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Pairs {
        let maps = self.maps();
        collect(
            maps.live
                .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix)),
        )
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Pairs {
        let maps = self.maps();
        if from >= to {
            return Vec::new().into_iter();
        }
        collect(
            maps.live
                .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to))),
        )
    }

    fn last_in(&self, from: &[u8], through: &[u8]) -> Result<Option<(Arc<[u8]>, Arc<[u8]>)>, Error> {
        if from > through {
            return Ok(None);
        }
        Ok(self
            .maps()
            .live
            .range::<[u8], _>((Bound::Included(from), Bound::Included(through)))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn apply(&self, batch: MemoryBatch) -> Result<(), Error> {
        let mut maps = self.maps();
        for (k, v) in batch.ops {
            match v {
                Some(v) => maps.live.insert(k, v),
                None => maps.live.remove(&k),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), Error> {
        let mut maps = self.maps();
        maps.durable = maps.live.clone();
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        let bytes: usize = self.maps().live.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(u64::try_from(bytes).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_are_ordered_and_only_flushed_data_survives_a_crash() {
        let s = MemoryStore::new();
        let mut b = MemoryBatch::default();
        for k in [&b"b2"[..], b"a1", b"b1", b"c"] {
            b.insert(k, k);
        }
        s.apply(b).unwrap();
        let keys = |it: Pairs| it.map(|kv| kv.unwrap().0.to_vec()).collect::<Vec<_>>();
        assert_eq!(keys(s.scan_prefix(b"b")), vec![b"b1".to_vec(), b"b2".to_vec()]);
        assert_eq!(keys(s.range(b"a1", b"b2")), vec![b"a1".to_vec(), b"b1".to_vec()]);
        assert_eq!(&s.last_in(b"a", b"b1z").unwrap().unwrap().0[..], b"b1");
        assert!(s.after_crash().contents().is_empty(), "nothing was flushed");
        s.flush().unwrap();
        let mut b = MemoryBatch::default();
        b.remove(b"c");
        s.apply(b).unwrap();
        assert_eq!(s.contents().len(), 3);
        assert_eq!(s.after_crash().contents().len(), 4, "the removal was not flushed");
    }
}
