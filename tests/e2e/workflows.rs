//! The workflow language end to end: inputs, references, for-each,
//! conditions, maps, sync, dry runs, timeouts, retries, and resuming an
//! interrupted run, against the emulators over loopback.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use weft::credentials::Secret;
use weft::executor::{ConnectionOverride, Observer, RunOptions, Silent};
use weft::store::Status;
use weft::workflow::Step;

use super::support::{
    Harness, TestResult, connections, flow_with, overrides, sandbox, workflow, writes,
};

const VENDORS: [(&str, &str); 3] =
    [("stripe", "stripe"), ("growpanel", "growpanel"), ("metronome", "metronome")];

fn flow(name: &str, rest: &str) -> String {
    flow_with(name, &["stripe", "growpanel", "metronome"], rest)
}

fn inputs(value: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    value.as_object().cloned().unwrap_or_default()
}

const MIRROR: &str = r#"
[[step]]
id = "customers"
list = "stripe.customers"
page_size = 10

[[step]]
id = "mirror"
for_each = ".steps.customers.records[] | select(.email != null)"
concurrency = 4
upsert = "growpanel.customers"
record = { id = "${{ $item.id }}", name = "${{ $item.name }}", email = "${{ $item.email }}", created_date = "2026-01-01", country = "US" }
"#;

#[tokio::test]
async fn a_for_each_streams_a_list_into_upserts_and_a_second_run_changes_nothing() -> TestResult {
    for harness in
        Harness::each("a_for_each_streams_a_list_into_upserts_and_a_second_run_changes_nothing")
            .await?
    {
        let backend = harness.backend();
        let sandbox = sandbox(25).await?;
        let before = sandbox.growpanel.emulator.customer_count();
        let first = harness.run(&flow("mirror", MIRROR), &overrides(&sandbox, &VENDORS)).await?;
        assert_eq!(first.status, Status::Succeeded, "{backend}: {first:#?}");
        let mirror = &first.steps[1];
        assert_eq!((mirror.items, mirror.counts.created), (25, 25), "{mirror:?}");
        assert_eq!(sandbox.growpanel.emulator.customer_count(), before + 25);

        let second = harness.run(&flow("mirror", MIRROR), &overrides(&sandbox, &VENDORS)).await?;
        assert_eq!(second.status, Status::Succeeded, "{backend}: {second:#?}");
        assert_eq!(second.steps[1].counts.unchanged, 25, "{:?}", second.steps[1]);
        assert_eq!(
            sandbox.growpanel.emulator.customer_count(),
            before + 25,
            "{backend}: no duplicates"
        );
    }
    Ok(())
}

/// A Stripe customer upserted by email, a Metronome customer for paying
/// plans keyed by the Stripe id, and a read of the Stripe customer by id.
const PROVISION: &str = r#"
[inputs.email]
type = "string"

[inputs.plan]
type = "string"
default = "free"

[[step]]
id = "customer"
upsert = "stripe.customers"
record = { email = "${{ .inputs.email }}", name = "Plan ${{ .inputs.plan }}", metadata = { plan = "${{ .inputs.plan }}" } }

[[step]]
id = "paid-only"
when = '.inputs.plan != "free"'
upsert = "metronome.customers"
record = { name = "${{ .steps.customer.record.name }}", external_id = "${{ .steps.customer.record.id }}" }

[[step]]
id = "lookup"
get = "stripe.customers"
key = "${{ .steps.customer.record.id }}"
map = '{id, email, plan: .metadata.plan}'
"#;

#[tokio::test]
async fn inputs_fill_templates_and_a_false_condition_skips_its_step() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let text = flow("provision", PROVISION);
    let wf = workflow(harness.files.path(), &text)?;
    let options = RunOptions {
        inputs: inputs(json!({"email": "ada@example.com"})),
        overrides: overrides(&sandbox, &VENDORS),
        ..RunOptions::default()
    };
    let summary = harness.executor.start(&wf, &options, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert_eq!(summary.steps[0].counts.created, 1);
    assert_eq!(summary.steps[1].status, Status::Skipped);
    let looked_up = summary.steps[2].output.clone().unwrap_or_default();
    assert_eq!(looked_up["email"], "ada@example.com");
    assert_eq!(looked_up["plan"], "free");
    assert_eq!(sandbox.metronome.emulator.customer_count(), 0, "the skipped step wrote nothing");

    let paid = RunOptions {
        inputs: inputs(json!({"email": "bob@example.com", "plan": "pro"})),
        ..options.clone()
    };
    let summary = harness.executor.start(&wf, &paid, &Silent).await?;
    assert_eq!(summary.steps[1].counts.created, 1, "{summary:#?}");
    let stripe_id =
        summary.steps[0].output.as_ref().map(|o| o["record"]["id"].clone()).unwrap_or_default();
    let metronome = sandbox.metronome.emulator.customers();
    assert_eq!(metronome.len(), 1);
    assert_eq!(
        metronome[0]["external_id"], stripe_id,
        "the second step used the first step's result"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_mistyped_inputs_are_refused_before_anything_runs() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let text = flow(
        "typed",
        "[inputs.email]\ntype = \"string\"\n\n[[step]]\nid = \"c\"\nupsert = \"stripe.customers\"\nrecord = { email = \"${{ .inputs.email }}\" }\n",
    );
    let wf = workflow(harness.files.path(), &text)?;
    let options = RunOptions {
        inputs: inputs(json!({"email": 7})),
        overrides: overrides(&sandbox, &VENDORS),
        ..RunOptions::default()
    };
    let error = harness
        .executor
        .start(&wf, &options, &Silent)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("input email must be a string, got a number (7)"), "{error}");
    let missing = RunOptions { inputs: Default::default(), ..options };
    let error = harness
        .executor
        .start(&wf, &missing, &Silent)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("input email (string) is required"), "{error}");
    assert!(harness.executor.store().runs().await?.is_empty(), "no run was recorded");
    assert!(sandbox.stripe.emulator.requests().is_empty());
    Ok(())
}

const SYNC: &str = r#"
[[step]]
id = "mirror"
sync = { from = "stripe.customers", to = "metronome.customers", key = "external_id", delete_missing = true }
map = '{external_id: .id, name: (.name // .email)}'
concurrency = 4
allow_irreversible = true
"#;

