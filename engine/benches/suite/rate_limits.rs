//! Rate-limit utilisation: weft's host-side limiter against a naive client
//! that only retries on 429, side by side in one run, against emulators that
//! enforce the vendor's limit. The emulator's own request log is the judge:
//! every figure counts what the vendor answered, by status and time.
//!
//! Per scenario and client: the successful request rate over the allowed
//! rate and the share of requests answered 429. The durations below are
//! multiplied by `WEFT_BENCH_SCALE` and by `WEFT_BENCH_RATE_SCALE` (0.25 in
//! the suite by default; 1 for the full figures of BENCHMARKS.md).
//!
//! (a) Stripe test mode, 25 reads/s per key: 8 concurrent workflows sharing
//!     one key, each paging through customers.
//! (b) GrowPanel, POST 100/min: 8 workers upserting single new customers
//!     (each upsert is a GET, then a POST).
//! (c) Baremetrics with a limit it does not publish (20 r/s here): 8 workers
//!     listing customers; measured after the first 30 s, and over the whole
//!     run (the search for the limit included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft::connector::{CallContext, ListRequest, UpsertRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits};
use weft::limiter::{LimitedPolicy, LimiterRegistry, RetryPolicy};
use weft::runtime::{Plugin, Runtime, RuntimeConfig};
use weft_sandbox::requests::RequestLog;
use weft_sandbox::server::RunningServer;

use serde_json::json;

use super::report::{Row, grouped};
use super::{BenchResult, Config};

const WORKERS: usize = 8;

/// What the vendor saw in the measured window.
struct Figures {
    achieved: f64,
    share_429: f64,
    requests: usize,
}

fn judge(
    log: &RequestLog,
    counted: impl Fn(&str) -> bool,
    from: Instant,
    to: Instant,
    allowed_per_second: f64,
) -> Figures {
    let requests: Vec<_> = log
        .requests()
        .into_iter()
        .filter(|r| counted(&r.method) && r.received_at >= from && r.received_at <= to)
        .collect();
    let ok = requests.iter().filter(|r| (200..300).contains(&r.status)).count() as f64;
    let throttled = requests.iter().filter(|r| r.status == 429).count() as f64;
    Figures {
        achieved: ok / (to - from).as_secs_f64() / allowed_per_second,
        share_429: throttled / requests.len().max(1) as f64,
        requests: requests.len(),
    }
}

/// A connection of its own per worker, as separate runs would have, with
/// the limiter of their shared key from one registry.
fn connection(
    registry: &LimiterRegistry,
    plugin: &Plugin,
    base_url: &str,
    key: &str,
) -> BenchResult<Arc<ConnectionHttp>> {
    let secret = Secret::new(key);
    let limiter = registry.limiter(
        &plugin.manifest().name,
        weft::limiter::Publisher::of_digest(plugin.digest()),
        Some(&secret),
        &plugin.manifest().rate_limits,
        &[],
    );
    Ok(Arc::new(ConnectionHttp::new(
        weft::http::shared_client(),
        base_url,
        &[],
        Some((plugin.manifest().auth.clone(), secret)),
        HttpLimits::default(),
        Arc::new(LimitedPolicy::new(limiter, RetryPolicy::default())),
    )?))
}

async fn builtin(runtime: &Runtime, name: &str) -> BenchResult<Arc<Plugin>> {
    Ok(Arc::new(runtime.load(name, weft::builtin::component(name).ok_or("built in")?).await?))
}

