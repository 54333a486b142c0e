//! The codec against the shared test vectors in `testdata/*.jsonl` (one JSON
//! object a line: the inputs and `expected`), which the Python suite runs through
//! both backends too (tests/test_codec.py::test_vectors). `scripts/make_testdata.py`
//! writes them.

use std::path::PathBuf;

use serde_json::Value;

use super::{json, sse};

/// The vectors of `testdata/<name>.jsonl`, at least one.
fn vectors(name: &str) -> Vec<Value> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "testdata", &format!("{name}.jsonl")].iter().collect();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let all: Vec<Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}.jsonl line {}: {e}", i + 1)))
        .collect();
    assert!(!all.is_empty(), "{name}.jsonl holds no vector");
    all
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn opt_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v[key].as_str()
}

/// Checks every vector of `name`, and reports all that fail, not only the first.
fn check(name: &str, got: impl Fn(&Value) -> Value) {
    let failures: Vec<String> = vectors(name)
        .iter()
        .filter_map(|v| {
            let out = got(v);
            (out != v["expected"]).then(|| format!("{v}\n    got {out}"))
        })
        .collect();
    assert!(failures.is_empty(), "{} {name} vector(s) fail:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn is_terminal() {
    check("is_terminal", |v| sse::is_terminal(str_of(v, "chunk")).into());
}

#[test]
fn sniff_stop_reason() {
    check("sniff_stop_reason", |v| json::sniff_stop_reason(str_of(v, "chunk")).into());
}

#[test]
fn patch_nulls() {
    // `expected: null`: nothing matched (Python gets the very same object back).
    check("patch_nulls", |v| json::patch_nulls(str_of(v, "text"), opt_str(v, "run_id"), v["seq_id"].as_u64()).into());
}

#[test]
fn set_event_id() {
    check("set_event_id", |v| sse::set_event_id(str_of(v, "chunk"), str_of(v, "event_id")).into());
}

#[test]
fn encode_event() {
    check("encode_event", |v| {
        sse::encode_event(str_of(v, "data"), opt_str(v, "event"), opt_str(v, "id"), v["retry"].as_u64()).into()
    });
}

#[test]
fn parse() {
    check("parse", |v| {
        let mut parser = sse::Parser::default();
        let feeds = v["feeds"].as_array().expect("feeds");
        let events: Vec<Value> = feeds
            .iter()
            .flat_map(|feed| parser.feed(feed.as_str().expect("a feed is a string")))
            .map(|e| serde_json::json!([e.event, e.data, e.id, e.retry]))
            .collect();
        serde_json::json!({"events": events, "last_event_id": parser.last_event_id()})
    });
}

/// Nesting far past `MAX_NESTING` is refused without recursion (the vectors stop at 20,000 characters).
#[test]
fn sniff_stop_reason_deep_nesting() {
    let deep = format!(r#"data: {{"message_type":"stop_reason","stop_reason":"x","o":{}}}"#, "[".repeat(1_000_000));
    assert_eq!(json::sniff_stop_reason(&deep), None);
}
