//! Pipelined appends: [`Node::execute_groups`] runs many groups of commands with the
//! signing of one group overlapping the writing of the one before it.
//!
//! Three stages per group: **build** (validate each command against the projection, build
//! its op with seq, `prev`, Lamport time and id, admit it: on the calling thread, in
//! order), **sign** (on signing threads: the id does not cover the signature, so nothing
//! waits for it but the write), and **write** (the group's atomic batch and flush, then
//! its events and the mark: on the calling thread, in order). The calling thread builds
//! group k+1 while group k is being signed, and writes group k while group k+1 is being
//! signed. At most [`DEPTH`] groups are built and not yet written.
//!
//! Durability and visibility are those of [`Node::execute_group`]: a group's ops reach the
//! store only in its own batch, after every group before it was flushed; nothing of a
//! group is readable by sync or export (which read the store) before its flush; its
//! events are published after it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};

use super::{Command, Node, Receipt};
use crate::error::Error;
use crate::journal::Journal;
use crate::key::NodeKey;
use crate::merge::{Committed, Sealed, StoryCache, Working};
use crate::op::{SignedOp, UnsignedOp};
use crate::oplog::SIGN_CHUNK;
use crate::storage::Store;
use crate::time::Timestamp;

/// One group's outcome, exactly as [`Node::execute_group`] returns it: `Err` when the
/// store failed (nothing of the group was written), else one result per command.
pub type GroupResult = Result<Vec<Result<Receipt, Error>>, Error>;

/// Groups built and not yet written, at most: the one being written (or waiting for its
/// signatures) and the next, being signed meanwhile. Building group k+2 only after group k
/// is written is what lets a group read the records of all groups but the one before it
/// from the store (see `Working::seal`).
const DEPTH: usize = 2;

/// A part of a group's ops to sign.
struct Job {
    group: usize,
    part: usize,
    ops: Vec<UnsignedOp>,
}

/// A part signed.
struct Done {
    group: usize,
    part: usize,
    ops: Vec<SignedOp>,
}

/// A group built and sent to be signed, not written yet.
struct Built {
    index: usize,
    results: Vec<Result<Receipt, Error>>,
    sealed: Sealed,
    /// Its signed parts, as they come back.
    parts: Vec<Option<Vec<SignedOp>>>,
}

