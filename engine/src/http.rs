//! Outgoing HTTP for connectors. The host, not the plugin, decides where a
//! request may go, adds the credential, bounds time and response size, and
//! (through [`RequestPolicy`]) paces and retries requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
pub use url::Url;

use crate::connector::AuthScheme;
use crate::credentials::Secret;

/// HTTP methods a connector may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
    /// HEAD
    Head,
}

impl Method {
    fn to_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
        }
    }

    /// Whether sending the request twice is harmless by HTTP semantics.
    pub fn is_idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

/// A request from a connector.
#[derive(Debug, Clone)]
pub struct Request {
    /// Method.
    pub method: Method,
    /// Absolute URL or a path joined to the base URL.
    pub url: String,
    /// Headers (no credential).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// The connector asserts a replay has no extra effect.
    pub idempotent: bool,
}

/// A response handed back to the connector.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why no response could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The target is not allowed; nothing was sent.
    #[error("denied: {0}")]
    Denied(String),
    /// The request is malformed; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No answer in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The connection failed.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The body exceeded the cap.
    #[error("response too large: {0}")]
    TooLarge(String),
}

/// Response header the host adds when it sent a request more than once:
/// the number of attempts, for the connector's error message.
pub const ATTEMPTS_HEADER: &str = "weft-attempts";

impl HttpError {
    fn after_attempts(self, attempts: u32) -> HttpError {
        let note = |m: String| format!("{m} (after {attempts} attempts)");
        match self {
            HttpError::Denied(m) => HttpError::Denied(note(m)),
            HttpError::InvalidRequest(m) => HttpError::InvalidRequest(note(m)),
            HttpError::Timeout(m) => HttpError::Timeout(note(m)),
            HttpError::Connection(m) => HttpError::Connection(note(m)),
            HttpError::TooLarge(m) => HttpError::TooLarge(note(m)),
        }
    }
}

/// Counters for one connection, reported in the run summary.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    requests: AtomicU64,
    throttled: AtomicU64,
    retries: AtomicU64,
    waited_micros: AtomicU64,
    denied: AtomicU64,
}

/// A snapshot of [`ConnectionStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Requests sent to the vendor.
    pub requests: u64,
    /// Responses with status 429.
    pub throttled: u64,
    /// Requests sent again after a failure.
    pub retries: u64,
    /// Milliseconds spent waiting before sending (limiter, backoff).
    pub waited_ms: u64,
    /// Requests refused by the host policy before sending.
    pub denied: u64,
}

impl ConnectionStats {
    /// Reads the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            waited_ms: self.waited_micros.load(Ordering::Relaxed) / 1000,
            denied: self.denied.load(Ordering::Relaxed),
        }
    }
}

/// How requests are paced and retried. The seam where the rate limiter and
/// the retry policy plug in; the default sends each request once, right away.
pub trait RequestPolicy: Send + Sync + std::fmt::Debug {
    /// Waits until `method` may be sent. Returns how long it waited.
    fn admit(&self, method: Method) -> std::pin::Pin<Box<dyn Future<Output = Duration> + Send + '_>>;

    /// Decides whether to send again after `attempt` (1-based) ended with
    /// `outcome`, and after how long. `None` hands the outcome to the plugin.
    fn retry_after(&self, method: Method, idempotent: bool, attempt: u32, outcome: &Result<Response, HttpError>) -> Option<Duration>;
}

/// Sends every request once, with no pacing.
#[derive(Debug, Default)]
pub struct SendOnce;

impl RequestPolicy for SendOnce {
    fn admit(&self, _method: Method) -> std::pin::Pin<Box<dyn Future<Output = Duration> + Send + '_>> {
        Box::pin(std::future::ready(Duration::ZERO))
    }

    fn retry_after(&self, _: Method, _: bool, _: u32, _: &Result<Response, HttpError>) -> Option<Duration> {
        None
    }
}

/// Limits that apply to every request of a connection.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Deadline for one request, from send to the last body byte.
    pub timeout: Duration,
    /// Largest response body accepted.
    pub max_response_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { timeout: Duration::from_secs(30), max_response_bytes: 16 << 20 }
    }
}

/// Everything the host needs to send a connection's requests: the allowed
/// origins, the credential and how to inject it, limits and the policy.
#[derive(Debug)]
pub struct ConnectionHttp {
    transport: Transport,
    base_url: Url,
    allowed: Vec<Origin>,
    credential: Option<(AuthScheme, Secret)>,
    limits: HttpLimits,
    policy: Arc<dyn RequestPolicy>,
    stats: Arc<ConnectionStats>,
    /// A sandbox run's emulators: when set, no request goes anywhere else,
    /// whatever the base URL and the allowed hosts say.
    confined_to: Option<Vec<Origin>>,
}

