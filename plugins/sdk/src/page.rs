//! Pages: cutting a vendor's list body into records cheaply, and cursors
//! that carry more than one value.
//!
//! # Why records stay raw
//!
//! A record crosses the boundary as JSON text. The obvious way to get there,
//! parsing the body into a `serde_json::Value` and serialising each record
//! back into a string, builds a tree of allocations per record only to throw
//! it away, and re-serialising runs about 4x slower in wasm than natively.
//! [`records_from`] instead cuts each record out of the body as a slice that
//! a validating scanner has checked but not built (the same grammar serde_json
//! accepts, at about a third of its cost in wasm). The only work per record is
//! one copy of its bytes into the [`Json`] string the host receives, so a page
//! of 100 records costs microseconds.
//!
//! The record text is the vendor's, byte for byte (its field order, its
//! whitespace, its escapes).
//!
//! ```
//! use weft_connector_sdk::page;
//!
//! let body = br#"{"object": "list", "data": [{"id": "cus_1"}, {"id": "cus_2", "name": "Jo"}], "has_more": false}"#;
//! let records = page::records_from(body, "data")?;
//! assert_eq!(records, [r#"{"id": "cus_1"}"#, r#"{"id": "cus_2", "name": "Jo"}"#]);
//! assert_eq!(page::scalar_field(&records[1], "id")?, Some("cus_2".to_string()));
//! # Ok::<(), weft_connector_sdk::Error>(())
//! ```
//!
//! When other fields of the envelope matter too (Stripe's `has_more`), use
//! [`ListBody`], which cuts the records and keeps the envelope's other fields
//! in the same pass; or parse the body into a struct that borrows
//! (`Vec<&RawValue>`, see [`Response::json`](crate::http::Response::json))
//! and call [`raw_records`].
//!
//! # Cursors
//!
//! The host treats a cursor as an opaque string and commits it with the page,
//! so a restarted run asks for exactly the next page. A vendor cursor that is
//! already one string (Stripe's last id) can be the cursor itself; when a
//! connector must carry more (a page number *and* a source id), encode a small
//! struct with [`encode_cursor`] and read it back with [`decode_cursor`].

use core::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

use crate::scan::{ScanError, ScanResult, Scanner};
use crate::{Error, Json, Result};

/// The records of the JSON array found at `path` in `body`, each as its raw
/// JSON text.
///
/// `path` names nested object fields separated by dots (`"data"`,
/// `"result.list"`); an empty path means the body itself is the array. A
/// `null` array is an empty page; a missing one is [`Error::Fatal`] (the
/// vendor answered something else than a list). A body cut short is
/// [`Error::Transient`]. The whole body is checked to be JSON.
pub fn records_from(body: &[u8], path: &str) -> Result<Vec<Json>> {
    Ok(ListBody::parse(body, path)?.into_records())
}

/// A list response cut in one validating pass: the records of the array at
/// a path, each as its raw JSON text, and the raw text of the envelope's
/// other top-level fields (Stripe's `has_more`, a next-page token).
///
/// It is [`records_from`] for connectors that also need a field of the
/// envelope, without parsing the body twice.
///
/// ```
/// use weft_connector_sdk::page::ListBody;
///
/// let body = br#"{"object": "list", "data": [{"id": "cus_1"}, {"id": "cus_2"}], "has_more": true}"#;
/// let list = ListBody::parse(body, "data")?;
/// assert_eq!(list.flag("has_more")?, true);
/// assert_eq!(list.field("object"), Some(r#""list""#));
/// assert_eq!(list.into_records(), [r#"{"id": "cus_1"}"#, r#"{"id": "cus_2"}"#]);
/// # Ok::<(), weft_connector_sdk::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListBody<'a> {
    records: Vec<&'a str>,
    fields: Vec<(&'a str, &'a str)>,
}

