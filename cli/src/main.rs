//! `huskies`: the command line of the huskies state layer.
//!
//! The contract (names, JSON shapes, exit codes, error kinds) is `shared/spec/cli.md`;
//! scripts outside this repository rely on it.

mod agent;
mod bench;
mod bench_sync;
mod config;
mod demo;
mod follow;
mod home;
mod output;
mod route;
mod standalone;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use huskies_core::{
    Command as Cmd, Error, ErrorKind, Node, NodeConfig, NodeId, PipelineEvent, StageKind, StoryId, Timestamp,
    VersionVector,
};
use serde_json::{json, Value};

/// mimalloc, with transparent huge pages off. Appends and ingests allocate and free many
/// small buffers (ops, records, sled's pages) on several threads; glibc's allocator spent
/// about a third of the non-signing time of an append there, and mimalloc with huge pages
/// spent it zeroing 2 MiB pages instead (`docs/benchmarks.md`, session 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

impl Commands {
    /// Commands that never run inside a daemon.
    fn is_standalone(&self) -> bool {
        matches!(
            self,
            Commands::Init { .. }
                | Commands::Demo
                | Commands::Bench { .. }
                | Commands::Completions { .. }
                | Commands::Daemon { .. }
                | Commands::Agent { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Create a home and a node key; start a new cluster, or join one with a ticket.
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
        /// Keep printing ops as they commit (JSON Lines with --json).
        #[arg(long)]
        follow: bool,
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
    /// Run the sync daemon: serve /crdt-sync, dial peers, heartbeat, run policies.
    #[command(
        after_help = "Settings come from flags, then the [daemon] table of <home>/config.toml, then defaults.\n\n\
        Examples:\n  huskies daemon\n  huskies daemon --listen 0.0.0.0:3001 --advertise ws://10.0.0.5:3001/crdt-sync\n  \
        huskies daemon --listen 127.0.0.1:3002 --peer ws://127.0.0.1:3001/crdt-sync"
    )]
    Daemon {
        /// Address for /crdt-sync and /health (default 127.0.0.1:3001).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// A peer to keep connected (repeatable), e.g. ws://host:3001/crdt-sync.
        #[arg(long = "peer", value_name = "URL")]
        peers: Vec<String>,
        /// Extra peers discovered from presence to keep connected (default 3).
        #[arg(long, value_name = "N")]
        max_mesh_peers: Option<usize>,
        /// The address other nodes should dial (default: ws://<listen>/crdt-sync).
        #[arg(long, value_name = "URL")]
        advertise: Option<String>,
        /// This node's label in presence.
        #[arg(long)]
        label: Option<String>,
    },
    /// Headless build agent: claim coding stories and run CMD for each.
    #[command(
        after_help = "CMD runs as `sh -c CMD` with HUSKIES_STORY_ID, HUSKIES_STORY_NAME, HUSKIES_HOME and \
        HUSKIES_NODE_ID set. Exit 0 moves the story to qa; any other status leaves it in coding for another node.\n\n\
        Example:\n  huskies agent --rendezvous ws://10.0.0.5:3001/crdt-sync --exec ./build-story.sh --max-parallel 2"
    )]
    Agent {
        /// The peer to sync with, e.g. ws://host:3001/crdt-sync.
        #[arg(long, value_name = "URL")]
        rendezvous: String,
        /// The command to run per story.
        #[arg(long, value_name = "CMD")]
        exec: String,
        /// Claim lease in seconds (renewed while the command runs).
        #[arg(long, default_value_t = 600)]
        ttl: u32,
        /// Most stories worked at once.
        #[arg(long, default_value_t = 1)]
        max_parallel: usize,
        /// Where this agent's own /crdt-sync listens (default: a free loopback port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// This node's label in presence.
        #[arg(long)]
        label: Option<String>,
        /// Milliseconds between scans for work.
        #[arg(long, default_value_t = 1000, hide = true)]
        scan_interval_ms: u64,
        /// Milliseconds a fresh claim must survive before the command starts (lets a
        /// concurrent claim from another node arrive first).
        #[arg(long, default_value_t = 1500, hide = true)]
        settle_ms: u64,
    },
    /// One-time join tickets for new nodes.
    #[command(subcommand)]
    Ticket(TicketCmd),
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
        // Help: "Only this stage: <the core's StageKind names>".
        #[arg(long, value_name = "KIND", help = stage_help())]
        stage: Option<String>,
    },
    /// Apply a pipeline event; prints the story after it.
    #[command(
        after_help = event_help()
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

/// `--stage`'s help: the stage names come from the core's `StageKind`, never a copy.
fn stage_help() -> String {
    let kinds: Vec<&str> = StageKind::ALL.iter().map(|k| k.as_str()).collect();
    format!("Only this stage: {}", kinds.join(", "))
}

