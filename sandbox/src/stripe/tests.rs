//! The emulator over real loopback HTTP, one behaviour per test.

use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::*;
use crate::limits::FaultKind;
use crate::server::{LOOPBACK_ANY_PORT, RunningServer, serve};

struct Harness {
    emulator: StripeEmulator,
    server: RunningServer,
    client: reqwest::Client,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    json: Value,
}

impl Harness {
    async fn start(config: StripeConfig) -> Self {
        let emulator = StripeEmulator::new(config);
        let server = serve(emulator.router(), LOOPBACK_ANY_PORT).await.expect("binds");
        Self { emulator, server, client: reqwest::Client::new() }
    }

    async fn seeded(customers: usize) -> Self {
        Self::start(StripeConfig { seed: customers, rng_seed: 42, ..StripeConfig::default() }).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.base_url())
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request succeeds");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!("not JSON ({error}): {}", String::from_utf8_lossy(&bytes))
        });
        Reply { status, headers, json }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)).bearer_auth(SANDBOX_API_KEY)).await
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Reply {
        self.post_with_key(path, form, None).await
    }

    async fn post_with_key(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idempotency_key: Option<&str>,
    ) -> Reply {
        let mut request = self
            .client
            .post(self.url(path))
            .bearer_auth(SANDBOX_API_KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(encode(form));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        self.send(request).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path)).bearer_auth(SANDBOX_API_KEY)).await
    }

    async fn create(&self, form: &[(&str, &str)]) -> Value {
        let reply = self.post("/v1/customers", form).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json
    }

    /// Every customer, by walking the list in pages of `limit`.
    async fn export(&self, limit: usize, filter: &str) -> (Vec<String>, usize) {
        let mut ids = Vec::new();
        let mut pages = 0;
        let mut cursor: Option<String> = None;
        loop {
            let after = cursor.map(|id| format!("&starting_after={id}")).unwrap_or_default();
            let page = self.get(&format!("/v1/customers?limit={limit}{filter}{after}")).await;
            assert_eq!(page.status, 200, "{page:?}");
            pages += 1;
            let data = page.json["data"].as_array().expect("data").clone();
            ids.extend(data.iter().map(|c| id_of(c).to_owned()));
            if page.json["has_more"] != json!(true) {
                return (ids, pages);
            }
            cursor = data.last().map(|c| id_of(c).to_owned());
        }
    }

    async fn stop(self) {
        self.server.shutdown().await;
    }
}

fn encode(form: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish()
}

fn id_of(customer: &Value) -> &str {
    customer["id"].as_str().expect("id is a string")
}

fn ids(list: &Value) -> Vec<String> {
    list["data"].as_array().expect("data").iter().map(|c| id_of(c).to_owned()).collect()
}

fn assert_error(reply: &Reply, status: u16, kind: &str, param: Option<&str>) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.json["error"]["type"], kind, "{reply:?}");
    assert_eq!(reply.json["error"]["param"].as_str(), param, "{reply:?}");
    assert!(reply.json["error"]["message"].is_string(), "{reply:?}");
}

// Authentication.

#[tokio::test]
async fn a_request_without_a_key_is_refused_with_401() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe.send(stripe.client.get(stripe.url("/v1/customers"))).await;
    assert_error(&reply, 401, "invalid_request_error", None);
    let message = reply.json["error"]["message"].as_str().expect("message");
    assert!(message.starts_with("You did not provide an API key."), "{message}");
    stripe.stop().await;
}

#[tokio::test]
async fn an_unknown_key_is_refused_with_401_naming_it_masked() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe
        .send(stripe.client.get(stripe.url("/v1/customers")).bearer_auth("sk_test_wxyzabcd"))
        .await;
    assert_eq!(
        reply.json,
        json!({"error": {
            "message": "Invalid API Key provided: sk_test_****abcd",
            "type": "invalid_request_error",
        }})
    );
    assert_eq!(reply.status, 401);
    stripe.stop().await;
}

#[tokio::test]
async fn basic_auth_with_the_key_as_user_and_bearer_auth_both_work() {
    let stripe = Harness::seeded(1).await;
    let basic = stripe
        .send(stripe.client.get(stripe.url("/v1/customers")).basic_auth(SANDBOX_API_KEY, Some("")))
        .await;
    assert_eq!(basic.status, 200);
    assert_eq!(stripe.get("/v1/customers").await.json, basic.json);
    stripe.stop().await;
}

