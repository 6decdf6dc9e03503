//! `weft serve`: runs workflows on their cron schedules and webhooks,
//! resumes unfinished runs at start, and answers an authenticated API and
//! a web console, all on one HTTP (or HTTPS) server bound to loopback
//! unless told otherwise.
//!
//! Routes:
//!
//! | route | what |
//! | --- | --- |
//! | `GET /healthz` | `{"status": "ok", "workflows": N, "active_runs": N, "max_runs": N}`; always answers |
//! | `GET /api/workflows` | each workflow, its triggers, next firing, skipped firings |
//! | `POST /api/workflows/{name}/runs` | starts a run; the JSON body is its inputs; `?dry_run=true` |
//! | `GET /api/runs` | runs, newest first, through the index (`?limit=N&workflow=&status=&trigger=&before=`) |
//! | `GET /api/runs/{id}` | one run with its steps, history and HTTP figures |
//! | `POST /api/runs/{id}/cancel` | asks a run to stop at the next page or item |
//! | `POST /api/runs/{id}/resume` | resumes an interrupted run (409 naming the worker when another worker sharing the store runs it) |
//! | `GET/POST /api/tokens`, `POST /api/tokens/{name}/revoke` | tokens (admin) |
//! | `GET /metrics` | the [`crate::metrics`] for Prometheus (viewer); also alone on `metrics_bind`, without the gate |
//! | `POST /hooks/{name}` | a signed webhook delivery; the event becomes the inputs |
//! | `/`, `/runs/…`, `/workflows/…`, `/connections`, `/tokens`, `/login` | the console: see [`console`] |
//!
//! Every API and console request passes the gate ([`gate`]): its `Host`
//! (and `Origin`) must name this server, its caller must be known (a
//! bearer token, a console session, or the machine's own user on an open
//! loopback server) and allowed by its role, and a browser's
//! state-changing request must carry its session's CSRF token. Webhooks
//! are exempt: their senders are other sites by nature, and a signature
//! proves each delivery. The API takes bodies of 64 KiB at most; each
//! webhook its own `max_body_bytes`. The server refuses to bind an address
//! other machines can reach while the store holds no token.
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

pub mod auth;
pub mod console;
pub mod gate;
mod scrape;
mod tls;
pub mod webhook;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::credentials::{CredentialSource, Secret};
use crate::endpoint::Endpoint;
use crate::executor::{ExecError, Executor, Observer, RunOptions, StepSummary, StopSignal};
use crate::metrics::{CronOutcome, Metrics, WebhookOutcome};
use crate::store::{
    ConnectionTotals, Delivery, HistoryEntry, Role, RunQuery, RunRecord, RunTrigger, Status,
    StepState, StoreError, TokenError, TokenRecord, now_ms,
};
use crate::workflow::{Overlap, Step, Verify, Workflow};
use auth::Caller;

/// The largest body an API route takes: inputs, not payloads.
pub const API_BODY_LIMIT: usize = 64 << 10;

/// What a refused start tells the client to wait before it tries again.
/// How often `weft serve` measures its run store for the metrics.
const STORE_MEASURE_EVERY: Duration = Duration::from_secs(30);

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
    /// The address is reachable from other machines and no token can
    /// open the server.
    #[error(
        "refusing to listen on {addr}: other machines can reach it, and the run store holds no token, so anyone could use the API; \
         create one first with `weft tokens create NAME --role admin` (same --state-dir), or bind to 127.0.0.1 (the default)"
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

/// The PEM files of a TLS certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
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
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// Workflow files that did not load, with their diagnostics: the
    /// console shows them (the others are served).
    pub broken: Vec<(String, String)>,
    /// Runs started and not finished, at most (queued or running); a start
    /// beyond that is refused with 503.
    pub max_runs: usize,
    /// Runs executing at once, at most; admitted runs beyond that wait.
    pub max_concurrent_runs: usize,
    /// Connections replaced by endpoints of the caller's in every run
    /// (benchmarks and tests: a native connector), by connection name.
    pub endpoints: BTreeMap<String, Arc<dyn Endpoint>>,
    /// Also serve `GET /metrics`, and nothing else, on this address,
    /// without the gate (Prometheus scrapes without a token).
    pub metrics_bind: Option<SocketAddr>,
    /// Remove finished runs older than this, at start and every hour
    /// (see [`crate::store::RunStore::prune_runs`]); `None` keeps them all.
    pub retention: Option<Retention>,
}

