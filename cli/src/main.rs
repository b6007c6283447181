//! The `huskies` command.

fn main() {
    println!("huskies {}", env!("CARGO_PKG_VERSION"));
}
