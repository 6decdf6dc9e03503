//! `weft serve` in process: signed webhooks, cron with its overlap policy,
//! the status API, and a shutdown that leaves runs to resume at the next
//! start. Real HTTP on loopback, a real sled store, real components.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::executor::Executor;
use weft::runtime::InstanceLimits;
use weft::serve::webhook::{hmac_signature, stripe_signature};
use weft::serve::{RunningServer, ServeConfig};
use weft_sandbox::limits::FaultConfig;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::support::{TestResult, reopen, runtime, workflow};

pub(super) const SECRET: &str = "whsec_weft_test_secret";

async fn start(
    state: &std::path::Path,
    workflows: Vec<weft::workflow::Workflow>,
) -> TestResult<RunningServer> {
    start_with(state, ServeConfig { workflows, ..config()? }).await
}

pub(super) fn config() -> TestResult<ServeConfig> {
    Ok(ServeConfig {
        bind: "127.0.0.1:0".parse()?,
        shutdown_grace: Duration::from_secs(10),
        ..ServeConfig::default()
    })
}

pub(super) async fn start_with(
    state: &std::path::Path,
    config: ServeConfig,
) -> TestResult<RunningServer> {
    // The store may have just been closed by this process (tokens made
    // before, or a server before this one).
    let executor = Executor::new(runtime(InstanceLimits::default())?, reopen(state)?);
    Ok(weft::serve::start(executor, config).await?)
}

/// A POST to the API, as `weft runs` and a console send it.
pub(super) fn post_json(
    client: &reqwest::Client,
    url: String,
    body: &str,
) -> reqwest::RequestBuilder {
    client.post(url).header("content-type", "application/json").body(body.to_owned())
}

pub(super) async fn stripe(
    faults: FaultConfig,
    seed: usize,
) -> TestResult<(StripeEmulator, weft_sandbox::server::RunningServer)> {
    let emulator = StripeEmulator::new(StripeConfig { seed, faults, ..StripeConfig::default() });
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server))
}

pub(super) fn secret_file(dir: &std::path::Path) -> TestResult<String> {
    let path = dir.join("webhook-secret");
    std::fs::write(&path, SECRET)?;
    Ok(format!("file:{}", path.display()))
}

