//! An emulator of Metronome's v1 Customers API, faithful to
//! `shared/vendor-apis/metronome/openapi.json` (Metronome's published v1
//! spec as of 2023-05) and, where it is silent, to the guide in
//! `shared/seeds/metronome-user-management-api.txt`.
//!
//! The base URL includes `/v1`, so the emulator serves `/v1/customers…`.
//!
//! What it honours:
//!
//! - Bearer auth; 401 `{"message": …}` (the spec's `Error` schema);
//! - every request checked against the description
//!   (`sandbox/specs/metronome.json`) before it is served, refused with 400
//!   `{"message": "name must be string"}`: types, required fields, a
//!   `limit` outside 1..=100, a customer id that is not a UUID (path or
//!   archive body), aliases of 1 to 128 characters, at most 300;
//! - `POST /v1/customers` (`name` required; the emulator assigns a UUID
//!   `id`; `external_id` defaults to the first ingest alias, and is itself
//!   an alias); an alias already held by another live customer is a 409
//!   `{"message": …}`, the spec's "A customer with this ID already exists";
//! - `GET /v1/customers` with `limit` (1..=100, default 100), the opaque
//!   `next_page` cursor, and the filters `ingest_alias`, `customer_ids`
//!   (repeated, up to 100) and `only_archived`; archived customers leave
//!   the default list; answers `{"data": [...], "next_page": …}`;
//! - `GET /v1/customers/{id}` as `{"data": {...}}`;
//! - `POST /v1/customers/{id}/setName`, `/setIngestAliases` (replaces the
//!   whole set, 409 on an alias held elsewhere) and `/updateConfig`
//!   (`salesforce_account_id`); the last two answer 200 with an empty body,
//!   as the spec declares no content for them;
//! - `POST /v1/customers/archive` with `{"id"}` in the body: irreversible;
//!   a second archive is a 400; the archived customer's aliases are freed;
//! - `GET /v1/customers/{id}/plans` (`limit`, `next_page`), newest first,
//!   so a workflow can check a churned customer has no active plan;
//! - an undisclosed limit ([`MetronomeConfig::rate_limit`]) answering 429,
//!   and fault injection, through [`crate::limits`].
//!
//! Not in the spec, so chosen here: writes other than archive to an
//! archived customer are refused with 400; a malformed UUID in a path is
//! a 400, an unknown one a 404. Left out: custom fields, billing config,
//! adding or ending plans, invoices, usage, credits, alerts.

#![expect(
    clippy::result_large_err,
    reason = "an `Err` here is the finished vendor answer (a `Response`), built \
              once per refused request and returned as is; boxing it buys nothing"
)]

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::limits::{FaultConfig, Limits, RateLimit};
use crate::requests::RequestLog;
use crate::spec::{self, Violation, json_requests::JsonCheck};
use crate::support::{self, KeyCheck, KeyedPolicy, query_pairs, query_value};

/// The API key `weft sandbox` accepts. Not a real Metronome key.
pub const SANDBOX_API_KEY: &str = "mtr_test_weft_sandbox_c6f1d2e8a94b";

/// Largest `limit` the list endpoints accept, and their default page size.
pub const MAX_PAGE_SIZE: usize = 100;

/// Most ids `customer_ids` may name.
const MAX_CUSTOMER_IDS: usize = 100;

/// Most ingest aliases one customer may hold, and their length bounds.
const MAX_ALIASES: usize = 300;
const MAX_ALIAS_LENGTH: usize = 128;

/// How a [`MetronomeEmulator`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct MetronomeConfig {
    /// API keys the emulator accepts; anything else gets a 401.
    pub api_keys: Vec<String>,
    /// Demo customers to create at start.
    pub seed: usize,
    /// Seed for every random choice: demo data, ids, injected faults.
    pub rng_seed: u64,
    /// Faults to inject; none by default.
    pub faults: FaultConfig,
    /// Requests allowed per key and period. Metronome publishes no limit,
    /// so this stands for whatever undisclosed one a client may hit;
    /// `None` (the default) enforces none.
    pub rate_limit: Option<(u32, Duration)>,
}

