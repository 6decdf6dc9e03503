//! An emulator of Stripe's Customers API (`/v1/customers`), faithful to the
//! spec in `shared/vendor-apis/stripe/spec3.json` (API version 2023-08-16)
//! where weft's connector can tell the difference.
//!
//! What it honours:
//!
//! - auth by HTTP Basic (key as user, empty password) or Bearer, 401 with
//!   the key masked as Stripe masks it;
//! - form-encoded bodies only (`metadata[k]=v`, `address[line1]=…`,
//!   `preferred_locales[0]=…`); every request is checked against Stripe's
//!   description of its operation (`sandbox/specs/stripe.json`, with the
//!   form read into the types the description asks for) and refused with
//!   Stripe's 400 `invalid_request_error` naming the parameter: unknown
//!   parameters at any depth, wrong types (`preferred_locales=` where an
//!   array is required is "Invalid array"; `metadata=` is allowed, metadata
//!   being emptyable), bad enum values, missing required fields;
//! - create, retrieve, update (POST, metadata merged key by key), delete
//!   (permanent; a later GET answers `deleted: true`, a later write 404);
//! - lists newest first with `limit` (1..=100), `starting_after`,
//!   `ending_before`, `email` (exact, case-sensitive), `created[...]`,
//!   in O(limit) per page however many customers there are;
//! - `Idempotency-Key` on POSTs, replayed with `Idempotent-Replayed: true`;
//! - a `Request-Id` header on every answer, Stripe's error envelope on
//!   every error;
//! - optional rate limiting and fault injection through [`crate::limits`].
//!
//! What it leaves out, knowingly: the other resources (payment methods,
//! coupons, tax ids, test clocks: any id of one is `resource_missing`),
//! `GET /v1/customers/search`, live mode, webhooks, the uniqueness of
//! invoice prefixes, and `Stripe-Ratelimit-*` headers.

mod api;
mod customer;
mod error;
mod form;
mod idempotency;
mod params;
mod seed;
mod store;
#[cfg(test)]
mod tests;
mod validate;

/// What the fuzz targets in `fuzz/` (and the test that replays their
/// corpora) reach of the emulator's form decoder; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use serde_json::{Map, Value};

    use super::form::{Form, Param};

    /// A form body as the emulator reads it, as JSON: a value is a string,
    /// a hash an object (an array is a hash keyed by index, as Stripe
    /// reads it); the error is the emulator's message.
    pub fn decode_form(body: &[u8]) -> Result<Value, String> {
        let form = Form::from_bytes(body).map_err(|e| e.to_string())?;
        Ok(tree(&form.params))
    }

    fn tree(entries: &[(String, Param)]) -> Value {
        let fields = entries.iter().map(|(key, param)| {
            let value = match param {
                Param::Value(text) => Value::String(text.clone()),
                Param::Hash(children) => tree(children),
            };
            (key.clone(), value)
        });
        Value::Object(fields.collect::<Map<String, Value>>())
    }
}

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::Request;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::limits::{Bucket, FaultConfig, LimitPolicy, Limits, RateLimit};
use crate::requests::RequestLog;
use customer::Customer;
use error::ApiError;
use idempotency::IdempotencyStore;
use store::{CustomerStore, Lookup};

/// The test-mode secret key `weft sandbox` accepts. Not a real Stripe key.
pub const SANDBOX_API_KEY: &str = "sk_test_weft_sandbox_4eC39HqLyjWDarjtT1zdp7dc";

/// The Stripe API version the emulator's shapes follow, sent back in the
/// `Stripe-Version` header.
pub const API_VERSION: &str = "2023-08-16";

/// Stripe's published test-mode limit: 25 requests per second for reads
/// and 25 for writes, per key.
pub const TEST_MODE_RATE_LIMIT: (u32, Duration) = (25, Duration::from_secs(1));

/// Stripe's published live-mode limit: 100 reads and 100 writes per second.
pub const LIVE_MODE_RATE_LIMIT: (u32, Duration) = (100, Duration::from_secs(1));

/// How a [`StripeEmulator`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeConfig {
    /// Secret keys the emulator accepts; anything else gets a 401.
    pub api_keys: Vec<String>,
    /// Demo customers to create at start.
    pub seed: usize,
    /// Seed for every random choice: demo data, ids, injected faults.
    pub rng_seed: u64,
    /// Faults to inject; none by default.
    pub faults: FaultConfig,
    /// Requests allowed per key and period, counted separately for reads
    /// (GET) and writes, as Stripe does; `None` (the default) enforces no
    /// limit. See [`TEST_MODE_RATE_LIMIT`].
    pub rate_limit: Option<(u32, Duration)>,
}

impl Default for StripeConfig {
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

/// One emulated Stripe account. Clones share it.
#[derive(Clone)]
pub struct StripeEmulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for StripeEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeEmulator")
            .field("customers", &self.customer_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

/// What the handlers share.
struct Shared {
    api_keys: HashSet<String>,
    state: RwLock<State>,
    log: RequestLog,
    limits: Limits,
}

/// The account's data. Locked only in synchronous sections, never across
/// an await.
struct State {
    customers: CustomerStore,
    idempotency: IdempotencyStore,
    rng: StdRng,
}

/// The API key a request authenticated with, put in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiKey(String);

impl ApiKey {
    fn is_test_mode(&self) -> bool {
        self.0.starts_with("sk_test_") || self.0.starts_with("rk_test_")
    }
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}

const ID_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// `prefix` followed by `len` random letters and digits, as Stripe's ids.
fn random_id(rng: &mut impl Rng, prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend((0..len).map(|_| char::from(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())])));
    id
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

impl State {
    /// A `cus_` id never used in this account.
    fn new_customer_id(&mut self) -> String {
        loop {
            let id = random_id(&mut self.rng, "cus_", 14);
            if !self.customers.knows(&id) {
                return id;
            }
        }
    }

