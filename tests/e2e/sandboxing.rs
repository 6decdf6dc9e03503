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
use weft::runtime::{InstanceLimits, Plugin, PluginConnection, RuntimeError};
use weft::store::{RunStore, Status};

use super::support::{TestResult, hostile_wasm, runtime, workflow};

const SECRET: &str = "sk_test_hostile_never_show_me";

fn limits() -> InstanceLimits {
    InstanceLimits {
        cpu_time: Duration::from_millis(500),
        call_timeout: Duration::from_secs(20),
        ..InstanceLimits::default()
    }
}

/// A loopback server with a `/huge` route answering 2 MiB.
async fn huge_server() -> TestResult<weft_sandbox::server::RunningServer> {
    let router =
        axum::Router::new().route("/huge", axum::routing::get(|| async { vec![b'x'; 2 << 20] }));
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

async fn list(
    plugin: &Plugin,
    http: &Arc<ConnectionHttp>,
    resource: &str,
) -> Result<Vec<String>, RuntimeError> {
    let ctx =
        CallContext { base_url: http.base_url(), settings: vec![("mode".into(), "test".into())] };
    let request =
        ListRequest { resource: resource.into(), cursor: None, page_size: 10, filter: None };
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
        assert!(
            text.to_lowercase().contains("error")
                || text.to_lowercase().contains("denied")
                || text.to_lowercase().contains("not"),
            "{capability} must fail: {text}"
        );
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
    let request =
        ListRequest { resource: "calls".into(), cursor: None, page_size: 10, filter: None };
    let page = connection.list(request).await?;
    let record: serde_json::Value = serde_json::from_str(&page.records[0])?;
    Ok(record["calls"].as_u64().unwrap_or(0))
}

/// `plugin` on the connection whose HTTP policy is `http`, its calls given
/// the policy's base URL and no settings.
fn warm(plugin: Arc<Plugin>, http: Arc<ConnectionHttp>) -> PluginConnection {
    let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
    PluginConnection::new(plugin, http, ctx)
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
    let connection = warm(plugin.clone(), connection(&server.base_url())?);
    assert_eq!(calls_seen(&connection).await?, 1);
    assert_eq!(
        calls_seen(&connection).await?,
        2,
        "the second call reuses the first call's instance"
    );
    // Plugin's own calls still get a fresh instance every time.
    let http = connection.http().clone();
    let fresh = list(&plugin, &http, "calls").await?;
    let fresh: serde_json::Value = serde_json::from_str(&fresh[0])?;
    assert_eq!(fresh["calls"], 1, "{fresh}");
    Ok(())
}

/// Memory slots keep their pages mapped between instances (the pool's
/// keep-resident setting): what one instance wrote must never reach the
/// next instance in the slot, the first 2 MiB (reset page by page) or
/// beyond.
#[tokio::test]
async fn a_fresh_instance_never_sees_what_the_last_one_in_its_slot_wrote() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let left = |records: Vec<String>| -> TestResult<u64> {
        let record: serde_json::Value = serde_json::from_str(&records[0])?;
        record["left"].as_u64().ok_or_else(|| format!("no count: {record}").into())
    };
    // The marking is real: a warm instance finds its own.
    let kept = warm(plugin.clone(), connection(&server.base_url())?);
    let request =
        || ListRequest { resource: "residue".into(), cursor: None, page_size: 10, filter: None };
    assert_eq!(left(kept.list(request()).await?.records)?, 0);
    assert_eq!(left(kept.list(request()).await?.records)?, 10 << 20);
    drop(kept);
    let http = connection(&server.base_url())?;
    for call in 1..=5 {
        let records = list(&plugin, &http, "residue").await?;
        assert_eq!(left(records)?, 0, "fresh call {call} found bytes an earlier instance wrote");
    }
    Ok(())
}

#[tokio::test]
async fn an_instance_starting_above_8_mib_is_still_kept_warm() -> TestResult {
    // Regression (issue 17): warm reuse judged memory from zero, so an
    // instance starting with more than 8 MiB (a Python or JS runtime, the
    // hostile plugin's 10 MiB ballast) was never kept: every call paid for
    // a fresh instance.
    let (server, plugin) = hostile_connection().await?;
    let connection = warm(plugin, connection(&server.base_url())?);
    let request =
        ListRequest { resource: "calls".into(), cursor: None, page_size: 10, filter: None };
    let page = connection.list(request).await?;
    let first: serde_json::Value = serde_json::from_str(&page.records[0])?;
    assert_eq!(first["ballast"], 10 << 20, "the instance starts above 8 MiB: {first}");
    assert_eq!(calls_seen(&connection).await?, 2, "the second call reuses the instance");
    assert_eq!(calls_seen(&connection).await?, 3);
    Ok(())
}

