//! The story journal: how changed story records reach the store without one store insert
//! per story in every commit.
//!
//! A commit writes the story records it changed as **one journal entry** (`J` + entry seq)
//! inside its own atomic batch, beside its ops and the other records. The entry is durable
//! and complete: it is the projection's change, not a promise to recompute it. A folder
//! thread then copies each story's newest record into its own key (`S`) and moves the stage
//! index (`K`), in batches that also delete the entries they folded; until then the newest
//! record of a story is served from memory ([`Journal::get`]). A crash between the two
//! loses nothing: open reads the entries that are left back into memory (no op is
//! replayed or re-verified) and folds them again, which is idempotent.
//!
//! Why: sled 0.34 spends several microseconds and a page rewrite on every key of a batch,
//! and a commit touches a story record plus its stage index for most ops. One entry per
//! commit keeps the commit's cost near that of writing its ops; folding runs beside the
//! writer and, while it lags, writes each story once for many commits.
//!
//! Bounds: at most [`MAX_PENDING_ENTRIES`] entries or [`MAX_PENDING_BYTES`] of records wait
//! unfolded; a commit past either folds on the writer's own thread first. Scans of the
//! story keyspace ([`Journal::drain`]) and dropping the journal fold everything.

mod migrate;
#[cfg(test)]
mod tests;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::error::Error;
use crate::id::StoryId;
use crate::keyspace as key;
use crate::pipeline::StageKind;
use crate::projection::StoryRecord;
use crate::storage::{Store, WriteBatch};

use crate::record::{decode_story, story_kind};
pub(crate) use migrate::migrate;

/// Most committed entries left unfolded before a commit folds on its own thread.
pub(crate) const MAX_PENDING_ENTRIES: u64 = 256;
/// Most bytes of unfolded story records before a commit folds on its own thread.
pub(crate) const MAX_PENDING_BYTES: usize = 16 * 1024 * 1024;
/// The folder thread waits for this many committed entries: a story that a burst keeps
/// changing is then written to its key once for many commits.
pub(crate) const FOLD_AFTER_ENTRIES: u64 = 32;
/// Stories per folding batch: bounds how long a fold holds the store's batch lock.
const FOLD_CHUNK: usize = 256;

/// Stories and their stored values, as in one entry.
type Records = Vec<(StoryId, Arc<[u8]>)>;

/// A story record waiting to be folded.
#[derive(Clone)]
struct Latest {
    /// The entry it was committed in.
    entry: u64,
    value: Arc<[u8]>,
    /// The stage of the value the story's key holds, when known: `Some(None)` when the key
    /// is absent or its value is not indexed, `None` when the fold must read the key to
    /// learn which stage index key to move. Known for a story a commit created
    /// ([`StoryWrite::unstored`]) and for one a fold wrote while a newer record waited.
    /// Why: the read was a sled `get` per story per fold (session 9, docs/benchmarks.md).
    key_kind: Option<Option<StageKind>>,
}

/// A changed story record to stage in a commit's entry ([`Journal::stage`]).
pub(crate) struct StoryWrite {
    pub id: StoryId,
    /// The stored value ([`crate::record::encode_story`]).
    pub value: Vec<u8>,
    /// The story's key is known to be absent from the store and from the unfolded
    /// entries: the commit's working set loaded the story and found nothing anywhere
    /// (and no commit since has staged it). `false` is always correct (the fold then
    /// reads the key); `true` when the key exists would leave a stale stage index key.
    pub unstored: bool,
}

#[derive(Default)]
struct Pending {
    /// The next entry's seq.
    next: u64,
    /// Entries below this are folded (or were never committed).
    folded_below: u64,
    /// Entries below this are committed.
    committed_below: u64,
    /// Each unfolded story's newest record.
    latest: HashMap<StoryId, Latest>,
    /// Bytes of `latest`.
    bytes: usize,
    /// The folder thread failed; callers fold themselves (and get the error).
    folder_failed: bool,
    stop: bool,
}

