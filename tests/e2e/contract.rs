//! Contract checks: each connector's requests and each emulator's answers
//! judged against the vendor's own OpenAPI description.
//!
//! The real connectors run against the emulators through the host's HTTP
//! stack, with a validator in between.
//!
//! For Metronome, Baremetrics and GrowPanel, Prism runs as a validating
//! proxy (`prism proxy <spec> <emulator> --errors`) between the connector
//! and its emulator, so a request the spec does not allow, or an answer
//! that does not match it, comes back as Prism's error. A recorder in
//! front of Prism keeps every exchange and names the op, method and path.
//! Stripe's description is too big for Prism; `stripe_spec` checks the
//! same exchanges against a customers-only extract of it. Stripe SCIM has
//! no description in `../shared/vendor-apis`, so it is not checked here.
//!
//! ```text
//! connector (wasm) -> host http -> recorder -> prism --errors -> emulator
//! ```

mod errata;
mod prism;
mod recorder;
mod scenarios;
mod stripe_spec;

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Value, json};
use weft::conformance::{CheckTarget, Verdict, check};
use weft::connector::{
    BatchItem, CallContext, ListRequest, RemoveOutcome, UpsertAction, UpsertRequest,
};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
use weft::runtime::{InstanceLimits, Plugin};
use weft_sandbox::Sandbox;
use weft_sandbox::vendors::{connector_settings, sample_records};

use self::prism::Prism;
use self::recorder::{Exchange, Recorder};
use self::stripe_spec::StripeSpec;
use super::support::{TestResult, runtime, sandbox};

/// Where Prism's own errors live; its problem documents' `type` starts so.
const PRISM_ERRORS: &str = "https://stoplight.io/prism/errors#";

/// One vendor whose description Prism can serve.
struct PrismVendor {
    name: &'static str,
    /// The description, relative to `../shared/vendor-apis`.
    spec: &'static str,
    /// The part of the connector's base URL that is the description's
    /// server path: Prism serves Metronome's `/v1/...` as `/...`.
    server_path: &'static str,
}

const METRONOME: PrismVendor =
    PrismVendor { name: "metronome", spec: "metronome/openapi.json", server_path: "/v1" };
const BAREMETRICS: PrismVendor =
    PrismVendor { name: "baremetrics", spec: "baremetrics/openapi.yaml", server_path: "" };
const GROWPANEL: PrismVendor =
    PrismVendor { name: "growpanel", spec: "growpanel/openapi.json", server_path: "" };

/// A built-in connector talking to its emulator through the recorder and
/// Prism, with what went wrong collected rather than thrown, so one run
/// reports every violation.
struct Checked {
    vendor: &'static str,
    plugin: Plugin,
    http: Arc<ConnectionHttp>,
    settings: Vec<(String, String)>,
    recorder: Recorder,
    /// Ops that failed, with why.
    failures: Vec<String>,
    // Declared last: dropped (killed) after everything that talks to it.
    prism: Option<Prism>,
}

impl Checked {
    /// Starts Prism for `vendor` in front of its emulator and the recorder
    /// in front of Prism; `None` when Prism is not installed off CI.
    async fn through_prism(
        sandbox: &Sandbox,
        vendor: &PrismVendor,
        dir: &std::path::Path,
    ) -> TestResult<Option<Checked>> {
        Self::through_prism_to(endpoint(sandbox, vendor.name)?, vendor, dir).await
    }

    async fn through_prism_to(
        emulator: weft_sandbox::Endpoint,
        vendor: &PrismVendor,
        dir: &std::path::Path,
    ) -> TestResult<Option<Checked>> {
        let Some(prism_path) = prism::find()? else { return Ok(None) };
        let spec = errata::corrected(vendor.name, &vendor_apis().join(vendor.spec), dir)?;
        // The emulator's base URL already ends in the server path (Metronome's /v1).
        let prism = Prism::start(&prism_path, &spec, &emulator.base_url)?;
        let recorder = Recorder::start(&prism.base_url(), vendor.server_path).await?;
        let base_url = format!("{}{}", recorder.base_url(), vendor.server_path);
        let mut checked =
            Checked::open(vendor.name, &base_url, &emulator.api_key, recorder).await?;
        checked.prism = Some(prism);
        Ok(Some(checked))
    }

