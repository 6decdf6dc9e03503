//! The request check of the JSON vendors (Baremetrics, Metronome,
//! GrowPanel, Stripe SCIM): path and query parameters read as OpenAPI's
//! default styles, a JSON body as it is, each validated against the
//! operation's description before the handler sees the request.
//!
//! A request to a path the description does not have goes on to the
//! handler, whose 404 is the vendor's; so does a body that is not JSON,
//! which each handler already refuses in its vendor's words.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use super::{Loaded, Part, Violation, decode};

/// Largest body the check reads, as axum's default for the handlers.
pub(crate) const BODY_LIMIT: usize = 2 << 20;

/// What a vendor's check needs: its description, and how it answers a
/// request outside it.
#[derive(Clone, Copy)]
pub(crate) struct JsonCheck {
    /// The vendor's compiled description.
    pub spec: &'static Loaded,
    /// The vendor's answer to a request its description refuses.
    pub refuse: fn(&Violation) -> Response,
    /// The vendor's answer when its description cannot be used (a broken
    /// build; the spec tests catch it).
    pub broken: fn(&str) -> Response,
}

/// Middleware: refuses a request its operation's description does not
/// allow, with the vendor's answer; passes every other request on, body
/// untouched.
pub(crate) async fn check_json_request(
    State(check): State<JsonCheck>,
    request: Request,
    next: Next,
) -> Response {
    let spec = match check.spec.as_ref() {
        Ok(spec) => spec,
        Err(error) => {
            tracing::error!(%error, "an emulator cannot check requests");
            return (check.broken)(&error.to_string());
        }
    };
    let method = request.method().as_str().to_owned();
    let Some((operation, path_parameters)) = spec.find(&method, request.uri().path()) else {
        return next.run(request).await;
    };
    let refuse = |violation: &Violation| {
        tracing::debug!(operation = %operation.name, %violation, "refused: outside the vendor's description");
        (check.refuse)(violation)
    };
    if let Err(violation) = operation.path.check(Part::Path, &path_parameters) {
        return refuse(&violation);
    }
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let query = decode::query(&pairs, &operation.query.schema, spec.refuses_unknown());
    if let Err(violation) = operation.query.check(Part::Query, &query) {
        return refuse(&violation);
    }
    let Some(body_schema) = &operation.body else {
        return next.run(request).await;
    };
    let is_json =
        request.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_none_or(
            |value| {
                let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                mime == "application/json" || mime.ends_with("+json")
            },
        );
    if !is_json {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes: Bytes = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(bytes) => bytes,
        Err(error) => {
            return refuse(&Violation::other(Part::Body, format!("could not be read: {error}")));
        }
    };
    if !bytes.is_empty()
        && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        && let Err(violation) = body_schema.schema.check(Part::Body, &value)
    {
        return refuse(&violation);
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}
