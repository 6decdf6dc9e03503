//! The GrowPanel emulator over real loopback HTTP, one behaviour per test.

use serde_json::{Value, json};

use super::*;
use crate::limits::FaultKind;
use crate::server::{LOOPBACK_ANY_PORT, RunningServer, serve};
use crate::support::testing::{Reply, send, with_json};

struct Harness {
    emulator: GrowPanelEmulator,
    server: RunningServer,
    client: reqwest::Client,
}

impl Harness {
    async fn start(config: GrowPanelConfig) -> Self {
        let emulator = GrowPanelEmulator::new(config);
        let server = serve(emulator.router(), LOOPBACK_ANY_PORT).await.expect("binds");
        Self { emulator, server, client: reqwest::Client::new() }
    }

    async fn seeded(customers: usize) -> Self {
        Self::start(GrowPanelConfig { seed: customers, rng_seed: 7, ..GrowPanelConfig::default() })
            .await
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.server.base_url()))
            .bearer_auth(SANDBOX_API_KEY)
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, body: &Value) -> Reply {
        send(with_json(self.request(reqwest::Method::POST, "/data/customers"), body)).await
    }

    async fn put(&self, id: &str, body: &Value) -> Reply {
        send(with_json(self.request(reqwest::Method::PUT, &format!("/data/customers/{id}")), body))
            .await
    }

    async fn delete(&self, id: &str) -> Reply {
        send(self.request(reqwest::Method::DELETE, &format!("/data/customers/{id}"))).await
    }
}

fn row(id: &str) -> Value {
    json!({
        "id": id,
        "name": "Beta LLC",
        "email": "billing@beta.example",
        "created_date": "2025-01-15",
        "country": "US",
        "data_source": DEMO_DATA_SOURCE,
    })
}

#[tokio::test]
async fn growpanel_list_needs_a_source() {
    let harness = Harness::seeded(3).await;
    let reply = harness.get("/data/customers").await;
    assert_eq!(reply.status, 400);
    assert!(reply.json["error"].as_str().is_some_and(|m| m.contains("source")));
    assert_eq!(reply.json["message"], reply.json["error"]);

    let reply = harness.get("/data/customers?source=ds_nope").await;
    assert_eq!(reply.status, 404);
}

