//! An emulator of Baremetrics' sources, customers and subscriptions API,
//! faithful to `shared/vendor-apis/baremetrics/openapi.yaml` (Baremetrics'
//! reference as processed by Konfig) and, where that is silent, to the
//! guide in `shared/seeds/baremetrics-user-management-api.txt`.
//!
//! The base URL is the host root; every path starts with `/v1`.
//!
//! What it honours:
//!
//! - Bearer auth; 401 `{"error": "Unauthorized"}`;
//! - every request checked against the description
//!   (`sandbox/specs/baremetrics.json`, with `created` corrected to the
//!   Unix timestamp its text describes) before it is served, refused with
//!   400 `{"error": "name must be string"}`; a `null` where it says string
//!   is refused too. Fields and parameters it does not list (`attributes`,
//!   `page`, `per_page`) pass, as OpenAPI leaves them allowed;
//! - `GET /v1/sources`: a Baremetrics-native source ([`NATIVE_SOURCE_ID`],
//!   provider `baremetrics`, `provider_id: null`) that takes writes, and a
//!   Stripe-synced one ([`STRIPE_SOURCE_ID`], provider `stripe`) that is
//!   read-only: creating, updating or deleting there answers 400
//!   `{"error": …}`, the only error status and shape the spec gives those
//!   operations (`SourceCreateCustomerRecord400Response` and friends);
//! - customers keyed by your `oid`: `GET/POST /v1/{source_id}/customers`,
//!   `GET/PUT/DELETE /v1/{source_id}/customers/{oid}`, wrapped as
//!   `{"customers": […], "meta": {"pagination": …}}` and `{"customer": …}`;
//! - `PUT` replaces the record: `name`, `email`, `notes` and `attributes`
//!   left out of the body are cleared (`created` is kept unless given);
//! - `DELETE` is permanent and takes the customer's subscriptions with it;
//!   it answers 202 `{}` as the spec says (the guide says 204, the spec
//!   wins);
//! - `page` / `per_page` (default 30, at most 200: larger values are
//!   clamped) with `meta.pagination` `{has_more, page, per_page}` as in the
//!   spec's examples, plus the guide's `total`; pages count from 0, as the
//!   spec's examples answer `"page": 0` to a first request;
//! - `search` (oid, email, notes, name), `sort` (`created` or `ltv`) and
//!   `order` on the customer list;
//! - `GET /v1/{source_id}/subscriptions` filtered by `customer_oid`,
//!   newest first unless `order=asc`;
//! - attribute keys must pre-exist: `GET /v1/attributes/fields` lists the
//!   account's ([`BaremetricsConfig::attribute_fields`]), and a customer
//!   write naming any other key in `attributes` is a 400;
//! - a configured, undisclosed limit answering 429 with no `Retry-After`,
//!   and fault injection, through [`crate::limits`].
//!
//! Not in the spec, so chosen here: an unknown source or customer is 404
//! `{"error": …}`; a duplicate `oid` on create is 400; `created` is taken
//! as a Unix timestamp (an integer), not the `date-time` string the
//! Konfig-processed schema claims (the extract's erratum says why). Left out: plans, charges, events,
//! metrics, segments, annotations, goals, users, cancellation insights,
//! and the writes to subscriptions.

#![expect(
    clippy::result_large_err,
    reason = "an `Err` here is the finished vendor answer (a `Response`), built \
              once per refused request and returned as is; boxing it buys nothing"
)]

#[cfg(test)]
mod tests;

use std::cmp::Ordering;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::limits::{FaultConfig, Limits, RateLimit};
use crate::requests::RequestLog;
use crate::spec::{self, Violation, json_requests::JsonCheck};
use crate::support::{self, KeyCheck, KeyedPolicy, query_pairs, query_value};

/// The API key `weft sandbox` accepts. Not a real Baremetrics key.
pub const SANDBOX_API_KEY: &str = "bm_test_weft_sandbox_2f8e4a71c0d9";

/// The Baremetrics-native source: the one that takes writes.
pub const NATIVE_SOURCE_ID: &str = "src_weft_native";

/// The Stripe-synced source: read-only through the API.
pub const STRIPE_SOURCE_ID: &str = "src_weft_stripe";

/// Page size when `per_page` is not given.
pub const DEFAULT_PAGE_SIZE: usize = 30;

/// Largest page; a larger `per_page` is clamped to it.
pub const MAX_PAGE_SIZE: usize = 200;

