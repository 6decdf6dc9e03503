//! The workflow file: TOML parsed into a checked model, with errors that point
//! at file, line and column with a caret under the offending text.
//!
//! Everything that can be checked before a run is checked here, once:
//! unknown keys, wrong types, expressions that do not compile, references to
//! steps that do not exist or come later, unknown connections and inputs,
//! bad cron expressions. [`Workflow::check_against`] adds what needs the
//! plugins' manifests: resources, ops, irreversible ops, settings.

mod diagnostic;
pub mod inputs;
pub mod trigger;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

pub use self::diagnostic::{Diagnostic, Diagnostics};
use self::diagnostic::{locate, string_content};
pub use self::inputs::{InputSpec, InputType};
pub use self::trigger::{CronTrigger, Overlap, Trigger, Verify, WebhookTrigger};
use crate::connector::{Manifest, MethodClass, Op};
use crate::expr::{Expr, Template};

/// Errors loading a workflow.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read workflow {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file has problems.
    #[error("{0}")]
    Invalid(Diagnostics),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    workflow: HeaderDef,
    #[serde(default)]
    inputs: BTreeMap<String, Spanned<InputDef>>,
    #[serde(default)]
    state: BTreeMap<String, Spanned<StateDef>>,
    trigger: Option<Spanned<TriggerDef>>,
    #[serde(default)]
    connections: BTreeMap<String, Spanned<ConnectionDef>>,
    #[serde(default)]
    step: Vec<Spanned<StepDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderDef {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputDef {
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    required: Option<bool>,
    default: Option<Spanned<toml::Value>>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDef {
    default: Option<toml::Value>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerDef {
    cron: Option<Spanned<String>>,
    overlap: Option<Spanned<String>>,
    #[serde(default)]
    catch_up: bool,
    timezone: Option<Spanned<String>>,
    jitter: Option<Spanned<String>>,
    webhook: Option<Spanned<WebhookDef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookDef {
    verify: Spanned<String>,
    secret: Spanned<String>,
    header: Option<Spanned<String>>,
    timestamp_header: Option<Spanned<String>>,
    tolerance: Option<Spanned<String>>,
    max_body_bytes: Option<Spanned<u64>>,
    event_id: Option<Spanned<String>>,
    dedupe_window: Option<Spanned<String>>,
}

/// `plugin = "name-or-path.wasm"`, or `plugin = { path = "….wasm", sha256
/// = "…" }` pinning the component's digest.
#[derive(Debug)]
enum PluginDef {
    Named(String),
    Pinned { path: String, sha256: String },
}

impl<'de> Deserialize<'de> for PluginDef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = PluginDef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a built-in connector name, a path ending in .wasm, or { path = \"….wasm\", sha256 = \"…\" }",
                )
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<PluginDef, E> {
                Ok(PluginDef::Named(text.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<PluginDef, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Pinned {
                    path: String,
                    sha256: String,
                }
                let pinned =
                    Pinned::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(PluginDef::Pinned { path: pinned.path, sha256: pinned.sha256 })
            }
        }
        deserializer.deserialize_any(Visit)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionDef {
    plugin: Spanned<PluginDef>,
    credentials: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    #[serde(default)]
    settings: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    allow_hosts: Vec<Spanned<String>>,
    rate_limit: Option<Spanned<String>>,
    #[serde(default)]
    rate_limits: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    allow_private_network: bool,
    max_requests_per_call: Option<Spanned<i64>>,
    sandbox: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDef {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    list: Option<Spanned<String>>,
    get: Option<Spanned<String>>,
    upsert: Option<Spanned<String>>,
    remove: Option<Spanned<String>>,
    sync: Option<Spanned<SyncDef>>,
    fail: Option<Spanned<String>>,
    page_size: Option<Spanned<u32>>,
    limit: Option<Spanned<u64>>,
    filter: Option<Spanned<toml::Table>>,
    output: Option<Spanned<String>>,
    key: Option<Spanned<toml::Value>>,
    record: Option<Spanned<toml::Value>>,
    when: Option<Spanned<String>>,
    for_each: Option<Spanned<String>>,
    concurrency: Option<Spanned<u32>>,
    map: Option<Spanned<String>>,
    retry: Option<Spanned<RetryDef>>,
    timeout: Option<Spanned<String>>,
    #[serde(default)]
    allow_irreversible: bool,
    state: Option<Spanned<toml::Table>>,
    create_only: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncDef {
    from: Spanned<String>,
    to: Spanned<String>,
    key: Option<Spanned<String>>,
    #[serde(default)]
    delete_missing: bool,
    filter: Option<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryDef {
    attempts: Spanned<u32>,
    backoff: Option<Spanned<String>>,
    max_backoff: Option<Spanned<String>>,
}

/// A source position, kept so later checks can point at the text.
pub type Span = Range<usize>;

/// A checked workflow.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The text, kept for the run record and for diagnostics.
    pub text: String,
    /// SHA-256 of the text.
    pub hash: String,
    /// Declared inputs, by name.
    pub inputs: Vec<InputSpec>,
    /// Declared state values (`[state.NAME]`), kept from run to run.
    pub state: Vec<StateSpec>,
    /// What starts it under `weft serve`.
    pub trigger: Trigger,
    /// Connections by name.
    pub connections: BTreeMap<String, Connection>,
    /// Steps in order.
    pub steps: Vec<Step>,
}

/// A value of the workflow's state, as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSpec {
    /// Its name (`$state.NAME`).
    pub name: String,
    /// What it reads before a step first sets it (or after a reset).
    pub default: serde_json::Value,
    /// Description.
    pub description: String,
}

impl Workflow {
    /// The state as a run reads it: each declared value, its stored value
    /// or else its default. A stored value no longer declared is left out.
    pub fn state_values(
        &self,
        stored: &BTreeMap<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        self.state
            .iter()
            .map(|spec| {
                let value = stored.get(&spec.name).cloned().unwrap_or_else(|| spec.default.clone());
                (spec.name.clone(), value)
            })
            .collect()
    }
}

/// Which plugin a connection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginRef {
    /// A connector shipped inside weft.
    Builtin(String),
    /// A `.wasm` file (resolved against the workflow's directory).
    File {
        /// Where it is.
        path: PathBuf,
        /// The SHA-256 the file must have (lower-case hex), when the
        /// connection pins it: a file that differs refuses the run.
        sha256: Option<String>,
    },
}

impl fmt::Display for PluginRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginRef::Builtin(name) => f.write_str(name),
            PluginRef::File { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

/// A connection to one vendor account.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Name in the workflow.
    pub name: String,
    /// The plugin.
    pub plugin: PluginRef,
    /// `env:NAME` or `file:PATH`.
    pub credentials: Option<String>,
    /// Overrides the plugin's default base URL.
    pub base_url: Option<String>,
    /// Settings handed to the plugin.
    pub settings: Vec<(String, String)>,
    /// Extra hosts the workflow grants.
    pub allow_hosts: Vec<String>,
    /// Rate limits that replace the plugin's published ones, per class.
    pub rate_limits: Vec<crate::limiter::LimitOverride>,
    /// Whether requests may reach private, link-local and other non-public
    /// addresses although the base URL is not on loopback.
    pub allow_private_network: bool,
    /// Requests one connector call may send; the host's default when `None`.
    pub max_requests_per_call: Option<u32>,
    /// The sandbox emulator that stands in for this connection in `weft run
    /// --sandbox` (`growpanel`); by default the one of the plugin's vendor.
    pub sandbox: Option<String>,
    /// Where the connection is defined.
    pub span: Span,
    plugin_span: Span,
}

/// `connection.resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Connection name.
    pub connection: String,
    /// Resource name.
    pub resource: String,
    span: Span,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.connection, self.resource)
    }
}

/// Where a sync's source records come from.
#[derive(Debug, Clone)]
pub enum SyncSource {
    /// A connection's resource, listed page by page (`from = "stripe.customers"`).
    Resource(Target),
    /// The records of an earlier list step, streamed page by page from the
    /// run store (`from = "steps.ID"`): a filtered or limited list, read once.
    Step {
        /// The list step's id.
        id: String,
        /// Where `from` is written, for messages.
        span: Span,
    },
}

impl SyncSource {
    /// The earlier step the records come from, when they come from one.
    pub fn step(&self) -> Option<&str> {
        match self {
            SyncSource::Step { id, .. } => Some(id),
            SyncSource::Resource(_) => None,
        }
    }

    /// The connection's resource the records come from, when they do.
    pub fn resource(&self) -> Option<&Target> {
        match self {
            SyncSource::Resource(target) => Some(target),
            SyncSource::Step { .. } => None,
        }
    }
}

impl fmt::Display for SyncSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncSource::Resource(target) => target.fmt(f),
            SyncSource::Step { id, .. } => write!(f, "steps.{id}"),
        }
    }
}