#[tokio::test]
async fn growth_past_8_mib_over_the_starting_memory_discards_the_instance() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let connection = warm(plugin, connection(&server.base_url())?);
    assert_eq!(calls_seen(&connection).await?, 1);
    // To 30 MiB: more than 8 MiB over the ~11 MiB it starts with.
    let grow = ListRequest {
        resource: "grow".into(),
        cursor: None,
        page_size: 10,
        filter: Some(serde_json::json!({"pages": 480}).to_string()),
    };
    connection.list(grow).await?;
    assert_eq!(calls_seen(&connection).await?, 1, "a fresh instance after growing to 30 MiB");
    Ok(())
}

#[tokio::test]
async fn a_flood_on_stderr_does_not_fail_the_call() -> TestResult {
    // Regression (issue 17): stderr was a 4 KiB buffer that refused writes
    // once full; Rust's `eprintln!` panics on a refused write, so a chatty
    // guest trapped.
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let records = list(&plugin, &http, "stderr-flood").await?;
    assert_eq!(records, vec![r#"{"id":"1"}"#.to_owned()]);
    Ok(())
}

#[tokio::test]
async fn a_trap_carries_the_tail_of_the_guests_stderr() -> TestResult {
    // Regression (issue 17): only the last line of stderr was kept
    // (`note: run with RUST_BACKTRACE=1…`), never the traceback above it.
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let error = match list(&plugin, &http, "traceback").await {
        Ok(records) => panic!("expected a trap, got {records:?}"),
        Err(e) => e.to_string(),
    };
    for needle in [
        "Traceback (most recent call last):",
        r#"File "app.py", line 12, in list"#,
        "ValueError: the customer list came back as XML",
        "uncaught exception in the guest",
        "bytes before them not kept",
    ] {
        assert!(error.contains(needle), "{needle:?} missing from {error}");
    }
    assert!(!error.contains("filler    0 "), "the head of a long stderr is cut: {error}");
    // 8 KiB of stderr, escaped (each line break becomes two characters),
    // plus the reason.
    assert!(error.len() < 10 << 10, "bounded: {} bytes", error.len());
    assert!(!error.contains('\n'), "one line: {error}");
    Ok(())
}

#[tokio::test]
async fn guest_output_goes_to_tracing_at_debug() -> TestResult {
    use tracing::instrument::WithSubscriber as _;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let records = list(&plugin, &http, "print").with_subscriber(subscriber).await?;
    assert_eq!(records.len(), 1);
    let log =
        String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
    let line =
        log.lines().find(|l| l.contains("hello from the guest's stdout")).unwrap_or_default();
    assert!(line.contains("DEBUG") && line.contains("stream=\"stdout\""), "{log}");
    assert!(line.contains("hostile"), "names the plugin: {line}");
    Ok(())
}

#[tokio::test]
async fn a_warm_instance_is_never_shared_between_connections() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let first = warm(plugin.clone(), connection(&server.base_url())?);
    let second = warm(plugin, connection(&server.base_url())?);
    assert_eq!(calls_seen(&first).await?, 1);
    assert_eq!(calls_seen(&first).await?, 2);
    assert_eq!(calls_seen(&second).await?, 1, "another connection starts from a fresh instance");
    Ok(())
}

#[tokio::test]
async fn a_trapped_instance_is_discarded_and_a_typed_error_is_not() -> TestResult {
    let (server, plugin) = hostile_connection().await?;
    let connection = warm(plugin, connection(&server.base_url())?);
    let request = |resource: &str| ListRequest {
        resource: resource.into(),
        cursor: None,
        page_size: 10,
        filter: None,
    };
    assert_eq!(calls_seen(&connection).await?, 1);
    // A typed error is a normal return: the instance stays warm.
    let error = connection
        .list(request("forbidden-host"))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("not an allowed host"), "{error}");
    assert_eq!(calls_seen(&connection).await?, 3);
    // A trap leaves the instance in whatever state it stopped in: it goes.
    let error =
        connection.list(request("spin")).await.err().map(|e| e.to_string()).unwrap_or_default();
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

/// A workflow named `name` of `steps` (TOML `[[step]]` tables) on the
/// hostile plugin's connection `hostile`.
fn hostile_steps(name: &str, steps: &str) -> String {
    format!(
        "[workflow]\nname = {name:?}\n[connections.hostile]\nplugin = {:?}\ncredentials = \"env:UNUSED\"\n{steps}",
        hostile_wasm().display().to_string()
    )
}

/// Points the `hostile` connection at `base_url` with the test secret.
fn hostile_at(base_url: &str) -> BTreeMap<String, ConnectionOverride> {
    BTreeMap::from([(
        "hostile".to_owned(),
        ConnectionOverride { base_url: base_url.to_owned(), secret: Secret::new(SECRET) },
    )])
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
    let flooded = executor
        .run(&workflow(files.path(), &hostile_workflow("many-headers", ""))?, &overrides, &Silent)
        .await?;
    assert_eq!(flooded.status, Status::Failed);
    let error = flooded.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("30000 headers") && error.contains("at most 100"), "{error}");
    assert!(error.contains("hostile"), "names the plugin: {error}");

    let ok = executor
        .run(&workflow(files.path(), &hostile_workflow("ok", ""))?, &overrides, &Silent)
        .await?;
    assert_eq!(ok.status, Status::Succeeded, "the process goes on: {ok:?}");
    Ok(())
}