#[tokio::test]
async fn any_of_several_configured_keys_is_accepted() {
    let stripe = Harness::start(StripeConfig {
        api_keys: vec!["sk_test_one".into(), "sk_test_two".into()],
        ..StripeConfig::default()
    })
    .await;
    for key in ["sk_test_one", "sk_test_two"] {
        let reply =
            stripe.send(stripe.client.get(stripe.url("/v1/customers")).bearer_auth(key)).await;
        assert_eq!(reply.status, 200);
    }
    let reply = stripe.get("/v1/customers").await;
    assert_eq!(reply.status, 401, "the sandbox key is not configured here");
    stripe.stop().await;
}

// Create.

#[tokio::test]
async fn create_returns_a_whole_customer_object() {
    let stripe = Harness::seeded(0).await;
    let before = unix_now();
    let customer = stripe.create(&[("email", "ada@example.com"), ("name", "Ada Lovelace")]).await;
    let id = id_of(&customer);
    assert!(id.starts_with("cus_") && id.len() == 18, "{id}");
    assert!(id[4..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    let created = customer["created"].as_i64().expect("created");
    assert!(created >= before && created <= unix_now());
    let invoice_prefix = customer["invoice_prefix"].as_str().expect("prefix").to_owned();
    assert_eq!(
        customer,
        json!({
            "id": id,
            "object": "customer",
            "address": null,
            "balance": 0,
            "created": created,
            "currency": null,
            "default_source": null,
            "delinquent": false,
            "description": null,
            "discount": null,
            "email": "ada@example.com",
            "invoice_prefix": invoice_prefix,
            "invoice_settings": {
                "custom_fields": null,
                "default_payment_method": null,
                "footer": null,
                "rendering_options": null,
            },
            "livemode": false,
            "metadata": {},
            "name": "Ada Lovelace",
            "next_invoice_sequence": 1,
            "phone": null,
            "preferred_locales": [],
            "shipping": null,
            "tax_exempt": "none",
            "test_clock": null,
        })
    );
    assert_eq!(stripe.emulator.customer_count(), 1);
    stripe.stop().await;
}

#[tokio::test]
async fn create_takes_bracketed_fields_for_hashes_and_arrays() {
    let stripe = Harness::seeded(0).await;
    let customer = stripe
        .create(&[
            ("metadata[crm_id]", "42"),
            ("metadata[plan]", "pro"),
            ("address[line1]", "1 Main St"),
            ("address[country]", "GB"),
            ("shipping[name]", "Ada"),
            ("shipping[address][city]", "London"),
            ("preferred_locales[0]", "en"),
            ("preferred_locales[1]", "fr"),
            ("balance", "-1500"),
            ("description", "VIP"),
            ("phone", "+44 20 7946 0000"),
            ("invoice_prefix", "ADA2024"),
            ("tax_exempt", "exempt"),
        ])
        .await;
    assert_eq!(customer["metadata"], json!({"crm_id": "42", "plan": "pro"}));
    assert_eq!(
        customer["address"],
        json!({"city": null, "country": "GB", "line1": "1 Main St", "line2": null, "postal_code": null, "state": null})
    );
    assert_eq!(customer["shipping"]["name"], "Ada");
    assert_eq!(customer["shipping"]["address"]["city"], "London");
    assert_eq!(customer["preferred_locales"], json!(["en", "fr"]));
    assert_eq!(customer["balance"], -1500);
    assert_eq!(customer["description"], "VIP");
    assert_eq!(customer["phone"], "+44 20 7946 0000");
    assert_eq!(customer["invoice_prefix"], "ADA2024");
    assert_eq!(customer["tax_exempt"], "exempt");
    stripe.stop().await;
}

#[tokio::test]
async fn an_unknown_parameter_is_refused_by_name() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe.post("/v1/customers", &[("email", "a@b.co"), ("foo", "1")]).await;
    assert_eq!(
        reply.json,
        json!({"error": {
            "message": "Received unknown parameter: foo",
            "param": "foo",
            "type": "invalid_request_error",
        }})
    );
    assert_eq!(reply.status, 400);
    let nested = stripe.post("/v1/customers", &[("address[planet]", "Mars")]).await;
    assert_error(&nested, 400, "invalid_request_error", Some("address[planet]"));
    assert_eq!(stripe.emulator.customer_count(), 0, "nothing was created");
    stripe.stop().await;
}

#[tokio::test]
async fn a_json_body_is_refused_because_stripe_takes_forms_only() {
    let stripe = Harness::seeded(0).await;
    for content_type in ["application/json", "application/x-www-form-urlencoded"] {
        let reply = stripe
            .send(
                stripe
                    .client
                    .post(stripe.url("/v1/customers"))
                    .bearer_auth(SANDBOX_API_KEY)
                    .header("content-type", content_type)
                    .body(r#"{"email": "a@b.co"}"#),
            )
            .await;
        assert_error(&reply, 400, "invalid_request_error", None);
        let message = reply.json["error"]["message"].as_str().expect("message");
        assert!(message.contains("application/x-www-form-urlencoded"), "{message}");
    }
    assert_eq!(stripe.emulator.customer_count(), 0);
    stripe.stop().await;
}

#[tokio::test]
async fn invalid_values_are_refused_naming_the_parameter() {
    let stripe = Harness::seeded(0).await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("balance", "a lot")], "balance"),
        (&[("email", "not-an-email")], "email"),
        (&[("tax_exempt", "sometimes")], "tax_exempt"),
        (&[("shipping[address][city]", "Paris")], "shipping[name]"),
    ];
    for (form, param) in cases {
        let reply = stripe.post("/v1/customers", form).await;
        assert_error(&reply, 400, "invalid_request_error", Some(param));
    }
    stripe.stop().await;
}

