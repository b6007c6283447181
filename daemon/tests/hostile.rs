//! Hostile peers over real sockets. A real daemon A (the cluster's admin) has a legit peer
//! daemon B dialled to it; an attacker speaks to A's `/crdt-sync` through a raw WebSocket
//! client, sometimes holding a real member's key (the third home, opened in-process).
//!
//! For every attack: the hostile connection (or op) is refused, with its reason counted in
//! A's health report and logged; B's writes keep reaching A meanwhile; A's store is
//! unchanged but for those legit writes; and memory stays bounded.
//!
//! Tests take a global lock and run one at a time: they measure this process's memory and
//! read a shared log, and the machine is small.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use huskies_core::sync::{
    Message, RefuseCode, Session, SessionConfig, SessionOptions, SyncError, PROTOCOL_VERSION,
};
use huskies_core::{
    ClusterId, Command, InitMode, Member, Node, NodeConfig, NodeId, NodeKey, OpContent, OpId, Payload,
    SignedOp, Story, StoryId, VersionVector, MAX_LAMPORT_JUMP, OP_FORMAT_VERSION,
};
use huskies_daemon::{Daemon, DaemonConfig};
use rand_core::RngCore;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Serial execution and log capture.

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Appends the daemon's log to `LOG` (and to stderr with `HOSTILE_LOG=1`).
struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOG.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        if std::env::var_os("HOSTILE_LOG").is_some() {
            let _ = std::io::stderr().write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn install_log_capture() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // Installed before any daemon starts, so `common::init_tracing` finds it in place.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("huskies_daemon=info"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .try_init();
    });
}

fn log_len() -> usize {
    LOG.lock().unwrap_or_else(|e| e.into_inner()).len()
}

/// Some line logged since `mark` contains every one of `parts`.
fn logged_since(mark: usize, parts: &[&str]) -> bool {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    String::from_utf8_lossy(&log[mark.min(log.len())..])
        .lines()
        .any(|l| parts.iter().all(|p| l.contains(p)))
}

/// Resident memory of this process (daemons, attackers and all).
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

// ---------------------------------------------------------------------------------------
// The cluster under attack.

fn story_cmd(id: &str) -> Command {
    Command::AddStory {
        id: StoryId::new(id).unwrap(),
        name: id.into(),
        body: None,
        depends_on: vec![],
    }
}

/// What must not change under attack.
#[derive(Debug, PartialEq)]
struct Snapshot {
    vv: VersionVector,
    stories: Vec<Story>,
    lamport: u64,
    members: Vec<Member>,
    forks: usize,
    quarantined: Vec<NodeId>,
}

fn snapshot(d: &Daemon) -> Snapshot {
    d.with_node(|n| Snapshot {
        vv: n.version_vector(),
        stories: n.stories(None, now()).unwrap(),
        lamport: n.lamport(),
        members: n.members(),
        forks: n.forks().unwrap().len(),
        quarantined: n.quarantined_authors(),
    })
}

/// Counters that grew between two reports, by how much.
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

