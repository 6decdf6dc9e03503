//! Who is asking: API tokens, the console's sessions and their CSRF
//! tokens, and a bound on failed sign-ins per client address.
//!
//! A token reads `weft_<id>_<secret>`: the id finds the record, and the
//! SHA-256 of the secret is compared with the stored one in constant time
//! (the store never holds the secret, so a copy of the store opens
//! nothing). A secret is 32 random bytes: no slow hash is needed to make
//! guessing hopeless. The console signs in with a token and gets a session
//! cookie (`HttpOnly`, `SameSite=Strict`, `Secure` and the `__Host-` prefix
//! under TLS); the store keeps only the cookie's SHA-256, with the token it
//! was opened with (revoking the token ends its sessions) and a CSRF token
//! that every state-changing form must carry.
//!
//! Nothing here logs a token, a cookie or a CSRF token, at any level.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::credentials::Secret;
use crate::store::{Role, RunStore, SessionRecord, StoreError, TokenRecord, now_ms};

/// What every token starts with, so a leaked one is recognisable (secret
/// scanners, logs).
pub const TOKEN_PREFIX: &str = "weft_";

/// How long a console session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's name over plain HTTP (loopback).
pub const SESSION_COOKIE: &str = "weft_session";

/// The session cookie's name under TLS: the `__Host-` prefix makes the
/// browser refuse it unless it is `Secure`, for this host only, path `/`.
pub const SECURE_SESSION_COOKIE: &str = "__Host-weft_session";

/// Who made a request, as far as the server knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: actions are recorded under it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The token's id.
    pub token_id: String,
    /// The session's CSRF token, when the caller came with a session.
    pub csrf: Option<String>,
    /// The SHA-256 of the session cookie, when the caller came with one.
    pub session: Option<String>,
}

impl Caller {
    /// A caller with no token record behind it (the server's own: the
    /// local CLI, an open server's user).
    pub fn with_role(name: &str, role: Role) -> Self {
        Caller { name: name.to_owned(), role, token_id: String::new(), csrf: None, session: None }
    }

    /// Whether the caller may do what `role` may.
    pub fn may(&self, role: Role) -> bool {
        self.role.allows(role)
    }
}

