//! `weft serve` in process: signed webhooks, cron with its overlap policy,
//! the status API, and a shutdown that leaves runs to resume at the next
//! start. Real HTTP on loopback, a real sled store, real components.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::executor::Executor;
use weft::runtime::SandboxLimits;
use weft::serve::webhook::{hmac_signature, stripe_signature};
use weft::serve::{RunningServer, ServeConfig};
use weft::store::RunStore;
use weft_sandbox::limits::FaultConfig;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::support::{TestResult, runtime, workflow};

const SECRET: &str = "whsec_weft_test_secret";

async fn start(state: &std::path::Path, workflows: Vec<weft::workflow::Workflow>) -> TestResult<RunningServer> {
    let executor = Executor::new(runtime(SandboxLimits::default())?, RunStore::open(state)?);
    let config = ServeConfig { bind: "127.0.0.1:0".parse()?, workflows, shutdown_grace: Duration::from_secs(10), address_file: None };
    Ok(weft::serve::start(executor, config).await?)
}

async fn stripe(faults: FaultConfig, seed: usize) -> TestResult<(StripeEmulator, weft_sandbox::server::RunningServer)> {
    let emulator = StripeEmulator::new(StripeConfig { seed, faults, ..StripeConfig::default() });
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server))
}

fn secret_file(dir: &std::path::Path) -> TestResult<String> {
    let path = dir.join("webhook-secret");
    std::fs::write(&path, SECRET)?;
    Ok(format!("file:{}", path.display()))
}

fn hook_workflow(dir: &std::path::Path, base_url: &str, verify: &str) -> TestResult<weft::workflow::Workflow> {
    let secret = secret_file(dir)?;
    let key = dir.join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let verify = match verify {
        "stripe" => "verify = \"stripe\"".to_owned(),
        _ => "verify = \"hmac-sha256\"\nheader = \"X-Weft-Signature\"".to_owned(),
    };
    let text = format!(
        r#"
[workflow]
name = "on-signup"

[trigger.webhook]
{verify}
secret = "{secret}"
max_body_bytes = 4096

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{base_url}"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = {{ email = "${{{{ .inputs.data.object.email }}}}", name = "${{{{ .inputs.data.object.name }}}}" }}
"#,
        key = key.display()
    );
    workflow(dir, &text)
}