    async fn open(
        vendor: &'static str,
        base_url: &str,
        key: &str,
        recorder: Recorder,
    ) -> TestResult<Checked> {
        let runtime = runtime(InstanceLimits::default())?;
        let plugin =
            runtime.load(vendor, weft::builtin::component(vendor).ok_or("built in")?).await?;
        // Each request once: a violation must not be retried into a pass.
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            base_url,
            &[],
            Some((plugin.manifest().auth.clone(), Secret::new(key))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?);
        Ok(Checked {
            vendor,
            plugin,
            http,
            settings: connector_settings(vendor),
            recorder,
            failures: Vec::new(),
            prism: None,
        })
    }

    fn ctx(&self) -> CallContext {
        CallContext { base_url: self.http.base_url(), settings: self.settings.clone() }
    }

    fn failed(&mut self, op: &str, error: impl std::fmt::Display) {
        self.failures.push(format!("{} {op} failed: {error}", self.vendor));
    }

    /// Every record of `resource`, page by page; empty after a failure.
    async fn list_all(
        &mut self,
        resource: &str,
        page_size: u32,
        filter: Option<Value>,
    ) -> Vec<Value> {
        let op = format!("list {resource}");
        self.recorder.begin(&op);
        let mut records = Vec::new();
        let mut cursor = None;
        for _ in 0..1000 {
            let request = ListRequest {
                resource: resource.into(),
                cursor,
                page_size,
                filter: filter.as_ref().map(Value::to_string),
            };
            match self.plugin.list(&self.http, self.ctx(), request).await {
                Ok(page) => {
                    records.extend(
                        page.records
                            .iter()
                            .map(|text| serde_json::from_str(text).unwrap_or(Value::Null)),
                    );
                    match page.next_cursor {
                        Some(next) => cursor = Some(next),
                        None => return records,
                    }
                }
                Err(e) => {
                    self.failed(&op, e);
                    return records;
                }
            }
        }
        self.failed(&op, "did not end after 1000 pages");
        records
    }

