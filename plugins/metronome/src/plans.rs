//! The `customer-plans` resource: `GET /customers/{id}/plans`, list only.
//!
//! With the filter `{"customer_id": "..."}` it pages one customer's plans
//! with Metronome's own cursor. Without a filter it walks every live
//! customer (`GET /customers`) and lists each one's plans in turn, adding
//! the `customer_id` to each plan record (Metronome's plan records do not
//! name their customer); the cursor then records where the walk stands.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_connector_sdk::{Context, Error, Json, ListRequest, Page, Result, page, query};

use crate::MAX_PAGE_SIZE;
use crate::customers::list_page;

/// How many customers one unfiltered call visits at most, so that a run of
/// customers without plans cannot make one call take arbitrarily long.
const CUSTOMERS_PER_CALL: usize = 25;

/// Where an unfiltered walk stands.
#[derive(Serialize, Deserialize)]
struct Walk {
    /// The `next_page` that fetched the current page of customers; `None`
    /// for the first page.
    customers: Option<String>,
    /// The current customer's index in that page.
    index: usize,
    /// Where the current customer's plans continue.
    plans: Option<String>,
}

/// Reads one page of plans.
pub(crate) fn list(ctx: &Context, request: &ListRequest) -> Result<Page> {
    match customer_id(request)? {
        Some(customer_id) => {
            plans_page(ctx, &customer_id, request.cursor.clone(), request.page_size)
        }
        None => walk(ctx, request),
    }
}

fn plans_page(
    ctx: &Context,
    customer_id: &str,
    cursor: Option<String>,
    page_size: u32,
) -> Result<Page> {
    let url = ctx.url(&format!("/customers/{}/plans", query::encode_component(customer_id)));
    let request = ListRequest { resource: String::new(), cursor, page_size, filter: None };
    list_page(url, &request, Vec::new()).map_err(|error| match error {
        Error::NotFound(message) if message.starts_with("metronome: HTTP 404") => {
            Error::not_found(format!("{message} (customer `{customer_id}`)"))
        }
        other => other,
    })
}

fn walk(ctx: &Context, request: &ListRequest) -> Result<Page> {
    let mut walk = match request.cursor.as_deref() {
        Some(cursor) => page::decode_cursor(cursor)?,
        None => Walk { customers: None, index: 0, plans: None },
    };
    let limit = request.page_size.clamp(1, MAX_PAGE_SIZE) as usize;
    let mut records = Vec::new();
    let mut visited = 0;
    loop {
        let customers = list_page(
            ctx.url("/customers"),
            &ListRequest {
                resource: String::new(),
                cursor: walk.customers.clone(),
                page_size: MAX_PAGE_SIZE,
                filter: None,
            },
            Vec::new(),
        )?;
        let ids = customers
            .records
            .iter()
            .map(|record| {
                page::scalar_field(record, "id")?
                    .ok_or_else(|| Error::fatal("metronome: a listed customer has no `id`"))
            })
            .collect::<Result<Vec<_>>>()?;
        while let Some(id) = ids.get(walk.index) {
            let remaining = (limit - records.len()) as u32;
            let plans = plans_page(ctx, id, walk.plans.take(), remaining)?;
            records.extend(plans.records.iter().map(|plan| with_customer_id(plan, id)));
            visited += 1;
            match plans.next_cursor {
                Some(next) => walk.plans = Some(next),
                None => walk.index += 1,
            }
            if records.len() >= limit || visited >= CUSTOMERS_PER_CALL {
                let next = if walk.index < ids.len() {
                    Some(walk)
                } else {
                    customers.next_cursor.map(|next| Walk {
                        customers: Some(next),
                        index: 0,
                        plans: None,
                    })
                };
                let cursor = next.map(|walk| page::encode_cursor(&walk)).transpose()?;
                return Ok(Page::new(records, cursor));
            }
        }
        match customers.next_cursor {
            Some(next) => {
                walk = Walk { customers: Some(next), index: 0, plans: None };
            }
            None => return Ok(Page::last(records)),
        }
    }
}

/// The plan record with `"customer_id"` added as its first field, spliced
/// into Metronome's text rather than re-serialised.
fn with_customer_id(plan: &str, customer_id: &str) -> Json {
    let body = plan.trim_start();
    let Some(rest) = body.strip_prefix('{') else {
        return plan.to_owned();
    };
    let id = Value::String(customer_id.to_owned());
    if rest.trim_start().starts_with('}') {
        format!("{{\"customer_id\":{id}{rest}")
    } else {
        format!("{{\"customer_id\":{id},{rest}")
    }
}

fn customer_id(request: &ListRequest) -> Result<Option<String>> {
    let Some(filter) = request.filter::<Value>()? else {
        return Ok(None);
    };
    let Value::Object(filter) = filter else {
        return Err(Error::invalid_input(
            "metronome: the `customer-plans` filter must be a JSON object such as \
             {\"customer_id\": \"...\"}",
        ));
    };
    for key in filter.keys() {
        if key != "customer_id" {
            return Err(Error::invalid_input(format!(
                "metronome: `customer-plans` cannot filter on `{key}`; only `customer_id`"
            )));
        }
    }
    match filter.get("customer_id") {
        None => Ok(None),
        Some(Value::String(id)) if !id.is_empty() => Ok(Some(id.clone())),
        Some(_) => Err(Error::invalid_input(
            "metronome: the filter's `customer_id` must be a Metronome customer id string",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::with_customer_id;

    #[test]
    fn customer_id_is_spliced_into_the_plan_text() {
        assert_eq!(
            with_customer_id(r#"{"id":"p1","plan_name":"Standard"}"#, "c\"1"),
            r#"{"customer_id":"c\"1","id":"p1","plan_name":"Standard"}"#
        );
        assert_eq!(with_customer_id(" { } ", "c"), r#"{"customer_id":"c" } "#);
    }
}
