//! `session`: one sans-IO sync `Session` of a real node, fed an arbitrary sequence of
//! frames (raw bytes, or well-formed frames the fuzzer fills in: a hello from a fixed key,
//! an auth signed for real or forged, ops signed by the fixed keys, acks, refusals) and timer
//! ticks. Checked throughout:
//!
//! - no panic; every error ends the session with a typed reason, after which it stays quiet
//!   except for at most the one `Refuse` frame it owes;
//! - bounded memory: the unacknowledged window and the out-of-order buffer stay within their
//!   limits, and one `poll_transmit` round yields a bounded number of frames;
//! - the node's projection is unchanged unless a frame of valid ops was merged
//!   (`SessionEvent::Ingested` with something applied, or an admission).

use arbitrary::{Arbitrary, Unstructured};
use ed25519_dalek::Signer;
use huskies_core::sync::{Message, RefuseCode, Session, SessionConfig, SessionEvent, SessionOptions};
use huskies_core::{Command, Node, NodeId, OpId, Timestamp, VersionVector};

use super::ops::{preamble, signing_key, split, Builder, Item};
use super::{at_ms, config, key_id, snapshot, structured, until_empty};

/// The challenge this side's session sends (the auth proof must sign it).
const CHALLENGE: [u8; 32] = [7; 32];

/// One step of the script.
#[derive(Arbitrary, Debug)]
pub enum Step {
    /// Raw frame bytes.
    Raw(Vec<u8>),
    /// A well-formed handshake from fixed key `from`: its `Hello` (our cluster, protocol 1)
    /// and an `Auth` signed for real over our challenge, claiming nothing.
    Handshake {
        /// Sender (fixed key mod 4).
        from: u8,
    },
    /// A `Hello`.
    Hello {
        /// Sender: fixed key (mod 4), or this node itself when 4.
        from: u8,
        /// Protocol version 1 (else this value).
        protocol: Option<u16>,
        /// Our cluster (else another).
        our_cluster: bool,
        /// A ticket secret.
        ticket: Option<[u8; 32]>,
    },
    /// An `Auth`.
    Auth {
        /// Signer (fixed key mod 4).
        from: u8,
        /// Sign our challenge (else a forged proof).
        valid: bool,
        /// Claimed version vector entries: (key, seq).
        have: Vec<(u8, u8)>,
        /// Claimed heads: (key, id byte).
        heads: Vec<(u8, u8)>,
    },
    /// Adds a structured op to the next `Ops` frame.
    Op(Item),
    /// Sends the ops added since the last `Ops` frame as one frame (empty is allowed).
    SendOps,
    /// An `Ack`.
    Ack {
        /// Claimed entries.
        have: Vec<(u8, u16)>,
        /// Frames acknowledged.
        frames: u64,
    },
    /// A `Refuse`.
    Refuse(u8),
    /// Time passes (ms); the driver checks the timers.
    Tick(u16),
    /// A long pause (seconds) before checking the timers.
    Sleep(u8),
}

/// The input.
#[derive(Debug)]
pub struct Input {
    /// Key 1 stays a member (seven inputs in eight; else it is removed before the session).
    pub admit_peer: bool,
    /// Start with a good handshake from key 1 (seven inputs in eight), so most scripts
    /// test an established session.
    pub handshake: bool,
    /// Play the hostile steps (one input in four: raw bytes, stray hellos and auths,
    /// refusals), each of which
    /// ends an established session; without, the script exercises ops, acks and timers.
    pub hostile: bool,
    /// The node writes a few ops of its own first, so there is something to send.
    pub local_ops: u8,
    /// Small frames and window (exercise flow control).
    pub small_limits: bool,
    /// The script (at most 96 steps are used).
    pub steps: Vec<Step>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Input {
            admit_peer: !u.arbitrary::<u8>()?.is_multiple_of(8),
            handshake: !u.arbitrary::<u8>()?.is_multiple_of(8),
            hostile: u.arbitrary::<u8>()?.is_multiple_of(4),
            local_ops: u.arbitrary()?,
            small_limits: u.arbitrary()?,
            steps: until_empty(u)?,
        })
    }
}

/// Runs the target on one input.
pub fn run_bytes(data: &[u8]) {
    if let Some(input) = structured::<Input>(data) {
        run(&input);
    }
}

