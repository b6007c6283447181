//! End-to-end tests of the `huskies` binary, run as a user would: temporary homes, real
//! stores, checking stdout JSON, stderr messages and exit codes of the contract.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn huskies(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_huskies"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("HUSKIES_HOME")
        .output()
        .expect("runs huskies")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn ok_json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    assert!(
        out.status.success(),
        "huskies {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)
}

fn err_json(home: &Path, args: &[&str], code: i32, kind: &str) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    assert_eq!(
        out.status.code(),
        Some(code),
        "huskies {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["error"]["kind"], kind, "{v}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "a human message on stderr"
    );
    v
}

fn init(dir: &Path) -> std::path::PathBuf {
    let home = dir.join("home");
    let v = ok_json(&home, &["init", "--cluster-name", "acme", "--label", "n1"]);
    assert_eq!(v["label"], "n1");
    home
}

#[test]
fn init_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let id = ok_json(&home, &["id"]);
    for key in ["node_id", "cluster_id"] {
        let s = id[key].as_str().unwrap();
        assert_eq!(s.len(), 64);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
    assert_eq!(id["label"], "n1");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    err_json(&home, &["init"], 1, "already_exists");
}

#[test]
fn story_lifecycle_through_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let s = ok_json(&home, &["story", "add", "42_fix_login", "--name", "Fix login"]);
    assert_eq!(s["id"], "42_fix_login");
    assert_eq!(s["stage"]["kind"], "backlog");
    assert_eq!(s["claim"], Value::Null);
    assert_eq!(s["deleted"], false);
    assert_eq!(s["conflicts"], serde_json::json!([]));
    ok_json(&home, &["story", "event", "42_fix_login", "deps-met"]);
    let c = ok_json(&home, &["claim", "42_fix_login", "--ttl", "900"]);
    assert_eq!(c["claim"]["node"], ok_json(&home, &["id"])["node_id"]);
    ok_json(&home, &["story", "event", "42_fix_login", "gates-started"]);
    ok_json(
        &home,
        &[
            "story",
            "event",
            "42_fix_login",
            "gates-failed",
            "--reason",
            "lint",
        ],
    );
    ok_json(&home, &["story", "event", "42_fix_login", "gates-started"]);
    let m = ok_json(
        &home,
        &[
            "story",
            "event",
            "42_fix_login",
            "gates-passed",
            "--branch",
            "feature/42",
            "--commits",
            "3",
        ],
    );
    assert_eq!(
        m["stage"],
        serde_json::json!({"kind": "merge", "feature_branch": "feature/42", "commits_ahead": 3})
    );
    let f = ok_json(
        &home,
        &[
            "story",
            "event",
            "42_fix_login",
            "merge-conflict",
            "--kind",
            "conflict",
            "--reason",
            "a.rs",
        ],
    );
    assert_eq!(f["stage"]["kind"], "merge_failure");
    assert_eq!(f["stage"]["failure_kind"], "conflict");
    ok_json(
        &home,
        &[
            "story",
            "event",
            "42_fix_login",
            "gates-passed",
            "--branch",
            "feature/42",
            "--commits",
            "4",
        ],
    );
    let d = ok_json(
        &home,
        &[
            "story",
            "event",
            "42_fix_login",
            "merge-succeeded",
            "--commit",
            "abc123",
        ],
    );
    assert_eq!(d["stage"]["kind"], "done");
    assert_eq!(d["stage"]["merge_commit"], "abc123");
    assert!(d["stage"]["merged_at"].as_str().unwrap().ends_with('Z'));
    let a = ok_json(&home, &["story", "event", "42_fix_login", "accepted"]);
    assert_eq!(a["stage"]["kind"], "archived");
    assert_eq!(a["stage"]["reason"]["kind"], "completed");

    let h = ok_json(&home, &["story", "history", "42_fix_login"]);
    let t = h["transitions"].as_array().unwrap();
    assert_eq!(t.len(), 9);
    assert_eq!(t[0]["from"], "backlog");
    assert_eq!(t[0]["to"], "coding");
    assert_eq!(t[0]["event"], "deps-met");
    for key in ["op_id", "author", "lamport", "conflict"] {
        assert!(t[0].get(key).is_some(), "{key}");
    }

    let log = ok_json(&home, &["log"]);
    let ops = log["ops"].as_array().unwrap();
    assert!(ops.len() >= 12);
    for key in ["op_id", "author", "seq", "lamport", "kind", "story"] {
        assert!(ops[0].get(key).is_some(), "{key}");
    }
    let v = ok_json(&home, &["verify"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["ops_checked"].as_u64().unwrap(), ops.len() as u64);
}

