//! Lifecycle envelopes: derived the same on every node, walked in Lamport order from a
//! cursor that resumes exactly, and the time-based signals.

mod common;

use common::*;
use huskies_core::{
    events_after, signals, subject_token, Command, Envelope, EventCursor, EventType, ExecutionEvent, Node,
    PipelineEvent, Role,
};

/// Every event of the local log from `from` to the end, with the cursor after each.
fn all_events(node: &Node, from: &EventCursor, step: usize) -> Vec<(Envelope, EventCursor)> {
    let mut out = Vec::new();
    let mut at = from.clone();
    loop {
        let b = events_after(node, &at, step).unwrap();
        out.extend(b.events);
        if b.ops_read == 0 {
            return out;
        }
        at = b.end;
    }
}

fn types(evs: &[(Envelope, EventCursor)]) -> Vec<String> {
    evs.iter().map(|(e, _)| e.kind.clone()).collect()
}

#[test]
fn every_node_derives_the_same_envelopes_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(5);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    sync(&mut a, &mut b);
    add_story(&mut a, at(1), "1_x.y");
    event(&mut a, at(2), "1_x.y", PipelineEvent::DepsMet);
    sync(&mut a, &mut b);
    b.execute(
        at(3),
        Command::Claim {
            id: sid("1_x.y"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    event(&mut b, at(4), "1_x.y", PipelineEvent::GatesStarted);
    b.execute(at(5), Command::Release { id: sid("1_x.y") }).unwrap();
    sync(&mut a, &mut b);
    a.execute(at(6), Command::DeleteStory { id: sid("1_x.y") })
        .unwrap_or_else(|_| panic!("delete"));
    sync(&mut a, &mut b);

    let ea = all_events(&a, &EventCursor::default(), 1 << 20);
    let eb = all_events(&b, &EventCursor::default(), 64);
    let strip = |v: &[(Envelope, EventCursor)]| v.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>();
    assert_eq!(
        strip(&ea),
        strip(&eb),
        "the same events, ids and bytes on both nodes"
    );
    let t = types(&ea);
    assert_eq!(
        t,
        [
            "org.huskies.member.added",
            "org.huskies.story.added",
            "org.huskies.story.transitioned",
            "org.huskies.claim.taken",
            "org.huskies.story.transitioned",
            "org.huskies.claim.released",
            "org.huskies.story.removed",
        ]
    );
    let tr = &ea[2].0;
    assert_eq!(tr.attributes.story.as_deref(), Some("1_x.y"));
    assert_eq!(tr.attributes.event.as_deref(), Some("deps-met"));
    assert_eq!(tr.attributes.from.as_ref().unwrap()["kind"], "backlog");
    assert_eq!(tr.attributes.to.as_ref().unwrap()["kind"], "coding");
    assert_eq!(tr.attributes.concurrent, Some(false));
    assert_eq!(
        tr.attributes.author.as_deref(),
        Some(a.node_id().to_hex().as_str())
    );
    assert_eq!(tr.attributes.cluster, a.cluster_id().to_hex());
    assert_eq!(tr.version, "1.0");
    assert_eq!(tr.timestamp, at(2).to_rfc3339());
    let ids: std::collections::BTreeSet<_> = ea.iter().map(|(e, _)| e.id.clone()).collect();
    assert_eq!(ids.len(), ea.len(), "ids are unique");
    // Subjects: wildcard-friendly, escaped story token, unique per event.
    assert_eq!(
        tr.subject(),
        format!(
            "huskies.{}.story.transitioned.1_x%2Ey.{}",
            a.cluster_id().to_hex(),
            tr.id
        )
    );
    // The JSON round-trips (the bindings and consumers parse it back).
    let json = serde_json::to_string(tr).unwrap();
    assert!(json.contains("\"type\":\"org.huskies.story.transitioned\""));
    assert_eq!(&serde_json::from_str::<Envelope>(&json).unwrap(), tr);
}

#[test]
fn resuming_from_any_cursor_yields_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(9);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    for i in 0..6 {
        add_story(&mut a, at(1 + i), &format!("{i}_a"));
        add_story(&mut b, at(1 + i), &format!("{i}_b"));
    }
    sync(&mut a, &mut b);
    // An expired claim of A taken over by B: one op, two events (taken + lost).
    a.execute(
        at(10),
        Command::Claim {
            id: sid("0_a"),
            ttl_secs: 5,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    b.execute(
        at(100),
        Command::Claim {
            id: sid("0_a"),
            ttl_secs: 60,
        },
    )
    .unwrap();
    let all = all_events(&b, &EventCursor::default(), 1 << 20);
    let n = all.len();
    assert_eq!(
        types(&all[n - 2..]),
        ["org.huskies.claim.taken", "org.huskies.claim.lost"]
    );
    assert_eq!(
        all[n - 1].0.attributes.node.as_deref(),
        Some(a.node_id().to_hex().as_str())
    );
    for i in 0..n {
        let cursor: EventCursor = all[i].1.to_string().parse().unwrap();
        assert_eq!(cursor, all[i].1, "the text form round-trips");
        let rest = all_events(&b, &cursor, 200);
        let want: Vec<_> = all[i + 1..].iter().map(|(e, _)| e.id.clone()).collect();
        let got: Vec<_> = rest.iter().map(|(e, _)| e.id.clone()).collect();
        assert_eq!(got, want, "resuming after event {i}");
    }
    assert!("zz".parse::<EventCursor>().is_err());
    assert!("ab:1".parse::<EventCursor>().is_err());
}

#[test]
fn signals_orphaned_due_and_expired_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = TestRng::new(3);
    let mut a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let mut b = join(&dir.path().join("b"), &mut a, Role::Member, &mut rng, at(0));
    add_story(&mut a, at(1), "1_run");
    add_story(&mut a, at(1), "2_wait");
    let exec = |n: &mut Node, t: u64, id: &str, event: ExecutionEvent| {
        n.execute(at(t), Command::Execution { id: sid(id), event })
            .unwrap();
    };
    exec(
        &mut a,
        2,
        "1_run",
        ExecutionEvent::SpawnRequested {
            agent: "coder".into(),
        },
    );
    exec(&mut a, 3, "1_run", ExecutionEvent::SpawnedSuccessfully);
    exec(
        &mut a,
        2,
        "2_wait",
        ExecutionEvent::SpawnRequested {
            agent: "coder".into(),
        },
    );
    exec(
        &mut a,
        3,
        "2_wait",
        ExecutionEvent::HitRateLimit { resume_at: at(50) },
    );
    a.execute(
        at(4),
        Command::Claim {
            id: sid("1_run"),
            ttl_secs: 20,
        },
    )
    .unwrap();
    sync(&mut a, &mut b);
    let stale = 90_000;
    // Nothing is due yet.
    assert!(signals(&a, at(10), stale).unwrap().is_empty());
    let kinds = |v: &[Envelope]| {
        let mut k: Vec<_> = v.iter().map(|e| e.event_type().unwrap()).collect();
        k.sort();
        k
    };
    let at60 = signals(&a, at(60), stale).unwrap();
    assert_eq!(kinds(&at60), [EventType::ClaimExpired, EventType::ExecutionDue]);
    let at200 = signals(&a, at(200), stale).unwrap();
    assert_eq!(
        kinds(&at200),
        [
            EventType::ClaimExpired,
            EventType::ExecutionOrphaned,
            EventType::ExecutionDue
        ]
    );
    // The same signal keeps its id as time passes, and every node derives it.
    let id_of = |v: &[Envelope], t: EventType| v.iter().find(|e| e.event_type() == Some(t)).unwrap().clone();
    assert_eq!(
        id_of(&at60, EventType::ExecutionDue),
        id_of(&at200, EventType::ExecutionDue)
    );
    assert_eq!(signals(&b, at(200), stale).unwrap(), at200);
    let orphan = id_of(&at200, EventType::ExecutionOrphaned);
    assert_eq!(orphan.attributes.story.as_deref(), Some("1_run"));
    assert_eq!(orphan.timestamp, at(3 + 90).to_rfc3339());
    // A heartbeat makes it fresh again; going stale later is a new signal.
    exec(&mut a, 300, "1_run", ExecutionEvent::Heartbeat);
    assert!(signals(&a, at(310), stale)
        .unwrap()
        .iter()
        .all(|e| e.event_type() != Some(EventType::ExecutionOrphaned)));
    let later = id_of(
        &signals(&a, at(500), stale).unwrap(),
        EventType::ExecutionOrphaned,
    );
    assert_ne!(later.id, orphan.id);
}

#[test]
fn subject_tokens_are_escaped_injectively() {
    assert_eq!(subject_token("1_a.b"), "1_a%2Eb");
    assert_eq!(subject_token("a*b>c d%"), "a%2Ab%3Ec%20d%25");
    assert_ne!(subject_token("a.b"), subject_token("a%2Eb"));
    for t in ["x.y", "*", ">", "a b"] {
        let s = subject_token(t);
        assert!(!s.contains(['.', '*', '>', ' ']), "{s}");
    }
}
