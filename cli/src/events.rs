//! `huskies events`: the lifecycle envelopes of the local log (`huskies_core::events_after`)
//! as lines, each with the cursor that resumes after it. The same walk serves the direct
//! command, the daemon's control socket and both followers.

use huskies_core::{events_after, Envelope, EventCursor, Node};
use serde_json::Value;

use crate::args::Cli;
use crate::human::esc;
use crate::render::CliError;

/// Bytes of ops read per step of the walk: bounds the memory of one step, not the output.
const STEP_BYTES: usize = 1 << 20;

/// Parses `--since` (absent: the start of the log).
pub(crate) fn cursor(since: Option<&str>) -> Result<EventCursor, CliError> {
    match since {
        None => Ok(EventCursor::default()),
        Some(s) => s
            .parse()
            .map_err(|e: huskies_core::Error| CliError::usage(e.to_string())),
    }
}

/// Every event after `from` up to the end of the local log, rendered, and the cursor at the
/// end (an op boundary).
pub(crate) fn lines(cli: &Cli, node: &Node, from: &EventCursor) -> Result<(String, EventCursor), CliError> {
    let mut out = String::new();
    let mut at = from.clone();
    loop {
        let batch = events_after(node, &at, STEP_BYTES)?;
        for (env, after) in &batch.events {
            out += &line(cli, env, after);
        }
        if batch.ops_read == 0 {
            return Ok((out, at));
        }
        at = batch.end;
    }
}

/// One event: the envelope plus `"cursor"` as a JSON line, or a short human line.
fn line(cli: &Cli, env: &Envelope, after: &EventCursor) -> String {
    if cli.json {
        let mut v = serde_json::to_value(env).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            m.insert("cursor".into(), Value::String(after.to_string()));
        }
        format!("{v}\n")
    } else {
        let a = &env.attributes;
        let subject = a
            .story
            .clone()
            .or_else(|| a.node.as_ref().map(|n| n.chars().take(8).collect()))
            .unwrap_or_default();
        let kind = |s: &Option<Value>| s.as_ref().and_then(|v| v["kind"].as_str().map(str::to_string));
        let change = match (kind(&a.from), kind(&a.to)) {
            (Some(f), Some(t)) => format!(" {f} -> {t}"),
            _ => String::new(),
        };
        format!(
            "{} {:<32} {}{}\n",
            env.timestamp,
            esc(&env.kind.to_string()),
            esc(&subject),
            esc(&change)
        )
    }
}
