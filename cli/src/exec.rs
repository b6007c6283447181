//! Command execution: every command that works on a node, run on a node opened from the
//! home or on a running daemon's own node (`NodeSlot`). Each returns the values its output
//! is rendered from (`render`); nothing here formats output.

use std::path::Path;

use huskies_core::{
    Command as Cmd, Node, NodeConfig, NodeId, PipelineEvent, StageKind, StoryId, Timestamp, VersionVector,
    EXPORT_BUNDLE_BYTES,
};

use crate::args::{Cli, Commands, KeyCmd, MemberCmd, StoryCmd, TicketCmd};
use crate::render::{self, progress, CliError, Out, StatusFacts, EXIT_ENV};
use crate::{config, home};

/// The wall clock, read once per command: the core never reads it.
pub(crate) fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

pub(crate) fn story_id(s: &str) -> Result<StoryId, CliError> {
    StoryId::new(s).map_err(|e| CliError::usage(e.to_string()))
}

pub(crate) fn node_id(s: &str) -> Result<NodeId, CliError> {
    s.parse::<NodeId>().map_err(|e| CliError::usage(e.to_string()))
}

/// The node a command works on: opened from the home on first use, or the daemon's own
/// node when the command runs inside the daemon (sent over its control socket).
pub(crate) enum NodeSlot<'a> {
    /// Open the home when first needed.
    Direct(Option<Box<Node>>),
    /// Inside a running daemon (its health on demand), with the client's standard input.
    Daemon(&'a mut Node, &'a huskies_daemon::Health<'a>, Option<&'a str>),
}

impl NodeSlot<'_> {
    pub(crate) fn get(&mut self, cli: &Cli) -> Result<&mut Node, CliError> {
        match self {
            NodeSlot::Daemon(node, _, _) => Ok(node),
            NodeSlot::Direct(slot) => {
                if slot.is_none() {
                    let root = home::resolve(cli.home.as_deref())?;
                    *slot = Some(Box::new(home::open_waiting(&root, lock_wait(cli))?));
                }
                Ok(slot.as_mut().expect("opened"))
            }
        }
    }

    /// The command's standard input (the client's, when running inside the daemon).
    pub(crate) fn read_stdin(&self) -> Result<String, CliError> {
        match self {
            NodeSlot::Daemon(_, _, stdin) => Ok(stdin.unwrap_or_default().to_string()),
            NodeSlot::Direct(_) => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                Ok(s)
            }
        }
    }

    /// The daemon's health report, computed now; `None` outside a daemon.
    pub(crate) fn health(&self) -> Option<huskies_daemon::HealthReport> {
        match self {
            NodeSlot::Daemon(node, h, _) => Some(h.report(node)),
            NodeSlot::Direct(_) => None,
        }
    }

    /// Whether the command runs inside a daemon.
    pub(crate) fn in_daemon(&self) -> bool {
        matches!(self, NodeSlot::Daemon(..))
    }
}

/// How long a command waits for a home held by another command (`--lock-timeout`).
pub(crate) fn lock_wait(cli: &Cli) -> std::time::Duration {
    std::time::Duration::from_secs_f64(cli.lock_timeout)
}

/// Progress bars on stderr: only for a person watching a terminal.
pub(crate) fn progress_enabled(cli: &Cli) -> bool {
    use std::io::IsTerminal;
    !cli.json && !cli.quiet && std::io::stderr().is_terminal()
}

