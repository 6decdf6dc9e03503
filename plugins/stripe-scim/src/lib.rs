//! The Stripe SCIM connector: `stripe-scim.team-members`, the people on a
//! Stripe Dashboard team, over SCIM 2.0 (`/scim/v2/Users`).
//!
//! Team members are not Stripe customers: they live behind their own base
//! URL (`https://dashboard.stripe.com`) and their own bearer token (a SCIM
//! token generated in the Dashboard, which needs SSO and an enterprise
//! agreement), so they are a connector of their own, never a resource of
//! the `stripe` connector with its `sk_` key.
//!
//! # Upsert: what it matches on
//!
//! 1. A record with an `id` updates that user; if it does not exist the
//!    upsert fails with `not-found` (it never creates under another id).
//! 2. Else the record's `userName` (required then) is looked up with
//!    `filter=userName eq "..."`. One match is updated; several (which a
//!    SCIM server should not allow) are a `conflict`; none is created with
//!    `POST /scim/v2/Users`.
//!
//! An update sends one `PATCH` with a `replace` operation per top-level
//! attribute that differs from Stripe's copy, and nothing when none does
//! (`unchanged`). Complex attributes (`name`) are compared and replaced on
//! the sub-attributes the record gives, which SCIM leaves the others of;
//! multi-valued ones (`emails`) are replaced whole. `id`, `meta` and
//! `schemas` are never compared; `password` is write-only and always sent
//! when given.
//!
//! # Remove deactivates
//!
//! `remove` sends `PATCH` with `{"op": "replace", "path": "active", "value":
//! false}`: the member loses Dashboard access and keeps their history, and
//! an upsert with `"active": true` brings them back, so it is reversible
//! and not declared irreversible. This is what Okta and Entra do when a
//! user is unassigned; the full `DELETE /scim/v2/Users/{id}` that Stripe
//! also lists is deliberately not used (its effect on the member's audit
//! trail is for the enterprise agreement to say). A member already
//! inactive, or missing, is `already-absent`, and `get` answers nothing for
//! an inactive member, as for a deleted record. `list` shows every member
//! with its `active` flag (filter `{"active": true}` for the active ones),
//! and `upsert` finds inactive members too, by `id` or `userName`, so a
//! record with `"active": true` reactivates one.
//!
//! # SCIM details handled
//!
//! - Lists page with `startIndex` (1-based) and `count`; the answer's
//!   `totalResults`, `startIndex` and `Resources` give the next cursor (the
//!   next `startIndex`). Records are passed on as Stripe's JSON text.
//! - Bodies are `application/scim+json`, with the SCIM `schemas` URNs.
//! - Errors follow the SCIM error schema (`detail`, `status`, `scimType`):
//!   `scimType: "uniqueness"` is a `conflict` whatever the status,
//!   `invalidFilter`, `invalidValue`, `invalidSyntax` and `mutability` are
//!   `invalid-input`. A 404 without a SCIM error body is an error, not
//!   "absent".
//! - Creates are not retried by the host: a replayed POST would answer
//!   `uniqueness`, and the engine's own retry of the upsert finds the
//!   member by `userName` instead.
//! - Roles are not SCIM attributes at Stripe (they come from SAML
//!   assertions), so there is nothing to map for them here.
//! - Rate limits for SCIM are unpublished: the manifest declares none.
//!
//! # Filters
//!
//! One of `{"userName": "jo@example.com"}` (sent as `filter=userName eq
//! "..."`), `{"active": true}` (`filter=active eq true`), or `{"filter":
//! "<a SCIM filter expression>"}` as is.

mod members;

use weft_connector_sdk::{
    AuthScheme, Connector, Context, Json, ListRequest, Manifest, Op, Page, RemoveOutcome,
    ResourceSpec, Result, UpsertOutcome, UpsertRequest,
};

/// The Stripe SCIM connector.
#[derive(Debug)]
pub struct StripeScim;

weft_connector_sdk::export!(StripeScim);

const TEAM_MEMBERS: &str = "team-members";

impl Connector for StripeScim {
    fn describe() -> Manifest {
        manifest()
    }

    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        members::list(ctx, &request)
    }

    fn get(ctx: &Context, _resource: &str, id: &str) -> Result<Option<Json>> {
        members::get(ctx, id)
    }

    fn upsert(ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        members::upsert(ctx, &request)
    }

    fn remove(ctx: &Context, _resource: &str, id: &str) -> Result<RemoveOutcome> {
        members::remove(ctx, id)
    }

    fn lookup(ctx: &Context, _resource: &str, record: Json) -> Result<Option<Json>> {
        members::lookup(ctx, &record)
    }
}

fn manifest() -> Manifest {
    Manifest {
        name: "stripe-scim".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vendor: "Stripe".into(),
        description: "Stripe Dashboard team members over SCIM 2.0, with the Dashboard's own SCIM \
                      token: list, get, upsert (by id, else userName, else create) and remove \
                      (deactivate, reversible)."
            .into(),
        default_base_url: "https://dashboard.stripe.com".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::Bearer,
        resources: vec![ResourceSpec {
            name: TEAM_MEMBERS.into(),
            description: "Stripe Dashboard team members as SCIM 2.0 User resources. Upsert \
                          matches on `id` (updating only), else on `userName`, else creates; \
                          updates are PATCH replace operations. Remove deactivates \
                          (`active: false`), which an upsert with `active: true` undoes."
                .into(),
            ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
            irreversible: Vec::new(),
            max_page_size: members::MAX_PAGE_SIZE,
            default_page_size: members::MAX_PAGE_SIZE,
            id_field: "id".into(),
        }],
        rate_limits: Vec::new(),
        settings: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
