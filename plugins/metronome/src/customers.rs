//! The `customers` resource: list, get, create, the per-field update
//! endpoints, and archive.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use weft_connector_sdk::error::{self, VendorError};
use weft_connector_sdk::http::{self, RequestBuilder, Response};
use weft_connector_sdk::same;
use weft_connector_sdk::{
    Context, Error, Json, ListRequest, Page, RemoveOutcome, Result, UpsertOutcome, UpsertRequest,
    log, page, query,
};

use crate::MAX_PAGE_SIZE;

const VENDOR: &str = "metronome";

/// List parameters the connector owns; a filter may not set them.
const PAGING_PARAMETERS: &[&str] = &["limit", "next_page"];

/// The filters `GET /customers` takes.
const FILTERS: &[&str] = &["ingest_alias", "customer_ids", "only_archived"];

/// A `{"data": [...], "next_page": ...}` list envelope, borrowed.
#[derive(Deserialize)]
struct ListBody<'a> {
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
    #[serde(default)]
    next_page: Option<String>,
}

/// A `{"data": {...}}` single-record envelope, borrowed.
#[derive(Deserialize)]
struct DataBody<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

/// Reads one page of customers.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let mut filters = Vec::new();
    if let Some(filter) = request.filter::<Value>()? {
        let Value::Object(filter) = filter else {
            return Err(Error::invalid_input(
                "metronome: the customers filter must be a JSON object such as \
                 {\"ingest_alias\": \"...\"}",
            ));
        };
        for (name, value) in filter {
            if PAGING_PARAMETERS.contains(&name.as_str()) {
                return Err(Error::invalid_input(format!(
                    "metronome: the filter may not set `{name}`; the engine pages by itself"
                )));
            }
            if !FILTERS.contains(&name.as_str()) {
                return Err(Error::invalid_input(format!(
                    "metronome: GET /customers cannot filter on `{name}`; use one of {}",
                    FILTERS.join(", ")
                )));
            }
            match value {
                Value::Array(items) => {
                    for item in items {
                        filters.push((name.clone(), scalar(&name, &item)?));
                    }
                }
                other => filters.push((name.clone(), scalar(&name, &other)?)),
            }
        }
    }
    list_page(ctx.url("/customers"), request, filters)
}

/// One page of a Metronome list at `url`: `limit`, `next_page` from the
/// cursor, then `filters`. Shared with `customer-plans`.
pub(crate) fn list_page(
    url: String,
    request: &ListRequest,
    filters: Vec<(String, String)>,
) -> Result<Page> {
    let limit = request.page_size.clamp(1, MAX_PAGE_SIZE);
    let mut builder = http::get(url).query("limit", limit);
    if let Some(cursor) = request.cursor.as_deref() {
        builder = builder.query("next_page", cursor);
    }
    for (name, value) in &filters {
        builder = builder.query(name, value);
    }
    let response = send(builder)?;
    let body: ListBody<'_> = response.json()?;
    let next_cursor = body.next_page.filter(|cursor| !cursor.is_empty());
    Ok(Page::new(page::raw_records(&body.data), next_cursor))
}

fn scalar(name: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(text) => Ok(text.clone()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Number(number) => Ok(number.to_string()),
        _ => Err(Error::invalid_input(format!(
            "metronome: the filter `{name}` takes a string, a boolean or a list of strings"
        ))),
    }
}

/// The customer `id`; `None` when it does not exist or is archived.
pub(crate) fn get(ctx: &Context, id: &str) -> Result<Option<Json>> {
    if id.is_empty() {
        return Err(Error::invalid_input("metronome: a customer id must not be empty"));
    }
    if !is_uuid(id) {
        // Metronome assigns UUIDs and answers 400 for anything else: no
        // such customer can exist, which is what `get` reports.
        return Ok(None);
    }
    let response = http::get(customer_url(ctx, id, "")).send()?;
    if is_missing(&response) {
        return Ok(None);
    }
    let record = data(&response.error_for_status_with(metronome_error)?)?;
    let archived = match archived_at(&record)? {
        Some(archived) => archived,
        // The v1 record does not say whether it is archived, and Metronome
        // still serves archived customers by id: the archived-only list does.
        None => is_archived_by_list(ctx, id)?,
    };
    Ok((!archived).then_some(record))
}

