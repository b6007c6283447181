//! Python and Swift bindings of huskies, through uniffi (proc-macros).
//!
//! Thin by design: every call becomes one [`huskies_daemon::api::ApiRequest`] and runs
//! through [`huskies_daemon::api::serve`] — on a node this process owns, on the node of a
//! daemon running in this process, or, through [`huskies_daemon::RemoteNode`], on the node
//! of the daemon that owns the home. The records here mirror the API's data types with
//! `From` conversions; no rule lives here (ids, event names and their arguments, stage
//! names are all checked by the core).
//!
//! The hand-written Python layer (`bindings/python/huskies`) adds what uniffi cannot give:
//! keyword arguments, context managers, `batch()`, the exception classes, `async for`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use huskies_core::{Command as CoreCommand, Node, NodeConfig, Timestamp};
use huskies_daemon::api::{
    self, ApiCommand, ApiContext, ApiError, ApiErrorKind, ApiEventArgs, ApiReply, ApiRequest, EventData,
};
use huskies_daemon::{Daemon, DaemonConfig, RemoteNode};

uniffi::setup_scaffolding!();

/// mimalloc without transparent huge pages, as in the `huskies` binary: appends and ingests
/// allocate and free many small buffers on several threads, and glibc's allocator spent
/// about a third of an append's non-signing time there (cli/src/main.rs). Only the
/// library's own allocations use it; Python's objects keep Python's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One error type for every call; each variant is one exception class of the Python
/// contract (the Python layer re-raises them as `huskies.NotFound`, ...). The payload is
/// the human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum HuskiesError {
    /// `not_found`
    #[error("{0}")]
    NotFound(String),
    /// `already_exists`
    #[error("{0}")]
    AlreadyExists(String),
    /// `invalid_transition`
    #[error("{0}")]
    InvalidTransition(String),
    /// `invalid_argument`
    #[error("{0}")]
    InvalidArgument(String),
    /// `claim_conflict`
    #[error("{0}")]
    ClaimConflict(String),
    /// `home_locked`
    #[error("{0}")]
    HomeLocked(String),
    /// `home_not_found`
    #[error("{0}")]
    HomeNotFound(String),
    /// `unauthorized`
    #[error("{0}")]
    Unauthorized(String),
    /// `corrupt`
    #[error("{0}")]
    Corrupt(String),
    /// `network`: a daemon or peer did not answer, or went away.
    #[error("{0}")]
    Network(String),
    /// The handle was closed (or its daemon stopped).
    #[error("{0}")]
    Closed(String),
    /// An I/O failure of the store.
    #[error("{0}")]
    Io(String),
}

impl From<ApiError> for HuskiesError {
    fn from(e: ApiError) -> HuskiesError {
        let m = e.message;
        match e.kind {
            ApiErrorKind::NotFound => HuskiesError::NotFound(m),
            ApiErrorKind::AlreadyExists => HuskiesError::AlreadyExists(m),
            ApiErrorKind::InvalidTransition => HuskiesError::InvalidTransition(m),
            ApiErrorKind::InvalidArgument => HuskiesError::InvalidArgument(m),
            ApiErrorKind::ClaimConflict => HuskiesError::ClaimConflict(m),
            ApiErrorKind::HomeNotFound => HuskiesError::HomeNotFound(m),
            ApiErrorKind::HomeLocked => HuskiesError::HomeLocked(m),
            ApiErrorKind::Corrupt => HuskiesError::Corrupt(m),
            ApiErrorKind::Unauthorized => HuskiesError::Unauthorized(m),
            ApiErrorKind::Network => HuskiesError::Network(m),
            ApiErrorKind::Closed => HuskiesError::Closed(m),
            ApiErrorKind::Io => HuskiesError::Io(m),
        }
    }
}

impl From<huskies_core::Error> for HuskiesError {
    fn from(e: huskies_core::Error) -> HuskiesError {
        ApiError::from(e).into()
    }
}

impl From<huskies_daemon::DaemonError> for HuskiesError {
    fn from(e: huskies_daemon::DaemonError) -> HuskiesError {
        ApiError::from(e).into()
    }
}

fn unexpected(what: &str) -> HuskiesError {
    HuskiesError::Io(format!("unexpected reply to {what}"))
}

