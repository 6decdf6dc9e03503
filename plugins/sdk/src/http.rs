//! Outgoing HTTP through the host's `http.send` import: the connector's only
//! way out of the sandbox.
//!
//! The host applies the connection's policy to every request: it allows only
//! the connection's hosts, adds the credential (the connector never sees
//! it), rate-limits, retries connection failures, 5xx and 429 (a POST or
//! PATCH only when marked [`idempotent`](RequestBuilder::idempotent)),
//! enforces a deadline and caps the response size. Any status comes back
//! as a [`Response`]; only "no response at all" is an [`Error`].
//!
//! ```no_run
//! use serde_json::json;
//! use weft_connector_sdk::{http, Context, Result};
//!
//! fn create(ctx: &Context, key: &str) -> Result<String> {
//!     let response = http::post(ctx.url("/v1/customers"))
//!         .form(&json!({"email": "jo@example.com", "metadata": {"plan": "pro"}}))
//!         .idempotency_key(key)
//!         .send()?
//!         .error_for_status("stripe")?;
//!     Ok(response.text()?.to_owned())
//! }
//! ```

use core::fmt::Display;

use serde::{Deserialize, Serialize};

use crate::wit::weft::connector0_1_0::http::HttpError;
use crate::{Error, Result, error, form, page, query};

pub use crate::wit::weft::connector0_1_0::http::{Method, Request, Response};

/// A request to `url` with `method`.
pub fn request(method: Method, url: impl Into<String>) -> RequestBuilder {
    RequestBuilder {
        request: Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            idempotent: false,
        },
        error: None,
    }
}

/// A GET request to `url`.
pub fn get(url: impl Into<String>) -> RequestBuilder {
    request(Method::Get, url)
}

/// A POST request to `url`.
pub fn post(url: impl Into<String>) -> RequestBuilder {
    request(Method::Post, url)
}

/// A PUT request to `url`.
pub fn put(url: impl Into<String>) -> RequestBuilder {
    request(Method::Put, url)
}

/// A PATCH request to `url`.
pub fn patch(url: impl Into<String>) -> RequestBuilder {
    request(Method::Patch, url)
}

/// A DELETE request to `url`.
pub fn delete(url: impl Into<String>) -> RequestBuilder {
    request(Method::Delete, url)
}

/// A HEAD request to `url`.
pub fn head(url: impl Into<String>) -> RequestBuilder {
    request(Method::Head, url)
}

/// A request being built; [`send`](RequestBuilder::send) sends it.
///
/// `url` is absolute ([`Context::url`](crate::Context::url) builds one) or
/// a path starting with `/`, which the host joins to the base URL.
#[derive(Debug, Clone)]
#[must_use = "a request does nothing until it is sent"]
pub struct RequestBuilder {
    request: Request,
    // A body that failed to encode; reported by `send` so that building
    // stays chainable.
    error: Option<Error>,
}