#[tokio::test]
async fn a_sync_creates_updates_and_deletes_only_what_differs() -> TestResult {
    for harness in Harness::each("a_sync_creates_updates_and_deletes_only_what_differs").await? {
        let backend = harness.backend();
        let sandbox = sandbox(30).await?;
        let vendors = overrides(&sandbox, &VENDORS);
        let first = harness.run(&flow("sync", SYNC), &vendors).await?;
        assert_eq!(first.status, Status::Succeeded, "{backend}: {first:#?}");
        // The Metronome emulator's 30 demo customers have no Stripe match: deleted (archived).
        let c = first.steps[0].counts;
        assert_eq!(
            (c.read, c.created, c.updated, c.unchanged, c.removed),
            (30, 30, 0, 0, 30),
            "{backend}: {c:?}"
        );

        let again = harness.run(&flow("sync", SYNC), &vendors).await?;
        let c = again.steps[0].counts;
        assert_eq!((c.created, c.updated, c.unchanged, c.removed), (0, 0, 30, 0), "{c:?}");
        let writes_before = writes(&sandbox.metronome.emulator.requests());

        // Rename two Stripe customers and delete one.
        let stripe = sandbox.stripe.emulator.customers();
        for customer in &stripe[..2] {
            let mut renamed = customer.clone();
            renamed["name"] =
                json!(format!("{} (renamed)", customer["name"].as_str().unwrap_or("x")));
            sandbox.stripe.emulator.insert_customer(renamed);
        }
        let gone = stripe[2]["id"].as_str().unwrap_or_default().to_owned();
        let remove = flow(
            "rm",
            &format!(
                "[[step]]\nid = \"rm\"\nremove = \"stripe.customers\"\nkey = \"{gone}\"\nallow_irreversible = true\n"
            ),
        );
        assert_eq!(harness.run(&remove, &vendors).await?.status, Status::Succeeded);

        let third = harness.run(&flow("sync", SYNC), &vendors).await?;
        let c = third.steps[0].counts;
        assert_eq!(
            (c.read, c.created, c.updated, c.unchanged, c.removed),
            (29, 0, 2, 27, 1),
            "{c:?}"
        );
        let metronome_writes = writes(&sandbox.metronome.emulator.requests()) - writes_before;
        assert_eq!(metronome_writes, 3, "two renames (setName) and one archive, nothing else");
    }
    Ok(())
}

#[tokio::test]
async fn a_dry_run_plans_every_write_and_sends_none() -> TestResult {
    let sandbox = sandbox(12).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    let text = flow(
        "dry",
        &format!(
            "{SYNC}\n{}",
            r#"
[[step]]
id = "ada"
upsert = "growpanel.customers"
record = { id = "acct_1", name = "Ada", email = "ada@example.com", created_date = "2026-01-01", country = "GB" }

[[step]]
id = "drop-first"
remove = "stripe.customers"
key = "${{ .steps.mirror.counts.read | tostring }}"
allow_irreversible = true
"#
        ),
    );
    let wf = workflow(harness.files.path(), &text)?;
    for emulator_log in [
        sandbox.stripe.emulator.requests(),
        sandbox.metronome.emulator.requests(),
        sandbox.growpanel.emulator.requests(),
    ] {
        emulator_log.clear();
    }
    let options = RunOptions { dry_run: true, overrides: vendors, ..RunOptions::default() };
    let summary = harness.executor.start(&wf, &options, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert!(summary.dry_run);
    let plan = summary.steps[0].plan.clone().unwrap_or_default();
    assert_eq!((plan.create, plan.remove), (12, 12), "{plan:#?}");
    assert_eq!(plan.irreversible.len(), 12, "every archive is listed: {plan:#?}");
    assert_eq!(summary.steps[1].plan.as_ref().map(|p| p.create), Some(1));
    assert_eq!(
        summary.steps[2].plan.as_ref().map(|p| p.already_absent),
        Some(1),
        "{:?}",
        summary.steps[2]
    );

    assert_eq!(writes(&sandbox.stripe.emulator.requests()), 0);
    assert_eq!(writes(&sandbox.metronome.emulator.requests()), 0);
    assert_eq!(writes(&sandbox.growpanel.emulator.requests()), 0);
    assert!(!sandbox.metronome.emulator.requests().is_empty(), "the reads were real");
    assert_eq!(sandbox.metronome.emulator.customer_count(), 12, "nothing archived");
    Ok(())
}

#[tokio::test]
async fn a_dry_run_plans_the_id_an_upsert_by_email_would_match_and_the_next_steps_use_it()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let wf = workflow(harness.files.path(), &flow("provision", PROVISION))?;
    let options = |email: &str, dry_run: bool| RunOptions {
        inputs: inputs(json!({"email": email, "plan": "pro"})),
        overrides: overrides(&sandbox, &VENDORS),
        dry_run,
        ..RunOptions::default()
    };
    let real = harness.executor.start(&wf, &options("ada@example.com", false), &Silent).await?;
    assert_eq!(real.status, Status::Succeeded, "{real:#?}");
    let stripe_id = sandbox.stripe.emulator.customers()[0]["id"].clone();
    let metronome = sandbox.metronome.emulator.customers();
    sandbox.stripe.emulator.requests().clear();
    sandbox.metronome.emulator.requests().clear();

    // Ada is there: the upsert by email would update her, and the dry run
    // names her id, so the Metronome step finds its customer by it (as the
    // real run would, to rename it too) and the read by id finds her.
    let wf = workflow(
        harness.files.path(),
        &flow("provision", &PROVISION.replace("name = \"Plan ", "name = \"Plan: ")),
    )?;
    let dry = harness.executor.start(&wf, &options("ada@example.com", true), &Silent).await?;
    assert_eq!(dry.status, Status::Succeeded, "{dry:#?}");
    let plan = dry.steps[0].plan.clone().unwrap_or_default();
    assert_eq!((plan.update, plan.upsert, plan.create), (1, 0, 0), "{plan:#?}");
    assert_eq!(plan.samples[0].key.as_deref(), stripe_id.as_str(), "{plan:#?}");
    assert_eq!(plan.samples[0].changes, ["name"], "{plan:#?}");
    let output = dry.steps[0].output.clone().unwrap_or_default();
    assert_eq!(output["record"]["id"], stripe_id, "{output:#}");
    assert_eq!(output["record"]["name"], "Plan: pro", "the record as it would be: {output:#}");
    let paid = dry.steps[1].plan.clone().unwrap_or_default();
    assert_eq!((paid.update, paid.create, paid.upsert), (1, 0, 0), "{paid:#?}");
    assert_eq!(paid.samples[0].key.as_deref(), metronome[0]["id"].as_str(), "{paid:#?}");
    assert_eq!(paid.samples[0].changes, ["name"], "{paid:#?}");
    assert_eq!(dry.steps[2].output.clone().unwrap_or_default()["email"], "ada@example.com");

    // Nobody has this email: a create, planned as one, with no id to name.
    let new = harness.executor.start(&wf, &options("new@example.com", true), &Silent).await?;
    assert_eq!(new.status, Status::Failed, "the read by an id not made yet fails: {new:#?}");
    let plan = new.steps[0].plan.clone().unwrap_or_default();
    assert_eq!((plan.create, plan.upsert), (1, 0), "{plan:#?}");

    assert_eq!(writes(&sandbox.stripe.emulator.requests()), 0);
    assert_eq!(writes(&sandbox.metronome.emulator.requests()), 0);
    assert_eq!(sandbox.metronome.emulator.customers(), metronome, "nothing written");
    Ok(())
}

