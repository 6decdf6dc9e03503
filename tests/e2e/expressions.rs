//! Hostile expressions end to end: each runaway fails its own step, in
//! bounded time, naming the field and the budget, while the engine, the
//! other runs and `weft serve` go on; a cancel or a shutdown reaches an
//! evaluation that is running.

use std::time::{Duration, Instant};

use serde_json::Value;
use weft::executor::Executor;
use weft::runtime::InstanceLimits;
use weft::serve::{RunningServer, ServeConfig};
use weft::store::Status;

use super::support::{Harness, TestResult, reopen, runtime, sandbox, stripe_override, workflow};

const CONNECTION: &str = "[workflow]\nname = \"hostile\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\n";

/// Regression for expressions that ran for minutes (`last(range(1e18))`
/// ignored the step's timeout), filled memory (`repeat(1)`) or overflowed
/// the stack: in `when`, `for_each`, `map` and a template, each fails its
/// step with the field and the budget, within the step's timeout.
#[tokio::test]
async fn a_runaway_expression_fails_its_step_naming_the_field_and_the_budget() -> TestResult {
    let sandbox = sandbox(20).await?;
    let harness = Harness::new()?;
    let cases = [
        (
            "when = \"last(range(1e18)) > 0\"\nget = \"stripe.customers\"\nkey = \"cus_x\"",
            "when: the expression `last(range(1e18)) > 0`",
        ),
        (
            "when = \"def f: 1 + f; f\"\nget = \"stripe.customers\"\nkey = \"cus_x\"",
            "when: the expression `def f: 1 + f; f` recursed deeper",
        ),
        (
            "for_each = \"[range(1e9)]\"\nupsert = \"stripe.customers\"\nrecord = { email = \"x@example.com\" }",
            "for_each: the expression `[range(1e9)]`",
        ),
        (
            "for_each = \"repeat(1)\"\nupsert = \"stripe.customers\"\nrecord = { email = \"x@example.com\" }",
            "for_each: the expression `repeat(1)`",
        ),
        ("list = \"stripe.customers\"\nmap = \"def f: f; f\"", "map: the expression `def f: f; f`"),
        (
            "upsert = \"stripe.customers\"\nrecord = { email = \"${{ \\\"x\\\" * 1000000000000 }}\" }",
            "record.email: the expression `\"x\" * 1000000000000` exceeded its budget of 64 MiB of values produced",
        ),
        (
            "get = \"stripe.customers\"\nkey = \"${{ [limit(1e9; repeat(\\\"k\\\"))] | add }}\"",
            "key: the expression",
        ),
        // Templates of a for-each are rendered a batch at a time: one that
        // runs out on every item costs the few failures that stop the
        // for-each, not a batch's worth of budgets.
        (
            "for_each = \"range(1000)\"\nconcurrency = 16\nupsert = \"stripe.customers\"\nrecord = { email = \"${{ def f: f; f }}\" }",
            "record.email: the expression `def f: f; f`",
        ),
    ];
    for (step, expected) in cases {
        let text = format!("{CONNECTION}\n[[step]]\nid = \"runaway\"\ntimeout = \"3s\"\n{step}\n");
        let started = Instant::now();
        let summary = harness.run(&text, &stripe_override(&sandbox)).await?;
        let elapsed = started.elapsed();
        assert_eq!(summary.status, Status::Failed, "{step}: {summary:#?}");
        let error = summary.steps[0].error.clone().unwrap_or_default();
        assert!(error.contains(expected), "{step}:\n{error}");
        assert!(error.contains("budget") || error.contains("stack"), "{step}:\n{error}");
        assert!(elapsed < Duration::from_secs(30), "{step} took {elapsed:?}");
    }
    // Refused when the workflow loads, never run.
    for denied in ["halt", "halt_error", "env.HOME"] {
        let text = format!(
            "{CONNECTION}\n[[step]]\nid = \"x\"\nwhen = \"{denied}\"\nget = \"stripe.customers\"\nkey = \"cus_x\"\n"
        );
        let err =
            workflow(harness.files.path(), &text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("is not available in expressions"), "{denied}: {err}");
    }
    // And the engine is fine: an ordinary run after all of them.
    let fine = format!(
        "{CONNECTION}\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\nmap = \"{{id, email}}\"\n"
    );
    let summary = harness.run(&fine, &stripe_override(&sandbox)).await?;
    assert_eq!(
        (summary.status, summary.steps[0].counts.read),
        (Status::Succeeded, 20),
        "{summary:#?}"
    );
    Ok(())
}

