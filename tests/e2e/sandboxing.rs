//! Hostile plugins: each misbehaviour fails only its own call, with a message
//! that names the plugin, the op and the limit, and the same process then
//! serves a normal call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weft::connector::{AuthScheme, CallContext, ListRequest};
use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, Executor, Silent};
use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
use weft::runtime::{Plugin, PluginConnection, RuntimeError, SandboxLimits};
use weft::store::{RunStore, Status};

use super::support::{TestResult, hostile_wasm, runtime, workflow};

const SECRET: &str = "sk_test_hostile_never_show_me";

fn limits() -> SandboxLimits {
    SandboxLimits { cpu_time: Duration::from_millis(500), call_timeout: Duration::from_secs(20), ..SandboxLimits::default() }
}

/// A loopback server with a `/huge` route answering 2 MiB.
async fn huge_server() -> TestResult<weft_sandbox::server::RunningServer> {
    let router = axum::Router::new().route("/huge", axum::routing::get(|| async { vec![b'x'; 2 << 20] }));
    Ok(weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?)
}

fn connection(base_url: &str) -> TestResult<Arc<ConnectionHttp>> {
    Ok(Arc::new(ConnectionHttp::new(
        weft::http::shared_client(),
        base_url,
        &[],
        Some((AuthScheme::Bearer, Secret::new(SECRET))),
        HttpLimits { max_response_bytes: 1 << 20, ..HttpLimits::default() },
        Arc::new(SendOnce),
    )?))
}

async fn list(plugin: &Plugin, http: &Arc<ConnectionHttp>, resource: &str) -> Result<Vec<String>, RuntimeError> {
    let ctx = CallContext { base_url: http.base_url(), settings: vec![("mode".into(), "test".into())] };
    let request = ListRequest { resource: resource.into(), cursor: None, page_size: 10, filter: None };
    plugin.list(http, ctx, request).await.map(|page| page.records)
}

