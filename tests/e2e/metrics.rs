//! `GET /metrics` of a real `weft serve` over loopback, after real runs
//! against the Stripe emulator: exact counts of runs, records, vendor
//! requests and webhook outcomes, the gate in front of it, label sets that
//! do not grow with the runs, and a real Prometheus (Debian's package)
//! scraping the `--metrics-bind` listener and answering queries over what
//! it parsed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use weft::serve::webhook::hmac_signature;
use weft::serve::{RunningServer, ServeConfig};
use weft::store::Role;
use weft_sandbox::limits::FaultConfig;

use super::console::tokens;
use super::serve::{SECRET, config, post_json, start_with, stripe, upsert_workflow, wait_finished};
use super::support::TestResult;

/// One sample line of an exposition: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The samples of an OpenMetrics text (label values here hold no `,`,
/// `"` or `}`: the tests choose them).
fn samples(text: &str) -> TestResult<Vec<Sample>> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| format!("no value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').ok_or_else(|| format!("no }}: {line}"))?;
                let labels = inner
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (k, v) =
                            pair.split_once('=').ok_or_else(|| format!("label: {line}"))?;
                        Ok((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                (name, labels)
            }
            None => (series, Vec::new()),
        };
        found.push(Sample { name: name.to_owned(), labels, value: value.parse()? });
    }
    Ok(found)
}

/// The sum of the samples named `name` whose labels include `wanted`.
fn sum(samples: &[Sample], name: &str, wanted: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| wanted.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
        .map(|s| s.value)
        .sum()
}

/// `GET url`, as Prometheus asks (OpenMetrics) or as `curl` does (the
/// Prometheus text format).
async fn scrape_as(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    openmetrics: bool,
) -> TestResult<String> {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if openmetrics {
        request = request.header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        );
    }
    let response = request.send().await?;
    assert_eq!(response.status(), StatusCode::OK, "scraping {url}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let wanted =
        if openmetrics { "application/openmetrics-text" } else { "text/plain; version=0.0.4" };
    assert!(content_type.starts_with(wanted), "{content_type}");
    let text = response.text().await?;
    assert_eq!(text.ends_with("# EOF\n"), openmetrics, "{text}");
    Ok(text)
}

async fn scrape(client: &reqwest::Client, url: &str, token: Option<&str>) -> TestResult<String> {
    scrape_as(client, url, token, true).await
}

/// Starts a run of `workflow` by the API and waits for its end.
async fn run_once(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    workflow: &str,
    email: &str,
) -> TestResult<Value> {
    let run = start_run(client, base, token, workflow, email).await?;
    let finished = wait_finished(&as_caller(token)?, base, &run).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    Ok(finished)
}

/// Starts a run of `workflow` by the API; returns its id.
async fn start_run(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    workflow: &str,
    email: &str,
) -> TestResult<String> {
    let mut start = post_json(
        client,
        format!("{base}/api/workflows/{workflow}/runs"),
        &serde_json::json!({ "email": email }).to_string(),
    );
    if let Some(token) = token {
        start = start.bearer_auth(token);
    }
    let started = start.send().await?;
    assert_eq!(started.status(), StatusCode::ACCEPTED);
    let started: Value = serde_json::from_slice(&started.bytes().await?)?;
    Ok(started["run_id"].as_str().ok_or("a run id")?.to_owned())
}

/// The vendor requests the runs' details count, once each has its figures
/// (a run's are recorded just after it ends).
async fn requests_of(client: &reqwest::Client, base: &str, runs: &[String]) -> TestResult<u64> {
    let mut total = 0;
    for run in runs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let detail: Value = serde_json::from_slice(
                &client.get(format!("{base}/api/runs/{run}")).send().await?.bytes().await?,
            )?;
            let stripe = &detail["connections"]["stripe"];
            if let Some(n) = stripe["requests"].as_u64() {
                // The detail carries what the metrics count, per run.
                assert_eq!(stripe["plugin"], "stripe", "{detail:#}");
                assert_eq!(stripe["statuses"]["2xx"].as_u64(), Some(n), "{detail:#}");
                assert_eq!(stripe["calls"]["upsert"]["calls"], 1, "{detail:#}");
                total += n;
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("run {run} has no HTTP figures: {detail:#}").into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(total)
}

/// A client that sends `token` with every request.
fn as_caller(token: Option<&str>) -> TestResult<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
    }
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

