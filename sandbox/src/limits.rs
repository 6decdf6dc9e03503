//! Rate-limit enforcement and fault injection: the middleware slot each
//! emulator puts in front of its routes.
//!
//! The mechanics (token buckets, dice rolls, latency, cutting a body short)
//! are shared; what a vendor counts requests against and how it words a 429
//! or a 500 is the vendor's, supplied through [`LimitPolicy`]. Everything is
//! off unless configured, and the dice are seeded so a failing run can be
//! replayed.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{self, Next};
use axum::response::Response;
use futures_util::{StreamExt, stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Faults to inject into an emulator's answers, each at a rate in `0.0..=1.0`.
///
/// The default injects nothing.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultConfig {
    /// Share of requests answered 429 (the vendor's rate-limit answer)
    /// before they reach the API, as in a 429 storm.
    pub rate_429: f64,
    /// Share of requests answered 500 before they reach the API.
    pub rate_500: f64,
    /// Delay added to every request, in milliseconds.
    pub latency_ms: u64,
    /// Share of requests whose response body is cut off half way: the API
    /// did its work, the headers promise the whole body, and the connection
    /// closes early. Retrying such a write is only safe with an idempotency
    /// key, which is the point.
    pub truncate_rate: f64,
}

impl FaultConfig {
    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.rate_429 > 0.0
            || self.rate_500 > 0.0
            || self.latency_ms > 0
            || self.truncate_rate > 0.0
    }
}

/// At most `requests` requests per `per`, refilled continuously (a token
/// bucket holding `requests` tokens, as vendors like Stripe implement it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in a burst and per period.
    pub requests: u32,
    /// The period.
    pub per: Duration,
}

impl From<(u32, Duration)> for RateLimit {
    fn from((requests, per): (u32, Duration)) -> Self {
        Self { requests, per }
    }
}

/// A fault this module injected into a response.
///
/// Stored in the response's extensions, where [`crate::requests`] picks it
/// up for the request log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// An injected 429, not caused by the request rate.
    TooManyRequests,
    /// An injected 500.
    ServerError,
    /// A response body cut off half way.
    TruncatedBody,
}

/// The budget one request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Identifies the budget, for example API key plus method class.
    pub key: String,
    /// The budget's size.
    pub limit: RateLimit,
}

/// What a vendor contributes to [`Limits`]: how it meters requests and how
/// it words its refusals.
pub trait LimitPolicy: Send + Sync + 'static {
    /// The budget `request` counts against; `None` leaves it unmetered.
    fn bucket(&self, request: &Request) -> Option<Bucket>;
    /// The vendor's answer to a request over its rate limit.
    fn too_many_requests(&self, request: &Request) -> Response;
    /// The vendor's answer when it fails internally.
    fn server_error(&self, request: &Request) -> Response;
}

/// Rate-limit enforcement and fault injection for one emulator.
///
/// Cheap to clone; clones share counters and buckets.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<LimitsInner>,
}

struct LimitsInner {
    faults: FaultConfig,
    policy: Box<dyn LimitPolicy>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
    dice: Mutex<StdRng>,
    limited: AtomicU64,
    injected_429: AtomicU64,
    injected_500: AtomicU64,
    truncated: AtomicU64,
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limits")
            .field("faults", &self.inner.faults)
            .field("limited", &self.limited_count())
            .finish_non_exhaustive()
    }
}

/// What the dice decided for one request, drawn before any await.
struct Plan {
    fail: Option<FaultKind>,
    truncate: bool,
}

impl Limits {
    /// Limits that meter requests as `policy` says and inject `faults`,
    /// rolling dice seeded with `rng_seed`.
    pub fn new(faults: FaultConfig, rng_seed: u64, policy: impl LimitPolicy) -> Self {
        Self {
            inner: Arc::new(LimitsInner {
                faults,
                policy: Box::new(policy),
                buckets: Mutex::new(HashMap::new()),
                dice: Mutex::new(StdRng::seed_from_u64(rng_seed)),
                limited: AtomicU64::new(0),
                injected_429: AtomicU64::new(0),
                injected_500: AtomicU64::new(0),
                truncated: AtomicU64::new(0),
            }),
        }
    }

    /// Requests refused because their bucket was empty: zero means the
    /// client never exceeded the rate limit. Injected 429s are not counted.
    pub fn limited_count(&self) -> u64 {
        self.inner.limited.load(Ordering::Relaxed)
    }

    /// How many faults of `kind` were injected so far.
    pub fn injected_count(&self, kind: FaultKind) -> u64 {
        let counter = match kind {
            FaultKind::TooManyRequests => &self.inner.injected_429,
            FaultKind::ServerError => &self.inner.injected_500,
            FaultKind::TruncatedBody => &self.inner.truncated,
        };
        counter.load(Ordering::Relaxed)
    }

