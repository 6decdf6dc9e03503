//! Runs a workflow: loads its plugins, wires each connection's HTTP policy
//! and credential, and executes the steps in order, committing every step,
//! every page of a list and every for-each item to the run store as it
//! completes. A run interrupted at any instant resumes from what was
//! committed ([`Executor::resume`]); writes carry idempotency keys derived
//! from run, step and item, so nothing is written twice.

pub mod estimate;
mod foreach;
mod list;
mod ops;
pub mod plan;
mod sorted;
mod state;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::connector::{CallContext, Manifest};
use crate::credentials::{CredentialSource, Secret};
use crate::endpoint::Endpoint;
use crate::expr::{Budget, EvalError, Evaluator, Scope};
use crate::http::{ConnectionHttp, EgressPolicy, HttpLimits};
use crate::limiter::{LimitedPolicy, LimiterRegistry, Publisher, RetryPolicy};
use crate::metrics::Metrics;
use crate::runtime::{Plugin, PluginConnection, Runtime, RuntimeError};
use crate::store::{
    ConnectionTotals, RunRecord, RunStore, RunTrigger, Status, StepCounts, StepState, StoreError,
    now_ms,
};
use crate::workflow::{Action, Diagnostics, PluginRef, Step, Workflow};

pub use self::plan::{PlanEntry, PlannedAction, StepPlan};

/// Records of a list step held in memory for expressions
/// (`.steps.ID.records`). Longer lists are streamed by a for-each instead.
pub const INLINE_RECORDS: u64 = 10_000;

/// Errors that stop a workflow before or outside its steps. A failing step
/// is not one of these: it fails the run and is reported in the summary.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The workflow does not fit its plugins.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// The inputs do not fit the workflow.
    #[error("invalid inputs for workflow {workflow}:\n  {}", problems.join("\n  "))]
    Inputs {
        /// The workflow.
        workflow: String,
        /// Every problem.
        problems: Vec<String>,
    },
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] RuntimeError),
    /// A built-in plugin name is unknown.
    #[error(
        "connection {connection:?}: no built-in plugin named {name:?} (built in: {known}); a third-party plugin is a path ending in .wasm"
    )]
    UnknownPlugin {
        /// Connection name.
        connection: String,
        /// The name asked for.
        name: String,
        /// The names known.
        known: String,
    },
    /// A connection pins its plugin's digest and the file has another.
    #[error(
        "connection {connection:?}: plugin {file} has sha256 {actual}, but the connection pins {expected}; the run is refused before any request (if the new file is trusted, pin its digest: `weft plugin inspect {file}`)"
    )]
    PluginDigest {
        /// Connection name.
        connection: String,
        /// The plugin file.
        file: String,
        /// The digest the connection pins.
        expected: String,
        /// The file's digest.
        actual: String,
    },
    /// A pinned plugin file could not be read.
    #[error("connection {connection:?}: cannot read plugin {file}: {error}")]
    PluginFile {
        /// Connection name.
        connection: String,
        /// The plugin file.
        file: String,
        /// Why.
        error: std::io::Error,
    },
    /// A credential could not be read.
    #[error("connection {connection:?}: {error}")]
    Credential {
        /// Connection name.
        connection: String,
        /// Why (in the message, and not a `source()`, so that a printed
        /// error chain says it once).
        error: crate::credentials::CredentialError,
    },
    /// A connection's HTTP setup is wrong.
    #[error("connection {connection:?}: {error}")]
    Http {
        /// Connection name.
        connection: String,
        /// Why (in the message only, as above).
        error: crate::http::HttpError,
    },
    /// The run cannot be resumed.
    #[error("run {run} is {status} and cannot be resumed; only an interrupted (running) run can")]
    NotResumable {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
    /// The workflow text stored with a run no longer parses (written by
    /// another weft version).
    #[error("run {run}: the workflow it started with does not load any more:\n{diagnostics}")]
    StoredWorkflow {
        /// The run.
        run: String,
        /// Why.
        diagnostics: Diagnostics,
    },
    /// A `weft run --sandbox` run cannot be resumed: its emulators ended
    /// with the process that ran it, and its connections' own base URLs
    /// and credentials are the real vendors'.
    #[error(
        "run {run} ran against weft run --sandbox's in-process emulators, which ended with that process; it cannot be resumed (that would send its requests to the real vendors): start it again with weft run --sandbox"
    )]
    SandboxRun {
        /// The run.
        run: String,
    },
    /// A sandbox run has a connection no emulator stands in for.
    #[error(
        "connection {connection:?}: a sandbox run points every connection at an emulator, and none was given for this one"
    )]
    NoEmulator {
        /// Connection name.
        connection: String,
    },
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a connection's endpoint and secret come from when not from the
/// workflow: `weft run --sandbox` points every connection at an emulator.
#[derive(Debug, Clone)]
pub struct ConnectionOverride {
    /// Base URL to use.
    pub base_url: String,
    /// Secret to use.
    pub secret: Secret,
}

/// Asks a run to stop. `shutdown` stops taking new work and leaves the run
/// `running` in the store, to be resumed (SIGTERM, ctrl-c); `cancel` ends it
/// `cancelled`. Either way in-flight calls finish or time out and what they
/// did is committed.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    /// The process is going down.
    pub shutdown: CancellationToken,
    /// The run was cancelled.
    pub cancel: CancellationToken,
}

impl StopSignal {
    /// Whether either was asked for.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled() || self.cancel.is_cancelled()
    }
}

/// How to run a workflow.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Inputs given (checked against the declared ones, defaults added).
    pub inputs: serde_json::Map<String, Value>,
    /// Keep inputs the workflow does not declare (a webhook's event).
    pub open_inputs: bool,
    /// Reads are real, writes are planned and not sent.
    pub dry_run: bool,
    /// What started the run (a sandbox run is recorded as
    /// [`RunTrigger::Sandbox`] whatever this says).
    pub trigger: RunTrigger,
    /// Connections pointed elsewhere (`--sandbox`).
    pub overrides: BTreeMap<String, ConnectionOverride>,
    /// A sandbox run (`weft run --sandbox`): the emulators' base URLs.
    /// Every connection must then have an override (or an endpoint of the
    /// caller's), its HTTP sends to these origins only, and the run is
    /// recorded with the trigger [`RunTrigger::Sandbox`], which no resume takes.
    pub sandbox: Option<Vec<String>>,
    /// Connections replaced by an endpoint of the caller's (benchmarks and
    /// tests: a native no-op connector).
    pub endpoints: BTreeMap<String, Arc<dyn Endpoint>>,
    /// Asks the run to stop.
    pub stop: StopSignal,
    /// The webhook delivery that starts the run: remembered with the run,
    /// in one transaction, so that a replay is refused.
    pub delivery: Option<crate::store::Delivery>,
    /// Who started the run (a token's name), recorded first in its
    /// history; the trigger when `None`.
    pub started_by: Option<String>,
    /// A W3C `traceparent` the start request carried: the run's trace
    /// continues the caller's (when traces are exported).
    pub trace_parent: Option<String>,
    /// The scheduled time (Unix ms) of the cron firing that starts the
    /// run: recorded with it, once for a fleet of workers (see
    /// [`crate::store::RunStore::create_fired_run`]).
    pub firing: Option<u64>,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("inputs", &self.inputs)
            .field("dry_run", &self.dry_run)
            .field("trigger", &self.trigger)
            .field("overrides", &self.overrides.keys().collect::<Vec<_>>())
            .field("sandbox", &self.sandbox)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Hears about progress, for human output.
