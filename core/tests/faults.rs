//! Storage failures, injected through `FailingStore`: a read, write or flush failing at
//! every point of a commit, an ingest, a rebuild, a key rotation and the journal fold is
//! returned to the caller, never panics, and leaves the store as it was before the call
//! (what a crash would leave, on the in-memory backend, and the whole store after a reopen,
//! on sled). Each test first runs the call cleanly to count its storage operations, then
//! once per operation with that one failing (and once with it and all after it failing,
//! like a disk that went away).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use huskies_core::{
    Command, Error, FailingStore, InitMode, MemoryStore, Node, PipelineEvent, Role, SledStore, Store,
    StoreContents, StoreOp, UnverifiedOp,
};

type Mem = FailingStore<MemoryStore>;

/// A node's home and store between two calls: its files, and the store's contents.
struct Base {
    _dir: tempfile::TempDir,
    home: PathBuf,
    contents: StoreContents,
}

impl Base {
    /// Captures a node on the in-memory backend: flushed, closed, copied.
    fn of(mut node: Node<Mem>, store: &Mem, dir: &Path) -> Base {
        node.flush().expect("flush");
        let from = node.home().to_path_buf();
        drop(node);
        Base::copy(&from, store.inner().durable_contents(), dir)
    }

    fn copy(from: &Path, contents: StoreContents, dir: &Path) -> Base {
        let keep = tempfile::tempdir_in(dir).unwrap();
        let home = keep.path().join("home");
        copy_dir(from, &home);
        Base {
            _dir: keep,
            home,
            contents,
        }
    }

    /// A fresh copy of the home, with a store holding the captured contents.
    fn restore(&self, dir: &Path) -> (tempfile::TempDir, PathBuf, Mem) {
        let keep = tempfile::tempdir_in(dir).unwrap();
        let home = keep.path().join("home");
        copy_dir(&self.home, &home);
        let store = FailingStore::new(MemoryStore::from_contents(self.contents.clone()));
        (keep, home, store)
    }
}

/// What one run of a call did.
struct Run {
    result: Result<(), Error>,
    store: MemoryStore,
    log: Vec<StoreOp>,
    _dir: tempfile::TempDir,
}

/// Opens a node on a copy of `base`, fails storage operation `fail` of the call (`sticky`:
/// and every one after it), runs `call`, and closes the node.
fn run(
    base: &Base,
    dir: &Path,
    fail: Option<u64>,
    sticky: bool,
    call: &dyn Fn(&mut Node<Mem>) -> Result<(), Error>,
) -> Run {
    let (keep, home, store) = base.restore(dir);
    let mut node = Node::open_with_backend(&home, store.clone(), config()).expect("open base");
    match fail {
        Some(k) => store.plan().fail_at(k, sticky),
        None => store.plan().reset(),
    }
    let result = call(&mut node);
    let log = store.plan().log();
    // Closing folds what is left; with the store failing, that must not panic either.
    drop(node);
    store.plan().reset();
    Run {
        result,
        store: store.inner().clone(),
        log,
        _dir: keep,
    }
}

/// What a user sees of a store with these contents, opened on a copy of `base`'s home.
fn view_of(base: &Base, dir: &Path, contents: StoreContents) -> Result<Snapshot, Error> {
    let keep = tempfile::tempdir_in(dir).unwrap();
    let home = keep.path().join("home");
    copy_dir(&base.home, &home);
    let node = Node::open_with_backend(&home, MemoryStore::from_contents(contents), config())?;
    Ok(snapshot(&node, at(100)))
}

/// The storage operations of `call` on `base`, counted by a clean run.
fn count(base: &Base, dir: &Path, call: &dyn Fn(&mut Node<Mem>) -> Result<(), Error>) -> Vec<StoreOp> {
    let clean = run(base, dir, None, false, call);
    clean.result.expect("the call succeeds without failures");
    assert!(!clean.log.is_empty(), "the call touches the store");
    clean.log
}

