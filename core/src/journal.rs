//! The story journal: how changed story records reach the store without one sled insert
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

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use crate::codec;
use crate::error::Error;
use crate::id::StoryId;
use crate::keyspace as key;
use crate::pipeline::StageKind;
use crate::projection::StoryRecord;
use crate::record;

/// Most committed entries left unfolded before a commit folds on its own thread.
pub(crate) const MAX_PENDING_ENTRIES: u64 = 256;
/// Most bytes of unfolded story records before a commit folds on its own thread.
pub(crate) const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// The folder thread waits for this many committed entries: a story that a burst keeps
/// changing is then written to its key once for many commits.
pub(crate) const FOLD_AFTER_ENTRIES: u64 = 32;
/// Stories per folding batch: bounds how long a fold holds sled's batch lock.
const FOLD_CHUNK: usize = 256;
/// The stage-index byte of a story that is not visible (never created, or deleted).
const NOT_INDEXED: u8 = 0xff;

/// A story's stored value (under `S`, and inside journal entries): its stage-index byte,
/// then the packed record ([`record`]). The byte lets folding move the index without
/// decoding.
pub(crate) fn encode_story(rec: &StoryRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + record::size_hint(rec));
    out.push(stage_byte(rec));
    record::encode_into(rec, &mut out);
    out
}

/// Decodes a stored story value. Its stage byte must be the one its record implies.
pub(crate) fn decode_story(bytes: &[u8]) -> Result<StoryRecord, Error> {
    story_kind(bytes)?;
    let rec = record::decode(&bytes[1..])?;
    if bytes[0] != stage_byte(&rec) {
        return Err(Error::Corrupt(format!(
            "story record has stage code {} but is {}",
            bytes[0],
            rec.visible_kind().map_or("not indexed", StageKind::as_str)
        )));
    }
    Ok(rec)
}

/// Decodes a format-2 story value (stage byte, then the record as postcard encodes it with
/// its serde derives). Read only to migrate.
pub(crate) fn decode_story_v2(bytes: &[u8]) -> Result<StoryRecord, Error> {
    story_kind(bytes)?;
    codec::decode(&bytes[1..], "format-2 story record")
}

/// Decodes a format-1 story value (the postcard record alone). Read only to migrate.
fn decode_story_v1(bytes: &[u8]) -> Result<StoryRecord, Error> {
    codec::decode(bytes, "format-1 story record")
}

/// A story value as format 2 wrote it, for migration tests.
#[cfg(test)]
pub(crate) fn encode_story_v2(rec: &StoryRecord) -> Vec<u8> {
    let mut out = vec![stage_byte(rec)];
    codec::encode_into(rec, &mut out);
    out
}

fn stage_byte(rec: &StoryRecord) -> u8 {
    rec.visible_kind().map_or(NOT_INDEXED, StageKind::code)
}

/// The stage-index byte of a stored story value.
fn story_kind(bytes: &[u8]) -> Result<Option<StageKind>, Error> {
    match bytes.first() {
        None => Err(Error::Corrupt("story record is empty".into())),
        Some(&NOT_INDEXED) => Ok(None),
        Some(&code) => StageKind::from_code(code)
            .map(Some)
            .ok_or_else(|| Error::Corrupt(format!("story record has stage code {code}"))),
    }
}

/// Stories and their stored values, as in one entry.
type Records = Vec<(StoryId, Arc<[u8]>)>;

/// Upgrades a store of format 1 or 2 to [`key::STORE_FORMAT_VERSION`] (3): every story
/// value, under `S` and inside every journal entry, is decoded in its old layout and
/// re-encoded packed. One atomic batch holds all of it and the new format number, so a
/// crash leaves either the old store, which the next open migrates again, or the new one.
///
/// Format 1 (story values without their stage byte) goes straight to 3; it had no journal,
/// so a format-1 store with journal entries is refused as corrupt.
pub(crate) fn migrate(db: &sled::Db, format: u32) -> Result<(), Error> {
    let decode_old: fn(&[u8]) -> Result<StoryRecord, Error> = match format {
        1 => decode_story_v1,
        2 => decode_story_v2,
        _ => {
            return Err(Error::Corrupt(format!(
                "store format {format} cannot be migrated"
            )))
        }
    };
    let mut batch = sled::Batch::default();
    for kv in db.scan_prefix(key::STORIES) {
        let (k, v) = kv?;
        batch.insert(k, encode_story(&decode_old(&v)?));
    }
    for kv in db.scan_prefix(key::JOURNAL) {
        let (k, v) = kv?;
        key::journal_seq(&k)?;
        if format == 1 {
            return Err(Error::Corrupt(
                "a format-1 store holds story journal entries".into(),
            ));
        }
        let records = decode_entry(&v)?
            .into_iter()
            .map(|(id, value)| Ok((id, encode_story(&decode_story_v2(&value)?))))
            .collect::<Result<Vec<_>, Error>>()?;
        batch.insert(k, encode_entry(&records));
    }
    batch.insert(key::META_FORMAT, codec::encode(&key::STORE_FORMAT_VERSION));
    db.apply_batch(batch)?;
    db.flush()?;
    Ok(())
}