#[tokio::test]
async fn email_is_not_unique_so_two_creates_make_two_customers() {
    let stripe = Harness::seeded(0).await;
    let first = stripe.create(&[("email", "twin@example.com")]).await;
    let second = stripe.create(&[("email", "twin@example.com")]).await;
    assert_ne!(id_of(&first), id_of(&second));
    let list = stripe.get("/v1/customers?email=twin%40example.com").await;
    assert_eq!(ids(&list.json), [id_of(&second), id_of(&first)]);
    stripe.stop().await;
}

// Idempotency.

#[tokio::test]
async fn a_retried_create_with_the_same_idempotency_key_replays_the_first_answer() {
    let stripe = Harness::seeded(0).await;
    let form = [("email", "once@example.com"), ("metadata[a]", "1")];
    let first = stripe.post_with_key("/v1/customers", &form, Some("run-1-step-2")).await;
    assert_eq!(first.status, 200);
    assert!(first.headers.get("idempotent-replayed").is_none());
    // Same parameters in another order are the same request.
    let reordered = [form[1], form[0]];
    let second = stripe.post_with_key("/v1/customers", &reordered, Some("run-1-step-2")).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json, first.json);
    assert_eq!(second.headers.get("idempotent-replayed").map(|v| v.as_bytes()), Some(&b"true"[..]));
    assert_eq!(stripe.emulator.customer_count(), 1);
    stripe.stop().await;
}

#[tokio::test]
async fn an_idempotency_key_reused_with_other_parameters_is_an_idempotency_error() {
    let stripe = Harness::seeded(0).await;
    stripe.post_with_key("/v1/customers", &[("email", "a@example.com")], Some("k")).await;
    let reply =
        stripe.post_with_key("/v1/customers", &[("email", "b@example.com")], Some("k")).await;
    assert_error(&reply, 400, "idempotency_error", None);
    assert_eq!(stripe.emulator.customer_count(), 1);
    stripe.stop().await;
}

#[tokio::test]
async fn a_request_refused_for_its_parameters_does_not_use_up_its_idempotency_key() {
    let stripe = Harness::seeded(0).await;
    let refused =
        stripe.post_with_key("/v1/customers", &[("emial", "a@example.com")], Some("k")).await;
    assert_eq!(refused.status, 400);
    let corrected =
        stripe.post_with_key("/v1/customers", &[("email", "a@example.com")], Some("k")).await;
    assert_eq!(corrected.status, 200, "{corrected:?}");
    stripe.stop().await;
}

