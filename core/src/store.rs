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
//! | `S` | story id | stage-index byte, packed story record (`record.rs`) |
//! | `J` | entry u64 BE | journal entry: story records changed by one commit, not yet folded into `S`/`K` |
//! | `K` | stage kind byte, story id | (empty) stories by stage |
//! | `N` | node id | presence record |
//! | `L` | | merge lock lease set |

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::codec::decode;

use crate::error::Error;

/// Most ops in one stored segment; bounds the work to read one op back.
pub const SEGMENT_MAX_OPS: usize = 1024;
/// A segment smaller than this is extended in place by the next write of the same author,
/// so single-op appends do not leave one sled key per op.
pub const SEGMENT_MERGE_BYTES: usize = 16 * 1024;
/// Segment layouts (see [`encode_segment`]).
const SEGMENT_V1: u8 = 1;
const SEGMENT_V2: u8 = 2;
/// Layout byte, op count and checksum.
const SEGMENT_HEADER: usize = 1 + 4 + 32;
const SEGMENT_HASH_CONTEXT: &str = "huskies 2026-11 segment checksum v1";

pub(crate) const KEY_FILE: &str = "node.key";
pub(crate) const NEXT_KEY_FILE: &str = "node.key.next";
pub(crate) const STORE_DIR: &str = "store";
pub(crate) const MARK_FILE: &str = "store.mark";
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

    pub(crate) fn mark_path(&self) -> PathBuf {
        self.root.join(MARK_FILE)
    }

    pub(crate) fn store_path(&self) -> PathBuf {
        self.root.join(STORE_DIR)
    }
}

/// Opens the sled database of a home. The caller holds the home's lock.
///
/// sled 0.34 releases its own file lock from a background thread after the last handle of
/// a database is dropped, so a home reopened right after it was closed in the same process
/// can find that lock still held for a moment (sled reports it as an `Other` I/O error).
/// Nobody else can be behind it while we hold the home's lock, so wait for it briefly;
/// if it persists, the home is in use.
pub(crate) fn open_db(path: &Path) -> Result<sled::Db, Error> {
    const LOCK_RETRIES: u32 = 200;
    const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
    let mut retries = 0;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(128 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(io))
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().starts_with("could not acquire lock") =>
            {
                if retries == LOCK_RETRIES {
                    return Err(Error::HomeLocked(path.to_path_buf()));
                }
                retries += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(other) => return Err(Error::from(other)),
        }
    }
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

/// Where the bytes that every op of a segment shares start in a signed op: after the 4-byte
/// length prefix and the content's version byte come the cluster id and the author id.
const SHARED_AT: usize = 4 + 1;
/// How many bytes a v2 segment stores once instead of once per op (cluster and author ids).
const SHARED_LEN: usize = 32 + 32;
/// Framing of a signed op around its content: length prefix and signature.
const OP_FRAME: usize = 4 + 64;

/// A segment holds a run of one author's signed ops. Two layouts, both read:
///
/// - v1: `1 | count u32 LE | blake3 checksum of body (32) | body`, where the body is the
///   signed ops back to back (each self-delimiting).
/// - v2 (written whenever it applies): `2 | count u32 LE | checksum of shared || body (32) |
///   shared (64) | body`, where `shared` is the 64 bytes every op of the segment carries at
///   offset 5 of its signed bytes (the content's cluster and author ids), and each op in the
///   body has them cut out. This saves 64 of the ~240 bytes of a typical op; decoding puts
///   them back, so the ops read back are byte-for-byte the signed ops.
pub(crate) fn encode_segment<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let ops: Vec<&[u8]> = ops.into_iter().collect();
    let count = u32::try_from(ops.len()).expect("a segment holds at most SEGMENT_MAX_OPS ops");
    let shared = ops
        .first()
        .and_then(|first| first.get(SHARED_AT..SHARED_AT + SHARED_LEN));
    let v2 = shared.filter(|shared| {
        ops.iter().all(|op| {
            op.len() >= SHARED_AT + SHARED_LEN + 64 && &op[SHARED_AT..SHARED_AT + SHARED_LEN] == *shared
        })
    });
    let body_len: usize = ops.iter().map(|op| op.len()).sum();
    let mut out = Vec::with_capacity(SEGMENT_HEADER + SHARED_LEN + body_len);
    out.push(if v2.is_some() { SEGMENT_V2 } else { SEGMENT_V1 });
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 32]);
    if let Some(shared) = v2 {
        out.extend_from_slice(shared);
        for op in &ops {
            out.extend_from_slice(&op[..SHARED_AT]);
            out.extend_from_slice(&op[SHARED_AT + SHARED_LEN..]);
        }
    } else {
        for op in &ops {
            out.extend_from_slice(op);
        }
    }
    let sum = segment_checksum(&out[SEGMENT_HEADER..]);
    out[5..SEGMENT_HEADER].copy_from_slice(&sum);
    out
}

