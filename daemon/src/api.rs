//! The typed node API: the core operations a host language needs (Python, Swift, ...), as
//! one serde request/reply pair, and [`serve`], the one function that runs a request on a
//! node.
//!
//! Every way of reaching a node runs requests through [`serve`]: a host that owns the home
//! calls it directly, an in-process daemon calls it under its node lock, and a running
//! daemon calls it for requests that arrive on its control socket ([`crate::RemoteNode`]).
//! So a script gets the same results whether or not a daemon owns the home. Validation
//! stays in the core: story ids through `StoryId::new`, event names and their arguments
//! through `EventKind::from_str` and `EventKind::with_args`, stage names through
//! `StageKind::parse`; this module only converts.

use std::collections::BTreeMap;
use std::str::FromStr;

use huskies_core::{
    ArchiveReason, Command, Event, EventArgs, EventCursor, EventKind, Lease, Node, NodeId, Stage, StageKind,
    StoryId, Timestamp, VersionVector,
};
use serde::{Deserialize, Serialize};

/// The contract's error kinds, plus `closed` (a handle used after `close`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorKind {
    /// `not_found`
    NotFound,
    /// `already_exists`
    AlreadyExists,
    /// `invalid_transition`
    InvalidTransition,
    /// `invalid_argument`
    InvalidArgument,
    /// `claim_conflict`
    ClaimConflict,
    /// `home_not_found`
    HomeNotFound,
    /// `home_locked`
    HomeLocked,
    /// `corrupt`
    Corrupt,
    /// `io`
    Io,
    /// `unauthorized`
    Unauthorized,
    /// `network`: the daemon (or a peer) did not answer, or went away.
    Network,
    /// The handle was closed (or its daemon stopped) before the call.
    Closed,
}

impl ApiErrorKind {
    /// The contract's name (`not_found`, ...; `closed` for a closed handle).
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorKind::NotFound => "not_found",
            ApiErrorKind::AlreadyExists => "already_exists",
            ApiErrorKind::InvalidTransition => "invalid_transition",
            ApiErrorKind::InvalidArgument => "invalid_argument",
            ApiErrorKind::ClaimConflict => "claim_conflict",
            ApiErrorKind::HomeNotFound => "home_not_found",
            ApiErrorKind::HomeLocked => "home_locked",
            ApiErrorKind::Corrupt => "corrupt",
            ApiErrorKind::Io => "io",
            ApiErrorKind::Unauthorized => "unauthorized",
            ApiErrorKind::Network => "network",
            ApiErrorKind::Closed => "closed",
        }
    }
}

/// A refused or failed request: its kind and the human message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ApiErrorKind,
    /// The human message.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ApiErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
        }
    }
}