fn closed() -> HuskiesError {
    HuskiesError::Closed("the node is closed".into())
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// The pipeline event names, in the contract's order (from the core's `EventKind`).
#[uniffi::export]
pub fn event_names() -> Vec<String> {
    huskies_core::EventKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect()
}

/// The stage kinds, in pipeline order (from the core's `StageKind`).
#[uniffi::export]
pub fn stage_kinds() -> Vec<String> {
    huskies_core::StageKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect()
}

/// A stage: `kind` is the contract's stage kind; only that kind's fields are set.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Stage {
    /// `backlog`, `coding`, `qa`, `merge`, `merge_failure`, `done`, `archived`.
    pub kind: String,
    /// `merge`
    pub feature_branch: Option<String>,
    /// `merge`
    pub commits_ahead: Option<u32>,
    /// `merge_failure`
    pub failure_kind: Option<String>,
    /// `merge_failure`; `archived` (blocked, merge_failed, review_held)
    pub reason: Option<String>,
    /// `done` (RFC 3339)
    pub merged_at: Option<String>,
    /// `done`
    pub merge_commit: Option<String>,
    /// `archived` (RFC 3339)
    pub archived_at: Option<String>,
    /// `archived`: completed, abandoned, superseded, blocked, merge_failed, review_held
    pub archive_reason: Option<String>,
    /// `archived` superseded
    pub superseded_by: Option<String>,
}

impl From<api::StageData> for Stage {
    fn from(s: api::StageData) -> Stage {
        Stage {
            kind: s.kind,
            feature_branch: s.feature_branch,
            commits_ahead: s.commits_ahead,
            failure_kind: s.failure_kind,
            reason: s.reason,
            merged_at: s.merged_at,
            merge_commit: s.merge_commit,
            archived_at: s.archived_at,
            archive_reason: s.archive_reason,
            superseded_by: s.superseded_by,
        }
    }
}

/// A live claim.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Claim {
    /// Holder (hex).
    pub node: String,
    /// RFC 3339.
    pub claimed_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Confirmed: every alive member has seen it (no alive member can win against it).
    pub confirmed: bool,
}

/// A story.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Story {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Body.
    pub body: Option<String>,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// Stage.
    pub stage: Stage,
    /// The live claim.
    pub claim: Option<Claim>,
    /// Tombstoned.
    pub deleted: bool,
    /// Op ids of concurrent transitions.
    pub conflicts: Vec<String>,
}

impl From<api::StoryData> for Story {
    fn from(s: api::StoryData) -> Story {
        Story {
            id: s.id,
            name: s.name,
            body: s.body,
            depends_on: s.depends_on,
            stage: s.stage.into(),
            claim: s.claim.map(|c| Claim {
                node: c.node,
                claimed_at: c.claimed_at,
                expires_at: c.expires_at,
                confirmed: c.confirmed,
            }),
            deleted: s.deleted,
            conflicts: s.conflicts,
        }
    }
}

/// One transition of a story's history.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Transition {
    /// Op id (hex).
    pub op_id: String,
    /// Author (hex).
    pub author: String,
    /// Lamport timestamp.
    pub lamport: u64,
    /// Stage kind before.
    pub from_stage: String,
    /// Stage kind after.
    pub to_stage: String,
    /// Event name.
    pub event: String,
    /// Concurrent with the transition before it.
    pub concurrent: bool,
}

/// A cluster member.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Member {
    /// Node id (hex).
    pub node_id: String,
    /// `admin` or `member`.
    pub role: String,
    /// Removed.
    pub removed: bool,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct VerifyReport {
    /// No problems.
    pub ok: bool,
    /// Ops checked.
    pub ops: u64,
    /// Problems, in words.
    pub problems: Vec<String>,
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct IngestReport {
    /// New ops merged.
    pub applied: u64,
    /// Already held.
    pub duplicates: u64,
    /// Held back until predecessors arrive.
    pub buffered: u64,
    /// Refused ops, in words.
    pub rejected: Vec<String>,
}

/// One step of a resumable export: a bundle and the cursor for the next step.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ExportChunk {
    /// The next bundle; `None` once the export is complete.
    pub bundle: Option<Vec<u8>>,
    /// Author id (hex) → seq: pass back as `have` for the next bundle.
    pub have: HashMap<String, u64>,
    /// Pass back as `evidence_sent` for the next bundle.
    pub evidence_sent: Option<u64>,
}

/// A committed transition.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Event {
    /// Story id.
    pub story_id: String,
    /// Stage kind before (`None` for a new story).
    pub before: Option<String>,
    /// Stage kind after.
    pub after: String,
    /// Event name (`None` for a story's creation).
    pub event: Option<String>,
    /// Author (hex).
    pub author: Option<String>,
    /// Concurrent with another transition.
    pub conflict: bool,
}

