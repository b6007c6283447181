//! Round trips, size and strictness of the packed story record.

use std::num::NonZeroU32;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use super::*;
use super::{decode_story, encode_story};
use crate::id::StoryId;
use crate::pipeline::{ArchiveReason, PipelineEvent};

fn packed(rec: &StoryRecord) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(rec, &mut out);
    out
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A record as the bench leaves a finished story: one author, five transitions
/// (Backlog → Coding → Qa → Merge → Done → Archived), a claim and a running agent.
pub(crate) fn realistic_record() -> StoryRecord {
    let author = NodeId::from_bytes(*blake3::hash(b"author").as_bytes());
    let op = |n: u32| OpId::from_bytes(*blake3::hash(&n.to_le_bytes()).as_bytes());
    let stamp = |lamport| Stamp { lamport, author };
    let t0 = 1_763_700_000_000;
    let at = |minutes: i64| Timestamp::from_millis(t0 + minutes * 60_000);
    let mut rec = StoryRecord {
        created: Some((stamp(40_001), op(1))),
        name: Some(Lww {
            stamp: stamp(40_001),
            value: "Fix the login redirect loop when a session has expired".into(),
        }),
        body: Some(Lww {
            stamp: stamp(40_001),
            value: Some(
                "Users with an expired session bounce between /login and /home until the \
                 tab dies."
                    .into(),
            ),
        }),
        depends_on: Some(Lww {
            stamp: stamp(40_001),
            value: vec![],
        }),
        ..StoryRecord::default()
    };
    let events = [
        PipelineEvent::DepsMet,
        PipelineEvent::GatesStarted,
        PipelineEvent::GatesPassed {
            branch: "feature/42_fix_login_redirect".into(),
            commits: nz(3),
        },
        PipelineEvent::MergeSucceeded {
            commit: "3f2a9c4e1b7d8a6f5e4d3c2b1a0f9e8d7c6b5a49".into(),
        },
        PipelineEvent::Accepted,
    ];
    let mut from = Stage::Backlog;
    for (i, event) in events.into_iter().enumerate() {
        let i = i as u32 + 2;
        let wall = at(i64::from(i) * 30);
        let to = transition(&from, &event, wall).unwrap();
        rec.insert_transition(HistoryEntry {
            stamp: stamp(40_000 + u64::from(i) * 7),
            op_id: op(i),
            wall,
            event,
            from,
            to: to.clone(),
            base: rec.stage_op(),
            forced: None,
        });
        from = to;
    }
    rec.claims.set(
        stamp(40_010),
        Some(Lease {
            node: author,
            claimed_at: at(31),
            expires_at: at(91),
        }),
    );
    rec.execution.insert(
        author,
        Lww {
            stamp: stamp(40_030),
            value: ExecutionState::Running {
                agent: "coder-1".into(),
                started_at: at(32),
                last_heartbeat: at(58),
            },
        },
    );
    rec
}

#[test]
fn a_realistic_record_takes_at_most_half_its_format_2_size() {
    let rec = realistic_record();
    let v2 = 1 + codec::encode(&rec).len();
    let v3 = encode_story(&rec).len();
    eprintln!("story value: format 2 {v2} bytes, format 3 {v3} bytes");
    assert_eq!(decode_story(&encode_story(&rec)).unwrap(), rec);
    assert!(2 * v3 <= v2, "format 3 takes {v3} bytes, format 2 {v2}");
}

/// Numbers that drive [`arbitrary_record`]: proptest shrinks the list, the seeded loop
/// fills it from its seed. Past the end every number is 0.
struct Src<'a> {
    nums: &'a [u32],
    at: usize,
}