#[tokio::test]
async fn growpanel_list_is_wrapped_in_result_count_and_list() {
    let harness = Harness::seeded(5).await;
    let reply = harness.get(&format!("/data/customers?source={DEMO_DATA_SOURCE}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["result"]["count"], 5);
    assert_eq!(reply.json["result"]["list"].as_array().map(Vec::len), Some(5));

    let reply = harness.get(&format!("/data/customers?source={DEMO_DATA_SOURCE}&limit=2")).await;
    assert_eq!(reply.json["result"]["count"], 2);
    assert_eq!(reply.json["result"]["list"][0]["id"], "cus_demo00000");
}

#[tokio::test]
async fn growpanel_unauthorized_without_the_key() {
    let harness = Harness::seeded(1).await;
    let reply = send(
        harness
            .client
            .get(format!("{}/data/customers?source={DEMO_DATA_SOURCE}", harness.server.base_url()))
            .bearer_auth("wrong"),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json["error"], "Unauthorized");
}

#[tokio::test]
async fn growpanel_post_accepts_one_object() {
    let harness = Harness::seeded(0).await;
    let reply = harness.post(&row("cus_1")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["result"][0]["id"], "cus_1");
    assert_eq!(reply.json["result"][0]["export_status"], "success");
    assert_eq!(harness.emulator.customer_count(), 1);
    let reply = harness.get(&format!("/data/customers/cus_1?source={DEMO_DATA_SOURCE}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["name"], "Beta LLC");
}

#[tokio::test]
async fn growpanel_post_accepts_an_array() {
    let harness = Harness::seeded(0).await;
    let reply = harness.post(&json!([row("cus_1"), row("cus_2"), row("cus_3")])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["result"].as_array().map(Vec::len), Some(3));
    assert_eq!(harness.emulator.customer_count(), 3);
}

#[tokio::test]
async fn growpanel_post_upserts_by_id() {
    let harness = Harness::seeded(0).await;
    harness.post(&row("cus_1")).await;
    let mut changed = row("cus_1");
    changed["name"] = "Beta Renamed".into();
    harness.post(&changed).await;
    assert_eq!(harness.emulator.customer_count(), 1);
    assert_eq!(harness.emulator.customer("cus_1").expect("stored")["name"], "Beta Renamed");
}

#[tokio::test]
async fn growpanel_post_names_the_missing_required_field() {
    let harness = Harness::seeded(0).await;
    for field in ["id", "created_date", "country", "data_source"] {
        let mut body = row("cus_1");
        body.as_object_mut().expect("object").remove(field);
        let reply = harness.post(&body).await;
        assert_eq!(reply.status, 400, "{field}");
        let message = reply.json["message"].as_str().expect("message");
        assert!(message.contains(field), "{message}");
    }
    let reply = harness.post(&json!([row("cus_1"), {"id": "cus_2"}])).await;
    assert_eq!(reply.status, 400);
    assert_eq!(harness.emulator.customer_count(), 0, "nothing stored");
}

#[tokio::test]
async fn growpanel_post_reports_invalid_rows_per_row() {
    let harness = Harness::seeded(0).await;
    let mut bad = row("cus_2");
    bad["country"] = "USA".into();
    let reply = harness.post(&json!([row("cus_1"), bad])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["result"][0]["export_status"], "success");
    assert_eq!(reply.json["result"][1]["export_status"], "error");
    assert!(reply.json["result"][1]["export_error"].is_string());
    assert_eq!(harness.emulator.customer_count(), 1);
}

#[tokio::test]
async fn growpanel_put_updates_only_name_email_and_custom_variables() {
    let harness = Harness::seeded(1).await;
    let before = harness.emulator.customer("cus_demo00000").expect("seeded");
    let reply = harness
        .put(
            "cus_demo00000",
            &json!({
                "name": "Renamed",
                "country": "ZZ",
                "status": "churned",
                "custom_variables": {"tier": "gold"},
            }),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["success"], true);
    assert_eq!(reply.json["result"]["updated_fields"], json!(["name", "custom_variables"]));
    let after = harness.emulator.customer("cus_demo00000").expect("kept");
    assert_eq!(after["name"], "Renamed");
    assert!(before["custom_variables"]["segment"].is_string());
    assert_eq!(
        after["custom_variables"],
        json!({"tier": "gold"}),
        "the map is replaced, not merged"
    );
    assert_eq!(after["country"], before["country"]);
    assert_eq!(after["status"], before["status"]);
    assert_eq!(after["email"], before["email"]);

    assert_eq!(harness.put("cus_missing", &json!({"name": "x"})).await.status, 404);
}

#[tokio::test]
async fn growpanel_delete_returns_result_deleted_true() {
    let harness = Harness::seeded(2).await;
    let reply = harness.delete("cus_demo00001").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["result"], json!({"id": "cus_demo00001", "deleted": true}));
    assert_eq!(harness.emulator.customer_count(), 1);
    assert_eq!(harness.delete("cus_demo00001").await.status, 404);
}

#[tokio::test]
async fn growpanel_enforces_the_published_delete_limit_when_switched_on() {
    let harness =
        Harness::start(GrowPanelConfig { enforce_rate_limits: true, ..GrowPanelConfig::default() })
            .await;
    for n in 0..50 {
        let reply = harness.delete(&format!("cus_{n}")).await;
        assert_eq!(reply.status, 404, "request {n} is within the limit");
    }
    let reply = harness.delete("cus_50").await;
    assert_eq!(reply.status, 429);
    assert!(reply.json["message"].is_string());
    assert_eq!(harness.emulator.limited_count(), 1);
    // GETs have their own budget.
    let reply = harness.get(&format!("/data/customers?source={DEMO_DATA_SOURCE}")).await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn growpanel_limits_are_off_by_default() {
    let harness = Harness::seeded(0).await;
    for n in 0..60 {
        assert_eq!(harness.delete(&format!("cus_{n}")).await.status, 404);
    }
    assert_eq!(harness.emulator.limited_count(), 0);
}

#[tokio::test]
async fn growpanel_injects_server_errors_at_the_configured_rate() {
    let harness = Harness::start(GrowPanelConfig {
        faults: FaultConfig { rate_500: 1.0, ..FaultConfig::default() },
        ..GrowPanelConfig::default()
    })
    .await;
    let reply = harness.get(&format!("/data/customers?source={DEMO_DATA_SOURCE}")).await;
    assert_eq!(reply.status, 500);
    assert!(reply.json["error"].is_string());
    assert_eq!(harness.emulator.limits().injected_count(FaultKind::ServerError), 1);
    assert_eq!(harness.emulator.requests().len(), 1);
}

#[test]
fn growpanel_demo_data_is_the_same_for_the_same_seed() {
    let config = GrowPanelConfig { seed: 10, rng_seed: 3, ..GrowPanelConfig::default() };
    assert_eq!(
        GrowPanelEmulator::new(config.clone()).customers(),
        GrowPanelEmulator::new(config).customers()
    );
}

// The check against GrowPanel's description (sandbox/specs/growpanel.json).

/// GrowPanel's 400 for a request its description refuses.
fn assert_refused(reply: &Reply, message: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json["error"], message, "{reply:?}");
    assert_eq!(reply.json["message"], message, "{reply:?}");
}

/// Regression (issue 13, bug 2): the reconcile workflow cleared a name
/// and email with JSON `null`, which GrowPanel's schema refuses and the
/// emulator stored.
#[tokio::test]
async fn growpanel_put_with_null_name_and_email_is_refused_and_changes_nothing() {
    let harness = Harness::seeded(1).await;
    let before = harness.emulator.customer("cus_demo00000").expect("seeded");
    let reply = harness.put("cus_demo00000", &json!({"email": null, "name": null})).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let message = reply.json["error"].as_str().expect("error");
    assert!(message == "email must be string" || message == "name must be string", "{message}");
    assert_eq!(harness.emulator.customer("cus_demo00000"), Some(before));
}

/// Regression (issue 13, bug 3): custom variables are strings; a number or
/// a boolean is refused, in a PUT and in every row of a POST.
#[tokio::test]
async fn growpanel_custom_variables_that_are_numbers_or_booleans_are_refused() {
    let harness = Harness::seeded(1).await;
    let reply = harness.put("cus_demo00000", &json!({"custom_variables": {"seats": 5}})).await;
    assert_refused(&reply, "custom_variables.seats must be string");
    let mut flagged = row("cus_2");
    flagged["custom_variables"] = json!({"vip": true});
    let reply = harness.post(&json!([row("cus_1"), flagged])).await;
    assert_refused(&reply, "[1].custom_variables.vip must be string");
    let mut single = row("cus_3");
    single["custom_variables"] = json!({"seats": 5});
    let reply = harness.post(&single).await;
    assert_refused(&reply, "custom_variables.seats must be string");
    assert_eq!(harness.emulator.customer_count(), 1, "no row was stored");
}

#[tokio::test]
async fn growpanel_rows_of_the_wrong_type_or_missing_required_fields_are_refused_by_name() {
    let harness = Harness::seeded(0).await;
    let mut mistyped = row("cus_1");
    mistyped["country"] = json!(840);
    assert_refused(&harness.post(&mistyped).await, "country must be string");
    let mut nulled = row("cus_1");
    nulled["name"] = Value::Null;
    assert_refused(&harness.post(&nulled).await, "name must be string");
    let reply = harness.post(&json!([row("cus_1"), {"id": "cus_2"}])).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.json["error"]
            .as_str()
            .is_some_and(|m| m.starts_with("[1].") && m.ends_with("is required")),
        "{reply:?}"
    );
    assert_refused(
        &harness.post(&json!("cus_1")).await,
        "the request body must be object or array",
    );
    assert_refused(&harness.get("/data/customers").await, "query parameter source is required");
    assert_eq!(harness.emulator.customer_count(), 0);
}

/// What the description allows still works: `""` to clear, fields it does
/// not list (it leaves its objects open), and string custom variables.
#[tokio::test]
async fn growpanel_empty_strings_and_fields_the_description_does_not_list_are_accepted() {
    let harness = Harness::seeded(1).await;
    let reply = harness
        .put(
            "cus_demo00000",
            &json!({"email": "", "status": "churned", "custom_variables": {"seats": "5"}}),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let after = harness.emulator.customer("cus_demo00000").expect("kept");
    assert_eq!((&after["email"], &after["custom_variables"]), (&json!(""), &json!({"seats": "5"})));
    let mut extra = row("cus_1");
    extra["currency"] = json!("EUR");
    extra["cancel_date"] = Value::Null;
    let reply = harness.post(&extra).await;
    assert_eq!(reply.json["result"][0]["export_status"], "success", "{reply:?}");
}
