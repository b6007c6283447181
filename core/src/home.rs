//! The home directory: its files (key, next key, store, mark) and the lock that makes one
//! process its owner.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, LockHolder};

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

/// Reads the holder's note from the lock file (lines `pid=N`, `listen=ADDR`,
/// `advertise=URL`; see [`LockHolder`]). Best effort: a holder that cannot be described is
/// still refused.
fn read_holder(root: &Path, file: &mut File) -> LockHolder {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let mut holder = LockHolder {
        home: root.to_path_buf(),
        ..LockHolder::default()
    };
    for line in text.lines() {
        match line.split_once('=') {
            Some(("pid", v)) => holder.pid = v.trim().parse().ok(),
            Some(("listen", v)) => holder.listen = Some(v.trim().to_string()),
            Some(("advertise", v)) => holder.advertise = Some(v.trim().to_string()),
            _ => {}
        }
    }
    holder
}

/// A node's home directory, locked for the lifetime of this value.
#[derive(Debug)]
pub struct Home {
    root: PathBuf,
    /// `root` canonicalized, as registered in `HELD_HERE`.
    canonical: PathBuf,
    lock: File,
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
        let opened = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path);
        let mut file = match opened {
            Ok(file) => file,
            // A read-only home (a read-only mount, or no write permission): an existing lock
            // file can still be locked for reading, and the store decides what else works.
            Err(e) if path.exists() && read_only_error(&e) => fs::File::open(&path)
                .map_err(|e| Error::io(format!("opening lock file {}", path.display()), e))?,
            Err(e) => return Err(Error::io(format!("opening lock file {}", path.display()), e)),
        };
        let canonical =
            fs::canonicalize(root).map_err(|e| Error::io(format!("resolving home {}", root.display()), e))?;
        let mut held = held_here();
        if held.contains(&canonical) {
            return Err(Error::HomeOpenInThisProcess(root.to_path_buf()));
        }
        match file.try_lock() {
            Ok(()) => {
                held.insert(canonical.clone());
                let home = Home {
                    root: root.to_path_buf(),
                    canonical,
                    lock: file,
                };
                // Best effort: a home that cannot take the note (read-only, full) is still
                // held; refused openers are then told less.
                let _ = home.write_note(&format!("pid={}\n", std::process::id()));
                Ok(home)
            }
            Err(fs::TryLockError::WouldBlock) => {
                let holder = read_holder(root, &mut file);
                if holder.is_daemon() || root.join(DAEMON_SOCKET).exists() {
                    Err(Error::HomeLockedByDaemon(Box::new(holder)))
                } else {
                    Err(Error::HomeLocked(Box::new(holder)))
                }
            }
            Err(fs::TryLockError::Error(e)) => Err(Error::io(format!("locking {}", path.display()), e)),
        }
    }

    /// The home directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Replaces the lock file's note (what refused openers are told about the holder).
    fn write_note(&self, note: &str) -> std::io::Result<()> {
        let mut file = &self.lock;
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        file.write_all(note.as_bytes())
    }

    /// Records in the lock file that the holder is a daemon listening on `listen` and
    /// advertised as `advertise`, so that a second daemon or a command that cannot route is
    /// told where it is.
    pub(crate) fn note_daemon(&self, listen: &str, advertise: &str) -> Result<(), Error> {
        let note = format!(
            "pid={}\nlisten={listen}\nadvertise={advertise}\n",
            std::process::id()
        );
        self.write_note(&note)
            .map_err(|e| Error::io(format!("writing {}", self.root.join(LOCK_FILE).display()), e))
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

/// Errors that mean the file system refuses writes here (read-only mount, no permission).
fn read_only_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied
    )
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
        fs::write(dir.path().join(LOCK_FILE), "pid=4242\n").unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, Error::HomeLocked(h) if h.pid == Some(4242)),
            "{err:?}"
        );
        assert!(err.to_string().contains("pid 4242"), "{err}");
        assert!(err.to_string().contains("not a daemon"), "{err}");
        fs::write(dir.path().join(DAEMON_SOCKET), "").unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(matches!(err, Error::HomeLockedByDaemon(_)), "{err:?}");
        assert_eq!(err.kind(), crate::ErrorKind::HomeLocked);
        assert!(err.to_string().contains("daemon"), "{err}");
        // A daemon's note names where it listens.
        fs::remove_file(dir.path().join(DAEMON_SOCKET)).unwrap();
        fs::write(
            dir.path().join(LOCK_FILE),
            "pid=7\nlisten=127.0.0.1:3001\nadvertise=ws://127.0.0.1:3001/crdt-sync\n",
        )
        .unwrap();
        let err = Home::open(dir.path()).unwrap_err();
        assert!(
            matches!(&err, Error::HomeLockedByDaemon(h) if h.is_daemon()),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("pid 7, listening on 127.0.0.1:3001"),
            "{err}"
        );
        drop(other);
        let home = Home::open(dir.path()).unwrap();
        let note = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(note, format!("pid={}\n", std::process::id()));
        home.note_daemon("127.0.0.1:9", "ws://x/crdt-sync").unwrap();
        let note = fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert!(note.contains("listen=127.0.0.1:9\n"), "{note}");
    }
}
