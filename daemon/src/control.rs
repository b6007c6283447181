//! The control socket: local clients (the CLI) run their commands inside the daemon, so
//! every command behaves the same whether or not a daemon owns the home.
//!
//! Protocol, one JSON object per line: the client sends a [`ControlRequest`]; the daemon
//! answers a [`ControlResponse`]; when `follow` is set, more `{"stdout": "..."}` lines
//! follow as new ops commit, until the client hangs up.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use huskies_core::{Node, VersionVector};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::metrics::HealthReport;
use crate::shared::Shared;
use crate::DaemonError;

/// Longest request line accepted: a command line plus a story body.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The control socket of a home.
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("daemon.sock")
}

/// A command to run in the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The command line, without the program name.
    pub argv: Vec<String>,
    /// Standard input, for commands that read it.
    pub stdin: Option<String>,
}

/// Its result.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ControlResponse {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Keep the connection open and stream [`ControlHandler::follow`] output.
    #[serde(default)]
    pub follow: bool,
    /// `stdout` is hex-encoded binary (e.g. an export).
    #[serde(default)]
    pub binary: bool,
}

/// Runs client commands on the daemon's node (the CLI implements it).
pub trait ControlHandler: Send + Sync + 'static {
    /// Runs one command.
    fn handle(&self, node: &mut Node, request: &ControlRequest, health: &HealthReport) -> ControlResponse;

    /// For a following request: output for ops committed since `since`, and the new `since`.
    fn follow(
        &self,
        node: &mut Node,
        request: &ControlRequest,
        since: &VersionVector,
    ) -> (String, VersionVector);
}

pub(crate) fn bind(home: &Path) -> Result<UnixListener, DaemonError> {
    let path = socket_path(home);
    // We own the home (its lock is held by our node), so a socket file here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|source| DaemonError::Bind {
        what: path.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
            DaemonError::Bind {
                what: path.display().to_string(),
                source,
            }
        })?;
    }
    Ok(listener)
}

pub(crate) async fn serve(shared: Arc<Shared>, listener: UnixListener, handler: Arc<dyn ControlHandler>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(client(shared.clone(), stream, handler.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn client(shared: Arc<Shared>, stream: UnixStream, handler: Arc<dyn ControlHandler>) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_REQUEST_BYTES as u64));
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let request: ControlRequest = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let resp = ControlResponse {
                code: 2,
                stderr: format!("malformed control request: {e}\n"),
                ..Default::default()
            };
            let _ = write
                .write_all(format!("{}\n", serde_json::to_string(&resp).expect("json")).as_bytes())
                .await;
            return;
        }
    };
    let health = crate::metrics::health(&shared);
    let mut changed = shared.changed.subscribe();
    let (response, mut since) =
        shared.with_node(|n| (handler.handle(n, &request, &health), n.version_vector()));
    let follow = response.follow;
    if write
        .write_all(format!("{}\n", serde_json::to_string(&response).expect("json")).as_bytes())
        .await
        .is_err()
        || !follow
    {
        return;
    }
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let (out, next) = shared.with_node(|n| handler.follow(n, &request, &since));
        since = next;
        if !out.is_empty() {
            let line = serde_json::json!({ "stdout": out });
            if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Sends a request to the daemon that owns `home`, if one is running. `None` when there is
/// no daemon (no socket, or a stale one). `on_follow` receives streamed output.
pub fn request(
    home: &Path,
    req: &ControlRequest,
    mut on_follow: impl FnMut(&str) -> bool,
) -> Option<std::io::Result<ControlResponse>> {
    let path = socket_path(home);
    if !path.exists() {
        return None;
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return None,
    };
    let mut run = || -> std::io::Result<ControlResponse> {
        let line = serde_json::to_string(req).map_err(std::io::Error::other)?;
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\n")?;
        // A daemon that does not answer within a minute is stuck: say so rather than hang.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        if first.is_empty() {
            return Err(std::io::Error::other("the daemon closed the control connection"));
        }
        let resp: ControlResponse = serde_json::from_str(&first).map_err(std::io::Error::other)?;
        if resp.follow {
            // A follower waits for new ops as long as they take.
            stream.set_read_timeout(None)?;
            on_follow(&resp.stdout);
            for line in reader.lines() {
                let v: serde_json::Value = serde_json::from_str(&line?).map_err(std::io::Error::other)?;
                if !on_follow(v["stdout"].as_str().unwrap_or_default()) {
                    break;
                }
            }
        }
        Ok(resp)
    };
    Some(run())
}