impl RequestBuilder {
    /// Adds a header. The credential is not yours to add: the host does.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.headers.push((name.into(), value.into()));
        self
    }

    /// Appends `name=value` to the URL's query string, percent-encoded.
    ///
    /// ```
    /// # use weft_connector_sdk::http;
    /// let request = http::get("https://h/v1/customers").query("limit", 100).query("email", "a+b@c.d");
    /// assert_eq!(request.url(), "https://h/v1/customers?limit=100&email=a%2Bb%40c.d");
    /// ```
    pub fn query(mut self, name: &str, value: impl Display) -> Self {
        query::append(&mut self.request.url, name, value);
        self
    }

    /// Sets a JSON body and `content-type: application/json`.
    pub fn json<T: Serialize + ?Sized>(self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => self.body(bytes, "application/json"),
            Err(e) => self.fail(Error::invalid_input(format!(
                "the request body cannot be encoded as JSON: {e}"
            ))),
        }
    }

    /// Sets a [`form`]-encoded body from a JSON object and
    /// `content-type: application/x-www-form-urlencoded`.
    pub fn form(self, object: &serde_json::Value) -> Self {
        match form::encode(object) {
            Ok(text) => self.body(text.into_bytes(), "application/x-www-form-urlencoded"),
            Err(e) => self.fail(e),
        }
    }

    /// Sets a raw body with its content type.
    pub fn body(mut self, bytes: Vec<u8>, content_type: &str) -> Self {
        self.request.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        self.request.headers.push(("content-type".to_string(), content_type.to_string()));
        self.request.body = Some(bytes);
        self
    }

    /// Asserts that sending this request twice has the effect of sending it
    /// once. The host retries a failed POST or PATCH only when this is set.
    /// GET, HEAD, PUT and DELETE are retried regardless.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.request.idempotent = idempotent;
        self
    }

    /// Sends `key` in the `Idempotency-Key` header (the name Stripe and
    /// many others read) and marks the request [`idempotent`](Self::idempotent).
    pub fn idempotency_key(self, key: &str) -> Self {
        self.header("Idempotency-Key", key).idempotent(true)
    }

    /// The URL as built so far.
    pub fn url(&self) -> &str {
        &self.request.url
    }

    /// Sends the request through the host and returns the response, whatever
    /// its status. Fails only when there is no response:
    ///
    /// | host error        | [`Error`]                                     |
    /// | ----------------- | --------------------------------------------- |
    /// | `denied`          | `Fatal("host not allowed: ...")`              |
    /// | `invalid-request` | `InvalidInput("invalid HTTP request: ...")`  |
    /// | `timeout`         | `Transient("HTTP request timed out: ...")`   |
    /// | `connection`      | `Transient("HTTP connection failed: ...")`   |
    /// | `too-large`       | `Fatal("HTTP response too large: ...")`      |
    ///
    /// A denied host is fatal, not forbidden: `forbidden` means the vendor
    /// refused the credential, while a denial is this workflow's own policy
    /// and no retry or new credential changes it.
    pub fn send(self) -> Result<Response> {
        if let Some(error) = self.error {
            return Err(error);
        }
        send(&self.request)
    }

    fn fail(mut self, error: Error) -> Self {
        self.error.get_or_insert(error);
        self
    }
}

#[cfg(target_arch = "wasm32")]
fn send(request: &Request) -> Result<Response> {
    crate::wit::weft::connector0_1_0::http::send(request).map_err(Error::from)
}

// Outside the host there is nothing to send through: a test's responder
// answers, or an error does (not the generated stub's panic).
#[cfg(not(target_arch = "wasm32"))]
fn send(request: &Request) -> Result<Response> {
    if let Some(answer) = testing::answer(request) {
        return answer;
    }
    Err(Error::fatal(format!(
        "cannot send {} {}: HTTP is only available inside the weft host \
         (natively, install a responder with `http::testing::respond_with`)",
        request.method.as_str(),
        request.url
    )))
}

#[cfg(not(target_arch = "wasm32"))]
pub mod testing {
    //! A stand-in for the host's `http.send` in native unit tests; not
    //! compiled for `wasm32`.
    //!
    //! It lets a connector's whole flow (which requests it sends, in which
    //! order, what it makes of each answer) run under `cargo test` without a
    //! host or a vendor.
    //!
    //! ```
    //! use weft_connector_sdk::http::{self, testing};
    //!
    //! let _responder = testing::respond_with(|request| {
    //!     assert_eq!(request.url, "https://api.example.com/users?limit=2");
    //!     Ok(testing::response(200, r#"{"users": []}"#))
    //! });
    //! let response = http::get("https://api.example.com/users").query("limit", 2).send()?;
    //! assert_eq!(response.status, 200);
    //! # Ok::<(), weft_connector_sdk::Error>(())
    //! ```

    use std::cell::RefCell;

    use super::{Request, Response};
    use crate::Result;

    type Responder = Box<dyn FnMut(&Request) -> Result<Response>>;

    thread_local! {
        static RESPONDER: RefCell<Option<Responder>> = const { RefCell::new(None) };
    }

    /// Answers every request this thread sends with `responder`, until the
    /// returned guard is dropped. Test threads do not share responders.
    pub fn respond_with(
        responder: impl FnMut(&Request) -> Result<Response> + 'static,
    ) -> Responding {
        RESPONDER.with(|slot| *slot.borrow_mut() = Some(Box::new(responder)));
        Responding { _private: () }
    }

    /// Keeps a responder installed; dropping it uninstalls it.
    #[derive(Debug)]
    #[must_use = "the responder is uninstalled when this guard is dropped"]
    pub struct Responding {
        _private: (),
    }