#[test]
fn errors_have_kinds_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok_json(&home, &["story", "add", "1_a"]);
    err_json(&home, &["story", "add", "1_a"], 1, "already_exists");
    err_json(&home, &["story", "show", "nope"], 1, "not_found");
    let e = err_json(
        &home,
        &["story", "event", "1_a", "accepted"],
        1,
        "invalid_transition",
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("backlog"));
    err_json(
        &home,
        &["story", "event", "1_a", "teleport"],
        2,
        "invalid_argument",
    );
    err_json(&home, &["story", "add", "bad id"], 2, "invalid_argument");
    err_json(
        &home,
        &["story", "event", "1_a", "gates-passed"],
        2,
        "invalid_argument",
    );
    err_json(
        &home,
        &["story", "list", "--stage", "limbo"],
        2,
        "invalid_argument",
    );
    err_json(&home, &["release", "1_a"], 1, "not_found");
    err_json(
        &dir.path().join("absent"),
        &["story", "list"],
        3,
        "home_not_found",
    );
    // An unknown flag is a usage error, as JSON too.
    err_json(&home, &["story", "list", "--bogus"], 2, "invalid_argument");
    // The invalid transition wrote nothing.
    let log = ok_json(&home, &["log"]);
    assert_eq!(log["ops"].as_array().unwrap().len(), 3);
}

#[test]
fn a_locked_home_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    let _owner = huskies_core::Node::open(&home, huskies_core::NodeConfig::default()).unwrap();
    err_json(&home, &["story", "list"], 3, "home_locked");
}

#[test]
fn list_filters_by_stage_and_rm_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    for id in ["b_2", "a_1", "c_3"] {
        ok_json(&home, &["story", "add", id]);
    }
    ok_json(&home, &["story", "event", "a_1", "deps-met"]);
    let all = ok_json(&home, &["story", "list"]);
    let ids: Vec<&str> = all["stories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a_1", "b_2", "c_3"]);
    let coding = ok_json(&home, &["story", "list", "--stage", "coding"]);
    assert_eq!(coding["stories"].as_array().unwrap().len(), 1);
    ok_json(&home, &["story", "rm", "b_2"]);
    let shown = ok_json(&home, &["story", "show", "b_2"]);
    assert_eq!(shown["deleted"], true);
    let all = ok_json(&home, &["story", "list"]);
    assert_eq!(all["stories"].as_array().unwrap().len(), 2);
    let status = ok_json(&home, &["status"]);
    assert_eq!(status["stages"]["coding"], 1);
    assert_eq!(status["stages"]["backlog"], 1);
}

/// A `store/` replaced by an older copy (what sled's recovery from a damaged log also
/// leaves): `status` shows the gap in the node's own chain and writes are refused with the
/// contract's `corrupt` error, so the node cannot reuse a sequence number.
#[test]
fn a_store_that_lost_acknowledged_ops_is_reported_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok_json(&home, &["story", "add", "1_a"]);
    let own_ops = |status: &Value| {
        let id = status["node_id"].as_str().unwrap().to_string();
        status["version_vector"][id].as_u64().unwrap()
    };
    let held = own_ops(&ok_json(&home, &["status"]));
    let old = dir.path().join("store_old");
    copy_dir(&home.join("store"), &old);
    ok_json(&home, &["story", "add", "2_b"]);
    ok_json(&home, &["story", "add", "3_c"]);
    let status = ok_json(&home, &["status"]);
    assert_eq!(status["own_ops_missing"], Value::Null);
    let acknowledged = own_ops(&status);
    assert_eq!(acknowledged, held + 2);
    std::fs::remove_dir_all(home.join("store")).unwrap();
    copy_dir(&old, &home.join("store"));
    let status = ok_json(&home, &["status"]);
    assert_eq!(status["own_ops_missing"]["held"], held, "{status}");
    assert_eq!(
        status["own_ops_missing"]["acknowledged"], acknowledged,
        "{status}"
    );
    let text = huskies(&home, &["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("WARNING"));
    let err = err_json(&home, &["story", "add", "4_d"], 3, "corrupt");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("will not write"),
        "{err}"
    );
    // Reads still work.
    let shown = ok_json(&home, &["story", "show", "1_a"]);
    assert_eq!(shown["id"], "1_a");
}

