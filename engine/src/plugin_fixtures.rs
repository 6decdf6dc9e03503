//! Record and replay of a connector's HTTP exchanges, so an author tests
//! against real vendor answers offline, without a key in CI.
//!
//! `weft plugin record` puts a [`Recorder`] between the host and the live
//! endpoint: a loopback proxy that forwards each request and keeps the
//! exchange, with credentials removed (authentication headers, cookies,
//! and the secret's text wherever it appears) and the JSON fields the user
//! names redacted. [`write()`] stores them one file an exchange. `weft plugin
//! test --replay` puts a [`Replayer`] in the endpoint's place: it answers
//! each request from the fixtures and records every request they do not
//! hold, so the test fails naming it.
//!
//! # How a request finds its answer
//!
//! A request is matched on its method, path, canonical query (pairs sorted)
//! and the SHA-256 of its body (JSON re-serialized after redaction, so key
//! order and redacted values do not matter; other bodies byte for byte),
//! never on headers (they carry credentials, idempotency keys and dates that
//! differ every run). The fixtures are a multiset: each answers once, in any
//! order, and identical requests get their answers in recorded order. Order
//! across different requests is not enforced, because a connector may
//! legitimately interleave calls differently (concurrent items, retries);
//! answering each recording once keeps a sequence such as "get: absent,
//! upsert, get: present" faithful, which matching on content alone would
//! collapse into one answer.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What a redacted JSON value is replaced with.
pub const REDACTED: &str = "[redacted]";
/// What the credential's text is replaced with wherever it appears.
pub const CREDENTIAL: &str = "[credential]";
/// The fixture set's description, in the fixture directory.
pub const SET_FILE: &str = "fixtures.json";
/// The directory of exchange files, in the fixture directory.
pub const EXCHANGES_DIR: &str = "exchanges";

/// Request headers never recorded: they carry credentials or say nothing
/// about the request.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "host",
    "content-length",
    "connection",
    "accept-encoding",
    "transfer-encoding",
];
/// Response headers never recorded or replayed.
const DROPPED_RESPONSE_HEADERS: &[&str] =
    &["set-cookie", "content-length", "connection", "transfer-encoding", "content-encoding"];
/// What the endpoint's own origin is stored as, wherever an answer names
/// it (an absolute next-page URL, a `Link` header): a replay puts its own
/// origin there, so the connector's next request comes back to it. The
/// `.invalid` name never resolves, so a URL left unreplaced cannot reach a
/// network.
pub const RECORDED_ORIGIN: &str = "http://weft-recorded-origin.invalid";

/// Replaces one origin with another in an answer's text, also where JSON
/// escapes its slashes (`https:\/\/api.example.com`). A body that is not
/// UTF-8 is left as it is.
struct OriginSwap {
    from: [String; 2],
    to: [String; 2],
}

impl OriginSwap {
    fn new(from: &str, to: &str) -> OriginSwap {
        let escaped = |origin: &str| origin.replace('/', "\\/");
        OriginSwap { from: [from.to_owned(), escaped(from)], to: [to.to_owned(), escaped(to)] }
    }

    fn text(&self, text: &str) -> String {
        if self.from[0].is_empty() || self.from == self.to {
            return text.to_owned();
        }
        text.replace(&self.from[0], &self.to[0]).replace(&self.from[1], &self.to[1])
    }

    fn bytes(&self, bytes: Vec<u8>) -> Vec<u8> {
        match std::str::from_utf8(&bytes) {
            Ok(text) if self.from.iter().any(|from| text.contains(from.as_str())) => {
                self.text(text).into_bytes()
            }
            _ => bytes,
        }
    }

    fn headers(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        headers.iter().map(|(n, v)| (n.clone(), self.text(v))).collect()
    }
}

/// The origin a loopback server was reached at, from the request's `Host`.
fn own_origin(parts: &axum::http::request::Parts) -> Option<String> {
    let host = parts.headers.get(axum::http::header::HOST)?.to_str().ok()?;
    Some(format!("http://{host}"))
}

