//! The requests the connectors sent that the real vendors refuse (issue 13,
//! bugs 1–3), made by the real connectors against the emulators, which now
//! refuse what the vendors' descriptions refuse. Each test fails while its
//! connector bug is there: the emulator answers the vendor's 400 and the
//! upsert fails.

use std::sync::Arc;

use serde_json::{Value, json};
use weft::connector::{CallContext, ListRequest, UpsertAction, UpsertRequest};
use weft::credentials::Secret;
use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
use weft::runtime::{InstanceLimits, Plugin, RuntimeError};
use weft_sandbox::Sandbox;
use weft_sandbox::growpanel::DEMO_DATA_SOURCE;

use super::support::{TestResult, runtime, sandbox};

/// A built-in connector wired to its emulator, called directly, each
/// request sent once.
struct Connection {
    plugin: Plugin,
    http: Arc<ConnectionHttp>,
    settings: Vec<(String, String)>,
}

impl Connection {
    async fn open(sandbox: &Sandbox, vendor: &str, settings: &[(&str, &str)]) -> TestResult<Self> {
        let endpoint = sandbox
            .endpoints()
            .into_iter()
            .find(|e| e.vendor == vendor)
            .ok_or_else(|| format!("no {vendor} emulator"))?;
        let plugin = runtime(InstanceLimits::default())?
            .load(vendor, weft::builtin::component(vendor).ok_or("built in")?)
            .await?;
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            &endpoint.base_url,
            &[],
            Some((plugin.manifest().auth.clone(), Secret::new(endpoint.api_key))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?);
        let settings = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Ok(Connection { plugin, http, settings })
    }

    fn ctx(&self) -> CallContext {
        CallContext { base_url: self.http.base_url(), settings: self.settings.clone() }
    }

    async fn first_page(&self, resource: &str, page_size: u32) -> TestResult<Vec<Value>> {
        let request =
            ListRequest { resource: resource.into(), cursor: None, page_size, filter: None };
        let page = self.plugin.list(&self.http, self.ctx(), request).await?;
        Ok(page
            .records
            .iter()
            .map(|text| serde_json::from_str(text).unwrap_or(Value::Null))
            .collect())
    }

    async fn upsert(
        &self,
        resource: &str,
        record: &Value,
    ) -> Result<(UpsertAction, Value), RuntimeError> {
        // One key per record, short enough for Stripe's 255-character limit.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&record.to_string(), &mut hasher);
        let key = format!("fidelity-{resource}-{:016x}", std::hash::Hasher::finish(&hasher));
        let request = UpsertRequest {
            resource: resource.into(),
            record: record.to_string(),
            idempotency_key: key,
        };
        let outcome = self.plugin.upsert(&self.http, self.ctx(), request).await?;
        Ok((outcome.action, serde_json::from_str(&outcome.record).unwrap_or(Value::Null)))
    }
}

/// Every 4xx the emulator answered, as `METHOD path -> status body`.
fn refusals(log: &weft_sandbox::requests::RequestLog) -> Vec<String> {
    log.requests()
        .into_iter()
        .filter(|r| (400..500).contains(&r.status) && r.status != 404)
        .map(|r| format!("{} {} -> {} (sent {})", r.method, r.path, r.status, r.body))
        .collect()
}

/// Bug 1: a customer read from one Stripe account, written as a new one
/// (its id dropped, so it is created). Listed customers carry
/// `preferred_locales: []` and `invoice_settings` of nulls, which the
/// connector sent as `preferred_locales=` and `invoice_settings=`: Stripe
/// answers "Invalid array" / "Invalid hash".
#[tokio::test]
async fn a_stripe_customer_copied_from_a_listed_one_is_created_as_stripe_allows() -> TestResult {
    let sandbox = sandbox(3).await?;
    let stripe = Connection::open(&sandbox, "stripe", &[]).await?;
    let listed =
        stripe.first_page("customers", 1).await?.into_iter().next().ok_or("a seeded customer")?;
    assert_eq!(listed["preferred_locales"], json!([]), "the data that triggers it: {listed}");
    let mut copy = listed.clone();
    let fields = copy.as_object_mut().ok_or("an object")?;
    for server_owned in ["id", "object", "created", "livemode"] {
        fields.remove(server_owned);
    }
    fields.insert("email".into(), json!("copied@example.com"));

    let result = stripe.upsert("customers", &copy).await;
    let refused = refusals(&sandbox.stripe.emulator.requests());
    let (action, created) = result
        .map_err(|e| format!("the copy was refused: {e}; the emulator refused {refused:?}"))?;
    assert_eq!(action, UpsertAction::Created);
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!((&created["name"], &created["metadata"]), (&listed["name"], &listed["metadata"]));
    Ok(())
}

/// Bug 2: clearing a GrowPanel customer's name and email (a Stripe
/// customer without them, through the reconcile example) sent
/// `{"email": null, "name": null}`, which GrowPanel's schema refuses.
#[tokio::test]
async fn clearing_a_growpanel_name_and_email_sends_what_growpanel_allows() -> TestResult {
    let sandbox = sandbox(0).await?;
    sandbox.growpanel.emulator.insert_customer(json!({
        "id": "cus_clear", "name": "Before", "email": "before@example.com", "created_date": "2024-03-01",
        "country": "US", "data_source": DEMO_DATA_SOURCE,
    }));
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;
    let result = growpanel
        .upsert("customers", &json!({ "id": "cus_clear", "name": null, "email": null }))
        .await;
    let refused = refusals(&sandbox.growpanel.emulator.requests());
    result.map_err(|e| format!("the upsert failed: {e}; the emulator refused {refused:?}"))?;
    assert!(refused.is_empty(), "{refused:?}");
    let stored = sandbox.growpanel.emulator.customer("cus_clear").ok_or("kept")?;
    for field in ["name", "email"] {
        assert!(stored[field].is_null() || stored[field] == "", "{field} cleared: {stored}");
    }
    Ok(())
}

/// Bug 3: custom variables are strings at GrowPanel; numbers and booleans
/// were sent as JSON numbers and booleans, on update and on create.
#[tokio::test]
async fn growpanel_custom_variables_are_sent_as_strings() -> TestResult {
    let sandbox = sandbox(0).await?;
    sandbox.growpanel.emulator.insert_customer(json!({
        "id": "cus_vars", "name": "Vars", "email": "vars@example.com", "created_date": "2024-03-01",
        "country": "US", "data_source": DEMO_DATA_SOURCE, "custom_variables": { "plan": "pro" },
    }));
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;
    let updated = growpanel
        .upsert(
            "customers",
            &json!({ "id": "cus_vars", "custom_variables": { "seats": 5, "vip": true } }),
        )
        .await;
    let created = growpanel
        .upsert(
            "customers",
            &json!({ "id": "cus_new", "name": "New", "created_date": "2024-03-02", "country": "DE", "custom_variables": { "seats": 12 } }),
        )
        .await;
    let refused = refusals(&sandbox.growpanel.emulator.requests());
    updated.map_err(|e| format!("the update failed: {e}; the emulator refused {refused:?}"))?;
    created.map_err(|e| format!("the create failed: {e}; the emulator refused {refused:?}"))?;
    assert!(refused.is_empty(), "{refused:?}");
    let stored = sandbox.growpanel.emulator.customer("cus_vars").ok_or("kept")?;
    assert_eq!(stored["custom_variables"], json!({ "plan": "pro", "seats": "5", "vip": "true" }));
    let stored = sandbox.growpanel.emulator.customer("cus_new").ok_or("created")?;
    assert_eq!(stored["custom_variables"], json!({ "seats": "12" }));
    Ok(())
}