/// A `sync` step: make `to` look like `from`.
#[derive(Debug, Clone)]
pub struct SyncSpec {
    /// Where records come from.
    pub from: SyncSource,
    /// Filter for the `from` list.
    pub filter: Option<Template>,
    /// The key both sides are matched on, applied to the mapped source
    /// record and to each target record.
    pub key: Expr,
    /// Delete target records whose key no source record has.
    pub delete_missing: bool,
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Read every page (or up to `limit` records).
    List {
        /// Page size; the manifest's default when unset.
        page_size: Option<u32>,
        /// Stop after this many records.
        limit: Option<u64>,
        /// Resource-specific filter.
        filter: Option<Template>,
        /// Write records as JSON lines to this file (for a templated
        /// path, its text, relative to the workflow's directory).
        output: Option<PathBuf>,
        /// A templated `output` path (`out/export-${{ $run.started_at[:10] }}.jsonl`),
        /// rendered when the step starts, and the directory it is relative to.
        output_template: Option<(Template, PathBuf)>,
    },
    /// Read one record.
    Get {
        /// The record id.
        key: Template,
    },
    /// Create or update one record.
    Upsert {
        /// The desired record.
        record: Template,
    },
    /// Remove one record.
    Remove {
        /// The record id.
        key: Template,
    },
    /// Diff two resources and write the difference to the second.
    Sync(Box<SyncSpec>),
    /// Fail the run with this message (with `when`: when it holds).
    Fail {
        /// The message, a template.
        message: Template,
    },
}

impl Action {
    /// The op as named in workflows.
    pub fn name(&self) -> &'static str {
        match self {
            Action::List { .. } => "list",
            Action::Get { .. } => "get",
            Action::Upsert { .. } => "upsert",
            Action::Remove { .. } => "remove",
            Action::Sync(_) => "sync",
            Action::Fail { .. } => "fail",
        }
    }

    /// The connector op this action calls on the step's target (a sync
    /// calls several; its writes are upserts).
    pub fn op(&self) -> Op {
        match self {
            // A fail step calls nothing; it reads no more than a get.
            Action::List { .. } => Op::List,
            Action::Get { .. } | Action::Fail { .. } => Op::Get,
            Action::Upsert { .. } | Action::Sync(_) => Op::Upsert,
            Action::Remove { .. } => Op::Remove,
        }
    }

    /// Whether the action writes to a vendor.
    pub fn writes(&self) -> bool {
        matches!(self, Action::Upsert { .. } | Action::Remove { .. } | Action::Sync(_))
    }
}

/// What a for-each step iterates over.
#[derive(Debug, Clone)]
pub enum ForEach {
    /// The outputs of an expression over the context (an array output is
    /// spread into its elements).
    Expr(Expr),
    /// The records of an earlier list step, streamed page by page from the
    /// run store so memory stays flat, each optionally passed through `then`
    /// (`.steps.ID.records[] | select(.email != null)`).
    Records {
        /// The list step.
        step: String,
        /// Applied to each record; each output is an item.
        then: Option<Expr>,
        /// The whole expression, for messages.
        text: String,
    },
}

/// Retries of a failed call, on top of the host's HTTP retries: for errors
/// the connector marks as transient and for step timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRetry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// Wait before the second try; doubles each time, with full jitter.
    pub backoff: Duration,
    /// Longest wait between tries.
    pub max_backoff: Duration,
}

impl Default for StepRetry {
    fn default() -> Self {
        StepRetry {
            attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Most items in flight at once for a for-each or sync step.
pub const MAX_CONCURRENCY: u32 = 64;

/// One step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Id, unique in the workflow.
    pub id: String,
    /// Description.
    pub description: String,
    /// Connection name (for a sync, the target's).
    pub connection: String,
    /// Resource name (for a sync, the target's).
    pub resource: String,
    /// What to do.
    pub action: Action,
    /// Run only when this holds.
    pub when: Option<Expr>,
    /// Run once per item.
    pub for_each: Option<ForEach>,
    /// Items (for-each) or writes (sync) in flight at once.
    pub concurrency: u32,
    /// Reshapes each record: the records a list reads, the record a get
    /// returns, the source records of a sync.
    pub map: Option<Expr>,
    /// Step-level retries.
    pub retry: StepRetry,
    /// Deadline of each call (each item's, in a for-each).
    pub timeout: Option<Duration>,
    /// The workflow allows this step to run an irreversible op.
    pub allow_irreversible: bool,
    /// Fields (dotted paths into the record) sent only when the write
    /// creates the record: an upsert or a sync that updates an existing
    /// record leaves them out, so the vendor's copy keeps its first value.
    pub create_only: Vec<String>,
    /// The state values the step sets, each from a template: once when the
    /// step succeeds, or for a list step after each page (`$page`).
    pub state: Vec<(String, Template)>,
    /// Where the step is defined (its `[[step]]` header).
    pub span: Span,
    /// The step's text: from its header to the next step's.
    pub region: Span,
    target_span: Span,
}

impl Step {
    /// Leaves the step's `create_only` fields out of `record`, for a write
    /// that updates an existing record.
    pub fn drop_create_only(&self, record: &mut serde_json::Value) {
        fn remove(value: &mut serde_json::Value, path: &[&str]) {
            match path {
                [] => {}
                [last] => {
                    if let Some(object) = value.as_object_mut() {
                        object.remove(*last);
                    }
                }
                [first, rest @ ..] => {
                    if let Some(inner) = value.get_mut(*first) {
                        remove(inner, rest);
                    }
                }
            }
        }
        for path in &self.create_only {
            let parts: Vec<&str> = path.split('.').collect();
            remove(record, &parts);
        }
    }

    /// `connection.resource`.
    pub fn target(&self) -> String {
        format!("{}.{}", self.connection, self.resource)
    }

    /// What this step's expressions read of earlier steps' results, from
    /// the same reference analysis as the workflow's checks (text outside
    /// expressions, such as the description or a template's literal parts,
    /// reads nothing).
    pub fn reads(&self) -> StepReads {
        let mut reads = StepReads::default();
        if let Some(ForEach::Records { step, .. }) = &self.for_each {
            reads.records.insert(step.clone());
        }
        if let Action::Sync(sync) = &self.action
            && let Some(step) = sync.from.step()
        {
            reads.records.insert(step.to_owned());
        }
        for (_, expr, _) in step_expressions(self) {
            for used in crate::expr::root_uses(expr.text(), "steps") {
                match (used.name, used.field.as_deref()) {
                    (None, _) => reads.whole = true,
                    (Some((id, _)), Some("records")) => {
                        reads.records.insert(id);
                    }
                    (Some((id, _)), None) => {
                        reads.values.insert(id);
                    }
                    (Some(_), Some(_)) => {}
                }
            }
        }
        reads
    }
}

/// What a step reads of earlier steps' results (see [`Step::reads`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReads {
    /// `steps` is used other than as `steps.ID…` (`$steps | keys`,
    /// `.steps[$id]`, `getpath(["steps", …])`): any result may be read.
    pub whole: bool,
    /// Steps whose `.records` is read by name (`.steps.ID.records`,
    /// `$steps["ID"].records`), or streamed by a for-each.
    pub records: BTreeSet<String>,
    /// Steps whose result is used as a whole value (`.steps.ID | .records`,
    /// `$steps.ID` alone), which may include its records.
    pub values: BTreeSet<String>,
}

impl StepReads {
    /// Whether the step may read the records of step `id`: named, as part
    /// of its whole result, or through `steps` as a whole. What decides
    /// whether a list step's records are kept for later steps: it may keep
    /// records nobody reads, never drop ones someone does.
    pub fn may_read_records_of(&self, id: &str) -> bool {
        self.whole || self.records.contains(id) || self.values.contains(id)
    }

