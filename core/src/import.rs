//! Importing a bundle (`huskies import`, or any host that moves bundles): the bundle is
//! decoded once and ingested in bounded chunks, with progress after each, and the chunks'
//! reports are merged into one.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};

use rand_core::CryptoRngCore;

use crate::home::remove_made;
use crate::{
    decode_bundle, read_bundle, split_bundles, verify_ops, ClusterId, Error, Event, IngestReport, InitMode,
    Node, NodeConfig, NodeKey, Payload, Rejection, SledStore, Store, Timestamp,
};

/// Ops per ingest call when importing a bundle. Bounds the verified ops held at once (a
/// bundle can hold a whole cluster's history) and sets how often progress is reported.
/// Each chunk is committed on its own: an error in a later chunk leaves the earlier ones
/// stored, which loses nothing (every stored op is valid on its own; importing again skips
/// them as duplicates).
pub const IMPORT_CHUNK_OPS: usize = 8192;

impl IngestReport {
    /// Adds what a later ingest did to this report: counts are summed, rejections and
    /// events appended in order, forks appended unless already listed. `buffered` is the
    /// sum of what each ingest held back (an op the later ingest released is not taken off).
    pub fn absorb(&mut self, later: IngestReport) {
        self.applied += later.applied;
        self.duplicates += later.duplicates;
        self.buffered = self.buffered.saturating_add(later.buffered);
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
    /// `progress(ops_ingested, ops_in_bundles_read_so_far)` is called after each chunk.
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
        mut progress: impl FnMut(u64, u64),
        mut events: impl FnMut(Vec<Event>),
    ) -> Result<IngestReport, Error> {
        let mut report = IngestReport::default();
        let (mut done, mut total) = (0u64, 0u64);
        while let Some(bundle) = read_bundle(r)? {
            total = total.saturating_add(op_count(&bundle));
            progress(done, total);
            import_in_chunks(
                self,
                &bundle,
                IMPORT_CHUNK_OPS,
                Events::Hand(&mut events),
                &mut report,
                |n| {
                    done = done.saturating_add(n);
                    progress(done, total);
                },
            )?;
        }
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
    for bundle in bundles {
        import_in_chunks(node, bundle, chunk_ops, Events::Keep, &mut report, |n| {
            done = done.saturating_add(n);
            progress(done, total);
        })?;
    }
    report.buffered = node.buffered_ops();
    Ok(report)
}

/// The op count in a framed bundle's header.
fn op_count(bundle: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(
        bundle[5..9].try_into().expect("a framed bundle"),
    ))
}

/// Where an import's events go: into its report, or to a caller's sink chunk by chunk.
enum Events<'a> {
    Keep,
    Hand(&'a mut dyn FnMut(Vec<Event>)),
}

/// Decodes one bundle and ingests it in chunks of `chunk_ops` into `report`, calling
/// `ingested(n)` after each chunk of `n` ops.
fn import_in_chunks<S: Store>(
    node: &mut Node<S>,
    bytes: &[u8],
    chunk_ops: usize,
    mut events: Events<'_>,
    report: &mut IngestReport,
    mut ingested: impl FnMut(u64),
) -> Result<(), Error> {
    let decoded = decode_bundle(bytes)?;
    let mut good = Vec::with_capacity(decoded.len());
    for op in decoded {
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
    let mut rest = good.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(chunk_ops.max(1)).collect();
        let n = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        let mut chunk_report = node.ingest(chunk)?;
        if let Events::Hand(sink) = &mut events {
            sink(std::mem::take(&mut chunk_report.events));
        }
        report.absorb(chunk_report);
        ingested(n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        encode_bundle, Command, InitMode, NodeConfig, NodeId, RejectReason, StoryId, Timestamp, VersionVector,
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