pub trait Observer: Send + Sync {
    /// A run was recorded and is about to start (or resume).
    fn run_started(&self, _run: &RunRecord) {}
    /// A step starts.
    fn step_started(&self, _step: &Step) {}
    /// A list step committed a page.
    fn page_committed(&self, _step: &Step, _records_so_far: u64) {}
    /// A for-each or sync committed a group of items.
    fn items_committed(&self, _step: &Step, _done: u64) {}
    /// A step finished (in any status).
    fn step_finished(&self, _step: &Step, _state: &StepState, _summary: &StepSummary) {}
}

/// An observer that hears nothing.
#[derive(Debug, Default)]
pub struct Silent;
impl Observer for Silent {}

/// What a step did, for the run summary.
#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    /// Step id.
    pub id: String,
    /// Op (`list`, `get`, `upsert`, `remove`, `sync`).
    pub op: &'static str,
    /// `connection.resource`.
    pub target: String,
    /// Final status.
    pub status: Status,
    /// Record counts.
    pub counts: StepCounts,
    /// Items a for-each finished.
    #[serde(skip_serializing_if = "is_zero")]
    pub items: u64,
    /// Attempts made (a resumed step counts again).
    pub attempts: u32,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The step's result (get, upsert, remove; counts for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// What a dry run would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<StepPlan>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A run's live connections and the limits in force on each.
struct Connected {
    endpoints: BTreeMap<String, Arc<dyn Endpoint>>,
    limits: BTreeMap<String, estimate::LimitsInForce>,
}

/// What a run did, printed by `weft run` (and as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub run_id: String,
    /// Workflow name.
    pub workflow: String,
    /// SHA-256 of the workflow text.
    pub workflow_hash: String,
    /// Final status; `running` when the run was interrupted and can resume.
    pub status: Status,
    /// Writes were planned, not made.
    pub dry_run: bool,
    /// Wall time in milliseconds (of this attempt).
    pub duration_ms: u64,
    /// Per step.
    pub steps: Vec<StepSummary>,
    /// Per connection: vendor requests (429s, retries, waiting, answers
    /// by class) and plugin calls by op.
    pub connections: BTreeMap<String, ConnectionTotals>,
    /// A successful dry run's estimate of the real run: vendor requests
    /// and the time the limiter will make them take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<estimate::PlanEstimate>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a step ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepEnd {
    /// All done.
    Done,
    /// Stopped for a shutdown; resumable.
    Interrupted,
    /// Stopped by a cancel.
    Cancelled,
}

/// Why a step stopped short of its end.
#[derive(Debug)]
pub(crate) enum StepError {
    /// The step failed (a vendor, an expression, a file): the run fails.
    Failed(String),
    /// The run store failed: the run stops where its last commit left it
    /// and is resumable, as when the store fails between steps.
    Store(StoreError),
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        StepError::Failed(message)
    }
}

impl From<StoreError> for StepError {
    fn from(error: StoreError) -> Self {
        match error {
            // Another run (or a hand) moved the state on: this step's change
            // would lose theirs, so the step fails; the store is fine.
            conflict @ StoreError::StateConflict { .. } => StepError::Failed(conflict.to_string()),
            error => StepError::Store(error),
        }
    }
}

/// One step of one run, as its runner sees it: what every runner was
/// handed one by one.
#[derive(Clone, Copy)]
pub(crate) struct StepCtx<'a> {
    /// What the run's steps share.
    pub(crate) run: &'a RunCtx<'a>,
    /// The workflow the run started with.
    pub(crate) workflow: &'a Workflow,
    /// The step.
    pub(crate) step: &'a Step,
    /// Its position in the workflow (its key in the store).
    pub(crate) index: u32,
    /// What its expressions see.
    pub(crate) scope: &'a Scope,
    /// The workflow's state as the run read it (a list step's `state`
    /// is evaluated page by page against it).
    pub(crate) run_state: &'a state::RunState,
}

/// What every step of one run shares.
pub(crate) struct RunCtx<'a> {
    pub(crate) run_id: &'a str,
    pub(crate) dry_run: bool,
    pub(crate) stop: &'a StopSignal,
    pub(crate) store: &'a RunStore,
    pub(crate) observer: &'a dyn Observer,
}

impl RunCtx<'_> {
    /// Evaluates `step`'s expressions under its budget (its `timeout`, when
    /// set, is the time an evaluation may take); a cancel or a shutdown
    /// stops them.
    pub(crate) fn evaluator(&self, step: &Step) -> Evaluator {
        Evaluator::new(Budget::for_timeout(step.timeout))
            .stopped_by(&self.stop.cancel)
            .stopped_by(&self.stop.shutdown)
    }

    /// Whether to stop taking new work, and how the step then ends.
    pub(crate) fn stop_reason(&self) -> Option<StepEnd> {
        if self.stop.cancel.is_cancelled() {
            Some(StepEnd::Cancelled)
        } else if self.stop.shutdown.is_cancelled() {
            Some(StepEnd::Interrupted)
        } else {
            None
        }
    }
}

