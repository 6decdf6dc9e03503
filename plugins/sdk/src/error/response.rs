//! Turning a vendor's error answer (HTTP status, headers, body) into an
//! [`Error`]: the status table and the body shapes are in the docs of
//! [`crate::error`], which re-exports everything public here.

use core::time::Duration;

use serde_json::Value;

use crate::Error;
use crate::http::{Response, find_header};

/// The longest slice of a non-JSON body quoted in a message; an HTML error
/// page says nothing useful after its first line anyway.
const SNIPPET_CHARS: usize = 200;

/// What a vendor said in an error body, as far as it could be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VendorError {
    /// The error's type or category (Stripe `type`, SCIM `scimType`,
    /// OAuth `error`).
    pub kind: Option<String>,
    /// A machine-readable code (Stripe `code`: `resource_missing`).
    pub code: Option<String>,
    /// The human message.
    pub message: Option<String>,
    /// The request parameter at fault (Stripe `param`).
    pub param: Option<String>,
}

impl VendorError {
    /// Reads the body shapes vendors commonly use:
    ///
    /// - `{"error": {"type", "code", "message", "param"}}` (Stripe and many
    ///   others);
    /// - `{"error": "invalid_grant", "error_description": "..."}` (OAuth) and
    ///   `{"error": "..."}`;
    /// - `{"message": "...", "code"?, "type"?}` (GrowPanel, Metronome);
    /// - `{"detail": "...", "scimType"?}` (SCIM 2.0, RFC 7807 problem details
    ///   with `title`);
    /// - `{"errors": [{"message" | "detail" | "title"}, ...]}`.
    ///
    /// `None` when the body is not a JSON object or says nothing readable.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(body) else {
            return None;
        };
        let mut found = match top.get("error") {
            Some(Value::Object(inner)) => Self {
                kind: text(inner.get("type")),
                code: text(inner.get("code")),
                message: text(
                    inner
                        .get("message")
                        .or_else(|| inner.get("detail"))
                        .or_else(|| inner.get("description")),
                ),
                param: text(inner.get("param")),
            },
            Some(Value::String(error)) => match text(top.get("error_description")) {
                Some(description) => Self {
                    kind: Some(error.clone()),
                    message: Some(description),
                    ..Self::default()
                },
                None => Self { message: Some(error.clone()), ..Self::default() },
            },
            _ => Self::default(),
        };
        if found.message.is_none() {
            found.message = text(top.get("message").or_else(|| top.get("detail")));
            found.kind = found.kind.or_else(|| {
                text(top.get("type").or_else(|| top.get("scimType")))
                    .or_else(|| text(top.get("title")))
            });
            found.code = found.code.or_else(|| text(top.get("code")));
            found.param = found.param.or_else(|| text(top.get("param")));
        }
        if found.message.is_none() {
            found.message = list_messages(top.get("errors"));
        }
        if found.message.is_none() && found.kind.is_none() {
            return None;
        }
        Some(found)
    }
}