async fn server(
    state: &std::path::Path,
    files: &std::path::Path,
    stripe_url: &str,
) -> TestResult<RunningServer> {
    let wf = upsert_workflow(files, "signup", stripe_url, 4096)?;
    let metrics_bind = Some("127.0.0.1:0".parse()?);
    start_with(state, ServeConfig { workflows: vec![wf], metrics_bind, ..config()? }).await
}

#[tokio::test]
async fn metrics_count_runs_records_requests_and_webhook_outcomes_exactly() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let made = tokens(state.path(), &[("watcher", Role::Viewer), ("ops", Role::Operator)]).await?;
    let (viewer, operator) = (&made[0], &made[1]);
    let server = server(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();

    let mut runs = Vec::new();
    for email in ["a@example.com", "b@example.com"] {
        let run = run_once(&client, &base, Some(operator), "signup", email).await?;
        runs.push(run["id"].as_str().ok_or("a run id")?.to_owned());
    }
    // Webhooks: one good, the same again (a replay), one forged, one too big.
    let hook = format!("{base}/hooks/signup");
    let body = br#"{"email": "hooked@example.com"}"#.to_vec();
    let signature = format!("sha256={}", hmac_signature(&body, SECRET.as_bytes(), None));
    let deliver = |body: Vec<u8>, signature: String| {
        client.post(&hook).header("X-Weft-Signature", signature).body(body).send()
    };
    let good = deliver(body.clone(), signature.clone()).await?;
    assert_eq!(good.status(), StatusCode::ACCEPTED);
    let hooked: Value = serde_json::from_slice(&good.bytes().await?)?;
    assert_eq!(deliver(body.clone(), signature.clone()).await?.status(), StatusCode::CONFLICT);
    assert_eq!(deliver(body.clone(), "sha256=00ff".into()).await?.status(), 401);
    let big = vec![b' '; 8192];
    assert_eq!(deliver(big, signature.clone()).await?.status(), 413);
    let authed = as_caller(Some(viewer))?;
    let run = hooked["run_id"].as_str().ok_or("the webhook's run id")?;
    let finished = wait_finished(&authed, &base, run).await?;
    assert_eq!(finished["status"], "succeeded", "{finished:#}");
    runs.push(run.to_owned());
    let requests_in_summaries = requests_of(&authed, &base, &runs).await?;

    // The store holds tokens: /metrics on the main port needs one.
    let anonymous = client.get(format!("{base}/metrics")).send().await?;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // The store's size is measured by a task of its own, at start and then
    // every 30 s: on a loaded machine the first scrape may come before it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = scrape(&client, &format!("{base}/metrics"), Some(viewer)).await?;
        let measured = sum(&samples(&text)?, "weft_store_size_bytes", &[]) > 0.0;
        if measured || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let all = samples(&text)?;
    let signup = ("workflow", "signup");
    assert_eq!(sum(&all, "weft_runs_started_total", &[signup, ("trigger", "api")]), 2.0, "{text}");
    assert_eq!(sum(&all, "weft_runs_started_total", &[signup, ("trigger", "webhook")]), 1.0);
    assert_eq!(sum(&all, "weft_runs_finished_total", &[signup, ("status", "succeeded")]), 3.0);
    assert_eq!(sum(&all, "weft_run_duration_seconds_count", &[signup]), 3.0);
    assert_eq!(sum(&all, "weft_runs_active", &[signup]), 0.0);
    assert_eq!(
        sum(&all, "weft_records_total", &[signup, ("step", "customer"), ("outcome", "created")]),
        3.0,
        "{text}"
    );
    assert_eq!(sum(&all, "weft_step_duration_seconds_count", &[signup, ("step", "customer")]), 3.0);
    for (outcome, count) in
        [("accepted", 1.0), ("replay", 1.0), ("bad_signature", 1.0), ("oversized", 1.0)]
    {
        assert_eq!(
            sum(&all, "weft_webhook_deliveries_total", &[signup, ("outcome", outcome)]),
            count,
            "webhook {outcome}: {text}"
        );
    }
    // Every request the emulator saw, and the runs' summaries counted.
    let stripe_conn = [("connection", "stripe"), ("plugin", "stripe")];
    let sent = sum(&all, "weft_http_requests_total", &stripe_conn);
    assert_eq!(sent, emulator.requests().len() as f64, "{text}");
    assert_eq!(sent, requests_in_summaries as f64);
    assert!(sent >= 3.0, "at least one write per run: {text}");
    assert_eq!(sum(&all, "weft_http_requests_total", &[("status_class", "2xx")]), sent);
    assert_eq!(sum(&all, "weft_http_request_duration_seconds_count", &stripe_conn), sent);
    assert_eq!(sum(&all, "weft_http_throttled_total", &stripe_conn), 0.0);
    assert_eq!(
        sum(
            &all,
            "weft_plugin_call_duration_seconds_count",
            &[("plugin", "stripe"), ("op", "upsert")]
        ),
        3.0
    );
    assert_eq!(sum(&all, "weft_plugin_traps_total", &[]), 0.0);
    // Loaded once for the process, from the cache or compiled.
    assert_eq!(sum(&all, "weft_plugin_loads_total", &[("plugin", "stripe")]), 1.0, "{text}");
    // The runs ended: their connections' warm instances went with them.
    assert!(text.contains("\nweft_plugin_instances_idle 0\n"), "{text}");
    assert!(sum(&all, "weft_store_size_bytes", &[]) > 0.0, "the store was measured: {text}");
    // The limiter's rate in force (the servers of these tests allow
    // 10,000 r/s; the limiter keeps its 1 % margin under it).
    let rate = sum(&all, "weft_http_rate_limit", &[stripe_conn[0], ("class", "any")]);
    assert!(rate > 9000.0 && rate < 10_000.0, "a rate in force: {text}");
    assert!(text.contains("\nweft_build_info{version=\""), "{text}");
    assert!(!text.contains("example.com"), "no input reaches a label: {text}");

    // The metrics listener serves the same figures to anyone, and
    // nothing else.
    let metrics_addr = server.metrics_addr.ok_or("a metrics listener")?;
    let open = scrape(&client, &format!("http://{metrics_addr}/metrics"), None).await?;
    let open = samples(&open)?;
    assert_eq!(sum(&open, "weft_runs_started_total", &[signup]), 3.0);
    // In the text format that `curl` gets, the same figures.
    let plain = scrape_as(&client, &format!("http://{metrics_addr}/metrics"), None, false).await?;
    assert_eq!(sum(&samples(&plain)?, "weft_http_requests_total", &stripe_conn), sent);
    let other = client.get(format!("http://{metrics_addr}/api/runs")).send().await?;
    assert_eq!(other.status(), StatusCode::NOT_FOUND, "the metrics listener serves /metrics only");
    server.shutdown().await;
    Ok(())
}

