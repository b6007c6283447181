//! The op log: how signed ops are made into a chain, stored in segments, and read back.
//! The one writer of ops and fork evidence, and the one reader; both the node and the
//! benchmark's storage floor use it.
//!
//! An author's ops are stored as segments (see [`crate::keyspace`]), each a run of
//! consecutive signed ops with a checksum that every read checks: sealed segments under
//! `O` ‖ author index ‖ first seq, and the author's newest ops, written by small batches,
//! as an open run of small segments under `P` that is sealed into `O` once it holds
//! [`SEAL_OPS`] ops or [`SEAL_BYTES`] (see [`write_ops`]).

use crate::error::Error;
use crate::id::{ClusterId, NodeId, OpId};
use crate::key::NodeKey;
use crate::keyspace as key;
use crate::op::{peek_seq_lamport, OpBytes, OpContent, SignedOp, UnsignedOp, OP_FORMAT_VERSION};
use crate::payload::Payload;
use crate::storage::{Store, WriteBatch};
use crate::time::Timestamp;

/// Most ops in one stored segment; bounds the work to read one op back.
pub const SEGMENT_MAX_OPS: usize = 1024;
/// Segment layouts (see [`encode_segment`]).
const SEGMENT_V1: u8 = 1;
const SEGMENT_V2: u8 = 2;
/// Layout byte, op count and checksum.
const SEGMENT_HEADER: usize = 1 + 4 + 32;
const SEGMENT_HASH_CONTEXT: &str = "huskies 2026-11 segment checksum v1";

/// The author's open run (`P`): its first seq, how many ops it holds and its stored bytes;
/// `None` when there is none. What the writer needs to extend or seal it (kept in the
/// author's record).
pub(crate) type SegmentTail = Option<(u64, u32, u32)>;

/// Signs the op that follows `head` (seq, id) on `key`'s chain (what [`build_next`] builds,
/// signed at once). The benchmark floor calls it.
#[cfg(any(test, feature = "bench"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sign_next(
    key: &NodeKey,
    cluster: ClusterId,
    head_seq: u64,
    head_id: Option<OpId>,
    lamport: u64,
    wall: Timestamp,
    payload: Payload,
) -> Result<SignedOp, Error> {
    build_next(key, cluster, head_seq, head_id, lamport, wall, payload).map(|op| op.sign(key))
}

