//! An emulator of GrowPanel's raw customer data API (`/data/customers`),
//! faithful to `shared/vendor-apis/growpanel/openapi.json` (a snapshot of
//! the spec GrowPanel serves) and, where the spec is silent, to the guide in
//! `shared/seeds/growpanel-data-customers-api.txt`.
//!
//! What it honours:
//!
//! - Bearer auth; 401 `{"error": "Unauthorized"}`;
//! - every request is checked against the description
//!   (`sandbox/specs/growpanel.json`) before it is served: a type, a
//!   missing required field or parameter is refused with 400
//!   `{"error": "name must be string"}`, as the description gives
//!   validation failures 400 and `{"error"}`. So `{"email": null}` and a
//!   custom variable that is a number or a boolean are refused, as
//!   GrowPanel refuses them; fields the description does not list are
//!   allowed (it leaves its objects open);
//! - `GET /data/customers?source=<data source>&limit=N`, answering
//!   `{"result": {"count", "list"}}`; `source` is required (400 without it,
//!   404 for a data source the account does not have). The spec gives this
//!   endpoint no offset or cursor: `limit` is the only paging there is;
//! - `GET /data/customers/{id}?source=…`, the bare record;
//! - `POST /data/customers` with one object or an array (bulk), upserting
//!   by `id`. A row missing `id`, `created_date`, `country` or
//!   `data_source` fails the whole request with 400 naming the field (the
//!   spec marks them required in the request schema; the emulator refuses
//!   them empty too); rows that are
//!   well-formed but invalid (no name or email, a country that is not two
//!   letters, an unknown data source) come back with `export_status:
//!   "error"` and `export_error`, the others with `export_status:
//!   "success"`, in `{"result": [...]}` as the spec says;
//! - `PUT /data/customers/{id}` changes only `name`, `email` and
//!   `custom_variables` (each replaced whole, the map too: neither source
//!   says it merges); anything else in the body is ignored, as the spec's
//!   request schema has only those three;
//! - `DELETE /data/customers/{id}`, permanent;
//! - the published per-method limits (GET 300/min, POST 100/min, PUT
//!   100/min, DELETE 50/min, per key) when
//!   [`GrowPanelConfig::enforce_rate_limits`] is on, and fault injection,
//!   through [`crate::limits`].
//!
//! Where the spec and the guide disagree the spec wins, and where a shape
//! can carry both without contradiction it does, so a connector written to
//! either works: errors are `{"error": m, "message": m}` (the spec's
//! schema requires `error`; weft's design notes name `message`); PUT
//! answers `{"success": true, "id", "result": {"id", "updated_fields"}}`
//! and DELETE `{"success": true, "id", "result": {"id", "deleted": true}}`
//! (spec envelope plus the guide's `result`). POST answers 200 with the
//! spec's per-row array, not the guide's 201 `{"result": {"count", "list"}}`.
//!
//! Left out: the analytics endpoints (`/customers`, MRR, reports) and the
//! other `/data/*` resources (invoices, plans, data sources).

#![expect(
    clippy::result_large_err,
    reason = "an `Err` here is the finished vendor answer (a `Response`), built \
              once per refused request and returned as is; boxing it buys nothing"
)]

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::limits::{FaultConfig, Limits, RateLimit};
use crate::requests::RequestLog;
use crate::spec::{self, Violation, json_requests::JsonCheck};
use crate::support::{self, KeyCheck, KeyedPolicy, query_pairs, query_value};

/// The API key `weft sandbox` accepts. Not a real GrowPanel key.
pub const SANDBOX_API_KEY: &str = "gp_test_weft_sandbox_7Qm2xKc9LwZr";

/// The data source demo customers belong to.
pub const DEMO_DATA_SOURCE: &str = "ds_weft_demo";

/// GrowPanel's published limits, requests per minute per key, by method.
pub const PUBLISHED_RATE_LIMITS: [(&str, u32); 4] =
    [("GET", 300), ("POST", 100), ("PUT", 100), ("DELETE", 50)];

