//! The contract checks over the vendor scenarios: every workflow in
//! `workflows/` runs, as shipped, against the sandbox through the recorder
//! and (for Metronome, Baremetrics and GrowPanel) Prism, and every request
//! it sends and every answer it gets is judged against the vendor's
//! description, as the conformance kit's traffic is. So a workflow like the
//! Stripe-to-GrowPanel reconcile is checked end to end, not only the
//! connector calls the kit makes.
//!
//! ```text
//! workflow -> connector -> recorder -> prism --errors -> emulator   (metronome, baremetrics, growpanel)
//! workflow -> connector -> recorder -> emulator, judged by the Stripe extract
//! workflow -> connector -> recorder -> emulator, not judged          (stripe-scim: no description)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, Silent};
use weft::store::Status;
use weft::workflow::PluginRef;

use super::prism::{self, Prism};
use super::recorder::{Exchange, Recorder};
use super::stripe_spec::StripeSpec;
use super::{
    BAREMETRICS, GROWPANEL, METRONOME, PrismVendor, Report, endpoint, errata, prism_problems,
    prism_warnings, vendor_apis,
};
use crate::e2e::support::{Harness, TestResult, sandbox, workflow};

/// How one vendor's traffic is judged.
enum Judge {
    Prism(Prism),
    Stripe(Box<StripeSpec>),
    /// No description to judge by (Stripe SCIM), or Prism is not installed
    /// off CI: recorded, shown with `WEFT_CONTRACT_TRACE`, not judged.
    Unjudged(&'static str),
}

/// One vendor's route: the recorder the workflow's connections talk to,
/// and what judges the exchanges. Field order: the recorder goes before the
/// Prism it forwards to.
struct Route {
    vendor: String,
    recorder: Recorder,
    /// What to append to the recorder's URL: Metronome's `/v1`.
    server_path: &'static str,
    api_key: String,
    judge: Judge,
}

impl Route {
    fn problems(&self, exchange: &Exchange) -> Vec<String> {
        match &self.judge {
            Judge::Prism(_) => prism_problems(exchange),
            Judge::Stripe(spec) => spec.check(exchange),
            Judge::Unjudged(_) => Vec::new(),
        }
    }
}

fn prism_vendor(name: &str) -> Option<&'static PrismVendor> {
    [&METRONOME, &BAREMETRICS, &GROWPANEL].into_iter().find(|vendor| vendor.name == name)
}

/// The route for `vendor`: through Prism when the description is Prism's
/// to judge, else straight to the emulator.
async fn route(sandbox: &weft_sandbox::Sandbox, vendor: &str, dir: &Path) -> TestResult<Route> {
    let emulator = endpoint(sandbox, vendor)?;
    let (upstream, server_path, judge) = match (vendor, prism_vendor(vendor)) {
        ("stripe", _) => (
            emulator.base_url.clone(),
            "",
            Judge::Stripe(Box::new(StripeSpec::load(&vendor_apis().join("stripe/spec3.json"))?)),
        ),
        (_, Some(described)) => match prism::find()? {
            Some(prism_path) => {
                let spec =
                    errata::corrected(described.name, &vendor_apis().join(described.spec), dir)?;
                let prism = Prism::start(&prism_path, &spec, &emulator.base_url)?;
                (prism.base_url(), described.server_path, Judge::Prism(prism))
            }
            None => (
                emulator.base_url.clone(),
                described.server_path,
                Judge::Unjudged("Prism is not installed"),
            ),
        },
        _ => (
            emulator.base_url.clone(),
            "",
            Judge::Unjudged("no description in ../shared/vendor-apis"),
        ),
    };
    // Prism serves Metronome's `/v1/...` as `/...`; the emulator itself
    // wants the `/v1` its base URL already carries.
    let strip = if matches!(judge, Judge::Prism(_)) { server_path } else { "" };
    let upstream = if strip.is_empty() && !server_path.is_empty() {
        upstream.trim_end_matches(server_path).to_owned()
    } else {
        upstream
    };
    let recorder = Recorder::start(&upstream, strip).await?;
    Ok(Route { vendor: vendor.to_owned(), recorder, server_path, api_key: emulator.api_key, judge })
}

