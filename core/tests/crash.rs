//! Durability under `kill -9`, as a harness of many trials. A child process drives two
//! nodes the way a daemon does — node A writes groups of stories, node P (its peer) writes
//! too, and a pair of sans-IO sync sessions carries ops between them — printing what each
//! call acknowledged once it returned. The parent kills the child mid-burst, reopens both
//! homes and checks:
//!
//! - every op A or P acknowledged is in its store (`ack` lines: after `execute_group`);
//! - every op A or P acknowledged *receiving* is there too (`holds` lines: after the
//!   session's ingest returned, i.e. after its flush);
//! - both stores reopen, `verify` clean, and the newest story is readable before anything
//!   folds the journal;
//! - after the survivors sync, both show the same projection (no divergence).
//!
//! `HUSKIES_CRASH_TRIALS` sets the number of trials (default 3, what CI runs);
//! `HUSKIES_CRASH_SEED` replays one run. Every failure is counted, the totals are printed
//! (`crash trials: ...`), and the test fails if any count is not zero.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use common::{snapshot, TestRng};
use huskies_core::sync::{Session, SessionConfig, SessionOptions};
use huskies_core::{Command, InitMode, Node, NodeConfig, Role, StoryId, Timestamp};
use rand_core::RngCore;

const CHILD_ENV: &str = "HUSKIES_CRASH_CHILD_HOMES";

fn now() -> Timestamp {
    Timestamp::from_millis(1_763_700_000_000)
}

fn config() -> NodeConfig {
    NodeConfig {
        verify_threads: 1,
        ..NodeConfig::default()
    }
}

/// Pumps frames between two sessions until neither has anything to say; `on_ingest` runs
/// after each side handled frames (so a `holds` line follows a returned ingest).
fn pump(
    a: &mut Node,
    sa: &mut Session,
    p: &mut Node,
    sp: &mut Session,
    t: Timestamp,
    mut on_ingest: impl FnMut(&Node, &Node),
) {
    for _ in 0..64 {
        let mut moved = false;
        let mut frames = Vec::new();
        while let Some(f) = sa.poll_transmit(a, t).expect("a transmits") {
            frames.push(f);
        }
        if !frames.is_empty() {
            sp.handle_frames(p, t, &frames).expect("p handles frames");
            moved = true;
        }
        let mut frames = Vec::new();
        while let Some(f) = sp.poll_transmit(p, t).expect("p transmits") {
            frames.push(f);
        }
        if !frames.is_empty() {
            sa.handle_frames(a, t, &frames).expect("a handles frames");
            moved = true;
        }
        on_ingest(a, p);
        if !moved {
            return;
        }
    }
    panic!("sessions do not go quiet");
}

fn sessions(a: &Node, p: &Node, t: Timestamp) -> (Session, Session) {
    let sa = Session::new(a, t, [1; 32], SessionOptions::default(), SessionConfig::default());
    let sp = Session::new(p, t, [2; 32], SessionOptions::default(), SessionConfig::default());
    (sa, sp)
}

/// Story `<tag><seq>`: its id names the seq of the op that creates it.
fn add_story(tag: &str, seq: u64) -> Command {
    Command::AddStory {
        id: StoryId::new(format!("{tag}{seq}")).unwrap(),
        name: format!("story {tag}{seq}"),
        body: seq.is_multiple_of(3).then(|| "body ".repeat(40)),
        depends_on: vec![],
    }
}

