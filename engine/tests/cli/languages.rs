//! Connectors in other languages, as an author makes them: `weft plugin
//! new` output for Rust, Python and JavaScript, built with its one command
//! by the pinned tools (componentize-py from PyPI, componentize-js from npm,
//! both installed by .ci/run), its native tests run, then `weft plugin
//! check --sandbox` on the component, untouched. A Python connector (built
//! with `--stub-wasi`, as the template's build.sh does) keeps its warm
//! instance across the calls of a connection; a JavaScript component built
//! with componentize-js's defaults imports wasi:http and is refused at load,
//! naming the import and the flag, and never cached. A JavaScript connector
//! built for `weft:connector@0.2.0` answers a dry run's `lookup`.
//!
//! Off CI a missing tool skips its test, saying so; with CI=true it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use super::{TestResult, cache};

/// The repository's root (the engine crate's parent).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `program --version` runs; with CI=true a missing tool fails
/// the test instead of skipping it.
fn tool_present(program: &Path, what: &str) -> TestResult<bool> {
    let found = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            return Err(format!(
                "{what} is missing ({}): .ci/run installs it; CI=true, so this fails",
                program.display()
            )
            .into());
        }
        eprintln!("skipped: {what} is not installed ({}); .ci/run installs it", program.display());
    }
    Ok(found)
}

/// Runs `command` in `dir`; its output is the error when it fails.
fn run(dir: &Path, command: &mut Command) -> TestResult<String> {
    let out = command.current_dir(dir).output()?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("{command:?} in {} failed: {text}", dir.display()).into());
    }
    Ok(text)
}

/// `weft plugin new NAME --lang LANG` into a fresh directory.
fn generate(name: &str, lang: &str) -> TestResult<(tempfile::TempDir, PathBuf)> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join(name);
    let out = super::weft(
        &["plugin", "new", name, "--lang", lang, "--dir", &dir.display().to_string()],
        &cache(),
    )?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok((scratch, dir))
}

/// `weft plugin check NAME.wasm --sandbox --emulator stripe` passes with
/// nothing failed.
fn passes_the_sandbox_check(dir: &Path, name: &str) -> TestResult {
    let wasm = dir.join(format!("{name}.wasm"));
    let out = super::weft(
        &["plugin", "check", &wasm.display().to_string(), "--sandbox", "--emulator", "stripe"],
        &cache(),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("a wrong credential is unauthorized"), "{stdout}");
    Ok(())
}

#[test]
fn a_python_connector_from_plugin_new_builds_passes_the_sandbox_check_and_stays_warm() -> TestResult
{
    if !tool_present(Path::new("componentize-py"), "componentize-py")? {
        return Ok(());
    }
    let (_scratch, dir) = generate("acme-py", "python")?;
    run(&dir, &mut Command::new("./build.sh"))?;
    let tests = run(&dir, &mut Command::new("./test.sh"))?;
    assert!(tests.contains("Ran 3 tests") && tests.contains("OK"), "{tests}");
    passes_the_sandbox_check(&dir, "acme-py")?;
    let logged = three_calls_on_one_connection(&dir.join("acme-py.wasm"))?;
    for call in 1..=3 {
        assert!(
            logged.contains(&format!("acme-py: call {call} of this instance")),
            "the module-level counter counts every call on one instance: {logged}"
        );
    }
    Ok(())
}

#[test]
fn a_javascript_connector_from_plugin_new_builds_and_passes_the_sandbox_check() -> TestResult {
    // The pinned componentize-js, as .ci/run's `npm ci` installs it from the
    // repository's package.json (the same versions `plugin new` pins).
    let modules = repository().join("node_modules");
    if !tool_present(&modules.join(".bin/componentize-js"), "componentize-js")? {
        return Ok(());
    }
    let (_scratch, dir) = generate("acme-js", "js")?;
    // Offline: the project's dependencies are the repository's.
    std::os::unix::fs::symlink(&modules, dir.join("node_modules"))?;
    run(&dir, Command::new("npm").args(["run", "build"]))?;
    let tests = run(&dir, Command::new("npm").args(["test"]))?;
    assert!(tests.contains("# pass 3") && tests.contains("# fail 0"), "{tests}");
    passes_the_sandbox_check(&dir, "acme-js")
}