/// A JSON value as message text: strings as they are, numbers as written,
/// anything else (a field-to-errors map, say) as compact JSON.
fn text(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

fn list_messages(errors: Option<&Value>) -> Option<String> {
    let Value::Array(items) = errors? else {
        return text(errors);
    };
    let messages: Vec<String> = items
        .iter()
        .filter_map(|item| match item {
            Value::Object(fields) => text(
                fields
                    .get("message")
                    .or_else(|| fields.get("detail"))
                    .or_else(|| fields.get("title")),
            ),
            other => text(Some(other)),
        })
        .collect();
    (!messages.is_empty()).then(|| messages.join("; "))
}

/// The [`Error`] for a non-success `response` from `vendor`.
///
/// ```no_run
/// use weft_connector_sdk::{error, http};
///
/// let response = http::get("https://api.stripe.com/v1/customers/cus_x").send()?;
/// if !response.is_success() {
///     return Err(error::from_response("stripe", &response));
/// }
/// # Ok::<(), weft_connector_sdk::Error>(())
/// ```
pub fn from_response(vendor: &str, response: &Response) -> crate::Error {
    from_status(vendor, response.status, &response.headers, &response.body)
}

/// The [`Error`] for an answer with `status`, `headers` (names in lower
/// case, as the host gives them) and `body` from `vendor`.
pub fn from_status(vendor: &str, status: u16, headers: &[(String, String)], body: &[u8]) -> Error {
    let mut message = message(vendor, status, body);
    // The host adds `weft-attempts` when it retried before giving up.
    if let Some(attempts) = find_header(headers, "weft-attempts") {
        message.push_str(&format!(" (after {} attempts)", attempts.trim()));
    }
    match status {
        400 | 422 => Error::InvalidInput(message),
        401 => Error::Unauthorized(message),
        403 => Error::Forbidden(message),
        404 | 410 => Error::NotFound(message),
        408 | 500..=599 => Error::Transient(message),
        409 => Error::Conflict(message),
        429 => Error::rate_limited(retry_after(headers), message),
        _ => Error::Fatal(message),
    }
}

/// `"{vendor}: HTTP {status} {type} ({code}): {message} (param: {param})"`,
/// with the parts the body does not give left out. A body that is not a
/// readable error object is quoted (its first 200 characters).
pub fn message(vendor: &str, status: u16, body: &[u8]) -> String {
    let mut out = format!("{vendor}: HTTP {status}");
    match VendorError::parse(body) {
        Some(error) => {
            if let Some(kind) = &error.kind {
                out.push(' ');
                out.push_str(kind);
            }
            if let Some(code) =
                error.code.as_ref().filter(|code| Some(*code) != error.kind.as_ref())
            {
                out.push_str(" (");
                out.push_str(code);
                out.push(')');
            }
            if let Some(text) = &error.message {
                out.push_str(": ");
                out.push_str(text);
            }
            if let Some(param) = &error.param {
                out.push_str(" (param: ");
                out.push_str(param);
                out.push(')');
            }
        }
        None => {
            let body = String::from_utf8_lossy(body);
            let snippet: String = body
                .split_whitespace()
                .flat_map(|word| [" ", word])
                .skip(1)
                .flat_map(str::chars)
                .take(SNIPPET_CHARS)
                .collect();
            if let Some(reason) = reason(status) {
                out.push(' ');
                out.push_str(reason);
            }
            if !snippet.is_empty() {
                out.push_str(": ");
                out.push_str(&snippet);
            }
        }
    }
    out
}

/// The wait a `Retry-After` header asks for, when it is given in seconds.
///
/// An HTTP-date is not read: the host's retry logic reads it, and a guest
/// has no trustworthy clock to compare it with.
pub fn retry_after(headers: &[(String, String)]) -> Option<Duration> {
    let seconds: f64 = find_header(headers, "retry-after")?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn reason(status: u16) -> Option<&'static str> {
    Some(match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn statuses_map_to_cases() {
        let cases = [
            (400, "invalid-input"),
            (422, "invalid-input"),
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not-found"),
            (410, "not-found"),
            (408, "transient"),
            (409, "conflict"),
            (429, "rate-limited"),
            (500, "transient"),
            (503, "transient"),
            (599, "transient"),
            (402, "fatal"),
            (302, "fatal"),
        ];
        for (status, kind) in cases {
            assert_eq!(from_status("v", status, &[], b"").kind(), kind, "HTTP {status}");
        }
    }

    #[test]
    fn stripe_error_body_reads_type_code_message_and_param() {
        let body = br#"{"error": {"code": "resource_missing", "doc_url": "https://stripe.com/docs",
            "message": "No such customer: 'cus_x'", "param": "id", "type": "invalid_request_error"}}"#;
        assert_eq!(
            from_status("stripe", 404, &[], body),
            Error::not_found(
                "stripe: HTTP 404 invalid_request_error (resource_missing): \
                 No such customer: 'cus_x' (param: id)"
            )
        );
        let parsed = VendorError::parse(body).expect("stripe shape");
        assert_eq!(parsed.code.as_deref(), Some("resource_missing"));
    }

    #[test]
    fn rate_limited_reads_retry_after_seconds() {
        let error =
            from_status("v", 429, &headers(&[("retry-after", "3")]), b"{\"message\":\"slow\"}");
        assert_eq!(error, Error::rate_limited(Some(Duration::from_secs(3)), "v: HTTP 429: slow"));
        let date = headers(&[("Retry-After", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert_eq!(retry_after(&date), None);
        assert_eq!(
            retry_after(&headers(&[("Retry-After", " 1.5 ")])),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "-1")])), None);
        assert_eq!(retry_after(&[]), None);
    }

    #[test]
    fn common_body_shapes_give_a_message() {
        let shapes: [(&[u8], &str); 7] = [
            (br#"{"message": "Customer not found"}"#, "v: HTTP 404: Customer not found"),
            (br#"{"error": "bad token"}"#, "v: HTTP 404: bad token"),
            (
                br#"{"error": "invalid_grant", "error_description": "expired"}"#,
                "v: HTTP 404 invalid_grant: expired",
            ),
            (
                br#"{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                    "scimType": "uniqueness", "detail": "User exists", "status": "409"}"#,
                "v: HTTP 404 uniqueness: User exists",
            ),
            (br#"{"detail": "Not found."}"#, "v: HTTP 404: Not found."),
            (br#"{"errors": [{"message": "a"}, {"detail": "b"}]}"#, "v: HTTP 404: a; b"),
            (
                br#"{"message": {"email": ["is invalid"]}}"#,
                r#"v: HTTP 404: {"email":["is invalid"]}"#,
            ),
        ];
        for (body, expected) in shapes {
            assert_eq!(from_status("v", 404, &[], body).message(), expected);
        }
    }

    #[test]
    fn unreadable_bodies_are_quoted_briefly() {
        let html = format!("<html>\n  <body>Bad   gateway</body>{}</html>", "x".repeat(500));
        let message = message("acme", 502, html.as_bytes());
        assert!(
            message.starts_with("acme: HTTP 502 Bad Gateway: <html> <body>Bad gateway</body>xx")
        );
        assert!(message.len() < 260, "{message}");
        assert_eq!(super::message("acme", 500, b""), "acme: HTTP 500 Internal Server Error");
        assert_eq!(super::message("acme", 418, b""), "acme: HTTP 418");
    }
}
