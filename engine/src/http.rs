//! Outgoing HTTP for connectors. The host, not the plugin, decides where a
//! request may go (host names, then the addresses they resolve to: see
//! [`EgressPolicy`]), adds the credential, bounds what a plugin may send
//! (headers, URL, body, requests per call) and what it gets back (time,
//! size, no echo of the credential), and (through [`RequestPolicy`]) paces
//! and retries requests.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use memchr::memmem;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
pub use url::Url;

use crate::connector::AuthScheme;
use crate::credentials::Secret;

/// Most headers one request may carry. A `HeaderMap` panics past 24,576
/// distinct names; no vendor API needs more than a handful.
pub const MAX_REQUEST_HEADERS: usize = 100;
/// Longest header a request may carry, name and value together.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// Most header bytes (names and values) one request may carry.
pub const MAX_HEADERS_TOTAL_BYTES: usize = 64 << 10;
/// Longest URL a request may name (after joining the base URL).
pub const MAX_URL_BYTES: usize = 16 << 10;
/// Requests one connector call may send when the workflow sets no
/// `max_requests_per_call`: far above what a page, a lookup-then-write or a
/// batch needs, far below what a plugin looping on `http.send` would send.
pub const DEFAULT_REQUESTS_PER_CALL: u32 = 1000;
/// What a credential echoed by a vendor is replaced with before the plugin
/// sees the response.
pub const REDACTED: &str = "[redacted]";

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
    /// The method's name, upper-case.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }

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
    /// Time from sending a request to having its whole answer.
    request_micros: AtomicU64,
    /// Answers by [`STATUS_CLASSES`].
    by_class: [AtomicU64; STATUS_CLASSES.len()],
}

/// How the run summary and the metrics group answers: `error` when none
/// came (timeout, connection) or the status is outside HTTP's classes.
pub const STATUS_CLASSES: [&str; 6] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index in [`STATUS_CLASSES`] of an answer with `status` (`None`: no
/// answer).
pub fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(code @ 100..=599) => usize::from(code / 100),
        _ => 0,
    }
}

/// A snapshot of [`ConnectionStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
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
    /// Milliseconds spent in requests, from sending to the whole answer.
    pub request_ms: u64,
    /// Requests by the class of their answer (`2xx`, `4xx`, `error` when
    /// none came…); classes never seen are left out.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<String, u64>,
}

impl ConnectionStats {
    /// Reads the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        let statuses = STATUS_CLASSES
            .iter()
            .zip(&self.by_class)
            .map(|(name, n)| ((*name).to_owned(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        StatsSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            waited_ms: self.waited_micros.load(Ordering::Relaxed) / 1000,
            denied: self.denied.load(Ordering::Relaxed),
            request_ms: self.request_micros.load(Ordering::Relaxed) / 1000,
            statuses,
        }
    }

    fn answered(&self, status: Option<u16>, took: Duration) {
        self.by_class[status_class(status)].fetch_add(1, Ordering::Relaxed);
        self.request_micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// What the host has tried so far for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempts {
    /// Attempts made, the one just ended included (1-based).
    pub made: u32,
    /// How many of them timed out.
    pub timed_out: u32,
    /// When the last attempt was let go by the policy (after its wait):
    /// a limiter tells a 429 for a request sent before it slowed down
    /// from one sent after.
    pub sent_at: Option<tokio::time::Instant>,
}

/// How requests are paced and retried. The seam where the rate limiter and
/// the retry policy plug in; the default sends each request once, right away.
pub trait RequestPolicy: Send + Sync + std::fmt::Debug {
    /// Waits until `method` may be sent. Returns how long it waited.
    fn admit(
        &self,
        method: Method,
    ) -> std::pin::Pin<Box<dyn Future<Output = Duration> + Send + '_>>;

    /// Decides whether to send again after `attempts` (the last of which
    /// ended with `outcome`), and after how long. `None` hands the outcome
    /// to the plugin.
    fn retry_after(
        &self,
        method: Method,
        idempotent: bool,
        attempts: Attempts,
        outcome: &Result<Response, HttpError>,
    ) -> Option<Duration>;

    /// The rates in force now, requests per second, by the class of
    /// requests each applies to (`any`, `read`, `post`…): for the metrics.
    /// None when the policy does not pace.
    fn rates(&self) -> Vec<(crate::connector::MethodClass, f64)> {
        Vec::new()
    }
}

/// Sends every request once, with no pacing.
#[derive(Debug, Default)]
pub struct SendOnce;

impl RequestPolicy for SendOnce {
    fn admit(
        &self,
        _method: Method,
    ) -> std::pin::Pin<Box<dyn Future<Output = Duration> + Send + '_>> {
        Box::pin(std::future::ready(Duration::ZERO))
    }

    fn retry_after(
        &self,
        _: Method,
        _: bool,
        _: Attempts,
        _: &Result<Response, HttpError>,
    ) -> Option<Duration> {
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
    /// Largest request body a plugin may send.
    pub max_request_bytes: usize,
    /// Requests one connector call may send (the host's own retries are not
    /// counted). Enforced for calls run inside [`within_call`].
    pub max_requests_per_call: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            max_request_bytes: 16 << 20,
            max_requests_per_call: DEFAULT_REQUESTS_PER_CALL,
        }
    }
}

tokio::task_local! {
    /// Requests sent so far by the connector call being polled.
    static REQUESTS_IN_CALL: Cell<u32>;
}

/// Runs `call` (one connector call) with its own request count: every
/// request it sends through a [`ConnectionHttp`] counts against that
/// connection's [`HttpLimits::max_requests_per_call`], and past it the
/// request is denied without being sent. A task-local rather than a
/// parameter, so the count follows the call through the plugin and back
/// into `http.send` without the runtime carrying it.
pub async fn within_call<F: Future>(call: F) -> F::Output {
    REQUESTS_IN_CALL.scope(Cell::new(0), call).await
}

tokio::task_local! {
    /// What stops the run whose calls are being polled (its cancel, the
    /// process's shutdown), and whether a wait was cut short by it.
    static RUN_STOP: RunStop;
}

/// See [`stoppable_by`].
struct RunStop {
    tokens: Vec<tokio_util::sync::CancellationToken>,
    cut_short: Cell<bool>,
}

/// Runs `work` (a run's step) so that a wait in it for a rate limit's slot
/// or a retry's backoff (a `Retry-After` of minutes) ends as soon as one of
/// `tokens` is cancelled, instead of holding a cancelled or stopping run
/// until it passes. A request already on its way is not cut: a write's
/// outcome would then be unknown. What was cut is told by
/// [`wait_cut_short`].
pub(crate) async fn stoppable_by<F: Future>(
    tokens: Vec<tokio_util::sync::CancellationToken>,
    work: F,
) -> F::Output {
    RUN_STOP.scope(RunStop { tokens, cut_short: Cell::new(false) }, work).await
}