/// Builds the op that follows `head` (seq, id) on `key`'s chain, unsigned: seq, `prev`,
/// Lamport time and id are final. The one place chained ops are made: the node's commands
/// and (through [`sign_next`]) the benchmark floor. Sign with [`UnsignedOp::sign`] or
/// [`sign_all`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_next(
    key: &NodeKey,
    cluster: ClusterId,
    head_seq: u64,
    head_id: Option<OpId>,
    lamport: u64,
    wall: Timestamp,
    payload: Payload,
) -> Result<UnsignedOp, Error> {
    debug_assert_eq!(
        head_seq == 0,
        head_id.is_none(),
        "a chain has a head id exactly when it has ops"
    );
    let content = OpContent {
        version: OP_FORMAT_VERSION,
        cluster,
        author: key.node_id(),
        seq: head_seq + 1,
        lamport,
        prev: head_id,
        wall,
        payload,
    };
    UnsignedOp::build(content, key).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Ops per unit of work when signing on several threads: small enough that a thread
/// descheduled on a loaded machine leaves little for the others to wait on, large enough
/// that handing a chunk over costs nothing next to signing it (~1 ms).
pub(crate) const SIGN_CHUNK: usize = 64;

/// Signs `ops` with `key` on up to `threads` threads (the calling one included), in
/// order. Threads take chunks of [`SIGN_CHUNK`] ops from a shared counter, so a thread
/// that gets no CPU delays the others by one chunk at most. One thread (or one chunk)
/// signs on the calling thread without spawning. The bytes are the same whatever the
/// thread count: Ed25519 signatures are deterministic.
pub(crate) fn sign_all(ops: Vec<UnsignedOp>, key: &NodeKey, threads: usize) -> Vec<SignedOp> {
    let chunks = ops.len().div_ceil(SIGN_CHUNK);
    let threads = threads.clamp(1, chunks.max(1));
    if threads == 1 {
        return ops.into_iter().map(|op| op.sign(key)).collect();
    }
    let mut parts: Vec<Vec<UnsignedOp>> = Vec::with_capacity(chunks);
    let mut rest = ops.into_iter();
    loop {
        let part: Vec<UnsignedOp> = rest.by_ref().take(SIGN_CHUNK).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    let parts: Vec<std::sync::Mutex<Option<Vec<UnsignedOp>>>> = parts
        .into_iter()
        .map(|p| std::sync::Mutex::new(Some(p)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(slot) = parts.get(i) else {
                return done;
            };
            let part = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take()
                .unwrap_or_default();
            done.push((i, part.into_iter().map(|op| op.sign(key)).collect::<Vec<_>>()));
        }
    };
    let mut signed: Vec<(usize, Vec<SignedOp>)> = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        let mut all = work();
        for h in helpers {
            // A helper only signs; a panic there is a bug, re-raised here.
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        all
    });
    signed.sort_unstable_by_key(|(i, _)| *i);
    signed.into_iter().flat_map(|(_, ops)| ops).collect()
}

fn segment_checksum(body: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(SEGMENT_HASH_CONTEXT);
    h.update(body);
    *h.finalize().as_bytes()
}

/// Where the bytes that every op of a segment shares start in a signed op: after the 4-byte
/// length prefix and the content's version byte come the cluster id and the author id.
const SHARED_AT: usize = 4 + 1;
/// How many bytes a v2 segment stores once instead of once per op (cluster and author ids).
const SHARED_LEN: usize = 32 + 32;
/// Framing of a signed op around its content: length prefix and signature.
const OP_FRAME: usize = 4 + 64;

/// A segment holds a run of one author's signed ops. Two layouts, both read:
///
/// - v1: `1 | count u32 LE | blake3 checksum of body (32) | body`, where the body is the
///   signed ops back to back (each self-delimiting).
/// - v2 (written whenever it applies): `2 | count u32 LE | checksum of shared || body (32) |
///   shared (64) | body`, where `shared` is the 64 bytes every op of the segment carries at
///   offset 5 of its signed bytes (the content's cluster and author ids), and each op in the
///   body has them cut out. This saves 64 of the ~240 bytes of a typical op; decoding puts
///   them back, so the ops read back are byte-for-byte the signed ops.
pub(crate) fn encode_segment<'a>(ops: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let ops: Vec<&[u8]> = ops.into_iter().collect();
    debug_assert!(
        ops.len() <= SEGMENT_MAX_OPS,
        "a segment holds at most SEGMENT_MAX_OPS ops"
    );
    let count = u32::try_from(ops.len()).expect("a segment holds at most SEGMENT_MAX_OPS ops");
    let shared = ops
        .first()
        .and_then(|first| first.get(SHARED_AT..SHARED_AT + SHARED_LEN));
    let v2 = shared.filter(|shared| {
        ops.iter().all(|op| {
            op.len() >= SHARED_AT + SHARED_LEN + 64 && &op[SHARED_AT..SHARED_AT + SHARED_LEN] == *shared
        })
    });
    let body_len: usize = ops.iter().map(|op| op.len()).sum();
    let mut out = Vec::with_capacity(SEGMENT_HEADER + SHARED_LEN + body_len);
    out.push(if v2.is_some() { SEGMENT_V2 } else { SEGMENT_V1 });
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&[0; 32]);
    if let Some(shared) = v2 {
        out.extend_from_slice(shared);
        for op in &ops {
            out.extend_from_slice(&op[..SHARED_AT]);
            out.extend_from_slice(&op[SHARED_AT + SHARED_LEN..]);
        }
    } else {
        for op in &ops {
            out.extend_from_slice(op);
        }
    }
    let sum = segment_checksum(&out[SEGMENT_HEADER..]);
    out[5..SEGMENT_HEADER].copy_from_slice(&sum);
    out
}

/// Splits a stored segment into its ops' signed bytes after checking its checksum.
pub(crate) fn decode_segment(bytes: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let corrupt = |why: &str| Error::Corrupt(format!("op segment {why}"));
    if bytes.len() < SEGMENT_HEADER || !matches!(bytes[0], SEGMENT_V1 | SEGMENT_V2) {
        return Err(corrupt("has a bad header"));
    }
    let v2 = bytes[0] == SEGMENT_V2;
    let count = usize::try_from(u32::from_le_bytes(bytes[1..5].try_into().expect("4 bytes")))
        .map_err(|_| corrupt("has an op count this machine cannot hold"))?;
    if segment_checksum(&bytes[SEGMENT_HEADER..]) != bytes[5..SEGMENT_HEADER] {
        return Err(corrupt("fails its checksum"));
    }
    let (shared, body) = if v2 {
        if bytes.len() < SEGMENT_HEADER + SHARED_LEN {
            return Err(corrupt("is truncated"));
        }
        bytes[SEGMENT_HEADER..].split_at(SHARED_LEN)
    } else {
        (&[][..], &bytes[SEGMENT_HEADER..])
    };
    // Every op costs at least its framing, so a corrupt count cannot make us over-allocate.
    let mut ops = Vec::with_capacity(count.min(body.len() / OP_FRAME + 1));
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(corrupt("is truncated"));
        }
        let content = usize::try_from(u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")))
            .map_err(|_| corrupt("holds an op too large for this machine"))?;
        let stored = if v2 {
            if content < SHARED_AT - 4 + SHARED_LEN {
                return Err(corrupt("holds an op too short for its layout"));
            }
            content - SHARED_LEN + OP_FRAME
        } else {
            content + OP_FRAME
        };
        if rest.len() < stored {
            return Err(corrupt("is truncated"));
        }
        let mut op = Vec::with_capacity(content + OP_FRAME);
        if v2 {
            op.extend_from_slice(&rest[..SHARED_AT]);
            op.extend_from_slice(shared);
            op.extend_from_slice(&rest[SHARED_AT..stored]);
        } else {
            op.extend_from_slice(&rest[..stored]);
        }
        ops.push(op);
        rest = &rest[stored..];
    }
    if ops.len() != count {
        return Err(corrupt("has the wrong op count"));
    }
    Ok(ops)
}

