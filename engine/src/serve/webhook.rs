//! Webhook signatures, checked before anything runs: Stripe's
//! `Stripe-Signature` scheme and a generic HMAC-SHA256 header.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::workflow::Verify;

type HmacSha256 = Hmac<Sha256>;

/// Why a delivery was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The signature header is absent.
    #[error("missing {0} header")]
    Missing(String),
    /// The header does not parse.
    #[error("malformed {header} header: {why}")]
    Malformed {
        /// The header.
        header: String,
        /// Why.
        why: String,
    },
    /// The signed timestamp is too far from now.
    #[error(
        "timestamp {timestamp} is {age_secs} s from now, outside the tolerance of {tolerance_secs} s"
    )]
    Stale {
        /// The timestamp sent.
        timestamp: i64,
        /// How far it is from now.
        age_secs: i64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// No signature matches.
    #[error("no signature matches the payload")]
    BadSignature,
}

/// A verified delivery: the signature that proved it, remembered to refuse
/// a replay of the same delivery, and the timestamp it signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The matching signature, hex.
    pub signature: String,
    /// The signed Unix timestamp, when the scheme signs one: a replay is
    /// refused as stale once it is past the tolerance, so the signature
    /// need be remembered only that long. Without one, a replay is
    /// possible at any time.
    pub timestamp: Option<i64>,
}

