//! The Metronome emulator over real loopback HTTP, one behaviour per test.

use serde_json::{Value, json};

use super::*;
use crate::server::{LOOPBACK_ANY_PORT, RunningServer, serve};
use crate::support::testing::{Reply, send, with_json};

struct Harness {
    emulator: MetronomeEmulator,
    server: RunningServer,
    client: reqwest::Client,
}

impl Harness {
    async fn start(config: MetronomeConfig) -> Self {
        let emulator = MetronomeEmulator::new(config);
        let server = serve(emulator.router(), LOOPBACK_ANY_PORT).await.expect("binds");
        Self { emulator, server, client: reqwest::Client::new() }
    }

    async fn seeded(customers: usize) -> Self {
        Self::start(MetronomeConfig { seed: customers, rng_seed: 11, ..MetronomeConfig::default() })
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.server.base_url())
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.client.get(self.url(path)).bearer_auth(SANDBOX_API_KEY)).await
    }

    async fn post(&self, path: &str, body: &Value) -> Reply {
        send(with_json(self.client.post(self.url(path)).bearer_auth(SANDBOX_API_KEY), body)).await
    }

    async fn create(&self, name: &str, aliases: &[&str]) -> Reply {
        self.post("/customers", &json!({"name": name, "ingest_aliases": aliases})).await
    }
}

fn ids(reply: &Reply) -> Vec<String> {
    reply.json["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|customer| customer["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn metronome_serves_customers_under_v1_with_a_data_envelope() {
    let harness = Harness::seeded(2).await;
    let reply = harness.get("/customers").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(reply.json["next_page"], Value::Null);
    let id = ids(&reply)[0].clone();
    let reply = harness.get(&format!("/customers/{id}")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["data"]["id"], id.as_str());
    assert!(reply.json["data"]["customer_config"].is_object());
    assert!(reply.json["data"]["custom_fields"].is_object());

    let unprefixed = send(
        harness
            .client
            .get(format!("{}/customers", harness.server.base_url()))
            .bearer_auth(SANDBOX_API_KEY),
    )
    .await;
    assert_eq!(unprefixed.status, 404);
}

#[tokio::test]
async fn metronome_assigns_a_uuid_and_defaults_external_id_to_the_first_alias() {
    let harness = Harness::seeded(0).await;
    let reply = harness.create("Acme Corp", &["acme-001", "acme@example.com"]).await;
    assert_eq!(reply.status, 200);
    let id = reply.json["data"]["id"].as_str().expect("id");
    assert!(is_uuid(id), "{id}");
    assert_eq!(reply.json["data"]["external_id"], "acme-001");

    let reply = harness.post("/customers", &json!({"name": "Beta", "external_id": "beta-7"})).await;
    assert_eq!(reply.json["data"]["ingest_aliases"], json!(["beta-7"]));
    assert_eq!(harness.emulator.customer_count(), 2);
}

#[tokio::test]
async fn metronome_create_needs_a_name() {
    let harness = Harness::seeded(0).await;
    let reply = harness.post("/customers", &json!({"ingest_aliases": ["x"]})).await;
    assert_eq!(reply.status, 400);
    assert!(reply.json["message"].is_string());
}

#[tokio::test]
async fn metronome_ingest_aliases_are_unique_account_wide() {
    let harness = Harness::seeded(0).await;
    assert_eq!(harness.create("First", &["shared-alias"]).await.status, 200);
    let reply = harness.create("Second", &["other", "shared-alias"]).await;
    assert_eq!(reply.status, 409);
    assert!(reply.json["message"].as_str().is_some_and(|m| m.contains("shared-alias")));
    assert_eq!(harness.emulator.customer_count(), 1);

    let second = harness.create("Second", &["other"]).await;
    let id = second.json["data"]["id"].as_str().expect("id");
    let reply = harness
        .post(
            &format!("/customers/{id}/setIngestAliases"),
            &json!({"ingest_aliases": ["shared-alias"]}),
        )
        .await;
    assert_eq!(reply.status, 409);
}

#[tokio::test]
async fn metronome_set_ingest_aliases_replaces_the_set_and_answers_an_empty_200() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("Acme", &["a", "b"]).await;
    let id = created.json["data"]["id"].as_str().expect("id");
    let reply = harness
        .post(&format!("/customers/{id}/setIngestAliases"), &json!({"ingest_aliases": ["c"]}))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json, Value::Null, "empty body");
    let customer = harness.emulator.customer(id).expect("exists");
    assert_eq!(customer["ingest_aliases"], json!(["c"]));
    // The old aliases are free again.
    assert_eq!(harness.create("Other", &["a"]).await.status, 200);
}