/// Runs workflows against one runtime and one run store.
pub struct Executor {
    runtime: Runtime,
    store: RunStore,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    /// Pinned plugin files whose digest was checked, by path: what the file
    /// looked like then and the digest it had.
    verified: std::sync::Mutex<HashMap<std::path::PathBuf, (FileStamp, String)>>,
    http_limits: HttpLimits,
    limiters: Arc<LimiterRegistry>,
    retry: RetryPolicy,
    inline_records: u64,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

/// What a file looked like, to tell whether it may have changed since:
/// device, inode, size, and modification and status-change times to the
/// nanosecond. `None` where the platform gives no status-change time (the
/// file is then read and hashed every time).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    #[cfg(unix)]
    fn of(path: &std::path::Path) -> std::io::Result<Option<FileStamp>> {
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(path)?;
        Ok(Some(FileStamp {
            device: m.dev(),
            inode: m.ino(),
            size: m.size(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
        }))
    }

    #[cfg(not(unix))]
    fn of(path: &std::path::Path) -> std::io::Result<Option<FileStamp>> {
        std::fs::metadata(path).map(|_| None)
    }
}

impl Executor {
    /// An executor over `runtime` and `store`.
    pub fn new(runtime: Runtime, store: RunStore) -> Self {
        // On a shared store, every worker's limiters keep one limit per
        // credential together.
        let limiters = Arc::new(match store.shared_limits() {
            Some(shared) => LimiterRegistry::shared(shared),
            None => LimiterRegistry::default(),
        });
        Executor {
            runtime,
            store,
            plugins: Mutex::default(),
            verified: std::sync::Mutex::default(),
            http_limits: HttpLimits::default(),
            limiters,
            retry: RetryPolicy::default(),
            inline_records: INLINE_RECORDS,
            metrics: None,
        }
    }

    /// Counts runs, steps, records, plugin calls and vendor requests in
    /// `metrics` (`weft serve`'s `/metrics`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The metrics this executor counts in, if any.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// Changes how many records of a list step expressions may hold in
    /// memory (default [`INLINE_RECORDS`]).
    pub fn with_inline_records(mut self, records: u64) -> Self {
        self.inline_records = records;
        self
    }

    /// Replaces the HTTP retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The run store.
    pub fn store(&self) -> &RunStore {
        &self.store
    }

