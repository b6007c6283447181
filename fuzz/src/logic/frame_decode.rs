//! `frame_decode`: arbitrary bytes as a sync frame. A frame that decodes is one message:
//! encoding it gives bytes that decode to the same message and encode to themselves, no
//! longer than the input; the input holds nothing after the message.

use huskies_core::sync::Message;

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    match Message::decode(data) {
        Ok(msg) => {
            let bytes = msg.encode();
            let again = Message::decode(&bytes).expect("an encoded message decodes");
            assert_eq!(again, msg, "message changed through encode/decode");
            assert_eq!(again.encode(), bytes, "encoding is not stable");
            assert!(
                bytes.len() <= data.len(),
                "the canonical encoding is longer than the input"
            );
            // postcard accepts overlong varints, so `bytes` may be shorter than `data`; but
            // the frame must end where the message ends: a message followed by anything is
            // not one frame.
            let mut trailing = data.to_vec();
            trailing.push(0);
            assert!(
                Message::decode(&trailing).is_err(),
                "a frame with a trailing byte after the message was accepted"
            );
            let _ = msg.name();
        }
        Err(e) => assert!(!e.is_empty(), "frame refusal without a reason"),
    }
}
