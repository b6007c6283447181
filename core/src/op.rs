//! Signed ops: canonical bytes, signatures, ids, and the verified/unverified split.
//!
//! Wire layout of one signed op (all integers little-endian):
//!
//! ```text
//! content_len: u32 | content: content_len bytes (postcard of OpContent) | signature: 64 bytes
//! ```
//!
//! `content` starts with the format version byte. The op id is
//! `BLAKE3-derive-key(OP_ID_CONTEXT, content)`; the Ed25519 signature is over
//! `SIGNING_DOMAIN || op id`. See `docs/format.md`.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::id::{ClusterId, NodeId, OpId};
use crate::key::{verifying_key, NodeKey};
pub use crate::op_format::{DecodeError, VerifyError, MAX_OP_BYTES, OP_FORMAT_VERSION};
use crate::payload::{Payload, Role};
use crate::time::Timestamp;

/// Prefix of every signed message, so an op signature can never be confused with any
/// other signature made with a node key.
pub const SIGNING_DOMAIN: &[u8; 16] = b"huskies/op/sig/1";
/// BLAKE3 key-derivation context for op ids.
pub const OP_ID_CONTEXT: &str = "huskies 2026-11 op id v1";
const CLUSTER_ID_CONTEXT: &str = "huskies 2026-11 cluster id v1";
const ROTATION_CONTEXT: &[u8; 16] = b"huskies/rotate/1";
const SIG_LEN: usize = 64;
const LEN_PREFIX: usize = 4;

/// The signed content of an op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpContent {
    /// Format version ([`OP_FORMAT_VERSION`]); first byte of the content.
    pub version: u8,
    /// The cluster the op belongs to.
    pub cluster: ClusterId,
    /// The author (its public key).
    pub author: NodeId,
    /// Per-author sequence number, contiguous from 1.
    pub seq: u64,
    /// Lamport timestamp.
    pub lamport: u64,
    /// Id of the author's previous op (`None` exactly when `seq == 1`).
    pub prev: Option<OpId>,
    /// Author's wall-clock time: informational, used for TTLs and display.
    pub wall: Timestamp,
    /// What the op says.
    pub payload: Payload,
}

fn check_content(content: &OpContent) -> Result<(), DecodeError> {
    if content.version != OP_FORMAT_VERSION {
        return Err(DecodeError::UnsupportedVersion(content.version));
    }
    if content.seq == 0 {
        return Err(DecodeError::Invalid("seq must start at 1".into()));
    }
    if (content.seq == 1) != content.prev.is_none() {
        return Err(DecodeError::Invalid(
            "prev must be absent exactly on seq 1".into(),
        ));
    }
    if content.lamport == 0 {
        return Err(DecodeError::Invalid("lamport must be at least 1".into()));
    }
    content.payload.validate().map_err(DecodeError::Invalid)
}

fn op_id_of(content_bytes: &[u8]) -> OpId {
    // Deriving the context key is a hash of its own; do it once.
    static HASHER: std::sync::LazyLock<blake3::Hasher> =
        std::sync::LazyLock::new(|| blake3::Hasher::new_derive_key(OP_ID_CONTEXT));
    let mut h = HASHER.clone();
    h.update(content_bytes);
    OpId::from_bytes(*h.finalize().as_bytes())
}

fn signing_message(id: &OpId) -> [u8; 48] {
    let mut m = [0u8; 48];
    m[..16].copy_from_slice(SIGNING_DOMAIN);
    m[16..].copy_from_slice(id.as_bytes());
    m
}

/// The parts shared by signed and unverified ops.
#[derive(Clone, Debug)]
struct OpParts {
    content: OpContent,
    id: OpId,
    signature: Signature,
    bytes: Vec<u8>,
}

