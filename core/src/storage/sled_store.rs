//! The product's backend: one sled tree.

use std::path::Path;

use super::{Store, WriteBatch};
use crate::error::Error;

/// A sled database (one tree) as a [`Store`]. Cloning shares the database.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (creating if needed) the sled database at `path`, with the settings of a
    /// home's store: a 128 MiB cache, throughput mode, and no background flushing (the core
    /// flushes once per call).
    ///
    /// sled 0.34 releases its own file lock from a background thread after the last handle
    /// of a database is dropped, so a home reopened right after it was closed in the same
    /// process can find that lock still held for a moment (sled reports it as an `Other`
    /// I/O error). Callers hold the home's lock, so nobody else can be behind it: wait for
    /// it briefly; if it persists, the home is in use.
    pub fn open(path: &Path) -> Result<SledStore, Error> {
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
                Ok(db) => return Ok(SledStore { db }),
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
                Err(sled::Error::Corruption { at, .. }) => return Err(damaged(Some(path), at)),
                Err(other) => return Err(Error::from(other)),
            }
        }
    }

    /// Whether the database holds no key.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }
}

/// Key/value pairs of a sled scan.
pub struct SledIter(sled::Iter);

impl std::fmt::Debug for SledIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SledIter")
    }
}

/// A batch for a [`SledStore`]: a `sled::Batch`.
#[derive(Debug, Default)]
pub struct SledBatch(sled::Batch);

impl Iterator for SledIter {
    type Item = Result<(sled::IVec, sled::IVec), Error>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|kv| kv.map_err(Error::from))
    }
}

impl WriteBatch for SledBatch {
    #[inline]
    fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.0.insert(key, value);
    }

    #[inline]
    fn remove(&mut self, key: &[u8]) {
        self.0.remove(key);
    }
}

impl Store for SledStore {
    type Value = sled::IVec;
    type Batch = SledBatch;
    type Iter = SledIter;

    #[inline]
    fn get(&self, key: &[u8]) -> Result<Option<sled::IVec>, Error> {
        Ok(self.db.get(key)?)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> SledIter {
        SledIter(self.db.scan_prefix(prefix))
    }

    fn range(&self, from: &[u8], to: &[u8]) -> SledIter {
        SledIter(self.db.range(from..to))
    }

    fn last_in(&self, from: &[u8], through: &[u8]) -> Result<Option<(sled::IVec, sled::IVec)>, Error> {
        Ok(self.db.range(from..=through).next_back().transpose()?)
    }

    fn apply(&self, batch: SledBatch) -> Result<(), Error> {
        Ok(self.db.apply_batch(batch.0)?)
    }

    fn flush(&self) -> Result<(), Error> {
        self.db.flush()?;
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, Error> {
        Ok(self.db.size_on_disk()?)
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(source) => Error::Io {
                context: "store write failed".into(),
                source,
            },
            sled::Error::Corruption { at, .. } => damaged(None, at),
            other => Error::Io {
                context: "store failure".into(),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }
}

/// The error for a store sled finds damaged: which store (when known) and where, and what
/// to do about it, since nothing can be read or written until the store is replaced.
fn damaged(path: Option<&Path>, at: Option<sled::DiskPtr>) -> Error {
    let which = path.map_or_else(
        || "the store".to_string(),
        |p| format!("the store {}", p.display()),
    );
    let place = at.map_or_else(String::new, |at| format!(" (at {at:?})"));
    Error::Corrupt(format!(
        "{which} is damaged: sled found corruption in its files{place}; nothing was changed. \
         Run `huskies verify` if the home still opens; otherwise move the home aside and \
         restore it from a backup (`huskies init --restore FILE --key KEYFILE`, with a copy of \
         its node.key) or join the cluster again"
    ))
}