    /// Whether the step reads `.steps.ID.records` by name.
    pub fn names_records_of(&self, id: &str) -> bool {
        self.records.contains(id)
    }
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    problems: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn error(&mut self, span: Span, message: impl Into<String>) {
        self.problems.push(Diagnostic::at(self.file, self.text, span, message));
    }

    /// Compiles a whole-string expression (`when`, `for_each`, `map`, sync
    /// `key`), with or without `${{ }}` around it.
    fn expression(&mut self, what: &str, spanned: &Spanned<String>) -> Option<Expr> {
        let raw = spanned.get_ref();
        let (code, offset) = crate::expr::unwrap_braces(raw);
        let content = string_content(self.text, &spanned.span(), raw);
        match Expr::compile(code.trim()) {
            Ok(expr) => Some(expr),
            Err(e) => {
                let lead = code.len() - code.trim_start().len();
                let start = content.start + offset + lead + e.range.start;
                let end = content.start + offset + lead + e.range.end;
                let span = if content.len() == raw.len() {
                    start..end.max(start + 1)
                } else {
                    spanned.span()
                };
                self.error(span, format!("in `{what}`: {}{}", e.message, dashed_id_hint(code)));
                None
            }
        }
    }

    /// Compiles the `${{ }}` templates inside a value whose text lies in `span`.
    fn template(&mut self, what: &str, value: serde_json::Value, span: &Span) -> Option<Template> {
        match Template::compile(value) {
            Ok(t) => Some(t),
            Err(e) => {
                let at = locate(self.text, span, &e.expression);
                let start = if at == *span { span.start } else { at.start + e.error.range.start };
                let end = if at == *span {
                    span.end
                } else {
                    at.start + e.error.range.end.max(e.error.range.start + 1)
                };
                self.error(
                    start..end,
                    format!("in `{what}`: {}{}", e.error.message, dashed_id_hint(&e.expression)),
                );
                None
            }
        }
    }
}

/// jq reads `.steps.stripe-customer` as `.steps.stripe - customer`; when an
/// expression that failed to compile has that shape, say how to write it.
fn dashed_id_hint(code: &str) -> String {
    for root in [".steps.", "$steps."] {
        let mut rest = code;
        while let Some(at) = rest.find(root) {
            let after = &rest[at + root.len()..];
            let id: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect();
            if id.contains('-') && !id.ends_with('-') {
                return format!(
                    " (a step id with a dash is written .steps[\"{id}\"]; jq reads .steps.{id} as a subtraction)"
                );
            }
            rest = after;
        }
    }
    String::new()
}

fn to_json(value: toml::Value) -> serde_json::Value {
    match value {
        toml::Value::String(s) => serde_json::Value::String(s),
        toml::Value::Integer(i) => serde_json::Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        toml::Value::Boolean(b) => serde_json::Value::Bool(b),
        toml::Value::Datetime(d) => serde_json::Value::String(d.to_string()),
        toml::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(to_json).collect()),
        toml::Value::Table(t) => {
            serde_json::Value::Object(t.into_iter().map(|(k, v)| (k, to_json(v))).collect())
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("bad duration {text:?} ({e}); write it like \"30s\", \"5m\" or \"1h 30m\"")
    })
}

fn parse_target(
    check: &mut Checker<'_>,
    spanned: &Spanned<String>,
    connections: &BTreeMap<String, Connection>,
) -> Option<Target> {
    let span = spanned.span();
    let Some((connection, resource)) =
        spanned.get_ref().split_once('.').filter(|(c, r)| !c.is_empty() && !r.is_empty())
    else {
        check.error(
            span,
            "the target is written \"connection.resource\", for example \"stripe.customers\"",
        );
        return None;
    };
    if !connections.contains_key(connection) {
        let known: Vec<&str> = connections.keys().map(String::as_str).collect();
        check.error(
            span.clone(),
            format!(
                "unknown connection {connection:?}; defined: {}",
                if known.is_empty() { "none".into() } else { known.join(", ") }
            ),
        );
    }
    Some(Target { connection: connection.to_owned(), resource: resource.to_owned(), span })
}

/// A sync's `from`: `"steps.ID"` names an earlier list step whose records
/// are the source (unless a connection is called `steps`, which is then
/// ambiguous), anything else a connection's resource.
fn parse_sync_source(
    check: &mut Checker<'_>,
    spanned: &Spanned<String>,
    connections: &BTreeMap<String, Connection>,
    earlier: &[&Step],
) -> Option<SyncSource> {
    let span = spanned.span();
    let Some(id) = spanned.get_ref().strip_prefix("steps.") else {
        return parse_target(check, spanned, connections).map(SyncSource::Resource);
    };
    if connections.contains_key("steps") {
        check.error(
            span,
            "sync.from = \"steps.…\" is ambiguous here: a connection is called `steps`; rename it",
        );
        return None;
    }
    match earlier.iter().find(|s| s.id == id) {
        Some(step) if matches!(step.action, Action::List { .. }) => {
            Some(SyncSource::Step { id: id.to_owned(), span })
        }
        Some(step) => {
            check.error(
                span,
                format!(
                    "sync.from = \"steps.{id}\" takes a list step's records; step {id:?} is a {} step",
                    step.action.name()
                ),
            );
            None
        }
        None => {
            let lists: Vec<&str> = earlier
                .iter()
                .filter(|s| matches!(s.action, Action::List { .. }))
                .map(|s| s.id.as_str())
                .collect();
            check.error(
                span,
                format!(
                    "sync.from: no list step {id:?} above; list steps above: {}",
                    if lists.is_empty() { "none".into() } else { lists.join(", ") }
                ),
            );
            None
        }
    }
}

