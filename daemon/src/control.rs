//! The control socket: local clients (the CLI) run their commands inside the daemon, so
//! every command behaves the same whether or not a daemon owns the home.
//!
//! Protocol, one JSON object per line: the client sends a [`ControlRequest`] (its argv,
//! its stdin if the command reads it, and its parsed command line); the daemon answers a
//! [`ControlResponse`]; when `follow` is set, more `{"stdout": "..."}` lines follow as new
//! ops commit, until the client hangs up.
//!
//! A line with an `"api"` key is a typed request instead (see [`crate::remote`]): it runs
//! through [`crate::api::serve`] on the daemon's node, the same function a host that owns
//! the home calls directly.
//!
//! The socket is served by a thread of its own with plain blocking calls (no event loop): a
//! request is accepted, read, run on the node and answered on that one thread, with no
//! hand-off between threads (control requests wait for the node's one lock in any case).
//! What cannot finish at once — a request that has not fully arrived within
//! [`INLINE_READ_WAIT`], a following command's stream, a typed subscription — continues as a
//! task of the daemon's runtime, so a slow client holds up no one. What the command caused
//! for others — the node's events, the wake-up of sync connections — is published once the
//! reply is written, after the op is durable (`Shared::with_node_deferred`).
//!
//! The CLI sends its command line already parsed (`ControlRequest::parsed`), so the daemon
//! does not parse the argv a second time.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use huskies_core::{Node, VersionVector};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Handle;

use crate::api::{ApiContext, ApiError, ApiErrorKind, ApiReply, ApiRequest, EventData};
use crate::metrics::HealthReport;
use crate::remote::{ApiEnvelope, ApiLine};
use crate::shared::{Notice, Shared};
use crate::DaemonError;

/// Longest command-line request accepted: a command line, sent twice (as the argv and as
/// the client's parsed form, `ControlRequest::parsed`), plus a story body; twice the 1 MiB
/// a command line and a body were allowed before the parsed form was sent, so that every
/// request accepted then is accepted now.
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

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
    /// The command line as the client already parsed it, in the handler's own serde form
    /// (for the CLI: its parsed arguments as JSON), so that the daemon does not parse
    /// `argv` again. Opaque to the daemon; a handler uses it when present and falls back
    /// to `argv` (a client of an older version sends none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parsed: Option<String>,
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

/// How long the control thread waits for a request's bytes before it hands the connection
/// to the daemon's runtime: a client writes its whole request as soon as it is connected,
/// so only a stalled client waits this long, and it holds up nobody's command for longer.
const INLINE_READ_WAIT: Duration = Duration::from_millis(20);

/// Longest the control thread waits for a client to take its reply's bytes (no progress
/// at all) before it gives the connection up: a client that stops reading cannot hold the
/// control thread longer.
const REPLY_WRITE_WAIT: Duration = Duration::from_secs(10);

pub(crate) fn bind(home: &Path) -> Result<StdUnixListener, DaemonError> {
    let path = socket_path(home);
    let failed = |source| DaemonError::Bind {
        what: path.display().to_string(),
        source,
    };
    // We own the home (its lock is held by our node), so a socket file here is stale.
    let _ = std::fs::remove_file(&path);
    // Blocking: the control thread waits in `accept` (`serve`).
    let listener = StdUnixListener::bind(&path).map_err(failed)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    Ok(listener)
}

/// Ends the control thread when dropped: raises its stop flag and wakes its blocking
/// `accept` with a connection of its own. The daemon keeps it in a task of its runtime,
/// so the thread ends at shutdown, or when that runtime is dropped (as its tasks are).
pub(crate) struct ControlStop {
    stop: Arc<AtomicBool>,
    path: PathBuf,
}

impl Drop for ControlStop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Nothing to do if it fails: the socket is gone, so the thread is not in `accept`
        // for long (it fails there too and sees the flag).
        let _ = StdUnixStream::connect(&self.path);
    }
}

/// Starts the control thread: plain blocking calls on `listener` (no event loop), serving
/// one request at a time — accepted, read, run on the node and answered on that thread,
/// with no hand-off to another thread (control requests wait for the node's one lock in
/// any case). What cannot finish at once runs as a task of the daemon's runtime (the one
/// calling this): a connection whose request has not fully arrived within
/// [`INLINE_READ_WAIT`], a following command once its first reply is written, and a typed
/// subscription. The thread ends when the returned [`ControlStop`] is dropped.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    listener: StdUnixListener,
    handler: Arc<dyn ControlHandler>,
) -> Result<(std::thread::JoinHandle<()>, ControlStop), DaemonError> {
    let failed = |source| DaemonError::Bind {
        what: "the control socket's thread".into(),
        source,
    };
    let runtime = Handle::try_current().map_err(|e| failed(std::io::Error::other(e)))?;
    let stop = ControlStop {
        stop: Arc::new(AtomicBool::new(false)),
        path: socket_path(&shared.home),
    };
    let flag = stop.stop.clone();
    let thread = std::thread::Builder::new()
        .name("huskies-control".into())
        .spawn(move || serve(shared, listener, handler, runtime, flag))
        .map_err(failed)?;
    Ok((thread, stop))
}

