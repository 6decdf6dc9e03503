//! A recording reverse proxy on loopback: the connector talks to it, it
//! passes each request on (to Prism, or straight to an emulator) and keeps
//! both sides of every exchange, so a violation can be reported with the
//! vendor, method and path that caused it.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use weft_sandbox::server::{LOOPBACK_ANY_PORT, RunningServer, serve};

use super::super::support::TestResult;

/// Largest body the recorder accepts from either side.
const BODY_LIMIT: usize = 16 << 20;

/// One request as the connector sent it and the answer it got back.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The connector op that sent it, as the test named it.
    pub op: String,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path as the connector sent it (before any prefix was stripped).
    pub path: String,
    /// The query string, without `?`; empty when there was none.
    pub query: String,
    /// The request's `content-type`, empty when none.
    pub request_type: String,
    /// The request body as text.
    pub request_body: String,
    /// The status the connector saw.
    pub status: u16,
    /// The response's `content-type`, empty when none.
    pub response_type: String,
    /// The response body as text.
    pub response_body: String,
    /// Prism's `sl-violations` header, when it sent one.
    pub violations: Option<String>,
}

impl Exchange {
    /// `POST /v1/customers?limit=2`, for messages.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }
}

#[derive(Debug, Clone)]
struct Forward {
    client: reqwest::Client,
    upstream: String,
    strip_prefix: String,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    op: Arc<Mutex<String>>,
}

/// A running recorder.
#[derive(Debug)]
pub struct Recorder {
    server: RunningServer,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    op: Arc<Mutex<String>>,
}

impl Recorder {
    /// Serves on a free loopback port and forwards every request to
    /// `upstream`, with `strip_prefix` taken off the path first (Prism
    /// serves Metronome without the `/v1` its server URL carries).
    pub async fn start(upstream: &str, strip_prefix: &str) -> TestResult<Recorder> {
        // Loopback only, and never through an HTTP proxy from the environment.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let op = Arc::new(Mutex::new(String::new()));
        let forward = Forward {
            client,
            upstream: upstream.trim_end_matches('/').to_owned(),
            strip_prefix: strip_prefix.to_owned(),
            exchanges: exchanges.clone(),
            op: op.clone(),
        };
        let router = Router::new().fallback(relay).with_state(forward);
        let server = serve(router, LOOPBACK_ANY_PORT).await?;
        Ok(Recorder { server, exchanges, op })
    }

    /// Names the connector op whose requests come next.
    pub fn begin(&self, op: &str) {
        if let Ok(mut current) = self.op.lock() {
            op.clone_into(&mut current);
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// Every exchange so far, in order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
}

/// Headers that describe one hop, not the message.
fn is_hop_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive" | "upgrade"
    )
}

async fn relay(State(forward): State<Forward>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(body) => body,
        Err(e) => {
            return (
                StatusCode::BAD_GATEWAY,
                format!("recorder: cannot read the request body: {e}"),
            )
                .into_response();
        }
    };
    let forwarded_path = path
        .strip_prefix(forward.strip_prefix.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or(&path);
    let url = if query.is_empty() {
        format!("{}{forwarded_path}", forward.upstream)
    } else {
        format!("{}{forwarded_path}?{query}", forward.upstream)
    };
    let mut outgoing = forward.client.request(parts.method.clone(), &url).body(body.clone());
    for (name, value) in &parts.headers {
        if !is_hop_header(name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.send().await {
        Ok(answer) => answer,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("recorder: {url}: {e}")).into_response();
        }
    };
    let status = answer.status();
    let headers = answer.headers().clone();
    let answer_body: Bytes = match answer.bytes().await {
        Ok(bytes) => bytes,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("recorder: {url}: body: {e}"))
                .into_response();
        }
    };
    let exchange = Exchange {
        op: forward.op.lock().map(|op| op.clone()).unwrap_or_default(),
        method: parts.method.to_string(),
        path,
        query,
        request_type: header(&parts.headers, "content-type"),
        request_body: String::from_utf8_lossy(&body).into_owned(),
        status: status.as_u16(),
        response_type: header(&headers, "content-type"),
        response_body: String::from_utf8_lossy(&answer_body).into_owned(),
        violations: headers.get("sl-violations").and_then(|v| v.to_str().ok()).map(str::to_owned),
    };
    if let Ok(mut exchanges) = forward.exchanges.lock() {
        exchanges.push(exchange);
    }
    let mut response = Response::new(Body::from(answer_body));
    *response.status_mut() = status;
    for (name, value) in &headers {
        if !is_hop_header(name) {
            response.headers_mut().append(name, value.clone());
        }
    }
    response
}