/// `wait`, or `None` when the run it waits for is stopped first (inside
/// [`stoppable_by`]; outside, `wait` runs to its end).
pub(crate) async fn unless_stopped<F: Future>(wait: F) -> Option<F::Output> {
    let Ok(tokens) = RUN_STOP.try_with(|stop| stop.tokens.clone()) else {
        return Some(wait.await);
    };
    if tokens.is_empty() {
        return Some(wait.await);
    }
    let stopped = futures_util::future::select_all(
        tokens.iter().map(|token| Box::pin(token.cancelled())).collect::<Vec<_>>(),
    );
    tokio::select! {
        biased;
        _ = stopped => {
            let _ = RUN_STOP.try_with(|stop| stop.cut_short.set(true));
            None
        }
        done = wait => Some(done),
    }
}

/// Whether a wait of the run being polled was cut short by its stop (see
/// [`stoppable_by`]): a call that then fails failed because the run is
/// stopping, not because of its vendor.
pub(crate) fn wait_cut_short() -> bool {
    RUN_STOP.try_with(|stop| stop.cut_short.get()).unwrap_or(false)
}

/// Counts one more request for the call being polled; its number within
/// the call, or `None` outside [`within_call`].
fn count_request_in_call() -> Option<u32> {
    REQUESTS_IN_CALL
        .try_with(|sent| {
            let number = sent.get().saturating_add(1);
            sent.set(number);
            number
        })
        .ok()
}

/// Which network addresses a connection's requests may reach. Checked on
/// every address a host name resolves to, inside the resolver the
/// connection pool uses (so the address checked is the address connected
/// to, and a name that changes its answer between check and connect gains
/// nothing), and on IP literals in URLs, which are never resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EgressPolicy {
    /// Public addresses only: the default for a base URL that is not on
    /// loopback, so a plugin or a DNS answer cannot steer requests to the
    /// cloud metadata service or the internal network.
    Public,
    /// Public and loopback addresses: the default for a base URL on
    /// loopback (an emulator, a local proxy).
    PublicAndLoopback,
    /// Loopback only: for runs that must reach nothing but local emulators.
    LoopbackOnly,
    /// Every address, private networks included: the workflow's
    /// `allow_private_network = true`.
    Any,
}

impl EgressPolicy {
    /// The policy a connection gets unless the workflow says otherwise:
    /// [`EgressPolicy::PublicAndLoopback`] when `base_url` is on loopback
    /// (a loopback IP, `localhost` or a `.localhost` name), else
    /// [`EgressPolicy::Public`].
    pub fn default_for(base_url: &Url) -> Self {
        let on_loopback = match base_url.host() {
            Some(url::Host::Ipv4(ip)) => AddressScope::of(IpAddr::V4(ip)) == AddressScope::Loopback,
            Some(url::Host::Ipv6(ip)) => AddressScope::of(IpAddr::V6(ip)) == AddressScope::Loopback,
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                name == "localhost" || name.ends_with(".localhost")
            }
            None => false,
        };
        if on_loopback { EgressPolicy::PublicAndLoopback } else { EgressPolicy::Public }
    }

    /// Whether a request may connect to `ip`.
    pub fn permits(self, ip: IpAddr) -> bool {
        match (self, AddressScope::of(ip)) {
            (EgressPolicy::Any, _) => true,
            (EgressPolicy::LoopbackOnly, scope) => scope == AddressScope::Loopback,
            (EgressPolicy::PublicAndLoopback, AddressScope::Public | AddressScope::Loopback) => {
                true
            }
            (EgressPolicy::Public, AddressScope::Public) => true,
            _ => false,
        }
    }

    /// What to tell the workflow author when `ip` is refused.
    fn advice(self) -> &'static str {
        match self {
            EgressPolicy::LoopbackOnly => "this run may reach loopback addresses only",
            _ => {
                "a connection reaches public addresses only (and loopback when its base URL is on loopback); set `allow_private_network = true` on the connection to reach this one"
            }
        }
    }

    fn index(self) -> usize {
        match self {
            EgressPolicy::Public => 0,
            EgressPolicy::PublicAndLoopback => 1,
            EgressPolicy::LoopbackOnly => 2,
            EgressPolicy::Any => 3,
        }
    }
}

/// Where an address leads, as far as egress is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressScope {
    /// The public internet.
    Public,
    /// This machine: 127.0.0.0/8, ::1, and IPv6 forms that carry them.
    Loopback,
    /// Anything else (private, link-local, unique-local, shared/CGNAT,
    /// multicast, unspecified, documentation, reserved); says which.
    NonPublic(&'static str),
}

impl AddressScope {
    /// The scope of `ip`. An IPv6 address that carries an IPv4 one
    /// (v4-mapped, v4-compatible, NAT64, 6to4) has the scope of the IPv4
    /// address, so `::ffff:169.254.169.254` is as link-local as the original.
    pub fn of(ip: IpAddr) -> AddressScope {
        match ip {
            IpAddr::V4(ip) => Self::of_v4(ip),
            IpAddr::V6(ip) => Self::of_v6(ip),
        }
    }

