//! The `weft` command line.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use weft::connector::Manifest;
use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, ExecError, Executor, Observer, RunSummary, StepSummary};
use weft::runtime::{Runtime, RuntimeConfig};
use weft::store::{RunStore, Status, StepState};
use weft::workflow::{LoadError, PluginRef, Step, Workflow};

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
        /// Check against the built-in emulator of this connector's vendor.
        #[arg(long, conflicts_with_all = ["base_url", "credentials"])]
        sandbox: bool,
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

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

/// Exit codes: what kind of failure, for scripts.
mod exit {
    pub const RUN_FAILED: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const INTERNAL: u8 = 3;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&cli.global.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            let code = match error.downcast_ref::<ExecError>() {
                Some(ExecError::Store(_)) => exit::INTERNAL,
                Some(_) => exit::INVALID,
                None if error.downcast_ref::<LoadError>().is_some() => exit::INVALID,
                None if matches!(error.downcast_ref::<weft::store::StoreError>(), Some(weft::store::StoreError::UnknownRun(_))) => exit::INVALID,
                None => exit::INTERNAL,
            };
            ExitCode::from(code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { workflow, json, sandbox, seed } => run(&cli.global, &workflow, json, sandbox, seed).await,
        Command::Validate { files } => validate(&cli.global, &files).await,
        Command::Plugin { command: PluginCommand::Inspect { plugin, json } } => inspect(&cli.global, &plugin, json).await,
        Command::Plugin { command: PluginCommand::List } => {
            for name in weft::builtin::names() {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin { command: PluginCommand::Check { plugin, base_url, credentials, sandbox, resource, settings, samples, allow_irreversible, page_size, json } } => {
            let options = CheckOptions { base_url, credentials, sandbox, resource, settings, samples, allow_irreversible, page_size, json };
            check_plugin(&cli.global, &plugin, options).await
        }
        Command::Sandbox { seed, stripe_port } => serve_sandbox(seed, stripe_port).await,
        Command::Runs { command } => runs(&cli.global, command),
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
    let cache_dir = global.cache_dir.clone().unwrap_or_else(|| default_dir("XDG_CACHE_HOME", ".cache", "components"));
    Ok(Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir), ..RuntimeConfig::default() })?)
}

async fn run(global: &Global, path: &Path, json: bool, sandbox: bool, seed: usize) -> Result<ExitCode> {
    let workflow = Workflow::load(path)?;
    // A sandbox run keeps its state in a temporary directory unless told
    // otherwise, so demo runs never mix with real ones.
    let temp_state = if sandbox && global.state_dir.is_none() { Some(tempfile::tempdir().context("failed to create a temporary state dir")?) } else { None };
    let state_dir = match (&temp_state, &global.state_dir) {
        (Some(temp), _) => temp.path().to_path_buf(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => state_dir(global),
    };
    let store = RunStore::open(&state_dir).with_context(|| format!("failed to open the run store at {}", state_dir.display()))?;
    let executor = Executor::new(wasm_runtime(global)?, store);

    let mut emulators = None;
    let mut overrides = BTreeMap::new();
    if sandbox {
        let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions { seed, stripe_port: 0, ..Default::default() })
            .await
            .context("failed to start the vendor emulators")?;
        for connection in workflow.connections.values() {
            let PluginRef::Builtin(name) = &connection.plugin else { continue };
            let Some(endpoint) = running.endpoints().into_iter().find(|e| e.vendor == name.as_str()) else {
                anyhow::bail!("connection {:?}: there is no emulator for plugin {name} in the sandbox", connection.name);
            };
            overrides.insert(connection.name.clone(), ConnectionOverride { base_url: endpoint.base_url, secret: Secret::new(endpoint.api_key) });
        }
        if !json {
            eprintln!("sandbox: emulators on loopback, {seed} demo records each; state in {}", state_dir.display());
        }
        emulators = Some(running);
    }

    if !json {
        eprintln!("running {} ({})", workflow.name, path.display());
    }
    let printer = Printer { quiet: json };
    let summary = executor.run(&workflow, &overrides, &printer).await?;
    if json {
        let mut stdout = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut stdout, &summary)?;
        writeln!(stdout)?;
    } else {
        print_summary(&summary);
    }
    if let Some(emulators) = emulators {
        emulators.shutdown().await;
    }
    Ok(if summary.status == Status::Succeeded { ExitCode::SUCCESS } else { ExitCode::from(exit::RUN_FAILED) })
}

struct Printer {
    quiet: bool,
}

