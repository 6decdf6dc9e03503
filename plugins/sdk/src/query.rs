//! Percent-encoding for query strings and path segments.
//!
//! ASCII letters, digits and `- . _ *` pass through; every other byte of the
//! UTF-8 text is percent-encoded (`~` too, which is harmless), and a space
//! becomes `%20`, never `+`: `%20` means a space to every decoder,
//! while `+` means a space only to form decoders. The same output is
//! therefore safe in a query string, in a form body and in a path segment.
//!
//! ```
//! use weft_connector_sdk::query;
//!
//! let mut url = String::from("https://api.stripe.com/v1/customers");
//! query::append(&mut url, "email", "jo+1@example.com");
//! query::append(&mut url, "limit", 2);
//! assert_eq!(url, "https://api.stripe.com/v1/customers?email=jo%2B1%40example.com&limit=2");
//!
//! assert_eq!(query::encode_component("a b/c"), "a%20b%2Fc");
//! ```

use core::fmt::Display;

/// `value` percent-encoded for use as one query key or value, one form key
/// or value, or one path segment (an id in `/v1/customers/{id}`).
pub fn encode_component(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_encoded(&mut out, value);
    out
}

/// Appends `value` to `out`, percent-encoded as in [`encode_component`].
pub fn push_encoded(out: &mut String, value: &str) {
    // form_urlencoded yields a space as a lone "+" chunk and a literal '+'
    // as "%2B", so swapping that one chunk gives RFC 3986 encoding.
    for chunk in form_urlencoded::byte_serialize(value.as_bytes()) {
        out.push_str(if chunk == "+" { "%20" } else { chunk });
    }
}

/// Appends `name=value` to `url`'s query string, starting it with `?` or
/// continuing it with `&`.
pub fn append(url: &mut String, name: &str, value: impl Display) {
    url.push(if url.contains('?') { '&' } else { '?' });
    push_encoded(url, name);
    url.push('=');
    push_encoded(url, &value.to_string());
}

/// `name=value` pairs joined with `&`, without a leading `?`.
///
/// ```
/// use weft_connector_sdk::query;
/// assert_eq!(query::build([("a", "1 2"), ("b[c]", "x")]), "a=1%202&b%5Bc%5D=x");
/// ```
pub fn build<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> String
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let mut out = String::new();
    for (name, value) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        push_encoded(&mut out, name.as_ref());
        out.push('=');
        push_encoded(&mut out, value.as_ref());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_component("AZaz09-._*"), "AZaz09-._*");
    }

    #[test]
    fn space_is_percent_20_and_plus_is_encoded() {
        assert_eq!(encode_component("a b+c"), "a%20b%2Bc");
    }

    #[test]
    fn reserved_and_non_ascii_are_encoded_as_utf8() {
        assert_eq!(encode_component("?&=#/é~"), "%3F%26%3D%23%2F%C3%A9%7E");
    }

    #[test]
    fn append_starts_then_continues_the_query() {
        let mut url = String::from("http://h/p");
        append(&mut url, "a", 1);
        append(&mut url, "b c", "d&e");
        assert_eq!(url, "http://h/p?a=1&b%20c=d%26e");
    }

    #[test]
    fn build_joins_pairs() {
        assert_eq!(build(Vec::<(&str, &str)>::new()), "");
        assert_eq!(build([("x", ""), ("y", "1")]), "x=&y=1");
    }
}