/// `story event`'s help: the event names come from the core's `EventKind`, never a copy.
fn event_help() -> String {
    let events: Vec<&str> = huskies_core::EventKind::ALL.iter().map(|k| k.as_str()).collect();
    format!(
        "Events: {}\n\n\
        Examples:\n  huskies story event 42_fix_login gates-passed --branch feature/42 --commits 3\n  \
        huskies story event 42_fix_login merge-conflict --kind conflict --reason 'src/a.rs'",
        events.join(", ")
    )
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
enum TicketCmd {
    /// Create a one-time join ticket (admins only). The new node runs `huskies init --join TICKET`
    /// while this node's daemon is running.
    #[command(after_help = "Example:\n  huskies ticket create --ttl 600")]
    Create {
        /// Seconds the ticket stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
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

/// What a command printed: JSON for `--json`, text otherwise (or raw bytes).
pub(crate) struct Out {
    json: Value,
    text: String,
    raw: Option<Vec<u8>>,
}

impl Out {
    fn new(text: String, json: Value) -> Out {
        Out {
            json,
            text,
            raw: None,
        }
    }
}

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(&argv) {
        Ok(cli) => cli,
        Err(r) => return emit(r),
    };
    if cli.command.is_standalone() {
        return emit(render(&cli, standalone::run(&cli)));
    }
    let root = match home::resolve(cli.home.as_deref()) {
        Ok(root) => root,
        Err(e) => return emit(render(&cli, Err(e.into()))),
    };
    if let Commands::Log { follow: true, .. } = &cli.command {
        return follow::run(&cli, &root, &argv);
    }
    match route::through_daemon(&cli, &root, &argv) {
        Some(r) => emit(r),
        None => {
            let mut slot = NodeSlot::Direct(None);
            let r = run(&cli, &mut slot);
            emit(render(&cli, r))
        }
    }
}

/// Parses a command line (without the program name); a parse failure is rendered as the
/// contract says (help and version are successes).
pub(crate) fn parse(argv: &[String]) -> Result<Cli, Rendered> {
    let json_requested = argv.iter().any(|a| a == "--json");
    Cli::try_parse_from(std::iter::once("huskies".to_string()).chain(argv.iter().cloned())).map_err(|e| {
        use clap::error::ErrorKind as K;
        if matches!(
            e.kind(),
            K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            return Rendered {
                stdout: e.to_string().into_bytes(),
                stderr: String::new(),
                code: 0,
            };
        }
        let msg = e
            .to_string()
            .lines()
            .next()
            .unwrap_or("usage error")
            .trim_start_matches("error: ")
            .to_string();
        if json_requested {
            Rendered {
                stdout: format!(
                    "{}\n",
                    json!({ "error": { "kind": "invalid_argument", "message": msg } })
                )
                .into_bytes(),
                stderr: format!("huskies: {msg}\n"),
                code: EXIT_USAGE,
            }
        } else {
            Rendered {
                stdout: Vec::new(),
                stderr: e.render().ansi().to_string(),
                code: EXIT_USAGE,
            }
        }
    })
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

fn emit(r: Rendered) -> ExitCode {
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

fn story_id(s: &str) -> Result<StoryId, CliError> {
    StoryId::new(s).map_err(|e| CliError::usage(e.to_string()))
}

fn node_id(s: &str) -> Result<NodeId, CliError> {
    s.parse::<NodeId>().map_err(|e| CliError::usage(e.to_string()))
}

/// The node a command works on: opened from the home on first use, or the daemon's own
/// node when the command runs inside the daemon (sent over its control socket).
pub(crate) enum NodeSlot<'a> {
    /// Open the home when first needed.
    Direct(Option<Box<Node>>),
    /// Inside a running daemon, with the client's standard input.
    Daemon(&'a mut Node, &'a huskies_daemon::HealthReport, Option<&'a str>),
}

impl NodeSlot<'_> {
    fn get(&mut self, cli: &Cli) -> Result<&mut Node, CliError> {
        match self {
            NodeSlot::Daemon(node, _, _) => Ok(node),
            NodeSlot::Direct(slot) => {
                if slot.is_none() {
                    let root = home::resolve(cli.home.as_deref())?;
                    *slot = Some(Box::new(Node::open(&root, NodeConfig::default())?));
                }
                Ok(slot.as_mut().expect("opened"))
            }
        }
    }

    /// The command's standard input (the client's, when running inside the daemon).
    fn read_stdin(&self) -> Result<String, CliError> {
        match self {
            NodeSlot::Daemon(_, _, stdin) => Ok(stdin.unwrap_or_default().to_string()),
            NodeSlot::Direct(_) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                Ok(s)
            }
        }
    }

    fn health(&self) -> Option<&huskies_daemon::HealthReport> {
        match self {
            NodeSlot::Daemon(_, h, _) => Some(h),
            NodeSlot::Direct(_) => None,
        }
    }
}

fn progress_enabled(cli: &Cli) -> bool {
    use std::io::IsTerminal;
    !cli.json && !cli.quiet && std::io::stderr().is_terminal()
}

fn run(cli: &Cli, slot: &mut NodeSlot<'_>) -> Result<Option<Out>, CliError> {
    let out = match &cli.command {
        Commands::Id => {
            let node = slot.get(cli)?;
            let label = own_label(node)?;
            id_out(node, &label, "")
        }
        Commands::Story(cmd) => story_cmd(cli, slot, cmd)?,
        Commands::Claim { id, ttl } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
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
                raw: None,
                text: format!("claimed {id} for {ttl} s\n"),
                json: json!({ "story": id.as_str(), "claim": claim }),
            }
        }
        Commands::Release { id } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            node.execute(now(), Cmd::Release { id: id.clone() })?;
            Out {
                raw: None,
                text: format!("released {id}\n"),
                json: json!({ "story": id.as_str(), "released": true }),
            }
        }
        Commands::Log { author, follow } => {
            let author = author.as_deref().map(node_id).transpose()?;
            let node = slot.get(cli)?;
            let ops = node.log(author.as_ref())?;
            if *follow {
                // A stream: JSON Lines (or text lines), continued by the follower.
                return Ok(Some(Out {
                    raw: Some(op_lines(cli, &ops).into_bytes()),
                    text: String::new(),
                    json: Value::Null,
                }));
            }
            Out::new(
                op_lines(cli, &ops),
                json!({ "ops": ops.iter().map(output::op).collect::<Vec<_>>() }),
            )
        }
        Commands::Verify => {
            let node = slot.get(cli)?;
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
                raw: None,
                text,
                json: output::verify(&report),
            }
        }
        Commands::Status => status(cli, slot)?,
        Commands::Member(MemberCmd::List) => {
            let node = slot.get(cli)?;
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
                raw: None,
                text,
                json: json!({ "members": members.iter().map(output::member).collect::<Vec<_>>() }),
            }
        }
        Commands::Member(MemberCmd::Remove { node: target }) => {
            let target = node_id(target)?;
            let node = slot.get(cli)?;
            node.execute(now(), Cmd::RemoveMember { node: target })?;
            Out {
                raw: None,
                text: format!("removed {target}\n"),
                json: json!({ "node_id": target.to_hex(), "removed": true }),
            }
        }
        Commands::Key(KeyCmd::Rotate) => {
            let node = slot.get(cli)?;
            let old = node.node_id();
            node.rotate_key(now(), &mut rand_core::OsRng)?;
            let new = node.node_id();
            Out {
                raw: None,
                text: format!("rotated key: {old} -> {new}\n"),
                json: json!({ "old_node_id": old.to_hex(), "node_id": new.to_hex() }),
            }
        }
        Commands::Export { out } => {
            let node = slot.get(cli)?;
            let bytes = node.export_since(&VersionVector::default())?;
            let count = node.version_vector().total();
            match out {
                Some(path) => {
                    write_file_atomically(path, &bytes)?;
                    Out {
                        raw: None,
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
                    return Ok(Some(Out {
                        raw: Some(bytes),
                        text: String::new(),
                        json: Value::Null,
                    }));
                }
            }
        }
        Commands::Import { file } => {
            let bytes = std::fs::read(file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let show = progress_enabled(cli) && slot.health().is_none();
            let node = slot.get(cli)?;
            let bar = progress::bar(show, 0, "importing");
            let report = node.import_bundle(&bytes, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })?;
            bar.finish_and_clear();
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
                raw: None,
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
        Commands::Init { .. }
        | Commands::Demo
        | Commands::Bench { .. }
        | Commands::Completions { .. }
        | Commands::Daemon { .. }
        | Commands::Agent { .. } => return Err(CliError::usage("this command does not run inside a daemon")),
        Commands::Ticket(TicketCmd::Create { ttl }) => {
            let address = match slot.health() {
                Some(h) => h.address.clone(),
                None => config::load(&home::resolve(cli.home.as_deref())?)?.advertise_address(),
            };
            let node = slot.get(cli)?;
            let ticket = node.create_ticket(now(), *ttl, address.clone(), &mut rand_core::OsRng)?;
            Out::new(
                format!("{ticket}\n"),
                json!({ "ticket": ticket.to_string(), "address": address, "expires_at": output::time(ticket.expires_at) }),
            )
        }
    };
    Ok(Some(out))
}

