//! Runs a workflow: loads its plugins, wires each connection's HTTP policy
//! and credential, executes the steps in order, and commits every step (and
//! every page of a list) to the run store before going on.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::connector::{CallContext, ListRequest, Manifest, Op, RemoveOutcome, UpsertAction, UpsertRequest};
use crate::credentials::{CredentialSource, Secret};
use crate::http::{ConnectionHttp, HttpLimits, StatsSnapshot};
use crate::limiter::{LimitedPolicy, LimiterRegistry, RetryPolicy};
use crate::runtime::{Plugin, Runtime, RuntimeError};
use crate::store::{RunRecord, RunStore, Status, StepCounts, StepState, StoreError, now_ms};
use crate::workflow::{Action, Diagnostics, PluginRef, Step, Workflow};

/// Errors that stop a workflow before or outside its steps. A failing step
/// is not one of these: it fails the run and is reported in the summary.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The workflow does not fit its plugins.
    #[error("{0}")]
    Invalid(Diagnostics),
    /// A plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] RuntimeError),
    /// A built-in plugin name is unknown.
    #[error("connection {connection:?}: no built-in plugin named {name:?} (built in: {known}); a third-party plugin is a path ending in .wasm")]
    UnknownPlugin {
        /// Connection name.
        connection: String,
        /// The name asked for.
        name: String,
        /// The names known.
        known: String,
    },
    /// A credential could not be read.
    #[error("connection {connection:?}: {source}")]
    Credential {
        /// Connection name.
        connection: String,
        /// Why.
        source: crate::credentials::CredentialError,
    },
    /// A connection's HTTP setup is wrong.
    #[error("connection {connection:?}: {source}")]
    Http {
        /// Connection name.
        connection: String,
        /// Why.
        source: crate::http::HttpError,
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

/// Hears about progress, for human output.
pub trait Observer: Send + Sync {
    /// A step starts.
    fn step_started(&self, _step: &Step) {}
    /// A list step committed a page.
    fn page_committed(&self, _step: &Step, _records_so_far: u64) {}
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
    /// Op.
    pub op: Op,
    /// `connection.resource`.
    pub target: String,
    /// Final status.
    pub status: Status,
    /// Record counts.
    pub counts: StepCounts,
    /// Attempts made.
    pub attempts: u32,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// The step's result (get, upsert, remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// Final status.
    pub status: Status,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Per step.
    pub steps: Vec<StepSummary>,
    /// Per connection: requests, 429s, retries, waiting.
    pub connections: BTreeMap<String, StatsSnapshot>,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A connection ready to call: plugin, HTTP policy, call context.
struct Live {
    plugin: Arc<Plugin>,
    http: Arc<ConnectionHttp>,
    context: CallContext,
}

/// Runs workflows against one runtime and one run store.
pub struct Executor {
    runtime: Runtime,
    store: RunStore,
    plugins: Mutex<HashMap<String, Arc<Plugin>>>,
    http_limits: HttpLimits,
    limiters: Arc<LimiterRegistry>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor over `runtime` and `store`.
    pub fn new(runtime: Runtime, store: RunStore) -> Self {
        Executor {
            runtime,
            store,
            plugins: Mutex::default(),
            http_limits: HttpLimits::default(),
            limiters: Arc::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// Shares `limiters` with other executors in the process, so one vendor
    /// key is paced as one whatever runs use it.
    pub fn with_limiters(mut self, limiters: Arc<LimiterRegistry>) -> Self {
        self.limiters = limiters;
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

    /// Loads a plugin once per process.
    pub async fn plugin(&self, connection: &str, plugin: &PluginRef) -> Result<Arc<Plugin>, ExecError> {
        let key = plugin.to_string();
        if let Some(loaded) = self.plugins.lock().await.get(&key) {
            return Ok(loaded.clone());
        }
        let loaded = match plugin {
            PluginRef::Builtin(name) => {
                let bytes = crate::builtin::component(name).ok_or_else(|| ExecError::UnknownPlugin {
                    connection: connection.to_owned(),
                    name: name.clone(),
                    known: crate::builtin::names().collect::<Vec<_>>().join(", "),
                })?;
                self.runtime.load(name, bytes).await?
            }
            PluginRef::File(path) => self.runtime.load_file(path).await?,
        };
        let loaded = Arc::new(loaded);
        self.plugins.lock().await.insert(key, loaded.clone());
        Ok(loaded)
    }

    /// Loads every plugin of the workflow and checks the workflow against
    /// their manifests.
    pub async fn check(&self, workflow: &Workflow) -> Result<BTreeMap<String, Manifest>, ExecError> {
        let mut manifests = BTreeMap::new();
        for connection in workflow.connections.values() {
            let plugin = self.plugin(&connection.name, &connection.plugin).await?;
            manifests.insert(connection.name.clone(), plugin.manifest().clone());
        }
        workflow.check_against(&manifests).map_err(ExecError::Invalid)?;
        Ok(manifests)
    }

    async fn connect(
        &self,
        workflow: &Workflow,
        overrides: &BTreeMap<String, ConnectionOverride>,
    ) -> Result<BTreeMap<String, Live>, ExecError> {
        self.check(workflow).await?;
        let mut live = BTreeMap::new();
        for connection in workflow.connections.values() {
            let plugin = self.plugin(&connection.name, &connection.plugin).await?;
            let manifest = plugin.manifest();
            let (base_url, secret) = match overrides.get(&connection.name) {
                Some(o) => (o.base_url.clone(), Some(o.secret.clone())),
                None => {
                    let secret = match &connection.credentials {
                        Some(reference) => Some(
                            CredentialSource::parse(reference)
                                .and_then(|source| source.resolve())
                                .map_err(|source| ExecError::Credential { connection: connection.name.clone(), source })?,
                        ),
                        None => None,
                    };
                    (connection.base_url.clone().unwrap_or_else(|| manifest.default_base_url.clone()), secret)
                }
            };
            // Deny by default: a host is allowed only if the plugin declares it and the workflow grants it.
            let extra: Vec<String> = manifest.extra_hosts.iter().filter(|h| connection.allow_hosts.contains(h)).cloned().collect();
            let limiter = self.limiters.limiter(&manifest.name, secret.as_ref(), &manifest.rate_limits, &connection.rate_limits);
            let http = ConnectionHttp::new(
                crate::http::shared_client(),
                &base_url,
                &extra,
                secret.map(|s| (manifest.auth.clone(), s)),
                self.http_limits.clone(),
                Arc::new(LimitedPolicy::new(limiter, self.retry.clone())),
            )
            .map_err(|source| ExecError::Http { connection: connection.name.clone(), source })?;
            let context = CallContext { base_url: http.base_url(), settings: connection.settings.clone() };
            live.insert(connection.name.clone(), Live { plugin, http: Arc::new(http), context });
        }
        Ok(live)
    }

    /// Runs a workflow to the end and returns its summary.
    pub async fn run(
        &self,
        workflow: &Workflow,
        overrides: &BTreeMap<String, ConnectionOverride>,
        observer: &dyn Observer,
    ) -> Result<RunSummary, ExecError> {
        let started = Instant::now();
        let live = self.connect(workflow, overrides).await?;
        let mut run = RunRecord {
            id: self.store.new_run_id()?,
            workflow: workflow.name.clone(),
            workflow_hash: workflow.hash.clone(),
            workflow_text: workflow.text.clone(),
            workflow_path: workflow.path.display().to_string(),
            inputs: serde_json::json!({}),
            status: Status::Running,
            created_ms: now_ms(),
            finished_ms: None,
            error: None,
        };
        let step_ids: Vec<String> = workflow.steps.iter().map(|s| s.id.clone()).collect();
        self.store.create_run(&run, &step_ids).await?;

        let mut summaries = Vec::new();
        for (index, step) in workflow.steps.iter().enumerate() {
            let mut state = StepState::pending(&step.id, index as u32);
            if run.status != Status::Running {
                summaries.push(summary(step, &state, 0));
                continue;
            }
            observer.step_started(step);
            tracing::info!(run = %run.id, step = %step.id, op = %step.action.op(), target = %step.target(), "step started");
            let step_started = Instant::now();
            state.status = Status::Running;
            state.attempts = 1;
            state.started_ms = Some(now_ms());
            self.store.commit_step(&run.id, &state).await?;

            // `connect` made a Live for every connection the workflow names,
            // and parsing refused steps naming any other.
            let outcome = match live.get(&step.connection) {
                Some(conn) => self.execute(&run.id, step, conn, &mut state, observer).await,
                None => Err(format!("connection {:?} is not defined", step.connection)),
            };
            state.finished_ms = Some(now_ms());
            match outcome {
                Ok(()) => state.status = Status::Succeeded,
                Err(message) => {
                    state.status = Status::Failed;
                    state.error = Some(message.clone());
                    run.status = Status::Failed;
                    run.error = Some(format!("step {:?} failed: {message}", step.id));
                }
            }
            self.store.commit_step(&run.id, &state).await?;
            tracing::info!(run = %run.id, step = %step.id, status = state.status.as_str(), error = state.error.as_deref(), "step finished");
            let s = summary(step, &state, step_started.elapsed().as_millis() as u64);
            observer.step_finished(step, &state, &s);
            summaries.push(s);
        }
        if run.status == Status::Running {
            run.status = Status::Succeeded;
        }
        run.finished_ms = Some(now_ms());
        self.store.commit_run(&run).await?;
        Ok(RunSummary {
            run_id: run.id,
            workflow: run.workflow,
            workflow_hash: run.workflow_hash,
            status: run.status,
            duration_ms: started.elapsed().as_millis() as u64,
            steps: summaries,
            connections: live.iter().map(|(name, l)| (name.clone(), l.http.stats().snapshot())).collect(),
            error: run.error,
        })
    }

    /// Runs one step; the error is the message recorded for the step.
    async fn execute(&self, run: &str, step: &Step, conn: &Live, state: &mut StepState, observer: &dyn Observer) -> Result<(), String> {
        let resource = conn.plugin.manifest().resource(&step.resource).cloned().ok_or_else(|| format!("no resource {}", step.target()))?;
        match &step.action {
            Action::List { page_size, limit, filter, output } => {
                let page_size = page_size.unwrap_or(resource.default_page_size).clamp(1, resource.max_page_size.max(1));
                let mut sink = match output {
                    Some(path) => Some(open_output(path)?),
                    None => None,
                };
                let filter = filter.as_ref().map(|f| f.to_string());
                loop {
                    let wanted = match limit {
                        Some(limit) if state.counts.read >= *limit => break,
                        Some(limit) => page_size.min((limit - state.counts.read).min(u64::from(u32::MAX)) as u32),
                        None => page_size,
                    };
                    let request = ListRequest { resource: step.resource.clone(), cursor: state.cursor.clone(), page_size: wanted, filter: filter.clone() };
                    let page = conn.plugin.list(&conn.http, conn.context.clone(), request).await.map_err(|e| e.to_string())?;
                    if page.next_cursor.is_some() && page.next_cursor == state.cursor {
                        return Err(format!("plugin {} returned the cursor it was given; stopping to avoid an endless list", conn.plugin.name()));
                    }
                    let mut array = String::with_capacity(page.records.iter().map(|r| r.len() + 1).sum::<usize>() + 2);
                    array.push('[');
                    array.push_str(&page.records.join(","));
                    array.push(']');
                    if let Some((file, path)) = sink.as_mut() {
                        for record in &page.records {
                            writeln!(file, "{record}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                        }
                    }
                    state.counts.read += page.records.len() as u64;
                    state.pages += 1;
                    state.cursor = page.next_cursor;
                    self.store.commit_page(run, state, &array).await.map_err(|e| e.to_string())?;
                    observer.page_committed(step, state.counts.read);
                    if state.cursor.is_none() {
                        break;
                    }
                }
                if let Some((file, path)) = sink.as_mut() {
                    file.flush().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                Ok(())
            }
            Action::Get { key } => {
                let record = conn.plugin.get(&conn.http, conn.context.clone(), &step.resource, key).await.map_err(|e| e.to_string())?;
                state.output = Some(match record {
                    Some(text) => {
                        state.counts.read = 1;
                        parse_record(&text, conn.plugin.name(), "get")?
                    }
                    None => serde_json::Value::Null,
                });
                Ok(())
            }
            Action::Upsert { record } => {
                let request = UpsertRequest {
                    resource: step.resource.clone(),
                    record: record.to_string(),
                    idempotency_key: idempotency_key(run, &step.id, 0),
                };
                let outcome = conn.plugin.upsert(&conn.http, conn.context.clone(), request).await.map_err(|e| e.to_string())?;
                match outcome.action {
                    UpsertAction::Created => state.counts.created += 1,
                    UpsertAction::Updated => state.counts.updated += 1,
                    UpsertAction::Unchanged => state.counts.unchanged += 1,
                }
                state.output = Some(serde_json::json!({
                    "action": outcome.action,
                    "record": parse_record(&outcome.record, conn.plugin.name(), "upsert")?,
                }));
                Ok(())
            }
            Action::Remove { key } => {
                let outcome = conn.plugin.remove(&conn.http, conn.context.clone(), &step.resource, key).await.map_err(|e| e.to_string())?;
                match outcome {
                    RemoveOutcome::Removed => state.counts.removed += 1,
                    RemoveOutcome::AlreadyAbsent => state.counts.absent += 1,
                }
                state.output = Some(serde_json::json!({ "outcome": outcome, "id": key }));
                Ok(())
            }
        }
    }
}

fn open_output(path: &PathBuf) -> Result<(std::io::BufWriter<std::fs::File>, PathBuf), String> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    Ok((std::io::BufWriter::new(file), path.clone()))
}

fn parse_record(text: &str, plugin: &str, op: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("plugin {plugin}: {op} returned a record that is not JSON: {e}"))
}

/// The idempotency key of one write: derived from run, step and item, so a
/// step replayed after a crash sends the same key and the vendor does not
/// write twice.
pub fn idempotency_key(run: &str, step: &str, item: u64) -> String {
    let digest = Sha256::digest(format!("{run}\u{1f}{step}\u{1f}{item}").as_bytes());
    format!("weft-{}", hex::encode(&digest[..16]))
}

fn summary(step: &Step, state: &StepState, duration_ms: u64) -> StepSummary {
    StepSummary {
        id: step.id.clone(),
        op: step.action.op(),
        target: step.target(),
        status: state.status,
        counts: state.counts,
        attempts: state.attempts,
        duration_ms,
        output: state.output.clone(),
        error: state.error.clone(),
    }
}