/// The series (name and labels) of an exposition.
fn series(text: &str) -> TestResult<BTreeSet<String>> {
    Ok(samples(text)?.into_iter().map(|s| format!("{}{:?}", s.name, s.labels)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_series_do_not_grow_with_runs_of_distinct_inputs() -> TestResult {
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = server(state.path(), files.path(), &stripe_server.base_url()).await?;
    // No token in the store, loopback: the server is open to this machine.
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let url = format!("{base}/metrics");
    for n in 0..3 {
        run_once(&client, &base, None, "signup", &format!("first{n}@example.com")).await?;
    }
    let before = series(&scrape(&client, &url, None).await?)?;
    let mut ids = Vec::new();
    // 200 more runs, 20 at a time, each with an input of its own.
    for batch in 0..10 {
        let mut runs = Vec::new();
        for n in 0..20 {
            let email = format!("user{batch}x{n}@example.com");
            runs.push(start_run(&client, &base, None, "signup", &email).await?);
        }
        for run in runs {
            let finished = wait_finished(&client, &base, &run).await?;
            assert_eq!(finished["status"], "succeeded", "{finished:#}");
            ids.push(run);
        }
    }
    let text = scrape(&client, &url, None).await?;
    let after = series(&text)?;
    assert_eq!(before, after, "the same series after 200 more runs");
    let all = samples(&text)?;
    assert_eq!(sum(&all, "weft_runs_started_total", &[]), 203.0);
    assert_eq!(emulator.customer_count(), 203);
    assert!(!text.contains("example.com"), "no input in a label: {text}");
    assert!(!ids.iter().any(|id| text.contains(id.as_str())), "no run id in a label: {text}");
    server.shutdown().await;
    Ok(())
}

/// Where an executable is, on `PATH` or in /usr/bin.
fn executable(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|file| file.is_file())
}

/// Prometheus, or why the test does not run: `Err` under CI (the test
/// fails), `Ok(None)` elsewhere (it says so and passes).
fn prometheus() -> TestResult<Option<PathBuf>> {
    if let Some(found) = executable("prometheus") {
        return Ok(Some(found));
    }
    let message =
        "prometheus not found: this test needs Debian's prometheus package (.ci/run installs it)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        Err(message.into())
    } else {
        eprintln!("skipped: {message}");
        Ok(None)
    }
}

/// A port nobody listens on now (the kernel's pick; a race with another
/// process taking it is possible and would fail the start, visibly).
fn free_port() -> TestResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The PromQL of every panel of `docs/grafana-weft.json`.
fn dashboard_queries() -> TestResult<Vec<String>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-weft.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let panels = dashboard["panels"].as_array().ok_or("the dashboard's panels")?;
    let queries: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(queries.len() >= 20, "the dashboard has its panels: {queries:?}");
    Ok(queries)
}

