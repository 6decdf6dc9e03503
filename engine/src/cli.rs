//! The commands of the `weft` binary, one module per command (or family
//! of subcommands), and what they share: the global options, where the
//! run store and the component cache live, the wasm runtime, and signals.
//! Output that several commands print is in [`print`].
//!
//! A new command goes in its own module here: its clap `Args` (or
//! `Subcommand`) type beside the code that carries it out, a variant of
//! `Command` in `main.rs`, and one line in `main.rs`'s `dispatch`.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Args;
use weft::executor::StopSignal;
use weft::runtime::{Runtime, RuntimeConfig};
use weft::store::{RunStore, StoreLocation};

pub(crate) mod plugin;
pub(crate) mod plugin_new;
pub(crate) mod plugin_record;
pub(crate) mod print;
pub(crate) mod run;
pub(crate) mod runs;
pub(crate) mod sandbox;
pub(crate) mod serve;
pub(crate) mod state;
pub(crate) mod store;
pub(crate) mod telemetry;
pub(crate) mod tokens;
pub(crate) mod validate;

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Directory of the durable run store (sled).
    #[arg(long, global = true, env = "WEFT_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// The run store: `sled:DIR` (the default, in --state-dir) or
    /// `postgres://USER@HOST:PORT/DB` (password as `USER:env:NAME@` or
    /// `?password=file:PATH`, or PGPASSWORD; never written in the URL).
    /// Given, it is the store, whatever --state-dir says (a WEFT_STATE_DIR
    /// left in the environment does not refuse it).
    #[arg(long, global = true, env = "WEFT_STORE")]
    pub(crate) store: Option<String>,
    /// Directory of the compiled-component cache.
    #[arg(long, global = true, env = "WEFT_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Log filter for diagnostics on stderr (e.g. `info`, `weft=debug`).
    #[arg(long, global = true, env = "WEFT_LOG", default_value = "warn")]
    pub(crate) log: String,
    /// How diagnostics on stderr are written: `human` lines, or `json`, one
    /// object a line with the run, step and connection they concern.
    #[arg(long, global = true, env = "WEFT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    pub(crate) log_format: LogFormat,
    /// Export the spans of runs as OpenTelemetry traces over OTLP/HTTP to
    /// this base URL (traces go to its /v1/traces). Off when not given.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub(crate) otlp_endpoint: Option<url::Url>,
}

/// The format of the diagnostics on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for a person.
    Human,
    /// One JSON object a line, for a log pipeline.
    Json,
}

/// Says something on stderr that the operator should see whatever the log
/// filter (where `weft serve` listens, why a file is not served): a line,
/// or with `--log-format json` an object like the log's, so that a log
/// pipeline reads every line of stderr as JSON.
pub(crate) fn notice(format: LogFormat, level: &str, message: &str) {
    match format {
        LogFormat::Human => eprintln!("{message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": level,
                "message": message,
            })
        ),
    }
}

/// `$ENV_BASE/weft/LEAF`, else `~/FALLBACK/weft/LEAF`.
fn default_dir(env_base: &str, fallback: &str, leaf: &str) -> PathBuf {
    std::env::var_os(env_base)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(fallback)))
        .unwrap_or_else(|| PathBuf::from(".weft"))
        .join("weft")
        .join(leaf)
}

/// The wasm runtime, caching compiled components in the cache dir.
pub(crate) fn wasm_runtime(global: &Global) -> Result<Runtime> {
    let cache_dir = global
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_CACHE_HOME", ".cache", "components"));
    Ok(Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir), ..RuntimeConfig::default() })?)
}

/// Stops the run on ctrl-c or SIGTERM: in-flight calls finish, what they
/// did is committed, and the run can be resumed.
pub(crate) fn stop_on_signals() -> StopSignal {
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

/// Waits for ctrl-c or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

/// Where the run store is: `--store`, else sled in [`state_dir`].
pub(crate) fn store_location(global: &Global) -> Result<StoreLocation> {
    match &global.store {
        Some(text) => Ok(StoreLocation::parse(text)?),
        None => Ok(StoreLocation::Sled(state_dir(global))),
    }
}

/// Opens the run store at `location`, saying where when it cannot.
pub(crate) async fn open_location(location: &StoreLocation) -> Result<RunStore> {
    RunStore::open_location(location)
        .await
        .with_context(|| format!("failed to open the run store at {location}"))
}

/// The run store's directory: `--state-dir`, else the user's data dir.
pub(crate) fn state_dir(global: &Global) -> PathBuf {
    global
        .state_dir
        .clone()
        .unwrap_or_else(|| default_dir("XDG_DATA_HOME", ".local/share", "state"))
}
