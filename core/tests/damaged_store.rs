//! A damaged home: sled files, records, key files and a store that lost acknowledged ops
//! are refused with a clear error, or read back as a consistent prefix, never silently.

mod common;

use common::*;
use huskies_core::{Command, ErrorKind, Node};

/// Builds a closed home with some history; returns its snapshot.
fn closed_home(path: &std::path::Path, seed: u64) -> Stored {
    let mut rng = TestRng::new(seed);
    let mut n = new_cluster(path, &mut rng, at(0));
    for i in 0..30 {
        add_story(&mut n, at(1), &format!("s_{i}"));
        if i % 3 == 0 {
            event(
                &mut n,
                at(2),
                &format!("s_{i}"),
                huskies_core::PipelineEvent::DepsMet,
            );
        }
    }
    stored(&n)
}

/// What opening a damaged home gave.
#[derive(Debug)]
enum Outcome {
    Refused(ErrorKind),
    /// Opened; the store is consistent (verify is clean) and holds `ops` of the original.
    RolledBack {
        ops: u64,
    },
    /// Opened; verify reports problems.
    Flagged(Vec<String>),
}

fn open_damaged(home: &std::path::Path, original: &Stored) -> Outcome {
    let home = home.to_path_buf();
    let original_vv = original.snapshot.vv.clone();
    let r = std::panic::catch_unwind(move || match Node::open(&home, config()) {
        Err(e) => {
            assert!(
                matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::Io),
                "unexpected error kind: {e:?}"
            );
            assert!(!e.to_string().is_empty());
            Outcome::Refused(e.kind())
        }
        Ok(n) => {
            let report = n.verify(|_| {}).expect("verify runs");
            if !report.ok {
                assert!(!report.problems.is_empty());
                return Outcome::Flagged(report.problems);
            }
            let vv = n.version_vector();
            assert!(
                original_vv.dominates(&vv),
                "a clean store must be a prefix of the original"
            );
            // Every op of this home is its own: a prefix short of the original lost
            // acknowledged ops of its own chain, which the store mark reveals.
            if vv != original_vv {
                let own = original_vv.get(&n.node_id());
                assert_eq!(n.own_ops_missing(), Some((vv.get(&n.node_id()), own)));
            } else {
                assert_eq!(n.own_ops_missing(), None);
            }
            let snap = snapshot(&n, at(1000));
            if vv == original_vv {
                assert_eq!(snap, snapshot_of(original));
            }
            Outcome::RolledBack { ops: vv.total() }
        }
    });
    match r {
        Ok(o) => o,
        Err(_) => panic!("opening a damaged home panicked"),
    }
}

fn snapshot_of(s: &Stored) -> Snapshot {
    s.snapshot.clone()
}

/// Bytes overwritten in sled's own files. sled checks each log message's CRC and treats a
/// bad one as the torn tail of a crash: it recovers the last consistent batch before it.
/// So damage is either refused at open (Corrupt/Io), or leaves a clean, consistent prefix
/// of the original store (never a mix, never a panic). Damage at the start of the file or
/// in sled's config is refused outright.
#[test]
fn damaged_sled_files_are_refused_or_roll_back_to_a_consistent_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let original = closed_home(&base, 30);
    let db_len = std::fs::metadata(base.join("store/db")).unwrap().len() as usize;
    let total = original.snapshot.vv.total();

    let mut outcomes = Vec::new();
    let damage: Vec<(&str, usize, &str)> = [0, db_len / 5, db_len / 2, db_len * 4 / 5, db_len - 40]
        .into_iter()
        .flat_map(|off| [("db", off, "flip"), ("db", off, "zero"), ("db", off, "truncate")])
        .chain([("conf", 0, "flip"), ("conf", 10, "truncate")])
        .collect();
    for (i, (file, off, how)) in damage.into_iter().enumerate() {
        let home = dir.path().join(format!("d{i}"));
        copy_dir(&base, &home);
        let path = home.join("store").join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        match how {
            "flip" => bytes[off..(off + 32).min(len)]
                .iter_mut()
                .for_each(|b| *b ^= 0x5a),
            "zero" => bytes[off..].iter_mut().for_each(|b| *b = 0),
            _ => bytes.truncate(off),
        }
        std::fs::write(&path, &bytes).unwrap();
        let outcome = open_damaged(&home, &original);
        eprintln!("{file} {how} @{off}: {outcome:?}");
        if let Outcome::Flagged(problems) = &outcome {
            assert!(!problems.is_empty());
        }
        if off == 0 || file == "conf" && how == "flip" {
            assert!(
                matches!(outcome, Outcome::Refused(ErrorKind::Corrupt)),
                "{file} {how} @{off}: {outcome:?}"
            );
        }
        outcomes.push(outcome);
    }
    // Mid-file damage loses the batches from the damaged one on (never the whole store).
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, Outcome::RolledBack { ops } if *ops > 0 && *ops < total)));
}

