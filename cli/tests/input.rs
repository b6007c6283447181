//! End-to-end tests of what the `huskies` binary does with bad input and with backups:
//! import that reports rejections honestly, damaged bundles refused whole, backup and
//! restore (`init --restore`), `inspect` with no home, the local validation rules, and the
//! messages of usage errors, an empty `HUSKIES_HOME` and a damaged store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Runs the binary in `cwd` with `HUSKIES_HOME` unset, plus `env`.
fn run_in(cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_huskies"));
    cmd.current_dir(cwd).args(args).env_remove("HUSKIES_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs huskies")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `huskies --json --home HOME ARGS`: the exit code and the JSON document on stdout.
fn hj(home: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json", "--home", home.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run_in(home.parent().unwrap(), &[], &all);
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap(), v)
}

fn ok(home: &Path, args: &[&str]) -> Value {
    let (code, v) = hj(home, args);
    assert_eq!(code, 0, "{args:?}: {v}");
    v
}

/// A refusal: its exit code and kind; returns the message.
fn refused(home: &Path, args: &[&str], code: i32, kind: &str) -> String {
    let (got, v) = hj(home, args);
    assert_eq!(
        (got, v["error"]["kind"].as_str()),
        (code, Some(kind)),
        "{args:?}: {v}"
    );
    v["error"]["message"].as_str().unwrap().to_string()
}

fn new_home(dir: &Path, name: &str, cluster: &str) -> PathBuf {
    let home = dir.join(name);
    ok(&home, &["init", "--cluster-name", cluster, "--label", name]);
    home
}

fn add(home: &Path, id: &str) {
    ok(home, &["story", "add", id]);
}

