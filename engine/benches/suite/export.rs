//! Export: every customer of a Stripe emulator holding N customers (100k by
//! default) to a JSON Lines file, through `weft run` with the wasm
//! connector, against a native Rust client (reqwest + serde_json) and, when
//! it is installed, the official stripe-python SDK doing the same export.
//!
//! The emulator runs in the bench process; each client runs in a process of
//! its own (the native one is this binary started again with
//! `--native-export`), one process each, so no client shares its process
//! with the server it reads. Clients run interleaved, in an order that
//! rotates every round, and the figures are medians over the rounds.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::json;
use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};

use super::report::{Row, grouped, median};
use super::{BenchResult, Config};

/// The ratio issue 20 (performance, round two) asks for; round one's was
/// 1.10.
const TARGET_RATIO: f64 = 1.05;

/// What metrics and traces on may cost the export (issue 15).
const TARGET_OBSERVED_RATIO: f64 = 1.03;

/// The page size of every client: Stripe's maximum.
const PAGE_SIZE: u32 = 100;

/// The stripe-python client: `auto_paging_iter` over `Customer.list`, each
/// customer written as one JSON line.
const PYTHON_EXPORT: &str = r#"
import json, sys
import stripe
stripe.api_key = sys.argv[2]
stripe.api_base = sys.argv[1]
stripe.max_network_retries = 0
count = 0
with open(sys.argv[3], "w") as out:
    for customer in stripe.Customer.list(limit=100).auto_paging_iter():
        out.write(json.dumps(customer.to_dict()))
        out.write("\n")
        count += 1
print(count)
"#;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Client {
    Weft,
    Native,
    /// `weft run` with metrics (`--metrics-file`) and OTLP traces on,
    /// exporting to a receiver in the bench process.
    WeftObserved,
    Python,
}

impl Client {
    fn name(self) -> &'static str {
        match self {
            Client::Weft => "weft run",
            Client::Native => "native reqwest + serde_json",
            Client::WeftObserved => "weft run, metrics and traces on",
            Client::Python => "stripe-python auto_paging_iter",
        }
    }
}

/// What a client needs to run one export.
struct Setup {
    dir: tempfile::TempDir,
    base_url: String,
    key_file: PathBuf,
    cache_dir: PathBuf,
    python: Option<String>,
    /// Where the observed run sends its traces (OTLP/HTTP).
    otlp_url: String,
}

impl Setup {
    fn output(&self, client: Client, round: usize) -> PathBuf {
        self.dir.path().join(format!("{client:?}-{round}.jsonl").to_lowercase())
    }

    /// Runs one export and returns its wall time and its CPU time (user +
    /// system) in seconds.
    fn run(&self, client: Client, round: usize) -> BenchResult<(f64, f64)> {
        let out = self.output(client, round);
        let mut command = match client {
            Client::Weft | Client::WeftObserved => {
                let workflow = self.dir.path().join(format!("export-{client:?}-{round}.toml"));
                std::fs::write(&workflow, workflow_text(&self.base_url, &self.key_file, &out))?;
                let mut command = Command::new(env!("CARGO_BIN_EXE_weft"));
                command
                    // One run store for every round, as a user's machine
                    // keeps one: the warm-up run creates it.
                    .arg("--state-dir")
                    .arg(self.dir.path().join("state"))
                    .arg("--cache-dir")
                    .arg(&self.cache_dir);
                if client == Client::WeftObserved {
                    command.args(["--otlp-endpoint", &self.otlp_url]);
                }
                command.args(["run", "--json"]);
                if client == Client::WeftObserved {
                    command.arg("--metrics-file").arg(self.dir.path().join("weft.prom"));
                }
                command.arg(&workflow);
                command
            }
            Client::Native => {
                let mut command = Command::new(std::env::current_exe()?);
                command.args(["--native-export", &self.base_url, SANDBOX_API_KEY]).arg(&out);
                command
            }
            Client::Python => {
                let mut command = Command::new(self.python.as_deref().unwrap_or("python3"));
                command.args(["-c", PYTHON_EXPORT, &self.base_url, SANDBOX_API_KEY]).arg(&out);
                command
            }
        };
        let cpu_before = children_cpu_seconds();
        let started = Instant::now();
        let output = command.output()?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds() - cpu_before;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}): {}{}",
                client.name(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        if matches!(client, Client::Weft | Client::WeftObserved) {
            let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            if summary["status"] != "succeeded" {
                return Err(format!("weft run did not succeed: {summary:#}").into());
            }
        }
        Ok((seconds, cpu))
    }
}