impl Observer for Printer {
    fn step_finished(&self, step: &Step, _state: &StepState, s: &StepSummary) {
        if self.quiet {
            return;
        }
        let mark = match s.status {
            Status::Succeeded => "ok  ",
            Status::Failed => "FAIL",
            _ => "--  ",
        };
        eprintln!("  {mark} {:<16} {:<7} {:<28} {:<28} {:>6.1}s", step.id, s.op.as_str(), s.target, counts(s), s.duration_ms as f64 / 1000.0);
        if let Some(error) = &s.error {
            eprintln!("       {error}");
        }
    }
}

fn counts(s: &StepSummary) -> String {
    let c = s.counts;
    let parts: Vec<String> = [
        (c.read, "read"),
        (c.created, "created"),
        (c.updated, "updated"),
        (c.unchanged, "unchanged"),
        (c.removed, "removed"),
        (c.absent, "already absent"),
        (c.failed, "failed"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() { "-".into() } else { parts.join(", ") }
}

fn print_summary(summary: &RunSummary) {
    eprintln!(
        "run {} {} in {:.1}s",
        summary.run_id,
        summary.status.as_str(),
        summary.duration_ms as f64 / 1000.0
    );
    for (name, stats) in &summary.connections {
        eprintln!(
            "  {name}: {} requests, {} throttled (429), {} retries, {} ms waiting",
            stats.requests, stats.throttled, stats.retries, stats.waited_ms
        );
    }
    if let Some(error) = &summary.error {
        eprintln!("{error}");
    }
}

fn state_dir(global: &Global) -> PathBuf {
    global.state_dir.clone().unwrap_or_else(|| default_dir("XDG_DATA_HOME", ".local/share", "state"))
}

fn runs(global: &Global, command: RunsCommand) -> Result<ExitCode> {
    let dir = state_dir(global);
    let store = RunStore::open(&dir).with_context(|| format!("failed to open the run store at {}", dir.display()))?;
    match command {
        RunsCommand::List { json, limit } => {
            let mut runs = store.runs()?;
            runs.reverse();
            runs.truncate(limit);
            if json {
                let rows: Vec<_> = runs
                    .iter()
                    .map(|r| serde_json::json!({ "id": r.id, "workflow": r.workflow, "status": r.status, "created_ms": r.created_ms, "finished_ms": r.finished_ms, "error": r.error }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if runs.is_empty() {
                println!("no runs in {}", dir.display());
            } else {
                println!("{:<18} {:<24} {:<10} {:>10}", "run", "workflow", "status", "seconds");
                for r in &runs {
                    let seconds = r.finished_ms.map(|f| format!("{:.1}", f.saturating_sub(r.created_ms) as f64 / 1000.0)).unwrap_or_else(|| "-".into());
                    println!("{:<18} {:<24} {:<10} {:>10}", r.id, r.workflow, r.status.as_str(), seconds);
                }
            }
        }
        RunsCommand::Show { run, json } => {
            let record = store.run(&run)?;
            let steps = store.steps(&run)?;
            if json {
                let mut value = serde_json::to_value(&record)?;
                if let Some(object) = value.as_object_mut() {
                    // The text is in the store for resuming; the listing needs only its hash.
                    object.remove("workflow_text");
                    object.insert("steps".into(), serde_json::to_value(&steps)?);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                println!("run {} of {} ({}), {}", record.id, record.workflow, record.workflow_path, record.status.as_str());
                println!("workflow sha256 {}", record.workflow_hash);
                for s in &steps {
                    let c = s.counts;
                    println!(
                        "  {:<20} {:<10} attempts {}  read {} created {} updated {} unchanged {} removed {} absent {}{}",
                        s.id,
                        s.status.as_str(),
                        s.attempts,
                        c.read,
                        c.created,
                        c.updated,
                        c.unchanged,
                        c.removed,
                        c.absent,
                        if s.pages > 0 { format!("  pages {}", s.pages) } else { String::new() }
                    );
                    if let Some(error) = &s.error {
                        println!("  {:<20} {error}", "");
                    }
                }
                if let Some(error) = &record.error {
                    println!("{error}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn validate(global: &Global, files: &[PathBuf]) -> Result<ExitCode> {
    let runtime = wasm_runtime(global)?;
    let scratch = tempfile::tempdir()?;
    let executor = Executor::new(runtime, RunStore::open(scratch.path())?);
    let mut failed = 0;
    for file in files {
        let outcome = match Workflow::load(file) {
            Ok(workflow) => executor.check(&workflow).await.map(|_| ()).map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        match outcome {
            Ok(()) => println!("ok: {}", file.display()),
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
            format!("no built-in plugin named {plugin:?} (built in: {})", weft::builtin::names().collect::<Vec<_>>().join(", "))
        })?;
        runtime.load(plugin, bytes).await?
    })
}

struct CheckOptions {
    base_url: Option<String>,
    credentials: Option<String>,
    sandbox: bool,
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
        let value: serde_json::Value = serde_json::from_str(text).with_context(|| format!("--sample {resource}=…: not JSON"))?;
        samples.push((resource.clone(), value));
    }
    let mut emulators = None;
    let mut settings = options.settings.clone();
    let (base_url, secret) = if options.sandbox {
        let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions { seed: 25, ..Default::default() }).await?;
        let name = &loaded.manifest().name;
        let endpoint = running
            .endpoints()
            .into_iter()
            .find(|e| e.vendor == name.as_str())
            .with_context(|| format!("the sandbox has no emulator for {name}"))?;
        if samples.is_empty() {
            samples = weft::conformance::builtin_samples(name);
        }
        if options.settings.is_empty() {
            settings = weft::conformance::sandbox_settings(name);
        }
        emulators = Some(running);
        (endpoint.base_url, Some(Secret::new(endpoint.api_key)))
    } else {
        let secret = match &options.credentials {
            Some(reference) => Some(weft::credentials::CredentialSource::parse(reference)?.resolve()?),
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
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            let mark = match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            println!("{mark}  {:<14} {:<44} {}", r.resource, r.check, r.detail);
        }
        println!("{} passed, {failed} failed, {} skipped", results.iter().filter(|r| r.verdict == Verdict::Pass).count(), results.iter().filter(|r| r.verdict == Verdict::Skip).count());
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::RUN_FAILED) })
}

async fn inspect(global: &Global, plugin: &str, json: bool) -> Result<ExitCode> {
    let loaded = load_plugin(global, plugin).await?;
    let manifest = loaded.manifest();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "manifest": manifest, "sha256": loaded.digest() }))?);
    } else {
        print_manifest(manifest, loaded.digest());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_manifest(m: &Manifest, digest: &str) {
    println!("{} {} — {}", m.name, m.version, m.vendor);
    println!("{}", m.description);
    println!();
    println!("base url:    {}", m.default_base_url);
    println!("auth:        {}", match &m.auth {
        weft::connector::AuthScheme::None => "none".to_owned(),
        weft::connector::AuthScheme::Bearer => "bearer token".to_owned(),
        weft::connector::AuthScheme::BasicKeyAsUser => "basic, key as user".to_owned(),
        weft::connector::AuthScheme::Header(h) => format!("header {h}"),
    });
    if !m.extra_hosts.is_empty() {
        println!("extra hosts: {}", m.extra_hosts.join(", "));
    }
    println!("sha256:      {digest}");
    println!();
    println!("resources:");
    for r in &m.resources {
        let ops: Vec<String> = r
            .ops
            .iter()
            .map(|op| if r.is_irreversible(*op) { format!("{op} (irreversible)") } else { op.to_string() })
            .collect();
        println!("  {:<16} {}", r.name, ops.join(", "));
        println!("  {:<16} id field {}, page size {} (max {})", "", r.id_field, r.default_page_size, r.max_page_size);
        if !r.description.is_empty() {
            println!("  {:<16} {}", "", r.description);
        }
    }
    if !m.rate_limits.is_empty() {
        println!();
        println!("published rate limits:");
        for l in &m.rate_limits {
            let prefix = l.credential_prefix.as_deref().map(|p| format!(" (keys {p}…)")).unwrap_or_default();
            println!("  {:?}: {} per {}s{prefix}", l.method_class, l.requests, l.per_seconds);
        }
    }
    if !m.settings.is_empty() {
        println!();
        println!("settings:");
        for s in &m.settings {
            println!("  {:<16} {}{}", s.name, s.description, if s.required { " (required)" } else { "" });
        }
    }
}

async fn serve_sandbox(seed: usize, stripe_port: u16) -> Result<ExitCode> {
    let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions { seed, stripe_port, ..Default::default() })
        .await
        .context("failed to start the vendor emulators")?;
    println!("weft sandbox: vendor emulators on loopback ({seed} demo records each); ctrl-c stops them");
    for endpoint in running.endpoints() {
        println!("  {:<12} {:<28} key {}", endpoint.vendor, endpoint.base_url, endpoint.api_key);
    }
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await.context("failed to wait for ctrl-c")?;
    running.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