/// The ids and stage kinds of a home's stories.
fn stories(home: &Path) -> Vec<(String, String)> {
    ok(home, &["story", "list"])["stories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["stage"]["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// `file` with one byte flipped `back` bytes before its end (inside the last op).
fn flipped(file: &Path, back: usize) -> PathBuf {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() - back;
    bytes[at] ^= 0x01;
    let out = file.with_extension("flipped.hsk");
    std::fs::write(&out, bytes).unwrap();
    out
}

fn export(home: &Path, file: &Path) {
    ok(home, &["export", "--out", file.to_str().unwrap()]);
}

#[test]
fn import_of_another_clusters_bundle_fails_and_counts_each_reason_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_home(dir.path(), "a", "acme");
    let b = new_home(dir.path(), "b", "other");
    for id in ["s1", "s2", "s3"] {
        add(&b, id);
    }
    let file = dir.path().join("b.hsk");
    export(&b, &file);
    let ops = ok(&b, &["log"])["ops"].as_array().unwrap().len();

    let (code, v) = hj(&a, &["import", file.to_str().unwrap()]);
    assert_eq!(code, 1, "any rejected op fails the import: {v}");
    assert_eq!(v["ok"], false);
    assert_eq!(v["applied"], 0);
    let rejected = v["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), ops, "the exact rejections stay: {v}");
    assert!(rejected
        .iter()
        .all(|r| r["op_id"].is_string() && r["seq"].is_u64()));
    let reasons = v["rejected_reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{v}");
    assert_eq!(reasons[0]["code"], "wrong_cluster");
    assert_eq!(reasons[0]["count"], ops);
    assert_eq!(reasons[0]["reason"], rejected[0]["reason"]);

    // Human output: one line with the count, not one per op.
    let out = run_in(dir.path(), &[], &["--home", "a", "import", "b.hsk"]);
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert_eq!(shown.matches("rejected: ").count(), 1, "{shown}");
    assert!(
        shown.contains(&format!("rejected: {ops} \u{d7} op is for cluster")),
        "{shown}"
    );
}

#[test]
fn a_bundle_with_a_flipped_byte_is_refused_whole_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_home(dir.path(), "a", "acme");
    let base = dir.path().join("base.hsk");
    export(&a, &base);
    let copy = dir.path().join("copy");
    ok(&copy, &["init", "--restore", base.to_str().unwrap()]);
    for id in ["s1", "s2", "s3"] {
        add(&a, id);
    }
    let file = dir.path().join("later.hsk");
    export(&a, &file);
    let damaged = flipped(&file, 10);

    let message = refused(
        &copy,
        &["import", damaged.to_str().unwrap()],
        2,
        "invalid_argument",
    );
    assert!(message.contains("damaged"), "{message}");
    assert!(message.contains("nothing was imported"), "{message}");
    assert!(
        stories(&copy).is_empty(),
        "not one op of the damaged file was stored"
    );
    let v = ok(&copy, &["import", file.to_str().unwrap()]);
    assert_eq!(v["ok"], true, "the intact file imports: {v}");
    assert_eq!(stories(&copy).len(), 3);
}

#[test]
fn backup_and_restore_into_a_new_home_and_into_the_nodes_own_home() {
    let dir = tempfile::tempdir().unwrap();
    let home = new_home(dir.path(), "node", "acme");
    add(&home, "s1");
    ok(&home, &["story", "add", "s2", "--depends-on", "s1"]);
    ok(&home, &["story", "event", "s2", "deps-met"]);
    let before = stories(&home);
    let me = ok(&home, &["id"]);

    // As in the README's "Common commands": a backup, restored into another home.
    let out = run_in(
        dir.path(),
        &[],
        &["--home", "node", "export", "--out", "backup.hsk"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run_in(
        dir.path(),
        &[],
        &["--home", "other", "init", "--restore", "backup.hsk"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let other = dir.path().join("other");
    assert_eq!(stories(&other), before);
    let id = ok(&other, &["id"]);
    assert_eq!(id["cluster_id"], me["cluster_id"]);
    assert_ne!(id["node_id"], me["node_id"], "a new key");
    assert_eq!(ok(&other, &["verify"])["ok"], true);
    // Not a member: it reads, it does not write.
    let (code, v) = hj(&other, &["story", "add", "s9"]);
    assert_ne!(code, 0, "{v}");

    // Disk loss: the node key was kept apart; the home is gone.
    let kept = dir.path().join("kept.key");
    std::fs::copy(home.join("node.key"), &kept).unwrap();
    std::fs::remove_dir_all(&home).unwrap();
    // `hj` runs in the homes' directory, where the backup and the key are.
    let restore = ["init", "--restore", "backup.hsk", "--key", "kept.key"];
    let v = ok(&home, &restore);
    assert_eq!(v["node_id"], me["node_id"], "the node itself again: {v}");
    assert_eq!(v["restored"]["member"], true);
    assert_eq!(stories(&home), before);
    add(&home, "s3");
    assert_eq!(ok(&home, &["verify"])["ok"], true);
    let out = run_in(dir.path(), &[], &[&["--home", "again"][..], &restore].concat());
    assert!(
        text(&out).contains("sync"),
        "the restore says to sync first: {}",
        text(&out)
    );

    // All or nothing: a key that is not a member's, or a damaged file, leaves no home.
    new_home(dir.path(), "stranger", "elsewhere");
    let lost = dir.path().join("lost");
    let wrong_key = ["init", "--restore", "backup.hsk", "--key", "stranger/node.key"];
    let message = refused(&lost, &wrong_key, 2, "invalid_argument");
    assert!(message.contains("not a member"), "{message}");
    assert!(!lost.exists(), "the half-made home is removed");
    let damaged = flipped(&dir.path().join("backup.hsk"), 10);
    let message = refused(
        &lost,
        &["init", "--restore", damaged.to_str().unwrap()],
        2,
        "invalid_argument",
    );
    assert!(message.contains("damaged"), "{message}");
    assert!(!lost.exists());
    // --key needs --restore.
    let out = run_in(dir.path(), &[], &["--home", "x", "init", "--key", "kept.key"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn inspect_verifies_a_bundle_and_shows_it_with_no_home() {
    let dir = tempfile::tempdir().unwrap();
    let a = new_home(dir.path(), "a", "acme");
    add(&a, "s1");
    ok(&a, &["story", "event", "s1", "deps-met"]);
    let file = dir.path().join("a.hsk");
    export(&a, &file);
    let ops = ok(&a, &["log"])["ops"].as_array().unwrap().len();

    // A directory with no home anywhere above it.
    let elsewhere = tempfile::tempdir().unwrap();
    let path = file.to_str().unwrap();
    let out = run_in(elsewhere.path(), &[], &["--json", "inspect", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["ops"], ops);
    assert_eq!(v["applied"], ops);
    assert_eq!(v["cluster_name"], "acme");
    assert_eq!(v["cluster_id"], ok(&a, &["id"])["cluster_id"]);
    assert_eq!(v["verify"]["ok"], true);
    assert_eq!(v["members"].as_array().unwrap().len(), 1);
    let s1 = &v["stories"][0];
    assert_eq!(s1["id"], "s1");
    assert_eq!(s1["stage"]["kind"], "coding");
    assert_eq!(s1["history"][0]["event"], "deps-met");
    let entries: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(entries.is_empty(), "inspect writes nothing: {entries:?}");
    let out = run_in(elsewhere.path(), &[], &["inspect", path]);
    assert!(text(&out).contains("s1"), "{}", text(&out));

    // Damaged: refused. Another cluster's ops appended: not ok, exit 1.
    let damaged = flipped(&file, 10);
    let out = run_in(
        elsewhere.path(),
        &[],
        &["--json", "inspect", damaged.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("damaged"), "{}", text(&out));
    let b = new_home(dir.path(), "b", "other");
    add(&b, "t1");
    let other = dir.path().join("b.hsk");
    export(&b, &other);
    let mut both = std::fs::read(&file).unwrap();
    both.extend(std::fs::read(&other).unwrap());
    let mixed = dir.path().join("mixed.hsk");
    std::fs::write(&mixed, both).unwrap();
    let out = run_in(
        elsewhere.path(),
        &[],
        &["--json", "inspect", mixed.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["rejected_reasons"][0]["code"], "wrong_cluster", "{v}");
}

#[test]
fn local_commands_refuse_what_makes_no_sense() {
    let dir = tempfile::tempdir().unwrap();
    let h = new_home(dir.path(), "h", "acme");
    add(&h, "s1");
    add(&h, "m1");
    ok(&h, &["story", "event", "m1", "deps-met"]);
    ok(
        &h,
        &[
            "story",
            "event",
            "m1",
            "qa-skipped",
            "--branch",
            "f/m1",
            "--commits",
            "1",
        ],
    );

    let m = refused(
        &h,
        &["story", "add", "s2", "--depends-on", "s2"],
        2,
        "invalid_argument",
    );
    assert!(m.contains("itself"), "{m}");
    let m = refused(
        &h,
        &["story", "event", "s1", "supersede", "--by", "nope"],
        1,
        "not_found",
    );
    assert!(m.contains("nope"), "{m}");
    refused(
        &h,
        &["story", "event", "s1", "supersede", "--by", "s1"],
        2,
        "invalid_argument",
    );
    let m = refused(
        &h,
        &[
            "story",
            "event",
            "m1",
            "merge-conflict",
            "--kind",
            "bogus",
            "--reason",
            "x",
        ],
        2,
        "invalid_argument",
    );
    assert!(m.contains("kinds are: conflict, hook"), "{m}");
    for id in [".", "..", "-x"] {
        let m = refused(&h, &["story", "add", "--", id], 2, "invalid_argument");
        assert!(m.contains("must start with a letter or a digit"), "{id}: {m}");
    }
    refused(&h, &["story", "event", "s1", "block"], 2, "invalid_argument");
    let m = refused(
        &h,
        &["story", "event", "s1", "block", "--reason", " "],
        2,
        "invalid_argument",
    );
    assert!(m.contains("needs a reason"), "{m}");
    refused(
        &h,
        &["story", "event", "m1", "merge-failed-final"],
        2,
        "invalid_argument",
    );
    // Nothing of that was written.
    assert_eq!(
        stories(&h),
        vec![("m1".into(), "merge".into()), ("s1".into(), "backlog".into())]
    );

    // The allowed kinds and the id grammar are in --help.
    let out = run_in(dir.path(), &[], &["story", "event", "--help"]);
    let help = text(&out);
    for kind in ["conflict", "hook", "gates", "push", "other"] {
        assert!(help.contains(kind), "{kind}: {help}");
    }
    let out = run_in(dir.path(), &[], &["story", "add", "--help"]);
    assert!(text(&out).contains("a letter or digit"), "{}", text(&out));

    // An invalid transition names the events allowed from the current stage.
    let m = refused(&h, &["story", "event", "s1", "accepted"], 1, "invalid_transition");
    assert!(
        m.ends_with("events allowed from it: deps-met, block, abandon, supersede, review-hold"),
        "{m}"
    );
}

#[test]
fn usage_errors_in_json_name_the_missing_argument() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &[], &["--json", "import"]);
    assert_eq!(out.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_argument");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("not provided: <FILE>"), "{m}");
    assert!(m.contains("usage: huskies import <FILE>"), "{m}");
    let out = run_in(dir.path(), &[], &["--json", "story", "event", "s1"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("<EVENT>"), "{v}");
}

#[test]
fn an_empty_huskies_home_counts_as_unset() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(
        dir.path(),
        &[("HUSKIES_HOME", "")],
        &["--json", "init", "--cluster-name", "e"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        dir.path().join(".huskies/node.key").exists(),
        "init used ./.huskies"
    );
    let out = run_in(dir.path(), &[("HUSKIES_HOME", "")], &["--json", "story", "list"]);
    assert!(out.status.success(), "found ./.huskies: {}", text(&out));
}

#[test]
fn a_damaged_store_says_which_and_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let h = new_home(dir.path(), "h", "acme");
    add(&h, "s1");
    let conf = h.join("store").join("conf");
    let mut bytes = std::fs::read(&conf).unwrap();
    for b in bytes.iter_mut().take(8) {
        *b ^= 0x5a;
    }
    std::fs::write(&conf, bytes).unwrap();
    let m = refused(&h, &["story", "list"], 3, "corrupt");
    assert!(
        m.contains(&h.join("store").display().to_string()),
        "names the store: {m}"
    );
    assert!(!m.contains("None"), "{m}");
    assert!(m.contains("huskies verify") && m.contains("--restore"), "{m}");
}

/// The README's "Backup and restore" block runs as written, with `huskies` on the PATH.
#[test]
fn the_readme_backup_and_restore_block_runs_as_written() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Backup and restore")
        .nth(1)
        .expect("the README has a backup section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a sh block");
    assert!(block.contains("--restore backup.hsk --key kept.key"), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_huskies")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new("sh")
        .args(["-e", "-c", block])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("HUSKIES_HOME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(dir.path().join("node/node.key").exists());
}
