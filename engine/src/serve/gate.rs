//! The gate every API and console request passes: the request must be
//! meant for this server (`Host`, `Origin`), and its caller known (a
//! bearer token, a console session, or, on loopback with no token in the
//! store, the machine's own user) and allowed by its role; a
//! state-changing request from a browser carries its session's CSRF token.
//!
//! Roles by route: reading (`GET`) needs a viewer, anything else an
//! operator, and anything under `/api/tokens` or `/tokens` an admin;
//! signing out needs only a session.
//!
//! A server with no token in its store and bound to loopback is *open*:
//! callers that pass the `Host` and `Origin` checks act as `local` (with
//! every role), as before tokens existed; its console forms carry a CSRF
//! token of the server's, which a page of another site cannot read. The
//! first token created closes it. A server bound elsewhere refuses to
//! start without a token.
//!
//! `weft runs …` on the same machine reaches a server that holds the
//! store with the token the server wrote into its address file (mode
//! 0600, in the state directory), which lives as long as the process and
//! is never stored.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::auth::{self, Caller, SignInLimiter};
use super::{API_BODY_LIMIT, Server, error};
use crate::credentials::Secret;
use crate::store::Role;

/// The name actions are recorded under when an open server is used
/// without a token.
pub const LOCAL_CALLER: &str = "local";

/// The name actions are recorded under when `weft runs …` on this machine
/// uses the address file's token.
pub const CLI_CALLER: &str = "cli";

/// The header an API call made with a session cookie carries its CSRF
/// token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The form field a console form carries its CSRF token in.
pub const CSRF_FIELD: &str = "csrf";

/// Who may come in, and how the server knows.
pub(super) struct Access {
    /// No token in the store and bound to loopback.
    open: AtomicBool,
    /// Whether the server is bound to loopback (an open server needs it).
    loopback: bool,
    /// The token of `weft runs …` on this machine.
    pub(super) local: Secret,
    /// The CSRF token of an open server's forms.
    open_csrf: String,
    /// Failed sign-ins per client address.
    pub(super) limiter: SignInLimiter,
    /// Cookies are `Secure` (the server speaks TLS).
    pub(super) secure: bool,
}

impl Access {
    pub(super) fn new(loopback: bool, has_tokens: bool, secure: bool) -> Self {
        Access {
            open: AtomicBool::new(loopback && !has_tokens),
            loopback,
            local: Secret::new(format!("{}{}", auth::TOKEN_PREFIX, auth::random_text())),
            open_csrf: auth::random_text(),
            limiter: SignInLimiter::default(),
            secure,
        }
    }

    /// Whether callers without a token are let in.
    pub(super) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A token was created or revoked: an open server closes once the store
    /// holds a token (and opens again on loopback when none is left).
    pub(super) fn tokens_changed(&self, has_tokens: bool) {
        self.open.store(self.loopback && !has_tokens, Ordering::Relaxed);
    }
}

/// Which side of the server a request is for: the API answers in JSON
/// (401 without a caller), the console in HTML (a redirect to sign in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Surface {
    Api,
    Console,
}

/// The role a request needs, by method and path.
fn needed(method: &Method, path: &str) -> Role {
    if path.starts_with("/api/tokens") || path.starts_with("/tokens") {
        Role::Admin
    } else if matches!(*method, Method::GET | Method::HEAD) || path == "/logout" {
        Role::Viewer
    } else {
        Role::Operator
    }
}

fn unauthorised(surface: Surface, path_and_query: &str, message: &str) -> Response {
    match surface {
        Surface::Api => {
            let mut response = error(StatusCode::UNAUTHORIZED, message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"weft\""),
            );
            response
        }
        Surface::Console => {
            let next =
                url::form_urlencoded::byte_serialize(path_and_query.as_bytes()).collect::<String>();
            Redirect::to(&format!("/login?next={next}")).into_response()
        }
    }
}

