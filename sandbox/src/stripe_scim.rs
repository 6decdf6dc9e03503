//! An emulator of Stripe's SCIM 2.0 endpoint for Dashboard team members
//! (`https://dashboard.stripe.com/scim/v2`), per RFC 7643 (schema) and RFC
//! 7644 (protocol), with what `shared/seeds/stripe-user-management-api.txt`
//! says of Stripe's flavour: a separate base URL and its own bearer token,
//! `/Users` only, roles not settable through SCIM, deprovisioning by
//! `PATCH active=false`.
//!
//! What it honours:
//!
//! - every request checked against RFC 7643's core User schema and RFC
//!   7644's PatchOp and list parameters (`sandbox/specs/stripe-scim.json`,
//!   written by hand: no Stripe SCIM description exists), refused with 400
//!   `invalidValue` (or `invalidSyntax` for the message's structure);
//! - Bearer auth with the SCIM token ([`SANDBOX_SCIM_TOKEN`], not the
//!   Stripe API key); 401 in the SCIM error schema;
//! - `GET /scim/v2/Users` with 1-based `startIndex`, `count` (default and
//!   most 100) and `filter` (`userName`, `externalId`, `id` with `eq`;
//!   `active eq true|false`; attribute names case-insensitive, `userName`
//!   compared case-insensitively as RFC 7643 makes it `caseExact: false`),
//!   in the `ListResponse` envelope with `totalResults`, `startIndex`,
//!   `itemsPerPage` and `Resources`;
//! - `POST /scim/v2/Users` (201 with `Location`; 409 `uniqueness` on a
//!   taken `userName`), `GET`, `PUT` (replaces: what is left out is
//!   cleared, `active` defaults to true), `PATCH` (`add`, `replace`,
//!   `remove`, with a `path` or the value-object form without one) and
//!   `DELETE` (204, permanent) on `/scim/v2/Users/{id}`;
//! - errors as `{"schemas": [Error], "status": "404", "scimType"?,
//!   "detail"}` with `application/scim+json`;
//! - an optional limit and fault injection through [`crate::limits`]
//!   (Stripe publishes no SCIM rate limit).
//!
//! Left out: `/Groups`, `/Schemas`, `/ResourceTypes`,
//! `/ServiceProviderConfig`, `/Bulk`, `/.search`, filters beyond `eq`,
//! `attributes`/`excludedAttributes`, sorting, ETags, and complex PATCH
//! paths with value filters (`emails[type eq "work"].value`). Basic auth
//! is accepted as well as Bearer, as for the other emulators.

#![expect(
    clippy::result_large_err,
    reason = "an `Err` here is the finished vendor answer (a `Response`), built \
              once per refused request and returned as is; boxing it buys nothing"
)]

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::limits::{FaultConfig, Limits, RateLimit};
use crate::requests::RequestLog;
use crate::spec::{self, Problem, Violation, json_requests::JsonCheck};
use crate::support::{self, KeyCheck, KeyedPolicy, query_pairs, query_value};

/// The SCIM bearer token `weft sandbox` accepts: distinct from the Stripe
/// API key, as Stripe issues SCIM tokens separately. Not a real token.
pub const SANDBOX_SCIM_TOKEN: &str = "scim_test_weft_sandbox_9b1f0c7e5a3d";

/// Alias of [`SANDBOX_SCIM_TOKEN`], named like the other modules' keys.
pub const SANDBOX_API_KEY: &str = SANDBOX_SCIM_TOKEN;

/// The SCIM media type every answer carries.
pub const SCIM_CONTENT_TYPE: &str = "application/scim+json";

/// Default and largest `count`.
pub const MAX_PAGE_SIZE: usize = 100;

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// How a [`StripeScimEmulator`] starts.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeScimConfig {
    /// Bearer tokens the emulator accepts; anything else gets a 401.
    pub tokens: Vec<String>,
    /// Demo team members to create at start.
    pub seed: usize,
    /// Seed for every random choice: demo data, ids, injected faults.
    pub rng_seed: u64,
    /// Faults to inject; none by default.
    pub faults: FaultConfig,
    /// Requests allowed per token and period; `None` (the default)
    /// enforces none.
    pub rate_limit: Option<(u32, Duration)>,
}