    impl Drop for Responding {
        fn drop(&mut self) {
            RESPONDER.with(|slot| slot.borrow_mut().take());
        }
    }

    /// The requests a [`script`] has answered, in order.
    pub type Sent = std::rc::Rc<RefCell<Vec<Request>>>;

    /// Answers the expected requests in order and records what was sent.
    /// Each step is `(method, path, status, body)`, with the path joined to
    /// `base`. It panics when a request is not the one expected, or when
    /// there are more requests than steps.
    ///
    /// ```
    /// use weft_connector_sdk::http::{self, Method, testing};
    ///
    /// let (_responder, sent) = testing::script("https://api.example.com", &[(Method::Get, "/users", 200, "[]")]);
    /// http::get("https://api.example.com/users").send()?;
    /// assert_eq!(sent.borrow().len(), 1);
    /// # Ok::<(), weft_connector_sdk::Error>(())
    /// ```
    pub fn script(base: &str, steps: &[(super::Method, &str, u16, &str)]) -> (Responding, Sent) {
        let mut steps: std::collections::VecDeque<(super::Method, String, u16, String)> = steps
            .iter()
            .map(|(method, path, status, body)| {
                (*method, format!("{base}{path}"), *status, (*body).to_string())
            })
            .collect();
        let sent = Sent::default();
        let log = std::rc::Rc::clone(&sent);
        let guard = respond_with(move |request| {
            log.borrow_mut().push(request.clone());
            let Some((method, url, status, body)) = steps.pop_front() else {
                panic!("unexpected request {:?} {}", request.method, request.url);
            };
            assert_eq!((request.method, request.url.as_str()), (method, url.as_str()));
            Ok(response(status, &body))
        });
        (guard, sent)
    }

    /// The context a host hands a call: the connection's base URL and
    /// settings, for calling a connector's methods in a native test.
    ///
    /// ```
    /// use weft_connector_sdk::http::testing;
    ///
    /// let ctx = testing::context("https://api.acme.example/v1", &[("region", "eu")]);
    /// assert_eq!(ctx.url("/users"), "https://api.acme.example/v1/users");
    /// assert_eq!(ctx.setting("region"), Some("eu"));
    /// ```
    pub fn context(base_url: &str, settings: &[(&str, &str)]) -> crate::Context {
        crate::Context {
            base_url: base_url.to_string(),
            settings: settings.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
        }
    }

    /// A response with `status`, a JSON content type and `body`.
    pub fn response(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: body.as_bytes().to_vec(),
        }
    }

    /// The request body as text (empty when there is none), for assertions.
    pub fn body_text(request: &Request) -> &str {
        request.body.as_deref().and_then(|body| core::str::from_utf8(body).ok()).unwrap_or("")
    }

    pub(super) fn answer(request: &Request) -> Option<Result<Response>> {
        RESPONDER.with(|slot| slot.borrow_mut().as_mut().map(|responder| responder(request)))
    }
}

impl From<HttpError> for Error {
    fn from(error: HttpError) -> Self {
        match error {
            HttpError::Denied(m) => Error::fatal(format!("host not allowed: {m}")),
            HttpError::InvalidRequest(m) => {
                Error::invalid_input(format!("invalid HTTP request: {m}"))
            }
            HttpError::Timeout(m) => Error::transient(format!("HTTP request timed out: {m}")),
            HttpError::Connection(m) => Error::transient(format!("HTTP connection failed: {m}")),
            HttpError::TooLarge(m) => Error::fatal(format!("HTTP response too large: {m}")),
        }
    }
}

impl Method {
    /// The method's name as HTTP spells it (`GET`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
        }
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

impl Response {
    /// The first value of header `name`, compared without regard to case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as UTF-8 text; [`Error::Fatal`] when it is not.
    pub fn text(&self) -> Result<&str> {
        core::str::from_utf8(&self.body).map_err(|e| {
            Error::fatal(format!("HTTP {}: the response body is not UTF-8: {e}", self.status))
        })
    }