/// The step id a for-each streams from, when its expression is
/// `.steps.ID.records` (or `$steps.ID.records`), with or without `[]`,
/// optionally followed by `| rest`.
fn streamed_records(code: &str) -> Option<(String, Option<String>)> {
    let code = code.trim();
    let rest = code.strip_prefix(".steps.").or_else(|| code.strip_prefix("$steps."))?;
    let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))?;
    let (id, rest) = rest.split_at(len);
    let rest = rest.strip_prefix(".records")?;
    let rest = rest.strip_prefix("[]").unwrap_or(rest).trim_start();
    if rest.is_empty() {
        return Some((id.to_owned(), None));
    }
    let then = rest.strip_prefix('|')?.trim();
    (!then.is_empty()).then(|| (id.to_owned(), Some(then.to_owned())))
}

impl Workflow {
    /// Reads and checks a workflow file.
    pub fn load(path: &Path) -> Result<Workflow, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| LoadError::Read { path: path.display().to_string(), source })?;
        Workflow::parse(path, &text).map_err(LoadError::Invalid)
    }

    /// Parses and checks workflow text; `path` names it in diagnostics and
    /// anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Workflow, Diagnostics> {
        let file = path.display().to_string();
        let def: FileDef = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            Diagnostics(vec![Diagnostic::at(&file, text, span, e.message().trim().to_owned())])
        })?;
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut check = Checker { file: &file, text, problems: Vec::new() };

        let name = def.workflow.name.get_ref();
        if name.trim().is_empty() {
            check.error(def.workflow.name.span(), "the workflow name must not be empty");
        } else if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            check.error(
                def.workflow.name.span(),
                "a workflow name is letters, digits, - and _ (it is part of the webhook path)",
            );
        }

        let inputs = parse_inputs(&mut check, def.inputs);
        let state = parse_state(&mut check, def.state);
        let trigger = match def.trigger {
            Some(t) => parse_trigger(&mut check, t),
            None => Trigger::default(),
        };
        let connections = parse_connections(&mut check, def.connections, &base_dir);

        let mut steps: Vec<Step> = Vec::new();
        let mut seen = HashSet::new();
        let all_ids: Vec<String> =
            def.step.iter().map(|s| s.get_ref().id.get_ref().clone()).collect();
        for spanned in def.step {
            let span = spanned.span();
            let s = spanned.into_inner();
            let id = s.id.get_ref().clone();
            if id.is_empty()
                || !id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
            {
                check.error(s.id.span(), "a step id is letters, digits, - and _");
            } else if !seen.insert(id.clone()) {
                check.error(s.id.span(), format!("a step with id {id:?} is already defined above"));
            }
            if let Some(table) = &s.state {
                for name in table.get_ref().keys() {
                    if !state.iter().any(|spec| &spec.name == name) {
                        let declared: Vec<&str> = state.iter().map(|s| s.name.as_str()).collect();
                        check.error(
                            table.span(),
                            format!(
                                "step {id:?} sets state {name:?}, which the workflow does not declare; declare it as [state.{name}]{}",
                                if declared.is_empty() {
                                    String::new()
                                } else {
                                    format!(" (declared: {})", declared.join(", "))
                                }
                            ),
                        );
                    }
                }
            }
            let earlier: Vec<&Step> = steps.iter().collect();
            if let Some(step) = parse_step(&mut check, s, span, &connections, &base_dir, &earlier) {
                check_references(
                    &mut check,
                    &step,
                    &earlier,
                    &all_ids,
                    &inputs,
                    trigger.webhook.is_some(),
                    &state,
                );
                steps.push(step);
            }
        }
        if steps.is_empty() && check.problems.is_empty() {
            check.error(0..0, "the workflow has no steps; add a [[step]]");
        }
        let starts: Vec<usize> =
            steps.iter().map(|s| s.span.start).skip(1).chain([text.len()]).collect();
        for (step, end) in steps.iter_mut().zip(starts) {
            step.region = step.span.start..end.max(step.span.start);
        }

        if !check.problems.is_empty() {
            return Err(Diagnostics(check.problems));
        }
        Ok(Workflow {
            name: def.workflow.name.into_inner(),
            description: def.workflow.description,
            path: path.to_path_buf(),
            text: text.to_owned(),
            hash: hex::encode(Sha256::digest(text.as_bytes())),
            inputs,
            state,
            trigger,
            connections,
            steps,
        })
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// Checks the workflow against its plugins' manifests: resources exist,
    /// ops are offered, irreversible ops are allowed, settings are given,
    /// page sizes fit. `manifests` maps connection name to manifest.
    pub fn check_against(&self, manifests: &BTreeMap<String, Manifest>) -> Result<(), Diagnostics> {
        let file = self.path.display().to_string();
        let mut check = Checker { file: &file, text: &self.text, problems: Vec::new() };
        for connection in self.connections.values() {
            let Some(manifest) = manifests.get(&connection.name) else { continue };
            for setting in manifest.settings.iter().filter(|s| s.required) {
                if !connection.settings.iter().any(|(k, _)| k == &setting.name) {
                    check.error(
                        connection.span.clone(),
                        format!(
                            "connection {:?} must set settings.{} ({})",
                            connection.name, setting.name, setting.description
                        ),
                    );
                }
            }
            for (key, _) in &connection.settings {
                if !manifest.settings.iter().any(|s| &s.name == key) {
                    let known: Vec<&str> =
                        manifest.settings.iter().map(|s| s.name.as_str()).collect();
                    check.error(
                        connection.span.clone(),
                        format!(
                            "plugin {} has no setting {key:?}; it accepts: {}",
                            manifest.name,
                            if known.is_empty() { "none".into() } else { known.join(", ") }
                        ),
                    );
                }
            }
            if connection.credentials.is_none()
                && manifest.auth != crate::connector::AuthScheme::None
            {
                check.error(
                    connection.plugin_span.clone(),
                    format!(
                        "connection {:?} needs credentials = \"env:NAME\" or \"file:PATH\"",
                        connection.name
                    ),
                );
            }
        }
        for step in &self.steps {
            let mut needs: Vec<(String, String, Op, Span)> = Vec::new();
            match &step.action {
                Action::Sync(sync) => {
                    if let SyncSource::Resource(from) = &sync.from {
                        needs.push((
                            from.connection.clone(),
                            from.resource.clone(),
                            Op::List,
                            from.span.clone(),
                        ));
                    }
                    needs.push((
                        step.connection.clone(),
                        step.resource.clone(),
                        Op::List,
                        step.target_span.clone(),
                    ));
                    needs.push((
                        step.connection.clone(),
                        step.resource.clone(),
                        Op::Upsert,
                        step.target_span.clone(),
                    ));
                    if sync.delete_missing {
                        needs.push((
                            step.connection.clone(),
                            step.resource.clone(),
                            Op::Remove,
                            step.target_span.clone(),
                        ));
                    }
                }
                action => needs.push((
                    step.connection.clone(),
                    step.resource.clone(),
                    action.op(),
                    step.target_span.clone(),
                )),
            }
            for (connection, resource_name, op, span) in needs {
                let Some(manifest) = manifests.get(&connection) else { continue };
                let target = format!("{connection}.{resource_name}");
                let Some(resource) = manifest.resource(&resource_name) else {
                    let known: Vec<&str> =
                        manifest.resources.iter().map(|r| r.name.as_str()).collect();
                    check.error(
                        span,
                        format!(
                            "plugin {} has no resource {resource_name:?}; it serves: {}",
                            manifest.name,
                            known.join(", ")
                        ),
                    );
                    continue;
                };
                if !resource.offers(op) {
                    let offered: Vec<&str> = resource.ops.iter().map(|o| o.as_str()).collect();
                    check.error(
                        span.clone(),
                        format!("{target} does not offer {op}; it offers: {}", offered.join(", ")),
                    );
                }
                if resource.is_irreversible(op) && !step.allow_irreversible {
                    let what = if matches!(step.action, Action::Sync(_)) {
                        format!("delete_missing runs {op} on {target}, which")
                    } else {
                        format!("{op} on {target}")
                    };
                    check.error(span.clone(), format!("{what} cannot be undone; set allow_irreversible = true on step {:?} to allow it", step.id));
                }
                if let Action::List { page_size: Some(size), .. } = &step.action
                    && *size > resource.max_page_size
                {
                    check.error(
                        step.span.clone(),
                        format!(
                            "page_size {size} is above {target}'s maximum of {}",
                            resource.max_page_size
                        ),
                    );
                }
            }
        }
        if check.problems.is_empty() { Ok(()) } else { Err(Diagnostics(check.problems)) }
    }
}

