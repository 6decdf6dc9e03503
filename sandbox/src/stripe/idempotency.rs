//! Stripe's idempotent requests: the first answer to a POST carrying an
//! `Idempotency-Key` is saved per API key and replayed for retries.
//!
//! As at Stripe, a saved answer is kept for 24 hours; the same key with
//! other parameters or on another endpoint is an `idempotency_error`; and
//! only requests that ran are saved: one refused for its parameters can be
//! retried, corrected, with the same key.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;

use super::error::ApiError;

/// How long Stripe keeps a key's answer.
pub(crate) const KEY_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Stripe's limit on a key's length.
pub(crate) const MAX_KEY_LENGTH: usize = 255;

/// A request as idempotency compares it: endpoint and parameters, in any
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    endpoint: String,
    params: u64,
}

impl Fingerprint {
    /// `endpoint` as `"POST /v1/customers"`; `pairs` as decoded from the form.
    pub fn new(endpoint: String, pairs: &[(String, String)]) -> Self {
        let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
        sorted.sort();
        // DefaultHasher::new() has fixed keys, so equal parameters hash
        // equally for the life of the process, which is all this needs.
        let mut hasher = DefaultHasher::new();
        sorted.hash(&mut hasher);
        Self { endpoint, params: hasher.finish() }
    }
}

/// An answer saved for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SavedResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

#[derive(Debug)]
struct Saved {
    fingerprint: Fingerprint,
    response: SavedResponse,
    saved_at: Instant,
}

/// Saved answers by (API key, idempotency key).
#[derive(Debug, Default)]
pub(crate) struct IdempotencyStore {
    saved: HashMap<(String, String), Saved>,
    /// Keys in the order saved, to expire them without scanning.
    expiry: VecDeque<(Instant, (String, String))>,
}

impl IdempotencyStore {
    /// The saved answer to replay for this key, `None` if the request
    /// should run, or the error for a key reused differently.
    pub fn check(
        &mut self,
        api_key: &str,
        key: &str,
        fingerprint: &Fingerprint,
        now: Instant,
    ) -> Result<Option<SavedResponse>, ApiError> {
        self.expire(now);
        let Some(saved) = self.saved.get(&(api_key.to_owned(), key.to_owned())) else {
            return Ok(None);
        };
        if saved.fingerprint.endpoint != fingerprint.endpoint {
            return Err(ApiError::idempotency(format!(
                "Keys for idempotent requests can only be used for the same endpoint they were \
                 first used for ('{}' vs '{}'). Try using a key other than '{key}' if you meant \
                 to execute a different request.",
                saved.fingerprint.endpoint, fingerprint.endpoint
            )));
        }
        if saved.fingerprint.params != fingerprint.params {
            return Err(ApiError::idempotency(format!(
                "Keys for idempotent requests can only be used with the same parameters they \
                 were first used with. Try using a key other than '{key}' if you meant to \
                 execute a different request."
            )));
        }
        Ok(Some(saved.response.clone()))
    }

    /// Saves the answer to a request that ran.
    pub fn save(
        &mut self,
        api_key: &str,
        key: &str,
        fingerprint: Fingerprint,
        response: SavedResponse,
        now: Instant,
    ) {
        let id = (api_key.to_owned(), key.to_owned());
        self.expiry.push_back((now, id.clone()));
        self.saved.insert(id, Saved { fingerprint, response, saved_at: now });
    }

    fn expire(&mut self, now: Instant) {
        while let Some((saved_at, _)) = self.expiry.front() {
            if now.saturating_duration_since(*saved_at) < KEY_LIFETIME {
                break;
            }
            let Some((saved_at, id)) = self.expiry.pop_front() else {
                break;
            };
            // Only if not saved again since (possible once it had expired).
            if self.saved.get(&id).is_some_and(|saved| saved.saved_at == saved_at) {
                self.saved.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn fingerprint(list: &[(&str, &str)]) -> Fingerprint {
        Fingerprint::new("POST /v1/customers".into(), &pairs(list))
    }

    fn ok(body: &'static str) -> SavedResponse {
        SavedResponse { status: StatusCode::OK, body: Bytes::from_static(body.as_bytes()) }
    }

    #[test]
    fn parameter_order_does_not_change_the_fingerprint() {
        assert_eq!(fingerprint(&[("a", "1"), ("b", "2")]), fingerprint(&[("b", "2"), ("a", "1")]));
        assert_ne!(fingerprint(&[("a", "1")]), fingerprint(&[("a", "2")]));
    }

    #[test]
    fn a_saved_answer_replays_for_the_same_request_only() {
        let now = Instant::now();
        let mut store = IdempotencyStore::default();
        let first = fingerprint(&[("email", "a@b.c")]);
        assert_eq!(store.check("sk", "k", &first, now).expect("fresh"), None);
        store.save("sk", "k", first.clone(), ok("{}"), now);
        assert_eq!(store.check("sk", "k", &first, now).expect("replay"), Some(ok("{}")));
        assert_eq!(store.check("sk_other", "k", &first, now).expect("other key"), None);
        let other = fingerprint(&[("email", "x@y.z")]);
        let error = store.check("sk", "k", &other, now).expect_err("mismatch");
        assert_eq!(error.kind, super::super::error::ErrorType::Idempotency);
        let elsewhere =
            Fingerprint::new("POST /v1/customers/cus_1".into(), &pairs(&[("email", "a@b.c")]));
        assert!(store.check("sk", "k", &elsewhere, now).is_err());
    }

    #[test]
    fn saved_answers_expire_after_24_hours() {
        let now = Instant::now();
        let mut store = IdempotencyStore::default();
        let request = fingerprint(&[]);
        store.save("sk", "k", request.clone(), ok("{}"), now);
        let later = now + KEY_LIFETIME;
        assert_eq!(store.check("sk", "k", &request, later).expect("expired"), None);
        assert!(store.saved.is_empty());
    }
}
