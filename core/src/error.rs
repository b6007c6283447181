//! Errors. One umbrella [`Error`] whose [`ErrorKind`] maps onto the CLI contract's kinds.

use std::io;
use std::path::PathBuf;

use crate::execution::InvalidExecutionEvent;
use crate::id::{NodeId, StoryId};
use crate::op_format::DecodeError;
use crate::pipeline::InvalidTransition;
use crate::reject::RejectReason;
use crate::time::Timestamp;

/// The contract's error kinds (`{"error": {"kind": ...}}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
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
    /// `network`
    Network,
}

impl ErrorKind {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InvalidTransition => "invalid_transition",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::ClaimConflict => "claim_conflict",
            ErrorKind::HomeNotFound => "home_not_found",
            ErrorKind::HomeLocked => "home_locked",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Io => "io",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Network => "network",
        }
    }
}

/// Everything the core can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something to be created exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The pipeline event is not allowed from the story's stage; nothing was written.
    #[error("story {story}: {source}")]
    InvalidTransition {
        /// The story.
        story: StoryId,
        /// What the table said.
        source: InvalidTransition,
    },
    /// The execution event is not allowed from this node's execution state.
    #[error("story {story}: {source}")]
    InvalidExecution {
        /// The story.
        story: StoryId,
        /// What the machine said.
        source: InvalidExecutionEvent,
    },
    /// An argument is malformed or out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// Another node holds a live claim (or the merge lock).
    #[error("{what} is held by node {holder} until {expires_at}")]
    ClaimConflict {
        /// The story id, or `merge lock`.
        what: String,
        /// The holder.
        holder: NodeId,
        /// When its lease runs out.
        expires_at: Timestamp,
    },
    /// No home at the path.
    #[error("no huskies home at {0}; run `huskies init` first")]
    HomeNotFound(PathBuf),
    /// Another process owns the home, and it has no daemon control socket: another CLI
    /// command, a program using the core, or a daemon starting or stopping.
    #[error("{}", .0.describe_process())]
    HomeLocked(Box<LockHolder>),
    /// Another process owns the home and `<home>/daemon.sock` exists: most likely a running
    /// `huskies daemon` (CLI commands reach it through that socket; a Rust program should
    /// go through the daemon too, or stop it).
    /// The holder names where the daemon listens when it has said so
    /// ([`LockHolder::listen`]).
    #[error("{}", .0.describe_daemon())]
    HomeLockedByDaemon(Box<LockHolder>),
    /// A `Node` of this same process already holds the home: use that one (one `Node` per
    /// home per process), or drop it first.
    #[error("home {0} is already open in this process: one Node per home; use that Node or drop it first")]
    HomeOpenInThisProcess(PathBuf),
    /// Stored data failed an integrity check, or a file is malformed.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// An I/O failure (including a full disk). Nothing was acknowledged.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The failure.
        source: io::Error,
    },
    /// The node may not do this (not a member, not an admin, a key file readable by others).
    #[error("{0}")]
    Unauthorized(String),
    /// Op bytes that do not decode.
    #[error("malformed op: {0}")]
    Decode(#[from] DecodeError),
    /// Admission refused an op this node was about to write (it is not a member, not an
    /// admin, or the payload is not valid); nothing was written. The same reasons as for
    /// a remote op, from the same rules.
    #[error("{0}")]
    Rejected(RejectReason),
    /// This node's store holds fewer ops of its own chain than it had acknowledged (sled
    /// recovered a damaged log by dropping its tail, or the store was replaced by an older
    /// copy). It writes nothing until a peer has sent the missing ops back.
    #[error(
        "this node's store holds {held} of the {acknowledged} ops of its own chain that it had \
         acknowledged (the store was damaged, or replaced by an older copy). It will not \
         write until a peer has sent the missing ops back (run `huskies daemon` with a \
         connection to the cluster): writing now would reuse sequence numbers and fork \
         its chain"
    )]
    OwnChainBehind {
        /// Ops of its own chain the store holds.
        held: u64,
        /// Ops of its own chain the node had acknowledged.
        acknowledged: u64,
    },
    /// The store was written in a format this build does not read (a newer build wrote
    /// it); nothing was changed.
    #[error(
        "store format {found} is not supported (this build reads formats 1 to {writes} and \
         writes {writes})"
    )]
    UnsupportedFormat {
        /// The store's format.
        found: u32,
        /// The format this build writes (and the newest it reads).
        writes: u32,
    },
    /// The Lamport clock reached its maximum; this node cannot write.
    #[error("the Lamport clock is exhausted; this node cannot write")]
    ClockExhausted,
}

