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
    ClusterId, Creation, Error, ErrorKind, ForkInfo, IngestReport, Member, NodeId, NodeInfo, OpSummary,
    StageKind, Story, StoryId, Transition, VerifyReport, VersionVector,
};
use huskies_daemon::HealthReport;
use serde_json::{json, Value};

use crate::args::{Cli, ColorChoice};
use crate::human::{self, esc, paint, Cell, Table, Tone};
use crate::output;

/// Exit codes of the contract.
pub(crate) const EXIT_REFUSED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_ENV: u8 = 3;
/// The status a shell reports for a command killed by `SIGPIPE` (128 + 13): what a command
/// ends with, quietly, when the reader of its stdout went away (`huskies demo | head -2`),
/// as coreutils' do.
pub(crate) const EXIT_CLOSED_PIPE: u8 = 141;

/// An error on its way to the user: contract kind, message, exit code.
pub(crate) struct CliError {
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) code: u8,
}

impl CliError {
    /// Stdout's reader went away: nothing more to print, nothing to say.
    pub(crate) fn reader_gone() -> Self {
        CliError {
            kind: "io",
            message: String::new(),
            code: EXIT_CLOSED_PIPE,
        }
    }

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
        format!(
            "{prefix}node    {node}\ncluster {cluster}\nlabel   {}\n",
            esc(label)
        ),
        json!({ "node_id": node.to_hex(), "cluster_id": cluster.to_hex(), "label": label }),
    )
}

/// One story (`story add`, `show`, `event`); `history` names the transitions its
/// conflicts were concurrent with (empty when it has none).
pub(crate) fn story(s: &Story, history: &[Transition]) -> Out {
    Out::new(output::story_text(s, history), output::story(s))
}

/// Which stories `story list` was asked for (its empty message says so).
pub(crate) struct ListFilter {
    pub(crate) stage: Option<StageKind>,
    pub(crate) conflicts: bool,
}

/// Widest stage text in `story list` (the full text is in `story show`).
const LIST_STAGE_COLUMNS: usize = 60;

/// `story list`: the stories in the natural order of their ids (`human::natural_cmp`), in
/// both outputs; a table with a header, or a line saying that nothing matched.
pub(crate) fn story_list(stories: &[Story], filter: &ListFilter) -> Out {
    let mut sorted: Vec<&Story> = stories.iter().collect();
    sorted.sort_by(|a, b| human::natural_cmp(a.id.as_str(), b.id.as_str()));
    let text = if sorted.is_empty() {
        let mut what = String::from("no stories");
        if let Some(k) = filter.stage {
            what += &format!(" in stage {k}");
        }
        if filter.conflicts {
            what += " with conflicts";
        }
        format!("{what}\n")
    } else {
        let mut table = Table::new(vec!["ID", "STAGE", "CLAIM", "CONFLICTS", "NAME"]);
        for s in &sorted {
            let stage = output::stage_line(&s.stage);
            table.row(vec![
                Cell::new(esc(s.id.as_str())),
                Cell::new(human::truncate(&stage, LIST_STAGE_COLUMNS)).tone(Tone::Stage(s.stage.kind())),
                Cell::new(
                    s.claim
                        .as_ref()
                        .map_or("-".into(), |c| c.node.short().to_string()),
                ),
                match s.conflicts.len() {
                    0 => Cell::new("-"),
                    n => Cell::new(format!("! {n}")).tone(Tone::Bad),
                },
                Cell::new(esc(&s.name)),
            ]);
        }
        table.render()
    };
    Out::new(
        text,
        json!({ "stories": sorted.iter().map(|s| output::story(s)).collect::<Vec<_>>() }),
    )
}