#[tokio::test]
async fn idempotency_keys_belong_to_one_api_key() {
    let stripe = Harness::start(StripeConfig {
        api_keys: vec!["sk_test_one".into(), "sk_test_two".into()],
        ..StripeConfig::default()
    })
    .await;
    for key in ["sk_test_one", "sk_test_two"] {
        let reply = stripe
            .send(
                stripe
                    .client
                    .post(stripe.url("/v1/customers"))
                    .bearer_auth(key)
                    .header("Idempotency-Key", "shared")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("email=x%40example.com"),
            )
            .await;
        assert!(reply.headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(stripe.emulator.customer_count(), 2);
    stripe.stop().await;
}

// List.

#[tokio::test]
async fn list_pages_newest_first_with_starting_after_and_has_more() {
    let stripe = Harness::seeded(25).await;
    let first = stripe.get("/v1/customers").await;
    assert_eq!(first.json["object"], "list");
    assert_eq!(first.json["url"], "/v1/customers");
    assert_eq!(first.json["has_more"], true);
    assert_eq!(ids(&first.json).len(), 10, "the default limit is 10");

    let (all, pages) = stripe.export(10, "").await;
    assert_eq!(pages, 3);
    let expected: Vec<String> =
        stripe.emulator.customers().iter().map(|c| id_of(c).to_owned()).collect();
    assert_eq!(all, expected);
    let created: Vec<i64> = stripe
        .emulator
        .customers()
        .iter()
        .map(|c| c["created"].as_i64().expect("created"))
        .collect();
    assert!(created.windows(2).all(|pair| pair[0] > pair[1]), "newest first");
    stripe.stop().await;
}

#[tokio::test]
async fn list_ending_before_returns_the_previous_page() {
    let stripe = Harness::seeded(25).await;
    let all: Vec<String> =
        stripe.emulator.customers().iter().map(|c| id_of(c).to_owned()).collect();
    let reply = stripe.get(&format!("/v1/customers?limit=3&ending_before={}", all[10])).await;
    assert_eq!(ids(&reply.json), all[7..10]);
    assert_eq!(reply.json["has_more"], true);
    stripe.stop().await;
}

#[tokio::test]
async fn list_limit_outside_1_to_100_is_refused_naming_limit() {
    let stripe = Harness::seeded(0).await;
    for limit in ["0", "101", "-1", "many"] {
        let reply = stripe.get(&format!("/v1/customers?limit={limit}")).await;
        assert_error(&reply, 400, "invalid_request_error", Some("limit"));
    }
    assert_eq!(stripe.get("/v1/customers?limit=100").await.status, 200);
    stripe.stop().await;
}

#[tokio::test]
async fn list_starting_after_an_unknown_id_is_resource_missing() {
    let stripe = Harness::seeded(3).await;
    let reply = stripe.get("/v1/customers?starting_after=cus_nope").await;
    assert_error(&reply, 400, "invalid_request_error", Some("starting_after"));
    assert_eq!(reply.json["error"]["code"], "resource_missing");
    assert_eq!(reply.json["error"]["message"], "No such customer: 'cus_nope'");
    stripe.stop().await;
}

#[tokio::test]
async fn list_email_filter_is_exact_and_case_sensitive() {
    let stripe = Harness::seeded(5).await;
    let mine = stripe.create(&[("email", "Grace@Example.com")]).await;
    let exact = stripe.get("/v1/customers?email=Grace%40Example.com").await;
    assert_eq!(ids(&exact.json), [id_of(&mine)]);
    let lower = stripe.get("/v1/customers?email=grace%40example.com").await;
    assert_eq!(ids(&lower.json), Vec::<String>::new());
    let partial = stripe.get("/v1/customers?email=Grace").await;
    assert_eq!(ids(&partial.json), Vec::<String>::new());
    stripe.stop().await;
}

#[tokio::test]
async fn list_created_filter_keeps_customers_in_the_range() {
    let stripe = Harness::seeded(20).await;
    let all = stripe.emulator.customers();
    let created = |i: usize| all[i]["created"].as_i64().expect("created");
    // all[15] is older than all[5]: the range holds all[5..=15].
    let query =
        format!("/v1/customers?limit=100&created[gte]={}&created[lte]={}", created(15), created(5));
    let reply = stripe.get(&query).await;
    let expected: Vec<String> = all[5..=15].iter().map(|c| id_of(c).to_owned()).collect();
    assert_eq!(ids(&reply.json), expected);
    let strict =
        format!("/v1/customers?limit=100&created[gt]={}&created[lt]={}", created(15), created(5));
    assert_eq!(ids(&stripe.get(&strict).await.json), expected[1..10]);
    stripe.stop().await;
}

#[tokio::test]
async fn an_export_of_ten_thousand_customers_in_pages_of_100_sees_each_once() {
    let stripe = Harness::seeded(10_000).await;
    let started = Instant::now();
    let (ids, pages) = stripe.export(100, "").await;
    assert_eq!(pages, 100);
    assert_eq!(ids.len(), 10_000);
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 10_000);
    // Generous: a page is O(limit), so 100 pages take milliseconds; an
    // O(n) scan per page would take far longer in a debug build.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    stripe.stop().await;
}

// Retrieve, update, delete.

#[tokio::test]
async fn retrieve_of_an_unknown_id_is_404_resource_missing() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe.get("/v1/customers/cus_x").await;
    assert_eq!(reply.status, 404);
    assert_eq!(
        reply.json,
        json!({"error": {
            "code": "resource_missing",
            "doc_url": "https://stripe.com/docs/error-codes/resource-missing",
            "message": "No such customer: 'cus_x'",
            "param": "id",
            "type": "invalid_request_error",
        }})
    );
    stripe.stop().await;
}

#[tokio::test]
async fn retrieve_returns_the_customer_as_created() {
    let stripe = Harness::seeded(0).await;
    let created = stripe.create(&[("name", "Grace")]).await;
    let fetched = stripe.get(&format!("/v1/customers/{}", id_of(&created))).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json, created);
    stripe.stop().await;
}

