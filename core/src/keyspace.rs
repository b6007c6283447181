//! The store's keyspace: every key the core writes is built, and every key it reads back
//! is parsed, by a function of this module. Nothing else slices keys.
//!
//! Everything lives in one ordered keyspace so that one atomic batch covers ops, indexes
//! and the projection: a crash leaves all of them at the same batch. Keys start with a
//! one-byte namespace (also in `docs/format.md`; integers are big-endian so that byte order
//! is numeric order):
//!
//! | prefix | key rest | value |
//! |---|---|---|
//! | `M` | name | meta (format version, cluster, clock, own id, next author index, rebuild flag) |
//! | `A` | node id | author record (chain head, storage index, quarantine) |
//! | `U` | node id | membership record |
//! | `O` | author index u32 BE, first seq u64 BE | segment: a run of the author's signed ops |
//! | `P` | author index u32 BE, first seq u64 BE | open-run segment: the author's newest ops, written by small batches, not yet sealed into `O` |
//! | `F` | node id, seq u64 BE, op id | fork evidence: a second signed op for a seq |
//! | `R` | node id, seq u64 BE, op id | held setter: a removal or rotation kept for the rebuild to weigh (contested on arrival, or left void by a rebuild) |
//! | `S` | story id | stage-index byte, packed story record (`record.rs`) |
//! | `J` | entry u64 BE | journal entry: story records changed by one commit, not yet folded into `S`/`K` |
//! | `K` | stage kind byte, story id | (empty) stories by stage |
//! | `N` | node id | presence record |
//! | `L` | | merge lock lease set |
//! | `T` | BLAKE3 of the ticket secret (32) | join ticket record (expiry) |

use crate::error::Error;
use crate::id::{NodeId, OpId, StoryId};
use crate::pipeline::StageKind;

/// The store format this build writes and reads (see `docs/format.md`).
pub const STORE_FORMAT_VERSION: u32 = 5;

/// Meta keys (`M` ‖ name).
pub(crate) const META_FORMAT: &[u8] = b"Mformat";
pub(crate) const META_CLUSTER: &[u8] = b"Mcluster";
pub(crate) const META_CLOCK: &[u8] = b"Mclock";
pub(crate) const META_SELF: &[u8] = b"Mself";
pub(crate) const META_NEXT_IDX: &[u8] = b"Mnext_idx";
pub(crate) const META_REBUILD: &[u8] = b"Mrebuild";

/// Namespace prefixes, for scans.
pub(crate) const AUTHORS: &[u8] = b"A";
pub(crate) const MEMBERS: &[u8] = b"U";
pub(crate) const SEGMENTS: &[u8] = b"O";
pub(crate) const OPEN_SEGMENTS: &[u8] = b"P";
pub(crate) const STORIES: &[u8] = b"S";
pub(crate) const JOURNAL: &[u8] = b"J";
pub(crate) const STAGE_INDEX: &[u8] = b"K";
pub(crate) const PRESENCE: &[u8] = b"N";
/// The merge lock's one key.
pub(crate) const LOCK: &[u8] = b"L";

/// The namespaces a rebuild recomputes from the stored ops (every derived record; the ops
/// themselves are rewritten too, since segments of voided ops go).
pub(crate) const REBUILT: [&[u8]; 8] = [
    SEGMENTS,
    OPEN_SEGMENTS,
    STORIES,
    STAGE_INDEX,
    PRESENCE,
    LOCK,
    MEMBERS,
    AUTHORS,
];

fn corrupt(what: &str) -> Error {
    Error::Corrupt(format!("bad {what} key"))
}

fn node(prefix: u8, n: &NodeId) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = prefix;
    k[1..].copy_from_slice(n.as_bytes());
    k
}

fn node_from(k: &[u8], prefix: u8, what: &str) -> Result<NodeId, Error> {
    match k.split_first() {
        Some((p, rest)) if *p == prefix => rest.try_into().map(NodeId::from_bytes).map_err(|_| corrupt(what)),
        _ => Err(corrupt(what)),
    }
}

