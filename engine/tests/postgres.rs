//! The `weft` binary on a PostgreSQL run store (`--store postgres://…`),
//! against the throwaway server `WEFT_TEST_POSTGRES` names (`.ci/postgres`
//! starts one; under `CI=true` these tests fail without it, elsewhere they
//! skip saying so). Each test has a schema of its own, dropped at its end.
//! A run is written by one process and read back by others; a run killed
//! with SIGKILL between and inside its steps (upserts, then a for-each) is
//! resumed by other processes from what PostgreSQL holds, and every
//! customer is written exactly once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use weft::store::postgres::scratch::{ScratchSchema, test_url};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-pg-component-cache")
}

/// `weft` with the store at `url` and the shared component cache.
fn weft(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
    command
        .arg("--store")
        .arg(url)
        .arg("--cache-dir")
        .arg(cache_dir())
        .env_remove("WEFT_STATE_DIR")
        .env_remove("WEFT_LOG")
        // A process killed with -9 holds its runs this long: a resume in
        // another process waits for it.
        .env("WEFT_LEASE_SECS", "1")
        .stdin(Stdio::null());
    command
}

fn stdout_json(output: &Output) -> TestResult<Value> {
    serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into()
    })
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows").join(name).display().to_string()
}

/// What most fleet tests start from: a schema of their own on the test
/// server at `base`, empty emulators, and a directory for workflow files.
async fn fleet_parts(
    base: &str,
) -> TestResult<(ScratchSchema, weft_sandbox::Sandbox, tempfile::TempDir)> {
    let schema = ScratchSchema::create(base).await?;
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 0,
        ..Default::default()
    })
    .await?;
    Ok((schema, sandbox, tempfile::tempdir()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_postgres_is_listed_and_shown_by_other_processes() -> TestResult {
    let Some(base) = test_url("a_run_on_postgres_is_listed_and_shown_by_other_processes")? else {
        return Ok(());
    };
    let schema = ScratchSchema::create(&base).await?;
    let out = weft(&schema.url)
        .args(["run", "--sandbox", "--json"])
        .arg(example("provision-customer.toml"))
        .output()?;
    let summary = stdout_json(&out)?;
    assert_eq!(summary["status"], "succeeded", "{}", String::from_utf8_lossy(&out.stderr));
    let run_id = summary["run_id"].as_str().ok_or("no run id")?.to_owned();

    let listed = stdout_json(&weft(&schema.url).args(["runs", "list", "--json"]).output()?)?;
    assert_eq!(listed[0]["id"], run_id.as_str());
    assert_eq!(listed[0]["status"], "succeeded");
    assert_eq!(listed[0]["trigger"], "sandbox");

    let shown = weft(&schema.url).args(["runs", "show", "--json", &run_id]).output()?;
    let shown: weft::serve::RunDetail = serde_json::from_value(stdout_json(&shown)?)?;
    assert_eq!(shown.run.status, weft::store::Status::Succeeded);
    let steps: Vec<(&str, u64, u64)> =
        shown.steps.iter().map(|s| (s.id.as_str(), s.counts.created, s.counts.updated)).collect();
    assert_eq!(
        steps,
        [("stripe", 1, 0), ("metronome", 1, 0), ("growpanel", 1, 0), ("link_stripe", 0, 1)]
    );

    let missing = weft(&schema.url).args(["runs", "show", "nope"]).output()?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run with id nope"));

    // A list whose records a later step reads: its pages are rows.
    let files = tempfile::tempdir()?;
    let path = files.path().join("list-then-each.toml");
    std::fs::write(
        &path,
        r#"
[workflow]
name = "list-then-each"

[connections.stripe]
plugin = "stripe"
credentials = "env:STRIPE_API_KEY"

[[step]]
id = "customers"
list = "stripe.customers"

[[step]]
id = "again"
for_each = ".steps.customers.records[]"
get = "stripe.customers"
key = "${{ $item.id }}"
"#,
    )?;
    let export = weft(&schema.url)
        .args(["run", "--sandbox", "--json", "--seed", "5"])
        .arg(&path)
        .output()?;
    let summary = stdout_json(&export)?;
    assert_eq!(summary["status"], "succeeded", "{}", String::from_utf8_lossy(&export.stderr));
    let read = &summary["steps"][0]["counts"]["read"];
    assert!(read.as_u64().is_some_and(|n| n > 0), "{summary}");
    assert_eq!(&summary["steps"][1]["counts"]["read"], read, "each listed record got: {summary}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmigrated_database_is_refused_until_store_migrate() -> TestResult {
    let Some(base) = test_url("an_unmigrated_database_is_refused_until_store_migrate")? else {
        return Ok(());
    };
    // A migrated schema shows the way; a database without weft's tables
    // is refused by every command but `store migrate`.
    let schema = ScratchSchema::create(&base).await?;
    let empty_schema = schema.url.replace("search_path%3D", "search_path%3Dnowhere_");
    let out = weft(&empty_schema).args(["runs", "list"]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("weft store migrate"), "{err}");
    let out = weft(&schema.url).args(["store", "migrate"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("up to date"));
    // --store is the store even with a WEFT_STATE_DIR left in the
    // environment (it once refused the two together).
    let state = tempfile::tempdir()?;
    let out =
        weft(&schema.url).env("WEFT_STATE_DIR", state.path()).args(["runs", "list"]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no runs in postgres://"));
    Ok(())
}

const STEPS: usize = 12;
const ITEMS: usize = 30;
const KILLS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_mid_way_is_resumed_from_postgres_and_writes_each_customer_once() -> TestResult
{
    let Some(base) = test_url("a_run_killed_mid_way_is_resumed_from_postgres")? else {
        return Ok(());
    };
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    // One Stripe upsert per step (a lookup by email, then a create with an
    // idempotency key), slowed to a few requests a second so that kills
    // land between steps and inside them.
    let mut text = format!(
        r#"
[workflow]
name = "pg-crash-test"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"
rate_limit = "15/s"
"#,
        key = key.display(),
        stripe = sandbox.stripe.base_url(),
    );
    for n in 0..STEPS {
        text.push_str(&format!(
            r#"
[[step]]
id = "customer_{n}"
upsert = "stripe.customers"
record = {{ email = "pg{n}@crash.example", name = "Customer {n}" }}
"#
        ));
    }
    // And a for-each, whose items are committed in groups and skipped on
    // resume once committed.
    text.push_str(&format!(
        r#"
[[step]]
id = "each"
for_each = "[range(0; {ITEMS})]"
concurrency = 2
upsert = "stripe.customers"
record = {{ email = "pg-item${{{{ $item }}}}@crash.example", name = "Item ${{{{ $item }}}}" }}
"#
    ));
    let path = files.path().join("pg-crash.toml");
    std::fs::write(&path, text)?;
    let before = sandbox.stripe.emulator.customers().len();

    // Compile the plugin into the cache first, and learn how long a
    // process takes to start here.
    let warm = weft(&schema.url).arg("validate").arg(&path).output()?;
    assert!(warm.status.success(), "{}", String::from_utf8_lossy(&warm.stderr));
    let started = Instant::now();
    weft(&schema.url).arg("validate").arg(&path).output()?;
    let startup = started.elapsed().min(Duration::from_secs(2));

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}, start-up {} ms", startup.as_millis());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(180);
    let (mut kills, mut run_id, mut finished) = (0, None::<String>, None::<Output>);
    while finished.is_none() {
        if Instant::now() > deadline {
            return Err(format!("gave up after {kills} kills").into());
        }
        let mut command = weft(&schema.url);
        match &run_id {
            None => command.args(["run", "--json"]).arg(&path),
            Some(id) => command.args(["runs", "resume", "--json", id]),
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        if kills < KILLS {
            let wait = startup + Duration::from_millis(rng.random_range(0..1200));
            let started = Instant::now();
            while started.elapsed() < wait && child.try_wait()?.is_none() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if child.try_wait()?.is_some() {
                finished = Some(child.wait_with_output()?);
                break;
            }
            child.kill()?; // SIGKILL
            child.wait()?;
            if run_id.is_none() {
                let listed = weft(&schema.url).args(["runs", "list", "--json"]).output()?;
                run_id = stdout_json(&listed)?
                    .as_array()
                    .and_then(|runs| runs.first())
                    .and_then(|r| r["id"].as_str())
                    .map(str::to_owned);
            }
            if run_id.is_some() {
                kills += 1;
            }
        } else {
            finished = Some(tokio::task::spawn_blocking(move || child.wait_with_output()).await??);
        }
    }
    let output = finished.ok_or("no final run")?;
    let summary = stdout_json(&output)?;
    assert_eq!(
        summary["status"],
        "succeeded",
        "{summary:#}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(kills >= 1, "the run was never killed mid-way; the test proves nothing");

    let customers = sandbox.stripe.emulator.customers();
    let ours: Vec<String> = customers
        .iter()
        .filter_map(|c| c["email"].as_str())
        .filter(|e| e.ends_with("@crash.example"))
        .map(str::to_owned)
        .collect();
    let distinct: std::collections::HashSet<&String> = ours.iter().collect();
    assert_eq!(
        (ours.len(), distinct.len(), customers.len() - before),
        (STEPS + ITEMS, STEPS + ITEMS, STEPS + ITEMS),
        "Stripe holds each customer exactly once after {kills} kills"
    );

    let id = summary["run_id"].as_str().ok_or("no run id")?;
    let shown = weft(&schema.url).args(["runs", "show", "--json", id]).output()?;
    let shown: weft::serve::RunDetail = serde_json::from_value(stdout_json(&shown)?)?;
    assert_eq!(shown.run.status, weft::store::Status::Succeeded);
    assert_eq!(shown.steps.len(), STEPS + 1);
    assert!(shown.steps.iter().all(|s| s.status == weft::store::Status::Succeeded));
    let each = shown.steps.last().ok_or("no for-each step")?;
    assert_eq!((each.items, each.counts.failed), (ITEMS as u64, 0), "{each:#?}");
    if run_id.is_some() {
        assert!(shown.run.resumes >= 1, "{shown:#?}");
    }
    eprintln!("{kills} kills, {} resumes", shown.run.resumes);
    Ok(())
}

/// A `weft serve` worker on the store at `url`, and the address it
/// listens on (read from its start-up line).
struct Worker {
    child: std::process::Child,
    base: String,
    /// The worker's warnings and errors so far.
    complaints: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Worker {
    fn start(url: &str, workflow: &Path) -> TestResult<Worker> {
        use std::io::BufRead as _;
        let mut child = weft(url)
            .args(["serve", "--bind", "127.0.0.1:0", "--grace", "2s"])
            .arg(workflow)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let complaints = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = complaints.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default().to_owned();
                    let _ = tx.send(addr);
                    sent = true;
                }
                // The rest of the log is drained, so the worker never blocks
                // on it; what it says of the fleet's limits is shown.
                if line.contains("shared rate limit") {
                    eprintln!("worker: {line}");
                }
                if line.contains("ERROR") || line.contains("WARN") {
                    kept.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(line);
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => Ok(Worker { child, base, complaints }),
            Err(_) => {
                let _ = child.kill();
                Err("weft serve did not start".into())
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FLEET_ITEMS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_its_lease_and_another_worker_finishes_the_run_once()
-> TestResult {
    let Some(base) = test_url("a_worker_killed_mid_run_loses_its_lease")? else {
        return Ok(());
    };
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let path = files.path().join("fleet.toml");
    // A lookup and a create per item at 40 requests a second: about six
    // seconds of work, so the kill lands mid-way.
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "fleet"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"
rate_limit = "40/s"

[[step]]
id = "each"
for_each = "[range(0; {FLEET_ITEMS})]"
concurrency = 2
upsert = "stripe.customers"
record = {{ email = "fleet${{{{ $item }}}}@fleet.example", name = "Fleet ${{{{ $item }}}}" }}
"#,
            key = key.display(),
            stripe = sandbox.stripe.base_url(),
        ),
    )?;
    let token = operator_token(&schema.url)?;
    let before = sandbox.stripe.emulator.customers().len();

    let doomed = Worker::start(&schema.url, &path)?;
    let survivor = Worker::start(&schema.url, &path)?;
    let run_id = start_run(&doomed, &token, "fleet").await?;

    // Kill the worker running it, part way through.
    wait_for_customers(&sandbox, "@fleet.example", FLEET_ITEMS / 5).await?;
    let mut doomed = doomed;
    doomed.child.kill()?; // SIGKILL
    doomed.child.wait()?;
    let at_kill = sandbox.stripe.emulator.customers().len() - before;
    assert!(at_kill < FLEET_ITEMS, "the run ended before the kill; the test proves nothing");
    let killed_at = Instant::now();

    // The survivor takes the run once the lease (1 s) passes, and ends it.
    let detail = wait_until_ended(&survivor, &token, &run_id).await?;
    assert_eq!(detail["status"], "succeeded", "{detail:#}");
    assert!(detail["resumes"].as_u64().is_some_and(|n| n >= 1), "{detail:#}");
    eprintln!(
        "killed at {at_kill}/{FLEET_ITEMS} customers; finished {} ms after the kill",
        killed_at.elapsed().as_millis()
    );

    // Judged by the emulator: each customer exactly once.
    let customers = sandbox.stripe.emulator.customers();
    let ours: Vec<&str> = customers
        .iter()
        .filter_map(|c| c["email"].as_str())
        .filter(|e| e.ends_with("@fleet.example"))
        .collect();
    let distinct: std::collections::HashSet<&&str> = ours.iter().collect();
    assert_eq!(
        (ours.len(), distinct.len(), customers.len() - before),
        (FLEET_ITEMS, FLEET_ITEMS, FLEET_ITEMS),
        "Stripe holds each customer once"
    );
    let steps = detail["steps"].as_array().ok_or("no steps")?;
    assert_eq!(steps[0]["items"], FLEET_ITEMS as u64, "{detail:#}");
    let _ = Command::new("kill").arg("-TERM").arg(survivor.child.id().to_string()).status();
    Ok(())
}

const TICK_SECRET: &str = "whsec_fleet_test_secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_start_each_cron_tick_once_and_a_delivery_sent_to_both_once() -> TestResult {
    let Some(base) = test_url("two_workers_start_each_cron_tick_once")? else {
        return Ok(());
    };
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let secret = files.path().join("hook-secret");
    std::fs::write(&secret, TICK_SECRET)?;
    let path = files.path().join("tick.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "tick"

[trigger]
cron = "* * * * * *"

[trigger.webhook]
verify = "hmac-sha256"
header = "X-Weft-Signature"
secret = "file:{secret}"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = {{ email = "tick@fleet.example", name = "Tick" }}
"#,
            secret = secret.display(),
            key = key.display(),
            stripe = sandbox.stripe.base_url(),
        ),
    )?;
    let a = Worker::start(&schema.url, &path)?;
    let b = Worker::start(&schema.url, &path)?;
    let both_up = Instant::now();

    // The same signed delivery to both workers at once.
    let body = r#"{"id":"evt_fleet_1","type":"customer.created"}"#;
    let signature =
        weft::serve::webhook::hmac_signature(body.as_bytes(), TICK_SECRET.as_bytes(), None);
    let http = reqwest::Client::new();
    let send = |base: &str| {
        http.post(format!("{base}/hooks/tick"))
            .header("content-type", "application/json")
            .header("X-Weft-Signature", signature.clone())
            .body(body)
            .send()
    };
    let (first, second) = tokio::join!(send(&a.base), send(&b.base));
    let (first, second) = (first?, second?);
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort();
    let answers = [first.text().await?, second.text().await?];
    assert_eq!(statuses, [202, 409], "{answers:?}");
    let accepted: Value = answers
        .iter()
        .find_map(|a| serde_json::from_str::<Value>(a).ok().filter(|v| v["run_id"].is_string()))
        .ok_or("no run id in the 202")?;
    // Answered 202 once the run was committed: another process reads it.
    let run_id = accepted["run_id"].as_str().ok_or("run id")?;
    let shown = weft(&schema.url).args(["runs", "show", "--json", run_id]).output()?;
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));

    // Let the schedule fire for a while on both workers.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let window = both_up.elapsed();
    drop((a, b));
    let listed = stdout_json(
        &weft(&schema.url).args(["runs", "list", "--json", "--limit", "200"]).output()?,
    )?;
    let runs = listed.as_array().ok_or("runs list is not an array")?;
    let webhook_runs = runs.iter().filter(|r| r["trigger"] == "webhook").count();
    assert_eq!(webhook_runs, 1, "{listed:#}");
    let cron_seconds: Vec<u64> = runs
        .iter()
        .filter(|r| r["trigger"] == "cron")
        .filter_map(|r| r["created_ms"].as_u64())
        .map(|ms| ms / 1000)
        .collect();
    let distinct: std::collections::BTreeSet<u64> = cron_seconds.iter().copied().collect();
    let seconds = window.as_secs();
    eprintln!("{} cron runs in {} ms on two workers", cron_seconds.len(), window.as_millis());
    assert!(
        cron_seconds.len() >= 3 && cron_seconds.len() as u64 <= seconds + 1,
        "one run per tick for the fleet, not one per worker: {} runs in {seconds} s",
        cron_seconds.len()
    );
    assert_eq!(distinct.len(), cron_seconds.len(), "no tick ran twice: {cron_seconds:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_moves_a_sled_history_into_postgres_and_weft_runs_shows_the_same() -> TestResult
{
    let Some(base) = test_url("store_copy_moves_a_sled_history_into_postgres")? else {
        return Ok(());
    };
    let schema = ScratchSchema::create(&base).await?;
    let state = tempfile::tempdir()?;
    let sled = format!("sled:{}", state.path().display());
    let ran = weft(&sled)
        .args(["run", "--sandbox", "--json", "--seed", "7"])
        .arg(example("stripe-export.toml"))
        .output()?;
    assert_eq!(
        stdout_json(&ran)?["status"],
        "succeeded",
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let ran = weft(&sled)
        .args(["run", "--sandbox", "--json"])
        .arg(example("provision-customer.toml"))
        .output()?;
    assert_eq!(
        stdout_json(&ran)?["status"],
        "succeeded",
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let token = weft(&sled).args(["tokens", "create", "ops", "--role", "viewer"]).output()?;
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));

    let copy = |what: &str| -> TestResult<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["store", "copy", "--from", &sled, "--to", &schema.url])
            .env_remove("WEFT_STATE_DIR")
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{what}: {err}");
        Ok(err)
    };
    let first = copy("first copy")?;
    assert!(first.contains("2 runs copied") && first.contains("1 tokens"), "{first}");
    let again = copy("second copy")?;
    assert!(again.contains("0 runs copied") && again.contains("2 there already"), "{again}");

    let list = |store: &str| -> TestResult<Value> {
        stdout_json(&weft(store).args(["runs", "list", "--json"]).output()?)
    };
    let (from_sled, from_pg) = (list(&sled)?, list(&schema.url)?);
    assert_eq!(from_pg, from_sled, "weft runs list reads the same on both");
    for run in from_sled.as_array().ok_or("not a list")? {
        let id = run["id"].as_str().ok_or("no id")?;
        let show = |store: &str| -> TestResult<Value> {
            stdout_json(&weft(store).args(["runs", "show", "--json", id]).output()?)
        };
        assert_eq!(show(&schema.url)?, show(&sled)?, "weft runs show {id} reads the same");
    }
    let tokens = weft(&schema.url).args(["tokens", "list", "--json"]).output()?;
    assert!(String::from_utf8_lossy(&tokens.stdout).contains("\"ops\""));
    Ok(())
}

/// Held by the tests that measure rates and by the chaos test, so that
/// a rate is never judged while three other workers load the machine.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Items per run in the shared-limit test: three runs, one per worker, at
/// 25 requests a second per class for all three together.
const SHARED_ITEMS: usize = 110;

/// The Stripe emulator enforcing `limit` requests a second per key and
/// class, served behind a layer that answers the `refuse_at`-th request
/// (counted from 1; 0: never) with a 429 and `Retry-After: retry_after`
/// (seconds), once, and records when it did and whether that request was
/// a read.
async fn limited_stripe(
    limit: u32,
    refuse_at: usize,
    retry_after: u64,
) -> TestResult<(
    weft_sandbox::stripe::StripeEmulator,
    weft_sandbox::server::RunningServer,
    std::sync::Arc<std::sync::Mutex<Option<(Instant, bool)>>>,
)> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let emulator = weft_sandbox::stripe::StripeEmulator::new(weft_sandbox::stripe::StripeConfig {
        rate_limit: Some((limit, Duration::from_secs(1))),
        ..Default::default()
    });
    let seen = Arc::new(AtomicUsize::new(0));
    let refused_at: Arc<Mutex<Option<(Instant, bool)>>> = Arc::default();
    let refused = refused_at.clone();
    let router = emulator.router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            let refused = refused.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                if n == refuse_at {
                    if let Ok(mut at) = refused.lock() {
                        *at = Some((Instant::now(), request.method() == "GET"));
                    }
                    return axum::response::Response::builder()
                        .status(429)
                        .header("retry-after", retry_after.to_string())
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(
                            r#"{"error":{"type":"invalid_request_error","code":"rate_limit","message":"slow down"}}"#,
                        ))
                        .unwrap_or_default();
                }
                next.run(request).await
            }
        },
    ));
    let server = weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?;
    Ok((emulator, server, refused_at))
}

