//! Finding the home: `--home`, else `$HUSKIES_HOME` (clap reads it into `--home`), else the
//! nearest `.huskies/` walking up from the working directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use huskies_core::{Error, Node, NodeConfig};

/// The home to use, or `home_not_found` naming where we looked.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| Error::Io {
        context: "reading the working directory".into(),
        source: e,
    })?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(".huskies");
        if candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(Error::HomeNotFound(cwd.join(".huskies")))
}

/// Opens the home, waiting up to `wait` while another process holds it: each command holds
/// its home only for the moment it runs, so commands started together take turns rather
/// than fail. When the wait runs out the error names the holder (pid, whether it is a
/// daemon and where that listens: `huskies_core::LockHolder`). A home held by a daemon
/// that said where it listens is not waited for (`daemon` fails at once; other commands
/// route through the daemon before they get here).
pub fn open_waiting(root: &Path, wait: Duration) -> Result<Node, Error> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(2);
    loop {
        match Node::open(root, NodeConfig::default()) {
            Err(Error::HomeLocked(_)) if Instant::now() < deadline => {}
            // A daemon starting (its socket exists, it has not said where it listens yet)
            // or stopping: it may be gone, or listening, in a moment.
            Err(Error::HomeLockedByDaemon(h)) if !h.is_daemon() && Instant::now() < deadline => {}
            other => return other,
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}