fn vv(entries: impl IntoIterator<Item = (u8, u64)>) -> VersionVector {
    let mut v = VersionVector::default();
    for (k, s) in entries {
        v.set(key_id(k), s);
    }
    v
}

fn auth_statement(challenge: &[u8; 32], signer: &NodeId, verifier: &NodeId, node: &Node) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + 128);
    m.extend_from_slice(b"huskies/sync/v1\0");
    m.extend_from_slice(challenge);
    m.extend_from_slice(signer.as_bytes());
    m.extend_from_slice(verifier.as_bytes());
    m.extend_from_slice(node.cluster_id().as_bytes());
    m
}

/// Runs the target on a decoded input.
pub fn run(input: &Input) {
    let dir = tempfile::tempdir().expect("temp dir");
    let t0 = at_ms(0);
    // A member of the fuzz cluster (so the fuzzer's signed ops are for its cluster): the
    // genesis by key 0, keys 1 and 2 admitted, then this node; key 3 (or key 1 when
    // `admit_peer` is off, as it is then removed) is a stranger.
    let mut node = super::ingest::joining_node(&dir.path().join("node"), 9);
    let mut b = Builder::default();
    let mut setup = preamble(&mut b);
    setup.push(b.admit(node.node_id()));
    if !input.admit_peer {
        setup.extend(b.build(&super::ops::OpSpec {
            author: 0,
            honesty: 1,
            seq: super::ops::SeqSpec::Next,
            prev: super::ops::PrevSpec::Chain,
            lamport: super::ops::LamportSpec::Next(0),
            wall_secs: 0,
            payload: super::ops::PayloadSpec::MemberRemove { key: 1, cutoff: 0 },
            wrong_cluster: false,
        }));
    }
    let report = node
        .ingest(setup.into_iter().map(|o| o.into_unverified()).collect())
        .expect("setup ingest");
    assert!(report.rejected.is_empty(), "setup refused: {:?}", report.rejected);
    for i in 0..input.local_ops % 8 {
        let id = super::story_id(i);
        let _ = node.execute(
            t0,
            Command::AddStory {
                id,
                name: "x".repeat(usize::from(i) * 100),
                body: None,
                depends_on: vec![],
            },
        );
    }
    let cfg = if input.small_limits {
        SessionConfig {
            max_frame_bytes: 4096,
            target_frame_bytes: 300,
            max_unacked_bytes: 600,
            ..SessionConfig::default()
        }
    } else {
        SessionConfig::default()
    };
    let window = cfg.max_unacked_bytes;
    let max_frame = cfg.max_frame_bytes;
    let mut session = Session::new(&node, t0, CHALLENGE, SessionOptions::default(), cfg);
    let mut now = t0;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut ended = false;
    let (mut established, mut applied) = (false, 0usize);
    let opening = input.handshake.then_some(Step::Handshake { from: 1 });
    for step in opening.iter().chain(input.steps.iter().take(96)) {
        let hostile = matches!(
            step,
            Step::Raw(_) | Step::Hello { .. } | Step::Auth { .. } | Step::Refuse(_)
        );
        if hostile && !input.hostile {
            continue;
        }
        if let Step::Op(item) = step {
            if pending.len() < 32 {
                pending.extend(b.item(item).map(|o| o.bytes().to_vec()));
            }
            continue;
        }
        match step {
            Step::Tick(ms) => now = now.add_millis(i64::from(*ms)),
            Step::Sleep(s) => now = now.add_millis(i64::from(*s) * 1000),
            _ => {}
        }
        let before = snapshot(&node, now);
        let frame: Option<Vec<u8>> = match step {
            Step::Raw(bytes) => Some(bytes.clone()),
            Step::Hello {
                from,
                protocol,
                our_cluster,
                ticket,
            } => Some(
                Message::Hello {
                    protocol: protocol.unwrap_or(1),
                    cluster: if *our_cluster {
                        node.cluster_id()
                    } else {
                        super::ops::cluster()
                    },
                    node: if *from == 4 { node.node_id() } else { key_id(*from) },
                    challenge: [5; 32],
                    ticket: *ticket,
                }
                .encode(),
            ),
            Step::Auth {
                from,
                valid,
                have,
                heads,
            } => {
                let signer = key_id(*from);
                let proof = if *valid {
                    let m = auth_statement(&CHALLENGE, &signer, &node.node_id(), &node);
                    split(&signing_key(*from).sign(&m).to_bytes())
                } else {
                    [[3; 32], [4; 32]]
                };
                Some(
                    Message::Auth {
                        proof,
                        have: vv(have.iter().take(8).map(|(k, s)| (*k, u64::from(*s % 8)))),
                        heads: heads
                            .iter()
                            .take(8)
                            .map(|(k, id)| (key_id(*k), OpId::from_bytes([*id; 32])))
                            .collect(),
                    }
                    .encode(),
                )
            }
            Step::Op(_) => None,
            Step::SendOps => Some(
                Message::Ops {
                    ops: std::mem::take(&mut pending),
                }
                .encode(),
            ),
            Step::Ack { have, frames } => Some(
                Message::Ack {
                    have: vv(have.iter().take(8).map(|(k, s)| (*k, u64::from(*s)))),
                    frames: *frames,
                }
                .encode(),
            ),
            Step::Refuse(code) => Some(
                Message::Refuse {
                    code: [RefuseCode::Protocol, RefuseCode::Timeout, RefuseCode::Shutdown]
                        [usize::from(*code) % 3],
                    reason: "fuzz".into(),
                }
                .encode(),
            ),
            Step::Tick(_) | Step::Sleep(_) | Step::Handshake { .. } => None,
        };
        // Ops added since the last `Ops` frame go first, as one frame: consecutive `Op`
        // steps are a frame even without a `SendOps`.
        let flushed = if pending.is_empty() {
            Ok(())
        } else {
            let ops = Message::Ops {
                ops: std::mem::take(&mut pending),
            }
            .encode();
            session.handle_frame(&mut node, now, &ops)
        };
        let result = flushed.and_then(|()| match (&frame, step) {
            (_, Step::Handshake { from }) => {
                let hello = Message::Hello {
                    protocol: 1,
                    cluster: node.cluster_id(),
                    node: key_id(*from),
                    challenge: [5; 32],
                    ticket: None,
                }
                .encode();
                let m = auth_statement(&CHALLENGE, &key_id(*from), &node.node_id(), &node);
                let auth = Message::Auth {
                    proof: split(&signing_key(*from).sign(&m).to_bytes()),
                    have: VersionVector::default(),
                    heads: Vec::new(),
                }
                .encode();
                session.handle_frames(&mut node, now, &[hello, auth])
            }
            (Some(f), _) => session.handle_frame(&mut node, now, f),
            (None, _) => session.handle_timeout(now),
        });
        if let Err(e) = &result {
            assert!(!e.reason().is_empty());
            ended = true;
        }
        // Drain what the session wants to send, bounded.
        let mut frames = 0;
        loop {
            match session.poll_transmit(&node, now) {
                Ok(Some(f)) => {
                    assert!(f.len() <= max_frame + 1024, "built a frame of {} bytes", f.len());
                    Message::decode(&f).expect("the session sends frames that decode");
                    frames += 1;
                    assert!(frames < 64, "poll_transmit does not run dry");
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(!e.reason().is_empty());
                    ended = true;
                }
            }
        }
        if ended {
            assert!(
                !session.is_established() || result.is_ok(),
                "a failed session still established"
            );
        }
        assert!(
            session.unacked_bytes() <= window + max_frame,
            "unacknowledged bytes {} beyond the window {window}",
            session.unacked_bytes()
        );
        assert!(node.buffered_ops() <= config().max_buffered_ops);
        let events = session.take_events();
        if super::verbose() {
            for e in &events {
                eprintln!("  event {e:?}");
            }
            if let Err(e) = &result {
                eprintln!("  error {e}");
            }
        }
        if session.is_established() {
            established = true;
        }
        applied += events
            .iter()
            .map(|e| match e {
                SessionEvent::Ingested { report } => report.applied,
                _ => 0,
            })
            .sum::<usize>();
        let merged = events.iter().any(|e| match e {
            SessionEvent::Ingested { report } => report.applied > 0 || !report.forks.is_empty(),
            SessionEvent::Admitted { .. } => true,
            _ => false,
        });
        if !merged {
            assert_eq!(
                snapshot(&node, now),
                before,
                "the projection changed although no valid op was merged"
            );
        }
    }
    let _: Option<Timestamp> = session.poll_timeout();
    if super::verbose() {
        eprintln!(
            "session: {} steps, established {established}, {applied} ops applied, ended {ended}, store holds {}",
            input.steps.len(),
            node.version_vector().total()
        );
    }
}
