//! Native tests of the connector's flows: each test scripts Baremetrics'
//! answers (shaped after the OpenAPI description's examples) through the
//! SDK's HTTP test double and checks the requests sent.

use serde_json::{Map, Value, json};
use weft_connector_sdk::http::Method;
use weft_connector_sdk::http::testing::{self, Responding};
use weft_connector_sdk::{
    Connector, Context, Error, ListRequest, Op, RemoveOutcome, UpsertAction, UpsertRequest,
};

use crate::Baremetrics;
use crate::customers::{for_create, merged_put};

const BASE: &str = "https://api.baremetrics.com";

/// Answers the expected requests in order and records what was sent.
fn script(steps: &[(Method, &str, u16, &str)]) -> (Responding, testing::Sent) {
    testing::script(BASE, steps)
}

fn ctx() -> Context {
    Context { base_url: BASE.into(), settings: Vec::new() }
}

fn ctx_with_source(source_id: &str) -> Context {
    Context { base_url: BASE.into(), settings: vec![("source_id".into(), source_id.into())] }
}

fn list_request(
    resource: &str,
    page_size: u32,
    cursor: Option<&str>,
    filter: Option<&str>,
) -> ListRequest {
    ListRequest {
        resource: resource.into(),
        cursor: cursor.map(Into::into),
        page_size,
        filter: filter.map(Into::into),
    }
}