/// Fields a customer row may carry; anything else in a POST is dropped.
const CUSTOMER_FIELDS: [&str; 13] = [
    "id",
    "name",
    "email",
    "created_date",
    "country",
    "state",
    "currency",
    "status",
    "trial_started",
    "paid_started",
    "cancel_date",
    "custom_variables",
    "data_source",
];

/// Fields the spec requires in every POSTed row, in the order checked.
const REQUIRED_FIELDS: [&str; 4] = ["id", "created_date", "country", "data_source"];

/// Fields `PUT /data/customers/{id}` may change.
const UPDATABLE_FIELDS: [&str; 3] = ["name", "email", "custom_variables"];

/// How a [`GrowPanelEmulator`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowPanelConfig {
    /// API keys the emulator accepts; anything else gets a 401.
    pub api_keys: Vec<String>,
    /// Data sources the account has; the first holds the demo customers.
    pub data_sources: Vec<String>,
    /// Demo customers to create at start.
    pub seed: usize,
    /// Seed for every random choice: demo data and injected faults.
    pub rng_seed: u64,
    /// Faults to inject; none by default.
    pub faults: FaultConfig,
    /// Enforce [`PUBLISHED_RATE_LIMITS`] per key; off by default.
    pub enforce_rate_limits: bool,
}

impl Default for GrowPanelConfig {
    /// Accepts [`SANDBOX_API_KEY`], has [`DEMO_DATA_SOURCE`] and no
    /// customers, no limits or faults.
    fn default() -> Self {
        Self {
            api_keys: vec![SANDBOX_API_KEY.to_owned()],
            data_sources: vec![DEMO_DATA_SOURCE.to_owned()],
            seed: 0,
            rng_seed: 0,
            faults: FaultConfig::default(),
            enforce_rate_limits: false,
        }
    }
}

/// One emulated GrowPanel account. Clones share it.
#[derive(Clone)]
pub struct GrowPanelEmulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for GrowPanelEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrowPanelEmulator")
            .field("customers", &self.customer_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

struct Shared {
    keys: KeyCheck,
    data_sources: HashSet<String>,
    state: RwLock<Vec<Map<String, Value>>>,
    log: RequestLog,
    limits: Limits,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Vec<Map<String, Value>>> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Vec<Map<String, Value>>> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A GrowPanel error answer: the spec's `error` and the `message` weft's
/// notes expect, both holding the same text.
fn error(status: StatusCode, message: &str) -> Response {
    support::json(status, &json!({ "error": message, "message": message }))
}

/// A request GrowPanel's description refuses: 400 with `{"error"}`, the
/// status and body its description gives validation failures (`GET
/// /data/customers` "Missing source parameter"; no 422 appears in it).
fn refused(violation: &Violation) -> Response {
    error(StatusCode::BAD_REQUEST, &violation.to_string())
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Unauthorized")
}

fn rate_limited() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, "Rate limit exceeded")
}

fn server_error() -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}

fn published_limit(method: &Method) -> Option<(&'static str, RateLimit)> {
    PUBLISHED_RATE_LIMITS
        .iter()
        .find(|(name, _)| *name == method.as_str())
        .map(|&(name, requests)| (name, RateLimit { requests, per: Duration::from_secs(60) }))
}

