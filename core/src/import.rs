//! Importing a bundle (`huskies import`, or any host that moves bundles): the bundle is
//! decoded once and ingested in bounded chunks, with progress after each, and the chunks'
//! reports are merged into one.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};

use rand_core::CryptoRngCore;

use crate::home::remove_made;
use crate::node::decode_split;
use crate::{
    decode_bundle, read_bundle, split_bundles, verify_ops, ClusterId, Error, Event, IngestReport, InitMode,
    Node, NodeConfig, NodeKey, Payload, Rejection, SledStore, Store, Timestamp, UnverifiedOp,
};

/// Ops per ingest call when importing a bundle. Bounds the verified ops held at once (a
/// bundle can hold a whole cluster's history) and sets how often progress is reported.
/// Each chunk is committed on its own: an error in a later chunk leaves the earlier ones
/// stored, which loses nothing (every stored op is valid on its own; importing again skips
/// them as duplicates).
pub const IMPORT_CHUNK_OPS: usize = 4096;

impl IngestReport {
    /// Adds what a later ingest did to this report: counts are summed, rejections and
    /// events appended in order, forks appended unless already listed. `buffered` is the
    /// sum of what each ingest held back (an op the later ingest released is not taken off).
    pub fn absorb(&mut self, later: IngestReport) {
        self.applied += later.applied;
        self.duplicates += later.duplicates;
        self.buffered = self.buffered.saturating_add(later.buffered);
        self.contested += later.contested;
        self.rejected.extend(later.rejected);
        for fork in later.forks {
            if !self.forks.contains(&fork) {
                self.forks.push(fork);
            }
        }
        self.events.extend(later.events);
    }
}

/// What [`check_bundle_stream`] found in an intact bundle stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleCheck {
    /// Bundles in the stream.
    pub bundles: u64,
    /// Ops in the stream (every one decodes and carries a good signature).
    pub ops: u64,
    /// The cluster founded by a genesis op in the stream, and its name (an export of a
    /// whole history holds one).
    pub genesis: Option<(ClusterId, String)>,
    /// How many ops name each cluster.
    pub clusters: BTreeMap<ClusterId, u64>,
}

impl BundleCheck {
    /// The cluster the stream belongs to: its genesis op's, else the one cluster all its
    /// ops name; `None` when it holds no op or ops of several clusters and no genesis.
    pub fn cluster(&self) -> Option<ClusterId> {
        if let Some((cluster, _)) = &self.genesis {
            return Some(*cluster);
        }
        match self.clusters.keys().collect::<Vec<_>>()[..] {
            [only] => Some(*only),
            _ => None,
        }
    }
}

/// Checks a whole bundle stream from `r` without storing anything: the framing of every
/// bundle, and that every op decodes and carries a good signature. One flipped byte
/// anywhere makes it an `invalid_argument` error that says where, so a caller can refuse a
/// damaged file before it imports any of it ([`Node::import_checked`]). Reads one bundle
/// at a time (bounded memory). What the ops say (membership, chains, clusters) is judged
/// by ingest, not here.
pub fn check_bundle_stream(r: &mut impl Read) -> Result<BundleCheck, Error> {
    let mut check = BundleCheck::default();
    let mut keys = HashMap::new();
    let damaged = |bundle: u64, op: usize, why: String| {
        Error::InvalidArgument(format!("the bundle is damaged: op {op} of bundle {bundle} {why}"))
    };
    while let Some(bytes) = read_bundle(r)? {
        let bundle = check.bundles;
        let mut decoded = Vec::new();
        for (i, op) in decode_bundle(&bytes)?.into_iter().enumerate() {
            decoded.push(op.map_err(|e| damaged(bundle, i, format!("does not decode ({e})")))?);
        }
        for (i, op) in verify_ops(decoded, &mut keys).into_iter().enumerate() {
            let op = op.map_err(|(_, e)| damaged(bundle, i, format!("fails its signature check ({e})")))?;
            let content = op.content();
            *check.clusters.entry(content.cluster).or_default() += 1;
            if let Payload::Genesis { name, .. } = &content.payload {
                check.genesis.get_or_insert((content.cluster, name.clone()));
            }
            check.ops += 1;
        }
        check.bundles += 1;
    }
    Ok(check)
}

