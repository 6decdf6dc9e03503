//! The `weft` command line.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use weft::connector::Manifest;
use weft::credentials::Secret;
use weft::executor::{
    ConnectionOverride, ExecError, Executor, Observer, RunOptions, RunSummary, StepSummary,
    StopSignal,
};
use weft::runtime::{Runtime, RuntimeConfig};
use weft::serve::{RunDetail, RunView};
use weft::store::{RunRecord, RunStore, Status, StepState, StoreError};
use weft::workflow::{Action, LoadError, Step, Workflow};

mod tokens;

/// `println!` that returns the write's error instead of panicking, so that
/// `weft runs list | head` ends quietly when `head` closes the pipe (see
/// [`is_broken_pipe`]).
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout().lock(), $($arg)*)
    };
}

/// weft runs customer-lifecycle workflows written in TOML, with vendor
/// connectors sandboxed as WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Directory of the durable run store (sled).
    #[arg(long, global = true, env = "WEFT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Directory of the compiled-component cache.
    #[arg(long, global = true, env = "WEFT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Log filter for diagnostics on stderr (e.g. `info`, `weft=debug`).
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "warn")]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a workflow once, now.
    Run {
        /// The workflow file.
        workflow: PathBuf,
        /// An input, NAME=VALUE (VALUE is JSON unless the input is a
        /// string); repeatable.
        #[arg(short = 'i', long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// A JSON file with an object of inputs (given --input win).
        #[arg(long, value_name = "FILE")]
        inputs_file: Option<PathBuf>,
        /// Read for real, plan the writes, send none; print the plan.
        #[arg(long)]
        dry_run: bool,
        /// Print the run summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Point every connection at in-process vendor emulators seeded with
        /// demo data, with their test keys; no real vendor is contacted.
        #[arg(long)]
        sandbox: bool,
        /// With --sandbox: demo records per emulator.
        #[arg(long, default_value_t = 250)]
        seed: usize,
    },
    /// Serve workflows: cron schedules, webhooks, a status API; resumes
    /// unfinished runs at start.
    Serve {
        /// Workflow files, or directories of them (*.toml).
        #[arg(required = true)]
        workflows: Vec<PathBuf>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "WEFT_BIND")]
        bind: std::net::SocketAddr,
        /// How long in-flight calls get to finish after SIGTERM or ctrl-c.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// The URL the server is reached at when that is not --bind (a DNS
        /// name, a proxy): the API answers requests for its host too.
        #[arg(long, env = "WEFT_PUBLIC_URL")]
        public_url: Option<url::Url>,
        /// Serve HTTPS with this PEM certificate chain (with --tls-key).
        #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The PEM private key of --tls-cert.
        #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Runs started and not finished, at most; a start beyond that is
        /// answered 503 with Retry-After.
        #[arg(long, default_value_t = 256)]
        max_runs: usize,
        /// Runs executing at once, at most; the other admitted runs wait.
        #[arg(long, default_value_t = 32)]
        max_concurrent_runs: usize,
    },
    /// Check workflow files without running them.
    Validate {
        /// Workflow files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Work with connector plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Inspect the runs in the run store.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Manage the tokens that open a `weft serve` (its API and console).
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// Start the local vendor emulators and print their URLs and test keys.
    Sandbox {
        /// Demo records per emulator.
        #[arg(long, default_value_t = 250)]
        seed: usize,
        /// Port of the Stripe emulator (0 picks a free one).
        #[arg(long, default_value_t = 12111)]
        stripe_port: u16,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Show at most this many runs.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one run and its steps.
    Show {
        /// The run id.
        run: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume an interrupted run where it stopped, on the workflow version
    /// it started with.
    Resume {
        /// The run id.
        run: String,
        /// Print the run summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a run: a running one stops at its next page or item.
    Cancel {
        /// The run id.
        run: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Print a plugin's manifest.
    Inspect {
        /// A built-in connector name or a path to a .wasm component.
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the built-in connectors.
    List,
    /// Run the conformance suite against a live endpoint (normally an
    /// emulator): pagination, absent reads, idempotent upserts, removes,
    /// typed errors, and a wrong credential.
    Check {
        /// A built-in connector name or a path to a .wasm component.
        plugin: String,
        /// Base URL of the endpoint under test.
        #[arg(long, required_unless_present = "sandbox")]
        base_url: Option<String>,
        /// Credential for the endpoint: env:NAME or file:PATH.
        #[arg(long)]
        credentials: Option<String>,
        /// Check against the built-in emulator of this connector's vendor
        /// (its manifest's `vendor`).
        #[arg(long, conflicts_with_all = ["base_url", "credentials"])]
        sandbox: bool,
        /// With --sandbox: the emulator to check against, when the vendor
        /// has several (`stripe`, `stripe-scim`) or the manifest names
        /// another vendor.
        #[arg(long, requires = "sandbox", value_name = "NAME")]
        emulator: Option<String>,
        /// Only this resource.
        #[arg(long)]
        resource: Option<String>,
        /// A connection setting, NAME=VALUE; repeatable.
        #[arg(long = "setting", value_parser = parse_pair)]
        settings: Vec<(String, String)>,
        /// A record the write checks may create, RESOURCE=JSON; repeatable.
        #[arg(long = "sample", value_parser = parse_pair)]
        samples: Vec<(String, String)>,
        /// Let the checks run irreversible ops (remove); only against an emulator.
        #[arg(long)]
        allow_irreversible: bool,
        /// Page size of the pagination check; each resource's default otherwise.
        #[arg(long)]
        page_size: Option<u32>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write it like 30s or 2m"))
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// Exit codes: what kind of failure, for scripts.
mod exit {
    pub const RUN_FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const INTERNAL: u8 = 3;
    pub const INTERRUPTED: u8 = 4;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        // The reader went away (`| head`): nothing is wrong, and nobody is
        // left to read a message.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // A workflow's diagnostics print rustc-style, `error:` first.
            let text = format!("{error:#}");
            if text.starts_with("error:") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            let code = match error.downcast_ref::<ExecError>() {
                Some(ExecError::Store(StoreError::UnknownRun(_))) => exit::INVALID,
                Some(ExecError::Store(_)) => exit::INTERNAL,
                Some(_) => exit::INVALID,
                None if error.downcast_ref::<LoadError>().is_some() => exit::INVALID,
                None if error.downcast_ref::<weft::emulators::EmulatorError>().is_some() => {
                    exit::INVALID
                }
                None if matches!(
                    error.downcast_ref::<weft::store::StoreError>(),
                    Some(weft::store::StoreError::UnknownRun(_))
                ) =>
                {
                    exit::INVALID
                }
                None => exit::INTERNAL,
            };
            ExitCode::from(code)
        }
    }
}

/// Whether `error` comes from writing to a pipe whose reader has closed.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { workflow, inputs, inputs_file, dry_run, json, sandbox, seed } => {
            let options = RunCommand { inputs, inputs_file, dry_run, json, sandbox, seed };
            run(&cli.global, &workflow, options).await
        }
        Command::Serve {
            workflows,
            bind,
            grace,
            public_url,
            tls_cert,
            tls_key,
            max_runs,
            max_concurrent_runs,
        } => {
            let tls = match (tls_cert, tls_key) {
                (Some(cert), Some(key)) => Some(weft::serve::TlsFiles { cert, key }),
                _ => None,
            };
            let config = weft::serve::ServeConfig {
                bind,
                shutdown_grace: grace,
                public_url,
                tls,
                max_runs,
                max_concurrent_runs,
                ..Default::default()
            };
            serve(&cli.global, &workflows, config).await
        }
        Command::Validate { files } => validate(&cli.global, &files).await,
        Command::Plugin { command: PluginCommand::Inspect { plugin, json } } => {
            inspect(&cli.global, &plugin, json).await
        }
        Command::Plugin { command: PluginCommand::List } => {
            for name in weft::builtin::names() {
                outln!("{name}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin {
            command:
                PluginCommand::Check {
                    plugin,
                    base_url,
                    credentials,
                    sandbox,
                    emulator,
                    resource,
                    settings,
                    samples,
                    allow_irreversible,
                    page_size,
                    json,
                },
        } => {
            let options = CheckOptions {
                base_url,
                credentials,
                sandbox,
                emulator,
                resource,
                settings,
                samples,
                allow_irreversible,
                page_size,
                json,
            };
            check_plugin(&cli.global, &plugin, options).await
        }
        Command::Sandbox { seed, stripe_port } => serve_sandbox(seed, stripe_port).await,
        Command::Runs { command } => runs(&cli.global, command).await,
        Command::Tokens { command } => tokens::run(&state_dir(&cli.global), command).await,
    }
}

fn default_dir(env_base: &str, fallback: &str, leaf: &str) -> PathBuf {
    std::env::var_os(env_base)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))
        .unwrap_or_else(|| PathBuf::from(".weft"))
        .join("weft")
        .join(leaf)
}

fn wasm_runtime(global: &Global) -> Result<Runtime> {
    let cache_dir = global
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_CACHE_HOME", ".cache", "components"));
    Ok(Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir), ..RuntimeConfig::default() })?)
}

