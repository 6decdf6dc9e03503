//! The Baremetrics connector: `baremetrics.customers`,
//! `baremetrics.subscriptions` and `baremetrics.sources` over
//! `https://api.baremetrics.com/v1`.
//!
//! Every customer and subscription path sits under a source
//! (`/v1/{source_id}/customers`). The connection's `source_id` setting
//! names it; when unset, the connector discovers the Baremetrics-native
//! source (`provider: "baremetrics"`) with `GET /v1/sources`.
//!
//! # Upsert: what it matches on
//!
//! Customers are keyed by `oid`, *your* id for the customer (not
//! Baremetrics' internal `id`); every record must carry one. The upsert
//! reads `GET /v1/{source_id}/customers/{oid}` first:
//!
//! - When it exists, the desired fields are compared with Baremetrics'
//!   copy. Nothing differs: `unchanged`, nothing written. Otherwise the
//!   desired fields are laid over the current ones and the merged whole is
//!   sent with `PUT` (`updated`): Baremetrics' PUT replaces the record and
//!   clears the fields a body leaves out, so sending only the changes would
//!   wipe `name`, `email` or `notes`.
//! - When it does not, it is created with `POST /v1/{source_id}/customers`.
//!
//! # Baremetrics quirks handled
//!
//! - Writes (upsert, remove) are possible only on the Baremetrics-native
//!   source: customers of a Stripe (or other) source are synced from that
//!   provider and read-only. The connector checks the source's provider
//!   before writing and fails with `unsupported` saying so, instead of
//!   sending a request Baremetrics would refuse.
//! - PUT replaces (above). The PUT body carries `name`, `email`, `notes`
//!   (the spec's updatable fields) and the customer's `attributes` (the
//!   guide's), merged from both copies, plus `created` when the desired
//!   record gives it; desired `attributes` are laid over the current ones
//!   key by key (a `null` value removes a key).
//!   Attribute keys must already exist in Baremetrics' settings: an unknown
//!   one is Baremetrics' error to report. A desired `null` clears a field
//!   (sent as `""`, since the spec's fields are non-nullable strings).
//! - `created` is a Unix timestamp in seconds, as Baremetrics answers it,
//!   the description's own text and the user guide say (its request schema
//!   types it a `date-time` string: an erratum). A workflow may give the
//!   integer, its digits, or an RFC 3339 date-time
//!   (`"2024-01-02T03:04:05Z"`), which is converted; anything else is
//!   `invalid-input` before a request is sent.
//! - Comparisons follow the SDK's one rule (`weft_connector_sdk::same`).
//! - Read-only fields (`id`, `source`, `source_id`, `ltv`, `current_mrr`,
//!   `current_arr`, `current_plans`, `display_*`, `is_*`) in a desired
//!   record are ignored: a record read from Baremetrics can be written back.
//! - Pages: `page` and `per_page` (at most 200). The first request leaves
//!   `page` out (the guide counts from 1, the spec's examples from 0), and
//!   the next page is the `meta.pagination.page` Baremetrics answered plus
//!   one; `meta.pagination.has_more` ends the list (without `meta`, a short
//!   page does). The cursor carries the source id too, so later pages skip
//!   source discovery.
//! - `DELETE` is permanent (the customer's subscriptions and charges go
//!   too): `remove` is irreversible. Any 2xx counts (the guide says 204, the
//!   spec 202); a customer already gone is `already-absent`.
//! - A 429 carries no `Retry-After`: the rate-limited error has no delay and
//!   the host backs off by itself. Limits are unpublished, so the manifest
//!   declares none.
//! - Errors come as `{"error": "..."}`. A 404 whose body is not JSON (a
//!   wrong base URL) is an error, not "absent".
//!
//! # Filters
//!
//! `customers`: `{"search": "..."}` (Baremetrics searches oid, email,
//! notes and name). `subscriptions`: `{"customer_oid": "..."}`.
//! `sources`: none.
//!
//! # Settings
//!
//! `source_id` (optional): the source to read and write; the
//! Baremetrics-native source when unset.

mod created;
mod customers;
mod paging;
mod sources;

