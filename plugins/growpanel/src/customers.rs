//! The `customers` resource: `/data/customers` list, get, create (one or
//! bulk), update and delete.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weft_connector_sdk::error::VendorError;
use weft_connector_sdk::http::{self, Response};
use weft_connector_sdk::{
    BatchItem, Context, Error, Json, ListRequest, Page, RemoveOutcome, Result, UpsertOutcome,
    UpsertRequest, log, page, query,
};

use crate::diff;

const VENDOR: &str = "growpanel";

/// The largest `limit` the connector asks for. GrowPanel publishes no
/// maximum; the list is one page, so the cap is generous.
pub(crate) const MAX_PAGE_SIZE: u32 = 10_000;

/// The page size when the workflow does not ask for one: large, because a
/// list cannot continue past its first page.
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 1_000;

/// A `{"result": {"count", "list"}}` list envelope, borrowed from the body.
#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(borrow)]
    result: ListResult<'a>,
}

#[derive(Deserialize)]
struct ListResult<'a> {
    #[serde(default)]
    count: Option<f64>,
    #[serde(borrow)]
    list: Option<Vec<&'a RawValue>>,
}

/// Reads the customers of the data source: one page, since GrowPanel's
/// list takes a `limit` and nothing to continue from.
///
/// When the source holds more than the page, the page comes back with a
/// cursor that marks "more than GrowPanel can page to": a caller that wanted
/// no more than the page (a list step's `limit`) stops there and has what it
/// asked for; one that asks for the next page gets `unsupported`, never a
/// silently truncated list.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let source = list_source(ctx, request)?;
    if let Some(cursor) = request.cursor.as_deref() {
        return Err(beyond_the_page(&source, cursor));
    }
    let size = request.page_size.clamp(1, MAX_PAGE_SIZE);
    // One more than asked for tells "exactly a page" from "more than a page".
    let limit = if size < MAX_PAGE_SIZE { size + 1 } else { size };
    let response = http::get(ctx.url("/data/customers"))
        .query("source", &source)
        .query("limit", limit)
        .send()?
        .error_for_status(VENDOR)?;
    let body: ListBody<'_> = response.json()?;
    let mut items = body.result.list.unwrap_or_default();
    let total = body.result.count.unwrap_or(0.0);
    let more_than_page = items.len() > size as usize || total > items.len() as f64;
    if !more_than_page {
        return Ok(Page::last(page::raw_records(&items)));
    }
    let held = (total as u64).max(items.len() as u64);
    items.truncate(size as usize);
    let cursor = format!("{BEYOND_THE_PAGE}{size}:{held}");
    Ok(Page::new(page::raw_records(&items), Some(cursor)))
}

/// Starts the cursor of a first page that GrowPanel cannot continue.
const BEYOND_THE_PAGE: &str = "beyond-the-page:";

/// Why there is no next page, from the cursor [`list`] gave.
fn beyond_the_page(source: &str, cursor: &str) -> Error {
    let Some((size, held)) =
        cursor.strip_prefix(BEYOND_THE_PAGE).and_then(|rest| rest.split_once(':'))
    else {
        return Error::invalid_input(format!(
            "growpanel: `{cursor}` is not a cursor this connector gave: GET /data/customers \
             has a single page"
        ));
    };
    Error::unsupported(format!(
        "growpanel: data source `{source}` holds more than {size} customers, and GET \
         /data/customers cannot page past its `limit`; list with a page size of at least \
         {held} (at most {MAX_PAGE_SIZE}), or set the step's `limit` to read only the first \
         page"
    ))
}

fn list_source(ctx: &Context, request: &ListRequest) -> Result<String> {
    let Some(filter) = request.filter::<Value>()? else {
        return Ok(source(ctx)?.to_owned());
    };
    let Value::Object(filter) = filter else {
        return Err(Error::invalid_input(
            "growpanel: the customers filter must be a JSON object such as {\"source\": \"ds_...\"}",
        ));
    };
    let mut chosen = None;
    for (key, value) in &filter {
        match (key.as_str(), value) {
            ("source", Value::String(source)) if !source.is_empty() => chosen = Some(source),
            ("source", _) => {
                return Err(Error::invalid_input(
                    "growpanel: the filter's `source` must be a data source id string",
                ));
            }
            (other, _) => {
                return Err(Error::invalid_input(format!(
                    "growpanel: GET /data/customers cannot filter on `{other}`; only `source` \
                     is accepted"
                )));
            }
        }
    }
    match chosen {
        Some(source) => Ok(source.clone()),
        None => Ok(source(ctx)?.to_owned()),
    }
}

