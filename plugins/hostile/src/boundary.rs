//! Misbehaviour at the boundary itself: what the plugin hands back (records
//! that are not one JSON object, replies too large to accept), the CPU it
//! spends, the log lines it writes and the imports it abuses.
//!
//! | resource      | what it does                                                   | the host should |
//! | ------------- | -------------------------------------------------------------- | --------------- |
//! | `bad-records` | `list`: a good page, then a page holding the record of the filter's `kind` (see [`bad_record`]); `get` (id = kind), `upsert` (`kind` field of the record) and `upsert-batch` (each item's `kind`) answer that record too | refuse the call as a contract breach, keep the page log readable |
//! | `bad-sync`    | `list`: as `bad-records` with the kind `comma`, for a step that takes no filter (a sync's source) | the same |
//! | `big-record`  | `get` (id = byte count) and `list` (filter `{"bytes", "records"}`) answer records of that size | refuse past the record and reply limits |
//! | `many-records`| `list` answers the filter's `count` empty records               | refuse before copying them |
//! | `burn`        | `list` spins `iterations` (filter) rounds of arithmetic, then returns; `get` spins `id` rounds (an id that is not a number is `invalid-input`) | count real CPU, not waiting |
//! | `slow`        | `list` GETs `{base_url}/slow?ms=` (filter `ms`), returns the status | let calls wait for an instance, not fail |
//! | `log-forge`   | `log` lines holding CR, LF, ANSI escapes and other controls     | escape them |
//! | `header-flood`| `http.send` with the filter's `count` distinct header names     | fail the call, never the process |
//! | `grow`        | grows its memory to the filter's `pages` (64 KiB each)          | stop it at the cap, saying the exact sizes |

use std::hint::black_box;

use serde_json::{Value, json};
use weft_connector_sdk::{
    BatchItem, Context, Error, ListRequest, Op, Page, ResourceSpec, Result, UpsertOutcome,
    UpsertRequest, http, log,
};

/// The resources of this module, with their ops.
pub const RESOURCES: &[(&str, &str, &[Op])] = &[
    (
        "bad-records",
        "A good page, then a record that is not one JSON object.",
        &[Op::List, Op::Get, Op::Upsert, Op::UpsertBatch],
    ),
    ("bad-sync", "A good page, then a second record smuggled in by a comma.", &[Op::List]),
    ("big-record", "Records as large as asked for.", &[Op::List, Op::Get]),
    ("many-records", "More records than any page holds.", &[Op::List]),
    ("burn", "Spends CPU, then returns.", &[Op::List, Op::Get]),
    ("slow", "Waits on a slow HTTP answer.", &[Op::List]),
    ("log-forge", "Log lines that try to pass for the host's.", &[Op::List]),
    ("header-flood", "A request with a flood of header names.", &[Op::List]),
    ("grow", "Grows its linear memory to a given number of pages.", &[Op::List]),
];

/// The manifest entries of [`RESOURCES`].
pub fn resources() -> impl Iterator<Item = ResourceSpec> {
    RESOURCES.iter().map(|(name, description, ops)| ResourceSpec {
        name: (*name).into(),
        description: (*description).into(),
        ops: ops.to_vec(),
        irreversible: Vec::new(),
        max_page_size: 100,
        default_page_size: 100,
        id_field: "id".into(),
    })
}

/// Whether `resource` is one of this module's.
pub fn serves(resource: &str) -> bool {
    RESOURCES.iter().any(|(name, ..)| *name == resource)
}

/// The record text a `kind` names: each breaks "one JSON object" a
/// different way, except `pretty`, which is one object spread over lines.
pub fn bad_record(kind: &str) -> Result<String> {
    Ok(match kind {
        // A raw line break inside a string: not JSON.
        "newline-in-string" => "{\"id\":\"2\",\"note\":\"a\nb\"}".into(),
        // Two records on two lines: one forged line in a JSON Lines file.
        "two-lines" => "{\"id\":\"2\"}\n{\"id\":\"forged\"}".into(),
        // A second record smuggled into the page's JSON array.
        "comma" => r#"{"id":"2"},{"id":"smuggled"}"#.into(),
        "not-json" => "hello, host".into(),
        "array" => r#"[{"id":"2"}]"#.into(),
        "number" => "42".into(),
        "unterminated" => r#"{"id":"2""#.into(),
        // Text serde_json skips over but refuses to decode.
        "lone-surrogate" => r#"{"id":"2","name":"\ud800"}"#.into(),
        "huge-number" => r#"{"id":"2","n":1e400}"#.into(),
        "too-deep" => format!("{{\"id\":\"2\",\"deep\":{}{}}}", "[".repeat(200), "]".repeat(200)),
        // One object, pretty-printed as vendors do: accepted, made one line.
        "pretty" => "{\n  \"id\": \"2\",\n  \"name\": \"Pretty\\nPrinted\"\r\n}".into(),
        other => return Err(Error::invalid_input(format!("no bad record `{other}`"))),
    })
}

/// A record of `bytes` bytes (at least 10), built with one allocation and
/// a fill, so that building it costs little CPU.
fn big(bytes: usize) -> String {
    let mut record = Vec::with_capacity(bytes.max(10));
    record.extend_from_slice(b"{\"pad\":\"");
    record.resize(bytes.max(10) - 2, b'x');
    record.extend_from_slice(b"\"}");
    String::from_utf8(record).unwrap_or_default()
}

fn filter_number(request: &ListRequest, name: &str) -> Result<u64> {
    let filter: Option<serde_json::Map<String, Value>> = request.filter()?;
    filter
        .as_ref()
        .and_then(|f| f.get(name))
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::invalid_input(format!("the filter needs a number `{name}`")))
}

