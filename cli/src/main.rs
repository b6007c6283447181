//! `huskies`: the command line of the huskies state layer.
//!
//! The contract (names, JSON shapes, exit codes, error kinds) is `docs/cli.md`;
//! scripts outside this repository rely on it. This file is the entry point: parse
//! (`args`), then run the command where it must run — standalone (`standalone`), through a
//! running daemon (`route`) or on the home directly (`exec`) — and print the result
//! (`render`).

mod agent;
mod args;
mod bench;
mod claim_wait;
mod config;
mod demo;
mod events;
mod exec;
mod follow;
mod home;
mod output;
mod render;
mod route;
mod standalone;

use std::process::ExitCode;

use crate::args::{parse, Commands};
use crate::exec::{run, NodeSlot};
use crate::render::{emit, render};

/// mimalloc, with transparent huge pages off. Appends and ingests allocate and free many
/// small buffers (ops, records, sled's pages) on several threads; glibc's allocator spent
/// about a third of the non-signing time of an append there, and mimalloc with huge pages
/// spent it zeroing 2 MiB pages instead (`docs/benchmarks.md`, session 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    if let Commands::Log { follow: true, .. } | Commands::Events { follow: true, .. } = &cli.command {
        return follow::run(&cli, &root, &argv);
    }
    if let Commands::Claim { wait: Some(secs), .. } = &cli.command {
        return emit(claim_wait::run_wait(&cli, &root, &argv, *secs));
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