impl From<huskies_core::Error> for ApiError {
    fn from(e: huskies_core::Error) -> ApiError {
        use huskies_core::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound => ApiErrorKind::NotFound,
            K::AlreadyExists => ApiErrorKind::AlreadyExists,
            K::InvalidTransition => ApiErrorKind::InvalidTransition,
            K::InvalidArgument => ApiErrorKind::InvalidArgument,
            K::ClaimConflict => ApiErrorKind::ClaimConflict,
            K::HomeNotFound => ApiErrorKind::HomeNotFound,
            K::HomeLocked => ApiErrorKind::HomeLocked,
            K::Corrupt => ApiErrorKind::Corrupt,
            K::Unauthorized => ApiErrorKind::Unauthorized,
            K::Network => ApiErrorKind::Network,
            _ => ApiErrorKind::Io,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<crate::DaemonError> for ApiError {
    fn from(e: crate::DaemonError) -> ApiError {
        match e {
            crate::DaemonError::Core(core) => core.into(),
            crate::DaemonError::Bind { .. } => ApiError::new(ApiErrorKind::Io, e.to_string()),
            crate::DaemonError::Network(_) => ApiError::new(ApiErrorKind::Network, e.to_string()),
            crate::DaemonError::InvalidPeer { .. } => {
                ApiError::new(ApiErrorKind::InvalidArgument, e.to_string())
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ApiErrorKind::InvalidArgument, e.to_string())
}

/// The arguments a pipeline event may carry, as a user gives them (see `EventArgs`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiEventArgs {
    /// `branch`
    pub branch: Option<String>,
    /// `commits`
    pub commits: Option<u32>,
    /// `commit`
    pub commit: Option<String>,
    /// `kind`
    pub kind: Option<String>,
    /// `reason`
    pub reason: Option<String>,
    /// `by` (a story id)
    pub by: Option<String>,
}

/// One local change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum ApiCommand {
    /// A new story in the backlog.
    AddStory {
        /// Story id.
        id: String,
        /// Name.
        name: String,
        /// Body.
        #[serde(default)]
        body: Option<String>,
        /// Dependencies (none when left out).
        #[serde(default)]
        depends_on: Vec<String>,
    },
    /// A pipeline event by its contract name (`gates-passed`, ...).
    Event {
        /// Story id.
        id: String,
        /// Event name.
        event: String,
        /// Its arguments (none when left out).
        #[serde(default)]
        args: ApiEventArgs,
    },
    /// Claim (or renew) a story.
    Claim {
        /// Story id.
        id: String,
        /// Lease length.
        ttl_secs: u32,
    },
    /// Give up this node's claim.
    Release {
        /// Story id.
        id: String,
    },
    /// Tombstone a story.
    Remove {
        /// Story id.
        id: String,
    },
}

/// Commands from one JSON array in their wire form (what [`ApiRequest::Group`] carries):
/// how a host language hands a whole batch across in one string, parsed once here by the
/// same serde types. Text that is not such an array is `InvalidArgument`; the commands'
/// contents are checked later by the core, as for every other route.
pub fn commands_from_json(text: &str) -> Result<Vec<ApiCommand>, ApiError> {
    serde_json::from_str(text)
        .map_err(|e| invalid(format!("a batch that is not a JSON array of commands: {e}")))
}

impl ApiCommand {
    /// The story it changes.
    pub fn story(&self) -> &str {
        match self {
            ApiCommand::AddStory { id, .. }
            | ApiCommand::Event { id, .. }
            | ApiCommand::Claim { id, .. }
            | ApiCommand::Release { id }
            | ApiCommand::Remove { id } => id,
        }
    }

    /// The core command, validated by the core's own parsers.
    pub fn to_core(&self) -> Result<Command, ApiError> {
        Ok(match self {
            ApiCommand::AddStory {
                id,
                name,
                body,
                depends_on,
            } => Command::AddStory {
                id: StoryId::new(id.as_str())?,
                name: name.clone(),
                body: body.clone(),
                depends_on: depends_on
                    .iter()
                    .map(|d| StoryId::new(d.as_str()))
                    .collect::<Result<_, _>>()?,
            },
            ApiCommand::Event { id, event, args } => {
                let kind = EventKind::from_str(event).map_err(invalid)?;
                let by = args.by.as_deref().map(StoryId::new).transpose()?;
                let event = kind
                    .with_args(EventArgs {
                        branch: args.branch.clone(),
                        commits: args.commits,
                        commit: args.commit.clone(),
                        kind: args.kind.clone(),
                        reason: args.reason.clone(),
                        by,
                    })
                    .map_err(invalid)?;
                Command::Event {
                    id: StoryId::new(id.as_str())?,
                    event,
                }
            }
            ApiCommand::Claim { id, ttl_secs } => Command::Claim {
                id: StoryId::new(id.as_str())?,
                ttl_secs: *ttl_secs,
            },
            ApiCommand::Release { id } => Command::Release {
                id: StoryId::new(id.as_str())?,
            },
            ApiCommand::Remove { id } => Command::DeleteStory {
                id: StoryId::new(id.as_str())?,
            },
        })
    }
}

/// A request to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum ApiRequest {
    /// This node's and cluster's ids.
    Info,
    /// One command; replies with the story after it ([`ApiReply::Story`]), or
    /// [`ApiReply::Done`] for `remove`.
    Execute {
        /// The command.
        command: ApiCommand,
    },
    /// Commands committed as one group: one atomic write, one flush. Replies
    /// [`ApiReply::Group`] with one entry per command (`None`: committed).
    Group {
        /// The commands, in order.
        commands: Vec<ApiCommand>,
    },
    /// One story.
    Story {
        /// Story id.
        id: String,
    },
    /// Every story (optionally of one stage kind), sorted by id.
    Stories {
        /// A stage kind name (`merge`, `merge_failure`, ...).
        stage: Option<String>,
    },
    /// A story's transitions in merge order.
    History {
        /// Story id.
        id: String,
    },
    /// Re-check every stored op.
    Verify,
    /// The cluster's members.
    Members,
    /// Author id (hex) → highest contiguous seq held.
    VersionVector,
    /// Signed ops the holder of `have` lacks, as a bundle.
    ExportSince {
        /// The other side's version vector.
        have: BTreeMap<String, u64>,
    },
    /// One bundle of at most `max_bytes` of what the holder of `have` lacks, resumable:
    /// replies [`ApiReply::Chunk`] with the cursor to send back for the next bundle (a
    /// history moves with one bounded bundle in memory at a time).
    ExportChunk {
        /// The receiver's version vector plus what earlier chunks carried (the previous
        /// reply's `have`).
        have: BTreeMap<String, u64>,
        /// The previous reply's `evidence_sent` (`None` to start).
        evidence_sent: Option<u64>,
        /// The bundle's size bound; at least `huskies_core::MIN_BUNDLE_BYTES`.
        max_bytes: u64,
    },
    /// Verify and merge a bundle.
    Ingest {
        /// The bundle, hex-encoded.
        bundle: String,
    },
    /// A one-time join ticket (admins only; needs a running daemon, whose address it names).
    Ticket {
        /// Seconds it stays valid.
        ttl_secs: u64,
    },
    /// Keep the connection open and stream [`EventData`] (control socket only).
    Subscribe,
    /// One step of the lifecycle-event walk over the local log after a cursor (the text
    /// form `huskies events` prints; empty: the start of the log): the envelopes of about
    /// [`EVENTS_STEP_BYTES`] of ops. Replies [`ApiReply::Events`]; call again with its
    /// `end` until `ops_read` is 0.
    Events {
        /// Where the reader stands.
        since: String,
    },
    /// The event cursor at the end of the local log: events after it are the ones not yet
    /// committed. Replies [`ApiReply::Cursor`].
    EventCursor,
}

/// Bytes of ops one [`ApiRequest::Events`] step reads: bounds a step's memory and the time
/// it holds the node, not what a reader gets in all.
pub const EVENTS_STEP_BYTES: usize = 1 << 20;

/// A stage with its fields, flat: `kind` is the contract's stage kind name and only the
/// fields of that kind are set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageData {
    /// `backlog`, `coding`, `qa`, `merge`, `merge_failure`, `done`, `archived`.
    pub kind: String,
    /// `merge`: the branch.
    pub feature_branch: Option<String>,
    /// `merge`: commits ahead.
    pub commits_ahead: Option<u32>,
    /// `merge_failure`: the failure kind.
    pub failure_kind: Option<String>,
    /// `merge_failure`, and `archived` for blocked / merge_failed / review_held: why.
    pub reason: Option<String>,
    /// `done`: RFC 3339.
    pub merged_at: Option<String>,
    /// `done`: the merge commit.
    pub merge_commit: Option<String>,
    /// `archived`: RFC 3339.
    pub archived_at: Option<String>,
    /// `archived`: `completed`, `abandoned`, `superseded`, `blocked`, `merge_failed`,
    /// `review_held`.
    pub archive_reason: Option<String>,
    /// `archived` superseded: the replacing story.
    pub superseded_by: Option<String>,
}

