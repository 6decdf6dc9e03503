//! Rate-limit utilisation: weft's host-side limiter against a naive client
//! that only retries on 429, side by side in one run, against emulators that
//! enforce the vendor's limit.
//!
//! `cargo bench -p weft --bench rate_limits` prints, per scenario, the
//! achieved rate of successful requests over the allowed rate and the share
//! of requests answered 429.
//!
//! (a) Stripe test mode, 25 reads/s per key, 8 concurrent workflows sharing
//!     one key, each reading pages of customers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft::connector::{AuthScheme, CallContext, ListRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits};
use weft::limiter::{LimitedPolicy, LimiterRegistry, RetryPolicy};
use weft::runtime::{Runtime, RuntimeConfig};
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

const WORKERS: usize = 8;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    throttled: AtomicU64,
}

struct Figures {
    achieved: f64,
    share_429: f64,
}

impl Tally {
    fn figures(&self, elapsed: Duration, allowed: f64) -> Figures {
        let ok = self.ok.load(Ordering::Relaxed) as f64;
        let throttled = self.throttled.load(Ordering::Relaxed) as f64;
        Figures { achieved: ok / elapsed.as_secs_f64() / allowed, share_429: throttled / (ok + throttled).max(1.0) }
    }
}

async fn stripe_emulator(limit: u32) -> Result<(StripeEmulator, weft_sandbox::server::RunningServer), Box<dyn std::error::Error>> {
    let emulator = StripeEmulator::new(StripeConfig { seed: 500, rate_limit: Some((limit, Duration::from_secs(1))), ..StripeConfig::default() });
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server))
}

/// 8 workflows, each its own connection, sharing one key through the
/// registry, listing pages of 10 through the wasm connector.
async fn weft_stripe(duration: Duration) -> Result<Figures, Box<dyn std::error::Error>> {
    let (emulator, server) = stripe_emulator(25).await?;
    let runtime = Runtime::new(RuntimeConfig::default())?;
    let plugin = Arc::new(runtime.load("stripe", weft::builtin::component("stripe").ok_or("built in")?).await?);
    let registry = Arc::new(LimiterRegistry::default());
    let secret = Secret::new(SANDBOX_API_KEY);
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let limiter = registry.limiter("stripe", Some(&secret), &plugin.manifest().rate_limits, &[]);
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            &server.base_url(),
            &[],
            Some((AuthScheme::BasicKeyAsUser, secret.clone())),
            HttpLimits::default(),
            Arc::new(LimitedPolicy::new(limiter, RetryPolicy::default())),
        )?);
        let (plugin, tally) = (plugin.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
            let mut cursor = None;
            while started.elapsed() < duration {
                let request = ListRequest { resource: "customers".into(), cursor: cursor.take(), page_size: 10, filter: None };
                if let Ok(page) = plugin.list(&http, ctx.clone(), request).await {
                    cursor = page.next_cursor;
                }
            }
            let stats = http.stats().snapshot();
            tally.throttled.fetch_add(stats.throttled, Ordering::Relaxed);
            tally.ok.fetch_add(stats.requests - stats.throttled, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = started.elapsed();
    let figures = tally.figures(elapsed, 25.0);
    assert_eq!(emulator.limited_count(), tally.throttled.load(Ordering::Relaxed));
    server.shutdown().await;
    Ok(figures)
}

/// The same load from a client that sends as fast as it can and retries a
/// 429 after a short fixed pause.
async fn naive_stripe(duration: Duration) -> Result<Figures, Box<dyn std::error::Error>> {
    let (_emulator, server) = stripe_emulator(25).await?;
    let client = reqwest::Client::new();
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let (client, tally, url) = (client.clone(), tally.clone(), format!("{}/v1/customers?limit=10", server.base_url()));
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < duration {
                match client.get(&url).basic_auth(SANDBOX_API_KEY, Some("")).send().await {
                    Ok(r) if r.status().as_u16() == 429 => {
                        tally.throttled.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Ok(r) => {
                        let _ = r.bytes().await;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let figures = tally.figures(started.elapsed(), 25.0);
    server.shutdown().await;
    Ok(figures)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds: u64 = std::env::var("WEFT_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let duration = Duration::from_secs(seconds);
    println!("rate_limits ({seconds} s per client per scenario)");
    println!("  {:<58} {:>10} {:>10}", "scenario", "achieved", "429 share");
    let weft = weft_stripe(duration).await?;
    let naive = naive_stripe(duration).await?;
    println!("  {:<58} {:>10.3} {:>9.2}%", "(a) stripe 25 r/s, 8 workflows, one key — weft", weft.achieved, weft.share_429 * 100.0);
    println!("  {:<58} {:>10.3} {:>9.2}%", "(a) stripe 25 r/s, 8 workflows, one key — naive retry-on-429", naive.achieved, naive.share_429 * 100.0);
    Ok(())
}
