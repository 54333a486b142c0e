//! The JSON-aware parts of the codec: `patch_nulls` (a token scanner, never a
//! full parse) and `sniff_stop_reason` (a cheap check, then a strict parse of
//! one value only when it may pay off).

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::lines::lines;

/// JSON nested deeper than this is never a stop reason.
pub const MAX_NESTING: usize = 128;

/// Appends `value` as a JSON string, escaped like Python's
/// `json.dumps(value, ensure_ascii=False)`.
pub fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

static RUN_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"run_id\""));
static SEQ_ID: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("\"seq_id\""));

/// Where a `null` is to be replaced, and by which of the two texts.
struct Patch {
    at: usize,
    with_run_id: bool,
}

/// Builds the patched text as matches are found; no copy until the first one.
struct Patcher<'a> {
    text: &'a str,
    run_id: Option<&'a str>,
    seq_id: Option<u64>,
    out: Option<String>,
    copied: usize,
}

impl Patcher<'_> {
    fn apply(&mut self, patch: Patch) {
        use std::fmt::Write;
        let out = self.out.get_or_insert_with(|| String::with_capacity(self.text.len() + 64));
        out.push_str(&self.text[self.copied..patch.at]);
        match (patch.with_run_id, self.run_id, self.seq_id) {
            (true, Some(run_id), _) => push_json_string(out, run_id),
            (false, _, Some(seq_id)) => write!(out, "{seq_id}").expect("writing to a String"),
            _ => unreachable!("a key is only matched when its value is given"),
        }
        self.copied = patch.at + 4;
    }

    fn finish(self) -> Option<String> {
        let mut out = self.out?;
        out.push_str(&self.text[self.copied..]);
        Some(out)
    }
}

/// Fills `"run_id": null` / `"seq_id": null` members of `data` values; `None`
/// when nothing matched (so the caller can hand back its input untouched).
pub fn patch_nulls(text: &str, run_id: Option<&str>, seq_id: Option<u64>) -> Option<String> {
    let want_run = run_id.is_some() && RUN_ID.find(text.as_bytes()).is_some();
    let want_seq = seq_id.is_some() && SEQ_ID.find(text.as_bytes()).is_some();
    if !want_run && !want_seq {
        return None;
    }
    let mut patcher = Patcher { text, run_id, seq_id, out: None, copied: 0 };
    for line in lines(text) {
        if let Some((value, offset)) = line.raw_value_of("data") {
            scan_value(value, offset, want_run, want_seq, &mut patcher);
        }
    }
    patcher.finish()
}

fn scan_value(value: &str, offset: usize, want_run: bool, want_seq: bool, patcher: &mut Patcher<'_>) {
    let b = value.as_bytes();
    // No token can match past the last occurrence of a key's text: stop there
    // (in a typical chunk, before the long message text).
    let last = |finder: &Finder<'_>, want: bool| if want { finder.find_iter(b).last() } else { None };
    let (last_run, last_seq) = (last(&RUN_ID, want_run), last(&SEQ_ID, want_seq));
    let Some(limit) = last_run.max(last_seq) else { return };
    let mut i = 0;
    // Plain loops, not memchr: tokens and the gaps between them are a few
    // bytes long, shorter than a SIMD search takes to set up.
    while let Some(open) = b[i..].iter().position(|&c| c == b'"').map(|p| i + p).filter(|&o| o <= limit) {
        let Some(close) = string_end(b, open) else { return };
        i = close + 1;
        let with_run_id = match &b[open..=close] {
            b"\"run_id\"" if want_run => true,
            b"\"seq_id\"" if want_seq => false,
            _ => continue,
        };
        if let Some(at) = null_member_value(b, i) {
            patcher.apply(Patch { at: offset + at, with_run_id });
            i = at + 4;
        }
    }
}

/// Index of the `"` closing the string token opened at `open`, if any.
fn string_end(b: &[u8], open: usize) -> Option<usize> {
    let mut j = open + 1;
    while j < b.len() {
        match b[j] {
            b'"' => return Some(j),
            b'\\' => j += 2, // a backslash escapes the one character after it
            _ => j += 1,
        }
    }
    None
}

/// After a key token ending at `from`: `ws : ws null` then a delimiter or the
/// end; returns where `null` starts.
fn null_member_value(b: &[u8], from: usize) -> Option<usize> {
    let skip_ws = |mut k: usize| {
        while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
            k += 1;
        }
        k
    };
    let colon = skip_ws(from);
    if b.get(colon) != Some(&b':') {
        return None;
    }
    let at = skip_ws(colon + 1);
    if b.get(at..at + 4) != Some(b"null") {
        return None;
    }
    match b.get(at + 4) {
        None | Some(b',' | b'}' | b']' | b' ' | b'\t') => Some(at),
        Some(_) => None,
    }
}

/// The stop reason of a chunk whose first event's data is a JSON object with
/// `"message_type": "stop_reason"` at its top level.
pub fn sniff_stop_reason(chunk: &str) -> Option<String> {
    static STOP_REASON: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("stop_reason"));
    STOP_REASON.find(chunk.as_bytes())?;
    let data = first_event_data(chunk)?;
    let mut parser = JsonParser { b: data.as_bytes(), i: 0 };
    let top = parser.document()?;
    match (top.message_type?, top.stop_reason?) {
        (Decoded::Text(kind), Decoded::Text(reason)) if kind == "stop_reason" => Some(reason),
        _ => None,
    }
}

/// The data of the first block of lines that has a `data` field.
fn first_event_data(chunk: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in lines(chunk) {
        if line.is_blank() {
            if data.is_some() {
                break;
            }
            continue;
        }
        if let Some(("data", value, _)) = line.field() {
            match &mut data {
                None => data = Some(value.to_owned()),
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
            }
        }
    }
    data
}