    /// An invoice prefix like the ones Stripe assigns (`F79089B`).
    fn new_invoice_prefix(&mut self) -> String {
        format!("{:08X}", self.rng.random::<u32>())
    }

    /// Gives `customer` an id, invoice prefix and creation time where it
    /// has none, and stores it.
    fn add(&mut self, mut customer: Customer) -> Arc<Customer> {
        if customer.id.is_empty() {
            customer.id = self.new_customer_id();
        }
        if customer.invoice_prefix.is_none() {
            customer.invoice_prefix = Some(self.new_invoice_prefix());
        }
        self.customers.insert(customer)
    }
}

/// Stripe's metering: per key, reads and writes apart.
struct StripeLimitPolicy {
    rate_limit: Option<RateLimit>,
}

impl LimitPolicy for StripeLimitPolicy {
    fn bucket(&self, request: &Request) -> Option<Bucket> {
        let limit = self.rate_limit?;
        let key = request.extensions().get::<ApiKey>()?;
        let class = if request.method() == axum::http::Method::GET { "read" } else { "write" };
        Some(Bucket { key: format!("{}:{class}", key.0), limit })
    }

    fn too_many_requests(&self, request: &Request) -> Response {
        let test_mode = request.extensions().get::<ApiKey>().is_none_or(ApiKey::is_test_mode);
        ApiError::rate_limited(test_mode).into_response()
    }

    fn server_error(&self, _request: &Request) -> Response {
        ApiError::internal().into_response()
    }
}

impl StripeEmulator {
    /// An account holding `config.seed` demo customers.
    pub fn new(config: StripeConfig) -> Self {
        let mut state = State {
            customers: CustomerStore::default(),
            idempotency: IdempotencyStore::default(),
            rng: StdRng::seed_from_u64(config.rng_seed),
        };
        for index in 0..config.seed {
            let customer = seed::demo_customer(index, &mut state.rng);
            state.add(customer);
        }
        let limits = Limits::new(
            config.faults,
            // Fault dice apart from the data's, so turning faults on does
            // not change the demo customers.
            config.rng_seed.rotate_left(32) ^ 0xFA17,
            StripeLimitPolicy { rate_limit: config.rate_limit.map(RateLimit::from) },
        );
        Self {
            shared: Arc::new(Shared {
                api_keys: config.api_keys.into_iter().collect(),
                state: RwLock::new(state),
                log: RequestLog::new(),
                limits,
            }),
        }
    }

    /// The API, with request logging, authentication and limits, ready to
    /// [`crate::server::serve`]. Routers from one emulator share its state.
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/v1/customers", get(api::list_customers).post(api::create_customer))
            .route("/v1/customers/search", get(api::search_customers))
            .route(
                "/v1/customers/{customer}",
                get(api::retrieve_customer).post(api::update_customer).delete(api::delete_customer),
            )
            .fallback(api::unrecognized_url)
            .method_not_allowed_fallback(api::unrecognized_url)
            .with_state(Arc::clone(&self.shared))
            .layer(middleware::from_fn(validate::check_request));
        // Innermost first: the check against Stripe's description (so no
        // handler sees a request Stripe would refuse), limits, which see
        // only authenticated requests (Stripe meters per key); every
        // answer, refusals included, gets Stripe's headers and lands in
        // the log.
        let routes = self.shared.limits.wrap(routes);
        let routes = routes
            .layer(middleware::from_fn_with_state(Arc::clone(&self.shared), api::authenticate));
        let routes = routes.layer(middleware::from_fn(api::stripe_headers));
        self.shared.log.wrap(routes)
    }

    /// Customers not deleted.
    pub fn customer_count(&self) -> usize {
        self.shared.read().customers.len()
    }

    /// Every customer not deleted, newest first, as the API renders them.
    pub fn customers(&self) -> Vec<Value> {
        let state = self.shared.read();
        state.customers.iter().map(|customer| customer.render(&[])).collect()
    }

    /// The customer with `id` as `GET /v1/customers/{id}` would answer it
    /// (`deleted: true` if deleted), or `None` if the account never had it.
    pub fn customer(&self, id: &str) -> Option<Value> {
        match self.shared.read().customers.get(id) {
            Lookup::Live(customer) => Some(customer.render(&[])),
            Lookup::Deleted => Some(customer::deleted(id)),
            Lookup::Missing => None,
        }
    }

    /// Stores a customer directly, for test setup, and returns it as the
    /// API renders it. Missing fields take their defaults; a missing `id`,
    /// `created` or `invoice_prefix` is assigned. A customer with an
    /// existing id replaces it.
    ///
    /// # Panics
    ///
    /// If `customer` is not a JSON object with the customer schema's field
    /// types: a mistake in the calling test.
    pub fn insert_customer(&self, customer: Value) -> Value {
        let has_created = customer.get("created").is_some_and(|created| !created.is_null());
        let mut parsed: Customer = serde_json::from_value(customer)
            .unwrap_or_else(|error| panic!("insert_customer: not a customer object: {error}"));
        if !has_created {
            parsed.created = unix_now();
        }
        let stored = self.shared.write().add(parsed);
        stored.render(&[])
    }

    /// The log of every request this emulator answered.
    pub fn requests(&self) -> RequestLog {
        self.shared.log.clone()
    }

    /// The rate limiter and fault injector, for their counters.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Requests refused with 429 because the client went over
    /// [`StripeConfig::rate_limit`]; injected 429s are not counted.
    pub fn limited_count(&self) -> u64 {
        self.shared.limits.limited_count()
    }
}
