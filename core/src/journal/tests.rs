//! Tests of the journal, its story values and migration.

use super::*;
use crate::codec;
use crate::id::NodeId;
use crate::pipeline::StageKind;
use crate::projection::Stamp;
use crate::record::{decode_story_v1, decode_story_v2, encode_story, encode_story_v2, NOT_INDEXED};
use crate::storage::SledStore;

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

fn db(dir: &std::path::Path) -> SledStore {
    SledStore::open(&dir.join("store")).unwrap()
}

/// Writes one key outside any journal (what an older build, or a crash, left).
fn put(db: &SledStore, k: &[u8], v: &[u8]) {
    let mut batch = crate::storage::SledBatch::default();
    batch.insert(k, v);
    db.apply(batch).unwrap();
}

/// Stories to stage whose keys are not known to be absent.
fn writes(records: Vec<(StoryId, Vec<u8>)>) -> Vec<StoryWrite> {
    records
        .into_iter()
        .map(|(id, value)| StoryWrite {
            id,
            value,
            unstored: false,
        })
        .collect()
}

fn commit(db: &SledStore, j: &Journal<SledStore>, records: Vec<(StoryId, StoryRecord)>) {
    commit_known(db, j, records, false);
}

/// [`commit`], saying whether the stories' keys are known to be absent.
fn commit_known(
    db: &SledStore,
    j: &Journal<SledStore>,
    records: Vec<(StoryId, StoryRecord)>,
    unstored: bool,
) {
    let mut batch = crate::storage::SledBatch::default();
    let staged = j.stage(
        &mut batch,
        records
            .iter()
            .map(|(id, r)| StoryWrite {
                id: id.clone(),
                value: encode_story(r),
                unstored,
            })
            .collect(),
    );
    db.apply(batch).unwrap();
    j.committed(staged).unwrap();
}

/// Folds skip reading a story's key when the journal knows what it holds (a story a commit
/// created, or one a fold wrote while a newer record waited); the stage index must come out
/// as when every key is read. Stages move across folds, with newer records committed
/// between a fold's snapshot and its end modelled by commits between drains.
#[test]
fn known_key_stages_keep_the_stage_index_exact() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let j = Journal::open(&db).unwrap();
    let (live, gone) = (record(true, false), record(true, true));
    // New stories, known absent; one of them changes again before the fold.
    commit_known(
        &db,
        &j,
        vec![(sid("a"), live.clone()), (sid("b"), live.clone())],
        true,
    );
    commit(&db, &j, vec![(sid("a"), gone.clone())]);
    j.drain().unwrap();
    assert_eq!(index(&db), vec![(StageKind::Backlog.code(), "b".to_string())]);
    // Stored stories change stage; a deleted one comes back.
    commit(&db, &j, vec![(sid("a"), live.clone()), (sid("b"), gone.clone())]);
    j.drain().unwrap();
    assert_eq!(index(&db), vec![(StageKind::Backlog.code(), "a".to_string())]);
    commit_known(&db, &j, vec![(sid("c"), gone.clone())], true);
    commit(&db, &j, vec![(sid("c"), live.clone()), (sid("a"), gone)]);
    j.drain().unwrap();
    assert_eq!(index(&db), vec![(StageKind::Backlog.code(), "c".to_string())]);
    assert_eq!(j.read(&sid("c")).unwrap(), Some(live));
}