/// Starts `wf` against the sandbox with an observer that is handed the
/// run's stop signal, and checks that the run stopped and can be resumed.
async fn start_interrupted<O: Observer>(
    harness: &Harness,
    wf: &weft::workflow::Workflow,
    sandbox: &weft_sandbox::Sandbox,
    observer: impl FnOnce(weft::executor::StopSignal) -> O,
) -> TestResult<weft::executor::RunSummary> {
    let stop = weft::executor::StopSignal::default();
    let observer = observer(stop.clone());
    let options =
        RunOptions { overrides: overrides(sandbox, &VENDORS), stop, ..RunOptions::default() };
    let first = harness.executor.start(wf, &options, &observer).await?;
    assert_eq!(first.status, Status::Running, "interrupted, resumable: {first:#?}");
    Ok(first)
}

/// Resumes a run against the sandbox; on PostgreSQL, on another worker
/// (its own pool and scratch directory), as after a failover.
async fn resume(
    harness: &Harness,
    sandbox: &weft_sandbox::Sandbox,
    run: &str,
) -> TestResult<weft::executor::RunSummary> {
    let other = harness.other_worker().await?;
    Ok(other
        .as_ref()
        .unwrap_or(&harness.executor)
        .resume(
            run,
            &RunOptions { overrides: overrides(sandbox, &VENDORS), ..RunOptions::default() },
            &Silent,
        )
        .await?)
}

/// Stops the run (as SIGTERM would) once a step has committed `after` items.
struct StopAfter {
    after: u64,
    stop: weft::executor::StopSignal,
    seen: AtomicU64,
}

impl Observer for StopAfter {
    fn items_committed(&self, _step: &Step, done: u64) {
        self.seen.store(done, Ordering::Relaxed);
        if done >= self.after {
            self.stop.shutdown.cancel();
        }
    }
}

const MANY: &str = r#"
[[step]]
id = "create"
for_each = "[range(0; 60)]"
concurrency = 4
upsert = "stripe.customers"
record = { email = "user${{ $item }}@resume.example", name = "User ${{ $item }}" }
"#;

#[tokio::test]
async fn an_interrupted_for_each_resumes_where_it_stopped_without_writing_twice() -> TestResult {
    for harness in
        Harness::each("an_interrupted_for_each_resumes_where_it_stopped_without_writing_twice")
            .await?
    {
        let backend = harness.backend();
        let sandbox = sandbox(0).await?;
        let wf = workflow(harness.files.path(), &flow("many", MANY))?;
        let first = start_interrupted(&harness, &wf, &sandbox, |stop| StopAfter {
            after: 10,
            stop,
            seen: AtomicU64::new(0),
        })
        .await?;
        let done = first.steps[0].items;
        assert!((10..60).contains(&done), "stopped part way: {done}");

        // The file changes; the run finishes on the version it started with.
        std::fs::write(&wf.path, flow("many", &MANY.replace("User ", "Changed ")))?;
        let resumed = resume(&harness, &sandbox, &first.run_id).await?;
        assert_eq!(resumed.status, Status::Succeeded, "{backend}: {resumed:#?}");
        assert_eq!(
            (resumed.steps[0].items, resumed.steps[0].counts.created),
            (60, 60),
            "{:?}",
            resumed.steps[0]
        );
        let customers = sandbox.stripe.emulator.customers();
        assert_eq!(customers.len(), 60, "{backend}: each customer once");
        assert!(
            customers.iter().all(|c| c["name"].as_str().is_some_and(|n| n.starts_with("User ")))
        );
        let run = harness.executor.store().run(&first.run_id).await?;
        assert_eq!((run.status, run.resumes), (Status::Succeeded, 1));
        let again = harness
            .executor
            .resume(&first.run_id, &RunOptions::default(), &Silent)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(again.contains("cannot be resumed"), "{again}");
    }
    Ok(())
}

/// Adds `count` Stripe customers, `{tag}{i}@{tag}.example`.
fn seed_stripe(sandbox: &weft_sandbox::Sandbox, count: usize, tag: &str) {
    for i in 0..count {
        sandbox.stripe.emulator.insert_customer(
            json!({ "email": format!("{tag}{i}@{tag}.example"), "name": format!("{tag} {i}") }),
        );
    }
}

/// Stops the run once a list step has read `after` records.
struct StopAfterRecords {
    after: u64,
    stop: weft::executor::StopSignal,
}

impl Observer for StopAfterRecords {
    fn page_committed(&self, _step: &Step, records_so_far: u64) {
        if records_so_far >= self.after {
            self.stop.shutdown.cancel();
        }
    }
}