#[tokio::test]
async fn update_merges_metadata_key_by_key_and_an_empty_value_unsets_a_key() {
    let stripe = Harness::seeded(0).await;
    let customer =
        stripe.create(&[("metadata[a]", "1"), ("metadata[b]", "2"), ("name", "Old")]).await;
    let path = format!("/v1/customers/{}", id_of(&customer));
    let updated = stripe
        .post(&path, &[("metadata[b]", ""), ("metadata[c]", "3"), ("email", "new@example.com")])
        .await;
    assert_eq!(updated.status, 200, "{updated:?}");
    assert_eq!(updated.json["metadata"], json!({"a": "1", "c": "3"}));
    assert_eq!(updated.json["email"], "new@example.com");
    assert_eq!(updated.json["name"], "Old", "fields not sent are left alone");
    assert_eq!(updated.json["created"], customer["created"]);

    let cleared = stripe.post(&path, &[("metadata", "")]).await;
    assert_eq!(cleared.json["metadata"], json!({}));
    assert_eq!(stripe.get(&path).await.json, cleared.json);
    stripe.stop().await;
}

#[tokio::test]
async fn update_refuses_parameters_only_create_takes() {
    let stripe = Harness::seeded(0).await;
    let customer = stripe.create(&[]).await;
    let reply = stripe
        .post(&format!("/v1/customers/{}", id_of(&customer)), &[("tax_id_data[0][type]", "eu_vat")])
        .await;
    assert_error(&reply, 400, "invalid_request_error", Some("tax_id_data"));
    stripe.stop().await;
}

#[tokio::test]
async fn delete_is_permanent_and_a_later_get_answers_deleted_true() {
    let stripe = Harness::seeded(2).await;
    let customer = stripe.create(&[("email", "gone@example.com")]).await;
    let id = id_of(&customer);
    let path = format!("/v1/customers/{id}");

    let deleted = stripe.delete(&path).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.json, json!({"id": id, "object": "customer", "deleted": true}));

    let fetched = stripe.get(&path).await;
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json, json!({"id": id, "object": "customer", "deleted": true}));

    assert!(!ids(&stripe.get("/v1/customers?limit=100").await.json).contains(&id.to_owned()));
    assert_eq!(
        ids(&stripe.get("/v1/customers?email=gone%40example.com").await.json),
        Vec::<String>::new()
    );
    assert_eq!(stripe.emulator.customer_count(), 2);

    let again = stripe.delete(&path).await;
    assert_error(&again, 404, "invalid_request_error", Some("id"));
    assert_eq!(again.json["error"]["code"], "resource_missing");

    let update = stripe.post(&path, &[("name", "Back")]).await;
    assert_error(&update, 404, "invalid_request_error", Some("id"));
    stripe.stop().await;
}

#[tokio::test]
async fn a_deleted_customer_still_works_as_a_list_cursor() {
    let stripe = Harness::seeded(5).await;
    let all: Vec<String> =
        stripe.emulator.customers().iter().map(|c| id_of(c).to_owned()).collect();
    stripe.delete(&format!("/v1/customers/{}", all[1])).await;
    let reply = stripe.get(&format!("/v1/customers?starting_after={}", all[1])).await;
    assert_eq!(ids(&reply.json), all[2..]);
    stripe.stop().await;
}

#[tokio::test]
async fn expand_adds_includable_fields() {
    let stripe = Harness::seeded(1).await;
    let id = id_of(&stripe.emulator.customers()[0]).to_owned();
    let one = stripe.get(&format!("/v1/customers/{id}?expand[]=sources&expand[]=tax_ids")).await;
    assert_eq!(one.json["sources"]["object"], "list");
    assert_eq!(one.json["tax_ids"]["data"], json!([]));
    let list = stripe.get("/v1/customers?expand[]=data.subscriptions").await;
    assert_eq!(list.json["data"][0]["subscriptions"]["object"], "list");
    let wrong = stripe.get(&format!("/v1/customers/{id}?expand[]=name")).await;
    assert_eq!(wrong.status, 400);
    stripe.stop().await;
}

// Headers, URLs, log.

