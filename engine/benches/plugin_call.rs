//! What the sandbox costs: loading a component from the on-disk cache and
//! from a cache miss, and a warm `list` of one 100-record Stripe page with
//! HTTP stubbed, next to a native parse of the same body.
//!
//! `cargo bench -p weft --bench plugin_call` prints medians and p99s; the
//! native figure is measured in the same run so the ratio survives a noisy
//! machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weft::connector::{AuthScheme, CallContext, ListRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits, Response, SendOnce};
use weft::runtime::{Runtime, RuntimeConfig};

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 - 1.0) * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One real page from the Stripe emulator: 100 seeded customers.
async fn stripe_page() -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions { seed: 100, ..Default::default() }).await?;
    let body = reqwest::Client::new()
        .get(format!("{}/v1/customers?limit=100", sandbox.stripe.base_url()))
        .bearer_auth(weft_sandbox::stripe::SANDBOX_API_KEY)
        .send()
        .await?
        .bytes()
        .await?;
    sandbox.shutdown().await;
    Ok(body.to_vec())
}

/// What a native client does with the same body: parse the envelope and
/// keep each record as its own JSON text.
fn native_parse(body: &[u8]) -> usize {
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        data: Vec<&'a serde_json::value::RawValue>,
        has_more: bool,
    }
    let page: Envelope<'_> = serde_json::from_slice(body).expect("the emulator's page parses");
    let records: Vec<String> = page.data.iter().map(|r| r.get().to_owned()).collect();
    records.len() + usize::from(page.has_more)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let wasm = weft::builtin::component("stripe").ok_or("stripe is built in")?;
    let cache = tempfile::tempdir()?;

    // Cache miss: compile.
    let mut miss = Vec::new();
    for _ in 0..5 {
        let runtime = Runtime::new(RuntimeConfig { cache_dir: None, ..Default::default() })?;
        let plugin = runtime.load("stripe", wasm).await?;
        miss.push(plugin.load_info().compile_or_load);
    }
    // Cache hit: deserialize the artifact written by the first load.
    let runtime = Runtime::new(RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..Default::default() })?;
    runtime.load("stripe", wasm).await?;
    let mut hit = Vec::new();
    let mut hit_total = Vec::new();
    for _ in 0..50 {
        let plugin = runtime.load("stripe", wasm).await?;
        assert!(plugin.load_info().cache_hit);
        hit.push(plugin.load_info().compile_or_load);
        hit_total.push(plugin.load_info().total);
    }

    let body = stripe_page().await?;
    let canned = body.clone();
    let http = Arc::new(
        ConnectionHttp::new(
            weft::http::shared_client(),
            "https://api.stripe.com",
            &[],
            Some((AuthScheme::BasicKeyAsUser, Secret::new("sk_test_bench"))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?
        .with_canned_responses(move |_, _| Response { status: 200, headers: vec![], body: canned.clone() }),
    );
    let plugin = runtime.load("stripe", wasm).await?;
    let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
    let request = || ListRequest { resource: "customers".into(), cursor: None, page_size: 100, filter: None };

    let rounds = 2000;
    for _ in 0..200 {
        plugin.list(&http, ctx.clone(), request()).await?;
        std::hint::black_box(native_parse(&body));
    }
    let mut call = Vec::with_capacity(rounds);
    let mut native = Vec::with_capacity(rounds);
    // Interleaved, so both see the same machine conditions.
    for _ in 0..rounds {
        let started = Instant::now();
        let page = plugin.list(&http, ctx.clone(), request()).await?;
        call.push(started.elapsed());
        assert_eq!(page.records.len(), 100);
        let started = Instant::now();
        std::hint::black_box(native_parse(std::hint::black_box(&body)));
        native.push(started.elapsed());
    }

    let (call50, call99) = (percentile(&mut call, 0.5), percentile(&mut call, 0.99));
    let (nat50, nat99) = (percentile(&mut native, 0.5), percentile(&mut native, 0.99));
    println!("plugin_call (stripe connector, {} byte page of 100 customers)", body.len());
    println!("  compile (cache miss)           median {:>9.1} ms", micros(percentile(&mut miss, 0.5)) / 1000.0);
    println!("  load from disk cache           median {:>9.1} µs", micros(percentile(&mut hit, 0.5)));
    println!("  load from cache + describe     median {:>9.1} µs", micros(percentile(&mut hit_total, 0.5)));
    println!("  list, fresh instance per call  p50 {:>9.1} µs   p99 {:>9.1} µs", micros(call50), micros(call99));
    println!("  native parse of the same body  p50 {:>9.1} µs   p99 {:>9.1} µs", micros(nat50), micros(nat99));
    println!("  overhead over native (p50)         {:>9.1} µs   ratio {:.2}x", micros(call50) - micros(nat50), call50.as_secs_f64() / nat50.as_secs_f64());
    Ok(())
}
