//! The command line's shape: the clap definitions of every command and flag, and `parse`,
//! which turns an argv into a [`Cli`] or into the usage error the contract prescribes.
//! Names and help texts are part of the contract (`docs/cli.md`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use huskies_core::{EventKind, StageKind};
use serde_json::json;

use crate::render::{Rendered, EXIT_USAGE};

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
pub(crate) struct Cli {
    /// The node's home directory.
    #[arg(long, global = true, env = "HUSKIES_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
    /// Print exactly one JSON document on stdout (JSON Lines for streams).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Print nothing but data and errors; no progress.
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    /// Colour in human output.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub(crate) color: ColorChoice,
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Commands,
}

impl Commands {
    /// Commands that never run inside a daemon.
    pub(crate) fn is_standalone(&self) -> bool {
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
pub(crate) enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Commands {
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
    /// Lifecycle event envelopes from the local log, in Lamport order (docs/events.md).
    #[command(
        after_help = "With --json each line is one envelope plus \"cursor\": pass it to --since to resume after \
        that event.\n\nExamples:\n  huskies --json events\n  huskies --json events --since \"$CURSOR\" --follow"
    )]
    Events {
        /// Resume after this cursor (printed with each event); default: the start of the log.
        #[arg(long, value_name = "CURSOR")]
        since: Option<String>,
        /// Keep printing events as ops commit.
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
        /// Single-command appends in the interactive phase (each its own flush).
        #[arg(long, default_value_t = 10_000)]
        interactive_ops: usize,
        /// `story add` requests timed through a running daemon in the interactive phase.
        #[arg(long, default_value_t = 1_000)]
        daemon_ops: usize,
        /// Run only the interactive phase (single-command appends, latency, disk).
        #[arg(long)]
        interactive_only: bool,
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
pub(crate) enum StoryCmd {
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
    let events: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    format!(
        "Events: {}\n\n\
        Examples:\n  huskies story event 42_fix_login gates-passed --branch feature/42 --commits 3\n  \
        huskies story event 42_fix_login merge-conflict --kind conflict --reason 'src/a.rs'",
        events.join(", ")
    )
}

#[derive(Subcommand, Debug)]
pub(crate) enum MemberCmd {
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
pub(crate) enum TicketCmd {
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
pub(crate) enum KeyCmd {
    /// Replace this node's signing key; membership moves to the new key.
    #[command(after_help = "Example:\n  huskies key rotate")]
    Rotate,
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
