//! Why an op was not merged: [`RejectReason`], with a stable code for each reason.

use crate::clock::ClockJump;
use crate::id::{ClusterId, NodeId};
use crate::op_format::{DecodeError, VerifyError};

/// Why one remote op was not merged. Nothing of a rejected op is stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The bytes do not decode.
    #[error("{0}")]
    Malformed(#[from] DecodeError),
    /// The signature does not verify.
    #[error("{0}")]
    BadSignature(#[from] VerifyError),
    /// The op belongs to another cluster.
    #[error("op is for cluster {got}, this node is in cluster {expected}")]
    WrongCluster {
        /// Ours.
        expected: ClusterId,
        /// The op's.
        got: ClusterId,
    },
    /// The author is not a member (yet): unknown key.
    #[error("author {0} is not a member of this cluster")]
    UnknownAuthor(NodeId),
    /// The author equivocated and is quarantined.
    #[error("author {0} is quarantined for equivocation")]
    Quarantined(NodeId),
    /// The author was removed or rotated its key before this op.
    #[error("op {seq} of author {author} comes after its membership ended at op {cutoff}")]
    Voided {
        /// Author.
        author: NodeId,
        /// The op's seq.
        seq: u64,
        /// The last valid seq.
        cutoff: u64,
    },
    /// The op's Lamport timestamp is absurdly far ahead.
    #[error("{0}")]
    LamportJump(#[from] ClockJump),
    /// The author's Lamport timestamps must increase along its chain.
    #[error("lamport {lamport} does not increase on the author's previous op ({previous})")]
    LamportNotIncreasing {
        /// The op's.
        lamport: u64,
        /// The previous op's.
        previous: u64,
    },
    /// The author may not do this (e.g. a non-admin adding members).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The payload contradicts itself (e.g. a transition the table does not allow).
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// Too many out-of-order ops are already waiting for missing predecessors.
    #[error("out-of-order buffer is full")]
    BufferFull,
}

impl RejectReason {
    /// A stable name for the reason, for metrics and logs (`snake_case`; never changes for
    /// a reason once released). Exhaustive on purpose: a new reason must get its own code.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::Malformed(_) => "malformed",
            RejectReason::BadSignature(_) => "bad_signature",
            RejectReason::WrongCluster { .. } => "wrong_cluster",
            RejectReason::UnknownAuthor(_) => "unknown_author",
            RejectReason::Quarantined(_) => "quarantined",
            RejectReason::Voided { .. } => "voided",
            RejectReason::LamportJump(_) => "lamport_jump",
            RejectReason::LamportNotIncreasing { .. } => "lamport_not_increasing",
            RejectReason::Unauthorized(_) => "unauthorized",
            RejectReason::InvalidPayload(_) => "invalid_payload",
            RejectReason::BufferFull => "buffer_full",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_names() {
        let node = NodeId::from_bytes([1; 32]);
        let all = [
            RejectReason::Malformed(DecodeError::NonCanonical),
            RejectReason::BadSignature(VerifyError::BadSignature(node)),
            RejectReason::WrongCluster {
                expected: ClusterId::from_bytes([1; 32]),
                got: ClusterId::from_bytes([2; 32]),
            },
            RejectReason::UnknownAuthor(node),
            RejectReason::Quarantined(node),
            RejectReason::Voided {
                author: node,
                seq: 3,
                cutoff: 2,
            },
            RejectReason::LamportJump(ClockJump {
                remote: u64::MAX,
                local: 1,
            }),
            RejectReason::LamportNotIncreasing {
                lamport: 1,
                previous: 2,
            },
            RejectReason::Unauthorized("x".into()),
            RejectReason::InvalidPayload("x".into()),
            RejectReason::BufferFull,
        ];
        let codes: std::collections::BTreeSet<&str> = all.iter().map(RejectReason::code).collect();
        assert_eq!(codes.len(), all.len(), "{codes:?}");
        for code in codes {
            assert!(code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
        }
    }
}