fn parse_inputs(
    check: &mut Checker<'_>,
    defs: BTreeMap<String, Spanned<InputDef>>,
) -> Vec<InputSpec> {
    let mut inputs = Vec::new();
    for (name, spanned) in defs {
        let span = spanned.span();
        let def = spanned.into_inner();
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            check.error(span.clone(), format!("input name {name:?} must be letters, digits and _ so expressions can say .inputs.{name}"));
        }
        let kind = match &def.kind {
            None => InputType::Any,
            Some(k) => {
                match InputType::parse(k.get_ref()) {
                    Some(kind) => kind,
                    None => {
                        check.error(k.span(), "an input type is string, integer, number, boolean, object, array or any");
                        continue;
                    }
                }
            }
        };
        let default = def.default.map(|d| (d.span(), to_json(d.into_inner())));
        if let Some((default_span, value)) = &default
            && !kind.admits(value)
        {
            check.error(
                default_span.clone(),
                format!("the default of input {name} is not of type {}", kind.as_str()),
            );
        }
        let required = def.required.unwrap_or(default.is_none());
        if required && default.is_some() {
            check.error(
                span,
                format!("input {name} is required and has a default; drop one of them"),
            );
        }
        inputs.push(InputSpec {
            name,
            kind,
            required,
            default: default.map(|(_, v)| v),
            description: def.description,
        });
    }
    inputs
}

fn parse_state(
    check: &mut Checker<'_>,
    defs: BTreeMap<String, Spanned<StateDef>>,
) -> Vec<StateSpec> {
    let mut state = Vec::new();
    for (name, spanned) in defs {
        let span = spanned.span();
        let def = spanned.into_inner();
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            check.error(
                span,
                format!("state name {name:?} must be letters, digits and _ so expressions can say $state.{name}"),
            );
            continue;
        }
        state.push(StateSpec {
            name,
            default: def.default.map(to_json).unwrap_or(serde_json::Value::Null),
            description: def.description,
        });
    }
    state
}

fn parse_trigger(check: &mut Checker<'_>, spanned: Spanned<TriggerDef>) -> Trigger {
    let span = spanned.span();
    let def = spanned.into_inner();
    let mut trigger = Trigger::default();
    let overlap = match def.overlap.as_ref().map(|o| (o.get_ref().as_str(), o.span())) {
        None | Some(("skip", _)) => Overlap::Skip,
        Some(("allow", _)) => Overlap::Allow,
        Some((_, at)) => {
            check.error(at, "overlap is \"skip\" (the default: no run starts while the last one is going) or \"allow\"");
            Overlap::Skip
        }
    };
    let timezone = def.timezone.as_ref().and_then(|tz| {
        tz.get_ref()
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                check.error(tz.span(), format!("{:?} is not an IANA time zone (write it like \"Europe/Berlin\" or \"America/New_York\")", tz.get_ref()));
            })
            .ok()
    });
    let jitter = match &def.jitter {
        Some(j) => parse_duration(j.get_ref()).unwrap_or_else(|message| {
            check.error(j.span(), message);
            Duration::ZERO
        }),
        None => Duration::ZERO,
    };
    match &def.cron {
        Some(cron) => match CronTrigger::parse_schedule(cron.get_ref()) {
            Ok(schedule) => {
                trigger.cron = Some(CronTrigger {
                    expression: cron.get_ref().clone(),
                    schedule,
                    overlap,
                    catch_up: def.catch_up,
                    timezone,
                    jitter,
                });
            }
            Err(message) => check.error(cron.span(), message),
        },
        None if def.overlap.is_some()
            || def.catch_up
            || def.timezone.is_some()
            || def.jitter.is_some() =>
        {
            check.error(
                span.clone(),
                "overlap, catch_up, timezone and jitter apply to a cron trigger; add cron = \"…\"",
            )
        }
        None => {}
    }
    if let Some(webhook) = def.webhook {
        let webhook_span = webhook.span();
        let w = webhook.into_inner();
        if let Err(e) = crate::credentials::CredentialSource::parse(w.secret.get_ref()) {
            check.error(w.secret.span(), e.to_string());
        }
        let verify = match w.verify.get_ref().as_str() {
            "stripe" => {
                if let Some(header) = &w.header {
                    check.error(header.span(), "Stripe signs in the Stripe-Signature header; `header` is for verify = \"hmac-sha256\"");
                }
                if let Some(header) = &w.timestamp_header {
                    check.error(header.span(), "Stripe's timestamp is inside Stripe-Signature; `timestamp_header` is for verify = \"hmac-sha256\"");
                }
                Some(Verify::Stripe)
            }
            "hmac-sha256" => match &w.header {
                Some(header) => Some(Verify::HmacSha256 {
                    header: header.get_ref().clone(),
                    timestamp_header: w.timestamp_header.as_ref().map(|h| h.get_ref().clone()),
                }),
                None => {
                    check.error(webhook_span.clone(), "verify = \"hmac-sha256\" needs `header`, the header that carries the signature");
                    None
                }
            },
            _ => {
                check.error(w.verify.span(), "verify is \"stripe\" (Stripe-Signature) or \"hmac-sha256\" (a hex HMAC of the body in `header`)");
                None
            }
        };
        let tolerance = match &w.tolerance {
            Some(t) => parse_duration(t.get_ref()).unwrap_or_else(|message| {
                check.error(t.span(), message);
                trigger::DEFAULT_TOLERANCE
            }),
            None => trigger::DEFAULT_TOLERANCE,
        };
        let max_body_bytes = match &w.max_body_bytes {
            Some(max) if *max.get_ref() == 0 => {
                check.error(max.span(), "max_body_bytes must be at least 1");
                trigger::DEFAULT_MAX_BODY
            }
            Some(max) => usize::try_from(*max.get_ref()).unwrap_or(usize::MAX),
            None => trigger::DEFAULT_MAX_BODY,
        };
        // Stripe sends a retry with a new signature: its event id is what
        // says two deliveries are one event.
        let event_id = match &w.event_id {
            Some(path) => {
                let text = path.get_ref().trim().trim_start_matches('.');
                if text.is_empty() || text.split('.').any(str::is_empty) {
                    check.error(path.span(), "event_id is a field of the event, as a dotted path (`id`, `meta.event_id`)");
                }
                Some(trigger::EventId { path: text.to_owned(), required: true })
            }
            None if w.verify.get_ref() == "stripe" => {
                Some(trigger::EventId { path: "id".into(), required: false })
            }
            None => None,
        };
        let dedupe_window = match &w.dedupe_window {
            Some(t) => parse_duration(t.get_ref()).unwrap_or_else(|message| {
                check.error(t.span(), message);
                trigger::DEFAULT_DEDUPE_WINDOW
            }),
            None => trigger::DEFAULT_DEDUPE_WINDOW,
        };
        if let Some(verify) = verify {
            trigger.webhook = Some(WebhookTrigger {
                verify,
                secret: w.secret.into_inner(),
                tolerance,
                max_body_bytes,
                event_id,
                dedupe_window,
            });
        }
    }
    if trigger.cron.is_none() && trigger.webhook.is_none() && check.problems.is_empty() {
        check.error(span, "a [trigger] needs cron = \"…\" or a [trigger.webhook]");
    }
    trigger
}

