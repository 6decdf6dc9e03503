//! The `weft` binary as a user runs it: exit codes, JSON summary, and
//! diagnostics that point at the file, line and column.

use std::path::Path;
use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
    let out = weft(&["run", "--sandbox", "--seed", "120", "--json", &example("stripe-export.toml")], &cache())?;
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
        let out = weft(&["run", "--sandbox", "--seed", "20", "--json", "--state-dir", &state_dir, &file], &cache())?;
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
    let out = weft(&["run", "--sandbox", "--seed", "30", "--json", "--state-dir", &state_dir, &example("stripe-export.toml")], &cache())?;
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
