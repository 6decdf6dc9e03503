//! Webhook signature headers (`Stripe-Signature` and the generic HMAC):
//! any header, body and secret give a verdict without a panic; a delivery
//! is accepted only with the HMAC-SHA256 of its signed payload under the
//! secret, within the tolerance; and a correctly signed one is accepted.
//!
//! Input: a flags byte, then newline-separated: the signature header, the
//! timestamp header, the secret, and the body (the rest). In the headers,
//! `{t}` stands for the current time and `{sig}` for the right signature
//! at that time, so accepted deliveries are reached as well as refused ones.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use weft::serve::webhook::{Rejection, hmac_signature, stripe_signature, verify};
use weft::workflow::Verify;

const NOW: i64 = 1_700_000_000;
const TOLERANCE: Duration = Duration::from_secs(300);

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut fields = rest.splitn(4, |&b| b == b'\n');
    let signature = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let timestamp = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
    let secret = fields.next().unwrap_or_default();
    let body = fields.next().unwrap_or_default();

    let stripe = flags & 1 == 0;
    let timestamped = flags & 2 != 0;
    let scheme = if stripe {
        Verify::Stripe
    } else {
        Verify::HmacSha256 {
            header: "X-Signature".into(),
            timestamp_header: timestamped.then(|| "X-Timestamp".into()),
        }
    };
    let right =
        if stripe || timestamped { mac(secret, Some(NOW), body) } else { mac(secret, None, body) };
    let fill = |text: &str| text.replace("{t}", &NOW.to_string()).replace("{sig}", &right);
    let (signature, timestamp) = (fill(&signature), fill(&timestamp));
    let missing = flags & 4 != 0;
    let header = |name: &str| -> Option<String> {
        match name.to_ascii_lowercase().as_str() {
            "stripe-signature" | "x-signature" if !missing => Some(signature.clone()),
            "x-timestamp" => Some(timestamp.clone()),
            _ => None,
        }
    };
    if let Ok(verified) = verify(&scheme, header, body, secret, NOW, TOLERANCE) {
        let signed_at = match (stripe, timestamped) {
            (false, false) => {
                assert_eq!(verified.timestamp, None);
                None
            }
            _ => {
                let at = verified.timestamp.unwrap_or_else(|| panic!("no timestamp: {verified:?}"));
                assert!(NOW.abs_diff(at) <= TOLERANCE.as_secs(), "stale {at} accepted");
                Some(at)
            }
        };
        assert_eq!(verified.signature, mac(secret, signed_at, body), "accepted without the MAC");
    }

    // The right signature is accepted, whatever the body and secret.
    let canonical = if stripe {
        stripe_signature(body, secret, NOW)
    } else {
        hmac_signature(body, secret, timestamped.then_some(NOW))
    };
    let header = |name: &str| -> Option<String> {
        match name.to_ascii_lowercase().as_str() {
            "stripe-signature" | "x-signature" => Some(canonical.clone()),
            "x-timestamp" => Some(NOW.to_string()),
            _ => None,
        }
    };
    let verdict = verify(&scheme, header, body, secret, NOW, TOLERANCE);
    assert!(verdict.is_ok(), "a signed delivery was refused: {verdict:?}");
    let _: Option<Rejection> = verdict.err();
}

/// The lowercase hex HMAC-SHA256 of `"{at}."` (when given) and `body`,
/// computed here rather than by the code under test.
fn mac(secret: &[u8], at: Option<i64>, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    if let Some(at) = at {
        mac.update(format!("{at}.").as_bytes());
    }
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}