fn parse_connections(
    check: &mut Checker<'_>,
    defs: BTreeMap<String, Spanned<ConnectionDef>>,
    base_dir: &Path,
) -> BTreeMap<String, Connection> {
    let mut connections = BTreeMap::new();
    for (name, spanned) in defs {
        let span = spanned.span();
        let c = spanned.into_inner();
        let plugin_span = c.plugin.span();
        let (plugin_name, pin) = match c.plugin.into_inner() {
            PluginDef::Named(name) => (name, None),
            PluginDef::Pinned { path, sha256 } => {
                let digest = sha256.to_ascii_lowercase();
                if !path.ends_with(".wasm") {
                    check.error(
                        plugin_span.clone(),
                        "only a path ending in .wasm is pinned by sha256; a built-in connector comes with weft and is pinned by its version",
                    );
                    continue;
                }
                if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                    check.error(
                        plugin_span.clone(),
                        "sha256 must be the component's SHA-256 as 64 hex digits, as `weft plugin inspect FILE.wasm` prints it",
                    );
                    continue;
                }
                (path, Some(digest))
            }
        };
        let plugin = if plugin_name.ends_with(".wasm") {
            PluginRef::File { path: base_dir.join(&plugin_name), sha256: pin }
        } else if !plugin_name.is_empty()
            && plugin_name.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            PluginRef::Builtin(plugin_name)
        } else {
            check.error(
                plugin_span.clone(),
                "plugin must be a built-in connector name or a path ending in .wasm",
            );
            continue;
        };
        if let Some(reference) = &c.credentials
            && let Err(e) = crate::credentials::CredentialSource::parse(reference.get_ref())
        {
            check.error(reference.span(), e.to_string());
        }
        if let Some(url) = &c.base_url
            && !matches!(
                url::Url::parse(url.get_ref()).map(|u| u.scheme().to_owned()).as_deref(),
                Ok("http" | "https")
            )
        {
            check.error(url.span(), "base_url must be an absolute http:// or https:// URL");
        }
        let mut settings = Vec::new();
        for (key, value) in c.settings {
            let value_span = value.span();
            match value.into_inner() {
                toml::Value::String(s) => settings.push((key, s)),
                toml::Value::Integer(i) => settings.push((key, i.to_string())),
                toml::Value::Boolean(b) => settings.push((key, b.to_string())),
                _ => check.error(
                    value_span,
                    format!("setting {key} must be a string, integer or boolean"),
                ),
            }
        }
        let mut rate_limits = Vec::new();
        let overrides =
            c.rate_limit.into_iter().map(|r| ("any".to_owned(), r)).chain(c.rate_limits);
        for (class_name, rate) in overrides {
            let Some(class) = MethodClass::ALL.into_iter().find(|c| c.as_str() == class_name)
            else {
                check.error(rate.span(), format!("unknown method class {class_name:?} in rate_limits; use any, read, write, get, post, put, patch or delete"));
                continue;
            };
            match crate::limiter::parse_rate(rate.get_ref()) {
                Some(per_second) => {
                    rate_limits.push(crate::limiter::LimitOverride { class, per_second })
                }
                None => check.error(
                    rate.span(),
                    "a rate is written \"N/s\", \"N/min\" or \"N/h\" with N > 0",
                ),
            }
        }
        let max_requests_per_call =
            c.max_requests_per_call.and_then(|max| match u32::try_from(*max.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    check.error(
                        max.span(),
                        format!(
                            "max_requests_per_call must be a whole number from 1 to {}",
                            u32::MAX
                        ),
                    );
                    None
                }
            });
        let credentials = c.credentials.map(Spanned::into_inner);
        let base_url = c.base_url.map(Spanned::into_inner);
        let allow_hosts = c.allow_hosts.into_iter().map(Spanned::into_inner).collect();
        if let Some(emulator) = &c.sandbox
            && (emulator.get_ref().is_empty()
                || !emulator
                    .get_ref()
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'))
        {
            check.error(emulator.span(), "sandbox names an emulator of `weft sandbox`, such as \"growpanel\" or \"stripe-scim\"");
        }
        let sandbox = c.sandbox.map(Spanned::into_inner);
        let allow_private_network = c.allow_private_network;
        connections.insert(
            name.clone(),
            Connection {
                name,
                plugin,
                credentials,
                base_url,
                settings,
                allow_hosts,
                rate_limits,
                allow_private_network,
                max_requests_per_call,
                sandbox,
                span,
                plugin_span,
            },
        );
    }
    connections
}