/// A store that lost ops its node had acknowledged (its `store/` replaced by an older copy
/// here; sled recovering a damaged log by dropping its tail looks the same) opens and
/// serves reads, refuses every write with a clear error, keeps its clock above every
/// timestamp it issued, and writes again once a peer has sent the ops back: its chain goes
/// on with the next sequence number and no replica sees a fork.
#[test]
fn a_store_that_lost_its_own_acknowledged_ops_writes_nothing_until_a_peer_returns_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, b) = admin_and_member(dir.path(), 41);
    let b_home = b.home().to_path_buf();
    drop(b);
    let old_store = dir.path().join("b_store_old");
    copy_dir(&b_home.join("store"), &old_store);
    let mut b = Node::open(&b_home, config()).unwrap();
    let held_then = b.version_vector().get(&b.node_id());
    for i in 0..3 {
        add_story(&mut b, at(2), &format!("b_{i}"));
    }
    let acknowledged = b.version_vector().get(&b.node_id());
    let lamport = b.lamport();
    sync(&mut a, &mut b);
    drop(b);
    std::fs::remove_dir_all(b_home.join("store")).unwrap();
    copy_dir(&old_store, &b_home.join("store"));

    let mut b = Node::open(&b_home, config()).unwrap();
    assert_eq!(b.own_ops_missing(), Some((held_then, acknowledged)));
    assert!(b.lamport() >= lamport, "the clock resumes above what it issued");
    assert!(b.story(&sid("1_s"), at(3)).is_ok(), "reads are served");
    let before = stored(&b);
    let err = b
        .execute(
            at(3),
            Command::AddStory {
                id: sid("b_new"),
                name: "new".into(),
                body: None,
                depends_on: vec![],
            },
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    let msg = err.to_string();
    assert!(
        msg.contains("will not write") && msg.contains(&acknowledged.to_string()),
        "{msg}"
    );
    assert_eq!(stored(&b), before, "a refused write writes nothing");
    // Reopening (and ingesting nothing new) does not forget what was acknowledged.
    drop(b);
    let mut b = Node::open(&b_home, config()).unwrap();
    assert_eq!(b.own_ops_missing(), Some((held_then, acknowledged)));

    // A peer sends the ops back; the chain goes on from the acknowledged head.
    push(&a, &mut b);
    assert_eq!(b.own_ops_missing(), None);
    add_story(&mut b, at(4), "b_after");
    assert_eq!(b.version_vector().get(&b.node_id()), acknowledged + 1);
    sync(&mut a, &mut b);
    assert!(a.quarantined_authors().is_empty(), "no fork");
    assert!(a.forks().unwrap().is_empty());
    assert_eq!(snapshot(&a, at(5)), snapshot(&b, at(5)));
    drop(b);
    assert_eq!(Node::open(&b_home, config()).unwrap().own_ops_missing(), None);
}

