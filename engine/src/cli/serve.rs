//! `weft serve`: serve workflows (cron, webhooks, the status API) until
//! SIGTERM or ctrl-c.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Args;
use weft::executor::Executor;
use weft::workflow::Workflow;

use super::{Global, notice, open_location, shutdown_signal, store_location, wasm_runtime};

// No `///` here: clap would take it for the command's about, which the
// `Command::Serve` variant in main.rs gives.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
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
    /// Also serve GET /metrics, and nothing else, on this address, without
    /// a token (for a Prometheus that scrapes without one). /metrics on
    /// --bind needs a viewer token.
    #[arg(long, env = "WEFT_METRICS_BIND")]
    metrics_bind: Option<std::net::SocketAddr>,
    /// Remove finished runs older than this (30d, 12h), with their pages
    /// and scratch files, at start and every hour; each workflow's newest
    /// success and unfinished runs are kept. Unset: runs are kept.
    #[arg(long, env = "WEFT_RETENTION", value_parser = parse_duration)]
    retention: Option<std::time::Duration>,
    /// With --retention: keep failed runs, however old.
    #[arg(long, requires = "retention")]
    retention_keep_failed: bool,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write it like 30s or 2m"))
}

/// Name of the file `weft serve` writes into its state dir.
pub(crate) const SERVE_ADDRESS_FILE: &str = "weft-serve.json";

/// `weft serve`.
pub(crate) async fn serve(global: &Global, args: ServeArgs) -> Result<ExitCode> {
    let ServeArgs {
        workflows: paths,
        bind,
        grace,
        public_url,
        tls_cert,
        tls_key,
        max_runs,
        max_concurrent_runs,
        metrics_bind,
        retention,
        retention_keep_failed,
    } = args;
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
        metrics_bind,
        retention: retention
            .map(|age| weft::serve::Retention { age, keep_failed: retention_keep_failed }),
        ..Default::default()
    };
    let mut workflows = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
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
                let message = format!("weft serve: not serving {}: {e}", file.display());
                notice(global.log_format, "WARN", &message);
                broken.push((file.display().to_string(), e.to_string()));
            }
        }
    }
    if workflows.is_empty() {
        anyhow::bail!("no workflow loaded; nothing to serve");
    }
    let location = store_location(global)?;
    let store = open_location(&location).await?;
    // Beside a sled store, the address `weft runs` finds the server by (it
    // holds the store's lock); every process opens PostgreSQL itself.
    let address_file = store.sled_dir().map(|dir| dir.join(SERVE_ADDRESS_FILE));
    let executor = Executor::new(wasm_runtime(global)?, store);
    let grace = config.shutdown_grace;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let config = weft::serve::ServeConfig { workflows, broken, address_file, ..config };
    let served = config.workflows.len();
    let server = weft::serve::start(executor, config).await?;
    let format = global.log_format;
    notice(
        format,
        "INFO",
        &format!(
            "weft serve: listening on {scheme}://{addr} with {served} workflow(s); console at {scheme}://{addr}/; state in {}",
            location,
            addr = server.addr,
        ),
    );
    if let Some(addr) = server.metrics_addr {
        notice(format, "INFO", &format!("weft serve: metrics at http://{addr}/metrics (no token)"));
    }
    let token = server.shutdown_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        let message = format!(
            "stopping: no new runs; in-flight calls finish (up to {}), then exit",
            humantime::format_duration(grace)
        );
        notice(format, "INFO", &message);
        token.cancel();
    });
    server.wait().await;
    Ok(ExitCode::SUCCESS)
}
