//! Human output through the built binary: fields from ops escaped in every view, the story
//! list's table and order, conflicts, colour, `demo --json`/`--quiet`, closed pipes,
//! completions. JSON output stays exact.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use huskies_core::rand_core::OsRng;
use huskies_core::{
    Command as Cmd, ExecutionEvent, InitMode, Node, NodeConfig, PipelineEvent, Role, StoryId, Timestamp,
};
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_huskies"));
    c.env_remove("HUSKIES_HOME").env_remove("NO_COLOR");
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("runs huskies")
}

fn ok(home: &Path, args: &[&str]) -> Output {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "huskies {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(home: &Path, args: &[&str]) -> String {
    String::from_utf8(ok(home, args).stdout).expect("utf-8")
}

fn json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&ok(home, &all).stdout).expect("one JSON document")
}

fn init(dir: &Path, label: &str) -> PathBuf {
    let home = dir.join("home");
    ok(&home, &["init", "--cluster-name", "acme", "--label", label]);
    home
}

/// No character that could move the cursor, draw a fake line, recolour or reorder text:
/// only printable text and the line breaks of the layout itself.
fn assert_inert(what: &str, out: &str) {
    for c in out.chars() {
        let bad = (c.is_control() && c != '\n')
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        assert!(!bad, "{what}: a raw {:?} in human output:\n{out}", c);
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(std::time::SystemTime::now())
}

const FAKE_ROW: &str = "Fix\n99_prod_deploy   done (abc at 2026-01-01)";
const CLEAR: &str = "stuck \u{1b}[2J\u{1b}[H";

#[test]
fn fields_from_ops_are_escaped_in_every_human_view_and_exact_in_json() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "n1\u{1b}]0;owned\u{7}\r\u{9b}2J\u{202e}");
    let body = dir.path().join("body.txt");
    std::fs::write(&body, "first line\n\u{1b}[2Jsecond\u{7f} line\u{85}").unwrap();
    ok(
        &home,
        &[
            "story",
            "add",
            "1_evil",
            "--name",
            FAKE_ROW,
            "--body-file",
            body.to_str().unwrap(),
        ],
    );
    ok(&home, &["story", "add", "2_blocked", "--name", "tab\there"]);
    ok(
        &home,
        &["story", "event", "2_blocked", "block", "--reason", CLEAR],
    );
    ok(&home, &["story", "event", "1_evil", "deps-met"]);
    ok(&home, &["claim", "1_evil"]);
    ok(&home, &["story", "event", "1_evil", "gates-started"]);
    ok(
        &home,
        &[
            "story",
            "event",
            "1_evil",
            "gates-passed",
            "--branch",
            "feat\u{1b}[31m/x\n",
            "--commits",
            "1",
        ],
    );
    ok(
        &home,
        &[
            "story",
            "event",
            "1_evil",
            "merge-conflict",
            "--kind",
            "other",
            "--reason",
            CLEAR,
        ],
    );
    {
        // An execution state with an agent name from an op (no CLI command writes one).
        let mut node = Node::open(&home, NodeConfig::default()).unwrap();
        let id = StoryId::new("1_evil").unwrap();
        node.execute(
            now(),
            Cmd::Execution {
                id,
                event: ExecutionEvent::SpawnRequested {
                    agent: "agent\u{1b}[2J\nx".into(),
                },
            },
        )
        .unwrap();
    }

    let list = text(&home, &["story", "list"]);
    assert_inert("story list", &list);
    assert_eq!(
        list.lines().count(),
        3,
        "a header and one line per story:\n{list}"
    );
    assert!(list.contains("Fix\\n99_prod_deploy"), "{list}");
    for args in [
        vec!["story", "show", "1_evil"],
        vec!["story", "show", "2_blocked"],
        vec!["story", "history", "1_evil"],
        vec!["story", "history", "2_blocked"],
        vec!["story", "list", "--stage", "archived"],
        vec!["status"],
        vec!["member", "list"],
        vec!["log"],
        vec!["events"],
        vec!["id"],
        vec!["verify"],
    ] {
        let out = text(&home, &args);
        assert_inert(&args.join(" "), &out);
    }
    let show = text(&home, &["story", "show", "1_evil"]);
    assert!(show.contains("\\x1b[2J"), "ESC is shown as \\x1b:\n{show}");
    assert!(
        show.contains("agent\\x1b[2J\\nx"),
        "the agent's name, escaped:\n{show}"
    );
    assert!(show.contains("  | \\x1b[2Jsecond\\x7f line\\u{85}"), "{show}");
    assert!(text(&home, &["status"]).contains("n1\\x1b]0;owned\\x07\\r\\u{9b}2J\\u{202e}"));
    assert!(text(&home, &["member", "list"]).contains("n1\\x1b]0;owned"));

    // JSON carries exactly what was written.
    let s = json(&home, &["story", "show", "1_evil"]);
    assert_eq!(s["name"], FAKE_ROW);
    assert_eq!(s["stage"]["reason"], CLEAR);
    assert_eq!(s["stage"]["failure_kind"], "other");
    assert_eq!(s["body"], "first line\n\u{1b}[2Jsecond\u{7f} line\u{85}");
    let b = json(&home, &["story", "show", "2_blocked"]);
    assert_eq!(b["stage"]["reason"]["reason"], CLEAR);
}