async fn wait_finished(client: &reqwest::Client, base: &str, run: &str) -> TestResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = serde_json::from_slice(&client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?)?;
        if !matches!(body["status"].as_str(), Some("running" | "pending")) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            return Err(format!("run {run} did not finish: {body}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(email: &str) -> Vec<u8> {
    json!({"id": "evt_1", "type": "customer.created", "data": {"object": {"email": email, "name": "Hooked"}}}).to_string().into_bytes()
}

#[tokio::test]
async fn a_signed_stripe_webhook_runs_and_bad_stale_replayed_or_oversized_ones_start_nothing() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = start(state.path(), vec![hook_workflow(files.path(), &stripe_server.base_url(), "stripe")?]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let post = |body: Vec<u8>, signature: Option<String>| {
        let mut request = client.post(format!("{base}/hooks/on-signup")).body(body);
        if let Some(signature) = signature {
            request = request.header("Stripe-Signature", signature);
        }
        request.send()
    };

    let body = event("hook@example.com");
    let good = post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now))).await?;
    assert_eq!(good.status(), 202);
    let accepted: Value = serde_json::from_slice(&good.bytes().await?)?;
    let run = accepted["run_id"].as_str().ok_or("a run id")?.to_owned();
    let finished = wait_finished(&client, &base, &run).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    assert_eq!(finished["trigger"], "webhook");
    assert_eq!(emulator.customer_count(), 1);
    assert_eq!(emulator.customers()[0]["email"], "hook@example.com", "the event became the run's inputs");

    // The same delivery again: a replay.
    let replay = post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now))).await?;
    assert_eq!(replay.status(), 409);
    // Signed with another secret.
    let forged = post(body.clone(), Some(stripe_signature(&body, b"whsec_other", now))).await?;
    assert_eq!(forged.status(), 401);
    // Unsigned.
    assert_eq!(post(body.clone(), None).await?.status(), 401);
    // Signed, but ten minutes old.
    let stale = post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now - 600))).await?;
    assert_eq!(stale.status(), 400);
    assert!(String::from_utf8_lossy(&stale.bytes().await?).contains("outside the tolerance"));
    // Over the 4 KiB cap.
    let big = json!({"data": {"object": {"email": "x@example.com", "name": "x".repeat(8192)}}}).to_string().into_bytes();
    let oversize = post(big.clone(), Some(stripe_signature(&big, SECRET.as_bytes(), now))).await?;
    assert_eq!(oversize.status(), 413);
    // No such hook.
    assert_eq!(client.post(format!("{base}/hooks/nope")).body("{}").send().await?.status(), 404);

    let runs: Value = serde_json::from_slice(&client.get(format!("{base}/api/runs")).send().await?.bytes().await?)?;
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "only the good delivery started a run: {runs:#}");
    assert_eq!(emulator.customer_count(), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_generic_hmac_webhook_verifies_the_body() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = start(state.path(), vec![hook_workflow(files.path(), &stripe_server.base_url(), "hmac")?]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let body = event("hmac@example.com");
    let signature = format!("sha256={}", hmac_signature(&body, SECRET.as_bytes(), None));
    let good = client.post(format!("{base}/hooks/on-signup")).header("X-Weft-Signature", signature).body(body.clone()).send().await?;
    assert_eq!(good.status(), 202);
    let run: Value = serde_json::from_slice(&good.bytes().await?)?;
    let finished = wait_finished(&client, &base, run["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    let bad = client.post(format!("{base}/hooks/on-signup")).header("X-Weft-Signature", "00ff").body(body).send().await?;
    assert_eq!(bad.status(), 401);
    assert_eq!(emulator.customer_count(), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn cron_runs_on_schedule_and_skips_a_firing_while_the_last_run_is_going() -> TestResult {
    // Every request takes 1.5 s, so each run outlasts the one-second schedule.
    let (_emulator, stripe_server) = stripe(FaultConfig { latency_ms: 1500, ..FaultConfig::default() }, 3).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let text = format!(
        "[workflow]\nname = \"every-second\"\n\n[trigger]\ncron = \"* * * * * *\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"file:{}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n",
        key.display(),
        stripe_server.base_url()
    );
    let server = start(state.path(), vec![workflow(files.path(), &text)?]).await?;
    let base = format!("http://{}", server.addr);
    tokio::time::sleep(Duration::from_millis(4600)).await;
    let client = reqwest::Client::new();
    let workflows: Value = serde_json::from_slice(&client.get(format!("{base}/api/workflows")).send().await?.bytes().await?)?;
    server.shutdown().await;

    let info = &workflows[0];
    let fired = info["fired"].as_u64().unwrap_or(0);
    let skipped = info["skipped_firings"].as_u64().unwrap_or(0);
    assert!(fired >= 2, "{info:#}");
    assert!(skipped >= 1, "a firing during a run was skipped: {info:#}");
    assert!(info["next_firing"].is_string());

    let store = RunStore::open(state.path())?;
    let mut runs = store.runs()?;
    runs.sort_by_key(|r| r.created_ms);
    assert_eq!(runs.len() as u64, fired);
    for pair in runs.windows(2) {
        let finished = pair[0].finished_ms.unwrap_or(u64::MAX);
        assert!(pair[1].created_ms >= finished, "runs overlapped: {} started before {} finished", pair[1].id, pair[0].id);
    }
    Ok(())
}

#[tokio::test]
async fn the_status_api_starts_runs_with_inputs_and_reports_them() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let text = format!(
        "[workflow]\nname = \"manual\"\n\n[inputs.email]\ntype = \"string\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"file:{}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"c\"\nupsert = \"stripe.customers\"\nrecord = {{ email = \"${{{{ .inputs.email }}}}\" }}\n",
        key.display(),
        stripe_server.base_url()
    );
    let server = start(state.path(), vec![workflow(files.path(), &text)?]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let health: Value = serde_json::from_slice(&client.get(format!("{base}/healthz")).send().await?.bytes().await?)?;
    assert_eq!(health["status"], "ok");

    let bad = client.post(format!("{base}/api/workflows/manual/runs")).body(r#"{"email": 3}"#).send().await?;
    assert_eq!(bad.status(), 422);
    let dry = client.post(format!("{base}/api/workflows/manual/runs?dry_run=true")).body(r#"{"email": "api@example.com"}"#).send().await?;
    assert_eq!(dry.status(), 202);
    let dry: Value = serde_json::from_slice(&dry.bytes().await?)?;
    let dry = wait_finished(&client, &base, dry["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!((dry["status"].as_str(), dry["dry_run"].as_bool()), (Some("succeeded"), Some(true)), "{dry:#}");
    assert_eq!(emulator.customer_count(), 0, "a dry run writes nothing");

    let real = client.post(format!("{base}/api/workflows/manual/runs")).body(r#"{"email": "api@example.com"}"#).send().await?;
    let real: Value = serde_json::from_slice(&real.bytes().await?)?;
    let real = wait_finished(&client, &base, real["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(real["status"], "succeeded", "{real:#}");
    assert_eq!(real["steps"][0]["counts"]["created"], 1);
    assert_eq!(emulator.customer_count(), 1);
    assert_eq!(client.get(format!("{base}/api/runs/nope")).send().await?.status(), 404);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_shutdown_leaves_the_run_to_the_next_start_which_resumes_it() -> TestResult {
    // Slow writes, so the shutdown lands mid-run.
    let (emulator, stripe_server) = stripe(FaultConfig { latency_ms: 40, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    let text = format!(
        "[workflow]\nname = \"slow-batch\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"file:{}\"\nbase_url = \"{}\"\nrate_limit = \"1000/s\"\n\n[[step]]\nid = \"create\"\nfor_each = \"[range(0; 40)]\"\nconcurrency = 2\nupsert = \"stripe.customers\"\nrecord = {{ email = \"slow${{{{ $item }}}}@example.com\" }}\n",
        key.display(),
        stripe_server.base_url()
    );
    let wf = workflow(files.path(), &text)?;
    let server = start(state.path(), vec![wf.clone()]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let started: Value = serde_json::from_slice(&client.post(format!("{base}/api/workflows/slow-batch/runs")).send().await?.bytes().await?)?;
    let run = started["run_id"].as_str().ok_or("run id")?.to_owned();
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.shutdown().await;
    let made = emulator.customer_count();
    assert!(made > 0 && made < 40, "shut down mid-run: {made} of 40");
    {
        let store = RunStore::open(state.path())?;
        assert_eq!(store.run(&run)?.status, weft::store::Status::Running, "left to resume");
    }

    let server = start(state.path(), vec![wf]).await?;
    let base = format!("http://{}", server.addr);
    let finished = wait_finished(&client, &base, &run).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    assert_eq!(finished["resumes"], 1);
    assert_eq!(emulator.customer_count(), 40, "each customer once");
    server.shutdown().await;
    Ok(())
}
