//! Structured ops for the `session` and `ingest` targets: each is described by choices
//! (author among the fixed keys, seq, prev, Lamport, payload) and signed for real, so the
//! fuzzer spends its time in the merge, not in signature checks that always fail.

use std::collections::HashMap;
use std::num::NonZeroU32;

use arbitrary::Arbitrary;
use ed25519_dalek::{Signer, SigningKey};
use huskies_core::{
    derive_cluster_id, ArchiveReason, ClusterId, ExecutionState, NodeId, OpContent, OpId, Payload,
    PipelineEvent, Role, SignedOp, Stage, StoryField, Timestamp, OP_FORMAT_VERSION,
};

use super::{at_ms, key, key_id, story_id, text, KEY_SEEDS};

/// The fuzz cluster's name and nonce: its id names fixed key 0 as first admin.
pub const CLUSTER_NAME: &str = "fuzz";
const NONCE: [u8; 16] = [0; 16];

/// The cluster every structured op is signed for (unless it asks for another one).
pub fn cluster() -> ClusterId {
    derive_cluster_id(&key_id(0), CLUSTER_NAME, &NONCE)
}

/// Which seq an op claims, relative to its author's chain so far.
#[derive(Arbitrary, Clone, Debug)]
pub enum SeqSpec {
    /// The next seq: extends the chain.
    Next,
    /// The chain's current head seq again: a second op for one seq (equivocation).
    Repeat,
    /// Leaves a gap of 1–8 seqs (buffered until the gap fills, or never).
    Skip(u8),
    /// Any seq.
    Raw(u64),
}

/// Which `prev` an op claims.
#[derive(Arbitrary, Clone, Debug)]
pub enum PrevSpec {
    /// The id of the op this builder signed last for `seq - 1` (the honest choice).
    Chain,
    /// Some other id.
    Other([u8; 32]),
}

/// Which Lamport timestamp an op claims.
#[derive(Arbitrary, Clone, Debug)]
pub enum LamportSpec {
    /// Above everything signed so far, by 1–4.
    Next(u8),
    /// The author's previous Lamport again (not increasing).
    Same,
    /// Any value (zero is refused by the signer, huge ones by the clock bound).
    Raw(u64),
}

/// A stage as an op's `from`.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum StageSpec {
    /// `Backlog`.
    Backlog,
    /// `Coding`.
    Coding,
    /// `Qa`.
    Qa,
    /// `Merge`.
    Merge,
    /// `MergeFailure`.
    MergeFailure,
    /// `Done`.
    Done,
    /// `Archived` as blocked.
    Blocked,
    /// `Archived` as completed.
    Completed,
}

impl StageSpec {
    /// The stage, with fixed data.
    pub fn stage(self, wall: Timestamp) -> Stage {
        match self {
            StageSpec::Backlog => Stage::Backlog,
            StageSpec::Coding => Stage::Coding,
            StageSpec::Qa => Stage::Qa,
            StageSpec::Merge => Stage::Merge {
                feature_branch: "feature".into(),
                commits_ahead: NonZeroU32::MIN,
            },
            StageSpec::MergeFailure => Stage::MergeFailure {
                kind: "conflict".into(),
                reason: "r".into(),
            },
            StageSpec::Done => Stage::Done {
                merged_at: wall,
                merge_commit: "c0ffee".into(),
            },
            StageSpec::Blocked => Stage::Archived {
                archived_at: wall,
                reason: ArchiveReason::Blocked { reason: "r".into() },
            },
            StageSpec::Completed => Stage::Archived {
                archived_at: wall,
                reason: ArchiveReason::Completed,
            },
        }
    }
}