/// How a [`BaremetricsEmulator`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct BaremetricsConfig {
    /// API keys the emulator accepts; anything else gets a 401.
    pub api_keys: Vec<String>,
    /// Demo customers to create at start, alternately in the native and
    /// the Stripe-synced source.
    pub seed: usize,
    /// Seed for every random choice: demo data and injected faults.
    pub rng_seed: u64,
    /// Faults to inject; none by default.
    pub faults: FaultConfig,
    /// Requests allowed per key and period. Baremetrics publishes no
    /// limit, so this stands for the undisclosed one; `None` (the default)
    /// enforces none.
    pub rate_limit: Option<(u32, Duration)>,
    /// Attribute keys defined in the account; customer writes may set only
    /// these.
    pub attribute_fields: Vec<String>,
}

impl Default for BaremetricsConfig {
    /// Accepts [`SANDBOX_API_KEY`], no demo customers, no limits or faults,
    /// attribute keys `plan_tier` and `region`.
    fn default() -> Self {
        Self {
            api_keys: vec![SANDBOX_API_KEY.to_owned()],
            seed: 0,
            rng_seed: 0,
            faults: FaultConfig::default(),
            rate_limit: None,
            attribute_fields: vec!["plan_tier".to_owned(), "region".to_owned()],
        }
    }
}

/// One emulated Baremetrics account. Clones share it.
#[derive(Clone)]
pub struct BaremetricsEmulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for BaremetricsEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BaremetricsEmulator")
            .field("customers", &self.customer_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

struct Shared {
    keys: KeyCheck,
    attribute_fields: Vec<String>,
    state: RwLock<State>,
    log: RequestLog,
    limits: Limits,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    id: &'static str,
    provider: &'static str,
    provider_id: Option<&'static str>,
}

const SOURCES: [Source; 2] = [
    Source { id: NATIVE_SOURCE_ID, provider: "baremetrics", provider_id: None },
    Source { id: STRIPE_SOURCE_ID, provider: "stripe", provider_id: Some("acct_1WeftSandbox0000") },
];

impl Source {
    fn find(id: &str) -> Option<Source> {
        SOURCES.iter().copied().find(|source| source.id == id)
    }

    fn is_writable(self) -> bool {
        self.provider == "baremetrics"
    }
}

struct State {
    customers: Vec<Customer>,
    subscriptions: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq)]
struct Customer {
    source: Source,
    oid: String,
    created: i64,
    email: Option<String>,
    name: Option<String>,
    notes: Option<String>,
    attributes: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    oid: &'static str,
    name: &'static str,
    amount: i64,
}

const PLANS: [Plan; 3] = [
    Plan { oid: "plan_starter", name: "Starter", amount: 2_900 },
    Plan { oid: "plan_growth", name: "Growth", amount: 9_900 },
    Plan { oid: "plan_scale", name: "Scale", amount: 29_900 },
];

#[derive(Debug, Clone, PartialEq)]
struct Subscription {
    source: Source,
    oid: String,
    customer_oid: String,
    plan: Plan,
    started_at: i64,
    canceled_at: Option<i64>,
    quantity: i64,
}

impl Subscription {
    fn is_active(&self) -> bool {
        self.canceled_at.is_none()
    }

    fn months_paid(&self, now: i64) -> i64 {
        let end = self.canceled_at.unwrap_or(now);
        ((end - self.started_at) / (30 * 86_400)).max(1)
    }
}

fn render_plan(source: Source, plan: &Plan) -> Value {
    json!({
        "oid": plan.oid,
        "source_id": source.id,
        "source": source.provider,
        "name": plan.name,
        "interval": "month",
        "interval_count": 1,
        "trial_duration": null,
        "trial_duration_unit": null,
        "created": 1_672_531_200,
        "active": true,
        "setup_fees": 0,
        "amounts": [{ "currency": "USD", "symbol": "$", "symbol_right": false, "amount": plan.amount }],
    })
}

impl State {
    fn customer_index(&self, source: Source, oid: &str) -> Option<usize> {
        self.customers.iter().position(|customer| customer.source == source && customer.oid == oid)
    }

