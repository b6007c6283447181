//! The packed encoding of a story record (store format 3).
//!
//! A postcard-encoded [`StoryRecord`] spends most of its bytes repeating things: every stamp
//! carries its author's 32-byte id, and every history entry carries a target stage that the
//! transition table derives from its source stage, event and wall time, a source stage that
//! is usually the previous entry's target, and a base that is usually the previous entry's
//! op id. This encoding writes each node id once, in a table, and leaves out what it can
//! derive. The layout is in `docs/format.md` ("Story value (format 3)").
//!
//! Decoding is strict: a node index outside the table, an unused or repeated table entry, an
//! unknown tag or flag, map keys or history stamps out of order, an entry whose omitted
//! target the table refuses, anything spelled out that could have been left out, truncation
//! and trailing bytes are all `corrupt`. It never panics and never allocates more than the
//! input can account for.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;

use crate::codec;
use crate::error::Error;
use crate::execution::ExecutionState;
use crate::id::{NodeId, OpId};
use crate::pipeline::{transition, Stage};
use crate::projection::{HistoryEntry, Lease, Lww, Stamp, StoryRecord};
use crate::time::Timestamp;

/// Bits of the byte that says which optional registers follow.
const HAS_CREATED: u8 = 1 << 0;
const HAS_NAME: u8 = 1 << 1;
const HAS_BODY: u8 = 1 << 2;
const HAS_DEPENDS_ON: u8 = 1 << 3;
const HAS_DELETED: u8 = 1 << 4;
const REGISTER_BITS: u8 = HAS_CREATED | HAS_NAME | HAS_BODY | HAS_DEPENDS_ON | HAS_DELETED;

/// Bits of a history entry's flag byte.
const FROM_STORED: u8 = 1 << 0;
const TO_STORED: u8 = 1 << 1;
const BASE_SHIFT: u8 = 2;
const BASE_MASK: u8 = 0b11 << BASE_SHIFT;
const BASE_NONE: u8 = 0;
const BASE_PREVIOUS: u8 = 1;
const BASE_STORED: u8 = 2;
/// The entry was forced over a live claim: the holder's node index follows the entry.
const FORCED: u8 = 1 << 4;
const ENTRY_BITS: u8 = FROM_STORED | TO_STORED | BASE_MASK | FORCED;

/// The fewest bytes a history entry can take (flags, lamport, node index, op id, wall,
/// event tag): bounds what a count read from the input may preallocate.
const MIN_ENTRY: usize = 1 + 1 + 1 + 32 + 1 + 1;

/// A rough size of `rec` packed, to presize the output buffer.
pub(crate) fn size_hint(rec: &StoryRecord) -> usize {
    let text = rec.name.as_ref().map_or(0, |n| n.value.len())
        + rec
            .body
            .as_ref()
            .and_then(|b| b.value.as_ref())
            .map_or(0, String::len);
    96 + text
        + 96 * rec.history.len()
        + 64 * (rec.claims.entries.len() + rec.execution.len())
        + 16 * rec.claims.cleared.len()
}