/// The `weft_…` metric names a PromQL expression reads.
fn metric_names(promql: &str) -> Vec<String> {
    promql
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("weft_"))
        .map(str::to_owned)
        .collect()
}

/// A single number from Prometheus's query API, once it has one.
async fn query(client: &reqwest::Client, api: &str, promql: &str) -> TestResult<Option<f64>> {
    let query =
        form_urlencoded::Serializer::new(String::new()).append_pair("query", promql).finish();
    let response = client.get(format!("{api}/api/v1/query?{query}")).send().await;
    let Ok(response) = response else { return Ok(None) };
    if !response.status().is_success() {
        return Ok(None);
    }
    let body: Value = serde_json::from_slice(&response.bytes().await?)?;
    let Some(first) = body["data"]["result"].get(0) else { return Ok(None) };
    let value = first["value"][1].as_str().ok_or_else(|| format!("no value: {body}"))?;
    Ok(Some(value.parse()?))
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_metrics_listener_and_answers_with_the_runs_figures()
-> TestResult {
    let Some(prometheus) = prometheus()? else { return Ok(()) };
    let (emulator, stripe_server) = stripe(FaultConfig::default(), 0).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let server = server(state.path(), files.path(), &stripe_server.base_url()).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    for email in ["p1@example.com", "p2@example.com"] {
        let run = run_once(&client, &base, None, "signup", email).await?;
        runs.push(run["id"].as_str().ok_or("a run id")?.to_owned());
    }
    let requests = requests_of(&client, &base, &runs).await?;
    assert_eq!(requests as usize, emulator.requests().len());
    let metrics_addr = server.metrics_addr.ok_or("a metrics listener")?;

    // promtool, where it is, judges the exposition in the text format too.
    if let Some(promtool) = executable("promtool") {
        let text =
            scrape_as(&client, &format!("http://{metrics_addr}/metrics"), None, false).await?;
        let mut check = tokio::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut stdin = check.stdin.take().ok_or("promtool's stdin")?;
        tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await?;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(60), check.wait_with_output()).await??;
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let work = tempfile::tempdir()?;
    let config = work.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: weft\n    static_configs:\n      - targets: ['{metrics_addr}']\n"
        ),
    )?;
    let port = free_port()?;
    let log = std::fs::File::create(work.path().join("prometheus.log"))?;
    // Killed when the test ends, however it ends.
    let mut child = tokio::process::Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", work.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let api = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let wanted = [
        ("sum(weft_runs_started_total{workflow=\"signup\",trigger=\"api\"})", 2.0),
        ("sum(weft_runs_finished_total{workflow=\"signup\",status=\"succeeded\"})", 2.0),
        ("sum(weft_records_total{workflow=\"signup\",outcome=\"created\"})", 2.0),
        ("sum(weft_http_requests_total{connection=\"stripe\"})", requests as f64),
    ];
    let mut pending: Vec<_> = wanted.to_vec();
    while !pending.is_empty() {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(work.path().join("prometheus.log"))?;
            return Err(format!("prometheus exited ({status}): {log}").into());
        }
        let mut still = Vec::new();
        for (promql, value) in pending {
            match query(&client, &api, promql).await? {
                Some(got) if got == value => {}
                Some(got) if got > value => {
                    return Err(format!("{promql} = {got}, expected {value}").into());
                }
                _ => still.push((promql, value)),
            }
        }
        pending = still;
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(work.path().join("prometheus.log"))?;
            return Err(format!(
                "Prometheus did not answer {pending:?} within 90 s; its log:\n{log}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The target is up by Prometheus's own account.
    assert_eq!(query(&client, &api, "up{job=\"weft\"}").await?, Some(1.0));
    // Every query of the Grafana dashboard in docs/ parses and runs, and
    // names only series weft exports.
    let exported = scrape(&client, &format!("http://{metrics_addr}/metrics"), None).await?;
    let readme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
    )?;
    for promql in dashboard_queries()? {
        let promql = promql.replace("$__rate_interval", "1m").replace("$workflow", ".*");
        let query =
            form_urlencoded::Serializer::new(String::new()).append_pair("query", &promql).finish();
        let answer: Value = serde_json::from_slice(
            &client.get(format!("{api}/api/v1/query?{query}")).send().await?.bytes().await?,
        )?;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        for name in metric_names(&promql) {
            let base = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            // A family with no series yet is not in the exposition; the
            // README's table lists every metric.
            assert!(
                exported.contains(&format!("\n{name}{{"))
                    || exported.contains(&format!("\n{name} "))
                    || exported.contains(&format!("# TYPE {base} "))
                    || readme.contains(&format!("| `{base}")),
                "the dashboard's {promql} names {name}, which weft does not export"
            );
        }
    }
    child.kill().await?;
    server.shutdown().await;
    Ok(())
}