/// Creates or updates one customer; see the crate docs for the matching
/// rules.
pub(crate) fn upsert(ctx: &Context, request: &UpsertRequest) -> Result<UpsertOutcome> {
    let desired: Map<String, Value> = request
        .parse_record()
        .map_err(|_| Error::invalid_input("metronome: a customer record must be a JSON object"))?;
    let wanted = Wanted::read(&desired)?;
    match matched(ctx, &wanted)? {
        Some(customer) => update(ctx, &customer, &desired, &wanted),
        None => create(ctx, &desired, &wanted, &request.idempotency_key),
    }
}

/// The customer an upsert of `record` would update, without writing: the
/// same rule and the same alias checks as [`upsert`], for a dry run's plan.
pub(crate) fn lookup(ctx: &Context, record: &str) -> Result<Option<Json>> {
    let desired: Map<String, Value> = serde_json::from_str(record)
        .map_err(|_| Error::invalid_input("metronome: a customer record must be a JSON object"))?;
    let wanted = Wanted::read(&desired)?;
    match matched(ctx, &wanted)? {
        Some(customer) => Ok(Some(customer.record)),
        // The upsert would create, and refuses to without a name.
        None => create_name(&desired).map(|_| None),
    }
}

/// The customer `wanted` means (`None`: the upsert creates one), once every
/// alias the write would claim is known to be free or already its own.
fn matched(ctx: &Context, wanted: &Wanted) -> Result<Option<Customer>> {
    let mut owners = Owners::default();

    // Which customer the record means.
    let target = if let Some(id) = &wanted.id {
        let current = get(ctx, id)?.ok_or_else(|| {
            Error::not_found(format!(
                "metronome: customer `{id}` does not exist or is archived; a record with an \
                 `id` only updates (leave `id` out to create)"
            ))
        })?;
        Some(Customer::read(current)?)
    } else if let Some(external_id) = &wanted.external_id {
        // The external id is the key when given: not found means a new
        // customer, whose aliases must then be free.
        owners.owner(ctx, external_id)?
    } else {
        let mut found: Option<Customer> = None;
        for alias in &wanted.aliases {
            if let Some(owner) = owners.owner(ctx, alias)? {
                match &found {
                    Some(first) if first.id != owner.id => {
                        return Err(Error::conflict(format!(
                            "metronome: the ingest aliases of the record belong to two \
                             customers, `{}` and `{}`; put the intended `id` in the record",
                            first.id, owner.id
                        )));
                    }
                    _ => found = Some(owner),
                }
            }
        }
        found
    };

    // Every alias the write would claim must be free or already ours, and
    // that is settled before anything is written.
    let held: BTreeSet<&str> = target
        .as_ref()
        .map(|customer| customer.aliases.iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut claimed: Vec<&str> = wanted.aliases.iter().map(String::as_str).collect();
    if target.is_none()
        && let Some(external_id) = &wanted.external_id
    {
        claimed.push(external_id);
    }
    for alias in claimed {
        if held.contains(alias) {
            continue;
        }
        if let Some(owner) = owners.owner(ctx, alias)?
            && Some(owner.id.as_str()) != target.as_ref().map(|customer| customer.id.as_str())
        {
            return Err(Error::conflict(format!(
                "metronome: ingest alias `{alias}` already belongs to customer `{}`; aliases are \
                 unique account-wide, so nothing was written",
                owner.id
            )));
        }
    }

    Ok(target)
}

/// Archives the customer `id`, which Metronome cannot undo.
pub(crate) fn remove(ctx: &Context, id: &str) -> Result<RemoveOutcome> {
    if get(ctx, id)?.is_none() {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    // Archiving twice has the effect of archiving once.
    let response = http::post(ctx.url("/customers/archive"))
        .json(&json!({ "id": id }))
        .idempotent(true)
        .send()?;
    if is_missing(&response) {
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    if response.status == 400 && is_archived_by_list(ctx, id)? {
        // Metronome refuses to archive twice, and its customer record need
        // not say it is archived: the archived list does.
        return Ok(RemoveOutcome::AlreadyAbsent);
    }
    response.error_for_status_with(metronome_error)?;
    Ok(RemoveOutcome::Removed)
}

/// Whether `id` has the shape of a UUID (`8-4-4-4-12` hex digits), the
/// only ids Metronome assigns.
pub(crate) fn is_uuid(id: &str) -> bool {
    let groups: Vec<&str> = id.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(group, len)| group.len() == len && group.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether the archived-only list holds the customer `id`.
fn is_archived_by_list(ctx: &Context, id: &str) -> Result<bool> {
    let builder = http::get(ctx.url("/customers"))
        .query("customer_ids", id)
        .query("only_archived", true)
        .query("limit", 1);
    let response = send(builder)?;
    let body: ListBody<'_> = response.json()?;
    Ok(!body.data.is_empty())
}

/// The matching keys and changeable fields of a desired record.
struct Wanted {
    id: Option<String>,
    external_id: Option<String>,
    aliases: Vec<String>,
    /// Whether the record names `ingest_aliases` at all (an empty list
    /// clears them; a missing one leaves them).
    names_aliases: bool,
}

impl Wanted {
    fn read(desired: &Map<String, Value>) -> Result<Self> {
        let text = |field: &str| -> Result<Option<String>> {
            match desired.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(text)) if text.is_empty() => Ok(None),
                Some(Value::String(text)) => Ok(Some(text.clone())),
                Some(_) => {
                    Err(Error::invalid_input(format!("metronome: `{field}` must be a string")))
                }
            }
        };
        let (aliases, names_aliases) = match desired.get("ingest_aliases") {
            None | Some(Value::Null) => (Vec::new(), false),
            Some(Value::Array(items)) => (
                items
                    .iter()
                    .map(|item| match item {
                        Value::String(alias) if !alias.is_empty() => Ok(alias.clone()),
                        _ => Err(Error::invalid_input(
                            "metronome: `ingest_aliases` must be a list of non-empty strings",
                        )),
                    })
                    .collect::<Result<_>>()?,
                true,
            ),
            Some(_) => {
                return Err(Error::invalid_input(
                    "metronome: `ingest_aliases` must be a list of strings",
                ));
            }
        };
        Ok(Self { id: text("id")?, external_id: text("external_id")?, aliases, names_aliases })
    }
}

/// A customer as Metronome holds it: its raw record and what matching
/// needs from it.
#[derive(Clone)]
struct Customer {
    id: String,
    aliases: Vec<String>,
    record: Json,
}

impl Customer {
    fn read(record: Json) -> Result<Self> {
        #[derive(Deserialize)]
        struct Keys {
            id: String,
            #[serde(default)]
            ingest_aliases: Option<Vec<String>>,
        }
        let keys: Keys = page::parse(record.as_bytes()).map_err(|_| {
            Error::fatal("metronome: a customer record has no `id` or malformed `ingest_aliases`")
        })?;
        Ok(Self { id: keys.id, aliases: keys.ingest_aliases.unwrap_or_default(), record })
    }
}

/// Which customer holds an ingest alias, asked once per alias per upsert.
#[derive(Default)]
struct Owners {
    known: Vec<(String, Option<Customer>)>,
}

impl Owners {
    fn owner(&mut self, ctx: &Context, alias: &str) -> Result<Option<Customer>> {
        if let Some((_, owner)) = self.known.iter().find(|(known, _)| known == alias) {
            return Ok(owner.clone());
        }
        let builder =
            http::get(ctx.url("/customers")).query("ingest_alias", alias).query("limit", 2);
        let response = send(builder)?;
        let body: ListBody<'_> = response.json()?;
        let owner = match body.data.as_slice() {
            [] => None,
            [only, rest @ ..] => {
                if !rest.is_empty() {
                    log::warn(&format!(
                        "metronome: {} customers answer the ingest alias `{alias}`; using the first",
                        rest.len() + 1
                    ));
                }
                Some(Customer::read(only.get().to_owned())?)
            }
        };
        self.known.push((alias.to_owned(), owner.clone()));
        Ok(owner)
    }
}

/// The `name` a create needs.
fn create_name(desired: &Map<String, Value>) -> Result<String> {
    match desired.get("name") {
        Some(Value::String(name)) if !name.is_empty() => Ok(name.clone()),
        _ => Err(Error::invalid_input("metronome: creating a customer needs a `name`")),
    }
}

fn create(
    ctx: &Context,
    desired: &Map<String, Value>,
    wanted: &Wanted,
    key: &str,
) -> Result<UpsertOutcome> {
    let mut body = Map::new();
    body.insert("name".into(), Value::String(create_name(desired)?));
    if let Some(external_id) = &wanted.external_id {
        body.insert("external_id".into(), Value::String(external_id.clone()));
    }
    if wanted.names_aliases {
        body.insert("ingest_aliases".into(), json!(wanted.aliases));
    }
    for field in ["billing_config", "custom_fields"] {
        if let Some(value) = desired.get(field).filter(|value| !value.is_null()) {
            body.insert(field.into(), value.clone());
        }
    }
    // The key travels as `Idempotency-Key`; the host may also retry the
    // POST when an external id or alias makes a second create fail with
    // 409 instead of making a second customer.
    let guarded = wanted.external_id.is_some() || !wanted.aliases.is_empty();
    let response = send(
        http::post(ctx.url("/customers"))
            .json(&Value::Object(body))
            .header("Idempotency-Key", key)
            .idempotent(guarded),
    )?;
    let created = Customer::read(data(&response)?)?;
    let config = salesforce_change(desired, None);
    if let Some(salesforce_account_id) = config {
        update_config(ctx, &created.id, &salesforce_account_id)?;
        let record = get(ctx, &created.id)?.ok_or_else(|| {
            Error::not_found(format!(
                "metronome: customer `{}` vanished right after its creation",
                created.id
            ))
        })?;
        return Ok(UpsertOutcome::created(record));
    }
    Ok(UpsertOutcome::created(created.record))
}

fn update(
    ctx: &Context,
    customer: &Customer,
    desired: &Map<String, Value>,
    wanted: &Wanted,
) -> Result<UpsertOutcome> {
    let id = customer.id.as_str();
    let current: Map<String, Value> = serde_json::from_str(&customer.record).map_err(|e| {
        Error::fatal(format!("metronome: customer `{id}` is not a JSON object: {e}"))
    })?;

    // Refusals first, so that nothing is half written.
    if let Some(external_id) = &wanted.external_id {
        let have = current.get("external_id").and_then(Value::as_str);
        if have.is_some_and(|have| !have.is_empty() && have != external_id) {
            return Err(Error::unsupported(format!(
                "metronome: customer `{id}` has external_id `{}`; Metronome cannot change an \
                 external_id",
                have.unwrap_or_default()
            )));
        }
    }
    if let Some(Value::Object(fields)) = desired.get("custom_fields") {
        let had = current.get("custom_fields").and_then(Value::as_object);
        let differing: Vec<&str> = fields
            .iter()
            .filter(|(key, value)| !same::holds(value, had.and_then(|had| had.get(key.as_str()))))
            .map(|(key, _)| key.as_str())
            .collect();
        if !differing.is_empty() {
            return Err(Error::unsupported(format!(
                "metronome: custom fields {} of customer `{id}` differ, and the v1 customer API \
                 has no endpoint to change them",
                differing.join(", ")
            )));
        }
    }
    if desired.get("billing_config").is_some_and(|value| !value.is_null()) {
        log::warn(&format!(
            "metronome: `billing_config` is set on create only; customer `{id}` keeps its own"
        ));
    }

    let name = match desired.get("name") {
        Some(Value::String(name)) if !name.is_empty() => {
            (current.get("name").and_then(Value::as_str) != Some(name)).then(|| name.clone())
        }
        _ => None,
    };
    let aliases = wanted.names_aliases.then_some(&wanted.aliases).filter(|aliases| {
        let want: BTreeSet<&str> = aliases.iter().map(String::as_str).collect();
        let have: BTreeSet<&str> = customer.aliases.iter().map(String::as_str).collect();
        want != have
    });
    let config = salesforce_change(desired, current.get("customer_config"));

    if name.is_none() && aliases.is_none() && config.is_none() {
        return Ok(UpsertOutcome::unchanged(customer.record.clone()));
    }
    if let Some(name) = name {
        send(
            http::post(customer_url(ctx, id, "/setName"))
                .json(&json!({ "name": name }))
                .idempotent(true),
        )?;
    }
    if let Some(aliases) = aliases {
        send(
            http::post(customer_url(ctx, id, "/setIngestAliases"))
                .json(&json!({ "ingest_aliases": aliases }))
                .idempotent(true),
        )?;
    }
    if let Some(salesforce_account_id) = config {
        update_config(ctx, id, &salesforce_account_id)?;
    }
    let record = get(ctx, id)?.ok_or_else(|| {
        Error::not_found(format!("metronome: customer `{id}` was archived during the upsert"))
    })?;
    Ok(UpsertOutcome::updated(record))
}

/// The `salesforce_account_id` to set when the desired `customer_config`
/// names one that differs from `have`.
fn salesforce_change(desired: &Map<String, Value>, have: Option<&Value>) -> Option<Value> {
    let want = desired.get("customer_config")?.as_object()?.get("salesforce_account_id")?;
    let had =
        have.and_then(Value::as_object).and_then(|config| config.get("salesforce_account_id"));
    if have.is_none() && want.is_null() {
        return None;
    }
    (!same::holds(want, had)).then(|| want.clone())
}

fn update_config(ctx: &Context, id: &str, salesforce_account_id: &Value) -> Result<()> {
    send(
        http::post(customer_url(ctx, id, "/updateConfig"))
            .json(&json!({ "salesforce_account_id": salesforce_account_id }))
            .idempotent(true),
    )?;
    Ok(())
}

fn send(builder: RequestBuilder) -> Result<Response> {
    builder.send()?.error_for_status_with(metronome_error)
}

fn customer_url(ctx: &Context, id: &str, suffix: &str) -> String {
    ctx.url(&format!("/customers/{}{suffix}", query::encode_component(id)))
}

/// The record inside a `{"data": ...}` answer, as Metronome's text.
fn data(response: &Response) -> Result<Json> {
    let body: DataBody<'_> = response.json()?;
    Ok(body.data.get().to_owned())
}

/// Whether the record is archived, when it says (`archived_at`); `None`
/// when it does not carry the field.
fn archived_at(record: &str) -> Result<Option<bool>> {
    #[derive(Deserialize)]
    struct Archived {
        // `Some(Null)` for `"archived_at": null`, `None` when absent.
        #[serde(default, deserialize_with = "present")]
        archived_at: Option<Value>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> core::result::Result<Option<Value>, D::Error> {
        Value::deserialize(deserializer).map(Some)
    }
    let parsed: Archived = page::parse(record.as_bytes())?;
    Ok(parsed.archived_at.map(|at| !at.is_null()))
}

/// A 404 that Metronome sent (a `{"message"}` body), as opposed to one
/// from a wrong base URL, which must not read as "absent".
fn is_missing(response: &Response) -> bool {
    response.status == 404 && VendorError::parse(&response.body).is_some()
}

/// The SDK's status mapping, naming Metronome.
pub(crate) fn metronome_error(response: &Response) -> Error {
    error::from_response(VENDOR, response)
}
