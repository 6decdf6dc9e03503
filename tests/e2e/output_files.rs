//! A list step's `output` file: written beside the target and renamed over
//! it at the first commit, never through a symbolic link, so a run that
//! fails early or a link planted at the path cannot destroy a file.

use weft::store::Status;

use super::support::{Harness, TestResult, sandbox, stripe_override};

fn export(output: &std::path::Path, extra: &str) -> String {
    format!(
        "[workflow]\nname = \"export\"\n\n[connections.stripe]\nplugin = \"stripe\"\ncredentials = \"env:WEFT_TEST_UNUSED\"\n\n[[step]]\nid = \"export\"\nlist = \"stripe.customers\"\npage_size = 10\noutput = {:?}\n{extra}",
        output.display().to_string()
    )
}

/// The names in `dir`, sorted.
fn names(dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut names = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

/// Regression: the file was created with `File::create`, which follows a
/// link and truncates what it points at before the first page is read.
#[cfg(unix)]
#[tokio::test]
async fn an_output_path_that_is_a_symbolic_link_is_refused_and_what_it_points_at_is_untouched()
-> TestResult {
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let precious = harness.files.path().join("precious.txt");
    std::fs::write(&precious, "do not touch\n")?;
    let out = harness.files.path().join("out.jsonl");
    std::os::unix::fs::symlink(&precious, &out)?;
    let summary = harness.run(&export(&out, ""), &stripe_override(&sandbox)).await?;
    assert_eq!(summary.status, Status::Failed, "{summary:#?}");
    let error = summary.steps[0].error.clone().unwrap_or_default();
    assert!(error.contains("is a symbolic link"), "{error}");
    assert_eq!(std::fs::read_to_string(&precious)?, "do not touch\n");
    assert!(
        std::fs::symlink_metadata(&out)?.file_type().is_symlink(),
        "the link itself is left as it was"
    );
    Ok(())
}

/// Regression: the file was truncated when the step started, so a run
/// that failed on its first page had already destroyed the last export.
#[tokio::test]
async fn a_run_that_fails_before_its_first_commit_leaves_the_existing_output_file_intact()
-> TestResult {
    let sandbox = sandbox(30).await?;
    let harness = Harness::new()?;
    let out = harness.files.path().join("out.jsonl");
    std::fs::write(&out, "{\"id\":\"last night's export\"}\n")?;
    let failing = export(&out, "map = 'if .id then error(\"no map for \\(.id)\") else . end'\n");
    let summary = harness.run(&failing, &stripe_override(&sandbox)).await?;
    assert_eq!(summary.status, Status::Failed, "{summary:#?}");
    assert!(
        summary.steps[0].error.as_deref().is_some_and(|e| e.contains("no map for")),
        "{summary:#?}"
    );
    assert_eq!(std::fs::read_to_string(&out)?, "{\"id\":\"last night's export\"}\n");
    assert_eq!(
        names(harness.files.path())?,
        ["out.jsonl", "workflow.toml"],
        "no partial file is left behind"
    );

    // The same export without the failing map replaces the file whole.
    let summary = harness.run(&export(&out, ""), &stripe_override(&sandbox)).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:#?}");
    assert_eq!(std::fs::read_to_string(&out)?.lines().count(), 30);
    assert_eq!(names(harness.files.path())?, ["out.jsonl", "workflow.toml"]);
    Ok(())
}
