//! The CLI with real daemons on loopback: routing through the control socket, join
//! tickets, claim conflicts between nodes, `log --follow`, and build agents.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{bin, daemon_url, huskies, ok_json, wait_for};

fn err_kind(home: &Path, args: &[&str]) -> (i32, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v["error"]["kind"].as_str().unwrap_or("").to_string(),
    )
}

/// A daemon process, stopped (SIGTERM) on drop.
struct Daemon {
    child: Child,
    home: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        common::stop(&mut self.child);
    }
}

fn start_daemon(home: &Path, extra: &[&str]) -> (Daemon, String) {
    let child = common::spawn_daemon(home, extra, Stdio::null());
    let d = Daemon {
        child,
        home: home.to_path_buf(),
    };
    let url = daemon_url(&d.home);
    (d, url)
}

fn init(home: &Path, label: &str) {
    ok_json(home, &["init", "--cluster-name", "acme", "--label", label]);
}

fn join(admin: &Path, home: &Path, label: &str) {
    let t = ok_json(admin, &["ticket", "create", "--ttl", "600"]);
    let ticket = t["ticket"].as_str().unwrap();
    let v = ok_json(home, &["init", "--join", ticket, "--label", label]);
    assert_eq!(v["cluster_id"], ok_json(admin, &["id"])["cluster_id"]);
}