fn too_many(wait: std::time::Duration) -> Response {
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        format!("too many failed sign-ins from this address; try again in {} s", wait.as_secs()),
    );
    if let Ok(value) = HeaderValue::from_str(&wait.as_secs().to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The caller a request's credentials name; `Ok(None)` when it brings
/// none (or a session that ended).
async fn identify(
    server: &Server,
    addr: IpAddr,
    headers: &HeaderMap,
) -> Result<Option<Caller>, Response> {
    let access = &server.access;
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        if let Err(wait) = access.limiter.check(addr) {
            return Err(too_many(wait));
        }
        let text = value.to_str().unwrap_or("");
        let token = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be `Bearer <token>`",
            ));
        };
        if auth::same(token, access.local.expose()) {
            return Ok(Some(Caller::with_role(CLI_CALLER, Role::Admin)));
        }
        return match auth::check_token(server.executor.store(), token).await {
            Ok(caller) => Ok(Some(caller)),
            Err(auth::AuthError::Invalid) => {
                access.limiter.failed(addr);
                tracing::warn!(client = %addr, "API request with a token that is not valid");
                Err(error(
                    StatusCode::UNAUTHORIZED,
                    "the token is not valid (unknown, revoked or mistyped)",
                ))
            }
            Err(auth::AuthError::Store(e)) => {
                Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
            }
        };
    }
    if let Some(cookie) = auth::session_from_headers(headers, access.secure) {
        match auth::check_session(server.executor.store(), &cookie).await {
            Ok(caller) => return Ok(Some(caller)),
            Err(auth::AuthError::Invalid) => {}
            Err(auth::AuthError::Store(e)) => {
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
            }
        }
    }
    if access.is_open() {
        let mut caller = Caller::with_role(LOCAL_CALLER, Role::Admin);
        caller.csrf = Some(access.open_csrf.clone());
        return Ok(Some(caller));
    }
    Ok(None)
}

/// Reads a form's CSRF field, putting the body back for the handler.
async fn form_csrf(request: Request) -> Result<(Option<String>, Request), Response> {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, API_BODY_LIMIT).await.map_err(|_| {
        error(StatusCode::PAYLOAD_TOO_LARGE, format!("a form takes {API_BODY_LIMIT} bytes at most"))
    })?;
    let csrf = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == CSRF_FIELD)
        .map(|(_, v)| v.into_owned());
    Ok((csrf, Request::from_parts(parts, Body::from(bytes))))
}