impl<'a> ListBody<'a> {
    /// Checks that `body` is JSON and finds the array at `path` (see
    /// [`records_from`] for the path and the errors).
    pub fn parse(body: &'a [u8], path: &str) -> Result<ListBody<'a>> {
        let text = utf8(body)?;
        let mut scanner = Scanner::new(text);
        let mut fields = Vec::new();
        let found = array_at(&mut scanner, path, Some(&mut fields))
            .and_then(|found| scanner.end().map(|()| found))
            .map_err(|e| scan_error(&e))?;
        match found {
            Found::Items(records) => Ok(ListBody { records, fields }),
            Found::Null => Ok(ListBody { records: Vec::new(), fields }),
            Found::Missing => Err(Error::fatal(format!("the response body has no `{path}` array"))),
        }
    }

    /// The records, borrowed from the body.
    pub fn raw(&self) -> &[&'a str] {
        &self.records
    }

    /// The records as the strings a [`Page`](crate::Page) holds.
    pub fn into_records(self) -> Vec<Json> {
        self.records.into_iter().map(str::to_owned).collect()
    }

    /// The raw JSON text of the top-level field `name` (not the one the
    /// records came from), when the envelope has it.
    pub fn field(&self, name: &str) -> Option<&'a str> {
        self.fields.iter().find(|(key, _)| key_is(key, name)).map(|(_, value)| *value)
    }

    /// The top-level boolean `name`; `false` when it is missing or `null`,
    /// [`Error::Fatal`] when it is something else.
    pub fn flag(&self, name: &str) -> Result<bool> {
        match self.field(name) {
            None | Some("null" | "false") => Ok(false),
            Some("true") => Ok(true),
            Some(other) => {
                Err(Error::fatal(format!("the response body's `{name}` is {other}, not a boolean")))
            }
        }
    }
}

enum Found<'a> {
    Missing,
    Null,
    Items(Vec<&'a str>),
}

/// Finds the array at a dotted path in one pass over the value at the
/// cursor, checking (and skipping) every other field; records the
/// top-level fields in `fields` when given.
fn array_at<'a>(
    scanner: &mut Scanner<'a>,
    path: &str,
    mut fields: Option<&mut Vec<(&'a str, &'a str)>>,
) -> ScanResult<Found<'a>> {
    if path.is_empty() {
        return if scanner.null() { Ok(Found::Null) } else { scanner.array().map(Found::Items) };
    }
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let mut found = Found::Missing;
    scanner.object(|scanner, key| {
        // serde_json decodes every key of the objects it reads into a
        // struct, and refuses one whose escapes name no character (a lone
        // surrogate): so does this, to accept exactly what it accepts.
        let Some(decoded) = decoded_key(key) else {
            return Err(scanner.error_in(key, "a key's \\u escape is not a Unicode character"));
        };
        if matches!(found, Found::Missing) && decoded == head {
            found = array_at(scanner, rest, None)?;
        } else {
            let value = scanner.value()?;
            if let Some(fields) = fields.as_deref_mut() {
                fields.push((key, value));
            }
        }
        Ok(())
    })?;
    Ok(found)
}

/// Whether a key's raw text (escapes untouched) names `name`.
fn key_is(raw: &str, name: &str) -> bool {
    decoded_key(raw).is_some_and(|key| key == name)
}

/// A key's text with its escapes decoded; `None` when they name no
/// character (a lone surrogate).
fn decoded_key(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    if raw.contains('\\') {
        serde_json::from_str::<String>(&format!("\"{raw}\"")).ok().map(std::borrow::Cow::Owned)
    } else {
        Some(std::borrow::Cow::Borrowed(raw))
    }
}

fn scan_error(error: &ScanError) -> Error {
    body_error(error, error.eof)
}

/// A body that is not the JSON expected: transient when it ended early (a
/// body cut short is worth another try), fatal otherwise.
fn body_error(error: &dyn core::fmt::Display, cut_short: bool) -> Error {
    let message = format!("the response body is not the JSON expected: {error}");
    if cut_short { Error::Transient(message) } else { Error::Fatal(message) }
}

/// Copies borrowed raw records into the strings a [`Page`](crate::Page)
/// holds.
pub fn raw_records(items: &[&RawValue]) -> Vec<Json> {
    items.iter().map(|item| item.get().to_owned()).collect()
}