impl Pending {
    /// In debug builds: the byte count matches a recount, and the entry marks are ordered.
    fn debug_check(&self) {
        debug_assert_eq!(
            self.bytes,
            self.latest.values().map(|l| l.value.len()).sum::<usize>(),
            "unfolded bytes match a recount"
        );
        debug_assert!(
            self.folded_below <= self.committed_below && self.committed_below <= self.next,
            "folded <= committed <= next"
        );
    }
}

struct Shared<S: Store> {
    db: S,
    pending: Mutex<Pending>,
    /// Wakes the folder thread.
    wake: Condvar,
    /// Held by whoever folds (the folder thread or a caller draining).
    folding: Mutex<()>,
}

/// Entries staged in a batch that is not committed yet.
pub(crate) struct Staged {
    entry: u64,
    /// Each story's value and whether its key is known absent ([`StoryWrite::unstored`]).
    records: Vec<(StoryId, Arc<[u8]>, bool)>,
}

/// The story journal of one open store, with its folder thread.
pub(crate) struct Journal<S: Store> {
    shared: Arc<Shared<S>>,
    folder: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Store> Journal<S> {
    /// Loads the entries a previous run left unfolded and starts the folder thread.
    pub fn open(db: &S) -> Result<Journal<S>, Error> {
        let mut pending = Pending::default();
        let mut first = None;
        for kv in db.scan_prefix(key::JOURNAL) {
            let (k, v) = kv?;
            let entry = key::journal_seq(&k)?;
            first.get_or_insert(entry);
            for (id, value) in decode_entry(&v)? {
                story_kind(&value)?;
                pending.bytes += value.len();
                let latest = Latest {
                    entry,
                    value,
                    key_kind: None,
                };
                if let Some(old) = pending.latest.insert(id, latest) {
                    pending.bytes -= old.value.len();
                }
            }
            pending.next = entry + 1;
        }
        pending.folded_below = first.unwrap_or(pending.next);
        pending.committed_below = pending.next;
        let shared = Arc::new(Shared {
            db: db.clone(),
            pending: Mutex::new(pending),
            wake: Condvar::new(),
            folding: Mutex::new(()),
        });
        let folder = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("huskies-fold".into())
                .spawn(move || fold_loop(&shared))
                .map_err(|e| Error::io("starting the journal folder thread", e))?
        };
        Ok(Journal {
            shared,
            folder: Some(folder),
        })
    }

    /// The newest record of a story changed by a commit that is not folded yet.
    pub fn get(&self, id: &StoryId) -> Option<Arc<[u8]>> {
        lock(&self.shared.pending).latest.get(id).map(|l| l.value.clone())
    }

    /// Reads a story's stored value: the journal's newest, else its key.
    pub fn read(&self, id: &StoryId) -> Result<Option<StoryRecord>, Error> {
        match self.get(id) {
            Some(v) => decode_story(&v).map(Some),
            None => self
                .shared
                .db
                .get(&key::story(id))?
                .map(|v| decode_story(&v))
                .transpose(),
        }
    }

    /// Adds one entry holding `records` to `batch`.
    /// Call [`Journal::committed`] once the batch is applied and flushed.
    pub fn stage(&self, batch: &mut S::Batch, records: Vec<StoryWrite>) -> Staged {
        let entry = {
            let mut p = lock(&self.shared.pending);
            let e = p.next;
            p.next += 1;
            e
        };
        batch.insert(
            &key::journal(entry),
            &encode_entry_with(records.iter().map(|r| (&r.id, &r.value[..]))),
        );
        Staged {
            entry,
            records: records
                .into_iter()
                .map(|r| (r.id, Arc::from(r.value), r.unstored))
                .collect(),
        }
    }

