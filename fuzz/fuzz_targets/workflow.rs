//! Fuzz target: see `fuzz/checks/workflow.rs` for the property it checks.
#![no_main]

#[path = "../checks/workflow.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
