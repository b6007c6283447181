//! `<home>/config.toml`: daemon settings, layered under command-line flags.
//!
//! ```toml
//! [daemon]
//! listen = "127.0.0.1:3001"
//! peers = ["ws://10.0.0.5:3001/crdt-sync"]
//! max_mesh_peers = 3
//! label = "build-1"
//! advertise = "ws://10.0.0.6:3001/crdt-sync"
//! heartbeat_secs = 10
//! retention_secs = 14400
//! block_after_merge_failures = 3
//!
//! [events]                      # the NATS JetStream bridge (docs/events.md); off without a URL
//! nats_url = "nats://127.0.0.1:4222"   # $NATS_URL wins over this
//! stream = "HUSKIES_EVENTS"            # default HUSKIES_<first 16 hex of the cluster id>
//! max_in_flight = 256
//! ```

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::render::CliError;

const FILE: &str = "config.toml";

/// The whole file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[daemon]`
    #[serde(default)]
    pub daemon: DaemonSection,
    /// `[events]`
    #[serde(default, skip_serializing_if = "EventsSection::is_empty")]
    pub events: EventsSection,
}

/// `[events]`: the NATS JetStream bridge; every key optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    pub nats_url: Option<String>,
    pub stream: Option<String>,
    pub max_in_flight: Option<usize>,
}

impl EventsSection {
    fn is_empty(&self) -> bool {
        self.nats_url.is_none() && self.stream.is_none() && self.max_in_flight.is_none()
    }

    /// The bridge's settings: `NATS_URL` (when set and not empty) wins over `nats_url`.
    pub fn bridge(&self, env_url: Option<String>) -> huskies_daemon::EventsConfig {
        let defaults = huskies_daemon::EventsConfig::default();
        huskies_daemon::EventsConfig {
            nats_url: env_url.filter(|u| !u.trim().is_empty()).or(self.nats_url.clone()),
            stream: self.stream.clone(),
            max_in_flight: self.max_in_flight.unwrap_or(defaults.max_in_flight).max(1),
            ..defaults
        }
    }
}

/// `[daemon]`: every key optional.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSection {
    pub listen: Option<SocketAddr>,
    pub peers: Option<Vec<String>>,
    pub max_mesh_peers: Option<usize>,
    pub label: Option<String>,
    pub advertise: Option<String>,
    pub heartbeat_secs: Option<u64>,
    pub retention_secs: Option<u64>,
    pub block_after_merge_failures: Option<u32>,
}

/// Reads the home's config (absent file: defaults).
pub fn load(home: &Path) -> Result<FileConfig, CliError> {
    let path = home.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(CliError {
            kind: "io",
            message: format!("reading {}: {e}", path.display()),
            code: crate::render::EXIT_ENV,
        }),
    }
}

/// Writes the home's config.
pub fn save(home: &Path, config: &FileConfig) -> Result<(), CliError> {
    let path = home.join(FILE);
    let text = format!(
        "# huskies node settings; command-line flags override them.\n{}",
        toml::to_string_pretty(config).expect("config serialises")
    );
    std::fs::write(&path, text).map_err(|e| CliError {
        kind: "io",
        message: format!("writing {}: {e}", path.display()),
        code: crate::render::EXIT_ENV,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_section_parses_and_nats_url_wins() {
        let file: FileConfig =
            toml::from_str("[events]\nnats_url = \"nats://file:4222\"\nstream = \"S\"\nmax_in_flight = 0\n")
                .unwrap();
        let from_file = file.events.bridge(None);
        assert_eq!(from_file.nats_url.as_deref(), Some("nats://file:4222"));
        assert_eq!(from_file.stream.as_deref(), Some("S"));
        assert_eq!(from_file.max_in_flight, 1, "at least one publish in flight");
        let env = file.events.bridge(Some("nats://env:4222".into()));
        assert_eq!(env.nats_url.as_deref(), Some("nats://env:4222"));
        assert_eq!(
            file.events.bridge(Some("  ".into())).nats_url.as_deref(),
            Some("nats://file:4222"),
            "an empty NATS_URL does not count"
        );
        let off = FileConfig::default().events.bridge(None);
        assert!(off.nats_url.is_none(), "nothing configured: off");
        assert!(
            toml::from_str::<FileConfig>("[events]\nurl = \"x\"\n").is_err(),
            "unknown keys are refused"
        );
    }
}
