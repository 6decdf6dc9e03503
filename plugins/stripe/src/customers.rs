//! The `customers` resource: `/v1/customers` list, retrieve, create/update
//! and delete.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weft_connector_sdk::error::{self, VendorError};
use weft_connector_sdk::http::{self, RequestBuilder, Response};
use weft_connector_sdk::{
    Context, Error, Json, ListRequest, Page, RemoveOutcome, Result, UpsertOutcome, UpsertRequest,
    form, log, page, query,
};

use crate::diff;

const VENDOR: &str = "stripe";

/// Stripe serves at most 100 customers per page.
pub(crate) const MAX_PAGE_SIZE: u32 = 100;

/// List parameters the connector owns; a filter may not set them.
const PAGING_PARAMETERS: &[&str] = &["limit", "starting_after", "ending_before"];

/// A Stripe list envelope, borrowed from the body: the records stay raw.
#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default)]
    has_more: bool,
}

/// Reads one page; the cursor is the id of the last customer of the
/// previous page (Stripe's `starting_after`).
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let response = send(list_request(ctx, request)?)?;
    // One validating pass cuts the records and keeps `has_more`.
    let body = page::ListBody::parse(&response.body, "data")?;
    let has_more = body.flag("has_more")?;
    let records = body.into_records();
    let next_cursor = match (has_more, records.last()) {
        (true, Some(last)) => Some(page::scalar_field(last, "id")?.ok_or_else(|| {
            Error::fatal("stripe: a customer in the page has no `id` to continue after")
        })?),
        (true, None) => {
            log::warn("stripe: an empty page claims has_more; ending the list here");
            None
        }
        (false, _) => None,
    };
    Ok(Page::new(records, next_cursor))
}

/// The list request: `limit` (at most 100), `starting_after` from the
/// cursor, and each filter field as a query parameter (`created[gte]` from
/// `{"created": {"gte": ...}}`).
pub(crate) fn list_request(ctx: &Context, request: &ListRequest) -> Result<RequestBuilder> {
    let limit = request.page_size.clamp(1, MAX_PAGE_SIZE);
    let mut builder = http::get(ctx.url("/v1/customers")).query("limit", limit);
    if let Some(cursor) = request.cursor.as_deref() {
        builder = builder.query("starting_after", cursor);
    }
    if let Some(filter) = request.filter::<Value>()? {
        if !filter.is_object() {
            return Err(Error::invalid_input(
                "stripe: the customers filter must be a JSON object such as {\"email\": \"...\"}",
            ));
        }
        for (name, value) in form::pairs(&filter)? {
            let root = name.split('[').next().unwrap_or_default();
            if PAGING_PARAMETERS.contains(&root) {
                return Err(Error::invalid_input(format!(
                    "stripe: the filter may not set `{root}`; the engine pages by itself"
                )));
            }
            builder = builder.query(&name, value);
        }
    }
    Ok(with_version(ctx, builder))
}

/// The customer `id`; `None` when it does not exist or was deleted.
pub(crate) fn get(ctx: &Context, id: &str) -> Result<Option<Json>> {
    check_id(id)?;
    let response = with_version(ctx, http::get(customer_url(ctx, id))).send()?;
    if is_missing(&response) {
        return Ok(None);
    }
    let record = text(response.error_for_status_with(stripe_error)?)?;
    if is_deleted(&record)? {
        return Ok(None);
    }
    Ok(Some(record))
}

/// Creates or updates one customer; see the crate docs for the matching
/// rules.
pub(crate) fn upsert(ctx: &Context, request: &UpsertRequest) -> Result<UpsertOutcome> {
    let desired: Map<String, Value> = request
        .parse_record()
        .map_err(|_| Error::invalid_input("stripe: a customer record must be a JSON object"))?;
    match matched(ctx, &desired)? {
        Some(Match { id, current }) => update(ctx, &id, &current, &desired),
        None => create(ctx, &desired, &request.idempotency_key),
    }
}

