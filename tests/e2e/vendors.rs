//! Each vendor's quirks, one test apiece: the real built-in connector
//! against the real emulator, judged by what the emulator holds afterwards
//! and by the requests it was sent.

use std::sync::Arc;

use serde_json::{Value, json};
use weft::connector::{
    BatchItem, CallContext, ConnectorError, ListRequest, RemoveOutcome, UpsertAction, UpsertRequest,
};
use weft::credentials::Secret;
use weft::executor::ConnectionOverride;
use weft::http::{ConnectionHttp, HttpLimits, SendOnce};
use weft::runtime::{InstanceLimits, Plugin, RuntimeError};
use weft::store::Status;
use weft_sandbox::Sandbox;
use weft_sandbox::baremetrics::{NATIVE_SOURCE_ID, STRIPE_SOURCE_ID};
use weft_sandbox::growpanel::DEMO_DATA_SOURCE;
use weft_sandbox::requests::RecordedRequest;

use super::support::{Harness, TestResult, runtime, sandbox};

/// One built-in connector wired to its emulator, called directly.
struct Connection {
    plugin: Plugin,
    http: Arc<ConnectionHttp>,
    settings: Vec<(String, String)>,
}

impl Connection {
    /// The built-in `vendor` connector pointed at the sandbox's `vendor`
    /// emulator with that emulator's key.
    async fn open(sandbox: &Sandbox, vendor: &str, settings: &[(&str, &str)]) -> TestResult<Self> {
        let endpoint = endpoint(sandbox, vendor)?;
        Self::open_with_key(vendor, &endpoint.base_url, &endpoint.api_key, settings).await
    }

    async fn open_with_key(
        vendor: &str,
        base_url: &str,
        key: &str,
        settings: &[(&str, &str)],
    ) -> TestResult<Self> {
        let runtime = runtime(InstanceLimits::default())?;
        let plugin =
            runtime.load(vendor, weft::builtin::component(vendor).ok_or("built in")?).await?;
        let http = Arc::new(ConnectionHttp::new(
            weft::http::shared_client(),
            base_url,
            &[],
            Some((plugin.manifest().auth.clone(), Secret::new(key))),
            HttpLimits::default(),
            Arc::new(SendOnce),
        )?);
        let settings = settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Ok(Connection { plugin, http, settings })
    }

    fn ctx(&self) -> CallContext {
        CallContext { base_url: self.http.base_url(), settings: self.settings.clone() }
    }

    /// Every record of `resource`, page after page.
    async fn list_all(
        &self,
        resource: &str,
        page_size: u32,
        filter: Option<Value>,
    ) -> Result<Vec<Value>, RuntimeError> {
        let mut records = Vec::new();
        let mut cursor = None;
        loop {
            let request = ListRequest {
                resource: resource.into(),
                cursor,
                page_size,
                filter: filter.as_ref().map(Value::to_string),
            };
            let page = self.plugin.list(&self.http, self.ctx(), request).await?;
            records.extend(
                page.records.iter().map(|text| serde_json::from_str(text).unwrap_or(Value::Null)),
            );
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(records),
            }
        }
    }

    async fn get(&self, resource: &str, id: &str) -> Result<Option<Value>, RuntimeError> {
        let record = self.plugin.get(&self.http, self.ctx(), resource, id).await?;
        Ok(record.map(|text| serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    async fn upsert(
        &self,
        resource: &str,
        record: Value,
    ) -> Result<(UpsertAction, Value), RuntimeError> {
        // Distinct per record, and short: Stripe takes keys of at most 255
        // characters, and a whole customer read back is longer.
        let idempotency_key = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            record.to_string().hash(&mut hasher);
            format!("vendors-{:016x}", hasher.finish())
        };
        let request = UpsertRequest {
            resource: resource.into(),
            record: record.to_string(),
            idempotency_key,
        };
        let outcome = self.plugin.upsert(&self.http, self.ctx(), request).await?;
        Ok((outcome.action, serde_json::from_str(&outcome.record).unwrap_or(Value::Null)))
    }

    async fn remove(&self, resource: &str, id: &str) -> Result<RemoveOutcome, RuntimeError> {
        self.plugin.remove(&self.http, self.ctx(), resource, id).await
    }
}

fn endpoint(sandbox: &Sandbox, vendor: &str) -> TestResult<weft_sandbox::Endpoint> {
    Ok(sandbox
        .endpoints()
        .into_iter()
        .find(|e| e.vendor == vendor)
        .ok_or_else(|| format!("no {vendor} emulator"))?)
}

/// The connector's typed error, or a test failure saying what came instead.
fn connector_error<T: std::fmt::Debug>(
    result: Result<T, RuntimeError>,
) -> TestResult<ConnectorError> {
    match result {
        Ok(value) => Err(format!("expected a connector error, got {value:?}").into()),
        Err(error) => Ok(error
            .connector_error()
            .cloned()
            .ok_or_else(|| format!("expected a connector error, got {error}"))?),
    }
}

fn is_write(request: &RecordedRequest) -> bool {
    matches!(request.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
}

fn string_field<'a>(record: &'a Value, field: &str) -> TestResult<&'a str> {
    Ok(record[field].as_str().ok_or_else(|| format!("{field} is not a string in {record}"))?)
}

// Baremetrics

