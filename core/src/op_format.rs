//! The op format's version and size limit, and why op bytes are refused: the vocabulary
//! that errors and rejection reasons name, kept apart from op decoding so that the error
//! types depend on nothing that returns them.

use crate::id::NodeId;

/// The op format this build writes and reads.
pub const OP_FORMAT_VERSION: u8 = 1;
/// Largest signed op accepted, in bytes: a story body of 32 KiB plus headroom. Anything
/// larger is refused before it is decoded.
pub const MAX_OP_BYTES: usize = 64 * 1024;
/// Why op bytes were refused before any signature check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the fixed framing.
    #[error("op is truncated ({0} bytes)")]
    Truncated(usize),
    /// Over [`MAX_OP_BYTES`].
    #[error("op is {0} bytes; the limit is {MAX_OP_BYTES}")]
    TooLarge(usize),
    /// The length prefix does not match the bytes.
    #[error("op length prefix says {declared} content bytes but {actual} are present")]
    LengthMismatch {
        /// From the prefix.
        declared: usize,
        /// Present.
        actual: usize,
    },
    /// A format version this build does not read.
    #[error("op format version {0} is not supported (this build reads version {OP_FORMAT_VERSION})")]
    UnsupportedVersion(u8),
    /// Content that does not decode.
    #[error("op content does not decode: {0}")]
    Malformed(String),
    /// Content that decodes but is not in canonical form (would give one op two ids).
    #[error("op content is not canonically encoded")]
    NonCanonical,
    /// A field out of range or inconsistent (e.g. `prev` present on seq 1).
    #[error("op is invalid: {0}")]
    Invalid(String),
}

/// Why a decoded op failed signature verification.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The author field is not a usable Ed25519 key (does not decode, or is weak).
    #[error("author {0} is not a valid Ed25519 public key")]
    BadAuthorKey(NodeId),
    /// The signature does not verify under the author's key.
    #[error("signature does not verify for author {0}")]
    BadSignature(NodeId),
}
