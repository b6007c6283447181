//! `huskies`: the command line of the huskies state layer.
//!
//! The contract (names, JSON shapes, exit codes, error kinds) is `docs/cli.md`;
//! scripts outside this repository rely on it. This file is the entry point: parse
//! (`args`), then run the command where it must run — standalone (`standalone`), through a
//! running daemon (`route`) or on the home directly (`exec`) — and print the result
//! (`render`).

mod agent;
mod alloc;
mod args;
mod backup;
mod bench;
mod claim_wait;
mod config;
mod demo;
mod events;
mod exec;
mod follow;
mod home;
mod human;
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
    // `HUSKIES_HOME=` (set but empty) means "not set", as for any other unset default;
    // clap would refuse the empty value instead. Done first, while this is the only thread.
    if std::env::var_os("HUSKIES_HOME").is_some_and(|v| v.is_empty()) {
        std::env::remove_var("HUSKIES_HOME");
    }
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
            // A daemon that started while this command waited for the home owns it now:
            // run the command there (nothing ran here: the home was never opened).
            if matches!(&r, Err(e) if e.kind == "home_locked") && !reads_stdin(&cli.command) {
                if let Some(routed) = route::through_daemon(&cli, &root, &argv) {
                    return emit(routed);
                }
            }
            emit(render(&cli, r))
        }
    }
}

/// Whether the command has consumed this process's standard input (`--body-file -`), so it
/// cannot be handed on once more.
fn reads_stdin(command: &Commands) -> bool {
    matches!(
        command,
        Commands::Story(args::StoryCmd::Add { body_file: Some(f), .. }) if f.as_os_str() == "-"
    )
}
