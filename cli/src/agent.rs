//! `huskies agent`: a headless build agent. It runs a sync daemon against a rendezvous peer,
//! claims unclaimed coding stories, runs a command for each, and moves the story on by the
//! command's exit status.
//!
//! For each story the command runs as `sh -c CMD` in its own process group, with
//! `HUSKIES_STORY_ID`, `HUSKIES_STORY_NAME`, `HUSKIES_HOME` and `HUSKIES_NODE_ID` set.
//! Exit status 0 moves the story to QA (`gates-started`); anything else leaves it in coding
//! for another node (this node does not retry it) and records the exit code in this node's
//! execution state. A command starts only once its claim is confirmed (every alive member
//! has seen it: `Node::claim_status`). If the claim is lost to another node, the command is
//! stopped at once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use huskies_core::{
    Command as Cmd, Error, ExecutionEvent, ExecutionState, NodeId, PipelineEvent, StageKind, StoryId,
    Timestamp,
};
use huskies_daemon::{Daemon, DaemonConfig};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command as Process};

use crate::args::Cli;
use crate::exec::{default_label, now};
use crate::render::CliError;
use crate::{config, home};

/// Agent settings from the command line.
pub(crate) struct AgentOptions {
    pub rendezvous: String,
    pub exec: String,
    pub ttl: u32,
    pub max_parallel: usize,
    pub listen: Option<std::net::SocketAddr>,
    pub label: Option<String>,
    pub scan_interval: Duration,
    pub settle: Duration,
}

struct Running {
    story: StoryId,
    child: Child,
    pid: i32,
    last_renew: Instant,
    last_heartbeat: Instant,
}

struct Pending {
    story: StoryId,
    since: Instant,
}

pub(crate) fn run(cli: &Cli, opts: AgentOptions) -> Result<(), CliError> {
    crate::standalone::init_logging(cli);
    let root = home::resolve(cli.home.as_deref())?;
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let file = config::load(&root)?;
    huskies_daemon::check_peer_url(&opts.rendezvous)
        .map_err(|e| CliError::usage(format!("--rendezvous: {e}")))?;
    let node = crate::standalone::open_for_daemon(&root, crate::exec::lock_wait(cli))?;
    let label = opts
        .label
        .clone()
        .or(file.daemon.label.clone())
        .unwrap_or_else(default_label);
    let config = DaemonConfig {
        listen: opts
            .listen
            .unwrap_or_else(|| "127.0.0.1:0".parse().expect("address")),
        peers: vec![opts.rendezvous.clone()],
        label: label.clone(),
        advertise: file.daemon.advertise.clone(),
        after_ingest: Some(crate::alloc::daemon_hook()),
        ..DaemonConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let daemon = Daemon::start(node, config, Arc::new(crate::route::CliControl))
            .await
            .map_err(|e| CliError {
                kind: "network",
                message: e.to_string(),
                code: crate::render::EXIT_ENV,
            })?;
        tracing::info!(rendezvous = %opts.rendezvous, exec = %opts.exec, "agent started at {}", daemon.url());
        let result = agent_loop(&daemon, &opts, &root, &label).await;
        daemon.shutdown().await.map_err(|e| CliError {
            kind: "io",
            message: e.to_string(),
            code: crate::render::EXIT_ENV,
        })?;
        result
    })
}

