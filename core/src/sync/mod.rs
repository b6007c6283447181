//! Replication between nodes, as a sans-IO protocol: frames and `now` in, frames, events
//! and timeouts out. No sockets, no tokio, no clock reads; the daemon is a thin driver.
//! See `docs/protocol.md`.

mod duplicate;
mod message;
mod session;

pub use crate::ticket::Ticket;
pub use duplicate::{keep_connection, HeldConnection, KeepConnection, Opener};
pub use message::{Message, RefuseCode, PROTOCOL_VERSION};
pub use session::{Session, SessionConfig, SessionEvent, SessionOptions, SyncError};
