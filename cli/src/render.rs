//! Rendering: what each command's result looks like (text and the JSON shapes of
//! `docs/cli.md`, built from the values `exec` returns), and how a result becomes
//! stdout, stderr and an exit code — the same in the CLI and inside the daemon.
//! Value-level shapes (a story, an op, a stage) are in `output`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use std::collections::BTreeMap;

use huskies_core::sync::Ticket;
use huskies_core::{
    ClusterId, Error, ErrorKind, ForkInfo, IngestReport, Member, NodeId, NodeInfo, OpSummary, StageKind,
    Story, StoryId, Transition, VerifyReport, VersionVector,
};
use huskies_daemon::HealthReport;
use serde_json::{json, Value};

use crate::args::Cli;
use crate::output;

/// Exit codes of the contract.
pub(crate) const EXIT_REFUSED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_ENV: u8 = 3;

/// An error on its way to the user: contract kind, message, exit code.
pub(crate) struct CliError {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl CliError {
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError {
            kind: "invalid_argument",
            message: message.into(),
            code: EXIT_USAGE,
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        let kind = e.kind();
        let code = match kind {
            ErrorKind::InvalidArgument => EXIT_USAGE,
            ErrorKind::HomeNotFound
            | ErrorKind::HomeLocked
            | ErrorKind::Corrupt
            | ErrorKind::Io
            | ErrorKind::Network => EXIT_ENV,
            _ => EXIT_REFUSED,
        };
        CliError {
            kind: kind.as_str(),
            message: e.to_string(),
            code,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError {
            kind: "io",
            message: e.to_string(),
            code: EXIT_ENV,
        }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<Error>() {
            Ok(core) => core.into(),
            Err(e) => CliError {
                kind: "io",
                message: format!("{e:#}"),
                code: EXIT_ENV,
            },
        }
    }
}

/// What a command printed: JSON for `--json`, text otherwise (or raw bytes).
pub(crate) struct Out {
    pub(crate) json: Value,
    pub(crate) text: String,
    pub(crate) raw: Option<Vec<u8>>,
}

impl Out {
    pub(crate) fn new(text: String, json: Value) -> Out {
        Out {
            json,
            text,
            raw: None,
        }
    }
}

/// Raw bytes for stdout, as they are (a binary export, the first lines of a stream).
pub(crate) fn raw(bytes: Vec<u8>) -> Out {
    Out {
        raw: Some(bytes),
        text: String::new(),
        json: Value::Null,
    }
}

/// `id` (and the end of `init`): the node, its cluster and its label, after `prefix`.
pub(crate) fn id(node: NodeId, cluster: ClusterId, label: &str, prefix: &str) -> Out {
    Out::new(
        format!("{prefix}node    {node}\ncluster {cluster}\nlabel   {label}\n"),
        json!({ "node_id": node.to_hex(), "cluster_id": cluster.to_hex(), "label": label }),
    )
}

/// One story (`story add`, `show`, `event`).
pub(crate) fn story(s: &Story) -> Out {
    Out::new(output::story_text(s), output::story(s))
}

/// `story list`.
pub(crate) fn story_list(stories: &[Story]) -> Out {
    let text = stories
        .iter()
        .map(|s| {
            let claim = s
                .claim
                .as_ref()
                .map(|c| format!("  [claimed by {}]", c.node.short()))
                .unwrap_or_default();
            format!(
                "{:<24} {:<40} {}{claim}\n",
                s.id.as_str(),
                output::stage_line(&s.stage),
                s.name
            )
        })
        .collect();
    Out::new(
        text,
        json!({ "stories": stories.iter().map(output::story).collect::<Vec<_>>() }),
    )
}

/// `story history`.
pub(crate) fn history(history: &[Transition]) -> Out {
    let text = history
        .iter()
        .map(|h| {
            format!(
                "{:>8} {} {:<18} {} -> {}{}{}\n",
                h.lamport,
                h.author.short(),
                h.event.name(),
                h.from.kind(),
                output::stage_line(&h.to),
                if h.conflict { "  (concurrent)" } else { "" },
                h.forced_over
                    .map(|n| format!("  (forced over {}'s claim)", n.short()))
                    .unwrap_or_default()
            )
        })
        .collect();
    Out::new(
        text,
        json!({ "transitions": history.iter().map(output::transition).collect::<Vec<_>>() }),
    )
}

/// `story rm`.
pub(crate) fn story_deleted(id: &StoryId) -> Out {
    Out::new(
        format!("deleted {id}\n"),
        json!({ "id": id.as_str(), "deleted": true }),
    )
}

/// `claim`: the claim now held on the story.
pub(crate) fn claimed(id: &StoryId, status: &huskies_core::ClaimStatus, took: bool) -> Out {
    let verb = if took { "claimed" } else { "holds" };
    let state = if status.confirmed {
        "confirmed".to_string()
    } else {
        format!(
            "not confirmed yet: waiting for {} alive member(s) to see it: {}",
            status.pending.len(),
            status
                .pending
                .iter()
                .map(|n| n.short())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Out::new(
        format!("{verb} {id} until {} ({state})\n", status.lease.expires_at),
        json!({
            "story": id.as_str(),
            "claim": output::claim(&status.lease, status.confirmed),
            "confirmed": status.confirmed,
            "pending": status.pending.iter().map(|n| n.to_hex()).collect::<Vec<_>>(),
        }),
    )
}

/// `release`.
pub(crate) fn released(id: &StoryId) -> Out {
    Out::new(
        format!("released {id}\n"),
        json!({ "story": id.as_str(), "released": true }),
    )
}

/// `log` (without `--follow`).
pub(crate) fn ops(cli: &Cli, ops: &[OpSummary]) -> Out {
    Out::new(
        op_lines(cli, ops),
        json!({ "ops": ops.iter().map(output::op).collect::<Vec<_>>() }),
    )
}

/// `verify` (a report that is not ok exits 1 through its `"ok": false`).
pub(crate) fn verified(report: &VerifyReport) -> Out {
    let mut text = format!(
        "{}: {} ops checked, {} problems, {} forks\n",
        if report.ok { "ok" } else { "NOT OK" },
        report.ops_checked,
        report.problems.len(),
        report.forks.len()
    );
    for p in &report.problems {
        text += &format!("  problem: {p}\n");
    }
    for f in &report.forks {
        text += &format!(
            "  fork: author {} quarantined from seq {}\n",
            f.author.short(),
            f.at_seq
        );
    }
    Out::new(text, output::verify(report))
}

/// What `status` shows, gathered from the node (and the daemon, when it runs there).
pub(crate) struct StatusFacts<'a> {
    pub(crate) node: NodeId,
    pub(crate) cluster: ClusterId,
    pub(crate) cluster_name: Option<&'a str>,
    pub(crate) label: String,
    pub(crate) health: Option<HealthReport>,
    pub(crate) counts: BTreeMap<StageKind, usize>,
    pub(crate) version: VersionVector,
    pub(crate) lamport: u64,
    pub(crate) nodes: Vec<NodeInfo>,
    pub(crate) forks: Vec<ForkInfo>,
    /// Ops of the node's own chain held and acknowledged, when some are missing.
    pub(crate) missing: Option<(u64, u64)>,
    /// Time-based signals that hold now (orphaned and due executions, expired claims, forks).
    pub(crate) signals: Vec<huskies_core::Envelope>,
    /// Claims this node took that another node's claim overrode while they still ran.
    pub(crate) lost: Vec<huskies_core::LostClaim>,
}

/// `status`.
pub(crate) fn status(s: &StatusFacts<'_>) -> Out {
    let mut text = format!(
        "node     {} ({})\ncluster  {} ({})\n",
        s.node,
        s.label,
        s.cluster,
        s.cluster_name.unwrap_or("?")
    );
    match &s.health {
        None => text += "daemon   not running (no peers connected)\n",
        Some(h) => {
            text += &format!(
                "daemon   running at {}, {} peers, {:.1} ops/s merged\n",
                h.address,
                h.peers.len(),
                h.ops_per_s
            );
            for p in &h.peers {
                text += &format!(
                    "peer     {} {} {}, lag {} ops\n",
                    p.node_id.as_deref().map_or("(handshaking)", |n| &n[..8]),
                    p.direction,
                    p.address.as_deref().unwrap_or(""),
                    p.lag
                );
            }
        }
    }
    text += "stories ";
    for (k, n) in &s.counts {
        text += &format!(" {k}={n}");
    }
    text += &format!(
        "\nops      {} from {} authors, lamport {}\n",
        s.version.total(),
        s.version.len(),
        s.lamport
    );
    for n in &s.nodes {
        text += &format!(
            "node     {} {:<16} {} (last heartbeat {})\n",
            n.node.short(),
            n.label,
            if n.alive { "alive" } else { "stale" },
            n.last_heartbeat
        );
    }
    for f in &s.forks {
        text += &format!(
            "fork     author {} quarantined from seq {}\n",
            f.author.short(),
            f.at_seq
        );
    }
    if let Some((held, acknowledged)) = s.missing {
        text += &format!(
            "WARNING  this store holds {held} of the {acknowledged} ops of this node's own chain it \
             had acknowledged; it writes nothing until a peer sends them back (run the daemon)\n"
        );
    }
    if let Some(e) = s.health.as_ref().map(|h| &h.events).filter(|e| e.enabled) {
        text += &format!(
            "events   bridge {} ({}): {} published, {} deduplicated, {} failed, {} ops pending\n",
            if e.connected { "connected" } else { "NOT connected" },
            e.stream.as_deref().unwrap_or("?"),
            e.published,
            e.deduplicated,
            e.failed,
            e.pending
        );
    }
    for e in &s.signals {
        let a = &e.attributes;
        text += &format!(
            "signal   {} {} {}\n",
            e.kind,
            a.story.as_deref().unwrap_or(""),
            a.node
                .as_deref()
                .map_or(String::new(), |n| n.chars().take(8).collect())
        );
    }
    for l in &s.lost {
        text += &format!(
            "LOST     claim on {} (taken {}): now held by {}\n",
            l.story,
            l.lease.claimed_at,
            l.winner.as_ref().map_or("nobody".to_string(), |w| w.node.short())
        );
    }
    let health = &s.health;
    Out::new(
        text,
        json!({
            "lost_claims": s.lost.iter().map(|l| json!({
                "story": l.story.as_str(),
                "claimed_at": output::time(l.lease.claimed_at),
                "expires_at": output::time(l.lease.expires_at),
                "winner": l.winner.as_ref().map(|w| w.node.to_hex()),
            })).collect::<Vec<_>>(),
            "node_id": s.node.to_hex(),
            "cluster_id": s.cluster.to_hex(),
            "cluster_name": s.cluster_name,
            "label": s.label,
            "daemon": health.is_some(),
            "peers": health.as_ref().map(|h| json!(h.peers)).unwrap_or_else(|| json!([])),
            "health": health,
            "stages": s.counts.iter().map(|(k, n)| (k.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "version_vector": s.version.iter().map(|(a, s)| (a.to_hex(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "lamport": s.lamport,
            "nodes": s.nodes.iter().map(|n| json!({
                "node_id": n.node.to_hex(), "label": n.label, "address": n.address,
                "last_heartbeat": output::time(n.last_heartbeat), "alive": n.alive,
            })).collect::<Vec<_>>(),
            "forks": s.forks.iter().map(|f| json!({"author": f.author.to_hex(), "at_seq": f.at_seq})).collect::<Vec<_>>(),
            "own_ops_missing": s.missing.map(|(held, acknowledged)| json!({"held": held, "acknowledged": acknowledged})),
            "events": health.as_ref().map(|h| json!(h.events)),
            "signals": s.signals,
        }),
    )
}

/// `member list`.
pub(crate) fn members(members: &[Member]) -> Out {
    let text = members
        .iter()
        .map(|m| {
            let mut flags = String::new();
            if m.removed {
                flags += " (removed)";
            }
            if m.quarantined {
                flags += " (quarantined)";
            }
            format!("{} {}{}\n", m.node, m.role.as_str(), flags)
        })
        .collect();
    Out::new(
        text,
        json!({ "members": members.iter().map(output::member).collect::<Vec<_>>() }),
    )
}

/// `member remove`.
pub(crate) fn member_removed(target: NodeId) -> Out {
    Out::new(
        format!("removed {target}\n"),
        json!({ "node_id": target.to_hex(), "removed": true }),
    )
}

/// `key rotate`.
pub(crate) fn key_rotated(old: NodeId, new: NodeId) -> Out {
    Out::new(
        format!("rotated key: {old} -> {new}\n"),
        json!({ "old_node_id": old.to_hex(), "node_id": new.to_hex() }),
    )
}

/// `export --out FILE`.
pub(crate) fn exported(ops: u64, bytes: usize, path: &Path) -> Out {
    Out::new(
        format!("exported {ops} ops ({bytes} bytes) to {}\n", path.display()),
        json!({ "ops": ops, "bytes": bytes, "file": path }),
    )
}

/// `import`.
pub(crate) fn imported(report: &IngestReport) -> Out {
    let rejected: Vec<Value> = report
        .rejected
        .iter()
        .map(|r| {
            json!({
                "op_id": r.op_id.map(|o| o.to_hex()),
                "author": r.author.map(|a| a.to_hex()),
                "seq": r.seq,
                "reason": r.reason.to_string(),
            })
        })
        .collect();
    let text = format!(
        "imported {} new ops ({} already held, {} waiting for predecessors, {} rejected)\n{}",
        report.applied,
        report.duplicates,
        report.buffered,
        report.rejected.len(),
        report
            .rejected
            .iter()
            .map(|r| format!("  rejected: {}\n", r.reason))
            .collect::<String>()
    );
    Out::new(
        text,
        json!({
            "applied": report.applied,
            "duplicates": report.duplicates,
            "buffered": report.buffered,
            "rejected": rejected,
            "forks": report.forks.iter().map(|f| f.to_hex()).collect::<Vec<_>>(),
        }),
    )
}

/// `ticket create`.
pub(crate) fn ticket(ticket: &Ticket, address: &str) -> Out {
    Out::new(
        format!("{ticket}\n"),
        json!({ "ticket": ticket.to_string(), "address": address, "expires_at": output::time(ticket.expires_at) }),
    )
}

/// A command's complete output.
#[derive(Default)]
pub(crate) struct Rendered {
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub code: u8,
}

/// Turns a command's result into its output, the same way in the CLI and in the daemon.
pub(crate) fn render(cli: &Cli, r: Result<Option<Out>, CliError>) -> Rendered {
    match r {
        Ok(Some(Out { raw: Some(raw), .. })) => Rendered {
            stdout: raw,
            ..Default::default()
        },
        Ok(Some(out)) => {
            let stdout = if cli.json {
                format!("{}\n", serde_json::to_string_pretty(&out.json).expect("json"))
            } else {
                out.text
            };
            let code = if out.json.get("ok") == Some(&Value::Bool(false)) {
                EXIT_REFUSED
            } else {
                0
            };
            Rendered {
                stdout: stdout.into_bytes(),
                stderr: String::new(),
                code,
            }
        }
        Ok(None) => Rendered::default(),
        Err(e) => Rendered {
            stdout: if cli.json {
                format!(
                    "{}\n",
                    json!({ "error": { "kind": e.kind, "message": e.message } })
                )
                .into_bytes()
            } else {
                Vec::new()
            },
            stderr: format!("huskies: {}\n", e.message),
            code: e.code,
        },
    }
}

pub(crate) fn emit(r: Rendered) -> ExitCode {
    let out_ok = std::io::stdout()
        .lock()
        .write_all(&r.stdout)
        .and_then(|_| std::io::stdout().flush())
        .is_ok();
    let _ = std::io::stderr().lock().write_all(r.stderr.as_bytes());
    if !out_ok && r.code == 0 {
        return ExitCode::from(EXIT_ENV);
    }
    ExitCode::from(r.code)
}

/// Ops as lines: one JSON object per line with `--json`, else one text line each.
pub(crate) fn op_lines(cli: &Cli, ops: &[OpSummary]) -> String {
    ops.iter()
        .map(|o| {
            if cli.json {
                format!("{}\n", output::op(o))
            } else {
                format!(
                    "{} {:>6} {:>8} {:<13} {}\n",
                    o.author.short(),
                    o.seq,
                    o.lamport,
                    o.kind,
                    o.story.as_ref().map_or("", |s| s.as_str())
                )
            }
        })
        .collect()
}

/// Progress bars on stderr, hidden when stderr is not a terminal or with --json/--quiet.
pub(crate) mod progress {
    use indicatif::{ProgressBar, ProgressStyle};

    pub fn bar(enabled: bool, total: u64, what: &str) -> ProgressBar {
        if !enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                .expect("template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }
}