/// A pipeline event with fixed-choice arguments.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum EventSpec {
    /// `DepsMet`.
    DepsMet,
    /// `GatesStarted`.
    GatesStarted,
    /// `QaSkipped`.
    QaSkipped(u8),
    /// `GatesPassed`.
    GatesPassed(u8),
    /// `GatesFailed`.
    GatesFailed(u8),
    /// `MergeSucceeded`.
    MergeSucceeded(u8),
    /// `MergeConflict`.
    MergeConflict(u8),
    /// `MergeFailedFinal`.
    MergeFailedFinal(u8),
    /// `Accepted`.
    Accepted,
    /// `Block`.
    Block(u8),
    /// `Unblock`.
    Unblock,
    /// `Abandon`.
    Abandon,
    /// `Supersede`.
    Supersede(u8),
    /// `ReviewHold`.
    ReviewHold(u8),
}

impl EventSpec {
    /// The event.
    pub fn event(self) -> PipelineEvent {
        let commits = |b: u8| NonZeroU32::new(u32::from(b % 3) + 1).expect("non-zero");
        match self {
            EventSpec::DepsMet => PipelineEvent::DepsMet,
            EventSpec::GatesStarted => PipelineEvent::GatesStarted,
            EventSpec::QaSkipped(b) => PipelineEvent::QaSkipped {
                branch: text(b),
                commits: commits(b),
            },
            EventSpec::GatesPassed(b) => PipelineEvent::GatesPassed {
                branch: text(b),
                commits: commits(b),
            },
            EventSpec::GatesFailed(b) => PipelineEvent::GatesFailed { reason: text(b) },
            EventSpec::MergeSucceeded(b) => PipelineEvent::MergeSucceeded { commit: text(b) },
            EventSpec::MergeConflict(b) => PipelineEvent::MergeConflict {
                kind: text(b),
                reason: text(b / 7),
            },
            EventSpec::MergeFailedFinal(b) => PipelineEvent::MergeFailedFinal { reason: text(b) },
            EventSpec::Accepted => PipelineEvent::Accepted,
            EventSpec::Block(b) => PipelineEvent::Block { reason: text(b) },
            EventSpec::Unblock => PipelineEvent::Unblock,
            EventSpec::Abandon => PipelineEvent::Abandon,
            EventSpec::Supersede(b) => PipelineEvent::Supersede { by: story_id(b) },
            EventSpec::ReviewHold(b) => PipelineEvent::ReviewHold { reason: text(b) },
        }
    }
}

/// What an op says.
#[derive(Arbitrary, Clone, Debug)]
pub enum PayloadSpec {
    /// The genesis of the fuzz cluster (`correct`) or of another one.
    Genesis {
        /// Derives the fuzz cluster's id.
        correct: bool,
    },
    /// Admit fixed key `key`.
    MemberAdd {
        /// Which key.
        key: u8,
        /// As admin.
        admin: bool,
    },
    /// Remove fixed key `key`.
    MemberRemove {
        /// Which key.
        key: u8,
        /// Its last valid seq.
        cutoff: u8,
    },
    /// Rotate the author's key to fixed key `key`.
    KeyRotate {
        /// Which key.
        key: u8,
        /// Sign the proof with the new key (else a forged proof).
        valid_proof: bool,
    },
    /// Create a story.
    StoryCreate {
        /// Which story.
        story: u8,
        /// Name choice.
        name: u8,
        /// Body choice.
        body: Option<u8>,
        /// Dependencies.
        deps: Vec<u8>,
    },
    /// Update a field.
    StoryUpdate {
        /// Which story.
        story: u8,
        /// Which field (mod 3).
        field: u8,
        /// Value choice.
        value: u8,
    },
    /// A transition.
    Transition {
        /// Which story.
        story: u8,
        /// The event.
        event: EventSpec,
        /// The stage it claims to start from.
        from: StageSpec,
        /// Build on the last transition this builder signed for the story.
        chain_base: bool,
    },
    /// Tombstone.
    StoryDelete {
        /// Which story.
        story: u8,
    },
    /// Claim a story.
    Claim {
        /// Which story.
        story: u8,
        /// Lease seconds.
        ttl: u32,
        /// Takes over fixed key's leases up to a Lamport time.
        takes_over: Option<(u8, u8)>,
    },
    /// Release a claim.
    Release {
        /// Which story.
        story: u8,
    },
    /// Take the merge lock.
    LockAcquire {
        /// Lease seconds.
        ttl: u32,
    },
    /// Release the merge lock.
    LockRelease,
    /// Clear a holder's merge-lock leases.
    LockClear {
        /// Which key.
        holder: u8,
        /// Through Lamport.
        through: u8,
    },
    /// Presence.
    Presence {
        /// Label choice.
        label: u8,
        /// Address choice.
        address: Option<u8>,
    },
    /// Execution state.
    Execution {
        /// Which story.
        story: u8,
        /// Pending (else idle).
        pending: bool,
    },
}