/// A story record waiting to be folded.
#[derive(Clone)]
struct Latest {
    /// The entry it was committed in.
    entry: u64,
    value: Arc<[u8]>,
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

struct Shared {
    db: sled::Db,
    pending: Mutex<Pending>,
    /// Wakes the folder thread.
    wake: Condvar,
    /// Held by whoever folds (the folder thread or a caller draining).
    folding: Mutex<()>,
}

/// Entries staged in a batch that is not committed yet.
pub(crate) struct Staged {
    entry: u64,
    records: Vec<(StoryId, Arc<[u8]>)>,
}

/// The story journal of one open store, with its folder thread.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    folder: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Loads the entries a previous run left unfolded and starts the folder thread.
    pub fn open(db: &sled::Db) -> Result<Journal, Error> {
        let mut pending = Pending::default();
        let mut first = None;
        for kv in db.scan_prefix(key::JOURNAL) {
            let (k, v) = kv?;
            let entry = key::journal_seq(&k)?;
            first.get_or_insert(entry);
            for (id, value) in decode_entry(&v)? {
                story_kind(&value)?;
                pending.bytes += value.len();
                if let Some(old) = pending.latest.insert(id, Latest { entry, value }) {
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
                .get(key::story(id))?
                .map(|v| decode_story(&v))
                .transpose(),
        }
    }

    /// Adds one entry holding `records` (encoded with [`encode_story`]) to `batch`.
    /// Call [`Journal::committed`] once the batch is applied and flushed.
    pub fn stage(&self, batch: &mut sled::Batch, records: Vec<(StoryId, Vec<u8>)>) -> Staged {
        let entry = {
            let mut p = lock(&self.shared.pending);
            let e = p.next;
            p.next += 1;
            e
        };
        batch.insert(&key::journal(entry)[..], encode_entry(&records));
        Staged {
            entry,
            records: records.into_iter().map(|(id, v)| (id, Arc::from(v))).collect(),
        }
    }

    /// Records a staged entry as committed: its records are served from memory until
    /// folded. Folds on this thread first if too much waits.
    pub fn committed(&self, staged: Staged) -> Result<(), Error> {
        let must_fold = {
            let mut p = lock(&self.shared.pending);
            for (id, value) in staged.records {
                p.bytes += value.len();
                let entry = staged.entry;
                if let Some(old) = p.latest.insert(id, Latest { entry, value }) {
                    p.bytes -= old.value.len();
                }
            }
            p.committed_below = p.committed_below.max(staged.entry + 1);
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

impl Drop for Journal {
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

fn fold_loop(shared: &Shared) {
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
fn fold(shared: &Shared) -> Result<(), Error> {
    let _folding = lock(&shared.folding);
    let (snapshot, upto) = {
        let p = lock(&shared.pending);
        let snapshot: Vec<(StoryId, Latest)> =
            p.latest.iter().map(|(id, l)| (id.clone(), l.clone())).collect();
        (snapshot, p.committed_below)
    };
    let db = &shared.db;
    for chunk in snapshot.chunks(FOLD_CHUNK) {
        let mut batch = sled::Batch::default();
        for (id, latest) in chunk {
            let k = key::story(id);
            let old = match db.get(&k)? {
                Some(v) => story_kind(&v)?,
                None => None,
            };
            let new = story_kind(&latest.value)?;
            if old != new {
                if let Some(old) = old {
                    batch.remove(key::stage_index(old, id));
                }
                if let Some(new) = new {
                    batch.insert(key::stage_index(new, id), &[][..]);
                }
            }
            batch.insert(k, &latest.value[..]);
        }
        db.apply_batch(batch)?;
    }
    // Only folds move `folded_below`, and this one holds `folding`.
    let folded_below = lock(&shared.pending).folded_below;
    if upto > folded_below {
        let mut batch = sled::Batch::default();
        for entry in folded_below..upto {
            batch.remove(&key::journal(entry)[..]);
        }
        db.apply_batch(batch)?;
    }
    let mut p = lock(&shared.pending);
    p.folded_below = p.folded_below.max(upto);
    for (id, latest) in snapshot {
        if p.latest.get(&id).is_some_and(|l| l.entry == latest.entry) {
            p.bytes -= latest.value.len();
            p.latest.remove(&id);
        }
    }
    p.folder_failed = false;
    Ok(())
}

/// A journal entry holding `records`: count u32 LE, then per story its id length u8, id,
/// value length u32 LE and value.
pub(crate) fn encode_entry<V: AsRef<[u8]>>(records: &[(StoryId, V)]) -> Vec<u8> {
    let mut value = Vec::with_capacity(
        4 + records
            .iter()
            .map(|(id, v)| 5 + id.as_str().len() + v.as_ref().len())
            .sum::<usize>(),
    );
    value.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (id, v) in records {
        let v = v.as_ref();
        value.push(id.as_str().len() as u8);
        value.extend_from_slice(id.as_str().as_bytes());
        value.extend_from_slice(&(v.len() as u32).to_le_bytes());
        value.extend_from_slice(v);
    }
    value
}

/// Splits a journal entry into its stories and their values.
fn decode_entry(v: &[u8]) -> Result<Records, Error> {
    let bad = || Error::Corrupt("journal entry is truncated".into());
    let take = |at: &mut usize, n: usize| -> Result<&[u8], Error> {
        let s = v.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(s)
    };
    let mut at = 0;
    let count = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes"));
    let mut out = Vec::with_capacity((count as usize).min(v.len() / 6));
    for _ in 0..count {
        let id_len = take(&mut at, 1)?[0] as usize;
        let id = std::str::from_utf8(take(&mut at, id_len)?)
            .ok()
            .and_then(|s| StoryId::new(s).ok())
            .ok_or_else(|| Error::Corrupt("journal entry names an invalid story id".into()))?;
        let len = u32::from_le_bytes(take(&mut at, 4)?.try_into().expect("4 bytes")) as usize;
        out.push((id, Arc::from(take(&mut at, len)?)));
    }
    if at != v.len() {
        return Err(Error::Corrupt("journal entry has trailing bytes".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;
    use crate::projection::Stamp;

    fn record(created: bool, deleted: bool) -> StoryRecord {
        let stamp = Stamp {
            lamport: 1,
            author: NodeId::from_bytes([7; 32]),
        };
        StoryRecord {
            created: created.then_some((stamp, crate::id::OpId::from_bytes([1; 32]))),
            deleted: deleted.then_some(stamp),
            ..StoryRecord::default()
        }
    }

    fn sid(s: &str) -> StoryId {
        StoryId::new(s).unwrap()
    }

    fn db(dir: &std::path::Path) -> sled::Db {
        crate::store::open_db(&dir.join("store")).unwrap()
    }

    fn commit(db: &sled::Db, j: &Journal, records: Vec<(StoryId, StoryRecord)>) {
        let mut batch = sled::Batch::default();
        let staged = j.stage(
            &mut batch,
            records
                .iter()
                .map(|(id, r)| (id.clone(), encode_story(r)))
                .collect(),
        );
        db.apply_batch(batch).unwrap();
        j.committed(staged).unwrap();
    }

    fn index(db: &sled::Db) -> Vec<(u8, String)> {
        db.scan_prefix(key::STAGE_INDEX)
            .map(|kv| {
                let (kind, id) = key::stage_index_from_key(&kv.unwrap().0).unwrap();
                (kind.code(), id.as_str().to_string())
            })
            .collect()
    }

    #[test]
    fn story_values_carry_their_stage_index_byte() {
        let v = encode_story(&record(true, false));
        assert_eq!(v[0], StageKind::Backlog.code());
        assert_eq!(decode_story(&v).unwrap(), record(true, false));
        assert_eq!(encode_story(&record(true, true))[0], NOT_INDEXED);
        assert_eq!(decode_story(&[]).unwrap_err().kind(), crate::ErrorKind::Corrupt);
        assert_eq!(
            decode_story(&[9, 0]).unwrap_err().kind(),
            crate::ErrorKind::Corrupt
        );
    }

    #[test]
    fn entries_round_trip_and_damaged_ones_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let j = Journal::open(&db).unwrap();
        let mut batch = sled::Batch::default();
        let recs = vec![
            (sid("a"), encode_story(&record(true, false))),
            (sid("b"), vec![NOT_INDEXED]),
        ];
        let _ = j.stage(&mut batch, recs.clone());
        db.apply_batch(batch).unwrap();
        let (_, v) = db.scan_prefix(key::JOURNAL).next().unwrap().unwrap();
        let back = decode_entry(&v).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].0.clone(), back[0].1.to_vec()), recs[0]);
        for cut in [0, 3, 5, v.len() - 1] {
            assert_eq!(
                decode_entry(&v[..cut]).unwrap_err().kind(),
                crate::ErrorKind::Corrupt
            );
        }
        let mut long = v.to_vec();
        long.push(0);
        assert_eq!(decode_entry(&long).unwrap_err().kind(), crate::ErrorKind::Corrupt);
    }

    #[test]
    fn committed_records_are_served_until_folded_then_read_from_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let j = Journal::open(&db).unwrap();
        commit(
            &db,
            &j,
            vec![(sid("a"), record(true, false)), (sid("b"), record(true, false))],
        );
        commit(&db, &j, vec![(sid("a"), record(true, true))]);
        assert_eq!(j.read(&sid("a")).unwrap(), Some(record(true, true)));
        j.drain().unwrap();
        assert_eq!(j.pending(), (0, 0));
        assert_eq!(
            db.scan_prefix(key::JOURNAL).count(),
            0,
            "folded entries are deleted"
        );
        assert_eq!(j.read(&sid("a")).unwrap(), Some(record(true, true)));
        assert_eq!(j.read(&sid("b")).unwrap(), Some(record(true, false)));
        assert_eq!(j.read(&sid("c")).unwrap(), None);
        // `a` is deleted (not indexed), `b` is in the backlog.
        assert_eq!(index(&db), vec![(StageKind::Backlog.code(), "b".to_string())]);
        // A story leaving the index loses its old key.
        commit(&db, &j, vec![(sid("b"), record(true, true))]);
        j.drain().unwrap();
        assert!(index(&db).is_empty());
    }

    #[test]
    fn entries_left_by_a_crash_are_read_back_and_folded() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        // What a run that stopped before folding leaves: entries and no story keys.
        {
            let j = Journal::open(&db).unwrap();
            for (i, rec) in [record(true, false), record(true, true), record(true, false)]
                .into_iter()
                .enumerate()
            {
                let mut batch = sled::Batch::default();
                let _ = j.stage(
                    &mut batch,
                    vec![
                        (sid("x"), encode_story(&rec)),
                        (sid(&format!("y{i}")), encode_story(&rec)),
                    ],
                );
                db.apply_batch(batch).unwrap();
            }
            // Not committed to this journal's memory, so it folds nothing on drop.
        }
        assert_eq!(db.scan_prefix(key::JOURNAL).count(), 3);
        assert_eq!(db.scan_prefix(key::STORIES).count(), 0);
        let j = Journal::open(&db).unwrap();
        assert_eq!(
            j.read(&sid("x")).unwrap(),
            Some(record(true, false)),
            "the newest entry wins"
        );
        assert_eq!(j.read(&sid("y1")).unwrap(), Some(record(true, true)));
        j.drain().unwrap();
        assert_eq!(db.scan_prefix(key::JOURNAL).count(), 0);
        assert_eq!(db.scan_prefix(key::STORIES).count(), 4);
        assert_eq!(index(&db).len(), 3);
        // Entries after a reopen continue past the old ones.
        commit(&db, &j, vec![(sid("z"), record(true, false))]);
        assert_eq!(j.read(&sid("z")).unwrap(), Some(record(true, false)));
    }

    fn format(db: &sled::Db) -> u32 {
        crate::store::get(db, key::META_FORMAT, "format")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_format_1_store_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let (live, gone) = (record(true, false), record(true, true));
        let rich = crate::record::tests::realistic_record();
        db.insert(key::story(&sid("a")), codec::encode(&live)).unwrap();
        db.insert(key::story(&sid("b")), codec::encode(&gone)).unwrap();
        db.insert(key::story(&sid("c")), codec::encode(&rich)).unwrap();
        db.insert(key::META_FORMAT, codec::encode(&1u32)).unwrap();
        migrate(&db, 1).unwrap();
        assert_eq!(format(&db), key::STORE_FORMAT_VERSION);
        let v = db.get(key::story(&sid("c"))).unwrap().unwrap();
        assert_eq!(
            &v[..],
            &encode_story(&rich)[..],
            "stored packed, with its stage byte"
        );
        let j = Journal::open(&db).unwrap();
        assert_eq!(j.read(&sid("a")).unwrap(), Some(live));
        assert_eq!(j.read(&sid("b")).unwrap(), Some(gone));
        assert_eq!(j.read(&sid("c")).unwrap(), Some(rich));
    }

    #[test]
    fn a_format_1_store_with_journal_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        db.insert(key::story(&sid("a")), codec::encode(&record(true, false)))
            .unwrap();
        db.insert(key::journal(0), encode_entry::<Vec<u8>>(&[])).unwrap();
        db.insert(key::META_FORMAT, codec::encode(&1u32)).unwrap();
        assert_eq!(migrate(&db, 1).unwrap_err().kind(), crate::ErrorKind::Corrupt);
        assert_eq!(format(&db), 1, "nothing was written");
        let a = db.get(key::story(&sid("a"))).unwrap().unwrap();
        assert_eq!(decode_story_v1(&a).unwrap(), record(true, false));
    }

    #[test]
    fn a_format_2_store_is_migrated_with_its_unfolded_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let (live, gone) = (record(true, false), record(true, true));
        let rich = crate::record::tests::realistic_record();
        // Folded records, and entries a run left unfolded: `a` was deleted since it was
        // folded, `c` exists only in the entries and changed twice.
        db.insert(key::story(&sid("a")), encode_story_v2(&live)).unwrap();
        db.insert(key::story(&sid("b")), encode_story_v2(&rich)).unwrap();
        db.insert(
            key::journal(7),
            encode_entry(&[
                (sid("a"), encode_story_v2(&gone)),
                (sid("c"), encode_story_v2(&live)),
            ]),
        )
        .unwrap();
        db.insert(
            key::journal(8),
            encode_entry(&[(sid("c"), encode_story_v2(&rich))]),
        )
        .unwrap();
        db.insert(key::META_FORMAT, codec::encode(&2u32)).unwrap();
        let v2_bytes = db.get(key::story(&sid("b"))).unwrap().unwrap().len();

        migrate(&db, 2).unwrap();
        assert_eq!(format(&db), key::STORE_FORMAT_VERSION);
        let v3_bytes = db.get(key::story(&sid("b"))).unwrap().unwrap().len();
        assert!(v3_bytes < v2_bytes, "{v3_bytes} < {v2_bytes}");
        // Every value, folded or not, is in the new layout.
        let entries: Vec<Records> = db
            .scan_prefix(key::JOURNAL)
            .map(|kv| decode_entry(&kv.unwrap().1).unwrap())
            .collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0][0].0, sid("a"));
        assert_eq!(decode_story(&entries[0][0].1).unwrap(), gone);
        assert_eq!(decode_story(&entries[0][1].1).unwrap(), live);
        assert_eq!(decode_story(&entries[1][0].1).unwrap(), rich);

        let j = Journal::open(&db).unwrap();
        assert_eq!(j.read(&sid("a")).unwrap(), Some(gone.clone()));
        assert_eq!(j.read(&sid("b")).unwrap(), Some(rich.clone()));
        assert_eq!(j.read(&sid("c")).unwrap(), Some(rich.clone()));
        j.drain().unwrap();
        assert_eq!(j.read(&sid("a")).unwrap(), Some(gone));
        assert_eq!(j.read(&sid("c")).unwrap(), Some(rich));
        assert_eq!(db.scan_prefix(key::JOURNAL).count(), 0);
    }

