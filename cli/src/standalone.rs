//! Commands that never run inside a daemon: init, inspect, daemon, demo, bench, completions.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::CommandFactory;
use huskies_core::sync::Ticket;
use huskies_core::{Command as Cmd, InitMode, Node, NodeConfig};
use huskies_daemon::DaemonConfig;
use serde_json::Value;

use crate::args::{Cli, Commands};
use crate::exec::{default_label, now, progress_enabled};
use crate::render::{self, CliError, Out};
use crate::{bench, config, demo, home};

pub(crate) fn run(cli: &Cli) -> Result<Option<Out>, CliError> {
    Ok(Some(match &cli.command {
        Commands::Init {
            cluster_name,
            join,
            restore,
            key,
            label,
        } => {
            let root = cli.home.clone().unwrap_or_else(|| PathBuf::from(".huskies"));
            let label = label.clone().unwrap_or_else(default_label);
            let out = match (join, restore) {
                (Some(ticket), _) => init_join(cli, &root, ticket, &label)?,
                (None, Some(file)) => crate::backup::init_restore(&root, file, key.as_deref(), &label)?,
                (None, None) => init_new(&root, cluster_name, &label)?,
            };
            let mut file = config::load(&root)?;
            file.daemon.label = Some(label);
            config::save(&root, &file)?;
            out
        }
        Commands::Daemon {
            listen,
            peers,
            max_mesh_peers,
            advertise,
            label,
        } => {
            run_daemon(
                cli,
                *listen,
                peers,
                *max_mesh_peers,
                advertise.clone(),
                label.clone(),
            )?;
            return Ok(None);
        }
        Commands::Agent {
            rendezvous,
            exec,
            ttl,
            max_parallel,
            listen,
            label,
            scan_interval_ms,
            settle_ms,
        } => {
            crate::agent::run(
                cli,
                crate::agent::AgentOptions {
                    rendezvous: rendezvous.clone(),
                    exec: exec.clone(),
                    ttl: *ttl,
                    max_parallel: (*max_parallel).max(1),
                    listen: *listen,
                    label: label.clone(),
                    scan_interval: Duration::from_millis(*scan_interval_ms),
                    settle: Duration::from_millis(*settle_ms),
                },
            )?;
            return Ok(None);
        }
        Commands::Inspect { file } => crate::backup::inspect(file)?,
        Commands::Demo => {
            let report = demo::run(&demo::DemoOptions {
                silent: cli.quiet || cli.json,
                colour: render::colour_on(cli),
            })?;
            if report.reader_gone {
                return Err(CliError::reader_gone());
            }
            // The walkthrough is already out; `--json` prints the summary instead.
            Out::new(String::new(), report.summary)
        }
        Commands::Bench {
            ops,
            interactive_ops,
            daemon_ops,
            session_ops,
            interactive_only,
            sync_child,
            sync_home,
            sync_ticket,
        } => {
            if let (Some(role), Some(home)) = (sync_child, sync_home) {
                let out = bench::sync::child(role.parse()?, home, sync_ticket.as_deref())?;
                return Ok(Some(Out::new(String::new(), out)));
            }
            let figures = bench::run(&bench::BenchOptions {
                ops: *ops,
                interactive_ops: *interactive_ops,
                daemon_ops: *daemon_ops,
                session_ops: *session_ops,
                interactive_only: *interactive_only,
                progress: progress_enabled(cli),
                exe: Some(
                    std::env::current_exe()
                        .map_err(|e| anyhow::anyhow!("locating the huskies binary: {e}"))?,
                ),
            })?;
            Out::new(render::bench_table(&figures), figures)
        }
        Commands::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "huskies", &mut buf);
            if *shell == clap_complete::Shell::Fish {
                // Built first: each subcommand's arguments are defined when it is built
                // (`#[command(defer = true)]`).
                let mut cmd = Cli::command();
                cmd.build();
                buf.extend(fish_positional_values(&cmd).into_bytes());
            }
            Out {
                raw: Some(buf),
                text: String::new(),
                json: Value::Null,
            }
        }
        _ => return Err(CliError::usage("not a standalone command")),
    }))
}

fn init_new(root: &std::path::Path, cluster_name: &str, label: &str) -> Result<Out, CliError> {
    let mut node = Node::init(
        root,
        InitMode::NewCluster {
            name: cluster_name.to_string(),
        },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )?;
    node.execute(
        now(),
        Cmd::Announce {
            label: label.to_string(),
            address: None,
        },
    )?;
    Ok(render::id(
        node.node_id(),
        node.cluster_id(),
        label,
        &format!(
            "initialised home {} (new cluster {cluster_name:?})\n",
            root.display()
        ),
    ))
}

