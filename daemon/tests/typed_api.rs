//! The typed API over a real daemon's control socket: `RemoteNode` calls run on the
//! daemon's node with the same results as `api::serve` on an owned node; subscriptions
//! stream committed transitions; a stopped daemon is reported, not waited for.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use huskies_core::{InitMode, Node, NodeConfig, Timestamp};
use huskies_daemon::api::{ApiCommand, ApiContext, ApiErrorKind, ApiEventArgs, ApiReply, ApiRequest};
use huskies_daemon::{control_request, ControlRequest, Daemon, DaemonConfig, RemoteNode, TypedOnly};

fn now() -> Timestamp {
    Timestamp::from_datetime(chrono::Utc::now())
}

fn add(id: &str) -> ApiCommand {
    ApiCommand::AddStory {
        id: id.into(),
        name: id.into(),
        body: None,
        depends_on: vec![],
    }
}

fn event(id: &str, name: &str) -> ApiCommand {
    ApiCommand::Event {
        id: id.into(),
        event: name.into(),
        args: ApiEventArgs::default(),
    }
}

fn stage(reply: ApiReply) -> String {
    match reply {
        ApiReply::Story(s) => s.stage.kind,
        other => panic!("not a story: {other:?}"),
    }
}

#[test]
fn serve_on_an_owned_node_validates_through_the_core() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::init(
        dir.path(),
        InitMode::NewCluster { name: "t".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap();
    let ctx = ApiContext::default();
    let run = |node: &mut Node, r: ApiRequest| huskies_daemon::api::serve(node, now(), &r, &ctx);
    assert_eq!(
        stage(run(&mut node, ApiRequest::Execute { command: add("1_a") }).unwrap()),
        "backlog"
    );
    let bad = run(
        &mut node,
        ApiRequest::Execute {
            command: event("1_a", "no-such"),
        },
    )
    .unwrap_err();
    assert_eq!(bad.kind, ApiErrorKind::InvalidArgument);
    let wrong = run(
        &mut node,
        ApiRequest::Execute {
            command: event("1_a", "accepted"),
        },
    )
    .unwrap_err();
    assert_eq!(wrong.kind, ApiErrorKind::InvalidTransition);
    // A group: refused commands are reported in place, the others commit together.
    let reply = run(
        &mut node,
        ApiRequest::Group {
            commands: vec![add("2_b"), add("1_a"), add("bad id!"), event("2_b", "deps-met")],
        },
    )
    .unwrap();
    let ApiReply::Group(results) = reply else {
        panic!("not a group reply")
    };
    let kinds: Vec<Option<ApiErrorKind>> = results.iter().map(|r| r.as_ref().map(|e| e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            None,
            Some(ApiErrorKind::AlreadyExists),
            Some(ApiErrorKind::InvalidArgument),
            None
        ]
    );
    assert_eq!(
        stage(run(&mut node, ApiRequest::Story { id: "2_b".into() }).unwrap()),
        "coding"
    );
    let ticket = run(&mut node, ApiRequest::Ticket { ttl_secs: 60 }).unwrap_err();
    assert_eq!(ticket.kind, ApiErrorKind::InvalidArgument, "no daemon, no ticket");
}

#[test]
fn a_batch_as_one_json_array_parses_to_the_same_commands() {
    // The wire form a host language builds in native code (Python's `json.dumps`): fields
    // that are empty may be left out.
    let text = r#"[
        {"command": "add_story", "id": "1_a", "name": "A"},
        {"command": "add_story", "id": "2_b", "name": "B", "body": "x", "depends_on": ["1_a"]},
        {"command": "event", "id": "1_a", "event": "deps-met"},
        {"command": "event", "id": "1_a", "event": "gates-passed", "args": {"branch": "f", "commits": 2}},
        {"command": "claim", "id": "1_a", "ttl_secs": 60},
        {"command": "release", "id": "1_a"},
        {"command": "remove", "id": "2_b"}
    ]"#;
    let parsed = huskies_daemon::api::commands_from_json(text).unwrap();
    let expected = vec![
        ApiCommand::AddStory {
            id: "1_a".into(),
            name: "A".into(),
            body: None,
            depends_on: vec![],
        },
        ApiCommand::AddStory {
            id: "2_b".into(),
            name: "B".into(),
            body: Some("x".into()),
            depends_on: vec!["1_a".into()],
        },
        event("1_a", "deps-met"),
        ApiCommand::Event {
            id: "1_a".into(),
            event: "gates-passed".into(),
            args: ApiEventArgs {
                branch: Some("f".into()),
                commits: Some(2),
                ..ApiEventArgs::default()
            },
        },
        ApiCommand::Claim {
            id: "1_a".into(),
            ttl_secs: 60,
        },
        ApiCommand::Release { id: "1_a".into() },
        ApiCommand::Remove { id: "2_b".into() },
    ];
    assert_eq!(parsed, expected);
    // What serializes comes back the same.
    let round = huskies_daemon::api::commands_from_json(&serde_json::to_string(&expected).unwrap()).unwrap();
    assert_eq!(round, expected);
    // Not an array of commands: a typed refusal, never a panic.
    for bad in [
        "",
        "{}",
        "[1]",
        r#"[{"command": "fly", "id": "1_a"}]"#,
        r#"[{"command": "add_story"}]"#,
        r#"[{"command": "claim", "id": "1_a", "ttl_secs": -1}]"#,
        r#"[{"command": "event", "id": "1_a", "event": "deps-met", "args": {"commits": "2"}}]"#,
    ] {
        let e = huskies_daemon::api::commands_from_json(bad).unwrap_err();
        assert_eq!(e.kind, ApiErrorKind::InvalidArgument, "{bad:?}");
    }
}

