//! Credentials: where a workflow says a secret lives, and a wrapper that keeps
//! the secret out of logs, errors, debug output and the run store.

use std::fmt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// Where a connection's credential comes from, as written in a workflow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// `env:NAME`: an environment variable of the weft process.
    Env(String),
    /// `file:PATH`: a file whose content (trimmed) is the secret.
    File(PathBuf),
}

/// Why a credential could not be had. Messages name the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The reference is not `env:NAME` or `file:PATH`.
    #[error("credentials must be \"env:NAME\" or \"file:PATH\", not {0:?}")]
    BadReference(String),
    /// The environment variable is not set.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// The file could not be read.
    // The cause is in the message and deliberately not a `source()`: a CLI
    // that prints the error chain would print it a second time.
    #[error("cannot read credential file {path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
    /// The secret is empty.
    #[error("credential from {0} is empty")]
    Empty(String),
}

impl CredentialSource {
    /// Parses `env:NAME` or `file:PATH`.
    pub fn parse(reference: &str) -> Result<Self, CredentialError> {
        if let Some(name) = reference.strip_prefix("env:").filter(|n| !n.is_empty()) {
            return Ok(CredentialSource::Env(name.to_owned()));
        }
        if let Some(path) = reference.strip_prefix("file:").filter(|p| !p.is_empty()) {
            return Ok(CredentialSource::File(PathBuf::from(path)));
        }
        // Never echo something that might be a pasted secret.
        let shown = if reference.len() > 8 {
            format!("{}…", &reference[..reference.floor_char_boundary(4)])
        } else {
            reference.to_owned()
        };
        Err(CredentialError::BadReference(shown))
    }

    /// Reads the secret now.
    pub fn resolve(&self) -> Result<Secret, CredentialError> {
        let value = match self {
            CredentialSource::Env(name) => {
                std::env::var(name).map_err(|_| CredentialError::MissingEnv(name.clone()))?
            }
            CredentialSource::File(path) => std::fs::read_to_string(path)
                .map_err(|cause| CredentialError::File { path: path.clone(), cause })?,
        };
        let value = value.trim().to_owned();
        if value.is_empty() {
            return Err(CredentialError::Empty(self.to_string()));
        }
        Ok(Secret(value))
    }
}

impl fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CredentialSource::Env(name) => write!(f, "env:{name}"),
            CredentialSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A secret value. `Debug` and `Display` print a redaction; the value is only
/// reachable through [`Secret::expose`], which the HTTP layer calls to build
/// the credential header.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Call only where the value must leave the process
    /// (a request header), never for logs, errors or storage.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A stable, non-reversible identity for this secret (first 12 hex digits
    /// of its SHA-256): enough to tell two keys apart in a rate limiter or a
    /// summary, useless for recovering the key.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        hex::encode(&digest[..6])
    }

    /// Whether the secret starts with `prefix` (Stripe tells live and test
    /// keys apart this way).
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted {}>)", self.fingerprint())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_env_and_file() {
        assert_eq!(
            CredentialSource::parse("env:STRIPE_KEY").ok(),
            Some(CredentialSource::Env("STRIPE_KEY".into()))
        );
        assert_eq!(
            CredentialSource::parse("file:/run/key").ok(),
            Some(CredentialSource::File("/run/key".into()))
        );
        assert!(CredentialSource::parse("env:").is_err());
    }

    #[test]
    fn a_bad_reference_does_not_echo_a_pasted_secret() {
        let err = CredentialSource::parse("sk_live_abcdefghijklmnop")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("abcdefghijklmnop"), "{err}");
        assert!(err.contains("env:NAME"), "{err}");
    }

    #[test]
    fn debug_and_display_redact_the_value() {
        let secret = Secret::new("sk_test_supersecret");
        assert!(!format!("{secret:?} {secret}").contains("supersecret"));
        assert_eq!(secret.fingerprint().len(), 12);
    }

    #[test]
    fn file_credentials_are_trimmed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("key");
        std::fs::write(&path, "sk_test_x\n")?;
        let secret = CredentialSource::File(path).resolve()?;
        assert_eq!(secret.expose(), "sk_test_x");
        Ok(())
    }
}
