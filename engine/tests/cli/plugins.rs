//! Pinned plugins and `weft plugin inspect` as an operator uses them: a
//! `weft run` or `weft plugin check` whose pin does not match the file
//! exits 2 naming the connection, the file and both digests, before any
//! request; inspect prints the digest to pin and what the plugin may do.

use super::{Dirs, Production, TestResult, key_file, stdout_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_run_refuses_a_pinned_plugin_whose_digest_differs_before_any_request() -> TestResult {
    let production = Production::start().await?;
    let dirs = Dirs::new()?;
    let growpanel = weft::builtin::component("growpanel").ok_or("the growpanel component")?;
    let plugin = dirs.files.path().join("growpanel.wasm");
    std::fs::write(&plugin, growpanel)?;
    let digest = weft::runtime::digest(growpanel);
    let wrong = "ab".repeat(32);
    let key = key_file(dirs.files.path(), "live-key", "gp_live_a_real_key")?;
    let text = |pin: &str| {
        format!(
            "[workflow]\nname = \"pinned\"\n\n[connections.panel]\nplugin = {{ path = \"growpanel.wasm\", sha256 = \"{pin}\" }}\ncredentials = \"{key}\"\nbase_url = \"{}\"\nsettings = {{ source = \"ds_weft_demo\" }}\n\n[[step]]\nid = \"rows\"\nlist = \"panel.customers\"\n",
            production.base_url
        )
    };
    let path = dirs.write("pinned.toml", &text(&wrong))?;
    for sandbox in [false, true] {
        let mut command = dirs.command();
        command.arg("run");
        if sandbox {
            command.arg("--sandbox");
        }
        let ran = command.arg(&path).output()?;
        let stderr = String::from_utf8_lossy(&ran.stderr);
        assert_eq!(ran.status.code(), Some(2), "sandbox {sandbox}: {stderr}");
        for part in ["connection \"panel\"", &plugin.display().to_string(), &wrong, &digest] {
            assert!(stderr.contains(part), "sandbox {sandbox}: no {part:?} in {stderr}");
        }
    }
    assert_eq!(production.requests(), Vec::<String>::new(), "a request left before the check");

    // The matching pin runs (against the sandbox, so nothing is real).
    std::fs::write(&path, text(&digest))?;
    let ran =
        dirs.command().args(["run", "--sandbox", "--seed", "5", "--json"]).arg(&path).output()?;
    let summary = stdout_json(&ran)?;
    assert_eq!(summary["status"], "succeeded", "{summary:#}");
    assert_eq!(summary["steps"][0]["counts"]["read"], 5);
    assert_eq!(production.requests(), Vec::<String>::new());
    Ok(())
}

#[test]
fn plugin_check_refuses_a_file_that_differs_from_its_sha256_and_checks_one_that_matches()
-> TestResult {
    let dirs = Dirs::new()?;
    let growpanel = weft::builtin::component("growpanel").ok_or("the growpanel component")?;
    let plugin = dirs.files.path().join("growpanel.wasm");
    std::fs::write(&plugin, growpanel)?;
    let digest = weft::runtime::digest(growpanel);
    let wrong = "0".repeat(64);
    let checked = dirs
        .command()
        .args(["plugin", "check", "--sandbox", "--sha256", &wrong])
        .arg(&plugin)
        .output()?;
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&wrong) && stderr.contains(&digest), "{stderr}");
    assert!(checked.stdout.is_empty(), "a check ran: {}", String::from_utf8_lossy(&checked.stdout));

    let checked = dirs
        .command()
        .args(["plugin", "check", "--sandbox", "--sha256", &digest])
        .arg(&plugin)
        .output()?;
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&checked.stderr));
    assert!(stdout.contains(" 0 failed"), "{stdout}");
    Ok(())
}

