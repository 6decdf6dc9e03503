//! Plugins an operator pins: a connection's `plugin = { path, sha256 }`
//! refuses a file with another digest before any request, at every run's
//! start, also in an executor that loaded the file for an earlier run (as
//! `weft serve` keeps one for its lifetime).

use std::path::Path;

use weft::executor::{ExecError, Silent};
use weft::store::Status;

use super::support::{Harness, TestResult, overrides, sandbox, workflow};

/// A workflow listing GrowPanel customers through `file`, pinned to `sha256`.
fn pinned_workflow(file: &Path, sha256: &str) -> String {
    format!(
        "[workflow]\nname = \"pinned\"\n\n[connections.growpanel]\nplugin = {{ path = \"{}\", sha256 = \"{sha256}\" }}\ncredentials = \"env:WEFT_TEST_UNUSED\"\nsettings = {{ source = \"ds_weft_demo\" }}\n\n[[step]]\nid = \"rows\"\nlist = \"growpanel.customers\"\n",
        file.display()
    )
}

#[tokio::test]
async fn a_pinned_plugin_runs_when_its_digest_matches_and_is_refused_before_any_request_when_not()
-> TestResult {
    let sandbox = sandbox(5).await?;
    let harness = Harness::new()?;
    let growpanel = weft::builtin::component("growpanel").ok_or("the growpanel component")?;
    let file = harness.files.path().join("growpanel.wasm");
    std::fs::write(&file, growpanel)?;
    let digest = weft::runtime::digest(growpanel);
    let to_emulator = overrides(&sandbox, &[("growpanel", "growpanel")]);

    // A wrong pin: refused, and the emulator saw nothing.
    let wrong = "0".repeat(64);
    let refused = workflow(harness.files.path(), &pinned_workflow(&file, &wrong))?;
    let error = harness.executor.run(&refused, &to_emulator, &Silent).await.err();
    let Some(ExecError::PluginDigest { connection, file: named, expected, actual }) = &error else {
        panic!("a mismatched pin was not refused: {error:?}");
    };
    assert_eq!(
        (connection.as_str(), named.as_str(), expected.as_str(), actual.as_str()),
        ("growpanel", file.display().to_string().as_str(), wrong.as_str(), digest.as_str())
    );
    let message = error.as_ref().map(ToString::to_string).unwrap_or_default();
    assert!(message.contains(&wrong) && message.contains(&digest), "{message}");
    assert_eq!(sandbox.growpanel.emulator.requests().len(), 0, "a request left before the check");

    // The right pin (in upper case, as some tools print it) runs.
    let pinned = workflow(harness.files.path(), &pinned_workflow(&file, &digest.to_uppercase()))?;
    let summary = harness.executor.run(&pinned, &to_emulator, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert_eq!(summary.steps[0].counts.read, 5);
    let sent = sandbox.growpanel.emulator.requests().len();
    assert!(sent > 0);

    // The file changes on disk under the same executor (a long-running
    // `weft serve`): the next run is refused at its start, not served
    // from the plugin the executor already holds. The digest is checked
    // again only when the file's stamp changed; a change of the same size
    // with the modification time put back still changes the stamp (its
    // status-change time), so it is caught too.
    let again = harness.executor.run(&pinned, &to_emulator, &Silent).await?;
    assert_eq!(again.status, Status::Succeeded, "an unchanged file runs again: {again:#?}");
    let modified = std::fs::metadata(&file)?.modified()?;
    let mut same_size = growpanel.to_vec();
    if let Some(last) = same_size.last_mut() {
        *last ^= 1;
    }
    std::fs::write(&file, &same_size)?;
    std::fs::File::options().write(true).open(&file)?.set_modified(modified)?;
    assert_eq!(std::fs::metadata(&file)?.modified()?, modified);
    let error = harness.executor.run(&pinned, &to_emulator, &Silent).await.err();
    assert!(
        matches!(&error, Some(ExecError::PluginDigest { actual, .. }) if *actual == weft::runtime::digest(&same_size)),
        "a same-size change with its old modification time was run: {error:?}"
    );
    let sent = sandbox.growpanel.emulator.requests().len();
    let mut changed = growpanel.to_vec();
    changed.extend_from_slice(b"\0");
    std::fs::write(&file, &changed)?;
    let error = harness.executor.run(&pinned, &to_emulator, &Silent).await.err();
    assert!(
        matches!(&error, Some(ExecError::PluginDigest { actual, .. }) if *actual == weft::runtime::digest(&changed)),
        "a changed pinned file was run: {error:?}"
    );
    assert_eq!(sandbox.growpanel.emulator.requests().len(), sent, "the refused run sent requests");

    // Put back, the pinned file runs again.
    std::fs::write(&file, growpanel)?;
    let restored = harness.executor.run(&pinned, &to_emulator, &Silent).await?;
    assert_eq!(restored.status, Status::Succeeded, "{restored:#?}");
    Ok(())
}

#[test]
fn a_pin_must_be_a_wasm_path_and_a_sha256() -> TestResult {
    let dir = tempfile::tempdir()?;
    let builtin = "[workflow]\nname = \"p\"\n\n[connections.g]\nplugin = { path = \"growpanel\", sha256 = \"00\" }\n\n[[step]]\nid = \"rows\"\nlist = \"g.customers\"\n";
    let error = workflow(dir.path(), builtin).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("only a path ending in .wasm is pinned"), "{error}");
    let short = builtin.replace("\"growpanel\"", "\"g.wasm\"");
    let error = workflow(dir.path(), &short).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("64 hex digits"), "{error}");
    let unknown = builtin.replace("sha256 = \"00\"", "sha = \"00\"");
    let error = workflow(dir.path(), &unknown).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("unknown field `sha`"), "{error}");
    Ok(())
}

#[tokio::test]
async fn inspect_lists_what_the_hostile_plugin_asks_for() -> TestResult {
    let runtime = super::support::runtime(weft::runtime::InstanceLimits::default())?;
    let hostile = runtime.load_file(super::support::hostile_wasm()).await?;
    let trust = weft::plugin_trust::Capabilities::of(&hostile);
    assert_eq!(
        trust.sha256,
        weft::runtime::digest(&std::fs::read(super::support::hostile_wasm())?)
    );
    assert_eq!(
        (trust.vendor.as_str(), trust.hosts.as_slice()),
        ("weft tests", &["127.0.0.1".to_owned()][..])
    );
    assert!(trust.irreversible.is_empty(), "{trust:#?}");
    assert!(trust.settings.is_empty(), "{trust:#?}");
    // It is built with the Rust standard library, which imports WASI's
    // sockets and files: inspect shows them, though the host denies both.
    for import in
        ["weft:connector/http@0.1.0", "wasi:sockets/tcp@0.2.6", "wasi:filesystem/preopens@0.2.6"]
    {
        assert!(trust.imports.iter().any(|i| i == import), "no {import}: {trust:#?}");
    }
    assert!(!trust.ops.is_empty());
    Ok(())
}