/// The core check: failing any one storage operation of `call` (alone, or with all after
/// it) is an error, and leaves the durable store, and the live one unless a flush failed
/// after its batch was applied, exactly as before. Reopening shows what it showed before.
fn every_failure_leaves_the_store_unchanged(
    name: &str,
    base: &Base,
    dir: &Path,
    call: &dyn Fn(&mut Node<Mem>) -> Result<(), Error>,
) {
    check_every_failure(name, base, dir, call, true)
}

/// [`every_failure_leaves_the_store_unchanged`]; `live_unchanged: false` for calls whose
/// node folds the journal on close (then only the durable store is compared).
fn check_every_failure(
    name: &str,
    base: &Base,
    dir: &Path,
    call: &dyn Fn(&mut Node<Mem>) -> Result<(), Error>,
    live_unchanged: bool,
) {
    let ops = count(base, dir, call);
    let before = view_of(base, dir, base.contents.clone()).expect("base opens");
    for sticky in [false, true] {
        for (k, op) in ops.iter().enumerate() {
            let what = format!("{name}: operation {k} of {} ({op:?}, sticky {sticky})", ops.len());
            let r = run(base, dir, Some(k as u64), sticky, call);
            let err = r
                .result
                .err()
                .unwrap_or_else(|| panic!("{what}: the failure was not returned"));
            assert!(matches!(err.kind(), huskies_core::ErrorKind::Io), "{what}: {err}");
            assert_eq!(r.log.get(k), Some(op), "{what}: the run took the same path");
            assert!(
                r.store.durable_contents() == base.contents,
                "{what}: the durable store changed"
            );
            if live_unchanged && *op != StoreOp::Flush {
                assert!(r.store.contents() == base.contents, "{what}: the store changed");
            }
            let after = view_of(base, dir, r.store.after_crash().contents()).expect("reopens");
            assert_eq!(after, before, "{what}");
        }
    }
}

fn new_admin(dir: &Path, store: &Mem, seed: u64) -> Node<Mem> {
    let mut rng = TestRng::new(seed);
    Node::init_with_backend(
        &dir.join("admin"),
        store.clone(),
        InitMode::NewCluster {
            name: "faults".into(),
        },
        &mut rng,
        at(0),
        config(),
    )
    .expect("init")
}

/// A node with a few stories in several stages, one claimed, on the in-memory backend.
fn busy_admin(dir: &Path) -> Base {
    let store = FailingStore::new(MemoryStore::new());
    let mut node = new_admin(dir, &store, 1);
    for (i, id) in ["1_a", "2_b", "3_c"].iter().enumerate() {
        node.execute(
            at(1),
            Command::AddStory {
                id: sid(id),
                name: format!("story {i}"),
                body: None,
                depends_on: vec![],
            },
        )
        .unwrap();
    }
    node.execute(
        at(2),
        Command::Event {
            id: sid("1_a"),
            event: PipelineEvent::DepsMet,
        },
    )
    .unwrap();
    node.execute(
        at(2),
        Command::Claim {
            id: sid("2_b"),
            ttl_secs: 600,
        },
    )
    .unwrap();
    Base::of(node, &store, dir)
}

#[test]
fn a_failing_commit_returns_the_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = busy_admin(dir.path());
    let group = |n: &mut Node<Mem>| -> Result<(), Error> {
        let results = n.execute_group(
            at(3),
            vec![
                Command::AddStory {
                    id: sid("4_d"),
                    name: "new".into(),
                    body: None,
                    depends_on: vec![sid("1_a")],
                },
                Command::Event {
                    id: sid("1_a"),
                    event: PipelineEvent::GatesStarted,
                },
                Command::Release { id: sid("2_b") },
                Command::AcquireMergeLock { ttl_secs: 60 },
                Command::Heartbeat {
                    label: "admin".into(),
                    address: None,
                },
            ],
        )?;
        for r in results {
            r?;
        }
        Ok(())
    };
    every_failure_leaves_the_store_unchanged("execute_group", &base, dir.path(), &group);
}