impl Default for MetronomeConfig {
    /// Accepts [`SANDBOX_API_KEY`], no demo customers, no limits or faults.
    fn default() -> Self {
        Self {
            api_keys: vec![SANDBOX_API_KEY.to_owned()],
            seed: 0,
            rng_seed: 0,
            faults: FaultConfig::default(),
            rate_limit: None,
        }
    }
}

/// One emulated Metronome account. Clones share it.
#[derive(Clone)]
pub struct MetronomeEmulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for MetronomeEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetronomeEmulator")
            .field("customers", &self.customer_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

type Shared = support::Account<State>;

struct State {
    /// Oldest first; `seq` is the position, which cursors point at.
    customers: Vec<Customer>,
    plans: Vec<Plan>,
    rng: StdRng,
}

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    external_id: String,
    ingest_aliases: Vec<String>,
    name: String,
    salesforce_account_id: Option<String>,
    custom_fields: Map<String, Value>,
    archived: bool,
    plans: Vec<CustomerPlan>,
}

#[derive(Debug, Clone)]
struct Plan {
    id: String,
    name: &'static str,
}

#[derive(Debug, Clone)]
struct CustomerPlan {
    id: String,
    plan_id: String,
    plan_name: String,
    starting_on: i64,
    ending_before: Option<i64>,
}

impl Customer {
    /// The full form (`GET /customers`, `GET /customers/{id}`).
    fn render(&self) -> Value {
        json!({
            "id": self.id,
            "external_id": self.external_id,
            "ingest_aliases": self.ingest_aliases,
            "name": self.name,
            "customer_config": { "salesforce_account_id": self.salesforce_account_id },
            "custom_fields": self.custom_fields,
        })
    }

    /// The short form create and setName answer with.
    fn render_short(&self) -> Value {
        json!({
            "id": self.id,
            "external_id": self.external_id,
            "ingest_aliases": self.ingest_aliases,
            "name": self.name,
        })
    }
}

impl CustomerPlan {
    fn render(&self) -> Value {
        let mut plan = json!({
            "id": self.id,
            "plan_id": self.plan_id,
            "plan_name": self.plan_name,
            "starting_on": support::rfc3339(self.starting_on).replace(".000Z", "+00:00"),
            "custom_fields": {},
        });
        if let Some(ending_before) = self.ending_before {
            plan["ending_before"] =
                support::rfc3339(ending_before).replace(".000Z", "+00:00").into();
        }
        plan
    }

    fn is_active_at(&self, now: i64) -> bool {
        self.starting_on <= now && self.ending_before.is_none_or(|end| end > now)
    }
}

impl State {
    fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.iter().find(|customer| customer.id == id)
    }

    fn customer_mut(&mut self, id: &str) -> Option<&mut Customer> {
        self.customers.iter_mut().find(|customer| customer.id == id)
    }

    /// The first of `aliases` a live customer other than `except` holds.
    fn taken_alias<'a>(&self, aliases: &'a [String], except: Option<&str>) -> Option<&'a String> {
        let held: HashSet<&str> = self
            .customers
            .iter()
            .filter(|customer| !customer.archived && Some(customer.id.as_str()) != except)
            .flat_map(|customer| customer.ingest_aliases.iter().map(String::as_str))
            .collect();
        aliases.iter().find(|alias| held.contains(alias.as_str()))
    }

    fn new_id(&mut self) -> String {
        support::uuid_v4(&mut self.rng)
    }
}

/// A Metronome error answer, `{"message": …}`.
fn error(status: StatusCode, message: &str) -> Response {
    support::json(status, &json!({ "message": message }))
}

/// A request Metronome's description refuses: 400 with its `Error`
/// schema, `{"message": …}`, as it answers "Bad request" on archive and
/// updateConfig.
fn refused(violation: &Violation) -> Response {
    error(StatusCode::BAD_REQUEST, &violation.to_string())
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Unauthorized")
}

fn rate_limited() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, "Too many requests")
}

fn server_error() -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}

