//! Native tests of the connector's flows: each test scripts Stripe's SCIM
//! answers (RFC 7644 shapes) through the SDK's HTTP test double and checks
//! the requests sent.

use serde_json::{Map, Value, json};
use weft_connector_sdk::http::testing::{self, Responding};
use weft_connector_sdk::http::{Method, Request};
use weft_connector_sdk::{
    AuthScheme, Connector, Context, Error, ListRequest, RemoveOutcome, UpsertAction, UpsertRequest,
};

use crate::StripeScim;
use crate::members::{patch_operations, scim_error};

const BASE: &str = "https://dashboard.stripe.com";

/// Answers the expected requests in order and records what was sent.
fn script(steps: &[(Method, &str, u16, &str)]) -> (Responding, testing::Sent) {
    testing::script(BASE, steps)
}

fn ctx() -> Context {
    Context { base_url: BASE.into(), settings: Vec::new() }
}

fn list_request(page_size: u32, cursor: Option<&str>, filter: Option<&str>) -> ListRequest {
    ListRequest {
        resource: "team-members".into(),
        cursor: cursor.map(Into::into),
        page_size,
        filter: filter.map(Into::into),
    }
}

fn upsert_request(record: &str) -> UpsertRequest {
    UpsertRequest {
        resource: "team-members".into(),
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

fn body(request: &Request) -> Value {
    serde_json::from_str(testing::body_text(request)).expect("a JSON body")
}

const USR: &str = r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"usr_xxx","userName":"user@example.com","name":{"givenName":"Jo","familyName":"Doe"},"emails":[{"value":"user@example.com","primary":true}],"active":true,"meta":{"resourceType":"User"}}"#;
const NOT_FOUND: &str = r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"detail":"User not found","status":"404"}"#;
const BY_USER_NAME: &str = "/scim/v2/Users?filter=userName%20eq%20%22user%40example.com%22&count=2";

fn list_of(records: &[&str], total: usize, start: usize) -> String {
    format!(
        r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"totalResults":{total},"startIndex":{start},"itemsPerPage":{},"Resources":[{}]}}"#,
        records.len(),
        records.join(",")
    )
}

#[test]
fn list_pages_with_start_index_and_count() {
    let (_guard, _) = script(&[
        (Method::Get, "/scim/v2/Users?startIndex=1&count=1", 200, &list_of(&[USR], 2, 1)),
        (
            Method::Get,
            "/scim/v2/Users?startIndex=2&count=100",
            200,
            &list_of(&[r#"{"id":"usr_2"}"#], 2, 2),
        ),
    ]);
    let page = StripeScim::list(&ctx(), list_request(1, None, None)).expect("page");
    assert_eq!(page.records, [USR]);
    assert_eq!(page.next_cursor.as_deref(), Some("2"));
    let page = StripeScim::list(&ctx(), list_request(500, Some("2"), None)).expect("page");
    assert_eq!(page.records, [r#"{"id":"usr_2"}"#]);
    assert_eq!(page.next_cursor, None);
}

#[test]
fn list_filters_by_user_name_with_a_quoted_literal() {
    let (_guard, seen) = script(&[(
        Method::Get,
        "/scim/v2/Users?startIndex=1&count=10&filter=userName%20eq%20%22a%5C%22b%40x.com%22",
        200,
        &list_of(&[], 0, 1),
    )]);
    let page =
        StripeScim::list(&ctx(), list_request(10, None, Some(r#"{"userName":"a\"b@x.com"}"#)))
            .expect("page");
    assert!(page.records.is_empty());
    assert_eq!(page.next_cursor, None);
    assert_eq!(header(&seen.borrow()[0], "accept"), Some("application/scim+json"));
    for filter in [
        r#"{"email":"x"}"#,
        r#"{"userName":1}"#,
        r#"{"active":"yes"}"#,
        r#"{"active":true,"userName":"x"}"#,
        "[]",
    ] {
        let error = StripeScim::list(&ctx(), list_request(10, None, Some(filter)));
        assert!(matches!(error, Err(Error::InvalidInput(_))), "{filter}: {error:?}");
    }
}

#[test]
fn get_returns_the_user_and_nothing_when_absent() {
    let (_guard, _) = script(&[
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, USR),
        (Method::Get, "/scim/v2/Users/usr_gone", 404, NOT_FOUND),
        (Method::Get, "/scim/v2/Users/usr_html", 404, "<html/>"),
    ]);
    assert_eq!(StripeScim::get(&ctx(), "team-members", "usr_xxx"), Ok(Some(USR.to_string())));
    assert_eq!(StripeScim::get(&ctx(), "team-members", "usr_gone"), Ok(None));
    let error = StripeScim::get(&ctx(), "team-members", "usr_html");
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn upsert_by_a_new_user_name_creates_with_the_user_schema() {
    let (_guard, seen) = script(&[
        (Method::Get, BY_USER_NAME, 200, &list_of(&[], 0, 1)),
        (Method::Post, "/scim/v2/Users", 201, USR),
    ]);
    let record = r#"{"userName":"user@example.com","name":{"givenName":"Jo","familyName":"Doe"},"active":true,"id":null}"#;
    let outcome = StripeScim::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Created);
    assert_eq!(outcome.record, USR);
    let seen = seen.borrow();
    assert_eq!(
        body(&seen[1]),
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
               "userName": "user@example.com", "name": {"givenName": "Jo", "familyName": "Doe"},
               "active": true})
    );
    assert_eq!(header(&seen[1], "content-type"), Some("application/scim+json"));
    assert!(!seen[1].idempotent);
}

#[test]
fn upsert_by_user_name_patches_only_what_differs() {
    let after = USR.replace("Jo", "Joanna");
    let (_guard, seen) = script(&[
        (Method::Get, BY_USER_NAME, 200, &list_of(&[USR], 1, 1)),
        (Method::Patch, "/scim/v2/Users/usr_xxx", 200, &after),
    ]);
    let record = r#"{"userName":"user@example.com","name":{"givenName":"Joanna"},"active":true,"meta":{"x":1}}"#;
    let outcome = StripeScim::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(outcome.record, after);
    let seen = seen.borrow();
    assert_eq!(
        body(&seen[1]),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "replace", "path": "name", "value": {"givenName": "Joanna"}}]})
    );
    assert!(seen[1].idempotent);
}