/// One op to sign.
#[derive(Arbitrary, Clone, Debug)]
pub struct OpSpec {
    /// Fixed key index (mod 4).
    pub author: u8,
    /// Unless this is a multiple of 4, the op is honest: the next seq, the right prev, a
    /// fresh Lamport time, our cluster (the choices below are ignored). Most ops must be
    /// valid for the merge to get anywhere.
    pub honesty: u8,
    /// Seq choice.
    pub seq: SeqSpec,
    /// Prev choice.
    pub prev: PrevSpec,
    /// Lamport choice.
    pub lamport: LamportSpec,
    /// Wall clock, seconds after T0.
    pub wall_secs: u16,
    /// Payload.
    pub payload: PayloadSpec,
    /// Sign it for another cluster.
    pub wrong_cluster: bool,
}

/// One element of a batch: a new op, or (one time in four) one signed before, sent again.
#[derive(Arbitrary, Clone, Debug)]
pub struct Item {
    /// The op to sign.
    pub spec: OpSpec,
    /// A multiple of 4: send again the op signed `repeat / 4`-th from the end instead.
    pub repeat: u8,
}

#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    seq: u64,
    lamport: u64,
}

/// Signs ops from [`OpSpec`]s, tracking each fixed author's chain so that honest choices
/// build valid chains.
#[derive(Default)]
pub struct Builder {
    chains: HashMap<u8, Chain>,
    /// The id signed last for (author, seq).
    ids: HashMap<(u8, u64), OpId>,
    /// The last transition signed per story index.
    last_transition: HashMap<u8, OpId>,
    max_lamport: u64,
    /// Everything signed, in order.
    pub signed: Vec<SignedOp>,
}

impl Builder {
    /// Signs an op for `spec`; `None` when the choices make content the signer refuses
    /// (seq 0, Lamport 0, oversized): the decoder's refusals are `op_decode`'s business.
    pub fn build(&mut self, spec: &OpSpec) -> Option<SignedOp> {
        let a = spec.author % KEY_SEEDS.len() as u8;
        let honest_spec;
        let spec = if !spec.honesty.is_multiple_of(4) {
            honest_spec = OpSpec {
                seq: SeqSpec::Next,
                prev: PrevSpec::Chain,
                lamport: LamportSpec::Next(spec.wall_secs as u8),
                wrong_cluster: false,
                ..spec.clone()
            };
            &honest_spec
        } else {
            spec
        };
        let chain = self.chains.get(&a).copied().unwrap_or_default();
        let seq = match spec.seq {
            SeqSpec::Next => chain.seq.saturating_add(1),
            SeqSpec::Repeat => chain.seq.max(1),
            SeqSpec::Skip(k) => chain.seq.saturating_add(2 + u64::from(k % 8)),
            SeqSpec::Raw(s) => s,
        };
        let prev = match (&spec.prev, seq) {
            (_, 0 | 1) => None,
            (PrevSpec::Chain, s) => Some(
                self.ids
                    .get(&(a, s - 1))
                    .copied()
                    .unwrap_or(OpId::from_bytes([0; 32])),
            ),
            (PrevSpec::Other(b), _) => Some(OpId::from_bytes(*b)),
        };
        let lamport = match spec.lamport {
            LamportSpec::Next(d) => self
                .max_lamport
                .max(chain.lamport)
                .saturating_add(1 + u64::from(d % 4)),
            LamportSpec::Same => chain.lamport,
            LamportSpec::Raw(l) => l,
        };
        let wall = at_ms(u64::from(spec.wall_secs) * 1000);
        let cluster = if spec.wrong_cluster {
            derive_cluster_id(&key_id(0), "other", &NONCE)
        } else {
            cluster()
        };
        let payload = self.payload(&spec.payload, a, wall, cluster);
        let content = OpContent {
            version: OP_FORMAT_VERSION,
            cluster,
            author: key_id(a),
            seq,
            lamport,
            prev,
            wall,
            payload,
        };
        let op = SignedOp::sign(content, &key(a)).ok()?;
        // A Lamport time far ahead is refused by the node: honest ops must not follow it.
        let plausible = lamport <= self.max_lamport.saturating_add(1 << 20);
        if seq == chain.seq.saturating_add(1) && plausible {
            self.chains.insert(a, Chain { seq, lamport });
        }
        self.ids.insert((a, seq), op.id());
        if plausible {
            self.max_lamport = self.max_lamport.max(lamport);
        }
        if let PayloadSpec::Transition { story, .. } = spec.payload {
            self.last_transition.insert(story % 4, op.id());
        }
        self.signed.push(op.clone());
        Some(op)
    }