#[tokio::test]
async fn an_interrupted_list_resumes_after_its_last_page_and_hands_on_every_record_once()
-> TestResult {
    for harness in Harness::each(
        "an_interrupted_list_resumes_after_its_last_page_and_hands_on_every_record_once",
    )
    .await?
    {
        let backend = harness.backend();
        let sandbox = sandbox(0).await?;
        seed_stripe(&sandbox, 250, "list");
        let out = harness.files.path().join("customers.jsonl");
        let text = flow(
            "export",
            &format!(
                r#"
    [[step]]
    id = "customers"
    list = "stripe.customers"
    page_size = 10
    output = "{}"

    [[step]]
    id = "mirror"
    for_each = ".steps.customers.records[]"
    concurrency = 4
    upsert = "growpanel.customers"
    record = {{ id = "${{{{ $item.id }}}}", name = "${{{{ $item.name }}}}", email = "${{{{ $item.email }}}}", created_date = "2026-01-01", country = "US" }}
    "#,
                out.display()
            ),
        );
        let wf = workflow(harness.files.path(), &text)?;
        let first =
            start_interrupted(&harness, &wf, &sandbox, |stop| StopAfterRecords { after: 50, stop })
                .await?;
        let read = first.steps[0].counts.read;
        assert!((50..250).contains(&read), "stopped part way through the list: {read}");
        let listed = sandbox.stripe.emulator.requests().len();

        let resumed = resume(&harness, &sandbox, &first.run_id).await?;
        assert_eq!(resumed.status, Status::Succeeded, "{backend}: {resumed:#?}");
        assert_eq!(resumed.steps[0].counts.read, 250, "{:?}", resumed.steps[0]);
        // The resume asked only for the pages after the committed ones (and
        // the one read ahead, which an interruption drops).
        let asked_again = sandbox.stripe.emulator.requests().len() - listed;
        assert!(
            asked_again <= 25 - (read as usize / 10) + 1,
            "{asked_again} list requests on resume after {read} records"
        );
        let lines = std::fs::read_to_string(&out)?;
        let mut ids: Vec<String> = lines
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["id"].to_string()))
            .collect::<Result<_, _>>()?;
        assert_eq!(ids.len(), 250, "the output file has each record once");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 250, "no record twice");
        assert_eq!(
            (resumed.steps[1].items, resumed.steps[1].counts.created),
            (250, 250),
            "{:?}",
            resumed.steps[1]
        );
    }
    Ok(())
}

/// Interrupts a 250-record export (no later step reads its records) after
/// 50, lets `damage` touch the output file, resumes, and returns the ids in
/// the file and the list requests the resume made.
async fn interrupted_export(
    damage: impl FnOnce(&std::path::Path) -> std::io::Result<()>,
) -> TestResult<(Vec<String>, usize)> {
    let sandbox = sandbox(0).await?;
    seed_stripe(&sandbox, 250, "export");
    let harness = Harness::new()?;
    let out = harness.files.path().join("export.jsonl");
    let text = flow(
        "export",
        &format!(
            "[[step]]\nid = \"customers\"\nlist = \"stripe.customers\"\npage_size = 10\noutput = {:?}\n",
            out.display().to_string()
        ),
    );
    let wf = workflow(harness.files.path(), &text)?;
    let first =
        start_interrupted(&harness, &wf, &sandbox, |stop| StopAfterRecords { after: 50, stop })
            .await?;
    let state = &harness.executor.store().steps(&first.run_id).await?[0];
    assert!(!state.records_kept, "nothing reads the records later: {state:?}");
    assert_eq!(
        harness.executor.store().pages(&first.run_id, 0).await?.collect_all().await?.len(),
        0
    );
    damage(&out)?;
    let listed = sandbox.stripe.emulator.requests().len();
    let resumed = resume(&harness, &sandbox, &first.run_id).await?;
    assert_eq!(
        (resumed.status, resumed.steps[0].counts.read),
        (Status::Succeeded, 250),
        "{resumed:#?}"
    );
    let ids = std::fs::read_to_string(&out)?
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["id"].to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((ids, sandbox.stripe.emulator.requests().len() - listed))
}

fn distinct(ids: &[String]) -> usize {
    ids.iter().collect::<std::collections::HashSet<_>>().len()
}

#[tokio::test]
async fn a_resumed_export_keeps_the_lines_its_last_commit_covers_and_appends_the_rest() -> TestResult
{
    let (ids, asked) = interrupted_export(|_| Ok(())).await?;
    assert_eq!((ids.len(), distinct(&ids)), (250, 250), "each record once");
    assert!(asked < 25, "the resume went on from the committed cursor: {asked} list requests");
    Ok(())
}

#[tokio::test]
async fn a_resumed_export_whose_file_was_damaged_reads_the_list_again() -> TestResult {
    let (ids, asked) = interrupted_export(|out| {
        let mut bytes = std::fs::read(out)?;
        bytes[0] = b' ';
        std::fs::write(out, bytes)
    })
    .await?;
    assert_eq!((ids.len(), distinct(&ids)), (250, 250), "each record once");
    assert_eq!(asked, 25, "all 25 pages read again");
    let (ids, asked) = interrupted_export(|out| std::fs::write(out, b"")).await?;
    assert_eq!(
        (ids.len(), distinct(&ids), asked),
        (250, 250, 25),
        "a truncated file is read again too"
    );
    Ok(())
}

#[tokio::test]
async fn a_damaged_output_file_is_rewritten_from_the_records_the_store_kept() -> TestResult {
    let sandbox = sandbox(0).await?;
    seed_stripe(&sandbox, 100, "kept");
    let harness = Harness::new()?;
    let out = harness.files.path().join("kept.jsonl");
    let text = flow(
        "kept",
        &format!(
            "[[step]]\nid = \"customers\"\nlist = \"stripe.customers\"\npage_size = 10\noutput = {:?}\n\n[[step]]\nid = \"count\"\nwhen = \".steps.customers.records | length > 0\"\nget = \"stripe.customers\"\nkey = \"cus_none\"\n",
            out.display().to_string()
        ),
    );
    let wf = workflow(harness.files.path(), &text)?;
    let first =
        start_interrupted(&harness, &wf, &sandbox, |stop| StopAfterRecords { after: 30, stop })
            .await?;
    assert!(
        harness.executor.store().steps(&first.run_id).await?[0].records_kept,
        "a later step reads .steps.customers.records"
    );
    std::fs::write(&out, b"{}\n")?;
    let listed = sandbox.stripe.emulator.requests().len();
    let resumed = resume(&harness, &sandbox, &first.run_id).await?;
    assert_eq!(resumed.status, Status::Succeeded, "{resumed:#?}");
    let ids = std::fs::read_to_string(&out)?
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).map(|v| v["id"].to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    assert_eq!((ids.len(), distinct(&ids)), (100, 100), "each record once");
    assert!(
        sandbox.stripe.emulator.requests().len() - listed < 10,
        "the committed pages came from the store, not the vendor"
    );
    Ok(())
}

