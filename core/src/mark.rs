//! The high-water mark: how far this node's own chain and Lamport clock had got when a
//! commit was last acknowledged, kept in a small file beside the store (`store.mark`).
//!
//! sled recovers a damaged log by keeping the consistent prefix before the damage, and it
//! does so silently. A `store/` directory replaced by an older copy looks the same. Either
//! way the node
//! would hold fewer of its own ops than it has already acknowledged and, perhaps, sent to
//! peers; writing on from there would reuse sequence numbers, fork its own chain and get it
//! quarantined by every replica. The mark lets `Node::open` see the loss: the node then
//! refuses to write until it holds its chain up to the mark again (a peer sends the missing
//! ops back during sync), and its clock resumes above every timestamp it has issued. A
//! whole home restored from a backup brings its old mark along; peers catch that case at
//! the sync handshake (`SessionEvent::BehindOwnChain`) and send the ops back.
//!
//! The file is written after each commit's flush, in place, with no sync of its own: like
//! the store, it survives a crash of the process. It holds two slots written in turn, each
//! with a checksum, so a torn write leaves the other slot readable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::id::NodeId;

const MAGIC: &[u8; 4] = b"HSKM";
const VERSION: u8 = 1;
const SLOT: usize = 80;
const BODY: usize = SLOT - CHECKSUM;
const CHECKSUM: usize = 16;
const CHECKSUM_CONTEXT: &str = "huskies 2026-11 store mark v1";

/// What the mark says: `node`'s own chain reached `seq`, and the clock `lamport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MarkValue {
    pub node: NodeId,
    pub seq: u64,
    pub lamport: u64,
}

/// The open mark file.
#[derive(Debug)]
pub(crate) struct Mark {
    file: File,
    path: PathBuf,
    generation: u64,
    value: MarkValue,
}

impl Mark {
    /// Opens the mark at `path`. A missing file is created holding `current` (a new home, or
    /// one written before marks existed); `Ok((mark, None))` then. Otherwise returns the
    /// value read. A file in which no slot is intact is `Corrupt`.
    pub fn open(path: &Path, current: MarkValue) -> Result<(Mark, Option<MarkValue>), Error> {
        let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
        let mut file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| io("creating the store mark", e))?;
                let mut mark = Mark {
                    file,
                    path: path.to_path_buf(),
                    generation: 0,
                    value: current,
                };
                mark.write(current)?;
                return Ok((mark, None));
            }
            Err(e) => return Err(io("opening the store mark", e)),
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io("reading the store mark", e))?;
        let best = bytes
            .chunks(SLOT)
            .filter_map(decode_slot)
            .max_by_key(|(generation, _)| *generation)
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "the store mark {} is damaged (no intact slot in {} bytes). It records how \
                     far this node's own chain had got, so that a store that lost acknowledged \
                     ops is noticed; if the store itself is sound, removing the file makes the \
                     next open write a new one from the store",
                    path.display(),
                    bytes.len()
                ))
            })?;
        let (generation, value) = best;
        Ok((
            Mark {
                file,
                path: path.to_path_buf(),
                generation,
                value,
            },
            Some(value),
        ))
    }

    /// The value last written.
    pub fn value(&self) -> MarkValue {
        self.value
    }

    /// Writes `value` into the next slot.
    pub fn write(&mut self, value: MarkValue) -> Result<(), Error> {
        let generation = self.generation + 1;
        let slot = encode_slot(generation, &value);
        let offset = (generation % 2) * SLOT as u64;
        let written = self
            .file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(&slot));
        written.map_err(|e| {
            Error::io(
                format!(
                    "the batch is stored, but its high-water mark could not be written to {}",
                    self.path.display()
                ),
                e,
            )
        })?;
        self.generation = generation;
        self.value = value;
        Ok(())
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM] {
    let full = blake3::derive_key(CHECKSUM_CONTEXT, body);
    full[..CHECKSUM].try_into().expect("16 bytes")
}

fn encode_slot(generation: u64, v: &MarkValue) -> [u8; SLOT] {
    let mut s = [0u8; SLOT];
    s[..4].copy_from_slice(MAGIC);
    s[4] = VERSION;
    s[8..16].copy_from_slice(&generation.to_le_bytes());
    s[16..48].copy_from_slice(v.node.as_bytes());
    s[48..56].copy_from_slice(&v.seq.to_le_bytes());
    s[56..64].copy_from_slice(&v.lamport.to_le_bytes());
    let sum = checksum(&s[..BODY]);
    s[BODY..].copy_from_slice(&sum);
    s
}

fn decode_slot(s: &[u8]) -> Option<(u64, MarkValue)> {
    if s.len() != SLOT || &s[..4] != MAGIC || s[4] != VERSION || s[BODY..] != checksum(&s[..BODY]) {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"));
    Some((
        u64_at(8),
        MarkValue {
            node: NodeId::from_bytes(s[16..48].try_into().expect("32 bytes")),
            seq: u64_at(48),
            lamport: u64_at(56),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(seq: u64) -> MarkValue {
        MarkValue {
            node: NodeId::from_bytes([9; 32]),
            seq,
            lamport: seq * 10,
        }
    }

    #[test]
    fn a_missing_mark_is_created_and_the_last_write_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.mark");
        let (mut mark, read) = Mark::open(&path, value(0)).unwrap();
        assert_eq!(read, None);
        for seq in 1..=5 {
            mark.write(value(seq)).unwrap();
        }
        drop(mark);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * SLOT as u64);
        let (mark, read) = Mark::open(&path, value(0)).unwrap();
        assert_eq!(read, Some(value(5)));
        assert_eq!(mark.value(), value(5));
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_other_and_two_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.mark");
        let (mut mark, _) = Mark::open(&path, value(0)).unwrap();
        mark.write(value(7)).unwrap();
        mark.write(value(8)).unwrap();
        drop(mark);
        // Generation 3 (value 8) sits in slot 1; damage it as a torn write would.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[SLOT + 50] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (mut mark, read) = Mark::open(&path, value(0)).unwrap();
        assert_eq!(read, Some(value(7)));
        // Writing on overwrites the damaged slot, never the intact one.
        mark.write(value(9)).unwrap();
        drop(mark);
        assert_eq!(Mark::open(&path, value(0)).unwrap().1, Some(value(9)));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[3] ^= 1;
        bytes[SLOT + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Mark::open(&path, value(0)).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        for len in [0, 1, SLOT - 1] {
            std::fs::write(&path, &bytes[..len]).unwrap();
            assert!(Mark::open(&path, value(0)).is_err(), "{len} bytes");
        }
    }
}
