//! Temporary runner for `cli/src/bench.rs` until `huskies bench` is wired into main.rs.
#![allow(missing_docs, dead_code)]

#[path = "../src/bench.rs"]
mod bench;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut opts = bench::BenchOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ops" => opts.ops = args.next().expect("--ops N").parse()?,
            "--progress" => opts.progress = true,
            "--json" => {}
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let out = bench::run(&opts)?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
