//! Fuzz target: see `fuzz/checks/webhook.rs` for the property it checks.
#![no_main]

#[path = "../checks/webhook.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
