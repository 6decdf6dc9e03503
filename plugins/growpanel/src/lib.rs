//! The GrowPanel connector: `growpanel.customers` over GrowPanel's raw
//! customer rows, `/data/customers`.
//!
//! # Upsert: what it matches on
//!
//! A customer is keyed by `id`, the external customer id (the id in your
//! billing source); every record must carry one. The upsert reads
//! `GET /data/customers/{id}?source=...` first:
//!
//! - When the customer exists, the fields `PUT /data/customers/{id}` can
//!   change (`name`, `email`, `custom_variables`) are compared with
//!   GrowPanel's copy. Nothing is written when they match (`unchanged`);
//!   otherwise only the differing ones are sent (`updated`). Other fields
//!   that differ (`country`, `created_date`, ...) cannot be changed through
//!   the update endpoint: they are left alone and named in a warning.
//! - When it does not, the record is created with `POST /data/customers`.
//!   The spec requires `id`, `created_date`, `country` and `data_source`;
//!   `data_source` defaults to the connection's `source` setting, and a
//!   record missing any of the others fails with `invalid-input` naming the
//!   field *before* anything is sent.
//!
//! `upsert-batch` sends every valid record in one array `POST
//! /data/customers` (GrowPanel's bulk import) and reports one outcome per
//! record, in order: `created` for a row GrowPanel accepted, `invalid-input`
//! for a row it rejected (`export_status: "error"`, with its
//! `export_error`) or that missed a required field (not sent). GrowPanel's
//! POST inserts-or-replaces by `id` and does not say which, so batch is for
//! imports; use `upsert` where `updated`/`unchanged` matters.
//!
//! # GrowPanel quirks handled
//!
//! - Every read needs the data source: `?source=<data source id>` on
//!   `GET /data/customers` and `GET /data/customers/{id}` (the spec marks it
//!   required), hence the required `source` setting. `PUT` and `DELETE`
//!   take no source in the spec and get none.
//! - Lists come as `{"result": {"count", "list"}}`; records are passed on as
//!   GrowPanel's own JSON text, never re-serialised.
//! - **No pagination.** `GET /data/customers` takes only `limit`: there is
//!   no offset, page or cursor. A list is therefore one page. The connector
//!   asks for one record more than the page size to know whether GrowPanel
//!   holds more (or reads it from `count`). When it does, the page comes
//!   with a cursor that only says so: a list step whose `limit` the page
//!   covers stops there with what it asked for, and asking for the next
//!   page fails with `unsupported`, so a sync is never handed a silently
//!   truncated list: raise the page size (up to 10 000) instead.
//! - Create answers (per the spec) `{"result": [row, ...]}`, each row the
//!   echoed input with `export_status` and `export_error`; the user guide's
//!   `{"result": {"count", "list": [{"id"}]}}` is read too. A row with
//!   `export_status: "error"` is `invalid-input`.
//! - `custom_variables` are compared key by key (only the keys the desired
//!   record names); an update sends GrowPanel's map with the desired keys
//!   laid over it (a `null` value removes a key), so whether GrowPanel
//!   merges or replaces the map, no other variable is lost.
//! - The spec types `name`, `email` and each custom variable as a string,
//!   not nullable: clearing a field sends `""` (never `null`), and a number
//!   or boolean is sent as its text (`"seats": 5` as `"5"`), on create and
//!   on update; an object or a list there is `invalid-input` before
//!   anything is sent. The other string fields of a create (`id`,
//!   `country`, `created_date`, ...) are sent as text too.
//! - Comparisons follow the SDK's one rule (`weft_connector_sdk::same`):
//!   `null` and `""` compare equal, `5` matches `"5"`; the PUT answer (`{"success": true}` in
//!   the spec, `{"result": {"id", "updated_fields"}}` in the guide) carries
//!   no record, so an update reads the customer back.
//! - `DELETE /data/customers/{id}` removes the row for good (related MRR
//!   movements stay until the next resync): `remove` is declared
//!   irreversible. A customer already gone is `already-absent`.
//! - Errors come as `{"error": "..."}` (spec) or `{"message": "..."}`
//!   (guide); both are read. A 404 whose body is not a GrowPanel error (a
//!   wrong base URL) is an error, not "absent".
//! - Published rate limits: GET 300, POST 100, PUT 100 and DELETE 50
//!   requests per minute.
//!
//! # Filters
//!
//! `{"source": "ds_..."}` lists another data source than the connection's.
//! GrowPanel's raw customer list has no other filter.
//!
//! # Settings
//!
//! `source` (required): the data source id (`ds_...`) to read, and the
//! default `data_source` of created customers.

mod customers;
mod diff;

use weft_connector_sdk::{
    AuthScheme, BatchItem, Connector, Context, Json, ListRequest, Manifest, MethodClass, Op, Page,
    RateLimit, RemoveOutcome, ResourceSpec, Result, Setting, UpsertOutcome, UpsertRequest,
};

/// The GrowPanel connector.
#[derive(Debug)]
pub struct GrowPanel;

weft_connector_sdk::export!(GrowPanel);

const CUSTOMERS: &str = "customers";

impl Connector for GrowPanel {
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

    fn upsert_batch(
        ctx: &Context,
        _resource: &str,
        items: Vec<BatchItem>,
    ) -> Result<Vec<Result<UpsertOutcome>>> {
        customers::upsert_batch(ctx, &items)
    }

    fn remove(ctx: &Context, _resource: &str, id: &str) -> Result<RemoveOutcome> {
        customers::remove(ctx, id)
    }
}

fn manifest() -> Manifest {
    let per_minute = |method_class, requests| RateLimit {
        method_class,
        requests,
        per_seconds: 60,
        credential_prefix: None,
    };
    Manifest {
        name: "growpanel".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        vendor: "GrowPanel".into(),
        description: "GrowPanel raw customer rows (`/data/customers`) of one data source: list \
                      (one page, GrowPanel has no pagination), get, upsert by external `id` \
                      (PUT of name, email and custom variables, else create), batch create \
                      through the bulk POST, and remove (permanent)."
            .into(),
        default_base_url: "https://api.growpanel.io".into(),
        extra_hosts: Vec::new(),
        auth: AuthScheme::Bearer,
        resources: vec![ResourceSpec {
            name: CUSTOMERS.into(),
            description: "GrowPanel customer rows of the `source` data source, as GrowPanel \
                          returns them. Upsert matches on `id` (the external customer id): \
                          updates `name`, `email` and `custom_variables` when it exists, else \
                          creates (requires `id`, `created_date`, `country`, and `data_source` \
                          or the `source` setting). Batch upsert creates through the bulk POST. \
                          Remove deletes permanently."
                .into(),
            ops: vec![Op::List, Op::Get, Op::Upsert, Op::UpsertBatch, Op::Remove],
            irreversible: vec![Op::Remove],
            max_page_size: customers::MAX_PAGE_SIZE,
            default_page_size: customers::DEFAULT_PAGE_SIZE,
            id_field: "id".into(),
        }],
        rate_limits: vec![
            per_minute(MethodClass::Get, 300),
            per_minute(MethodClass::Post, 100),
            per_minute(MethodClass::Put, 100),
            per_minute(MethodClass::Delete, 50),
        ],
        settings: vec![Setting {
            name: "source".into(),
            description: "GrowPanel data source id (`ds_...`): the `source` every read needs, \
                          and the `data_source` of created customers that do not name one."
                .into(),
            required: true,
        }],
    }
}

#[cfg(test)]
mod tests;
