//! What `weft serve` does under a burst of run starts.
//!
//! A server (in this process, over loopback HTTP, with the suite's native
//! no-op connector so the figure is the server's and the store's, not a
//! vendor's) gets 2,000 run starts through the API at 100 concurrent, then
//! 2,000 signed webhook deliveries at 100 concurrent, then the 2,000 API
//! starts again from clients that send a refused start again after its
//! `Retry-After` (what a well-behaved client does; every start ends up a
//! run, and the figure is how long the server takes). Every start must be
//! answered 202 or 503 (a full server refuses at once, with Retry-After),
//! every 202 must be a run that succeeds (none lost), and `/healthz`,
//! polled throughout, must keep answering. The figures are the answer
//! latency (p50, p99), the refusals, the slowest `/healthz` and the runs
//! completed per second.
//!
//! `WEFT_BENCH_BURST` sets the number of starts (default 2,000 times the
//! scale), `WEFT_BENCH_BURST_CONCURRENCY` the clients (default 100).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use weft::endpoint::Endpoint;
use weft::executor::Executor;
use weft::runtime::{Runtime, RuntimeConfig};
use weft::serve::ServeConfig;
use weft::serve::webhook::hmac_signature;
use weft::store::{RunStore, Status};
use weft::workflow::Workflow;

use super::durable::NoOp;
use super::report::{Row, grouped, quantile};
use super::{BenchResult, Config};

const SECRET: &str = "whsec_bench";

/// Who sends the starts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sender {
    Api,
    Webhook,
    /// The API, each client sending a refused start again after its
    /// Retry-After until it is taken.
    ApiRetrying,
}

/// How one burst went.
struct Burst {
    starts: usize,
    /// 503s answered, counting each retry's.
    refusals: usize,
    accepted: BTreeSet<String>,
    refused: usize,
    latencies_ms: Vec<f64>,
    wall_s: f64,
    /// Until every admitted run ended.
    drained_s: f64,
    slowest_health_ms: f64,
    health_polls: u64,
}

