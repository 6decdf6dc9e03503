//! The console in a real browser: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver, through fantoccini) against an in-process
//! `weft serve` on loopback with a real sled store and the Stripe emulator.
//! Each page visited leaves a screenshot under
//! `target/console-screenshots/` for a person to look at, and each scenario
//! ends by reading the browser's console log: a script error or a refused
//! stylesheet rule fails it.
//!
//! Without Chromium or chromedriver on `PATH` the tests say so and pass,
//! except with `CI=true`, where they fail (`.ci/run` installs both).
//!
//! `WEFT_UPDATE_SCREENSHOTS=1 cargo test --test e2e browser` also writes
//! the README's pictures, `docs/console-runs.png` and `docs/console-run.png`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use weft::executor::{Executor, Observer, RunOptions, StopSignal};
use weft::runtime::InstanceLimits;
use weft::serve::{RunningServer, ServeConfig};
use weft::store::{Role, RunStore, Status};
use weft::workflow::{Step, Workflow};
use weft_sandbox::limits::FaultConfig;

use super::console::{bearer_client, tokens};
use super::serve::{config, key_file, post_json, stripe, upsert_workflow, wait_finished};
use super::support::{TestResult, reopen, runtime, workflow};

/// How long any one thing in a browser may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// One browser at a time: the machine's cores are shared, and Chromium is
/// heavy (each test still gets its own driver, browser and profile).
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where an executable is on `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|file| file.is_file())
}

/// Chromium and chromedriver, or why the test does not run: `Err` under
/// CI (the test fails), `Ok(None)` elsewhere (it says so and passes).
fn browser_tools() -> TestResult<Option<(PathBuf, PathBuf)>> {
    let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"));
    let driver = on_path("chromedriver");
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Ok(Some((chromium, driver))),
        (chromium, driver) => {
            let missing = [("chromium", chromium.is_none()), ("chromedriver", driver.is_none())]
                .iter()
                .filter(|(_, gone)| *gone)
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(" and ");
            let message = format!(
                "{missing} not found on PATH: the console's browser tests need Debian's \
                 chromium and chromium-driver (.ci/run installs them)"
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                Err(message.into())
            } else {
                eprintln!("skipped: {message}");
                Ok(None)
            }
        }
    }
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("console-screenshots")
}

/// chromedriver on a free loopback port, in a process group of its own so
/// that the browsers it starts go with it when the test ends, however it
/// ends.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(binary: &Path, scenario: &str) -> TestResult<Driver> {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log =
            std::fs::File::create(screenshot_dir().join(format!("{scenario}-chromedriver.log")))?;
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = driver.child.try_wait()? {
                return Err(format!("chromedriver exited at start: {status}").into());
            }
            let ready = match client.get(format!("{}/status", driver.url)).send().await {
                Ok(response) => serde_json::from_slice::<Value>(&response.bytes().await?)
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                return Ok(driver);
            }
            if Instant::now() > deadline {
                driver.stop();
                return Err(format!("chromedriver did not answer /status within {WAIT:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        // The whole group: chromedriver and any Chromium it left behind.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// chromedriver's log endpoint (Selenium's, not W3C's): the browser's
/// console messages since the last call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &reqwest::Url,
        session_id: Option<&str>,
    ) -> Result<reqwest::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &reqwest::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::POST, Some(r#"{"type":"browser"}"#.to_owned()))
    }
}

/// A headless Chromium on a console, with helpers that wait (bounded) and
/// photograph.
struct Browser {
    client: Client,
    base: String,
    scenario: &'static str,
    shots: std::cell::Cell<u32>,
    _profile: tempfile::TempDir,
    _driver: Driver,
}

impl Browser {
    async fn open(
        tools: &(PathBuf, PathBuf),
        base: &str,
        scenario: &'static str,
    ) -> TestResult<Browser> {
        std::fs::create_dir_all(screenshot_dir())?;
        let driver = Driver::start(&tools.1, scenario).await?;
        let profile = tempfile::tempdir()?;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.0,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--no-first-run",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            return Err("capabilities are an object".into());
        };
        let client = ClientBuilder::rustls()?
            .capabilities(capabilities)
            .connect(&driver.url)
            .await
            .map_err(|e| format!("no browser session from chromedriver: {e}"))?;
        Ok(Browser {
            client,
            base: base.to_owned(),
            scenario,
            shots: std::cell::Cell::new(0),
            _profile: profile,
            _driver: driver,
        })
    }

    async fn goto(&self, path: &str) -> TestResult {
        Ok(self.client.goto(&format!("{}{path}", self.base)).await?)
    }

    /// The page's path (and query).
    async fn path(&self) -> TestResult<String> {
        let url = self.client.current_url().await?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        })
    }

    /// Writes the page as it is now to
    /// `target/console-screenshots/<scenario>-<n>-<step>.png`.
    async fn shot(&self, step: &str) -> TestResult<PathBuf> {
        let n = self.shots.get() + 1;
        self.shots.set(n);
        let file = screenshot_dir().join(format!("{}-{n:02}-{step}.png", self.scenario));
        std::fs::write(&file, self.client.screenshot().await?)?;
        Ok(file)
    }

    /// The element once the page has it (the page may be loading or
    /// refreshing itself).
    async fn find(&self, css: &str) -> TestResult<Element> {
        self.client
            .wait()
            .at_most(WAIT)
            .every(Duration::from_millis(50))
            .for_element(Locator::Css(css))
            .await
            .map_err(|e| {
                format!("{}: no {css} on {} within {WAIT:?}: {e}", self.scenario, self.base).into()
            })
    }

    /// The text of `css` once `ready` holds for it, polled; the last text
    /// seen in the error otherwise.
    async fn text_when(&self, css: &str, ready: impl Fn(&str) -> bool) -> TestResult<String> {
        let deadline = Instant::now() + WAIT;
        let mut last = String::new();
        loop {
            // The page may replace the element between finding and reading.
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if ready(&text) {
                    return Ok(text);
                }
                last = text;
            }
            if Instant::now() > deadline {
                let page = self.path().await.unwrap_or_default();
                return Err(format!(
                    "{}: {css} on {page} did not become as expected within {WAIT:?}; last {last:?}",
                    self.scenario
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the page's path starts with `prefix`.
    async fn path_when(&self, prefix: &str) -> TestResult<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let path = self.path().await?;
            if path.starts_with(prefix) {
                return Ok(path);
            }
            if Instant::now() > deadline {
                return Err(format!("{}: still at {path}, not {prefix}…", self.scenario).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presses a key on whatever has the focus.
    async fn press(&self, key: Key) -> TestResult {
        let keys = KeyActions::new("keyboard".to_owned())
            .then(KeyAction::Down { value: key.into() })
            .then(KeyAction::Up { value: key.into() });
        Ok(self.client.perform_actions(keys).await?)
    }

    /// Signs in at /login by typing the token and pressing Enter.
    async fn sign_in(&self, token: &str) -> TestResult {
        self.goto("/").await?;
        self.path_when("/login").await?;
        self.find("form#signin").await?;
        self.shot("sign-in").await?;
        let field = self.find("form#signin input#token").await?;
        field.send_keys(&format!("{token}{}", char::from(Key::Enter))).await?;
        self.find("table#runs, p.empty").await?;
        Ok(())
    }

    /// The browser's console errors since the last look (a script that
    /// threw, a style or script the CSP refused, a resource not found).
    async fn console_errors(&self) -> TestResult<Vec<Value>> {
        let entries = self.client.issue_cmd(BrowserLog).await?;
        Ok(entries
            .as_array()
            .map(|all| all.iter().filter(|e| e["level"] == "SEVERE").cloned().collect())
            .unwrap_or_default())
    }

    /// Fails the scenario on any console error since the last look.
    async fn no_console_errors(&self) -> TestResult {
        let errors = self.console_errors().await?;
        if !errors.is_empty() {
            return Err(format!("{}: the browser logged errors: {errors:#?}", self.scenario).into());
        }
        Ok(())
    }

    async fn close(self) -> TestResult {
        Ok(self.client.close().await?)
    }
}

/// With `WEFT_UPDATE_SCREENSHOTS=1`, copies a screenshot to `docs/` for the
/// README.
fn update_doc_picture(shot: &Path, name: &str) -> TestResult {
    if std::env::var("WEFT_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        let to = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs").join(name);
        std::fs::copy(shot, &to)?;
        eprintln!("wrote {}", to.display());
    }
    Ok(())
}

/// Starts a run through the API and returns its id.
async fn start_run(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &str,
) -> TestResult<String> {
    let response = post_json(client, format!("{base}{path}"), body).send().await?;
    let status = response.status();
    let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
    Ok(answer["run_id"].as_str().ok_or_else(|| format!("{status}: {answer}"))?.to_owned())
}

/// A workflow that upserts `items` customers one by one: slow against a
/// Stripe emulator with latency, so a run can be caught while it goes.
fn slow_workflow(
    dir: &Path,
    name: &str,
    base_url: &str,
    items: u32,
    concurrency: u32,
) -> TestResult<Workflow> {
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "[workflow]\nname = \"{name}\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{key}\"\nbase_url = \"{base_url}\"\nrate_limit = \"1000/s\"\n\n[[step]]\nid = \"create\"\nfor_each = \"[range(0; {items})]\"\nconcurrency = {concurrency}\nupsert = \"stripe.customers\"\nrecord = {{ email = \"{name}${{{{ $item }}}}@example.com\" }}\n",
        key = key_file(dir)?,
    );
    workflow(dir, &text)
}

/// A server on `store` (the caller may keep a clone of it to run work
/// beside the server, as another process on the same state would).
async fn serve(store: RunStore, workflows: Vec<Workflow>) -> TestResult<RunningServer> {
    let executor = Executor::new(runtime(InstanceLimits::default())?, store);
    Ok(weft::serve::start(executor, ServeConfig { workflows, ..config()? }).await?)
}

#[tokio::test]
async fn the_console_in_a_browser_signs_in_lists_runs_and_shows_a_run_s_steps() -> TestResult {
    let Some(tools) = browser_tools()? else { return Ok(()) };
    let _one = ONE_BROWSER.lock().await;
    let (_emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let wf = upsert_workflow(files.path(), "onboard", &stripe_server.base_url(), 4096)?;
    let server = serve(reopen(state.path())?, vec![wf]).await?;
    let base = format!("http://{}", server.addr);
    let api = bearer_client(&made[0])?;
    // Several runs, so that the list is a list (and the README's picture
    // shows one): three real, one dry.
    let mut runs = Vec::new();
    for (i, path) in ["runs", "runs", "runs?dry_run=true", "runs"].iter().enumerate() {
        let body = json!({ "email": format!("browser{i}@example.com") }).to_string();
        let run = start_run(&api, &base, &format!("/api/workflows/onboard/{path}"), &body).await?;
        assert_eq!(wait_finished(&api, &base, &run).await?["status"], "succeeded");
        runs.push(run);
    }
    let first = runs[0].clone();

    let browser = Browser::open(&tools, &base, "a-sign-in").await?;
    // A wrong token: the form says so, and nothing opens.
    browser.goto("/login").await?;
    browser
        .find("input#token")
        .await?
        .send_keys(&format!("weft_nope_wrong{}", char::from(Key::Enter)))
        .await?;
    let problem = browser.text_when("p.error", |t| !t.is_empty()).await?;
    assert!(problem.contains("not valid"), "{problem}");
    browser.shot("wrong-token").await?;
    // The page's own 401 is the one message logged so far.
    let logged = browser.console_errors().await?;
    assert!(
        logged.len() == 1 && logged[0]["message"].as_str().is_some_and(|m| m.contains("401")),
        "{logged:#?}"
    );

    browser.sign_in(&made[0]).await?;
    for run in &runs {
        browser.find(&format!("table#runs tr[data-run-id=\"{run}\"]")).await?;
    }
    let rows = browser.client.find_all(Locator::Css("table#runs tbody tr[data-run-id]")).await?;
    assert_eq!(rows.len(), 4, "every run listed");
    let newest = rows[0].attr("data-run-id").await?;
    assert_eq!(newest.as_deref(), runs.last().map(String::as_str), "newest first");
    let list = browser.shot("runs").await?;
    update_doc_picture(&list, "console-runs.png")?;

    // The keyboard: the first Tab reaches the skip link, Enter follows it.
    browser.press(Key::Tab).await?;
    let focused = browser.client.active_element().await?;
    assert_eq!(focused.attr("class").await?.as_deref(), Some("skip"));
    assert_eq!(focused.attr("href").await?.as_deref(), Some("#main"));
    assert!(focused.is_displayed().await?, "the skip link shows when focused");
    browser.shot("skip-link").await?;
    browser.press(Key::Enter).await?;
    assert_eq!(browser.client.current_url().await?.fragment(), Some("main"));

    browser.find(&format!("tr[data-run-id=\"{first}\"] td.id a")).await?.click().await?;
    browser.path_when(&format!("/runs/{first}")).await?;
    let status = browser.text_when("#run-status", |t| t.contains("succeeded")).await?;
    assert!(!status.contains("dry run"), "{status}");
    let step = "table#steps tr[data-step=\"customer\"]";
    browser.find(step).await?;
    assert_eq!(
        browser.text_when(&format!("{step} td.count-created"), |t| !t.is_empty()).await?,
        "1"
    );
    assert_eq!(
        browser.text_when(&format!("{step} td.count-failed"), |t| !t.is_empty()).await?,
        "0"
    );
    let history = browser.text_when("table#history", |t| t.contains("ops")).await?;
    assert!(history.contains("ops"), "who started it: {history}");
    browser.shot("run").await?;
    browser.no_console_errors().await?;
    browser.close().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_console_in_a_browser_starts_a_dry_run_from_the_inputs_form_and_shows_its_plan()
-> TestResult {
    let Some(tools) = browser_tools()? else { return Ok(()) };
    let _one = ONE_BROWSER.lock().await;
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let wf = upsert_workflow(files.path(), "onboard", &stripe_server.base_url(), 4096)?;
    let server = serve(reopen(state.path())?, vec![wf]).await?;
    let base = format!("http://{}", server.addr);

    let browser = Browser::open(&tools, &base, "b-dry-run").await?;
    browser.sign_in(&made[0]).await?;
    browser.goto("/workflows/onboard").await?;
    let form = browser.find("form#start").await?;
    let email = form.find(Locator::Css("input#input-email[name=\"input.email\"]")).await?;
    email.send_keys("planned@example.com").await?;
    browser.shot("inputs-form").await?;
    form.find(Locator::Css("button[name=mode][value=dry-run]")).await?.click().await?;
    let path = browser.path_when("/runs/").await?;
    let run = path.trim_start_matches("/runs/").to_owned();
    let plan = browser.text_when("section.plan", |t| t.contains("create")).await?;
    assert!(plan.contains("Plan of step customer"), "{plan}");
    assert!(plan.contains("planned@example.com"), "the sample's record: {plan}");
    let status = browser.text_when("#run-status", |t| t.contains("succeeded")).await?;
    assert!(status.contains("dry run"), "{status}");
    browser.shot("plan").await?;
    assert_eq!(emulator.customer_count(), 0, "a dry run writes nothing");
    let api = bearer_client(&made[0])?;
    let detail = wait_finished(&api, &base, &run).await?;
    assert_eq!(detail["dry_run"], true, "{detail:#}");
    browser.no_console_errors().await?;
    browser.close().await?;
    server.shutdown().await;
    Ok(())
}

/// Stops a run the way SIGTERM would, once a few items are committed.
struct InterruptAfterItems {
    stop: StopSignal,
    items: u64,
}

impl Observer for InterruptAfterItems {
    fn items_committed(&self, _step: &Step, done: u64) {
        if done >= self.items {
            self.stop.shutdown.cancel();
        }
    }
}

#[tokio::test]
async fn the_console_in_a_browser_resumes_an_interrupted_run_to_success() -> TestResult {
    let Some(tools) = browser_tools()? else { return Ok(()) };
    let _one = ONE_BROWSER.lock().await;
    let (emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 20, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let wf = slow_workflow(&files.path().join("batch"), "batch", &stripe_server.base_url(), 30, 2)?;
    let store = reopen(state.path())?;
    // `weft serve` resumes every unfinished run it finds at start, so the
    // run is interrupted after the server started: by an executor beside
    // it on the same store, stopped mid-run as a process going down is.
    let server = serve(store.clone(), vec![wf.clone()]).await?;
    let base = format!("http://{}", server.addr);
    let beside = Executor::new(runtime(InstanceLimits::default())?, store);
    let stop = StopSignal::default();
    let interrupted = beside
        .start(
            &wf,
            &RunOptions { stop: stop.clone(), ..RunOptions::default() },
            &InterruptAfterItems { stop, items: 4 },
        )
        .await?;
    assert_eq!(interrupted.status, Status::Running, "left to resume: {interrupted:#?}");
    let run = interrupted.run_id.clone();
    let before = emulator.customer_count();
    assert!(before > 0 && before < 30, "interrupted mid-run: {before} of 30");

    let browser = Browser::open(&tools, &base, "c-resume").await?;
    browser.sign_in(&made[0]).await?;
    let row = format!("table#runs tr[data-run-id=\"{run}\"]");
    assert!(browser.text_when(&row, |t| t.contains("running")).await?.contains("batch"));
    browser.shot("runs").await?;
    browser.find(&format!("{row} td.id a")).await?.click().await?;
    browser.path_when(&format!("/runs/{run}")).await?;
    browser.text_when("#run-status", |t| t.contains("running")).await?;
    browser.shot("interrupted").await?;
    browser.find("button#resume").await?.click().await?;
    // The page refreshes itself (console.js) until the run is done: no
    // reload here.
    browser.text_when("#run-status", |t| t.contains("succeeded")).await?;
    let resumes = browser.text_when("#summary", |t| t.contains("Resumes")).await?;
    assert!(resumes.contains("Resumes\n1") || resumes.contains("Resumes 1"), "{resumes}");
    let created = "table#steps tr[data-step=\"create\"] td.count-created";
    assert_eq!(browser.text_when(created, |t| t == "30").await?, "30");
    let history = browser.text_when("table#history", |t| t.contains("resume requested")).await?;
    assert!(history.contains("ops"), "who resumed it: {history}");
    let page = browser.shot("resumed").await?;
    update_doc_picture(&page, "console-run.png")?;
    assert_eq!(emulator.customer_count(), 30, "each customer once");
    browser.no_console_errors().await?;
    browser.close().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_console_in_a_browser_cancels_a_running_run() -> TestResult {
    let Some(tools) = browser_tools()? else { return Ok(()) };
    let _one = ONE_BROWSER.lock().await;
    let (emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 50, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let wf = slow_workflow(&files.path().join("long"), "long", &stripe_server.base_url(), 400, 1)?;
    let server = serve(reopen(state.path())?, vec![wf]).await?;
    let base = format!("http://{}", server.addr);

    let browser = Browser::open(&tools, &base, "d-cancel").await?;
    browser.sign_in(&made[0]).await?;
    // Started from the console's own form (a workflow without inputs).
    browser.goto("/workflows/long").await?;
    let start = browser.find("form#start button[name=mode][value=run]").await?;
    browser.shot("start-form").await?;
    start.click().await?;
    let path = browser.path_when("/runs/").await?;
    let run = path.trim_start_matches("/runs/").to_owned();
    browser.text_when("#run-status", |t| t.contains("running")).await?;
    browser.shot("running").await?;
    browser.find("button#cancel").await?.click().await?;
    browser.text_when("#run-status", |t| t.contains("cancelled")).await?;
    browser.shot("cancelled").await?;
    let history = browser.text_when("table#history", |t| t.contains("cancel requested")).await?;
    assert!(history.contains("ops"), "{history}");
    assert!(emulator.customer_count() < 400, "stopped before the end");
    let detail = wait_finished(&bearer_client(&made[0])?, &base, &run).await?;
    assert_eq!(detail["status"], "cancelled", "{detail:#}");
    browser.no_console_errors().await?;
    browser.close().await?;
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_console_in_a_browser_cancels_the_runs_selected_together() -> TestResult {
    let Some(tools) = browser_tools()? else { return Ok(()) };
    let _one = ONE_BROWSER.lock().await;
    let (_emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 50, ..FaultConfig::default() }, 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("ops", Role::Operator)]).await?;
    let wf = slow_workflow(&files.path().join("long"), "long", &stripe_server.base_url(), 400, 1)?;
    let server = serve(reopen(state.path())?, vec![wf]).await?;
    let base = format!("http://{}", server.addr);
    let api = bearer_client(&made[0])?;
    let mut runs = Vec::new();
    for _ in 0..4 {
        runs.push(start_run(&api, &base, "/api/workflows/long/runs", "").await?);
    }
    let (kept, selected) = runs.split_first().ok_or("four runs")?;

    let browser = Browser::open(&tools, &base, "e-bulk").await?;
    browser.sign_in(&made[0]).await?;
    for run in &runs {
        browser.find(&format!("table#runs tr[data-run-id=\"{run}\"]")).await?;
    }
    // "Select all" (console.js) checks every row; one is then left out.
    browser.find("table#runs input[data-select-all=run]").await?.click().await?;
    for run in &runs {
        let box_ = browser.find(&format!("input[name=run][value=\"{run}\"]")).await?;
        assert!(box_.is_selected().await?, "select all checked {run}");
    }
    browser.find(&format!("input[name=run][value=\"{kept}\"]")).await?.click().await?;
    browser.shot("selected").await?;
    browser.find("form#runs-form button[name=action][value=cancel]").await?.click().await?;
    browser.find("table#bulk-results").await?;
    let outcomes = browser.client.find_all(Locator::Css("table#bulk-results tbody tr")).await?;
    assert_eq!(outcomes.len(), selected.len(), "one outcome per selected run");
    for run in selected {
        let outcome = browser
            .text_when(&format!("table#bulk-results tr[data-run-id=\"{run}\"] td.ok"), |t| {
                !t.is_empty()
            })
            .await?;
        assert!(!outcome.is_empty(), "{run}: {outcome}");
    }
    browser.shot("bulk-results").await?;
    for run in selected {
        assert_eq!(wait_finished(&api, &base, run).await?["status"], "cancelled", "{run}");
    }
    let still: Value = serde_json::from_slice(
        &api.get(format!("{base}/api/runs/{kept}")).send().await?.bytes().await?,
    )?;
    assert_eq!(still["status"], "running", "the run left out goes on: {still}");
    browser.no_console_errors().await?;
    browser.close().await?;
    // The one left running stops at shutdown, to resume at the next start.
    server.shutdown().await;
    Ok(())
}
