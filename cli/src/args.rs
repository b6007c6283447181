//! The command line's shape: the clap definitions of every command and flag, and `parse`,
//! which turns an argv into a [`Cli`] or into the usage error the contract prescribes.
//! Names and help texts are part of the contract (`docs/cli.md`).

use std::path::PathBuf;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use huskies_core::{EventKind, StageKind, MERGE_FAILURE_KINDS};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::render::{Rendered, EXIT_USAGE};

#[derive(Parser, Debug, Clone, Serialize, Deserialize)]
#[command(
    name = "huskies",
    version,
    // A flag given twice takes its last value: routing appends the resolved `--color`.
    args_override_self = true,
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
    /// Colour in human output and in usage errors (auto: when a terminal and NO_COLOR is unset).
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub(crate) color: ColorChoice,
    /// More logging on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Seconds to wait for a home another command holds before failing with home_locked.
    #[arg(
        long,
        global = true,
        env = "HUSKIES_LOCK_TIMEOUT",
        value_name = "SECS",
        default_value_t = DEFAULT_LOCK_TIMEOUT,
        value_parser = lock_timeout
    )]
    pub(crate) lock_timeout: f64,
    #[command(subcommand)]
    pub(crate) command: Commands,
}

impl Commands {
    /// Commands that never run inside a daemon.
    pub(crate) fn is_standalone(&self) -> bool {
        matches!(
            self,
            Commands::Init { .. }
                | Commands::Inspect { .. }
                | Commands::Demo
                | Commands::Bench { .. }
                | Commands::Completions { .. }
                | Commands::Daemon { .. }
                | Commands::Agent { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, ValueEnum, Serialize, Deserialize)]
pub(crate) enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
// Each subcommand's arguments are built only when it is the one used: a CLI process
// parses one command line, and building every command's arguments and help cost most of
// the parse (`docs/benchmarks.md`, session 9).
#[command(defer = true)]
pub(crate) enum Commands {
    /// Create a home and a node key; start a new cluster, join one with a ticket, or restore
    /// one from an export.
    #[command(
        after_help = "Examples:\n  huskies init --cluster-name acme --label build-1\n  \
        huskies --home restored init --restore backup.hsk\n  \
        huskies init --restore backup.hsk --key kept/node.key   # the node's own home, after a disk loss"
    )]
    Init {
        /// Name of the new cluster.
        #[arg(long, default_value = "huskies")]
        cluster_name: String,
        /// Join an existing cluster with a ticket from `huskies ticket create`.
        #[arg(long, value_name = "TICKET", conflicts_with = "restore")]
        join: Option<String>,
        /// Make the home from a file written by `huskies export` (the whole history of its
        /// cluster): all of it or nothing.
        #[arg(long, value_name = "FILE", conflicts_with = "cluster_name")]
        restore: Option<PathBuf>,
        /// With --restore: the node key to use (a copy of a lost home's node.key, kept
        /// apart from it), so the home is that node again; without it the home gets a new
        /// key and is not a member.
        #[arg(long, value_name = "FILE", requires = "restore")]
        key: Option<PathBuf>,
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
    /// Claim a story for this node (refused while another node holds a live claim). The
    /// answer says whether the claim is confirmed: every alive member has seen it, so no
    /// alive member can win against it any more.
    #[command(
        after_help = "Examples:\n  huskies claim 42_fix_login --ttl 900\n  huskies claim 42_fix_login --wait 10   # exit 0 only once confirmed"
    )]
    Claim {
        /// Story id.
        id: String,
        /// Lease length in seconds.
        #[arg(long, default_value_t = 600)]
        ttl: u32,
        /// Wait up to SECS for the claim to be confirmed: exit 0 once it is, 1
        /// (claim_conflict) if another node's claim won meanwhile, 3 (network) naming the
        /// members that had not confirmed it in time.
        #[arg(long, value_name = "SECS", conflicts_with = "check")]
        wait: Option<u64>,
        /// Only report the story's claim (held by this node: whether it is confirmed);
        /// take or renew nothing.
        #[arg(long)]
        check: bool,
    },
    /// Give up this node's claim on a story (or, with --force, end another node's).
    #[command(after_help = "Example:\n  huskies release 42_fix_login")]
    Release {
        /// Story id.
        id: String,
        /// Release even though another node holds a live claim: its lease ends, and the op
        /// records the override.
        #[arg(long)]
        force: bool,
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
    /// Verify and merge signed ops from a file written by `huskies export`. A damaged file is
    /// refused whole; exit 1 when any op was rejected.
    #[command(after_help = "Example:\n  huskies import backup.hsk")]
    Import {
        /// The file.
        file: PathBuf,
    },
    /// Verify a file written by `huskies export` and show its cluster, stories and history;
    /// needs no home and changes nothing. Exit 1 when anything in it does not verify.
    #[command(after_help = "Example:\n  huskies --json inspect backup.hsk")]
    Inspect {
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
        /// Commands each in a session of its own (open the home, execute, close: the CLI
        /// without a daemon) in the interactive phase; 0 skips it.
        #[arg(long, default_value_t = 0)]
        session_ops: usize,
        /// Run only the interactive phase (single-command appends, latency, disk).
        #[arg(long)]
        interactive_only: bool,
        /// Internal: run one side of the sync phase (`serve` or `catch-up`) in this process,
        /// so that its peak memory is its own; the bench starts these itself.
        #[arg(long, hide = true, value_name = "ROLE", requires = "sync_home")]
        sync_child: Option<String>,
        /// Internal: the home of `--sync-child`.
        #[arg(long, hide = true, value_name = "DIR")]
        sync_home: Option<PathBuf>,
        /// Internal: the join ticket of `--sync-child catch-up`.
        #[arg(long, hide = true, value_name = "TICKET")]
        sync_ticket: Option<String>,
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
    #[command(after_help = "Install for this user (no root), then open a new shell:\n  \
        bash: mkdir -p ~/.local/share/bash-completion/completions && huskies completions bash > ~/.local/share/bash-completion/completions/huskies\n  \
        zsh:  mkdir -p ~/.zfunc && huskies completions zsh > ~/.zfunc/_huskies  (and in ~/.zshrc, before compinit: fpath=(~/.zfunc $fpath))\n  \
        fish: mkdir -p ~/.config/fish/completions && huskies completions fish > ~/.config/fish/completions/huskies.fish\n\n\
        Example:\n  huskies completions bash > ~/.local/share/bash-completion/completions/huskies")]
    // Standalone (never sent to a daemon), and the shell type has no serde form.
    #[serde(skip)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
// Each subcommand's arguments are built only when it is the one used: a CLI process
// parses one command line, and building every command's arguments and help cost most of
// the parse (`docs/benchmarks.md`, session 9).
#[command(defer = true)]
pub(crate) enum StoryCmd {
    /// Add a story to the backlog.
    #[command(
        after_help = "Example:\n  huskies story add 42_fix_login --name 'Fix login' --depends-on 41_auth"
    )]
    Add {
        /// Story id: a letter or digit, then letters, digits, '_', '-', '.' (at most 128 bytes).
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
    /// List stories in the natural order of their ids (1_a before 10_b).
    #[command(after_help = "Example:\n  huskies story list --stage merge")]
    List {
        // Help: "Only this stage: <the core's StageKind names>".
        #[arg(long, value_name = "KIND", help = stage_help(), value_parser = stage_names(), hide_possible_values = true)]
        stage: Option<String>,
        /// Only stories with conflicts (transitions made concurrently by two nodes).
        #[arg(long)]
        conflicts: bool,
    },
    /// Apply a pipeline event; prints the story after it.
    #[command(
        after_help = event_help()
    )]
    Event {
        /// Story id.
        id: String,
        /// Event name.
        #[arg(value_parser = event_names(), hide_possible_values = true)]
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
        // Help: "Failure kind (merge-conflict): <the core's MERGE_FAILURE_KINDS>".
        #[arg(long, help = kind_help())]
        kind: Option<String>,
        /// Reason, required and not blank (gates-failed, merge-conflict, merge-failed-final,
        /// block, review-hold).
        #[arg(long)]
        reason: Option<String>,
        /// The superseding story (supersede).
        #[arg(long)]
        by: Option<String>,
        /// Apply it even though another node holds a live claim on the story (recorded in
        /// the op and shown by `story history`).
        #[arg(long)]
        force: bool,
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
        /// Delete it even though another node holds a live claim on it (recorded in the op).
        #[arg(long)]
        force: bool,
    },
}

