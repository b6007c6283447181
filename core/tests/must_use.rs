//! Handles and reports that are a mistake to drop do not compile when dropped unread under
//! `#![deny(unused_must_use)]` (compile-fail cases in `tests/compile_fail/`, checked by
//! trybuild against their expected compiler output). Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p huskies-core --test must_use` after a deliberate change.

#[test]
fn dropping_a_must_use_handle_fails_to_compile() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}