/// Appends the packed encoding of `rec` to `out`.
pub(crate) fn encode_into(rec: &StoryRecord, out: &mut Vec<u8>) {
    let nodes = NodeTable::of(rec);
    put_varint(out, nodes.0.len() as u64);
    for n in &nodes.0 {
        out.extend_from_slice(n.as_bytes());
    }

    let mut present = 0;
    for (bit, set) in [
        (HAS_CREATED, rec.created.is_some()),
        (HAS_NAME, rec.name.is_some()),
        (HAS_BODY, rec.body.is_some()),
        (HAS_DEPENDS_ON, rec.depends_on.is_some()),
        (HAS_DELETED, rec.deleted.is_some()),
    ] {
        if set {
            present |= bit;
        }
    }
    out.push(present);
    if let Some((stamp, op)) = &rec.created {
        nodes.put_stamp(out, stamp);
        out.extend_from_slice(op.as_bytes());
    }
    if let Some(r) = &rec.name {
        nodes.put_stamp(out, &r.stamp);
        codec::encode_into(&r.value, out);
    }
    if let Some(r) = &rec.body {
        nodes.put_stamp(out, &r.stamp);
        codec::encode_into(&r.value, out);
    }
    if let Some(r) = &rec.depends_on {
        nodes.put_stamp(out, &r.stamp);
        codec::encode_into(&r.value, out);
    }
    if let Some(stamp) = &rec.deleted {
        nodes.put_stamp(out, stamp);
    }

    put_varint(out, rec.history.len() as u64);
    let backlog = Stage::Backlog;
    let mut expected_from = &backlog;
    let mut previous_op = None;
    for h in &rec.history {
        let derived = transition(&h.from, &h.event, h.wall).ok();
        let mut flags = 0;
        if h.from != *expected_from {
            flags |= FROM_STORED;
        }
        if derived.as_ref() != Some(&h.to) {
            flags |= TO_STORED;
        }
        if h.forced.is_some() {
            flags |= FORCED;
        }
        let base = match h.base {
            None => BASE_NONE,
            Some(b) if Some(b) == previous_op => BASE_PREVIOUS,
            Some(_) => BASE_STORED,
        };
        out.push(flags | base << BASE_SHIFT);
        nodes.put_stamp(out, &h.stamp);
        out.extend_from_slice(h.op_id.as_bytes());
        codec::encode_into(&h.wall, out);
        codec::encode_into(&h.event, out);
        if flags & FROM_STORED != 0 {
            codec::encode_into(&h.from, out);
        }
        if flags & TO_STORED != 0 {
            codec::encode_into(&h.to, out);
        }
        if let (BASE_STORED, Some(b)) = (base, &h.base) {
            out.extend_from_slice(b.as_bytes());
        }
        if let Some(holder) = &h.forced {
            nodes.put(out, holder);
        }
        expected_from = &h.to;
        previous_op = Some(h.op_id);
    }

    put_varint(out, rec.claims.entries.len() as u64);
    for (node, entry) in &rec.claims.entries {
        nodes.put(out, node);
        nodes.put_stamp(out, &entry.stamp);
        match &entry.value {
            None => out.push(0),
            Some(lease) => {
                out.push(1);
                nodes.put(out, &lease.node);
                codec::encode_into(&lease.claimed_at, out);
                codec::encode_into(&lease.expires_at, out);
            }
        }
    }
    put_varint(out, rec.claims.cleared.len() as u64);
    for (node, through) in &rec.claims.cleared {
        nodes.put(out, node);
        put_varint(out, *through);
    }

    put_varint(out, rec.execution.len() as u64);
    for (node, entry) in &rec.execution {
        nodes.put(out, node);
        nodes.put_stamp(out, &entry.stamp);
        codec::encode_into(&entry.value, out);
    }
}

/// Decodes a packed story record (without its stage-index byte).
pub(crate) fn decode(bytes: &[u8]) -> Result<StoryRecord, Error> {
    let mut r = Reader { rest: bytes };
    let count = r.count("node table", 32)?;
    let table_bytes = r.take(count * 32, "node table")?;
    let table: Vec<NodeId> = table_bytes
        .chunks_exact(32)
        .map(|c| NodeId::from_bytes(c.try_into().expect("32 bytes")))
        .collect();
    if table.windows(2).any(|w| w[0] >= w[1]) {
        return Err(corrupt("node table is not strictly ascending"));
    }
    let mut nodes = Nodes {
        used: vec![false; table.len()],
        table,
    };

    let present = r.byte("register flags")?;
    if present & !REGISTER_BITS != 0 {
        return Err(corrupt(format!("unknown register flags {present:#04x}")));
    }
    let mut rec = StoryRecord::default();
    if present & HAS_CREATED != 0 {
        rec.created = Some((nodes.stamp(&mut r)?, OpId::from_bytes(r.array("created op id")?)));
    }
    if present & HAS_NAME != 0 {
        rec.name = Some(lww(&mut r, &mut nodes, "name")?);
    }
    if present & HAS_BODY != 0 {
        rec.body = Some(lww(&mut r, &mut nodes, "body")?);
    }
    if present & HAS_DEPENDS_ON != 0 {
        rec.depends_on = Some(lww(&mut r, &mut nodes, "dependencies")?);
    }
    if present & HAS_DELETED != 0 {
        rec.deleted = Some(nodes.stamp(&mut r)?);
    }

    let count = r.count("history", MIN_ENTRY)?;
    rec.history.reserve_exact(count);
    for i in 0..count {
        let entry = history_entry(&mut r, &mut nodes, rec.history.last())
            .map_err(|e| corrupt(format!("history entry {i}: {}", message(&e))))?;
        rec.history.push(entry);
    }

    let count = r.count("claims", 4)?;
    let mut last = None;
    for _ in 0..count {
        let node = nodes.key_after(&mut r, &mut last, "claims")?;
        let stamp = nodes.stamp(&mut r)?;
        let value = match r.byte("claim")? {
            0 => None,
            1 => Some(Lease {
                node: nodes.node(&mut r)?.1,
                claimed_at: r.value("claim time")?,
                expires_at: r.value("claim expiry")?,
            }),
            t => return Err(corrupt(format!("claim has tag {t}"))),
        };
        rec.claims.entries.insert(node, Lww { stamp, value });
    }
    let count = r.count("cleared claims", 2)?;
    let mut last = None;
    for _ in 0..count {
        let node = nodes.key_after(&mut r, &mut last, "cleared claims")?;
        rec.claims.cleared.insert(node, r.varint("cleared claim")?);
    }

    let count = r.count("execution states", 4)?;
    let mut last = None;
    let mut execution = BTreeMap::new();
    for _ in 0..count {
        let node = nodes.key_after(&mut r, &mut last, "execution states")?;
        let stamp = nodes.stamp(&mut r)?;
        let value: ExecutionState = r.value("execution state")?;
        execution.insert(node, Lww { stamp, value });
    }
    rec.execution = execution;

    if !r.rest.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", r.rest.len())));
    }
    if nodes.used.contains(&false) {
        return Err(corrupt("node table holds an id the record does not use"));
    }
    Ok(rec)
}