#[tokio::test]
async fn baremetrics_upsert_merges_before_put_so_omitted_fields_survive() -> TestResult {
    let sandbox = sandbox(0).await?;
    let baremetrics = Connection::open(&sandbox, "baremetrics", &[]).await?;
    let (created, _) = baremetrics
        .upsert("customers", json!({ "oid": "cust_merge", "name": "Ada Lovelace", "email": "ada@example.com", "notes": "VIP since 1843" }))
        .await?;
    assert_eq!(created, UpsertAction::Created);

    let (updated, _) =
        baremetrics.upsert("customers", json!({ "oid": "cust_merge", "name": "Ada King" })).await?;
    assert_eq!(updated, UpsertAction::Updated);

    let stored = sandbox
        .baremetrics
        .emulator
        .customer(NATIVE_SOURCE_ID, "cust_merge")
        .ok_or("the customer exists")?;
    assert_eq!(stored["name"], "Ada King");
    assert_eq!(
        stored["email"], "ada@example.com",
        "PUT replaces, so the connector must have sent the email back: {stored}"
    );
    assert_eq!(stored["notes"], "VIP since 1843", "{stored}");

    let puts: Vec<_> = sandbox
        .baremetrics
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1);
    let body: Value = serde_json::from_str(&puts[0].body)?;
    assert_eq!(body["email"], "ada@example.com", "{body}");
    assert_eq!(body["notes"], "VIP since 1843", "{body}");
    Ok(())
}

#[tokio::test]
async fn baremetrics_writes_to_a_stripe_synced_source_fail_as_unsupported_and_write_nothing()
-> TestResult {
    // Seeds alternate sources: customer 1 is in the Stripe-synced one.
    let sandbox = sandbox(2).await?;
    let synced = "cus_Stripe00001";
    let before = sandbox.baremetrics.emulator.customer(STRIPE_SOURCE_ID, synced).ok_or("seeded")?;
    let baremetrics =
        Connection::open(&sandbox, "baremetrics", &[("source_id", STRIPE_SOURCE_ID)]).await?;

    let upsert = connector_error(
        baremetrics.upsert("customers", json!({ "oid": synced, "name": "Renamed" })).await,
    )?;
    assert!(matches!(upsert, ConnectorError::Unsupported(_)), "{upsert:?}");
    assert!(upsert.to_string().contains("stripe"), "names the provider: {upsert}");

    let new = connector_error(
        baremetrics.upsert("customers", json!({ "oid": "cust_new", "name": "New" })).await,
    )?;
    assert!(matches!(new, ConnectorError::Unsupported(_)), "{new:?}");

    let remove = connector_error(baremetrics.remove("customers", synced).await)?;
    assert!(matches!(remove, ConnectorError::Unsupported(_)), "{remove:?}");

    assert_eq!(
        sandbox.baremetrics.emulator.requests().count_where(is_write),
        0,
        "no PUT, POST or DELETE was sent"
    );
    assert_eq!(sandbox.baremetrics.emulator.customer(STRIPE_SOURCE_ID, synced), Some(before));
    assert_eq!(sandbox.baremetrics.emulator.customer(STRIPE_SOURCE_ID, "cust_new"), None);
    // Reads of the synced source still work.
    assert_eq!(baremetrics.list_all("customers", 50, None).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn baremetrics_without_source_id_discovers_the_native_source() -> TestResult {
    let sandbox = sandbox(4).await?;
    let baremetrics = Connection::open(&sandbox, "baremetrics", &[]).await?;

    let listed = baremetrics.list_all("customers", 50, None).await?;
    let oids: Vec<&str> = listed.iter().filter_map(|c| c["oid"].as_str()).collect();
    assert_eq!(oids, ["cust_00000", "cust_00002"], "only the native source's customers");
    assert!(listed.iter().all(|c| c["source_id"] == NATIVE_SOURCE_ID), "{listed:?}");

    let (action, _) =
        baremetrics.upsert("customers", json!({ "oid": "cust_found", "name": "Found" })).await?;
    assert_eq!(action, UpsertAction::Created);
    assert!(sandbox.baremetrics.emulator.customer(NATIVE_SOURCE_ID, "cust_found").is_some());
    assert!(sandbox.baremetrics.emulator.customer(STRIPE_SOURCE_ID, "cust_found").is_none());

    let log = sandbox.baremetrics.emulator.requests();
    assert!(
        log.count_where(|r| r.method == "GET" && r.path == "/v1/sources") >= 1,
        "the source was discovered"
    );
    assert_eq!(
        log.count_where(|r| r.path.contains(STRIPE_SOURCE_ID)),
        0,
        "the Stripe source was never touched"
    );
    assert_eq!(
        log.count_where(
            |r| r.method == "POST" && r.path == format!("/v1/{NATIVE_SOURCE_ID}/customers")
        ),
        1
    );
    Ok(())
}

#[tokio::test]
async fn baremetrics_delete_is_permanent_and_a_second_remove_is_already_absent() -> TestResult {
    let sandbox = sandbox(2).await?;
    let baremetrics = Connection::open(&sandbox, "baremetrics", &[]).await?;
    assert!(
        baremetrics
            .plugin
            .manifest()
            .resource("customers")
            .is_some_and(|r| r.is_irreversible(weft::connector::Op::Remove))
    );

    assert_eq!(baremetrics.remove("customers", "cust_00000").await?, RemoveOutcome::Removed);
    assert_eq!(sandbox.baremetrics.emulator.customer(NATIVE_SOURCE_ID, "cust_00000"), None);
    let subscriptions = baremetrics
        .list_all("subscriptions", 50, Some(json!({ "customer_oid": "cust_00000" })))
        .await?;
    assert!(subscriptions.is_empty(), "the subscriptions went with it: {subscriptions:?}");
    assert_eq!(baremetrics.get("customers", "cust_00000").await?, None);
    assert_eq!(baremetrics.list_all("customers", 50, None).await?.len(), 0);

    assert_eq!(baremetrics.remove("customers", "cust_00000").await?, RemoveOutcome::AlreadyAbsent);
    let deletes = sandbox.baremetrics.emulator.requests().count_where(|r| r.method == "DELETE");
    assert_eq!(deletes, 1, "the second remove found nothing to delete");
    assert_eq!(
        sandbox.baremetrics.emulator.customer_count(),
        1,
        "the Stripe-synced customer is untouched"
    );
    Ok(())
}

#[tokio::test]
async fn baremetrics_lists_every_customer_across_pages_of_per_page() -> TestResult {
    // 50 seeds, alternately native and Stripe-synced: 25 native.
    let sandbox = sandbox(50).await?;
    let baremetrics = Connection::open(&sandbox, "baremetrics", &[]).await?;
    let listed = baremetrics.list_all("customers", 10, None).await?;
    let mut oids: Vec<String> = listed
        .iter()
        .map(|c| string_field(c, "oid").map(str::to_owned))
        .collect::<TestResult<_>>()?;
    assert_eq!(oids.len(), 25);
    oids.sort();
    oids.dedup();
    assert_eq!(oids.len(), 25, "every customer exactly once");
    let mut expected: Vec<String> = sandbox
        .baremetrics
        .emulator
        .customers(NATIVE_SOURCE_ID)
        .iter()
        .map(|c| string_field(c, "oid").map(str::to_owned))
        .collect::<TestResult<_>>()?;
    expected.sort();
    assert_eq!(oids, expected);

    let pages: Vec<RecordedRequest> = sandbox
        .baremetrics
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == format!("/v1/{NATIVE_SOURCE_ID}/customers"))
        .collect();
    assert_eq!(pages.len(), 3, "10 + 10 + 5");
    assert!(pages.iter().all(|r| r.query.contains("per_page=10")), "{pages:?}");
    Ok(())
}

// Metronome

#[tokio::test]
async fn metronome_an_ingest_alias_of_another_customer_conflicts_before_any_write() -> TestResult {
    let sandbox = sandbox(3).await?;
    let customers = sandbox.metronome.emulator.customers();
    let (first, second) = (&customers[0], &customers[1]);
    let first_id = string_field(first, "id")?;
    let first_alias = first["ingest_aliases"][0].as_str().ok_or("alias")?;
    let second_alias = second["ingest_aliases"][0].as_str().ok_or("alias")?;
    let metronome = Connection::open(&sandbox, "metronome", &[]).await?;

    // An update that would take another customer's alias, along with a new name.
    let update = metronome
        .upsert("customers", json!({ "id": first_id, "name": "Renamed", "ingest_aliases": [first_alias, second_alias] }))
        .await;
    let error = connector_error(update)?;
    assert!(matches!(error, ConnectorError::Conflict(_)), "{error:?}");
    assert!(error.to_string().contains(second_alias), "names the alias: {error}");

    // A create whose alias is held elsewhere.
    let create = metronome
        .upsert("customers", json!({ "external_id": "brand-new", "name": "New", "ingest_aliases": ["brand-new", second_alias] }))
        .await;
    let error = connector_error(create)?;
    assert!(matches!(error, ConnectorError::Conflict(_)), "{error:?}");

    assert_eq!(
        sandbox.metronome.emulator.requests().count_where(|r| r.method == "POST"),
        0,
        "nothing was written"
    );
    assert_eq!(
        sandbox.metronome.emulator.customer(first_id).as_ref(),
        Some(first),
        "the name was not changed either"
    );
    assert_eq!(sandbox.metronome.emulator.customer_count(), 3);
    Ok(())
}

#[tokio::test]
async fn metronome_upsert_by_external_id_calls_only_the_endpoints_that_differ() -> TestResult {
    let sandbox = sandbox(3).await?;
    let customer = sandbox.metronome.emulator.customers()[0].clone();
    let id = string_field(&customer, "id")?;
    let external_id = string_field(&customer, "external_id")?;
    let metronome = Connection::open(&sandbox, "metronome", &[]).await?;

    let (action, record) = metronome
        .upsert("customers", json!({ "external_id": external_id, "name": "Renamed Co", "ingest_aliases": customer["ingest_aliases"] }))
        .await?;
    assert_eq!(action, UpsertAction::Updated);
    assert_eq!(record["id"], id);

    let writes: Vec<String> = sandbox
        .metronome
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.path)
        .collect();
    assert_eq!(
        writes,
        [format!("/v1/customers/{id}/setName")],
        "only setName: aliases and config are unchanged"
    );
    let stored = sandbox.metronome.emulator.customer(id).ok_or("still there")?;
    assert_eq!(stored["name"], "Renamed Co");
    assert_eq!(stored["ingest_aliases"], customer["ingest_aliases"]);
    assert_eq!(stored["customer_config"], customer["customer_config"]);

    // The same desired record again sends nothing.
    sandbox.metronome.emulator.requests().clear();
    let (again, _) = metronome
        .upsert("customers", json!({ "external_id": external_id, "name": "Renamed Co" }))
        .await?;
    assert_eq!(again, UpsertAction::Unchanged);
    assert_eq!(sandbox.metronome.emulator.requests().count_where(|r| r.method == "POST"), 0);
    assert_eq!(sandbox.metronome.emulator.customer_count(), 3, "matched, not created");
    Ok(())
}

