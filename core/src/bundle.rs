//! Bundles: signed ops in one byte string, for export/import and air-gapped transfer.
//!
//! Layout: magic `HSKB` | version u8 (1) | op count u32 LE | then per op: length u32 LE and
//! the op's signed bytes. A *bundle stream* (what `huskies export` writes and
//! [`crate::Node::export_chunks`] yields piece by piece) is one or more bundles back to back;
//! [`split_bundles`] and [`read_bundle`] take it apart again.

use std::io::Read;

use crate::error::Error;
use crate::op::{DecodeError, SignedOp, UnverifiedOp, MAX_OP_BYTES};

const MAGIC: &[u8; 4] = b"HSKB";
const VERSION: u8 = 1;

/// Bytes of a bundle's header: magic, version and op count.
pub const BUNDLE_HEADER_BYTES: usize = 9;

/// Bytes each op adds to a bundle besides its own: its length prefix.
pub const BUNDLE_FRAME_BYTES: usize = 4;

/// The smallest `max_bytes` a bounded export accepts: one bundle holding one op of the
/// largest size ([`MAX_OP_BYTES`]), so that every op fits in some bundle.
pub const MIN_BUNDLE_BYTES: usize = BUNDLE_HEADER_BYTES + BUNDLE_FRAME_BYTES + MAX_OP_BYTES;

/// Packs ops into a bundle.
pub fn encode_bundle<'a>(ops: impl IntoIterator<Item = &'a SignedOp>) -> Vec<u8> {
    encode_bundle_bytes(ops.into_iter().map(SignedOp::bytes))
}

/// Packs signed op bytes (each at most [`MAX_OP_BYTES`], at most `u32::MAX` of them) into a
/// bundle: what [`encode_bundle`] does for ops already in their stored form, e.g. the
/// [`crate::OpBytes`] that [`crate::Node::ops_for_sync`] reads, without decoding them.
pub fn encode_bundle_bytes<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut n = 0u32;
    for op in ops {
        out.extend_from_slice(&(op.len() as u32).to_le_bytes());
        out.extend_from_slice(op);
        n += 1;
    }
    out[5..9].copy_from_slice(&n.to_le_bytes());
    out
}

/// One bundle holding the ops of `bundles` (each well framed, as this crate made them), in
/// order.
pub(crate) fn join_bundles(bundles: &[Vec<u8>]) -> Vec<u8> {
    let body: usize = bundles.iter().map(|b| b.len() - BUNDLE_HEADER_BYTES).sum();
    let mut out = Vec::with_capacity(BUNDLE_HEADER_BYTES + body);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let mut n = 0u32;
    for b in bundles {
        n += u32::from_le_bytes(b[5..9].try_into().expect("a framed bundle"));
    }
    out.extend_from_slice(&n.to_le_bytes());
    for b in bundles {
        out.extend_from_slice(&b[BUNDLE_HEADER_BYTES..]);
    }
    out
}

fn not_a_bundle(why: String) -> Error {
    Error::InvalidArgument(format!("not a huskies op bundle: {why}"))
}

/// An op's length prefix, checked against [`MAX_OP_BYTES`] (`i`: the op's place, for the
/// message).
fn op_len(i: usize, prefix: [u8; BUNDLE_FRAME_BYTES]) -> Result<usize, Error> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_OP_BYTES {
        return Err(not_a_bundle(format!(
            "op {i} declares {len} bytes; the limit is {MAX_OP_BYTES}"
        )));
    }
    Ok(len)
}

/// Checks a bundle's header at the start of `bytes` and returns its op count.
fn check_header(bytes: &[u8]) -> Result<usize, Error> {
    if bytes.len() < BUNDLE_HEADER_BYTES || &bytes[..4] != MAGIC {
        return Err(not_a_bundle("missing the HSKB header".into()));
    }
    if bytes[4] != VERSION {
        return Err(not_a_bundle(format!(
            "bundle version {} is not supported",
            bytes[4]
        )));
    }
    Ok(u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize)
}

/// Checks one bundle's header and framing at the start of `bytes` (ops are not decoded) and
/// returns its length and op count.
fn frame_bundle(bytes: &[u8]) -> Result<(usize, usize), Error> {
    let n = check_header(bytes)?;
    let mut at = BUNDLE_HEADER_BYTES;
    for i in 0..n {
        if bytes.len() - at < BUNDLE_FRAME_BYTES {
            return Err(not_a_bundle(format!("truncated before op {i}")));
        }
        let len = op_len(i, bytes[at..at + 4].try_into().expect("4 bytes"))?;
        if bytes.len() - at - BUNDLE_FRAME_BYTES < len {
            return Err(not_a_bundle(format!("truncated inside op {i}")));
        }
        at += BUNDLE_FRAME_BYTES + len;
    }
    Ok((at, n))
}

/// Splits a bundle stream (one or more bundles back to back) into its bundles, checking the
/// framing of every one first: a broken stream is an error before anything is returned.
///
/// ```
/// use huskies_core::{encode_bundle, split_bundles};
/// let mut stream = encode_bundle([]);
/// stream.extend(encode_bundle([]));
/// assert_eq!(split_bundles(&stream)?.len(), 2);
/// assert!(split_bundles(&stream[..stream.len() - 1]).is_err());
/// # Ok::<(), huskies_core::Error>(())
/// ```
pub fn split_bundles(mut bytes: &[u8]) -> Result<Vec<&[u8]>, Error> {
    let mut out = Vec::new();
    loop {
        let (len, _) = frame_bundle(bytes)?;
        out.push(&bytes[..len]);
        bytes = &bytes[len..];
        if bytes.is_empty() {
            return Ok(out);
        }
    }
}

/// Reads the next bundle of a bundle stream from `r`: `Ok(None)` at a clean end of the
/// stream, the bundle's bytes (accepted by [`crate::Node::ingest_bundle`]) otherwise. Holds
/// one bundle in memory, so a host can import an export of any size in bounded memory.
/// The core does no I/O of its own: `r` is the caller's (a file, a pipe, a slice).
pub fn read_bundle(r: &mut impl Read) -> Result<Option<Vec<u8>>, Error> {
    let io = |e: std::io::Error| Error::io("reading a bundle", e);
    let mut header = [0u8; BUNDLE_HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(not_a_bundle("truncated inside the header".into())),
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    let n = check_header(&header)?;
    let mut out = header.to_vec();
    let truncated = |e: std::io::Error, i: usize| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => not_a_bundle(format!("truncated inside op {i}")),
        _ => io(e),
    };
    for i in 0..n {
        let mut len = [0u8; BUNDLE_FRAME_BYTES];
        r.read_exact(&mut len).map_err(|e| truncated(e, i))?;
        let n_bytes = op_len(i, len)?;
        out.extend_from_slice(&len);
        let at = out.len();
        out.resize(at + n_bytes, 0);
        r.read_exact(&mut out[at..]).map_err(|e| truncated(e, i))?;
    }
    Ok(Some(out))
}

/// Unpacks a bundle. A broken frame fails the whole bundle (we cannot tell where the next
/// op starts); an op that frames but does not decode is returned as its error.
pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<Result<UnverifiedOp, DecodeError>>, Error> {
    let (len, n) = frame_bundle(bytes)?;
    if len != bytes.len() {
        return Err(not_a_bundle(format!("{} trailing bytes", bytes.len() - len)));
    }
    let mut rest = &bytes[BUNDLE_HEADER_BYTES..];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("framed")) as usize;
        out.push(UnverifiedOp::decode(&rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    Ok(out)
}