    /// Records a staged entry as committed: its records are served from memory until
    /// folded. Folds on this thread first if too much waits.
    pub fn committed(&self, staged: Staged) -> Result<(), Error> {
        let must_fold = {
            let mut p = lock(&self.shared.pending);
            let entry = staged.entry;
            let p = &mut *p;
            for (id, value, unstored) in staged.records {
                p.bytes += value.len();
                match p.latest.entry(id) {
                    // What the key holds is what it held: only folds write it.
                    Entry::Occupied(mut l) => {
                        let l = l.get_mut();
                        p.bytes -= std::mem::replace(&mut l.value, value).len();
                        l.entry = entry;
                    }
                    Entry::Vacant(v) => {
                        v.insert(Latest {
                            entry,
                            value,
                            key_kind: unstored.then_some(None),
                        });
                    }
                }
            }
            p.committed_below = p.committed_below.max(staged.entry + 1);
            p.debug_check();
            p.folder_failed
                || p.committed_below - p.folded_below > MAX_PENDING_ENTRIES
                || p.bytes > MAX_PENDING_BYTES
        };
        if must_fold {
            fold(&self.shared)
        } else {
            self.shared.wake.notify_one();
            Ok(())
        }
    }

    /// An entry that was staged but whose batch failed: nothing of it is kept.
    pub fn abandoned(&self, staged: Staged) {
        let mut p = lock(&self.shared.pending);
        // Later entries may commit; the gap is harmless (no key was written for it).
        p.committed_below = p.committed_below.max(staged.entry + 1);
    }

    /// Folds everything committed so far, on this thread: afterwards the `S` and `K` keys
    /// hold every story exactly (for scans).
    pub fn drain(&self) -> Result<(), Error> {
        fold(&self.shared)
    }

    /// Unfolded entries and stories (for tests and diagnostics).
    #[cfg(test)]
    pub fn pending(&self) -> (u64, usize) {
        let p = lock(&self.shared.pending);
        (p.committed_below - p.folded_below, p.latest.len())
    }
}

impl<S: Store> Drop for Journal<S> {
    fn drop(&mut self) {
        lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.folder.take() {
            let _ = t.join();
        }
        // Folding here only spares the next open some work, so its outcome is nobody's to
        // handle: the entries are durable already, and a fold that fails (or that sled has
        // not persisted when the process ends) leaves them for open to read back and fold
        // again. Callers that want errors call `Node::flush`, which drains and flushes.
        let _ = fold(&self.shared);
    }
}

fn fold_loop<S: Store>(shared: &Shared<S>) {
    loop {
        {
            let mut p = lock(&shared.pending);
            while !p.stop && (p.committed_below - p.folded_below < FOLD_AFTER_ENTRIES || p.folder_failed) {
                p = shared.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
            }
            if p.stop {
                return;
            }
        }
        if fold(shared).is_err() {
            // The caller's next commit folds on its own thread and returns the error.
            lock(&shared.pending).folder_failed = true;
        }
    }
}

/// Writes every unfolded story's newest record into its key, moves its stage index, and
/// deletes the entries that are then fully folded.
fn fold<S: Store>(shared: &Shared<S>) -> Result<(), Error> {
    let _folding = lock(&shared.folding);
    let (snapshot, upto) = {
        let p = lock(&shared.pending);
        let snapshot: Vec<(StoryId, Latest)> =
            p.latest.iter().map(|(id, l)| (id.clone(), l.clone())).collect();
        (snapshot, p.committed_below)
    };
    if let Err(e) = write_fold(shared, &snapshot, upto) {
        // Some keys may now hold records the journal thinks they do not: read them again.
        for l in lock(&shared.pending).latest.values_mut() {
            l.key_kind = None;
        }
        return Err(e);
    }
    let mut p = lock(&shared.pending);
    p.folded_below = p.folded_below.max(upto);
    for (id, latest) in snapshot {
        match p.latest.get_mut(&id) {
            Some(l) if l.entry == latest.entry => {
                p.bytes -= latest.value.len();
                p.latest.remove(&id);
            }
            // A newer record waits: its key now holds the one just folded.
            Some(l) => l.key_kind = story_kind(&latest.value).ok(),
            None => {}
        }
    }
    p.folder_failed = false;
    p.debug_check();
    Ok(())
}