#[tokio::test]
async fn metronome_remove_archives_and_the_customer_leaves_the_default_list() -> TestResult {
    let sandbox = sandbox(3).await?;
    let id = string_field(&sandbox.metronome.emulator.customers()[0], "id")?.to_owned();
    let metronome = Connection::open(&sandbox, "metronome", &[]).await?;

    assert_eq!(metronome.remove("customers", &id).await?, RemoveOutcome::Removed);
    assert_eq!(sandbox.metronome.emulator.is_archived(&id), Some(true), "archived, not deleted");
    assert_eq!(sandbox.metronome.emulator.customer_count(), 2);
    let archives: Vec<RecordedRequest> = sandbox
        .metronome
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers/archive")
        .collect();
    assert_eq!(archives.len(), 1);
    assert_eq!(serde_json::from_str::<Value>(&archives[0].body)?["id"], id.as_str());
    assert_eq!(sandbox.metronome.emulator.requests().count_where(|r| r.method == "DELETE"), 0);

    let listed = metronome.list_all("customers", 100, None).await?;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|c| c["id"] != id.as_str()), "{listed:?}");
    let archived =
        metronome.list_all("customers", 100, Some(json!({ "only_archived": true }))).await?;
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0]["id"], id.as_str());

    assert_eq!(
        metronome.get("customers", &id).await?,
        None,
        "an archived customer reads as absent"
    );
    assert_eq!(metronome.remove("customers", &id).await?, RemoveOutcome::AlreadyAbsent);
    Ok(())
}

