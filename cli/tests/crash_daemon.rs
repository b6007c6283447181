//! Crash trials through real daemons (issue 15): two `huskies daemon` processes of one
//! cluster sync over WebSocket `/crdt-sync` on loopback while a writer on each node runs
//! `huskies story add` / `story event` (the CLI routes them through the daemon's control
//! socket). At a seeded moment one daemon gets SIGKILL. Then:
//!
//! - the killed node's home is opened directly (`huskies verify`, `story list`, no daemon):
//!   a failure is a reopen failure, a `verify` that is not clean a verify failure, and each
//!   op the node had acknowledged (a command that printed success) and is missing is lost;
//! - its daemon is restarted on the same address, the two sync, and every acknowledged op
//!   of either node must be on both, with the same stories in the same stages: otherwise
//!   divergence (or lost, for an acknowledged op the survivors both lack).
//!
//! `HUSKIES_CRASH_DAEMON_TRIALS` (default 2) trials, `HUSKIES_CRASH_DAEMON_SEED` (printed)
//! replays a run. Homes start afresh every 10 trials. Every count must be zero.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{bin, huskies, ok_json, text};

/// A small seeded RNG (SplitMix64) for the trial schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One node: its home, the address its daemon listens on (the same after a restart, so
/// the peer's `--peer` keeps working), the peer it dials, and its daemon process.
struct Node {
    home: PathBuf,
    listen: String,
    peer: Option<String>,
    daemon: Option<Child>,
}

impl Node {
    fn url(&self) -> String {
        format!("ws://{}/crdt-sync", self.listen)
    }