struct RunCommand {
    inputs: Vec<String>,
    inputs_file: Option<PathBuf>,
    dry_run: bool,
    json: bool,
    sandbox: bool,
    seed: usize,
}

fn gather_inputs(
    workflow: &Workflow,
    command: &RunCommand,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let mut inputs = match &command.inputs_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read inputs from {}", path.display()))?;
            match serde_json::from_str::<serde_json::Value>(&text)
                .with_context(|| format!("{}: not JSON", path.display()))?
            {
                serde_json::Value::Object(map) => map,
                _ => anyhow::bail!("{}: the inputs must be a JSON object", path.display()),
            }
        }
        None => serde_json::Map::new(),
    };
    for assignment in &command.inputs {
        let (name, value) = weft::workflow::inputs::parse_assignment(&workflow.inputs, assignment)
            .map_err(|e| anyhow::anyhow!("--input: {e}"))?;
        inputs.insert(name, value);
    }
    Ok(inputs)
}

/// Stops the run on ctrl-c or SIGTERM: in-flight calls finish, what they
/// did is committed, and the run can be resumed.
fn stop_on_signals() -> StopSignal {
    let stop = StopSignal::default();
    let token = stop.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!(
            "stopping: letting in-flight calls finish, then committing (ctrl-c again to abort)"
        );
        token.cancel();
        shutdown_signal().await;
        std::process::exit(130);
    });
    stop
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_store(dir: &Path) -> Result<RunStore> {
    RunStore::open(dir)
        .with_context(|| format!("failed to open the run store at {}", dir.display()))
}

