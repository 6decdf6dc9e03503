//! `weft serve`: runs workflows on their cron schedules and webhooks,
//! resumes unfinished runs at start, and answers a small status API, all
//! on one HTTP server bound to loopback unless told otherwise.
//!
//! Routes:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /healthz` | `{"status": "ok", "workflows": N, "active_runs": N}` |
//! | `GET /api/workflows` | each workflow, its triggers, next firing, skipped firings |
//! | `POST /api/workflows/{name}/runs` | starts a run; the JSON body is its inputs; `?dry_run=true` |
//! | `GET /api/runs` | runs, newest first (`?limit=N`, `?workflow=NAME`) |
//! | `GET /api/runs/{id}` | one run with its steps |
//! | `POST /api/runs/{id}/cancel` | asks a run to stop at the next page or item |
//! | `POST /api/runs/{id}/resume` | resumes an interrupted run |
//! | `POST /hooks/{name}` | a signed webhook delivery; the event becomes the inputs |
//!
//! On SIGTERM or ctrl-c the server stops accepting, the schedules stop,
//! every run stops taking new work, in-flight calls finish (or time out),
//! what they did is committed, and the process exits; the runs stay
//! `running` in the store and the next `weft serve` resumes them.

pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::credentials::{CredentialSource, Secret};
use crate::executor::{ExecError, Executor, Observer, RunOptions, StepSummary, StopSignal};
use crate::store::{RunRecord, StepState, now_ms};
use crate::workflow::{Overlap, Step, Workflow};

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A workflow does not fit its plugins.
    #[error("workflow {workflow}: {source}")]
    Workflow {
        /// The workflow's file.
        workflow: String,
        /// Why.
        source: ExecError,
    },
    /// Two workflows have one name (one webhook path).
    #[error("two workflows are named {0:?}; names must be unique (they are the webhook path)")]
    DuplicateName(String),
    /// A webhook secret could not be read.
    #[error("workflow {workflow}: webhook secret: {source}")]
    Secret {
        /// The workflow.
        workflow: String,
        /// Why.
        source: crate::credentials::CredentialError,
    },
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where to listen; loopback by default.
    pub bind: SocketAddr,
    /// The workflows to serve.
    pub workflows: Vec<Workflow>,
    /// How long in-flight calls get to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Where to write the server's address, so `weft runs …` finds it
    /// while the server holds the store.
    pub address_file: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workflows: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            address_file: None,
        }
    }
}

struct Served {
    workflow: Arc<Workflow>,
    webhook_secret: Option<Secret>,
    skipped_firings: AtomicU64,
    fired: AtomicU64,
}

struct Active {
    workflow: String,
    stop: StopSignal,
}

/// The server's shared state.
struct Server {
    executor: Arc<Executor>,
    workflows: BTreeMap<String, Served>,
    active: Mutex<HashMap<String, Active>>,
    tasks: Mutex<JoinSet<()>>,
    shutdown: CancellationToken,
}

/// A running server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Stops it as SIGTERM would, and waits until it has.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.handle.await;
    }

    /// Waits until it stops (after `shutdown_token().cancel()`).
    pub async fn wait(self) {
        let _ = self.handle.await;
    }

    /// The token that stops it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Logs progress of served runs.
struct Logging;

impl Observer for Logging {
    fn run_started(&self, run: &RunRecord) {
        tracing::info!(run = %run.id, workflow = %run.workflow, trigger = %run.trigger, resumes = run.resumes, "run started");
    }

    fn step_finished(&self, step: &Step, state: &StepState, _summary: &StepSummary) {
        tracing::info!(step = %step.id, status = state.status.as_str(), error = state.error.as_deref(), "step finished");
    }
}