impl Default for StripeScimConfig {
    /// Accepts [`SANDBOX_SCIM_TOKEN`], no team members, no limits or faults.
    fn default() -> Self {
        Self {
            tokens: vec![SANDBOX_SCIM_TOKEN.to_owned()],
            seed: 0,
            rng_seed: 0,
            faults: FaultConfig::default(),
            rate_limit: None,
        }
    }
}

/// One emulated Stripe account's team, as SCIM sees it. Clones share it.
#[derive(Clone)]
pub struct StripeScimEmulator {
    shared: Arc<Shared>,
}

impl fmt::Debug for StripeScimEmulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeScimEmulator")
            .field("users", &self.user_count())
            .field("limits", &self.shared.limits)
            .finish_non_exhaustive()
    }
}

type Shared = support::Account<State>;

struct State {
    users: Vec<User>,
    rng: StdRng,
}

#[derive(Debug, Clone, PartialEq)]
struct User {
    id: String,
    user_name: String,
    external_id: Option<String>,
    display_name: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    emails: Vec<Value>,
    active: bool,
    created: i64,
    last_modified: i64,
    version: u64,
}

impl User {
    fn render(&self) -> Value {
        let mut user = Map::new();
        user.insert("schemas".into(), json!([USER_SCHEMA]));
        user.insert("id".into(), self.id.clone().into());
        if let Some(external_id) = &self.external_id {
            user.insert("externalId".into(), external_id.clone().into());
        }
        user.insert("userName".into(), self.user_name.clone().into());
        let mut name = Map::new();
        if let Some(given) = &self.given_name {
            name.insert("givenName".into(), given.clone().into());
        }
        if let Some(family) = &self.family_name {
            name.insert("familyName".into(), family.clone().into());
        }
        let formatted: Vec<&str> = [&self.given_name, &self.family_name]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if !formatted.is_empty() {
            name.insert("formatted".into(), formatted.join(" ").into());
            user.insert("name".into(), Value::Object(name));
        }
        if let Some(display_name) = &self.display_name {
            user.insert("displayName".into(), display_name.clone().into());
        }
        if !self.emails.is_empty() {
            user.insert("emails".into(), Value::Array(self.emails.clone()));
        }
        user.insert("active".into(), self.active.into());
        user.insert(
            "meta".into(),
            json!({
                "resourceType": "User",
                "created": support::rfc3339(self.created),
                "lastModified": support::rfc3339(self.last_modified),
                "location": format!("/scim/v2/Users/{}", self.id),
                "version": format!("W/\"{}\"", self.version),
            }),
        );
        Value::Object(user)
    }

    fn touch(&mut self) {
        self.last_modified = support::unix_now().max(self.created);
        self.version += 1;
    }
}

impl State {
    fn position(&self, id: &str) -> Option<usize> {
        self.users.iter().position(|user| user.id == id)
    }

    fn user_name_taken(&self, user_name: &str, except: Option<&str>) -> bool {
        self.users.iter().any(|user| {
            user.user_name.eq_ignore_ascii_case(user_name) && Some(user.id.as_str()) != except
        })
    }

    fn new_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        loop {
            let suffix: String = (0..14)
                .map(|_| char::from(ALPHABET[self.rng.random_range(0..ALPHABET.len())]))
                .collect();
            let id = format!("usr_{suffix}");
            if self.position(&id).is_none() {
                return id;
            }
        }
    }
}

/// A SCIM error answer (RFC 7644 §3.12).
fn error(status: StatusCode, scim_type: Option<&str>, detail: &str) -> Response {
    let mut body = json!({
        "schemas": [ERROR_SCHEMA],
        "status": status.as_u16().to_string(),
        "detail": detail,
    });
    if let Some(scim_type) = scim_type {
        body["scimType"] = scim_type.into();
    }
    support::json_as(status, SCIM_CONTENT_TYPE, &body)
}

