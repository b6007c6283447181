//! Ids from text: the validating constructors and `FromStr` of the id types, which fail
//! with the crate's [`Error`] (`invalid_argument`). Apart from `id.rs` so that the id types
//! depend on nothing that depends on them.

use std::str::FromStr;

use crate::error::Error;
use crate::id::{ClusterId, NodeId, OpId, StoryId};

macro_rules! hex_from_str {
    ($name:ident) => {
        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self, Error> {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(s.trim(), &mut bytes).map_err(|_| {
                    Error::InvalidArgument(format!(
                        "{} must be 64 hex characters, got {:?}",
                        stringify!($name),
                        s
                    ))
                })?;
                Ok(Self::from_bytes(bytes))
            }
        }
    };
}

hex_from_str!(NodeId);
hex_from_str!(ClusterId);
hex_from_str!(OpId);

impl StoryId {
    /// Validates and wraps a story id: 1 to [`crate::MAX_STORY_ID_LEN`] bytes of ASCII
    /// letters, digits, `_`, `-` and `.`.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        StoryId::checked(&id.into()).map_err(Error::InvalidArgument)
    }
}

impl FromStr for StoryId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        StoryId::new(s)
    }
}