impl Src<'_> {
    fn below(&mut self, n: u32) -> u32 {
        let v = self.nums.get(self.at).copied().unwrap_or(0);
        self.at += 1;
        v % n
    }

    fn one_in(&mut self, n: u32) -> bool {
        self.below(n) == 0
    }

    fn node(&mut self) -> NodeId {
        let seed = self.below(6) as u8;
        let mut b = [seed; 32];
        b[31] = seed.wrapping_mul(37);
        NodeId::from_bytes(b)
    }

    fn op_id(&mut self) -> OpId {
        OpId::from_bytes(*blake3::hash(&self.below(u32::MAX).to_le_bytes()).as_bytes())
    }

    fn lamport(&mut self) -> u64 {
        match self.below(4) {
            0 => u64::from(self.below(10)),
            1 => u64::from(self.below(1 << 20)),
            2 => u64::MAX - u64::from(self.below(3)),
            _ => (1 << 35) + u64::from(self.below(u32::MAX)),
        }
    }

    fn stamp(&mut self, authors: &[NodeId]) -> Stamp {
        Stamp {
            lamport: self.lamport(),
            author: authors[self.below(authors.len() as u32) as usize],
        }
    }

    fn time(&mut self) -> Timestamp {
        Timestamp::from_millis(match self.below(5) {
            0 => 0,
            1 => -i64::from(self.below(u32::MAX)),
            2 => i64::MAX,
            3 => i64::MIN,
            _ => 1_763_700_000_000 + i64::from(self.below(u32::MAX)),
        })
    }

    fn text(&mut self, max: u32) -> String {
        const CHARS: [char; 10] = ['a', 'Z', '0', ' ', '_', '/', 'é', 'ß', '🐕', '\n'];
        (0..self.below(max + 1))
            .map(|_| CHARS[self.below(CHARS.len() as u32) as usize])
            .collect()
    }

    fn story_id(&mut self) -> StoryId {
        StoryId::new(format!("{}_story", self.below(1000))).unwrap()
    }

    fn commits(&mut self) -> NonZeroU32 {
        nz(1 + self.below(u32::MAX - 1))
    }

    fn reason(&mut self) -> ArchiveReason {
        match self.below(6) {
            0 => ArchiveReason::Completed,
            1 => ArchiveReason::Abandoned,
            2 => ArchiveReason::Superseded { by: self.story_id() },
            3 => ArchiveReason::Blocked {
                reason: self.text(20),
            },
            4 => ArchiveReason::MergeFailed {
                reason: self.text(20),
            },
            _ => ArchiveReason::ReviewHeld {
                reason: self.text(20),
            },
        }
    }

    fn stage(&mut self) -> Stage {
        match self.below(7) {
            0 => Stage::Backlog,
            1 => Stage::Coding,
            2 => Stage::Qa,
            3 => Stage::Merge {
                feature_branch: self.text(30),
                commits_ahead: self.commits(),
            },
            4 => Stage::MergeFailure {
                kind: self.text(10),
                reason: self.text(30),
            },
            5 => Stage::Done {
                merged_at: self.time(),
                merge_commit: self.text(40),
            },
            _ => Stage::Archived {
                archived_at: self.time(),
                reason: self.reason(),
            },
        }
    }

    fn event(&mut self) -> PipelineEvent {
        use PipelineEvent as E;
        match self.below(14) {
            0 => E::DepsMet,
            1 => E::GatesStarted,
            2 => E::QaSkipped {
                branch: self.text(30),
                commits: self.commits(),
            },
            3 => E::GatesPassed {
                branch: self.text(30),
                commits: self.commits(),
            },
            4 => E::GatesFailed {
                reason: self.text(30),
            },
            5 => E::MergeSucceeded {
                commit: self.text(40),
            },
            6 => E::MergeConflict {
                kind: self.text(10),
                reason: self.text(30),
            },
            7 => E::MergeFailedFinal {
                reason: self.text(30),
            },
            8 => E::Accepted,
            9 => E::Block {
                reason: self.text(30),
            },
            10 => E::Unblock,
            11 => E::Abandon,
            12 => E::Supersede { by: self.story_id() },
            _ => E::ReviewHold {
                reason: self.text(30),
            },
        }
    }

    fn execution(&mut self) -> ExecutionState {
        match self.below(5) {
            0 => ExecutionState::Idle,
            1 => ExecutionState::Pending {
                agent: self.text(12),
                since: self.time(),
            },
            2 => ExecutionState::Running {
                agent: self.text(12),
                started_at: self.time(),
                last_heartbeat: self.time(),
            },
            3 => ExecutionState::RateLimited {
                agent: self.text(12),
                resume_at: self.time(),
            },
            _ => ExecutionState::Completed {
                agent: self.text(12),
                exit_code: self.below(u32::MAX) as i32,
                completed_at: self.time(),
            },
        }
    }
}