impl From<&Stage> for StageData {
    fn from(s: &Stage) -> StageData {
        let mut d = StageData {
            kind: s.kind().as_str().to_string(),
            feature_branch: None,
            commits_ahead: None,
            failure_kind: None,
            reason: None,
            merged_at: None,
            merge_commit: None,
            archived_at: None,
            archive_reason: None,
            superseded_by: None,
        };
        match s {
            Stage::Backlog | Stage::Coding | Stage::Qa => {}
            Stage::Merge {
                feature_branch,
                commits_ahead,
            } => {
                d.feature_branch = Some(feature_branch.clone());
                d.commits_ahead = Some(commits_ahead.get());
            }
            Stage::MergeFailure { kind, reason } => {
                d.failure_kind = Some(kind.clone());
                d.reason = Some(reason.clone());
            }
            Stage::Done {
                merged_at,
                merge_commit,
            } => {
                d.merged_at = Some(merged_at.to_rfc3339());
                d.merge_commit = Some(merge_commit.clone());
            }
            Stage::Archived { archived_at, reason } => {
                d.archived_at = Some(archived_at.to_rfc3339());
                d.archive_reason = Some(reason.kind_str().to_string());
                match reason {
                    ArchiveReason::Completed | ArchiveReason::Abandoned => {}
                    ArchiveReason::Superseded { by } => d.superseded_by = Some(by.as_str().to_string()),
                    ArchiveReason::Blocked { reason }
                    | ArchiveReason::MergeFailed { reason }
                    | ArchiveReason::ReviewHeld { reason } => d.reason = Some(reason.clone()),
                }
            }
        }
        d
    }
}

