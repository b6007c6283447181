//! Identifiers: nodes, clusters, ops and stories.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Defines a 32-byte identifier shown as lowercase hex.
macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for human output.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

    };
}

hex_id!(
    /// A node's identity: its Ed25519 public key.
    NodeId
);
hex_id!(
    /// A cluster's identity: derived from its genesis (name, first admin, nonce).
    ClusterId
);
hex_id!(
    /// An op's identity: the BLAKE3 hash of its signed content bytes.
    OpId
);

/// Longest story id accepted, in bytes.
pub const MAX_STORY_ID_LEN: usize = 128;

/// A story id such as `42_fix_login`: 1 to [`MAX_STORY_ID_LEN`] bytes of ASCII letters,
/// digits, `_`, `-` and `.`, so it is safe in file names, URLs and shell scripts. A story
/// created by a local command must also start with a letter or a digit (never `.`, `..`
/// or `-x`); ids that arrive in ops from peers are held to the first rule only.
///
/// Shared text: records, events and payloads each hold the id, and a clone only counts a
/// reference.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoryId(Arc<str>);

impl StoryId {
    /// Checks a story id's text: `Err` says what is wrong with it.
    pub(crate) fn check(id: &str) -> Result<(), String> {
        if id.is_empty() || id.len() > MAX_STORY_ID_LEN {
            return Err(format!(
                "story id must be 1 to {MAX_STORY_ID_LEN} bytes long, got {} bytes",
                id.len()
            ));
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(format!(
                "story id {id:?} contains {bad:?}; use letters, digits, '_', '-' and '.'"
            ));
        }
        Ok(())
    }

    /// The stricter grammar for the id of a story created by a local command: it must also
    /// start with a letter or a digit, so that it is never `.`, `..`, a hidden file name or
    /// something a shell or an argument parser reads as an option (`-x`). In all:
    /// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_STORY_ID_LEN`] bytes. Ids in ops from
    /// peers are held only to [`StoryId::check`] (an op's validity must not depend on the
    /// version judging it).
    pub(crate) fn check_new(&self) -> Result<(), String> {
        match self.0.chars().next() {
            Some(c) if c.is_ascii_alphanumeric() => Ok(()),
            _ => Err(format!(
                "story id {:?} must start with a letter or a digit (then letters, digits, '_', '-' and '.')",
                self.as_str()
            )),
        }
    }

    /// A valid id standing for any story, where only the shape of a value matters (the
    /// pipeline's `allowed_events` tries each event with placeholder arguments).
    pub(crate) fn placeholder() -> Self {
        Self("x".into())
    }

    /// Wraps text that passed [`StoryId::check`].
    pub(crate) fn checked(id: &str) -> Result<Self, String> {
        Self::check(id)?;
        Ok(Self(id.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for StoryId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StoryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Takes the text as the input lends it where it can (no `String` in between).
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = StoryId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a story id")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StoryId, E> {
                StoryId::checked(s).map_err(E::custom)
            }
        }
        d.deserialize_str(Text)
    }
}

impl fmt::Display for StoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoryId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn story_ids_are_validated() {
        assert!(StoryId::new("42_fix_login").is_ok());
        assert!(StoryId::new("a.b-c").is_ok());
        assert!(StoryId::new("").is_err());
        assert!(StoryId::new("has space").is_err());
        assert!(StoryId::new("x".repeat(MAX_STORY_ID_LEN + 1)).is_err());
        let bytes = postcard::to_allocvec(&"bad/slash").unwrap();
        assert!(postcard::from_bytes::<StoryId>(&bytes).is_err());
    }

    #[test]
    fn hex_ids_round_trip() {
        let id = NodeId::from_bytes([0xab; 32]);
        assert_eq!(id.to_hex().parse::<NodeId>().unwrap(), id);
        assert!("zz".parse::<NodeId>().is_err());
    }
}