    /// Key 0 admits `node` (any key, e.g. a node under test) as a member: the next op on
    /// key 0's chain.
    pub fn admit(&mut self, node: NodeId) -> SignedOp {
        let chain = self.chains.get(&0).copied().unwrap_or_default();
        let (seq, lamport) = (chain.seq + 1, self.max_lamport.max(chain.lamport) + 1);
        let content = OpContent {
            version: OP_FORMAT_VERSION,
            cluster: cluster(),
            author: key_id(0),
            seq,
            lamport,
            prev: self.ids.get(&(0, chain.seq)).copied(),
            wall: at_ms(0),
            payload: Payload::MemberAdd {
                node,
                role: Role::Member,
            },
        };
        let op = SignedOp::sign(content, &key(0)).expect("admission signs");
        self.chains.insert(0, Chain { seq, lamport });
        self.ids.insert((0, seq), op.id());
        self.max_lamport = lamport;
        self.signed.push(op.clone());
        op
    }

    /// Resolves an [`Item`]: a new op, or an earlier one again.
    pub fn item(&mut self, item: &Item) -> Option<SignedOp> {
        if item.repeat.is_multiple_of(4) && !self.signed.is_empty() {
            let len = self.signed.len();
            return Some(self.signed[len - 1 - usize::from(item.repeat / 4) % len].clone());
        }
        self.build(&item.spec)
    }