#[tokio::test]
async fn metronome_customer_plans_show_whether_a_churned_customer_has_an_active_plan() -> TestResult
{
    // Seeds cycle: 0 has an active plan, 1 a plan that ended (churned), 2 none.
    let sandbox = sandbox(3).await?;
    let customers = sandbox.metronome.emulator.customers();
    let ids: Vec<&str> =
        customers.iter().map(|c| string_field(c, "id")).collect::<TestResult<_>>()?;
    let with_active = sandbox.metronome.emulator.customers_with_active_plan();
    assert_eq!(with_active, [ids[0].to_owned()]);
    let metronome = Connection::open(&sandbox, "metronome", &[]).await?;

    let active =
        metronome.list_all("customer-plans", 100, Some(json!({ "customer_id": ids[0] }))).await?;
    assert_eq!(active.len(), 1);
    assert!(active[0].get("ending_before").is_none_or(Value::is_null), "{active:?}");

    let churned =
        metronome.list_all("customer-plans", 100, Some(json!({ "customer_id": ids[1] }))).await?;
    assert_eq!(churned.len(), 1);
    let ended = string_field(&churned[0], "ending_before")?;
    assert!(ended.starts_with("2024-"), "the churned customer's plan ended in 2024: {ended}");

    let never =
        metronome.list_all("customer-plans", 100, Some(json!({ "customer_id": ids[2] }))).await?;
    assert!(never.is_empty(), "{never:?}");

    // Without a filter: every live customer's plans, each naming its customer.
    let all = metronome.list_all("customer-plans", 100, None).await?;
    let owners: Vec<&str> = all.iter().filter_map(|p| p["customer_id"].as_str()).collect();
    assert_eq!(all.len(), 2);
    assert!(owners.contains(&ids[0]) && owners.contains(&ids[1]), "{all:?}");
    Ok(())
}

// GrowPanel

fn growpanel_row(id: &str, name: &str) -> Value {
    json!({
        "id": id,
        "name": name,
        "email": format!("{id}@example.com"),
        "created_date": "2024-03-01T00:00:00.000Z",
        "country": "US",
    })
}

#[tokio::test]
async fn growpanel_create_missing_a_required_field_is_invalid_input_before_sending() -> TestResult {
    let sandbox = sandbox(0).await?;
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;
    let result = growpanel
        .upsert(
            "customers",
            json!({ "id": "cus_partial", "name": "Partial", "email": "p@example.com" }),
        )
        .await;
    let error = connector_error(result)?;
    assert!(matches!(error, ConnectorError::InvalidInput(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("`created_date`") && message.contains("`country`"),
        "names the fields: {message}"
    );
    assert!(!message.contains("`data_source`"), "data_source comes from the setting: {message}");

    assert_eq!(
        sandbox.growpanel.emulator.requests().count_where(|r| r.method == "POST"),
        0,
        "nothing was sent"
    );
    assert_eq!(sandbox.growpanel.emulator.customer_count(), 0);
    Ok(())
}

#[tokio::test]
async fn growpanel_batch_upsert_sends_one_array_post() -> TestResult {
    let sandbox = sandbox(0).await?;
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;
    let mut items: Vec<BatchItem> = ["cus_a", "cus_b", "cus_c"]
        .iter()
        .map(|id| BatchItem {
            record: growpanel_row(id, "Batch").to_string(),
            idempotency_key: format!("batch-{id}"),
        })
        .collect();
    // One row missing its country: refused without being sent.
    items.push(BatchItem { record: json!({ "id": "cus_bad", "name": "Bad", "email": "b@example.com", "created_date": "2024-03-01" }).to_string(), idempotency_key: "batch-bad".into() });

    let outcomes =
        growpanel.plugin.upsert_batch(&growpanel.http, growpanel.ctx(), "customers", items).await?;
    assert_eq!(outcomes.len(), 4);
    for outcome in &outcomes[..3] {
        assert!(matches!(outcome, Ok(o) if o.action == UpsertAction::Created), "{outcome:?}");
    }
    assert!(
        matches!(&outcomes[3], Err(ConnectorError::InvalidInput(m)) if m.contains("country")),
        "{:?}",
        outcomes[3]
    );

    let posts: Vec<RecordedRequest> = sandbox
        .growpanel
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "one bulk request");
    let body: Value = serde_json::from_str(&posts[0].body)?;
    let rows = body.as_array().ok_or("the body is an array")?;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r["data_source"] == DEMO_DATA_SOURCE), "{body}");
    assert_eq!(sandbox.growpanel.emulator.customer_count(), 3);
    assert!(sandbox.growpanel.emulator.customer("cus_bad").is_none());
    Ok(())
}

