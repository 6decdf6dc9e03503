//! A shared log of every request an emulator answered, for tests to assert
//! what a connector really sent (and what it got back).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};

use crate::limits::FaultKind;

/// Largest request body the log (and so any emulator) accepts; vendors'
/// own limits are of this order and connectors send far less.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// One request as the emulator received it, with the status it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, upper case (`"POST"`).
    pub method: String,
    /// Path without the query string (`"/v1/customers"`).
    pub path: String,
    /// Raw query string without the `?`; empty if there was none.
    pub query: String,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
    /// Request body as text (lossy if it was not UTF-8).
    pub body: String,
    /// Status code of the answer.
    pub status: u16,
    /// The fault injected into the answer, if one was.
    pub injected_fault: Option<FaultKind>,
    /// When the request arrived, for measuring a client's request rate.
    pub received_at: Instant,
}

/// A log of [`RecordedRequest`]s, shared by its clones.
///
/// The API key is deliberately not recorded: logs of test runs get pasted
/// into issues.
#[derive(Debug, Clone, Default)]
pub struct RequestLog {
    entries: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl RequestLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of the requests so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    /// Forgets every request so far.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of requests recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request has been recorded.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// How many recorded requests satisfy `predicate`, without copying the
    /// log.
    pub fn count_where(&self, predicate: impl Fn(&RecordedRequest) -> bool) -> usize {
        self.lock().iter().filter(|request| predicate(request)).count()
    }

    /// Appends `request` to the log.
    pub fn push(&self, request: RecordedRequest) {
        self.lock().push(request);
    }

    /// Records every request to `router`'s routes (and its fallback) here.
    ///
    /// Put it outermost, so refusals by other middleware are logged too.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(middleware::from_fn_with_state(self.clone(), record))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The middleware behind [`RequestLog::wrap`], for use with
/// [`axum::middleware::from_fn_with_state`].
///
/// Buffers the request body (up to [`MAX_BODY_BYTES`]) to record it, then
/// hands the request on unchanged.
pub async fn record(State(log): State<RequestLog>, request: Request, next: Next) -> Response {
    let received_at = Instant::now();
    let (parts, body) = request.into_parts();
    let mut recorded = RecordedRequest {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        idempotency_key: parts
            .headers
            .get("idempotency-key")
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned()),
        body: String::new(),
        status: 0,
        injected_fault: None,
        received_at,
    };
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let response = (StatusCode::PAYLOAD_TOO_LARGE, "request body too large or unreadable")
                .into_response();
            recorded.status = response.status().as_u16();
            log.push(recorded);
            return response;
        }
    };
    recorded.body = String::from_utf8_lossy(&bytes).into_owned();

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    recorded.status = response.status().as_u16();
    recorded.injected_fault = response.extensions().get::<FaultKind>().copied();
    log.push(recorded);
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;

    #[tokio::test]
    async fn the_log_records_method_path_query_key_body_and_status() {
        let log = RequestLog::new();
        let router = log.wrap(
            Router::new()
                .route("/things", post(|body: String| async move { (StatusCode::CREATED, body) })),
        );
        let server =
            crate::server::serve(router, crate::server::LOOPBACK_ANY_PORT).await.expect("binds");
        let client = reqwest::Client::new();
        let echoed = client
            .post(format!("{}/things?x=1", server.base_url()))
            .header("Idempotency-Key", "k1")
            .body("a=b")
            .send()
            .await
            .expect("request succeeds")
            .text()
            .await
            .expect("body");
        assert_eq!(echoed, "a=b", "the handler still sees the body");
        client
            .get(format!("{}/nowhere", server.base_url()))
            .send()
            .await
            .expect("request succeeds");

        let requests = log.requests();
        assert_eq!(requests.len(), 2);
        let first = &requests[0];
        assert_eq!(first.method, "POST");
        assert_eq!(first.path, "/things");
        assert_eq!(first.query, "x=1");
        assert_eq!(first.idempotency_key.as_deref(), Some("k1"));
        assert_eq!(first.body, "a=b");
        assert_eq!(first.status, 201);
        assert_eq!(first.injected_fault, None);
        assert_eq!(requests[1].status, 404);
        assert_eq!(log.count_where(|r| r.method == "GET"), 1);

        log.clear();
        assert!(log.is_empty());
        server.shutdown().await;
    }
}