fn serve(
    shared: Arc<Shared>,
    listener: StdUnixListener,
    handler: Arc<dyn ControlHandler>,
    runtime: Handle,
    stop: Arc<AtomicBool>,
) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) || shared.is_shutting_down() {
            return;
        }
        match accepted {
            Ok((stream, _)) => serve_one(&shared, stream, &handler, &runtime),
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                // E.g. out of descriptors: do not spin on it.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// What the first read of a connection found.
enum Arrived {
    /// A whole request line (or, past the size limit, the limit's worth of it).
    Line(String),
    /// Not all of it yet: these bytes so far.
    Partial(Vec<u8>),
    /// The client hung up (or sent what no line can be) before its newline: nothing runs.
    Gone,
}

/// Reads a request line, waiting at most [`INLINE_READ_WAIT`] for each part of it.
fn read_request(mut stream: &StdUnixStream) -> Arrived {
    if stream.set_read_timeout(Some(INLINE_READ_WAIT)).is_err() {
        return Arrived::Gone;
    }
    let mut line = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Arrived::Gone,
            Ok(n) => {
                let start = line.len();
                line.extend_from_slice(&chunk[..n]);
                // A request counts only once its newline has arrived: a client cut off
                // mid-line may rely on nothing having run. Bytes after it are not read
                // as part of this request.
                if let Some(end) = line[start..].iter().position(|b| *b == b'\n') {
                    line.truncate(start + end + 1);
                    return String::from_utf8(line).map_or(Arrived::Gone, Arrived::Line);
                }
                if line.len() >= MAX_TYPED_REQUEST_BYTES {
                    // Answered as malformed (the line is cut).
                    line.truncate(MAX_TYPED_REQUEST_BYTES);
                    return Arrived::Line(String::from_utf8_lossy(&line).into_owned());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Arrived::Partial(line);
            }
            Err(_) => return Arrived::Gone,
        }
    }
}

/// Serves one connection on the control thread, or hands it to the runtime (see [`spawn`]).
fn serve_one(
    shared: &Arc<Shared>,
    stream: StdUnixStream,
    handler: &Arc<dyn ControlHandler>,
    runtime: &Handle,
) {
    let line = match read_request(&stream) {
        Arrived::Line(line) => line,
        Arrived::Partial(prefix) => return hand_off(runtime, shared, stream, handler, prefix),
        Arrived::Gone => return,
    };
    if stream.set_write_timeout(Some(REPLY_WRITE_WAIT)).is_err() {
        return;
    }
    let mut write = &stream;
    if is_typed(&line) {
        let envelope = serde_json::from_str::<ApiEnvelope>(&line);
        if matches!(&envelope, Ok(e) if e.api == ApiRequest::Subscribe) {
            return hand_off(runtime, shared, stream, handler, line.into_bytes());
        }
        let (answer, notice) = api_call(shared, envelope);
        let _ = write.write_all(&answer);
        // As for a command line: the reply first, then the events and the connections.
        drop(notice);
        return;
    }
    let ran = run_command(shared, handler.as_ref(), &line);
    let written = write.write_all(&ran.reply).is_ok();
    // The op (if any) was durable before the reply; now the others hear of it.
    drop(ran.notice);
    if let (true, Some(follow)) = (written, ran.follow) {
        let shared = shared.clone();
        let handler = handler.clone();
        runtime.spawn(async move {
            if let Some(stream) = into_tokio(stream) {
                follow.stream(&shared, handler.as_ref(), stream).await;
            }
        });
    }
}

/// The connection as a tokio stream (on the runtime that will drive it).
fn into_tokio(stream: StdUnixStream) -> Option<UnixStream> {
    match stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
    {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "a control connection cannot be served");
            None
        }
    }
}

/// Serves a connection as a task of the daemon's runtime, `prefix` being what was
/// already read of it.
fn hand_off(
    runtime: &Handle,
    shared: &Arc<Shared>,
    stream: StdUnixStream,
    handler: &Arc<dyn ControlHandler>,
    prefix: Vec<u8>,
) {
    let shared = shared.clone();
    let handler = handler.clone();
    runtime.spawn(async move {
        if let Some(stream) = into_tokio(stream) {
            client(shared, stream, handler, prefix).await;
        }
    });
}

/// A typed request (see [`crate::remote`]) rather than a command line.
fn is_typed(line: &str) -> bool {
    line.trim_start().starts_with("{\"api\"")
}

/// A command line run on the node: the reply line, what the command caused for others
/// (publish it once the reply is written), and for a following command, what to stream.
struct Ran<'a> {
    reply: Vec<u8>,
    notice: Option<Notice<'a>>,
    follow: Option<Follow>,
}

