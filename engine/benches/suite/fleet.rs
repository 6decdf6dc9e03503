//! A fleet on PostgreSQL (issue 16): what the shared store costs and how
//! far workers carry it. Needs a PostgreSQL server: `WEFT_TEST_POSTGRES`
//! (`source .ci/postgres` starts a throwaway one); each figure is taken in
//! a schema of its own.
//!
//! 1. For-each bookkeeping on PostgreSQL beside sled, with a native no-op
//!    connector (the engine's own cost), and the store bytes per item.
//! 2. Claim latency: runs started through three `weft serve` workers'
//!    APIs at 50 a second, from the request's sending to its first step
//!    starting (p50, p99).
//! 3. Runs a second completed by one and by three workers on a short
//!    workflow (one Stripe upsert against the emulator).
//! 4. The export of 100k customers with `--store postgres://…` beside the
//!    native client (medians of five rounds, interleaved).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::store::postgres::scratch::ScratchSchema;
use weft::store::{RunStore, Status};
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::durable;
use super::report::{Row, grouped, median};
use super::{BenchResult, Config};

/// Bookkeeping the issue asks for on PostgreSQL, items per second.
const TARGET_ITEMS_PER_SECOND: f64 = 20_000.0;
/// The export with a PostgreSQL store against native, at most.
const TARGET_EXPORT_RATIO: f64 = 1.20;
/// Measured rounds of each export: the machine is shared, and a round
/// can be twice another.
const EXPORT_ROUNDS: usize = 5;
/// Runs offered a second for the claim latency.
const OFFERED_PER_SECOND: f64 = 50.0;

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let base = std::env::var("WEFT_TEST_POSTGRES").map_err(|_| {
        "the fleet section needs a PostgreSQL server in WEFT_TEST_POSTGRES (source .ci/postgres)"
    })?;
    let mut rows = Vec::new();

    // 1. Bookkeeping.
    let items = ((20_000.0 * config.scale).round() as u64).max(1000);
    let schema = ScratchSchema::create(&base).await?;
    let (pg_rate, pg_bytes) = bookkeeping(Some(&schema.url), items).await?;
    let (sled_rate, sled_bytes) = bookkeeping(None, items).await?;
    eprintln!(
        "  bookkeeping: postgres {pg_rate:.0}/s {pg_bytes:.0} B/item, sled {sled_rate:.0}/s \
         {sled_bytes:.0} B/item"
    );
    rows.push(
        Row::new("fleet", format!("for-each bookkeeping, {} items, PostgreSQL", grouped(items as f64)), format!("{} items/s", grouped(pg_rate)))
            .reference(format!("sled {} items/s", grouped(sled_rate)))
            .result(format!("{:.2}x sled", pg_rate / sled_rate))
            .target(format!(">= {} items/s", grouped(TARGET_ITEMS_PER_SECOND)), pg_rate >= TARGET_ITEMS_PER_SECOND)
            .figures(json!({"items": items, "postgres_items_per_second": pg_rate, "sled_items_per_second": sled_rate, "postgres_bytes_per_item": pg_bytes, "sled_bytes_per_item": sled_bytes})),
    );
    rows.push(
        Row::new("fleet", "store bytes per for-each item, PostgreSQL", format!("{pg_bytes:.0} B"))
            .reference(format!("sled {sled_bytes:.0} B"))
            .figures(json!({"postgres": pg_bytes, "sled": sled_bytes})),
    );

    // 2 and 3: workers over one store, against one emulator.
    let emulator = StripeEmulator::new(StripeConfig { seed: 0, ..StripeConfig::default() });
    let server =
        weft_sandbox::server::serve(emulator.router(), weft_sandbox::server::LOOPBACK_ANY_PORT)
            .await?;
    let dir = tempfile::tempdir()?;
    let workflow = short_workflow(dir.path(), &server.base_url())?;
    let cache = std::env::temp_dir().join("weft-bench-component-cache");

    let schema = ScratchSchema::create(&base).await?;
    let store = RunStore::open_postgres(&schema.url).await?;
    let token = token(&schema.url, &cache)?;
    let workers = (0..3)
        .map(|_| Worker::start(&schema.url, &cache, &workflow))
        .collect::<BenchResult<Vec<_>>>()?;
    let offered = ((OFFERED_PER_SECOND * 10.0 * config.scale).round() as usize).max(50);
    let latencies = claim_latencies(&workers, &token, &store, offered).await?;
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    eprintln!("  claim latency at {OFFERED_PER_SECOND}/s: p50 {p50:.1} ms, p99 {p99:.1} ms");
    rows.push(
        Row::new(
            "fleet",
            format!("enqueue to first step, {offered} runs at {OFFERED_PER_SECOND}/s on 3 workers"),
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
        )
        .figures(json!({"runs": offered, "offered_per_second": OFFERED_PER_SECOND, "p50_ms": p50, "p99_ms": p99})),
    );

    let runs = ((300.0 * config.scale).round() as usize).max(30);
    let three = runs_per_second(&workers, &token, &store, runs).await?;
    let one = runs_per_second(&workers[..1], &token, &store, runs).await?;
    drop(workers);
    eprintln!("  runs/s: one worker {one:.1}, three workers {three:.1}");
    rows.push(
        Row::new(
            "fleet",
            format!("runs/s completed, {runs} one-upsert runs, 3 workers"),
            format!("{three:.1} runs/s"),
        )
        .reference(format!("1 worker {one:.1} runs/s"))
        .result(format!("{:.2}x", three / one))
        .figures(json!({"runs": runs, "one_worker": one, "three_workers": three})),
    );

    // 4. The export.
    let (rounds, records) = export(&base, &cache, config).await?;
    let [pg_seconds, sled_seconds, native_seconds] = rounds.clone().map(|r| median(&r));
    let ratio = pg_seconds / native_seconds;
    let spread = |r: &[f64]| {
        let (low, high) = r.iter().fold((f64::MAX, 0.0f64), |(l, h), s| (l.min(*s), h.max(*s)));
        format!("{low:.2}-{high:.2}")
    };
    eprintln!(
        "  export {records}: postgres store {pg_seconds:.2} s ({}), sled store {sled_seconds:.2} s \
         ({}), native {native_seconds:.2} s ({}); postgres/native {ratio:.2}",
        spread(&rounds[0]),
        spread(&rounds[1]),
        spread(&rounds[2]),
    );
    rows.push(
        Row::new("fleet", format!("export {} customers, --store postgres://", grouped(records as f64)), format!("{pg_seconds:.2} s"))
            .reference(format!("native {native_seconds:.2} s; weft on sled {sled_seconds:.2} s"))
            .result(format!("{ratio:.2}x (sled {:.2}x)", sled_seconds / native_seconds))
            .target(format!("<= {TARGET_EXPORT_RATIO:.2}x"), ratio <= TARGET_EXPORT_RATIO)
            .figures(json!({"records": records, "postgres_seconds": pg_seconds, "sled_seconds": sled_seconds, "native_seconds": native_seconds, "ratio": ratio, "rounds": {"postgres": rounds[0], "sled": rounds[1], "native": rounds[2]}})),
    );
    server.shutdown().await;
    Ok(rows)
}