#[test]
fn a_failing_key_rotation_returns_the_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = busy_admin(dir.path());
    let rotate = |n: &mut Node<Mem>| -> Result<(), Error> {
        let before = n.node_id();
        n.rotate_key(at(3), &mut rand_core::OsRng)?;
        assert_ne!(n.node_id(), before);
        Ok(())
    };
    every_failure_leaves_the_store_unchanged("rotate_key", &base, dir.path(), &rotate);
}

/// A node on the in-memory backend, in `a`'s cluster and admitted by `a` (it holds none
/// of the cluster's ops yet).
fn member_on_memory(dir: &Path, a: &mut Node, rng: &mut TestRng) -> (Node<Mem>, Mem) {
    let store = FailingStore::new(MemoryStore::new());
    let t = Node::init_with_backend(
        &dir.join("t"),
        store.clone(),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        rng,
        at(0),
        config(),
    )
    .unwrap();
    a.execute(
        at(1),
        Command::AddMember {
            node: t.node_id(),
            role: Role::Member,
        },
    )
    .unwrap();
    (t, store)
}

/// Ops of a cluster (admin `a` on sled) that a joining node on the in-memory backend has
/// been admitted to, and that node before it has ingested any of them.
fn joiner(dir: &Path) -> (Node, Base) {
    let mut rng = TestRng::new(7);
    let mut a = new_cluster(&dir.join("a"), &mut rng, at(0));
    let (t, store) = member_on_memory(dir, &mut a, &mut rng);
    for id in ["1_a", "2_b"] {
        add_story(&mut a, at(1), id);
    }
    event(&mut a, at(2), "1_a", PipelineEvent::DepsMet);
    a.execute(at(2), Command::AcquireMergeLock { ttl_secs: 60 })
        .unwrap();
    (a, Base::of(t, &store, dir))
}

fn everything_of(a: &Node) -> Vec<UnverifiedOp> {
    unverified(a.ops_since(&Default::default()).unwrap())
}

#[test]
fn a_failing_ingest_returns_the_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, base) = joiner(dir.path());
    let ops = everything_of(&a);
    let ingest = |n: &mut Node<Mem>| -> Result<(), Error> {
        let report = n.ingest(ops.clone())?;
        assert_eq!(report.applied, ops.len(), "{:?}", report.rejected);
        Ok(())
    };
    every_failure_leaves_the_store_unchanged("ingest", &base, dir.path(), &ingest);
}

#[test]
fn a_failing_journal_fold_returns_the_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FailingStore::new(MemoryStore::new());
    let mut node = new_admin(dir.path(), &store, 3);
    for i in 0..6 {
        add_story_on(&mut node, &format!("{i}_s"));
    }
    // Commits are durable; their story records wait in journal entries, unfolded (the
    // folder thread waits for more commits than these).
    let contents = store.inner().durable_contents();
    assert!(contents.iter().any(|(k, _)| k[0] == b'J'), "unfolded entries");
    let from = node.home().to_path_buf();
    drop(node);
    let base = Base::copy(&from, contents, dir.path());
    let fold = |n: &mut Node<Mem>| -> Result<(), Error> { n.flush() };
    check_every_failure("fold", &base, dir.path(), &fold, false);
    // A fold that failed half way left a store that still reads right as it is, without
    // a crash in between (some story keys written, their entries not yet deleted).
    let before = view_of(&base, dir.path(), base.contents.clone()).unwrap();
    for k in 0..count(&base, dir.path(), &fold).len() as u64 {
        let r = run(&base, dir.path(), Some(k), false, &fold);
        assert!(r.result.is_err());
        assert_eq!(
            view_of(&base, dir.path(), r.store.contents()).unwrap(),
            before,
            "op {k}"
        );
    }
}