#[test]
fn a_javascript_connector_built_for_0_2_0_answers_a_dry_runs_lookup() -> TestResult {
    let modules = repository().join("node_modules");
    if !tool_present(&modules.join(".bin/componentize-js"), "componentize-js")? {
        return Ok(());
    }
    let (_scratch, dir) = generate("acme-look", "js")?;
    std::os::unix::fs::symlink(&modules, dir.join("node_modules"))?;
    let wit = dir.join("wit").display().to_string();
    let out = super::weft(&["plugin", "wit", "--version", "0.2.0", "--out", &wit], &cache())?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The author's part: upserts offered, and what one would match.
    let app = std::fs::read_to_string(dir.join("app.js"))?
        .replace("ops: ['list', 'get']", "ops: ['list', 'get', 'upsert']")
        + r#"
export const lookup = {
  lookup(ctx, resource, record) {
    const wanted = JSON.parse(record);
    if (wanted.email === 'taken@example.com') throw weft.conflict('two customers share it');
    if (wanted.email !== 'known@example.com') return undefined;
    return JSON.stringify({ id: 'cus_known', email: wanted.email, name: 'Old' });
  },
};
"#;
    std::fs::write(dir.join("app.js"), app)?;
    run(&dir, Command::new("npm").args(["run", "build"]))?;
    let wasm = dir.join("acme-look.wasm").display().to_string();
    let out = super::weft(&["plugin", "inspect", &wasm, "--json"], &cache())?;
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(inspected["lookup"], true, "{inspected:#}");

    let flow = |email: &str| {
        format!(
            r#"
[workflow]
name = "look"

[connections.acme-look]
plugin = "acme-look.wasm"
credentials = "env:ACME_LOOK_API_KEY"
sandbox = "stripe"

[[step]]
id = "write"
upsert = "acme-look.customers"
record = {{ email = "{email}", name = "New" }}
"#
        )
    };
    let state = tempfile::tempdir()?;
    let dry_run = |email: &str| -> TestResult<(bool, serde_json::Value)> {
        std::fs::write(dir.join("look.toml"), flow(email))?;
        let out = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["run", "--sandbox", "--dry-run", "--json", "look.toml"])
            .env("WEFT_CACHE_DIR", cache())
            .env("WEFT_STATE_DIR", state.path())
            .current_dir(&dir)
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = serde_json::from_str(&stdout)
            .map_err(|e| format!("{e}: {stdout}{}", String::from_utf8_lossy(&out.stderr)))?;
        Ok((out.status.success(), summary))
    };
    let (ok, known) = dry_run("known@example.com")?;
    assert!(ok, "{known:#}");
    let plan = &known["steps"][0]["plan"];
    assert_eq!((plan["update"].as_u64(), plan["upsert"].as_u64()), (Some(1), Some(0)), "{known:#}");
    assert_eq!(plan["samples"][0]["key"], "cus_known", "{known:#}");
    let (ok, new) = dry_run("new@example.com")?;
    assert!(ok, "{new:#}");
    assert_eq!(new["steps"][0]["plan"]["create"], 1, "{new:#}");
    let (ok, taken) = dry_run("taken@example.com")?;
    assert!(!ok, "a conflict fails the dry run as it would the real one: {taken:#}");
    assert!(taken.to_string().contains("two customers share it"), "{taken:#}");
    Ok(())
}

