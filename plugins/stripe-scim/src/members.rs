//! The `team-members` resource: SCIM 2.0 `/scim/v2/Users`.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use weft_connector_sdk::error::{self, VendorError};
use weft_connector_sdk::http::{self, RequestBuilder, Response};
use weft_connector_sdk::same;
use weft_connector_sdk::{
    Context, Error, Json, ListRequest, Page, RemoveOutcome, Result, UpsertOutcome, UpsertRequest,
    page, query,
};

const VENDOR: &str = "stripe-scim";

/// The largest `count` asked for; Stripe publishes none, and 100 is what
/// SCIM servers commonly serve.
pub(crate) const MAX_PAGE_SIZE: u32 = 100;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const CONTENT_TYPE: &str = "application/scim+json";

/// Attributes the server owns: never compared or sent.
const SERVER_OWNED: &[&str] = &["id", "meta", "schemas"];

/// A SCIM list response, borrowed from the body.
#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(rename = "totalResults", default)]
    total_results: u64,
    #[serde(rename = "startIndex", default)]
    start_index: Option<u64>,
    #[serde(rename = "Resources", borrow, default)]
    resources: Vec<&'a RawValue>,
}

/// Reads one page; the cursor is the next `startIndex`.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let start: u64 = match request.cursor.as_deref() {
        Some(cursor) => cursor.parse().map_err(|_| {
            Error::invalid_input(format!(
                "stripe-scim: the cursor `{cursor}` is not a SCIM startIndex"
            ))
        })?,
        None => 1,
    };
    let count = request.page_size.clamp(1, MAX_PAGE_SIZE);
    let mut builder = users(ctx).query("startIndex", start).query("count", count);
    if let Some(filter) = filter(request)? {
        builder = builder.query("filter", filter);
    }
    let response = send(builder)?;
    let body: ListBody<'_> = response.json()?;
    let served_from = body.start_index.unwrap_or(start);
    let next = served_from + body.resources.len() as u64;
    let next_cursor =
        (!body.resources.is_empty() && next <= body.total_results).then(|| next.to_string());
    Ok(Page::new(page::raw_records(&body.resources), next_cursor))
}

fn filter(request: &ListRequest) -> Result<Option<String>> {
    let Some(filter) = request.filter::<Value>()? else {
        return Ok(None);
    };
    let Value::Object(filter) = filter else {
        return Err(Error::invalid_input(
            "stripe-scim: the team-members filter must be a JSON object such as \
             {\"userName\": \"...\"}",
        ));
    };
    let mut out = None;
    for (key, value) in &filter {
        out = Some(match (key.as_str(), value) {
            ("userName", Value::String(text)) => user_name_filter(text),
            ("filter", Value::String(text)) => text.clone(),
            ("active", Value::Bool(active)) => format!("active eq {active}"),
            ("userName" | "filter", _) => {
                return Err(Error::invalid_input(format!(
                    "stripe-scim: the filter `{key}` must be a string"
                )));
            }
            ("active", _) => {
                return Err(Error::invalid_input(
                    "stripe-scim: the filter `active` must be true or false",
                ));
            }
            (other, _) => {
                return Err(Error::invalid_input(format!(
                    "stripe-scim: cannot filter on `{other}`; use `userName`, `active` or a SCIM \
                     `filter`"
                )));
            }
        });
    }
    if filter.len() > 1 {
        return Err(Error::invalid_input(
            "stripe-scim: give one of `userName`, `active` or `filter`, not several",
        ));
    }
    Ok(out)
}

/// `userName eq "..."`, with the string escaped as a JSON string (what
/// SCIM filter literals are).
fn user_name_filter(user_name: &str) -> String {
    format!("userName eq {}", Value::String(user_name.to_owned()))
}

/// The member `id`; `None` when there is none or it is deactivated (what
/// `remove` does), like a deleted record.
pub(crate) fn get(ctx: &Context, id: &str) -> Result<Option<Json>> {
    match fetch(ctx, id)? {
        Some(record) if !is_active(&record)? => Ok(None),
        found => Ok(found),
    }
}

