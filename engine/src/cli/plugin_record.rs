//! `weft plugin record` and `weft plugin test --replay`: the conformance
//! suite against a live endpoint through a recording proxy, and the same
//! suite offline against what it recorded (see `weft::plugin_fixtures`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use weft::credentials::Secret;
use weft::plugin_fixtures::{FixtureSet, Recorder, Redaction, Replayer};

use super::Global;
use super::plugin::{CheckArgs, load_pinned, prepare_check, print_results};
use crate::exit;

/// The check's parameters a replay runs again, stored in `fixtures.json`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RecordedCheck {
    settings: Vec<(String, String)>,
    resource: Option<String>,
    samples: Vec<(String, serde_json::Value)>,
    allow_irreversible: bool,
    page_size: Option<u32>,
}

/// The credential a replay hands the connector: the recording's was
/// removed, and the fixtures answer whatever is sent.
pub(crate) const REPLAY_KEY: &str = "weft_replay_key";

/// The header a manifest's auth scheme puts the credential in, if not
/// `Authorization` (which is never recorded).
pub(crate) fn auth_header(plugin: &weft::runtime::Plugin) -> Option<String> {
    match &plugin.manifest().auth {
        weft::connector::AuthScheme::Header(name) => Some(name.clone()),
        _ => None,
    }
}

/// `weft plugin record`.
pub(crate) async fn record(
    global: &Global,
    options: CheckArgs,
    out: &Path,
    redact: &[String],
) -> Result<ExitCode> {
    let mut prepared = prepare_check(global, &options).await?;
    let secret = prepared.target.secret.as_ref().map(Secret::expose);
    let redaction = || Redaction::new(redact, secret, auth_header(&prepared.plugin).as_deref());
    // The endpoint gets the samples as they are (a real vendor refuses an
    // email of `[redacted]`); the fixtures keep them redacted, so a replay
    // sends them redacted, which is what the recorded requests hold.
    let mut stored_samples = prepared.target.samples.clone();
    let sample_redaction = redaction();
    for (_, sample) in &mut stored_samples {
        sample_redaction.value(sample);
    }
    let recorder = Recorder::start(&prepared.target.base_url, redaction()).await?;
    let upstream = std::mem::replace(&mut prepared.target.base_url, recorder.base_url());
    let results = weft::conformance::check(&prepared.plugin, &prepared.target).await;
    let base_path = recorder.base_path().to_owned();
    let exchanges = recorder.finish();
    if let Some(running) = prepared.emulators {
        running.shutdown().await;
    }
    let results = results?;
    let target = &prepared.target;
    let check = RecordedCheck {
        settings: target.settings.clone(),
        resource: target.resource.clone(),
        samples: stored_samples,
        allow_irreversible: target.allow_irreversible,
        page_size: target.page_size,
    };
    let set = FixtureSet {
        plugin: options.plugin.clone(),
        plugin_sha256: prepared.plugin.digest().to_owned(),
        base_path,
        authenticated: target.secret.is_some(),
        redact: redact.to_vec(),
        check: serde_json::to_value(&check)?,
        exchanges: exchanges.len(),
    };
    weft::plugin_fixtures::write(out, &set, &exchanges)
        .with_context(|| format!("writing the fixtures to {}", out.display()))?;
    eprintln!(
        "recorded {} exchanges with {upstream} to {} (credentials removed{})",
        exchanges.len(),
        out.display(),
        if redact.is_empty() { String::new() } else { format!("; redacted {}", redact.join(", ")) }
    );
    print_results(&results, options.json)
}

/// `weft plugin test --replay DIR`.
pub(crate) async fn replay(
    global: &Global,
    plugin: &str,
    dir: &Path,
    sha256: Option<&str>,
    json: bool,
) -> Result<ExitCode> {
    let loaded = load_pinned(global, plugin, sha256).await?;
    let (set, exchanges) = weft::plugin_fixtures::read(dir)
        .with_context(|| format!("reading the fixtures in {}", dir.display()))?;
    let check: RecordedCheck = serde_json::from_value(set.check.clone())
        .with_context(|| format!("{}: the recorded check", dir.join("fixtures.json").display()))?;
    if loaded.digest() != set.plugin_sha256 {
        eprintln!(
            "note: the fixtures were recorded with {} (sha256 {}); replaying with sha256 {}",
            set.plugin,
            set.plugin_sha256,
            loaded.digest()
        );
    }
    let redaction = Redaction::new(&set.redact, None, auth_header(&loaded).as_deref());
    let replayer = Replayer::start(&set.base_path, exchanges, redaction).await?;
    let target = weft::conformance::CheckTarget {
        base_url: replayer.base_url(),
        secret: set.authenticated.then(|| Secret::new(REPLAY_KEY)),
        settings: check.settings,
        resource: check.resource,
        samples: check.samples,
        allow_irreversible: check.allow_irreversible,
        page_size: check.page_size,
    };
    let results = weft::conformance::check(&loaded, &target).await;
    let outcome = replayer.finish();
    let code = print_results(&results?, json)?;
    for miss in &outcome.misses {
        eprintln!("error: no fixture in {} holds the request {miss}", dir.display());
    }
    if !outcome.unused.is_empty() {
        eprintln!("note: {} recorded exchanges were not asked for", outcome.unused.len());
    }
    Ok(if outcome.misses.is_empty() { code } else { ExitCode::from(exit::RUN_FAILED) })
}