/// A decoded JSON value as far as the sniffer cares: text, or anything else
/// (non-strings and strings holding a lone surrogate).
#[derive(Debug, PartialEq)]
enum Decoded {
    Text(String),
    Other,
}

/// The two members of the top-level object the sniffer looks at (last wins).
#[derive(Default)]
struct TopLevel {
    message_type: Option<Decoded>,
    stop_reason: Option<Decoded>,
}

/// A strict RFC 8259 parser that validates everything and decodes only what
/// the sniffer needs; `None` means "not valid JSON as Python's json reads it".
struct JsonParser<'a> {
    b: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn document(&mut self) -> Option<TopLevel> {
        self.ws();
        if self.b.get(self.i) != Some(&b'{') {
            return None;
        }
        let top = self.object(1, true)?;
        self.ws();
        (self.i == self.b.len()).then_some(top)
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.b.get(self.i) == Some(&byte)).then(|| self.i += 1)
    }

    /// Parses an object at `depth`; at the top level it remembers the two members.
    fn object(&mut self, depth: usize, top: bool) -> Option<TopLevel> {
        if depth > MAX_NESTING {
            return None;
        }
        self.eat(b'{')?;
        let mut seen = TopLevel::default();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(seen);
        }
        loop {
            self.ws();
            let key = self.string(top)?;
            self.ws();
            self.eat(b':')?;
            self.ws();
            let slot = match &key {
                Decoded::Text(k) if top && k == "message_type" => Some(&mut seen.message_type),
                Decoded::Text(k) if top && k == "stop_reason" => Some(&mut seen.stop_reason),
                _ => None,
            };
            let decode = slot.is_some();
            let value = self.value(depth, decode)?;
            if let Some(slot) = slot {
                *slot = Some(value);
            }
            self.ws();
            if self.eat(b',').is_some() {
                continue;
            }
            self.eat(b'}')?;
            return Some(seen);
        }
    }

    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_NESTING {
            return None;
        }
        self.eat(b'[')?;
        self.ws();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            self.value(depth, false)?;
            self.ws();
            if self.eat(b',').is_some() {
                continue;
            }
            return self.eat(b']');
        }
    }

    /// One value inside a container at `depth`; strings are decoded when asked.
    fn value(&mut self, depth: usize, decode: bool) -> Option<Decoded> {
        match *self.b.get(self.i)? {
            b'{' => self.object(depth + 1, false).map(|_| Decoded::Other),
            b'[' => self.array(depth + 1).map(|_| Decoded::Other),
            b'"' => self.string(decode),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number(),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Option<Decoded> {
        if self.b.get(self.i..self.i + word.len()) != Some(word) {
            return None;
        }
        self.i += word.len();
        Some(Decoded::Other)
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`
    fn number(&mut self) -> Option<Decoded> {
        let b = self.b;
        let digits = |mut k: usize| {
            let start = k;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            (k > start).then_some(k)
        };
        let mut k = self.i;
        if b.get(k) == Some(&b'-') {
            k += 1;
        }
        k = match b.get(k)? {
            b'0' => k + 1,
            b'1'..=b'9' => digits(k)?,
            _ => return None,
        };
        if b.get(k) == Some(&b'.') {
            k = digits(k + 1)?;
        }
        if matches!(b.get(k), Some(b'e' | b'E')) {
            k += 1;
            if matches!(b.get(k), Some(b'+' | b'-')) {
                k += 1;
            }
            k = digits(k)?;
        }
        self.i = k;
        Some(Decoded::Other)
    }

    /// A string token; decoded to text when `decode` (a lone surrogate makes it `Other`).
    fn string(&mut self, decode: bool) -> Option<Decoded> {
        self.eat(b'"')?;
        let mut units: Vec<u16> = Vec::new();
        let mut text = String::new();
        let mut lone_surrogate = false;
        loop {
            let start = self.i;
            while let Some(&c) = self.b.get(self.i) {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if decode && self.i > start {
                flush_units(&mut units, &mut text, &mut lone_surrogate);
                text.push_str(std::str::from_utf8(&self.b[start..self.i]).ok()?);
            }
            match *self.b.get(self.i)? {
                b'"' => {
                    self.i += 1;
                    if !decode {
                        return Some(Decoded::Other);
                    }
                    flush_units(&mut units, &mut text, &mut lone_surrogate);
                    return Some(if lone_surrogate { Decoded::Other } else { Decoded::Text(text) });
                }
                b'\\' => {
                    let esc = *self.b.get(self.i + 1)?;
                    self.i += 2;
                    let simple = match esc {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex = std::str::from_utf8(self.b.get(self.i..self.i + 4)?).ok()?;
                            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                                return None;
                            }
                            self.i += 4;
                            if decode {
                                units.push(u16::from_str_radix(hex, 16).ok()?);
                            }
                            continue;
                        }
                        _ => return None,
                    };
                    if decode {
                        flush_units(&mut units, &mut text, &mut lone_surrogate);
                        text.push(simple);
                    }
                }
                _ => return None, // a control character inside a string
            }
        }
    }
}

/// Decodes pending `\uXXXX` units, pairing surrogates as Python's json does.
fn flush_units(units: &mut Vec<u16>, text: &mut String, lone_surrogate: &mut bool) {
    if units.is_empty() {
        return;
    }
    for decoded in char::decode_utf16(units.drain(..)) {
        match decoded {
            Ok(c) => text.push(c),
            Err(_) => *lone_surrogate = true,
        }
    }
}