async fn run(global: &Global, path: &Path, command: RunCommand) -> Result<ExitCode> {
    let workflow = Workflow::load(path)?;
    let inputs = gather_inputs(&workflow, &command)?;
    // A sandbox run keeps its state in a temporary directory unless told
    // otherwise, so demo runs never mix with real ones.
    let temp_state = if command.sandbox && global.state_dir.is_none() {
        Some(tempfile::tempdir().context("failed to create a temporary state dir")?)
    } else {
        None
    };
    let state_dir = match (&temp_state, &global.state_dir) {
        (Some(temp), _) => temp.path().to_path_buf(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => state_dir(global),
    };
    let executor = Executor::new(wasm_runtime(global)?, open_store(&state_dir)?);

    let mut emulators = None;
    let mut overrides = BTreeMap::new();
    let mut sandbox = None;
    if command.sandbox {
        let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
            seed: command.seed,
            stripe_port: 0,
            ..Default::default()
        })
        .await
        .context("failed to start the vendor emulators")?;
        let endpoints = running.endpoints();
        // Every connection, built-in or a path to a .wasm, is pointed at
        // the emulator of its vendor, or the run is refused: a sandbox run
        // never reaches a real vendor.
        for connection in workflow.connections.values() {
            let plugin = executor.plugin(&connection.name, &connection.plugin).await?;
            let endpoint = weft::emulators::choose(
                &endpoints,
                plugin.manifest(),
                connection.sandbox.as_deref(),
            )
            .with_context(|| format!("connection {:?} ({})", connection.name, connection.plugin))?;
            overrides.insert(
                connection.name.clone(),
                ConnectionOverride {
                    base_url: endpoint.base_url.clone(),
                    secret: Secret::new(endpoint.api_key.clone()),
                },
            );
        }
        sandbox = Some(endpoints.into_iter().map(|e| e.base_url).collect());
        if !command.json {
            eprintln!(
                "sandbox: emulators on loopback, {} demo records each; state in {}",
                command.seed,
                state_dir.display()
            );
        }
        emulators = Some(running);
    }

    if !command.json {
        eprintln!(
            "running {} ({}){}",
            workflow.name,
            path.display(),
            if command.dry_run { ", dry run: reads are real, no write is sent" } else { "" }
        );
    }
    let printer = Printer::new(command.json);
    // The executor confines a sandbox run's HTTP to the emulators, and
    // marks the run so that no resume sends its writes to the real vendors.
    let options = RunOptions {
        inputs,
        dry_run: command.dry_run,
        overrides,
        sandbox,
        stop: stop_on_signals(),
        ..RunOptions::default()
    };
    let summary = run_guarded(&executor, &workflow, &options, &printer).await?;
    let written = output_files(&workflow, &summary);
    report(&summary, &written, command.json)?;
    if let Some(emulators) = emulators {
        emulators.shutdown().await;
    }
    Ok(exit_code(&summary))
}

/// Records and runs a workflow; a panic during the run ends the run
/// `failed` (see [`guard_panics`]).
async fn run_guarded(
    executor: &Executor,
    workflow: &Workflow,
    options: &RunOptions,
    printer: &Printer,
) -> Result<RunSummary> {
    // Checked before recording, so a workflow that does not fit its
    // plugins leaves no run behind.
    executor.check(workflow).await?;
    let run = executor.create(workflow, options).await?;
    let id = run.id.clone();
    guard_panics(executor, &id, executor.execute(workflow, run, options, &fault_hook(printer)))
        .await
}

/// Runs `work`, the run `run_id`; if it panics (a bug in weft), the run is
/// marked failed with "internal error" instead of being left `running` by
/// a process that exits 101, and the error says so (exit code 3). So is a
/// run that meets damage in the store (a page that fails its checksum).
async fn guard_panics(
    executor: &Executor,
    run_id: &str,
    work: impl std::future::Future<Output = Result<RunSummary, ExecError>>,
) -> Result<RunSummary> {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(Err(ExecError::Store(damage))) if damage.is_damage() => {
            // Damage meets every resume again: the run ends failed.
            let error = damage.to_string();
            executor.store().fail_run(run_id, &error).await.with_context(|| {
                format!("run {run_id}: {error}; marking the run failed failed too")
            })?;
            anyhow::bail!("run {run_id}: {error}; the run is marked failed")
        }
        Ok(outcome) => Ok(outcome?),
        Err(panic) => {
            let message = weft::serve::panic_message(panic.as_ref());
            let error = format!("internal error: {message} (a bug in weft)");
            match executor.store().fail_run(run_id, &error).await {
                Ok(_) => anyhow::bail!("run {run_id}: {error}; the run is marked failed"),
                Err(e) => anyhow::bail!(
                    "run {run_id}: {error}; marking the run failed failed too ({e}), so it is left to resume"
                ),
            }
        }
    }
}

