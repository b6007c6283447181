//! The home directory: its files (key, next key, store, mark) and the lock that makes one
//! process its owner.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::error::Error;

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
}