impl<S: Store> Node<S> {
    /// Imports a bundle stream that is checked whole first ([`check_bundle_stream`]), then
    /// rewound and imported ([`Node::import_reader`]): a damaged file is refused with
    /// nothing stored, and memory stays bounded by one bundle. Ops that are intact but
    /// not valid here (another cluster's, a non-member's) are the report's `rejected`.
    pub fn import_checked<R: Read + Seek>(
        &mut self,
        r: &mut R,
        progress: impl FnMut(u64, u64),
    ) -> Result<IngestReport, Error> {
        let io = |e: std::io::Error| Error::io("rewinding the bundle", e);
        let start = r.stream_position().map_err(io)?;
        check_bundle_stream(r)?;
        r.seek(SeekFrom::Start(start)).map_err(io)?;
        self.import_reader(r, progress)
    }

    /// Decodes a bundle (see [`crate::encode_bundle`]), or a bundle stream (bundles back to
    /// back, as `huskies export` writes them), and ingests it in chunks of
    /// [`IMPORT_CHUNK_OPS`], calling `progress(ops_ingested, ops_in_input)` once the
    /// framing is checked and after each chunk.
    ///
    /// The report lists the ops that do not decode first (as rejections; per bundle), then
    /// what the chunks did; its `buffered` is the number of ops this node holds back after
    /// the import (waiting for predecessors). A broken bundle anywhere in `bytes` is an
    /// error and ingests nothing. Only one bundle's ops are decoded at a time.
    pub fn import_bundle(
        &mut self,
        bytes: &[u8],
        progress: impl FnMut(u64, u64),
    ) -> Result<IngestReport, Error> {
        import_slice(self, bytes, IMPORT_CHUNK_OPS, progress)
    }

    /// Imports a bundle stream read from `r` one bundle at a time (see
    /// [`crate::read_bundle`]), so an export of any size is imported in bounded memory.
    /// `progress(ops_ingested, ops_in_bundles_read_so_far)` is called as each bundle is read
    /// (the next one is read while the one before is still merging) and after each chunk.
    /// Unlike [`Node::import_bundle`], a broken bundle is found only when it is reached: the
    /// bundles before it stay stored (each stored op is valid on its own; importing again
    /// skips them as duplicates) and the error is returned.
    ///
    /// Subscribers hear every imported transition as they do for any ingest. The report's
    /// `events` stay empty: one event per transition of a whole history would not be
    /// bounded; [`Node::import_reader_with_events`] hands them over chunk by chunk.
    pub fn import_reader(
        &mut self,
        r: &mut impl std::io::Read,
        progress: impl FnMut(u64, u64),
    ) -> Result<IngestReport, Error> {
        self.import_reader_with_events(r, progress, |_| {})
    }

    /// [`Node::import_reader`], handing the events each chunk's ingest published (what
    /// [`IngestReport::events`] holds for one ingest, and what subscribers heard) to
    /// `events`, in order, after each chunk, so a caller can report or forward every
    /// imported transition without the import holding them all.
    pub fn import_reader_with_events(
        &mut self,
        r: &mut impl std::io::Read,
        progress: impl FnMut(u64, u64),
        mut events: impl FnMut(Vec<Event>),
    ) -> Result<IngestReport, Error> {
        use std::cell::{Cell, RefCell};
        // Called when a bundle is read (by the chunk iterator) and after each chunk: never
        // both at once, as the pipeline reads only between chunks.
        let progress = RefCell::new(progress);
        let (done, total) = (Cell::new(0u64), Cell::new(0u64));
        let bundles = std::iter::from_fn(|| read_bundle(r).transpose());
        let chunks = chunks_of(bundles, IMPORT_CHUNK_OPS, |n| {
            total.set(total.get().saturating_add(n));
            (progress.borrow_mut())(done.get(), total.get());
        });
        let mut report = IngestReport::default();
        self.ingest_pipelined(chunks, |_, chunk, mut one| {
            events(std::mem::take(&mut one.events));
            report.rejected.extend(chunk.rejected);
            report.absorb(one);
            done.set(done.get().saturating_add(chunk.ops));
            (progress.borrow_mut())(done.get(), total.get());
            Ok(())
        })?;
        report.buffered = self.buffered_ops();
        Ok(report)
    }
}