#[test]
fn commands_behave_the_same_through_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a");
    init(&home, "a");
    let direct = ok_json(&home, &["story", "add", "1_direct", "--name", "Direct"]);
    let (_d, _) = start_daemon(&home, &[]);
    let routed = ok_json(&home, &["story", "add", "2_routed", "--name", "Routed"]);
    assert_eq!(
        direct.as_object().unwrap().keys().collect::<Vec<_>>(),
        routed.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_eq!(routed["stage"]["kind"], "backlog");
    let list = ok_json(&home, &["story", "list"]);
    assert_eq!(list["stories"].as_array().unwrap().len(), 2);
    // Errors keep their kinds and exit codes through the daemon.
    assert_eq!(
        err_kind(&home, &["story", "event", "2_routed", "accepted"]),
        (1, "invalid_transition".into())
    );
    assert_eq!(
        err_kind(&home, &["story", "show", "nope"]),
        (1, "not_found".into())
    );
    assert_eq!(
        err_kind(&home, &["story", "add", "2_routed"]),
        (1, "already_exists".into())
    );
    assert_eq!(
        err_kind(&home, &["story", "add", "bad id"]),
        (2, "invalid_argument".into())
    );
    // Relative paths and stdin are the client's.
    let body = dir.path().join("body.md");
    std::fs::write(&body, "the body").unwrap();
    let out = Command::new(bin())
        .current_dir(dir.path())
        .args([
            "--home",
            home.to_str().unwrap(),
            "--json",
            "story",
            "add",
            "3_body",
            "--body-file",
            "body.md",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(ok_json(&home, &["story", "show", "3_body"])["body"], "the body");
    let out = Command::new(bin())
        .current_dir(dir.path())
        .args(["--home", home.to_str().unwrap(), "export", "--out", "x.hsk"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("x.hsk").exists());
    let status = ok_json(&home, &["status"]);
    assert_eq!(status["daemon"], true);
    assert!(ok_json(&home, &["verify"])["ok"] == true);
}

#[test]
fn join_sync_and_claim_conflicts_between_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    init(&a, "a");
    let (_da, url_a) = start_daemon(&a, &[]);
    join(&a, &b, "b");
    let (_db, _) = start_daemon(&b, &["--peer", &url_a]);
    ok_json(&a, &["story", "add", "7_shared"]);
    wait_for(10, "b sees a's story", || {
        ok_json(&b, &["story", "list"])["stories"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    });
    // Human status: "1 peer", and an inbound peer (no address) without a stray comma.
    let status = String::from_utf8(huskies(&a, &["status"]).stdout).unwrap();
    assert!(status.contains(", 1 peer,"), "{status}");
    assert!(!status.contains(" ,"), "{status}");
    assert!(status.contains("inbound, lag"), "{status}");
    ok_json(&b, &["claim", "7_shared", "--ttl", "600"]);
    wait_for(10, "a sees b's claim", || {
        (!ok_json(&a, &["story", "show", "7_shared"])["claim"].is_null()).then_some(())
    });
    assert_eq!(err_kind(&a, &["claim", "7_shared"]), (1, "claim_conflict".into()));
    // A non-admin cannot issue tickets.
    assert_eq!(err_kind(&b, &["ticket", "create"]), (1, "unauthorized".into()));
    let members = ok_json(&a, &["member", "list"]);
    assert_eq!(members["members"].as_array().unwrap().len(), 2);
}

#[test]
fn environment_errors_have_their_kinds() {
    let dir = tempfile::tempdir().unwrap();
    // A ticket to nowhere: network error, and nothing is left behind.
    let a = dir.path().join("a");
    init(&a, "a");
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let nowhere = format!("ws://{nowhere}/crdt-sync");
    let t = ok_json(&a, &["ticket", "create", "--address", &nowhere]);
    let ticket = t["ticket"].as_str().unwrap().to_string();
    let b = dir.path().join("b");
    assert_eq!(err_kind(&b, &["init", "--join", &ticket]), (3, "network".into()));
    assert!(!b.exists());
    assert_eq!(
        err_kind(&b, &["init", "--join", "not-a-ticket"]),
        (2, "invalid_argument".into())
    );
    // A damaged key file: corrupt.
    let key = a.join("node.key");
    std::fs::write(&key, "garbage").unwrap();
    assert_eq!(err_kind(&a, &["story", "list"]), (3, "corrupt".into()));
    // Writing where it cannot: io.
    let c = dir.path().join("c");
    init(&c, "c");
    assert_eq!(
        err_kind(&c, &["export", "--out", "/nonexistent-dir/x.hsk"]),
        (3, "io".into())
    );
}

#[test]
fn log_follow_streams_new_ops_as_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a");
    init(&home, "a");
    let (_d, _) = start_daemon(&home, &[]);
    let mut follow = Command::new(bin())
        .args(["--home", home.to_str().unwrap(), "--json", "log", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    ok_json(&home, &["story", "add", "9_followed"]);
    let mut seen = false;
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("each line is one JSON object");
        if v["kind"] == "story_create" && v["story"] == "9_followed" {
            seen = true;
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen);
}

/// Two agents race for the same coding stories; every story runs, and no story runs on two
/// nodes at once.
#[test]
fn two_agents_share_the_work_without_running_a_story_twice_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("rdv");
    init(&r, "rdv");
    let (_dr, url) = start_daemon(&r, &[]);
    let runs = dir.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let stories: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    for s in &stories {
        ok_json(&r, &["story", "add", s]);
        ok_json(&r, &["story", "event", s, "deps-met"]);
    }
    let script = format!(
        "f={}/$HUSKIES_STORY_ID.$HUSKIES_NODE_ID.$$; date +%s%N > $f; sleep 0.4; date +%s%N >> $f",
        runs.display()
    );
    let mut agents = Vec::new();
    for name in ["w1", "w2"] {
        let home = dir.path().join(name);
        join(&r, &home, name);
        let child = Command::new(bin())
            .args([
                "--home",
                home.to_str().unwrap(),
                "agent",
                "--rendezvous",
                &url,
                "--exec",
                &script,
                "--max-parallel",
                "2",
                "--ttl",
                "60",
            ])
            .args(["--scan-interval-ms", "200", "--settle-ms", "800"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        agents.push(Daemon { child, home });
    }
    wait_for(60, "every story reaches qa", || {
        let list = ok_json(&r, &["story", "list", "--stage", "qa"]);
        (list["stories"].as_array().unwrap().len() == stories.len()).then_some(())
    });
    drop(agents);
    // Intervals per story never overlap.
    for s in &stories {
        let mut intervals: Vec<(u128, u128)> = std::fs::read_dir(&runs)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{s}.")))
            .map(|e| {
                let text = std::fs::read_to_string(e.path()).unwrap();
                let mut it = text.lines().map(|l| l.trim().parse::<u128>().unwrap());
                (it.next().unwrap(), it.next().unwrap_or(u128::MAX))
            })
            .collect();
        assert!(!intervals.is_empty(), "{s} ran");
        intervals.sort();
        for w in intervals.windows(2) {
            assert!(w[0].1 <= w[1].0, "{s} ran twice at once: {intervals:?}");
        }
    }
}

#[test]
fn member_removal_key_rotation_and_completions() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    init(&a, "a");
    let (_da, url_a) = start_daemon(&a, &[]);
    join(&a, &b, "b");
    let (db, _) = start_daemon(&b, &["--peer", &url_a]);
    // Key rotation on b (through its daemon): the new key is a member everywhere.
    let rotated = ok_json(&b, &["key", "rotate"]);
    let new_b = rotated["node_id"].as_str().unwrap().to_string();
    assert_ne!(new_b, rotated["old_node_id"].as_str().unwrap());
    assert_eq!(ok_json(&b, &["id"])["node_id"], new_b.as_str());
    wait_for(10, "a sees b's new key", || {
        let m = ok_json(&a, &["member", "list"]);
        m["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["node_id"] == new_b.as_str() && x["removed"] == false)
            .then_some(())
    });
    drop(db);
    // The admin removes b; b's later ops are void everywhere.
    ok_json(&a, &["member", "remove", &new_b]);
    let m = ok_json(&a, &["member", "list"]);
    let entry = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node_id"] == new_b.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["removed"], true);
    assert_eq!(
        err_kind(&a, &["member", "remove", &new_b]),
        (1, "not_found".into())
    );
    assert_eq!(
        err_kind(&a, &["member", "remove", "zz"]),
        (2, "invalid_argument".into())
    );
    // Completion scripts.
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("huskies"),
            "{shell}"
        );
    }
}

fn event_lines(home: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json", "events"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

/// `huskies events`: the same lines with and without a daemon, resumable from each line's
/// cursor, and `--follow` through the daemon streams new transitions.
#[test]
fn events_are_the_same_with_and_without_a_daemon_and_resume_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a");
    init(&home, "a");
    ok_json(&home, &["story", "add", "1_ev"]);
    ok_json(&home, &["story", "event", "1_ev", "deps-met"]);
    ok_json(&home, &["claim", "1_ev"]);
    let direct = event_lines(&home, &[]);
    let types: Vec<_> = direct.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "org.huskies.story.added",
            "org.huskies.story.transitioned",
            "org.huskies.claim.taken"
        ]
    );
    assert_eq!(direct[1]["attributes"]["to"]["kind"], "coding");
    assert_eq!(direct[1]["version"], "1.0");
    let cursor = direct[0]["cursor"].as_str().unwrap();
    let rest = event_lines(&home, &["--since", cursor]);
    assert_eq!(rest, direct[1..]);
    let (code, kind) = err_kind(&home, &["events", "--since", "not-a-cursor"]);
    assert_eq!((code, kind.as_str()), (2, "invalid_argument"));

    let (_d, _) = start_daemon(&home, &[]);
    assert_eq!(
        event_lines(&home, &[]),
        direct,
        "through the daemon: the same lines"
    );
    let last = direct[2]["cursor"].as_str().unwrap().to_string();
    let mut follow = Command::new(bin())
        .args([
            "--home",
            home.to_str().unwrap(),
            "--json",
            "events",
            "--follow",
            "--since",
            &last,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    ok_json(&home, &["story", "event", "1_ev", "gates-started"]);
    let mut seen = None;
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).expect("each line is one JSON object");
        if v["type"] == "org.huskies.story.transitioned" {
            seen = Some(v);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let v = seen.expect("the new transition was streamed");
    assert_eq!(v["attributes"]["event"], "gates-started");
    assert_eq!(v["attributes"]["from"]["kind"], "coding");
}

/// `[events] nats_url` turns the bridge on; a NATS that is not there costs commands
/// nothing, and `status` shows the bridge's counters.
#[test]
fn an_unreachable_nats_fails_no_command_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("a");
    init(&home, "a");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!("[events]\nnats_url = \"nats://{dead}\"\n"),
    )
    .unwrap();
    let (_d, _) = start_daemon(&home, &[]);
    ok_json(&home, &["story", "add", "1_n"]);
    ok_json(&home, &["story", "event", "1_n", "deps-met"]);
    let v = wait_for(20, "the bridge reports its failure", || {
        let v = ok_json(&home, &["status"]);
        (v["events"]["failed"].as_u64()? > 0).then_some(v)
    });
    assert_eq!(v["events"]["enabled"], true);
    assert_eq!(v["events"]["connected"], false);
    assert!(v["events"]["pending"].as_u64().unwrap() >= 2, "{v}");
    let out = huskies(&home, &["status"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("events   bridge NOT connected"));
}

/// Exit code and JSON document of a `--json` command (the document may be an error).
fn json_out(home: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Two nodes with daemons syncing over WebSocket (`b` dials `a`), both alive, with
/// `stories` added by `a` and seen by `b`.
fn two_daemons(dir: &Path, stories: &[&str]) -> (PathBuf, PathBuf, Daemon, Daemon) {
    let a = dir.join("a");
    let b = dir.join("b");
    init(&a, "a");
    let (da, url_a) = start_daemon(&a, &[]);
    join(&a, &b, "b");
    let (db, _) = start_daemon(&b, &["--peer", &url_a]);
    for s in stories {
        ok_json(&a, &["story", "add", s]);
    }
    wait_for(20, "b sees a's stories and both are alive", || {
        let n = ok_json(&b, &["story", "list"])["stories"]
            .as_array()
            .unwrap()
            .len();
        let alive = |h: &Path| {
            ok_json(h, &["status"])["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["alive"] == true)
                .count()
        };
        (n == stories.len() && alive(&a) == 2 && alive(&b) == 2).then_some(())
    });
    (a, b, da, db)
}

#[test]
fn a_confirmed_claim_refuses_the_other_nodes_commands_unless_forced_and_the_loser_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, _da, _db) = two_daemons(dir.path(), &["1_s"]);
    let b_id = ok_json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    let (code, v) = json_out(&b, &["claim", "1_s", "--ttl", "600", "--wait", "10"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["confirmed"], true);
    assert_eq!(v["claim"]["confirmed"], true);
    assert_eq!(v["claim"]["node"], b_id.as_str());
    let expires = v["claim"]["expires_at"].as_str().unwrap().to_string();
    wait_for(10, "a sees b's claim", || {
        (ok_json(&a, &["story", "show", "1_s"])["claim"]["node"] == b_id.as_str()).then_some(())
    });

    // a may not move, release or remove b's story: exit 1, naming the holder and expiry.
    for args in [
        &["story", "event", "1_s", "deps-met"][..],
        &["release", "1_s"],
        &["story", "rm", "1_s"],
        &["claim", "1_s", "--wait", "2"],
    ] {
        let (code, v) = json_out(&a, args);
        assert_eq!(
            (code, v["error"]["kind"].as_str()),
            (1, Some("claim_conflict")),
            "{args:?}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&b_id) && message.contains(&expires), "{message}");
    }
    assert_eq!(ok_json(&a, &["story", "show", "1_s"])["stage"]["kind"], "backlog");

    // --force: applied, recorded in the op and shown by the history.
    ok_json(&a, &["story", "event", "1_s", "deps-met", "--force"]);
    let h = ok_json(&a, &["story", "history", "1_s"]);
    assert_eq!(h["transitions"][0]["forced_over"], b_id.as_str());
    let text = String::from_utf8(huskies(&a, &["story", "history", "1_s"]).stdout).unwrap();
    assert!(text.contains(&format!("forced over {}", &b_id[..8])), "{text}");

    // A forced release ends b's lease: b is told (status, the claim.lost event).
    ok_json(&a, &["release", "1_s", "--force"]);
    let lost = wait_for(10, "b's status shows the lost claim", || {
        let s = ok_json(&b, &["status"]);
        let lost = s["lost_claims"].as_array().unwrap().clone();
        (!lost.is_empty()).then_some(lost)
    });
    assert_eq!(lost[0]["story"], "1_s");
    let text = String::from_utf8(huskies(&b, &["status"]).stdout).unwrap();
    assert!(text.contains("LOST     claim on 1_s"), "{text}");
    let lost_events: Vec<Value> = event_lines(&b, &[])
        .into_iter()
        .filter(|e| e["type"] == "org.huskies.claim.lost")
        .collect();
    assert_eq!(lost_events.len(), 1, "{lost_events:?}");
    assert_eq!(lost_events[0]["attributes"]["node"], b_id.as_str());
}

#[test]
fn claim_wait_names_the_members_that_could_not_confirm_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, da, db) = two_daemons(dir.path(), &["1_s", "2_s"]);
    let b_id = ok_json(&b, &["id"])["node_id"].as_str().unwrap().to_string();
    // b's daemon stops: b stays alive (its last heartbeat is fresh) but cannot see claims.
    drop(db);
    let started = Instant::now();
    let (code, v) = json_out(&a, &["claim", "1_s", "--wait", "1"]);
    assert_eq!((code, v["error"]["kind"].as_str()), (3, Some("network")), "{v}");
    assert_eq!(v["error"]["unconfirmed"], serde_json::json!([b_id]));
    assert_eq!(v["claim"]["confirmed"], false);
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    let out = huskies(&a, &["claim", "1_s", "--wait", "1"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&b_id[..8]) && err.contains("not confirmed"), "{err}");
    // The claim is held all the same, unconfirmed.
    let (code, v) = json_out(&a, &["claim", "1_s", "--check"]);
    assert_eq!((code, v["confirmed"].as_bool()), (0, Some(false)), "{v}");
    // Without a daemon nothing can reach b: the answer comes at once.
    drop(da);
    let started = Instant::now();
    let (code, v) = json_out(&a, &["claim", "2_s", "--wait", "30"]);
    assert_eq!((code, v["error"]["kind"].as_str()), (3, Some("network")), "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn only_nodes_running_a_daemon_are_alive_and_a_lone_node_confirms_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    init(&a, "a");
    let nodes = ok_json(&a, &["status"])["nodes"].clone();
    assert_eq!(nodes[0]["alive"], false, "init is no heartbeat: {nodes}");
    let text = String::from_utf8(huskies(&a, &["status"]).stdout).unwrap();
    assert!(!text.contains(" alive "), "{text}");
    // Alone in its cluster (no other member alive), a claim is confirmed at once.
    ok_json(&a, &["story", "add", "1_s"]);
    let (code, v) = json_out(&a, &["claim", "1_s", "--wait", "5"]);
    assert_eq!((code, v["confirmed"].as_bool()), (0, Some(true)), "{v}");
    let (_d, _) = start_daemon(&a, &[]);
    wait_for(10, "a running daemon heartbeats", || {
        (ok_json(&a, &["status"])["nodes"][0]["alive"] == true).then_some(())
    });
}

#[test]
fn twenty_simultaneous_claim_races_have_at_most_one_confirmed_holder_each() {
    let dir = tempfile::tempdir().unwrap();
    let stories: Vec<String> = (0..20).map(|i| format!("race_{i}")).collect();
    let refs: Vec<&str> = stories.iter().map(String::as_str).collect();
    let (a, b, _da, _db) = two_daemons(dir.path(), &refs);
    let homes = [a.clone(), b.clone()];
    let ids: Vec<String> = homes
        .iter()
        .map(|h| ok_json(h, &["id"])["node_id"].as_str().unwrap().to_string())
        .collect();
    let started = Instant::now();
    let mut winners = Vec::new();
    for s in &stories {
        // Both nodes claim the story at the same moment, each through its own daemon.
        let children: Vec<Child> = homes
            .iter()
            .map(|h| {
                Command::new(bin())
                    .args([
                        "--home",
                        h.to_str().unwrap(),
                        "--json",
                        "claim",
                        s,
                        "--wait",
                        "10",
                    ])
                    .env_remove("HUSKIES_HOME")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<Output> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let codes: Vec<i32> = outs.iter().map(|o| o.status.code().unwrap_or(-1)).collect();
        let confirmed: Vec<usize> = (0..2).filter(|i| codes[*i] == 0).collect();
        assert!(
            confirmed.len() <= 1,
            "{s}: both nodes were told their claim is confirmed: {outs:?}"
        );
        for (i, o) in outs.iter().enumerate() {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            match codes[i] {
                0 => {
                    assert_eq!(v["confirmed"], true, "{v}");
                    assert_eq!(v["claim"]["node"], ids[i].as_str(), "{v}");
                }
                1 => assert_eq!(v["error"]["kind"], "claim_conflict", "{v}"),
                c => panic!("{s}: node {i} exit {c}: {v}"),
            }
        }
        assert_eq!(confirmed.len(), 1, "{s}: one of them wins: {codes:?}");
        let w = confirmed[0];
        // Each node then tries to move the story, as an agent would; only the holder may.
        for (i, h) in homes.iter().enumerate() {
            let (code, v) = json_out(h, &["story", "event", s, "deps-met"]);
            if i == w {
                assert_eq!(code, 0, "{s}: the holder moves it: {v}");
            } else {
                assert_eq!(
                    (code, v["error"]["kind"].as_str()),
                    (1, Some("claim_conflict")),
                    "{s}: {v}"
                );
            }
        }
        winners.push(w);
    }
    // Both nodes agree on every holder, and every transition was made by it.
    for (s, w) in stories.iter().zip(&winners) {
        for h in &homes {
            wait_for(10, "the nodes agree", || {
                let story = ok_json(h, &["story", "show", s]);
                (story["claim"]["node"] == ids[*w].as_str() && story["stage"]["kind"] == "coding")
                    .then_some(())
            });
            let history = ok_json(h, &["story", "history", s]);
            for t in history["transitions"].as_array().unwrap() {
                assert_eq!(
                    t["author"],
                    ids[*w].as_str(),
                    "{s}: a non-holder's event applied: {t}"
                );
            }
        }
    }
    eprintln!(
        "20 races in {:?}; node a won {}",
        started.elapsed(),
        winners.iter().filter(|w| **w == 0).count()
    );
}

#[test]
fn an_agent_stops_its_command_at_once_when_its_claim_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path().join("rdv");
    init(&r, "rdv");
    let (_dr, url) = start_daemon(&r, &[]);
    ok_json(&r, &["story", "add", "long"]);
    ok_json(&r, &["story", "event", "long", "deps-met"]);
    let marker = dir.path().join("marker");
    let script = format!(
        "echo started > {m}; trap 'echo stopped >> {m}; exit 1' TERM; sleep 60 & wait",
        m = marker.display()
    );
    let home = dir.path().join("w1");
    join(&r, &home, "w1");
    let child = Command::new(bin())
        .args([
            "--home",
            home.to_str().unwrap(),
            "agent",
            "--rendezvous",
            &url,
            "--exec",
            &script,
        ])
        .args(["--ttl", "60", "--scan-interval-ms", "200", "--settle-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _agent = Daemon { child, home };
    wait_for(30, "the agent's command runs", || marker.exists().then_some(()));
    // The story is taken away: moved out of coding and the agent's claim ended, by force.
    ok_json(
        &r,
        &["story", "event", "long", "block", "--reason", "stop", "--force"],
    );
    ok_json(&r, &["release", "long", "--force"]);
    let stopped_at = Instant::now();
    wait_for(10, "the command is stopped", || {
        std::fs::read_to_string(&marker)
            .unwrap()
            .contains("stopped")
            .then_some(())
    });
    assert!(stopped_at.elapsed() < Duration::from_secs(5), "stopped at once");
}