/// `list` of one of [`RESOURCES`].
pub fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    match request.resource.as_str() {
        "bad-records" => {
            let filter: Option<serde_json::Map<String, Value>> = request.filter()?;
            // Without a kind, nothing: the empty target a sync lists.
            let Some(kind) = filter.as_ref().and_then(|f| f.get("kind")).and_then(Value::as_str)
            else {
                return Ok(Page::last(Vec::new()));
            };
            match request.cursor.as_deref() {
                None => Ok(Page::new(vec![r#"{"id":"1"}"#.into()], Some("2".into()))),
                Some(_) => Ok(Page::last(vec![bad_record(kind)?, r#"{"id":"3"}"#.into()])),
            }
        }
        "bad-sync" => match request.cursor.as_deref() {
            None => Ok(Page::new(vec![r#"{"id":"1"}"#.into()], Some("2".into()))),
            Some(_) => Ok(Page::last(vec![bad_record("comma")?, r#"{"id":"3"}"#.into()])),
        },
        "big-record" => {
            let bytes = filter_number(request, "bytes")? as usize;
            let records = filter_number(request, "records")? as usize;
            Ok(Page::last((0..records).map(|_| big(bytes)).collect()))
        }
        "many-records" => {
            let count = filter_number(request, "count")? as usize;
            Ok(Page::last(vec![String::new(); count]))
        }
        "burn" => {
            let iterations = filter_number(request, "iterations")?;
            Ok(Page::last(vec![json!({"sum": burn(iterations)}).to_string()]))
        }
        "log-forge" => {
            log::warn("plugin line\n2030-01-01T00:00:00Z ERROR weft: forged host line");
            log::info(
                "carriage\rreturn, \u{1b}[31mred\u{1b}[0m, bell\u{7}, nul\u{0}, next line\u{85}, separator\u{2028}end",
            );
            Ok(Page::last(vec![r#"{"id":"1"}"#.into()]))
        }
        "header-flood" => {
            let count = filter_number(request, "count")?;
            let mut builder = http::get(ctx.url("/huge"));
            for n in 0..count {
                builder = builder.header(format!("x-flood-{n}"), "1");
            }
            let response = builder.send()?;
            Ok(Page::last(vec![json!({"status": response.status}).to_string()]))
        }
        "slow" => {
            let ms = filter_number(request, "ms")?;
            let response = http::get(ctx.url("/slow")).query("ms", ms).send()?;
            Ok(Page::last(vec![json!({"status": response.status}).to_string()]))
        }
        "grow" => {
            let pages = filter_number(request, "pages")? as usize;
            Ok(Page::last(vec![json!({"pages": grow_to(pages)}).to_string()]))
        }
        other => Err(Error::not_found(format!("hostile: no resource `{other}`"))),
    }
}

/// Grows memory 0 to `pages` in one step; the size after.
#[cfg(target_arch = "wasm32")]
fn grow_to(pages: usize) -> usize {
    let now = core::arch::wasm32::memory_size(0);
    core::arch::wasm32::memory_grow(0, pages.saturating_sub(now));
    core::arch::wasm32::memory_size(0)
}

#[cfg(not(target_arch = "wasm32"))]
fn grow_to(pages: usize) -> usize {
    pages
}

/// `get` of one of [`RESOURCES`].
pub fn get(resource: &str, id: &str) -> Result<Option<String>> {
    match resource {
        "bad-records" => bad_record(id).map(Some),
        "big-record" => {
            let bytes =
                id.parse::<usize>().map_err(|e| Error::invalid_input(format!("id: {e}")))?;
            Ok(Some(big(bytes)))
        }
        "burn" => {
            let iterations =
                id.parse::<u64>().map_err(|e| Error::invalid_input(format!("id {id:?}: {e}")))?;
            Ok(Some(json!({"id": id, "sum": burn(iterations)}).to_string()))
        }
        other => Err(Error::not_found(format!("hostile: no get on `{other}`"))),
    }
}

fn kind_of(record: &str) -> Result<String> {
    let record: Value =
        serde_json::from_str(record).map_err(|e| Error::invalid_input(e.to_string()))?;
    record["kind"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::invalid_input("the record needs a `kind`"))
}

/// `upsert` of `bad-records`: answers the record its `kind` names.
pub fn upsert(request: &UpsertRequest) -> Result<UpsertOutcome> {
    if request.resource != "bad-records" {
        return Err(Error::not_found(format!("hostile: no upsert on `{}`", request.resource)));
    }
    Ok(UpsertOutcome::created(bad_record(&kind_of(&request.record)?)?))
}

/// `upsert-batch` of `bad-records`: each item's outcome is the record its
/// `kind` names (`good` for a good one).
pub fn upsert_batch(resource: &str, items: &[BatchItem]) -> Result<Vec<Result<UpsertOutcome>>> {
    if resource != "bad-records" {
        return Err(Error::not_found(format!("hostile: no upsert-batch on `{resource}`")));
    }
    items
        .iter()
        .map(|item| {
            let kind = kind_of(&item.record)?;
            let record =
                if kind == "good" { r#"{"id":"1"}"#.to_owned() } else { bad_record(&kind)? };
            Ok(Ok(UpsertOutcome::created(record)))
        })
        .collect()
}

/// `iterations` rounds of arithmetic the optimiser cannot remove.
fn burn(iterations: u64) -> u64 {
    let mut sum: u64 = 0;
    for i in 0..iterations {
        sum = black_box(sum.wrapping_mul(31).wrapping_add(i));
    }
    sum
}