impl From<EventData> for Event {
    fn from(e: EventData) -> Event {
        Event {
            story_id: e.story_id,
            before: e.before,
            after: e.after,
            event: e.event,
            author: e.author,
            conflict: e.conflict,
        }
    }
}

/// Pipeline event arguments (all optional; the core says which an event needs).
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct EventArgs {
    /// Branch.
    pub branch: Option<String>,
    /// Commits ahead.
    pub commits: Option<u32>,
    /// Merge commit.
    pub commit: Option<String>,
    /// Failure kind.
    pub kind: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// Replacing story.
    pub by: Option<String>,
}

/// A local change (for `execute` and `execute_group`).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Command {
    /// New story.
    AddStory {
        /// Id.
        id: String,
        /// Name.
        name: String,
        /// Body.
        body: Option<String>,
        /// Dependencies.
        depends_on: Vec<String>,
    },
    /// Pipeline event by name.
    Event {
        /// Story.
        id: String,
        /// Event name.
        event: String,
        /// Arguments.
        args: EventArgs,
    },
    /// Claim.
    Claim {
        /// Story.
        id: String,
        /// Lease seconds.
        ttl_secs: u32,
    },
    /// Release this node's claim.
    Release {
        /// Story.
        id: String,
    },
    /// Tombstone.
    Remove {
        /// Story.
        id: String,
    },
}

impl From<Command> for ApiCommand {
    fn from(c: Command) -> ApiCommand {
        match c {
            Command::AddStory {
                id,
                name,
                body,
                depends_on,
            } => ApiCommand::AddStory {
                id,
                name,
                body,
                depends_on,
            },
            Command::Event { id, event, args } => ApiCommand::Event {
                id,
                event,
                args: ApiEventArgs {
                    branch: args.branch,
                    commits: args.commits,
                    commit: args.commit,
                    kind: args.kind,
                    reason: args.reason,
                    by: args.by,
                },
            },
            Command::Claim { id, ttl_secs } => ApiCommand::Claim { id, ttl_secs },
            Command::Release { id } => ApiCommand::Release { id },
            Command::Remove { id } => ApiCommand::Remove { id },
        }
    }
}

/// A command of a group that was refused (the others were committed).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Refusal {
    /// Its position in the group.
    pub index: u32,
    /// The error kind (`not_found`, `invalid_transition`, ...).
    pub kind: String,
    /// The human message.
    pub message: String,
}

/// This node's ids and where its calls run.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct NodeInfo {
    /// Node id (hex).
    pub node_id: String,
    /// Cluster id (hex).
    pub cluster_id: String,
    /// `local` (this process owns the home), `daemon` (a running daemon owns it; calls go
    /// through its control socket) or `in_process` (the node of a `NativeDaemon`).
    pub route: String,
}

/// One lifecycle event: the envelope `huskies events` prints and the NATS bridge publishes.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EnvelopeLine {
    /// The envelope as JSON (`{id, type, version, timestamp, publisher, attributes}`).
    pub envelope: String,
    /// The cursor that resumes just after it.
    pub cursor: String,
}

/// One step of the walk over the local log's lifecycle events.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct EventPage {
    /// The events, in the log's Lamport order.
    pub events: Vec<EnvelopeLine>,
    /// The cursor after the last op read.
    pub end: String,
    /// Ops read: 0 means the end of the local log was reached.
    pub ops_read: u64,
}

impl From<api::EventsData> for EventPage {
    fn from(d: api::EventsData) -> EventPage {
        EventPage {
            events: d
                .events
                .into_iter()
                .map(|e| EnvelopeLine {
                    envelope: e.envelope,
                    cursor: e.cursor,
                })
                .collect(),
            end: d.end,
            ops_read: d.ops_read,
        }
    }
}

/// Receives lifecycle envelopes on a delivery thread of the library's own.
#[uniffi::export(callback_interface)]
pub trait EnvelopeListener: Send + Sync {
    /// One event: its envelope as JSON and the cursor after it. Must not raise (the Python
    /// layer catches and reports).
    fn on_envelope(&self, envelope: String, cursor: String);
}

/// How often an envelope subscription re-reads the log when nothing woke it: ops that raise
/// no transition event (claims, members) are seen within this.
const ENVELOPE_POLL: Duration = Duration::from_millis(200);

/// Receives events on a delivery thread of the library's own.
#[uniffi::export(callback_interface)]
pub trait EventListener: Send + Sync {
    /// One committed transition. Must not raise (the Python layer catches and reports).
    fn on_event(&self, event: Event);
}

