//! Hostile plugins: each misbehaviour fails only its own call, with a message
//! that names the plugin, the op and the limit, and the same process then
//! serves a normal call.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weft::connector::{AuthScheme, CallContext, ListRequest};
use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, Executor, Silent};
use weft::http::{ConnectionHttp, EgressPolicy, HttpLimits, SendOnce};
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

// What a plugin can do through `http.send`, and a vendor through its answer
// (issue 12: items 1, 14 and 21). The plugin side lives in
// plugins/hostile/src/http_abuse.rs.

/// A workflow that lists `hostile.{resource}` once, with `extra` lines in
/// the connection.
fn hostile_workflow(resource: &str, extra: &str) -> String {
    format!(
        "[workflow]\nname = \"hostile\"\n[connections.hostile]\nplugin = {:?}\ncredentials = \"env:UNUSED\"\n{extra}\n[[step]]\nid = \"s\"\nlist = \"hostile.{resource}\"\n",
        hostile_wasm().display().to_string()
    )
}

/// Points the `hostile` connection at `base_url` with the test secret.
fn hostile_at(base_url: &str) -> BTreeMap<String, ConnectionOverride> {
    BTreeMap::from([("hostile".to_owned(), ConnectionOverride { base_url: base_url.to_owned(), secret: Secret::new(SECRET) })])
}

#[tokio::test]
async fn thirty_thousand_headers_fail_the_call_not_the_process() -> TestResult {
    // Regression: a request with more than 24,576 distinct header names made
    // `HeaderMap::append` panic in the host; `weft run` exited with 101.
    let server = huge_server().await?;
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let overrides = hostile_at(&server.base_url());
    let flooded = executor.run(&workflow(files.path(), &hostile_workflow("many-headers", ""))?, &overrides, &Silent).await?;
    assert_eq!(flooded.status, Status::Failed);
    let error = flooded.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("30000 headers") && error.contains("at most 100"), "{error}");
    assert!(error.contains("hostile"), "names the plugin: {error}");

    let ok = executor.run(&workflow(files.path(), &hostile_workflow("ok", ""))?, &overrides, &Silent).await?;
    assert_eq!(ok.status, Status::Succeeded, "the process goes on: {ok:?}");
    Ok(())
}

/// A loopback vendor that echoes the request's headers: as a JSON body and
/// the Authorization header in a response header of its own.
async fn echo_server() -> TestResult<weft_sandbox::server::RunningServer> {
    let router = axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let echoed: serde_json::Map<String, serde_json::Value> =
                headers.iter().map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().into())).collect();
            let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
            ([("x-echo-authorization", authorization)], serde_json::Value::Object(echoed).to_string())
        }),
    );
    Ok(weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?)
}

#[tokio::test]
async fn a_vendor_echoing_the_credential_never_hands_it_to_the_plugin() -> TestResult {
    // Regression: the echoed key reached the plugin, and with it the page
    // file, the run store and `runs show --json`.
    let server = echo_server().await?;
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    for scheme in [AuthScheme::Bearer, AuthScheme::BasicKeyAsUser, AuthScheme::Header("x-api-key".into())] {
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            &server.base_url(),
            &[],
            Some((scheme.clone(), Secret::new(SECRET))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?);
        let records = list(&plugin, &http, "echo").await?;
        let record: serde_json::Value = serde_json::from_str(&records[0])?;
        assert_eq!(record["status"], 200, "{scheme:?}: {record}");
        let text = record.to_string();
        // The key itself, and the base64 of "key:" that Basic sends.
        let basic = "c2tfdGVzdF9ob3N0aWxlX25ldmVyX3Nob3dfbWU";
        assert!(!text.contains(SECRET) && !text.contains(basic), "{scheme:?}: {text}");
        assert!(record["body"].as_str().unwrap_or_default().contains("[redacted]"), "{scheme:?}: the echo was there, scrubbed: {text}");
        if scheme != AuthScheme::Header("x-api-key".into()) {
            let header = record["headers"].as_array().and_then(|h| h.iter().find(|pair| pair[0] == "x-echo-authorization")).cloned();
            assert!(header.is_some_and(|pair| pair[1].as_str().unwrap_or_default().ends_with("[redacted]")), "{scheme:?}: {text}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_metadata_address_is_refused_before_anything_is_sent() -> TestResult {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let summary = executor.run(&workflow(files.path(), &hostile_workflow("http", ""))?, &hostile_at("http://169.254.169.254"), &Silent).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("169.254.169.254 is link-local") && error.contains("allow_private_network"), "{error}");
    assert_eq!(summary.connections["hostile"].requests, 0, "{:?}", summary.connections);
    assert_eq!(summary.connections["hostile"].denied, 1);
    Ok(())
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_the_connection_allows_private_networks() -> TestResult {
    // A public-looking base URL whose name resolves to 127.0.0.1, as a
    // rebinding or a hostile DNS answer would: judged by its address.
    let server = huge_server().await?;
    let port = server.base_url().rsplit(':').next().unwrap_or_default().to_owned();
    let clients = weft::http::HttpClients::with_pinned_names(&[("localhost.example", "127.0.0.1".parse()?)]);
    let base_url = format!("http://localhost.example:{port}");
    let connect = |egress: Option<EgressPolicy>| -> TestResult<Arc<ConnectionHttp>> {
        let http = ConnectionHttp::new(clients.clone(), &base_url, &[], Some((AuthScheme::Bearer, Secret::new(SECRET))), HttpLimits::default(), Arc::new(SendOnce))?;
        Ok(Arc::new(match egress {
            Some(egress) => http.with_egress(egress),
            None => http,
        }))
    };
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;

    let error = list(&plugin, &connect(None)?, "http").await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("localhost.example resolves to 127.0.0.1, which is loopback"), "{error}");
    assert!(error.contains("allow_private_network"), "{error}");

    let records = list(&plugin, &connect(Some(EgressPolicy::Any))?, "http").await?;
    let record: serde_json::Value = serde_json::from_str(&records[0])?;
    assert_eq!(record["status"], 404, "allowed, it reaches the server (which has no /v1/customers): {record}");
    Ok(())
}

#[tokio::test]
async fn allow_private_network_in_the_workflow_opens_a_non_public_address() -> TestResult {
    // 0.0.0.0 is "unspecified", refused for a connection; on Linux it
    // reaches this machine, so it stands in for a private address here.
    let server = huge_server().await?;
    let port = server.base_url().rsplit(':').next().unwrap_or_default().to_owned();
    let base_url = format!("http://0.0.0.0:{port}");
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);

    let refused = executor.run(&workflow(files.path(), &hostile_workflow("huge", ""))?, &hostile_at(&base_url), &Silent).await?;
    assert_eq!(refused.status, Status::Failed);
    let error = refused.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("0.0.0.0 is unspecified"), "{error}");

    let allowed = executor.run(&workflow(files.path(), &hostile_workflow("huge", "allow_private_network = true"))?, &hostile_at(&base_url), &Silent).await?;
    assert_eq!(allowed.status, Status::Succeeded, "{allowed:?}");
    assert_eq!(allowed.connections["hostile"].requests, 1);
    Ok(())
}
