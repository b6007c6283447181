//! Streaming export: bounded bundles read lazily from the store, each accepted by ingest,
//! and their concatenation (a bundle stream) read back by every importer.

mod common;

use common::*;
use huskies_core::{
    decode_bundle, read_bundle, split_bundles, Command, ErrorKind, Node, PipelineEvent, Role, VersionVector,
    MIN_BUNDLE_BYTES,
};

/// An admin with `stories` stories (bodies of ~2 KB so bundles fill quickly) and a fresh member.
fn admin_and_member(dir: &std::path::Path, stories: usize, rng: &mut TestRng) -> (Node, Node) {
    let mut a = new_cluster(&dir.join("a"), rng, at(0));
    let b = join(&dir.join("b"), &mut a, Role::Member, rng, at(0));
    let cmds: Vec<Command> = (0..stories)
        .map(|i| {
            Command::add_story(sid(&format!("{i}_s")), format!("story {i}"))
                .body("x".repeat(2000 + i))
                .into()
        })
        .collect();
    for r in a.execute_group(at(1), cmds).unwrap() {
        r.unwrap();
    }
    for i in 0..stories {
        a.execute(
            at(2),
            Command::event(sid(&format!("{i}_s")), PipelineEvent::DepsMet),
        )
        .unwrap();
    }
    (a, b)
}

#[test]
fn bounded_bundles_each_ingest_as_they_are_and_converge() {
    let seed = test_seed();
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = admin_and_member(dir.path(), 200, &mut rng);
    let max = MIN_BUNDLE_BYTES;
    let bundles: Vec<Vec<u8>> = a
        .export_chunks(&b.version_vector(), max)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(bundles.len() > 3, "{} bundles", bundles.len());
    for bundle in &bundles {
        assert!(
            bundle.len() <= max,
            "a bundle of {} bytes over {max}",
            bundle.len()
        );
        let report = b.ingest_bundle(bundle).unwrap();
        assert!(report.rejected.is_empty(), "{:?}", report.rejected);
        assert_eq!(report.buffered, 0, "each bundle follows the last in causal order");
    }
    assert_eq!(b.version_vector(), a.version_vector());
    assert_eq!(snapshot(&b, at(5)), snapshot(&a, at(5)));
    // Nothing more to send.
    assert_eq!(a.export_chunks(&b.version_vector(), max).unwrap().count(), 0);
}

#[test]
fn a_bundle_stream_is_read_back_by_every_importer() {
    let mut rng = TestRng::new(test_seed());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = admin_and_member(dir.path(), 120, &mut rng);
    let have = b.version_vector();
    drop(b);
    let mut stream = Vec::new();
    for bundle in a.export_chunks(&have, MIN_BUNDLE_BYTES).unwrap() {
        stream.extend(bundle.unwrap());
    }
    let parts = split_bundles(&stream).unwrap().len();
    assert!(parts > 1);
    let expected = a.version_vector();
    let bhome = dir.path().join("b");
    {
        let mut b = Node::open(&bhome, config()).unwrap();
        let mut calls = 0;
        let report = b
            .import_reader(&mut stream.as_slice(), |_, _| calls += 1)
            .unwrap();
        assert!(report.rejected.is_empty() && report.applied > 0 && calls > parts);
        assert_eq!(b.version_vector(), expected);
    }
    // The same stream through the slice importers: everything is a duplicate now.
    let mut b = Node::open(&bhome, config()).unwrap();
    let again = b.import_bundle(&stream, |_, _| {}).unwrap();
    assert_eq!(again.applied, 0);
    let twice = b.ingest_bundle(&stream).unwrap();
    assert_eq!((twice.applied, twice.rejected.len()), (0, 0));
    // A stream cut short: the slice importers refuse it whole; the reader, at the cut.
    let cut = &stream[..stream.len() - 3];
    assert_eq!(
        b.import_bundle(cut, |_, _| {}).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        b.ingest_bundle(cut).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    let mut r = cut;
    let mut whole = 0;
    let err = loop {
        match read_bundle(&mut r) {
            Ok(Some(_)) => whole += 1,
            Ok(None) => panic!("a cut stream ended cleanly"),
            Err(e) => break e,
        }
    };
    assert_eq!((whole, err.kind()), (parts - 1, ErrorKind::InvalidArgument));
}

#[test]
fn a_bound_below_one_op_of_the_largest_size_is_refused() {
    let mut rng = TestRng::new(test_seed());
    let dir = tempfile::tempdir().unwrap();
    let a = new_cluster(&dir.path().join("a"), &mut rng, at(0));
    let err = a
        .export_chunks(&VersionVector::default(), MIN_BUNDLE_BYTES - 1)
        .err()
        .unwrap();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    // The unbounded export of a node is one bundle that holds every op.
    let one = a.export_since(&VersionVector::default()).unwrap();
    assert_eq!(split_bundles(&one).unwrap().len(), 1);
}

/// The ops of a run of bundles, in order.
fn ops_of(bundles: &[Vec<u8>]) -> Vec<huskies_core::OpId> {
    bundles
        .iter()
        .flat_map(|b| decode_bundle(b).unwrap())
        .map(|op| op.unwrap().id())
        .collect()
}

/// Stopping after any number of bundles and resuming from the cursor gives the rest of
/// the same export: the same ops in the same order, none twice, none missing (bundle
/// boundaries may differ: the resumed export reads the store from another place).
#[test]
fn an_export_resumes_from_its_cursor_after_any_bundle() {
    let seed = test_seed();
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = admin_and_member(dir.path(), 120, &mut rng);
    let max = MIN_BUNDLE_BYTES + 3_000;
    let whole: Vec<Vec<u8>> = a
        .export_chunks(&b.version_vector(), max)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(whole.len() > 3, "{} bundles", whole.len());
    for k in 0..=whole.len() {
        let mut first = a.export_chunks(&b.version_vector(), max).unwrap();
        for _ in 0..k {
            first.next().unwrap().unwrap();
        }
        let cursor = first.cursor();
        let rest: Vec<Vec<u8>> = a
            .export_chunks_from(&cursor, max)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(rest.iter().all(|b| b.len() <= max));
        assert_eq!(
            ops_of(&rest),
            ops_of(&whole[k..]),
            "resumed after {k} bundles (seed {seed})"
        );
    }
}
