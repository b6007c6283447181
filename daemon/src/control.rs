//! The control socket: local clients (the CLI) run their commands inside the daemon, so
//! every command behaves the same whether or not a daemon owns the home.
//!
//! Protocol, one JSON object per line: the client sends a [`ControlRequest`]; the daemon
//! answers a [`ControlResponse`]; when `follow` is set, more `{"stdout": "..."}` lines
//! follow as new ops commit, until the client hangs up.
//!
//! A line with an `"api"` key is a typed request instead (see [`crate::remote`]): it runs
//! through [`crate::api::serve`] on the daemon's node, the same function a host that owns
//! the home calls directly.
//!
//! The socket is served by a thread of its own with a single-threaded runtime: a request is
//! read, run on the node and answered on that one thread, with no hand-off between threads
//! (control requests wait for the node's one lock in any case). What the command caused
//! for others — the node's events, the wake-up of sync connections — is published once the
//! reply is written, after the op is durable (`Shared::with_node_deferred`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use huskies_core::{Node, VersionVector};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{ApiContext, ApiError, ApiErrorKind, ApiReply, ApiRequest, EventData};
use crate::metrics::HealthReport;
use crate::remote::{ApiEnvelope, ApiLine};
use crate::shared::Shared;
use crate::DaemonError;

/// Longest command-line request accepted: a command line plus a story body.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Longest typed request accepted: an `ingest` carries a hex-encoded bundle, so up to 32 MiB
/// of ops per request (a host splits larger transfers).
const MAX_TYPED_REQUEST_BYTES: usize = 64 * 1024 * 1024;

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

/// The daemon's health for a command that shows it (`status`, `ticket create`): computed
/// only when asked, so that the other commands do not pay for it.
pub struct Health<'a> {
    shared: &'a Shared,
}

impl Health<'_> {
    /// The health report now; `node` is the daemon's node, which the command holds.
    pub fn report(&self, node: &Node) -> HealthReport {
        crate::metrics::health_of(self.shared, node)
    }
}

/// Runs client commands on the daemon's node (the CLI implements it).
pub trait ControlHandler: Send + Sync + 'static {
    /// Runs one command. `health` gives the daemon's health report on demand.
    fn handle(&self, node: &mut Node, request: &ControlRequest, health: &Health<'_>) -> ControlResponse;

    /// For a following request: output for ops committed since `since`, and the new `since`.
    fn follow(
        &self,
        node: &mut Node,
        request: &ControlRequest,
        since: &VersionVector,
    ) -> (String, VersionVector);
}

/// The control handler of a daemon whose host has no command line (a Python or Swift
/// program running a daemon in-process): typed requests are served as always, and a CLI
/// command line is refused with a clear message rather than misread.
pub struct TypedOnly;

impl ControlHandler for TypedOnly {
    fn handle(&self, _node: &mut Node, _request: &ControlRequest, _health: &Health<'_>) -> ControlResponse {
        ControlResponse {
            code: 3,
            stderr: "this home is owned by a daemon running inside a program (not the huskies CLI); \
                     it serves typed requests only, so stop that program to use the CLI here\n"
                .into(),
            ..Default::default()
        }
    }

    fn follow(
        &self,
        _node: &mut Node,
        _request: &ControlRequest,
        since: &VersionVector,
    ) -> (String, VersionVector) {
        (String::new(), since.clone())
    }
}

pub(crate) fn bind(home: &Path) -> Result<std::os::unix::net::UnixListener, DaemonError> {
    let path = socket_path(home);
    let failed = |source| DaemonError::Bind {
        what: path.display().to_string(),
        source,
    };
    // We own the home (its lock is held by our node), so a socket file here is stale.
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).map_err(failed)?;
    // The control thread's runtime drives it.
    listener.set_nonblocking(true).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    Ok(listener)
}

/// Starts the control thread: a single-threaded runtime serving `listener` until the
/// daemon shuts down or `runtime_gone` fires (its sender lives in a task of the daemon's
/// runtime, so dropping that runtime ends this thread too, as it ends the other tasks).
/// Every request runs on this thread, so a request's way from the socket to the node and
/// back crosses no other thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    listener: std::os::unix::net::UnixListener,
    handler: Arc<dyn ControlHandler>,
    runtime_gone: tokio::sync::oneshot::Receiver<()>,
) -> Result<std::thread::JoinHandle<()>, DaemonError> {
    let failed = |source| DaemonError::Bind {
        what: "the control socket's thread".into(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(failed)?;
    std::thread::Builder::new()
        .name("huskies-control".into())
        .spawn(move || {
            runtime.block_on(async move {
                match UnixListener::from_std(listener) {
                    Ok(listener) => serve(shared, listener, handler, runtime_gone).await,
                    Err(e) => tracing::error!(error = %e, "the control socket cannot be served"),
                }
            });
            // Dropping the runtime ends the connections still open (followers).
        })
        .map_err(failed)
}

async fn serve(
    shared: Arc<Shared>,
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    mut runtime_gone: tokio::sync::oneshot::Receiver<()>,
) {
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
            _ = &mut runtime_gone => return,
        }
    }
}