#[tokio::test]
async fn a_cancelled_run_stops_at_the_next_item_and_says_so() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let wf = workflow(harness.files.path(), &flow("many", MANY))?;
    let stop = weft::executor::StopSignal::default();
    struct CancelAfter(weft::executor::StopSignal);
    impl Observer for CancelAfter {
        fn items_committed(&self, _step: &Step, done: u64) {
            if done >= 5 {
                self.0.cancel.cancel();
            }
        }
    }
    let options = RunOptions {
        overrides: overrides(&sandbox, &VENDORS),
        stop: stop.clone(),
        ..RunOptions::default()
    };
    let summary = harness.executor.start(&wf, &options, &CancelAfter(stop)).await?;
    assert_eq!(summary.status, Status::Cancelled, "{summary:#?}");
    assert_eq!(summary.steps[0].status, Status::Cancelled);
    assert!(sandbox.stripe.emulator.customer_count() < 60);
    Ok(())
}

#[tokio::test]
async fn a_step_timeout_is_retried_and_then_reported_with_the_tries() -> TestResult {
    use weft_sandbox::limits::FaultConfig;
    use weft_sandbox::stripe::{SANDBOX_API_KEY, StripeConfig, StripeEmulator};
    let emulator = StripeEmulator::new(StripeConfig {
        seed: 3,
        faults: FaultConfig { latency_ms: 400, ..FaultConfig::default() },
        ..StripeConfig::default()
    });
    let server = weft_sandbox::server::serve(emulator.router(), "127.0.0.1:0".parse()?).await?;
    let harness = Harness::new()?;
    let text = "[workflow]\nname = \"slow\"\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:UNUSED\"\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\ntimeout = \"100ms\"\nretry = { attempts = 2, backoff = \"10ms\" }\n";
    let vendors = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        weft::executor::ConnectionOverride {
            base_url: server.base_url(),
            secret: weft::credentials::Secret::new(SANDBOX_API_KEY),
        },
    )]);
    let summary = harness.run(text, &vendors).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("timed out after 100ms (after 2 tries)"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_bad_credential_stops_a_for_each_at_once_instead_of_failing_every_item() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let mut vendors = overrides(&sandbox, &VENDORS);
    if let Some(stripe) = vendors.get_mut("stripe") {
        stripe.secret = weft::credentials::Secret::new("sk_test_wrong");
    }
    let summary = harness.run(&flow("many", MANY), &vendors).await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("unauthorized"), "{error}");
    assert!(
        summary.steps[0].items <= 8,
        "stopped after the items in flight: {:?}",
        summary.steps[0]
    );
    Ok(())
}

#[tokio::test]
async fn a_list_longer_than_memory_allows_is_refused_in_expressions_but_streams_in_for_each()
-> TestResult {
    let sandbox = sandbox(12).await?;
    let state = tempfile::tempdir()?;
    let files = tempfile::tempdir()?;
    let executor = weft::executor::Executor::new(
        super::support::runtime(Default::default())?,
        weft::store::RunStore::open(state.path())?,
    )
    .with_inline_records(10);
    let inline = flow(
        "inline",
        "[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\n\n[[step]]\nid = \"first\"\nget = \"stripe.customers\"\nkey = \"${{ .steps.all.records[0].id }}\"\n",
    );
    let summary = executor
        .run(&workflow(files.path(), &inline)?, &overrides(&sandbox, &VENDORS), &Silent)
        .await?;
    assert_eq!(summary.status, Status::Failed);
    let error = summary.steps[1].error.clone().unwrap_or_default();
    assert!(error.contains("read 12 records, more than the 10"), "{error}");
    assert!(error.contains("for_each = \".steps.all.records[]\""), "{error}");

    let streamed = flow(
        "streamed",
        "[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\npage_size = 5\n\n[[step]]\nid = \"each\"\nfor_each = \".steps.all.records[]\"\nget = \"stripe.customers\"\nkey = \"${{ $item.id }}\"\n",
    );
    let summary = executor
        .run(&workflow(files.path(), &streamed)?, &overrides(&sandbox, &VENDORS), &Silent)
        .await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert_eq!((summary.steps[1].items, summary.steps[1].counts.read), (12, 12));
    Ok(())
}