struct Fixture {
    a: Daemon,
    b: Daemon,
    a_id: NodeId,
    b_id: NodeId,
    cluster: ClusterId,
    homes: Vec<PathBuf>,
    /// The third member, for attackers holding a real key.
    member: Option<Node>,
    /// Legit stories written by B so far.
    b_stories: Vec<String>,
    log_mark: usize,
    dir: tempfile::TempDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Fixture {
    /// A (admin) with `tweak` applied to its config, and B dialled to it; both in sync.
    /// `preload` stories are written on A's home before it starts.
    async fn new(preload: usize, tweak: impl FnOnce(&mut DaemonConfig)) -> Fixture {
        let serial = SERIAL.lock().await;
        install_log_capture();
        let dir = tempfile::tempdir().unwrap();
        let homes = cluster_homes(dir.path(), 3);
        let (a_id, a_seq, cluster) = {
            let mut n = Node::open(&homes[0], NodeConfig::default()).unwrap();
            if preload > 0 {
                let cmds = (0..preload).map(|i| story_cmd(&format!("pre{i}"))).collect();
                for r in n.execute_group(now(), cmds).unwrap() {
                    r.unwrap();
                }
            }
            (n.node_id(), n.version_vector().get(&n.node_id()), n.cluster_id())
        };
        let mut a_config = fast_config("a", vec![]);
        // One heartbeat at start, so that the only writes during a test are the test's.
        a_config.heartbeat_secs = 3600;
        a_config.session.ack_timeout_ms = 10_000;
        a_config.session.silence_timeout_ms = 15_000;
        tweak(&mut a_config);
        let a = start(&homes[0], a_config).await;
        let mut b_config = fast_config("b", vec![a.url()]);
        b_config.heartbeat_secs = 3600;
        let b = start(&homes[1], b_config).await;
        let b_id = b.with_node(|n| n.node_id());
        eventually(40, "A and B connected and in sync", || {
            let va = vv(&a);
            va.get(&a_id) > a_seq
                && va.get(&b_id) >= 1
                && va == vv(&b)
                && a.health().peers.iter().any(|p| p.node_id == Some(b_id.to_hex()))
        })
        .await;
        let member = Node::open(&homes[2], NodeConfig::default()).unwrap();
        Fixture {
            a,
            b,
            a_id,
            b_id,
            cluster,
            homes,
            member: Some(member),
            b_stories: Vec::new(),
            log_mark: log_len(),
            dir,
            _serial: serial,
        }
    }

    fn take_member(&mut self) -> Node {
        self.member.take().expect("the member node is in use")
    }

    fn member_key(&self) -> NodeKey {
        NodeKey::load(&self.homes[2].join("node.key")).unwrap()
    }

    fn disconnects(&self) -> BTreeMap<String, u64> {
        self.a.health().disconnects
    }

    fn rejected(&self) -> BTreeMap<String, u64> {
        self.a.health().rejected
    }

    /// Waits until A's disconnect counters grew by exactly `expected` since `before`.
    async fn expect_disconnects(&self, before: &BTreeMap<String, u64>, expected: &[(&str, u64)]) {
        let expected = counts(expected);
        eventually(10, &format!("A counts disconnects {expected:?}"), || {
            grown(before, &self.disconnects()) == expected
        })
        .await;
    }

    /// B writes `n` stories; they must reach A (and A must still be connected to B).
    async fn b_writes_arrive(&mut self, tag: &str, n: usize) {
        self.b_write(tag, n);
        self.b_writes_arrived(tag).await;
    }

    /// B writes `n` stories.
    fn b_write(&mut self, tag: &str, n: usize) {
        let ids: Vec<String> = (0..n).map(|i| format!("legit_{tag}_{i}")).collect();
        let cmds = ids.iter().map(|id| story_cmd(id)).collect();
        for r in self.b.with_node(|node| node.execute_group(now(), cmds)).unwrap() {
            r.unwrap();
        }
        self.b_stories.extend(ids);
    }

    /// Everything B wrote reaches A.
    async fn b_writes_arrived(&self, tag: &str) {
        let want = vv(&self.b).get(&self.b_id);
        eventually(15, &format!("B's writes ({tag}) reach A"), || {
            vv(&self.a).get(&self.b_id) == want
        })
        .await;
    }

    /// A's store equals `before` plus B's writes since and `extra` ops of other authors
    /// (with `extra_stories`): nothing lost, nothing changed, no fork, clock sane.
    fn assert_store(
        &self,
        before: &Snapshot,
        b_written: usize,
        extra: &[(NodeId, u64)],
        extra_stories: &[&str],
    ) {
        let after = snapshot(&self.a);
        let mut vv = before.vv.clone();
        vv.set(self.b_id, before.vv.get(&self.b_id) + b_written as u64);
        for (author, n) in extra {
            vv.set(*author, before.vv.get(author) + n);
        }
        assert_eq!(after.vv, vv, "A's version vector changed beyond the legit writes");
        let new: Vec<&str> = self.b_stories[self.b_stories.len() - b_written..]
            .iter()
            .map(|s| s.as_str())
            .chain(extra_stories.iter().copied())
            .collect();
        let kept: Vec<&Story> = after
            .stories
            .iter()
            .filter(|s| !new.contains(&s.id.as_str()))
            .collect();
        assert_eq!(kept, before.stories.iter().collect::<Vec<_>>(), "stories changed");
        let mut added: Vec<&str> = after
            .stories
            .iter()
            .map(|s| s.id.as_str())
            .filter(|s| new.contains(s))
            .collect();
        added.sort_unstable();
        let mut want = new.clone();
        want.sort_unstable();
        assert_eq!(added, want, "the legit stories are not all there");
        assert_eq!(after.members, before.members, "membership changed");
        assert_eq!(after.forks, before.forks, "a fork appeared");
        assert_eq!(after.quarantined, before.quarantined, "an author was quarantined");
        let legit_ops = (b_written as u64) + extra.iter().map(|(_, n)| n).sum::<u64>();
        assert!(
            after.lamport <= before.lamport + legit_ops + 10,
            "A's Lamport clock moved from {} to {}",
            before.lamport,
            after.lamport
        );
    }

    fn assert_logged(&self, parts: &[&str]) {
        assert!(
            logged_since(self.log_mark, parts),
            "A did not log a line with {parts:?}"
        );
    }

    /// A still has B as its one peer (once the connections it cut are unregistered).
    async fn assert_only_b_connected(&self) {
        let want = vec![Some(self.b_id.to_hex())];
        eventually(5, "A's only peer is B", || {
            self.a
                .health()
                .peers
                .into_iter()
                .map(|p| p.node_id)
                .collect::<Vec<_>>()
                == want
        })
        .await;
    }

    async fn finish(self) {
        let Fixture {
            a, b, member, dir, ..
        } = self;
        drop(member);
        b.shutdown().await.unwrap();
        a.shutdown().await.unwrap();
        drop(dir);
    }
}

// ---------------------------------------------------------------------------------------
// Attackers.

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

fn challenge() -> [u8; 32] {
    let mut c = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut c);
    c
}