fn parse_step(
    check: &mut Checker<'_>,
    s: StepDef,
    span: Span,
    connections: &BTreeMap<String, Connection>,
    base_dir: &Path,
    earlier: &[&Step],
) -> Option<Step> {
    let id = s.id.get_ref().clone();
    let ops: Vec<(&str, Span)> =
        [("list", &s.list), ("get", &s.get), ("upsert", &s.upsert), ("remove", &s.remove)]
            .into_iter()
            .filter_map(|(op, target)| target.as_ref().map(|t| (op, t.span())))
            .chain(s.sync.as_ref().map(|sync| ("sync", sync.span())))
            .chain(s.fail.as_ref().map(|fail| ("fail", fail.span())))
            .collect();
    let op = match ops.as_slice() {
        [one] => one.0,
        [] => {
            check.error(span, format!("step {id:?} needs one op: list, get, upsert or remove = \"connection.resource\", sync = {{ from, to }}, or fail = \"message\""));
            return None;
        }
        [_, second, ..] => {
            check.error(
                second.1.clone(),
                format!("step {id:?} has more than one op; split it into several steps"),
            );
            return None;
        }
    };
    let misplaced = |check: &mut Checker<'_>, present: Option<Span>, field: &str| {
        if let Some(at) = present {
            check.error(at, format!("`{field}` does not apply to a {op} step"));
        }
    };
    if op != "list" {
        misplaced(check, s.page_size.as_ref().map(Spanned::span), "page_size");
        misplaced(check, s.limit.as_ref().map(Spanned::span), "limit");
        misplaced(check, s.filter.as_ref().map(Spanned::span), "filter");
        misplaced(check, s.output.as_ref().map(Spanned::span), "output");
    }
    if !matches!(op, "get" | "remove") {
        misplaced(check, s.key.as_ref().map(Spanned::span), "key");
    }
    if op != "upsert" {
        misplaced(check, s.record.as_ref().map(Spanned::span), "record");
    }
    if !matches!(op, "upsert" | "sync") {
        misplaced(check, s.create_only.as_ref().map(Spanned::span), "create_only");
    }
    let mut create_only = Vec::new();
    if let Some(fields) = &s.create_only {
        for field in fields.get_ref() {
            if field.split('.').any(str::is_empty) {
                check.error(
                    fields.span(),
                    format!("create_only: {field:?} is not a field path; write it like \"created_date\" or \"metadata.source\""),
                );
            } else {
                create_only.push(field.clone());
            }
        }
    }
    if matches!(op, "upsert" | "remove") {
        misplaced(check, s.map.as_ref().map(Spanned::span), "map");
    }
    if matches!(op, "list" | "sync")
        && let Some(for_each) = &s.for_each
    {
        check.error(
            for_each.span(),
            format!(
                "for_each does not apply to a {op} step; it repeats a get, upsert or remove per item"
            ),
        );
    }
    if s.concurrency.is_some() && s.for_each.is_none() && op != "sync" {
        misplaced(
            check,
            s.concurrency.as_ref().map(Spanned::span),
            "concurrency (without for_each)",
        );
    }

    let template =
        |check: &mut Checker<'_>, what: &str, value: &Spanned<toml::Value>| -> Option<Template> {
            let at = value.span();
            match value.get_ref() {
                toml::Value::String(_) | toml::Value::Integer(_) | toml::Value::Table(_) => {
                    check.template(what, to_json(value.get_ref().clone()), &at)
                }
                _ => {
                    check.error(at, format!("`{what}` must be a string or a table"));
                    None
                }
            }
        };
    if op == "fail" {
        misplaced(check, s.for_each.as_ref().map(Spanned::span), "for_each");
        misplaced(check, s.map.as_ref().map(Spanned::span), "map");
        misplaced(check, s.retry.as_ref().map(Spanned::span), "retry");
        misplaced(check, s.state.as_ref().map(Spanned::span), "state");
    }
    let (target_span, connection, resource, action) = if let Some(fail) = s.fail.as_ref() {
        let message = check.template(
            "fail",
            serde_json::Value::String(fail.get_ref().clone()),
            &fail.span(),
        )?;
        (fail.span(), String::new(), String::new(), Action::Fail { message })
    } else if op == "sync" {
        let sync = s.sync?;
        let sync_span = sync.span();
        let def = sync.into_inner();
        let from = parse_sync_source(check, &def.from, connections, earlier)?;
        let to = parse_target(check, &def.to, connections)?;
        let key = match &def.key {
            Some(key) => {
                let text = key.get_ref().trim();
                // A bare field name is shorthand for `.name`.
                let shorthand =
                    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if shorthand {
                    Expr::compile(&format!(".{text}")).ok()
                } else {
                    check.expression("sync.key", key)
                }
            }
            None => None,
        };
        let key = match (key, &def.key) {
            (Some(k), _) => k,
            (None, Some(_)) => return None,
            (None, None) => {
                check.error(sync_span, "a sync needs `key`, the field both sides are matched on (for example key = \"email\")");
                return None;
            }
        };
        let filter = match &def.filter {
            Some(f) => Some(check.template(
                "sync.filter",
                to_json(toml::Value::Table(f.get_ref().clone())),
                &f.span(),
            )?),
            None => None,
        };
        let spec = SyncSpec { from, filter, key, delete_missing: def.delete_missing };
        (to.span.clone(), to.connection, to.resource, Action::Sync(Box::new(spec)))
    } else {
        let target = match op {
            "list" => s.list.as_ref(),
            "get" => s.get.as_ref(),
            "upsert" => s.upsert.as_ref(),
            _ => s.remove.as_ref(),
        }?;
        let t = parse_target(check, target, connections)?;
        let action = match op {
            "list" => {
                if let Some(size) = &s.page_size
                    && *size.get_ref() == 0
                {
                    check.error(size.span(), "page_size must be at least 1");
                }
                let filter = match &s.filter {
                    Some(f) => Some(check.template(
                        "filter",
                        to_json(toml::Value::Table(f.get_ref().clone())),
                        &f.span(),
                    )?),
                    None => None,
                };
                let output_template = match &s.output {
                    Some(o) if o.get_ref().contains("${{") => Some((
                        check.template(
                            "output",
                            serde_json::Value::String(o.get_ref().clone()),
                            &o.span(),
                        )?,
                        base_dir.to_path_buf(),
                    )),
                    _ => None,
                };
                Action::List {
                    page_size: s.page_size.as_ref().map(|p| *p.get_ref()),
                    limit: s.limit.as_ref().map(|l| *l.get_ref()),
                    filter,
                    output: s.output.as_ref().map(|o| base_dir.join(o.get_ref())),
                    output_template,
                }
            }
            "get" | "remove" => {
                let Some(key) = &s.key else {
                    check.error(span, format!("a {op} step needs `key`, the id of the record"));
                    return None;
                };
                let key = template(check, "key", key)?;
                if op == "get" { Action::Get { key } } else { Action::Remove { key } }
            }
            _ => {
                let Some(record) = &s.record else {
                    check.error(span, "an upsert step needs `record`, the desired record as a table (or an expression)");
                    return None;
                };
                Action::Upsert { record: template(check, "record", record)? }
            }
        };
        (t.span, t.connection, t.resource, action)
    };

    let mut state = Vec::new();
    if let Some(table) = &s.state {
        for (name, value) in table.get_ref() {
            if let Some(template) = check.template("state", to_json(value.clone()), &table.span()) {
                state.push((name.clone(), template));
            }
        }
    }
    let when = s.when.as_ref().and_then(|w| check.expression("when", w));
    let map = s.map.as_ref().and_then(|m| check.expression("map", m));
    let for_each = match &s.for_each {
        Some(spanned) => {
            let (code, _) = crate::expr::unwrap_braces(spanned.get_ref());
            match streamed_records(code) {
                Some((step_id, then))
                    if earlier
                        .iter()
                        .any(|e| e.id == step_id && matches!(e.action, Action::List { .. })) =>
                {
                    // Compile the whole for the caret, the tail for the run.
                    check.expression("for_each", spanned)?;
                    let then = match then {
                        Some(t) => Some(Expr::compile(&t).ok()?),
                        None => None,
                    };
                    Some(ForEach::Records { step: step_id, then, text: code.trim().to_owned() })
                }
                _ => Some(ForEach::Expr(check.expression("for_each", spanned)?)),
            }
        }
        None => None,
    };
    let concurrency = match &s.concurrency {
        Some(c) if *c.get_ref() == 0 || *c.get_ref() > MAX_CONCURRENCY => {
            check.error(c.span(), format!("concurrency is between 1 and {MAX_CONCURRENCY}"));
            1
        }
        Some(c) => *c.get_ref(),
        None if op == "sync" => 4,
        None => 1,
    };
    let retry = match &s.retry {
        Some(r) => {
            let def = r.get_ref();
            let mut retry = StepRetry { attempts: *def.attempts.get_ref(), ..StepRetry::default() };
            if retry.attempts == 0 || retry.attempts > 20 {
                check.error(
                    def.attempts.span(),
                    "retry.attempts counts every try, the first included: between 1 and 20",
                );
            }
            for (field, value, slot) in [
                ("backoff", &def.backoff, &mut retry.backoff),
                ("max_backoff", &def.max_backoff, &mut retry.max_backoff),
            ] {
                if let Some(v) = value {
                    match parse_duration(v.get_ref()) {
                        Ok(d) => *slot = d,
                        Err(message) => check.error(v.span(), format!("retry.{field}: {message}")),
                    }
                }
            }
            retry
        }
        None => StepRetry::default(),
    };
    let timeout = match &s.timeout {
        Some(t) => match parse_duration(t.get_ref()) {
            Ok(d) if d.is_zero() => {
                check.error(t.span(), "timeout must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                check.error(t.span(), message);
                None
            }
        },
        None => None,
    };
    Some(Step {
        id,
        description: s.description,
        connection,
        resource,
        action,
        when,
        for_each,
        concurrency,
        map,
        retry,
        timeout,
        allow_irreversible: s.allow_irreversible,
        create_only,
        state,
        region: span.clone(),
        span,
        target_span,
    })
}