    fn subscriptions_of<'a>(
        &'a self,
        customer: &'a Customer,
    ) -> impl Iterator<Item = &'a Subscription> {
        self.subscriptions.iter().filter(move |subscription| {
            subscription.source == customer.source && subscription.customer_oid == customer.oid
        })
    }

    fn ltv(&self, customer: &Customer, now: i64) -> i64 {
        self.subscriptions_of(customer)
            .map(|s| s.plan.amount * s.quantity * s.months_paid(now))
            .sum()
    }

    /// The short form subscriptions embed.
    fn render_customer_short(&self, customer: &Customer, now: i64) -> Map<String, Value> {
        let display_name = customer
            .name
            .clone()
            .or_else(|| customer.email.clone())
            .unwrap_or_else(|| customer.oid.clone());
        let mut fields = Map::new();
        fields.insert("oid".into(), customer.oid.clone().into());
        fields.insert("source_id".into(), customer.source.id.into());
        fields.insert("source".into(), customer.source.provider.into());
        fields.insert("created".into(), customer.created.into());
        fields.insert("email".into(), customer.email.clone().into());
        fields.insert("name".into(), customer.name.clone().into());
        fields.insert("display_image".into(), Value::Null);
        fields.insert("display_name".into(), display_name.into());
        fields.insert("notes".into(), customer.notes.clone().into());
        fields.insert("ltv".into(), self.ltv(customer, now).into());
        fields
    }

    /// The full form the customer endpoints answer with.
    fn render_customer(&self, customer: &Customer, now: i64) -> Value {
        let mut fields = self.render_customer_short(customer, now);
        let active: Vec<&Subscription> =
            self.subscriptions_of(customer).filter(|s| s.is_active()).collect();
        let ever_subscribed = self.subscriptions_of(customer).next().is_some();
        let mrr: i64 = active.iter().map(|s| s.plan.amount * s.quantity).sum();
        fields.insert("is_active".into(), (!active.is_empty()).into());
        fields.insert("is_canceled".into(), (ever_subscribed && active.is_empty()).into());
        fields.insert("current_mrr".into(), mrr.into());
        fields.insert(
            "current_plans".into(),
            active.iter().map(|s| render_plan(customer.source, &s.plan)).collect::<Vec<_>>().into(),
        );
        fields.insert("attributes".into(), Value::Object(customer.attributes.clone()));
        Value::Object(fields)
    }

    fn render_subscription(&self, subscription: &Subscription, now: i64) -> Value {
        let customer = self
            .customer_index(subscription.source, &subscription.customer_oid)
            .map(|index| Value::Object(self.render_customer_short(&self.customers[index], now)))
            .unwrap_or(Value::Null);
        json!({
            "oid": subscription.oid,
            "source_id": subscription.source.id,
            "source": subscription.source.provider,
            "customer": customer,
            "canceled_at": subscription.canceled_at,
            "started_at": subscription.started_at,
            "processed": true,
            "active": subscription.is_active(),
            "quantity": subscription.quantity,
            "discount": 0,
            "plan": render_plan(subscription.source, &subscription.plan),
        })
    }
}

/// A Baremetrics error answer, `{"error": …}`.
fn error(status: StatusCode, message: &str) -> Response {
    support::json(status, &json!({ "error": message }))
}

/// A request Baremetrics' description refuses: 400 `{"error": …}`, the
/// only error its description gives the customer operations
/// (`SourceCreateCustomerRecord400Response` and friends).
fn refused(violation: &Violation) -> Response {
    error(StatusCode::BAD_REQUEST, &violation.to_string())
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, "Unauthorized")
}

/// No `Retry-After`: Baremetrics sends none.
fn rate_limited() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
}

fn server_error() -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
}

/// Demo customers are created from 2023-01-01 on, a day or so apart.
const FIRST_CREATED: i64 = 1_672_531_200;