/// The child: writes forever on both nodes and syncs them, printing `ack a|p <seq>` for
/// each acknowledged local op and `holds a|p <seq>` for how much of the *other* node's
/// chain it holds after an ingest returned.
#[test]
#[ignore = "runs only as the child process of killed_writers_lose_no_acknowledged_op"]
fn crash_writer_child() {
    let Ok(homes) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (ha, hp) = homes.split_once('|').expect("two homes");
    let mut a = Node::open(Path::new(ha), config()).expect("child opens a");
    let mut p = Node::open(Path::new(hp), config()).expect("child opens p");
    let (ida, idp) = (a.node_id(), p.node_id());
    let mut t = now();
    let (mut sa, mut sp) = sessions(&a, &p, t);
    let mut round = 0u64;
    loop {
        round += 1;
        t = t.add_millis(10);
        // Story ids from the next seq: unique across restarts (a crash loses no ack).
        let head = a.version_vector().get(&ida);
        let group = 1 + (round % 7);
        let cmds = (1..=group).map(|k| add_story("a", head + k)).collect();
        for r in a.execute_group(t, cmds).expect("a commits") {
            println!("ack a {}", r.expect("command accepted").seq);
        }
        if round.is_multiple_of(2) {
            let head = p.version_vector().get(&idp);
            let cmd = add_story("p", head + 1);
            println!("ack p {}", p.execute(t, cmd).expect("p commits").seq);
        }
        if round.is_multiple_of(3) {
            pump(&mut a, &mut sa, &mut p, &mut sp, t, |a, p| {
                println!("holds a {}", a.version_vector().get(&idp));
                println!("holds p {}", p.version_vector().get(&ida));
            });
        }
    }
}

/// Totals over all trials.
#[derive(Debug, Default)]
struct Totals {
    trials: u64,
    acked: u64,
    lost: u64,
    lost_received: u64,
    reopen_failures: u64,
    verify_failures: u64,
    unreadable_newest: u64,
    divergence: u64,
}

#[derive(Default)]
struct Acks {
    a: u64,
    p: u64,
    a_holds_p: u64,
    p_holds_a: u64,
    count: u64,
}

impl Acks {
    fn line(&mut self, line: &str) {
        // libtest may print "test name ... " on the same line as the first output.
        let words: Vec<&str> = line.split_whitespace().collect();
        for w in words.windows(3) {
            let Ok(n) = w[2].parse::<u64>() else { continue };
            match (w[0], w[1]) {
                ("ack", "a") => {
                    self.a = self.a.max(n);
                    self.count += 1;
                }
                ("ack", "p") => {
                    self.p = self.p.max(n);
                    self.count += 1;
                }
                ("holds", "a") => self.a_holds_p = self.a_holds_p.max(n),
                ("holds", "p") => self.p_holds_a = self.p_holds_a.max(n),
                _ => {}
            }
        }
    }
}

fn trials() -> u64 {
    std::env::var("HUSKIES_CRASH_TRIALS")
        .ok()
        .map(|s| s.trim().parse().expect("HUSKIES_CRASH_TRIALS must be a number"))
        .unwrap_or(3)
}

fn seed() -> u64 {
    let seed = std::env::var("HUSKIES_CRASH_SEED")
        .ok()
        .map(|s| s.trim().parse().expect("HUSKIES_CRASH_SEED must be a u64"))
        .unwrap_or_else(|| rand_core::OsRng.next_u64());
    eprintln!("crash seed = {seed}");
    seed
}

/// Two fresh homes in `dir`: A (admin of a new cluster) and P (a member), in sync.
fn fresh_homes(dir: &Path, rng: &mut TestRng) -> (PathBuf, PathBuf) {
    let _ = std::fs::remove_dir_all(dir);
    let (ha, hp) = (dir.join("a"), dir.join("p"));
    let mut a = Node::init(
        &ha,
        InitMode::NewCluster { name: "crash".into() },
        rng,
        now(),
        config(),
    )
    .unwrap();
    let mut p = Node::init(
        &hp,
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        rng,
        now(),
        config(),
    )
    .unwrap();
    a.execute(
        now(),
        Command::AddMember {
            node: p.node_id(),
            role: Role::Member,
        },
    )
    .unwrap();
    // P learns the cluster (and that A is a member) out of band, as a joining node does.
    let report = p
        .ingest_bundle(&a.export_since(&p.version_vector()).unwrap())
        .unwrap();
    assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    assert_eq!(a.version_vector(), p.version_vector());
    (ha, hp)
}

/// Trials per pair of homes: each trial re-verifies and compares whole stores, so the
/// homes start afresh now and then to keep a long run linear.
const TRIALS_PER_HOMES: u64 = 25;