/// A request outside RFC 7643/7644's schemas: 400, `invalidValue` for a
/// missing, mistyped or out-of-range value, `invalidSyntax` for anything
/// else about the message's structure (RFC 7644 §3.12).
fn refused(violation: &Violation) -> Response {
    let scim_type = match violation.problem {
        Problem::Other(_) => "invalidSyntax",
        _ => "invalidValue",
    };
    error(StatusCode::BAD_REQUEST, Some(scim_type), &violation.to_string())
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        None,
        "Authorization failure: a valid SCIM bearer token is required.",
    )
}

fn rate_limited() -> Response {
    error(StatusCode::TOO_MANY_REQUESTS, None, "Too many requests.")
}

fn server_error() -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, None, "Internal server error.")
}

fn user_not_found(id: &str) -> Response {
    error(StatusCode::NOT_FOUND, None, &format!("Resource {id} not found."))
}

fn scim(status: StatusCode, value: &Value) -> Response {
    support::json_as(status, SCIM_CONTENT_TYPE, value)
}

/// Demo team members joined from 2022-06-01 on, a week or so apart.
const FIRST_CREATED: i64 = 1_654_041_600;

impl StripeScimEmulator {
    /// A team of `config.seed` demo members, one in five deactivated.
    pub fn new(config: StripeScimConfig) -> Self {
        let mut state = State { users: Vec::new(), rng: StdRng::seed_from_u64(config.rng_seed) };
        for index in 0..config.seed {
            let (name, email) = support::demo_person(index, "weft-demo.example");
            let (given, family) = name.split_once(' ').unwrap_or((name.as_str(), ""));
            let created = FIRST_CREATED + i64::try_from(index).unwrap_or(0) * 7 * 86_400;
            let id = state.new_id();
            state.users.push(User {
                id,
                user_name: email.clone(),
                external_id: Some(format!("00u{:017x}", state.rng.random::<u64>())),
                display_name: Some(name.clone()),
                given_name: Some(given.to_owned()),
                family_name: (!family.is_empty()).then(|| family.to_owned()),
                emails: vec![json!({"value": email, "type": "work", "primary": true})],
                active: index % 5 != 4,
                created,
                last_modified: created,
                version: 1,
            });
        }
        let policy = KeyedPolicy::uniform(
            config.rate_limit.map(RateLimit::from),
            rate_limited,
            server_error,
        );
        Self {
            shared: Arc::new(Shared {
                keys: KeyCheck {
                    keys: Arc::new(config.tokens.into_iter().collect()),
                    unauthorized,
                },
                state: RwLock::new(state),
                log: RequestLog::new(),
                limits: Limits::new(
                    config.faults,
                    config.rng_seed.rotate_left(32) ^ 0x5C1A,
                    policy,
                ),
            }),
        }
    }

    /// The API, with request logging, authentication and limits, ready to
    /// [`crate::server::serve`].
    pub fn router(&self) -> Router {
        let routes = Router::new()
            .route("/scim/v2/Users", get(list_users).post(create_user))
            .route(
                "/scim/v2/Users/{id}",
                get(retrieve_user).put(replace_user).patch(patch_user).delete(delete_user),
            )
            .fallback(not_found)
            .method_not_allowed_fallback(not_found)
            .with_state(Arc::clone(&self.shared));
        support::wrap_routes(
            routes,
            JsonCheck {
                spec: &spec::STRIPE_SCIM,
                refuse: refused,
                broken: |message| error(StatusCode::INTERNAL_SERVER_ERROR, None, message),
            },
            &self.shared.limits,
            self.shared.keys.clone(),
            &self.shared.log,
        )
    }

    /// Team members, active or not.
    pub fn user_count(&self) -> usize {
        self.shared.read().users.len()
    }

    /// Team members whose `active` is true.
    pub fn active_user_count(&self) -> usize {
        self.shared.read().users.iter().filter(|u| u.active).count()
    }

    /// Every team member, oldest first, as the API renders them.
    pub fn users(&self) -> Vec<Value> {
        self.shared.read().users.iter().map(User::render).collect()
    }

    /// The team member with `id`, if there is one.
    pub fn user(&self, id: &str) -> Option<Value> {
        let state = self.shared.read();
        state.position(id).map(|at| state.users[at].render())
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
    /// [`StripeScimConfig::rate_limit`]; injected 429s are not counted.
    pub fn limited_count(&self) -> u64 {
        self.shared.limits.limited_count()
    }
}

type SharedState = AxumState<Arc<Shared>>;

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, None, "Endpoint not found.")
}