/// The most a recorded or replayed body may hold (the host's own cap).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why fixtures could not be recorded, written, read or served.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A fixture file is not what `weft plugin record` writes.
    #[error("{path}: not a weft fixture: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The output directory holds something other than fixtures.
    #[error(
        "{0}: exists and is not a fixture directory (no {SET_FILE}); name an empty or new directory"
    )]
    NotFixtures(PathBuf),
    /// The upstream base URL is not an absolute http(s) URL.
    #[error("the base URL {0:?} is not an absolute http:// or https:// URL")]
    BaseUrl(String),
    /// The loopback proxy or replay server could not start.
    #[error("cannot listen on loopback: {0}")]
    Listen(std::io::Error),
}

/// How a fixture set was recorded: what `weft plugin test --replay` needs
/// to run the same check again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FixtureSet {
    /// The plugin recorded (name or path) and its digest.
    pub plugin: String,
    /// The component's SHA-256 when it was recorded.
    pub plugin_sha256: String,
    /// The path of the endpoint's base URL (`/v1`), which the replay server
    /// serves under.
    pub base_path: String,
    /// Whether the recording sent a credential.
    pub authenticated: bool,
    /// The JSON fields redacted, dotted (`customer.email`).
    pub redact: Vec<String>,
    /// The check's parameters, as the caller stores them.
    pub check: Value,
    /// How many exchanges were written.
    pub exchanges: usize,
}

/// One request and the answer it got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// What the connector sent.
    pub request: RecordedRequest,
    /// What the endpoint answered.
    pub response: RecordedResponse,
}

/// A recorded request, credentials removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, from the origin (`/v1/customers`).
    pub path: String,
    /// The canonical query: pairs sorted, form-encoded; empty when none.
    pub query: String,
    /// Headers, lower-case names, credentials removed.
    pub headers: Vec<(String, String)>,
    /// The body when it is JSON, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The body when it is not JSON (as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// SHA-256 of the body's canonical form: what matching compares.
    pub body_sha256: String,
}

/// A recorded response, credentials removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body when it is JSON, redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// The body when it is not JSON (as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl RecordedRequest {
    /// What matching compares: method, path, canonical query, body digest.
    pub fn key(&self) -> String {
        format!("{} {}?{} {}", self.method, self.path, self.query, self.body_sha256)
    }

    /// The request as a person reads it in an error.
    pub fn describe(&self) -> String {
        let query = if self.query.is_empty() { String::new() } else { format!("?{}", self.query) };
        let body = match (&self.json, &self.text) {
            (Some(json), _) => format!(" with JSON body {}", cut(&json.to_string())),
            (None, Some(text)) if !text.is_empty() => format!(" with body {:?}", cut(text)),
            _ => String::new(),
        };
        format!("{} {}{query}{body}", self.method, self.path)
    }
}

fn cut(text: &str) -> String {
    if text.chars().count() <= 200 {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(200).collect::<String>())
    }
}

/// What is removed from recordings: the credential's text and the JSON
/// fields named by dotted paths.
#[derive(Debug, Clone, Default)]
pub struct Redaction {
    paths: Vec<Vec<String>>,
    secret: Option<String>,
    extra_headers: Vec<String>,
}

impl Redaction {
    /// Redacts the dotted `paths` wherever they start (`email` is every
    /// field named email; `customer.email` every email under a `customer`;
    /// a path goes through arrays on its way)
    /// and every occurrence of `secret`; `auth_header` is a header that
    /// carries the credential (a manifest's `header` auth scheme).
    pub fn new(paths: &[String], secret: Option<&str>, auth_header: Option<&str>) -> Redaction {
        Redaction {
            paths: paths
                .iter()
                .map(|p| p.split('.').filter(|s| !s.is_empty()).map(str::to_owned).collect())
                .filter(|p: &Vec<String>| !p.is_empty())
                .collect(),
            // A short secret would redact ordinary text; no real key is.
            secret: secret.filter(|s| s.len() >= 8).map(str::to_owned),
            extra_headers: auth_header.map(str::to_ascii_lowercase).into_iter().collect(),
        }
    }

    /// Redacts the named fields and the credential in `value`, in place: a
    /// recorded check's sample records go through this too, so a replay
    /// sends what the redacted answers expect.
    pub fn value(&self, value: &mut Value) {
        for path in &self.paths {
            redact_anywhere(value, path);
        }
        scrub_strings(value, self);
    }

