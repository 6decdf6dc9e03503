//! Reading the API key a client presented, the way the vendors accept it:
//! `Authorization: Bearer <key>`, or HTTP Basic with the key as user name.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The credential found on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No usable `Authorization` header: absent, another scheme, or Basic
    /// credentials that are not base64.
    Missing,
    /// A key (possibly empty or wrong; checking it is the caller's job).
    Key(String),
}

/// Extracts the key from `Authorization: Bearer <key>` or
/// `Authorization: Basic base64(<key>:<anything>)`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Presented::Missing;
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return if rest.is_empty() { Presented::Missing } else { Presented::Key(rest.to_owned()) };
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = STANDARD.decode(rest) else {
            return Presented::Missing;
        };
        let Ok(decoded) = String::from_utf8(decoded) else {
            return Presented::Missing;
        };
        // The password is ignored: Stripe documents it as empty, and curl's
        // `-u key:` sends exactly that.
        let user = decoded.split_once(':').map_or(decoded.as_str(), |(user, _)| user);
        return if user.is_empty() { Presented::Missing } else { Presented::Key(user.to_owned()) };
    }
    Presented::Missing
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("valid header"));
        headers
    }

    #[test]
    fn bearer_and_basic_yield_the_same_key() {
        let basic = format!("Basic {}", STANDARD.encode("sk_test_abc:"));
        assert_eq!(
            presented_key(&with_authorization(&basic)),
            Presented::Key("sk_test_abc".into())
        );
        assert_eq!(
            presented_key(&with_authorization("Bearer sk_test_abc")),
            Presented::Key("sk_test_abc".into())
        );
    }

    #[test]
    fn basic_without_a_colon_is_the_key_alone() {
        let basic = format!("Basic {}", STANDARD.encode("sk_test_abc"));
        assert_eq!(
            presented_key(&with_authorization(&basic)),
            Presented::Key("sk_test_abc".into())
        );
    }

    #[test]
    fn other_schemes_and_garbage_count_as_no_key() {
        assert_eq!(presented_key(&HeaderMap::new()), Presented::Missing);
        assert_eq!(presented_key(&with_authorization("Token abc")), Presented::Missing);
        assert_eq!(presented_key(&with_authorization("Basic !!!")), Presented::Missing);
        assert_eq!(presented_key(&with_authorization("Bearer ")), Presented::Missing);
    }
}