/// 200 with no body, for the endpoints whose spec declares no content.
fn empty_ok() -> Response {
    (StatusCode::OK, Body::empty()).into_response()
}

fn data(value: Value) -> Response {
    support::json(StatusCode::OK, &json!({ "data": value }))
}

/// Demo customers' plans start from 2024-01-01.
const FIRST_STARTED: i64 = 1_704_067_200;

impl MetronomeEmulator {
    /// An account holding `config.seed` demo customers: a third with an
    /// active plan, a third whose plan has ended (churned), a third with
    /// none.
    pub fn new(config: MetronomeConfig) -> Self {
        let mut state = State {
            customers: Vec::new(),
            plans: Vec::new(),
            rng: StdRng::seed_from_u64(config.rng_seed),
        };
        for name in ["Standard", "Growth", "Enterprise"] {
            let id = state.new_id();
            state.plans.push(Plan { id, name });
        }
        for index in 0..config.seed {
            let customer = demo_customer(index, &mut state);
            state.customers.push(customer);
        }
        let policy = KeyedPolicy::uniform(
            config.rate_limit.map(RateLimit::from),
            rate_limited,
            server_error,
        );
        Self {
            shared: Arc::new(Shared {
                keys: KeyCheck {
                    keys: Arc::new(config.api_keys.into_iter().collect()),
                    unauthorized,
                },
                state: RwLock::new(state),
                log: RequestLog::new(),
                limits: Limits::new(
                    config.faults,
                    config.rng_seed.rotate_left(32) ^ 0x3E7A,
                    policy,
                ),
            }),
        }
    }

    /// The API, with request logging, authentication and limits, ready to
    /// [`crate::server::serve`].
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/v1/customers", get(list_customers).post(create_customer))
            .route("/v1/customers/archive", post(archive_customer))
            .route("/v1/customers/{customer_id}", get(retrieve_customer))
            .route("/v1/customers/{customer_id}/setName", post(set_name))
            .route("/v1/customers/{customer_id}/setIngestAliases", post(set_ingest_aliases))
            .route("/v1/customers/{customer_id}/updateConfig", post(update_config))
            .route("/v1/customers/{customer_id}/plans", get(list_plans))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(Arc::clone(&self.shared));
        support::wrap_routes(
            routes,
            JsonCheck {
                spec: &spec::METRONOME,
                refuse: refused,
                broken: |message| error(StatusCode::INTERNAL_SERVER_ERROR, message),
            },
            &self.shared.limits,
            self.shared.keys.clone(),
            &self.shared.log,
        )
    }

    /// Customers not archived.
    pub fn customer_count(&self) -> usize {
        self.shared.read().customers.iter().filter(|customer| !customer.archived).count()
    }

    /// Every customer not archived, oldest first, as the API renders them.
    pub fn customers(&self) -> Vec<Value> {
        self.shared
            .read()
            .customers
            .iter()
            .filter(|customer| !customer.archived)
            .map(Customer::render)
            .collect()
    }

    /// The customer with `id`, archived or not, as `GET
    /// /v1/customers/{id}` renders its `data`.
    pub fn customer(&self, id: &str) -> Option<Value> {
        self.shared.read().customer(id).map(Customer::render)
    }

    /// Whether the customer with `id` is archived; `None` if unknown.
    pub fn is_archived(&self, id: &str) -> Option<bool> {
        self.shared.read().customer(id).map(|customer| customer.archived)
    }

    /// Ids of the customers that have a plan active now.
    pub fn customers_with_active_plan(&self) -> Vec<String> {
        let now = support::unix_now();
        self.shared
            .read()
            .customers
            .iter()
            .filter(|customer| customer.plans.iter().any(|plan| plan.is_active_at(now)))
            .map(|customer| customer.id.clone())
            .collect()
    }

    /// The log of every request this emulator answered.
    pub fn requests(&self) -> RequestLog {
        self.shared.log.clone()
    }

    /// The rate limiter and fault injector, for their counters.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Requests refused with 429 for going over
    /// [`MetronomeConfig::rate_limit`]; injected 429s are not counted.
    pub fn limited_count(&self) -> u64 {
        self.shared.limits.limited_count()
    }
}