/// Where requests go.
#[derive(Clone)]
enum Transport {
    Network(reqwest::Client),
    Canned(Responder),
}

/// Answers requests in place of the network.
type Responder = Arc<dyn Fn(&Url, &Request) -> Response + Send + Sync>;

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Network(_) => "Network",
            Transport::Canned(_) => "Canned",
        })
    }
}

/// scheme, host, port: what a request must match to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn of(url: &Url) -> Option<Origin> {
        Some(Origin { scheme: url.scheme().to_owned(), host: url.host_str()?.to_ascii_lowercase(), port: url.port_or_known_default() })
    }

    /// `host` or `host:port` as a workflow or manifest names an extra host;
    /// https unless the base URL itself is plain http (local emulators).
    fn parse_extra(spec: &str, scheme: &str) -> Option<Origin> {
        let url = Url::parse(&format!("{scheme}://{spec}")).ok()?;
        Origin::of(&url)
    }
}

impl ConnectionHttp {
    /// Builds the HTTP side of one connection. `extra_hosts` must already be
    /// the hosts both the manifest declares and the workflow grants.
    pub fn new(
        client: reqwest::Client,
        base_url: &str,
        extra_hosts: &[String],
        credential: Option<(AuthScheme, Secret)>,
        limits: HttpLimits,
        policy: Arc<dyn RequestPolicy>,
    ) -> Result<Self, HttpError> {
        let base_url = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| HttpError::InvalidRequest(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidRequest(format!("base URL {base_url} must be http or https")));
        }
        let mut allowed = vec![Origin::of(&base_url).ok_or_else(|| HttpError::InvalidRequest(format!("base URL {base_url} has no host")))?];
        for host in extra_hosts {
            let origin = Origin::parse_extra(host, base_url.scheme())
                .ok_or_else(|| HttpError::InvalidRequest(format!("allowed host {host:?} is not a host name")))?;
            allowed.push(origin);
        }
        Ok(ConnectionHttp { transport: Transport::Network(client), base_url, allowed, credential, limits, policy, stats: Arc::default(), confined_to: None })
    }

    /// Confines the connection to `emulators` (base URLs of a sandbox's
    /// vendor emulators): every request to any other origin is refused as
    /// [`HttpError::Denied`], so a sandbox run cannot reach a real vendor
    /// with a real credential, whatever its connections say. Fails when the
    /// base URL itself is not one of them.
    pub fn confined_to(mut self, emulators: &[String]) -> Result<Self, HttpError> {
        let mut origins = Vec::with_capacity(emulators.len());
        for emulator in emulators {
            let url = Url::parse(emulator).map_err(|e| HttpError::InvalidRequest(format!("emulator URL {emulator:?}: {e}")))?;
            origins.push(Origin::of(&url).ok_or_else(|| HttpError::InvalidRequest(format!("emulator URL {emulator} has no host")))?);
        }
        let base = Origin::of(&self.base_url).ok_or_else(|| HttpError::InvalidRequest(format!("base URL {} has no host", self.base_url)))?;
        if !origins.contains(&base) {
            return Err(HttpError::Denied(format!("{} is not a sandbox emulator; a sandbox run sends requests to its emulators only", self.base_url)));
        }
        self.allowed.retain(|origin| origins.contains(origin));
        self.confined_to = Some(origins);
        Ok(self)
    }

    /// Replaces the network with `respond`, which answers every request that
    /// passes the policy checks. For benchmarks that measure the plugin
    /// boundary alone, and for connector tests with no server.
    pub fn with_canned_responses(mut self, respond: impl Fn(&Url, &Request) -> Response + Send + Sync + 'static) -> Self {
        self.transport = Transport::Canned(Arc::new(respond));
        self
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.as_str().trim_end_matches('/').to_owned()
    }

    /// The connection's counters.
    pub fn stats(&self) -> &Arc<ConnectionStats> {
        &self.stats
    }

    /// Resolves and checks the target of a request: relative paths join the
    /// base URL, and the origin must be one the connection allows.
    fn target(&self, url: &str) -> Result<Url, HttpError> {
        let target = if url.starts_with('/') {
            Url::parse(&format!("{}{url}", self.base_url.as_str().trim_end_matches('/')))
        } else {
            Url::parse(url)
        }
        .map_err(|e| HttpError::InvalidRequest(format!("bad URL {url:?}: {e}")))?;
        let origin = Origin::of(&target).ok_or_else(|| HttpError::InvalidRequest(format!("URL {target} has no host")))?;
        // Checked apart from `allowed`, so no later change to what a
        // connection allows can open a sandbox run to the world.
        if let Some(emulators) = &self.confined_to
            && !emulators.contains(&origin)
        {
            return Err(HttpError::Denied(format!(
                "{}://{}{} is not a sandbox emulator; a sandbox run sends requests to its emulators only",
                origin.scheme,
                origin.host,
                origin.port.map(|p| format!(":{p}")).unwrap_or_default()
            )));
        }
        if !self.allowed.contains(&origin) {
            return Err(HttpError::Denied(format!(
                "{}://{}{} is not an allowed host for this connection (allowed: {})",
                origin.scheme,
                origin.host,
                origin.port.map(|p| format!(":{p}")).unwrap_or_default(),
                self.allowed.iter().map(|o| o.host.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        if !target.username().is_empty() || target.password().is_some() {
            return Err(HttpError::InvalidRequest("URLs with user info are not allowed; the host injects credentials".into()));
        }
        Ok(target)
    }

    fn headers(&self, request: &Request) -> Result<HeaderMap, HttpError> {
        let mut headers = HeaderMap::new();
        let credential_header = self.credential.as_ref().and_then(|(scheme, _)| match scheme {
            AuthScheme::None => None,
            AuthScheme::Bearer | AuthScheme::BasicKeyAsUser => Some("authorization".to_owned()),
            AuthScheme::Header(name) => Some(name.to_ascii_lowercase()),
        });
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpError::InvalidRequest(format!("bad header name {name:?}")))?;
            // The credential header is the host's; a plugin cannot set or spoof it.
            if credential_header.as_deref() == Some(name.as_str()) || name == reqwest::header::HOST {
                continue;
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {name}")))?;
            headers.append(name, value);
        }
        if let Some((scheme, secret)) = &self.credential {
            let (name, value) = match scheme {
                AuthScheme::None => return Ok(headers),
                AuthScheme::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {}", secret.expose())),
                AuthScheme::BasicKeyAsUser => (
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", secret.expose()))),
                ),
                AuthScheme::Header(name) => (
                    HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| HttpError::InvalidRequest(format!("bad auth header name {name:?} in manifest")))?,
                    secret.expose().to_owned(),
                ),
            };
            // The error must not carry the value.
            let mut value = HeaderValue::from_str(&value)
                .map_err(|_| HttpError::InvalidRequest("the credential contains characters not allowed in a header".into()))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// Sends a connector's request under the connection's policy, with no
    /// retry started that could not finish before `deadline`.
    pub async fn send(&self, request: Request, deadline: Option<std::time::Instant>) -> Result<Response, HttpError> {
        let target = match self.target(&request.url) {
            Ok(target) => target,
            Err(e) => {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let headers = self.headers(&request)?;
        let mut attempt = 1;
        loop {
            let waited = self.policy.admit(request.method).await;
            self.stats.waited_micros.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = self.send_once(&request, &target, headers.clone()).await;
            match &outcome {
                Ok(response) => tracing::debug!(method = ?request.method, url = %target, status = response.status, bytes = response.body.len(), attempt, "vendor request"),
                Err(error) => tracing::debug!(method = ?request.method, url = %target, %error, attempt, "vendor request failed"),
            }
            if matches!(&outcome, Ok(r) if r.status == 429) {
                self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            }
            // A retry that would start after the call's deadline cannot help.
            let retry = self
                .policy
                .retry_after(request.method, request.idempotent, attempt, &outcome)
                .filter(|delay| deadline.is_none_or(|d| std::time::Instant::now() + *delay + self.limits.timeout.min(Duration::from_secs(1)) < d));
            match retry {
                Some(delay) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.waited_micros.fetch_add(delay.as_micros() as u64, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None if attempt == 1 => return outcome,
                // Say how hard the host tried: in the error, or in a header
                // the connector's error mapping can quote.
                None => {
                    return match outcome {
                        Ok(mut response) => {
                            response.headers.push((ATTEMPTS_HEADER.to_owned(), attempt.to_string()));
                            Ok(response)
                        }
                        Err(error) => Err(error.after_attempts(attempt)),
                    };
                }
            }
        }
    }

    async fn send_once(&self, request: &Request, target: &Url, headers: HeaderMap) -> Result<Response, HttpError> {
        let started = Instant::now();
        let client = match &self.transport {
            Transport::Network(client) => client,
            Transport::Canned(respond) => return Ok(respond(target, request)),
        };
        let mut builder = client.request(request.method.to_reqwest(), target.clone()).headers(headers).timeout(self.limits.timeout);
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| classify(&e, target))?;
        let status = response.status().as_u16();
        let cap = self.limits.max_response_bytes;
        if let Some(length) = response.content_length()
            && length > cap as u64
        {
            return Err(HttpError::TooLarge(format!("{target} answered with {length} bytes; the cap is {cap} bytes")));
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        // Sized once when the length is announced (it is under the cap, checked
        // above), rather than regrown and copied as chunks arrive.
        let mut body = Vec::with_capacity(response.content_length().map_or(0, |length| length as usize));
        loop {
            let remaining = self.limits.timeout.saturating_sub(started.elapsed());
            let chunk = match tokio::time::timeout(remaining, response.chunk()).await {
                Ok(chunk) => chunk.map_err(|e| classify(&e, target))?,
                Err(_) => return Err(HttpError::Timeout(format!("{target}: body not complete after {:?}", self.limits.timeout))),
            };
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > cap {
                return Err(HttpError::TooLarge(format!("{target} answered with more than {cap} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, headers, body })
    }
}

fn classify(error: &reqwest::Error, target: &Url) -> HttpError {
    // reqwest's Display names the URL and the cause; it never includes headers.
    let mut message = format!("{}{}", target.origin().ascii_serialization(), target.path());
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = source {
        message.push_str(": ");
        message.push_str(&e.to_string().replace(target.as_str(), ""));
        source = e.source();
    }
    if error.is_timeout() {
        HttpError::Timeout(message)
    } else if error.is_builder() {
        HttpError::InvalidRequest(message)
    } else {
        HttpError::Connection(message)
    }
}

/// The process-wide HTTP client: one connection pool for every connection.
pub fn shared_client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                // A redirect could lead to a host the connection does not allow.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(32)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(base: &str, extra: &[&str]) -> ConnectionHttp {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        ConnectionHttp::new(
            shared_client(),
            base,
            &extra,
            Some((AuthScheme::Bearer, Secret::new("sk_test_secret"))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )
        .expect("valid base URL")
    }

    #[test]
    fn relative_paths_join_the_base_url() {
        let c = connection("http://127.0.0.1:4000/v1/", &[]);
        assert_eq!(c.target("/customers").map(|u| u.to_string()), Ok("http://127.0.0.1:4000/v1/customers".into()));
    }

    #[test]
    fn a_confined_connection_reaches_only_the_emulators() {
        let emulators = ["http://127.0.0.1:4000".to_owned(), "http://127.0.0.1:4001/v1".to_owned()];
        let c = connection("http://127.0.0.1:4001/v1", &["127.0.0.1:4999"]).confined_to(&emulators).expect("the base URL is an emulator");
        assert!(c.target("/customers").is_ok());
        assert!(matches!(c.target("http://127.0.0.1:4999/x"), Err(HttpError::Denied(m)) if m.contains("not a sandbox emulator")), "an extra host is dropped");
        assert!(matches!(c.target("https://api.stripe.com/v1/customers"), Err(HttpError::Denied(_))));
        let production = connection("https://api.stripe.com", &[]).confined_to(&emulators);
        assert!(matches!(production, Err(HttpError::Denied(m)) if m.contains("api.stripe.com")));
    }

    #[test]
    fn disallowed_host_fails() {
        let c = connection("https://api.stripe.com", &[]);
        assert!(matches!(c.target("https://evil.example/"), Err(HttpError::Denied(_))));
        assert!(matches!(c.target("http://api.stripe.com/"), Err(HttpError::Denied(_))), "scheme is part of the origin");
        assert!(matches!(c.target("https://api.stripe.com:8443/"), Err(HttpError::Denied(_))), "port is part of the origin");
    }

    #[test]
    fn granted_extra_host_is_allowed() {
        let c = connection("https://api.stripe.com", &["files.stripe.com"]);
        assert!(c.target("https://files.stripe.com/v1/files").is_ok());
    }

    #[test]
    fn plugin_cannot_set_the_credential_header() {
        let c = connection("https://api.stripe.com", &[]);
        let request = Request {
            method: Method::Get,
            url: "/v1".into(),
            headers: vec![("Authorization".into(), "Bearer stolen".into()), ("Accept".into(), "application/json".into())],
            body: None,
            idempotent: false,
        };
        let headers = c.headers(&request).expect("valid headers");
        let auth: Vec<_> = headers.get_all("authorization").iter().collect();
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0].to_str().ok(), Some("Bearer sk_test_secret"));
        assert!(auth[0].is_sensitive());
    }
}
