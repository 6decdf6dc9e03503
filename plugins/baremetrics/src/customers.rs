//! The `customers` resource: `/v1/{source_id}/customers` list, show,
//! create, update (a merged PUT) and delete.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use weft_connector_sdk::http::{self, Response};
use weft_connector_sdk::{
    Context, Error, Json, ListRequest, Page, RemoveOutcome, Result, UpsertOutcome, UpsertRequest,
    query,
};

use weft_connector_sdk::same;

use crate::created;
use crate::paging::{self, VENDOR};
use crate::sources;

/// Fields Baremetrics computes or sets itself: never compared or sent.
pub(crate) const READ_ONLY: &[&str] = &[
    "oid",
    "id",
    "source",
    "source_id",
    "ltv",
    "current_mrr",
    "current_arr",
    "current_plans",
    "display_image",
    "display_name",
    "is_active",
    "is_canceled",
];

/// The fields a PUT always carries, merged from both copies: Baremetrics
/// clears the ones a PUT body leaves out (`attributes` too, merged apart).
pub(crate) const REPLACED: &[&str] = &["name", "email", "notes"];

/// Reads one page of the source's customers.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let filters = paging::filters(request, "customers", &["search"])?;
    paging::list_page(ctx, request, "customers", &filters)
}

/// The customer with `oid` in the source; `None` when it does not exist.
pub(crate) fn get(ctx: &Context, oid: &str) -> Result<Option<Json>> {
    check_oid(oid)?;
    let source_id = sources::for_reading(ctx)?;
    fetch(ctx, &source_id, oid)
}

/// Creates or updates one customer, matching on `oid`.
pub(crate) fn upsert(ctx: &Context, request: &UpsertRequest) -> Result<UpsertOutcome> {
    let mut desired: Map<String, Value> = request.parse_record().map_err(|_| {
        Error::invalid_input("baremetrics: a customer record must be a JSON object")
    })?;
    if let Some(created) = desired.get_mut("created") {
        *created = created::normalize(created)
            .map_err(|why| Error::invalid_input(format!("baremetrics: {why}")))?;
    }
    let oid = match desired.get("oid") {
        Some(Value::String(oid)) if !oid.is_empty() => oid.clone(),
        Some(Value::Number(oid)) => oid.to_string(),
        _ => {
            return Err(Error::invalid_input(
                "baremetrics: a customer record needs an `oid` (your own id for the customer)",
            ));
        }
    };
    let source_id = sources::for_writing(ctx)?;
    match fetch(ctx, &source_id, &oid)? {
        Some(current) => update(ctx, &source_id, &oid, &current, &desired),
        None => create(ctx, &source_id, &oid, &desired),
    }
}

