//! The product's backend: one sled tree.

use std::path::Path;

use super::compact::{self, Outcome as CompactionOutcome, Policy as CompactionPolicy};
use super::{Store, WriteBatch};
use crate::error::Error;

/// The page cache of a home's store unless [`crate::NodeConfig::store_cache_bytes`] says
/// otherwise: 32 MiB. At 128 MiB (the value before) the cache was the largest part of an
/// import's peak memory that a setting moves: 128 → 32 MiB took an 800k-op import from 320
/// to 249 MB (docs/benchmarks.md, "Peak memory of import, export and bench").
pub const DEFAULT_STORE_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A sled database (one tree) as a [`Store`]. Cloning shares the database.
#[derive(Clone, Debug)]
pub struct SledStore {
    db: sled::Db,
    compaction: CompactionOutcome,
}

impl SledStore {
    /// Opens (creating if needed) the sled database at `path`, with the settings of a
    /// home's store: a [`DEFAULT_STORE_CACHE_BYTES`] cache, throughput mode, and no background flushing (the core
    /// flushes once per call).
    ///
    /// sled 0.34 releases its own file lock from a background thread after the last handle
    /// of a database is dropped, so a home reopened right after it was closed in the same
    /// process can find that lock still held for a moment (sled reports it as an `Other`
    /// I/O error). Callers hold the home's lock, so nobody else can be behind it: wait for
    /// it briefly; if it persists, the home is in use.
    ///
    /// sled 0.34 also counts an unfinished snapshot (`snap.*.generating`, left when writing
    /// one failed, e.g. on a full disk) as the newest snapshot and then refuses the whole
    /// store as corrupt; such a file is by construction incomplete (a finished snapshot is
    /// renamed), so it is removed before opening. A store that cannot be opened because the
    /// file system is read-only or full says so (sled writes when it opens, even to read).
    ///
    /// Before opening, a compaction a crash interrupted is finished or discarded, and a
    /// store that has grown well past its size after its last compaction is rewritten
    /// (`storage/compact.rs`: sled reclaims little of what one short process per command
    /// leaves behind). A compaction that fails leaves the store as it was, and the open goes
    /// on: see [`SledStore::compaction`].
    pub fn open(path: &Path) -> Result<SledStore, Error> {
        SledStore::open_configured(path, DEFAULT_STORE_CACHE_BYTES, CompactionPolicy::DEFAULT)
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes` (what
    /// [`crate::NodeConfig::store_cache_bytes`] sets for a home).
    pub fn open_with_cache(path: &Path, cache_bytes: u64) -> Result<SledStore, Error> {
        SledStore::open_configured(path, cache_bytes, CompactionPolicy::DEFAULT)
    }

    /// [`SledStore::open`] with a page cache of `cache_bytes` and a compaction policy of the
    /// caller's (what [`crate::NodeConfig`] sets for a home).
    pub fn open_configured(
        path: &Path,
        cache_bytes: u64,
        policy: CompactionPolicy,
    ) -> Result<SledStore, Error> {
        remove_unfinished_snapshots(path);
        compact::recover(path)?;
        let open = |p: &Path| open_db(p, cache_bytes);
        let compaction = compact::compact_if_grown(path, policy, open);
        let db = open_db(path, cache_bytes)?;
        Ok(SledStore { db, compaction })
    }

    /// What the open did about the store's size: kept it, compacted it, or failed to
    /// compact it (the store is then the original, untouched); see [`CompactionPolicy`].
    pub fn compaction(&self) -> &CompactionOutcome {
        &self.compaction
    }

    /// Whether the database holds no key.
    pub fn is_empty(&self) -> bool {
        self.db.is_empty()
    }
}

/// Opens the sled database at `path` with a home's settings, waiting briefly for a lock a
/// handle of this process dropped a moment ago (see [`SledStore::open`]).
fn open_db(path: &Path, cache_bytes: u64) -> Result<sled::Db, Error> {
    const LOCK_RETRIES: u32 = 200;
    const LOCK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
    let mut retries = 0;
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
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
                    return Err(Error::HomeLocked(Box::new(crate::error::LockHolder {
                        home: path.to_path_buf(),
                        ..Default::default()
                    })));
                }
                retries += 1;
                std::thread::sleep(LOCK_RETRY_PAUSE);
            }
            Err(sled::Error::Corruption { at, .. }) => return Err(damaged(Some(path), at)),
            Err(sled::Error::Io(io)) if unwritable(&io) => {
                return Err(Error::Io {
                    context: unwritable_context(path, &io),
                    source: io,
                })
            }
            Err(other) => return Err(Error::from(other)),
        }
    }
}

/// Removes `snap.*.generating` files from a sled directory: snapshots whose writing never
/// finished (see [`SledStore::open`]). Best effort: what cannot be removed is left for
/// sled to judge.
fn remove_unfinished_snapshots(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether opening failed because the file system takes no writes here.
fn unwritable(io: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        io.kind(),
        K::ReadOnlyFilesystem | K::StorageFull | K::PermissionDenied
    )
}

/// What to say when the store cannot be opened for want of writes.
fn unwritable_context(path: &Path, io: &std::io::Error) -> String {
    let home = path.parent().unwrap_or(path);
    if io.kind() == std::io::ErrorKind::StorageFull {
        format!(
            "opening the store {}: the disk is full, and the store writes when it opens, even \
             for a command that only reads; the store is intact: free some space and retry",
            path.display()
        )
    } else {
        format!(
            "opening the store {}: the home is read-only (a read-only mount, or not writable by \
             this user), and the store must open its files for writing even for a command that \
             only reads; to read it, copy the home to a writable place (`cp -a {} COPY`) and \
             use `--home COPY`",
            path.display(),
            home.display()
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;

    /// sled 0.34 took a snapshot left unfinished (a failed write on a full disk) for the
    /// newest one and refused the whole store as corrupt ("store is corrupt at None").
    #[test]
    fn an_unfinished_snapshot_does_not_make_the_store_unreadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let store = SledStore::open(&path).unwrap();
            let mut batch = SledBatch::default();
            batch.insert(b"k", b"v");
            store.apply(batch).unwrap();
            store.flush().unwrap();
        }
        std::fs::write(path.join("snap.FFFFFFFFFFFFFFFF.generating"), b"").unwrap();
        let store = SledStore::open(&path).expect("opens despite the unfinished snapshot");
        assert_eq!(store.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!path.join("snap.FFFFFFFFFFFFFFFF.generating").exists());
    }
}
