//! The storage seam: what the core needs from a store, and nothing more.
//!
//! The core keeps everything in one ordered keyspace (see [`crate::keyspace`]) and changes
//! it only by atomic batches, each followed by one flush: that is the shape of [`Store`].
//! sled ([`SledStore`]) is the product's backend. Two more exist for tests and tools:
//! [`MemoryStore`] (an ordered map that also models what a flush makes durable) and
//! [`FailingStore`], a wrapper that fails a chosen read, write or flush on purpose so that
//! every error path of a commit, an ingest, a rebuild or the journal fold can be driven.
//!
//! The trait is generic, not object-safe on purpose: a node is monomorphised over its
//! backend, so the hot paths pay no dynamic dispatch and no boxing of values or iterators.

mod compact;
mod failing;
mod memory;
mod sled_store;

use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::Error;

pub(crate) use compact::recover as recover_compaction;
pub use compact::{Outcome as CompactionOutcome, Policy as CompactionPolicy};
pub use failing::{FailPlan, FailingIter, FailingStore, StoreOp};
pub use memory::{MemoryBatch, MemoryStore, StoreContents};
pub use sled_store::{SledBatch, SledIter, SledStore, DEFAULT_STORE_CACHE_BYTES};

/// An ordered keyspace with atomic batches: everything the core asks of its store.
///
/// Contract: [`Store::apply`] is atomic (all of the batch or none of it is visible, also
/// after a crash); after [`Store::flush`] returns `Ok`, everything applied before it
/// survives a crash of the process. Reads see every applied batch. Iterators yield keys in
/// ascending byte order. Errors are returned, never swallowed; an error from `apply` means
/// nothing of the batch was applied.
pub trait Store: Clone + Send + Sync + 'static {
    /// A stored key or value: cheap to clone, read as bytes.
    type Value: std::ops::Deref<Target = [u8]> + AsRef<[u8]> + Clone + Send + Sync + 'static;
    /// A batch being built; applied whole by [`Store::apply`].
    type Batch: WriteBatch + Default + Send;
    /// An iterator over key/value pairs in key order.
    type Iter: Iterator<Item = Result<Pair<Self>, Error>>;

    /// The value under `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Self::Value>, Error>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Self::Iter;
    /// Every pair with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> Self::Iter;
    /// The pair with the greatest key in `from ..= through`, if any.
    fn last_in(&self, from: &[u8], through: &[u8]) -> Result<Option<Pair<Self>>, Error>;
    /// Applies `batch` atomically.
    fn apply(&self, batch: Self::Batch) -> Result<(), Error>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), Error>;
    /// Bytes the store occupies (on disk, for a store that has a disk).
    fn size_on_disk(&self) -> Result<u64, Error>;
}

/// A key and its value, as a store returns them.
pub type Pair<S> = (<S as Store>::Value, <S as Store>::Value);

/// Inserts and removals collected for one atomic [`Store::apply`]; later ones win.
pub trait WriteBatch {
    /// Sets `key` to `value`.
    fn insert(&mut self, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn remove(&mut self, key: &[u8]);
}

/// Reads and decodes one record.
pub(crate) fn get<T: DeserializeOwned>(db: &impl Store, k: &[u8], what: &str) -> Result<Option<T>, Error> {
    db.get(k)?.map(|v| codec::decode(&v, what)).transpose()
}

/// Applies `batch`, then flushes: the one write of a call.
pub(crate) fn commit<S: Store>(db: &S, batch: S::Batch) -> Result<(), Error> {
    db.apply(batch)?;
    db.flush()
}