#[test]
fn remote_node_runs_requests_on_the_daemons_node() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = Node::init(
        dir.path(),
        InitMode::NewCluster { name: "t".into() },
        &mut rand_core::OsRng,
        now(),
        NodeConfig::default(),
    )
    .unwrap();
    let config = DaemonConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..DaemonConfig::default()
    };
    let daemon = runtime
        .block_on(Daemon::start(node, config, Arc::new(TypedOnly)))
        .unwrap();
    let remote = RemoteNode::connect(dir.path(), Duration::from_secs(10)).expect("the daemon answers");

    let (tx, rx) = mpsc::channel();
    let sub = remote
        .subscribe(move |e| {
            let _ = tx.send(e);
        })
        .unwrap();
    assert_eq!(
        stage(remote.call(&ApiRequest::Execute { command: add("1_a") }).unwrap()),
        "backlog"
    );
    assert_eq!(
        stage(
            remote
                .call(&ApiRequest::Execute {
                    command: event("1_a", "deps-met")
                })
                .unwrap()
        ),
        "coding"
    );
    let seen = rx.recv_timeout(Duration::from_secs(10)).expect("an event");
    assert_eq!((seen.story_id.as_str(), seen.after.as_str()), ("1_a", "coding"));
    let missing = remote.call(&ApiRequest::Story { id: "nope".into() }).unwrap_err();
    assert_eq!(missing.kind, ApiErrorKind::NotFound);
    // The daemon's own view agrees.
    let here = daemon.with_node(|n| {
        n.story(&huskies_core::StoryId::new("1_a").unwrap(), now())
            .unwrap()
    });
    assert_eq!(here.stage.kind().as_str(), "coding");
    // Tickets name the daemon's address.
    let ApiReply::Ticket(t) = remote.call(&ApiRequest::Ticket { ttl_secs: 60 }).unwrap() else {
        panic!("not a ticket")
    };
    assert!(t.starts_with("huskies-ticket-v1:"));
    // A command line is refused by a typed-only daemon, not misread.
    let argv = ControlRequest {
        argv: vec!["story".into(), "list".into()],
        stdin: None,
        parsed: None,
    };
    let refused = control_request(dir.path(), &argv, |_| true).unwrap().unwrap();
    assert_eq!(refused.code, 3);
    sub.cancel();
    runtime.block_on(daemon.shutdown()).unwrap();
    let gone = remote.call(&ApiRequest::Info).unwrap_err();
    assert_eq!(gone.kind, ApiErrorKind::Network);
    assert!(RemoteNode::connect(dir.path(), Duration::from_secs(1)).is_none());
}