    /// The wasm runtime plugins run in.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Loads a plugin once per process. A pinned file's digest is checked
    /// on every call (each run's start), so a file changed on disk under a
    /// long-running `weft serve` is refused at the next run rather than
    /// trusted for the process's lifetime. The file is read and hashed
    /// again only when its stamp (device, inode, size, modification and
    /// status-change times) differs from the one it had when its digest
    /// was last checked: any write to it changes its status-change time,
    /// which no user can set back. The bytes that run are always the ones
    /// whose digest was checked.
    pub async fn plugin(
        &self,
        connection: &str,
        plugin: &PluginRef,
    ) -> Result<Arc<Plugin>, ExecError> {
        let mut key = plugin.to_string();
        let mut verified = None;
        if let PluginRef::File { path, sha256: Some(expected) } = plugin {
            let file = path.display().to_string();
            let unreadable = |error| ExecError::PluginFile {
                connection: connection.to_owned(),
                file: file.clone(),
                error,
            };
            let stamp = FileStamp::of(path).map_err(unreadable)?;
            // Cached by content: the pinned bytes, whatever the path
            // held when an earlier run loaded it.
            key = format!("{file}@sha256:{expected}");
            let unchanged = stamp.is_some()
                && self.verified.lock().ok().and_then(|v| v.get(path).cloned())
                    == stamp.clone().map(|stamp| (stamp, expected.clone()));
            if unchanged && let Some(loaded) = self.plugins.lock().await.get(&key) {
                return Ok(loaded.clone());
            }
            let wasm = std::fs::read(path).map_err(unreadable)?;
            let actual = crate::runtime::digest(&wasm);
            if let (Some(stamp), Ok(mut checked)) = (stamp, self.verified.lock()) {
                checked.insert(path.clone(), (stamp, actual.clone()));
            }
            if actual != *expected {
                return Err(ExecError::PluginDigest {
                    connection: connection.to_owned(),
                    file,
                    expected: expected.clone(),
                    actual,
                });
            }
            verified = Some((file, wasm));
        }
        if let Some(loaded) = self.plugins.lock().await.get(&key) {
            return Ok(loaded.clone());
        }
        let loaded = match (plugin, &verified) {
            // The bytes whose digest was checked, not a second read.
            (_, Some((file, wasm))) => self.runtime.load(file, wasm).await?,
            (PluginRef::Builtin(name), None) => {
                let bytes =
                    crate::builtin::component(name).ok_or_else(|| ExecError::UnknownPlugin {
                        connection: connection.to_owned(),
                        name: name.clone(),
                        known: crate::builtin::names().collect::<Vec<_>>().join(", "),
                    })?;
                self.runtime.load(name, bytes).await?
            }
            // Unpinned (a pinned file always has its checked bytes here).
            (PluginRef::File { path, .. }, None) => self.runtime.load_file(path).await?,
        };
        if let Some(metrics) = &self.metrics {
            metrics.plugin_loaded(loaded.name(), loaded.load_info().cache_hit);
        }
        let loaded = Arc::new(loaded);
        self.plugins.lock().await.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Loads every plugin of the workflow and checks the workflow against
    /// their manifests.
    pub async fn check(
        &self,
        workflow: &Workflow,
    ) -> Result<BTreeMap<String, Manifest>, ExecError> {
        self.check_with(workflow, &BTreeMap::new()).await
    }

    async fn check_with(
        &self,
        workflow: &Workflow,
        endpoints: &BTreeMap<String, Arc<dyn Endpoint>>,
    ) -> Result<BTreeMap<String, Manifest>, ExecError> {
        let mut manifests = BTreeMap::new();
        for connection in workflow.connections.values() {
            let manifest = match endpoints.get(&connection.name) {
                Some(endpoint) => endpoint.manifest().clone(),
                None => self.plugin(&connection.name, &connection.plugin).await?.manifest().clone(),
            };
            manifests.insert(connection.name.clone(), manifest);
        }
        workflow.check_against(&manifests).map_err(ExecError::Invalid)?;
        Ok(manifests)
    }

    async fn connect(
        &self,
        workflow: &Workflow,
        options: &RunOptions,
    ) -> Result<Connected, ExecError> {
        self.check_with(workflow, &options.endpoints).await?;
        let mut live: BTreeMap<String, Arc<dyn Endpoint>> = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for connection in workflow.connections.values() {
            if let Some(endpoint) = options.endpoints.get(&connection.name) {
                live.insert(connection.name.clone(), endpoint.clone());
                continue;
            }
            let plugin = self.plugin(&connection.name, &connection.plugin).await?;
            let manifest = plugin.manifest();
            let (base_url, secret) = match options.overrides.get(&connection.name) {
                Some(o) => (o.base_url.clone(), Some(o.secret.clone())),
                // Never the workflow's own base URL and credential.
                None if options.sandbox.is_some() => {
                    return Err(ExecError::NoEmulator { connection: connection.name.clone() });
                }
                None => {
                    let secret = match &connection.credentials {
                        Some(reference) => Some(
                            CredentialSource::parse(reference)
                                .and_then(|source| source.resolve())
                                .map_err(|error| ExecError::Credential {
                                    connection: connection.name.clone(),
                                    error,
                                })?,
                        ),
                        None => None,
                    };
                    (
                        connection
                            .base_url
                            .clone()
                            .unwrap_or_else(|| manifest.default_base_url.clone()),
                        secret,
                    )
                }
            };
            // Deny by default: a host is allowed only if the plugin declares it and the workflow grants it.
            let extra: Vec<String> = manifest
                .extra_hosts
                .iter()
                .filter(|h| connection.allow_hosts.contains(h))
                .cloned()
                .collect();
            // A plugin's published limits bind only as far as the host trusts it.
            let publisher = Publisher::of_digest(plugin.digest());
            // The limits in force as a fresh limiter sets them (a dry run's
            // estimate paces at these, not at what adaptation learnt).
            let fresh = crate::limiter::Limiter::new(
                publisher,
                &manifest.rate_limits,
                secret.as_ref(),
                &connection.rate_limits,
            );
            let bounded = !connection.rate_limits.is_empty()
                || manifest.rate_limits.iter().any(|l| match (&l.credential_prefix, &secret) {
                    (None, _) => true,
                    (Some(prefix), Some(secret)) => secret.has_prefix(prefix),
                    (Some(_), None) => false,
                });
            limits.insert(
                connection.name.clone(),
                estimate::LimitsInForce { rates: fresh.rates(), bounded },
            );
            let limiter = self.limiters.limiter(
                &manifest.name,
                publisher,
                secret.as_ref(),
                &manifest.rate_limits,
                &connection.rate_limits,
            );
            let mut limits = self.http_limits.clone();
            if let Some(max) = connection.max_requests_per_call {
                limits.max_requests_per_call = max;
            }
            let http = ConnectionHttp::new(
                crate::http::shared_client(),
                &base_url,
                &extra,
                secret.map(|s| (manifest.auth.clone(), s)),
                limits,
                Arc::new(LimitedPolicy::new(limiter, self.retry.clone())),
            )
            .map(|http| {
                if connection.allow_private_network {
                    http.with_egress(EgressPolicy::Any)
                } else {
                    http
                }
            })
            // Last, so that nothing a workflow says can open a sandbox run
            // to more than its emulators.
            .and_then(|http| match &options.sandbox {
                Some(emulators) => http.confined_to(emulators),
                None => Ok(http),
            })
            .map(|http| match &self.metrics {
                Some(metrics) => http
                    .with_metrics(Arc::new(metrics.connection(&connection.name, &manifest.name))),
                None => http,
            })
            .map_err(|error| ExecError::Http { connection: connection.name.clone(), error })?;
            let context =
                CallContext { base_url: http.base_url(), settings: connection.settings.clone() };
            let mut endpoint = PluginConnection::new(plugin, Arc::new(http), context);
            if let Some(metrics) = &self.metrics {
                endpoint = endpoint.with_metrics(metrics.clone());
            }
            live.insert(connection.name.clone(), Arc::new(endpoint));
        }
        Ok(Connected { endpoints: live, limits })
    }

    /// Runs a workflow with no inputs to the end and returns its summary.
    pub async fn run(
        &self,
        workflow: &Workflow,
        overrides: &BTreeMap<String, ConnectionOverride>,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        let options = RunOptions { overrides: overrides.clone(), ..RunOptions::default() };
        self.start(workflow, &options, observer).await
    }

    /// Records a new run and runs it.
    pub async fn start(
        &self,
        workflow: &Workflow,
        options: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        // Check before recording, so a workflow that does not fit its
        // plugins leaves no run behind.
        self.check_with(workflow, &options.endpoints).await?;
        let run = self.create(workflow, options).await?;
        self.execute(workflow, run, options, observer).await
    }

    /// Checks the inputs and records a new run, durably, without running
    /// it: a webhook answers once the run is recorded.
    pub async fn create(
        &self,
        workflow: &Workflow,
        options: &RunOptions,
    ) -> Result<RunRecord, ExecError> {
        let inputs = crate::workflow::inputs::resolve(
            &workflow.inputs,
            &options.inputs,
            options.open_inputs,
        )
        .map_err(|problems| ExecError::Inputs { workflow: workflow.name.clone(), problems })?;
        let run = RunRecord {
            id: self.store.new_run_id().await?,
            workflow: workflow.name.clone(),
            workflow_hash: workflow.hash.clone(),
            workflow_text: workflow.text.clone(),
            workflow_path: workflow.path.display().to_string(),
            inputs,
            status: Status::Running,
            created_ms: now_ms(),
            finished_ms: None,
            error: None,
            dry_run: options.dry_run,
            trigger: if options.sandbox.is_some() {
                RunTrigger::Sandbox
            } else {
                options.trigger.clone()
            },
            cancel_requested: false,
            resumes: 0,
            inputs_defaulted: workflow
                .inputs
                .iter()
                .filter(|i| i.default.is_some() && !options.inputs.contains_key(&i.name))
                .map(|i| i.name.clone())
                .collect(),
        };
        let step_ids: Vec<String> = workflow.steps.iter().map(|s| s.id.clone()).collect();
        match options.firing {
            Some(scheduled_ms) => {
                self.store
                    .create_fired_run(&run, &step_ids, options.started_by.as_deref(), scheduled_ms)
                    .await?
            }
            None => {
                self.store
                    .create_run_by(
                        &run,
                        &step_ids,
                        options.delivery.as_ref(),
                        options.started_by.as_deref(),
                    )
                    .await?
            }
        }
        if let Some(metrics) = &self.metrics {
            metrics.run_started(&run.workflow, &run.trigger);
        }
        Ok(run)
    }

    /// The workflow a run started with, from the text stored with it.
    pub fn stored_workflow(run: &RunRecord) -> Result<Workflow, ExecError> {
        Workflow::parse(std::path::Path::new(&run.workflow_path), &run.workflow_text)
            .map_err(|diagnostics| ExecError::StoredWorkflow { run: run.id.clone(), diagnostics })
    }

    /// Picks an interrupted run up where it stopped, on the workflow version
    /// it started with (the file may have changed since).
    ///
    /// A sandbox run is refused, and marked failed so that no later start
    /// tries again: its emulators ended with its process, and resuming it
    /// would send its writes to the real vendors with the real credentials.
    /// Every resume (`weft runs resume`, the API, `weft serve` at start)
    /// comes through here.
    pub async fn resume(
        &self,
        run_id: &str,
        options: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        let mut run = self.store.run(run_id).await?;
        if run.trigger == RunTrigger::Sandbox {
            let refusal = ExecError::SandboxRun { run: run.id.clone() };
            if !run.status.is_finished() {
                run.status = Status::Failed;
                run.error = Some(refusal.to_string());
                run.finished_ms = Some(now_ms());
                self.store.commit_run(&run).await?;
            }
            return Err(refusal);
        }
        if run.status.is_finished() {
            return Err(ExecError::NotResumable { run: run.id, status: run.status.as_str() });
        }
        let workflow = Self::stored_workflow(&run)?;
        // On a shared store, the run's lease: no other worker runs it
        // while this one does. Read again under it: the last holder may
        // have committed up to the moment its lease passed.
        self.store.claim_run(run_id).await?;
        let mut run = self.store.run(run_id).await?;
        if run.status.is_finished() {
            return Err(ExecError::NotResumable { run: run.id, status: run.status.as_str() });
        }
        run.resumes += 1;
        self.store.commit_run(&run).await?;
        let options = RunOptions { dry_run: run.dry_run, ..options.clone() };
        self.execute(&workflow, run, &options, observer).await
    }

    /// Marks a run cancelled that no process is running (the store is
    /// open here, so none is).
    pub async fn cancel_idle(&self, run_id: &str) -> Result<RunRecord, ExecError> {
        let mut run = self.store.run(run_id).await?;
        if run.status.is_finished() {
            return Ok(run);
        }
        run.status = Status::Cancelled;
        run.cancel_requested = true;
        run.finished_ms = Some(now_ms());
        run.error = Some("cancelled".into());
        self.store.commit_run(&run).await?;
        Ok(run)
    }

    /// Runs (or resumes) a recorded run to its end, or until it is stopped.
    pub async fn execute(
        &self,
        workflow: &Workflow,
        run: RunRecord,
        options: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        use tracing::Instrument as _;
        // Every log line of the run, a vendor request's included, says
        // which run it is about; exported, it is the root of the run's
        // trace, or a child of the caller's.
        let span = tracing::info_span!(
            "run",
            run = %run.id,
            workflow = %run.workflow,
            traceparent = tracing::field::Empty,
        );
        if let Some(parent) = &options.trace_parent {
            continue_trace(&span, parent);
        }
        let id = run.id.clone();
        // A cancel from another process (a shared store) reaches this run
        // by its lease's heartbeat, not only at its next commit.
        self.store.watch_cancel(&id, &options.stop.cancel);
        let ended = self.execute_in_span(workflow, run, options, observer).instrument(span).await;
        self.store.unwatch_cancel(&id);
        // On a shared store: a run stopped on request is any worker's to
        // resume now; one stopped on an error is retried a lease later.
        let released = match &ended {
            Ok(summary) if !summary.status.is_finished() => self.store.give_up_run(&id).await,
            Err(_) => self.store.release_run(&id).await,
            Ok(_) => Ok(()),
        };
        if let Err(e) = released {
            tracing::warn!(run = %id, error = %e, "cannot give up the run's lease; it passes when the lease does");
        }
        ended
    }

    async fn execute_in_span(
        &self,
        workflow: &Workflow,
        mut run: RunRecord,
        options: &RunOptions,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        let started = Instant::now();
        let _active = self.metrics.as_ref().map(|m| m.run_active(&run.workflow));
        let Connected { endpoints, limits } = match self.connect(workflow, options).await {
            Ok(connected) => connected,
            Err(e) => {
                // The run was recorded; it ends here, saying why.
                run.status = Status::Failed;
                run.error = Some(e.to_string());
                run.finished_ms = Some(now_ms());
                self.count_run_end(&run);
                self.store.commit_run(&run).await?;
                return Err(e);
            }
        };
        observer.run_started(&run);
        let ctx = RunCtx {
            run_id: &run.id,
            dry_run: run.dry_run,
            stop: &options.stop,
            store: &self.store,
            observer,
        };
        let stored = self.store.steps(&run.id).await?;
        let started_at = chrono::DateTime::from_timestamp_millis(run.created_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let run_value = serde_json::json!({ "id": run.id, "workflow": run.workflow, "trigger": run.trigger, "dry_run": run.dry_run, "started_at": started_at });
        // Read once per attempt; a workflow that declares no state (and
        // names no last run) costs the store nothing here.
        let mut run_state = if workflow.state.is_empty() {
            state::RunState::read(workflow, &crate::store::WorkflowState::default())
        } else {
            state::RunState::read(workflow, &self.store.workflow_state(&run.workflow).await?)
        };
        let last_success = if workflow.text.contains("$last_success") {
            self.last_success(&run).await?
        } else {
            Value::Null
        };
        // `$inputs_given`: each declared input (and each undeclared one a
        // webhook carried), true when the run was given it, false when it
        // took its default or has none.
        let inputs_given: Value = workflow
            .inputs
            .iter()
            .map(|i| &i.name)
            .chain(run.inputs.as_object().into_iter().flat_map(|m| m.keys()))
            .map(|name| {
                let given = run.inputs.get(name).is_some() && !run.inputs_defaulted.contains(name);
                (name.clone(), Value::Bool(given))
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
        let mut outputs = serde_json::Map::new();
        let mut summaries = Vec::new();
        let mut status = Status::Running;
        let mut error = None;

        for (index, step) in workflow.steps.iter().enumerate() {
            let index = index as u32;
            let mut state = stored
                .iter()
                .find(|s| s.index == index && s.id == step.id)
                .cloned()
                .unwrap_or_else(|| StepState::pending(&step.id, index));
            if state.status.is_finished() {
                // Done in an earlier attempt of this run.
                outputs.insert(step.id.clone(), self.step_output(&run.id, step, &state).await?);
                summaries.push(summary(step, &state, 0));
                if state.status == Status::Failed && status == Status::Running {
                    status = Status::Failed;
                    error = state.error.clone().map(|m| format!("step {:?} failed: {m}", step.id));
                }
                continue;
            }
            if status != Status::Running {
                summaries.push(summary(step, &state, 0));
                continue;
            }
            if self.store.run(&run.id).await.map(|r| r.cancel_requested).unwrap_or(false) {
                options.stop.cancel.cancel();
            }
            match ctx.stop_reason() {
                Some(StepEnd::Cancelled) => {
                    status = Status::Cancelled;
                    error = Some("cancelled".into());
                    summaries.push(summary(step, &state, 0));
                    continue;
                }
                Some(_) => {
                    summaries.push(summary(step, &state, 0));
                    break;
                }
                None => {}
            }
            let scope = Scope::new(&run.inputs, &Value::Object(outputs.clone()), &run_value)
                .with_state(&Value::Object(run_state.values.clone()))
                .with_last_success(&last_success)
                .with_inputs_given(&inputs_given);
            let step_started = Instant::now();
            if let Some(when) = &step.when {
                match ctx.evaluator(step).holds("when", when, &scope).await {
                    Ok(true) => {}
                    Ok(false) => {
                        state.status = Status::Skipped;
                        state.finished_ms = Some(now_ms());
                        self.store.commit_step(&run.id, &state).await?;
                        outputs.insert(step.id.clone(), Value::Null);
                        let s = summary(step, &state, 0);
                        observer.step_finished(step, &state, &s);
                        summaries.push(s);
                        continue;
                    }
                    // Stopped while deciding: the step has not started.
                    Err(EvalError::Stopped) => {
                        summaries.push(summary(step, &state, 0));
                        if ctx.stop_reason() == Some(StepEnd::Cancelled) {
                            status = Status::Cancelled;
                            error = Some("cancelled".into());
                            continue;
                        }
                        break;
                    }
                    Err(e) => {
                        state.status = Status::Failed;
                        state.error = Some(e.into_message());
                    }
                }
            }
            if state.status != Status::Failed {
                observer.step_started(step);
                tracing::info!(run = %run.id, step = %step.id, op = step.action.name(), target = %step.target(), "step started");
                state.status = Status::Running;
                state.attempts += 1;
                state.started_ms.get_or_insert_with(now_ms);
                self.store.commit_step(&run.id, &state).await?;
                let counts_before = state.counts;
                let outcome = match self.check_inline_records(workflow, step, &outputs) {
                    Err(message) => Err(StepError::Failed(message)),
                    Ok(()) => {
                        use tracing::Instrument as _;
                        let cx = StepCtx {
                            run: &ctx,
                            workflow,
                            step,
                            index,
                            scope: &scope,
                            run_state: &run_state,
                        };
                        let span = tracing::info_span!(
                            "step",
                            step = %step.id,
                            connection = %step.connection,
                            otel.status_code = tracing::field::Empty,
                            otel.status_description = tracing::field::Empty,
                        );
                        // A cancel cuts short a call's wait for a limit's
                        // slot or a retry's backoff; a failure that follows
                        // is the cancel's, not the vendor's.
                        let (outcome, cut_short) =
                            crate::http::stoppable_by(vec![ctx.stop.cancel.clone()], async {
                                let outcome = self
                                    .execute_step(cx, &endpoints, &mut state)
                                    .instrument(span.clone())
                                    .await;
                                (outcome, crate::http::wait_cut_short())
                            })
                            .await;
                        let outcome = match outcome {
                            Err(StepError::Failed(_)) if cut_short => {
                                Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted))
                            }
                            other => other,
                        };
                        if matches!(outcome, Err(StepError::Failed(_))) {
                            // The status only: an error's text may quote a
                            // vendor's answer, which stays out of traces.
                            span.record("otel.status_code", "ERROR");
                            span.record("otel.status_description", "step failed");
                        }
                        outcome
                    }
                };
                let outcome = match outcome {
                    // A list step set its state page by page.
                    Ok(StepEnd::Done)
                        if !step.state.is_empty()
                            && !matches!(step.action, Action::List { .. }) =>
                    {
                        let mut own = outputs.clone();
                        own.insert(step.id.clone(), state.output.clone().unwrap_or(Value::Null));
                        let scope = Scope::new(&run.inputs, &Value::Object(own), &run_value)
                            .with_state(&Value::Object(run_state.values.clone()))
                            .with_last_success(&last_success)
                            .with_inputs_given(&inputs_given);
                        self.set_state(&ctx, step, &scope, &run_state, &mut state).await
                    }
                    other => other,
                };
                match outcome {
                    Ok(StepEnd::Done) => state.status = Status::Succeeded,
                    Ok(StepEnd::Interrupted) => {}
                    Ok(StepEnd::Cancelled) => {
                        state.status = Status::Cancelled;
                        status = Status::Cancelled;
                        error = Some("cancelled".into());
                    }
                    Err(StepError::Failed(message)) => {
                        state.status = Status::Failed;
                        state.error = Some(message);
                    }
                    // Nothing more can be recorded for this step: the run
                    // stays where its last commit left it, to resume.
                    Err(StepError::Store(e)) => return Err(ExecError::Store(e)),
                }
                if let Some(metrics) = &self.metrics {
                    let added = state.counts.minus(&counts_before);
                    metrics.step_finished(&run.workflow, &step.id, step_started.elapsed(), added);
                }
            }
            if state.status == Status::Failed {
                status = Status::Failed;
                error = Some(format!(
                    "step {:?} failed: {}",
                    step.id,
                    state.error.as_deref().unwrap_or("")
                ));
            }
            if state.status.is_finished() {
                state.finished_ms = Some(now_ms());
            }
            if let Err(conflict @ StoreError::StateConflict { .. }) =
                self.store.commit_step(&run.id, &state).await
            {
                // Another run (or a hand) changed the state since this run
                // read it: the step fails and its change is not kept.
                state.status = Status::Failed;
                state.error = Some(conflict.to_string());
                state.state_write = None;
                state.finished_ms = Some(now_ms());
                status = Status::Failed;
                error = Some(format!("step {:?} failed: {conflict}", step.id));
                self.store.commit_step(&run.id, &state).await?;
            }
            if state.status == Status::Succeeded {
                run_state.absorb(state.state_write.as_ref());
            }
            tracing::info!(run = %run.id, step = %step.id, status = state.status.as_str(), error = state.error.as_deref(), "step finished");
            let s = summary(step, &state, step_started.elapsed().as_millis() as u64);
            observer.step_finished(step, &state, &s);
            summaries.push(s);
            if state.status == Status::Running {
                // Interrupted: the rest waits for the resume.
                break;
            }
            outputs.insert(step.id.clone(), self.step_output(&run.id, step, &state).await?);
        }
        let interrupted = status == Status::Running
            && summaries.iter().any(|s| s.status == Status::Running || s.status == Status::Pending);
        if status == Status::Running && !interrupted {
            status = Status::Succeeded;
        }
        run.status = status;
        run.error = error;
        if status.is_finished() {
            run.finished_ms = Some(now_ms());
        }
        // Counted before the store says so: whoever sees the run ended
        // finds it in the metrics too.
        self.count_run_end(&run);
        self.store.commit_run(&run).await?;
        let connections: BTreeMap<String, ConnectionTotals> =
            endpoints.iter().map(|(name, e)| (name.clone(), e.totals())).collect();
        // What this attempt did, added to the run's totals for the
        // console; a failure to record them loses figures, not work.
        let totals = connections
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(name, t)| (name.clone(), t.clone()))
            .collect::<BTreeMap<_, _>>();
        if !totals.is_empty()
            && let Err(e) = self.store.add_connection_totals(&run.id, &totals).await
        {
            tracing::warn!(run = %run.id, error = %e, "cannot record the run's HTTP figures");
        }
        let estimate = (run.dry_run && run.status == Status::Succeeded).then(|| {
            let manifests: BTreeMap<String, Manifest> =
                endpoints.iter().map(|(name, e)| (name.clone(), e.manifest().clone())).collect();
            estimate::estimate(workflow, &summaries, &connections, &manifests, &limits)
        });
        Ok(RunSummary {
            run_id: run.id,
            workflow: run.workflow,
            workflow_hash: run.workflow_hash,
            status: run.status,
            dry_run: run.dry_run,
            duration_ms: started.elapsed().as_millis() as u64,
            steps: summaries,
            connections,
            estimate,
            error: run.error,
        })
    }

    /// Evaluates a finished step's `state` in `scope` (where its own result
    /// is `.steps.ID`) into its state write; a failure fails the step.
    async fn set_state(
        &self,
        ctx: &RunCtx<'_>,
        step: &Step,
        scope: &Scope,
        run_state: &state::RunState,
        state: &mut StepState,
    ) -> Result<StepEnd, StepError> {
        let evaluated = state::evaluate(
            &ctx.evaluator(step),
            step,
            scope,
            run_state,
            &mut state.state_write,
            ctx.dry_run,
        )
        .await;
        match evaluated {
            Ok(()) => Ok(StepEnd::Done),
            Err(EvalError::Stopped) => Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted)),
            Err(e) => Err(StepError::Failed(e.into_message())),
        }
    }