/// Two nodes of one cluster move `id` out of the backlog at once: A's home then holds a
/// story with a conflict. Returns B's short id.
fn concurrent_moves(home: &Path, dir: &Path, id: &str) -> String {
    let mut a = Node::open(home, NodeConfig::default()).unwrap();
    let mut b = Node::init(
        &dir.join("b"),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap();
    a.execute(now(), Cmd::add_member(b.node_id(), Role::Member))
        .unwrap();
    let sid = StoryId::new(id).unwrap();
    a.execute(now(), Cmd::add_story(sid.clone(), "Raced")).unwrap();
    let send = |from: &Node, to: &mut Node| {
        let bundle = from.export_since(&to.version_vector()).unwrap();
        let report = to.ingest_bundle(&bundle).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
    };
    send(&a, &mut b);
    a.execute(now(), Cmd::event(sid.clone(), PipelineEvent::DepsMet))
        .unwrap();
    b.execute(now(), Cmd::event(sid.clone(), PipelineEvent::Abandon))
        .unwrap();
    send(&b, &mut a);
    assert!(
        !a.story(&sid, now()).unwrap().conflicts.is_empty(),
        "a conflict was made"
    );
    b.node_id().short().to_string()
}

#[test]
fn story_list_has_a_header_natural_order_aligned_columns_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "n1");
    assert_eq!(text(&home, &["story", "list"]), "no stories\n");
    assert_eq!(
        text(&home, &["story", "list", "--stage", "coding"]),
        "no stories in stage coding\n"
    );
    assert_eq!(
        text(&home, &["story", "list", "--conflicts"]),
        "no stories with conflicts\n"
    );

    for id in ["10_ok", "1_alpha", "2_beta", "100_wide_identifier_of_a_story_x"] {
        ok(&home, &["story", "add", id, "--name", &format!("name of {id}")]);
    }
    ok(&home, &["story", "event", "2_beta", "deps-met"]);
    let branch = format!("feature/{}", "long-branch-name-".repeat(4));
    ok(
        &home,
        &[
            "story",
            "event",
            "2_beta",
            "qa-skipped",
            "--branch",
            &branch,
            "--commits",
            "2",
        ],
    );
    let b_short = concurrent_moves(&home, dir.path(), "5_race");

    let ids = |v: &Value| -> Vec<String> {
        v["stories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all = json(&home, &["story", "list"]);
    assert_eq!(
        ids(&all),
        [
            "1_alpha",
            "2_beta",
            "5_race",
            "10_ok",
            "100_wide_identifier_of_a_story_x"
        ]
    );

    let list = text(&home, &["story", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert!(lines[0].starts_with("ID "), "a header:\n{list}");
    let row_ids: Vec<&str> = lines[1..].iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(row_ids, ids(&all), "the same natural order:\n{list}");
    // Every row's name starts in the header's NAME column, whatever the stage text's length.
    // Columns are counted in characters (the terminal's cells; all narrow here).
    let col = |line: &str, what: &str| line.find(what).map(|i| line[..i].chars().count());
    let name_col = col(lines[0], "NAME").expect("a NAME column");
    for (line, id) in lines[1..].iter().zip(ids(&all)) {
        let name = if id == "5_race" {
            "Raced".to_string()
        } else {
            format!("name of {id}")
        };
        assert_eq!(col(line, &name), Some(name_col), "aligned:\n{list}");
    }
    let race = lines.iter().find(|l| l.starts_with("5_race")).unwrap();
    let conflict_col = col(lines[0], "CONFLICTS").unwrap();
    assert_eq!(col(race, "! 1"), Some(conflict_col), "conflict marked:\n{list}");

    let only = json(&home, &["story", "list", "--conflicts"]);
    assert_eq!(ids(&only), ["5_race"]);
    let only_text = text(&home, &["story", "list", "--conflicts"]);
    assert_eq!(only_text.lines().count(), 2, "{only_text}");

    let show = text(&home, &["story", "show", "5_race"]);
    assert!(
        show.contains("was concurrent with deps-met by")
            || show.contains(&format!("was concurrent with abandon by {b_short}")),
        "the conflict names the other transition:\n{show}"
    );

    let history = text(&home, &["story", "history", "5_race"]);
    let first = history.lines().nth(1).unwrap();
    assert!(
        first.contains("created"),
        "history starts with the creation:\n{history}"
    );
    let h = json(&home, &["story", "history", "5_race"]);
    assert_eq!(h["created"]["author"], json(&home, &["id"])["node_id"]);
    assert!(h["created"]["at"].as_str().unwrap().ends_with('Z'), "{h}");
    assert_eq!(h["transitions"].as_array().unwrap().len(), 2);
}

#[test]
fn colour_follows_the_flag_and_no_color_also_for_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "n1");
    ok(&home, &["story", "add", "1_a"]);
    let always = text(&home, &["--color", "always", "story", "list"]);
    assert!(always.contains("\u{1b}["), "coloured:\n{always}");
    let never = text(&home, &["story", "list", "--color", "never"]);
    assert!(!never.contains('\u{1b}'), "{never}");
    assert_eq!(
        never,
        text(&home, &["story", "list"]),
        "auto: stdout is not a terminal"
    );
    let json_out = ok(&home, &["--color", "always", "--json", "story", "list"]);
    assert!(!json_out.stdout.contains(&0x1b), "JSON is never coloured");

    // clap's own errors obey the same choice.
    let plain = run(&home, &["story", "list", "--bogus"]);
    assert_eq!(plain.status.code(), Some(2));
    assert!(
        !plain.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let never = run(&home, &["--color", "never", "story", "list", "--bogus"]);
    assert!(!never.stderr.contains(&0x1b));
    let coloured = run(&home, &["--color", "always", "story", "list", "--bogus"]);
    assert!(
        coloured.stderr.contains(&0x1b),
        "--color always colours usage errors"
    );
    let no_color = bin()
        .args(["--home", home.to_str().unwrap(), "story", "list", "--bogus"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!no_color.stderr.contains(&0x1b));
}

#[test]
fn demo_honours_json_and_quiet_and_survives_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let demo = |args: &[&str]| bin().args(args).env("TMPDIR", dir.path()).output().unwrap();
    let out = demo(&["demo", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(v["ok"], true);
    assert_eq!(v["stories"].as_array().unwrap().len(), 4);
    assert!(v["ops"].as_u64().unwrap() > 10);
    let text = String::from_utf8_lossy(&demo(&["demo"]).stdout).into_owned();
    assert!(text.contains("cluster "), "{text}");
    assert!(!text.contains(" ,"), "no stray space before a comma:\n{text}");
    assert!(!text.contains("1 peers"), "{text}");
    let quiet = demo(&["demo", "--quiet"]);
    assert!(quiet.status.success());
    assert!(
        quiet.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stdout)
    );

    // `huskies demo | head -2`
    let mut child = bin()
        .arg("demo")
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..2 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
    }
    drop(reader);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "quiet: {stderr}");
    assert_eq!(out.status.code(), Some(141), "ends as a closed pipe does");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "homes removed");
}