/// The top-level field `name` of the JSON object `record`, as text when it
/// is a string or a number; `None` when it is missing or `null`.
///
/// It reads one field without building the rest of the record: what a
/// connector needs to take the next cursor from the last record of a page.
pub fn scalar_field(record: &str, name: &str) -> Result<Option<String>> {
    let mut parser = serde_json::Deserializer::from_str(record);
    FieldIn { name }
        .deserialize(&mut parser)
        .map_err(|e| Error::fatal(format!("a record is not a JSON object: {e}")))
}

/// Parses a vendor body as JSON into `T`, which may borrow from `body`.
///
/// A body cut short is [`Error::Transient`] (a flaky connection, worth a
/// retry); any other failure is [`Error::Fatal`].
pub fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T> {
    // Checking UTF-8 once up front lets the parser borrow strings and raw
    // values without re-checking each one.
    serde_json::from_str(utf8(body)?).map_err(|e| json_error(&e))
}

/// An opaque cursor holding `state` (compact JSON).
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use weft_connector_sdk::page;
///
/// #[derive(Serialize, Deserialize, PartialEq, Debug)]
/// struct Position { source: String, page: u32 }
///
/// let cursor = page::encode_cursor(&Position { source: "src_1".into(), page: 3 })?;
/// let back: Position = page::decode_cursor(&cursor)?;
/// assert_eq!(back, Position { source: "src_1".into(), page: 3 });
/// assert!(page::decode_cursor::<Position>("garbage").is_err());
/// # Ok::<(), weft_connector_sdk::Error>(())
/// ```
pub fn encode_cursor<T: Serialize + ?Sized>(state: &T) -> Result<String> {
    serde_json::to_string(state)
        .map_err(|e| Error::fatal(format!("the cursor cannot be encoded: {e}")))
}

/// The state in a cursor made by [`encode_cursor`]; [`Error::InvalidInput`]
/// for a cursor this connector did not make.
pub fn decode_cursor<T: DeserializeOwned>(cursor: &str) -> Result<T> {
    serde_json::from_str(cursor).map_err(|e| {
        Error::invalid_input(format!("the cursor `{cursor}` is not one this connector made: {e}"))
    })
}

fn utf8(body: &[u8]) -> Result<&str> {
    core::str::from_utf8(body)
        .map_err(|e| Error::fatal(format!("the response body is not UTF-8: {e}")))
}

fn json_error(error: &serde_json::Error) -> Error {
    body_error(error, error.is_eof())
}

/// Reads one top-level scalar field of an object.
struct FieldIn<'n> {
    name: &'n str,
}

impl<'de> DeserializeSeed<'de> for FieldIn<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldIn<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(self.name))? {
            if hit && found.is_none() {
                found = map.next_value::<ScalarText>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A string or number as text; `null` as `None`.
struct ScalarText(Option<String>);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarTextVisitor)
    }
}

struct ScalarTextVisitor;