/// How often `weft serve` removes runs past its retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How long `weft serve` keeps finished runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Runs created longer ago than this go.
    pub age: Duration,
    /// Failed runs are kept, however old.
    pub keep_failed: bool,
}

impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("bind", &self.bind)
            .field("workflows", &self.workflows.iter().map(|w| &w.name).collect::<Vec<_>>())
            .field("shutdown_grace", &self.shutdown_grace)
            .field("public_url", &self.public_url.as_ref().map(url::Url::as_str))
            .field("tls", &self.tls)
            .field("max_runs", &self.max_runs)
            .field("max_concurrent_runs", &self.max_concurrent_runs)
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .field("metrics_bind", &self.metrics_bind)
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
            tls: None,
            broken: Vec::new(),
            max_runs: 256,
            max_concurrent_runs: 32,
            endpoints: BTreeMap::new(),
            metrics_bind: None,
            retention: None,
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
    hosts: gate::Hosts,
    access: gate::Access,
    broken: Vec<(String, String)>,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    retention: Option<Retention>,
}

/// A running server.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of the metrics listener, when there is one.
    pub metrics_addr: Option<SocketAddr>,
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
    // The server always counts, for its /metrics; a caller may hand in
    // the registry it shares with other parts of the process.
    let (executor, metrics) = match executor.metrics().cloned() {
        Some(metrics) => (executor, metrics),
        None => {
            let metrics = Arc::new(Metrics::new());
            (executor.with_metrics(metrics.clone()), metrics)
        }
    };
    let runtime = executor.runtime().clone();
    metrics.sample_with(move |m| m.set_instances_idle(runtime.instances_idle()));
    let has_tokens = executor.store().has_active_tokens().await?;
    if !config.bind.ip().is_loopback() && !has_tokens {
        return Err(ServeError::Remote { addr: config.bind });
    }
    let tls = match &config.tls {
        Some(files) => Some(tls::acceptor(files)?),
        None => None,
    };
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
    let metrics_addr = match config.metrics_bind {
        Some(addr) => Some(scrape::listen(addr, metrics.clone(), shutdown.clone()).await?),
        None => None,
    };
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
        hosts: gate::Hosts::new(addr, config.public_url.as_ref(), tls.is_some()),
        access: gate::Access::new(addr.ip().is_loopback(), has_tokens, tls.is_some()),
        broken: config.broken,
        shutdown: shutdown.clone(),
        metrics,
        retention: config.retention,
    });
    let reaper = tokio::spawn(server.clone().reap(spawned, config.shutdown_grace));
    if let Some(path) = &config.address_file
        && let Err(e) = write_address_file(path, addr, tls.is_some(), &server.access.local)
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the server's address file");
    }

    // On a shared store (PostgreSQL), unfinished runs are other workers'
    // until their leases pass: the claim loop takes them then. On sled
    // this process holds the whole store, so they are all its own.
    let shared = server.executor.store().is_shared();
    let unfinished =
        match if shared { Ok(Vec::new()) } else { server.executor.store().unfinished_runs().await }
        {
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
    schedules.spawn(server.clone().forget_expired_sessions());
    schedules.spawn(server.clone().measure_store());
    if let Some(retention) = server.retention {
        schedules.spawn(server.clone().prune_old_runs(retention));
    }
    if shared {
        schedules.spawn(server.clone().claim_loop());
    }

    let api = Router::new()
        .route("/api/workflows", get(list_workflows))
        .route("/api/workflows/{name}/runs", post(start_run))
        .route("/api/workflows/{name}/state", get(show_state))
        .route("/api/runs", get(list_runs))
        .route("/api/runs/{id}", get(show_run))
        .route("/api/runs/{id}/cancel", post(cancel_run))
        .route("/api/runs/{id}/resume", post(resume_run))
        .route("/api/tokens", get(list_tokens).post(create_token))
        .route("/api/tokens/{name}/revoke", post(revoke_token))
        .route("/metrics", get(serve_metrics))
        .layer(DefaultBodyLimit::max(API_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(server.clone(), gate::api_gate));
    let app = Router::new()
        .route("/healthz", get(healthz))
        // Each webhook reads its body up to its own limit.
        .route("/hooks/{name}", post(webhook))
        .merge(api)
        .merge(console::routes(server.clone()))
        .with_state(server.clone());

    let address_file = config.address_file.clone();
    let token = shutdown.clone();
    let handle = tokio::spawn(async move {
        match tls {
            Some(acceptor) => tls::serve(listener, acceptor, app, token.clone()).await,
            None => {
                let serving =
                    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                        .with_graceful_shutdown(token.clone().cancelled_owned());
                if let Err(e) = serving.await {
                    tracing::error!(error = %e, "the HTTP server failed");
                }
            }
        }
        // Every run's stop signal is a child of this token: they all stop
        // taking work now.
        token.cancel();
        schedules.shutdown().await;
        let _ = reaper.await;
        // The runs stopped where they last committed: other workers may
        // take them now rather than when the leases pass.
        if let Err(e) = server.executor.store().release_leases().await {
            tracing::warn!(error = %e, "cannot give up this worker's leases; other workers take its runs when they pass");
        }
        drop(server);
        if let Some(path) = address_file {
            let _ = std::fs::remove_file(path);
        }
    });
    Ok(RunningServer { addr, metrics_addr, shutdown, handle })
}

/// Writes where the server is and the token `weft runs …` on this machine
/// uses, readable by the owner only.
fn write_address_file(
    path: &std::path::Path,
    addr: SocketAddr,
    tls: bool,
    token: &Secret,
) -> std::io::Result<()> {
    use std::io::Write as _;
    let text = serde_json::json!({
        "addr": addr.to_string(),
        "scheme": if tls { "https" } else { "http" },
        "pid": std::process::id(),
        "token": token.expose(),
    })
    .to_string();
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
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
        // A run that ended is out of the queue already; one that stopped
        // unfinished is retried, here or on another worker, once its
        // lease runs out (on a shared store).
        if let Err(e) = self.executor.store().release_run(&run_id).await {
            tracing::warn!(run = %run_id, error = %e, "cannot release the run's lease; it passes when the lease does");
        }
        self.active().remove(&run_id);
    }

    /// A run stopped with an error of the executor's. One the store's
    /// damage caused meets the damage again at every resume: the run ends
    /// failed, saying what is damaged; any other stays to resume.
    async fn could_not_go_on(&self, id: &str, error: &ExecError) {
        // A run cancelled from elsewhere (`weft runs cancel`, another
        // worker's API) left the queue, so this worker's next commit of it
        // failed its lease check: the cancel taking effect, not a fault.
        if let ExecError::Store(StoreError::LeaseLost { .. }) = error
            && let Ok(run) = self.executor.store().run(id).await
            && run.status.is_finished()
        {
            tracing::info!(run = %id, status = run.status.as_str(), "run ended elsewhere (cancelled); this worker stopped it at its commit and commits nothing more of it");
            return;
        }
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
        if cron.catch_up
            && let Some(due) = self.missed_a_firing(&name, &cron).await
        {
            tracing::info!(workflow = %name, "a scheduled run was missed while weft was down; running it once now");
            // Keyed by the missed firing's time: workers starting together
            // catch it up once.
            self.fire(&name, cron.overlap, CronOutcome::CaughtUp, due.timestamp_millis()).await;
        }
        loop {
            let now = chrono::Utc::now();
            let Some(next) = cron.next_after(now) else {
                tracing::info!(workflow = %name, "the cron schedule has no further firings");
                return;
            };
            let mut wait = (next - now).to_std().unwrap_or_default();
            if !cron.jitter.is_zero() {
                use rand::Rng as _;
                let spread = cron.jitter.as_millis().min(u64::MAX as u128) as u64;
                wait += Duration::from_millis(rand::rng().random_range(0..=spread));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            // After a long sleep (a suspended machine), fire once, never
            // a burst for every firing missed. Keyed by the scheduled time
            // (not the jittered one): every worker's scheduler fires it,
            // one starts the run.
            self.fire(&name, cron.overlap, CronOutcome::Ran, next.timestamp_millis()).await;
        }
    }

    /// The firing missed since the workflow's last scheduled run, if one
    /// was.
    async fn missed_a_firing(
        &self,
        name: &str,
        cron: &crate::workflow::CronTrigger,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        let workflow = name.to_owned();
        let Ok(runs) = self
            .executor
            .store()
            .recent_runs(1, move |r| r.workflow == workflow && r.trigger == RunTrigger::Cron)
            .await
        else {
            return None;
        };
        let last = runs.first()?;
        let last_at = chrono::DateTime::from_timestamp_millis(last.created_ms as i64)?;
        cron.next_after(last_at).filter(|due| *due < chrono::Utc::now())
    }

    /// Starts a scheduled run, counted as `ran` (a `Ran` or `CaughtUp`)
    /// when it starts.
    async fn fire(
        self: &Arc<Self>,
        name: &str,
        overlap: Overlap,
        ran: CronOutcome,
        scheduled_ms: i64,
    ) {
        let Some(served) = self.workflows.get(name) else { return };
        // On a shared store the previous run may be another worker's.
        let store = self.executor.store();
        if overlap == Overlap::Skip
            && (self.workflow_running(name)
                || (store.is_shared() && store.workflow_unfinished(name).await.unwrap_or(false)))
        {
            self.metrics.cron_fired(name, CronOutcome::SkippedOverlap);
            let skipped = served.skipped_firings.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(workflow = %name, skipped, "previous run still going; skipping this firing");
            return;
        }
        let Some(admitted) = self.admit() else {
            self.metrics.cron_fired(name, CronOutcome::SkippedFull);
            let skipped = served.skipped_firings.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(workflow = %name, skipped, max_runs = self.max_runs, "the server has as many runs as it takes; skipping this firing");
            return;
        };
        let options = RunOptions {
            trigger: RunTrigger::Cron,
            firing: Some(u64::try_from(scheduled_ms).unwrap_or(0)),
            ..RunOptions::default()
        };
        // Counted once its run exists: `fired` is the number of runs the
        // schedule started (a shutdown between the count and the run made
        // the two disagree).
        match self.start(name, options, Some(admitted)).await {
            Ok(_) => {
                self.metrics.cron_fired(name, ran);
                served.fired.fetch_add(1, Ordering::Relaxed);
            }
            Err(ExecError::Store(crate::store::StoreError::AlreadyFired { .. })) => {
                self.metrics.cron_fired(name, CronOutcome::FiredElsewhere);
                tracing::debug!(workflow = %name, scheduled_ms, "another worker started this firing's run");
            }
            Err(e) => {
                self.metrics.cron_fired(name, CronOutcome::Failed);
                tracing::error!(workflow = %name, error = %e, "scheduled run could not start");
            }
        }
    }

    /// Removes runs past the retention, at start and then every hour, so
    /// the store stays the size of its window.
    async fn prune_old_runs(self: Arc<Self>, retention: Retention) {
        loop {
            let age = u64::try_from(retention.age.as_millis()).unwrap_or(u64::MAX);
            let cutoff = now_ms().saturating_sub(age);
            match self.executor.store().prune_runs(cutoff, retention.keep_failed).await {
                Ok(report) if report.removed > 0 => {
                    tracing::info!(removed = report.removed, kept = report.kept, "pruned old runs");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot prune old runs"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }

    /// On a shared store: claims runs whose lease passed (their worker
    /// died, was cut off, or stopped) as long as this server admits runs,
    /// and resumes them. Polls every quarter lease (at most every 2 s).
    async fn claim_loop(self: Arc<Self>) {
        let store = self.executor.store().clone();
        let every = store
            .lease()
            .map_or(Duration::from_secs(2), |l| l / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let free = self.admission.available_permits().min(16);
            if free == 0 {
                continue;
            }
            let claimed = match store.claim_runs(free).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim runs from the queue");
                    continue;
                }
            };
            for id in claimed {
                let run = match store.run(&id).await {
                    Ok(run) => run,
                    Err(e) => {
                        tracing::error!(run = %id, error = %e, "a claimed run cannot be read");
                        continue;
                    }
                };
                tracing::info!(run = %id, workflow = %run.workflow, "claimed a run whose worker's lease passed; resuming it");
                let admitted = self.admit();
                if !self.launch_resume(run, admitted) {
                    tracing::info!(run = %id, "the claimed run is not started here (stopping, or running already)");
                }
            }
        }
    }

    /// Sets `weft_store_size_bytes` now and every [`STORE_MEASURE_EVERY`]:
    /// walking a large sled directory, or asking PostgreSQL, is too slow
    /// for every scrape.
    async fn measure_store(self: Arc<Self>) {
        loop {
            match self.executor.store().size_bytes().await {
                Ok(bytes) => self.metrics.set_store_size(bytes),
                Err(e) => tracing::debug!(error = %e, "cannot measure the run store"),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(STORE_MEASURE_EVERY) => {}
            }
        }
    }

    /// Drops ended console sessions now and then, so the store keeps only
    /// live ones.
    async fn forget_expired_sessions(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(600)) => {}
            }
            if let Err(e) = self.executor.store().forget_expired_sessions(now_ms()).await {
                tracing::warn!(error = %e, "cannot drop expired sessions");
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
        // A scheme without signed timestamps keeps every signature; only
        // event ids, when there are any, age out.
        if matches!(hook.verify, Verify::HmacSha256 { timestamp_header: None, .. })
            && hook.event_id.is_none()
        {
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

async fn serve_metrics(State(server): State<Arc<Server>>, headers: HeaderMap) -> Response {
    scrape::exposition(&server.metrics, &headers)
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

/// An action refused: the HTTP status and what to tell the caller.
#[derive(Debug)]
pub(crate) struct Refusal {
    status: StatusCode,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Refusal { status, message: message.into() }
    }

    fn full(server: &Server) -> Self {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "weft has {} runs started and not finished, as many as it takes (--max-runs); try again shortly",
                server.max_runs
            ),
        )
    }

    /// The refusal as the API answers it.
    fn into_response(self) -> Response {
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            busy(self.message)
        } else if self.status.is_success() {
            // A sender's retry of an event already taken: answered as
            // taken, so the sender stops retrying.
            (self.status, Json(serde_json::json!({ "duplicate": true, "message": self.message })))
                .into_response()
        } else {
            error(self.status, self.message)
        }
    }
}

impl Server {
    /// Starts a run for a request, within admission control and a bound
    /// on the store's answer.
    async fn start_for(
        self: &Arc<Self>,
        name: &str,
        options: RunOptions,
    ) -> Result<RunRecord, Refusal> {
        if !self.workflows.contains_key(name) {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("no workflow named {name:?} is served here"),
            ));
        }
        let Some(admitted) = self.admit() else { return Err(Refusal::full(self)) };
        match tokio::time::timeout(STORE_ANSWER, self.start(name, options, Some(admitted))).await {
            Err(_) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the run store did not answer within {} s; nothing was started, try again shortly",
                    STORE_ANSWER.as_secs()
                ),
            )),
            Ok(Ok(run)) => Ok(run),
            Ok(Err(ExecError::Inputs { problems, .. })) => {
                Err(Refusal::new(StatusCode::UNPROCESSABLE_ENTITY, problems.join("; ")))
            }
            Ok(Err(ExecError::Store(e @ StoreError::DuplicateEvent { .. }))) => {
                tracing::info!(workflow = %name, "webhook event already received; nothing started");
                Err(Refusal::new(StatusCode::OK, e.to_string()))
            }
            Ok(Err(ExecError::Store(StoreError::Replay { .. }))) => {
                tracing::warn!(workflow = %name, "webhook replay refused");
                Err(Refusal::new(
                    StatusCode::CONFLICT,
                    "this delivery was already received (same signature); a replay starts nothing",
                ))
            }
            Ok(Err(e)) => Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
    }

    /// Asks a run to stop (a running one at its next page or item; one
    /// that is not running here is cancelled at once). Returns the status
    /// to report, and on a shared store the worker that was running it
    /// (which stops at its next commit).
    async fn cancel(&self, id: &str, caller: &Caller) -> Result<(String, Option<String>), Refusal> {
        let running = match self.active().get(id) {
            Some(active) => {
                active.stop.cancel.cancel();
                true
            }
            None => false,
        };
        let mut holder = None;
        let status = if running {
            "cancelling".to_owned()
        } else {
            // On PostgreSQL another worker may be running it: the cancel
            // takes it out of the queue, so that worker's next commit of it
            // fails its lease check and it stops there (as `weft runs
            // cancel` says). Asked before the cancel, which ends the lease.
            holder = self.executor.store().lease_holder(id).await.ok().flatten();
            match self.executor.cancel_idle(id).await {
                Ok(run) => {
                    if run.status != Status::Cancelled {
                        holder = None;
                    }
                    run.status.as_str().to_owned()
                }
                Err(ExecError::Store(StoreError::UnknownRun(_))) => {
                    return Err(Refusal::new(
                        StatusCode::NOT_FOUND,
                        format!("no run with id {id}"),
                    ));
                }
                Err(e) => {
                    return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
                }
            }
        };
        self.record(id, caller, "cancel requested", Some(status.clone())).await;
        Ok((status, holder))
    }

    /// Resumes an interrupted run.
    async fn resume(self: &Arc<Self>, id: &str, caller: &Caller) -> Result<(), Refusal> {
        if self.active().contains_key(id) {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("run {id} is already running here"),
            ));
        }
        let run = match self.executor.store().run(id).await {
            Ok(run) => run,
            Err(StoreError::UnknownRun(_)) => {
                return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no run with id {id}")));
            }
            Err(e) => return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        if run.status.is_finished() {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("run {id} is {} and cannot be resumed", run.status.as_str()),
            ));
        }
        let Some(admitted) = self.admit() else { return Err(Refusal::full(self)) };
        // On a shared store the run may be another worker's: claimed here
        // now, or refused now as `weft runs resume` refuses it (naming the
        // worker), rather than answered 202 for a resume that cannot start.
        match self.executor.store().claim_run_now(id).await {
            Ok(()) => {}
            Err(e @ StoreError::Leased { .. }) => {
                return Err(Refusal::new(StatusCode::CONFLICT, e.to_string()));
            }
            Err(StoreError::UnknownRun(_)) => {
                return Err(Refusal::new(
                    StatusCode::CONFLICT,
                    format!("run {id} ended meanwhile and cannot be resumed"),
                ));
            }
            Err(e) => return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        }
        // Not launched: it runs here already (its task holds the lease
        // just renewed), or the server is stopping (and gives its leases
        // up): the claim is left as it is either way.
        if !self.launch_resume(run, Some(admitted)) {
            return Err(Refusal::new(
                StatusCode::CONFLICT,
                format!("run {id} is already running here, or the server is stopping"),
            ));
        }
        self.record(id, caller, "resume requested", None).await;
        Ok(())
    }

    /// Starts a new run of a run's workflow with the same inputs (and the
    /// same dry-run setting).
    async fn rerun(self: &Arc<Self>, id: &str, caller: &Caller) -> Result<RunRecord, Refusal> {
        let old = match self.executor.store().run(id).await {
            Ok(run) => run,
            Err(StoreError::UnknownRun(_)) => {
                return Err(Refusal::new(StatusCode::NOT_FOUND, format!("no run with id {id}")));
            }
            Err(e) => return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
        };
        let inputs = match old.inputs {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let options = RunOptions {
            inputs,
            open_inputs: old.trigger == RunTrigger::Webhook,
            dry_run: old.dry_run,
            trigger: RunTrigger::Api,
            started_by: Some(caller.name.clone()),
            ..RunOptions::default()
        };
        let run = self.start_for(&old.workflow, options).await?;
        self.record(&run.id, caller, "re-run", Some(format!("of run {id}"))).await;
        Ok(run)
    }

    /// Adds an entry to a run's history; a failure is logged, not
    /// answered (the action itself happened).
    async fn record(&self, id: &str, caller: &Caller, action: &str, detail: Option<String>) {
        let entry = HistoryEntry::now(caller.name.clone(), action, detail);
        if let Err(e) = self.executor.store().record_action(id, &entry).await {
            tracing::warn!(run = %id, error = %e, "cannot record an action in the run's history");
        }
    }
}

