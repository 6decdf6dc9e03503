//! The HTTP face of the emulator: middleware and one handler per endpoint.

use std::mem;
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::customer::{self, Customer};
use super::error::ApiError;
use super::form::Form;
use super::idempotency::{Fingerprint, MAX_KEY_LENGTH, SavedResponse};
use super::params::{CustomerParams, Endpoint, ListParams, expand_only};
use super::store::Lookup;
use super::{API_VERSION, ApiKey, Shared, State as AccountState, random_id, unix_now};
use crate::credentials::{Presented, presented_key};

type Result<T, E = ApiError> = std::result::Result<T, E>;
type SharedState = State<Arc<Shared>>;

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
const STRIPE_VERSION: HeaderName = HeaderName::from_static("stripe-version");

/// Answers 401 unless the request carries one of the account's keys, which
/// it then records as an [`ApiKey`] extension.
pub(super) async fn authenticate(
    State(shared): SharedState,
    mut request: Request,
    next: Next,
) -> Response {
    match presented_key(request.headers()) {
        Presented::Missing => ApiError::no_api_key().into_response(),
        Presented::Key(key) if shared.api_keys.contains(&key) => {
            request.extensions_mut().insert(ApiKey(key));
            next.run(request).await
        }
        Presented::Key(key) => ApiError::invalid_api_key(&key).into_response(),
    }
}

/// Adds the headers Stripe puts on every answer.
pub(super) async fn stripe_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let request_id = random_id(&mut rand::rng(), "req_", 14);
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    headers.insert(STRIPE_VERSION, HeaderValue::from_static(API_VERSION));
    response
}

/// 404 for anything that is not an emulated endpoint.
pub(super) async fn unrecognized_url(method: Method, uri: Uri) -> ApiError {
    ApiError::unrecognized_url(method.as_str(), uri.path())
}

/// `GET /v1/customers/search` exists at Stripe, with its own query
/// language and pagination; rather than answer "No such customer:
/// 'search'", say it is not emulated.
pub(super) async fn search_customers() -> ApiError {
    ApiError::invalid_request(
        "The weft sandbox does not emulate customer search; list with \
         GET /v1/customers?email=... instead.",
    )
}

/// `GET /v1/customers`.
pub(super) async fn list_customers(
    State(shared): SharedState,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let form = Form::from_bytes(query.unwrap_or_default().as_bytes())?;
    let params = ListParams::parse(&form.params)?;
    // Only the page's Arcs are taken under the lock; rendering is outside.
    let page = shared.read().customers.page(&params)?;
    let body = if params.expand.is_empty() {
        let data: Vec<&Customer> = page.customers.iter().map(|customer| &**customer).collect();
        to_json(&List::new(data, page.has_more))
    } else {
        let data: Vec<serde_json::Value> =
            page.customers.iter().map(|customer| customer.render(&params.expand)).collect();
        to_json(&List::new(data, page.has_more))
    };
    Ok(json_response(StatusCode::OK, body))
}

#[derive(Serialize)]
struct List<T> {
    object: &'static str,
    data: Vec<T>,
    has_more: bool,
    url: &'static str,
}

impl<T> List<T> {
    fn new(data: Vec<T>, has_more: bool) -> Self {
        Self { object: "list", data, has_more, url: "/v1/customers" }
    }
}

/// `POST /v1/customers`.
pub(super) async fn create_customer(
    State(shared): SharedState,
    Extension(api_key): Extension<ApiKey>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let form = post_form(&headers, query.as_deref(), &body_bytes(body)?)?;
    let idempotency_key = idempotency_key(&headers)?;
    let params = CustomerParams::parse(&form.params, Endpoint::Create);
    let fingerprint = Fingerprint::new("POST /v1/customers".to_owned(), &form.pairs);

    let mut state = shared.write();
    if let Some(replay) = replay(&mut state, &api_key, idempotency_key.as_deref(), &fingerprint)? {
        return Ok(replay);
    }
    let mut params = params?;
    let expand = mem::take(&mut params.expand);
    let mut customer = Customer {
        id: state.new_customer_id(),
        created: unix_now(),
        invoice_prefix: Some(state.new_invoice_prefix()),
        ..Customer::default()
    };
    params.apply(&mut customer)?;
    let stored = state.customers.insert(customer);
    let body = render(&stored, &expand);
    save(&mut state, &api_key, idempotency_key.as_deref(), fingerprint, &body);
    drop(state);
    Ok(with_idempotency_key(json_response(StatusCode::OK, body), idempotency_key.as_deref()))
}

