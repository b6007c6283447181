//! The home directory and the sled keyspace.
//!
//! Everything lives in one sled tree so that one `sled::Batch` covers ops, indexes and the
//! projection: a crash leaves all of them at the same batch. Keys start with a one-byte
//! namespace (see `docs/format.md`):
//!
//! | prefix | key rest | value |
//! |---|---|---|
//! | `M` | name | meta (format version, cluster, clock, own id, next author index, rebuild flag) |
//! | `A` | node id | author record (chain head, storage index, quarantine) |
//! | `U` | node id | membership record |
//! | `O` | author index u32 BE, first seq u64 BE | segment: a run of the author's signed ops |
//! | `F` | node id, seq u64 BE, op id | fork evidence: a second signed op for a seq |
//! | `S` | story id | story record |
//! | `K` | stage kind byte, story id | (empty) stories by stage |
//! | `N` | node id | presence record |
//! | `L` | | merge lock lease set |

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use crate::error::Error;
use crate::id::{NodeId, OpId, StoryId};
use crate::pipeline::StageKind;

/// The store format this build writes and reads.
pub const STORE_FORMAT_VERSION: u32 = 1;
/// Most ops in one stored segment; bounds the work to read one op back.
pub const SEGMENT_MAX_OPS: usize = 1024;
/// A segment smaller than this is extended in place by the next write of the same author,
/// so single-op appends do not leave one sled key per op.
pub const SEGMENT_MERGE_BYTES: usize = 16 * 1024;
const SEGMENT_VERSION: u8 = 1;
const SEGMENT_HEADER: usize = 1 + 4 + 32;
const SEGMENT_HASH_CONTEXT: &str = "huskies 2026-11 segment checksum v1";

pub(crate) const KEY_FILE: &str = "node.key";
pub(crate) const NEXT_KEY_FILE: &str = "node.key.next";
pub(crate) const STORE_DIR: &str = "store";
const LOCK_FILE: &str = "LOCK";

/// A node's home directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct Home {
    root: PathBuf,
    _lock: File,
}

impl Home {
    /// Creates the directory (if needed) and locks it. Refuses a home that has a key.
    pub(crate) fn create(root: &Path) -> Result<Home, Error> {
        fs::create_dir_all(root).map_err(|e| Error::io(format!("creating home {}", root.display()), e))?;
        let home = Home::lock(root)?;
        if home.key_path().exists() {
            return Err(Error::AlreadyExists(format!(
                "a huskies home already exists at {}",
                root.display()
            )));
        }
        Ok(home)
    }

    /// Locks an existing home.
    pub(crate) fn open(root: &Path) -> Result<Home, Error> {
        if !root.join(KEY_FILE).exists() {
            return Err(Error::HomeNotFound(root.to_path_buf()));
        }
        Home::lock(root)
    }

    fn lock(root: &Path) -> Result<Home, Error> {
        let path = root.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(format!("opening lock file {}", path.display()), e))?;
        match file.try_lock() {
            Ok(()) => Ok(Home {
                root: root.to_path_buf(),
                _lock: file,
            }),
            Err(fs::TryLockError::WouldBlock) => Err(Error::HomeLocked(root.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn key_path(&self) -> PathBuf {
        self.root.join(KEY_FILE)
    }

    pub(crate) fn next_key_path(&self) -> PathBuf {
        self.root.join(NEXT_KEY_FILE)
    }

    pub(crate) fn store_path(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }
}

/// Opens the sled database of a home.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, Error> {
    sled::Config::new()
        .path(path)
        .cache_capacity(128 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                Error::HomeLocked(path.to_path_buf())
            }
            other => Error::from(other),
        })
}

/// Key builders, one per namespace.
pub(crate) mod key {
    use super::*;

    pub const LOCK: &[u8] = b"L";