/// Copies a closed directory tree (`cp -R`).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-R")
        .arg(from)
        .arg(to)
        .status()
        .expect("runs cp");
    assert!(status.success(), "cp -R {} {}", from.display(), to.display());
}

#[test]
fn export_and_import_move_signed_ops() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path());
    ok_json(&home, &["story", "add", "1_a"]);
    let file = dir.path().join("ops.hsk");
    let e = ok_json(&home, &["export", "--out", file.to_str().unwrap()]);
    assert_eq!(e["ops"], 3);
    // Importing into the same node: everything is already held.
    let i = ok_json(&home, &["import", file.to_str().unwrap()]);
    assert_eq!(i["applied"], 0);
    assert_eq!(i["duplicates"], 3);
    // A corrupt file is refused with a clear error and changes nothing.
    std::fs::write(&file, b"not a bundle").unwrap();
    err_json(&home, &["import", file.to_str().unwrap()], 2, "invalid_argument");
    // A node of another cluster rejects the ops as foreign.
    let other = dir.path().join("other");
    ok_json(&other, &["init", "--cluster-name", "other"]);
    let good = dir.path().join("good.hsk");
    ok_json(&home, &["export", "--out", good.to_str().unwrap()]);
    // ... and exits 1: an import that rejected ops did not do its job.
    let out = huskies(&other, &["--json", "import", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let i = json(&out);
    assert_eq!(i["applied"], 0);
    assert_eq!(i["rejected"].as_array().unwrap().len(), 3);
    assert!(i["rejected"][0]["reason"].as_str().unwrap().contains("cluster"));
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        vec!["init"],
        vec!["id"],
        vec!["story", "add"],
        vec!["story", "show"],
        vec!["story", "list"],
        vec!["story", "event"],
        vec!["story", "history"],
        vec!["story", "rm"],
        vec!["claim"],
        vec!["release"],
        vec!["log"],
        vec!["verify"],
        vec!["status"],
        vec!["member", "list"],
        vec!["key", "rotate"],
        vec!["export"],
        vec!["import"],
        vec!["demo"],
        vec!["bench"],
        vec!["daemon"],
        vec!["agent"],
        vec!["ticket", "create"],
        vec!["member", "remove"],
        vec!["completions"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = huskies(dir.path(), &args);
        assert!(out.status.success(), "{cmd:?} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Example"), "{cmd:?} --help has an example:\n{text}");
    }
}

#[test]
fn demo_runs_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_huskies"))
        .arg("demo")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("everything converged"), "{text}");
    assert!(text.contains("every store verifies"));
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary homes removed"
    );
}

/// The sync phase of `huskies bench` runs each side in a child process of the binary
/// (`--sync-child`), and reports each side's peak memory beside the bench's own.
#[test]
fn bench_runs_the_sync_sides_in_child_processes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_huskies"))
        .args(["bench", "--json", "--ops", "600", "--interactive-ops", "0"])
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["sync_ops_per_s"].as_f64().unwrap() > 0.0, "{v}");
    // Everything the source held: 600 workload ops, genesis, the admission, and a few
    // presence ops of the daemon and the joining node.
    let sent = v["sync_ops_sent"].as_u64().unwrap();
    assert!((602..650).contains(&sent), "{v}");
    if cfg!(target_os = "linux") {
        for key in ["catchup_peak_rss_mb", "sync_serve_peak_rss_mb", "peak_rss_mb"] {
            let mb = v[key].as_f64().unwrap_or_else(|| panic!("{key} in {v}"));
            assert!(mb > 1.0 && mb < 4096.0, "{key} = {mb}");
        }
    }
    // The children cleaned up: only the bench's own (removed) temporary directory was there.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
