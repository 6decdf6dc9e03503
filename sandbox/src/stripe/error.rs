//! Stripe's error envelope, `{"error": {"type", "message", "param", "code"}}`,
//! and the errors the emulator answers with.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The `error.type` values of the spec's `api_errors` schema that the
/// emulator can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum ErrorType {
    /// Bad parameters, unknown objects, bad keys, rate limits.
    #[serde(rename = "invalid_request_error")]
    InvalidRequest,
    /// An idempotency key reused with other parameters or another endpoint.
    #[serde(rename = "idempotency_error")]
    Idempotency,
    /// Stripe's own failure.
    #[serde(rename = "api_error")]
    Api,
}

/// An error answer: status code plus the envelope's fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {kind:?}: {message}")]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: ErrorType,
    pub message: String,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

/// Field order follows Stripe's answers (alphabetical).
#[derive(Serialize)]
struct Body<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    doc_url: Option<String>,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    param: Option<&'a str>,
    #[serde(rename = "type")]
    kind: ErrorType,
}

impl ApiError {
    fn new(status: StatusCode, kind: ErrorType, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None }
    }

    /// A 400 `invalid_request_error` without a parameter.
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorType::InvalidRequest, message)
    }

    /// A 400 `invalid_request_error` about parameter `param`.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self::invalid_request(message).with_param(param)
    }

    /// `Received unknown parameter: foo`.
    pub fn unknown_parameter(param: &str) -> Self {
        Self::invalid_param(param, format!("Received unknown parameter: {param}"))
    }

    /// `Missing required param: foo.`
    pub fn missing_parameter(param: &str) -> Self {
        Self::invalid_param(param, format!("Missing required param: {param}."))
            .with_code("parameter_missing")
    }

    /// `Invalid integer: abc`.
    pub fn invalid_integer(param: &str, value: &str) -> Self {
        Self::invalid_param(param, format!("Invalid integer: {value}"))
            .with_code("parameter_invalid_integer")
    }

    /// `No such customer: 'cus_x'`, or another object named by `noun`.
    ///
    /// 404 when the object is the one in the URL, 400 when a parameter
    /// refers to it, as Stripe does.
    pub fn no_such(noun: &str, id: &str, param: &str, status: StatusCode) -> Self {
        Self::new(status, ErrorType::InvalidRequest, format!("No such {noun}: '{id}'"))
            .with_param(param)
            .with_code("resource_missing")
    }

    /// `No such customer: '<id>'` for the customer in the URL.
    pub fn no_such_customer(id: &str) -> Self {
        Self::no_such("customer", id, "id", StatusCode::NOT_FOUND)
    }

    /// 401 for a request without a usable key.
    pub fn no_api_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::InvalidRequest,
            "You did not provide an API key. You need to provide your API key in the \
             Authorization header, using Bearer auth (e.g. 'Authorization: Bearer \
             YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, \
             or we can help at https://support.stripe.com/.",
        )
    }

    /// 401 for a key the emulator does not know, masked as Stripe masks it.
    pub fn invalid_api_key(key: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::InvalidRequest,
            format!("Invalid API Key provided: {}", mask_key(key)),
        )
    }

    /// 429 over the rate limit.
    ///
    /// The spec's `api_errors.type` has no `rate_limit_error` (older docs
    /// did), so this is an `invalid_request_error` with code `rate_limit`;
    /// clients recognise it by the 429 status.
    pub fn rate_limited(test_mode: bool) -> Self {
        let message = if test_mode {
            "Testmode request rate limit exceeded, the rate limits in testmode are lower than \
             livemode. You can learn more about rate limits here https://stripe.com/docs/rate-limits."
        } else {
            "Request rate limit exceeded. You can learn more about rate limits here \
             https://stripe.com/docs/rate-limits."
        };
        Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorType::InvalidRequest, message)
            .with_code("rate_limit")
    }

    /// 500 `api_error`.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Api,
            "Sorry, something went wrong. We've already been notified of the problem, but if \
             you need any help, you can reach us at support.stripe.com/contact.",
        )
    }

    /// 400 `idempotency_error`.
    pub fn idempotency(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorType::Idempotency, message)
    }

    /// 404 for a path the API does not have.
    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorType::InvalidRequest,
            format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
        )
    }

    /// Adds the parameter the error is about.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// Adds Stripe's machine-readable error code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The JSON body Stripe sends for this error.
    pub fn body(&self) -> Vec<u8> {
        let envelope = Envelope {
            error: Body {
                code: self.code,
                doc_url: self.code.map(|code| {
                    format!("https://stripe.com/docs/error-codes/{}", code.replace('_', "-"))
                }),
                message: &self.message,
                param: self.param.as_deref(),
                kind: self.kind,
            },
        };
        // Serialising plain strings into a Vec cannot fail.
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Stripe\""),
            );
        }
        response
    }
}

/// Masks a key as Stripe does in its 401 message: the `sk_test_`-style
/// prefix and the last four characters stay, the rest become `*`.
pub(crate) fn mask_key(key: &str) -> String {
    let prefix_len = ["sk_test_", "sk_live_", "rk_test_", "rk_live_", "pk_test_", "pk_live_"]
        .iter()
        .find(|prefix| key.starts_with(*prefix))
        .map_or(0, |prefix| prefix.len());
    let (prefix, secret) = key.split_at(prefix_len);
    let secret: Vec<char> = secret.chars().collect();
    let shown = secret.len().min(4);
    let hidden = secret.len() - shown;
    let mut masked = String::with_capacity(key.len());
    masked.push_str(prefix);
    masked.extend(std::iter::repeat_n('*', hidden));
    masked.extend(&secret[hidden..]);
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_but_for_prefix_and_last_four() {
        assert_eq!(mask_key("sk_test_wxyzabcd"), "sk_test_****abcd");
        assert_eq!(mask_key("undefined"), "*****ined");
        assert_eq!(mask_key("abc"), "abc");
    }

    #[test]
    fn error_bodies_have_stripes_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::unknown_parameter("foo").body()).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "message": "Received unknown parameter: foo",
                "param": "foo",
                "type": "invalid_request_error",
            }})
        );
        let body: serde_json::Value =
            serde_json::from_slice(&ApiError::no_such_customer("cus_x").body()).expect("json");
        assert_eq!(body["error"]["code"], "resource_missing");
        assert_eq!(
            body["error"]["doc_url"],
            "https://stripe.com/docs/error-codes/resource-missing"
        );
    }
}