fn demo_customer(index: usize, state: &mut State) -> Customer {
    let (name, email) = support::demo_person(index, "example.com");
    let id = state.new_id();
    let started = FIRST_STARTED + i64::try_from(index).unwrap_or(0) * 86_400;
    let plans = match index % 3 {
        2 => Vec::new(),
        kind => {
            let plan = state.plans[state.rng.random_range(0..state.plans.len())].clone();
            vec![CustomerPlan {
                id: state.new_id(),
                plan_id: plan.id,
                plan_name: plan.name.to_owned(),
                starting_on: started,
                // Churned customers' plans ended 90 days in.
                ending_before: (kind == 1).then_some(started + 90 * 86_400),
            }]
        }
    };
    let salesforce_account_id =
        state.rng.random_bool(0.5).then(|| format!("0015500001{:08X}", state.rng.random::<u32>()));
    Customer {
        id,
        external_id: email.clone(),
        ingest_aliases: vec![email],
        name,
        salesforce_account_id,
        custom_fields: Map::new(),
        archived: false,
        plans,
    }
}

type SharedState = AxumState<Arc<Shared>>;

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found")
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(error(StatusCode::BAD_REQUEST, "Request body must be a JSON object")),
    }
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(at, c)| match at {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn check_customer_id(id: &str) -> Result<(), Response> {
    if is_uuid(id) {
        Ok(())
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            &format!("{id} is not a valid customer ID (expected a UUID)"),
        ))
    }
}

fn customer_not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("Customer not found: {id}"))
}

fn string_field(fields: &Map<String, Value>, name: &str) -> Result<Option<String>, Response> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(error(StatusCode::BAD_REQUEST, &format!("{name} must be a string"))),
    }
}

fn alias_list(fields: &Map<String, Value>) -> Result<Option<Vec<String>>, Response> {
    let Some(value) = fields.get("ingest_aliases") else {
        return Ok(None);
    };
    let invalid = || {
        error(
            StatusCode::BAD_REQUEST,
            "ingest_aliases must be an array of 1 to 300 strings of 1 to 128 characters",
        )
    };
    let Value::Array(items) = value else {
        return Err(invalid());
    };
    if items.len() > MAX_ALIASES {
        return Err(invalid());
    }
    let mut aliases: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::String(alias) if (1..=MAX_ALIAS_LENGTH).contains(&alias.chars().count()) => {
                if !aliases.contains(alias) {
                    aliases.push(alias.clone());
                }
            }
            _ => return Err(invalid()),
        }
    }
    Ok(Some(aliases))
}

fn alias_conflict(alias: &str) -> Response {
    error(StatusCode::CONFLICT, &format!("A customer with ingest alias {alias} already exists"))
}

/// Where a page starts: after the customer at this position.
fn parse_cursor(pairs: &[(String, String)]) -> Result<Option<usize>, Response> {
    let Some(cursor) = query_value(pairs, "next_page") else {
        return Ok(None);
    };
    cursor
        .strip_prefix("mtr_page_")
        .and_then(|hex| usize::from_str_radix(hex, 16).ok())
        .map(Some)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "Invalid next_page cursor"))
}

fn cursor_after(position: usize) -> String {
    format!("mtr_page_{position:08x}")
}

fn parse_limit(pairs: &[(String, String)]) -> Result<usize, Response> {
    match query_value(pairs, "limit") {
        None => Ok(MAX_PAGE_SIZE),
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => Ok(limit),
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be an integer from 1 to {MAX_PAGE_SIZE}"),
            )),
        },
    }
}