/// Debug builds only: with `WEFT_TEST_PANIC_AT_STEP=ID`, a panic when step
/// ID starts. No path from input to a panic is known to be left, so the
/// tests of what a panic does in a run inject one here.
fn fault_hook<'a>(observer: &'a dyn Observer) -> PanicAtStep<'a> {
    let step =
        if cfg!(debug_assertions) { std::env::var("WEFT_TEST_PANIC_AT_STEP").ok() } else { None };
    PanicAtStep { inner: observer, step }
}

/// See [`fault_hook`]; otherwise passes everything on.
struct PanicAtStep<'a> {
    inner: &'a dyn Observer,
    step: Option<String>,
}

impl Observer for PanicAtStep<'_> {
    fn run_started(&self, run: &RunRecord) {
        self.inner.run_started(run);
    }
    fn step_started(&self, step: &Step) {
        if self.step.as_deref() == Some(step.id.as_str()) {
            panic!("injected by WEFT_TEST_PANIC_AT_STEP at step {}", step.id);
        }
        self.inner.step_started(step);
    }
    fn page_committed(&self, step: &Step, records_so_far: u64) {
        self.inner.page_committed(step, records_so_far);
    }
    fn items_committed(&self, step: &Step, done: u64) {
        self.inner.items_committed(step, done);
    }
    fn step_finished(&self, step: &Step, state: &StepState, summary: &StepSummary) {
        self.inner.step_finished(step, state, summary);
    }
}

fn exit_code(summary: &RunSummary) -> ExitCode {
    match summary.status {
        Status::Succeeded => ExitCode::SUCCESS,
        // Interrupted by a signal: resumable, and not a failure of the run.
        Status::Running => ExitCode::from(exit::INTERRUPTED),
        _ => ExitCode::from(exit::RUN_FAILED),
    }
}

/// A file a list step wrote (`output`), for the summary.
#[derive(Debug, serde::Serialize)]
struct WrittenFile {
    /// The step.
    step: String,
    /// Where, as the workflow resolves it.
    path: PathBuf,
    /// Records in it.
    records: u64,
}

/// The output files the run's list steps wrote, in step order (a step that
/// did not start wrote none).
fn output_files(workflow: &Workflow, summary: &RunSummary) -> Vec<WrittenFile> {
    workflow
        .steps
        .iter()
        .zip(&summary.steps)
        .filter_map(|(step, done)| match &step.action {
            Action::List { output: Some(path), .. }
                if done.id == step.id
                    && !matches!(done.status, Status::Pending | Status::Skipped)
                    && path.exists() =>
            {
                Some(WrittenFile {
                    step: step.id.clone(),
                    path: path.clone(),
                    records: done.counts.read,
                })
            }
            _ => None,
        })
        .collect()
}

fn report(summary: &RunSummary, written: &[WrittenFile], json: bool) -> Result<()> {
    if json {
        let mut value = serde_json::to_value(summary)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("output_files".into(), serde_json::to_value(written)?);
            if let Some(peak) = peak_rss_bytes() {
                object.insert("peak_rss_bytes".into(), peak.into());
            }
        }
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &value)?;
        writeln!(stdout)?;
    } else {
        print_summary(summary, written);
    }
    Ok(())
}

/// The process's peak resident memory (Linux), for the summary.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

struct Printer {
    quiet: bool,
    /// When progress was last shown, to show it every few seconds on a
    /// terminal and never in a log.
    last_progress: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Printer {
    fn new(quiet: bool) -> Self {
        Printer { quiet, last_progress: std::sync::Mutex::new(None) }
    }

    fn progress(&self, step: &Step, what: std::fmt::Arguments<'_>) {
        use std::io::IsTerminal as _;
        if self.quiet || !std::io::stderr().is_terminal() {
            return;
        }
        let Ok(mut last) = self.last_progress.lock() else { return };
        if last.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(2)) {
            return;
        }
        *last = Some(std::time::Instant::now());
        eprintln!("  ...  {:<16} {what}", step.id);
    }
}

impl Observer for Printer {
    fn run_started(&self, run: &RunRecord) {
        if !self.quiet {
            eprintln!(
                "run {}{}",
                run.id,
                if run.resumes > 0 {
                    format!(" (resumed, attempt {})", run.resumes + 1)
                } else {
                    String::new()
                }
            );
        }
    }