/// Runs the hostile `resource`, expects it to fail with all of `expected`
/// in the message, then checks a normal call in the same process works.
async fn fails_alone(resource: &str, expected: &[&str]) -> TestResult {
    let server = huge_server().await?;
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection(&server.base_url())?;

    let error = match list(&plugin, &http, resource).await {
        Ok(records) => panic!("{resource}: expected a failure, got {records:?}"),
        Err(e) => e.to_string(),
    };
    for needle in expected {
        assert!(error.contains(needle), "{resource}: {error:?} does not mention {needle:?}");
    }
    assert!(error.contains("list"), "{error}: names the op");
    assert!(!error.contains(SECRET), "{error}");

    let records = list(&plugin, &http, "ok").await?;
    assert_eq!(records.len(), 2, "a normal call after {resource} works");
    Ok(())
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_the_cpu_time_limit() -> TestResult {
    fails_alone("spin", &["CPU time limit", "hostile"]).await
}

#[tokio::test]
async fn a_1_gib_allocation_is_stopped_at_the_memory_limit() -> TestResult {
    fails_alone("alloc", &["memory limit of 64 MiB"]).await
}

#[tokio::test]
async fn deep_recursion_is_stopped_at_the_stack_limit() -> TestResult {
    fails_alone("recurse", &["stack"]).await
}

#[tokio::test]
async fn disallowed_host_fails_before_anything_is_sent() -> TestResult {
    fails_alone("forbidden-host", &["not an allowed host", "203.0.113.7"]).await
}

#[tokio::test]
async fn a_huge_response_is_refused_at_the_size_cap() -> TestResult {
    fails_alone("huge", &["1048576 bytes"]).await
}

#[tokio::test]
async fn a_plugin_sees_no_environment_files_args_or_sockets() -> TestResult {
    // SAFETY of the test: set before any thread reads the environment is not
    // guaranteed in a multi-threaded test binary, so only read it back here.
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let records = list(&plugin, &http, "snoop").await?;
    let seen: serde_json::Value = serde_json::from_str(&records[0])?;
    assert_eq!(seen["env"], serde_json::json!([]), "{seen}");
    assert!(seen["args"].as_array().is_some_and(|a| a.len() <= 1), "{seen}");
    for capability in ["file", "dir", "tcp"] {
        let text = seen[capability].as_str().unwrap_or_default();
        assert!(!text.contains("root:"), "{capability}: {text}");
        assert!(text.to_lowercase().contains("error") || text.to_lowercase().contains("denied") || text.to_lowercase().contains("not"), "{capability} must fail: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn the_plugin_context_never_carries_the_credential() -> TestResult {
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let records = list(&plugin, &http, "echo-context").await?;
    assert!(records[0].contains("127.0.0.1:9"), "{}", records[0]);
    assert!(!records[0].contains(SECRET));
    Ok(())
}

#[tokio::test]
async fn a_trapped_step_fails_its_run_and_the_next_run_in_the_process_succeeds() -> TestResult {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let overrides = BTreeMap::from([(
        "hostile".to_owned(),
        ConnectionOverride { base_url: "http://127.0.0.1:9".into(), secret: Secret::new(SECRET) },
    )]);
    let text = |resource: &str| {
        format!(
            "[workflow]\nname = \"hostile\"\n[connections.hostile]\nplugin = {:?}\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"s\"\nlist = \"hostile.{resource}\"\n",
            hostile_wasm().display().to_string()
        )
    };
    let spin = executor.run(&workflow(files.path(), &text("spin"))?, &overrides, &Silent).await?;
    assert_eq!(spin.status, Status::Failed);
    let error = spin.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("CPU time limit"), "{error}");

    let ok = executor.run(&workflow(files.path(), &text("ok"))?, &overrides, &Silent).await?;
    assert_eq!(ok.status, Status::Succeeded, "{ok:?}");
    assert_eq!(ok.steps[0].counts.read, 2);
    Ok(())
}

/// How many calls the instance that served this one had served: 1 means a
/// fresh instance.
async fn calls_seen(connection: &PluginConnection) -> TestResult<u64> {
    let ctx = CallContext { base_url: connection.http().base_url(), settings: vec![] };
    let request = ListRequest { resource: "calls".into(), cursor: None, page_size: 10, filter: None };
    let page = connection.list(ctx, request).await?;
    let record: serde_json::Value = serde_json::from_str(&page.records[0])?;
    Ok(record["calls"].as_u64().unwrap_or(0))
}

async fn hostile_connection() -> TestResult<(weft_sandbox::server::RunningServer, Arc<Plugin>)> {
    let server = huge_server().await?;
    let runtime = runtime(limits())?;
    let plugin = Arc::new(runtime.load_file(hostile_wasm()).await?);
    Ok((server, plugin))
}

#[tokio::test]
async fn a_warm_instance_serves_the_next_call_of_its_connection() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let connection = PluginConnection::new(plugin.clone(), connection(&server.base_url())?);
    assert_eq!(calls_seen(&connection).await?, 1);
    assert_eq!(calls_seen(&connection).await?, 2, "the second call reuses the first call's instance");
    // Plugin's own calls still get a fresh instance every time.
    let http = connection.http().clone();
    let fresh = list(&plugin, &http, "calls").await?;
    assert_eq!(fresh, vec![r#"{"calls":1}"#.to_owned()]);
    Ok(())
}

#[tokio::test]
async fn a_warm_instance_is_never_shared_between_connections() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let first = PluginConnection::new(plugin.clone(), connection(&server.base_url())?);
    let second = PluginConnection::new(plugin, connection(&server.base_url())?);
    assert_eq!(calls_seen(&first).await?, 1);
    assert_eq!(calls_seen(&first).await?, 2);
    assert_eq!(calls_seen(&second).await?, 1, "another connection starts from a fresh instance");
    Ok(())
}

#[tokio::test]
async fn a_trapped_instance_is_discarded_and_a_typed_error_is_not() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let connection = PluginConnection::new(plugin, connection(&server.base_url())?);
    let ctx = CallContext { base_url: connection.http().base_url(), settings: vec![] };
    let request = |resource: &str| ListRequest { resource: resource.into(), cursor: None, page_size: 10, filter: None };
    assert_eq!(calls_seen(&connection).await?, 1);
    // A typed error is a normal return: the instance stays warm.
    let error = connection.list(ctx.clone(), request("forbidden-host")).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("not an allowed host"), "{error}");
    assert_eq!(calls_seen(&connection).await?, 3);
    // A trap leaves the instance in whatever state it stopped in: it goes.
    let error = connection.list(ctx, request("spin")).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("CPU time limit"), "{error}");
    assert_eq!(calls_seen(&connection).await?, 1, "a fresh instance after the trap");
    Ok(())
}
