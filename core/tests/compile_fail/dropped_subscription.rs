// A subscription whose handle is dropped at once never delivers an event: the compiler must
// say so (`Subscription` is `#[must_use]`).
#![deny(unused_must_use)]

use huskies_core::{MemoryStore, Node};

fn subscribe_and_drop(node: &Node<MemoryStore>) {
    node.subscribe(|_event| {});
}

fn main() {
    let _ = subscribe_and_drop;
}