/// Runs one command on the node in `slot`. `Ok(None)` means the command printed nothing.
pub(crate) fn run(cli: &Cli, slot: &mut NodeSlot<'_>) -> Result<Option<Out>, CliError> {
    let out = match &cli.command {
        Commands::Id => {
            let node = slot.get(cli)?;
            let label = own_label(node)?;
            render::id(node.node_id(), node.cluster_id(), &label, "")
        }
        Commands::Story(cmd) => story_cmd(cli, slot, cmd)?,
        Commands::Claim { id, ttl, check, .. } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            let t = now();
            if !*check {
                node.execute(
                    t,
                    Cmd::Claim {
                        id: id.clone(),
                        ttl_secs: *ttl,
                    },
                )?;
            }
            let status = own_claim(node, &id, t)?;
            render::claimed(&id, &status, !*check)
        }
        Commands::Release { id, force } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            node.execute(now(), forced(*force, Cmd::Release { id: id.clone() }))?;
            render::released(&id)
        }
        Commands::Log { author, follow } => {
            let author = author.as_deref().map(node_id).transpose()?;
            let node = slot.get(cli)?;
            let ops = node.log(author.as_ref())?;
            if *follow {
                // A stream: JSON Lines (or text lines), continued by the follower.
                return Ok(Some(render::raw(render::op_lines(cli, &ops).into_bytes())));
            }
            render::ops(cli, &ops)
        }
        Commands::Events { since, .. } => {
            let from = crate::events::cursor(since.as_deref())?;
            let (lines, _) = crate::events::lines(cli, slot.get(cli)?, &from)?;
            // A stream: JSON Lines (or text lines), continued by the follower with --follow.
            return Ok(Some(render::raw(lines.into_bytes())));
        }
        Commands::Verify => {
            let node = slot.get(cli)?;
            let total = node.version_vector().total();
            let bar = progress::bar(progress_enabled(cli), total, "verifying");
            let report = node.verify(|n| bar.set_position(n))?;
            bar.finish_and_clear();
            render::verified(&report)
        }
        Commands::Status => status(cli, slot)?,
        Commands::Member(MemberCmd::List) => {
            let node = slot.get(cli)?;
            render::members(&node.members(), &node.nodes(now())?)
        }
        Commands::Member(MemberCmd::Remove { node: target }) => {
            let target = node_id(target)?;
            let node = slot.get(cli)?;
            node.execute(now(), Cmd::RemoveMember { node: target })?;
            render::member_removed(target)
        }
        Commands::Key(KeyCmd::Rotate) => {
            let node = slot.get(cli)?;
            let old = node.node_id();
            node.rotate_key(now(), &mut rand_core::OsRng)?;
            render::key_rotated(old, node.node_id())
        }
        Commands::Export { out } => {
            let node = slot.get(cli)?;
            let count = node.version_vector().total();
            // A bundle stream (docs/format.md): bounded bundles read from the store one at a
            // time, written one after another.
            let chunks = node.export_chunks(&VersionVector::default(), EXPORT_BUNDLE_BYTES)?;
            match out {
                Some(path) => {
                    let bytes = write_file_atomically(path, chunks)?;
                    render::exported(count, bytes, path)
                }
                None => {
                    if cli.json {
                        return Err(CliError::usage(
                            "--json needs --out FILE: the export itself is binary",
                        ));
                    }
                    let mut bytes = Vec::new();
                    for chunk in chunks {
                        bytes.extend(chunk?);
                    }
                    return Ok(Some(render::raw(bytes)));
                }
            }
        }
        Commands::Import { file } => {
            let input = std::fs::File::open(file)
                .map_err(|e| CliError::usage(format!("cannot read {}: {e}", file.display())))?;
            let show = progress_enabled(cli) && !slot.in_daemon();
            let node = slot.get(cli)?;
            let bar = progress::bar(show, 0, "importing");
            // One bundle of the stream in memory at a time; the whole file is checked
            // before anything of it is stored (a damaged file is refused whole).
            let mut input = std::io::BufReader::new(input);
            let report = node
                .import_checked(&mut input, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .map_err(|e| match e {
                    // The whole file is checked before any of it is stored.
                    huskies_core::Error::InvalidArgument(why) => {
                        CliError::usage(format!("{}: {why}; nothing was imported", file.display()))
                    }
                    other => other.into(),
                })?;
            bar.finish_and_clear();
            render::imported(&report)
        }
        Commands::Init { .. }
        | Commands::Inspect { .. }
        | Commands::Demo
        | Commands::Bench { .. }
        | Commands::Completions { .. }
        | Commands::Daemon { .. }
        | Commands::Agent { .. } => return Err(CliError::usage("this command does not run inside a daemon")),
        Commands::Ticket(TicketCmd::Create { ttl, address }) => {
            let address = ticket_address(cli, slot, address.as_deref())?;
            let node = slot.get(cli)?;
            let ticket = node.create_ticket(now(), *ttl, address.clone(), &mut rand_core::OsRng)?;
            render::ticket(&ticket, &address)
        }
    };
    Ok(Some(out))
}

/// The address a join ticket names: `--address`, else the running daemon's advertised
/// address, else the `[daemon] advertise` of `config.toml`. Never a default: a ticket that
/// names an address nobody of this cluster listens on sends the new node to whatever
/// answers there.
fn ticket_address(cli: &Cli, slot: &NodeSlot<'_>, given: Option<&str>) -> Result<String, CliError> {
    let checked = |url: String, source: &str| {
        huskies_daemon::check_peer_url(&url)
            .map(|()| url)
            .map_err(|e| CliError::usage(format!("{source}: {e}")))
    };
    if let Some(url) = given {
        return checked(url.to_string(), "--address");
    }
    if let Some(h) = slot.health() {
        return Ok(h.address);
    }
    let root = home::resolve(cli.home.as_deref())?;
    match config::load(&root)?.daemon.advertise {
        Some(url) => checked(url, "[daemon] advertise in config.toml"),
        None => Err(CliError::usage(format!(
            "no daemon is running on {} to name in the ticket: start `huskies daemon` (the ticket then \
             names its advertised address), or give --address ws://HOST:PORT/crdt-sync, the address \
             where this node's daemon will listen when the ticket is redeemed",
            root.display()
        ))),
    }
}