/// Adds `ops` (consecutive, right after the author's stored head) to `batch`.
///
/// An author's newest ops, written by small batches, form its **open run**: segments under
/// `P` (see [`crate::keyspace`]), one per write, named by `tail` (the run's first seq, op
/// count and stored bytes). While the run stays under [`SEAL_OPS`] ops and [`SEAL_BYTES`],
/// a write adds one small `P` segment and rewrites nothing. The write that would take the
/// run to either bound seals it: the run's ops and the new ones are written as `O`
/// segments of up to [`SEGMENT_MAX_OPS`] ops starting at the run's first seq, and the `P`
/// keys are removed, in the same batch. A write of [`SEAL_OPS`] ops or more with no open
/// run goes to `O` directly. Every `P` op follows every `O` op of the author.
///
/// Why: with one flush per command, rewriting a growing segment on every append makes
/// sled 0.34 write the whole value again, and every tenth write of a leaf rewrites the
/// whole leaf with its neighbours; values past ~128 KiB leave blob files behind. Keeping
/// the open run in a namespace of its own leaves the leaves of sealed segments untouched
/// between seals (`docs/format.md`, "Segment runs").
pub(crate) fn write_ops<S: Store>(
    db: &S,
    batch: &mut S::Batch,
    idx: u32,
    tail: &mut SegmentTail,
    ops: &[SignedOp],
) -> Result<(), Error> {
    debug_assert!(
        ops.windows(2)
            .all(|w| w[1].content().seq == w[0].content().seq + 1 && w[1].content().prev == Some(w[0].id())),
        "ops written together are one unbroken chain"
    );
    let Some(first_new) = ops.first().map(|o| o.content().seq) else {
        return Ok(());
    };
    let new_bytes: usize = ops.iter().map(|o| o.bytes().len()).sum();
    match open_run(*tail) {
        Some((first, count, bytes)) if !run_full(count + ops.len(), bytes + new_bytes) => {
            let seg = encode_segment(ops.iter().map(|o| o.bytes()));
            batch.insert(&key::open_segment(idx, first_new), &seg);
            *tail = Some((first, count_of(count + ops.len()), size_of_sum(bytes + seg.len())));
        }
        Some((first, count, _)) => {
            let mut run: Vec<Vec<u8>> = Vec::with_capacity(count + ops.len());
            for kv in db.scan_prefix(&key::open_segment_prefix(idx)) {
                let (k, v) = kv?;
                run.extend(decode_segment(&v)?);
                batch.remove(&k);
            }
            let expected = first_new - first;
            if u64::try_from(run.len()).ok() != Some(expected) {
                return Err(Error::Corrupt(format!(
                    "the open segment run at {first} holds {} ops where {expected} belong",
                    run.len()
                )));
            }
            write_sealed(
                batch,
                idx,
                first,
                run.iter().map(|o| &o[..]).chain(ops.iter().map(|o| o.bytes())),
            );
            *tail = None;
        }
        None if !run_full(ops.len(), new_bytes) => {
            let seg = encode_segment(ops.iter().map(|o| o.bytes()));
            batch.insert(&key::open_segment(idx, first_new), &seg);
            *tail = Some((first_new, count_of(ops.len()), size_of(&seg)));
        }
        None => {
            write_sealed(batch, idx, first_new, ops.iter().map(|o| o.bytes()));
            *tail = None;
        }
    }
    Ok(())
}

/// Most ops in an author's open run: the write that reaches it seals the run.
pub(crate) const SEAL_OPS: usize = 32;
/// Most stored bytes in an author's open run: keeps a sealed run's segment, and a sled
/// leaf of them, well under the size sled 0.34 moves to a blob file.
pub(crate) const SEAL_BYTES: usize = 8 * 1024;

