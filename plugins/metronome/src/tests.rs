//! Native tests of the connector's flows: each test scripts Metronome's
//! answers (shaped after the OpenAPI description's examples) through the
//! SDK's HTTP test double and checks the requests sent.

use weft_connector_sdk::http::testing::{self, Responding};
use weft_connector_sdk::http::{Method, Request};
use weft_connector_sdk::{
    Connector, Context, Error, ListRequest, Op, RemoveOutcome, UpsertAction, UpsertRequest,
};

use crate::Metronome;

const BASE: &str = "https://api.metronome.com/v1";

/// Answers the expected requests in order and records what was sent.
fn script(steps: &[(Method, &str, u16, &str)]) -> (Responding, testing::Sent) {
    testing::script(BASE, steps)
}

fn ctx() -> Context {
    Context { base_url: BASE.into(), settings: Vec::new() }
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

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

const ID: &str = "d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc";
const OTHER: &str = "8deed800-1b7a-495d-a207-6c52bac54dc9";
const EXAMPLE: &str = r#"{"id":"d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc","external_id":"team@example.com","ingest_aliases":["team@example.com"],"name":"Example, Inc.","customer_config":{"salesforce_account_id":"0015500001WO1ZiABL"},"custom_fields":{"x_account_id":"KyVnHhSBWl7eY2bl"}}"#;
/// The example as a newer API renders it, saying it is not archived.
const LIVE: &str = r#"{"id":"d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc","external_id":"team@example.com","ingest_aliases":["team@example.com"],"name":"Example, Inc.","customer_config":{"salesforce_account_id":"0015500001WO1ZiABL"},"custom_fields":{"x_account_id":"KyVnHhSBWl7eY2bl"},"archived_at":null}"#;
const NOT_FOUND: &str = r#"{"message":"Customer not found"}"#;
const EMPTY: &str = r#"{"data":[],"next_page":null}"#;

fn data(record: &str) -> String {
    format!(r#"{{"data":{record}}}"#)
}

fn list_of(record: &str) -> String {
    format!(r#"{{"data":[{record}],"next_page":null}}"#)
}

#[test]
fn list_pages_with_limit_and_the_next_page_cursor() {
    let first = format!(r#"{{"data":[{EXAMPLE}],"next_page":"cursor_2"}}"#);
    let (_guard, _) = script(&[
        (Method::Get, "/customers?limit=100", 200, &first),
        (Method::Get, "/customers?limit=1&next_page=cursor_2", 200, EMPTY),
    ]);
    let page = Metronome::list(&ctx(), list_request("customers", 500, None, None)).expect("page");
    assert_eq!(page.records, [EXAMPLE]);
    assert_eq!(page.next_cursor.as_deref(), Some("cursor_2"));
    let page = Metronome::list(&ctx(), list_request("customers", 1, Some("cursor_2"), None))
        .expect("page");
    assert!(page.records.is_empty());
    assert_eq!(page.next_cursor, None);
}

#[test]
fn list_filters_become_query_parameters_and_paging_ones_are_refused() {
    let (_guard, _) = script(&[(
        Method::Get,
        "/customers?limit=10&customer_ids=a&customer_ids=b&only_archived=true",
        200,
        EMPTY,
    )]);
    let filter = r#"{"customer_ids":["a","b"],"only_archived":true}"#;
    Metronome::list(&ctx(), list_request("customers", 10, None, Some(filter))).expect("page");
    for filter in [r#"{"next_page":"x"}"#, r#"{"email":"x"}"#, "[1]"] {
        let error = Metronome::list(&ctx(), list_request("customers", 10, None, Some(filter)));
        assert!(matches!(error, Err(Error::InvalidInput(_))), "{filter}: {error:?}");
    }
}

#[test]
fn get_unwraps_the_data_envelope_and_hides_missing_or_archived_customers_however_marked() {
    let archived = r#"{"id":"a","name":"Gone","archived_at":"2024-01-01T00:00:00Z"}"#;
    let (_guard, _) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(EXAMPLE)),
        (
            Method::Get,
            &format!("/customers?customer_ids={ID}&only_archived=true&limit=1"),
            200,
            EMPTY,
        ),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(EXAMPLE)),
        (
            Method::Get,
            &format!("/customers?customer_ids={ID}&only_archived=true&limit=1"),
            200,
            &list_of(EXAMPLE),
        ),
        (Method::Get, &format!("/customers/{OTHER}"), 200, &data(archived)),
        (Method::Get, "/customers/00000000-0000-0000-0000-000000000000", 404, NOT_FOUND),
    ]);
    assert_eq!(Metronome::get(&ctx(), "customers", ID), Ok(Some(LIVE.to_string())));
    // A v1 record does not say whether it is archived: the archived list does.
    assert_eq!(Metronome::get(&ctx(), "customers", ID), Ok(Some(EXAMPLE.to_string())));
    assert_eq!(Metronome::get(&ctx(), "customers", ID), Ok(None));
    assert_eq!(Metronome::get(&ctx(), "customers", OTHER), Ok(None));
    assert_eq!(
        Metronome::get(&ctx(), "customers", "00000000-0000-0000-0000-000000000000"),
        Ok(None)
    );
    // Not a UUID: Metronome would answer 400; nothing is asked.
    assert_eq!(Metronome::get(&ctx(), "customers", "cus_1"), Ok(None));
}