/// The store writes of [`fold`]: the snapshot's records into their keys with their stage
/// index, then the entries below `upto` deleted.
fn write_fold<S: Store>(shared: &Shared<S>, snapshot: &[(StoryId, Latest)], upto: u64) -> Result<(), Error> {
    let db = &shared.db;
    for chunk in snapshot.chunks(FOLD_CHUNK) {
        let mut batch = S::Batch::default();
        for (id, latest) in chunk {
            let k = key::story(id);
            let old = match latest.key_kind {
                Some(known) => {
                    // Debug builds read the key anyway and check; a failed read is returned
                    // as the read of a release build without the knowledge would be (the
                    // fault tests count on every failed storage operation being returned).
                    #[cfg(debug_assertions)]
                    {
                        let stored = stored_kind(db, &k)?;
                        debug_assert_eq!(stored, known, "the journal knows the stage of {id}'s key");
                    }
                    known
                }
                None => stored_kind(db, &k)?,
            };
            let new = story_kind(&latest.value)?;
            if old != new {
                if let Some(old) = old {
                    batch.remove(&key::stage_index(old, id));
                }
                if let Some(new) = new {
                    batch.insert(&key::stage_index(new, id), &[]);
                }
            }
            batch.insert(&k, &latest.value);
        }
        db.apply(batch)?;
    }
    // Only folds move `folded_below`, and this one holds `folding`.
    let folded_below = lock(&shared.pending).folded_below;
    if upto > folded_below {
        let mut batch = S::Batch::default();
        for entry in folded_below..upto {
            batch.remove(&key::journal(entry));
        }
        db.apply(batch)?;
    }
    Ok(())
}

/// The stage of the value a story key holds (`None`: absent or not indexed).
fn stored_kind<S: Store>(db: &S, k: &[u8]) -> Result<Option<StageKind>, Error> {
    match db.get(k)? {
        Some(v) => story_kind(&v),
        None => Ok(None),
    }
}

/// A journal entry holding `records`: count u32 LE, then per story its id length u8, id,
/// value length u32 LE and value.
pub(crate) fn encode_entry<V: AsRef<[u8]>>(records: &[(StoryId, V)]) -> Vec<u8> {
    encode_entry_with(records.iter().map(|(id, v)| (id, v.as_ref())))
}

/// [`encode_entry`] of records borrowed from wherever they are held.
fn encode_entry_with<'a>(records: impl Iterator<Item = (&'a StoryId, &'a [u8])> + Clone) -> Vec<u8> {
    let mut value = Vec::with_capacity(
        4 + records
            .clone()
            .map(|(id, v)| 5 + id.as_str().len() + v.len())
            .sum::<usize>(),
    );
    let count = records.clone().count();
    value.extend_from_slice(&entry_len(count, "stories in one entry").to_le_bytes());
    for (id, v) in records {
        value.push(u8::try_from(id.as_str().len()).expect("story ids are at most 128 bytes"));
        value.extend_from_slice(id.as_str().as_bytes());
        value.extend_from_slice(&entry_len(v.len(), "a story value").to_le_bytes());
        value.extend_from_slice(v);
    }
    value
}

/// A length field of an entry. Commits hold at most a few thousand stories of bounded
/// size, so a length past `u32::MAX` is a bug, not an input.
fn entry_len(n: usize, what: &str) -> u32 {
    u32::try_from(n).unwrap_or_else(|_| panic!("{what} exceeds a journal entry's u32 length field"))
}

/// Splits a journal entry into its stories and their values.
pub(crate) fn decode_entry(v: &[u8]) -> Result<Records, Error> {
    let bad = || Error::Corrupt("journal entry is truncated".into());
    let take = |at: &mut usize, n: usize| -> Result<&[u8], Error> {
        let s = v.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(s)
    };
    let mut at = 0;
    let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
    let mut out = Vec::with_capacity(usize::try_from(count).unwrap_or(usize::MAX).min(v.len() / 6));
    for _ in 0..count {
        let id_len = usize::from(take(&mut at, 1)?[0]);
        let id = std::str::from_utf8(take(&mut at, id_len)?)
            .ok()
            .and_then(|s| StoryId::new(s).ok())
            .ok_or_else(|| Error::Corrupt("journal entry names an invalid story id".into()))?;
        let len = usize::try_from(u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes")))
            .map_err(|_| bad())?;
        out.push((id, Arc::from(take(&mut at, len)?)));
    }
    if at != v.len() {
        return Err(Error::Corrupt("journal entry has trailing bytes".into()));
    }
    Ok(out)
}
