//! `weft serve`: runs workflows on their cron schedules and webhooks,
//! resumes unfinished runs at start, and answers a small status API, all
//! on one HTTP server bound to loopback unless told otherwise.
//!
//! Routes:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /healthz` | `{"status": "ok", "workflows": N, "active_runs": N, "max_runs": N}`; always answers |
//! | `GET /api/workflows` | each workflow, its triggers, next firing, skipped firings |
//! | `POST /api/workflows/{name}/runs` | starts a run; the JSON body is its inputs; `?dry_run=true` |
//! | `GET /api/runs` | runs, newest first (`?limit=N`, `?workflow=NAME`) |
//! | `GET /api/runs/{id}` | one run with its steps |
//! | `POST /api/runs/{id}/cancel` | asks a run to stop at the next page or item |
//! | `POST /api/runs/{id}/resume` | resumes an interrupted run |
//! | `POST /hooks/{name}` | a signed webhook delivery; the event becomes the inputs |
//!
//! The API answers only requests meant for it, since any web page the
//! operator opens can send requests to loopback: a `Host` other than the
//! bound address (or the `public_url`) gets 421 (a DNS-rebinding page sends
//! its own name), an `Origin` of another site gets 403, and a POST must say
//! `Content-Type: application/json`, which a cross-site form cannot send
//! (415). Webhooks are exempt: their senders are other sites by nature, and
//! a signature proves each delivery. The API takes bodies of 64 KiB at
//! most; each webhook its own `max_body_bytes`. The server refuses to bind
//! an address other machines can reach unless told to (`allow_remote`):
//! the API has no tokens yet.
//!
//! Runs go through admission control: at most `max_runs` are started and
//! not finished (queued or running), and at most `max_concurrent_runs` of
//! them run at once. A start beyond that (API, webhook or cron firing) is
//! refused at once, with 503 and `Retry-After` for HTTP, never queued
//! without bound or left hanging. Each run is a task of its own; when it
//! ends, however it ends, it leaves the set of active runs. A run whose
//! task panics is marked failed with "internal error" (and the panic is
//! logged); the server goes on.
//!
//! On SIGTERM or ctrl-c the server stops accepting, the schedules stop,
//! every run stops taking new work, in-flight calls finish (or time out),
//! what they did is committed, and the process exits; the runs stay
//! `running` in the store and the next `weft serve` resumes them.

pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::credentials::{CredentialSource, Secret};
use crate::endpoint::Endpoint;
use crate::executor::{ExecError, Executor, Observer, RunOptions, StepSummary, StopSignal};
use crate::store::{Delivery, RunRecord, RunTrigger, Status, StepState, StoreError, now_ms};
use crate::workflow::{Overlap, Step, Verify, Workflow};

/// The largest body an API route takes: inputs, not payloads.
pub const API_BODY_LIMIT: usize = 64 << 10;

/// What a refused start tells the client to wait before it tries again.
const RETRY_AFTER_SECS: u64 = 1;

/// How long a start waits for the run store before it answers 503.
const STORE_ANSWER: Duration = Duration::from_secs(10);

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
    /// The address is reachable from other machines and nobody said so.
    #[error(
        "refusing to listen on {addr}: other machines can reach it, and the status API has no authentication yet (tokens come with the console); \
         bind to 127.0.0.1 (the default), or pass --allow-remote (WEFT_ALLOW_REMOTE=1) to serve there anyway, behind a proxy that authenticates"
    )]
    Remote {
        /// The address.
        addr: SocketAddr,
    },
    /// A setting that cannot work.
    #[error("{0}")]
    Config(String),
    /// The run store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How to serve.
#[derive(Clone)]
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
    /// The URL the server is reached at when that is not its bound address
    /// (a DNS name, a proxy): its host is accepted in `Host` and `Origin`.
    pub public_url: Option<url::Url>,
    /// Listen on an address other machines can reach (anything but
    /// loopback). Off by default: the API has no authentication yet.
    pub allow_remote: bool,
    /// Runs started and not finished, at most (queued or running); a start
    /// beyond that is refused with 503.
    pub max_runs: usize,
    /// Runs executing at once, at most; admitted runs beyond that wait.
    pub max_concurrent_runs: usize,
    /// Connections replaced by endpoints of the caller's in every run
    /// (benchmarks and tests: a native connector), by connection name.
    pub endpoints: BTreeMap<String, Arc<dyn Endpoint>>,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("bind", &self.bind)
            .field("workflows", &self.workflows.iter().map(|w| &w.name).collect::<Vec<_>>())
            .field("shutdown_grace", &self.shutdown_grace)
            .field("public_url", &self.public_url.as_ref().map(url::Url::as_str))
            .field("allow_remote", &self.allow_remote)
            .field("max_runs", &self.max_runs)
            .field("max_concurrent_runs", &self.max_concurrent_runs)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            workflows: Vec::new(),
            shutdown_grace: Duration::from_secs(30),
            address_file: None,
            public_url: None,
            allow_remote: false,
            max_runs: 256,
            max_concurrent_runs: 32,
            endpoints: BTreeMap::new(),
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

