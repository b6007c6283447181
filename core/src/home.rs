//! The home directory: its files (key, next key, store, mark) and the lock that makes one
//! process its owner.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::Error;

pub(crate) const KEY_FILE: &str = "node.key";
pub(crate) const NEXT_KEY_FILE: &str = "node.key.next";
pub(crate) const STORE_DIR: &str = "store";
pub(crate) const MARK_FILE: &str = "store.mark";
const LOCK_FILE: &str = "LOCK";

/// The name of a running daemon's control socket in its home (the daemon's `control.rs`
/// creates it); its presence tells a refused opener who probably holds the lock.
const DAEMON_SOCKET: &str = "daemon.sock";

/// Homes held by a `Home` of this process (canonical paths), so a second opener in the same
/// process is told so rather than blamed on another process.
static HELD_HERE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn held_here() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    HELD_HERE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A node's home directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct Home {
    root: PathBuf,
    /// `root` canonicalized, as registered in `HELD_HERE`.
    canonical: PathBuf,
    _lock: File,
}

impl Drop for Home {
    fn drop(&mut self) {
        held_here().remove(&self.canonical);
    }
}

impl Home {
    /// Creates the directory (if needed) and locks it. Refuses a home that has a key
    /// (`already_exists`, whether or not someone holds it).
    pub(crate) fn create(root: &Path) -> Result<Home, Error> {
        let exists = || Error::AlreadyExists(format!("a huskies home already exists at {}", root.display()));
        if root.join(KEY_FILE).exists() {
            return Err(exists());
        }
        fs::create_dir_all(root).map_err(|e| Error::io(format!("creating home {}", root.display()), e))?;
        let home = Home::lock(root)?;
        if home.key_path().exists() {
            return Err(exists());
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
        let canonical =
            fs::canonicalize(root).map_err(|e| Error::io(format!("resolving home {}", root.display()), e))?;
        let mut held = held_here();
        if held.contains(&canonical) {
            return Err(Error::HomeOpenInThisProcess(root.to_path_buf()));
        }
        match file.try_lock() {
            Ok(()) => {
                held.insert(canonical.clone());
                Ok(Home {
                    root: root.to_path_buf(),
                    canonical,
                    _lock: file,
                })
            }
            Err(fs::TryLockError::WouldBlock) if root.join(DAEMON_SOCKET).exists() => {
                Err(Error::HomeLockedByDaemon(root.to_path_buf()))
            }
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

/// Removes what creating a home at `root` made (after a failed restore, with its `Node`
/// dropped): the whole directory when it did not exist before (`existed` false), else only
/// the home's own files, so a directory the user made keeps what else it held.
pub(crate) fn remove_made(root: &Path, existed: bool) {
    if !existed {
        let _ = fs::remove_dir_all(root);
        return;
    }
    let _ = fs::remove_dir_all(root.join(STORE_DIR));
    for file in [KEY_FILE, NEXT_KEY_FILE, MARK_FILE, LOCK_FILE] {
        let _ = fs::remove_file(root.join(file));
    }
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
        assert!(matches!(err, Error::HomeOpenInThisProcess(_)), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::HomeLocked);
        // Through another spelling of the same directory too.
        let other_spelling = dir.path().join(".");
        let err = Home::open(&other_spelling).unwrap_err();
        assert!(matches!(err, Error::HomeOpenInThisProcess(_)), "{err:?}");
        // Creating it again is `already_exists`, held or not.
        assert!(matches!(Home::create(dir.path()), Err(Error::AlreadyExists(_))));
        drop(first);
        assert!(Home::open(dir.path()).is_ok());
        assert!(matches!(Home::create(dir.path()), Err(Error::AlreadyExists(_))));
    }

    #[test]
    fn a_lock_held_elsewhere_names_a_daemon_when_its_socket_exists() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), "x").unwrap();
        // Another holder of the lock file: a separate open file description, as another
        // process would have.
        let other = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.path().join(LOCK_FILE))
            .unwrap();
        other.try_lock().unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::HomeLocked(_)), "{err:?}");
        fs::write(dir.path().join(DAEMON_SOCKET), "").unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::HomeLockedByDaemon(_)), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::HomeLocked);
        assert!(err.to_string().contains("daemon"), "{err}");
        drop(other);
        assert!(Home::open(dir.path()).is_ok());
    }
}