#[test]
fn plugin_inspect_shows_the_digest_to_pin_and_what_the_plugin_may_do() -> TestResult {
    let dirs = Dirs::new()?;
    let stripe = weft::builtin::component("stripe").ok_or("the stripe component")?;
    let plugin = dirs.files.path().join("stripe.wasm");
    std::fs::write(&plugin, stripe)?;
    let digest = weft::runtime::digest(stripe);
    let json =
        stdout_json(&dirs.command().args(["plugin", "inspect", "--json"]).arg(&plugin).output()?)?;
    assert_eq!(json["sha256"], digest.as_str());
    let trust = &json["capabilities"];
    assert_eq!(trust["sha256"], digest.as_str());
    assert_eq!(trust["vendor"], "Stripe");
    assert_eq!(trust["hosts"], serde_json::json!(["api.stripe.com"]));
    let irreversible = trust["irreversible"].as_array().ok_or("irreversible is a list")?;
    assert!(irreversible.contains(&"customers.remove".into()), "{trust:#}");
    let ops = trust["ops"].as_array().ok_or("ops is a list")?;
    assert!(ops.contains(&"customers.list".into()) && ops.len() > irreversible.len(), "{trust:#}");
    let imports = trust["imports"].as_array().ok_or("imports is a list")?;
    assert!(imports.contains(&"weft:connector/http@0.1.0".into()), "{trust:#}");

    let text = dirs.command().args(["plugin", "inspect"]).arg(&plugin).output()?;
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("sha256 = \"{digest}\"")), "the pin line: {text}");
    assert!(text.contains("irreversible  customers.remove"), "{text}");
    Ok(())
}

/// Every file under `dir`, with its text.
fn files(dir: &std::path::Path) -> TestResult<Vec<(std::path::PathBuf, String)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(files(&path)?);
        } else {
            out.push((path.clone(), std::fs::read_to_string(&path)?));
        }
    }
    Ok(out)
}

#[test]
fn a_recording_replays_offline_and_holds_no_credential_and_no_redacted_field() -> TestResult {
    // GrowPanel sends JSON; Stripe sends forms (`email=…`) and looks a
    // customer up by email in the query: redacted in each.
    // Stripe also answers lookup (weft:connector@0.2.0): one check more.
    for (plugin, key, passed) in [
        ("growpanel", weft_sandbox::growpanel::SANDBOX_API_KEY, "6 passed, 0 failed"),
        ("stripe", weft_sandbox::stripe::SANDBOX_API_KEY, "7 passed, 0 failed"),
    ] {
        let dirs = Dirs::new()?;
        let fixtures = dirs.files.path().join("fixtures");
        let recorded = dirs
            .command()
            .args(["plugin", "record", plugin, "--sandbox", "--redact", "email", "--out"])
            .arg(&fixtures)
            .output()?;
        let stdout = String::from_utf8_lossy(&recorded.stdout);
        assert!(
            recorded.status.success(),
            "{plugin}: {stdout}\n{}",
            String::from_utf8_lossy(&recorded.stderr)
        );
        assert!(stdout.contains(passed), "{plugin}: {stdout}");

        let written = files(&fixtures)?;
        assert!(written.len() > 5, "{plugin}: one file an exchange: {written:?}");
        for (path, text) in &written {
            let lower = text.to_ascii_lowercase();
            assert!(!lower.contains("authorization"), "{} holds an auth header", path.display());
            assert!(!text.contains(key), "{} holds the key", path.display());
            // The sample's and the seeded customers' emails are all
            // redacted, in JSON, in forms and in queries.
            assert!(
                !text.contains("@example.com") && !text.contains("%40example.com"),
                "{} holds an email",
                path.display()
            );
        }
        assert!(
            written.iter().any(|(_, text)| text.contains("\"email\": \"[redacted]\"")),
            "{plugin}"
        );
        if plugin == "stripe" {
            assert!(
                written.iter().any(|(_, text)| text.contains("email=%5Bredacted%5D")),
                "{plugin}: a form or query with the email redacted"
            );
        }

        // Offline: no emulator, no key; every check passes on the recording.
        let replayed =
            dirs.command().args(["plugin", "test", plugin, "--replay"]).arg(&fixtures).output()?;
        let stdout = String::from_utf8_lossy(&replayed.stdout);
        let stderr = String::from_utf8_lossy(&replayed.stderr);
        assert!(replayed.status.success(), "{plugin}: {stdout}\n{stderr}");
        assert!(stdout.contains(passed), "{plugin}: {stdout}");
        assert!(!stderr.contains("no fixture"), "{plugin}: {stderr}");
    }
    Ok(())
}