/// The customer an upsert of `record` would update, without writing: the
/// same rule as [`upsert`], for a dry run's plan.
pub(crate) fn lookup(ctx: &Context, record: &str) -> Result<Option<Json>> {
    let desired: Map<String, Value> = serde_json::from_str(record)
        .map_err(|_| Error::invalid_input("stripe: a customer record must be a JSON object"))?;
    Ok(matched(ctx, &desired)?.map(|found| found.current))
}

/// The customer an upsert updates, with its id.
struct Match {
    id: String,
    current: Json,
}

/// The customer `desired` matches: by `id` when it has one (which must
/// exist: a record with an id only updates), else by exact `email` (a
/// conflict when several share it); `None` when the upsert creates.
fn matched(ctx: &Context, desired: &Map<String, Value>) -> Result<Option<Match>> {
    match desired.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if !id.is_empty() => {
            let Some(current) = get(ctx, id)? else {
                return Err(Error::not_found(format!(
                    "stripe: customer `{id}` does not exist or was deleted; a record with an `id` \
                     only updates (leave `id` out to create)"
                )));
            };
            return Ok(Some(Match { id: id.clone(), current }));
        }
        Some(_) => {
            return Err(Error::invalid_input(
                "stripe: `id` must be a customer id string such as \"cus_...\"",
            ));
        }
    }

    match desired.get("email") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(email)) if email.is_empty() => Ok(None),
        Some(Value::String(email)) => match find_by_email(ctx, email)? {
            Matches::None => Ok(None),
            Matches::One(current) => {
                let id = page::scalar_field(&current, "id")?
                    .ok_or_else(|| Error::fatal("stripe: a listed customer has no `id`"))?;
                Ok(Some(Match { id, current }))
            }
            Matches::Several { ids, more } => Err(Error::conflict(format!(
                "stripe: customers {}{} share the email `{email}`; Stripe does not keep emails \
                 unique, so the upsert will not guess: put the intended `id` in the record",
                ids.join(", "),
                if more { " and more" } else { "" },
            ))),
        },
        Some(_) => Err(Error::invalid_input("stripe: `email` must be a string")),
    }
}

