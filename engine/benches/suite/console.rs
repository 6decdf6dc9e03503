//! What the console costs with a store of many runs.
//!
//! Seeds a real sled store with 100,000 finished runs of a five-step
//! workflow (each step committed with its counts; statuses and triggers
//! mixed, a few failed), starts `weft serve` on it, signs in with a token,
//! and asks one page at a time (one client, so the figure is the server's,
//! not a queue's): the runs list's first page, a filtered page (status,
//! workflow), a page 100 pages deep (through the cursor), a search by id,
//! and the detail of random runs. The figure is the server's time on each
//! answer, from its `Server-Timing` header (p50, p95), with the client's
//! round trip beside it; the targets are p95 ≤ 50 ms for the list and the
//! detail. The console's first page (HTML, stylesheet and script) is
//! weighed against 200 KB.
//!
//! `WEFT_BENCH_CONSOLE_RUNS` sets the runs seeded (default 100,000 times
//! the scale).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weft::endpoint::Endpoint;
use weft::executor::Executor;
use weft::runtime::{Runtime, RuntimeConfig};
use weft::serve::ServeConfig;
use weft::store::{RunRecord, RunStore, RunTrigger, Status, StepCounts, StepState};
use weft::workflow::Workflow;

use super::durable::NoOp;
use super::report::{Row, grouped, quantile};
use super::{BenchResult, Config};

const STEPS: [&str; 5] = ["list", "enrich", "upsert", "tag", "notify"];

fn workflow_text() -> String {
    let mut text = String::from(
        "[workflow]\nname = \"five\"\ndescription = \"five steps\"\n\n[inputs.email]\ntype = \"string\"\ndefault = \"a@example.com\"\n\n[connections.noop]\nplugin = \"noop\"\n",
    );
    for step in STEPS {
        text.push_str(&format!(
            "\n[[step]]\nid = \"{step}\"\nupsert = \"noop.records\"\nrecord = {{ id = \"${{{{ .inputs.email }}}}\" }}\n"
        ));
    }
    text
}

/// Seeds `runs` finished runs, `concurrency` writers at once.
async fn seed(store: &RunStore, text: &str, runs: usize) -> BenchResult<Vec<String>> {
    let store = Arc::new(store.clone());
    let text = Arc::new(text.to_owned());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (store, text, next) = (store.clone(), text.clone(), next.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= runs {
                    return Ok::<_, weft::store::StoreError>(ids);
                }
                let id = store.new_run_id().await?;
                let created_ms = weft::store::now_ms();
                let (status, error) = match i % 50 {
                    0..3 => (Status::Failed, Some("step upsert: vendor answered 422".to_owned())),
                    3 => (Status::Cancelled, None),
                    _ => (Status::Succeeded, None),
                };
                let trigger = match i % 4 {
                    0 => RunTrigger::Cron,
                    1 => RunTrigger::Webhook,
                    _ => RunTrigger::Api,
                };
                let run = RunRecord {
                    id: id.clone(),
                    workflow: "five".into(),
                    workflow_hash: "0".repeat(64),
                    workflow_text: text.as_str().to_owned(),
                    workflow_path: "five.toml".into(),
                    inputs: json!({ "email": format!("user{i}@example.com") }),
                    status,
                    created_ms,
                    finished_ms: Some(created_ms + 1500),
                    error,
                    dry_run: i % 10 == 0,
                    trigger,
                    cancel_requested: false,
                    resumes: 0,
                    inputs_defaulted: Vec::new(),
                };
                let step_ids: Vec<String> = STEPS.iter().map(|s| (*s).to_owned()).collect();
                store.create_run_by(&run, &step_ids, None, Some("bench")).await?;
                for (index, step) in STEPS.iter().enumerate() {
                    let mut state = StepState::pending(step, index as u32);
                    state.status = Status::Succeeded;
                    state.attempts = 1;
                    state.started_ms = Some(created_ms + index as u64 * 300);
                    state.finished_ms = Some(created_ms + index as u64 * 300 + 250);
                    state.counts = StepCounts {
                        read: 100,
                        created: 3,
                        updated: 5,
                        unchanged: 92,
                        ..StepCounts::default()
                    };
                    store.commit_step(&id, &state).await?;
                }
                ids.push(id);
            }
        });
    }
    let mut ids = Vec::with_capacity(runs);
    while let Some(done) = tasks.join_next().await {
        ids.extend(done??);
    }
    Ok(ids)
}

/// One page's server time and round trip, in ms.
async fn ask(client: &reqwest::Client, url: &str, cookie: &str) -> BenchResult<(f64, f64, usize)> {
    let asked = Instant::now();
    let response = client.get(url).header("cookie", cookie).send().await?;
    if response.status() != 200 {
        return Err(format!("{url}: {}", response.status()).into());
    }
    let server = response
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("app;dur="))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or("no Server-Timing")?;
    let bytes = response.bytes().await?.len();
    Ok((server, asked.elapsed().as_secs_f64() * 1000.0, bytes))
}

struct Timed {
    server: Vec<f64>,
    round_trip: Vec<f64>,
}

async fn time(
    client: &reqwest::Client,
    urls: &[String],
    cookie: &str,
    times: usize,
) -> BenchResult<Timed> {
    let mut timed = Timed { server: Vec::new(), round_trip: Vec::new() };
    for i in 0..times {
        let (server, round_trip, _) = ask(client, &urls[i % urls.len()], cookie).await?;
        timed.server.push(server);
        timed.round_trip.push(round_trip);
    }
    Ok(timed)
}