#[tokio::test]
async fn a_reference_to_a_later_step_is_refused_with_file_and_line() -> TestResult {
    let harness = Harness::new()?;
    let text = flow(
        "refs",
        "[[step]]\nid = \"a\"\nget = \"stripe.customers\"\nkey = \"${{ .steps.later.id }}\"\n\n[[step]]\nid = \"later\"\nlist = \"stripe.customers\"\n",
    );
    let error =
        workflow(harness.files.path(), &text).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("step \"later\" runs after step \"a\""), "{error}");
    assert!(error.contains("workflow.toml:23:19"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_sync_updates_through_the_connectors_upsert_not_its_bulk_create() -> TestResult {
    // Regression: a sync into GrowPanel sent updates through the array
    // POST, which replaces a row whole, so a custom variable the source did
    // not carry was lost and the count said "created".
    let sandbox = sandbox(3).await?;
    let harness = Harness::new()?;
    let stripe = sandbox.stripe.emulator.customers();
    for customer in &stripe {
        sandbox.growpanel.emulator.insert_customer(json!({
            "id": customer["id"], "name": "Old name", "email": customer["email"], "created_date": "2025-01-01", "country": "FR",
            "data_source": "ds_weft_demo", "custom_variables": { "plan": "pro", "owner": "kept" },
        }));
    }
    let text = flow(
        "to-growpanel",
        r#"
[[step]]
id = "mirror"
sync = { from = "stripe.customers", to = "growpanel.customers", key = "id" }
map = '{id, name: "New name", email, created_date: "2025-01-01", country: "FR", custom_variables: {plan: "pro"}}'
"#,
    );
    let summary = harness.run(&text, &overrides(&sandbox, &VENDORS)).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    let c = summary.steps[0].counts;
    assert_eq!((c.created, c.updated), (0, 3), "{c:?}");
    for customer in &stripe {
        let row = sandbox
            .growpanel
            .emulator
            .customer(customer["id"].as_str().unwrap_or_default())
            .ok_or("the row is there")?;
        assert_eq!(row["name"], "New name");
        assert_eq!(row["custom_variables"]["owner"], "kept", "{row}");
        assert_eq!(row["country"], "FR", "{row}");
    }
    Ok(())
}

#[tokio::test]
async fn ten_failures_before_any_success_stop_a_for_each() -> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let text = flow(
        "wrong-source",
        r#"
[[step]]
id = "create"
for_each = "[range(0; 60)]"
concurrency = 2
upsert = "growpanel.customers"
record = { id = "c${{ $item }}", name = "C", email = "c${{ $item }}@example.com", created_date = "2026-01-01", country = "US" }
"#,
    )
    .replace("ds_weft_demo", "ds_no_such_source");
    let summary = harness.run(&text, &overrides(&sandbox, &VENDORS)).await?;
    assert_eq!(summary.status, Status::Failed);
    let step = &summary.steps[0];
    let error = step.error.clone().unwrap_or_default();
    assert!(error.contains("the first 10 items all failed"), "{error}");
    assert!(error.contains("Data source not found"), "{error}");
    assert!(step.items < 15, "{step:?}");
    Ok(())
}

/// Stops the run (as SIGTERM would) at the `nth` progress report.
struct StopAtReport {
    nth: u64,
    stop: weft::executor::StopSignal,
    seen: AtomicU64,
}

impl Observer for StopAtReport {
    fn items_committed(&self, _step: &Step, _done: u64) {
        if self.seen.fetch_add(1, Ordering::Relaxed) + 1 >= self.nth {
            self.stop.shutdown.cancel();
        }
    }
}

#[tokio::test]
async fn an_interrupted_sync_resumes_mid_merge_and_creates_each_record_once() -> TestResult {
    for harness in
        Harness::each("an_interrupted_sync_resumes_mid_merge_and_creates_each_record_once").await?
    {
        let backend = harness.backend();
        let sandbox = sandbox(0).await?;
        seed_stripe(&sandbox, 1200, "merge");
        let wf = workflow(harness.files.path(), &flow("sync", SYNC))?;
        // Report 1 is the source scan, 2 the target scan; 3 is the first group
        // of 500 merged keys.
        let first = start_interrupted(&harness, &wf, &sandbox, |stop| StopAtReport {
            nth: 3,
            stop,
            seen: AtomicU64::new(0),
        })
        .await?;
        let made = sandbox.metronome.emulator.customer_count();
        assert!((1..1200).contains(&made), "stopped mid-merge: {made}");

        let resumed = resume(&harness, &sandbox, &first.run_id).await?;
        assert_eq!(resumed.status, Status::Succeeded, "{backend}: {resumed:#?}");
        assert_eq!(resumed.steps[0].counts.created, 1200, "{:?}", resumed.steps[0]);
        let customers = sandbox.metronome.emulator.customers();
        let ids: std::collections::HashSet<String> =
            customers.iter().filter_map(|c| c["external_id"].as_str().map(str::to_owned)).collect();
        assert_eq!(
            (customers.len(), ids.len()),
            (1200, 1200),
            "each Stripe customer once in Metronome"
        );
        let scratch = harness.state.path().join("scratch");
        assert!(
            !scratch.join(&first.run_id).exists(),
            "{backend}: the sorted runs are removed when the sync ends"
        );
        if let Some(schema) = &harness.postgres {
            // The sorted runs the database held for the resume are gone too.
            let store = weft::store::RunStore::open_postgres(&schema.url).await?;
            let dir = store.scratch_dir(&first.run_id, 0).await?;
            assert_eq!(std::fs::read_dir(&dir)?.count(), 0, "{backend}: none stored");
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_reconcile_example_clears_growpanel_fields_with_empty_strings_for_a_stripe_customer_with_neither_name_nor_email()
-> TestResult {
    let sandbox = sandbox(0).await?;
    let harness = Harness::new()?;
    let described = super::vendors::description("growpanel/openapi.json")?;
    let bare = sandbox.stripe.emulator.insert_customer(json!({ "created": 1_704_164_645 }));
    sandbox.stripe.emulator.insert_customer(json!({ "email": "bo@example.com", "name": "Bo", "created": 1_704_164_645, "metadata": { "plan": "pro" } }));
    let bare_id = bare["id"].as_str().ok_or("an id")?.to_owned();
    // GrowPanel still has the name and email the customer once had.
    sandbox.growpanel.emulator.insert_customer(json!({
        "id": bare_id, "name": "Old Name", "email": "old@example.com", "created_date": "2024-01-02",
        "country": "US", "data_source": weft_sandbox::growpanel::DEMO_DATA_SOURCE, "custom_variables": { "plan": "none" }
    }));
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("workflows/stripe-export-reconcile.toml"),
    )?;
    let wf = workflow(harness.files.path(), &text)?;
    let options = RunOptions {
        overrides: overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]),
        ..RunOptions::default()
    };

    let planned = harness
        .executor
        .start(&wf, &RunOptions { dry_run: true, ..options.clone() }, &Silent)
        .await?;
    let plan = planned.steps[1].plan.clone().unwrap_or_default();
    assert_eq!((plan.create, plan.update), (1, 1), "{plan:#?}");

    let summary = harness.executor.start(&wf, &options, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    let c = summary.steps[1].counts;
    assert_eq!((c.created, c.updated, c.unchanged, c.failed), (1, 1, 0, 0), "{c:?}");
    let stored = sandbox.growpanel.emulator.customer(&bare_id).ok_or("still there")?;
    assert_eq!(
        (stored["name"].as_str(), stored["email"].as_str()),
        (Some(""), Some("")),
        "{stored}"
    );

    // The regression: `PUT {"email": null, "name": null}`, refused by
    // GrowPanel's schema (422 "name must be string").
    let mut problems = Vec::new();
    for request in sandbox.growpanel.emulator.requests().requests() {
        match request.method.as_str() {
            "PUT" => problems.extend(super::vendors::json_body_problems(
                &described,
                "put",
                "/data/customers/{id}",
                &request.body,
            )?),
            "POST" => problems.extend(super::vendors::json_body_problems(
                &described,
                "post",
                "/data/customers",
                &request.body,
            )?),
            _ => {}
        }
    }
    assert_eq!(problems, Vec::<String>::new());

    let again = harness.executor.start(&wf, &options, &Silent).await?;
    let c = again.steps[1].counts;
    assert_eq!((c.created, c.updated, c.unchanged), (0, 0, 2), "{c:?}");
    Ok(())
}

#[tokio::test]
async fn a_growpanel_list_with_a_limit_below_the_page_reads_that_many_and_a_longer_one_is_still_refused()
-> TestResult {
    let sandbox = sandbox(25).await?;
    let harness = Harness::new()?;
    let vendors = overrides(&sandbox, &VENDORS);
    // The regression: "holds more than 2 customers" for a step that asked
    // for two.
    let two = harness
        .run(
            &flow(
                "first-two",
                "[[step]]\nid = \"two\"\nlist = \"growpanel.customers\"\nlimit = 2\n",
            ),
            &vendors,
        )
        .await?;
    assert_eq!(two.status, Status::Succeeded, "{two:#?}");
    assert_eq!(two.steps[0].counts.read, 2);

    let paged = harness
        .run(
            &flow(
                "paged",
                "[[step]]\nid = \"all\"\nlist = \"growpanel.customers\"\npage_size = 10\n",
            ),
            &vendors,
        )
        .await?;
    assert_eq!(paged.status, Status::Failed, "a list past the page is not cut short: {paged:#?}");
    let error = paged.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("cannot page past") && error.contains("more than 10"), "{error}");
    Ok(())
}

#[tokio::test]
async fn a_sandbox_run_refuses_every_request_that_is_not_to_an_emulator() -> TestResult {
    let sandbox = sandbox(3).await?;
    // Another sandbox stands in for a real vendor: its log must stay empty.
    let production = super::support::sandbox(3).await?;
    let production_stripe =
        production.endpoints().into_iter().find(|e| e.vendor == "stripe").ok_or("stripe")?;
    let harness = Harness::new()?;
    let text = format!(
        "[workflow]\nname = \"confined\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\nbase_url = \"{}\"\n\n[[step]]\nid = \"all\"\nlist = \"stripe.customers\"\n",
        production_stripe.base_url
    );
    let wf = workflow(harness.files.path(), &text)?;
    let emulators: Vec<String> = sandbox.endpoints().into_iter().map(|e| e.base_url).collect();

    // Pointed at something that is not one of the run's emulators.
    let elsewhere = std::collections::BTreeMap::from([(
        "stripe".to_owned(),
        ConnectionOverride {
            base_url: production_stripe.base_url.clone(),
            secret: Secret::new(production_stripe.api_key.clone()),
        },
    )]);
    let options = RunOptions {
        overrides: elsewhere,
        sandbox: Some(emulators.clone()),
        ..RunOptions::default()
    };
    let error = harness
        .executor
        .start(&wf, &options, &Silent)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("not a sandbox emulator"), "{error}");

    // Pointed nowhere: never the workflow's own base URL and credential.
    let options = RunOptions { sandbox: Some(emulators.clone()), ..RunOptions::default() };
    let error = harness
        .executor
        .start(&wf, &options, &Silent)
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("none was given for this one"), "{error}");
    assert!(production.stripe.emulator.requests().is_empty(), "production was reached");

    let options = RunOptions {
        overrides: overrides(&sandbox, &[("stripe", "stripe")]),
        sandbox: Some(emulators),
        ..RunOptions::default()
    };
    let summary = harness.executor.start(&wf, &options, &Silent).await?;
    assert_eq!(
        (summary.status, summary.steps[0].counts.read),
        (Status::Succeeded, 3),
        "{summary:#?}"
    );
    assert_eq!(
        harness.executor.store().run(&summary.run_id).await?.trigger,
        weft::store::RunTrigger::Sandbox
    );
    assert!(production.stripe.emulator.requests().is_empty(), "production was reached");
    Ok(())
}