    /// Starts the daemon; `Err` if it does not answer on its control socket in time.
    fn start(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(bin());
        cmd.arg("--home")
            .arg(&self.home)
            .args(["daemon", "--listen", &self.listen])
            .env_remove("HUSKIES_HOME")
            .env_remove("HUSKIES_LOCK_TIMEOUT")
            .env_remove("HUSKIES_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(p) = &self.peer {
            cmd.args(["--peer", p]);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
        // A killed daemon leaves its socket file behind: wait for a daemon that accepts,
        // without running a command that would open the home itself.
        let sock = self.home.join("daemon.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                let v = ok_json(&self.home, &["status"]);
                if v["daemon"] == true {
                    break;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("the daemon exited: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the daemon did not answer within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(30));
        }
        self.daemon = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            common::stop(&mut child);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free loopback address (bound and released: good enough on a quiet loopback).
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// Two fresh nodes of one cluster with daemons running: `a` (admin) and `b`, which dials
/// `a`.
fn cluster(dir: &Path) -> (Node, Node) {
    let a_home = dir.join("a");
    let b_home = dir.join("b");
    ok_json(&a_home, &["init", "--cluster-name", "crash", "--label", "a"]);
    let mut a = Node {
        home: a_home,
        listen: free_addr(),
        peer: None,
        daemon: None,
    };
    a.start().expect("a starts");
    let t = ok_json(&a.home, &["ticket", "create", "--ttl", "600"]);
    let ticket = t["ticket"].as_str().unwrap().to_string();
    ok_json(&b_home, &["init", "--join", &ticket, "--label", "b"]);
    let mut b = Node {
        home: b_home,
        listen: free_addr(),
        peer: Some(a.url()),
        daemon: None,
    };
    b.start().expect("b starts");
    (a, b)
}

/// What a node acknowledged: each story it added, and whether `deps-met` was acknowledged
/// too (then the story is in coding).
type Acked = BTreeMap<String, bool>;

/// Writes on `home` until `stop`: adds stories `<prefix><n>`, and moves some of its own
/// stories with `deps-met`. Records what printed success.
fn writer(home: PathBuf, prefix: String, seed: u64, stop: Arc<AtomicBool>, acked: Arc<Mutex<Acked>>) {
    let mut rng = Rng(seed);
    let mut n = 0u64;
    let mut added: Vec<String> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        if !added.is_empty() && rng.below(4) == 0 {
            let id = added.remove(rng.below(added.len() as u64) as usize);
            let out = huskies(&home, &["--json", "story", "event", &id, "deps-met"]);
            if out.status.success() {
                acked.lock().unwrap().insert(id, true);
            }
        } else {
            n += 1;
            let id = format!("{prefix}{n}");
            let out = huskies(&home, &["--json", "story", "add", &id, "--name", "crash trial"]);
            if out.status.success() {
                acked.lock().unwrap().insert(id.clone(), false);
                added.push(id);
            }
        }
    }
}

/// Story id → stage kind, as `home` shows them (through its daemon if one runs).
fn stories(home: &Path) -> Result<BTreeMap<String, String>, String> {
    let out = huskies(home, &["--json", "story", "list"]);
    if !out.status.success() {
        return Err(text(&out));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
    Ok(v["stories"]
        .as_array()
        .ok_or_else(|| text(&out))?
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["stage"]["kind"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Acknowledged ops missing from `shown`: a story, or its acknowledged `deps-met`.
fn missing(acked: &Acked, shown: &BTreeMap<String, String>) -> usize {
    acked
        .iter()
        .map(|(id, moved)| match shown.get(id) {
            None => 1 + usize::from(*moved),
            Some(stage) if *moved && stage == "backlog" => 1,
            Some(_) => 0,
        })
        .sum()
}

fn verify_ok(home: &Path) -> Result<(), String> {
    let out = huskies(home, &["--json", "verify"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if out.status.success() && v["ok"] == true {
        Ok(())
    } else {
        Err(text(&out))
    }
}

#[derive(Default, Debug)]
struct Counts {
    trials: u64,
    acknowledged: usize,
    lost: usize,
    reopen_failures: usize,
    verify_failures: usize,
    divergence: usize,
}

/// One trial on running nodes `a` and `b`; `victim` 0 kills `a`, 1 kills `b`.
fn trial(t: u64, rng: &mut Rng, nodes: &mut [Node; 2], counts: &mut Counts) {
    let victim = rng.below(2) as usize;
    let kill_after = Duration::from_millis(150 + rng.below(1200));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: [Arc<Mutex<Acked>>; 2] = Default::default();
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let (home, stop, acked) = (nodes[i].home.clone(), stop.clone(), acked[i].clone());
            let prefix = format!("t{t}n{i}s");
            let seed = rng.next();
            std::thread::spawn(move || writer(home, prefix, seed, stop, acked))
        })
        .collect();
    std::thread::sleep(kill_after);
    nodes[victim].kill();
    // Writers keep going a little: the victim's commands now fail, or run on its home
    // directly once nothing answers on the socket.
    std::thread::sleep(Duration::from_millis(rng.below(300)));
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().expect("writer");
    }
    let acked: Vec<Acked> = acked.iter().map(|a| a.lock().unwrap().clone()).collect();
    let n_acked: usize = acked
        .iter()
        .flatten()
        .map(|(_, moved)| 1 + usize::from(*moved))
        .sum();
    counts.acknowledged += n_acked;
    counts.trials += 1;
    // The killed node, opened directly: durability of what it acknowledged.
    let home = nodes[victim].home.clone();
    match stories(&home) {
        Ok(shown) => {
            let lost = missing(&acked[victim], &shown);
            if lost > 0 {
                eprintln!("trial {t}: node {victim} lost {lost} acknowledged ops after SIGKILL");
            }
            counts.lost += lost;
            if let Err(e) = verify_ok(&home) {
                eprintln!("trial {t}: verify of node {victim} failed: {e}");
                counts.verify_failures += 1;
            }
        }
        Err(e) => {
            eprintln!("trial {t}: node {victim} does not reopen: {e}");
            counts.reopen_failures += 1;
        }
    }
    if let Err(e) = nodes[victim].start() {
        eprintln!("trial {t}: node {victim}'s daemon does not restart: {e}");
        counts.reopen_failures += 1;
        return;
    }
    // The survivors sync: both must show every acknowledged op, and the same stories.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut last_a, mut last_b) = (BTreeMap::new(), BTreeMap::new());
    let converged = loop {
        if let (Ok(sa), Ok(sb)) = (stories(&nodes[0].home), stories(&nodes[1].home)) {
            let complete = acked
                .iter()
                .all(|ack| missing(ack, &sa) == 0 && missing(ack, &sb) == 0);
            if sa == sb && complete {
                break true;
            }
            (last_a, last_b) = (sa, sb);
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !converged {
        let lost_both: usize = acked
            .iter()
            .map(|ack| {
                ack.iter()
                    .filter(|(id, _)| !last_a.contains_key(*id) && !last_b.contains_key(*id))
                    .count()
            })
            .sum();
        eprintln!(
            "trial {t}: no convergence in 30 s: {} vs {} stories, {lost_both} acknowledged stories on neither",
            last_a.len(),
            last_b.len()
        );
        counts.lost += lost_both;
        counts.divergence += 1;
    }
    for node in nodes.iter() {
        if let Err(e) = verify_ok(&node.home) {
            eprintln!("trial {t}: verify after sync failed: {e}");
            counts.verify_failures += 1;
        }
    }
}

#[test]
fn sigkilled_daemons_lose_no_acknowledged_op_and_converge() {
    let trials: u64 = std::env::var("HUSKIES_CRASH_DAEMON_TRIALS")
        .map(|v| {
            v.trim()
                .parse()
                .expect("HUSKIES_CRASH_DAEMON_TRIALS must be a number")
        })
        .unwrap_or(2);
    let seed: u64 = match std::env::var("HUSKIES_CRASH_DAEMON_SEED") {
        Ok(v) => v.trim().parse().expect("HUSKIES_CRASH_DAEMON_SEED must be a u64"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("crash daemon trials: HUSKIES_CRASH_DAEMON_SEED={seed} HUSKIES_CRASH_DAEMON_TRIALS={trials}");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let mut counts = Counts::default();
    let mut t = 0;
    while t < trials {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = cluster(dir.path());
        let mut nodes = [a, b];
        for _ in 0..10 {
            if t == trials {
                break;
            }
            trial(t, &mut rng, &mut nodes, &mut counts);
            t += 1;
            if t % 25 == 0 {
                eprintln!("crash daemon trials: {t} done: {counts:?}");
            }
            if nodes.iter().any(|n| n.daemon.is_none()) {
                break;
            }
        }
    }
    eprintln!(
        "crash daemon trials: seed {seed}: {} trials, {} acknowledged ops, {} lost, {} reopen failures, \
         {} verify failures, {} without convergence; {:.0} s",
        counts.trials,
        counts.acknowledged,
        counts.lost,
        counts.reopen_failures,
        counts.verify_failures,
        counts.divergence,
        started.elapsed().as_secs_f64()
    );
    assert!(counts.acknowledged > 0, "the writers acknowledged nothing");
    assert_eq!(
        (
            counts.lost,
            counts.reopen_failures,
            counts.verify_failures,
            counts.divergence
        ),
        (0, 0, 0, 0),
        "{counts:?}"
    );
}