/// `A` ‖ node.
pub(crate) fn author(n: &NodeId) -> [u8; 33] {
    node(b'A', n)
}

/// The node of an author key.
pub(crate) fn author_from_key(k: &[u8]) -> Result<NodeId, Error> {
    node_from(k, b'A', "author")
}

/// `U` ‖ node.
pub(crate) fn member(n: &NodeId) -> [u8; 33] {
    node(b'U', n)
}

/// The node of a member key.
pub(crate) fn member_from_key(k: &[u8]) -> Result<NodeId, Error> {
    node_from(k, b'U', "member")
}

/// `N` ‖ node.
pub(crate) fn presence(n: &NodeId) -> [u8; 33] {
    node(b'N', n)
}

/// The node of a presence key.
pub(crate) fn presence_from_key(k: &[u8]) -> Result<NodeId, Error> {
    node_from(k, b'N', "presence")
}

/// `S` ‖ story id.
pub(crate) fn story(id: &StoryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.as_str().len());
    k.push(b'S');
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn story_id(bytes: &[u8], what: &str) -> Result<StoryId, Error> {
    let s = std::str::from_utf8(bytes).map_err(|_| corrupt(what))?;
    StoryId::new(s).map_err(|_| Error::Corrupt(format!("bad {what} key {s:?}")))
}

/// The story of a story key.
pub(crate) fn story_from_key(k: &[u8]) -> Result<StoryId, Error> {
    match k.split_first() {
        Some((b'S', rest)) => story_id(rest, "story"),
        _ => Err(corrupt("story")),
    }
}

/// `K` ‖ stage kind ‖ story id.
pub(crate) fn stage_index(kind: StageKind, id: &StoryId) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + id.as_str().len());
    k.push(b'K');
    k.push(kind.code());
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

/// `K` ‖ stage kind: every story in one stage.
pub(crate) fn stage_index_prefix(kind: StageKind) -> [u8; 2] {
    [b'K', kind.code()]
}

/// The stage and story of a stage-index key.
pub(crate) fn stage_index_from_key(k: &[u8]) -> Result<(StageKind, StoryId), Error> {
    match k {
        [b'K', code, rest @ ..] => {
            let kind = StageKind::from_code(*code).ok_or_else(|| corrupt("stage index"))?;
            Ok((kind, story_id(rest, "stage index")?))
        }
        _ => Err(corrupt("stage index")),
    }
}

/// `O` ‖ author index ‖ first seq.
pub(crate) fn segment(idx: u32, first_seq: u64) -> [u8; 13] {
    segment_in(b'O', idx, first_seq)
}

/// `P` ‖ author index ‖ first seq: a segment of the author's open run.
pub(crate) fn open_segment(idx: u32, first_seq: u64) -> [u8; 13] {
    segment_in(b'P', idx, first_seq)
}

fn segment_in(prefix: u8, idx: u32, first_seq: u64) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = prefix;
    k[1..5].copy_from_slice(&idx.to_be_bytes());
    k[5..].copy_from_slice(&first_seq.to_be_bytes());
    k
}

/// `O` ‖ author index: every sealed segment of one author.
pub(crate) fn segment_prefix(idx: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = b'O';
    k[1..].copy_from_slice(&idx.to_be_bytes());
    k
}

/// `P` ‖ author index: every open-run segment of one author.
pub(crate) fn open_segment_prefix(idx: u32) -> [u8; 5] {
    let mut k = segment_prefix(idx);
    k[0] = b'P';
    k
}

/// The first seq of a segment key (`O` or `P`).
pub(crate) fn segment_first_seq(k: &[u8]) -> Result<u64, Error> {
    match k {
        [b'O' | b'P', _, _, _, _, seq @ ..] => seq
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("segment")),
        _ => Err(corrupt("segment")),
    }
}