#[tokio::test]
async fn growpanel_update_puts_only_name_email_and_custom_variables() -> TestResult {
    let sandbox = sandbox(0).await?;
    let mut existing = growpanel_row("cus_put", "Before");
    existing["data_source"] = DEMO_DATA_SOURCE.into();
    existing["custom_variables"] = json!({ "tier": "gold" });
    sandbox.growpanel.emulator.insert_customer(existing);
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;

    let desired = json!({ "id": "cus_put", "name": "After", "email": "cus_put@example.com", "country": "DE", "custom_variables": { "seats": "5" } });
    let (action, record) = growpanel.upsert("customers", desired).await?;
    assert_eq!(action, UpsertAction::Updated);
    assert_eq!(record["name"], "After");

    let puts: Vec<RecordedRequest> = sandbox
        .growpanel
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].path, "/data/customers/cus_put");
    let body: Value = serde_json::from_str(&puts[0].body)?;
    let mut keys: Vec<&str> =
        body.as_object().ok_or("an object")?.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["custom_variables", "name"], "only what differs, and never country: {body}");
    assert_eq!(
        body["custom_variables"],
        json!({ "tier": "gold", "seats": "5" }),
        "laid over GrowPanel's map"
    );

    let stored = sandbox.growpanel.emulator.customer("cus_put").ok_or("still there")?;
    assert_eq!(stored["name"], "After");
    assert_eq!(stored["country"], "US", "PUT cannot change the country");
    assert_eq!(stored["custom_variables"], json!({ "tier": "gold", "seats": "5" }));
    assert_eq!(sandbox.growpanel.emulator.requests().count_where(|r| r.method == "POST"), 0);
    Ok(())
}

#[tokio::test]
async fn growpanel_list_needs_the_source_setting() -> TestResult {
    let sandbox = sandbox(2).await?;

    // Through a workflow: refused at validation, before anything runs.
    let harness = Harness::new()?;
    let endpoint = endpoint(&sandbox, "growpanel")?;
    let overrides = std::collections::BTreeMap::from([(
        "growpanel".to_owned(),
        ConnectionOverride { base_url: endpoint.base_url, secret: Secret::new(endpoint.api_key) },
    )]);
    let text = "[workflow]\nname = \"growpanel-test\"\n\n[connections.growpanel]\nplugin = \"growpanel\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\n\n[[step]]\nid = \"all\"\nlist = \"growpanel.customers\"\n";
    let error =
        harness.run(text, &overrides).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("must set settings.source"), "{error}");
    assert!(error.contains("workflow.toml:"), "points at the connection: {error}");
    assert!(sandbox.growpanel.emulator.requests().is_empty(), "nothing was sent");

    // With the setting, the same workflow reads the data source.
    let with_source = text.replace("credentials = \"env:WEFT_TEST_UNUSED\"\n", &format!("credentials = \"env:WEFT_TEST_UNUSED\"\nsettings = {{ source = \"{DEMO_DATA_SOURCE}\" }}\n"));
    let summary = harness.run(&with_source, &overrides).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.read, 2);
    assert!(
        sandbox
            .growpanel
            .emulator
            .requests()
            .requests()
            .iter()
            .all(|r| r.query.contains(&format!("source={DEMO_DATA_SOURCE}")))
    );

    // Called directly without it: the connector refuses before sending.
    sandbox.growpanel.emulator.requests().clear();
    let growpanel = Connection::open(&sandbox, "growpanel", &[]).await?;
    let error = connector_error(growpanel.list_all("customers", 10, None).await)?;
    assert!(matches!(error, ConnectorError::InvalidInput(_)), "{error:?}");
    assert!(error.to_string().contains("`source` setting"), "{error}");
    assert!(sandbox.growpanel.emulator.requests().is_empty(), "nothing was sent");
    Ok(())
}

// Stripe SCIM

#[tokio::test]
async fn scim_remove_deactivates_the_member_and_does_not_delete() -> TestResult {
    let sandbox = sandbox(3).await?;
    let id = string_field(&sandbox.stripe_scim.emulator.users()[0], "id")?.to_owned();
    let scim = Connection::open(&sandbox, "stripe-scim", &[]).await?;

    assert_eq!(scim.remove("team-members", &id).await?, RemoveOutcome::Removed);
    let user = sandbox.stripe_scim.emulator.user(&id).ok_or("the member is still there")?;
    assert_eq!(user["active"], false, "{user}");
    assert_eq!(sandbox.stripe_scim.emulator.user_count(), 3);
    assert_eq!(sandbox.stripe_scim.emulator.active_user_count(), 2);
    let log = sandbox.stripe_scim.emulator.requests();
    assert_eq!(log.count_where(|r| r.method == "DELETE"), 0);
    assert_eq!(
        log.count_where(|r| r.method == "PATCH" && r.path == format!("/scim/v2/Users/{id}")),
        1
    );

    assert_eq!(scim.get("team-members", &id).await?, None, "an inactive member reads as absent");
    assert_eq!(scim.remove("team-members", &id).await?, RemoveOutcome::AlreadyAbsent);
    assert_eq!(log.count_where(|r| r.method == "PATCH"), 1, "no second deactivation");

    // Reversible: an upsert with active = true brings the member back.
    let (action, _) = scim.upsert("team-members", json!({ "id": id, "active": true })).await?;
    assert_eq!(action, UpsertAction::Updated);
    assert_eq!(sandbox.stripe_scim.emulator.active_user_count(), 3);
    Ok(())
}

#[tokio::test]
async fn scim_upsert_by_user_name_does_not_duplicate() -> TestResult {
    let sandbox = sandbox(2).await?;
    let scim = Connection::open(&sandbox, "stripe-scim", &[]).await?;
    let member = json!({
        "userName": "grace@weft-demo.example",
        "name": { "givenName": "Grace", "familyName": "Hopper" },
        "emails": [{ "value": "grace@weft-demo.example", "type": "work", "primary": true }],
    });
    let (created, record) = scim.upsert("team-members", member.clone()).await?;
    assert_eq!(created, UpsertAction::Created);
    let id = string_field(&record, "id")?.to_owned();

    let (unchanged, _) = scim.upsert("team-members", member).await?;
    assert_eq!(unchanged, UpsertAction::Unchanged);

    let (updated, record) = scim
        .upsert(
            "team-members",
            json!({ "userName": "grace@weft-demo.example", "displayName": "Admiral Hopper" }),
        )
        .await?;
    assert_eq!(updated, UpsertAction::Updated);
    assert_eq!(record["id"], id.as_str(), "the same member");

    assert_eq!(sandbox.stripe_scim.emulator.user_count(), 3, "two seeded and one created");
    let with_name = sandbox
        .stripe_scim
        .emulator
        .users()
        .into_iter()
        .filter(|u| u["userName"] == "grace@weft-demo.example")
        .count();
    assert_eq!(with_name, 1);
    let stored = sandbox.stripe_scim.emulator.user(&id).ok_or("created")?;
    assert_eq!(stored["displayName"], "Admiral Hopper");
    assert_eq!(stored["name"]["givenName"], "Grace", "a PATCH of one attribute keeps the others");
    let log = sandbox.stripe_scim.emulator.requests();
    assert_eq!(log.count_where(|r| r.method == "POST"), 1);
    assert_eq!(log.count_where(|r| r.method == "PATCH"), 1);
    Ok(())
}

