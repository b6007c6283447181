//! README.md's shell blocks run as written: every block fenced as `sh`, in the README's
//! order, in one `bash -e` session in a scratch directory (a user following the README in one
//! terminal), with the built `huskies` first on `PATH` and `HOME` in the scratch directory.
//! A block whose first line is `# not run by the README test: <why>` is skipped; that
//! convention is visible to readers and stated in the README.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The skip marker: the first line of a block that is not run.
const SKIP: &str = "# not run by the README test:";

/// Blocks skipped today: the release build and the workspace tests, a NATS server, pip.
/// A new skip must be a deliberate change here.
const MAX_SKIPPED: usize = 3;

/// `(line of the opening fence, text)` of every block fenced as `sh`.
fn sh_blocks(readme: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut open {
            None if line.trim_end() == "```sh" => open = Some((i + 1, String::new())),
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.push(open.take().expect("open")),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    assert!(open.is_none(), "an sh block is not closed");
    blocks
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn every_shell_block_of_the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
        .expect("README.md");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 5, "found {} sh blocks", blocks.len());
    let mut script = String::new();
    let mut skipped = Vec::new();
    for (line, text) in &blocks {
        if text.starts_with(SKIP) {
            skipped.push(*line);
            continue;
        }
        script += &format!("echo '== README.md line {line}' >&2\n{text}\n");
    }
    assert!(
        skipped.len() <= MAX_SKIPPED,
        "blocks skipped at lines {skipped:?}: at most {MAX_SKIPPED}"
    );
    for port in [3001, 3002] {
        assert!(
            port_free(port),
            "the README's cluster uses port {port}, which another process holds"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_huskies")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = dir.path().join("user-home");
    std::fs::create_dir(&home).unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("bash")
            .arg("-e")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("HOME", &home)
            .env("TMPDIR", dir.path())
            .env_remove("HUSKIES_HOME")
            .env_remove("NATS_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("runs bash")
    };
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    // Readers on both pipes, so that a chatty block never blocks on a full pipe.
    let read = |pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut s = String::new();
            let _ = pipe.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Whatever happened, nothing the blocks started outlives the test (daemons, agents).
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(s) if s.success() => {}
        Some(s) => panic!(
            "the README's blocks failed ({s}); the last block started is the last '== README.md line' below\n\
             --- stdout\n{out}\n--- stderr\n{err}"
        ),
        None => panic!("the README's blocks did not finish in 300 s\n--- stdout\n{out}\n--- stderr\n{err}"),
    }
    // The blocks did what they say.
    assert!(
        out.contains("building 50_docs (Write the docs) on worker-1"),
        "{out}"
    );
    assert!(home
        .join(".local/share/bash-completion/completions/huskies")
        .exists());
    assert!(home.join(".config/fish/completions/huskies.fish").exists());
}