impl OpParts {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_OP_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        if bytes.len() < LEN_PREFIX + 1 + SIG_LEN {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        let declared = u32::from_le_bytes(bytes[..LEN_PREFIX].try_into().expect("4 bytes")) as usize;
        let actual = bytes.len() - LEN_PREFIX - SIG_LEN;
        if declared != actual {
            return Err(DecodeError::LengthMismatch { declared, actual });
        }
        let content_bytes = &bytes[LEN_PREFIX..LEN_PREFIX + declared];
        if content_bytes[0] != OP_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(content_bytes[0]));
        }
        let content: OpContent =
            postcard::from_bytes(content_bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        // postcard accepts a few non-minimal encodings (e.g. overlong varints); re-encoding
        // and comparing pins one byte string per op, hence one id.
        if !crate::codec::encodes_to(&content, content_bytes) {
            return Err(DecodeError::NonCanonical);
        }
        check_content(&content)?;
        let sig: [u8; SIG_LEN] = bytes[LEN_PREFIX + declared..].try_into().expect("64 bytes");
        Ok(Self {
            id: op_id_of(content_bytes),
            signature: Signature::from_bytes(&sig),
            content,
            bytes: bytes.to_vec(),
        })
    }
}

/// An op decoded from untrusted bytes whose signature has not been checked.
#[derive(Clone, Debug)]
pub struct UnverifiedOp(Box<OpParts>);

impl UnverifiedOp {
    /// Decodes one op: framing, size, version, canonical form and field ranges.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        OpParts::decode(bytes).map(|p| Self(Box::new(p)))
    }

    /// The claimed content (not yet authenticated).
    pub fn content(&self) -> &OpContent {
        &self.0.content
    }

    /// The op id (hash of the content bytes).
    pub fn id(&self) -> OpId {
        self.0.id
    }

    /// The wire bytes as received (content and the unchecked signature).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// Checks the signature with `verify_strict`.
    pub fn verify(self) -> Result<SignedOp, (Self, VerifyError)> {
        let Some(vk) = verifying_key(&self.0.content.author) else {
            let author = self.0.content.author;
            return Err((self, VerifyError::BadAuthorKey(author)));
        };
        self.verify_with(&vk)
    }

    fn verify_with(self, vk: &VerifyingKey) -> Result<SignedOp, (Self, VerifyError)> {
        match vk.verify_strict(&signing_message(&self.0.id), &self.0.signature) {
            Ok(()) => Ok(SignedOp(self.0)),
            Err(_) => {
                let author = self.0.content.author;
                Err((self, VerifyError::BadSignature(author)))
            }
        }
    }
}

/// An op whose signature is known good: built only by signing, or by verifying an
/// [`UnverifiedOp`].
#[derive(Clone, Debug)]
pub struct SignedOp(Box<OpParts>);

impl SignedOp {
    /// Signs `content` with `key`. The content's author must be the key's node id.
    pub fn sign(content: OpContent, key: &NodeKey) -> Result<Self, DecodeError> {
        Ok(UnsignedOp::build(content, key)?.sign(key))
    }

    /// Re-reads an op this store verified before it was written. The store checks the
    /// segment's hash first; this skips only the signature, which `verify` re-checks.
    pub(crate) fn from_trusted_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        OpParts::decode(bytes).map(|p| Self(Box::new(p)))
    }

    /// The content.
    pub fn content(&self) -> &OpContent {
        &self.0.content
    }

    /// The op id.
    pub fn id(&self) -> OpId {
        self.0.id
    }

    /// The signed wire bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    /// Back to an unverified op (e.g. to re-verify stored bytes).
    pub fn into_unverified(self) -> UnverifiedOp {
        UnverifiedOp(self.0)
    }
}

/// An op built, encoded and hashed (its id is final) whose signature is still to be made.
///
/// Why: the id covers the content, not the signature, so a chain of ops can be built in
/// order (each `prev` is the previous op's id) and admitted before any of them is signed,
/// and the signatures, which are most of an append's cost, can then be made on other
/// threads (`oplog::sign_all`). Crate-private: the only way out is
/// [`UnsignedOp::sign`], so an op is still only constructed by signing.
pub(crate) struct UnsignedOp(Box<OpParts>);

