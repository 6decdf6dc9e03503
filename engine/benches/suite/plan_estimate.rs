//! Two figures of the workflow language's run-to-run features.
//!
//! - `estimate`: a dry run's estimate of the real run (vendor requests and
//!   the limiter's time at the limits in force) against the real run, on a
//!   sync between two Stripe emulators with `rate_limit = "25/s"`: 400
//!   customers (times `WEFT_BENCH_SCALE`), a quarter renamed at the source
//!   and a tenth missing from the target. Target: both within 20 %.
//! - `state-pages`: list bookkeeping (records per second a list step reads
//!   and commits, from a native connector that answers at once) with a
//!   state value committed with every page beside the same list without
//!   state, alternating rounds, medians. Target: within 5 %.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde_json::json;
use weft::connector::{ListRequest, Manifest, Page};
use weft::endpoint::Endpoint;
use weft::executor::{Executor, RunOptions, Silent};
use weft::runtime::{Runtime, RuntimeConfig, RuntimeError};
use weft::store::{RunStore, Status};
use weft::workflow::Workflow;

use super::durable::{NoOp, SyncMix, sync_emulators};
use super::report::{Row, grouped, median};
use super::{BenchResult, Config};

/// How far the estimate may be from the real run.
const ESTIMATE_TOLERANCE: f64 = 0.20;

/// How much slower a list with a state commit per page may be.
const STATE_TOLERANCE: f64 = 0.05;

pub async fn estimate(config: &Config) -> BenchResult<Vec<Row>> {
    use weft_sandbox::stripe::SANDBOX_API_KEY;
    let records = ((400.0 * config.scale) as usize).max(40);
    // A quarter renamed at the source, a tenth missing from the target.
    let (source, target) =
        sync_emulators(records, &SyncMix { renamed_every: 4, missing_every: 10 });
    let source_server =
        weft_sandbox::server::serve(source.router(), "127.0.0.1:0".parse()?).await?;
    let target_server =
        weft_sandbox::server::serve(target.router(), "127.0.0.1:0".parse()?).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let text = format!(
        r#"
[workflow]
name = "estimate-bench"

[connections.source]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{source}"
rate_limit = "25/s"

[connections.target]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{target}"
rate_limit = "25/s"

[[step]]
id = "mirror"
sync = {{ from = "source.customers", to = "target.customers", key = "email" }}
map = '{{email, name}}'
concurrency = 4
"#,
        key = key.display(),
        source = source_server.base_url(),
        target = target_server.base_url(),
    );
    let path = dir.path().join("estimate.toml");
    std::fs::write(&path, text)?;
    let workflow = Workflow::load(&path)?;
    let state = tempfile::tempdir()?;
    let executor =
        Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(state.path())?);
    let dry = executor
        .start(&workflow, &RunOptions { dry_run: true, ..RunOptions::default() }, &Silent)
        .await?;
    let estimate = dry.estimate.clone().ok_or("the dry run gave no estimate")?;
    if dry.status != Status::Succeeded {
        return Err(format!("the dry run failed: {:?}", dry.error).into());
    }
    let estimated_seconds = estimate.seconds.ok_or("no time: a limit is in force")?;
    // The dry run paced the limiter too; the real run starts on a rested one.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let started = Instant::now();
    let real = executor.start(&workflow, &RunOptions::default(), &Silent).await?;
    let seconds = started.elapsed().as_secs_f64();
    if real.status != Status::Succeeded {
        return Err(format!("the real run failed: {:?}", real.error).into());
    }
    let requests: u64 = real.connections.values().map(|t| t.requests).sum();
    let off = |estimated: f64, measured: f64| (estimated - measured) / measured.max(1e-9);
    let requests_off = off(estimate.requests as f64, requests as f64);
    let seconds_off = off(estimated_seconds, seconds);
    let c = real.steps[0].counts;
    let figures = json!({
        "records": records,
        "estimated_requests": estimate.requests,
        "requests": requests,
        "estimated_seconds": estimated_seconds,
        "seconds": seconds,
        "estimate": estimate,
        "counts": c,
    });
    Ok(vec![
        Row::new(
            "estimate",
            format!("dry-run estimate: requests, sync of {records} at 25 r/s"),
            format!("{} estimated", estimate.requests),
        )
        .reference(format!("{requests} sent"))
        .result(format!("{:+.1}%", requests_off * 100.0))
        .target("within 20%", requests_off.abs() <= ESTIMATE_TOLERANCE)
        .figures(figures.clone()),
        Row::new(
            "estimate",
            format!("dry-run estimate: duration, sync of {records} at 25 r/s"),
            format!("{estimated_seconds:.1} s estimated"),
        )
        .reference(format!("{seconds:.1} s taken"))
        .result(format!("{:+.1}%", seconds_off * 100.0))
        .target("within 20%", seconds_off.abs() <= ESTIMATE_TOLERANCE)
        .figures(figures),
    ])
}