/// How a record of the property test's data set relates to the target's
/// copy when the second sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    /// The same values.
    Same,
    /// A blank spelled otherwise (`null` for `""`, absent for `null`, …).
    Blank,
    /// A number where the target holds its text (`5` for `"5"`).
    Number,
    /// A real change.
    Different,
    /// Not in the target yet.
    New,
}

impl Case {
    const ALL: [Case; 5] = [Case::Same, Case::Blank, Case::Number, Case::Different, Case::New];

    fn name(self) -> &'static str {
        match self {
            Case::Same => "same",
            Case::Blank => "blank",
            Case::Number => "number",
            Case::Different => "different",
            Case::New => "new",
        }
    }
}

/// SplitMix64: a varied data set that is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Every case once, then cases at random.
    fn cases(&mut self, count: usize) -> Vec<Case> {
        (0..count)
            .map(|i| {
                if i < Case::ALL.len() {
                    Case::ALL[i]
                } else {
                    Case::ALL[(self.next() % Case::ALL.len() as u64) as usize]
                }
            })
            .collect()
    }
}

/// One built-in connector as the target of the property test: where its
/// records come from, how they are keyed, and the two maps (the target's
/// state first, then what the second sync wants, by `$c`, the case).
struct Target {
    connection: &'static str,
    resource: &'static str,
    source: &'static str,
    key: &'static str,
    setup: &'static str,
    wanted: &'static str,
}

const TARGETS: [Target; 5] = [
    Target {
        connection: "growpanel",
        resource: "customers",
        source: "stripe",
        key: "id",
        setup: r#".metadata.case as $c | select($c != "new") | {id, name, email: (if $c == "blank" then "" else .email end), created_date: "2026-01-01", country: "US", custom_variables: {seats: .metadata.i}}"#,
        wanted: r#".metadata.case as $c | {id, name: (if $c == "different" then .name + " 2" else .name end), email: (if $c == "blank" then null else .email end), created_date: "2026-01-01", country: "US", custom_variables: {seats: (if $c == "number" then (.metadata.i | tonumber) else .metadata.i end)}}"#,
    },
    Target {
        connection: "stripe",
        resource: "customers",
        source: "growpanel",
        key: "email",
        setup: r#".custom_variables.case as $c | select($c != "new") | {email, name, metadata: {i: .custom_variables.i}}"#,
        wanted: r#".custom_variables.case as $c | {email, name: (if $c == "different" then .name + " 2" else .name end), phone: (if $c == "blank" then "" else null end), description: null, preferred_locales: (if $c == "blank" then [] else null end), invoice_settings: (if $c == "blank" then {footer: null} else null end), metadata: {i: (if $c == "number" then (.custom_variables.i | tonumber) else .custom_variables.i end)}}"#,
    },
    Target {
        connection: "baremetrics",
        resource: "customers",
        source: "stripe",
        key: "oid",
        setup: r#".metadata.case as $c | select($c != "new") | {oid: .id, name, email, notes: (if $c == "blank" then "" else "note" end), created: 1700000000}"#,
        wanted: r#".metadata.case as $c | {oid: .id, name: (if $c == "different" then .name + " 2" else .name end), email, notes: (if $c == "blank" then null else "note" end), created: (if $c == "number" then "1700000000" else 1700000000 end)}"#,
    },
    Target {
        connection: "metronome",
        resource: "customers",
        source: "stripe",
        key: "external_id",
        setup: r#".metadata.case as $c | select($c != "new") | {name, external_id: .id, ingest_aliases: [.id]}"#,
        wanted: r#".metadata.case as $c | {name: (if $c == "different" then .name + " 2" else .name end), external_id: .id, ingest_aliases: [.id]} + (if $c == "blank" then {customer_config: {salesforce_account_id: ""}} else {} end)"#,
    },
    Target {
        connection: "scim",
        resource: "team-members",
        source: "stripe",
        key: "userName",
        setup: r#".metadata.case as $c | select($c != "new") | {userName: .email, name: {givenName: .name, familyName: "Prop"}, externalId: .metadata.i, active: true}"#,
        wanted: r#".metadata.case as $c | {userName: .email, name: {givenName: (if $c == "different" then .name + " 2" else .name end), familyName: "Prop"}, externalId: (if $c == "number" then (.metadata.i | tonumber) else .metadata.i end), displayName: (if $c == "blank" then "" else null end), active: true}"#,
    },
];