/// A parsed `filter`: attribute, compared value.
enum Filter {
    UserName(String),
    ExternalId(String),
    Id(String),
    Active(bool),
}

impl Filter {
    /// Parses `attr eq "value"` (or `active eq true`).
    fn parse(text: &str) -> Result<Self, Response> {
        let invalid = || {
            error(
                StatusCode::BAD_REQUEST,
                Some("invalidFilter"),
                &format!(
                    "Unsupported filter: {text}. Supported: userName, externalId or id eq \"value\"; active eq true|false."
                ),
            )
        };
        let mut parts = text.trim().splitn(3, char::is_whitespace);
        let (Some(attribute), Some(operator), Some(value)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        if !operator.eq_ignore_ascii_case("eq") {
            return Err(invalid());
        }
        let value = value.trim();
        let quoted = value
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .map(|inner| inner.replace("\\\"", "\""));
        match (attribute.to_ascii_lowercase().as_str(), quoted) {
            ("username", Some(value)) => Ok(Filter::UserName(value)),
            ("externalid", Some(value)) => Ok(Filter::ExternalId(value)),
            ("id", Some(value)) => Ok(Filter::Id(value)),
            ("active", None) if value.eq_ignore_ascii_case("true") => Ok(Filter::Active(true)),
            ("active", None) if value.eq_ignore_ascii_case("false") => Ok(Filter::Active(false)),
            _ => Err(invalid()),
        }
    }

    fn matches(&self, user: &User) -> bool {
        match self {
            Filter::UserName(name) => user.user_name.eq_ignore_ascii_case(name),
            Filter::ExternalId(id) => user.external_id.as_deref() == Some(id.as_str()),
            Filter::Id(id) => user.id == *id,
            Filter::Active(active) => user.active == *active,
        }
    }
}

/// `GET /scim/v2/Users`.
async fn list_users(AxumState(shared): SharedState, RawQuery(query): RawQuery) -> Response {
    let pairs = query_pairs(query.as_deref());
    let number = |name: &str, default: i64| match query_value(&pairs, name) {
        None => Ok(default),
        Some(text) => text.trim().parse::<i64>().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                Some("invalidValue"),
                &format!("{name} must be an integer."),
            )
        }),
    };
    let (start_index, count) = match (number("startIndex", 1), number("count", 100)) {
        (Ok(start), Ok(count)) => (start, count),
        (Err(response), _) | (_, Err(response)) => return response,
    };
    // RFC 7644 §3.4.2.4: below 1 means 1; a negative count means 0.
    let start_index = usize::try_from(start_index.max(1)).unwrap_or(1);
    let count = usize::try_from(count.max(0)).unwrap_or(0).min(MAX_PAGE_SIZE);
    let filter = match query_value(&pairs, "filter").map(Filter::parse) {
        None => None,
        Some(Ok(filter)) => Some(filter),
        Some(Err(response)) => return response,
    };
    let state = shared.read();
    let matching: Vec<&User> = state
        .users
        .iter()
        .filter(|user| filter.as_ref().is_none_or(|filter| filter.matches(user)))
        .collect();
    let resources: Vec<Value> =
        matching.iter().skip(start_index - 1).take(count).map(|user| user.render()).collect();
    scim(
        StatusCode::OK,
        &json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": matching.len(),
            "startIndex": start_index,
            "itemsPerPage": resources.len(),
            "Resources": resources,
        }),
    )
}

/// `GET /scim/v2/Users/{id}`.
async fn retrieve_user(AxumState(shared): SharedState, Path(id): Path<String>) -> Response {
    let state = shared.read();
    match state.position(&id) {
        Some(at) => scim(StatusCode::OK, &state.users[at].render()),
        None => user_not_found(&id),
    }
}

fn parse_object(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "Request body must be a JSON object.",
        )),
    }
}

fn has_schema(fields: &Map<String, Value>, schema: &str) -> bool {
    fields
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|schemas| schemas.iter().any(|s| s.as_str() == Some(schema)))
}

