//! `weft plugin inspect|list|check|new|wit`: a connector plugin's manifest,
//! the built-in connectors, the conformance suite against an endpoint, and
//! (in `plugin_new`) a new connector project and the contract's WIT.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use weft::connector::Manifest;
use weft::credentials::Secret;

use super::{Global, wasm_runtime};
use crate::exit;

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// What an operator trusts when running a plugin: its digest (the
    /// sha256 a connection pins), vendor and version, the hosts it may
    /// reach, its resources and ops (irreversible ones marked), settings,
    /// and the host interfaces it imports.
    Inspect {
        /// A built-in connector name or a path to a .wasm component.
        plugin: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the built-in connectors.
    List,
    /// Run the conformance suite against a live endpoint (normally an
    /// emulator): pagination, absent reads, idempotent upserts, removes,
    /// typed errors, and a wrong credential.
    Check(CheckArgs),
    /// Write a new connector project (Rust, Python or JavaScript) that
    /// builds with one command and passes `weft plugin check --sandbox`
    /// as it is: the WIT, pinned tools, helpers, native tests with a fake
    /// `http.send`, an example workflow and a README.
    New {
        /// The connector's name (lower-case letters, digits, hyphens).
        name: String,
        /// Its language.
        #[arg(long, value_enum)]
        lang: super::plugin_new::Lang,
        /// Where to write it (default: ./NAME); must be empty or absent.
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Run the conformance suite against a live endpoint (as `check` does)
    /// through a loopback proxy that writes each HTTP exchange to DIR, with
    /// credentials removed and the fields named by --redact redacted.
    Record {
        #[command(flatten)]
        check: CheckArgs,
        /// The fixture directory to write (new, empty, or an earlier
        /// recording, whose exchanges are replaced).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// A JSON field to redact in request and response bodies, dotted,
        /// wherever it starts (`email`: every field named email;
        /// `customer.address`: every address under a customer); repeatable.
        #[arg(long = "redact", value_name = "FIELD.PATH")]
        redact: Vec<String>,
    },
    /// Run the conformance suite offline against fixtures written by
    /// `weft plugin record`; fails naming any request they do not hold.
    Test {
        /// A built-in connector name or a path to a .wasm component.
        plugin: String,
        /// The fixture directory.
        #[arg(long, value_name = "DIR")]
        replay: std::path::PathBuf,
        /// Refuse a .wasm file whose SHA-256 is not this.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the connector contract's WIT to DIR/connector.wit:
    /// weft:connector@0.1.0 (world `connector`, exported interface
    /// `plugin`), or with `--version 0.2.0` that world plus the optional
    /// `lookup` interface, with 0.1.0 under DIR/deps/.
    Wit {
        /// The directory to write it to.
        #[arg(long, default_value = "wit")]
        out: std::path::PathBuf,
        /// The contract version: 0.1.0 (what every host serves) or 0.2.0.
        #[arg(long, default_value = "0.1.0", value_parser = ["0.1.0", "0.2.0"])]
        version: String,
    },
}

// No `///` here: clap would take it for the command's about, which the
// `PluginCommand::Check` variant gives.
#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// A built-in connector name or a path to a .wasm component.
    pub(crate) plugin: String,
    /// Base URL of the endpoint under test.
    #[arg(long, required_unless_present = "sandbox")]
    pub(crate) base_url: Option<String>,
    /// Credential for the endpoint: env:NAME or file:PATH.
    #[arg(long)]
    pub(crate) credentials: Option<String>,
    /// Check against the built-in emulator of this connector's vendor
    /// (its manifest's `vendor`).
    #[arg(long, conflicts_with_all = ["base_url", "credentials"])]
    pub(crate) sandbox: bool,
    /// With --sandbox: the emulator to check against, when the vendor
    /// has several (`stripe`, `stripe-scim`) or the manifest names
    /// another vendor.
    #[arg(long, requires = "sandbox", value_name = "NAME")]
    pub(crate) emulator: Option<String>,
    /// Only this resource.
    #[arg(long)]
    pub(crate) resource: Option<String>,
    /// A connection setting, NAME=VALUE; repeatable.
    #[arg(long = "setting", value_parser = parse_pair)]
    pub(crate) settings: Vec<(String, String)>,
    /// A record the write checks may create, RESOURCE=JSON; repeatable.
    #[arg(long = "sample", value_parser = parse_pair)]
    pub(crate) samples: Vec<(String, String)>,
    /// Let the checks run irreversible ops (remove); only against an emulator.
    #[arg(long)]
    pub(crate) allow_irreversible: bool,
    /// Page size of the pagination check; each resource's default otherwise.
    #[arg(long)]
    pub(crate) page_size: Option<u32>,
    /// Refuse to check a .wasm file whose SHA-256 is not this (as a
    /// connection's `plugin = { path, sha256 }` pins it).
    #[arg(long, value_name = "HEX")]
    sha256: Option<String>,
    /// Print the results as JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// `weft plugin …`.
pub(crate) async fn plugin(global: &Global, command: PluginCommand) -> Result<ExitCode> {
    match command {
        PluginCommand::Inspect { plugin, json } => inspect(global, &plugin, json).await,
        PluginCommand::List => {
            for name in weft::builtin::names() {
                outln!("{name}")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Check(options) => check_plugin(global, options).await,
        PluginCommand::Record { check, out, redact } => {
            super::plugin_record::record(global, check, &out, &redact).await
        }
        PluginCommand::Test { plugin, replay, sha256, json } => {
            super::plugin_record::replay(global, &plugin, &replay, sha256.as_deref(), json).await
        }
        PluginCommand::New { name, lang, dir } => {
            super::plugin_new::new_project(&name, lang, dir.as_deref())
        }
        PluginCommand::Wit { out, version } => super::plugin_new::write_wit(&out, &version),
    }
}

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {text:?}"))
}

async fn load_plugin(global: &Global, plugin: &str) -> Result<weft::runtime::Plugin> {
    let runtime = wasm_runtime(global)?;
    Ok(if plugin.ends_with(".wasm") {
        runtime.load_file(Path::new(plugin)).await?
    } else {
        let bytes = weft::builtin::component(plugin).with_context(|| {
            format!(
                "no built-in plugin named {plugin:?} (built in: {})",
                weft::builtin::names().collect::<Vec<_>>().join(", ")
            )
        })?;
        runtime.load(plugin, bytes).await?
    })
}

/// A pinned plugin's file differs from its pin: the file, and both digests.
#[derive(Debug, thiserror::Error)]
#[error("plugin {file} has sha256 {actual}, but {expected} is pinned; refused before any request")]
pub(crate) struct PinMismatch {
    file: String,
    expected: String,
    actual: String,
}

/// Loads `plugin`, refusing it when `pin` is given and its digest differs.
pub(crate) async fn load_pinned(
    global: &Global,
    plugin: &str,
    pin: Option<&str>,
) -> Result<weft::runtime::Plugin> {
    let Some(pin) = pin else { return load_plugin(global, plugin).await };
    if !plugin.ends_with(".wasm") {
        anyhow::bail!(
            "--sha256 pins a .wasm file; {plugin:?} is a built-in connector, pinned by weft's version"
        );
    }
    let wasm = std::fs::read(plugin).with_context(|| format!("cannot read {plugin}"))?;
    let actual = weft::runtime::digest(&wasm);
    let expected = pin.to_ascii_lowercase();
    if actual != expected {
        return Err(PinMismatch { file: plugin.to_owned(), expected, actual }.into());
    }
    Ok(wasm_runtime(global)?.load(plugin, &wasm).await?)
}

/// The plugin and the endpoint a check runs against, with the emulators
/// that serve it when `--sandbox` started them.
pub(crate) struct Prepared {
    pub(crate) plugin: weft::runtime::Plugin,
    pub(crate) target: weft::conformance::CheckTarget,
    pub(crate) emulators: Option<weft_sandbox::Sandbox>,
}

pub(crate) async fn prepare_check(global: &Global, options: &CheckArgs) -> Result<Prepared> {
    let plugin = options.plugin.as_str();
    let loaded = load_pinned(global, plugin, options.sha256.as_deref()).await?;
    let mut samples = Vec::new();
    for (resource, text) in &options.samples {
        let value: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("--sample {resource}=…: not JSON"))?;
        samples.push((resource.clone(), value));
    }
    let mut emulators = None;
    let mut settings = options.settings.clone();
    let (base_url, secret) = if options.sandbox {
        let running = weft_sandbox::Sandbox::start(weft_sandbox::SandboxOptions {
            seed: 25,
            ..Default::default()
        })
        .await?;
        let endpoints = running.endpoints();
        // By the manifest's vendor, so a third-party connector of a vendor
        // the sandbox emulates is checked against that emulator.
        let endpoint =
            weft::emulators::choose(&endpoints, loaded.manifest(), options.emulator.as_deref())?
                .clone();
        // The samples and settings are the emulator's API's, whoever wrote
        // the connector.
        if samples.is_empty() {
            samples = weft_sandbox::vendors::sample_records(endpoint.vendor);
        }
        if options.settings.is_empty() {
            settings = weft_sandbox::vendors::connector_settings(endpoint.vendor);
        }
        emulators = Some(running);
        (endpoint.base_url, Some(Secret::new(endpoint.api_key)))
    } else {
        let secret = match &options.credentials {
            Some(reference) => {
                Some(weft::credentials::CredentialSource::parse(reference)?.resolve()?)
            }
            None => None,
        };
        (options.base_url.clone().context("--base-url is required without --sandbox")?, secret)
    };
    let target = weft::conformance::CheckTarget {
        base_url,
        secret,
        settings,
        resource: options.resource.clone(),
        samples,
        allow_irreversible: options.allow_irreversible || options.sandbox,
        page_size: options.page_size,
    };
    Ok(Prepared { plugin: loaded, target, emulators })
}

async fn check_plugin(global: &Global, options: CheckArgs) -> Result<ExitCode> {
    let prepared = prepare_check(global, &options).await?;
    let results = weft::conformance::check(&prepared.plugin, &prepared.target).await?;
    if let Some(running) = prepared.emulators {
        running.shutdown().await;
    }
    print_results(&results, options.json)
}

/// Prints a check's results; exit 0 when none failed.
pub(crate) fn print_results(
    results: &[weft::conformance::CheckResult],
    json: bool,
) -> Result<ExitCode> {
    use weft::conformance::Verdict;
    let failed = results.iter().filter(|r| r.verdict == Verdict::Fail).count();
    if json {
        outln!("{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        for r in results {
            let mark = match r.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            outln!("{mark}  {:<14} {:<44} {}", r.resource, r.check, r.detail)?;
        }
        outln!(
            "{} passed, {failed} failed, {} skipped",
            results.iter().filter(|r| r.verdict == Verdict::Pass).count(),
            results.iter().filter(|r| r.verdict == Verdict::Skip).count()
        )?;
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(exit::RUN_FAILED) })
}

async fn inspect(global: &Global, plugin: &str, json: bool) -> Result<ExitCode> {
    let loaded = load_plugin(global, plugin).await?;
    let manifest = loaded.manifest();
    let trust = weft::plugin_trust::Capabilities::of(&loaded);
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "sha256": loaded.digest(),
                "manifest": manifest,
                "lookup": loaded.offers_lookup(),
                "capabilities": trust,
            }))?
        )?;
    } else {
        print_manifest(manifest, loaded.digest())?;
        outln!(
            "lookup: {}",
            if loaded.offers_lookup() {
                "yes (weft:connector@0.2.0: a dry run plans what an upsert without an id matches)"
            } else {
                "no (built for weft:connector@0.1.0)"
            }
        )?;
        print_capabilities(&trust, plugin, loaded.digest())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_capabilities(
    trust: &weft::plugin_trust::Capabilities,
    plugin: &str,
    digest: &str,
) -> std::io::Result<()> {
    let or_none =
        |list: &[String]| if list.is_empty() { "none".to_owned() } else { list.join(", ") };
    outln!()?;
    outln!("what running it trusts:")?;
    outln!("  hosts         {}", or_none(&trust.hosts))?;
    outln!("  irreversible  {}", or_none(&trust.irreversible))?;
    outln!("  settings      {}", or_none(&trust.settings))?;
    // One a line: a component imports a dozen or more interfaces.
    outln!("  imports       {}", trust.imports.first().map_or("none", String::as_str))?;
    for import in trust.imports.iter().skip(1) {
        outln!("                {import}")?;
    }
    if plugin.ends_with(".wasm") {
        outln!()?;
        outln!("pin it:  plugin = {{ path = {plugin:?}, sha256 = \"{digest}\" }}")?;
    }
    Ok(())
}

fn print_manifest(m: &Manifest, digest: &str) -> std::io::Result<()> {
    outln!("{} {} — {}", m.name, m.version, m.vendor)?;
    outln!("{}", m.description)?;
    outln!()?;
    outln!("base url:    {}", m.default_base_url)?;
    outln!(
        "auth:        {}",
        match &m.auth {
            weft::connector::AuthScheme::None => "none".to_owned(),
            weft::connector::AuthScheme::Bearer => "bearer token".to_owned(),
            weft::connector::AuthScheme::BasicKeyAsUser => "basic, key as user".to_owned(),
            weft::connector::AuthScheme::Header(h) => format!("header {h}"),
        }
    )?;
    if !m.extra_hosts.is_empty() {
        outln!("extra hosts: {}", m.extra_hosts.join(", "))?;
    }
    outln!("sha256:      {digest}")?;
    outln!()?;
    outln!("resources:")?;
    for r in &m.resources {
        let ops: Vec<String> = r
            .ops
            .iter()
            .map(|op| {
                if r.is_irreversible(*op) { format!("{op} (irreversible)") } else { op.to_string() }
            })
            .collect();
        outln!("  {:<16} {}", r.name, ops.join(", "))?;
        outln!(
            "  {:<16} id field {}, page size {} (max {})",
            "",
            r.id_field,
            r.default_page_size,
            r.max_page_size
        )?;
        if !r.description.is_empty() {
            outln!("  {:<16} {}", "", r.description)?;
        }
    }
    if !m.rate_limits.is_empty() {
        outln!()?;
        outln!("published rate limits:")?;
        for l in &m.rate_limits {
            let prefix =
                l.credential_prefix.as_deref().map(|p| format!(" (keys {p}…)")).unwrap_or_default();
            outln!("  {:?}: {} per {}s{prefix}", l.method_class, l.requests, l.per_seconds)?;
        }
    }
    if !m.settings.is_empty() {
        outln!()?;
        outln!("settings:")?;
        for s in &m.settings {
            outln!(
                "  {:<16} {}{}",
                s.name,
                s.description,
                if s.required { " (required)" } else { "" }
            )?;
        }
    }
    Ok(())
}