impl<S: Store> Node<S> {
    /// Runs groups of commands one after another, each with the outcome
    /// [`Node::execute_group`] would give it, and returns those outcomes in order:
    /// validated and built in order (each group sees the groups before it), each group
    /// stored in one atomic batch with one flush, in order. What differs is the time:
    /// [`crate::NodeConfig::sign_threads`] signing threads sign one group while the calling
    /// thread writes and flushes the previous one and builds the next. The ids, receipts
    /// and stored bytes are those of the same groups run through `execute_group`.
    ///
    /// The first group whose outcome is `Err` (the store failed) is the last one run: the
    /// groups before it are stored, it and every later one wrote nothing (the groups
    /// iterator may have been asked for one more, built on top of it and dropped). An
    /// invalid command is an `Err` inside its group's results and stops nothing.
    ///
    /// Each group's events are published once it is stored, before the next group is
    /// written. Nothing of a group can be read back (`ops_for_sync`, export) before its
    /// flush: until then its ops exist only in this call.
    ///
    /// ```
    /// use huskies_core::{Command, InitMode, Node, NodeConfig, StoryId, Timestamp};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let now = Timestamp::from_millis(1_763_700_000_000);
    /// let mut node = Node::init(dir.path(), InitMode::NewCluster { name: "demo".into() },
    ///                           &mut huskies_core::rand_core::OsRng, now, NodeConfig::default())?;
    /// let groups = (0..3).map(|g| {
    ///     let cmds = (0..100)
    ///         .map(|i| Command::add_story(StoryId::new(format!("s{g}-{i}")).unwrap(), "S").into())
    ///         .collect();
    ///     (now, cmds)
    /// });
    /// let outcomes = node.execute_groups(groups);
    /// assert_eq!(outcomes.len(), 3);
    /// for group in outcomes {
    ///     for result in group? {
    ///         result?;
    ///     }
    /// }
    /// # Ok::<(), huskies_core::Error>(())
    /// ```
    pub fn execute_groups<I>(&mut self, groups: I) -> Vec<GroupResult>
    where
        I: IntoIterator<Item = (Timestamp, Vec<Command>)>,
    {
        let key = self.key.duplicate();
        let threads = self.config.sign_threads.max(1);
        let cancel = AtomicBool::new(false);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Mutex::new(job_rx);
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                let done_tx = done_tx.clone();
                let (job_rx, key, cancel) = (&job_rx, &key, &cancel);
                scope.spawn(move || sign_loop(job_rx, &done_tx, key, cancel));
            }
            drop(done_tx);
            let out = self.run_pipeline(groups.into_iter(), &job_tx, &done_rx);
            // Parts of a group that will not be written are not worth signing.
            cancel.store(true, Ordering::Relaxed);
            drop(job_tx);
            out
        })
    }

    fn run_pipeline(
        &mut self,
        mut groups: impl Iterator<Item = (Timestamp, Vec<Command>)>,
        jobs: &mpsc::Sender<Job>,
        done: &mpsc::Receiver<Done>,
    ) -> Vec<GroupResult> {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        let mut out = Vec::new();
        let mut builder: Option<Working<'_, S>> = None;
        let mut in_flight: VecDeque<Result<Built, Error>> = VecDeque::with_capacity(DEPTH);
        let mut early: HashMap<(usize, usize), Vec<SignedOp>> = HashMap::new();
        let mut next_index = 0;
        let mut exhausted = false;
        // Build nothing more until every built group is written, then start a fresh
        // working set from the node: after a group that voids merged ops (the write
        // rebuilds the projection) or a group that writes nothing (`execute_group` drops
        // its working set, and so must this).
        let mut drain = false;
        let mut ok = true;
        loop {
            while !exhausted && !drain && in_flight.len() < DEPTH {
                let Some((now, cmds)) = groups.next() else {
                    exhausted = true;
                    break;
                };
                let index = next_index;
                next_index += 1;
                let w = builder.get_or_insert_with(|| {
                    Working::new(&db, &journal, self.state.clone(), self.node_id())
                        .with_cache(std::mem::take(&mut self.stories))
                });
                w.expect_group(cmds.len());
                match self.stage_all(w, now, cmds) {
                    Err(e) => {
                        // Nothing of this group is kept; the groups before it are written.
                        builder = None;
                        exhausted = true;
                        in_flight.push_back(Err(e));
                    }
                    Ok(results) => {
                        let mut sealed = w.seal();
                        drain = !sealed.has_changes() || sealed.state.rebuild_needed;
                        let parts = submit(jobs, index, sealed.take_unsigned());
                        in_flight.push_back(Ok(Built {
                            index,
                            results,
                            sealed,
                            parts: std::iter::repeat_with(|| None).take(parts).collect(),
                        }));
                    }
                }
            }
            let Some(next) = in_flight.pop_front() else {
                break;
            };
            let outcome = next.and_then(|built| self.write_built(built, &db, &journal, done, &mut early));
            ok = outcome.is_ok();
            out.push(outcome);
            if !ok {
                break;
            }
            if drain && in_flight.is_empty() {
                builder = None;
                drain = false;
            }
        }
        // After a failure the working set holds records that were not written: drop it
        // (the node's record cache starts empty). Otherwise every group is written and its
        // records start the next batch.
        match builder {
            Some(w) if ok => self.stories = w.into_cache(),
            _ => {}
        }
        out
    }

    /// Waits for a group's signatures, then writes it as [`Node::commit`] would.
    fn write_built(
        &mut self,
        mut built: Built,
        db: &S,
        journal: &Journal<S>,
        done: &mpsc::Receiver<Done>,
        early: &mut HashMap<(usize, usize), Vec<SignedOp>>,
    ) -> GroupResult {
        for (part, slot) in built.parts.iter_mut().enumerate() {
            if let Some(ops) = early.remove(&(built.index, part)) {
                *slot = Some(ops);
            }
        }
        while built.parts.iter().any(Option::is_none) {
            let d = done
                .recv()
                .expect("the signing threads run until the pipeline ends");
            if d.group == built.index {
                built.parts[d.part] = Some(d.ops);
            } else {
                early.insert((d.group, d.part), d.ops);
            }
        }
        let signed: Vec<SignedOp> = built.parts.into_iter().flatten().flatten().collect();
        let mut sealed = built.sealed;
        sealed.put_signed(signed);
        if !sealed.has_changes() {
            return Ok(built.results);
        }
        sealed.continue_tails(&self.state);
        let written = sealed.write(db, journal, S::Batch::default())?;
        self.committed(Committed {
            state: written.state,
            events: written.events,
            // The records stay with the pipeline's working set until the end.
            cache: StoryCache::new(),
            claims_seen: written.claims_seen,
            own_heartbeat: written.own_heartbeat,
            durable: written.durable,
            error: written.error,
        })?;
        Ok(built.results)
    }
}

/// Sends a group's ops to the signing threads in parts of [`SIGN_CHUNK`]; returns how
/// many parts.
fn submit(jobs: &mpsc::Sender<Job>, group: usize, ops: Vec<UnsignedOp>) -> usize {
    let mut parts = 0;
    let mut rest = ops.into_iter().peekable();
    while rest.peek().is_some() {
        let ops: Vec<UnsignedOp> = rest.by_ref().take(SIGN_CHUNK).collect();
        jobs.send(Job {
            group,
            part: parts,
            ops,
        })
        .expect("the signing threads run until the pipeline ends");
        parts += 1;
    }
    parts
}

/// A signing thread: signs parts in the order they were sent until the pipeline ends.
fn sign_loop(
    jobs: &Mutex<mpsc::Receiver<Job>>,
    done: &mpsc::Sender<Done>,
    key: &NodeKey,
    cancel: &AtomicBool,
) {
    loop {
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { group, part, ops }) = job else {
            return;
        };
        if cancel.load(Ordering::Relaxed) {
            continue;
        }
        let ops = ops.into_iter().map(|op| op.sign(key)).collect();
        if done.send(Done { group, part, ops }).is_err() {
            return;
        }
    }
}