/// `--lock-timeout`'s default, in seconds.
const DEFAULT_LOCK_TIMEOUT: f64 = 5.0;

/// `--lock-timeout`: a finite, non-negative number of seconds (at most a day). Empty (as
/// from `HUSKIES_LOCK_TIMEOUT=`, set but empty) means the default, as if unset.
fn lock_timeout(s: &str) -> Result<f64, String> {
    if s.trim().is_empty() {
        return Ok(DEFAULT_LOCK_TIMEOUT);
    }
    match s.parse::<f64>() {
        Ok(secs) if secs.is_finite() && (0.0..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!("{s:?} is not a number of seconds from 0 to 86400")),
    }
}

/// `--stage`'s help: the stage names come from the core's `StageKind`, never a copy.
fn stage_help() -> String {
    let kinds: Vec<&str> = StageKind::ALL.iter().map(|k| k.as_str()).collect();
    format!("Only this stage: {}", kinds.join(", "))
}

/// Any text, advertising `names` to shell completions; the command checks the text itself
/// (with the core's parser and its message), so completion and validation share one list.
#[derive(Clone)]
pub(crate) struct Names(fn() -> Vec<&'static str>);

impl clap::builder::TypedValueParser for Names {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        clap::builder::StringValueParser::new().parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(
            (self.0)().into_iter().map(clap::builder::PossibleValue::new),
        ))
    }
}

