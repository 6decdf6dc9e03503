//! A known secret used for a whole run never reaches the run store or a log
//! line, even at trace level.

use std::io::Write;
use std::sync::{Arc, Mutex};

use weft::executor::Silent;
use weft::store::Status;

use super::support::{Harness, TestResult, sandbox};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut lines) = self.0.lock() {
            lines.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn a_known_secret_never_reaches_the_store_or_the_logs() -> TestResult {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sandbox = sandbox(30).await?;
    let secret = weft_sandbox::stripe::SANDBOX_API_KEY;
    let harness = Harness::new()?;
    // The credential comes from a file, as in production.
    let key_file = harness.files.path().join("stripe.key");
    std::fs::write(&key_file, format!("{secret}\n"))?;
    let text = format!(
        r#"
[workflow]
name = "secret-check"

[connections.stripe]
plugin = "stripe"
credentials = "file:{}"
base_url = "{}"

[[step]]
id = "export"
list = "stripe.customers"

[[step]]
id = "create"
upsert = "stripe.customers"
record = {{ email = "secret-check@example.com" }}

[[step]]
id = "missing"
get = "stripe.customers"
key = "cus_does_not_exist"
"#,
        key_file.display(),
        sandbox.stripe.base_url()
    );
    let workflow = super::support::workflow(harness.files.path(), &text)?;
    let summary = harness.executor.run(&workflow, &Default::default(), &Silent).await?;
    assert_eq!(summary.status, Status::Succeeded, "{summary:?}");
    assert_eq!(summary.steps[0].counts.read, 30, "the secret worked: the emulator accepted it");

    let summary_json = serde_json::to_string(&summary)?;
    assert!(!summary_json.contains(secret));
    drop(harness.executor);
    assert_eq!(files_containing(harness.state.path(), secret.as_bytes()), Vec::<String>::new());

    let logs = captured.0.lock().map(|l| String::from_utf8_lossy(&l).into_owned()).unwrap_or_default();
    assert!(!logs.is_empty(), "trace logging captured something");
    assert!(!logs.contains(secret), "a log line contains the secret");
    Ok(())
}
