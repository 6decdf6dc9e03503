//! Parts the JSON vendors' emulators (Baremetrics, Metronome, GrowPanel,
//! Stripe SCIM) share: bearer-key checks, per-key metering through
//! [`crate::limits`], JSON answers, deterministic ids and dates.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde_json::Value;

use crate::credentials::{Presented, presented_key};
use crate::limits::{Bucket, LimitPolicy, Limits, RateLimit};
use crate::requests::RequestLog;
use crate::spec::json_requests::{JsonCheck, check_json_request};

/// The API key a request authenticated with, put in its extensions so the
/// limits can meter per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiKey(pub String);

/// Which keys an emulator accepts and how it words a refusal.
#[derive(Clone)]
pub(crate) struct KeyCheck {
    pub keys: Arc<HashSet<String>>,
    /// The vendor's 401 answer.
    pub unauthorized: fn() -> Response,
}

impl fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCheck").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

/// Answers the vendor's 401 unless the request presents an accepted key
/// (Bearer, or Basic with the key as user), which it records as [`ApiKey`].
async fn require_key(State(check): State<KeyCheck>, mut request: Request, next: Next) -> Response {
    match presented_key(request.headers()) {
        Presented::Key(key) if check.keys.contains(&key) => {
            request.extensions_mut().insert(ApiKey(key));
            next.run(request).await
        }
        _ => (check.unauthorized)(),
    }
}

/// Wraps `routes` the way every emulator is wrapped, innermost first: the
/// check of each request against the vendor's description (so a request
/// it refuses never reaches a handler), limits (which see only
/// authenticated requests, metered per key), the key check, then the
/// request log around everything.
pub(crate) fn wrap_routes(
    routes: Router,
    requests: JsonCheck,
    limits: &Limits,
    check: KeyCheck,
    log: &RequestLog,
) -> Router {
    let routes = routes.layer(middleware::from_fn_with_state(requests, check_json_request));
    let routes = limits.wrap(routes);
    let routes = routes.layer(middleware::from_fn_with_state(check, require_key));
    log.wrap(routes)
}

/// Picks the budget for a request's method: a class name and its limit, or
/// `None` to leave the method unmetered.
pub(crate) type MethodLimits =
    Box<dyn Fn(&Method) -> Option<(&'static str, RateLimit)> + Send + Sync>;

/// Metering per API key and method class, with the vendor's wording.
pub(crate) struct KeyedPolicy {
    pub limit_for: MethodLimits,
    pub too_many_requests: fn() -> Response,
    pub server_error: fn() -> Response,
}

impl KeyedPolicy {
    /// One budget for every method, or none.
    pub fn uniform(
        limit: Option<RateLimit>,
        too_many_requests: fn() -> Response,
        server_error: fn() -> Response,
    ) -> Self {
        Self {
            limit_for: Box::new(move |_| limit.map(|limit| ("all", limit))),
            too_many_requests,
            server_error,
        }
    }
}

impl LimitPolicy for KeyedPolicy {
    fn bucket(&self, request: &Request) -> Option<Bucket> {
        let (class, limit) = (self.limit_for)(request.method())?;
        let key = request.extensions().get::<ApiKey>()?;
        Some(Bucket { key: format!("{}:{class}", key.0), limit })
    }

    fn too_many_requests(&self, _request: &Request) -> Response {
        (self.too_many_requests)()
    }

    fn server_error(&self, _request: &Request) -> Response {
        (self.server_error)()
    }
}

/// `value` as a JSON answer with `status`.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

/// `value` as a JSON answer with a media type of the vendor's own, as SCIM's
/// `application/scim+json`.
pub(crate) fn json_as(status: StatusCode, content_type: &'static str, value: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], value.to_string()).into_response()
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}

/// A version-4 UUID drawn from `rng`, so seeded emulators assign the same
/// ids run after run.
pub(crate) fn uuid_v4(rng: &mut impl Rng) -> String {
    let mut bytes: [u8; 16] = rng.random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// `unix` seconds as an RFC 3339 UTC timestamp with milliseconds
/// (`2025-10-01T12:00:00.000Z`), the form GrowPanel and SCIM use.
pub(crate) fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let seconds = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.000Z",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Both are small and positive by construction.
    (year, u32::try_from(month).unwrap_or(1), u32::try_from(day).unwrap_or(1))
}

/// Query pairs in order, percent-decoded, repeated keys kept.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The first value of `name` in `pairs`.
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
}

/// Names people recognise, for demo records.
pub(crate) const DEMO_NAMES: [&str; 16] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Katherine Johnson",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Margaret Hamilton",
    "Dennis Ritchie",
    "Frances Allen",
    "Radia Perlman",
    "Hedy Lamarr",
    "Claude Shannon",
    "Annie Easley",
    "Sophie Wilson",
    "Joan Clarke",
];

/// The `index`th demo person's name and a matching email on `domain`,
/// numbered so that many demo records stay distinct.
pub(crate) fn demo_person(index: usize, domain: &str) -> (String, String) {
    let name = DEMO_NAMES[index % DEMO_NAMES.len()];
    let handle: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '.' })
        .collect();
    let round = index / DEMO_NAMES.len();
    if round == 0 {
        (name.to_owned(), format!("{handle}@{domain}"))
    } else {
        (format!("{name} {}", round + 1), format!("{handle}{}@{domain}", round + 1))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Sending requests to an emulator over loopback and reading JSON back.

    use serde_json::Value;

    /// Status, headers and JSON body (`Value::Null` when empty) of an answer.
    #[derive(Debug)]
    pub(crate) struct Reply {
        pub status: u16,
        pub headers: reqwest::header::HeaderMap,
        pub json: Value,
    }

    /// `request` with `body` as its JSON body (reqwest's `json` feature is
    /// not enabled in this workspace).
    pub(crate) fn with_json(
        request: reqwest::RequestBuilder,
        body: &Value,
    ) -> reqwest::RequestBuilder {
        request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_string())
    }

    /// Sends `request` and reads the answer, panicking on transport errors
    /// or a body that is neither empty nor JSON.
    pub(crate) async fn send(request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request succeeds");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                panic!("not JSON ({error}): {}", String::from_utf8_lossy(&bytes))
            })
        };
        Reply { status, headers, json }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn rfc3339_renders_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn uuid_v4_has_the_version_and_variant_bits() {
        let id = uuid_v4(&mut StdRng::seed_from_u64(1));
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    }
}

/// What every request handler of an emulated account shares: the keys it
/// accepts, its state, its request log and its limits.
pub(crate) struct Account<S> {
    pub(crate) keys: KeyCheck,
    pub(crate) state: RwLock<S>,
    pub(crate) log: RequestLog,
    pub(crate) limits: Limits,
}

impl<S> Account<S> {
    /// Reads the state; a handler that panicked mid-write leaves data a test
    /// can still inspect, so poisoning is ignored.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, S> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the state (poisoning ignored, as in [`Account::read`]).
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, S> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }
}