/// Runs `work(worker, iteration)` on `WORKERS` tasks until `duration` ends.
async fn drive<F, Fut>(duration: Duration, work: F) -> BenchResult<()>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let work = Arc::new(work);
    let started = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let work = work.clone();
            tokio::spawn(async move {
                let mut i = 0;
                while started.elapsed() < duration {
                    work(worker, i).await;
                    i += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await?;
    }
    Ok(())
}

/// Sends until not refused, pausing a fixed 50 ms after each 429.
async fn naive(request: reqwest::RequestBuilder) {
    loop {
        let Some(attempt) = request.try_clone() else { return };
        match attempt.send().await {
            Ok(r) if r.status().as_u16() == 429 => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(r) => {
                let _ = r.bytes().await;
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn serve(router: axum::Router) -> BenchResult<RunningServer> {
    Ok(weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?)
}

async fn stripe(runtime: &Runtime, duration: Duration, with_weft: bool) -> BenchResult<Figures> {
    use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};
    let emulator = StripeEmulator::new(StripeConfig {
        seed: 500,
        rate_limit: Some((25, Duration::from_secs(1))),
        ..StripeConfig::default()
    });
    let server = serve(emulator.router()).await?;
    let base = server.base_url();
    let plugin = builtin(runtime, "stripe").await?;
    let started = Instant::now();
    if with_weft {
        let registry = LimiterRegistry::default();
        let connections: Vec<_> = (0..WORKERS)
            .map(|_| connection(&registry, &plugin, &base, SANDBOX_API_KEY))
            .collect::<BenchResult<_>>()?;
        let cursors: Arc<Vec<tokio::sync::Mutex<Option<String>>>> =
            Arc::new((0..WORKERS).map(|_| tokio::sync::Mutex::new(None)).collect());
        drive(duration, move |worker, _| {
            let (plugin, http, cursors) =
                (plugin.clone(), connections[worker].clone(), cursors.clone());
            async move {
                let mut cursor = cursors[worker].lock().await;
                let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
                let request = ListRequest {
                    resource: "customers".into(),
                    cursor: cursor.take(),
                    page_size: 10,
                    filter: None,
                };
                if let Ok(page) = plugin.list(&http, ctx, request).await {
                    *cursor = page.next_cursor;
                }
            }
        })
        .await?;
    } else {
        let client = reqwest::Client::new();
        drive(duration, move |_, _| {
            naive(
                client
                    .get(format!("{base}/v1/customers?limit=10"))
                    .basic_auth(SANDBOX_API_KEY, Some("")),
            )
        })
        .await?;
    }
    let figures = judge(&emulator.requests(), |m| m == "GET", started, Instant::now(), 25.0);
    server.shutdown().await;
    Ok(figures)
}

fn growpanel_customer(worker: usize, i: usize, client: &str) -> serde_json::Value {
    serde_json::json!({
        "id": format!("bench-{client}-{worker}-{i}"),
        "name": format!("Bench {worker} {i}"),
        "email": format!("bench.{client}.{worker}.{i}@example.com"),
        "created_date": "2026-01-15",
        "country": "US",
        "data_source": weft_sandbox::growpanel::DEMO_DATA_SOURCE,
    })
}

async fn growpanel(runtime: &Runtime, duration: Duration, with_weft: bool) -> BenchResult<Figures> {
    use weft_sandbox::growpanel::{
        DEMO_DATA_SOURCE, GrowPanelConfig, GrowPanelEmulator, SANDBOX_API_KEY,
    };
    let emulator = GrowPanelEmulator::new(GrowPanelConfig {
        enforce_rate_limits: true,
        ..GrowPanelConfig::default()
    });
    let server = serve(emulator.router()).await?;
    let base = server.base_url();
    let plugin = builtin(runtime, "growpanel").await?;
    let started = Instant::now();
    if with_weft {
        let registry = LimiterRegistry::default();
        let connections: Vec<_> = (0..WORKERS)
            .map(|_| connection(&registry, &plugin, &base, SANDBOX_API_KEY))
            .collect::<BenchResult<_>>()?;
        drive(duration, move |worker, i| {
            let (plugin, http) = (plugin.clone(), connections[worker].clone());
            async move {
                let ctx = CallContext {
                    base_url: http.base_url(),
                    settings: vec![("source".into(), DEMO_DATA_SOURCE.into())],
                };
                let request = UpsertRequest {
                    resource: "customers".into(),
                    record: growpanel_customer(worker, i, "weft").to_string(),
                    idempotency_key: format!("bench-{worker}-{i}"),
                };
                let _ = plugin.upsert(&http, ctx, request).await;
            }
        })
        .await?;
    } else {
        let client = reqwest::Client::new();
        drive(duration, move |worker, i| {
            naive(
                client
                    .post(format!("{base}/data/customers"))
                    .bearer_auth(SANDBOX_API_KEY)
                    .header("content-type", "application/json")
                    .body(growpanel_customer(worker, i, "naive").to_string()),
            )
        })
        .await?;
    }
    let figures =
        judge(&emulator.requests(), |m| m == "POST", started, Instant::now(), 100.0 / 60.0);
    server.shutdown().await;
    Ok(figures)
}

async fn baremetrics(
    runtime: &Runtime,
    duration: Duration,
    warmup: Duration,
    with_weft: bool,
) -> BenchResult<(Figures, Figures)> {
    use weft_sandbox::baremetrics::{
        BaremetricsConfig, BaremetricsEmulator, NATIVE_SOURCE_ID, SANDBOX_API_KEY,
    };
    let limit = 20;
    let emulator = BaremetricsEmulator::new(BaremetricsConfig {
        seed: 200,
        rate_limit: Some((limit, Duration::from_secs(1))),
        ..BaremetricsConfig::default()
    });
    let server = serve(emulator.router()).await?;
    let base = server.base_url();
    let plugin = builtin(runtime, "baremetrics").await?;
    let started = Instant::now();
    if with_weft {
        let registry = LimiterRegistry::default();
        let connections: Vec<_> = (0..WORKERS)
            .map(|_| connection(&registry, &plugin, &base, SANDBOX_API_KEY))
            .collect::<BenchResult<_>>()?;
        drive(duration, move |worker, _| {
            let (plugin, http) = (plugin.clone(), connections[worker].clone());
            async move {
                let ctx = CallContext {
                    base_url: http.base_url(),
                    settings: vec![("source_id".into(), NATIVE_SOURCE_ID.into())],
                };
                let request = ListRequest {
                    resource: "customers".into(),
                    cursor: None,
                    page_size: 10,
                    filter: None,
                };
                let _ = plugin.list(&http, ctx, request).await;
            }
        })
        .await?;
    } else {
        let client = reqwest::Client::new();
        drive(duration, move |_, _| {
            naive(
                client
                    .get(format!("{base}/v1/{NATIVE_SOURCE_ID}/customers?per_page=10"))
                    .bearer_auth(SANDBOX_API_KEY),
            )
        })
        .await?;
    }
    let ended = Instant::now();
    let log = emulator.requests();
    let after_warmup = judge(&log, |_| true, started + warmup, ended, f64::from(limit));
    let whole = judge(&log, |_| true, started, ended, f64::from(limit));
    server.shutdown().await;
    Ok((after_warmup, whole))
}

/// The targets: (a) and (b) achieve >= 0.97 of the allowed rate
/// with <= 1% 429s; (c) >= 0.90 with <= 2% (issue 20; it was >= 0.85, <= 5%).
fn rows(
    scenario: &str,
    weft: &Figures,
    naive: &Figures,
    min_achieved: f64,
    max_429: f64,
) -> Vec<Row> {
    let met = weft.achieved >= min_achieved && weft.share_429 <= max_429;
    vec![
        row(scenario, weft, naive)
            .target(format!(">= {min_achieved:.2}, <= {:.0}% 429s", max_429 * 100.0), met),
    ]
}

/// A scenario's row, with no target.
fn row(scenario: &str, weft: &Figures, naive: &Figures) -> Row {
    let figures = |f: &Figures| json!({ "achieved": f.achieved, "share_429": f.share_429, "requests": f.requests });
    Row::new(
        "rate limits",
        scenario,
        format!("achieved {:.3}, {:.2}% 429s", weft.achieved, weft.share_429 * 100.0),
    )
    .reference(format!("naive: {:.3}, {:.2}% 429s", naive.achieved, naive.share_429 * 100.0))
    .result(format!(
        "{} vs {} requests",
        grouped(weft.requests as f64),
        grouped(naive.requests as f64)
    ))
    .figures(json!({ "weft": figures(weft), "naive": figures(naive) }))
}

fn seconds(s: f64) -> String {
    if s >= 10.0 { format!("{s:.0} s") } else { format!("{s:.1} s") }
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let share: f64 =
        std::env::var("WEFT_BENCH_RATE_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(0.25);
    let scale = config.scale * share;
    let secs = |s: f64| Duration::from_secs_f64(s * scale);
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let mut out = Vec::new();
    let (a, b, c, warm) = (30.0 * scale, 90.0 * scale, 120.0 * scale, 30.0 * scale);
    let (a, b, c, warm) = (seconds(a), seconds(b), seconds(c), seconds(warm));
    eprintln!("  (a) stripe, {a} per client…");
    let weft = stripe(&runtime, secs(30.0), true).await?;
    let naive = stripe(&runtime, secs(30.0), false).await?;
    out.extend(rows(
        &format!("(a) Stripe test key 25 r/s, {WORKERS} workflows sharing it, {a}"),
        &weft,
        &naive,
        0.97,
        0.01,
    ));
    eprintln!("  (b) growpanel, {b} per client…");
    let weft = growpanel(&runtime, secs(90.0), true).await?;
    let naive = growpanel(&runtime, secs(90.0), false).await?;
    out.extend(rows(
        &format!("(b) GrowPanel POST 100/min, {WORKERS} workers of single upserts, {b}"),
        &weft,
        &naive,
        0.97,
        0.01,
    ));
    eprintln!("  (c) baremetrics, {c} per client…");
    let (weft, weft_whole) = baremetrics(&runtime, secs(120.0), secs(30.0), true).await?;
    let (naive, naive_whole) = baremetrics(&runtime, secs(120.0), secs(30.0), false).await?;
    out.extend(rows(
        &format!(
            "(c) Baremetrics undisclosed 20 r/s, {WORKERS} workers, after {warm} of {c} (adaptive)"
        ),
        &weft,
        &naive,
        0.90,
        0.02,
    ));
    // The whole run, its start included: the 429s of finding the limit.
    // Issue 20's target (<= 1%) is for the full 120 s; in a shorter run
    // the search is a larger share, so the row has no target there.
    let whole = format!("(c) the same over the whole {c}, the search for the limit included");
    if scale >= 1.0 {
        out.extend(rows(&whole, &weft_whole, &naive_whole, 0.90, 0.01));
    } else {
        out.push(row(&whole, &weft_whole, &naive_whole));
    }
    Ok(out)
}