/// How a hand-driven handshake failed (`Other` is read through `Debug`).
#[derive(Debug)]
#[allow(dead_code)]
enum Failed {
    Refused(RefuseCode),
    Other(String),
}

/// Drives a member's side of the handshake by hand over `ws`. Returns the session and the
/// frames it sent (a transcript to replay).
async fn handshake(node: &mut Node, ws: &mut Ws) -> Result<(Session, Vec<Vec<u8>>), Failed> {
    let mut session = Session::new(
        node,
        now(),
        challenge(),
        SessionOptions::default(),
        SessionConfig::default(),
    );
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        while let Some(f) = session
            .poll_transmit(node, now())
            .map_err(|e| Failed::Other(e.to_string()))?
        {
            sent.push(f.clone());
            ws.send(WsMessage::Binary(f.into()))
                .await
                .map_err(|e| Failed::Other(e.to_string()))?;
        }
        if session.is_established() {
            return Ok((session, sent));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return Err(Failed::Other("handshake timed out".into())),
            Ok(Some(Ok(WsMessage::Binary(b)))) => match session.handle_frame(node, now(), &b) {
                Ok(()) => {}
                Err(SyncError::PeerRefused { code, .. }) => return Err(Failed::Refused(code)),
                Err(e) => return Err(Failed::Other(e.to_string())),
            },
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) => return Err(Failed::Other("closed".into())),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(Failed::Other(e.to_string())),
        }
    }
}

/// Reads until the daemon closes the connection; returns the protocol frames it sent.
async fn read_until_closed(ws: &mut Ws, secs: u64, what: &str) -> Vec<Message> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("{what}: the daemon did not close the connection within {secs} s"),
            Ok(Some(Ok(WsMessage::Binary(b)))) => seen.push(Message::decode(&b).unwrap()),
            Ok(Some(Ok(WsMessage::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return seen,
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn refusal(seen: &[Message]) -> Option<RefuseCode> {
    seen.iter().find_map(|m| match m {
        Message::Refuse { code, .. } => Some(*code),
        _ => None,
    })
}

/// What a member connection saw from the daemon.
enum Seen {
    Frame(Message),
    Closed,
}

/// An established member connection, pumped in the background (it reads, merges and
/// acknowledges like an honest peer) while the test injects raw frames.
struct MemberConn {
    inject: mpsc::UnboundedSender<Vec<u8>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<Node>,
}

impl MemberConn {
    async fn open(mut node: Node, url: &str) -> MemberConn {
        let mut ws = connect(url).await;
        let (session, _) = handshake(&mut node, &mut ws).await.expect("member handshake");
        let (inject, inject_rx) = mpsc::unbounded_channel();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(pump(node, session, ws, inject_rx, seen_tx));
        MemberConn { inject, seen, task }
    }

    fn send(&self, frame: Vec<u8>) {
        self.inject.send(frame).unwrap();
    }

    /// Waits for a frame from the daemon matching `pred`.
    async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Message) -> bool) -> Message {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(Some(Seen::Frame(m))) if pred(&m) => return m,
                Ok(Some(Seen::Frame(_))) => {}
                Ok(Some(Seen::Closed)) | Ok(None) => panic!("connection closed while waiting for {what}"),
            }
        }
    }

    /// Waits for the daemon's acknowledgement of `frames` injected `Ops` frames.
    async fn acked(&mut self, frames: u64) -> VersionVector {
        match self
            .wait_for(
                &format!("ack of {frames} frames"),
                |m| matches!(m, Message::Ack { frames: f, .. } if *f >= frames),
            )
            .await
        {
            Message::Ack { have, .. } => have,
            _ => unreachable!(),
        }
    }

    /// Waits until the daemon closed the connection; returns the frames seen until then.
    async fn closed(&mut self, secs: u64, what: &str) -> Vec<Message> {
        let mut frames = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.seen.recv()).await {
                Err(_) => panic!("{what}: the daemon did not close the connection within {secs} s"),
                Ok(Some(Seen::Frame(m))) => frames.push(m),
                Ok(Some(Seen::Closed)) | Ok(None) => return frames,
            }
        }
    }

    /// Closes from our side (or collects a closed connection); gives the node back.
    async fn close(self) -> Node {
        drop(self.inject);
        self.task.await.unwrap()
    }
}