impl UnsignedOp {
    /// Checks and encodes `content` and derives its id; `key` must be its author's.
    pub(crate) fn build(content: OpContent, key: &NodeKey) -> Result<Self, DecodeError> {
        if content.author != key.node_id() {
            return Err(DecodeError::Invalid("author is not the signing key".into()));
        }
        check_content(&content)?;
        // Length prefix and content in one buffer with room for the signature.
        let mut bytes = Vec::with_capacity(256);
        bytes.extend_from_slice(&[0; LEN_PREFIX]);
        crate::codec::encode_into(&content, &mut bytes);
        let content_len = bytes.len() - LEN_PREFIX;
        let total = bytes.len() + SIG_LEN;
        if total > MAX_OP_BYTES {
            return Err(DecodeError::TooLarge(total));
        }
        bytes.reserve_exact(SIG_LEN);
        bytes[..LEN_PREFIX].copy_from_slice(&(content_len as u32).to_le_bytes());
        let id = op_id_of(&bytes[LEN_PREFIX..]);
        Ok(Self(Box::new(OpParts {
            content,
            id,
            // Never read: replaced by `sign` before the op leaves this type.
            signature: Signature::from_bytes(&[0; SIG_LEN]),
            bytes,
        })))
    }

    /// The content.
    pub(crate) fn content(&self) -> &OpContent {
        &self.0.content
    }

    /// The op id (final: the signature is not part of it).
    pub(crate) fn id(&self) -> OpId {
        self.0.id
    }

    /// Signs the op with `key`, which must be the key it was built with (checked by
    /// [`UnsignedOp::build`] against the author; debug builds check it again here).
    /// Ed25519 signing is deterministic: the same op gets the same bytes on any thread.
    pub(crate) fn sign(self, key: &NodeKey) -> SignedOp {
        debug_assert_eq!(self.0.content.author, key.node_id(), "signed by its author's key");
        let mut parts = self.0;
        parts.signature = key.sign(&signing_message(&parts.id));
        parts.bytes.extend_from_slice(&parts.signature.to_bytes());
        SignedOp(parts)
    }
}

/// Most signatures checked by one batch equation in [`verify_ops`]. ed25519-dalek's batch
/// cost per signature falls with the batch size (measured on a 2-vCPU EPYC: 12.0 µs at
/// 256, 10.8 µs at 1024, 10.0 µs at 4096, no better beyond), while its memory grows with it.
const VERIFY_BATCH: usize = 4096;

/// A stored op as its signed bytes plus the fields sync orders by, read without decoding
/// the content: the store checked its segment's checksum, and every receiver verifies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpBytes {
    /// The author.
    pub author: NodeId,
    /// Its seq.
    pub seq: u64,
    /// Its Lamport timestamp.
    pub lamport: u64,
    /// The signed bytes.
    pub bytes: Vec<u8>,
}

impl From<&SignedOp> for OpBytes {
    fn from(op: &SignedOp) -> OpBytes {
        let c = op.content();
        OpBytes {
            author: c.author,
            seq: c.seq,
            lamport: c.lamport,
            bytes: op.bytes().to_vec(),
        }
    }
}

/// Reads `(seq, lamport)` from signed op bytes without decoding the rest: they follow the
/// length prefix, the version byte, the cluster id and the author id, as varints.
pub(crate) fn peek_seq_lamport(bytes: &[u8]) -> Option<(u64, u64)> {
    fn varint(b: &[u8]) -> Option<(u64, usize)> {
        let mut v = 0u64;
        for (i, byte) in b.iter().enumerate().take(10) {
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }
    let at = LEN_PREFIX + 1 + 32 + 32;
    let (seq, n) = varint(bytes.get(at..)?)?;
    let (lamport, _) = varint(bytes.get(at + n..)?)?;
    Some((seq, lamport))
}

/// Verifies many ops at once: one batch equation per 4096 ops, falling back to halves (and
/// finally `verify_strict` on single ops) when a batch fails, so one bad op costs
/// `O(log n)` extra batches and every good op is still accepted. `keys` caches decoded
/// author keys across calls.
pub fn verify_ops(
    ops: Vec<UnverifiedOp>,
    keys: &mut std::collections::HashMap<NodeId, VerifyingKey>,
) -> Vec<Result<SignedOp, (UnverifiedOp, VerifyError)>> {
    let mut out: Vec<Option<Result<SignedOp, (UnverifiedOp, VerifyError)>>> = Vec::with_capacity(ops.len());
    let mut pending: Vec<(usize, UnverifiedOp, VerifyingKey)> = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let author = op.0.content.author;
        let vk = match keys.get(&author) {
            Some(vk) => Some(*vk),
            None => verifying_key(&author).inspect(|vk| {
                keys.insert(author, *vk);
            }),
        };
        match vk {
            Some(vk) => {
                out.push(None);
                pending.push((i, op, vk));
            }
            None => out.push(Some(Err((op, VerifyError::BadAuthorKey(author))))),
        }
    }
    // Batches of VERIFY_BATCH, not one batch for everything: a batch of n signatures
    // allocates O(n) curve points, and past a few thousand the per-signature cost stops
    // falling while the allocation keeps growing (and faulting in fresh pages).
    let mut pending = pending.into_iter().peekable();
    while pending.peek().is_some() {
        let chunk: Vec<_> = pending.by_ref().take(VERIFY_BATCH).collect();
        verify_range(chunk, &mut out);
    }
    out.into_iter().map(|r| r.expect("every op decided")).collect()
}