/// `GET /v1/customers/{customer}`: the customer, or `deleted: true` after
/// a delete (200, not 404, as at Stripe).
pub(super) async fn retrieve_customer(
    State(shared): SharedState,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response> {
    let Path(id) = customer_id(id)?;
    let form = Form::from_bytes(query.unwrap_or_default().as_bytes())?;
    let expand = expand_only(&form.params, true)?;
    let found = shared.read().customers.get(&id);
    match found {
        Lookup::Live(customer) => Ok(json_response(StatusCode::OK, render(&customer, &expand))),
        Lookup::Deleted => Ok(json_response(StatusCode::OK, to_json(&customer::deleted(&id)))),
        Lookup::Missing => Err(ApiError::no_such_customer(&id)),
    }
}

/// `POST /v1/customers/{customer}`: only the parameters sent change;
/// metadata merges key by key.
pub(super) async fn update_customer(
    State(shared): SharedState,
    Extension(api_key): Extension<ApiKey>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let Path(id) = customer_id(id)?;
    let form = post_form(&headers, query.as_deref(), &body_bytes(body)?)?;
    let idempotency_key = idempotency_key(&headers)?;
    let params = CustomerParams::parse(&form.params, Endpoint::Update);
    let fingerprint = Fingerprint::new(format!("POST /v1/customers/{id}"), &form.pairs);

    let mut state = shared.write();
    if let Some(replay) = replay(&mut state, &api_key, idempotency_key.as_deref(), &fingerprint)? {
        return Ok(replay);
    }
    let mut params = params?;
    let Lookup::Live(current) = state.customers.get(&id) else {
        return Err(ApiError::no_such_customer(&id));
    };
    let expand = mem::take(&mut params.expand);
    let mut changed = Customer::clone(&current);
    drop(current);
    params.apply(&mut changed)?;
    let stored = state.customers.replace(changed).ok_or_else(|| ApiError::no_such_customer(&id))?;
    let body = render(&stored, &expand);
    save(&mut state, &api_key, idempotency_key.as_deref(), fingerprint, &body);
    drop(state);
    Ok(with_idempotency_key(json_response(StatusCode::OK, body), idempotency_key.as_deref()))
}

/// `DELETE /v1/customers/{customer}`: permanent. Idempotency keys are
/// ignored, as Stripe ignores them on DELETE.
pub(super) async fn delete_customer(
    State(shared): SharedState,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let Path(id) = customer_id(id)?;
    let form = post_form(&headers, query.as_deref(), &body_bytes(body)?)?;
    expand_only(&form.params, false)?;
    if !shared.write().customers.delete(&id) {
        return Err(ApiError::no_such_customer(&id));
    }
    Ok(json_response(StatusCode::OK, to_json(&customer::deleted(&id))))
}

fn customer_id(id: Result<Path<String>, PathRejection>) -> Result<Path<String>> {
    id.map_err(|rejection| {
        ApiError::invalid_request(format!("Invalid customer id in URL: {rejection}"))
    })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes> {
    body.map_err(|rejection| {
        ApiError::invalid_request(format!("Could not read the request body: {rejection}"))
    })
}

/// The parameters of a write: the query string's, then the body's.
///
/// Stripe takes form encoding only; a JSON body (whatever its content
/// type says) is refused with Stripe's message rather than misread as one
/// strangely named parameter.
fn post_form(headers: &HeaderMap, query: Option<&str>, body: &[u8]) -> Result<Form> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let declared_other =
        content_type.as_deref().is_some_and(|mime| mime != "application/x-www-form-urlencoded");
    let looks_like_json = body
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|first| *first == b'{' || *first == b'[');
    if !body.is_empty() && (declared_other || looks_like_json) {
        return Err(ApiError::invalid_request(
            "Invalid request (check that your POST content type is \
             application/x-www-form-urlencoded). If you have any questions, we can help at \
             https://support.stripe.com/.",
        ));
    }
    let mut form = Form::default();
    form.parse(query.unwrap_or_default().as_bytes())?;
    form.parse(body)?;
    Ok(form)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value.to_str().map_err(|_| {
        ApiError::invalid_request("Invalid Idempotency-Key: must be printable ASCII")
    })?;
    if key.len() > MAX_KEY_LENGTH {
        return Err(ApiError::invalid_request(format!(
            "Invalid Idempotency-Key: keys can be at most {MAX_KEY_LENGTH} characters long"
        )));
    }
    Ok(Some(key.to_owned()))
}

/// The saved answer for a retried request, if this is one.
fn replay(
    state: &mut AccountState,
    api_key: &ApiKey,
    key: Option<&str>,
    fingerprint: &Fingerprint,
) -> Result<Option<Response>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let Some(saved) = state.idempotency.check(&api_key.0, key, fingerprint, Instant::now())? else {
        return Ok(None);
    };
    let mut response = with_idempotency_key(json_response(saved.status, saved.body), Some(key));
    response.headers_mut().insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    Ok(Some(response))
}

fn save(
    state: &mut AccountState,
    api_key: &ApiKey,
    key: Option<&str>,
    fingerprint: Fingerprint,
    body: &Bytes,
) {
    if let Some(key) = key {
        let response = SavedResponse { status: StatusCode::OK, body: body.clone() };
        state.idempotency.save(&api_key.0, key, fingerprint, response, Instant::now());
    }
}

fn with_idempotency_key(mut response: Response, key: Option<&str>) -> Response {
    if let Some(value) = key.and_then(|key| HeaderValue::from_str(key).ok()) {
        response.headers_mut().insert(IDEMPOTENCY_KEY, value);
    }
    response
}

fn render(customer: &Customer, expand: &[String]) -> Bytes {
    if expand.is_empty() { to_json(customer) } else { to_json(&customer.render(expand)) }
}

fn to_json(value: &impl Serialize) -> Bytes {
    // The emulator's own types always serialise.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
