//! Finding the home: `--home`, else `$HUSKIES_HOME` (clap reads it into `--home`), else the
//! nearest `.huskies/` walking up from the working directory.

use std::path::{Path, PathBuf};

use huskies_core::Error;

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