/// A run's work, handed to the task set.
struct RunTask {
    run_id: String,
    work: BoxFuture<'static, ()>,
}

/// The server's shared state.
struct Server {
    executor: Arc<Executor>,
    workflows: BTreeMap<String, Served>,
    /// Runs admitted and not yet ended, by id. A run leaves it when its
    /// task ends, however it ends.
    active: Mutex<HashMap<String, Active>>,
    /// A permit per run started and not finished.
    admission: Arc<Semaphore>,
    max_runs: usize,
    /// A permit per run executing.
    execution: Arc<Semaphore>,
    /// Where run tasks go to be spawned and reaped.
    tasks: mpsc::UnboundedSender<RunTask>,
    endpoints: BTreeMap<String, Arc<dyn Endpoint>>,
    hosts: Hosts,
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

/// The text of a panic's payload, for the log and the run's error.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Starts serving: checks every workflow, binds, resumes unfinished runs,
/// starts the schedules.
pub async fn start(executor: Executor, config: ServeConfig) -> Result<RunningServer, ServeError> {
    if !config.bind.ip().is_loopback() && !config.allow_remote {
        return Err(ServeError::Remote { addr: config.bind });
    }
    if config.max_runs == 0 || config.max_concurrent_runs == 0 {
        return Err(ServeError::Config(
            "max_runs and max_concurrent_runs must be at least 1".into(),
        ));
    }
    let mut workflows = BTreeMap::new();
    for workflow in config.workflows {
        check(&executor, &workflow, &config.endpoints).await.map_err(|source| {
            ServeError::Workflow { workflow: workflow.path.display().to_string(), source }
        })?;
        let webhook_secret = match &workflow.trigger.webhook {
            Some(hook) => {
                let secret =
                    CredentialSource::parse(&hook.secret).and_then(|s| s.resolve()).map_err(
                        |source| ServeError::Secret { workflow: workflow.name.clone(), source },
                    )?;
                Some(secret)
            }
            None => None,
        };
        let name = workflow.name.clone();
        let served = Served {
            workflow: Arc::new(workflow),
            webhook_secret,
            skipped_firings: AtomicU64::new(0),
            fired: AtomicU64::new(0),
        };
        if workflows.insert(name.clone(), served).is_some() {
            return Err(ServeError::DuplicateName(name));
        }
    }
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| ServeError::Bind { addr: config.bind, source })?;
    let addr =
        listener.local_addr().map_err(|source| ServeError::Bind { addr: config.bind, source })?;
    let shutdown = CancellationToken::new();
    let (tasks, spawned) = mpsc::unbounded_channel();
    let server = Arc::new(Server {
        executor: Arc::new(executor),
        workflows,
        active: Mutex::default(),
        admission: Arc::new(Semaphore::new(config.max_runs)),
        max_runs: config.max_runs,
        execution: Arc::new(Semaphore::new(config.max_concurrent_runs)),
        tasks,
        endpoints: config.endpoints,
        hosts: Hosts::new(addr, config.public_url.as_ref()),
        shutdown: shutdown.clone(),
    });
    let reaper = tokio::spawn(server.clone().reap(spawned, config.shutdown_grace));
    if let Some(path) = &config.address_file
        && let Err(e) = std::fs::write(
            path,
            serde_json::json!({ "addr": addr.to_string(), "pid": std::process::id() }).to_string(),
        )
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the server's address file");
    }

    let unfinished = match server.executor.store().unfinished_runs().await {
        Ok(runs) => runs,
        Err(e) => {
            // The reaper ends with the token; the store closes with it.
            shutdown.cancel();
            return Err(e.into());
        }
    };
    for run in unfinished {
        tracing::info!(run = %run.id, workflow = %run.workflow, "resuming an unfinished run");
        // Runs the last server admitted are admitted again, over the limit
        // if need be: they were promised.
        let admitted = server.admission.clone().try_acquire_owned().ok();
        server.launch_resume(run, admitted);
    }
    let mut schedules = JoinSet::new();
    for served in server.workflows.values() {
        if served.workflow.trigger.cron.is_some() {
            schedules.spawn(server.clone().schedule(served.workflow.name.clone()));
        }
        if served.workflow.trigger.webhook.is_some() {
            schedules.spawn(server.clone().forget_old_deliveries(served.workflow.name.clone()));
        }
    }

    let api = Router::new()
        .route("/api/workflows", get(list_workflows))
        .route("/api/workflows/{name}/runs", post(start_run))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/resume", post(resume_run))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(server.clone(), guard));
    let app = Router::new()
        .route("/healthz", get(healthz))
        // Each webhook reads its body up to its own limit.
        .route("/hooks/{name}", post(webhook))
        .merge(api)
        .with_state(server.clone());

    let address_file = config.address_file.clone();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        let serving =
            axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
        if let Err(e) = serving.await {
            tracing::error!(error = %e, "the HTTP server failed");
        }
        // Every run's stop signal is a child of this token: they all stop
        // taking work now.
        token.cancel();
        schedules.shutdown().await;
        let _ = reaper.await;
        drop(server);
        if let Some(path) = address_file {
            let _ = std::fs::remove_file(path);
        }
    });
    Ok(RunningServer { addr, shutdown, handle })
}

