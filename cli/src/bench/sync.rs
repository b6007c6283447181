//! The sync figure of `huskies bench`: a fresh node catching up a home's ops from a real
//! daemon over loopback WebSocket, end to end (handshake, frames, batch verification on all
//! cores, merge, persist).
//!
//! Each side runs in its own child process (the bench re-executes its own binary as
//! `huskies bench --json --sync-child serve|catch-up …`, hidden options), so that each
//! side's peak resident memory (`VmHWM`) is its own: neither the bench's buffers and
//! earlier phases nor the other side count in it.
//!
//! The protocol between the bench and its children, on their standard streams: the serving
//! child prints `ticket <TICKET> <OPS>` once its daemon listens, then serves until its
//! standard input closes; the catching-up child prints `held <N>` as ops arrive. Each ends
//! by printing its JSON result (the CLI's `--json` output) and exiting.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use huskies_core::sync::Ticket;
use huskies_core::{InitMode, Node, NodeConfig, Timestamp};
use huskies_daemon::{Daemon, DaemonConfig};
use serde_json::{json, Value};

/// What one catch-up measured.
pub struct SyncFigures {
    /// Ops the fresh node received.
    pub ops: u64,
    /// Wall time from connecting to holding every op.
    pub elapsed: Duration,
    /// Ops the serving daemon sent (equals `ops` when nothing is sent twice).
    pub ops_sent: u64,
    /// Signed-op bytes the serving daemon sent.
    pub op_bytes_sent: u64,
    /// Peak resident memory of the catching-up node's process, in MB (`None` where it
    /// cannot be read).
    pub catchup_peak_rss_mb: Option<f64>,
    /// Peak resident memory of the serving daemon's process (open home, daemon, its whole
    /// life: open, serve, shut down), in MB.
    pub serve_peak_rss_mb: Option<f64>,
}

/// The role of a child process of the sync phase.
pub enum Role {
    /// Open a home and serve it from a daemon on loopback.
    Serve,
    /// Join with a ticket into a fresh home and catch up.
    CatchUp,
}

impl std::str::FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Role> {
        match s {
            "serve" => Ok(Role::Serve),
            "catch-up" => Ok(Role::CatchUp),
            other => bail!("--sync-child takes serve or catch-up, not {other:?}"),
        }
    }
}

/// Serves `source` (a closed home) from a daemon in one child process of `exe` (the huskies
/// binary) and times a fresh node in `scratch`, in a second child process, joining with a
/// ticket and catching up everything.
pub fn catch_up(
    exe: &Path,
    source: &Path,
    scratch: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<SyncFigures> {
    let mut server = spawn(exe, "serve", source, None, true)?;
    let mut server_out = BufReader::new(server.stdout.take().expect("piped"));
    let run = (|| {
        let mut line = String::new();
        server_out.read_line(&mut line)?;
        let mut words = line.split_whitespace();
        let (Some("ticket"), Some(ticket), Some(target)) = (words.next(), words.next(), words.next()) else {
            bail!("the serving child printed {line:?}, expected its ticket");
        };
        let target: u64 = target.parse().context("the serving child's op count")?;
        let mut fresh = spawn(exe, "catch-up", scratch, Some(ticket), false)?;
        let result = read_result(BufReader::new(fresh.stdout.take().expect("piped")), |held| {
            progress(held, target)
        })?;
        finish(fresh, "catching-up")?;
        let held = result["held"]
            .as_u64()
            .context("the catching-up child's held ops")?;
        // The fresh node holds everything plus its own presence op.
        ensure!(
            held > target,
            "the fresh node holds {held} ops, the source {target}"
        );
        Ok((target, result))
    })();
    // Closing its standard input stops the server (also when the catch-up failed).
    drop(server.stdin.take());
    let served = read_result(server_out, |_| {});
    finish(server, "serving")?;
    let (target, caught) = run?;
    let served = served?;
    Ok(SyncFigures {
        ops: target,
        elapsed: Duration::from_secs_f64(caught["elapsed_s"].as_f64().context("elapsed_s")?),
        ops_sent: served["ops_sent"].as_u64().context("ops_sent")?,
        op_bytes_sent: served["op_bytes_sent"].as_u64().context("op_bytes_sent")?,
        catchup_peak_rss_mb: caught["peak_rss_mb"].as_f64(),
        serve_peak_rss_mb: served["peak_rss_mb"].as_f64(),
    })
}

/// Starts `exe bench --json --sync-child ROLE --sync-home HOME [--sync-ticket T]`.
fn spawn(exe: &Path, role: &str, home: &Path, ticket: Option<&str>, stdin: bool) -> Result<Child> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--json", "--sync-child", role, "--sync-home"])
        .arg(home)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(t) = ticket {
        cmd.args(["--sync-ticket", t]);
    }
    cmd.spawn()
        .with_context(|| format!("starting {} for the sync phase", exe.display()))
}

