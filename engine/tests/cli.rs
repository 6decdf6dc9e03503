//! The `weft` binary as a user runs it: exit codes, JSON summary, and
//! diagnostics that point at the file, line and column; a run killed with
//! SIGKILL at random points and resumed each time ends with every write
//! made exactly once; `weft runs` reaches the store through a running
//! `weft serve`. The emulators of the crash test run in this test process,
//! so they outlive every engine process the test kills.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;

#[path = "cli/languages.rs"]
mod languages;
#[path = "cli/plugins.rs"]
mod plugins;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

fn weft(args: &[&str], cache: &Path) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_CACHE_DIR", cache)
        .env_remove("WEFT_STATE_DIR")
        .output()
}

fn cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("weft-cli-cache")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows").join(name).display().to_string()
}

#[test]
fn run_sandbox_json_exports_every_seeded_customer() -> TestResult {
    let out = weft(
        &["run", "--sandbox", "--seed", "120", "--json", &example("stripe-export.toml")],
        &cache(),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["status"], "succeeded", "{summary}");
    assert_eq!(summary["steps"][0]["counts"]["read"], 120);
    assert_eq!(summary["steps"][0]["status"], "succeeded");
    assert_eq!(summary["connections"]["stripe"]["requests"], 2);
    assert!(summary["run_id"].as_str().is_some_and(|id| !id.is_empty()));
    Ok(())
}

#[test]
fn a_run_writes_its_metrics_file_for_a_textfile_collector() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("weft.prom");
    std::fs::write(&file, "stale\n")?;
    let out = weft(
        &[
            "run",
            "--sandbox",
            "--seed",
            "120",
            "--json",
            "--metrics-file",
            &file.display().to_string(),
            &example("stripe-export.toml"),
        ],
        &cache(),
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let text = std::fs::read_to_string(&file)?;
    let workflow = summary["workflow"].as_str().ok_or("a workflow name")?;
    assert!(
        text.contains(&format!(
            "weft_runs_finished_total{{workflow=\"{workflow}\",status=\"succeeded\"}} 1\n"
        )),
        "{text}"
    );
    assert!(text.contains("weft_records_total{"), "{text}");
    // Prometheus's text format, whole: the old file replaced, no EOF
    // marker, nothing left beside it.
    assert!(!text.contains("stale") && !text.contains("# EOF"), "{text}");
    assert!(text.contains("# TYPE weft_http_requests_total counter"), "{text}");
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("weft_http_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(Some(requests), summary["connections"]["stripe"]["requests"].as_f64(), "{text}");
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 1, "only the metrics file");
    Ok(())
}

#[test]
fn validate_points_at_the_line_and_column_of_an_error() -> TestResult {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[workflow]\nname = \"bad\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:K\"\n\n[[step]]\nid = \"x\"\nlist = \"stripe.invoices\"\n",
    )?;
    let out = weft(&["validate", &file.display().to_string()], &cache())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.toml:10:8"), "{stderr}");
    assert!(stderr.contains("no resource \"invoices\""), "{stderr}");
    assert!(stderr.contains("^^^^"), "{stderr}");
    Ok(())
}

fn examples() -> std::io::Result<Vec<String>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows");
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| p.display().to_string())
        .collect();
    files.sort();
    Ok(files)
}

#[test]
fn validate_accepts_every_example() -> TestResult {
    let files = examples()?;
    assert!(files.len() >= 2, "{files:?}");
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = weft(&args, &cache())?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn every_example_runs_against_the_sandbox() -> TestResult {
    for file in examples()? {
        let state = tempfile::tempdir()?;
        let state_dir = state.path().display().to_string();
        // Each example must run as shipped, on the embedded defaults.
        let out = weft(
            &["run", "--sandbox", "--seed", "20", "--json", "--state-dir", &state_dir, &file],
            &cache(),
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {stderr}");
        let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(summary["status"], "succeeded", "{file}: {summary}");
    }
    Ok(())
}

#[test]
fn plugin_inspect_prints_the_stripe_manifest() -> TestResult {
    let out = weft(&["plugin", "inspect", "stripe", "--json"], &cache())?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let manifest = &json["manifest"];
    assert_eq!(manifest["name"], "stripe");
    assert_eq!(manifest["auth"]["scheme"], "basic-key-as-user");
    let customers = &manifest["resources"][0];
    assert_eq!(customers["name"], "customers");
    assert_eq!(customers["max_page_size"], 100);
    assert_eq!(customers["irreversible"], serde_json::json!(["remove"]));
    Ok(())
}

#[test]
fn a_missing_credential_is_a_configuration_error_naming_the_variable() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["run", &example("stripe-export.toml")])
        .env("WEFT_CACHE_DIR", cache())
        .env("WEFT_STATE_DIR", tempfile::tempdir()?.path())
        .env_remove("STRIPE_API_KEY")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("STRIPE_API_KEY"), "{stderr}");
    Ok(())
}