async fn gate(
    server: Arc<Server>,
    addr: IpAddr,
    surface: Surface,
    request: Request,
    next: Next,
) -> Response {
    if let Err(refused) = server.hosts.admit(&request, surface == Surface::Console) {
        tracing::warn!(method = %request.method(), path = %request.uri().path(), status = refused.status().as_u16(), "request refused: not meant for this server");
        return refused;
    }
    if surface == Surface::Api
        && let Err(refused) = json_post(&request)
    {
        return refused;
    }
    let path_and_query = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let caller = match identify(&server, addr, request.headers()).await {
        Ok(Some(caller)) => caller,
        Ok(None) => {
            return unauthorised(
                surface,
                &path_and_query,
                "this server needs a token: `Authorization: Bearer <token>` (an admin makes one with `weft tokens create NAME --role viewer|operator|admin`)",
            );
        }
        Err(refused) => return refused,
    };
    let needed = needed(request.method(), request.uri().path());
    if !caller.may(needed) {
        tracing::info!(caller = %caller.name, role = caller.role.as_str(), path = %request.uri().path(), "request refused: role");
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "{} is a {} token; this needs {} (roles: viewer reads; operator also starts, resumes and cancels runs; admin also manages tokens)",
                caller.name,
                caller.role.as_str(),
                needed.as_str()
            ),
        );
    }
    let mut request = request;
    // A browser sends cookies by itself: a state-changing request that
    // relies on one (or a console form of an open server) must prove it
    // comes from a page of ours. The API's other callers send JSON, which
    // no cross-site form can.
    let relies_on_browser = surface == Surface::Console || caller.session.is_some();
    if relies_on_browser
        && !matches!(*request.method(), Method::GET | Method::HEAD)
        && let Some(expected) = caller.csrf.clone()
    {
        let header = request.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let presented = match header.map(str::to_owned) {
            Some(header) => Some(header),
            None if surface == Surface::Console => match form_csrf(request).await {
                Ok((field, back)) => {
                    request = back;
                    field
                }
                Err(refused) => return refused,
            },
            None => None,
        };
        if !presented.is_some_and(|p| auth::same(&p, &expected)) {
            tracing::warn!(caller = %caller.name, path = %path_and_query, "request refused: missing or wrong CSRF token");
            return error(
                StatusCode::FORBIDDEN,
                "this request lacks the CSRF token of your session: reload the page and try again",
            );
        }
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The API's gate.
pub(super) async fn api_gate(
    State(server): State<Arc<Server>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    gate(server, addr.ip(), Surface::Api, request, next).await
}

/// The console's gate.
pub(super) async fn console_gate(
    State(server): State<Arc<Server>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    gate(server, addr.ip(), Surface::Console, request, next).await
}

/// The gate of the sign-in page: the request must be meant for us.
pub(super) async fn host_gate(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    if let Err(refused) = server.hosts.admit(&request, true) {
        return refused;
    }
    next.run(request).await
}

/// The names the API answers to: the bound address, and the public URL.
#[derive(Debug, Clone)]
pub(super) struct Hosts {
    bound: SocketAddr,
    /// `https` when the server speaks TLS, else `http`.
    scheme: &'static str,
    /// Scheme, host (lower case) and port of the public URL.
    public: Option<(String, String, u16)>,
}

impl Hosts {
    pub(super) fn new(bound: SocketAddr, public: Option<&url::Url>, tls: bool) -> Self {
        let public = public.and_then(|u| {
            Some((
                u.scheme().to_owned(),
                u.host_str()?.to_ascii_lowercase(),
                u.port_or_known_default()?,
            ))
        });
        Hosts { bound, scheme: if tls { "https" } else { "http" }, public }
    }

    /// Whether `host` and `port` name this server: `scheme` is the
    /// origin's (`None` for a `Host` header, which carries none) and a
    /// missing port is the scheme's default. An IP address cannot be a
    /// DNS-rebinding name, so the bound IP (any, when bound to all) is
    /// accepted; of names, `localhost` on loopback and the public URL's host.
    pub(super) fn names_us(&self, scheme: Option<&str>, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        if let Some((public_scheme, public_host, public_port)) = &self.public
            && *public_host == host
            && scheme.is_none_or(|s| s == public_scheme)
            && port.is_none_or(|p| p == *public_port)
        {
            return true;
        }
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if scheme.is_some_and(|s| s != self.scheme)
            || port.unwrap_or(default_port) != self.bound.port()
        {
            return false;
        }
        let bound = self.bound.ip();
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => {
                bound.is_unspecified() || ip == bound || (ip.is_loopback() && bound.is_loopback())
            }
            Err(_) => host == "localhost" && (bound.is_loopback() || bound.is_unspecified()),
        }
    }

    pub(super) fn described(&self) -> String {
        match &self.public {
            Some((scheme, host, port)) => {
                format!("{}://{} or {scheme}://{host}:{port}", self.scheme, self.bound)
            }
            None => format!("{}://{}", self.scheme, self.bound),
        }
    }

    /// Refuses a request not meant for this server: another `Host`, or
    /// another site's `Origin`.
    #[expect(clippy::result_large_err, reason = "the refusal is the response")]
    pub(super) fn admit(&self, request: &Request, navigation: bool) -> Result<(), Response> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!("the request names no Host; this is {}", self.described()),
            ));
        };
        let named = host
            .parse::<axum::http::uri::Authority>()
            .is_ok_and(|a| self.names_us(None, a.host(), a.port_u16()));
        if !named {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this server ({}): weft answers only requests for its own address, as a page using DNS rebinding sends its own name; \
                     if weft is reached by another name, start it with --public-url",
                    self.described()
                ),
            ));
        }
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("(not text)");
            let ours = url::Url::parse(text).ok().is_some_and(|u| {
                u.host_str().is_some_and(|h| self.names_us(Some(u.scheme()), h, u.port()))
            });
            if !ours {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "a request from the web page at {text} is refused: this server takes requests from {} only",
                        self.described()
                    ),
                ));
            }
        }
        // A link from another site to a console page is a navigation the
        // browser marks cross-site, and harmless: it reads nothing and the
        // strict session cookie does not come with it.
        let harmless = navigation
            && matches!(*request.method(), Method::GET | Method::HEAD)
            && request.headers().get("sec-fetch-mode").is_some_and(|v| v == "navigate");
        if !harmless
            && request
                .headers()
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a request a browser marks as cross-site is refused",
            ));
        }
        Ok(())
    }
}