/// Reads a child's output: `held N` lines (passed to `held`), then its JSON result.
fn read_result(out: BufReader<ChildStdout>, mut held: impl FnMut(u64)) -> Result<Value> {
    let mut rest = String::new();
    for line in out.lines() {
        let line = line?;
        match line.strip_prefix("held ").map(str::parse::<u64>) {
            Some(Ok(n)) => held(n),
            _ => {
                rest.push_str(&line);
                rest.push('\n');
            }
        }
    }
    serde_json::from_str(&rest).with_context(|| format!("a sync child printed {rest:?}, expected JSON"))
}

/// Waits for a child and checks that it succeeded.
fn finish(mut child: Child, what: &str) -> Result<()> {
    let status = child.wait()?;
    ensure!(
        status.success(),
        "the {what} child of the sync phase failed ({status})"
    );
    Ok(())
}

/// Runs one side of the sync phase in this process (the hidden `--sync-child` option) and
/// returns its JSON result.
pub fn child(role: Role, home: &Path, ticket: Option<&str>) -> Result<Value> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let out = match role {
        Role::Serve => runtime.block_on(serve(home))?,
        Role::CatchUp => {
            let ticket: Ticket = ticket
                .context("--sync-child catch-up needs --sync-ticket")?
                .parse()
                .context("--sync-ticket")?;
            runtime.block_on(join(home, &ticket))?
        }
    };
    Ok(out)
}

/// The serving side: prints its ticket, serves until standard input closes.
async fn serve(source: &Path) -> Result<Value> {
    let node = Node::open(source, NodeConfig::default()).context("opening the source home")?;
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        heartbeat_secs: 3600,
        policy_interval_secs: 3600,
        ..DaemonConfig::default()
    };
    let daemon = Daemon::start(node, config, Arc::new(crate::route::CliControl)).await?;
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let ticket = daemon.with_node(|n| n.create_ticket(now, 3600, daemon.url(), &mut rand_core::OsRng))?;
    let target = daemon.with_node(|n| n.version_vector().total());
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ticket {ticket} {target}")?;
        stdout.flush()?;
    }
    tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await??;
    // Closing the connection folds its counters into the daemon's metrics.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !daemon.health().peers.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = daemon.health();
    daemon.shutdown().await?;
    Ok(json!({
        "ops_sent": health.ops_sent,
        "op_bytes_sent": health.op_bytes_sent,
        "peak_rss_mb": super::peak_rss_mb(),
    }))
}

/// The catching-up side: a fresh node in `scratch` joins with `ticket` and catches up.
async fn join(scratch: &Path, ticket: &Ticket) -> Result<Value> {
    let now = Timestamp::from_datetime(chrono::Utc::now());
    let mut fresh = Node::init(
        scratch,
        InitMode::Join {
            cluster: ticket.cluster,
        },
        &mut rand_core::OsRng,
        now,
        NodeConfig::default(),
    )?;
    let t = Instant::now();
    // As `huskies init --join` does (`crate::alloc`).
    let mut release = crate::alloc::EveryOps::new(crate::alloc::CATCH_UP_RELEASE_OPS);
    huskies_daemon::join_cluster(
        &mut fresh,
        ticket,
        "bench",
        Duration::from_secs(3600),
        |held, _| {
            release.release_if_due(held);
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "held {held}");
            let _ = stdout.flush();
        },
    )
    .await?;
    let elapsed = t.elapsed();
    let held = fresh.version_vector().total();
    drop(fresh);
    Ok(json!({
        "held": held,
        "elapsed_s": elapsed.as_secs_f64(),
        "peak_rss_mb": super::peak_rss_mb(),
    }))
}