#[test]
fn runs_list_and_show_read_back_a_run() -> TestResult {
    let state = tempfile::tempdir()?;
    let state_dir = state.path().display().to_string();
    let out = weft(
        &[
            "run",
            "--sandbox",
            "--seed",
            "30",
            "--json",
            "--state-dir",
            &state_dir,
            &example("stripe-export.toml"),
        ],
        &cache(),
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let run_id = summary["run_id"].as_str().unwrap_or_default().to_owned();

    let list = weft(&["runs", "list", "--json", "--state-dir", &state_dir], &cache())?;
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let runs: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    assert_eq!(runs[0]["id"], run_id.as_str());
    assert_eq!(runs[0]["status"], "succeeded");

    let show = weft(&["runs", "show", &run_id, "--json", "--state-dir", &state_dir], &cache())?;
    assert!(show.status.success(), "{}", String::from_utf8_lossy(&show.stderr));
    let run: serde_json::Value = serde_json::from_slice(&show.stdout)?;
    assert_eq!(run["steps"][0]["counts"]["read"], 30);
    assert_eq!(run["steps"][0]["pages"], 1);
    assert!(run.get("workflow_text").is_none());

    let missing = weft(&["runs", "show", "nope", "--state-dir", &state_dir], &cache())?;
    assert_ne!(missing.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run with id nope"));
    Ok(())
}

/// A state dir and a component cache shared by the test's processes.
struct Dirs {
    state: tempfile::TempDir,
    files: tempfile::TempDir,
}

impl Dirs {
    fn new() -> TestResult<Self> {
        Ok(Dirs { state: tempfile::tempdir()?, files: tempfile::tempdir()? })
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
        command
            .arg("--state-dir")
            .arg(self.state.path())
            .arg("--cache-dir")
            .arg(cache_dir())
            .env_remove("WEFT_LOG")
            .stdin(Stdio::null());
        command
    }

    fn write(&self, name: &str, text: &str) -> TestResult<PathBuf> {
        let path = self.files.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("weft-cli-component-cache")
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

fn key_file(dir: &Path, name: &str, key: &str) -> TestResult<String> {
    let path = dir.join(name);
    std::fs::write(&path, key)?;
    Ok(format!("file:{}", path.display()))
}

const ITEMS: usize = 1000;
const KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_twenty_times_and_resumed_writes_each_customer_exactly_once() -> TestResult {
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 0,
        ..Default::default()
    })
    .await?;
    let dirs = Dirs::new()?;
    let stripe_key =
        key_file(dirs.files.path(), "stripe-key", weft_sandbox::stripe::SANDBOX_API_KEY)?;
    let growpanel_key =
        key_file(dirs.files.path(), "growpanel-key", weft_sandbox::growpanel::SANDBOX_API_KEY)?;
    let export = dirs.files.path().join("export.jsonl");
    let text = format!(
        r#"
[workflow]
name = "crash-test"

[connections.stripe]
plugin = "stripe"
credentials = "{stripe_key}"
base_url = "{stripe}"
rate_limit = "10000/s"

[connections.growpanel]
plugin = "growpanel"
credentials = "{growpanel_key}"
base_url = "{growpanel}"
settings = {{ source = "ds_weft_demo" }}
rate_limit = "10000/s"

[[step]]
id = "stripe"
for_each = "[range(0; {ITEMS})]"
concurrency = 2
upsert = "stripe.customers"
record = {{ email = "user${{{{ $item }}}}@crash.example", name = "User ${{{{ $item }}}}" }}

# Read back page by page (a hundred pages, each committed with its
# cursor) into a file, and streamed into the next step.
[[step]]
id = "export"
list = "stripe.customers"
page_size = 10
output = "{export}"

[[step]]
id = "growpanel"
for_each = ".steps.export.records[]"
concurrency = 2
upsert = "growpanel.customers"
record = {{ id = "${{{{ $item.id }}}}", name = "${{{{ $item.name }}}}", email = "${{{{ $item.email }}}}", created_date = "2026-01-01", country = "US" }}
"#,
        stripe = sandbox.stripe.base_url(),
        growpanel = sandbox.growpanel.base_url(),
        export = export.display(),
    );
    let path = dirs.write("crash.toml", &text)?;
    let growpanel_before = sandbox.growpanel.emulator.customer_count();

    // Compile the components into the cache first (weft validate loads the
    // plugins): a first run killed while it compiles never reaches the run,
    // and on a fresh machine every kill would land there. How long that
    // took also says how long a process takes to start here.
    let warm = dirs.command().arg("validate").arg(&path).output()?;
    if !warm.status.success() {
        return Err(format!(
            "the crash workflow does not validate: {}",
            String::from_utf8_lossy(&warm.stderr)
        )
        .into());
    }
    let started = Instant::now();
    dirs.command().arg("validate").arg(&path).output()?;
    let startup = started.elapsed().min(Duration::from_secs(2));

    let seed: u64 = rand::rng().random();
    eprintln!("kill schedule seed {seed}, start-up {} ms", startup.as_millis());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(300);
    // Kills of a process that had the run in hand (not of one killed before
    // it recorded the run).
    let mut kills = 0;
    let mut run_id: Option<String> = None;
    let mut finished: Option<Output> = None;
    while finished.is_none() {
        if Instant::now() > deadline {
            return Err(format!("gave up after {kills} kills").into());
        }
        let mut command = dirs.command();
        match &run_id {
            None => command.args(["run", "--json"]).arg(&path),
            Some(id) => command.args(["runs", "resume", "--json", id]),
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
        if kills < KILLS {
            // Anywhere from start-up to well into the work.
            let wait = startup + Duration::from_millis(rng.random_range(0..300));
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
                let listed = dirs.command().args(["runs", "list", "--json"]).output()?;
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
    assert!(
        kills >= KILLS,
        "the run finished after only {kills} kills; the test must kill it at least {KILLS} times"
    );
    let summary = stdout_json(&output)?;
    assert_eq!(
        summary["status"],
        "succeeded",
        "{summary:#}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let customers = sandbox.stripe.emulator.customers();
    let emails: std::collections::HashSet<String> =
        customers.iter().filter_map(|c| c["email"].as_str().map(str::to_owned)).collect();
    assert_eq!(
        customers.len(),
        ITEMS,
        "Stripe holds exactly {ITEMS} customers after {kills} kills"
    );
    assert_eq!(emails.len(), ITEMS, "no duplicate emails in Stripe");
    assert_eq!(
        sandbox.growpanel.emulator.customer_count() - growpanel_before,
        ITEMS,
        "GrowPanel holds exactly {ITEMS} new customers"
    );

    let shown = dirs
        .command()
        .args(["runs", "show", "--json"])
        .arg(summary["run_id"].as_str().unwrap_or_default())
        .output()?;
    // Typed: a missing field or step fails here instead of letting the
    // checks below pass over nothing.
    let shown: weft::serve::RunDetail = serde_json::from_value(stdout_json(&shown)?)?;
    assert_eq!(shown.run.status, weft::store::Status::Succeeded);
    assert!(shown.run.resumes >= 1, "{shown:#?}");
    let ids: Vec<&str> = shown.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["stripe", "export", "growpanel"], "every step is shown");
    for step in &shown.steps {
        if step.id == "export" {
            assert_eq!(step.counts.read, ITEMS as u64, "{step:#?}");
        } else {
            assert_eq!(step.items, ITEMS as u64, "{step:#?}");
        }
        assert_eq!(step.counts.failed, 0, "{step:#?}");
    }
    let exported = std::fs::read_to_string(&export)?;
    let ids: std::collections::HashSet<String> = exported
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).map(|c| c["id"].to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        (exported.lines().count(), ids.len()),
        (ITEMS, ITEMS),
        "the export file has each customer once"
    );
    eprintln!("{kills} kills, {} resumes", shown.run.resumes);
    Ok(())
}

#[test]
fn validate_points_at_the_file_line_and_column_with_a_caret() -> TestResult {
    let dirs = Dirs::new()?;
    let path = dirs.write(
        "bad.toml",
        "[workflow]\nname = \"bad\"\n\n[trigger]\ncron = \"61 * * * *\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:X\"\n\n[[step]]\nid = \"a\"\nlist = \"stripe.customers\"\nwhen = \".steps.b.count > 0\"\n\n[[step]]\nid = \"b\"\nremove = \"stripe.customers\"\nkey = \"cus_1\"\n",
    )?;
    let output = dirs.command().arg("validate").arg(&path).output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad cron expression"), "{stderr}");
    assert!(stderr.contains("bad.toml:5:8"), "{stderr}");
    assert!(stderr.contains("step \"b\" runs after step \"a\""), "{stderr}");
    assert!(stderr.contains("bad.toml:14:16"), "{stderr}");
    assert!(stderr.contains("^"), "{stderr}");

    // weft run refuses it with the same diagnostics, each said once.
    let output = dirs.command().arg("run").arg(&path).output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml:5:8") && stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("error: error"), "{stderr}");
    Ok(())
}

#[test]
fn validate_checks_ops_against_the_plugins_manifest() -> TestResult {
    let dirs = Dirs::new()?;
    let path = dirs.write(
        "irreversible.toml",
        "[workflow]\nname = \"rm\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:X\"\n\n[[step]]\nid = \"b\"\nremove = \"stripe.customers\"\nkey = \"cus_1\"\n\n[[step]]\nid = \"c\"\nupsert = \"stripe.invoices\"\nrecord = {}\n",
    )?;
    let output = dirs.command().arg("validate").arg(&path).output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr
            .contains("remove on stripe.customers cannot be undone; set allow_irreversible = true"),
        "{stderr}"
    );
    assert!(stderr.contains("plugin stripe has no resource \"invoices\""), "{stderr}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_serve_holds_the_store_runs_go_through_its_api_and_run_says_why_it_cannot_open_it()
-> TestResult {
    let dirs = Dirs::new()?;
    let path = dirs.write("idle.toml", "[workflow]\nname = \"idle\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:X\"\n\n[[step]]\nid = \"a\"\nlist = \"stripe.customers\"\n")?;
    let mut serve = dirs
        .command()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let address = dirs.state.path().join("weft-serve.json");
    let started = Instant::now();
    while !address.exists() {
        if started.elapsed() > Duration::from_secs(60) || serve.try_wait()?.is_some() {
            let _ = serve.kill();
            return Err("weft serve did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listed = dirs.command().args(["runs", "list", "--json"]).output()?;
    let ran = dirs.command().args(["run"]).arg(&path).output()?;
    let _ = Command::new("kill").arg("-TERM").arg(serve.id().to_string()).status();
    let stopped = serve.wait()?;

    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    assert_eq!(stdout_json(&listed)?, serde_json::json!([]));
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(stderr.contains("in use by another weft process"), "{stderr}");
    assert!(stopped.success(), "serve exits cleanly on SIGTERM: {stopped:?}");
    assert!(!address.exists(), "the address file is removed on exit");
    Ok(())
}

#[test]
fn a_sandbox_run_is_not_resumed_against_the_real_vendors() -> TestResult {
    let dirs = Dirs::new()?;
    let export = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/stripe-export.toml");
    let ran =
        dirs.command().args(["run", "--sandbox", "--seed", "5", "--json"]).arg(&export).output()?;
    let summary = stdout_json(&ran)?;
    let id = summary["run_id"].as_str().ok_or("a run id")?;
    let resumed = dirs.command().args(["runs", "resume", id]).output()?;
    assert_eq!(resumed.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("in-process emulators"), "{stderr}");
    let shown = stdout_json(&dirs.command().args(["runs", "show", "--json", id]).output()?)?;
    assert_eq!(shown["trigger"], "sandbox");
    Ok(())
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

/// In its own process, so the trace log is the binary's own (an in-process
/// subscriber in a test binary that runs other tests on other threads
/// captured nothing at times: tracing's callsite cache is process-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_secret_never_reaches_the_store_or_the_logs_even_at_trace_level() -> TestResult {
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 30,
        ..Default::default()
    })
    .await?;
    let secret = weft_sandbox::stripe::SANDBOX_API_KEY;
    let dirs = Dirs::new()?;
    // The credential comes from a file, as in production.
    let key = key_file(dirs.files.path(), "stripe.key", secret)?;
    let path = dirs.write(
        "secret-check.toml",
        &format!(
            "[workflow]\nname = \"secret-check\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n\n[[step]]\nid = \"create\"\nupsert = \"stripe.customers\"\nrecord = {{ email = \"secret-check@example.com\" }}\n\n[[step]]\nid = \"missing\"\nget = \"stripe.customers\"\nkey = \"cus_does_not_exist\"\n",
            sandbox.stripe.base_url()
        ),
    )?;
    let output = dirs.command().args(["--log", "trace", "run", "--json"]).arg(&path).output()?;
    let summary = stdout_json(&output)?;
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    assert_eq!(
        summary["steps"][0]["counts"]["read"], 30,
        "the secret worked: the emulator accepted it"
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stdout.contains(secret), "the summary holds the secret");
    assert!(stderr.lines().count() > 20, "trace logging wrote something: {stderr}");
    assert!(!stderr.contains(secret), "a log line holds the secret");
    assert_eq!(files_containing(dirs.state.path(), secret.as_bytes()), Vec::<String>::new());
    Ok(())
}

/// A loopback stand-in for a vendor's production API: it records every
/// request it gets and answers 500. A sandbox run must send it none.
struct Production {
    base_url: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Production {
    async fn start() -> TestResult<Production> {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let record = record.clone();
            async move {
                if let Ok(mut seen) = record.lock() {
                    seen.push(format!("{} {}", request.method(), request.uri()));
                }
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "production was reached")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Production { base_url, seen, server })
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().map(|seen| seen.clone()).unwrap_or_default()
    }
}

impl Drop for Production {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A built-in connector's component with every `from` in its bytes
/// replaced by `to` (same length): a stand-in for a third-party connector
/// of the same vendor under another name (`acmepanel` for GrowPanel).
fn third_party_copy(
    dir: &Path,
    builtin: &str,
    replacements: &[(&str, &str)],
    file: &str,
) -> TestResult<PathBuf> {
    let mut bytes = weft::builtin::component(builtin).ok_or("a built-in component")?.to_vec();
    for (from, to) in replacements {
        assert_eq!(from.len(), to.len(), "a replacement keeps the length");
        let mut at = 0;
        while let Some(found) = bytes[at..].windows(from.len()).position(|w| w == from.as_bytes()) {
            let start = at + found;
            bytes[start..start + to.len()].copy_from_slice(to.as_bytes());
            at = start + to.len();
        }
    }
    let path = dir.join(file);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_plugin_in_a_sandbox_run_never_sends_a_request_elsewhere() -> TestResult {
    let production = Production::start().await?;
    let dirs = Dirs::new()?;
    let plugin = third_party_copy(
        dirs.files.path(),
        "growpanel",
        &[("growpanel", "acmepanel")],
        "acmepanel.wasm",
    )?;
    let inspected =
        stdout_json(&dirs.command().args(["plugin", "inspect", "--json"]).arg(&plugin).output()?)?;
    assert_eq!(
        (inspected["manifest"]["name"].as_str(), inspected["manifest"]["vendor"].as_str()),
        (Some("acmepanel"), Some("GrowPanel"))
    );
    let key = key_file(dirs.files.path(), "live-key", "gp_live_a_real_key")?;
    let path = dirs.write(
        "third-party.toml",
        &format!(
            "[workflow]\nname = \"third-party\"\n\n[connections.growpanel]\nplugin = \"{}\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\nsettings = {{ source = \"ds_weft_demo\" }}\n\n[[step]]\nid = \"rows\"\nlist = \"growpanel.customers\"\n\n[[step]]\nid = \"add\"\nupsert = \"growpanel.customers\"\nrecord = {{ id = \"cus_sandbox_only\", name = \"Sandbox\", created_date = \"2026-01-15\", country = \"US\" }}\n",
            plugin.display(),
            production.base_url
        ),
    )?;
    let ran =
        dirs.command().args(["run", "--sandbox", "--seed", "5", "--json"]).arg(&path).output()?;
    let summary = stdout_json(&ran)?;
    // The regression: a connection whose plugin is a path was left pointing
    // at its own base URL, with its own credential.
    assert_eq!(production.requests(), Vec::<String>::new(), "a sandbox run reached production");
    assert_eq!(
        summary["status"],
        "succeeded",
        "{summary:#}\n{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(summary["steps"][0]["counts"]["read"], 5, "the rows came from the seeded emulator");
    assert_eq!(summary["steps"][1]["counts"]["created"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_run_whose_plugin_has_no_emulator_is_refused_before_any_request() -> TestResult {
    let production = Production::start().await?;
    let dirs = Dirs::new()?;
    let plugin = third_party_copy(
        dirs.files.path(),
        "growpanel",
        &[("growpanel", "acmebills"), ("GrowPanel", "AcmeBills")],
        "acmebills.wasm",
    )?;
    let key = key_file(dirs.files.path(), "live-key", "ab_live_a_real_key")?;
    let path = dirs.write(
        "no-emulator.toml",
        &format!(
            "[workflow]\nname = \"no-emulator\"\n\n[connections.bills]\nplugin = \"{}\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\nsettings = {{ source = \"ds_1\" }}\n\n[[step]]\nid = \"rows\"\nlist = \"bills.customers\"\n",
            plugin.display(),
            production.base_url
        ),
    )?;
    let ran = dirs.command().args(["run", "--sandbox", "--seed", "5"]).arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no emulator for acmebills (vendor \"AcmeBills\")"), "{stderr}");
    assert!(
        stderr.contains("growpanel (GrowPanel)") && stderr.contains("stripe-scim (Stripe)"),
        "the error lists the emulators: {stderr}"
    );
    assert_eq!(production.requests(), Vec::<String>::new());

    // Naming an emulator on the connection is the way out.
    let named = std::fs::read_to_string(&path)?.replace(
        "settings = { source = \"ds_1\" }",
        "settings = { source = \"ds_weft_demo\" }\nsandbox = \"growpanel\"",
    );
    std::fs::write(&path, named)?;
    let ran =
        dirs.command().args(["run", "--sandbox", "--seed", "5", "--json"]).arg(&path).output()?;
    let summary = stdout_json(&ran)?;
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    assert_eq!(summary["steps"][0]["counts"]["read"], 5);
    assert_eq!(production.requests(), Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_does_not_resume_a_sandbox_run_against_the_real_base_url() -> TestResult {
    let production = Production::start().await?;
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 5,
        ..Default::default()
    })
    .await?;
    let dirs = Dirs::new()?;
    let key = key_file(dirs.files.path(), "live-key", "sk_live_a_real_key")?;
    let path = dirs.write(
        "export.toml",
        &format!(
            "[workflow]\nname = \"export\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n",
            production.base_url
        ),
    )?;
    // A sandbox run interrupted before its first step, as `weft run
    // --sandbox` leaves one on SIGTERM.
    let run_id = {
        let runtime = weft::runtime::Runtime::new(weft::runtime::RuntimeConfig {
            cache_dir: Some(cache_dir()),
            ..Default::default()
        })?;
        let executor =
            weft::executor::Executor::new(runtime, weft::store::RunStore::open(dirs.state.path())?);
        let workflow = weft::workflow::Workflow::load(&path)?;
        let endpoints = sandbox.endpoints();
        let stripe = endpoints.iter().find(|e| e.vendor == "stripe").ok_or("a stripe emulator")?;
        let overrides = std::collections::BTreeMap::from([(
            "stripe".to_owned(),
            weft::executor::ConnectionOverride {
                base_url: stripe.base_url.clone(),
                secret: weft::credentials::Secret::new(stripe.api_key.clone()),
            },
        )]);
        let stop = weft::executor::StopSignal::default();
        stop.shutdown.cancel();
        let options = weft::executor::RunOptions {
            overrides,
            sandbox: Some(endpoints.iter().map(|e| e.base_url.clone()).collect()),
            stop,
            ..Default::default()
        };
        let summary = executor.start(&workflow, &options, &weft::executor::Silent).await?;
        assert_eq!(
            summary.status,
            weft::store::Status::Running,
            "interrupted, resumable in principle"
        );
        summary.run_id
    };
    let mut serve = dirs
        .command()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let address = dirs.state.path().join("weft-serve.json");
    let started = Instant::now();
    let mut status = Value::Null;
    while started.elapsed() < Duration::from_secs(60) && serve.try_wait()?.is_none() {
        if address.exists() {
            let shown = dirs.command().args(["runs", "show", "--json", &run_id]).output()?;
            if let Ok(run) = serde_json::from_slice::<Value>(&shown.stdout) {
                status = run["status"].clone();
                if status != "running" {
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").arg("-TERM").arg(serve.id().to_string()).status();
    let _ = serve.wait()?;
    // The regression: serve resumed it at start against the workflow's own
    // base URL with the workflow's own credential.
    assert_eq!(
        production.requests(),
        Vec::<String>::new(),
        "serve resumed a sandbox run against production"
    );
    assert_eq!(status, "failed", "the refused run is marked failed so no later start tries again");
    let shown = stdout_json(&dirs.command().args(["runs", "show", "--json", &run_id]).output()?)?;
    assert!(
        shown["error"].as_str().is_some_and(|e| e.contains("in-process emulators")),
        "{shown:#}"
    );
    sandbox.shutdown().await;
    Ok(())
}

#[test]
fn plugin_check_sandbox_picks_the_emulator_by_vendor_and_lists_them_when_none_fits() -> TestResult {
    let dirs = Dirs::new()?;
    // The regression: `acmepanel` (vendor GrowPanel) got "the sandbox has
    // no emulator for acmepanel".
    let plugin = third_party_copy(
        dirs.files.path(),
        "growpanel",
        &[("growpanel", "acmepanel")],
        "acmepanel.wasm",
    )?;
    let checked =
        dirs.command().args(["plugin", "check", "--sandbox", "--json"]).arg(&plugin).output()?;
    let results = stdout_json(&checked)?;
    assert!(checked.status.success(), "{results:#}\n{}", String::from_utf8_lossy(&checked.stderr));
    assert!(
        results.as_array().is_some_and(|r| r.iter().any(|r| r["verdict"] == "pass")),
        "{results:#}"
    );

    let other = third_party_copy(
        dirs.files.path(),
        "growpanel",
        &[("growpanel", "acmebills"), ("GrowPanel", "AcmeBills")],
        "acmebills.wasm",
    )?;
    let refused = dirs.command().args(["plugin", "check", "--sandbox"]).arg(&other).output()?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    for emulator in [
        "stripe (Stripe)",
        "stripe-scim (Stripe)",
        "baremetrics (Baremetrics)",
        "metronome (Metronome)",
        "growpanel (GrowPanel)",
    ] {
        assert!(stderr.contains(emulator), "the error lists {emulator}: {stderr}");
    }
    let named = dirs
        .command()
        .args(["plugin", "check", "--sandbox", "--emulator", "growpanel", "--json"])
        .arg(&other)
        .output()?;
    assert!(named.status.success(), "{}", String::from_utf8_lossy(&named.stderr));
    Ok(())
}

#[test]
fn runs_list_into_a_closed_pipe_exits_quietly() -> TestResult {
    let dirs = Dirs::new()?;
    // A pipe whose reader is gone before weft writes a byte, as with
    // `weft runs list | head` once head has had enough.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out =
        dirs.command().args(["runs", "list"]).stdout(writer).stderr(Stdio::piped()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The regression: `failed printing to stdout: Broken pipe`, exit 101.
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
    Ok(())
}

#[test]
fn a_credential_file_error_says_its_cause_once() -> TestResult {
    let dirs = Dirs::new()?;
    let missing = dirs.files.path().join("no-such-key");
    let path = dirs.write(
        "file-key.toml",
        &format!("[workflow]\nname = \"file-key\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"file:{}\"\n\n[[step]]\nid = \"a\"\nlist = \"stripe.customers\"\n", missing.display()),
    )?;
    let out = dirs.command().arg("run").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connection \"stripe\": cannot read credential file {}",
            missing.display()
        )),
        "{stderr}"
    );
    // The regression: "…: No such file or directory (os error 2): cannot
    // read credential file …: No such file …: No such file …".
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
    assert_eq!(stderr.matches("cannot read credential file").count(), 1, "{stderr}");
    Ok(())
}

#[test]
fn run_names_the_output_files_it_wrote() -> TestResult {
    let dirs = Dirs::new()?;
    let path = dirs.write(
        "export.toml",
        "[workflow]\nname = \"export\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:STRIPE_API_KEY\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\noutput = \"out/customers.jsonl\"\n\n[[step]]\nid = \"never\"\nwhen = \"false\"\nlist = \"stripe.customers\"\noutput = \"out/never.jsonl\"\n",
    )?;
    let file = dirs.files.path().join("out/customers.jsonl");
    let json =
        dirs.command().args(["run", "--sandbox", "--seed", "12", "--json"]).arg(&path).output()?;
    let summary = stdout_json(&json)?;
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    assert_eq!(
        summary["output_files"],
        serde_json::json!([{ "step": "export", "path": file.display().to_string(), "records": 12 }])
    );
    assert_eq!(std::fs::read_to_string(&file)?.lines().count(), 12);

    let human = dirs.command().args(["run", "--sandbox", "--seed", "12"]).arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&human.stderr);
    assert!(human.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("wrote {} (12 records, step export)", file.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("never.jsonl"), "{stderr}");
    Ok(())
}

#[test]
fn a_panic_during_weft_run_marks_the_run_failed_and_exits_3_not_101() -> TestResult {
    // Regression: a panic in a run exited 101 and left the run `running`
    // (and `weft runs resume` panicked again). No path from input to a
    // panic is known to be left, so a debug build's hook injects one.
    let dirs = Dirs::new()?;
    let export = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workflows/stripe-export.toml");
    let workflow = std::fs::read_to_string(&export)?;
    let step = workflow
        .lines()
        .find_map(|l| l.strip_prefix("id = "))
        .map(|s| s.trim_matches('"').to_owned())
        .ok_or("a step id")?;
    let ran = dirs
        .command()
        .env("WEFT_TEST_PANIC_AT_STEP", &step)
        .args(["run", "--sandbox", "--seed", "5"])
        .arg(&export)
        .output()?;
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("internal error") && stderr.contains("the run is marked failed"),
        "{stderr}"
    );
    let listed = stdout_json(&dirs.command().args(["runs", "list", "--json"]).output()?)?;
    let run = &listed[0];
    assert_eq!(run["status"], "failed", "{listed:#}");
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|e| e.contains("internal error") && e.contains("WEFT_TEST_PANIC_AT_STEP")),
        "{run:#}"
    );
    Ok(())
}

/// Regression: `halt` in an expression reached jaq's `unwrap_valr`, which
/// calls `process::exit`: `weft run` ended with status 0 and the run was
/// left `running` (and `weft serve` stopped at the first such request, and
/// again at every restart that resumed it). It is refused when the
/// workflow loads, with a caret under it, and `weft run` says the workflow
/// is invalid (exit 2) without starting a run.
#[test]
fn halt_in_an_expression_is_refused_by_validate_and_run_with_a_caret() -> TestResult {
    let dirs = Dirs::new()?;
    let path = dirs.write(
        "halting.toml",
        "[workflow]\nname = \"halting\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\n\n[[step]]\nid = \"check\"\nwhen = \".inputs | halt\"\nlist = \"stripe.customers\"\n\n[[step]]\nid = \"other\"\nwhen = \"halt_error(1)\"\nlist = \"stripe.customers\"\n",
    )?;
    let validate = dirs.command().arg("validate").arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("halting.toml:10:19"), "{stderr}");
    assert!(stderr.contains("halt is not available in expressions"), "{stderr}");
    assert!(stderr.contains("halt_error is not available in expressions"), "{stderr}");
    assert!(stderr.contains("^^^^"), "{stderr}");

    let run = dirs.command().args(["run", "--sandbox"]).arg(&path).output()?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("halt is not available in expressions"), "{stderr}");
    let runs = dirs.command().args(["runs", "list", "--json"]).output()?;
    assert_eq!(stdout_json(&runs)?, serde_json::json!([]), "no run was started");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_printed_once_listed_without_secrets_and_the_cli_still_reaches_a_closed_server()
-> TestResult {
    let dirs = Dirs::new()?;
    // No token: an address other machines reach is refused, saying how.
    let idle = "[workflow]\nname = \"idle\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:X\"\n\n[[step]]\nid = \"a\"\nlist = \"stripe.customers\"\n";
    let path = dirs.write("idle.toml", idle)?;
    dirs.write("broken.toml", "[workflow]\nname = \"broken\"\n\n[[step]]\nid = \"a\"\nlist = 3\n")?;
    let remote = dirs.command().args(["serve", "--bind", "0.0.0.0:0"]).arg(&path).output()?;
    assert!(!remote.status.success());
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(stderr.contains("weft tokens create NAME --role admin"), "{stderr}");

    let created =
        dirs.command().args(["tokens", "create", "ops", "--role", "operator"]).output()?;
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let token = String::from_utf8(created.stdout)?.trim().to_owned();
    assert!(token.starts_with("weft_") && token.len() > 40, "{token}");
    let bad_role = dirs.command().args(["tokens", "create", "x", "--role", "root"]).output()?;
    assert!(!bad_role.status.success());
    let again = dirs.command().args(["tokens", "create", "ops", "--role", "viewer"]).output()?;
    assert!(!again.status.success(), "one active token per name");
    let listed = dirs.command().args(["tokens", "list", "--json"]).output()?;
    let listed_text = String::from_utf8(listed.stdout)?;
    // `weft_ID_SECRET`, where the secret is URL-safe base64 and may hold
    // `_` itself: what follows the id, not what follows the last `_`
    // (a tail of a character or two turned up in the listing by chance).
    let secret = token
        .strip_prefix("weft_")
        .and_then(|rest| rest.split_once('_'))
        .map_or("", |(_, secret)| secret);
    assert!(secret.len() >= 40, "{token}");
    assert!(listed_text.contains("\"ops\"") && !listed_text.contains(secret), "{listed_text}");
    let store_files = files_containing(dirs.state.path(), secret.as_bytes());
    assert!(store_files.is_empty(), "the secret is in the store: {store_files:?}");

    // Serving the directory: the broken file is reported, the other served.
    let mut serve = dirs
        .command()
        .args(["serve", "--bind", "127.0.0.1:0"])
        .arg(dirs.files.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let address = dirs.state.path().join("weft-serve.json");
    let started = Instant::now();
    while !address.exists() {
        if started.elapsed() > Duration::from_secs(60) || serve.try_wait()?.is_some() {
            let _ = serve.kill();
            return Err("weft serve did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&address)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the address file holds the CLI's token");
    }
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&address)?)?;
    let base = format!("http://{}", info["addr"].as_str().unwrap_or_default());
    let closed = reqwest::get(format!("{base}/api/runs")).await?;
    assert_eq!(closed.status(), 401, "a token in the store closes the server");
    let runs = dirs.command().args(["runs", "list", "--json"]).output()?;
    let during = dirs.command().args(["tokens", "create", "late", "--role", "viewer"]).output()?;
    let revoke_during = dirs.command().args(["tokens", "revoke", "ops"]).output()?;
    let _ = Command::new("kill").arg("-TERM").arg(serve.id().to_string()).status();
    let stopped = serve.wait_with_output()?;

    assert!(runs.status.success(), "{}", String::from_utf8_lossy(&runs.stderr));
    assert_eq!(stdout_json(&runs)?, serde_json::json!([]));
    let during = String::from_utf8_lossy(&during.stderr);
    assert!(
        during.contains("held by a running weft serve") && during.contains("/api/tokens"),
        "{during}"
    );
    assert!(!revoke_during.status.success());
    let serve_err = String::from_utf8_lossy(&stopped.stderr);
    assert!(serve_err.contains("not serving") && serve_err.contains("broken.toml"), "{serve_err}");
    assert!(!serve_err.contains(secret), "no token in the log");

    let revoked = dirs.command().args(["tokens", "revoke", "ops"]).output()?;
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let listed = dirs.command().args(["tokens", "list"]).output()?;
    assert!(String::from_utf8(listed.stdout)?.contains("revoked"));
    Ok(())
}

/// Every line of `stderr`, each parsed as a JSON object.
fn json_lines(stderr: &str) -> TestResult<Vec<serde_json::Map<String, Value>>> {
    stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => Ok(object),
            _ => Err(format!("not a JSON object: {line}\nstderr:\n{stderr}").into()),
        })
        .collect()
}

/// Whether the log object was written inside a span named `name` whose
/// field `field` is `value`.
fn in_span(line: &serde_json::Map<String, Value>, name: &str, field: &str, value: &str) -> bool {
    line.get("spans")
        .and_then(Value::as_array)
        .is_some_and(|spans| spans.iter().any(|span| span["name"] == name && span[field] == value))
}

/// In its own process, like the secret check above: the log is the binary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_a_line_naming_run_step_and_connection_without_the_secret()
-> TestResult {
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 5,
        ..Default::default()
    })
    .await?;
    let secret = weft_sandbox::stripe::SANDBOX_API_KEY;
    let dirs = Dirs::new()?;
    let key = key_file(dirs.files.path(), "stripe.key", secret)?;
    let path = dirs.write(
        "json-logs.toml",
        &format!(
            "[workflow]\nname = \"json-logs\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n\n[[step]]\nid = \"create\"\nupsert = \"stripe.customers\"\nrecord = {{ email = \"json-logs@example.com\" }}\n",
            sandbox.stripe.base_url()
        ),
    )?;
    let output = dirs
        .command()
        .args(["--log", "weft=debug", "--log-format", "json", "run", "--json"])
        .arg(&path)
        .output()?;
    let summary = stdout_json(&output)?;
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    let run = summary["run_id"].as_str().ok_or("a run id")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines = json_lines(&stderr)?;
    assert!(!stderr.contains(secret), "a log line holds the secret");
    let finished = lines
        .iter()
        .find(|l| l["message"] == "step finished" && l["step"] == "create")
        .ok_or_else(|| format!("no 'step finished' line for create:\n{stderr}"))?;
    assert_eq!(finished["run"], run);
    assert!(in_span(finished, "run", "run", run), "{finished:?}");
    // A vendor request: in the run's span and its step's, naming the connection.
    let request = lines
        .iter()
        .find(|l| l["message"] == "vendor request" && in_span(l, "step", "step", "create"))
        .ok_or_else(|| format!("no vendor request logged in step create:\n{stderr}"))?;
    assert!(in_span(request, "run", "run", run), "{request:?}");
    assert!(in_span(request, "run", "workflow", "json-logs"), "{request:?}");
    assert!(in_span(request, "step", "connection", "stripe"), "{request:?}");
    assert!(request["status"].is_number(), "{request:?}");
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_json_logs_writes_only_json_and_serves_metrics_on_their_own_address()
-> TestResult {
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 5,
        ..Default::default()
    })
    .await?;
    let secret = weft_sandbox::stripe::SANDBOX_API_KEY;
    let dirs = Dirs::new()?;
    let key = key_file(dirs.files.path(), "stripe.key", secret)?;
    dirs.write(
        "served.toml",
        &format!(
            "[workflow]\nname = \"served\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n",
            sandbox.stripe.base_url()
        ),
    )?;
    dirs.write("broken.toml", "[workflow]\nname = \"broken\"\n\n[[step]]\nid = \"a\"\nlist = 3\n")?;
    let mut serve = dirs
        .command()
        .args(["--log", "info", "--log-format", "json", "serve", "--bind", "127.0.0.1:0"])
        .args(["--metrics-bind", "127.0.0.1:0"])
        .arg(dirs.files.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    // The log, read as it is written: it says where the metrics listen.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        let mut stderr = serve.stderr.take().ok_or("serve's stderr")?;
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut chunk) {
                if let Ok(mut log) = log.lock() {
                    log.push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }
        })
    };
    let text = |log: &std::sync::Mutex<String>| log.lock().map(|l| l.clone()).unwrap_or_default();
    let address = dirs.state.path().join("weft-serve.json");
    let started = Instant::now();
    while !address.exists() || !text(&log).contains("/metrics (no token)") {
        if started.elapsed() > Duration::from_secs(60) || serve.try_wait()?.is_some() {
            let _ = serve.kill();
            return Err(format!("weft serve did not start: {}", text(&log)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&address)?)?;
    let base = format!("http://{}", info["addr"].as_str().unwrap_or_default());
    // Where the metrics listen is said in the log, as a JSON line.
    let said = json_lines(&text(&log))?
        .iter()
        .filter_map(|l| l["message"].as_str().map(str::to_owned))
        .find(|m| m.contains("/metrics (no token)"))
        .ok_or_else(|| format!("no metrics address in the log: {}", text(&log)))?;
    let url = said
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or("a metrics URL")?
        .to_owned();
    let client = reqwest::Client::new();
    let started = client
        .post(format!("{base}/api/workflows/served/runs"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(started.status(), 202);
    let started: Value = serde_json::from_slice(&started.bytes().await?)?;
    let run = started["run_id"].as_str().ok_or("a run id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let shown: Value = serde_json::from_slice(
            &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
        )?;
        if shown["status"] == "succeeded" {
            break;
        }
        if Instant::now() > deadline {
            let _ = serve.kill();
            return Err(format!("the run did not succeed: {shown:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = reqwest::get(&url).await?.text().await?;
    assert!(
        metrics.contains("weft_runs_started_total{workflow=\"served\",trigger=\"api\"} 1\n"),
        "{metrics}"
    );
    let _ = Command::new("kill").arg("-TERM").arg(serve.id().to_string()).status();
    serve.wait()?;
    reader.join().map_err(|_| "the log reader panicked")?;
    let stderr = text(&log);
    let lines = json_lines(&stderr)?;
    assert!(!stderr.contains(secret), "a log line holds the secret");
    let message =
        |l: &serde_json::Map<String, Value>| l["message"].as_str().unwrap_or_default().to_owned();
    assert!(
        lines.iter().any(|l| l["level"] == "WARN" && message(l).contains("not serving")),
        "the broken file is reported as a JSON line: {stderr}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "step finished" && in_span(l, "run", "run", &run)),
        "{stderr}"
    );
    // The server has stopped: the URL must not answer any more.
    assert!(reqwest::get(&url).await.is_err(), "the metrics listener stopped with the server");
    sandbox.shutdown().await;
    Ok(())
}

/// An OTLP/HTTP receiver on loopback that keeps every export's body.
struct OtlpReceiver {
    url: String,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl OtlpReceiver {
    async fn start() -> TestResult<OtlpReceiver> {
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    if let Ok(mut kept) = kept.lock() {
                        kept.push(body.to_vec());
                    }
                    // An empty ExportTraceServiceResponse: all taken.
                    ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(OtlpReceiver { url, bodies })
    }

    /// Every span received, decoded; and the raw bytes, for secret checks.
    fn spans(&self) -> TestResult<(Vec<opentelemetry_proto::tonic::trace::v1::Span>, Vec<u8>)> {
        use prost::Message as _;
        let bodies = self.bodies.lock().map_err(|_| "the receiver's lock")?.clone();
        let mut spans = Vec::new();
        for body in &bodies {
            let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(body.as_slice())?;
            for resource in request.resource_spans {
                for scope in resource.scope_spans {
                    spans.extend(scope.spans);
                }
            }
        }
        Ok((spans, bodies.concat()))
    }
}

/// A span's attribute, as text.
fn attribute(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let value = span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    Some(match value {
        Any::StringValue(s) => s.clone(),
        Any::IntValue(n) => n.to_string(),
        Any::BoolValue(b) => b.to_string(),
        Any::DoubleValue(d) => d.to_string(),
        other => format!("{other:?}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_exports_its_span_tree_over_otlp_with_no_secret_in_it() -> TestResult {
    let receiver = OtlpReceiver::start().await?;
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 5,
        ..Default::default()
    })
    .await?;
    let secret = weft_sandbox::stripe::SANDBOX_API_KEY;
    let dirs = Dirs::new()?;
    let key = key_file(dirs.files.path(), "stripe.key", secret)?;
    // A list and an upsert that succeed, then a step whose record
    // expression fails: the run fails at it.
    let path = dirs.write(
        "traced.toml",
        &format!(
            "[workflow]\nname = \"traced\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n\n[[step]]\nid = \"create\"\nupsert = \"stripe.customers\"\nrecord = {{ email = \"traced-body@example.com\" }}\n\n[[step]]\nid = \"broken\"\nupsert = \"stripe.customers\"\nrecord = {{ email = \"${{{{ error(\\\"no email\\\") }}}}\" }}\n",
            sandbox.stripe.base_url()
        ),
    )?;
    let output = dirs
        .command()
        .args(["--otlp-endpoint", &receiver.url, "run", "--json"])
        .arg(&path)
        .output()?;
    let summary = stdout_json(&output)?;
    assert_eq!(summary["status"], "failed", "{summary:#}");
    assert_eq!(summary["steps"][2]["status"], "failed", "{summary:#}");
    let run = summary["run_id"].as_str().ok_or("a run id")?;
    // The process flushed its spans before it exited.
    let (spans, raw) = receiver.spans()?;
    let named = |name: &str| spans.iter().filter(move |s| s.name == name).collect::<Vec<_>>();
    let runs = named("run");
    assert_eq!(runs.len(), 1, "{spans:#?}");
    let root = runs[0];
    assert_eq!(attribute(root, "run").as_deref(), Some(run));
    assert_eq!(attribute(root, "workflow").as_deref(), Some("traced"));
    assert!(root.parent_span_id.is_empty(), "a run started here is a trace's root");
    let steps = named("step");
    assert_eq!(steps.len(), 3, "{steps:#?}");
    for step in &steps {
        assert_eq!(step.parent_span_id, root.span_id, "a step is the run's child");
        assert_eq!(step.trace_id, root.trace_id);
        assert_eq!(attribute(step, "connection").as_deref(), Some("stripe"));
    }
    let step = |id: &str| steps.iter().find(|s| attribute(s, "step").as_deref() == Some(id));
    let broken = step("broken").ok_or("the broken step's span")?;
    // 2: STATUS_CODE_ERROR.
    assert_eq!(broken.status.as_ref().map(|s| s.code), Some(2), "{broken:#?}");
    let create = step("create").ok_or("the create step's span")?;
    assert_ne!(create.status.as_ref().map(|s| s.code), Some(2));
    // The export's pages are its children, each with its list call.
    let export = step("export").ok_or("the export step's span")?;
    let calls = named("plugin call");
    let pages: Vec<_> =
        named("page").into_iter().filter(|p| p.parent_span_id == export.span_id).collect();
    assert!(!pages.is_empty(), "the export's pages are spans under it: {spans:#?}");
    for page in &pages {
        assert_eq!(attribute(page, "resource").as_deref(), Some("customers"));
        let list = calls
            .iter()
            .find(|c| c.parent_span_id == page.span_id)
            .ok_or("a plugin call under each page")?;
        assert_eq!(attribute(list, "op").as_deref(), Some("list"));
    }
    // The upsert is an item of its step; its call is the item's child.
    let item = named("item")
        .into_iter()
        .find(|i| i.parent_span_id == create.span_id)
        .ok_or("an item span under the create step")?;
    assert_eq!(attribute(item, "item").as_deref(), Some("0"));
    let upsert = calls
        .iter()
        .find(|c| c.parent_span_id == item.span_id)
        .ok_or("a plugin call under the create step's item")?;
    assert_eq!(attribute(upsert, "op").as_deref(), Some("upsert"));
    assert_eq!(attribute(upsert, "plugin").as_deref(), Some("stripe"));
    let requests = named("vendor request");
    let under_upsert: Vec<_> =
        requests.iter().filter(|r| r.parent_span_id == upsert.span_id).collect();
    assert!(!under_upsert.is_empty(), "the upsert's HTTP attempts are its children");
    for request in &under_upsert {
        assert_eq!(attribute(request, "host").as_deref(), Some("127.0.0.1"));
        assert!(attribute(request, "method").is_some() && attribute(request, "status").is_some());
        assert_eq!(attribute(request, "attempt").as_deref(), Some("1"));
        assert!(attribute(request, "limiter_wait_ms").is_some());
    }
    let stripe = &summary["connections"]["stripe"];
    assert!(requests.len() as u64 >= stripe["requests"].as_u64().unwrap_or(0));
    // The summary carries the figures the metrics do: answers by class,
    // time in requests, and plugin calls by op.
    assert_eq!(stripe["plugin"], "stripe", "{stripe:#}");
    assert_eq!(stripe["statuses"]["2xx"], stripe["requests"], "{stripe:#}");
    assert_eq!(stripe["calls"]["list"]["calls"].as_u64(), Some(pages.len() as u64), "{stripe:#}");
    assert_eq!(stripe["calls"]["upsert"]["calls"], 1, "the broken step never called: {stripe:#}");
    assert!(stripe["calls"]["list"]["max_ms"].as_u64() <= stripe["calls"]["list"]["ms"].as_u64());
    let text = String::from_utf8_lossy(&raw);
    assert!(!text.contains(secret), "a credential in the export");
    assert!(!text.contains("traced-body@example.com"), "a record's field in the export");
    sandbox.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_on_an_api_start_becomes_the_runs_parent() -> TestResult {
    let receiver = OtlpReceiver::start().await?;
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 3,
        ..Default::default()
    })
    .await?;
    let dirs = Dirs::new()?;
    let key = key_file(dirs.files.path(), "stripe.key", weft_sandbox::stripe::SANDBOX_API_KEY)?;
    dirs.write(
        "child.toml",
        &format!(
            "[workflow]\nname = \"child\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n",
            sandbox.stripe.base_url()
        ),
    )?;
    // The variable, not the flag: as a platform's environment sets it.
    let mut serve = dirs
        .command()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.url)
        .args(["serve", "--bind", "127.0.0.1:0"])
        .arg(dirs.files.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let address = dirs.state.path().join("weft-serve.json");
    let started = Instant::now();
    while !address.exists() {
        if started.elapsed() > Duration::from_secs(60) || serve.try_wait()?.is_some() {
            let _ = serve.kill();
            return Err("weft serve did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info: Value = serde_json::from_str(&std::fs::read_to_string(&address)?)?;
    let base = format!("http://{}", info["addr"].as_str().unwrap_or_default());
    let client = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let start = |traceparent: &str| {
        client
            .post(format!("{base}/api/workflows/child/runs"))
            .header("content-type", "application/json")
            .header("traceparent", traceparent)
            .body("{}")
            .send()
    };
    let mut runs = Vec::new();
    for traceparent in [format!("00-{trace_id}-{parent_id}-01"), "00-not-a-header".to_owned()] {
        let response = start(&traceparent).await?;
        assert_eq!(response.status(), 202, "a bad traceparent refuses nothing");
        let body: Value = serde_json::from_slice(&response.bytes().await?)?;
        runs.push(body["run_id"].as_str().ok_or("a run id")?.to_owned());
    }
    for run in &runs {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let shown: Value = serde_json::from_slice(
                &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
            )?;
            if shown["status"] == "succeeded" {
                break;
            }
            if Instant::now() > deadline {
                let _ = serve.kill();
                return Err(format!("the run did not succeed: {shown:#}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let _ = Command::new("kill").arg("-TERM").arg(serve.id().to_string()).status();
    let stopped = serve.wait_with_output()?;
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    let (spans, _) = receiver.spans()?;
    let run_span = |id: &str| {
        spans.iter().find(|s| s.name == "run" && attribute(s, "run").as_deref() == Some(id))
    };
    let child = run_span(&runs[0]).ok_or_else(|| format!("no run span: {spans:#?}"))?;
    assert_eq!(hex::encode(&child.trace_id), trace_id, "the caller's trace");
    assert_eq!(hex::encode(&child.parent_span_id), parent_id, "the caller's span is the parent");
    let own = run_span(&runs[1]).ok_or("the second run's span")?;
    assert!(own.parent_span_id.is_empty(), "a header that does not parse starts a trace");
    assert_ne!(hex::encode(&own.trace_id), trace_id);
    sandbox.shutdown().await;
    Ok(())
}

/// A collector that reads each export's request head and never answers,
/// holding the connection open: what the export timeout is for.
struct SilentCollector {
    url: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SilentCollector {
    async fn start() -> TestResult<SilentCollector> {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if let Ok(mut kept) = kept.lock() {
                        kept.push(String::from_utf8_lossy(&head).into_owned());
                    }
                    // Read on, never answer, until the client gives up.
                    while let Ok(n) = socket.read(&mut chunk).await {
                        if n == 0 {
                            break;
                        }
                    }
                });
            }
        });
        Ok(SilentCollector { url, heads })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_otlp_export_timeout_and_headers_come_from_the_standard_variables() -> TestResult {
    let collector = SilentCollector::start().await?;
    let dirs = Dirs::new()?;
    let export = example("stripe-export.toml");
    let traced = |timeout: &str, traces_timeout: &str| {
        let mut command = dirs.command();
        command
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", timeout)
            .env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", traces_timeout)
            .env("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=general%20key,x-tenant=weft")
            .env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-collector-key=traces-secret-key")
            .args(["--otlp-endpoint", &collector.url, "run", "--sandbox", "--seed", "5", "--json"])
            .arg(&export);
        command
    };
    // The traces' own variable wins over the general one (a minute): the
    // process waits 300 ms for the collector, not OTLP's default 10 s (nor
    // the 5 s the SDK's shutdown used to give up after).
    let started = Instant::now();
    let mut command = traced("60000", "300");
    let output = tokio::task::spawn_blocking(move || command.output()).await??;
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stdout_json(&output)?["status"], "succeeded", "{stderr}");
    assert!(took < Duration::from_secs(4), "the export waited {took:?}: {stderr}");
    assert!(stderr.contains("could not send traces") && stderr.contains("timeout"), "{stderr}");
    assert!(!stderr.contains("traces-secret-key"), "a header's value is never printed: {stderr}");
    let heads = collector.heads.lock().map_err(|_| "the collector's lock")?.clone();
    let head = heads.first().ok_or("the collector got no export")?.to_ascii_lowercase();
    assert!(head.starts_with("post /v1/traces "), "{head}");
    assert!(head.contains("content-type: application/x-protobuf"), "{head}");
    // The traces' headers over the general ones, values percent-decoded.
    assert!(head.contains("x-collector-key: traces-secret-key\r\n"), "{head}");
    assert!(head.contains("x-tenant: weft\r\n"), "{head}");
    // A timeout that is not a number of milliseconds is refused, naming
    // the variable, before anything runs.
    for (timeout, traces_timeout, named) in [
        ("10s", "", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        ("1000", "0", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
        ("1000", "-5", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    ] {
        let output = traced(timeout, traces_timeout).output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{timeout} {traces_timeout}: {stderr}");
        assert!(stderr.contains(named) && stderr.contains("milliseconds"), "{stderr}");
        assert!(output.stdout.is_empty(), "nothing ran");
    }
    Ok(())
}

#[test]
fn runs_prune_removes_old_runs_keeps_the_newest_success_and_state_is_shown_and_repaired()
-> TestResult {
    let state = tempfile::tempdir()?;
    let state_dir = state.path().display().to_string();
    let file = example("stripe-mirror-incremental.toml");
    for _ in 0..3 {
        let out =
            weft(&["run", "--sandbox", "--seed", "3", "--state-dir", &state_dir, &file], &cache())?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let shown = weft(&["state", "show", "--json", "--state-dir", &state_dir, &file], &cache())?;
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown = stdout_json(&shown)?;
    assert_eq!(shown["workflow"], "stripe-mirror-incremental");
    assert!(shown["values"]["since"].as_i64().is_some_and(|s| s > 0), "{shown}");
    assert!(shown["run"].is_string(), "{shown}");

    let set = weft(
        &["state", "set", "--state-dir", &state_dir, "stripe-mirror-incremental", "since=7"],
        &cache(),
    )?;
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert!(String::from_utf8_lossy(&set.stdout).contains("since = 7"));
    // An undeclared name is a usage error (exit 2) naming the declared
    // ones, whether the workflow is named by its file or by its name (then
    // checked against the text its newest run recorded).
    for workflow in [file.as_str(), "stripe-mirror-incremental"] {
        let unknown =
            weft(&["state", "set", "--state-dir", &state_dir, workflow, "sinse=7"], &cache())?;
        assert_eq!(unknown.status.code(), Some(2), "{workflow}");
        let stderr = String::from_utf8_lossy(&unknown.stderr);
        assert!(stderr.contains("declares no state \"sinse\"; declared: seen, since"), "{stderr}");
        let reset =
            weft(&["state", "reset", "--state-dir", &state_dir, workflow, "sinse"], &cache())?;
        assert_eq!(reset.status.code(), Some(2), "{workflow}");
    }
    let reset = weft(&["state", "reset", "--state-dir", &state_dir, &file], &cache())?;
    assert!(String::from_utf8_lossy(&reset.stdout).contains("since = 0  (default)"));

    let list = |dir: &str| -> TestResult<Vec<Value>> {
        let out = weft(&["runs", "list", "--json", "--state-dir", dir], &cache())?;
        Ok(stdout_json(&out)?.as_array().cloned().unwrap_or_default())
    };
    let before = list(&state_dir)?;
    assert_eq!(before.len(), 3);
    let newest = before[0]["id"].as_str().unwrap_or_default().to_owned();
    let pruned =
        weft(&["runs", "prune", "--older-than", "0s", "--state-dir", &state_dir], &cache())?;
    assert!(pruned.status.success(), "{}", String::from_utf8_lossy(&pruned.stderr));
    assert!(String::from_utf8_lossy(&pruned.stdout).contains("removed 2 runs"));
    let after = list(&state_dir)?;
    assert_eq!(after.len(), 1, "the newest success stays: {after:?}");
    assert_eq!(after[0]["id"], newest.as_str());
    for gone in &before[1..] {
        let id = gone["id"].as_str().unwrap_or_default();
        assert!(!state.path().join("pages").join(id).exists());
    }
    Ok(())
}