fn lww<T: DeserializeOwned>(r: &mut Reader<'_>, nodes: &mut Nodes, what: &str) -> Result<Lww<T>, Error> {
    Ok(Lww {
        stamp: nodes.stamp(r)?,
        value: r.value(what)?,
    })
}

fn history_entry(
    r: &mut Reader<'_>,
    nodes: &mut Nodes,
    previous: Option<&HistoryEntry>,
) -> Result<HistoryEntry, Error> {
    let flags = r.byte("flags")?;
    if flags & !ENTRY_BITS != 0 {
        return Err(corrupt(format!("unknown flags {flags:#04x}")));
    }
    let stamp = nodes.stamp(r)?;
    if previous.is_some_and(|p| p.stamp >= stamp) {
        return Err(corrupt("stamps are not strictly ascending"));
    }
    let op_id = OpId::from_bytes(r.array("op id")?);
    let wall: Timestamp = r.value("wall time")?;
    let event = r.value("event")?;
    let expected_from = previous.map(|p| &p.to);
    let from = if flags & FROM_STORED != 0 {
        let from: Stage = r.value("source stage")?;
        if from == *expected_from.unwrap_or(&Stage::Backlog) {
            return Err(corrupt("spells out the source stage it could leave out"));
        }
        from
    } else {
        expected_from.cloned().unwrap_or(Stage::Backlog)
    };
    let derived = transition(&from, &event, wall);
    let to = if flags & TO_STORED != 0 {
        let to: Stage = r.value("target stage")?;
        if derived.as_ref() == Ok(&to) {
            return Err(corrupt("spells out the target stage it could leave out"));
        }
        to
    } else {
        derived.map_err(|e| corrupt(format!("leaves out a target stage the table refuses: {e}")))?
    };
    let base = match (flags & BASE_MASK) >> BASE_SHIFT {
        BASE_NONE => None,
        BASE_PREVIOUS => Some(
            previous
                .ok_or_else(|| corrupt("the first entry cannot build on a previous one"))?
                .op_id,
        ),
        BASE_STORED => {
            let base = OpId::from_bytes(r.array("base op id")?);
            if previous.is_some_and(|p| p.op_id == base) {
                return Err(corrupt("spells out a base it could leave out"));
            }
            Some(base)
        }
        tag => return Err(corrupt(format!("has base tag {tag}"))),
    };
    let forced = if flags & FORCED != 0 {
        Some(nodes.node(r)?.1)
    } else {
        None
    };
    Ok(HistoryEntry {
        stamp,
        op_id,
        wall,
        event,
        from,
        to,
        base,
        forced,
    })
}

fn corrupt(why: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("story record: {why}"))
}

/// The text of a `corrupt` error made by [`corrupt`], to nest it in a longer message.
fn message(e: &Error) -> String {
    match e {
        Error::Corrupt(m) => m.strip_prefix("story record: ").unwrap_or(m).to_string(),
        other => other.to_string(),
    }
}

/// An unsigned varint, as postcard writes a `u64` (minimal LEB128, which [`Reader::varint`]
/// insists on).
fn put_varint(out: &mut Vec<u8>, v: u64) {
    codec::encode_into(&v, out);
}

/// The distinct node ids of a record, ascending; written once, referred to by position.
struct NodeTable(Vec<NodeId>);