/// The property of issue 13: for every built-in connector as a sync's
/// target and a varied data set, the dry run plans exactly what the real
/// run then does, and a second sync of unchanged data sends no write.
#[tokio::test]
async fn for_every_built_in_connector_a_dry_run_plans_what_the_run_does_and_a_second_sync_writes_nothing()
-> TestResult {
    const RECORDS: usize = 30;
    let mut seeded = Seeded(0x5EED_0013);
    let mut failures = Vec::new();
    for target in &TARGETS {
        let sandbox = sandbox(0).await?;
        let cases = seeded.cases(RECORDS);
        for (i, case) in cases.iter().enumerate() {
            let (name, email) = (format!("Person {i}"), format!("p{i}@prop.example"));
            if target.source == "stripe" {
                sandbox.stripe.emulator.insert_customer(json!({ "email": email, "name": name, "metadata": { "case": case.name(), "i": i.to_string() } }));
            } else {
                sandbox.growpanel.emulator.insert_customer(json!({
                    "id": format!("row{i}"), "name": name, "email": email, "created_date": "2026-01-01", "country": "US",
                    "data_source": weft_sandbox::growpanel::DEMO_DATA_SOURCE, "custom_variables": { "case": case.name(), "i": i.to_string() }
                }));
            }
        }
        let harness = Harness::new()?;
        let vendors = overrides(
            &sandbox,
            &[
                ("stripe", "stripe"),
                ("growpanel", "growpanel"),
                ("metronome", "metronome"),
                ("baremetrics", "baremetrics"),
                ("scim", "stripe-scim"),
            ],
        );
        let sync = |map: &str| {
            format!(
                "[workflow]\nname = \"property-{}\"\n{}\n[[step]]\nid = \"sync\"\nsync = {{ from = \"{}.customers\", to = \"{}.{}\", key = \"{}\" }}\nmap = '''{map}'''\n",
                target.connection,
                connections(&["stripe", "growpanel", "metronome", "baremetrics", "stripe-scim"]),
                target.source,
                target.connection,
                target.resource,
                target.key
            )
        };
        let setup = harness.run(&sync(target.setup), &vendors).await?;
        assert_eq!(setup.status, Status::Succeeded, "{}: {setup:#?}", target.connection);

        let wanted = workflow(harness.files.path(), &sync(target.wanted))?;
        let dry = harness
            .executor
            .start(
                &wanted,
                &RunOptions { dry_run: true, overrides: vendors.clone(), ..RunOptions::default() },
                &Silent,
            )
            .await?;
        let plan = dry.steps[0].plan.clone().unwrap_or_default();
        let planned = (plan.create, plan.update, plan.unchanged);
        let real = harness
            .executor
            .start(
                &wanted,
                &RunOptions { overrides: vendors.clone(), ..RunOptions::default() },
                &Silent,
            )
            .await?;
        let c = real.steps[0].counts;
        let done = (c.created, c.updated, c.unchanged);
        let count =
            |wanted: &[Case]| cases.iter().filter(|case| wanted.contains(case)).count() as u64;
        let expected = (
            count(&[Case::New]),
            count(&[Case::Different]),
            count(&[Case::Same, Case::Blank, Case::Number]),
        );
        if planned != done || done != expected || c.failed > 0 {
            failures.push(format!("{}: planned {planned:?}, done {done:?}, expected (create, update, unchanged) {expected:?}; failed {}: {:?}", target.connection, c.failed, real.steps[0].error));
        }

        let log = match target.connection {
            "stripe" => sandbox.stripe.emulator.requests(),
            "growpanel" => sandbox.growpanel.emulator.requests(),
            "metronome" => sandbox.metronome.emulator.requests(),
            "baremetrics" => sandbox.baremetrics.emulator.requests(),
            _ => sandbox.stripe_scim.emulator.requests(),
        };
        let writes_before = writes(&log);
        let second = harness
            .executor
            .start(&wanted, &RunOptions { overrides: vendors, ..RunOptions::default() }, &Silent)
            .await?;
        let c = second.steps[0].counts;
        if (c.created, c.updated, c.unchanged) != (0, 0, RECORDS as u64)
            || writes(&log) != writes_before
        {
            failures.push(format!(
                "{}: the second sync counted {c:?} and sent {} writes",
                target.connection,
                writes(&log) - writes_before
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn a_step_that_names_a_long_lists_records_only_in_its_description_runs() -> TestResult {
    // Regression: a textual test took "steps.customers.records" in a later
    // step's description for a read of the records, and failed that step
    // because the list was longer than expressions may hold in memory.
    let sandbox = sandbox(30).await?;
    let Harness { executor, state, files, postgres } = Harness::new()?;
    let harness = Harness { executor: executor.with_inline_records(5), state, files, postgres };
    let text = flow(
        "count",
        r#"
[[step]]
id = "customers"
list = "stripe.customers"
page_size = 10

[[step]]
id = "lookup"
description = "uses the count of .steps.customers.records, not the records"
get = "stripe.customers"
key = "cus_${{ .steps.customers.count }}"
"#,
    );
    let summary = harness.run(&text, &overrides(&sandbox, &VENDORS)).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert_eq!(summary.steps[0].counts.read, 30, "{:?}", summary.steps[0]);
    // Nothing reads the records: they are not kept for later steps.
    let steps = harness.executor.store().steps(&summary.run_id).await?;
    assert!(!steps[0].records_kept, "{:?}", steps[0]);
    Ok(())
}