/// Refuses an API POST that is not JSON: a cross-site form cannot send
/// `Content-Type: application/json`, so a page that got past every other
/// check still cannot drive the API with a form.
#[expect(clippy::result_large_err, reason = "the refusal is the response")]
fn json_post(request: &Request) -> Result<(), Response> {
    if request.method() == Method::POST {
        let content_type =
            request.headers().get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("(not text)"));
        let json = content_type
            .and_then(|t| t.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "a POST to the API must be Content-Type: application/json (this one is {}); a web form cannot send that",
                    content_type.unwrap_or("none")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(bound: &str, public: Option<&str>) -> Hosts {
        let public = public.and_then(|p| url::Url::parse(p).ok());
        Hosts::new(
            bound.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1))),
            public.as_ref(),
            false,
        )
    }

    #[test]
    fn the_bound_address_and_localhost_name_a_loopback_server_and_other_names_do_not() {
        let h = hosts("127.0.0.1:8080", None);
        assert!(h.names_us(None, "127.0.0.1", Some(8080)));
        assert!(h.names_us(None, "LOCALHOST", Some(8080)));
        assert!(
            h.names_us(None, "[::1]", Some(8080)),
            "another loopback address of the same machine"
        );
        assert!(h.names_us(Some("http"), "localhost", Some(8080)));
        assert!(!h.names_us(None, "localhost", Some(8081)), "another port");
        assert!(!h.names_us(None, "localhost", None), "port 80");
        assert!(!h.names_us(None, "attacker.example", Some(8080)), "a rebinding name");
        assert!(!h.names_us(None, "10.0.0.1", Some(8080)), "not the bound address");
        assert!(!h.names_us(Some("https"), "localhost", Some(8080)), "another scheme");
        assert!(!h.names_us(None, "localhost.attacker.example", Some(8080)));
    }

    #[test]
    fn a_server_on_all_addresses_takes_any_ip_and_its_public_name() {
        let h = hosts("0.0.0.0:8080", Some("https://weft.example.com/base"));
        assert!(h.names_us(None, "10.1.2.3", Some(8080)), "an IP cannot be a rebinding name");
        assert!(h.names_us(None, "weft.example.com", None), "via the proxy");
        assert!(h.names_us(Some("https"), "weft.example.com", None));
        assert!(h.names_us(None, "WEFT.example.com", Some(443)));
        assert!(!h.names_us(Some("http"), "weft.example.com", None), "the public URL is https");
        assert!(!h.names_us(None, "weft.example.com", Some(8443)));
        assert!(!h.names_us(None, "example.com", Some(8080)));
    }

    #[test]
    fn a_tls_server_is_named_by_https_origins_only() {
        let h = Hosts::new(SocketAddr::from(([127, 0, 0, 1], 8443)), None, true);
        assert!(h.names_us(Some("https"), "localhost", Some(8443)));
        assert!(!h.names_us(Some("http"), "localhost", Some(8443)), "a plain-HTTP page");
        let h = Hosts::new(SocketAddr::from(([127, 0, 0, 1], 443)), None, true);
        assert!(h.names_us(None, "localhost", None), "443 is https's default port");
    }

    #[test]
    fn reading_needs_a_viewer_acting_an_operator_and_tokens_an_admin() {
        assert_eq!(needed(&Method::GET, "/api/runs"), Role::Viewer);
        assert_eq!(needed(&Method::GET, "/"), Role::Viewer);
        assert_eq!(needed(&Method::POST, "/api/runs/x/cancel"), Role::Operator);
        assert_eq!(needed(&Method::POST, "/workflows/w/start"), Role::Operator);
        assert_eq!(needed(&Method::POST, "/runs/bulk"), Role::Operator);
        assert_eq!(needed(&Method::GET, "/api/tokens"), Role::Admin);
        assert_eq!(needed(&Method::GET, "/tokens"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/tokens/x/revoke"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/logout"), Role::Viewer);
        assert_eq!(needed(&Method::DELETE, "/api/runs"), Role::Operator);
    }
}