    fn of_v4(ip: Ipv4Addr) -> AddressScope {
        let [a, b, c, _] = ip.octets();
        AddressScope::NonPublic(match (a, b, c) {
            (127, _, _) => return AddressScope::Loopback,
            (0, _, _) => "unspecified (0.0.0.0/8)",
            (10, _, _) => "private (10.0.0.0/8)",
            (172, 16..=31, _) => "private (172.16.0.0/12)",
            (192, 168, _) => "private (192.168.0.0/16)",
            (100, 64..=127, _) => "shared address space, CGNAT (100.64.0.0/10)",
            (169, 254, _) => "link-local, where cloud metadata lives (169.254.0.0/16)",
            (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
            (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation (TEST-NET)",
            (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
            (224..=239, _, _) => "multicast (224.0.0.0/4)",
            (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
            _ => return AddressScope::Public,
        })
    }

    fn of_v6(ip: Ipv6Addr) -> AddressScope {
        if ip.is_loopback() {
            return AddressScope::Loopback;
        }
        if ip.is_unspecified() {
            return AddressScope::NonPublic("unspecified (::)");
        }
        let s = ip.segments();
        let low_v4 = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        if let Some(v4) = ip.to_ipv4_mapped() {
            return Self::of_v4(v4);
        }
        // ::a.b.c.d (deprecated v4-compatible) and 64:ff9b::a.b.c.d (NAT64).
        if s[..6] == [0; 6] || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            return Self::of_v4(low_v4());
        }
        // 6to4: 2002:AABB:CCDD::/48 carries a.b.c.d.
        if s[0] == 0x2002 {
            return Self::of_v4(Ipv4Addr::new(
                (s[1] >> 8) as u8,
                s[1] as u8,
                (s[2] >> 8) as u8,
                s[2] as u8,
            ));
        }
        AddressScope::NonPublic(match s[0] {
            0xfc00..=0xfdff => "unique local (fc00::/7)",
            0xfe80..=0xfebf => "link-local (fe80::/10)",
            0xfec0..=0xfeff => "site-local (fec0::/10)",
            0xff00..=0xffff => "multicast (ff00::/8)",
            0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
            0x2000..=0x3fff => return AddressScope::Public,
            _ => "not global unicast (outside 2000::/3)",
        })
    }
}

/// Why a request was refused for the address it leads to.
fn egress_denial(host: &str, ip: IpAddr, policy: EgressPolicy) -> String {
    let scope = match AddressScope::of(ip) {
        AddressScope::NonPublic(kind) => kind,
        AddressScope::Loopback => "loopback",
        AddressScope::Public => "public",
    };
    if host == ip.to_string() {
        format!("{ip} is {scope}: {}", policy.advice())
    } else {
        format!("{host} resolves to {ip}, which is {scope}: {}", policy.advice())
    }
}

/// A name resolved only to addresses the policy refuses; carried through
/// reqwest's error chain so [`classify`] can report it as a denial.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct EgressDenied(String);

/// Resolves names for one egress policy and drops the addresses it refuses.
#[derive(Debug)]
struct EgressResolver {
    policy: EgressPolicy,
    /// Names answered from this table instead of DNS, like `/etc/hosts`;
    /// their addresses are checked like any other.
    pinned: Arc<HashMap<String, Vec<IpAddr>>>,
    /// Proxy hosts the operator set in the environment: reqwest resolves
    /// them in place of the vendor's host, and they are the operator's own
    /// choice, so they are not filtered (the proxy then decides).
    proxies: Vec<String>,
}

impl reqwest::dns::Resolve for EgressResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let pinned = self.pinned.get(&host).cloned();
        let policy = self.policy;
        let trusted = policy == EgressPolicy::Any || self.proxies.contains(&host);
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = match pinned {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            if trusted {
                return Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs);
            }
            let (permitted, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                addresses.into_iter().partition(|a| policy.permits(a.ip()));
            match refused.first() {
                Some(first) if permitted.is_empty() => {
                    Err(Box::new(EgressDenied(egress_denial(&host, first.ip(), policy)))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
                _ => Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// Hosts of the proxies reqwest takes from the environment.
fn environment_proxies() -> Vec<String> {
    ["ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .filter_map(|value| {
            let value = value.trim();
            let url = if value.contains("://") {
                Url::parse(value)
            } else {
                Url::parse(&format!("http://{value}"))
            };
            Some(
                url.ok()?
                    .host_str()?
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_ascii_lowercase(),
            )
        })
        .collect()
}

/// The connection pools requests go out through: one per egress policy,
/// each with a resolver that enforces it, so a pooled connection opened
/// under one policy never serves a request under a stricter one. Cheap to
/// clone; the pools are built on first use.
#[derive(Debug, Clone)]
pub struct HttpClients {
    pinned: Arc<HashMap<String, Vec<IpAddr>>>,
    clients: Arc<[std::sync::OnceLock<Result<reqwest::Client, String>>; 4]>,
}

impl HttpClients {
    fn new(pinned: HashMap<String, Vec<IpAddr>>) -> Self {
        HttpClients { pinned: Arc::new(pinned), clients: Arc::default() }
    }

    /// Pools of their own whose resolvers answer `names` from the table
    /// instead of DNS, as `/etc/hosts` would (the egress policy still
    /// applies to those addresses). For tests that need a name resolving to
    /// a given address.
    pub fn with_pinned_names(names: &[(&str, IpAddr)]) -> Self {
        let mut pinned: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ip) in names {
            pinned.entry(name.to_ascii_lowercase()).or_default().push(*ip);
        }
        HttpClients::new(pinned)
    }

    fn client(&self, policy: EgressPolicy) -> Result<reqwest::Client, HttpError> {
        let built = self.clients[policy.index()].get_or_init(|| {
            let resolver = EgressResolver {
                policy,
                pinned: self.pinned.clone(),
                proxies: environment_proxies(),
            };
            reqwest::Client::builder()
                // A redirect could lead to a host the connection does not allow.
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
                .pool_max_idle_per_host(32)
                .dns_resolver(Arc::new(resolver))
                .build()
                .map_err(|e| e.to_string())
        });
        built
            .clone()
            .map_err(|e| HttpError::Connection(format!("could not set up the HTTP client: {e}")))
    }
}

/// Finds the connection's credential, in each form the host sends it, in
/// what a vendor answers: a vendor that echoes the request (a debug
/// endpoint, an error that quotes headers) must not hand it to the plugin,
/// and through the plugin to page files, the run store and `runs show`.
struct CredentialScrubber {
    /// The secret, and base64 of `secret:` (the Basic form) without its
    /// padding, each with the padding that may follow it (`=`, `==` or
    /// nothing); longest first, so a longer form is replaced whole. A
    /// padded occurrence starts with the unpadded form, so one search finds
    /// both.
    forms: Vec<(memmem::Finder<'static>, &'static [u8])>,
}

impl std::fmt::Debug for CredentialScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CredentialScrubber({} forms)", self.forms.len())
    }
}

impl CredentialScrubber {
    fn new(credential: Option<&(AuthScheme, Secret)>) -> Self {
        let mut forms: Vec<(String, &'static [u8])> = Vec::new();
        if let Some((_, secret)) = credential
            && !secret.expose().is_empty()
        {
            let basic = format!("{}:", secret.expose());
            let padding: &'static [u8] = match basic.len() % 3 {
                1 => b"==",
                2 => b"=",
                _ => b"",
            };
            forms.push((base64::engine::general_purpose::STANDARD_NO_PAD.encode(&basic), padding));
            forms.push((secret.expose().to_owned(), b""));
        }
        forms.sort_by_key(|(form, _)| std::cmp::Reverse(form.len()));
        forms.dedup_by(|a, b| a.0 == b.0);
        CredentialScrubber {
            forms: forms
                .iter()
                .map(|(form, padding)| {
                    (memmem::Finder::new(form.as_bytes()).into_owned(), *padding)
                })
                .collect(),
        }
    }

    /// Replaces every form of the credential in `response` with
    /// [`REDACTED`]. Allocates nothing when there is none.
    fn scrub(&self, response: &mut Response) {
        for (form, padding) in &self.forms {
            if let Some(first) = form.find(&response.body) {
                response.body = replace_all(&response.body, form, padding, first);
            }
            for (_, value) in &mut response.headers {
                if let Some(first) = form.find(value.as_bytes()) {
                    *value = String::from_utf8_lossy(&replace_all(
                        value.as_bytes(),
                        form,
                        padding,
                        first,
                    ))
                    .into_owned();
                }
            }
        }
    }
}

/// `haystack` with every match of `needle` (and `padding` right after it,
/// when it is there) replaced by [`REDACTED`]; the first match is at
/// `first`.
fn replace_all(
    haystack: &[u8],
    needle: &memmem::Finder<'_>,
    padding: &[u8],
    first: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut copied = 0;
    let mut found = Some(first);
    while let Some(at) = found {
        out.extend_from_slice(&haystack[copied..at]);
        out.extend_from_slice(REDACTED.as_bytes());
        copied = at + needle.needle().len();
        if haystack[copied..].starts_with(padding) {
            copied += padding.len();
        }
        found = needle.find(&haystack[copied..]).map(|next| copied + next);
    }
    out.extend_from_slice(&haystack[copied..]);
    out
}

/// Request headers that describe the connection or the message framing
/// rather than the request: the host and its HTTP stack set them. A plugin
/// that could set `Content-Length` or `Transfer-Encoding` could smuggle a
/// second request onto a pooled connection another connection reuses.
const HOST_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
];

/// At most the first 64 characters of `text`, for messages about oversized input.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Everything the host needs to send a connection's requests: the allowed
/// origins and addresses, the credential and how to inject it, limits and
/// the policy.
#[derive(Debug)]
pub struct ConnectionHttp {
    transport: Transport,
    base_url: Url,
    allowed: Vec<Origin>,
    egress: EgressPolicy,
    credential: Option<(AuthScheme, Secret)>,
    scrubber: CredentialScrubber,
    limits: HttpLimits,
    policy: Arc<dyn RequestPolicy>,
    stats: Arc<ConnectionStats>,
    /// The process's counters for this connection (`weft serve`'s
    /// `/metrics`), when it keeps them.
    metrics: Option<Arc<crate::metrics::ConnectionMetrics>>,
    /// A sandbox run's emulators: when set, no request goes anywhere else,
    /// whatever the base URL and the allowed hosts say.
    confined_to: Option<Vec<Origin>>,
}

/// Where requests go.
#[derive(Clone)]
enum Transport {
    Network(HttpClients),
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
        Some(Origin {
            scheme: url.scheme().to_owned(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
        })
    }

    /// `host` or `host:port` as a workflow or manifest names an extra host;
    /// https unless the base URL itself is plain http (local emulators).
    fn parse_extra(spec: &str, scheme: &str) -> Option<Origin> {
        let url = Url::parse(&format!("{scheme}://{spec}")).ok()?;
        Origin::of(&url)
    }
}

impl ConnectionHttp {
    /// Builds the HTTP side of one connection, sending through `clients`
    /// (normally [`shared_client`]) under the egress policy its base URL
    /// calls for ([`EgressPolicy::default_for`]; see [`Self::with_egress`]).
    /// `extra_hosts` must already be the hosts both the manifest declares
    /// and the workflow grants.
    pub fn new(
        clients: HttpClients,
        base_url: &str,
        extra_hosts: &[String],
        credential: Option<(AuthScheme, Secret)>,
        limits: HttpLimits,
        policy: Arc<dyn RequestPolicy>,
    ) -> Result<Self, HttpError> {
        let base_url = Url::parse(base_url.trim_end_matches('/'))
            .map_err(|e| HttpError::InvalidRequest(format!("base URL {base_url:?}: {e}")))?;
        if !matches!(base_url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidRequest(format!(
                "base URL {base_url} must be http or https"
            )));
        }
        let mut allowed = vec![Origin::of(&base_url).ok_or_else(|| {
            HttpError::InvalidRequest(format!("base URL {base_url} has no host"))
        })?];
        for host in extra_hosts {
            let origin = Origin::parse_extra(host, base_url.scheme()).ok_or_else(|| {
                HttpError::InvalidRequest(format!("allowed host {host:?} is not a host name"))
            })?;
            allowed.push(origin);
        }
        let egress = EgressPolicy::default_for(&base_url);
        let scrubber = CredentialScrubber::new(credential.as_ref());
        Ok(ConnectionHttp {
            transport: Transport::Network(clients),
            base_url,
            allowed,
            egress,
            credential,
            scrubber,
            limits,
            policy,
            stats: Arc::default(),
            metrics: None,
            confined_to: None,
        })
    }

    /// Replaces the egress policy the base URL called for, e.g. with
    /// [`EgressPolicy::Any`] for a workflow's `allow_private_network`.
    pub fn with_egress(mut self, egress: EgressPolicy) -> Self {
        self.egress = egress;
        self
    }

    /// Counts this connection's requests in the process's metrics too.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::ConnectionMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The addresses this connection may reach.
    pub fn egress(&self) -> EgressPolicy {
        self.egress
    }

    /// The connection's limits.
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    /// Confines the connection to `emulators` (base URLs of a sandbox's
    /// vendor emulators): every request to any other origin is refused as
    /// [`HttpError::Denied`], so a sandbox run cannot reach a real vendor
    /// with a real credential, whatever its connections say. Fails when the
    /// base URL itself is not one of them.
    pub fn confined_to(mut self, emulators: &[String]) -> Result<Self, HttpError> {
        let mut origins = Vec::with_capacity(emulators.len());
        for emulator in emulators {
            let url = Url::parse(emulator).map_err(|e| {
                HttpError::InvalidRequest(format!("emulator URL {emulator:?}: {e}"))
            })?;
            origins.push(Origin::of(&url).ok_or_else(|| {
                HttpError::InvalidRequest(format!("emulator URL {emulator} has no host"))
            })?);
        }
        let base = Origin::of(&self.base_url).ok_or_else(|| {
            HttpError::InvalidRequest(format!("base URL {} has no host", self.base_url))
        })?;
        if !origins.contains(&base) {
            return Err(HttpError::Denied(format!(
                "{} is not a sandbox emulator; a sandbox run sends requests to its emulators only",
                self.base_url
            )));
        }
        self.allowed.retain(|origin| origins.contains(origin));
        self.confined_to = Some(origins);
        // The emulators listen on loopback; nothing else is reachable.
        self.egress = EgressPolicy::LoopbackOnly;
        Ok(self)
    }

    /// Replaces the network with `respond`, which answers every request that
    /// passes the policy checks. For benchmarks that measure the plugin
    /// boundary alone, and for connector tests with no server.
    pub fn with_canned_responses(
        mut self,
        respond: impl Fn(&Url, &Request) -> Response + Send + Sync + 'static,
    ) -> Self {
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
    /// base URL, the origin must be one the connection allows, and an IP
    /// literal must be an address the egress policy permits (names are
    /// checked when they are resolved).
    fn target(&self, url: &str) -> Result<Url, HttpError> {
        if url.len() > MAX_URL_BYTES {
            return Err(HttpError::InvalidRequest(format!(
                "the URL {:?} is {} bytes; at most {MAX_URL_BYTES} are allowed",
                shortened(url),
                url.len()
            )));
        }
        let target = if url.starts_with('/') {
            Url::parse(&format!("{}{url}", self.base_url.as_str().trim_end_matches('/')))
        } else {
            Url::parse(url)
        }
        .map_err(|e| HttpError::InvalidRequest(format!("bad URL {:?}: {e}", shortened(url))))?;
        if target.as_str().len() > MAX_URL_BYTES {
            return Err(HttpError::InvalidRequest(format!(
                "the URL {:?} is {} bytes; at most {MAX_URL_BYTES} are allowed",
                shortened(target.as_str()),
                target.as_str().len()
            )));
        }
        let origin = Origin::of(&target)
            .ok_or_else(|| HttpError::InvalidRequest(format!("URL {target} has no host")))?;
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
        let literal = match target.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !self.egress.permits(ip)
        {
            return Err(HttpError::Denied(egress_denial(&ip.to_string(), ip, self.egress)));
        }
        if !target.username().is_empty() || target.password().is_some() {
            return Err(HttpError::InvalidRequest(
                "URLs with user info are not allowed; the host injects credentials".into(),
            ));
        }
        Ok(target)
    }

    fn headers(&self, request: &Request) -> Result<HeaderMap, HttpError> {
        // Bounded before anything is built: a `HeaderMap` panics past
        // 24,576 distinct names, and a plugin chooses how many it sends.
        if request.headers.len() > MAX_REQUEST_HEADERS {
            return Err(HttpError::InvalidRequest(format!(
                "the request has {} headers; at most {MAX_REQUEST_HEADERS} are allowed",
                request.headers.len()
            )));
        }
        let mut total = 0;
        for (name, value) in &request.headers {
            let size = name.len() + value.len();
            if size > MAX_HEADER_BYTES {
                return Err(HttpError::InvalidRequest(format!(
                    "header {:?} is {size} bytes; at most {MAX_HEADER_BYTES} bytes per header (name and value) are allowed",
                    shortened(name)
                )));
            }
            total += size;
            if total > MAX_HEADERS_TOTAL_BYTES {
                return Err(HttpError::InvalidRequest(format!(
                    "the request's headers exceed {MAX_HEADERS_TOTAL_BYTES} bytes in all"
                )));
            }
        }
        let mut headers = HeaderMap::with_capacity(request.headers.len() + 1);
        let credential_header = self.credential.as_ref().and_then(|(scheme, _)| match scheme {
            AuthScheme::None => None,
            AuthScheme::Bearer | AuthScheme::BasicKeyAsUser => Some("authorization".to_owned()),
            AuthScheme::Header(name) => Some(name.to_ascii_lowercase()),
        });
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                HttpError::InvalidRequest(format!("bad header name {:?}", shortened(name)))
            })?;
            // The credential header is the host's; a plugin cannot set or
            // spoof it. Nor the headers that frame the message.
            if credential_header.as_deref() == Some(name.as_str())
                || HOST_HEADERS.contains(&name.as_str())
            {
                continue;
            }
            let value = HeaderValue::from_str(value)
                .map_err(|_| HttpError::InvalidRequest(format!("bad value for header {name}")))?;
            headers.append(name, value);
        }
        if let Some((scheme, secret)) = &self.credential {
            let (name, value) = match scheme {
                AuthScheme::None => return Ok(headers),
                AuthScheme::Bearer => {
                    (reqwest::header::AUTHORIZATION, format!("Bearer {}", secret.expose()))
                }
                AuthScheme::BasicKeyAsUser => (
                    reqwest::header::AUTHORIZATION,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{}:", secret.expose()))
                    ),
                ),
                AuthScheme::Header(name) => (
                    HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        HttpError::InvalidRequest(format!(
                            "bad auth header name {name:?} in manifest"
                        ))
                    })?,
                    secret.expose().to_owned(),
                ),
            };
            // The error must not carry the value.
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                HttpError::InvalidRequest(
                    "the credential contains characters not allowed in a header".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        Ok(headers)
    }

    /// Sends a connector's request under the connection's policy, with no
    /// retry started that could not finish before `deadline`.
    pub async fn send(
        &self,
        request: Request,
        deadline: Option<std::time::Instant>,
    ) -> Result<Response, HttpError> {
        let target = match self.target(&request.url) {
            Ok(target) => target,
            Err(e) => {
                self.count_denied();
                return Err(e);
            }
        };
        let headers = self.headers(&request)?;
        if let Some(body) = &request.body
            && body.len() > self.limits.max_request_bytes
        {
            return Err(HttpError::InvalidRequest(format!(
                "the request body is {} bytes; at most {} are allowed",
                body.len(),
                self.limits.max_request_bytes
            )));
        }
        let budget = self.limits.max_requests_per_call;
        if count_request_in_call().is_some_and(|number| number > budget) {
            self.count_denied();
            return Err(HttpError::Denied(format!(
                "this call has sent its budget of {budget} requests (the connection's max_requests_per_call); no more are sent for it"
            )));
        }
        let mut attempts = Attempts::default();
        loop {
            // A stopped run's request waits no longer for its slot, and is
            // not sent: nothing reached the vendor. (A shared limit's lease
            // cut short leaves its slots unused: the fleet sends fewer,
            // never more.)
            let Some(waited) = unless_stopped(self.policy.admit(request.method)).await else {
                return Err(HttpError::Denied(format!(
                    "not sent to {}: the run was cancelled or is stopping while this request waited for the rate limit",
                    target.host_str().unwrap_or_default()
                )));
            };
            self.stats.waited_micros.fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let sent = Instant::now();
            attempts.sent_at = Some(tokio::time::Instant::now());
            // One span an attempt (traces): what was sent where, never the
            // path, a header or a body.
            let span = tracing::info_span!(
                "vendor request",
                method = request.method.as_str(),
                host = target.host_str().unwrap_or_default(),
                attempt = attempts.made + 1,
                limiter_wait_ms = waited.as_millis() as u64,
                status = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
                otel.status_description = tracing::field::Empty,
            );
            let outcome = {
                use tracing::Instrument as _;
                self.send_once(&request, &target, headers.clone()).instrument(span.clone()).await
            };
            match &outcome {
                Ok(response) => {
                    span.record("status", response.status);
                }
                Err(_) => {
                    // The status only: the error's text names the URL.
                    span.record("otel.status_code", "ERROR");
                    span.record("otel.status_description", "no answer");
                }
            }
            drop(span);
            attempts.made += 1;
            let took = sent.elapsed();
            let status = match &outcome {
                Err(HttpError::Denied(_)) => None,
                Ok(response) => Some(Some(response.status)),
                Err(_) => Some(None),
            };
            if let Some(status) = status {
                self.stats.answered(status, took);
            }
            if let Some(metrics) = &self.metrics {
                metrics.waited(waited);
                if let Some(status) = status {
                    metrics.request(request.method, status, took);
                }
            }
            match &outcome {
                Ok(response) => {
                    tracing::debug!(method = ?request.method, url = %target, status = response.status, bytes = response.body.len(), attempt = attempts.made, "vendor request")
                }
                Err(error) => {
                    tracing::debug!(method = ?request.method, url = %target, %error, attempt = attempts.made, "vendor request failed")
                }
            }
            match &outcome {
                Ok(r) if r.status == 429 => {
                    self.stats.throttled.fetch_add(1, Ordering::Relaxed);
                }
                Err(HttpError::Timeout(_)) => attempts.timed_out += 1,
                // Refused at resolution: nothing reached the vendor.
                Err(HttpError::Denied(_)) => {
                    self.stats.requests.fetch_sub(1, Ordering::Relaxed);
                    self.count_denied();
                }
                _ => {}
            }
            // A retry that would start after the call's deadline cannot help.
            let retry = self
                .policy
                .retry_after(request.method, request.idempotent, attempts, &outcome)
                .filter(|delay| {
                    deadline.is_none_or(|d| {
                        std::time::Instant::now()
                            + *delay
                            + self.limits.timeout.min(Duration::from_secs(1))
                            < d
                    })
                });
            if let Some(metrics) = &self.metrics {
                // After `retry_after`: the limiter has learnt from the answer.
                metrics.rates(&self.policy.rates());
            }
            if let Some(delay) = retry {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.stats.waited_micros.fetch_add(delay.as_micros() as u64, Ordering::Relaxed);
                if let Some(metrics) = &self.metrics {
                    metrics.retry();
                    metrics.waited(delay);
                }
                // A stopped run waits out no backoff (a `Retry-After` of
                // minutes): the last answer stands, and is not retried.
                if unless_stopped(tokio::time::sleep(delay)).await.is_some() {
                    continue;
                }
            }
            return match outcome {
                Ok(mut response) => {
                    self.scrubber.scrub(&mut response);
                    // Say how hard the host tried, in a header the
                    // connector's error mapping can quote.
                    if attempts.made > 1 {
                        response
                            .headers
                            .push((ATTEMPTS_HEADER.to_owned(), attempts.made.to_string()));
                    }
                    Ok(response)
                }
                Err(error) if attempts.made > 1 => Err(error.after_attempts(attempts.made)),
                Err(error) => Err(error),
            };
        }
    }

    fn count_denied(&self) {
        self.stats.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.denied();
        }
    }

    async fn send_once(
        &self,
        request: &Request,
        target: &Url,
        headers: HeaderMap,
    ) -> Result<Response, HttpError> {
        let started = Instant::now();
        let client = match &self.transport {
            Transport::Network(clients) => clients.client(self.egress)?,
            Transport::Canned(respond) => return Ok(respond(target, request)),
        };
        let mut builder = client
            .request(request.method.to_reqwest(), target.clone())
            .headers(headers)
            .timeout(self.limits.timeout);
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(|e| classify(&e, target))?;
        let status = response.status().as_u16();
        let cap = self.limits.max_response_bytes;
        if let Some(length) = response.content_length()
            && length > cap as u64
        {
            return Err(HttpError::TooLarge(format!(
                "{target} answered with {length} bytes; the cap is {cap} bytes"
            )));
        }
        let headers = response
            .headers()
            .iter()
            .filter_map(|(name, value)| {
                Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
            })
            .collect();
        // Sized once when the length is announced (it is under the cap, checked
        // above), rather than regrown and copied as chunks arrive.
        let mut body =
            Vec::with_capacity(response.content_length().map_or(0, |length| length as usize));
        loop {
            let remaining = self.limits.timeout.saturating_sub(started.elapsed());
            let chunk = match tokio::time::timeout(remaining, response.chunk()).await {
                Ok(chunk) => chunk.map_err(|e| classify(&e, target))?,
                Err(_) => {
                    return Err(HttpError::Timeout(format!(
                        "{target}: body not complete after {:?}",
                        self.limits.timeout
                    )));
                }
            };
            let Some(chunk) = chunk else { break };
            if body.len() + chunk.len() > cap {
                return Err(HttpError::TooLarge(format!(
                    "{target} answered with more than {cap} bytes"
                )));
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
        if let Some(denied) = e.downcast_ref::<EgressDenied>() {
            return HttpError::Denied(denied.to_string());
        }
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

/// The process-wide connection pools, one per egress policy, shared by
/// every connection.
pub fn shared_client() -> HttpClients {
    static CLIENTS: std::sync::OnceLock<HttpClients> = std::sync::OnceLock::new();
    CLIENTS.get_or_init(|| HttpClients::new(HashMap::new())).clone()
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
        assert_eq!(
            c.target("/customers").map(|u| u.to_string()),
            Ok("http://127.0.0.1:4000/v1/customers".into())
        );
    }

    #[test]
    fn a_confined_connection_reaches_only_the_emulators() {
        let emulators = ["http://127.0.0.1:4000".to_owned(), "http://127.0.0.1:4001/v1".to_owned()];
        let c = connection("http://127.0.0.1:4001/v1", &["127.0.0.1:4999"])
            .confined_to(&emulators)
            .expect("the base URL is an emulator");
        assert!(c.target("/customers").is_ok());
        assert!(
            matches!(c.target("http://127.0.0.1:4999/x"), Err(HttpError::Denied(m)) if m.contains("not a sandbox emulator")),
            "an extra host is dropped"
        );
        assert!(matches!(
            c.target("https://api.stripe.com/v1/customers"),
            Err(HttpError::Denied(_))
        ));
        let production = connection("https://api.stripe.com", &[]).confined_to(&emulators);
        assert!(matches!(production, Err(HttpError::Denied(m)) if m.contains("api.stripe.com")));
    }

    #[test]
    fn disallowed_host_fails() {
        let c = connection("https://api.stripe.com", &[]);
        assert!(matches!(c.target("https://evil.example/"), Err(HttpError::Denied(_))));
        assert!(
            matches!(c.target("http://api.stripe.com/"), Err(HttpError::Denied(_))),
            "scheme is part of the origin"
        );
        assert!(
            matches!(c.target("https://api.stripe.com:8443/"), Err(HttpError::Denied(_))),
            "port is part of the origin"
        );
    }

    #[test]
    fn granted_extra_host_is_allowed() {
        let c = connection("https://api.stripe.com", &["files.stripe.com"]);
        assert!(c.target("https://files.stripe.com/v1/files").is_ok());
    }

    fn get(url: &str, headers: Vec<(String, String)>) -> Request {
        Request { method: Method::Get, url: url.into(), headers, body: None, idempotent: false }
    }

    fn invalid(result: Result<HeaderMap, HttpError>) -> String {
        match result {
            Err(HttpError::InvalidRequest(message)) => message,
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn thirty_thousand_headers_are_refused_not_a_panic() {
        // Regression: past 24,576 distinct names `HeaderMap::append` panicked
        // and took `weft run` down with exit code 101.
        let c = connection("https://api.stripe.com", &[]);
        let headers = (0..30_000).map(|i| (format!("x-h-{i}"), "1".to_owned())).collect();
        let message = invalid(c.headers(&get("/v1", headers)));
        assert!(message.contains("30000 headers") && message.contains("at most 100"), "{message}");
        let hundred = (0..100).map(|i| (format!("x-h-{i}"), "1".to_owned())).collect();
        assert!(c.headers(&get("/v1", hundred)).is_ok(), "100 headers are fine");
    }

    #[test]
    fn an_oversized_header_or_header_block_is_refused() {
        let c = connection("https://api.stripe.com", &[]);
        let long =
            invalid(c.headers(&get("/v1", vec![("x-long".into(), "v".repeat(MAX_HEADER_BYTES))])));
        assert!(long.contains("x-long") && long.contains("8192 bytes per header"), "{long}");
        let long_name = invalid(c.headers(&get("/v1", vec![("n".repeat(100_000), "v".into())])));
        assert!(long_name.len() < 300, "the message quotes a shortened name: {long_name}");
        let many = (0..20).map(|i| (format!("x-h-{i}"), "v".repeat(4000))).collect();
        let total = invalid(c.headers(&get("/v1", many)));
        assert!(total.contains("65536 bytes in all"), "{total}");
    }

    #[test]
    fn an_overlong_url_is_refused() {
        let c = connection("https://api.stripe.com", &[]);
        let url = format!("/v1/customers?q={}", "a".repeat(MAX_URL_BYTES));
        assert!(matches!(c.target(&url), Err(HttpError::InvalidRequest(m)) if m.contains("16384")));
        assert!(c.target(&format!("/v1/customers?q={}", "a".repeat(1000))).is_ok());
    }

    #[test]
    fn framing_headers_are_the_hosts() {
        let c = connection("https://api.stripe.com", &[]);
        let smuggling = vec![
            ("Content-Length".into(), "0".into()),
            ("Transfer-Encoding".into(), "chunked".into()),
            ("Connection".into(), "keep-alive, upgrade".into()),
            ("Host".into(), "internal".into()),
            ("X-Kept".into(), "yes".into()),
        ];
        let headers = c.headers(&get("/v1", smuggling)).expect("valid headers");
        let names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["x-kept", "authorization"]);
    }

    fn canned(base: &str, limits: HttpLimits, body: &'static str) -> ConnectionHttp {
        ConnectionHttp::new(
            shared_client(),
            base,
            &[],
            Some((AuthScheme::BasicKeyAsUser, Secret::new("sk_test_secret"))),
            limits,
            Arc::new(SendOnce),
        )
        .expect("valid base URL")
        .with_canned_responses(move |_, _| Response {
            status: 200,
            headers: vec![("x-echo".into(), body.into())],
            body: body.as_bytes().to_vec(),
        })
    }

    #[tokio::test]
    async fn an_oversized_request_body_is_refused() {
        let c = canned(
            "https://api.stripe.com",
            HttpLimits { max_request_bytes: 1024, ..HttpLimits::default() },
            "{}",
        );
        let mut request = get("/v1", vec![]);
        request.body = Some(vec![b'x'; 1025]);
        let error = c.send(request.clone(), None).await.err();
        assert!(
            matches!(&error, Some(HttpError::InvalidRequest(m)) if m.contains("1025 bytes") && m.contains("1024")),
            "{error:?}"
        );
        request.body = Some(vec![b'x'; 1024]);
        assert!(c.send(request, None).await.is_ok());
    }

    #[tokio::test]
    async fn a_call_may_send_no_more_than_its_request_budget() {
        let c = canned(
            "https://api.stripe.com",
            HttpLimits { max_requests_per_call: 3, ..HttpLimits::default() },
            "{}",
        );
        let outcomes = within_call(async {
            let mut outcomes = Vec::new();
            for _ in 0..5 {
                outcomes.push(c.send(get("/v1", vec![]), None).await.map(|r| r.status));
            }
            outcomes
        })
        .await;
        assert_eq!(outcomes[..3], [Ok(200), Ok(200), Ok(200)]);
        assert!(
            matches!(&outcomes[3], Err(HttpError::Denied(m)) if m.contains("budget of 3 requests")),
            "{outcomes:?}"
        );
        assert_eq!(c.stats().snapshot().requests, 3, "nothing went out past the budget");
        assert_eq!(c.stats().snapshot().denied, 2);
        // The next call starts its own count.
        assert_eq!(within_call(c.send(get("/v1", vec![]), None)).await.map(|r| r.status), Ok(200));
    }

    #[tokio::test]
    async fn concurrent_calls_count_their_own_requests() {
        let c = canned(
            "https://api.stripe.com",
            HttpLimits { max_requests_per_call: 2, ..HttpLimits::default() },
            "{}",
        );
        let call = || {
            within_call(async {
                let first = c.send(get("/v1", vec![]), None).await.is_ok();
                tokio::task::yield_now().await;
                let second = c.send(get("/v1", vec![]), None).await.is_ok();
                first && second
            })
        };
        let (a, b) = tokio::join!(call(), call());
        assert!(a && b, "two calls of two requests each fit a budget of two per call");
    }

    #[tokio::test]
    async fn an_echoed_credential_is_scrubbed_before_the_plugin_sees_it() {
        // Regression: a vendor echoing Authorization handed the key to the
        // plugin, and through it to page files, sled and `runs show`.
        let basic = "Basic c2tfdGVzdF9zZWNyZXQ6"; // base64("sk_test_secret:")
        let c = ConnectionHttp::new(shared_client(), "https://api.stripe.com", &[], Some((AuthScheme::BasicKeyAsUser, Secret::new("sk_test_secret"))), HttpLimits::default(), Arc::new(SendOnce))
            .expect("valid base URL")
            .with_canned_responses(move |_, _| Response {
                status: 200,
                headers: vec![("x-echo".into(), basic.into()), ("x-raw".into(), "key=sk_test_secret;".into())],
                body: format!(r#"{{"authorization":"{basic}","raw":"sk_test_secret","nopad":"c2tfdGVzdF9zZWNyZXQ6","twice":"sk_test_secretsk_test_secret"}}"#).into_bytes(),
            });
        let response = c.send(get("/v1", vec![]), None).await.expect("canned answer");
        let body = String::from_utf8(response.body).expect("utf-8");
        assert!(
            !body.contains("sk_test_secret") && !body.contains("c2tfdGVzdF9zZWNyZXQ"),
            "{body}"
        );
        assert_eq!(
            body,
            r#"{"authorization":"Basic [redacted]","raw":"[redacted]","nopad":"[redacted]","twice":"[redacted][redacted]"}"#
        );
        assert_eq!(
            response.headers,
            vec![
                ("x-echo".to_owned(), "Basic [redacted]".to_owned()),
                ("x-raw".to_owned(), "key=[redacted];".to_owned())
            ]
        );
    }

    #[test]
    fn a_padded_basic_form_is_scrubbed_whole_with_one_search_for_both_forms() {
        // "sk_test_secret1:" is 16 bytes: its base64 ends in "==".
        let secret = "sk_test_secret1";
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{secret}:"));
        let unpadded = basic.trim_end_matches('=');
        assert!(basic.ends_with("==") && unpadded.len() + 2 == basic.len());
        let scrubber =
            CredentialScrubber::new(Some(&(AuthScheme::BasicKeyAsUser, Secret::new(secret))));
        assert_eq!(scrubber.forms.len(), 2, "{scrubber:?}");
        let mut response = Response {
            status: 200,
            headers: vec![("x-echo".into(), format!("Basic {basic}"))],
            body: format!(
                "[\"{basic}\",\"{unpadded}\",\"{basic}{basic}\",\"{unpadded}=\",\"{secret}\"]"
            )
            .into_bytes(),
        };
        scrubber.scrub(&mut response);
        assert_eq!(
            String::from_utf8(response.body).expect("utf-8"),
            // One "=" is not the padding of this form: it stays.
            r#"["[redacted]","[redacted]","[redacted][redacted]","[redacted]=","[redacted]"]"#
        );
        assert_eq!(response.headers[0].1, "Basic [redacted]");
    }

    #[test]
    fn a_response_without_the_credential_is_left_as_it_is() {
        let scrubber =
            CredentialScrubber::new(Some(&(AuthScheme::Bearer, Secret::new("sk_test_secret"))));
        let mut response = Response {
            status: 200,
            headers: vec![("x-a".into(), "b".into())],
            body: b"{\"id\":\"cus_1\",\"note\":\"sk_test_\"}".to_vec(),
        };
        let (body, header) = (response.body.as_ptr(), response.headers[0].1.as_ptr());
        scrubber.scrub(&mut response);
        assert_eq!(response.body.as_ptr(), body, "no copy when there is nothing to scrub");
        assert_eq!(response.headers[0].1.as_ptr(), header);
        assert_eq!(response.body, b"{\"id\":\"cus_1\",\"note\":\"sk_test_\"}");
    }

    #[test]
    fn addresses_are_classified_by_where_they_lead() {
        let scope = |ip: &str| AddressScope::of(ip.parse().expect("an address"));
        for public in [
            "8.8.8.8",
            "104.18.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(scope(public), AddressScope::Public, "{public}");
        }
        for loopback in ["127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(scope(loopback), AddressScope::Loopback, "{loopback}");
        }
        for other in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "100::1",
        ] {
            assert!(
                matches!(scope(other), AddressScope::NonPublic(_)),
                "{other}: {:?}",
                scope(other)
            );
        }
        assert_eq!(scope("172.32.0.1"), AddressScope::Public);
        assert_eq!(scope("100.128.0.1"), AddressScope::Public);
    }

    #[test]
    fn the_base_url_decides_the_default_egress() {
        let policy = |url: &str| EgressPolicy::default_for(&Url::parse(url).expect("a URL"));
        assert_eq!(policy("https://api.stripe.com"), EgressPolicy::Public);
        assert_eq!(
            policy("http://localhost.example:8080"),
            EgressPolicy::Public,
            "a name is judged by its addresses"
        );
        assert_eq!(policy("http://127.0.0.1:12111"), EgressPolicy::PublicAndLoopback);
        assert_eq!(policy("http://[::1]:12111"), EgressPolicy::PublicAndLoopback);
        assert_eq!(policy("http://localhost:12111"), EgressPolicy::PublicAndLoopback);
        assert_eq!(policy("http://10.0.0.5"), EgressPolicy::Public);
    }

    #[test]
    fn a_private_ip_literal_is_denied_without_the_workflows_consent() {
        // 169.254.169.254 is the cloud metadata service; every spelling of it.
        for spelling in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
            "http://2852039166/",
            "http://0xa9.0xfe.0xa9.0xfe/",
        ] {
            let c = connection(spelling, &[]);
            let error = c.target("/latest/meta-data/");
            assert!(
                matches!(&error, Err(HttpError::Denied(m)) if m.contains("link-local") && m.contains("allow_private_network")),
                "{spelling}: {error:?}"
            );
            let allowed = connection(spelling, &[]).with_egress(EgressPolicy::Any);
            assert!(allowed.target("/latest/meta-data/").is_ok(), "{spelling}");
        }
        let c = connection("http://10.0.0.5:8080", &[]);
        assert!(
            matches!(c.target("/"), Err(HttpError::Denied(m)) if m.contains("10.0.0.5 is private"))
        );
        assert!(
            connection("http://127.0.0.1:4000", &[]).target("/").is_ok(),
            "a loopback base URL keeps working"
        );
        let sandboxed =
            connection("http://127.0.0.1:4000", &[]).with_egress(EgressPolicy::LoopbackOnly);
        assert!(sandboxed.target("/").is_ok());
    }

    #[test]
    fn loopback_only_refuses_every_other_address() {
        let policy = EgressPolicy::LoopbackOnly;
        assert!(policy.permits("127.0.0.1".parse().expect("ip")));
        assert!(policy.permits("::1".parse().expect("ip")));
        assert!(!policy.permits("8.8.8.8".parse().expect("ip")));
        assert!(!policy.permits("10.0.0.1".parse().expect("ip")));
        assert!(!EgressPolicy::Public.permits("127.0.0.1".parse().expect("ip")));
        assert!(EgressPolicy::PublicAndLoopback.permits("127.0.0.1".parse().expect("ip")));
        assert!(!EgressPolicy::PublicAndLoopback.permits("169.254.169.254".parse().expect("ip")));
    }

    /// A loopback server answering every request with 200 and `ok`.
    async fn ok_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let address = listener.local_addr().expect("bound");
        let router = axum::Router::new().fallback(|| async { "ok" });
        (address, tokio::spawn(async move { axum::serve(listener, router).await.unwrap_or(()) }))
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_denied_for_a_public_base_url() {
        let (address, server) = ok_server().await;
        let clients = HttpClients::with_pinned_names(&[(
            "localhost.example",
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )]);
        let base = format!("http://localhost.example:{}", address.port());
        let build = || {
            ConnectionHttp::new(
                clients.clone(),
                &base,
                &[],
                None,
                HttpLimits::default(),
                Arc::new(SendOnce),
            )
            .expect("valid base URL")
        };

        let refused = build();
        let error = refused.send(get("/", vec![]), None).await.err();
        assert!(
            matches!(&error, Some(HttpError::Denied(m)) if m.contains("localhost.example resolves to 127.0.0.1, which is loopback") && m.contains("allow_private_network")),
            "{error:?}"
        );
        let stats = refused.stats().snapshot();
        assert_eq!((stats.requests, stats.denied), (0, 1), "nothing reached the vendor: {stats:?}");
        let allowed = build()
            .with_egress(EgressPolicy::Any)
            .send(get("/", vec![]), None)
            .await
            .map(|r| r.body);
        assert_eq!(allowed, Ok(b"ok".to_vec()), "allow_private_network lets it through");
        // Loopback by IP keeps working for a loopback base URL.
        let direct = ConnectionHttp::new(
            clients.clone(),
            &format!("http://127.0.0.1:{}", address.port()),
            &[],
            None,
            HttpLimits::default(),
            Arc::new(SendOnce),
        )
        .expect("valid base URL");
        assert_eq!(direct.send(get("/", vec![]), None).await.map(|r| r.status), Ok(200));
        server.abort();
    }

    #[tokio::test]
    async fn a_name_with_a_public_and_a_private_address_connects_only_to_the_permitted_one() {
        let (address, server) = ok_server().await;
        // Loopback permitted (a loopback-based policy), the metadata address not.
        let clients = HttpClients::with_pinned_names(&[
            ("both.example", "169.254.169.254".parse().expect("ip")),
            ("both.example", IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ]);
        let c = ConnectionHttp::new(
            clients,
            &format!("http://both.example:{}", address.port()),
            &[],
            None,
            HttpLimits { timeout: Duration::from_secs(5), ..HttpLimits::default() },
            Arc::new(SendOnce),
        )
        .expect("valid base URL")
        .with_egress(EgressPolicy::PublicAndLoopback);
        assert_eq!(c.send(get("/", vec![]), None).await.map(|r| r.status), Ok(200));
        server.abort();
    }

    #[test]
    fn plugin_cannot_set_the_credential_header() {
        let c = connection("https://api.stripe.com", &[]);
        let request = Request {
            method: Method::Get,
            url: "/v1".into(),
            headers: vec![
                ("Authorization".into(), "Bearer stolen".into()),
                ("Accept".into(), "application/json".into()),
            ],
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