#[tokio::test]
async fn scim_and_stripe_customers_use_separate_connections_and_keys() -> TestResult {
    let sandbox = sandbox(2).await?;
    let harness = Harness::new()?;
    let stripe = endpoint(&sandbox, "stripe")?;
    let scim = endpoint(&sandbox, "stripe-scim")?;
    let text = r#"
[workflow]
name = "stripe-and-team"

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"

[connections.team]
plugin = "stripe-scim"
credentials = "env:WEFT_TEST_UNUSED"

[[step]]
id = "customers"
list = "stripe.customers"

[[step]]
id = "members"
list = "team.team-members"
"#;
    let overrides = |stripe_key: &str, scim_key: &str| {
        std::collections::BTreeMap::from([
            (
                "stripe".to_owned(),
                ConnectionOverride {
                    base_url: stripe.base_url.clone(),
                    secret: Secret::new(stripe_key),
                },
            ),
            (
                "team".to_owned(),
                ConnectionOverride {
                    base_url: scim.base_url.clone(),
                    secret: Secret::new(scim_key),
                },
            ),
        ])
    };

    let both = harness.run(text, &overrides(&stripe.api_key, &scim.api_key)).await?;
    assert_eq!(both.status, Status::Succeeded, "{both:?}");
    assert_eq!(both.steps[0].counts.read, 2);
    assert_eq!(both.steps[1].counts.read, 2);

    // The Stripe API key is not a SCIM token.
    let stripe_key_for_scim =
        harness.run(text, &overrides(&stripe.api_key, &stripe.api_key)).await?;
    assert_eq!(stripe_key_for_scim.status, Status::Failed);
    let failed =
        stripe_key_for_scim.steps.iter().find(|s| s.error.is_some()).ok_or("a step failed")?;
    let error = failed.error.clone().unwrap_or_default();
    assert!(error.contains("unauthorized") && error.contains("401"), "{error}");
    assert!(!error.contains(&stripe.api_key), "the key is not echoed: {error}");
    assert!(sandbox.stripe_scim.emulator.requests().requests().iter().any(|r| r.status == 401));

    // Nor is the SCIM token a Stripe key.
    let scim_key =
        Connection::open_with_key("stripe", &stripe.base_url, &scim.api_key, &[]).await?;
    let error = connector_error(scim_key.list_all("customers", 10, None).await)?;
    assert!(matches!(error, ConnectorError::Unauthorized(_)), "{error:?}");
    Ok(())
}

// Stripe

#[tokio::test]
async fn stripe_email_matching_several_customers_is_a_conflict() -> TestResult {
    let sandbox = sandbox(0).await?;
    let emulator = &sandbox.stripe.emulator;
    let first =
        emulator.insert_customer(json!({ "email": "twin@example.com", "name": "Twin One" }));
    let second =
        emulator.insert_customer(json!({ "email": "twin@example.com", "name": "Twin Two" }));
    let stripe = Connection::open(&sandbox, "stripe", &[]).await?;

    let error = connector_error(
        stripe.upsert("customers", json!({ "email": "twin@example.com", "name": "Merged" })).await,
    )?;
    assert!(matches!(error, ConnectorError::Conflict(_)), "{error:?}");
    let message = error.to_string();
    for customer in [&first, &second] {
        let id = string_field(customer, "id")?;
        assert!(message.contains(id), "names {id}: {message}");
        assert_eq!(emulator.customer(id).as_ref(), Some(customer), "unchanged");
    }
    assert_eq!(emulator.requests().count_where(|r| r.method == "POST"), 0, "nothing was written");
    assert_eq!(emulator.customer_count(), 2);
    Ok(())
}

// What the vendors' descriptions allow in a request, judged on the
// emulators' request logs: the emulators of the time may be more lenient
// than the vendors, so a test checks what was sent, not only that it was
// accepted.

