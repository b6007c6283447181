//! Streaming export: what a holder of a version vector lacks, as bundles of at most N bytes
//! read lazily from the op log. `export_since`, `huskies export` and the bindings all use
//! it; a sync session reads the same ops through `Node::ops_for_sync` (the bounded read
//! this is built on).

use std::collections::VecDeque;

use crate::bundle::{encode_bundle_bytes, BUNDLE_FRAME_BYTES, BUNDLE_HEADER_BYTES, MIN_BUNDLE_BYTES};
use crate::error::Error;
use crate::op::OpBytes;
use crate::storage::Store;
use crate::version::VersionVector;
use crate::Node;

/// A bundle size for exports to files (`huskies export`): 4 MiB keeps one bundle's ops, and
/// the receiver's decoded copy of them, small beside a node's own memory, while the per-bundle
/// header (9 bytes) is negligible.
pub const EXPORT_BUNDLE_BYTES: usize = 4 << 20;

/// The bundles of an export, produced one at a time: see [`Node::export_chunks`].
///
/// Each item is one complete bundle of at most `max_bytes` bytes. After an `Err` the
/// iterator ends. Holds at most about one bundle's ops at a time.
#[must_use = "an export does nothing until its bundles are read"]
pub struct ExportChunks<'a, S: Store> {
    node: &'a Node<S>,
    /// What the receiver holds, plus what earlier reads carried (including `pending`).
    sent: VersionVector,
    max_bytes: usize,
    /// Ops read but not yet put in a bundle (the bounded read may overshoot a bundle).
    pending: VecDeque<OpBytes>,
    phase: Phase,
    /// Fork-evidence ops a resumed export had already sent: skipped when evidence is read.
    evidence_skip: u64,
    /// Fork-evidence ops queued (including the skipped ones), once the evidence is read.
    evidence_total: u64,
    /// Whether the evidence was read (it is read once, when the valid ops are all sent).
    evidence_read: bool,
}

/// Where an export stands between two bundles, so that it can be resumed later, by another
/// call, or by another process: what the receiver holds plus what the bundles so far carried,
/// and how far the fork evidence that follows the valid ops has been sent. Hosts that cannot
/// keep an [`ExportChunks`] borrowed between calls (the daemon's API, the bindings) export one
/// bundle per call and hand the cursor back: see [`Node::export_chunks_from`].
///
/// The cursor names positions, not a snapshot: ops the node stores between two calls are
/// sent too if they lie past the cursor. A receiver that wants to be sure it lacks nothing
/// asks again with its own [`Node::version_vector`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCursor {
    /// The receiver's version vector plus the ops already sent.
    pub have: VersionVector,
    /// `None` while valid ops may remain; `Some(n)` once all were sent and `n` held ops went
    /// after them: fork evidence of every quarantined author (in author order), then the
    /// contested removals.
    pub evidence_sent: Option<u64>,
}

impl From<VersionVector> for ExportCursor {
    /// The start of an export to a holder of `have`.
    fn from(have: VersionVector) -> ExportCursor {
        ExportCursor {
            have,
            evidence_sent: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the valid ops the receiver lacks, in Lamport order.
    Ops,
    /// Fork evidence of quarantined authors (queued in `pending`), after every valid op.
    Evidence,
    Done,
}

impl<S: Store> Node<S> {
    /// The ops a holder of `have` lacks, as bundles of at most `max_bytes` bytes each,
    /// read from the store lazily: the valid ops in Lamport order (so an admission comes
    /// before the admitted node's ops), then fork evidence of quarantined authors. Each
    /// bundle is accepted as it is by [`Node::ingest_bundle`]; written one after another
    /// they form a bundle stream that [`Node::import_bundle`] and [`crate::read_bundle`]
    /// read back. Nothing is yielded when the holder lacks nothing.
    ///
    /// `max_bytes` must be at least [`crate::MIN_BUNDLE_BYTES`] (one op of the largest
    /// size), else `invalid_argument`.
    ///
    /// ```
    /// use huskies_core::{Command, InitMode, Node, NodeConfig, StoryId, Timestamp, VersionVector};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let now = Timestamp::from_millis(1_763_700_000_000);
    /// let mut a = Node::init(&dir.path().join("a"), InitMode::NewCluster { name: "demo".into() },
    ///                        &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// a.execute(now, Command::add_story(StoryId::new("s1")?, "One"))?;
    /// let mut b = Node::init(&dir.path().join("b"), InitMode::Join { cluster: a.cluster_id() },
    ///                        &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// for bundle in a.export_chunks(&b.version_vector(), 1 << 20)? {
    ///     let report = b.ingest_bundle(&bundle?)?;
    ///     assert!(report.rejected.is_empty());
    /// }
    /// assert_eq!(b.version_vector(), a.version_vector());
    /// # Ok::<(), huskies_core::Error>(())
    /// ```
    pub fn export_chunks(
        &self,
        have: &VersionVector,
        max_bytes: usize,
    ) -> Result<ExportChunks<'_, S>, Error> {
        self.export_chunks_from(&ExportCursor::from(have.clone()), max_bytes)
    }

    /// [`Node::export_chunks`] resumed at `cursor` (from [`ExportChunks::cursor`]): the
    /// bundles that export would still have produced. One bundle per call, with the cursor
    /// kept by the caller, moves a whole history with one bundle in memory at a time:
    ///
    /// ```
    /// use huskies_core::{Command, ExportCursor, InitMode, Node, NodeConfig, StoryId, Timestamp};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let now = Timestamp::from_millis(1_763_700_000_000);
    /// let mut a = Node::init(&dir.path().join("a"), InitMode::NewCluster { name: "demo".into() },
    ///                        &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// a.execute(now, Command::add_story(StoryId::new("s1")?, "One"))?;
    /// let mut b = Node::init(&dir.path().join("b"), InitMode::Join { cluster: a.cluster_id() },
    ///                        &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// let mut cursor = ExportCursor::from(b.version_vector());
    /// loop {
    ///     let mut chunks = a.export_chunks_from(&cursor, 1 << 20)?;
    ///     let Some(bundle) = chunks.next() else { break };
    ///     cursor = chunks.cursor();
    ///     b.ingest_bundle(&bundle?)?;
    /// }
    /// assert_eq!(b.version_vector(), a.version_vector());
    /// # Ok::<(), huskies_core::Error>(())
    /// ```
    pub fn export_chunks_from(
        &self,
        cursor: &ExportCursor,
        max_bytes: usize,
    ) -> Result<ExportChunks<'_, S>, Error> {
        if max_bytes < MIN_BUNDLE_BYTES {
            return Err(Error::InvalidArgument(format!(
                "an export bundle needs at least {MIN_BUNDLE_BYTES} bytes (one op of the largest size), got {max_bytes}"
            )));
        }
        Ok(ExportChunks {
            node: self,
            sent: cursor.have.clone(),
            max_bytes,
            pending: VecDeque::new(),
            phase: if cursor.evidence_sent.is_some() {
                Phase::Evidence
            } else {
                Phase::Ops
            },
            evidence_skip: cursor.evidence_sent.unwrap_or(0),
            evidence_total: 0,
            evidence_read: false,
        })
    }
}

