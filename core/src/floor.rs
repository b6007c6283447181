//! The storage floor of a local append, for `huskies bench`.
//!
//! [`StorageFloor`] does the least that any durable append path over this op format and
//! sled must do, and nothing else: build each op's content, encode it, hash it, sign it,
//! and store the signed bytes, in one sled batch per group with one flush. It checks no
//! command against a projection, keeps no projection, indexes nothing and writes no story
//! record. A [`crate::Node`] appending the same payloads in the same groups can only be
//! slower; the bench reports both beside raw signing, so the share of the time that the
//! projection costs is visible, and so is the share that no projection work can win back.
//!
//! It writes to its own sled database, with the settings of a home's store, through the op
//! log's own writer (`oplog.rs`): the same op construction and the same segments.
//! It is not a home and cannot be opened as one. Built only with the `bench` feature.

use std::path::Path;

use rand_core::CryptoRngCore;

use crate::codec;
use crate::error::Error;
use crate::id::{ClusterId, OpId};
use crate::key::NodeKey;
use crate::keyspace as key;
use crate::oplog::{self, SegmentTail};
use crate::payload::Payload;
use crate::storage::{self, SledStore, Store, WriteBatch};
use crate::time::Timestamp;

/// Signs and durably stores ops, with nothing of the node around it (see the module docs).
pub struct StorageFloor {
    db: SledStore,
    key: NodeKey,
    cluster: ClusterId,
    seq: u64,
    prev: Option<OpId>,
    tail: SegmentTail,
}

impl std::fmt::Debug for StorageFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageFloor")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl StorageFloor {
    /// Creates an empty floor store in `dir`, with a fresh key.
    pub fn create(dir: &Path, rng: &mut impl CryptoRngCore) -> Result<Self, Error> {
        let db = SledStore::open(dir)?;
        if !db.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a store; the floor needs an empty directory",
                dir.display()
            )));
        }
        let key = NodeKey::generate(rng);
        let mut cluster = [0u8; 32];
        rng.fill_bytes(&mut cluster);
        Ok(StorageFloor {
            db,
            key,
            cluster: ClusterId::from_bytes(cluster),
            seq: 0,
            prev: None,
            tail: None,
        })
    }

    /// Ops stored so far.
    pub fn len(&self) -> u64 {
        self.seq
    }

    /// Whether no op is stored yet.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }

    /// Signs one op per payload (consecutive seqs, each chained to the one before, Lamport
    /// time = seq, wall time `now`) and stores them as segments together with the author's
    /// head, in one sled batch and one flush. An invalid payload is an error and stores
    /// nothing.
    pub fn append(&mut self, now: Timestamp, payloads: Vec<Payload>) -> Result<(), Error> {
        let (mut seq, mut prev) = (self.seq, self.prev);
        let mut ops = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let op = oplog::sign_next(&self.key, self.cluster, seq, prev, seq + 1, now, payload)?;
            (seq, prev) = (op.content().seq, Some(op.id()));
            ops.push(op);
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut tail = self.tail;
        let mut batch = crate::storage::SledBatch::default();
        oplog::write_ops(&self.db, &mut batch, 0, &mut tail, &ops)?;
        let head = (seq, prev.expect("at least one op"));
        batch.insert(&key::author(&self.key.node_id()), &codec::encode(&head));
        storage::commit(&self.db, batch)?;
        (self.seq, self.prev, self.tail) = (seq, prev, tail);
        Ok(())
    }

    /// Bytes the store holds on disk, as sled counts them.
    pub fn size_on_disk(&self) -> Result<u64, Error> {
        self.db.size_on_disk()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::StoryId;
    use crate::oplog::SEGMENT_MAX_OPS;

    fn payloads(n: usize) -> Vec<Payload> {
        (0..n)
            .map(|i| Payload::Release {
                story: StoryId::new(format!("story-{i}")).unwrap(),
            })
            .collect()
    }

    #[test]
    fn stores_chained_ops_that_read_back_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let mut floor = StorageFloor::create(dir.path(), &mut rand_core::OsRng).unwrap();
        let now = Timestamp::from_millis(1_763_700_000_000);
        floor.append(now, payloads(3)).unwrap();
        floor.append(now, payloads(SEGMENT_MAX_OPS + 5)).unwrap();
        assert_eq!(floor.len(), 3 + SEGMENT_MAX_OPS as u64 + 5);
        let mut ops = Vec::new();
        oplog::for_each_op(&floor.db, 0, 1, |op| {
            ops.push(
                crate::op::UnverifiedOp::decode(op.bytes())
                    .unwrap()
                    .verify()
                    .unwrap(),
            );
            Ok(true)
        })
        .unwrap();
        assert_eq!(ops.len() as u64, floor.len(), "every op is stored");
        for (i, op) in ops.iter().enumerate() {
            assert_eq!(op.content().seq, i as u64 + 1);
            let prev = i.checked_sub(1).map(|p| ops[p].id());
            assert_eq!(op.content().prev, prev, "op {} chains to the one before", i + 1);
        }
        assert_eq!(floor.prev, Some(ops.last().unwrap().id()));
    }

    #[test]
    fn an_invalid_payload_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut floor = StorageFloor::create(dir.path(), &mut rand_core::OsRng).unwrap();
        let now = Timestamp::from_millis(1_763_700_000_000);
        floor.append(now, payloads(2)).unwrap();
        let bad = Payload::StoryUpdate {
            story: StoryId::new("s").unwrap(),
            field: crate::payload::StoryField::Name("x".repeat(crate::payload::MAX_TEXT_BYTES + 1)),
        };
        let mut group = payloads(2);
        group.push(bad);
        assert!(matches!(floor.append(now, group), Err(Error::InvalidArgument(_))));
        assert_eq!(floor.len(), 2);
        assert_eq!(floor.db.scan_prefix(&key::open_segment_prefix(0)).count(), 1);
        assert_eq!(floor.db.scan_prefix(&key::segment_prefix(0)).count(), 0);
    }

    #[test]
    fn refuses_a_directory_that_holds_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut floor = StorageFloor::create(dir.path(), &mut rand_core::OsRng).unwrap();
        floor
            .append(Timestamp::from_millis(1_763_700_000_000), payloads(1))
            .unwrap();
        drop(floor);
        let err = StorageFloor::create(dir.path(), &mut rand_core::OsRng).unwrap_err();
        assert!(err.to_string().contains("already holds a store"), "{err}");
    }
}
