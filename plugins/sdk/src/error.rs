//! The error a connector operation returns ([`Error`], one case per way
//! the engine can react to it), and turning a vendor's error answer (HTTP
//! status, headers, body) into one.
//!
//! [`from_response`] (or [`from_status`]) picks the case by HTTP status:
//!
//! | status        | case                                              |
//! | ------------- | ------------------------------------------------- |
//! | 400, 422      | [`Error::InvalidInput`]                           |
//! | 401           | [`Error::Unauthorized`]                           |
//! | 403           | [`Error::Forbidden`]                              |
//! | 404, 410      | [`Error::NotFound`]                               |
//! | 408           | [`Error::Transient`] (the vendor timed out)       |
//! | 409           | [`Error::Conflict`]                               |
//! | 429           | [`Error::RateLimited`], with `Retry-After` seconds |
//! | 500–599       | [`Error::Transient`]                              |
//! | anything else | [`Error::Fatal`]                                  |
//!
//! The message always names the vendor and the HTTP status, then what the
//! vendor said, read from the common error body shapes ([`VendorError`]):
//!
//! ```
//! use weft_connector_sdk::{error, Error};
//!
//! let body = br#"{"error": {"type": "invalid_request_error",
//!     "message": "No such customer: 'cus_x'", "param": "id"}}"#;
//! let mapped = error::from_status("stripe", 400, &[], body);
//! assert_eq!(
//!     mapped,
//!     Error::invalid_input("stripe: HTTP 400 invalid_request_error: No such customer: 'cus_x' (param: id)")
//! );
//! ```
//!
//! A connector with vendor-specific rules (Stripe's `Stripe-Should-Retry`
//! header, say) calls [`from_response`] and then adjusts the case.

use core::fmt;
use core::time::Duration;

use crate::wit::weft::connector0_1_0::types::{ConnectorError, RateLimited};

mod response;

pub use response::{VendorError, from_response, from_status, message, retry_after};

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Why a connector operation failed.
///
/// The engine acts on the case: it may retry [`Error::RateLimited`] and
/// [`Error::Transient`] and never retries the rest. Every case carries a
/// message for a human; name the vendor, the HTTP status and the field when
/// you know them ([`from_response`]
/// does this for HTTP answers).
///
/// This is a hand-written mirror of the WIT `connector-error` variant rather
/// than a re-export: the generated type formats itself with its `Debug`
/// output, and a retry delay reads better as a [`Duration`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The record or resource does not exist.
    NotFound(String),
    /// The write clashes with existing state (a unique key is taken).
    Conflict(String),
    /// The input is wrong; the message names the field.
    InvalidInput(String),
    /// The credential is missing, wrong or expired.
    Unauthorized(String),
    /// The credential is valid but may not do this.
    Forbidden(String),
    /// The vendor asked us to slow down.
    RateLimited {
        /// How long the vendor asked us to wait, when it said.
        retry_after: Option<Duration>,
        /// What the vendor said.
        message: String,
    },
    /// The connector or vendor does not offer this; the message says why.
    Unsupported(String),
    /// A failure that may pass if the call is tried again.
    Transient(String),
    /// Anything else; the message says what.
    Fatal(String),
}

impl Error {
    /// [`Error::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// [`Error::Conflict`].
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    /// [`Error::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// [`Error::Unauthorized`].
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::Unauthorized(message.into())
    }

    /// [`Error::Forbidden`].
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Forbidden(message.into())
    }

    /// [`Error::RateLimited`].
    pub fn rate_limited(retry_after: Option<Duration>, message: impl Into<String>) -> Self {
        Self::RateLimited { retry_after, message: message.into() }
    }

    /// [`Error::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::Unsupported(message.into())
    }

    /// [`Error::Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient(message.into())
    }

    /// [`Error::Fatal`].
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }

    /// The human message, whatever the case.
    pub fn message(&self) -> &str {
        match self {
            Self::NotFound(m)
            | Self::Conflict(m)
            | Self::InvalidInput(m)
            | Self::Unauthorized(m)
            | Self::Forbidden(m)
            | Self::Unsupported(m)
            | Self::Transient(m)
            | Self::Fatal(m)
            | Self::RateLimited { message: m, .. } => m,
        }
    }

    /// The case's name as the WIT spells it (`not-found`, `rate-limited`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not-found",
            Self::Conflict(_) => "conflict",
            Self::InvalidInput(_) => "invalid-input",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate-limited",
            Self::Unsupported(_) => "unsupported",
            Self::Transient(_) => "transient",
            Self::Fatal(_) => "fatal",
        }
    }

    /// Whether the engine may retry the operation ([`Error::RateLimited`]
    /// and [`Error::Transient`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())?;
        if let Self::RateLimited { retry_after: Some(wait), .. } = self {
            write!(f, " (retry after {} ms)", wait.as_millis())?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<Error> for ConnectorError {
    fn from(error: Error) -> Self {
        match error {
            Error::NotFound(m) => Self::NotFound(m),
            Error::Conflict(m) => Self::Conflict(m),
            Error::InvalidInput(m) => Self::InvalidInput(m),
            Error::Unauthorized(m) => Self::Unauthorized(m),
            Error::Forbidden(m) => Self::Forbidden(m),
            Error::RateLimited { retry_after, message } => Self::RateLimited(RateLimited {
                // A delay longer than u64 milliseconds is not a real answer;
                // saturating keeps the conversion total.
                retry_after_ms: retry_after
                    .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                message,
            }),
            Error::Unsupported(m) => Self::Unsupported(m),
            Error::Transient(m) => Self::Transient(m),
            Error::Fatal(m) => Self::Fatal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_case_and_the_wait() {
        let error = Error::rate_limited(Some(Duration::from_secs(2)), "slow down");
        assert_eq!(error.to_string(), "rate-limited: slow down (retry after 2000 ms)");
        assert_eq!(Error::not_found("x").to_string(), "not-found: x");
    }

    #[test]
    fn rate_limited_converts_to_milliseconds() {
        let wit: ConnectorError =
            Error::rate_limited(Some(Duration::from_millis(1500)), "m").into();
        assert_eq!(
            wit,
            ConnectorError::RateLimited(RateLimited {
                retry_after_ms: Some(1500),
                message: "m".into()
            })
        );
    }
}
