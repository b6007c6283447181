//! Migration of stores written in older formats to the current one.

use super::{decode_entry, encode_entry};
use crate::codec;
use crate::error::Error;
use crate::keyspace as key;
use crate::projection::StoryRecord;
use crate::record::{decode_story_v1, decode_story_v2, encode_story};
use crate::storage::{Store, WriteBatch};

/// Upgrades a store of format 1 or 2 to [`key::STORE_FORMAT_VERSION`] (3): every story
/// value, under `S` and inside every journal entry, is decoded in its old layout and
/// re-encoded packed. One atomic batch holds all of it and the new format number, so a
/// crash leaves either the old store, which the next open migrates again, or the new one.
///
/// Format 1 (story values without their stage byte) goes straight to 3; it had no journal,
/// so a format-1 store with journal entries is refused as corrupt.
pub(crate) fn migrate<S: Store>(db: &S, format: u32) -> Result<(), Error> {
    let decode_old: fn(&[u8]) -> Result<StoryRecord, Error> = match format {
        1 => decode_story_v1,
        2 => decode_story_v2,
        _ => {
            return Err(Error::Corrupt(format!(
                "store format {format} cannot be migrated"
            )))
        }
    };
    let mut batch = S::Batch::default();
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
    batch.insert(key::META_FORMAT, &codec::encode(&key::STORE_FORMAT_VERSION));
    crate::storage::commit(db, batch)
}