    /// The body parsed as JSON into `T`, which may borrow from the body
    /// (`&str`, `&RawValue`, `Cow<str>`) so nothing is copied that is not
    /// needed.
    ///
    /// A body cut short is [`Error::Transient`] (a flaky connection, worth a
    /// retry); any other parse failure is [`Error::Fatal`].
    ///
    /// ```no_run
    /// use serde::Deserialize;
    /// use serde_json::value::RawValue;
    /// use weft_connector_sdk::{http, page};
    ///
    /// #[derive(Deserialize)]
    /// struct List<'a> {
    ///     #[serde(borrow)]
    ///     data: Vec<&'a RawValue>,
    ///     has_more: bool,
    /// }
    ///
    /// let response = http::get("https://api.stripe.com/v1/customers").send()?;
    /// let list: List<'_> = response.json()?;
    /// let records = page::raw_records(&list.data);
    /// # Ok::<(), weft_connector_sdk::Error>(())
    /// ```
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        page::parse(&self.body)
    }

    /// `Ok(self)` for a 2xx status, else the [`error::from_response`]
    /// mapping of the answer, naming `vendor` in the message.
    pub fn error_for_status(self, vendor: &str) -> Result<Self> {
        if self.is_success() { Ok(self) } else { Err(error::from_response(vendor, &self)) }
    }

    /// `Ok(self)` for a 2xx status, else `map(&self)`: the hook for vendors
    /// whose errors need more than the status table.
    ///
    /// ```no_run
    /// use weft_connector_sdk::{error, http, Error};
    ///
    /// let response = http::get("https://api.stripe.com/v1/customers")
    ///     .send()?
    ///     .error_for_status_with(|r| match error::from_response("stripe", r) {
    ///         Error::Fatal(m) if r.header("stripe-should-retry") == Some("true") => Error::transient(m),
    ///         other => other,
    ///     })?;
    /// # Ok::<(), weft_connector_sdk::Error>(())
    /// ```
    pub fn error_for_status_with(self, map: impl FnOnce(&Response) -> Error) -> Result<Self> {
        if self.is_success() { Ok(self) } else { Err(map(&self)) }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn form_body_sets_content_type_once() {
        let builder = post("http://h/x")
            .header("Content-Type", "text/plain")
            .form(&json!({"a": 1}))
            .idempotency_key("k1");
        assert_eq!(builder.request.body.as_deref(), Some(&b"a=1"[..]));
        assert_eq!(
            builder.request.headers,
            [
                ("content-type".to_string(), "application/x-www-form-urlencoded".to_string()),
                ("Idempotency-Key".to_string(), "k1".to_string()),
            ]
        );
        assert!(builder.request.idempotent);
    }

    #[test]
    fn a_body_that_cannot_encode_fails_at_send() {
        let error = post("http://h/x").form(&json!([1])).send();
        assert!(matches!(error, Err(Error::InvalidInput(_))));
    }

    #[test]
    fn host_errors_map_to_cases() {
        assert_eq!(
            Error::from(HttpError::Denied("203.0.113.7".into())),
            Error::fatal("host not allowed: 203.0.113.7")
        );
        assert!(Error::from(HttpError::Timeout(String::new())).is_retryable());
        assert!(Error::from(HttpError::Connection(String::new())).is_retryable());
        assert!(matches!(Error::from(HttpError::TooLarge(String::new())), Error::Fatal(_)));
        assert!(matches!(
            Error::from(HttpError::InvalidRequest(String::new())),
            Error::InvalidInput(_)
        ));
    }

    #[test]
    fn response_helpers() {
        let ok = response(200, &[("content-type", "application/json")], r#"{"id":"x"}"#);
        assert_eq!(ok.header("Content-Type"), Some("application/json"));
        assert!(ok.is_success());
        let value: serde_json::Value = ok.json().expect("json");
        assert_eq!(value["id"], "x");

        let missing = response(404, &[], r#"{"error":{"message":"gone"}}"#);
        assert_eq!(
            missing.error_for_status("acme").map(|_| ()),
            Err(Error::not_found("acme: HTTP 404: gone"))
        );
    }

    #[test]
    fn truncated_json_is_transient() {
        let cut = response(200, &[], r#"{"data": [{"id": "#);
        let parsed = cut.json::<serde_json::Value>();
        assert!(matches!(parsed, Err(Error::Transient(_))), "{parsed:?}");
        let wrong = response(200, &[], "<html>");
        assert!(matches!(wrong.json::<serde_json::Value>(), Err(Error::Fatal(_))));
    }
}
