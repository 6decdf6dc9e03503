//! Host-side pacing and retries against emulators that enforce limits and
//! inject faults.

use std::sync::Arc;
use std::time::Duration;

use weft::connector::{AuthScheme, MethodClass, UpsertAction, UpsertRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits};
use weft::limiter::{LimitOverride, LimitedPolicy, LimiterRegistry, Publisher, RetryPolicy};
use weft::runtime::InstanceLimits;
use weft::store::Status;
use weft_sandbox::limits::FaultConfig;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::support::{Harness, TestResult, runtime};

async fn stripe(
    config: StripeConfig,
) -> TestResult<(StripeEmulator, weft_sandbox::server::RunningServer)> {
    let emulator = StripeEmulator::new(config);
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_upserts_through_one_key_never_exceed_the_enforced_limit()
-> TestResult {
    let (emulator, server) = stripe(StripeConfig {
        rate_limit: Some((50, Duration::from_secs(1))),
        ..StripeConfig::default()
    })
    .await?;
    let runtime = runtime(InstanceLimits::default())?;
    let plugin = Arc::new(
        runtime.load("stripe", weft::builtin::component("stripe").ok_or("built in")?).await?,
    );
    let registry = LimiterRegistry::default();
    let secret = Secret::new(SANDBOX_API_KEY);
    let overrides = [
        LimitOverride { class: MethodClass::Read, per_second: 50.0 },
        LimitOverride { class: MethodClass::Write, per_second: 50.0 },
    ];

    let mut tasks = Vec::new();
    for i in 0..200 {
        // Each task is its own connection, as separate runs would be; the
        // registry gives them the one limiter of their key.
        let limiter = registry.limiter(
            "stripe",
            Publisher::BuiltIn,
            Some(&secret),
            &plugin.manifest().rate_limits,
            &overrides,
        );
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            &server.base_url(),
            &[],
            Some((AuthScheme::BasicKeyAsUser, secret.clone())),
            HttpLimits::default(),
            Arc::new(LimitedPolicy::new(limiter, RetryPolicy::default())),
        )?);
        let plugin = plugin.clone();
        tasks.push(tokio::spawn(async move {
            let ctx = weft::connector::CallContext { base_url: http.base_url(), settings: vec![] };
            let request = UpsertRequest {
                resource: "customers".into(),
                record: format!(r#"{{"email":"user{i}@example.com","name":"User {i}"}}"#),
                idempotency_key: format!("limits-test-{i}"),
            };
            let outcome = plugin.upsert(&http, ctx, request).await;
            (outcome.map(|o| o.action).map_err(|e| e.to_string()), http.stats().snapshot())
        }));
    }
    let mut throttled = 0;
    for task in tasks {
        let (outcome, stats) = task.await?;
        assert_eq!(outcome, Ok(UpsertAction::Created));
        throttled += stats.throttled;
    }
    assert_eq!(emulator.limited_count(), 0, "the emulator never had to refuse a request");
    assert_eq!(throttled, 0);
    assert_eq!(emulator.customer_count(), 200);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn reads_are_retried_through_injected_server_errors() -> TestResult {
    let (emulator, server) = stripe(StripeConfig {
        seed: 250,
        rng_seed: 7,
        faults: FaultConfig { rate_500: 0.3, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await?;
    let harness = Harness::new()?;
    let text = format!(
        "[workflow]\nname = \"flaky\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\nbase_url = {:?}\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\npage_size = 25\n",
        server.base_url()
    );
    let mut overrides = std::collections::BTreeMap::new();
    overrides.insert(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride {
            base_url: server.base_url(),
            secret: Secret::new(SANDBOX_API_KEY),
        },
    );
    let summary = harness.run(&text, &overrides).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.read, 250);
    let stats = &summary.connections["stripe"];
    assert!(stats.retries > 0, "{stats:?}");
    assert_eq!(stats.requests, 10 + stats.retries);
    assert!(emulator.requests().count_where(|r| r.status == 500) > 0);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_final_error_says_how_many_attempts_were_made() -> TestResult {
    let (_emulator, server) = stripe(StripeConfig {
        seed: 5,
        faults: FaultConfig { rate_500: 1.0, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await?;
    let harness = Harness::new()?;
    let state = tempfile::tempdir()?;
    let executor = weft::executor::Executor::new(
        runtime(InstanceLimits::default())?,
        weft::store::RunStore::open(state.path())?,
    )
    .with_retry(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    });
    let text = "[workflow]\nname = \"down\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n";
    let workflow = super::support::workflow(harness.files.path(), text)?;
    let overrides = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride {
            base_url: server.base_url(),
            secret: Secret::new(SANDBOX_API_KEY),
        },
    )]);
    let summary = executor.run(&workflow, &overrides, &weft::executor::Silent).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("HTTP 500"), "{error}");
    assert!(error.contains("after 3 attempts"), "{error}");
    assert_eq!(summary.connections["stripe"].requests, 3);
    Ok(())
}

#[tokio::test]
async fn retries_stop_short_of_the_call_deadline() -> TestResult {
    let (_emulator, server) = stripe(StripeConfig {
        seed: 5,
        faults: FaultConfig { rate_500: 1.0, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await?;
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let limits =
        InstanceLimits { call_timeout: Duration::from_secs(2), ..InstanceLimits::default() };
    let executor =
        weft::executor::Executor::new(runtime(limits)?, weft::store::RunStore::open(state.path())?)
            .with_retry(RetryPolicy {
                max_attempts: 10,
                base_delay: Duration::from_millis(400),
                max_delay: Duration::from_secs(5),
            });
    let text = "[workflow]\nname = \"deadline\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n";
    let workflow = super::support::workflow(files.path(), text)?;
    let overrides = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride {
            base_url: server.base_url(),
            secret: Secret::new(SANDBOX_API_KEY),
        },
    )]);
    let started = std::time::Instant::now();
    let summary = executor.run(&workflow, &overrides, &weft::executor::Silent).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("HTTP 500") && error.contains("attempts"),
        "the vendor's answer, not a deadline trap: {error}"
    );
    assert!(summary.connections["stripe"].requests < 10, "{:?}", summary.connections);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    Ok(())
}

// A plugin must not set its own request volume, nor a vendor hold a call
// for every retry (issue 12: items 11 and 13). The plugin side lives in
// plugins/hostile/src/http_abuse.rs; its manifest publishes 1,000,000 r/s.

/// A loopback vendor that answers `/flood` and counts what it got.
async fn counting_server()
-> TestResult<(Arc<std::sync::atomic::AtomicUsize>, weft_sandbox::server::RunningServer)> {
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    let router = axum::Router::new().route(
        "/flood",
        axum::routing::get(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { "{}" }
        }),
    );
    Ok((count, weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?))
}