/// Deletes the customer `id`, which Stripe cannot undo.
///
/// A GET comes first so that a customer deleted earlier (Stripe keeps
/// answering `deleted: true` for it) is reported as already absent, however
/// the DELETE of a deleted customer is answered.
pub(crate) fn remove(ctx: &Context, id: &str) -> Result<RemoveOutcome> {
    if get(ctx, id)?.is_none() {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    let response = with_version(ctx, http::delete(customer_url(ctx, id))).send()?;
    if is_missing(&response) {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    response.error_for_status_with(stripe_error)?;
    Ok(RemoveOutcome::Removed)
}

enum Matches {
    None,
    One(Json),
    Several { ids: Vec<String>, more: bool },
}

/// The customers whose email is exactly `email` (Stripe's filter is exact
/// and case-sensitive). Two are enough to know the match is ambiguous.
fn find_by_email(ctx: &Context, email: &str) -> Result<Matches> {
    let builder = http::get(ctx.url("/v1/customers")).query("email", email).query("limit", 2);
    let response = send(with_version(ctx, builder))?;
    let body: ListBody<'_> = response.json()?;
    Ok(match body.data.as_slice() {
        [] => Matches::None,
        [only] => Matches::One(only.get().to_owned()),
        several => Matches::Several {
            ids: several
                .iter()
                .map(|raw| page::scalar_field(raw.get(), "id").map(Option::unwrap_or_default))
                .collect::<Result<_>>()?,
            more: body.has_more,
        },
    })
}

fn create(ctx: &Context, desired: &Map<String, Value>, key: &str) -> Result<UpsertOutcome> {
    let body = Value::Object(diff::for_create(desired));
    let builder = http::post(ctx.url("/v1/customers"))
        .form(&body)
        // Stripe replays the first answer for a key it has seen, so a
        // retried or re-run create cannot make a second customer.
        .idempotency_key(key);
    let response = send(with_version(ctx, builder))?;
    Ok(UpsertOutcome::created(text(response)?))
}

fn update(
    ctx: &Context,
    id: &str,
    current: &str,
    desired: &Map<String, Value>,
) -> Result<UpsertOutcome> {
    let current_fields: Map<String, Value> = serde_json::from_str(current)
        .map_err(|e| Error::fatal(format!("stripe: customer `{id}` is not a JSON object: {e}")))?;
    let changes = diff::changes(desired, &current_fields).map_err(|refused| {
        Error::invalid_input(format!(
            "stripe: customer `{id}`: the record asks to clear `{}`, which Stripe cannot clear \
             (its API takes {} there and no empty value); give the value it should hold, or \
             leave the field out to keep Stripe's",
            refused.field, refused.takes
        ))
    })?;
    if changes.is_empty() {
        return Ok(UpsertOutcome::unchanged(current.to_owned()));
    }
    // No Idempotency-Key here: the upsert's key may already be spent on a
    // create that a crash hid from us, and Stripe rejects a key reused with
    // other parameters. Setting fields to fixed values is idempotent anyway.
    let builder = http::post(customer_url(ctx, id)).form(&Value::Object(changes)).idempotent(true);
    let response = with_version(ctx, builder).send()?;
    if is_missing(&response) {
        return Err(Error::not_found(format!(
            "stripe: customer `{id}` was deleted during the upsert"
        )));
    }
    Ok(UpsertOutcome::updated(text(response.error_for_status_with(stripe_error)?)?))
}

fn send(builder: RequestBuilder) -> Result<Response> {
    builder.send()?.error_for_status_with(stripe_error)
}

/// Pins the API version when the connection sets `api_version`.
fn with_version(ctx: &Context, builder: RequestBuilder) -> RequestBuilder {
    match ctx.setting("api_version") {
        Some(version) if !version.is_empty() => builder.header("Stripe-Version", version),
        _ => builder,
    }
}

fn customer_url(ctx: &Context, id: &str) -> String {
    ctx.url(&format!("/v1/customers/{}", query::encode_component(id)))
}

fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid_input("stripe: a customer id must not be empty"));
    }
    Ok(())
}

fn text(response: Response) -> Result<String> {
    String::from_utf8(response.body)
        .map_err(|e| Error::fatal(format!("stripe: the response body is not UTF-8: {e}")))
}

/// A retrieve of a deleted customer answers 200 with `deleted: true`.
fn is_deleted(record: &str) -> Result<bool> {
    #[derive(Deserialize)]
    struct Deleted {
        #[serde(default)]
        deleted: bool,
    }
    let parsed: Deleted = page::parse(record.as_bytes())?;
    Ok(parsed.deleted)
}

/// A 404 that Stripe itself sent about a missing object, as opposed to a
/// 404 from a wrong base URL, which must not read as "absent" (a sync would
/// then create duplicates).
pub(crate) fn is_missing(response: &Response) -> bool {
    response.status == 404
        && VendorError::parse(&response.body).is_some_and(|error| {
            error.code.as_deref() == Some("resource_missing")
                || error
                    .message
                    .as_deref()
                    .is_some_and(|message| message.starts_with("No such customer"))
        })
}

/// The SDK's status mapping, adjusted for Stripe:
///
/// - an `idempotency_error` (a key reused with other parameters) is a
///   conflict, not bad input;
/// - `Stripe-Should-Retry: true` makes any failure transient (a 409
///   `lock_timeout`, say) and `false` makes a 5xx fatal: Stripe knows
///   better than the status.
pub(crate) fn stripe_error(response: &Response) -> Error {
    let error = error::from_response(VENDOR, response);
    let kind = VendorError::parse(&response.body).and_then(|vendor| vendor.kind);
    if kind.as_deref() == Some("idempotency_error") {
        return Error::Conflict(error.message().to_owned());
    }
    match (response.header("stripe-should-retry"), &error) {
        (Some("true"), error) if !error.is_retryable() => {
            Error::Transient(error.message().to_owned())
        }
        (Some("false"), Error::Transient(message)) => Error::Fatal(message.clone()),
        _ => error,
    }
}
