//! `weft runs list|show|resume|cancel`: the runs in the run store, read
//! from the store itself, or through the status API of the `weft serve`
//! that holds the store open.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use weft::executor::{Executor, RunOptions};
use weft::serve::{RunDetail, RunView};
use weft::store::{MAX_PAGE, RunQuery, RunStore, StoreError, StoreLocation};

use super::print::{Printer, output_files, report};
use super::run::{exit_code, fault_hook, guard_panics};
use super::{Global, open_location, stop_on_signals, store_location, wasm_runtime};

#[derive(Debug, Subcommand)]
pub(crate) enum RunsCommand {
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
    /// Remove finished runs created longer ago than --older-than, with
    /// their pages, items, page files and scratch files. Unfinished runs
    /// and each workflow's newest successful run are kept.
    Prune {
        /// How old a run must be to go: 30d, 12h, 90m.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
        /// Keep failed runs, however old.
        #[arg(long)]
        keep_failed: bool,
    },
}

fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e}; write it like 30d, 12h or 90m"))
}

/// Where a `weft serve` on this state dir listens, and the token it
/// gave this machine's CLI, from the file it wrote when it started.
#[derive(Debug, Clone)]
struct ServerAddress {
    base: String,
    token: Option<String>,
}

fn server_address(dir: &Path) -> Option<ServerAddress> {
    let text = std::fs::read_to_string(dir.join(super::serve::SERVE_ADDRESS_FILE)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    let scheme = value.get("scheme").and_then(|s| s.as_str()).unwrap_or("http");
    let base = value.get("addr")?.as_str().map(|a| format!("{scheme}://{a}"))?;
    let token = value.get("token").and_then(|t| t.as_str()).map(str::to_owned);
    Some(ServerAddress { base, token })
}

/// `weft runs …`: from the run store, or from the `weft serve` that holds it.
pub(crate) async fn runs(global: &Global, command: RunsCommand) -> Result<ExitCode> {
    let dir = match store_location(global)? {
        StoreLocation::Sled(dir) => dir,
        // Every process opens PostgreSQL itself; no server to ask.
        location => {
            let store = open_location(&location).await?;
            return runs_in(global, store, &location.to_string(), command).await;
        }
    };
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
    runs_in(global, store, &dir.display().to_string(), command).await
}

/// `weft runs …` against an open store.
async fn runs_in(
    global: &Global,
    store: RunStore,
    shown: &str,
    command: RunsCommand,
) -> Result<ExitCode> {
    match command {
        RunsCommand::List { json, limit } => {
            // Newest first, through the index: a store of many runs costs
            // the page, not a scan.
            let query = RunQuery { limit: limit.clamp(1, MAX_PAGE), ..RunQuery::default() };
            let mut runs = Vec::new();
            for row in store.query_runs(query).await?.rows {
                runs.push(store.run(&row.id).await?);
            }
            if json {
                let rows: Vec<_> = runs.iter().map(RunView::from).collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            } else if runs.is_empty() {
                outln!("no runs in {shown}")?;
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
        RunsCommand::Prune { older_than, keep_failed } => {
            let cutoff = weft::store::now_ms()
                .saturating_sub(u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX));
            let report = store.prune_runs(cutoff, keep_failed).await?;
            outln!(
                "removed {} runs older than {}; kept {} of that age (unfinished{}, or their workflow's newest success)",
                report.removed,
                humantime::format_duration(older_than),
                report.kept,
                if keep_failed { ", failed" } else { "" }
            )?;
        }
        RunsCommand::Cancel { run } => {
            // On sled the store is open here, so no other process is
            // running the run. On PostgreSQL a worker may be: the cancel
            // takes the run out of the queue, so that worker's next commit
            // of it fails its lease check, and it stops there.
            let holder = store.lease_holder(&run).await?;
            let executor = Executor::new(wasm_runtime(global)?, store);
            let record = executor.cancel_idle(&run).await?;
            match holder {
                Some(worker) if record.status == weft::store::Status::Cancelled => outln!(
                    "run {} is cancelled; worker {worker} was running it and stops it at its next commit (its next page or group of items), committing nothing more of it; writes already sent to a vendor may still land",
                    record.id
                )?,
                _ => outln!("run {} is {}", record.id, record.status.as_str())?,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn runs_via_server(server: &ServerAddress, command: RunsCommand) -> Result<ExitCode> {
    // The server's certificate may be one this machine does not trust
    // (self-signed): the connection goes to this machine's own server,
    // named by the file it wrote into the state dir.
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
        RunsCommand::Prune { .. } => {
            anyhow::bail!(
                "the run store is held by the weft serve at {base}; it prunes runs itself with --retention (or stop it and prune)"
            );
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
        if let Some(write) = &s.state_write {
            for (name, value) in &write.values {
                let before = write.before.get(name).unwrap_or(&serde_json::Value::Null);
                let planned = if write.planned { " (planned, not stored: dry run)" } else { "" };
                outln!("  {:<20} state {name}: {before} -> {value}{planned}", "")?;
            }
        }
        if let Some(error) = &s.error {
            outln!("  {:<20} {error}", "")?;
        }
    }
    for (name, totals) in &detail.connections {
        outln!("{}", super::print::connection_line(name, totals))?;
    }
    if let Some(error) = &run.error {
        outln!("{error}")?;
    }
    Ok(())
}