impl<S: Store> ExportChunks<'_, S> {
    /// Where this export stands: after the bundles yielded so far. Resuming there with
    /// [`Node::export_chunks_from`] yields the bundles this iterator would still yield.
    pub fn cursor(&self) -> ExportCursor {
        match self.phase {
            Phase::Ops => {
                // `sent` counts ops read but not yet bundled; each author's pending ops are
                // the top of a contiguous run, so the cursor stops below the first of them.
                let mut have = self.sent.clone();
                for op in &self.pending {
                    if op.seq.saturating_sub(1) < have.get(&op.author) {
                        have.set(op.author, op.seq.saturating_sub(1));
                    }
                }
                ExportCursor {
                    have,
                    evidence_sent: None,
                }
            }
            Phase::Evidence | Phase::Done => ExportCursor {
                have: self.sent.clone(),
                evidence_sent: Some(self.evidence_total - self.pending.len() as u64),
            },
        }
    }

    /// Queues the held ops (fork evidence of every quarantined author, then contested
    /// removals), past what a resumed export already sent.
    fn read_evidence(&mut self) -> Result<(), Error> {
        self.evidence_read = true;
        let mut skip = self.evidence_skip;
        let mut held = Vec::new();
        for author in self.node.quarantined_authors() {
            held.extend(self.node.fork_evidence(&author)?);
        }
        // Contested removals travel like fork evidence (docs/format.md).
        held.extend(self.node.contested_removals()?);
        for op in held {
            self.evidence_total += 1;
            if skip > 0 {
                skip -= 1;
            } else {
                self.pending.push_back(OpBytes::from(&op));
            }
        }
        Ok(())
    }

    fn next_bundle(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let body = self.max_bytes - BUNDLE_HEADER_BYTES;
        loop {
            if self.phase == Phase::Evidence && !self.evidence_read {
                // An export resumed after its valid ops were all sent starts here.
                self.read_evidence()?;
            }
            if self.phase == Phase::Ops && self.pending.is_empty() {
                let ops = self.node.ops_for_sync(&self.sent, body)?;
                if ops.is_empty() {
                    self.phase = Phase::Evidence;
                    self.read_evidence()?;
                } else {
                    for op in &ops {
                        if op.seq > self.sent.get(&op.author) {
                            self.sent.set(op.author, op.seq);
                        }
                    }
                    self.pending.extend(ops);
                }
            }
            if self.pending.is_empty() {
                if self.phase == Phase::Evidence {
                    self.phase = Phase::Done;
                }
                if self.phase == Phase::Done {
                    return Ok(None);
                }
                continue;
            }
            let mut used = 0usize;
            let mut take = 0usize;
            for op in &self.pending {
                let cost = BUNDLE_FRAME_BYTES + op.bytes.len();
                if used + cost > body || take == u32::MAX as usize {
                    break;
                }
                used += cost;
                take += 1;
            }
            // `max_bytes >= MIN_BUNDLE_BYTES` makes room for any one op.
            debug_assert!(take > 0, "a bundle holds at least one op");
            let bundle = encode_bundle_bytes(self.pending.iter().take(take).map(|op| op.bytes.as_slice()));
            self.pending.drain(..take);
            return Ok(Some(bundle));
        }
    }
}

impl<S: Store> Iterator for ExportChunks<'_, S> {
    type Item = Result<Vec<u8>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.phase == Phase::Done && self.pending.is_empty() {
            return None;
        }
        match self.next_bundle() {
            Ok(Some(bundle)) => Some(Ok(bundle)),
            Ok(None) => None,
            Err(e) => {
                self.phase = Phase::Done;
                self.pending.clear();
                Some(Err(e))
            }
        }
    }
}

impl<S: Store> std::iter::FusedIterator for ExportChunks<'_, S> {}