/// Items a second a for-each commits to `url`'s PostgreSQL or, with none,
/// to sled, and the store's bytes per item ([`durable::bookkeeping`] on
/// either store).
async fn bookkeeping(url: Option<&str>, items: u64) -> BenchResult<(f64, f64)> {
    let state = tempfile::tempdir()?;
    let (store, before) = match url {
        Some(url) => (RunStore::open_postgres(url).await?, schema_bytes(url).await?),
        None => (RunStore::open(state.path())?, 0),
    };
    let rate = durable::bookkeeping(store, items, 16).await?;
    let bytes = match url {
        Some(url) => schema_bytes(url).await?.saturating_sub(before),
        None => durable::dir_size(state.path()),
    };
    Ok((rate, bytes as f64 / items as f64))
}

/// The bytes of every table (with its indexes and TOAST) in the schema
/// the store URL uses.
async fn schema_bytes(url: &str) -> BenchResult<u64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(connection);
    // Sizes are read from the files: a checkpoint is not needed, but the
    // statistics are, for freshly written pages to count.
    let row = client
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::int8 FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
            &[],
        )
        .await?;
    drop(client);
    let _ = task.await;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

fn short_workflow(dir: &Path, stripe: &str) -> BenchResult<PathBuf> {
    let key = dir.join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let path = dir.join("short.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "short"

[inputs.n]
type = "string"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"
rate_limit = "100000/s"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = {{ email = "short${{{{ .inputs.n }}}}@fleet.example", name = "Short" }}
"#,
            key = key.display(),
        ),
    )?;
    Ok(path)
}

