//! A [`Store`] wrapper that fails on purpose, to drive error paths from tests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::Store;
use crate::error::Error;

/// One storage operation, as [`FailingStore`] counts them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreOp {
    /// A `get`, a `last_in`, the start of a scan, or one pair read by a scan.
    Read,
    /// An `apply` of a batch.
    Write,
    /// A `flush`.
    Flush,
}

/// The shared counter and trigger of a [`FailingStore`] (and of its clones).
#[derive(Debug, Default)]
pub struct FailPlan {
    /// Operations counted since the plan was made or [`FailPlan::reset`].
    seen: AtomicU64,
    /// The operation number that fails first (`u64::MAX`: none).
    fail_at: AtomicU64,
    /// Whether every operation after the first failure fails too.
    sticky: AtomicBool,
    /// While set, operations are neither counted nor failed (see [`FailPlan::set_paused`]).
    paused: AtomicBool,
    failures: AtomicU64,
    log: Mutex<Vec<StoreOp>>,
}

impl FailPlan {
    fn new() -> FailPlan {
        FailPlan {
            fail_at: AtomicU64::new(u64::MAX),
            ..FailPlan::default()
        }
    }

    /// Starts counting from zero, with nothing armed.
    pub fn reset(&self) {
        self.fail_at.store(u64::MAX, Ordering::SeqCst);
        self.seen.store(0, Ordering::SeqCst);
        self.failures.store(0, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Counts from zero, and fails operation number `n` (0-based): only that one, or, if
    /// `sticky`, it and every operation after it (a disk that went away).
    pub fn fail_at(&self, n: u64, sticky: bool) {
        self.reset();
        self.sticky.store(sticky, Ordering::SeqCst);
        self.fail_at.store(n, Ordering::SeqCst);
    }

    /// While `paused`, operations pass uncounted and never fail: a test reads through the
    /// store between the calls it counts (to compare what a node shows) without moving the
    /// count that names the failing operation. Not meant while another thread (the journal
    /// folder) may use the store, whose operations would then go uncounted too.
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    /// Operations counted since the last reset.
    pub fn seen(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }

    /// The kinds of the operations counted since the last reset, in order.
    pub fn log(&self) -> Vec<StoreOp> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Failures injected since the last reset.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    /// Counts one operation; an error if it is to fail.
    fn check(&self, op: StoreOp) -> Result<(), Error> {
        if self.paused.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = self.seen.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(PoisonError::into_inner).push(op);
        let at = self.fail_at.load(Ordering::SeqCst);
        let fails = n == at || (n > at && self.sticky.load(Ordering::SeqCst));
        if fails {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(Error::io(
                format!("store {op:?} failed"),
                std::io::Error::other(format!("injected failure at storage operation {n}")),
            ));
        }
        Ok(())
    }
}

/// Wraps a store and fails the operation a [`FailPlan`] names. Clones share the plan.
#[derive(Clone, Debug)]
pub struct FailingStore<S> {
    inner: S,
    plan: Arc<FailPlan>,
}

impl<S: Store> FailingStore<S> {
    /// Wraps `inner`; nothing fails until [`FailPlan::fail_at`] is called.
    pub fn new(inner: S) -> FailingStore<S> {
        FailingStore {
            inner,
            plan: Arc::new(FailPlan::new()),
        }
    }

    /// The plan: arm it, count with it.
    pub fn plan(&self) -> &FailPlan {
        &self.plan
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

/// A scan that counts (and may fail) each pair it reads.
#[derive(Debug)]
pub struct FailingIter<I> {
    inner: Option<I>,
    plan: Arc<FailPlan>,
    /// The failure of the scan's start, reported as its first item.
    failed: Option<Error>,
}

impl<I, V> Iterator for FailingIter<I>
where
    I: Iterator<Item = Result<V, Error>>,
{
    type Item = Result<V, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.inner = None;
            return Some(Err(e));
        }
        let item = self.inner.as_mut()?.next()?;
        if let Err(e) = self.plan.check(StoreOp::Read) {
            self.inner = None;
            return Some(Err(e));
        }
        Some(item)
    }
}

impl<S: Store> FailingStore<S> {
    fn iter(&self, inner: S::Iter) -> FailingIter<S::Iter> {
        let failed = self.plan.check(StoreOp::Read).err();
        FailingIter {
            inner: Some(inner),
            plan: self.plan.clone(),
            failed,
        }
    }
}

impl<S: Store> Store for FailingStore<S> {
    type Value = S::Value;
    type Batch = S::Batch;
    type Iter = FailingIter<S::Iter>;

    fn get(&self, key: &[u8]) -> Result<Option<S::Value>, Error> {
        self.plan.check(StoreOp::Read)?;
        self.inner.get(key)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Self::Iter {
        self.iter(self.inner.scan_prefix(prefix))
    }

    fn range(&self, from: &[u8], to: &[u8]) -> Self::Iter {
        self.iter(self.inner.range(from, to))
    }

    fn last_in(&self, from: &[u8], through: &[u8]) -> Result<Option<(S::Value, S::Value)>, Error> {
        self.plan.check(StoreOp::Read)?;
        self.inner.last_in(from, through)
    }

    fn apply(&self, batch: S::Batch) -> Result<(), Error> {
        self.plan.check(StoreOp::Write)?;
        self.inner.apply(batch)
    }

    fn flush(&self) -> Result<(), Error> {
        self.plan.check(StoreOp::Flush)?;
        self.inner.flush()
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        self.inner.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{MemoryStore, WriteBatch};

    #[test]
    fn fails_exactly_the_named_operation() {
        let s = FailingStore::new(MemoryStore::new());
        let mut b = <MemoryStore as Store>::Batch::default();
        b.insert(b"k", b"v");
        s.plan().fail_at(1, false);
        assert!(s.get(b"k").is_ok());
        assert!(s.apply(b).is_err(), "operation 1 fails");
        assert!(s.inner().contents().is_empty(), "a failed write applies nothing");
        assert!(s.flush().is_ok(), "one-shot");
        assert_eq!(
            s.plan().log(),
            vec![StoreOp::Read, StoreOp::Write, StoreOp::Flush]
        );
        s.plan().fail_at(0, true);
        assert!(s.scan_prefix(b"").next().unwrap().is_err());
        assert!(s.flush().is_err(), "sticky");
        assert_eq!(s.plan().failures(), 2);
        s.plan().fail_at(0, false);
        s.plan().set_paused(true);
        assert!(s.flush().is_ok(), "paused: not failed");
        assert_eq!(s.plan().seen(), 0, "paused: not counted");
        s.plan().set_paused(false);
        assert!(s.flush().is_err(), "resumed: operation 0 fails");
    }
}