use weft_connector_sdk::{
    AuthScheme, Connector, Context, Error, Json, ListRequest, Manifest, Op, Page, RemoveOutcome,
    ResourceSpec, Result, Setting, UpsertOutcome, UpsertRequest,
};

/// The Baremetrics connector.
#[derive(Debug)]
pub struct Baremetrics;

weft_connector_sdk::export!(Baremetrics);

const CUSTOMERS: &str = "customers";
const SUBSCRIPTIONS: &str = "subscriptions";
const SOURCES: &str = "sources";

impl Connector for Baremetrics {
    fn describe() -> Manifest {
        manifest()
    }

    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        match request.resource.as_str() {
            CUSTOMERS => customers::list(ctx, &request),
            SUBSCRIPTIONS => paging::list_subscriptions(ctx, &request),
            SOURCES => sources::list(ctx, &request),
            other => Err(unknown(other)),
        }
    }

    fn get(ctx: &Context, resource: &str, id: &str) -> Result<Option<Json>> {
        customers_only(resource, "get")?;
        customers::get(ctx, id)
    }

    fn upsert(ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        customers_only(&request.resource, "upsert")?;
        customers::upsert(ctx, &request)
    }

    fn remove(ctx: &Context, resource: &str, id: &str) -> Result<RemoveOutcome> {
        customers_only(resource, "remove")?;
        customers::remove(ctx, id)
    }
}

fn customers_only(resource: &str, op: &str) -> Result<()> {
    match resource {
        CUSTOMERS => Ok(()),
        SUBSCRIPTIONS | SOURCES => Err(Error::unsupported(format!(
            "baremetrics: `{resource}` offers `list` only, not `{op}`"
        ))),
        other => Err(unknown(other)),
    }
}

fn unknown(resource: &str) -> Error {
    Error::not_found(format!(
        "baremetrics: no resource `{resource}`; this connector serves `{CUSTOMERS}`, \
         `{SUBSCRIPTIONS}` and `{SOURCES}`"
    ))
}

fn manifest() -> Manifest {
    let list_only = |name: &str, description: &str, id_field: &str, max: u32| ResourceSpec {
        name: name.into(),
        description: description.into(),
        ops: vec![Op::List],
        irreversible: Vec::new(),
        max_page_size: max,
        default_page_size: max,
        id_field: id_field.into(),
    };
    Manifest {
        name: "baremetrics".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vendor: "Baremetrics".into(),
        description: "Baremetrics customers of one source: list, get, upsert by `oid` (merging \
                      over the current record, since PUT replaces it) and remove (permanent); \
                      writes only on the Baremetrics-native source. Also subscriptions and \
                      sources, read-only."
            .into(),
        default_base_url: "https://api.baremetrics.com".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::Bearer,
        resources: vec![
            ResourceSpec {
                name: CUSTOMERS.into(),
                description: "Baremetrics customers of the connection's source, as Baremetrics \
                              returns them. Upsert matches on `oid` (your customer id), merges \
                              the desired fields over the current record and PUTs the whole, \
                              else creates. Writes need the Baremetrics-native source. Remove \
                              deletes permanently."
                    .into(),
                ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
                irreversible: vec![Op::Remove],
                max_page_size: paging::MAX_PAGE_SIZE,
                default_page_size: paging::MAX_PAGE_SIZE,
                id_field: "oid".into(),
            },
            list_only(
                SUBSCRIPTIONS,
                "Baremetrics subscriptions of the connection's source, read-only; filter \
                 `{\"customer_oid\": \"...\"}` for one customer's.",
                "oid",
                paging::MAX_PAGE_SIZE,
            ),
            list_only(
                SOURCES,
                "The account's Baremetrics sources (`id`, `provider`, `provider_id`), one page.",
                "id",
                paging::MAX_PAGE_SIZE,
            ),
        ],
        rate_limits: Vec::new(),
        settings: vec![Setting {
            name: "source_id".into(),
            description: "Baremetrics source id to read and write; when unset, the \
                          Baremetrics-native source found with `GET /v1/sources`. Writes work \
                          only on the native source."
                .into(),
            required: false,
        }],
    }
}

#[cfg(test)]
mod tests;