#[test]
fn a_404_without_a_metronome_body_is_an_error_not_absence() {
    let (_guard, _) =
        script(&[(Method::Get, &format!("/customers/{ID}"), 404, "404 page not found")]);
    let error = Metronome::get(&ctx(), "customers", ID);
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn upsert_of_a_new_customer_checks_its_keys_then_creates_with_the_idempotency_key() {
    let created = r#"{"id":"new-id","external_id":"acme-1","ingest_aliases":["acme-1","acme@example.com"],"name":"Acme"}"#;
    let (_guard, seen) = script(&[
        (Method::Get, "/customers?ingest_alias=acme-1&limit=2", 200, EMPTY),
        (Method::Get, "/customers?ingest_alias=acme%40example.com&limit=2", 200, EMPTY),
        (Method::Post, "/customers", 200, &data(created)),
    ]);
    let record =
        r#"{"name":"Acme","external_id":"acme-1","ingest_aliases":["acme-1","acme@example.com"]}"#;
    let outcome = Metronome::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(outcome.record, created);
    let seen = seen.borrow();
    assert_eq!(
        testing::body_text(&seen[2]),
        r#"{"external_id":"acme-1","ingest_aliases":["acme-1","acme@example.com"],"name":"Acme"}"#
    );
    assert_eq!(header(&seen[2], "idempotency-key"), Some("run1-step2-item3"));
    assert!(seen[2].idempotent);
}

#[test]
fn upsert_create_needs_a_name() {
    let (_guard, _) = script(&[]);
    let error = Metronome::upsert(&ctx(), upsert_request(r#"{"custom_fields":{}}"#));
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("`name`")), "{error:?}");
}

#[test]
fn an_alias_of_another_customer_is_a_conflict_before_any_write() {
    let other = format!(r#"{{"id":"{OTHER}","name":"Other","ingest_aliases":["taken"]}}"#);
    let (_guard, seen) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Get, "/customers?ingest_alias=taken&limit=2", 200, &list_of(&other)),
    ]);
    let record = format!(
        r#"{{"id":"{ID}","name":"Renamed","ingest_aliases":["team@example.com","taken"]}}"#
    );
    let error = Metronome::upsert(&ctx(), upsert_request(&record));
    let Err(Error::Conflict(message)) = error else {
        panic!("expected a conflict, got {error:?}");
    };
    assert!(message.contains("`taken`") && message.contains(OTHER), "{message}");
    assert!(
        seen.borrow().iter().all(|request| request.method == Method::Get),
        "nothing was written"
    );
}