/// The label a new node gets when none is given: the host name.
pub(crate) fn default_label() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// This node's label in its own presence record (empty before its first heartbeat).
pub(crate) fn own_label(node: &Node) -> Result<String, CliError> {
    let me = node.node_id();
    Ok(node
        .nodes(now())?
        .into_iter()
        .find(|n| n.node == me)
        .map(|n| n.label)
        .unwrap_or_default())
}

/// Writes `bytes` to `path` through a temporary file and a rename: never a half file.
/// Writes `chunks` one after another to `path` through a temporary file renamed into place
/// once complete; returns the bytes written. A failed chunk leaves `path` untouched.
pub(crate) fn write_file_atomically(
    path: &Path,
    chunks: impl IntoIterator<Item = Result<Vec<u8>, huskies_core::Error>>,
) -> Result<usize, CliError> {
    use std::io::Write;
    let tmp = path.with_extension("partial");
    let io_err = |e: std::io::Error| CliError {
        kind: "io",
        message: format!("writing {}: {e}", path.display()),
        code: EXIT_ENV,
    };
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io_err)?);
    let mut written = 0usize;
    for chunk in chunks {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        out.write_all(&chunk).map_err(io_err)?;
        written += chunk.len();
    }
    out.into_inner()
        .map_err(|e| io_err(e.into_error()))?
        .sync_all()
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(io_err)?;
    Ok(written)
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
        StoryCmd::List { stage, conflicts } => {
            let stage = stage
                .as_deref()
                .map(|s| s.parse::<StageKind>().map_err(|e| CliError::usage(e.to_string())))
                .transpose()?;
            let node = slot.get(cli)?;
            let mut stories = node.stories(stage, t)?;
            if *conflicts {
                stories.retain(|s| !s.conflicts.is_empty());
            }
            Ok(render::story_list(
                &stories,
                &render::ListFilter {
                    stage,
                    conflicts: *conflicts,
                },
            ))
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
            force,
        } => {
            let id = story_id(id)?;
            let event = parse_event(event, branch, *commits, commit, kind, reason, by)?;
            let node = slot.get(cli)?;
            node.execute(
                t,
                forced(
                    *force,
                    Cmd::Event {
                        id: id.clone(),
                        event,
                    },
                ),
            )?;
            story_out(node, &id, t)
        }
        StoryCmd::History { id } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            Ok(render::history(&node.story_creation(&id)?, &node.history(&id)?))
        }
        StoryCmd::Rm { id, force } => {
            let id = story_id(id)?;
            let node = slot.get(cli)?;
            node.execute(t, forced(*force, Cmd::DeleteStory { id: id.clone() }))?;
            Ok(render::story_deleted(&id))
        }
    }
}

/// The command, or with `--force` the command forced over another node's live claim (the
/// refusal and the override are the core's: `Command::Force`).
fn forced(force: bool, cmd: Cmd) -> Cmd {
    if force {
        Cmd::Force(Box::new(cmd))
    } else {
        cmd
    }
}

/// This node's live claim on `id` and whether it is confirmed (`Node::claim_status`, the
/// one home of the rule): `claim_conflict` when another node holds the story, `not_found`
/// when nobody does.
fn own_claim(node: &Node, id: &StoryId, t: Timestamp) -> Result<huskies_core::ClaimStatus, CliError> {
    match node.claim_status(id, t)? {
        Some(s) if s.lease.node == node.node_id() => Ok(s),
        Some(s) => Err(huskies_core::Error::ClaimConflict {
            what: format!("story {id}"),
            holder: s.lease.node,
            expires_at: s.lease.expires_at,
        }
        .into()),
        None => Err(CliError {
            kind: "not_found",
            message: format!("this node holds no live claim on story {id}"),
            code: render::EXIT_REFUSED,
        }),
    }
}

/// One story; with its history when it has conflicts (their text names the transition
/// each was concurrent with).
fn story_out(node: &Node, id: &StoryId, t: Timestamp) -> Result<Out, CliError> {
    let story = node.story(id, t)?;
    let history = if story.conflicts.is_empty() {
        Vec::new()
    } else {
        node.history(id)?
    };
    Ok(render::story(&story, &history))
}

/// The staleness bound of the node's config, in milliseconds (orphaned executions).
fn stale_ms() -> i64 {
    i64::try_from(NodeConfig::default().stale_after_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

fn status(cli: &Cli, slot: &mut NodeSlot<'_>) -> Result<Out, CliError> {
    let health = slot.health();
    let node = slot.get(cli)?;
    let t = now();
    Ok(render::status(&StatusFacts {
        node: node.node_id(),
        cluster: node.cluster_id(),
        cluster_name: node.cluster_name(),
        label: own_label(node)?,
        health,
        counts: node.stage_counts()?,
        version: node.version_vector(),
        lamport: node.lamport(),
        nodes: node.nodes(t)?,
        forks: node.forks()?,
        missing: node.own_ops_missing(),
        signals: huskies_core::signals(node, t, stale_ms())?,
        lost: node.lost_claims(t)?,
    }))
}