/// A native connector that lists `total` records in pages of 1,000.
struct Pages {
    inner: NoOp,
    total: u64,
}

impl Endpoint for Pages {
    fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }
    fn name(&self) -> &str {
        "pages"
    }
    fn list(&self, request: ListRequest) -> BoxFuture<'_, Result<Page, RuntimeError>> {
        Box::pin(async move {
            let from: u64 = request.cursor.as_deref().and_then(|c| c.parse().ok()).unwrap_or(0);
            let to = (from + u64::from(request.page_size.max(1))).min(self.total);
            let records = (from..to)
                .map(|i| format!(r#"{{"id":"r{i}","email":"user{i}@example.com"}}"#))
                .collect();
            Ok(Page { records, next_cursor: (to < self.total).then(|| to.to_string()) })
        })
    }
    fn get<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        self.inner.get(resource, id)
    }
    fn upsert(
        &self,
        request: weft::connector::UpsertRequest,
    ) -> BoxFuture<'_, Result<weft::connector::UpsertOutcome, RuntimeError>> {
        self.inner.upsert(request)
    }
    fn upsert_batch<'a>(
        &'a self,
        resource: &'a str,
        items: Vec<weft::connector::BatchItem>,
    ) -> BoxFuture<'a, Result<weft::endpoint::BatchOutcomes, RuntimeError>> {
        self.inner.upsert_batch(resource, items)
    }
    fn remove<'a>(
        &'a self,
        resource: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<weft::connector::RemoveOutcome, RuntimeError>> {
        self.inner.remove(resource, id)
    }
}

async fn list_rate(total: u64, with_state: bool) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let path = dir.path().join("list.toml");
    let (declare, set) = if with_state {
        ("[state.pages]\ndefault = 0\n", "state = { pages = \"${{ $page.number }}\" }\n")
    } else {
        ("", "")
    };
    std::fs::write(
        &path,
        format!(
            "[workflow]\nname = \"state-pages\"\n{declare}\n[connections.noop]\nplugin = \"noop\"\n\n[[step]]\nid = \"all\"\nlist = \"noop.records\"\npage_size = 1000\n{set}"
        ),
    )?;
    let workflow = Workflow::load(&path)?;
    let executor =
        Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(state.path())?);
    let endpoint: Arc<dyn Endpoint> = Arc::new(Pages { inner: NoOp::new(), total });
    let options = RunOptions {
        endpoints: BTreeMap::from([("noop".to_owned(), endpoint)]),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let summary = executor.start(&workflow, &options, &Silent).await?;
    let elapsed = started.elapsed().as_secs_f64();
    if summary.status != Status::Succeeded || summary.steps[0].counts.read != total {
        return Err(format!("the list did not finish: {summary:?}").into());
    }
    if with_state {
        let stored = executor.store().workflow_state("state-pages").await?;
        let pages = total.div_ceil(1000);
        if stored.values.get("pages") != Some(&json!(pages)) {
            return Err(format!("the state holds {:?}, not page {pages}", stored.values).into());
        }
    }
    Ok(total as f64 / elapsed)
}

pub async fn state_pages(config: &Config) -> BenchResult<Vec<Row>> {
    let total = ((200_000.0 * config.scale) as u64).max(10_000);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        without.push(list_rate(total, false).await?);
        with.push(list_rate(total, true).await?);
    }
    let (plain, stated) = (median(&without), median(&with));
    let change = (stated - plain) / plain;
    Ok(vec![
        Row::new(
            "state",
            format!("list bookkeeping, {} records in pages of 1,000, state committed per page", grouped(total as f64)),
            format!("{} records/s", grouped(stated)),
        )
        .reference(format!("{} records/s without state", grouped(plain)))
        .result(format!("{:+.1}%", change * 100.0))
        .target("within 5%", change >= -STATE_TOLERANCE)
        .figures(json!({ "records": total, "with_state": with, "without_state": without, "median_with": stated, "median_without": plain })),
    ])
}