impl GrowPanelEmulator {
    /// An account holding `config.seed` demo customers.
    pub fn new(config: GrowPanelConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.rng_seed);
        let source =
            config.data_sources.first().cloned().unwrap_or_else(|| DEMO_DATA_SOURCE.to_owned());
        let customers =
            (0..config.seed).map(|index| demo_customer(index, &source, &mut rng)).collect();
        let policy = KeyedPolicy {
            limit_for: if config.enforce_rate_limits {
                Box::new(published_limit)
            } else {
                Box::new(|_| None)
            },
            too_many_requests: rate_limited,
            server_error,
        };
        let mut data_sources: HashSet<String> = config.data_sources.into_iter().collect();
        data_sources.insert(source);
        Self {
            shared: Arc::new(Shared {
                keys: KeyCheck {
                    keys: Arc::new(config.api_keys.into_iter().collect()),
                    unauthorized,
                },
                data_sources,
                state: RwLock::new(customers),
                log: RequestLog::new(),
                limits: Limits::new(
                    config.faults,
                    config.rng_seed.rotate_left(32) ^ 0x6A0E,
                    policy,
                ),
            }),
        }
    }

    /// The API, with request logging, authentication and limits, ready to
    /// [`crate::server::serve`].
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/data/customers", get(list_customers).post(create_customers))
            .route(
                "/data/customers/{id}",
                get(retrieve_customer).put(update_customer).delete(delete_customer),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(Arc::clone(&self.shared));
        support::wrap_routes(
            routes,
            JsonCheck {
                spec: &spec::GROWPANEL,
                refuse: refused,
                broken: |message| error(StatusCode::INTERNAL_SERVER_ERROR, message),
            },
            &self.shared.limits,
            self.shared.keys.clone(),
            &self.shared.log,
        )
    }

    /// Customers in the account, every data source.
    pub fn customer_count(&self) -> usize {
        self.shared.read().len()
    }

    /// Every customer, oldest first, as `GET /data/customers/{id}` renders
    /// them.
    pub fn customers(&self) -> Vec<Value> {
        self.shared.read().iter().map(|customer| Value::Object(customer.clone())).collect()
    }

    /// The customer with `id`, if the account has it.
    pub fn customer(&self, id: &str) -> Option<Value> {
        self.shared
            .read()
            .iter()
            .find(|customer| has_id(customer, id))
            .map(|customer| Value::Object(customer.clone()))
    }

    /// Stores a customer directly, for test setup, replacing one with the
    /// same `id`.
    ///
    /// # Panics
    ///
    /// If `customer` is not an object with a string `id`: a mistake in the
    /// calling test.
    pub fn insert_customer(&self, customer: Value) {
        let Value::Object(customer) = customer else {
            panic!("insert_customer: not an object");
        };
        let id = customer
            .get("id")
            .and_then(Value::as_str)
            .expect("insert_customer: needs a string id")
            .to_owned();
        let mut state = self.shared.write();
        match state.iter_mut().find(|existing| has_id(existing, &id)) {
            Some(existing) => *existing = customer,
            None => state.push(customer),
        }
    }

    /// The log of every request this emulator answered.
    pub fn requests(&self) -> RequestLog {
        self.shared.log.clone()
    }

    /// The rate limiter and fault injector, for their counters.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Requests refused with 429 for going over a published limit.
    pub fn limited_count(&self) -> u64 {
        self.shared.limits.limited_count()
    }
}

fn has_id(customer: &Map<String, Value>, id: &str) -> bool {
    customer.get("id").and_then(Value::as_str) == Some(id)
}

fn in_source(customer: &Map<String, Value>, source: &str) -> bool {
    customer.get("data_source").and_then(Value::as_str) == Some(source)
}

type SharedState = State<Arc<Shared>>;

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not found")
}

/// The required `source` query parameter, checked against the account.
fn source_param(shared: &Shared, pairs: &[(String, String)]) -> Result<String, Response> {
    let Some(source) = query_value(pairs, "source").filter(|source| !source.is_empty()) else {
        return Err(error(StatusCode::BAD_REQUEST, "Missing required query parameter: source"));
    };
    if !shared.data_sources.contains(source) {
        return Err(error(StatusCode::NOT_FOUND, &format!("Data source not found: {source}")));
    }
    Ok(source.to_owned())
}