/// A workflow upserting `items` customers into the Stripe at `base`
/// through the sandbox's test key (Stripe publishes 25 requests a second
/// per class for test keys), twelve at a time.
fn shared_limit_workflow(dir: &Path, base: &str, items: usize) -> TestResult<PathBuf> {
    let key = dir.join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let path = dir.join("shared.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "shared"

[inputs.worker]
type = "string"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{base}"

[[step]]
id = "each"
for_each = "[range(0; {items})]"
concurrency = 12
upsert = "stripe.customers"
record = {{ email = "shared${{{{ .inputs.worker }}}}-${{{{ $item }}}}@fleet.example", name = "Shared ${{{{ $item }}}}" }}
"#,
            key = key.display(),
        ),
    )?;
    Ok(path)
}

/// Starts the workflow `shared` on each worker (so each runs one), with
/// the worker's index as input, and waits for all of them to end.
async fn run_on_each(workers: &[Worker], token: &str, deadline: Duration) -> TestResult {
    let http = reqwest::Client::new();
    let mut runs = Vec::new();
    for (i, worker) in workers.iter().enumerate() {
        let started = http
            .post(format!("{}/api/workflows/shared/runs", worker.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(format!(r#"{{"worker":"{i}"}}"#))
            .send()
            .await?;
        let status = started.status().as_u16();
        let text = started.text().await?;
        assert_eq!(status, 202, "{text}");
        let started: Value = serde_json::from_str(&text)?;
        runs.push((worker, started["run_id"].as_str().ok_or("no run id")?.to_owned()));
    }
    let until = Instant::now() + deadline;
    for (worker, run) in runs {
        let left = until.saturating_duration_since(Instant::now());
        let detail = wait_until_ended_within(worker, token, &run, left).await?;
        assert_eq!(detail["status"], "succeeded", "{detail:#}");
    }
    Ok(())
}

fn start_workers(url: &str, workflow: &Path, count: usize) -> TestResult<Vec<Worker>> {
    (0..count).map(|_| Worker::start(url, workflow)).collect()
}

fn operator_token(url: &str) -> TestResult<String> {
    let token = weft(url).args(["tokens", "create", "fleet", "--role", "operator"]).output()?;
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
    Ok(String::from_utf8(token.stdout)?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_on_one_key_stay_together_under_the_vendors_limit() -> TestResult {
    let Some(base) = test_url("three_workers_on_one_key_stay_together")? else {
        return Ok(());
    };
    let _alone = HEAVY.lock().await;
    let schema = ScratchSchema::create(&base).await?;
    const LIMIT: u32 = 25;
    let (emulator, server, _) = limited_stripe(LIMIT, 0, 2).await?;
    let files = tempfile::tempdir()?;
    let workflow = shared_limit_workflow(files.path(), &server.base_url(), SHARED_ITEMS)?;
    let token = operator_token(&schema.url)?;
    let workers = start_workers(&schema.url, &workflow, 3)?;
    run_on_each(&workers, &token, Duration::from_secs(30)).await?;

    // Judged by the emulator's log: per class, what it served in the
    // steady part (the first and last second left out) against what it
    // allows, and its refusals against every request.
    let log = emulator.requests().requests();
    let refused = log.iter().filter(|r| r.status == 429).count();
    let mut achieved = Vec::new();
    for (class, is_class) in
        [("read", (|m: &str| m == "GET") as fn(&str) -> bool), ("write", |m: &str| m != "GET")]
    {
        let served: Vec<Instant> = log
            .iter()
            .filter(|r| is_class(&r.method) && r.status != 429)
            .map(|r| r.received_at)
            .collect();
        let (Some(first), Some(last)) = (served.iter().min(), served.iter().max()) else {
            return Err(format!("no {class} requests reached the emulator").into());
        };
        let from = *first + Duration::from_secs(1);
        let to = *last - Duration::from_secs(1);
        let window = to.saturating_duration_since(from).as_secs_f64();
        assert!(window >= 5.0, "the {class} window is {window:.1}s; the test proves little");
        let inside = served.iter().filter(|t| **t >= from && **t < to).count();
        let share = inside as f64 / window / f64::from(LIMIT);
        achieved.push((class, share));
    }
    eprintln!("{} requests, {refused} refused (429); achieved of allowed: {achieved:?}", log.len());
    assert!(
        refused as f64 <= 0.01 * log.len() as f64,
        "{refused} of {} requests were refused: the workers together went over the limit",
        log.len()
    );
    for (class, share) in achieved {
        assert!(share >= 0.95, "{class}: the workers together got {share:.3} of the allowed rate");
    }
    assert_eq!(emulator.customer_count(), 3 * SHARED_ITEMS);
    drop(workers);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_seen_by_one_worker_pauses_them_all() -> TestResult {
    let Some(base) = test_url("a_retry_after_seen_by_one_worker_pauses")? else {
        return Ok(());
    };
    let _alone = HEAVY.lock().await;
    let schema = ScratchSchema::create(&base).await?;
    // The 150th request (a few seconds in, all three workers busy) gets a
    // 429 with `Retry-After: 2`.
    let (emulator, server, refused_at) = limited_stripe(25, 150, 2).await?;
    let files = tempfile::tempdir()?;
    let workflow = shared_limit_workflow(files.path(), &server.base_url(), 60)?;
    let token = operator_token(&schema.url)?;
    let workers = start_workers(&schema.url, &workflow, 3)?;
    run_on_each(&workers, &token, Duration::from_secs(30)).await?;

    let (refused_at, read) = refused_at.lock().map_err(|_| "poisoned")?.ok_or("no 429 was sent")?;
    // Stripe limits reads and writes apart: the pause is the refused
    // request's class's.
    let log: Vec<_> = emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| (r.method == "GET") == read)
        .collect();
    // Requests the others had already been let go for may still arrive
    // just after it (a worker leases slots 200 ms ahead); after that,
    // nothing of that class from any worker until the two seconds pass.
    let quiet_from = refused_at + Duration::from_millis(500);
    let quiet_to = refused_at + Duration::from_millis(1900);
    let during: Vec<(u16, Duration)> = log
        .iter()
        .filter(|r| r.received_at > quiet_from && r.received_at < quiet_to)
        .map(|r| (r.status, r.received_at - refused_at))
        .collect();
    let after = log.iter().filter(|r| r.received_at >= refused_at + Duration::from_secs(2)).count();
    let before = log.iter().filter(|r| r.received_at < refused_at).count();
    eprintln!(
        "{} {} requests: {before} before the 429, during the pause {during:?}, {after} after it",
        log.len(),
        if read { "read" } else { "write" }
    );
    assert!(during.is_empty(), "requests arrived during the pause: {during:?} after the 429");
    assert!(after > 20, "the runs went on after the pause ({after} requests)");
    assert_eq!(emulator.customer_count(), 3 * 60);
    drop(workers);
    server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_a_long_retry_after_pause_ends_the_run_at_once() -> TestResult {
    cancel_during_a_retry_after_pause("a_cancel_during_a_long_retry_after_pause", None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_workers_cancel_during_a_retry_after_pause_stops_the_run_before_its_retry()
-> TestResult {
    cancel_during_a_retry_after_pause(
        "another_workers_cancel_during_a_retry_after_pause",
        Some(CancelBy::OtherWorker),
    )
    .await
}

/// A for-each whose calls all wait out a vendor's `Retry-After` (for their
/// retry, or for the paused limit's next slot) is cancelled: by the worker
/// running it (`by` none), or from elsewhere. It sends nothing more, and
/// the items cut short are not recorded as failed.
async fn cancel_during_a_retry_after_pause(test: &str, by: Option<CancelBy>) -> TestResult {
    let Some(base) = test_url(test)? else {
        return Ok(());
    };
    let schema = ScratchSchema::create(&base).await?;
    // The 9th request (an item's lookup or create, a few items in) gets a
    // 429 with a long `Retry-After`. Cancelled by its worker, the run must
    // end long before it passes; from elsewhere, the worker hears of the
    // cancel within a quarter lease (250 ms here) and must not send the
    // retry when the pause passes.
    // (Under the call's 300 s deadline, so the host waits it out rather
    // than failing the item at once.)
    let pause = if by.is_none() { 120 } else { 6 };
    let (emulator, server, refused_at) = limited_stripe(1000, 9, pause).await?;
    let files = tempfile::tempdir()?;
    let path = slow_for_each(files.path(), &server.base_url(), "paused", 40, 1000)?;
    let token = operator_token(&schema.url)?;
    let worker = Worker::start(&schema.url, &path)?;
    let run_id = start_run(&worker, &token, "paused").await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused_at.lock().map_err(|_| "poisoned")?.is_none() {
        assert!(Instant::now() < deadline, "no 429 was sent in a minute");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Both items in flight are now waiting out the pause.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_before = emulator.requests().requests().len();

    let asked_at = Instant::now();
    match by {
        None => {
            let asked = api_cancel(&worker, &token, &run_id).await?;
            assert_eq!(asked.status().as_u16(), 202, "{:?}", asked.text().await);
        }
        Some(CancelBy::Cli) => {
            let out = weft(&schema.url).args(["runs", "cancel", &run_id]).output()?;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        Some(CancelBy::OtherWorker) => {
            let other = Worker::start(&schema.url, &path)?;
            let asked = api_cancel(&other, &token, &run_id).await?;
            assert_eq!(asked.status().as_u16(), 200, "{:?}", asked.text().await);
        }
    }
    // Far less than the pause: the cancelled run does not wait it out.
    let detail = wait_until_ended_within(&worker, &token, &run_id, Duration::from_secs(20)).await?;
    eprintln!(
        "cancelled during a {pause} s Retry-After: shown ended {:?} after the cancel",
        asked_at.elapsed()
    );
    assert_eq!(detail["status"], "cancelled", "{detail:#}");
    if by.is_some() {
        // Past the pause: the retry would have gone out by now.
        tokio::time::sleep(Duration::from_secs(pause + 2).saturating_sub(asked_at.elapsed())).await;
    }
    // Nothing was sent after the cancel, and the items it cut short were
    // not recorded as failed: the vendor did not fail them.
    assert_eq!(emulator.requests().requests().len(), sent_before, "requests went on");
    let steps = detail["steps"].as_array().ok_or("no steps")?;
    let failed = steps[0]
        .pointer("/counts/failed")
        .or_else(|| steps[0].get("failed"))
        .and_then(Value::as_u64);
    assert_eq!(failed, Some(0), "an item cut short was recorded as failed: {detail:#}");
    assert!(emulator.customer_count() < 40, "the run ended before the cancel; proves nothing");
    drop(worker);
    server.shutdown().await;
    Ok(())
}

/// A PostgreSQL cluster of this test's own (initdb in a temporary
/// directory, a free loopback port), so that it can be restarted without
/// disturbing the other tests' server. Stopped when dropped.
struct OwnCluster {
    bindir: PathBuf,
    data: PathBuf,
    /// `runuser -u postgres --` as root (PostgreSQL refuses root).
    run_as: Vec<String>,
    url: String,
    _dir: tempfile::TempDir,
}

impl OwnCluster {
    /// `None` when no PostgreSQL binaries are installed (an error under
    /// `CI=true`, where .ci/postgres installs them).
    fn start() -> TestResult<Option<OwnCluster>> {
        let mut bindirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| dirs.filter_map(|d| d.ok()).map(|d| d.path().join("bin")).collect())
            .unwrap_or_default();
        bindirs.retain(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
        bindirs.sort();
        let Some(bindir) = bindirs.pop() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err("no PostgreSQL binaries under /usr/lib/postgresql".into());
            }
            eprintln!("skipped: no PostgreSQL binaries under /usr/lib/postgresql");
            return Ok(None);
        };
        let root = rustix::process::geteuid().is_root();
        let (user, run_as) = if root {
            (
                "postgres".to_owned(),
                vec!["runuser".into(), "-u".into(), "postgres".into(), "--".into()],
            )
        } else {
            (std::env::var("USER").unwrap_or_else(|_| "postgres".into()), Vec::new())
        };
        let dir = tempfile::Builder::new().prefix("weft-pg-restart-").tempdir()?;
        if root {
            let status = Command::new("chown").arg(&user).arg(dir.path()).status()?;
            assert!(status.success(), "chown {user} {}", dir.path().display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = dir.path().join("data");
        let cluster = OwnCluster {
            bindir,
            data,
            run_as,
            url: format!("postgres://{user}@127.0.0.1:{port}/postgres"),
            _dir: dir,
        };
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", &user, "--auth=trust", "--encoding=UTF8", "--locale=C"])
            .output()?;
        assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
        let log = cluster.data.with_file_name("server.log");
        let started = cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
                 -c fsync=off",
                cluster._dir.path().display()
            ))
            .arg("start")
            .output()?;
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        Ok(Some(cluster))
    }

    fn command(&self, program: &str) -> Command {
        let binary = self.bindir.join(program);
        let mut command = match self.run_as.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.stdin(Stdio::null());
        command
    }

    /// Stops the server at once (no checkpoint: it recovers from its WAL
    /// as after a crash), leaves it down for `down`, and starts it again
    /// with the same data and port.
    fn restart(&self, down: Duration) -> TestResult {
        let stop = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()?;
        assert!(stop.status.success(), "pg_ctl stop: {}", String::from_utf8_lossy(&stop.stderr));
        std::thread::sleep(down);
        // `pg_ctl restart` would need a running server; start reads the
        // options it was started with from postmaster.opts only on restart,
        // so they are given again.
        let opts = std::fs::read_to_string(self.data.join("postmaster.opts"))?;
        let started = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.with_file_name("server.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(postmaster_options(&opts))
            .arg("start")
            .output()?;
        assert!(
            started.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        Ok(())
    }
}

/// The server options in a postmaster.opts line (`/…/postgres "-D" "…"
/// "-c" "port=…" …`), without the data directory.
fn postmaster_options(opts: &str) -> String {
    let words: Vec<&str> =
        opts.split('"').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, w)| w).collect();
    let mut out = Vec::new();
    let mut skip = false;
    for word in words {
        if skip {
            skip = false;
            continue;
        }
        if word == "-D" {
            skip = true;
            continue;
        }
        out.push(word.to_owned());
    }
    out.join(" ")
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

const RESTART_ITEMS: usize = 160;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_restart_mid_run_loses_and_doubles_nothing() -> TestResult {
    let Some(cluster) = OwnCluster::start()? else { return Ok(()) };
    let migrated = weft(&cluster.url).args(["store", "migrate"]).output()?;
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 0,
        ..Default::default()
    })
    .await?;
    let files = tempfile::tempdir()?;
    let key = files.path().join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let path = files.path().join("restart.toml");
    // A lookup and a create per item at 40 requests a second: about eight
    // seconds of work, so the restart lands mid-way.
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "restart"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"
rate_limit = "40/s"

[[step]]
id = "each"
for_each = "[range(0; {RESTART_ITEMS})]"
concurrency = 4
upsert = "stripe.customers"
record = {{ email = "restart${{{{ $item }}}}@fleet.example", name = "Restart ${{{{ $item }}}}" }}
"#,
            key = key.display(),
            stripe = sandbox.stripe.base_url(),
        ),
    )?;
    let token = operator_token(&cluster.url)?;
    let before = sandbox.stripe.emulator.customers().len();
    let worker = Worker::start(&cluster.url, &path)?;
    let http = reqwest::Client::new();
    let run_id = start_run(&worker, &token, "restart").await?;
    wait_for_customers(&sandbox, "@fleet.example", RESTART_ITEMS / 4).await?;
    cluster.restart(Duration::from_secs(2))?;
    let at_restart = sandbox.stripe.emulator.customers().len() - before;
    assert!(
        at_restart < RESTART_ITEMS,
        "the run ended before the restart; the test proves nothing"
    );

    // The worker reconnects and the run ends (resumed by a claim once its
    // lease passes, if its task stopped on the outage).
    let deadline = Instant::now() + Duration::from_secs(90);
    let detail = loop {
        let shown = match http
            .get(format!("{}/api/runs/{run_id}", worker.base))
            .bearer_auth(&token)
            .send()
            .await
        {
            Ok(response) => response.text().await?,
            Err(e) => return Err(format!("the worker stopped answering: {e}").into()),
        };
        if let Ok(detail) = serde_json::from_str::<Value>(&shown)
            && detail["status"] != "running"
            && detail["status"] != "pending"
        {
            break detail;
        }
        if Instant::now() > deadline {
            return Err(format!("the run did not finish after the restart: {shown}").into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(detail["status"], "succeeded", "{detail:#}");
    let steps = detail["steps"].as_array().ok_or("no steps")?;
    assert_eq!(steps[0]["items"], RESTART_ITEMS as u64, "{detail:#}");

    // Judged by the emulator: each customer exactly once, and no create
    // that was not a replay of an earlier one's idempotency key.
    let customers = sandbox.stripe.emulator.customers();
    let ours: Vec<&str> = customers
        .iter()
        .filter_map(|c| c["email"].as_str())
        .filter(|e| e.starts_with("restart") && e.ends_with("@fleet.example"))
        .collect();
    let distinct: std::collections::HashSet<&&str> = ours.iter().collect();
    assert_eq!(
        (ours.len(), distinct.len(), customers.len() - before),
        (RESTART_ITEMS, RESTART_ITEMS, RESTART_ITEMS),
        "Stripe holds each customer once after a restart at {at_restart}"
    );
    eprintln!(
        "restarted at {at_restart}/{RESTART_ITEMS} customers; resumes: {}",
        detail["resumes"]
    );
    Ok(())
}

/// Customers the chaos test moves from Stripe to GrowPanel.
const CHAOS_ITEMS: usize = 2000;
/// Workers killed with -9 (each restarted) during the chaos test.
const CHAOS_KILLS: usize = 20;

/// The fleet chaos test of issue 16: three `weft serve` workers on one
/// PostgreSQL, a 2,000-item Stripe → GrowPanel for-each and a workflow
/// firing every second, 20 kills with -9 of random workers at random
/// instants, each restarted; then each emulator holds exactly the 2,000
/// customers, no create was sent twice, the run succeeded, and each cron
/// tick ran exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_killed_twenty_times_moves_every_customer_once_and_each_tick_runs_once()
-> TestResult {
    let Some(base) = test_url("a_fleet_killed_twenty_times")? else {
        return Ok(());
    };
    let _alone = HEAVY.lock().await;
    let began = Instant::now();
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    let stripe_key = files.path().join("stripe-key");
    std::fs::write(&stripe_key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let endpoints = sandbox.endpoints();
    let growpanel = endpoints.iter().find(|e| e.vendor == "growpanel").ok_or("no growpanel")?;
    let growpanel_key = files.path().join("growpanel-key");
    std::fs::write(&growpanel_key, &growpanel.api_key)?;
    let dir = files.path().join("workflows");
    std::fs::create_dir(&dir)?;
    std::fs::write(
        dir.join("chaos.toml"),
        format!(
            r#"
[workflow]
name = "chaos"

[connections.stripe]
plugin = "stripe"
credentials = "file:{stripe_key}"
base_url = "{stripe}"
rate_limit = "400/s"

[connections.growpanel]
plugin = "growpanel"
credentials = "file:{growpanel_key}"
base_url = "{growpanel}"
settings = {{ source = "ds_weft_demo" }}
rate_limit = "400/s"

[[step]]
id = "create"
for_each = "[range(0; {CHAOS_ITEMS})]"
concurrency = 8
upsert = "stripe.customers"
record = {{ email = "chaos${{{{ $item }}}}@fleet.example", name = "Chaos ${{{{ $item }}}}" }}

[[step]]
id = "all"
list = "stripe.customers"
page_size = 100

[[step]]
id = "copy"
for_each = ".steps.all.records[]"
concurrency = 8
upsert = "growpanel.customers"
record = {{ id = "${{{{ $item.id }}}}", name = "${{{{ $item.name }}}}", email = "${{{{ $item.email }}}}", created_date = "2024-01-01", country = "US" }}
"#,
            stripe_key = stripe_key.display(),
            stripe = sandbox.stripe.base_url(),
            growpanel_key = growpanel_key.display(),
            growpanel = growpanel.base_url,
        ),
    )?;
    std::fs::write(
        dir.join("tick.toml"),
        r#"
[workflow]
name = "tick"

[trigger]
cron = "* * * * * *"

[[step]]
id = "tick"
fail = "never"
when = "false"
"#,
    )?;
    let token = operator_token(&schema.url)?;
    let mut workers = start_workers(&schema.url, &dir, 3)?;
    let run_id = start_run(&workers[0], &token, "chaos").await?;

    // Kill a random worker at a random instant, 20 times, each restarted.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mut killed_holder = 0;
    for _ in 0..CHAOS_KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..2500))).await;
        let victim = rng.random_range(0..workers.len());
        let worker = &mut workers[victim];
        worker.child.kill()?; // SIGKILL
        worker.child.wait()?;
        let shown = weft(&schema.url).args(["runs", "show", "--json", &run_id]).output()?;
        if stdout_json(&shown).is_ok_and(|d| d["status"] == "running") {
            killed_holder += 1;
        }
        workers[victim] = Worker::start(&schema.url, &dir)?;
    }
    let kills_done = began.elapsed();

    // The run ends on the fleet.
    let deadline = Instant::now() + Duration::from_secs(150);
    let detail = loop {
        let shown = weft(&schema.url).args(["runs", "show", "--json", &run_id]).output()?;
        let detail = stdout_json(&shown)?;
        let status = &detail["status"];
        if status != "running" && status != "pending" {
            break detail;
        }
        if Instant::now() > deadline {
            return Err(format!("the run did not finish: {detail:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Let the last ticks' runs end, then stop the fleet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(workers);
    assert_eq!(detail["status"], "succeeded", "{detail:#}");

    // Each emulator holds exactly the 2,000 customers, each created once.
    let stripe = sandbox.stripe.emulator.customers();
    let emails: std::collections::HashSet<&str> =
        stripe.iter().filter_map(|c| c["email"].as_str()).collect();
    assert_eq!((stripe.len(), emails.len()), (CHAOS_ITEMS, CHAOS_ITEMS), "Stripe");
    let grown = sandbox.growpanel.emulator.customers();
    let ids: std::collections::HashSet<String> =
        grown.iter().map(|c| c["id"].to_string()).collect();
    assert_eq!((grown.len(), ids.len()), (CHAOS_ITEMS, CHAOS_ITEMS), "GrowPanel");
    // No create sent twice, judged by the request logs: Stripe's creates
    // each under an idempotency key of its own (a redone one would replay
    // its key, and find the customer made), GrowPanel's (which takes no
    // key) each for a customer id of its own.
    let creates = |log: weft_sandbox::requests::RequestLog| -> Vec<_> {
        log.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.status < 300 && !r.path.contains("/search"))
            .collect()
    };
    let stripe_creates = creates(sandbox.stripe.emulator.requests());
    let keys: std::collections::HashSet<&str> =
        stripe_creates.iter().filter_map(|r| r.idempotency_key.as_deref()).collect();
    assert_eq!(
        (stripe_creates.len(), keys.len()),
        (CHAOS_ITEMS, CHAOS_ITEMS),
        "Stripe's successful creates and their distinct idempotency keys"
    );
    let growpanel_creates = creates(sandbox.growpanel.emulator.requests());
    let created_ids: std::collections::HashSet<String> = growpanel_creates
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .map(|body| body["id"].to_string())
        .collect();
    assert_eq!(
        (growpanel_creates.len(), created_ids.len()),
        (CHAOS_ITEMS, CHAOS_ITEMS),
        "GrowPanel's successful creates and the distinct customers they name"
    );

    // Each tick ran once: one firing row per scheduled second, each with
    // its own run, and every cron run is one of them.
    let (client, connection) = tokio_postgres::connect(&schema.url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let firings = client
        .query("SELECT scheduled_ms, run_id FROM weft_cron_firings WHERE workflow = 'tick'", &[])
        .await?;
    let fired: std::collections::HashSet<String> =
        firings.iter().map(|row| row.get::<_, String>(1)).collect();
    let listed = stdout_json(
        &weft(&schema.url).args(["runs", "list", "--json", "--limit", "5000"]).output()?,
    )?;
    let cron_runs: Vec<&Value> = listed
        .as_array()
        .ok_or("runs list is not an array")?
        .iter()
        .filter(|r| r["trigger"] == "cron")
        .collect();
    let cron_ids: std::collections::HashSet<String> =
        cron_runs.iter().filter_map(|r| r["id"].as_str().map(str::to_owned)).collect();
    let seconds = began.elapsed().as_secs();
    eprintln!(
        "{CHAOS_KILLS} kills ({killed_holder} while the run was going) in {} s; the run ended \
         after {} s with {} resumes; {} ticks fired, {} cron runs",
        kills_done.as_secs(),
        began.elapsed().as_secs(),
        detail["resumes"],
        firings.len(),
        cron_runs.len()
    );
    assert_eq!(fired.len(), firings.len(), "a run started for two ticks");
    assert!(cron_runs.iter().all(|r| r["status"] == "succeeded"), "{cron_runs:#?}");
    assert_eq!(cron_ids, fired, "every cron run is its tick's, and every tick's run exists");
    assert!(firings.len() as u64 >= seconds / 3, "{} ticks in {seconds} s", firings.len());
    assert!(began.elapsed() < Duration::from_secs(180), "over three minutes");
    Ok(())
}

/// A served workflow `name`: a for-each of `items` Stripe upserts, two at
/// a time, at `rate` requests a second (a lookup and a create per item).
fn slow_for_each(
    dir: &Path,
    stripe: &str,
    name: &str,
    items: usize,
    rate: u32,
) -> TestResult<PathBuf> {
    let key = dir.join("stripe-key");
    std::fs::write(&key, weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
[workflow]
name = "{name}"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{stripe}"
rate_limit = "{rate}/s"

[[step]]
id = "each"
for_each = "[range(0; {items})]"
concurrency = 2
upsert = "stripe.customers"
record = {{ email = "{name}${{{{ $item }}}}@fleet.example", name = "Fleet ${{{{ $item }}}}" }}
"#,
            key = key.display(),
        ),
    )?;
    Ok(path)
}

/// `POST /api/runs/{run_id}/cancel` on `worker`.
async fn api_cancel(worker: &Worker, token: &str, run_id: &str) -> TestResult<reqwest::Response> {
    Ok(reqwest::Client::new()
        .post(format!("{}/api/runs/{run_id}/cancel", worker.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .send()
        .await?)
}

/// Starts a run of `workflow` through `worker`'s API; returns its id.
async fn start_run(worker: &Worker, token: &str, workflow: &str) -> TestResult<String> {
    let started = reqwest::Client::new()
        .post(format!("{}/api/workflows/{workflow}/runs", worker.base))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(started.status().as_u16(), 202, "{:?}", started.text().await);
    let started: Value = serde_json::from_str(&started.text().await?)?;
    Ok(started["run_id"].as_str().ok_or("no run id")?.to_owned())
}

/// Waits (a minute at most) until the Stripe emulator holds `at_least`
/// customers whose email ends in `suffix`.
async fn wait_for_customers(
    sandbox: &weft_sandbox::Sandbox,
    suffix: &str,
    at_least: usize,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(60);
    while customers_ending(sandbox, suffix) < at_least {
        if Instant::now() > deadline {
            return Err(format!("fewer than {at_least} {suffix} customers after a minute").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn customers_ending(sandbox: &weft_sandbox::Sandbox, suffix: &str) -> usize {
    sandbox
        .stripe
        .emulator
        .customers()
        .iter()
        .filter(|c| c["email"].as_str().is_some_and(|e| e.ends_with(suffix)))
        .count()
}

/// The run's detail as `worker`'s API shows it, once it is no longer
/// running (two minutes at most).
async fn wait_until_ended(worker: &Worker, token: &str, run_id: &str) -> TestResult<Value> {
    wait_until_ended_within(worker, token, run_id, Duration::from_secs(120)).await
}

/// As [`wait_until_ended`], `limit` at most.
async fn wait_until_ended_within(
    worker: &Worker,
    token: &str,
    run_id: &str,
    limit: Duration,
) -> TestResult<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let shown = reqwest::Client::new()
            .get(format!("{}/api/runs/{run_id}", worker.base))
            .bearer_auth(token)
            .send()
            .await?
            .text()
            .await?;
        let detail: Value = serde_json::from_str(&shown)?;
        if detail["status"] != "running" && detail["status"] != "pending" {
            return Ok(detail);
        }
        if Instant::now() > deadline {
            return Err(format!("run {run_id} did not end in {limit:?}: {detail:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_resume_of_a_run_another_worker_holds_answers_as_weft_runs_resume() -> TestResult {
    let Some(base) = test_url("the_api_resume_of_a_run_another_worker_holds")? else {
        return Ok(());
    };
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    // About six seconds of work: the holder is still running it while the
    // other worker and the CLI are asked to resume it.
    let path = slow_for_each(files.path(), &sandbox.stripe.base_url(), "held", 120, 40)?;
    let token = operator_token(&schema.url)?;
    let holder = Worker::start(&schema.url, &path)?;
    let other = Worker::start(&schema.url, &path)?;
    let run_id = start_run(&holder, &token, "held").await?;
    wait_for_customers(&sandbox, "@fleet.example", 5).await?;
    let holder_pid = format!("/{}/", holder.child.id());

    // The API of the other worker refuses now, naming the holder...
    let http = reqwest::Client::new();
    let asked = http
        .post(format!("{}/api/runs/{run_id}/resume", other.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .send()
        .await?;
    let status = asked.status().as_u16();
    let body: Value = serde_json::from_str(&asked.text().await?)?;
    let api_error = body["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status, 409, "{body}");
    assert!(
        api_error.contains("is being run by worker") && api_error.contains(&holder_pid),
        "{body}"
    );
    // ...as `weft runs resume` does (after waiting for the lease to pass).
    let cli = weft(&schema.url).args(["runs", "resume", &run_id]).output()?;
    let cli_error = String::from_utf8_lossy(&cli.stderr);
    assert!(!cli.status.success(), "{cli_error}");
    assert!(cli_error.contains(&api_error), "the CLI says {cli_error:?}; the API {api_error:?}");
    assert!(customers_ending(&sandbox, "@fleet.example") < 120, "ended before the test's asks");

    // Its worker killed, the run is the other worker's: resumed there
    // (by its claim loop, or by the API's resume if that comes first) and
    // finished, each customer once.
    let mut holder = holder;
    holder.child.kill()?;
    holder.child.wait()?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let asked = http
        .post(format!("{}/api/runs/{run_id}/resume", other.base))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .send()
        .await?;
    let status = asked.status().as_u16();
    let body = asked.text().await?;
    assert!(
        status == 202 || (status == 409 && body.contains("already running here")),
        "{status} {body}"
    );
    let detail = wait_until_ended(&other, &token, &run_id).await?;
    assert_eq!(detail["status"], "succeeded", "{detail:#}");
    assert_eq!(customers_ending(&sandbox, "@fleet.example"), 120);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_runs_cancel_of_another_workers_run_says_that_worker_stops_it_and_it_does()
-> TestResult {
    cancel_of_another_workers_run("weft_runs_cancel_of_another_workers_run", CancelBy::Cli).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_cancel_of_another_workers_run_names_that_worker_and_it_stops() -> TestResult {
    cancel_of_another_workers_run("the_api_cancel_of_another_workers_run", CancelBy::OtherWorker)
        .await
}

/// Who cancels a run one worker is running.
enum CancelBy {
    /// `weft runs cancel` on the store.
    Cli,
    /// `POST /api/runs/{id}/cancel` on another worker.
    OtherWorker,
}

/// A run on one worker cancelled from elsewhere: the answer names that
/// worker and says it stops at its next commit, and it does.
async fn cancel_of_another_workers_run(test: &str, by: CancelBy) -> TestResult {
    let Some(base) = test_url(test)? else {
        return Ok(());
    };
    let (schema, sandbox, files) = fleet_parts(&base).await?;
    let path = slow_for_each(files.path(), &sandbox.stripe.base_url(), "doomed", 120, 20)?;
    let token = operator_token(&schema.url)?;
    let worker = Worker::start(&schema.url, &path)?;
    let run_id = start_run(&worker, &token, "doomed").await?;
    wait_for_customers(&sandbox, "@fleet.example", 5).await?;

    let said = match by {
        CancelBy::Cli => {
            let out = weft(&schema.url).args(["runs", "cancel", &run_id]).output()?;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        CancelBy::OtherWorker => {
            let other = Worker::start(&schema.url, &path)?;
            let asked = api_cancel(&other, &token, &run_id).await?;
            assert_eq!(asked.status().as_u16(), 200, "{:?}", asked.text().await);
            let answer: Value = serde_json::from_str(&asked.text().await?)?;
            assert_eq!(answer["status"], "cancelled", "{answer:#}");
            let pid = format!("/{}/", worker.child.id());
            assert!(answer["worker"].as_str().is_some_and(|w| w.contains(&pid)), "{answer:#}");
            answer["message"].as_str().unwrap_or_default().to_owned()
        }
    };
    let pid = format!("/{}/", worker.child.id());
    assert!(
        said.contains("is cancelled")
            && said.contains(&pid)
            && said.contains("stops it at its next commit"),
        "{said}"
    );
    // And it does: within a lease (1 s here) and a group of items the
    // writes stop, and the run stays cancelled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = customers_ending(&sandbox, "@fleet.example");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(customers_ending(&sandbox, "@fleet.example"), settled, "writes went on");
    assert!(settled < 120, "the run ended before the cancel; the test proves nothing");
    let detail = wait_until_ended(&worker, &token, &run_id).await?;
    assert_eq!(detail["status"], "cancelled", "{detail:#}");
    // The worker that ran it took the cancel as one, not as a fault.
    let complaints =
        worker.complaints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    assert!(
        !complaints.iter().any(|l| l.contains("could not go on") || l.contains("another worker")),
        "the running worker logged the cancel as an error: {complaints:#?}"
    );
    Ok(())
}

/// The sum over `workers` of `weft_cron_firings_total` for `workflow` and
/// each outcome.
async fn cron_outcomes(
    workers: &[Worker],
    token: &str,
    workflow: &str,
) -> TestResult<std::collections::BTreeMap<String, u64>> {
    let mut sums = std::collections::BTreeMap::new();
    for worker in workers {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", worker.base))
            .bearer_auth(token)
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines().filter(|l| l.starts_with("weft_cron_firings_total{")) {
            if !line.contains(&format!("workflow=\"{workflow}\"")) {
                continue;
            }
            let outcome = line
                .split("outcome=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .ok_or("no outcome label")?;
            let value: f64 = line.rsplit(' ').next().ok_or("no value")?.parse()?;
            *sums.entry(outcome.to_owned()).or_insert(0) += value as u64;
        }
    }
    Ok(sums)
}

async fn firings(url: &str, workflow: &str) -> TestResult<Vec<(i64, String)>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT scheduled_ms, run_id FROM weft_cron_firings WHERE workflow = $1
             ORDER BY scheduled_ms",
            &[&workflow],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_started_after_missed_firings_catch_up_once_and_count_fired_elsewhere()
-> TestResult {
    let Some(base) = test_url("three_workers_catch_up_once")? else {
        return Ok(());
    };
    let schema = ScratchSchema::create(&base).await?;
    let files = tempfile::tempdir()?;
    // No vendor: the run only checks its input, so every tick's run ends
    // at once. `overlap = "allow"`: each worker's scheduler reaches the
    // firing's key on every tick, never a skip.
    let path = files.path().join("catchup.toml");
    std::fs::write(
        &path,
        r#"
[workflow]
name = "catchup"

[inputs.note]
type = "string"
default = "tick"

[trigger]
cron = "* * * * * *"
overlap = "allow"
catch_up = true

[[step]]
id = "check"
fail = "not a tick"
when = ".inputs.note != \"tick\""
"#,
    )?;
    let token = {
        let out =
            weft(&schema.url).args(["tokens", "create", "ops", "--role", "admin"]).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout)?.trim().to_owned()
    };

    // One worker fires a few ticks, then the fleet is down for three.
    let first = Worker::start(&schema.url, &path)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while firings(&schema.url, "catchup").await?.len() < 2 {
        if Instant::now() > deadline {
            return Err("the schedule did not fire".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(first);
    let before = firings(&schema.url, "catchup").await?;
    let last_before = before.last().ok_or("no firing")?.0;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Three workers start on the same database.
    let restarted_ms = weft::store::now_ms() as i64;
    let workers = start_workers(&schema.url, &path, 3)?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Read mid-second, when every tick's firing is recorded and counted.
    let into_second = weft::store::now_ms() % 1000;
    tokio::time::sleep(Duration::from_millis((1400 - into_second) % 1000)).await;
    let recorded_then = firings(&schema.url, "catchup").await?.len() - before.len();
    let outcomes = cron_outcomes(&workers, &token, "catchup").await?;
    let recorded_after = firings(&schema.url, "catchup").await?.len() - before.len();
    drop(workers);
    let after = firings(&schema.url, "catchup").await?;
    eprintln!("cron outcomes on three workers: {outcomes:?}; {} firings", after.len());

    // The missed firings are caught up once, by the first of them, keyed
    // by its own time: not once per worker.
    let missed: Vec<i64> = after
        .iter()
        .map(|(ms, _)| *ms)
        .filter(|ms| *ms > last_before && *ms <= restarted_ms)
        .collect();
    assert_eq!(missed, [last_before + 1000], "{after:?}");
    let get = |k: &str| outcomes.get(k).copied().unwrap_or(0);
    // One catch-up; a second only when a worker that started a few
    // milliseconds later took the next ordinary tick for a missed one (it
    // still ran once, which the firings above and below judge).
    assert!((1..=2).contains(&get("caught_up")), "{outcomes:?}");
    // Every tick since was tried by all three and started by one: the
    // others count it `fired_elsewhere`, and the starts counted are the
    // firings recorded.
    let started = get("ran") + get("caught_up");
    assert!(
        recorded_then as u64 <= started && started <= recorded_after as u64,
        "{outcomes:?}; {recorded_then}..{recorded_after} firings recorded"
    );
    assert!(get("fired_elsewhere") >= 2, "{outcomes:?}");
    assert_eq!(get("failed"), 0, "{outcomes:?}");
    // Each firing has its own run, and every run listed is a firing's.
    let runs = stdout_json(
        &weft(&schema.url).args(["runs", "list", "--json", "--limit", "500"]).output()?,
    )?;
    let run_ids: std::collections::BTreeSet<String> = runs
        .as_array()
        .ok_or("runs list is not an array")?
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .collect();
    let fired: std::collections::BTreeSet<String> = after.into_iter().map(|(_, id)| id).collect();
    assert_eq!(run_ids, fired);
    Ok(())
}