fn upsert_request(record: &str) -> UpsertRequest {
    UpsertRequest {
        resource: "customers".into(),
        record: record.into(),
        idempotency_key: "run1-step2-item3".into(),
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

/// The spec's `GET /v1/sources` example, with distinct ids.
const SOURCES: &str = r#"{"sources":[{"id":"src_stripe","provider":"stripe","provider_id":"acct_1"},{"id":"src_bm","provider":"baremetrics","provider_id":null}]}"#;
const CUSTOMER_1: &str = r#"{"oid":"customer_1","source_id":"src_bm","source":"baremetrics","created":1492605754,"email":"customer_1@baremetrics.com","name":"Customer 1","display_name":"Customer 1","notes":"Here are some notes","ltv":50000,"is_active":true,"is_canceled":false,"current_mrr":1000,"current_plans":[]}"#;
const NOT_FOUND: &str = r#"{"error":"Customer not found"}"#;

fn wrapped(record: &str) -> String {
    format!(r#"{{"customer":{record}}}"#)
}

#[test]
fn list_discovers_the_native_source_and_pages_with_page_and_per_page() {
    let first = format!(
        r#"{{"customers":[{CUSTOMER_1}],"meta":{{"pagination":{{"has_more":true,"page":0,"per_page":1}}}}}}"#
    );
    let (_guard, _) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers?per_page=1", 200, &first),
        (
            Method::Get,
            "/v1/src_bm/customers?page=1&per_page=1",
            200,
            r#"{"customers":[{"oid":"customer_2"}],"meta":{"pagination":{"has_more":false,"page":1,"per_page":1}}}"#,
        ),
    ]);
    let page = Baremetrics::list(&ctx(), list_request("customers", 1, None, None)).expect("page");
    assert_eq!(page.records, [CUSTOMER_1]);
    let cursor = page.next_cursor.expect("more");
    let page =
        Baremetrics::list(&ctx(), list_request("customers", 1, Some(&cursor), None)).expect("page");
    assert_eq!(page.records, [r#"{"oid":"customer_2"}"#]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn list_caps_per_page_at_200_and_without_meta_a_full_page_continues() {
    let full: Vec<String> = (0..200).map(|i| format!(r#"{{"oid":"c{i}"}}"#)).collect();
    let body = format!(r#"{{"customers":[{}]}}"#, full.join(","));
    let (_guard, _) = script(&[
        (Method::Get, "/v1/src_x/customers?search=acme&per_page=200", 200, &body),
        (
            Method::Get,
            "/v1/src_x/customers?search=acme&page=2&per_page=200",
            200,
            r#"{"customers":[]}"#,
        ),
    ]);
    let request = list_request("customers", 1000, None, Some(r#"{"search":"acme"}"#));
    let page = Baremetrics::list(&ctx_with_source("src_x"), request).expect("page");
    assert_eq!(page.records.len(), 200);
    let cursor = page.next_cursor.expect("a full page may have more");
    let request = list_request("customers", 1000, Some(&cursor), Some(r#"{"search":"acme"}"#));
    let page = Baremetrics::list(&ctx_with_source("src_x"), request).expect("page");
    assert_eq!(page.next_cursor, None);
}

#[test]
fn subscriptions_filter_by_customer_oid_on_any_source() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/src_stripe/subscriptions?customer_oid=customer_1&per_page=200",
        200,
        r#"{"subscriptions":[{"oid":"subscription_1","active":true}]}"#,
    )]);
    let request =
        list_request("subscriptions", 200, None, Some(r#"{"customer_oid":"customer_1"}"#));
    let page = Baremetrics::list(&ctx_with_source("src_stripe"), request).expect("page");
    assert_eq!(page.records, [r#"{"oid":"subscription_1","active":true}"#]);
    let error =
        Baremetrics::list(&ctx(), list_request("subscriptions", 10, None, Some(r#"{"plan":"x"}"#)));
    assert!(matches!(error, Err(Error::InvalidInput(_))), "{error:?}");
}

#[test]
fn sources_are_listed_as_one_page() {
    let (_guard, _) = script(&[(Method::Get, "/v1/sources", 200, SOURCES)]);
    let page = Baremetrics::list(&ctx(), list_request("sources", 200, None, None)).expect("page");
    assert_eq!(page.records.len(), 2);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn an_account_without_a_native_source_must_name_one() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/sources",
        200,
        r#"{"sources":[{"id":"src_stripe","provider":"stripe"}]}"#,
    )]);
    let error = Baremetrics::get(&ctx(), "customers", "customer_1");
    assert!(
        matches!(&error, Err(Error::InvalidInput(m)) if m.contains("`source_id`")),
        "{error:?}"
    );
}

#[test]
fn get_unwraps_the_customer_and_nothing_when_absent() {
    let (_guard, _) = script(&[
        (Method::Get, "/v1/src_bm/customers/customer_1", 200, &wrapped(CUSTOMER_1)),
        (Method::Get, "/v1/src_bm/customers/nobody", 404, NOT_FOUND),
        (Method::Get, "/v1/src_bm/customers/x", 404, "<html>nope</html>"),
    ]);
    let ctx = ctx_with_source("src_bm");
    assert_eq!(Baremetrics::get(&ctx, "customers", "customer_1"), Ok(Some(CUSTOMER_1.to_string())));
    assert_eq!(Baremetrics::get(&ctx, "customers", "nobody"), Ok(None));
    let error = Baremetrics::get(&ctx, "customers", "x");
    assert!(matches!(error, Err(Error::NotFound(_))), "a foreign 404 is an error: {error:?}");
}

#[test]
fn upsert_merges_over_the_current_record_and_puts_the_whole() {
    let after = r#"{"oid":"customer_1","name":"Customer One","email":"customer_1@baremetrics.com","notes":"Here are some notes"}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/customer_1", 200, &wrapped(CUSTOMER_1)),
        (Method::Put, "/v1/src_bm/customers/customer_1", 200, &wrapped(after)),
    ]);
    let outcome = Baremetrics::upsert(
        &ctx(),
        upsert_request(r#"{"oid":"customer_1","name":"Customer One","ltv":1}"#),
    )
    .expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(outcome.record, after);
    // Email and notes were not in the desired record, yet they are sent:
    // a PUT without them would clear them.
    assert_eq!(
        testing::body_text(&seen.borrow()[2]),
        r#"{"email":"customer_1@baremetrics.com","name":"Customer One","notes":"Here are some notes"}"#
    );
}

#[test]
fn upsert_that_already_matches_writes_nothing() {
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/customer_1", 200, &wrapped(CUSTOMER_1)),
    ]);
    let outcome = Baremetrics::upsert(&ctx(), upsert_request(CUSTOMER_1)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Unchanged);
    assert_eq!(outcome.record, CUSTOMER_1);
    assert_eq!(seen.borrow().len(), 2);
}

#[test]
fn created_as_a_date_time_is_sent_as_the_unix_timestamp_and_compared_as_one() {
    let created = r#"{"oid":"cust_new","created":1704164645,"source":"baremetrics"}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/cust_new", 404, NOT_FOUND),
        (Method::Post, "/v1/src_bm/customers", 200, &wrapped(created)),
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/cust_new", 200, &wrapped(created)),
    ]);
    // The regression: the date-time went out as a string, which Baremetrics
    // keeps as an integer, and every later upsert saw a change.
    let record = r#"{"oid":"cust_new","created":"2024-01-02T03:04:05Z"}"#;
    let outcome =
        Baremetrics::upsert(&ctx_with_source("src_bm"), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(testing::body_text(&seen.borrow()[2]), r#"{"created":1704164645,"oid":"cust_new"}"#);
    let again =
        Baremetrics::upsert(&ctx_with_source("src_bm"), upsert_request(record)).expect("outcome");
    assert_eq!(again.action, UpsertAction::Unchanged);
    assert_eq!(seen.borrow().len(), 5, "no write the second time");
}

#[test]
fn created_that_is_no_time_is_invalid_input_before_anything_is_sent() {
    let (_guard, seen) = script(&[]);
    let record = r#"{"oid":"cust_new","created":"last tuesday"}"#;
    let error = Baremetrics::upsert(&ctx_with_source("src_bm"), upsert_request(record));
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("RFC 3339")), "{error:?}");
    assert!(seen.borrow().is_empty());
}

#[test]
fn upsert_of_an_absent_customer_creates_it() {
    let created = r#"{"oid":"cust_new","name":"John Smith","email":"john@example.com","source":"baremetrics"}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/cust_new", 404, NOT_FOUND),
        (Method::Post, "/v1/src_bm/customers", 200, &wrapped(created)),
    ]);
    let record = r#"{"oid":"cust_new","name":"John Smith","email":"john@example.com","notes":null,"current_mrr":0}"#;
    let outcome =
        Baremetrics::upsert(&ctx_with_source("src_bm"), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(outcome.record, created);
    assert_eq!(
        testing::body_text(&seen.borrow()[2]),
        r#"{"email":"john@example.com","name":"John Smith","oid":"cust_new"}"#
    );
}

#[test]
fn writes_to_a_stripe_synced_source_are_unsupported_and_say_why() {
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/sources", 200, SOURCES),
    ]);
    let ctx = ctx_with_source("src_stripe");
    let error = Baremetrics::upsert(&ctx, upsert_request(r#"{"oid":"customer_1","name":"x"}"#));
    let Err(Error::Unsupported(message)) = error else {
        panic!("expected unsupported, got {error:?}");
    };
    assert!(message.contains("`stripe` source") && message.contains("read-only"), "{message}");
    let error = Baremetrics::remove(&ctx, "customers", "customer_1");
    assert!(matches!(error, Err(Error::Unsupported(_))), "{error:?}");
    assert!(seen.borrow().iter().all(|request| request.method == Method::Get));
}

#[test]
fn a_source_id_that_is_not_the_accounts_is_invalid_input() {
    let (_guard, _) = script(&[(Method::Get, "/v1/sources", 200, SOURCES)]);
    let error = Baremetrics::upsert(
        &ctx_with_source("src_typo"),
        upsert_request(r#"{"oid":"c","name":"x"}"#),
    );
    assert!(matches!(error, Err(Error::InvalidInput(_))), "{error:?}");
}

#[test]
fn upsert_needs_an_oid() {
    let error = Baremetrics::upsert(&ctx(), upsert_request(r#"{"id":"x","name":"x"}"#));
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("`oid`")), "{error:?}");
}

#[test]
fn remove_deletes_and_reports_absent_customers() {
    let (_guard, _) = script(&[
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/customer_1", 200, &wrapped(CUSTOMER_1)),
        (Method::Delete, "/v1/src_bm/customers/customer_1", 204, ""),
        (Method::Get, "/v1/sources", 200, SOURCES),
        (Method::Get, "/v1/src_bm/customers/customer_1", 404, NOT_FOUND),
    ]);
    assert_eq!(Baremetrics::remove(&ctx(), "customers", "customer_1"), Ok(RemoveOutcome::Removed));
    assert_eq!(
        Baremetrics::remove(&ctx(), "customers", "customer_1"),
        Ok(RemoveOutcome::AlreadyAbsent)
    );
}

#[test]
fn a_429_without_retry_after_is_rate_limited_with_no_delay() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/src_bm/customers/customer_1",
        429,
        r#"{"error":"Too many requests"}"#,
    )]);
    assert_eq!(
        Baremetrics::get(&ctx_with_source("src_bm"), "customers", "customer_1"),
        Err(Error::rate_limited(None, "baremetrics: HTTP 429: Too many requests"))
    );
}

#[test]
fn merge_clears_with_empty_strings_and_lays_attributes_over() {
    let current = object(json!({"oid": "c", "name": "A", "email": "a@x", "notes": "n",
        "attributes": {"tier": "gold", "region": "eu"}}));
    let desired = object(
        json!({"oid": "c", "notes": null, "attributes": {"tier": "silver", "region": null}}),
    );
    assert_eq!(
        merged_put(&desired, &current).map(Value::Object),
        Some(json!({"name": "A", "email": "a@x", "notes": "", "attributes": {"tier": "silver"}}))
    );
    let same = object(json!({"oid": "c", "notes": "n", "attributes": {"tier": "gold"}, "ltv": 5}));
    assert_eq!(merged_put(&same, &current), None);
    // A PUT without attributes would clear them: they are sent back as they are.
    let rename = object(json!({"oid": "c", "name": "B"}));
    assert_eq!(
        merged_put(&rename, &current).map(Value::Object),
        Some(json!({"name": "B", "email": "a@x", "notes": "n",
                    "attributes": {"tier": "gold", "region": "eu"}}))
    );
    let create = for_create("c", &object(json!({"name": "A", "display_name": "A", "notes": null})));
    assert_eq!(Value::Object(create), json!({"name": "A", "oid": "c"}));
}

#[test]
fn only_customers_offer_get_upsert_and_remove() {
    let error = Baremetrics::get(&ctx(), "subscriptions", "s");
    assert!(matches!(error, Err(Error::Unsupported(_))), "{error:?}");
    let error = Baremetrics::get(&ctx(), "plans", "p");
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn manifest_keys_customers_by_oid_and_publishes_no_limits() {
    let manifest = Baremetrics::describe();
    assert_eq!(manifest.name, "baremetrics");
    assert_eq!(manifest.default_base_url, "https://api.baremetrics.com");
    assert!(manifest.rate_limits.is_empty());
    let customers = &manifest.resources[0];
    assert_eq!(customers.id_field, "oid");
    assert_eq!(customers.max_page_size, 200);
    assert_eq!(customers.irreversible, [Op::Remove]);
    assert!(manifest.settings.iter().any(|s| s.name == "source_id" && !s.required));
}