async fn client(shared: Arc<Shared>, stream: UnixStream, handler: Arc<dyn ControlHandler>) {
    let (read, mut write) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read.take(MAX_TYPED_REQUEST_BYTES as u64));
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    // A request counts only once its newline has arrived: a client cut off mid-line may
    // rely on nothing having run. (A line cut by the size limit is answered below, as
    // malformed.)
    if !line.ends_with('\n') && line.len() < MAX_TYPED_REQUEST_BYTES {
        return;
    }
    if line.trim_start().starts_with("{\"api\"") {
        api_client(shared, &line, reader, write).await;
        return;
    }
    if line.len() > MAX_REQUEST_BYTES {
        line.clear();
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
    let mut changed = shared.changed.subscribe();
    let health = Health { shared: &shared };
    let ((response, mut since), notice) =
        shared.with_node_deferred(|n| (handler.handle(n, &request, &health), n.version_vector()));
    let follow = response.follow;
    let mut reply = serde_json::to_vec(&response).expect("json");
    reply.push(b'\n');
    let written = write.write_all(&reply).await.is_ok();
    // The op (if any) was durable before the reply; now the others hear of it.
    drop(notice);
    if !written || !follow {
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

async fn write_line<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, line: &ApiLine) -> bool {
    let mut bytes = serde_json::to_vec(line).expect("replies serialise");
    bytes.push(b'\n');
    write.write_all(&bytes).await.is_ok()
}

/// Serves one typed request: a plain call, or a subscription that streams events until the
/// client hangs up or the daemon stops.
async fn api_client<R, W>(shared: Arc<Shared>, line: &str, mut reader: R, mut write: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let request = match serde_json::from_str::<ApiEnvelope>(line) {
        Ok(envelope) => envelope.api,
        Err(e) => {
            let err = ApiError::new(
                ApiErrorKind::InvalidArgument,
                format!("malformed typed request: {e}"),
            );
            write_line(&mut write, &ApiLine::Err(err)).await;
            return;
        }
    };
    if request != ApiRequest::Subscribe {
        let ctx = ApiContext {
            advertise: Some(shared.advertise.clone()),
        };
        let (result, notice) =
            shared.with_node_deferred(|n| crate::api::serve(n, Shared::now(), &request, &ctx));
        let answer = match result {
            Ok(reply) => ApiLine::Ok(Box::new(reply)),
            Err(e) => ApiLine::Err(e),
        };
        write_line(&mut write, &answer).await;
        // As for a command line: the reply first, then the events and the connections.
        drop(notice);
        return;
    }
    let mut events = shared.events.subscribe();
    if !write_line(&mut write, &ApiLine::Ok(Box::new(ApiReply::Subscribed))).await {
        return;
    }
    let mut shutdown = shared.shutdown.subscribe();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    if let Some(data) = EventData::from_event(&event) {
                        if !write_line(&mut write, &ApiLine::Event(data)).await {
                            return;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "a typed subscriber fell behind; events were dropped");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            // The client sends nothing more: a read that ends means it hung up.
            read = reader.read(&mut scratch) => if !matches!(read, Ok(n) if n > 0) { return },
            // (The guard `wait_for` yields is dropped inside: it must not live across the
            // other branches' awaits.)
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

/// Why a control request got no response.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ControlError {
    /// The whole request had reached the daemon before the connection failed: the daemon
    /// may have run it (or may still), so its outcome is unknown. False when the request
    /// could not be sent whole: the daemon runs only complete lines, so nothing ran.
    pub sent: bool,
    /// What failed.
    pub source: std::io::Error,
}

/// Sends a request to the daemon that owns `home`, if one is running. `None` when there is
/// no daemon (no socket, or a stale one). `on_follow` receives streamed output.
pub fn request(
    home: &Path,
    req: &ControlRequest,
    mut on_follow: impl FnMut(&str) -> bool,
) -> Option<Result<ControlResponse, ControlError>> {
    let path = socket_path(home);
    if !path.exists() {
        return None;
    }
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return None,
    };
    let not_sent = |source| ControlError { sent: false, source };
    let sent = |source| ControlError { sent: true, source };
    let mut line = match serde_json::to_vec(req) {
        Ok(line) => line,
        Err(e) => return Some(Err(not_sent(std::io::Error::other(e)))),
    };
    // One write of the whole line: the daemon runs a request only once its newline has
    // arrived, so a failed write means it ran nothing.
    line.push(b'\n');
    if let Err(e) = stream.write_all(&line) {
        return Some(Err(not_sent(e)));
    }
    let mut run = || -> std::io::Result<ControlResponse> {
        // A daemon that does not answer within a minute is stuck: say so rather than hang.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
        // Read through a shared reference: no second descriptor for the one connection.
        let mut reader = BufReader::new(&stream);
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
    Some(run().map_err(sent))
}