/// Where a handle's calls run.
enum Backend {
    Local(Box<Node>),
    Remote(RemoteNode),
    InProcess(Arc<DaemonHost>),
}

/// A handle on a node. Calls are safe from several threads at once; after `close`, every
/// call fails with `Closed`.
#[derive(uniffi::Object)]
pub struct NativeNode {
    backend: Mutex<Option<Backend>>,
    subscriptions: Mutex<Vec<Arc<NativeSubscription>>>,
}

impl NativeNode {
    fn new(backend: Backend) -> Arc<NativeNode> {
        Arc::new(NativeNode {
            backend: Mutex::new(Some(backend)),
            subscriptions: Mutex::new(Vec::new()),
        })
    }

    fn call(&self, request: ApiRequest) -> Result<ApiReply, HuskiesError> {
        let mut guard = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            None => Err(closed()),
            Some(Backend::Local(node)) => Ok(api::serve(node, now(), &request, &ApiContext::default())?),
            Some(Backend::Remote(remote)) => {
                let remote = remote.clone();
                drop(guard);
                Ok(remote.call(&request)?)
            }
            Some(Backend::InProcess(host)) => {
                let host = host.clone();
                drop(guard);
                host.call(&request)
            }
        }
    }

    /// Where a subscription's wake-ups come from: the committed transitions of whichever
    /// node this handle reaches, sent to `tx` until the returned source is dropped.
    fn source(&self, tx: mpsc::Sender<EventData>) -> Result<Source, HuskiesError> {
        let guard = self.backend.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            None => Err(closed()),
            Some(Backend::Local(node)) => {
                let sub = node.subscribe(move |e| {
                    if let Some(d) = EventData::from_event(e) {
                        // The receiver gone means the subscription ended: nothing to do.
                        let _ = tx.send(d);
                    }
                });
                Ok(Source::Local { _sub: sub })
            }
            Some(Backend::Remote(remote)) => {
                let remote = remote.clone();
                drop(guard);
                Ok(Source::Remote {
                    _sub: remote.subscribe(move |d| {
                        let _ = tx.send(d);
                    })?,
                })
            }
            Some(Backend::InProcess(host)) => host.forward_events(tx),
        }
    }

    /// Keeps a subscription so that closing the node ends it.
    fn keep(&self, sub: Arc<NativeSubscription>) {
        self.subscriptions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sub);
    }

    /// Runs one group request; returns the refused commands.
    fn group(&self, commands: Vec<ApiCommand>) -> Result<Vec<Refusal>, HuskiesError> {
        match self.call(ApiRequest::Group { commands })? {
            ApiReply::Group(results) => Ok(results
                .into_iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    r.map(|e| Refusal {
                        index: i as u32,
                        kind: e.kind.as_str().to_string(),
                        message: e.message,
                    })
                })
                .collect()),
            _ => Err(unexpected("execute_group")),
        }
    }

    fn story_reply(reply: ApiReply, what: &str) -> Result<Story, HuskiesError> {
        match reply {
            ApiReply::Story(s) => Ok((*s).into()),
            _ => Err(unexpected(what)),
        }
    }
}

fn home(path: &str) -> PathBuf {
    PathBuf::from(path)
}

fn own_label(node: &Node) -> Option<String> {
    let me = node.node_id();
    node.nodes(now())
        .ok()?
        .into_iter()
        .find(|n| n.node == me)
        .map(|n| n.label)
        .filter(|l| !l.is_empty())
}

#[uniffi::export]
impl NativeNode {
    /// Creates a home at `path`: a node key and a new cluster whose first admin is this
    /// node, which publishes its presence with `label`.
    #[uniffi::constructor]
    pub fn init(path: String, cluster_name: String, label: String) -> Result<Arc<NativeNode>, HuskiesError> {
        let mut node = Node::init(
            &home(&path),
            huskies_core::InitMode::NewCluster { name: cluster_name },
            &mut rand_core::OsRng,
            now(),
            NodeConfig::default(),
        )?;
        node.execute(now(), CoreCommand::Announce { label, address: None })?;
        Ok(NativeNode::new(Backend::Local(Box::new(node))))
    }