/// The customer `id` of the data source; `None` when it does not exist.
pub(crate) fn get(ctx: &Context, id: &str) -> Result<Option<Json>> {
    check_id(id)?;
    let response = http::get(customer_url(ctx, id)).query("source", source(ctx)?).send()?;
    if is_missing(&response) {
        return Ok(None);
    }
    let response = response.error_for_status(VENDOR)?;
    Ok(Some(unwrap_result(&response)?))
}

/// Creates or updates one customer; see the crate docs for the rules.
pub(crate) fn upsert(ctx: &Context, request: &UpsertRequest) -> Result<UpsertOutcome> {
    let desired = parse_object(&request.record)?;
    let id = record_id(&desired)?;
    match get(ctx, &id)? {
        Some(current) => update(ctx, &id, &current, &desired),
        None => create(ctx, &id, &desired),
    }
}

/// Creates every valid record in one bulk POST; one outcome per item.
pub(crate) fn upsert_batch(
    ctx: &Context,
    items: &[BatchItem],
) -> Result<Vec<Result<UpsertOutcome>>> {
    let default_source = ctx.setting("source");
    let mut outcomes: Vec<Option<Result<UpsertOutcome>>> = Vec::with_capacity(items.len());
    let mut rows = Vec::new();
    let mut sent = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let prepared = parse_object(&item.record).and_then(|desired| {
            let id = record_id(&desired)?;
            let body = diff::for_create(&desired, default_source)
                .map_err(|problem| create_problem(&id, problem))?;
            Ok((id, body))
        });
        match prepared {
            Ok((id, body)) => {
                rows.push(Value::Object(body));
                sent.push((index, id));
                outcomes.push(None);
            }
            Err(error) => outcomes.push(Some(Err(error))),
        }
    }
    if !rows.is_empty() {
        let answers = post_rows(ctx, &Value::Array(rows))?;
        let by_position = answers.len() == sent.len();
        for (position, (index, id)) in sent.iter().enumerate() {
            let answer = if by_position {
                answers.get(position)
            } else {
                answers
                    .iter()
                    .find(|row| page::scalar_field(row, "id").ok().flatten().as_deref() == Some(id))
            };
            outcomes[*index] = Some(match answer {
                Some(row) => row_outcome(id, row),
                None => Err(Error::fatal(format!(
                    "growpanel: the bulk POST /data/customers answered no row for customer `{id}`"
                ))),
            });
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| Err(Error::fatal("growpanel: a batch item got no outcome")))
        })
        .collect())
}