fn flood_workflow(extra: &str) -> String {
    format!(
        "[workflow]\nname = \"flood\"\n[connections.hostile]\nplugin = {:?}\ncredentials = \"env:UNUSED\"\n{extra}\n[[step]]\nid = \"s\"\nlist = \"hostile.flood\"\n",
        super::support::hostile_wasm().display().to_string()
    )
}

async fn run_flood(
    extra: &str,
    call_timeout: Duration,
    base_url: &str,
) -> TestResult<weft::executor::RunSummary> {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let limits = InstanceLimits { call_timeout, ..InstanceLimits::default() };
    let executor =
        weft::executor::Executor::new(runtime(limits)?, weft::store::RunStore::open(state.path())?);
    let workflow = super::support::workflow(files.path(), &flood_workflow(extra))?;
    let overrides = std::collections::BTreeMap::from([(
        "hostile".to_owned(),
        weft::executor::ConnectionOverride {
            base_url: base_url.to_owned(),
            secret: Secret::new("sk_test_flood"),
        },
    )]);
    Ok(executor.run(&workflow, &overrides, &weft::executor::Silent).await?)
}

#[tokio::test]
async fn a_plugin_publishing_a_million_requests_a_second_is_held_to_the_host_ceiling() -> TestResult
{
    // Regression: one `list` call sent 22,849 requests in 20 s because the
    // plugin published 1e6 r/s and the host took it at its word.
    let (count, server) = counting_server().await?;
    let started = std::time::Instant::now();
    let summary = run_flood("", Duration::from_secs(2), &server.base_url()).await?;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(summary.status, Status::Failed, "the flood ends at the call deadline: {summary:?}");
    let sent = count.load(std::sync::atomic::Ordering::SeqCst);
    let ceiling = weft::limiter::THIRD_PARTY_CEILING;
    assert!(
        sent as f64 <= ceiling * elapsed + 2.0,
        "{sent} requests in {elapsed:.1} s; the ceiling is {ceiling} r/s"
    );
    assert!(sent >= 5, "the plugin's requests still go out: {sent}");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_call_sends_no_more_than_its_request_budget() -> TestResult {
    let (count, server) = counting_server().await?;
    // The workflow raises the rate explicitly; the budget still holds, at
    // its default and as the connection sets it.
    let summary =
        run_flood("rate_limit = \"100000/s\"", Duration::from_secs(60), &server.base_url()).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    let budget = weft::http::DEFAULT_REQUESTS_PER_CALL;
    assert!(
        error.contains(&format!("{budget} requests went through"))
            && error.contains(&format!("budget of {budget} requests")),
        "{error}"
    );
    assert_eq!(count.swap(0, std::sync::atomic::Ordering::SeqCst), budget as usize);

    let summary = run_flood(
        "rate_limit = \"100000/s\"\nmax_requests_per_call = 50",
        Duration::from_secs(60),
        &server.base_url(),
    )
    .await?;
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("50 requests went through") && error.contains("max_requests_per_call"),
        "{error}"
    );
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 50);
    server.shutdown().await;
    Ok(())
}

/// A loopback vendor that answers every request with headers and then one
/// byte of its body every 100 ms, for at most 3 s; counts the requests.
async fn trickling_server() -> TestResult<(Arc<std::sync::atomic::AtomicUsize>, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("http://{}", listener.local_addr()?);
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n").await;
                for _ in 0..30 {
                    if stream.write_all(b" ").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    Ok((count, base_url))
}

#[tokio::test]
async fn a_trickling_vendor_gets_one_more_try_not_four() -> TestResult {
    // Regression: a vendor trickling its answer held a call for 5 attempts
    // of the whole request timeout (~150 s at the default 30 s).
    let (count, base_url) = trickling_server().await?;
    let runtime = runtime(InstanceLimits::default())?;
    let plugin = runtime.load_file(super::support::hostile_wasm()).await?;
    let limiter = Arc::new(weft::limiter::Limiter::new(Publisher::ThirdParty, &[], None, &[]));
    let http = Arc::new(ConnectionHttp::new(
        weft::http::shared_client(),
        &base_url,
        &[],
        None,
        HttpLimits { timeout: Duration::from_millis(300), ..HttpLimits::default() },
        Arc::new(LimitedPolicy::new(
            limiter,
            RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
            },
        )),
    )?);
    let ctx = weft::connector::CallContext { base_url: http.base_url(), settings: vec![] };
    let request = weft::connector::ListRequest {
        resource: "http".into(),
        cursor: None,
        page_size: 10,
        filter: None,
    };
    let started = std::time::Instant::now();
    let error =
        plugin.list(&http, ctx, request).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("timed out") && error.contains("after 2 attempts"), "{error}");
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "one retry of the timeout, not four"
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    Ok(())
}
