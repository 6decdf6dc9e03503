//! Host-side pacing and retries against emulators that enforce limits and
//! inject faults.

use std::sync::Arc;
use std::time::Duration;

use weft::connector::{AuthScheme, MethodClass, UpsertAction, UpsertRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits};
use weft::limiter::{LimitOverride, LimitedPolicy, LimiterRegistry, RetryPolicy};
use weft::runtime::SandboxLimits;
use weft::store::Status;
use weft_sandbox::limits::FaultConfig;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::support::{Harness, TestResult, runtime};

async fn stripe(config: StripeConfig) -> TestResult<(StripeEmulator, weft_sandbox::server::RunningServer)> {
    let emulator = StripeEmulator::new(config);
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_upserts_through_one_key_never_exceed_the_enforced_limit() -> TestResult {
    let (emulator, server) = stripe(StripeConfig { rate_limit: Some((50, Duration::from_secs(1))), ..StripeConfig::default() }).await?;
    let runtime = runtime(SandboxLimits::default())?;
    let plugin = Arc::new(runtime.load("stripe", weft::builtin::component("stripe").ok_or("built in")?).await?);
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
        let limiter = registry.limiter("stripe", Some(&secret), &plugin.manifest().rate_limits, &overrides);
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
        weft::executor::ConnectionOverride { base_url: server.base_url(), secret: Secret::new(SANDBOX_API_KEY) },
    );
    let summary = harness.run(&text, &overrides).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.read, 250);
    let stats = summary.connections["stripe"];
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
    let executor = weft::executor::Executor::new(runtime(SandboxLimits::default())?, weft::store::RunStore::open(state.path())?)
        .with_retry(RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(50) });
    let text = "[workflow]\nname = \"down\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n";
    let workflow = super::support::workflow(harness.files.path(), text)?;
    let overrides = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride { base_url: server.base_url(), secret: Secret::new(SANDBOX_API_KEY) },
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
    let (_emulator, server) = stripe(StripeConfig { seed: 5, faults: FaultConfig { rate_500: 1.0, ..FaultConfig::default() }, ..StripeConfig::default() }).await?;
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let limits = SandboxLimits { call_timeout: Duration::from_secs(2), ..SandboxLimits::default() };
    let executor = weft::executor::Executor::new(runtime(limits)?, weft::store::RunStore::open(state.path())?)
        .with_retry(RetryPolicy { max_attempts: 10, base_delay: Duration::from_millis(400), max_delay: Duration::from_secs(5) });
    let text = "[workflow]\nname = \"deadline\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n";
    let workflow = super::support::workflow(files.path(), text)?;
    let overrides = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride { base_url: server.base_url(), secret: Secret::new(SANDBOX_API_KEY) },
    )]);
    let started = std::time::Instant::now();
    let summary = executor.run(&workflow, &overrides, &weft::executor::Silent).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("HTTP 500") && error.contains("attempts"), "the vendor's answer, not a deadline trap: {error}");
    assert!(summary.connections["stripe"].requests < 10, "{:?}", summary.connections);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    Ok(())
}
