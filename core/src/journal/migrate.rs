//! Migration of stores written in older formats to the current one.

use super::{decode_entry, encode_entry};
use crate::codec;
use crate::error::Error;
use crate::keyspace as key;
use crate::projection::{AuthorRecord, StoryRecord};
use crate::record::{decode_story_v1, decode_story_v2, encode_story};
use crate::storage::{Store, WriteBatch};

/// Upgrades a store of format 1, 2, 3 or 4 to [`key::STORE_FORMAT_VERSION`] (5). One
/// atomic batch holds all of it and the new format number, so a crash leaves either the old
/// store, which the next open migrates again, or the new one.
///
/// - Formats 1 and 2: every story value, under `S` and inside every journal entry, is
///   decoded in its old layout and re-encoded packed (format 3). Format 1 (story values
///   without their stage byte) had no journal, so a format-1 store with journal entries is
///   refused as corrupt.
/// - Every format before 4: each author record's segment tail, which named the author's
///   newest `O` segment, is cleared (format 4 names the open run of `P` segments there, and
///   older stores have none). The ops themselves stay where they are.
/// - Every format before 5: member records kept only each key's newest role, and format 5
///   keeps every role given (`MemberRecord::roles`, which reads a format-4 record as a list
///   of at most one). The rebuild flag is set, so the open that migrates replays the stored
///   ops once and fills in the roles (authority is judged at each op's stamp).
pub(crate) fn migrate<S: Store>(db: &S, format: u32) -> Result<(), Error> {
    let mut batch = S::Batch::default();
    match format {
        1 | 2 => repack_stories(db, format, &mut batch)?,
        3 | 4 => {}
        _ => {
            return Err(Error::Corrupt(format!(
                "store format {format} cannot be migrated"
            )))
        }
    }
    if format < 4 {
        for kv in db.scan_prefix(key::AUTHORS) {
            let (k, v) = kv?;
            key::author_from_key(&k)?;
            let mut rec: AuthorRecord = codec::decode(&v, "author record")?;
            if rec.last_segment.take().is_some() {
                batch.insert(&k, &codec::encode(&rec));
            }
        }
    }
    batch.insert(key::META_REBUILD, &codec::encode(&true));
    batch.insert(key::META_FORMAT, &codec::encode(&key::STORE_FORMAT_VERSION));
    crate::storage::commit(db, batch)
}

/// Formats 1 and 2 to 3: story values re-encoded packed, into `batch`.
fn repack_stories<S: Store>(db: &S, format: u32, batch: &mut S::Batch) -> Result<(), Error> {
    let decode_old: fn(&[u8]) -> Result<StoryRecord, Error> = if format == 1 {
        decode_story_v1
    } else {
        decode_story_v2
    };
    for kv in db.scan_prefix(key::STORIES) {
        let (k, v) = kv?;
        batch.insert(&k, &encode_story(&decode_old(&v)?));
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
        batch.insert(&k, &encode_entry(&records));
    }
    Ok(())
}