/// Loads a workflow's plugins (or takes the caller's endpoints) and checks
/// the workflow against their manifests.
async fn check(
    executor: &Executor,
    workflow: &Workflow,
    endpoints: &BTreeMap<String, Arc<dyn Endpoint>>,
) -> Result<(), ExecError> {
    if endpoints.is_empty() {
        return executor.check(workflow).await.map(|_| ());
    }
    let mut manifests = BTreeMap::new();
    for connection in workflow.connections.values() {
        let manifest = match endpoints.get(&connection.name) {
            Some(endpoint) => endpoint.manifest().clone(),
            None => executor.plugin(&connection.name, &connection.plugin).await?.manifest().clone(),
        };
        manifests.insert(connection.name.clone(), manifest);
    }
    workflow.check_against(&manifests).map_err(ExecError::Invalid)
}

impl Server {
    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Active>> {
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn workflow_running(&self, name: &str) -> bool {
        self.active().values().any(|a| a.workflow == name)
    }

    /// A slot for a new run, or `None` when `max_runs` are started and not
    /// finished.
    fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.admission.clone().try_acquire_owned().ok()
    }

    /// A stop signal that the server's shutdown reaches.
    fn stop_signal(&self) -> StopSignal {
        StopSignal { shutdown: self.shutdown.child_token(), cancel: CancellationToken::new() }
    }

    fn options(&self, mut options: RunOptions) -> RunOptions {
        options.stop = self.stop_signal();
        options.endpoints = self.endpoints.clone();
        options
    }

    /// Hands a run's work to the task set. The run counts as active from
    /// now until its task ends; it waits for an execution slot first.
    /// `false` when the run is active already or the server is stopping.
    fn launch(
        self: &Arc<Self>,
        run_id: String,
        workflow: String,
        stop: StopSignal,
        admitted: Option<OwnedSemaphorePermit>,
        work: BoxFuture<'static, ()>,
    ) -> bool {
        if self.shutdown.is_cancelled() {
            return false;
        }
        {
            let mut active = self.active();
            if active.contains_key(&run_id) {
                return false;
            }
            active.insert(run_id.clone(), Active { workflow, stop });
        }
        let server = self.clone();
        let work = Box::pin(async move {
            let _admitted = admitted;
            let _slot = tokio::select! {
                slot = server.execution.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
                // Stopped before its turn: it resumes at the next start.
                () = server.shutdown.cancelled() => return,
            };
            work.await;
        });
        if self.tasks.send(RunTask { run_id: run_id.clone(), work }).is_err() {
            self.active().remove(&run_id);
            return false;
        }
        true
    }

    fn launch_execute(
        self: &Arc<Self>,
        workflow: Arc<Workflow>,
        run: RunRecord,
        options: RunOptions,
        admitted: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let server = self.clone();
        let (id, name, stop) = (run.id.clone(), workflow.name.clone(), options.stop.clone());
        self.launch(
            id,
            name,
            stop,
            admitted,
            Box::pin(async move {
                let id = run.id.clone();
                match server.executor.execute(&workflow, run, &options, &Logging).await {
                    Ok(summary) => tracing::info!(run = %summary.run_id, status = summary.status.as_str(), error = summary.error.as_deref(), "run ended"),
                    Err(e) => server.could_not_go_on(&id, &e).await,
                }
            }),
        )
    }