/// Polls `/healthz` until told to stop; the slowest answer, in ms, and the
/// number of polls. An unanswered poll (5 s) is an error.
async fn watch_health(
    client: reqwest::Client,
    url: String,
    done: Arc<AtomicBool>,
) -> Result<(f64, u64), String> {
    let mut slowest = 0f64;
    let mut polls = 0;
    while !done.load(Ordering::Relaxed) {
        let asked = Instant::now();
        match client.get(&url).timeout(Duration::from_secs(5)).send().await {
            Ok(r) if r.status() == 200 => {}
            Ok(r) => return Err(format!("/healthz answered {}", r.status())),
            Err(e) => return Err(format!("/healthz did not answer: {e}")),
        }
        slowest = slowest.max(asked.elapsed().as_secs_f64() * 1000.0);
        polls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((slowest, polls))
}

async fn burst(
    client: &reqwest::Client,
    base: &str,
    starts: usize,
    concurrency: usize,
    sender: Sender,
) -> BenchResult<Burst> {
    let done = Arc::new(AtomicBool::new(false));
    let health =
        tokio::spawn(watch_health(client.clone(), format!("{base}/healthz"), done.clone()));
    let slots = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..starts {
        let (client, base, slots) = (client.clone(), base.to_owned(), slots.clone());
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
            let tag = match sender {
                Sender::Api => "api",
                Sender::Webhook => "hook",
                Sender::ApiRetrying => "retry",
            };
            let body = json!({ "email": format!("{tag}{i}@burst.example") }).to_string();
            let mut refusals = 0;
            loop {
                let request = if sender == Sender::Webhook {
                    let signature = hmac_signature(body.as_bytes(), SECRET.as_bytes(), None);
                    client.post(format!("{base}/hooks/burst")).header("X-Signature", signature)
                } else {
                    client
                        .post(format!("{base}/api/workflows/burst/runs"))
                        .header("content-type", "application/json")
                };
                let asked = Instant::now();
                let response = request
                    .body(body.clone())
                    .timeout(Duration::from_secs(60))
                    .send()
                    .await
                    .map_err(|e| format!("start {i} was not answered: {e}"))?;
                let ms = asked.elapsed().as_secs_f64() * 1000.0;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let bytes = response.bytes().await.map_err(|e| e.to_string())?;
                let answer: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                match (status, retry_after) {
                    (503, Some(secs)) if sender == Sender::ApiRetrying && refusals < 120 => {
                        refusals += 1;
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    _ => {
                        return Ok::<_, String>((
                            status,
                            retry_after.is_some(),
                            answer["run_id"].as_str().map(str::to_owned),
                            ms,
                            refusals,
                        ));
                    }
                }
            }
        });
    }
    let mut accepted = BTreeSet::new();
    let mut refused = 0;
    let mut refusals = 0;
    let mut latencies_ms = Vec::with_capacity(starts);
    while let Some(answer) = tasks.join_next().await {
        let (status, retry_after, id, ms, retried) = answer??;
        latencies_ms.push(ms);
        refusals += retried;
        match (status, retry_after, id) {
            (202, _, Some(id)) => {
                accepted.insert(id);
            }
            (503, true, _) => {
                refused += 1;
                refusals += 1;
            }
            other => {
                return Err(format!(
                    "a start was answered {other:?}, not 202 with a run id or 503 with Retry-After"
                )
                .into());
            }
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    // Every admitted run ends.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let health: serde_json::Value = serde_json::from_slice(
            &client.get(format!("{base}/healthz")).send().await?.bytes().await?,
        )?;
        if health["active_runs"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("admitted runs did not finish: {health}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_s = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (slowest_health_ms, health_polls) = health.await??;
    Ok(Burst {
        starts,
        refusals,
        accepted,
        refused,
        latencies_ms,
        wall_s,
        drained_s,
        slowest_health_ms,
        health_polls,
    })
}

fn row(what: &str, mut b: Burst, concurrency: usize, lost: usize) -> Row {
    let (p50, p99) = (quantile(&mut b.latencies_ms, 0.5), quantile(&mut b.latencies_ms, 0.99));
    let answered = b.accepted.len() + b.refused;
    let runs_per_s = b.accepted.len() as f64 / b.drained_s.max(f64::EPSILON);
    let refused = if b.refusals > b.refused {
        format!(
            "{} refused in the end, {} 503s answered",
            grouped(b.refused as f64),
            grouped(b.refusals as f64)
        )
    } else {
        format!("{} refused (503)", grouped(b.refused as f64))
    };
    Row::new("serve", format!("{} {what} at {concurrency} concurrent", grouped(b.starts as f64)), format!("p50 {p50:.1} ms, p99 {p99:.1} ms"))
        .reference(format!("{} runs (202), {refused}, {lost} lost", grouped(b.accepted.len() as f64)))
        .result(format!("all done in {:.2} s, {runs_per_s:.0} runs/s; /healthz slowest {:.1} ms of {} polls", b.drained_s, b.slowest_health_ms, b.health_polls))
        .target("all answered 202/503, none lost, /healthz answers", answered == b.starts && lost == 0)
        .figures(json!({
            "starts": b.starts, "concurrency": concurrency, "accepted": b.accepted.len(), "refused": b.refused, "answered_503": b.refusals, "lost": lost,
            "p50_ms": p50, "p99_ms": p99, "answer_wall_s": b.wall_s, "drained_s": b.drained_s, "runs_per_second": runs_per_s,
            "healthz_slowest_ms": b.slowest_health_ms, "healthz_polls": b.health_polls,
        }))
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let starts: usize = std::env::var("WEFT_BENCH_BURST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(((2000.0 * config.scale).round() as usize).max(100));
    let concurrency: usize = std::env::var("WEFT_BENCH_BURST_CONCURRENCY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET)?;
    let path = dir.path().join("burst.toml");
    std::fs::write(
        &path,
        format!(
            "[workflow]\nname = \"burst\"\n\n[inputs.email]\ntype = \"string\"\n\n[trigger.webhook]\nverify = \"hmac-sha256\"\nheader = \"X-Signature\"\nsecret = \"file:{}\"\n\n[connections.noop]\nplugin = \"noop\"\n\n[[step]]\nid = \"write\"\nupsert = \"noop.records\"\nrecord = {{ id = \"${{{{ .inputs.email }}}}\", email = \"${{{{ .inputs.email }}}}\" }}\n",
            secret.display()
        ),
    )?;
    let workflow = Workflow::load(&path)?;
    let endpoint: Arc<dyn Endpoint> = Arc::new(NoOp::new());
    let serve_config = ServeConfig {
        bind: "127.0.0.1:0".parse()?,
        workflows: vec![workflow],
        endpoints: BTreeMap::from([("noop".to_owned(), endpoint)]),
        shutdown_grace: Duration::from_secs(30),
        ..ServeConfig::default()
    };
    let executor = Executor::new(Runtime::new(RuntimeConfig::default())?, RunStore::open(&state)?);
    let server = weft::serve::start(executor, serve_config).await?;
    let base = format!("http://{}", server.addr);
    // One client, a pool of connections, as a load balancer in front would.
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;

    eprintln!("  {} API starts at {concurrency} concurrent…", grouped(starts as f64));
    let api = burst(&client, &base, starts, concurrency, Sender::Api).await?;
    eprintln!("  {} webhook deliveries at {concurrency} concurrent…", grouped(starts as f64));
    let hooks = burst(&client, &base, starts, concurrency, Sender::Webhook).await?;
    eprintln!(
        "  {} API starts at {concurrency} concurrent, refused ones sent again after Retry-After…",
        grouped(starts as f64)
    );
    let retried = burst(&client, &base, starts, concurrency, Sender::ApiRetrying).await?;
    let stopping = Instant::now();
    server.shutdown().await;
    let shutdown_s = stopping.elapsed().as_secs_f64();

    // None lost: every 202 is a run in the store, and it succeeded.
    let store = RunStore::open(&state)?;
    let runs = store.runs().await?;
    let succeeded: BTreeSet<String> =
        runs.iter().filter(|r| r.status == Status::Succeeded).map(|r| r.id.clone()).collect();
    let lost = |b: &Burst| b.accepted.difference(&succeeded).count();
    let (api_lost, hooks_lost, retried_lost) = (lost(&api), lost(&hooks), lost(&retried));
    let announced = api.accepted.len() + hooks.accepted.len() + retried.accepted.len();
    if runs.len() != announced {
        return Err(
            format!("{} runs in the store, {announced} announced by a 202", runs.len()).into()
        );
    }
    let mut rows = vec![
        row("run starts through the API", api, concurrency, api_lost),
        row("webhook deliveries (HMAC)", hooks, concurrency, hooks_lost),
        row(
            "API starts, refused ones sent again after Retry-After,",
            retried,
            concurrency,
            retried_lost,
        ),
    ];
    if let Some(last) = rows.last_mut() {
        last.figures["shutdown_s"] = json!(shutdown_s);
    }
    Ok(rows)
}
