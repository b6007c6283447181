//! Routing through a running daemon: the client side (send the command line over the
//! home's control socket) and the daemon side (run it on the daemon's node).

use std::path::{Path, PathBuf};

use huskies_core::{Node, VersionVector};
use huskies_daemon::{ControlHandler, ControlRequest, ControlResponse, Health};
use serde_json::json;

use crate::args::{parse_with, Cli, ColorChoice, Commands, StoryCmd};
use crate::exec::{run, NodeSlot};
use crate::render::{render, Rendered};

/// Runs the command in the daemon that owns `root`, if one is running.
pub(crate) fn through_daemon(cli: &Cli, root: &Path, argv: &[String]) -> Option<Rendered> {
    if !huskies_daemon::socket_path(root).exists() {
        return None;
    }
    let (argv, stdin, parsed) = match prepare(cli, argv) {
        Ok(x) => x,
        Err(e) => return Some(render(cli, Err(e))),
    };
    let request = ControlRequest { argv, stdin, parsed };
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

/// What a control request carries: the command line, standard input if the command
/// reads it, and the parsed command line (`ControlRequest::parsed`).
type Prepared = (Vec<String>, Option<String>, Option<String>);

/// Makes file arguments absolute (the daemon runs elsewhere), resolves the colour, reads
/// stdin if needed, and encodes the parsed command line the daemon runs (`typed`): the
/// same command as the argv, so a daemon that reads either runs the same thing.
fn prepare(cli: &Cli, argv: &[String]) -> Result<Prepared, crate::render::CliError> {
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
    let colour = if crate::render::colour_on(cli) {
        ColorChoice::Always
    } else {
        ColorChoice::Never
    };
    argv.push("--color".into());
    argv.push(
        match colour {
            ColorChoice::Always => "always",
            _ => "never",
        }
        .into(),
    );
    let parsed = typed(cli, &cwd, colour)?;
    Ok((argv, stdin, Some(parsed)))
}

/// The command line as the daemon runs it, encoded for `ControlRequest::parsed`: `cli`
/// with its file arguments made absolute against `cwd` and the client's colour decision.
fn typed(cli: &Cli, cwd: &Path, colour: ColorChoice) -> Result<String, crate::render::CliError> {
    let absolute = |p: &mut PathBuf| {
        if p.is_relative() && p.as_os_str() != "-" {
            *p = cwd.join(&*p);
        }
    };
    let mut cli = cli.clone();
    cli.color = colour;
    match &mut cli.command {
        Commands::Import { file } => absolute(file),
        Commands::Export { out: Some(out) } => absolute(out),
        Commands::Story(StoryCmd::Add {
            body_file: Some(f), ..
        }) => absolute(f),
        _ => {}
    }
    serde_json::to_string(&cli).map_err(|e| crate::render::CliError::usage(format!("{e}")))
}

/// The daemon side: commands run on the daemon's node exactly as they would directly.
pub(crate) struct CliControl;

impl ControlHandler for CliControl {
    fn handle(&self, node: &mut Node, request: &ControlRequest, health: &Health<'_>) -> ControlResponse {
        let cli = match request_cli(request) {
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
        let Ok(cli) = request_cli(request) else {
            return (String::new(), since.clone());
        };
        crate::follow::daemon_step(&cli, node, since)
    }
}

/// The command of a control request: the client's parsed command line when it sent one
/// (no second parse), else its argv parsed here — also when the parsed form does not read
/// (a client of another version): the argv is the same command.
fn request_cli(request: &ControlRequest) -> Result<Cli, Rendered> {
    match request.parsed.as_deref().map(serde_json::from_str::<Cli>) {
        Some(Ok(cli)) => Ok(cli),
        _ => daemon_parse(&request.argv),
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

#[cfg(test)]
mod tests {
    use super::{prepare, request_cli};
    use crate::args::parse;
    use huskies_daemon::ControlRequest;

    fn argv(line: &[&str]) -> Vec<String> {
        line.iter().map(|a| a.to_string()).collect()
    }

    /// What the client sends runs as the same command whichever form the daemon reads: the
    /// parsed form decodes to what the sent argv parses to (file arguments made absolute,
    /// the client's colour decision included), and a parsed form that does not read (a
    /// client of another version) falls back to the argv.
    #[test]
    fn the_parsed_form_is_the_command_the_argv_names() {
        let lines: &[&[&str]] = &[
            &["story", "add", "1_a", "--name", "A story", "--depends-on", "0_z"],
            &[
                "--json",
                "story",
                "event",
                "1_a",
                "gates-passed",
                "--branch",
                "b",
                "--commits",
                "2",
            ],
            &["story", "add", "2_b", "--body-file", "notes/body.md"],
            &["import", "backup.hsk"],
            &["export", "--out", "out/backup.hsk", "--color", "always"],
            &["--quiet", "log", "--follow"],
            &["claim", "1_a", "--ttl", "60"],
        ];
        for line in lines {
            let cli = parse(&argv(line)).unwrap_or_else(|_| panic!("{line:?} parses"));
            let Ok((sent, stdin, parsed)) = prepare(&cli, &argv(line)) else {
                panic!("{line:?}: prepared")
            };
            assert!(stdin.is_none());
            let parsed = parsed.expect("the client sends the parsed form");
            let request = ControlRequest {
                argv: sent.clone(),
                stdin: None,
                parsed: Some(parsed),
            };
            let from_parsed = request_cli(&request).unwrap_or_else(|_| panic!("{line:?}: parsed form reads"));
            let from_argv = parse(&sent).unwrap_or_else(|_| panic!("{line:?}: sent argv parses"));
            assert_eq!(format!("{from_parsed:?}"), format!("{from_argv:?}"), "{line:?}");
            let shown = format!("{from_parsed:?}");
            for relative in ["notes/body.md", "backup.hsk", "out/backup.hsk"] {
                if line.contains(&relative) {
                    let absolute = std::env::current_dir().unwrap().join(relative);
                    assert!(shown.contains(&format!("{absolute:?}")), "{line:?}: {shown}");
                }
            }
            // A parsed form this daemon cannot read: the argv is the same command.
            let request = ControlRequest {
                parsed: Some("{\"not\": \"a command\"}".into()),
                ..request
            };
            let fallback = request_cli(&request).unwrap_or_else(|_| panic!("{line:?}: argv parses"));
            assert_eq!(format!("{fallback:?}"), format!("{from_argv:?}"), "{line:?}");
        }
    }
}