#[tokio::test]
async fn metronome_set_name_and_update_config_change_the_customer() {
    let harness = Harness::seeded(1).await;
    let id = harness.emulator.customers()[0]["id"].as_str().expect("id").to_owned();
    let reply =
        harness.post(&format!("/customers/{id}/setName"), &json!({"name": "Renamed"})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["data"]["name"], "Renamed");
    let reply = harness
        .post(
            &format!("/customers/{id}/updateConfig"),
            &json!({"salesforce_account_id": "0015500001WO1ZiABL"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    let customer = harness.emulator.customer(&id).expect("exists");
    assert_eq!(customer["customer_config"]["salesforce_account_id"], "0015500001WO1ZiABL");
}

#[tokio::test]
async fn metronome_archived_customers_leave_the_default_list() {
    let harness = Harness::seeded(3).await;
    let id = harness.emulator.customers()[1]["id"].as_str().expect("id").to_owned();
    let reply = harness.post("/customers/archive", &json!({"id": id})).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["data"]["id"], id.as_str());

    let listed = harness.get("/customers").await;
    assert_eq!(ids(&listed).len(), 2);
    assert!(!ids(&listed).contains(&id));
    let archived = harness.get("/customers?only_archived=true").await;
    assert_eq!(ids(&archived), vec![id.clone()]);
    // Still retrievable by id, but irreversible and no longer writable.
    assert_eq!(harness.get(&format!("/customers/{id}")).await.status, 200);
    let again = harness.post("/customers/archive", &json!({"id": id})).await;
    assert_eq!(again.status, 400);
    let rename = harness.post(&format!("/customers/{id}/setName"), &json!({"name": "x"})).await;
    assert_eq!(rename.status, 400);
}

#[tokio::test]
async fn metronome_archive_of_an_unknown_customer_is_not_found() {
    let harness = Harness::seeded(0).await;
    let reply = harness
        .post("/customers/archive", &json!({"id": "8deed800-1b7a-495d-a207-6c52bac54dc9"}))
        .await;
    assert_eq!(reply.status, 404);
    assert!(reply.json["message"].is_string());
}

#[tokio::test]
async fn metronome_list_pages_with_limit_and_next_page() {
    let harness = Harness::seeded(5).await;
    let mut seen = Vec::new();
    let mut path = "/customers?limit=2".to_owned();
    loop {
        let reply = harness.get(&path).await;
        assert_eq!(reply.status, 200);
        seen.extend(ids(&reply));
        match reply.json["next_page"].as_str() {
            Some(cursor) => path = format!("/customers?limit=2&next_page={cursor}"),
            None => break,
        }
    }
    let all: Vec<String> = harness
        .emulator
        .customers()
        .iter()
        .map(|c| c["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(seen, all);
    assert_eq!(harness.get("/customers?limit=101").await.status, 400);
    assert_eq!(harness.get("/customers?limit=0").await.status, 400);
}

#[tokio::test]
async fn metronome_list_filters_by_ingest_alias_and_customer_ids() {
    let harness = Harness::seeded(4).await;
    let customers = harness.emulator.customers();
    let alias = customers[2]["ingest_aliases"][0].as_str().expect("alias");
    let reply = harness.get(&format!("/customers?ingest_alias={alias}")).await;
    assert_eq!(ids(&reply), vec![customers[2]["id"].as_str().expect("id")]);

    let (first, last) =
        (customers[0]["id"].as_str().expect("id"), customers[3]["id"].as_str().expect("id"));
    let reply = harness.get(&format!("/customers?customer_ids={first}&customer_ids={last}")).await;
    assert_eq!(ids(&reply), vec![first.to_owned(), last.to_owned()]);
}

#[tokio::test]
async fn metronome_customer_plans_show_who_still_has_an_active_plan() {
    let harness = Harness::seeded(3).await;
    let customers = harness.emulator.customers();
    let active = harness.emulator.customers_with_active_plan();
    assert_eq!(active.len(), 1, "seed 0 of every 3 has an active plan");

    let with_plan = customers[0]["id"].as_str().expect("id");
    let reply = harness.get(&format!("/customers/{with_plan}/plans")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["data"][0]["ending_before"], Value::Null);
    assert!(reply.json["data"][0]["plan_name"].is_string());

    let churned = customers[1]["id"].as_str().expect("id");
    let reply = harness.get(&format!("/customers/{churned}/plans")).await;
    assert!(reply.json["data"][0]["ending_before"].is_string());

    let none = customers[2]["id"].as_str().expect("id");
    let reply = harness.get(&format!("/customers/{none}/plans")).await;
    assert_eq!(reply.json["data"], json!([]));
    assert_eq!(reply.json["next_page"], Value::Null);
}

#[tokio::test]
async fn metronome_answers_429_over_an_undisclosed_limit() {
    let harness = Harness::start(MetronomeConfig {
        rate_limit: Some((3, Duration::from_secs(60))),
        ..MetronomeConfig::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(harness.get("/customers").await.status, 200);
    }
    let reply = harness.get("/customers").await;
    assert_eq!(reply.status, 429);
    assert!(reply.json["message"].is_string());
    assert_eq!(harness.emulator.limited_count(), 1);
}

#[tokio::test]
async fn metronome_refuses_a_wrong_key() {
    let harness = Harness::seeded(1).await;
    let reply = send(harness.client.get(harness.url("/customers")).bearer_auth("nope")).await;
    assert_eq!(reply.status, 401);
}

#[test]
fn metronome_demo_data_is_the_same_for_the_same_seed() {
    let config = MetronomeConfig { seed: 6, rng_seed: 5, ..MetronomeConfig::default() };
    assert_eq!(
        MetronomeEmulator::new(config.clone()).customers(),
        MetronomeEmulator::new(config).customers()
    );
}

// The check against Metronome's description (sandbox/specs/metronome.json).

/// Metronome's 400 with its `Error` schema, `{"message"}`.
fn assert_refused(reply: &Reply, message: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json, json!({ "message": message }), "{reply:?}");
}

#[tokio::test]
async fn metronome_bodies_outside_the_description_are_refused_by_field() {
    let harness = Harness::seeded(1).await;
    assert_refused(&harness.post("/customers", &json!({ "name": 5 })).await, "name must be string");
    assert_refused(
        &harness.post("/customers", &json!({ "name": "A", "ingest_aliases": ["ok", ""] })).await,
        "ingest_aliases[1] must be at least 1 characters",
    );
    assert_refused(
        &harness.post("/customers", &json!({ "name": "A", "external_id": "x".repeat(129) })).await,
        "external_id must be at most 128 characters",
    );
    assert_refused(
        &harness
            .post(
                "/customers",
                &json!({ "name": "A", "billing_config": { "billing_provider_type": "stripe" } }),
            )
            .await,
        "billing_config.billing_provider_customer_id is required",
    );
    assert_refused(
        &harness.post("/customers/archive", &json!({ "id": "cus_1" })).await,
        "id must be a valid uuid",
    );
    let id = harness.emulator.customers()[0]["id"].as_str().expect("id").to_owned();
    assert_refused(
        &harness
            .post(&format!("/customers/{id}/setIngestAliases"), &json!({ "ingest_aliases": "a" }))
            .await,
        "ingest_aliases must be array",
    );
    assert_refused(
        &harness
            .post(&format!("/customers/{id}/updateConfig"), &json!({ "salesforce_account_id": 7 }))
            .await,
        "salesforce_account_id must be null or string",
    );
    assert_eq!(harness.emulator.customer_count(), 1);
}

#[tokio::test]
async fn metronome_parameters_outside_the_description_are_refused_by_name() {
    let harness = Harness::seeded(1).await;
    assert_refused(&harness.get("/customers?limit=0").await, "query parameter limit must be >= 1");
    assert_refused(
        &harness.get("/customers?limit=ten").await,
        "query parameter limit must be integer",
    );
    assert_refused(
        &harness.get("/customers?only_archived=maybe").await,
        "query parameter only_archived must be boolean",
    );
    assert_refused(
        &harness.get("/customers/not-a-uuid").await,
        "path parameter customer_id must be a valid uuid",
    );
    let reply =
        harness.get("/customers?limit=1&only_archived=false&customer_ids=a&customer_ids=b").await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// `customer_ids` is an array sent as repeated parameters; a comma list is
/// one id, which no customer has (the emulator used to split it, and so
/// passed a request Metronome would answer with nothing).
#[tokio::test]
async fn metronome_customer_ids_is_repeated_not_comma_separated() {
    let harness = Harness::seeded(3).await;
    let customers = harness.emulator.customers();
    let first = customers[0]["id"].as_str().expect("id");
    let second = customers[1]["id"].as_str().expect("id");
    let repeated =
        harness.get(&format!("/customers?customer_ids={first}&customer_ids={second}")).await;
    assert_eq!(ids(&repeated).len(), 2, "{repeated:?}");
    let joined = harness.get(&format!("/customers?customer_ids={first},{second}")).await;
    assert_eq!(ids(&joined), Vec::<String>::new(), "{joined:?}");
}
