//! Baremetrics' `page`/`per_page` lists, and the `subscriptions` resource.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_connector_sdk::http;
use weft_connector_sdk::{Context, Error, ListRequest, Page, Result, page, query};

use crate::sources;

pub(crate) const VENDOR: &str = "baremetrics";

/// Baremetrics serves at most 200 records per page.
pub(crate) const MAX_PAGE_SIZE: u32 = 200;

/// Where a list continues: the source it reads (so later pages skip
/// discovery) and the page Baremetrics should serve next.
#[derive(Serialize, Deserialize)]
struct Position {
    source_id: String,
    page: u64,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    has_more: Option<bool>,
    #[serde(default)]
    page: Option<u64>,
}

/// Lists subscriptions, optionally of one customer.
pub(crate) fn list_subscriptions(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let filters = filters(request, "subscriptions", &["customer_oid"])?;
    list_page(ctx, request, "subscriptions", &filters)
}

/// The filter as query pairs, each a string, each among `allowed`.
pub(crate) fn filters(
    request: &ListRequest,
    resource: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>> {
    let Some(filter) = request.filter::<Value>()? else {
        return Ok(Vec::new());
    };
    let Value::Object(filter) = filter else {
        return Err(Error::invalid_input(format!(
            "baremetrics: the `{resource}` filter must be a JSON object"
        )));
    };
    filter
        .into_iter()
        .map(|(name, value)| {
            if !allowed.contains(&name.as_str()) {
                return Err(Error::invalid_input(format!(
                    "baremetrics: `{resource}` cannot filter on `{name}`; only {}",
                    allowed.join(", ")
                )));
            }
            match value {
                Value::String(text) => Ok((name, text)),
                _ => Err(Error::invalid_input(format!(
                    "baremetrics: the filter `{name}` must be a string"
                ))),
            }
        })
        .collect()
}

/// One page of `/v1/{source_id}/{collection}`, whose records sit in the
/// body's `collection` array.
pub(crate) fn list_page(
    ctx: &Context,
    request: &ListRequest,
    collection: &str,
    filters: &[(String, String)],
) -> Result<Page> {
    let (source_id, page_number) = match request.cursor.as_deref() {
        Some(cursor) => {
            let position: Position = page::decode_cursor(cursor)?;
            (position.source_id, Some(position.page))
        }
        None => (sources::for_reading(ctx)?, None),
    };
    let per_page = request.page_size.clamp(1, MAX_PAGE_SIZE);
    let url = ctx.url(&format!("/v1/{}/{collection}", query::encode_component(&source_id)));
    let mut builder = http::get(url);
    for (name, value) in filters {
        builder = builder.query(name, value);
    }
    if let Some(number) = page_number {
        builder = builder.query("page", number);
    }
    let response = builder.query("per_page", per_page).send()?.error_for_status(VENDOR)?;

    let records = page::records_from(&response.body, collection)?;
    // A second pass over the body, skipping the records without building
    // them, for the `meta` that may follow them.
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(default)]
        meta: Option<Meta>,
    }
    let envelope: Envelope = response.json()?;
    let pagination = envelope.meta.and_then(|meta| meta.pagination);
    let served = pagination
        .as_ref()
        .and_then(|pagination| pagination.page)
        .or(page_number)
        // The guide counts pages from 1; the first request named none.
        .unwrap_or(1);
    let has_more = pagination
        .and_then(|pagination| pagination.has_more)
        .unwrap_or(records.len() as u64 >= u64::from(per_page));
    let next_cursor = if has_more && !records.is_empty() {
        Some(page::encode_cursor(&Position { source_id, page: served + 1 })?)
    } else {
        None
    };
    Ok(Page::new(records, next_cursor))
}