/// Ops as lines: one JSON object per line with `--json`, else one text line each.
pub(crate) fn op_lines(cli: &Cli, ops: &[huskies_core::OpSummary]) -> String {
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
        raw: None,
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
    let event: huskies_core::EventKind = name
        .parse()
        .map_err(|e: huskies_core::UnknownEvent| CliError::usage(e.to_string()))?;
    let args = huskies_core::EventArgs {
        branch: branch.clone(),
        commits,
        commit: commit.clone(),
        kind: kind.clone(),
        reason: reason.clone(),
        by: by.as_deref().map(story_id).transpose()?,
    };
    event.with_args(args).map_err(|e| match e {
        huskies_core::EventArgError::Missing {
            event,
            arg: "commits",
        } => CliError::usage(format!("event {event} needs --commits N")),
        huskies_core::EventArgError::Missing { event, arg } => {
            CliError::usage(format!("event {event} needs --{arg}"))
        }
        huskies_core::EventArgError::ZeroCommits => {
            CliError::usage("--commits must be at least 1: a merge needs a commit")
        }
    })
}

fn story_cmd(cli: &Cli, slot: &mut NodeSlot<'_>, cmd: &StoryCmd) -> Result<Out, CliError> {
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
                Some(p) if p.as_os_str() == "-" => Some(slot.read_stdin()?),
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", p.display())))?,
                ),
            };
            let node = slot.get(cli)?;
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
            story_out(node, &id, t)
        }
        StoryCmd::Show { id } => {
            let id = story_id(id)?;
            story_out(slot.get(cli)?, &id, t)
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
            let node = slot.get(cli)?;
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
                raw: None,
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
            let node = slot.get(cli)?;
            node.execute(
                t,
                Cmd::Event {
                    id: id.clone(),
                    event,
                },
            )?;
            story_out(node, &id, t)
        }
        StoryCmd::History { id } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
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
                raw: None,
                text,
                json: json!({ "transitions": history.iter().map(output::transition).collect::<Vec<_>>() }),
            })
        }
        StoryCmd::Rm { id } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            node.execute(t, Cmd::DeleteStory { id: id.clone() })?;
            Ok(Out {
                raw: None,
                text: format!("deleted {id}\n"),
                json: json!({ "id": id.as_str(), "deleted": true }),
            })
        }
    }
}