fn index(db: &SledStore) -> Vec<(u8, String)> {
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
    let mut batch = crate::storage::SledBatch::default();
    let recs = vec![
        (sid("a"), encode_story(&record(true, false))),
        (sid("b"), vec![NOT_INDEXED]),
    ];
    let _ = j.stage(&mut batch, writes(recs.clone()));
    db.apply(batch).unwrap();
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
            let mut batch = crate::storage::SledBatch::default();
            let _ = j.stage(
                &mut batch,
                writes(vec![
                    (sid("x"), encode_story(&rec)),
                    (sid(&format!("y{i}")), encode_story(&rec)),
                ]),
            );
            db.apply(batch).unwrap();
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

fn format(db: &SledStore) -> u32 {
    crate::storage::get(db, key::META_FORMAT, "format")
        .unwrap()
        .unwrap()
}

#[test]
fn a_format_1_store_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let (live, gone) = (record(true, false), record(true, true));
    let rich = crate::record::tests::realistic_record();
    put(&db, &key::story(&sid("a")), &codec::encode(&live));
    put(&db, &key::story(&sid("b")), &codec::encode(&gone));
    put(&db, &key::story(&sid("c")), &codec::encode(&rich));
    put(&db, key::META_FORMAT, &codec::encode(&1u32));
    migrate(&db, 1).unwrap();
    assert_eq!(format(&db), key::STORE_FORMAT_VERSION);
    let v = db.get(&key::story(&sid("c"))).unwrap().unwrap();
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
    put(&db, &key::story(&sid("a")), &codec::encode(&record(true, false)));
    put(&db, &key::journal(0), &encode_entry::<Vec<u8>>(&[]));
    put(&db, key::META_FORMAT, &codec::encode(&1u32));
    assert_eq!(migrate(&db, 1).unwrap_err().kind(), crate::ErrorKind::Corrupt);
    assert_eq!(format(&db), 1, "nothing was written");
    let a = db.get(&key::story(&sid("a"))).unwrap().unwrap();
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
    put(&db, &key::story(&sid("a")), &encode_story_v2(&live));
    put(&db, &key::story(&sid("b")), &encode_story_v2(&rich));
    put(
        &db,
        &key::journal(7),
        &encode_entry(&[
            (sid("a"), encode_story_v2(&gone)),
            (sid("c"), encode_story_v2(&live)),
        ]),
    );
    put(
        &db,
        &key::journal(8),
        &encode_entry(&[(sid("c"), encode_story_v2(&rich))]),
    );
    put(&db, key::META_FORMAT, &codec::encode(&2u32));
    let v2_bytes = db.get(&key::story(&sid("b"))).unwrap().unwrap().len();

    migrate(&db, 2).unwrap();
    assert_eq!(format(&db), key::STORE_FORMAT_VERSION);
    let v3_bytes = db.get(&key::story(&sid("b"))).unwrap().unwrap().len();
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
    put(
        &db,
        &key::story(&sid("a")),
        &encode_story_v2(&record(true, false)),
    );
    put(&db, &key::journal(1), &encode_entry(&[(sid("b"), vec![0, 0xff])]));
    put(&db, key::META_FORMAT, &codec::encode(&2u32));
    assert_eq!(migrate(&db, 2).unwrap_err().kind(), crate::ErrorKind::Corrupt);
    assert_eq!(format(&db), 2);
    let a = db.get(&key::story(&sid("a"))).unwrap().unwrap();
    assert_eq!(decode_story_v2(&a).unwrap(), record(true, false));
}

#[test]
fn a_damaged_entry_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    put(&db, &key::journal(3), &[1, 0, 0, 0, 200]);
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

#[test]
fn a_format_3_store_is_migrated_and_its_segment_tails_cleared() {
    use crate::projection::AuthorRecord;
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let author = |n: u8, tail| AuthorRecord {
        idx: u32::from(n),
        head_seq: 7,
        head_id: None,
        head_lamport: 7,
        quarantined_at: None,
        last_segment: tail,
    };
    let (a, b) = (NodeId::from_bytes([1; 32]), NodeId::from_bytes([2; 32]));
    put(
        &db,
        &key::author(&a),
        &codec::encode(&author(0, Some((3, 5, 900)))),
    );
    put(&db, &key::author(&b), &codec::encode(&author(1, None)));
    let story = encode_story(&record(true, false));
    put(&db, &key::story(&sid("s")), &story);
    put(&db, key::META_FORMAT, &codec::encode(&3u32));
    migrate(&db, 3).unwrap();
    assert_eq!(format(&db), key::STORE_FORMAT_VERSION);
    for (node, idx) in [(a, 0), (b, 1)] {
        let rec: AuthorRecord = crate::storage::get(&db, &key::author(&node), "author")
            .unwrap()
            .unwrap();
        assert_eq!(rec, author(idx, None), "the old tail named an O segment: cleared");
    }
    assert_eq!(
        &db.get(&key::story(&sid("s"))).unwrap().unwrap()[..],
        &story[..],
        "stories untouched"
    );
}