impl BaremetricsEmulator {
    /// An account with both sources and `config.seed` demo customers, most
    /// with an active subscription, some canceled, some with none.
    pub fn new(config: BaremetricsConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.rng_seed);
        let mut state = State { customers: Vec::new(), subscriptions: Vec::new() };
        for index in 0..config.seed {
            seed_customer(index, &mut state, &mut rng);
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
                attribute_fields: config.attribute_fields,
                state: RwLock::new(state),
                log: RequestLog::new(),
                limits: Limits::new(
                    config.faults,
                    config.rng_seed.rotate_left(32) ^ 0xBA3E,
                    policy,
                ),
            }),
        }
    }

    /// The API, with request logging, authentication and limits, ready to
    /// [`crate::server::serve`].
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/v1/sources", get(list_sources))
            .route("/v1/attributes/fields", get(list_attribute_fields))
            .route("/v1/{source_id}/customers", get(list_customers).post(create_customer))
            .route(
                "/v1/{source_id}/customers/{oid}",
                get(retrieve_customer).put(replace_customer).delete(delete_customer),
            )
            .route("/v1/{source_id}/subscriptions", get(list_subscriptions))
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(Arc::clone(&self.shared));
        support::wrap_routes(
            routes,
            JsonCheck {
                spec: &spec::BAREMETRICS,
                refuse: refused,
                broken: |message| error(StatusCode::INTERNAL_SERVER_ERROR, message),
            },
            &self.shared.limits,
            self.shared.keys.clone(),
            &self.shared.log,
        )
    }

    /// Customers in every source.
    pub fn customer_count(&self) -> usize {
        self.shared.read().customers.len()
    }

    /// Customers in `source_id`, oldest first, as the API renders them.
    pub fn customers(&self, source_id: &str) -> Vec<Value> {
        let now = support::unix_now();
        let state = self.shared.read();
        state
            .customers
            .iter()
            .filter(|customer| customer.source.id == source_id)
            .map(|customer| state.render_customer(customer, now))
            .collect()
    }

    /// The customer `oid` in `source_id`, as `GET
    /// /v1/{source_id}/customers/{oid}` renders its `customer`.
    pub fn customer(&self, source_id: &str, oid: &str) -> Option<Value> {
        let source = Source::find(source_id)?;
        let state = self.shared.read();
        let index = state.customer_index(source, oid)?;
        Some(state.render_customer(&state.customers[index], support::unix_now()))
    }

    /// Subscriptions in every source.
    pub fn subscription_count(&self) -> usize {
        self.shared.read().subscriptions.len()
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
    /// [`BaremetricsConfig::rate_limit`]; injected 429s are not counted.
    pub fn limited_count(&self) -> u64 {
        self.shared.limits.limited_count()
    }
}

fn seed_customer(index: usize, state: &mut State, rng: &mut StdRng) {
    let source = SOURCES[index % 2];
    let (name, email) = support::demo_person(index, "example.com");
    let created = FIRST_CREATED + i64::try_from(index).unwrap_or(0) * 86_400;
    let oid = if source.is_writable() {
        format!("cust_{index:05}")
    } else {
        format!("cus_Stripe{index:05}")
    };
    state.customers.push(Customer {
        source,
        oid: oid.clone(),
        created,
        email: Some(email),
        name: Some(name),
        notes: None,
        attributes: Map::new(),
    });
    let roll: f64 = rng.random();
    if roll < 0.1 {
        return; // Never subscribed.
    }
    let plan = PLANS[rng.random_range(0..PLANS.len())].clone();
    state.subscriptions.push(Subscription {
        source,
        oid: format!("sub_{index:05}"),
        customer_oid: oid,
        plan,
        started_at: created + 3_600,
        // A quarter of subscribers churned after four months.
        canceled_at: (roll > 0.75).then_some(created + 120 * 86_400),
        quantity: 1,
    });
}

type SharedState = AxumState<Arc<Shared>>;

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "Not Found")
}

fn source_or_404(id: &str) -> Result<Source, Response> {
    Source::find(id).ok_or_else(|| error(StatusCode::NOT_FOUND, &format!("Source not found: {id}")))
}

fn writable_source(id: &str) -> Result<Source, Response> {
    let source = source_or_404(id)?;
    if source.is_writable() {
        Ok(source)
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Source {id} is synced from {}; its customers are read-only. \
                 Write to a Baremetrics source instead.",
                source.provider
            ),
        ))
    }
}

fn customer_not_found(oid: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("Customer not found: {oid}"))
}

/// `GET /v1/sources`.
async fn list_sources() -> Response {
    let sources: Vec<Value> = SOURCES
        .iter()
        .map(|source| {
            json!({ "id": source.id, "provider": source.provider, "provider_id": source.provider_id })
        })
        .collect();
    support::json(StatusCode::OK, &json!({ "sources": sources }))
}

/// `GET /v1/attributes/fields`.
async fn list_attribute_fields(AxumState(shared): SharedState) -> Response {
    let fields: Vec<Value> = shared
        .attribute_fields
        .iter()
        .enumerate()
        .map(|(index, title)| {
            json!({
                "id": index + 1,
                "field_type": "string",
                "title": title,
                "title_with_type": format!("[string] {title}"),
            })
        })
        .collect();
    support::json(StatusCode::OK, &json!({ "attribute_fields": fields }))
}

struct Paging {
    page: usize,
    per_page: usize,
}