/// `GET /data/customers?source=…&limit=…`.
async fn list_customers(State(shared): SharedState, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let source = match source_param(&shared, &pairs) {
        Ok(source) => source,
        Err(response) => return response,
    };
    let limit = match query_value(&pairs, "limit") {
        None => usize::MAX,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) => limit,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("Invalid limit: {text} is not a number"),
                );
            }
        },
    };
    let list: Vec<Value> = shared
        .read()
        .iter()
        .filter(|customer| in_source(customer, &source))
        .take(limit)
        .map(|customer| Value::Object(customer.clone()))
        .collect();
    support::json(StatusCode::OK, &json!({ "result": { "count": list.len(), "list": list } }))
}

/// `GET /data/customers/{id}?source=…`.
async fn retrieve_customer(
    State(shared): SharedState,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let source = match source_param(&shared, &pairs) {
        Ok(source) => source,
        Err(response) => return response,
    };
    let state = shared.read();
    match state.iter().find(|customer| has_id(customer, &id) && in_source(customer, &source)) {
        Some(customer) => support::json(StatusCode::OK, &Value::Object(customer.clone())),
        None => error(StatusCode::NOT_FOUND, &format!("Customer not found: {id}")),
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Response> {
    serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "Request body must be valid JSON"))
}

/// The fields of a row GrowPanel keeps. Types and required fields were
/// checked against the description before the handler ran; what is left
/// is the emulator's own rule that a required field is not empty (an
/// import cannot key or place a row by `""`).
fn kept_fields(row: &Value, position: Option<usize>) -> Result<Map<String, Value>, Response> {
    let at = position.map_or(String::new(), |index| format!("[{index}]."));
    let Value::Object(fields) = row else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            &format!("{}the row must be object", at.trim_end_matches('.')),
        ));
    };
    for name in REQUIRED_FIELDS {
        if fields.get(name).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(error(StatusCode::BAD_REQUEST, &format!("{at}{name} must not be empty")));
        }
    }
    Ok(fields
        .iter()
        .filter(|(name, _)| CUSTOMER_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect())
}

/// Checks a well-formed row's content, as GrowPanel's importer does per row.
fn row_problem(shared: &Shared, row: &Map<String, Value>) -> Option<String> {
    let text = |name: &str| row.get(name).and_then(Value::as_str).filter(|value| !value.is_empty());
    if text("name").is_none() && text("email").is_none() {
        return Some("Email or name is required".to_owned());
    }
    let country = text("country").unwrap_or_default();
    if country.len() != 2 || !country.chars().all(|c| c.is_ascii_alphabetic()) {
        return Some(format!("Invalid country: {country} (expected an ISO 3166 alpha-2 code)"));
    }
    let source = text("data_source").unwrap_or_default();
    if !shared.data_sources.contains(source) {
        return Some(format!("Data source not found: {source}"));
    }
    None
}

/// `POST /data/customers`: one object or an array, upserted by `id`.
async fn create_customers(State(shared): SharedState, body: Bytes) -> Response {
    let body = match parse_json(&body) {
        Ok(body) => body,
        Err(response) => return response,
    };
    let rows: Vec<Map<String, Value>> = match &body {
        Value::Array(rows) => {
            let mut checked = Vec::with_capacity(rows.len());
            for (index, row) in rows.iter().enumerate() {
                match kept_fields(row, Some(index)) {
                    Ok(row) => checked.push(row),
                    Err(response) => return response,
                }
            }
            checked
        }
        row => match kept_fields(row, None) {
            Ok(row) => vec![row],
            Err(response) => return response,
        },
    };
    let mut results = Vec::with_capacity(rows.len());
    let mut state = shared.write();
    for row in rows {
        let mut echoed = row.clone();
        if let Some(problem) = row_problem(&shared, &row) {
            echoed.insert("export_status".into(), "error".into());
            echoed.insert("export_error".into(), problem.into());
        } else {
            let id = row.get("id").and_then(Value::as_str).unwrap_or_default();
            match state.iter_mut().find(|existing| has_id(existing, id)) {
                Some(existing) => existing.extend(row),
                None => state.push(row),
            }
            echoed.insert("export_status".into(), "success".into());
        }
        results.push(Value::Object(echoed));
    }
    support::json(StatusCode::OK, &json!({ "result": results }))
}