    /// `$last_success`: the newest run of the workflow that succeeded
    /// (not a dry run, not this one), or `null`.
    async fn last_success(&self, run: &RunRecord) -> Result<Value, ExecError> {
        let mut before = None;
        // Bounded: a store where every recent run was a dry run answers
        // `null` after this many pages rather than reading everything.
        for _ in 0..8 {
            let page = self
                .store
                .query_runs(crate::store::RunQuery {
                    workflow: Some(run.workflow.clone()),
                    status: Some(Status::Succeeded),
                    before,
                    limit: 50,
                    ..crate::store::RunQuery::default()
                })
                .await?;
            if let Some(row) = page.rows.iter().find(|r| !r.dry_run && r.id != run.id) {
                let at = |ms: u64| {
                    chrono::DateTime::from_timestamp_millis(ms as i64)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                };
                return Ok(serde_json::json!({
                    "id": row.id,
                    "started_at": at(row.created_ms),
                    "finished_at": row.finished_ms.and_then(at),
                }));
            }
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        Ok(Value::Null)
    }

    /// Counts a run that has ended in the metrics (one interrupted to
    /// resume later has not).
    fn count_run_end(&self, run: &RunRecord) {
        if let (Some(metrics), Some(finished)) = (&self.metrics, run.finished_ms)
            && run.status.is_finished()
        {
            let took = std::time::Duration::from_millis(finished.saturating_sub(run.created_ms));
            metrics.run_finished(&run.workflow, run.status, took);
        }
    }

    async fn execute_step(
        &self,
        cx: StepCtx<'_>,
        endpoints: &BTreeMap<String, Arc<dyn Endpoint>>,
        state: &mut StepState,
    ) -> Result<StepEnd, StepError> {
        let StepCtx { run: ctx, workflow, step, index, .. } = cx;
        if let Action::Fail { message } = &step.action {
            // Its `when` held (or it has none): the run fails here, saying why.
            return match ctx.evaluator(step).render("fail", message, cx.scope).await {
                Ok(Value::String(text)) => Err(StepError::Failed(text)),
                Ok(other) => Err(StepError::Failed(other.to_string())),
                Err(EvalError::Stopped) => Ok(ctx.stop_reason().unwrap_or(StepEnd::Interrupted)),
                Err(e) => Err(StepError::Failed(e.into_message())),
            };
        }
        let endpoint = endpoints
            .get(&step.connection)
            .ok_or_else(|| format!("connection {:?} is not defined", step.connection))?;
        match &step.action {
            Action::List { .. } => {
                list::run(cx, endpoint.as_ref(), state, keep_records(workflow, index)).await
            }
            Action::Sync(spec) => {
                let source = match &spec.from {
                    crate::workflow::SyncSource::Resource(from) => {
                        let source = endpoints.get(&from.connection).ok_or_else(|| {
                            format!("connection {:?} is not defined", from.connection)
                        })?;
                        sync::Source::Endpoint(source.as_ref())
                    }
                    crate::workflow::SyncSource::Step { id, .. } => {
                        let index = workflow
                            .steps
                            .iter()
                            .position(|s| &s.id == id)
                            .ok_or_else(|| format!("sync.from: no step {id:?}"))?;
                        sync::Source::Step(index as u32)
                    }
                };
                sync::run(cx, spec, source, endpoint.as_ref(), state).await
            }
            _ if step.for_each.is_some() => foreach::run(cx, endpoint.as_ref(), state).await,
            _ => {
                let result = match ops::item(
                    cx,
                    endpoint.as_ref(),
                    &ctx.evaluator(step),
                    cx.scope,
                    0,
                    true,
                    None,
                )
                .await
                {
                    Ok(result) => result,
                    Err(e) => {
                        // An evaluation stopped by a cancel or a shutdown:
                        // the op was not made, or is made again on resume.
                        if let Some(end) = ctx.stop_reason() {
                            return Ok(end);
                        }
                        return Err(StepError::Failed(e.message));
                    }
                };
                state.counts.add(result.action);
                state.output = Some(result.output);
                if let Some(entry) = result.plan {
                    let mut plan = StepPlan::default();
                    plan.add(entry);
                    state.plan = Some(plan);
                }
                Ok(StepEnd::Done)
            }
        }
    }

    /// A step that reads `.steps.ID.records` of a list too long to hold in
    /// memory fails with a pointer to the streaming form.
    fn check_inline_records(
        &self,
        workflow: &Workflow,
        step: &Step,
        outputs: &serde_json::Map<String, Value>,
    ) -> Result<(), String> {
        let reads = step.reads();
        for (id, value) in outputs {
            let Some(count) = value.get("count").and_then(Value::as_u64) else { continue };
            let records_missing = value.get("records").is_none();
            let used = reads.names_records_of(id);
            let streamed = matches!(&step.for_each, Some(crate::workflow::ForEach::Records { step: s, .. }) if s == id)
                || matches!(&step.action, Action::Sync(sync) if sync.from.step() == Some(id.as_str()));
            if records_missing
                && used
                && !streamed
                && workflow.step(id).is_some_and(|s| matches!(s.action, Action::List { .. }))
            {
                return Err(format!(
                    "step {id:?} read {count} records, more than the {} that expressions can hold in memory; \
                     iterate them with for_each = \".steps.{id}.records[]\" (streamed from the run store) instead",
                    self.inline_records
                ));
            }
        }
        Ok(())
    }

    /// The value other steps see as `.steps.ID`.
    async fn step_output(
        &self,
        run: &str,
        step: &Step,
        state: &StepState,
    ) -> Result<Value, ExecError> {
        if state.status == Status::Skipped {
            return Ok(Value::Null);
        }
        let mut value = state.output.clone().unwrap_or(Value::Null);
        if let (Action::List { .. }, Value::Object(map)) = (&step.action, &mut value)
            && state.records_kept
            && state.counts.read <= self.inline_records
        {
            let mut records = Vec::new();
            let mut pages = self.store.pages(run, state.index).await?;
            while let Some(page) = pages.next_page().await {
                let page = page?;
                let parsed: Vec<Value> =
                    serde_json::from_str(&page).map_err(|e| StoreError::Corrupt {
                        key: format!("{run}/{}", state.index),
                        reason: e.to_string(),
                    })?;
                records.extend(parsed);
            }
            map.insert("records".into(), Value::Array(records));
        }
        Ok(value)
    }
}

/// Makes `span` a child of the span a W3C `traceparent` header names (the
/// trace exporter reads the span's `traceparent` field). A header that
/// does not parse is ignored (the run starts a trace of its own): it is a
/// caller's input, not a reason to refuse a run.
fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if is_traceparent(traceparent) {
        span.record("traceparent", traceparent);
    }
}