#[test]
fn a_replay_fails_naming_the_request_the_fixtures_do_not_hold() -> TestResult {
    let dirs = Dirs::new()?;
    let fixtures = dirs.files.path().join("fixtures");
    let recorded = dirs
        .command()
        .args(["plugin", "record", "growpanel", "--sandbox", "--out"])
        .arg(&fixtures)
        .output()?;
    assert!(recorded.status.success(), "{}", String::from_utf8_lossy(&recorded.stderr));
    // Drop the recorded delete: the connector's remove asks for it.
    let exchanges = fixtures.join("exchanges");
    let mut removed = 0;
    for entry in std::fs::read_dir(&exchanges)? {
        let path = entry?.path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().contains("-DELETE-")) {
            std::fs::remove_file(path)?;
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "the recording holds one delete");
    let replayed =
        dirs.command().args(["plugin", "test", "growpanel", "--replay"]).arg(&fixtures).output()?;
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert_eq!(replayed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("holds the request DELETE /data/customers/weft-conformance-1"),
        "{stderr}"
    );
    Ok(())
}

/// A list of Stripe customers copied into GrowPanel: two connections, JSON
/// and form bodies, reads and writes.
const COPY_WORKFLOW: &str = r#"[workflow]
name = "recorded-copy"

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"

[connections.growpanel]
plugin = "growpanel"
credentials = "env:WEFT_TEST_UNUSED"
settings = { source = "ds_weft_demo" }

[[step]]
id = "customers"
list = "stripe.customers"
limit = 6

[[step]]
id = "copy"
for_each = ".steps.customers.records[]"
upsert = "growpanel.customers"
record = { id = "${{ $item.id }}", name = "${{ $item.name }}", email = "${{ $item.email }}", created_date = "2026-01-01", country = "US" }
"#;

#[test]
fn a_recorded_workflow_run_replays_offline_and_fails_on_a_missing_exchange() -> TestResult {
    let recording = Dirs::new()?;
    let workflow = recording.write("copy.toml", COPY_WORKFLOW)?;
    let fixtures = recording.files.path().join("fixtures");
    let recorded = recording
        .command()
        .args(["run", "--sandbox", "--seed", "6", "--json", "--redact", "email", "--record"])
        .arg(&fixtures)
        .arg(&workflow)
        .output()?;
    let stderr = String::from_utf8_lossy(&recorded.stderr);
    assert!(recorded.status.success(), "{stderr}");
    let summary = stdout_json(&recorded)?;
    assert_eq!(summary["steps"][1]["counts"]["created"], 6, "{summary:#}");
    for connection in ["stripe", "growpanel"] {
        assert!(
            fixtures.join(connection).join("fixtures.json").is_file(),
            "{connection}: {stderr}"
        );
    }
    for (path, text) in files(&fixtures)? {
        for key in [weft_sandbox::stripe::SANDBOX_API_KEY, weft_sandbox::growpanel::SANDBOX_API_KEY]
        {
            assert!(!text.contains(key), "{} holds a key", path.display());
        }
        assert!(!text.to_ascii_lowercase().contains("authorization"), "{}", path.display());
        assert!(
            !text.contains("@example.com") && !text.contains("%40example.com"),
            "{} holds an email",
            path.display()
        );
    }

    // Offline, on a fresh store: no emulator, no key, the same run.
    let replaying = Dirs::new()?;
    let replayed = replaying
        .command()
        .args(["run", "--json", "--replay"])
        .arg(&fixtures)
        .arg(&workflow)
        .output()?;
    let stderr = String::from_utf8_lossy(&replayed.stderr);
    assert!(replayed.status.success(), "{stderr}");
    assert!(!stderr.contains("no fixture"), "{stderr}");
    let again = stdout_json(&replayed)?;
    assert_eq!(again["status"], "succeeded", "{again:#}");
    assert_eq!(again["steps"][0]["counts"]["read"], 6, "{again:#}");
    assert_eq!(again["steps"][1]["counts"]["created"], 6, "{again:#}");

    // One create missing from the fixtures: the replay fails, naming it.
    let exchanges = fixtures.join("growpanel").join("exchanges");
    let create = std::fs::read_dir(&exchanges)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().contains("-POST-")))
        .ok_or("a recorded create")?;
    std::fs::remove_file(&create)?;
    let missing = Dirs::new()?;
    let failed =
        missing.command().args(["run", "--replay"]).arg(&fixtures).arg(&workflow).output()?;
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds the request POST /data/customers"), "{stderr}");
    Ok(())
}
