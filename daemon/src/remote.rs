//! The typed client of a running daemon's control socket: [`RemoteNode`] sends
//! [`ApiRequest`]s to the daemon that owns a home and gets [`ApiReply`]s back, so a host
//! (Python, Swift, ...) never opens a store behind its daemon's back.
//!
//! Wire format, one JSON object per line: the client sends `{"api": <request>}`; the daemon
//! answers `{"ok": <reply>}` or `{"err": <error>}`, and after a `subscribe` request, one
//! `{"event": <event>}` per committed transition until the client hangs up. The CLI's argv
//! requests share the socket: a line without `"api"` is one of those.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{ApiError, ApiErrorKind, ApiReply, ApiRequest, EventData};
use crate::control::socket_path;

/// What a client sends.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ApiEnvelope {
    pub api: ApiRequest,
}

/// What the daemon sends back, one per line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApiLine {
    Ok(Box<ApiReply>),
    Err(ApiError),
    Event(EventData),
}

/// How long a request may wait for its answer unless told otherwise: a daemon that does not
/// answer within this is stuck, and the caller is told so rather than left hanging.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A node reached through the daemon that owns its home.
#[derive(Clone, Debug)]
pub struct RemoteNode {
    home: PathBuf,
    timeout: Duration,
}

impl RemoteNode {
    /// The node of the daemon owning `home`, if one answers on its control socket now.
    /// `None` when no daemon runs there (no socket, or a stale one nobody listens on).
    /// Each request waits at most `timeout` for its answer.
    pub fn connect(home: &Path, timeout: Duration) -> Option<RemoteNode> {
        let path = socket_path(home);
        if !path.exists() {
            return None;
        }
        UnixStream::connect(&path).ok()?;
        Some(RemoteNode {
            home: home.to_path_buf(),
            timeout,
        })
    }

    /// The home it routes to.
    pub fn home(&self) -> &Path {
        &self.home
    }

    fn gone(&self, e: impl std::fmt::Display) -> ApiError {
        ApiError::new(
            ApiErrorKind::Network,
            format!("the daemon owning {} is not reachable: {e}", self.home.display()),
        )
    }

    /// Opens a connection and sends `request`; returns the reader positioned after the
    /// first answer line, and that line.
    fn send(&self, request: &ApiRequest) -> Result<(BufReader<UnixStream>, ApiLine), ApiError> {
        let mut stream = UnixStream::connect(socket_path(&self.home)).map_err(|e| self.gone(e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| self.gone(e))?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(|e| self.gone(e))?;
        let mut line = serde_json::to_vec(&ApiEnvelope { api: request.clone() })
            .map_err(|e| ApiError::new(ApiErrorKind::InvalidArgument, e.to_string()))?;
        line.push(b'\n');
        stream.write_all(&line).map_err(|e| self.gone(e))?;
        let mut reader = BufReader::new(stream);
        let mut first = String::new();
        match reader.read_line(&mut first) {
            Ok(0) => return Err(self.gone("it closed the connection without answering")),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ApiError::new(
                    ApiErrorKind::Network,
                    format!(
                        "the daemon owning {} did not answer within {} s",
                        self.home.display(),
                        self.timeout.as_secs()
                    ),
                ))
            }
            Err(e) => return Err(self.gone(e)),
        }
        let answer: ApiLine = serde_json::from_str(&first)
            .map_err(|e| self.gone(format!("it answered something that is not a typed reply ({e})")))?;
        Ok((reader, answer))
    }

    /// Runs one request on the daemon's node.
    pub fn call(&self, request: &ApiRequest) -> Result<ApiReply, ApiError> {
        match self.send(request)?.1 {
            ApiLine::Ok(reply) => Ok(*reply),
            ApiLine::Err(e) => Err(e),
            ApiLine::Event(_) => Err(self.gone("it sent an event to a plain request")),
        }
    }

    /// Streams the daemon's committed transitions to `on_event`, on a thread of its own,
    /// until the returned handle is cancelled or dropped, or the daemon stops.
    pub fn subscribe(
        &self,
        mut on_event: impl FnMut(EventData) + Send + 'static,
    ) -> Result<RemoteSubscription, ApiError> {
        let (mut reader, first) = self.send(&ApiRequest::Subscribe)?;
        match first {
            ApiLine::Ok(reply) if *reply == ApiReply::Subscribed => {}
            ApiLine::Err(e) => return Err(e),
            _ => return Err(self.gone("it did not accept the subscription")),
        }
        // Events come when they come: no read timeout from here on.
        let stream = reader.get_ref().try_clone().map_err(|e| self.gone(e))?;
        stream.set_read_timeout(None).map_err(|e| self.gone(e))?;
        let thread = std::thread::Builder::new()
            .name("huskies-remote-events".into())
            .spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if let Ok(ApiLine::Event(e)) = serde_json::from_str(&line) {
                        on_event(e);
                    }
                }
            })
            .map_err(|e| self.gone(e))?;
        Ok(RemoteSubscription {
            stream,
            _thread: thread,
        })
    }
}

/// A live event stream from a daemon; cancelling (or dropping) it hangs up.
#[derive(Debug)]
pub struct RemoteSubscription {
    stream: UnixStream,
    _thread: std::thread::JoinHandle<()>,
}

impl RemoteSubscription {
    /// Stops delivery: no event is delivered after the reader notices the hang-up.
    pub fn cancel(self) {}
}

impl Drop for RemoteSubscription {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}