async fn agent_loop(
    daemon: &Daemon,
    opts: &AgentOptions,
    root: &std::path::Path,
    label: &str,
) -> Result<(), CliError> {
    let me = daemon.with_node(|n| n.node_id());
    let mut running: BTreeMap<StoryId, Running> = BTreeMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut failed_here: BTreeSet<StoryId> = BTreeSet::new();
    let mut tick = tokio::time::interval(opts.scan_interval);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let renew_every = Duration::from_secs(u64::from(opts.ttl / 3).max(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
        let t = now();
        // Finished commands.
        let done: Vec<StoryId> = running
            .iter_mut()
            .filter_map(|(id, r)| match r.child.try_wait() {
                Ok(Some(_)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        for id in done {
            let mut r = running.remove(&id).expect("present");
            let status = r.child.wait().await?;
            let code = status.code().unwrap_or(-1);
            finish(daemon, &r.story, code, t, &mut failed_here);
        }
        // Lost claims stop their command; live ones are renewed.
        let lost: Vec<StoryId> = running
            .keys()
            .filter(|id| holder(daemon, id, t) != Some(me))
            .cloned()
            .collect();
        for id in lost {
            let r = running.remove(&id).expect("present");
            tracing::warn!(story = %id, "claim lost to another node: stopping the command");
            stop(r).await;
            exec(daemon, &id, ExecutionEvent::Stopped, t);
        }
        for r in running.values_mut() {
            if r.last_renew.elapsed() >= renew_every {
                r.last_renew = Instant::now();
                if let Err(e) = daemon.with_node(|n| {
                    n.execute(
                        t,
                        Cmd::Claim {
                            id: r.story.clone(),
                            ttl_secs: opts.ttl,
                        },
                    )
                }) {
                    tracing::warn!(story = %r.story, error = %e, "claim not renewed");
                }
            }
            if r.last_heartbeat.elapsed() >= Duration::from_secs(30) {
                r.last_heartbeat = Instant::now();
                exec(daemon, &r.story, ExecutionEvent::Heartbeat, t);
            }
        }
        // Claims start their command once confirmed (every alive member has seen them, so
        // none can win against them: `Node::claim_status`) and the settle window is over;
        // lost ones are dropped, and one that stays unconfirmed for half its lease (a member
        // that cannot be reached) is given up.
        let mut ready = Vec::new();
        for p in std::mem::take(&mut pending) {
            let status = daemon.with_node(|n| n.claim_status(&p.story, t)).ok().flatten();
            match status {
                Some(s) if s.lease.node == me && s.confirmed && p.since.elapsed() >= opts.settle => {
                    ready.push(p)
                }
                Some(s) if s.lease.node == me => {
                    if p.since.elapsed() >= Duration::from_secs(u64::from(opts.ttl / 2).max(1)) {
                        tracing::warn!(
                            story = %p.story,
                            unconfirmed = ?s.pending.iter().map(|n| n.short()).collect::<Vec<_>>(),
                            "claim not confirmed in time: giving it up"
                        );
                        exec(daemon, &p.story, ExecutionEvent::Stopped, t);
                        let _ = daemon.with_node(|n| n.execute(t, Cmd::Release { id: p.story.clone() }));
                    } else {
                        pending.push(p);
                    }
                }
                _ => {
                    tracing::info!(story = %p.story, "lost a concurrent claim before starting");
                    exec(daemon, &p.story, ExecutionEvent::Stopped, t);
                }
            }
        }
        for p in ready {
            match spawn(daemon, opts, root, &p.story, me, label, t) {
                Ok(r) => {
                    running.insert(p.story.clone(), r);
                }
                Err(e) => tracing::error!(story = %p.story, error = %e, "command did not start"),
            }
        }
        // New claims, within the parallelism bound.
        let busy = running.len() + pending.len();
        if busy < opts.max_parallel {
            let candidates = daemon
                .with_node(|n| n.stories(Some(StageKind::Coding), t))
                .unwrap_or_default();
            for s in candidates {
                if running.len() + pending.len() >= opts.max_parallel {
                    break;
                }
                let mine = s.claim.as_ref().is_some_and(|c| c.node == me);
                if running.contains_key(&s.id)
                    || pending.iter().any(|p| p.story == s.id)
                    || failed_here.contains(&s.id)
                    || (s.claim.is_some() && !mine)
                {
                    continue;
                }
                match daemon.with_node(|n| {
                    n.execute(
                        t,
                        Cmd::Claim {
                            id: s.id.clone(),
                            ttl_secs: opts.ttl,
                        },
                    )
                }) {
                    Ok(_) => {
                        tracing::info!(story = %s.id, "claimed");
                        exec(daemon, &s.id, ExecutionEvent::Reset, t);
                        exec(
                            daemon,
                            &s.id,
                            ExecutionEvent::SpawnRequested {
                                agent: label.to_string(),
                            },
                            t,
                        );
                        pending.push(Pending {
                            story: s.id.clone(),
                            since: Instant::now(),
                        });
                    }
                    Err(Error::ClaimConflict { .. }) => {}
                    Err(e) => tracing::warn!(story = %s.id, error = %e, "claim failed"),
                }
            }
        }
    }
    tracing::info!("agent stopping: ending {} running commands", running.len());
    let t = now();
    for (id, r) in std::mem::take(&mut running) {
        stop(r).await;
        exec(daemon, &id, ExecutionEvent::Stopped, t);
        let _ = daemon.with_node(|n| n.execute(t, Cmd::Release { id: id.clone() }));
    }
    for p in pending {
        exec(daemon, &p.story, ExecutionEvent::Stopped, t);
        let _ = daemon.with_node(|n| n.execute(t, Cmd::Release { id: p.story.clone() }));
    }
    Ok(())
}

fn holder(daemon: &Daemon, id: &StoryId, t: Timestamp) -> Option<NodeId> {
    daemon
        .with_node(|n| n.story(id, t))
        .ok()
        .and_then(|s| s.claim.map(|c| c.node))
}

fn exec(daemon: &Daemon, id: &StoryId, event: ExecutionEvent, t: Timestamp) {
    let r = daemon.with_node(|n| {
        // Reset is only meaningful from a non-idle state.
        if matches!(event, ExecutionEvent::Reset)
            && n.execution_state(id, &n.node_id()).ok() == Some(ExecutionState::Idle)
        {
            return Ok(None);
        }
        n.execute(
            t,
            Cmd::Execution {
                id: id.clone(),
                event: event.clone(),
            },
        )
        .map(Some)
    });
    if let Err(e) = r {
        tracing::debug!(story = %id, error = %e, "execution state not recorded");
    }
}

fn spawn(
    daemon: &Daemon,
    opts: &AgentOptions,
    root: &std::path::Path,
    id: &StoryId,
    me: NodeId,
    label: &str,
    t: Timestamp,
) -> std::io::Result<Running> {
    let name = daemon
        .with_node(|n| n.story(id, t))
        .map(|s| s.name)
        .unwrap_or_default();
    let child = Process::new("sh")
        .arg("-c")
        .arg(&opts.exec)
        .env("HUSKIES_STORY_ID", id.as_str())
        .env("HUSKIES_STORY_NAME", name)
        .env("HUSKIES_HOME", PathBuf::from(root))
        .env("HUSKIES_NODE_ID", me.to_hex())
        .env("HUSKIES_AGENT", label)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    tracing::info!(story = %id, pid, "command started");
    exec(daemon, id, ExecutionEvent::SpawnedSuccessfully, t);
    Ok(Running {
        story: id.clone(),
        child,
        pid,
        last_renew: Instant::now(),
        last_heartbeat: Instant::now(),
    })
}

/// Stops a command: SIGTERM to its process group, SIGKILL after 5 s.
async fn stop(mut r: Running) {
    if r.pid > 0 {
        let _ = killpg(Pid::from_raw(r.pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(5), r.child.wait())
        .await
        .is_err()
    {
        if r.pid > 0 {
            let _ = killpg(Pid::from_raw(r.pid), Signal::SIGKILL);
        }
        let _ = r.child.wait().await;
    }
}

fn finish(daemon: &Daemon, id: &StoryId, code: i32, t: Timestamp, failed_here: &mut BTreeSet<StoryId>) {
    exec(daemon, id, ExecutionEvent::Exited { exit_code: code }, t);
    if code == 0 {
        match daemon.with_node(|n| {
            n.execute(
                t,
                Cmd::Event {
                    id: id.clone(),
                    event: PipelineEvent::GatesStarted,
                },
            )
        }) {
            Ok(_) => tracing::info!(story = %id, "command succeeded: story moved to qa"),
            Err(e) => {
                tracing::warn!(story = %id, error = %e, "command succeeded but the story could not move on")
            }
        }
    } else {
        tracing::warn!(story = %id, code, "command failed: story left in coding for another node");
        failed_here.insert(id.clone());
    }
    if let Err(e) = daemon.with_node(|n| n.execute(t, Cmd::Release { id: id.clone() })) {
        tracing::debug!(story = %id, error = %e, "claim not released");
    }
}