    /// Opens an existing home. If a daemon owns it, every call goes through that daemon's
    /// control socket (waiting at most `timeout_ms` for each answer); the store is never
    /// opened behind its back.
    #[uniffi::constructor]
    pub fn open(path: String, timeout_ms: u64) -> Result<Arc<NativeNode>, HuskiesError> {
        let root = home(&path);
        if let Some(remote) = RemoteNode::connect(&root, Duration::from_millis(timeout_ms.max(1))) {
            return Ok(NativeNode::new(Backend::Remote(remote)));
        }
        let node = Node::open(&root, NodeConfig::default())?;
        Ok(NativeNode::new(Backend::Local(Box::new(node))))
    }

    /// Creates a home at `path` and joins the cluster of `ticket`, contacting the issuing
    /// daemon (for at most `timeout_ms`).
    #[uniffi::constructor]
    pub fn join(
        path: String,
        ticket: String,
        label: String,
        timeout_ms: u64,
    ) -> Result<Arc<NativeNode>, HuskiesError> {
        let ticket: huskies_core::sync::Ticket = ticket.parse()?;
        let options = huskies_daemon::JoinOptions::new(Duration::from_millis(timeout_ms));
        let joined = huskies_daemon::join_home(&home(&path), &ticket, &label, &options, |_, _| {})?;
        Ok(NativeNode::new(Backend::Local(Box::new(joined.node))))
    }

