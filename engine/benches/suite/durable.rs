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
//! 3. Sync throughput: records per second of the same syncs against a
//!    native client (this binary with `--native-sync`, its own process, on
//!    fresh emulators) that lists both sides with reqwest + serde_json,
//!    sorts them in memory, merges and sends the same writes.
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

/// The sync's records per second against a native sort-merge (issue 20).
const TARGET_SYNC_VS_NATIVE: f64 = 0.7;

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

/// Items a second a for-each of `items` no-op upserts, `concurrency` at
/// a time, commits to `store` (sled or PostgreSQL: the fleet section
/// runs it on both).
pub(crate) async fn bookkeeping(store: RunStore, items: u64, concurrency: u32) -> BenchResult<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("noop.toml");
    std::fs::write(
        &path,
        format!(
            "[workflow]\nname = \"bookkeeping\"\n\n[connections.noop]\nplugin = \"noop\"\n\n[[step]]\nid = \"each\"\nfor_each = \"[range(0; {items})]\"\nconcurrency = {concurrency}\nupsert = \"noop.records\"\nrecord = {{ id = \"${{{{ $item }}}}\", email = \"user${{{{ $item }}}}@example.com\" }}\n"
        ),
    )?;
    let workflow = Workflow::load(&path)?;
    let executor = Executor::new(Runtime::new(RuntimeConfig::default())?, store);
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
    Ok(items as f64 / elapsed)
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
    /// The native sort-merge client's time for the same sync.
    native_seconds: f64,
    peak_rss_mb: f64,
    counts: Value,
}

/// Two Stripe emulators for the sync: N customers at the source; the
/// target was synced before (same email and name, the source id in
/// metadata), with 1% renamed since at the source and 1% never copied.
/// How a sync's two sides differ: every `renamed_every`th record has an
/// old name at the target, and every `missing_every`th (counting from 1)
/// is missing there.
pub struct SyncMix {
    pub renamed_every: usize,
    pub missing_every: usize,
}

/// The sync benches' mix: 1 % renamed, 1 % missing.
const SYNC_MIX: SyncMix = SyncMix { renamed_every: 100, missing_every: 100 };

/// Two Stripe emulators holding `records` customers at the source and
/// the target's copies of them, differing as `mix` says.
pub fn sync_emulators(
    records: usize,
    mix: &SyncMix,
) -> (weft_sandbox::stripe::StripeEmulator, weft_sandbox::stripe::StripeEmulator) {
    use weft_sandbox::stripe::{StripeConfig, StripeEmulator};
    let source = StripeEmulator::new(StripeConfig { seed: 0, ..StripeConfig::default() });
    let target = StripeEmulator::new(StripeConfig { seed: 0, ..StripeConfig::default() });
    for i in 0..records {
        let email = format!("user{i}@sync.example");
        let created = 1_700_000_000 + i as i64;
        let customer = source.insert_customer(
            json!({ "email": email, "name": format!("User {i}"), "created": created }),
        );
        if i % mix.missing_every == 1 {
            continue;
        }
        let name = if i % mix.renamed_every == 0 {
            format!("User {i} (old name)")
        } else {
            format!("User {i}")
        };
        target.insert_customer(json!({ "email": email, "name": name, "created": created, "metadata": { "source_id": customer["id"] } }));
    }
    (source, target)
}

/// `--serve-sync RECORDS PORT`: for profiling a sync by hand, the sync
/// bench's source emulator on PORT and its target on PORT + 1, until
/// Ctrl-C. A sync changes the target: serve them again for each run.
pub fn serve_sync(args: &[String]) -> BenchResult<()> {
    let [records, port] = args else {
        return Err("usage: --serve-sync RECORDS PORT".into());
    };
    let port: u16 = port.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (source, target) = sync_emulators(records.parse()?, &SYNC_MIX);
        let mut servers = Vec::new();
        for (emulator, port) in [(source, port), (target, port + 1)] {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            servers.push(weft_sandbox::server::serve(emulator.router(), address).await?);
        }
        println!(
            "source {} target {} key {}",
            servers[0].base_url(),
            servers[1].base_url(),
            weft_sandbox::stripe::SANDBOX_API_KEY
        );
        tokio::signal::ctrl_c().await?;
        for server in servers {
            server.shutdown().await;
        }
        BenchResult::Ok(())
    })
}

/// The creates and updates the sync of `records` must make.
fn expected_writes(records: usize) -> (u64, u64) {
    ((records / 100 + usize::from(records % 100 > 1)) as u64, records.div_ceil(100) as u64)
}