#[tokio::test]
async fn every_answer_carries_a_request_id_even_errors() {
    let stripe = Harness::seeded(1).await;
    let answers = [
        stripe.get("/v1/customers").await,
        stripe.get("/v1/customers/cus_missing").await,
        stripe.get("/v1/nothing_here").await,
        stripe.send(stripe.client.get(stripe.url("/v1/customers"))).await,
    ];
    for answer in &answers {
        let id = answer
            .headers
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .expect("Request-Id header");
        assert!(id.starts_with("req_") && id.len() == 18, "{id}");
        assert_eq!(
            answer.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
    stripe.stop().await;
}

#[tokio::test]
async fn an_unknown_url_or_method_gets_stripes_404() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe.get("/v1/invoices").await;
    assert_error(&reply, 404, "invalid_request_error", None);
    assert!(
        reply.json["error"]["message"]
            .as_str()
            .expect("message")
            .starts_with("Unrecognized request URL (GET: /v1/invoices)")
    );
    let put = stripe
        .send(stripe.client.put(stripe.url("/v1/customers")).bearer_auth(SANDBOX_API_KEY))
        .await;
    assert_error(&put, 404, "invalid_request_error", None);
    stripe.stop().await;
}

#[tokio::test]
async fn the_request_log_records_what_the_client_sent_and_got() {
    let stripe = Harness::seeded(0).await;
    stripe.post_with_key("/v1/customers", &[("email", "log@example.com")], Some("k1")).await;
    stripe.get("/v1/customers?limit=5").await;
    stripe.send(stripe.client.get(stripe.url("/v1/customers"))).await;

    let log = stripe.emulator.requests();
    let requests = log.requests();
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].method, "POST");
    assert_eq!(requests[0].path, "/v1/customers");
    assert_eq!(requests[0].idempotency_key.as_deref(), Some("k1"));
    assert_eq!(requests[0].body, "email=log%40example.com");
    assert_eq!(requests[0].status, 200);
    assert_eq!(requests[1].query, "limit=5");
    assert_eq!(log.count_where(|r| r.status == 401), 1);
    stripe.stop().await;
}

// Seeding and test helpers.

#[tokio::test]
async fn seeding_is_deterministic_for_a_seed() {
    let config = StripeConfig { seed: 10, rng_seed: 7, ..StripeConfig::default() };
    let first = StripeEmulator::new(config.clone());
    let second = StripeEmulator::new(config);
    assert_eq!(first.customers(), second.customers());
    let other =
        StripeEmulator::new(StripeConfig { seed: 10, rng_seed: 8, ..StripeConfig::default() });
    assert_ne!(first.customers(), other.customers());
    let customers = first.customers();
    assert!(
        customers.iter().all(|c| c["email"].as_str().is_some_and(|e| e.ends_with("@example.com"))),
        "{customers:?}"
    );
}

#[tokio::test]
async fn an_inserted_customer_is_served_by_the_api() {
    let stripe = Harness::seeded(0).await;
    let inserted = stripe.emulator.insert_customer(json!({
        "id": "cus_Inserted000001",
        "email": "inserted@example.com",
        "metadata": {"source": "test"},
        "created": 1_600_000_000,
    }));
    assert_eq!(inserted["object"], "customer");
    let fetched = stripe.get("/v1/customers/cus_Inserted000001").await;
    assert_eq!(fetched.json, inserted);
    assert_eq!(fetched.json["metadata"]["source"], "test");
    let generated = stripe.emulator.insert_customer(json!({"name": "No Id"}));
    assert!(id_of(&generated).starts_with("cus_"));
    assert_eq!(stripe.emulator.customer_count(), 2);
    assert_eq!(stripe.emulator.customer("cus_Inserted000001").as_ref(), Some(&inserted));
    stripe.stop().await;
}

// Limits and faults.