async fn pump(
    mut node: Node,
    mut session: Session,
    mut ws: Ws,
    mut inject: mpsc::UnboundedReceiver<Vec<u8>>,
    seen: mpsc::UnboundedSender<Seen>,
) -> Node {
    let mut open = true;
    while open {
        while let Ok(Some(f)) = session.poll_transmit(&node, now()) {
            if ws.send(WsMessage::Binary(f.into())).await.is_err() {
                break;
            }
        }
        tokio::select! {
            f = inject.recv() => match f {
                Some(f) => {
                    if ws.send(WsMessage::Binary(f.into())).await.is_err() {
                        open = false;
                    }
                }
                None => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    return node;
                }
            },
            m = ws.next() => match m {
                Some(Ok(WsMessage::Binary(b))) => {
                    if let Ok(m) = Message::decode(&b) {
                        let _ = seen.send(Seen::Frame(m));
                    }
                    let _ = session.handle_frame(&mut node, now(), &b);
                }
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => open = false,
                Some(Ok(_)) => {}
            },
            // Keepalives go out on the next turn.
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let _ = seen.send(Seen::Closed);
    // Hold the node until the test takes it back.
    while inject.recv().await.is_some() {}
    node
}

fn story_op(
    key: &NodeKey,
    cluster: ClusterId,
    seq: u64,
    prev: Option<OpId>,
    lamport: u64,
    story: &str,
) -> SignedOp {
    SignedOp::sign(
        OpContent {
            version: OP_FORMAT_VERSION,
            cluster,
            author: key.node_id(),
            seq,
            lamport,
            prev,
            wall: now(),
            payload: Payload::StoryCreate {
                story: StoryId::new(story).unwrap(),
                name: story.into(),
                body: None,
                depends_on: vec![],
            },
        },
        key,
    )
    .unwrap()
}

fn ops_frame(ops: &[&[u8]]) -> Vec<u8> {
    Message::Ops {
        ops: ops.iter().map(|o| o.to_vec()).collect(),
    }
    .encode()
}

fn hello(cluster: ClusterId, node: NodeId, ticket: Option<[u8; 32]>) -> Vec<u8> {
    Message::Hello {
        protocol: PROTOCOL_VERSION,
        cluster,
        node,
        challenge: challenge(),
        ticket,
    }
    .encode()
}

async fn send_binary(ws: &mut Ws, frame: Vec<u8>) {
    ws.send(WsMessage::Binary(frame.into())).await.unwrap();
}

/// A client WebSocket frame header (masked with a zero key, so the payload goes as is).
fn frame_header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0; 4]);
    h
}

/// Writes `bytes`: false once the daemon has cut the connection. Panics if the daemon
/// neither reads nor closes for 5 s.
async fn write_or_cut(ws: &mut Ws, bytes: &[u8], written: u64) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), ws.get_mut().write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => panic!("the daemon stopped reading after {written} bytes without closing"),
    }
}

/// Writes `header` then chunks of zeros (each preceded by `chunk_header`, if any) under
/// the WebSocket layer, until the daemon cuts the connection; returns the bytes written.
/// Panics if the daemon accepts `give_up` bytes.
async fn flood(ws: &mut Ws, header: &[u8], chunk_header: Option<&[u8]>, give_up: u64) -> u64 {
    if !write_or_cut(ws, header, 0).await {
        return 0;
    }
    let mut written = header.len() as u64;
    let mut bytes = chunk_header.map(|h| h.to_vec()).unwrap_or_default();
    bytes.extend_from_slice(&[0u8; 64 * 1024]);
    while written < give_up {
        if !write_or_cut(ws, &bytes, written).await {
            return written;
        }
        written += bytes.len() as u64;
    }
    panic!("the daemon accepted {written} bytes of one message");
}