/// Whether a run of `count` ops in `bytes` is full (to be sealed).
fn run_full(count: usize, bytes: usize) -> bool {
    count >= SEAL_OPS || bytes >= SEAL_BYTES
}

/// The open run a tail names, as (first seq, ops, bytes).
fn open_run(tail: SegmentTail) -> Option<(u64, usize, usize)> {
    let (first, count, bytes) = tail?;
    Some((
        first,
        usize::try_from(count).unwrap_or(usize::MAX),
        usize::try_from(bytes).unwrap_or(usize::MAX),
    ))
}

/// Most signed op bytes in one sealed segment (one op larger than this is a segment of its
/// own). Why: sled 0.34 moves a tree node whose serialized size passes a quarter of its
/// 512 KiB log segment to a blob file, and its page cache counts such a node at the size of
/// the blob *pointer* (a few dozen bytes), so the cache bound never evicts it. Segments of
/// 1,024 ops (~150–230 KiB, each over that threshold on its own) made every leaf of
/// sealed segments a blob: a node that had read or written its history kept all of it in
/// memory (docs/benchmarks.md, "Where an open store's memory goes"). A leaf holds at most
/// 17 entries before sled splits it; 17 segments of at most 8 KiB of signed bytes (~6 KiB
/// stored, layout 2) stay under the threshold, so every node is counted and evicted.
pub const SEGMENT_MAX_BYTES: usize = 8 * 1024;

/// Writes `ops` (signed bytes, consecutive from `first`) as `O` segments of up to
/// [`SEGMENT_MAX_OPS`] ops and [`SEGMENT_MAX_BYTES`] of signed bytes.
fn write_sealed<'a>(batch: &mut impl WriteBatch, idx: u32, first: u64, ops: impl Iterator<Item = &'a [u8]>) {
    let ops: Vec<&[u8]> = ops.collect();
    let mut at = first;
    let mut rest = &ops[..];
    while !rest.is_empty() {
        let n = segment_len(rest);
        batch.insert(&key::segment(idx, at), &encode_segment(rest[..n].iter().copied()));
        at += n as u64;
        rest = &rest[n..];
    }
}

/// How many of `ops` (at least one) the next sealed segment takes: as many as fit in
/// [`SEGMENT_MAX_OPS`] and [`SEGMENT_MAX_BYTES`].
fn segment_len(ops: &[&[u8]]) -> usize {
    let mut bytes = 0usize;
    let mut n = 0usize;
    for op in ops.iter().take(SEGMENT_MAX_OPS) {
        bytes += op.len();
        if n > 0 && bytes > SEGMENT_MAX_BYTES {
            break;
        }
        n += 1;
    }
    n.max(1).min(ops.len())
}