#[test]
fn a_closed_stdout_ends_any_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let home = init(dir.path(), "n1");
    for args in [
        vec!["story", "list"],
        vec!["log"],
        vec!["--help"],
        vec!["completions", "bash"],
    ] {
        // The reader is gone before the child starts, so its first write fails (closing
        // our end after spawning raced with a short output such as `--help`).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = bin()
            .arg("--home")
            .arg(&home)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}");
    }
}

#[test]
fn completions_offer_event_names_and_stage_kinds() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = text(dir.path(), &["completions", shell]);
        for name in huskies_core::EventKind::ALL.iter().map(|k| k.as_str()) {
            assert!(script.contains(name), "{shell}: event {name}");
        }
        for kind in huskies_core::StageKind::ALL.iter().map(|k| k.as_str()) {
            assert!(script.contains(kind), "{shell}: stage {kind}");
        }
    }
    // Completion lists do not restrict: the core's parser and message decide.
    let home = init(dir.path(), "n1");
    ok(&home, &["story", "add", "1_a"]);
    ok(&home, &["story", "list", "--stage", "merge-failure"]);
    let e = run(&home, &["story", "event", "1_a", "teleport"]);
    assert_eq!(e.status.code(), Some(2));
}

#[test]
fn bench_shows_units() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["bench", "--ops", "600"])
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("{key} in\n{table}"))
            .to_string()
    };
    assert!(line("append_per_s").ends_with("ops/s"), "{table}");
    assert!(line("reopen_ms").ends_with(" ms"), "{table}");
    assert!(line("disk_bytes_per_op").ends_with("bytes/op"), "{table}");
    assert!(line("append_vs_sign").ends_with("ratio"), "{table}");
}