    fn scrub(&self, text: &str) -> String {
        match &self.secret {
            Some(secret) => text.replace(secret.as_str(), CREDENTIAL),
            None => text.to_owned(),
        }
    }

    /// The body as recorded: redacted JSON, a redacted form (`form`: sent
    /// as `application/x-www-form-urlencoded`, as Stripe's are), or text.
    fn body(&self, bytes: &[u8], form: bool) -> (Option<Value>, Option<String>) {
        if bytes.is_empty() {
            return (None, None);
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(mut value) => {
                self.value(&mut value);
                (Some(value), None)
            }
            Err(_) if form => (None, Some(self.form(bytes))),
            Err(_) => (None, Some(self.scrub(&String::from_utf8_lossy(bytes)))),
        }
    }

    /// Form pairs (a body or a query) in their order, each value redacted
    /// when its key lies under a redacted path, the credential scrubbed
    /// from the others.
    fn form(&self, bytes: &[u8]) -> String {
        let pairs = url::form_urlencoded::parse(bytes).map(|(key, value)| {
            let value =
                if self.form_key_redacted(&key) { REDACTED.to_owned() } else { self.scrub(&value) };
            (key.into_owned(), value)
        });
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }

    /// Whether a form key (`email`, `customer[address][city]`,
    /// `items[0][email]`) lies under a redacted path, read as the JSON
    /// paths are: from any depth, through arrays (the numeric and empty
    /// brackets) on its way.
    fn form_key_redacted(&self, key: &str) -> bool {
        let segments: Vec<&str> = key
            .split(['[', ']'])
            .filter(|s| !s.is_empty() && !s.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        self.paths.iter().any(|path| {
            segments.windows(path.len()).any(|w| w.iter().zip(path).all(|(a, b)| *a == b))
        })
    }

    fn is_form(headers: &[(&str, &str)]) -> bool {
        headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("content-type")
                && value.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")
        })
    }

    fn headers<'a>(
        &self,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        dropped: &[&str],
    ) -> Vec<(String, String)> {
        headers
            .filter_map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                let credential = dropped.contains(&name.as_str())
                    || self.extra_headers.contains(&name)
                    || self.secret.as_ref().is_some_and(|s| value.contains(s.as_str()));
                (!credential).then(|| (name, value.to_owned()))
            })
            .collect()
    }

    /// The canonical query: pairs sorted, redacted values and the
    /// credential replaced (a lookup by email carries it in the query).
    fn query(&self, query: Option<&str>) -> String {
        let mut pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .map(|(k, v)| {
                    let v = if self.form_key_redacted(&k) {
                        REDACTED.to_owned()
                    } else {
                        self.scrub(&v)
                    };
                    (k.into_owned(), v)
                })
                .collect();
        pairs.sort();
        url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
    }

    /// A request as recorded and as matched.
    pub fn request<'a>(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> RecordedRequest {
        let headers: Vec<(&str, &str)> = headers.collect();
        let (json, text) = self.body(body, Redaction::is_form(&headers));
        let canonical = match (&json, &text) {
            (Some(json), _) => serde_json::to_vec(json).unwrap_or_default(),
            (None, Some(text)) => text.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        };
        RecordedRequest {
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: self.query(query),
            headers: self.headers(headers.into_iter(), DROPPED_REQUEST_HEADERS),
            json,
            text,
            body_sha256: hex::encode(Sha256::digest(&canonical)),
        }
    }

    /// A response as recorded.
    pub fn response<'a>(
        &self,
        status: u16,
        headers: impl Iterator<Item = (&'a str, &'a str)>,
        body: &[u8],
    ) -> RecordedResponse {
        let headers: Vec<(&str, &str)> = headers.collect();
        let (json, text) = self.body(body, Redaction::is_form(&headers));
        RecordedResponse {
            status,
            headers: self.headers(headers.into_iter(), DROPPED_RESPONSE_HEADERS),
            json,
            text,
        }
    }
}