    pub fn meta(name: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + name.len());
        k.push(b'M');
        k.extend_from_slice(name.as_bytes());
        k
    }

    fn node(prefix: u8, n: &NodeId) -> [u8; 33] {
        let mut k = [0u8; 33];
        k[0] = prefix;
        k[1..].copy_from_slice(n.as_bytes());
        k
    }

    pub fn author(n: &NodeId) -> [u8; 33] {
        node(b'A', n)
    }

    pub fn member(n: &NodeId) -> [u8; 33] {
        node(b'U', n)
    }

    pub fn presence(n: &NodeId) -> [u8; 33] {
        node(b'N', n)
    }

    pub fn story(id: &StoryId) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + id.as_str().len());
        k.push(b'S');
        k.extend_from_slice(id.as_str().as_bytes());
        k
    }

    pub fn stage_index(kind: StageKind, id: &StoryId) -> Vec<u8> {
        let mut k = Vec::with_capacity(2 + id.as_str().len());
        k.push(b'K');
        k.push(kind.code());
        k.extend_from_slice(id.as_str().as_bytes());
        k
    }

    pub fn stage_index_prefix(kind: StageKind) -> [u8; 2] {
        [b'K', kind.code()]
    }

    pub fn segment(idx: u32, first_seq: u64) -> [u8; 13] {
        let mut k = [0u8; 13];
        k[0] = b'O';
        k[1..5].copy_from_slice(&idx.to_be_bytes());
        k[5..].copy_from_slice(&first_seq.to_be_bytes());
        k
    }

    pub fn segment_prefix(idx: u32) -> [u8; 5] {
        let mut k = [0u8; 5];
        k[0] = b'O';
        k[1..].copy_from_slice(&idx.to_be_bytes());
        k
    }

    pub fn segment_first_seq(key: &[u8]) -> u64 {
        u64::from_be_bytes(key[5..13].try_into().expect("segment key"))
    }

    pub fn fork(n: &NodeId, seq: u64, id: &OpId) -> Vec<u8> {
        let mut k = Vec::with_capacity(1 + 32 + 8 + 32);
        k.push(b'F');
        k.extend_from_slice(n.as_bytes());
        k.extend_from_slice(&seq.to_be_bytes());
        k.extend_from_slice(id.as_bytes());
        k
    }
}

/// Encodes a stored record (postcard).
pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("records always encode")
}

/// Decodes a stored record, reporting what failed.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Error> {
    postcard::from_bytes(bytes).map_err(|e| Error::Corrupt(format!("{what} does not decode: {e}")))
}

/// Reads and decodes one record.
pub(crate) fn get<T: DeserializeOwned>(db: &sled::Db, k: &[u8], what: &str) -> Result<Option<T>, Error> {
    db.get(k)?.map(|v| decode(&v, what)).transpose()
}

fn segment_checksum(body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SEGMENT_HASH_CONTEXT);
    h.update(body);
    *h.finalize().as_bytes()
}

/// A segment: `version u8 | count u32 LE | blake3 checksum of body (32) | body`, where the
/// body is the signed ops back to back (each self-delimiting).
pub(crate) fn encode_segment<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut count = 0u32;
    for op in ops {
        body.extend_from_slice(op);
        count += 1;
    }
    let mut out = Vec::with_capacity(SEGMENT_HEADER + body.len());
    out.push(SEGMENT_VERSION);
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&segment_checksum(&body));
    out.extend_from_slice(&body);
    out
}

/// Splits a stored segment into its ops' bytes after checking its checksum.
pub(crate) fn decode_segment(bytes: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let corrupt = |why: &str| Error::Corrupt(format!("op segment {why}"));
    if bytes.len() < SEGMENT_HEADER || bytes[0] != SEGMENT_VERSION {
        return Err(corrupt("has a bad header"));
    }
    let count = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    let body = &bytes[SEGMENT_HEADER..];
    if segment_checksum(body) != bytes[5..37] {
        return Err(corrupt("fails its checksum"));
    }
    let mut ops = Vec::with_capacity(count);
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt("is truncated"));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize + 4 + 64;
        if rest.len() < len {
            return Err(corrupt("is truncated"));
        }
        ops.push(&rest[..len]);
        rest = &rest[len..];
    }
    if ops.len() != count {
        return Err(corrupt("has the wrong op count"));
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_opener_gets_home_locked() {
        let dir = tempfile::tempdir().unwrap();
        let first = Home::create(dir.path()).unwrap();
        fs::write(first.key_path(), "x").unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::HomeLocked(_)), "{err:?}");
        drop(first);
        assert!(Home::open(dir.path()).is_ok());
    }

    #[test]
    fn segments_detect_corruption() {
        let a = [3u8, 0, 0, 0, 1, 2, 3]
            .iter()
            .chain([9u8; 64].iter())
            .copied()
            .collect::<Vec<u8>>();
        let seg = encode_segment([&a[..], &a[..]]);
        assert_eq!(decode_segment(&seg).unwrap().len(), 2);
        let mut bad = seg.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(decode_segment(&bad).is_err());
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
    }
}