/// The workflow's entry of `GET /api/workflows`.
async fn workflow_info(client: &reqwest::Client, base: &str) -> TestResult<Value> {
    let all: Value = serde_json::from_slice(
        &client.get(format!("{base}/api/workflows")).send().await?.bytes().await?,
    )?;
    Ok(all[0].clone())
}

#[tokio::test]
async fn cron_firings_are_counted_as_run_or_skipped_as_the_schedule_reports_them() -> TestResult {
    // Every request takes 1.5 s, so each run outlasts the one-second schedule.
    let (_emulator, stripe_server) =
        stripe(FaultConfig { latency_ms: 1500, ..FaultConfig::default() }, 3).await?;
    let files = tempfile::tempdir()?;
    let state = tempfile::tempdir()?;
    let text = format!(
        "[workflow]\nname = \"every-second\"\n\n[trigger]\ncron = \"* * * * * *\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"{}\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\n",
        super::serve::key_file(files.path())?,
        stripe_server.base_url()
    );
    let wf = super::support::workflow(files.path(), &text)?;
    let server = start_with(state.path(), ServeConfig { workflows: vec![wf], ..config()? }).await?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::new();
    let url = format!("{base}/metrics");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = workflow_info(&client, &base).await?;
        if info["fired"].as_u64().unwrap_or(0) >= 2
            && info["skipped_firings"].as_u64().unwrap_or(0) >= 1
        {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no firing and skip in 30 s: {info:#}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The schedule's own counts, read between two scrapes (it goes on firing).
    let every = ("workflow", "every-second");
    let before = samples(&scrape(&client, &url, None).await?)?;
    let info = workflow_info(&client, &base).await?;
    let after = samples(&scrape(&client, &url, None).await?)?;
    let (fired, skipped) = (
        info["fired"].as_u64().unwrap_or(0) as f64,
        info["skipped_firings"].as_u64().unwrap_or(0) as f64,
    );
    let ran = |s: &[Sample]| sum(s, "weft_cron_firings_total", &[every, ("outcome", "ran")]);
    let skips = |s: &[Sample]| {
        sum(s, "weft_cron_firings_total", &[every, ("outcome", "skipped_overlap")])
            + sum(s, "weft_cron_firings_total", &[every, ("outcome", "skipped_full")])
    };
    assert!(
        ran(&before) <= fired && fired <= ran(&after),
        "ran: {fired} vs {before:?} / {after:?}"
    );
    assert!(skips(&before) <= skipped && skipped <= skips(&after), "skipped {skipped}");
    assert!(skips(&after) >= 1.0 && ran(&after) >= 2.0);
    assert_eq!(sum(&after, "weft_cron_firings_total", &[every, ("outcome", "skipped_full")]), 0.0);
    // A firing is counted once its run is recorded: the two agree.
    let started = sum(&after, "weft_runs_started_total", &[every, ("trigger", "cron")]);
    assert!(ran(&after) <= started && started <= ran(&after) + 1.0, "{started} runs started");
    server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn plugin_traps_are_counted_by_cause_and_calls_by_op() -> TestResult {
    use std::sync::Arc;
    use weft::connector::{AuthScheme, CallContext, ListRequest};
    use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
    use weft::runtime::{InstanceLimits, PluginConnection};

    let limits = InstanceLimits {
        cpu_time: Duration::from_millis(300),
        call_timeout: Duration::from_secs(20),
        ..InstanceLimits::default()
    };
    let runtime = super::support::runtime(limits)?;
    let plugin = Arc::new(runtime.load_file(super::support::hostile_wasm()).await?);
    let metrics = Arc::new(weft::metrics::Metrics::new());
    let http = Arc::new(
        ConnectionHttp::new(
            weft::http::shared_client(),
            "http://127.0.0.1:9",
            &[],
            Some((AuthScheme::Bearer, weft::credentials::Secret::new("sk_test_never_shown"))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?
        .with_metrics(Arc::new(metrics.connection("hostile", "hostile"))),
    );
    let context = CallContext { base_url: http.base_url(), settings: vec![] };
    let connection =
        PluginConnection::new(plugin.clone(), http, context).with_metrics(metrics.clone());
    let name = plugin.name().to_owned();
    for (resource, fails) in [("spin", true), ("alloc", true), ("recurse", true), ("ok", false)] {
        let request =
            ListRequest { resource: resource.into(), cursor: None, page_size: 10, filter: None };
        let outcome = connection.list(request).await;
        assert_eq!(outcome.is_err(), fails, "{resource}: {outcome:?}");
    }
    let all = samples(&metrics.encode())?;
    let traps = |cause: &str| {
        sum(
            &all,
            "weft_plugin_traps_total",
            &[("plugin", name.as_str()), ("op", "list"), ("cause", cause)],
        )
    };
    assert_eq!(traps("cpu"), 1.0, "spin");
    assert_eq!(traps("memory"), 1.0, "alloc");
    assert_eq!(traps("other"), 1.0, "recurse: a stack overflow");
    assert_eq!(traps("panic") + traps("deadline"), 0.0);
    assert_eq!(
        sum(
            &all,
            "weft_plugin_call_duration_seconds_count",
            &[("plugin", name.as_str()), ("op", "list")]
        ),
        4.0
    );
    Ok(())
}
