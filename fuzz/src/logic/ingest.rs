//! `ingest`: batches of structured ops signed by the fixed member and non-member keys, with
//! arbitrary seqs, prevs, Lamport values, payloads and repeats, ingested into a real store
//! in a temporary directory. After every batch:
//!
//! - `ingest` returned a report (bad ops are rejections, never an error of the call), and
//!   every rejection names its op (all of these ops decode);
//! - every author chain in the store is unbroken, and `verify` is clean;
//! - the projection equals that of a fresh node that ingests the stored ops in one go
//!   (the projection is a function of the set of valid ops, not of arrival order);
//! - the out-of-order buffer stays within its bound.
//!
//! At the end the node is closed and reopened: the reopened projection is the same.

use arbitrary::{Arbitrary, Unstructured};
use huskies_core::{InitMode, Node, VersionVector};

use super::ops::{cluster, preamble, Builder, Item};
use super::{
    assert_chains_unbroken, assert_verify_clean, at_ms, config, snapshot, structured, until_empty, FixedRng,
};

/// One element of the input's flat list: an op, and whether the batch ends after it.
#[derive(Arbitrary, Debug)]
pub struct Step {
    /// The op.
    pub item: Item,
    /// A multiple of 8 ends the batch after this op: the next ops are another `ingest` call.
    pub cut: u8,
}

/// The input. The steps are one flat list (the last field takes the rest of the bytes):
/// nested vectors would give `arbitrary` a coin flip per element and keep batches tiny.
#[derive(Debug)]
pub struct Input {
    /// Start with the genesis and two admissions (keys 1 and 2) in the first batch (seven
    /// inputs in eight: without a genesis, nothing else can count).
    pub preamble: bool,
    /// Ops and batch ends (at most 8 batches of 32 ops are used).
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            preamble: !u.arbitrary::<u8>()?.is_multiple_of(8),
            steps: until_empty(u)?,
        })
    }
}

impl Input {
    /// The batches.
    pub fn batches(&self) -> Vec<Vec<&Item>> {
        let mut out = vec![Vec::new()];
        for step in &self.steps {
            out.last_mut().expect("one batch").push(&step.item);
            if step.cut.is_multiple_of(8) {
                out.push(Vec::new());
            }
        }
        out
    }
}

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    if let Some(input) = structured::<Input>(data) {
        run(&input);
    }
}

/// A node of the fuzz cluster with an empty store (it holds no key of the cluster).
pub fn joining_node(path: &std::path::Path, seed: u64) -> Node {
    Node::init(
        path,
        InitMode::Join { cluster: cluster() },
        &mut FixedRng::new(seed),
        at_ms(0),
        config(),
    )
    .expect("init a joining node")
}

/// Runs the target on a decoded input.
pub fn run(input: &Input) {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = at_ms(30 * 60 * 1000);
    let mut node = joining_node(&dir.path().join("node"), 1);
    let mut b = Builder::default();
    let mut first = if input.preamble {
        preamble(&mut b)
    } else {
        Vec::new()
    };
    let mut sent_ids = std::collections::BTreeSet::new();
    for (i, batch) in input.batches().iter().take(8).enumerate() {
        let mut ops = std::mem::take(&mut first);
        ops.extend(batch.iter().take(32).filter_map(|item| b.item(item)));
        sent_ids.extend(ops.iter().map(|o| o.id()));
        if super::verbose() {
            for o in &ops {
                let c = o.content();
                eprintln!(
                    "  batch {i}: {} author {} seq {} lamport {} prev {:?} {:?}",
                    o.id(),
                    c.author,
                    c.seq,
                    c.lamport,
                    c.prev,
                    c.payload
                );
            }
        }
        let report = node
            .ingest(ops.into_iter().map(|o| o.into_unverified()).collect())
            .unwrap_or_else(|e| panic!("batch {i}: ingest failed as a call: {e}"));
        if super::verbose() {
            eprintln!(
                "  batch {i}: applied {}, duplicates {}, buffered {}, forks {:?}, contested {}",
                report.applied, report.duplicates, report.buffered, report.forks, report.contested
            );
            for r in &report.rejected {
                eprintln!(
                    "  batch {i}: refused {:?} ({:?} seq {:?}): {}",
                    r.op_id, r.author, r.seq, r.reason
                );
            }
        }
        // A report may refuse ops of earlier batches too: an op parked for its author's
        // authority and tried again here (`Node::retry_parked`) that is refused for another
        // reason now. Each refused op was sent in some batch.
        for r in &report.rejected {
            assert!(
                r.op_id.is_some() && r.author.is_some() && r.seq.is_some(),
                "batch {i}: a rejection of a decodable op does not name it: {r:?}"
            );
            let id = r.op_id.expect("named");
            assert!(
                sent_ids.contains(&id),
                "batch {i}: a rejection of an op never sent: {r:?}"
            );
            assert!(!r.reason.to_string().is_empty());
        }
        assert!(
            node.buffered_ops() <= config().max_buffered_ops,
            "buffer over its bound"
        );
        check(&node, now, dir.path(), i);
    }
    let before = snapshot(&node, now);
    if super::verbose() {
        eprintln!(
            "ingest: {} batches of {} items, {} ops signed, store holds {}, {} stories, {} members, {} forks",
            input.batches().len(),
            input.batches().iter().map(Vec::len).sum::<usize>(),
            b.signed.len(),
            before.vv.total(),
            before.stories.len(),
            before.members.len(),
            before.forks.len()
        );
    }
    let home = node.home().to_path_buf();
    drop(node);
    let reopened = Node::open(&home, config()).expect("reopen");
    assert_eq!(
        snapshot(&reopened, now),
        before,
        "reopening changed the projection"
    );
}

/// The per-batch invariants of [`run`].
fn check(node: &Node, now: huskies_core::Timestamp, dir: &std::path::Path, batch: usize) {
    assert_chains_unbroken(node);
    assert_verify_clean(node);
    // A fresh node fed every stored op (and the fork evidence) in one batch: same projection.
    let stored = node.ops_since(&VersionVector::default()).expect("ops_since");
    if super::verbose() {
        for o in &stored {
            let c = o.content();
            eprintln!(
                "  stored after batch {batch}: {} author {} seq {} lamport {}",
                o.id(),
                c.author,
                c.seq,
                c.lamport
            );
        }
    }
    let fresh_path = dir.join(format!("fresh{batch}"));
    let mut fresh = joining_node(&fresh_path, 2);
    // One ingest sorts by Lamport time, so an op signed with a Lamport time below that of
    // its author's admission (a key rotation or `MemberAdd` with a higher Lamport) meets an
    // unknown author, and an op whose author a later-sorted fork voids a demotion of
    // (fuzz/regressions/ingest/demoted-admin-op-refused-by-fresh-node: fork evidence sorts
    // by its own Lamport time) meets a role it lacks. The ingest itself tries such ops
    // again once its commit changed membership (`Node::retry_parked`), so one call must
    // keep every stored op: any refusal is a failure.
    let report = fresh
        .ingest(stored.into_iter().map(|o| o.into_unverified()).collect())
        .expect("fresh ingest");
    assert!(
        report.rejected.is_empty(),
        "batch {batch}: stored ops were refused by a fresh node: {:?}",
        report.rejected
    );
    assert_eq!(
        snapshot(&fresh, now),
        snapshot(node, now),
        "batch {batch}: projection differs from a fresh node's that ingested the stored ops"
    );
    drop(fresh);
    let _ = std::fs::remove_dir_all(&fresh_path);
}
