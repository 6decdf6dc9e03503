//! Language gaps the seed scenarios found, end to end against the
//! emulators: a sync whose source is an earlier list step's records (and
//! its resume from the run store), fields
//! sent only on create, telling a given input from its default, and a dry
//! run that plans the id of the record an upsert matches.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use weft::executor::{Observer, RunOptions, Silent, StepSummary, StopSignal};
use weft::store::{Status, StepState};
use weft::workflow::Step;

use super::support::{Harness, TestResult, flow_with, ids, overrides, sandbox, workflow, writes};

const VENDORS: [(&str, &str); 2] = [("stripe", "stripe"), ("growpanel", "growpanel")];

fn flow(name: &str, rest: &str) -> String {
    flow_with(name, &["stripe", "growpanel"], rest)
}

/// The Stripe ids of the GrowPanel rows the sync made (`m_` and the id).
fn mirrored(sandbox: &weft_sandbox::Sandbox) -> BTreeSet<String> {
    sandbox
        .growpanel
        .emulator
        .customers()
        .iter()
        .filter_map(|c| c["id"].as_str().and_then(|id| id.strip_prefix("m_")).map(str::to_owned))
        .collect()
}

const FROM_STEP: &str = r#"
[[step]]
id = "first-seven"
list = "stripe.customers"
page_size = 3
limit = 7

[[step]]
id = "mirror"
sync = { from = "steps.first-seven", to = "growpanel.customers", key = "id" }
map = '{id: ("m_" + .id), name: (.name // .email), email, created_date: "2026-01-01", country: "US"}'
"#;

#[tokio::test]
async fn a_sync_from_an_earlier_list_step_copies_exactly_that_steps_records() -> TestResult {
    for harness in Harness::each("a_sync_from_an_earlier_list_step").await? {
        let backend = harness.backend();
        let sandbox = sandbox(20).await?;
        let vendors = overrides(&sandbox, &VENDORS);
        let stripe_ids: BTreeSet<String> = ids(&sandbox.stripe.emulator.customers());
        assert!(mirrored(&sandbox).is_empty(), "{backend}: GrowPanel starts without them");
        sandbox.stripe.emulator.requests().clear();

        let first = harness.run(&flow("from-step", FROM_STEP), &vendors).await?;
        assert_eq!(first.status, Status::Succeeded, "{backend}: {first:#?}");
        let c = first.steps[1].counts;
        assert_eq!((c.read, c.created, c.updated, c.unchanged), (7, 7, 0, 0), "{backend}: {c:?}");
        let copied = mirrored(&sandbox);
        assert_eq!(copied.len(), 7, "{backend}: {copied:?}");
        assert!(copied.is_subset(&stripe_ids), "{backend}: {copied:?}");
        // The sync read the list step's records from the run store, not Stripe again.
        let stripe_reads = sandbox.stripe.emulator.requests().len();
        assert_eq!(stripe_reads, 3, "{backend}: three pages of at most 3 for 7 records");

        let again = harness.run(&flow("from-step", FROM_STEP), &vendors).await?;
        let c = again.steps[1].counts;
        assert_eq!((c.created, c.updated, c.unchanged), (0, 0, 7), "{backend}: {c:?}");
        assert_eq!(mirrored(&sandbox), copied, "{backend}: the same seven");
    }
    Ok(())
}

/// Stops the run (as SIGTERM would) when the list step `step` finishes,
/// or, for the sync, when it commits a group once GrowPanel has taken
/// writes (its first groups are the sorted source, before any write).
struct StopInStep {
    step: &'static str,
    stop: StopSignal,
    growpanel: weft_sandbox::requests::RequestLog,
}

impl Observer for StopInStep {
    fn items_committed(&self, step: &Step, _done: u64) {
        if step.id == self.step && writes(&self.growpanel) > 0 {
            self.stop.shutdown.cancel();
        }
    }

    fn step_finished(&self, step: &Step, _state: &StepState, _summary: &StepSummary) {
        if step.id == self.step && step.id != "mirror" {
            self.stop.shutdown.cancel();
        }
    }
}