    fn launch_resume(
        self: &Arc<Self>,
        run: RunRecord,
        admitted: Option<OwnedSemaphorePermit>,
    ) -> bool {
        let server = self.clone();
        let options = self.options(RunOptions::default());
        let (id, stop) = (run.id.clone(), options.stop.clone());
        self.launch(
            id.clone(),
            run.workflow,
            stop,
            admitted,
            Box::pin(async move {
                match server.executor.resume(&id, &options, &Logging).await {
                    Ok(summary) => tracing::info!(run = %summary.run_id, status = summary.status.as_str(), "resumed run ended"),
                    Err(e) => server.could_not_go_on(&id, &e).await,
                }
            }),
        )
    }

    /// Spawns run tasks as they come and reaps them as they end: a run
    /// leaves the active set when its task ends, and a run whose task
    /// panicked is marked failed. At shutdown, waits up to `grace` for the
    /// runs, then aborts the rest (they resume at the next start).
    async fn reap(
        self: Arc<Self>,
        mut incoming: mpsc::UnboundedReceiver<RunTask>,
        grace: Duration,
    ) {
        let mut tasks = JoinSet::new();
        let mut runs: HashMap<tokio::task::Id, String> = HashMap::new();
        loop {
            tokio::select! {
                task = incoming.recv() => match task {
                    Some(task) => {
                        let handle = tasks.spawn(task.work);
                        runs.insert(handle.id(), task.run_id);
                    }
                    None => break,
                },
                Some(ended) = tasks.join_next_with_id(), if !tasks.is_empty() => self.reaped(ended, &mut runs).await,
                () = self.shutdown.cancelled() => break,
            }
        }
        // Runs handed over while the server stopped see the shutdown at
        // once and end.
        incoming.close();
        while let Ok(task) = incoming.try_recv() {
            let handle = tasks.spawn(task.work);
            runs.insert(handle.id(), task.run_id);
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            match tokio::time::timeout_at(deadline, tasks.join_next_with_id()).await {
                Ok(Some(ended)) => self.reaped(ended, &mut runs).await,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        runs = tasks.len(),
                        "runs did not stop within the grace period; they resume at the next start"
                    );
                    tasks.abort_all();
                    while let Some(ended) = tasks.join_next_with_id().await {
                        self.reaped(ended, &mut runs).await;
                    }
                    break;
                }
            }
        }
    }

    /// A run's task ended.
    async fn reaped(
        &self,
        ended: Result<(tokio::task::Id, ()), tokio::task::JoinError>,
        runs: &mut HashMap<tokio::task::Id, String>,
    ) {
        let (task, failure) = match ended {
            Ok((task, ())) => (task, None),
            Err(e) => (e.id(), Some(e)),
        };
        let Some(run_id) = runs.remove(&task) else { return };
        match failure {
            Some(e) if e.is_panic() => {
                let message = panic_message(e.into_panic().as_ref());
                tracing::error!(run = %run_id, panic = %message, "a run's task panicked (a bug in weft); the run is marked failed and the server goes on");
                let error =
                    format!("internal error: {message} (a bug in weft; see the server's log)");
                if let Err(e) = self.executor.store().fail_run(&run_id, &error).await {
                    tracing::error!(run = %run_id, error = %e, "cannot mark the run failed; it resumes at the next start");
                }
            }
            Some(_) => {
                tracing::warn!(run = %run_id, "run stopped at the end of the grace period; it resumes at the next start")
            }
            None => {}
        }
        self.active().remove(&run_id);
    }

    /// A run stopped with an error of the executor's. One the store's
    /// damage caused meets the damage again at every resume: the run ends
    /// failed, saying what is damaged; any other stays to resume.
    async fn could_not_go_on(&self, id: &str, error: &ExecError) {
        tracing::error!(run = %id, error = %error, "run could not go on");
        if let ExecError::Store(store) = error
            && store.is_damage()
            && let Err(e) = self.executor.store().fail_run(id, &error.to_string()).await
        {
            tracing::error!(run = %id, error = %e, "cannot mark the run failed");
        }
    }

    /// Creates and starts a run of a served workflow.
    async fn start(
        self: &Arc<Self>,
        name: &str,
        options: RunOptions,
        admitted: Option<OwnedSemaphorePermit>,
    ) -> Result<RunRecord, ExecError> {
        let Some(served) = self.workflows.get(name) else {
            return Err(ExecError::Inputs {
                workflow: name.to_owned(),
                problems: vec!["no such workflow".into()],
            });
        };
        let workflow = served.workflow.clone();
        let options = self.options(options);
        let run = self.executor.create(&workflow, &options).await?;
        if !self.launch_execute(workflow, run.clone(), options, admitted) {
            tracing::info!(run = %run.id, "the server is stopping; the run is recorded and starts at the next start");
        }
        Ok(run)
    }

    /// The cron loop of one workflow.
    async fn schedule(self: Arc<Self>, name: String) {
        let Some(served) = self.workflows.get(&name) else { return };
        let Some(cron) = served.workflow.trigger.cron.clone() else { return };
        if cron.catch_up && self.missed_a_firing(&name, &cron).await {
            tracing::info!(workflow = %name, "a scheduled run was missed while weft was down; running it once now");
            self.fire(&name, cron.overlap).await;
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
            self.fire(&name, cron.overlap).await;
        }
    }

    async fn missed_a_firing(&self, name: &str, cron: &crate::workflow::CronTrigger) -> bool {
        let workflow = name.to_owned();
        let Ok(runs) = self
            .executor
            .store()
            .recent_runs(1, move |r| r.workflow == workflow && r.trigger == RunTrigger::Cron)
            .await
        else {
            return false;
        };
        let Some(last) = runs.first() else { return false };
        let Some(last_at) = chrono::DateTime::from_timestamp_millis(last.created_ms as i64) else {
            return false;
        };
        cron.next_after(last_at).is_some_and(|due| due < chrono::Utc::now())
    }

    async fn fire(self: &Arc<Self>, name: &str, overlap: Overlap) {
        let Some(served) = self.workflows.get(name) else { return };
        if overlap == Overlap::Skip && self.workflow_running(name) {
            let skipped = served.skipped_firings.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(workflow = %name, skipped, "previous run still going; skipping this firing");
            return;
        }
        let Some(admitted) = self.admit() else {
            let skipped = served.skipped_firings.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(workflow = %name, skipped, max_runs = self.max_runs, "the server has as many runs as it takes; skipping this firing");
            return;
        };
        let options = RunOptions { trigger: RunTrigger::Cron, ..RunOptions::default() };
        // Counted once its run exists: `fired` is the number of runs the
        // schedule started (a shutdown between the count and the run made
        // the two disagree).
        match self.start(name, options, Some(admitted)).await {
            Ok(_) => {
                served.fired.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(workflow = %name, error = %e, "scheduled run could not start");
            }
        }
    }

    /// Drops remembered webhook deliveries that a replay can no longer
    /// pass (their signed timestamp is past the tolerance). A scheme with
    /// no signed timestamp keeps every delivery: see
    /// [`crate::store::RunStore::forget_deliveries`].
    async fn forget_old_deliveries(self: Arc<Self>, name: String) {
        let Some(hook) = self.workflows.get(&name).and_then(|s| s.workflow.trigger.webhook.clone())
        else {
            return;
        };
        if matches!(hook.verify, Verify::HmacSha256 { timestamp_header: None, .. }) {
            return;
        }
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            if let Err(e) =
                self.executor.store().forget_deliveries(&name, hook.tolerance, now_ms()).await
            {
                tracing::warn!(workflow = %name, error = %e, "cannot prune webhook deliveries");
            }
        }
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// 503 with `Retry-After`: the server has as many runs as it takes.
fn busy(message: String) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": message, "retry_after_secs": RETRY_AFTER_SECS })),
    )
        .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