#[test]
fn a_javascript_component_importing_wasi_http_is_refused_naming_the_flag_and_never_cached()
-> TestResult {
    let modules = repository().join("node_modules");
    let componentize = modules.join(".bin/componentize-js");
    if !tool_present(&componentize, "componentize-js")? {
        return Ok(());
    }
    let (_scratch, dir) = generate("acme-http", "js")?;
    std::os::unix::fs::symlink(&modules, dir.join("node_modules"))?;
    // componentize-js's default build: fetch() through wasi:http, which the
    // README says weft refuses at load.
    run(
        &dir,
        Command::new(&componentize).args([
            "app.js",
            "--wit",
            "wit",
            "--world-name",
            "connector",
            "--out",
            "acme-http.wasm",
        ]),
    )?;
    let cache = tempfile::tempdir()?;
    let wasm = dir.join("acme-http.wasm").display().to_string();
    let out = super::weft(
        &["plugin", "check", &wasm, "--sandbox", "--emulator", "stripe"],
        cache.path(),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wasi:http component was accepted: {stderr}");
    assert!(out.stdout.is_empty(), "checks ran: {}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr.contains("wasi:http/outgoing-handler"), "names the import: {stderr}");
    assert!(stderr.contains("--disable http fetch-event"), "names the flag: {stderr}");
    assert!(!stderr.contains("does not implement"), "blames the import, not the export: {stderr}");
    let cached: Vec<_> = walk(cache.path())?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(cached, Vec::<PathBuf>::new(), "a refused component was cached");
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> TestResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() { out.extend(walk(&path)?) } else { out.push(path) }
    }
    Ok(out)
}

#[test]
fn a_rust_connector_from_plugin_new_builds_and_passes_the_sandbox_check() -> TestResult {
    let (_scratch, dir) = generate("acme-rs", "rust")?;
    // Offline, from the crates the workspace already fetched; one target
    // directory for every run, so only the first compiles wit-bindgen.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-new-rust");
    let cargo = |command: &mut Command| {
        command.env("CARGO_NET_OFFLINE", "true").env("CARGO_TARGET_DIR", &target);
    };
    let mut build = Command::new("./build.sh");
    cargo(&mut build);
    run(&dir, &mut build)?;
    let mut test = Command::new("cargo");
    test.arg("test");
    cargo(&mut test);
    let tests = run(&dir, &mut test)?;
    assert!(tests.contains("test result: ok. 3 passed"), "{tests}");
    passes_the_sandbox_check(&dir, "acme-rs")
}

/// Lists the Stripe emulator's customers three times on one connection to
/// `wasm`, and returns what the plugin logged (at debug).
fn three_calls_on_one_connection(wasm: &Path) -> TestResult<String> {
    use tracing::instrument::WithSubscriber as _;
    use weft::connector::{AuthScheme, CallContext, ListRequest};
    use weft::credentials::Secret;
    use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
    use weft::runtime::{PluginConnection, Runtime, RuntimeConfig};

    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let calls = async {
        let sandbox = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
            seed: 5,
            ..Default::default()
        })
        .await?;
        let stripe = sandbox
            .endpoints()
            .into_iter()
            .find(|e| e.vendor == "stripe")
            .ok_or("no Stripe emulator")?;
        let runtime =
            Runtime::new(RuntimeConfig { cache_dir: Some(cache()), ..RuntimeConfig::default() })?;
        let plugin = Arc::new(runtime.load_file(wasm).await?);
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            &stripe.base_url,
            &[],
            Some((AuthScheme::Bearer, Secret::new(stripe.api_key.clone()))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?);
        let ctx = CallContext { base_url: http.base_url(), settings: Vec::new() };
        let connection = PluginConnection::new(plugin, http, ctx);
        for _ in 0..3 {
            let request = ListRequest {
                resource: "customers".into(),
                cursor: None,
                page_size: 2,
                filter: None,
            };
            assert_eq!(connection.list(request).await?.records.len(), 2);
        }
        sandbox.shutdown().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(calls.with_subscriber(subscriber))?;
    let log = captured.0.lock().map_err(|_| "poisoned")?;
    Ok(String::from_utf8_lossy(&log).into_owned())
}

/// Collects what tracing writes.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