fn story_out(node: &Node, id: &StoryId, t: Timestamp) -> Result<Out, CliError> {
    let s = node.story(id, t)?;
    Ok(Out {
        raw: None,
        text: output::story_text(&s),
        json: output::story(&s),
    })
}

fn status(cli: &Cli, slot: &mut NodeSlot<'_>) -> Result<Out, CliError> {
    let health = slot.health().cloned();
    let node = slot.get(cli)?;
    let t = now();
    let counts = node.stage_counts()?;
    let vv = node.version_vector();
    let forks = node.forks()?;
    let nodes = node.nodes(t)?;
    let mut text = format!(
        "node     {} ({})\ncluster  {} ({})\n",
        node.node_id(),
        own_label(node)?,
        node.cluster_id(),
        node.cluster_name().unwrap_or("?")
    );
    match &health {
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
    let missing = node.own_ops_missing();
    if let Some((held, acknowledged)) = missing {
        text += &format!(
            "WARNING  this store holds {held} of the {acknowledged} ops of this node's own chain it \
             had acknowledged; it writes nothing until a peer sends them back (run the daemon)\n"
        );
    }
    Ok(Out {
        raw: None,
        text,
        json: json!({
            "node_id": node.node_id().to_hex(),
            "cluster_id": node.cluster_id().to_hex(),
            "cluster_name": node.cluster_name(),
            "label": own_label(node)?,
            "daemon": health.is_some(),
            "peers": health.as_ref().map(|h| json!(h.peers)).unwrap_or_else(|| json!([])),
            "health": health,
            "stages": counts.iter().map(|(k, n)| (k.as_str().to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "version_vector": vv.iter().map(|(a, s)| (a.to_hex(), json!(s))).collect::<serde_json::Map<_, _>>(),
            "lamport": node.lamport(),
            "nodes": nodes.iter().map(|n| json!({
                "node_id": n.node.to_hex(), "label": n.label, "address": n.address,
                "last_heartbeat": output::time(n.last_heartbeat), "alive": n.alive,
            })).collect::<Vec<_>>(),
            "forks": forks.iter().map(|f| json!({"author": f.author.to_hex(), "at_seq": f.at_seq})).collect::<Vec<_>>(),
            "own_ops_missing": missing.map(|(held, acknowledged)| json!({"held": held, "acknowledged": acknowledged})),
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