async fn serve(
    state: &std::path::Path,
    workflows: Vec<weft::workflow::Workflow>,
) -> TestResult<RunningServer> {
    // The second start follows a server of this process closing the store.
    let executor = Executor::new(runtime(InstanceLimits::default())?, reopen(state)?);
    let config = ServeConfig {
        bind: "127.0.0.1:0".parse()?,
        workflows,
        shutdown_grace: Duration::from_secs(10),
        address_file: None,
        ..ServeConfig::default()
    };
    Ok(weft::serve::start(executor, config).await?)
}

async fn post(client: &reqwest::Client, url: String) -> TestResult<Value> {
    let response =
        client.post(url).header("content-type", "application/json").body("{}").send().await?;
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

async fn status(client: &reqwest::Client, base: &str, run: &str) -> TestResult<Value> {
    Ok(serde_json::from_slice(
        &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
    )?)
}

/// Regression: evaluations ran on the async workers, so two runaway runs
/// froze a two-worker server, and SIGTERM did not stop them. Here the
/// server runs on this test's single thread: with three runaway runs going
/// it still answers, a cancel ends one within moments, and a shutdown
/// leaves the others to resume.
#[tokio::test]
async fn a_served_run_with_a_runaway_expression_is_cancelled_or_shut_down_promptly() -> TestResult {
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    // Twenty seconds of time budget: in a debug build the steps last longer
    // than the waits below, so only a stop or that budget ends it.
    let key = files.path().join("stripe-key");
    std::fs::write(&key, "sk_test_unused")?;
    // No request is ever made: the step never gets past its `when`.
    let text = format!(
        "[workflow]\nname = \"hostile\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"file:{}\"\nbase_url = \"http://127.0.0.1:9\"\n\n[[step]]\nid = \"spin\"\ntimeout = \"20s\"\nwhen = \"def f: f; f\"\nget = \"stripe.customers\"\nkey = \"cus_x\"\n",
        key.display()
    );
    let wf = workflow(files.path(), &text)?;
    let server = serve(state.path(), vec![wf.clone()]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = post(&client, format!("{base}/api/workflows/hostile/runs")).await?;
        runs.push(started["run_id"].as_str().ok_or("a run id")?.to_owned());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        let asked = Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(2),
            client.get(format!("{base}/healthz")).send(),
        )
        .await??;
        assert_eq!(health.status(), 200);
        assert!(asked.elapsed() < Duration::from_secs(2));
    }
    assert_eq!(status(&client, &base, &runs[0]).await?["status"], "running");

    let asked = Instant::now();
    post(&client, format!("{base}/api/runs/{}/cancel", runs[0])).await?;
    loop {
        let run = status(&client, &base, &runs[0]).await?;
        if run["status"] == "cancelled" {
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(3), "not cancelled yet: {run:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let asked = Instant::now();
    server.shutdown().await;
    assert!(asked.elapsed() < Duration::from_secs(3), "shutdown took {:?}", asked.elapsed());
    {
        let store = reopen(state.path())?;
        assert_eq!(store.run(&runs[0]).await?.status, Status::Cancelled);
        for run in &runs[1..] {
            assert_eq!(store.run(run).await?.status, Status::Running, "left to resume");
        }
    }

    // The next start resumes both: the server answers while they spin, and
    // each ends failed on its budget instead of freezing it again.
    let server = serve(state.path(), vec![wf]).await?;
    let base = format!("http://{}", server.addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health =
        tokio::time::timeout(Duration::from_secs(2), client.get(format!("{base}/healthz")).send())
            .await??;
    assert_eq!(health.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    for run in &runs[1..] {
        loop {
            let status = status(&client, &base, run).await?;
            if status["status"] != "running" {
                assert_eq!(status["status"], "failed", "{status:#}");
                let error = status["error"].as_str().unwrap_or_default();
                assert!(
                    error.contains("when: the expression `def f: f; f`")
                        && error.contains("budget"),
                    "{error}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "{run} still running: {status:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    server.shutdown().await;
    Ok(())
}
