//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the inputs that
//! once failed (`fuzz/regressions/<target>/`) through the same checks the
//! fuzz targets run (`fuzz/checks/<target>.rs`), so `cargo test` keeps
//! every property the fuzzers found to hold, without libFuzzer.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/expressions.rs"]
mod expressions;
#[path = "../fuzz/checks/list_body.rs"]
mod list_body;
#[path = "../fuzz/checks/store.rs"]
mod store;
#[path = "../fuzz/checks/stripe_form.rs"]
mod stripe_form;
#[path = "../fuzz/checks/webhook.rs"]
mod webhook;
#[path = "../fuzz/checks/workflow.rs"]
mod workflow;

/// Runs `check` on every file of the target's corpus and regressions;
/// fails naming every input that fails, after trying them all.
fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs: Vec<PathBuf> = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        inputs.extend(entries.filter_map(Result::ok).map(|entry| entry.path()));
    }
    inputs.sort();
    assert!(!inputs.is_empty(), "no corpus for {target} under {}", root.display());
    let failed: Vec<String> = inputs
        .iter()
        .filter_map(|path| {
            let data =
                std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            catch_unwind(AssertUnwindSafe(|| check(&data)))
                .is_err()
                .then(|| path.display().to_string())
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} inputs fail: {failed:#?}",
        failed.len(),
        inputs.len()
    );
}

#[test]
fn workflow_files_give_diagnostics_inside_the_file() {
    replay("workflow", workflow::check);
}

#[test]
fn expressions_compile_and_evaluate_within_their_budget() {
    replay("expressions", expressions::check);
}

#[test]
fn the_list_body_scanner_agrees_with_serde_json() {
    replay("list_body", list_body::check);
}

#[test]
fn stripe_forms_round_trip_through_the_emulator() {
    replay("stripe_form", stripe_form::check);
}

#[test]
fn webhooks_are_accepted_only_with_the_right_mac() {
    replay("webhook", webhook::check);
}

#[test]
fn store_records_and_pages_decode_or_fail_cleanly() {
    replay("store", store::check);
}
