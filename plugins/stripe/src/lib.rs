//! The Stripe connector: `stripe.customers` over Stripe's `/v1/customers`.
//!
//! # Upsert: what it matches on
//!
//! 1. A record with an `id` updates that customer. If it does not exist, or
//!    was deleted, the upsert fails with `not-found`: it never re-creates a
//!    customer under a new id.
//! 2. Else a record with an `email` looks the email up
//!    (`GET /v1/customers?email=...&limit=2`, exact and case-sensitive). One
//!    match is updated. Several fail with `conflict` naming their ids:
//!    Stripe does not keep emails unique, so the connector refuses to guess.
//!    None is created.
//! 3. Else the record is created.
//!
//! Creates carry the engine's idempotency key as `Idempotency-Key`, so a
//! retried or re-run create cannot make a second customer. An update sends
//! only the fields that differ from Stripe's copy, and nothing at all when
//! none do (the outcome is then `unchanged`). See `diff.rs` for the exact
//! comparison rules.
//!
//! # Stripe quirks handled
//!
//! - Bodies are form-encoded (`metadata[plan]=pro`, `address[city]=...`);
//!   an empty value clears a field. Updates are POSTs.
//! - Only some parameters take an empty value, as Stripe's OpenAPI
//!   description says: strings (`name`, `email`, `phone`, ...), and the
//!   parameters it types as an `anyOf` holding `enum: [""]` (`metadata`,
//!   `address`, `shipping`, `invoice_settings[custom_fields]`, ...). A list,
//!   an object or an integer (`preferred_locales`, `invoice_settings`,
//!   `balance`) has none: Stripe answers 400 to `preferred_locales=`. So a
//!   create leaves out every blank value (`null`, `""`, `[]`, `{}`, at any
//!   depth) and the update-only `default_source`, so a customer read from
//!   one account can be created in another as it is; an update sends `""`
//!   only to clear a field that takes it, and a record that asks to clear
//!   one that does not (`"preferred_locales": []` for a customer that has
//!   some) fails with `invalid-input` naming the field, before anything is
//!   sent.
//! - Metadata merges on update, so only the metadata keys a record names
//!   are compared and sent; `null` unsets a key, `"metadata": null` clears
//!   all of them.
//! - A deleted customer still answers `GET` with `{"deleted": true}`: `get`
//!   returns nothing for it, `remove` reports it already absent and
//!   `upsert` by `id` refuses it.
//! - Only a 404 with Stripe's `resource_missing` error means "absent"; a 404
//!   from anywhere else (a wrong base URL) is an error, so a sync cannot
//!   mistake it for an empty account and create duplicates.
//! - Pages hold at most 100 customers; the cursor is the last id
//!   (`starting_after`), and `has_more` says whether there is a next page.
//!   Records are passed on as Stripe's own JSON text, never re-serialised.
//! - Errors come as `{"error": {"type", "code", "message", "param"}}`;
//!   `idempotency_error` maps to `conflict`, and the `Stripe-Should-Retry`
//!   header overrides whether a failure is worth retrying.
//! - Rate limits: 100 requests/s for live keys and 25 for test keys, read
//!   and write counted apart (`sk_*` secret and `rk_*` restricted keys).
//! - `currency` is read-only: the OpenAPI description accepts it on neither
//!   create nor update (the user-management guide says otherwise; the spec
//!   wins). It is ignored in a desired record with the other read-only
//!   fields (`object`, `created`, `livemode`, `deleted`, ...).
//!
//! # Filters
//!
//! `list` passes each filter field on as a query parameter: `{"email":
//! "jo@example.com"}`, `{"created": {"gte": 1700000000}}` (sent as
//! `created[gte]`), `{"test_clock": "clock_..."}`. The paging parameters
//! belong to the engine and are refused in a filter.
//!
//! # Settings
//!
//! `api_version` (optional) pins the API version with the `Stripe-Version`
//! header; without it the account's default version answers.

mod customers;
mod diff;

use weft_connector_sdk::{
    AuthScheme, Connector, Context, Json, ListRequest, Manifest, MethodClass, Op, Page, RateLimit,
    RemoveOutcome, ResourceSpec, Result, Setting, UpsertOutcome, UpsertRequest,
};

/// The Stripe connector.
#[derive(Debug)]
pub struct Stripe;

weft_connector_sdk::export!(Stripe);

const CUSTOMERS: &str = "customers";

impl Connector for Stripe {
    fn describe() -> Manifest {
        manifest()
    }

    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        customers::list(ctx, &request)
    }

    fn get(ctx: &Context, _resource: &str, id: &str) -> Result<Option<Json>> {
        customers::get(ctx, id)
    }

    fn upsert(ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        customers::upsert(ctx, &request)
    }

    fn remove(ctx: &Context, _resource: &str, id: &str) -> Result<RemoveOutcome> {
        customers::remove(ctx, id)
    }

    fn lookup(ctx: &Context, _resource: &str, record: Json) -> Result<Option<Json>> {
        customers::lookup(ctx, &record)
    }
}

fn manifest() -> Manifest {
    // Stripe's published limits, per key: live mode 100 reads and 100 writes
    // per second, test mode 25 each. Restricted keys (`rk_`) count the same.
    let limits = [("sk_live_", 100), ("rk_live_", 100), ("sk_test_", 25), ("rk_test_", 25)];
    let rate_limits = limits
        .into_iter()
        .flat_map(|(prefix, requests)| {
            [MethodClass::Read, MethodClass::Write].map(|method_class| RateLimit {
                method_class,
                requests,
                per_seconds: 1,
                credential_prefix: Some(prefix.to_string()),
            })
        })
        .collect();

    Manifest {
        name: "stripe".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vendor: "Stripe".into(),
        description: "Stripe customers: list, get, upsert (by id, else by exact email, else \
                      create with an idempotency key) and remove (permanent)."
            .into(),
        default_base_url: "https://api.stripe.com".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::BasicKeyAsUser,
        resources: vec![ResourceSpec {
            name: CUSTOMERS.into(),
            description: "Stripe customers (`cus_...`), as Stripe's customer object. Upsert \
                          matches on `id` when the record has one (updating only), else on \
                          the exact `email` (a conflict when several customers share it), \
                          else creates. Remove deletes permanently."
                .into(),
            ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
            irreversible: vec![Op::Remove],
            max_page_size: customers::MAX_PAGE_SIZE,
            default_page_size: customers::MAX_PAGE_SIZE,
            id_field: "id".into(),
        }],
        rate_limits,
        settings: vec![Setting {
            name: "api_version".into(),
            description: "Stripe API version to pin with the `Stripe-Version` header \
                          (`2024-06-20`); the account's default when unset."
                .into(),
            required: false,
        }],
    }
}

#[cfg(test)]
mod tests;