/// A segment's op count as stored (at most [`SEGMENT_MAX_OPS`]).
fn count_of(n: usize) -> u32 {
    debug_assert!(n <= SEGMENT_MAX_OPS);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A segment's size as recorded in its author's tail. Saturates: a size past `u32::MAX`
/// only means "full", which is all the writer asks of it.
fn size_of(seg: &[u8]) -> u32 {
    size_of_sum(seg.len())
}

/// A run's stored bytes as recorded in its author's tail (saturating, as [`size_of`]).
fn size_of_sum(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn stored_op(bytes: &[u8]) -> Result<SignedOp, Error> {
    SignedOp::from_trusted_bytes(bytes).map_err(|e| Error::Corrupt(format!("stored op does not decode: {e}")))
}

/// A segment's first seq and its ops' signed bytes.
type Located = (u64, Vec<Vec<u8>>);

/// The stored segment that holds the author's op `seq`, if any: the last `O` segment
/// starting at or before it, or else (the op is newer than every sealed one) the last `P`
/// segment starting at or before it.
fn segment_holding<S: Store>(db: &S, idx: u32, seq: u64) -> Result<Option<Located>, Error> {
    for (from, through) in [
        (key::segment(idx, 0), key::segment(idx, seq)),
        (key::open_segment(idx, 0), key::open_segment(idx, seq)),
    ] {
        if let Some((k, v)) = db.last_in(&from, &through)? {
            let first = key::segment_first_seq(&k)?;
            let ops = decode_segment(&v)?;
            if usize::try_from(seq - first).is_ok_and(|i| i < ops.len()) {
                return Ok(Some((first, ops)));
            }
        }
    }
    Ok(None)
}

/// Reads the op an author stored at `seq`, checking the segment's checksum.
pub(crate) fn read_op<S: Store>(db: &S, idx: u32, seq: u64) -> Result<Option<SignedOp>, Error> {
    let Some((first, ops)) = segment_holding(db, idx, seq)? else {
        return Ok(None);
    };
    let Some(bytes) = usize::try_from(seq - first).ok().and_then(|i| ops.get(i)) else {
        return Ok(None);
    };
    let op = stored_op(bytes)?;
    if op.content().seq != seq {
        return Err(Error::Corrupt(format!(
            "segment at {first} holds seq {} where {seq} belongs",
            op.content().seq
        )));
    }
    Ok(Some(op))
}

/// Extra reads of each segment a log scan makes. Why: sled 0.34 accounts a page in its cache
/// only once 64 accesses have queued up in the page's shard (one of 256), and a scan touches
/// a leaf of segments once per segment; so up to ~16,000 reads went unaccounted, which for a
/// log of fewer leaves than that meant every leaf a scan read stayed in memory (118 MB for
/// 800k ops: the whole log). Each read is a cached lookup (no copy), and a few per segment
/// let the cache's bound hold (docs/benchmarks.md, "Where an open store's memory goes").
const READ_TOUCHES: usize = 6;

/// Calls `f` with the signed bytes of each stored op of the author, from the segment that
/// holds `from` on (callers skip the few before `from`): the sealed segments (`O`), then
/// the open run (`P`); stops when `f` returns false.
fn for_each_stored<S: Store>(
    db: &S,
    idx: u32,
    from: u64,
    mut f: impl FnMut(Vec<u8>) -> Result<bool, Error>,
) -> Result<(), Error> {
    let from = from.max(1);
    for open in [false, true] {
        let key_of = |idx, seq| {
            if open {
                key::open_segment(idx, seq)
            } else {
                key::segment(idx, seq)
            }
        };
        let next = key_of(idx.saturating_add(1), 0);
        let start = match db.last_in(&key_of(idx, 0), &key_of(idx, from))? {
            Some((k, _)) => key::segment_first_seq(&k)?,
            None => 0,
        };
        // One range read per segment, each segment then touched again: see [`READ_TOUCHES`].
        let mut at = key_of(idx, start).to_vec();
        while let Some(kv) = db.range(&at, &next).next() {
            let (k, v) = kv?;
            for _ in 0..READ_TOUCHES {
                db.get(&k)?;
            }
            for bytes in decode_segment(&v)? {
                if !f(bytes)? {
                    return Ok(());
                }
            }
            // The least key after `k`.
            at.clear();
            at.extend_from_slice(&k);
            at.push(0);
        }
    }
    Ok(())
}

/// Like [`for_each_op`] but without decoding: the op's signed bytes with its seq and Lamport
/// timestamp (the segment's checksum is still checked).
pub(crate) fn for_each_op_bytes<S: Store>(
    db: &S,
    idx: u32,
    author: NodeId,
    from: u64,
    mut f: impl FnMut(OpBytes) -> Result<bool, Error>,
) -> Result<(), Error> {
    for_each_stored(db, idx, from, |bytes| {
        let (seq, lamport) =
            peek_seq_lamport(&bytes).ok_or_else(|| Error::Corrupt("stored op has no readable seq".into()))?;
        if seq < from {
            return Ok(true);
        }
        f(OpBytes {
            author,
            seq,
            lamport,
            bytes,
        })
    })
}

/// Calls `f` with each stored op of the author with `seq >= from`, in order.
pub(crate) fn for_each_op<S: Store>(
    db: &S,
    idx: u32,
    from: u64,
    mut f: impl FnMut(SignedOp) -> Result<bool, Error>,
) -> Result<(), Error> {
    for_each_stored(db, idx, from, |bytes| {
        let op = stored_op(&bytes)?;
        if op.content().seq < from {
            return Ok(true);
        }
        f(op)
    })
}

/// Calls `f` with each stored segment of the author in key order: its first seq and its
/// ops' signed bytes, or why they do not read (for `verify`, which reports and goes on).
pub(crate) fn for_each_segment<S: Store>(
    db: &S,
    idx: u32,
    mut f: impl FnMut(u64, Result<Vec<Vec<u8>>, Error>),
) -> Result<(), Error> {
    for prefix in [key::segment_prefix(idx), key::open_segment_prefix(idx)] {
        for kv in db.scan_prefix(&prefix) {
            let (k, v) = kv?;
            f(key::segment_first_seq(&k)?, decode_segment(&v));
        }
    }
    Ok(())
}

/// Adds a signed op kept as evidence of `author`'s equivocation at `seq` to `batch`.
pub(crate) fn write_evidence<B: WriteBatch>(
    batch: &mut B,
    author: &NodeId,
    seq: u64,
    id: &OpId,
    bytes: &[u8],
) {
    batch.insert(&key::fork(author, seq, id), bytes);
}

/// Whether this op is kept as evidence already.
pub(crate) fn is_evidence<S: Store>(db: &S, author: &NodeId, seq: u64, id: &OpId) -> Result<bool, Error> {
    Ok(db.get(&key::fork(author, seq, id))?.is_some())
}

/// The ids of the ops that prove `author`'s fork at `at` ([`evidence`]).
pub(crate) fn evidence_ids<S: Store>(db: &S, author: &NodeId, at: u64) -> Result<Vec<OpId>, Error> {
    Ok(evidence(db, author, at)?.iter().map(SignedOp::id).collect())
}

/// The ops kept as evidence against `author` that prove its fork at `at` (where it is
/// quarantined from): its ops at `at`, and each op at `at + 1` whose `prev` is none of
/// those. Evidence of a higher fork that a lower one superseded stays stored but is not
/// listed or sent on, as for a fork that does not count: a replica fed the rest learns
/// the lower fork first and never holds it (found by the `ingest` fuzz target:
/// fuzz/regressions/ingest/evidence-of-a-superseded-fork-listed).
pub(crate) fn evidence<S: Store>(db: &S, author: &NodeId, at: u64) -> Result<Vec<SignedOp>, Error> {
    let all: Vec<SignedOp> = db
        .scan_prefix(&key::fork_prefix(author))
        .map(|kv| {
            let (k, v) = kv?;
            let op = SignedOp::from_trusted_bytes(&v)
                .map_err(|e| Error::Corrupt(format!("fork evidence: {e}")))?;
            if key::fork_op_id(&k)? != op.id() {
                return Err(Error::Corrupt("fork evidence: the key names another op".into()));
            }
            Ok(op)
        })
        .collect::<Result<_, Error>>()?;
    let at_fork: Vec<OpId> = all
        .iter()
        .filter(|op| op.content().seq == at)
        .map(SignedOp::id)
        .collect();
    Ok(all
        .into_iter()
        .filter(|op| {
            let c = op.content();
            c.seq == at || (c.seq == at.saturating_add(1) && c.prev.is_none_or(|p| !at_fork.contains(&p)))
        })
        .collect())
}

/// The key and value that hold `op` (see [`contested`]).
pub(crate) fn contested_entry(op: &SignedOp) -> (Vec<u8>, Vec<u8>) {
    let c = op.content();
    (
        key::contested(&c.author, c.seq, &op.id()).to_vec(),
        op.bytes().to_vec(),
    )
}

/// Whether `op` is held (`R`) already.
pub(crate) fn is_contested<S: Store>(db: &S, op: &SignedOp) -> Result<bool, Error> {
    let c = op.content();
    Ok(db.get(&key::contested(&c.author, c.seq, &op.id()))?.is_some())
}

/// Whether any setter is held (`R`).
pub(crate) fn any_contested<S: Store>(db: &S) -> Result<bool, Error> {
    Ok(db.scan_prefix(key::CONTESTED).next().transpose()?.is_some())
}

/// Every held setter (`R`): contested removals (admins' removals that arrived void only
/// because a concurrent removal had cut their author just below them) and the removals
/// and rotations a rebuild left void. Every rebuild weighs them; sync sends on the
/// contested ones (`docs/format.md`, "Removals, rotations and cutoffs").
pub(crate) fn contested<S: Store>(db: &S) -> Result<Vec<SignedOp>, Error> {
    db.scan_prefix(key::CONTESTED)
        .map(|kv| {
            SignedOp::from_trusted_bytes(&kv?.1)
                .map_err(|e| Error::Corrupt(format!("contested removal: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_detect_corruption() {
        let a = [3u8, 0, 0, 0, 1, 2, 3]
            .iter()
            .chain([9u8; 64].iter())
            .copied()
            .collect::<Vec<u8>>();
        let seg = encode_segment([&a[..], &a[..]]);
        assert_eq!(seg[0], SEGMENT_V1, "ops too short to share ids are stored whole");
        assert_eq!(decode_segment(&seg).unwrap().len(), 2);
        let mut bad = seg.clone();
        let n = bad.len();
        bad[n - 3] ^= 1;
        assert!(decode_segment(&bad).is_err());
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
    }

    /// A fake signed op: length prefix, content (version, 64 shared bytes, `tail`), signature.
    fn fake_op(shared: u8, tail: &[u8], sig: u8) -> Vec<u8> {
        let content_len = 1 + SHARED_LEN + tail.len();
        let mut op = (content_len as u32).to_le_bytes().to_vec();
        op.push(1);
        op.extend_from_slice(&[shared; SHARED_LEN]);
        op.extend_from_slice(tail);
        op.extend_from_slice(&[sig; 64]);
        op
    }

    #[test]
    fn v2_segments_store_shared_ids_once_and_read_back_exact_bytes() {
        let ops = [
            fake_op(7, b"first op", 1),
            fake_op(7, b"", 2),
            fake_op(7, b"third", 3),
        ];
        let seg = encode_segment(ops.iter().map(|o| &o[..]));
        assert_eq!(seg[0], SEGMENT_V2);
        let total: usize = ops.iter().map(|o| o.len()).sum();
        assert_eq!(seg.len(), SEGMENT_HEADER + SHARED_LEN + total - 3 * SHARED_LEN);
        assert_eq!(decode_segment(&seg).unwrap(), ops.to_vec());
        for i in SEGMENT_HEADER..seg.len() {
            let mut bad = seg.clone();
            bad[i] ^= 0x10;
            assert!(decode_segment(&bad).is_err(), "flip at {i} went unnoticed");
        }
        assert!(decode_segment(&seg[..seg.len() - 1]).is_err());
    }

    #[test]
    fn ops_that_differ_in_the_shared_bytes_get_a_v1_segment() {
        let ops = [fake_op(7, b"a", 1), fake_op(8, b"b", 2)];
        let seg = encode_segment(ops.iter().map(|o| &o[..]));
        assert_eq!(seg[0], SEGMENT_V1);
        assert_eq!(decode_segment(&seg).unwrap(), ops.to_vec());
    }

    /// `n` chained ops of one fresh author, signed.
    fn chain(n: usize) -> Vec<SignedOp> {
        let key = NodeKey::generate(&mut rand_core::OsRng);
        let cluster = ClusterId::from_bytes([7; 32]);
        let (mut seq, mut prev) = (0, None);
        (0..n)
            .map(|i| {
                let payload = Payload::Release {
                    story: crate::id::StoryId::new(format!("story-{i}")).unwrap(),
                };
                let op = sign_next(
                    &key,
                    cluster,
                    seq,
                    prev,
                    seq + 1,
                    Timestamp::from_millis(1),
                    payload,
                )
                .unwrap();
                (seq, prev) = (op.content().seq, Some(op.id()));
                op
            })
            .collect()
    }

    /// Writes `ops` in batches of the given sizes, one store batch each, as commits do.
    fn write_in(db: &crate::storage::MemoryStore, ops: &[SignedOp], sizes: &[usize]) -> SegmentTail {
        let mut tail = None;
        let mut at = 0;
        for &n in sizes {
            let mut batch = crate::storage::MemoryBatch::default();
            write_ops(db, &mut batch, 3, &mut tail, &ops[at..at + n]).unwrap();
            db.apply(batch).unwrap();
            at += n;
        }
        tail
    }

    fn count(db: &crate::storage::MemoryStore, prefix: &[u8]) -> usize {
        db.scan_prefix(prefix).count()
    }

    fn assert_reads_back(db: &crate::storage::MemoryStore, ops: &[SignedOp]) {
        let mut all = Vec::new();
        for_each_op(db, 3, 1, |op| {
            all.push(op);
            Ok(true)
        })
        .unwrap();
        assert_eq!(all.len(), ops.len(), "every op is read back once, in order");
        for (got, want) in all.iter().zip(ops) {
            assert_eq!(got.bytes(), want.bytes());
        }
        for want in ops {
            let seq = want.content().seq;
            assert_eq!(
                read_op(db, 3, seq).unwrap().unwrap().bytes(),
                want.bytes(),
                "seq {seq}"
            );
            let mut from = Vec::new();
            for_each_op(db, 3, seq, |op| {
                from.push(op.content().seq);
                Ok(from.len() < 2)
            })
            .unwrap();
            assert_eq!(from[0], seq, "a scan from {seq} starts there");
        }
        let next = ops.len() as u64 + 1;
        assert!(read_op(db, 3, next).unwrap().is_none());
    }

    #[test]
    fn single_op_writes_go_to_the_open_run_and_are_sealed_when_it_fills() {
        let db = crate::storage::MemoryStore::new();
        let ops = chain(SEAL_OPS * 2 + 5);
        let tail = write_in(&db, &ops[..SEAL_OPS - 1], &[1; SEAL_OPS - 1]);
        assert_eq!(tail.map(|t| (t.0, t.1)), Some((1, SEAL_OPS as u32 - 1)));
        assert_eq!(
            count(&db, &key::open_segment_prefix(3)),
            SEAL_OPS - 1,
            "one small key per write"
        );
        assert_eq!(count(&db, &key::segment_prefix(3)), 0);
        assert_reads_back(&db, &ops[..SEAL_OPS - 1]);
        // The write that fills the run seals it into one sealed segment.
        let mut tail = tail;
        let mut batch = crate::storage::MemoryBatch::default();
        write_ops(&db, &mut batch, 3, &mut tail, &ops[SEAL_OPS - 1..SEAL_OPS]).unwrap();
        db.apply(batch).unwrap();
        assert_eq!(tail, None);
        assert_eq!(count(&db, &key::open_segment_prefix(3)), 0);
        assert_eq!(count(&db, &key::segment_prefix(3)), 1);
        let sealed = db.get(&key::segment(3, 1)).unwrap().unwrap();
        assert_eq!(decode_segment(&sealed).unwrap().len(), SEAL_OPS);
        assert_reads_back(&db, &ops[..SEAL_OPS]);
    }

    #[test]
    fn mixed_write_sizes_read_back_in_order() {
        for sizes in [
            vec![1, 2, 40, 1, 1, SEGMENT_MAX_OPS + 3, 3],
            vec![SEAL_OPS, 1, SEGMENT_MAX_OPS * 2 + 1],
            vec![5, SEGMENT_MAX_OPS + 30],
        ] {
            let db = crate::storage::MemoryStore::new();
            let ops = chain(sizes.iter().sum());
            let tail = write_in(&db, &ops, &sizes);
            assert_reads_back(&db, &ops);
            let open = count(&db, &key::open_segment_prefix(3));
            assert_eq!(
                open > 0,
                tail.is_some(),
                "{sizes:?}: the tail names the open run exactly when it has keys"
            );
            let mut seen = Vec::new();
            for_each_segment(&db, 3, |first, ops| {
                let ops = ops.unwrap();
                seen.push((first, ops.len(), ops.iter().map(Vec::len).sum::<usize>()));
            })
            .unwrap();
            let mut next = 1;
            for (first, n, bytes) in seen {
                assert_eq!(first, next, "{sizes:?}: segments are contiguous");
                assert!(n <= SEGMENT_MAX_OPS);
                assert!(
                    n == 1 || bytes <= SEGMENT_MAX_BYTES,
                    "{sizes:?}: a segment of {n} ops holds {bytes} signed bytes"
                );
                next += n as u64;
            }
            assert_eq!(next, ops.len() as u64 + 1);
        }
    }

    #[test]
    fn sealed_segments_are_cut_at_the_byte_bound_and_never_empty() {
        let small = [7u8; 100];
        let big = vec![7u8; SEGMENT_MAX_BYTES + 1];
        let ops: Vec<&[u8]> = vec![&small[..]; 200];
        // 100-byte ops: as many as fit in the bound.
        assert_eq!(segment_len(&ops), SEGMENT_MAX_BYTES / 100);
        // An op past the bound is a segment of its own, and ends the one before it.
        let mixed: [&[u8]; 4] = [&small[..], &small[..], &big[..], &small[..]];
        assert_eq!(segment_len(&mixed), 2);
        assert_eq!(segment_len(&mixed[2..]), 1);
        assert_eq!(segment_len(&mixed[3..]), 1);
        // The op-count bound still holds for tiny ops.
        let tiny = [7u8; 1];
        let many: Vec<&[u8]> = vec![&tiny[..]; SEGMENT_MAX_OPS + 5];
        assert_eq!(segment_len(&many), SEGMENT_MAX_OPS);
    }

    #[test]
    fn a_scan_from_the_middle_of_a_long_log_reads_on_to_the_open_run() {
        let db = crate::storage::MemoryStore::new();
        let ops = chain(SEGMENT_MAX_OPS + 35);
        write_in(&db, &ops, &[SEGMENT_MAX_OPS + 30, 3, 2]);
        assert!(count(&db, &key::segment_prefix(3)) > 2, "several sealed segments");
        assert!(count(&db, &key::open_segment_prefix(3)) > 0, "an open run");
        for from in [
            1,
            2,
            500,
            SEGMENT_MAX_OPS as u64 + 31,
            SEGMENT_MAX_OPS as u64 + 35,
        ] {
            let mut seqs = Vec::new();
            for_each_op_bytes(&db, 3, ops[0].content().author, from, |o| {
                seqs.push(o.seq);
                Ok(true)
            })
            .unwrap();
            let want: Vec<u64> = (from..=ops.len() as u64).collect();
            assert_eq!(seqs, want, "a scan from {from}");
        }
    }

    #[test]
    fn an_open_run_that_lost_ops_is_corrupt_when_sealed() {
        let db = crate::storage::MemoryStore::new();
        let ops = chain(SEAL_OPS);
        let mut tail = write_in(&db, &ops[..3], &[1, 1, 1]);
        let mut batch = crate::storage::MemoryBatch::default();
        batch.remove(&key::open_segment(3, 2));
        db.apply(batch).unwrap();
        let mut batch = crate::storage::MemoryBatch::default();
        let err = write_ops(&db, &mut batch, 3, &mut tail, &ops[3..]).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
    }
}