impl Node<SledStore> {
    /// Makes a new home at `root` from a whole export (`huskies export`, a bundle stream
    /// holding the cluster's genesis): the stream is checked ([`check_bundle_stream`]), a
    /// home of its cluster is created and every op imported. With `key`, the home takes that
    /// node key — the node's own, kept apart from the lost home — and so is that node again
    /// (the key must be a member in the export); without, it gets a new key and is a copy
    /// of the cluster's state that is not a member.
    ///
    /// All or nothing: when the stream is damaged, holds no genesis, any op is rejected or
    /// the key is not a member, the half-made home is removed and the error says why.
    ///
    /// A restored node knows only what the export held. If it kept writing after the export
    /// and peers hold those ops, it must sync with them before it writes again (the sync
    /// handshake sends them back, reporting `SessionEvent::BehindOwnChain`): writing
    /// first would reuse sequence numbers and fork its chain.
    pub fn restore<R: Read + Seek>(
        root: &std::path::Path,
        r: &mut R,
        key: Option<NodeKey>,
        rng: &mut impl CryptoRngCore,
        now: Timestamp,
        config: NodeConfig,
    ) -> Result<(Node, IngestReport), Error> {
        let io = |e: std::io::Error| Error::io("rewinding the bundle", e);
        let start = r.stream_position().map_err(io)?;
        let check = check_bundle_stream(r)?;
        let Some((cluster, _)) = check.genesis else {
            return Err(Error::InvalidArgument(
                "the bundle holds no genesis op: it is not a whole export of a cluster (`huskies export` writes one)"
                    .into(),
            ));
        };
        r.seek(SeekFrom::Start(start)).map_err(io)?;
        let existed = root.exists();
        let with_key = key.is_some();
        let key = key.unwrap_or_else(|| NodeKey::generate(rng));
        let own = key.node_id();
        let mut node = Node::init_with_key(root, InitMode::Join { cluster }, key, rng, now, config)?;
        let imported = node.import_reader(r, |_, _| {}).and_then(|report| {
            if let Some(first) = report.rejected.first() {
                return Err(Error::InvalidArgument(format!(
                    "{} op(s) of the bundle were rejected (first: {}); nothing was restored",
                    report.rejected.len(),
                    first.reason
                )));
            }
            if with_key && node.members().iter().all(|m| m.node != own || m.removed) {
                return Err(Error::InvalidArgument(format!(
                    "the key is node {own}'s, which is not a member of cluster {cluster} in this bundle"
                )));
            }
            Ok(report)
        });
        match imported {
            Ok(report) => Ok((node, report)),
            Err(e) => {
                drop(node);
                remove_made(root, existed);
                Err(e)
            }
        }
    }
}

/// [`Node::import_bundle`] with chunks of `chunk_ops`.
fn import_slice<S: Store>(
    node: &mut Node<S>,
    bytes: &[u8],
    chunk_ops: usize,
    mut progress: impl FnMut(u64, u64),
) -> Result<IngestReport, Error> {
    let bundles = split_bundles(bytes)?;
    let total = bundles
        .iter()
        .map(|b| op_count(b))
        .fold(0u64, u64::saturating_add);
    let mut report = IngestReport::default();
    let mut done = 0u64;
    progress(done, total);
    let chunks = chunks_of(bundles.into_iter().map(Ok), chunk_ops, |_| {});
    node.ingest_pipelined(chunks, |_, chunk, one| {
        report.rejected.extend(chunk.rejected);
        report.absorb(one);
        done = done.saturating_add(chunk.ops);
        progress(done, total);
        Ok(())
    })?;
    report.buffered = node.buffered_ops();
    Ok(report)
}

/// The op count in a framed bundle's header.
fn op_count(bundle: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(
        bundle[5..9].try_into().expect("a framed bundle"),
    ))
}

/// One chunk of an import, beside its ops: the rejections of its bundle's ops that do not
/// decode (on the bundle's first chunk; they come before what the chunk's ingest reports)
/// and how many ops the chunk had in its bundle.
struct Chunk {
    rejected: Vec<Rejection>,
    ops: u64,
}