type Slot = Option<Result<SignedOp, (UnverifiedOp, VerifyError)>>;

fn verify_range(mut ops: Vec<(usize, UnverifiedOp, VerifyingKey)>, out: &mut [Slot]) {
    if ops.is_empty() {
        return;
    }
    if ops.len() == 1 {
        let (i, op, vk) = ops.pop().expect("one op");
        out[i] = Some(op.verify_with(&vk));
        return;
    }
    let messages: Vec<[u8; 48]> = ops.iter().map(|(_, op, _)| signing_message(&op.0.id)).collect();
    let msg_refs: Vec<&[u8]> = messages.iter().map(|m| &m[..]).collect();
    let sigs: Vec<Signature> = ops.iter().map(|(_, op, _)| op.0.signature).collect();
    let vks: Vec<VerifyingKey> = ops.iter().map(|(_, _, vk)| *vk).collect();
    if ed25519_dalek::verify_batch(&msg_refs, &sigs, &vks).is_ok() {
        for (i, op, _) in ops {
            out[i] = Some(Ok(SignedOp(op.0)));
        }
        return;
    }
    let right = ops.split_off(ops.len() / 2);
    verify_range(ops, out);
    verify_range(right, out);
}

/// Derives a cluster id from its genesis: the first admin's key, the name and a nonce.
pub fn derive_cluster_id(admin: &NodeId, name: &str, nonce: &[u8; 16]) -> ClusterId {
    let mut h = blake3::Hasher::new_derive_key(CLUSTER_ID_CONTEXT);
    h.update(admin.as_bytes());
    h.update(nonce);
    h.update(name.as_bytes());
    ClusterId::from_bytes(*h.finalize().as_bytes())
}

fn rotation_message(cluster: &ClusterId, old: &NodeId, role: Role) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + 32 + 32 + 1);
    m.extend_from_slice(ROTATION_CONTEXT);
    m.extend_from_slice(cluster.as_bytes());
    m.extend_from_slice(old.as_bytes());
    m.push(matches!(role, Role::Admin) as u8);
    m
}

/// The new key's proof for a key rotation: its signature over (cluster, old key).
pub(crate) fn rotation_proof(cluster: &ClusterId, old: &NodeId, new_key: &NodeKey) -> [[u8; 32]; 2] {
    let sig = new_key
        .sign(&rotation_message(cluster, old, Role::Member))
        .to_bytes();
    let mut halves = [[0u8; 32]; 2];
    halves[0].copy_from_slice(&sig[..32]);
    halves[1].copy_from_slice(&sig[32..]);
    halves
}