    #[test]
    fn a_damaged_format_2_value_stops_the_migration_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        db.insert(key::story(&sid("a")), encode_story_v2(&record(true, false)))
            .unwrap();
        db.insert(key::journal(1), encode_entry(&[(sid("b"), vec![0, 0xff])]))
            .unwrap();
        db.insert(key::META_FORMAT, codec::encode(&2u32)).unwrap();
        assert_eq!(migrate(&db, 2).unwrap_err().kind(), crate::ErrorKind::Corrupt);
        assert_eq!(format(&db), 2);
        let a = db.get(key::story(&sid("a"))).unwrap().unwrap();
        assert_eq!(decode_story_v2(&a).unwrap(), record(true, false));
    }

    #[test]
    fn a_damaged_entry_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        db.insert(key::journal(3), &[1, 0, 0, 0, 200][..]).unwrap();
        assert_eq!(
            Journal::open(&db).err().unwrap().kind(),
            crate::ErrorKind::Corrupt
        );
    }

    #[test]
    fn the_folder_thread_folds_without_being_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(dir.path());
        let j = Journal::open(&db).unwrap();
        for _ in 0..FOLD_AFTER_ENTRIES {
            commit(&db, &j, vec![(sid("a"), record(true, false))]);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while j.pending() != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing folded: {:?}",
                j.pending()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(db.scan_prefix(key::STORIES).count(), 1);
    }
}
