// An ingest that refuses ops returns `Ok` with the refusals in the report: dropping the
// report unread must not compile silently (`IngestReport` is `#[must_use]`).
#![deny(unused_must_use)]

use huskies_core::{Error, MemoryStore, Node};

fn ingest_and_ignore(node: &mut Node<MemoryStore>, bundle: &[u8]) -> Result<(), Error> {
    node.ingest_bundle(bundle)?;
    Ok(())
}

fn main() {
    let _ = ingest_and_ignore;
}
