//! Misbehaviour through `http.send`: what a plugin can ask of the host's
//! HTTP layer, and what a vendor's answer can carry back to it.
//!
//! | resource       | what `list` does                                                   | the host should |
//! | -------------- | ------------------------------------------------------------------ | --------------- |
//! | `many-headers` | GETs `{base_url}/v1/customers` with 30,000 distinct headers        | refuse it as invalid, not panic |
//! | `flood`        | GETs `{base_url}/flood` until a request fails, then reports the count | stop it at the per-call budget, pace it at the host ceiling |
//! | `echo`         | GETs `{base_url}/echo`, returns status, headers and body as text  | have scrubbed the credential from them |
//!
//! The manifest publishes a limit of 1,000,000 requests per second (see
//! [`PUBLISHED_RATE_LIMITS`]), which the host must not take at its word.

use serde_json::{Value, json};
use weft_connector_sdk::{Context, Error, MethodClass, RateLimit, Result, http};

/// The resources this module serves, with their descriptions.
pub const RESOURCES: &[(&str, &str)] = &[
    ("many-headers", "An HTTP GET with 30,000 distinct header names."),
    ("flood", "HTTP GETs to {base_url}/flood until one fails."),
    ("echo", "Status, headers and body of GET {base_url}/echo."),
];

/// Headers `many-headers` sends: past the 24,576 distinct names at which
/// a `HeaderMap` panics.
const MANY_HEADERS: usize = 30_000;

/// Requests `flood` sends at most, should nothing stop it.
const FLOOD_MAX: u32 = 1_000_000;

/// What the plugin publishes: far more than any vendor allows, so that a
/// host taking it at its word sends as fast as it can.
pub fn published_rate_limits() -> Vec<RateLimit> {
    vec![RateLimit {
        method_class: MethodClass::Any,
        requests: 1_000_000,
        per_seconds: 1,
        credential_prefix: None,
    }]
}

/// Whether `resource` is one of this module's.
pub fn serves(resource: &str) -> bool {
    RESOURCES.iter().any(|(name, _)| *name == resource)
}

/// Runs `resource`'s misbehaviour.
pub fn list(ctx: &Context, resource: &str) -> Result<Vec<Value>> {
    match resource {
        "many-headers" => {
            let mut request = http::get(ctx.url("/v1/customers"));
            for i in 0..MANY_HEADERS {
                request = request.header(format!("x-hostile-{i}"), "1");
            }
            let response = request.send()?;
            Err(Error::fatal(format!(
                "the host sent a request with {MANY_HEADERS} headers (HTTP {})",
                response.status
            )))
        }
        "flood" => {
            let mut sent = 0u32;
            while sent < FLOOD_MAX {
                if let Err(error) = http::get(ctx.url("/flood")).send() {
                    return Err(Error::fatal(format!(
                        "flood: {sent} requests went through, then: {error}"
                    )));
                }
                sent += 1;
            }
            Ok(vec![json!({"sent": sent})])
        }
        "echo" => {
            let response = http::get(ctx.url("/echo")).send()?;
            Ok(vec![json!({
                "status": response.status,
                "headers": response.headers,
                "body": String::from_utf8_lossy(&response.body),
            })])
        }
        other => Err(Error::not_found(format!("hostile: no resource `{other}`"))),
    }
}