/// Redacts `path` wherever it starts: `email` is every field named email,
/// at any depth; `customer.email` every email under a `customer`. A field
/// left in by a narrower reading would leak, so the wide one is taken.
fn redact_anywhere(value: &mut Value, path: &[String]) {
    redact_path(value, path);
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| redact_anywhere(item, path)),
        Value::Object(map) => map.values_mut().for_each(|field| redact_anywhere(field, path)),
        _ => {}
    }
}

fn redact_path(value: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| redact_path(item, path)),
        Value::Object(map) => {
            if let Some(field) = map.get_mut(first.as_str()) {
                if rest.is_empty() {
                    *field = Value::String(REDACTED.to_owned());
                } else {
                    redact_path(field, rest);
                }
            }
        }
        _ => {}
    }
}

fn scrub_strings(value: &mut Value, redaction: &Redaction) {
    match value {
        Value::String(text)
            if redaction.secret.as_ref().is_some_and(|s| text.contains(s.as_str())) =>
        {
            *text = redaction.scrub(text);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_strings(v, redaction)),
        Value::Object(map) => map.values_mut().for_each(|v| scrub_strings(v, redaction)),
        _ => {}
    }
}

/// Writes a fixture set: `DIR/fixtures.json` and one file an exchange in
/// `DIR/exchanges/`, numbered in recorded order. A directory that holds
/// an earlier recording has its exchanges replaced; any other non-empty
/// directory is refused.
pub fn write(dir: &Path, set: &FixtureSet, exchanges: &[Exchange]) -> Result<(), FixtureError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| FixtureError::Io { path, source }
    };
    let set_file = dir.join(SET_FILE);
    let exchanges_dir = dir.join(EXCHANGES_DIR);
    if dir.exists()
        && !set_file.exists()
        && std::fs::read_dir(dir).map_err(io(dir))?.next().is_some()
    {
        return Err(FixtureError::NotFixtures(dir.to_owned()));
    }
    if exchanges_dir.exists() {
        std::fs::remove_dir_all(&exchanges_dir).map_err(io(&exchanges_dir))?;
    }
    std::fs::create_dir_all(&exchanges_dir).map_err(io(&exchanges_dir))?;
    for (number, exchange) in exchanges.iter().enumerate() {
        let slug: String = exchange
            .request
            .path
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .collect();
        let slug = slug.trim_matches('-');
        let name = format!("{:04}-{}-{}.json", number + 1, exchange.request.method, cut(slug));
        let path = exchanges_dir.join(name.replace('…', ""));
        let text = serde_json::to_vec_pretty(exchange)
            .map_err(|source| FixtureError::Json { path: path.clone(), source })?;
        std::fs::write(&path, text).map_err(io(&path))?;
    }
    let text = serde_json::to_vec_pretty(set)
        .map_err(|source| FixtureError::Json { path: set_file.clone(), source })?;
    std::fs::write(&set_file, text).map_err(io(&set_file))
}

/// Reads a fixture set written by [`write()`]: its description and its
/// exchanges in recorded order (by file name).
pub fn read(dir: &Path) -> Result<(FixtureSet, Vec<Exchange>), FixtureError> {
    let set_file = dir.join(SET_FILE);
    let text = std::fs::read(&set_file)
        .map_err(|source| FixtureError::Io { path: set_file.clone(), source })?;
    let set: FixtureSet = serde_json::from_slice(&text)
        .map_err(|source| FixtureError::Json { path: set_file.clone(), source })?;
    let exchanges_dir = dir.join(EXCHANGES_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&exchanges_dir)
        .map_err(|source| FixtureError::Io { path: exchanges_dir.clone(), source })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut exchanges = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read(&path)
            .map_err(|source| FixtureError::Io { path: path.clone(), source })?;
        exchanges.push(
            serde_json::from_slice(&text).map_err(|source| FixtureError::Json { path, source })?,
        );
    }
    Ok((set, exchanges))
}