/// Seconds the native sort-merge client takes for the same sync, on fresh
/// emulators, in a process of its own.
async fn native_sync_seconds(records: usize) -> BenchResult<f64> {
    use weft_sandbox::stripe::SANDBOX_API_KEY;
    let (source, target) = sync_emulators(records, &SYNC_MIX);
    let source_server =
        weft_sandbox::server::serve(source.router(), "127.0.0.1:0".parse()?).await?;
    let target_server =
        weft_sandbox::server::serve(target.router(), "127.0.0.1:0".parse()?).await?;
    let program = std::env::current_exe()?;
    let args = [source_server.base_url(), target_server.base_url(), SANDBOX_API_KEY.to_owned()];
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(program).arg("--native-sync").args(args).output()
    })
    .await??;
    let seconds = started.elapsed().as_secs_f64();
    source_server.shutdown().await;
    target_server.shutdown().await;
    let printed = String::from_utf8_lossy(&output.stdout);
    let (created, updated) = expected_writes(records);
    if !output.status.success() || printed.trim() != format!("{created} {updated}") {
        return Err(format!(
            "the native sync of {records} printed {printed:?}, expected \"{created} {updated}\": {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(seconds)
}

async fn sync_rss(records: usize) -> BenchResult<SyncFigures> {
    use weft_sandbox::stripe::SANDBOX_API_KEY;
    let (source, target) = sync_emulators(records, &SYNC_MIX);
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
    let (expected_creates, expected_updates) = expected_writes(records);
    if counts["updated"].as_u64() != Some(expected_updates)
        || counts["created"].as_u64() != Some(expected_creates)
    {
        return Err(format!("unexpected counts for {records}: {counts}").into());
    }
    let peak = summary["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / (1024.0 * 1024.0);
    source_server.shutdown().await;
    target_server.shutdown().await;
    drop((source, target));
    let native_seconds = native_sync_seconds(records).await?;
    Ok(SyncFigures { records, seconds, native_seconds, peak_rss_mb: peak, counts })
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
        let state = tempfile::tempdir()?;
        let rate = bookkeeping(RunStore::open(state.path())?, items, concurrency).await?;
        rates.push(rate);
        bytes_per_item = dir_size(state.path()) as f64 / items as f64;
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
        let weft_rate = s.records as f64 / s.seconds;
        let native_rate = s.records as f64 / s.native_seconds;
        let ratio = weft_rate / native_rate;
        rows.push(
            Row::new("durable", format!("sync of {} records, records/s (1% created, 1% updated)", grouped(s.records as f64)), format!("{} records/s", grouped(weft_rate)))
                .reference(format!("native sort-merge {} records/s ({:.1} s)", grouped(native_rate), s.native_seconds))
                .result(format!("{ratio:.2} of native"))
                .target(format!(">= {TARGET_SYNC_VS_NATIVE:.1} of native"), ratio >= TARGET_SYNC_VS_NATIVE)
                .figures(json!({ "records": s.records, "weft_seconds": s.seconds, "native_seconds": s.native_seconds, "ratio": ratio })),
        );
    }
    Ok(rows)
}

/// `--native-sync SOURCE_URL TARGET_URL KEY`: what a user would write by
/// hand for the sync the bench runs through weft: list both Stripe
/// emulators page by page (reqwest + serde_json, pages of 100), sort both
/// sides by email in memory, merge, and send the same creates and updates
/// (8 at a time, as the workflow's `concurrency`). Prints
/// `created updated` so the bench can check it did the same work.
pub fn native_sync(args: &[String]) -> BenchResult<()> {
    let [source, target, key] = args else {
        return Err("usage: --native-sync SOURCE_URL TARGET_URL KEY".into());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (created, updated) = runtime.block_on(async {
        use futures_util::StreamExt as _;
        let client = reqwest::Client::new();
        let mut from = list_customers(&client, source, key).await?;
        let mut to = list_customers(&client, target, key).await?;
        from.sort_unstable_by(|a, b| a.email.cmp(&b.email));
        to.sort_unstable_by(|a, b| a.email.cmp(&b.email));
        // (target id or none for a create, the source record)
        let mut writes: Vec<(Option<String>, Customer)> = Vec::new();
        let mut existing = to.into_iter().peekable();
        for record in from {
            while existing.next_if(|t| t.email < record.email).is_some() {}
            match existing.next_if(|t| t.email == record.email) {
                Some(t) if t.name == record.name && t.source_id.as_deref() == Some(&record.id) => {}
                Some(t) => writes.push((Some(t.id), record)),
                None => writes.push((None, record)),
            }
        }
        let created = writes.iter().filter(|(id, _)| id.is_none()).count();
        let updated = writes.len() - created;
        let mut sends = futures_util::stream::iter(writes.into_iter().map(|(id, record)| {
            let url = match &id {
                Some(id) => format!("{target}/v1/customers/{id}"),
                None => format!("{target}/v1/customers"),
            };
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("email", &record.email)
                .append_pair("name", &record.name)
                .append_pair("metadata[source_id]", &record.id)
                .finish();
            let request = client
                .post(url)
                .basic_auth(key, Some(""))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form);
            async move { request.send().await?.error_for_status().map(|_| ()) }
        }))
        .buffer_unordered(8);
        while let Some(sent) = sends.next().await {
            sent?;
        }
        BenchResult::Ok((created, updated))
    })?;
    println!("{created} {updated}");
    Ok(())
}

/// The fields of a Stripe customer the native sync compares.
struct Customer {
    id: String,
    email: String,
    name: String,
    source_id: Option<String>,
}

/// Every customer of a Stripe emulator, page by page.
async fn list_customers(
    client: &reqwest::Client,
    base_url: &str,
    key: &str,
) -> BenchResult<Vec<Customer>> {
    #[derive(serde::Deserialize)]
    struct Metadata<'a> {
        #[serde(borrow)]
        source_id: Option<&'a str>,
    }
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        id: &'a str,
        #[serde(borrow)]
        email: Option<&'a str>,
        #[serde(borrow)]
        name: Option<&'a str>,
        #[serde(borrow)]
        metadata: Option<Metadata<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        data: Vec<Raw<'a>>,
        has_more: bool,
    }
    let mut customers = Vec::new();
    super::export::each_stripe_page(client, base_url, key, 100, |body| {
        let page: List<'_> = serde_json::from_slice(body)?;
        for raw in &page.data {
            customers.push(Customer {
                id: raw.id.to_owned(),
                email: raw.email.unwrap_or_default().to_owned(),
                name: raw.name.unwrap_or_default().to_owned(),
                source_id: raw.metadata.as_ref().and_then(|m| m.source_id).map(str::to_owned),
            });
        }
        Ok(match page.data.last() {
            Some(last) if page.has_more => Some(last.id.to_owned()),
            _ => None,
        })
    })
    .await?;
    Ok(customers)
}