/// Records damaged below sled (valid sled, bad huskies bytes): opening reads the persisted
/// projection without replaying the log, so a damaged op segment is found by `verify`
/// (segment checksum) and by any read of it; damaged records are `Corrupt` errors.
#[test]
fn damaged_records_are_reported_by_verify_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let original = closed_home(&base, 31);
    let tamper = |name: &str, pick: &dyn Fn(&[u8]) -> bool, edit: &dyn Fn(&mut Vec<u8>)| {
        let home = dir.path().join(name);
        copy_dir(&base, &home);
        // The same sled settings as the core's store (sled refuses another segment size).
        let conf = std::fs::read(home.join("store/conf")).unwrap();
        let segment_size: usize = String::from_utf8_lossy(&conf)
            .lines()
            .find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
            .expect("sled conf names its segment size");
        let db = sled::Config::new()
            .path(home.join("store"))
            .segment_size(segment_size)
            .cache_capacity(128 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let (k, v) = db
            .iter()
            .map(|kv| kv.unwrap())
            .find(|(k, _)| pick(k))
            .expect("a record to tamper with");
        let mut v = v.to_vec();
        edit(&mut v);
        db.insert(k, v).unwrap();
        db.flush().unwrap();
        drop(db);
        home
    };

    // A bit flipped inside an op segment.
    let home = tamper("seg", &|k| k[0] == b'O', &|v| {
        let n = v.len();
        v[n - 100] ^= 1;
    });
    let n = Node::open(&home, config()).expect("open does not re-verify the log");
    let report = n.verify(|_| {}).unwrap();
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.contains("checksum")),
        "{:?}",
        report.problems
    );
    assert_eq!(
        n.ops_since(&Default::default()).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    assert_eq!(
        n.export_since(&Default::default()).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    drop(n);

    // A story record overwritten with garbage.
    let home = tamper("story", &|k| k[0] == b'S', &|v| {
        v.clear();
        v.extend_from_slice(&[0xff; 7]);
    });
    let n = Node::open(&home, config()).unwrap();
    assert_eq!(n.stories(None, at(5)).unwrap_err().kind(), ErrorKind::Corrupt);
    assert_eq!(
        n.story(&sid("s_0"), at(5)).unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let report = n.verify(|_| {}).unwrap();
    assert!(!report.ok);
    assert!(
        report.problems.iter().any(|p| p.contains("s_0")),
        "{:?}",
        report.problems
    );
    drop(n);

    // Records read at open: refused with Corrupt.
    for (name, prefix) in [("author", b'A'), ("member", b'U'), ("meta", b'M')] {
        let home = tamper(name, &|k| k[0] == prefix, &|v| {
            v.clear();
            v.extend_from_slice(&[0xff; 3]);
        });
        let err = Node::open(&home, config()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{name}: {err}");
    }
    // The untouched home is fine.
    let n = Node::open(&base, config()).unwrap();
    assert!(n.verify(|_| {}).unwrap().ok);
    assert_eq!(stored(&n), original);
}

#[test]
fn bad_key_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let original = closed_home(&home, 32);
    let key = home.join("node.key");
    let good = std::fs::read(&key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for mode in [0o644, 0o640, 0o604, 0o666] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Node::open(&home, config()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unauthorized, "mode {mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let write = |text: &[u8]| {
        std::fs::write(&key, text).unwrap();
    };
    for bad in [
        &b""[..],
        b"huskies-node-key v1\n",
        b"huskies-node-key v1\nnot hex\n",
        b"huskies-node-key v2\n0000000000000000000000000000000000000000000000000000000000000000\n",
        &[0xff; 100],
    ] {
        write(bad);
        let err = Node::open(&home, config()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    }
    // A well-formed key of another node does not open this store.
    write(b"huskies-node-key v1\n0101010101010101010101010101010101010101010101010101010101010101\n");
    let err = Node::open(&home, config()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert!(err.to_string().contains("does not belong"), "{err}");
    // No key at all: not a home.
    std::fs::remove_file(&key).unwrap();
    assert_eq!(
        Node::open(&home, config()).unwrap_err().kind(),
        ErrorKind::HomeNotFound
    );
    // Restored (a new file gets the umask's mode: it must be made private again),
    // everything is as it was.
    write(&good);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            assert_eq!(
                Node::open(&home, config()).unwrap_err().kind(),
                ErrorKind::Unauthorized
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let n = Node::open(&home, config()).unwrap();
    assert_eq!(stored(&n), original);
}