impl NodeTable {
    fn of(rec: &StoryRecord) -> NodeTable {
        let mut ids = Vec::with_capacity(
            5 + rec.history.len()
                + 3 * rec.claims.entries.len()
                + rec.claims.cleared.len()
                + 2 * rec.execution.len(),
        );
        let stamps = rec
            .created
            .as_ref()
            .map(|c| &c.0)
            .into_iter()
            .chain(rec.name.as_ref().map(|r| &r.stamp))
            .chain(rec.body.as_ref().map(|r| &r.stamp))
            .chain(rec.depends_on.as_ref().map(|r| &r.stamp))
            .chain(rec.deleted.as_ref())
            .chain(rec.history.iter().map(|h| &h.stamp));
        ids.extend(stamps.map(|s| s.author));
        ids.extend(rec.history.iter().filter_map(|h| h.forced));
        for (node, entry) in &rec.claims.entries {
            ids.push(*node);
            ids.push(entry.stamp.author);
            ids.extend(entry.value.as_ref().map(|l| l.node));
        }
        ids.extend(rec.claims.cleared.keys().copied());
        for (node, entry) in &rec.execution {
            ids.push(*node);
            ids.push(entry.stamp.author);
        }
        ids.sort_unstable();
        ids.dedup();
        NodeTable(ids)
    }

    fn put(&self, out: &mut Vec<u8>, node: &NodeId) {
        let idx = self
            .0
            .binary_search(node)
            .expect("the table holds every node of the record");
        put_varint(out, idx as u64);
    }

    fn put_stamp(&self, out: &mut Vec<u8>, stamp: &Stamp) {
        put_varint(out, stamp.lamport);
        self.put(out, &stamp.author);
    }
}

/// The decoder's view of the node table.
struct Nodes {
    table: Vec<NodeId>,
    used: Vec<bool>,
}

impl Nodes {
    fn node(&mut self, r: &mut Reader<'_>) -> Result<(usize, NodeId), Error> {
        let idx = r.varint("node index")?;
        let i = usize::try_from(idx)
            .ok()
            .filter(|i| *i < self.table.len())
            .ok_or_else(|| {
                corrupt(format!(
                    "node index {idx} is outside the table of {}",
                    self.table.len()
                ))
            })?;
        self.used[i] = true;
        Ok((i, self.table[i]))
    }

    /// A map key: a node index above `last` (keys are written in node order, once each).
    fn key_after(
        &mut self,
        r: &mut Reader<'_>,
        last: &mut Option<usize>,
        what: &str,
    ) -> Result<NodeId, Error> {
        let (idx, node) = self.node(r)?;
        if *last >= Some(idx) {
            return Err(corrupt(format!("{what} are not in node order")));
        }
        *last = Some(idx);
        Ok(node)
    }

    fn stamp(&mut self, r: &mut Reader<'_>) -> Result<Stamp, Error> {
        let lamport = r.varint("lamport")?;
        Ok(Stamp {
            lamport,
            author: self.node(r)?.1,
        })
    }
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Error> {
        if self.rest.len() < n {
            return Err(corrupt(format!("truncated in {what}")));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    fn array(&mut self, what: &str) -> Result<[u8; 32], Error> {
        Ok(self.take(32, what)?.try_into().expect("32 bytes"))
    }

    /// A minimal unsigned LEB128 of at most 64 bits.
    fn varint(&mut self, what: &str) -> Result<u64, Error> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(corrupt(format!("{what} overflows 64 bits")));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(corrupt(format!("{what} is an overlong varint")));
                }
                return Ok(v);
            }
        }
        Err(corrupt(format!("{what} overflows 64 bits")))
    }

    /// A count of items that take at least `min_size` bytes each: refused when the rest of
    /// the input could not hold them.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, Error> {
        let n = self.varint(what)?;
        usize::try_from(n)
            .ok()
            .filter(|n| n.checked_mul(min_size).is_some_and(|b| b <= self.rest.len()))
            .ok_or_else(|| corrupt(format!("{what} counts {n} items in {} bytes", self.rest.len())))
    }

    /// A postcard-encoded value.
    fn value<T: DeserializeOwned>(&mut self, what: &str) -> Result<T, Error> {
        let (v, rest) = postcard::take_from_bytes(self.rest)
            .map_err(|e| corrupt(format!("{what} does not decode: {e}")))?;
        self.rest = rest;
        Ok(v)
    }
}

#[cfg(test)]
pub(crate) mod tests;
mod value;

#[cfg(test)]
pub(crate) use value::encode_story_v2;
#[cfg(test)]
pub(crate) use value::NOT_INDEXED;
pub(crate) use value::{decode_story, decode_story_v1, decode_story_v2, encode_story, story_kind};