/// Checks a delivery. `header` looks a header up by (case-insensitive)
/// name; `now` is Unix seconds.
pub fn verify(
    scheme: &Verify,
    header: impl Fn(&str) -> Option<String>,
    body: &[u8],
    secret: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<Verified, Rejection> {
    match scheme {
        Verify::Stripe => {
            let value = header("stripe-signature")
                .ok_or_else(|| Rejection::Missing("Stripe-Signature".into()))?;
            verify_stripe(&value, body, secret, now, tolerance)
        }
        Verify::HmacSha256 { header: name, timestamp_header } => {
            let value = header(name).ok_or_else(|| Rejection::Missing(name.clone()))?;
            let timestamp = match timestamp_header {
                Some(ts_name) => {
                    let raw = header(ts_name).ok_or_else(|| Rejection::Missing(ts_name.clone()))?;
                    let ts: i64 = raw.trim().parse().map_err(|_| Rejection::Malformed {
                        header: ts_name.clone(),
                        why: format!("{raw:?} is not a Unix timestamp"),
                    })?;
                    check_age(ts, now, tolerance)?;
                    Some(ts)
                }
                None => None,
            };
            let hex_sig = value.trim().strip_prefix("sha256=").unwrap_or(value.trim());
            let sent = hex::decode(hex_sig).map_err(|_| Rejection::Malformed {
                header: name.clone(),
                why: "the signature is not hex".into(),
            })?;
            let mut mac = new_mac(secret);
            if let Some(ts) = timestamp {
                mac.update(format!("{ts}.").as_bytes());
            }
            mac.update(body);
            mac.verify_slice(&sent).map_err(|_| Rejection::BadSignature)?;
            Ok(Verified { signature: hex_sig.to_ascii_lowercase(), timestamp })
        }
    }
}

fn new_mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

fn check_age(timestamp: i64, now: i64, tolerance: Duration) -> Result<(), Rejection> {
    let age = now.saturating_sub(timestamp);
    if age.unsigned_abs() > tolerance.as_secs() {
        return Err(Rejection::Stale {
            timestamp,
            age_secs: age,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    Ok(())
}

/// Stripe's scheme: `t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`; a `v1` must be
/// the HMAC-SHA256 of `"{t}.{body}"` with the endpoint's signing secret.
fn verify_stripe(
    value: &str,
    body: &[u8],
    secret: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<Verified, Rejection> {
    let malformed =
        |why: &str| Rejection::Malformed { header: "Stripe-Signature".into(), why: why.into() };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in value.split(',') {
        let Some((k, v)) = part.trim().split_once('=') else { continue };
        match k {
            "t" => {
                timestamp =
                    Some(v.parse::<i64>().map_err(|_| malformed("t is not a Unix timestamp"))?)
            }
            "v1" => signatures.push(v.to_owned()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or_else(|| malformed("no t= timestamp"))?;
    if signatures.is_empty() {
        return Err(malformed("no v1= signature"));
    }
    check_age(timestamp, now, tolerance)?;
    for signature in signatures {
        let Ok(sent) = hex::decode(&signature) else { continue };
        let mut mac = new_mac(secret);
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        if mac.verify_slice(&sent).is_ok() {
            return Ok(Verified {
                signature: signature.to_ascii_lowercase(),
                timestamp: Some(timestamp),
            });
        }
    }
    Err(Rejection::BadSignature)
}

/// Signs like Stripe does, for tests and for `weft` users testing their
/// own endpoints.
pub fn stripe_signature(body: &[u8], secret: &[u8], timestamp: i64) -> String {
    let mut mac = new_mac(secret);
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("t={timestamp},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The hex HMAC-SHA256 of `body` (after `"{timestamp}."` when given).
pub fn hmac_signature(body: &[u8], secret: &[u8], timestamp: Option<i64>) -> String {
    let mut mac = new_mac(secret);
    if let Some(ts) = timestamp {
        mac.update(format!("{ts}.").as_bytes());
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const TOLERANCE: Duration = Duration::from_secs(300);

    fn headers(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
        move |name: &str| {
            pairs.iter().find(|(k, _)| *k == name.to_ascii_lowercase()).map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn a_stripe_signature_verifies_within_the_tolerance() {
        let body = br#"{"type":"customer.deleted"}"#;
        let sig = stripe_signature(body, SECRET, 1_700_000_000);
        let ok = verify(
            &Verify::Stripe,
            headers(&[("Stripe-Signature", sig.clone())]),
            body,
            SECRET,
            1_700_000_100,
            TOLERANCE,
        );
        assert!(ok.is_ok(), "{ok:?}");
        let stale = verify(
            &Verify::Stripe,
            headers(&[("Stripe-Signature", sig.clone())]),
            body,
            SECRET,
            1_700_000_400,
            TOLERANCE,
        );
        assert!(matches!(stale, Err(Rejection::Stale { .. })), "{stale:?}");
        let tampered = verify(
            &Verify::Stripe,
            headers(&[("Stripe-Signature", sig)]),
            b"{}",
            SECRET,
            1_700_000_100,
            TOLERANCE,
        );
        assert_eq!(tampered, Err(Rejection::BadSignature));
    }

    #[test]
    fn any_of_several_stripe_signatures_may_match() {
        let body = b"{}";
        let good = stripe_signature(body, SECRET, 10);
        let header = format!("{},v1={},v0=deadbeef", good.replace(",v1=", ",v1=00ff,v1="), "abcd");
        assert!(
            verify(
                &Verify::Stripe,
                headers(&[("stripe-signature", header)]),
                body,
                SECRET,
                20,
                TOLERANCE
            )
            .is_ok()
        );
    }

    #[test]
    fn a_missing_or_malformed_stripe_header_is_named() {
        let none = verify(&Verify::Stripe, headers(&[]), b"{}", SECRET, 0, TOLERANCE);
        assert_eq!(none, Err(Rejection::Missing("Stripe-Signature".into())));
        let bad = verify(
            &Verify::Stripe,
            headers(&[("Stripe-Signature", "v1=00".into())]),
            b"{}",
            SECRET,
            0,
            TOLERANCE,
        );
        assert!(matches!(bad, Err(Rejection::Malformed { .. })), "{bad:?}");
    }

    #[test]
    fn a_generic_hmac_verifies_with_or_without_prefix_and_timestamp() {
        let body = b"{\"event\":1}";
        let scheme = Verify::HmacSha256 { header: "X-Signature".into(), timestamp_header: None };
        let sig = hmac_signature(body, SECRET, None);
        assert!(
            verify(&scheme, headers(&[("x-signature", sig.clone())]), body, SECRET, 0, TOLERANCE)
                .is_ok()
        );
        assert!(
            verify(
                &scheme,
                headers(&[("x-signature", format!("sha256={sig}"))]),
                body,
                SECRET,
                0,
                TOLERANCE
            )
            .is_ok()
        );
        assert_eq!(
            verify(&scheme, headers(&[("x-signature", sig)]), b"{}", SECRET, 0, TOLERANCE),
            Err(Rejection::BadSignature)
        );

        let timed = Verify::HmacSha256 {
            header: "X-Signature".into(),
            timestamp_header: Some("X-Timestamp".into()),
        };
        let sig = hmac_signature(body, SECRET, Some(1000));
        let h = headers(&[("X-Signature", sig.clone()), ("X-Timestamp", "1000".into())]);
        assert!(verify(&timed, h, body, SECRET, 1010, TOLERANCE).is_ok());
        let h = headers(&[("X-Signature", sig), ("X-Timestamp", "1000".into())]);
        assert!(matches!(
            verify(&timed, h, body, SECRET, 5000, TOLERANCE),
            Err(Rejection::Stale { .. })
        ));
    }
}