/// A loopback server, stopped when its handle is finished or dropped.
#[derive(Debug)]
struct Server {
    origin: String,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(app: axum::Router) -> Result<Server, FixtureError> {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(FixtureError::Listen)?;
        let origin = format!("http://{}", listener.local_addr().map_err(FixtureError::Listen)?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Server { origin, task })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The parts of an incoming request the recorder and the replayer read.
async fn take(
    request: axum::extract::Request,
) -> Result<(axum::http::request::Parts, axum::body::Bytes), String> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?;
    Ok((parts, bytes))
}

fn header_pairs(headers: &axum::http::HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
}

fn answer(status: u16, headers: &[(String, String)], body: Vec<u8>) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() =
        axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
    for (name, value) in headers {
        if DROPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            axum::http::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// A loopback proxy in front of a live endpoint that keeps every exchange.
#[derive(Debug)]
pub struct Recorder {
    server: Server,
    base_path: String,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl Recorder {
    /// Starts a proxy forwarding to `upstream` (a base URL; its path is
    /// kept, so the proxy's [`Recorder::base_url`] stands in for it).
    pub async fn start(upstream: &str, redaction: Redaction) -> Result<Recorder, FixtureError> {
        let url = url::Url::parse(upstream)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| FixtureError::BaseUrl(upstream.to_owned()))?;
        let origin = url.origin().ascii_serialization();
        let base_path = url.path().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .map_err(|e| FixtureError::Listen(std::io::Error::other(e)))?;
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let kept = exchanges.clone();
        let redaction = Arc::new(redaction);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (client, origin, kept, redaction) =
                (client.clone(), origin.clone(), kept.clone(), redaction.clone());
            async move {
                match forward(&client, &origin, request, &redaction).await {
                    Ok((exchange, response)) => {
                        if let Ok(mut kept) = kept.lock() {
                            kept.push(exchange);
                        }
                        response
                    }
                    Err(message) => answer(502, &[], message.into_bytes()),
                }
            }
        });
        Ok(Recorder { server: Server::start(app).await?, base_path, exchanges })
    }

    /// The base URL to point the connection at.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.server.origin, self.base_path)
    }

    /// The base URL's path, for [`FixtureSet::base_path`].
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Stops the proxy; the exchanges in the order they were answered.
    pub fn finish(self) -> Vec<Exchange> {
        self.exchanges.lock().map(|mut kept| std::mem::take(&mut *kept)).unwrap_or_default()
    }
}

