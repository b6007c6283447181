//! Errors. One umbrella [`Error`] whose [`ErrorKind`] maps onto the CLI contract's kinds.

use std::io;
use std::path::PathBuf;

use crate::execution::InvalidExecutionEvent;
use crate::id::{NodeId, StoryId};
use crate::op::DecodeError;
use crate::pipeline::InvalidTransition;
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
    /// Another process owns the home.
    #[error("home {0} is in use by another process (a running daemon?)")]
    HomeLocked(PathBuf),
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
}

impl Error {
    /// The contract's kind for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Error::InvalidTransition { .. } | Error::InvalidExecution { .. } => ErrorKind::InvalidTransition,
            Error::InvalidArgument(_) | Error::Decode(_) => ErrorKind::InvalidArgument,
            Error::ClaimConflict { .. } => ErrorKind::ClaimConflict,
            Error::HomeNotFound(_) => ErrorKind::HomeNotFound,
            Error::HomeLocked(_) => ErrorKind::HomeLocked,
            Error::Corrupt(_) => ErrorKind::Corrupt,
            Error::Io { .. } => ErrorKind::Io,
            Error::Unauthorized(_) => ErrorKind::Unauthorized,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