#[test]
fn lookup_finds_the_member_the_upsert_would_match_and_writes_nothing() {
    let (_guard, seen) = script(&[
        (Method::Get, BY_USER_NAME, 200, &list_of(&[USR], 1, 1)),
        (Method::Get, BY_USER_NAME, 200, &list_of(&[], 0, 1)),
        (Method::Get, BY_USER_NAME, 200, &list_of(&[USR, USR], 2, 1)),
    ]);
    let lookup =
        || StripeScim::lookup(&ctx(), "team-members", r#"{"userName":"user@example.com"}"#.into());
    assert_eq!(lookup().expect("lookup").as_deref(), Some(USR));
    assert_eq!(lookup().expect("lookup"), None, "the upsert would create");
    assert!(matches!(lookup(), Err(Error::Conflict(_))));
    let nameless = StripeScim::lookup(&ctx(), "team-members", "{}".into());
    assert!(matches!(nameless, Err(Error::InvalidInput(_))), "{nameless:?}");
    assert!(seen.borrow().iter().all(|request| request.method == Method::Get), "only reads");
}

#[test]
fn upsert_by_id_that_already_matches_writes_nothing() {
    let (_guard, seen) = script(&[(Method::Get, "/scim/v2/Users/usr_xxx", 200, USR)]);
    let record = r#"{"id":"usr_xxx","userName":"user@example.com","emails":[{"value":"user@example.com","primary":true}]}"#;
    let outcome = StripeScim::upsert(&ctx(), upsert_request(record)).expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Unchanged);
    assert_eq!(seen.borrow().len(), 1);
}