    /// Ids, and where calls run.
    pub fn info(&self) -> Result<NodeInfo, HuskiesError> {
        let route = match self.backend.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            None => return Err(closed()),
            Some(Backend::Local(_)) => "local",
            Some(Backend::Remote(_)) => "daemon",
            Some(Backend::InProcess(_)) => "in_process",
        };
        match self.call(ApiRequest::Info)? {
            ApiReply::Info(i) => Ok(NodeInfo {
                node_id: i.node_id,
                cluster_id: i.cluster_id,
                route: route.into(),
            }),
            _ => Err(unexpected("info")),
        }
    }

    /// Applies one command; returns the story after it (`None` after `Remove`).
    pub fn execute(&self, command: Command) -> Result<Option<Story>, HuskiesError> {
        match self.call(ApiRequest::Execute {
            command: command.into(),
        })? {
            ApiReply::Story(s) => Ok(Some((*s).into())),
            ApiReply::Done => Ok(None),
            _ => Err(unexpected("execute")),
        }
    }

    /// Commits the commands as one group (one atomic write, one flush). Returns the
    /// refused ones; the others were committed.
    pub fn execute_group(&self, commands: Vec<Command>) -> Result<Vec<Refusal>, HuskiesError> {
        self.group(commands.into_iter().map(ApiCommand::from).collect())
    }

    /// [`NativeNode::execute_group`] with the commands as one JSON array of the typed API's
    /// commands (`{"command": "add_story", "id": ..., ...}`, the control socket's wire form),
    /// parsed once by the API's own serde types: a host language builds that text in native
    /// code (Python's `json.dumps`) instead of packing one record per command across the
    /// FFI. Text that is not such an array is refused with `InvalidArgument` and nothing is
    /// written.
    pub fn execute_group_json(&self, commands: String) -> Result<Vec<Refusal>, HuskiesError> {
        self.group(api::commands_from_json(&commands)?)
    }

    /// One story.
    pub fn story(&self, id: String) -> Result<Story, HuskiesError> {
        NativeNode::story_reply(self.call(ApiRequest::Story { id })?, "story")
    }

    /// Every story (of one stage kind, if given), sorted by id.
    pub fn stories(&self, stage: Option<String>) -> Result<Vec<Story>, HuskiesError> {
        match self.call(ApiRequest::Stories { stage })? {
            ApiReply::Stories(v) => Ok(v.into_iter().map(Story::from).collect()),
            _ => Err(unexpected("stories")),
        }
    }

    /// A story's transitions, in merge order.
    pub fn history(&self, id: String) -> Result<Vec<Transition>, HuskiesError> {
        match self.call(ApiRequest::History { id })? {
            ApiReply::History(v) => Ok(v
                .into_iter()
                .map(|t| Transition {
                    op_id: t.op_id,
                    author: t.author,
                    lamport: t.lamport,
                    from_stage: t.from,
                    to_stage: t.to,
                    event: t.event,
                    concurrent: t.concurrent,
                })
                .collect()),
            _ => Err(unexpected("history")),
        }
    }

    /// Re-checks every stored op.
    pub fn verify(&self) -> Result<VerifyReport, HuskiesError> {
        match self.call(ApiRequest::Verify)? {
            ApiReply::Verify(v) => Ok(VerifyReport {
                ok: v.ok,
                ops: v.ops,
                problems: v.problems,
            }),
            _ => Err(unexpected("verify")),
        }
    }

    /// The cluster's members.
    pub fn members(&self) -> Result<Vec<Member>, HuskiesError> {
        match self.call(ApiRequest::Members)? {
            ApiReply::Members(v) => Ok(v
                .into_iter()
                .map(|m| Member {
                    node_id: m.node_id,
                    role: m.role,
                    removed: m.removed,
                })
                .collect()),
            _ => Err(unexpected("members")),
        }
    }

    /// Author id (hex) → highest contiguous seq held.
    pub fn version_vector(&self) -> Result<HashMap<String, u64>, HuskiesError> {
        match self.call(ApiRequest::VersionVector)? {
            ApiReply::VersionVector(v) => Ok(v.into_iter().collect()),
            _ => Err(unexpected("version_vector")),
        }
    }

    /// Signed ops the holder of `have` lacks, as a bundle.
    pub fn export_since(&self, have: HashMap<String, u64>) -> Result<Vec<u8>, HuskiesError> {
        match self.call(ApiRequest::ExportSince {
            have: have.into_iter().collect(),
        })? {
            ApiReply::Bundle(hex) => decode_hex(&hex),
            _ => Err(unexpected("export_since")),
        }
    }

    /// One bundle of at most `max_bytes` of what the holder of `have` lacks, and the cursor
    /// (`have`, `evidence_sent`) that asks for the next one.
    pub fn export_chunk(
        &self,
        have: HashMap<String, u64>,
        evidence_sent: Option<u64>,
        max_bytes: u64,
    ) -> Result<ExportChunk, HuskiesError> {
        match self.call(ApiRequest::ExportChunk {
            have: have.into_iter().collect(),
            evidence_sent,
            max_bytes,
        })? {
            ApiReply::Chunk(c) => Ok(ExportChunk {
                bundle: c.bundle.as_deref().map(decode_hex).transpose()?,
                have: c.have.into_iter().collect(),
                evidence_sent: c.evidence_sent,
            }),
            _ => Err(unexpected("export_chunk")),
        }
    }

    /// Verifies and merges a bundle.
    pub fn ingest(&self, bundle: Vec<u8>) -> Result<IngestReport, HuskiesError> {
        match self.call(ApiRequest::Ingest {
            bundle: encode_hex(&bundle),
        })? {
            ApiReply::Ingested(r) => Ok(IngestReport {
                applied: r.applied,
                duplicates: r.duplicates,
                buffered: r.buffered,
                rejected: r.rejected,
            }),
            _ => Err(unexpected("ingest")),
        }
    }

    /// A one-time join ticket naming the daemon that serves this node.
    pub fn ticket(&self, ttl_secs: u64) -> Result<String, HuskiesError> {
        match self.call(ApiRequest::Ticket { ttl_secs })? {
            ApiReply::Ticket(t) => Ok(t),
            _ => Err(unexpected("ticket")),
        }
    }

    /// The lifecycle events after `since` (a cursor's text; empty: the start of the log),
    /// one bounded step of the walk `huskies events` makes: call again with `end` until
    /// `ops_read` is 0.
    pub fn events_after(&self, since: String) -> Result<EventPage, HuskiesError> {
        match self.call(ApiRequest::Events { since })? {
            ApiReply::Events(d) => Ok(d.into()),
            _ => Err(unexpected("events_after")),
        }
    }

    /// The cursor at the end of the local log (events after it are not committed yet).
    pub fn event_cursor(&self) -> Result<String, HuskiesError> {
        match self.call(ApiRequest::EventCursor)? {
            ApiReply::Cursor(c) => Ok(c),
            _ => Err(unexpected("event_cursor")),
        }
    }

    /// Delivers every committed transition (local or remote) to `listener`, on a thread of
    /// the library's own, until the subscription is cancelled or the node closed.
    pub fn subscribe(
        &self,
        listener: Box<dyn EventListener>,
    ) -> Result<Arc<NativeSubscription>, HuskiesError> {
        let (tx, rx) = mpsc::channel::<EventData>();
        let source = self.source(tx)?;
        let sub = NativeSubscription::start(source, move |cancelled| {
            for event in rx {
                if cancelled.load(Ordering::SeqCst) {
                    return;
                }
                // A listener that panics (it should not: the Python layer catches
                // everything) ends delivery, never the process.
                let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    listener.on_event(event.into())
                }));
                if delivered.is_err() {
                    return;
                }
            }
        })?;
        self.keep(sub.clone());
        Ok(sub)
    }

    /// Delivers the lifecycle envelopes of the local log after `since` (a cursor's text;
    /// empty: the start of the log; `None`: only events committed from now on) to
    /// `listener`, in log order, on a thread of the library's own: the same envelopes as
    /// `huskies events --follow`, local and merged alike, read from the log by the API's
    /// event walk (woken by each committed transition, and every 200 ms for the rest).
    /// Ends when cancelled or when the node is closed.
    pub fn subscribe_envelopes(
        self: Arc<Self>,
        since: Option<String>,
        listener: Box<dyn EnvelopeListener>,
    ) -> Result<Arc<NativeSubscription>, HuskiesError> {
        let start = match since {
            Some(c) => c,
            None => self.event_cursor()?,
        };
        // The first step here, so that a bad cursor is the caller's error.
        let first = self.events_after(start)?;
        let (tx, rx) = mpsc::channel::<EventData>();
        let source = self.source(tx)?;
        let node = Arc::downgrade(&self);
        let sub = NativeSubscription::start(source, move |cancelled| {
            let mut page = first;
            loop {
                for e in std::mem::take(&mut page.events) {
                    if cancelled.load(Ordering::SeqCst) {
                        return;
                    }
                    let delivered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        listener.on_envelope(e.envelope, e.cursor)
                    }));
                    if delivered.is_err() {
                        return;
                    }
                }
                if page.ops_read == 0 {
                    // At the end of the log: wait for a commit (or the poll interval).
                    match rx.recv_timeout(ENVELOPE_POLL) {
                        Ok(_) => while rx.try_recv().is_ok() {},
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
                if cancelled.load(Ordering::SeqCst) {
                    return;
                }
                // A node dropped or closed (or its daemon gone) ends delivery.
                let Some(n) = node.upgrade() else { return };
                match n.events_after(std::mem::take(&mut page.end)) {
                    Ok(next) => page = next,
                    Err(_) => return,
                }
            }
        })?;
        self.keep(sub.clone());
        Ok(sub)
    }

    /// Ends every subscription and releases the node (and with it the home's lock). Later
    /// calls fail with `Closed`. Closing twice is harmless.
    pub fn close(&self) {
        let subs = std::mem::take(&mut *self.subscriptions.lock().unwrap_or_else(|e| e.into_inner()));
        for s in subs {
            s.cancel();
        }
        let backend = self.backend.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(Backend::Local(mut node)) = backend {
            let _ = node.flush();
        }
    }

    /// Closed already.
    pub fn is_closed(&self) -> bool {
        self.backend.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

fn decode_hex(text: &str) -> Result<Vec<u8>, HuskiesError> {
    hex::decode(text).map_err(|e| HuskiesError::Io(format!("a bundle that is not hex: {e}")))
}

/// Where a subscription's events come from; dropping it stops them.
enum Source {
    /// Held to be dropped: that unsubscribes.
    Local {
        _sub: huskies_core::Subscription,
    },
    /// Held to be dropped: that hangs up.
    Remote {
        _sub: huskies_daemon::RemoteSubscription,
    },
    Task(tokio::task::JoinHandle<()>),
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Task(t) = self {
            t.abort();
        }
    }
}