/// The shipped workflows, sorted.
fn scenarios() -> TestResult<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs the workflow `text` (from `name`) against `sandbox` through the
/// routes; returns what broke the contracts, and a failed run, as lines.
async fn run_scenario(
    sandbox: &weft_sandbox::Sandbox,
    name: &str,
    text: &str,
    dir: &Path,
) -> TestResult<Vec<String>> {
    let harness = Harness::new()?;
    // Outputs go to a temporary directory, not the repository.
    let loaded = workflow(harness.files.path(), text)?;
    let mut routes: BTreeMap<String, Route> = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    for connection in loaded.connections.values() {
        let PluginRef::Builtin(vendor) = &connection.plugin else {
            return Err(format!(
                "{name}: connection {} is not a built-in connector",
                connection.name
            )
            .into());
        };
        if !routes.contains_key(vendor) {
            let route = route(sandbox, vendor, dir).await?;
            route.recorder.begin(&format!("workflow {name}"));
            routes.insert(vendor.clone(), route);
        }
        let route = &routes[vendor];
        overrides.insert(
            connection.name.clone(),
            ConnectionOverride {
                base_url: format!("{}{}", route.recorder.base_url(), route.server_path),
                secret: Secret::new(route.api_key.clone()),
            },
        );
    }
    let summary = harness.executor.run(&loaded, &overrides, &Silent).await?;
    let mut failures = Vec::new();
    if summary.status != Status::Succeeded {
        failures.push(format!(
            "{name}: the run ended {:?}: {}",
            summary.status,
            summary.error.clone().unwrap_or_default()
        ));
    }
    for route in routes.values() {
        let exchanges = route.recorder.exchanges();
        if std::env::var_os("WEFT_CONTRACT_TRACE").is_some() {
            for exchange in &exchanges {
                eprintln!(
                    "{name} {} {} -> {} {}",
                    route.vendor,
                    exchange.line(),
                    exchange.status,
                    exchange.request_body
                );
            }
        }
        let before = failures.len();
        for exchange in &exchanges {
            for problem in route.problems(exchange) {
                failures.push(format!(
                    "{name}: {} {} -> {}: {problem}",
                    route.vendor,
                    exchange.line(),
                    exchange.status
                ));
            }
            for warning in prism_warnings(exchange) {
                eprintln!(
                    "note: {name}: {} {} -> {}: {warning}",
                    route.vendor, exchange.method, exchange.status
                );
            }
        }
        if let Judge::Prism(prism) = &route.judge
            && failures.len() > before
        {
            eprintln!("{name}: Prism's log for {} ends:\n{}", route.vendor, prism.log_tail());
        }
        match &route.judge {
            Judge::Unjudged(why) => eprintln!(
                "{name}: {} exchanges with {} recorded, not judged: {why}",
                exchanges.len(),
                route.vendor
            ),
            _ => eprintln!(
                "{name}: {} exchanges with {} judged against its description",
                exchanges.len(),
                route.vendor
            ),
        }
    }
    Ok(failures)
}

fn verdict(failures: Vec<String>) -> TestResult {
    if failures.is_empty() {
        return Ok(());
    }
    let report: Box<dyn std::error::Error> = Box::new(Report(format!(
        "the scenario workflows broke their vendors' contracts:\n  - {}",
        failures.join("\n  - ")
    )));
    Err(report)
}

#[tokio::test]
async fn every_scenario_workflow_sends_only_what_the_vendors_descriptions_allow() -> TestResult {
    let dir = tempfile::tempdir()?;
    let files = scenarios()?;
    assert!(files.len() >= 5, "{files:?}");
    let mut failures = Vec::new();
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Each scenario on fresh emulators, as `weft run --sandbox` gives it.
        let sandbox = sandbox(20).await?;
        failures.extend(
            run_scenario(&sandbox, &name, &std::fs::read_to_string(file)?, dir.path()).await?,
        );
        sandbox.shutdown().await;
    }
    verdict(failures)
}

/// The reconcile on data the demo seed does not have: a Stripe customer
/// with neither name nor email, whose GrowPanel row has both. Regression
/// (issue 13, bug 2): the GrowPanel connector cleared them with JSON
/// `null`, which GrowPanel's description refuses.
#[tokio::test]
async fn the_reconcile_scenario_clears_a_growpanel_name_only_in_ways_growpanels_description_allows()
-> TestResult {
    let dir = tempfile::tempdir()?;
    let sandbox = sandbox(3).await?;
    sandbox.stripe.emulator.insert_customer(serde_json::json!({ "id": "cus_Nameless", "created": 1_700_000_000, "metadata": { "plan": "pro" } }));
    sandbox.growpanel.emulator.insert_customer(serde_json::json!({
        "id": "cus_Nameless",
        "name": "Old Name",
        "email": "old@example.com",
        "created_date": "2023-11-14",
        "country": "US",
        "custom_variables": { "plan": "pro" },
        "data_source": weft_sandbox::growpanel::DEMO_DATA_SOURCE,
    }));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/stripe-export-reconcile.toml");
    let failures = run_scenario(
        &sandbox,
        "stripe-export-reconcile.toml",
        &std::fs::read_to_string(path)?,
        dir.path(),
    )
    .await?;
    sandbox.shutdown().await;
    verdict(failures)
}
