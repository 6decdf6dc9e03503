//! What durable execution costs.
//!
//! 1. Bookkeeping: items per second a for-each commits to sled with a
//!    native no-op connector, so the figure is the engine's own cost
//!    (template rendering, idempotency keys, group commits, fsync), not a
//!    vendor's or the sandbox's.
//! 2. Memory: peak RSS of the `weft` binary running a `sync` between two
//!    Stripe emulators holding N customers each (1% renamed at the source,
//!    1% missing from the target), for N = 100k and 1M (times
//!    `WEFT_BENCH_SCALE`; `WEFT_BENCH_SYNC=10000,100000` sets the sizes).
//!    Flat means the 1M figure is close to the 100k one.
//!
//! `WEFT_BENCH_ITEMS` sets the for-each size (default 200,000 times the
//! scale).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use weft::connector::{
    BatchItem, Manifest, Op, Page, RemoveOutcome, ResourceSpec, UpsertAction, UpsertOutcome,
    UpsertRequest,
};
use weft::endpoint::{BatchOutcomes, Endpoint};
use weft::executor::{Executor, RunOptions, Silent};
use weft::runtime::{Runtime, RuntimeConfig, RuntimeError};
use weft::store::{RunStore, Status};
use weft::workflow::Workflow;

use super::report::{Row, grouped, median};
use super::{BenchResult, Config};

/// Bookkeeping the issue asks for, in items per second.
const TARGET_ITEMS_PER_SECOND: f64 = 50_000.0;

/// The peak RSS the issue allows at 1M records.
const TARGET_PEAK_RSS_MB: f64 = 150.0;

/// A connector that answers every op at once.
pub(crate) struct NoOp {
    manifest: Manifest,
}

impl NoOp {
    pub(crate) fn new() -> Self {
        let resource = ResourceSpec {
            name: "records".into(),
            description: "nothing, at once".into(),
            ops: vec![Op::List, Op::Get, Op::Upsert, Op::UpsertBatch, Op::Remove],
            irreversible: vec![],
            max_page_size: 1000,
            default_page_size: 1000,
            id_field: "id".into(),
        };
        NoOp {
            manifest: Manifest {
                name: "noop".into(),
                version: "0".into(),
                vendor: "none".into(),
                description: "a native connector that does nothing".into(),
                default_base_url: "http://127.0.0.1:9".into(),
                extra_hosts: vec![],
                auth: weft::connector::AuthScheme::None,
                resources: vec![resource],
                rate_limits: vec![],
                settings: vec![],
            },
        }
    }
}

impl Endpoint for NoOp {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn name(&self) -> &str {
        "noop"
    }
    fn list(
        &self,
        _request: weft::connector::ListRequest,
    ) -> BoxFuture<'_, Result<Page, RuntimeError>> {
        Box::pin(async { Ok(Page::default()) })
    }
    fn get<'a>(
        &'a self,
        _resource: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, RuntimeError>> {
        Box::pin(async { Ok(None) })
    }
    fn upsert(&self, request: UpsertRequest) -> BoxFuture<'_, Result<UpsertOutcome, RuntimeError>> {
        Box::pin(async move {
            Ok(UpsertOutcome { record: request.record, action: UpsertAction::Created })
        })
    }
    fn upsert_batch<'a>(
        &'a self,
        _resource: &'a str,
        items: Vec<BatchItem>,
    ) -> BoxFuture<'a, Result<BatchOutcomes, RuntimeError>> {
        Box::pin(async move {
            Ok(items
                .into_iter()
                .map(|i| Ok(UpsertOutcome { record: i.record, action: UpsertAction::Created }))
                .collect())
        })
    }
    fn remove<'a>(
        &'a self,
        _resource: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<RemoveOutcome, RuntimeError>> {
        Box::pin(async { Ok(RemoveOutcome::Removed) })
    }
}

async fn bookkeeping(items: u64, concurrency: u32) -> BenchResult<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let path = dir.path().join("noop.toml");
    std::fs::write(
        &path,
        format!(
            "[workflow]\nname = \"bookkeeping\"\n\n[connections.noop]\nplugin = \"noop\"\n\n[[step]]\nid = \"each\"\nfor_each = \"[range(0; {items})]\"\nconcurrency = {concurrency}\nupsert = \"noop.records\"\nrecord = {{ id = \"${{{{ $item }}}}\", email = \"user${{{{ $item }}}}@example.com\" }}\n"
        ),
    )?;
    let workflow = Workflow::load(&path)?;
    let executor =
        Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(state.path())?);
    let endpoint: Arc<dyn Endpoint> = Arc::new(NoOp::new());
    let options = RunOptions {
        endpoints: BTreeMap::from([("noop".to_owned(), endpoint)]),
        ..RunOptions::default()
    };
    let started = Instant::now();
    let summary = executor.start(&workflow, &options, &Silent).await?;
    let elapsed = started.elapsed().as_secs_f64();
    if summary.status != Status::Succeeded || summary.steps[0].items != items {
        return Err(format!("the bookkeeping run did not finish: {summary:?}").into());
    }
    // What a resume has to read back: every item is in the store.
    let stored = executor.store().items(&summary.run_id, 0).count().await?;
    if stored != items {
        return Err(format!("{stored} of {items} items in the store").into());
    }
    let disk = dir_size(state.path());
    Ok((items as f64 / elapsed, disk as f64 / items as f64))
}

