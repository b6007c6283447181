//! Store compaction: rewriting a sled store into a fresh directory when it has grown well
//! past what it holds, so a home's disk stays a bounded multiple of its data whatever the
//! pattern of use.
//!
//! Why it is needed: sled 0.34 frees a log segment only when every fragment in it is dead,
//! and relocates live fragments (its segment cleaner) only from its periodic flusher thread,
//! which a home's store does not run (the core flushes once per call). A long-lived process
//! rewrites its hot pages often enough that segments empty by themselves (an idle,
//! heartbeating node stays at ~1.4× its op bytes for 30 simulated days). One process per
//! command does not: each `huskies story add` without a daemon opens the store, writes a few
//! KiB (the op, its story record, a consolidated leaf page, the clock) and closes it, and the
//! segments those sessions leave behind are never cleaned: the store grew by ~3.7 KB per
//! command, 17× the op bytes, with no bound.
//!
//! The policy is checked when a store is opened (nothing else holds it then): if the store's
//! directory is larger than [`Policy::min_bytes`] and more than [`Policy::factor`] times its
//! size right after the last compaction (recorded in a file beside it, `store.compacted`),
//! its key/value pairs are copied into `store.compacting`, checked against the original (a
//! CRC over every pair), and the copy replaces the store. A store without a record gets one
//! (its current size) and is not compacted at that open: the first compaction waits until it
//! has doubled, so opening a large healthy store after an upgrade costs nothing.
//!
//! Crash safety: the copy is complete only once the marker `store.compact-done` exists
//! (created after the copy is flushed, checked and synced). [`recover`], called before every
//! open, finishes a swap whose marker exists and discards a copy whose marker does not; the
//! original store is removed only after the copy is in its place. Any failure while
//! compacting (a full disk, a read-only home) leaves the original untouched and in use.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// When a store is compacted at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Stores smaller than this are never compacted (a small store's sled overhead is a
    /// fixed cost, not growth).
    pub min_bytes: u64,
    /// Compact when the store is more than this many times its size after the last
    /// compaction.
    pub factor: u64,
}

impl Policy {
    /// The default: 8 MiB, 2×. With sled's own overhead after a compaction (about 1.2× the
    /// data), a store stays under ~2.5× what it holds between compactions, and the copy's
    /// cost (one read and one write of the store) is spread over the growth that triggered
    /// it.
    pub const DEFAULT: Policy = Policy {
        min_bytes: 8 << 20,
        factor: 2,
    };
}

/// What [`compact_if_grown`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The store was within the policy (or had no record yet: one was written).
    Kept {
        /// Its size on disk, in bytes.
        bytes: u64,
    },
    /// The store was rewritten.
    Compacted {
        /// Its size before, in bytes.
        before: u64,
        /// Its size after, in bytes.
        after: u64,
    },
    /// Compaction was due but failed; the original store is untouched and in use.
    Failed {
        /// Why, for a log or a status line.
        reason: String,
    },
}

fn sibling(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    store.with_file_name(name)
}

/// The copy being written.
fn copy_dir(store: &Path) -> PathBuf {
    sibling(store, ".compacting")
}

/// The original, between the two renames of a swap.
fn old_dir(store: &Path) -> PathBuf {
    sibling(store, ".precompact")
}

/// Exists once the copy is complete and durable.
fn done_marker(store: &Path) -> PathBuf {
    sibling(store, ".compact-done")
}

