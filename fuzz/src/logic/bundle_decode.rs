//! `bundle_decode`: arbitrary bytes as an export bundle. A bundle that frames re-encodes:
//! the ops that decoded, packed again, give back the input whenever every op decoded; and
//! the input's op count is what came out.

use huskies_core::{decode_bundle, ErrorKind, MAX_OP_BYTES};

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    match decode_bundle(data) {
        Ok(ops) => {
            assert!(data.len() >= 9);
            let declared = u32::from_le_bytes(data[5..9].try_into().expect("4 bytes")) as usize;
            assert_eq!(ops.len(), declared, "bundle op count differs from its header");
            // Re-frame each op's bytes: all of them decoded or not, the framing is the input.
            let mut rest = &data[9..];
            let mut rebuilt = data[..9].to_vec();
            for r in &ops {
                let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
                assert!(len <= MAX_OP_BYTES);
                let op_bytes = &rest[4..4 + len];
                if let Ok(op) = r {
                    // A decoded op is the op the op decoder gives for its bytes.
                    let alone =
                        huskies_core::UnverifiedOp::decode(op_bytes).expect("same bytes decode alone");
                    assert_eq!(alone.id(), op.id());
                }
                rebuilt.extend_from_slice(&rest[..4 + len]);
                rest = &rest[4 + len..];
            }
            assert!(rest.is_empty(), "accepted a bundle with trailing bytes");
            assert_eq!(rebuilt, data);
        }
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::InvalidArgument,
                "bundle refusal is not typed: {e}"
            );
        }
    }
}
