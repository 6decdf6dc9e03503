//! The Stripe connector against the Stripe emulator, through the engine.

use std::collections::HashSet;

use weft::store::Status;

use super::support::{Harness, TestResult, sandbox, stripe_override};

const CONNECTION: &str = r#"
[workflow]
name = "stripe-test"

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"
"#;

fn flow(steps: &str) -> String {
    format!("{CONNECTION}\n{steps}")
}

#[tokio::test]
async fn a_250_record_export_reads_every_page_once() -> TestResult {
    let sandbox = sandbox(250).await?;
    let harness = Harness::new()?;
    let output = harness.files.path().join("customers.jsonl");
    let summary = harness
        .run(
            &flow(&format!("[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\npage_size = 100\noutput = {:?}\n", output.display().to_string())),
            &stripe_override(&sandbox),
        )
        .await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.read, 250);

    let text = std::fs::read_to_string(&output)?;
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .map(|v| v["id"].as_str().unwrap_or_default().to_owned())
        })
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 250);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 250, "every record exactly once");

    // Three pages of at most 100, committed to the store with the cursor
    // and how much of the output file they cover. No later step reads the
    // records, so the store does not keep a copy of them.
    let store = harness.executor.store();
    let steps = store.steps(&summary.run_id).await?;
    assert_eq!(steps[0].pages, 3);
    assert_eq!(steps[0].cursor, None, "the last page has no next cursor");
    assert!(!steps[0].records_kept);
    assert_eq!(store.pages(&summary.run_id, 0).await?.collect_all().await?.len(), 0);
    let mark = steps[0].output_file.ok_or("no output mark")?;
    assert_eq!((mark.bytes, mark.crc32), (text.len() as u64, crc32fast::hash(text.as_bytes())));

    let list_requests = sandbox
        .stripe
        .emulator
        .requests()
        .count_where(|r| r.method == "GET" && r.path == "/v1/customers");
    assert_eq!(list_requests, 3);
    Ok(())
}

#[tokio::test]
async fn customers_crud_round_trip() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let overrides = stripe_override(&sandbox);

    let create = flow(
        r#"
[[step]]
id = "create"
upsert = "stripe.customers"
record = { email = "ada@example.com", name = "Ada Lovelace", metadata = { plan = "pro" } }
"#,
    );
    let summary = harness.run(&create, &overrides).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.created, 1);
    let id = summary.steps[0]
        .output
        .as_ref()
        .and_then(|o| o["record"]["id"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(id.starts_with("cus_"), "{id}");

    // Same desired record again: nothing to change.
    let again = harness.run(&create, &overrides).await?;
    assert_eq!(again.steps[0].counts.unchanged, 1, "{again:?}");

    let update = flow(&format!(
        "[[step]]\nid = \"rename\"\nupsert = \"stripe.customers\"\nrecord = {{ id = \"{id}\", name = \"Ada King\" }}\n"
    ));
    let updated = harness.run(&update, &overrides).await?;
    assert_eq!(updated.steps[0].counts.updated, 1, "{updated:?}");

    let get =
        flow(&format!("[[step]]\nid = \"fetch\"\nget = \"stripe.customers\"\nkey = \"{id}\"\n"));
    let fetched = harness.run(&get, &overrides).await?;
    let record = fetched.steps[0].output.clone().unwrap_or_default();
    assert_eq!(record["name"], "Ada King");
    assert_eq!(record["email"], "ada@example.com");
    assert_eq!(record["metadata"]["plan"], "pro");

    let remove = flow(&format!(
        "[[step]]\nid = \"drop\"\nremove = \"stripe.customers\"\nkey = \"{id}\"\nallow_irreversible = true\n"
    ));
    let removed = harness.run(&remove, &overrides).await?;
    assert_eq!(removed.steps[0].counts.removed, 1, "{removed:?}");

    // A deleted customer reads as absent, not as a record with deleted: true.
    let gone = harness.run(&get, &overrides).await?;
    assert_eq!(gone.status, Status::Succeeded);
    assert_eq!(gone.steps[0].output, Some(serde_json::Value::Null));

    let removed_again = harness.run(&remove, &overrides).await?;
    assert_eq!(removed_again.steps[0].counts.absent, 1, "{removed_again:?}");
    Ok(())
}

#[tokio::test]
async fn upsert_twice_with_the_same_email_creates_one_customer() -> TestResult {
    let sandbox = sandbox(5).await?;
    let harness = Harness::new()?;
    let overrides = stripe_override(&sandbox);
    let upsert = flow(
        r#"
[[step]]
id = "first"
upsert = "stripe.customers"
record = { email = "grace@example.com", name = "Grace Hopper" }

[[step]]
id = "second"
upsert = "stripe.customers"
record = { email = "grace@example.com", name = "Grace Hopper", phone = "+15550100" }
"#,
    );
    let summary = harness.run(&upsert, &overrides).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.created, 1);
    assert_eq!(summary.steps[1].counts.updated, 1);
    let with_email = sandbox
        .stripe
        .emulator
        .customers()
        .into_iter()
        .filter(|c| c["email"] == "grace@example.com")
        .count();
    assert_eq!(with_email, 1);
    assert_eq!(sandbox.stripe.emulator.customer_count(), 6);
    Ok(())
}

#[tokio::test]
async fn creates_carry_an_idempotency_key_derived_from_run_and_step() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let summary = harness
        .run(&flow("[[step]]\nid = \"create\"\nupsert = \"stripe.customers\"\nrecord = { email = \"x@example.com\" }\n"), &stripe_override(&sandbox))
        .await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    let expected = weft::executor::idempotency_key(&summary.run_id, "create", 0);
    let creates: Vec<_> = sandbox
        .stripe
        .emulator
        .requests()
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/customers")
        .collect();
    assert_eq!(creates.len(), 1);
    assert_eq!(creates[0].idempotency_key.as_deref(), Some(expected.as_str()));
    Ok(())
}

#[tokio::test]
async fn a_wrong_key_fails_the_step_as_unauthorized() -> TestResult {
    let sandbox = sandbox(1).await?;
    let harness = Harness::new()?;
    let mut overrides = stripe_override(&sandbox);
    if let Some(o) = overrides.get_mut("stripe") {
        o.secret = weft::credentials::Secret::new("sk_test_wrong");
    }
    let summary = harness
        .run(&flow("[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\n"), &overrides)
        .await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("unauthorized"), "{error}");
    assert!(error.contains("401"), "{error}");
    Ok(())
}

#[tokio::test]
async fn remove_without_allow_irreversible_is_refused_before_running() -> TestResult {
    let sandbox = sandbox(1).await?;
    let harness = Harness::new()?;
    let result = harness
        .run(
            &flow("[[step]]\nid = \"drop\"\nremove = \"stripe.customers\"\nkey = \"cus_1\"\n"),
            &stripe_override(&sandbox),
        )
        .await;
    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("allow_irreversible = true"), "{error}");
    assert!(error.contains("workflow.toml:"), "{error}");
    assert_eq!(sandbox.stripe.emulator.requests().requests().len(), 0, "nothing was sent");
    Ok(())
}