    async fn get(&mut self, resource: &str, id: &str) -> Option<Value> {
        let op = format!("get {resource} {id}");
        self.recorder.begin(&op);
        match self.plugin.get(&self.http, self.ctx(), resource, id).await {
            Ok(record) => record.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)),
            Err(e) => {
                self.failed(&op, e);
                None
            }
        }
    }

    async fn upsert(&mut self, resource: &str, record: Value) -> Option<(UpsertAction, Value)> {
        let op = format!("upsert {resource} {record}");
        self.recorder.begin(&op);
        let request = UpsertRequest {
            resource: resource.into(),
            record: record.to_string(),
            idempotency_key: format!("contract-{record}"),
        };
        match self.plugin.upsert(&self.http, self.ctx(), request).await {
            Ok(outcome) => {
                Some((outcome.action, serde_json::from_str(&outcome.record).unwrap_or(Value::Null)))
            }
            Err(e) => {
                self.failed(&op, e);
                None
            }
        }
    }

    /// An upsert the vendor must refuse: the point is that its error
    /// answer matches the spec too.
    async fn upsert_refused(&mut self, resource: &str, record: Value) {
        let op = format!("upsert {resource} {record} (refused)");
        self.recorder.begin(&op);
        let request = UpsertRequest {
            resource: resource.into(),
            record: record.to_string(),
            idempotency_key: format!("contract-{record}"),
        };
        if let Ok(outcome) = self.plugin.upsert(&self.http, self.ctx(), request).await {
            self.failed(
                &op,
                format!("expected a refusal, got {:?} {}", outcome.action, outcome.record),
            );
        }
    }

    /// A batch upsert in which exactly the items at `refused` must fail.
    async fn upsert_batch(&mut self, resource: &str, records: &[Value], refused: &[usize]) {
        let op = format!("upsert-batch {resource} ({} records)", records.len());
        self.recorder.begin(&op);
        let items = records
            .iter()
            .map(|r| BatchItem {
                record: r.to_string(),
                idempotency_key: format!("contract-batch-{r}"),
            })
            .collect();
        match self.plugin.upsert_batch(&self.http, self.ctx(), resource, items).await {
            Ok(outcomes) => {
                for (index, outcome) in outcomes.into_iter().enumerate() {
                    match (outcome, refused.contains(&index)) {
                        (Ok(_), false) | (Err(_), true) => {}
                        (Ok(o), true) => self.failed(
                            &op,
                            format!("item {index} should have been refused, got {:?}", o.action),
                        ),
                        (Err(e), false) => self.failed(&op, format!("item {index}: {e}")),
                    }
                }
            }
            Err(e) => self.failed(&op, e),
        }
    }

    async fn remove(&mut self, resource: &str, id: &str) -> Option<RemoveOutcome> {
        let op = format!("remove {resource} {id}");
        self.recorder.begin(&op);
        match self.plugin.remove(&self.http, self.ctx(), resource, id).await {
            Ok(outcome) => Some(outcome),
            Err(e) => {
                self.failed(&op, e);
                None
            }
        }
    }

    /// The conformance kit through the same recorder (its own connection,
    /// with the host's retries): pagination, absent ids, idempotent
    /// upserts, remove, and a wrong credential.
    async fn conformance(&mut self, key: &str, page_size: Option<u32>) {
        self.recorder.begin("conformance kit");
        let target = CheckTarget {
            base_url: self.http.base_url(),
            secret: Some(Secret::new(key)),
            settings: self.settings.clone(),
            resource: None,
            samples: sample_records(self.vendor),
            allow_irreversible: true,
            page_size,
        };
        match check(&self.plugin, &target).await {
            Ok(results) => {
                for result in results.iter().filter(|r| r.verdict == Verdict::Fail) {
                    self.failures.push(format!(
                        "{} conformance kit, {} {}: {}",
                        self.vendor, result.resource, result.check, result.detail
                    ));
                }
            }
            Err(e) => self.failed("conformance kit", e),
        }
    }

    /// Passes when `judge` (Prism's answers, or the Stripe extract) found
    /// nothing wrong in any exchange and every op worked; otherwise fails
    /// naming vendor, op, method, path and what the spec said. `methods`
    /// must all have been exercised.
    fn verdict(&self, methods: &[&str], judge: impl Fn(&Exchange) -> Vec<String>) -> TestResult {
        self.judged(methods, judge, true)
    }

    fn judged(
        &self,
        methods: &[&str],
        judge: impl Fn(&Exchange) -> Vec<String>,
        ops_must_work: bool,
    ) -> TestResult {
        let exchanges = self.recorder.exchanges();
        if std::env::var_os("WEFT_CONTRACT_TRACE").is_some() {
            for exchange in &exchanges {
                eprintln!(
                    "{} [{}] {} -> {} {}",
                    self.vendor,
                    exchange.op,
                    exchange.line(),
                    exchange.status,
                    exchange.request_body
                );
            }
        }
        let mut problems = BTreeSet::new();
        let mut warnings = BTreeSet::new();
        for exchange in &exchanges {
            for problem in judge(exchange) {
                problems.insert(format!(
                    "{} {} -> {} (during `{}`): {problem}",
                    self.vendor,
                    exchange.line(),
                    exchange.status,
                    exchange.op
                ));
            }
            for warning in prism_warnings(exchange) {
                warnings.insert(format!(
                    "{} {} -> {}: {warning}",
                    self.vendor, exchange.method, exchange.status
                ));
            }
        }
        for warning in &warnings {
            // Statuses the description leaves out (401 for a wrong key, 404
            // for an unknown id): worth seeing, not a contract breach.
            eprintln!("note: {warning}");
        }
        let seen: BTreeSet<&str> = exchanges.iter().map(|e| e.method.as_str()).collect();
        let missing: Vec<&&str> = methods.iter().filter(|m| !seen.contains(**m)).collect();
        let mut report: Vec<String> = problems.into_iter().collect();
        // An op that failed because of a violation is already reported.
        if report.is_empty() && ops_must_work {
            report.extend(self.failures.iter().cloned());
        }
        if !missing.is_empty() {
            report.push(format!("{}: the checks never sent {missing:?}; they must exercise every method the connector uses", self.vendor));
        }
        if report.is_empty() {
            eprintln!(
                "{}: {} exchanges checked against the spec, no violation",
                self.vendor,
                exchanges.len()
            );
            return Ok(());
        }
        let tail = self
            .prism
            .as_ref()
            .map(|p| format!("\n\nPrism's log ends:\n{}", p.log_tail()))
            .unwrap_or_default();
        Err(Box::new(Report(format!(
            "{} contract violations:\n  - {}{tail}",
            self.vendor,
            report.join("\n  - ")
        ))))
    }
}

