//! `weft run`: run a workflow once, now; and what `weft runs resume` shares
//! with it (a run whose panic or damaged store ends it failed, the exit
//! code of a run).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Args;
use weft::credentials::{CredentialSource, Secret};
use weft::executor::{
    ConnectionOverride, ExecError, Executor, Observer, RunOptions, RunSummary, StepSummary,
};
use weft::metrics::Metrics;
use weft::plugin_fixtures::{FixtureSet, Recorder, Redaction, Replayer};
use weft::store::{RunRecord, Status, StepState, StoreLocation};
use weft::workflow::{Step, Workflow};

use super::print::{Printer, output_files, report};
use super::{Global, open_location, stop_on_signals, store_location, wasm_runtime};
use crate::exit;

// No `///` here: clap would take it for the command's about, which the
// `Command::Run` variant in main.rs gives.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
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
    /// When the run ends, write its metrics (the names of `weft serve`'s
    /// /metrics) to FILE in Prometheus's text format, replacing it whole:
    /// for node_exporter's textfile collector when cron starts `weft run`.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Record every connection's HTTP exchanges to DIR/CONNECTION (as
    /// `weft plugin record` does for a check): credentials removed, the
    /// --redact fields redacted. With --sandbox, against the emulators.
    #[arg(long, value_name = "DIR", conflicts_with = "replay")]
    record: Option<PathBuf>,
    /// With --record: a field to redact (`email`, `customer.email`) in JSON
    /// and form bodies and queries; repeatable.
    #[arg(long, value_name = "FIELD.PATH", requires = "record")]
    redact: Vec<String>,
    /// Run offline against what --record wrote to DIR: every connection is
    /// answered from its fixtures, no vendor is contacted, the state is
    /// kept in a temporary directory, and a request the fixtures do not
    /// hold fails the run, named.
    #[arg(long, value_name = "DIR", conflicts_with = "sandbox")]
    replay: Option<PathBuf>,
}

/// What `weft run --record` writes for each connection beside its
/// exchanges, in `fixtures.json`'s `check`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RecordedRun {
    workflow: String,
    connection: String,
}

/// The proxies of a `--record` or `--replay` run, by connection.
enum Fixtures {
    None,
    Recording(PathBuf, Vec<(String, FixtureSet, Recorder)>),
    Replaying(PathBuf, Vec<(String, Replayer)>),
}

/// Puts a recording proxy in front of every connection of `workflow`
/// (its override, else its own base URL and credential), and points the
/// connection at it.
async fn start_recording(
    executor: &Executor,
    workflow: &Workflow,
    dir: &std::path::Path,
    redact: &[String],
    overrides: &mut BTreeMap<String, ConnectionOverride>,
    sandbox: &mut Option<Vec<String>>,
) -> Result<Fixtures> {
    let mut recording = Vec::new();
    for connection in workflow.connections.values() {
        let plugin = executor.plugin(&connection.name, &connection.plugin).await?;
        let (base_url, secret) = match overrides.get(&connection.name) {
            Some(o) => (o.base_url.clone(), o.secret.clone()),
            None => {
                let reference = connection.credentials.as_deref().with_context(|| {
                    format!("connection {:?} has no credentials to record with", connection.name)
                })?;
                let secret = CredentialSource::parse(reference)
                    .and_then(|source| source.resolve())
                    .with_context(|| format!("connection {:?}", connection.name))?;
                let base = connection
                    .base_url
                    .clone()
                    .unwrap_or_else(|| plugin.manifest().default_base_url.clone());
                (base, secret)
            }
        };
        let redaction = Redaction::new(
            redact,
            Some(secret.expose()),
            super::plugin_record::auth_header(&plugin).as_deref(),
        );
        let recorder = Recorder::start(&base_url, redaction)
            .await
            .with_context(|| format!("connection {:?}: the recording proxy", connection.name))?;
        if let Some(allowed) = sandbox.as_mut() {
            allowed.push(recorder.base_url());
        }
        overrides.insert(
            connection.name.clone(),
            ConnectionOverride { base_url: recorder.base_url(), secret },
        );
        let set = FixtureSet {
            plugin: connection.plugin.to_string(),
            plugin_sha256: plugin.digest().to_owned(),
            base_path: recorder.base_path().to_owned(),
            authenticated: true,
            redact: redact.to_vec(),
            check: serde_json::to_value(RecordedRun {
                workflow: workflow.name.clone(),
                connection: connection.name.clone(),
            })?,
            exchanges: 0,
        };
        recording.push((connection.name.clone(), set, recorder));
    }
    Ok(Fixtures::Recording(dir.to_path_buf(), recording))
}

/// Points every connection of `workflow` at a server answering from
/// `dir/CONNECTION`, and confines the run's HTTP to those servers.
async fn start_replaying(
    executor: &Executor,
    workflow: &Workflow,
    dir: &std::path::Path,
    overrides: &mut BTreeMap<String, ConnectionOverride>,
    sandbox: &mut Option<Vec<String>>,
) -> Result<Fixtures> {
    let mut replaying = Vec::new();
    let mut allowed = Vec::new();
    for connection in workflow.connections.values() {
        let plugin = executor.plugin(&connection.name, &connection.plugin).await?;
        let fixtures = dir.join(&connection.name);
        let (set, exchanges) = weft::plugin_fixtures::read(&fixtures).with_context(|| {
            format!(
                "connection {:?}: reading the fixtures in {}",
                connection.name,
                fixtures.display()
            )
        })?;
        if set.plugin_sha256 != plugin.digest() {
            eprintln!(
                "note: connection {:?} was recorded with {} (sha256 {}); replaying with sha256 {}",
                connection.name,
                set.plugin,
                set.plugin_sha256,
                plugin.digest()
            );
        }
        let redaction = Redaction::new(
            &set.redact,
            None,
            super::plugin_record::auth_header(&plugin).as_deref(),
        );
        let replayer = Replayer::start(&set.base_path, exchanges, redaction).await?;
        allowed.push(replayer.base_url());
        overrides.insert(
            connection.name.clone(),
            ConnectionOverride {
                base_url: replayer.base_url(),
                secret: Secret::new(super::plugin_record::REPLAY_KEY.to_owned()),
            },
        );
        replaying.push((connection.name.clone(), replayer));
    }
    // Only the replay servers may be reached, as a sandbox run reaches only
    // its emulators.
    *sandbox = Some(allowed);
    Ok(Fixtures::Replaying(dir.to_path_buf(), replaying))
}

