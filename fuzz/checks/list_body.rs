//! The SDK's list-body scanner against serde_json: for every body and path,
//! `page::ListBody` accepts exactly when serde_json finds an array (or
//! `null`) at the path of a body that is JSON, and cuts the same records
//! and keeps the same envelope fields.
//!
//! Input: the dotted path, a newline, then the body.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use weft_connector_sdk::Error;
use weft_connector_sdk::page::ListBody;

/// Checks one input.
pub fn check(data: &[u8]) {
    let (path, body) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b""[..], data),
    };
    let Ok(path) = std::str::from_utf8(path) else { return };
    let expected = reference(body, path);
    match (ListBody::parse(body, path), expected) {
        (Ok(list), Ok(expected)) => {
            let records: Vec<&str> = list.raw().iter().map(|r| r.trim()).collect();
            assert_eq!(records, expected.records, "records of {path:?}");
            for (key, value) in &expected.fields {
                assert_eq!(list.field(key), Some(*value), "field {key:?} of {path:?}");
            }
        }
        (Err(e), Err(why)) => {
            // A body that serde_json reads whole was not cut short.
            if serde_json::from_slice::<IgnoredAny>(body).is_ok() {
                assert!(!matches!(e, Error::Transient(_)), "{e:?} for a whole body ({why})");
            }
        }
        (Ok(list), Err(why)) => {
            panic!("the scanner took what serde_json refuses ({why}): {list:?}")
        }
        (Err(e), Ok(expected)) => {
            panic!("the scanner refused what serde_json takes: {e:?}; expected {expected:?}")
        }
    }
}

/// What serde_json makes of it: the records (trimmed raw text) and the
/// top-level fields (the first of each key, other than the path's).
#[derive(Debug)]
struct Expected<'a> {
    records: Vec<&'a str>,
    fields: Vec<(String, &'a str)>,
}

fn reference<'a>(body: &'a [u8], path: &str) -> Result<Expected<'a>, String> {
    let text = std::str::from_utf8(body).map_err(|e| e.to_string())?;
    let whole: &RawValue = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut fields = Vec::new();
    let records = array_at(whole, path, Some(&mut fields))?;
    let (head, _) = path.split_once('.').unwrap_or((path, ""));
    let mut top: Vec<(String, &str)> = Vec::new();
    for (key, value) in fields {
        if key != head && !top.iter().any(|(k, _)| *k == key) {
            top.push((key, value));
        }
    }
    Ok(Expected { records, fields: top })
}

/// The records at `path` in `value`, following the SDK's path rules: the
/// first member with the head's name, an empty path for the array itself,
/// `null` for no records.
fn array_at<'a>(
    value: &'a RawValue,
    path: &str,
    fields: Option<&mut Vec<(String, &'a str)>>,
) -> Result<Vec<&'a str>, String> {
    if path.is_empty() {
        if value.get().trim() == "null" {
            return Ok(Vec::new());
        }
        let items: Vec<&RawValue> = serde_json::from_str(value.get()).map_err(|e| e.to_string())?;
        return Ok(items.iter().map(|item| item.get().trim()).collect());
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let members = serde_json::Deserializer::from_str(value.get())
        .deserialize_map(Members)
        .map_err(|e| e.to_string())?;
    if let Some(fields) = fields {
        fields.extend(members.iter().map(|(k, v)| (k.clone(), v.get().trim())));
    }
    match members.iter().find(|(key, _)| key == head) {
        Some((_, found)) => array_at(found, rest, None),
        None => Err(format!("no {head:?} member")),
    }
}

/// An object's members in order, duplicates kept.
struct Members;

impl<'de> Visitor<'de> for Members {
    type Value = Vec<(String, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, &RawValue>()? {
            members.push(member);
        }
        Ok(members)
    }
}