/// A live claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimData {
    /// The holder (hex).
    pub node: String,
    /// RFC 3339.
    pub claimed_at: String,
    /// RFC 3339.
    pub expires_at: String,
    /// Confirmed: every alive member has seen it, so none can win against it
    /// (`huskies_core::Node::claim_status`). Absent (false) from older daemons.
    #[serde(default)]
    pub confirmed: bool,
}

impl ClaimData {
    /// A live claim and whether it is confirmed.
    pub fn new(l: &Lease, confirmed: bool) -> ClaimData {
        ClaimData {
            node: l.node.to_hex(),
            claimed_at: l.claimed_at.to_rfc3339(),
            expires_at: l.expires_at.to_rfc3339(),
            confirmed,
        }
    }
}

/// A story (the CLI contract's story object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoryData {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Body.
    pub body: Option<String>,
    /// Dependencies.
    pub depends_on: Vec<String>,
    /// Stage.
    pub stage: StageData,
    /// The live claim.
    pub claim: Option<ClaimData>,
    /// Tombstoned.
    pub deleted: bool,
    /// Op ids (hex) of transitions made concurrently with another.
    pub conflicts: Vec<String>,
}

impl From<&huskies_core::Story> for StoryData {
    fn from(s: &huskies_core::Story) -> StoryData {
        StoryData {
            id: s.id.as_str().to_string(),
            name: s.name.clone(),
            body: s.body.clone(),
            depends_on: s.depends_on.iter().map(|d| d.as_str().to_string()).collect(),
            stage: StageData::from(&s.stage),
            claim: s.claim.as_ref().map(|l| ClaimData::new(l, s.claim_confirmed)),
            deleted: s.deleted,
            conflicts: s.conflicts.iter().map(|c| c.op_id.to_hex()).collect(),
        }
    }
}

/// One transition of a story's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionData {
    /// The op (hex).
    pub op_id: String,
    /// Its author (hex).
    pub author: String,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// Stage kind before.
    pub from: String,
    /// Stage kind after.
    pub to: String,
    /// Event name.
    pub event: String,
    /// Made concurrently with the transition before it.
    pub concurrent: bool,
}

/// A member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberData {
    /// Its node id (hex).
    pub node_id: String,
    /// `admin` or `member`.
    pub role: String,
    /// Removed (or rotated away).
    pub removed: bool,
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyData {
    /// No problems.
    pub ok: bool,
    /// Ops re-checked.
    pub ops: u64,
    /// Each problem, in words.
    pub problems: Vec<String>,
}

/// What an ingest did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestData {
    /// New ops merged.
    pub applied: u64,
    /// Ops already held.
    pub duplicates: u64,
    /// Ops held back until their predecessors arrive.
    pub buffered: u64,
    /// Each refused op, in words.
    pub rejected: Vec<String>,
}

/// A committed transition, as subscribers hear it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventData {
    /// The story.
    pub story_id: String,
    /// Stage kind before (`None` for a new story).
    pub before: Option<String>,
    /// Stage kind after.
    pub after: String,
    /// The event name (`None` for a story's creation).
    pub event: Option<String>,
    /// Its author (hex).
    pub author: Option<String>,
    /// Made concurrently with another transition.
    pub conflict: bool,
}

impl EventData {
    /// The subscriber's view of a core event: committed transitions only (replays of the
    /// current state and lost claims are not transitions).
    pub fn from_event(e: &Event) -> Option<EventData> {
        match e {
            Event::Transition(t) if !t.replay => Some(EventData {
                story_id: t.story.as_str().to_string(),
                before: t.before.as_ref().map(|s| s.kind().as_str().to_string()),
                after: t.after.kind().as_str().to_string(),
                event: t.event.map(str::to_string),
                author: t.author.map(|a| a.to_hex()),
                conflict: t.conflict,
            }),
            _ => None,
        }
    }
}

/// One lifecycle event of [`ApiRequest::Events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeData {
    /// The envelope as JSON (`huskies_core::Envelope`, the wire form of `huskies events` and
    /// the NATS bridge), as text so that every route hands on the same bytes.
    pub envelope: String,
    /// The cursor that resumes just after this event.
    pub cursor: String,
}

/// One step of the event walk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsData {
    /// The events, in the log's Lamport order.
    pub events: Vec<EnvelopeData>,
    /// The cursor after the last op read (ops without events move it too).
    pub end: String,
    /// Ops read: 0 means the reader is at the end of the local log.
    pub ops_read: u64,
}

