//! The Stripe SCIM emulator over real loopback HTTP, one behaviour per test.

use serde_json::{Value, json};

use super::*;
use crate::server::{LOOPBACK_ANY_PORT, RunningServer, serve};
use crate::support::testing::{Reply, send, with_json};

struct Harness {
    emulator: StripeScimEmulator,
    server: RunningServer,
    client: reqwest::Client,
}

impl Harness {
    async fn seeded(users: usize) -> Self {
        let emulator = StripeScimEmulator::new(StripeScimConfig {
            seed: users,
            rng_seed: 17,
            ..StripeScimConfig::default()
        });
        let server = serve(emulator.router(), LOOPBACK_ANY_PORT).await.expect("binds");
        Self { emulator, server, client: reqwest::Client::new() }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/scim/v2{path}", self.server.base_url()))
            .bearer_auth(SANDBOX_SCIM_TOKEN)
    }

    async fn get(&self, path: &str) -> Reply {
        send(self.request(reqwest::Method::GET, path)).await
    }

    async fn with_body(&self, method: reqwest::Method, path: &str, body: &Value) -> Reply {
        send(with_json(self.request(method, path), body)).await
    }

    async fn create(&self, user_name: &str) -> Reply {
        self.with_body(
            reqwest::Method::POST,
            "/Users",
            &json!({
                "schemas": [USER_SCHEMA],
                "userName": user_name,
                "name": {"givenName": "Jane", "familyName": "Doe"},
                "emails": [{"value": user_name, "type": "work", "primary": true}],
                "active": true,
            }),
        )
        .await
    }
}

/// `/Users?filter=…`, encoded.
fn filtered(filter: &str) -> String {
    let query: String =
        form_urlencoded::Serializer::new(String::new()).append_pair("filter", filter).finish();
    format!("/Users?{query}")
}

fn patch(operations: Value) -> Value {
    json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
}

#[tokio::test]
async fn scim_list_envelope_has_total_results_and_start_index() {
    let harness = Harness::seeded(5).await;
    let reply = harness.get("/Users?startIndex=2&count=2").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.to_str().ok()),
        Some(Some(SCIM_CONTENT_TYPE))
    );
    assert_eq!(reply.json["schemas"], json!([LIST_SCHEMA]));
    assert_eq!(reply.json["totalResults"], 5);
    assert_eq!(reply.json["startIndex"], 2);
    assert_eq!(reply.json["itemsPerPage"], 2);
    let resources = reply.json["Resources"].as_array().expect("Resources");
    assert_eq!(resources.len(), 2);
    assert_eq!(resources[0], harness.emulator.users()[1]);

    let past_the_end = harness.get("/Users?startIndex=10").await;
    assert_eq!(past_the_end.json["totalResults"], 5);
    assert_eq!(past_the_end.json["Resources"], json!([]));
}

#[tokio::test]
async fn scim_filters_by_user_name_case_insensitively() {
    let harness = Harness::seeded(4).await;
    let user_name =
        harness.emulator.users()[2]["userName"].as_str().expect("userName").to_uppercase();
    let filter = format!("userName eq \"{user_name}\"");
    let reply = harness.get(&filtered(&filter)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["totalResults"], 1);
    assert_eq!(reply.json["Resources"][0], harness.emulator.users()[2]);

    let bad = harness.get(&filtered("userName sw \"a\"")).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json["scimType"], "invalidFilter");
}

