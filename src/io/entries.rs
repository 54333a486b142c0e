//! Reading stream entries out of raw replies.

use redis::Value;

/// One stream entry as the engines hand it on: its ID and fields by name.
#[derive(Clone, Debug)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn seq(&self) -> u64 {
        self.field("seq_id").and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    pub fn is_complete(&self) -> bool {
        self.field("complete") == Some("true")
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply.
pub fn parse_range(value: &Value) -> Vec<Entry> {
    let Value::Array(items) = value else { return Vec::new() };
    items.iter().filter_map(parse_entry).collect()
}

fn parse_entry(value: &Value) -> Option<Entry> {
    let Value::Array(pair) = value else { return None };
    let id = text(pair.first()?)?;
    let fields = match pair.get(1)? {
        Value::Array(flat) => flat.chunks(2).filter_map(|kv| Some((text(kv.first()?)?, text(kv.get(1)?)?))).collect(),
        Value::Map(map) => map.iter().filter_map(|(k, v)| Some((text(k)?, text(v)?))).collect(),
        _ => Vec::new(),
    };
    Some(Entry { id, fields })
}

/// The `(key, entries)` pairs of an `XREAD` reply (RESP2 array or RESP3 map).
pub fn parse_xread(value: &Value) -> Vec<(String, Vec<Entry>)> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => Some((text(pair.first()?)?, parse_range(pair.get(1)?))),
                _ => None,
            })
            .collect(),
        Value::Map(map) => map.iter().filter_map(|(k, v)| Some((text(k)?, parse_range(v)))).collect(),
        _ => Vec::new(),
    }
}