/// One step of a resumable export ([`ApiRequest::ExportChunk`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkData {
    /// The next bundle, hex-encoded; `None` once the export is complete.
    pub bundle: Option<String>,
    /// The cursor to send with the next request: `have` ...
    pub have: BTreeMap<String, u64>,
    /// ... and `evidence_sent`.
    pub evidence_sent: Option<u64>,
}

/// A node's ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoData {
    /// This node (hex).
    pub node_id: String,
    /// Its cluster (hex).
    pub cluster_id: String,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", content = "value", rename_all = "snake_case")]
pub enum ApiReply {
    /// [`ApiRequest::Info`]
    Info(InfoData),
    /// A story.
    Story(Box<StoryData>),
    /// Done, nothing to say.
    Done,
    /// [`ApiRequest::Events`]
    Events(EventsData),
    /// [`ApiRequest::EventCursor`]: a cursor's text form.
    Cursor(String),
    /// [`ApiRequest::Group`]: per command, `None` when committed.
    Group(Vec<Option<ApiError>>),
    /// [`ApiRequest::Stories`]
    Stories(Vec<StoryData>),
    /// [`ApiRequest::History`]
    History(Vec<TransitionData>),
    /// [`ApiRequest::Verify`]
    Verify(VerifyData),
    /// [`ApiRequest::Members`]
    Members(Vec<MemberData>),
    /// [`ApiRequest::VersionVector`]
    VersionVector(BTreeMap<String, u64>),
    /// [`ApiRequest::ExportSince`]: a bundle, hex-encoded.
    Bundle(String),
    /// [`ApiRequest::ExportChunk`]
    Chunk(ChunkData),
    /// [`ApiRequest::Ingest`]
    Ingested(IngestData),
    /// [`ApiRequest::Ticket`]
    Ticket(String),
    /// [`ApiRequest::Subscribe`]: events follow.
    Subscribed,
}

/// What [`serve`] needs besides the node.
#[derive(Clone, Debug, Default)]
pub struct ApiContext {
    /// The address a running daemon advertises (`None`: no daemon, so no tickets).
    pub advertise: Option<String>,
}

fn story_id(id: &str) -> Result<StoryId, ApiError> {
    Ok(StoryId::new(id)?)
}

/// Parses a hex version vector.
pub fn version_vector_from(map: &BTreeMap<String, u64>) -> Result<VersionVector, ApiError> {
    let mut vv = VersionVector::default();
    for (author, seq) in map {
        vv.set(NodeId::from_str(author)?, *seq);
    }
    Ok(vv)
}

/// A version vector as author hex → seq.
pub fn version_vector_to(vv: &VersionVector) -> BTreeMap<String, u64> {
    vv.iter().map(|(a, s)| (a.to_hex(), *s)).collect()
}

