//! Connectors in other languages, side by side in one run: the connector
//! `weft plugin new` writes for Rust, Python (componentize-py) and
//! JavaScript (componentize-js), each built with its pinned tool, then a
//! `get` of one Stripe customer with HTTP stubbed by a canned response, on
//! a warm instance (the calls interleaved, so every language sees the same
//! machine); the first compile of each component; and cold starts from the
//! on-disk compiled cache (a new engine, the component deserialized, its
//! manifest read).
//!
//! A language whose tool is missing gets a row saying so (.ci/run installs
//! componentize-py and componentize-js).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use weft::connector::{AuthScheme, CallContext};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits, Response, SendOnce};
use weft::runtime::{PluginConnection, Runtime, RuntimeConfig};

use super::report::{Row, micros, quantile};
use super::{BenchResult, Config};

/// The targets for a warm `get`, in microseconds.
const TARGET_WARM_PYTHON_US: f64 = 1000.0;
const TARGET_WARM_JS_US: f64 = 500.0;
/// The target for a Python cold start from the cache.
const TARGET_COLD_PYTHON_MS: f64 = 50.0;

struct Built {
    lang: &'static str,
    wasm: Vec<u8>,
}

/// Runs `command` in `dir`, failing with its output.
fn run_in(dir: &Path, command: &mut Command) -> BenchResult<()> {
    let out = command.current_dir(dir).output()?;
    if !out.status.success() {
        return Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

fn present(program: &Path) -> bool {
    Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `weft plugin new bench-LANG --lang LANG`, built; `None` when its tool is
/// missing.
fn build(scratch: &Path, lang: &'static str) -> BenchResult<Option<Built>> {
    let name = format!("bench-{lang}");
    let dir = scratch.join(&name);
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../node_modules");
    match lang {
        "python" if !present(Path::new("componentize-py")) => return Ok(None),
        "js" if !present(&modules.join(".bin/componentize-js")) => return Ok(None),
        _ => {}
    }
    run_in(
        scratch,
        Command::new(env!("CARGO_BIN_EXE_weft")).args([
            "plugin",
            "new",
            &name,
            "--lang",
            lang,
            "--dir",
            &dir.display().to_string(),
        ]),
    )?;
    eprintln!("bench suite: languages: building the {lang} connector…");
    match lang {
        "python" => run_in(&dir, &mut Command::new("./build.sh"))?,
        "js" => {
            std::os::unix::fs::symlink(&modules, dir.join("node_modules"))?;
            run_in(&dir, Command::new("npm").args(["run", "build"]))?;
        }
        _ => run_in(
            &dir,
            Command::new("./build.sh").env("CARGO_NET_OFFLINE", "true").env(
                "CARGO_TARGET_DIR",
                PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugin-new-rust"),
            ),
        )?,
    }
    Ok(Some(Built { lang, wasm: std::fs::read(dir.join(format!("{name}.wasm")))? }))
}

fn median_ms(samples: &[Duration]) -> f64 {
    quantile(&mut samples.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(), 0.5)
}

pub async fn run(config: &Config) -> BenchResult<Vec<Row>> {
    let scratch = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut built = Vec::new();
    for lang in ["rust", "python", "js"] {
        match build(scratch.path(), lang)? {
            Some(b) => built.push(b),
            None => rows.push(Row::new(
                "languages",
                format!("{lang} connector"),
                "skipped: its build tool is missing (.ci/run installs componentize-py and componentize-js)",
            )),
        }
    }
    // One real customer from the Stripe emulator, as the canned answer.
    let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
        seed: 1,
        ..Default::default()
    })
    .await?;
    let list = reqwest::Client::new()
        .get(format!("{}/v1/customers?limit=1", sandbox.stripe.base_url()))
        .bearer_auth(weft_sandbox::stripe::SANDBOX_API_KEY)
        .send()
        .await?
        .bytes()
        .await?;
    let list: serde_json::Value = serde_json::from_slice(&list)?;
    sandbox.shutdown().await;
    let customer = list["data"][0].clone();
    let id = customer["id"].as_str().ok_or("the emulator's customer has an id")?.to_owned();
    let body = customer.to_string().into_bytes();

    let cache = tempfile::tempdir()?;
    let cached =
        || RuntimeConfig { cache_dir: Some(cache.path().to_path_buf()), ..Default::default() };
    let mut compile = Vec::new();
    let mut cold = Vec::new();
    for b in &built {
        // First compile (a cache miss), filling the disk cache.
        let plugin = Runtime::new(cached())?.load(b.lang, &b.wasm).await?;
        compile.push(plugin.load_info().compile_or_load);
        let mut starts = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let plugin = Runtime::new(cached())?.load(b.lang, &b.wasm).await?;
            if !plugin.load_info().cache_hit {
                return Err(format!("{}: the component cache was not hit", b.lang).into());
            }
            starts.push(started.elapsed());
        }
        cold.push(starts);
    }

    let runtime = Runtime::new(cached())?;
    let mut connections = Vec::new();
    for b in &built {
        let plugin = Arc::new(runtime.load(b.lang, &b.wasm).await?);
        let body = body.clone();
        let http = Arc::new(
            ConnectionHttp::new(
                weft::http::shared_client(),
                "https://api.stripe.com",
                &[],
                Some((AuthScheme::Bearer, Secret::new("sk_test_bench"))),
                HttpLimits::default(),
                Arc::new(SendOnce),
            )?
            .with_canned_responses(move |_, _| Response {
                status: 200,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.clone(),
            }),
        );
        let ctx = CallContext { base_url: http.base_url(), settings: vec![] };
        connections.push(PluginConnection::new(plugin, http, ctx));
    }
    let rounds = ((2000.0 * config.scale).round() as usize).max(100);
    let mut samples: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); connections.len()];
    for round in 0..rounds + rounds / 10 {
        for (n, connection) in connections.iter().enumerate() {
            let started = Instant::now();
            let record = connection.get("customers", &id).await?;
            let elapsed = started.elapsed();
            if record.is_none() {
                return Err(format!("{}: the customer read as absent", built[n].lang).into());
            }
            // The first tenth warms up.
            if round >= rounds / 10 {
                samples[n].push(elapsed);
            }
        }
    }

    let rust_p50 = built
        .iter()
        .position(|b| b.lang == "rust")
        .map(|n| quantile(&mut samples[n].iter().copied().map(micros).collect::<Vec<_>>(), 0.5));
    for (n, b) in built.iter().enumerate() {
        let mut us: Vec<f64> = samples[n].iter().copied().map(micros).collect();
        let (p50, p99) = (quantile(&mut us, 0.5), quantile(&mut us, 0.99));
        let mut row = Row::new(
            "languages",
            format!("get, warm instance, HTTP stubbed: {} ({} KB)", b.lang, b.wasm.len() / 1024),
            format!("p50 {p50:.0} µs, p99 {p99:.0} µs"),
        )
        .figures(json!({ "lang": b.lang, "rounds": rounds, "p50_us": p50, "p99_us": p99, "wasm_bytes": b.wasm.len() }));
        if let Some(rust) = rust_p50.filter(|_| b.lang != "rust") {
            row = row
                .reference(format!("rust p50 {rust:.0} µs"))
                .result(format!("{:.1}x", p50 / rust));
        }
        match b.lang {
            "python" => {
                row = row.target(
                    format!("<= {TARGET_WARM_PYTHON_US:.0} µs"),
                    p50 <= TARGET_WARM_PYTHON_US,
                )
            }
            "js" => {
                row = row.target(format!("<= {TARGET_WARM_JS_US:.0} µs"), p50 <= TARGET_WARM_JS_US)
            }
            _ => {}
        }
        rows.push(row);
    }
    for (n, b) in built.iter().enumerate() {
        let cold_ms = median_ms(&cold[n]);
        let mut row = Row::new(
            "languages",
            format!("{}: cold start from the disk cache (new engine, load, describe)", b.lang),
            format!("{cold_ms:.1} ms"),
        )
        .reference(format!("first compile {:.1} s", compile[n].as_secs_f64()))
        .figures(json!({ "lang": b.lang, "cold_ms": cold_ms, "first_compile_ms": compile[n].as_secs_f64() * 1e3 }));
        if b.lang == "python" {
            row = row.target(
                format!("<= {TARGET_COLD_PYTHON_MS:.0} ms"),
                cold_ms <= TARGET_COLD_PYTHON_MS,
            );
        }
        rows.push(row);
    }
    Ok(rows)
}
