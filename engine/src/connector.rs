//! The connector contract as the host sees it: version-independent types that
//! every supported WIT version converts into, so host logic exists once.

use std::fmt;

use serde::Serialize;

/// An operation a connector offers on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    /// Read one page.
    List,
    /// Read one record by id.
    Get,
    /// Create or update one record.
    Upsert,
    /// Create or update many records in one call.
    UpsertBatch,
    /// Delete or archive one record.
    Remove,
}

impl Op {
    /// The name used in workflows and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Get => "get",
            Op::Upsert => "upsert",
            Op::UpsertBatch => "upsert-batch",
            Op::Remove => "remove",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the host adds the credential to a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "scheme", content = "header")]
pub enum AuthScheme {
    /// No credential.
    None,
    /// `Authorization: Bearer <credential>`.
    Bearer,
    /// HTTP Basic, credential as user, empty password.
    BasicKeyAsUser,
    /// The credential as the value of this header.
    Header(String),
}

/// Which requests a rate limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodClass {
    /// Every request.
    Any,
    /// GET and HEAD.
    Read,
    /// Everything but GET and HEAD.
    Write,
    /// GET only.
    Get,
    /// POST only.
    Post,
    /// PUT only.
    Put,
    /// PATCH only.
    Patch,
    /// DELETE only.
    Delete,
}

impl MethodClass {
    /// Every class, in the order workflows name them.
    pub const ALL: [MethodClass; 8] = [
        MethodClass::Any,
        MethodClass::Read,
        MethodClass::Write,
        MethodClass::Get,
        MethodClass::Post,
        MethodClass::Put,
        MethodClass::Patch,
        MethodClass::Delete,
    ];

    /// Its name in workflows (`rate_limits`), messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Any => "any",
            MethodClass::Read => "read",
            MethodClass::Write => "write",
            MethodClass::Get => "get",
            MethodClass::Post => "post",
            MethodClass::Put => "put",
            MethodClass::Patch => "patch",
            MethodClass::Delete => "delete",
        }
    }
}

/// A published vendor rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// The requests it counts.
    pub method_class: MethodClass,
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length in seconds.
    pub per_seconds: u32,
    /// Applies only to credentials with this prefix, when set.
    pub credential_prefix: Option<String>,
}

/// A setting a connection may give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Setting {
    /// Setting name.
    pub name: String,
    /// What it does.
    pub description: String,
    /// Whether it must be given.
    pub required: bool,
}

/// A resource a connector serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceSpec {
    /// Resource name.
    pub name: String,
    /// What the records are and what upsert matches on.
    pub description: String,
    /// Ops offered.
    pub ops: Vec<Op>,
    /// Ops that cannot be undone.
    pub irreversible: Vec<Op>,
    /// Largest page the vendor serves.
    pub max_page_size: u32,
    /// Page size when the workflow sets none.
    pub default_page_size: u32,
    /// The field that identifies a record.
    pub id_field: String,
}

impl ResourceSpec {
    /// Whether the resource offers `op`.
    pub fn offers(&self, op: Op) -> bool {
        self.ops.contains(&op)
    }

    /// Whether `op` cannot be undone on this resource.
    pub fn is_irreversible(&self, op: Op) -> bool {
        self.irreversible.contains(&op)
    }
}

/// What a connector says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Short name.
    pub name: String,
    /// Connector version.
    pub version: String,
    /// Vendor it talks to.
    pub vendor: String,
    /// One paragraph of description.
    pub description: String,
    /// Vendor API base URL.
    pub default_base_url: String,
    /// Hosts besides the base URL host the connector may ask for.
    pub extra_hosts: Vec<String>,
    /// Credential injection scheme.
    pub auth: AuthScheme,
    /// Resources served.
    pub resources: Vec<ResourceSpec>,
    /// Published rate limits.
    pub rate_limits: Vec<RateLimit>,
    /// Accepted settings.
    pub settings: Vec<Setting>,
}

impl Manifest {
    /// The resource named `name`, if served.
    pub fn resource(&self, name: &str) -> Option<&ResourceSpec> {
        self.resources.iter().find(|r| r.name == name)
    }
}

/// A typed failure reported by a connector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "message")]
pub enum ConnectorError {
    /// The record does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The write clashes with existing state.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input is wrong.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The credential is missing or wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credential may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The vendor asked to slow down.
    #[error("rate limited: {message}{}", retry_after_ms.map(|ms| format!(" (retry after {ms} ms)")).unwrap_or_default())]
    RateLimited {
        /// How long the vendor asked to wait.
        retry_after_ms: Option<u64>,
        /// What the vendor said.
        message: String,
    },
    /// Not offered.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// May pass on a retry.
    #[error("transient: {0}")]
    Transient(String),
    /// Anything else.
    #[error("{0}")]
    Fatal(String),
}

impl ConnectorError {
    /// Whether trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::RateLimited { .. } | ConnectorError::Transient(_))
    }

    /// The same error with its message passed through `f`.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        use ConnectorError as E;
        match self {
            E::NotFound(m) => E::NotFound(f(m)),
            E::Conflict(m) => E::Conflict(f(m)),
            E::InvalidInput(m) => E::InvalidInput(f(m)),
            E::Unauthorized(m) => E::Unauthorized(f(m)),
            E::Forbidden(m) => E::Forbidden(f(m)),
            E::RateLimited { retry_after_ms, message } => {
                E::RateLimited { retry_after_ms, message: f(message) }
            }
            E::Unsupported(m) => E::Unsupported(f(m)),
            E::Transient(m) => E::Transient(f(m)),
            E::Fatal(m) => E::Fatal(f(m)),
        }
    }
}

/// What the host tells a connector on every call.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// Base URL of the connection, without a trailing slash.
    pub base_url: String,
    /// Connection settings.
    pub settings: Vec<(String, String)>,
}

/// A request for one page.
#[derive(Debug, Clone)]
pub struct ListRequest {
    /// Resource to list.
    pub resource: String,
    /// Where to continue.
    pub cursor: Option<String>,
    /// Page size wanted.
    pub page_size: u32,
    /// Resource-specific filter, a JSON object as text.
    pub filter: Option<String>,
}

/// One page of records.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The records, each JSON object text.
    pub records: Vec<String>,
    /// Where the next page starts.
    pub next_cursor: Option<String>,
}

/// A request to write one record.
#[derive(Debug, Clone)]
pub struct UpsertRequest {
    /// Resource to write.
    pub resource: String,
    /// The desired record as JSON object text.
    pub record: String,
    /// Key unique to this write.
    pub idempotency_key: String,
}

/// One record in a batch upsert.
#[derive(Debug, Clone)]
pub struct BatchItem {
    /// The desired record as JSON object text.
    pub record: String,
    /// Key unique to this write.
    pub idempotency_key: String,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpsertAction {
    /// Created a record.
    Created,
    /// Changed a record.
    Updated,
    /// Nothing to change.
    Unchanged,
}

/// The result of one upsert.
#[derive(Debug, Clone)]
pub struct UpsertOutcome {
    /// The record after the write, JSON text.
    pub record: String,
    /// What was done.
    pub action: UpsertAction,
}

/// What a remove did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoveOutcome {
    /// The record was removed.
    Removed,
    /// There was nothing to remove.
    AlreadyAbsent,
}