/// A loopback vendor that echoes the request's headers: as a JSON body and
/// the Authorization header in a response header of its own.
async fn echo_server() -> TestResult<weft_sandbox::server::RunningServer> {
    let router = axum::Router::new().route(
        "/echo",
        axum::routing::get(|headers: axum::http::HeaderMap| async move {
            let echoed: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_str().unwrap_or_default().into()))
                .collect();
            let authorization = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                [("x-echo-authorization", authorization)],
                serde_json::Value::Object(echoed).to_string(),
            )
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
    for scheme in
        [AuthScheme::Bearer, AuthScheme::BasicKeyAsUser, AuthScheme::Header("x-api-key".into())]
    {
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
        assert!(
            record["body"].as_str().unwrap_or_default().contains("[redacted]"),
            "{scheme:?}: the echo was there, scrubbed: {text}"
        );
        if scheme != AuthScheme::Header("x-api-key".into()) {
            let header = record["headers"]
                .as_array()
                .and_then(|h| h.iter().find(|pair| pair[0] == "x-echo-authorization"))
                .cloned();
            assert!(
                header.is_some_and(|pair| pair[1]
                    .as_str()
                    .unwrap_or_default()
                    .ends_with("[redacted]")),
                "{scheme:?}: {text}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_metadata_address_is_refused_before_anything_is_sent() -> TestResult {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let summary = executor
        .run(
            &workflow(files.path(), &hostile_workflow("http", ""))?,
            &hostile_at("http://169.254.169.254"),
            &Silent,
        )
        .await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("169.254.169.254 is link-local") && error.contains("allow_private_network"),
        "{error}"
    );
    assert_eq!(summary.connections["hostile"].requests, 0, "{:?}", summary.connections);
    assert_eq!(summary.connections["hostile"].denied, 1);
    Ok(())
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_unless_the_connection_allows_private_networks()
-> TestResult {
    // A public-looking base URL whose name resolves to 127.0.0.1, as a
    // rebinding or a hostile DNS answer would: judged by its address.
    let server = huge_server().await?;
    let port = server.base_url().rsplit(':').next().unwrap_or_default().to_owned();
    let clients =
        weft::http::HttpClients::with_pinned_names(&[("localhost.example", "127.0.0.1".parse()?)]);
    let base_url = format!("http://localhost.example:{port}");
    let connect = |egress: Option<EgressPolicy>| -> TestResult<Arc<ConnectionHttp>> {
        let http = ConnectionHttp::new(
            clients.clone(),
            &base_url,
            &[],
            Some((AuthScheme::Bearer, Secret::new(SECRET))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?;
        Ok(Arc::new(match egress {
            Some(egress) => http.with_egress(egress),
            None => http,
        }))
    };
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;

    let error = list(&plugin, &connect(None)?, "http")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.contains("localhost.example resolves to 127.0.0.1, which is loopback"),
        "{error}"
    );
    assert!(error.contains("allow_private_network"), "{error}");

    let records = list(&plugin, &connect(Some(EgressPolicy::Any))?, "http").await?;
    let record: serde_json::Value = serde_json::from_str(&records[0])?;
    assert_eq!(
        record["status"], 404,
        "allowed, it reaches the server (which has no /v1/customers): {record}"
    );
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

    let refused = executor
        .run(
            &workflow(files.path(), &hostile_workflow("huge", ""))?,
            &hostile_at(&base_url),
            &Silent,
        )
        .await?;
    assert_eq!(refused.status, Status::Failed);
    let error = refused.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("0.0.0.0 is unspecified"), "{error}");

    let allowed = executor
        .run(
            &workflow(files.path(), &hostile_workflow("huge", "allow_private_network = true"))?,
            &hostile_at(&base_url),
            &Silent,
        )
        .await?;
    assert_eq!(allowed.status, Status::Succeeded, "{allowed:?}");
    assert_eq!(allowed.connections["hostile"].requests, 1);
    Ok(())
}

// ---- What a plugin hands back: one JSON object per record, bounded sizes ----

/// The ways `bad-records` breaks "one JSON object" (see the hostile plugin).
const NOT_ONE_OBJECT: &[&str] = &[
    "newline-in-string",
    "two-lines",
    "comma",
    "not-json",
    "array",
    "number",
    "unterminated",
    "lone-surrogate",
    "huge-number",
    "too-deep",
];

async fn list_with(
    plugin: &Plugin,
    http: &Arc<ConnectionHttp>,
    resource: &str,
    cursor: Option<&str>,
    filter: serde_json::Value,
) -> Result<Vec<String>, RuntimeError> {
    let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
    let request = ListRequest {
        resource: resource.into(),
        cursor: cursor.map(str::to_owned),
        page_size: 10,
        filter: Some(filter.to_string()),
    };
    plugin.list(http, ctx, request).await.map(|page| page.records)
}

fn assert_contract_breach(error: &RuntimeError, op: &str, what: &str) {
    let text = error.to_string();
    assert!(
        matches!(error, RuntimeError::Contract { .. }),
        "{what}: not a contract breach: {text}"
    );
    assert!(
        text.contains("plugin ") && text.contains("hostile") && text.contains(op),
        "{what}: {text} names the plugin and {op}"
    );
}

#[tokio::test]
async fn a_listed_record_that_is_not_one_json_object_is_a_contract_breach() -> TestResult {
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    for kind in NOT_ONE_OBJECT {
        let filter = serde_json::json!({ "kind": kind });
        match list_with(&plugin, &http, "bad-records", Some("2"), filter).await {
            Ok(records) => panic!("{kind}: accepted {records:?}"),
            Err(error) => {
                assert_contract_breach(&error, "list", kind);
                assert!(error.to_string().contains("record 1 of 2"), "{kind}: {error}");
            }
        }
    }
    // One object over several lines (a vendor's pretty-printed body) is
    // fine: it arrives as one line.
    let records = list_with(
        &plugin,
        &http,
        "bad-records",
        Some("2"),
        serde_json::json!({ "kind": "pretty" }),
    )
    .await?;
    assert_eq!(records, [r#"{"id":"2","name":"Pretty\nPrinted"}"#, r#"{"id":"3"}"#]);
    Ok(())
}

#[tokio::test]
async fn a_record_from_get_upsert_or_a_batch_that_is_not_one_json_object_is_a_contract_breach()
-> TestResult {
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let ctx = || CallContext { base_url: http.base_url(), settings: vec![] };
    for kind in NOT_ONE_OBJECT {
        let error = plugin
            .get(&http, ctx(), "bad-records", kind)
            .await
            .err()
            .ok_or(format!("get {kind} was accepted"))?;
        assert_contract_breach(&error, "get", kind);

        let record = serde_json::json!({ "kind": kind }).to_string();
        let request = weft::connector::UpsertRequest {
            resource: "bad-records".into(),
            record: record.clone(),
            idempotency_key: "k".into(),
        };
        let error = plugin
            .upsert(&http, ctx(), request)
            .await
            .err()
            .ok_or(format!("upsert {kind} was accepted"))?;
        assert_contract_breach(&error, "upsert", kind);

        let items = vec![
            weft::connector::BatchItem {
                record: r#"{"kind":"good"}"#.into(),
                idempotency_key: "k1".into(),
            },
            weft::connector::BatchItem { record, idempotency_key: "k2".into() },
        ];
        let error = plugin
            .upsert_batch(&http, ctx(), "bad-records", items)
            .await
            .err()
            .ok_or(format!("batch {kind} was accepted"))?;
        assert_contract_breach(&error, "upsert-batch", kind);
        assert!(error.to_string().contains("outcome 2 of 2"), "{kind}: {error}");
    }
    Ok(())
}

/// A list step whose second page holds `kind`, writing an output file and
/// keeping its records for a later step; returns the run, the store and
/// the output file's path.
async fn list_step_with_bad_page(
    kind: &str,
) -> TestResult<(weft::executor::RunSummary, tempfile::TempDir, tempfile::TempDir)> {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let overrides = BTreeMap::from([(
        "hostile".to_owned(),
        ConnectionOverride { base_url: "http://127.0.0.1:9".into(), secret: Secret::new(SECRET) },
    )]);
    let text = format!(
        r#"[workflow]
name = "bad-page"
[connections.hostile]
plugin = {plugin:?}
credentials = "env:UNUSED"
[[step]]
id = "s"
list = "hostile.bad-records"
filter = {{ kind = "{kind}" }}
output = "out.jsonl"
[[step]]
id = "each"
for_each = ".steps.s.records[]"
get = "hostile.big-record"
key = "16"
"#,
        plugin = hostile_wasm().display().to_string()
    );
    let summary = executor.run(&workflow(files.path(), &text)?, &overrides, &Silent).await?;
    // What a resume would read: every committed page, every output line.
    for page in executor.store().pages(&summary.run_id, 0).await?.collect_all().await? {
        let records: Vec<serde_json::Value> = serde_json::from_str(&page)?;
        assert!(records.iter().all(serde_json::Value::is_object), "{kind}: {records:?}");
    }
    drop(executor);
    Ok((summary, state, files))
}

fn output_lines(files: &tempfile::TempDir) -> TestResult<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(files.path().join("out.jsonl"))?;
    let lines: Vec<serde_json::Value> =
        text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    assert!(lines.iter().all(serde_json::Value::is_object), "{text}");
    Ok(lines)
}

#[tokio::test]
async fn a_bad_record_fails_its_list_step_and_leaves_the_page_log_and_output_readable() -> TestResult
{
    for kind in ["two-lines", "comma", "not-json", "number", "lone-surrogate"] {
        let (summary, _state, files) = list_step_with_bad_page(kind).await?;
        assert_eq!(summary.status, Status::Failed, "{kind}: {summary:?}");
        let error = summary.steps[0].error.clone().unwrap_or_default();
        assert!(
            error.contains("plugin")
                && error.contains("hostile")
                && error.contains("broke the contract"),
            "{kind}: {error}"
        );
        // Only the first, good page was kept; nothing was forged or smuggled.
        assert_eq!(output_lines(&files)?, [serde_json::json!({"id": "1"})], "{kind}");
    }
    let (summary, _state, files) = list_step_with_bad_page("pretty").await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(output_lines(&files)?.len(), 3);
    Ok(())
}

/// A sync checks its source's records off the task that reads the pages
/// (on an evaluation thread, beside the keying): a bad one still fails the
/// step as a contract breach naming what was being read, before anything
/// is written.
#[tokio::test]
async fn a_bad_record_in_a_syncs_source_fails_the_step_before_any_write() -> TestResult {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let overrides = hostile_at("http://127.0.0.1:9");
    let text = hostile_steps(
        "bad-sync",
        r#"[[step]]
id = "mirror"
sync = { from = "hostile.bad-sync", to = "hostile.bad-records", key = "id" }
"#,
    );
    let summary = executor.run(&workflow(files.path(), &text)?, &overrides, &Silent).await?;
    assert_eq!(summary.status, Status::Failed, "{summary:?}");
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("reading bad-sync (source)")
            && error.contains("hostile")
            && error.contains("broke the contract")
            && error.contains("record 1 of 2"),
        "{error}"
    );
    let calls = &summary.connections["hostile"].calls;
    assert!(!calls.contains_key("upsert") && !calls.contains_key("upsert-batch"), "{calls:?}");
    Ok(())
}

#[tokio::test]
async fn a_40_mb_record_is_refused_before_the_host_copies_it() -> TestResult {
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    let ctx = || CallContext { base_url: http.base_url(), settings: vec![] };
    let error = plugin
        .get(&http, ctx(), "big-record", &(40 << 20).to_string())
        .await
        .err()
        .ok_or("a 40 MiB record was accepted")?
        .to_string();
    assert!(
        error.contains("hostile")
            && error.contains("get")
            && error.contains("reply limit of 16 MiB"),
        "{error}"
    );

    // Under the reply limit but over the record limit: refused by size.
    let error = plugin
        .get(&http, ctx(), "big-record", &(2 << 20).to_string())
        .await
        .err()
        .ok_or("a 2 MiB record was accepted")?
        .to_string();
    assert!(error.contains("is 2097152 bytes, over the record limit of 1 MiB"), "{error}");

    // Records each under the limit, a page over the reply limit.
    let error = list_with(
        &plugin,
        &http,
        "big-record",
        None,
        serde_json::json!({"bytes": 900_000, "records": 20}),
    )
    .await
    .err()
    .ok_or("an 18 MB page was accepted")?
    .to_string();
    assert!(error.contains("list") && error.contains("reply limit of 16 MiB"), "{error}");

    // A million empty records: 8 MB in the guest, 24 MB as host strings.
    let error =
        list_with(&plugin, &http, "many-records", None, serde_json::json!({"count": 1_000_000}))
            .await
            .err()
            .ok_or("a million records were accepted")?
            .to_string();
    assert!(error.contains("reply limit of 16 MiB"), "{error}");

    // The process goes on.
    assert_eq!(plugin.get(&http, ctx(), "big-record", "100").await?.map(|r| r.len()), Some(100));
    Ok(())
}

#[tokio::test]
async fn the_memory_limit_message_gives_exact_sizes() -> TestResult {
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    // One 64 KiB page past the 64 MiB cap.
    let error = list_with(&plugin, &http, "grow", None, serde_json::json!({"pages": 1025}))
        .await
        .err()
        .ok_or("grew past the cap")?
        .to_string();
    assert!(
        error.contains(
            "exceeded its memory limit of 64 MiB (tried to grow to 67174400 bytes (64.06 MiB))"
        ),
        "{error}"
    );
    Ok(())
}

// ---- Plugin text in host logs ----

/// Log output captured from the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn plugin_log_lines_cannot_forge_host_log_lines() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime is this one thread, so the plugin's log calls run here.
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection("http://127.0.0.1:9")?;
    list(&plugin, &http, "log-forge").await?;
    let bytes = captured.0.lock().map_err(|_| "poisoned")?.clone();
    let text = String::from_utf8(bytes)?;
    let plugin_lines: Vec<&str> = text.lines().filter(|line| line.contains("plugin=")).collect();
    assert_eq!(plugin_lines.len(), 2, "two plugin lines, each on one line:\n{text}");
    assert!(!text.lines().any(|line| line.starts_with("2030-01-01")), "a forged line:\n{text}");
    assert!(
        plugin_lines[0].contains(r"plugin line\n2030-01-01T00:00:00Z ERROR weft: forged host line"),
        "{text}"
    );
    assert!(plugin_lines[1].contains(r"carriage\rreturn, \u{1b}[31mred\u{1b}[0m, bell\u{7}, nul\u{0}, next line\u{85}, separator\u{2028}end"), "{text}");
    for control in ['\r', '\u{1b}', '\u{7}', '\u{0}', '\u{85}', '\u{2028}'] {
        assert!(!text.contains(control), "{control:?} reached the log:\n{text}");
    }
    Ok(())
}

// ---- CPU time is CPU time ----

async fn burn(
    plugin: &Plugin,
    http: &Arc<ConnectionHttp>,
    iterations: u64,
) -> Result<Vec<String>, RuntimeError> {
    list_with(plugin, http, "burn", None, serde_json::json!({ "iterations": iterations })).await
}

/// Many calls, each well under the CPU limit, on two worker threads: each
/// waits for a core far longer than the limit, and that waiting is not CPU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_each_under_the_cpu_limit_all_succeed_and_a_spin_still_stops() -> TestResult
{
    let limit = Duration::from_millis(500);
    let runtime = runtime(InstanceLimits {
        cpu_time: limit,
        call_timeout: Duration::from_secs(120),
        ..InstanceLimits::default()
    })?;
    let plugin = Arc::new(runtime.load_file(hostile_wasm()).await?);
    let http = connection("http://127.0.0.1:9")?;
    // Calibrate alone: iterations for about a fifth of the limit. Wall time
    // alone is at least the CPU time, so the real share is at most that.
    let probe = 5_000_000;
    let started = std::time::Instant::now();
    burn(&plugin, &http, probe).await?;
    let per_iteration = started.elapsed().as_secs_f64() / probe as f64;
    let iterations = ((limit.as_secs_f64() / 5.0) / per_iteration) as u64;
    // 24 calls of ~100 ms on 2 threads: each call's wall time is ~1.2 s.
    let calls = 24;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..calls {
        let (plugin, http) = (plugin.clone(), http.clone());
        tasks.spawn(
            async move { burn(&plugin, &http, iterations).await.map_err(|e| e.to_string()) },
        );
    }
    let spin = {
        let (plugin, http) = (plugin.clone(), http.clone());
        tokio::spawn(async move { list(&plugin, &http, "spin").await.map_err(|e| e.to_string()) })
    };
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined? {
            failures.push(e);
        }
    }
    let wall = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed ({iterations} iterations each, {wall:?} for all): {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        wall > limit,
        "the calls ran concurrently past the limit ({wall:?}), so the test shows something"
    );
    let error = spin.await?.err().unwrap_or_default();
    assert!(error.contains("CPU time limit of 500ms"), "{error}");
    Ok(())
}

// ---- Instance slots: calls wait for one, within their deadline ----

/// A loopback server whose `/slow?ms=N` answers after N milliseconds.
async fn slow_server() -> TestResult<weft_sandbox::server::RunningServer> {
    async fn slow(
        axum::extract::Query(query): axum::extract::Query<BTreeMap<String, u64>>,
    ) -> &'static str {
        tokio::time::sleep(Duration::from_millis(query.get("ms").copied().unwrap_or(0))).await;
        "{}"
    }
    let router = axum::Router::new().route("/slow", axum::routing::get(slow));
    Ok(weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?)
}

