//! Shared set-up: runtimes with a shared component cache, executors over a
//! temporary run store, workflows written from text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, Executor, RunSummary, Silent};
use weft::runtime::{InstanceLimits, Runtime, RuntimeConfig};
use weft::store::RunStore;
use weft::store::postgres::scratch::{ScratchSchema, test_url};
use weft::workflow::Workflow;
use weft_sandbox::{Sandbox, SandboxOptions};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Compiled components are cached across tests (and runs) here, so only the
/// first test pays for compilation.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-component-cache")
}

pub fn runtime(limits: InstanceLimits) -> TestResult<Runtime> {
    Ok(Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir()), limits })?)
}

/// The hostile test plugin built by the root build script.
pub fn hostile_wasm() -> &'static Path {
    Path::new(env!("WEFT_HOSTILE_WASM"))
}

pub async fn sandbox(seed: usize) -> TestResult<Sandbox> {
    Ok(Sandbox::start(SandboxOptions { seed, ..SandboxOptions::default() }).await?)
}

/// A workflow parsed from `text`, as if it were at `dir/name.toml`.
pub fn workflow(dir: &Path, text: &str) -> TestResult<Workflow> {
    let path = dir.join("workflow.toml");
    std::fs::write(&path, text)?;
    Ok(Workflow::load(&path)?)
}

/// Points the connection named `stripe` at the sandbox's Stripe emulator.
pub fn stripe_override(sandbox: &Sandbox) -> BTreeMap<String, ConnectionOverride> {
    let endpoint = sandbox
        .endpoints()
        .into_iter()
        .find(|e| e.vendor == "stripe")
        .expect("the sandbox has a stripe emulator");
    BTreeMap::from([(
        "stripe".to_owned(),
        ConnectionOverride { base_url: endpoint.base_url, secret: Secret::new(endpoint.api_key) },
    )])
}

pub struct Harness {
    pub executor: Executor,
    pub state: tempfile::TempDir,
    pub files: tempfile::TempDir,
    /// The PostgreSQL schema the store is in (`None`: sled in `state`).
    pub postgres: Option<ScratchSchema>,
}

impl Harness {
    pub fn new() -> TestResult<Self> {
        let state = tempfile::tempdir()?;
        let files = tempfile::tempdir()?;
        let executor =
            Executor::new(runtime(InstanceLimits::default())?, RunStore::open(state.path())?);
        Ok(Harness { executor, state, files, postgres: None })
    }

    /// A harness on sled, and one on a PostgreSQL schema of its own when
    /// `WEFT_TEST_POSTGRES` names a server (required under `CI=true`).
    pub async fn each(test: &str) -> TestResult<Vec<Harness>> {
        let mut out = vec![Harness::new()?];
        if let Some(base) = test_url(test)? {
            let schema = ScratchSchema::create(&base).await?;
            let executor = Executor::new(
                runtime(InstanceLimits::default())?,
                RunStore::open_postgres(&schema.url).await?,
            );
            out.push(Harness {
                executor,
                state: tempfile::tempdir()?,
                files: tempfile::tempdir()?,
                postgres: Some(schema),
            });
        }
        Ok(out)
    }

    /// `sled` or `postgres`, for messages.
    pub fn backend(&self) -> &'static str {
        if self.postgres.is_some() { "postgres" } else { "sled" }
    }

    /// Another worker's executor on the same PostgreSQL store: a pool and
    /// a scratch directory of its own, as another machine would have.
    /// `None` on sled (one process at a time).
    pub async fn other_worker(&self) -> TestResult<Option<Executor>> {
        let Some(schema) = &self.postgres else { return Ok(None) };
        Ok(Some(Executor::new(
            runtime(InstanceLimits::default())?,
            RunStore::open_postgres(&schema.url).await?,
        )))
    }

    pub async fn run(
        &self,
        text: &str,
        overrides: &BTreeMap<String, ConnectionOverride>,
    ) -> TestResult<RunSummary> {
        let workflow = workflow(self.files.path(), text)?;
        Ok(self.executor.run(&workflow, overrides, &Silent).await?)
    }
}

/// Points each named connection at the sandbox's emulator of `vendor`:
/// `overrides(&sandbox, &[("billing", "stripe"), ("growpanel", "growpanel")])`.
pub fn overrides(
    sandbox: &Sandbox,
    pairs: &[(&str, &str)],
) -> BTreeMap<String, ConnectionOverride> {
    let endpoints = sandbox.endpoints();
    pairs
        .iter()
        .filter_map(|(connection, vendor)| {
            let endpoint = endpoints.iter().find(|e| e.vendor == *vendor)?;
            Some((
                (*connection).to_owned(),
                ConnectionOverride {
                    base_url: endpoint.base_url.clone(),
                    secret: Secret::new(endpoint.api_key.clone()),
                },
            ))
        })
        .collect()
}

/// Counts the requests an emulator's log holds that change something.
pub fn writes(log: &weft_sandbox::requests::RequestLog) -> usize {
    log.count_where(|r| r.method != "GET" && r.method != "HEAD")
}

/// The `[connections.NAME]` block of a built-in connector as the tests
/// use it against the emulators: no real credential (the overrides
/// supply the emulator's), a limit that never paces a test, and the
/// settings a connector requires. The connection is named after the
/// plugin, except `stripe-scim`, named `scim`.
pub fn connections(plugins: &[&str]) -> String {
    plugins
        .iter()
        .map(|plugin| {
            let name = if *plugin == "stripe-scim" { "scim" } else { plugin };
            let settings = if *plugin == "growpanel" {
                "settings = { source = \"ds_weft_demo\" }\n"
            } else {
                ""
            };
            format!(
                "\n[connections.{name}]\nplugin = \"{plugin}\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\n{settings}rate_limit = \"1000/s\"\n"
            )
        })
        .collect()
}

/// A workflow named `name` with the test [`connections`] of `plugins`,
/// then `rest` (its steps).
pub fn flow_with(name: &str, plugins: &[&str], rest: &str) -> String {
    format!("[workflow]\nname = \"{name}\"\n{}\n{rest}", connections(plugins))
}

/// The text `id` of each record that has one (an emulator's customers), in
/// the collection the caller names.
pub fn ids<C: FromIterator<String>>(records: &[serde_json::Value]) -> C {
    records.iter().filter_map(|c| c["id"].as_str().map(str::to_owned)).collect()
}

/// Opens the sled store in `dir` again after a server in this process
/// closed it. sled 0.34's background I/O threads can hold the directory's
/// lock for a moment after the last handle is dropped (seen under load),
/// so the reopen waits for it, for a bounded time; a second process never
/// meets this (its exit releases the lock). The same as the store's unit
/// tests do.
pub fn reopen(dir: &Path) -> TestResult<RunStore> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match RunStore::open(dir) {
            Err(weft::store::StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}