#[test]
fn killed_writers_lose_no_acknowledged_op() {
    let seed = seed();
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (mut ha, mut hp) = (PathBuf::new(), PathBuf::new());
    let mut totals = Totals::default();
    let trials = trials();
    for trial in 0..trials {
        if trial % TRIALS_PER_HOMES == 0 {
            (ha, hp) = fresh_homes(
                &dir.path().join(format!("homes{}", trial / TRIALS_PER_HOMES)),
                &mut rng,
            );
        }
        // Kill after 20 to ~600 acknowledgements: early (at open) and mid-burst kills.
        let target = 20 + rng.below(580) as u64;
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{}|{}", ha.display(), hp.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acks = Acks::default();
        for line in BufReader::new(stdout).lines() {
            acks.line(&line.unwrap());
            if acks.count >= target {
                break;
            }
        }
        child.kill().unwrap(); // SIGKILL on unix: no destructors, no flush
        child.wait().unwrap();
        assert!(
            acks.count >= target,
            "trial {trial}: child stopped early after {} acks",
            acks.count
        );
        totals.trials += 1;
        totals.acked += acks.count;
        let (a, p) = match (Node::open(&ha, config()), Node::open(&hp, config())) {
            (Ok(a), Ok(p)) => (a, p),
            (a, p) => {
                eprintln!("trial {trial}: reopen failed: {:?} / {:?}", a.err(), p.err());
                totals.reopen_failures += 1;
                break;
            }
        };
        let (ida, idp) = (a.node_id(), p.node_id());
        let (va, vp) = (a.version_vector(), p.version_vector());
        let lost = acks.a.saturating_sub(va.get(&ida)) + acks.p.saturating_sub(vp.get(&idp));
        let lost_received =
            acks.a_holds_p.saturating_sub(va.get(&idp)) + acks.p_holds_a.saturating_sub(vp.get(&ida));
        if lost + lost_received > 0 {
            eprintln!(
                "trial {trial}: lost {lost} acknowledged and {lost_received} received ops (acks a {} p {}, holds {} {}; stores {va:?} {vp:?})",
                acks.a, acks.p, acks.a_holds_p, acks.p_holds_a
            );
        }
        totals.lost += lost;
        totals.lost_received += lost_received;
        // The newest story of each writer, read before anything folds the journal (the
        // kill may have left it only in a journal entry). A's seqs 1 and 2 are the genesis
        // and the admission of P; every later op of A or P creates story `<tag><seq>`.
        for (node, tag, id, first) in [(&a, "a", ida, 3), (&p, "p", idp, 1)] {
            let head = node.version_vector().get(&id);
            let sid = StoryId::new(format!("{tag}{head}")).unwrap();
            if head >= first && node.story(&sid, now()).is_err() {
                eprintln!("trial {trial}: newest story {sid} unreadable");
                totals.unreadable_newest += 1;
            }
        }
        for (node, name) in [(&a, "a"), (&p, "p")] {
            match node.verify(|_| {}) {
                Ok(r) if r.ok => {}
                other => {
                    eprintln!("trial {trial}: verify {name}: {other:?}");
                    totals.verify_failures += 1;
                }
            }
        }
        // The survivors sync; then they must agree.
        let (mut a, mut p) = (a, p);
        let t = now().add_secs(trial + 1);
        let (mut sa, mut sp) = sessions(&a, &p, t);
        pump(&mut a, &mut sa, &mut p, &mut sp, t, |_, _| {});
        if snapshot(&a, t) != snapshot(&p, t) {
            eprintln!("trial {trial}: replicas differ after syncing");
            totals.divergence += 1;
        }
        if (trial + 1) % 20 == 0 {
            eprintln!("after {} trials: {totals:?}", trial + 1);
        }
    }
    eprintln!("crash trials: {totals:?}");
    assert_eq!(totals.trials, trials, "{totals:?}");
    assert_eq!(
        (
            totals.lost,
            totals.lost_received,
            totals.reopen_failures,
            totals.verify_failures,
            totals.unreadable_newest,
            totals.divergence
        ),
        (0, 0, 0, 0, 0, 0),
        "crash seed {seed}: {totals:?}"
    );
}