/// One page of `items` (position, rendered) after the cursor.
fn page(
    items: impl Iterator<Item = (usize, Value)>,
    after: Option<usize>,
    limit: usize,
) -> Response {
    let mut data = Vec::with_capacity(limit);
    let mut next_page = Value::Null;
    for (position, item) in
        items.filter(|(position, _)| after.is_none_or(|after| *position > after))
    {
        if data.len() == limit {
            // There is more: point after the last one returned.
            if let Some((last, _)) = data.last() {
                next_page = cursor_after(*last).into();
            }
            break;
        }
        data.push((position, item));
    }
    let data: Vec<Value> = data.into_iter().map(|(_, item)| item).collect();
    support::json(StatusCode::OK, &json!({ "data": data, "next_page": next_page }))
}

/// `GET /v1/customers`.
async fn list_customers(AxumState(shared): SharedState, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let (limit, after) = match (parse_limit(&pairs), parse_cursor(&pairs)) {
        (Ok(limit), Ok(after)) => (limit, after),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let only_archived = match query_value(&pairs, "only_archived") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return error(StatusCode::BAD_REQUEST, "only_archived must be a boolean"),
    };
    let ingest_alias = query_value(&pairs, "ingest_alias");
    // Repeated `customer_ids=…`, the description's array in OpenAPI's
    // default (exploded form) style; a comma list is one id, as it would
    // be at Metronome, so a client that sends one finds nothing here too.
    let ids: Vec<&str> = pairs
        .iter()
        .filter(|(key, _)| key == "customer_ids")
        .map(|(_, value)| value.as_str())
        .filter(|id| !id.is_empty())
        .collect();
    if ids.len() > MAX_CUSTOMER_IDS {
        return error(StatusCode::BAD_REQUEST, "customer_ids accepts at most 100 ids");
    }
    let state = shared.read();
    let matching = state
        .customers
        .iter()
        .enumerate()
        .filter(|(_, customer)| customer.archived == only_archived)
        .filter(|(_, customer)| {
            ingest_alias.is_none_or(|alias| customer.ingest_aliases.iter().any(|a| a == alias))
        })
        .filter(|(_, customer)| ids.is_empty() || ids.contains(&customer.id.as_str()))
        .map(|(position, customer)| (position, customer.render()));
    page(matching, after, limit)
}

