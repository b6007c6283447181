//! Human output's building blocks, in one place: the escaping of every field that came from
//! an op (`esc`), colour (`paint`, applied or stripped once in `render`), the natural order
//! of story ids (`natural_cmp`) and aligned tables (`Table`).
//!
//! Anything any member can write — names, bodies, reasons, branches, labels, agent names —
//! goes through [`esc`] before it reaches a terminal, so no op can draw a fake row, move
//! the cursor or clear the screen. JSON output never goes through here: it stays exact.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;

use huskies_core::StageKind;
use unicode_width::UnicodeWidthStr;

/// Whether `c` must not reach a terminal as it is: C0 controls (newline and tab included),
/// DEL, C1 controls, the bidirectional overrides and isolates (they reorder what follows:
/// "Trojan Source"), the line and paragraph separators and the byte-order mark; and `\`
/// itself, so that an escape shown can never be faked by a name.
fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\' | '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{2028}' | '\u{2029}' | '\u{feff}')
}

/// A field that came from an op, made safe for a terminal. `\` becomes `\\`; newline,
/// carriage return and tab become `\n`, `\r`, `\t`; other C0 controls and DEL become
/// `\xHH` (ESC is `\x1b`); C1 controls and the other characters of [`needs_escape`] become
/// `\u{HHHH}` (Rust's notation). Everything else, any script or emoji, is shown as it is.
pub(crate) fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0}'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A text that spans lines (a story's body): each line escaped, the line breaks kept (a
/// line break cannot fake anything under the indentation `prefix` adds to every line).
pub(crate) fn esc_lines(s: &str, prefix: &str) -> String {
    s.split('\n')
        .map(|line| format!("{prefix}{}\n", esc(line)))
        .collect()
}

/// What a painted text means; each maps to one colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tone {
    /// A stage, coloured by kind.
    Stage(StageKind),
    /// Success: `ok`, `alive`, a confirmed fact.
    Good,
    /// Failure or danger: `NOT OK`, conflicts, rejected ops.
    Bad,
    /// Needs attention: `stale`, warnings.
    Warn,
    /// Secondary text: column headers, node ids.
    Dim,
}

impl Tone {
    fn sgr(self) -> &'static str {
        match self {
            Tone::Stage(StageKind::Backlog) => "37",
            Tone::Stage(StageKind::Coding) => "34",
            Tone::Stage(StageKind::Qa) => "36",
            Tone::Stage(StageKind::Merge) => "35",
            Tone::Stage(StageKind::MergeFailure) | Tone::Bad => "31",
            Tone::Stage(StageKind::Done) | Tone::Good => "32",
            Tone::Stage(StageKind::Archived) | Tone::Dim => "2",
            Tone::Warn => "33",
        }
    }
}

/// `text` in the colour of `tone`. Human text is always built painted; `render` strips the
/// colour when it is off (`--color never`, `NO_COLOR`, not a terminal). Only `paint` writes
/// ESC into human text: every field from an op went through [`esc`] first, so stripping
/// cannot touch what a member wrote.
pub(crate) fn paint(text: &str, tone: Tone) -> String {
    if text.is_empty() {
        return String::new();
    }
    format!("\x1b[{}m{text}\x1b[0m", tone.sgr())
}

/// `text` with the colour of [`paint`] removed.
pub(crate) fn strip_colour(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('m') {
            Some(end) if after[..end].bytes().all(|b| b.is_ascii_digit() || b == b';') => {
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("\x1b[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `n thing` or `n things`.
pub(crate) fn count(n: usize, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}

/// The natural order of ids: runs of digits compare as numbers, so `1_alpha` < `2_beta` <
/// `10_ok`; the rest compares byte by byte. Ties (`01` and `1`) fall back to the bytes, so
/// the order is total and the same everywhere (human and JSON output).
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) if p.is_ascii_digit() && q.is_ascii_digit() => {
                let (dx, rx) = split_digits(x);
                let (dy, ry) = split_digits(y);
                let (nx, ny) = (trim_zeros(dx), trim_zeros(dy));
                let ord = nx.len().cmp(&ny.len()).then_with(|| nx.cmp(ny));
                if ord != Ordering::Equal {
                    return ord;
                }
                (x, y) = (rx, ry);
            }
            (Some(p), Some(q)) => {
                if p != q {
                    return p.cmp(q);
                }
                (x, y) = (&x[1..], &y[1..]);
            }
        }
    }
}

fn split_digits(s: &[u8]) -> (&[u8], &[u8]) {
    let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
    s.split_at(n)
}

fn trim_zeros(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| **b == b'0').count();
    &s[n..]
}

/// The columns a terminal gives `s` (wide characters count two).
pub(crate) fn width(s: &str) -> usize {
    UnicodeWidthStr::width(s)
}

/// `s` cut to at most `max` columns, `…` marking a cut.
pub(crate) fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if width(s) <= max {
        return Cow::Borrowed(s);
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    Cow::Owned(out)
}

/// One cell: escaped, plain text and the tone it is painted in.
pub(crate) struct Cell {
    text: String,
    tone: Option<Tone>,
}

impl Cell {
    /// A cell of text that is already safe (escaped or made by us).
    pub(crate) fn new(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            tone: None,
        }
    }

    /// The same cell painted.
    pub(crate) fn tone(mut self, tone: Tone) -> Cell {
        self.tone = Some(tone);
        self
    }
}

/// Rows of cells under a header, every column but the last padded to its widest cell (in
/// terminal columns, colour not counted), two spaces apart.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    pub(crate) fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<Cell>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let cols = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(cols) {
                widths[i] = widths[i].max(width(&c.text));
            }
        }
        let header: Vec<Cell> = self
            .header
            .iter()
            .map(|h| Cell::new(*h).tone(Tone::Dim))
            .collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate().take(cols) {
                let last = i + 1 == cols.min(row.len());
                let painted = match c.tone {
                    Some(t) => paint(&c.text, t),
                    None => c.text.clone(),
                };
                line += &painted;
                if !last {
                    line += &" ".repeat(widths[i] - width(&c.text) + 2);
                }
            }
            out += line.trim_end();
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_controls_and_nothing_else() {
        assert_eq!(esc("Fix login"), "Fix login");
        assert_eq!(esc("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(esc("\x1b[2J"), "\\x1b[2J");
        assert_eq!(esc("\u{7f}\u{85}\u{202e}"), "\\x7f\\u{85}\\u{202e}");
        assert_eq!(esc("a\\nb"), "a\\\\nb");
        assert_eq!(esc("café 日本"), "café 日本");
    }

    #[test]
    fn natural_order() {
        let mut ids = vec!["10_ok", "1_alpha", "2_beta", "b", "a10", "a9", "01", "1"];
        ids.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(ids, ["01", "1", "1_alpha", "2_beta", "10_ok", "a9", "a10", "b"]);
    }

    #[test]
    fn strips_only_paint() {
        let s = format!("{} \\x1b[31m", paint("qa", Tone::Good));
        assert_eq!(strip_colour(&s), "qa \\x1b[31m");
    }
}
