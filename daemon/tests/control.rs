//! The control socket's server (`control.rs`): requests are served on the control thread
//! with blocking calls, and what cannot finish at once moves to the daemon's runtime. A
//! request that arrives in pieces is still answered; a client that hangs up before its
//! newline runs nothing; a client that stalls holds up no one; a following request streams
//! after its reply; and shutdown ends it all with connections still open.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use huskies_core::{Command, InitMode, Node, NodeConfig, StoryId, Timestamp, VersionVector};
use huskies_daemon::{
    control_request, socket_path, ControlHandler, ControlRequest, ControlResponse, Daemon, DaemonConfig,
    Health,
};

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

/// A handler that counts the requests it runs: `add ID` adds a story, `follow` streams
/// "grew" whenever the op set grows, anything else echoes `parsed`.
#[derive(Default)]
struct Counting {
    runs: AtomicUsize,
}

impl ControlHandler for Counting {
    fn handle(&self, node: &mut Node, request: &ControlRequest, _: &Health<'_>) -> ControlResponse {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let reply = |stdout: String, follow: bool| ControlResponse {
            code: 0,
            stdout,
            follow,
            ..Default::default()
        };
        match request.argv.first().map(String::as_str) {
            Some("add") => {
                let id = StoryId::new(&request.argv[1]).unwrap();
                node.execute(now(), Command::add_story(id, "a story")).unwrap();
                reply("added\n".into(), false)
            }
            Some("follow") => reply("start\n".into(), true),
            _ => reply(request.parsed.clone().unwrap_or_default(), false),
        }
    }

    fn follow(&self, node: &mut Node, _: &ControlRequest, since: &VersionVector) -> (String, VersionVector) {
        let now = node.version_vector();
        let out = if now.total() > since.total() { "grew\n" } else { "" };
        (out.into(), now)
    }
}

fn start(dir: &Path) -> (tokio::runtime::Runtime, Daemon, Arc<Counting>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = Node::init(
        dir,
        InitMode::NewCluster { name: "t".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap();
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_secs: 3600,
        policy_interval_secs: 3600,
        ..DaemonConfig::default()
    };
    let handler = Arc::new(Counting::default());
    let daemon = runtime
        .block_on(Daemon::start(node, config, handler.clone()))
        .unwrap();
    (runtime, daemon, handler)
}

fn stop(runtime: tokio::runtime::Runtime, daemon: Daemon) {
    let stopped =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(20), daemon.shutdown()).await });
    assert!(matches!(stopped, Ok(Ok(()))), "the daemon did not stop in time");
}

fn line(argv: &[&str], parsed: Option<&str>) -> Vec<u8> {
    let request = ControlRequest {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        stdin: None,
        parsed: parsed.map(str::to_string),
    };
    let mut bytes = serde_json::to_vec(&request).unwrap();
    bytes.push(b'\n');
    bytes
}

fn read_reply(stream: &UnixStream) -> ControlResponse {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut first = String::new();
    BufReader::new(stream).read_line(&mut first).unwrap();
    serde_json::from_str(&first).unwrap_or_else(|e| panic!("not a reply ({e}): {first:?}"))
}

#[test]
fn a_request_arriving_in_pieces_is_answered_and_the_parsed_form_reaches_the_handler() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, daemon, handler) = start(dir.path());
    let bytes = line(&["echo"], Some("as parsed by the client\n"));
    let mut stream = UnixStream::connect(socket_path(dir.path())).unwrap();
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    stream.write_all(head).unwrap();
    // Much longer than the control thread waits for a request's bytes.
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(tail).unwrap();
    let reply = read_reply(&stream);
    assert_eq!(
        (reply.code, reply.stdout.as_str()),
        (0, "as parsed by the client\n")
    );
    assert_eq!(handler.runs.load(Ordering::SeqCst), 1);
    stop(runtime, daemon);
}

#[test]
fn a_client_gone_before_its_newline_runs_nothing_and_one_that_stalls_holds_up_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, daemon, handler) = start(dir.path());
    let bytes = line(&["add", "1_cut"], None);
    // Half a line, then gone.
    let mut cut = UnixStream::connect(socket_path(dir.path())).unwrap();
    cut.write_all(&bytes[..bytes.len() / 2]).unwrap();
    drop(cut);
    // The whole line but its newline, then the write side closed.
    let mut unterminated = UnixStream::connect(socket_path(dir.path())).unwrap();
    unterminated.write_all(&bytes[..bytes.len() - 1]).unwrap();
    unterminated.shutdown(std::net::Shutdown::Write).unwrap();
    // Connected, sending nothing, kept open to the end.
    let _stalled = UnixStream::connect(socket_path(dir.path())).unwrap();
    let mut partial = UnixStream::connect(socket_path(dir.path())).unwrap();
    partial.write_all(&bytes[..10]).unwrap();

    let t = Instant::now();
    let reply = control_request(
        dir.path(),
        &ControlRequest {
            argv: vec!["add".into(), "2_whole".into()],
            stdin: None,
            parsed: None,
        },
        |_| true,
    )
    .expect("a daemon answers")
    .expect("a reply");
    assert_eq!(reply.stdout, "added\n");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "held up for {:?}",
        t.elapsed()
    );
    // The unterminated client sees the connection end without a reply.
    let mut rest = String::new();
    unterminated
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(BufReader::new(&unterminated).read_line(&mut rest).unwrap(), 0);
    assert_eq!(
        handler.runs.load(Ordering::SeqCst),
        1,
        "only the whole request ran"
    );
    let stories = daemon.with_node(|n| n.stories(None, now()).unwrap());
    let ids: Vec<&str> = stories.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["2_whole"]);
    // Shutdown with the stalled and the partial connections still open.
    stop(runtime, daemon);
    drop(partial);
}

#[test]
fn a_following_request_streams_after_its_reply_and_other_requests_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let (runtime, daemon, _handler) = start(dir.path());
    let home = dir.path();
    std::thread::scope(|s| {
        let follower = s.spawn(move || {
            let mut chunks = Vec::new();
            let reply = control_request(
                home,
                &ControlRequest {
                    argv: vec!["follow".into()],
                    stdin: None,
                    parsed: None,
                },
                |chunk| {
                    chunks.push(chunk.to_string());
                    chunks.len() < 2
                },
            )
            .expect("a daemon answers")
            .expect("a reply");
            (reply.follow, chunks)
        });
        // Until the follower's stream is set up, an add may come before it: retry.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut i = 0;
        while !follower.is_finished() {
            assert!(Instant::now() < deadline, "the follower saw no growth");
            i += 1;
            let added = control_request(
                home,
                &ControlRequest {
                    argv: vec!["add".into(), format!("{i}_more")],
                    stdin: None,
                    parsed: None,
                },
                |_| true,
            )
            .expect("a daemon answers")
            .expect("a reply");
            assert_eq!(added.stdout, "added\n");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (follow, chunks) = follower.join().unwrap();
        assert!(follow);
        assert_eq!(chunks, ["start\n", "grew\n"]);
    });
    stop(runtime, daemon);
}
