//! The complete connector plugins/sdk/README.md shows, compiled and tested
//! here so the README cannot drift from the SDK (a test below checks that
//! the README holds this file's connector verbatim).

// --- README connector: begin ---
use weft_connector_sdk::http::{self, testing};
use weft_connector_sdk::query::encode_component as segment;
use weft_connector_sdk::{
    AuthScheme, Connector, Context, Error, Json, ListRequest, Manifest, Op, Page, RemoveOutcome,
    ResourceSpec, Result, UpsertOutcome, UpsertRequest, page,
};

/// The users of the Acme API.
#[derive(Debug)]
pub struct Acme;

impl Connector for Acme {
    fn describe() -> Manifest {
        Manifest {
            name: "acme".into(),
            version: "0.1.0".into(),
            vendor: "Acme".into(),
            description: "Acme users.".into(),
            default_base_url: "https://api.acme.example/v1".into(),
            extra_hosts: vec![],
            auth: AuthScheme::Bearer,
            resources: vec![ResourceSpec {
                name: "users".into(),
                description: "Matched on `id`.".into(),
                ops: vec![Op::List, Op::Get, Op::Upsert, Op::Remove],
                irreversible: vec![Op::Remove],
                max_page_size: 100,
                default_page_size: 50,
                id_field: "id".into(),
            }],
            rate_limits: vec![],
            settings: vec![],
        }
    }

    // Only `users` reaches these: the SDK refuses what the manifest omits.
    fn list(ctx: &Context, request: ListRequest) -> Result<Page> {
        let mut call = http::get(ctx.url("/users")).query("limit", request.page_size);
        if let Some(cursor) = &request.cursor {
            call = call.query("cursor", cursor);
        }
        let response = call.send()?.error_for_status("acme")?;
        let body = page::ListBody::parse(&response.body, "data")?;
        let next: Option<String> = match body.field("next_cursor") {
            Some(raw) => serde_json::from_str(raw).map_err(|e| Error::fatal(e.to_string()))?,
            None => None,
        };
        Ok(Page::new(body.into_records(), next))
    }

    fn get(ctx: &Context, _resource: &str, id: &str) -> Result<Option<Json>> {
        let response = http::get(ctx.url(&format!("/users/{}", segment(id)))).send()?;
        if response.status == 404 {
            return Ok(None);
        }
        Ok(Some(response.error_for_status("acme")?.text()?.to_owned()))
    }

    fn upsert(ctx: &Context, request: UpsertRequest) -> Result<UpsertOutcome> {
        let record: serde_json::Value = request.parse_record()?;
        let Some(id) = record["id"].as_str() else {
            return Err(Error::invalid_input("a user needs a string `id`"));
        };
        let response = http::put(ctx.url(&format!("/users/{}", segment(id))))
            .json(&record)
            .idempotency_key(&request.idempotency_key)
            .send()?
            .error_for_status("acme")?;
        let saved = response.text()?.to_owned();
        Ok(match response.status {
            201 => UpsertOutcome::created(saved),
            _ => UpsertOutcome::updated(saved),
        })
    }

    fn remove(ctx: &Context, _resource: &str, id: &str) -> Result<RemoveOutcome> {
        let response = http::delete(ctx.url(&format!("/users/{}", segment(id)))).send()?;
        if response.status == 404 {
            return Ok(RemoveOutcome::AlreadyAbsent);
        }
        response.error_for_status("acme")?;
        Ok(RemoveOutcome::Removed)
    }
}

weft_connector_sdk::export!(Acme);
// --- README connector: end ---

// --- README test: begin ---
#[test]
fn lists_page_by_page_and_reads_a_missing_user_as_absent() -> Result<()> {
    let base = "https://api.acme.example/v1";
    let (_answers, sent) = testing::script(
        base,
        &[
            (
                http::Method::Get,
                "/users?limit=1",
                200,
                r#"{"data":[{"id":"u1"}],"next_cursor":"c2"}"#,
            ),
            (http::Method::Get, "/users?limit=1&cursor=c2", 200, r#"{"data":[{"id":"u2"}]}"#),
            (http::Method::Get, "/users/u%2F3", 404, r#"{"error":"no such user"}"#),
        ],
    );
    let ctx = testing::context(base, &[]);
    let ask = |cursor| ListRequest { resource: "users".into(), cursor, page_size: 1, filter: None };
    let first = Acme::list(&ctx, ask(None))?;
    assert_eq!(
        (first.records, first.next_cursor.as_deref()),
        (vec![r#"{"id":"u1"}"#.into()], Some("c2"))
    );
    assert_eq!(Acme::list(&ctx, ask(Some("c2".into())))?.next_cursor, None);
    assert_eq!(Acme::get(&ctx, "users", "u/3")?, None);
    assert_eq!(sent.borrow().len(), 3);
    Ok(())
}
// --- README test: end ---

/// The text between `// --- README {name}: begin ---` and its end marker.
fn region<'a>(source: &'a str, name: &str) -> &'a str {
    let begin = format!("// --- README {name}: begin ---\n");
    let end = format!("// --- README {name}: end ---");
    let start = source.find(&begin).map_or(0, |at| at + begin.len());
    let stop = source.find(&end).unwrap_or(source.len());
    &source[start..stop]
}

#[test]
fn the_readme_shows_this_connector_and_its_test_verbatim() {
    let source = include_str!("readme_connector.rs");
    let readme = include_str!("../README.md");
    for name in ["connector", "test"] {
        assert!(
            readme.contains(region(source, name)),
            "plugins/sdk/README.md differs from the {name} here"
        );
    }
    let lines = region(source, "connector").lines().count();
    assert!(lines < 100, "the README's connector is meant to stay short: {lines} lines");
}
