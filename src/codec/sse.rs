//! SSE framing: encoding one event, the incremental WHATWG parser, terminal
//! detection and event-id stamping.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use super::lines::{lines, split_data, Line};

/// A field value that would break the framing (CR, LF or NUL).
pub fn breaks_framing(value: &str) -> bool {
    value.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// One SSE event. The caller has checked `event` and `id` with `breaks_framing`.
pub fn encode_event(data: &str, event: Option<&str>, id: Option<&str>, retry: Option<u64>) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    if let Some(event) = event.filter(|e| !e.is_empty()) {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    if let Some(retry) = retry {
        out.push_str("retry: ");
        out.push_str(&retry.to_string());
        out.push('\n');
    }
    for line in split_data(data) {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A dispatched event, as the parser hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ParsedEvent {
    pub event: String,
    pub data: String,
    pub id: String,
    pub retry: Option<u64>,
}

/// The incremental WHATWG event-stream parser.
#[derive(Default)]
pub struct Parser {
    line: String,
    skip_lf: bool,
    seen_first_char: bool,
    data: String,
    event_type: String,
    last_id: String,
    retry: Option<u64>,
}

impl Parser {
    pub fn last_event_id(&self) -> &str {
        &self.last_id
    }

    pub fn feed(&mut self, mut text: &str) -> Vec<ParsedEvent> {
        let mut events = Vec::new();
        if !self.seen_first_char && !text.is_empty() {
            self.seen_first_char = true;
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let bytes = text.as_bytes();
        let mut i = 0;
        if self.skip_lf && !bytes.is_empty() {
            self.skip_lf = false;
            if bytes[0] == b'\n' {
                i = 1;
            }
        }
        while i < bytes.len() {
            match bytes[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
                None => {
                    self.line.push_str(&text[i..]);
                    break;
                }
                Some(p) => {
                    let end = i + p;
                    let line = if self.line.is_empty() {
                        std::borrow::Cow::Borrowed(&text[i..end])
                    } else {
                        self.line.push_str(&text[i..end]);
                        std::borrow::Cow::Owned(std::mem::take(&mut self.line))
                    };
                    self.process_line(&line, &mut events);
                    i = end + 1;
                    if bytes[end] == b'\r' {
                        if i == bytes.len() {
                            self.skip_lf = true;
                        } else if bytes[i] == b'\n' {
                            i += 1;
                        }
                    }
                }
            }
        }
        events
    }

    fn process_line(&mut self, text: &str, events: &mut Vec<ParsedEvent>) {
        let line = Line { start: 0, text, brk: "" };
        if line.is_blank() {
            self.dispatch(events);
            return;
        }
        let Some((name, value, _)) = line.field() else { return };
        match name {
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event_type = value.to_owned(),
            "id" if !value.contains('\0') => self.last_id = value.to_owned(),
            // ASCII digits only (u64::from_str would also take a leading '+').
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                if let Ok(ms) = value.parse::<u64>() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<ParsedEvent>) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop(); // the trailing LF every data line added
        let event = match std::mem::take(&mut self.event_type) {
            t if t.is_empty() => "message".to_owned(),
            t => t,
        };
        events.push(ParsedEvent { event, data, id: self.last_id.clone(), retry: self.retry.take() });
    }
}

/// A `data: [DONE]` line or an `event: error` line anywhere in the chunk.
pub fn is_terminal(chunk: &str) -> bool {
    static DONE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("[DONE]"));
    static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("error"));
    static CANCELLED: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new("cancelled"));
    let bytes = chunk.as_bytes();
    if DONE.find(bytes).is_none() && ERROR.find(bytes).is_none() && CANCELLED.find(bytes).is_none() {
        return false;
    }
    lines(chunk).any(|line| {
        matches!(
            line.field(),
            Some(("data", "[DONE]", _)) | Some(("event", "error", _)) | Some(("event", "cancelled", _))
        )
    })
}

/// The chunk with its last event carrying `id: <event_id>` (see docs/codec.md).
pub fn set_event_id(chunk: &str, event_id: &str) -> String {
    if let Some(stamped) = set_event_id_lf(chunk, event_id) {
        return stamped;
    }
    let all: Vec<Line> = lines(chunk).collect();
    let Some(last) = all.iter().rposition(|l| !l.is_blank()) else {
        return format!("{chunk}id: {event_id}\n\n");
    };
    let first = all[..last].iter().rposition(|l| l.is_blank()).map_or(0, |b| b + 1);
    let mut out = String::with_capacity(chunk.len() + event_id.len() + 8);
    out.push_str(&chunk[..all[first].start]);
    let mut ends_with_break = true;
    for line in &all[first..=last] {
        if matches!(line.field(), Some(("id", _, _))) {
            continue;
        }
        out.push_str(&chunk[line.start..line.end()]);
        ends_with_break = !line.brk.is_empty();
    }
    match all.get(last + 1) {
        Some(blank) => {
            out.push_str("id: ");
            out.push_str(event_id);
            out.push_str(blank.brk);
            out.push_str(&chunk[blank.start..]);
        }
        None => {
            if !ends_with_break {
                out.push('\n');
            }
            out.push_str("id: ");
            out.push_str(event_id);
            out.push_str("\n\n");
        }
    }
    out
}

/// The common chunk (`...\n\n`, LF only, no `id` line in its last event) in
/// one copy; `None` sends anything else down the general path.
fn set_event_id_lf(chunk: &str, event_id: &str) -> Option<String> {
    let b = chunk.as_bytes();
    let body = b.strip_suffix(b"\n\n")?; // the last event's lines, minus the blank line
    if body.is_empty() || body.ends_with(b"\n") || memchr::memchr(b'\r', b).is_some() {
        return None;
    }
    let event = &body[last_event_start(body)..];
    let names_id =
        |line: &[u8]| line.strip_prefix(b"id").is_some_and(|r| r.is_empty() || r[0] == b':' || r[0] == b'\n');
    if names_id(event) || memchr::memchr_iter(b'\n', event).any(|p| names_id(&event[p + 1..])) {
        return None;
    }
    let mut out = String::with_capacity(chunk.len() + event_id.len() + 5);
    out.push_str(&chunk[..chunk.len() - 1]);
    out.push_str("id: ");
    out.push_str(event_id);
    out.push_str("\n\n");
    Some(out)
}

/// Where the last event of LF-only text starts: just after its last blank line.
fn last_event_start(body: &[u8]) -> usize {
    let mut end = body.len();
    while let Some(p) = memchr::memrchr(b'\n', &body[..end]) {
        if p > 0 && body[p - 1] == b'\n' {
            return p + 1;
        }
        end = p;
    }
    0
}