/// A many-line failure report: the test harness prints an error's `Debug`,
/// which for a plain string would escape every newline.
struct Report(String);

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Report {}

/// The vendors' OpenAPI descriptions: `WEFT_VENDOR_APIS` when set, else
/// `../shared/vendor-apis` beside the repository, as on CI, else beside the
/// repository this one was cloned from (a check-out cloned into a temporary
/// directory has no `../shared` of its own).
pub(super) fn vendor_apis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("WEFT_VENDOR_APIS") {
        return path.into();
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let beside = repo.join("../shared/vendor-apis");
    if beside.is_dir() {
        return beside;
    }
    let origin = std::process::Command::new("git")
        .args(["remote", "get-url", "origin"])
        .current_dir(repo)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match origin.map(|origin| origin.join("../shared/vendor-apis")) {
        Some(from_origin) if from_origin.is_dir() => from_origin,
        _ => beside,
    }
}

fn endpoint(sandbox: &Sandbox, vendor: &str) -> TestResult<weft_sandbox::Endpoint> {
    Ok(sandbox
        .endpoints()
        .into_iter()
        .find(|e| e.vendor == vendor)
        .ok_or_else(|| format!("no {vendor} emulator"))?)
}

/// Prism's error document in an answer, as "what the spec said".
fn prism_problem(exchange: &Exchange) -> Option<String> {
    if !exchange.response_type.starts_with("application/problem+json") {
        return None;
    }
    let body: Value = serde_json::from_str(&exchange.response_body).ok()?;
    let kind = body["type"].as_str()?.strip_prefix(PRISM_ERRORS)?;
    let mut text = format!(
        "Prism answered {} {kind}: {}",
        exchange.status,
        body["title"].as_str().unwrap_or_default()
    );
    match body["validation"].as_array() {
        Some(validations) if !validations.is_empty() => {
            for validation in validations {
                let mut location: Vec<String> = validation["location"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|part| part.as_str().map_or_else(|| part.to_string(), str::to_owned))
                    .collect();
                // Prism names a request's parts bare (`body`, `query`).
                if location.first().is_none_or(|first| first != "request" && first != "response") {
                    location.insert(0, "request".into());
                }
                text.push_str(&format!(
                    "\n      {}: {}",
                    location.join("."),
                    validation["message"].as_str().unwrap_or_default()
                ));
            }
        }
        _ => text.push_str(&format!("\n      {}", body["detail"].as_str().unwrap_or_default())),
    }
    if !exchange.request_body.is_empty() {
        text.push_str(&format!("\n      request body: {}", exchange.request_body));
    }
    Some(text)
}

fn prism_problems(exchange: &Exchange) -> Vec<String> {
    prism_problem(exchange).into_iter().collect()
}

