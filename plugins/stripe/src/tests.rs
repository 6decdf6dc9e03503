//! Native tests of the connector's flows: each test scripts Stripe's answers
//! through the SDK's HTTP test double and checks the requests sent.

use weft_connector_sdk::http::testing::{self, Responding};
use weft_connector_sdk::http::{Method, Request};
use weft_connector_sdk::{
    Connector, Context, Error, ListRequest, Op, RemoveOutcome, UpsertAction, UpsertRequest,
};

use crate::Stripe;
use crate::customers::stripe_error;

const BASE: &str = "https://api.stripe.com";

/// Answers the expected requests in order and records what was sent.
fn script(steps: &[(Method, &str, u16, &str)]) -> (Responding, testing::Sent) {
    testing::script(BASE, steps)
}

fn ctx() -> Context {
    Context { base_url: BASE.into(), settings: Vec::new() }
}

fn list_request(page_size: u32, cursor: Option<&str>, filter: Option<&str>) -> ListRequest {
    ListRequest {
        resource: "customers".into(),
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

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

const CUS_1: &str = r#"{"id":"cus_1","object":"customer","email":"jo@example.com","name":"Jo","phone":null,"metadata":{"plan":"pro"},"address":null,"deleted":false}"#;
const MISSING: &str = r#"{"error":{"code":"resource_missing","message":"No such customer: 'cus_9'","param":"id","type":"invalid_request_error"}}"#;

#[test]
fn list_asks_for_at_most_100_and_passes_filters_as_query_parameters() {
    let body = format!(
        r#"{{"object":"list","data":[{CUS_1}, {{"id":"cus_2"}}],"has_more":true,"url":"/v1/customers"}}"#
    );
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/customers?limit=100&starting_after=cus_0&created%5Bgte%5D=1700000000&email=jo%40example.com",
        200,
        &body,
    )]);
    let filter = r#"{"email":"jo@example.com","created":{"gte":1700000000}}"#;
    let page = Stripe::list(&ctx(), list_request(500, Some("cus_0"), Some(filter))).expect("page");
    assert_eq!(page.records, [CUS_1, r#"{"id":"cus_2"}"#]);
    assert_eq!(page.next_cursor.as_deref(), Some("cus_2"));
}

#[test]
fn the_last_page_has_no_cursor() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/customers?limit=2",
        200,
        r#"{"object":"list","data":[{"id":"cus_1"}],"has_more":false}"#,
    )]);
    let page = Stripe::list(&ctx(), list_request(2, None, None)).expect("page");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn a_filter_may_not_set_paging_parameters() {
    let error = Stripe::list(&ctx(), list_request(10, None, Some(r#"{"limit": 5}"#)));
    assert!(matches!(error, Err(Error::InvalidInput(_))), "{error:?}");
    let error = Stripe::list(&ctx(), list_request(10, None, Some("[1]")));
    assert!(matches!(error, Err(Error::InvalidInput(_))), "{error:?}");
}

#[test]
fn unknown_resources_are_not_found() {
    // Refused by the SDK from the manifest, before the connector runs.
    use weft_connector_sdk::__private::Adapter;
    use weft_connector_sdk::wit::exports::weft::connector0_1_0::plugin::Guest;
    let error = <Adapter<Stripe> as Guest>::get(ctx(), "invoices".into(), "in_1".into());
    use weft_connector_sdk::wit::weft::connector0_1_0::types::ConnectorError;
    assert!(matches!(error, Err(ConnectorError::NotFound(_))), "{error:?}");
}

#[test]
fn get_returns_nothing_for_deleted_or_missing_customers() {
    let (_guard, _) = script(&[
        (Method::Get, "/v1/customers/cus_1", 200, CUS_1),
        (
            Method::Get,
            "/v1/customers/cus_8",
            200,
            r#"{"id":"cus_8","object":"customer","deleted":true}"#,
        ),
        (Method::Get, "/v1/customers/cus_9", 404, MISSING),
    ]);
    assert_eq!(Stripe::get(&ctx(), "customers", "cus_1"), Ok(Some(CUS_1.to_string())));
    assert_eq!(Stripe::get(&ctx(), "customers", "cus_8"), Ok(None));
    assert_eq!(Stripe::get(&ctx(), "customers", "cus_9"), Ok(None));
}

#[test]
fn a_404_that_is_not_stripes_is_an_error_not_absence() {
    let (_guard, _) =
        script(&[(Method::Get, "/v1/customers/cus_1", 404, "<html>Not Found</html>")]);
    let error = Stripe::get(&ctx(), "customers", "cus_1");
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn ids_are_percent_encoded_in_paths() {
    let (_guard, _) = script(&[(Method::Get, "/v1/customers/cus_1%2F..%3Fx", 404, MISSING)]);
    assert_eq!(Stripe::get(&ctx(), "customers", "cus_1/..?x"), Ok(None));
}

#[test]
fn upsert_by_id_that_already_matches_writes_nothing() {
    let (_guard, seen) = script(&[(Method::Get, "/v1/customers/cus_1", 200, CUS_1)]);
    let record =
        r#"{"id":"cus_1","email":"jo@example.com","metadata":{"plan":"pro"},"object":"customer"}"#;
    let outcome = Stripe::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Unchanged);
    assert_eq!(outcome.record, CUS_1);
    assert_eq!(seen.borrow().len(), 1);
}

#[test]
fn upsert_by_id_sends_only_what_differs() {
    let updated = r#"{"id":"cus_1","name":"Joanna","metadata":{"plan":"pro","seats":"3"}}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/customers/cus_1", 200, CUS_1),
        (Method::Post, "/v1/customers/cus_1", 200, updated),
    ]);
    let record = r#"{"id":"cus_1","name":"Joanna","email":"jo@example.com","metadata":{"plan":"pro","seats":3}}"#;
    let outcome = Stripe::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(outcome.record, updated);
    let seen = seen.borrow();
    let post = &seen[1];
    assert_eq!(testing::body_text(post), "metadata[seats]=3&name=Joanna");
    assert_eq!(header(post, "content-type"), Some("application/x-www-form-urlencoded"));
    assert!(post.idempotent);
    assert_eq!(header(post, "idempotency-key"), None);
}

#[test]
fn upsert_by_id_of_a_deleted_customer_is_not_found() {
    let (_guard, _) =
        script(&[(Method::Get, "/v1/customers/cus_8", 200, r#"{"id":"cus_8","deleted":true}"#)]);
    let error = Stripe::upsert(&ctx(), upsert_request(r#"{"id":"cus_8","name":"x"}"#));
    assert!(matches!(&error, Err(Error::NotFound(m)) if m.contains("cus_8")), "{error:?}");
}

#[test]
fn upsert_by_new_email_creates_with_the_idempotency_key() {
    let created = r#"{"id":"cus_new","email":"new@example.com"}"#;
    let (_guard, seen) = script(&[
        (
            Method::Get,
            "/v1/customers?email=new%40example.com&limit=2",
            200,
            r#"{"data":[],"has_more":false}"#,
        ),
        (Method::Post, "/v1/customers", 200, created),
    ]);
    let record =
        r#"{"email":"new@example.com","phone":null,"metadata":{"source":"weft"},"currency":"usd"}"#;
    let outcome = Stripe::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(outcome.record, created);
    let seen = seen.borrow();
    assert_eq!(testing::body_text(&seen[1]), "email=new%40example.com&metadata[source]=weft");
    assert_eq!(header(&seen[1], "idempotency-key"), Some("run1-step2-item3"));
    assert!(seen[1].idempotent);
}

#[test]
fn upsert_by_email_updates_the_one_match() {
    let list = format!(r#"{{"data":[{CUS_1}],"has_more":false}}"#);
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/customers?email=jo%40example.com&limit=2", 200, &list),
        (Method::Post, "/v1/customers/cus_1", 200, r#"{"id":"cus_1","name":"Jo B"}"#),
    ]);
    let outcome =
        Stripe::upsert(&ctx(), upsert_request(r#"{"email":"jo@example.com","name":"Jo B"}"#))
            .expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(testing::body_text(&seen.borrow()[1]), "name=Jo%20B");
}

#[test]
fn upsert_by_a_shared_email_is_a_conflict_naming_the_customers() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/v1/customers?email=jo%40example.com&limit=2",
        200,
        r#"{"data":[{"id":"cus_1"},{"id":"cus_2"}],"has_more":true}"#,
    )]);
    let error = Stripe::upsert(&ctx(), upsert_request(r#"{"email":"jo@example.com"}"#));
    let Err(Error::Conflict(message)) = error else {
        panic!("expected a conflict, got {error:?}");
    };
    assert!(message.contains("cus_1, cus_2 and more"), "{message}");
}

#[test]
fn lookup_finds_what_the_upsert_would_match_and_writes_nothing() {
    let list = format!(r#"{{"data":[{CUS_1}],"has_more":false}}"#);
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/customers?email=jo%40example.com&limit=2", 200, &list),
        (Method::Get, "/v1/customers?email=new%40example.com&limit=2", 200, r#"{"data":[]}"#),
        (
            Method::Get,
            "/v1/customers?email=two%40example.com&limit=2",
            200,
            r#"{"data":[{"id":"cus_1"},{"id":"cus_2"}],"has_more":false}"#,
        ),
    ]);
    let found = Stripe::lookup(&ctx(), "customers", r#"{"email":"jo@example.com"}"#.into());
    assert_eq!(found.expect("lookup").as_deref(), Some(CUS_1));
    let absent = Stripe::lookup(&ctx(), "customers", r#"{"email":"new@example.com"}"#.into());
    assert_eq!(absent.expect("lookup"), None, "the upsert would create");
    let shared = Stripe::lookup(&ctx(), "customers", r#"{"email":"two@example.com"}"#.into());
    assert!(matches!(&shared, Err(Error::Conflict(m)) if m.contains("cus_1, cus_2")), "{shared:?}");
    // No email and no id: the upsert creates, and nothing was asked.
    let anonymous = Stripe::lookup(&ctx(), "customers", r#"{"name":"Anon"}"#.into());
    assert_eq!(anonymous.expect("lookup"), None);
    assert!(seen.borrow().iter().all(|request| request.method == Method::Get), "only reads");
    assert_eq!(seen.borrow().len(), 3);
}

#[test]
fn upsert_without_id_or_email_creates() {
    let (_guard, seen) = script(&[(Method::Post, "/v1/customers", 200, r#"{"id":"cus_3"}"#)]);
    let outcome = Stripe::upsert(&ctx(), upsert_request(r#"{"name":"Anon"}"#)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(testing::body_text(&seen.borrow()[0]), "name=Anon");
}

#[test]
fn upsert_rejects_records_that_are_not_objects_or_have_odd_keys() {
    for record in ["[1]", "nope", r#"{"id": 5}"#, r#"{"email": 5}"#] {
        let error = Stripe::upsert(&ctx(), upsert_request(record));
        assert!(matches!(error, Err(Error::InvalidInput(_))), "{record}: {error:?}");
    }
}

#[test]
fn stripe_errors_surface_with_their_message() {
    let (_guard, _) = script(&[(
        Method::Post,
        "/v1/customers",
        400,
        r#"{"error":{"type":"invalid_request_error","message":"Invalid email address: x","param":"email"}}"#,
    )]);
    let error = Stripe::upsert(&ctx(), upsert_request(r#"{"name":"x"}"#));
    assert_eq!(
        error,
        Err(Error::invalid_input(
            "stripe: HTTP 400 invalid_request_error: Invalid email address: x (param: email)"
        ))
    );
}

#[test]
fn remove_deletes_an_existing_customer() {
    let (_guard, _) = script(&[
        (Method::Get, "/v1/customers/cus_1", 200, CUS_1),
        (
            Method::Delete,
            "/v1/customers/cus_1",
            200,
            r#"{"id":"cus_1","object":"customer","deleted":true}"#,
        ),
    ]);
    assert_eq!(Stripe::remove(&ctx(), "customers", "cus_1"), Ok(RemoveOutcome::Removed));
}

#[test]
fn removing_a_deleted_or_missing_customer_is_already_absent() {
    let (_guard, seen) = script(&[
        (Method::Get, "/v1/customers/cus_8", 200, r#"{"id":"cus_8","deleted":true}"#),
        (Method::Get, "/v1/customers/cus_9", 404, MISSING),
        (Method::Get, "/v1/customers/cus_1", 200, CUS_1),
        (Method::Delete, "/v1/customers/cus_1", 404, MISSING),
    ]);
    for id in ["cus_8", "cus_9", "cus_1"] {
        assert_eq!(
            Stripe::remove(&ctx(), "customers", id),
            Ok(RemoveOutcome::AlreadyAbsent),
            "{id}"
        );
    }
    assert_eq!(seen.borrow().len(), 4);
}

#[test]
fn api_version_setting_pins_the_stripe_version_header() {
    let (_guard, seen) = script(&[(Method::Get, "/v1/customers/cus_1", 200, CUS_1)]);
    let ctx = Context {
        base_url: BASE.into(),
        settings: vec![("api_version".into(), "2024-06-20".into())],
    };
    Stripe::get(&ctx, "customers", "cus_1").expect("record");
    assert_eq!(header(&seen.borrow()[0], "stripe-version"), Some("2024-06-20"));
}

#[test]
fn stripe_should_retry_and_idempotency_errors_adjust_the_case() {
    let mut lock = testing::response(
        409,
        r#"{"error":{"type":"invalid_request_error","code":"lock_timeout","message":"busy"}}"#,
    );
    lock.headers.push(("stripe-should-retry".into(), "true".into()));
    assert!(matches!(stripe_error(&lock), Error::Transient(_)));

    let mut broken = testing::response(500, r#"{"error":{"type":"api_error","message":"bad"}}"#);
    broken.headers.push(("stripe-should-retry".into(), "false".into()));
    assert!(matches!(stripe_error(&broken), Error::Fatal(_)));

    let reused = testing::response(
        400,
        r#"{"error":{"type":"idempotency_error","message":"Keys for idempotent requests can only be used with the same parameters"}}"#,
    );
    assert!(matches!(stripe_error(&reused), Error::Conflict(_)));
}

#[test]
fn manifest_declares_customers_and_the_published_limits() {
    let manifest = Stripe::describe();
    assert_eq!(manifest.name, "stripe");
    assert_eq!(manifest.default_base_url, "https://api.stripe.com");
    let customers = &manifest.resources[0];
    assert_eq!(customers.ops, [Op::List, Op::Get, Op::Upsert, Op::Remove]);
    assert_eq!(customers.irreversible, [Op::Remove]);
    assert_eq!((customers.max_page_size, customers.default_page_size), (100, 100));
    assert_eq!(manifest.rate_limits.len(), 8);
    let test_key_limits: Vec<u32> = manifest
        .rate_limits
        .iter()
        .filter(|limit| limit.credential_prefix.as_deref() == Some("sk_test_"))
        .map(|limit| limit.requests)
        .collect();
    assert_eq!(test_key_limits, [25, 25]);
}