/// Sends one request upstream; the exchange as recorded and the answer,
/// unredacted, for the connector.
async fn forward(
    client: &reqwest::Client,
    origin: &str,
    request: axum::extract::Request,
    redaction: &Redaction,
) -> Result<(Exchange, axum::response::Response), String> {
    let (parts, body) = take(request).await?;
    let path_and_query = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .map_err(|e| format!("method: {e}"))?;
    let mut outgoing = client.request(method, format!("{origin}{path_and_query}"));
    for (name, value) in header_pairs(&parts.headers) {
        if !matches!(name, "host" | "content-length" | "connection" | "accept-encoding") {
            outgoing = outgoing.header(name, value);
        }
    }
    let mut upstream = outgoing
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("weft plugin record: the endpoint did not answer: {e}"))?;
    let status = upstream.status().as_u16();
    let headers: Vec<(String, String)> = upstream
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    // Read chunk by chunk, so an endpoint that answers without end is
    // refused at the cap instead of buffered whole first.
    let mut bytes = Vec::new();
    while let Some(chunk) =
        upstream.chunk().await.map_err(|e| format!("the endpoint's body: {e}"))?
    {
        if bytes.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(format!("the endpoint answered more than {MAX_BODY_BYTES} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    // An absolute URL to the endpoint in the answer (a next page) is
    // stored as the recorded origin and given to the connector as this
    // proxy's, so its next request is recorded too instead of going
    // around the proxy.
    let stored = OriginSwap::new(origin, RECORDED_ORIGIN);
    let stored_headers = stored.headers(&headers);
    let stored_bytes = stored.bytes(bytes.clone());
    let proxy = own_origin(&parts).unwrap_or_else(|| origin.to_owned());
    let to_connector = OriginSwap::new(origin, &proxy);
    let exchange = Exchange {
        request: redaction.request(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query(),
            header_pairs(&parts.headers),
            &body,
        ),
        response: redaction.response(
            status,
            stored_headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            &stored_bytes,
        ),
    };
    Ok((exchange, answer(status, &to_connector.headers(&headers), to_connector.bytes(bytes))))
}

/// A loopback server answering from fixtures, keeping every request they
/// do not hold.
#[derive(Debug)]
pub struct Replayer {
    server: Server,
    base_path: String,
    state: Arc<Mutex<ReplayState>>,
}

#[derive(Debug, Default)]
struct ReplayState {
    exchanges: Vec<Exchange>,
    used: HashSet<usize>,
    misses: Vec<String>,
}

/// How a replay went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Each request the fixtures did not hold, as a person reads it.
    pub misses: Vec<String>,
    /// Recorded exchanges no request asked for.
    pub unused: Vec<String>,
}

impl Replayer {
    /// Serves `exchanges` under `base_path`, matching requests after the
    /// same `redaction` they were recorded with.
    pub async fn start(
        base_path: &str,
        exchanges: Vec<Exchange>,
        redaction: Redaction,
    ) -> Result<Replayer, FixtureError> {
        let state = Arc::new(Mutex::new(ReplayState { exchanges, ..ReplayState::default() }));
        let shared = state.clone();
        let redaction = Arc::new(redaction);
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (state, redaction) = (shared.clone(), redaction.clone());
            async move {
                let (parts, body) = match take(request).await {
                    Ok(taken) => taken,
                    Err(message) => return answer(400, &[], message.into_bytes()),
                };
                let asked = redaction.request(
                    parts.method.as_str(),
                    parts.uri.path(),
                    parts.uri.query(),
                    header_pairs(&parts.headers),
                    &body,
                );
                let origin = own_origin(&parts).unwrap_or_default();
                replay(&state, &asked, &origin)
            }
        });
        Ok(Replayer {
            server: Server::start(app).await?,
            base_path: base_path.trim_end_matches('/').to_owned(),
            state,
        })
    }

    /// The base URL to point the connection at.
    pub fn base_url(&self) -> String {
        format!("{}{}", self.server.origin, self.base_path)
    }

    /// Stops serving; what was missed and what was left.
    pub fn finish(self) -> ReplayOutcome {
        let Ok(state) = self.state.lock() else {
            return ReplayOutcome {
                misses: vec!["the replay state was poisoned".into()],
                unused: Vec::new(),
            };
        };
        let unused = (0..state.exchanges.len())
            .filter(|i| !state.used.contains(i))
            .map(|i| state.exchanges[i].request.describe())
            .collect();
        ReplayOutcome { misses: state.misses.clone(), unused }
    }
}