    fn payload(&self, spec: &PayloadSpec, author: u8, wall: Timestamp, cluster: ClusterId) -> Payload {
        match spec {
            PayloadSpec::Genesis { correct } => Payload::Genesis {
                name: if *correct {
                    CLUSTER_NAME.into()
                } else {
                    "other".into()
                },
                nonce: NONCE,
            },
            PayloadSpec::MemberAdd { key, admin } => Payload::MemberAdd {
                node: key_id(*key),
                role: if *admin { Role::Admin } else { Role::Member },
            },
            PayloadSpec::MemberRemove { key, cutoff } => Payload::MemberRemove {
                node: key_id(*key),
                cutoff_seq: u64::from(*cutoff % 16),
            },
            PayloadSpec::KeyRotate { key: k, valid_proof } => {
                let new = key_id(*k);
                let signer = if *valid_proof { *k } else { author };
                Payload::KeyRotate {
                    new_key: new,
                    proof: rotation_proof(cluster, &key_id(author), signer),
                }
            }
            PayloadSpec::StoryCreate {
                story,
                name,
                body,
                deps,
            } => Payload::StoryCreate {
                story: story_id(*story),
                name: text(*name),
                body: body.map(text),
                depends_on: deps.iter().take(4).map(|d| story_id(*d)).collect(),
            },
            PayloadSpec::StoryUpdate { story, field, value } => Payload::StoryUpdate {
                story: story_id(*story),
                field: match field % 3 {
                    0 => StoryField::Name(text(*value)),
                    1 => StoryField::Body((value % 2 == 0).then(|| text(*value / 2))),
                    _ => StoryField::DependsOn(vec![story_id(*value)]),
                },
            },
            PayloadSpec::Transition {
                story,
                event,
                from,
                chain_base,
            } => Payload::Transition {
                story: story_id(*story),
                event: event.event(),
                from: from.stage(wall),
                base: if *chain_base {
                    self.last_transition.get(&(story % 4)).copied()
                } else {
                    None
                },
            },
            PayloadSpec::StoryDelete { story } => Payload::StoryDelete {
                story: story_id(*story),
            },
            PayloadSpec::Claim {
                story,
                ttl,
                takes_over,
            } => Payload::Claim {
                story: story_id(*story),
                ttl_secs: *ttl,
                takes_over: takes_over.map(|(k, l)| (key_id(k), u64::from(l))),
            },
            PayloadSpec::Release { story } => Payload::Release {
                story: story_id(*story),
            },
            PayloadSpec::LockAcquire { ttl } => Payload::LockAcquire { ttl_secs: *ttl },
            PayloadSpec::LockRelease => Payload::LockRelease,
            PayloadSpec::LockClear { holder, through } => Payload::LockClear {
                holder: key_id(*holder),
                through: u64::from(*through),
            },
            PayloadSpec::Presence { label, address } => Payload::Presence {
                label: text(*label),
                address: address.map(text),
            },
            PayloadSpec::Execution { story, pending } => Payload::Execution {
                story: story_id(*story),
                state: if *pending {
                    ExecutionState::Pending {
                        agent: "agent".into(),
                        since: wall,
                    }
                } else {
                    ExecutionState::Idle
                },
            },
        }
    }
}

/// A key-rotation proof signed by fixed key `signer`: its signature over
/// `"huskies/rotate/1" ‖ cluster ‖ old ‖ 00` (docs/format.md).
pub fn rotation_proof(cluster: ClusterId, old: &NodeId, signer: u8) -> [[u8; 32]; 2] {
    let mut m = Vec::with_capacity(16 + 64 + 1);
    m.extend_from_slice(b"huskies/rotate/1");
    m.extend_from_slice(cluster.as_bytes());
    m.extend_from_slice(old.as_bytes());
    m.push(0);
    split(&signing_key(signer).sign(&m).to_bytes())
}

/// Fixed key `i` as an ed25519 signing key (for statements the core signs privately).
pub fn signing_key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&KEY_SEEDS[usize::from(i) % KEY_SEEDS.len()])
}

/// A 64-byte signature as the two halves the wire uses.
pub fn split(sig: &[u8; 64]) -> [[u8; 32]; 2] {
    let mut halves = [[0u8; 32]; 2];
    halves[0].copy_from_slice(&sig[..32]);
    halves[1].copy_from_slice(&sig[32..]);
    halves
}

/// The preamble most inputs want: the genesis by key 0, then key 1 admitted as member and
/// key 2 as admin. Key 3 stays a non-member unless an input admits it.
pub fn preamble(b: &mut Builder) -> Vec<SignedOp> {
    let honest = |payload| OpSpec {
        author: 0,
        honesty: 1,
        seq: SeqSpec::Next,
        prev: PrevSpec::Chain,
        lamport: LamportSpec::Next(0),
        wall_secs: 0,
        payload,
        wrong_cluster: false,
    };
    [
        PayloadSpec::Genesis { correct: true },
        PayloadSpec::MemberAdd { key: 1, admin: false },
        PayloadSpec::MemberAdd { key: 2, admin: true },
    ]
    .into_iter()
    .map(|p| b.build(&honest(p)).expect("preamble signs"))
    .collect()
}
