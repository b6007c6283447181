//! `huskies log --follow`: through the daemon when one runs, else by polling the store
//! (other commands open and close the home between polls).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use huskies_core::{Error, Node, NodeConfig, NodeId, OpSummary, VersionVector};

use crate::args::{Cli, Commands};
use crate::render::{emit, op_lines, render, CliError};
use crate::route;

const POLL: Duration = Duration::from_millis(500);

pub(crate) fn run(cli: &Cli, root: &Path, argv: &[String]) -> ExitCode {
    let author: Option<NodeId> = match &cli.command {
        Commands::Log { author: Some(a), .. } => match a.parse() {
            Ok(a) => Some(a),
            Err(e) => return emit(render(cli, Err(CliError::usage(format!("{e}"))))),
        },
        _ => None,
    };
    let mut since = VersionVector::default();
    loop {
        if let Some(r) = route::through_daemon(cli, root, argv) {
            return emit(r);
        }
        match Node::open(root, NodeConfig::default()) {
            Ok(node) => {
                let ops = match node.ops_since(&since) {
                    Ok(ops) => ops,
                    Err(e) => return emit(render(cli, Err(e.into()))),
                };
                since = node.version_vector();
                drop(node);
                let summaries: Vec<OpSummary> = ops
                    .iter()
                    .filter(|o| author.is_none_or(|a| o.content().author == a))
                    .map(OpSummary::of)
                    .collect();
                let mut out = std::io::stdout().lock();
                if out
                    .write_all(op_lines(cli, &summaries).as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    return ExitCode::SUCCESS; // the reader went away
                }
            }
            Err(Error::HomeLocked(_) | Error::HomeLockedByDaemon(_)) => {} // a writer holds it for a moment, or a daemon is starting
            Err(e) => return emit(render(cli, Err(e.into()))),
        }
        std::thread::sleep(POLL);
    }
}