/// Every expression of a step, with what it is, for the reference checks.
/// The flag says whether `.` is a record there (map, sync key, the tail of
/// a streamed for-each), so that only `$steps`/`$inputs` name the run's.
fn step_expressions(step: &Step) -> Vec<(&'static str, &Expr, bool)> {
    let mut out: Vec<(&'static str, &Expr, bool)> = Vec::new();
    if let Some(w) = &step.when {
        out.push(("when", w, false));
    }
    if let Some(m) = &step.map {
        out.push(("map", m, true));
    }
    match &step.for_each {
        Some(ForEach::Expr(e)) => out.push(("for_each", e, false)),
        Some(ForEach::Records { then: Some(e), .. }) => out.push(("for_each", e, true)),
        _ => {}
    }
    if let Action::List { output_template: Some((t, _)), .. } = &step.action {
        out.extend(t.expressions().into_iter().map(|e| ("output", e, false)));
    }
    let templates: Vec<(&'static str, &Template)> = match &step.action {
        Action::List { filter: Some(f), .. } => vec![("filter", f)],
        Action::Get { key } | Action::Remove { key } => vec![("key", key)],
        Action::Upsert { record } => vec![("record", record)],
        Action::Sync(sync) => {
            out.push(("sync.key", &sync.key, true));
            sync.filter.iter().map(|f| ("sync.filter", f)).collect()
        }
        Action::List { filter: None, .. } => Vec::new(),
        Action::Fail { message } => vec![("fail", message)],
    };
    for (what, t) in templates {
        out.extend(t.expressions().into_iter().map(|e| (what, e, false)));
    }
    for (_, t) in &step.state {
        out.extend(t.expressions().into_iter().map(|e| ("state", e, false)));
    }
    out
}

fn check_references(
    check: &mut Checker<'_>,
    step: &Step,
    earlier: &[&Step],
    all_ids: &[String],
    inputs: &[InputSpec],
    open_inputs: bool,
    state: &[StateSpec],
) {
    let mut refs: Vec<(&'static str, String, bool)> = step_expressions(step)
        .into_iter()
        .map(|(what, e, on_record)| (what, e.text().to_owned(), on_record))
        .collect();
    if let Some(ForEach::Records { text, .. }) = &step.for_each {
        refs.push(("for_each", text.clone(), false));
    }
    for (what, text, on_record) in refs {
        // A table's span covers its header; the step's text runs on from it.
        let region = step.span.start..check.text.len();
        let at = locate(check.text, &region, &text);
        let inside = |range: &Range<usize>| {
            if at == region {
                step.span.clone()
            } else {
                at.start + range.start..at.start + range.end
            }
        };
        let is_list = matches!(step.action, Action::List { .. });
        for (id, range, variable) in crate::expr::references(&text, "steps") {
            if earlier.iter().any(|s| s.id == id) || (on_record && !variable) {
                continue;
            }
            // A step's `state` is evaluated once it succeeded, so it may
            // read its own result (a list step's, page by page, is `$page`).
            if what == "state" && id == step.id && !is_list {
                continue;
            }
            let message = if id == step.id {
                format!(
                    "in `{what}`: step {id:?} refers to its own result; a step can use only the results of steps above it"
                )
            } else if all_ids.contains(&id) {
                format!(
                    "in `{what}`: step {id:?} runs after step {:?}; a step can use only the results of steps above it",
                    step.id
                )
            } else {
                let known: Vec<&str> = earlier.iter().map(|s| s.id.as_str()).collect();
                format!(
                    "in `{what}`: no step {id:?} above; steps above: {}",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                )
            };
            check.error(inside(&range), message);
        }
        if !inputs.is_empty() && !open_inputs {
            for (name, range, variable) in crate::expr::references(&text, "inputs") {
                if !inputs.iter().any(|i| i.name == name) && (variable || !on_record) {
                    let known: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                    check.error(
                        inside(&range),
                        format!(
                            "in `{what}`: unknown input {name:?}; the workflow declares: {}",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        for (name, range, _) in crate::expr::references(&text, "inputs_given") {
            if !open_inputs && !inputs.iter().any(|i| i.name == name) {
                let known: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
                check.error(
                    inside(&range),
                    format!(
                        "in `{what}`: $inputs_given.{name}: no input {name:?}; the workflow declares: {}",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                );
            }
        }
        for (name, range, variable) in crate::expr::references(&text, "state") {
            if variable && !state.iter().any(|s| s.name == name) {
                let declared: Vec<&str> = state.iter().map(|s| s.name.as_str()).collect();
                check.error(
                    inside(&range),
                    format!(
                        "in `{what}`: unknown state value {name:?}; {}",
                        if declared.is_empty() {
                            "the workflow declares none (add [state.NAME])".to_owned()
                        } else {
                            format!("the workflow declares: {}", declared.join(", "))
                        }
                    ),
                );
            }
        }
        if text.contains("$page") && !(what == "state" && is_list) {
            let range = text.find("$page").map_or(0..0, |i| i..i + 5);
            check.error(
                inside(&range),
                format!("in `{what}`: $page is set only in a list step's `state`"),
            );
        }
        if step.for_each.is_none() && text.contains("$item") {
            let range = text.find("$item").map_or(0..0, |i| i..i + 5);
            check.error(
                inside(&range),
                format!("in `{what}`: $item is set only in a step with for_each"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