/// Splits a stored segment into its ops' signed bytes after checking its checksum.
pub(crate) fn decode_segment(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let corrupt = |why: &str| Error::Corrupt(format!("op segment {why}"));
    if bytes.len() < SEGMENT_HEADER || !matches!(bytes[0], SEGMENT_V1 | SEGMENT_V2) {
        return Err(corrupt("has a bad header"));
    }
    let v2 = bytes[0] == SEGMENT_V2;
    let count = u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
    if segment_checksum(&bytes[SEGMENT_HEADER..]) != bytes[5..SEGMENT_HEADER] {
        return Err(corrupt("fails its checksum"));
    }
    let (shared, body) = if v2 {
        if bytes.len() < SEGMENT_HEADER + SHARED_LEN {
            return Err(corrupt("is truncated"));
        }
        bytes[SEGMENT_HEADER..].split_at(SHARED_LEN)
    } else {
        (&[][..], &bytes[SEGMENT_HEADER..])
    };
    // Every op costs at least its framing, so a corrupt count cannot make us over-allocate.
    let mut ops = Vec::with_capacity(count.min(body.len() / OP_FRAME + 1));
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt("is truncated"));
        }
        let content = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let stored = if v2 {
            if content < SHARED_AT - 4 + SHARED_LEN {
                return Err(corrupt("holds an op too short for its layout"));
            }
            content - SHARED_LEN + OP_FRAME
        } else {
            content + OP_FRAME
        };
        if rest.len() < stored {
            return Err(corrupt("is truncated"));
        }
        let mut op = Vec::with_capacity(content + OP_FRAME);
        if v2 {
            op.extend_from_slice(&rest[..SHARED_AT]);
            op.extend_from_slice(shared);
            op.extend_from_slice(&rest[SHARED_AT..stored]);
        } else {
            op.extend_from_slice(&rest[..stored]);
        }
        ops.push(op);
        rest = &rest[stored..];
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
        assert_eq!(seg[0], SEGMENT_V1, "ops too short to share ids are stored whole");
        assert_eq!(decode_segment(&seg).unwrap().len(), 2);
        let mut bad = seg.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(decode_segment(&bad).is_err());
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
    }

    /// A fake signed op: length prefix, content (version, 64 shared bytes, `tail`), signature.
    fn fake_op(shared: u8, tail: &[u8], sig: u8) -> Vec<u8> {
        let content_len = 1 + SHARED_LEN + tail.len();
        let mut op = (content_len as u32).to_le_bytes().to_vec();
        op.push(1);
        op.extend_from_slice(&[shared; SHARED_LEN]);
        op.extend_from_slice(tail);
        op.extend_from_slice(&[sig; 64]);
        op
    }

    #[test]
    fn v2_segments_store_shared_ids_once_and_read_back_exact_bytes() {
        let ops = [
            fake_op(7, b"first op", 1),
            fake_op(7, b"", 2),
            fake_op(7, b"third", 3),
        ];
        let seg = encode_segment(ops.iter().map(|o| &o[..]));
        assert_eq!(seg[0], SEGMENT_V2);
        let total: usize = ops.iter().map(|o| o.len()).sum();
        assert_eq!(seg.len(), SEGMENT_HEADER + SHARED_LEN + total - 3 * SHARED_LEN);
        assert_eq!(decode_segment(&seg).unwrap(), ops.to_vec());
        for i in SEGMENT_HEADER..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            assert!(decode_segment(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
    }

    #[test]
    fn ops_that_differ_in_the_shared_bytes_get_a_v1_segment() {
        let ops = [fake_op(7, b"a", 1), fake_op(8, b"b", 2)];
        let seg = encode_segment(ops.iter().map(|o| &o[..]));
        assert_eq!(seg[0], SEGMENT_V1);
        assert_eq!(decode_segment(&seg).unwrap(), ops.to_vec());
    }
}