/// Whether `header` has the shape of a W3C `traceparent`: version, a trace
/// id, a parent id and flags, in lower-case hex, dash-separated (the ids
/// not all zeros). What does not is never recorded, not even in the log.
fn is_traceparent(header: &str) -> bool {
    let parts: Vec<&str> = header.split('-').collect();
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    match parts.as_slice() {
        [version, trace, parent, flags, rest @ ..] => {
            version.len() == 2
                && *version != "ff"
                && (rest.is_empty() || *version != "00")
                && trace.len() == 32
                && parent.len() == 16
                && flags.len() == 2
                && [*version, *trace, *parent, *flags].iter().all(|s| hex(s))
                && nonzero(trace)
                && nonzero(parent)
        }
        _ => false,
    }
}

/// Whether the list step at `index` keeps its records for later steps:
/// when a later step may read them, by the reference analysis of its
/// expressions ([`Step::reads`]). It may keep records nobody reads (a
/// step that uses `$steps` as a whole), never drop ones someone does.
fn keep_records(workflow: &Workflow, index: u32) -> bool {
    let Some(list) = workflow.steps.get(index as usize) else { return true };
    let later = workflow.steps.get(index as usize + 1..).unwrap_or_default();
    later.iter().any(|s| s.reads().may_read_records_of(&list.id))
}

