//! Who may use a `weft serve`: API tokens (a name, a role and the SHA-256
//! of the secret, never the secret) and the console's sessions (keyed by
//! the SHA-256 of the cookie, never the cookie). The server checks a
//! presented secret against the stored hash in constant time
//! (`serve::auth`); this module only keeps the records.

use serde::{Deserialize, Serialize};

use super::{Result, SledStore, StoreError, decode, encode, now_ms};

/// What a token may do. Each role may do what the one before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads runs, workflows and connections.
    Viewer,
    /// Also starts, dry-runs, re-runs, resumes and cancels runs.
    Operator,
    /// Also creates, lists and revokes tokens.
    Admin,
}

impl Role {
    /// Parses `viewer`, `operator` or `admin`.
    pub fn parse(text: &str) -> Option<Role> {
        match text.trim().to_ascii_lowercase().as_str() {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may do what `needed` may.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

/// An API token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The public part of the token, which finds its record.
    pub id: String,
    /// The name people know it by; actions taken with it are recorded
    /// under it.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Who made it: another token's name, or `cli`, `weft serve`.
    #[serde(default)]
    pub created_by: Option<String>,
    /// Unix milliseconds, once revoked: a revoked token opens nothing.
    #[serde(default)]
    pub revoked_ms: Option<u64>,
}

impl TokenRecord {
    /// Whether it still opens anything.
    pub fn is_active(&self) -> bool {
        self.revoked_ms.is_none()
    }
}

/// A console session as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The token it was opened with: revoking the token ends the session.
    pub token_id: String,
    /// The session's CSRF token, which every state-changing form carries.
    pub csrf: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds after which it opens nothing.
    pub expires_ms: u64,
}

/// Errors particular to tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A token of that name is active already.
    #[error("a token named {0:?} exists already; revoke it first or pick another name")]
    NameTaken(String),
    /// No active token has that name or id.
    #[error("no active token is named {0:?} (or has that id); `weft tokens list` shows them")]
    Unknown(String),
    /// A name that cannot be shown or typed safely.
    #[error("a token name is 1 to 64 letters, digits, '-', '_', '.' or '@'; {0:?} is not")]
    BadName(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether `name` is a token name (it appears in the console, logs and
/// history, so it is plain).
pub fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

impl SledStore {
    /// Records a new token. Refused when an active token has its name.
    pub async fn create_token(&self, token: &TokenRecord) -> Result<(), TokenError> {
        if !valid_token_name(&token.name) {
            return Err(TokenError::BadName(token.name.clone()));
        }
        let token = token.clone();
        self.owner
            .write(move |t| {
                for entry in t.tokens.iter() {
                    let (key, value) = entry?;
                    let existing: TokenRecord = decode(&key, &value)?;
                    if existing.is_active() && existing.name == token.name {
                        return Ok(Err(TokenError::NameTaken(token.name)));
                    }
                }
                t.tokens.insert(token.id.as_bytes(), encode(&token)?)?;
                Ok(Ok(()))
            })
            .await?
    }

    /// Every token, active and revoked, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>> {
        let entries = self
            .owner
            .call(|t| {
                t.tokens.iter().map(|e| e.map_err(StoreError::from)).collect::<Result<Vec<_>>>()
            })
            .await?;
        let mut tokens = entries
            .iter()
            .map(|(key, value)| decode::<TokenRecord>(key, value))
            .collect::<Result<Vec<_>>>()?;
        tokens.sort_by_key(|t| t.created_ms);
        Ok(tokens)
    }

    /// Whether any token is active.
    pub async fn has_active_tokens(&self) -> Result<bool> {
        Ok(self.tokens().await?.iter().any(TokenRecord::is_active))
    }

    /// The token with this id, if any (revoked ones too).
    pub async fn token(&self, id: &str) -> Result<Option<TokenRecord>> {
        let key = id.to_owned();
        match self.owner.call(move |t| Ok(t.tokens.get(key.as_bytes())?)).await? {
            Some(bytes) => Ok(Some(decode(id.as_bytes(), &bytes)?)),
            None => Ok(None),
        }
    }

    /// Revokes the active token with this name (or id), and ends its
    /// sessions; returns it.
    pub async fn revoke_token(&self, name_or_id: &str) -> Result<TokenRecord, TokenError> {
        let wanted = name_or_id.to_owned();
        self.owner
            .write(move |t| {
                let mut found = None;
                for entry in t.tokens.iter() {
                    let (key, value) = entry?;
                    let token: TokenRecord = decode(&key, &value)?;
                    if token.is_active() && (token.name == wanted || token.id == wanted) {
                        found = Some(token);
                        break;
                    }
                }
                let Some(mut token) = found else { return Ok(Err(TokenError::Unknown(wanted))) };
                token.revoked_ms = Some(now_ms());
                t.tokens.insert(token.id.as_bytes(), encode(&token)?)?;
                let mut ended = sled::Batch::default();
                for entry in t.sessions.iter() {
                    let (key, value) = entry?;
                    if decode::<SessionRecord>(&key, &value).is_ok_and(|s| s.token_id == token.id) {
                        ended.remove(key);
                    }
                }
                t.sessions.apply_batch(ended)?;
                Ok(Ok(token))
            })
            .await?
    }

    /// Records a session under the hash of its cookie.
    pub async fn create_session(&self, cookie_sha256: &str, session: &SessionRecord) -> Result<()> {
        let (key, value) = (cookie_sha256.to_owned(), encode(session)?);
        self.owner
            .write(move |t| {
                t.sessions.insert(key.as_bytes(), value)?;
                Ok(())
            })
            .await
    }

    /// The session under this cookie hash and its token, when both are
    /// live: not expired, the token not revoked. One trip to the store.
    pub async fn live_session(
        &self,
        cookie_sha256: &str,
        now_ms: u64,
    ) -> Result<Option<(SessionRecord, TokenRecord)>> {
        let key = cookie_sha256.to_owned();
        self.owner
            .call(move |t| {
                let Some(bytes) = t.sessions.get(key.as_bytes())? else { return Ok(None) };
                let session: SessionRecord = decode(key.as_bytes(), &bytes)?;
                if session.expires_ms <= now_ms {
                    return Ok(None);
                }
                let Some(bytes) = t.tokens.get(session.token_id.as_bytes())? else {
                    return Ok(None);
                };
                let token: TokenRecord = decode(session.token_id.as_bytes(), &bytes)?;
                Ok(token.is_active().then_some((session, token)))
            })
            .await
    }

    /// Ends a session.
    pub async fn end_session(&self, cookie_sha256: &str) -> Result<()> {
        let key = cookie_sha256.to_owned();
        self.owner
            .write(move |t| {
                t.sessions.remove(key.as_bytes())?;
                Ok(())
            })
            .await
    }

    /// Drops sessions that expired before `now_ms`; returns how many.
    pub async fn forget_expired_sessions(&self, now_ms: u64) -> Result<usize> {
        self.owner
            .write(move |t| {
                let mut gone = sled::Batch::default();
                let mut n = 0;
                for entry in t.sessions.iter() {
                    let (key, value) = entry?;
                    if decode::<SessionRecord>(&key, &value)
                        .map_or(true, |s| s.expires_ms <= now_ms)
                    {
                        gone.remove(key);
                        n += 1;
                    }
                }
                t.sessions.apply_batch(gone)?;
                Ok(n)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, name: &str, role: Role) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: name.into(),
            role,
            secret_sha256: "00".into(),
            created_ms: now_ms(),
            created_by: None,
            revoked_ms: None,
        }
    }

    #[tokio::test]
    async fn a_revoked_token_ends_its_sessions_and_frees_its_name()
    -> Result<(), Box<dyn std::error::Error>> {
        for backend in
            crate::store::testing::backends("a_revoked_token_ends_its_sessions_and_frees_its_name")
                .await?
        {
            eprintln!("a_revoked_token_ends_its_sessions_and_frees_its_name: on {}", backend.name);
            let store = backend.store.clone();
            assert!(!store.has_active_tokens().await?);
            store.create_token(&token("t1", "ops", Role::Operator)).await?;
            assert!(matches!(
                store.create_token(&token("t2", "ops", Role::Viewer)).await,
                Err(TokenError::NameTaken(_))
            ));
            assert!(matches!(
                store.create_token(&token("t3", "<script>", Role::Viewer)).await,
                Err(TokenError::BadName(_))
            ));
            let session = SessionRecord {
                token_id: "t1".into(),
                csrf: "c".into(),
                created_ms: 0,
                expires_ms: u64::MAX,
            };
            store.create_session("h1", &session).await?;
            assert_eq!(
                store.live_session("h1", now_ms()).await?.map(|(_, t)| t.name),
                Some("ops".into())
            );
            assert!(store.live_session("h1", u64::MAX).await?.is_none(), "expired");
            let revoked = store.revoke_token("ops").await?;
            assert!(revoked.revoked_ms.is_some());
            assert!(store.live_session("h1", now_ms()).await?.is_none());
            assert!(matches!(store.revoke_token("ops").await, Err(TokenError::Unknown(_))));
            store.create_token(&token("t2", "ops", Role::Viewer)).await?;
            assert_eq!(store.tokens().await?.len(), 2);
            assert!(!store.token("t1").await?.is_some_and(|t| t.is_active()));
        }
        Ok(())
    }

    #[tokio::test]
    async fn expired_sessions_are_forgotten() -> Result<(), Box<dyn std::error::Error>> {
        for backend in crate::store::testing::backends("expired_sessions_are_forgotten").await? {
            eprintln!("expired_sessions_are_forgotten: on {}", backend.name);
            let store = backend.store.clone();
            store
                .create_session(
                    "old",
                    &SessionRecord {
                        token_id: "t".into(),
                        csrf: "c".into(),
                        created_ms: 0,
                        expires_ms: 10,
                    },
                )
                .await?;
            store
                .create_session(
                    "new",
                    &SessionRecord {
                        token_id: "t".into(),
                        csrf: "c".into(),
                        created_ms: 0,
                        expires_ms: 1000,
                    },
                )
                .await?;
            assert_eq!(store.forget_expired_sessions(500).await?, 1);
        }
        Ok(())
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin.allows(Role::Operator) && Role::Operator.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Operator) && !Role::Operator.allows(Role::Admin));
        assert_eq!(Role::parse(" Admin "), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
