//! The frames of the sync protocol. Each WebSocket binary message is one frame: the
//! postcard encoding of [`Message`]. See `docs/protocol.md`.

use serde::{Deserialize, Serialize};

use crate::id::{ClusterId, NodeId, OpId};
use crate::version::VersionVector;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Why a side refuses the other (sent in [`Message::Refuse`] so the other side can show it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseCode {
    /// Different protocol version.
    Version,
    /// Different cluster.
    Cluster,
    /// The peer's key is not a member (unknown, removed or quarantined).
    NotMember,
    /// The handshake proof did not verify.
    BadProof,
    /// The join ticket is unknown, used or expired.
    Ticket,
    /// A frame out of order, oversized or undecodable.
    Protocol,
    /// The handshake took too long, or the peer stopped reading.
    Timeout,
    /// This side is shutting down.
    Shutdown,
}

impl RefuseCode {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseCode::Version => "version",
            RefuseCode::Cluster => "cluster",
            RefuseCode::NotMember => "not_member",
            RefuseCode::BadProof => "bad_proof",
            RefuseCode::Ticket => "ticket",
            RefuseCode::Protocol => "protocol",
            RefuseCode::Timeout => "timeout",
            RefuseCode::Shutdown => "shutdown",
        }
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First frame from each side.
    Hello {
        /// [`PROTOCOL_VERSION`].
        protocol: u16,
        /// The sender's cluster.
        cluster: ClusterId,
        /// The sender's node id.
        node: NodeId,
        /// Random bytes the other side must sign.
        challenge: [u8; 32],
        /// A one-time join ticket secret, presented by a node that is not a member yet.
        ticket: Option<[u8; 32]>,
    },
    /// Second frame: proof of key possession and what the sender holds.
    Auth {
        /// Ed25519 signature over the auth statement (see `docs/protocol.md`).
        proof: [[u8; 32]; 2],
        /// The sender's version vector.
        have: VersionVector,
        /// The id of the op at each `have` entry. A receiver that holds a different op for
        /// that seq sends its own back: an author that equivocated on its newest op is caught
        /// even though neither side lacks anything by version vector.
        heads: Vec<(NodeId, OpId)>,
    },
    /// Signed ops the receiver lacks, in Lamport order.
    Ops {
        /// Each op's signed bytes.
        #[serde(with = "op_list")]
        ops: Vec<Vec<u8>>,
    },
    /// What the sender holds now, and how many `Ops` frames it has merged in this session:
    /// acknowledges frames (cumulatively) and doubles as a keepalive.
    Ack {
        /// The sender's version vector.
        have: VersionVector,
        /// `Ops` frames received and merged so far in this session.
        frames: u64,
    },
    /// The sender ends the session.
    Refuse {
        /// Why.
        code: RefuseCode,
        /// In words.
        reason: String,
    },
}

impl Message {
    /// The frame bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("messages always encode")
    }

    /// Decodes a frame: exactly one message, nothing after it (a frame is one message; bytes
    /// past its end would be silently dropped otherwise).
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        let (msg, rest) = postcard::take_from_bytes(bytes).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!(
                "{} trailing bytes after the {} message",
                rest.len(),
                Message::name(&msg)
            ));
        }
        Ok(msg)
    }

    /// Name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Auth { .. } => "auth",
            Message::Ops { .. } => "ops",
            Message::Ack { .. } => "ack",
            Message::Refuse { .. } => "refuse",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_exactly_one_message() {
        let frame = Message::Refuse {
            code: RefuseCode::Version,
            reason: String::new(),
        }
        .encode();
        assert!(Message::decode(&frame).is_ok());
        // Found by the frame_decode fuzz target (fuzz/regressions/frame_decode/).
        let mut longer = frame.clone();
        longer.push(0);
        let err = Message::decode(&longer).unwrap_err();
        assert!(err.contains("1 trailing bytes"), "{err}");
    }
}

/// The ops of an `Ops` frame as a sequence of byte strings. In postcard a byte string is
/// its length and its bytes, exactly what a `Vec<u8>` sequence encodes to, so the wire is
/// unchanged; but decoding copies each op in one piece instead of visiting it byte by byte
/// (which was most of a busy receiver's decoding time).
mod op_list {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    struct Bytes<'a>(&'a [u8]);

    impl serde::Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct Owned(Vec<u8>);

    impl<'de> serde::Deserialize<'de> for Owned {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Owned;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an op's bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Owned, E> {
                    Ok(Owned(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Owned, E> {
                    Ok(Owned(v))
                }
            }
            d.deserialize_bytes(V)
        }
    }

    pub fn serialize<S: Serializer>(ops: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(ops.len()))?;
        for op in ops {
            seq.serialize_element(&Bytes(op))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vec<Vec<u8>>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of ops")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // The declared length is untrusted: cap what is reserved up front.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(Owned(op)) = seq.next_element()? {
                    out.push(op);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod op_list_tests {
    use super::Message;

    /// The ops encode as a `Vec<Vec<u8>>` would (the wire did not change), and decode back.
    #[test]
    fn ops_frames_keep_their_encoding() {
        #[derive(serde::Serialize)]
        enum Plain {
            #[allow(dead_code)]
            Hello(u8),
            #[allow(dead_code)]
            Auth(u8),
            Ops {
                ops: Vec<Vec<u8>>,
            },
        }
        let ops = vec![vec![], vec![7u8; 300], (0..=255u8).collect::<Vec<_>>()];
        let frame = Message::Ops { ops: ops.clone() }.encode();
        let plain = postcard::to_allocvec(&Plain::Ops { ops: ops.clone() }).unwrap();
        assert_eq!(frame, plain);
        assert_eq!(Message::decode(&frame).unwrap(), Message::Ops { ops });
    }
}