/// The non-error entries of Prism's `sl-violations` header.
fn prism_warnings(exchange: &Exchange) -> Vec<String> {
    let Some(header) = &exchange.violations else { return Vec::new() };
    let Ok(Value::Array(entries)) = serde_json::from_str::<Value>(header) else {
        return vec![header.clone()];
    };
    entries
        .iter()
        .filter(|entry| entry["severity"] != "Error")
        .map(|entry| {
            format!(
                "{} {}",
                entry["severity"].as_str().unwrap_or_default(),
                entry["message"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn text<'a>(record: &'a Value, field: &str) -> &'a str {
    record[field].as_str().unwrap_or_default()
}

#[tokio::test]
async fn metronome_connector_and_emulator_agree_with_metronomes_openapi_description() -> TestResult
{
    let sandbox = sandbox(12).await?;
    let dir = tempfile::tempdir()?;
    let Some(mut metronome) = Checked::through_prism(&sandbox, &METRONOME, dir.path()).await?
    else {
        return Ok(());
    };

    let customers = metronome.list_all("customers", 5, None).await;
    let seeded = customers.first().map(|c| text(c, "id").to_owned()).unwrap_or_default();
    metronome.get("customers", &seeded).await;
    metronome.get("customers", "00000000-0000-4000-8000-000000000000").await;
    metronome.list_all("customers", 5, Some(json!({ "only_archived": true }))).await;
    metronome.list_all("customer-plans", 5, Some(json!({ "customer_id": seeded }))).await;

    let created = metronome
        .upsert("customers", json!({ "name": "Contract Check", "external_id": "contract-1", "ingest_aliases": ["contract-1", "contract@example.com"] }))
        .await;
    let id = created.as_ref().map(|(_, record)| text(record, "id").to_owned()).unwrap_or_default();
    metronome
        .list_all("customers", 5, Some(json!({ "ingest_alias": "contract@example.com" })))
        .await;
    // setName, setIngestAliases and updateConfig, one after the other.
    metronome
        .upsert(
            "customers",
            json!({ "id": id, "name": "Contract Check Renamed", "ingest_aliases": ["contract-1", "contract-2"], "customer_config": { "salesforce_account_id": "0015000000XyZ12" } }),
        )
        .await;
    metronome.remove("customers", &id).await;
    metronome.remove("customers", &id).await;

    metronome.conformance(weft_sandbox::metronome::SANDBOX_API_KEY, Some(5)).await;
    metronome.verdict(&["GET", "POST"], prism_problems)
}

#[tokio::test]
async fn baremetrics_connector_and_emulator_agree_with_baremetrics_openapi_description()
-> TestResult {
    let sandbox = sandbox(12).await?;
    let dir = tempfile::tempdir()?;
    let Some(mut baremetrics) = Checked::through_prism(&sandbox, &BAREMETRICS, dir.path()).await?
    else {
        return Ok(());
    };

    baremetrics.list_all("sources", 10, None).await;
    let customers = baremetrics.list_all("customers", 4, None).await;
    let seeded = customers.first().map(|c| text(c, "oid").to_owned()).unwrap_or_default();
    baremetrics.get("customers", &seeded).await;
    baremetrics.get("customers", "contract-missing").await;
    baremetrics.list_all("customers", 4, Some(json!({ "search": "example" }))).await;
    baremetrics.list_all("subscriptions", 4, None).await;
    baremetrics.list_all("subscriptions", 4, Some(json!({ "customer_oid": seeded }))).await;

    // Created with only a name, so email and notes are absent; then a
    // merged PUT; then a PUT that clears the notes.
    baremetrics.upsert("customers", json!({ "oid": "contract-1", "name": "Contract Check" })).await;
    baremetrics.upsert("customers", json!({ "oid": "contract-1", "email": "contract@example.com", "notes": "from the contract checks" })).await;
    baremetrics.upsert("customers", json!({ "oid": "contract-1", "notes": null })).await;
    // Attribute keys must pre-exist: a 400 whose body the spec describes.
    baremetrics
        .upsert_refused(
            "customers",
            json!({ "oid": "contract-1", "attributes": { "no_such_field": "x" } }),
        )
        .await;
    baremetrics.remove("customers", "contract-1").await;
    baremetrics.remove("customers", "contract-1").await;
    // `created` as the Unix timestamp the description's text, examples and
    // guide say, not its schema's date-time string: the extract's erratum,
    // applied to Prism's copy too.
    baremetrics
        .upsert(
            "customers",
            json!({ "oid": "contract-2", "name": "Created Then", "created": 1_700_000_000 }),
        )
        .await;
    baremetrics.remove("customers", "contract-2").await;

    baremetrics.conformance(weft_sandbox::baremetrics::SANDBOX_API_KEY, Some(4)).await;
    baremetrics.verdict(&["GET", "POST", "PUT", "DELETE"], prism_problems)
}

#[tokio::test]
async fn growpanel_connector_and_emulator_agree_with_growpanels_openapi_description() -> TestResult
{
    let sandbox = sandbox(12).await?;
    let dir = tempfile::tempdir()?;
    let Some(mut growpanel) = Checked::through_prism(&sandbox, &GROWPANEL, dir.path()).await?
    else {
        return Ok(());
    };

    let customers = growpanel.list_all("customers", 100, None).await;
    let seeded = customers.first().map(|c| text(c, "id").to_owned()).unwrap_or_default();
    growpanel.get("customers", &seeded).await;
    growpanel.get("customers", "contract-missing").await;

    growpanel
        .upsert("customers", json!({ "id": "contract-1", "name": "Contract Check", "email": "contract@example.com", "created_date": "2026-01-15", "country": "US" }))
        .await;
    // Exists: a PUT of the updatable fields.
    growpanel.upsert("customers", json!({ "id": "contract-1", "name": "Contract Check Renamed", "custom_variables": { "plan": "pro" } })).await;
    // The third row is well-formed but invalid: GrowPanel answers it with
    // `export_status: "error"` inside a 200.
    let batch = [
        json!({ "id": "contract-2", "name": "Batch One", "email": "one@example.com", "created_date": "2026-02-01", "country": "DE" }),
        json!({ "id": "contract-3", "name": "Batch Two", "email": "two@example.com", "created_date": "2026-02-02", "country": "FR" }),
        json!({ "id": "contract-4", "name": "Batch Bad", "email": "bad@example.com", "created_date": "2026-02-03", "country": "France" }),
    ];
    growpanel.upsert_batch("customers", &batch, &[2]).await;
    for id in ["contract-1", "contract-2", "contract-3"] {
        growpanel.remove("customers", id).await;
    }
    growpanel.remove("customers", "contract-1").await;

    growpanel.conformance(weft_sandbox::growpanel::SANDBOX_API_KEY, None).await;
    growpanel.verdict(&["GET", "POST", "PUT", "DELETE"], prism_problems)
}

#[tokio::test]
async fn stripe_connector_and_emulator_agree_with_a_customers_extract_of_stripes_openapi_description()
-> TestResult {
    let spec = StripeSpec::load(&vendor_apis().join("stripe/spec3.json"))?;
    let sandbox = sandbox(12).await?;
    let emulator = endpoint(&sandbox, "stripe")?;
    let recorder = Recorder::start(&emulator.base_url, "").await?;
    let mut stripe =
        Checked::open("stripe", &recorder.base_url(), &emulator.api_key, recorder).await?;

    let customers = stripe.list_all("customers", 5, None).await;
    let seeded = customers.first().cloned().unwrap_or_default();
    stripe.list_all("customers", 5, Some(json!({ "email": text(&seeded, "email") }))).await;
    stripe.get("customers", text(&seeded, "id")).await;
    stripe.get("customers", "cus_ContractMissing").await;

    // Nested and typed form fields: metadata[k], address[k], list items,
    // an integer.
    let created = stripe
        .upsert(
            "customers",
            json!({
                "email": "contract@example.com",
                "name": "Contract Check",
                "phone": "+15550100",
                "balance": 100,
                "preferred_locales": ["en", "fr"],
                "address": { "city": "Paris", "country": "FR", "line1": "1 rue de la Paix" },
                "metadata": { "source": "weft", "run": "contract" }
            }),
        )
        .await;
    let id = created.as_ref().map(|(_, record)| text(record, "id").to_owned()).unwrap_or_default();
    // By id: a POST of the changes, one of them clearing a field.
    stripe.upsert("customers", json!({ "id": id, "name": "Contract Check Renamed", "phone": null, "metadata": { "tier": "gold" } })).await;
    // By email: looked up, then changed.
    stripe
        .upsert(
            "customers",
            json!({ "email": "contract@example.com", "description": "matched by email" }),
        )
        .await;
    stripe.remove("customers", &id).await;
    stripe.get("customers", &id).await;
    stripe.remove("customers", &id).await;

    stripe.conformance(weft_sandbox::stripe::SANDBOX_API_KEY, Some(5)).await;
    eprintln!("stripe: the extract holds {} schemas", spec.schema_count());
    stripe.verdict(&["GET", "POST", "DELETE"], |exchange| spec.check(exchange))
}

#[test]
fn a_prism_problem_names_the_location_and_what_the_spec_said() {
    let exchange = Exchange {
        op: "upsert customers".into(),
        method: "POST".into(),
        path: "/v1/customers".into(),
        query: String::new(),
        request_type: "application/json".into(),
        request_body: r#"{"nam":"x"}"#.into(),
        status: 422,
        response_type: "application/problem+json".into(),
        response_body: json!({
            "type": "https://stoplight.io/prism/errors#UNPROCESSABLE_ENTITY",
            "title": "Invalid request",
            "status": 422,
            "validation": [{ "location": ["body"], "severity": "Error", "code": "required", "message": "must have required property 'name'" }]
        })
        .to_string(),
        violations: None,
    };
    let problem = prism_problem(&exchange).unwrap_or_default();
    assert!(problem.contains("422 UNPROCESSABLE_ENTITY"), "{problem}");
    assert!(problem.contains("request.body: must have required property 'name'"), "{problem}");
    assert!(problem.contains(r#"{"nam":"x"}"#), "{problem}");

    let vendor_error = Exchange {
        response_type: "application/json".into(),
        response_body: r#"{"message":"Not found"}"#.into(),
        ..exchange
    };
    assert_eq!(prism_problem(&vendor_error), None, "the vendor's own errors are not Prism's");
}

/// Injected 429s and 500s are answers too: GrowPanel's description gives
/// both an `{"error"}` body, Stripe's every error its `error` object.
#[tokio::test]
async fn injected_429_and_500_answers_match_the_descriptions_error_schemas() -> TestResult {
    use weft_sandbox::growpanel::{GrowPanelConfig, GrowPanelEmulator};
    use weft_sandbox::limits::FaultConfig;
    use weft_sandbox::server::{LOOPBACK_ANY_PORT, serve};
    use weft_sandbox::stripe::{StripeConfig, StripeEmulator};

    let spec = StripeSpec::load(&vendor_apis().join("stripe/spec3.json"))?;
    for faults in [
        FaultConfig { rate_429: 1.0, ..FaultConfig::default() },
        FaultConfig { rate_500: 1.0, ..FaultConfig::default() },
    ] {
        let stripe = StripeEmulator::new(StripeConfig {
            api_keys: vec![weft_sandbox::stripe::SANDBOX_API_KEY.into()],
            faults,
            ..StripeConfig::default()
        });
        let server = serve(stripe.router(), LOOPBACK_ANY_PORT).await?;
        let recorder = Recorder::start(&server.base_url(), "").await?;
        let mut checked = Checked::open(
            "stripe",
            &recorder.base_url(),
            weft_sandbox::stripe::SANDBOX_API_KEY,
            recorder,
        )
        .await?;
        checked.list_all("customers", 5, None).await;
        checked.judged(&["GET"], |exchange| spec.check(exchange), false)?;
        assert!(!checked.failures.is_empty(), "stripe: the injected fault must fail the list");

        let growpanel =
            GrowPanelEmulator::new(GrowPanelConfig { faults, ..GrowPanelConfig::default() });
        let server = serve(growpanel.router(), LOOPBACK_ANY_PORT).await?;
        let dir = tempfile::tempdir()?;
        let endpoint = weft_sandbox::Endpoint {
            vendor: "growpanel",
            base_url: server.base_url(),
            api_key: weft_sandbox::growpanel::SANDBOX_API_KEY.into(),
        };
        let Some(mut checked) = Checked::through_prism_to(endpoint, &GROWPANEL, dir.path()).await?
        else {
            return Ok(());
        };
        checked.list_all("customers", 5, None).await;
        checked.judged(&["GET"], prism_problems, false)?;
        assert!(!checked.failures.is_empty(), "growpanel: the injected fault must fail the list");
    }
    Ok(())
}

/// The checks can fail: Prism in front of a fake Metronome that answers a
/// customer without its required fields, sent a create without a name.
#[tokio::test]
async fn prism_refuses_a_request_and_an_answer_that_metronomes_description_does_not_allow()
-> TestResult {
    let Some(prism_path) = prism::find()? else { return Ok(()) };
    let wrong = axum::Router::new().route(
        "/v1/customers/{id}",
        axum::routing::get(|| async {
            axum::Json(json!({ "data": { "id": "d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc" } }))
        }),
    );
    let upstream =
        weft_sandbox::server::serve(wrong, weft_sandbox::server::LOOPBACK_ANY_PORT).await?;
    let dir = tempfile::tempdir()?;
    let spec = errata::corrected("metronome", &vendor_apis().join(METRONOME.spec), dir.path())?;
    let prism = Prism::start(&prism_path, &spec, &format!("{}/v1", upstream.base_url()))?;
    let recorder = Recorder::start(&prism.base_url(), "/v1").await?;
    let client = reqwest::Client::builder().no_proxy().build()?;

    recorder.begin("a create without a name");
    client
        .post(format!("{}/v1/customers", recorder.base_url()))
        .bearer_auth("k")
        .header("content-type", "application/json")
        .body(json!({ "external_id": "x" }).to_string())
        .send()
        .await?;
    recorder.begin("a get answered without name, external_id, ...");
    client
        .get(format!("{}/v1/customers/d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc", recorder.base_url()))
        .bearer_auth("k")
        .send()
        .await?;

    let exchanges = recorder.exchanges();
    let [create, get] = exchanges.as_slice() else {
        return Err(format!("two exchanges expected: {exchanges:?}").into());
    };
    let refused = prism_problem(create)
        .ok_or_else(|| format!("Prism let a create without a name through: {create:?}"))?;
    assert!(refused.contains("request.body") && refused.contains("name"), "{refused}");
    let flagged = prism_problem(get)
        .ok_or_else(|| format!("Prism let an incomplete customer through: {get:?}"))?;
    assert!(flagged.contains("VIOLATIONS") && flagged.contains("response.body.data"), "{flagged}");
    Ok(())
}

/// The Stripe extract refuses what Stripe would: unknown and mistyped
/// parameters, unknown paths, and answers missing or inventing fields.
#[test]
fn the_stripe_extract_flags_requests_and_answers_outside_the_description() -> TestResult {
    let spec = StripeSpec::load(&vendor_apis().join("stripe/spec3.json"))?;
    let customer = json!({ "id": "cus_1", "object": "customer", "created": 1, "livemode": false });
    let exchange =
        |method: &str, path: &str, query: &str, body: &str, status: u16, answer: Value| Exchange {
            op: "test".into(),
            method: method.into(),
            path: path.into(),
            query: query.into(),
            request_type: if body.is_empty() {
                String::new()
            } else {
                "application/x-www-form-urlencoded".into()
            },
            request_body: body.into(),
            status,
            response_type: "application/json".into(),
            response_body: answer.to_string(),
            violations: None,
        };

    let fine = spec.check(&exchange(
        "POST",
        "/v1/customers",
        "",
        "email=a%40b.c&metadata[k]=v&balance=10&preferred_locales[0]=en",
        200,
        customer.clone(),
    ));
    assert!(fine.is_empty(), "{fine:?}");

    let bad_form = spec.check(&exchange(
        "POST",
        "/v1/customers",
        "",
        "nam=x&balance=ten&address[floor]=2",
        200,
        customer.clone(),
    ));
    let text = bad_form.join("\n");
    assert!(text.contains("nam"), "unknown parameter: {text}");
    assert!(text.contains("balance") || text.contains("\"ten\""), "mistyped integer: {text}");
    assert!(text.contains("floor"), "unknown nested parameter: {text}");

    let bad_query = spec.check(&exchange(
        "GET",
        "/v1/customers",
        "limit=5&colour=red",
        "",
        200,
        json!({ "object": "list", "data": [], "has_more": false, "url": "/v1/customers" }),
    ));
    assert!(bad_query.iter().any(|p| p.contains("colour")), "{bad_query:?}");

    let no_path = spec.check(&exchange(
        "DELETE",
        "/v1/customers/cus_1/discount/extra",
        "",
        "",
        200,
        json!({}),
    ));
    assert!(no_path.iter().any(|p| p.contains("no operation")), "{no_path:?}");

    let mut invented = customer.clone();
    invented["colour"] = json!("red");
    let answers = spec.check(&exchange("GET", "/v1/customers/cus_1", "", "", 200, invented));
    assert!(answers.iter().any(|p| p.contains("response 200")), "an invented field: {answers:?}");
    let missing = spec.check(&exchange(
        "GET",
        "/v1/customers/cus_1",
        "",
        "",
        200,
        json!({ "id": "cus_1", "object": "customer" }),
    ));
    assert!(!missing.is_empty(), "a customer without created and livemode");
    let error = spec.check(&exchange(
        "GET",
        "/v1/customers/cus_x",
        "",
        "",
        404,
        json!({ "message": "No such customer" }),
    ));
    assert!(
        error.iter().any(|p| p.contains("response 404")),
        "errors are wrapped in `error`: {error:?}"
    );
    Ok(())
}