/// A vendor's OpenAPI description (JSON), from `../shared/vendor-apis`.
pub(super) fn description(relative: &str) -> TestResult<Value> {
    let path = super::contract::vendor_apis().join(relative);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the description {}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// What is wrong with a JSON request `body` by the description's schema of
/// `method template` (`"put"`, `"/data/customers/{id}"`).
pub(super) fn json_body_problems(
    document: &Value,
    method: &str,
    template: &str,
    body: &str,
) -> TestResult<Vec<String>> {
    let schema = document["paths"][template][method]
        .pointer("/requestBody/content/application~1json/schema")
        .ok_or_else(|| format!("the description has no JSON body for {method} {template}"))?;
    let mut root = json!({ "components": document["components"].clone() });
    for (keyword, value) in schema.as_object().ok_or("a schema object")? {
        root[keyword.as_str()] = value.clone();
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .build(&root)
        .map_err(|e| e.to_string())?;
    let body: Value = serde_json::from_str(body)
        .map_err(|e| format!("{method} {template}: the body is not JSON ({e}): {body}"))?;
    Ok(validator
        .iter_errors(&body)
        .map(|e| format!("{method} {template} body at `{}`: {e}", e.instance_path()))
        .collect())
}

/// Every empty value (`key=`) of a Stripe form `body` sent to `POST
/// template` where the description takes none: only a string (whose enum,
/// if any, lists `""`) or an `anyOf` holding one takes `""`.
fn stripe_empty_value_problems(spec: &Value, template: &str, body: &str) -> Vec<String> {
    let schema = &spec["paths"][template]["post"]["requestBody"]["content"]["application/x-www-form-urlencoded"]
        ["schema"];
    let mut problems = Vec::new();
    for (key, value) in form_urlencoded::parse(body.as_bytes()) {
        if !value.is_empty() {
            continue;
        }
        let segments: Vec<&str> = key.split(['[', ']']).filter(|s| !s.is_empty()).collect();
        match stripe_schema_at(spec, schema, &segments) {
            None => problems.push(format!("`{key}` is not a parameter of POST {template}")),
            Some(found) if !stripe_takes_empty(spec, found) => problems.push(format!(
                "`{key}=`: the description takes no empty value there: {}",
                found.to_string().chars().take(160).collect::<String>()
            )),
            Some(_) => {}
        }
    }
    problems
}

fn stripe_resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &spec["components"]["schemas"][name],
        None => schema,
    }
}

fn stripe_schema_at<'a>(
    spec: &'a Value,
    schema: &'a Value,
    segments: &[&str],
) -> Option<&'a Value> {
    let schema = stripe_resolve(spec, schema);
    let Some((first, rest)) = segments.split_first() else { return Some(schema) };
    if let Some(branches) = schema["anyOf"].as_array() {
        return branches.iter().find_map(|branch| stripe_schema_at(spec, branch, segments));
    }
    if let Some(property) = schema["properties"].get(*first) {
        return stripe_schema_at(spec, property, rest);
    }
    if schema["additionalProperties"].is_object() {
        return stripe_schema_at(spec, &schema["additionalProperties"], rest);
    }
    if schema["items"].is_object() && first.parse::<usize>().is_ok() {
        return stripe_schema_at(spec, &schema["items"], rest);
    }
    None
}

fn stripe_takes_empty(spec: &Value, schema: &Value) -> bool {
    let schema = stripe_resolve(spec, schema);
    if let Some(branches) = schema["anyOf"].as_array() {
        return branches.iter().any(|branch| stripe_takes_empty(spec, branch));
    }
    schema["type"] == "string"
        && schema["enum"].as_array().is_none_or(|values| values.iter().any(|v| v == ""))
        && schema["minLength"].as_u64().unwrap_or(0) == 0
}

#[test]
fn the_stripe_empty_value_check_knows_what_the_description_takes() -> TestResult {
    let spec = description("stripe/spec3.json")?;
    let allowed = "name=&email=&metadata=&address=&shipping=&tax_exempt=&metadata[plan]=&invoice_settings[custom_fields]=&address[line2]=";
    assert_eq!(
        stripe_empty_value_problems(&spec, "/v1/customers/{customer}", allowed),
        Vec::<String>::new()
    );
    let refused = stripe_empty_value_problems(
        &spec,
        "/v1/customers",
        "preferred_locales=&invoice_settings=&balance=&nonsense=&name=Jo",
    );
    assert_eq!(refused.len(), 4, "{refused:#?}");
    Ok(())
}

#[tokio::test]
async fn stripe_a_customer_read_back_is_created_again_with_no_empty_value_stripe_refuses()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let spec = description("stripe/spec3.json")?;
    let emulator = &sandbox.stripe.emulator;
    let original = emulator.insert_customer(
        json!({ "email": "ada@example.com", "name": "Ada", "metadata": { "plan": "pro" } }),
    );
    let stripe = Connection::open(&sandbox, "stripe", &[]).await?;
    let mut copy = stripe
        .get("customers", string_field(&original, "id")?)
        .await?
        .ok_or("the customer reads back")?;
    // Every customer Stripe returns has these; they made the copy fail.
    assert_eq!(copy["preferred_locales"], json!([]), "precondition: {copy}");
    assert!(copy["invoice_settings"].is_object(), "precondition: {copy}");
    let fields = copy.as_object_mut().ok_or("an object")?;
    fields.remove("id");
    fields.insert("email".into(), "ada.copy@example.com".into());
    emulator.requests().clear();

    let (action, created) = stripe.upsert("customers", copy).await?;
    assert_eq!(action, UpsertAction::Created);
    let posts: Vec<RecordedRequest> =
        emulator.requests().requests().into_iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 1, "{posts:#?}");
    // The regression: `preferred_locales=`, refused by Stripe with 400
    // "value must be a slice (was: string)".
    assert_eq!(
        stripe_empty_value_problems(&spec, "/v1/customers", &posts[0].body),
        Vec::<String>::new(),
        "{}",
        posts[0].body
    );
    assert!(
        !posts[0].body.contains("preferred_locales") && !posts[0].body.contains("default_source"),
        "{}",
        posts[0].body
    );
    assert_eq!(
        (created["name"].as_str(), created["metadata"]["plan"].as_str()),
        (Some("Ada"), Some("pro")),
        "{created}"
    );
    assert_eq!(emulator.customer_count(), 2);
    Ok(())
}