fn row(what: &str, mut t: Timed, runs: usize) -> Row {
    let (p50, p95) = (quantile(&mut t.server, 0.5), quantile(&mut t.server, 0.95));
    let (rt50, rt95) = (quantile(&mut t.round_trip, 0.5), quantile(&mut t.round_trip, 0.95));
    Row::new("console", format!("{what}, {} runs in the store", grouped(runs as f64)), format!("server p50 {p50:.2} ms, p95 {p95:.2} ms"))
        .reference(format!("round trip p50 {rt50:.2} ms, p95 {rt95:.2} ms"))
        .target("p95 ≤ 50 ms", p95 <= 50.0)
        .figures(json!({ "server_p50_ms": p50, "server_p95_ms": p95, "round_trip_p50_ms": rt50, "round_trip_p95_ms": rt95, "samples": t.server.len() }))
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let runs: usize = std::env::var("WEFT_BENCH_CONSOLE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((100_000.0 * config.scale).round() as usize).max(1000));
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let path = dir.path().join("five.toml");
    let text = workflow_text();
    std::fs::write(&path, &text)?;
    let token = {
        let store = RunStore::open(&state)?;
        eprintln!("  seeding {} runs of 5 steps…", grouped(runs as f64));
        let seeding = Instant::now();
        seed(&store, &text, runs).await?;
        eprintln!("  seeded in {:.1} s", seeding.elapsed().as_secs_f64());
        let issued = weft::serve::auth::issue("bench", weft::store::Role::Viewer, None);
        store.create_token(&issued.record).await?;
        issued.token.expose().to_owned()
    };
    let endpoint: Arc<dyn Endpoint> = Arc::new(NoOp::new());
    let serve_config = ServeConfig {
        bind: "127.0.0.1:0".parse()?,
        workflows: vec![Workflow::load(&path)?],
        endpoints: BTreeMap::from([("noop".to_owned(), endpoint)]),
        shutdown_grace: Duration::from_secs(10),
        ..ServeConfig::default()
    };
    let executor = Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(&state)?);
    let server = weft::serve::start(executor, serve_config).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let login = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}&next=%2F"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or("no session cookie")?
        .to_owned();

    // The cursor 100 pages deep, and ids to look up.
    let mut before = String::new();
    for _ in 0..100 {
        let page = client
            .get(format!("{base}/?before={before}"))
            .header("cookie", &cookie)
            .send()
            .await?
            .text()
            .await?;
        let Some(at) = page.find("rel=\"next\" href=\"") else { break };
        let link = &page[at + "rel=\"next\" href=\"".len()..];
        let link = link.split('"').next().unwrap_or_default().replace("&amp;", "&");
        before = link.rsplit("before=").next().unwrap_or_default().to_owned();
    }
    let first_page =
        client.get(format!("{base}/")).header("cookie", &cookie).send().await?.text().await?;
    let ids: Vec<String> = first_page
        .match_indices("data-run-id=\"")
        .filter_map(|(at, m)| first_page[at + m.len()..].split('"').next().map(str::to_owned))
        .collect();
    let deep = client
        .get(format!("{base}/?before={before}"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    let deep_ids: Vec<String> = deep
        .match_indices("data-run-id=\"")
        .filter_map(|(at, m)| deep[at + m.len()..].split('"').next().map(str::to_owned))
        .collect();
    let mut detail_urls: Vec<String> =
        ids.iter().chain(&deep_ids).map(|id| format!("{base}/runs/{id}")).collect();
    detail_urls.sort();
    let search = ids
        .first()
        .map(|id| format!("{base}/?q={}", &id[..id.len().min(12)]))
        .unwrap_or_else(|| format!("{base}/"));

    eprintln!("  asking pages…");
    // Warm the caches a serving process has warm.
    time(&client, &[format!("{base}/")], &cookie, 20).await?;
    let samples = 300;
    let first = time(&client, &[format!("{base}/")], &cookie, samples).await?;
    let failed = time(&client, &[format!("{base}/?status=failed")], &cookie, samples).await?;
    let by_workflow =
        time(&client, &[format!("{base}/?workflow=five&trigger=cron")], &cookie, samples).await?;
    let deep_page = time(&client, &[format!("{base}/?before={before}")], &cookie, samples).await?;
    let searched = time(&client, &[search], &cookie, samples).await?;
    let detail = time(&client, &detail_urls, &cookie, samples).await?;

    let mut weight = 0;
    for asset in ["/", "/console.css", "/console.js"] {
        weight +=
            ask(&client, &format!("{base}{asset}"), &cookie).await.map(|(_, _, b)| b).unwrap_or(0);
    }
    server.shutdown().await;

    Ok(vec![
        row("runs list, first page", first, runs),
        row("runs list, status=failed", failed, runs),
        row("runs list, workflow and trigger", by_workflow, runs),
        row("runs list, 100 pages deep", deep_page, runs),
        row("runs list, search by id", searched, runs),
        row("run detail (5 steps), random runs", detail, runs),
        Row::new(
            "console",
            "first page: HTML, stylesheet, script",
            format!("{:.1} KB", weight as f64 / 1000.0),
        )
        .target("≤ 200 KB", weight <= 200_000)
        .figures(json!({ "bytes": weight })),
    ])
}
