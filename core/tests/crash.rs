//! Durability under `kill -9`: a writer process acknowledges ops as it commits them; we
//! kill it mid-burst, reopen its home and require every acknowledged op to be there.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};

use huskies_core::{Command, InitMode, Node, NodeConfig, StoryId, Timestamp};

const CHILD_ENV: &str = "HUSKIES_CRASH_CHILD_HOME";

fn now() -> Timestamp {
    Timestamp::from_millis(1_763_700_000_000)
}

/// The child: writes stories forever in groups of varying size, printing `ack <seq>` for
/// every op once `execute_group` has returned (i.e. after its flush).
#[test]
#[ignore = "runs only as the child process of killed_writer_loses_no_acknowledged_op"]
fn crash_writer_child() {
    let Ok(home) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut node = Node::open(Path::new(&home), NodeConfig::default()).expect("child opens home");
    // Stories s0..s{n-1} exist from earlier rounds (group commits are atomic).
    let mut i = node.stories(None, now()).unwrap().len() as u64;
    loop {
        let group = 1 + (i % 7) as usize;
        let cmds = (0..group)
            .map(|k| Command::AddStory {
                id: StoryId::new(format!("s{}", i + k as u64)).unwrap(),
                name: format!("story {}", i + k as u64),
                body: None,
                depends_on: vec![],
            })
            .collect();
        let results = node.execute_group(now(), cmds).expect("group commits");
        for r in results {
            println!("ack {}", r.expect("command accepted").seq);
        }
        i += group as u64;
    }
}

#[test]
fn killed_writer_loses_no_acknowledged_op() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    {
        Node::init(
            &home,
            InitMode::NewCluster { name: "crash".into() },
            &mut rand_core::OsRng,
            now(),
            NodeConfig::default(),
        )
        .unwrap();
    }
    for round in 0..3 {
        let mut child = Process::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &home)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut acked = Vec::new();
        let target = 300 + round * 200;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest may print "test name ... " on the same line as the first ack.
            if let Some(seq) = line.split("ack ").nth(1) {
                acked.push(seq.parse::<u64>().unwrap());
                if acked.len() >= target {
                    break;
                }
            }
        }
        child.kill().unwrap(); // SIGKILL on unix: no destructors, no flush
        child.wait().unwrap();
        assert!(
            acked.len() >= target,
            "child stopped early after {} acks",
            acked.len()
        );
        let node = Node::open(&home, NodeConfig::default()).expect("reopens after kill -9");
        let held = node.version_vector().get(&node.node_id());
        let highest = *acked.iter().max().unwrap();
        assert!(
            held >= highest,
            "round {round}: acknowledged seq {highest} but the store holds only {held}"
        );
        // The newest story, read before anything folds the journal: the kill may have left
        // its record only in a journal entry (seq 1 is the genesis; story k is seq k + 2).
        let newest = StoryId::new(format!("s{}", held - 2)).unwrap();
        node.story(&newest, now())
            .unwrap_or_else(|e| panic!("round {round}: newest story {newest}: {e}"));
        let report = node.verify(|_| {}).unwrap();
        assert!(report.ok, "round {round}: {:?}", report.problems);
        // The projection holds exactly the stored ops: one story per op after the genesis.
        let stories = node.stories(None, now()).unwrap();
        assert_eq!(
            stories.len() as u64,
            held - 1,
            "round {round}: {} stories for {held} ops (highest acknowledged {highest})",
            stories.len()
        );
    }
}
