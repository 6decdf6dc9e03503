//! Workflow state across runs: the incremental example copies every
//! Stripe customer into GrowPanel exactly once across scheduled runs, one
//! of them failing half way; a dry run reads the state and never writes it;
//! a change the run did not see refuses the run's own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::{Value, json};
use weft::executor::{ConnectionOverride, Observer, RunOptions, Silent};
use weft::store::{RunTrigger, Status};
use weft::workflow::{Step, Workflow};

use super::support::{Harness, TestResult, ids, overrides, sandbox};

/// A loopback proxy in front of the GrowPanel emulator that, once armed,
/// lets `budget` more creates (POSTs) through and refuses the rest with
/// GrowPanel's 400: a failure in the middle of a run.
struct FailingProxy {
    base_url: String,
    budget: Arc<AtomicI64>,
}

impl FailingProxy {
    async fn start(target: String) -> TestResult<FailingProxy> {
        let budget = Arc::new(AtomicI64::new(i64::MAX));
        let client = reqwest::Client::builder().no_proxy().build()?;
        let (left, target) = (budget.clone(), Arc::new(target));
        let router = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (client, left, target) = (client.clone(), left.clone(), target.clone());
            async move {
                use axum::response::IntoResponse as _;
                let (parts, body) = request.into_parts();
                if parts.method == axum::http::Method::POST
                    && left.fetch_sub(1, Ordering::SeqCst) <= 0
                {
                    return (
                        axum::http::StatusCode::BAD_REQUEST,
                        axum::Json(json!({ "message": "injected failure" })),
                    )
                        .into_response();
                }
                let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
                    return axum::http::StatusCode::BAD_GATEWAY.into_response();
                };
                let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let mut forwarded =
                    client.request(parts.method.clone(), format!("{target}{path}")).body(body);
                for (name, value) in &parts.headers {
                    if name != axum::http::header::HOST {
                        forwarded = forwarded.header(name, value);
                    }
                }
                match forwarded.send().await {
                    Ok(answer) => {
                        let status = answer.status();
                        let content_type = answer.headers().get("content-type").cloned();
                        let bytes = answer.bytes().await.unwrap_or_default();
                        let mut response = (status, bytes).into_response();
                        if let Some(content_type) = content_type {
                            response.headers_mut().insert("content-type", content_type);
                        }
                        response
                    }
                    Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(FailingProxy { base_url: format!("http://{address}"), budget })
    }

    fn fail_after(&self, creates: i64) {
        self.budget.store(creates, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.budget.store(i64::MAX, Ordering::SeqCst);
    }
}

/// The example, as shipped, with the host's GrowPanel limit raised so the
/// test does not wait out GrowPanel's 100 creates a minute, and small
/// pages so that a run reads several.
fn example(dir: &Path) -> TestResult<Workflow> {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/stripe-mirror-incremental.toml"),
    )?;
    let text = text
        .replace(
            "settings = { source = \"ds_weft_demo\" }",
            "settings = { source = \"ds_weft_demo\" }\nrate_limit = \"200/s\"",
        )
        .replace("page_size = 100", "page_size = 4");
    assert!(text.contains("rate_limit = \"200/s\"") && text.contains("page_size = 4"));
    super::support::workflow(dir, &text)
}

fn new_customers(sandbox: &weft_sandbox::Sandbox, run: u64, count: u64) -> Vec<String> {
    (0..count)
        .map(|i| {
            // Created between runs, later each time; a few in one second.
            let created = 1_800_000_000 + run * 1000 + i / 2;
            let customer = sandbox.stripe.emulator.insert_customer(json!({
                "id": format!("cus_r{run}_{i}"),
                "email": format!("r{run}.{i}@example.com"),
                "name": format!("Run {run} customer {i}"),
                "created": created,
            }));
            customer["id"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn the_incremental_example_copies_every_customer_once_across_runs_one_failing_half_way()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let proxy = FailingProxy::start(sandbox.growpanel.base_url()).await?;
    let harness = Harness::new()?;
    let workflow = example(harness.files.path())?;
    let mut connections = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    if let Some(growpanel) = connections.get_mut("growpanel") {
        *growpanel = ConnectionOverride { base_url: proxy.base_url.clone(), ..growpanel.clone() };
    }
    let options =
        RunOptions { overrides: connections, trigger: RunTrigger::Cron, ..RunOptions::default() };
    let mut expected = Vec::new();
    let mut statuses = Vec::new();
    for run in 1..=5u64 {
        expected.extend(new_customers(&sandbox, run, 6 + run));
        if run == 3 {
            // Half of this run's creates get through, then GrowPanel refuses.
            proxy.fail_after(4);
        }
        let summary = harness.executor.start(&workflow, &options, &Silent).await?;
        proxy.heal();
        statuses.push(summary.status);
    }
    assert_eq!(
        statuses,
        [
            Status::Succeeded,
            Status::Succeeded,
            Status::Failed,
            Status::Succeeded,
            Status::Succeeded
        ],
        "run 3 fails half way, the others succeed"
    );

    // Judged by the emulators: GrowPanel holds each Stripe customer, once.
    let stripe_ids: Vec<String> = ids(&sandbox.stripe.emulator.customers());
    let mut held: Vec<String> = ids(&sandbox.growpanel.emulator.customers());
    held.sort();
    let mut wanted = stripe_ids.clone();
    wanted.sort();
    expected.sort();
    assert_eq!(wanted, expected, "the Stripe emulator holds what the test created");
    assert_eq!(held, wanted, "GrowPanel holds every Stripe customer, none missed, none twice");
    // Each customer was created once: no POST that succeeded names an id
    // another succeeded POST named.
    let mut created: BTreeMap<String, usize> = BTreeMap::new();
    for request in sandbox.growpanel.emulator.requests().requests() {
        if request.method == "POST" && (200..300).contains(&request.status) {
            let body: Value = serde_json::from_str(&request.body)?;
            let rows = match body {
                Value::Array(rows) => rows,
                row => vec![row],
            };
            for row in rows {
                if let Some(id) = row["id"].as_str() {
                    *created.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
    }
    let twice: Vec<_> = created.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
    assert_eq!(created.len(), wanted.len());

    // The checkpoint ends at the newest customer, and run 3 did not move it.
    let store = harness.executor.store();
    let state = store.workflow_state(&workflow.name).await?;
    let newest =
        sandbox.stripe.emulator.customers().iter().filter_map(|c| c["created"].as_i64()).max();
    assert_eq!(state.values.get("since").and_then(Value::as_i64), newest);
    let runs = store.runs().await?;
    let third = &runs[2];
    let copy = store.steps(&third.id).await?.into_iter().find(|s| s.id == "copy");
    let copy = copy.ok_or("run 3 has a copy step")?;
    assert_eq!(copy.status, Status::Failed);
    assert!(copy.state_write.is_none(), "a failed copy sets no checkpoint: {:?}", copy.state_write);
    let new = store.steps(&third.id).await?.into_iter().find(|s| s.id == "new");
    let seen = new.and_then(|s| s.state_write).ok_or("run 3's list recorded what it read")?;
    assert!(seen.values.contains_key("seen"));
    Ok(())
}

#[tokio::test]
async fn a_dry_run_reads_the_state_and_never_writes_it() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let workflow = example(harness.files.path())?;
    let connections = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    new_customers(&sandbox, 1, 5);
    let store = harness.executor.store();
    let set = BTreeMap::from([("since".to_owned(), Some(json!(1_800_001_001)))]);
    let before = store.edit_workflow_state(&workflow.name, &set, false).await?;

    let dry = RunOptions { overrides: connections, dry_run: true, ..RunOptions::default() };
    let summary = harness.executor.start(&workflow, &dry, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded);
    // It read `since`: only the customers created at or after it.
    let list = summary.steps.iter().find(|s| s.id == "new").ok_or("a new step")?;
    assert_eq!(list.counts.read, 3, "customers created at or after the checkpoint: {list:?}");
    assert_eq!(store.workflow_state(&workflow.name).await?, before, "a dry run changes no state");
    // What it would have set is shown, marked planned.
    let steps = store.steps(&summary.run_id).await?;
    let planned = steps.iter().find(|s| s.id == "new").and_then(|s| s.state_write.clone());
    let planned = planned.ok_or("the plan shows the state change")?;
    assert!(planned.planned);
    assert_eq!(planned.values.get("seen"), Some(&json!(1_800_001_002)));
    assert!(sandbox.growpanel.emulator.customers().is_empty(), "nothing written");
    Ok(())
}

/// Changes the workflow's state by hand while step `step` runs, as a
/// second run or an operator would.
struct EditWhileRunning {
    step: &'static str,
    store: weft::store::RunStore,
    workflow: String,
}

impl Observer for EditWhileRunning {
    fn step_started(&self, step: &Step) {
        if step.id != self.step {
            return;
        }
        let (store, workflow) = (self.store.clone(), self.workflow.clone());
        let edited = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build()?;
            let set = BTreeMap::from([("since".to_owned(), Some(json!(42)))]);
            runtime.block_on(store.edit_workflow_state(&workflow, &set, false))?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
        assert!(matches!(edited, Ok(Ok(()))), "the edit went through: {edited:?}");
    }
}

#[tokio::test]
async fn a_state_change_the_run_did_not_see_fails_the_runs_own_and_keeps_the_other() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let workflow = example(harness.files.path())?;
    let connections = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    new_customers(&sandbox, 1, 3);
    let observer = EditWhileRunning {
        step: "copy",
        store: harness.executor.store().clone(),
        workflow: workflow.name.clone(),
    };
    let options = RunOptions { overrides: connections, ..RunOptions::default() };
    let summary = harness.executor.start(&workflow, &options, &observer).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.error.unwrap_or_default();
    assert!(error.contains("changed since this run read it"), "{error}");
    let state = harness.executor.store().workflow_state(&workflow.name).await?;
    assert_eq!(state.values.get("since"), Some(&json!(42)), "the other change is kept");
    assert_eq!(state.run, None);
    Ok(())
}

#[tokio::test]
async fn last_success_names_the_previous_successful_run_and_is_null_before_one() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let text = r#"
[workflow]
name = "remembers"

[state.previous]
description = "the id of the run before, as $last_success saw it"

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"

[[step]]
id = "look"
get = "stripe.customers"
key = "cus_nobody"
state = { previous = "${{ $last_success | if . == null then \"none\" else \"\\(.id) \\(.started_at) \\(.finished_at != null)\" end }}" }
"#;
    let workflow = super::support::workflow(harness.files.path(), text)?;
    let options = RunOptions {
        overrides: overrides(&sandbox, &[("stripe", "stripe")]),
        ..RunOptions::default()
    };
    let first = harness.executor.start(&workflow, &options, &Silent).await?;
    assert_eq!(first.status, Status::Succeeded, "{:?}", first.error);
    let store = harness.executor.store();
    let state = store.workflow_state("remembers").await?;
    assert_eq!(state.values.get("previous"), Some(&json!("none")));
    // A dry run is no success to count from.
    let dry = RunOptions { dry_run: true, ..options.clone() };
    harness.executor.start(&workflow, &dry, &Silent).await?;
    let second = harness.executor.start(&workflow, &options, &Silent).await?;
    assert_eq!(second.status, Status::Succeeded, "{:?}", second.error);
    let state = store.workflow_state("remembers").await?;
    let seen = state.values.get("previous").and_then(Value::as_str).unwrap_or_default();
    let row = store.run(&first.run_id).await?;
    let started = chrono::DateTime::from_timestamp_millis(row.created_ms as i64)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    assert_eq!(seen, format!("{} {started} true", first.run_id));
    Ok(())
}

#[tokio::test]
async fn the_api_shows_a_workflows_state_as_its_next_run_reads_it() -> TestResult {
    use super::serve::{config, post_json, start_with};
    let sandbox = sandbox(0).await?;
    let files = tempfile::tempdir()?;
    let store = tempfile::tempdir()?;
    let stripe = sandbox.endpoints().into_iter().find(|e| e.vendor == "stripe").ok_or("stripe")?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, &stripe.api_key)?;
    let text = format!(
        r#"[workflow]
name = "counted"

[state.runs]
default = 0

[state.note]
default = "never"

[connections.stripe]
plugin = "stripe"
credentials = "file:{}"
base_url = "{}"

[[step]]
id = "c"
upsert = "stripe.customers"
record = {{ email = "counted@example.com" }}
state = {{ runs = "${{{{ $state.runs + 1 }}}}" }}
"#,
        key.display(),
        stripe.base_url
    );
    let workflow = super::support::workflow(files.path(), &text)?;
    let server = start_with(
        store.path(),
        weft::serve::ServeConfig { workflows: vec![workflow], ..config()? },
    )
    .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let state = |client: reqwest::Client, base: String| async move {
        let answer = client.get(format!("{base}/api/workflows/counted/state")).send().await?;
        let status = answer.status().as_u16();
        let body: Value = serde_json::from_slice(&answer.bytes().await?)?;
        TestResult::Ok((status, body))
    };
    let (status, before) = state(client.clone(), base.clone()).await?;
    assert_eq!(status, 200, "{before}");
    assert_eq!(before["values"], json!({ "runs": 0, "note": "never" }), "defaults: {before}");
    assert_eq!(before["declared"], json!(["note", "runs"]));
    assert!(before["run"].is_null(), "{before}");

    let mut last_run = String::new();
    for _ in 0..2 {
        let started =
            post_json(&client, format!("{base}/api/workflows/counted/runs"), "{}").send().await?;
        assert_eq!(started.status(), 202);
        let started: Value = serde_json::from_slice(&started.bytes().await?)?;
        last_run = started["run_id"].as_str().unwrap_or_default().to_owned();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let shown: Value = serde_json::from_slice(
                &client.get(format!("{base}/api/runs/{last_run}")).send().await?.bytes().await?,
            )?;
            if shown["status"] == "succeeded" {
                break;
            }
            if shown["status"] == "failed" || std::time::Instant::now() > deadline {
                return Err(format!("the run did not succeed: {shown:#}").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let (_, after) = state(client.clone(), base.clone()).await?;
    assert_eq!(after["values"], json!({ "runs": 2, "note": "never" }), "{after}");
    assert_eq!(after["run"], json!(last_run), "{after}");
    assert_eq!(after["step"], "c", "{after}");
    assert!(after["version"].as_u64().is_some_and(|v| v >= 2), "{after}");

    let missing = client.get(format!("{base}/api/workflows/nope/state")).send().await?;
    assert_eq!(missing.status(), 404);
    server.shutdown().await;
    Ok(())
}