pub(crate) fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

struct SyncFigures {
    records: usize,
    seconds: f64,
    peak_rss_mb: f64,
    counts: Value,
}

async fn sync_rss(records: usize) -> BenchResult<SyncFigures> {
    use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};
    let source = StripeEmulator::new(StripeConfig { seed: 0, ..StripeConfig::default() });
    let target = StripeEmulator::new(StripeConfig { seed: 0, ..StripeConfig::default() });
    for i in 0..records {
        let email = format!("user{i}@sync.example");
        let created = 1_700_000_000 + i as i64;
        let customer = source.insert_customer(
            json!({ "email": email, "name": format!("User {i}"), "created": created }),
        );
        // The target was synced before: same email and name, with the
        // source id in metadata; 1% renamed since at the source, 1% never
        // copied.
        if i % 100 == 1 {
            continue;
        }
        let name = if i % 100 == 0 { format!("User {i} (old name)") } else { format!("User {i}") };
        target.insert_customer(json!({ "email": email, "name": name, "created": created, "metadata": { "source_id": customer["id"] } }));
    }
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
name = "sync-bench"

[connections.source]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{source}"
rate_limit = "1000000/s"

[connections.target]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{target}"
rate_limit = "1000000/s"

[[step]]
id = "mirror"
sync = {{ from = "source.customers", to = "target.customers", key = "email" }}
map = '{{email, name, metadata: {{source_id: .id}}}}'
concurrency = 8
"#,
        key = key.display(),
        source = source_server.base_url(),
        target = target_server.base_url(),
    );
    let path = dir.path().join("sync.toml");
    std::fs::write(&path, text)?;
    let state = dir.path().join("state");
    let cache = std::env::temp_dir().join("weft-bench-component-cache");
    let started = Instant::now();
    let child = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["run", "--json"])
            .arg(&path)
            .output()
    });
    let output = child.await??;
    let seconds = started.elapsed().as_secs_f64();
    let summary: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "weft run did not print a summary ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if summary["status"] != "succeeded" {
        return Err(format!("the sync failed: {summary:#}").into());
    }
    let counts = summary["steps"][0]["counts"].clone();
    let expected_updates = records.div_ceil(100) as u64;
    if counts["updated"].as_u64() != Some(expected_updates)
        || counts["created"].as_u64()
            != Some((records / 100 + usize::from(records % 100 > 1)) as u64)
    {
        return Err(format!("unexpected counts for {records}: {counts}").into());
    }
    let peak = summary["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    source_server.shutdown().await;
    target_server.shutdown().await;
    Ok(SyncFigures { records, seconds, peak_rss_mb: peak, counts })
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let items: u64 = std::env::var("WEFT_BENCH_ITEMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((200_000.0 * config.scale).round() as u64).max(1000));
    let sizes: Vec<usize> = std::env::var("WEFT_BENCH_SYNC")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| {
            [100_000.0, 1_000_000.0]
                .iter()
                .map(|n| ((n * config.scale).round() as usize).max(1000))
                .collect()
        });

    let concurrency = 16;
    let mut rates = Vec::new();
    let mut bytes_per_item = 0.0;
    for _ in 0..3 {
        let (rate, per_item) = bookkeeping(items, concurrency).await?;
        rates.push(rate);
        bytes_per_item = per_item;
    }
    let rate = median(&rates);
    let mut rows = vec![Row::new("durable", format!("for-each of {} upserts, no-op connector, concurrency {concurrency}; median of 3", grouped(items as f64)), format!("{} items/s", grouped(rate)))
        .reference(format!("{bytes_per_item:.0} B of store per item"))
        .target(format!(">= {} items/s", grouped(TARGET_ITEMS_PER_SECOND)), rate >= TARGET_ITEMS_PER_SECOND)
        .figures(json!({ "items": items, "concurrency": concurrency, "items_per_second_median": rate, "runs": rates, "store_bytes_per_item": bytes_per_item }))];

    let mut syncs = Vec::new();
    for &n in &sizes {
        eprintln!("  sync of {} records…", grouped(n as f64));
        syncs.push(sync_rss(n).await?);
    }
    let smallest = syncs.first().map(|s| s.peak_rss_mb).unwrap_or(0.0);
    let largest = syncs.iter().map(|s| s.records).max().unwrap_or(0);
    for s in &syncs {
        let mut row = Row::new("durable", format!("peak RSS of weft run, sync of {} records", grouped(s.records as f64)), format!("{:.1} MiB", s.peak_rss_mb))
            .reference(format!("{:.1} s", s.seconds))
            .figures(json!({ "records": s.records, "seconds": s.seconds, "peak_rss_mb": s.peak_rss_mb, "counts": s.counts }));
        // The target is set at 1M records; at a smaller scale the largest
        // sync is judged by it all the same.
        if s.records == largest && syncs.len() > 1 {
            let flat = s.peak_rss_mb / smallest.max(1.0);
            row = row
                .result(format!("{flat:.2}x the {} figure", grouped(syncs[0].records as f64)))
                .target(
                    format!("<= {TARGET_PEAK_RSS_MB:.0} MiB"),
                    s.peak_rss_mb <= TARGET_PEAK_RSS_MB,
                );
        }
        rows.push(row);
    }
    Ok(rows)
}