#[test]
fn a_patch_answered_204_reads_the_member_back() {
    let (_guard, _) = script(&[
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, USR),
        (Method::Patch, "/scim/v2/Users/usr_xxx", 204, ""),
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, USR),
    ]);
    let outcome = StripeScim::upsert(&ctx(), upsert_request(r#"{"id":"usr_xxx","title":"CFO"}"#))
        .expect("outcome");
    assert_eq!(outcome.action, UpsertAction::Updated);
}

#[test]
fn upsert_needs_an_id_or_a_user_name_and_an_unknown_id_is_not_found() {
    let error = StripeScim::upsert(&ctx(), upsert_request(r#"{"active":true}"#));
    assert!(matches!(&error, Err(Error::InvalidInput(m)) if m.contains("userName")), "{error:?}");
    let (_guard, _) = script(&[(Method::Get, "/scim/v2/Users/usr_gone", 404, NOT_FOUND)]);
    let error = StripeScim::upsert(&ctx(), upsert_request(r#"{"id":"usr_gone"}"#));
    assert!(matches!(error, Err(Error::NotFound(_))), "{error:?}");
}

#[test]
fn a_uniqueness_error_is_a_conflict_with_the_scim_detail() {
    let (_guard, _) = script(&[
        (Method::Get, BY_USER_NAME, 200, &list_of(&[], 0, 1)),
        (
            Method::Post,
            "/scim/v2/Users",
            409,
            r#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"scimType":"uniqueness","detail":"userName already exists","status":"409"}"#,
        ),
    ]);
    let error = StripeScim::upsert(&ctx(), upsert_request(r#"{"userName":"user@example.com"}"#));
    assert_eq!(
        error,
        Err(Error::conflict("stripe-scim: HTTP 409 uniqueness: userName already exists"))
    );
    let odd =
        testing::response(400, r#"{"scimType":"uniqueness","detail":"taken","status":"400"}"#);
    assert!(matches!(scim_error(&odd), Error::Conflict(_)));
    let filter =
        testing::response(403, r#"{"scimType":"invalidFilter","detail":"bad","status":"403"}"#);
    assert!(matches!(scim_error(&filter), Error::InvalidInput(_)));
}

#[test]
fn remove_deactivates_and_does_not_delete() {
    let (_guard, seen) = script(&[
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, USR),
        (
            Method::Patch,
            "/scim/v2/Users/usr_xxx",
            200,
            &USR.replace(r#""active":true"#, r#""active":false"#),
        ),
    ]);
    assert_eq!(StripeScim::remove(&ctx(), "team-members", "usr_xxx"), Ok(RemoveOutcome::Removed));
    let seen = seen.borrow();
    assert!(seen.iter().all(|request| request.method != Method::Delete));
    assert_eq!(
        body(&seen[1]),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "replace", "path": "active", "value": false}]})
    );
}

#[test]
fn an_inactive_member_is_absent_to_get_and_remove_but_found_by_upsert() {
    let inactive = USR.replace(r#""active":true"#, r#""active":false"#);
    let (_guard, seen) = script(&[
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, &inactive),
        (Method::Get, "/scim/v2/Users/usr_gone", 404, NOT_FOUND),
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, &inactive),
        (Method::Get, "/scim/v2/Users/usr_xxx", 200, &inactive),
        (Method::Patch, "/scim/v2/Users/usr_xxx", 200, USR),
    ]);
    for id in ["usr_xxx", "usr_gone"] {
        assert_eq!(
            StripeScim::remove(&ctx(), "team-members", id),
            Ok(RemoveOutcome::AlreadyAbsent)
        );
    }
    assert_eq!(StripeScim::get(&ctx(), "team-members", "usr_xxx"), Ok(None));
    let outcome = StripeScim::upsert(&ctx(), upsert_request(r#"{"id":"usr_xxx","active":true}"#))
        .expect("reactivated");
    assert_eq!(outcome.action, UpsertAction::Updated);
    assert_eq!(
        body(&seen.borrow()[4]),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
               "Operations": [{"op": "replace", "path": "active", "value": true}]})
    );
}

#[test]
fn reactivating_is_an_upsert_with_active_true() {
    let current: Map<String, Value> =
        serde_json::from_str(&USR.replace(r#""active":true"#, r#""active":false"#))
            .expect("fixture");
    let desired: Map<String, Value> =
        serde_json::from_str(r#"{"userName":"user@example.com","active":true,"password":"x"}"#)
            .expect("record");
    assert_eq!(
        patch_operations(&desired, &current),
        [
            json!({"op": "replace", "path": "active", "value": true}),
            json!({"op": "replace", "path": "password", "value": "x"}),
        ]
    );
}

#[test]
fn manifest_has_its_own_base_url_bearer_auth_and_nothing_irreversible() {
    let manifest = StripeScim::describe();
    assert_eq!(manifest.name, "stripe-scim");
    assert_eq!(manifest.default_base_url, "https://dashboard.stripe.com");
    assert_eq!(manifest.auth, AuthScheme::Bearer);
    assert_eq!(manifest.resources[0].name, "team-members");
    assert!(manifest.resources[0].irreversible.is_empty());
    // Another resource is refused by the SDK from the manifest, before
    // the connector runs.
    use weft_connector_sdk::__private::Adapter;
    use weft_connector_sdk::wit::exports::weft::connector0_1_0::plugin::Guest;
    use weft_connector_sdk::wit::weft::connector0_1_0::types::ConnectorError;
    let error = <Adapter<StripeScim> as Guest>::get(ctx(), "customers".into(), "cus_1".into());
    assert!(matches!(error, Err(ConnectorError::NotFound(_))), "{error:?}");
}
