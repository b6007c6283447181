//! Routing through a running daemon: the client side (send the command line over the
//! home's control socket) and the daemon side (run it on the daemon's node).

use std::path::{Path, PathBuf};

use huskies_core::{Node, VersionVector};
use huskies_daemon::{ControlHandler, ControlRequest, ControlResponse, HealthReport};
use serde_json::json;

use crate::args::{parse, Cli, Commands, StoryCmd};
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
    let json = cli.json;
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
        Err(e) => {
            let message = format!("the daemon owning {} did not answer: {e}", root.display());
            Rendered {
                stdout: if json {
                    format!("{}\n", json!({ "error": { "kind": "io", "message": message } })).into_bytes()
                } else {
                    Vec::new()
                },
                stderr: format!("huskies: {message}\n"),
                code: crate::render::EXIT_ENV,
            }
        }
    })
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
    fn handle(&self, node: &mut Node, request: &ControlRequest, health: &HealthReport) -> ControlResponse {
        let cli = match parse(&request.argv) {
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
        let Ok(cli) = parse(&request.argv) else {
            return (String::new(), since.clone());
        };
        crate::follow::daemon_step(&cli, node, since)
    }
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
