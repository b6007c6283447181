//! `huskies`: the command line of the huskies state layer.
//!
//! The contract (names, JSON shapes, exit codes, error kinds) is `shared/spec/cli.md`;
//! scripts outside this repository rely on it.

mod bench;
mod demo;
mod home;
mod output;

use std::io::Write;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use huskies_core::{
    Command as Cmd, Error, ErrorKind, InitMode, Node, NodeConfig, NodeId, PipelineEvent, StageKind, StoryId,
    Timestamp, VersionVector,
};
use serde_json::{json, Value};

/// Exit codes of the contract.
const EXIT_REFUSED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_ENV: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "huskies",
    version,
    about = "The huskies state layer: a signed, replicated pipeline of stories",
    long_about = "The huskies state layer: a signed, replicated pipeline of stories.\n\n\
        Each node keeps its state in a home directory (store, key, config), found from --home, \
        else $HUSKIES_HOME, else the nearest .huskies/ walking up from the working directory.",
    after_help = "Examples:\n  huskies init --cluster-name acme\n  huskies story add 42_fix_login --name 'Fix login'\n  \
        huskies story event 42_fix_login deps-met\n  huskies --json story list --stage coding\n  huskies demo"
)]
struct Cli {
    /// The node's home directory.
    #[arg(long, global = true, env = "HUSKIES_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print exactly one JSON document on stdout (JSON Lines for streams).
    #[arg(long, global = true)]
    json: bool,
    /// Print nothing but data and errors; no progress.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Colour in human output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Create a home and a node key; start a new cluster.
    #[command(after_help = "Example:\n  huskies init --cluster-name acme --label build-1")]
    Init {
        /// Name of the new cluster.
        #[arg(long, default_value = "huskies")]
        cluster_name: String,
        /// Join an existing cluster with a ticket from `huskies ticket create`.
        #[arg(long, value_name = "TICKET")]
        join: Option<String>,
        /// A human label for this node (shown in presence).
        #[arg(long)]
        label: Option<String>,
    },
    /// Print this node's id, cluster id and label.
    #[command(after_help = "Example:\n  huskies --json id")]
    Id,
    /// Stories: add, show, list, apply events, history, delete.
    #[command(subcommand)]
    Story(StoryCmd),
    /// Claim a story for this node (refused while another node holds a live claim).
    #[command(after_help = "Example:\n  huskies claim 42_fix_login --ttl 900")]
    Claim {
        /// Story id.
        id: String,
        /// Lease length in seconds.
        #[arg(long, default_value_t = 600)]
        ttl: u32,
    },
    /// Give up this node's claim on a story.
    #[command(after_help = "Example:\n  huskies release 42_fix_login")]
    Release {
        /// Story id.
        id: String,
    },
    /// List stored ops in merge order.
    #[command(after_help = "Example:\n  huskies --json log --author 3f2a...")]
    Log {
        /// Only ops by this node (hex id).
        #[arg(long)]
        author: Option<String>,
    },
    /// Re-check every stored op: hash chain, signature, forks. Exit 1 when problems are found.
    #[command(after_help = "Example:\n  huskies verify")]
    Verify,
    /// Node, cluster, stage counts, version vector and forks.
    #[command(after_help = "Example:\n  huskies --json status")]
    Status,
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCmd),
    /// This node's signing key.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Write signed ops to a file (or stdout) for backup or air-gapped transfer.
    #[command(after_help = "Example:\n  huskies export --out backup.hsk")]
    Export {
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Verify and merge signed ops from a file written by `huskies export`.
    #[command(after_help = "Example:\n  huskies import backup.hsk")]
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Run the main job: a local cluster in temporary homes showing the pipeline, sync and recovery.
    #[command(after_help = "Example:\n  huskies demo")]
    Demo,
    /// Measure performance figures, each beside its ceiling measured in the same run.
    #[command(after_help = "Example:\n  huskies bench --json --ops 100000")]
    Bench {
        /// Number of ops.
        #[arg(long, default_value_t = 100_000)]
        ops: usize,
    },
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  huskies completions bash > /etc/bash_completion.d/huskies")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum StoryCmd {
    /// Add a story to the backlog.
    #[command(
        after_help = "Example:\n  huskies story add 42_fix_login --name 'Fix login' --depends-on 41_auth"
    )]
    Add {
        /// Story id (letters, digits, '_', '-', '.').
        id: String,
        /// Name.
        #[arg(long)]
        name: Option<String>,
        /// A story it depends on (repeatable).
        #[arg(long = "depends-on", value_name = "ID")]
        depends_on: Vec<String>,
        /// Read the body from this file ('-' for stdin).
        #[arg(long, value_name = "FILE")]
        body_file: Option<PathBuf>,
    },
    /// Show one story.
    #[command(after_help = "Example:\n  huskies --json story show 42_fix_login")]
    Show {
        /// Story id.
        id: String,
    },
    /// List stories sorted by id.
    #[command(after_help = "Example:\n  huskies story list --stage merge")]
    List {
        /// Only this stage: backlog, coding, qa, merge, merge_failure, done, archived.
        #[arg(long, value_name = "KIND")]
        stage: Option<String>,
    },
    /// Apply a pipeline event; prints the story after it.
    #[command(
        after_help = "Events: deps-met, gates-started, gates-passed, gates-failed, qa-skipped, merge-succeeded, \
        merge-conflict, merge-failed-final, accepted, block, unblock, abandon, supersede, review-hold\n\n\
        Examples:\n  huskies story event 42_fix_login gates-passed --branch feature/42 --commits 3\n  \
        huskies story event 42_fix_login merge-conflict --kind conflict --reason 'src/a.rs'"
    )]
    Event {
        /// Story id.
        id: String,
        /// Event name.
        event: String,
        /// Feature branch (gates-passed, qa-skipped).
        #[arg(long)]
        branch: Option<String>,
        /// Commits ahead, at least 1 (gates-passed, qa-skipped).
        #[arg(long)]
        commits: Option<u32>,
        /// Merge commit (merge-succeeded).
        #[arg(long)]
        commit: Option<String>,
        /// Failure kind (merge-conflict).
        #[arg(long)]
        kind: Option<String>,
        /// Reason (gates-failed, merge-conflict, merge-failed-final, block, review-hold).
        #[arg(long)]
        reason: Option<String>,
        /// The superseding story (supersede).
        #[arg(long)]
        by: Option<String>,
    },
    /// A story's transitions in merge order, conflicts flagged.
    #[command(after_help = "Example:\n  huskies --json story history 42_fix_login")]
    History {
        /// Story id.
        id: String,
    },
    /// Delete a story (a tombstone that replicates).
    #[command(after_help = "Example:\n  huskies story rm 42_fix_login")]
    Rm {
        /// Story id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum MemberCmd {
    /// List members and roles.
    #[command(after_help = "Example:\n  huskies --json member list")]
    List,
    /// Remove a member (admins only); its later ops are void everywhere.
    #[command(after_help = "Example:\n  huskies member remove 3f2a...")]
    Remove {
        /// Node id (hex).
        node: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Replace this node's signing key; membership moves to the new key.
    #[command(after_help = "Example:\n  huskies key rotate")]
    Rotate,
}

/// An error on its way to the user: contract kind, message, exit code.
struct CliError {
    kind: &'static str,
    message: String,
    code: u8,
}

impl CliError {
    fn usage(message: impl Into<String>) -> Self {
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

/// What a command printed: JSON for `--json`, text otherwise.
struct Out {
    json: Value,
    text: String,
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

fn main() -> ExitCode {
    let json_requested = std::env::args().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind as K;
            if matches!(
                e.kind(),
                K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            if json_requested {
                let msg = e
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or("usage error")
                    .trim_start_matches("error: ")
                    .to_string();
                println!(
                    "{}",
                    json!({ "error": { "kind": "invalid_argument", "message": msg } })
                );
                eprintln!("huskies: {msg}");
            } else {
                let _ = e.print();
            }
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&cli) {
        Ok(Some(out)) => {
            let mut stdout = std::io::stdout().lock();
            let r = if cli.json {
                writeln!(
                    stdout,
                    "{}",
                    serde_json::to_string_pretty(&out.json).expect("json")
                )
            } else if !out.text.is_empty() {
                write!(stdout, "{}", out.text)
            } else {
                Ok(())
            };
            if r.is_err() {
                return ExitCode::from(EXIT_ENV);
            }
            if out.json.get("ok") == Some(&Value::Bool(false)) {
                return ExitCode::from(EXIT_REFUSED);
            }
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!("{}", json!({ "error": { "kind": e.kind, "message": e.message } }));
            }
            eprintln!("huskies: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

fn story_id(s: &str) -> Result<StoryId, CliError> {
    StoryId::new(s).map_err(|e| CliError::usage(e.to_string()))
}

fn node_id(s: &str) -> Result<NodeId, CliError> {
    s.parse::<NodeId>().map_err(|e| CliError::usage(e.to_string()))
}

fn open(cli: &Cli) -> Result<Node, CliError> {
    let root = home::resolve(cli.home.as_deref())?;
    Ok(Node::open(&root, NodeConfig::default())?)
}

fn progress_enabled(cli: &Cli) -> bool {
    use std::io::IsTerminal;
    !cli.json && !cli.quiet && std::io::stderr().is_terminal()
}

fn run(cli: &Cli) -> Result<Option<Out>, CliError> {
    let out = match &cli.command {
        Commands::Init {
            cluster_name,
            join,
            label,
        } => {
            if join.is_some() {
                return Err(CliError {
                    kind: "network",
                    message:
                        "joining with a ticket needs the sync daemon, which this build does not include yet"
                            .into(),
                    code: EXIT_ENV,
                });
            }
            let root = cli.home.clone().unwrap_or_else(|| PathBuf::from(".huskies"));
            let mut node = Node::init(
                &root,
                InitMode::NewCluster {
                    name: cluster_name.clone(),
                },
                &mut rand_core::OsRng,
                now(),
                NodeConfig::default(),
            )?;
            let label = label.clone().unwrap_or_else(default_label);
            node.execute(
                now(),
                Cmd::Heartbeat {
                    label: label.clone(),
                    address: None,
                },
            )?;
            id_out(
                &node,
                &label,
                &format!(
                    "initialised home {} (new cluster {cluster_name:?})\n",
                    root.display()
                ),
            )
        }
        Commands::Id => {
            let node = open(cli)?;
            let label = own_label(&node)?;
            id_out(&node, &label, "")
        }
        Commands::Story(cmd) => story_cmd(cli, cmd)?,
        Commands::Claim { id, ttl } => {
            let id = story_id(id)?;
            let mut node = open(cli)?;
            let t = now();
            node.execute(
                t,
                Cmd::Claim {
                    id: id.clone(),
                    ttl_secs: *ttl,
                },
            )?;
            let story = node.story(&id, t)?;
            let claim = story.claim.as_ref().map(output::lease).unwrap_or(Value::Null);
            Out {
                text: format!("claimed {id} for {ttl} s\n"),
                json: json!({ "story": id.as_str(), "claim": claim }),
            }
        }
        Commands::Release { id } => {
            let id = story_id(id)?;
            let mut node = open(cli)?;
            node.execute(now(), Cmd::Release { id: id.clone() })?;
            Out {
                text: format!("released {id}\n"),
                json: json!({ "story": id.as_str(), "released": true }),
            }
        }
        Commands::Log { author } => {
            let author = author.as_deref().map(node_id).transpose()?;
            let node = open(cli)?;
            let ops = node.log(author.as_ref())?;
            let text = ops
                .iter()
                .map(|o| {
                    format!(
                        "{} {:>6} {:>8} {:<13} {}\n",
                        o.author.short(),
                        o.seq,
                        o.lamport,
                        o.kind,
                        o.story.as_ref().map_or("", |s| s.as_str())
                    )
                })
                .collect();
            Out {
                text,
                json: json!({ "ops": ops.iter().map(output::op).collect::<Vec<_>>() }),
            }
        }
        Commands::Verify => {
            let node = open(cli)?;
            let total = node.version_vector().total();
            let bar = progress::bar(progress_enabled(cli), total, "verifying");
            let report = node.verify(|n| bar.set_position(n))?;
            bar.finish_and_clear();
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
            Out {
                text,
                json: output::verify(&report),
            }
        }
        Commands::Status => status(cli)?,
        Commands::Member(MemberCmd::List) => {
            let node = open(cli)?;
            let members = node.members();
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
            Out {
                text,
                json: json!({ "members": members.iter().map(output::member).collect::<Vec<_>>() }),
            }
        }
        Commands::Member(MemberCmd::Remove { node: target }) => {
            let target = node_id(target)?;
            let mut node = open(cli)?;
            node.execute(now(), Cmd::RemoveMember { node: target })?;
            Out {
                text: format!("removed {target}\n"),
                json: json!({ "node_id": target.to_hex(), "removed": true }),
            }
        }
        Commands::Key(KeyCmd::Rotate) => {
            let mut node = open(cli)?;
            let old = node.node_id();
            node.rotate_key(now(), &mut rand_core::OsRng)?;
            let new = node.node_id();
            Out {
                text: format!("rotated key: {old} -> {new}\n"),
                json: json!({ "old_node_id": old.to_hex(), "node_id": new.to_hex() }),
            }
        }
        Commands::Export { out } => {
            let node = open(cli)?;
            let bytes = node.export_since(&VersionVector::default())?;
            let count = node.version_vector().total();
            match out {
                Some(path) => {
                    write_file_atomically(path, &bytes)?;
                    Out {
                        text: format!(
                            "exported {count} ops ({} bytes) to {}\n",
                            bytes.len(),
                            path.display()
                        ),
                        json: json!({ "ops": count, "bytes": bytes.len(), "file": path }),
                    }
                }
                None => {
                    if cli.json {
                        return Err(CliError::usage(
                            "--json needs --out FILE: the export itself is binary",
                        ));
                    }
                    std::io::stdout().lock().write_all(&bytes)?;
                    return Ok(None);
                }
            }
        }
        Commands::Import { file } => {
            let bytes = std::fs::read(file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let mut node = open(cli)?;
            let report = node.ingest_bundle(&bytes)?;
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
            Out {
                text,
                json: json!({
                    "applied": report.applied,
                    "duplicates": report.duplicates,
                    "buffered": report.buffered,
                    "rejected": rejected,
                    "forks": report.forks.iter().map(|f| f.to_hex()).collect::<Vec<_>>(),
                }),
            }
        }
        Commands::Demo => {
            demo::run(cli.quiet)?;
            return Ok(None);
        }
        Commands::Bench { ops } => {
            let figures = bench::run(&bench::BenchOptions {
                ops: *ops,
                progress: progress_enabled(cli),
            })?;
            let text = figures
                .as_object()
                .map(|m| m.iter().map(|(k, v)| format!("{k:>24}  {v}\n")).collect())
                .unwrap_or_default();
            Out { text, json: figures }
        }
        Commands::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "huskies", &mut std::io::stdout());
            return Ok(None);
        }
    };
    Ok(Some(out))
}

fn default_label() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

fn own_label(node: &Node) -> Result<String, CliError> {
    let me = node.node_id();
    Ok(node
        .nodes(now())?
        .into_iter()
        .find(|n| n.node == me)
        .map(|n| n.label)
        .unwrap_or_default())
}

fn id_out(node: &Node, label: &str, prefix: &str) -> Out {
    Out {
        text: format!(
            "{prefix}node    {}\ncluster {}\nlabel   {label}\n",
            node.node_id(),
            node.cluster_id()
        ),
        json: json!({ "node_id": node.node_id().to_hex(), "cluster_id": node.cluster_id().to_hex(), "label": label }),
    }
}

fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| CliError {
            kind: "io",
            message: format!("writing {}: {e}", path.display()),
            code: EXIT_ENV,
        })
}

fn parse_event(
    name: &str,
    branch: &Option<String>,
    commits: Option<u32>,
    commit: &Option<String>,
    kind: &Option<String>,
    reason: &Option<String>,
    by: &Option<String>,
) -> Result<PipelineEvent, CliError> {
    let need = |v: &Option<String>, flag: &str| {
        v.clone()
            .ok_or_else(|| CliError::usage(format!("event {name} needs --{flag}")))
    };
    let commits_nz = || {
        let n = commits.ok_or_else(|| CliError::usage(format!("event {name} needs --commits N")))?;
        NonZeroU32::new(n)
            .ok_or_else(|| CliError::usage("--commits must be at least 1: a merge needs a commit"))
    };
    Ok(match name {
        "deps-met" => PipelineEvent::DepsMet,
        "gates-started" => PipelineEvent::GatesStarted,
        "gates-passed" => PipelineEvent::GatesPassed {
            branch: need(branch, "branch")?,
            commits: commits_nz()?,
        },
        "qa-skipped" => PipelineEvent::QaSkipped {
            branch: need(branch, "branch")?,
            commits: commits_nz()?,
        },
        "gates-failed" => PipelineEvent::GatesFailed {
            reason: reason.clone().unwrap_or_default(),
        },
        "merge-succeeded" => PipelineEvent::MergeSucceeded {
            commit: need(commit, "commit")?,
        },
        "merge-conflict" => PipelineEvent::MergeConflict {
            kind: kind.clone().unwrap_or_else(|| "conflict".into()),
            reason: reason.clone().unwrap_or_default(),
        },
        "merge-failed-final" => PipelineEvent::MergeFailedFinal {
            reason: reason.clone().unwrap_or_default(),
        },
        "accepted" => PipelineEvent::Accepted,
        "block" => PipelineEvent::Block {
            reason: reason.clone().unwrap_or_default(),
        },
        "unblock" => PipelineEvent::Unblock,
        "abandon" => PipelineEvent::Abandon,
        "supersede" => PipelineEvent::Supersede {
            by: story_id(&need(by, "by")?)?,
        },
        "review-hold" => PipelineEvent::ReviewHold {
            reason: reason.clone().unwrap_or_default(),
        },
        other => {
            return Err(CliError::usage(format!(
                "unknown event {other:?}; events are: {}",
                PipelineEvent::NAMES.join(", ")
            )))
        }
    })
}

fn story_cmd(cli: &Cli, cmd: &StoryCmd) -> Result<Out, CliError> {
    let t = now();
    match cmd {
        StoryCmd::Add {
            id,
            name,
            depends_on,
            body_file,
        } => {
            let id = story_id(id)?;
            let depends_on = depends_on
                .iter()
                .map(|d| story_id(d))
                .collect::<Result<Vec<_>, _>>()?;
            let body = match body_file {
                None => None,
                Some(p) if p.as_os_str() == "-" => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                    Some(s)
                }
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", p.display())))?,
                ),
            };
            let mut node = open(cli)?;
            let name = name.clone().unwrap_or_else(|| id.as_str().to_string());
            node.execute(
                t,
                Cmd::AddStory {
                    id: id.clone(),
                    name,
                    body,
                    depends_on,
                },
            )?;
            story_out(&node, &id, t)
        }
        StoryCmd::Show { id } => {
            let id = story_id(id)?;
            story_out(&open(cli)?, &id, t)
        }
        StoryCmd::List { stage } => {
            let stage = stage
                .as_deref()
                .map(|s| {
                    StageKind::parse(s).ok_or_else(|| {
                        let kinds: Vec<&str> = StageKind::ALL.iter().map(|k| k.as_str()).collect();
                        CliError::usage(format!("unknown stage {s:?}; stages are: {}", kinds.join(", ")))
                    })
                })
                .transpose()?;
            let node = open(cli)?;
            let stories = node.stories(stage, t)?;
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
            Ok(Out {
                text,
                json: json!({ "stories": stories.iter().map(output::story).collect::<Vec<_>>() }),
            })
        }
        StoryCmd::Event {
            id,
            event,
            branch,
            commits,
            commit,
            kind,
            reason,
            by,
        } => {
            let id = story_id(id)?;
            let event = parse_event(event, branch, *commits, commit, kind, reason, by)?;
            let mut node = open(cli)?;
            node.execute(
                t,
                Cmd::Event {
                    id: id.clone(),
                    event,
                },
            )?;
            story_out(&node, &id, t)
        }
        StoryCmd::History { id } => {
            let id = story_id(id)?;
            let node = open(cli)?;
            let history = node.history(&id)?;
            let text = history
                .iter()
                .map(|h| {
                    format!(
                        "{:>8} {} {:<18} {} -> {}{}\n",
                        h.lamport,
                        h.author.short(),
                        h.event.name(),
                        h.from.kind(),
                        output::stage_line(&h.to),
                        if h.conflict { "  (concurrent)" } else { "" }
                    )
                })
                .collect();
            Ok(Out {
                text,
                json: json!({ "transitions": history.iter().map(output::transition).collect::<Vec<_>>() }),
            })
        }
        StoryCmd::Rm { id } => {
            let id = story_id(id)?;
            let mut node = open(cli)?;
            node.execute(t, Cmd::DeleteStory { id: id.clone() })?;
            Ok(Out {
                text: format!("deleted {id}\n"),
                json: json!({ "id": id.as_str(), "deleted": true }),
            })
        }
    }
}

fn story_out(node: &Node, id: &StoryId, t: Timestamp) -> Result<Out, CliError> {
    let s = node.story(id, t)?;
    Ok(Out {
        text: output::story_text(&s),
        json: output::story(&s),
    })
}

fn status(cli: &Cli) -> Result<Out, CliError> {
    let node = open(cli)?;
    let t = now();
    let counts = node.stage_counts()?;
    let vv = node.version_vector();
    let forks = node.forks()?;
    let nodes = node.nodes(t)?;
    let mut text = format!(
        "node     {} ({})\ncluster  {} ({})\npeers    none connected (no daemon running)\n",
        node.node_id(),
        own_label(&node)?,
        node.cluster_id(),
        node.cluster_name().unwrap_or("?")
    );
    text += "stories ";
    for (k, n) in &counts {
        text += &format!(" {k}={n}");
    }
    text += &format!(
        "\nops      {} from {} authors, lamport {}\n",
        vv.total(),
        vv.len(),
        node.lamport()
    );
    for n in &nodes {
        text += &format!(
            "node     {} {:<16} {} (last heartbeat {})\n",
            n.node.short(),
            n.label,
            if n.alive { "alive" } else { "stale" },
            n.last_heartbeat
        );
    }
    for f in &forks {
        text += &format!(
            "fork     author {} quarantined from seq {}\n",
            f.author.short(),
            f.at_seq
        );
    }
    Ok(Out {
        text,
        json: json!({
            "node_id": node.node_id().to_hex(),
            "cluster_id": node.cluster_id().to_hex(),
            "cluster_name": node.cluster_name(),
            "label": own_label(&node)?,
            "daemon": false,
            "peers": [],
            "stages": counts.iter().map(|(k, n)| (k.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "version_vector": vv.iter().map(|(a, s)| (a.to_hex(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "lamport": node.lamport(),
            "nodes": nodes.iter().map(|n| json!({
                "node_id": n.node.to_hex(), "label": n.label, "address": n.address,
                "last_heartbeat": output::time(n.last_heartbeat), "alive": n.alive,
            })).collect::<Vec<_>>(),
            "forks": forks.iter().map(|f| json!({"author": f.author.to_hex(), "at_seq": f.at_seq})).collect::<Vec<_>>(),
        }),
    })
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
