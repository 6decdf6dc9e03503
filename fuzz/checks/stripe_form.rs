//! Stripe form encoding: what the SDK's `form::encode` writes for a JSON
//! object, the Stripe emulator reads back as the same tree (scalars as
//! their text, `null` as `""`, arrays as hashes keyed by index, empty
//! containers left out), for every object the bracket style can spell.
//!
//! Input: a JSON document (anything else is only encoded, for panics).

use serde_json::{Map, Value};
use weft_connector_sdk::form;

/// The most brackets a name may have for the emulator (Stripe's deepest
/// customer parameter has three; it refuses eight or more).
const MAX_BRACKETS: usize = 7;

/// More pairs than this the emulator refuses in one request.
const MAX_PAIRS: usize = 5_000;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let encoded = match form::encode(&value) {
        Ok(encoded) => encoded,
        Err(e) => {
            assert!(!value.is_object(), "an object was refused: {e:?}");
            return;
        }
    };
    let decoded = weft_sandbox::stripe::fuzzing::decode_form(encoded.as_bytes());
    if !spellable(&value, 0) || pairs(&value) > MAX_PAIRS {
        return;
    }
    let expected = tree(&value).unwrap_or_else(|| Value::Object(Map::new()));
    match decoded {
        Ok(decoded) => assert_eq!(decoded, expected, "{encoded}"),
        Err(e) => panic!("the emulator refused {encoded:?}: {e}"),
    }
}

/// Whether the bracket style can spell `value`: member names neither empty
/// (`a[]` appends) nor holding a bracket, with at most `MAX_BRACKETS`
/// brackets in a name.
fn spellable(value: &Value, levels: usize) -> bool {
    match value {
        Value::Object(fields) => fields.iter().all(|(name, field)| {
            !name.is_empty()
                && !name.contains(['[', ']'])
                && (levels <= MAX_BRACKETS || !emits(field))
                && spellable(field, levels + 1)
        }),
        Value::Array(items) => items
            .iter()
            .all(|item| (levels <= MAX_BRACKETS || !emits(item)) && spellable(item, levels + 1)),
        _ => true,
    }
}

/// Whether `value` writes any pair.
fn emits(value: &Value) -> bool {
    pairs(value) > 0
}

/// How many pairs `value` writes.
fn pairs(value: &Value) -> usize {
    match value {
        Value::Object(fields) => fields.values().map(pairs).sum(),
        Value::Array(items) => items.iter().map(pairs).sum(),
        _ => 1,
    }
}

/// The tree the emulator should read; `None` for a value that writes
/// nothing.
fn tree(value: &Value) -> Option<Value> {
    match value {
        Value::Object(fields) => {
            let map: Map<String, Value> =
                fields.iter().filter_map(|(k, v)| Some((k.clone(), tree(v)?))).collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Array(items) => {
            let map: Map<String, Value> = items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| Some((i.to_string(), tree(v)?)))
                .collect();
            (!map.is_empty()).then_some(Value::Object(map))
        }
        Value::Null => Some(Value::String(String::new())),
        Value::Bool(flag) => Some(Value::String(flag.to_string())),
        Value::Number(number) => Some(Value::String(number.to_string())),
        Value::String(text) => Some(Value::String(text.clone())),
    }
}