/// `PUT /data/customers/{id}`: only name, email and custom variables.
async fn update_customer(
    State(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let Value::Object(fields) = (match parse_json(&body) {
        Ok(body) => body,
        Err(response) => return response,
    }) else {
        return error(StatusCode::BAD_REQUEST, "Request body must be a JSON object");
    };
    // Types were checked against the description; what else the body
    // holds is ignored, as the description lists only these three.
    let updated: Vec<&str> =
        UPDATABLE_FIELDS.into_iter().filter(|name| fields.contains_key(*name)).collect();
    let mut state = shared.write();
    let Some(customer) = state.iter_mut().find(|customer| has_id(customer, &id)) else {
        return error(StatusCode::NOT_FOUND, &format!("Customer not found: {id}"));
    };
    // Field by field: a `custom_variables` map sent replaces the stored
    // one, as `name` and `email` are replaced.
    for &name in &updated {
        customer.insert(name.to_owned(), fields[name].clone());
    }
    support::json(
        StatusCode::OK,
        &json!({
            "success": true,
            "id": id,
            "result": { "id": id, "updated_fields": updated },
        }),
    )
}

/// `DELETE /data/customers/{id}`: permanent.
async fn delete_customer(State(shared): SharedState, Path(id): Path<String>) -> Response {
    let mut state = shared.write();
    let Some(position) = state.iter().position(|customer| has_id(customer, &id)) else {
        return error(StatusCode::NOT_FOUND, &format!("Customer not found: {id}"));
    };
    state.remove(position);
    support::json(
        StatusCode::OK,
        &json!({
            "success": true,
            "id": id,
            "result": { "id": id, "deleted": true },
        }),
    )
}

/// Demo customers are created from 2024-01-01 on, a day or so apart.
const FIRST_CREATED: i64 = 1_704_067_200;

fn demo_customer(index: usize, data_source: &str, rng: &mut StdRng) -> Map<String, Value> {
    const COUNTRIES: [&str; 8] = ["US", "GB", "DE", "FR", "CA", "AU", "DK", "NL"];
    const CURRENCIES: [&str; 3] = ["USD", "EUR", "GBP"];
    let (name, email) = support::demo_person(index, "example.com");
    let offset = i64::try_from(index).unwrap_or(0) * 86_400 + rng.random_range(0..3_600);
    let created = FIRST_CREATED + offset;
    let trial_started = created;
    let paid_started = created + 14 * 86_400;
    let roll: f64 = rng.random();
    let (status, cancel_date) = if roll < 0.2 {
        ("trial", Value::Null)
    } else if roll < 0.35 {
        ("churned", Value::String(support::rfc3339(paid_started + 90 * 86_400)))
    } else {
        ("active", Value::Null)
    };
    let mut customer = Map::new();
    customer.insert("id".into(), format!("cus_demo{index:05}").into());
    customer.insert("name".into(), name.into());
    customer.insert("email".into(), email.into());
    customer.insert("created_date".into(), support::rfc3339(created).into());
    customer.insert("country".into(), (*COUNTRIES.choose(rng).unwrap_or(&"US")).into());
    customer.insert("trial_started".into(), support::rfc3339(trial_started).into());
    customer.insert(
        "paid_started".into(),
        if status == "trial" { Value::Null } else { support::rfc3339(paid_started).into() },
    );
    customer.insert("cancel_date".into(), cancel_date);
    customer.insert("status".into(), status.into());
    customer.insert("currency".into(), (*CURRENCIES.choose(rng).unwrap_or(&"USD")).into());
    let segment = if rng.random_bool(0.3) { "enterprise" } else { "smb" };
    customer.insert("custom_variables".into(), json!({ "segment": segment }));
    customer.insert("data_source".into(), data_source.into());
    customer
}
