//! `claim ID --wait SECS`: take the claim like any command (through the running daemon, or
//! on the home directly), then ask for its status (`claim ID --check`, answered by the
//! core's `Node::claim_status`, the one home of the rule) until it is confirmed, lost, or
//! the time is up. The command never waits inside the daemon: the daemon's node serves
//! other commands and peers meanwhile, and this side only polls.
//!
//! Outcomes (`docs/cli.md`): exit 0 once confirmed; exit 1 `claim_conflict` when another
//! node's claim won meanwhile (or `not_found` when the claim is gone); exit 3 `network`
//! when alive members had not confirmed it in time, naming them (`"unconfirmed"` in the
//! JSON). Without a running daemon nothing reaches the other members, so the first check
//! is the answer.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::{parse, Cli};
use crate::exec::{run, NodeSlot};
use crate::render::{render, Rendered, EXIT_ENV};
use crate::route::through_daemon;

/// How often the status is asked for while waiting.
const POLL: Duration = Duration::from_millis(100);

/// Runs `claim --wait`: `argv` is the command line as given, `secs` the wait.
pub(crate) fn run_wait(cli: &Cli, root: &Path, argv: &[String], secs: u64) -> Rendered {
    // The claim itself (`--wait` changes nothing in how it is taken).
    let (taken, through_daemon_now) = once(cli, root, argv);
    if taken.code != 0 {
        return taken;
    }
    let check_argv = check_argv(argv, false);
    let check_json_argv = check_argv_json(cli, argv);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let last = loop {
        let Ok(check_cli) = parse(&check_json_argv) else {
            return taken;
        };
        let (r, _) = once(&check_cli, root, &check_json_argv);
        if r.code != 0 {
            // Lost (claim_conflict) or gone (not_found): the answer in the user's format.
            return final_answer(cli, root, &check_argv, r);
        }
        let status: Value = serde_json::from_slice(&r.stdout).unwrap_or(Value::Null);
        if status["confirmed"] == Value::Bool(true) {
            return final_answer(cli, root, &check_argv, r);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if !through_daemon_now || left.is_zero() {
            break status;
        }
        std::thread::sleep(POLL.min(left));
    };
    not_confirmed(cli, secs, through_daemon_now, last)
}

/// One command line through the daemon that owns `root`, or on the home directly; and
/// whether a daemon ran it.
fn once(cli: &Cli, root: &Path, argv: &[String]) -> (Rendered, bool) {
    match through_daemon(cli, root, argv) {
        Some(r) => (r, true),
        None => (render(cli, run(cli, &mut NodeSlot::Direct(None))), false),
    }
}

/// `argv` with `--wait SECS` replaced by `--check`.
fn check_argv(argv: &[String], json: bool) -> Vec<String> {
    let mut out = Vec::with_capacity(argv.len() + 2);
    let mut skip = false;
    for a in argv {
        if skip {
            skip = false;
            continue;
        }
        if a == "--wait" {
            skip = true;
            continue;
        }
        if a.starts_with("--wait=") {
            continue;
        }
        out.push(a.clone());
    }
    out.push("--check".into());
    if json {
        out.push("--json".into());
    }
    out
}

/// The check in JSON (what this side reads), whatever the user asked for.
fn check_argv_json(cli: &Cli, argv: &[String]) -> Vec<String> {
    check_argv(argv, !cli.json)
}

/// The last answer again, in the user's format (JSON or text).
fn final_answer(cli: &Cli, root: &Path, check_argv: &[String], json_answer: Rendered) -> Rendered {
    if cli.json {
        return json_answer;
    }
    match parse(check_argv) {
        Ok(check_cli) => once(&check_cli, root, check_argv).0,
        Err(r) => r,
    }
}

/// Exit 3 `network`: the claim is held but alive members had not confirmed it in time.
fn not_confirmed(cli: &Cli, secs: u64, daemon: bool, status: Value) -> Rendered {
    let pending: Vec<String> = status["pending"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let story = status["story"].as_str().unwrap_or_default().to_string();
    let short: Vec<&str> = pending.iter().map(|p| p.get(..8).unwrap_or(p)).collect();
    let why = if daemon {
        format!("within {secs} s")
    } else {
        "and cannot be without a running daemon to sync with them (start `huskies daemon`)".to_string()
    };
    let message = format!(
        "the claim on {story} is held but not confirmed {why}: alive member(s) {} have not shown they saw it (partitioned, or not syncing with this node)",
        short.join(", ")
    );
    Rendered {
        stdout: if cli.json {
            format!(
                "{}\n",
                json!({
                    "error": { "kind": "network", "message": message, "unconfirmed": pending },
                    "story": story,
                    "claim": status["claim"],
                })
            )
            .into_bytes()
        } else {
            Vec::new()
        },
        stderr: format!("huskies: {message}\n"),
        code: EXIT_ENV,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_becomes_check() {
        let argv: Vec<String> = ["--home", "h", "claim", "s", "--wait", "5", "--ttl", "60"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            check_argv(&argv, true),
            ["--home", "h", "claim", "s", "--ttl", "60", "--check", "--json"]
        );
        let argv: Vec<String> = ["claim", "s", "--wait=5"].iter().map(|s| s.to_string()).collect();
        assert_eq!(check_argv(&argv, false), ["claim", "s", "--check"]);
    }
}
