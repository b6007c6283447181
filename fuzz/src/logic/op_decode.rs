//! `op_decode`: arbitrary bytes into the op decoder. Whatever is accepted is canonical: its
//! signed bytes are exactly the input, its content re-signs to the same content bytes (so
//! one op has one id), and a decoded op's id and content survive a second decode.

use huskies_core::{DecodeError, UnverifiedOp, MAX_OP_BYTES};

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    match UnverifiedOp::decode(data) {
        Ok(op) => {
            assert!(data.len() <= MAX_OP_BYTES, "accepted an op over the size limit");
            // Decode again from the same bytes: same id, same content (the decoder keeps no
            // state and the id is a function of the bytes).
            let again = UnverifiedOp::decode(data).expect("accepted bytes decode twice");
            assert_eq!(again.id(), op.id());
            assert_eq!(again.content(), op.content());
            // Re-encode: the content's canonical encoding must be the received content
            // bytes. `content_len` u32 LE, then content, then the 64-byte signature.
            let content_len = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
            let content_bytes = &data[4..4 + content_len];
            let reencoded = postcard_encode(op.content());
            assert_eq!(
                reencoded, content_bytes,
                "accepted op content is not the canonical encoding of what it decodes to"
            );
            assert_eq!(
                4 + content_len + 64,
                data.len(),
                "accepted op with trailing bytes"
            );
            // The content passes the field checks the signer applies.
            let c = op.content();
            assert!(c.seq >= 1 && c.lamport >= 1);
            assert_eq!(c.seq == 1, c.prev.is_none());
            // Verification may fail (arbitrary signature) but must fail typed, not panic.
            let _ = op.verify();
        }
        Err(e) => {
            // Every refusal is one of the typed reasons with a message.
            assert!(!e.to_string().is_empty());
            if let DecodeError::TooLarge(n) = e {
                assert!(n > MAX_OP_BYTES);
            }
        }
    }
}

/// The content bytes the signer would produce: postcard of `OpContent` (docs/format.md).
fn postcard_encode(c: &huskies_core::OpContent) -> Vec<u8> {
    postcard::to_allocvec(c).expect("op content encodes")
}