async fn start_run(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(query): Query<StartQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let options = RunOptions {
        inputs,
        dry_run: query.dry_run,
        trigger: RunTrigger::Api,
        started_by: Some(caller.name),
        trace_parent: traceparent(&headers),
        ..RunOptions::default()
    };
    match server.start_for(&name, options).await {
        Ok(run) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": run.id }))).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// The W3C `traceparent` a start request carries: the run continues the
/// caller's trace.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
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
    status: Option<String>,
    trigger: Option<String>,
    /// The cursor of the next page (the `x-weft-next` header of the last).
    before: Option<String>,
}

/// The header a page of `GET /api/runs` names the next page's cursor in
/// (`?before=`), when there may be more.
pub const NEXT_PAGE_HEADER: &str = "x-weft-next";

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
    /// Who did what to it, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// What it sent per connection, over all its attempts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections: BTreeMap<String, ConnectionTotals>,
}

async fn list_runs(State(server): State<Arc<Server>>, Query(query): Query<RunsQuery>) -> Response {
    let status = match query.status.as_deref().map(Status::parse) {
        Some(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "status is one of pending, running, succeeded, failed, cancelled",
            );
        }
        Some(status) => status,
        None => None,
    };
    let wanted = RunQuery {
        workflow: query.workflow.filter(|w| !w.is_empty()),
        status,
        trigger: query.trigger.filter(|t| !t.is_empty()),
        before: query.before.filter(|b| !b.is_empty()),
        limit: query.limit.unwrap_or(50).clamp(1, crate::store::MAX_PAGE),
        ..RunQuery::default()
    };
    let store = server.executor.store();
    let page = match store.query_runs(wanted).await {
        Ok(page) => page,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut runs = Vec::with_capacity(page.rows.len());
    for row in &page.rows {
        match store.run(&row.id).await {
            Ok(run) => runs.push(RunView::from(&run)),
            Err(StoreError::UnknownRun(_)) => {}
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let mut response = Json(runs).into_response();
    if let Some(next) = page.next.and_then(|n| HeaderValue::from_str(&n).ok()) {
        response.headers_mut().insert(NEXT_PAGE_HEADER, next);
    }
    response
}

/// `GET /api/workflows/NAME/state`: the workflow's state as its next run
/// would read it (stored values over the declared defaults), its version,
/// and the run and step that changed it last (none when changed by hand).
async fn show_state(State(server): State<Arc<Server>>, Path(name): Path<String>) -> Response {
    let Some(served) = server.workflows.get(&name) else {
        let known: Vec<&str> = server.workflows.keys().map(String::as_str).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no workflow {name:?}; served: {}", known.join(", ")),
        );
    };
    match server.executor.store().workflow_state(&name).await {
        Ok(stored) => Json(serde_json::json!({
            "workflow": name,
            "values": served.workflow.state_values(&stored.values),
            "declared": served.workflow.state.iter().map(|s| &s.name).collect::<Vec<_>>(),
            "version": stored.version,
            "run": stored.run,
            "step": stored.step,
            "updated_ms": stored.updated_ms,
        }))
        .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn show_run(State(server): State<Arc<Server>>, Path(id): Path<String>) -> Response {
    let store = server.executor.store();
    let run = match store.run(&id).await {
        Ok(run) => run,
        Err(StoreError::UnknownRun(_)) => {
            return error(StatusCode::NOT_FOUND, format!("no run with id {id}"));
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match (store.steps(&id).await, store.history(&id).await, store.connection_totals(&id).await) {
        (Ok(steps), Ok(history), Ok(connections)) => Json(RunDetail {
            run: RunView::from(&run),
            steps,
            active: Some(server.active().contains_key(&id)),
            history,
            connections,
        })
        .into_response(),
        (Err(e), ..) | (_, Err(e), _) | (.., Err(e)) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn cancel_run(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match server.cancel(&id, &caller).await {
        Ok((status, _)) if status == "cancelling" => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": id, "status": status })))
                .into_response()
        }
        Ok((status, Some(worker))) => Json(serde_json::json!({
            "run_id": id,
            "status": status,
            "worker": worker,
            "message": format!(
                "run {id} is cancelled; worker {worker} was running it and stops it at its next commit (its next page or group of items), committing nothing more of it; writes already sent to a vendor may still land"
            ),
        }))
        .into_response(),
        Ok((status, None)) => {
            Json(serde_json::json!({ "run_id": id, "status": status })).into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

async fn resume_run(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match server.resume(&id, &caller).await {
        Ok(()) => {
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": id, "status": "resuming" })))
                .into_response()
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// A token as the API lists it (never its secret or hash).
#[derive(Debug, Serialize)]
struct TokenView {
    id: String,
    name: String,
    role: Role,
    created_ms: u64,
    created_by: Option<String>,
    revoked_ms: Option<u64>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            created_ms: t.created_ms,
            created_by: t.created_by.clone(),
            revoked_ms: t.revoked_ms,
        }
    }
}

async fn list_tokens(State(server): State<Arc<Server>>) -> Response {
    match server.executor.store().tokens().await {
        Ok(tokens) => Json(tokens.iter().map(TokenView::from).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize)]
struct NewToken {
    name: String,
    role: String,
}

impl Server {
    /// Makes a token; returns it with the token text to show once.
    async fn create_token(
        &self,
        name: &str,
        role: &str,
        caller: &Caller,
    ) -> Result<auth::IssuedToken, Refusal> {
        let Some(role) = Role::parse(role) else {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("role {role:?} is not one of viewer, operator, admin"),
            ));
        };
        let issued = auth::issue(name, role, Some(caller.name.clone()));
        match self.executor.store().create_token(&issued.record).await {
            Ok(()) => {}
            Err(TokenError::Store(e)) => {
                return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
            }
            Err(e) => return Err(Refusal::new(StatusCode::BAD_REQUEST, e.to_string())),
        }
        tracing::info!(token = %issued.record.name, role = role.as_str(), by = %caller.name, "token created");
        self.access.tokens_changed(true);
        Ok(issued)
    }

    /// Revokes a token by name or id; its sessions end with it.
    async fn revoke_token(&self, name: &str, caller: &Caller) -> Result<TokenRecord, Refusal> {
        let store = self.executor.store();
        let revoked = match store.revoke_token(name).await {
            Ok(token) => token,
            Err(TokenError::Store(e)) => {
                return Err(Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
            }
            Err(e) => return Err(Refusal::new(StatusCode::NOT_FOUND, e.to_string())),
        };
        tracing::info!(token = %revoked.name, by = %caller.name, "token revoked");
        self.access.tokens_changed(store.has_active_tokens().await.unwrap_or(true));
        Ok(revoked)
    }
}

async fn create_token(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Response {
    let wanted: NewToken = match serde_json::from_slice(&body) {
        Ok(wanted) => wanted,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body must be {{\"name\": NAME, \"role\": \"viewer|operator|admin\"}}: {e}"
                ),
            );
        }
    };
    match server.create_token(&wanted.name, &wanted.role, &caller).await {
        Ok(issued) => (
            StatusCode::CREATED,
            Json(serde_json::json!({
                "token": issued.token.expose(),
                "id": issued.record.id,
                "name": issued.record.name,
                "role": issued.record.role,
            })),
        )
            .into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

async fn revoke_token(
    State(server): State<Arc<Server>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Response {
    match server.revoke_token(&name, &caller).await {
        Ok(token) => Json(TokenView::from(&token)).into_response(),
        Err(refusal) => refusal.into_response(),
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
    let delivered = |outcome| server.metrics.webhook_delivered(&name, outcome);
    let too_large = || {
        delivered(WebhookOutcome::Oversized);
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
            let (status, outcome) = match rejection {
                webhook::Rejection::BadSignature | webhook::Rejection::Missing(_) => {
                    (StatusCode::UNAUTHORIZED, WebhookOutcome::BadSignature)
                }
                webhook::Rejection::Stale { .. } => {
                    (StatusCode::BAD_REQUEST, WebhookOutcome::Stale)
                }
                webhook::Rejection::Malformed { .. } => {
                    (StatusCode::BAD_REQUEST, WebhookOutcome::Malformed)
                }
            };
            delivered(outcome);
            return error(status, rejection.to_string());
        }
    };
    let inputs = match parse_object(&body) {
        Ok(inputs) => inputs,
        Err(message) => {
            delivered(WebhookOutcome::Malformed);
            return error(StatusCode::BAD_REQUEST, message);
        }
    };
    let event = match &hook.event_id {
        Some(path) => match path.of(&inputs) {
            // A long id is remembered by its digest: the key stays small.
            Some(id) if id.len() > 200 => Some(format!("sha256:{}", auth::sha256_hex(&id))),
            Some(id) => Some(id),
            None if path.required => {
                delivered(WebhookOutcome::Malformed);
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the event has no id at `{}` (a string or a number), which this webhook needs to tell a retry from a new event",
                        path.path
                    ),
                );
            }
            None => None,
        },
        None => None,
    };
    let keep_until = now_ms().saturating_add(hook.dedupe_window.as_millis() as u64);
    // The delivery is remembered with its run, in one transaction: one
    // refused here (503, 422, 500) is not remembered and may come again.
    let delivery = Delivery {
        workflow: name.clone(),
        signature: verified.signature,
        signed_at: verified.timestamp,
        event: event.map(|id| (id, keep_until)),
    };
    let options = RunOptions {
        inputs,
        open_inputs: true,
        trigger: RunTrigger::Webhook,
        delivery: Some(delivery),
        trace_parent: traceparent(&headers),
        ..RunOptions::default()
    };
    match server.start_for(&name, options).await {
        Ok(run) => {
            delivered(WebhookOutcome::Accepted);
            (StatusCode::ACCEPTED, Json(serde_json::json!({ "run_id": run.id }))).into_response()
        }
        Err(refusal) => {
            delivered(match refusal.status {
                StatusCode::CONFLICT => WebhookOutcome::Replay,
                StatusCode::OK => WebhookOutcome::Duplicate,
                StatusCode::SERVICE_UNAVAILABLE => WebhookOutcome::RefusedBusy,
                _ => WebhookOutcome::Refused,
            });
            refusal.into_response()
        }
    }
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
            inputs_defaulted: Vec::new(),
        };
        let detail = RunDetail {
            run: RunView::from(&run),
            steps: vec![StepState::pending("a", 0)],
            active: Some(false),
            history: Vec::new(),
            connections: BTreeMap::new(),
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

    #[test]
    fn a_panic_payload_reads_as_text() {
        assert_eq!(panic_message(&"static text"), "static text");
        assert_eq!(panic_message(&String::from("formatted 1")), "formatted 1");
        assert_eq!(panic_message(&42u8), "a panic without a message");
    }
}