// ---------------------------------------------------------------------------------------
// 1. Garbage.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_text_and_out_of_order_frames_are_cut_and_counted() {
    let mut f = Fixture::new(0, |_| {}).await;
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let r0 = f.rejected();

    // Before any handshake: garbage bytes, a text frame, an `Ops` frame instead of `Hello`.
    let mut garbage = connect(&f.a.url()).await;
    send_binary(&mut garbage, vec![0xff; 64]).await;
    let mut text = connect(&f.a.url()).await;
    text.send(WsMessage::Text("hello?".into())).await.unwrap();
    let mut early = connect(&f.a.url()).await;
    send_binary(&mut early, ops_frame(&[])).await;
    f.b_writes_arrive("during", 3).await;
    assert_eq!(
        refusal(&read_until_closed(&mut garbage, 5, "garbage").await),
        Some(RefuseCode::Protocol)
    );
    read_until_closed(&mut text, 5, "text frame").await;
    assert_eq!(
        refusal(&read_until_closed(&mut early, 5, "ops before hello").await),
        Some(RefuseCode::Protocol)
    );

    // After a real member's handshake: garbage op bytes inside a valid frame are rejected
    // ops (the connection lives on), then a garbage frame cuts it.
    let mut m = MemberConn::open(f.take_member(), &f.a.url()).await;
    m.send(ops_frame(&[&[1, 2, 3], &[0; 200]]));
    m.acked(1).await;
    assert_eq!(grown(&r0, &f.rejected()), counts(&[("malformed", 2)]));
    m.send(vec![0xff; 64]);
    let seen = m.closed(5, "garbage after the handshake").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::Protocol));
    f.member = Some(m.close().await);

    f.expect_disconnects(&d0, &[("malformed", 3), ("unexpected_frame", 1)])
        .await;
    f.b_writes_arrive("after", 3).await;
    f.assert_store(&before, 6, &[], &[]);
    f.assert_only_b_connected().await;
    f.assert_logged(&["connection closed", "malformed"]);
    f.assert_logged(&["connection closed", "malformed", "text frame"]);
    f.assert_logged(&["rejected op", "malformed"]);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 2. Oversized frames and floods.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_floods_are_cut_before_they_are_buffered() {
    const LIMIT: usize = 1024 * 1024;
    let mut f = Fixture::new(0, |c| c.session.max_frame_bytes = LIMIT).await;
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let rss0 = rss_bytes();

    // A member sends one frame a byte over the limit.
    let mut m = MemberConn::open(f.take_member(), &f.a.url()).await;
    m.send(vec![0u8; LIMIT + 1]);
    m.closed(5, "a frame over the limit").await;
    f.member = Some(m.close().await);

    // Unauthenticated floods, with B writing meanwhile: a frame declaring 1 GiB, then a
    // message of endless 64 KiB fragments. Each must be cut near the limit.
    let url = f.a.url();
    let floods = async {
        let mut ws = connect(&url).await;
        let big = flood(&mut ws, &frame_header(true, 2, 1 << 30), None, 256 * MIB).await;
        let mut ws = connect(&url).await;
        let first = [frame_header(false, 2, 64 * 1024), vec![0; 64 * 1024]].concat();
        let more = frame_header(false, 0, 64 * 1024);
        let fragments = flood(&mut ws, &first, Some(&more), 256 * MIB).await;
        (big, fragments)
    };
    let ((big, fragments), ()) = tokio::join!(floods, f.b_writes_arrive("during", 5));
    // The kernel's socket buffers take a few MiB before the daemon's reset arrives.
    assert!(big < 32 * MIB, "{big} bytes of a 1 GiB frame were taken");
    assert!(fragments < 32 * MIB, "{fragments} bytes of fragments were taken");
    let growth = rss_bytes().saturating_sub(rss0);
    eprintln!(
        "floods: {} KiB of a 1 GiB frame, {} KiB of fragments taken; RSS +{} KiB",
        big / 1024,
        fragments / 1024,
        growth / 1024
    );
    assert!(growth < 64 * MIB, "memory grew by {} MiB", growth / MIB);

    f.expect_disconnects(&d0, &[("frame_too_large", 3)]).await;
    f.assert_logged(&["connection closed", "frame_too_large", "too long"]);
    f.b_writes_arrive("after", 2).await;
    f.assert_store(&before, 7, &[], &[]);
    f.assert_only_b_connected().await;
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 3. Forged signature.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_signature_is_rejected_and_does_not_poison_the_real_op() {
    let mut f = Fixture::new(0, |_| {}).await;
    let key = f.member_key();
    let member_id = key.node_id();
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let r0 = f.rejected();

    let real = story_op(&key, f.cluster, 1, None, before.lamport + 1, "member_story");
    let mut forged = real.bytes().to_vec();
    let last = forged.len() - 1;
    forged[last - 20] ^= 0x01; // a bit of the signature
                               // Content changed under a valid signature: another op id, the same signature.
    let mut tampered = real.bytes().to_vec();
    let name_at = tampered.len() - 64 - 4;
    tampered[name_at] ^= 0x01;

    let mut m = MemberConn::open(f.take_member(), &f.a.url()).await;
    f.b_writes_arrive("before", 2).await;
    m.send(ops_frame(&[&forged]));
    m.send(ops_frame(&[&tampered]));
    let have = m.acked(2).await;
    assert_eq!(have.get(&member_id), 0, "a forged op was merged");
    assert_eq!(grown(&r0, &f.rejected()), counts(&[("bad_signature", 2)]));
    f.assert_store(&before, 2, &[], &[]);
    f.b_writes_arrive("during", 2).await;

    // The genuine op, same id as the forgery, is still accepted and reaches B.
    m.send(ops_frame(&[real.bytes()]));
    let have = m.acked(3).await;
    assert_eq!(have.get(&member_id), 1, "the genuine op was not merged");
    eventually(10, "B gets the member's op through A", || {
        vv(&f.b).get(&member_id) == 1
    })
    .await;
    f.assert_store(&before, 4, &[(member_id, 1)], &["member_story"]);
    assert_eq!(
        grown(&d0, &f.disconnects()),
        counts(&[]),
        "a connection was dropped"
    );
    f.assert_logged(&["rejected op", "bad_signature"]);
    f.member = Some(m.close().await);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 4. Keys that are not members.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_foreign_impersonated_and_removed_keys_are_refused() {
    let mut f = Fixture::new(0, |_| {}).await;
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let url = f.a.url();

    // A fresh key, without and with a made-up join ticket.
    let stranger = NodeKey::generate(&mut rand_core::OsRng).node_id();
    let mut ws = connect(&url).await;
    send_binary(&mut ws, hello(f.cluster, stranger, None)).await;
    let seen = read_until_closed(&mut ws, 5, "unknown key").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::NotMember));
    assert!(
        !seen.iter().any(|m| matches!(m, Message::Auth { .. })),
        "A proved itself to a stranger"
    );
    let mut ws = connect(&url).await;
    send_binary(&mut ws, hello(f.cluster, stranger, Some([7; 32]))).await;
    let seen = read_until_closed(&mut ws, 5, "bogus ticket").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::Ticket));

    // A real node of another cluster (its own session would refuse A first: speak raw).
    let foreign = Node::init(
        &f.dir.path().join("foreign"),
        InitMode::NewCluster { name: "other".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap();
    let mut ws = connect(&url).await;
    send_binary(&mut ws, hello(foreign.cluster_id(), foreign.node_id(), None)).await;
    let seen = read_until_closed(&mut ws, 5, "foreign cluster").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::Cluster));

    // Impersonating B, a connected member, without its key.
    let mut ws = connect(&url).await;
    send_binary(&mut ws, hello(f.cluster, f.b_id, None)).await;
    let Some(Ok(WsMessage::Binary(_))) = ws.next().await else {
        panic!("no hello from A")
    };
    send_binary(
        &mut ws,
        Message::Auth {
            proof: [[9; 32]; 2],
            have: VersionVector::default(),
            heads: vec![],
        }
        .encode(),
    )
    .await;
    let seen = read_until_closed(&mut ws, 5, "impersonation").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::BadProof));
    f.b_writes_arrive("during", 2).await;
    f.expect_disconnects(
        &d0,
        &[("not_member", 1), ("ticket", 1), ("cluster", 1), ("bad_proof", 1)],
    )
    .await;
    f.assert_only_b_connected().await;

    // A member connected when the admin removes it is cut, and cannot come back.
    let mut member = f.take_member();
    let member_id = member.node_id();
    let mut m = MemberConn::open(member, &url).await;
    eventually(5, "the member is connected", || {
        f.a.health()
            .peers
            .iter()
            .any(|p| p.node_id == Some(member_id.to_hex()))
    })
    .await;
    f.a.with_node(|n| n.execute(now(), Command::RemoveMember { node: member_id }))
        .unwrap();
    let seen = m.closed(10, "removed member still connected").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::NotMember));
    member = m.close().await;
    let mut ws = connect(&url).await;
    match handshake(&mut member, &mut ws).await {
        Err(Failed::Refused(RefuseCode::NotMember)) => {}
        other => panic!("a removed member was not refused: {:?}", other.map(|_| ())),
    }
    f.member = Some(member);
    f.expect_disconnects(
        &d0,
        &[("not_member", 3), ("ticket", 1), ("cluster", 1), ("bad_proof", 1)],
    )
    .await;
    f.b_writes_arrive("after", 2).await;
    f.assert_store(
        &Snapshot {
            members: snapshot(&f.a).members,
            ..before
        },
        4,
        &[(f.a_id, 1)],
        &[],
    );
    f.assert_only_b_connected().await;
    f.assert_logged(&["connection closed", "not_member"]);
    f.assert_logged(&["connection closed", "bad_proof"]);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 5. Replays.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_ops_are_duplicates_and_a_replayed_handshake_fails() {
    let mut f = Fixture::new(0, |_| {}).await;
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let r0 = f.rejected();
    let applied0 = f.a.health().ops_applied;
    let url = f.a.url();

    // Everything A holds, sent back ten times by a member.
    let all: Vec<Vec<u8>> = f.a.with_node(|n| {
        n.ops_since(&VersionVector::default())
            .unwrap()
            .iter()
            .map(|o| o.bytes().to_vec())
            .collect()
    });
    assert!(all.len() >= 5);
    let frame = ops_frame(&all.iter().map(|o| o.as_slice()).collect::<Vec<_>>());
    let mut member = f.take_member();
    let mut ws = connect(&url).await;
    let (_, transcript) = handshake(&mut member, &mut ws).await.expect("member handshake");
    drop(ws);
    // (A new connection while A still holds this one would be closed as a duplicate.)
    let member_hex = member.node_id().to_hex();
    eventually(10, "A dropped the first connection", || {
        !f.a.health()
            .peers
            .iter()
            .any(|p| p.node_id.as_ref() == Some(&member_hex))
    })
    .await;
    let mut m = MemberConn::open(member, &url).await;
    for _ in 0..10 {
        m.send(frame.clone());
    }
    let have = m.acked(10).await;
    assert_eq!(have, before.vv);
    assert_eq!(grown(&r0, &f.rejected()), counts(&[]));
    assert_eq!(f.a.health().ops_applied, applied0);
    f.assert_store(&before, 0, &[], &[]);
    f.b_writes_arrive("during", 2).await;
    f.member = Some(m.close().await);

    // The member's earlier `Hello` and `Auth`, replayed on a new connection: A's challenge
    // is fresh, so the old proof does not verify.
    assert_eq!(transcript.len(), 2);
    let mut ws = connect(&url).await;
    send_binary(&mut ws, transcript[0].clone()).await;
    send_binary(&mut ws, transcript[1].clone()).await;
    let seen = read_until_closed(&mut ws, 5, "replayed handshake").await;
    assert_eq!(refusal(&seen), Some(RefuseCode::BadProof));

    // Two closes by the member ("closed", or "transport" for the dropped socket).
    eventually(10, "A counts the replayed handshake", || {
        grown(&d0, &f.disconnects()).get("bad_proof") == Some(&1)
    })
    .await;
    let d = grown(&d0, &f.disconnects());
    assert_eq!(d.values().sum::<u64>(), 3, "disconnects {d:?}");
    f.b_writes_arrive("after", 2).await;
    f.assert_store(&before, 4, &[], &[]);
    f.assert_only_b_connected().await;
    f.assert_logged(&["connection closed", "bad_proof"]);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 6. Lamport jumps.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lamport_jump_is_rejected_and_the_clock_does_not_move() {
    let mut f = Fixture::new(0, |_| {}).await;
    let key = f.member_key();
    let member_id = key.node_id();
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let r0 = f.rejected();
    let far = before.lamport + MAX_LAMPORT_JUMP + 1;

    let mut m = MemberConn::open(f.take_member(), &f.a.url()).await;
    // Two versions of seq 1 jumping the clock: both refused, and not taken for a fork.
    let jump = story_op(&key, f.cluster, 1, None, far, "jump1");
    let max = story_op(&key, f.cluster, 1, None, u64::MAX, "jump2");
    m.send(ops_frame(&[jump.bytes(), max.bytes()]));
    let have = m.acked(1).await;
    assert_eq!(have.get(&member_id), 0);
    assert_eq!(grown(&r0, &f.rejected()), counts(&[("lamport_jump", 2)]));
    f.assert_store(&before, 0, &[], &[]);
    f.b_writes_arrive("during", 2).await;

    // A sane seq 1 is accepted; a seq 2 on it that jumps is refused.
    let ok = story_op(&key, f.cluster, 1, None, before.lamport + 1, "sane");
    m.send(ops_frame(&[ok.bytes()]));
    assert_eq!(m.acked(2).await.get(&member_id), 1);
    let jump2 = story_op(&key, f.cluster, 2, Some(ok.id()), far + 100, "jump3");
    m.send(ops_frame(&[jump2.bytes()]));
    assert_eq!(m.acked(3).await.get(&member_id), 1);
    assert_eq!(grown(&r0, &f.rejected()), counts(&[("lamport_jump", 3)]));
    assert!(
        f.a.with_node(|n| n.is_active_member(&member_id)),
        "the member was quarantined"
    );

    f.b_writes_arrive("after", 2).await;
    f.assert_store(&before, 4, &[(member_id, 1)], &["sane"]);
    assert_eq!(
        grown(&d0, &f.disconnects()),
        counts(&[]),
        "a connection was dropped"
    );
    f.assert_logged(&["rejected op", "lamport_jump"]);
    f.member = Some(m.close().await);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 7. Handshakes that never complete.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_times_out() {
    const TIMEOUT_MS: i64 = 1500;
    let mut f = Fixture::new(0, |c| c.session.handshake_timeout_ms = TIMEOUT_MS).await;
    let before = snapshot(&f.a);
    let d0 = f.disconnects();
    let member_id = f.member.as_ref().unwrap().node_id();

    let t0 = Instant::now();
    let mut silent = connect(&f.a.url()).await;
    let mut half = connect(&f.a.url()).await;
    // A member's `Hello`, then nothing.
    send_binary(&mut half, hello(f.cluster, member_id, None)).await;
    f.b_write("during", 2);
    let (silent, half, ()) = tokio::join!(
        async {
            let seen = read_until_closed(&mut silent, 10, "silent connection").await;
            (seen, t0.elapsed(), "silent")
        },
        async {
            let seen = read_until_closed(&mut half, 10, "half handshake").await;
            (seen, t0.elapsed(), "half")
        },
        f.b_writes_arrived("during"),
    );
    for (seen, took, which) in [silent, half] {
        assert_eq!(refusal(&seen), Some(RefuseCode::Timeout), "{which}");
        assert!(
            took >= Duration::from_millis(TIMEOUT_MS as u64),
            "{which}: cut after {took:?}, before the handshake timeout"
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS as u64 + 3000),
            "{which}: cut only after {took:?}"
        );
    }
    f.expect_disconnects(&d0, &[("handshake_timeout", 2)]).await;
    f.b_writes_arrive("after", 2).await;
    f.assert_store(&before, 4, &[], &[]);
    f.assert_only_b_connected().await;
    f.assert_logged(&["connection closed", "handshake_timeout"]);
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// 8. A member that never reads.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_reads_is_cut_and_costs_bounded_memory() {
    const STORIES: usize = 20_000;
    const WINDOW: usize = 1024 * 1024;
    let mut f = Fixture::new(STORIES, |c| {
        c.session.max_unacked_bytes = WINDOW;
        c.session.target_frame_bytes = 64 * 1024;
        c.session.ack_timeout_ms = 2000;
        c.session.silence_timeout_ms = 15_000;
        c.write_timeout_ms = 2000;
    })
    .await;
    let before = snapshot(&f.a);
    let held: u64 = f.a.with_node(|n| {
        n.ops_since(&VersionVector::default())
            .unwrap()
            .iter()
            .map(|o| o.bytes().len() as u64)
            .sum()
    });
    assert!(
        held > 3 * WINDOW as u64,
        "only {held} bytes to send: not a test of the window"
    );
    let d0 = f.disconnects();
    let sent0 = f.a.health().ops_sent;
    let rss0 = rss_bytes();

    // A real member completes the handshake, then never reads again.
    let mut member = f.take_member();
    let member_id = member.node_id();
    let mut ws = connect(&f.a.url()).await;
    let t0 = Instant::now();
    handshake(&mut member, &mut ws).await.expect("member handshake");
    eventually(5, "the member is connected", || {
        f.a.health()
            .peers
            .iter()
            .any(|p| p.node_id == Some(member_id.to_hex()))
    })
    .await;
    // A keeps serving B while its connection to the stalled member waits.
    f.b_write("during", 3);
    let cut = async {
        f.expect_disconnects(&d0, &[("not_reading", 1)]).await;
        t0.elapsed()
    };
    let (took, ()) = tokio::join!(cut, f.b_writes_arrived("during"));
    assert!(took < Duration::from_secs(8), "cut only after {took:?}");
    let sent = f.a.health().ops_sent - sent0;
    // The member got the ops of the window and a frame, not A's whole log.
    assert!(sent > 0, "A sent nothing: the member had nothing to not read");
    assert!(
        (sent as usize) < STORIES / 2,
        "A sent {sent} of {STORIES} ops to a peer that does not read"
    );
    let growth = rss_bytes().saturating_sub(rss0);
    eprintln!(
        "not reading: cut after {took:?}; {sent} of {STORIES} ops sent; RSS +{} KiB",
        growth / 1024
    );
    assert!(growth < 64 * MIB, "memory grew by {} MiB", growth / MIB);
    drop(ws);
    f.member = Some(member);

    f.b_writes_arrive("after", 2).await;
    f.assert_store(&before, 5, &[], &[]);
    f.assert_only_b_connected().await;
    f.assert_logged(&["connection closed", "not_reading"]);
    f.finish().await;
}

/// A node whose old connection went half-open (silent, never closed) reconnects: once the
/// old one has missed two keepalives, the new one replaces it instead of being refused as a
/// duplicate until the old one times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_replaces_a_half_open_connection() {
    let mut f = Fixture::new(0, |_| {}).await;
    let mut node = f.take_member();
    let member = node.node_id();
    let before = f.disconnects();
    let mut old = connect(&f.a.url()).await;
    handshake(&mut node, &mut old).await.expect("first connection");
    // From here on the old connection is silent in both directions.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut new = connect(&f.a.url()).await;
    handshake(&mut node, &mut new)
        .await
        .expect("the reconnect is accepted, not refused as a duplicate");
    eventually(5, "the half-open connection is closed as a duplicate", || {
        grown(&before, &f.disconnects()) == counts(&[("duplicate", 1)])
    })
    .await;
    let peers = f.a.health().peers;
    assert_eq!(
        peers
            .iter()
            .filter(|p| p.node_id == Some(member.to_hex()))
            .count(),
        1
    );
    drop((old, new));
    f.member = Some(node);
    f.finish().await;
}
