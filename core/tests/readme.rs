//! The README's Rust section is `examples/quick_start.rs` verbatim, so what a reader pastes
//! is what CI builds and runs.

#[test]
fn the_readme_rust_block_is_the_quick_start_example() {
    let readme = include_str!("../../README.md");
    let example = include_str!("../examples/quick_start.rs");
    let section = readme
        .split("## Using the core from Rust")
        .nth(1)
        .expect("the README has a Rust section");
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the Rust section has a rust code block");
    assert_eq!(
        block, example,
        "README.md's Rust block differs from core/examples/quick_start.rs"
    );
}
