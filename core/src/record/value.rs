//! Story values: what is stored for a story under `S` and inside journal entries. Its
//! stage-index byte, then the packed record (`record.rs`); the byte lets folding move the
//! stage index without decoding. Also the readers of the older layouts, for migration.

use crate::codec;
use crate::error::Error;
use crate::pipeline::StageKind;
use crate::projection::StoryRecord;

/// The stage-index byte of a story that is not visible (never created, or deleted).
pub(crate) const NOT_INDEXED: u8 = 0xff;

/// A story's stored value (under `S`, and inside journal entries): its stage-index byte,
/// then the packed record ([`record`]). The byte lets folding move the index without
/// decoding.
pub(crate) fn encode_story(rec: &StoryRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + super::size_hint(rec));
    out.push(stage_byte(rec));
    super::encode_into(rec, &mut out);
    out
}

/// Decodes a stored story value. Its stage byte must be the one its record implies.
pub(crate) fn decode_story(bytes: &[u8]) -> Result<StoryRecord, Error> {
    story_kind(bytes)?;
    let rec = super::decode(&bytes[1..])?;
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
pub(crate) fn decode_story_v1(bytes: &[u8]) -> Result<StoryRecord, Error> {
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
pub(crate) fn story_kind(bytes: &[u8]) -> Result<Option<StageKind>, Error> {
    match bytes.first() {
        None => Err(Error::Corrupt("story record is empty".into())),
        Some(&NOT_INDEXED) => Ok(None),
        Some(&code) => StageKind::from_code(code)
            .map(Some)
            .ok_or_else(|| Error::Corrupt(format!("story record has stage code {code}"))),
    }
}