fn add_story_on<S: Store>(node: &mut Node<S>, id: &str) {
    node.execute(
        at(1),
        Command::AddStory {
            id: sid(id),
            name: id.into(),
            body: None,
            depends_on: vec![],
        },
    )
    .unwrap();
}

/// A node (on the in-memory backend) holding member B's ops past the cutoff at which the
/// admin is about to remove B: ingesting the removal voids merged ops and rebuilds.
fn before_a_rebuild(dir: &Path) -> (Vec<UnverifiedOp>, Base) {
    let mut rng = TestRng::new(11);
    let mut a = new_cluster(&dir.join("a"), &mut rng, at(0));
    let mut b = join(&dir.join("b"), &mut a, Role::Member, &mut rng, at(0));
    let (mut t, store) = member_on_memory(dir, &mut a, &mut rng);
    add_story(&mut b, at(1), "1_b");
    sync(&mut a, &mut b);
    // B writes on; only T hears of it before A removes B.
    add_story(&mut b, at(2), "2_b");
    event(&mut b, at(2), "1_b", PipelineEvent::DepsMet);
    let _report = t.ingest(everything_of(&a)).unwrap();
    let _report = t.ingest(everything_of(&b)).unwrap();
    assert_eq!(t.stories(None, at(3)).unwrap().len(), 2);
    let have = a.version_vector();
    a.execute(at(3), Command::RemoveMember { node: b.node_id() })
        .unwrap();
    let removal = unverified(a.ops_since(&have).unwrap());
    (removal, Base::of(t, &store, dir))
}

#[test]
fn a_failing_rebuild_returns_the_error_and_is_resumed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (removal, base) = before_a_rebuild(dir.path());
    let ingest = |n: &mut Node<Mem>| -> Result<(), Error> {
        let _report = n.ingest(removal.clone())?;
        Ok(())
    };
    let ops = count(&base, dir.path(), &ingest);
    let before = view_of(&base, dir.path(), base.contents.clone()).unwrap();
    let clean = run(&base, dir.path(), None, false, &ingest);
    let after = view_of(&base, dir.path(), clean.store.durable_contents()).unwrap();
    assert_ne!(after, before, "the removal voids ops");
    assert_eq!(after.stories.len(), 1, "B's ops past the cutoff are void");
    // The ingest's own commit (the removal, with the rebuild flag) is its first flush; the
    // rebuild follows in a batch of its own.
    let commit_flush = ops.iter().position(|op| *op == StoreOp::Flush).unwrap();
    assert!(commit_flush + 1 < ops.len(), "a rebuild follows the commit");
    let flagged = run(&base, dir.path(), Some(commit_flush as u64 + 1), true, &ingest)
        .store
        .durable_contents();
    for sticky in [false, true] {
        for (k, op) in ops.iter().enumerate() {
            let what = format!("operation {k} of {} ({op:?}, sticky {sticky})", ops.len());
            let r = run(&base, dir.path(), Some(k as u64), sticky, &ingest);
            assert!(r.result.is_err(), "{what}: the failure was not returned");
            let durable = r.store.durable_contents();
            // Before the commit's flush: nothing. After it: the commit, flagged for a
            // rebuild that the next open resumes.
            if k <= commit_flush {
                assert!(durable == base.contents, "{what}: the store changed");
                assert_eq!(view_of(&base, dir.path(), durable).unwrap(), before, "{what}");
            } else {
                assert!(durable == flagged, "{what}: the rebuild left part of its work");
                assert_eq!(view_of(&base, dir.path(), durable).unwrap(), after, "{what}");
            }
        }
    }
    // The rebuild at open fails the same way: an error, and the flagged store unchanged.
    let flagged_base = Base::copy(&base.home, flagged.clone(), dir.path());
    for k in 0.. {
        let (_keep, home, store) = flagged_base.restore(dir.path());
        store.plan().fail_at(k, true);
        match Node::open_with_backend(&home, store.clone(), config()) {
            Ok(node) => {
                store.plan().reset();
                assert_eq!(snapshot(&node, at(100)), after);
                assert!(k > 0);
                break;
            }
            Err(e) => {
                assert!(
                    e.kind() == huskies_core::ErrorKind::Io,
                    "open with op {k} failing: {e}"
                );
                assert!(
                    store.inner().durable_contents() == flagged,
                    "open with op {k} failing"
                );
            }
        }
    }
}