/// A following command's stream: output for ops committed after `since`.
struct Follow {
    request: ControlRequest,
    since: VersionVector,
    changed: tokio::sync::watch::Receiver<u64>,
}

fn run_command<'a>(shared: &'a Shared, handler: &dyn ControlHandler, line: &str) -> Ran<'a> {
    let line = if line.len() > MAX_REQUEST_BYTES { "" } else { line };
    let request: ControlRequest = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            let resp = ControlResponse {
                code: 2,
                stderr: format!("malformed control request: {e}\n"),
                ..Default::default()
            };
            return Ran {
                reply: json_line(&resp),
                notice: None,
                follow: None,
            };
        }
    };
    let changed = shared.changed.subscribe();
    let health = Health { shared };
    let ((response, since), notice) =
        shared.with_node_deferred(|n| (handler.handle(n, &request, &health), n.version_vector()));
    Ran {
        reply: json_line(&response),
        notice: Some(notice),
        follow: response.follow.then_some(Follow {
            request,
            since,
            changed,
        }),
    }
}

impl Follow {
    /// Streams `{"stdout": …}` lines as ops commit, until the client hangs up or the
    /// daemon stops.
    async fn stream<W: tokio::io::AsyncWrite + Unpin>(
        mut self,
        shared: &Shared,
        handler: &dyn ControlHandler,
        mut write: W,
    ) {
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            tokio::select! {
                r = self.changed.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let (out, next) = shared.with_node(|n| handler.follow(n, &self.request, &self.since));
            self.since = next;
            if !out.is_empty() {
                let line = serde_json::json!({ "stdout": out });
                if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    }
}

fn json_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("replies serialise");
    bytes.push(b'\n');
    bytes
}

/// A plain typed request run on the node: its answer line, and what it caused for others.
fn api_call(
    shared: &Shared,
    envelope: Result<ApiEnvelope, serde_json::Error>,
) -> (Vec<u8>, Option<Notice<'_>>) {
    let request = match envelope {
        Ok(envelope) => envelope.api,
        Err(e) => {
            let err = ApiError::new(
                ApiErrorKind::InvalidArgument,
                format!("malformed typed request: {e}"),
            );
            return (json_line(&ApiLine::Err(err)), None);
        }
    };
    let ctx = ApiContext {
        advertise: Some(shared.advertise.clone()),
    };
    let (result, notice) = shared.with_node_deferred(|n| crate::api::serve(n, Shared::now(), &request, &ctx));
    let answer = match result {
        Ok(reply) => ApiLine::Ok(Box::new(reply)),
        Err(e) => ApiLine::Err(e),
    };
    (json_line(&answer), Some(notice))
}

/// Serves one connection on the runtime: `prefix` is what the control thread already read.
async fn client(shared: Arc<Shared>, stream: UnixStream, handler: Arc<dyn ControlHandler>, prefix: Vec<u8>) {
    let (read, mut write) = stream.into_split();
    let already = std::io::Cursor::new(prefix);
    let mut reader =
        tokio::io::BufReader::new(AsyncReadExt::chain(already, read).take(MAX_TYPED_REQUEST_BYTES as u64));
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    // A request counts only once its newline has arrived (as in `read_request`).
    if !line.ends_with('\n') && line.len() < MAX_TYPED_REQUEST_BYTES {
        return;
    }
    if is_typed(&line) {
        api_client(shared, &line, reader, write).await;
        return;
    }
    let ran = run_command(&shared, handler.as_ref(), &line);
    let written = write.write_all(&ran.reply).await.is_ok();
    drop(ran.notice);
    if let (true, Some(follow)) = (written, ran.follow) {
        follow.stream(&shared, handler.as_ref(), write).await;
    }
}

/// Serves one typed request on the runtime: a plain call, or a subscription that streams
/// events until the client hangs up or the daemon stops.
async fn api_client<R, W>(shared: Arc<Shared>, line: &str, mut reader: R, mut write: W)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let envelope = serde_json::from_str::<ApiEnvelope>(line);
    if !matches!(&envelope, Ok(e) if e.api == ApiRequest::Subscribe) {
        let (answer, notice) = api_call(&shared, envelope);
        let _ = write.write_all(&answer).await;
        drop(notice);
        return;
    }
    let mut events = shared.events.subscribe();
    if write
        .write_all(&json_line(&ApiLine::Ok(Box::new(ApiReply::Subscribed))))
        .await
        .is_err()
    {
        return;
    }
    let mut shutdown = shared.shutdown.subscribe();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            received = events.recv() => match received {
                Ok(event) => {
                    if let Some(data) = EventData::from_event(&event) {
                        if write.write_all(&json_line(&ApiLine::Event(data))).await.is_err() {
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
    // No socket file, or a stale one: the connection is refused.
    let mut stream = match StdUnixStream::connect(socket_path(home)) {
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