#[test]
fn a_create_whose_alias_is_taken_conflicts_before_posting() {
    let other = format!(r#"{{"id":"{OTHER}","name":"Other","ingest_aliases":["taken"]}}"#);
    let (_guard, seen) = script(&[
        (Method::Get, "/customers?ingest_alias=fresh&limit=2", 200, EMPTY),
        (Method::Get, "/customers?ingest_alias=taken&limit=2", 200, &list_of(&other)),
    ]);
    // `taken` matches OTHER on the alias step, but `fresh` as external id
    // found nobody: the record means a new customer, and `taken` is not free.
    let record = r#"{"name":"New","external_id":"fresh","ingest_aliases":["taken"]}"#;
    let error = Metronome::upsert(&ctx(), upsert_request(record));
    assert!(matches!(error, Err(Error::Conflict(_))), "{error:?}");
    assert_eq!(seen.borrow().len(), 2);
}

#[test]
fn aliases_of_two_customers_are_a_conflict() {
    let a = r#"{"id":"a","ingest_aliases":["x"]}"#;
    let b = r#"{"id":"b","ingest_aliases":["y"]}"#;
    let (_guard, _) = script(&[
        (Method::Get, "/customers?ingest_alias=x&limit=2", 200, &list_of(a)),
        (Method::Get, "/customers?ingest_alias=y&limit=2", 200, &list_of(b)),
    ]);
    let error = Metronome::upsert(&ctx(), upsert_request(r#"{"ingest_aliases":["x","y"]}"#));
    assert!(matches!(error, Err(Error::Conflict(_))), "{error:?}");
}

#[test]
fn lookup_follows_the_upserts_keys_and_checks_and_writes_nothing() {
    let other = format!(r#"{{"id":"{OTHER}","name":"Other","ingest_aliases":["taken"]}}"#);
    let (_guard, seen) = script(&[
        // By external id: the example.
        (Method::Get, "/customers?ingest_alias=team%40example.com&limit=2", 200, &list_of(EXAMPLE)),
        // A new external id whose alias is another customer's: a conflict.
        (Method::Get, "/customers?ingest_alias=fresh&limit=2", 200, EMPTY),
        (Method::Get, "/customers?ingest_alias=taken&limit=2", 200, &list_of(&other)),
        // A new customer, free keys: none.
        (Method::Get, "/customers?ingest_alias=new-1&limit=2", 200, EMPTY),
    ]);
    let lookup = |record: &str| Metronome::lookup(&ctx(), "customers", record.into());
    let found = lookup(r#"{"external_id":"team@example.com","name":"Renamed"}"#);
    assert_eq!(found.expect("lookup").as_deref(), Some(EXAMPLE));
    let taken = lookup(r#"{"name":"New","external_id":"fresh","ingest_aliases":["taken"]}"#);
    assert!(matches!(taken, Err(Error::Conflict(_))), "{taken:?}");
    assert_eq!(lookup(r#"{"name":"New","external_id":"new-1"}"#).expect("lookup"), None);
    // A create without a name is refused as the upsert would refuse it.
    let nameless = lookup(r#"{"custom_fields":{}}"#);
    assert!(matches!(&nameless, Err(Error::InvalidInput(m)) if m.contains("`name`")));
    assert!(seen.borrow().iter().all(|request| request.method == Method::Get), "only reads");
    let plans = Metronome::lookup(&ctx(), "customer-plans", "{}".into());
    assert!(plans.is_err(), "plans are listed only: {plans:?}");
}

#[test]
fn upsert_by_external_id_that_already_matches_writes_nothing() {
    let (_guard, seen) = script(&[(
        Method::Get,
        "/customers?ingest_alias=team%40example.com&limit=2",
        200,
        &list_of(EXAMPLE),
    )]);
    let record = r#"{"external_id":"team@example.com","name":"Example, Inc.","ingest_aliases":["team@example.com"],"customer_config":{"salesforce_account_id":"0015500001WO1ZiABL"},"custom_fields":{"x_account_id":"KyVnHhSBWl7eY2bl"}}"#;
    let outcome = Metronome::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Unchanged);
    assert_eq!(outcome.record, EXAMPLE);
    assert_eq!(seen.borrow().len(), 1);
}

#[test]
fn upsert_calls_only_the_update_endpoints_for_what_differs() {
    let after = r#"{"id":"d7abd0cd-4ae9-4db7-8676-e986a4ebd8dc","name":"Renamed","ingest_aliases":["team@example.com","team-2"],"archived_at":null}"#;
    let (_guard, seen) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Get, "/customers?ingest_alias=team-2&limit=2", 200, EMPTY),
        (Method::Post, &format!("/customers/{ID}/setName"), 200, &data(after)),
        (Method::Post, &format!("/customers/{ID}/setIngestAliases"), 200, ""),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(after)),
    ]);
    let record = format!(
        r#"{{"id":"{ID}","name":"Renamed","ingest_aliases":["team-2","team@example.com"],"customer_config":{{"salesforce_account_id":"0015500001WO1ZiABL"}}}}"#
    );
    let outcome = Metronome::upsert(&ctx(), upsert_request(&record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(outcome.record, after);
    let seen = seen.borrow();
    assert_eq!(testing::body_text(&seen[2]), r#"{"name":"Renamed"}"#);
    assert_eq!(testing::body_text(&seen[3]), r#"{"ingest_aliases":["team-2","team@example.com"]}"#);
    assert!(seen[2].idempotent && seen[3].idempotent);
}

#[test]
fn a_changed_salesforce_id_goes_through_update_config() {
    let (_guard, seen) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Post, &format!("/customers/{ID}/updateConfig"), 200, ""),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
    ]);
    let record = format!(r#"{{"id":"{ID}","customer_config":{{"salesforce_account_id":null}}}}"#);
    let outcome = Metronome::upsert(&ctx(), upsert_request(&record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(testing::body_text(&seen.borrow()[1]), r#"{"salesforce_account_id":null}"#);
}

#[test]
fn what_no_endpoint_can_change_is_refused_before_any_write() {
    let (_guard, seen) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
    ]);
    let record = format!(r#"{{"id":"{ID}","name":"X","external_id":"other"}}"#);
    let error = Metronome::upsert(&ctx(), upsert_request(&record));
    assert!(matches!(&error, Err(Error::Unsupported(m)) if m.contains("external_id")), "{error:?}");
    let record = format!(r#"{{"id":"{ID}","name":"X","custom_fields":{{"x_account_id":"new"}}}}"#);
    let error = Metronome::upsert(&ctx(), upsert_request(&record));
    assert!(
        matches!(&error, Err(Error::Unsupported(m)) if m.contains("x_account_id")),
        "{error:?}"
    );
    assert_eq!(seen.borrow().len(), 2);
}

#[test]
fn upsert_by_an_unknown_id_is_not_found() {
    let (_guard, _) = script(&[(Method::Get, &format!("/customers/{OTHER}"), 404, NOT_FOUND)]);
    let error =
        Metronome::upsert(&ctx(), upsert_request(&format!(r#"{{"id":"{OTHER}","name":"x"}}"#)));
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn an_alias_taken_at_create_time_surfaces_as_conflict() {
    let (_guard, _) = script(&[
        (Method::Get, "/customers?ingest_alias=a&limit=2", 200, EMPTY),
        (
            Method::Post,
            "/customers",
            409,
            r#"{"message":"A customer with this ID already exists"}"#,
        ),
    ]);
    let error = Metronome::upsert(&ctx(), upsert_request(r#"{"name":"A","ingest_aliases":["a"]}"#));
    assert_eq!(
        error,
        Err(Error::conflict("metronome: HTTP 409: A customer with this ID already exists"))
    );
}

#[test]
fn remove_archives_with_the_id_in_the_body() {
    let (_guard, seen) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Post, "/customers/archive", 200, &format!(r#"{{"data":{{"id":"{ID}"}}}}"#)),
        (Method::Get, &format!("/customers/{OTHER}"), 404, NOT_FOUND),
    ]);
    assert_eq!(Metronome::remove(&ctx(), "customers", ID), Ok(RemoveOutcome::Removed));
    assert_eq!(Metronome::remove(&ctx(), "customers", OTHER), Ok(RemoveOutcome::AlreadyAbsent));
    assert_eq!(testing::body_text(&seen.borrow()[1]), format!(r#"{{"id":"{ID}"}}"#));
}

#[test]
fn customer_plans_lists_the_plans_of_the_filtered_customer() {
    let plans = r#"{"data":[{"id":"7aa11640-0703-4600-8eb9-293f535a6b74","plan_id":"94293d66-aa05-4a8e-881a-c90872047b67","plan_name":"Standard","starting_on":"2021-01-01T00:00:00+00:00","custom_fields":{}}],"next_page":"p2"}"#;
    let (_guard, _) = script(&[
        (Method::Get, &format!("/customers/{ID}/plans?limit=50"), 200, plans),
        (Method::Get, "/customers/gone/plans?limit=50", 404, NOT_FOUND),
    ]);
    let filter = format!(r#"{{"customer_id":"{ID}"}}"#);
    let page = Metronome::list(&ctx(), list_request("customer-plans", 50, None, Some(&filter)))
        .expect("page");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next_cursor.as_deref(), Some("p2"));
    let error = Metronome::list(
        &ctx(),
        list_request("customer-plans", 50, None, Some(r#"{"customer_id":"gone"}"#)),
    );
    assert!(matches!(&error, Err(Error::NotFound(m)) if m.contains("`gone`")), "{error:?}");
}

#[test]
fn customer_plans_without_a_filter_walk_every_customer() {
    let customers = r#"{"data":[{"id":"c1"},{"id":"c2"}],"next_page":"cust_p2"}"#;
    let (_guard, _) = script(&[
        (Method::Get, "/customers?limit=100", 200, customers),
        (
            Method::Get,
            "/customers/c1/plans?limit=2",
            200,
            r#"{"data":[{"id":"p1"}],"next_page":null}"#,
        ),
        (
            Method::Get,
            "/customers/c2/plans?limit=1",
            200,
            r#"{"data":[{"id":"p2"}],"next_page":"c2_more"}"#,
        ),
        (Method::Get, "/customers?limit=100", 200, customers),
        (
            Method::Get,
            "/customers/c2/plans?limit=2&next_page=c2_more",
            200,
            r#"{"data":[],"next_page":null}"#,
        ),
        (
            Method::Get,
            "/customers?limit=100&next_page=cust_p2",
            200,
            r#"{"data":[{"id":"c3"}],"next_page":null}"#,
        ),
        (
            Method::Get,
            "/customers/c3/plans?limit=2",
            200,
            r#"{"data":[{"id":"p3"}],"next_page":null}"#,
        ),
    ]);
    let page =
        Metronome::list(&ctx(), list_request("customer-plans", 2, None, None)).expect("page");
    assert_eq!(
        page.records,
        [r#"{"customer_id":"c1","id":"p1"}"#, r#"{"customer_id":"c2","id":"p2"}"#]
    );
    let cursor = page.next_cursor.expect("c2 has more");
    let page = Metronome::list(&ctx(), list_request("customer-plans", 2, Some(&cursor), None))
        .expect("page");
    assert_eq!(page.records, [r#"{"customer_id":"c3","id":"p3"}"#]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn customer_plans_filters_only_on_customer_id_and_offer_only_list() {
    for filter in [r#"{"customer_id":5}"#, r#"{"plan":"x"}"#, "[]"] {
        let error = Metronome::list(&ctx(), list_request("customer-plans", 10, None, Some(filter)));
        assert!(matches!(error, Err(Error::InvalidInput(_))), "{filter}: {error:?}");
    }
    let error = Metronome::get(&ctx(), "customer-plans", "x");
    assert!(matches!(error, Err(Error::Unsupported(_))), "{error:?}");
    let error = Metronome::get(&ctx(), "invoices", "x");
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn manifest_declares_both_resources_archive_as_irreversible_and_no_limits() {
    let manifest = Metronome::describe();
    assert_eq!(manifest.name, "metronome");
    assert_eq!(manifest.default_base_url, "https://api.metronome.com/v1");
    assert!(manifest.rate_limits.is_empty());
    assert_eq!(manifest.resources[0].irreversible, [Op::Remove]);
    assert_eq!(manifest.resources[1].ops, [Op::List]);
}

#[test]
fn removing_a_customer_archived_earlier_is_already_absent() {
    let (_guard, _) = script(&[
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Post, "/customers/archive", 400, r#"{"message":"Customer is already archived"}"#),
        (
            Method::Get,
            &format!("/customers?customer_ids={ID}&only_archived=true&limit=1"),
            200,
            &list_of(EXAMPLE),
        ),
        (Method::Get, &format!("/customers/{ID}"), 200, &data(LIVE)),
        (Method::Post, "/customers/archive", 400, r#"{"message":"bad id"}"#),
        (
            Method::Get,
            &format!("/customers?customer_ids={ID}&only_archived=true&limit=1"),
            200,
            EMPTY,
        ),
    ]);
    assert_eq!(Metronome::remove(&ctx(), "customers", ID), Ok(RemoveOutcome::AlreadyAbsent));
    assert_eq!(
        Metronome::remove(&ctx(), "customers", ID),
        Err(Error::invalid_input("metronome: HTTP 400: bad id"))
    );
}