/// The order the clients run in, round `round`: the others rotate, so
/// that none always runs first or after the same one, and the observed run
/// sits right beside the plain one, before it in even rounds and after it
/// in odd ones. Their ratio then compares two runs that followed the same
/// client equally often: with a plain rotation the observed run followed
/// the native client (the one that leaves the emulator busiest) in two
/// rounds of three and the plain run in one.
fn round_order(clients: &[Client], round: usize) -> Vec<usize> {
    let others: Vec<usize> =
        (0..clients.len()).filter(|&i| clients[i] != Client::WeftObserved).collect();
    let mut order: Vec<usize> =
        (0..others.len()).map(|k| others[(k + round) % others.len()]).collect();
    if let Some(observed) = clients.iter().position(|c| *c == Client::WeftObserved) {
        let plain = order.iter().position(|&i| clients[i] == Client::Weft).unwrap_or(0);
        order.insert(if round.is_multiple_of(2) { plain } else { plain + 1 }, observed);
    }
    order
}

/// CPU seconds (user + system) of every child this process has waited
/// for. Clients run one at a time, so the difference around one run is
/// that client's CPU: on a shared machine it moves less than wall time,
/// since time spent waiting for a core is not counted.
fn children_cpu_seconds() -> f64 {
    #[expect(unsafe_code, reason = "getrusage fills the struct it is given")]
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// An OTLP/HTTP receiver that takes every export, counts the requests
/// and answers with an empty ExportTraceServiceResponse (an empty
/// protobuf message is zero bytes).
async fn otlp_sink()
-> BenchResult<(weft_sandbox::server::RunningServer, std::sync::Arc<std::sync::atomic::AtomicU64>)>
{
    use axum::routing::post;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let counter = counter.clone();
            async move {
                if !body.is_empty() {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let server = weft_sandbox::server::serve(app, weft_sandbox::server::LOOPBACK_ANY_PORT).await?;
    Ok((server, received))
}

pub(crate) fn workflow_text(base_url: &str, key: &Path, out: &Path) -> String {
    format!(
        r#"[workflow]
name = "export-bench"

[connections.stripe]
plugin = "stripe"
credentials = "file:{key}"
base_url = "{base_url}"
# The emulator enforces no limit; neither should the client.
rate_limit = "1000000/s"

[[step]]
id = "export"
list = "stripe.customers"
page_size = {PAGE_SIZE}
output = "{out}"
"#,
        key = key.display(),
        out = out.display(),
    )
}

fn lines(path: &Path) -> BenchResult<usize> {
    Ok(std::fs::read(path)?.iter().filter(|b| **b == b'\n').count())
}

/// The Python interpreter to use, when it can import `stripe`.
fn python_with_stripe() -> Option<String> {
    let python = std::env::var("WEFT_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import stripe; print(stripe.VERSION)"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(python)
}

fn python_version(python: &str) -> String {
    Command::new(python)
        .args(["-c", "import stripe, platform; print(f'stripe-python {stripe.VERSION}, Python {platform.python_version()}')"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let records = ((100_000.0 * config.scale).round() as usize).max(PAGE_SIZE as usize);
    let rounds: usize =
        std::env::var("WEFT_BENCH_EXPORT_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let emulator = StripeEmulator::new(StripeConfig { seed: records, ..StripeConfig::default() });
    let server =
        weft_sandbox::server::serve(emulator.router(), weft_sandbox::server::LOOPBACK_ANY_PORT)
            .await?;
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("stripe-key");
    std::fs::write(&key_file, SANDBOX_API_KEY)?;
    let python = python_with_stripe();
    let (otlp, spans_received) = otlp_sink().await?;
    let setup = Setup {
        base_url: server.base_url(),
        key_file,
        cache_dir: dir.path().join("component-cache"),
        python: python.clone(),
        otlp_url: otlp.base_url(),
        dir,
    };
    let mut clients = vec![Client::Weft, Client::Native, Client::WeftObserved];
    if python.is_some() {
        clients.push(Client::Python);
    }

    // Blocking waits on child processes, off the runtime that serves the
    // emulator.
    let setup = std::sync::Arc::new(setup);
    let run = |client: Client, round: usize| {
        let setup = setup.clone();
        async move { tokio::task::spawn_blocking(move || setup.run(client, round)).await? }
    };

    // One unmeasured export each: creates the run store and fills the
    // component cache (as any second run of weft finds them), the page
    // cache and the emulator's allocator.
    for &client in &[Client::Weft, Client::Native, Client::WeftObserved] {
        run(client, 0).await?;
    }
    if spans_received.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return Err("the observed run exported no traces".into());
    }
    let expected = lines(&setup.output(Client::Native, 0))?;
    if expected != records || lines(&setup.output(Client::Weft, 0))? != records {
        return Err(format!("an export did not write {records} records").into());
    }
    // Both pass Stripe's text on unchanged, so the files are the same.
    if std::fs::read(setup.output(Client::Weft, 0))?
        != std::fs::read(setup.output(Client::Native, 0))?
    {
        return Err("weft and the native client exported different records".into());
    }

    // stripe-python takes a minute a round: it joins the first three.
    let python_rounds = rounds.min(3);
    let mut seconds: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); clients.len()];
    let mut ratios = Vec::new();
    let mut observed_ratios = Vec::new();
    let mut observed_cpu_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for round in 1..=rounds {
        let mut this_round = vec![0.0; clients.len()];
        let mut cpu_this_round = vec![0.0; clients.len()];
        for i in round_order(&clients, round) {
            if clients[i] == Client::Python && round > python_rounds {
                continue;
            }
            let (taken, cpu_taken) = run(clients[i], round).await?;
            this_round[i] = taken;
            seconds[i].push(taken);
            cpu_this_round[i] = cpu_taken;
            cpu[i].push(cpu_taken);
            if clients[i] == Client::Python
                && lines(&setup.output(Client::Python, round))? != records
            {
                return Err("stripe-python did not export every record".into());
            }
            let _ = std::fs::remove_file(setup.output(clients[i], round));
        }
        ratios.push(this_round[0] / this_round[1]);
        observed_ratios.push(this_round[2] / this_round[0]);
        cpu_ratios.push(cpu_this_round[0] / cpu_this_round[1].max(1e-3));
        observed_cpu_ratios.push(cpu_this_round[2] / cpu_this_round[0].max(1e-3));
        let times: Vec<String> = clients
            .iter()
            .zip(&this_round)
            .filter(|(_, s)| **s > 0.0)
            .map(|(c, s)| format!("{} {s:.2} s", c.name()))
            .collect();
        eprintln!("  export round {round}/{rounds}: {}", times.join(", "));
    }
    server.shutdown().await;
    otlp.shutdown().await;

    let weft = median(&seconds[0]);
    let native = median(&seconds[1]);
    let ratio = median(&ratios);
    let cpu_ratio = median(&cpu_ratios);
    let what = format!(
        "all {} customers, pages of {PAGE_SIZE}, to JSON Lines; median of {rounds}",
        grouped(records as f64)
    );
    let mut rows = vec![
        Row::new("export", what, format!("{weft:.2} s"))
            .reference(format!("native {native:.2} s"))
            .result(format!("ratio {ratio:.2}; CPU {cpu_ratio:.2}"))
            .target(format!("<= {TARGET_RATIO:.2}"), ratio <= TARGET_RATIO)
            .figures(json!({
                "records": records,
                "rounds": rounds,
                "weft_seconds": seconds[0],
                "native_seconds": seconds[1],
                "weft_median_s": weft,
                "native_median_s": native,
                "ratio_median": ratio,
                "weft_cpu_seconds": cpu[0],
                "native_cpu_seconds": cpu[1],
                "cpu_ratio_median": cpu_ratio,
                "records_per_second_weft": records as f64 / weft,
                "records_per_second_native": records as f64 / native,
            })),
    ];
    let observed = median(&seconds[2]);
    let observed_ratio = median(&observed_ratios);
    let observed_cpu_ratio = median(&observed_cpu_ratios);
    rows.push(
        Row::new(
            "export",
            format!("the same with metrics (--metrics-file) and OTLP traces on, to a receiver in the bench; median of {rounds}"),
            format!("{observed:.2} s"),
        )
        .reference(format!("both off {weft:.2} s"))
        .result(format!("ratio {observed_ratio:.3}; CPU {observed_cpu_ratio:.3}"))
        .target(format!("<= {TARGET_OBSERVED_RATIO:.2}"), observed_ratio <= TARGET_OBSERVED_RATIO)
        .figures(json!({
            "observed_seconds": seconds[2],
            "observed_median_s": observed,
            "ratio_observed_over_off": observed_ratios,
            "ratio_observed_median": observed_ratio,
            "cpu_seconds_off": cpu[0],
            "cpu_seconds_observed": cpu[2],
            "cpu_ratio_observed_over_off": observed_cpu_ratios,
            "cpu_ratio_observed_median": observed_cpu_ratio,
            "otlp_exports_received": spans_received.load(std::sync::atomic::Ordering::Relaxed),
        })),
    );
    match &python {
        Some(python) => {
            let python_median = median(&seconds[3]);
            rows.push(
                Row::new("export", format!("the same through {}; median of {python_rounds}", python_version(python)), format!("{weft:.2} s"))
                    .reference(format!("python {python_median:.2} s"))
                    .result(format!("ratio {:.2}", weft / python_median))
                    .figures(json!({ "python_seconds": seconds[3], "python_median_s": python_median, "ratio_weft_over_python": weft / python_median })),
            );
        }
        None => rows.push(Row::new("export", "stripe-python", "skipped: `python3 -c 'import stripe'` fails (pip install stripe, or set WEFT_BENCH_PYTHON)")),
    }
    Ok(rows)
}

/// The native client: what a user writes instead of a workflow. Runs in a
/// process of its own (`--native-export BASE_URL KEY OUT`).
/// Reads a Stripe customer list the way a plain client does: pages of
/// `limit`, each next one `starting_after` the last id. Each page's body
/// goes to `page`, which gives the id to continue after, or `None` at the
/// last page.
pub async fn each_stripe_page(
    client: &reqwest::Client,
    base_url: &str,
    key: &str,
    limit: u32,
    mut page: impl FnMut(&[u8]) -> BenchResult<Option<String>>,
) -> BenchResult<()> {
    let limit = limit.to_string();
    let mut starting_after: Option<String> = None;
    loop {
        let mut query = vec![("limit", limit.as_str())];
        if let Some(after) = &starting_after {
            query.push(("starting_after", after));
        }
        let url = reqwest::Url::parse_with_params(&format!("{base_url}/v1/customers"), &query)?;
        let body = client
            .get(url)
            .basic_auth(key, Some(""))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?;
        match page(&body)? {
            Some(after) => starting_after = Some(after),
            None => return Ok(()),
        }
    }
}

pub fn native_export(args: &[String]) -> BenchResult<()> {
    let [base_url, key, out] = args else {
        return Err("usage: --native-export BASE_URL KEY OUT".into());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let count = runtime.block_on(async {
        #[derive(serde::Deserialize)]
        struct List<'a> {
            #[serde(borrow)]
            data: Vec<&'a serde_json::value::RawValue>,
            has_more: bool,
        }
        #[derive(serde::Deserialize)]
        struct Id<'a> {
            id: &'a str,
        }
        let client = reqwest::Client::new();
        let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
        let mut count = 0usize;
        each_stripe_page(&client, base_url, key, PAGE_SIZE, |body| {
            let page: List<'_> = serde_json::from_slice(body)?;
            for record in &page.data {
                file.write_all(record.get().as_bytes())?;
                file.write_all(b"\n")?;
            }
            count += page.data.len();
            Ok(match page.data.last() {
                Some(last) if page.has_more => {
                    Some(serde_json::from_str::<Id<'_>>(last.get())?.id.to_owned())
                }
                _ => None,
            })
        })
        .await?;
        file.flush()?;
        BenchResult::Ok(count)
    })?;
    println!("{count}");
    Ok(())
}

/// `--serve-stripe RECORDS PORT`: a Stripe emulator seeded with RECORDS
/// customers on 127.0.0.1:PORT until killed, for profiling a client by hand
/// (`valgrind --tool=callgrind weft run ...`).
pub fn serve_stripe(args: &[String]) -> BenchResult<()> {
    let [records, port] = args else {
        return Err("usage: --serve-stripe RECORDS PORT".into());
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let emulator =
            StripeEmulator::new(StripeConfig { seed: records.parse()?, ..StripeConfig::default() });
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port.parse()?));
        let server = weft_sandbox::server::serve(emulator.router(), address).await?;
        println!("{} key {SANDBOX_API_KEY}", server.base_url());
        tokio::signal::ctrl_c().await?;
        server.shutdown().await;
        BenchResult::Ok(())
    })
}