#[tokio::test]
async fn stripe_clearing_what_stripe_cannot_clear_is_invalid_input_and_what_it_can_is_sent_empty()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let spec = description("stripe/spec3.json")?;
    let emulator = &sandbox.stripe.emulator;
    let customer = emulator.insert_customer(json!({
        "email": "jo@example.com", "name": "Jo", "phone": "+33 1 23", "preferred_locales": ["fr"],
        "metadata": { "plan": "pro" }, "address": { "city": "Paris", "country": "FR" }
    }));
    let id = string_field(&customer, "id")?;
    let stripe = Connection::open(&sandbox, "stripe", &[]).await?;
    emulator.requests().clear();

    let error = connector_error(
        stripe.upsert("customers", json!({ "id": id, "preferred_locales": [] })).await,
    )?;
    assert!(
        matches!(&error, ConnectorError::InvalidInput(m) if m.contains("`preferred_locales`") && m.contains("cannot clear")),
        "{error:?}"
    );
    assert_eq!(emulator.requests().count_where(is_write), 0, "nothing was sent");

    let (action, updated) = stripe
        .upsert(
            "customers",
            json!({ "id": id, "name": null, "phone": "", "metadata": null, "address": null }),
        )
        .await?;
    assert_eq!(action, UpsertAction::Updated);
    let posts: Vec<RecordedRequest> =
        emulator.requests().requests().into_iter().filter(is_write).collect();
    assert_eq!(posts.len(), 1);
    assert_eq!(
        stripe_empty_value_problems(&spec, "/v1/customers/{customer}", &posts[0].body),
        Vec::<String>::new()
    );
    let mut pairs: Vec<(String, String)> =
        form_urlencoded::parse(posts[0].body.as_bytes()).into_owned().collect();
    pairs.sort();
    let cleared = ["address", "metadata", "name", "phone"].map(|k| (k.to_owned(), String::new()));
    assert_eq!(pairs, cleared);
    assert!(
        updated["name"].is_null() && updated["phone"].is_null() && updated["address"].is_null(),
        "{updated}"
    );
    assert_eq!(updated["preferred_locales"], json!(["fr"]), "left alone");
    Ok(())
}

#[tokio::test]
async fn growpanel_custom_variables_and_cleared_fields_go_out_as_the_descriptions_strings()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let described = description("growpanel/openapi.json")?;
    let growpanel =
        Connection::open(&sandbox, "growpanel", &[("source", DEMO_DATA_SOURCE)]).await?;
    let mut record = growpanel_row("cus_vars", "Vars");
    record["custom_variables"] = json!({ "seats": 5, "vip": true, "tier": "gold" });
    let (action, _) = growpanel.upsert("customers", record.clone()).await?;
    assert_eq!(action, UpsertAction::Created);
    let stored = sandbox.growpanel.emulator.customer("cus_vars").ok_or("created")?;
    assert_eq!(stored["custom_variables"], json!({ "seats": "5", "vip": "true", "tier": "gold" }));

    // The same numbers again are no change; other numbers and a cleared
    // name and email are sent as strings.
    let (again, _) = growpanel.upsert("customers", record).await?;
    assert_eq!(again, UpsertAction::Unchanged);
    let (changed, after) = growpanel.upsert("customers", json!({ "id": "cus_vars", "name": null, "email": null, "custom_variables": { "seats": 6 } })).await?;
    assert_eq!(changed, UpsertAction::Updated);
    assert_eq!((after["name"].as_str(), after["email"].as_str()), (Some(""), Some("")), "{after}");

    let writes: Vec<RecordedRequest> =
        sandbox.growpanel.emulator.requests().requests().into_iter().filter(is_write).collect();
    assert_eq!(writes.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), ["POST", "PUT"]);
    // The regressions: `"seats": 5` (422 "custom_variables.seats must be
    // string") and `{"email": null, "name": null}` (422 "name must be string").
    let mut problems = json_body_problems(&described, "post", "/data/customers", &writes[0].body)?;
    problems.extend(json_body_problems(
        &described,
        "put",
        "/data/customers/{id}",
        &writes[1].body,
    )?);
    assert_eq!(problems, Vec::<String>::new(), "{} / {}", writes[0].body, writes[1].body);
    assert_eq!(
        serde_json::from_str::<Value>(&writes[1].body)?,
        json!({ "name": "", "email": "", "custom_variables": { "seats": "6", "vip": "true", "tier": "gold" } })
    );
    Ok(())
}

#[tokio::test]
async fn baremetrics_created_given_as_a_date_time_is_kept_as_the_unix_timestamp() -> TestResult {
    let sandbox = sandbox(0).await?;
    let baremetrics = Connection::open(&sandbox, "baremetrics", &[]).await?;
    let record = json!({ "oid": "cust_dated", "name": "Dated", "created": "2024-01-02T03:04:05Z" });
    // The regression: the date-time went out as text, which Baremetrics
    // refuses ("created must be a Unix timestamp").
    let (action, created) = baremetrics.upsert("customers", record.clone()).await?;
    assert_eq!(action, UpsertAction::Created);
    assert_eq!(created["created"], 1_704_164_645);
    let stored =
        sandbox.baremetrics.emulator.customer(NATIVE_SOURCE_ID, "cust_dated").ok_or("created")?;
    assert_eq!(stored["created"], 1_704_164_645);
    let posts: Vec<RecordedRequest> = sandbox
        .baremetrics
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&posts[0].body)?["created"],
        1_704_164_645,
        "sent as an integer, as the description's text and answers say"
    );

    // The same instant again, either way written, is no change.
    let (again, _) = baremetrics.upsert("customers", record).await?;
    let (as_integer, _) = baremetrics
        .upsert("customers", json!({ "oid": "cust_dated", "created": 1_704_164_645 }))
        .await?;
    assert_eq!((again, as_integer), (UpsertAction::Unchanged, UpsertAction::Unchanged));
    let error = connector_error(
        baremetrics
            .upsert("customers", json!({ "oid": "cust_dated", "created": "next week" }))
            .await,
    )?;
    assert!(
        matches!(&error, ConnectorError::InvalidInput(m) if m.contains("RFC 3339")),
        "{error:?}"
    );
    assert_eq!(
        sandbox.baremetrics.emulator.requests().count_where(is_write),
        1,
        "one create, nothing else written"
    );
    Ok(())
}