/// The stage kinds, from the core's `StageKind`.
fn stage_names() -> Names {
    Names(|| StageKind::ALL.iter().map(|k| k.as_str()).collect())
}

/// The event names, from the core's `EventKind`.
fn event_names() -> Names {
    Names(|| EventKind::ALL.iter().map(|k| k.as_str()).collect())
}

/// `--kind`'s help: the merge failure kinds come from the core's `MERGE_FAILURE_KINDS`.
fn kind_help() -> String {
    let kinds: Vec<&str> = MERGE_FAILURE_KINDS.iter().map(|(k, _)| *k).collect();
    format!(
        "Failure kind (merge-conflict; default conflict): {}",
        kinds.join(", ")
    )
}

/// `story event`'s help: the event names come from the core's `EventKind`, the failure
/// kinds from `MERGE_FAILURE_KINDS`, never a copy.
fn event_help() -> String {
    let events: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    let kinds: String = MERGE_FAILURE_KINDS
        .iter()
        .map(|(k, why)| format!("\n  {k:<9} {why}"))
        .collect();
    format!(
        "Events: {}\n\nMerge failure kinds (merge-conflict --kind):{kinds}\n\n\
        Examples:\n  huskies story event 42_fix_login gates-passed --branch feature/42 --commits 3\n  \
        huskies story event 42_fix_login merge-conflict --kind conflict --reason 'src/a.rs'",
        events.join(", ")
    )
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
// Each subcommand's arguments are built only when it is the one used: a CLI process
// parses one command line, and building every command's arguments and help cost most of
// the parse (`docs/benchmarks.md`, session 9).
#[command(defer = true)]
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

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
// Each subcommand's arguments are built only when it is the one used: a CLI process
// parses one command line, and building every command's arguments and help cost most of
// the parse (`docs/benchmarks.md`, session 9).
#[command(defer = true)]
pub(crate) enum TicketCmd {
    /// Create a one-time join ticket (admins only). The new node runs `huskies init --join TICKET`
    /// while this node's daemon is running.
    #[command(
        after_help = "The ticket names the address the new node dials: --address, else the running daemon's \
        advertised address, else the [daemon] advertise of config.toml; with none of them it is refused.\n\n\
        Examples:\n  huskies ticket create --ttl 600\n  huskies ticket create --address ws://10.0.0.5:3001/crdt-sync"
    )]
    Create {
        /// Seconds the ticket stays valid.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// The address the new node dials (this node's daemon, e.g. ws://10.0.0.5:3001/crdt-sync).
        #[arg(long, value_name = "URL")]
        address: Option<String>,
    },
}

#[derive(Subcommand, Debug, Clone, Serialize, Deserialize)]
// Each subcommand's arguments are built only when it is the one used: a CLI process
// parses one command line, and building every command's arguments and help cost most of
// the parse (`docs/benchmarks.md`, session 9).
#[command(defer = true)]
pub(crate) enum KeyCmd {
    /// Replace this node's signing key; membership moves to the new key.
    #[command(after_help = "Example:\n  huskies key rotate")]
    Rotate,
}

/// Parses a command line (without the program name); a parse failure is rendered as the
/// contract says (help and version are successes).
pub(crate) fn parse(argv: &[String]) -> Result<Cli, Rendered> {
    parse_with(&mut Cli::command(), argv)
}

