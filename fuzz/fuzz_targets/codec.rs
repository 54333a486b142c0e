//! cargo-fuzz target over the pure-Rust codec (`src/codec`, included by path).
//!
//! The input's first bytes choose the arguments, the rest (lossily decoded as
//! UTF-8) is the chunk.  Properties, any violation panics (a crash):
//! * `Parser`: the chunk fed in pieces (cut at random char boundaries) gives
//!   the same events and last event id as fed whole; every `retry` is taken
//!   from a field; nothing panics.
//! * `patch_nulls`: never panics; idempotent (patching its output again
//!   changes nothing); a `Some` differs from its input.
//! * `sniff_stop_reason`, `is_terminal`: never panic.
//! * `set_event_id`: its output, parsed, leaves `event_id` as the last event id
//!   and dispatches the events the chunk does once terminated (ids aside).
//! * `encode_event`: its output parses back to that one event.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../src/codec/mod.rs"]
#[allow(dead_code)]
mod codec;

use codec::{json, sse};

fn parse(pieces: &[&str]) -> (Vec<sse::ParsedEvent>, String) {
    let mut parser = sse::Parser::default();
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(parser.feed(piece));
    }
    (events, parser.last_event_id().to_owned())
}

/// `text` cut at the char boundaries nearest to the given byte offsets.
fn cut<'a>(text: &'a str, offsets: &[u8]) -> Vec<&'a str> {
    let mut bounds: Vec<usize> = offsets
        .iter()
        .map(|&o| {
            let mut at = (o as usize * 7919) % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        })
        .collect();
    bounds.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for b in bounds {
        pieces.push(&text[start..b]);
        start = b;
    }
    pieces.push(&text[start..]);
    pieces
}

/// Drops CR, LF and NUL: what the bindings let through as an id or event type.
fn field(text: &str) -> String {
    text.chars().filter(|c| !matches!(c, '\r' | '\n' | '\0')).collect()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, rest) = data.split_at(4);
    let ncuts = (head[0] % 9) as usize;
    let (cuts, rest) = rest.split_at(ncuts.min(rest.len()));
    let text = String::from_utf8_lossy(rest);
    let text: &str = &text;

    // The parser: any split gives what one feed gives.
    let whole = parse(&[text]);
    assert_eq!(parse(&cut(text, cuts)), whole, "split != whole");
    let chars: Vec<String> = text.chars().map(String::from).collect();
    if chars.len() <= 64 {
        let pieces: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(parse(&pieces), whole, "char by char != whole");
    }

    // patch_nulls: idempotent, and Some only when something changed.
    let run_id = match head[1] % 4 {
        0 => None,
        1 => Some("R".to_owned()),
        2 => Some("q\"\\\n\u{1}\u{2028}".to_owned()),
        _ => Some(text.chars().take(8).collect()),
    };
    let seq_id = match head[2] % 4 {
        0 => None,
        1 => Some(7),
        2 => Some(u64::MAX),
        _ => Some(u64::from(head[3])),
    };
    if let Some(patched) = json::patch_nulls(text, run_id.as_deref(), seq_id) {
        assert_ne!(patched, text, "Some without a change");
        assert_eq!(json::patch_nulls(&patched, run_id.as_deref(), seq_id), None, "not idempotent");
    }

    // The chunk functions never panic.
    let _ = json::sniff_stop_reason(text);
    let _ = sse::is_terminal(text);

    // set_event_id: the last event carries the id, no event is lost.
    let event_id = match head[3] % 4 {
        0 => String::new(),
        1 => "42".to_owned(),
        _ => field(&text.chars().rev().take(12).collect::<String>()),
    };
    let stamped = sse::set_event_id(text, &event_id);
    let (events, last_id) = parse(&[&stamped]);
    assert_eq!(last_id, event_id, "set_event_id: {stamped:?}");
    // Only ids change: every event is dispatched as when the chunk is terminated.
    let strip = |events: Vec<sse::ParsedEvent>| -> Vec<(String, String, Option<u64>)> {
        events.into_iter().map(|e| (e.event, e.data, e.retry)).collect()
    };
    assert_eq!(strip(events), strip(parse(&[text, "\n\n"]).0), "set_event_id changed the events: {stamped:?}");

    // encode_event round trip.
    let event = field(&text.chars().take(6).collect::<String>());
    let id = (head[1] & 0x10 != 0).then(|| event_id.clone());
    let retry = (head[2] & 0x10 != 0).then_some(u64::from(head[0]) << 40);
    let encoded = sse::encode_event(text, Some(&event), id.as_deref(), retry);
    let (events, _) = parse(&[&encoded]);
    let data = text.replace("\r\n", "\n").replace('\r', "\n");
    let want = sse::ParsedEvent {
        event: if event.is_empty() { "message".to_owned() } else { event },
        data,
        id: id.unwrap_or_default(),
        retry,
    };
    assert_eq!(events, vec![want], "encode_event round trip: {encoded:?}");
});