fn init_join(cli: &Cli, root: &std::path::Path, ticket: &str, label: &str) -> Result<Out, CliError> {
    let ticket: Ticket = ticket
        .parse()
        .map_err(|e: huskies_core::Error| CliError::usage(e.to_string()))?;
    let bar = crate::render::progress::bar(crate::exec::progress_enabled(cli), 0, "catching up");
    // Return the catch-up's freed memory to the OS as it goes (`crate::alloc`).
    let mut release = crate::alloc::EveryOps::new(crate::alloc::CATCH_UP_RELEASE_OPS);
    let joined = huskies_daemon::join_home(
        root,
        &ticket,
        label,
        &huskies_daemon::JoinOptions::new(Duration::from_secs(600)),
        |held, total| {
            release.release_if_due(held);
            bar.set_length(total);
            bar.set_position(held);
        },
    );
    bar.finish_and_clear();
    let joined = joined.map_err(|e| match e {
        // Creating the home failed: the core's kind (already_exists, io, ...).
        huskies_daemon::DaemonError::Core(core) => CliError::from(core),
        other => CliError {
            kind: "network",
            message: format!(
                "joining failed: {}",
                other.to_string().trim_start_matches("network: ")
            ),
            code: crate::render::EXIT_ENV,
        },
    })?;
    let node = &joined.node;
    Ok(render::id(
        node.node_id(),
        node.cluster_id(),
        label,
        &format!(
            "joined cluster {} via {} ({} ops received); home {}\n",
            ticket.cluster.short(),
            crate::human::esc(&ticket.address),
            joined.outcome.ops,
            root.display()
        ),
    ))
}

fn run_daemon(
    cli: &Cli,
    listen: Option<std::net::SocketAddr>,
    peers: &[String],
    max_mesh_peers: Option<usize>,
    advertise: Option<String>,
    label: Option<String>,
) -> Result<(), CliError> {
    init_logging(cli);
    let root = home::resolve(cli.home.as_deref())?;
    let file = config::load(&root)?;
    let peers = if peers.is_empty() {
        file.daemon.peers.clone().unwrap_or_default()
    } else {
        peers.to_vec()
    };
    // A peer that is not a URL is a mistake to fix now, not a dial to retry forever.
    for url in &peers {
        huskies_daemon::check_peer_url(url).map_err(|e| CliError::usage(e.to_string()))?;
    }
    let node = open_for_daemon(&root, crate::exec::lock_wait(cli))?;
    let defaults = DaemonConfig::default();
    let d = &file.daemon;
    let presence_label = crate::exec::own_label(&node).ok().filter(|l| !l.is_empty());
    let config = DaemonConfig {
        listen: listen.or(d.listen).unwrap_or(defaults.listen),
        peers,
        max_mesh_peers: max_mesh_peers
            .or(d.max_mesh_peers)
            .unwrap_or(defaults.max_mesh_peers),
        label: label
            .or(d.label.clone())
            .or(presence_label)
            .unwrap_or_else(default_label),
        advertise: advertise.or(d.advertise.clone()),
        heartbeat_secs: d.heartbeat_secs.unwrap_or(defaults.heartbeat_secs),
        retention_secs: d.retention_secs.unwrap_or(defaults.retention_secs),
        block_after_merge_failures: d
            .block_after_merge_failures
            .unwrap_or(defaults.block_after_merge_failures),
        events: file.events.bridge(std::env::var("NATS_URL").ok()),
        // Return a catch-up's freed memory to the OS as it goes (`crate::alloc`).
        after_ingest: Some(crate::alloc::daemon_hook()),
        ..defaults
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime
        .block_on(huskies_daemon::run_until_signal(
            node,
            config,
            Arc::new(crate::route::CliControl),
        ))
        .map_err(|e| match e {
            huskies_daemon::DaemonError::Core(core) => core.into(),
            e @ huskies_daemon::DaemonError::InvalidPeer { .. } => CliError::usage(e.to_string()),
            other => CliError {
                kind: "network",
                message: other.to_string(),
                code: crate::render::EXIT_ENV,
            },
        })
}

/// Logs on stderr for long-running commands: info by default, `-v` debug, `-vv` trace,
/// `--quiet` warnings only; `HUSKIES_LOG` overrides (EnvFilter syntax).
pub(crate) fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSKIES_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("warn,huskies_daemon={level},huskies={level}"))
    });
    let ansi = match cli.color {
        crate::args::ColorChoice::Always => true,
        crate::args::ColorChoice::Never => false,
        crate::args::ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr())
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Opens the home for a long-running process. A short-lived command may hold the home for
/// a moment, so a locked home is waited for (`--lock-timeout`); a home that another daemon
/// owns fails at once, naming it (pid, where it listens).
pub(crate) fn open_for_daemon(root: &std::path::Path, wait: Duration) -> Result<Node, CliError> {
    match home::open_waiting(root, wait) {
        Err(huskies_core::Error::HomeLockedByDaemon(holder)) if holder.is_daemon() => Err(CliError {
            kind: "home_locked",
            message: format!(
                "a daemon already runs on this home: {}",
                huskies_core::Error::HomeLockedByDaemon(holder)
            ),
            code: crate::render::EXIT_ENV,
        }),
        other => Ok(other?),
    }
}

/// clap_complete's fish script offers no values for positional arguments; these lines add
/// them (event names for `story event`, the shells for `completions`), from the same
/// definitions as every other shell's script.
fn fish_positional_values(cli: &clap::Command) -> String {
    let mut out = String::new();
    let mut add = |condition: String, cmd: &clap::Command| {
        for arg in cmd.get_positionals() {
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect();
            if !values.is_empty() {
                out += &format!(
                    "complete -c huskies -n \"{condition}\" -f -a \"{}\"\n",
                    values.join(" ")
                );
            }
        }
    };
    for top in cli.get_subcommands() {
        let name = top.get_name();
        add(format!("__fish_huskies_using_subcommand {name}"), top);
        for sub in top.get_subcommands() {
            add(
                format!(
                    "__fish_huskies_using_subcommand {name}; and __fish_seen_subcommand_from {}",
                    sub.get_name()
                ),
                sub,
            );
        }
    }
    out
}