/// [`parse`] with a command tree the caller built once (`Cli::command()`) and reuses: a
/// daemon parses every control request's argv, and building clap's tree of every command,
/// flag and help text costs as much CPU as executing the command itself. The result is
/// the same as [`parse`]'s, except that the tree reads `HUSKIES_HOME` and
/// `HUSKIES_LOCK_TIMEOUT` when it is built (the daemon's own environment, fixed while it
/// runs).
pub(crate) fn parse_with(cmd: &mut clap::Command, argv: &[String]) -> Result<Cli, Rendered> {
    use clap::FromArgMatches as _;
    let json_requested = argv.iter().any(|a| a == "--json");
    let parsed = cmd
        .try_get_matches_from_mut(std::iter::once("huskies".to_string()).chain(argv.iter().cloned()))
        .and_then(|mut matches| Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(cmd)));
    parsed.map_err(|e| {
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
        if json_requested {
            let msg = usage_message(&e.render().to_string());
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
            let styled = e.render();
            Rendered {
                stdout: Vec::new(),
                stderr: if usage_colour(argv) {
                    styled.ansi().to_string()
                } else {
                    styled.to_string()
                },
                code: EXIT_USAGE,
            }
        }
    })
}

/// Whether a usage error on stderr is coloured: the last `--color` given on the command line
/// decides (the command line did not parse, so it is read as it is); `auto`, or none, colours
/// a terminal unless `NO_COLOR` is set.
fn usage_colour(argv: &[String]) -> bool {
    let mut choice = "auto";
    let mut args = argv.iter().take_while(|a| *a != "--");
    while let Some(a) = args.next() {
        if a == "--color" {
            if let Some(v) = args.next() {
                choice = v;
            }
        } else if let Some(v) = a.strip_prefix("--color=") {
            choice = v;
        }
    }
    match choice {
        "always" => true,
        "never" => false,
        _ => crate::render::no_color_unset() && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    }
}

/// A clap error as one line for `--json`: its first paragraph (which may run over several
/// lines, e.g. the list of missing arguments) joined, and the usage line, without the
/// "For more information" hint. Human mode prints clap's own rendering instead.
fn usage_message(rendered: &str) -> String {
    let mut paragraphs = rendered.split("\n\n").map(|p| {
        p.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    });
    let first = paragraphs.next().unwrap_or_default();
    let mut msg = first.trim_start_matches("error: ").to_string();
    if msg.is_empty() {
        msg = "usage error".into();
    }
    if let Some(usage) = paragraphs.find(|p| p.starts_with("Usage: ")) {
        msg = format!("{msg}; usage: {}", usage.trim_start_matches("Usage: "));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_with, usage_message, Cli};
    use clap::CommandFactory as _;

    /// One tree reused for many command lines (what the daemon does) parses each exactly as
    /// a fresh tree does: the same values, and the same usage errors and help, in any order
    /// (an error or a help text must leave nothing behind for the next line).
    #[test]
    fn a_reused_command_tree_parses_each_line_as_a_fresh_one() {
        let lines: &[&[&str]] = &[
            &["story", "add", "1_a", "--name", "A story"],
            &["--json", "story", "add", "bad id!"],
            &[
                "story",
                "event",
                "1_a",
                "gates-passed",
                "--branch",
                "b",
                "--commits",
                "2",
            ],
            &["story", "event", "1_a", "gates-passed", "--commits", "two"],
            &["--json", "story", "nonsense"],
            &["story", "--help"],
            &["claim", "1_a", "--ttl", "60", "--color", "never"],
            &["--quiet", "--lock-timeout", "2.5", "log", "--follow"],
            &[
                "story",
                "add",
                "2_b",
                "--depends-on",
                "1_a",
                "--depends-on",
                "0_z",
                "--json",
            ],
            &["import"],
            &["status", "--json"],
        ];
        let mut tree = Cli::command();
        for round in 0..2 {
            for line in lines {
                let argv: Vec<String> = line.iter().map(|a| a.to_string()).collect();
                let fresh = parse(&argv);
                let reused = parse_with(&mut tree, &argv);
                match (fresh, reused) {
                    (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{line:?}"),
                    (Err(a), Err(b)) => {
                        assert_eq!(
                            (a.code, &a.stdout, &a.stderr),
                            (b.code, &b.stdout, &b.stderr),
                            "{line:?} (round {round})"
                        );
                        assert!(!a.stdout.is_empty() || !a.stderr.is_empty(), "{line:?}");
                    }
                    (a, b) => panic!("{line:?}: fresh ok {}, reused ok {}", a.is_ok(), b.is_ok()),
                }
            }
        }
    }

    #[test]
    fn a_usage_message_keeps_every_line_of_the_error_and_the_usage() {
        let rendered = "error: the following required arguments were not provided:\n  <FILE>\n\n\
            Usage: huskies import <FILE>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            usage_message(rendered),
            "the following required arguments were not provided: <FILE>; usage: huskies import <FILE>"
        );
        assert_eq!(usage_message(""), "usage error");
    }
}
