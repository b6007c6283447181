//! Routing through a running daemon: the client side (send the command line over the
//! home's control socket) and the daemon side (run it on the daemon's node).

use std::path::{Path, PathBuf};

use huskies_core::{Node, VersionVector};
use huskies_daemon::{ControlHandler, ControlRequest, ControlResponse, Health};
use serde_json::json;

use crate::args::{parse_with, Cli, Commands, StoryCmd};
use crate::exec::{run, NodeSlot};
use crate::render::{render, Rendered};

/// Runs the command in the daemon that owns `root`, if one is running.
pub(crate) fn through_daemon(cli: &Cli, root: &Path, argv: &[String]) -> Option<Rendered> {
    if !huskies_daemon::socket_path(root).exists() {
        return None;
    }
    let (argv, stdin) = match prepare(cli, argv) {
        Ok(x) => x,
        Err(e) => return Some(render(cli, Err(e))),
    };
    let request = ControlRequest { argv, stdin };
    let response = huskies_daemon::control_request(root, &request, |chunk| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(chunk.as_bytes()).and_then(|_| out.flush()).is_ok()
    })?;
    Some(match response {
        Ok(resp) if resp.follow => Rendered {
            stdout: Vec::new(),
            stderr: resp.stderr,
            code: resp.code as u8,
        },
        Ok(resp) => Rendered {
            stdout: if resp.binary {
                hex::decode(&resp.stdout).unwrap_or_default()
            } else {
                resp.stdout.into_bytes()
            },
            stderr: resp.stderr,
            code: resp.code as u8,
        },
        Err(e) => no_answer(cli, root, &e),
    })
}

/// The daemon gave no response. A request it never received whole ran nothing (`io`). A
/// request it received may have run: a command that changes state then has an **unknown**
/// outcome, and saying it failed would invite a retry that applies it twice; the error is
/// `network` with `"outcome": "unknown"` and says how to check.
fn no_answer(cli: &Cli, root: &Path, e: &huskies_daemon::ControlError) -> Rendered {
    let (kind, message, outcome) = match (e.sent, check_hint(&cli.command)) {
        (true, Some(check)) => (
            "network",
            format!(
                "the connection to the daemon owning {} broke after the command was sent ({e}): its \
                 outcome is unknown — it may or may not have been applied. Check with `{check}` before \
                 retrying",
                root.display()
            ),
            Some("unknown"),
        ),
        (true, None) => (
            "io",
            format!("the daemon owning {} did not answer: {e}", root.display()),
            None,
        ),
        (false, _) => (
            "io",
            format!(
                "the command could not be sent to the daemon owning {} ({e}); nothing was run",
                root.display()
            ),
            None,
        ),
    };
    let mut error = json!({ "kind": kind, "message": message });
    if let Some(outcome) = outcome {
        error["outcome"] = json!(outcome);
    }
    Rendered {
        stdout: if cli.json {
            format!("{}\n", json!({ "error": error })).into_bytes()
        } else {
            Vec::new()
        },
        stderr: format!("huskies: {message}\n"),
        code: crate::render::EXIT_ENV,
    }
}

/// For a command that changes state: the command that shows whether it was applied.
/// `None` for commands that only read.
fn check_hint(command: &Commands) -> Option<String> {
    use crate::args::{KeyCmd, MemberCmd, TicketCmd};
    match command {
        Commands::Story(StoryCmd::Add { id, .. } | StoryCmd::Event { id, .. } | StoryCmd::Rm { id, .. }) => {
            Some(format!("huskies story show {id}"))
        }
        Commands::Claim { id, .. } | Commands::Release { id, .. } => Some(format!("huskies story show {id}")),
        Commands::Member(MemberCmd::Remove { .. }) => Some("huskies member list".into()),
        Commands::Key(KeyCmd::Rotate) => Some("huskies id".into()),
        Commands::Import { .. } | Commands::Ticket(TicketCmd::Create { .. }) => Some("huskies log".into()),
        _ => None,
    }
}

/// Makes file arguments absolute (the daemon runs elsewhere) and reads stdin if needed.
fn prepare(cli: &Cli, argv: &[String]) -> Result<(Vec<String>, Option<String>), crate::render::CliError> {
    let cwd = std::env::current_dir()?;
    let mut paths: Vec<&PathBuf> = Vec::new();
    let mut stdin = None;
    match &cli.command {
        Commands::Import { file } => paths.push(file),
        Commands::Export { out: Some(out) } => paths.push(out),
        Commands::Story(StoryCmd::Add {
            body_file: Some(f), ..
        }) => {
            if f.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
                stdin = Some(s);
            } else {
                paths.push(f);
            }
        }
        _ => {}
    }
    let mut argv: Vec<String> = argv
        .iter()
        .map(|a| {
            if paths.iter().any(|p| p.as_os_str() == a.as_str()) && Path::new(a).is_relative() {
                cwd.join(a).display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    // Colour is the client's to decide (its terminal, its NO_COLOR): the last --color wins.
    argv.push("--color".into());
    argv.push(
        if crate::render::colour_on(cli) {
            "always"
        } else {
            "never"
        }
        .into(),
    );
    Ok((argv, stdin))
}

/// The daemon side: commands run on the daemon's node exactly as they would directly.
pub(crate) struct CliControl;

impl ControlHandler for CliControl {
    fn handle(&self, node: &mut Node, request: &ControlRequest, health: &Health<'_>) -> ControlResponse {
        let cli = match daemon_parse(&request.argv) {
            Ok(cli) => cli,
            Err(r) => return response(r, false, false),
        };
        if cli.command.is_standalone() {
            let r = render(
                &cli,
                Err(crate::render::CliError::usage(
                    "this command does not run inside a daemon",
                )),
            );
            return response(r, false, false);
        }
        let follow = matches!(
            cli.command,
            Commands::Log { follow: true, .. } | Commands::Events { follow: true, .. }
        );
        let binary = matches!(cli.command, Commands::Export { out: None });
        let mut slot = NodeSlot::Daemon(node, health, request.stdin.as_deref());
        let r = run(&cli, &mut slot);
        response(render(&cli, r), follow, binary)
    }

    fn follow(
        &self,
        node: &mut Node,
        request: &ControlRequest,
        since: &VersionVector,
    ) -> (String, VersionVector) {
        let Ok(cli) = daemon_parse(&request.argv) else {
            return (String::new(), since.clone());
        };
        crate::follow::daemon_step(&cli, node, since)
    }
}

/// Parses a control request's argv with one command tree built on first use and kept for
/// the process (`args::parse_with`): the daemon parses every request, and building the tree
/// each time cost as much as executing a `story add`.
fn daemon_parse(argv: &[String]) -> Result<Cli, Rendered> {
    static TREE: std::sync::Mutex<Option<clap::Command>> = std::sync::Mutex::new(None);
    let mut tree = TREE.lock().unwrap_or_else(|e| e.into_inner());
    let cmd = tree.get_or_insert_with(<Cli as clap::CommandFactory>::command);
    parse_with(cmd, argv)
}

fn response(r: Rendered, follow: bool, binary: bool) -> ControlResponse {
    let ok = r.code == 0;
    ControlResponse {
        code: i32::from(r.code),
        stdout: if binary && ok {
            hex::encode(&r.stdout)
        } else {
            String::from_utf8_lossy(&r.stdout).into_owned()
        },
        stderr: r.stderr,
        follow: follow && ok,
        binary: binary && ok,
    }
}