fn slow_request(ms: u64) -> ListRequest {
    ListRequest {
        resource: "slow".into(),
        cursor: None,
        page_size: 10,
        filter: Some(serde_json::json!({ "ms": ms }).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_concurrent_calls_than_the_256_instance_slots_all_succeed() -> TestResult {
    let server = slow_server().await?;
    let runtime = runtime(InstanceLimits {
        call_timeout: Duration::from_secs(60),
        ..InstanceLimits::default()
    })?;
    let plugin = Arc::new(runtime.load_file(hostile_wasm()).await?);
    let http = connection(&server.base_url())?;
    let calls = 300;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        let (plugin, http) = (plugin.clone(), http.clone());
        tasks.spawn(async move {
            let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
            // Each call holds its instance while it waits on HTTP; a third
            // of them go through warm connections, the rest fresh.
            let result = if n % 3 == 0 {
                warm(plugin, http).list(slow_request(300)).await
            } else {
                plugin.list(&http, ctx, slow_request(300)).await
            };
            result.map_err(|e| e.to_string())
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined? {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    Ok(())
}

fn small_pool(instances: u32, call_timeout: Duration) -> TestResult<weft::runtime::Runtime> {
    runtime(InstanceLimits { call_timeout, instances, ..limits() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_a_small_pool_wait_their_turn() -> TestResult {
    let server = slow_server().await?;
    let plugin = Arc::new(small_pool(4, Duration::from_secs(60))?.load_file(hostile_wasm()).await?);
    let http = connection(&server.base_url())?;
    let pooled = Arc::new(warm(plugin.clone(), http.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..24 {
        let (plugin, http, pooled) = (plugin.clone(), http.clone(), pooled.clone());
        tasks.spawn(async move {
            let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
            let result = if n % 2 == 0 {
                pooled.list(slow_request(50)).await
            } else {
                plugin.list(&http, ctx, slow_request(50)).await
            };
            result.map_err(|e| e.to_string())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_warm_instance_gives_its_slot_to_a_waiting_call() -> TestResult {
    let server = slow_server().await?;
    // Two slots; a call takes ~500 ms of its 800 ms deadline.
    let plugin =
        Arc::new(small_pool(2, Duration::from_millis(800))?.load_file(hostile_wasm()).await?);
    let http = connection(&server.base_url())?;
    let idle = warm(plugin.clone(), http.clone());
    idle.list(slow_request(0)).await?;
    // `idle` now keeps its instance warm, holding one slot. Two concurrent
    // calls need both: the second can only run at once if the idle
    // instance is given up (waiting for the first would pass its deadline).
    let busy = warm(plugin.clone(), http.clone());
    let (first, second) = tokio::join!(busy.list(slow_request(500)), busy.list(slow_request(500)));
    first?;
    second?;
    drop(idle);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_a_slot_no_longer_than_its_deadline() -> TestResult {
    let server = slow_server().await?;
    let plugin = Arc::new(small_pool(1, Duration::from_secs(1))?.load_file(hostile_wasm()).await?);
    let http = connection(&server.base_url())?;
    let ctx = || CallContext { base_url: http.base_url(), settings: vec![] };
    let started = std::time::Instant::now();
    let (a, b, c) = tokio::join!(
        plugin.list(&http, ctx(), slow_request(700)),
        plugin.list(&http, ctx(), slow_request(700)),
        plugin.list(&http, ctx(), slow_request(700)),
    );
    let elapsed = started.elapsed();
    let outcomes = [a, b, c];
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "one call had the slot in time: {outcomes:?}"
    );
    for error in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let text = error.to_string();
        assert!(text.contains("hostile") && text.contains("list"), "{text}");
        assert!(
            text.contains("for a wasm instance: all 1 slots stayed in use")
                || text.contains("exceeded the call deadline of 1s"),
            "{text}"
        );
    }
    assert!(elapsed < Duration::from_secs(5), "nobody waited past the deadline: {elapsed:?}");
    Ok(())
}

// ---- A for-each's early stop follows what happened ----

#[tokio::test]
async fn ten_quick_failures_do_not_stop_a_for_each_whose_later_items_succeed() -> TestResult {
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = Executor::new(runtime(limits())?, RunStore::open(state.path())?);
    let overrides = BTreeMap::from([(
        "hostile".to_owned(),
        ConnectionOverride { base_url: "http://127.0.0.1:9".into(), secret: Secret::new(SECRET) },
    )]);
    // Items 0-9 fail at once (an id that is not a number); items 10-39 spend
    // some CPU first, so the ten failures finish before any success.
    let text = format!(
        r#"[workflow]
name = "early-failures"
[connections.hostile]
plugin = {plugin:?}
credentials = "env:UNUSED"
[[step]]
id = "each"
for_each = "[range(0; 40)]"
concurrency = 20
get = "hostile.burn"
key = "${{{{ if $item < 10 then \"not-a-number\" else \"3000000\" end }}}}"
"#,
        plugin = hostile_wasm().display().to_string()
    );
    let summary = executor.run(&workflow(files.path(), &text)?, &overrides, &Silent).await?;
    let step = &summary.steps[0];
    let error = step.error.clone().unwrap_or_default();
    assert_eq!(summary.status, Status::Failed, "{summary:?}");
    assert!(!error.contains("all failed"), "{error}");
    assert_eq!((step.items, step.counts.failed, step.counts.read), (40, 10, 30), "{step:?}");
    assert!(error.contains("10 of 40 items failed"), "{error}");
    Ok(())
}

// ---- Nothing a plugin does through an import ends the process ----

#[tokio::test]
async fn a_request_with_a_flood_of_header_names_fails_its_call_not_the_process() -> TestResult {
    let server = huge_server().await?;
    let runtime = runtime(limits())?;
    let plugin = runtime.load_file(hostile_wasm()).await?;
    let http = connection(&server.base_url())?;
    // 30,000 distinct names: past what `http::HeaderMap` holds (it panics
    // past 24,576). However the host refuses it (a bound on headers, or a
    // panic contained to the call), the call fails and names the plugin.
    let error =
        list_with(&plugin, &http, "header-flood", None, serde_json::json!({"count": 30_000}))
            .await
            .err()
            .ok_or("a flood of headers was sent")?
            .to_string();
    assert!(error.contains("hostile") && error.contains("list"), "{error}");
    assert!(!error.contains(SECRET), "{error}");
    // The process goes on, and so does the plugin.
    assert_eq!(list(&plugin, &http, "ok").await?.len(), 2);
    Ok(())
}

// ---- The compiled-component cache is used only when no one else can write it ----

#[cfg(unix)]
#[tokio::test]
async fn a_component_cache_others_can_write_is_not_used() -> TestResult {
    use std::os::unix::fs::PermissionsExt as _;
    let load = |dir: std::path::PathBuf| async move {
        let runtime = weft::runtime::Runtime::new(weft::runtime::RuntimeConfig {
            cache_dir: Some(dir),
            limits: limits(),
        })?;
        let plugin = runtime.load_file(hostile_wasm()).await?;
        Ok::<bool, Box<dyn std::error::Error>>(plugin.load_info().cache_hit)
    };
    let entries = |dir: &std::path::Path| -> TestResult<Vec<std::path::PathBuf>> {
        Ok(std::fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?)
    };

    // A new cache directory is created for this user alone, and used.
    let root = tempfile::tempdir()?;
    let dir = root.path().join("components");
    assert!(!load(dir.clone()).await?);
    assert_eq!(std::fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
    assert!(load(dir.clone()).await?, "the second load comes from the cache");

    // A directory anyone can write: neither read nor written.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    assert!(!load(dir.clone()).await?, "an entry in a 0777 directory was loaded");
    let open = tempfile::tempdir()?;
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777))?;
    assert!(!load(open.path().to_path_buf()).await?);
    assert!(!load(open.path().to_path_buf()).await?, "a 0777 directory was used as a cache");
    assert!(entries(open.path())?.is_empty(), "nothing is written to a 0777 directory");

    // A good directory, but an entry others can write.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    assert!(load(dir.clone()).await?);
    for entry in entries(&dir)? {
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666))?;
    }
    assert!(!load(dir.clone()).await?, "an entry mode 0666 was loaded");

    // An entry another user owns (only root can hand a file to another
    // user; elsewhere this part cannot be set up).
    assert!(load(dir.clone()).await?);
    let mut handed_over = 0;
    for entry in entries(&dir)? {
        if std::os::unix::fs::chown(&entry, Some(65534), Some(65534)).is_ok() {
            handed_over += 1;
        }
    }
    if handed_over > 0 {
        assert!(!load(dir.clone()).await?, "an entry owned by another user was loaded");
    }
    Ok(())
}