#[tokio::test]
async fn requests_over_the_rate_limit_get_429_and_are_counted() {
    let stripe = Harness::start(StripeConfig {
        rate_limit: Some((5, Duration::from_secs(60))),
        ..StripeConfig::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(stripe.get("/v1/customers").await.status);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(stripe.emulator.limited_count(), 2);

    let refused = stripe.get("/v1/customers").await;
    assert_error(&refused, 429, "invalid_request_error", None);
    assert_eq!(refused.json["error"]["code"], "rate_limit");

    // Writes have their own budget, as at Stripe.
    assert_eq!(stripe.post("/v1/customers", &[]).await.status, 200);
    stripe.stop().await;
}

#[tokio::test]
async fn a_client_under_the_rate_limit_is_never_refused() {
    let stripe = Harness::start(StripeConfig {
        rate_limit: Some((1_000, Duration::from_secs(1))),
        ..StripeConfig::default()
    })
    .await;
    for _ in 0..50 {
        assert_eq!(stripe.get("/v1/customers").await.status, 200);
    }
    assert_eq!(stripe.emulator.limited_count(), 0);
    stripe.stop().await;
}

#[tokio::test]
async fn injected_500s_and_429s_answer_before_the_api_runs() {
    let failing = Harness::start(StripeConfig {
        faults: FaultConfig { rate_500: 1.0, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await;
    let reply = failing.post("/v1/customers", &[]).await;
    assert_error(&reply, 500, "api_error", None);
    assert!(reply.headers.get("request-id").is_some());
    assert_eq!(failing.emulator.customer_count(), 0);
    assert_eq!(failing.emulator.limits().injected_count(FaultKind::ServerError), 1);
    assert_eq!(
        failing.emulator.requests().requests()[0].injected_fault,
        Some(FaultKind::ServerError)
    );
    failing.stop().await;

    let storming = Harness::start(StripeConfig {
        faults: FaultConfig { rate_429: 1.0, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await;
    assert_eq!(storming.get("/v1/customers").await.status, 429);
    assert_eq!(storming.emulator.limited_count(), 0, "injected 429s are not the client's fault");
    assert_eq!(storming.emulator.limits().injected_count(FaultKind::TooManyRequests), 1);
    storming.stop().await;
}

#[tokio::test]
async fn a_truncated_body_fails_the_read_after_the_write_happened() {
    let stripe = Harness::start(StripeConfig {
        faults: FaultConfig { truncate_rate: 1.0, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await;
    let response = stripe
        .client
        .post(stripe.url("/v1/customers"))
        .bearer_auth(SANDBOX_API_KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=cut%40example.com")
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the body is cut short");
    assert_eq!(stripe.emulator.customer_count(), 1, "the write happened");
    stripe.stop().await;
}

#[tokio::test]
async fn injected_latency_delays_every_answer() {
    let stripe = Harness::start(StripeConfig {
        faults: FaultConfig { latency_ms: 50, ..FaultConfig::default() },
        ..StripeConfig::default()
    })
    .await;
    let started = Instant::now();
    assert_eq!(stripe.get("/v1/customers").await.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(50));
    stripe.stop().await;
}

#[tokio::test]
async fn injected_faults_follow_their_rate_and_replay_for_a_seed() {
    let run = || async {
        let stripe = Harness::start(StripeConfig {
            rng_seed: 3,
            faults: FaultConfig { rate_500: 0.3, ..FaultConfig::default() },
            ..StripeConfig::default()
        })
        .await;
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(stripe.get("/v1/customers").await.status);
        }
        stripe.stop().await;
        statuses
    };
    let first = run().await;
    let failures = first.iter().filter(|s| **s == 500).count();
    assert!((4..=20).contains(&failures), "{failures} of 40 at a 30% rate");
    assert_eq!(first, run().await);
}

// The check against Stripe's description (sandbox/specs/stripe.json).

/// Stripe's 400 for `param`, with the message it words it in.
fn assert_refused(reply: &Reply, param: &str, message: &str) {
    assert_error(reply, 400, "invalid_request_error", Some(param));
    assert_eq!(reply.json["error"]["message"], message, "{reply:?}");
}

/// Regression (issue 13, bug 1): the connector created customers from
/// listed ones with `preferred_locales=` and `invoice_settings=`, which
/// Stripe refuses ("Invalid array", "Invalid hash") and the emulator let
/// through.
#[tokio::test]
async fn an_empty_container_where_stripe_wants_an_array_or_a_hash_is_refused_on_create() {
    let stripe = Harness::seeded(0).await;
    let reply =
        stripe.post("/v1/customers", &[("email", "a@b.co"), ("preferred_locales", "")]).await;
    assert_refused(&reply, "preferred_locales", "Invalid array");
    let reply =
        stripe.post("/v1/customers", &[("email", "a@b.co"), ("invoice_settings", "")]).await;
    assert_refused(&reply, "invoice_settings", "Invalid hash");
    assert_eq!(stripe.emulator.customer_count(), 0, "nothing was created");
    stripe.stop().await;
}

#[tokio::test]
async fn preferred_locales_cannot_be_emptied_with_an_empty_string_on_update_either() {
    let stripe = Harness::seeded(0).await;
    let customer =
        stripe.create(&[("preferred_locales[0]", "en"), ("preferred_locales[1]", "fr")]).await;
    let path = format!("/v1/customers/{}", id_of(&customer));
    let reply = stripe.post(&path, &[("preferred_locales", "")]).await;
    assert_refused(&reply, "preferred_locales", "Invalid array");
    let after = stripe.get(&path).await;
    assert_eq!(after.json["preferred_locales"], json!(["en", "fr"]));
    stripe.stop().await;
}

#[tokio::test]
async fn emptyable_parameters_take_the_empty_string_to_unset() {
    let stripe = Harness::seeded(0).await;
    let customer = stripe
        .create(&[("email", "a@b.co"), ("address[city]", "Paris"), ("metadata[plan]", "pro")])
        .await;
    let path = format!("/v1/customers/{}", id_of(&customer));
    let reply = stripe
        .post(&path, &[("metadata", ""), ("address", ""), ("shipping", ""), ("email", "")])
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        (&reply.json["metadata"], &reply.json["address"], &reply.json["email"]),
        (&json!({}), &Value::Null, &Value::Null)
    );
    stripe.stop().await;
}

#[tokio::test]
async fn a_string_where_a_hash_or_the_empty_string_is_allowed_is_an_invalid_hash() {
    let stripe = Harness::seeded(0).await;
    let reply = stripe.post("/v1/customers", &[("metadata", "plan")]).await;
    assert_refused(&reply, "metadata", "Invalid hash");
    let reply = stripe.post("/v1/customers", &[("address", "1 Main St")]).await;
    assert_refused(&reply, "address", "Invalid hash");
    stripe.stop().await;
}

#[tokio::test]
async fn mistyped_values_are_refused_in_stripes_words() {
    let stripe = Harness::seeded(0).await;
    /// A form, the parameter Stripe names, and its message.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (&[("balance", "ten")], "balance", "Invalid integer: ten"),
        (&[("next_invoice_sequence", "1.5")], "next_invoice_sequence", "Invalid integer: 1.5"),
        (&[("name[first]", "Ada")], "name", "Invalid name: expected a string, not a hash"),
        (
            &[("tax_exempt", "sometimes")],
            "tax_exempt",
            "Invalid tax_exempt: must be one of , exempt, none, or reverse",
        ),
        (
            &[("cash_balance[settings][reconciliation_mode]", "eventually")],
            "cash_balance[settings][reconciliation_mode]",
            "Invalid cash_balance[settings][reconciliation_mode]: must be one of automatic, manual, or merchant_default",
        ),
        (
            &[("phone", "+1 555 0100 0100 0100 01")],
            "phone",
            "Invalid phone: must be at most 20 characters",
        ),
    ];
    for (form, param, message) in cases {
        let reply = stripe.post("/v1/customers", form).await;
        assert_refused(&reply, param, message);
    }
    assert_eq!(stripe.emulator.customer_count(), 0);
    stripe.stop().await;
}

#[tokio::test]
async fn a_missing_required_nested_field_is_named_in_bracket_form() {
    let stripe = Harness::seeded(0).await;
    let reply =
        stripe.post("/v1/customers", &[("invoice_settings[custom_fields][0][name]", "PO")]).await;
    assert_refused(
        &reply,
        "invoice_settings[custom_fields][0][value]",
        "Missing required param: invoice_settings[custom_fields][0][value].",
    );
    assert_eq!(reply.json["error"]["code"], "parameter_missing");
    stripe.stop().await;
}

#[tokio::test]
async fn unknown_parameters_are_refused_at_any_depth_and_in_the_query_string() {
    let stripe = Harness::seeded(1).await;
    let reply = stripe.post("/v1/customers", &[("invoice_settings[colour]", "red")]).await;
    assert_refused(
        &reply,
        "invoice_settings[colour]",
        "Received unknown parameter: invoice_settings[colour]",
    );
    let reply = stripe.get("/v1/customers?limit=3&colour=red").await;
    assert_refused(&reply, "colour", "Received unknown parameter: colour");
    let reply = stripe.get("/v1/customers?limit=three").await;
    assert_refused(&reply, "limit", "Invalid integer: three");
    let reply = stripe.get("/v1/customers?created[after]=1").await;
    assert_refused(&reply, "created[after]", "Received unknown parameter: created[after]");
    let listed = stripe.get("/v1/customers?limit=3&created[gte]=1&expand[]=data.sources").await;
    assert_eq!(listed.status, 200, "{listed:?}");
    stripe.stop().await;
}

/// Everything the connector sends when it copies a customer whole: nested
/// hashes, indexed lists, integers, emptyable hashes.
#[tokio::test]
async fn what_the_description_allows_is_served() {
    let stripe = Harness::seeded(0).await;
    let customer = stripe
        .create(&[
            ("email", "ada@example.com"),
            ("name", "Ada"),
            ("balance", "-500"),
            ("preferred_locales[0]", "en"),
            ("address[line1]", "1 Main St"),
            ("address[country]", "GB"),
            ("shipping[name]", "Ada"),
            ("shipping[address][city]", "London"),
            ("invoice_settings[custom_fields][0][name]", "PO"),
            ("invoice_settings[custom_fields][0][value]", "42"),
            ("invoice_settings[rendering_options]", ""),
            ("tax_exempt", "none"),
            ("expand[]", "tax_ids"),
        ])
        .await;
    assert_eq!(customer["invoice_settings"]["custom_fields"][0]["value"], "42");
    stripe.stop().await;
}