fn full(server: &Server) -> Response {
    busy(format!(
        "weft has {} runs started and not finished, as many as it takes (--max-runs); try again shortly",
        server.max_runs
    ))
}

/// The names the API answers to: the bound address, and the public URL.
#[derive(Debug, Clone)]
struct Hosts {
    bound: SocketAddr,
    /// Scheme, host (lower case) and port of the public URL.
    public: Option<(String, String, u16)>,
}

impl Hosts {
    fn new(bound: SocketAddr, public: Option<&url::Url>) -> Self {
        let public = public.and_then(|u| {
            Some((
                u.scheme().to_owned(),
                u.host_str()?.to_ascii_lowercase(),
                u.port_or_known_default()?,
            ))
        });
        Hosts { bound, public }
    }

    /// Whether `host` and `port` name this server: `scheme` is the
    /// origin's (`None` for a `Host` header, which carries none) and a
    /// missing port is the scheme's default. An IP address cannot be a
    /// DNS-rebinding name, so the bound IP (any, when bound to all) is
    /// accepted; of names, `localhost` on loopback and the public URL's host.
    fn names_us(&self, scheme: Option<&str>, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        if let Some((public_scheme, public_host, public_port)) = &self.public
            && *public_host == host
            && scheme.is_none_or(|s| s == public_scheme)
            && port.is_none_or(|p| p == *public_port)
        {
            return true;
        }
        if scheme.is_some_and(|s| s != "http") || port.unwrap_or(80) != self.bound.port() {
            return false;
        }
        let bound = self.bound.ip();
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => {
                bound.is_unspecified() || ip == bound || (ip.is_loopback() && bound.is_loopback())
            }
            Err(_) => host == "localhost" && (bound.is_loopback() || bound.is_unspecified()),
        }
    }

    fn described(&self) -> String {
        match &self.public {
            Some((scheme, host, port)) => {
                format!("http://{} or {scheme}://{host}:{port}", self.bound)
            }
            None => format!("http://{}", self.bound),
        }
    }

    /// Refuses a request not meant for this API: another `Host`, another
    /// site's `Origin`, or a POST that is not JSON.
    #[expect(clippy::result_large_err, reason = "the refusal is the response")]
    fn admit(&self, request: &Request) -> Result<(), Response> {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| request.uri().authority().map(|a| a.to_string()));
        let Some(host) = host else {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!("the request names no Host; this is {}", self.described()),
            ));
        };
        let named = host
            .parse::<axum::http::uri::Authority>()
            .is_ok_and(|a| self.names_us(None, a.host(), a.port_u16()));
        if !named {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host {host:?} is not this server ({}): weft answers only requests for its own address, as a page using DNS rebinding sends its own name; \
                     if weft is reached by another name, start it with --public-url",
                    self.described()
                ),
            ));
        }
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let text = origin.to_str().unwrap_or("(not text)");
            let ours = url::Url::parse(text).ok().is_some_and(|u| {
                u.host_str().is_some_and(|h| self.names_us(Some(u.scheme()), h, u.port()))
            });
            if !ours {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "a request from the web page at {text} is refused: the API takes requests from {} only",
                        self.described()
                    ),
                ));
            }
        }
        if request
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
        {
            return Err(error(
                StatusCode::FORBIDDEN,
                "a request a browser marks as cross-site is refused",
            ));
        }
        if request.method() == Method::POST {
            let content_type = request
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap_or("(not text)"));
            let json = content_type
                .and_then(|t| t.split(';').next())
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
            if !json {
                return Err(error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "a POST to the API must be Content-Type: application/json (this one is {}); a web form cannot send that",
                        content_type.unwrap_or("none")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The API's gate: see [`Hosts::admit`].
async fn guard(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    if let Err(refused) = server.hosts.admit(&request) {
        tracing::warn!(method = %request.method(), path = %request.uri().path(), status = refused.status().as_u16(), "API request refused");
        return refused;
    }
    next.run(request).await
}

async fn healthz(State(server): State<Arc<Server>>) -> Response {
    let active = server.active().len();
    Json(serde_json::json!({ "status": "ok", "workflows": server.workflows.len(), "active_runs": active, "max_runs": server.max_runs })).into_response()
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
                next_firing: w
                    .trigger
                    .cron
                    .as_ref()
                    .and_then(|c| c.next_after(chrono::Utc::now()))
                    .map(|t| t.to_rfc3339()),
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

/// Starts a run for a request, within admission control and a bound on
/// the store's answer.
async fn start_for_request(server: &Arc<Server>, name: &str, options: RunOptions) -> Response {
    let Some(admitted) = server.admit() else { return full(server) };
    match tokio::time::timeout(STORE_ANSWER, server.start(name, options, Some(admitted))).await {
        Err(_) => busy(format!(
            "the run store did not answer within {} s; nothing was started, try again shortly",
            STORE_ANSWER.as_secs()
        )),
        Ok(Ok(run)) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": run.id }))).into_response()
        }
        Ok(Err(ExecError::Inputs { problems, .. })) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; "))
        }
        Ok(Err(ExecError::Store(StoreError::Replay { .. }))) => {
            tracing::warn!(workflow = %name, "webhook replay refused");
            error(
                StatusCode::CONFLICT,
                "this delivery was already received (same signature); a replay starts nothing",
            )
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn start_run(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(query): Query<StartQuery>,
    body: Bytes,
) -> Response {
    if !server.workflows.contains_key(&name) {
        return error(StatusCode::NOT_FOUND, format!("no workflow named {name:?} is served here"));
    }
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let options = RunOptions {
        inputs,
        dry_run: query.dry_run,
        trigger: RunTrigger::Api,
        ..RunOptions::default()
    };
    start_for_request(&server, &name, options).await
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
/// the store): what `GET /api/runs` lists, and what `weft runs` reads back
/// from a running server to print.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunView {
    /// Run id.
    pub id: String,
    /// Workflow name.
    pub workflow: String,
    /// SHA-256 of the workflow text the run started with.
    pub workflow_hash: String,
    /// Where the workflow was loaded from.
    pub workflow_path: String,
    /// Status.
    pub status: Status,
    /// What started it.
    pub trigger: RunTrigger,
    /// Reads are real, writes are only planned.
    pub dry_run: bool,
    /// The run's inputs.
    pub inputs: Value,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// Unix milliseconds, when finished.
    pub finished_ms: Option<u64>,
    /// Times picked up again after an interruption.
    pub resumes: u32,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Why it failed.
    pub error: Option<String>,
}

impl From<&RunRecord> for RunView {
    fn from(run: &RunRecord) -> Self {
        RunView {
            id: run.id.clone(),
            workflow: run.workflow.clone(),
            workflow_hash: run.workflow_hash.clone(),
            workflow_path: run.workflow_path.clone(),
            status: run.status,
            trigger: run.trigger.clone(),
            dry_run: run.dry_run,
            inputs: run.inputs.clone(),
            created_ms: run.created_ms,
            finished_ms: run.finished_ms,
            resumes: run.resumes,
            cancel_requested: run.cancel_requested,
            error: run.error.clone(),
        }
    }
}

/// A run with its steps: what `GET /api/runs/ID` and `weft runs show`
/// show.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: RunView,
    /// Its steps, as the store holds them.
    pub steps: Vec<StepState>,
    /// Whether a task of this server is running it (only from a server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<bool>,
}

async fn list_runs(State(server): State<Arc<Server>>, Query(query): Query<RunsQuery>) -> Response {
    let workflow = query.workflow;
    match server
        .executor
        .store()
        .recent_runs(query.limit.unwrap_or(50), move |r| {
            workflow.as_ref().is_none_or(|w| *w == r.workflow)
        })
        .await
    {
        Ok(runs) => Json(runs.iter().map(RunView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let store = server.executor.store();
    match (store.run(&id).await, store.steps(&id).await) {
        (Ok(run), Ok(steps)) => Json(RunDetail {
            run: RunView::from(&run),
            steps,
            active: Some(server.active().contains_key(&id)),
        })
        .into_response(),
        (Err(StoreError::UnknownRun(_)), _) => {
            error(StatusCode::NOT_FOUND, format!("no run with id {id}"))
        }
        (Err(e), _) | (_, Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn cancel_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    if let Some(active) = server.active().get(&id) {
        active.stop.cancel.cancel();
        return (
            StatusCode::ACCEPTED,
            Json(serde_json::json!({ "run_id": id, "status": "cancelling" })),
        )
            .into_response();
    }
    match server.executor.cancel_idle(&id).await {
        Ok(run) => Json(serde_json::json!({ "run_id": id, "status": run.status })).into_response(),
        Err(ExecError::Store(StoreError::UnknownRun(_))) => {
            error(StatusCode::NOT_FOUND, format!("no run with id {id}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn resume_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    if server.active().contains_key(&id) {
        return error(StatusCode::CONFLICT, format!("run {id} is already running here"));
    }
    match server.executor.store().run(&id).await {
        Ok(run) if run.status.is_finished() => error(
            StatusCode::CONFLICT,
            format!("run {id} is {} and cannot be resumed", run.status.as_str()),
        ),
        Ok(run) => {
            let Some(admitted) = server.admit() else { return full(&server) };
            if server.launch_resume(run, Some(admitted)) {
                (
                    StatusCode::ACCEPTED,
                    Json(serde_json::json!({ "run_id": id, "status": "resuming" })),
                )
                    .into_response()
            } else {
                error(
                    StatusCode::CONFLICT,
                    format!("run {id} is already running here, or the server is stopping"),
                )
            }
        }
        Err(StoreError::UnknownRun(_)) => {
            error(StatusCode::NOT_FOUND, format!("no run with id {id}"))
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn webhook(
    State(server): State<Arc<Server>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(served) = server.workflows.get(&name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no workflow named {name:?} takes webhooks here"),
        );
    };
    let (Some(hook), Some(secret)) = (&served.workflow.trigger.webhook, &served.webhook_secret)
    else {
        return error(StatusCode::NOT_FOUND, format!("workflow {name:?} has no webhook trigger"));
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than this webhook takes ({} bytes)", hook.max_body_bytes),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > hook.max_body_bytes as u64) {
        return too_large();
    }
    // Read no more than the limit, whatever the sender declared.
    let body = match axum::body::to_bytes(body, hook.max_body_bytes).await {
        Ok(body) => body,
        Err(e) if e.to_string().contains("length limit exceeded") => return too_large(),
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read the body: {e}")),
    };
    let header =
        |wanted: &str| headers.get(wanted).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let now = (now_ms() / 1000) as i64;
    let verified = match webhook::verify(
        &hook.verify,
        header,
        &body,
        secret.expose().as_bytes(),
        now,
        hook.tolerance,
    ) {
        Ok(v) => v,
        Err(rejection) => {
            tracing::warn!(workflow = %name, reason = %rejection, "webhook refused");
            let status = match rejection {
                webhook::Rejection::BadSignature | webhook::Rejection::Missing(_) => {
                    StatusCode::UNAUTHORIZED
                }
                webhook::Rejection::Stale { .. } | webhook::Rejection::Malformed { .. } => {
                    StatusCode::BAD_REQUEST
                }
            };
            return error(status, rejection.to_string());
        }
    };
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    // The delivery is remembered with its run, in one transaction: one
    // refused here (503, 422, 500) is not remembered and may come again.
    let delivery = Delivery {
        workflow: name.clone(),
        signature: verified.signature,
        signed_at: verified.timestamp,
    };
    let options = RunOptions {
        inputs,
        open_inputs: true,
        trigger: RunTrigger::Webhook,
        delivery: Some(delivery),
        ..RunOptions::default()
    };
    start_for_request(&server, &name, options).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_view_has_the_api_fields_and_reads_back_as_written() -> Result<(), serde_json::Error> {
        let run = RunRecord {
            id: "r1".into(),
            workflow: "w".into(),
            workflow_hash: "h".into(),
            workflow_text: "[workflow]".into(),
            workflow_path: "w.toml".into(),
            inputs: serde_json::json!({"email": "a@x"}),
            status: Status::Failed,
            created_ms: 1,
            finished_ms: Some(2),
            error: Some("boom".into()),
            dry_run: true,
            trigger: RunTrigger::Webhook,
            cancel_requested: false,
            resumes: 3,
        };
        let detail = RunDetail {
            run: RunView::from(&run),
            steps: vec![StepState::pending("a", 0)],
            active: Some(false),
        };
        let value = serde_json::to_value(&detail)?;
        let mut keys: Vec<&str> =
            value.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
        keys.sort_unstable();
        // The fields `run_json` built by hand, plus a show's steps and
        // `active`; the workflow text stays out.
        assert_eq!(
            keys,
            [
                "active",
                "cancel_requested",
                "created_ms",
                "dry_run",
                "error",
                "finished_ms",
                "id",
                "inputs",
                "resumes",
                "status",
                "steps",
                "trigger",
                "workflow",
                "workflow_hash",
                "workflow_path"
            ]
        );
        assert_eq!((&value["status"], &value["trigger"]), (&"failed".into(), &"webhook".into()));
        let read: RunDetail = serde_json::from_value(value)?;
        assert_eq!(read.run, detail.run);
        assert_eq!(read.steps[0].id, "a");
        Ok(())
    }

    fn hosts(bound: &str, public: Option<&str>) -> Hosts {
        let public = public.and_then(|p| url::Url::parse(p).ok());
        Hosts::new(
            bound.parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 1))),
            public.as_ref(),
        )
    }

    #[test]
    fn the_bound_address_and_localhost_name_a_loopback_server_and_other_names_do_not() {
        let h = hosts("127.0.0.1:8080", None);
        assert!(h.names_us(None, "127.0.0.1", Some(8080)));
        assert!(h.names_us(None, "LOCALHOST", Some(8080)));
        assert!(
            h.names_us(None, "[::1]", Some(8080)),
            "another loopback address of the same machine"
        );
        assert!(h.names_us(Some("http"), "localhost", Some(8080)));
        assert!(!h.names_us(None, "localhost", Some(8081)), "another port");
        assert!(!h.names_us(None, "localhost", None), "port 80");
        assert!(!h.names_us(None, "attacker.example", Some(8080)), "a rebinding name");
        assert!(!h.names_us(None, "10.0.0.1", Some(8080)), "not the bound address");
        assert!(!h.names_us(Some("https"), "localhost", Some(8080)), "another scheme");
        assert!(!h.names_us(None, "localhost.attacker.example", Some(8080)));
    }

    #[test]
    fn a_server_on_all_addresses_takes_any_ip_and_its_public_name() {
        let h = hosts("0.0.0.0:8080", Some("https://weft.example.com/base"));
        assert!(h.names_us(None, "10.1.2.3", Some(8080)), "an IP cannot be a rebinding name");
        assert!(h.names_us(None, "weft.example.com", None), "via the proxy");
        assert!(h.names_us(Some("https"), "weft.example.com", None));
        assert!(h.names_us(None, "WEFT.example.com", Some(443)));
        assert!(!h.names_us(Some("http"), "weft.example.com", None), "the public URL is https");
        assert!(!h.names_us(None, "weft.example.com", Some(8443)));
        assert!(!h.names_us(None, "example.com", Some(8080)));
    }

    #[test]
    fn a_panic_payload_reads_as_text() {
        assert_eq!(panic_message(&"static text"), "static text");
        assert_eq!(panic_message(&String::from("formatted 1")), "formatted 1");
        assert_eq!(panic_message(&42u8), "a panic without a message");
    }
}