/// A record as merging could leave it: several authors, histories whose entries the
/// table derives (mostly following each other, some from another stage as concurrent
/// transitions are, a few with a target the table does not derive), claims with
/// releases and clearings, execution states.
fn arbitrary_record(src: &mut Src<'_>) -> StoryRecord {
    let authors: Vec<NodeId> = (0..1 + src.below(4)).map(|_| src.node()).collect();
    let mut rec = StoryRecord::default();
    if !src.one_in(4) {
        rec.created = Some((src.stamp(&authors), src.op_id()));
    }
    if !src.one_in(4) {
        rec.name = Some(Lww {
            stamp: src.stamp(&authors),
            value: src.text(60),
        });
    }
    if !src.one_in(4) {
        rec.body = Some(Lww {
            stamp: src.stamp(&authors),
            value: (!src.one_in(3)).then(|| src.text(90)),
        });
    }
    if !src.one_in(4) {
        rec.depends_on = Some(Lww {
            stamp: src.stamp(&authors),
            value: (0..src.below(3)).map(|_| src.story_id()).collect(),
        });
    }
    if src.one_in(4) {
        rec.deleted = Some(src.stamp(&authors));
    }

    let mut stamps: Vec<Stamp> = (0..src.below(10)).map(|_| src.stamp(&authors)).collect();
    stamps.sort();
    stamps.dedup();
    for stamp in stamps {
        let mut from = if src.one_in(4) { src.stage() } else { rec.stage() };
        let wall = src.time();
        let event = (0..8)
            .map(|_| src.event())
            .find(|e| transition(&from, e, wall).is_ok());
        let event = event.unwrap_or_else(|| {
            from = Stage::Coding;
            PipelineEvent::Abandon
        });
        let to = if src.one_in(16) {
            src.stage()
        } else {
            transition(&from, &event, wall).unwrap()
        };
        let base = match src.below(3) {
            0 => None,
            1 => rec.stage_op(),
            _ => Some(src.op_id()),
        };
        rec.history.push(HistoryEntry {
            stamp,
            op_id: src.op_id(),
            wall,
            event,
            from,
            to,
            base,
            forced: src
                .one_in(4)
                .then(|| authors[src.below(authors.len() as u32) as usize]),
        });
    }

    for _ in 0..src.below(4) {
        let stamp = src.stamp(&authors);
        let lease = (!src.one_in(3)).then(|| Lease {
            node: if src.one_in(4) { src.node() } else { stamp.author },
            claimed_at: src.time(),
            expires_at: src.time(),
        });
        if src.one_in(8) {
            rec.claims.entries.insert(src.node(), Lww { stamp, value: lease });
        } else {
            rec.claims.set(stamp, lease);
        }
    }
    for _ in 0..src.below(3) {
        let (node, through) = (src.node(), src.lamport());
        rec.claims.clear(node, through);
    }
    for _ in 0..src.below(4) {
        let stamp = src.stamp(&authors);
        let value = src.execution();
        rec.execution.insert(stamp.author, Lww { stamp, value });
    }
    rec
}

/// What a case exercised, so the seeded loop can show it reached every layout branch.
#[derive(Debug, Default)]
struct Coverage {
    from_stored: usize,
    to_stored: usize,
    base_previous: usize,
    base_stored: usize,
    entries: usize,
}

fn round_trip(rec: &StoryRecord, coverage: &mut Coverage) {
    let value = encode_story(rec);
    assert_eq!(&decode_story(&value).unwrap(), rec);
    // Which layout branches the entries take.
    let mut previous: Option<&HistoryEntry> = None;
    for h in &rec.history {
        coverage.entries += 1;
        if h.from != previous.map_or(Stage::Backlog, |p| p.to.clone()) {
            coverage.from_stored += 1;
        }
        if transition(&h.from, &h.event, h.wall).as_ref() != Ok(&h.to) {
            coverage.to_stored += 1;
        }
        match (h.base, previous) {
            (Some(b), Some(p)) if b == p.op_id => coverage.base_previous += 1,
            (Some(_), _) => coverage.base_stored += 1,
            _ => {}
        }
        previous = Some(h);
    }
}