/// Starts serving: checks every workflow, binds, resumes unfinished runs,
/// starts the schedules.
pub async fn start(executor: Executor, config: ServeConfig) -> Result<RunningServer, ServeError> {
    let mut workflows = BTreeMap::new();
    let mut largest_body = 1usize << 20;
    for workflow in config.workflows {
        executor.check(&workflow).await.map_err(|source| ServeError::Workflow { workflow: workflow.path.display().to_string(), source })?;
        let webhook_secret = match &workflow.trigger.webhook {
            Some(hook) => {
                largest_body = largest_body.max(hook.max_body_bytes);
                let secret = CredentialSource::parse(&hook.secret)
                    .and_then(|s| s.resolve())
                    .map_err(|source| ServeError::Secret { workflow: workflow.name.clone(), source })?;
                Some(secret)
            }
            None => None,
        };
        let name = workflow.name.clone();
        let served = Served { workflow: Arc::new(workflow), webhook_secret, skipped_firings: AtomicU64::new(0), fired: AtomicU64::new(0) };
        if workflows.insert(name.clone(), served).is_some() {
            return Err(ServeError::DuplicateName(name));
        }
    }
    let listener = tokio::net::TcpListener::bind(config.bind).await.map_err(|source| ServeError::Bind { addr: config.bind, source })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.bind, source })?;
    let shutdown = CancellationToken::new();
    let server = Arc::new(Server {
        executor: Arc::new(executor),
        workflows,
        active: Mutex::default(),
        tasks: Mutex::new(JoinSet::new()),
        shutdown: shutdown.clone(),
    });
    if let Some(path) = &config.address_file
        && let Err(e) = std::fs::write(path, serde_json::json!({ "addr": addr.to_string(), "pid": std::process::id() }).to_string())
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the server's address file");
    }

    for run in server.executor.store().unfinished_runs()? {
        tracing::info!(run = %run.id, workflow = %run.workflow, "resuming an unfinished run");
        server.clone().spawn_resume(run.id).await;
    }
    let mut schedules = JoinSet::new();
    for served in server.workflows.values() {
        if served.workflow.trigger.cron.is_some() {
            schedules.spawn(server.clone().schedule(served.workflow.name.clone()));
        }
        if served.workflow.trigger.webhook.is_some() {
            schedules.spawn(server.clone().forget_old_signatures(served.workflow.name.clone()));
        }
    }

    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/api/workflows", get(list_workflows))
        .route("/api/workflows/{name}/runs", post(start_run))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/resume", post(resume_run))
        .route("/hooks/{name}", post(webhook))
        .layer(DefaultBodyLimit::max(largest_body))
        .with_state(server.clone());

    let grace = config.shutdown_grace;
    let address_file = config.address_file.clone();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        let serving = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the HTTP server failed");
        }
        token.cancel();
        schedules.shutdown().await;
        server.stop_runs(grace).await;
        if let Some(path) = address_file {
            let _ = std::fs::remove_file(path);
        }
    });
    Ok(RunningServer { addr, shutdown, handle })
}

