//! Native tests of the connector's flows: each test scripts GrowPanel's
//! answers (shaped after the OpenAPI description's examples) through the
//! SDK's HTTP test double and checks the requests sent.

use weft_connector_sdk::http::Method;
use weft_connector_sdk::http::testing::{self, Responding};
use weft_connector_sdk::{
    BatchItem, Connector, Context, Error, ListRequest, MethodClass, Op, RemoveOutcome,
    UpsertAction, UpsertRequest,
};

use crate::GrowPanel;

const BASE: &str = "https://api.growpanel.io";

/// Answers the expected requests in order and records what was sent.
fn script(steps: &[(Method, &str, u16, &str)]) -> (Responding, testing::Sent) {
    testing::script(BASE, steps)
}

fn ctx() -> Context {
    Context { base_url: BASE.into(), settings: vec![("source".into(), "ds_1".into())] }
}

fn list_request(page_size: u32, filter: Option<&str>) -> ListRequest {
    ListRequest {
        resource: "customers".into(),
        cursor: None,
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

const CUS_456: &str = r#"{"id":"cus_456","name":"Beta LLC","email":"billing@beta.example","country":"US","currency":"USD","status":"active","created_date":"2025-10-01T12:00:00.000Z","custom_variables":{"tier":"gold"}}"#;
const NOT_FOUND: &str = r#"{"error":"Customer not found"}"#;

#[test]
fn list_sends_source_and_one_more_than_the_page_and_ends_there() {
    let body = format!(r#"{{"result":{{"count":2,"list":[{CUS_456},{{"id":"cus_789"}}]}}}}"#);
    let (_guard, _) = script(&[(Method::Get, "/data/customers?source=ds_1&limit=3", 200, &body)]);
    let page = GrowPanel::list(&ctx(), list_request(2, None)).expect("page");
    assert_eq!(page.records, [CUS_456, r#"{"id":"cus_789"}"#]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn a_list_longer_than_the_page_gives_the_page_and_refuses_to_go_on() {
    let (_guard, _) = script(&[
        (
            Method::Get,
            "/data/customers?source=ds_1&limit=2",
            200,
            r#"{"result":{"count":2,"list":[{"id":"a"},{"id":"b"}]}}"#,
        ),
        (
            Method::Get,
            "/data/customers?source=ds_1&limit=3",
            200,
            r#"{"result":{"count":40,"list":[{"id":"a"},{"id":"b"}]}}"#,
        ),
    ]);
    // The regression: a list step with `limit = 2` failed outright; a page
    // that covers what was asked for is an answer, not an error.
    let first = GrowPanel::list(&ctx(), list_request(1, None)).expect("the first page");
    assert_eq!(first.records, [r#"{"id":"a"}"#]);
    let cursor = first.next_cursor.expect("a cursor saying there is more");
    let next = ListRequest { cursor: Some(cursor), ..list_request(1, None) };
    let error = GrowPanel::list(&ctx(), next);
    assert!(matches!(&error, Err(Error::Unsupported(m)) if m.contains("at least 2")), "{error:?}");
    let first = GrowPanel::list(&ctx(), list_request(2, None)).expect("the first page");
    assert_eq!(first.records.len(), 2);
    let next = ListRequest { cursor: first.next_cursor, ..list_request(2, None) };
    let error = GrowPanel::list(&ctx(), next);
    assert!(matches!(&error, Err(Error::Unsupported(m)) if m.contains("at least 40")), "{error:?}");
    // A cursor it never gave is bad input, and sends nothing.
    let forged = ListRequest { cursor: Some("page-2".into()), ..list_request(2, None) };
    let error = GrowPanel::list(&ctx(), forged);
    assert!(matches!(&error, Err(Error::InvalidInput(_))), "{error:?}");
}

#[test]
fn list_filter_may_name_another_source_and_nothing_else() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/data/customers?source=ds_2&limit=11",
        200,
        r#"{"result":{"count":0,"list":[]}}"#,
    )]);
    let page =
        GrowPanel::list(&ctx(), list_request(10, Some(r#"{"source":"ds_2"}"#))).expect("page");
    assert!(page.records.is_empty());
    let error = GrowPanel::list(&ctx(), list_request(10, Some(r#"{"email":"x"}"#)));
    assert!(matches!(error, Err(Error::InvalidInput(_))), "{error:?}");
}

#[test]
fn reads_without_the_source_setting_name_it() {
    let ctx = Context { base_url: BASE.into(), settings: Vec::new() };
    let error = GrowPanel::get(&ctx, "customers", "cus_1");
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("`source`")), "{error:?}");
}

#[test]
fn get_reads_the_record_and_nothing_when_absent() {
    let (_guard, _) = script(&[
        (Method::Get, "/data/customers/cus_456?source=ds_1", 200, CUS_456),
        (
            Method::Get,
            "/data/customers/cus_7?source=ds_1",
            200,
            &format!(r#"{{"result":{CUS_456}}}"#),
        ),
        (Method::Get, "/data/customers/cus_9?source=ds_1", 404, NOT_FOUND),
    ]);
    assert_eq!(GrowPanel::get(&ctx(), "customers", "cus_456"), Ok(Some(CUS_456.to_string())));
    assert_eq!(GrowPanel::get(&ctx(), "customers", "cus_7"), Ok(Some(CUS_456.to_string())));
    assert_eq!(GrowPanel::get(&ctx(), "customers", "cus_9"), Ok(None));
}

#[test]
fn a_404_that_is_not_growpanels_is_an_error_not_absence() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/data/customers/cus_1?source=ds_1",
        404,
        "<html>Not Found</html>",
    )]);
    let error = GrowPanel::get(&ctx(), "customers", "cus_1");
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn upsert_of_a_new_customer_posts_the_required_fields_with_the_default_source() {
    let created = r#"{"id":"cus_1","name":"Acme Inc","created_date":"2025-01-15","country":"us","data_source":"ds_1","export_status":"success"}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/data/customers/cus_1?source=ds_1", 404, NOT_FOUND),
        (Method::Post, "/data/customers", 200, &format!(r#"{{"result":[{created}]}}"#)),
    ]);
    let record = r#"{"id":"cus_1","name":"Acme Inc","created_date":"2025-01-15","country":"us","email":null}"#;
    let outcome = GrowPanel::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(outcome.record, created);
    let seen = seen.borrow();
    assert_eq!(
        testing::body_text(&seen[1]),
        r#"{"country":"us","created_date":"2025-01-15","data_source":"ds_1","id":"cus_1","name":"Acme Inc"}"#
    );
    assert!(seen[1].idempotent);
}

#[test]
fn upsert_create_missing_a_required_field_fails_before_sending() {
    let (_guard, seen) =
        script(&[(Method::Get, "/data/customers/cus_1?source=ds_1", 404, NOT_FOUND)]);
    let error =
        GrowPanel::upsert(&ctx(), upsert_request(r#"{"id":"cus_1","name":"Acme","country":"us"}"#));
    assert_eq!(
        error,
        Err(Error::invalid_input(
            "growpanel: cannot create customer `cus_1`: the record has no `created_date`, which \
             POST /data/customers requires"
        ))
    );
    assert_eq!(seen.borrow().len(), 1, "nothing but the lookup was sent");
    let error = GrowPanel::upsert(&ctx(), upsert_request(r#"{"name":"no id"}"#));
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("`id`")), "{error:?}");
}

#[test]
fn upsert_create_rejected_by_growpanel_is_invalid_input() {
    let (_guard, _) = script(&[
        (Method::Get, "/data/customers/cus_1?source=ds_1", 404, NOT_FOUND),
        (
            Method::Post,
            "/data/customers",
            200,
            r#"{"result":[{"id":"cus_1","export_status":"error","export_error":"Email or name is required"}]}"#,
        ),
    ]);
    let record = r#"{"id":"cus_1","created_date":"2025-01-15","country":"us"}"#;
    assert_eq!(
        GrowPanel::upsert(&ctx(), upsert_request(record)),
        Err(Error::invalid_input(
            "growpanel: POST /data/customers rejected customer `cus_1`: Email or name is required"
        ))
    );
}

#[test]
fn upsert_of_an_existing_customer_puts_only_updatable_changes_and_reads_back() {
    let after = r#"{"id":"cus_456","name":"Beta Inc","email":"billing@beta.example","country":"US","custom_variables":{"tier":"gold","seats":"5"}}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/data/customers/cus_456?source=ds_1", 200, CUS_456),
        (Method::Put, "/data/customers/cus_456", 200, r#"{"success":true,"id":"cus_456"}"#),
        (Method::Get, "/data/customers/cus_456?source=ds_1", 200, after),
    ]);
    let record = r#"{"id":"cus_456","name":"Beta Inc","email":"billing@beta.example","country":"GB","custom_variables":{"seats":"5"}}"#;
    let outcome = GrowPanel::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(outcome.record, after);
    assert_eq!(
        testing::body_text(&seen.borrow()[1]),
        r#"{"custom_variables":{"seats":"5","tier":"gold"},"name":"Beta Inc"}"#
    );
}

#[test]
fn upsert_that_already_matches_writes_nothing() {
    let (_guard, seen) =
        script(&[(Method::Get, "/data/customers/cus_456?source=ds_1", 200, CUS_456)]);
    let record = r#"{"id":"cus_456","name":"Beta LLC","email":"billing@beta.example","custom_variables":{"tier":"gold"}}"#;
    let outcome = GrowPanel::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Unchanged);
    assert_eq!(outcome.record, CUS_456);
    assert_eq!(seen.borrow().len(), 1);
}

#[test]
fn batch_posts_valid_rows_as_one_array_and_reports_each_item_in_order() {
    let (_guard, seen) = script(&[(
        Method::Post,
        "/data/customers",
        200,
        r#"{"result":[
            {"id":"a","created_date":"2025-01-01","country":"us","data_source":"ds_1","export_status":"success"},
            {"id":"c","created_date":"2025-01-01","country":"zz","data_source":"ds_9","export_status":"error","export_error":"invalid country"}
        ]}"#,
    )]);
    let items = [
        r#"{"id":"a","created_date":"2025-01-01","country":"us"}"#,
        r#"{"id":"b","country":"us"}"#,
        r#"{"id":"c","created_date":"2025-01-01","country":"zz","data_source":"ds_9"}"#,
        "[]",
    ]
    .map(|record| BatchItem { record: record.into(), idempotency_key: "k".into() });
    let outcomes = GrowPanel::upsert_batch(&ctx(), "customers", items.to_vec()).expect("outcomes");
    assert_eq!(outcomes.len(), 4);
    assert!(
        matches!(&outcomes[0], Ok(o) if o.action == UpsertAction::Created && o.record.contains(r#""id":"a""#))
    );
    assert!(matches!(&outcomes[1], Err(Error::InvalidInput(m)) if m.contains("`created_date`")));
    assert!(matches!(&outcomes[2], Err(Error::InvalidInput(m)) if m.contains("invalid country")));
    assert!(matches!(&outcomes[3], Err(Error::InvalidInput(_))));
    let seen = seen.borrow();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        testing::body_text(&seen[0]),
        r#"[{"country":"us","created_date":"2025-01-01","data_source":"ds_1","id":"a"},{"country":"zz","created_date":"2025-01-01","data_source":"ds_9","id":"c"}]"#
    );
}

#[test]
fn batch_reads_the_guides_count_and_list_answer_by_id() {
    let (_guard, _) = script(&[(
        Method::Post,
        "/data/customers",
        201,
        r#"{"result":{"count":1,"list":[{"id":"b"}]}}"#,
    )]);
    let items = ["a", "b"].map(|id| BatchItem {
        record: format!(r#"{{"id":"{id}","created_date":"2025-01-01","country":"us"}}"#),
        idempotency_key: "k".into(),
    });
    let outcomes = GrowPanel::upsert_batch(&ctx(), "customers", items.to_vec()).expect("outcomes");
    assert!(matches!(&outcomes[0], Err(Error::Fatal(m)) if m.contains("`a`")));
    assert!(matches!(&outcomes[1], Ok(o) if o.record == r#"{"id":"b"}"#));
}

#[test]
fn batch_with_nothing_valid_sends_nothing() {
    let (_guard, seen) = script(&[]);
    let items = vec![BatchItem { record: r#"{"id":"x"}"#.into(), idempotency_key: "k".into() }];
    let outcomes = GrowPanel::upsert_batch(&ctx(), "customers", items).expect("outcomes");
    assert!(matches!(&outcomes[0], Err(Error::InvalidInput(_))));
    assert!(seen.borrow().is_empty());
}

#[test]
fn remove_deletes_an_existing_customer_and_reports_absent_ones() {
    let (_guard, _) = script(&[
        (Method::Get, "/data/customers/cus_456?source=ds_1", 200, CUS_456),
        (
            Method::Delete,
            "/data/customers/cus_456",
            200,
            r#"{"result":{"id":"cus_456","deleted":true}}"#,
        ),
        (Method::Get, "/data/customers/cus_9?source=ds_1", 404, NOT_FOUND),
    ]);
    assert_eq!(GrowPanel::remove(&ctx(), "customers", "cus_456"), Ok(RemoveOutcome::Removed));
    assert_eq!(GrowPanel::remove(&ctx(), "customers", "cus_9"), Ok(RemoveOutcome::AlreadyAbsent));
}

#[test]
fn errors_name_growpanel_and_the_status() {
    let (_guard, _) = script(&[
        (Method::Get, "/data/customers/cus_1?source=ds_1", 401, r#"{"error":"Unauthorized"}"#),
        (
            Method::Get,
            "/data/customers/cus_1?source=ds_1",
            429,
            r#"{"message":"Too many requests"}"#,
        ),
    ]);
    assert_eq!(
        GrowPanel::get(&ctx(), "customers", "cus_1"),
        Err(Error::unauthorized("growpanel: HTTP 401: Unauthorized"))
    );
    assert_eq!(
        GrowPanel::get(&ctx(), "customers", "cus_1"),
        Err(Error::rate_limited(None, "growpanel: HTTP 429: Too many requests"))
    );
}

#[test]
fn ids_are_percent_encoded_in_paths() {
    let (_guard, _) =
        script(&[(Method::Get, "/data/customers/a%2F..%3Fx?source=ds_1", 404, NOT_FOUND)]);
    assert_eq!(GrowPanel::get(&ctx(), "customers", "a/..?x"), Ok(None));
}

#[test]
fn unknown_resources_are_not_found() {
    // Refused by the SDK from the manifest, before the connector runs.
    use weft_connector_sdk::__private::Adapter;
    use weft_connector_sdk::wit::exports::weft::connector0_1_0::plugin::Guest;
    let error = <Adapter<GrowPanel> as Guest>::get(ctx(), "invoices".into(), "in_1".into());
    use weft_connector_sdk::wit::weft::connector0_1_0::types::ConnectorError;
    assert!(matches!(error, Err(ConnectorError::NotFound(_))), "{error:?}");
}

#[test]
fn manifest_declares_customers_batch_and_the_published_limits() {
    let manifest = GrowPanel::describe();
    assert_eq!(manifest.name, "growpanel");
    assert_eq!(manifest.default_base_url, "https://api.growpanel.io");
    let customers = &manifest.resources[0];
    assert!(customers.ops.contains(&Op::UpsertBatch));
    assert_eq!(customers.irreversible, [Op::Remove]);
    let limits: Vec<(MethodClass, u32, u32)> = manifest
        .rate_limits
        .iter()
        .map(|limit| (limit.method_class, limit.requests, limit.per_seconds))
        .collect();
    assert_eq!(
        limits,
        [
            (MethodClass::Get, 300, 60),
            (MethodClass::Post, 100, 60),
            (MethodClass::Put, 100, 60),
            (MethodClass::Delete, 50, 60),
        ]
    );
    assert!(manifest.settings.iter().any(|s| s.name == "source" && s.required));
}