fn nums_from(seed: u64) -> Vec<u32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..rng.gen_range(0..600)).map(|_| rng.gen()).collect()
}

/// `HUSKIES_TEST_SEED` if set, else a fresh seed; printed so a failure can be replayed.
fn test_seed() -> u64 {
    let seed = match std::env::var("HUSKIES_TEST_SEED") {
        Ok(s) => s.trim().parse().expect("HUSKIES_TEST_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    eprintln!("seed = {seed}");
    seed
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_records_round_trip(nums in prop::collection::vec(any::<u32>(), 0..600)) {
        round_trip(&arbitrary_record(&mut Src { nums: &nums, at: 0 }), &mut Coverage::default());
    }
}

/// Seeded loop over the same builder: prints its seed; `HUSKIES_TEST_SEED=<seed>`
/// replays it, `HUSKIES_TEST_CASES=<n>` runs more cases (300 by default).
#[test]
fn arbitrary_records_round_trip_seeded() {
    let seed = test_seed();
    let cases: u64 = std::env::var("HUSKIES_TEST_CASES").map_or(300, |c| c.parse().unwrap());
    let mut coverage = Coverage::default();
    for case in 0..cases {
        let nums = nums_from(seed.wrapping_add(case));
        round_trip(&arbitrary_record(&mut Src { nums: &nums, at: 0 }), &mut coverage);
    }
    eprintln!("{coverage:?}");
    assert!(
        coverage.from_stored > 0
            && coverage.to_stored > 0
            && coverage.base_previous > 0
            && coverage.base_stored > 0
            && coverage.entries > coverage.from_stored + coverage.to_stored,
        "{coverage:?}"
    );
}

/// Truncations are refused; flipped bytes and random bytes never panic, and whatever
/// they decode to encodes and decodes back to itself.
#[test]
fn damaged_and_random_bytes_are_refused_without_panicking() {
    let seed = test_seed();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut accepted = [0usize; 2];
    let mut records = vec![realistic_record(), StoryRecord::default()];
    for case in 0..20 {
        let nums = nums_from(seed.wrapping_add(case));
        records.push(arbitrary_record(&mut Src { nums: &nums, at: 0 }));
    }
    let mut check = |bytes: &[u8], random: bool| {
        if let Ok(rec) = decode(bytes) {
            accepted[usize::from(random)] += 1;
            assert_eq!(decode(&packed(&rec)).unwrap(), rec);
        }
    };
    for rec in &records {
        let bytes = packed(rec);
        for cut in 0..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Corrupt, "{err}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).unwrap_err().to_string().contains("trailing"));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= rng.gen_range(1..=255u8);
            check(&bad, false);
        }
    }
    for _ in 0..5000 {
        let len = rng.gen_range(0..200);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        // Small node tables and counts reach further into the decoder.
        if let Some(b) = bytes.first_mut() {
            *b %= 3;
        }
        check(&bytes, true);
    }
    eprintln!(
        "decoded to some record: {} values with a flipped byte (most flips land in op ids, \
         text and times), {} of 5000 random inputs",
        accepted[0], accepted[1]
    );
}

fn corrupt_message(bytes: &[u8]) -> String {
    match decode(bytes) {
        Err(Error::Corrupt(m)) => m,
        other => panic!("expected corrupt, got {other:?}"),
    }
}

#[test]
fn specific_damage_is_named() {
    let node = NodeId::from_bytes([7; 32]);
    let other = NodeId::from_bytes([9; 32]);
    let stamp = Stamp {
        lamport: 3,
        author: node,
    };
    let deleted = StoryRecord {
        deleted: Some(stamp),
        ..StoryRecord::default()
    };
    // 1 node, the node, register flags, deleted stamp, then empty history, claims,
    // cleared and execution.
    let mut good = vec![1];
    good.extend_from_slice(&[7; 32]);
    good.extend_from_slice(&[HAS_DELETED, 3, 0, 0, 0, 0, 0]);
    assert_eq!(packed(&deleted), good);
    assert_eq!(decode(&good).unwrap(), deleted);

    let mut bad = good.clone();
    bad[35] = 1;
    assert!(corrupt_message(&bad).contains("node index 1 is outside the table of 1"));
    let mut bad = good.clone();
    bad[33] = 0x80;
    assert!(corrupt_message(&bad).contains("unknown register flags"));
    let mut bad = good.clone();
    bad[33] = 0;
    bad.drain(34..36);
    assert!(corrupt_message(&bad).contains("does not use"));
    let mut bad = good.clone();
    bad[34] = 0x83;
    bad.insert(35, 0);
    assert!(corrupt_message(&bad).contains("overlong"));

    let mut two = vec![2];
    two.extend_from_slice(other.as_bytes());
    two.extend_from_slice(node.as_bytes());
    two.extend_from_slice(&[HAS_DELETED, 3, 0, 0, 0, 0, 0]);
    assert!(corrupt_message(&two).contains("not strictly ascending"));

    // A history entry: DepsMet from Backlog, target left out.
    let entry = |flags: u8, event: &PipelineEvent| {
        let mut v = vec![1];
        v.extend_from_slice(&[7; 32]);
        v.extend_from_slice(&[0, 1, flags, 5, 0]);
        v.extend_from_slice(&[1; 32]);
        codec::encode_into(&Timestamp::from_millis(9), &mut v);
        codec::encode_into(event, &mut v);
        v
    };
    let tail = [0, 0, 0];
    let mut ok = entry(0, &PipelineEvent::DepsMet);
    ok.extend_from_slice(&tail);
    let rec = decode(&ok).unwrap();
    assert_eq!(rec.history[0].to, Stage::Coding);
    assert_eq!(packed(&rec), ok);
    let mut bad = entry(0, &PipelineEvent::Accepted);
    bad.extend_from_slice(&tail);
    let m = corrupt_message(&bad);
    assert!(
        m.contains("history entry 0") && m.contains("table refuses"),
        "{m}"
    );
    let mut bad = entry(0x20, &PipelineEvent::DepsMet);
    bad.extend_from_slice(&tail);
    assert!(corrupt_message(&bad).contains("unknown flags"));
    let mut bad = entry(BASE_PREVIOUS << BASE_SHIFT, &PipelineEvent::DepsMet);
    bad.extend_from_slice(&tail);
    assert!(corrupt_message(&bad).contains("first entry"));
    let mut bad = entry(3 << BASE_SHIFT, &PipelineEvent::DepsMet);
    bad.extend_from_slice(&tail);
    assert!(corrupt_message(&bad).contains("base tag 3"));
    let mut bad = entry(FROM_STORED, &PipelineEvent::DepsMet);
    codec::encode_into(&Stage::Backlog, &mut bad);
    bad.extend_from_slice(&tail);
    assert!(corrupt_message(&bad).contains("source stage it could leave out"));
    let mut bad = entry(TO_STORED, &PipelineEvent::DepsMet);
    codec::encode_into(&Stage::Coding, &mut bad);
    bad.extend_from_slice(&tail);
    assert!(corrupt_message(&bad).contains("target stage it could leave out"));
    let mut bad = ok.clone();
    bad.truncate(bad.len() - 3);
    bad.extend_from_slice(&[1, 0, 0, 0, 2]);
    assert!(corrupt_message(&bad).contains("claim has tag 2"));
    let mut bad = ok.clone();
    bad.truncate(bad.len() - 3);
    bad.extend_from_slice(&[200, 1]);
    assert!(corrupt_message(&bad).contains("claims counts 200 items"));
}

#[test]
fn a_stage_byte_that_disagrees_with_the_record_is_corrupt() {
    let rec = realistic_record();
    let mut value = encode_story(&rec);
    assert_eq!(value[0], crate::pipeline::StageKind::Archived.code());
    value[0] = crate::pipeline::StageKind::Coding.code();
    assert_eq!(
        decode_story(&value).unwrap_err().kind(),
        crate::ErrorKind::Corrupt
    );
}