/// Writes what was recorded, or says what a replay missed: `false` when a
/// request found no fixture.
fn finish_fixtures(fixtures: Fixtures) -> Result<bool> {
    match fixtures {
        Fixtures::None => Ok(true),
        Fixtures::Recording(dir, recording) => {
            for (connection, mut set, recorder) in recording {
                let exchanges = recorder.finish();
                set.exchanges = exchanges.len();
                let out = dir.join(&connection);
                weft::plugin_fixtures::write(&out, &set, &exchanges)
                    .with_context(|| format!("writing the fixtures to {}", out.display()))?;
                eprintln!(
                    "recorded {} exchanges of connection {connection:?} to {}",
                    exchanges.len(),
                    out.display()
                );
            }
            Ok(true)
        }
        Fixtures::Replaying(dir, replaying) => {
            let mut complete = true;
            for (connection, replayer) in replaying {
                let outcome = replayer.finish();
                for miss in &outcome.misses {
                    complete = false;
                    eprintln!(
                        "error: no fixture in {} holds the request {miss}",
                        dir.join(&connection).display()
                    );
                }
                if !outcome.unused.is_empty() {
                    eprintln!(
                        "note: {} recorded exchanges of connection {connection:?} were not asked for",
                        outcome.unused.len()
                    );
                }
            }
            Ok(complete)
        }
    }
}

/// Writes `metrics` to `path` whole: a temporary file beside it, renamed
/// over it, so a collector never reads half a file.
fn write_metrics_file(path: &std::path::Path, metrics: &Metrics) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let partial = path.with_file_name(format!(".{name}.{}.partial", std::process::id()));
    std::fs::write(&partial, metrics.encode_prometheus_text())
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("failed to write the metrics to {}", path.display()))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&partial);
        })
}

fn gather_inputs(
    workflow: &Workflow,
    command: &RunArgs,
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

/// `weft run`.
pub(crate) async fn run(global: &Global, command: RunArgs) -> Result<ExitCode> {
    let path = command.workflow.as_path();
    let workflow = Workflow::load(path)?;
    let inputs = gather_inputs(&workflow, &command)?;
    // A sandbox run keeps its state in a temporary directory unless told
    // otherwise, so demo runs never mix with real ones.
    let temp_state = if (command.sandbox || command.replay.is_some())
        && global.state_dir.is_none()
        && global.store.is_none()
    {
        Some(tempfile::tempdir().context("failed to create a temporary state dir")?)
    } else {
        None
    };
    let location = match &temp_state {
        Some(temp) => StoreLocation::Sled(temp.path().to_path_buf()),
        None => store_location(global)?,
    };
    let mut executor = Executor::new(wasm_runtime(global)?, open_location(&location).await?);
    let metrics = command.metrics_file.as_ref().map(|_| Arc::new(Metrics::new()));
    if let Some(metrics) = &metrics {
        executor = executor.with_metrics(metrics.clone());
    }

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
                command.seed, location
            );
        }
        emulators = Some(running);
    }

    let fixtures = match (&command.record, &command.replay) {
        (Some(dir), _) => {
            start_recording(
                &executor,
                &workflow,
                dir,
                &command.redact,
                &mut overrides,
                &mut sandbox,
            )
            .await?
        }
        (None, Some(dir)) => {
            start_replaying(&executor, &workflow, dir, &mut overrides, &mut sandbox).await?
        }
        (None, None) => Fixtures::None,
    };

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
    if let (Some(path), Some(metrics)) = (&command.metrics_file, &metrics) {
        write_metrics_file(path, metrics)?;
    }
    let written = output_files(&workflow, &summary);
    report(&summary, &written, command.json)?;
    let complete = finish_fixtures(fixtures)?;
    if let Some(emulators) = emulators {
        emulators.shutdown().await;
    }
    Ok(if complete { exit_code(&summary) } else { ExitCode::from(exit::RUN_FAILED) })
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
pub(crate) async fn guard_panics(
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
pub(crate) fn fault_hook<'a>(observer: &'a dyn Observer) -> PanicAtStep<'a> {
    let step =
        if cfg!(debug_assertions) { std::env::var("WEFT_TEST_PANIC_AT_STEP").ok() } else { None };
    PanicAtStep { inner: observer, step }
}

/// See [`fault_hook`]; otherwise passes everything on.
pub(crate) struct PanicAtStep<'a> {
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

/// The exit code a run ends the process with.
pub(crate) fn exit_code(summary: &RunSummary) -> ExitCode {
    match summary.status {
        Status::Succeeded => ExitCode::SUCCESS,
        // Interrupted by a signal: resumable, and not a failure of the run.
        Status::Running => ExitCode::from(exit::INTERRUPTED),
        _ => ExitCode::from(exit::RUN_FAILED),
    }
}