    /// Puts these limits in front of every route of `router`.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), enforce))
    }

    /// Takes a token from `bucket`, or says there was none.
    fn admit(&self, bucket: &Bucket, now: Instant) -> bool {
        let mut buckets = self.inner.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let tokens = buckets
            .entry(bucket.key.clone())
            .or_insert_with(|| TokenBucket::full(bucket.limit, now));
        tokens.take(bucket.limit, now)
    }

    fn plan(&self) -> Plan {
        let faults = &self.inner.faults;
        if faults.rate_429 <= 0.0 && faults.rate_500 <= 0.0 && faults.truncate_rate <= 0.0 {
            return Plan { fail: None, truncate: false };
        }
        let mut dice = self.inner.dice.lock().unwrap_or_else(PoisonError::into_inner);
        // One roll per kind, every time, so the sequence of faults depends
        // only on the seed and the number of requests.
        let (roll_429, roll_500, roll_truncate) =
            (dice.random::<f64>(), dice.random::<f64>(), dice.random::<f64>());
        let fail = if roll_429 < faults.rate_429 {
            Some(FaultKind::TooManyRequests)
        } else if roll_500 < faults.rate_500 {
            Some(FaultKind::ServerError)
        } else {
            None
        };
        Plan { fail, truncate: fail.is_none() && roll_truncate < faults.truncate_rate }
    }
}

/// The middleware behind [`Limits::wrap`], for use with
/// [`axum::middleware::from_fn_with_state`].
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let inner = &limits.inner;
    if let Some(bucket) = inner.policy.bucket(&request)
        && !limits.admit(&bucket, Instant::now())
    {
        inner.limited.fetch_add(1, Ordering::Relaxed);
        return inner.policy.too_many_requests(&request);
    }

    let plan = limits.plan();
    if inner.faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(inner.faults.latency_ms)).await;
    }
    if let Some(kind) = plan.fail {
        let mut response = match kind {
            FaultKind::TooManyRequests => {
                inner.injected_429.fetch_add(1, Ordering::Relaxed);
                inner.policy.too_many_requests(&request)
            }
            _ => {
                inner.injected_500.fetch_add(1, Ordering::Relaxed);
                inner.policy.server_error(&request)
            }
        };
        response.extensions_mut().insert(kind);
        return response;
    }

    let response = next.run(request).await;
    if plan.truncate {
        inner.truncated.fetch_add(1, Ordering::Relaxed);
        truncate(response).await
    } else {
        response
    }
}

/// How long a truncated body waits before failing, so that hyper flushes
/// the headers and the first half first: the client sees a 200 whose body
/// breaks off, not a connection that never answered.
const TRUNCATION_PAUSE: Duration = Duration::from_millis(20);

/// Sends half of `response`'s body under a `Content-Length` for all of it,
/// then fails the body, so the server drops the connection mid-body.
async fn truncate(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.extensions.insert(FaultKind::TruncatedBody);
    // Emulator bodies are built in memory, so this cannot fail in practice;
    // an empty body is still a broken answer if it ever does.
    let bytes = to_bytes(body, usize::MAX).await.unwrap_or_default();
    parts.headers.insert(CONTENT_LENGTH, bytes.len().into());
    let half = bytes.slice(..bytes.len() / 2);
    let chunks = stream::once(async move { Ok::<_, io::Error>(half) }).chain(stream::once(async {
        tokio::time::sleep(TRUNCATION_PAUSE).await;
        Err(io::Error::other("weft sandbox: injected truncated body"))
    }));
    // A streamed body has no known length, so hyper sends our header as is.
    Response::from_parts(parts, Body::from_stream(chunks))
}

#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn full(limit: RateLimit, now: Instant) -> Self {
        Self { tokens: f64::from(limit.requests), refilled: now }
    }

    fn take(&mut self, limit: RateLimit, now: Instant) -> bool {
        if limit.per.is_zero() {
            return true;
        }
        let capacity = f64::from(limit.requests);
        let per_second = capacity / limit.per.as_secs_f64();
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_PER_SECOND: RateLimit = RateLimit { requests: 10, per: Duration::from_secs(1) };

    #[test]
    fn a_full_bucket_admits_a_burst_of_its_size_then_refuses() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(TEN_PER_SECOND, start);
        for _ in 0..10 {
            assert!(bucket.take(TEN_PER_SECOND, start));
        }
        assert!(!bucket.take(TEN_PER_SECOND, start));
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(TEN_PER_SECOND, start);
        for _ in 0..10 {
            bucket.take(TEN_PER_SECOND, start);
        }
        let later = start + Duration::from_millis(250);
        assert!(bucket.take(TEN_PER_SECOND, later));
        assert!(bucket.take(TEN_PER_SECOND, later));
        assert!(!bucket.take(TEN_PER_SECOND, later));
        let much_later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert!(bucket.take(TEN_PER_SECOND, much_later));
        }
        assert!(!bucket.take(TEN_PER_SECOND, much_later));
    }

    #[test]
    fn fault_config_default_injects_nothing() {
        assert!(!FaultConfig::default().is_active());
        assert!(FaultConfig { latency_ms: 1, ..FaultConfig::default() }.is_active());
    }
}
