//! Helpers shared by the binary's end-to-end tests: running `huskies` on a home, reading
//! its JSON, and starting and stopping daemon processes. (Each test file uses some of them.)
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_huskies")
}

/// Runs `huskies --home HOME ARGS...` with no home or lock timeout from the environment.
pub fn huskies(home: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("HUSKIES_HOME")
        .env_remove("HUSKIES_LOCK_TIMEOUT")
        .output()
        .expect("runs huskies")
}

/// Exit code, stdout and stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a command with `--json` that must succeed; its document.
pub fn ok_json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = huskies(home, &all);
    assert!(out.status.success(), "huskies {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}

/// Polls `f` every 50 ms until it returns a value, for at most `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// Sends signal `name` (`TERM`, `STOP`, `KILL`, ...) to `pid`.
pub fn signal(name: &str, pid: u32) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Stops a daemon or agent: SIGTERM, then SIGKILL if it has not exited within 10 s.
pub fn stop(child: &mut Child) {
    signal("TERM", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `huskies daemon` on `home` on a free loopback port, its stderr to `stderr`.
pub fn spawn_daemon(home: &Path, extra: &[&str], stderr: Stdio) -> Child {
    Command::new(bin())
        .arg("--home")
        .arg(home)
        .args(["daemon", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("HUSKIES_HOME")
        .env_remove("HUSKIES_LOCK_TIMEOUT")
        .env_remove("HUSKIES_LOG")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starts the daemon")
}

/// Waits until the daemon owning `home` answers on its control socket; its advertised
/// `/crdt-sync` address.
pub fn daemon_url(home: &Path) -> String {
    // Not before the socket exists: a `status` run directly would hold the home the
    // starting daemon is opening.
    wait_for(20, "the daemon's control socket", || {
        home.join("daemon.sock").exists().then_some(())
    });
    wait_for(20, "the daemon answers on its control socket", || {
        let out = huskies(home, &["--json", "status"]);
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["daemon"] == true).then(|| v["health"]["address"].as_str().unwrap().to_string())
    })
}
