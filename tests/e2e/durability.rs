//! What the run store keeps a resume from trusting (a page file changed
//! after its pages were committed), and what a failing store does to a
//! run: it stops where its last commit left it, to resume.

use weft::executor::{ExecError, Observer, RunOptions, Silent, StepSummary, StopSignal};
use weft::store::{Status, StepState, StoreError};
use weft::workflow::Step;

use super::support::{Harness, TestResult, overrides, sandbox, writes};

/// Stops the run (as SIGTERM would) once `step` has finished.
struct StopAfterStep {
    step: &'static str,
    stop: StopSignal,
}

impl Observer for StopAfterStep {
    fn step_finished(&self, step: &Step, _state: &StepState, _summary: &StepSummary) {
        if step.id == self.step {
            self.stop.shutdown.cancel();
        }
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_page_file_fails_the_resume_clearly_and_sends_nothing() -> TestResult {
    // Regression: one flipped byte in a list step's page file, and the
    // resume sent the vendor a customer for an id that does not exist.
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let text = &copy();
    let wf = super::support::workflow(harness.files.path(), text)?;
    let vendors = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    let stop = StopSignal::default();
    let options =
        RunOptions { overrides: vendors.clone(), stop: stop.clone(), ..RunOptions::default() };
    let first =
        harness.executor.start(&wf, &options, &StopAfterStep { step: "customers", stop }).await?;
    assert_eq!(
        (first.status, first.steps[0].status),
        (Status::Running, Status::Succeeded),
        "interrupted after the list: {first:#?}"
    );
    assert!(first.steps[0].counts.read >= 30, "{:?}", first.steps[0]);

    let file = harness.state.path().join("pages").join(&first.run_id).join("00000.json");
    let mut bytes = std::fs::read(&file)?;
    let id_at = bytes
        .windows(10)
        .position(|w| w == br#""id":"cus_"#)
        .ok_or("a Stripe id in the page file")?;
    // A byte inside the id: still JSON, still an id, the wrong one.
    bytes[id_at + 12] ^= 0x01;
    std::fs::write(&file, &bytes)?;

    // The finished list's records are read back for the for-each: the
    // damaged page stops the resume with the file and the page named.
    let resumed = harness
        .executor
        .resume(&first.run_id, &RunOptions { overrides: vendors, ..RunOptions::default() }, &Silent)
        .await;
    let error = match resumed {
        Ok(summary) => {
            assert_eq!(summary.status, Status::Failed, "{summary:#?}");
            summary.error.unwrap_or_default()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains(&file.display().to_string())
            && error.contains("page 0")
            && error.contains("checksum"),
        "{error}"
    );
    assert_eq!(
        writes(&sandbox.growpanel.emulator.requests()),
        0,
        "nothing was sent on a corrupt page"
    );
    Ok(())
}

#[tokio::test]
async fn a_store_that_fails_inside_a_step_leaves_the_run_resumable_not_failed() -> TestResult {
    // Regression: the run store failing inside a step (here the list's page
    // file cannot be created) failed the step and the run for good (exit
    // 1), while the same failure between steps left the run to resume
    // (exit 3). Now both stop the run where its last commit left it.
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let text = &super::support::flow_with(
        "copy",
        &["stripe", "growpanel"],
        r#"
[[step]]
id = "customers"
list = "stripe.customers"
page_size = 10

[[step]]
id = "copy"
for_each = ".steps.customers.records[]"
upsert = "growpanel.customers"
record = { id = "${{ $item.id }}", name = "${{ $item.name }}", email = "${{ $item.email }}", created_date = "2026-01-01", country = "US" }
"#,
    );
    let wf = super::support::workflow(harness.files.path(), text)?;
    let vendors = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    let options = RunOptions { overrides: vendors.clone(), ..RunOptions::default() };
    let run = harness.executor.create(&wf, &options).await?;
    let id = run.id.clone();
    // A file where the run's page directory goes: the page log cannot be
    // opened, as on a full or read-only disk (the tests run as root, so a
    // read-only directory would not stop them).
    let blocker = harness.state.path().join("pages").join(&id);
    std::fs::create_dir_all(harness.state.path().join("pages"))?;
    std::fs::write(&blocker, b"in the way")?;

    let outcome = harness.executor.execute(&wf, run, &options, &Silent).await;
    match outcome {
        Err(ExecError::Store(StoreError::PageFile { .. })) => {}
        other => return Err(format!("expected the store's failure, got {other:#?}").into()),
    }
    let stored = harness.executor.store().run(&id).await?;
    assert_eq!((stored.status, stored.error), (Status::Running, None), "left to resume");
    let steps = harness.executor.store().steps(&id).await?;
    assert_eq!(steps[0].status, Status::Running, "the step is not failed: {:?}", steps[0]);

    std::fs::remove_file(&blocker)?;
    let resumed = harness
        .executor
        .resume(&id, &RunOptions { overrides: vendors, ..RunOptions::default() }, &Silent)
        .await?;
    assert_eq!(resumed.status, Status::Succeeded, "{resumed:#?}");
    assert_eq!(
        (resumed.steps[0].counts.read, resumed.steps[1].counts.created),
        (30, 30),
        "{resumed:#?}"
    );
    Ok(())
}

/// A list, and a for-each that reads the list's pages back from the run
/// store.
fn copy() -> String {
    super::support::flow_with(
        "copy",
        &["stripe", "growpanel"],
        r#"
[[step]]
id = "customers"
list = "stripe.customers"
page_size = 10

[[step]]
id = "copy"
for_each = ".steps.customers.records[]"
upsert = "growpanel.customers"
record = { id = "${{ $item.id }}", name = "${{ $item.name }}", email = "${{ $item.email }}", created_date = "2026-01-01", country = "US" }
"#,
    )
}

#[tokio::test]
async fn a_page_file_a_for_each_cannot_read_leaves_the_run_resumable_not_failed() -> TestResult {
    // Regression: a stored page the for-each could not read (an I/O error,
    // not damage) failed the step and the run for good (exit 1), where any
    // other run-store failure leaves the run to resume (exit 3).
    let sandbox = sandbox(30).await?;
    let Harness { executor, state, files, postgres } = Harness::new()?;
    // Five records at most are held in memory as `.steps.customers`, so
    // the for-each is the only reader of the 30 records' pages.
    let harness = Harness { executor: executor.with_inline_records(5), state, files, postgres };
    let wf = super::support::workflow(harness.files.path(), &copy())?;
    let vendors = overrides(&sandbox, &[("stripe", "stripe"), ("growpanel", "growpanel")]);
    let stop = StopSignal::default();
    let options =
        RunOptions { overrides: vendors.clone(), stop: stop.clone(), ..RunOptions::default() };
    let first =
        harness.executor.start(&wf, &options, &StopAfterStep { step: "customers", stop }).await?;
    assert_eq!(first.status, Status::Running, "interrupted after the list: {first:#?}");

    // A directory where the page file was: opening it works, reading it
    // fails (the tests run as root, so taking away read permission would
    // not stop them).
    let file = harness.state.path().join("pages").join(&first.run_id).join("00000.json");
    let saved = harness.files.path().join("pages.json");
    std::fs::rename(&file, &saved)?;
    std::fs::create_dir(&file)?;

    let options = RunOptions { overrides: vendors, ..RunOptions::default() };
    let outcome = harness.executor.resume(&first.run_id, &options, &Silent).await;
    match outcome {
        Err(ExecError::Store(StoreError::PageFile { path, .. })) => {
            assert_eq!(path, file.display().to_string());
        }
        other => return Err(format!("expected the page file's failure, got {other:#?}").into()),
    }
    let stored = harness.executor.store().run(&first.run_id).await?;
    assert_eq!((stored.status, stored.error), (Status::Running, None), "left to resume");
    let steps = harness.executor.store().steps(&first.run_id).await?;
    assert_eq!(steps[1].status, Status::Running, "the for-each is not failed: {:?}", steps[1]);
    assert_eq!(writes(&sandbox.growpanel.emulator.requests()), 0, "no item was sent");

    std::fs::remove_dir(&file)?;
    std::fs::rename(&saved, &file)?;
    let resumed = harness.executor.resume(&first.run_id, &options, &Silent).await?;
    assert_eq!(resumed.status, Status::Succeeded, "{resumed:#?}");
    assert_eq!(resumed.steps[1].counts.created, 30, "{:?}", resumed.steps[1]);
    Ok(())
}

/// A sync of the Stripe customers into Metronome, keyed by the Stripe id.
const MIRROR: &str = r#"
[[step]]
id = "mirror"
sync = { from = "stripe.customers", to = "metronome.customers", key = "external_id" }
map = '{external_id: .id, name: (.name // .email)}'
"#;

#[tokio::test]
async fn a_sorted_run_a_sync_cannot_write_leaves_the_run_resumable_not_failed() -> TestResult {
    // Regression: a sync whose scratch file could not be written (a full
    // disk) failed the step and the run for good (exit 1), where any other
    // run-store failure leaves the run to resume (exit 3).
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let text = &super::support::flow_with("sync", &["stripe", "metronome"], MIRROR);
    let wf = super::support::workflow(harness.files.path(), text)?;
    let vendors = overrides(&sandbox, &[("stripe", "stripe"), ("metronome", "metronome")]);
    let options = RunOptions { overrides: vendors.clone(), ..RunOptions::default() };
    let run = harness.executor.create(&wf, &options).await?;
    let id = run.id.clone();
    // A directory where the source side's first sorted run is written
    // (under a temporary name, then renamed): it cannot be created.
    let scratch = harness.state.path().join("scratch").join(&id).join("00000");
    let blocker = scratch.join("source-00000.partial");
    std::fs::create_dir_all(&blocker)?;

    let outcome = harness.executor.execute(&wf, run, &options, &Silent).await;
    match outcome {
        Err(ExecError::Store(StoreError::Scratch { reason, .. })) => {
            assert!(reason.contains("cannot write a sorted run"), "{reason}");
        }
        other => return Err(format!("expected the scratch file's failure, got {other:#?}").into()),
    }
    let stored = harness.executor.store().run(&id).await?;
    assert_eq!((stored.status, stored.error), (Status::Running, None), "left to resume");
    let steps = harness.executor.store().steps(&id).await?;
    assert_eq!(steps[0].status, Status::Running, "the sync is not failed: {:?}", steps[0]);
    assert_eq!(writes(&sandbox.metronome.emulator.requests()), 0, "nothing was written");

    std::fs::remove_dir(&blocker)?;
    let resumed = harness.executor.resume(&id, &options, &Silent).await?;
    assert_eq!(resumed.status, Status::Succeeded, "{resumed:#?}");
    assert_eq!(resumed.steps[0].counts.created, 30, "{:?}", resumed.steps[0]);
    assert!(!scratch.exists(), "the sorted runs are removed when the sync ends");
    Ok(())
}

#[tokio::test]
async fn a_sync_cancelled_while_its_writes_wait_out_a_pause_fails_no_key() -> TestResult {
    // Regression: a cancel that cut short a sync's writes (waiting for a
    // paused limit or a retry) counted each of them as a failed key.
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    let sandbox = sandbox(30).await?;
    let metronome = weft_sandbox::metronome::MetronomeEmulator::new(Default::default());
    // The first write is answered 429 with a two-minute Retry-After: every
    // write after it waits for the pause, the first for its retry.
    let refused = Arc::new(AtomicBool::new(false));
    let seen = refused.clone();
    let router = metronome.router().layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let seen = seen.clone();
            async move {
                if request.method() == "POST" && !seen.swap(true, Ordering::SeqCst) {
                    return axum::response::Response::builder()
                        .status(429)
                        .header("retry-after", "120")
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(r#"{"message":"slow down"}"#))
                        .unwrap_or_default();
                }
                next.run(request).await
            }
        },
    ));
    let server = weft_sandbox::server::serve(router, "127.0.0.1:0".parse()?).await?;
    let harness = Harness::new()?;
    let text = &super::support::flow_with(
        "paused",
        &["stripe", "metronome"],
        &format!("{MIRROR}concurrency = 2\n"),
    );
    let wf = super::support::workflow(harness.files.path(), text)?;
    let mut vendors = overrides(&sandbox, &[("stripe", "stripe")]);
    vendors.insert(
        "metronome".into(),
        weft::executor::ConnectionOverride {
            base_url: format!("{}/v1", server.base_url()),
            secret: weft::credentials::Secret::new(
                weft_sandbox::metronome::SANDBOX_API_KEY.to_owned(),
            ),
        },
    );
    let stop = StopSignal::default();
    let options = RunOptions { overrides: vendors, stop: stop.clone(), ..RunOptions::default() };
    let cancel = stop.cancel.clone();
    let waited = refused.clone();
    let canceller = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !waited.load(Ordering::SeqCst) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The writes in flight are waiting out the pause now.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cancel.cancel();
        Instant::now()
    });
    let summary = harness.executor.start(&wf, &options, &Silent).await?;
    let asked = canceller.await?;
    assert!(refused.load(Ordering::SeqCst), "the 429 was sent: {summary:#?}");
    assert!(asked.elapsed() < Duration::from_secs(20), "the run did not wait out the pause");
    assert_eq!(summary.status, Status::Cancelled, "{summary:#?}");
    let step = &summary.steps[0];
    assert_eq!(step.counts.failed, 0, "keys cut short are not failures: {step:#?}");
    // At most the other write of the two in flight, sent before the 429.
    assert!(metronome.customer_count() <= 1, "{}", metronome.customer_count());
    server.shutdown().await;
    Ok(())
}