/// The same on sled: failing reads and writes (a flush that fails after sled applied the
/// batch cannot be taken back by sled) of a commit, an ingest and a key rotation return
/// the error, and the reopened store holds exactly the keys it held before.
#[test]
fn on_sled_a_failing_read_or_write_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(5);
    let mut admin = new_cluster(&dir.path().join("admin"), &mut rng, at(0));
    add_story(&mut admin, at(1), "1_a");
    let ops = everything_of(&admin);
    let admin_home = admin.home().to_path_buf();
    drop(admin);
    let joiner_home = dir.path().join("joiner");
    drop(
        Node::init(
            &joiner_home,
            InitMode::Join {
                cluster: Node::open(&admin_home, config()).unwrap().cluster_id(),
            },
            &mut rng,
            at(0),
            config(),
        )
        .unwrap(),
    );
    type Sled = FailingStore<SledStore>;
    type Call<'a> = Box<dyn Fn(&mut Node<Sled>) -> Result<(), Error> + 'a>;
    let calls: Vec<(&str, &Path, Call<'_>)> = vec![
        (
            "execute",
            &admin_home,
            Box::new(|n| {
                n.execute(
                    at(2),
                    Command::Event {
                        id: sid("1_a"),
                        event: PipelineEvent::DepsMet,
                    },
                )
                .map(drop)
            }),
        ),
        (
            "rotate_key",
            &admin_home,
            Box::new(|n| n.rotate_key(at(2), &mut rand_core::OsRng).map(drop)),
        ),
        (
            "ingest",
            &joiner_home,
            Box::new(|n| {
                // The joiner is not admitted: it ingests the cluster's ops as an observer.
                n.ingest(ops.clone()).map(drop)
            }),
        ),
    ];
    for (name, home, call) in &calls {
        let keys = |home: &Path| -> StoreContents {
            let db = SledStore::open(&home.join("store")).unwrap();
            db.scan_prefix(b"")
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (k.to_vec(), v.to_vec())
                })
                .collect()
        };
        let before = keys(home);
        let attempt = |fail: Option<u64>| -> (Result<(), Error>, Vec<StoreOp>, tempfile::TempDir, PathBuf) {
            let keep = tempfile::tempdir_in(dir.path()).unwrap();
            let copy = keep.path().join("home");
            copy_dir(home, &copy);
            let store = FailingStore::new(SledStore::open(&copy.join("store")).unwrap());
            let mut node = Node::open_with_backend(&copy, store.clone(), config()).unwrap();
            match fail {
                Some(k) => store.plan().fail_at(k, true),
                None => store.plan().reset(),
            }
            let r = call(&mut node);
            let log = store.plan().log();
            drop(node);
            drop(store);
            (r, log, keep, copy)
        };
        let (clean, log, _keep, _) = attempt(None);
        clean.unwrap_or_else(|e| panic!("{name}: {e}"));
        for (k, op) in log.iter().enumerate() {
            if *op == StoreOp::Flush {
                continue;
            }
            let (r, _, _keep, copy) = attempt(Some(k as u64));
            assert!(
                r.is_err(),
                "{name}: failing operation {k} ({op:?}) was not returned"
            );
            assert!(
                keys(&copy) == before,
                "{name}: operation {k} ({op:?}) changed the store"
            );
            let node = Node::open(&copy, config()).unwrap_or_else(|e| panic!("{name}: reopens: {e}"));
            assert_eq!(node.own_ops_missing(), None, "{name}");
        }
    }
}