/// The member `id`, active or not.
fn fetch(ctx: &Context, id: &str) -> Result<Option<Json>> {
    if id.is_empty() {
        return Err(Error::invalid_input("stripe-scim: a team member id must not be empty"));
    }
    let response = http::get(user_url(ctx, id)).send()?;
    if is_missing(&response) {
        return Ok(None);
    }
    Ok(Some(text(response.error_for_status_with(scim_error)?)?))
}

/// Whether a member is active; SCIM's default when `active` is left out.
fn is_active(record: &str) -> Result<bool> {
    #[derive(Deserialize)]
    struct Active {
        #[serde(default)]
        active: Option<bool>,
    }
    let state: Active = page::parse(record.as_bytes())?;
    Ok(state.active != Some(false))
}

/// Creates or updates one member; see the crate docs for the rules.
pub(crate) fn upsert(ctx: &Context, request: &UpsertRequest) -> Result<UpsertOutcome> {
    let desired = record(&request.record)?;
    match matched(ctx, &desired)? {
        Some((id, current)) => update(ctx, &id, &current, &desired),
        None => create(ctx, &desired),
    }
}

/// The member an upsert of `text` would update, without writing: the same
/// rule as [`upsert`], for a dry run's plan.
pub(crate) fn lookup(ctx: &Context, text: &str) -> Result<Option<Json>> {
    Ok(matched(ctx, &record(text)?)?.map(|(_, current)| current))
}

fn record(text: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(text)
        .map_err(|_| Error::invalid_input("stripe-scim: a team member must be a JSON object"))
}

/// The member `desired` means, with its id: by `id` (which must exist; a
/// deactivated member too, as an upsert is how one comes back), else by
/// `userName` (required then; several answering it are a conflict). `None`
/// when the upsert creates.
fn matched(ctx: &Context, desired: &Map<String, Value>) -> Result<Option<(String, Json)>> {
    match desired.get("id") {
        None | Some(Value::Null) => {}
        Some(Value::String(id)) if !id.is_empty() => {
            let current = fetch(ctx, id)?.ok_or_else(|| {
                Error::not_found(format!(
                    "stripe-scim: team member `{id}` does not exist; a record with an `id` only \
                     updates (leave `id` out to match on userName)"
                ))
            })?;
            return Ok(Some((id.clone(), current)));
        }
        Some(_) => {
            return Err(Error::invalid_input("stripe-scim: `id` must be a SCIM user id string"));
        }
    }
    let user_name = match desired.get("userName") {
        Some(Value::String(name)) if !name.is_empty() => name.as_str(),
        _ => {
            return Err(Error::invalid_input(
                "stripe-scim: a team member without `id` needs a `userName` (the SSO login, \
                 usually the email)",
            ));
        }
    };
    let builder = users(ctx).query("filter", user_name_filter(user_name)).query("count", 2);
    let response = send(builder)?;
    let body: ListBody<'_> = response.json()?;
    match body.resources.as_slice() {
        [] => Ok(None),
        [only] => {
            let current = only.get().to_owned();
            let id = page::scalar_field(&current, "id")?
                .ok_or_else(|| Error::fatal("stripe-scim: a listed team member has no `id`"))?;
            Ok(Some((id, current)))
        }
        several => Err(Error::conflict(format!(
            "stripe-scim: {} team members answer userName `{user_name}`; put the intended `id` \
             in the record",
            several.len()
        ))),
    }
}