/// A live subscription.
#[derive(uniffi::Object)]
pub struct NativeSubscription {
    cancelled: Arc<AtomicBool>,
    source: Mutex<Option<Source>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NativeSubscription {
    /// Runs `deliver` on a delivery thread of its own; `deliver` returns when the flag it is
    /// given is set or its channel ends (dropping `source` ends it).
    fn start(
        source: Source,
        deliver: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> Result<Arc<NativeSubscription>, HuskiesError> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let flag = cancelled.clone();
        let thread = std::thread::Builder::new()
            .name("huskies-events".into())
            .spawn(move || deliver(&flag))
            .map_err(|e| HuskiesError::Io(format!("cannot start the event thread: {e}")))?;
        Ok(Arc::new(NativeSubscription {
            cancelled,
            source: Mutex::new(Some(source)),
            thread: Mutex::new(Some(thread)),
        }))
    }
}

#[uniffi::export]
impl NativeSubscription {
    /// Stops delivery: once this returns, the listener is not called again (unless called
    /// from the listener itself, whose current call then finishes).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        // Dropping the source drops the channel's sender, which ends the delivery thread.
        drop(self.source.lock().unwrap_or_else(|e| e.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }

    /// Cancelled already.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// How long a stop may take before its remaining tasks are dropped.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A daemon running in this process, with a tokio runtime of its own.
struct DaemonHost {
    /// The runtime's handle: tasks are spawned and stops driven through it.
    runtime: tokio::runtime::Handle,
    /// The runtime itself, dropped with the host (or at once when a stop overruns).
    owner: Mutex<Option<tokio::runtime::Runtime>>,
    daemon: Mutex<Option<Daemon>>,
}

impl DaemonHost {
    fn stopped() -> HuskiesError {
        HuskiesError::Closed("the daemon was stopped".into())
    }

    fn call(&self, request: &ApiRequest) -> Result<ApiReply, HuskiesError> {
        let guard = self.daemon.lock().unwrap_or_else(|e| e.into_inner());
        let daemon = guard.as_ref().ok_or_else(DaemonHost::stopped)?;
        let ctx = ApiContext {
            advertise: Some(daemon.advertise().to_string()),
        };
        Ok(daemon.with_node(|n| api::serve(n, now(), request, &ctx))?)
    }

    fn forward_events(&self, tx: mpsc::Sender<EventData>) -> Result<Source, HuskiesError> {
        let guard = self.daemon.lock().unwrap_or_else(|e| e.into_inner());
        let mut rx = guard.as_ref().ok_or_else(DaemonHost::stopped)?.subscribe_events();
        let task = self.runtime.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        if let Some(d) = EventData::from_event(&e) {
                            if tx.send(d).is_err() {
                                return;
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Source::Task(task))
    }
}

/// The sync daemon running in this process: it owns its home, serves `/crdt-sync` and the
/// control socket (typed requests), dials its peers, and stops on `stop` (or when dropped).
#[derive(uniffi::Object)]
pub struct NativeDaemon {
    host: Arc<DaemonHost>,
    address: String,
    node: Arc<NativeNode>,
}

#[uniffi::export]
impl NativeDaemon {
    /// Opens the home at `path` and starts its daemon on `listen` (`host:port`, port 0 picks
    /// one), keeping `peers` (`ws://host:port/crdt-sync`) connected.
    #[uniffi::constructor]
    pub fn start(
        path: String,
        listen: String,
        peers: Vec<String>,
    ) -> Result<Arc<NativeDaemon>, HuskiesError> {
        let listen = listen
            .parse()
            .map_err(|e| HuskiesError::InvalidArgument(format!("listen address {listen:?}: {e}")))?;
        let node = Node::open(&home(&path), NodeConfig::default())?;
        let label = own_label(&node).unwrap_or_else(|| "node".into());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("huskies-daemon")
            .enable_all()
            .build()
            .map_err(|e| HuskiesError::Io(format!("cannot start the daemon's runtime: {e}")))?;
        let config = DaemonConfig {
            listen,
            peers,
            label,
            ..DaemonConfig::default()
        };
        let daemon = runtime.block_on(Daemon::start(node, config, Arc::new(huskies_daemon::TypedOnly)))?;
        let address = daemon.local_addr().to_string();
        let host = Arc::new(DaemonHost {
            runtime: runtime.handle().clone(),
            owner: Mutex::new(Some(runtime)),
            daemon: Mutex::new(Some(daemon)),
        });
        let node = NativeNode::new(Backend::InProcess(host.clone()));
        Ok(Arc::new(NativeDaemon { host, address, node }))
    }

    /// The `host:port` actually bound.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// `ws://<address>/crdt-sync`, for other daemons' peer lists.
    pub fn url(&self) -> String {
        format!("ws://{}/crdt-sync", self.address)
    }

    /// A handle whose calls run on the daemon's node.
    pub fn node(&self) -> Arc<NativeNode> {
        self.node.clone()
    }

    /// Stops: tells peers, closes connections, flushes, releases the home. Later calls on
    /// its node fail with `Closed`. Stopping twice is harmless.
    pub fn stop(&self) -> Result<(), HuskiesError> {
        self.node.close();
        let daemon = self.host.daemon.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(d) = daemon {
            // Bounded: a stop never hangs its caller. Past the bound the tasks still running
            // are dropped with the runtime, and the node (and the home's lock) with them.
            let stopped = self
                .host
                .runtime
                .block_on(async { tokio::time::timeout(STOP_TIMEOUT, d.shutdown()).await });
            match stopped {
                Ok(r) => r?,
                Err(_) => {
                    if let Some(rt) = self.host.owner.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        rt.shutdown_background();
                    }
                }
            }
        }
        Ok(())
    }

    /// Stopped already.
    pub fn is_stopped(&self) -> bool {
        self.host
            .daemon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

impl Drop for NativeDaemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