/// The store's size right after its last compaction (decimal bytes).
fn record_file(store: &Path) -> PathBuf {
    sibling(store, ".compacted")
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Finishes or discards a compaction a crash interrupted. Called before a store is opened.
pub(crate) fn recover(store: &Path) -> Result<(), Error> {
    let copy = copy_dir(store);
    let old = old_dir(store);
    let done = done_marker(store);
    if done.exists() {
        if copy.exists() {
            if store.exists() {
                if old.exists() {
                    // The original was already moved once: `store` cannot be it.
                    fs::remove_dir_all(store).map_err(io(format!(
                        "removing {} after an interrupted compaction",
                        store.display()
                    )))?;
                } else {
                    rename(store, &old)?;
                }
            }
            rename(&copy, store)?;
        }
        sync_parent(store)?;
        fs::remove_file(&done).map_err(io(format!("removing {}", done.display())))?;
    } else if copy.exists() {
        fs::remove_dir_all(&copy).map_err(io(format!("removing the unfinished copy {}", copy.display())))?;
    }
    if old.exists() {
        if store.exists() {
            fs::remove_dir_all(&old).map_err(io(format!("removing {}", old.display())))?;
        } else {
            rename(&old, store)?;
        }
    }
    Ok(())
}

/// Compacts the store at `store` (not open anywhere) if it has grown past `policy`; see the
/// module documentation. Never fails the caller: what went wrong is in
/// [`Outcome::Failed`], and the original store is then untouched.
pub(crate) fn compact_if_grown(
    store: &Path,
    policy: Policy,
    open: impl Fn(&Path) -> Result<sled::Db, Error>,
) -> Outcome {
    let bytes = match dir_size(store) {
        Ok(bytes) => bytes,
        Err(e) => {
            return Outcome::Failed {
                reason: e.to_string(),
            }
        }
    };
    let baseline = read_record(store);
    let due = match baseline {
        Some(base) => bytes > policy.min_bytes && bytes > base.saturating_mul(policy.factor),
        None => false,
    };
    if !due {
        if baseline.is_none() && store.exists() {
            if let Err(e) = write_record(store, bytes) {
                return Outcome::Failed {
                    reason: e.to_string(),
                };
            }
        }
        return Outcome::Kept { bytes };
    }
    match compact(store, &open) {
        Ok(after) => Outcome::Compacted { before: bytes, after },
        Err(e) => {
            let copy = copy_dir(store);
            let cleanup = if done_marker(store).exists() {
                // The copy was complete: finish the swap rather than lose the work.
                recover(store)
            } else if copy.exists() {
                fs::remove_dir_all(&copy).map_err(io(format!("removing {}", copy.display())))
            } else {
                Ok(())
            };
            let reason = match cleanup {
                Ok(()) => e.to_string(),
                Err(c) => format!("{e}; then: {c}"),
            };
            Outcome::Failed { reason }
        }
    }
}

/// Copies, checks, and swaps. Returns the new size.
fn compact(store: &Path, open: &impl Fn(&Path) -> Result<sled::Db, Error>) -> Result<u64, Error> {
    let copy = copy_dir(store);
    if copy.exists() {
        fs::remove_dir_all(&copy).map_err(io(format!("removing {}", copy.display())))?;
    }
    {
        let from = open(store)?;
        let to = open(&copy)?;
        copy_trees(&from, &to)?;
        to.flush()?;
        if from.checksum()? != to.checksum()? {
            return Err(Error::Corrupt(format!(
                "compacting {}: the copy differs from the original; the original is kept",
                store.display()
            )));
        }
    }
    sync_tree(&copy)?;
    sync_parent(store)?;
    let done = done_marker(store);
    let marker = fs::File::create(&done).map_err(io(format!("creating {}", done.display())))?;
    marker
        .sync_all()
        .map_err(io(format!("syncing {}", done.display())))?;
    sync_parent(store)?;
    recover(store)?;
    let after = dir_size(store).map_err(io(format!("measuring {}", store.display())))?;
    write_record(store, after).map_err(io(format!("writing {}", record_file(store).display())))?;
    Ok(after)
}

/// Copies every tree's pairs in batches of about 4 MiB.
fn copy_trees(from: &sled::Db, to: &sled::Db) -> Result<(), Error> {
    const BATCH_BYTES: usize = 4 << 20;
    for name in from.tree_names() {
        let src = from.open_tree(&name)?;
        let dst = to.open_tree(&name)?;
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        for kv in src.iter() {
            let (k, v) = kv?;
            pending += k.len() + v.len();
            batch.insert(k, v);
            if pending >= BATCH_BYTES {
                dst.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        dst.apply_batch(batch)?;
    }
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<(), Error> {
    fs::rename(from, to).map_err(io(format!("renaming {} to {}", from.display(), to.display())))
}

fn sync_parent(path: &Path) -> Result<(), Error> {
    let parent = path.parent().unwrap_or(Path::new("."));
    sync_path(parent)
}

fn sync_path(path: &Path) -> Result<(), Error> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", path.display())))
}

/// Syncs every file of a store directory (and its `blobs/`), then the directories.
fn sync_tree(dir: &Path) -> Result<(), Error> {
    for entry in fs::read_dir(dir).map_err(io(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io(format!("reading {}", dir.display())))?;
        let path = entry.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync_path(&path)?;
        }
    }
    sync_path(dir)
}

/// Bytes of the files of a store directory and its `blobs/`.
pub(crate) fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

fn read_record(store: &Path) -> Option<u64> {
    fs::read_to_string(record_file(store)).ok()?.trim().parse().ok()
}

fn write_record(store: &Path, bytes: u64) -> std::io::Result<()> {
    let path = record_file(store);
    let tmp = sibling(store, ".compacted.tmp");
    let mut f = fs::File::create(&tmp)?;
    writeln!(f, "{bytes}")?;
    f.sync_all()?;
    fs::rename(&tmp, &path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens a plain sled store, waiting (as `SledStore::open` does) while sled's threads
    /// of a just-dropped handle still hold its file lock: under load that takes a while.
    fn open(path: &Path) -> Result<sled::Db, Error> {
        let mut waited = 0;
        loop {
            match sled::Config::new().path(path).flush_every_ms(None).open() {
                Err(sled::Error::Io(io))
                    if (io.kind() == std::io::ErrorKind::WouldBlock
                        || io.to_string().starts_with("could not acquire lock"))
                        && waited < 1_000 =>
                {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return Ok(other?),
            }
        }
    }

    fn fill(db: &sled::Db, from: u32, to: u32) {
        for i in from..to {
            db.insert(format!("k{i:08}"), vec![(i % 251) as u8; 300]).unwrap();
            db.flush().unwrap();
        }
    }

    fn contents(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
        let db = open(path).unwrap();
        db.iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect()
    }

    const TINY: Policy = Policy {
        min_bytes: 0,
        factor: 2,
    };

    #[test]
    fn a_grown_store_is_rewritten_with_the_same_pairs_and_smaller() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        {
            let db = open(&store).unwrap();
            fill(&db, 0, 10);
        }
        assert!(
            matches!(compact_if_grown(&store, TINY, open), Outcome::Kept { .. }),
            "first open records"
        );
        // Many small sessions, each rewriting the same keys: garbage sled keeps.
        for round in 0..40 {
            let db = open(&store).unwrap();
            for i in 0..10 {
                db.insert(format!("k{i:08}"), vec![round as u8; 300]).unwrap();
                db.flush().unwrap();
            }
            db.insert(format!("new{round:04}"), b"x".to_vec()).unwrap();
            db.flush().unwrap();
        }
        let before = contents(&store);
        let size_before = dir_size(&store).unwrap();
        match compact_if_grown(&store, TINY, open) {
            Outcome::Compacted { before, after } => {
                assert_eq!(before, size_before);
                assert!(after < before, "{after} < {before}");
            }
            other => panic!("expected a compaction of a {size_before}-byte store, got {other:?}"),
        }
        assert_eq!(contents(&store), before);
        assert!(!copy_dir(&store).exists() && !old_dir(&store).exists() && !done_marker(&store).exists());
    }

    #[test]
    fn a_store_without_a_record_is_not_compacted_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fill(&open(&store).unwrap(), 0, 50);
        assert!(matches!(
            compact_if_grown(&store, TINY, open),
            Outcome::Kept { .. }
        ));
        assert!(read_record(&store).is_some());
    }

    /// Every state a crash can leave between the copy and the swap opens as one whole store:
    /// the original before the marker, the copy after it.
    #[test]
    fn an_interrupted_compaction_is_finished_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fill(&open(&store).unwrap(), 0, 20);
        let want = contents(&store);
        let make_copy = || {
            let from = open(&store).unwrap();
            let to = open(&copy_dir(&store)).unwrap();
            copy_trees(&from, &to).unwrap();
            to.flush().unwrap();
        };

        // A partial copy, no marker: discarded.
        make_copy();
        recover(&store).unwrap();
        assert!(!copy_dir(&store).exists());
        assert_eq!(contents(&store), want);

        // Marker written, nothing renamed yet.
        make_copy();
        fs::File::create(done_marker(&store)).unwrap();
        recover(&store).unwrap();
        assert_eq!(contents(&store), want);
        assert!(!old_dir(&store).exists() && !done_marker(&store).exists());

        // Marker, original moved aside, copy not yet in place.
        make_copy();
        fs::File::create(done_marker(&store)).unwrap();
        fs::rename(&store, old_dir(&store)).unwrap();
        recover(&store).unwrap();
        assert_eq!(contents(&store), want);
        assert!(!old_dir(&store).exists() && !copy_dir(&store).exists());

        // Swap done, marker and old original left behind.
        fs::create_dir(old_dir(&store)).unwrap();
        fs::File::create(done_marker(&store)).unwrap();
        recover(&store).unwrap();
        assert_eq!(contents(&store), want);
        assert!(!old_dir(&store).exists() && !done_marker(&store).exists());
    }

    #[test]
    fn a_failed_compaction_leaves_the_original_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        fill(&open(&store).unwrap(), 0, 20);
        write_record(&store, 1).unwrap();
        let want = contents(&store);
        let failing = |p: &Path| {
            if p == copy_dir(&store) {
                fs::create_dir_all(p).unwrap();
                Err(Error::io(
                    "opening the copy",
                    std::io::Error::from(std::io::ErrorKind::StorageFull),
                ))
            } else {
                open(p)
            }
        };
        match compact_if_grown(&store, TINY, failing) {
            Outcome::Failed { reason } => assert!(reason.contains("opening the copy"), "{reason}"),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!copy_dir(&store).exists());
        assert_eq!(contents(&store), want);
    }
}