impl Error {
    /// The contract's kind for this error: the stable name a host matches on or prints
    /// (the CLI's `{"error": {"kind", ...}}`), while the variant and message carry detail.
    ///
    /// ```
    /// use huskies_core::{ErrorKind, StoryId};
    /// let err = StoryId::new("no spaces").unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    /// assert_eq!(err.kind().as_str(), "invalid_argument");
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidTransition { .. } | Error::InvalidExecution { .. } => ErrorKind::InvalidTransition,
            Error::InvalidArgument(_) | Error::Decode(_) => ErrorKind::InvalidArgument,
            Error::ClaimConflict { .. } => ErrorKind::ClaimConflict,
            Error::HomeNotFound(_) => ErrorKind::HomeNotFound,
            Error::HomeLocked(_) | Error::HomeLockedByDaemon(_) | Error::HomeOpenInThisProcess(_) => {
                ErrorKind::HomeLocked
            }
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Io { .. } => ErrorKind::Io,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
            Error::Rejected(r) => match r {
                RejectReason::Malformed(_)
                | RejectReason::InvalidPayload(_)
                | RejectReason::LamportJump(_)
                | RejectReason::LamportNotIncreasing { .. }
                | RejectReason::BufferFull => ErrorKind::InvalidArgument,
                RejectReason::BadSignature(_)
                | RejectReason::WrongCluster { .. }
                | RejectReason::UnknownAuthor(_)
                | RejectReason::Quarantined(_)
                | RejectReason::Voided { .. }
                | RejectReason::Unauthorized(_) => ErrorKind::Unauthorized,
            },
            // The store cannot be written on (safely, or by this build): the contract's `corrupt`.
            Error::OwnChainBehind { .. } | Error::ClockExhausted | Error::UnsupportedFormat { .. } => {
                ErrorKind::Corrupt
            }
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Who holds a home's lock, as the holder wrote it into `<home>/LOCK` (lines `pid=N`,
/// and for a daemon `listen=ADDR` and `advertise=URL`): what a refused opener is told, so
/// that a person can find the holder, wait for it, or reach the daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHolder {
    /// The home.
    pub home: PathBuf,
    /// The holder's process id, when it wrote one (a holder that has just taken the lock
    /// may not have yet).
    pub pid: Option<u32>,
    /// Where the holder's daemon listens, when the holder is a running daemon.
    pub listen: Option<String>,
    /// The address the holder's daemon advertises to peers.
    pub advertise: Option<String>,
}

impl LockHolder {
    /// Whether the holder says it is a running daemon.
    pub fn is_daemon(&self) -> bool {
        self.listen.is_some()
    }

    /// `pid 1234`, or `pid unknown`.
    fn pid_text(&self) -> String {
        self.pid
            .map_or_else(|| "pid unknown".to_string(), |p| format!("pid {p}"))
    }

    /// The holder in words, for [`Error::HomeLocked`]: a process that is not a daemon.
    pub(crate) fn describe_process(&self) -> String {
        format!(
            "home {} is in use by another process ({}; not a daemon: another huskies command or a \
             program using the home)",
            self.home.display(),
            self.pid_text()
        )
    }

    /// The holder in words, for [`Error::HomeLockedByDaemon`].
    pub(crate) fn describe_daemon(&self) -> String {
        match (&self.listen, &self.advertise) {
            (Some(listen), advertise) => format!(
                "home {} is owned by a running daemon ({}, listening on {listen}{}); commands reach it \
                 through its control socket {}",
                self.home.display(),
                self.pid_text(),
                advertise
                    .as_deref()
                    .map(|a| format!(", advertised as {a}"))
                    .unwrap_or_default(),
                self.home.join("daemon.sock").display()
            ),
            (None, _) => format!(
                "home {} is in use by another process ({}), most likely a daemon starting or \
                 stopping (its control socket {} exists)",
                self.home.display(),
                self.pid_text(),
                self.home.join("daemon.sock").display()
            ),
        }
    }
}