#[tokio::test]
async fn scim_create_answers_201_and_a_duplicate_user_name_is_409_uniqueness() {
    let harness = Harness::seeded(0).await;
    let reply = harness.create("jane@example.com").await;
    assert_eq!(reply.status, 201);
    let id = reply.json["id"].as_str().expect("id");
    assert!(id.starts_with("usr_"));
    assert_eq!(
        reply.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/scim/v2/Users/{id}").as_str())
    );
    assert_eq!(reply.json["meta"]["resourceType"], "User");

    let duplicate = harness.create("JANE@example.com").await;
    assert_eq!(duplicate.status, 409);
    assert_eq!(duplicate.json["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
    assert_eq!(duplicate.json["status"], "409");
    assert_eq!(duplicate.json["scimType"], "uniqueness");
    assert_eq!(harness.emulator.user_count(), 1);
}

#[tokio::test]
async fn scim_patch_replace_active_false_deactivates() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("jane@example.com").await;
    let id = created.json["id"].as_str().expect("id");
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            &patch(json!([{"op": "replace", "path": "active", "value": false}])),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["active"], false);
    assert_eq!(reply.json["userName"], "jane@example.com", "the rest is kept");
    assert_eq!(harness.emulator.active_user_count(), 0);
}

#[tokio::test]
async fn scim_patch_accepts_the_value_object_form() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("jane@example.com").await;
    let id = created.json["id"].as_str().expect("id");
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            &patch(json!([{"op": "Replace", "value": {"active": false, "displayName": "JD"}}])),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["active"], false);
    assert_eq!(reply.json["displayName"], "JD");
}

#[tokio::test]
async fn scim_patch_is_atomic_and_refuses_unknown_paths() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("jane@example.com").await;
    let id = created.json["id"].as_str().expect("id");
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            &patch(json!([
                {"op": "replace", "path": "active", "value": false},
                {"op": "replace", "path": "roles", "value": "admin"},
            ])),
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json["scimType"], "invalidPath");
    assert_eq!(harness.emulator.active_user_count(), 1, "nothing applied");
}

#[tokio::test]
async fn scim_put_replaces_the_user() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("jane@example.com").await;
    let id = created.json["id"].as_str().expect("id");
    let reply = harness
        .with_body(
            reqwest::Method::PUT,
            &format!("/Users/{id}"),
            &json!({"schemas": [USER_SCHEMA], "userName": "jane.doe@example.com"}),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["userName"], "jane.doe@example.com");
    assert_eq!(reply.json.get("name"), None, "omitted name is cleared");
    assert_eq!(reply.json.get("emails"), None, "omitted emails are cleared");
    assert_eq!(reply.json["active"], true);
}

#[tokio::test]
async fn scim_delete_answers_204_and_the_user_is_gone() {
    let harness = Harness::seeded(2).await;
    let id = harness.emulator.users()[0]["id"].as_str().expect("id").to_owned();
    let reply =
        harness.with_body(reqwest::Method::DELETE, &format!("/Users/{id}"), &Value::Null).await;
    assert_eq!(reply.status, 204);
    assert_eq!(reply.json, Value::Null);
    let gone = harness.get(&format!("/Users/{id}")).await;
    assert_eq!(gone.status, 404);
    assert_eq!(gone.json["schemas"], json!(["urn:ietf:params:scim:api:messages:2.0:Error"]));
    assert_eq!(gone.json["status"], "404");
    assert!(gone.json["detail"].is_string());
}

#[tokio::test]
async fn scim_refuses_the_stripe_api_key() {
    let harness = Harness::seeded(1).await;
    let reply = send(
        harness
            .client
            .get(format!("{}/scim/v2/Users", harness.server.base_url()))
            .bearer_auth(crate::stripe::SANDBOX_API_KEY),
    )
    .await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json["status"], "401");
}

#[test]
fn scim_demo_data_is_the_same_for_the_same_seed() {
    let config = StripeScimConfig { seed: 7, rng_seed: 4, ..StripeScimConfig::default() };
    assert_eq!(
        StripeScimEmulator::new(config.clone()).users(),
        StripeScimEmulator::new(config).users()
    );
}

#[tokio::test]
async fn scim_patch_of_name_keeps_the_sub_attributes_it_does_not_give() {
    let harness = Harness::seeded(0).await;
    let created = harness.create("jane@example.com").await;
    let id = created.json["id"].as_str().expect("id");
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &format!("/Users/{id}"),
            &patch(json!([
                {"op": "replace", "path": "name", "value": {"givenName": "Janet"}},
                {"op": "replace", "path": "password", "value": "s3cret!"},
            ])),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json["name"]["givenName"], "Janet");
    assert_eq!(reply.json["name"]["familyName"], "Doe");
    assert_eq!(reply.json.get("password"), None, "write-only");
}