/// The idempotency key of one write: derived from run, step and item, so a
/// step replayed after a crash sends the same key and the vendor does not
/// write twice.
pub fn idempotency_key(run: &str, step: &str, item: u64) -> String {
    let digest = Sha256::digest(format!("{run}\u{1f}{step}\u{1f}{item}").as_bytes());
    format!("weft-{}", hex::encode(&digest[..16]))
}

/// The idempotency key of a sync's write of the record with `key`.
pub fn sync_idempotency_key(run: &str, step: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{run}\u{1f}{step}\u{1f}key\u{1f}{key}").as_bytes());
    format!("weft-{}", hex::encode(&digest[..16]))
}

fn summary(step: &Step, state: &StepState, duration_ms: u64) -> StepSummary {
    StepSummary {
        id: step.id.clone(),
        op: step.action.name(),
        target: match &step.action {
            Action::Sync(sync) => format!("{} -> {}", sync.from, step.target()),
            _ => step.target(),
        },
        status: state.status,
        counts: state.counts,
        items: state.items,
        attempts: state.attempts,
        duration_ms,
        output: state.output.clone(),
        plan: state.plan.clone(),
        error: state.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A workflow of `steps` after one Stripe connection.
    fn workflow(steps: &str) -> Workflow {
        let text = format!(
            "[workflow]\nname = \"w\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:K\"\n{steps}"
        );
        match Workflow::parse(Path::new("w.toml"), &text) {
            Ok(workflow) => workflow,
            Err(e) => panic!("the test's workflow parses: {e}"),
        }
    }

    #[test]
    fn a_list_step_named_only_outside_expressions_keeps_no_records() {
        // The textual test kept them: the later step's text holds
        // "steps.customers.records", in its description and in a literal.
        let workflow = workflow(
            r#"
[[step]]
id = "customers"
list = "stripe.customers"

[[step]]
id = "note"
description = "does not read steps.customers.records, only its count"
upsert = "stripe.customers"
record = { id = "cus_1", metadata = { note = "steps.customers.records", seen = "${{ .steps.customers.count }}" } }
"#,
        );
        assert!(!keep_records(&workflow, 0));
    }

    #[test]
    fn only_the_list_steps_a_later_step_names_keep_their_records() {
        // "cust" is a prefix of "customers"; the later step reads only the
        // records of "customers".
        let workflow = workflow(
            r#"
[[step]]
id = "cust"
list = "stripe.customers"

[[step]]
id = "customers"
list = "stripe.customers"

[[step]]
id = "each"
for_each = ".steps.customers.records[]"
upsert = "stripe.customers"
record = { id = "${{ $item.id }}" }
"#,
        );
        assert!(!keep_records(&workflow, 0), "cust");
        assert!(keep_records(&workflow, 1), "customers");
    }

    #[test]
    fn a_step_that_may_read_any_result_keeps_every_list_steps_records() {
        for expression in [
            "$steps | length > 0",
            ".steps[\"customers\"] | .records | length > 0",
            "getpath([\"steps\", \"customers\", \"records\"]) != null",
            ".steps.customers.records[0] != null",
        ] {
            let workflow = workflow(&format!(
                r#"
[[step]]
id = "customers"
list = "stripe.customers"

[[step]]
id = "later"
when = '{expression}'
get = "stripe.customers"
key = "cus_1"
"#
            ));
            assert!(keep_records(&workflow, 0), "{expression}");
        }
    }
}
