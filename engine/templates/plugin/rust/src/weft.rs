//! Helpers for a weft connector in Rust: typed errors, HTTP status to
//! error mapping, JSON and pagination. Written by `weft plugin new`; it is
//! yours to change. (Connectors inside the weft repository use the fuller
//! `weft-connector-sdk` instead.)
//!
//! In tests, [`send`] answers from [`fake::answer`] instead of the host.

use crate::bindings::weft::connector::{http, log, types};
pub use http::{HttpError, Method, Request, Response};
pub use types::{ConnectorError, Context, Page};

/// A connector operation's result.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// What a vendor's error body says, from the common shapes:
/// `{"error": {"message"}}`, `{"error": "..."}`, `{"message": "..."}`,
/// else the start of the body.
pub fn vendor_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_owned();
    };
    match &value["error"] {
        serde_json::Value::Object(error) => [&error.get("type"), &error.get("message")]
            .iter()
            .filter_map(|part| part.and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join(": "),
        serde_json::Value::String(error) => error.clone(),
        _ => ["message", "detail", "error_description"]
            .iter()
            .find_map(|key| value[*key].as_str().map(str::to_owned))
            .unwrap_or_else(|| value.to_string().chars().take(200).collect()),
    }
}

/// The typed error for a non-2xx answer, naming the vendor, the status and
/// what the vendor said: 400/422 invalid-input, 401 unauthorized, 403
/// forbidden, 404/410 not-found, 409 conflict, 429 rate-limited (with
/// Retry-After), 408 and 5xx transient, anything else fatal.
pub fn error_for_status(vendor: &str, response: &Response) -> ConnectorError {
    let message = format!("{vendor}: HTTP {}: {}", response.status, vendor_message(&response.body));
    match response.status {
        400 | 422 => ConnectorError::InvalidInput(message),
        401 => ConnectorError::Unauthorized(message),
        403 => ConnectorError::Forbidden(message),
        404 | 410 => ConnectorError::NotFound(message),
        409 => ConnectorError::Conflict(message),
        429 => ConnectorError::RateLimited(types::RateLimited {
            retry_after_ms: retry_after_ms(response),
            message,
        }),
        408 | 500..=599 => ConnectorError::Transient(message),
        _ => ConnectorError::Fatal(message),
    }
}

/// `Retry-After` in milliseconds, when it is a number of seconds.
pub fn retry_after_ms(response: &Response) -> Option<u64> {
    let (_, value) = response.headers.iter().find(|(name, _)| name == "retry-after")?;
    value.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(|s| (s * 1000.0) as u64)
}

/// `path` joined to the base URL, with `query` (`None` values left out).
pub fn url(ctx: &Context, path: &str, query: &[(&str, Option<String>)]) -> String {
    let pairs: Vec<String> = query
        .iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| format!("{}={}", encode(key), encode(v))))
        .collect();
    let mut url = format!("{}{path}", ctx.base_url);
    if !pairs.is_empty() {
        url.push('?');
        url.push_str(&pairs.join("&"));
    }
    url
}

/// `text` percent-encoded as a query value or one path segment.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends one request through the host (which adds the credential and
/// applies the connection's limits). No answer at all is a typed error; a
/// non-2xx answer is returned, for the caller to map.
pub fn send(request: Request) -> Result<Response> {
    #[cfg(not(test))]
    let answer = http::send(&request);
    #[cfg(test)]
    let answer = fake::send(&request);
    answer.map_err(|error| match error {
        HttpError::Timeout(m) => ConnectorError::Transient(format!("HTTP timeout: {m}")),
        HttpError::Connection(m) => ConnectorError::Transient(format!("HTTP connection: {m}")),
        HttpError::Denied(m) => ConnectorError::Fatal(format!("HTTP denied: {m}")),
        HttpError::InvalidRequest(m) => ConnectorError::Fatal(format!("HTTP invalid request: {m}")),
        HttpError::TooLarge(m) => ConnectorError::Fatal(format!("HTTP too large: {m}")),
    })
}

/// GETs `url` and decodes its JSON; a non-2xx answer is its typed error.
pub fn get_json(vendor: &str, url: String) -> Result<serde_json::Value> {
    let response = send(Request {
        method: Method::Get,
        url,
        headers: vec![("accept".into(), "application/json".into())],
        body: None,
        idempotent: true,
    })?;
    if !(200..=299).contains(&response.status) {
        return Err(error_for_status(vendor, &response));
    }
    serde_json::from_slice(&response.body)
        .map_err(|e| ConnectorError::Fatal(format!("{vendor}: the answer is not JSON: {e}")))
}

/// A page of `records`; `next_cursor` is `None` on the last page.
pub fn page(records: &[serde_json::Value], next_cursor: Option<String>) -> Page {
    Page { records: records.iter().map(serde_json::Value::to_string).collect(), next_cursor }
}

/// A log line for debugging (`--log weft=debug`).
pub fn debug(message: &str) {
    #[cfg(not(test))]
    log::log(log::Level::Debug, message);
    #[cfg(test)]
    let _ = (log::Level::Debug, message);
}

/// A native stand-in for `http.send`, for tests: answers from a table of
/// (method, URL) → (status, JSON) set per thread.
#[cfg(test)]
pub mod fake {
    use super::{HttpError, Method, Request, Response};
    use std::cell::RefCell;

    thread_local! {
        static ANSWERS: RefCell<Vec<(Method, String, u16, serde_json::Value)>> = const { RefCell::new(Vec::new()) };
    }

    /// Answers this thread's next requests from `table`.
    pub fn answer(table: Vec<(Method, &str, u16, serde_json::Value)>) {
        ANSWERS.with(|answers| {
            *answers.borrow_mut() =
                table.into_iter().map(|(m, url, s, body)| (m, url.to_owned(), s, body)).collect();
        });
    }

    pub(super) fn send(request: &Request) -> Result<Response, HttpError> {
        ANSWERS.with(|answers| {
            answers
                .borrow()
                .iter()
                .find(|(method, url, ..)| *method == request.method && *url == request.url)
                .map(|(_, _, status, body)| Response {
                    status: *status,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: body.to_string().into_bytes(),
                })
                .ok_or_else(|| HttpError::Denied(format!("no fake answer for {}", request.url)))
        })
    }
}