/// Splits a sequence of framed bundles into ingest inputs of at most `chunk_ops` ops each,
/// decoding one bundle at a time (when its first chunk is asked for); `read(n)` is told
/// the op count of each bundle as it is read. A bundle whose ops all fail to decode still
/// yields one (empty) chunk, carrying its rejections.
fn chunks_of<B: AsRef<[u8]>>(
    mut bundles: impl Iterator<Item = Result<B, Error>>,
    chunk_ops: usize,
    mut read: impl FnMut(u64),
) -> impl Iterator<Item = Result<(Chunk, Vec<UnverifiedOp>), Error>> {
    let chunk_ops = chunk_ops.max(1);
    let mut rest = Vec::new().into_iter();
    let mut rejected = Vec::new();
    std::iter::from_fn(move || {
        while rest.len() == 0 && rejected.is_empty() {
            let bundle = match bundles.next()? {
                Ok(bundle) => bundle,
                Err(e) => return Some(Err(e)),
            };
            let bundle = bundle.as_ref();
            read(op_count(bundle));
            match decode_split(bundle) {
                Ok((good, bad)) => {
                    rest = good.into_iter();
                    rejected = bad;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        let ops: Vec<UnverifiedOp> = rest.by_ref().take(chunk_ops).collect();
        let n = u64::try_from(ops.len()).unwrap_or(u64::MAX);
        Some(Ok((
            Chunk {
                rejected: std::mem::take(&mut rejected),
                ops: n,
            },
            ops,
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        encode_bundle, Command, InitMode, NodeConfig, NodeId, RejectReason, SignedOp, StoryId, Timestamp,
        VersionVector,
    };

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_millis(1_763_700_000_000).add_secs(secs)
    }

    fn init(home: &std::path::Path, mode: InitMode) -> Node {
        Node::init(home, mode, &mut rand_core::OsRng, t(0), NodeConfig::default()).unwrap()
    }

    /// A cluster founder with `stories` stories, and a fresh member of its cluster.
    fn pair(dir: &std::path::Path, stories: usize) -> (Node, Node) {
        let mut a = init(&dir.join("a"), InitMode::NewCluster { name: "p".into() });
        for i in 0..stories {
            let id = StoryId::new(format!("{i}_s")).unwrap();
            let add = Command::AddStory {
                id,
                name: "s".into(),
                body: None,
                depends_on: vec![],
            };
            a.execute(t(1), add).unwrap();
        }
        let b = init(
            &dir.join("b"),
            InitMode::Join {
                cluster: a.cluster_id(),
            },
        );
        (a, b)
    }

    /// `bundle` with one more entry, `junk`, that frames but does not decode, first.
    fn with_junk_first(bundle: &[u8], junk: &[u8]) -> Vec<u8> {
        let count = u32::from_le_bytes(bundle[5..9].try_into().unwrap()) + 1;
        let mut out = bundle[..5].to_vec();
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&u32::try_from(junk.len()).unwrap().to_le_bytes());
        out.extend_from_slice(junk);
        out.extend_from_slice(&bundle[9..]);
        out
    }

    #[test]
    fn a_bundle_imported_in_chunks_ends_as_one_ingest_does() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = pair(dir.path(), 7);
        let ops = a.ops_since(&VersionVector::default()).unwrap();
        let bundle = with_junk_first(&encode_bundle(ops.iter()), &[0xff; 40]);
        let mut calls = Vec::new();
        let report = import_slice(&mut b, &bundle, 3, |done, total| calls.push((done, total))).unwrap();
        let n = ops.len() as u64;
        assert_eq!(report.applied, ops.len());
        assert_eq!(report.duplicates, 0);
        assert_eq!(report.buffered, 0);
        assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
        assert!(matches!(report.rejected[0].reason, RejectReason::Malformed(_)));
        let expected: Vec<(u64, u64)> = (0..=n.div_ceil(3)).map(|i| ((i * 3).min(n), n + 1)).collect();
        assert_eq!(
            calls, expected,
            "progress once decoded, then after each chunk of 3"
        );
        assert_eq!(b.version_vector(), a.version_vector());
        // Again: everything is a duplicate, nothing is applied.
        let again = b.import_bundle(&bundle, |_, _| {}).unwrap();
        assert_eq!((again.applied, again.duplicates), (0, ops.len()));
    }

    /// The seed of a randomized test: `HUSKIES_TEST_SEED`, else a fresh one; printed.
    fn test_seed() -> u64 {
        let seed = match std::env::var("HUSKIES_TEST_SEED") {
            Ok(s) => s.trim().parse().expect("HUSKIES_TEST_SEED must be a u64"),
            Err(_) => rand_core::RngCore::next_u64(&mut rand_core::OsRng),
        };
        eprintln!("seed = {seed} (replay: HUSKIES_TEST_SEED={seed})");
        seed
    }

    /// A random history of two authors of one cluster (and, with `remove`, the second
    /// one's removal), as the founder holds it.
    fn random_history(dir: &std::path::Path, rng: &mut impl rand::Rng, remove: bool) -> Node {
        use crate::{PipelineEvent, Role};
        let mut a = init(&dir.join("a"), InitMode::NewCluster { name: "p".into() });
        let mut c = init(
            &dir.join("c"),
            InitMode::Join {
                cluster: a.cluster_id(),
            },
        );
        a.execute(t(1), Command::add_member(c.node_id(), Role::Member))
            .unwrap();
        let sync = |from: &Node, to: &mut Node| {
            let report = to
                .ingest_bundle(&from.export_since(&to.version_vector()).unwrap())
                .unwrap();
            assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        };
        sync(&a, &mut c);
        let steps = rng.gen_range(60..160);
        for step in 0..steps {
            let node = if rng.gen_bool(0.5) { &mut a } else { &mut c };
            let id = StoryId::new(format!("{}_s", rng.gen_range(0..12))).unwrap();
            let command = match rng.gen_range(0..6) {
                0 | 1 => Command::add_story(id, "s").into_command(),
                2 => Command::event(id, PipelineEvent::DepsMet),
                3 => Command::event(id, PipelineEvent::GatesStarted),
                4 => Command::claim(id, 600),
                _ => Command::release(id),
            };
            // Commands the local rules refuse (a story added twice, ...) are skipped.
            let _ = node.execute(t(2 + step), command);
            if rng.gen_bool(0.2) {
                sync(&a, &mut c);
                sync(&c, &mut a);
            }
        }
        sync(&c, &mut a);
        if remove {
            a.execute(t(500), Command::remove_member(c.node_id())).unwrap();
        }
        a
    }

    /// Signed bytes of `ops` (good, each twice now and then, some out of order), with ops
    /// of another cluster, ops whose signature fails and entries that do not decode mixed
    /// in, cut into bundles back to back.
    fn hostile_stream(ops: &[SignedOp], foreign: &[SignedOp], rng: &mut impl rand::Rng) -> Vec<u8> {
        let mut entries: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            entries.push(op.bytes().to_vec());
            match rng.gen_range(0..20) {
                0 => entries.push(op.bytes().to_vec()),
                1 => {
                    let mut bad = op.bytes().to_vec();
                    let last = bad.len() - 1;
                    bad[last] ^= 0x40;
                    entries.push(bad);
                }
                2 => entries.push(vec![0xff; rng.gen_range(1..50)]),
                3 if !foreign.is_empty() => {
                    entries.push(foreign[rng.gen_range(0..foreign.len())].bytes().to_vec())
                }
                _ => {}
            }
        }
        // At least one entry of each bad kind, wherever the dice put them.
        let mut forged = ops[rng.gen_range(0..ops.len())].bytes().to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 0x02;
        let mut bad = vec![forged, vec![0xfe; 3]];
        bad.extend(foreign.first().map(|op| op.bytes().to_vec()));
        for entry in bad {
            let at = rng.gen_range(0..=entries.len());
            entries.insert(at, entry);
        }
        for _ in 0..entries.len() / 10 {
            let (i, j) = (rng.gen_range(0..entries.len()), rng.gen_range(0..entries.len()));
            entries.swap(i, j);
        }
        let mut stream = Vec::new();
        let mut rest = &entries[..];
        while !rest.is_empty() {
            let n = rng.gen_range(1..=rest.len().min(40));
            stream.extend(crate::bundle::encode_bundle_bytes(
                rest[..n].iter().map(Vec::as_slice),
            ));
            rest = &rest[n..];
        }
        stream
    }

    /// A random history (with a removal or not), another cluster's ops, and a hostile
    /// stream made of both.
    struct Case {
        a: Node,
        ops: Vec<SignedOp>,
        foreign: Vec<SignedOp>,
        stream: Vec<u8>,
        remove: bool,
    }

    fn hostile_case(dir: &std::path::Path, rng: &mut impl rand::Rng) -> Case {
        let remove = rng.gen_bool(0.5);
        let a = random_history(dir, rng, remove);
        let ops = a.ops_since(&VersionVector::default()).unwrap();
        let other = init(&dir.join("x"), InitMode::NewCluster { name: "x".into() });
        let foreign = other.ops_since(&VersionVector::default()).unwrap();
        let stream = hostile_stream(&ops, &foreign, rng);
        Case {
            a,
            ops,
            foreign,
            stream,
            remove,
        }
    }

    /// What importing `stream` did before the import was pipelined: each bundle decoded,
    /// its undecodable entries reported, then its ops ingested chunk by chunk, one after
    /// the other (the reference the pipeline must match exactly).
    fn sequential_import(node: &mut Node, stream: &[u8], chunk_ops: usize) -> (IngestReport, Vec<Event>) {
        let mut report = IngestReport::default();
        let mut events = Vec::new();
        for bundle in split_bundles(stream).unwrap() {
            let mut good = Vec::new();
            for op in decode_bundle(bundle).unwrap() {
                match op {
                    Ok(op) => good.push(op),
                    Err(e) => report.rejected.push(Rejection {
                        op_id: None,
                        author: None,
                        seq: None,
                        reason: e.into(),
                    }),
                }
            }
            for chunk in good.chunks(chunk_ops) {
                let mut one = node.ingest(chunk.to_vec()).unwrap();
                events.extend(std::mem::take(&mut one.events));
                report.absorb(one);
            }
        }
        report.buffered = node.buffered_ops();
        (report, events)
    }

    /// Everything a node holds that an import can change, in comparable form.
    fn holdings(node: &Node) -> (VersionVector, Vec<u8>, Vec<crate::Story>, usize) {
        (
            node.version_vector(),
            node.export_since(&VersionVector::default()).unwrap(),
            node.stories(None, t(1000)).unwrap(),
            node.buffered_ops(),
        )
    }

    /// How a stream is cut into ingests does not change what a node keeps. Found by
    /// `a_pipelined_import_matches_sequential_ingest_seeded` (seed 1615437209738749185,
    /// always run here): an op refused as unauthorized before a later op of the stream
    /// (fork evidence that voids the removal that cut its author) restored its author's
    /// authority stayed refused, so chunks of one size kept less than chunks of another.
    /// Such ops are now parked and tried again (`Node::retry_parked`). Then four random
    /// cases; `HUSKIES_TEST_SEED` replays them.
    #[test]
    fn chunking_does_not_change_the_store() {
        use rand::{Rng, SeedableRng};
        let random = test_seed();
        let mut seeds = vec![1_615_437_209_738_749_185];
        let mut pick = rand_chacha::ChaCha8Rng::seed_from_u64(random);
        seeds.extend((0..4).map(|_| pick.gen::<u64>()));
        for seed in seeds {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let dir = tempfile::tempdir().unwrap();
            let Case { a, stream, .. } = hostile_case(dir.path(), &mut rng);
            let chunk_ops = rng.gen_range(1..=64);
            eprintln!("case seed {seed}: chunks of {chunk_ops}");
            let fresh = |name: &str| {
                init(
                    &dir.path().join(name),
                    InitMode::Join {
                        cluster: a.cluster_id(),
                    },
                )
            };
            let (mut cut, mut whole) = (fresh("cut"), fresh("whole"));
            let _ = sequential_import(&mut cut, &stream, chunk_ops);
            let _ = sequential_import(&mut whole, &stream, IMPORT_CHUNK_OPS);
            assert!(
                holdings(&cut) == holdings(&whole),
                "chunks of {chunk_ops} and one ingest keep different stores (case seed {seed}, \
                 HUSKIES_TEST_SEED={random})"
            );
            assert_eq!(
                holdings(&whole).0,
                a.version_vector(),
                "the import keeps what the exporter holds (case seed {seed})"
            );
        }
    }

    #[test]
    fn a_pipelined_import_matches_sequential_ingest_seeded() {
        use rand::{Rng, SeedableRng};
        let seed = test_seed();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for case in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let Case {
                a,
                ops,
                stream,
                remove,
                ..
            } = hostile_case(dir.path(), &mut rng);
            let chunk_ops = rng.gen_range(1..=64);
            eprintln!(
                "case {case}: {} ops, removal {remove}, chunks of {chunk_ops}",
                ops.len()
            );

            let reference_node = |name: &str| {
                init(
                    &dir.path().join(name),
                    InitMode::Join {
                        cluster: a.cluster_id(),
                    },
                )
            };
            let mut sequential = reference_node("seq");
            let (expected, expected_events) = sequential_import(&mut sequential, &stream, chunk_ops);
            assert!(!expected.rejected.is_empty(), "the stream holds bad entries");

            let mut sliced = reference_node("slice");
            let report = import_slice(&mut sliced, &stream, chunk_ops, |_, _| {}).unwrap();
            let mut events = report.events.clone();
            let mut without_events = report;
            without_events.events.clear();
            let mut expected_plain = expected.clone();
            expected_plain.events.clear();
            assert_eq!(without_events, expected_plain, "case {case}: reports differ");
            assert_eq!(events, expected_events, "case {case}: events differ");
            assert_eq!(
                holdings(&sliced),
                holdings(&sequential),
                "case {case}: stores differ"
            );

            let mut streamed = reference_node("stream");
            let mut handed = Vec::new();
            let report = streamed
                .import_reader_with_events(&mut stream.as_slice(), |_, _| {}, |e| handed.extend(e))
                .unwrap();
            let mut full_chunks = expected_plain.clone();
            let mut reference = sequential;
            if chunk_ops != IMPORT_CHUNK_OPS {
                // import_reader uses IMPORT_CHUNK_OPS: its report (which op was refused in
                // which chunk) is that reference's; the store is the same for any chunking
                // (`chunking_does_not_change_the_store`), checked below.
                let mut again = reference_node("seq-full");
                let (r, e) = sequential_import(&mut again, &stream, IMPORT_CHUNK_OPS);
                full_chunks = IngestReport { events: vec![], ..r };
                events = e;
                reference = again;
            }
            assert_eq!(report, full_chunks, "case {case}: streamed report differs");
            assert_eq!(handed, events, "case {case}: streamed events differ");
            assert_eq!(
                holdings(&streamed),
                holdings(&reference),
                "case {case}: streamed store differs"
            );
            assert_eq!(
                holdings(&streamed),
                holdings(&sliced),
                "case {case}: chunking changed the store"
            );
        }
    }

    #[test]
    fn a_large_ingest_verified_beside_the_merge_matches_verifying_first_seeded() {
        use rand::{Rng, SeedableRng};
        let seed = test_seed();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        for case in 0..4 {
            let dir = tempfile::tempdir().unwrap();
            let made = hostile_case(dir.path(), &mut rng);
            let (a, ops, foreign, stream, remove) =
                (made.a, made.ops, made.foreign, made.stream, made.remove);
            let input: Vec<UnverifiedOp> = split_bundles(&stream)
                .unwrap()
                .into_iter()
                .flat_map(|b| decode_bundle(b).unwrap())
                .filter_map(Result::ok)
                .collect();
            // At least one op of each kind a verifier refuses, somewhere in the middle.
            let mut input = input;
            let mut forged = ops[ops.len() / 2].bytes().to_vec();
            let last = forged.len() - 1;
            forged[last] ^= 0x01;
            input.insert(
                rng.gen_range(0..=input.len()),
                UnverifiedOp::decode(&forged).unwrap(),
            );
            let stranger = UnverifiedOp::decode(foreign[0].bytes()).unwrap();
            input.insert(rng.gen_range(0..=input.len()), stranger);
            let config = NodeConfig {
                ingest_batch: rng.gen_range(1..=16),
                verify_threads: rng.gen_range(1..=2),
                ..NodeConfig::default()
            };
            eprintln!(
                "case {case}: {} ops in, removal {remove}, batches of {}",
                input.len(),
                config.ingest_batch
            );
            let node = |name: &str| {
                let mode = InitMode::Join {
                    cluster: a.cluster_id(),
                };
                Node::init(
                    &dir.path().join(name),
                    mode,
                    &mut rand_core::OsRng,
                    t(0),
                    config.clone(),
                )
                .unwrap()
            };
            let mut reference = node("ref");
            let expected = reference.ingest_verifying_first(input.clone()).unwrap();
            let mut pipelined = node("pipe");
            let report = pipelined.ingest(input).unwrap();
            assert!(expected.rejected.len() >= 2, "the input holds bad ops");
            assert_eq!(report, expected, "case {case}: reports differ");
            assert_eq!(
                holdings(&pipelined),
                holdings(&reference),
                "case {case}: stores differ"
            );
        }
    }

    #[test]
    fn a_broken_bundle_mid_stream_keeps_what_came_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = pair(dir.path(), 6);
        let ops = a.ops_since(&VersionVector::default()).unwrap();
        let (first, second) = ops.split_at(3);
        let mut stream = encode_bundle(first.iter());
        stream.extend(encode_bundle(second.iter()));
        let good_len = stream.len();
        stream.extend_from_slice(b"HSKB\x01\x05\x00\x00\x00\x10");
        let mut progress = Vec::new();
        let err = b
            .import_reader(&mut stream.as_slice(), |done, _| progress.push(done))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert_eq!(
            b.version_vector(),
            a.version_vector(),
            "both whole bundles are stored"
        );
        assert_eq!(progress.last(), Some(&(ops.len() as u64)));
        assert!(b.import_bundle(&stream[..good_len], |_, _| {}).is_ok());
    }

    #[test]
    fn ops_out_of_order_across_chunks_wait_for_their_predecessors() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = pair(dir.path(), 4);
        let mut ops = a.ops_since(&VersionVector::default()).unwrap();
        ops.reverse();
        let report = import_slice(&mut b, &encode_bundle(ops.iter()), 2, |_, _| {}).unwrap();
        assert_eq!(report.applied, ops.len());
        assert_eq!(report.buffered, 0, "nothing is left waiting");
        assert_eq!(b.version_vector(), a.version_vector());
    }

    #[test]
    fn a_streamed_import_hands_over_every_event_subscribers_hear() {
        use crate::{Event, PipelineEvent};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().unwrap();
        let (mut a, mut b) = pair(dir.path(), 3);
        for i in 0..3 {
            let id = StoryId::new(format!("{i}_s")).unwrap();
            a.execute(t(2), Command::event(id, PipelineEvent::DepsMet))
                .unwrap();
        }
        let stream: Vec<u8> = a
            .export_chunks(&VersionVector::default(), crate::MIN_BUNDLE_BYTES)
            .unwrap()
            .map(|c| c.unwrap())
            .collect::<Vec<_>>()
            .concat();
        let heard = Arc::new(Mutex::new(Vec::<Event>::new()));
        let sink = heard.clone();
        let _sub = b.subscribe(move |e| sink.lock().unwrap().push(e.clone()));
        let mut handed = Vec::new();
        let report = b
            .import_reader_with_events(&mut stream.as_slice(), |_, _| {}, |events| handed.extend(events))
            .unwrap();
        assert_eq!(report.applied, a.version_vector().total() as usize);
        assert!(report.events.is_empty(), "the report stays bounded");
        let heard = heard.lock().unwrap().clone();
        let transitions = |events: &[Event]| {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Transition(t) if t.event == Some("deps-met") => Some(t.story.as_str().to_string()),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            transitions(&heard).len(),
            3,
            "the subscription hears the imported transitions"
        );
        assert_eq!(handed, heard, "the sink gets what subscribers heard, in order");
    }

    #[test]
    fn a_broken_bundle_ingests_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (a, mut b) = pair(dir.path(), 2);
        let bundle = a.export_since(&VersionVector::default()).unwrap();
        let before = b.version_vector();
        let truncated = &bundle[..bundle.len() - 1];
        let mut called = false;
        assert!(matches!(
            b.import_bundle(truncated, |_, _| called = true),
            Err(Error::InvalidArgument(_))
        ));
        assert!(!called);
        assert_eq!(b.version_vector(), before);
    }

    #[test]
    fn absorbing_sums_counts_and_keeps_each_fork_once() {
        let fork = NodeId::from_bytes([7; 32]);
        let mut first = IngestReport {
            applied: 2,
            duplicates: 1,
            buffered: 1,
            forks: vec![fork],
            ..IngestReport::default()
        };
        let later = IngestReport {
            applied: 3,
            duplicates: 4,
            buffered: 2,
            rejected: vec![Rejection {
                op_id: None,
                author: None,
                seq: None,
                reason: RejectReason::BufferFull,
            }],
            forks: vec![fork],
            ..IngestReport::default()
        };
        first.absorb(later);
        assert_eq!((first.applied, first.duplicates, first.buffered), (5, 5, 3));
        assert_eq!(first.rejected.len(), 1);
        assert_eq!(first.forks, vec![fork]);
    }
}
