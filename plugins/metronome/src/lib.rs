//! The Metronome connector: `metronome.customers` over `/v1/customers`, and
//! `metronome.customer-plans`, the plans of one customer.
//!
//! The base URL includes `/v1` (`https://api.metronome.com/v1`); paths are
//! joined to it.
//!
//! # Upsert: what it matches on
//!
//! 1. A record with an `id` (Metronome's UUID) updates that customer. If it
//!    does not exist (or is archived) the upsert fails with `not-found`: it
//!    never creates a customer under another id.
//! 2. Else a record with an `external_id` looks it up as an ingest alias
//!    (`GET /customers?ingest_alias=...`; Metronome's `external_id` is the
//!    customer's first alias) and updates the customer found, or creates
//!    one when none is: the external id is then the key, and the aliases
//!    are not used for matching.
//! 3. Else a record with `ingest_aliases` looks each one up; the one customer
//!    they belong to is updated. Aliases belonging to two different
//!    customers are a `conflict`.
//! 4. Else (nothing found) the customer is created with `POST /customers`
//!    (`name` required), with the engine's idempotency key as
//!    `Idempotency-Key`.
//!
//! Before **any** write, every desired ingest alias (and, for a create, the
//! `external_id`) that the matched customer does not already hold is looked
//! up: one that belongs to another customer fails the upsert with
//! `conflict` and nothing is written. Metronome keeps aliases unique
//! account-wide, and a clash found halfway through would leave a customer
//! half updated.
//!
//! An update calls only the endpoints for the fields that differ, each
//! idempotent by nature: `POST /customers/{id}/setName` for `name`,
//! `/setIngestAliases` for `ingest_aliases` (compared as sets; the call
//! replaces the whole set), `/updateConfig` for
//! `customer_config.salesforce_account_id`. Nothing at all is sent when
//! nothing differs (`unchanged`). The customer is read back afterwards,
//! since `setIngestAliases` and `updateConfig` answer no record.
//!
//! # Metronome quirks handled
//!
//! - Customer `id` is a UUID Metronome assigns; `external_id` cannot be
//!   changed once set (no endpoint does it): a differing one is
//!   `unsupported`, before anything is written.
//! - `custom_fields` have no update endpoint in the v1 description (their
//!   keys must also pre-exist in the dashboard): they are sent on create,
//!   compared key by key on update, and a difference is `unsupported`
//!   rather than silently dropped. `billing_config` is create-only here
//!   (it has its own `/billing-config/{provider}` endpoints).
//! - Remove archives (`POST /customers/archive` with `{"id": ...}` in the
//!   body): Metronome has no DELETE and no unarchive, so `remove` is
//!   irreversible. Metronome keeps serving an archived customer by id, so
//!   `get` returns nothing for one: when the record carries `archived_at`
//!   (newer API versions) that decides, else (the v1 record does not say)
//!   one more request asks the archived-only list
//!   (`customer_ids=...&only_archived=true`). `remove` of a missing or
//!   archived customer is `already-absent`, also when the archive call
//!   itself answers 400 for a customer archived meanwhile.
//! - Ids are UUIDs: `get` of anything else is `none` without a request
//!   (Metronome would answer 400).
//! - Lists page with `limit` (at most 100) and the opaque `next_page`
//!   cursor, which becomes the engine's cursor as is. Records are passed on
//!   as Metronome's own JSON text; single records are taken out of the
//!   `{"data": ...}` envelope without being re-serialised.
//! - Errors come as `{"message": "..."}`; a 404 without one (a wrong base
//!   URL, say a missing `/v1`) is an error, not "absent".
//! - Rate limits are unpublished: the manifest declares none and the host
//!   adapts to 429s.
//!
//! # Filters
//!
//! `customers`: `{"ingest_alias": "..."}`, `{"customer_ids": ["...", ...]}`
//! (up to 100; sent as repeated `customer_ids`), `{"only_archived": true}`.
//! `customer-plans`: `{"customer_id": "..."}` lists that customer's plans
//! (a workflow checks a churned customer has no active plan this way).
//! Without a filter it walks every live customer and lists each one's plans
//! in turn, adding `customer_id` to each plan record (Metronome's plan
//! records do not name their customer).

mod customers;
mod plans;

use weft_connector_sdk::{
    AuthScheme, Connector, Context, Error, Json, ListRequest, Manifest, Op, Page, RemoveOutcome,
    ResourceSpec, Result, UpsertOutcome, UpsertRequest,
};

/// The Metronome connector.
#[derive(Debug)]
pub struct Metronome;

weft_connector_sdk::export!(Metronome);

const CUSTOMERS: &str = "customers";
const CUSTOMER_PLANS: &str = "customer-plans";

/// Metronome serves at most 100 records per page.
pub(crate) const MAX_PAGE_SIZE: u32 = 100;

impl Connector for Metronome {
    fn describe() -> Manifest {
        manifest()
    }

    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        match request.resource.as_str() {
            CUSTOMERS => customers::list(ctx, &request),
            CUSTOMER_PLANS => plans::list(ctx, &request),
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

    fn lookup(ctx: &Context, resource: &str, record: Json) -> Result<Option<Json>> {
        customers_only(resource, "lookup")?;
        customers::lookup(ctx, &record)
    }
}

fn customers_only(resource: &str, op: &str) -> Result<()> {
    match resource {
        CUSTOMERS => Ok(()),
        CUSTOMER_PLANS => Err(Error::unsupported(format!(
            "metronome: `{CUSTOMER_PLANS}` offers `list` only, not `{op}`"
        ))),
        other => Err(unknown(other)),
    }
}

fn unknown(resource: &str) -> Error {
    Error::not_found(format!(
        "metronome: no resource `{resource}`; this connector serves `{CUSTOMERS}` and \
         `{CUSTOMER_PLANS}`"
    ))
}

fn manifest() -> Manifest {
    Manifest {
        name: "metronome".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vendor: "Metronome".into(),
        description: "Metronome customers: list, get, upsert (by id, else external id or \
                      ingest alias, else create; alias clashes refused before any write) and \
                      remove (archive, irreversible); and the plans of a customer."
            .into(),
        default_base_url: "https://api.metronome.com/v1".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::Bearer,
        resources: vec![
            ResourceSpec {
                name: CUSTOMERS.into(),
                description: "Metronome customers (billing accounts), as Metronome returns \
                              them. Upsert matches on `id` (updating only), else on \
                              `external_id`, else on `ingest_aliases`, else creates; an alias \
                              held by another customer is a conflict. Remove archives, which \
                              cannot be undone."
                    .into(),
                ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
                irreversible: vec![Op::Remove],
                max_page_size: MAX_PAGE_SIZE,
                default_page_size: MAX_PAGE_SIZE,
                id_field: "id".into(),
            },
            ResourceSpec {
                name: CUSTOMER_PLANS.into(),
                description: "Customer plans (`GET /customers/{id}/plans`), newest first, list \
                              only. The filter `{\"customer_id\": \"...\"}` gives one \
                              customer's; without it, every live customer's, each plan with \
                              its `customer_id` added. A plan is active while `ending_before` \
                              is unset or in the future."
                    .into(),
                ops: vec![Op::List],
                irreversible: Vec::new(),
                max_page_size: MAX_PAGE_SIZE,
                default_page_size: MAX_PAGE_SIZE,
                id_field: "id".into(),
            },
        ],
        rate_limits: Vec::new(),
        settings: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