fn paging(pairs: &[(String, String)]) -> Result<Paging, Response> {
    let number = |name: &str, default: usize| match query_value(pairs, name) {
        None => Ok(default),
        Some(text) => text.parse::<usize>().map_err(|_| {
            error(StatusCode::BAD_REQUEST, &format!("{name} must be a non-negative integer"))
        }),
    };
    let page = number("page", 0)?;
    let per_page = number("per_page", DEFAULT_PAGE_SIZE)?.clamp(1, MAX_PAGE_SIZE);
    Ok(Paging { page, per_page })
}

fn paged(key: &str, items: Vec<Value>, paging: &Paging) -> Response {
    let total = items.len();
    let start = paging.page.saturating_mul(paging.per_page);
    let page: Vec<Value> = items.into_iter().skip(start).take(paging.per_page).collect();
    let has_more = start.saturating_add(paging.per_page) < total;
    support::json(
        StatusCode::OK,
        &json!({
            key: page,
            "meta": { "pagination": {
                "has_more": has_more,
                "page": paging.page,
                "per_page": paging.per_page,
                "total": total,
            }},
        }),
    )
}

fn descending(pairs: &[(String, String)], default_desc: bool) -> Result<bool, Response> {
    match query_value(pairs, "order") {
        None => Ok(default_desc),
        Some("asc") => Ok(false),
        Some("desc") => Ok(true),
        Some(other) => {
            Err(error(StatusCode::BAD_REQUEST, &format!("order must be asc or desc, not {other}")))
        }
    }
}

/// `GET /v1/{source_id}/customers`.
async fn list_customers(
    AxumState(shared): SharedState,
    Path(source_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let (source, paging, descending) =
        match (source_or_404(&source_id), paging(&pairs), descending(&pairs, false)) {
            (Ok(source), Ok(paging), Ok(descending)) => (source, paging, descending),
            (Err(response), _, _) | (_, Err(response), _) | (_, _, Err(response)) => {
                return response;
            }
        };
    let by_ltv = match query_value(&pairs, "sort") {
        None | Some("created") => false,
        Some("ltv") => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("sort must be created or ltv, not {other}"),
            );
        }
    };
    let search = query_value(&pairs, "search").map(str::to_lowercase);
    let now = support::unix_now();
    let state = shared.read();
    let mut matching: Vec<(&Customer, i64)> = state
        .customers
        .iter()
        .filter(|customer| customer.source == source)
        .filter(|customer| {
            search.as_deref().is_none_or(|needle| {
                [
                    Some(&customer.oid),
                    customer.email.as_ref(),
                    customer.notes.as_ref(),
                    customer.name.as_ref(),
                ]
                .into_iter()
                .flatten()
                .any(|text| text.to_lowercase().contains(needle))
            })
        })
        .map(|customer| (customer, state.ltv(customer, now)))
        .collect();
    matching.sort_by(|(a, a_ltv), (b, b_ltv)| {
        let order = if by_ltv { a_ltv.cmp(b_ltv) } else { Ordering::Equal };
        order.then(a.created.cmp(&b.created))
    });
    if descending {
        matching.reverse();
    }
    let rendered =
        matching.into_iter().map(|(customer, _)| state.render_customer(customer, now)).collect();
    paged("customers", rendered, &paging)
}

/// `GET /v1/{source_id}/customers/{oid}`.
async fn retrieve_customer(
    AxumState(shared): SharedState,
    Path((source_id, oid)): Path<(String, String)>,
) -> Response {
    let source = match source_or_404(&source_id) {
        Ok(source) => source,
        Err(response) => return response,
    };
    let state = shared.read();
    match state.customer_index(source, &oid) {
        Some(index) => support::json(
            StatusCode::OK,
            &json!({ "customer": state.render_customer(&state.customers[index], support::unix_now()) }),
        ),
        None => customer_not_found(&oid),
    }
}

/// The writable fields of a customer body, every one of them: what is
/// missing is `None`, which is how PUT clears it.
struct CustomerFields {
    oid: Option<String>,
    created: Option<i64>,
    email: Option<String>,
    name: Option<String>,
    notes: Option<String>,
    attributes: Map<String, Value>,
}