fn invalid_value(detail: &str) -> Response {
    error(StatusCode::BAD_REQUEST, Some("invalidValue"), detail)
}

/// The attributes of a full User representation (POST, PUT).
struct UserFields {
    user_name: String,
    external_id: Option<String>,
    display_name: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    emails: Vec<Value>,
    active: bool,
}

fn optional_text(value: Option<&Value>, name: &str) -> Result<Option<String>, Response> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(invalid_value(&format!("{name} must be a string."))),
    }
}

fn emails(value: Option<&Value>) -> Result<Vec<Value>, Response> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items))
            if items.iter().all(|item| item.get("value").is_some_and(Value::is_string)) =>
        {
            Ok(items.clone())
        }
        Some(_) => Err(invalid_value("emails must be an array of objects with a string value.")),
    }
}

fn active(value: Option<&Value>) -> Result<Option<bool>, Response> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(active)) => Ok(Some(*active)),
        // Some identity providers send booleans as strings.
        Some(Value::String(text)) if text.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(text)) if text.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(invalid_value("active must be a boolean.")),
    }
}

fn user_fields(fields: &Map<String, Value>) -> Result<UserFields, Response> {
    if !has_schema(fields, USER_SCHEMA) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            &format!("schemas must include {USER_SCHEMA}."),
        ));
    }
    let Some(user_name) =
        optional_text(fields.get("userName"), "userName")?.filter(|name| !name.trim().is_empty())
    else {
        return Err(invalid_value("userName is required."));
    };
    let name = fields.get("name");
    Ok(UserFields {
        user_name,
        external_id: optional_text(fields.get("externalId"), "externalId")?,
        display_name: optional_text(fields.get("displayName"), "displayName")?,
        given_name: optional_text(name.and_then(|n| n.get("givenName")), "name.givenName")?,
        family_name: optional_text(name.and_then(|n| n.get("familyName")), "name.familyName")?,
        emails: emails(fields.get("emails"))?,
        active: active(fields.get("active"))?.unwrap_or(true),
    })
}

fn uniqueness(user_name: &str) -> Response {
    error(
        StatusCode::CONFLICT,
        Some("uniqueness"),
        &format!("A user with userName {user_name} already exists."),
    )
}

/// `POST /scim/v2/Users`.
async fn create_user(AxumState(shared): SharedState, body: Bytes) -> Response {
    let fields = match parse_object(&body).and_then(|fields| user_fields(&fields)) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let mut state = shared.write();
    if state.user_name_taken(&fields.user_name, None) {
        return uniqueness(&fields.user_name);
    }
    let now = support::unix_now();
    let user = User {
        id: state.new_id(),
        user_name: fields.user_name,
        external_id: fields.external_id,
        display_name: fields.display_name,
        given_name: fields.given_name,
        family_name: fields.family_name,
        emails: fields.emails,
        active: fields.active,
        created: now,
        last_modified: now,
        version: 1,
    };
    let rendered = user.render();
    let location = format!("/scim/v2/Users/{}", user.id);
    state.users.push(user);
    let mut response = scim(StatusCode::CREATED, &rendered);
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `PUT /scim/v2/Users/{id}`: replaces the user.
async fn replace_user(
    AxumState(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = match parse_object(&body).and_then(|fields| user_fields(&fields)) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let mut state = shared.write();
    let Some(at) = state.position(&id) else {
        return user_not_found(&id);
    };
    if state.user_name_taken(&fields.user_name, Some(&id)) {
        return uniqueness(&fields.user_name);
    }
    let user = &mut state.users[at];
    user.user_name = fields.user_name;
    user.external_id = fields.external_id;
    user.display_name = fields.display_name;
    user.given_name = fields.given_name;
    user.family_name = fields.family_name;
    user.emails = fields.emails;
    user.active = fields.active;
    user.touch();
    scim(StatusCode::OK, &user.render())
}

/// Applies one attribute of a PATCH to `user`; `None` removes it.
fn patch_attribute(user: &mut User, path: &str, value: Option<&Value>) -> Result<(), Response> {
    let text = |name: &str| optional_text(value, name);
    match path.to_ascii_lowercase().as_str() {
        "active" => user.active = active(value)?.unwrap_or(false),
        "username" => match text("userName")? {
            Some(name) if !name.trim().is_empty() => user.user_name = name,
            _ => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    Some("mutability"),
                    "userName is required and cannot be removed.",
                ));
            }
        },
        "externalid" => user.external_id = text("externalId")?,
        "displayname" => user.display_name = text("displayName")?,
        "name.givenname" => user.given_name = text("name.givenName")?,
        "name.familyname" => user.family_name = text("name.familyName")?,
        // RFC 7644 §3.5.2: replacing a complex attribute sets the
        // sub-attributes given and leaves the others; removing it clears all.
        "name" => match value.filter(|v| !v.is_null()) {
            None => {
                user.given_name = None;
                user.family_name = None;
            }
            Some(Value::Object(name)) => {
                if name.contains_key("givenName") {
                    user.given_name = optional_text(name.get("givenName"), "name.givenName")?;
                }
                if name.contains_key("familyName") {
                    user.family_name = optional_text(name.get("familyName"), "name.familyName")?;
                }
            }
            Some(_) => return Err(invalid_value("name must be an object.")),
        },
        // Write-only (RFC 7643 §4.1.1): accepted, never stored or returned;
        // Stripe signs team members in through SSO anyway.
        "password" => {}
        "emails" => user.emails = emails(value)?,
        "id" | "meta" | "schemas" => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                Some("mutability"),
                &format!("{path} is read-only."),
            ));
        }
        _ => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                Some("invalidPath"),
                &format!("Unsupported PATCH path: {path}."),
            ));
        }
    }
    Ok(())
}