/// Deletes the customer `oid`, with its subscriptions and charges; it
/// cannot be undone.
pub(crate) fn remove(ctx: &Context, oid: &str) -> Result<RemoveOutcome> {
    check_oid(oid)?;
    let source_id = sources::for_writing(ctx)?;
    if fetch(ctx, &source_id, oid)?.is_none() {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    let response = http::delete(customer_url(ctx, &source_id, oid)).send()?;
    if is_missing(&response) {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    response.error_for_status(VENDOR)?;
    Ok(RemoveOutcome::Removed)
}

fn fetch(ctx: &Context, source_id: &str, oid: &str) -> Result<Option<Json>> {
    let response = http::get(customer_url(ctx, source_id, oid)).send()?;
    if is_missing(&response) {
        return Ok(None);
    }
    let response = response.error_for_status(VENDOR)?;
    customer(&response).map(Some)
}

fn create(
    ctx: &Context,
    source_id: &str,
    oid: &str,
    desired: &Map<String, Value>,
) -> Result<UpsertOutcome> {
    let body = for_create(oid, desired);
    // Not marked idempotent: a POST replayed after a lost answer would fail
    // on the taken `oid`; the engine's own retry of the upsert reads the
    // customer first and finds it instead.
    let response =
        http::post(ctx.url(&format!("/v1/{}/customers", query::encode_component(source_id))))
            .json(&Value::Object(body))
            .send()?
            .error_for_status(VENDOR)?;
    Ok(UpsertOutcome::created(customer(&response)?))
}

fn update(
    ctx: &Context,
    source_id: &str,
    oid: &str,
    current: &str,
    desired: &Map<String, Value>,
) -> Result<UpsertOutcome> {
    let current_fields: Map<String, Value> = serde_json::from_str(current).map_err(|e| {
        Error::fatal(format!("baremetrics: customer `{oid}` is not a JSON object: {e}"))
    })?;
    let Some(body) = merged_put(desired, &current_fields) else {
        return Ok(UpsertOutcome::unchanged(current.to_owned()));
    };
    let response =
        http::put(customer_url(ctx, source_id, oid)).json(&Value::Object(body)).send()?;
    if is_missing(&response) {
        return Err(Error::not_found(format!(
            "baremetrics: customer `{oid}` was deleted during the upsert"
        )));
    }
    let response = response.error_for_status(VENDOR)?;
    Ok(UpsertOutcome::updated(customer(&response)?))
}

/// The body of a create: `oid` and the desired writable, non-null fields.
pub(crate) fn for_create(oid: &str, desired: &Map<String, Value>) -> Map<String, Value> {
    let mut body: Map<String, Value> = desired
        .iter()
        .filter(|(key, value)| !READ_ONLY.contains(&key.as_str()) && !value.is_null())
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    body.insert("oid".into(), Value::String(oid.to_owned()));
    body
}

/// The whole PUT body, the desired fields laid over the current ones; `None`
/// when every desired field already matches.
pub(crate) fn merged_put(
    desired: &Map<String, Value>,
    current: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let differs = desired.iter().any(|(key, want)| {
        !READ_ONLY.contains(&key.as_str()) && !same::holds(want, current.get(key.as_str()))
    });
    if !differs {
        return None;
    }
    let mut body = Map::new();
    // What a PUT replaces is sent whole: the desired value, else the
    // current one. A blank value is sent as "" only when something must be
    // cleared (the spec's strings are not nullable).
    for &field in REPLACED {
        let value = desired.get(field).or_else(|| current.get(field)).unwrap_or(&Value::Null);
        if !value.is_null() {
            body.insert(field.into(), value.clone());
        } else if !same::is_blank(current.get(field)) {
            body.insert(field.into(), Value::String(String::new()));
        }
    }
    // Attributes are replaced too: the current ones with the desired keys
    // laid over them.
    let attributes = match desired.get("attributes") {
        Some(want) => Some(merged_attributes(want, current.get("attributes"))),
        None => current.get("attributes").filter(|had| !same::is_blank(Some(*had))).cloned(),
    };
    if let Some(attributes) = attributes {
        body.insert("attributes".into(), attributes);
    }
    for (key, want) in desired {
        let name = key.as_str();
        if READ_ONLY.contains(&name) || REPLACED.contains(&name) || name == "attributes" {
            continue;
        }
        if !want.is_null() {
            body.insert(key.clone(), want.clone());
        }
    }
    Some(body)
}

fn merged_attributes(want: &Value, have: Option<&Value>) -> Value {
    let mut merged = match have {
        Some(Value::Object(had)) => had.clone(),
        _ => Map::new(),
    };
    match want {
        Value::Object(wanted) => {
            for (key, value) in wanted {
                if value.is_null() {
                    merged.remove(key);
                } else {
                    merged.insert(key.clone(), value.clone());
                }
            }
            Value::Object(merged)
        }
        Value::Null => Value::Object(Map::new()),
        other => other.clone(),
    }
}

fn customer_url(ctx: &Context, source_id: &str, oid: &str) -> String {
    ctx.url(&format!(
        "/v1/{}/customers/{}",
        query::encode_component(source_id),
        query::encode_component(oid)
    ))
}

fn check_oid(oid: &str) -> Result<()> {
    if oid.is_empty() {
        return Err(Error::invalid_input("baremetrics: a customer oid must not be empty"));
    }
    Ok(())
}

/// The record in a `{"customer": {...}}` answer, as Baremetrics' text.
fn customer(response: &Response) -> Result<Json> {
    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        customer: &'a RawValue,
    }
    let body: Body<'_> = response.json()?;
    Ok(body.customer.get().to_owned())
}

/// A 404 with a JSON body is Baremetrics saying the customer is not there;
/// one without (a wrong base URL) must not read as "absent".
fn is_missing(response: &Response) -> bool {
    response.status == 404
        && serde_json::from_slice::<Value>(&response.body).is_ok_and(|body| body.is_object())
}