fn hook_workflow(
    dir: &std::path::Path,
    base_url: &str,
    verify: &str,
) -> TestResult<weft::workflow::Workflow> {
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

pub(super) async fn wait_finished(
    client: &reqwest::Client,
    base: &str,
    run: &str,
) -> TestResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body: Value = serde_json::from_slice(
            &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
        )?;
        if !matches!(body["status"].as_str(), Some("running" | "pending")) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            return Err(format!("run {run} did not finish: {body}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first workflow of `GET /api/workflows` once `ready` holds for it
/// (polled, so the test waits for what it checks, not for a guessed time).
async fn workflow_info_once(
    client: &reqwest::Client,
    base: &str,
    ready: impl Fn(&Value) -> bool,
) -> TestResult<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workflows: Value = serde_json::from_slice(
            &client.get(format!("{base}/api/workflows")).send().await?.bytes().await?,
        )?;
        if ready(&workflows[0]) {
            return Ok(workflows[0].clone());
        }
        if Instant::now() > deadline {
            return Err(format!("not reached in 30 s: {workflows:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn event(email: &str) -> Vec<u8> {
    json!({"id": "evt_1", "type": "customer.created", "data": {"object": {"email": email, "name": "Hooked"}}}).to_string().into_bytes()
}

#[tokio::test]
async fn a_signed_stripe_webhook_runs_and_bad_stale_replayed_or_oversized_ones_start_nothing()
-> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = start(
        state.path(),
        vec![hook_workflow(files.path(), &stripe_server.base_url(), "stripe")?],
    )
    .await?;
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
    assert_eq!(
        emulator.customers()[0]["email"],
        "hook@example.com",
        "the event became the run's inputs"
    );

    // The same delivery again: a replay.
    let replay = post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now))).await?;
    assert_eq!(replay.status(), 409);
    // Signed with another secret.
    let forged = post(body.clone(), Some(stripe_signature(&body, b"whsec_other", now))).await?;
    assert_eq!(forged.status(), 401);
    // Unsigned.
    assert_eq!(post(body.clone(), None).await?.status(), 401);
    // Signed, but ten minutes old.
    let stale =
        post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now - 600))).await?;
    assert_eq!(stale.status(), 400);
    assert!(String::from_utf8_lossy(&stale.bytes().await?).contains("outside the tolerance"));
    // Over the 4 KiB cap.
    let big = json!({"data": {"object": {"email": "x@example.com", "name": "x".repeat(8192)}}})
        .to_string()
        .into_bytes();
    let oversize = post(big.clone(), Some(stripe_signature(&big, SECRET.as_bytes(), now))).await?;
    assert_eq!(oversize.status(), 413);
    // No such hook.
    assert_eq!(client.post(format!("{base}/hooks/nope")).body("{}").send().await?.status(), 404);

    let runs: Value = serde_json::from_slice(
        &client.get(format!("{base}/api/runs")).send().await?.bytes().await?,
    )?;
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "only the good delivery started a run: {runs:#}"
    );
    assert_eq!(emulator.customer_count(), 1);

    // Stripe's retry of the same event is signed anew: a new signature,
    // the same event id. It is answered 200 (so Stripe stops retrying) and
    // starts nothing; another event starts a run.
    let retry =
        post(body.clone(), Some(stripe_signature(&body, SECRET.as_bytes(), now + 1))).await?;
    assert_eq!(retry.status(), 200);
    let retry: Value = serde_json::from_slice(&retry.bytes().await?)?;
    assert_eq!(retry["duplicate"], true, "{retry}");
    let other = json!({"id": "evt_2", "type": "customer.created", "data": {"object": {"email": "second@example.com", "name": "Two"}}}).to_string().into_bytes();
    let second =
        post(other.clone(), Some(stripe_signature(&other, SECRET.as_bytes(), now + 1))).await?;
    assert_eq!(second.status(), 202);
    let second: Value = serde_json::from_slice(&second.bytes().await?)?;
    wait_finished(&client, &base, second["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(emulator.customer_count(), 2, "one customer per event");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_webhook_that_names_its_event_id_refuses_a_body_without_one() -> TestResult {
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = hook_workflow(files.path(), &stripe_server.base_url(), "hmac")?;
    let text = wf
        .text
        .replace("max_body_bytes = 4096", "max_body_bytes = 4096\nevent_id = \"meta.delivery\"");
    let wf = workflow(files.path(), &text)?;
    let server = start(state.path(), vec![wf]).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let send = |body: Vec<u8>| {
        let signature = format!("sha256={}", hmac_signature(&body, SECRET.as_bytes(), None));
        client
            .post(format!("{base}/hooks/on-signup"))
            .header("X-Weft-Signature", signature)
            .body(body)
            .send()
    };
    let without = send(event("no-id@example.com")).await?;
    assert_eq!(without.status(), 400);
    assert!(String::from_utf8_lossy(&without.bytes().await?).contains("meta.delivery"));
    let with = |n: u64, name: &str| {
        json!({"meta": {"delivery": n}, "data": {"object": {"email": "id@example.com", "name": name}}}).to_string().into_bytes()
    };
    assert_eq!(send(with(7, "first")).await?.status(), 202);
    // The same delivery id with another body (so another signature).
    assert_eq!(send(with(7, "changed")).await?.status(), 200);
    assert_eq!(send(with(8, "next")).await?.status(), 202);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_generic_hmac_webhook_verifies_the_body() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server =
        start(state.path(), vec![hook_workflow(files.path(), &stripe_server.base_url(), "hmac")?])
            .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let body = event("hmac@example.com");
    let signature = format!("sha256={}", hmac_signature(&body, SECRET.as_bytes(), None));
    let good = client
        .post(format!("{base}/hooks/on-signup"))
        .header("X-Weft-Signature", signature)
        .body(body.clone())
        .send()
        .await?;
    assert_eq!(good.status(), 202);
    let run: Value = serde_json::from_slice(&good.bytes().await?)?;
    let finished =
        wait_finished(&client, &base, run["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    let bad = client
        .post(format!("{base}/hooks/on-signup"))
        .header("X-Weft-Signature", "00ff")
        .body(body)
        .send()
        .await?;
    assert_eq!(bad.status(), 401);
    assert_eq!(emulator.customer_count(), 1);
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn cron_runs_on_schedule_and_skips_a_firing_while_the_last_run_is_going() -> TestResult {
    // Every request takes 1.5 s, so each run outlasts the one-second schedule.
    let (_emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 1500, ..FaultConfig::default() }, 3).await?;
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
    let client = reqwest::Client::new();
    let info = workflow_info_once(&client, &base, |info| {
        info["fired"].as_u64().unwrap_or(0) >= 2
            && info["skipped_firings"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    server.shutdown().await;
    let info = &info?;
    let fired = info["fired"].as_u64().unwrap_or(0);
    let skipped = info["skipped_firings"].as_u64().unwrap_or(0);
    assert!(fired >= 2, "{info:#}");
    assert!(skipped >= 1, "a firing during a run was skipped: {info:#}");
    assert!(info["next_firing"].is_string());

    let store = super::support::reopen(state.path())?;
    let mut runs = store.runs().await?;
    runs.sort_by_key(|r| r.created_ms);
    assert_eq!(runs.len() as u64, fired);
    for pair in runs.windows(2) {
        let finished = pair[0].finished_ms.unwrap_or(u64::MAX);
        assert!(
            pair[1].created_ms >= finished,
            "runs overlapped: {} started before {} finished",
            pair[1].id,
            pair[0].id
        );
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
    let health: Value = serde_json::from_slice(
        &client.get(format!("{base}/healthz")).send().await?.bytes().await?,
    )?;
    assert_eq!(health["status"], "ok");

    let bad = post_json(&client, format!("{base}/api/workflows/manual/runs"), r#"{"email": 3}"#)
        .send()
        .await?;
    assert_eq!(bad.status(), 422);
    let dry = post_json(
        &client,
        format!("{base}/api/workflows/manual/runs?dry_run=true"),
        r#"{"email": "api@example.com"}"#,
    )
    .send()
    .await?;
    assert_eq!(dry.status(), 202);
    let dry: Value = serde_json::from_slice(&dry.bytes().await?)?;
    let dry = wait_finished(&client, &base, dry["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(
        (dry["status"].as_str(), dry["dry_run"].as_bool()),
        (Some("succeeded"), Some(true)),
        "{dry:#}"
    );
    assert_eq!(emulator.customer_count(), 0, "a dry run writes nothing");

    let real = post_json(
        &client,
        format!("{base}/api/workflows/manual/runs"),
        r#"{"email": "api@example.com"}"#,
    )
    .send()
    .await?;
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
    let (emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 40, ..FaultConfig::default() }, 0).await?;
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
    let started: Value = serde_json::from_slice(
        &post_json(&client, format!("{base}/api/workflows/slow-batch/runs"), "")
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let run = started["run_id"].as_str().ok_or("run id")?.to_owned();
    // Shut down once the run has written something, mid-run.
    let deadline = Instant::now() + Duration::from_secs(30);
    while emulator.customer_count() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
    let made = emulator.customer_count();
    assert!(made > 0 && made < 40, "shut down mid-run: {made} of 40");
    {
        let store = super::support::reopen(state.path())?;
        assert_eq!(store.run(&run).await?.status, weft::store::Status::Running, "left to resume");
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

pub(super) fn key_file(dir: &std::path::Path) -> TestResult<String> {
    let key = dir.join("stripe-key");
    std::fs::write(&key, SANDBOX_API_KEY)?;
    Ok(format!("file:{}", key.display()))
}

/// A workflow that upserts one Stripe customer, the email its input, on the
/// API and (HMAC without a timestamp) on a webhook.
pub(super) fn upsert_workflow(
    dir: &std::path::Path,
    name: &str,
    base_url: &str,
    max_body_bytes: usize,
) -> TestResult<weft::workflow::Workflow> {
    let text = format!(
        r#"
[workflow]
name = "{name}"

[inputs.email]
type = "string"

[trigger.webhook]
verify = "hmac-sha256"
header = "X-Weft-Signature"
secret = "{secret}"
max_body_bytes = {max_body_bytes}

[connections.stripe]
plugin = "stripe"
credentials = "{key}"
base_url = "{base_url}"
rate_limit = "10000/s"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = {{ email = "${{{{ .inputs.email }}}}" }}
"#,
        secret = secret_file(dir)?,
        key = key_file(dir)?,
    );
    workflow(dir, &text)
}

/// A server on a runtime of its own, as a separate process would be: a
/// server that stops answering cannot stall the test's clients and timers.
struct Isolated {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

async fn start_isolated(state: std::path::PathBuf, config: ServeConfig) -> TestResult<Isolated> {
    let (ready, started) = std::sync::mpsc::channel::<Result<std::net::SocketAddr, String>>();
    let (stop, stop_requested) = tokio::sync::oneshot::channel::<()>();
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        runtime.block_on(async move {
            match start_with(&state, config).await {
                Ok(server) => {
                    let _ = ready.send(Ok(server.addr));
                    let _ = stop_requested.await;
                    server.shutdown().await;
                    let _ = done.send(());
                }
                Err(e) => {
                    let _ = ready.send(Err(e.to_string()));
                }
            }
        });
    });
    let addr = tokio::task::spawn_blocking(move || started.recv_timeout(Duration::from_secs(120)))
        .await??
        .map_err(|e| format!("the server did not start: {e}"))?;
    Ok(Isolated { addr, stop: Some(stop), stopped, thread })
}

impl Isolated {
    /// Shuts the server down as SIGTERM would; fails if that takes longer
    /// than `bound`.
    async fn shutdown(mut self, bound: Duration) -> TestResult {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(bound, &mut self.stopped)
            .await
            .map_err(|_| format!("the server did not shut down within {bound:?}"))??;
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| "the server's thread panicked")?;
        Ok(())
    }
}

/// How long `/healthz` may take to answer, at most, while the server is
/// under a burst: a debug build, on two cores shared with other work (the
/// deadlock this guards against never answered at all).
const HEALTH_BOUND: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_run_starts_is_answered_and_the_server_stays_responsive() -> TestResult {
    // Regression: 500 starts at 50 concurrent deadlocked weft serve (both
    // async workers inside sled, every sled thread in flush_async):
    // /healthz stopped answering and SIGTERM was ignored.
    const STARTS: usize = 500;
    const CONCURRENT: usize = 50;
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = upsert_workflow(files.path(), "burst", &stripe_server.base_url(), 4096)?;
    let config =
        ServeConfig { workflows: vec![wf], max_runs: 64, max_concurrent_runs: 8, ..config()? };
    let server = start_isolated(state.path().to_path_buf(), config).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    // /healthz, polled all through the burst.
    let done = flag();
    let health = {
        let (client, base, done) = (client.clone(), base.clone(), done.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut polls = 0u32;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                let answer =
                    client.get(format!("{base}/healthz")).timeout(HEALTH_BOUND).send().await;
                match answer {
                    Ok(response) if response.status() == 200 => {}
                    Ok(response) => return Err(format!("/healthz answered {}", response.status())),
                    Err(e) => {
                        return Err(format!(
                            "/healthz did not answer within {HEALTH_BOUND:?} after {polls} polls: {e}"
                        ));
                    }
                }
                slowest = slowest.max(asked.elapsed());
                polls += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok((polls, slowest))
        })
    };

    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut starts = tokio::task::JoinSet::new();
    for i in 0..STARTS {
        let (client, base, slots) = (client.clone(), base.clone(), slots.clone());
        starts.spawn(async move {
            let _slot = slots.acquire_owned().await.map_err(|e| e.to_string())?;
            // A refused start is sent again after its Retry-After, as a
            // well-behaved client does, so every start ends up a run and
            // the store sees all 500.
            let mut refusals = 0u32;
            loop {
                let response = post_json(&client, format!("{base}/api/workflows/burst/runs"), &format!(r#"{{"email": "burst{i}@example.com"}}"#))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_err(|e| format!("start {i} was not answered: {e}"))?;
                let status = response.status().as_u16();
                let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
                let body: Value = serde_json::from_slice(&response.bytes().await.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
                match (status, retry_after, body["run_id"].as_str()) {
                    (202, _, Some(id)) => return Ok::<_, String>((id.to_owned(), refusals)),
                    (503, Some(secs), _) if refusals < 120 => {
                        refusals += 1;
                        tokio::time::sleep(Duration::from_secs(secs)).await;
                    }
                    other => return Err(format!("start {i} was answered {other:?}; only 202 with a run id or 503 with Retry-After are right")),
                }
            }
        });
    }
    let mut accepted = std::collections::BTreeSet::new();
    let mut refused = 0;
    while let Some(answer) = starts.join_next().await {
        let (id, refusals) = answer??;
        accepted.insert(id);
        refused += refusals;
    }
    assert_eq!(accepted.len(), STARTS, "every start ended up a run");

    // Every admitted run reaches its end.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let health: Value = serde_json::from_slice(
            &client
                .get(format!("{base}/healthz"))
                .timeout(HEALTH_BOUND)
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        if health["active_runs"] == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("admitted runs did not finish: {health}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (polls, slowest) = health.await??;
    eprintln!(
        "{} runs, {refused} refusals (503) on the way; /healthz answered {polls} polls, slowest {slowest:?}",
        accepted.len()
    );
    server.shutdown(Duration::from_secs(30)).await?;

    let store = super::support::reopen(state.path())?;
    let runs = store.runs().await?;
    let recorded: std::collections::BTreeSet<String> = runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(recorded, accepted, "every 202 is a run, and a 503 left none");
    for run in &runs {
        assert_eq!(run.status, weft::store::Status::Succeeded, "{run:?}");
    }
    assert_eq!(emulator.customer_count(), accepted.len(), "each admitted run wrote once");
    Ok(())
}

/// A flag shared with a task.
fn flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_answers_503_with_retry_after_and_a_refused_delivery_can_be_sent_again()
-> TestResult {
    // Every request takes 800 ms: the one run slot stays taken a while.
    let (emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 800, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = upsert_workflow(files.path(), "one-at-a-time", &stripe_server.base_url(), 4096)?;
    let server =
        start_with(state.path(), ServeConfig { workflows: vec![wf], max_runs: 1, ..config()? })
            .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let deliver = |body: &str| {
        let signature = hmac_signature(body.as_bytes(), SECRET.as_bytes(), None);
        client
            .post(format!("{base}/hooks/one-at-a-time"))
            .header("X-Weft-Signature", signature)
            .body(body.to_owned())
            .send()
    };

    // A delivery the workflow refuses (422) is not remembered: sent again,
    // it is refused for the same reason, not as a replay.
    let wrong = r#"{"email": 3}"#;
    assert_eq!(deliver(wrong).await?.status(), 422);
    assert_eq!(deliver(wrong).await?.status(), 422, "a refused delivery is not burnt");

    let first = post_json(
        &client,
        format!("{base}/api/workflows/one-at-a-time/runs"),
        r#"{"email": "first@example.com"}"#,
    )
    .send()
    .await?;
    assert_eq!(first.status(), 202);
    let first: Value = serde_json::from_slice(&first.bytes().await?)?;

    // Full: refused at once, with Retry-After; /healthz still answers.
    let hooked = r#"{"email": "hook@example.com"}"#;
    let busy = deliver(hooked).await?;
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let busy = post_json(
        &client,
        format!("{base}/api/workflows/one-at-a-time/runs"),
        r#"{"email": "second@example.com"}"#,
    )
    .send()
    .await?;
    assert_eq!(busy.status(), 503);
    assert!(busy.headers().contains_key("retry-after"));
    let health: Value = serde_json::from_slice(
        &client.get(format!("{base}/healthz")).send().await?.bytes().await?,
    )?;
    assert_eq!(
        (health["active_runs"].as_u64(), health["max_runs"].as_u64()),
        (Some(1), Some(1)),
        "{health}"
    );

    wait_finished(&client, &base, first["run_id"].as_str().unwrap_or_default()).await?;
    // The run's slot is given back when its task ends, a moment after the
    // store says the run finished (its HTTP figures are written after):
    // wait for /healthz to say so, as a sender honouring Retry-After would.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health: Value = serde_json::from_slice(
            &client.get(format!("{base}/healthz")).send().await?.bytes().await?,
        )?;
        if health["active_runs"].as_u64() == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the finished run's slot was not given back: {health}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The delivery refused with 503 is accepted when sent again, once.
    let accepted = deliver(hooked).await?;
    assert_eq!(accepted.status(), 202);
    let accepted: Value = serde_json::from_slice(&accepted.bytes().await?)?;
    let finished =
        wait_finished(&client, &base, accepted["run_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    assert_eq!(deliver(hooked).await?.status(), 409, "and a replay of it is refused");
    assert_eq!(emulator.customer_count(), 2);
    server.shutdown().await;
    Ok(())
}

/// A native connector whose writes panic, standing in for any bug in a
/// run's task (a real path to a panic is a bug to fix at its source).
struct Panicking {
    manifest: weft::connector::Manifest,
}

impl Panicking {
    fn new() -> Self {
        use weft::connector::{Manifest, Op, ResourceSpec};
        let resource = ResourceSpec {
            name: "records".into(),
            description: "panics when written".into(),
            ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
            irreversible: vec![],
            max_page_size: 100,
            default_page_size: 100,
            id_field: "id".into(),
        };
        let manifest = Manifest {
            name: "boom".into(),
            version: "0".into(),
            vendor: "none".into(),
            description: "a native connector whose upsert panics".into(),
            default_base_url: "http://127.0.0.1:9".into(),
            extra_hosts: vec![],
            auth: weft::connector::AuthScheme::None,
            resources: vec![resource],
            rate_limits: vec![],
            settings: vec![],
        };
        Panicking { manifest }
    }
}

impl weft::endpoint::Endpoint for Panicking {
    fn manifest(&self) -> &weft::connector::Manifest {
        &self.manifest
    }
    fn name(&self) -> &str {
        "boom"
    }
    fn list(
        &self,
        _request: weft::connector::ListRequest,
    ) -> BoxFuture<'_, Result<weft::connector::Page, weft::runtime::RuntimeError>> {
        Box::pin(async { Ok(weft::connector::Page::default()) })
    }
    fn get<'a>(
        &'a self,
        _resource: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, weft::runtime::RuntimeError>> {
        Box::pin(async { Ok(None) })
    }
    fn upsert(
        &self,
        _request: weft::connector::UpsertRequest,
    ) -> BoxFuture<'_, Result<weft::connector::UpsertOutcome, weft::runtime::RuntimeError>> {
        Box::pin(async { panic!("the connector blew up") })
    }
    fn upsert_batch<'a>(
        &'a self,
        _resource: &'a str,
        _items: Vec<weft::connector::BatchItem>,
    ) -> BoxFuture<'a, Result<weft::endpoint::BatchOutcomes, weft::runtime::RuntimeError>> {
        Box::pin(async { panic!("the connector blew up") })
    }
    fn remove<'a>(
        &'a self,
        _resource: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<weft::connector::RemoveOutcome, weft::runtime::RuntimeError>> {
        Box::pin(async { Ok(weft::connector::RemoveOutcome::Removed) })
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_task_panics_is_marked_failed_and_leaves_the_active_set() -> TestResult {
    // Regression: a panic in a run's task left the run `running` and in
    // the active set for good, so a cron workflow with overlap = "skip" was
    // skipped at every firing after.
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let text = "[workflow]\nname = \"every-second\"\n\n[trigger]\ncron = \"* * * * * *\"\noverlap = \"skip\"\n\n[connections.boom]\nplugin = \"boom\"\n\n[[step]]\nid = \"write\"\nupsert = \"boom.records\"\nrecord = { id = \"1\" }\n";
    let endpoints = std::collections::BTreeMap::from([(
        "boom".to_owned(),
        std::sync::Arc::new(Panicking::new()) as std::sync::Arc<dyn weft::endpoint::Endpoint>,
    )]);
    let server = start_with(
        state.path(),
        ServeConfig { workflows: vec![workflow(files.path(), text)?], endpoints, ..config()? },
    )
    .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let info =
        workflow_info_once(&client, &base, |info| info["fired"].as_u64().unwrap_or(0) >= 3).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut health: Value;
    loop {
        health = serde_json::from_slice(
            &client.get(format!("{base}/healthz")).send().await?.bytes().await?,
        )?;
        if health["active_runs"] == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;

    assert!(info["fired"].as_u64().unwrap_or(0) >= 3, "every firing ran: {info:#}");
    assert_eq!(
        info["skipped_firings"], 0,
        "no firing was skipped for a run that had ended: {info:#}"
    );
    assert_eq!(health["active_runs"], 0, "{health}");
    let runs = super::support::reopen(state.path())?.runs().await?;
    assert!(runs.len() >= 3, "{runs:?}");
    for run in &runs {
        let error = run.error.as_deref().unwrap_or_default();
        assert_eq!(run.status, weft::store::Status::Failed, "{run:?}");
        assert!(
            error.contains("internal error") && error.contains("the connector blew up"),
            "{error}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_a_foreign_host_a_foreign_origin_and_a_post_that_is_not_json() -> TestResult
{
    // Regression: a POST with Host and Origin of attacker.example and
    // Content-Type text/plain (what a cross-site form or a DNS-rebinding
    // page sends) was answered 202 and ran with the attacker's inputs.
    let (emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 1000, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = upsert_workflow(files.path(), "manual", &stripe_server.base_url(), 4096)?;
    let server = start(state.path(), vec![wf]).await?;
    let port = server.addr.port();
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let start_url = format!("{base}/api/workflows/manual/runs");
    let evil = r#"{"email": "evil@example.com"}"#;
    let error_of = |body: &[u8]| {
        serde_json::from_slice::<Value>(body)
            .map(|v| v["error"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };

    let attack = client
        .post(&start_url)
        .header("host", "attacker.example")
        .header("origin", "http://attacker.example")
        .header("content-type", "text/plain")
        .body(evil)
        .send()
        .await?;
    assert_eq!(attack.status(), 421);
    let message = error_of(&attack.bytes().await?);
    assert!(message.contains("attacker.example") && message.contains("--public-url"), "{message}");
    let rebinding = post_json(&client, start_url.clone(), evil)
        .header("host", format!("attacker.example:{port}"))
        .send()
        .await?;
    assert_eq!(rebinding.status(), 421, "the right port under another name");
    let cross_site = post_json(&client, start_url.clone(), evil)
        .header("origin", "http://attacker.example")
        .send()
        .await?;
    assert_eq!(cross_site.status(), 403);
    assert!(error_of(&cross_site.bytes().await?).contains("http://attacker.example"));
    let other_port = post_json(&client, start_url.clone(), evil)
        .header("origin", "http://localhost:3000")
        .send()
        .await?;
    assert_eq!(other_port.status(), 403, "a page on another local port is another site");
    let marked = post_json(&client, start_url.clone(), evil)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await?;
    assert_eq!(marked.status(), 403);
    let form =
        client.post(&start_url).header("content-type", "text/plain").body(evil).send().await?;
    assert_eq!(form.status(), 415);
    assert!(error_of(&form.bytes().await?).contains("application/json"));
    let urlencoded = client
        .post(&start_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=evil")
        .send()
        .await?;
    assert_eq!(urlencoded.status(), 415);
    assert_eq!(
        client.post(&start_url).body(evil).send().await?.status(),
        415,
        "no Content-Type at all"
    );
    let read =
        client.get(format!("{base}/api/runs")).header("host", "attacker.example").send().await?;
    assert_eq!(read.status(), 421);
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .header("host", "attacker.example")
            .send()
            .await?
            .status(),
        200,
        "/healthz always answers"
    );

    // Its own names, and its own page's origin, are welcome.
    let own = post_json(&client, start_url.clone(), r#"{"email": "own@example.com"}"#)
        .header("host", format!("localhost:{port}"))
        .header("origin", format!("http://localhost:{port}"))
        .header("content-type", "application/json; charset=utf-8")
        .send()
        .await?;
    assert_eq!(own.status(), 202);
    let own: Value = serde_json::from_slice(&own.bytes().await?)?;
    let run = own["run_id"].as_str().ok_or("a run id")?.to_owned();
    let cancel_url = format!("{base}/api/runs/{run}/cancel");
    let foreign_cancel = post_json(&client, cancel_url.clone(), "")
        .header("origin", "http://attacker.example")
        .send()
        .await?;
    assert_eq!(foreign_cancel.status(), 403);
    let shown: Value = serde_json::from_slice(
        &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
    )?;
    assert_eq!(
        (shown["status"].as_str(), shown["cancel_requested"].as_bool()),
        (Some("running"), Some(false)),
        "the foreign cancel did nothing: {shown:#}"
    );
    let finished = wait_finished(&client, &base, &run).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");

    let runs: Value = serde_json::from_slice(
        &client.get(format!("{base}/api/runs")).send().await?.bytes().await?,
    )?;
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "only the run of its own origin started: {runs:#}"
    );
    assert_eq!(emulator.customer_count(), 1);
    assert!(emulator.customers().iter().all(|c| c["email"] != "evil@example.com"));
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_public_url_is_answered_and_an_address_other_machines_reach_needs_a_token() -> TestResult
{
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = upsert_workflow(files.path(), "manual", "http://127.0.0.1:9", 4096)?;
    let refused = start_with(
        state.path(),
        ServeConfig { workflows: vec![wf.clone()], bind: "0.0.0.0:0".parse()?, ..config()? },
    )
    .await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0")
            && message.contains("weft tokens create NAME --role admin"),
        "{message}"
    );
    {
        let store = super::support::reopen(state.path())?;
        let issued = weft::serve::auth::issue("admin", weft::store::Role::Admin, None);
        store.create_token(&issued.record).await?;
    }
    let remote = start_with(
        state.path(),
        ServeConfig { workflows: vec![wf.clone()], bind: "0.0.0.0:0".parse()?, ..config()? },
    )
    .await?;
    let anonymous = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/runs", remote.addr.port()))
        .send()
        .await?;
    assert_eq!(anonymous.status(), 401, "with a token in the store it starts, closed");
    remote.shutdown().await;
    std::fs::remove_dir_all(state.path())?;
    std::fs::create_dir_all(state.path())?;

    let server = start_with(
        state.path(),
        ServeConfig {
            workflows: vec![wf],
            public_url: Some("https://weft.example.com".parse()?),
            ..config()?
        },
    )
    .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let via_proxy = client
        .get(format!("{base}/api/runs"))
        .header("host", "weft.example.com")
        .header("origin", "https://weft.example.com")
        .send()
        .await?;
    assert_eq!(via_proxy.status(), 200);
    let other =
        client.get(format!("{base}/api/runs")).header("host", "other.example.com").send().await?;
    assert_eq!(other.status(), 421);
    let plain = client
        .get(format!("{base}/api/runs"))
        .header("host", "weft.example.com")
        .header("origin", "http://weft.example.com")
        .send()
        .await?;
    assert_eq!(plain.status(), 403, "the public origin is https");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_api_takes_small_bodies_and_each_webhook_its_own_limit() -> TestResult {
    // Regression: the API's body limit was the largest max_body_bytes of
    // any webhook (4 MiB here).
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let wf = upsert_workflow(files.path(), "big-hooks", &stripe_server.base_url(), 4 << 20)?;
    let server =
        start_with(state.path(), ServeConfig { workflows: vec![wf], max_runs: 1, ..config()? })
            .await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let big = json!({"email": "big@example.com", "padding": "x".repeat(100 << 10)}).to_string();
    let api =
        post_json(&client, format!("{base}/api/workflows/big-hooks/runs"), &big).send().await?;
    assert_eq!(api.status(), 413, "100 KiB is more than the API takes");
    let signature = hmac_signature(big.as_bytes(), SECRET.as_bytes(), None);
    let hook = client
        .post(format!("{base}/hooks/big-hooks"))
        .header("X-Weft-Signature", signature)
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(hook.status(), 202, "the webhook takes up to 4 MiB");
    let huge = json!({"email": "huge@example.com", "padding": "x".repeat(5 << 20)}).to_string();
    let signature = hmac_signature(huge.as_bytes(), SECRET.as_bytes(), None);
    let hook = client
        .post(format!("{base}/hooks/big-hooks"))
        .header("X-Weft-Signature", signature)
        .body(huge)
        .send()
        .await?;
    assert_eq!(hook.status(), 413);
    server.shutdown().await;
    Ok(())
}