/// `PATCH /scim/v2/Users/{id}` (RFC 7644 §3.5.2).
async fn patch_user(
    AxumState(shared): SharedState,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = match parse_object(&body) {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    if !has_schema(&fields, PATCH_SCHEMA) {
        return error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            &format!("schemas must include {PATCH_SCHEMA}."),
        );
    }
    let Some(Value::Array(operations)) = fields.get("Operations") else {
        return error(
            StatusCode::BAD_REQUEST,
            Some("invalidSyntax"),
            "Operations must be an array.",
        );
    };
    let mut state = shared.write();
    let Some(at) = state.position(&id) else {
        return user_not_found(&id);
    };
    // Work on a copy so a failing operation changes nothing (§3.5.2: the
    // whole PATCH is atomic).
    let mut user = state.users[at].clone();
    for operation in operations {
        let op = operation.get("op").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let path = operation.get("path").and_then(Value::as_str);
        let value = operation.get("value");
        let applied = match (op.as_deref(), path) {
            (Some("remove"), Some(path)) => patch_attribute(&mut user, path, None),
            (Some("remove"), None) => {
                Err(error(StatusCode::BAD_REQUEST, Some("noTarget"), "remove needs a path."))
            }
            (Some("add" | "replace"), Some(path)) => patch_attribute(&mut user, path, value),
            (Some("add" | "replace"), None) => match value {
                Some(Value::Object(attributes)) => attributes
                    .iter()
                    .try_for_each(|(path, value)| patch_attribute(&mut user, path, Some(value))),
                _ => Err(invalid_value("Without a path, value must be an object of attributes.")),
            },
            _ => Err(error(
                StatusCode::BAD_REQUEST,
                Some("invalidSyntax"),
                "op must be add, replace or remove.",
            )),
        };
        if let Err(response) = applied {
            return response;
        }
    }
    if state.user_name_taken(&user.user_name, Some(&id)) {
        return uniqueness(&user.user_name);
    }
    user.touch();
    let rendered = user.render();
    state.users[at] = user;
    scim(StatusCode::OK, &rendered)
}

/// `DELETE /scim/v2/Users/{id}`: permanent.
async fn delete_user(AxumState(shared): SharedState, Path(id): Path<String>) -> Response {
    let mut state = shared.write();
    match state.position(&id) {
        Some(at) => {
            state.users.remove(at);
            (StatusCode::NO_CONTENT, Body::empty()).into_response()
        }
        None => user_not_found(&id),
    }
}