/// Checks a rotation proof.
pub(crate) fn check_rotation_proof(
    cluster: &ClusterId,
    old: &NodeId,
    new: &NodeId,
    proof: &[[u8; 32]; 2],
) -> bool {
    let Some(vk) = verifying_key(new) else {
        return false;
    };
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&proof[0]);
    sig[32..].copy_from_slice(&proof[1]);
    vk.verify_strict(
        &rotation_message(cluster, old, Role::Member),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::StoryId;

    fn content(key: &NodeKey, seq: u64) -> OpContent {
        OpContent {
            version: OP_FORMAT_VERSION,
            cluster: ClusterId::from_bytes([1; 32]),
            author: key.node_id(),
            seq,
            lamport: seq,
            prev: (seq > 1).then(|| OpId::from_bytes([2; 32])),
            wall: Timestamp::from_millis(1_700_000_000_000),
            payload: Payload::StoryCreate {
                story: StoryId::new("42_fix_login").unwrap(),
                name: "Fix login".into(),
                body: None,
                depends_on: vec![],
            },
        }
    }

    #[test]
    fn seq_and_lamport_peek_matches_decoding() {
        let key = NodeKey::from_seed([3; 32]);
        for (seq, lamport) in [(1, 1), (2, 300), (70_000, u64::MAX - 1)] {
            let mut c = content(&key, seq);
            c.lamport = lamport;
            let op = SignedOp::sign(c, &key).unwrap();
            assert_eq!(peek_seq_lamport(op.bytes()), Some((seq, lamport)));
        }
    }

    #[test]
    fn sign_decode_verify_round_trip() {
        let key = NodeKey::from_seed([3; 32]);
        let op = SignedOp::sign(content(&key, 1), &key).unwrap();
        let decoded = UnverifiedOp::decode(op.bytes()).unwrap();
        assert_eq!(decoded.id(), op.id());
        let verified = decoded.verify().map_err(|(_, e)| e).unwrap();
        assert_eq!(verified.content(), op.content());
    }

    #[test]
    fn flipped_signature_bit_is_refused() {
        let key = NodeKey::from_seed([3; 32]);
        let op = SignedOp::sign(content(&key, 1), &key).unwrap();
        let mut bytes = op.bytes().to_vec();
        let last = bytes.len() - 1;
        bytes[last - 10] ^= 1;
        let err = UnverifiedOp::decode(&bytes).unwrap().verify().unwrap_err().1;
        assert_eq!(err, VerifyError::BadSignature(key.node_id()));
    }

    #[test]
    fn truncated_and_garbage_bytes_are_refused() {
        let key = NodeKey::from_seed([3; 32]);
        let op = SignedOp::sign(content(&key, 2), &key).unwrap();
        for cut in [0, 3, 10, op.bytes().len() - 1] {
            assert!(UnverifiedOp::decode(&op.bytes()[..cut]).is_err(), "cut at {cut}");
        }
        assert!(UnverifiedOp::decode(&[0xff; 300]).is_err());
        let mut wrong_version = op.bytes().to_vec();
        wrong_version[4] = 9;
        assert_eq!(
            UnverifiedOp::decode(&wrong_version).unwrap_err(),
            DecodeError::UnsupportedVersion(9)
        );
        assert!(matches!(
            UnverifiedOp::decode(&vec![0; MAX_OP_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn batch_verification_isolates_bad_ops() {
        let key = NodeKey::from_seed([4; 32]);
        let mut ops: Vec<UnverifiedOp> = (1..=9)
            .map(|s| SignedOp::sign(content(&key, s), &key).unwrap().into_unverified())
            .collect();
        let mut bad = ops[4].0.bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 0x40;
        ops[4] = UnverifiedOp::decode(&bad).unwrap();
        let mut keys = Default::default();
        let results = verify_ops(ops, &mut keys);
        for (i, r) in results.iter().enumerate() {
            assert_eq!(r.is_ok(), i != 4, "op {i}");
        }
    }

    #[test]
    fn oversized_payloads_are_refused_at_signing() {
        let key = NodeKey::from_seed([5; 32]);
        let mut c = content(&key, 1);
        c.payload = Payload::StoryCreate {
            story: StoryId::new("x").unwrap(),
            name: "n".repeat(5000),
            body: None,
            depends_on: vec![],
        };
        assert!(matches!(SignedOp::sign(c, &key), Err(DecodeError::Invalid(_))));
    }

    #[test]
    fn rotation_proofs_bind_the_old_key() {
        let old = NodeKey::from_seed([6; 32]);
        let new = NodeKey::from_seed([7; 32]);
        let cluster = ClusterId::from_bytes([1; 32]);
        let proof = rotation_proof(&cluster, &old.node_id(), &new);
        assert!(check_rotation_proof(
            &cluster,
            &old.node_id(),
            &new.node_id(),
            &proof
        ));
        assert!(!check_rotation_proof(
            &cluster,
            &new.node_id(),
            &new.node_id(),
            &proof
        ));
    }
}
