//! The huskies state layer: an Ed25519-signed CRDT op log with Lamport clocks and a typed
//! pipeline projection, persisted in sled.
//!
//! The core is synchronous and does no I/O beyond its home directory: it reads no clock
//! (callers pass `now`), no RNG (callers pass one), and opens no sockets. See
//! `ARCHITECTURE.md` for the map and its invariants, `docs/format.md` for the bytes.
//!
//! A [`Node`] keeps its store in sled ([`SledStore`]) unless it is made on another
//! [`Store`] with [`Node::init_with_backend`] / [`Node::open_with_backend`]:
//! [`MemoryStore`] for tests and tools, [`FailingStore`] to fail a chosen storage operation.
//!
//! ```
//! use std::time::SystemTime;
//! use huskies_core::{Command, ErrorKind, InitMode, Node, NodeConfig, PipelineEvent, StoryId, Timestamp};
//! # let dir = tempfile::tempdir().unwrap();
//! // `now` is always an argument: a host reads its clock, a test passes a fixed time.
//! let now = Timestamp::from_system_time(SystemTime::now());
//! let mut node = Node::init(dir.path(), InitMode::NewCluster { name: "demo".into() },
//!                           &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
//! let id = StoryId::new("42_fix_login")?;
//! node.execute(now, Command::add_story(id.clone(), "Fix login"))?;
//! node.execute(now, Command::event(id.clone(), PipelineEvent::DepsMet))?;
//! assert_eq!(node.story(&id, now)?.stage.kind().as_str(), "coding");
//!
//! // Every error has a stable kind (the CLI contract's names).
//! let err = node.execute(now, Command::event(id, PipelineEvent::Accepted)).unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidTransition);
//! assert_eq!(err.kind().as_str(), "invalid_transition");
//! # Ok::<(), huskies_core::Error>(())
//! ```
//!
//! Runnable programs are in `core/examples/` (`cargo run -p huskies-core --example
//! quick_start`; also `two_nodes_bundles`, `join_cluster`, `subscribe`,
//! `streaming_catch_up`). Large histories move as bounded bundles: [`Node::export_chunks`]
//! and [`Node::import_reader`].

#![deny(missing_docs)]

mod builders;
mod bundle;
mod clock;
mod codec;
mod envelope;
mod error;
mod event;
mod execution;
mod export;
#[cfg(feature = "bench")]
pub mod floor;
mod home;
mod id;
mod id_text;
mod import;
mod journal;
mod key;
mod keyspace;
mod mark;
mod merge;
mod node;
mod op;
mod op_format;
mod oplog;
mod payload;
mod pipeline;
mod policy;
mod projection;
mod record;
mod reject;
mod storage;
pub mod sync;
mod ticket;
mod time;
mod version;
mod view;

pub use builders::NewStory;
pub use bundle::{
    decode_bundle, encode_bundle, encode_bundle_bytes, read_bundle, split_bundles, BUNDLE_FRAME_BYTES,
    BUNDLE_HEADER_BYTES, MIN_BUNDLE_BYTES,
};
pub use clock::{ClockJump, LamportClock, MAX_LAMPORT_JUMP};
pub use envelope::{
    cluster_subjects, event_id, events_after, execution_signal, fork_signals, op_envelopes, signals,
    stage_json, stage_signals, subject_token, Attributes, Envelope, EventBatch, EventCursor, EventType,
    TransitionFacts, ENVELOPE_VERSION, PUBLISHER, SIGNAL_STAGES, SUBJECT_ROOT,
};
pub use error::{Error, ErrorKind, LockHolder};
pub use event::{Event, Subscription, TransitionEvent};
pub use execution::{apply_execution_event, ExecutionEvent, ExecutionState, InvalidExecutionEvent};
pub use export::{ExportChunks, ExportCursor, EXPORT_BUNDLE_BYTES};
pub use id::{ClusterId, NodeId, OpId, StoryId, MAX_STORY_ID_LEN};
pub use import::{check_bundle_stream, BundleCheck, IMPORT_CHUNK_OPS};
pub use key::NodeKey;
pub use keyspace::STORE_FORMAT_VERSION;
pub use node::{
    Command, GroupResult, IngestReport, InitMode, Node, NodeConfig, Receipt, Rejection, PARALLEL_SIGN_MIN,
};
pub use op::{
    derive_cluster_id, verify_ops, DecodeError, OpBytes, OpContent, SignedOp, UnverifiedOp, VerifyError,
    MAX_OP_BYTES, OP_FORMAT_VERSION, SIGNING_DOMAIN,
};
pub use oplog::SEGMENT_MAX_OPS;
pub use payload::{
    Payload, Role, StoryField, MAX_BODY_BYTES, MAX_DEPENDS_ON, MAX_SEEN_AUTHORS, MAX_TEXT_BYTES, MAX_TTL_SECS,
};
pub use pipeline::{
    allowed_events, is_merge_failure_kind, transition, ArchiveReason, EventArgError, EventArgs, EventKind,
    InvalidTransition, PipelineEvent, Stage, StageKind, UnknownEvent, UnknownStage, MERGE_FAILURE_KINDS,
};
pub use policy::{policy_actions, policy_leader, PolicyAction, PolicyConfig, PolicyDue, PolicySchedule};
pub use projection::{Lease, Stamp};
pub use reject::RejectReason;
pub use storage::{
    CompactionOutcome, CompactionPolicy, FailPlan, FailingIter, FailingStore, MemoryBatch, MemoryStore,
    SledBatch, SledIter, SledStore, Store, StoreContents, StoreOp, WriteBatch, DEFAULT_STORE_CACHE_BYTES,
};
pub use time::Timestamp;
pub use version::VersionVector;

/// The RNG traits the core takes (`rand_core` 0.6, with its `getrandom` feature), re-exported
/// so a caller needs no dependency of its own: pass `&mut huskies_core::rand_core::OsRng`.
/// A caller that depends on `rand_core` itself must pick 0.6 (`rand_core = { version = "0.6",
/// features = ["getrandom"] }`); later versions are other, incompatible traits.
pub use rand_core;
pub use view::{
    ClaimStatus, Conflict, Creation, ForkInfo, LostClaim, Member, NodeInfo, OpSummary, Story, Transition,
    VerifyReport,
};
