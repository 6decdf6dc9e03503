//! Language gaps the seed scenarios found: templated `output` paths,
//! rendered once per run (the same on resume) and inside the workflow's
//! directory whatever the values say; a step that fails the run with a
//! message when a condition holds (`fail` with `when`).

use serde_json::json;
use weft::executor::{RunOptions, Silent};
use weft::store::Status;

use super::support::{Harness, TestResult, sandbox, stripe_override};

const EXPORT: &str = r#"
[workflow]
name = "dated-export"

[inputs.name]
type = "string"
default = "customers"

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"

[[step]]
id = "export"
list = "stripe.customers"
page_size = 10
output = "out/${{ $run.started_at[:10] }}/${{ $inputs.name }}-${{ $run.id }}.jsonl"
"#;

#[tokio::test]
async fn a_templated_output_path_is_rendered_per_run_and_named_in_the_result() -> TestResult {
    let sandbox = sandbox(25).await?;
    let harness = Harness::new()?;
    let workflow = super::support::workflow(harness.files.path(), EXPORT)?;
    let options = RunOptions { overrides: stripe_override(&sandbox), ..RunOptions::default() };
    let summary = harness.executor.start(&workflow, &options, &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{:?}", summary.error);
    let run = harness.executor.store().run(&summary.run_id).await?;
    let day = chrono::DateTime::from_timestamp_millis(run.created_ms as i64)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let expected =
        harness.files.path().join("out").join(&day).join(format!("customers-{}.jsonl", run.id));
    let text = std::fs::read_to_string(&expected)?;
    assert_eq!(text.lines().count(), 25);
    let output = summary.steps[0].output.clone().unwrap_or_default();
    assert_eq!(output["file"], json!(expected.display().to_string()));
    Ok(())
}

#[tokio::test]
async fn a_templated_output_path_that_leaves_the_workflows_directory_fails_the_step() -> TestResult
{
    let sandbox = sandbox(3).await?;
    let harness = Harness::new()?;
    // A value spliced into the middle of the path, and one that is all of it.
    let whole = EXPORT.replace(
        "out/${{ $run.started_at[:10] }}/${{ $inputs.name }}-${{ $run.id }}.jsonl",
        "${{ $inputs.name }}",
    );
    for (text, hostile) in [(EXPORT, "../../escaped"), (whole.as_str(), "/tmp/weft-absolute.jsonl")]
    {
        let workflow = super::support::workflow(harness.files.path(), text)?;
        let mut inputs = serde_json::Map::new();
        inputs.insert("name".into(), json!(hostile));
        let options =
            RunOptions { overrides: stripe_override(&sandbox), inputs, ..RunOptions::default() };
        let summary = harness.executor.start(&workflow, &options, &Silent).await?;
        assert_eq!(summary.status, Status::Failed, "{:?}", summary.steps[0].output);
        let error = summary.error.unwrap_or_default();
        assert!(error.contains("is not a path inside the workflow's directory"), "{error}");
    }
    assert!(!std::path::Path::new("/tmp/weft-absolute.jsonl").exists());
    Ok(())
}

#[tokio::test]
async fn a_fail_step_stops_the_run_with_its_message_only_when_its_condition_holds() -> TestResult {
    let sandbox = sandbox(3).await?;
    let harness = Harness::new()?;
    let text = r#"
[workflow]
name = "guarded"

[inputs.limit]
type = "integer"
default = 10

[connections.stripe]
plugin = "stripe"
credentials = "env:WEFT_TEST_UNUSED"

[[step]]
id = "all"
list = "stripe.customers"

[[step]]
id = "too-many"
when = ".steps.all.count > .inputs.limit"
fail = "${{ .steps.all.count }} customers, more than the limit of ${{ .inputs.limit }}"

[[step]]
id = "export"
list = "stripe.customers"
output = "out/guarded.jsonl"
"#;
    let workflow = super::support::workflow(harness.files.path(), text)?;
    let run = |limit: i64| {
        let mut inputs = serde_json::Map::new();
        inputs.insert("limit".into(), json!(limit));
        RunOptions { overrides: stripe_override(&sandbox), inputs, ..RunOptions::default() }
    };
    let held = harness.executor.start(&workflow, &run(2), &Silent).await?;
    assert_eq!(held.status, Status::Failed);
    assert_eq!(
        held.error.as_deref(),
        Some("step \"too-many\" failed: 3 customers, more than the limit of 2")
    );
    assert_eq!(held.steps[2].status, Status::Pending, "later steps do not start");
    assert!(!harness.files.path().join("out/guarded.jsonl").exists());

    let passed = harness.executor.start(&workflow, &run(10), &Silent).await?;
    assert_eq!(passed.status, Status::Succeeded, "{:?}", passed.error);
    assert_eq!(passed.steps[1].status, Status::Skipped);
    assert!(harness.files.path().join("out/guarded.jsonl").exists());
    Ok(())
}