/// Deletes the customer `id`, which cannot be undone.
pub(crate) fn remove(ctx: &Context, id: &str) -> Result<RemoveOutcome> {
    if get(ctx, id)?.is_none() {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    let response = http::delete(customer_url(ctx, id)).send()?;
    if is_missing(&response) {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    response.error_for_status(VENDOR)?;
    Ok(RemoveOutcome::Removed)
}

fn create(ctx: &Context, id: &str, desired: &Map<String, Value>) -> Result<UpsertOutcome> {
    let body = diff::for_create(desired, ctx.setting("source"))
        .map_err(|problem| create_problem(id, problem))?;
    let rows = post_rows(ctx, &Value::Object(body))?;
    let row = rows.first().ok_or_else(|| {
        Error::fatal(format!("growpanel: POST /data/customers answered no row for customer `{id}`"))
    })?;
    row_outcome(id, row)
}

fn update(
    ctx: &Context,
    id: &str,
    current: &str,
    desired: &Map<String, Value>,
) -> Result<UpsertOutcome> {
    let current_fields = parse_object(current).map_err(|_| {
        Error::fatal(format!(
            "growpanel: customer `{id}` is not a JSON object as GrowPanel returned it"
        ))
    })?;
    let ignored = diff::unchangeable_differences(desired, &current_fields);
    if !ignored.is_empty() {
        log::warn(&format!(
            "growpanel: customer `{id}` differs in {} which PUT /data/customers cannot change; \
             left as GrowPanel has them",
            ignored.join(", ")
        ));
    }
    let changes = diff::put_changes(desired, &current_fields)
        .map_err(|problem| not_a_string(id, &problem))?;
    if changes.is_empty() {
        return Ok(UpsertOutcome::unchanged(current.to_owned()));
    }
    let response = http::put(customer_url(ctx, id)).json(&Value::Object(changes)).send()?;
    if is_missing(&response) {
        return Err(Error::not_found(format!(
            "growpanel: customer `{id}` was deleted during the upsert"
        )));
    }
    response.error_for_status(VENDOR)?;
    // The PUT answer carries no record: read back what GrowPanel holds now.
    let record = get(ctx, id)?.ok_or_else(|| {
        Error::not_found(format!("growpanel: customer `{id}` was deleted during the upsert"))
    })?;
    Ok(UpsertOutcome::updated(record))
}

/// Sends one row or an array of rows to `POST /data/customers` and returns
/// the per-row answers.
fn post_rows(ctx: &Context, body: &Value) -> Result<Vec<Json>> {
    // GrowPanel's POST inserts or replaces by `id`: sending it twice has the
    // effect of sending it once, so the host may retry it.
    let response = http::post(ctx.url("/data/customers"))
        .json(body)
        .idempotent(true)
        .send()?
        .error_for_status(VENDOR)?;
    #[derive(Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        result: &'a RawValue,
    }
    let answer: Answer<'_> = response.json()?;
    let result = answer.result.get();
    if result.trim_start().starts_with('[') {
        page::records_from(result.as_bytes(), "")
    } else {
        page::records_from(result.as_bytes(), "list")
    }
}

fn row_outcome(id: &str, row: &str) -> Result<UpsertOutcome> {
    #[derive(Deserialize)]
    struct Status {
        #[serde(default)]
        export_status: Option<String>,
        #[serde(default)]
        export_error: Option<Value>,
    }
    let status: Status = page::parse(row.as_bytes())?;
    if status.export_status.as_deref() == Some("error") {
        let reason = match status.export_error {
            Some(Value::String(text)) => text,
            Some(other) => other.to_string(),
            None => "no reason given".to_owned(),
        };
        return Err(Error::invalid_input(format!(
            "growpanel: POST /data/customers rejected customer `{id}`: {reason}"
        )));
    }
    Ok(UpsertOutcome::created(row.to_owned()))
}

fn create_problem(id: &str, problem: diff::CreateProblem) -> Error {
    match problem {
        diff::CreateProblem::Missing(missing) => missing_fields(id, &missing),
        diff::CreateProblem::NotAString(problem) => not_a_string(id, &problem),
    }
}

fn not_a_string(id: &str, problem: &diff::NotAString) -> Error {
    Error::invalid_input(format!(
        "growpanel: customer `{id}`: `{}` must be a string (GrowPanel's API types it so; a \
         number or boolean is sent as its text), not an object or a list",
        problem.field
    ))
}

fn missing_fields(id: &str, missing: &[&str]) -> Error {
    let names: Vec<String> = missing.iter().map(|field| format!("`{field}`")).collect();
    let hint = if missing.contains(&"data_source") {
        " (`data_source` defaults to the connection's `source` setting)"
    } else {
        ""
    };
    Error::invalid_input(format!(
        "growpanel: cannot create customer `{id}`: the record has no {}, which POST \
         /data/customers requires{hint}",
        names.join(", ")
    ))
}

fn source(ctx: &Context) -> Result<&str> {
    match ctx.setting("source") {
        Some(source) if !source.is_empty() => Ok(source),
        _ => Err(Error::invalid_input(
            "growpanel: the connection must set the `source` setting (a data source id, \
             `ds_...`): GrowPanel reads customers per data source",
        )),
    }
}

fn parse_object(record: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(record)
        .map_err(|_| Error::invalid_input("growpanel: a customer record must be a JSON object"))
}

fn record_id(desired: &Map<String, Value>) -> Result<String> {
    match desired.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        Some(Value::Number(id)) => Ok(id.to_string()),
        _ => Err(Error::invalid_input(
            "growpanel: a customer record needs an `id` (the external customer id, as in your \
             billing source)",
        )),
    }
}

fn customer_url(ctx: &Context, id: &str) -> String {
    ctx.url(&format!("/data/customers/{}", query::encode_component(id)))
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_input("growpanel: a customer id must not be empty"));
    }
    Ok(())
}

/// The record in a body that is either the record itself (spec) or
/// `{"result": record}`.
fn unwrap_result(response: &Response) -> Result<Json> {
    #[derive(Deserialize)]
    struct Wrapped<'a> {
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
    }
    let wrapped: Wrapped<'_> = response.json()?;
    if let Some(inner) = wrapped.result
        && inner.get().trim_start().starts_with('{')
    {
        return Ok(inner.get().to_owned());
    }
    Ok(response.text()?.to_owned())
}

/// A 404 that GrowPanel sent about a missing customer (a JSON error body),
/// as opposed to one from a wrong base URL, which must not read as
/// "absent" (a sync would then create duplicates).
fn is_missing(response: &Response) -> bool {
    response.status == 404 && VendorError::parse(&response.body).is_some()
}