fn weft(url: &str, cache: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .arg("--store")
        .arg(url)
        .arg("--cache-dir")
        .arg(cache)
        .env_remove("WEFT_STATE_DIR")
        .env_remove("WEFT_LOG")
        .stdin(Stdio::null());
    command
}

fn token(url: &str, cache: &Path) -> BenchResult<String> {
    let out =
        weft(url, cache).args(["tokens", "create", "bench", "--role", "operator"]).output()?;
    if !out.status.success() {
        return Err(format!("tokens create: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A `weft serve` worker and the address it listens on.
struct Worker {
    child: std::process::Child,
    base: String,
}

impl Worker {
    fn start(url: &str, cache: &Path, workflow: &Path) -> BenchResult<Worker> {
        use std::io::BufRead as _;
        let mut child = weft(url, cache)
            .args(["serve", "--bind", "127.0.0.1:0", "--grace", "2s"])
            .arg(workflow)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_owned());
                    sent = true;
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => Ok(Worker { child, base }),
            Err(_) => {
                let _ = child.kill();
                Err("weft serve did not start".into())
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts a run of `short` on `worker`, trying again while it is full
/// (503); returns the run id.
async fn start_run(
    http: &reqwest::Client,
    worker: &str,
    token: &str,
    n: usize,
) -> BenchResult<String> {
    loop {
        let response = http
            .post(format!("{worker}/api/workflows/short/runs"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"n":"{n}"}}"#))
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        match status {
            202 => {
                let body: Value = serde_json::from_str(&text)?;
                return Ok(body["run_id"].as_str().ok_or("no run id")?.to_owned());
            }
            503 => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => return Err(format!("starting a run: {status} {text}").into()),
        }
    }
}

/// Waits until every run in `ids` has ended; errs on one that failed.
async fn wait_all(store: &RunStore, ids: &[String]) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut open: Vec<&String> = ids.iter().collect();
    while !open.is_empty() {
        let mut still = Vec::new();
        for id in open {
            let run = store.run(id).await?;
            match run.status {
                Status::Succeeded => {}
                Status::Pending | Status::Running => still.push(id),
                other => return Err(format!("run {id} ended {other:?}: {:?}", run.error).into()),
            }
        }
        open = still;
        if Instant::now() > deadline {
            return Err(format!("{} runs did not end in 5 minutes", open.len()).into());
        }
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Milliseconds from each request's sending to its run's first step
/// starting, for `runs` runs offered at 50 a second round the workers.
async fn claim_latencies(
    workers: &[Worker],
    token: &str,
    store: &RunStore,
    runs: usize,
) -> BenchResult<Vec<f64>> {
    let http = reqwest::Client::new();
    let every = Duration::from_secs_f64(1.0 / OFFERED_PER_SECOND);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for n in 0..runs {
        tokio::time::sleep_until(started + every * n as u32).await;
        let http = http.clone();
        let base = workers[n % workers.len()].base.clone();
        let token = token.to_owned();
        tasks.push(tokio::spawn(async move {
            let sent = now_ms();
            start_run(&http, &base, &token, 100_000 + n).await.map(|id| (id, sent))
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.push(task.await?.map_err(|e| e.to_string())?);
    }
    let ids: Vec<String> = sent.iter().map(|(id, _)| id.clone()).collect();
    wait_all(store, &ids).await?;
    let mut latencies = Vec::new();
    for (id, at) in sent {
        let steps = store.steps(&id).await?;
        let first = steps.first().and_then(|s| s.started_ms).ok_or("a step never started")?;
        latencies.push(first.saturating_sub(at) as f64);
    }
    Ok(latencies)
}

/// Runs a second `workers` complete: `runs` started at once round them.
async fn runs_per_second(
    workers: &[Worker],
    token: &str,
    store: &RunStore,
    runs: usize,
) -> BenchResult<f64> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..runs {
        let http = http.clone();
        let base = workers[n % workers.len()].base.clone();
        let token = token.to_owned();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tasks.push(tokio::spawn(async move { start_run(&http, &base, &token, n).await }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await?.map_err(|e| e.to_string())?);
    }
    wait_all(store, &ids).await?;
    Ok(runs as f64 / started.elapsed().as_secs_f64())
}

fn percentile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

/// The times of [`EXPORT_ROUNDS`] interleaved rounds: `weft run --store postgres://…`,
/// `weft run` on sled and the native client exporting the same customers.
async fn export(base: &str, cache: &Path, config: &Config) -> BenchResult<([Vec<f64>; 3], usize)> {
    let records = ((100_000.0 * config.scale).round() as usize).max(100);
    let emulator = StripeEmulator::new(StripeConfig { seed: records, ..StripeConfig::default() });
    let server =
        weft_sandbox::server::serve(emulator.router(), weft_sandbox::server::LOOPBACK_ANY_PORT)
            .await?;
    let schema = ScratchSchema::create(base).await?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let url = schema.url.clone();
    let (base_url, dir_path, cache) = (server.base_url(), dir.path().to_owned(), cache.to_owned());
    let measured = tokio::task::spawn_blocking(move || -> BenchResult<[Vec<f64>; 3]> {
        // 0: weft on PostgreSQL, 1: weft on sled, 2: native.
        let round = |kind: usize, n: usize| -> BenchResult<f64> {
            let out = dir_path.join(format!("out-{kind}-{n}.jsonl"));
            let mut command = if kind < 2 {
                let workflow = dir_path.join(format!("export-{kind}-{n}.toml"));
                std::fs::write(&workflow, super::export::workflow_text(&base_url, &key, &out))?;
                let mut command = if kind == 0 {
                    weft(&url, &cache)
                } else {
                    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
                    command
                        .arg("--state-dir")
                        .arg(dir_path.join("state"))
                        .arg("--cache-dir")
                        .arg(&cache)
                        .env_remove("WEFT_STORE")
                        .stdin(Stdio::null());
                    command
                };
                command.args(["run", "--json"]).arg(&workflow);
                command
            } else {
                let mut command = Command::new(std::env::current_exe()?);
                command.args(["--native-export", &base_url, SANDBOX_API_KEY]).arg(&out);
                command
            };
            let started = Instant::now();
            let output = command.output()?;
            let seconds = started.elapsed().as_secs_f64();
            if !output.status.success() {
                return Err(
                    format!("export failed: {}", String::from_utf8_lossy(&output.stderr)).into()
                );
            }
            let lines = std::fs::read_to_string(&out)?.lines().count();
            if lines != records {
                return Err(format!("an export wrote {lines} of {records} records").into());
            }
            let _ = std::fs::remove_file(&out);
            Ok(seconds)
        };
        // One unmeasured round each (the component cache, the page cache,
        // the run stores).
        for kind in 0..3 {
            round(kind, 0)?;
        }
        let mut seconds = [Vec::new(), Vec::new(), Vec::new()];
        for n in 1..=EXPORT_ROUNDS {
            for k in 0..3 {
                let kind = (k + n) % 3;
                seconds[kind].push(round(kind, n)?);
            }
        }
        Ok(seconds)
    })
    .await??;
    server.shutdown().await;
    Ok((measured, records))
}