impl Visitor<'_> for ScalarTextVisitor {
    type Value = ScalarText;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
        Ok(ScalarText(Some(v.to_owned())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
        Ok(ScalarText(Some(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
        Ok(ScalarText(Some(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
        Ok(ScalarText(Some(v.to_string())))
    }

    fn visit_unit<E: de::Error>(self) -> Result<ScalarText, E> {
        Ok(ScalarText(None))
    }
}

/// Compares a map key with an expected name without allocating.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `list_body` fuzz target: a key of the envelope with a
    /// lone surrogate was taken, where serde_json refuses the body.
    #[test]
    fn an_envelope_key_whose_escape_names_no_character_is_refused_as_serde_json_refuses_it() {
        for body in [
            r#"{"data": [{}], "+at\ude0a": true}"#,
            r#"{"\ud800": 1, "data": []}"#,
            r#"{"result": {"\ud84d\u0041": 2, "list": []}}"#,
        ] {
            let path = if body.contains("result") { "result.list" } else { "data" };
            assert!(serde_json::from_str::<serde_json::Value>(body).is_err(), "{body}");
            assert!(matches!(records_from(body.as_bytes(), path), Err(Error::Fatal(_))), "{body}");
        }
        // Escapes that do name a character still match, and a lone
        // surrogate inside a record is the record's business.
        let body = r#"{"d\u0061ta": [{"a": "\ud800"}], "\u00e9": 1}"#;
        let list = ListBody::parse(body.as_bytes(), "data").expect("JSON");
        assert_eq!(list.raw(), [r#"{"a": "\ud800"}"#]);
        assert_eq!(list.field("é"), Some("1"));
    }

    #[test]
    fn records_keep_the_vendor_text_exactly() {
        let body = br#"{"data":[ {"id":"a","note":"\u00e9\"x"} ,{"n":1.50,"nested":{"data":[]}}],"has_more":true}"#;
        assert_eq!(
            records_from(body, "data").expect("records"),
            [r#"{"id":"a","note":"\u00e9\"x"}"#, r#"{"n":1.50,"nested":{"data":[]}}"#]
        );
    }

    #[test]
    fn dotted_path_and_top_level_array() {
        let body = br#"{"result": {"count": 2, "list": [{"id": 1}, {"id": 2}]}}"#;
        assert_eq!(
            records_from(body, "result.list").expect("records"),
            [r#"{"id": 1}"#, r#"{"id": 2}"#]
        );
        assert_eq!(records_from(b"[1, {\"a\":2}]", "").expect("records"), ["1", r#"{"a":2}"#]);
    }

    #[test]
    fn fields_before_and_after_are_skipped() {
        let body = br#"{"a": {"data": [9]}, "data": [{"x": [1, {"y": null}]}], "z": "data"}"#;
        assert_eq!(records_from(body, "data").expect("records"), [r#"{"x": [1, {"y": null}]}"#]);
    }

    #[test]
    fn null_array_is_empty_and_missing_array_is_fatal() {
        assert_eq!(records_from(br#"{"data": null}"#, "data"), Ok(Vec::new()));
        assert!(matches!(records_from(br#"{"items": []}"#, "data"), Err(Error::Fatal(_))));
        assert!(matches!(records_from(br#"{"data": 3}"#, "data"), Err(Error::Fatal(_))));
        assert!(matches!(records_from(br#"[]"#, "data"), Err(Error::Fatal(_))));
    }

    #[test]
    fn truncated_body_is_transient_and_trailing_garbage_is_fatal() {
        assert!(matches!(records_from(br#"{"data": [{"id": "#, "data"), Err(Error::Transient(_))));
        assert!(matches!(records_from(br#"{"data": []} x"#, "data"), Err(Error::Fatal(_))));
        assert!(matches!(records_from(b"\xff", "data"), Err(Error::Fatal(_))));
    }

    #[test]
    fn scalar_field_reads_strings_and_numbers() {
        let record = r#"{"object": {"id": "inner"}, "id": "cus_\"1", "n": 42, "z": null}"#;
        assert_eq!(scalar_field(record, "id"), Ok(Some("cus_\"1".to_string())));
        assert_eq!(scalar_field(record, "n"), Ok(Some("42".to_string())));
        assert_eq!(scalar_field(record, "z"), Ok(None));
        assert_eq!(scalar_field(record, "missing"), Ok(None));
        assert!(scalar_field(record, "object").is_err());
        assert!(scalar_field("[1]", "id").is_err());
    }

    #[test]
    fn page_of_100_records_splits_without_values() {
        let items: Vec<String> = (0..100)
            .map(|i| {
                format!(r#"{{"id":"cus_{i}","email":"u{i}@example.com","metadata":{{"k":"v"}}}}"#)
            })
            .collect();
        let body = format!(r#"{{"object":"list","data":[{}],"has_more":true}}"#, items.join(","));
        let records = records_from(body.as_bytes(), "data").expect("records");
        assert_eq!(records, items);
        assert_eq!(
            scalar_field(records.last().expect("100 records"), "id"),
            Ok(Some("cus_99".to_string()))
        );
    }

    #[test]
    fn cursor_round_trips_and_rejects_foreign_text() {
        let cursor = encode_cursor(&(3u32, "src")).expect("encodes");
        assert_eq!(decode_cursor::<(u32, String)>(&cursor), Ok((3, "src".to_string())));
        assert!(matches!(decode_cursor::<(u32, String)>("cus_1"), Err(Error::InvalidInput(_))));
    }
}