    fn page_committed(&self, step: &Step, records_so_far: u64) {
        self.progress(step, format_args!("{records_so_far} records read"));
    }

    fn items_committed(&self, step: &Step, done: u64) {
        self.progress(step, format_args!("{done} done"));
    }

    fn step_finished(&self, step: &Step, _state: &StepState, s: &StepSummary) {
        if self.quiet {
            return;
        }
        let mark = match s.status {
            Status::Succeeded => "ok  ",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
            Status::Running => "stop",
            _ => "--  ",
        };
        eprintln!(
            "  {mark} {:<16} {:<7} {:<28} {:<28} {:>6.1}s",
            step.id,
            s.op,
            s.target,
            counts(s),
            s.duration_ms as f64 / 1000.0
        );
        if let Some(error) = &s.error {
            eprintln!("       {error}");
        }
        if let Some(plan) = &s.plan {
            print_plan(plan);
        }
    }
}

fn print_plan(plan: &weft::executor::StepPlan) {
    let parts = nonzero(&[
        (plan.create, "would create"),
        (plan.update, "would update"),
        (plan.upsert, "would upsert"),
        (plan.remove, "would remove"),
        (plan.unchanged, "unchanged"),
        (plan.already_absent, "already absent"),
    ]);
    eprintln!(
        "       plan: {}",
        if parts.is_empty() { "no writes".to_owned() } else { parts.join(", ") }
    );
    for sample in &plan.samples {
        let key = sample.key.as_deref().unwrap_or("(matched by the connector)");
        let detail = if !sample.changes.is_empty() {
            format!("fields {}", sample.changes.join(", "))
        } else {
            let record = sample.record.as_ref().map(|r| r.to_string()).unwrap_or_default();
            record.chars().take(100).collect()
        };
        eprintln!("         e.g. {} {key} {detail}", sample.action.as_str());
    }
    if !plan.irreversible.is_empty() {
        eprintln!(
            "       irreversible ({}):",
            plan.irreversible.len() as u64 + plan.irreversible_not_listed
        );
        for entry in &plan.irreversible {
            eprintln!("         {} {}", entry.action.as_str(), entry.key.as_deref().unwrap_or("?"));
        }
        if plan.irreversible_not_listed > 0 {
            eprintln!("         … and {} more", plan.irreversible_not_listed);
        }
    }
}

