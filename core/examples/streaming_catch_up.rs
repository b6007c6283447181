//! A bounded catch-up: the ops a node lacks, read lazily from the store as bundles of at most
//! N bytes, each ingested as it comes (over any transport; here, a file written and read one
//! bundle at a time). Neither side holds more than about one bundle of ops.
//! Run: `cargo run -p huskies-core --example streaming_catch_up`.
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::time::SystemTime;

use huskies_core::rand_core::OsRng;
use huskies_core::{Command, Error, InitMode, Node, NodeConfig, Role, StoryId, Timestamp, MIN_BUNDLE_BYTES};

fn io(e: std::io::Error) -> Error {
    Error::InvalidArgument(format!("example file: {e}"))
}

fn main() -> Result<(), Error> {
    let now = Timestamp::from_system_time(SystemTime::now());
    let dir = std::env::temp_dir().join(format!("huskies-catch-up-{}", std::process::id()));
    let mut a = Node::init(
        &dir.join("a"),
        InitMode::NewCluster { name: "acme".into() },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;
    let b = Node::init(
        &dir.join("b"),
        InitMode::Join {
            cluster: a.cluster_id(),
        },
        &mut OsRng,
        now,
        NodeConfig::default(),
    )?;
    a.execute(now, Command::add_member(b.node_id(), Role::Member))?;
    // 2,000 stories in one group commit. The outer `?` is the call (a storage failure);
    // each inner result is one command.
    let cmds = (0..2000)
        .map(|i| Ok(Command::add_story(StoryId::new(format!("{i}_story"))?, format!("Story {i}")).into()))
        .collect::<Result<Vec<Command>, Error>>()?;
    for result in a.execute_group(now, cmds)? {
        result?;
    }

    // The smallest bound that fits any op; a real host would use EXPORT_BUNDLE_BYTES (4 MiB).
    let max = MIN_BUNDLE_BYTES;
    let have = b.version_vector();
    drop(b);
    let path = dir.join("catch-up.hsk");
    let mut out = BufWriter::new(File::create(&path).map_err(io)?);
    let mut bundles = 0;
    for bundle in a.export_chunks(&have, max)? {
        let bundle = bundle?;
        assert!(bundle.len() <= max);
        out.write_all(&bundle).map_err(io)?;
        bundles += 1;
    }
    out.flush().map_err(io)?;
    println!(
        "{bundles} bundles of at most {max} bytes written to {}",
        path.display()
    );

    let mut b = Node::open(&dir.join("b"), NodeConfig::default())?;
    let mut input = BufReader::new(File::open(&path).map_err(io)?);
    let mut ingested = 0;
    let report = b.import_reader(&mut input, |done, _| ingested = done)?;
    println!(
        "b ingested {ingested} ops: {} applied, {} refused",
        report.applied,
        report.rejected.len()
    );
    assert_eq!(b.version_vector(), a.version_vector());

    drop((a, b));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