#[tokio::test]
async fn scim_injected_429_uses_the_scim_error_schema() {
    let emulator = StripeScimEmulator::new(StripeScimConfig {
        faults: FaultConfig { rate_429: 1.0, ..FaultConfig::default() },
        ..StripeScimConfig::default()
    });
    let server = serve(emulator.router(), LOOPBACK_ANY_PORT).await.expect("binds");
    let reply = send(
        reqwest::Client::new()
            .get(format!("{}/scim/v2/Users", server.base_url()))
            .bearer_auth(SANDBOX_SCIM_TOKEN),
    )
    .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.json["status"], "429");
    assert_eq!(emulator.limits().injected_count(crate::limits::FaultKind::TooManyRequests), 1);
    assert_eq!(emulator.limited_count(), 0, "injected, not earned");
}

// The check against RFC 7643/7644's schemas (sandbox/specs/stripe-scim.json).

/// SCIM's 400 with `scimType`.
fn assert_refused(reply: &Reply, scim_type: &str, detail: &str) {
    assert_eq!(reply.status, 400, "{reply:?}");
    assert_eq!(reply.json["schemas"], json!([ERROR_SCHEMA]), "{reply:?}");
    assert_eq!(reply.json["status"], "400", "{reply:?}");
    assert_eq!(reply.json["scimType"], scim_type, "{reply:?}");
    assert_eq!(reply.json["detail"], detail, "{reply:?}");
}

#[tokio::test]
async fn scim_users_outside_the_core_schema_are_refused_as_invalid_values() {
    let harness = Harness::seeded(0).await;
    let user = |extra: Value| {
        let mut body = json!({ "schemas": [USER_SCHEMA], "userName": "jane@example.com" });
        for (key, value) in extra.as_object().into_iter().flatten() {
            body[key] = value.clone();
        }
        body
    };
    let harness = &harness;
    let post = |body: Value| async move {
        harness.with_body(reqwest::Method::POST, "/Users", &body).await
    };
    assert_refused(
        &post(json!({ "schemas": [USER_SCHEMA] })).await,
        "invalidValue",
        "userName is required",
    );
    assert_refused(
        &post(user(json!({ "active": "yes" }))).await,
        "invalidValue",
        "active must be boolean",
    );
    assert_refused(
        &post(user(json!({ "emails": "jane@example.com" }))).await,
        "invalidValue",
        "emails must be array",
    );
    assert_refused(
        &post(user(json!({ "name": { "givenName": 7 } }))).await,
        "invalidValue",
        "name.givenName must be string",
    );
    let reply = post(user(json!({ "schemas": ["urn:example:Other"] }))).await;
    assert_eq!(
        (reply.status, &reply.json["scimType"]),
        (400, &json!("invalidSyntax")),
        "{reply:?}"
    );
    assert_eq!(harness.emulator.user_count(), 0);
}

#[tokio::test]
async fn scim_patch_operations_outside_rfc_7644_are_refused() {
    let harness = Harness::seeded(1).await;
    let id = harness.emulator.users()[0]["id"].as_str().expect("id").to_owned();
    let path = format!("/Users/{id}");
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &path,
            &patch(json!([{ "op": "frobnicate", "path": "active", "value": false }])),
        )
        .await;
    assert_eq!((reply.status, &reply.json["scimType"]), (400, &json!("invalidValue")), "{reply:?}");
    let reply = harness.with_body(reqwest::Method::PATCH, &path, &patch(json!([]))).await;
    assert_refused(&reply, "invalidValue", "Operations must have at least 1 items");
    // Op names are case-insensitive (Azure AD sends "Replace").
    let reply = harness
        .with_body(
            reqwest::Method::PATCH,
            &path,
            &patch(json!([{ "op": "Replace", "path": "active", "value": false }])),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
}