/// `story history`: the creation, then the transitions in merge order.
pub(crate) fn history(created: &Creation, history: &[Transition]) -> Out {
    let mut table = Table::new(vec!["LAMPORT", "AT", "AUTHOR", "EVENT", "FROM", "TO", ""]);
    table.row(vec![
        Cell::new(created.lamport.to_string()),
        Cell::new(created.at.map_or_else(|| "?".to_string(), |t| t.to_string())),
        Cell::new(created.author.short().to_string()),
        Cell::new("created"),
        Cell::new("-"),
        Cell::new("backlog").tone(Tone::Stage(StageKind::Backlog)),
        Cell::new(""),
    ]);
    for h in history {
        table.row(vec![
            Cell::new(h.lamport.to_string()),
            Cell::new(h.at.to_string()),
            Cell::new(h.author.short().to_string()),
            Cell::new(h.event.name()),
            Cell::new(h.from.kind().as_str()).tone(Tone::Stage(h.from.kind())),
            Cell::new(output::stage_line(&h.to)).tone(Tone::Stage(h.to.kind())),
            {
                let mut notes = Vec::new();
                if h.conflict {
                    notes.push("(concurrent)".to_string());
                }
                if let Some(n) = h.forced_over {
                    notes.push(format!("(forced over {}'s claim)", n.short()));
                }
                if notes.is_empty() {
                    Cell::new("")
                } else {
                    Cell::new(notes.join(" ")).tone(Tone::Bad)
                }
            },
        ]);
    }
    Out::new(
        table.render(),
        json!({
            "created": {
                "op_id": created.op_id.to_hex(),
                "author": created.author.to_hex(),
                "lamport": created.lamport,
                "at": created.at.map(output::time),
            },
            "transitions": history.iter().map(output::transition).collect::<Vec<_>>(),
        }),
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
        "{}: {} checked, {}, {}\n",
        if report.ok {
            paint("ok", Tone::Good)
        } else {
            paint("NOT OK", Tone::Bad)
        },
        human::count(usize::try_from(report.ops_checked).unwrap_or(usize::MAX), "op"),
        human::count(report.problems.len(), "problem"),
        human::count(report.forks.len(), "fork")
    );
    for p in &report.problems {
        text += &format!("  problem: {}\n", esc(p));
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
        esc(&s.label),
        s.cluster,
        esc(s.cluster_name.unwrap_or("?"))
    );
    match &s.health {
        None => text += "daemon   not running (no peers connected)\n",
        Some(h) => {
            text += &format!(
                "daemon   running at {}, {}, {:.1} ops/s merged\n",
                esc(&h.address),
                human::count(h.peers.len(), "peer"),
                h.ops_per_s
            );
            for p in &h.peers {
                let who = p
                    .node_id
                    .as_deref()
                    .map_or("(handshaking)".to_string(), |n| n.chars().take(8).collect());
                let address = p
                    .address
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map_or(String::new(), |a| format!(" {}", esc(a)));
                text += &format!(
                    "peer     {} {}{address}, lag {}\n",
                    esc(&who),
                    p.direction,
                    human::count(usize::try_from(p.lag).unwrap_or(usize::MAX), "op")
                );
            }
            for d in &h.dial_failures {
                text += &format!(
                    "unreachable {} ({}): {} attempts since {}, last error: {}\n",
                    d.address, d.severity, d.attempts, d.since, d.last_error
                );
            }
        }
    }
    text += "stories ";
    for (k, n) in &s.counts {
        text += &format!(" {}={n}", paint(k.as_str(), Tone::Stage(*k)));
    }
    text += &format!(
        "\nops      {} from {}, lamport {}\n",
        s.version.total(),
        human::count(s.version.len(), "author"),
        s.lamport
    );
    let label_width = s
        .nodes
        .iter()
        .map(|n| human::width(&esc(&n.label)))
        .max()
        .unwrap_or(0);
    for n in &s.nodes {
        let label = esc(&n.label);
        text += &format!(
            "node     {} {label}{} {} (last heartbeat {})\n",
            n.node.short(),
            " ".repeat(label_width - human::width(&label)),
            if n.alive {
                paint("alive", Tone::Good)
            } else {
                paint("stale", Tone::Warn)
            },
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
            "{}  this store holds {held} of the {acknowledged} ops of this node's own chain it \
             had acknowledged; it writes nothing until a peer sends them back (run the daemon)\n",
            paint("WARNING", Tone::Bad)
        );
    }
    if let Some(e) = s.health.as_ref().map(|h| &h.events).filter(|e| e.enabled) {
        text += &format!(
            "events   bridge {} ({}): {} published, {} deduplicated, {} failed, {} ops pending\n",
            if e.connected {
                paint("connected", Tone::Good)
            } else {
                paint("NOT connected", Tone::Bad)
            },
            esc(e.stream.as_deref().unwrap_or("?")),
            e.published,
            e.deduplicated,
            e.failed,
            e.pending
        );
    }
    for e in &s.signals {
        let a = &e.attributes;
        let parts: Vec<String> = [
            Some(e.kind.to_string()),
            a.story.clone(),
            a.node.as_deref().map(|n| n.chars().take(8).collect()),
        ]
        .into_iter()
        .flatten()
        .filter(|p| !p.is_empty())
        .map(|p| esc(&p).into_owned())
        .collect();
        text += &format!("signal   {}\n", paint(&parts.join(" "), Tone::Warn));
    }
    for l in &s.lost {
        text += &format!(
            "LOST     claim on {} (taken {}): now held by {}\n",
            esc(l.story.as_str()),
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

/// `member list`: each member with the label of its presence record (empty before its
/// first heartbeat).
pub(crate) fn members(members: &[Member], nodes: &[NodeInfo]) -> Out {
    let mut table = Table::new(vec!["NODE", "ROLE", "LABEL", "STATE"]);
    for m in members {
        let label = nodes
            .iter()
            .find(|n| n.node == m.node)
            .map_or(String::new(), |n| esc(&n.label).into_owned());
        let mut state = Vec::new();
        if m.removed {
            state.push("removed");
        }
        if m.quarantined {
            state.push("quarantined");
        }
        table.row(vec![
            Cell::new(m.node.to_string()),
            Cell::new(m.role.as_str()),
            Cell::new(label),
            if state.is_empty() {
                Cell::new("-")
            } else {
                Cell::new(state.join(", ")).tone(Tone::Warn)
            },
        ]);
    }
    Out::new(
        table.render(),
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
    let reasons = rejection_counts(&report.rejected);
    let text = format!(
        "imported {} new ops ({} already held, {} waiting for predecessors, {} rejected)\n{}",
        report.applied,
        report.duplicates,
        report.buffered,
        report.rejected.len(),
        reasons
            .iter()
            .map(|(_, reason, n)| format!("  rejected: {n} \u{d7} {}\n", esc(reason)))
            .collect::<String>()
    );
    Out::new(
        text,
        json!({
            "ok": report.rejected.is_empty(),
            "applied": report.applied,
            "duplicates": report.duplicates,
            "buffered": report.buffered,
            "rejected": rejected,
            "rejected_reasons": reasons
                .iter()
                .map(|(code, reason, n)| json!({ "code": code, "reason": reason, "count": n }))
                .collect::<Vec<_>>(),
            "forks": report.forks.iter().map(|f| f.to_hex()).collect::<Vec<_>>(),
        }),
    )
}

/// Rejections grouped by reason code, in the order each code first appears:
/// `(code, message, count)`, where the message is the group's own when all its ops share
/// it, else the first one's, marked as an example. Seven ops of another cluster are one
/// line, not seven.
pub(crate) fn rejection_counts(rejected: &[huskies_core::Rejection]) -> Vec<(&'static str, String, usize)> {
    let mut groups: Vec<(&'static str, String, usize, bool)> = Vec::new();
    let mut index: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in rejected {
        let code = r.reason.code();
        let reason = r.reason.to_string();
        match index.get(code) {
            Some(&i) => {
                let group = &mut groups[i];
                group.2 += 1;
                group.3 &= group.1 == reason;
            }
            None => {
                index.insert(code, groups.len());
                groups.push((code, reason, 1, true));
            }
        }
    }
    groups
        .into_iter()
        .map(|(code, reason, n, same)| {
            let reason = if same {
                reason
            } else {
                format!("{code}, e.g. {reason}")
            };
            (code, reason, n)
        })
        .collect()
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
            } else if colour_on(cli) {
                out.text
            } else {
                human::strip_colour(&out.text)
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
        Err(e) if e.code == EXIT_CLOSED_PIPE => Rendered {
            code: EXIT_CLOSED_PIPE,
            ..Default::default()
        },
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
            stderr: format!("huskies: {}\n", esc(&e.message)),
            code: e.code,
        },
    }
}

/// Whether human output on stdout is coloured: `--color always` or `never` decide; `auto`
/// (the default) colours a terminal unless `NO_COLOR` is set to something. A command sent
/// to a daemon carries the client's decision (`route`), never the daemon's terminal.
pub(crate) fn colour_on(cli: &Cli) -> bool {
    match cli.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => no_color_unset() && std::io::IsTerminal::is_terminal(&std::io::stdout()),
    }
}

/// `NO_COLOR` unset or empty (<https://no-color.org>).
pub(crate) fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Prints a command's output and gives its exit code. A reader that closed stdout early
/// (`| head -1`) ends the command quietly with [`EXIT_CLOSED_PIPE`]; another failure to
/// write a successful command's output is an environment error.
pub(crate) fn emit(r: Rendered) -> ExitCode {
    let written = std::io::stdout()
        .lock()
        .write_all(&r.stdout)
        .and_then(|_| std::io::stdout().flush());
    let _ = std::io::stderr().lock().write_all(r.stderr.as_bytes());
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_CLOSED_PIPE),
        Err(_) if r.code == 0 => ExitCode::from(EXIT_ENV),
        _ => ExitCode::from(r.code),
    }
}