/// `init` is one batch: whichever storage operation fails, it returns the error, writes
/// nothing durable, and leaves no key behind, so `init` can simply be run again.
#[test]
fn a_failing_init_leaves_no_home_behind() {
    let dir = tempfile::tempdir().unwrap();
    let init = |home: &Path, store: &Mem| {
        Node::init_with_backend(
            home,
            store.clone(),
            InitMode::NewCluster {
                name: "faults".into(),
            },
            &mut TestRng::new(9),
            at(0),
            config(),
        )
    };
    let clean = FailingStore::new(MemoryStore::new());
    clean.plan().reset();
    drop(init(&dir.path().join("clean"), &clean).unwrap());
    let ops = clean.plan().log();
    assert!(
        ops.contains(&StoreOp::Write) && ops.contains(&StoreOp::Flush),
        "{ops:?}"
    );
    for (k, op) in ops.iter().enumerate() {
        let home = dir.path().join(format!("home{k}"));
        let store = FailingStore::new(MemoryStore::new());
        store.plan().fail_at(k as u64, true);
        let err = init(&home, &store).err();
        assert!(err.is_some(), "operation {k} ({op:?}) failed unnoticed");
        assert!(
            store.inner().durable_contents().is_empty(),
            "operation {k} ({op:?})"
        );
        assert!(
            !home.join("node.key").exists(),
            "operation {k} ({op:?}) left a key"
        );
        store.plan().reset();
        let fresh = FailingStore::new(MemoryStore::new());
        drop(init(&home, &fresh).expect("init runs again"));
    }
}

/// A commit whose flush fails has its batch applied in the store: the node holds it too
/// (it reads it back, and builds on it), nothing of it is durable yet, and the next
/// commit's flush makes both durable, so the store never disagrees with the node.
#[test]
fn a_commit_whose_flush_failed_is_held_by_the_node_and_made_durable_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = FailingStore::new(MemoryStore::new());
    let mut node = new_admin(dir.path(), &store, 21);
    add_story_on(&mut node, "1_a");
    let add = |n: &mut Node<Mem>| n.execute(at(2), Command::add_story(sid("2_b"), "b"));
    // Fail each operation in turn until the failing one is the commit's flush (earlier
    // failures store nothing, so the same command can be tried again).
    let mut k = 0;
    loop {
        store.plan().fail_at(k, false);
        let err = add(&mut node).expect_err("a failing operation is returned");
        assert_eq!(err.kind(), huskies_core::ErrorKind::Io, "{err}");
        if store.plan().log()[k as usize] == StoreOp::Flush {
            break;
        }
        assert_eq!(
            live_ids_of(&node),
            vec![sid("1_a")],
            "operation {k} stored nothing"
        );
        k += 1;
    }
    store.plan().reset();
    // Held by the node as by the store, not durable yet.
    assert_eq!(live_ids_of(&node), vec![sid("1_a"), sid("2_b")]);
    let durable = |store: &Mem| store.inner().after_crash().contents();
    let home = node.home().to_path_buf();
    let crashed = |contents| {
        let base = Base::copy(&home, contents, dir.path());
        view_of(&base, dir.path(), base.contents.clone()).unwrap()
    };
    assert_eq!(crashed(durable(&store)).stories.len(), 1);
    // The next command builds on it (no seq is reused) and its flush makes both durable.
    node.execute(
        at(3),
        Command::Event {
            id: sid("2_b"),
            event: PipelineEvent::DepsMet,
        },
    )
    .unwrap();
    let after = crashed(durable(&store));
    assert_eq!(after, snapshot(&node, at(100)));
    assert_eq!(after.stories.len(), 2);
}

fn live_ids_of(node: &Node<Mem>) -> Vec<huskies_core::StoryId> {
    node.stories(None, at(100))
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect()
}
