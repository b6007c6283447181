//! `huskies log --follow` and `huskies events --follow`: through the daemon when one runs,
//! else by polling the store (other commands open and close the home between polls).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use huskies_core::{Error, EventCursor, Node, NodeConfig, NodeId, OpSummary, VersionVector};

use crate::args::{Cli, Commands};
use crate::render::{emit, op_lines, render, CliError};
use crate::route;

const POLL: Duration = Duration::from_millis(500);

/// Where a follower stands.
enum Position {
    Log {
        author: Option<NodeId>,
        since: VersionVector,
    },
    Events {
        at: EventCursor,
    },
}

impl Position {
    fn new(cli: &Cli) -> Result<Position, CliError> {
        match &cli.command {
            Commands::Events { since, .. } => Ok(Position::Events {
                at: crate::events::cursor(since.as_deref())?,
            }),
            Commands::Log { author, .. } => Ok(Position::Log {
                author: author.as_deref().map(crate::exec::node_id).transpose()?,
                since: VersionVector::default(),
            }),
            _ => Err(CliError::usage("only log and events follow")),
        }
    }

    /// The output for what `node` holds past this position, and the position after it.
    fn step(&mut self, cli: &Cli, node: &Node) -> Result<String, CliError> {
        match self {
            Position::Log { author, since } => {
                let ops = node.ops_since(since)?;
                *since = node.version_vector();
                let summaries: Vec<OpSummary> = ops
                    .iter()
                    .filter(|o| author.is_none_or(|a| o.content().author == a))
                    .map(OpSummary::of)
                    .collect();
                Ok(op_lines(cli, &summaries))
            }
            Position::Events { at } => {
                let (text, end) = crate::events::lines(cli, node, at)?;
                *at = end;
                Ok(text)
            }
        }
    }
}

/// The daemon side of a follower: the output for ops past `since` and the new `since`.
pub(crate) fn daemon_step(cli: &Cli, node: &Node, since: &VersionVector) -> (String, VersionVector) {
    let mut pos = match Position::new(cli) {
        Ok(Position::Log { author, .. }) => Position::Log {
            author,
            since: since.clone(),
        },
        Ok(Position::Events { .. }) => Position::Events {
            at: EventCursor::at(since.clone()),
        },
        Err(_) => return (String::new(), since.clone()),
    };
    let text = pos.step(cli, node).unwrap_or_default();
    let next = match pos {
        Position::Log { since, .. } => since,
        Position::Events { at } => at.vv,
    };
    (text, next)
}

pub(crate) fn run(cli: &Cli, root: &Path, argv: &[String]) -> ExitCode {
    let mut pos = match Position::new(cli) {
        Ok(p) => p,
        Err(e) => return emit(render(cli, Err(e))),
    };
    loop {
        if let Some(r) = route::through_daemon(cli, root, argv) {
            return emit(r);
        }
        match Node::open(root, NodeConfig::default()) {
            Ok(node) => {
                let text = match pos.step(cli, &node) {
                    Ok(t) => t,
                    Err(e) => return emit(render(cli, Err(e))),
                };
                drop(node);
                let mut out = std::io::stdout().lock();
                if out.write_all(text.as_bytes()).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS; // the reader went away
                }
            }
            Err(Error::HomeLocked(_) | Error::HomeLockedByDaemon(_)) => {} // a writer holds it for a moment, or a daemon is starting
            Err(e) => return emit(render(cli, Err(e.into()))),
        }
        std::thread::sleep(POLL);
    }
}