fn counts(s: &StepSummary) -> String {
    let c = s.counts;
    let parts = nonzero(&[
        (c.read, "read"),
        (c.created, "created"),
        (c.updated, "updated"),
        (c.unchanged, "unchanged"),
        (c.removed, "removed"),
        (c.absent, "already absent"),
        (c.failed, "failed"),
    ]);
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

/// "3 created", "1 failed", …: the counts that are not zero, in order.
fn nonzero(counts: &[(u64, &str)]) -> Vec<String> {
    counts.iter().filter(|(n, _)| *n > 0).map(|(n, what)| format!("{n} {what}")).collect()
}

fn print_summary(summary: &RunSummary, written: &[WrittenFile]) {
    let status = match summary.status {
        Status::Running => "interrupted".to_owned(),
        other if summary.dry_run => format!("{} (dry run: nothing was written)", other.as_str()),
        other => other.as_str().to_owned(),
    };
    eprintln!("run {} {status} in {:.1}s", summary.run_id, summary.duration_ms as f64 / 1000.0);
    for (name, stats) in &summary.connections {
        eprintln!(
            "  {name}: {} requests, {} throttled (429), {} retries, {} ms waiting",
            stats.requests, stats.throttled, stats.retries, stats.waited_ms
        );
    }
    for file in written {
        eprintln!("  wrote {} ({} records, step {})", file.path.display(), file.records, file.step);
    }
    if let Some(error) = &summary.error {
        eprintln!("{error}");
    }
    if summary.status == Status::Running {
        eprintln!("resume it with: weft runs resume {}", summary.run_id);
    }
}

fn state_dir(global: &Global) -> PathBuf {
    global
        .state_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_DATA_HOME", ".local/share", "state"))
}

/// Where a `weft serve` on this state dir listens, and the token it
/// gave this machine's CLI, from the file it wrote when it started.
#[derive(Debug, Clone)]
struct ServerAddress {
    base: String,
    token: Option<String>,
}

fn server_address(dir: &Path) -> Option<ServerAddress> {
    let text = std::fs::read_to_string(dir.join(SERVE_ADDRESS_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let scheme = value.get("scheme").and_then(|s| s.as_str()).unwrap_or("http");
    let base = value.get("addr")?.as_str().map(|a| format!("{scheme}://{a}"))?;
    let token = value.get("token").and_then(|t| t.as_str()).map(str::to_owned);
    Some(ServerAddress { base, token })
}

/// Name of the file `weft serve` writes into its state dir.
const SERVE_ADDRESS_FILE: &str = "weft-serve.json";

async fn runs(global: &Global, command: RunsCommand) -> Result<ExitCode> {
    let dir = state_dir(global);
    let store = match RunStore::open(&dir) {
        Ok(store) => store,
        Err(StoreError::Locked { .. }) if server_address(&dir).is_some() => {
            // A server holds the store; ask it.
            let Some(server) = server_address(&dir) else {
                anyhow::bail!(
                    "the run store at {} is held by a server that just stopped; try again",
                    dir.display()
                );
            };
            return runs_via_server(&server, command).await;
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("failed to open the run store at {}", dir.display()));
        }
    };
    match command {
        RunsCommand::List { json, limit } => {
            let mut runs = store.runs().await?;
            runs.reverse();
            runs.truncate(limit);
            if json {
                let rows: Vec<_> = runs.iter().map(RunView::from).collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else if runs.is_empty() {
                outln!("no runs in {}", dir.display())?;
            } else {
                print_runs(&runs.iter().map(RunView::from).collect::<Vec<_>>())?;
            }
        }
        RunsCommand::Show { run, json } => {
            let record = store.run(&run).await?;
            let steps = store.steps(&run).await?;
            let detail = RunDetail {
                run: RunView::from(&record),
                steps,
                active: None,
                history: store.history(&run).await?,
                connections: store.connection_totals(&run).await?,
            };
            if json {
                outln!("{}", serde_json::to_string_pretty(&detail)?)?;
            } else {
                print_run(&detail)?;
            }
        }
        RunsCommand::Resume { run, json } => {
            // A sandbox run is refused by the executor's resume itself, as
            // it is for `weft serve`.
            let executor = Executor::new(wasm_runtime(global)?, store);
            let printer = Printer::new(json);
            let options = RunOptions { stop: stop_on_signals(), ..RunOptions::default() };
            let summary = guard_panics(
                &executor,
                &run,
                executor.resume(&run, &options, &fault_hook(&printer)),
            )
            .await?;
            let record = executor.store().run(&run).await?;
            let written = match Executor::stored_workflow(&record) {
                Ok(workflow) => output_files(&workflow, &summary),
                Err(_) => Vec::new(),
            };
            report(&summary, &written, json)?;
            return Ok(exit_code(&summary));
        }
        RunsCommand::Cancel { run } => {
            // The store is open here, so no other process is running it.
            let executor = Executor::new(wasm_runtime(global)?, store);
            let record = executor.cancel_idle(&run).await?;
            outln!("run {} is {}", record.id, record.status.as_str())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn runs_via_server(server: &ServerAddress, command: RunsCommand) -> Result<ExitCode> {
    // The server's certificate may be one this machine does not trust
    // (self-signed); the connection goes to this machine's loopback.
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(server.base.starts_with("https://"))
        .build()?;
    let base = server.base.as_str();
    let token = server.token.clone();
    let call = |request: reqwest::RequestBuilder| async move {
        let request = match &token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.with_context(|| {
            format!("the run store is held by a weft serve at {base}, which does not answer")
        })?;
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            anyhow::bail!(
                "weft serve at {base}: {status}: {}",
                body.get("error").and_then(serde_json::Value::as_str).unwrap_or("")
            );
        }
        Ok(body)
    };
    match command {
        RunsCommand::List { json, limit } => {
            let body = call(client.get(format!("{base}/api/runs?limit={limit}"))).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?)?;
            } else {
                let rows: Vec<RunView> = serde_json::from_value(body).with_context(|| {
                    format!("weft serve at {base}: a run list that does not read")
                })?;
                print_runs(&rows)?;
            }
        }
        RunsCommand::Show { run, json } => {
            let body = call(client.get(format!("{base}/api/runs/{run}"))).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&body)?)?;
            } else {
                let detail: RunDetail = serde_json::from_value(body)
                    .with_context(|| format!("weft serve at {base}: run {run} does not read"))?;
                print_run(&detail)?;
            }
        }
        RunsCommand::Resume { run, .. } => {
            call(
                client
                    .post(format!("{base}/api/runs/{run}/resume"))
                    .header("content-type", "application/json"),
            )
            .await?;
            outln!("run {run} is resuming in the weft serve at {base}")?;
        }
        RunsCommand::Cancel { run } => {
            let body = call(
                client
                    .post(format!("{base}/api/runs/{run}/cancel"))
                    .header("content-type", "application/json"),
            )
            .await?;
            outln!(
                "run {run}: {}",
                body.get("status").and_then(serde_json::Value::as_str).unwrap_or("cancelling")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_runs(rows: &[RunView]) -> std::io::Result<()> {
    outln!("{:<18} {:<24} {:<10} {:<8} {:>10}", "run", "workflow", "status", "trigger", "seconds")?;
    for r in rows {
        let seconds = r
            .finished_ms
            .map(|f| format!("{:.1}", f.saturating_sub(r.created_ms) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        let status = if r.dry_run {
            format!("{} (dry)", r.status.as_str())
        } else {
            r.status.as_str().to_owned()
        };
        outln!(
            "{:<18} {:<24} {:<10} {:<8} {:>10}",
            r.id,
            r.workflow,
            status,
            r.trigger.as_str(),
            seconds
        )?;
    }
    Ok(())
}

fn print_run(detail: &RunDetail) -> std::io::Result<()> {
    let run = &detail.run;
    outln!("run {} of {} ({}), {}", run.id, run.workflow, run.workflow_path, run.status.as_str())?;
    outln!("workflow sha256 {}", run.workflow_hash)?;
    outln!("trigger {}, resumed {} times", run.trigger, run.resumes)?;
    for s in &detail.steps {
        let c = s.counts;
        outln!(
            "  {:<20} {:<10} attempts {}  read {} created {} updated {} unchanged {} removed {} absent {} failed {}{}{}",
            s.id,
            s.status.as_str(),
            s.attempts,
            c.read,
            c.created,
            c.updated,
            c.unchanged,
            c.removed,
            c.absent,
            c.failed,
            if s.pages > 0 { format!("  pages {}", s.pages) } else { String::new() },
            if s.items > 0 { format!("  items {}", s.items) } else { String::new() },
        )?;
        if let Some(error) = &s.error {
            outln!("  {:<20} {error}", "")?;
        }
    }
    if let Some(error) = &run.error {
        outln!("{error}")?;
    }
    Ok(())
}

async fn serve(
    global: &Global,
    paths: &[PathBuf],
    config: weft::serve::ServeConfig,
) -> Result<ExitCode> {
    let mut workflows = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("failed to read {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    // A file that does not load is reported (and shown by the console)
    // and the others are served; with none to serve, nothing starts.
    let mut broken = Vec::new();
    for file in &files {
        match Workflow::load(file) {
            Ok(workflow) => workflows.push(workflow),
            Err(e) => {
                eprintln!("weft serve: not serving {}: {e}", file.display());
                broken.push((file.display().to_string(), e.to_string()));
            }
        }
    }
    if workflows.is_empty() {
        anyhow::bail!("no workflow loaded; nothing to serve");
    }
    let dir = state_dir(global);
    let executor = Executor::new(wasm_runtime(global)?, open_store(&dir)?);
    let grace = config.shutdown_grace;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let config = weft::serve::ServeConfig {
        workflows,
        broken,
        address_file: Some(dir.join(SERVE_ADDRESS_FILE)),
        ..config
    };
    let served = config.workflows.len();
    let server = weft::serve::start(executor, config).await?;
    eprintln!(
        "weft serve: listening on {scheme}://{} with {served} workflow(s); console at {scheme}://{}/; state in {}",
        server.addr,
        server.addr,
        dir.display()
    );
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        eprintln!(
            "stopping: no new runs; in-flight calls finish (up to {}), then exit",
            humantime::format_duration(grace)
        );
        token.cancel();
    });
    server.wait().await;
    Ok(ExitCode::SUCCESS)
}

async fn validate(global: &Global, files: &[PathBuf]) -> Result<ExitCode> {
    let runtime = wasm_runtime(global)?;
    let scratch = tempfile::tempdir()?;
    let executor = Executor::new(runtime, RunStore::open(scratch.path())?);
    let mut failed = 0;
    for file in files {
        let outcome = match Workflow::load(file) {
            Ok(workflow) => {
                executor.check(&workflow).await.map(|_| ()).map_err(anyhow::Error::from)
            }
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => outln!("ok: {}", file.display())?,
            Err(e) => {
                failed += 1;
                eprintln!("{e:#}\n");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} workflow(s) invalid", files.len());
        return Ok(ExitCode::from(exit::INVALID));
    }
    Ok(ExitCode::SUCCESS)
}

async fn load_plugin(global: &Global, plugin: &str) -> Result<weft::runtime::Plugin> {
    let runtime = wasm_runtime(global)?;
    Ok(if plugin.ends_with(".wasm") {
        runtime.load_file(Path::new(plugin)).await?
    } else {
        let bytes = weft::builtin::component(plugin).with_context(|| {
            format!(
                "no built-in plugin named {plugin:?} (built in: {})",
                weft::builtin::names().collect::<Vec<_>>().join(", ")
            )
        })?;
        runtime.load(plugin, bytes).await?
    })
}

struct CheckOptions {
    base_url: Option<String>,
    credentials: Option<String>,
    sandbox: bool,
    emulator: Option<String>,
    resource: Option<String>,
    settings: Vec<(String, String)>,
    samples: Vec<(String, String)>,
    allow_irreversible: bool,
    page_size: Option<u32>,
    json: bool,
}

async fn check_plugin(global: &Global, plugin: &str, options: CheckOptions) -> Result<ExitCode> {
    use weft::conformance::{CheckTarget, Verdict};
    let loaded = load_plugin(global, plugin).await?;
    let mut samples = Vec::new();
    for (resource, text) in &options.samples {
        let value: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("--sample {resource}=…: not JSON"))?;
        samples.push((resource.clone(), value));
    }
    let mut emulators = None;
    let mut settings = options.settings.clone();
    let (base_url, secret) = if options.sandbox {
        let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
            seed: 25,
            ..Default::default()
        })
        .await?;
        let endpoints = running.endpoints();
        // By the manifest's vendor, so a third-party connector of a vendor
        // the sandbox emulates is checked against that emulator.
        let endpoint =
            weft::emulators::choose(&endpoints, loaded.manifest(), options.emulator.as_deref())?
                .clone();
        // The samples and settings are the emulator's API's, whoever wrote
        // the connector.
        if samples.is_empty() {
            samples = weft::conformance::builtin_samples(endpoint.vendor);
        }
        if options.settings.is_empty() {
            settings = weft::conformance::sandbox_settings(endpoint.vendor);
        }
        emulators = Some(running);
        (endpoint.base_url, Some(Secret::new(endpoint.api_key)))
    } else {
        let secret = match &options.credentials {
            Some(reference) => {
                Some(weft::credentials::CredentialSource::parse(reference)?.resolve()?)
            }
            None => None,
        };
        (options.base_url.clone().context("--base-url is required without --sandbox")?, secret)
    };
    let target = CheckTarget {
        base_url,
        secret,
        settings,
        resource: options.resource.clone(),
        samples,
        allow_irreversible: options.allow_irreversible || options.sandbox,
        page_size: options.page_size,
    };
    let results = weft::conformance::check(&loaded, &target).await?;
    if let Some(running) = emulators {
        running.shutdown().await;
    }
    let failed = results.iter().filter(|r| r.verdict == Verdict::Fail).count();
    if options.json {
        outln!("{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        for r in &results {
            let mark = match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            outln!("{mark}  {:<14} {:<44} {}", r.resource, r.check, r.detail)?;
        }
        outln!(
            "{} passed, {failed} failed, {} skipped",
            results.iter().filter(|r| r.verdict == Verdict::Pass).count(),
            results.iter().filter(|r| r.verdict == Verdict::Skip).count()
        )?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::RUN_FAILED) })
}

async fn inspect(global: &Global, plugin: &str, json: bool) -> Result<ExitCode> {
    let loaded = load_plugin(global, plugin).await?;
    let manifest = loaded.manifest();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "manifest": manifest, "sha256": loaded.digest() })
            )?
        )?;
    } else {
        print_manifest(manifest, loaded.digest())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_manifest(m: &Manifest, digest: &str) -> std::io::Result<()> {
    outln!("{} {} — {}", m.name, m.version, m.vendor)?;
    outln!("{}", m.description)?;
    outln!()?;
    outln!("base url:    {}", m.default_base_url)?;
    outln!(
        "auth:        {}",
        match &m.auth {
            weft::connector::AuthScheme::None => "none".to_owned(),
            weft::connector::AuthScheme::Bearer => "bearer token".to_owned(),
            weft::connector::AuthScheme::BasicKeyAsUser => "basic, key as user".to_owned(),
            weft::connector::AuthScheme::Header(h) => format!("header {h}"),
        }
    )?;
    if !m.extra_hosts.is_empty() {
        outln!("extra hosts: {}", m.extra_hosts.join(", "))?;
    }
    outln!("sha256:      {digest}")?;
    outln!()?;
    outln!("resources:")?;
    for r in &m.resources {
        let ops: Vec<String> = r
            .ops
            .iter()
            .map(|op| {
                if r.is_irreversible(*op) { format!("{op} (irreversible)") } else { op.to_string() }
            })
            .collect();
        outln!("  {:<16} {}", r.name, ops.join(", "))?;
        outln!(
            "  {:<16} id field {}, page size {} (max {})",
            "",
            r.id_field,
            r.default_page_size,
            r.max_page_size
        )?;
        if !r.description.is_empty() {
            outln!("  {:<16} {}", "", r.description)?;
        }
    }
    if !m.rate_limits.is_empty() {
        outln!()?;
        outln!("published rate limits:")?;
        for l in &m.rate_limits {
            let prefix =
                l.credential_prefix.as_deref().map(|p| format!(" (keys {p}…)")).unwrap_or_default();
            outln!("  {:?}: {} per {}s{prefix}", l.method_class, l.requests, l.per_seconds)?;
        }
    }
    if !m.settings.is_empty() {
        outln!()?;
        outln!("settings:")?;
        for s in &m.settings {
            outln!(
                "  {:<16} {}{}",
                s.name,
                s.description,
                if s.required { " (required)" } else { "" }
            )?;
        }
    }
    Ok(())
}

async fn serve_sandbox(seed: usize, stripe_port: u16) -> Result<ExitCode> {
    let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed,
        stripe_port,
        ..Default::default()
    })
    .await
    .context("failed to start the vendor emulators")?;
    outln!(
        "weft sandbox: vendor emulators on loopback ({seed} demo records each); ctrl-c stops them"
    )?;
    for endpoint in running.endpoints() {
        outln!("  {:<12} {:<28} key {}", endpoint.vendor, endpoint.base_url, endpoint.api_key)?;
    }
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await.context("failed to wait for ctrl-c")?;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