fn customer_fields(shared: &Shared, body: &Bytes) -> Result<CustomerFields, Response> {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return Err(error(StatusCode::BAD_REQUEST, "Request body must be a JSON object"));
    };
    let text = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value.clone())),
        Some(_) => Err(error(StatusCode::BAD_REQUEST, &format!("{name} must be a string"))),
    };
    // The description (corrected) makes `created` an integer; checked
    // before the handler runs. A number too large for i64 is still refused.
    let created =
        match fields.get("created") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_i64().ok_or_else(|| {
                error(StatusCode::BAD_REQUEST, "created must be a Unix timestamp")
            })?),
        };
    let attributes = match fields.get("attributes") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(attributes)) => {
            if let Some(unknown) =
                attributes.keys().find(|key| !shared.attribute_fields.contains(key))
            {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "Unknown attribute field: {unknown}. Define it in Settings > Attributes first."
                    ),
                ));
            }
            attributes.clone()
        }
        Some(_) => {
            return Err(error(StatusCode::BAD_REQUEST, "attributes must be an object"));
        }
    };
    Ok(CustomerFields {
        oid: text("oid")?,
        created,
        email: text("email")?,
        name: text("name")?,
        notes: text("notes")?,
        attributes,
    })
}

/// `POST /v1/{source_id}/customers`: native sources only.
async fn create_customer(
    AxumState(shared): SharedState,
    Path(source_id): Path<String>,
    body: Bytes,
) -> Response {
    let (source, fields) = match (writable_source(&source_id), customer_fields(&shared, &body)) {
        (Ok(source), Ok(fields)) => (source, fields),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let Some(oid) = fields.oid.filter(|oid| !oid.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "oid is required");
    };
    let mut state = shared.write();
    if state.customer_index(source, &oid).is_some() {
        return error(StatusCode::BAD_REQUEST, &format!("Oid has already been taken: {oid}"));
    }
    let customer = Customer {
        source,
        oid,
        created: fields.created.unwrap_or_else(support::unix_now),
        email: fields.email,
        name: fields.name,
        notes: fields.notes,
        attributes: fields.attributes,
    };
    let rendered = state.render_customer(&customer, support::unix_now());
    state.customers.push(customer);
    support::json(StatusCode::OK, &json!({ "customer": rendered }))
}

/// `PUT /v1/{source_id}/customers/{oid}`: replaces the record.
async fn replace_customer(
    AxumState(shared): SharedState,
    Path((source_id, oid)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (source, fields) = match (writable_source(&source_id), customer_fields(&shared, &body)) {
        (Ok(source), Ok(fields)) => (source, fields),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    let mut state = shared.write();
    let Some(index) = state.customer_index(source, &oid) else {
        return customer_not_found(&oid);
    };
    let customer = &mut state.customers[index];
    // The quirk this emulator exists to show: what the body leaves out is
    // gone afterwards.
    customer.email = fields.email;
    customer.name = fields.name;
    customer.notes = fields.notes;
    customer.attributes = fields.attributes;
    if let Some(created) = fields.created {
        customer.created = created;
    }
    let rendered = state.render_customer(&state.customers[index], support::unix_now());
    support::json(StatusCode::OK, &json!({ "customer": rendered }))
}

/// `DELETE /v1/{source_id}/customers/{oid}`: permanent, subscriptions too.
async fn delete_customer(
    AxumState(shared): SharedState,
    Path((source_id, oid)): Path<(String, String)>,
) -> Response {
    let source = match writable_source(&source_id) {
        Ok(source) => source,
        Err(response) => return response,
    };
    let mut state = shared.write();
    let Some(index) = state.customer_index(source, &oid) else {
        return customer_not_found(&oid);
    };
    state.customers.remove(index);
    state.subscriptions.retain(|s| !(s.source == source && s.customer_oid == oid));
    support::json(StatusCode::ACCEPTED, &json!({}))
}

/// `GET /v1/{source_id}/subscriptions`.
async fn list_subscriptions(
    AxumState(shared): SharedState,
    Path(source_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = query_pairs(query.as_deref());
    let (source, paging, descending) =
        match (source_or_404(&source_id), paging(&pairs), descending(&pairs, true)) {
            (Ok(source), Ok(paging), Ok(descending)) => (source, paging, descending),
            (Err(response), _, _) | (_, Err(response), _) | (_, _, Err(response)) => {
                return response;
            }
        };
    let customer_oid = query_value(&pairs, "customer_oid");
    let now = support::unix_now();
    let state = shared.read();
    let mut matching: Vec<&Subscription> = state
        .subscriptions
        .iter()
        .filter(|s| s.source == source)
        .filter(|s| customer_oid.is_none_or(|oid| s.customer_oid == oid))
        .collect();
    matching.sort_by_key(|s| (s.started_at, s.oid.clone()));
    if descending {
        matching.reverse();
    }
    let rendered = matching.into_iter().map(|s| state.render_subscription(s, now)).collect();
    paged("subscriptions", rendered, &paging)
}
