//! Bundles: signed ops in one byte string, for export/import and air-gapped transfer.
//!
//! Layout: magic `HSKB` | version u8 (1) | op count u32 LE | then per op: length u32 LE and
//! the op's signed bytes.

use crate::error::Error;
use crate::op::{DecodeError, SignedOp, UnverifiedOp, MAX_OP_BYTES};

const MAGIC: &[u8; 4] = b"HSKB";
const VERSION: u8 = 1;

/// Packs ops into a bundle.
pub fn encode_bundle<'a>(ops: impl IntoIterator<Item = &'a SignedOp>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut n = 0u32;
    for op in ops {
        body.extend_from_slice(&(op.bytes().len() as u32).to_le_bytes());
        body.extend_from_slice(op.bytes());
        n += 1;
    }
    let mut out = Vec::with_capacity(9 + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Unpacks a bundle. A broken frame fails the whole bundle (we cannot tell where the next
/// op starts); an op that frames but does not decode is returned as its error.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Result<UnverifiedOp, DecodeError>>, Error> {
    let bad = |why: String| Error::InvalidArgument(format!("not a huskies op bundle: {why}"));
    if bytes.len() < 9 || &bytes[..4] != MAGIC {
        return Err(bad("missing the HSKB header".into()));
    }
    if bytes[4] != VERSION {
        return Err(bad(format!("bundle version {} is not supported", bytes[4])));
    }
    let n = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
    let mut rest = &bytes[9..];
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for i in 0..n {
        if rest.len() < 4 {
            return Err(bad(format!("truncated before op {i}")));
        }
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_OP_BYTES {
            return Err(bad(format!(
                "op {i} declares {len} bytes; the limit is {MAX_OP_BYTES}"
            )));
        }
        if rest.len() < 4 + len {
            return Err(bad(format!("truncated inside op {i}")));
        }
        out.push(UnverifiedOp::decode(&rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} trailing bytes", rest.len())));
    }
    Ok(out)
}