/// A token just made: the record to store, and the token text to show
/// once.
#[derive(Debug)]
pub struct IssuedToken {
    /// What the store keeps.
    pub record: TokenRecord,
    /// The whole token, `weft_<id>_<secret>`.
    pub token: Secret,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    // ThreadRng is a CSPRNG (ChaCha12) seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// 32 random bytes as URL-safe text: a secret nobody can guess.
pub fn random_text() -> String {
    url_safe(&random_bytes::<32>())
}

fn url_safe(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Makes a token named `name` with `role`.
pub fn issue(name: &str, role: Role, created_by: Option<String>) -> IssuedToken {
    let id = hex::encode(random_bytes::<8>());
    let secret = url_safe(&random_bytes::<32>());
    let record = TokenRecord {
        id: id.clone(),
        name: name.to_owned(),
        role,
        secret_sha256: sha256_hex(&secret),
        created_ms: now_ms(),
        created_by,
        revoked_ms: None,
    };
    IssuedToken { record, token: Secret::new(format!("{TOKEN_PREFIX}{id}_{secret}")) }
}

/// The id and secret of a token's text, if it has the shape of one.
pub fn split_token(text: &str) -> Option<(&str, &str)> {
    let rest = text.trim().strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let plain = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (plain(id, 32) && plain(secret, 128)).then_some((id, secret))
}

/// Equal in constant time (for equal lengths; lengths are not secret).
pub fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Why a token or session was not taken. Deliberately vague towards the
/// client: which part was wrong is nobody's business.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token, a malformed one, an unknown one, a wrong secret or a
    /// revoked token.
    #[error("the token is not valid (unknown, revoked or mistyped)")]
    Invalid,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The caller a token's text names, if it is a live token.
pub async fn check_token(store: &RunStore, text: &str) -> Result<Caller, AuthError> {
    let (id, secret) = split_token(text).ok_or(AuthError::Invalid)?;
    let record = store.token(id).await?;
    // A hash is computed whether or not the id exists, so an unknown id
    // and a wrong secret take the same time.
    let presented = sha256_hex(secret);
    let stored = record
        .as_ref()
        .map(|r| r.secret_sha256.as_str())
        .unwrap_or("0000000000000000000000000000000000000000000000000000000000000000");
    let matched = same(&presented, stored);
    match record {
        Some(record) if matched && record.is_active() => Ok(Caller {
            name: record.name,
            role: record.role,
            token_id: record.id,
            csrf: None,
            session: None,
        }),
        _ => Err(AuthError::Invalid),
    }
}

/// A session opened for `token`: the cookie's value (to set, never to
/// keep), the SHA-256 the store keys it by, and the record.
pub fn open_session(token: &TokenRecord) -> (Secret, String, SessionRecord) {
    let cookie = url_safe(&random_bytes::<32>());
    let hash = sha256_hex(&cookie);
    let now = now_ms();
    let record = SessionRecord {
        token_id: token.id.clone(),
        csrf: url_safe(&random_bytes::<32>()),
        created_ms: now,
        expires_ms: now + SESSION_LIFETIME.as_millis() as u64,
    };
    (Secret::new(cookie), hash, record)
}

/// The caller a session cookie's value names, if it is a live session.
pub async fn check_session(store: &RunStore, cookie: &str) -> Result<Caller, AuthError> {
    // A cookie is 43 characters of base64url; anything else is not ours.
    if cookie.is_empty() || cookie.len() > 128 {
        return Err(AuthError::Invalid);
    }
    let hash = sha256_hex(cookie);
    match store.live_session(&hash, now_ms()).await? {
        Some((session, token)) => Ok(Caller {
            name: token.name,
            role: token.role,
            token_id: token.id,
            csrf: Some(session.csrf),
            session: Some(hash),
        }),
        None => Err(AuthError::Invalid),
    }
}

/// The `Set-Cookie` value for a session (or, with `None`, one that ends
/// it).
pub fn session_cookie(value: Option<&Secret>, secure: bool) -> String {
    let name = if secure { SECURE_SESSION_COOKIE } else { SESSION_COOKIE };
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(value) => format!(
            "{name}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
            value.expose(),
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{name}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

/// The session cookie a request carries, if any.
pub fn session_from_headers(headers: &axum::http::HeaderMap, secure: bool) -> Option<String> {
    let name = if secure { SECURE_SESSION_COOKIE } else { SESSION_COOKIE };
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Failed sign-ins allowed per client address in a window.
pub const FAILURES_PER_WINDOW: u32 = 10;
/// The window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at most; beyond that, new addresses share one
/// window, so memory stays bounded whatever the number of addresses.
pub const TRACKED_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts failed sign-ins (a wrong token on the API or the sign-in form)
/// per client address and refuses an address that failed too often, for
/// the rest of its window. IPv6 addresses count per /64, what one host is
/// usually given.
#[derive(Debug)]
pub struct SignInLimiter {
    windows: Mutex<HashMap<IpAddr, Window>>,
    per_window: u32,
    window: Duration,
    capacity: usize,
}

impl Default for SignInLimiter {
    fn default() -> Self {
        SignInLimiter::new(FAILURES_PER_WINDOW, FAILURE_WINDOW, TRACKED_ADDRESSES)
    }
}

/// Where addresses beyond the tracked ones are counted together.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

fn client_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

impl SignInLimiter {
    /// A limiter allowing `per_window` failures per `window`, tracking at
    /// most `capacity` addresses.
    pub fn new(per_window: u32, window: Duration, capacity: usize) -> Self {
        SignInLimiter {
            windows: Mutex::new(HashMap::new()),
            per_window,
            window,
            capacity: capacity.max(1),
        }
    }

    fn key(&self, windows: &mut HashMap<IpAddr, Window>, addr: IpAddr, now: Instant) -> IpAddr {
        let key = client_key(addr);
        if windows.contains_key(&key) || windows.len() < self.capacity {
            return key;
        }
        windows.retain(|_, w| now.saturating_duration_since(w.started) < self.window);
        if windows.len() < self.capacity { key } else { OVERFLOW }
    }

    /// `Err(wait)` when `addr` has failed too often: how long until it
    /// may try again.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = self.key(&mut windows, addr, now);
        match windows.get(&key) {
            Some(w)
                if now.saturating_duration_since(w.started) < self.window
                    && w.failures >= self.per_window =>
            {
                Err(self
                    .window
                    .saturating_sub(now.saturating_duration_since(w.started))
                    .max(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `addr`.
    pub fn failed(&self, addr: IpAddr) {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = self.key(&mut windows, addr, now);
        let window = windows.entry(key).or_insert(Window { started: now, failures: 0 });
        if now.saturating_duration_since(window.started) >= self.window {
            *window = Window { started: now, failures: 0 };
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.windows.lock().map(|w| w.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_opens_its_caller_and_a_wrong_or_revoked_one_nothing()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let issued = issue("ops", Role::Operator, None);
        assert!(issued.token.expose().starts_with("weft_"));
        assert!(
            !issued
                .record
                .secret_sha256
                .contains(split_token(issued.token.expose()).map(|(_, s)| s).unwrap_or("?")),
            "the store keeps a hash"
        );
        store.create_token(&issued.record).await?;
        let caller = check_token(&store, issued.token.expose()).await?;
        assert_eq!((caller.name.as_str(), caller.role), ("ops", Role::Operator));
        let mut wrong = issued.token.expose().to_owned();
        wrong.pop();
        wrong.push('x');
        assert!(matches!(check_token(&store, &wrong).await, Err(AuthError::Invalid)));
        assert!(matches!(
            check_token(&store, "weft_0000000000000000_abc").await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(check_token(&store, "Bearer nonsense").await, Err(AuthError::Invalid)));
        store.revoke_token("ops").await?;
        assert!(matches!(
            check_token(&store, issued.token.expose()).await,
            Err(AuthError::Invalid)
        ));
        Ok(())
    }

    #[tokio::test]
    async fn a_session_opens_its_caller_until_its_token_is_revoked()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = RunStore::open(dir.path())?;
        let issued = issue("viewer", Role::Viewer, None);
        store.create_token(&issued.record).await?;
        let (cookie, hash, record) = open_session(&issued.record);
        store.create_session(&hash, &record).await?;
        let caller = check_session(&store, cookie.expose()).await?;
        assert_eq!(caller.csrf.as_deref(), Some(record.csrf.as_str()));
        assert!(check_session(&store, "forged").await.is_err());
        store.revoke_token("viewer").await?;
        assert!(check_session(&store, cookie.expose()).await.is_err());
        Ok(())
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_under_tls() {
        let value = Secret::new("abc");
        let plain = session_cookie(Some(&value), false);
        assert!(
            plain.starts_with("weft_session=abc;")
                && plain.contains("HttpOnly")
                && plain.contains("SameSite=Strict")
                && !plain.contains("Secure")
        );
        let secure = session_cookie(Some(&value), true);
        assert!(secure.starts_with("__Host-weft_session=abc;") && secure.ends_with("; Secure"));
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static("a=b; weft_session=xyz; c=d"),
        );
        assert_eq!(session_from_headers(&headers, false).as_deref(), Some("xyz"));
        assert_eq!(
            session_from_headers(&headers, true),
            None,
            "under TLS only the __Host- cookie counts"
        );
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address_in_bounded_memory() {
        let limiter = SignInLimiter::new(3, Duration::from_secs(60), 8);
        let one: IpAddr = "192.0.2.1".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        for _ in 0..3 {
            assert!(limiter.check(one).is_ok());
            limiter.failed(one);
        }
        assert!(limiter.check(one).is_err(), "the fourth try is refused");
        let other: IpAddr =
            "192.0.2.2".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        assert!(limiter.check(other).is_ok(), "another address is not");
        for i in 0..10_000u32 {
            limiter.failed(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        }
        assert!(limiter.tracked() <= 9, "bounded: {}", limiter.tracked());
        assert!(
            limiter.check(IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9))).is_err(),
            "addresses beyond the bound share one window"
        );
        let v6a: IpAddr = "2001:db8::1".parse().unwrap_or(one);
        let v6b: IpAddr = "2001:db8::2".parse().unwrap_or(one);
        assert_eq!(client_key(v6a), client_key(v6b), "one /64 is one client");
    }

    #[test]
    fn token_texts_are_split_only_when_well_formed() {
        assert_eq!(split_token("weft_abc_def"), Some(("abc", "def")));
        assert_eq!(split_token("weft_abc"), None);
        assert_eq!(split_token("token_abc_def"), None);
        assert_eq!(split_token("weft_a b_c"), None);
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