impl Server {
    /// Tells every run to stop taking work and waits for them, at most
    /// `grace`.
    async fn stop_runs(&self, grace: Duration) {
        for active in self.active.lock().await.values() {
            active.stop.shutdown.cancel();
        }
        let mut tasks = std::mem::take(&mut *self.tasks.lock().await);
        let drained = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(grace_secs = grace.as_secs(), "runs did not stop within the grace period; they resume at the next start");
            tasks.abort_all();
        }
    }

    async fn workflow_running(&self, name: &str) -> bool {
        self.active.lock().await.values().any(|a| a.workflow == name)
    }

    /// Runs a recorded run in the background.
    async fn spawn_execute(self: Arc<Self>, workflow: Arc<Workflow>, run: RunRecord, options: RunOptions) {
        let stop = options.stop.clone();
        self.active.lock().await.insert(run.id.clone(), Active { workflow: workflow.name.clone(), stop });
        let server = self.clone();
        self.tasks.lock().await.spawn(async move {
            let id = run.id.clone();
            match server.executor.execute(&workflow, run, &options, &Logging).await {
                Ok(summary) => tracing::info!(run = %summary.run_id, status = summary.status.as_str(), error = summary.error.as_deref(), "run ended"),
                Err(e) => tracing::error!(run = %id, error = %e, "run could not go on"),
            }
            server.active.lock().await.remove(&id);
        });
    }

    async fn spawn_resume(self: Arc<Self>, run_id: String) {
        let stop = StopSignal::default();
        let server = self.clone();
        let Ok(record) = self.executor.store().run(&run_id) else { return };
        self.active.lock().await.insert(run_id.clone(), Active { workflow: record.workflow.clone(), stop: stop.clone() });
        self.tasks.lock().await.spawn(async move {
            let options = RunOptions { stop, ..RunOptions::default() };
            match server.executor.resume(&run_id, &options, &Logging).await {
                Ok(summary) => tracing::info!(run = %summary.run_id, status = summary.status.as_str(), "resumed run ended"),
                Err(e) => tracing::error!(run = %run_id, error = %e, "run could not be resumed"),
            }
            server.active.lock().await.remove(&run_id);
        });
    }

    /// Creates and starts a run of a served workflow.
    async fn start(self: Arc<Self>, name: &str, options: RunOptions) -> Result<RunRecord, ExecError> {
        let Some(served) = self.workflows.get(name) else {
            return Err(ExecError::Inputs { workflow: name.to_owned(), problems: vec!["no such workflow".into()] });
        };
        let workflow = served.workflow.clone();
        let run = self.executor.create(&workflow, &options).await?;
        self.clone().spawn_execute(workflow, run.clone(), options).await;
        Ok(run)
    }

    /// The cron loop of one workflow.
    async fn schedule(self: Arc<Self>, name: String) {
        let Some(served) = self.workflows.get(&name) else { return };
        let Some(cron) = served.workflow.trigger.cron.clone() else { return };
        if cron.catch_up && self.missed_a_firing(&name, &cron) {
            tracing::info!(workflow = %name, "a scheduled run was missed while weft was down; running it once now");
            self.clone().fire(&name, cron.overlap).await;
        }
        loop {
            let now = chrono::Utc::now();
            let Some(next) = cron.next_after(now) else {
                tracing::info!(workflow = %name, "the cron schedule has no further firings");
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            // After a long sleep (a suspended machine), fire once, never
            // a burst for every firing missed.
            self.clone().fire(&name, cron.overlap).await;
        }
    }

    fn missed_a_firing(&self, name: &str, cron: &crate::workflow::CronTrigger) -> bool {
        let Ok(runs) = self.executor.store().runs() else { return false };
        let Some(last) = runs.iter().rev().find(|r| r.workflow == name && r.trigger == "cron") else { return false };
        let Some(last_at) = chrono::DateTime::from_timestamp_millis(last.created_ms as i64) else { return false };
        cron.next_after(last_at).is_some_and(|due| due < chrono::Utc::now())
    }

    async fn fire(self: Arc<Self>, name: &str, overlap: Overlap) {
        let Some(served) = self.workflows.get(name) else { return };
        if overlap == Overlap::Skip && self.workflow_running(name).await {
            let skipped = served.skipped_firings.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(workflow = %name, skipped, "previous run still going; skipping this firing");
            return;
        }
        served.fired.fetch_add(1, Ordering::Relaxed);
        let options = RunOptions { trigger: "cron".into(), ..RunOptions::default() };
        if let Err(e) = self.clone().start(name, options).await {
            tracing::error!(workflow = %name, error = %e, "scheduled run could not start");
        }
    }

    /// Drops remembered webhook signatures once past any tolerance window.
    async fn forget_old_signatures(self: Arc<Self>, name: String) {
        let Some(tolerance) = self.workflows.get(&name).and_then(|s| s.workflow.trigger.webhook.as_ref()).map(|h| h.tolerance) else { return };
        // A signature without a signed timestamp (plain HMAC) could be
        // replayed any time; keep those a day at least.
        let keep = tolerance.max(Duration::from_secs(86_400)).saturating_mul(2);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            let before = now_ms().saturating_sub(keep.as_millis() as u64);
            if let Err(e) = self.executor.store().forget_signatures(&name, before) {
                tracing::warn!(workflow = %name, error = %e, "cannot prune webhook signatures");
            }
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

async fn healthz(State(server): State<Arc<Server>>) -> Response {
    let active = server.active.lock().await.len();
    Json(serde_json::json!({ "status": "ok", "workflows": server.workflows.len(), "active_runs": active })).into_response()
}

#[derive(Serialize)]
struct WorkflowInfo {
    name: String,
    description: String,
    path: String,
    hash: String,
    cron: Option<String>,
    next_firing: Option<String>,
    webhook: Option<String>,
    fired: u64,
    skipped_firings: u64,
}

async fn list_workflows(State(server): State<Arc<Server>>) -> Response {
    let rows: Vec<WorkflowInfo> = server
        .workflows
        .values()
        .map(|s| {
            let w = &s.workflow;
            WorkflowInfo {
                name: w.name.clone(),
                description: w.description.clone(),
                path: w.path.display().to_string(),
                hash: w.hash.clone(),
                cron: w.trigger.cron.as_ref().map(|c| c.expression.clone()),
                next_firing: w.trigger.cron.as_ref().and_then(|c| c.next_after(chrono::Utc::now())).map(|t| t.to_rfc3339()),
                webhook: w.trigger.webhook.as_ref().map(|_| format!("/hooks/{}", w.name)),
                fired: s.fired.load(Ordering::Relaxed),
                skipped_firings: s.skipped_firings.load(Ordering::Relaxed),
            }
        })
        .collect();
    Json(rows).into_response()
}

#[derive(Deserialize)]
struct StartQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn start_run(State(server): State<Arc<Server>>, Path(name): Path<String>, Query(query): Query<StartQuery>, body: Bytes) -> Response {
    if !server.workflows.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no workflow named {name:?} is served here"));
    }
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let options = RunOptions { inputs, dry_run: query.dry_run, trigger: "api".into(), ..RunOptions::default() };
    match server.clone().start(&name, options).await {
        Ok(run) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": run.id }))).into_response(),
        Err(ExecError::Inputs { problems, .. }) => error(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; ")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn parse_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

#[derive(Deserialize)]
struct RunsQuery {
    limit: Option<usize>,
    workflow: Option<String>,
}

/// A run as the API and `weft runs` show it (the workflow text stays in
/// the store).
pub fn run_json(run: &RunRecord) -> Value {
    serde_json::json!({
        "id": run.id,
        "workflow": run.workflow,
        "workflow_hash": run.workflow_hash,
        "workflow_path": run.workflow_path,
        "status": run.status,
        "trigger": run.trigger,
        "dry_run": run.dry_run,
        "inputs": run.inputs,
        "created_ms": run.created_ms,
        "finished_ms": run.finished_ms,
        "resumes": run.resumes,
        "cancel_requested": run.cancel_requested,
        "error": run.error,
    })
}

async fn list_runs(State(server): State<Arc<Server>>, Query(query): Query<RunsQuery>) -> Response {
    match server.executor.store().runs() {
        Ok(mut runs) => {
            runs.reverse();
            let rows: Vec<Value> = runs
                .iter()
                .filter(|r| query.workflow.as_ref().is_none_or(|w| &r.workflow == w))
                .take(query.limit.unwrap_or(50))
                .map(run_json)
                .collect();
            Json(rows).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let store = server.executor.store();
    match (store.run(&id), store.steps(&id)) {
        (Ok(run), Ok(steps)) => {
            let mut value = run_json(&run);
            value["steps"] = serde_json::to_value(&steps).unwrap_or(Value::Null);
            value["active"] = Value::Bool(server.active.lock().await.contains_key(&id));
            Json(value).into_response()
        }
        (Err(crate::store::StoreError::UnknownRun(_)), _) => error(StatusCode::NOT_FOUND, format!("no run with id {id}")),
        (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn cancel_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    if let Some(active) = server.active.lock().await.get(&id) {
        active.stop.cancel.cancel();
        return (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": id, "status": "cancelling" }))).into_response();
    }
    match server.executor.cancel_idle(&id).await {
        Ok(run) => Json(serde_json::json!({ "run_id": id, "status": run.status })).into_response(),
        Err(ExecError::Store(crate::store::StoreError::UnknownRun(_))) => error(StatusCode::NOT_FOUND, format!("no run with id {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn resume_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    if server.active.lock().await.contains_key(&id) {
        return error(StatusCode::CONFLICT, format!("run {id} is already running here"));
    }
    match server.executor.store().run(&id) {
        Ok(run) if run.status.is_finished() => error(StatusCode::CONFLICT, format!("run {id} is {} and cannot be resumed", run.status.as_str())),
        Ok(_) => {
            server.clone().spawn_resume(id.clone()).await;
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": id, "status": "resuming" }))).into_response()
        }
        Err(crate::store::StoreError::UnknownRun(_)) => error(StatusCode::NOT_FOUND, format!("no run with id {id}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn webhook(State(server): State<Arc<Server>>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(served) = server.workflows.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no workflow named {name:?} takes webhooks here"));
    };
    let (Some(hook), Some(secret)) = (&served.workflow.trigger.webhook, &served.webhook_secret) else {
        return error(StatusCode::NOT_FOUND, format!("workflow {name:?} has no webhook trigger"));
    };
    if body.len() > hook.max_body_bytes {
        return error(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is {} bytes; this webhook takes at most {}", body.len(), hook.max_body_bytes));
    }
    let header = |wanted: &str| headers.get(wanted).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let now = (now_ms() / 1000) as i64;
    let verified = match webhook::verify(&hook.verify, header, &body, secret.expose().as_bytes(), now, hook.tolerance) {
        Ok(v) => v,
        Err(rejection) => {
            tracing::warn!(workflow = %name, reason = %rejection, "webhook refused");
            let status = match rejection {
                webhook::Rejection::BadSignature | webhook::Rejection::Missing(_) => StatusCode::UNAUTHORIZED,
                webhook::Rejection::Stale { .. } | webhook::Rejection::Malformed { .. } => StatusCode::BAD_REQUEST,
            };
            return error(status, rejection.to_string());
        }
    };
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match server.executor.store().remember_signature(&name, &verified.signature, now_ms()).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(workflow = %name, "webhook replay refused");
            return error(StatusCode::CONFLICT, "this delivery was already received (same signature); a replay starts nothing");
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let options = RunOptions { inputs, open_inputs: true, trigger: "webhook".into(), ..RunOptions::default() };
    match server.clone().start(&name, options).await {
        Ok(run) => (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": run.id }))).into_response(),
        Err(ExecError::Inputs { problems, .. }) => error(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; ")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