fn replay(
    state: &Mutex<ReplayState>,
    asked: &RecordedRequest,
    origin: &str,
) -> axum::response::Response {
    let Ok(mut state) = state.lock() else {
        return answer(500, &[], b"weft replay: state poisoned".to_vec());
    };
    let key = asked.key();
    let found = (0..state.exchanges.len())
        .find(|i| !state.used.contains(i) && state.exchanges[*i].request.key() == key);
    match found {
        Some(index) => {
            state.used.insert(index);
            let response = &state.exchanges[index].response;
            let body = match (&response.json, &response.text) {
                (Some(json), _) => serde_json::to_vec(json).unwrap_or_default(),
                (None, Some(text)) => text.as_bytes().to_vec(),
                (None, None) => Vec::new(),
            };
            let ours = OriginSwap::new(RECORDED_ORIGIN, origin);
            answer(response.status, &ours.headers(&response.headers), ours.bytes(body))
        }
        None => {
            let described = asked.describe();
            let message = format!("weft replay: no fixture holds {described}");
            state.misses.push(described);
            // 400: not retried by the host, so one miss is one request.
            let body =
                serde_json::json!({ "error": { "message": message, "type": "weft_replay" } });
            answer(
                400,
                &[("content-type".to_owned(), "application/json".to_owned())],
                body.to_string().into_bytes(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_credentials_and_named_fields_and_keeps_matching_stable() {
        let redaction =
            Redaction::new(&["data.email".to_owned()], Some("sk_live_secret1"), Some("X-Token"));
        let mut nested =
            serde_json::json!({"page": {"data": [{"email": "a@b.c"}]}, "email": "d@e.f"});
        redaction.value(&mut nested);
        assert_eq!(
            nested,
            serde_json::json!({"page": {"data": [{"email": REDACTED}]}, "email": "d@e.f"})
        );
        let request = redaction.request(
            "post",
            "/v1/customers",
            Some("b=2&a=1&key=sk_live_secret1"),
            [
                ("authorization", "Bearer sk_live_secret1"),
                ("x-token", "abc"),
                ("content-type", "application/json"),
            ]
            .into_iter(),
            br#"{"data":[{"email":"a@b.c","name":"A"}],"note":"sk_live_secret1"}"#,
        );
        assert_eq!(
            request.headers,
            vec![("content-type".to_owned(), "application/json".to_owned())]
        );
        assert_eq!(request.query, "a=1&b=2&key=%5Bcredential%5D");
        assert_eq!(
            request.json,
            Some(serde_json::json!({"data":[{"email":REDACTED,"name":"A"}],"note":CREDENTIAL}))
        );
        // Key order does not change the digest.
        let reordered = redaction.request(
            "POST",
            "/v1/customers",
            Some("a=1&key=sk_live_secret1&b=2"),
            std::iter::empty(),
            br#"{"note":"sk_live_secret1","data":[{"name":"A","email":"x@y.z"}]}"#,
        );
        assert_eq!(request.key(), reordered.key());
    }

    #[test]
    fn form_bodies_and_queries_are_redacted_as_json_fields_are() {
        let redaction = Redaction::new(
            &["email".to_owned(), "address.line1".to_owned()],
            Some("sk_test_secret1"),
            None,
        );
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let body = b"email=a%40b.c&name=Ada&address[line1]=1+Main+St&address[city]=Berlin&items[0][email]=x%40y.z&metadata[note]=sk_test_secret1&metadata[email_opt_in]=true";
        let request = redaction.request("POST", "/v1/customers", None, form.into_iter(), body);
        let text = request.text.clone().unwrap_or_default();
        let pairs: Vec<(String, String)> = url::form_urlencoded::parse(text.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let want = [
            ("email", REDACTED),
            ("name", "Ada"),
            ("address[line1]", REDACTED),
            ("address[city]", "Berlin"),
            ("items[0][email]", REDACTED),
            ("metadata[note]", CREDENTIAL),
            ("metadata[email_opt_in]", "true"),
        ];
        assert_eq!(
            pairs,
            want.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<Vec<_>>()
        );
        assert!(!text.contains("a%40b.c") && !text.contains("Main") && !text.contains("secret1"));
        // A replayed request with other addresses matches the recording.
        let other = b"email=z%40z.z&name=Ada&address[line1]=9+Elm&address[city]=Berlin&items[0][email]=q%40q.q&metadata[note]=sk_test_secret1&metadata[email_opt_in]=true";
        let replayed = redaction.request("POST", "/v1/customers", None, form.into_iter(), other);
        assert_eq!(request.key(), replayed.key());
        // The lookup by email carries it in the query.
        let lookup = redaction.request(
            "GET",
            "/v1/customers",
            Some("email=a%40b.c&limit=2"),
            std::iter::empty(),
            b"",
        );
        assert_eq!(lookup.query, "email=%5Bredacted%5D&limit=2");
        // Not a form: the body is kept as text, only the credential goes.
        let plain = redaction.request(
            "POST",
            "/x",
            None,
            [("content-type", "text/plain")].into_iter(),
            b"email=a@b.c sk_test_secret1",
        );
        assert_eq!(plain.text.as_deref(), Some("email=a@b.c [credential]"));
    }

    #[tokio::test]
    async fn an_absolute_next_page_url_comes_back_through_the_recorder_and_the_replayer()
    -> Result<(), String> {
        // A vendor that pages with absolute URLs to itself, in the body and
        // in a `Link` header (JSON-escaped slashes in one of them).
        let vendor = axum::Router::new().fallback(|request: axum::extract::Request| async move {
            let host = request.headers().get("host").and_then(|h| h.to_str().ok()).unwrap_or("");
            let me = format!("http://{host}");
            let second = request.uri().query() == Some("page=2");
            let body = if second {
                r#"{"data":[2],"next":null}"#.to_owned()
            } else {
                format!(r#"{{"data":[1],"next":"{}/v1/items?page=2"}}"#, me.replace('/', "\\/"))
            };
            let mut response = axum::response::Response::new(axum::body::Body::from(body));
            if !second {
                let link = format!("<{me}/v1/items?page=2>; rel=\"next\"");
                if let Ok(link) = axum::http::HeaderValue::from_str(&link) {
                    response.headers_mut().insert("link", link);
                }
            }
            response
        });
        let vendor = Server::start(vendor).await.map_err(|e| e.to_string())?;
        let client = reqwest::Client::new();
        // Follows `next` from the first page; the next URL and the pages.
        let walk = |base: String| {
            let client = client.clone();
            async move {
                let get = |url: String| {
                    let client = client.clone();
                    async move {
                        let answer = client.get(url).send().await.map_err(|e| e.to_string())?;
                        let bytes = answer.bytes().await.map_err(|e| e.to_string())?;
                        serde_json::from_slice::<Value>(&bytes).map_err(|e| e.to_string())
                    }
                };
                let first = get(format!("{base}/items")).await?;
                let next = first["next"].as_str().unwrap_or_default().to_owned();
                let second = get(next.clone()).await?;
                Ok::<_, String>((next, first["data"].clone(), second["data"].clone()))
            }
        };

        let recorder =
            Recorder::start(&format!("{}/v1", vendor.origin), Redaction::new(&[], None, None))
                .await
                .map_err(|e| e.to_string())?;
        let (next, first, second) = walk(recorder.base_url()).await?;
        assert!(next.starts_with(&recorder.server.origin), "{next} goes around the recorder");
        assert_eq!((first, second), (serde_json::json!([1]), serde_json::json!([2])));
        let base_path = recorder.base_path().to_owned();
        let exchanges = recorder.finish();
        assert_eq!(exchanges.len(), 2, "both pages recorded: {exchanges:#?}");
        let stored = serde_json::to_string(&exchanges).map_err(|e| e.to_string())?;
        assert!(!stored.contains(&vendor.origin), "the vendor's origin is not stored: {stored}");
        assert!(stored.contains(RECORDED_ORIGIN), "{stored}");

        let replayer = Replayer::start(&base_path, exchanges, Redaction::new(&[], None, None))
            .await
            .map_err(|e| e.to_string())?;
        drop(vendor);
        let (next, first, second) = walk(replayer.base_url()).await?;
        assert!(next.starts_with(&replayer.server.origin), "{next}");
        assert_eq!((first, second), (serde_json::json!([1]), serde_json::json!([2])));
        let outcome = replayer.finish();
        assert_eq!(outcome, ReplayOutcome { misses: vec![], unused: vec![] });
        Ok(())
    }

    #[tokio::test]
    async fn an_endless_answer_is_refused_at_the_cap_not_buffered() -> Result<(), String> {
        let chunk = axum::body::Bytes::from(vec![b'a'; 64 << 10]);
        let endless = axum::Router::new().fallback(move || {
            let chunk = chunk.clone();
            async move {
                let stream = futures_util::stream::repeat_with(move || {
                    Ok::<_, std::convert::Infallible>(chunk.clone())
                });
                axum::body::Body::from_stream(stream)
            }
        });
        let upstream = Server::start(endless).await.map_err(|e| e.to_string())?;
        let recorder = Recorder::start(&upstream.origin, Redaction::new(&[], None, None))
            .await
            .map_err(|e| e.to_string())?;
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            reqwest::Client::new().get(format!("{}/v1/customers", recorder.base_url())).send(),
        )
        .await
        .map_err(|_| "the recorder did not answer within 60 s".to_owned())?
        .map_err(|e| e.to_string())?;
        assert_eq!(answer.status().as_u16(), 502);
        let message = answer.text().await.map_err(|e| e.to_string())?;
        assert!(message.contains(&format!("more than {MAX_BODY_BYTES} bytes")), "{message}");
        assert!(recorder.finish().is_empty(), "nothing was recorded");
        Ok(())
    }
}