/// `J` ‖ entry.
pub(crate) fn journal(entry: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'J';
    k[1..].copy_from_slice(&entry.to_be_bytes());
    k
}

/// The entry number of a journal key.
pub(crate) fn journal_seq(k: &[u8]) -> Result<u64, Error> {
    match k.split_first() {
        Some((b'J', rest)) => rest
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("journal")),
        _ => Err(corrupt("journal")),
    }
}

/// `F` ‖ node ‖ seq ‖ op id.
pub(crate) fn fork(n: &NodeId, seq: u64, id: &OpId) -> [u8; 73] {
    let mut k = [0u8; 73];
    k[..33].copy_from_slice(&fork_prefix(n));
    k[33..41].copy_from_slice(&seq.to_be_bytes());
    k[41..].copy_from_slice(id.as_bytes());
    k
}

/// `F` ‖ node: every piece of evidence against one author.
pub(crate) fn fork_prefix(n: &NodeId) -> [u8; 33] {
    node(b'F', n)
}

/// The op id of a fork-evidence key.
pub(crate) fn fork_op_id(k: &[u8]) -> Result<OpId, Error> {
    match k {
        [b'F', rest @ ..] if rest.len() == 32 + 8 + 32 => rest[40..]
            .try_into()
            .map(OpId::from_bytes)
            .map_err(|_| corrupt("fork")),
        _ => Err(corrupt("fork")),
    }
}

/// `R` ‖ node ‖ seq ‖ op id: a held setter (`docs/format.md`, "Removals, rotations and
/// cutoffs").
pub(crate) fn contested(n: &NodeId, seq: u64, id: &OpId) -> [u8; 73] {
    let mut k = fork(n, seq, id);
    k[0] = b'R';
    k
}

/// `R`: every held setter.
pub(crate) const CONTESTED: &[u8] = b"R";

/// `T` ‖ BLAKE3(secret): the issuer keeps only a hash of a ticket's secret.
pub(crate) fn ticket(secret: &[u8; 32]) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = b'T';
    k[1..].copy_from_slice(blake3::hash(secret).as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_and_foreign_keys_are_corrupt() {
        let n = NodeId::from_bytes([7; 32]);
        let id = StoryId::new("42_fix").unwrap();
        let op = OpId::from_bytes([9; 32]);
        assert_eq!(author_from_key(&author(&n)).unwrap(), n);
        assert_eq!(member_from_key(&member(&n)).unwrap(), n);
        assert_eq!(presence_from_key(&presence(&n)).unwrap(), n);
        assert_eq!(story_from_key(&story(&id)).unwrap(), id);
        assert_eq!(
            stage_index_from_key(&stage_index(StageKind::Qa, &id)).unwrap(),
            (StageKind::Qa, id.clone())
        );
        assert_eq!(segment_first_seq(&segment(3, 77)).unwrap(), 77);
        assert!(segment(3, 77).starts_with(&segment_prefix(3)));
        assert_eq!(journal_seq(&journal(5)).unwrap(), 5);
        assert_eq!(fork_op_id(&fork(&n, 4, &op)).unwrap(), op);
        assert!(fork(&n, 4, &op).starts_with(&fork_prefix(&n)));
        assert_eq!(ticket(&[1; 32])[0], b'T');
        // A key of one namespace does not parse as another's, nor a truncated one.
        assert!(member_from_key(&author(&n)).is_err());
        assert!(author_from_key(&author(&n)[..32]).is_err());
        assert!(story_from_key(&journal(1)).is_err());
        assert!(segment_first_seq(&segment(3, 77)[..12]).is_err());
        assert!(journal_seq(&journal(1)[..8]).is_err());
        assert!(fork_op_id(&fork(&n, 4, &op)[..72]).is_err());
        assert!(stage_index_from_key(&[b'K', 0xee, b'a']).is_err());
        // The old builder's meta keys are these bytes.
        assert_eq!(META_FORMAT, b"Mformat");
        assert_eq!(META_NEXT_IDX, b"Mnext_idx");
    }
}