/// `POST /v1/customers`.
async fn create_customer(AxumState(shared): SharedState, body: Bytes) -> Response {
    let fields = match parse_object(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let name = match string_field(&fields, "name") {
        Ok(Some(name)) => name,
        Ok(None) => return error(StatusCode::BAD_REQUEST, "name is required"),
        Err(response) => return response,
    };
    let external_id = match string_field(&fields, "external_id") {
        Ok(Some(id)) if !(1..=MAX_ALIAS_LENGTH).contains(&id.chars().count()) => {
            return error(StatusCode::BAD_REQUEST, "external_id must be 1 to 128 characters");
        }
        Ok(id) => id,
        Err(response) => return response,
    };
    let mut aliases = match alias_list(&fields) {
        Ok(aliases) => aliases.unwrap_or_default(),
        Err(response) => return response,
    };
    if let Some(external_id) = &external_id
        && !aliases.contains(external_id)
    {
        aliases.insert(0, external_id.clone());
    }
    if fields.get("billing_config").is_some_and(|config| !config.is_object()) {
        return error(StatusCode::BAD_REQUEST, "billing_config must be an object");
    }
    let mut state = shared.write();
    if let Some(alias) = state.taken_alias(&aliases, None) {
        return alias_conflict(alias);
    }
    let id = state.new_id();
    let customer = Customer {
        external_id: external_id.or_else(|| aliases.first().cloned()).unwrap_or_else(|| id.clone()),
        id,
        ingest_aliases: aliases,
        name,
        salesforce_account_id: None,
        custom_fields: Map::new(),
        archived: false,
        plans: Vec::new(),
    };
    let rendered = customer.render_short();
    state.customers.push(customer);
    data(rendered)
}

/// `GET /v1/customers/{customer_id}`.
async fn retrieve_customer(AxumState(shared): SharedState, Path(id): Path<String>) -> Response {
    if let Err(response) = check_customer_id(&id) {
        return response;
    }
    match shared.read().customer(&id) {
        Some(customer) => data(customer.render()),
        None => customer_not_found(&id),
    }
}

/// Runs `change` on the live customer `id`, answering for the usual
/// failures (bad id, unknown, archived).
fn with_live_customer(
    shared: &Shared,
    id: &str,
    change: impl FnOnce(&mut State) -> Response,
) -> Response {
    if let Err(response) = check_customer_id(id) {
        return response;
    }
    let mut state = shared.write();
    match state.customer(id) {
        None => customer_not_found(id),
        Some(customer) if customer.archived => {
            error(StatusCode::BAD_REQUEST, &format!("Customer {id} is archived"))
        }
        Some(_) => change(&mut state),
    }
}

/// `POST /v1/customers/{customer_id}/setName`.
async fn set_name(AxumState(shared): SharedState, Path(id): Path<String>, body: Bytes) -> Response {
    let name = match parse_object(&body).map(|fields| string_field(&fields, "name")) {
        Ok(Ok(Some(name))) => name,
        Ok(Ok(None)) => return error(StatusCode::BAD_REQUEST, "name is required"),
        Ok(Err(response)) | Err(response) => return response,
    };
    with_live_customer(&shared, &id, |state| match state.customer_mut(&id) {
        Some(customer) => {
            customer.name = name;
            data(customer.render_short())
        }
        None => customer_not_found(&id),
    })
}

/// `POST /v1/customers/{customer_id}/setIngestAliases`: replaces the set.
async fn set_ingest_aliases(
    AxumState(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let aliases = match parse_object(&body).map(|fields| alias_list(&fields)) {
        Ok(Ok(Some(aliases))) => aliases,
        Ok(Ok(None)) => return error(StatusCode::BAD_REQUEST, "ingest_aliases is required"),
        Ok(Err(response)) | Err(response) => return response,
    };
    with_live_customer(&shared, &id, |state| {
        if let Some(alias) = state.taken_alias(&aliases, Some(&id)) {
            return alias_conflict(alias);
        }
        if let Some(customer) = state.customer_mut(&id) {
            customer.ingest_aliases = aliases;
        }
        empty_ok()
    })
}

/// `POST /v1/customers/{customer_id}/updateConfig`.
async fn update_config(
    AxumState(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = match parse_object(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let salesforce_account_id = match string_field(&fields, "salesforce_account_id") {
        Ok(value) => value,
        Err(response) => return response,
    };
    let present = fields.contains_key("salesforce_account_id");
    with_live_customer(&shared, &id, |state| {
        if let Some(customer) = state.customer_mut(&id)
            && present
        {
            customer.salesforce_account_id = salesforce_account_id;
        }
        empty_ok()
    })
}

/// `POST /v1/customers/archive` with `{"id"}`: irreversible.
async fn archive_customer(AxumState(shared): SharedState, body: Bytes) -> Response {
    let id = match parse_object(&body).map(|fields| string_field(&fields, "id")) {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => return error(StatusCode::BAD_REQUEST, "id is required"),
        Ok(Err(response)) | Err(response) => return response,
    };
    if let Err(response) = check_customer_id(&id) {
        return response;
    }
    let mut state = shared.write();
    match state.customer_mut(&id) {
        None => customer_not_found(&id),
        Some(customer) if customer.archived => {
            error(StatusCode::BAD_REQUEST, &format!("Customer {id} is already archived"))
        }
        Some(customer) => {
            customer.archived = true;
            data(json!({ "id": id }))
        }
    }
}

/// `GET /v1/customers/{customer_id}/plans`, newest first.
async fn list_plans(
    AxumState(shared): SharedState,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(response) = check_customer_id(&id) {
        return response;
    }
    let pairs = query_pairs(query.as_deref());
    let (limit, after) = match (parse_limit(&pairs), parse_cursor(&pairs)) {
        (Ok(limit), Ok(after)) => (limit, after),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let state = shared.read();
    let Some(customer) = state.customer(&id) else {
        return customer_not_found(&id);
    };
    let plans =
        customer.plans.iter().rev().enumerate().map(|(position, plan)| (position, plan.render()));
    page(plans, after, limit)
}