/// Runs one request on `node` at `now`. Everything a host can ask of a node goes through
/// here, wherever the node lives.
pub fn serve(
    node: &mut Node,
    now: Timestamp,
    request: &ApiRequest,
    ctx: &ApiContext,
) -> Result<ApiReply, ApiError> {
    Ok(match request {
        ApiRequest::Info => ApiReply::Info(InfoData {
            node_id: node.node_id().to_hex(),
            cluster_id: node.cluster_id().to_hex(),
        }),
        ApiRequest::Execute { command } => {
            let cmd = command.to_core()?;
            node.execute(now, cmd)?;
            match command {
                ApiCommand::Remove { .. } => ApiReply::Done,
                _ => ApiReply::Story(Box::new(StoryData::from(
                    &node.story(&story_id(command.story())?, now)?,
                ))),
            }
        }
        ApiRequest::Group { commands } => {
            let mut results: Vec<Option<ApiError>> = Vec::with_capacity(commands.len());
            let mut cmds = Vec::with_capacity(commands.len());
            let mut slots = Vec::with_capacity(commands.len());
            for c in commands {
                match c.to_core() {
                    Ok(cmd) => {
                        slots.push(Some(cmds.len()));
                        cmds.push(cmd);
                    }
                    Err(e) => {
                        slots.push(None);
                        results.push(Some(e));
                    }
                }
            }
            let mut executed = node.execute_group(now, cmds)?.into_iter();
            let mut refused = results.into_iter();
            let results = slots
                .into_iter()
                .map(|slot| match slot {
                    Some(_) => executed.next().and_then(|r| r.err().map(ApiError::from)),
                    None => refused.next().flatten(),
                })
                .collect();
            ApiReply::Group(results)
        }
        ApiRequest::Story { id } => {
            ApiReply::Story(Box::new(StoryData::from(&node.story(&story_id(id)?, now)?)))
        }
        ApiRequest::Stories { stage } => {
            let stage = stage
                .as_deref()
                .map(|s| {
                    StageKind::parse(s).ok_or_else(|| {
                        let kinds: Vec<&str> = StageKind::ALL.iter().map(|k| k.as_str()).collect();
                        invalid(format!("unknown stage {s:?}; stages are: {}", kinds.join(", ")))
                    })
                })
                .transpose()?;
            ApiReply::Stories(node.stories(stage, now)?.iter().map(StoryData::from).collect())
        }
        ApiRequest::History { id } => ApiReply::History(
            node.history(&story_id(id)?)?
                .iter()
                .map(|t| TransitionData {
                    op_id: t.op_id.to_hex(),
                    author: t.author.to_hex(),
                    lamport: t.lamport,
                    from: t.from.kind().as_str().to_string(),
                    to: t.to.kind().as_str().to_string(),
                    event: t.event.name().to_string(),
                    concurrent: t.conflict,
                })
                .collect(),
        ),
        ApiRequest::Verify => {
            let r = node.verify(|_| {})?;
            ApiReply::Verify(VerifyData {
                ok: r.ok,
                ops: r.ops_checked,
                problems: r.problems,
            })
        }
        ApiRequest::Members => ApiReply::Members(
            node.members()
                .iter()
                .map(|m| MemberData {
                    node_id: m.node.to_hex(),
                    role: m.role.as_str().to_string(),
                    removed: m.removed,
                })
                .collect(),
        ),
        ApiRequest::VersionVector => ApiReply::VersionVector(version_vector_to(&node.version_vector())),
        ApiRequest::ExportSince { have } => {
            ApiReply::Bundle(hex::encode(node.export_since(&version_vector_from(have)?)?))
        }
        ApiRequest::ExportChunk {
            have,
            evidence_sent,
            max_bytes,
        } => {
            let cursor = huskies_core::ExportCursor {
                have: version_vector_from(have)?,
                evidence_sent: *evidence_sent,
            };
            let max_bytes = usize::try_from(*max_bytes).unwrap_or(usize::MAX);
            let mut chunks = node.export_chunks_from(&cursor, max_bytes)?;
            let bundle = chunks.next().transpose()?;
            let next = chunks.cursor();
            ApiReply::Chunk(ChunkData {
                bundle: bundle.map(hex::encode),
                have: version_vector_to(&next.have),
                evidence_sent: next.evidence_sent,
            })
        }
        ApiRequest::Ingest { bundle } => {
            let bytes = hex::decode(bundle).map_err(invalid)?;
            let r = node.ingest_bundle(&bytes)?;
            ApiReply::Ingested(IngestData {
                applied: r.applied as u64,
                duplicates: r.duplicates as u64,
                buffered: r.buffered as u64,
                rejected: r.rejected.iter().map(|x| x.reason.to_string()).collect(),
            })
        }
        ApiRequest::Ticket { ttl_secs } => {
            let Some(address) = ctx.advertise.clone() else {
                return Err(invalid(
                    "a join ticket names a running daemon's address: start a daemon on this home first",
                ));
            };
            ApiReply::Ticket(
                node.create_ticket(now, *ttl_secs, address, &mut rand_core::OsRng)?
                    .to_string(),
            )
        }
        ApiRequest::Events { since } => {
            let cursor: EventCursor = since.parse()?;
            let batch = huskies_core::events_after(node, &cursor, EVENTS_STEP_BYTES)?;
            let events = batch
                .events
                .iter()
                .map(|(env, after)| {
                    Ok(EnvelopeData {
                        envelope: serde_json::to_string(env)
                            .map_err(|e| ApiError::new(ApiErrorKind::Io, format!("an envelope: {e}")))?,
                        cursor: after.to_string(),
                    })
                })
                .collect::<Result<_, ApiError>>()?;
            ApiReply::Events(EventsData {
                events,
                end: batch.end.to_string(),
                ops_read: batch.ops_read as u64,
            })
        }
        ApiRequest::EventCursor => ApiReply::Cursor(EventCursor::at(node.version_vector()).to_string()),
        ApiRequest::Subscribe => {
            return Err(invalid(
                "subscribe streams events: use a subscription, not a single call",
            ))
        }
    })
}