/// `bench`'s human table: each figure with its unit, read from its key's suffix
/// (`docs/benchmarks.md` lists the keys).
pub(crate) fn bench_table(figures: &Value) -> String {
    let Some(map) = figures.as_object() else {
        return String::new();
    };
    let mut table = Table::new(vec!["FIGURE", "VALUE", "UNIT"]);
    for (key, value) in map {
        let unit = bench_unit(key);
        let value = match value {
            Value::String(s) => esc(s).into_owned(),
            Value::Null => "-".into(),
            other => other.to_string(),
        };
        table.row(vec![Cell::new(key.clone()), Cell::new(value), Cell::new(unit)]);
    }
    table.render()
}

/// The unit of a `bench` figure, from its key.
fn bench_unit(key: &str) -> &'static str {
    if key.ends_with("_per_s") {
        "ops/s"
    } else if key.contains("_vs_") {
        "ratio"
    } else if key.ends_with("_ms") {
        "ms"
    } else if key.ends_with("_mb") {
        "MiB"
    } else if key.ends_with("bytes_per_op") || key == "op_bytes" {
        "bytes/op"
    } else if key.ends_with("bytes") || key.ends_with("_sled") {
        "bytes"
    } else {
        match key {
            "ops" | "sync_ops_sent" => "ops",
            "group_commit" => "commands/group",
            "verify_batch" | "core_verify_batch" => "signatures/batch",
            "verify_threads_parallel" => "threads",
            "cores" => "cores",
            _ => "",
        }
    }
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
                    esc(o.story.as_ref().map_or("", |s| s.as_str()))
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