/// Deactivates the member `id` (`active: false`); reversible.
pub(crate) fn remove(ctx: &Context, id: &str) -> Result<RemoveOutcome> {
    if get(ctx, id)?.is_none() {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    let operations = vec![json!({"op": "replace", "path": "active", "value": false})];
    let response = patch(ctx, id, operations)?;
    if is_missing(&response) {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    response.error_for_status_with(scim_error)?;
    Ok(RemoveOutcome::Removed)
}

fn create(ctx: &Context, desired: &Map<String, Value>) -> Result<UpsertOutcome> {
    let mut body: Map<String, Value> = desired
        .iter()
        .filter(|(key, value)| !SERVER_OWNED.contains(&key.as_str()) && !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    body.insert("schemas".into(), json!([USER_SCHEMA]));
    let response = send(scim_body(users_post(ctx), &Value::Object(body))?)?;
    Ok(UpsertOutcome::created(text(response)?))
}

fn update(
    ctx: &Context,
    id: &str,
    current: &str,
    desired: &Map<String, Value>,
) -> Result<UpsertOutcome> {
    let current_fields: Map<String, Value> = serde_json::from_str(current).map_err(|e| {
        Error::fatal(format!("stripe-scim: team member `{id}` is not a JSON object: {e}"))
    })?;
    let operations = patch_operations(desired, &current_fields);
    if operations.is_empty() {
        return Ok(UpsertOutcome::unchanged(current.to_owned()));
    }
    let response = patch(ctx, id, operations)?;
    if is_missing(&response) {
        return Err(Error::not_found(format!(
            "stripe-scim: team member `{id}` was deleted during the upsert"
        )));
    }
    let response = response.error_for_status_with(scim_error)?;
    if response.body.is_empty() {
        // 204: the server kept the resource to itself; read it back.
        let record = fetch(ctx, id)?.ok_or_else(|| {
            Error::not_found(format!(
                "stripe-scim: team member `{id}` was deleted during the upsert"
            ))
        })?;
        return Ok(UpsertOutcome::updated(record));
    }
    Ok(UpsertOutcome::updated(text(response)?))
}

/// One `replace` operation per top-level attribute of `desired` that
/// differs from `current` (see the crate docs).
pub(crate) fn patch_operations(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Vec<Value> {
    desired
        .iter()
        .filter(|(key, _)| !SERVER_OWNED.contains(&key.as_str()))
        .filter(|(key, want)| {
            key.as_str() == "password" || !same::holds(want, current.get(key.as_str()))
        })
        .map(|(key, want)| json!({"op": "replace", "path": key, "value": want}))
        .collect()
}

fn patch(ctx: &Context, id: &str, operations: Vec<Value>) -> Result<Response> {
    let body = json!({"schemas": [PATCH_SCHEMA], "Operations": operations});
    // Replacing attributes with fixed values is idempotent.
    scim_body(http::patch(user_url(ctx, id)), &body)?.idempotent(true).send()
}

fn scim_body(builder: RequestBuilder, body: &Value) -> Result<RequestBuilder> {
    let bytes = serde_json::to_vec(body).map_err(|e| {
        Error::invalid_input(format!("stripe-scim: the body cannot be encoded: {e}"))
    })?;
    Ok(builder.body(bytes, CONTENT_TYPE).header("accept", CONTENT_TYPE))
}

fn users(ctx: &Context) -> RequestBuilder {
    http::get(ctx.url("/scim/v2/Users")).header("accept", CONTENT_TYPE)
}

fn users_post(ctx: &Context) -> RequestBuilder {
    http::post(ctx.url("/scim/v2/Users"))
}

fn user_url(ctx: &Context, id: &str) -> String {
    ctx.url(&format!("/scim/v2/Users/{}", query::encode_component(id)))
}

fn send(builder: RequestBuilder) -> Result<Response> {
    builder.send()?.error_for_status_with(scim_error)
}

fn text(response: Response) -> Result<String> {
    String::from_utf8(response.body)
        .map_err(|e| Error::fatal(format!("stripe-scim: the response body is not UTF-8: {e}")))
}

/// A 404 with a SCIM error body (or any readable error) is "no such
/// member"; one without is a wrong base URL and must not read as absent.
fn is_missing(response: &Response) -> bool {
    response.status == 404 && VendorError::parse(&response.body).is_some()
}

/// The SDK's mapping, adjusted by the SCIM `scimType`.
pub(crate) fn scim_error(response: &Response) -> Error {
    let error = error::from_response(VENDOR, response);
    let scim_type = VendorError::parse(&response.body).and_then(|vendor| vendor.kind);
    match scim_type.as_deref() {
        Some("uniqueness") => Error::Conflict(error.message().to_owned()),
        Some(
            "invalidFilter" | "invalidValue" | "invalidSyntax" | "mutability" | "invalidPath"
            | "noTarget",
        ) => Error::InvalidInput(error.message().to_owned()),
        _ => error,
    }
}