/// How many times each GrowPanel id was created by a request that
/// succeeded.
fn growpanel_creates(sandbox: &weft_sandbox::Sandbox) -> TestResult<BTreeMap<String, usize>> {
    let mut created = BTreeMap::new();
    for request in sandbox.growpanel.emulator.requests().requests() {
        if request.method == "POST" && (200..300).contains(&request.status) {
            let rows = match serde_json::from_str::<serde_json::Value>(&request.body)? {
                serde_json::Value::Array(rows) => rows,
                row => vec![row],
            };
            for id in rows.iter().filter_map(|row| row["id"].as_str()) {
                *created.entry(id.to_owned()).or_default() += 1;
            }
        }
    }
    Ok(created)
}

const FROM_STEP_WHOLE: &str = r#"
[[step]]
id = "all"
list = "stripe.customers"
page_size = 100

[[step]]
id = "mirror"
sync = { from = "steps.all", to = "growpanel.customers", key = "id" }
map = '{id: ("m_" + .id), name: (.name // .email), email, created_date: "2026-01-01", country: "US"}'
"#;

#[tokio::test]
async fn a_sync_from_a_step_resumes_from_the_stored_records_and_writes_each_once() -> TestResult {
    // Interrupted after its list step, and again in the middle of the sync
    // (past its first group of 500 writes): each resume reads the list's
    // records from the run store, never Stripe again, and every record is
    // created in GrowPanel exactly once.
    const CUSTOMERS: usize = 1_200;
    for (stop_in, label) in [("all", "after the list"), ("mirror", "inside the sync")] {
        for harness in Harness::each("a_sync_from_a_step_resumes").await? {
            let backend = harness.backend();
            let sandbox = sandbox(CUSTOMERS).await?;
            let vendors = overrides(&sandbox, &VENDORS);
            let wf = workflow(harness.files.path(), &flow("from-step-resumed", FROM_STEP_WHOLE))?;
            let stop = StopSignal::default();
            let options = RunOptions {
                overrides: vendors.clone(),
                stop: stop.clone(),
                ..RunOptions::default()
            };
            let first = harness
                .executor
                .start(
                    &wf,
                    &options,
                    &StopInStep {
                        step: stop_in,
                        stop,
                        growpanel: sandbox.growpanel.emulator.requests(),
                    },
                )
                .await?;
            assert_eq!(first.status, Status::Running, "{backend}, {label}: {first:#?}");
            assert_eq!(first.steps[0].counts.read, CUSTOMERS as u64, "{backend}, {label}");
            let stripe_reads = sandbox.stripe.emulator.requests().len();
            let before = growpanel_creates(&sandbox)?.len();
            match stop_in {
                "all" => assert_eq!(before, 0, "{backend}: stopped before the sync"),
                _ => assert!(
                    (1..CUSTOMERS).contains(&before),
                    "{backend}: stopped inside the sync, after {before} creates"
                ),
            }

            let options = RunOptions { overrides: vendors, ..RunOptions::default() };
            let resumed = harness.executor.resume(&first.run_id, &options, &Silent).await?;
            assert_eq!(resumed.status, Status::Succeeded, "{backend}, {label}: {resumed:#?}");
            assert_eq!(
                sandbox.stripe.emulator.requests().len(),
                stripe_reads,
                "{backend}, {label}: the resume read the records from the run store"
            );
            let created = growpanel_creates(&sandbox)?;
            assert_eq!(created.len(), CUSTOMERS, "{backend}, {label}");
            let twice: Vec<_> = created.iter().filter(|(_, n)| **n != 1).collect();
            assert!(twice.is_empty(), "{backend}, {label}: created more than once: {twice:?}");
            assert_eq!(mirrored(&sandbox).len(), CUSTOMERS, "{backend}, {label}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_sync_from_a_step_that_is_not_an_earlier_list_is_refused_at_load() -> TestResult {
    let harness = Harness::new()?;
    for (rest, expected) in [
        (
            "[[step]]\nid = \"mirror\"\nsync = { from = \"steps.later\", to = \"growpanel.customers\", key = \"id\" }\n\n[[step]]\nid = \"later\"\nlist = \"stripe.customers\"\n",
            "no list step \"later\" above",
        ),
        (
            "[[step]]\nid = \"one\"\nget = \"stripe.customers\"\nkey = \"cus_1\"\n\n[[step]]\nid = \"mirror\"\nsync = { from = \"steps.one\", to = \"growpanel.customers\", key = \"id\" }\n",
            "takes a list step's records; step \"one\" is a get step",
        ),
    ] {
        let error = match workflow(harness.files.path(), &flow("bad-from", rest)) {
            Ok(_) => return Err(format!("loaded: {rest}").into()),
            Err(e) => e.to_string(),
        };
        assert!(error.contains(expected), "{error}");
        assert!(error.contains("workflow.toml:"), "says where: {error}");
    }
    Ok(())
}

fn create_only_sync(name: &str, source: &str) -> String {
    flow(
        "create-only-sync",
        &format!(
            r#"
[[step]]
id = "mirror"
sync = {{ from = "stripe.customers", to = "growpanel.customers", key = "id" }}
map = '{{id: ("m_" + .id), name: "{name}", email, created_date: "2026-01-01", country: "US", custom_variables: {{source: "{source}", plan: "pro"}}}}'
create_only = ["custom_variables.source"]
"#
        ),
    )
}

#[tokio::test]
async fn a_create_only_field_is_sent_when_a_sync_creates_and_left_out_when_it_updates() -> TestResult
{
    let sandbox = sandbox(5).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    let first = harness.run(&create_only_sync("First", "first-run"), &vendors).await?;
    assert_eq!(first.status, Status::Succeeded, "{first:#?}");
    assert_eq!(first.steps[0].counts.created, 5);

    // Only the create-only field differs: nothing to write.
    let same = harness.run(&create_only_sync("First", "second-run"), &vendors).await?;
    let c = same.steps[0].counts;
    assert_eq!((c.created, c.updated, c.unchanged), (0, 0, 5), "{c:?}");

    let renamed = harness.run(&create_only_sync("Renamed", "third-run"), &vendors).await?;
    assert_eq!(renamed.status, Status::Succeeded, "{renamed:#?}");
    let c = renamed.steps[0].counts;
    assert_eq!((c.created, c.updated), (0, 5), "{c:?}");
    for id in mirrored(&sandbox) {
        let row = sandbox.growpanel.emulator.customer(&format!("m_{id}")).ok_or("the row")?;
        assert_eq!(row["name"], "Renamed", "{row}");
        assert_eq!(row["custom_variables"]["source"], "first-run", "kept from the create: {row}");
        assert_eq!(row["custom_variables"]["plan"], "pro", "{row}");
    }
    Ok(())
}

const CREATE_ONLY_UPSERT: &str = r#"
[inputs.name]
type = "string"

[inputs.source]
type = "string"

[[step]]
id = "account"
upsert = "growpanel.customers"
record = { id = "acct_create_only", name = "${{ $inputs.name }}", email = "co@example.com", created_date = "2026-01-01", country = "US", custom_variables = { source = "${{ $inputs.source }}" } }
create_only = ["custom_variables.source"]
"#;

#[tokio::test]
async fn an_upsert_leaves_its_create_only_fields_out_when_the_record_exists_and_plans_so()
-> TestResult {
    let sandbox = sandbox(1).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    let wf = workflow(harness.files.path(), &flow("create-only-upsert", CREATE_ONLY_UPSERT))?;
    let start = |name: &str, source: &str, dry_run: bool| RunOptions {
        dry_run,
        overrides: vendors.clone(),
        inputs: json!({ "name": name, "source": source }).as_object().cloned().unwrap_or_default(),
        ..RunOptions::default()
    };
    let first = harness.executor.start(&wf, &start("Ada", "signup", false), &Silent).await?;
    assert_eq!(first.status, Status::Succeeded, "{first:#?}");
    let row = sandbox.growpanel.emulator.customer("acct_create_only").ok_or("created")?;
    assert_eq!(row["custom_variables"]["source"], "signup", "sent on create: {row}");

    // A dry run plans the update without the create-only field.
    let plan = harness.executor.start(&wf, &start("Ada Lovelace", "import", true), &Silent).await?;
    let entry = plan.steps[0].plan.clone().unwrap_or_default();
    assert_eq!(entry.update, 1, "{entry:#?}");
    let changes: Vec<String> = entry.samples.iter().flat_map(|s| s.changes.clone()).collect();
    assert_eq!(changes, vec!["name".to_owned()], "{entry:#?}");

    let writes_before = writes(&sandbox.growpanel.emulator.requests());
    let second =
        harness.executor.start(&wf, &start("Ada Lovelace", "import", false), &Silent).await?;
    assert_eq!(second.status, Status::Succeeded, "{second:#?}");
    let row = sandbox.growpanel.emulator.customer("acct_create_only").ok_or("still there")?;
    assert_eq!(row["name"], "Ada Lovelace", "{row}");
    assert_eq!(row["custom_variables"]["source"], "signup", "left out of the update: {row}");
    assert_eq!(writes(&sandbox.growpanel.emulator.requests()) - writes_before, 1);
    Ok(())
}

const GIVEN: &str = r#"
[inputs.since]
type = "string"
default = "2020-01-01"

[[step]]
id = "mark"
upsert = "growpanel.customers"
record = { id = "acct_given", name = "${{ if $inputs_given.since then \"given \" + $inputs.since else \"default \" + $inputs.since end }}", email = "given@example.com", created_date = "2026-01-01", country = "US" }
"#;

#[tokio::test]
async fn inputs_given_tells_an_input_the_run_was_given_from_its_default_even_when_equal()
-> TestResult {
    let sandbox = sandbox(1).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    let wf = workflow(harness.files.path(), &flow("given", GIVEN))?;
    for (inputs, expected) in [
        (json!({}), "default 2020-01-01"),
        (json!({ "since": "2020-01-01" }), "given 2020-01-01"),
        (json!({ "since": "2026-03-01" }), "given 2026-03-01"),
        (json!({}), "default 2020-01-01"),
    ] {
        let options = RunOptions {
            overrides: vendors.clone(),
            inputs: inputs.as_object().cloned().unwrap_or_default(),
            ..RunOptions::default()
        };
        let summary = harness.executor.start(&wf, &options, &Silent).await?;
        assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
        let row = sandbox.growpanel.emulator.customer("acct_given").ok_or("the row")?;
        assert_eq!(row["name"], expected, "inputs {inputs}: {row}");
    }

    let typo = GIVEN.replace("$inputs_given.since", "$inputs_given.snice");
    let error = match workflow(harness.files.path(), &flow("given", &typo)) {
        Ok(_) => return Err("a misspelt input in $inputs_given loaded".into()),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("$inputs_given.snice: no input \"snice\""), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_dry_runs_estimate_counts_the_real_runs_requests_and_paces_them_at_the_limit()
-> TestResult {
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    // 30 Stripe customers into GrowPanel (batch creates), then 5 renamed:
    // the second sync updates 5 through the connector's upsert.
    let text = |name: &str| {
        flow(
            "estimated",
            &format!(
                r#"
[[step]]
id = "mirror"
sync = {{ from = "stripe.customers", to = "growpanel.customers", key = "id" }}
map = '{{id: ("m_" + .id), name: (if (.email // "") < "{name}" then "renamed" else .name end), email, created_date: "2026-01-01", country: "US"}}'
"#
            ),
        )
        .replace("rate_limit = \"1000/s\"", "rate_limit = \"20/s\"")
    };
    for name in ["", "c"] {
        let wf = workflow(harness.files.path(), &text(name))?;
        let dry = harness
            .executor
            .start(
                &wf,
                &RunOptions { dry_run: true, overrides: vendors.clone(), ..RunOptions::default() },
                &Silent,
            )
            .await?;
        assert_eq!(dry.status, Status::Succeeded, "{dry:#?}");
        let estimate = dry.estimate.clone().ok_or("a dry run estimates")?;
        let real = harness.executor.run(&wf, &vendors, &Silent).await?;
        assert_eq!(real.status, Status::Succeeded, "{real:#?}");
        // GrowPanel reads an updated customer back after its PUT, a third
        // request the model (a lookup and a write) does not know of.
        let read_back = real.steps[0].counts.updated;
        for (connection, figures) in &estimate.connections {
            let sent = real.connections.get(connection).map_or(0, |t| t.requests);
            let unknown = if connection == "growpanel" { read_back } else { 0 };
            assert_eq!(
                figures.reads + figures.writes + unknown,
                sent,
                "{connection}: {estimate:#?}"
            );
            // 20/s less the limiter's margin, every class of request.
            assert!(
                figures.limits.values().all(|rate| (19.0..=20.0).contains(rate)),
                "{connection}: {figures:?}"
            );
            let paced = (figures.reads + figures.writes) as f64 / 20.0;
            let seconds = figures.seconds.ok_or("a limit is in force")?;
            assert!((paced..=paced * 1.05).contains(&seconds), "{connection}: {figures:?}");
        }
        let sent: u64 = real.connections.values().map(|t| t.requests).sum();
        assert_eq!(estimate.requests + read_back, sent, "{estimate:#?}");
        // The sync lists both sides at once, a page each: the run takes a
        // page less than the connections one after the other.
        let apart: f64 = estimate.connections.values().filter_map(|f| f.seconds).sum();
        let together = estimate.seconds.ok_or("limits are in force")?;
        assert!(
            ((1.0 / 20.0)..=(1.0 / 19.0)).contains(&(apart - together)),
            "{apart} apart, {together} together: {estimate:#?}"
        );
        if name.is_empty() {
            assert_eq!(real.steps[0].counts.created, 30, "{real:#?}");
        } else {
            assert!(read_back > 0, "some were renamed: {real:#?}");
        }
    }
    Ok(())
}

/// A mapped source record without the sync's key is a failure of that
/// record, counted one by one; the step's output keeps the first ten
/// messages (however many there are, memory holds no more than those), and
/// the keyed records are synced all the same.
#[tokio::test]
async fn a_sync_counts_every_source_record_without_a_key_and_keeps_ten_messages() -> TestResult {
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    let mut stripe_ids: Vec<String> = ids(&sandbox.stripe.emulator.customers());
    stripe_ids.sort();
    let keyed = 5;
    let last_keyed = stripe_ids.get(keyed - 1).ok_or("30 customers")?.clone();
    let unkeyed = stripe_ids.len() - keyed;
    assert!(unkeyed > 10, "more than the output keeps: {}", stripe_ids.len());
    let text = flow(
        "unkeyed",
        &format!(
            r#"
[[step]]
id = "mirror"
sync = {{ from = "stripe.customers", to = "growpanel.customers", key = "id" }}
map = 'if .id <= "{last_keyed}" then {{id: ("m_" + .id), name, email, created_date: "2026-01-01", country: "US"}} else {{name}} end'
"#
        ),
    );
    let summary = harness.run(&text, &vendors).await?;
    assert_eq!(summary.status, Status::Failed, "{summary:#?}");
    let step = &summary.steps[0];
    let c = step.counts;
    assert_eq!(
        (c.read, c.created, c.failed),
        (stripe_ids.len() as u64, keyed as u64, unkeyed as u64),
        "{c:?}"
    );
    let errors = step
        .output
        .as_ref()
        .and_then(|o| o["errors"].as_array())
        .ok_or("the sync's output lists errors")?;
    assert_eq!(errors.len(), 10, "{errors:?}");
    assert!(
        errors.iter().all(|e| e
            .as_str()
            .is_some_and(|e| e.starts_with("(no key): the mapped record has no `.id`: "))),
        "{errors:?}"
    );
    let error = step.error.clone().unwrap_or_default();
    assert!(error.contains(&format!("{unkeyed} records failed")), "{error}");
    assert_eq!(mirrored(&sandbox).len(), keyed);
    Ok(())
}
